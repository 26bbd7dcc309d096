"""Tables 1-3 in the paper's layout from results/metrics, the published numbers beside ours. CPU only.

    python -m analysis.tables                   # make tables; options: select=final, metrics_dir=..., out_dir=...

Writes to results/tables/ (config: configs/analysis_tables.yaml):
    table1_math.{md,tex}, table2_medical.{md,tex}, table3_agent.{md,tex}
        one "paper" row and one "ours" row per model and method; averages are the unweighted mean of the domain's
        benchmarks, computed here for both (the paper's printed averages are not copied); Δ is the general
        average minus the base model's; a note marks where the paper's printed average disagrees with its cells.
    ours.{md,tex}     every (model, target domain, method) we evaluated, whatever the benchmarks (e.g. SmolLM2)
    paper_consistency.md   every printed average and delta of the paper checked against its cells
Our numbers: per run one checkpoint (`select`, default "best": the paper's selection on the test sets, labelled
as such in every table; `select=final` the last), then the mean over seeds; each row's note names the step every
seed used ("seed 1: step 1200 (best of 11 evaluated)").
"""

from __future__ import annotations

import pandas as pd

from analysis.paper import Layout, consistency, layouts, load_paper, paper_cells
from analysis.results import averaged, domain_means, load_metrics, repo_path, seed_means, select_checkpoints
from common.declarations import title
from common.files import atomic_write_text


def bench_name(b: str) -> str:
    return title("benchmark", b)


def method_name(m: str) -> str:
    return title("method", m)


def fmt(x, digits: int = 1, signed: bool = False) -> str:
    if x is None or pd.isna(x):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def ours_scores(metrics: pd.DataFrame) -> pd.DataFrame:
    """(base_model, target_domain, method, benchmark) -> value, one checkpoint per run, mean over seeds."""
    return seed_means(metrics)


def ours_cells(ours: pd.DataFrame, model: str, domain: str, method: str, profile=None) -> dict:
    """{benchmark: value} and n_seeds for one row of a paper table (base rows have no target domain), in one
    profile (None: the runs that record none)."""
    sel = (ours["base_model"] == model) & (ours["method"] == method)
    sel &= ours["profile"].isna() if profile is None or pd.isna(profile) else ours["profile"] == profile
    sel &= (ours["target_domain"] == "*") if method == "base" else (ours["target_domain"] == domain)
    d = averaged(ours[sel])
    ckpts = sorted(set("; ".join(d["checkpoints"]).split("; ")) - {""}) if "checkpoints" in d else []
    return {"values": dict(zip(d["benchmark"], d["value"])), "n_seeds": int(d["n_seeds"].max()) if len(d) else 0,
            "checkpoints": ckpts}


def profiles_of(ours: pd.DataFrame, model: str) -> list:
    """The profiles with results of `model`, sorted; [None] when there are none (an empty "ours" row)."""
    found = ours.loc[ours["base_model"] == model, "profile"].drop_duplicates()
    return sorted(found, key=lambda p: (pd.isna(p), str(p))) or [None]


def row_means(values: dict, lay: Layout) -> tuple[float, float]:
    """(target avg, general avg): the mean over the layout's benchmarks, NaN unless all of them are present."""
    def mean(benches):
        return sum(values[b] for b in benches) / len(benches) if all(b in values for b in benches) else float("nan")
    return mean(lay.target), mean(lay.general)


def build_table(lay: Layout, artifact: str, paper: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method, source), numeric: benchmarks, target_avg, general_avg, delta; plus notes."""
    cells = paper_cells(paper, artifact)
    checks = consistency(paper, {artifact: lay})
    rows = []
    for model, model_name in lay.models.items():
        profiles = profiles_of(ours, model)
        base = {}
        for method in lay.methods:
            p = cells.loc[(model, method)].to_dict() if (model, method) in cells.index else {}
            sources = [("paper", None, p)] + [("ours", prof, ours_cells(ours, model, lay.domain, method, prof))
                                              for prof in profiles]
            for source, profile, got in sources:
                values = got if source == "paper" else got["values"]
                tgt, gen = row_means(values, lay)
                key = (source, None if profile is None or pd.isna(profile) else profile)
                if method == "base":
                    base[key] = gen
                row = {"model": model, "method": method, "source": source, "profile": key[1],
                       "label": model_name if method == "base" else f"+ {method_name(method)}",
                       **{b: values.get(b, float("nan")) for b in lay.target + lay.general},
                       "target_avg": tgt, "general_avg": gen, "delta": gen - base.get(key, float("nan")),
                       "note": ""}
                if source == "paper":
                    bad = checks[(checks["model"] == model) & (checks["method"] == method) & checks["flag"]]
                    row["note"] = "; ".join(f"printed {r.quantity} {r.printed:g} ≠ {r.from_cells:.2f} from its cells"
                                            for r in bad.itertuples())
                elif got["n_seeds"]:
                    row["note"] = f"{got['n_seeds']} seed(s)"
                    if method != "base" and got["checkpoints"]:  # which checkpoint each seed's row used
                        row["note"] += f"; {'; '.join(got['checkpoints'])}"
                rows.append(row)
    return pd.DataFrame(rows)


def display(table: pd.DataFrame, lay: Layout) -> tuple[list[str], list[list[str]]]:
    """Header and string cells in the paper's column order."""
    head = ["model / method", "source"] + [bench_name(b) for b in lay.target]
    head += [lay.target_avg] if lay.target_avg else []
    head += [bench_name(b) for b in lay.general] + ["General (Δ)", "note"]
    body = []
    for r in table.to_dict("records"):
        source = r["source"] if pd.isna(r["profile"]) else f"{r['source']} ({r['profile']})"
        cells = [r["label"] if r["source"] == "paper" else "", source]
        cells += [fmt(r[b]) for b in lay.target] + ([fmt(r["target_avg"], 2)] if lay.target_avg else [])
        cells += [fmt(r[b]) for b in lay.general]
        gen = fmt(r["general_avg"], 2)
        cells += [gen if r["method"] == "base" or pd.isna(r["delta"]) else f"{gen} ({fmt(r['delta'], 2, True)})",
                  r["note"]]
        body.append(cells)
    return head, body


def to_markdown(head: list[str], body: list[list[str]], caption: str) -> str:
    lines = [f"**{caption}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("Δ", r"$\Delta$"), ("≠", r"$\neq$"), ("–", "--"), ("²", r"$^2$"), ("³", r"$^3$")):
        s = s.replace(a, b)
    return s


def to_latex(head: list[str], body: list[list[str]], caption: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering\small", rf"\caption{{{latex_escape(caption)}}}",
             r"\begin{tabular}{ll" + "r" * (len(head) - 3) + "l}", r"\toprule",
             " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def ours_table(ours: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Every (model, profile, target domain, method) we have, with its own benchmarks; Δ vs that model's base
    in the same profile. Profiles are never pooled."""
    means = domain_means(ours)
    domain_of = dict(zip(ours["benchmark"], ours["bench_domain"]))
    order = {d: i for i, d in enumerate(["math", "medical", "agent", "general", "target"])}
    benches = sorted(domain_of, key=lambda b: (order.get(domain_of[b], 9), b))
    head = ["model", "profile", "target domain", "method"] + [bench_name(b) for b in benches]
    head += ["target avg", "general avg", "Δ general", "Δ target", "seeds"]
    body = []
    keys = ["base_model", "profile", "target_domain"]
    for r in means.sort_values([*keys, "method"], na_position="first").to_dict("records"):
        same = (ours["base_model"] == r["base_model"]) & (ours["method"] == r["method"])
        same &= ours["profile"].isna() if pd.isna(r["profile"]) else ours["profile"] == r["profile"]
        sel = same & (ours["target_domain"] == ("*" if r["method"] == "base" else r["target_domain"]))
        vals = dict(zip(ours.loc[sel, "benchmark"], ours.loc[sel, "value"]))
        base = means[(means["method"] == "base") & (means["base_model"] == r["base_model"])
                     & (means["target_domain"] == r["target_domain"])
                     & (means["profile"].isna() if pd.isna(r["profile"]) else means["profile"] == r["profile"])]
        dg = r["general"] - base["general"].iloc[0] if len(base) else float("nan")
        dt = r["target"] - base["target"].iloc[0] if len(base) else float("nan")
        seeds = int(ours.loc[sel, "n_seeds"].max()) if sel.any() else 0
        body.append([str(r["base_model"]), "–" if pd.isna(r["profile"]) else str(r["profile"]),
                     str(r["target_domain"]), method_name(r["method"])]
                    + [fmt(vals.get(b), 2) for b in benches]
                    + [fmt(r["target"], 2), fmt(r["general"], 2), fmt(dg, 2, True), fmt(dt, 2, True), str(seeds)])
    return head, body


def main(cfg) -> dict:
    out = repo_path(cfg.out_dir)
    paper = load_paper(repo_path(cfg.paper_file))
    runs_dirs = [cfg.runs_dir] if isinstance(cfg.runs_dir, str) else list(cfg.runs_dir)
    metrics = load_metrics(repo_path(cfg.metrics_dir), [repo_path(d) for d in runs_dirs])
    selected = select_checkpoints(metrics, cfg.select)
    ours = ours_scores(selected)
    label = f"checkpoint = {selected['selection'].iloc[0]}" if len(selected) else "no results of ours yet"
    if metrics.empty:
        print(f"[tables] no results under {cfg.metrics_dir}: our rows stay empty (run `make eval RUN=<run>`)")
    written = []
    lays = layouts()
    for art, lay in lays.items():
        head, body = display(build_table(lay, art, paper, ours), lay)
        caption = f"{lay.title}. Paper rows: published cells, averages recomputed from them. Ours: {label}."
        for ext, render in (("md", to_markdown), ("tex", to_latex)):
            atomic_write_text(out / f"{lay.file}.{ext}", render(head, body, caption))
            written.append(f"{lay.file}.{ext}")
    if not ours.empty:
        head, body = ours_table(ours)
        caption = f"All our evaluated runs. {label}. Averages over benchmarks in points only (NLL, KL excluded)."
        for ext, render in (("md", to_markdown), ("tex", to_latex)):
            atomic_write_text(out / f"ours.{ext}", render(head, body, caption))
            written.append(f"ours.{ext}")
    checks = consistency(paper, lays)
    flagged = checks[checks["flag"]]
    text = (f"# The paper's printed averages checked against its own cells\n\n{len(checks)} checked, "
            f"{len(flagged)} disagree (tolerance 0.1: cells and averages are each rounded to 0.1).\n\n"
            + to_markdown(list(checks.columns), checks.astype(str).values.tolist(), "All checks"))
    atomic_write_text(out / "paper_consistency.md", text)
    written.append("paper_consistency.md")
    for r in flagged.itertuples():
        print(f"[tables] paper inconsistency: {r.artifact} {r.model} {r.method} {r.quantity}: printed {r.printed:g}, "
              f"cells give {r.from_cells:.2f}")
    print(f"[tables] wrote {', '.join(written)} to {out}")
    return {"written": written, "flagged": flagged.to_dict("records"), "n_results": len(metrics)}


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="analysis_tables", version_base=None)(main)()
