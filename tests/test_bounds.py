"""The exact Band evaluator against independent truth.

Routes: a 50-digit mpmath bisection on ``g_f`` (tests/_reference.py), the closed forms
of TV and Pearson chi2 (THEORY.md section 3), the defining equation, saturation
thresholds, the mirror identity, the limits and monotonicity in delta.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandtheory
from bandtheory import band_bounds, divergences
from bandtheory.bounds import g, r_star

from ._reference import band_mp, g_mp, r_star_mp

ALL = list(divergences.DIVERGENCES) + [
    "alpha(2)",
    "alpha(1/2)",
    "alpha(-1)",
    "alpha(3)",
    "alpha(-1/2)",
    "alpha(3/2)",
]
P_GRID = np.array([1e-8, 1e-6, 1e-4, 3e-3, 0.05, 0.3, 0.5, 0.8, 0.97, 0.9999, 1 - 1e-6])
DELTA_GRID = [1e-3, 0.02, 0.2, 1.0]


# --------------------------------------------------------------------------------------
# 50-digit reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_matches_50_digit_reference(name):
    log_p = np.log(P_GRID)
    worst_up = worst_lo = 0.0
    for delta in DELTA_GRID:
        band = band_bounds(log_p, name, delta=delta)
        for i, lp in enumerate(log_p):
            lo_ref, up_ref = band_mp(name, float(lp), delta)
            err_up = abs(mp.mpf(float(band.upper[i])) / up_ref - 1)
            err_lo = abs(mp.mpf(float(band.lower[i])) - lo_ref)
            worst_up = max(worst_up, float(err_up))
            worst_lo = max(worst_lo, float(err_lo))
            assert err_up <= 1e-12, (name, delta, P_GRID[i], band.upper[i], up_ref)
            assert err_lo <= 1e-12, (name, delta, P_GRID[i], band.lower[i], lo_ref)
    # the evaluator is far better than the requirement; keep it that way
    assert worst_up < 3e-13 and worst_lo < 3e-13


@pytest.mark.parametrize("name", ALL)
def test_p_equal_one_gives_r_star(name):
    for delta in (1e-3, 0.05, 0.7):
        band = band_bounds(0.0, name, delta=delta)
        assert band.upper == 1.0
        assert abs(band.lower - float(r_star_mp(name, delta))) <= 1e-13
        assert r_star(name, delta=delta) == band.lower


# --------------------------------------------------------------------------------------
# Closed forms and saturation thresholds
# --------------------------------------------------------------------------------------


def _dense_p():
    return np.concatenate([np.logspace(-8, -0.01, 400), 1 - np.logspace(-6, -1, 200)])


@pytest.mark.parametrize("delta", [1e-3, 0.05, 0.3, 1.0])
def test_tv_closed_form(delta):
    p = _dense_p()
    band = band_bounds(np.log(p), "tv", delta=delta)
    upper = np.minimum(1 + delta / p, 1 / p)
    lower = np.maximum(1 - delta / p, 0.0)
    np.testing.assert_allclose(band.upper, upper, rtol=2e-13, atol=0)
    np.testing.assert_allclose(band.lower, lower, rtol=0, atol=2e-13)


@pytest.mark.parametrize("delta", [1e-3, 0.05, 0.3, 1.0])
def test_chi2_closed_form(delta):
    p = _dense_p()
    band = band_bounds(np.log(p), "chi2", delta=delta)
    root = np.sqrt(delta * (1 - p) / p)
    np.testing.assert_allclose(band.upper, np.minimum(1 + root, 1 / p), rtol=2e-13, atol=0)
    np.testing.assert_allclose(band.lower, np.maximum(1 - root, 0.0), rtol=0, atol=2e-13)


@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5])
def test_saturation_thresholds(delta):
    # TV upper saturates iff p >= 1 - delta; Pearson chi2 iff p >= 1 / (1 + delta).
    for name, threshold in (("tv", 1 - delta), ("chi2", 1 / (1 + delta))):
        above = threshold * (1 + np.array([1e-9, 1e-6, 1e-3]))
        above = above[above < 1]
        below = threshold * (1 - np.array([1e-9, 1e-6, 1e-3]))
        up_above = band_bounds(np.log(above), name, delta=delta).upper
        up_below = band_bounds(np.log(below), name, delta=delta).upper
        np.testing.assert_allclose(up_above, 1 / above, rtol=1e-15)
        assert np.all(up_below < 1 / below)
    # KL never saturates (f(0) = inf): the upper bound stays strictly inside the simplex
    # (for p near 1 the gap to 1/p is below double precision, so test where it is not)
    p = np.array([0.3, 0.5, 0.7, 0.9])
    up = band_bounds(np.log(p), "kl", delta=1.0).upper
    assert np.all(up < 1 / p)
    assert np.all(band_bounds(np.log(p), "kl", delta=1.0).lower > 0)


@pytest.mark.parametrize("name", ALL)
def test_saturation_matches_g_at_the_ends(name):
    p = np.logspace(-6, -1e-4, 60)
    for delta in (0.01, 0.3, 1.0):
        band = band_bounds(np.log(p), name, delta=delta)
        g_end_up = g(p, 1 / p, name)
        g_end_lo = g(p, np.zeros_like(p), name)
        sat_up = g_end_up <= delta
        sat_lo = g_end_lo <= delta
        np.testing.assert_allclose(band.upper[sat_up], 1 / p[sat_up], rtol=1e-15)
        assert np.all(band.upper <= (1 / p) * (1 + 1e-15))
        visible = ~sat_up & (p < 0.9)  # nearer 1 the gap to 1/p can be below rounding
        assert np.all(band.upper[visible] < 1 / p[visible])
        assert np.all(band.lower[sat_lo] == 0)
        # unsaturated lower bounds sit strictly inside (0, 1) where they are representable
        clear = ~sat_lo & (g_end_lo > delta * (1 + 1e-6)) & (p > 0.05)
        assert np.all(band.lower[clear] > 0)


# --------------------------------------------------------------------------------------
# The defining equation, mirror identity, limits, monotonicity
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_bounds_bracket_the_root_at_50_digits(name):
    """g(p, .) crosses delta between (1 -/+ 1e-12) * bound, checked at 50 digits."""
    rng = np.random.default_rng(7)
    p = np.exp(rng.uniform(np.log(1e-6), np.log(0.999), 12))
    for delta in (2e-3, 0.1, 0.9):
        band = band_bounds(np.log(p), name, delta=delta)
        for pi, lo, up in zip(p, band.lower, band.upper):
            if up < (1 / pi) * (1 - 1e-12):  # not saturated
                assert g_mp(name, pi, up * (1 - 1e-12)) < delta < g_mp(name, pi, up * (1 + 1e-12))
            if lo > 1e-3:
                assert g_mp(name, pi, lo * (1 + 1e-12)) < delta < g_mp(name, pi, lo * (1 - 1e-12))


@pytest.mark.parametrize("name", ALL + ["alpha(5)"])
def test_bounds_bracket_the_root_at_tiny_p(name):
    """Far below the reference grid, down to p = e^-700: g crosses delta within 1e-11 of
    each bound (50 digits). For alpha(a), a > 2, the tail grows like r^a there and the
    small-delta start is dozens of orders of magnitude off (it once stopped unconverged
    after 100 steps, 1e11 times too large at p = e^-400)."""
    log_p = [-50.0, -200.0, -400.0, -600.0, -700.0]
    for delta in (1e-3, 0.3):
        band = band_bounds(np.array(log_p), name, delta=delta)
        for lp, lo, up in zip(log_p, band.lower, band.upper):
            with mp.workdps(50):
                p = mp.exp(mp.mpf(lp))
                if up < float(1 / p) * (1 - 1e-11):  # not saturated
                    below, above = g_mp(name, p, up * (1 - 1e-11)), g_mp(name, p, up * (1 + 1e-11))
                    assert below < delta < above, (lp, up)
                if lo > 1e-3:
                    below, above = g_mp(name, p, lo * (1 + 1e-11)), g_mp(name, p, lo * (1 - 1e-11))
                    assert below < delta < above, (lp, lo)


@pytest.mark.parametrize("name", ALL)
def test_mirror_identity(name):
    p = np.linspace(0.02, 0.98, 49)
    for delta in (0.01, 0.2):
        lower = band_bounds(np.log(p), name, delta=delta).lower
        upper_mirror = band_bounds(np.log1p(-p), name, delta=delta).upper
        mirrored = (1 - (1 - p) * upper_mirror) / p
        np.testing.assert_allclose(lower, mirrored, rtol=0, atol=1e-12)


@pytest.mark.parametrize("delta", [1e-3, 0.05, 0.5])
def test_kl_limits(delta):
    # p -> 1: lower -> exp(-delta); p -> 0: gain p (upper - 1) -> 1 - exp(-delta)
    near_one = band_bounds(math.log1p(-1e-12), "kl", delta=delta)
    assert abs(near_one.lower - math.exp(-delta)) < 1e-5
    assert abs(near_one.upper - 1) < 1e-5
    tiny = 1e-12
    up = band_bounds(math.log(tiny), "kl", delta=delta).upper
    assert abs(tiny * (up - 1) - (-math.expm1(-delta))) < 1e-9
    # the gain of fixed clipping vanishes; the Band's does not
    assert tiny * (up - 1) > 0.9 * (-math.expm1(-delta))


@pytest.mark.parametrize("name", ALL)
def test_monotone_in_delta(name):
    p = np.logspace(-7, -1e-5, 80)
    deltas = [1e-3, 0.01, 0.05, 0.2, 1.0]
    bands = [band_bounds(np.log(p), name, delta=d) for d in deltas]
    for small, large in zip(bands, bands[1:]):
        assert np.all(large.upper >= small.upper * (1 - 1e-15))
        assert np.all(large.lower <= small.lower + 1e-15)
        # and strictly wider where neither side is saturated or underflowed
        free = (small.upper < 1 / p * (1 - 1e-9)) & (small.lower > 1e-300)
        assert np.all(large.upper[free] > small.upper[free])


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(ALL),
    log_p=st.floats(min_value=-40.0, max_value=0.0),
    delta=st.floats(min_value=1e-3, max_value=1.0),
)
def test_properties(name, log_p, delta):
    band = band_bounds(np.array([log_p]), name, delta=delta)
    lower, upper = float(band.lower[0]), float(band.upper[0])
    p = math.exp(log_p)
    assert 0.0 <= lower <= 1.0
    assert 1.0 <= upper <= (1 / p) * (1 + 4e-16)
    if upper < (1 / p) * (1 - 1e-9) and 1e-8 < p < 1 - 1e-9:
        assert g(p, upper, name) == pytest.approx(delta, rel=1e-8)
    if 1e-6 < lower < 1 - 1e-9 and p < 1 - 1e-9:
        assert g(p, lower, name) == pytest.approx(delta, rel=1e-8)


# --------------------------------------------------------------------------------------
# Special values, shapes and dtypes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_minus_infinity_gives_zero_to_infinity(name):
    band = band_bounds(np.array([-np.inf, -1e6]), name, delta=0.05)
    assert band.lower.tolist() == [0.0, 0.0]
    assert band.upper.tolist() == [np.inf, np.inf]


def test_shapes_dtypes_and_scalars():
    x = np.log(np.random.default_rng(0).uniform(1e-6, 1, size=(3, 4, 5)))
    band = band_bounds(x, "kl", delta=0.05)
    assert band.lower.shape == band.upper.shape == (3, 4, 5)
    x32 = x.astype(np.float32)
    band32 = band_bounds(x32, "kl", delta=0.05)
    assert band32.upper.dtype == np.float32 and band32.lower.dtype == np.float32
    np.testing.assert_allclose(band32.upper, band_bounds(x32.astype(np.float64), "kl", delta=0.05).upper, rtol=1e-7)
    empty = band_bounds(np.zeros((0, 3)), "kl", delta=0.05)
    assert empty.upper.shape == (0, 3)
    scalar = band_bounds(math.log(0.5), "chi2", delta=0.05)
    assert isinstance(scalar.upper, float)
    assert scalar.upper == pytest.approx(1 + math.sqrt(0.05), rel=1e-15)
    zero_d = band_bounds(np.float64(math.log(0.5)), "chi2", delta=0.05)
    assert float(zero_d.upper) == scalar.upper
    lower, upper = band_bounds(math.log(0.5), "tv", delta=0.1)  # Band unpacks
    assert (lower, upper) == (pytest.approx(0.8), pytest.approx(1.2))


def test_tiny_positive_rounding_is_clamped():
    band = band_bounds(np.array([1e-17, 0.0]), "kl", delta=0.05)
    assert band.upper.tolist() == [1.0, 1.0]
    assert band.lower[0] == band.lower[1]


def test_divergence_entry_accepted():
    entry = divergences.get("hellinger")
    a = band_bounds(-1.0, entry, delta=0.1)
    b = band_bounds(-1.0, "hellinger", delta=0.1)
    assert (a.lower, a.upper) == (b.lower, b.upper)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_nan_reports_count_and_first_index():
    x = np.zeros((2, 3))
    x[0, 2] = np.nan
    x[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN in 2 entries \(first at index \(0, 2\)\)"):
        band_bounds(x, "kl", delta=0.05)


def test_positive_log_prob_reports_count_and_first_index():
    x = np.array([-1.0, 0.3, -0.2, np.inf])
    with pytest.raises(ValueError, match=r"positive in 2 entries \(first at index \(1,\)"):
        band_bounds(x, "kl", delta=0.05)


@pytest.mark.parametrize("delta", [0.0, -0.1, math.inf, math.nan])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match="delta must be a finite number > 0"):
        band_bounds(-1.0, "kl", delta=delta)


@pytest.mark.parametrize("delta", ["0.1", None, True, [0.1]])
def test_delta_wrong_type(delta):
    with pytest.raises(TypeError, match="delta must be a real number"):
        band_bounds(-1.0, "kl", delta=delta)


def test_unknown_divergence_lists_names():
    with pytest.raises(ValueError, match=r"unknown divergence 'kll'; choose one of kl, reverse_kl, tv"):
        band_bounds(-1.0, "kll", delta=0.05)


@pytest.mark.parametrize(
    "bad", [np.array([0, -1]), np.array([-1], dtype=np.int64), np.array([True]), True, "abc"]
)
def test_non_float_input_is_a_type_error(bad):
    with pytest.raises(TypeError):
        band_bounds(bad, "kl", delta=0.05)


def test_error_leaves_input_untouched():
    x = np.array([-0.5, np.nan])
    copy = x.copy()
    with pytest.raises(ValueError):
        band_bounds(x, "kl", delta=0.05)
    np.testing.assert_array_equal(x, copy)


def test_package_exports():
    assert bandtheory.band_bounds is band_bounds
    assert set(divergences.names()) == set(bandtheory.DIVERGENCES)


# --------------------------------------------------------------------------------------
# Large inputs: certified Newton steps from exact mode's start table
# --------------------------------------------------------------------------------------

REGISTRY = list(divergences.names()) + ["alpha(2)", "alpha(1/2)", "alpha(-1)", "alpha(3)"]
EDGE_LOG_P = [0.0, -0.0, -np.inf, -800.0, -745.0, bandtheory.bounds.LOG_P_MIN, -1e-300, -1e-12]


@pytest.mark.parametrize("delta", [0.047, 0.53])  # deltas no other test tabulates
@pytest.mark.parametrize("name", REGISTRY)
def test_large_input_matches_small_input_path(name, delta):
    # From 32768 tokens on exact mode takes a certified number of Newton steps from its
    # start table (no fast table exists at these deltas); below, the safeguarded solver.
    from bandtheory import fast

    rng = np.random.default_rng(23)
    sample = np.concatenate([
        rng.uniform(math.log(1e-300), math.log(0.5), 2000),  # p from 1e-300 to 0.5
        np.log1p(-np.exp(rng.uniform(math.log(1e-12), math.log(0.5), 1000))),  # 1 - p to 1e-12
        EDGE_LOG_P,
    ])
    sample = rng.permutation(sample)
    logp = np.resize(sample, 40_000)  # padded with repeats of the sample
    div = divergences.get(name)
    assert fast._cached_table_or_none(div, delta) is None
    big = band_bounds(logp, name, delta=delta)
    start = fast._start_table(div, delta)
    assert start is not None and start.polish_steps is not None  # no solver fallback
    assert fast._exact_start(div, delta) is start
    small = band_bounds(sample, name, delta=delta)
    index = np.arange(logp.size) % sample.size
    want_up, want_lo = small.upper[index], small.lower[index]
    assert np.array_equal(np.isinf(big.upper), np.isinf(want_up))
    finite = np.isfinite(want_up)
    np.testing.assert_allclose(big.upper[finite], want_up[finite], rtol=1e-12, atol=0)
    np.testing.assert_allclose(big.lower, want_lo, rtol=0, atol=1e-12)
