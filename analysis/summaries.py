"""Summaries of a token-statistics frame (analysis/token_stats.py): regions of the entropy-probability plane,
loss and gradient shares, quantiles, Masked-SFT thresholds, top-K correlation. Pure pandas, no model.

    python -m analysis.summaries results/token_stats/smollm2-135m-math-mini.parquet     # prints them

Regions (thresholds from eaft_loss/losses.py, full-vocabulary entropy in nats):
    confident_conflict   H < CONFLICT_MAX_ENTROPY (0.5) and p < CONFLICT_MAX_PROB (0.1)
    high_entropy         H >= HIGH_ENTROPY_MIN (2.0)                      (Fig. 4's high group)
    low_entropy_confident  H <= LOW_ENTROPY_MAX (0.5) and p >= CONFIDENT_MIN_PROB (0.5): the model is sure and
                         right (Fig. 7's "low-entropy high-p" cloud; the 0.5 is ours, the paper gives no number)
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import torch
from eaft_loss.losses import CONFLICT_MAX_ENTROPY, CONFLICT_MAX_PROB, HIGH_ENTROPY_MIN, LOW_ENTROPY_MAX

CONFIDENT_MIN_PROB = 0.5
REGION_LABELS = {
    "high_entropy": f"High-entropy tokens (H ≥ {HIGH_ENTROPY_MIN:g})",
    "low_entropy_confident": f"Low-entropy, high-p tokens (H ≤ {LOW_ENTROPY_MAX:g}, p ≥ {CONFIDENT_MIN_PROB:g})",
    "confident_conflict": f"Confident conflicts (H < {CONFLICT_MAX_ENTROPY:g}, p < {CONFLICT_MAX_PROB:g})",
}
# torch.topk returns fp32 values (the gate upcasts logits) and int64 indices.
TOPK_BYTES_PER_ENTRY = torch.tensor([], dtype=torch.float32).element_size() + \
    torch.tensor([], dtype=torch.int64).element_size()


def region_masks(df: pd.DataFrame) -> dict[str, pd.Series]:
    h, p = df["entropy"], df["prob"]
    return {
        "high_entropy": h >= HIGH_ENTROPY_MIN,
        "low_entropy_confident": (h <= LOW_ENTROPY_MAX) & (p >= CONFIDENT_MIN_PROB),
        "confident_conflict": (h < CONFLICT_MAX_ENTROPY) & (p < CONFLICT_MAX_PROB),
    }


def conflict_summary(df: pd.DataFrame) -> dict[str, float]:
    """Shares of tokens, SFT loss, EAFT loss and logit-gradient mass that confident conflicts carry."""
    c = region_masks(df)["confident_conflict"]
    ce = -np.log(df["prob"].clip(lower=1e-30).astype("float64"))
    eaft = df["gate"] * ce
    g_sft, g_eaft = df["grad_norm"], df["gate"] * df["grad_norm"]

    def share(x):
        total = float(x.sum())
        return float(x[c].sum()) / total if total > 0 else float("nan")

    return {"tokens": len(df), "conflicts": int(c.sum()), "token_share": float(c.mean()) if len(df) else math.nan,
            "sft_loss_share": share(ce), "eaft_loss_share": share(eaft),
            "sft_grad_share": share(g_sft), "eaft_grad_share": share(g_eaft),
            "gate_mean": float(df["gate"].mean()), "conflict_gate_mean": float(df.loc[c, "gate"].mean())
            if c.any() else math.nan}


def region_shares(df: pd.DataFrame) -> dict[str, float]:
    return {name: float(m.mean()) for name, m in region_masks(df).items()}


def quantiles(df: pd.DataFrame, columns: list[str], qs=(0.05, 0.15, 0.25, 0.5, 0.75, 0.95)) -> pd.DataFrame:
    """columns x qs table of quantiles (linear interpolation)."""
    return df[columns].quantile(list(qs)).T.rename(columns=lambda q: f"q{q:g}")


def masked_sft_thresholds(df: pd.DataFrame, q: float = 0.15, k: int = 20) -> dict[str, float]:
    """The q-quantiles of the top-k entropy and of p, defined exactly as training/precompute.py computes them
    (torch.quantile in fp64 over every supervised token), and the shares of tokens each mask drops."""
    h = torch.tensor(df[f"entropy_top{k}"].to_numpy(), dtype=torch.float64)
    p = torch.tensor(df["prob"].to_numpy(), dtype=torch.float64)
    th, tp = float(torch.quantile(h, q)), float(torch.quantile(p, q))
    return {"q": q, "k": k, "entropy_threshold": th, "prob_threshold": tp,
            "drop_share_eq4": float((h <= th).double().mean()),
            "drop_share_pilot": float(((h <= th) & (p <= tp)).double().mean())}


def topk_columns(df: pd.DataFrame) -> list[int]:
    return sorted(int(c.removeprefix("entropy_top")) for c in df.columns if c.startswith("entropy_top"))


def topk_correlation(df: pd.DataFrame, vocab_size: int | None = None) -> pd.DataFrame:
    """Per K: Pearson and Spearman correlation of top-K entropy with full entropy, and the extra memory of
    keeping the top-K logits: K x (4-byte fp32 value + 8-byte int64 index) per token, in KB (1 KB = 1024 B).
    K above the vocabulary size is the full softmax (correlation 1 by construction): marked `k_ge_vocab`."""
    rows = []
    for k in topk_columns(df):
        x, y = df[f"entropy_top{k}"].astype("float64"), df["entropy"].astype("float64")
        both_vary = x.std() > 0 and y.std() > 0
        eff = min(k, vocab_size) if vocab_size else k
        rows.append({"k": k, "pearson": float(x.corr(y)) if both_vary else math.nan,
                     "spearman": float(x.corr(y, method="spearman")) if both_vary else math.nan,
                     "memory_kb": eff * TOPK_BYTES_PER_ENTRY / 1024,
                     "k_ge_vocab": bool(vocab_size and k >= vocab_size)})
    return pd.DataFrame(rows)


def region_top_tokens(df: pd.DataFrame, n: int = 20) -> dict[str, pd.DataFrame]:
    """Per region: its n most frequent label tokens (by id), with text, count and share of the region's tokens."""
    out = {}
    for name, m in region_masks(df).items():
        sub = df.loc[m, ["token_id", "token"]]
        counts = sub["token_id"].value_counts().head(n)
        text = sub.drop_duplicates("token_id").set_index("token_id")["token"]
        out[name] = pd.DataFrame({"token_id": counts.index, "token": text.reindex(counts.index).values,
                                  "count": counts.values, "share": counts.values / max(1, int(m.sum()))})
    return out


if __name__ == "__main__":
    from analysis.token_stats import read_token_stats

    frame, meta = read_token_stats(sys.argv[1])
    print(meta)
    print(conflict_summary(frame))
    print(region_shares(frame))
    print(quantiles(frame, ["entropy", "entropy_top20", "prob"]).to_string())
    print(topk_correlation(frame, meta.get("vocab_size")).to_string(index=False))
