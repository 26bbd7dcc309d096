"""The conflict study's report, from <metrics_dir> (results/study/metrics) and <out_dir>/{arms,open_questions}.json
(no model needed).

    from analysis.study_report import report      # called by experiments/study.py
    make study ARGS=reuse_kept=true               # re-render results/study from the committed cells

Writes <out_dir>/table.md, summary.json, dose_response.png, pareto.png, open_questions.png.

Measures per cell (a trained model), each paired with the base model over identical items (analysis.demo_report):
    target_gain          base - tuned NLL per token on the natural held-out solutions (same target for every arm)
    kl_to_base           KL(tuned || base) per token on the base model's answers to general prompts (drift)
    base_answer_nll      tuned - base NLL per token of those base answers (the secondary drift measure)
    knowledge_retention  mean over probe facts of log p_tuned(answer) - log p_base(answer), answer turn in nats
    mini_acc             tuned - base accuracy (percentage points), mean of the mini multiple-choice benchmarks
                         (every other benchmark of the profile: arc_easy, piqa), paired per item
    injected_learned     mean over substituted held-out tokens of log p_tuned - log p_base (nats per token)
Predictions (results/study/PREREGISTRATION.md) are contrasts of these across arms and methods at the main learning
rate, computed per seed over paired items and averaged over seeds; the verdict applies the preregistered rule,
and the overall verdict on the paper's causal claim follows from P1 and P2 (PREREGISTRATION.md, Sec. 4).
A descriptive table, not preregistered, gives each method minus SFT on every arm (versus_sft).
"""

from __future__ import annotations

import math
from pathlib import Path

from analysis.demo_report import load_run
from analysis.estimators import decide
from analysis.study_contrasts import contrast_table, contrast_two_way
from common.files import atomic_write_json, atomic_write_text
from evaluation.likelihood import ratio_stats

TARGET, DRIFT, PROBE, INJECTED = "target_nll", "general_kl", "knowledge_nll", "injected_learned"
MEASURES = ("target_gain", "kl_to_base", "base_answer_nll", "knowledge_retention", "mini_acc", "injected_learned")
LOW_ARM = "natural_notags"       # the reference arm of the dose contrasts
EQUIVALENCE_MARGIN = 0.01        # KL nats/token: P4's "no difference" band (PREREGISTRATION.md)
Z = 2.0                          # decision threshold in standard errors


def contrast(loaded: dict, terms: dict[str, float], bench: str, per_item: bool = False,
             which: str | None = None) -> dict | None:
    """sum_run coef * value(run) over the items every run scored: token-weighted (ratio) or per item (mean).
    which="base_answer_nll" reads general_kl's NLL sums. None when a run or the benchmark is missing."""
    table = contrast_table(loaded, {0: terms}, bench, per_item, which)
    if table is None:
        return None
    x, t, _ = table
    st = ratio_stats(list(x[0]), list(t))
    return {"diff": st["value"], "stderr": st["stderr"], "n": st["n"]}


def seed_mean(parts: list[dict]) -> dict | None:
    """Mean of per-seed contrasts. `se`: the preregistered SE, from the per-seed item SEs as if the seeds were
    independent; it holds no training noise, and the seeds share their items. `se_seeds`: the SE of the mean over
    the seeds' spread (std / sqrt(n) over n >= 2 seeds; None for one), which does (results/LOG.md, 2026-12-03)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    n = len(parts)
    mean, se_seeds = mean_and_seed_se([p["diff"] for p in parts])
    se = (math.sqrt(sum(p["stderr"] ** 2 for p in parts)) / n
          if all(p["stderr"] is not None for p in parts) else None)
    return {"value": mean, "se": se, "se_seeds": se_seeds, "seeds": n}


def mean_and_seed_se(vals: list[float]) -> tuple[float, float | None]:
    """Mean of per-seed values and the SE of that mean from their spread (std / sqrt(n)); None for one seed."""
    n = len(vals)
    mean = sum(vals) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else None)


def cell_measures(loaded: dict, base: str, run: str) -> dict:
    """The measures of one run, each {value, se} (None when not evaluated); all but kl_to_base (a divergence from
    the base model by construction) are tuned - base differences over paired items."""
    def neg(c):
        return None if c is None else {"value": -c["diff"], "se": c["stderr"]}

    def pos(c):
        return None if c is None else {"value": c["diff"], "se": c["stderr"]}

    pair = {run: 1.0, base: -1.0}
    out = {"target_gain": neg(contrast(loaded, pair, TARGET)),
           "base_answer_nll": pos(contrast(loaded, pair, DRIFT, which="base_answer_nll")),
           "knowledge_retention": neg(contrast(loaded, pair, PROBE, per_item=True)),
           "injected_learned": neg(contrast(loaded, pair, INJECTED))}
    r = loaded[run]
    out["kl_to_base"] = {"value": r[DRIFT]["value"], "se": r[DRIFT]["stderr"]} if DRIFT in r else None
    mini = [b for b in loaded[base] if b not in (TARGET, DRIFT, PROBE, INJECTED)]
    minis = [c for c in (contrast(loaded, pair, b, per_item=True) for b in mini) if c is not None]
    out["mini_acc"] = ({"value": sum(m["diff"] for m in minis) / len(minis),
                        "se": math.sqrt(sum((m["stderr"] or 0) ** 2 for m in minis)) / len(minis)} if minis else None)
    return out


# ---- predictions --------------------------------------------------------------------------------------------

PREDICTIONS = [
    ("P1", "SFT's drift (KL to base) grows with the conflict share: highest injected arm minus natural_notags > 0",
     "dose", "sft", None, DRIFT, +1),
    ("P2", "EAFT's drift grows less than SFT's: (EAFT hi - lo) - (SFT hi - lo) < 0", "dose", "eaft", "sft", DRIFT, -1),
    ("P3", "The pilot mask's drift grows less than SFT's: (Masked-SFT-pilot hi - lo) - (SFT hi - lo) < 0", "dose",
     "masked_sft_pilot", "sft", DRIFT, -1),
    ("P4", f"On the on_policy arm EAFT and SFT drift alike: |EAFT - SFT| + 2 SE < {EQUIVALENCE_MARGIN} KL",
     "on_policy", "eaft", "sft", DRIFT, 0),
    ("P5", "EAFT learns less of the injected conflict than SFT on the highest injected arm: EAFT - SFT < 0",
     "injected", "eaft", "sft", INJECTED, -1),
    ("P6", "SFT's knowledge retention falls with the conflict share: highest injected arm minus natural_notags < 0",
     "dose", "sft", None, PROBE, -1),
    ("P7", "EAFT's knowledge retention falls less than SFT's: (EAFT hi - lo) - (SFT hi - lo) > 0", "dose", "eaft",
     "sft", PROBE, +1),
]


def verdict(value: float | None, se: float | None, sign: int) -> str:
    """sign +1 / -1: confirmed beyond Z SE in that direction, refuted beyond Z SE against it; sign 0: equivalence.
    For sign 0 the preregistered table's two conditions (refuted: |d| > 2 SE; confirmed: |d| + 2 SE < margin) can
    both hold; refuted is checked first, as this code did before any result (see within_margin_note)."""
    if value is None or se is None:
        return "unresolved"
    if sign == 0:
        if abs(value) > Z * se:
            return "refuted"
        return "confirmed" if abs(value) + Z * se < EQUIVALENCE_MARGIN else "unresolved"
    if abs(value) <= Z * se:
        return "unresolved"
    return "confirmed" if value * sign > 0 else "refuted"


def overall_verdict(preds: list[dict]) -> str:
    """PREREGISTRATION.md, Sec. 4: supported when P1 and P2 are confirmed; refuted when P1 is confirmed and P2
    refuted, or when P1 is refuted; otherwise unresolved."""
    v = {p["id"]: p["verdict"] for p in preds}
    p1, p2 = v.get("P1", "unresolved"), v.get("P2", "unresolved")
    if p1 == "confirmed" and p2 == "confirmed":
        return "supported"
    if p1 == "refuted" or (p1 == "confirmed" and p2 == "refuted"):
        return "refuted"
    return "unresolved"


VERDICT_RULE = ("supported when P1 and P2 are confirmed; refuted when P1 is confirmed and P2 refuted, or when P1 is "
                "refuted; otherwise unresolved (PREREGISTRATION.md, Sec. 4)")


def prediction_terms(runs: dict[str, dict], main_lr: float, hi_arm: str | None, spec) -> dict[int, dict]:
    """{seed: {run: coefficient}}: a prediction's contrast built from each seed's runs at the main learning rate,
    for every seed that has them all."""
    _, _, kind, m, ref, _, _ = spec
    run = {(c["arm"], c["method"], c["lr"], c["seed"]): r for r, c in runs.items()}
    out = {}
    for s in sorted({c["seed"] for c in runs.values()}):
        if kind == "dose":
            keys = [(hi_arm, m, +1.0), (LOW_ARM, m, -1.0)] + ([(hi_arm, ref, -1.0), (LOW_ARM, ref, +1.0)]
                                                               if ref else [])
        else:
            arm = "on_policy" if kind == "on_policy" else hi_arm
            keys = [(arm, m, +1.0), (arm, ref, -1.0)]
        terms = {run.get((a, mm, main_lr, s)): c for a, mm, c in keys}
        if None not in terms and hi_arm is not None:
            out[s] = terms
    return out


def prediction_values(loaded: dict, runs: dict[str, dict], main_lr: float, hi_arm: str | None) -> list[dict]:
    """Each prediction's contrast, per seed then averaged, and its verdict."""
    out = []
    for spec in PREDICTIONS:
        pid, text, _, _, _, bench, sign = spec
        parts = []
        for terms in prediction_terms(runs, main_lr, hi_arm, spec).values():
            c = contrast(loaded, terms, bench, bench == PROBE)
            if c is not None and bench in (PROBE, INJECTED):
                c = {**c, "diff": -c["diff"]}  # nll -> log p: retention and learning are log-probability gains
            parts.append(c)
        m_ = seed_mean(parts) or {"value": None, "se": None, "se_seeds": None, "seeds": 0}
        value, se, se_seeds = m_["value"], m_["se"], m_["se_seeds"]
        wider = None if se is None or se_seeds is None else verdict(value, max(se, se_seeds), sign)
        out.append({"id": pid, "text": text, "verdict": verdict(value, se, sign), "value": value, "se": se,
                    "seeds": m_["seeds"], "measure": bench, "se_seeds": se_seeds,
                    "verdict_wider_se": wider, "sign": sign})  # None: one seed, no SE over seeds
    return out


def two_way_values(loaded: dict, runs: dict[str, dict], main_lr: float, hi_arm: str | None) -> list[dict]:
    """The same predictions re-decided with the two-way SE over seeds and shared items at t(df)
    (analysis/estimators.py): a deviation from the preregistered SE, added after the study (results/LOG.md,
    2026-12-07) because that SE held no seed noise and counted the seeds' shared items as independent."""
    out = []
    for spec in PREDICTIONS:
        pid, _, _, _, _, bench, sign = spec
        per_seed = prediction_terms(runs, main_lr, hi_arm, spec)
        est = (contrast_two_way(loaded, per_seed, bench, bench == PROBE, negate=bench in (PROBE, INJECTED))
               if per_seed else None)
        out.append({"id": pid, "value": est and est["value"], "se": est and est["se"], "df": est and est["df"],
                    "seeds": est["seeds"] if est else 0, "verdict": decide(est, sign, EQUIVALENCE_MARGIN)})
    return out


def within_margin_note(p: dict) -> str | None:
    """An equivalence prediction refuted by a difference beyond 2 SE that still lies inside the margin."""
    if p["sign"] != 0 or p["verdict"] != "refuted" or abs(p["value"]) + Z * p["se"] >= EQUIVALENCE_MARGIN:
        return None
    return (f"{p['id']}: the difference is beyond {Z:g} SE (refuted) but |d| + {Z:g} SE = "
            f"{abs(p['value']) + Z * p['se']:.4f} lies inside the {EQUIVALENCE_MARGIN} equivalence margin: a "
            "difference exists and is smaller than the margin. The preregistered table's two conditions both hold; "
            "the refutation is reported, as the rule was coded before any result.")


# ---- each method against SFT (descriptive) -------------------------------------------------------------------

VERSUS_SFT = (("kl_to_base", DRIFT, False, +1), ("base_answer_nll", DRIFT, False, +1),
              ("knowledge_retention", PROBE, True, -1),
              ("target_gain", TARGET, False, -1))  # (key, benchmark, per item, sign: -1 turns an NLL into a gain)


def versus_sft(loaded: dict, runs: dict[str, dict], main_lr: float, arm_order: list[str]) -> list[dict]:
    """Each method minus SFT on the same arm at the main lr, paired over items per seed and averaged over the seeds
    both ran. Descriptive, not preregistered (added after the full study: results/LOG.md, 2026-12-03): the
    predictions compare slopes between arms; this says where on the conflict axis each method drifts or retains
    more than SFT. `<key>_se` is the wider of the item SE and the SE over seeds."""
    run = {(c["arm"], c["method"], c["seed"]): r for r, c in runs.items() if c["lr"] == main_lr}
    methods = [m for m in dict.fromkeys(c["method"] for c in runs.values() if c["lr"] == main_lr) if m != "sft"]
    out = []
    for arm in arm_order:
        for m in methods:
            seeds = sorted(s for (a, mm, s) in run if (a, mm) == (arm, m) and (arm, "sft", s) in run)
            if not seeds:
                continue
            row = {"arm": arm, "method": m, "seeds": len(seeds)}
            for key, bench, per_item, sign in VERSUS_SFT:
                which = "base_answer_nll" if key == "base_answer_nll" else None
                agg = seed_mean([contrast(loaded, {run[(arm, m, s)]: float(sign), run[(arm, "sft", s)]: -float(sign)},
                                          bench, per_item, which) for s in seeds])
                row[key] = agg and agg["value"]
                row[key + "_se"] = agg and max((x for x in (agg["se"], agg["se_seeds"]) if x is not None),
                                               default=None)
            out.append(row)
    return out


def headlines(preds: list[dict], vs_sft: list[dict]) -> list[dict]:
    """The numbers a re-run on another machine is compared with (experiments/agreement.py): every prediction's
    value with the wider of its SEs, and every method-minus-SFT difference."""
    out = [{"name": f"{p['id']} ({p['measure']})", "value": p["value"],
            "se": max((x for x in (p["se"], p["se_seeds"]) if x is not None), default=None), "seeds": p["seeds"]}
           for p in preds]
    out += [{"name": f"{r['method']} - sft on {r['arm']}: {key}", "value": r[key], "se": r[key + "_se"],
             "seeds": r["seeds"]} for r in vs_sft for key, *_ in VERSUS_SFT]
    return out


# ---- figures ------------------------------------------------------------------------------------------------

def _agg(cells: list[dict], key: str) -> tuple[float, float]:
    """Mean over seeds, and its error bar: the SE over items for one seed, the std / sqrt(n) over seeds."""
    have = [c for c in cells if c[key] is not None]
    vals = [c[key] for c in have]
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], have[0].get(key + "_se") or 0.0
    return mean_and_seed_se(vals)


def group(cells: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for c in cells:
        out.setdefault((c["arm"], c["method"], c["lr"]), []).append(c)
    return out


def dose_response(arms: list[dict], cells: list[dict], main_lr: float):
    import matplotlib.pyplot as plt

    from analysis.plotting import method_color, method_name

    share = {a["name"]: 100 * a["measured_conflict_share"] for a in arms}
    g = group(cells)
    methods = list(dict.fromkeys(c["method"] for c in cells))
    span = max(share.values()) - min(share.values()) if share else 0.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, key, label in ((axes[0], "kl_to_base", "drift: KL(tuned || base) per token ↓"),
                           (axes[1], "knowledge_retention", "knowledge retention: Δ log p of known facts ↑")):
        for i, m in enumerate(methods):
            dodge = (i - (len(methods) - 1) / 2) * 0.008 * span  # arms 0.2 points apart stay apart
            pts = sorted((share[a] + dodge, *_agg(g[(a, m, main_lr)], key)) for a in share if (a, m, main_lr) in g)
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, fmt="o-", capsize=3, color=method_color(m), label=method_name(m))
        for x in share.values():
            ax.axvline(x, color="0.85", lw=0.8, zorder=0)
        top = ax.secondary_xaxis("top")  # which arm each x is (natural_notags and natural lie 0.2 points apart)
        top.set_xticks(list(share.values()), list(share), rotation=75, ha="left", fontsize=7, color="0.35")
        top.tick_params(length=2, pad=1)
        ax.set_xlabel("measured confident-conflict share of the training data (%)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Forgetting vs measured conflict share (lr {main_lr:g}; mean ± SE: over items for one seed, "
                 "over seeds for more)", fontsize=10)
    fig.tight_layout()
    return fig


def pareto(arms: list[dict], cells: list[dict], main_lr: float):
    import matplotlib.pyplot as plt

    from analysis.plotting import method_color, method_name

    g = group(cells)
    fig, axes = plt.subplots(1, len(arms), figsize=(3.3 * len(arms), 3.8), squeeze=False, sharex=True, sharey=True)
    for ax, arm in zip(axes[0], [a["name"] for a in arms]):
        for m in dict.fromkeys(c["method"] for c in cells):
            pts = sorted((*_agg(g[k], "kl_to_base"), *_agg(g[k], "target_gain"), k[2]) for k in g if k[:2] == (arm, m))
            if not pts:
                continue
            ax.plot([q[0] for q in pts], [q[2] for q in pts], "-", color=method_color(m), lw=1)
            for xi, xei, yi, yei, lr in pts:  # filled: the main learning rate; open: the other
                ax.errorbar(xi, yi, xerr=xei, yerr=yei, fmt="o", capsize=2, color=method_color(m),
                            mfc=method_color(m) if lr == main_lr else "white",
                            label=method_name(m) if lr == main_lr else None)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("KL to base ↓")
    axes[0][0].set_ylabel("target gain (NLL/token) ↑")
    axes[0][0].legend(fontsize=7)
    other = sorted({k[2] for k in g} - {main_lr})
    fig.suptitle(f"Target gain vs drift per arm; filled: lr {main_lr:g}"
                 + (f", open: lr {', '.join(f'{lr:g}' for lr in other)} (joined per method)" if other else ""),
                 fontsize=10)
    fig.tight_layout()
    return fig


def open_questions_figure(oq: dict):
    import matplotlib.pyplot as plt

    rows = oq["rows"]
    t = [r["temperature"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for k in sorted(int(c.removeprefix("pearson_top")) for c in rows[0] if c.startswith("pearson_top")):
        axes[0].plot(t, [r[f"pearson_top{k}"] for r in rows], "o-", label=f"top-{k}")
    line = oq.get("key", {}).get("q", {}).get("holds_min_pearson")
    if isinstance(line, (int, float)):
        axes[0].axhline(line, ls="--", color="0.5", lw=1, label=f"r = {line:g}")
    axes[0].set_xlabel("softmax temperature")
    axes[0].set_ylabel("Pearson r with full entropy")
    axes[0].legend(fontsize=8)
    axes[1].plot(t, [r["gate_mean"] for r in rows], "o-")
    axes[1].set_xlabel("softmax temperature")
    axes[1].set_ylabel("mean EAFT gate")
    fig.tight_layout()
    return fig


# ---- report -------------------------------------------------------------------------------------------------

def cell_text(text: str) -> str:
    """Text for a markdown table cell: a `|` (P4's |EAFT - SFT|) would end the cell."""
    return text.replace("|", "\\|")


def verdict_of(preds: list[dict], pid: str) -> str:
    return next((p["verdict"] for p in preds if p["id"] == pid), "unresolved")


def fmt(v, se=None, d=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.{d}f}" + (f" ± {se:.{d}f}" if se is not None else "")


def fmt_df(df: float | None) -> str:
    return "–" if df is None else f"{df:.1f}"


def fmt_se(se: float | None, d=3) -> str:
    return "–" if se is None else f"{se:.{d}f}"


def report(metrics: Path, out: Path, *, base: str, runs: dict[str, dict], arms: list[dict], oq: dict,
           profile: str, command: str, model: str, main_lr: float, environment: dict | None = None) -> dict:
    """Write table.md, summary.json and the figures; return their paths. `runs`: {run: {arm, method, lr, seed}}
    evaluated under `metrics`; `main_lr`: the learning rate of the predictions; `environment`: the precision and
    library versions every cell shares."""
    from analysis.plotting import save

    loaded = {r: load_run(metrics, r) for r in [base, *runs]}
    cells = []
    for run, c in runs.items():
        m = cell_measures(loaded, base, run)
        cells.append({"run": run, **c, **{k: m[k]["value"] if m[k] else None for k in MEASURES},
                      **{k + "_se": m[k]["se"] if m[k] else None for k in MEASURES}})
    injected = [a for a in arms if a["name"].startswith("injected_d")]
    hi = max(injected, key=lambda a: a["measured_conflict_share"])["name"] if injected else None
    preds = prediction_values(loaded, runs, main_lr, hi)
    overall = overall_verdict(preds)
    by_id = {p["id"]: p for p in preds}
    overall_wider = (overall_verdict([{"id": i, "verdict": by_id[i]["verdict_wider_se"]} for i in ("P1", "P2")])
                     if all(by_id.get(i, {}).get("verdict_wider_se") for i in ("P1", "P2")) else None)
    vs_sft = versus_sft(loaded, runs, main_lr, [a["name"] for a in arms])
    redecided = two_way_values(loaded, runs, main_lr, hi)
    by_two_way = {p["id"]: p["verdict"] for p in redecided}
    summary = {"profile": profile, "command": command, "model": model,
               "verdict": overall, "verdict_rule": VERDICT_RULE, "verdict_wider_se": overall_wider,
               "main_lr": main_lr, "highest_injected_arm": hi,
               "arms": [{k: a[k] for k in ("name", "measured_conflict_share", "n_examples", "n_tokens")} for a in arms],
               "cells": cells, "predictions": preds, "versus_sft": vs_sft, "open_questions": oq,
               "predictions_two_way": redecided,
               "verdict_two_way": overall_verdict([{"id": i, "verdict": by_two_way[i]} for i in ("P1", "P2")]),
               "environment": environment, "headlines": headlines(preds, vs_sft)}
    atomic_write_json(out / "summary.json", summary)
    lines = [f"# Conflict study ({profile}) on {model}", "",
             (f"Command: `{command}`; every number below was produced by it. Design, predictions "
              "and decision rules: PREREGISTRATION.md. Machine-readable: summary.json."), "",
             (f"**Verdict on the paper's causal claim: {overall}** (P1 {verdict_of(preds, 'P1')}, "
              f"P2 {verdict_of(preds, 'P2')}; {VERDICT_RULE})."), "",
             (f"With the wider of the preregistered SE and the SE over seeds (added, not preregistered: "
              f"results/LOG.md, 2026-12-03): {overall_wider or 'not available (P1 or P2 has one seed)'}."), "",
             "## Arms (measured under the base model: H < 0.5 nats and p < 0.1)", "",
             "| arm | confident-conflict share | examples | supervised tokens |", "|---|---|---|---|"]
    lines += [f"| {a['name']} | {100 * a['measured_conflict_share']:.2f}% | {a['n_examples']} | {a['n_tokens']} |"
              for a in arms]
    lines += ["", ("## Cells (paired with the base model; mean over seeds ± SE: over items for one seed, over "
                   "seeds for more)"), "",
              ("| arm | method | lr | seeds | target gain ↑ | KL to base ↓ | base-answer NLL Δ ↓ | "
               "knowledge retention ↑ | mini acc Δ (pp) | injected learned |"), "|---" * (4 + len(MEASURES)) + "|"]
    for (arm, method, lr), cs in group(cells).items():
        vals = [fmt(*_agg(cs, k), d=1 if k == "mini_acc" else 3) for k in MEASURES]
        lines.append(f"| {arm} | {method} | {lr:g} | {len(cs)} | " + " | ".join(vals) + " |")
    lines += ["", f"## Predictions (main lr {main_lr:g}; highest injected arm {hi}; decision at {Z:g} SE)", "",
              ("SE: the preregistered one, from the per-seed item SEs (no training noise). SE over seeds: std / "
               "sqrt(n) of the per-seed contrasts (needs 2 seeds or more); the last column applies the same rule "
               "with the wider of the two (added, not preregistered: results/LOG.md, 2026-12-03)."), "",
              "| id | prediction | value ± SE | seeds | verdict | SE over seeds | verdict at the wider SE |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {p['id']} | {cell_text(p['text'])} | {fmt(p['value'], p['se'])} | {p['seeds']} | "
              f"**{p['verdict']}** | {fmt_se(p['se_seeds'])} | "
              f"{p['verdict_wider_se'] or ('– (one seed)' if p['seeds'] == 1 else '–')} |" for p in preds]
    notes = [n for n in map(within_margin_note, preds) if n]
    lines += ["", *notes] if notes else []
    lines += ["", "### The same predictions with the two-way SE (a deviation, not the preregistered verdict)", "",
              ("Added on 2026-12-07 (results/LOG.md): the preregistered SE holds no training noise and counts the "
               "items every seed scored as if each seed had drawn its own. The two-way estimator "
               "(analysis/estimators.py) takes both into account; a prediction is decided at the two-sided 5% "
               "level of Student's t at its degrees of freedom. The preregistered verdict above stands; this is "
               f"what the same rule gives with it: **{summary['verdict_two_way']}**."),
              "", "| id | value ± two-way SE | df | seeds | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {p['id']} | {fmt(p['value'], p['se'])} | {fmt_df(p['df'])} | {p['seeds']} | **{p['verdict']}** |"
              for p in redecided]
    share = {a["name"]: a["measured_conflict_share"] for a in arms}
    lines += ["", f"## Each method minus SFT on the same arm (lr {main_lr:g}; descriptive, not preregistered)", "",
              ("Paired over items per seed, averaged over the seeds both ran; ± the wider of the item SE and the SE "
               "over seeds (one-seed rows: the item SE, which holds no training noise). A negative KL difference "
               "and a positive retention or target-gain difference favour the method. Added after the full study "
               "had run (results/LOG.md, 2026-12-03): the predictions compare how drift changes between arms, this "
               "shows where each method stands against SFT on each arm. The base-answer NLL column (the secondary "
               "drift measure; negative favours the method) was added on 2026-12-07."), "",
              ("| arm | conflict share | method | seeds | KL to base Δ | base-answer NLL Δ | knowledge retention Δ | "
               "target gain Δ |"), "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {100 * share[r['arm']]:.2f}% | {r['method']} | {r['seeds']} | "
              + " | ".join(fmt(r[k], r[k + "_se"]) for k, *_ in VERSUS_SFT) + " |" for r in vs_sft]
    lines += ["", "## Open questions on the base model (natural arm, temperature-scaled logits)", "",
              "| T | mean gate | " + " | ".join(k for k in oq["rows"][0] if k.startswith("pearson")) + " |",
              "|---" * (2 + sum(k.startswith("pearson") for k in oq["rows"][0])) + "|"]
    lines += [f"| {r['temperature']:g} | {r['gate_mean']:.3f} | "
              + " | ".join(f"{v:.3f}" for k, v in r.items() if k.startswith("pearson")) + " |" for r in oq["rows"]]
    fails = oq["top20_fails_from_temperature"]
    lines += ["", f"Top-20 holds while {oq['criterion']}: " + (f"it fails from T = {fails:g}." if fails is not None
                                                                else "it holds at every temperature measured.")]
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    if cells:
        save(dose_response(arms, cells, main_lr), out / "dose_response")
        save(pareto(arms, cells, main_lr), out / "pareto")
    save(open_questions_figure(oq), out / "open_questions")
    print("\n".join(lines), flush=True)
    return {"table": str(out / "table.md"), "summary": str(out / "summary.json")}
