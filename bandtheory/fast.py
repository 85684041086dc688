"""Certified interpolation tables of the Band for hot loops (``mode="fast"``).

One function carries the whole Band. With ``D(x) = 1 - lower(x)`` for an old
probability ``x`` in ``(0, 1)``, the mirror identity (THEORY.md section 2) gives

.. math::

    \\text{lower}(p) = 1 - D(p),\\qquad
    \\text{upper}(p) = 1 + \\frac{1 - p}{p}\\, D(1 - p) = 1 + \\operatorname{expm1}(-\\log p)\\, D(1 - p).

``D`` lies in ``[0, 1]``; a relative error ``e`` in ``D`` is a relative error ``<= e``
in ``upper - 1`` (hence in ``upper``) and an absolute error ``<= e`` in ``lower``.
``D`` is tabulated in ``m = min(log x, log(1 - x))`` as two functions on the same knots:
``B(m) = D(e^m)`` (``x <= 1/2``) and ``C(m) = D(1 - e^m)`` (``x >= 1/2``). Both are smooth in
``m`` down to ``m -> -inf`` (they tend to ``1`` and ``1 - r*`` like powers of ``e^m``), except
at the saturation point ``x_sat`` (``lower = 0`` for ``x <= x_sat``), where the grid is
shifted so that a knot falls exactly on the kink. The knots are uniform (width ``h``) on
``[LOG_P_MIN, log 1/2]``, so the whole float64 range is covered without any separate
asymptotic branch: ``m`` below the range only happens for ``p`` below the smallest normal
double (reported as ``[0, inf]`` like the exact mode) or ``1 - p`` below it (``p == 1``,
where ``B -> 1`` and ``C -> 1 - r*`` to within ``1e-300``). On each piece a cubic interpolates
the exact values at four Chebyshev points; evaluation is a ``floor``, four gathers and a
Horner step per function.

The certificate: after fitting, the table is evaluated at eight points inside every
piece (none of them a fitting node) and compared with the exact solver; the largest
relative error of ``upper`` and the largest absolute error of ``lower`` are recorded on
the table (:attr:`BandTable.max_error`) and must be ``<= 1e-7``, else the builder refines
``h`` and tries again (and raises if it cannot certify).

References:
    BandPO (arXiv 2603.04918); THEORY.md section 2 (mirror identity, limits).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device as _device, is_numpy_array

from . import divergences as _div
from .bounds import LOG_P_MIN, _check_delta, _saturation_value, _solve_side

__all__ = ["BandTable", "band_table", "TOLERANCE"]

#: Certified bound on the table's error (relative for ``upper``, absolute for ``lower``).
TOLERANCE = 1e-7

_M_HI = math.log(0.5)
_DEGREE = 3
_WIDTHS = (1.0 / 16.0, 1.0 / 32.0, 1.0 / 64.0, 1.0 / 128.0)
_CHECKS_PER_PIECE = 8


@dataclass(frozen=True, eq=False)
class BandTable:
    """A certified cubic-spline table of the Band for one ``(divergence, delta)``.

    Attributes:
        divergence: The registry entry.
        delta: The trust-region radius.
        origin: ``m`` of knot 0.
        width: Piece width ``h`` in ``m``.
        coef_b: ``[4, n]`` monomial coefficients (local ``u`` in ``[0, 1)``) of ``B``.
        coef_c: ``[4, n]`` coefficients of ``C``.
        max_error: Certified maximum error on the check grid: relative for ``upper``,
            absolute for ``lower`` (the larger of the two).
        max_rel_error_upper: Its ``upper`` part.
        max_abs_error_lower: Its ``lower`` part.
        n_checked: Number of check points (per function).
    """

    divergence: _div.Divergence
    delta: float
    origin: float
    width: float
    coef_b: np.ndarray = field(repr=False)
    coef_c: np.ndarray = field(repr=False)
    max_error: float
    max_rel_error_upper: float
    max_abs_error_lower: float
    n_checked: int

    @property
    def n_pieces(self) -> int:
        """Number of polynomial pieces."""
        return int(self.coef_b.shape[1])


# --------------------------------------------------------------------------------------
# Exact values of D through the solver of bounds.py (float64 numpy)
# --------------------------------------------------------------------------------------


def _exact_d(div: _div.Divergence, delta: float, m: np.ndarray, side: str) -> np.ndarray:
    """Exact ``D`` at ``x = e^m`` (side ``"b"``) or ``x = 1 - e^m`` (side ``"c"``).

    ``D(x) = 1 - lower(x) = -expm1(-y)`` with ``y`` the lower-side root for the
    shrinking mass ``a = x`` and the growing mass ``b = 1 - x``; both masses are formed
    from ``m`` without cancellation, so ``C`` stays exact when ``1 - x`` underflows
    ``1 - 2^-53``.
    """
    xp = array_namespace(m)
    small = np.exp(m)
    large = -np.expm1(m)
    a, b = (small, large) if side == "b" else (large, small)
    with np.errstate(all="ignore"):
        y = _solve_side(xp, div, a, b, delta, early_exit=True)
        return -np.expm1(-y)


def _saturation_point(div: _div.Divergence, delta: float) -> tuple[str, float] | None:
    """``(side, m)`` of the kink ``x_sat`` (largest ``x`` with ``lower(x) = 0``), if any."""
    if math.isinf(div.f_at_0):
        return None

    def excess(m: float, side: str) -> float:
        small, large = math.exp(m), -math.expm1(m)
        a, b = (small, large) if side == "b" else (large, small)
        arr = np.asarray([a]), np.asarray([b])
        with np.errstate(all="ignore"):
            value = _saturation_value(np, div, arr[0], arr[1], arr[1] > 0, np.where(arr[1] > 0, arr[1], 1.0))
        return float(value[0]) - delta

    # G(inf) grows with x: find the side where it crosses delta, then bisect in m.
    if excess(_M_HI, "b") > 0:
        side, lo, hi = "b", LOG_P_MIN, _M_HI  # excess < 0 at lo (tiny x), > 0 at hi
        if excess(lo, side) > 0:
            return None
    else:
        side, lo, hi = "c", LOG_P_MIN, _M_HI  # x -> 1 at lo (excess > 0 unless r* = 0)
        if excess(lo, side) <= 0:
            return None  # saturated everywhere: D = 1, no kink inside (0, 1)
        lo, hi = hi, lo  # orient: excess(lo) <= 0, excess(hi) > 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid, side) <= 0:
            lo = mid
        else:
            hi = mid
        if abs(hi - lo) <= 1e-15 * max(1.0, abs(mid)):
            break
    return side, 0.5 * (lo + hi)


def _fit(values: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Monomial coefficients (rows: degree 0..3) of the cubics through ``values``."""
    vander = np.vander(nodes, _DEGREE + 1, increasing=True)
    return np.linalg.solve(vander, values.T)  # [degree + 1, n]


def _build(div: _div.Divergence, delta: float, width: float):
    kink = _saturation_point(div, delta)
    anchor = kink[1] if kink is not None else _M_HI
    start = anchor - math.ceil((anchor - LOG_P_MIN) / width) * width
    n = math.ceil((_M_HI - start) / width)
    knots = start + width * np.arange(n, dtype=np.float64)
    # Chebyshev points of the first kind mapped to [0, 1].
    k = np.arange(_DEGREE + 1)
    nodes = 0.5 - 0.5 * np.cos((2 * k + 1) * math.pi / (2 * (_DEGREE + 1)))
    m_fit = knots[:, None] + width * nodes[None, :]
    checks = (np.arange(_CHECKS_PER_PIECE) + 0.5) / _CHECKS_PER_PIECE
    m_chk = (knots[:, None] + width * checks[None, :]).reshape(-1)
    coefs = {}
    for side in ("b", "c"):
        values = _exact_d(div, delta, m_fit.reshape(-1), side).reshape(n, _DEGREE + 1)
        if kink is not None and side == kink[0]:
            # Left of the kink D = 1 exactly (saturated); the piece boundary is the kink.
            values = np.where(m_fit <= kink[1], 1.0, values) if side == "b" else values
        coefs[side] = _fit(values, nodes)
    table = BandTable(div, delta, float(start), float(width), coefs["b"], coefs["c"],
                      math.inf, math.inf, math.inf, int(m_chk.size))
    err_up, err_lo = _certify(table, m_chk)
    return BandTable(div, delta, table.origin, table.width, table.coef_b, table.coef_c,
                     max(err_up, err_lo), err_up, err_lo, int(m_chk.size))


def _certify(table: BandTable, m_chk: np.ndarray) -> tuple[float, float]:
    """Errors of the table's bounds against the exact solver at the check points."""
    div, delta = table.divergence, table.delta
    m_chk = m_chk[m_chk <= _M_HI]
    worst_up = 0.0
    worst_lo = 0.0
    for side in ("b", "c"):
        exact = _exact_d(div, delta, m_chk, side)
        approx = np.clip(_evaluate(np, table, m_chk, side), 0.0, 1.0)
        # lower = 1 - D: absolute error |dD|; upper - 1 = c D with upper = 1 + c D, so
        # the relative error of upper is |dD| c / (1 + c D) <= |dD| / D.
        small = np.exp(m_chk)
        ratio = (-np.expm1(m_chk)) / small if side == "c" else small / (-np.expm1(m_chk))
        # side "c" as the upper side: p = e^m (x = 1 - p); side "b": p = 1 - e^m.
        with np.errstate(all="ignore"):
            rel_up = np.abs(approx - exact) * ratio / (1.0 + ratio * exact)
        rel_up = np.where(np.abs(approx - exact) == 0, 0.0, rel_up)
        worst_up = max(worst_up, float(np.max(rel_up)))
        worst_lo = max(worst_lo, float(np.max(np.abs(approx - exact))))
    return worst_up, worst_lo


def _evaluate(xp: Any, table: BandTable, m: Any, side: str, coef: Any = None) -> Any:
    """Piecewise cubic ``B`` or ``C`` at ``m`` (clamped to the table's range)."""
    if coef is None:
        coef = table.coef_b if side == "b" else table.coef_c
    n = coef.shape[1]
    shape = tuple(m.shape)
    m = xp.reshape(m, (-1,))  # take() gathers along one axis
    z = (m - table.origin) * (1.0 / table.width)
    z = xp.clip(z, 0.0, n - 1e-9)
    index = xp.floor(z)
    u = z - index
    index = xp.astype(index, xp.int64)
    acc = xp.take(coef[3], index)
    for degree in (2, 1, 0):
        acc = acc * u + xp.take(coef[degree], index)
    return xp.reshape(acc, shape)


@functools.lru_cache(maxsize=64)
def _cached_table(div: _div.Divergence, delta: float) -> BandTable:
    last = None
    for width in _WIDTHS:
        table = _build(div, delta, width)
        if table.max_error <= TOLERANCE:
            return table
        last = table
    raise ValueError(
        f"could not certify a fast table for {div.name} at delta={delta:g} (best error "
        f"{last.max_error:.2e} > {TOLERANCE:g}); use mode='exact'"
    )


def band_table(divergence: str | _div.Divergence = "kl", *, delta: float = 0.05) -> BandTable:
    """The certified table for ``(divergence, delta)``, built once and cached.

    The cache is bounded (the 64 most recently used tables). Building costs about
    ``0.1 - 1 s`` (exact solves at the fitting nodes and on the check grid).

    Args:
        divergence: A registry name or entry.
        delta: Trust-region radius ``> 0``.

    Returns:
        The :class:`BandTable`, whose ``max_error`` is ``<= 1e-7``.

    Raises:
        ValueError: If the table cannot be certified (no built-in divergence does this
            for ``delta`` in ``[1e-3, 1]``).
    """
    return _cached_table(_div.get(divergence), _check_delta(delta))


@functools.lru_cache(maxsize=16)
def _coefficients_on(table: BandTable, namespace: Any, dev: Any) -> tuple[Any, Any]:
    """The table's coefficients as arrays of ``namespace`` on device ``dev`` (cached)."""
    return (namespace.asarray(table.coef_b, device=dev), namespace.asarray(table.coef_c, device=dev))


@functools.lru_cache(maxsize=64)
def _table_or_none(div: _div.Divergence, delta: float) -> BandTable | None:
    try:
        return _cached_table(div, delta)
    except ValueError:
        return None


def _fast_band64(xp: Any, div: _div.Divergence, logp: Any, delta: float):
    """Fast-mode Band for validated float64 ``logp``; returns ``(lower, upper)``.

    Where no table can be certified (a generator whose Band is not smooth enough at the
    saturation point, e.g. reverse KL, JS: ``f'(0) = -inf`` makes ``lower`` behave like
    ``v log v`` there) the exact solver is used instead, so ``mode="fast"`` is never less
    accurate than promised.
    """
    table = _table_or_none(div, delta)
    if table is None:
        from .bounds import _band64

        return _band64(xp, div, logp, delta, early_exit=is_numpy_array(logp))
    t = xp.minimum(logp, 0.0)
    d_lower, d_upper = _d_pair(xp, table, t)
    lower = 1.0 - d_lower
    upper = 1.0 + xp.expm1(-t) * d_upper
    tiny = t < LOG_P_MIN
    lower = xp.clip(xp.where(tiny, 0.0, lower), 0.0, 1.0)
    upper = xp.where(tiny, math.inf, xp.maximum(upper, 1.0))
    return lower, upper


def _d_pair(xp: Any, table: BandTable, t: Any) -> tuple[Any, Any]:
    """``(D(p), D(1 - p))`` from the table at ``t = log p <= 0``."""
    if is_numpy_array(t):
        coef_b, coef_c = table.coef_b, table.coef_c
    else:
        coef_b, coef_c = _coefficients_on(table, xp, _device(t))
    m = xp.minimum(t, xp.log(-xp.expm1(t)))
    d_b = _evaluate(xp, table, m, "b", coef_b)
    d_c = _evaluate(xp, table, m, "c", coef_c)
    low_side = t <= _M_HI
    return xp.where(low_side, d_b, d_c), xp.where(low_side, d_c, d_b)
