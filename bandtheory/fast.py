"""Certified interpolation tables of the Band for hot loops (``mode="fast"``).

Both ends of the Band are tabulated in one coordinate, the logit of the old probability,

.. math::

    \\xi = \\log\\frac{p}{1 - p} = \\log p - \\log(-\\operatorname{expm1}(\\log p)),

as two functions on the same knots:

.. math::

    L(\\xi) = \\text{lower}(p),\\qquad
    W(\\xi) = \\log\\big(1 - \\text{lower}(1 - p)\\big),\\qquad
    \\text{upper}(p) = 1 + e^{W(\\xi) - \\xi}.

The second form is the mirror identity (THEORY.md section 2): ``upper(p) - 1 =
(1 - p)/p * (1 - lower(1 - p))`` and ``(1 - p)/p = e^{-xi}``. An absolute error ``e`` in
``W`` is a relative error ``<= e`` (to first order) in ``upper - 1``, hence in ``upper``;
an absolute error in ``L`` is the absolute error of ``lower``. Both are smooth in ``xi``
over the whole real line: as ``p -> 0`` or ``p -> 1`` the Band has expansions in ``p``,
``p log p`` (resp. ``1 - p``), which are smooth and flat in ``xi``; ``W`` has at worst a
linear asymptote (``upper - 1 ~ sqrt(delta (1 - p)/p)`` for Pearson chi2). The only kinks
are the saturation points: ``lower = 0`` for ``p <= x_sat`` (``xi <= xi_s``) and, by the
mirror identity, ``upper = 1/p`` (``W = 0``) for ``xi >= -xi_s``; the knots are the
multiples of a width ``h`` chosen so that both ``+-xi_s`` are knots.

The knots cover ``xi`` in ``[log(tiny), 745]``: every normal ``p`` and every ``1 - p`` that
float64 can represent (``log p = -1e-300`` gives ``xi = 690``). Above that range the index
is clamped (``p = 1`` gives ``[r*, 1]`` to rounding); below the first knot (``p = 0`` and
subnormal ``p``) a sentinel piece with ``L = 0`` and ``W = +inf`` gives ``[0, inf]``, the
exact mode's convention there.

On each piece a cubic interpolates the exact values at four Chebyshev points; evaluation
is one index computation, four gathers and a Horner step per function. The hot path
costs about 30 elementwise float64 operations per token.

The certificate: after fitting, the table is evaluated at eight points inside every
piece (none of them a fitting node) and at points beyond both ends, and compared with
the exact solver; the largest relative error of ``upper`` and the largest absolute error
of ``lower`` are recorded on the table (:attr:`BandTable.max_error`) and must be
``<= 1e-7``, else the builder refines ``h`` and tries again (and raises if it cannot
certify). The build also certifies how many Newton steps from the table reach the exact
mode's accuracy (:attr:`BandTable.polish_steps`), which is how large inputs are solved
in ``mode="exact"``.

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

__all__ = ["BandTable", "band_table", "TOLERANCE"]

#: Certified bound on the table's error (relative for ``upper``, absolute for ``lower``).
TOLERANCE = 1e-7
#: Accuracy that the certified number of Newton steps must reach (exact mode).
POLISH_TOLERANCE = 1e-12
# The error of the polish is largest next to a saturation kink (``lower`` -> 0 there, so
# the table's absolute error is a large relative error of the start): the build checks
# 256 extra points on each side of each kink.
_POLISH_MARGIN = 1.0

_XI_LO = LOG_P_MIN
_XI_HI = 745.2  # -log of the smallest subnormal: the largest finite logit of 1 - p
_DEGREE = 3
_WIDTHS = (1.0 / 8.0, 1.0 / 16.0, 1.0 / 32.0)
_CHECKS_PER_PIECE = 8
_MAX_POLISH_STEPS = 4


@dataclass(frozen=True, eq=False)
class BandTable:
    """A certified cubic-spline table of the Band for one ``(divergence, delta)``.

    Attributes:
        divergence: The registry entry.
        delta: The trust-region radius.
        origin: ``xi`` of knot 0.
        width: Piece width ``h`` in ``xi``.
        coef_lower: ``[4, n]`` monomial coefficients (local ``u`` in ``[0, 1)``) of ``L``.
        coef_w: ``[4, n]`` coefficients of ``W``.
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
    origin: float
    width: float
    coef_lower: np.ndarray = field(repr=False)
    coef_w: np.ndarray = field(repr=False)
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
# Exact values through the solver of bounds.py (float64 numpy)
# --------------------------------------------------------------------------------------


def _masses(xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p, 1 - p)`` from the logit, each without cancellation."""
    e = np.exp(-np.abs(xi))  # <= 1
    small = e / (1.0 + e)
    large = 1.0 / (1.0 + e)
    neg = xi < 0
    return np.where(neg, small, large), np.where(neg, large, small)


def _exact_lw(div: _div.Divergence, delta: float, xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(L, W)`` at logits ``xi`` (the safeguarded solver of bounds.py)."""
    p, q = _masses(xi)
    with np.errstate(all="ignore"):
        y_lo = _solve_side(np, div, p, q, delta, early_exit=True)
        y_up = _solve_side(np, div, q, p, delta, early_exit=True)
        return np.exp(-y_lo), np.log(-np.expm1(-y_up))


def _saturation_logit(div: _div.Divergence, delta: float) -> float | None:
    """``xi_s``: the largest logit with ``lower = 0`` (``None`` if no kink in ``(0, 1)``)."""
    if math.isinf(div.f_at_0):
        return None

    def excess(xi: float) -> float:
        p, q = _masses(np.asarray([xi]))
        with np.errstate(all="ignore"):
            value = _saturation_value(np, div, p, q, q > 0, np.where(q > 0, q, 1.0))
        return float(value[0]) - delta

    lo, hi = _XI_LO, _XI_HI  # G(inf) of the lower side grows with p
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


def _fit(values: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Monomial coefficients (rows: degree 0..3) of the cubics through ``values``."""
    vander = np.vander(nodes, _DEGREE + 1, increasing=True)
    return np.ascontiguousarray(np.linalg.solve(vander, values.T))  # [degree + 1, n]


def _build(div: _div.Divergence, delta: float, width: float) -> BandTable:
    kink = _saturation_logit(div, delta)
    if kink is not None and kink != 0.0:
        width = abs(kink) / math.ceil(abs(kink) / width)  # +-kink are both knots
    # Knot j0 * h is the first one <= log(tiny); piece 0 below it is a sentinel
    # (coefficients L = 0, W = +inf) that gives [0, inf] for p = 0 and subnormal p.
    j0 = math.floor(_XI_LO / width)
    n = math.ceil(_XI_HI / width) - j0
    origin = (j0 - 1) * width
    knots = j0 * width + width * np.arange(n, dtype=np.float64)
    k = np.arange(_DEGREE + 1)
    nodes = 0.5 - 0.5 * np.cos((2 * k + 1) * math.pi / (2 * (_DEGREE + 1)))
    xi_fit = (knots[:, None] + width * nodes[None, :]).reshape(-1)
    lower, w = _exact_lw(div, delta, xi_fit)
    sentinel = np.zeros((_DEGREE + 1, 1))
    coef_lower = np.concatenate([sentinel, _fit(lower.reshape(n, _DEGREE + 1), nodes)], axis=1)
    sentinel_w = sentinel.copy()
    sentinel_w[0] = math.inf
    coef_w = np.concatenate([sentinel_w, _fit(w.reshape(n, _DEGREE + 1), nodes)], axis=1)
    checks = (np.arange(_CHECKS_PER_PIECE) + 0.5) / _CHECKS_PER_PIECE
    xi_chk = (knots[:, None] + width * checks[None, :]).reshape(-1)
    # Beyond the top (clamped index): the p -> 1 limits must hold there too.
    extra = [_XI_HI + 1.0, 800.0, 1e4]
    if kink is not None:  # 256 more checks on each side of both kinks
        near = width * (np.arange(1, 257) / 256.0 - 1e-3)
        extra = np.concatenate([extra, kink + near, kink - near, -kink + near, -kink - near])
    xi_chk = np.concatenate([xi_chk, extra])
    table = BandTable(div, delta, float(origin), float(width), coef_lower, coef_w,
                      math.inf, math.inf, math.inf, int(xi_chk.size))
    exact_lo, exact_w = _exact_lw(div, delta, xi_chk)
    with np.errstate(all="ignore"):
        approx_lo, approx_up = _evaluate(np, table, np.minimum(_logp_of_logit(xi_chk), 0.0), coefs=(coef_lower, coef_w))
        exact_up = 1.0 + np.exp(exact_w - xi_chk)
        rel_up = np.where(approx_up == exact_up, 0.0, np.abs(approx_up / exact_up - 1.0))
    err_up = float(np.max(rel_up))
    err_lo = float(np.max(np.abs(approx_lo - exact_lo)))
    table = BandTable(div, delta, table.origin, width, coef_lower, coef_w, max(err_up, err_lo),
                      err_up, err_lo, int(xi_chk.size))
    if table.max_error > TOLERANCE:
        return table
    steps, polish_err = _certify_polish(table, xi_chk, exact_lo, exact_up)
    if polish_err > POLISH_TOLERANCE * _POLISH_MARGIN:
        steps = None  # exact mode then runs the safeguarded solver for this table
    return BandTable(div, delta, table.origin, width, coef_lower, coef_w, table.max_error,
                     err_up, err_lo, int(xi_chk.size), steps, polish_err)


def _logp_of_logit(xi: np.ndarray) -> np.ndarray:
    p, _ = _masses(xi)
    with np.errstate(all="ignore"):
        return np.where(xi < 0, xi - np.log1p(np.exp(np.minimum(xi, 0.0))),
                        -np.log1p(np.exp(-np.abs(xi))))


def _certify_polish(table: BandTable, xi: np.ndarray, exact_lo: np.ndarray,
                    exact_up: np.ndarray) -> tuple[tuple[int, int], float]:
    """The fewest Newton steps from the table (per side) that reach POLISH_TOLERANCE."""
    div, delta = table.divergence, table.delta
    inside = xi <= _XI_HI
    xi, exact_lo, exact_up = xi[inside], exact_lo[inside], exact_up[inside]
    t = _logp_of_logit(xi)
    with np.errstate(all="ignore"):
        lower0, wm, xi_t = _evaluate_parts(np, table, t, (table.coef_lower, table.coef_w))
    p, q = _masses(xi)
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
                    y = _polish_side(np, div, q, p, delta, y_start_upper(np, wm, xi_t),
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


def y_start_upper(xp: Any, w_minus_xi: Any, xi: Any) -> Any:
    """Upper-side Newton start ``y = -log(1 - e^W)`` from the table's ``W - xi`` and ``xi``.

    ``-log1p(-e^W)`` keeps the relative accuracy of a tiny ``y`` (very negative ``W``,
    ``upper - 1 ~ sqrt(delta / p)`` for Pearson chi2 at tiny ``p``), ``-log(-expm1(W))``
    that of ``W`` near ``0`` (large ``y``, near saturation).
    """
    w = xp.clip(w_minus_xi + xi, -1e300, -1e-16)
    return xp.where(w < -0.6931471805599453, -xp.log1p(-xp.exp(w)), -xp.log(-xp.expm1(w)))


# --------------------------------------------------------------------------------------
# Evaluation (one code path for every array namespace)
# --------------------------------------------------------------------------------------


def _gather(coefs: Any, index: Any) -> tuple[Any, Any]:
    """Getters ``k -> coefficient k`` of each token's piece, for ``L`` and for ``W``.

    Only the gather primitive differs between backends (the maths does not): NumPy's
    fastest gather is one ``take`` per contiguous coefficient row, done lazily so that
    each gathered row is used while it is in cache; torch's is one ``index_select`` of
    whole ``[n, 8]`` rows (its ``take`` costs 3x more per call).
    """
    if isinstance(coefs, tuple):
        c_lower, c_w = coefs
        return (lambda k: c_lower[k].take(index)), (lambda k: c_w[k].take(index))
    rows = coefs.index_select(0, index)
    return (lambda k: rows[:, k]), (lambda k: rows[:, 4 + k])


def _horner(coef: Any, u: Any) -> Any:
    acc = coef(3) * u
    acc += coef(2)
    acc *= u
    acc += coef(1)
    acc *= u
    acc += coef(0)
    return acc


def _evaluate_parts(xp: Any, table: BandTable, t: Any, coefs: Any):
    """``(L, W - xi, xi)`` at float64 log-probabilities ``t <= 0`` (1-D)."""
    e = xp.expm1(t)
    # |p - 1|: a tiny positive rounding of t then acts as p = 1 - |t| (no NaN).
    xi = t - xp.log(xp.abs(e))
    z = xi * (1.0 / table.width)
    z -= table.origin / table.width
    z = xp.clip(z, 0.0, table.n_pieces - 1e-6)
    index = xp.astype(z, xp.int64)  # truncation is floor for z >= 0
    z -= xp.astype(index, z.dtype)
    c_lower, c_w = _gather(coefs, index)
    lower = _horner(c_lower, z)
    w = _horner(c_w, z)
    w -= xi
    return lower, w, xi


def _evaluate(xp: Any, table: BandTable, t: Any, *, coefs: tuple[Any, Any]):
    """Fast ``(lower, upper)`` in float64 at float64 log-probabilities ``t`` (1-D)."""
    lower, w, _ = _evaluate_parts(xp, table, t, coefs)
    upper = xp.exp(w)
    upper += 1.0
    return lower, upper


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
    ``1 s`` (exact solves at the fitting nodes and on the check grid).

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
def _coefficients_on(table: BandTable, namespace: Any, dev: Any) -> Any:
    """The table's ``[n, 8]`` coefficient rows as an array of ``namespace`` on ``dev`` (cached)."""
    rows = np.ascontiguousarray(np.concatenate([table.coef_lower, table.coef_w]).T)
    return namespace.asarray(rows, device=dev)


@functools.lru_cache(maxsize=64)
def _table_or_none(div: _div.Divergence, delta: float) -> BandTable | None:
    try:
        return _cached_table(div, delta)
    except ValueError:
        return None


def _coefficients(xp: Any, table: BandTable, t: Any) -> Any:
    """Coefficients in the layout :func:`_gather` wants for ``t``'s array type and device."""
    from array_api_compat import device, is_numpy_array

    if is_numpy_array(t):
        return table.coef_lower, table.coef_w
    return _coefficients_on(table, xp, device(t))
