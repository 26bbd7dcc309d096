"""Figures of the paper drawn from training logs and evaluation results:

    Fig. 4   entropy_group_ce(curves)   CE of the H >= 2.0 and H <= 0.5 token groups over training, per method
    Fig. 2a  general_vs_step(df)        general average vs training step, per method (intermediate checkpoints)
    Fig. 2b  gain_drop(df)              per domain: target gain (up) and general change (down) vs the base model
    Fig. 5   pareto(df)                 general average vs target average, every method and gating variant

Each takes plain DataFrames and returns a matplotlib Figure (`analysis.plotting.save` writes it); the inputs are
built from runs/<run>/metrics.jsonl and results/metrics by `python -m analysis.figures` (make figures).
Fig. 4's groups are recomputed at every logged step under the current model (training/objective.py logs
ce_high_entropy / ce_low_entropy over that step's batch), as in the paper's curves.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from eaft_loss.losses import HIGH_ENTROPY_MIN, LOW_ENTROPY_MAX

from analysis.plotting import METHOD_ORDER, method_color, method_name, place_labels


def entropy_group_ce(curves: dict[str, pd.DataFrame], title: str | None = None, smooth: int | None = None):
    """curves: {method: frame with step, ce_high_entropy, ce_low_entropy}. Raw values faint, a rolling mean
    (window `smooth`, default ~1/20 of the steps) on top."""
    if not curves:
        raise ValueError("entropy_group_ce needs at least one run's curve")
    groups = {"ce_high_entropy": f"High-entropy tokens ($H \\geq {HIGH_ENTROPY_MIN:g}$)",
              "ce_low_entropy": f"Low-entropy tokens ($H \\leq {LOW_ENTROPY_MAX:g}$)"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, (col, label) in zip(axes, groups.items()):
        for method, c in curves.items():
            d = c[["step", col]].dropna().sort_values("step")
            if d.empty:
                continue
            w = smooth or max(1, len(d) // 20)
            color = method_color(method)
            if w > 1:
                ax.plot(d["step"], d[col], color=color, alpha=0.25, lw=0.8)
            ax.plot(d["step"], d[col].rolling(w, min_periods=1).mean(), color=color, lw=2, label=method_name(method))
        ax.set(title=label, xlabel="Training step", ylabel="Cross-entropy loss (nats/token)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no token of this group was logged", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or "Loss of high- and low-entropy token groups during training")
    return fig


def general_vs_step(df: pd.DataFrame, base_general: float | None = None, title: str | None = None):
    """df: method, step, general (the general average of that checkpoint). A dotted line marks the base model."""
    if df.empty:
        raise ValueError("general_vs_step needs at least one (method, step, general) row")
    fig, ax = plt.subplots(figsize=(6.8, 4.2), constrained_layout=True)
    for method, d in df.sort_values("step").groupby("method", sort=False):
        ax.plot(d["step"], d["general"], "o-", color=method_color(method), lw=2, label=method_name(method))
    if base_general is not None and pd.notna(base_general):
        ax.axhline(base_general, ls=":", color="0.4", label="base model")
    ax.set(xlabel="Training step", ylabel="General average (points)")
    ax.legend()
    ax.set_title(title or "General capability over training")
    return fig


def gain_drop(df: pd.DataFrame, title: str | None = None):
    """df: domain, method, target_gain, general_change (both in points vs the base model; a drop is negative),
    optional source ('ours' | 'paper': the paper's bars are hatched). Top panel: target gain; bottom panel:
    general change; one group of bars per domain (a "domain / model / profile" label), only the series that
    domain has; the legend sits outside the axes."""
    if df.empty:
        raise ValueError("gain_drop needs at least one (domain, method) row")
    df = df.assign(source=df.get("source", "ours"))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    df = df.assign(_o=df["method"].map(lambda m: order.get(m, len(order))), _s=df["source"] != "ours")
    df = df.sort_values(["_o", "_s"], kind="stable")
    domains = list(dict.fromkeys(df["domain"]))
    width = 0.8 / max(len(g) for _, g in df.groupby("domain"))
    fig, axes = plt.subplots(2, 1, figsize=(max(5.5, 2.4 * len(domains) + 1.5) + 1.8, 6.2), sharex=True,
                             layout="constrained")
    seen = set()
    for i, dom in enumerate(domains):
        d = df[df["domain"] == dom]
        for j, r in enumerate(d.itertuples()):
            x = i - width * len(d) / 2 + width * (j + 0.5)
            paper = r.source == "paper"
            label = method_name(r.method) + (" (paper)" if paper else "")
            style = {"color": method_color(r.method), "width": width * 0.92, "edgecolor": "black", "lw": 0.5,
                     "hatch": "//" if paper else None, "alpha": 0.55 if paper else 1.0}
            for ax, v in zip(axes, (r.target_gain, r.general_change)):
                ax.bar(x, v, label=None if label in seen else label, **style)
                if pd.notna(v):  # upright labels would overlap on narrow bars
                    ax.annotate(f"{v:+.1f}", (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=7,
                                xytext=(0, 2 if v >= 0 else -2), textcoords="offset points",
                                rotation=90 if width < 0.15 else 0)
                seen.add(label)
    for ax, ylabel in zip(axes, ("target gain (points)", "general change (points)")):
        ax.axhline(0, color="black", lw=0.8)
        ax.margins(y=0.18)
        ax.set_ylabel(ylabel)
    axes[0].set_title("Target-domain gain vs base model (up is better)", fontsize=10)
    axes[1].set_title("General-capability change vs base model (down is forgetting)", fontsize=10)
    axes[1].set_xticks(range(len(domains)), domains)
    axes[1].set_xlabel("target domain / base model / profile")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")  # never over the bars
    fig.suptitle(title or "Target gain vs general drop, per domain")
    return fig


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point beats on both general and target (ties kept), sorted by general."""
    g, t = points["general"].to_numpy(), points["target"].to_numpy()
    keep = [not np.any((g >= gi) & (t >= ti) & ((g > gi) | (t > ti))) for gi, ti in zip(g, t)]
    return points[keep].sort_values("general")


def pareto(df: pd.DataFrame, target_name: str = "Math", title: str | None = None):
    """df: method, general, target, optional source ('ours' | 'paper', drawn hollow). A method named 'base' is
    the untrained model: a grey star, outside the fronts. Each source's Pareto front is a line."""
    if df.empty:
        raise ValueError("pareto needs at least one (method, general, target) row")
    df = df.assign(source=df.get("source", "ours")).dropna(subset=["general", "target"])
    fig, ax = plt.subplots(figsize=(7.2, 5.2), constrained_layout=True)
    pts, labels, colors = [], [], []
    for source, d in df.groupby("source", sort=False):
        hollow = source == "paper"
        for r in d.itertuples():
            c = method_color(r.method)
            marker = "*" if r.method == "base" else ("D" if hollow else "o")
            ax.scatter(r.general, r.target, s=140 if r.method == "base" else 70, marker=marker,
                       facecolors="none" if hollow else c, edgecolors=c, lw=1.6, zorder=3)
            pts.append((r.general, r.target))
            labels.append(("base model" if r.method == "base" else method_name(r.method)) + (" (paper)" if hollow else ""))
            colors.append(c)
        front = pareto_front(d[d["method"] != "base"])
        if len(front) > 1:
            ax.plot(front["general"], front["target"], ls="--" if hollow else "-", color="0.5", lw=1, zorder=1,
                    label=f"Pareto front ({source})")
    ax.set(xlabel="General average (points)", ylabel=f"{target_name} average (points)")
    ax.margins(0.08)
    place_labels(ax, pts, labels, colors)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")
    ax.set_title(title or f"General vs {target_name.lower()}: every method and gating variant")
    return fig
