"""Shared figure plumbing: the Agg backend, one style, method colours and names, atomic PNG+PDF saving.

    from analysis.plotting import save; save(fig, "results/figures/fig1b_landscape")   # -> .png and .pdf
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # figures are files; no display on the CPU machines or in CI
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

from common.declarations import title
from common.files import atomic_path

STYLE = {"figure.dpi": 110, "savefig.dpi": 160, "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
         "legend.fontsize": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.25, "savefig.bbox": "tight"}
plt.rcParams.update(STYLE)

# the order methods are drawn and listed in; their names are the method configs' `title` (common.declarations)
METHOD_ORDER = ["base", "sft", "sft_kl", "flow", "dft", "talr", "eaft", "masked_sft", "masked_sft_batch",
                "masked_sft_pilot", "eaft_sig", "eaft2", "eaft3", "mile"]
_PALETTE = plt.get_cmap("tab20").colors
METHOD_COLORS = {"sft": "#d62728", "eaft": "#1f77b4", "base": "#7f7f7f", "sft_kl": "#ff7f0e", "flow": "#2ca02c",
                 "dft": "#9467bd", "talr": "#8c564b", "masked_sft": "#e377c2", "masked_sft_pilot": "#c5519b",
                 "masked_sft_batch": "#c49c94", "eaft_sig": "#17becf", "eaft2": "#5254a3", "eaft3": "#393b79",
                 "mile": "#bcbd22"}
CONFLICT_COLOR = "#d62728"


def method_name(m: str) -> str:
    return title("method", m)


def method_color(m: str) -> str:
    return METHOD_COLORS.get(m, _PALETTE[sum(map(ord, m)) % len(_PALETTE)])  # stable across processes


def save(fig, stem: str | Path, formats=("png", "pdf")) -> list[Path]:
    """Write fig to <stem>.<fmt> for each format, atomically; close it. Returns the paths. No creation date or
    software version in the files, so re-rendering unchanged inputs leaves the committed figures unchanged."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        meta = {"pdf": {"CreationDate": None, "Producer": None, "Creator": None},
                "png": {"Software": None}}.get(fmt)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


def place_labels(ax, points, labels, colors, fontsize: float = 8) -> list:
    """Annotate points without overlapping labels: each label takes the first of a few offsets whose box
    overlaps no label placed before it (greedy; good enough for a dozen points)."""
    offsets = [(5, 4), (5, -12), (-5, 4), (-5, -12), (0, 10), (0, -16), (8, 16), (8, -22), (-8, 16), (-8, -22),
               (5, 28), (5, -34), (-5, 28), (-5, -34), (5, 40), (5, -46)]
    fig = ax.figure
    fig.canvas.draw()  # run the layout first: boxes measured before it moves the axes would not match the file
    renderer = fig.canvas.get_renderer()
    placed, texts = [], []
    for (x, y), label, color in zip(points, labels, colors):
        for dx, dy in offsets:
            t = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                            color=color, ha="left" if dx >= 0 else "right")
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in placed):
                break
            t.remove()
        else:  # every offset collides: keep the first one
            t = ax.annotate(label, (x, y), xytext=offsets[0], textcoords="offset points", fontsize=fontsize,
                            color=color)
            box = t.get_window_extent(renderer)
        placed.append(box)
        texts.append(t)
    return texts
