"""Clipping schemes and heuristics: one interface, each against its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandtheory import band_bounds, schemes
from bandtheory.bounds import r_star

P = np.array([1e-9, 1e-7, 1e-4, 0.01, 0.08, 0.3, 0.5, 0.9, 0.99, 1 - 1e-7, 1.0])
LOGP = np.log(P)


def test_clip_and_clip_higher():
    band = schemes.clip(eps=0.2).bounds(LOGP)
    assert np.all(band.lower == 0.8) and np.all(band.upper == 1.2)
    band = schemes.clip_higher(eps_low=0.2, eps_high=0.28).bounds(LOGP)
    assert np.all(band.lower == 0.8) and np.all(band.upper == 1.28)
    # Clip-Higher with equal epsilons is canonical clipping
    a = schemes.clip_higher(eps_low=0.15, eps_high=0.15).bounds(LOGP)
    b = schemes.clip(eps=0.15).bounds(LOGP)
    np.testing.assert_array_equal(a.lower, b.lower)
    np.testing.assert_array_equal(a.upper, b.upper)


def test_dcpo_formula():
    eps_low, eps_high = 0.2, 0.28
    band = schemes.dcpo(eps_low=eps_low, eps_high=eps_high).bounds(LOGP)
    upper = 0.5 + 0.5 * np.sqrt(1 + 4 * eps_high / P)
    lower = 0.5 + 0.5 * np.sqrt(np.maximum(1 - 4 * eps_low / P, 0))
    np.testing.assert_allclose(band.upper, upper, rtol=1e-14)
    np.testing.assert_allclose(band.lower, lower, rtol=1e-14)
    # at p = 1: lower = (1 + sqrt(0.2)) / 2, upper = (1 + sqrt(2.12)) / 2
    assert band.lower[-1] == pytest.approx((1 + math.sqrt(0.2)) / 2, rel=1e-15)
    assert band.upper[-1] == pytest.approx((1 + math.sqrt(2.12)) / 2, rel=1e-15)


def test_band_scheme_is_band_bounds():
    for name in ("kl", "tv", "chi2", "hellinger"):
        scheme = schemes.band(name, delta=0.07)
        a = scheme.bounds(LOGP)
        b = band_bounds(LOGP, name, delta=0.07)
        np.testing.assert_array_equal(a.lower, b.lower)
        np.testing.assert_array_equal(a.upper, b.upper)
        assert name in scheme.label


def test_relax_is_union_with_clip_higher():
    base = schemes.band("kl", delta=0.05)
    relaxed = schemes.relax(base, eps_low=0.2, eps_high=0.28).bounds(LOGP)
    exact = base.bounds(LOGP)
    np.testing.assert_array_equal(relaxed.lower, np.minimum(exact.lower, 0.8))
    np.testing.assert_array_equal(relaxed.upper, np.maximum(exact.upper, 1.28))
    # near p = 1 the exact Band is narrower than Clip-Higher, so relaxation bites there
    assert relaxed.upper[-1] == 1.28 and exact.upper[-1] == 1.0


def test_cap_and_composition():
    capped = schemes.cap(schemes.band("kl", delta=0.05), upper_max=100).bounds(LOGP)
    exact = band_bounds(LOGP, "kl", delta=0.05)
    np.testing.assert_array_equal(capped.upper, np.minimum(exact.upper, 100.0))
    np.testing.assert_array_equal(capped.lower, exact.lower)
    both = schemes.cap(schemes.relax(schemes.band("tv", delta=0.1)), upper_max=3.0)
    band = both.bounds(LOGP)
    assert np.all(band.upper <= 3.0) and np.all(band.upper >= 1.28)
    assert "relax" in both.name and "cap" in both.name
    # Band with a huge radius and a cap equals fixed clipping at the cap (upper side)
    # (where the simplex allows it: 1/p >= 1.2)
    room = LOGP[P <= 0.5]
    huge = schemes.cap(schemes.band("tv", delta=1.0), upper_max=1.2).bounds(room)
    np.testing.assert_array_equal(huge.upper, np.full(len(room), 1.2))


def test_reference_compat_overrides():
    base = schemes.band("kl", delta=0.05)
    compat = schemes.reference_compat(base).bounds(LOGP)
    exact = base.bounds(LOGP)
    small = P < 1e-6
    large = P > 1 - 1e-6
    middle = ~small & ~large
    np.testing.assert_allclose(compat.upper[small], 1 / P[small], rtol=1e-15)
    assert np.all(compat.lower[small] == 0)
    assert np.all(compat.upper[large] == 1.0)
    np.testing.assert_allclose(compat.lower[large], r_star("kl", delta=0.05), rtol=1e-15)
    assert r_star("kl", delta=0.05) == pytest.approx(math.exp(-0.05), rel=1e-14)
    np.testing.assert_array_equal(compat.upper[middle], exact.upper[middle])
    # the exact Band at p = 1e-7 is far from the simplex limit the official code uses
    assert exact.upper[1] < 0.1 / P[1]


def test_dtype_shape_and_scalar():
    x = np.log(np.full((2, 3), 0.25, dtype=np.float32))
    for scheme in (
        schemes.clip(),
        schemes.clip_higher(),
        schemes.dcpo(),
        schemes.band("chi2", delta=0.1),
        schemes.relax(schemes.band()),
        schemes.cap(schemes.band()),
        schemes.reference_compat(schemes.band()),
    ):
        band = scheme.bounds(x)
        assert band.lower.shape == (2, 3) and band.lower.dtype == np.float32, scheme.name
        assert band.upper.shape == (2, 3) and band.upper.dtype == np.float32, scheme.name
        scalar = scheme.bounds(math.log(0.25))
        assert isinstance(scalar.upper, float)
        assert isinstance(scheme, schemes.Scheme)


@pytest.mark.parametrize(
    "factory, kwargs, error",
    [
        (schemes.clip, {"eps": -0.1}, ValueError),
        (schemes.clip, {"eps": 1.5}, ValueError),
        (schemes.clip, {"eps": "0.2"}, TypeError),
        (schemes.clip_higher, {"eps_low": 0.2, "eps_high": math.inf}, ValueError),
        (schemes.dcpo, {"eps_low": math.nan, "eps_high": 0.28}, ValueError),
        (schemes.band, {"divergence": "nope", "delta": 0.1}, ValueError),
        (schemes.band, {"divergence": "kl", "delta": 0.0}, ValueError),
    ],
)
def test_bad_parameters(factory, kwargs, error):
    with pytest.raises(error):
        factory(**kwargs)


def test_bad_heuristic_parameters():
    with pytest.raises(ValueError, match="upper_max must be >= 1"):
        schemes.cap(schemes.band(), upper_max=0.5)
    with pytest.raises(TypeError, match="Band scheme"):
        schemes.reference_compat(schemes.clip())
    with pytest.raises(ValueError, match="p_min < p_max"):
        schemes.reference_compat(schemes.band(), p_min=0.5, p_max=0.1)
    with pytest.raises(ValueError, match="NaN"):
        schemes.clip().bounds(np.array([np.nan]))
