"""analysis/estimators.py on synthetic data whose true standard error is known: seeds x shared items, one case
dominated by seed noise and one by item noise, per-item means and token-weighted ratios. Over many simulated
studies the estimated SE matches the spread of the estimate, intervals at t(df) cover about 95%, and the v1
formula (items independent across seeds, no seed noise) falls short where the issue said it would."""

import math

import numpy as np
import pytest

from analysis.estimators import decide, independent_items_se, pseudo_values, two_way, unfloored

S, N, REPS = 5, 64, 1500


def simulate(rng, sd_seed, sd_item, sd_err, mu=0.03, tokens=None):
    """A (S, N) table of per-item contrasts z = mu + a_s + b_i + e_si; with `tokens`, the numerators x = z t of a
    token-weighted ratio over the same items."""
    z = (mu + rng.normal(0, sd_seed, (S, 1)) + rng.normal(0, sd_item, (1, N)) + rng.normal(0, sd_err, (S, N)))
    return (z, np.ones(N)) if tokens is None else (z * tokens, tokens)


def true_sd(sd_seed, sd_item, sd_err):
    return math.sqrt(sd_seed ** 2 / S + sd_item ** 2 / N + sd_err ** 2 / (S * N))


@pytest.mark.parametrize("case, sds", [("seed noise dominates", (0.02, 0.01, 0.01)),
                                       ("item noise dominates", (0.001, 0.05, 0.01))])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_two_way_se_matches_the_spread_of_the_estimate(case, sds, weighted):
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 60, N).astype(float) if weighted else None
    ests = [two_way(*simulate(rng, *sds, tokens=tokens)) for _ in range(REPS)]
    values = np.array([e["value"] for e in ests])
    spread = values.std(ddof=1)
    if not weighted:
        assert spread == pytest.approx(true_sd(*sds), rel=0.08)  # the simulation is what the formula says
    rms_se = math.sqrt(np.mean([e["se"] ** 2 for e in ests]))
    assert rms_se == pytest.approx(spread, rel=0.12), (case, rms_se, spread)
    covered = np.mean([abs(e["value"] - 0.03) <= e["t_crit"] * e["se"] for e in ests])
    assert 0.92 <= covered <= 0.985, (case, covered)
    df = np.median([e["df"] for e in ests])
    if case == "seed noise dominates":
        assert S - 1 <= df < 12  # few seeds: few degrees of freedom, so t(df) is well above 2
    else:
        assert df > 30


def test_the_v1_formula_misses_shared_items_and_seed_noise():
    rng = np.random.default_rng(1)
    item = [independent_items_se(*simulate(rng, 0.001, 0.05, 0.01)) for _ in range(300)]
    # items shared by all seeds: the true SD is ~sd_item/sqrt(N), the v1 formula gives ~that/sqrt(S)
    assert np.mean(item) == pytest.approx(true_sd(0.001, 0.05, 0.01) / math.sqrt(S), rel=0.15)
    seed = [independent_items_se(*simulate(rng, 0.02, 0.01, 0.01)) for _ in range(300)]
    assert np.mean(seed) < 0.3 * true_sd(0.02, 0.01, 0.01)  # seed noise is not in it at all


def test_pseudo_values_average_to_each_seeds_ratio_and_one_seed_has_item_se_only():
    rng = np.random.default_rng(2)
    x, t = rng.normal(1, 1, (3, 10)), rng.integers(1, 9, (3, 10)).astype(float)
    r, z = pseudo_values(x, t)
    np.testing.assert_allclose(r, x.sum(1) / t.sum(1))
    np.testing.assert_allclose(z.mean(1), r)
    one = two_way(x[:1], t[:1])
    assert one["seeds"] == 1 and one["se_seeds"] is None and one["df"] == 9
    from evaluation.likelihood import ratio_stats

    assert one["se"] == pytest.approx(ratio_stats(list(x[0]), list(t[0]))["stderr"], rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 items"):
        two_way(np.ones((3, 1)), np.ones(1))


def test_decisions_use_t_at_the_estimates_df():
    est = {"value": 0.05, "se": 0.02, "df": 4.0, "t_crit": 2.776}
    assert decide(est, +1) == "unresolved"  # 2.5 SE: beyond 2 but not beyond t(4) = 2.78
    assert decide({**est, "df": 60, "t_crit": 2.0}, +1) == "confirmed"
    assert decide({**est, "value": -0.06}, +1) == "refuted"
    assert decide({"value": 0.001, "se": 0.002, "t_crit": 2.0}, 0, margin=0.01) == "confirmed"
    assert decide({"value": 0.02, "se": 0.002, "t_crit": 2.0}, 0, margin=0.01) == "refuted"
    assert decide(None, +1) == "unresolved"
    assert decide({**est, "df": 60, "t_crit": 2.0, "seeds": 1}, +1) == "unresolved"  # one seed: no training noise


def mean_squares(z):
    s, n = z.shape
    grand, rows, cols = z.mean(), z.mean(1), z.mean(0)
    ms_seed = n * ((rows - grand) ** 2).sum() / (s - 1)
    ms_item = s * ((cols - grand) ** 2).sum() / (n - 1)
    ms_err = ((z - rows[:, None] - cols[None, :] + grand) ** 2).sum() / ((s - 1) * (n - 1))
    return ms_seed, ms_item, ms_err


def test_the_floor_and_the_formula_alone_are_both_reported():
    """The estimate carries the formula's own SE and Satterthwaite df beside the floored ones, and says which set
    the SE: equal when the formula is above the floor, the floor's one-way df when it is below."""
    rng = np.random.default_rng(7)
    seen = set()
    for sds in [(0.02, 0.01, 0.01), (0.0, 0.01, 0.02), (0.0, 0.0, 0.02)]:
        for _ in range(40):
            z, t = simulate(rng, *sds)
            est = two_way(z, t)
            ms_seed, ms_item, ms_err = mean_squares(z)
            bracket = ms_seed + ms_item - ms_err
            den = ms_seed ** 2 / (S - 1) + ms_item ** 2 / (N - 1) + ms_err ** 2 / ((S - 1) * (N - 1))
            assert est["df_unfloored"] == pytest.approx(bracket ** 2 / den)
            if bracket > 0:
                assert est["se_unfloored"] == pytest.approx(math.sqrt(bracket / (S * N)))
            else:
                assert est["se_unfloored"] is None and decide(unfloored(est), +1) == "unresolved"
            assert est["floored"] == (bracket < max(ms_seed, ms_item))
            if est["floored"]:
                assert est["se"] == pytest.approx(math.sqrt(max(ms_seed, ms_item) / (S * N)))
                assert est["df"] == (S - 1 if ms_seed >= ms_item else N - 1)
            else:
                assert (est["se"], est["df"]) == (est["se_unfloored"], est["df_unfloored"])
            u = unfloored(est)
            assert (u["se"], u["df"], u["value"]) == (est["se_unfloored"], est["df_unfloored"], est["value"])
            seen.add(est["floored"])
    assert seen == {True, False}  # both branches ran
