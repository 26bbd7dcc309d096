"""Every figure of the paper from committed result files, on the CPU (no model needed).   make figures

    python -m analysis.figures                      # all figures whose inputs exist; says what is missing
    python -m analysis.figures only=[1b,3,6,7]      # a subset; options in configs/analysis_figures.yaml

Inputs -> outputs (results/figures/<name>.png and .pdf; <p> is the runs' profile, left out when they record none):
    results/token_stats/<m>-<d>.parquet (+ -rollouts)  -> fig1b_landscape_<m>-<d>, fig3_gradient_<m>-<d>,
                                                          fig6_topk_<m>-<d>, fig7_region_tokens_<m>-<d>
    <runs_dirs>/**/<run>/metrics.jsonl (per log step)   -> fig4_entropy_groups_<m>-<d>-<p> (SFT and EAFT only)
    results/metrics (with `step`)                       -> fig2a_general_vs_step_<m>-<domain>-<p>
    results/metrics (selected checkpoints)              -> fig2b_gain_drop, fig5_pareto_<m>-<domain>-<p>
Runs are identified by their run_info.json (analysis/results.py); profiles are never pooled into one line or bar.
The paper's own numbers (analysis/paper_results.csv) are drawn hollow/hatched beside ours where they describe
the same model and domain (Fig. 5: Qwen3-4B math; Fig. 6: Qwen3-4B, always shown as the reference).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis import fig_tokens, fig_training
from analysis.paper import layouts, load_paper, paper_cells
from analysis.plotting import save
from analysis.results import (
    averaged,
    domain_means,
    find_runs,
    identify,
    load_metrics,
    repo_path,
    seed_means,
    select_checkpoints,
)
from analysis.summaries import region_shares, region_top_tokens, topk_correlation
from analysis.token_stats import read_token_stats
from common.files import read_jsonl
from evaluation.schema import run_failure

FIG4_METHODS = ("sft", "eaft")  # the paper's Fig. 4 pair; every method's curves on one axis is unreadable


def suffix(*parts) -> str:
    """'-'-joined file-name parts, leaving out a missing profile (NaN / None)."""
    return "-".join(str(p) for p in parts if pd.notna(p))


def token_stat_sets(stats_dir: Path) -> dict[str, dict[str, Path]]:
    """{'<model>-<data>': {'sft': path, 'rollouts': path or absent}} of the parquet files in stats_dir."""
    sets: dict[str, dict[str, Path]] = {}
    for p in sorted(stats_dir.glob("*.parquet")):
        key, kind = (p.stem[: -len("-rollouts")], "rollouts") if p.stem.endswith("-rollouts") else (p.stem, "sft")
        sets.setdefault(key, {})[kind] = p
    return sets


def token_figures(key: str, files: dict[str, Path], out: Path, formats, paper_fig6: pd.DataFrame, only) -> list[Path]:
    made = []
    sft, meta = read_token_stats(files["sft"]) if "sft" in files else (None, None)
    roll, rmeta = read_token_stats(files["rollouts"]) if "rollouts" in files else (None, None)
    meta = meta or rmeta
    who = f"{meta['model']} on {meta['data']}"
    if "1b" in only:
        same = sft
        if sft is not None and roll is not None:  # the same prompts on both sides
            same = sft[sft["example"].isin(set(roll["example"]))]
        g = (rmeta or {}).get("generation") or {}
        how = f", T = {g['temperature']:g}, ≤ {g['max_new_tokens']} new tokens" if g else ""
        frames = {"SFT data (teacher-forced)": same, f"On-policy rollouts (own samples{how})": roll}
        made += save(fig_tokens.landscape(frames, f"Token entropy–probability landscape — {who}"),
                     out / f"fig1b_landscape_{key}", formats)
    if sft is None:
        return made
    if "3" in only:
        made += save(fig_tokens.gradient_map(sft, f"Per-token gradient magnitude, SFT vs EAFT — {who}"),
                     out / f"fig3_gradient_{key}", formats)
    if "6" in only:
        corr = topk_correlation(sft, meta.get("vocab_size"))
        made += save(fig_tokens.topk_figure(corr, paper_fig6, f"Top-K entropy vs full entropy — {who} "
                                                              "(paper: Qwen3-4B)"), out / f"fig6_topk_{key}", formats)
    if "7" in only:
        made += save(fig_tokens.region_tokens(region_top_tokens(sft, 15), region_shares(sft),
                                              f"Most frequent tokens of each region — {who}"),
                     out / f"fig7_region_tokens_{key}", formats)
    return made


def paper_topk(paper: pd.DataFrame) -> pd.DataFrame:
    t = paper_cells(paper, "fig6").iloc[0]
    ks = sorted(int(c.removeprefix("pearson_k")) for c in t.index if c.startswith("pearson_k"))
    return pd.DataFrame({"k": ks, "pearson": [t[f"pearson_k{k}"] for k in ks],
                         "memory_kb": [t[f"memory_kb_k{k}"] for k in ks]})


def training_curves(runs_dirs: list[Path], methods=FIG4_METHODS) -> dict[str, dict[str, pd.DataFrame]]:
    """{'<model>-<data>[-<profile>]': {method: per-step mean over seeds of ce_high_entropy / ce_low_entropy}},
    one entry per profile (never pooled), for `methods` only (the paper's Fig. 4 compares SFT and EAFT); runs
    whose run_info.json says they failed are left out, with a line saying so."""
    per: dict[str, dict[str, list[pd.DataFrame]]] = {}
    for run, run_dir in sorted(find_runs(runs_dirs).items()):
        path = run_dir / "metrics.jsonl"
        failed = run_failure(json.loads((run_dir / "run_info.json").read_text()))
        if failed:  # a diverged run's curve is not one seed of its method's mean
            print(f"[figures] fig 4 leaves out {run_dir}: {failed}")
            continue
        ident = identify(run_dir)
        if ident["method"] not in methods or not path.exists():
            continue
        df = pd.DataFrame(read_jsonl(path))
        if df.empty or not {"step", "ce_high_entropy", "ce_low_entropy"} <= set(df.columns):
            continue
        key = "-".join(str(x) for x in (ident["base_model"], ident["data"], ident["profile"]) if pd.notna(x))
        per.setdefault(key, {}).setdefault(ident["method"], []).append(
            df[["step", "ce_high_entropy", "ce_low_entropy"]])
    return {k: {m: pd.concat(v).groupby("step", as_index=False).mean() for m, v in d.items()} for k, d in per.items()}


def general_by_step(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (base model, profile, target domain, method, step): mean over seeds of the general average (points
    metrics only; a checkpoint counts when it has as many general benchmarks as the run's fullest one)."""
    keys = ["base_model", "profile", "target_domain", "method"]
    g = averaged(metrics[(metrics["bench_domain"] == "general") & metrics["step"].notna()])
    if g.empty:
        return pd.DataFrame(columns=[*keys, "step", "general"])
    per = g.groupby([*keys, "run", "step"], dropna=False)["value"].agg(["mean", "count"]).reset_index()
    per = per[per["count"] == per.groupby("run")["count"].transform("max")]
    return (per.groupby([*keys, "step"], as_index=False, dropna=False)["mean"].mean()
               .rename(columns={"mean": "general"}))


def gains(means: pd.DataFrame) -> pd.DataFrame:
    """domain_means -> domain, base_model, method, target_gain, general_change (vs that model's base, within
    the same profile)."""
    rows = []
    for (model, profile, dom), g in means.groupby(["base_model", "profile", "target_domain"], dropna=False):
        base = g[g["method"] == "base"]
        if base.empty:
            continue
        label = "\n".join(str(x) for x in (dom, model, profile) if pd.notna(x))
        for r in g[g["method"] != "base"].itertuples():
            rows.append({"domain": label, "method": r.method, "source": "ours",
                         "target_gain": r.target - base["target"].iloc[0],
                         "general_change": r.general - base["general"].iloc[0],
                         "base_model": model, "target_domain": dom, "profile": profile})
    return pd.DataFrame(rows, columns=["domain", "method", "source", "target_gain", "general_change", "base_model",
                                       "target_domain", "profile"])


def paper_gains(paper: pd.DataFrame, model: str, domain: str) -> pd.DataFrame:
    """The same quantities from the paper's table for (model, domain), computed from its cells."""
    for art, lay in layouts().items():
        if lay.domain != domain or model not in lay.models:
            continue
        t = paper_cells(paper, art).loc[model]
        tgt, gen = t[lay.target].mean(axis=1), t[lay.general].mean(axis=1)
        return pd.DataFrame({"domain": f"{domain}\n{model}", "method": t.index, "source": "paper",
                             "target_gain": tgt - tgt["base"], "general_change": gen - gen["base"]}
                            ).query("method != 'base'")
    return pd.DataFrame()


def paper_pareto(paper: pd.DataFrame) -> pd.DataFrame:
    t = paper_cells(paper, "fig5").reset_index()
    return t[["method", "general", "target"]].assign(source="paper")


def result_figures(metrics: pd.DataFrame, paper: pd.DataFrame, out: Path, formats, select: str, only,
                   missing: list[str]) -> list[Path]:
    made = []
    if "2a" in only:
        steps = general_by_step(metrics)
        base = averaged(metrics[(metrics["method"] == "base") & (metrics["bench_domain"] == "general")])
        groups = [(k, g) for k, g in steps.groupby(["base_model", "profile", "target_domain"], dropna=False)
                  if g["step"].nunique() > 1]
        for (model, profile, dom), g in groups:
            b = base.loc[(base["base_model"] == model)
                         & ((base["profile"] == profile) | base["profile"].isna()), "value"]
            who = ", ".join(str(x) for x in (model, dom, profile) if pd.notna(x))
            made += save(fig_training.general_vs_step(g, b.mean() if len(b) else None,
                                                      f"General average over training — {who}"),
                         out / f"fig2a_general_vs_step_{suffix(model, dom, profile)}", formats)
        if not groups:
            missing.append("fig 2a: no run with general benchmarks evaluated at 2+ checkpoints within one profile "
                           "(results/metrics with `step`; evaluate intermediate checkpoints)")
    means = domain_means(seed_means(select_checkpoints(metrics, select))) if len(metrics) else pd.DataFrame()
    if "2b" in only:
        ours = gains(means) if len(means) else pd.DataFrame()
        if len(ours):
            # the paper's bars beside a group of paper-scale runs (profile `paper`, or runs that record none)
            ref = [paper_gains(paper, model, dom).assign(domain=label)
                   for label, model, dom, profile in ours[["domain", "base_model", "target_domain", "profile"]]
                   .drop_duplicates().itertuples(index=False) if pd.isna(profile) or profile == "paper"]
            both = pd.concat([ours, *[r for r in ref if len(r) and set(r["method"]) & set(ours["method"])]])
            both = both[both["method"].isin(set(ours["method"]))]
            made += save(fig_training.gain_drop(both.drop(columns=["base_model", "target_domain", "profile"],
                                                          errors="ignore")), out / "fig2b_gain_drop", formats)
        else:
            missing.append("fig 2b: no base model and fine-tuned run evaluated on the same model (results/metrics)")
    if "5" in only:
        n = 0
        groups = means.groupby(["base_model", "profile", "target_domain"], dropna=False) if len(means) else []
        for (model, profile, dom), g in groups:
            if g["method"].nunique() < 2:
                continue
            pts = g[["method", "general", "target"]].assign(source="ours")
            if model == "qwen3-4b" and dom == "math" and (pd.isna(profile) or profile == "paper"):
                pts = pd.concat([pts, paper_pareto(paper)])
            who = ", ".join(str(x) for x in (model, profile) if pd.notna(x))
            benches = g.loc[g["method"] != "base", "target_benchmarks"].iloc[0]
            made += save(fig_training.pareto(pts, f"{dom.capitalize()} ({benches.replace(',', ', ')})",
                                             f"General vs {dom}: every method — {who}"),
                         out / f"fig5_pareto_{suffix(model, dom, profile)}", formats)
            n += 1
        if not n:
            missing.append("fig 5: no (model, profile, domain) with two or more methods evaluated (results/metrics)")
    return made


def main(cfg) -> dict:
    out, formats = repo_path(cfg.out_dir), list(cfg.formats)
    only = {str(x) for x in cfg.only} if cfg.get("only") else {"1b", "2a", "2b", "3", "4", "5", "6", "7"}
    paper = load_paper(repo_path(cfg.paper_file))
    made, missing = [], []
    sets = token_stat_sets(repo_path(cfg.token_stats_dir))
    if only & {"1b", "3", "6", "7"}:
        for key, files in sets.items():
            made += token_figures(key, files, out, formats, paper_topk(paper), only)
        if not sets:
            missing.append(f"figs 1b, 3, 6, 7: no token statistics in {cfg.token_stats_dir} (run `python -m "
                           "analysis.token_stats model=<m> data=<d>`, and again with rollouts=true for 1b)")
        elif "1b" in only and not any("rollouts" in f for f in sets.values()):
            missing.append("fig 1b: no rollout statistics, so the landscape has the SFT panel only "
                           "(`python -m analysis.token_stats ... rollouts=true`)")
    if "4" in only:
        curves = training_curves([repo_path(d) for d in cfg.runs_dirs], tuple(cfg.fig4_methods))
        for key, c in curves.items():
            made += save(fig_training.entropy_group_ce(c, f"Loss of high- and low-entropy tokens — {key}"),
                         out / f"fig4_entropy_groups_{key}", formats)
        if not curves:
            missing.append(f"fig 4: no runs/<run>/metrics.jsonl with ce_high_entropy in {list(cfg.runs_dirs)} "
                           "(train SFT and EAFT: `make train METHOD=sft`, `make train METHOD=eaft`)")
    if only & {"2a", "2b", "5"}:
        metrics = load_metrics(repo_path(cfg.metrics_dir), [repo_path(d) for d in cfg.runs_dirs])
        if metrics.empty:
            missing.append(f"figs 2a, 2b, 5: no results in {cfg.metrics_dir} (run `make eval RUN=<run>`)")
        else:
            made += result_figures(metrics, paper, out, formats, cfg.select, only, missing)
    for p in made:
        print(f"[figures] wrote {p}")
    for m in missing:
        print(f"[figures] missing: {m}")
    return {"made": [str(p) for p in made], "missing": missing}


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="analysis_figures", version_base=None)(main)()
