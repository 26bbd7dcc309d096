"""The demo's table, figure, summary and verdict, from its result files (no model needed).

    from analysis.demo_report import report        # called by experiments/demo.py; to re-render from the committed
    make demo ARGS=reuse_kept=true                  # files alone, or report_only=true while a profile is running

Columns: target = held-out GSM8K items the model never trained on (mean NLL per token of the reference solutions;
greedy accuracy graded with math-verify); general = the `mini` multiple-choice suite (accuracy, %) and drift from
the base model on general chat prompts (KL(tuned || base) per token of the base model's own greedy answers, and
the tuned model's NLL of those answers). Cells: value ± standard error (one seed) or mean ± std over seeds.

Differences between two models are paired over the items both scored (same held-out solutions, same base
answers, same questions): per-item differences d_i (NLL and KL sums, or 0/1 correctness) give the difference of
the token-weighted means and its delta-method standard error (evaluation.likelihood.ratio_stats).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from common.files import atomic_write_json, atomic_write_text, read_jsonl
from evaluation.likelihood import ratio_stats

TARGET_NLL, TARGET_ACC, DRIFT = "target_nll", "gsm8k_heldout", "general_kl"
LOWER_IS_BETTER = {TARGET_NLL, DRIFT, "base_answer_nll"}


RESULT_KEYS = ("run", "benchmark", "metric", "value", "stderr")  # what every result file of evaluation/ holds


def load_run(metrics_dir: Path, run: str) -> dict[str, dict]:
    """{benchmark: result} of <metrics_dir>/<run>/*.json, each with the path of its per-item file. A file that is
    not such a result (hand-edited, cut, or from elsewhere) is refused with its path, before any number is made."""
    d = metrics_dir / run
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no results; evaluate {run} first (make demo, make study)")
    out = {}
    for p in sorted(d.glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not JSON ({e}); delete it and evaluate {run} again") from e
        missing = [k for k in RESULT_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(f"{p}: not a result of evaluation/ (missing {missing}); delete it and evaluate {run} "
                             "again")
        items = p.parent / "items" / f"{p.stem}.jsonl"  # beside the result, wherever the clone is
        if not items.exists():
            raise FileNotFoundError(f"{items}: missing, so {p.name} cannot be paired per item; evaluate {run} "
                                    "again")
        out[p.stem] = {**r, "items_file": str(items)}
    return out


def item_pairs(result: dict, which: str | None = None) -> dict[str, tuple[float, float]]:
    """{item id: (x, t)} such that the benchmark's value is sum x / sum t (x 100 for accuracies).

    which="base_answer_nll" reads the NLL sums of general_kl instead of its KL sums."""
    out = {}
    for i, row in enumerate(read_jsonl(Path(result["items_file"])), 1):
        key = str(row.get("id", row.get("doc_id")))
        if "tokens" in row:
            x = row["nll_sum"] if which == "base_answer_nll" or "kl_sum" not in row else row["kl_sum"]
            out[key] = (float(x), float(row["tokens"]))
        elif "correct" in row:
            out[key] = (100.0 * sum(row["correct"]) / len(row["correct"]), 1.0)
        elif result["metric"] in row:
            out[key] = (100.0 * float(row[result["metric"]]), 1.0)
        else:  # dropping it would pair the runs over fewer items without a word
            raise ValueError(f"{result['items_file']}:{i}: an item with neither tokens, correct nor "
                             f"{result['metric']!r}; evaluate {result['run']} again")
    return out


def require_same_tokens(bench: str, pairs: dict[str, dict], common: list[str]) -> None:
    """Runs compared item by item must have scored each shared item over the same number of tokens."""
    first = next(iter(pairs.values()))
    if any(p[k][1] != first[k][1] for p in pairs.values() for k in common):
        raise ValueError(f"{bench}: token counts differ between {list(pairs)} on shared items, so they were not "
                         "scored over the same tokens (for general_kl: over other base answers; evaluate them again "
                         "over the base evaluation's answers)")


def paired_difference(a: dict, b: dict, which: str | None = None) -> dict:
    """b - a over the items both scored: {diff, stderr, n}."""
    pa, pb = item_pairs(a, which), item_pairs(b, which)
    common = sorted(set(pa) & set(pb))
    if len(common) < 2:
        raise ValueError(f"{a['run']} and {b['run']} share {len(common)} items on {a['benchmark']}")
    require_same_tokens(a["benchmark"], {a["run"]: pa, b["run"]: pb}, common)
    st = ratio_stats([pb[k][0] - pa[k][0] for k in common], [pa[k][1] for k in common])
    return {"diff": st["value"], "stderr": st["stderr"], "n": st["n"]}


def columns(results: dict[str, dict]) -> list[tuple[str, str | None]]:
    """(benchmark, which) pairs shown: target first, then the mini suite, then drift."""
    minis = sorted(b for b in results if b not in (TARGET_NLL, TARGET_ACC, DRIFT))
    cols = [(TARGET_NLL, None), (TARGET_ACC, None), *[(m, None) for m in minis]]
    return [c for c in cols if c[0] in results] + ([(DRIFT, None), (DRIFT, "base_answer_nll")]
                                                   if DRIFT in results else [])


def value(result: dict, which: str | None) -> tuple[float, float | None]:
    if which == "base_answer_nll":
        m = result["metrics"]
        return m["base_answer_nll"], m.get("base_answer_nll_stderr")
    return result["value"], result["stderr"]


TITLES = {TARGET_NLL: "target NLL/token ↓", TARGET_ACC: "GSM8K held-out acc (%)", DRIFT: "KL to base ↓",
          "base_answer_nll": "NLL of base answers ↓"}


def title_of(bench: str, which: str | None) -> str:
    return TITLES.get(which or bench, f"{bench} (%)")


def mini_average(results: dict[str, dict]) -> float | None:
    vals = [r["value"] for b, r in results.items() if b not in (TARGET_NLL, TARGET_ACC, DRIFT)]
    return sum(vals) / len(vals) if vals else None


def summary_frame(metrics_dir: Path, base: str, runs: dict[str, dict]) -> tuple[pd.DataFrame, dict]:
    """One row per run (value and stderr per column) and the loaded results."""
    loaded = {run: load_run(metrics_dir, run) for run in [base, *runs]}
    rows = []
    for run, res in loaded.items():
        meta = runs.get(run, {"method": "base", "seed": None})
        row = {"run": run, "method": meta["method"], "seed": meta["seed"], "mini_avg": mini_average(res)}
        for bench, which in columns(loaded[base]):
            if bench in res:
                row[which or bench], row[(which or bench) + "_se"] = value(res[bench], which)
        rows.append(row)
    return pd.DataFrame(rows), loaded


def fmt(v, se=None, digits=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and not math.isnan(se) else "")


def method_rows(df: pd.DataFrame, cols: list[str]) -> list[list[str]]:
    """Markdown rows: one per method; mean ± std over seeds, or value ± stderr for a single run."""
    out = []
    for method, g in df.groupby("method", sort=False):
        cells = [method if method == "base" else f"{method} ({len(g)} seed{'s' if len(g) > 1 else ''})"]
        for c in cols:
            digits = 3 if c in LOWER_IS_BETTER else 1
            if len(g) > 1:
                cells.append(fmt(g[c].mean(), g[c].std(), digits))
            else:
                cells.append(fmt(g[c].iloc[0], g.get(c + "_se", pd.Series([None])).iloc[0], digits))
        out.append(cells)
    return out


def comparisons(loaded: dict, base: str, runs: dict[str, dict], a_method: str = "sft") -> list[dict]:
    """Per benchmark: method - base (paired) for each run, and method - SFT per seed (paired) for every other
    method trained with the same seed."""
    out = []
    by_seed = {}
    for run, meta in runs.items():
        by_seed.setdefault(meta["seed"], {})[meta["method"]] = run
    for bench, which in columns(loaded[base]):
        key = which or bench
        for run, meta in runs.items():
            if bench in loaded[run]:
                d = paired_difference(loaded[base][bench], loaded[run][bench], which)
                out.append({"column": key, "what": f"{meta['method']} - base", "seed": meta["seed"], **d})
        for seed, methods in by_seed.items():
            for method, run in methods.items():  # every method against the reference one, seed by seed
                if method != a_method and a_method in methods and bench in loaded[run]:
                    d = paired_difference(loaded[methods[a_method]][bench], loaded[run][bench], which)
                    out.append({"column": key, "what": f"{method} - {a_method}", "seed": seed, **d})
    # The mini-suite average: the mean of its benchmarks' paired differences (independent benchmarks).
    minis = [b for b, w in columns(loaded[base]) if b not in (TARGET_NLL, TARGET_ACC, DRIFT)]
    groups = {}
    for r in out:
        if r["column"] in minis:
            groups.setdefault((r["what"], r["seed"]), []).append(r)
    for (what, seed), rs in groups.items():
        if len(rs) == len(minis):
            se = math.sqrt(sum(r["stderr"] ** 2 for r in rs)) / len(rs) if all(r["stderr"] is not None
                                                                                for r in rs) else None
            out.append({"column": "mini_avg", "what": what, "seed": seed, "diff": sum(r["diff"] for r in rs) / len(rs),
                        "stderr": se, "n": min(r["n"] for r in rs)})
    return out


def seed_mean(rows: pd.DataFrame) -> tuple[float, float]:
    """Mean of per-seed paired differences, and its SE from the per-seed SEs (seeds independent)."""
    se = math.sqrt((rows["stderr"] ** 2).sum()) / len(rows) if rows["stderr"].notna().all() else float("nan")
    return rows["diff"].mean(), se


AGAINST_SFT = [(TARGET_NLL, "target NLL ↓", 3), (TARGET_ACC, "GSM8K held-out (points)", 1),
               ("mini_avg", "mini avg (points)", 1), (DRIFT, "KL to base ↓", 3),
               ("base_answer_nll", "NLL of base answers ↓", 3)]


def against_sft(comp: pd.DataFrame) -> list[str]:
    """Markdown table: each method's paired difference from SFT, mean over seeds ± its SE; * beyond 2 SE.
    The paper's ordering is a method that learns the target about as well (target NLL near 0 here) with less
    drift (negative KL and NLL of base answers) and more kept accuracy (positive mini avg)."""
    rows = comp[comp.what.str.endswith(" - sft")]
    if rows.empty:
        return []
    cols = [c for c in AGAINST_SFT if c[0] in set(rows.column)]
    lines = ["| method − SFT | seeds | " + " | ".join(t for _, t, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for what, g in rows.groupby("what", sort=False):
        cells = [what.removesuffix(" - sft"), str(g.seed.nunique())]
        for col, _, digits in cols:
            r = g[g.column == col]
            if r.empty:
                cells.append("–")
                continue
            diff, se = seed_mean(r)
            star = "*" if not math.isnan(se) and diff != 0 and abs(diff) > 2 * se else ""
            cells.append(f"{diff:+.{digits}f} ± {se:.{digits}f}{star}" if not math.isnan(se) else f"{diff:+.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict(comp: pd.DataFrame) -> list[str]:
    """Plain sentences on the paper's claim, from the paired EAFT - SFT differences (2 standard errors)."""
    lines = []
    rows = comp[comp.what == "eaft - sft"]
    if rows.empty:
        return ["No SFT/EAFT pair to compare."]

    def agg(col):
        r = rows[rows.column == col]
        return None if r.empty else seed_mean(r)

    def say(col, name, lower_better):
        got = agg(col)
        if got is None:
            return
        diff, se = got
        better = diff < 0 if lower_better else diff > 0
        sig = diff != 0 and not math.isnan(se) and abs(diff) > 2 * se
        who = "EAFT" if better else "SFT"
        lines.append(f"- {name}: EAFT − SFT = {diff:+.3f} ± {se:.3f} (paired SE over items, mean over seeds): "
                     + (f"{who} is better, beyond 2 SE." if sig else "within 2 SE: no resolved difference."))

    say(TARGET_NLL, "target NLL/token (lower = more learned)", True)
    say(TARGET_ACC, "held-out GSM8K accuracy (points)", False)
    say("mini_avg", "mini-suite accuracy (points)", False)
    say(DRIFT, "KL to base on general prompts (lower = less drift)", True)
    say("base_answer_nll", "NLL of the base model's general answers (lower = less forgetting)", True)
    return lines


def gain_drift_figure(df: pd.DataFrame, title_text: str):
    """Target gain (base NLL - run NLL) against general drift (KL to base) and mini-suite change, per run."""
    import matplotlib.pyplot as plt

    from analysis.plotting import method_color, method_name

    base = df[df.method == "base"].iloc[0]
    runs = df[df.method != "base"].assign(gain=lambda d: base[TARGET_NLL] - d[TARGET_NLL])
    # A method whose tuned models are worse on the target than the base (mean gain < 0: it failed to learn) would
    # stretch the axes until the methods that learned overlap; it is named under the figure instead.
    gain = runs.groupby("method", sort=False)["gain"].mean()
    failed = [m for m, v in gain.items() if v < 0] if (gain >= 0).any() else []
    off = runs[runs.method.isin(failed)]
    runs = runs[~runs.method.isin(failed)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2 if off.empty else 4.6))
    panels = [(DRIFT, "general drift: KL(tuned || base) per token ↓"),
              ("mini_avg", "general accuracy change: mini suite (points) ↑")]
    for ax, (col, ylabel) in zip(axes, panels):
        if col not in runs:
            ax.set_visible(False)
            continue
        for method, g in runs.groupby("method", sort=False):
            x = g["gain"]
            y = g[col] - (base[col] if col == "mini_avg" else 0.0)
            xerr = g.get(TARGET_NLL + "_se") if len(g) == 1 else None
            yerr = g.get(col + "_se") if len(g) == 1 and col != "mini_avg" else None
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=method_color(method), label=method_name(method),
                        capsize=3, alpha=0.9)
            if len(g) > 1:
                ax.errorbar(x.mean(), y.mean(), xerr=x.std(), yerr=y.std(), fmt="s", color=method_color(method),
                            markersize=9, capsize=4, markeredgecolor="black")
        if col == "mini_avg":
            ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("target gain: held-out NLL/token reduction vs base →")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title_text)
    if not off.empty:
        notes = []
        for method, g in off.groupby("method", sort=False):
            kl = f", KL {g[DRIFT].mean():.3f}" if DRIFT in g else ""
            mini = f", mini {(g['mini_avg'] - base['mini_avg']).mean():+.1f} pts" if "mini_avg" in g else ""
            notes.append(f"{method_name(method)} (gain {g['gain'].mean():+.2f}{kl}{mini})")
        fig.text(0.5, 0.01, "Not drawn, target NLL worse than the base: " + "; ".join(notes), ha="center",
                 fontsize=8)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    else:
        fig.tight_layout()
    return fig


def not_yet(missing: dict[str, dict], n_methods: int) -> str:
    """The runs not evaluated yet, by seed ("seed 0: dft, flow; seeds 1, 2: every method")."""
    by_seed: dict[int, list[str]] = {}
    for meta in missing.values():
        by_seed.setdefault(meta["seed"], []).append(meta["method"])
    every = [s for s, ms in by_seed.items() if len(ms) == n_methods]
    parts = [f"seed {s}: {', '.join(ms)}" for s, ms in by_seed.items() if s not in every]
    if every:
        parts.append(f"seed{'s' if len(every) > 1 else ''} {', '.join(map(str, every))}: every method")
    return "; ".join(parts)


def headlines(comp: pd.DataFrame) -> list[dict]:
    """Every method's paired difference from SFT per column, mean over seeds ± its SE: the numbers a re-run on
    another machine is compared with (experiments/agreement.py)."""
    out = []
    rows = comp[comp.what.str.endswith(" - sft")] if len(comp) else comp
    for (what, col), g in rows.groupby(["what", "column"], sort=False):
        diff, se = seed_mean(g)
        out.append({"name": f"{what}: {col}", "value": float(diff), "se": None if math.isnan(se) else float(se),
                    "seeds": int(g.seed.nunique())})
    return out


def report(metrics_dir: Path, out: Path, *, base: str, runs: dict[str, dict], mech: dict, timings: dict,
           title: str, command: str, n_methods: int, figure_title: str, environment: dict | None = None,
           missing: dict[str, dict] | None = None) -> dict:
    """Write <out>/table.md, summary.json and gain_vs_drift.{png,pdf}; print the table. `runs`: {run: {method,
    seed}} evaluated under `metrics_dir`; `missing`: the profile's runs not evaluated yet (a report of a run in
    progress says so at the top); `environment`: the precision and library versions the runs share."""
    from analysis.plotting import save

    df, loaded = summary_frame(metrics_dir, base, runs)
    cols = [which or bench for bench, which in columns(loaded[base])]
    cols.insert(next((i for i, c in enumerate(cols) if c == DRIFT), len(cols)), "mini_avg")
    header = ["model"] + [title_of(c, None) if c != "mini_avg" else "mini avg (%)" for c in cols]
    lines = [title, "",
             (f"Command: `{command}`. Every number below was produced by that command; with `reuse_kept=true` it "
              "re-renders them from the committed runs and metrics, training nothing."), "",
             *([f"**Partial: {len(runs)} of {len(runs) + len(missing)} runs evaluated so far.** Not yet: "
                + not_yet(missing, n_methods) + f". `{command}` resumes where it "
                "stopped; seed counts below say how many runs each row has.", ""] if missing else []),
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in method_rows(df, cols)]
    n = {c: next((r["n"] for r in loaded[base].values() if r["benchmark"] == c), None) for c in cols}
    lines += ["", "n per column (items): " + ", ".join(f"{c} {v}" for c, v in n.items() if v) + ". Cells: value "
              "± standard error over items for one run; mean ± std over seeds for a row with seeds.", ""]
    comp = pd.DataFrame(comparisons(loaded, base, runs))
    if len({m["method"] for m in runs.values()}) > 2:
        lines += ["## Every method against SFT", "",
                  ("Paired over items, seed by seed, then averaged over seeds (± SE; * beyond 2 SE). Every paired "
                   "difference, per seed and against the base model too, is in paired_differences.csv."), "",
                  *against_sft(comp), ""]
    else:
        lines += ["## Paired differences", "", "| column | difference | seed | value | SE | n |",
                  "|---|---|---|---|---|---|"]
        for r in comp.itertuples():
            lines.append(f"| {r.column} | {r.what} | {r.seed} | {r.diff:+.3f} | "
                         f"{'–' if r.stderr is None or math.isnan(r.stderr) else f'{r.stderr:.3f}'} | {r.n} |")
    lines += ["", "## Does EAFT keep more general capability than SFT here?", "", *verdict(comp), ""]
    lines += ["## Mechanism (training data under the base model)", "",
              (f"- confident-conflict tokens (H < 0.5 nats, p < 0.1): {100 * mech['token_share']:.1f}% of "
               f"{mech['tokens']} supervised tokens, carrying {100 * mech['sft_loss_share']:.1f}% of the SFT loss "
               f"and {100 * mech['eaft_loss_share']:.1f}% of EAFT's; mean EAFT gate {mech['gate_mean']:.2f} "
               f"({mech['conflict_gate_mean']:.2f} on conflicts)"),
              (f"- Pearson correlation of top-20 with full-vocabulary entropy: {mech['pearson_top20_full']:.3f} "
               "(the paper reports 0.999 on Qwen3-4B)"), "",
              "## Time per stage (s)", "", "| stage | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" if isinstance(v, str) else f"| {k} | {v:.0f} |" for k, v in timings.items()]
    secs = [float(str(v).split()[0]) for v in timings.values() if re.match(r"^[\d.]+", str(v))]
    lines += ["", (f"Sum of the stages above: {sum(secs):.0f} s ({sum(secs) / 60:.1f} min); \"(cached)\" marks a "
                   "stage this invocation found done, with the time of the run that did it.")]
    table = out / "table.md"
    atomic_write_text(table, "\n".join(lines) + "\n")
    save(gain_drift_figure(df, figure_title), out / "gain_vs_drift")
    comp.to_csv(out / "paired_differences.csv", index=False)
    summary = {"command": command, "base": base, "runs": runs, "environment": environment,
               "headlines": headlines(comp)}
    atomic_write_json(out / "summary.json", summary)
    print("\n".join(lines), flush=True)
    return {"table": str(table), "summary": str(out / "summary.json"), "rows": df.to_dict("records")}
