"""Tests of the convex projector (bandtheory.convex) against independent routes.

Truth: the exact one-dimensional root ``band_bounds`` (itself checked against the
defining equation elsewhere), the defining inequality ``D_f(pi || pi_old) <= delta``
evaluated exactly, and the certified brackets of the cutting-plane path.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from bandtheory import band_bounds, divergences
from bandtheory import convex
from bandtheory.convex import (
    CONVEX_RTOL,
    RATIO_ATOL,
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
    # The validator's tolerance: relative, with a floor for ratios that are 0 in float64.
    return np.maximum(CONVEX_RTOL * np.abs(ref), RATIO_ATOL)


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
        # The certified brackets (polished value and Lagrangian dual bound) hold the
        # exact root and are within the certification tolerance.
        for bracket, value, ref_v in ((res.lower_bracket, res.lower, ref.lower),
                                      (res.upper_bracket, res.upper, ref.upper)):
            assert not np.isnan(bracket).any()
            slack = 1e-12 * np.maximum(1.0, np.abs(ref_v))
            assert np.all((bracket[..., 0] <= ref_v + slack) & (ref_v <= bracket[..., 1] + slack))
            assert np.all((bracket[..., 0] <= value) & (value <= bracket[..., 1]))
            width = bracket[..., 1] - bracket[..., 0]
            assert np.all(width <= np.maximum(convex.CERTIFY_RTOL * np.abs(value),
                                              convex._GAP_FLOOR / p))


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


@pytest.mark.parametrize("name", ["kl", "js", "tv", "hellinger", "alpha(-2)", "alpha(3)"])
def test_dual_bound_is_valid_at_suboptimal_points(name):
    # Weak duality: whatever feasible point the multipliers are read from, the bound
    # stays on the safe side of the exact root, and a point that is clearly suboptimal
    # shows a gap of at least its distance from the root.
    pi_old, _ = _dirichlet(30, 4)
    i, delta = int(np.argmin(pi_old)), 0.3
    div = divergences.get(name)
    rng = np.random.default_rng(1)
    ref = band_bounds(np.log(pi_old[i]), div, delta=delta)
    for sign, exact in ((1.0, float(ref.lower)), (-1.0, float(ref.upper))):
        if exact in (0.0, 1.0 / pi_old[i]):
            continue  # saturated: certified by the range end, not by duality
        for trial in range(5):
            start = pi_old * rng.uniform(0.7, 1.4, pi_old.size)
            start[i] = pi_old[i] * (0.7 if sign > 0 else 1.4)
            point = convex._polish(div, pi_old, start / start.sum(), delta)
            value = point[i] / pi_old[i]
            bound = convex._dual_bound(div, pi_old, point, i, sign, delta)
            assert np.isfinite(bound)
            assert sign * bound <= sign * exact + 1e-12 * max(1.0, exact)
            assert sign * (value - bound) >= sign * (value - exact) - 1e-12 * max(1.0, exact)
    assert np.isnan(convex._dual_bound(div, pi_old, np.eye(30)[i], i, -1.0, delta))


def _recording_solves(monkeypatch, bp):
    """The keyword options of every solver call ``bp`` makes, recorded in a list."""
    seen = []
    solve = bp.problem.solve
    monkeypatch.setattr(bp.problem, "solve", lambda **kw: (seen.append(kw), solve(**kw))[1])
    return seen


def _certify_failing_once(monkeypatch, fail_calls):
    """Make _dual_bound report a far-off bound on its first ``fail_calls`` calls."""
    calls = []
    real = convex._dual_bound

    def fake(div, pi_old, pi, i, sign, delta):
        calls.append(sign)
        bound = real(div, pi_old, pi, i, sign, delta)
        return bound - sign * 0.5 * abs(bound) if len(calls) <= fail_calls else bound

    monkeypatch.setattr(convex, "_dual_bound", fake)
    return calls


def test_uncertified_optimum_goes_to_the_next_attempt(monkeypatch):
    pi, idx = _dirichlet(20, 3)
    i = int(idx[0])
    bp = BandProblem(20, "kl")
    seen = _recording_solves(monkeypatch, bp)
    calls = _certify_failing_once(monkeypatch, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", convex.InaccurateSolutionWarning)
        res = bp.solve(pi, i, delta=0.2)
    # The lower side's first optimum did not certify: a second solve, then certified.
    assert len(seen) == 3 and calls == [1.0, 1.0, -1.0]
    ref = band_bounds(np.log(pi[i]), "kl", delta=0.2)
    assert abs(res.lower - ref.lower) <= _tol(ref.lower)
    assert res.lower_bracket[1] - res.lower_bracket[0] <= 1e-7 * res.lower


def test_no_certified_attempt_warns_with_the_gap(monkeypatch):
    pi, idx = _dirichlet(20, 3)
    i = int(idx[0])
    bp = BandProblem(20, "kl")
    bp._attempts = lambda: [(dict(convex.DEFAULT_SOLVER_OPTIONS), False)] * 2
    _certify_failing_once(monkeypatch, 2)
    gap_warning = r"lower bound .* duality gap is 0\.5"
    with pytest.warns(convex.InaccurateSolutionWarning, match=gap_warning):
        res = bp.solve(pi, i, delta=0.2)
    # The best point is returned, with the (honest, wide) bracket it was certified to.
    assert res.status_lower == ("optimal",)
    assert res.lower_bracket[0] == pytest.approx(0.5 * res.lower, rel=1e-9)


@pytest.mark.slow
def test_certificate_rejects_a_suboptimal_power_cone_optimum():
    # alpha(-4), K = 1000, the rarest token (p = 9.6e-7), delta = 1: Clarabel's first
    # attempt ended "optimal" at a lower bound 2.4 % too high (0.015160 against
    # 0.014808), which polishing and the Newton refinement kept. Its duality gap
    # (4.9 %) now sends the side to the next attempt.
    k = 1000
    pi = np.random.default_rng([2, k]).dirichlet(np.ones(k))
    i = int(np.argmin(pi))
    with warnings.catch_warnings():
        warnings.simplefilter("error", convex.InaccurateSolutionWarning)
        res = BandProblem(k, "alpha(-4)").solve(pi, i, delta=1.0)
    ref = band_bounds(np.log(pi[i]), "alpha(-4)", delta=1.0)
    assert abs(res.lower - ref.lower) <= _tol(ref.lower)
    assert abs(res.upper - ref.upper) <= _tol(ref.upper)


def test_bound_exactly_at_its_saturation_threshold_is_certified():
    # chi2's lower bound at p = 0.5, delta = 1 is exactly 0 (g(p, 0) = delta); the range
    # end's float64 divergence is 1 + 1 ulp. A solve at tolerances 1e-6 returned
    # 1.2e-11, outside the validator's floor RATIO_ATOL (bandtheory validate chi2 FAILed).
    rest = np.random.default_rng(0).dirichlet(np.ones(49))
    pi = np.concatenate([[0.5], 0.5 * rest])
    res = BandProblem(50, "chi2").solve(pi, 0, delta=1.0)
    assert res.status_lower == (SATURATED,)
    assert res.lower == 0.0 and res.divergence_lower <= 1.0 * (1 + 1e-15)
    ref = band_bounds(np.log(0.5), "chi2", delta=1.0)
    assert abs(res.lower - ref.lower) <= _tol(ref.lower)


def test_unpolished_solves_use_tight_tolerances(monkeypatch):
    # The default tolerances (1e-6) rely on the polish and the KKT refinement; without
    # them the solver's own point is the answer and is solved to 1e-9.
    assert convex.DEFAULT_SOLVER_OPTIONS["tol_feas"] == 1e-6
    pi, idx = _dirichlet(30, 4)
    i = int(idx[0])
    bp = BandProblem(30, "kl")
    seen = _recording_solves(monkeypatch, bp)
    ref = band_bounds(np.log(pi[i]), "kl", delta=0.1)
    for polish, tol in ((True, 1e-6), (False, 1e-9)):
        seen.clear()
        res = bp.solve(pi, i, delta=0.1, polish=polish)
        assert seen and all(kw["tol_feas"] == tol for kw in seen)
        assert abs(res.upper - ref.upper) <= _tol(ref.upper)
        assert abs(res.lower - ref.lower) <= _tol(ref.lower)
        assert res.polished == polish


def test_saturated_sides_are_certified_without_a_solve():
    # JS is bounded by log 2 < 1: the whole simplex is inside the ball.
    pi, idx = _dirichlet(10, 1)
    res = convex_band(pi, idx, "js", 1.0)
    assert set(res.status_upper) == set(res.status_lower) == {SATURATED}
    np.testing.assert_allclose(res.upper, 1 / pi[idx], rtol=1e-15)
    np.testing.assert_array_equal(res.lower, 0.0)


def test_convex_band_keeps_compiled_programs_between_calls():
    pi, idx = _dirichlet(25, 5)
    other, _ = _dirichlet(25, 6)
    convex._programs.clear()
    first = convex_band(pi, idx, "hellinger", 0.1)
    (problem, _), = convex._programs.values()
    chain = problem.problem._cache.param_prog
    second = convex_band(other, idx, "hellinger", 0.3)  # new pi_old and delta: no recompile
    assert len(convex._programs) == 1 and problem.problem._cache.param_prog is chain
    for res, q, delta in ((first, pi, 0.1), (second, other, 0.3)):
        ref = band_bounds(np.log(q[idx]), "hellinger", delta=delta)
        np.testing.assert_array_less(np.abs(res.upper - ref.upper), _tol(ref.upper))
    # Other settings get their own programs; the oldest is dropped past the limit.
    for k in (6, 7, 8, 9):
        convex_band(np.full(k, 1.0 / k), 0, "hellinger", 0.1)
    assert len(convex._programs) == convex._PROGRAM_CACHE_SIZE
    assert all(key[0] != 25 for key in convex._programs)
    # Unhashable solver options (checked by the solver only when it runs) are not cached.
    before = dict(convex._programs)
    problem, lock = convex._compiled_program(6, divergences.get("chi2"), None, {"opt": [1]})
    assert problem.k == 6 and dict(convex._programs) == before


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
    # alpha(3)'s generator without its registry builder.
    div = divergences.Divergence("alpha3_plain", divergences.alpha(3).f, "alpha(3), no DCP form")
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
    assert set(report.summary["tolerance"]) <= {"1e-06*|b|, >= 1e-12", "1e-09*|b|, >= 1e-12"}
    assert "PASS" in report.format()


@pytest.mark.skipif(not hasattr(divergences, "from_expression"), reason="symbolic engine absent")
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "5"])
def test_validate_refuses_a_bad_derive_timeout(bad):
    with pytest.raises(ValueError, match="derive_timeout"):
        validate("chi2", deltas=(0.1,), ps=(0.5,), k=(5,), seeds=(0,), derive_timeout=bad)


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


# --------------------------------------------------------------------------------------
# alpha(a) for every a: exact power-cone forms
# --------------------------------------------------------------------------------------

POWER_ALPHAS = ["alpha(3)", "alpha(3/2)", "alpha(0.3)", "alpha(-1/2)", "alpha(-2)"]


@pytest.mark.parametrize("name", POWER_ALPHAS)
@pytest.mark.parametrize("k", [10, 100])
def test_power_cone_alpha_agrees_with_band_bounds(name, k):
    # Relative 1e-6 (the lower bounds here reach ~1e-3), every solve 'optimal'.
    assert divergences.get(name).dcp is not None
    for seed in (0, 1):
        pi, idx = _dirichlet(k, seed)
        _check_dcp(name, pi, idx, (0.01, 0.5))


def test_power_cone_alpha_is_dpp_and_resolves_without_recompiling():
    bp = BandProblem(30, "alpha(-1/2)")
    assert bp.problem.is_dpp()
    pi, _ = _dirichlet(30, 2)
    first = bp.solve(pi, 0, delta=0.05)
    chain = bp.problem._cache.param_prog
    other, _ = _dirichlet(30, 3)
    second = bp.solve(other, 0, delta=0.2)
    assert bp.problem._cache.param_prog is chain
    for res, q, delta in ((first, pi, 0.05), (second, other, 0.2)):
        ref = band_bounds(np.log(q[0]), "alpha(-1/2)", delta=delta)
        assert abs(res.upper - ref.upper) <= _tol(ref.upper)
        assert abs(res.lower - ref.lower) <= _tol(ref.lower)


def test_power_cone_alpha_rescaled_cones_describe_the_same_ball():
    # The retry with rescaled cones (sigma != 1) must give the same optimum: the power
    # cone form is 1-homogeneous, like the perspective.
    pi, idx = _dirichlet(40, 6)
    i = int(idx[-1])
    bp = BandProblem(40, "alpha(0.3)")
    bp._delta.value = 0.2
    values = []
    # The raw solver optimum (no polish) is compared, so the solver's own tolerances are
    # pinned well below the 1e-6 checked here (the defaults, 1e-6, leave polishing and
    # the Newton refinement to carry the last digits).
    tight = {**convex.DEFAULT_SOLVER_OPTIONS, "tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9,
             "tol_feas": 1e-9}
    for rescaled in (False, True):
        # One attempt only, in masses or in rescaled cones.
        bp._attempts = lambda r=rescaled: [(dict(tight), r)]
        point, status, _ = bp._side(pi, i, -1.0, "test", polish=False)
        assert status == "optimal"
        values.append(point[i] / pi[i])
    ref = float(band_bounds(np.log(pi[i]), "alpha(0.3)", delta=0.2).upper)
    assert values[0] == pytest.approx(ref, rel=1e-6)
    assert values[1] == pytest.approx(ref, rel=1e-6)


# --------------------------------------------------------------------------------------
# Cutting plane and validator: tolerances relative to the value
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(divergences, "from_expression"), reason="parser not available")
def test_cutting_plane_certifies_a_small_lower_bound_relatively():
    # p = 1e-3, delta = 0.5: the Neyman lower bound is ~2e-3. With the old stopping rule
    # rtol * max(1, |v|) the certified interval was 4e-5 of the value wide.
    div = divergences.from_expression("(u - 1)**2 / u")
    rest = np.random.default_rng(1).dirichlet(np.ones(19))
    p, delta, rtol = 1e-3, 0.5, 1e-7
    pi = np.concatenate([[p], (1 - p) * rest])
    res = convex_band(pi, 0, div, delta, rtol=rtol)
    ref = band_bounds(np.log(p), "neyman_chi2", delta=delta)
    assert res.method == "cutting_plane" and res.converged
    assert 1e-3 < ref.lower < 1e-2
    lo, hi = res.lower_bracket
    assert lo <= ref.lower * (1 + 1e-12) and ref.lower <= hi * (1 + 1e-12)
    assert (hi - lo) / ref.lower <= rtol
    assert abs(res.lower - ref.lower) <= rtol * ref.lower
    lo, hi = res.upper_bracket
    assert (hi - lo) / ref.upper <= rtol


def test_cutting_plane_stops_on_a_bound_that_is_zero_in_float64():
    # kl at p = 1e-3, delta = 0.1: lower ~ exp(-delta/p) ~ 1e-44, below any LP's reach;
    # the float64 floor stops it at once, with the true value inside the bracket.
    rest = np.random.default_rng(1).dirichlet(np.ones(19))
    pi = np.concatenate([[1e-3], (1 - 1e-3) * rest])
    res = convex_band(pi, 0, "kl", 0.1, method="cutting_plane")
    ref = float(band_bounds(np.log(1e-3), "kl", delta=0.1).lower)
    assert 0 < ref < 1e-40
    assert res.converged and res.iterations[0] <= 3
    lo, hi = res.lower_bracket
    assert lo <= ref <= hi <= 4 * np.finfo(float).eps / 1e-3


def test_validator_tolerance_is_relative(monkeypatch):
    # The closed form is not what this checks (and its derivation is the slow part).
    monkeypatch.setattr(convex, "_closed_form", lambda div, timeout: (None, "skipped"))
    # chi2 at p = 0.3, delta = 0.4: lower bound 1 - sqrt(delta (1 - p) / p) = 0.034.
    grid = dict(deltas=(0.4,), ps=(0.3,), k=(10,), seeds=(0,))
    report = validate("chi2", **grid)
    rows = report.comparisons
    convex_rows = rows[rows["pair"] == "convex vs band_bounds"]
    expected = np.maximum(CONVEX_RTOL * convex_rows["value_b"].abs(), RATIO_ATOL)
    np.testing.assert_allclose(convex_rows["tol"], expected, rtol=1e-15)
    assert (convex_rows["ok"] == (convex_rows["abs_diff"] <= convex_rows["tol"])).all()
    assert report.passed, report.format()
    # An error of 1e-5 relative on every convex value must fail, also where the value is
    # small: the old tolerance 1e-6 max(1, |b|) let the lower bound 0.034 off by 3.4e-7
    # pass.
    solve = convex.BandProblem.solve

    def off(self, *args, **kwargs):
        import dataclasses

        res = solve(self, *args, **kwargs)
        return dataclasses.replace(res, lower=res.lower * (1 + 1e-5), upper=res.upper * (1 + 1e-5))

    monkeypatch.setattr(convex.BandProblem, "solve", off)
    bad = validate("chi2", **grid)
    assert not bad.passed
    failed = bad.comparisons[~bad.comparisons["ok"]]
    small = failed[(failed["source"] == "grid") & (failed["side"] == "lower")]
    assert len(small) == 1 and 0.03 < small["value_b"].iloc[0] < 0.04
    assert small["abs_diff"].iloc[0] < CONVEX_RTOL  # within the old absolute tolerance
    assert not dict((n, ok) for n, ok, _ in bad.checks)["reduction theorem"]


# --------------------------------------------------------------------------------------
# Entries built directly are checked before any solver runs
# --------------------------------------------------------------------------------------


def _no_solver(monkeypatch):
    import cvxpy as cp

    def boom(*args, **kwargs):
        raise AssertionError("a solver ran")

    monkeypatch.setattr(cp.Problem, "solve", boom)
    monkeypatch.setattr(convex, "_highs_lp", boom)


@pytest.mark.parametrize(
    "f, message",
    [(divergences.U**3 - 3 * divergences.U**2 + 2, "convexity fails"),
     ((divergences.U - 1) ** 2 + 1, "f(1) = 0 fails")],
)
def test_direct_entry_refused_before_any_solve(monkeypatch, f, message):
    _no_solver(monkeypatch)
    pi, _ = _dirichlet(6, 0)
    div = divergences.Divergence("bad", f, "not a generator")
    for method in ("auto", "cutting_plane", "dcp"):
        with pytest.raises(ValueError, match="refused before any solve") as info:
            convex_band(pi, 0, div, 0.1, method=method)
        assert message in str(info.value) and "'bad'" in str(info.value)
    # An entry with a builder is refused too (the builder cannot vouch for f).
    with_builder = divergences.Divergence("bad_dcp", f, "not a generator",
                                          dcp=divergences.get("chi2").dcp)
    with pytest.raises(ValueError, match=re.escape(message)):
        BandProblem(6, with_builder)
    with pytest.raises(ValueError, match="refused before any solve"):
        project(pi[::-1] / pi.sum(), pi, with_builder, 0.01)


def test_generator_check_runs_once_per_entry(monkeypatch):
    calls = []
    checks = convex._generator_checks
    monkeypatch.setattr(convex, "_generator_checks", lambda div: calls.append(div) or checks(div))
    div = divergences.Divergence("fresh_chi2", (divergences.U - 1) ** 2, "chi2 again",
                                 dcp=divergences.get("chi2").dcp)
    pi, _ = _dirichlet(6, 1)
    for delta in (0.05, 0.1, 0.2):
        convex_band(pi, 0, div, delta)
    assert calls == [div]


# --------------------------------------------------------------------------------------
# project() with zeros in the target
# --------------------------------------------------------------------------------------


def _target_with_zeros(k=15, zeros=3, seed=11):
    rng = np.random.default_rng(seed)
    pi_old = rng.dirichlet(np.ones(k))
    target = rng.dirichlet(np.ones(k))
    target[:zeros] = 0.0
    return pi_old, target / target.sum()


def _kl(q, target):
    on = q > 0
    return float(np.sum(q[on] * np.log(q[on] / target[on]))) if np.all(target[on] > 0) else np.inf


# The divergence of pi_old renormalised on a support of pi_old mass m (Jensen's bound).
_SUPPORT_NEEDED = {
    "reverse_kl": lambda m: -np.log(m),
    "chi2": lambda m: (1 - m) / m,
    "tv": lambda m: 1 - m,
}


def test_project_kl_metric_refuses_target_zeros_for_kl():
    pi_old, target = _target_with_zeros()
    with pytest.raises(ValueError, match="f\\(0\\+\\) is infinite") as info:
        project(target, pi_old, "kl", 5.0)
    assert f"{pi_old[:3].sum():.6g}" in str(info.value)  # the mass off the support


@pytest.mark.parametrize("name", sorted(_SUPPORT_NEEDED))
def test_project_kl_metric_target_zeros_infeasible_is_refused(name):
    pi_old, target = _target_with_zeros()
    m = float(pi_old[3:].sum())
    needed = _SUPPORT_NEEDED[name](m)
    assert f_divergence(np.where(target > 0, pi_old / m, 0.0), pi_old, name) == pytest.approx(needed)
    with pytest.raises(ValueError, match="delta") as info:
        project(target, pi_old, name, 0.9 * needed)
    assert f"{needed:.6g}" in str(info.value) and f"{m:.6g}" in str(info.value)


@pytest.mark.parametrize("name", sorted(_SUPPORT_NEEDED))
def test_project_kl_metric_target_zeros_solves_on_the_support(name):
    pi_old, target = _target_with_zeros()
    m = float(pi_old[3:].sum())
    delta = 1.5 * _SUPPORT_NEEDED[name](m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither cvxpy's warning nor an inaccurate status
        res = project(target, pi_old, name, delta)
    assert not res.inside and res.status == "optimal"
    assert np.all(res.pi[:3] == 0.0) and np.isfinite(res.distance)
    assert res.pi.sum() == pytest.approx(1.0, abs=1e-12)
    assert res.divergence_value <= delta * (1 + 1e-6)
    assert res.distance == pytest.approx(_kl(res.pi, target), rel=1e-12)
    # No feasible point on the support's segment from the closest point to the target
    # is closer.
    closest = np.where(target > 0, pi_old / m, 0.0)
    beaten = 0
    for lam in np.linspace(0, 1, 41):
        q = (1 - lam) * closest + lam * target
        if f_divergence(q, pi_old, name) <= delta:
            beaten += 1
            assert res.distance <= _kl(q, target) + 1e-6
    assert beaten > 1


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "chi2", "tv"])
def test_project_euclidean_target_zeros(name):
    pi_old, target = _target_with_zeros()
    delta = 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = project(target, pi_old, name, delta, metric="euclidean")
    assert not res.inside and res.status == "optimal"
    assert res.pi[:3].sum() > 0  # the ball keeps mass where the target has none
    assert abs(res.divergence_value - delta) <= 1e-6
    for lam in np.linspace(0, 1, 41):
        q = (1 - lam) * pi_old + lam * target
        if f_divergence(q, pi_old, name) <= delta:
            assert res.distance <= np.linalg.norm(q - target) + 1e-6


def test_solve_turns_cvxpy_inaccuracy_warning_into_ours(monkeypatch):
    import cvxpy as cp

    def fake_solve(self, *args, **kwargs):
        warnings.warn("Solution may be inaccurate. Try another solver, ...", UserWarning)
        self._status = cp.OPTIMAL_INACCURATE

    monkeypatch.setattr(cp.Problem, "solve", fake_solve)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convex._solve(cp.Problem(cp.Minimize(0)), "CLARABEL", {}, "test")
    assert [w.category for w in caught] == [convex.InaccurateSolutionWarning]
