"""The standard error of a contrast that several seeds score on the same items: seed noise (training) and item
noise (which items were drawn), with the items shared by every seed, and honest degrees of freedom.

    from analysis.estimators import two_way
    est = two_way(x, t)   # x: (S seeds, n items) numerators; t: (n,) or (S, n) tokens (1 for a per-item mean)
    est["value"], est["se"], est["df"], est["t_crit"]

The estimate is the mean over seeds of each seed's ratio r_s = sum_i x_si / sum_i t_si (token-weighted, as the
per-seed contrasts of the conflict study). Each seed's ratio is linearised over its items (delta method):
z_si = r_s + (x_si - r_s t_si) / tbar_s, so that mean_i z_si = r_s. The z follow a two-way random-effects model,
z_si = mu + a_s + b_i + e_si (a: seed, b: item, shared by every seed, e: their interaction), whose grand mean has

    Var(mu_hat) = sigma_a^2 / S + sigma_b^2 / n + sigma_e^2 / (S n) = (MS_seed + MS_item - MS_err) / (S n)

with the mean squares of the S x n table (an unbiased estimate; floored at max(MS_seed, MS_item) / (S n), the
larger of its two one-way bounds, when sampling noise drives it lower, with that mean square's df; the result also
carries the unfloored SE and df, `unfloored(est)`). Degrees of freedom: Satterthwaite's for
that combination of mean squares; with few seeds and seed noise dominant they approach S - 1. Decisions use the
two-sided 5% point of Student's t at those df, not a fixed 2.

One seed: no training noise can be estimated; the SE is the item SE of that seed's ratio (df n - 1), and the
result says seeds = 1 so no reader takes it for more. The preregistered v1 formula, sqrt(sum_s SE_s^2) / S,
treats the seeds' items as independent draws and holds no seed noise: `independent_items_se` keeps it, for the
v1 report and for the tests that show what it misses.
"""

from __future__ import annotations

import math

import numpy as np


def _t_crit(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df)) if math.isfinite(df) and df > 0 else float("nan")


def pseudo_values(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-seed ratios r (S,), linearised per-item values z (S, n)) with mean_i z_si = r_s."""
    x = np.asarray(x, dtype=float)
    t = np.broadcast_to(np.asarray(t, dtype=float), x.shape)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"two_way needs a (seeds, items) table with at least 2 items, got shape {x.shape}")
    tot = t.sum(1)
    if (tot <= 0).any():
        raise ValueError("a seed has no tokens to average over")
    r = x.sum(1) / tot
    tbar = tot / x.shape[1]
    z = r[:, None] + (x - r[:, None] * t) / tbar[:, None]
    return r, z


def two_way(x, t) -> dict:
    """{value, se, df, t_crit, seeds, items, se_seeds, se_items}: the mean over seeds of the per-seed ratios, its
    two-way SE (seed and shared-item noise), Satterthwaite df and the matching t quantile. se_seeds and se_items
    are the two one-way parts, sqrt(MS_seed / (S n)) and sqrt(MS_item / (S n)), for the reader; with two seeds or
    more, `floored` says whether the floor set the SE, and se_unfloored / df_unfloored / t_crit_unfloored are the
    formula's own (se_unfloored None when its bracket is <= 0)."""
    r, z = pseudo_values(x, t)
    s, n = z.shape
    value = float(r.mean())
    item_means = z.mean(0)
    ms_item = s * float(((item_means - z.mean()) ** 2).sum()) / (n - 1)
    if s == 1:
        var = ms_item / n
        return {"value": value, "se": math.sqrt(var), "df": float(n - 1), "t_crit": _t_crit(n - 1), "seeds": 1,
                "items": n, "se_seeds": None, "se_items": math.sqrt(var)}
    ms_seed = n * float(((r - value) ** 2).sum()) / (s - 1)
    resid = z - z.mean(1, keepdims=True) - item_means[None, :] + z.mean()
    ms_err = float((resid ** 2).sum()) / ((s - 1) * (n - 1))
    bracket = ms_seed + ms_item - ms_err
    den = ms_seed ** 2 / (s - 1) + ms_item ** 2 / (n - 1) + ms_err ** 2 / ((s - 1) * (n - 1))
    df_unfloored = bracket ** 2 / den if den > 0 else float("inf")
    floor = max(ms_seed, ms_item)
    if bracket < floor:
        combined, df = floor, (s - 1 if ms_seed >= ms_item else n - 1)
    else:
        combined, df = bracket, df_unfloored
    return {"value": value, "se": math.sqrt(combined / (s * n)), "df": float(df), "t_crit": _t_crit(df),
            "seeds": s, "items": n, "se_seeds": math.sqrt(ms_seed / (s * n)), "se_items": math.sqrt(ms_item / (s * n)),
            "floored": bracket < floor,
            "se_unfloored": math.sqrt(bracket / (s * n)) if bracket > 0 else None,
            "df_unfloored": float(df_unfloored), "t_crit_unfloored": _t_crit(df_unfloored)}


def unfloored(est: dict | None) -> dict | None:
    """The estimate with the SE and df of the formula alone, (MS_seed + MS_item - MS_err) / (S n) at Satterthwaite's
    df, without the floor: the conflict study v2's preregistration states this formula and not the floor, so its
    report shows the decisions under both (results/LOG.md). None SE (a bracket <= 0) decides nothing."""
    if not est or "se_unfloored" not in est:
        return est
    return {**est, "se": est["se_unfloored"], "df": est["df_unfloored"], "t_crit": est["t_crit_unfloored"]}


def independent_items_se(x, t) -> float:
    """The v1 preregistered SE: each seed's delta-method item SE, combined as if the seeds scored independent items,
    sqrt(sum_s SE_s^2) / S. No seed noise, and items shared by the seeds counted as new draws."""
    _r, z = pseudo_values(x, t)
    s, n = z.shape
    per_seed = [float(np.var(z[k], ddof=1)) / n for k in range(s)]
    return math.sqrt(sum(per_seed)) / s


def decide(est: dict | None, sign: int, margin: float | None = None) -> str:
    """confirmed / refuted / unresolved at the two-sided 5% level of t(df): sign +1 or -1, the predicted direction
    (confirmed beyond t_crit SE that way, refuted beyond it the other way); sign 0, equivalence within `margin`
    (confirmed when |value| + t_crit SE < margin, refuted when |value| - t_crit SE > margin). A contrast of one seed
    is never decided: its SE holds no training noise, which can be larger than the contrast."""
    if est is None or est["se"] is None or not math.isfinite(est.get("t_crit", float("nan"))) \
            or est.get("seeds") == 1:
        return "unresolved"
    v, half = est["value"], est["t_crit"] * est["se"]
    if sign == 0:
        if abs(v) + half < margin:
            return "confirmed"
        return "refuted" if abs(v) - half > margin else "unresolved"
    if sign * v > half:
        return "confirmed"
    return "refuted" if -sign * v > half else "unresolved"
