"""Fast mode: certified tables against the exact solver (independent check grids)."""

from __future__ import annotations

import numpy as np
import pytest

from bandtheory import band_bounds
from bandtheory.fast import TOLERANCE, _checks, band_table

CASES = [("kl", 0.05), ("kl", 1e-3), ("tv", 0.1), ("chi2", 0.05), ("hellinger", 0.2), ("triangular", 1.0)]


@pytest.mark.parametrize("name,delta", CASES)
def test_table_certificate_recorded_and_within_tolerance(name, delta):
    table = band_table(name, delta=delta)
    assert 0.0 <= table.max_error <= TOLERANCE
    assert table.max_error == max(table.max_rel_error_upper, table.max_abs_error_lower)
    # 2 d + 3 checks in every fitted piece, both ends included (piece 0 is the [0, inf]
    # sentinel below log(tiny)).
    assert len(_checks(table.degree)) == 2 * table.degree + 3
    assert table.n_checked >= (2 * table.degree + 3) * (table.n_pieces - 1)
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


def test_uncertifiable_divergence_falls_back_to_exact():
    logp = np.log(np.array([1e-4, 0.05, 0.3, 0.9]))
    with pytest.raises(ValueError, match="could not certify"):
        band_table("reverse_kl", delta=0.05)
    fast = band_bounds(logp, "reverse_kl", delta=0.05, mode="fast")
    exact = band_bounds(logp, "reverse_kl", delta=0.05)
    np.testing.assert_array_equal(fast.upper, exact.upper)


def test_table_is_cached():
    assert band_table("kl", delta=0.05) is band_table("kl", delta=0.05)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode"):
        band_bounds(np.zeros(2) - 1.0, mode="approx")


@pytest.mark.parametrize("name,delta", CASES + [("neyman_chi2", 0.05)])
def test_large_input_exact_mode_uses_polish_and_stays_exact(name, delta):
    # Above the polishing size the exact mode starts from the table and takes the
    # certified Newton steps; compare with the safeguarded solver run on small slices
    # (below the polishing size), at points independent of the table's grids.
    rng = np.random.default_rng(3)
    n = 1 << 15
    logp = np.concatenate([rng.uniform(np.log(1e-12), 0.0, n // 2),
                           np.log1p(-np.exp(rng.uniform(np.log(1e-14), np.log(0.5), n // 2)))])
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
