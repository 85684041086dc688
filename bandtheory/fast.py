r"""Certified interpolation tables of the Band for hot loops (``mode="fast"``).

Both ends of the Band are tabulated in one coordinate of the old log-probability
``t = log p``,

.. math::

    s = t - \log(-t),

as two functions on the same knots:

.. math::

    L(s) = \text{lower}(p),\qquad V(s) = \log\big(\text{upper}(p) - 1\big),\qquad
    \text{upper}(p) = 1 + e^{V(s)}.

``s`` is increasing in ``t``; it is ``log p`` up to a slowly varying term as ``p -> 0``
and ``-log(1 - p)`` up to ``O(1 - p)`` as ``p -> 1``, so it resolves both ends of the
probability range on the same uniform knots, and it costs a single logarithm. An
absolute error ``e`` in ``V`` is a relative error ``<= e`` (to first order) in
``upper - 1``, hence in ``upper``; an absolute error in ``L`` is the absolute error of
``lower``. Both are smooth in ``s``: as ``p -> 0`` ``V`` tends to a linear function of
``log p`` (``upper - 1 ~ c p^(-k)``), as ``p -> 1`` to a linear function of
``log(1 - p)`` and ``L`` to ``r*``. The only kinks are the saturation points:
``lower = 0`` for ``p <= x_sat`` and, by the mirror identity (THEORY.md section 2),
``upper = 1/p`` for ``p >= 1 - x_sat``; the knot width is chosen so that both kinks
are knots.

The knots cover ``s`` from ``s(log(tiny))`` up to ``708.5``: every normal ``p`` and
every normal ``1 - p``. Two sentinel pieces close the range. Below the first knot
(``p = 0`` and subnormal ``p``) ``L = 0`` and ``V = 1e300`` give ``[0, inf]``, the
exact mode's convention there. Above the last (``p = 1`` and subnormal ``1 - p``)
``L = r*`` and ``V = -800`` give ``[r*, 1]``: exact at ``p = 1`` (the common
``log p = 0``), and to rounding for subnormal ``1 - p`` wherever ``lower`` tends to
``r*`` like a power of ``1 - p``. Where it tends like ``1/log(1/(1 - p))`` (reverse
KL, Jeffreys) subnormal ``1 - p`` is not certified: ``1 - lower`` is still ``7e-5``
there at ``delta = 0.05``, and the exact solver itself is off by as much (its
``b f(1 + c/b)`` overflows), so there is nothing exact to compare with.

Invalid log-probabilities (NaN, ``+inf``, positive beyond rounding; possible only with
``check_input=False``) are mapped to piece 0 with a NaN local coordinate, so both ends
come out NaN without a branch or a host synchronisation (:func:`_locate`).

On each piece a polynomial (quadratic where that certifies, else cubic) interpolates
the exact values at Chebyshev points; evaluation is one index computation, ``d + 1``
gathers and a Horner step per function, about 25 elementwise float64 operations per
token for both ends. A surrogate loss needs only the end that can bite (``upper``
where the advantage is positive, ``lower`` where it is negative):
:func:`biting_bound` evaluates one polynomial per token from a stacked table.

The certificate: after fitting, the table is evaluated at points inside every piece
(none of them a fitting node), at 256 points on each side of each kink and at the top
of the range and ``p = 1``, and compared with the exact solver; the largest relative
error of ``upper`` and the largest absolute error of ``lower`` are recorded on the
table (:attr:`BandTable.max_error`) and must be ``<= 1e-7``, else the builder tries the
next (degree, width) and, if none certifies, raises (:func:`band_table`) or, in fast
mode, returns the exact mode's values with a :class:`TableFallbackWarning` (once per
``(divergence, delta)``; the failure is cached, so it is paid for once). A cheap probe
(``|s| <= 40`` where the curvature is, both ends of the range and the kinks; a few
percent of a build) rejects a specification before the full range is built, so a
divergence that cannot certify gives up in well under a second. The build also
certifies how many Newton steps from the table reach the exact mode's accuracy
(:attr:`BandTable.polish_steps`), which is how large inputs are solved in
``mode="exact"`` once the table exists.

Exact mode's start tables. For inputs of 32768 tokens or more (1024 on backends other
than NumPy), exact mode does not run
the safeguarded solver (on torch a fixed 100 iterations, about 17 s per million KL
tokens on CPU, so as not to synchronise with the host) but a certified, fixed number of
Newton steps (:func:`bandtheory.bounds._polish_side`) from a table start. It never
builds the table above for that: the build costs 0.7-3 s and may not certify, which a
caller that changes ``delta`` between calls would pay on every call. It uses that table
if one is already cached (its start is the closest), else builds a start table
(:func:`_start_table`): the same coordinate, kink knots, sentinel pieces and check
grid, but about 5700 cubic pieces of width ``1/4`` in ``s``, whose values are not
certified (errors ``1e-8``-``1e-4``; ``1e-4`` next to the ``v log v`` kinks of reverse
KL and JS). It costs 0.1-0.3 s (0.5 s for JS, whose exact solves are the slowest),
once per ``(divergence, delta)`` (cached, least recently used out). Correctness does
not rest on the start: the build certifies the number of Newton steps from it that
reach ``1e-12`` (relative for ``upper``, absolute for ``lower``) against the
safeguarded solver at every point of the dense check grid (the error peaks of every
piece and 256 points on each side of each kink), exactly as for the fast tables. At
``delta = 0.05``: one step per end for KL, chi2, Neyman chi2, TV, triangular,
Jeffreys, ``alpha(2)``, ``alpha(-1)`` and ``alpha(3)``; two for Hellinger and
``alpha(1/2)`` (Newton in ``sqrt(v)``, see :func:`bandtheory.bounds._newton_power`);
four for reverse KL and JS, whose starts next to the kinks are the worst. The fast
tables, about 100 times closer, need as many steps where they exist (not for reverse
KL and JS), so a start table costs exact mode nothing per call; only its build. If
no count up to six certifies (then again with width
``1/16``), the start table is ``None``, cached too, and exact mode runs the
safeguarded solver for that ``(divergence, delta)``: a failure is paid for once (about
1.3 s). That happens, e.g., for ``alpha(3)`` at ``delta = 2``, where ``G`` overflows
beside the root for ``p`` near ``1e-307`` and fixed Newton steps cycle there.

What does not certify, and why (measured at ``delta = 0.05`` on the probe around the
kinks): reverse KL and Jensen-Shannon, whose ``f(v) - f(0)`` behaves like ``v log v``
as ``v -> 0``, so ``lower`` leaves its saturation kink like ``e / log(1/e)`` (``e`` the
distance to the kink) and the upper bound mirrors it at ``1 - x_sat``. No polynomial
resolves that: the error falls only like ``h^1.2`` with the width ``h``, and by a
constant factor with the degree. Reverse KL's ``lower`` (degree, width): ``3.5e-5``
at ``(2, 1/32)``, ``6.5e-6`` at ``(2, 1/128)``, ``1.2e-6`` at ``(2, 1/512)``;
``1.7e-6``, ``3.3e-7``, ``6.8e-8`` at degree 4 and widths ``1/128``, ``1/512``,
``1/2048``. JS: ``2.4e-5`` at ``(2, 1/32)``, ``4.6e-8`` at ``(4, 1/2048)``. A uniform
table at width ``1/2048`` over the whole range has 2.9 million pieces (about 230 MB,
and a build of about 100 s), so these two stay on the exact mode (fast mode gives up
on them in under half a second); a graded mesh at the kinks would tabulate them.

``mode="compiled"``. The same table and the same evaluation code
(:func:`_evaluate`, :func:`_evaluate_biting`), traced by ``torch.compile`` (inductor)
for torch tensors into one fused loop: no chunks and no temporaries, 2.6-2.7 ms per
million float32 tokens on this machine's two CPU threads against 7-10 ms for the eager
evaluation (``bandtheory bench``). Shapes are dynamic and the table enters as numbers
(:class:`_Geometry`) and a coefficient tensor, so one kernel per input dtype and device
serves every batch size and every ``(divergence, delta)`` of the same degree. The
first call compiles (about 15 s with an empty torch cache, 2-4 s from torch's on-disk
cache); where that fails (no C++ compiler, no triton on CUDA) the eager evaluation runs
instead with a :class:`CompileFallbackWarning`. Values equal fast mode's to a few
float64 ulps (vectorised ``exp`` / ``log``), so the certificate holds unchanged.

References:
    BandPO (arXiv 2603.04918); THEORY.md section 2 (mirror identity, limits).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import divergences as _div
from .bounds import LOG_P_MIN, _check_delta, _polish_side, _saturation_value, _solve_side

__all__ = ["BandTable", "TableFallbackWarning", "CompileFallbackWarning", "band_table",
           "biting_bound", "TOLERANCE"]

#: Certified bound on the table's error (relative for ``upper``, absolute for ``lower``).
TOLERANCE = 1e-7
#: Accuracy that the certified number of Newton steps must reach (exact mode).
POLISH_TOLERANCE = 1e-12
# The error of the polish is largest next to a saturation kink (``lower`` -> 0 there, so
# the table's absolute error is a large relative error of the start): the build checks
# 256 extra points on each side of each kink.
_POLISH_MARGIN = 1.0

# Top of the fitted pieces: s(-tiny) = 708.396 (1 - p the smallest normal double), so
# every normal 1 - p is fitted (Jeffreys' lower bound still moves by 8e-7 between
# 1 - p = 1e-304 and 3e-308: it tends to r* = 1 only like 1/log(1/(1 - p))). Above, a
# sentinel piece holds the p = 1 limit [r*, 1]: exact for p = 1 and to rounding for
# subnormal 1 - p wherever lower converges to r* like a power of 1 - p.
_S_HI = 708.5
# V of the top sentinel: e^V underflows to 0 (upper = 1 exactly), and V is finite, so the
# branch-free biting evaluation 1 + e^V - V + V returns exactly 1.
_V_TOP = -800.0
# (degree, largest width) tried in order; the width shrinks so that the kinks are knots.
_SPECS = ((2, 1.0 / 32.0), (2, 1.0 / 64.0), (3, 1.0 / 16.0), (3, 1.0 / 32.0))
_PROBE = 40.0  # |s| range of the quick certifiability probe
_MAX_POLISH_STEPS = 6


@dataclass(frozen=True, eq=False)
class BandTable:
    """A certified piecewise-polynomial table of the Band for one ``(divergence, delta)``.

    Attributes:
        divergence: The registry entry.
        delta: The trust-region radius.
        degree: Degree of the pieces (2 or 3).
        origin: ``s`` of knot 0.
        width: Piece width ``h`` in ``s``.
        coef_lower: ``[degree + 1, n]`` monomial coefficients (local ``z`` in
            ``[0, 1)``) of ``L``.
        coef_v: ``[degree + 1, n]`` coefficients of ``V = log(upper - 1)``.
        max_error: Certified maximum error on the check grid: relative for ``upper``,
            absolute for ``lower`` (the larger of the two).
        max_rel_error_upper: Its ``upper`` part.
        max_abs_error_lower: Its ``lower`` part.
        n_checked: Number of check points (per function).
        polish_steps: Newton steps ``(lower, upper)`` from the table that reach
            :data:`POLISH_TOLERANCE` on the check grid (used by ``mode="exact"`` for
            large inputs); ``None`` if six steps do not (exact mode then does not
            start from the table).
        polish_error: The error those steps reached on the check grid.
    """

    divergence: _div.Divergence
    delta: float
    degree: int
    origin: float
    width: float
    coef_lower: np.ndarray = field(repr=False)
    coef_v: np.ndarray = field(repr=False)
    max_error: float
    max_rel_error_upper: float
    max_abs_error_lower: float
    n_checked: int
    polish_steps: tuple[int, int] | None = None
    polish_error: float = math.inf

    @property
    def n_pieces(self) -> int:
        """Number of polynomial pieces (including the sentinel pieces below ``log(tiny)``
        and above the fitted range)."""
        return int(self.coef_lower.shape[1])


# --------------------------------------------------------------------------------------
# The coordinate and exact values through the solver of bounds.py (float64 numpy)
# --------------------------------------------------------------------------------------


def _s_of_t(t: np.ndarray) -> np.ndarray:
    """The table coordinate ``s = t - log(-t)`` (``|t|``: a rounding above 0 acts as ``p ~ 1``)."""
    with np.errstate(all="ignore"):
        return t - np.log(np.abs(t))


def _t_of_s(s: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_s_of_t` on ``t < 0``: Newton in ``u = log(-t)``.

    ``h(u) = -e^u - u - s`` is decreasing and concave, so Newton converges monotonically
    from the right after at most one step; ``u`` is capped where ``e^u`` stays finite.
    """
    s = np.asarray(s, dtype=np.float64)
    u = np.where(s > 0.0, -s, np.log(np.maximum(-s, 1.0)))
    for _ in range(100):
        e = np.exp(u)
        u_next = np.minimum(u + (-e - u - s) / (e + 1.0), 7.0)
        if np.array_equal(u_next, u):
            break
        u = u_next
    return -np.exp(u)


def _masses(xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p, 1 - p)`` from the logit, each without cancellation."""
    e = np.exp(-np.abs(xi))  # <= 1
    small = e / (1.0 + e)
    large = 1.0 / (1.0 + e)
    neg = xi < 0
    return np.where(neg, small, large), np.where(neg, large, small)


def _logp_of_logit(xi: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(xi < 0, xi - np.log1p(np.exp(np.minimum(xi, 0.0))),
                        -np.log1p(np.exp(-np.abs(xi))))


def _exact_lv(div: _div.Divergence, delta: float, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(L, V)`` at log-probabilities ``t`` (the safeguarded solver of bounds.py).

    ``upper - 1 = (1 - p)(1 - e^{-y}) / p``, so ``V`` is formed from logarithms of
    uncancelled factors: ``log(-expm1(t)) - t + log(-expm1(-y))``.
    """
    p = np.exp(t)
    q = -np.expm1(t)
    with np.errstate(all="ignore"):
        y_lo = _solve_side(np, div, p, q, delta, early_exit=True)
        y_up = _solve_side(np, div, q, p, delta, early_exit=True)
        return np.exp(-y_lo), np.log(q) - t + np.log(-np.expm1(-y_up))


def _saturation_logit(div: _div.Divergence, delta: float) -> float | None:
    """``xi_s``: the largest logit with ``lower = 0`` (``None`` if no kink in ``(0, 1)``)."""
    if math.isinf(div.f_at_0):
        return None

    def excess(xi: float) -> float:
        p, q = _masses(np.asarray([xi]))
        with np.errstate(all="ignore"):
            value = _saturation_value(np, div, p, q, q > 0, np.where(q > 0, q, 1.0))
        return float(value[0]) - delta

    lo, hi = LOG_P_MIN, _S_HI  # G(inf) of the lower side grows with p
    if excess(lo) > 0 or excess(hi) <= 0:
        return None  # never saturated, or saturated everywhere (lower = 0, upper = 1/p)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) <= 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def _kinks(div: _div.Divergence, delta: float) -> list[float]:
    """``s`` of the two saturation kinks (``lower`` at ``x_sat``, ``upper`` at ``1 - x_sat``)."""
    xi_s = _saturation_logit(div, delta)
    if xi_s is None:
        return []
    t = _logp_of_logit(np.asarray([xi_s, -xi_s]))
    return sorted(set(_s_of_t(t).tolist()))


# --------------------------------------------------------------------------------------
# Building and certifying
# --------------------------------------------------------------------------------------


def _nodes(degree: int) -> np.ndarray:
    """Chebyshev points of the first kind on ``[0, 1]`` (the interpolation nodes)."""
    k = np.arange(degree + 1)
    return 0.5 - 0.5 * np.cos((2 * k + 1) * math.pi / (2 * (degree + 1)))


def _checks(degree: int) -> np.ndarray:
    """Check points in a piece: where the interpolation error peaks and between.

    The error of interpolation at the nodes is ``f^(d+1)(c)/(d+1)! prod(z - z_k)``,
    whose product is a Chebyshev polynomial ``T_(d+1)`` with extrema at
    ``0.5 - 0.5 cos(k pi/(d+1))`` (both piece ends included; the right end is taken
    just inside, so it is evaluated with this piece); the midpoints between them are
    checked too. None of them is a node.
    """
    k = np.arange(degree + 2)
    peaks = 0.5 - 0.5 * np.cos(k * math.pi / (degree + 1))
    peaks[-1] = 1.0 - 1e-9
    mids = 0.5 * (peaks[1:] + peaks[:-1])
    return np.sort(np.concatenate([peaks, mids]))


def _fit(div: _div.Divergence, delta: float, degree: int, width: float,
         knots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monomial coefficients ``[degree + 1, n]`` of ``L`` and ``V`` on pieces at ``knots``."""
    nodes = _nodes(degree)
    t = _t_of_s((knots[:, None] + width * nodes[None, :]).reshape(-1))
    lower, v = _exact_lv(div, delta, t)
    vander = np.vander(nodes, degree + 1, increasing=True)
    n = knots.size
    coef_lower = np.linalg.solve(vander, lower.reshape(n, degree + 1).T)
    coef_v = np.linalg.solve(vander, v.reshape(n, degree + 1).T)
    return np.ascontiguousarray(coef_lower), np.ascontiguousarray(coef_v)


@dataclass(frozen=True)
class _Check:
    """A candidate table against the exact solver on a check grid: the largest errors
    (a NaN counts as ``inf``) and the log-probabilities where they occur."""

    err_upper: float  # relative
    err_lower: float  # absolute
    t_upper: float
    t_lower: float
    exact_lower: np.ndarray = field(repr=False)
    exact_upper: np.ndarray = field(repr=False)

    @property
    def error(self) -> float:
        return max(self.err_upper, self.err_lower)

    def describe(self) -> str:
        p_up, p_lo = math.exp(self.t_upper), math.exp(self.t_lower)
        return (f"relative error of upper {self.err_upper:.2e} (at p = {p_up:.3g}), "
                f"absolute error of lower {self.err_lower:.2e} (at p = {p_lo:.3g})")


def _errors(div, delta, t, approx_lo, approx_up) -> _Check:
    """Relative error of upper and absolute error of lower against the exact solver."""
    exact_lo, exact_v = _exact_lv(div, delta, t)
    with np.errstate(all="ignore"):
        exact_up = 1.0 + np.exp(exact_v)
        rel_up = np.where(approx_up == exact_up, 0.0, np.abs(approx_up / exact_up - 1.0))
    err_lo = np.abs(approx_lo - exact_lo)
    rel_up = np.where(np.isnan(rel_up), math.inf, rel_up)
    err_lo = np.where(np.isnan(err_lo), math.inf, err_lo)
    i_up, i_lo = int(np.argmax(rel_up)), int(np.argmax(err_lo))
    return _Check(float(rel_up[i_up]), float(err_lo[i_lo]), float(t[i_up]), float(t[i_lo]),
                  exact_lo, exact_up)


def _probe_windows(kinks: list[float]) -> list[tuple[float, float]]:
    """``s`` ranges of the cheap probe, most likely failure first: each saturation kink
    (where ``v log v`` generators fail), both ends of the fitted range (the ``p -> 0``
    and ``p -> 1`` regimes, where a slowly converging solver or limit shows first) and
    where the curvature is (``|s| <= 40``)."""
    s_lo = float(_s_of_t(np.asarray(LOG_P_MIN)))
    windows = [(k - 1.0, k + 1.0) for k in kinks]
    return windows + [(s_lo, s_lo + 8.0), (_S_HI - 8.0, _S_HI), (-_PROBE, _PROBE)]


def _probe(div: _div.Divergence, delta: float, degree: int, width: float, anchor: float,
           windows: list[tuple[float, float]]) -> _Check:
    """Table error on the pieces of a few ``s`` windows (direct evaluation): a cheap
    rejection test, a few percent of a full build. Stops at the first window that
    fails (its check is returned), else returns the worst window's check."""
    worst = None
    for a, b in windows:
        knots = anchor + width * np.arange(math.floor((a - anchor) / width),
                                           math.ceil((b - anchor) / width))
        coef_lower, coef_v = _fit(div, delta, degree, width, knots)
        z = _checks(degree)
        powers = z[None, :] ** np.arange(degree + 1)[:, None]  # [degree + 1, checks]
        approx_lo = (coef_lower.T @ powers).reshape(-1)
        with np.errstate(all="ignore"):
            approx_up = 1.0 + np.exp((coef_v.T @ powers).reshape(-1))
        t = _t_of_s((knots[:, None] + width * z[None, :]).reshape(-1))
        check = _errors(div, delta, t, approx_lo, approx_up)
        if not check.error <= TOLERANCE:
            return check
        if worst is None or check.error > worst.error:
            worst = check
    return worst


def _layout(div: _div.Divergence, delta: float, width: float) -> tuple[list[float], float, np.ndarray]:
    """The saturation kinks, the piece width (``<= width``, shrunk so that both kinks
    are knots) and the knots of the whole fitted range.

    Knot ``j0`` is the first one ``<= s(log(tiny))``; the sentinel piece 0 below it is
    added by :func:`_assemble`.
    """
    kinks = _kinks(div, delta)
    anchor = kinks[0] if kinks else 0.0
    if len(kinks) == 2:
        span = kinks[1] - kinks[0]
        width = span / math.ceil(span / width)  # both kinks are knots
    j0 = math.floor((float(_s_of_t(np.asarray(LOG_P_MIN))) - anchor) / width)
    j1 = math.ceil((_S_HI - anchor) / width)
    return kinks, float(width), anchor + width * np.arange(j0, j1, dtype=np.float64)


def _assemble(div: _div.Divergence, delta: float, degree: int, width: float,
              knots: np.ndarray) -> BandTable:
    """Fit the pieces at ``knots`` and close the range with the two sentinel pieces
    (errors not yet measured: ``inf``)."""
    coef_lower, coef_v = _fit(div, delta, degree, width, knots)
    # Piece 0: L = 0, V = 1e300 give [0, inf] for p = 0 and subnormal p (e^V overflows
    # to upper = inf; V stays finite for _evaluate_biting).
    bottom_lo = np.zeros((degree + 1, 1))
    bottom_v = bottom_lo.copy()
    bottom_v[0] = 1e300
    # Top sentinel: the p = 1 limit [r*, 1] (the exact solver's perspective limit).
    r_star, _ = _exact_lv(div, delta, np.asarray([0.0]))
    top_lo = np.zeros((degree + 1, 1))
    top_lo[0] = r_star[0]
    top_v = np.zeros((degree + 1, 1))
    top_v[0] = _V_TOP
    coef_lower = np.ascontiguousarray(np.concatenate([bottom_lo, coef_lower, top_lo], axis=1))
    coef_v = np.ascontiguousarray(np.concatenate([bottom_v, coef_v, top_v], axis=1))
    return BandTable(div, delta, degree, float(knots[0] - width), float(width), coef_lower,
                     coef_v, math.inf, math.inf, math.inf, 0)


def _check_grid(degree: int, width: float, knots: np.ndarray, kinks: list[float]) -> np.ndarray:
    """Log-probabilities of the dense check grid: the error peaks (and the points between
    them) of every fitted piece, 256 points on each side of each kink, the top of the
    fitted range and ``p = 1``."""
    z = _checks(degree)
    s_chk = [(knots[:, None] + width * z[None, :]).reshape(-1)]
    for kink in kinks:  # 256 more checks on each side of each kink
        near = width * (np.arange(1, 257) / 256.0 - 1e-3)
        s_chk += [kink + near, kink - near]
    t_chk = _t_of_s(np.concatenate(s_chk))
    # Below log(tiny) exact mode reports [0, inf] and the sentinel piece agrees; a check
    # point there (the first knot rounds below it) would compare the sentinel with the
    # solver's finite root instead.
    t_chk = t_chk[t_chk >= LOG_P_MIN]
    # The top of the fitted range and p = 1 (the top sentinel). Subnormal 1 - p is not
    # checked: there the exact solver's b f(1 + c/b) overflows for f ~ u log u
    # (reverse KL, Jeffreys) and its own values are off by up to 7e-5.
    return np.concatenate([t_chk, [-1e-290, -1e-304, -np.finfo(np.float64).tiny, -0.0, 0.0]])


def _measured(table: BandTable, t_chk: np.ndarray) -> tuple[BandTable, _Check]:
    """``table`` with its errors on the check grid ``t_chk`` recorded, and the check."""
    with np.errstate(all="ignore"):
        approx_lo, approx_up = _evaluate(np, table, t_chk, coefs=_evaluation_coefficients(table))
    check = _errors(table.divergence, table.delta, t_chk, approx_lo, approx_up)
    return dataclasses.replace(table, max_error=check.error, max_rel_error_upper=check.err_upper,
                               max_abs_error_lower=check.err_lower,
                               n_checked=int(t_chk.size)), check


def _with_polish(table: BandTable, t_chk: np.ndarray, check: _Check) -> BandTable:
    """``table`` with its certified Newton step counts (``None`` if none up to
    :data:`_MAX_POLISH_STEPS` reaches :data:`POLISH_TOLERANCE` on the check grid)."""
    steps, polish_err = _certify_polish(table, t_chk, check.exact_lower, check.exact_upper)
    if polish_err > POLISH_TOLERANCE * _POLISH_MARGIN:
        steps = None  # exact mode then does not start from this table
    return dataclasses.replace(table, polish_steps=steps, polish_error=polish_err)


def _build(div: _div.Divergence, delta: float, degree: int,
           width: float) -> tuple[BandTable | None, _Check, str]:
    """The full table for one specification, its check and the grid checked
    (``"probe"``: the probe rejected it and no table is built; ``"full"``)."""
    kinks, width, knots = _layout(div, delta, width)
    anchor = kinks[0] if kinks else 0.0
    probe = _probe(div, delta, degree, width, anchor, _probe_windows(kinks))
    if not probe.error <= TOLERANCE:
        return None, probe, "probe"
    t_chk = _check_grid(degree, width, knots, kinks)
    table, check = _measured(_assemble(div, delta, degree, width, knots), t_chk)
    if not table.max_error <= TOLERANCE:
        return table, check, "full"
    return _with_polish(table, t_chk, check), check, "full"


# --------------------------------------------------------------------------------------
# Start tables: exact mode's Newton starts (uncertified values, certified step counts)
# --------------------------------------------------------------------------------------

# (degree, largest width) of the start tables, tried in order: about 5700 cubic pieces
# (a build of 0.1-0.3 s with its check, 0.5 s for JS; one Newton step per end for KL,
# where width 1/2 needs two on the lower end), then a finer one for a divergence whose
# start is too far for the fixed steps (about 1 s more, paid once per (divergence, delta)).
_START_SPECS = ((3, 0.25), (3, 0.0625))


@functools.lru_cache(maxsize=64)
def _start_table(div: _div.Divergence, delta: float) -> BandTable | None:
    """A coarse start table for exact mode (``None`` if no step count certifies).

    Built like a fast table (same coordinate, kinks as knots, sentinel pieces, check
    grid) but coarse: its values are not certified (``max_error`` records the error
    measured on the check grid, typically ``1e-6``-``1e-4``) and it is never used as a
    fast table. What is certified is :attr:`BandTable.polish_steps`: the number of
    Newton steps from it that reach :data:`POLISH_TOLERANCE` against the safeguarded
    solver on the whole check grid. Cached (least recently used, 64 entries of about
    370 kB), failures included, so a ``(divergence, delta)`` that does not certify is
    paid for once and then runs the safeguarded solver.
    """
    for degree, width in _START_SPECS:
        kinks, width, knots = _layout(div, delta, width)
        t_chk = _check_grid(degree, width, knots, kinks)
        table, check = _measured(_assemble(div, delta, degree, width, knots), t_chk)
        table = _with_polish(table, t_chk, check)
        if table.polish_steps is not None:
            return table
    return None


def _exact_start(div: _div.Divergence, delta: float) -> BandTable | None:
    """The table exact mode starts its certified Newton steps from (large inputs).

    The fast table if one is already cached with certified steps (its start is closer:
    fewer steps); else the start table, built on first use; ``None`` if that does not
    certify either (exact mode then runs the safeguarded solver). Never builds the fast
    table, whose build (0.7-3 s, and it may not certify) a caller that changes ``delta``
    between calls would pay on every call.
    """
    table = _CACHE.table((div, delta))
    if table is not None and table.polish_steps is not None:
        return table
    return _start_table(div, delta)


def _certify_polish(table: BandTable, t: np.ndarray, exact_lo: np.ndarray,
                    exact_up: np.ndarray) -> tuple[tuple[int, int], float]:
    """The fewest Newton steps from the table (per side) that reach POLISH_TOLERANCE
    on the check grid ``t`` (``k`` = :data:`_MAX_POLISH_STEPS` and its error if none
    does; a NaN counts as an infinite error).

    The steps are taken one at a time, the error measured after each: ``k`` single
    steps of :func:`bandtheory.bounds._polish_side` give what ``steps=k`` gives (it
    carries nothing from one step to the next but ``y``; saturated entries are ``inf``
    either way), at a fraction of the cost of restarting for every ``k``.
    """
    div, delta = table.divergence, table.delta
    inside = t < 0.0
    t, exact_lo, exact_up = t[inside], exact_lo[inside], exact_up[inside]
    with np.errstate(all="ignore"):
        lower0, v = _evaluate_parts(np, table, t, _evaluation_coefficients(table))
    p, q = np.exp(t), -np.expm1(t)
    fin = np.isfinite(exact_up)

    def error(side: str, y: np.ndarray) -> float:
        if side == "lower":
            err = np.abs(np.exp(-y) - exact_lo)
        else:
            up = np.where(np.isinf(y), 1.0 / p, 1.0 + q * -np.expm1(-y) / p)
            up = np.where(q > 0, up, 1.0)
            err = np.abs(up[fin] / exact_up[fin] - 1.0)
        worst = float(np.max(err, initial=0.0))
        return math.inf if math.isnan(worst) else worst

    steps = []
    worst = 0.0
    for side in ("lower", "upper"):
        with np.errstate(all="ignore"):
            if side == "lower":
                a, b, y = p, q, y_start_lower(np, lower0)
            else:
                a, b, y = q, p, y_start_upper(np, v, t)
            for k in range(1, _MAX_POLISH_STEPS + 1):
                y = _polish_side(np, div, a, b, delta, y, safeguard=False, steps=1)
                err = error(side, y)
                if err <= POLISH_TOLERANCE * _POLISH_MARGIN:
                    break
        steps.append(k)
        worst = max(worst, err)
    return (steps[0], steps[1]), worst


def y_start_lower(xp: Any, lower0: Any) -> Any:
    """Lower-side Newton start ``y = -log(lower)`` from the table, kept in ``(0, 37]``."""
    return -xp.log(lower0.clip(1e-16, 1.0 - 1e-16))


def y_start_upper(xp: Any, v: Any, t: Any, log_q: Any = None) -> Any:
    """Upper-side Newton start ``y = -log(1 - e^W)`` from the table's ``V`` and ``t = log p``
    (``log_q``: ``log(1 - p)`` where the caller has it).

    ``W = V + t - log(1 - p) = log(1 - lower(1 - p))`` (mirror identity).
    ``-log1p(-e^W)`` keeps the relative accuracy of a tiny ``y`` (very negative ``W``,
    ``upper - 1 ~ sqrt(delta / p)`` for Pearson chi2 at tiny ``p``). For ``W`` near ``0``
    (large ``y``, near saturation) the rounding of ``e^W`` costs an absolute error of
    ``1e-16`` in ``W``, far below the table's own error in ``V``.
    """
    if log_q is None:
        log_q = xp.log(-xp.expm1(t))
    w = (v + t - log_q).clip(-1e300, -1e-16)
    return -xp.log1p(-xp.exp(w))


# --------------------------------------------------------------------------------------
# Evaluation (one code path for every array namespace)
# --------------------------------------------------------------------------------------


class _Packed:
    """Coefficients packed as rows ``[m, k (degree + 1)]``: every coefficient of a piece
    in one row (see :func:`_polys`)."""

    __slots__ = ("rows",)

    def __init__(self, rows: Any) -> None:
        self.rows = rows


def _polys(coefs: Any, index: Any, z: Any, degree: int) -> list[Any]:
    """Horner evaluation of each token's piece of every tabulated function.

    Only the spelling of the gathers and of a Horner step differs between backends and
    layouts (the maths does not). ``coefs`` is ``[k (degree + 1), m]``: for each of the
    ``k`` functions its ``degree + 1`` coefficient rows, each contiguous
    (:func:`_coefficients`), gathered one at a time and used while in cache. NumPy's
    fastest gather is the ``take`` method, followed by two in-place passes; torch's is
    ``index_select``, and its step one fused in-place ``addcmul_`` into the gathered
    row. Or ``coefs`` is :class:`_Packed` (torch, two functions, several CPU threads or
    an accelerator): one ``index_select`` of whole rows, then ``addcmul`` on strided
    columns. Measured per 1e6 tokens in chunks of 65,536 (torch CPU, two quadratics):
    one thread, 8.8 ms row by row against 16 ms packed; two threads, 7.8 ms packed
    against 9.8 ms (``index_select`` of one row does not use the second thread). For
    one function row by row is the faster at either thread count (3.2-3.4 ms). The
    array-API ``take`` wrapper is avoided: it costs several times more per call on
    torch.
    """
    if isinstance(coefs, _Packed):
        rows = coefs.rows.index_select(0, index)
        out = []
        for first in range(0, int(rows.shape[1]), degree + 1):
            acc = rows[:, first + degree]
            for k in range(degree - 1, -1, -1):
                acc = rows[:, first + k].addcmul(acc, z)
            out.append(acc)
        return out
    torch_like = hasattr(coefs, "index_select")
    out = []
    for first in range(0, int(coefs.shape[0]), degree + 1):
        if torch_like:
            acc = coefs[first + degree].index_select(0, index)
            for k in range(degree - 1, -1, -1):
                acc = coefs[first + k].index_select(0, index).addcmul_(acc, z)
        else:
            acc = coefs[first + degree].take(index)
            for k in range(degree - 1, -1, -1):
                acc *= z
                acc += coefs[first + k].take(index)
        out.append(acc)
    return out


def _locate(xp: Any, table: BandTable, t: Any, tol: float = math.inf) -> tuple[Any, Any]:
    """Piece index and local coordinate ``z`` in ``[0, 1)`` of float64 ``t`` (1-D).

    An invalid ``t`` (NaN, or above ``tol``: ``+inf`` and positive log-probabilities
    beyond rounding) would give a NaN coordinate, whose cast to an integer is
    undefined (``-2^63`` on CPU, an out-of-bounds gather; a device-side assert on
    CUDA). Its index is ``n_pieces`` instead: the all-NaN piece that the evaluation
    coefficients (:func:`_coefficients`) carry after the last real piece, so every
    polynomial of the token evaluates to NaN (no host synchronisation, no branch, one
    select). ``-inf`` stays valid (piece 0, the ``[0, inf]`` sentinel).

    The clips are the arrays' own ``clip`` methods (NumPy and torch have them): the
    array-API wrapper costs more than the pass itself on a cache-sized chunk.
    """
    n = table.n_pieces
    s = xp.log(xp.abs(t))
    s = t - s
    s *= 1.0 / table.width
    s -= table.origin / table.width
    z = s.clip(0.0, n - 1e-6)
    index = xp.astype(xp.where(t <= tol, z, float(n)), xp.int64)  # NaN compares false
    z -= xp.astype(index, z.dtype)  # truncation is floor for z >= 0
    return index, z


def _evaluate_parts(xp: Any, table: BandTable, t: Any, coefs: Any, tol: float = math.inf):
    """``(L, V)`` at float64 log-probabilities ``t`` (1-D; NaN where ``t`` is invalid)."""
    index, z = _locate(xp, table, t, tol)
    lower, v = _polys(coefs, index, z, table.degree)
    return lower, v


def _evaluate(xp: Any, table: BandTable, t: Any, *, coefs: Any,
              tol: float = math.inf):
    """Fast ``(lower, upper)`` in float64 at float64 log-probabilities ``t`` (1-D);
    NaN at both ends where ``t`` is NaN or above ``tol``."""
    lower, v = _evaluate_parts(xp, table, t, coefs, tol)
    upper = xp.exp(v)
    upper += 1.0
    return lower.clip(0.0, 1.0), upper


def _evaluate_biting(xp: Any, table: BandTable, t: Any, positive: Any, coefs: Any,
                     tol: float = math.inf):
    """``upper`` where ``positive``, else ``lower``: one polynomial per token.

    Branch-free (a select on a random mask costs several times an arithmetic pass):
    the piece index is offset into the ``V`` half of the stacked table by ``n * pos``,
    and ``P + pos (1 + e^P - P)`` is ``upper = 1 + e^V`` or ``lower = L`` (exactly, or
    to a few ulps of ``upper``). The sentinels' ``V`` are finite for that reason.
    NaN where ``t`` is NaN or above ``tol``.
    """
    index, z = _locate(xp, table, t, tol)
    pos = xp.astype(positive, xp.int64)
    pos *= table.n_pieces + 1  # each half carries its NaN piece
    index += pos
    (value,) = _polys(coefs, index, z, table.degree)
    bound = xp.exp(value)
    bound += 1.0
    bound -= value
    bound *= xp.astype(positive, value.dtype)
    bound += value
    return bound.clip(0.0, math.inf)


class TableFallbackWarning(UserWarning):
    """Fast mode found no certified table for a ``(divergence, delta)``.

    The values returned are the exact mode's (correct to ``1e-12``, at exact-mode
    cost), so nothing is wrong with them; the warning says that the speed of fast mode
    is not available for this ``(divergence, delta)`` and why (the error the best
    table reached, from :func:`band_table`'s ``ValueError``). It is emitted once per
    ``(divergence, delta)`` and process. Silence it with
    ``warnings.filterwarnings("ignore", category=TableFallbackWarning)``, or ask for
    ``mode="exact"``.
    """


class _TableCache:
    """Built tables and failed builds per ``(divergence, delta)``, least recently used
    out: 32 tables (about 2 MB each) and 256 failures (one message each, so a failed
    build is paid for once). Thread-safe lookups; two threads may build the same table
    at once (the result is the same)."""

    def __init__(self, max_tables: int = 32, max_failures: int = 256) -> None:
        self._lock = threading.Lock()
        self._tables: OrderedDict[tuple[Any, float], BandTable] = OrderedDict()
        # key -> [message, warned]
        self._failures: OrderedDict[tuple[Any, float], list[Any]] = OrderedDict()
        self._limits = (max_tables, max_failures)

    def _touch(self, store: OrderedDict, key: tuple[Any, float]) -> Any:
        value = store.get(key)
        if value is not None:
            store.move_to_end(key)
        return value

    def table(self, key: tuple[Any, float]) -> BandTable | None:
        with self._lock:
            return self._touch(self._tables, key)

    def failure(self, key: tuple[Any, float]) -> list[Any] | None:
        with self._lock:
            return self._touch(self._failures, key)

    def add(self, key: tuple[Any, float], value: BandTable | str) -> None:
        with self._lock:
            if isinstance(value, BandTable):
                store, limit = self._tables, self._limits[0]
                store[key] = value
            else:
                store, limit = self._failures, self._limits[1]
                store[key] = [value, False]
            while len(store) > limit:
                store.popitem(last=False)

    def claim_warning(self, key: tuple[Any, float]) -> str | None:
        """The failure message if no warning was emitted for ``key`` yet (marks it)."""
        with self._lock:
            entry = self._failures.get(key)
            if entry is None or entry[1]:
                return None
            entry[1] = True
            return entry[0]


_CACHE = _TableCache()


def _certified_table(div: _div.Divergence, delta: float) -> BandTable:
    """Build the first specification of ``_SPECS`` that certifies; ``ValueError`` (with
    the best error reached and where) if none does."""
    tried = []
    certified = None
    for degree, width in _SPECS:
        if certified is not None and degree == certified.degree:
            continue
        table, check, grid = _build(div, delta, degree, width)
        if table is not None and table.max_error <= TOLERANCE:
            if table.polish_steps is not None:
                return table
            if certified is not None:
                return certified
            # Certified, but its start is not close enough for the fixed Newton steps
            # of exact mode (a G far from linear in the Newton variable next to a
            # saturation kink, where lower is tiny): one build of the next
            # degree, whose smaller error usually is.
            certified = table
            continue
        tried.append((check.error, degree, width, grid, check))
    if certified is not None:
        return certified
    error, degree, width, grid, check = min(tried, key=lambda item: item[0])
    raise ValueError(
        f"no fast table certified for {div.name} at delta={delta:g}: the certificate needs "
        f"an error <= {TOLERANCE:g}, and the best of the {len(tried)} (degree, width) tried "
        f"(degree {degree}, width {width:.4g} in s, {grid} check grid) reached {check.describe()}; "
        "mode='fast' returns the exact mode's values for it (use mode='exact')"
    )


def _cached_table(div: _div.Divergence, delta: float) -> BandTable:
    """The cached table, built on first use; a failed build is cached and re-raised."""
    key = (div, delta)
    table = _CACHE.table(key)
    if table is not None:
        return table
    failure = _CACHE.failure(key)
    if failure is not None:
        raise ValueError(failure[0])
    try:
        table = _certified_table(div, delta)
    except ValueError as exc:
        _CACHE.add(key, str(exc))
        raise
    _CACHE.add(key, table)
    return table


def _cached_table_or_none(div: _div.Divergence, delta: float) -> BandTable | None:
    """The fast table if one is already built for ``(div, delta)``; never builds."""
    return _CACHE.table((div, delta))


def _table_or_none(div: _div.Divergence, delta: float, *, stacklevel: int = 3) -> BandTable | None:
    """Fast mode's table: built on first use; ``None`` (and, once per ``(div, delta)``, a
    :class:`TableFallbackWarning`) where none certifies. ``stacklevel`` as for
    :func:`warnings.warn`, counted from here (3: the caller of the public function)."""
    try:
        return _cached_table(div, delta)
    except ValueError:
        message = _CACHE.claim_warning((div, delta))
        if message is not None:
            warnings.warn(message, TableFallbackWarning, stacklevel=stacklevel)
        return None


def band_table(divergence: str | _div.Divergence = "kl", *, delta: float = 0.05) -> BandTable:
    """The certified table for ``(divergence, delta)``, built once and cached.

    The cache is bounded (the 32 most recently used tables, about 2 MB each). Building
    costs about a second (exact solves at the fitting nodes and on the check grid);
    a specification that cannot certify is rejected by a cheap probe first, and a
    failure is cached too. Once built, the table also serves ``mode="exact"`` for
    large inputs (its certified Newton steps); exact mode never builds one itself (it
    builds its own, much smaller, start table; see the module docstring).

    Args:
        divergence: A registry name or entry.
        delta: Trust-region radius ``> 0``.

    Returns:
        The :class:`BandTable`, whose ``max_error`` is ``<= 1e-7``.

    Raises:
        ValueError: ``"no fast table certified ..."`` if no (degree, width) reaches
            ``1e-7``, with the best error reached and where (e.g. reverse KL and JS,
            whose ``lower`` behaves like ``v log v`` at the saturation point; see the
            module docstring). The failure is cached: raising again costs nothing.
    """
    return _cached_table(_div.get(divergence), _check_delta(delta))


def _with_nan_piece(coef: np.ndarray) -> np.ndarray:
    """``[degree + 1, n]`` coefficients with a NaN piece ``n`` appended (see :func:`_locate`)."""
    return np.concatenate([coef, np.full((coef.shape[0], 1), math.nan)], axis=1)


def _evaluation_coefficients(table: BandTable, stacked: bool = False) -> np.ndarray:
    """The evaluation coefficients on NumPy, contiguous rows for :func:`_polys`, each
    piece table with the NaN piece ``n`` appended: ``[2 (degree + 1), n + 1]``, the
    ``L`` rows then the ``V`` rows, or (``stacked``, one polynomial per token)
    ``[degree + 1, 2 (n + 1)]``, the ``L`` pieces then the ``V`` pieces. Uncached: the
    build's candidate tables use it once each."""
    lo, v = _with_nan_piece(table.coef_lower), _with_nan_piece(table.coef_v)
    return np.ascontiguousarray(np.concatenate([lo, v], axis=1 if stacked else 0))


@functools.lru_cache(maxsize=32)
def _numpy_coefficients(table: BandTable, stacked: bool) -> np.ndarray:
    """:func:`_evaluation_coefficients` of a table in use (cached)."""
    return _evaluation_coefficients(table, stacked)


@functools.lru_cache(maxsize=16)
def _coefficients_on(table: BandTable, namespace: Any, dev: Any, stacked: bool,
                     packed: bool = False) -> Any:
    """:func:`_numpy_coefficients` as an array of a non-NumPy ``namespace`` on ``dev``
    (cached); ``packed``: transposed into :class:`_Packed` rows."""
    coef = _numpy_coefficients(table, stacked)
    if packed:
        return _Packed(namespace.asarray(np.ascontiguousarray(coef.T), device=dev))
    return namespace.asarray(coef, device=dev)


def _parallel(t: Any) -> bool:
    """Whether the ops on ``t`` run on several threads or an accelerator (torch: not a
    CPU tensor, or ``torch.get_num_threads() > 1``; a host-side query, no sync)."""
    dev = getattr(t, "device", None)
    if getattr(dev, "type", "cpu") != "cpu":
        return True
    torch = sys.modules.get("torch")
    return torch is not None and torch.get_num_threads() > 1


def _coefficients(xp: Any, table: BandTable, t: Any, *, stacked: bool = False) -> Any:
    """Evaluation coefficients for ``t``'s array type and device (``stacked``: ``[L | V]``),
    with the NaN piece of :func:`_locate`, in the layout :func:`_polys` evaluates
    fastest there."""
    from array_api_compat import device, is_numpy_array

    if is_numpy_array(t):
        return _numpy_coefficients(table, stacked)
    packed = not stacked and hasattr(t, "index_select") and _parallel(t)
    return _coefficients_on(table, xp, device(t), stacked, packed)


def biting_bound(old_log_prob: Any, positive: Any, divergence: str | _div.Divergence = "kl",
                 *, delta: float = 0.05, check_input: bool = True,
                 compiled: bool = False) -> Any:
    """The end of the Band that can bite a clipped surrogate: ``upper`` where
    ``positive`` (a positive advantage), ``lower`` elsewhere.

    ``min(r A, clip(r, lower, upper) A)`` equals ``min(r A, b A)`` with this ``b`` (for
    ``A > 0`` only ``upper`` can bind, for ``A < 0`` only ``lower``), so a loss needs
    one end per token: one polynomial from the stacked certified table instead of two
    (about 40 % less work than :func:`bandtheory.band_bounds` in fast mode). Where no
    table certifies for ``(divergence, delta)`` the exact mode's values are returned
    and a :class:`TableFallbackWarning` is emitted (once per ``(divergence, delta)``).

    Args:
        old_log_prob: Log-probabilities ``<= 0`` (NumPy or torch, any shape).
        positive: Boolean array of the same shape (``advantages > 0``).
        divergence: A registry name or entry.
        delta: Trust-region radius ``> 0``.
        check_input: Validate ``old_log_prob`` (reads every value on the host). Without
            the check nothing is raised or synchronised: an invalid entry (NaN,
            ``+inf``, or ``log p`` above ``8 eps`` of the input dtype) gives NaN, and
            ``-inf`` gives ``inf`` (positive) or ``0``.
        compiled: Evaluate torch tensors by the ``torch.compile`` kernel of the same
            evaluation (``mode="compiled"`` of :func:`bandtheory.band_bounds`: the
            first call per dtype and device compiles, seconds; a NumPy input, or one of
            fewer than two tokens, is evaluated as without it).

    Returns:
        The bounds, in the input's array type, dtype, device and shape.
    """
    from array_api_compat import is_numpy_array

    from .bounds import _as_array, _map_chunks, _rounding_tolerance, band_bounds, validate_log_prob

    div = _div.get(divergence)
    delta = _check_delta(delta)
    x, xp, scalar = _as_array(old_log_prob)
    pos = np.asarray(positive) if is_numpy_array(x) else positive
    if tuple(getattr(pos, "shape", ())) != tuple(x.shape) or pos.dtype != xp.bool:
        raise ValueError(f"positive must be a boolean array of shape {tuple(x.shape)}, "
                         f"got {pos.dtype} of shape {tuple(pos.shape)}")
    if check_input:
        validate_log_prob(x, xp)
    table = _table_or_none(div, delta, stacklevel=3)
    if table is None:
        band = band_bounds(x, div, delta=delta, check_input=False)
        return xp.where(pos, band.upper, band.lower)
    tol = _rounding_tolerance(x.dtype)
    if compiled:
        bound = _compiled_biting(xp, table, x, pos, tol)
        if bound is not None:
            return bound
    coefs = _coefficients(xp, table, x, stacked=True)

    def fn(t, side):
        return (_evaluate_biting(xp, table, t, side, coefs, tol),)

    with np.errstate(all="ignore"):
        (bound,) = _map_chunks(xp, fn, x, pos)
    return bound


# --------------------------------------------------------------------------------------
# mode="compiled": the same evaluation, fused into one loop by torch.compile
# --------------------------------------------------------------------------------------


class CompileFallbackWarning(UserWarning):
    """``mode="compiled"`` could not compile the evaluation for a device type (torch's
    inductor needs a C++ compiler on CPU and triton on CUDA).

    The values returned are fast mode's eager evaluation of the same certified table
    (the same certificate, at fast mode's speed), so nothing is wrong with them. The
    warning names the compiler's error; it is emitted once per device type and process,
    and that device type is not compiled again in the process.
    """


class _Geometry(NamedTuple):
    """What the evaluation reads from a :class:`BandTable`, as plain numbers: the
    compiled kernels take these as arguments, not the table (``torch.compile`` would
    guard on the table object and recompile for every ``(divergence, delta)``)."""

    n_pieces: int
    width: float
    origin: float
    degree: int


def _torch_namespace() -> Any:
    import array_api_compat.torch as xp

    return xp


def _whole_band(xp: Any, t_in: Any, rows: Any, n_pieces: int, width: float, origin: float,
                tol: float, degree: int) -> tuple[Any, Any]:
    """``(lower, upper)`` of 1-D ``t_in`` in its own dtype: :func:`_evaluate` on the
    packed rows, with the float64 cast in and the cast out (the body that
    :func:`_compiled` compiles)."""
    t = xp.astype(t_in, xp.float64)
    lower, upper = _evaluate(xp, _Geometry(n_pieces, width, origin, degree), t,
                             coefs=_Packed(rows), tol=tol)
    return xp.astype(lower, t_in.dtype), xp.astype(upper, t_in.dtype)


def _whole_biting(xp: Any, t_in: Any, positive: Any, coefs: Any, n_pieces: int, width: float,
                  origin: float, tol: float, degree: int) -> Any:
    """:func:`_evaluate_biting` of 1-D ``t_in`` in its own dtype (compiled body), on the
    stacked coefficient rows (one gather per coefficient): from packed rows of three
    coefficients inductor materialises the gathered ``[N, 3]`` rows (three extra arrays
    of ``N`` and 30 % slower, measured), from six (:func:`_whole_band`) it does not."""
    t = xp.astype(t_in, xp.float64)
    bound = _evaluate_biting(xp, _Geometry(n_pieces, width, origin, degree), t, positive,
                             coefs, tol)
    return xp.astype(bound, t_in.dtype)


_BODIES = {"band": _whole_band, "biting": _whole_biting}
_COMPILED: dict[str, Any] = {}
_COMPILE_FAILED: dict[str, str] = {}  # device type -> the compiler's error
_COMPILE_LOCK = threading.Lock()


def _compiled(name: str) -> Any:
    """The ``torch.compile`` of body ``name`` (created once; torch compiles on the first
    call for each input dtype and device). Dynamic shapes, so a new batch size or table
    size does not recompile; no bounds assertion on the gathers, whose indices are in
    range by construction (:func:`_locate`: ``[0, n_pieces]``, the NaN piece last)."""
    with _COMPILE_LOCK:
        fn = _COMPILED.get(name)
        if fn is None:
            import torch

            body = functools.partial(_BODIES[name], _torch_namespace())
            fn = torch.compile(body, dynamic=True,
                               options={"assert_indirect_indexing": False})
            _COMPILED[name] = fn
        return fn


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _run_compiled(name: str, device_type: str, *args: Any) -> Any:
    """The compiled kernel's result, or ``None`` where the device type cannot compile
    (then a :class:`CompileFallbackWarning`, once per device type)."""
    if device_type in _COMPILE_FAILED:
        return None
    try:
        return _compiled(name)(*args)
    except Exception as exc:  # inductor reports a missing compiler in several types
        reason = _one_line(exc)
        with _COMPILE_LOCK:
            first = device_type not in _COMPILE_FAILED
            _COMPILE_FAILED[device_type] = reason
        if first:
            warnings.warn(
                f"mode='compiled' could not compile for {device_type} tensors ({reason}); "
                "fast mode's eager evaluation is used instead (same table, same values)",
                CompileFallbackWarning, stacklevel=4)
        return None


def _compilable(x: Any) -> bool:
    """Whether ``mode="compiled"`` compiles for ``x``: a torch tensor of at least two
    elements (NumPy has nothing to compile; torch specialises sizes 0 and 1)."""
    from array_api_compat import is_torch_array

    return is_torch_array(x) and math.prod(tuple(x.shape)) >= 2


def _flat_constant(xp: Any, x: Any) -> Any:
    """``x`` flattened and detached: the kernels compute constants of a loss (no
    gradient, so no autograd graph is compiled), and a detached tensor is not a view,
    on whose base torch would guard (one recompile for a slice of an earlier input)."""
    return xp.reshape(x, (-1,)).detach()


def _compiled_args(xp: Any, table: BandTable, x: Any, stacked: bool) -> tuple[Any, ...]:
    """The table's arguments of a compiled body: packed rows for both ends, stacked
    coefficient rows for the biting end (see :func:`_whole_biting`), and its numbers."""
    from array_api_compat import device

    coefs = _coefficients_on(table, xp, device(x), stacked, not stacked)
    coefs = coefs if stacked else coefs.rows
    return coefs, table.n_pieces, table.width, table.origin


def _compiled_bounds(xp: Any, table: BandTable, x: Any, tol: float) -> tuple[Any, Any] | None:
    """``(lower, upper)`` of torch ``x`` (any shape) by the compiled kernel, or ``None``
    where it does not apply (:func:`_compilable`) or cannot compile (warned)."""
    if not _compilable(x):
        return None
    shape = tuple(x.shape)
    flat = _flat_constant(xp, x)
    out = _run_compiled("band", flat.device.type, flat, *_compiled_args(xp, table, x, False),
                        tol, table.degree)
    if out is None:
        return None
    return tuple(xp.reshape(o, shape) for o in out)


def _compiled_biting(xp: Any, table: BandTable, x: Any, pos: Any, tol: float) -> Any | None:
    """:func:`biting_bound`'s compiled kernel (``None`` as for :func:`_compiled_bounds`)."""
    if not _compilable(x):
        return None
    shape = tuple(x.shape)
    flat = _flat_constant(xp, x)
    out = _run_compiled("biting", flat.device.type, flat, _flat_constant(xp, pos),
                        *_compiled_args(xp, table, x, True), tol, table.degree)
    return None if out is None else xp.reshape(out, shape)
