"""The conflict study v2's report (results/study/v2/PREREGISTRATION.md): predictions decided with the two-way SE
over seeds and shared items at Student's t of its degrees of freedom, the verdict rule, the control arm, forgetting
per arm, each method against SFT, and the figure. From result files only (no model).

    from analysis.study_report_v2 import report    # called by experiments/study.py for profiles with `report: v2`
    make study PROFILE=v2 ARGS=reuse_kept=true      # re-render results/study/v2 from the committed cells

Arms: lo = natural_notags, hi = the highest injected arm, ctl = control (as many substitutions as hi, at positions
where the model is unsure), op = on_policy (the base model's complete answers). Every contrast is formed per seed
from that seed's runs and paired with the base model over identical items; `analysis.estimators.two_way` gives its
value (mean over seeds), SE (seed noise + item noise, items shared by the seeds) and df.
"""

from __future__ import annotations

from pathlib import Path

from analysis.demo_report import load_run
from analysis.estimators import decide, unfloored
from analysis.study_contrasts import contrast_two_way
from common.files import atomic_write_json, atomic_write_text

TARGET, DRIFT, PROBE, INJECTED = "target_nll", "general_kl", "knowledge_nll", "injected_learned"
MARGIN = 0.01  # KL nats/token: P4's equivalence band, as v1

# id, words, terms [(arm, method, coefficient)], benchmark, which, per item, negate (NLL -> log p), sign, role
PREDICTIONS = [
    ("P1", "SFT drifts more on the injected arm than on natural_notags (KL: hi - lo > 0)",
     [("hi", "sft", 1), ("lo", "sft", -1)], DRIFT, None, False, False, +1, "verdict"),
    ("C1", ("SFT drifts more on the injected arm than on the control arm, which has as many substitutions at unsure "
     "positions (KL: hi - ctl > 0): confident conflicts, not corrupted text, drive the drift"),
     [("hi", "sft", 1), ("ctl", "sft", -1)], DRIFT, None, False, False, +1, "verdict"),
    ("P2", ("EAFT's drift grows less than SFT's from natural_notags to the injected arm "
     "((EAFT hi - lo) - (SFT hi - lo) < 0)"),
     [("hi", "eaft", 1), ("lo", "eaft", -1), ("hi", "sft", -1), ("lo", "sft", 1)], DRIFT, None, False, False, -1,
     "verdict"),
    ("C2", ("EAFT's advantage over SFT is larger on the injected arm than on the control arm "
     "((EAFT - SFT) hi - (EAFT - SFT) ctl < 0)"),
     [("hi", "eaft", 1), ("hi", "sft", -1), ("ctl", "eaft", -1), ("ctl", "sft", 1)], DRIFT, None, False, False, -1,
     "secondary"),
    ("P4", f"On the on_policy arm EAFT and SFT drift alike (|EAFT - SFT| + t SE < {MARGIN} KL)",
     [("op", "eaft", 1), ("op", "sft", -1)], DRIFT, None, False, False, 0, "secondary"),
    ("P5", "EAFT learns less of the injected conflicts than SFT (injected held-out tokens, log p: EAFT - SFT < 0)",
     [("hi", "eaft", 1), ("hi", "sft", -1)], INJECTED, None, False, True, -1, "secondary"),
    ("P6", "SFT keeps less knowledge after the injected arm than after natural_notags (retention: hi - lo < 0)",
     [("hi", "sft", 1), ("lo", "sft", -1)], PROBE, None, True, True, -1, "secondary"),
    ("P7", "EAFT's retention falls less than SFT's ((EAFT hi - lo) - (SFT hi - lo) > 0)",
     [("hi", "eaft", 1), ("lo", "eaft", -1), ("hi", "sft", -1), ("lo", "sft", 1)], PROBE, None, True, True, +1,
     "secondary"),
    ("P8", ("The paper's premise: SFT drifts less on the base model's own complete answers than on the reference "
     "solutions (KL: op - lo < 0)"),
     [("op", "sft", 1), ("lo", "sft", -1)], DRIFT, None, False, False, -1, "secondary"),
]
VERDICT_RULE = ("refuted when P1, C1 or P2 is refuted; supported when P1, C1 and P2 are all confirmed; partly "
                "supported when P1 is confirmed and exactly one of C1 and P2 is, the other unresolved; otherwise "
                "unresolved (PREREGISTRATION.md, Sec. 5)")

# measure: benchmark, which, per item, sign turning run - base into "more is more of the measure"
MEASURES = {"kl_to_base": (DRIFT, None, False, None), "base_answer_nll": (DRIFT, "base_answer_nll", False, +1),
            "knowledge_retention": (PROBE, None, True, -1), "target_gain": (TARGET, None, False, -1),
            "injected_learned": (INJECTED, None, False, -1)}


def overall(preds: dict[str, dict], key: str = "verdict") -> str:
    v = {k: preds[k][key] for k in ("P1", "C1", "P2")}
    if "refuted" in v.values():
        return "refuted"
    if all(x == "confirmed" for x in v.values()):
        return "supported"
    if v["P1"] == "confirmed" and sorted((v["C1"], v["P2"])) == ["confirmed", "unresolved"]:
        return "partly supported"
    return "unresolved"


def _runs(runs: dict[str, dict], main_lr: float) -> dict[tuple, str]:
    return {(c["arm"], c["method"], c["seed"]): r for r, c in runs.items() if c["lr"] == main_lr}


def prediction(loaded, by_key, roles: dict[str, str], spec) -> dict:
    pid, text, terms, bench, which, per_item, negate, sign, role = spec
    seeds = sorted({s for (_, _, s) in by_key})
    per_seed = {}
    for s in seeds:
        keys = [(roles.get(a), m, s) for a, m, _ in terms]
        if all(k in by_key for k in keys):
            per_seed[s] = {by_key[k]: float(c) for k, (_, _, c) in zip(keys, terms)}
    est = contrast_two_way(loaded, per_seed, bench, per_item, which, negate) if per_seed else None
    return {"id": pid, "text": text, "role": role, "measure": bench, "sign": sign,
            "estimator": "two-way random effects over seeds x shared items (analysis/estimators.py)",
            **({k: est[k] for k in ("value", "se", "df", "t_crit", "seeds", "items", "se_seeds", "se_items")}
               if est else {"value": None, "se": None, "df": None, "t_crit": None, "seeds": 0, "items": 0,
                            "se_seeds": None, "se_items": None}),
            "verdict": decide(est, sign, MARGIN),
            # Sec. 4's formula as written, without the estimator's floor (results/LOG.md): shown beside, never replacing
            "floored": bool(est and est.get("floored")), "se_unfloored": est and est.get("se_unfloored"),
            "df_unfloored": est and est.get("df_unfloored"), "verdict_unfloored": decide(unfloored(est), sign, MARGIN)}


def cell_measure(loaded, by_key, base, arm, method, key) -> dict | None:
    """A measure of (arm, method) over its seeds, each seed paired with the base model: {value, se, df, seeds}."""
    bench, which, per_item, sign = MEASURES[key]
    seeds = sorted(s for (a, m, s) in by_key if (a, m) == (arm, method))
    if not seeds:
        return None
    if sign is None:  # a divergence from the base model by construction: the run's own value
        terms = {s: {by_key[(arm, method, s)]: 1.0} for s in seeds}
    else:
        terms = {s: {by_key[(arm, method, s)]: float(sign), base: -float(sign)} for s in seeds}
    est = contrast_two_way(loaded, terms, bench, per_item, which)
    return est and {k: est[k] for k in ("value", "se", "df", "t_crit", "seeds")}


def versus_sft(loaded, by_key, arm, method, key) -> dict | None:
    bench, which, per_item, sign = MEASURES[key]
    seeds = sorted(s for (a, m, s) in by_key if (a, m) == (arm, method) and (arm, "sft", s) in by_key)
    if not seeds:
        return None
    sgn = 1.0 if sign is None else float(sign)
    est = contrast_two_way(loaded, {s: {by_key[(arm, method, s)]: sgn, by_key[(arm, "sft", s)]: -sgn}
                                    for s in seeds}, bench, per_item, which)
    return est and {k: est[k] for k in ("value", "se", "df", "t_crit", "seeds")}


def fmt(est: dict | None, d: int = 3) -> str:
    if not est or est.get("value") is None:
        return "–"
    return f"{est['value']:+.{d}f} ± {est['se']:.{d}f}"


def unfloored_text(p: dict) -> str:
    if p.get("value") is None or p.get("seeds", 0) < 2:
        return "–"
    se = "–" if p["se_unfloored"] is None else f"{p['se_unfloored']:.3f}"
    return f"{'floored; ' if p['floored'] else ''}± {se}, {p['df_unfloored']:.1f}, {p['verdict_unfloored']}"


def df_text(est: dict | None) -> str:
    return "–" if not est or est.get("df") is None else f"{est['df']:.1f}"


def forgetting(est: dict | None) -> str:
    if not est or est.get("se") is None or est.get("seeds", 0) < 2:  # one seed is never decided
        return "–"
    v = decide(est, -1)
    return {"confirmed": "forgets", "refuted": "gains", "unresolved": "no detectable change"}[v]


def sft_forgetting(cells: dict, names: list[str]) -> tuple[list[str], str]:
    """The arms after which SFT forgets (retention below zero beyond t(df) SE), and the sentence the
    preregistration (Sec. 5, "Forgetting per arm") asks the report to state, including when no arm does."""
    label = {a: forgetting(cells.get((a, "sft"), {}).get("knowledge_retention")) for a in names}
    forgets = [a for a in names if label[a] == "forgets"]
    rest = [a for a in names if label[a] not in ("forgets", "–")]
    if not forgets and not rest:
        return [], "SFT's knowledge retention was measured with two seeds or more on no arm."
    if forgets:
        return forgets, (f"SFT forgets (retention below zero beyond t(df) SE) after {', '.join(forgets)}"
                         + (f"; after {', '.join(rest)} it does not." if rest else ": every arm measured."))
    return [], ("No arm makes SFT forget at this scale: on none is SFT's retention below zero beyond t(df) SE. P6 and "
                "P7 therefore compare changes in knowledge, not forgetting.")


def figure(arms: list[dict], cells: dict, methods: list[str]):
    import matplotlib.pyplot as plt

    from analysis.plotting import method_color, method_name

    share = {a["name"]: 100 * a["measured_conflict_share"] for a in arms}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    span = (max(share.values()) - min(share.values())) or 1.0
    for ax, key, label in ((axes[0], "kl_to_base", "drift: KL(tuned || base) per token ↓"),
                           (axes[1], "knowledge_retention", "knowledge retention: Δ log p of the answers ↑")):
        for i, m in enumerate(methods):
            dodge = (i - (len(methods) - 1) / 2) * 0.012 * span
            labelled = False
            for a, x in share.items():
                est = cells.get((a, m), {}).get(key)
                if not est:
                    continue
                hollow = a == "control"
                ax.errorbar(x + dodge, est["value"], yerr=est["t_crit"] * est["se"], fmt="s" if hollow else "o",
                            capsize=3, color=method_color(m), mfc="white" if hollow else method_color(m),
                            label=None if labelled else method_name(m))
                labelled = True
        for x in share.values():
            ax.axvline(x, color="0.85", lw=0.8, zorder=0)
        top = ax.secondary_xaxis("top")
        top.set_xticks(list(share.values()), list(share), rotation=60, ha="left", fontsize=7, color="0.35")
        ax.set_xlabel("measured confident-conflict share of the training data (%)")
        ax.set_ylabel(label)
        if key == "knowledge_retention":
            ax.axhline(0, color="0.5", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.suptitle("Conflict study v2: mean over seeds ± t(df)·SE (two-way over seeds and shared items); "
                 "squares: the control arm", fontsize=10)
    fig.tight_layout()
    return fig


def substitutions_text(s: dict) -> str:
    """One sentence: the tokens the injected arm replaces and the control's count beside it (the control asks for
    as many in each row and gets fewer where the row has too few unsure positions at the required gap)."""
    share = f" ({100 * s['control'] / s['injected']:.0f}%)" if s["injected"] else ""
    text = (f"Substitutions (substitutions.json): {s['injected_arm']} replaces {s['injected']} tokens; the control "
            f"asks for as many in each row and replaces {s['control']}{share}, fewer in {s['rows_with_fewer']} of "
            f"{len(s['rows'])} rows, which hold too few unsure positions at the required gap.")
    if not s["same_as_committed"]:
        text += (" These counts come from a rebuilt substitution pass whose rows differ from the committed arm "
                 "files; they describe the rebuild, not the arms trained.")
    return text


def report(metrics: Path, out: Path, *, base: str, runs: dict[str, dict], arms: list[dict], oq: dict,
           profile: str, command: str, model: str, main_lr: float, environment: dict | None = None,
           substitutions: dict | None = None) -> dict:
    """Write table.md, summary.json and forgetting.{png,pdf}; return their paths. `substitutions`
    (experiments.study_setup.substitutions) adds how many tokens the injected and control arms replace."""
    from analysis.plotting import save

    loaded = {r: load_run(metrics, r) for r in [base, *runs]}
    by_key = _runs(runs, main_lr)
    names = [a["name"] for a in arms]
    injected = [a for a in arms if a["name"].startswith("injected_d")]
    roles = {"lo": "natural_notags", "ctl": "control", "op": "on_policy",
             "hi": max(injected, key=lambda a: a["measured_conflict_share"])["name"] if injected else None}
    preds = {spec[0]: prediction(loaded, by_key, roles, spec) for spec in PREDICTIONS}
    verdict = overall(preds)
    verdict_unfloored = overall(preds, "verdict_unfloored")
    methods = list(dict.fromkeys(c["method"] for c in runs.values()))
    cells = {(a, m): {k: cell_measure(loaded, by_key, base, a, m, k) for k in MEASURES} for a in names for m in methods}
    vs = {(a, m): {k: versus_sft(loaded, by_key, a, m, k) for k in MEASURES}
          for a in names for m in methods if m != "sft"}
    share = {a["name"]: a["measured_conflict_share"] for a in arms}
    forgets_on, forgetting_text = sft_forgetting(cells, names)
    headlines = [{"name": f"{p['id']} ({p['measure']})", "value": p["value"], "se": p["se"], "seeds": p["seeds"]}
                 for p in preds.values()]
    headlines += [{"name": f"{m} - sft on {a}: {k}", "value": e["value"], "se": e["se"], "seeds": e["seeds"]}
                  for (a, m), ks in vs.items() for k, e in ks.items() if e]
    summary = {"profile": profile, "command": command, "model": model, "preregistration": "PREREGISTRATION.md",
               "verdict": verdict, "verdict_unfloored": verdict_unfloored, "verdict_rule": VERDICT_RULE,
               "main_lr": main_lr, "roles": roles,
               "arms": [{k: a.get(k) for k in ("name", "measured_conflict_share", "n_examples", "n_tokens")}
                        for a in arms],
               "substitutions": ({k: v for k, v in substitutions.items() if k not in ("key", "rows")}
                                 if substitutions else None),
               "predictions": list(preds.values()),
               "cells": [{"arm": a, "method": m, **{k: e for k, e in ks.items()}} for (a, m), ks in cells.items()
                         if any(ks.values())],
               "sft_forgets_on": forgets_on, "forgetting": forgetting_text,
               "versus_sft": [{"arm": a, "method": m, **ks} for (a, m), ks in vs.items() if any(ks.values())],
               "open_questions": oq, "environment": environment, "headlines": headlines}
    atomic_write_json(out / "summary.json", summary)

    by = {k: preds[k]["verdict"] for k in preds}
    lines = [f"# Conflict study ({profile}) on {model}", "",
             (f"Command: `{command}`; every number below was produced by it. Design, predictions and decision rules: "
              "PREREGISTRATION.md (committed before the first training run). Machine-readable: summary.json."), "",
             (f"**Verdict on the paper's causal claim: {verdict}** (P1 {by['P1']}, C1 {by['C1']}, P2 {by['P2']}; "
              f"{VERDICT_RULE})."), "",
             ("Every ± below is one standard error from the two-way estimator (seed noise and item noise, the seeds "
              "scoring the same items); a prediction is decided at the two-sided 5% level of Student's t with the "
              "estimator's degrees of freedom (df), not at a fixed 2 SE."), "",
             "## Arms (measured under the base model: H < 0.5 nats and p < 0.1)", "",
             "| arm | role | confident-conflict share | examples | supervised tokens |", "|---|---|---|---|---|"]
    role_of = {v: k for k, v in roles.items() if v}
    lines += [f"| {a['name']} | {role_of.get(a['name'], '–')} | {100 * a['measured_conflict_share']:.2f}% | "
              f"{a['n_examples']} | {a['n_tokens']} |" for a in arms]
    if substitutions:
        lines += ["", substitutions_text(substitutions)]
    lines += ["", f"## Predictions (lr {main_lr:g})", "",
              "| id | role | prediction | value ± SE | df | seeds | verdict | without the floor: SE, df, verdict |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['id']} | {p['role']} | {p['text'].replace('|', '∣')} | {fmt(p)} | {df_text(p)} | {p['seeds']} | "
              f"**{p['verdict']}** | {unfloored_text(p)} |" for p in preds.values()]
    lines += ["", ("Without the floor: the SE and df of Sec. 4's formula alone, (MS_seed + MS_item − MS_err) / (S n) at "
                   "Satterthwaite's df. The estimator (analysis/estimators.py, committed before the preregistration) "
                   "raises that variance to max(MS_seed, MS_item) / (S n), with that mean square's df, when it falls "
                   "below it ('floored' above); the preregistration's text does not state the floor, so both are "
                   f"shown (results/LOG.md). Verdict without the floor: **{verdict_unfloored}**.")]
    lines += ["", "## Cells: each arm and method against the base model (mean over seeds ± SE)", "",
              ("| arm | conflict share | method | seeds | KL to base ↓ | base-answer NLL Δ ↓ | knowledge retention ↑ | "
              "forgetting? | target gain ↑ | injected learned |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for (a, m), ks in cells.items():
        if not any(ks.values()):
            continue
        seeds = max((e["seeds"] for e in ks.values() if e), default=0)
        lines.append(f"| {a} | {100 * share[a]:.2f}% | {m} | {seeds} | {fmt(ks['kl_to_base'])} | "
                     f"{fmt(ks['base_answer_nll'])} | {fmt(ks['knowledge_retention'])} | "
                     f"{forgetting(ks['knowledge_retention'])} | {fmt(ks['target_gain'])} | "
                     f"{fmt(ks['injected_learned'])} |")
    lines += ["", ("\"forgetting?\": retention below zero beyond t(df) SE (forgets), above it (gains), or neither. "
                   "Retention is the change in log p of each known fact's answer tokens, given the question and the "
                   "base model's own lead-in."), "", forgetting_text, "",
              "## Each method minus SFT on the same arm (descriptive)", "",
              "| arm | method | seeds | KL to base Δ | base-answer NLL Δ | knowledge retention Δ | target gain Δ |",
              "|---|---|---|---|---|---|---|"]
    for (a, m), ks in vs.items():
        if any(ks.values()):
            seeds = max((e["seeds"] for e in ks.values() if e), default=0)
            lines.append(f"| {a} | {m} | {seeds} | {fmt(ks['kl_to_base'])} | {fmt(ks['base_answer_nll'])} | "
                         f"{fmt(ks['knowledge_retention'])} | {fmt(ks['target_gain'])} |")
    lines += ["", ("Negative KL and base-answer NLL differences, positive retention and target-gain differences "
                   "favour the method over SFT.")]
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    if runs:
        save(figure(arms, cells, methods), out / "forgetting")
    print("\n".join(lines), flush=True)
    return {"table": str(out / "table.md"), "summary": str(out / "summary.json")}
