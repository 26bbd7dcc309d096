"""Contrasts of the conflict study across seeds that score the same items, with the two-way SE
(analysis/estimators.py): the table of per-seed, per-item contrast values that the estimator takes.

    from analysis.study_contrasts import contrast_two_way
    est = contrast_two_way(loaded, terms_by_seed, "general_kl")   # {value, se, df, t_crit, seeds, items, ...}

`terms_by_seed`: {seed: {run: coefficient}}, the same contrast built from each seed's runs (a run shared by every
seed, the base model, may appear in each). The items are those every run of every seed scored; each run must have
scored each over the same number of tokens (demo_report.require_same_tokens). Token-weighted (a ratio of sums, as
every NLL and KL of the study) or per item (a mean over items: the knowledge probe, accuracies).
"""

from __future__ import annotations

import numpy as np

from analysis.demo_report import item_pairs, require_same_tokens
from analysis.estimators import two_way


def contrast_table(loaded: dict, terms_by_seed: dict[int, dict[str, float]], bench: str, per_item: bool = False,
                   which: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(x (S, n), t (n,), item ids): per seed and item, sum_run coef * the run's item numerator; t the item's
    tokens (1 per item). None when a run or the benchmark is missing, or fewer than 2 items are shared."""
    runs = {r for terms in terms_by_seed.values() for r in terms}
    if not terms_by_seed or any(r not in loaded or bench not in loaded[r] for r in runs):
        return None
    pairs = {r: item_pairs(loaded[r][bench], which) for r in runs}
    common = sorted(set.intersection(*(set(p) for p in pairs.values())))
    if len(common) < 2:
        return None
    require_same_tokens(bench, pairs, common)
    first = next(iter(pairs.values()))
    x = np.array([[sum(c * pairs[r][k][0] for r, c in terms.items()) for k in common]
                  for terms in terms_by_seed.values()])
    t = np.ones(len(common)) if per_item else np.array([first[k][1] for k in common], dtype=float)
    return x, t, common


def contrast_two_way(loaded: dict, terms_by_seed: dict[int, dict[str, float]], bench: str, per_item: bool = False,
                     which: str | None = None, negate: bool = False) -> dict | None:
    """two_way() of the contrast table; `negate` turns NLLs into log-probabilities (retention, learning)."""
    table = contrast_table(loaded, terms_by_seed, bench, per_item, which)
    if table is None:
        return None
    x, t, _ = table
    est = two_way(-x if negate else x, t)
    return est
