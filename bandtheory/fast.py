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

The knots cover ``s`` from ``s(log(tiny))`` up to ``700``: every normal ``p``, and
``1 - p`` down to ``1e-304``. Above that range the index is clamped, which is exact to
rounding (``upper - 1 < 1e-150`` there and ``lower = r* + O(1 - p)``; ``p = 1`` gives
``[r*, 1]``); below the first knot (``p = 0`` and
subnormal ``p``) a sentinel piece with ``L = 0`` and ``V = 1e300`` gives ``[0, inf]``,
the exact mode's convention there.

On each piece a polynomial (quadratic where that certifies, else cubic) interpolates
the exact values at Chebyshev points; evaluation is one index computation, ``d + 1``
gathers and a Horner step per function, about 25 elementwise float64 operations per
token for both ends. A surrogate loss needs only the end that can bite (``upper``
where the advantage is positive, ``lower`` where it is negative):
:func:`biting_bound` evaluates one polynomial per token from a stacked table.

The certificate: after fitting, the table is evaluated at points inside every piece
(none of them a fitting node), at 256 points on each side of each kink and at points
beyond both ends, and compared with the exact solver; the largest relative error of
``upper`` and the largest absolute error of ``lower`` are recorded on the table
(:attr:`BandTable.max_error`) and must be ``<= 1e-7``, else the builder tries the next
(degree, width) and raises if none certifies. A cheap probe over ``|s| <= 40`` (where
the curvature is) rejects a specification before the full range is built. The build
also certifies how many Newton steps from the table reach the exact mode's accuracy
(:attr:`BandTable.polish_steps`), which is how large inputs are solved in
``mode="exact"``.

References:
    BandPO (arXiv 2603.04918); THEORY.md section 2 (mirror identity, limits).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import divergences as _div
from .bounds import LOG_P_MIN, _check_delta, _polish_side, _saturation_value, _solve_side

__all__ = ["BandTable", "band_table", "biting_bound", "TOLERANCE"]

#: Certified bound on the table's error (relative for ``upper``, absolute for ``lower``).
TOLERANCE = 1e-7
#: Accuracy that the certified number of Newton steps must reach (exact mode).
POLISH_TOLERANCE = 1e-12
# The error of the polish is largest next to a saturation kink (``lower`` -> 0 there, so
# the table's absolute error is a large relative error of the start): the build checks
# 256 extra points on each side of each kink.
_POLISH_MARGIN = 1.0

# Top knot: s = 700 is t = -1e-304 (1 - p = 1e-304, still a normal double); above it the
# index is clamped, which is exact to rounding (upper - 1 < 1e-150, lower = r* + O(1 - p)).
_S_HI = 700.0
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
            large inputs); ``None`` if four steps do not (exact mode then ignores the
            table).
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
        """Number of polynomial pieces (including the sentinel piece below ``log(tiny)``)."""
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


def _errors(div, delta, t, approx_lo, approx_up) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(relative error of upper, absolute error of lower) against the exact solver."""
    exact_lo, exact_v = _exact_lv(div, delta, t)
    with np.errstate(all="ignore"):
        exact_up = 1.0 + np.exp(exact_v)
        rel_up = np.where(approx_up == exact_up, 0.0, np.abs(approx_up / exact_up - 1.0))
    err_lo = np.abs(approx_lo - exact_lo)
    return float(np.max(rel_up)), float(np.max(err_lo)), exact_lo, exact_up


def _probe(div: _div.Divergence, delta: float, degree: int, width: float, anchor: float) -> float:
    """Table error over ``|s| <= 40`` (direct evaluation): a cheap rejection test."""
    knots = anchor + width * np.arange(math.floor((-_PROBE - anchor) / width),
                                       math.ceil((_PROBE - anchor) / width))
    coef_lower, coef_v = _fit(div, delta, degree, width, knots)
    z = _checks(degree)
    powers = z[None, :] ** np.arange(degree + 1)[:, None]  # [degree + 1, checks]
    approx_lo = (coef_lower.T @ powers).reshape(-1)
    with np.errstate(all="ignore"):
        approx_up = 1.0 + np.exp((coef_v.T @ powers).reshape(-1))
    t = _t_of_s((knots[:, None] + width * z[None, :]).reshape(-1))
    err_up, err_lo, _, _ = _errors(div, delta, t, approx_lo, approx_up)
    return max(err_up, err_lo)


def _build(div: _div.Divergence, delta: float, degree: int, width: float) -> BandTable | None:
    """The full table for one specification, or ``None`` if the probe rejects it."""
    kinks = _kinks(div, delta)
    anchor = kinks[0] if kinks else 0.0
    if len(kinks) == 2:
        span = kinks[1] - kinks[0]
        width = span / math.ceil(span / width)  # both kinks are knots
    if not _probe(div, delta, degree, width, anchor) <= TOLERANCE:  # NaN rejects too
        return None
    # Knot j0 is the first one <= s(log(tiny)); piece 0 below it is a sentinel
    # (coefficients L = 0, V = 1e300) that gives [0, inf] for p = 0 and subnormal p.
    j0 = math.floor((float(_s_of_t(np.asarray(LOG_P_MIN))) - anchor) / width)
    j1 = math.ceil((_S_HI - anchor) / width)
    knots = anchor + width * np.arange(j0, j1, dtype=np.float64)
    coef_lower, coef_v = _fit(div, delta, degree, width, knots)
    sentinel = np.zeros((degree + 1, 1))
    sentinel_v = sentinel.copy()
    sentinel_v[0] = 1e300  # e^V overflows to upper = inf (finite for _evaluate_biting)
    coef_lower = np.ascontiguousarray(np.concatenate([sentinel, coef_lower], axis=1))
    coef_v = np.ascontiguousarray(np.concatenate([sentinel_v, coef_v], axis=1))
    origin = float(knots[0] - width)

    z = _checks(degree)
    s_chk = [(knots[:, None] + width * z[None, :]).reshape(-1)]
    for kink in kinks:  # 256 more checks on each side of each kink
        near = width * (np.arange(1, 257) / 256.0 - 1e-3)
        s_chk += [kink + near, kink - near]
    t_chk = _t_of_s(np.concatenate(s_chk))
    # Beyond the top (clamped index): the p -> 1 limits must hold there too.
    t_chk = np.concatenate([t_chk, [-1e-290, -1e-304, -1e-310, -5e-324, -0.0, 0.0]])
    table = BandTable(div, delta, degree, origin, float(width), coef_lower, coef_v,
                      math.inf, math.inf, math.inf, int(t_chk.size))
    with np.errstate(all="ignore"):
        approx_lo, approx_up = _evaluate(np, table, t_chk, coefs=(coef_lower, coef_v))
    err_up, err_lo, exact_lo, exact_up = _errors(div, delta, t_chk, approx_lo, approx_up)
    table = BandTable(div, delta, degree, origin, float(width), coef_lower, coef_v,
                      max(err_up, err_lo), err_up, err_lo, int(t_chk.size))
    if table.max_error > TOLERANCE:
        return table
    steps, polish_err = _certify_polish(table, t_chk, exact_lo, exact_up)
    if polish_err > POLISH_TOLERANCE * _POLISH_MARGIN:
        steps = None  # exact mode then runs the safeguarded solver for this table
    return BandTable(div, delta, degree, origin, float(width), coef_lower, coef_v,
                     table.max_error, err_up, err_lo, int(t_chk.size), steps, polish_err)


def _certify_polish(table: BandTable, t: np.ndarray, exact_lo: np.ndarray,
                    exact_up: np.ndarray) -> tuple[tuple[int, int], float]:
    """The fewest Newton steps from the table (per side) that reach POLISH_TOLERANCE."""
    div, delta = table.divergence, table.delta
    inside = t < 0.0
    t, exact_lo, exact_up = t[inside], exact_lo[inside], exact_up[inside]
    with np.errstate(all="ignore"):
        lower0, v = _evaluate_parts(np, table, t, (table.coef_lower, table.coef_v))
    p, q = np.exp(t), -np.expm1(t)
    fin = np.isfinite(exact_up)
    steps = []
    worst = 0.0
    for side in ("lower", "upper"):
        for k in range(1, _MAX_POLISH_STEPS + 1):
            with np.errstate(all="ignore"):
                if side == "lower":
                    y = _polish_side(np, div, p, q, delta, y_start_lower(np, lower0),
                                     safeguard=False, steps=k)
                    err = float(np.max(np.abs(np.exp(-y) - exact_lo)))
                else:
                    y = _polish_side(np, div, q, p, delta, y_start_upper(np, v, t),
                                     safeguard=False, steps=k)
                    up = np.where(np.isinf(y), 1.0 / p, 1.0 + q * -np.expm1(-y) / p)
                    up = np.where(q > 0, up, 1.0)
                    err = float(np.max(np.abs(up[fin] / exact_up[fin] - 1.0), initial=0.0))
            if err <= POLISH_TOLERANCE * _POLISH_MARGIN or k == _MAX_POLISH_STEPS:
                break
        steps.append(k)
        worst = max(worst, err)
    return (steps[0], steps[1]), worst


def y_start_lower(xp: Any, lower0: Any) -> Any:
    """Lower-side Newton start ``y = -log(lower)`` from the table, kept in ``(0, 37]``."""
    return -xp.log(xp.clip(lower0, 1e-16, 1.0 - 1e-16))


def y_start_upper(xp: Any, v: Any, t: Any) -> Any:
    """Upper-side Newton start ``y = -log(1 - e^W)`` from the table's ``V`` and ``t = log p``.

    ``W = V + t - log(1 - p) = log(1 - lower(1 - p))`` (mirror identity).
    ``-log1p(-e^W)`` keeps the relative accuracy of a tiny ``y`` (very negative ``W``,
    ``upper - 1 ~ sqrt(delta / p)`` for Pearson chi2 at tiny ``p``), ``-log(-expm1(W))``
    that of ``W`` near ``0`` (large ``y``, near saturation).
    """
    w = xp.clip(v + t - xp.log(-xp.expm1(t)), -1e300, -1e-16)
    return xp.where(w < -0.6931471805599453, -xp.log1p(-xp.exp(w)), -xp.log(-xp.expm1(w)))


# --------------------------------------------------------------------------------------
# Evaluation (one code path for every array namespace)
# --------------------------------------------------------------------------------------


def _polys(coefs: Any, index: Any, z: Any, degree: int) -> list[Any]:
    """Horner evaluation of each token's piece of every tabulated function.

    The layout of the gather is the only thing that differs between backends (the maths
    does not). ``coefs`` a list of ``[degree + 1, n]`` arrays (NumPy, and torch for one
    function): one contiguous row gathered at a time with the ``take`` method (NumPy's
    fastest gather, equal to ``index_select`` on a 1-D torch row; each row is used while
    it is in cache). ``coefs`` one ``[n, k (degree + 1)]`` torch tensor (two functions):
    its rows are gathered at once with ``index_select`` and each Horner step is one fused
    ``addcmul`` (measured faster than ``2 k (degree + 1)`` separate gathers on CPU). The
    array-API ``take`` wrapper is avoided: it costs several times more per call on torch.
    """
    if isinstance(coefs, (list, tuple)):
        out = []
        for coef in coefs:
            acc = coef[degree].take(index)  # a contiguous 1-D row: take == index_select
            for k in range(degree - 1, -1, -1):
                acc *= z
                acc += coef[k].take(index)
            out.append(acc)
        return out
    rows = coefs.index_select(0, index)
    out = []
    for first in range(0, int(rows.shape[1]), degree + 1):
        acc = rows[:, first + degree]
        for k in range(degree - 1, -1, -1):
            acc = rows[:, first + k].addcmul(acc, z)
        out.append(acc)
    return out


def _locate(xp: Any, table: BandTable, t: Any) -> tuple[Any, Any]:
    """Piece index and local coordinate ``z`` in ``[0, 1)`` of float64 ``t`` (1-D)."""
    s = xp.log(xp.abs(t))
    s = t - s
    s *= 1.0 / table.width
    s -= table.origin / table.width
    z = xp.clip(s, 0.0, table.n_pieces - 1e-6)
    index = xp.astype(z, xp.int64)  # truncation is floor for z >= 0
    z -= xp.astype(index, z.dtype)
    return index, z


def _evaluate_parts(xp: Any, table: BandTable, t: Any, coefs: Any):
    """``(L, V)`` at float64 log-probabilities ``t <= 0`` (1-D)."""
    index, z = _locate(xp, table, t)
    lower, v = _polys(coefs, index, z, table.degree)
    return lower, v


def _evaluate(xp: Any, table: BandTable, t: Any, *, coefs: tuple[Any, Any]):
    """Fast ``(lower, upper)`` in float64 at float64 log-probabilities ``t`` (1-D)."""
    lower, v = _evaluate_parts(xp, table, t, coefs)
    upper = xp.exp(v)
    upper += 1.0
    return xp.clip(lower, 0.0, 1.0), upper


def _evaluate_biting(xp: Any, table: BandTable, t: Any, positive: Any, coefs: Any):
    """``upper`` where ``positive``, else ``lower``: one polynomial per token.

    Branch-free (a select on a random mask costs several times an arithmetic pass):
    the piece index is offset into the ``V`` half of the stacked table by ``n * pos``,
    and ``P + pos (1 + e^P - P)`` is ``upper = 1 + e^V`` or ``lower = L`` (exactly, or
    to a few ulps of ``upper``). The sentinel ``V`` is finite for that reason.
    """
    index, z = _locate(xp, table, t)
    pos = xp.astype(positive, xp.int64)
    pos *= table.n_pieces
    index += pos
    (value,) = _polys(coefs, index, z, table.degree)
    bound = xp.exp(value)
    bound += 1.0
    bound -= value
    bound *= xp.astype(positive, value.dtype)
    bound += value
    return xp.clip(bound, 0.0, math.inf)


@functools.lru_cache(maxsize=32)
def _cached_table(div: _div.Divergence, delta: float) -> BandTable:
    best = None
    for degree, width in _SPECS:
        table = _build(div, delta, degree, width)
        if table is None:
            continue
        if table.max_error <= TOLERANCE:
            return table
        if best is None or table.max_error < best.max_error:
            best = table
    detail = f"best error {best.max_error:.2e}" if best is not None else "no piece size passed the probe"
    raise ValueError(
        f"could not certify a fast table for {div.name} at delta={delta:g} ({detail} > "
        f"{TOLERANCE:g}); use mode='exact'"
    )


def band_table(divergence: str | _div.Divergence = "kl", *, delta: float = 0.05) -> BandTable:
    """The certified table for ``(divergence, delta)``, built once and cached.

    The cache is bounded (the 32 most recently used tables, about 2 MB each). Building
    costs one to a few seconds (exact solves at the fitting nodes and on the check grid).

    Args:
        divergence: A registry name or entry.
        delta: Trust-region radius ``> 0``.

    Returns:
        The :class:`BandTable`, whose ``max_error`` is ``<= 1e-7``.

    Raises:
        ValueError: If the table cannot be certified (e.g. reverse KL and JS, whose
            ``lower`` behaves like ``v log v`` at the saturation point, and Jeffreys,
            whose ``lower`` tends to ``r* = 1`` only like ``1/log(1/(1 - p))``).
    """
    return _cached_table(_div.get(divergence), _check_delta(delta))


@functools.lru_cache(maxsize=16)
def _coefficients_on(table: BandTable, namespace: Any, dev: Any, stacked: bool) -> Any:
    """The table's coefficients for a non-NumPy ``namespace`` on ``dev`` (cached): rows
    ``[L | V]`` of ``2 (degree + 1)`` coefficients, or (``stacked``) a list of one
    ``[degree + 1, 2 n]`` array whose columns are the ``L`` pieces then the ``V`` pieces."""
    if stacked:
        # One polynomial per token: contiguous coefficient rows gathered one at a time
        # (cheaper than strided columns of a packed gather when there is one function).
        rows = np.concatenate([table.coef_lower, table.coef_v], axis=1)
        return [namespace.asarray(np.ascontiguousarray(rows), device=dev)]
    rows = np.concatenate([table.coef_lower, table.coef_v], axis=0).T
    return namespace.asarray(np.ascontiguousarray(rows), device=dev)


@functools.lru_cache(maxsize=64)
def _table_or_none(div: _div.Divergence, delta: float) -> BandTable | None:
    try:
        return _cached_table(div, delta)
    except ValueError:
        return None


def _coefficients(xp: Any, table: BandTable, t: Any, *, stacked: bool = False) -> Any:
    """Coefficient rows for ``t``'s array type and device (``stacked``: ``[L | V]``)."""
    from array_api_compat import device, is_numpy_array

    if is_numpy_array(t):
        if stacked:
            return [_stacked_numpy(table)]
        return [table.coef_lower, table.coef_v]
    return _coefficients_on(table, xp, device(t), stacked)


@functools.lru_cache(maxsize=16)
def _stacked_numpy(table: BandTable) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate([table.coef_lower, table.coef_v], axis=1))


def biting_bound(old_log_prob: Any, positive: Any, divergence: str | _div.Divergence = "kl",
                 *, delta: float = 0.05, check_input: bool = True) -> Any:
    """The end of the Band that can bite a clipped surrogate: ``upper`` where
    ``positive`` (a positive advantage), ``lower`` elsewhere.

    ``min(r A, clip(r, lower, upper) A)`` equals ``min(r A, b A)`` with this ``b`` (for
    ``A > 0`` only ``upper`` can bind, for ``A < 0`` only ``lower``), so a loss needs
    one end per token: one polynomial from the stacked certified table instead of two
    (about 40 % less work than :func:`bandtheory.band_bounds` in fast mode). Divergences
    without a certified table use the exact mode.

    Args:
        old_log_prob: Log-probabilities ``<= 0`` (NumPy or torch, any shape).
        positive: Boolean array of the same shape (``advantages > 0``).
        divergence: A registry name or entry.
        delta: Trust-region radius ``> 0``.
        check_input: Validate ``old_log_prob`` (reads every value on the host).

    Returns:
        The bounds, in the input's array type, dtype, device and shape.
    """
    from array_api_compat import is_numpy_array

    from .bounds import _as_array, _map_chunks, band_bounds, validate_log_prob

    div = _div.get(divergence)
    delta = _check_delta(delta)
    x, xp, scalar = _as_array(old_log_prob)
    pos = np.asarray(positive) if is_numpy_array(x) else positive
    if tuple(getattr(pos, "shape", ())) != tuple(x.shape) or pos.dtype != xp.bool:
        raise ValueError(f"positive must be a boolean array of shape {tuple(x.shape)}, "
                         f"got {pos.dtype} of shape {tuple(pos.shape)}")
    if check_input:
        validate_log_prob(x, xp)
    table = _table_or_none(div, delta)
    if table is None:
        band = band_bounds(x, div, delta=delta, check_input=False)
        return xp.where(pos, band.upper, band.lower)
    coefs = _coefficients(xp, table, x, stacked=True)

    def fn(t, side):
        return (_evaluate_biting(xp, table, t, side, coefs),)

    with np.errstate(all="ignore"):
        (bound,) = _map_chunks(xp, fn, x, pos)
    return bound
