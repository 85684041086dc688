"""The Band as a convex program over the whole simplex, the joint projection, and the validator.

The Band of token ``a`` is the optimum of a convex program over the full old
distribution (THEORY.md section 2):

.. math::

    \\text{upper} = \\max_{\\pi \\in \\Delta_K} \\frac{\\pi_a}{\\pi^{old}_a},\\quad
    \\text{lower} = \\min_{\\pi \\in \\Delta_K} \\frac{\\pi_a}{\\pi^{old}_a}
    \\quad\\text{s.t.}\\quad D_f(\\pi \\,\\|\\, \\pi^{old})
        = \\sum_x \\pi^{old}_x f\\!\\left(\\frac{\\pi_x}{\\pi^{old}_x}\\right) \\le \\delta .

This module solves it without the one-dimensional reduction, so that the reduction,
the closed forms and the numeric root finder (:func:`bandtheory.band_bounds`) can all
be checked against it.

Formulation (why it is DPP, and why masses). The variable is the new distribution
``pi`` itself; the divergence is the sum of the perspectives
``pi_old_x f(pi_x / pi_old_x)``, each bounded by an epigraph variable ``t_x`` through
one cone per token (exponential cones for the KL family, rotated second-order cones
for the chi-square family, 3-D power cones for ``alpha(a)`` outside a = 2, 1/2, -1,
linear rows for TV) in which the parameter ``pi_old`` enters affinely. With
``pi_old``, ``delta`` and the objective ``c`` as ``cvxpy.Parameter``s the program is
DPP, so :class:`BandProblem` compiles once and re-solves sweeps over ``delta``,
``pi_old`` and the token index without recompiling. Masses (not ratios
``pi / pi_old``, which reach ``1/p``) keep the cones of frequent tokens of order one;
rare tokens that make the solver stall are retried with every cone rescaled (the
perspective is 1-homogeneous, so the ball is unchanged). The exact form of each
built-in is kept with its registry entry (:attr:`bandtheory.divergences.Divergence.dcp`).

Accuracy. The solver runs with tolerances 1e-6 (:data:`DEFAULT_SOLVER_OPTIONS`; for a
lower bound the gap tolerances are read in units of the ratio, not of the token's tiny
mass): it only has to land near the optimum. Each optimum is then *polished*: moved along the line from ``pi_old``
through it until the exact float64 divergence equals ``delta``. For smooth generators
it is then *refined* by Newton's method on the optimality (KKT) conditions of the full
``K``-token program and polished again; the refined point is kept only when its
objective is better (both points are exactly feasible). Every built-in agrees with the
exact root to ``4e-8 max(1, |value|)`` over p in [1e-6, 0.999] and delta in [0.01, 1],
most to ``1e-13`` (``benchmarks/README.md``; the worst is the upper bound at p = 0.999
of kl / jeffreys, where the optimum's other masses are ~1e-90 and the refinement does
not apply); the lower bounds of ``neyman_chi2`` / ``alpha(-1)`` at small
``p`` (ratios ``~ p/delta``, whose cones have entries ``1/r^2`` apart) owe their last
digits to the refinement.

Certificate. Every polished optimum is checked by Lagrangian duality: multipliers read
off the point give a bound on the optimum from the other side (:func:`_dual_bound`),
and the pair is returned as a certified bracket (``ConvexBand.lower_bracket`` /
``upper_bracket``). A gap above :data:`CERTIFY_RTOL` (1e-7 relative) means the solver's
"optimal" point was not optimal: the side goes to the next attempt, and if none
certifies the best point comes with an :class:`InaccurateSolutionWarning` naming the gap.
For the built-ins the gap is ~1e-15 relative (the last digits of the point, not of the
bound); an interior-point solve that ends "optimal" too early (``alpha(-4)``, K = 1000,
p = 1e-6: a lower bound 2.4 % high, gap 4.9 %) is caught. Power cones of ``alpha(a)``
with ``a <= -5`` still make Clarabel fail on some rare tokens at K = 1000 (measured in
``benchmarks/README.md``): those sides raise :class:`ConvexSolveError` or warn.

Divergences without a DCP form (user divergences) go through a cutting-plane scheme
(Kelley's method in its supporting-hyperplane form): ``t_x >= f(w_x)`` is relaxed to
tangent lines, the linear program is solved with HiGHS (an outer bound), the relaxed
solution is pulled back along the segment to ``pi_old`` until the exact ``f`` says it
is feasible (an inner bound, attained by a real distribution), and tangents at that
boundary point are added. The result is a certified interval around the optimum, iterated until its
width is ``rtol`` (default 1e-7) *relative to the value*, a small lower bound included.

Every entry is checked once (``f(1) = 0`` and convexity, the validator's checks, cached
per entry) before any solver runs: an entry built directly bypasses the parser.

References:
    BandPO (arXiv 2603.04918), the Band operator as a convex program (section 3);
    J. E. Kelley, "The cutting-plane method for solving convex programs" (1960);
    A. F. Veinott, "The supporting hyperplane method for unimodal programming" (1967);
    A. Agrawal et al., "Differentiable convex optimization layers" (NeurIPS 2019) for
    disciplined parametrized programming (DPP).
"""

from __future__ import annotations

import functools
import math
import threading
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import divergences as _div
from .bounds import _check_delta, band_bounds

__all__ = [
    "DEFAULT_CONE_SOLVER",
    "DEFAULT_LP_SOLVER",
    "DEFAULT_SOLVER_OPTIONS",
    "SATURATED",
    "ConvexSolveError",
    "InaccurateSolutionWarning",
    "ConvexBand",
    "BandProblem",
    "convex_band",
    "f_divergence",
    "Projection",
    "project",
    "ValidationReport",
    "validate",
    "validation_figure",
]

#: Solver for the conic programs (exponential, power and second-order cones).
DEFAULT_CONE_SOLVER = "CLARABEL"
#: Solver for the linear programs of the cutting-plane path.
DEFAULT_LP_SOLVER = "HIGHS"
#: Clarabel settings of the projector (laid under the caller's ``solver_options``).
#: Tolerances 1e-6 (Clarabel's default is 1e-8): the interior-point solve only has to
#: land near the optimum, since the exact float64 polish and the Newton refinement of
#: the KKT conditions carry the last digits (see :class:`BandProblem`). At K = 1000 this
#: takes 10-30 % fewer Clarabel iterations than 1e-9 (25-50 % for reverse_kl, js,
#: jeffreys) with the same agreement with ``band_bounds`` (benchmarks/README.md). For a
#: lower bound the two gap tolerances are scaled by the token's mass per unit of ratio
#: (:func:`_gap_in_ratio_units`), so that they bound the ratio, not the mass
#: ``p * lower``. Iterative refinement is off in the first attempts: it halves the time
#: per iteration and changes no digit that polishing keeps. ``pi <= 1`` is also stated
#: (implied by the simplex) to bound the iterates.
DEFAULT_SOLVER_OPTIONS: Mapping[str, Any] = types.MappingProxyType({
    "tol_gap_abs": 1e-6,
    "tol_gap_rel": 1e-6,
    "tol_feas": 1e-6,
    "max_iter": 400,
    "iterative_refinement_enable": False,
})
# Tolerances laid over DEFAULT_SOLVER_OPTIONS when no polish and refinement follow the
# solve (``polish=False``, extra constraints): the solver's point is then the answer
# (1e-10 ends more often in "almost solved").
_UNPOLISHED_TOLERANCES: Mapping[str, Any] = types.MappingProxyType({
    "tol_gap_abs": 1e-9,
    "tol_gap_rel": 1e-9,
    "tol_feas": 1e-9,
})
# Attempts in turn until one ends optimal: (options over the defaults, rescaled cones).
# Exponential cones with rare tokens (p ~ 1e-6, e.g. K = 1000) make Clarabel stall at
# random; shorter steps keep iterates off the cone's edge, rescaling puts every cone
# entry at order one, and iterative refinement steadies the last digits. A stall in
# masses at step 0.9 is mostly not repeated at Clarabel's own step 0.99 or at 0.95
# (other paths, and fewer iterations than a rescaled solve), so those come second and
# third: at K = 1000 (3 Dirichlet draws x 4 tokens x 4 deltas, tolerances 1e-6) step
# 0.99 solved 13 of kl's 14 first-attempt stalls (rescaled: 9) and cut the worst side's
# total Clarabel iterations from 113 to 66 (kl), 56 to 45 (js), 489 to 324
# (alpha(-2)); step 0.95 then solved the 2 alpha(-2) sides that stalled in every other
# attempt (one of them failed `bandtheory validate "alpha(-2)"`); no side got worse.
_ATTEMPTS: tuple[tuple[Mapping[str, Any], bool], ...] = (
    ({"max_step_fraction": 0.9}, False),
    ({"max_step_fraction": 0.99}, False),
    ({"max_step_fraction": 0.95}, False),
    ({"max_step_fraction": 0.9}, True),
    ({"iterative_refinement_enable": True, "max_step_fraction": 0.8}, False),
    ({"iterative_refinement_enable": True, "max_step_fraction": 0.8}, True),
    # Power cones (alpha(a), a <= -2, K = 1000, lower bounds at small delta) can stall in
    # all of the above; without equilibration, or with long steps and no presolve,
    # Clarabel takes another path (at a = -2 and -3 these rescued every such solve).
    ({"equilibrate_enable": False}, False),
    ({"equilibrate_enable": False}, True),
    ({"max_step_fraction": 0.99, "presolve_enable": False}, False),
    ({"max_step_fraction": 0.99, "presolve_enable": False}, True),
)

_METHODS = ("auto", "dcp", "cutting_plane")
# Tangent points shared by every coordinate at the start of the cutting-plane path;
# u = 1 alone already bounds t below (f(1) = 0), the others speed up the first rounds.
_INITIAL_CUTS = (0.25, 0.5, 1.0, 2.0, 4.0)
# Tangent points are kept in [_CUT_MIN, inf): a tangent anywhere is a valid cut, and
# tangents of f with f(0) = inf (KL) at tinier points only add huge LP coefficients.
_CUT_MIN = 1e-9
_MAX_SLOPE = 1e9
# Absolute floor of the cutting-plane gap, in masses (scaled to the objective's units by
# the largest |c|): a few ulps of the unit simplex, the resolution of sum(pi) = 1 in
# float64. Only bounds that are 0 in float64 (a KL-type lower bound such as
# exp(-delta/p) ~ 1e-44, whose pulled-back point has a ratio ~1e-16) stop on it;
# exact zeros (saturated sides) are certified without an LP.
_GAP_FLOOR = 4 * np.finfo(float).eps

#: Status of a bound certified without a solve: the point ``pi_a = 1`` (upper) or
#: ``pi_a = 0`` (lower, the rest in proportion to ``pi_old``) lies in the ball.
SATURATED = "saturated"
# A range end counts as in the ball when its float64 divergence is within a few ulps of
# delta: the rounding of the sum, not the maths, decides a bound exactly at its
# saturation threshold.
_SATURATION_RTOL = 4 * np.finfo(float).eps


class ConvexSolveError(RuntimeError):
    """A convex solve ended without a solution (infeasible, unbounded or solver error).

    Attributes:
        status: The cvxpy status string (``"infeasible"``, ``"unbounded"``, ...) or
            ``"solver_error"`` when the solver itself failed.
        solver: The solver's name.
    """

    def __init__(self, status: str, solver: str, context: str) -> None:
        self.status = status
        self.solver = solver
        super().__init__(f"{context}: solver {solver} returned status {status!r}")


class InaccurateSolutionWarning(UserWarning):
    """The solver reported ``optimal_inaccurate``; the values are returned anyway."""


# --------------------------------------------------------------------------------------
# Input checks (public boundary only) and exact evaluation
# --------------------------------------------------------------------------------------


def _check_distribution(pi: Any, *, name: str, positive: bool) -> np.ndarray:
    """A 1-D float64 probability vector (renormalised to sum exactly 1)."""
    if isinstance(pi, (str, bytes)) or pi is None:
        raise TypeError(f"{name} must be a 1-D array of probabilities, got {type(pi).__name__}")
    try:
        arr = np.asarray(pi, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 1-D array of probabilities: {exc}") from exc
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"{name} must be a 1-D array with at least 2 entries, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite entries (first at index "
                         f"{int(np.flatnonzero(~np.isfinite(arr))[0])}); probabilities must be finite")
    bad = arr <= 0 if positive else arr < 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        need = "> 0 (the divergence divides by it)" if positive else ">= 0"
        raise ValueError(f"{name} must have every entry {need}; entry {i} is {arr[i]!r}")
    total = float(arr.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1 (within 1e-6), got {total!r}")
    return arr / total


def _check_index(index: Any, k: int) -> tuple[np.ndarray, tuple[int, ...]]:
    if isinstance(index, bool):
        raise TypeError("index must be an integer or a sequence of integers, not bool")
    arr = np.asarray(index)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"index must be an integer or a non-empty sequence of integers, got {index!r}")
    flat = arr.reshape(-1).astype(np.int64)
    bad = (flat < 0) | (flat >= k)
    if bad.any():
        raise ValueError(f"index {int(flat[bad][0])} is out of range; valid indices are 0..{k - 1}")
    return flat, arr.shape


def _check_method(method: str) -> str:
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(_METHODS)}")
    return method


@functools.lru_cache(maxsize=256)
def _cached_generator_checks(div: _div.Divergence) -> tuple[tuple[str, bool, str], ...]:
    """The validator's generator checks (:func:`_generator_checks`), once per entry.

    Entries hash by identity (``Divergence`` has ``eq=False``) and registry entries are
    cached objects, so every later solve with the same entry costs a dictionary lookup.
    """
    with np.errstate(all="ignore"):  # f near overflow (alpha(100) at u = 1e8) is skipped
        return tuple(_generator_checks(div))


def _checked_divergence(divergence: str | _div.Divergence) -> _div.Divergence:
    """The registry entry, refused unless ``f(1) = 0`` and ``f`` is convex.

    An entry built directly (``Divergence(name, f, ...)``) bypasses the parser's checks;
    a non-convex ``f`` makes the "ball" non-convex, where a solver returns a local
    answer for one side and a false infeasibility for the other. This runs before any
    solver.
    """
    div = _div.get(divergence)
    failed = [f"{name} fails ({detail})" for name, ok, detail in _cached_generator_checks(div)
              if not ok]
    if failed:
        raise ValueError(
            f"divergence {div.name!r} is refused before any solve: {'; '.join(failed)}; "
            "a generator must satisfy f(1) = 0 and be convex on (0, inf)"
        )
    return div


def _f_values(div: _div.Divergence, u: np.ndarray) -> np.ndarray:
    """``f(u)`` elementwise with ``f(0)`` taken as the limit ``f(0+)``."""
    u = np.asarray(u, dtype=np.float64)
    pos = u > 0
    with np.errstate(all="ignore"):
        values = np.asarray(div(np.where(pos, u, 1.0)), dtype=np.float64)
    return np.where(pos, np.broadcast_to(values, u.shape), div.f_at_0)


def _f1_values(div: _div.Divergence, u: np.ndarray) -> np.ndarray:
    """``f'(u)`` elementwise for ``u > 0`` (a subgradient where ``f`` has a kink)."""
    from array_api_compat import array_namespace

    u = np.asarray(u, dtype=np.float64)
    with np.errstate(all="ignore"):
        values = div.f1_num(array_namespace(u), u)
    return np.broadcast_to(np.asarray(values, dtype=np.float64), u.shape)


def f_divergence(pi: Any, pi_old: Any, divergence: str | _div.Divergence = "kl") -> float:
    """The exact f-divergence ``D_f(pi || pi_old) = sum_x pi_old(x) f(pi(x) / pi_old(x))``.

    Args:
        pi: The new distribution, shape ``(K,)``, entries ``>= 0`` (``f(0)`` is the
            limit ``f(0+)``).
        pi_old: The old distribution, shape ``(K,)``, entries ``> 0``.
        divergence: A registry name or entry.

    Returns:
        The divergence as a float (``inf`` when ``pi`` puts zero mass where ``f(0+)``
        is infinite).
    """
    div = _div.get(divergence)
    pi = np.asarray(pi, dtype=np.float64)
    pi_old = np.asarray(pi_old, dtype=np.float64)
    return _divergence_of_ratio(div, pi_old, np.maximum(pi, 0.0) / pi_old)


def _divergence_of_ratio(div: _div.Divergence, pi_old: np.ndarray, w: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        return float(pi_old @ _f_values(div, w))


# --------------------------------------------------------------------------------------
# Solving with status handling
# --------------------------------------------------------------------------------------


def _solve(problem: Any, solver: str, options: Mapping[str, Any], context: str) -> str:
    """Solve a cvxpy problem; return on optimal, warn on inaccurate, raise otherwise."""
    import cvxpy as cp

    try:
        with warnings.catch_warnings():
            # cvxpy's own "Solution may be inaccurate" warning: the status is reported
            # below as an InaccurateSolutionWarning that names the context and solver.
            warnings.filterwarnings("ignore", message="Solution may be inaccurate",
                                    category=UserWarning)
            problem.solve(solver=solver, **dict(options))
    except cp.error.SolverError as exc:
        raise ConvexSolveError("solver_error", solver, f"{context} ({exc})") from exc
    status = problem.status
    if status == cp.OPTIMAL:
        return status
    if status == cp.OPTIMAL_INACCURATE:
        warnings.warn(
            f"{context}: solver {solver} returned status 'optimal_inaccurate'; values may be "
            "less accurate than the solver's tolerances",
            InaccurateSolutionWarning,
            stacklevel=3,
        )
        return status
    raise ConvexSolveError(str(status), solver, context)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvexBand:
    """The Band of some tokens of one old distribution, solved as a convex program.

    Arrays have the shape of the ``index`` argument (0-d for an integer index).

    Attributes:
        index: Token indices.
        p: Their old probabilities ``pi_old[index]``.
        lower, upper: The optimal ratios (for the cutting-plane path: the inner,
            attained end of the certified interval).
        lower_bracket, upper_bracket: ``(..., 2)`` certified intervals ``[a, b]`` that
            contain the true optimum. Cutting plane: the outer (relaxed) bound and the
            attained inner value. DCP: the attained (polished) value and the
            Lagrangian dual bound at the multipliers of that point
            (:func:`_dual_bound`); ``[v, v]`` for a saturated side; ``nan`` where no
            dual bound was computed (``polish=False``, extra constraints, or a point
            where the multipliers are not defined).
        status_lower, status_upper: Solver status of every solve (flattened order);
            :data:`SATURATED` when a feasible point at the end of the range
            (``pi_a = 1`` or ``pi_a = 0``) certified the bound without a solve.
        divergence_lower, divergence_upper: ``D_f(pi || pi_old)`` evaluated exactly at
            the optimising distribution (``<= delta`` up to solver tolerance).
        iterations: ``(..., 2)`` cutting-plane rounds for (lower, upper); ``None`` for DCP.
        converged: Whether every cutting-plane bracket reached ``rtol`` (always
            ``True`` for DCP).
        polished: Whether the DCP optima were moved onto the exact ball boundary
            and refined (:class:`BandProblem`).
        divergence: The divergence name.
        delta: The trust-region radius.
        method: ``"dcp"`` or ``"cutting_plane"``.
        solver: The solver used.
    """

    index: np.ndarray
    p: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    status_lower: tuple[str, ...]
    status_upper: tuple[str, ...]
    divergence_lower: np.ndarray
    divergence_upper: np.ndarray
    divergence: str
    delta: float
    method: str
    solver: str
    lower_bracket: np.ndarray | None = None
    upper_bracket: np.ndarray | None = None
    iterations: np.ndarray | None = None
    converged: bool = True
    polished: bool = False


# --------------------------------------------------------------------------------------
# The DPP program (exact DCP forms)
# --------------------------------------------------------------------------------------


class BandProblem:
    """The Band program for ``K`` tokens and one divergence, compiled once (DPP).

    .. math::

        \\min_{y \\ge 0}\\ c^\\top y \\quad\\text{s.t.}\\quad
        \\textstyle\\sum_x \\sigma_x y_x = 1,\\quad
        \\sum_x \\sigma_x\\, t_x \\le \\delta,\\quad
        t_x \\ge \\frac{\\pi^{old}_x}{\\sigma_x}\\,
            f\\!\\left(\\frac{y_x \\sigma_x}{\\pi^{old}_x}\\right)

    with ``pi = sigma * y``. The scales ``sigma > 0`` change nothing mathematically
    (the perspective is 1-homogeneous: ``sigma persp(pi/sigma, q/sigma) =
    persp(pi, q)``); they only set the units of every cone. The first attempt uses
    masses (``sigma = 1``); a retry (:data:`_ATTEMPTS`) rescales every cone so its
    entries are of order one at ``pi_old`` (the token's ratio for the bound's own token, the ratio times
    ``1 - p`` for the others), which rescues rare tokens that stall the solver in
    masses. ``c`` picks ``+y_a`` (lower bound) or ``-y_a`` (upper bound).
    ``pi_old / sigma``, ``sigma``, ``delta`` and ``c`` are parameters, so every
    :meth:`solve` after the first reuses the compiled program.

    Accuracy. A lower bound's solve reads the gap tolerances in units of the ratio
    (:func:`_gap_in_ratio_units`): in masses the solver may stop while the rest of the
    distribution is far from its optimal shape. Every optimum is then *polished*: the
    solver's distribution is moved along the line from ``pi_old`` through it until the
    exact divergence (float64, the registry's ``f``) equals ``delta`` (or a mass
    reaches 0). This makes the returned point exactly feasible, removes the
    first-order error that the solver's feasibility tolerance leaves in the ratio, and
    leaves an error of second order in the solver's direction error (the objective is
    stationary along the ball's boundary at the optimum). Where ``f''`` has pointwise
    values (every built-in but TV) the polished point is then *refined*: Newton's
    method on the KKT conditions of the full program (:func:`_kkt_newton`), polished
    again, kept only if its objective is better. A rare token's ratio is resolved by
    the solver only to its tolerances in the cone's units; the refinement reaches
    rounding level. Neither step uses the one-dimensional reduction: polishing follows
    the solver's direction, and Newton moves every coordinate freely.

    Args:
        k: Number of tokens ``K >= 2``.
        divergence: A registry name or entry with an exact DCP form (every built-in
            and every ``alpha(a)``).
        solver: A cvxpy solver name (default :data:`DEFAULT_CONE_SOLVER`).
        solver_options: Keyword options passed to the solver; for Clarabel they are
            laid over :data:`DEFAULT_SOLVER_OPTIONS`.
        constraints: Optional ``callable(pi) -> list of cvxpy constraints`` on the
            new distribution ``pi`` (a cvxpy expression of shape ``(K,)``); they must
            keep the program DPP. Polishing is skipped with extra constraints (the
            segment to ``pi_old`` may leave them).

    Raises:
        ValueError: For ``K < 2``, a divergence that is not convex with ``f(1) = 0``
            or has no DCP form, or extra constraints that break DCP/DPP.
    """

    def __init__(
        self,
        k: int,
        divergence: str | _div.Divergence = "kl",
        *,
        solver: str | None = None,
        solver_options: Mapping[str, Any] | None = None,
        constraints: Callable[[Any], Sequence[Any]] | None = None,
    ) -> None:
        import cvxpy as cp

        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(f"k must be an integer >= 2, got {k!r}")
        div = _checked_divergence(divergence)
        if div.dcp is None:
            raise ValueError(
                f"divergence {div.name!r} has no exact DCP form; use "
                "convex_band(..., method='cutting_plane')"
            )
        self.k = int(k)
        self.divergence = div
        self.solver = DEFAULT_CONE_SOLVER if solver is None else str(solver)
        self.solver_options = dict(solver_options or {})
        self._extra_constraints = constraints is not None
        self._polishing = True  # set by each solve(); selects the solver's tolerances
        self._f2 = _second_derivative(div)
        self._y = cp.Variable(self.k, nonneg=True, name="y")
        self._sigma = cp.Parameter(self.k, pos=True, name="sigma")
        self._pi_old_scaled = cp.Parameter(self.k, pos=True, name="pi_old_over_sigma")
        self._delta = cp.Parameter(nonneg=True, name="delta")
        self._c = cp.Parameter(self.k, name="c")
        t, cones = div.dcp(self._y, self._pi_old_scaled)
        pi = cp.multiply(self._sigma, self._y)
        # ``pi <= 1`` is implied by the simplex; stated, it bounds the interior-point
        # iterates, which keeps Clarabel from wild first steps on rare tokens.
        cons = [cp.sum(pi) == 1, pi <= 1, self._sigma @ t <= self._delta, *cones]
        if constraints is not None:
            cons += list(constraints(pi))
        self.problem = cp.Problem(cp.Minimize(self._c @ self._y), cons)
        if not self.problem.is_dcp():
            raise ValueError("the Band program is not DCP; check the extra constraints")
        if not self.problem.is_dpp():
            raise ValueError("the Band program is not DPP; extra constraints must be DPP "
                             "(and a registry builder's epigraph must hold no parameter)")

    def _attempts(self) -> list[tuple[dict[str, Any], bool]]:
        """``(solver options, rescaled)`` to try in turn until one ends optimal.

        Without polishing (``polish=False`` or extra constraints) the solver's point is
        the answer, so its tolerances are tightened to :data:`_UNPOLISHED_TOLERANCES`.
        """
        if self.solver != DEFAULT_CONE_SOLVER:
            return [(dict(self.solver_options), False)]
        tight = {} if self._polishing else _UNPOLISHED_TOLERANCES
        return [({**DEFAULT_SOLVER_OPTIONS, **tight, **extra, **self.solver_options}, rescaled)
                for extra, rescaled in _ATTEMPTS]

    def _side(self, pi_old: np.ndarray, i: int, sign: float, context: str,
              polish: bool) -> tuple[np.ndarray, str, float]:
        """One bound (``sign = +1`` lower, ``-1`` upper): the optimal ``pi``, its status
        and the certified far end of the interval around the optimal ratio (the dual
        bound of :func:`_dual_bound`; ``nan`` where none was computed).

        Attempts (:meth:`_attempts`) run in turn until one ends optimal and, when the
        optimum is polished, its duality gap is within :data:`CERTIFY_RTOL`: an
        interior-point solve can end "optimal" at a point whose ratio is off by more
        than its tolerances suggest (``alpha(-4)``, ``K = 1000``, ``p = 1e-6``,
        ``delta = 1``: a lower bound 2.4 % too high that polishing and refinement kept),
        and the dual bound shows it. If no attempt certifies, the best certified point
        is returned with an :class:`InaccurateSolutionWarning` that names the gap.
        """
        import cvxpy as cp

        p = pi_old[i]
        if not self._extra_constraints:
            # A side that reaches the end of its range is certified by a feasible point
            # attaining it (pi_a = 1 for the upper bound, pi_a = 0 for the lower); the
            # conic solver would have to reach the cones' boundary there, where it stalls.
            # "Feasible" allows the float64 rounding of the divergence's sum
            # (_SATURATION_RTOL): exactly at the threshold (chi2's lower bound at p = 0.5,
            # delta = 1 evaluates to 1 + 1 ulp) the solver would otherwise return ~1e-11
            # at tolerances 1e-6 for a bound that is 0.
            edge = _edge_point(pi_old, i, sign)
            if (_divergence_of_ratio(self.divergence, pi_old, edge / pi_old)
                    <= self._delta.value * (1.0 + _SATURATION_RTOL)):
                return edge, SATURATED, edge[i] / p
        delta = float(self._delta.value)
        c = np.zeros(self.k)
        c[i] = sign
        self._c.value = c
        # (rank, pi, status, certified end) of the best optimum seen; rank orders
        # optimal before optimal_inaccurate, then the smaller duality gap (a gap that
        # was not computed, nan, ranks as 0).
        best: tuple[tuple[int, float], np.ndarray, str, float] | None = None
        status = ""
        for options, rescaled in self._attempts():
            if rescaled:
                # Cones in units where every entry is of order one at pi_old.
                sigma = pi_old / (1.0 - p)
                sigma[i] = p
            else:
                sigma = np.ones(self.k)
            self._sigma.value = sigma
            self._pi_old_scaled.value = pi_old / sigma
            if sign > 0 and self.solver == DEFAULT_CONE_SOLVER:
                options = _gap_in_ratio_units(options, p / sigma[i])
            try:
                with warnings.catch_warnings():
                    # cvxpy's own "may be inaccurate" warning; the status is handled here.
                    warnings.filterwarnings("ignore", message="Solution may be inaccurate",
                                            category=UserWarning)
                    # No warm_start: a reused Clarabel solver (cvxpy's warm_start, new
                    # data into the old setup) saves its ~6 ms setup at K = 1000 but
                    # does not behave like a fresh one: the rescaled retry then stalls
                    # where a fresh solver solves (alpha(-2), K = 1000; the setup's
                    # equilibration is presumably kept from the first data).
                    self.problem.solve(solver=self.solver, **options)
                status = str(self.problem.status)
            except cp.error.SolverError:
                status = "solver_error"
            if status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and self._y.value is not None:
                pi = np.maximum(sigma * np.asarray(self._y.value, dtype=np.float64), 0.0)
                end, gap = math.nan, math.nan
                if polish:
                    pi = _polish(self.divergence, pi_old, pi, delta)
                    pi = self._refine(pi_old, pi, delta, i, sign)
                    end = _dual_bound(self.divergence, pi_old, pi, i, sign, delta)
                    gap = sign * (pi[i] / p - end)  # in ratio units, >= 0 up to rounding
                certified = not gap > _certified_gap(pi[i] / p, p)  # nan: not computed
                rank = (0 if status == cp.OPTIMAL else 1, gap if gap >= 0 else 0.0)
                if best is None or not rank >= best[0]:
                    best = (rank, pi, status, end)
                if status == cp.OPTIMAL and certified:
                    return pi, status, end
            elif status in (cp.INFEASIBLE, cp.UNBOUNDED, cp.INFEASIBLE_INACCURATE,
                            cp.UNBOUNDED_INACCURATE):
                break  # a certificate, not a numerical failure: retrying cannot help
        if best is None:
            raise ConvexSolveError(status, self.solver, context)
        (_, gap), pi, status, end = best
        value = pi[i] / p
        if status != cp.OPTIMAL:
            warnings.warn(
                f"{context}: solver {self.solver} returned status 'optimal_inaccurate'; "
                "values may be less accurate than the solver's tolerances",
                InaccurateSolutionWarning,
                stacklevel=4,
            )
        else:
            warnings.warn(
                f"{context}: no solve certified the bound: its duality gap is "
                f"{gap / abs(value) if value else math.inf:.2g} relative (tolerance "
                f"{CERTIFY_RTOL:g}); the true optimum lies in the returned bracket",
                InaccurateSolutionWarning,
                stacklevel=4,
            )
        return pi, status, end

    def _refine(self, pi_old: np.ndarray, pi: np.ndarray, delta: float, i: int,
                sign: float) -> np.ndarray:
        """The polished optimum ``pi``, or the refined one (:func:`_kkt_newton`, polished
        again) when that is better: both are exactly feasible, so the better objective is
        the closer one to the optimum."""
        if self._f2 is None:
            return pi
        refined = _kkt_newton(self.divergence, self._f2, pi_old, pi, delta, i, sign)
        if refined is None:
            return pi
        refined = _polish(self.divergence, pi_old, refined, delta)
        return refined if sign * (refined[i] - pi[i]) < 0 else pi

    def solve(self, pi_old: Any, index: Any, *, delta: float, polish: bool = True) -> ConvexBand:
        """Lower and upper bounds of ``pi_old[index]`` (re-solving the compiled program).

        Args:
            pi_old: Old distribution, shape ``(K,)``, entries ``> 0``, sum 1.
            index: A token index or an array of indices.
            delta: Trust-region radius ``> 0``.
            polish: Move each optimum along the line from ``pi_old`` onto the exact
                ball boundary and refine it (see the class docstring); ignored with
                extra constraints. Without it (or with extra constraints) the solver's
                point is returned, solved at tolerances 1e-9
                (:data:`_UNPOLISHED_TOLERANCES`) instead of the defaults.

        Returns:
            :class:`ConvexBand` (``method="dcp"``).

        Raises:
            ConvexSolveError: If a solve is infeasible, unbounded or fails.
        """
        pi_old = _check_distribution(pi_old, name="pi_old", positive=True)
        if pi_old.size != self.k:
            raise ValueError(f"pi_old has {pi_old.size} entries; this problem was built for K={self.k}")
        delta = _check_delta(delta)
        flat, shape = _check_index(index, self.k)
        polish = bool(polish) and not self._extra_constraints
        self._polishing = polish
        self._delta.value = delta
        n = flat.size
        out = {key: np.empty(n) for key in ("lower", "upper", "d_lower", "d_upper")}
        statuses: dict[str, list[str]] = {"lower": [], "upper": []}
        brackets = {"lower": np.empty((n, 2)), "upper": np.empty((n, 2))}
        for j, i in enumerate(flat):
            for side, sign in (("lower", 1.0), ("upper", -1.0)):
                context = (f"convex Band ({self.divergence.name}, {side} bound of token {i}, "
                           f"delta={delta:g}, K={self.k})")
                pi, status, end = self._side(pi_old, int(i), sign, context, polish)
                value = pi[i] / pi_old[i]
                out[side][j] = value
                out["d_" + side][j] = _divergence_of_ratio(self.divergence, pi_old, pi / pi_old)
                # A rounding-level negative gap would invert the pair: sorted, it still
                # holds the optimum.
                brackets[side][j] = sorted((end, value)) if end == end else (end, end)
                statuses[side].append(status)
        return ConvexBand(
            index=flat.reshape(shape),
            p=pi_old[flat].reshape(shape),
            lower=out["lower"].reshape(shape),
            upper=out["upper"].reshape(shape),
            status_lower=tuple(statuses["lower"]),
            status_upper=tuple(statuses["upper"]),
            divergence_lower=out["d_lower"].reshape(shape),
            divergence_upper=out["d_upper"].reshape(shape),
            divergence=self.divergence.name,
            delta=delta,
            method="dcp",
            solver=self.solver,
            lower_bracket=brackets["lower"].reshape(shape + (2,)),
            upper_bracket=brackets["upper"].reshape(shape + (2,)),
            polished=polish,
        )


# Gap tolerances are scaled by the token's mass per unit of ratio, but not below this
# factor (with the former default tolerances 1e-9, a floor of 1e-4 turned one more
# validate solve, neyman_chi2 at p = 1e-4, delta = 1, into "almost solved": the
# ill-conditioned cone of a rare token's lower bound). With the defaults 1e-6 the
# ratio's gap tolerance is 1e-9 / p below p = 1e-3 (1e-5 at p = 1e-4), and the polish
# and Newton refinement (_kkt_newton) carry the last digits.
_GAP_SCALE_MIN = 1e-3


def _gap_in_ratio_units(options: Mapping[str, Any], mass_per_unit: float) -> dict[str, Any]:
    """Clarabel's gap tolerances for a lower bound's objective ``y_a = ratio *
    mass_per_unit``, read in units of the ratio (down to :data:`_GAP_SCALE_MIN`).

    Clarabel stops on ``gap < tol_gap_abs`` or ``gap / max(1, |objective|) < tol_gap_rel``:
    both are absolute for an objective below 1. The lower bound's objective is the mass
    ``p * lower`` (``mass_per_unit = p`` in masses), so tolerances ``tol`` stated in
    masses let the solver stop up to ``tol / p`` away from the optimal ratio, with the rest of
    the distribution far from its optimal shape, a suboptimality that polishing cannot
    remove (``alpha(-1)``, p = 1e-4, delta = 1: the solver stopped at a ratio 60 % above
    the optimum, polishing left ~2e-6). The upper bound keeps masses: its objective
    ``p * upper`` is the whole mass the token may reach, not a small number.
    """
    scale = max(float(mass_per_unit), _GAP_SCALE_MIN)
    options = dict(options)
    for key in ("tol_gap_abs", "tol_gap_rel"):
        if key in options:
            options[key] = float(options[key]) * scale
    return options


def _edge_point(pi_old: np.ndarray, i: int, sign: float) -> np.ndarray:
    """The distribution at the end of token ``i``'s range: ``e_i`` for the upper bound
    (``sign < 0``), ``pi_old`` with token ``i`` removed and renormalised for the lower."""
    if sign < 0:
        edge = np.zeros(pi_old.size)
        edge[i] = 1.0
        return edge
    edge = pi_old / (1.0 - pi_old[i])
    edge[i] = 0.0
    return edge


def _polish(div: _div.Divergence, pi_old: np.ndarray, pi: np.ndarray, delta: float) -> np.ndarray:
    """The point of the line ``pi + m (pi_old - pi)``, ``m <= 1``, on the ball's edge.

    This is the ray from ``pi_old`` through ``pi`` (``m = 1`` is ``pi_old``, ``m < 0``
    lies past ``pi``). ``D(m) = D_f(pi(m) || pi_old)`` is convex with ``D(1) = 0``, so it
    crosses ``delta`` once; the root is found with Brent's method to float64 precision.
    If no crossing happens before a mass reaches 0 (a saturated bound), that
    simplex-edge point is returned. The result is exactly feasible (up to rounding of
    ``D``). Measuring from ``pi`` (not from ``pi_old``) keeps the relative precision of
    a tiny mass of ``pi`` when ``pi`` is already near the edge (a refined optimum, a
    ratio ``~ 1e-6``): its root ``m`` is then itself tiny.
    """
    from scipy.optimize import brentq

    pi = pi / pi.sum()
    toward = pi_old - pi
    # Moving away from pi_old (m < 0) drains the masses that pi_old has more of.
    draining = toward > 0
    if not draining.any():
        return pi
    m_min = -float(np.min(pi[draining] / toward[draining]))

    def point(m: float) -> np.ndarray:
        return np.maximum(pi + m * toward, 0.0)

    def excess(m: float) -> float:
        return _divergence_of_ratio(div, pi_old, point(m) / pi_old) - delta

    start = excess(0.0)
    if start == 0:
        return pi
    if start > 0:
        lo, hi = 0.0, 1.0
    else:
        # Double the distance from pi_old (1 - m) until the edge or a mass at 0.
        lo = max(-1.0, m_min)
        for _ in range(60):
            if excess(lo) >= 0 or lo <= m_min:
                break
            lo = max(2.0 * lo - 1.0, m_min)
        if excess(lo) <= 0:
            return point(lo)
        hi = 0.0
    # Steps of m below this change no mass of pi by more than a few ulps (near m = 0
    # rounding, not the root, decides the sign of the excess).
    moving = (toward != 0) & (pi > 0)
    xtol = 4 * np.finfo(float).eps * float(np.min(pi[moving] / np.abs(toward[moving]), initial=1.0))
    # A mass at 0 gives D = inf when f(0+) = inf; Brent's interpolation needs finite values.
    m = brentq(lambda x: min(excess(x), 1e12), lo, hi, xtol=max(xtol, 1e-300),
               rtol=4 * np.finfo(float).eps, maxiter=200)
    return point(m)


#: Relative duality gap within which a polished DCP optimum counts as certified
#: (:func:`_dual_bound`); a larger gap sends the side to the solver's next attempt. Ten
#: times inside the validator's :data:`CONVEX_RTOL`.
CERTIFY_RTOL = 1e-7


def _certified_gap(value: float, p: float) -> float:
    """The largest duality gap, in ratio units, that certifies a ratio ``value`` of a
    token of mass ``p``: :data:`CERTIFY_RTOL` relative, with the cutting plane's floor
    (:data:`_GAP_FLOOR` in masses) for bounds that are 0 in float64."""
    return max(CERTIFY_RTOL * abs(value), _GAP_FLOOR / p)


# log(w) range searched for a root of f'(w) = s: every positive normal float64 ratio.
_LOG_W_MIN, _LOG_W_MAX = -745.0, 709.0


def _f1_root(div: _div.Divergence, s: float, start: float) -> float | None:
    """The minimiser over ``w >= 0`` of ``f(w) - s w``: the root of ``f'(w) = s``
    (``0`` when ``f'`` stays above ``s``), or ``None`` when there is none (``s`` at or
    above ``f'(inf)``) or ``f'`` is not finite on the way.

    ``f'`` is nondecreasing (``f`` convex), so the root is bracketed by doubling steps
    in ``log w`` from ``start`` (the primal point's ratio, next to the root) and found by
    Brent's method; a kinked ``f`` (TV) has its kink as the root.
    """
    from scipy.optimize import brentq

    def h(y: float) -> float:
        return float(_f1_values(div, np.array([math.exp(y)]))[0]) - s

    y0 = math.log(start) if start > 0 else -30.0
    lo = hi = min(max(y0, _LOG_W_MIN), _LOG_W_MAX)
    step = 0.5
    with np.errstate(all="ignore"):
        value = h(lo)
        if math.isnan(value):
            return None
        # Walk down while f'(w) > s, up while f'(w) < s, until the sign changes.
        down = value > 0
        while (value > 0) if down else (value < 0):
            if down:
                hi, lo = lo, max(lo - step, _LOG_W_MIN)
            else:
                lo, hi = hi, min(hi + step, _LOG_W_MAX)
            value = h(lo if down else hi)
            if math.isnan(value):
                return None
            if (value > 0) if down else (value < 0):
                if down and lo <= _LOG_W_MIN:
                    return 0.0  # f'(0+) >= s: the minimiser is w = 0
                if not down and hi >= _LOG_W_MAX:
                    return None
            step *= 2.0
        if lo == hi:
            return math.exp(lo)
        y = brentq(h, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=300)
    return math.exp(y)


def _dual_bound(div: _div.Divergence, pi_old: np.ndarray, pi: np.ndarray, i: int,
                sign: float, delta: float) -> float:
    """A certified bound on the optimal ratio by Lagrangian (weak) duality: below the
    lower bound (``sign = +1``) or above the upper one (``-1``); ``nan`` where it cannot
    be computed.

    With ratios ``w = pi / pi_old`` the program is ``min sign * pi_old_i w_i`` over
    ``sum_x pi_old_x f(w_x) <= delta``, ``sum_x pi_old_x w_x = 1``, ``w >= 0``. For any
    ``lam > 0`` and ``mu`` the Lagrangian's minimum over ``w`` bounds the optimum from
    below, and it separates over the tokens:

    .. math::

        d(\\lambda, \\mu) = \\sum_x \\pi^{old}_x \\min_{w \\ge 0}
            \\big[(c_x + \\mu) w + \\lambda f(w)\\big] - \\lambda\\delta - \\mu,
        \\quad c = \\text{sign}\\; e_i .

    The multipliers are read off the polished optimum ``pi``: ``f'`` at the token's
    ratio ``w_i`` and the ``pi_old``-weighted mean ``g0`` of ``f'`` over the other
    tokens fix ``lam = sign / (g0 - f'(w_i))`` and ``mu = -lam g0`` (stationarity of
    the token and of the average other token). Each inner minimum is then attained at
    ``f'(w) = -(c_x + mu) / lam``: at ``w_i`` itself for the token, and at the root
    ``w0`` of ``f'(w0) = g0`` (:func:`_f1_root`) for every other token (at each of
    their own ratios when ``pi`` is optimal). So

    .. math::

        d = \\lambda \\Big[\\textstyle\\sum_{x \\ne i} \\pi^{old}_x \\big(f(w_0) - g_0 w_0\\big)
            + p \\big(f(w_i) - f'(w_i) w_i\\big) - \\delta + g_0\\Big]

    and ``sign * d / p`` is the bound in ratio units. Written this way no term is the
    difference of a large multiplier and a number of order one (the token's slope is
    ``f'(w_i)`` itself, not ``-(sign + mu) / lam``, which loses every digit when ``lam``
    is tiny: kl's upper bound at ``p = 0.999``). The bound is valid for any multipliers
    (rounding aside); its distance to the optimum is of first order in how far ``pi``
    is from optimal, so a suboptimal point shows as a gap. Every coordinate's inner
    problem is solved over its own ``w``: nothing assumes the rest of ``pi_old`` is
    irrelevant (the one-dimensional reduction), though at the optimum the gap closing
    is what that reduction predicts.
    """
    w = pi / pi_old
    others = np.arange(w.size) != i
    alive = others & (w > 0)
    if not alive.any() or not w[i] > 0:
        return math.nan
    with np.errstate(all="ignore"):
        g = _f1_values(div, w)
        gi = float(g[i])
        g0 = float(pi_old[alive] @ g[alive] / pi_old[alive].sum())
    if not (math.isfinite(gi) and math.isfinite(g0)) or not sign * (g0 - gi) > 0:
        return math.nan
    lam = sign / (g0 - gi)
    w0 = _f1_root(div, g0, float(np.median(w[alive])))
    if w0 is None:
        return math.nan
    p = float(pi_old[i])
    with np.errstate(all="ignore"):
        f0, fi = _f_values(div, np.array([w0, w[i]]))
        inner = (float(pi_old[others].sum()) * (f0 - g0 * w0) + p * (fi - gi * float(w[i]))
                 - delta + g0)
    bound = sign * lam * inner / p
    return bound if math.isfinite(bound) else math.nan


def _second_derivative(div: _div.Divergence) -> Callable[[Any, Any], Any] | None:
    """``f''`` compiled like ``f`` and ``f'``, or ``None`` where it has no pointwise value
    (TV's ``DiracDelta``): such generators are not refined."""
    try:
        return _div._compile(div.f2)
    except ValueError:
        return None


# Newton refinement: at most this many steps; it stops earlier once every ratio's step
# is below _NEWTON_RTOL of the ratio (rounding level).
_NEWTON_STEPS = 30
_NEWTON_RTOL = 1e-14
# How far toward pi_old a start with zero masses is moved (sqrt of float64's epsilon:
# far below the solver's own error in the other masses).
_NEWTON_FLOOR = 2.0 ** -26


def _kkt_newton(div: _div.Divergence, f2: Callable[[Any, Any], Any], pi_old: np.ndarray,
                pi: np.ndarray, delta: float, i: int, sign: float) -> np.ndarray | None:
    """Newton's method on the optimality conditions of the full ``K``-token program.

    With ratios ``w = pi / pi_old``, objective ``sign * pi_i`` and multipliers ``lam``
    (ball) and ``mu`` (simplex), the Karush-Kuhn-Tucker conditions of an optimum with
    every mass positive are

    .. math::

        c_x + \\lambda f'(w_x) + \\mu = 0 \\ (\\text{every } x),\\quad
        \\textstyle\\sum_x \\pi^{old}_x f(w_x) = \\delta,\\quad
        \\sum_x \\pi^{old}_x w_x = 1

    with ``c = sign * e_i``. Each Newton step solves their linearisation; the block
    ``diag(lam f''(w))`` is diagonal, so the step costs ``O(K)`` (a 2 x 2 system for the
    multiplier steps). The start is the polished solver optimum, the multipliers a least
    squares fit of the first condition there; steps are damped to keep ``w > 0`` and
    ``lam > 0``. Nothing here uses the one-dimensional reduction: every coordinate is
    free. The caller polishes the result and keeps it only if it beats the start.

    Why: the solver resolves a rare token's ratio only to its tolerances in the cone's
    own units, and a lower bound of ``neyman_chi2`` / ``alpha(-1)`` at small ``p`` (ratio
    ``~ p / delta``) sits where its cone ``t pi >= (pi - p)^2`` has entries ``t ~ p / r``
    and ``pi ~ p r``, ``1 / r^2`` apart; Newton on the smooth conditions has no such
    limit and reaches rounding level in a few steps.

    Returns:
        The refined distribution, or ``None`` where the conditions cannot be used (a
        mass at 0, a non-finite or non-positive ``f''``, no positive ``lam``, a singular
        system).
    """
    from array_api_compat import array_namespace

    w = pi / pi_old
    if not np.all(w > 0):
        # A solver point at loose tolerances may hold exact zeros (clipped iterates)
        # where the optimum has tiny masses (hellinger's upper bound at p = 0.99: the
        # rest's mass ~1e-8). Start a step of _NEWTON_FLOOR toward pi_old instead,
        # where every ratio is positive; Newton then moves each coordinate freely.
        w = w + _NEWTON_FLOOR * (1.0 - w)
        if not np.all(w > 0):
            return None
    xp = array_namespace(w)
    c = np.zeros(w.size)
    c[i] = sign
    with np.errstate(all="ignore"):
        g = _f1_values(div, w)
        fit = np.linalg.lstsq(np.stack([g, np.ones_like(g)], axis=1), -c, rcond=None)[0]
        lam, mu = float(fit[0]), float(fit[1])
        if not (math.isfinite(lam) and math.isfinite(mu) and lam > 0):
            return None
        for _ in range(_NEWTON_STEPS):
            g = _f1_values(div, w)
            h = np.broadcast_to(np.asarray(f2(xp, w), dtype=np.float64), w.shape)
            if not (np.all(np.isfinite(g)) and np.all(np.isfinite(h)) and np.all(h > 0)):
                return None
            r = c + lam * g + mu
            d_res = float(pi_old @ _f_values(div, w)) - delta
            s_res = float(pi_old @ w) - 1.0
            # dw = -(r + g dlam + dmu) / (lam h); the two constraint rows give dlam, dmu.
            k = pi_old / (lam * h)
            a11, a12, a22 = float(k @ (g * g)), float(k @ g), float(k.sum())
            b1 = d_res - float(k @ (g * r))
            b2 = s_res - float(k @ r)
            det = a11 * a22 - a12 * a12
            if not (math.isfinite(det) and det > 0):
                return None
            dlam = (b1 * a22 - b2 * a12) / det
            dmu = (a11 * b2 - a12 * b1) / det
            dw = -(r + g * dlam + dmu) / (lam * h)
            if not np.all(np.isfinite(dw)):
                return None
            step = 1.0
            falling = dw < 0
            if falling.any():
                step = min(step, 0.9 * float(np.min(w[falling] / -dw[falling])))
            if dlam < 0:
                step = min(step, 0.9 * lam / -dlam)
            w = w + step * dw
            lam += step * dlam
            mu += step * dmu
            if step == 1.0 and float(np.max(np.abs(dw) / w)) <= _NEWTON_RTOL:
                break
    return pi_old * w


# --------------------------------------------------------------------------------------
# The cutting-plane path (any convex f)
# --------------------------------------------------------------------------------------


class _TangentModel:
    """Tangent cuts ``s_x >= pi_old_x (f(u) + f'(u) (pi_x / pi_old_x - u))`` per token.

    ``s_x`` is the token's share of the divergence (the perspective of ``f``); the cuts
    are kept across solves, since every tangent of a convex ``f`` stays valid.
    """

    def __init__(self, div: _div.Divergence, pi_old: np.ndarray) -> None:
        self.div = div
        self.pi_old = pi_old
        self.k = pi_old.size
        self._rows: list[np.ndarray] = []
        self._slopes: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        every = np.arange(self.k)
        for u in _INITIAL_CUTS:
            self.add(every, np.full(self.k, u))
        if not self._rows:
            raise ValueError(
                f"divergence {div.name!r}: f or f' is not finite at any of "
                f"u = {', '.join(map(str, _INITIAL_CUTS))}; cannot build tangent cuts"
            )

    def add(self, coords: np.ndarray, u: np.ndarray) -> int:
        """Add the tangents at ratios ``u`` to tokens ``coords``; returns how many were valid."""
        u = np.maximum(u, _CUT_MIN)
        fu = _f_values(self.div, u)
        f1u = _f1_values(self.div, u)
        # Skipping a cut never invalidates the relaxation; slopes beyond 1e9 would only
        # wreck the LP's conditioning (HiGHS refuses coefficient ranges that wide).
        ok = np.isfinite(fu) & np.isfinite(f1u) & (np.abs(f1u) <= _MAX_SLOPE)
        if not ok.any():
            return 0
        rows = coords[ok]
        self._rows.append(rows)
        self._slopes.append(f1u[ok])
        # f'(u) pi_x - s_x <= -pi_old_x (f(u) - u f'(u))
        self._offsets.append(-self.pi_old[rows] * (fu[ok] - u[ok] * f1u[ok]))
        return int(ok.sum())

    def matrices(self) -> tuple[Any, np.ndarray]:
        """Sparse ``A`` over ``[pi; s]`` and ``b`` with ``A @ [pi; s] <= b``."""
        import scipy.sparse as sps

        rows = np.concatenate(self._rows)
        slopes = np.concatenate(self._slopes)
        offsets = np.concatenate(self._offsets)
        m = rows.size
        line = np.arange(m)
        a = sps.csr_matrix(
            (np.concatenate([slopes, -np.ones(m)]),
             (np.concatenate([line, line]), np.concatenate([rows, rows + self.k]))),
            shape=(m, 2 * self.k),
        )
        return a, offsets


def _pull_back(div: _div.Divergence, pi_old: np.ndarray, w_relaxed: np.ndarray,
               delta: float) -> np.ndarray:
    """The feasible point furthest along the segment from ``w = 1`` (pi_old) to ``w_relaxed``.

    ``w(l) = (1 - l) + l w_relaxed``, renormalised onto the simplex; ``D(w(0)) = 0`` and
    ``D(w(l))`` is convex in ``l``, so bisection keeping the feasible end certifies the
    returned point: its exact divergence is ``<= delta``.
    """
    w_relaxed = np.maximum(w_relaxed, 0.0)

    def point(lam: float) -> np.ndarray:
        w = (1.0 - lam) + lam * w_relaxed
        return w / (pi_old @ w)

    if _divergence_of_ratio(div, pi_old, point(1.0)) <= delta:
        return point(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        if _divergence_of_ratio(div, pi_old, point(mid)) <= delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-17:
            break
    return point(lo)


def _highs_lp(c: np.ndarray, a: Any, b: np.ndarray, delta: float, k: int,
              context: str) -> tuple[float, np.ndarray, str]:
    """The relaxed linear program solved by HiGHS directly (scipy's interface).

    cvxpy would recompile the growing program every round; this is the same solver
    without that overhead.
    """
    import scipy.sparse as sps
    from scipy.optimize import linprog

    a_ub = sps.vstack([a, sps.csr_matrix((np.ones(k), (np.zeros(k, dtype=int), np.arange(k) + k)),
                                         shape=(1, 2 * k))]).tocsr()
    b_ub = np.concatenate([b, [delta]])
    a_eq = sps.csr_matrix((np.ones(k), (np.zeros(k, dtype=int), np.arange(k))), shape=(1, 2 * k))
    bounds = [(0.0, None)] * k + [(None, None)] * k
    res = linprog(np.concatenate([c, np.zeros(k)]), A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0],
                  bounds=bounds, method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if res.status != 0:
        status = {1: "iteration_limit", 2: "infeasible", 3: "unbounded"}.get(res.status, "solver_error")
        raise ConvexSolveError(status, "HIGHS", f"{context} ({res.message})")
    return float(res.fun), np.asarray(res.x, dtype=np.float64), "optimal"


class _CuttingPlane:
    """Kelley / supporting-hyperplane scheme for ``min c @ w`` over the f-ball (any convex f)."""

    def __init__(self, div: _div.Divergence, pi_old: np.ndarray, delta: float, *,
                 solver: str, solver_options: Mapping[str, Any], rtol: float, max_iter: int) -> None:
        self.div = div
        self.pi_old = pi_old
        self.delta = delta
        self.k = pi_old.size
        self.solver = solver
        self.solver_options = solver_options
        self.rtol = rtol
        self.max_iter = max_iter
        self.model = _TangentModel(div, pi_old)

    def minimise(self, c: np.ndarray, context: str) -> tuple[float, float, np.ndarray, int, bool, str]:
        """Minimise ``c @ pi``; return (outer bound, inner value, inner ratio point w,
        rounds, converged, last status)."""
        k = self.k
        direct = self.solver == "HIGHS" and not self.solver_options
        if not direct:
            # cvxpy only for another LP solver: its import alone takes seconds.
            import cvxpy as cp

            x = cp.Variable(2 * k)
            pi, s = x[:k], x[k:]
            base = [pi >= 0, cp.sum(pi) == 1, cp.sum(s) <= self.delta]
        best_inner, best_w = math.inf, np.ones(k)
        outer = -math.inf
        status = ""
        floor = _GAP_FLOOR * float(np.max(np.abs(c)))
        for rounds in range(1, self.max_iter + 1):
            a, b = self.model.matrices()
            if direct:
                value, xv, status = _highs_lp(c, a, b, self.delta, k, context)
            else:
                problem = cp.Problem(cp.Minimize(c @ pi), base + [a @ x <= b])
                status = _solve(problem, self.solver, self.solver_options, context)
                value, xv = float(problem.value), np.asarray(x.value, dtype=np.float64)
            w_r, s_r = np.maximum(xv[:k], 0.0) / self.pi_old, xv[k:]
            w_b = _pull_back(self.div, self.pi_old, w_r, self.delta)
            inner = float(c @ (self.pi_old * w_b))
            if inner < best_inner:
                best_inner, best_w = inner, w_b
            # The relaxation only tightens, so keep the best bound seen (one round's LP
            # value may dip within the LP's tolerance). A value above an attained
            # feasible point is the LP's own error, not a bound (seen at 1e-10 in masses
            # where slopes near _MAX_SLOPE make rows ill-conditioned): it is not kept.
            if value <= best_inner + floor:
                outer = max(outer, value)
            if best_inner - outer <= max(self.rtol * abs(best_inner), floor):
                return outer, best_inner, best_w, rounds, True, status
            with np.errstate(all="ignore"):
                share = self.pi_old * _f_values(self.div, w_r)
            violated = ~(share <= s_r + 1e-12 * (1.0 + np.abs(s_r)))
            if not violated.any():
                violated = np.ones(k, dtype=bool)
            coords = np.flatnonzero(violated)
            # Tangents at the boundary point (supporting hyperplanes) and at the relaxed
            # point (Kelley); the latter converge fast once the model is close.
            self.model.add(coords, w_b[coords])
            self.model.add(coords, w_r[coords])
        return outer, best_inner, best_w, self.max_iter, False, status


def _cutting_plane_band(div, pi_old, flat, shape, delta, *, solver, solver_options,
                        rtol, max_iter) -> ConvexBand:
    engine = _CuttingPlane(div, pi_old, delta, solver=solver, solver_options=solver_options,
                           rtol=rtol, max_iter=max_iter)
    n = flat.size
    out = {key: np.empty(n) for key in ("lower", "upper", "d_lower", "d_upper")}
    brackets = {"lower": np.empty((n, 2)), "upper": np.empty((n, 2))}
    iterations = np.empty((n, 2), dtype=np.int64)
    statuses: dict[str, list[str]] = {"lower": [], "upper": []}
    converged = True
    c = np.zeros(pi_old.size)
    for j, i in enumerate(flat):
        for col, (side, sign) in enumerate((("lower", 1.0), ("upper", -1.0))):
            c[i] = sign / pi_old[i]
            context = (f"cutting-plane Band ({div.name}, {side} bound of token {i}, "
                       f"delta={delta:g}, K={pi_old.size})")
            edge = _edge_point(pi_old, int(i), sign)
            if _divergence_of_ratio(div, pi_old, edge / pi_old) <= delta:
                # The end of the range is attained by a feasible point: exact, no LP.
                outer = inner = sign * edge[i] / pi_old[i]
                w, rounds, ok, status = edge / pi_old, 0, True, SATURATED
            else:
                outer, inner, w, rounds, ok, status = engine.minimise(c, context)
            value = sign * inner
            out[side][j] = value
            out["d_" + side][j] = _divergence_of_ratio(div, pi_old, w)
            brackets[side][j] = sorted((sign * outer, value))
            iterations[j, col] = rounds
            statuses[side].append(status)
            converged = converged and ok
        c[i] = 0.0
    return ConvexBand(
        index=flat.reshape(shape),
        p=pi_old[flat].reshape(shape),
        lower=out["lower"].reshape(shape),
        upper=out["upper"].reshape(shape),
        status_lower=tuple(statuses["lower"]),
        status_upper=tuple(statuses["upper"]),
        divergence_lower=out["d_lower"].reshape(shape),
        divergence_upper=out["d_upper"].reshape(shape),
        divergence=div.name,
        delta=delta,
        method="cutting_plane",
        solver=solver,
        lower_bracket=brackets["lower"].reshape(shape + (2,)),
        upper_bracket=brackets["upper"].reshape(shape + (2,)),
        iterations=iterations.reshape(shape + (2,)),
        converged=converged,
    )


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


#: Compiled Band programs kept by :func:`convex_band`, least recently used out. A
#: program is specific to ``(K, divergence, solver, options)``; compiling one costs
#: 20-400 ms at K = 1000 (cvxpy's canonicalisation), a re-solve of a compiled one
#: 10-60 ms, so a sweep of calls over ``pi_old``, ``delta`` or tokens at one ``K``
#: pays the compilation once.
_PROGRAM_CACHE_SIZE = 4
_programs: OrderedDict[tuple[Any, ...], tuple[BandProblem, threading.Lock]] = OrderedDict()
_programs_lock = threading.Lock()


def _compiled_program(k: int, div: _div.Divergence, solver: str | None,
                      solver_options: Mapping[str, Any] | None
                      ) -> tuple[BandProblem, threading.Lock]:
    """A compiled :class:`BandProblem` for these settings (cached) and the lock that
    serialises its solves (its parameters are set per solve)."""
    try:
        key = (k, div, solver, tuple(sorted((solver_options or {}).items())))
        hash(key)
    except TypeError:  # unhashable option values: no caching
        return (BandProblem(k, div, solver=solver, solver_options=solver_options),
                threading.Lock())
    with _programs_lock:
        entry = _programs.get(key)
        if entry is not None:
            _programs.move_to_end(key)
            return entry
    # Compiled outside the lock (it takes a while); two threads may both compile.
    entry = (BandProblem(k, div, solver=solver, solver_options=solver_options),
             threading.Lock())
    with _programs_lock:
        entry = _programs.setdefault(key, entry)
        _programs.move_to_end(key)
        while len(_programs) > _PROGRAM_CACHE_SIZE:
            _programs.popitem(last=False)
    return entry


def convex_band(
    pi_old: Any,
    index: Any,
    divergence: str | _div.Divergence = "kl",
    delta: float = 0.05,
    *,
    method: str = "auto",
    solver: str | None = None,
    solver_options: Mapping[str, Any] | None = None,
    constraints: Callable[[Any], Sequence[Any]] | None = None,
    rtol: float = 1e-7,
    max_iter: int = 100,
) -> ConvexBand:
    """The Band of tokens of a full old distribution, as a convex program over the simplex.

    .. math::

        \\text{upper/lower} = \\max/\\min\\ \\frac{\\pi_a}{\\pi^{old}_a}
        \\quad\\text{s.t.}\\quad \\sum_x \\pi^{old}_x f\\!\\left(\\frac{\\pi_x}{\\pi^{old}_x}\\right)
        \\le \\delta,\\ \\pi \\ge 0,\\ \\textstyle\\sum_x \\pi_x = 1

    No one-dimensional reduction is used: by the reduction theorem (THEORY.md
    section 2) the result must equal ``band_bounds(log pi_old[a])`` whatever the rest
    of ``pi_old`` looks like, which is what the validator checks.

    Args:
        pi_old: Old distribution, shape ``(K,)``, entries ``> 0``, summing to 1
            (within 1e-6; it is renormalised). ``K`` up to about 10,000.
        index: A token index or an array of indices; several indices are solved with
            one compiled program (DCP) or one shared cut pool (cutting plane). DCP
            programs are also kept between calls (the last
            :data:`_PROGRAM_CACHE_SIZE` settings of ``K``, divergence, solver and
            options, without extra ``constraints``), so repeated calls at one ``K``
            compile once.
        divergence: A registry name or entry (built-in or user divergence).
        delta: Trust-region radius ``> 0``.
        method: ``"dcp"`` (exact conic form of the registry entry), ``"cutting_plane"``
            (tangent-line outer approximation, certified interval, any convex ``f``)
            or ``"auto"`` (DCP when the entry has a form, cutting plane otherwise).
        solver: cvxpy solver name; default :data:`DEFAULT_CONE_SOLVER` for DCP and
            :data:`DEFAULT_LP_SOLVER` for the cutting-plane linear programs.
        solver_options: Keyword options for the solver.
        constraints: Extra constraints ``callable(pi) -> list`` (DCP path only).
        rtol: Cutting plane: stop when the certified interval is narrower than
            ``rtol * |value|`` (relative also for a small lower bound; an absolute floor
            of ``4 eps / p`` in ratio units, the float64 resolution of the token's mass
            in the unit simplex, only lets a bound that is 0 in float64 stop; exact
            zeros, saturated sides, are certified without a solve).
        max_iter: Cutting plane: at most this many linear programs per bound; a bound
            that does not reach ``rtol`` is reported with ``converged=False``.

    Returns:
        :class:`ConvexBand` with the ratio interval, the statuses and the divergence
        reached at each optimum.

    Raises:
        ValueError: For a malformed ``pi_old``, index, ``delta`` or method, a method
            that the divergence does not support, or a divergence whose ``f`` is not
            convex or has ``f(1) != 0`` (checked once per entry, before any solver).
        ConvexSolveError: If a solve is infeasible, unbounded or the solver fails
            (the message names the status and the solver).

    References:
        BandPO (arXiv 2603.04918), the Band operator; THEORY.md section 2.
    """
    div = _checked_divergence(divergence)
    method = _check_method(method)
    pi_old = _check_distribution(pi_old, name="pi_old", positive=True)
    delta = _check_delta(delta)
    flat, shape = _check_index(index, pi_old.size)
    if method == "auto":
        method = "dcp" if div.dcp is not None else "cutting_plane"
    if method == "dcp":
        if constraints is not None:
            problem = BandProblem(pi_old.size, div, solver=solver,
                                  solver_options=solver_options, constraints=constraints)
            return problem.solve(pi_old, flat.reshape(shape), delta=delta)
        problem, lock = _compiled_program(pi_old.size, div, solver, solver_options)
        with lock:
            return problem.solve(pi_old, flat.reshape(shape), delta=delta)
    if constraints is not None:
        raise ValueError("constraints are supported by method='dcp' only (the cutting-plane "
                         "certificate pulls points back towards pi_old, which they may exclude)")
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    return _cutting_plane_band(
        div, pi_old, flat, shape, delta,
        solver=DEFAULT_LP_SOLVER if solver is None else str(solver),
        solver_options=dict(solver_options or {}), rtol=float(rtol), max_iter=int(max_iter),
    )


# --------------------------------------------------------------------------------------
# The joint projection
# --------------------------------------------------------------------------------------

_METRICS = ("kl", "euclidean")


@dataclass(frozen=True)
class Projection:
    """The point of the f-ball around ``pi_old`` closest to a proposed distribution.

    Attributes:
        pi: The projected distribution, shape ``(K,)``.
        distance: ``KL(pi || pi_target)`` (metric ``"kl"``) or ``||pi - pi_target||_2``
            (metric ``"euclidean"``); 0 when the target is already inside the ball.
        divergence_value: ``D_f(pi || pi_old)`` evaluated exactly (``<= delta`` up to
            solver tolerance).
        target_divergence: ``D_f(pi_target || pi_old)``: how far the proposal is.
        inside: Whether the target already lies in the ball (then ``pi = pi_target``
            and no solver runs).
        status: Solver status (``"inside"`` when no solve was needed).
        solver: The solver used (``"none"`` when inside).
        metric: ``"kl"`` or ``"euclidean"``.
    """

    pi: np.ndarray
    distance: float
    divergence_value: float
    target_divergence: float
    inside: bool
    status: str
    solver: str
    metric: str


def project(
    pi_target: Any,
    pi_old: Any,
    divergence: str | _div.Divergence = "kl",
    delta: float = 0.05,
    *,
    metric: str = "kl",
    solver: str | None = None,
    solver_options: Mapping[str, Any] | None = None,
) -> Projection:
    """Project a proposed distribution onto the f-divergence trust region around ``pi_old``.

    .. math::

        \\pi^\\star = \\arg\\min_{\\pi \\in \\Delta_K} d(\\pi, \\pi^{target})
        \\quad\\text{s.t.}\\quad D_f(\\pi \\,\\|\\, \\pi^{old}) \\le \\delta,

    with ``d = KL(pi || pi_target)`` or ``d = ||pi - pi_target||_2``. Per-token clipping
    lets every token sit on its own Band edge at once, which no single distribution in
    the ball does; this answers how far such a whole update is from the trust region.

    A target with zeros. ``KL(pi || pi_target)`` is finite only when ``pi`` vanishes
    wherever ``pi_target`` does, so with ``metric="kl"`` the program lives on the
    target's support ``S``. Among distributions on ``S`` the one closest to ``pi_old``
    is ``pi_old`` renormalised on ``S`` (Jensen: ``sum_S pi_old f(w) >= m f(1/m)`` with
    ``m = pi_old(S)``, equality at ``w = 1/m``), whose divergence
    ``m f(1/m) + (1 - m) f(0+)`` is computed exactly first: above ``delta`` the
    projection does not exist and a ``ValueError`` says so (always for ``f(0+) = inf``,
    e.g. ``kl``); otherwise only the tokens of ``S`` are solved for, under the radius
    left after the fixed share ``(1 - m) f(0+)`` of the others. The Euclidean metric
    has no such restriction.

    Args:
        pi_target: Proposed distribution, shape ``(K,)``, entries ``>= 0``, sum 1.
        pi_old: Old distribution, shape ``(K,)``, entries ``> 0``, sum 1.
        divergence: A registry name or entry with an exact DCP form.
        delta: Trust-region radius ``> 0``.
        metric: ``"kl"`` (``KL(pi || pi_target)``) or ``"euclidean"``.
        solver: cvxpy solver name (default :data:`DEFAULT_CONE_SOLVER`).
        solver_options: Keyword options for the solver.

    Returns:
        :class:`Projection`.

    Raises:
        ValueError: For malformed inputs, an unknown metric, mismatched shapes, a
            divergence that is not convex with ``f(1) = 0`` or has no DCP form, or (metric
            ``"kl"``) a target whose support cannot reach the ball.
        ConvexSolveError: If the solve is infeasible, unbounded or fails.
    """
    import cvxpy as cp

    div = _checked_divergence(divergence)
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(_METRICS)}")
    pi_target = _check_distribution(pi_target, name="pi_target", positive=False)
    pi_old = _check_distribution(pi_old, name="pi_old", positive=True)
    if pi_target.size != pi_old.size:
        raise ValueError(f"pi_target has {pi_target.size} entries but pi_old has {pi_old.size}")
    delta = _check_delta(delta)
    if div.dcp is None:
        raise ValueError(f"divergence {div.name!r} has no exact DCP form; project() needs one")
    target_div = f_divergence(pi_target, pi_old, div)
    if target_div <= delta:
        return Projection(pi_target, 0.0, target_div, target_div, True, "inside", "none", metric)
    k = pi_old.size
    support = pi_target > 0 if metric == "kl" else np.ones(k, dtype=bool)
    radius = delta
    if not support.all():
        outside = float(pi_old[~support].sum())
        closest = np.where(support, pi_old / float(pi_old[support].sum()), 0.0)
        needed = f_divergence(closest, pi_old, div)
        if not needed <= delta:
            raise ValueError(
                f"no distribution in the {div.name} ball of radius delta={delta:g} around "
                f"pi_old is KL-close to pi_target: pi_target is 0 on {int((~support).sum())} "
                f"of {k} tokens, which hold pi_old mass {outside:.6g} (support mass "
                f"{1.0 - outside:.6g}); KL(pi || pi_target) < inf needs pi = 0 there, and the "
                f"closest such distribution (pi_old renormalised on the support) has "
                f"{div.name} divergence {needed:.6g} > delta; "
                + (f"f(0+) is infinite for {div.name}, so no delta allows it; use "
                   "metric='euclidean'" if math.isinf(needed)
                   else f"use delta >= {needed:.6g} or metric='euclidean'")
            )
        # The tokens off the support contribute pi_old f(0) each, a constant.
        radius = delta - outside * float(div.f_at_0)
    solver = DEFAULT_CONE_SOLVER if solver is None else str(solver)
    target_s = pi_target[support]
    pi_s = cp.Variable(int(support.sum()), nonneg=True)
    if metric == "kl":
        objective = cp.sum(cp.rel_entr(pi_s, target_s))
    else:
        objective = cp.sum_squares(pi_s - target_s)
    terms, cones = div.dcp(pi_s, pi_old[support])
    problem = cp.Problem(cp.Minimize(objective),
                         [cp.sum(pi_s) == 1, cp.sum(terms) <= radius, *cones])
    status = _solve(problem, solver, dict(solver_options or {}),
                    f"projection ({div.name}, delta={delta:g}, metric={metric}, K={k}"
                    + ("" if support.all() else f", on the target's {pi_s.size}-token support")
                    + ")")
    pi_value = np.zeros(k)
    pi_value[support] = np.maximum(np.asarray(pi_s.value, dtype=np.float64), 0.0)
    pi_value = pi_value / pi_value.sum()
    if metric == "kl":
        on = pi_value > 0  # a subset of the support: KL is finite
        distance = float(np.sum(pi_value[on] * np.log(pi_value[on] / pi_target[on])))
    else:
        distance = float(np.linalg.norm(pi_value - pi_target))
    return Projection(pi_value, distance, f_divergence(pi_value, pi_old, div), target_div,
                      False, status, solver, metric)


# --------------------------------------------------------------------------------------
# The validator
# --------------------------------------------------------------------------------------

#: Tolerance of convex-vs-numeric agreement, relative: ``|a - b| <= max(CONVEX_RTOL |b|,
#: RATIO_ATOL)`` (a lower bound of 1e-3 is checked to 1e-9, not to 1e-6).
CONVEX_RTOL = 1e-6
#: Tolerance of closed-form-vs-numeric agreement (both exact in float64), relative in the
#: same way.
CLOSED_FORM_RTOL = 1e-9
#: Absolute floor of every agreement tolerance, in ratio units: a ratio below it is 0 to
#: float64 (exact zeros are saturated sides; the KL-type lower bounds ``~exp(-delta/p)``,
#: down to 1e-218 on the default grid, come back from the projector as masses ~1e-43
#: that float64 sums with order-one masses cannot resolve; a side exactly at its
#: saturation threshold, chi2 at p = delta / (1 + delta), is solved to 3e-14).
RATIO_ATOL = 1e-12

_DEFAULT_DELTAS = (0.01, 0.05, 0.2, 1.0)
_DEFAULT_PS = (1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999)
_DEFAULT_KS = (10, 100, 1000)


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate` found.

    Attributes:
        divergence: The divergence name.
        checks: ``(name, passed, detail)`` for the generator checks (``f(1) = 0``,
            convexity, closed form).
        comparisons: A pandas DataFrame, one row per comparison: ``source`` (``grid`` or
            ``dirichlet``), ``k``, ``seed``, ``index``, ``p``, ``delta``, ``side``,
            ``pair``, ``value_a``, ``value_b``, ``abs_diff``, ``rel_diff``
            (``abs_diff / |value_b|``; 0 where both are 0, ``inf`` where only
            ``value_b`` is 0), ``tol`` (``max(rtol |value_b|, RATIO_ATOL)``),
            ``relative`` (whether ``rtol |value_b| >= RATIO_ATOL``), ``ok``.
        summary: A DataFrame per route pair: max abs disagreement, max relative
            disagreement over the rows where the tolerance is relative
            (``rtol |b| >= RATIO_ATOL``), the worst row's p and delta (largest
            ``abs_diff / tol``), tolerance, verdict.
        passed: Every check and every comparison within tolerance.
        method: The convex method used (``dcp`` or ``cutting_plane``).
    """

    divergence: str
    checks: tuple[tuple[str, bool, str], ...]
    comparisons: Any
    summary: Any
    passed: bool
    method: str

    def format(self) -> str:
        """A plain-text report: checks, the per-pair table and the verdict."""
        lines = [f"validation of divergence {self.divergence!r} (convex method: {self.method})", ""]
        for name, ok, detail in self.checks:
            lines.append(f"  [{'ok' if ok else '!!'}] {name}: {detail}")
        lines.append("")
        if len(self.summary):
            header = (f"{'route pair':<28} {'n':>5} {'max abs':>10} {'max rel':>10} "
                      f"{'worst p':>10} {'worst delta':>11} {'tolerance':<26} verdict")
            lines += [header, "-" * len(header)]
            for row in self.summary.itertuples(index=False):
                lines.append(
                    f"{row.pair:<28} {row.n:>5d} {row.max_abs:>10.2e} {row.max_rel:>10.2e} "
                    f"{row.worst_p:>10.4g} {row.worst_delta:>11.4g} {row.tolerance:<26} "
                    f"{'PASS' if row.ok else 'FAIL'}"
                )
        lines += ["", f"verdict: {'PASS' if self.passed else 'FAIL'}"]
        return "\n".join(lines)


def _resolve(divergence: Any) -> _div.Divergence:
    """Registry lookup, then the safe expression parser when it is available."""
    if isinstance(divergence, _div.Divergence):
        return divergence
    if not isinstance(divergence, str):
        raise TypeError(f"divergence must be a name, an expression or a Divergence, "
                        f"got {type(divergence).__name__}")
    try:
        return _div.get(divergence)
    except ValueError as lookup_error:
        parser = getattr(_div, "from_expression", None)
        if parser is None:
            raise ValueError(f"{lookup_error} (typed expressions need the symbolic parser, "
                             "which is not available)") from None
        return parser(divergence)


def _generator_checks(div: _div.Divergence) -> list[tuple[str, bool, str]]:
    import sympy as sp

    checks = []
    f1 = sp.simplify(div.f.subs(_div.U, 1))
    checks.append(("f(1) = 0", f1 == 0, f"f(1) = {f1}"))
    # Chord slopes on a log grid must not decrease (works for kinks such as TV's).
    u = np.logspace(-8, 8, 2001)
    fu = _f_values(div, u)
    finite = np.isfinite(fu)
    uf, ff = u[finite], fu[finite]
    slopes = np.diff(ff) / np.diff(uf)
    drops = np.diff(slopes)
    # Rounding of f (a few ulps of |f|) divided by the step bounds each slope's error.
    err = 8 * np.finfo(float).eps * (np.abs(ff[:-1]) + np.abs(ff[1:]) + 1.0) / np.diff(uf)
    scale = err[:-1] + err[1:] + 1e-9 * (np.abs(slopes[:-1]) + np.abs(slopes[1:]))
    bad = np.flatnonzero(drops < -scale)
    if bad.size:
        checks.append(("convexity", False, f"chord slopes decrease near u = {uf[bad[0] + 1]:.4g}"))
    else:
        checks.append(("convexity", True, f"chord slopes non-decreasing on {uf.size} points in [1e-8, 1e8]"))
    return checks


def _closed_form(div: _div.Divergence, timeout: float) -> tuple[Any, str]:
    """``(callable(p, delta) -> (lower, upper) or None, detail)`` from the symbolic engine."""
    try:
        from . import symbolic
    except ImportError:
        return None, "symbolic engine unavailable"
    try:
        result = symbolic.derive(div, timeout=timeout)
    except Exception as exc:  # the engine is a separate layer; report, do not crash
        return None, f"symbolic derivation failed: {type(exc).__name__}: {exc}"
    if not getattr(result, "closed_form", False):
        return None, "no closed form (the engine found none for at least one side)"

    def both(p: float, delta: float) -> tuple[float, float]:
        # The engine's numeric bounds include the saturation conditions (a closed-form
        # root alone is wrong where a side is saturated, e.g. Hellinger's spurious root).
        band = result.band(np.asarray([p]), delta=delta)
        return float(np.ravel(band.lower)[0]), float(np.ravel(band.upper)[0])

    return both, "closed form found by the symbolic engine"


def validate(
    divergence: Any,
    *,
    deltas: Sequence[float] = _DEFAULT_DELTAS,
    ps: Sequence[float] = _DEFAULT_PS,
    k: Sequence[int] = _DEFAULT_KS,
    seeds: Sequence[int] = (0, 1, 2),
    grid_k: int = 50,
    method: str = "auto",
    solver: str | None = None,
    derive_timeout: float = 20.0,
) -> ValidationReport:
    """Check a divergence: generator, closed form, numeric root and convex program agree.

    1. Parse or look up the divergence (the registry, then the safe expression parser
       :func:`bandtheory.divergences.from_expression` when it is available).
    2. Check ``f(1) = 0`` symbolically and convexity numerically (non-decreasing chord
       slopes on a log grid from 1e-8 to 1e8).
    3. Ask the symbolic engine (:func:`bandtheory.symbolic.derive`) for a closed form.
    4. Compare, on the grid ``ps x deltas`` (the token of probability ``p`` inside a
       ``grid_k``-token distribution whose rest is Dirichlet) and on random Dirichlet
       ``pi_old`` (each size in ``k``, each seed; the largest, the median and the
       smallest token with ``p >= min(ps)``): the closed form, :func:`bandtheory.band_bounds` and :func:`convex_band`.
       The Dirichlet rows test the reduction theorem: the full-simplex optimum equals
       the one-dimensional root whatever the rest of ``pi_old`` is.

    Tolerances, relative to the reference value ``b`` (a small lower bound is checked
    to its own scale): convex vs numeric ``|a - b| <= max(CONVEX_RTOL |b|, RATIO_ATOL)``
    (1e-6); closed form vs numeric ``max(CLOSED_FORM_RTOL |b|, RATIO_ATOL)`` (1e-9);
    the floor ``RATIO_ATOL = 1e-12`` only admits ratios that are 0 to float64 (see
    :data:`RATIO_ATOL`). The default grid starts at p = 1e-4, the range the
    projector's accuracy is stated for (``benchmarks/README.md``).

    Args:
        divergence: A registry name, a typed expression in ``u``, or an entry.
        deltas: Trust-region radii ``> 0``.
        ps: Token probabilities in ``(0, 1)`` for the grid.
        k: Distribution sizes (each ``>= 2``) for the random part.
        seeds: Seeds of the Dirichlet draws.
        grid_k: Size of the grid distributions.
        method: Convex method (``auto``, ``dcp``, ``cutting_plane``).
        solver: Solver name for the convex route.
        derive_timeout: Seconds of sympy work allowed for the closed form (step 3),
            ``> 0``. Generous: a derivation stops as soon as it is done (a transcendental
            equation is recognised at once), and a closed form that misses the budget
            on a loaded machine would silently drop one route of the comparison.

    Returns:
        :class:`ValidationReport`.

    Raises:
        ValueError: For a malformed or non-convex expression (before any solver runs),
            or malformed grids.
    """
    import pandas as pd

    div = _resolve(divergence)
    method = _check_method(method)
    if isinstance(derive_timeout, bool) or not isinstance(derive_timeout, (int, float)) or not (
        derive_timeout > 0 and math.isfinite(derive_timeout)
    ):
        raise ValueError(f"derive_timeout must be a finite number of seconds > 0, got {derive_timeout!r}")
    deltas = [_check_delta(d) for d in deltas]
    ps = [float(p) for p in ps]
    if not ps or any(not (0.0 < p < 1.0) for p in ps):
        raise ValueError(f"ps must be a non-empty list of probabilities in (0, 1), got {ps}")
    ks = [int(x) for x in k]
    if any(x < 2 for x in ks) or int(grid_k) < 2:
        raise ValueError(f"distribution sizes must be >= 2, got k={ks}, grid_k={grid_k}")
    checks = list(_cached_generator_checks(div))
    if not all(ok for _, ok, _ in checks):
        empty = pd.DataFrame()
        return ValidationReport(div.name, tuple(checks), empty, empty, False, method)
    closed, detail = _closed_form(div, derive_timeout)
    checks.append(("closed form", True, detail))
    if method == "auto":
        method = "dcp" if div.dcp is not None else "cutting_plane"

    def solver_for(size: int) -> Callable[[np.ndarray, np.ndarray, float], ConvexBand]:
        if method == "dcp":
            problem = BandProblem(size, div, solver=solver)
            return lambda pi_old, idx, delta: problem.solve(pi_old, idx, delta=delta)
        return lambda pi_old, idx, delta: convex_band(pi_old, idx, div, delta,
                                                      method=method, solver=solver)

    rows: list[dict[str, Any]] = []
    failures: list[str] = []

    def compare(source, size, seed, idx, p, delta, values):
        for side in ("lower", "upper"):
            ref = values["band_bounds"][side]
            pairs = [("convex vs band_bounds", values["convex"][side], ref, CONVEX_RTOL)]
            if "closed_form" in values:
                pairs.append(("closed_form vs band_bounds", values["closed_form"][side], ref,
                              CLOSED_FORM_RTOL))
                pairs.append(("closed_form vs convex", values["closed_form"][side],
                              values["convex"][side], CONVEX_RTOL))
            for pair, a, b, rtol in pairs:
                diff = abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
                tol = max(rtol * abs(b), RATIO_ATOL)
                rel = diff / abs(b) if b != 0 else (0.0 if diff == 0 else math.inf)
                rows.append(dict(source=source, k=size, seed=seed, index=idx, p=p, delta=delta,
                                 side=side, pair=pair, value_a=a, value_b=b, abs_diff=diff,
                                 rel_diff=rel, tol=tol, relative=bool(rtol * abs(b) >= RATIO_ATOL),
                                 ok=bool(diff <= tol)))

    def run(source, size, seed, pi_old, indices, solve):
        for delta in deltas:
            try:
                result = solve(pi_old, indices, delta)
                lower_c, upper_c = np.ravel(result.lower), np.ravel(result.upper)
            except ConvexSolveError as exc:
                # A failed solve is a finding, not a crash: it shows as a FAIL row.
                failures.append(f"{source} K={size} seed={seed} delta={delta:g}: {exc}")
                lower_c = upper_c = np.full(len(indices), math.nan)
            band = band_bounds(np.log(pi_old[indices]), div, delta=delta)
            for j, idx in enumerate(indices):
                p = float(pi_old[idx])
                values = {
                    "convex": {"lower": float(lower_c[j]), "upper": float(upper_c[j])},
                    "band_bounds": {"lower": float(band.lower[j]), "upper": float(band.upper[j])},
                }
                if closed is not None:
                    lo, up = closed(p, delta)
                    values["closed_form"] = {"lower": lo, "upper": up}
                compare(source, size, seed, int(idx), p, delta, values)

    rng = np.random.default_rng(int(seeds[0]) if len(seeds) else 0)
    rest = rng.dirichlet(np.ones(int(grid_k) - 1))
    solve = solver_for(int(grid_k))
    for p in ps:
        pi_old = np.concatenate([[p], (1.0 - p) * rest])
        run("grid", int(grid_k), int(seeds[0]) if len(seeds) else 0, pi_old, np.array([0]), solve)
    for size in ks:
        solve = solver_for(size)
        for seed in seeds:
            pi_old = np.random.default_rng([int(seed), size]).dirichlet(np.ones(size))
            order = np.argsort(pi_old)
            # The smallest token that is not below the grid's smallest p (the stated
            # range, see the note above).
            eligible = order[pi_old[order] >= min(ps)]
            indices = np.unique([order[-1], order[size // 2] if pi_old[order[size // 2]] >= min(ps)
                                 else order[-1], eligible[0] if eligible.size else order[-1]])
            run("dirichlet", size, int(seed), pi_old, indices, solve)

    table = pd.DataFrame(rows)
    summary = []
    for pair, group in table.groupby("pair", sort=False):
        worst = group.loc[(group["abs_diff"] / group["tol"]).idxmax()]
        rtol = CLOSED_FORM_RTOL if pair.startswith("closed_form vs band") else CONVEX_RTOL
        summary.append(dict(pair=pair, n=len(group), max_abs=group["abs_diff"].max(),
                            max_rel=_max_relative(group), worst_p=worst["p"],
                            worst_delta=worst["delta"],
                            tolerance=f"{rtol:.0e}*|b|, >= {RATIO_ATOL:.0e}",
                            ok=bool(group["ok"].all())))
    summary = pd.DataFrame(summary)
    dirichlet = table[(table["source"] == "dirichlet") & (table["pair"] == "convex vs band_bounds")]
    if len(dirichlet):
        checks.append(("reduction theorem", bool(dirichlet["ok"].all()),
                       f"convex optimum over {len(dirichlet) // (2 * len(deltas))} random full "
                       f"distributions' tokens equals the 1-D root: max rel disagreement "
                       f"{_max_relative(dirichlet):.2e} (tolerance {CONVEX_RTOL:g} relative, "
                       f"ratios below {RATIO_ATOL:g} count as 0)"))
    if failures:
        checks.append(("convex solves", False, f"{len(failures)} failed; first: {failures[0]}"))
    passed = all(ok for _, ok, _ in checks) and bool(summary["ok"].all())
    return ValidationReport(div.name, tuple(checks), table, summary, passed, method)


def _max_relative(rows: Any) -> float:
    """The largest ``rel_diff`` among rows whose tolerance is relative (0 if none)."""
    part = rows.loc[rows["relative"], "rel_diff"]
    return float(part.max()) if len(part) else 0.0


def validation_figure(report: ValidationReport) -> Any:
    """A matplotlib figure of the disagreement against ``p``, one panel per side.

    Each comparison is drawn as ``|a - b| / tol``, its disagreement in units of its own
    tolerance (relative, with the absolute floor): a point above 1 is a FAIL.

    Args:
        report: A :class:`ValidationReport` with comparisons.

    Returns:
        The ``matplotlib.figure.Figure`` (not shown or saved).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    table = report.comparisons
    for ax, side in zip(axes, ("lower", "upper")):
        if len(table):
            part = table[table["side"] == side]
            for pair, group in part.groupby("pair", sort=False):
                # Exact agreement is drawn at the bottom of the log axis, a failed solve
                # (no value) at the top.
                diff, tol = group["abs_diff"].to_numpy(), group["tol"].to_numpy()
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(diff == 0, 0.0, diff / tol)
                ratio = np.clip(np.nan_to_num(ratio, nan=1e6, posinf=1e6), 1e-12, 1e6)
                ax.scatter(group["p"], ratio, s=12, label=pair, alpha=0.7)
            ax.axhline(1.0, color="k", ls="--", lw=1, label="tolerance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("old probability p")
        ax.set_title(f"{side} bound")
    axes[0].set_ylabel("|a - b| / tolerance")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"validation of {report.divergence}: {'PASS' if report.passed else 'FAIL'}")
    return fig
