"""Token-level figures of the paper, drawn from token-statistics frames (analysis/token_stats.py):

    Fig. 1b  landscape(frames)        entropy-probability density, SFT data vs on-policy rollouts
    Fig. 3   gradient_map(frame)      per-token logit-gradient norm over the same plane, SFT vs EAFT
    Fig. 6   topk_figure(corr, paper) top-K entropy: Pearson with full entropy, and memory, vs K
    Fig. 7   region_tokens(tops)      the most frequent tokens of each region (bars)

Each function takes plain DataFrames and returns a matplotlib Figure; `analysis.plotting.save` writes it.
Rendered from the committed parquet files by `python -m analysis.figures` (make figures).

Fig. 3's definition: with the gate detached, d(w_t CE_t)/dz_t = w_t (softmax(z_t) - onehot(y_t)), so the
per-token logit-gradient norm is ||softmax - onehot||_2 for SFT and H~_t ||softmax - onehot||_2 for EAFT
(`grad_norm` and `gate` columns). Colour: the mean over the tokens in each (p, H) bin.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from eaft_loss.losses import CONFLICT_MAX_ENTROPY, CONFLICT_MAX_PROB
from matplotlib.colors import LogNorm, Normalize
from matplotlib.patches import Rectangle

from analysis.plotting import CONFLICT_COLOR
from analysis.summaries import REGION_LABELS, region_masks

P_LABEL = "Token probability $p(y_t)$"
H_LABEL = "Token entropy $H_t$ (nats, full vocabulary)"


def _bins(frames: list[pd.DataFrame], n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    top = max(float(np.nanquantile(f["entropy"], 0.999)) for f in frames if len(f))
    return np.linspace(0, 1, n + 1), np.linspace(0, max(1.0, top * 1.02), n + 1)


def _mark_conflicts(ax, share: float | None = None) -> None:
    """Outline the confident-conflict region (H < 0.5, p < 0.1) and print its share of tokens."""
    ax.add_patch(Rectangle((0, 0), CONFLICT_MAX_PROB, CONFLICT_MAX_ENTROPY, fill=False, lw=1.8,
                           ec=CONFLICT_COLOR, zorder=5))
    text = "confident conflicts" if share is None else f"confident conflicts: {100 * share:.1f}% of tokens"
    ax.annotate(text, xy=(CONFLICT_MAX_PROB, CONFLICT_MAX_ENTROPY), xytext=(0.2, 0.78), textcoords="axes fraction",
                color=CONFLICT_COLOR, fontsize=9, fontweight="bold", zorder=6,
                bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": CONFLICT_COLOR, "alpha": 0.9},
                arrowprops={"arrowstyle": "->", "color": CONFLICT_COLOR, "lw": 1.2})


def landscape(frames: dict[str, pd.DataFrame], title: str | None = None, bins: int = 40):
    """Fig. 1b: share of tokens per (p, H) bin, one panel per frame (e.g. SFT data, rollouts), shared scale."""
    frames = {k: v for k, v in frames.items() if v is not None}
    if not frames or not any(len(f) for f in frames.values()):
        raise ValueError("landscape needs at least one non-empty token frame")
    xb, yb = _bins(list(frames.values()), bins)
    hists = {k: np.histogram2d(f["prob"], f["entropy"], bins=[xb, yb])[0].T / max(1, len(f)) * 100
             for k, f in frames.items()}
    positive = np.concatenate([h[h > 0] for h in hists.values()])
    norm = LogNorm(vmin=max(positive.min(), 1e-3), vmax=positive.max())
    fig, axes = plt.subplots(1, len(frames), figsize=(5.2 * len(frames) + 0.8, 4.4), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, (name, f) in zip(axes[0], frames.items()):
        im = ax.pcolormesh(xb, yb, np.ma.masked_equal(hists[name], 0), norm=norm, cmap="viridis")
        _mark_conflicts(ax, float(region_masks(f)["confident_conflict"].mean()) if len(f) else None)
        ax.set(title=f"{name}\n{f['example'].nunique():,} prompts, {len(f):,} tokens", xlabel=P_LABEL, xlim=(0, 1),
               ylim=(yb[0], yb[-1]))
        ax.grid(False)
    axes[0][0].set_ylabel(H_LABEL)
    fig.colorbar(im, ax=axes[0].tolist(), label="share of tokens per bin (%)")
    fig.suptitle(title or "Token entropy–probability landscape")
    return fig


def gradient_map(frame: pd.DataFrame, title: str | None = None, bins: int = 40):
    """Fig. 3: mean per-token logit-gradient norm in each (p, H) bin, SFT (left) vs EAFT (right)."""
    if frame is None or not len(frame):
        raise ValueError("gradient_map needs a non-empty token frame")
    xb, yb = _bins([frame], bins)
    count = np.histogram2d(frame["prob"], frame["entropy"], bins=[xb, yb])[0].T
    conflict = region_masks(frame)["confident_conflict"]
    panels = {"SFT: $\\|\\mathrm{softmax}-\\mathrm{onehot}\\|_2$": frame["grad_norm"],
              "EAFT: $\\tilde H_t\\,\\|\\mathrm{softmax}-\\mathrm{onehot}\\|_2$": frame["gate"] * frame["grad_norm"]}
    grids = {}
    for name, g in panels.items():
        s = np.histogram2d(frame["prob"], frame["entropy"], bins=[xb, yb], weights=g)[0].T
        grids[name] = np.where(count > 0, s / np.maximum(count, 1), np.nan)
    vmax = np.nanmax([np.nanmax(v) for v in grids.values()])
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4), sharey=True, constrained_layout=True)
    for ax, (name, grid) in zip(axes, grids.items()):
        im = ax.pcolormesh(xb, yb, np.ma.masked_invalid(grid), norm=Normalize(0, vmax), cmap="magma")
        g = panels[name]
        share = float(g[conflict].sum() / g.sum()) if g.sum() > 0 else float("nan")
        _mark_conflicts(ax)
        ax.text(0.98, 0.97, f"conflict region: {100 * share:.1f}% of the summed gradient norm",
                transform=ax.transAxes, ha="right", va="top", fontsize=8.5,
                bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.6", "alpha": 0.9})
        ax.set(title=name, xlabel=P_LABEL, xlim=(0, 1), ylim=(yb[0], yb[-1]))
        ax.grid(False)
    axes[0].set_ylabel(H_LABEL)
    fig.colorbar(im, ax=axes.tolist(), label="mean per-token gradient norm w.r.t. logits")
    fig.suptitle(title or "Per-token gradient magnitude over the entropy–probability plane")
    return fig


def topk_figure(corr: pd.DataFrame, paper: pd.DataFrame | None = None, title: str | None = None):
    """Fig. 6: Pearson(top-K entropy, full entropy) on the left axis, extra memory (KB/token) on the right.
    corr: k, pearson, memory_kb (analysis.summaries.topk_correlation); paper: same columns, drawn hollow."""
    fig, ax = plt.subplots(figsize=(6.8, 4.2), constrained_layout=True)
    ax2 = ax.twinx()
    ax2.spines["right"].set_visible(True)
    ax.plot(corr["k"], corr["pearson"], "o-", color="#1f77b4", lw=2, label="Pearson r (ours)")
    ax2.plot(corr["k"], corr["memory_kb"], "s-", color="#ff7f0e", lw=2, label="memory (ours)")
    if paper is not None and len(paper):
        ax.plot(paper["k"], paper["pearson"], "o--", mfc="none", color="#1f77b4", alpha=0.7, label="Pearson r (paper)")
        ax2.plot(paper["k"], paper["memory_kb"], "s--", mfc="none", color="#ff7f0e", alpha=0.7,
                 label="memory (paper)")
    for k, r in zip(corr["k"], corr["pearson"]):
        if k == 20 and pd.notna(r):
            ax.annotate(f"K=20: r={r:.3f}", (k, r), xytext=(8, -16), textcoords="offset points", color="#1f77b4")
    ax.set_xscale("log")
    ks = sorted(set(corr["k"]) | set(paper["k"] if paper is not None else []))
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set(xlabel="K (top-K logits kept)", ylabel="Pearson r with full-vocabulary entropy")
    ax2.set_ylabel("extra memory per token (KB)\nours: K × (4 B fp32 value + 8 B int64 index)")
    ax.tick_params(axis="y", colors="#1f77b4")
    ax2.tick_params(axis="y", colors="#ff7f0e")
    ax2.grid(False)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [x.get_label() for x in lines], loc="center", bbox_to_anchor=(0.55, 0.45))
    ax.set_title(title or "Top-K entropy approximation: correlation and memory vs K")
    return fig


def _show(token: str, token_id: int) -> str:
    """Visible whitespace; byte fragments that decode to U+FFFD get their id."""
    if "\ufffd" in token or not token:
        return f"[id {token_id}]"
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣")


def region_tokens(tops: dict[str, pd.DataFrame], shares: dict[str, float] | None = None, title: str | None = None):
    """Fig. 7 as bars: per region, its most frequent tokens and their share of the region (percent).
    tops: analysis.summaries.region_top_tokens output; shares: each region's share of all tokens."""
    fig, axes = plt.subplots(1, len(tops), figsize=(4.4 * len(tops), 0.25 * max(len(t) for t in tops.values()) + 1.8),
                             squeeze=False, constrained_layout=True)
    colors = {"high_entropy": "#2ca02c", "low_entropy_confident": "#1f77b4", "confident_conflict": CONFLICT_COLOR}
    for ax, (name, t) in zip(axes[0], tops.items()):
        label = REGION_LABELS.get(name, name)
        if shares and name in shares:
            label += f"\n{100 * shares[name]:.1f}% of all tokens"
        labels = [_show(str(tok), int(i)) for tok, i in zip(t["token"], t["token_id"])]
        ax.barh(range(len(t)), 100 * t["share"], color=colors.get(name, "0.5"))
        ax.set_yticks(range(len(t)), labels, fontfamily="DejaVu Sans Mono", fontsize=8.5)
        ax.invert_yaxis()
        ax.set(title=label, xlabel="share of the region's tokens (%)")
        if not len(t):
            ax.text(0.5, 0.5, "no tokens in this region", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or "Most frequent tokens of each region")
    return fig
