"""The registry: exact generators, derived quantities and lookups."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

import bandtheory
from bandtheory import divergences
from bandtheory.divergences import U

# THEORY.md section 3, typed independently of the registry.
THEORY = {
    "kl": -sp.log(U) + U - 1,
    "reverse_kl": U * sp.log(U) - U + 1,
    "tv": sp.Abs(U - 1) / 2,
    "chi2": (U - 1) ** 2,
    "neyman_chi2": (U - 1) ** 2 / U,
    "hellinger": (sp.sqrt(U) - 1) ** 2,
    "js": (U * sp.log(2 * U / (U + 1)) + sp.log(2 / (U + 1))) / 2,
    "jeffreys": (U - 1) * sp.log(U),
    "triangular": (U - 1) ** 2 / (U + 1),
}

# f(0+), f'(inf) = lim f(u)/u and f''(1), worked out by hand.
LIMITS = {
    "kl": (math.inf, 1.0, 1.0),
    "reverse_kl": (1.0, math.inf, 1.0),
    "tv": (0.5, 0.5, math.nan),
    "chi2": (1.0, math.inf, 2.0),
    "neyman_chi2": (math.inf, 1.0, 2.0),
    "hellinger": (1.0, 1.0, 0.5),
    "js": (math.log(2) / 2, math.log(2) / 2, 0.25),
    "jeffreys": (math.inf, math.inf, 2.0),
    "triangular": (1.0, 1.0, 1.0),
}


def test_builtins_are_exactly_the_theory_generators():
    assert list(divergences.names()) == list(THEORY)
    for name, f in THEORY.items():
        entry = divergences.get(name)
        assert sp.simplify(entry.f - f) == 0, name
        assert entry.builtin
        assert entry.description and entry.name == name


def test_kl_description_states_direction():
    assert "D_KL(pi_old || pi)" in divergences.get("kl").description
    assert "D_KL(pi || pi_old)" in divergences.get("reverse_kl").description


@pytest.mark.parametrize("name", list(THEORY))
def test_limits_and_curvature(name):
    entry = divergences.get(name)
    f0, slope, curv = LIMITS[name]
    assert entry.f_at_0 == pytest.approx(f0, rel=1e-15) if math.isfinite(f0) else entry.f_at_0 == f0
    assert entry.slope_at_inf == pytest.approx(slope, rel=1e-15) if math.isfinite(slope) else entry.slope_at_inf == slope
    if math.isnan(curv):
        assert math.isnan(entry.curvature_at_1) and not entry.smooth
    else:
        assert entry.curvature_at_1 == pytest.approx(curv, rel=1e-15) and entry.smooth


@pytest.mark.parametrize("name", list(THEORY) + ["alpha(2)", "alpha(1/2)", "alpha(-1)", "alpha(3)"])
def test_numeric_f_matches_mpmath(name):
    entry = divergences.get(name)
    u = np.logspace(-6, 6, 61)
    f_mp = sp.lambdify(U, entry.f, "mpmath")
    f1_mp = sp.lambdify(U, sp.diff(entry.f, U), "mpmath")
    mp.mp.dps = 40
    values = entry(u)
    slopes = entry.f1_num(np, u)
    for ui, vi, si in zip(u, values, slopes):
        ref = f_mp(mp.mpf(ui))
        assert abs(vi - float(ref)) <= 1e-13 * max(1.0, abs(float(ref))), (name, ui)
        if name != "tv" or abs(ui - 1) > 1e-9:
            ref1 = f1_mp(mp.mpf(ui))
            assert abs(si - float(ref1)) <= 1e-12 * max(1.0, abs(float(ref1))), (name, ui)


@pytest.mark.parametrize("name", list(THEORY) + ["alpha(2)", "alpha(1/2)", "alpha(-1)", "alpha(3)"])
def test_numeric_second_derivative_matches_mpmath(name):
    # Reference: mpmath's numerical second derivative of the generator as THEORY.md
    # types it (alpha(a) from its definition), at 40 digits.
    if name.startswith("alpha"):
        a = sp.Rational(name[6:-1])
        f_theory = (U**a - 1 - a * (U - 1)) / (a * (a - 1))
    else:
        f_theory = THEORY[name]
    f_mp = sp.lambdify(U, f_theory, "mpmath")
    mp.mp.dps = 40
    u = np.logspace(-4, 4, 41)
    u = u[np.abs(u - 1) > 1e-6]  # TV's kink (its Dirac mass is left out of f2_num)
    curvature = divergences.get(name).f2_num(np, u)
    for ui, ci in zip(u, curvature):
        ref = float(mp.diff(f_mp, mp.mpf(ui), 2))
        assert abs(ci - ref) <= 1e-12 * max(1.0, abs(ref)), (name, ui, ci, ref)


@pytest.mark.parametrize("name", list(THEORY) + ["alpha(2)", "alpha(-1/2)"])
def test_generators_are_convex_and_vanish_at_one(name):
    entry = divergences.get(name)
    assert sp.simplify(entry.f.subs(U, 1)) == 0
    u = np.logspace(-8, 8, 4001)
    # convex on (0, inf): the derivative never decreases along the grid
    slopes = entry.f1_num(np, u)
    assert np.all(np.diff(slopes) >= -1e-12 * np.maximum(1.0, np.abs(slopes[1:])))


@pytest.mark.parametrize("name", list(THEORY) + ["alpha(2)", "alpha(1/2)", "alpha(-1)"])
def test_logspace_form_survives_underflow(name):
    entry = divergences.get(name)
    y = np.array([1e-3, 0.5, 3.0, 30.0])
    direct = entry(np.exp(-y))
    np.testing.assert_allclose(entry.f_logspace_num(np, y), direct, rtol=1e-12, atol=1e-15)
    # at y = 2000, exp(-y) underflows; the log-space form stays exact (or overflows to
    # inf where the true value is beyond double range)
    with np.errstate(over="ignore"):
        far = float(entry.f_logspace_num(np, np.array([2000.0]))[0])
    if math.isinf(entry.f_at_0):
        assert far > 1e3 or math.isinf(far)
    else:
        assert far == pytest.approx(entry.f_at_0, rel=1e-12)
    if name == "kl":
        assert far == pytest.approx(1999.0, rel=1e-15)


def test_alpha_family():
    assert divergences.get("alpha(1/2)") is divergences.alpha(0.5)
    assert divergences.get("alpha( 2 )") is divergences.alpha(2)
    # alpha(2) = chi2 / 2, alpha(1/2) = 2 hellinger, alpha(-1) = neyman / 2
    assert sp.simplify(divergences.alpha(2).f - THEORY["chi2"] / 2) == 0
    assert sp.simplify(divergences.alpha(sp.Rational(1, 2)).f - 2 * THEORY["hellinger"]) == 0
    assert sp.simplify(divergences.alpha(-1).f - THEORY["neyman_chi2"] / 2) == 0
    for bad in (0, 1, "1", 1.0):
        with pytest.raises(ValueError, match="must not be 0 or 1"):
            divergences.alpha(bad)
    with pytest.raises(ValueError, match="not a number"):
        divergences.alpha("two")
    with pytest.raises(ValueError, match="finite"):
        divergences.alpha(math.inf)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        divergences.get("kll")
    message = str(info.value)
    assert "'kll'" in message
    for name in THEORY:
        assert name in message
    assert "alpha(a)" in message
    with pytest.raises(ValueError, match="unknown divergence"):
        divergences.get("alpha(__import__('os'))")
    with pytest.raises(TypeError, match="name or a Divergence"):
        divergences.get(3)


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        bandtheory.DIVERGENCES["mine"] = divergences.get("kl")  # type: ignore[index]
    with pytest.raises(AttributeError):
        divergences.get("kl").name = "other"  # frozen entry
    assert bandtheory.DIVERGENCES["kl"] is divergences.get("kl")


def test_g_expression_reduces_as_in_theory():
    p, r = sp.symbols("p r", positive=True)
    chi2 = divergences.get("chi2").g_expr(p, r)
    assert sp.simplify(chi2 - p * (r - 1) ** 2 / (1 - p)) == 0
    tv = divergences.get("tv").g_expr(p, r)
    for pv, rv in ((0.2, 1.7), (0.6, 0.3)):
        assert float(tv.subs({p: pv, r: rv})) == pytest.approx(pv * abs(rv - 1), rel=1e-14)
