"""Fast mode: certified tables against the exact solver (independent check grids)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bandtheory import band_bounds, divergences
from bandtheory import fast as fast_module
from bandtheory.fast import TOLERANCE, TableFallbackWarning, _checks, band_table

CASES = [("kl", 0.05), ("kl", 1e-3), ("tv", 0.1), ("chi2", 0.05), ("hellinger", 0.2), ("triangular", 1.0)]


@pytest.mark.parametrize("name,delta", CASES)
def test_table_certificate_recorded_and_within_tolerance(name, delta):
    table = band_table(name, delta=delta)
    assert 0.0 <= table.max_error <= TOLERANCE
    assert table.max_error == max(table.max_rel_error_upper, table.max_abs_error_lower)
    # 2 d + 3 checks in every fitted piece, both ends included (piece 0 is the [0, inf]
    # sentinel below log(tiny), the last piece the [r*, 1] sentinel of p = 1).
    assert len(_checks(table.degree)) == 2 * table.degree + 3
    assert table.n_checked >= (2 * table.degree + 3) * (table.n_pieces - 2)
    # Newton steps for exact mode: certified to 1e-12, or none (safeguarded solver).
    assert (table.polish_steps is None) == (table.polish_error > 1e-12)
    if name == "kl":
        assert table.polish_steps is not None


@pytest.mark.parametrize("name,delta", CASES)
def test_fast_matches_exact_on_random_log_probs(name, delta):
    rng = np.random.default_rng(7)
    # Log-uniform p in [1e-8, 1 - 1e-6] plus p near 1: a grid independent of the table's.
    logp = np.concatenate([rng.uniform(np.log(1e-8), 0.0, 4000),
                           np.log1p(-np.exp(rng.uniform(np.log(1e-6), np.log(0.5), 2000)))])
    exact = band_bounds(logp, name, delta=delta)
    fast = band_bounds(logp, name, delta=delta, mode="fast")
    assert np.max(np.abs(fast.upper / exact.upper - 1.0)) <= 2 * TOLERANCE
    assert np.max(np.abs(fast.lower - exact.lower)) <= 2 * TOLERANCE


@pytest.mark.parametrize("name", ["kl", "tv", "chi2"])
def test_fast_edge_values_match_exact(name):
    logp = np.array([-np.inf, -800.0, -745.0, -40.0, -1e-300, -1e-17, 0.0])
    exact = band_bounds(logp, name, delta=0.05)
    fast = band_bounds(logp, name, delta=0.05, mode="fast")
    np.testing.assert_allclose(fast.lower, exact.lower, rtol=0, atol=2e-7)
    finite = np.isfinite(exact.upper)
    assert np.array_equal(finite, np.isfinite(fast.upper))
    np.testing.assert_allclose(fast.upper[finite], exact.upper[finite], rtol=2e-7)


def test_tv_closed_form_in_fast_mode():
    p = np.geomspace(1e-6, 1 - 1e-6, 2001)
    delta = 0.1
    band = band_bounds(np.log(p), "tv", delta=delta, mode="fast")
    np.testing.assert_allclose(band.upper, np.minimum(1 + delta / p, 1 / p), rtol=2e-7)
    np.testing.assert_allclose(band.lower, np.maximum(1 - delta / p, 0), rtol=0, atol=2e-7)


def test_uncertifiable_divergence_falls_back_to_exact_and_warns_once():
    # A delta no other test uses: the warning is once per (divergence, delta) and process.
    logp = np.log(np.array([1e-4, 0.05, 0.3, 0.9]))
    with pytest.raises(ValueError, match=r"no fast table certified for reverse_kl at "
                                         r"delta=0.0432: .*absolute error of lower \d\.\d\de-0\d"):
        band_table("reverse_kl", delta=0.0432)
    with pytest.warns(TableFallbackWarning, match="no fast table certified for reverse_kl"):
        fast = band_bounds(logp, "reverse_kl", delta=0.0432, mode="fast")
    exact = band_bounds(logp, "reverse_kl", delta=0.0432)
    np.testing.assert_array_equal(fast.upper, exact.upper)
    np.testing.assert_array_equal(fast.lower, exact.lower)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        again = band_bounds(logp, "reverse_kl", delta=0.0432, mode="fast")
        positive = np.array([True, False, True, False])
        biting = fast_module.biting_bound(logp, positive, "reverse_kl", delta=0.0432)
    np.testing.assert_array_equal(again.upper, exact.upper)
    np.testing.assert_array_equal(biting, np.where(positive, exact.upper, exact.lower))
    # The failed build is cached: band_table raises again without rebuilding.
    calls = []
    original = fast_module._certified_table
    fast_module._certified_table = lambda *args: calls.append(args) or original(*args)
    try:
        with pytest.raises(ValueError, match="no fast table certified"):
            band_table("reverse_kl", delta=0.0432)
    finally:
        fast_module._certified_table = original
    assert calls == []
    assert issubclass(TableFallbackWarning, UserWarning)


def test_biting_bound_fallback_warns():
    logp = np.log(np.array([1e-4, 0.05, 0.3, 0.9]))
    positive = np.array([True, False, True, False])
    with pytest.warns(TableFallbackWarning, match="no fast table certified for js at delta=0.0433"):
        got = fast_module.biting_bound(logp, positive, "js", delta=0.0433)
    exact = band_bounds(logp, "js", delta=0.0433)
    np.testing.assert_array_equal(got, np.where(positive, exact.upper, exact.lower))


def test_table_is_cached():
    assert band_table("kl", delta=0.05) is band_table("kl", delta=0.05)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode"):
        band_bounds(np.zeros(2) - 1.0, mode="approx")


@pytest.mark.parametrize("name,delta", CASES + [("neyman_chi2", 0.05)])
def test_large_input_exact_mode_uses_polish_and_stays_exact(name, delta):
    # Above the polishing size the exact mode starts from a cached table and takes the
    # certified Newton steps; compare with the safeguarded solver run on small slices
    # (below the polishing size), at points independent of the table's grids.
    rng = np.random.default_rng(3)
    n = 1 << 15
    logp = np.concatenate([rng.uniform(np.log(1e-12), 0.0, n // 2),
                           np.log1p(-np.exp(rng.uniform(np.log(1e-14), np.log(0.5), n // 2)))])
    band_table(name, delta=delta)  # exact mode only uses a table that is already built
    big = band_bounds(logp, name, delta=delta)
    for chunk in np.array_split(np.arange(logp.size), 16)[::5]:
        small = band_bounds(logp[chunk], name, delta=delta)
        np.testing.assert_allclose(big.upper[chunk], small.upper, rtol=1e-12)
        np.testing.assert_allclose(big.lower[chunk], small.lower, rtol=0, atol=1e-12)


def test_fast_mode_float32_chunked_matches_exact():
    # Larger than one chunk: the chunked driver writes every slice, in the input dtype.
    rng = np.random.default_rng(5)
    logp = rng.uniform(np.log(1e-8), 0.0, (3, 50_000)).astype(np.float32)
    fast = band_bounds(logp, "kl", delta=0.05, mode="fast")
    exact = band_bounds(logp.astype(np.float64), "kl", delta=0.05)
    assert fast.upper.dtype == np.float32 and fast.upper.shape == logp.shape
    np.testing.assert_allclose(fast.upper, exact.upper, rtol=2e-7)
    np.testing.assert_allclose(fast.lower, exact.lower, rtol=0, atol=2e-7)


# --------------------------------------------------------------------------------------
# The biting end (what a clipped surrogate needs): one polynomial per token
# --------------------------------------------------------------------------------------

from bandtheory.fast import biting_bound  # noqa: E402

EDGES = np.array([-np.inf, -800.0, -745.0, -40.0, -1e-300, -1e-17, 0.0])


@pytest.mark.parametrize("name,delta", CASES + [("neyman_chi2", 0.05)])
def test_biting_bound_is_the_right_end_of_the_exact_band(name, delta):
    rng = np.random.default_rng(11)
    logp = np.concatenate([rng.uniform(np.log(1e-9), 0.0, 3000),
                           np.log1p(-np.exp(rng.uniform(np.log(1e-9), np.log(0.5), 1000))), EDGES])
    positive = rng.random(logp.size) < 0.5
    exact = band_bounds(logp, name, delta=delta)
    got = biting_bound(logp, positive, name, delta=delta)
    up, lo = got[positive], got[~positive]
    ref_up, ref_lo = exact.upper[positive], exact.lower[~positive]
    finite = np.isfinite(ref_up)
    assert np.array_equal(np.isfinite(up), finite)
    assert np.max(np.abs(up[finite] / ref_up[finite] - 1.0)) <= TOLERANCE
    assert np.max(np.abs(lo - ref_lo)) <= TOLERANCE
    assert np.all(lo >= 0.0) and np.all(up >= 1.0)


@pytest.mark.filterwarnings("ignore::bandtheory.fast.TableFallbackWarning")
def test_biting_bound_without_a_table_is_exact():
    logp = np.log(np.array([1e-4, 0.05, 0.3, 0.9]))
    positive = np.array([True, False, True, False])
    exact = band_bounds(logp, "reverse_kl", delta=0.05)
    got = biting_bound(logp, positive, "reverse_kl", delta=0.05)
    np.testing.assert_array_equal(got, np.where(positive, exact.upper, exact.lower))


def test_biting_bound_bad_input():
    logp = np.log(np.array([0.1, 0.5]))
    with pytest.raises(ValueError, match="positive must be a boolean array of shape"):
        biting_bound(logp, np.array([True]), "kl")
    with pytest.raises(ValueError, match="positive must be a boolean array"):
        biting_bound(logp, np.array([1.0, -1.0]), "kl")
    with pytest.raises(ValueError, match="log"):
        biting_bound(np.array([0.5, -1.0]), np.array([True, False]), "kl")


# --------------------------------------------------------------------------------------
# Exact mode never builds the fast table, only its start table
# --------------------------------------------------------------------------------------


def _count_calls(monkeypatch, name):
    calls = []
    original = getattr(fast_module, name)
    monkeypatch.setattr(fast_module, name, lambda *args: calls.append(1) or original(*args))
    return calls


def test_exact_mode_builds_only_its_start_table_and_prefers_a_cached_fast_table(monkeypatch):
    div, delta = divergences.get("kl"), 0.0123  # a delta no other test builds
    rng = np.random.default_rng(13)
    logp = rng.uniform(np.log(1e-10), 0.0, 1 << 15)
    ref = band_bounds(logp[:3000], div, delta=delta)  # below the polishing size

    def forbidden(*args):
        raise AssertionError("exact mode built the fast table")

    monkeypatch.setattr(fast_module, "_certified_table", forbidden)
    builds = _count_calls(monkeypatch, "_assemble")
    starts = _count_calls(monkeypatch, "y_start_lower")
    cold = band_bounds(logp, div, delta=delta)  # builds the start table once
    assert len(builds) == 1 and starts
    starts.clear()
    again = band_bounds(logp, div, delta=delta)  # cached: no build
    assert len(builds) == 1 and len(starts) == 1  # one chunk, started from the table
    assert fast_module._cached_table_or_none(div, delta) is None  # no fast table
    start = fast_module._start_table(div, delta)
    assert start is not None and start.polish_steps == (1, 1)  # KL: one step per end
    assert start.n_pieces < 10_000 and start.polish_error <= 1e-12
    assert fast_module._exact_start(div, delta) is start
    monkeypatch.undo()
    table = band_table(div, delta=delta)
    assert table.polish_steps is not None
    assert fast_module._exact_start(div, delta) is table  # a cached fast table is preferred
    starts = _count_calls(monkeypatch, "y_start_lower")
    warm = band_bounds(logp, div, delta=delta)  # starts from the cached fast table
    assert starts  # the table's Newton start was used
    for band in (cold, again, warm):
        np.testing.assert_allclose(band.upper[:3000], ref.upper, rtol=1e-12)
        np.testing.assert_allclose(band.lower[:3000], ref.lower, rtol=0, atol=1e-12)


def test_failed_start_table_is_paid_for_once_and_falls_back_to_the_solver(monkeypatch):
    div, delta = divergences.get("chi2"), 0.0124  # a delta no other test builds
    rng = np.random.default_rng(14)
    logp = rng.uniform(np.log(1e-10), 0.0, 1 << 15)
    ref = band_bounds(logp[:3000], div, delta=delta)
    monkeypatch.setattr(fast_module, "POLISH_TOLERANCE", -1.0)  # no step count certifies
    builds = _count_calls(monkeypatch, "_assemble")
    starts = _count_calls(monkeypatch, "y_start_lower")
    first = band_bounds(logp, div, delta=delta)
    assert len(builds) == len(fast_module._START_SPECS)  # every start spec tried, once
    starts.clear()
    second = band_bounds(logp, div, delta=delta)
    assert len(builds) == len(fast_module._START_SPECS)  # the failure is cached
    assert not starts  # no table start: the safeguarded solver
    assert fast_module._start_table(div, delta) is None
    for band in (first, second):  # the safeguarded solver's values
        np.testing.assert_allclose(band.upper[:3000], ref.upper, rtol=1e-12)
        np.testing.assert_allclose(band.lower[:3000], ref.lower, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# Invalid input without the check: NaN out, no crash, valid entries untouched
# --------------------------------------------------------------------------------------

# NaN, +inf, positive beyond rounding: invalid. 1e-16 is rounding (8 eps = 1.8e-15).
INVALID = np.array([np.nan, np.inf, 0.5, 1e-3, 2e-15])
VALID_EDGES = np.array([-np.inf, -1e-300, 0.0, 1e-16, -1e-17, -800.0, -745.0])


def _with_invalid(n, seed):
    """Random valid log-probs with the invalid values and edge values at random places."""
    rng = np.random.default_rng(seed)
    logp = rng.uniform(np.log(1e-10), 0.0, n)
    where = rng.choice(n, INVALID.size + VALID_EDGES.size, replace=False)
    logp[where] = np.concatenate([INVALID, VALID_EDGES])
    invalid = np.zeros(n, dtype=bool)
    invalid[where[:INVALID.size]] = True
    return logp, invalid


@pytest.mark.parametrize("n", [40, 1 << 15], ids=["small", "large"])
@pytest.mark.parametrize("mode", ["exact", "exact-cached-table", "fast"])
def test_invalid_entries_give_nan_without_check(mode, n):
    logp, invalid = _with_invalid(n, seed=n)
    if mode == "exact-cached-table":
        band_table("kl", delta=0.05)  # large exact input then starts from the table
    elif mode == "exact" and n >= 1 << 15:  # the start table's Newton steps
        assert fast_module._cached_table_or_none(divergences.get("kl"), 0.011) is None
    delta = 0.011 if mode == "exact" else 0.05  # 0.011: no fast table
    run_mode = "fast" if mode == "fast" else "exact"
    band = band_bounds(logp, "kl", delta=delta, check_input=False, mode=run_mode)
    assert np.all(np.isnan(band.lower[invalid])) and np.all(np.isnan(band.upper[invalid]))
    # Against the validated valid entries alone (fewer than 32768: the safeguarded
    # solver in exact mode, hence 1e-12 rather than equality there).
    ref = band_bounds(logp[~invalid], "kl", delta=delta, mode=run_mode)
    tol = 0.0 if run_mode == "fast" else 1e-12
    np.testing.assert_allclose(band.lower[~invalid], ref.lower, rtol=0, atol=tol)
    np.testing.assert_allclose(band.upper[~invalid], ref.upper, rtol=tol, atol=0)
    minus_inf = logp == -np.inf
    assert np.all(band.lower[minus_inf] == 0.0) and np.all(band.upper[minus_inf] == np.inf)
    positive = np.arange(n) % 2 == 0
    bite = fast_module.biting_bound(logp, positive, "kl", delta=0.05, check_input=False)
    assert np.all(np.isnan(bite[invalid]))
    fast = band_bounds(logp, "kl", delta=0.05, check_input=False, mode="fast")
    expected = np.where(positive, fast.upper, fast.lower)
    np.testing.assert_allclose(bite[~invalid], expected[~invalid], rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_invalid_threshold_agrees_with_the_validator(dtype):
    # The largest accepted rounding above 0 is 8 eps of the dtype, with or without the check.
    eps = float(np.finfo(dtype).eps)
    logp = np.array([7.5 * eps, 8.5 * eps], dtype=dtype)
    band_bounds(logp[:1], "kl", delta=0.05)  # accepted by the check
    with pytest.raises(ValueError, match="positive in 1 entries"):
        band_bounds(logp[1:], "kl", delta=0.05)
    for mode in ("exact", "fast"):
        band = band_bounds(logp, "kl", delta=0.05, check_input=False, mode=mode)
        assert 0.0 <= band.lower[0] <= 1.0 and 1.0 <= band.upper[0] < 1.01  # p ~ 1
        assert np.isnan(band.lower[1]) and np.isnan(band.upper[1])


# --------------------------------------------------------------------------------------
# Every registry entry: certified to 1e-7, or an announced fallback to exact values
# --------------------------------------------------------------------------------------

REGISTRY = list(divergences.names()) + ["alpha(2)", "alpha(1/2)", "alpha(-1)"]
# reverse KL and JS: lower ~ v log v at the saturation kink (see bandtheory.fast).
EXPECTED_FALLBACK = {"reverse_kl", "js"}


@pytest.mark.parametrize("name", REGISTRY)
def test_fast_mode_is_certified_or_announces_exact_fallback(name):
    delta = 0.03  # no other test builds tables at this delta: the warning is fresh
    rng = np.random.default_rng(17)
    logp = np.concatenate([rng.uniform(np.log(1e-12), 0.0, 3000),
                           np.log1p(-np.exp(rng.uniform(np.log(1e-12), np.log(0.5), 1000))),
                           EDGES])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = band_bounds(logp, name, delta=delta, mode="fast")
    fallback = [w for w in caught if issubclass(w.category, TableFallbackWarning)]
    exact = band_bounds(logp, name, delta=delta)
    assert bool(fallback) == (name in EXPECTED_FALLBACK)
    if fallback:
        assert len(fallback) == 1 and name in str(fallback[0].message)
        np.testing.assert_array_equal(fast.upper, exact.upper)
        np.testing.assert_array_equal(fast.lower, exact.lower)
        with pytest.raises(ValueError, match="no fast table certified"):
            band_table(name, delta=delta)
        return
    assert band_table(name, delta=delta).max_error <= TOLERANCE
    finite = np.isfinite(exact.upper)
    assert np.array_equal(finite, np.isfinite(fast.upper))
    assert np.max(np.abs(fast.upper[finite] / exact.upper[finite] - 1.0)) <= TOLERANCE
    assert np.max(np.abs(fast.lower - exact.lower)) <= TOLERANCE
