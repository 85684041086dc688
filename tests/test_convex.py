"""Tests of the convex projector (bandtheory.convex) against independent routes.

Truth: the exact one-dimensional root ``band_bounds`` (itself checked against the
defining equation elsewhere), the defining inequality ``D_f(pi || pi_old) <= delta``
evaluated exactly, and the certified brackets of the cutting-plane path.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bandtheory import band_bounds, divergences
from bandtheory import convex
from bandtheory.convex import (
    CONVEX_RTOL,
    SATURATED,
    BandProblem,
    ConvexSolveError,
    convex_band,
    f_divergence,
    project,
    validate,
)

DCP_NAMES = list(divergences.names()) + ["alpha(2)", "alpha(1/2)", "alpha(-1)"]


def _tol(ref):
    return CONVEX_RTOL * np.maximum(1.0, np.abs(ref))


def _dirichlet(k, seed, p_min=1e-4):
    pi = np.random.default_rng([seed, k]).dirichlet(np.ones(k))
    order = np.argsort(pi)
    eligible = order[pi[order] >= p_min]
    return pi, np.unique([order[-1], order[k // 2], eligible[0]])


def _check_dcp(name, pi, idx, deltas):
    for delta in deltas:
        with warnings.catch_warnings():
            warnings.simplefilter("error", convex.InaccurateSolutionWarning)
            res = convex_band(pi, idx, name, delta)
        ref = band_bounds(np.log(pi[idx]), name, delta=delta)
        p = pi[idx]
        np.testing.assert_array_less(np.abs(res.lower - ref.lower), _tol(ref.lower))
        np.testing.assert_array_less(np.abs(res.upper - ref.upper), _tol(ref.upper))
        # Polished optima are exactly feasible: on the ball's edge (unless the ratio is
        # below float64's resolution of pi_old + lam (pi - pi_old), e.g. KL lower bounds
        # ~1e-35), or at a range end (saturated) inside; always on [0, 1/p].
        for d, value, status in ((res.divergence_lower, res.lower, res.status_lower),
                                 (res.divergence_upper, res.upper, res.status_upper)):
            solved = np.array([s != SATURATED for s in status]).reshape(d.shape)
            assert np.all(d <= delta * (1 + 1e-12))
            edge = solved & (value > 1e-9)
            assert np.all(np.abs(d[edge] - delta) <= 1e-12 * max(1.0, delta))
        assert np.all((res.lower >= 0) & (res.upper <= 1 / p * (1 + 1e-12)))
        assert res.method == "dcp" and res.polished
        assert set(res.status_lower + res.status_upper) <= {"optimal", SATURATED}


@pytest.mark.parametrize("name", DCP_NAMES)
@pytest.mark.parametrize("k,seed", [(8, 0), (60, 1)])
def test_dcp_agrees_with_band_bounds(name, k, seed):
    pi, idx = _dirichlet(k, seed)
    _check_dcp(name, pi, idx, (0.01, 0.5))


@pytest.mark.slow
@pytest.mark.parametrize("name", DCP_NAMES)
def test_dcp_agrees_at_k1000_with_rare_tokens(name):
    # K = 1000 Dirichlet: the rarest token has p ~ 2e-6 (jeffreys used to fail here;
    # the Neyman-type lower bounds, ratio ~ p/delta, were off by ~2e-6 before the
    # lower bound's gap tolerances were read in ratio units and the KKT refinement).
    pi = np.random.default_rng([3, 1000]).dirichlet(np.ones(1000))
    order = np.argsort(pi)
    _check_dcp(name, pi, np.array([order[-1], order[500], order[0]]), (0.05,))


NEYMAN_TYPE = ["neyman_chi2", "alpha(-1)"]


@pytest.mark.parametrize("name", NEYMAN_TYPE)
def test_neyman_type_lower_bound_at_small_p(name):
    # The lower bound of f with f(0+) = inf polynomially is a tiny ratio ~ p/delta whose
    # token's cone t pi >= (pi - p)^2 has entries 1/r^2 apart. With the gap tolerances in
    # masses the solver stopped with the rest of the distribution far from its optimal
    # shape: alpha(-1) at p = 1e-4, delta = 1 was 1.8e-6 off, and 3e-6 at p = 1e-6.
    rest = np.random.default_rng(1).dirichlet(np.ones(49))
    bp = BandProblem(50, name)
    for p in (1e-6, 1e-5, 1e-4, 3e-4, 1e-3):
        pi = np.concatenate([[p], (1 - p) * rest])
        for delta in (0.01, 0.05, 0.2, 1.0):
            with warnings.catch_warnings():
                # A status, not a value: the values are what this test checks.
                warnings.simplefilter("ignore", convex.InaccurateSolutionWarning)
                res = bp.solve(pi, 0, delta=delta)
            ref = band_bounds(np.log(p), name, delta=delta)
            assert abs(res.lower - ref.lower) <= _tol(ref.lower), (p, delta, res.lower, ref.lower)
            assert abs(res.upper - ref.upper) <= _tol(ref.upper), (p, delta, res.upper, ref.upper)
            # Exactly on the ball's edge, with the tiny ratio's relative precision kept.
            assert abs(res.divergence_lower - delta) <= 1e-12 * delta
            assert 0 < res.lower < 1


@pytest.mark.parametrize("name", NEYMAN_TYPE)
def test_neyman_type_validate_rows_at_k1000(name):
    # The rows `bandtheory validate "alpha(-1)"` failed on (K = 1000 Dirichlet, the
    # smallest token with p >= 1e-4, delta = 1, lower bound: 1.5e-6 and 2e-6 off).
    bp = BandProblem(1000, name)
    for seed in (0, 1, 2):
        pi, idx = _dirichlet(1000, seed)
        for delta in (0.2, 1.0):
            res = bp.solve(pi, idx, delta=delta)
            ref = band_bounds(np.log(pi[idx]), name, delta=delta)
            np.testing.assert_array_less(np.abs(res.lower - ref.lower), _tol(ref.lower))
            np.testing.assert_array_less(np.abs(res.upper - ref.upper), _tol(ref.upper))


def test_lower_gap_tolerances_are_in_ratio_units():
    options = {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 400}
    scaled = convex._gap_in_ratio_units(options, 1e-3)
    assert scaled["tol_gap_abs"] == pytest.approx(1e-12)
    assert scaled["tol_gap_rel"] == pytest.approx(1e-12)
    assert scaled["tol_feas"] == 1e-9 and scaled["max_iter"] == 400
    assert options["tol_gap_abs"] == 1e-9  # the caller's mapping is left alone
    # Floored where smaller tolerances end in "almost solved".
    floored = convex._gap_in_ratio_units(options, 1e-7)["tol_gap_abs"]
    assert floored == pytest.approx(1e-9 * convex._GAP_SCALE_MIN)
    assert convex._gap_in_ratio_units(options, 1.0)["tol_gap_abs"] == 1e-9


def test_kkt_refinement_reaches_the_optimum_from_a_poor_start():
    # Start Newton from a feasible but clearly suboptimal point with a non-proportional
    # rest (no help from the one-dimensional reduction): it must end on the exact root.
    pi_old, _ = _dirichlet(30, 4)
    i, delta = int(np.argmin(pi_old)), 0.3
    div = divergences.get("alpha(-1)")
    f2 = convex._second_derivative(div)
    rng = np.random.default_rng(0)
    for sign, side in ((1.0, "lower"), (-1.0, "upper")):
        start = pi_old * rng.uniform(0.8, 1.25, pi_old.size)
        start[i] = pi_old[i] * (0.5 if sign > 0 else 2.0)
        start = convex._polish(div, pi_old, start / start.sum(), delta)
        newton = convex._kkt_newton(div, f2, pi_old, start, delta, i, sign)
        refined = convex._polish(div, pi_old, newton, delta)
        ref = float(getattr(band_bounds(np.log(pi_old[i]), div, delta=delta), side))
        assert abs(start[i] / pi_old[i] - ref) > 0.01 * ref  # the start is far off
        assert refined[i] / pi_old[i] == pytest.approx(ref, rel=1e-12, abs=1e-14)
        assert f_divergence(refined, pi_old, div) <= delta * (1 + 1e-12)
    assert convex._second_derivative(divergences.get("tv")) is None  # f'' is a DiracDelta


def test_saturated_sides_are_certified_without_a_solve():
    # JS is bounded by log 2 < 1: the whole simplex is inside the ball.
    pi, idx = _dirichlet(10, 1)
    res = convex_band(pi, idx, "js", 1.0)
    assert set(res.status_upper) == set(res.status_lower) == {SATURATED}
    np.testing.assert_allclose(res.upper, 1 / pi[idx], rtol=1e-15)
    np.testing.assert_array_equal(res.lower, 0.0)


def test_dpp_resolve_without_recompiling():
    bp = BandProblem(20, "kl")
    assert bp.problem.is_dpp()
    pi, _ = _dirichlet(20, 3)
    first = bp.solve(pi, 0, delta=0.05)
    chain = bp.problem._cache.param_prog
    second = bp.solve(pi, 0, delta=0.2)
    assert bp.problem._cache.param_prog is chain  # same compiled program reused
    assert second.upper > first.upper  # monotone in delta


@pytest.mark.parametrize("name", DCP_NAMES)
def test_cutting_plane_matches_dcp_and_brackets_band_bounds(name):
    pi, idx = _dirichlet(12, 5)
    delta = 0.1
    cut = convex_band(pi, idx, name, delta, method="cutting_plane")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", convex.InaccurateSolutionWarning)
        dcp = convex_band(pi, idx, name, delta, method="dcp")
    ref = band_bounds(np.log(pi[idx]), name, delta=delta)
    assert cut.method == "cutting_plane"
    assert cut.converged and cut.iterations.max() < 100  # every bracket reaches rtol
    slack = 1e-9
    assert np.all(cut.lower_bracket[:, 0] <= ref.lower + slack)
    assert np.all(ref.lower <= cut.lower_bracket[:, 1] + slack)
    assert np.all(cut.upper_bracket[:, 0] <= ref.upper * (1 + slack))
    assert np.all(ref.upper <= cut.upper_bracket[:, 1] * (1 + slack))
    # The inner end is attained by a distribution that is exactly feasible.
    assert np.all(cut.divergence_lower <= delta) and np.all(cut.divergence_upper <= delta)
    width_lo = np.diff(cut.lower_bracket, axis=-1)[:, 0]
    width_up = np.diff(cut.upper_bracket, axis=-1)[:, 0]
    np.testing.assert_array_less(np.abs(cut.lower - dcp.lower), _tol(dcp.lower) + width_lo)
    np.testing.assert_array_less(np.abs(cut.upper - dcp.upper), _tol(dcp.upper) + width_up)


def test_cutting_plane_for_divergence_without_dcp_form():
    div = divergences.alpha(3)
    assert div.dcp is None
    pi, idx = _dirichlet(10, 7)
    res = convex_band(pi, idx, div, 0.3)
    ref = band_bounds(np.log(pi[idx]), div, delta=0.3)
    assert res.method == "cutting_plane" and res.converged
    assert np.all((res.upper_bracket[:, 0] <= ref.upper * (1 + 1e-9))
                  & (ref.upper <= res.upper_bracket[:, 1] * (1 + 1e-9)))


def test_iteration_limit_is_reported():
    pi, idx = _dirichlet(10, 2)
    res = convex_band(pi, idx, "kl", 0.1, method="cutting_plane", max_iter=2)
    assert not res.converged and res.iterations.max() == 2
    ref = band_bounds(np.log(pi[idx]), "kl", delta=0.1)
    assert np.all(res.upper_bracket[:, 0] <= ref.upper * (1 + 1e-9))
    assert np.all(ref.upper <= res.upper_bracket[:, 1] * (1 + 1e-9))


def test_forced_infeasible_raises_named_error():
    pi, _ = _dirichlet(6, 0)
    with pytest.raises(ConvexSolveError) as info:
        convex_band(pi, 0, "kl", 0.05, constraints=lambda x: [x[1] >= 0.9, x[2] >= 0.9])
    assert "infeasible" in info.value.status and info.value.solver == "CLARABEL"
    assert "infeasible" in str(info.value) and "CLARABEL" in str(info.value)


def test_inaccurate_warns_and_returns(monkeypatch):
    import cvxpy as cp

    def fake_solve(self, *args, **kwargs):
        self._status = cp.OPTIMAL_INACCURATE

    problem = cp.Problem(cp.Minimize(0))
    monkeypatch.setattr(cp.Problem, "solve", fake_solve)
    with pytest.warns(convex.InaccurateSolutionWarning, match="CLARABEL"):
        assert convex._solve(problem, "CLARABEL", {}, "test") == cp.OPTIMAL_INACCURATE


@pytest.mark.parametrize(
    "pi_old,index,err",
    [([0.5, 0.5, 0.0], 0, ValueError), ([0.6, 0.6], 0, ValueError), ([0.5, 0.5], 2, ValueError),
     ([0.5, 0.5], 0.5, TypeError), ([[0.5, 0.5]], 0, ValueError)],
)
def test_bad_inputs_refused(pi_old, index, err):
    with pytest.raises(err):
        convex_band(pi_old, index, "kl", 0.05)


def test_bad_delta_and_method_refused():
    with pytest.raises(ValueError, match="delta"):
        convex_band([0.5, 0.5], 0, "kl", -0.1)
    with pytest.raises(ValueError, match="method"):
        convex_band([0.5, 0.5], 0, "kl", 0.1, method="newton")


@pytest.mark.parametrize("metric", ["kl", "euclidean"])
def test_project_lands_on_ball_and_beats_scaled_points(metric):
    rng = np.random.default_rng(11)
    pi_old = rng.dirichlet(np.ones(15))
    target = rng.dirichlet(np.ones(15))
    delta = 0.05
    res = project(target, pi_old, "kl", delta, metric=metric)
    assert not res.inside and res.target_divergence > delta
    assert abs(res.divergence_value - delta) <= 1e-6  # active constraint
    # Every feasible point on the segment pi_old -> target is no closer.
    for lam in np.linspace(0, 1, 41):
        q = (1 - lam) * pi_old + lam * target
        if f_divergence(q, pi_old, "kl") <= delta:
            d = (np.sum(q * np.log(q / target)) if metric == "kl" else np.linalg.norm(q - target))
            assert res.distance <= d + 1e-6


def test_project_inside_returns_target():
    pi_old = np.array([0.3, 0.3, 0.4])
    target = np.array([0.31, 0.29, 0.4])
    res = project(target, pi_old, "chi2", 0.5)
    assert res.inside and res.distance == 0.0 and np.array_equal(res.pi, target)


def test_validate_passes_on_builtin_small():
    report = validate("chi2", deltas=(0.05, 0.5), ps=(1e-3, 0.3, 0.9), k=(10,), seeds=(0,))
    assert report.passed, report.format()
    assert {"convex vs band_bounds"} <= set(report.summary["pair"])
    assert set(report.summary["tolerance"]) <= {"1e-6*max(1,|b|)", "1e-9*max(1,|b|)"}
    assert "PASS" in report.format()


@pytest.mark.skipif(not hasattr(divergences, "from_expression"), reason="symbolic engine absent")
def test_validate_closed_form_respects_saturation():
    # Hellinger's closed-form lower root is spurious where the lower side is saturated
    # (p = 1e-4, delta = 0.01: the true lower bound is 0, the raw root is > 1).
    report = validate("hellinger", deltas=(0.01, 1.0), ps=(1e-4, 0.5), k=(10,), seeds=(0,))
    assert report.passed, report.format()
    rows = report.comparisons
    assert (rows["pair"] == "closed_form vs band_bounds").any()


def test_validate_refuses_nonconvex_before_solving(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a solver ran")

    monkeypatch.setattr(convex, "BandProblem", boom)
    monkeypatch.setattr(convex, "convex_band", boom)
    div = divergences.Divergence("bad", divergences.U**3 - 3 * divergences.U**2 + 2, "not convex")
    report = validate(div, deltas=(0.1,), ps=(0.5,), k=(5,), seeds=(0,))
    assert not report.passed and not dict((n, ok) for n, ok, _ in report.checks)["convexity"]
    if hasattr(divergences, "from_expression"):
        for text in ("u**3 - 3*u**2 + 2", "__import__('os')", "u +* 2"):
            with pytest.raises(ValueError):
                validate(text, deltas=(0.1,), ps=(0.5,), k=(5,), seeds=(0,))


@pytest.mark.skipif(not hasattr(divergences, "from_expression"), reason="parser not available")
def test_user_expression_goes_through_cutting_plane():
    div = divergences.from_expression("(u - 1)**2 / u", name="my_neyman")
    pi, idx = _dirichlet(8, 4)
    res = convex_band(pi, idx, div, 0.2)
    ref = band_bounds(np.log(pi[idx]), "neyman_chi2", delta=0.2)
    assert res.method == "cutting_plane" and res.converged
    assert np.all((res.upper_bracket[:, 0] <= ref.upper * (1 + 1e-9))
                  & (ref.upper <= res.upper_bracket[:, 1] * (1 + 1e-9)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kl", *NEYMAN_TYPE])
def test_validate_default_grid(name):
    report = validate(name)
    assert report.passed, report.format()
