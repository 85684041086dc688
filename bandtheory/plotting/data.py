"""Figure data: the numbers behind every bandtheory figure, drawn by any backend.

Compute first, then draw: each builder here calls the library (:mod:`bandtheory.bounds`,
:mod:`bandtheory.schemes`, :mod:`bandtheory.divergences`) and arranges the result as a
tidy :class:`pandas.DataFrame` (one row per point) or a small frozen dataclass. The
matplotlib figures (:mod:`bandtheory.plotting.figures`) and the plotly figures of the
app draw the same frames, so the two can never disagree.

Column conventions of the bound frames (:func:`bound_curves`):

- ``curve``: a unique curve id; ``key``: the style key (:func:`~bandtheory.plotting.style.color_for`);
  ``label``: the legend text;
- ``p``: the old probability ``pi_old(a|s)``;
- ``lower``, ``upper``: ratio bounds;
- ``lower_var``, ``upper_var``: probability variation ``p (bound - 1)``;
- ``lower_new``, ``upper_new``: the new-probability bounds ``p * bound``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import divergences as _div
from .. import schemes as _schemes
from ..bounds import band_bounds, r_star
from .style import style_key

__all__ = [
    "REGIONS",
    "BOUND_COLUMNS",
    "p_grid",
    "paper_schemes",
    "divergence_schemes",
    "bound_curves",
    "simplex_limits",
    "RegionGrid",
    "region_grid",
    "saturating",
    "saturation_threshold",
    "saturation_thresholds",
    "tail_gain",
    "small_delta",
]

#: The four regions of the clipping-region figure (paper Fig. 2), in code order
#: 0, 1, 2, 3 of :attr:`RegionGrid.region`.
REGIONS: tuple[str, ...] = (
    "both allow",
    "Band allows, other clips",
    "other allows, Band clips",
    "both clip",
)

#: Columns of a bound frame, in order.
BOUND_COLUMNS: tuple[str, ...] = (
    "curve",
    "key",
    "label",
    "p",
    "lower",
    "upper",
    "lower_var",
    "upper_var",
    "lower_new",
    "upper_new",
)


def _check_real(name: str, value: Any, *, low: float, high: float, closed: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    ok = (low <= value <= high) if closed else (low < value < high)
    if not ok:
        brackets = "[]" if closed else "()"
        raise ValueError(f"{name} must lie in {brackets[0]}{low:g}, {high:g}{brackets[1]}, got {value!r}")
    return value


def _as_p(p: Any) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"p must be a non-empty 1-D array of probabilities, got shape {arr.shape}")
    if not np.all((arr > 0) & (arr <= 1)):
        raise ValueError("p must lie in (0, 1]; got values outside it")
    return arr


def p_grid(*, n: int = 400, p_min: float = 1e-3, p_max: float = 1.0 - 1e-3, log: bool = False) -> np.ndarray:
    """A grid of old probabilities, linear or geometric.

    Args:
        n: Number of points (>= 2).
        p_min: Smallest probability, in ``(0, 1)``.
        p_max: Largest probability, in ``(p_min, 1]``.
        log: Geometric spacing (for log-p axes) instead of linear.

    Returns:
        A float64 array of shape ``(n,)``, increasing.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    p_min = _check_real("p_min", p_min, low=0.0, high=1.0)
    p_max = _check_real("p_max", p_max, low=p_min, high=1.0, closed=True)
    if p_max <= p_min:
        raise ValueError(f"need p_min < p_max, got {p_min!r} and {p_max!r}")
    if log:
        return np.geomspace(p_min, p_max, int(n))
    return np.linspace(p_min, p_max, int(n))


def paper_schemes(
    *,
    delta: float = 0.1,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    divergences: Sequence[str] = ("kl", "tv", "chi2"),
) -> dict[str, Any]:
    """The schemes of the paper's Fig. 1: Band for KL, TV and Pearson chi2, DCPO and DAPO.

    Args:
        delta: Trust-region radius of the Bands (paper: 0.1).
        eps_low: ``eps_low`` of DCPO and DAPO Clip-Higher (paper: 0.2).
        eps_high: ``eps_high`` of DCPO and DAPO Clip-Higher (paper: 0.28, i.e. the fixed
            bounds 0.8 / 1.28).
        divergences: The Band divergences.

    Returns:
        An ordered ``{curve id: scheme}`` dict.
    """
    out: dict[str, Any] = {}
    for name in divergences:
        out[f"band_{_div.get(name).name}"] = _schemes.band(name, delta=delta)
    out["dcpo"] = _schemes.dcpo(eps_low=eps_low, eps_high=eps_high)
    out["dapo"] = _schemes.clip_higher(eps_low=eps_low, eps_high=eps_high)
    return out


def divergence_schemes(*, delta: float = 0.05, names: Iterable[str] | None = None) -> dict[str, Any]:
    """A Band scheme for each divergence (every built-in by default), keyed ``band_<name>``."""
    names = _div.names() if names is None else tuple(names)
    return {f"band_{_div.get(n).name}": _schemes.band(n, delta=delta) for n in names}


def _label(scheme: Any) -> str:
    if isinstance(scheme, _schemes.BandScheme):
        return f"Band {scheme.divergence.name} (δ={scheme.delta:g})"
    if isinstance(scheme, _schemes.FixedClip) and scheme.name == "clip_higher":
        return f"DAPO [{1 - scheme.eps_low:g}, {1 + scheme.eps_high:g}]"
    return str(scheme.label)


def _frame(
    curves: Sequence[str],
    keys: Sequence[str],
    labels: Sequence[str],
    p: np.ndarray,
    lowers: Sequence[Any],
    uppers: Sequence[Any],
) -> pd.DataFrame:
    """One bound frame for several curves over the same ``p``, curves in the order given.

    Built column by column from concatenated arrays (one frame, no concat of per-curve
    frames): the app rebuilds it on every widget change.
    """
    n = p.size
    lower = np.concatenate([np.broadcast_to(np.asarray(v, dtype=np.float64), p.shape) for v in lowers])
    upper = np.concatenate([np.broadcast_to(np.asarray(v, dtype=np.float64), p.shape) for v in uppers])
    pp = np.tile(p, len(curves))
    return pd.DataFrame(
        {
            "curve": np.repeat(np.asarray(curves, dtype=object), n),
            "key": np.repeat(np.asarray(keys, dtype=object), n),
            "label": np.repeat(np.asarray(labels, dtype=object), n),
            "p": pp,
            "lower": lower,
            "upper": upper,
            "lower_var": pp * (lower - 1.0),
            "upper_var": pp * (upper - 1.0),
            "lower_new": pp * lower,
            "upper_new": pp * upper,
        },
        columns=list(BOUND_COLUMNS),
    )


def simplex_limits(p: Any) -> pd.DataFrame:
    """The simplex limits ("theory"): ratio in ``[0, 1/p]``, variation in ``[-p, 1 - p]``.

    Args:
        p: 1-D array of old probabilities in ``(0, 1]``.

    Returns:
        A bound frame (columns :data:`BOUND_COLUMNS`) with curve id ``"simplex"``.
    """
    p = _as_p(p)
    return _frame(["simplex"], ["simplex"], ["simplex limits"], p, [0.0], [1.0 / p])


def bound_curves(schemes: Mapping[str, Any] | Sequence[Any], p: Any, *, simplex: bool = False) -> pd.DataFrame:
    """Ratio bounds, probability variation and new-probability bounds of clipping schemes.

    For each scheme and each ``p``: ``lower, upper = scheme.bounds(log p)``, the
    variation ``p (bound - 1)`` and the new probability ``p * bound``.

    Args:
        schemes: ``{curve id: scheme}`` or a sequence of schemes (ids from their names;
            a Band is ``band_<divergence>``). Any object with ``.bounds(log p)``.
        p: 1-D array of old probabilities in ``(0, 1]``.
        simplex: Append the simplex limits (curve ``"simplex"``).

    Returns:
        A tidy frame with columns :data:`BOUND_COLUMNS`, one row per (curve, p), curves
        in the order given.
    """
    p = _as_p(p)
    if not isinstance(schemes, Mapping):
        items: dict[str, Any] = {}
        for scheme in schemes:
            curve = f"band_{style_key(scheme)}" if isinstance(scheme, _schemes.BandScheme) else style_key(scheme)
            if curve in items:
                raise ValueError(f"two schemes share the curve id {curve!r}; pass a mapping with unique ids")
            items[curve] = scheme
        schemes = items
    if not schemes:
        raise ValueError("need at least one scheme")
    log_p = np.log(p)
    curves, keys, labels, lowers, uppers = [], [], [], [], []
    for curve, scheme in schemes.items():
        band = scheme.bounds(log_p)
        curves.append(str(curve))
        keys.append(style_key(scheme))
        labels.append(_label(scheme))
        lowers.append(band.lower)
        uppers.append(band.upper)
    if simplex:
        curves.append("simplex")
        keys.append("simplex")
        labels.append("simplex limits")
        lowers.append(0.0)
        uppers.append(1.0 / p)
    return _frame(curves, keys, labels, p, lowers, uppers)


# --------------------------------------------------------------------------------------
# Clipping region (paper Fig. 2)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionGrid:
    """Where two schemes allow a move ``pi_old -> pi_new``, on a grid.

    Attributes:
        p: Old probabilities, shape ``(n_p,)``.
        q: New probabilities, shape ``(n_q,)``.
        ratio: ``q / p``, shape ``(n_q, n_p)`` (rows follow ``q``, columns ``p``).
        region: Region code in ``0..3`` (index into :data:`REGIONS`), shape ``(n_q, n_p)``.
        band_bounds: ``(lower, upper)`` of the Band at ``p``.
        other_bounds: ``(lower, upper)`` of the other scheme at ``p``.
        band_label: Legend text of the Band.
        other_label: Legend text of the other scheme.
    """

    p: np.ndarray
    q: np.ndarray
    ratio: np.ndarray
    region: np.ndarray
    band_bounds: tuple[np.ndarray, np.ndarray]
    other_bounds: tuple[np.ndarray, np.ndarray]
    band_label: str
    other_label: str

    @property
    def labels(self) -> tuple[str, ...]:
        """The region names with "other" replaced by the other scheme's label."""
        short = self.other_label.split(" [")[0]
        return tuple(name.replace("other", short) for name in REGIONS)

    def to_frame(self) -> pd.DataFrame:
        """Tidy form: one row per grid point with ``p, q, ratio, region, region_name``."""
        pp, qq = np.meshgrid(self.p, self.q)
        codes = self.region.ravel()
        return pd.DataFrame(
            {
                "p": pp.ravel(),
                "q": qq.ravel(),
                "ratio": self.ratio.ravel(),
                "region": codes,
                "region_name": np.asarray(self.labels, dtype=object)[codes],
            }
        )


def region_grid(band_scheme: Any, other_scheme: Any, p: Any, q: Any) -> RegionGrid:
    """Classify each move ``(pi_old, pi_new) = (p, q)`` into the four regions of Fig. 2.

    A scheme *allows* the move when the ratio ``r = q / p`` lies within its bounds at
    ``p`` (``lower(p) <= r <= upper(p)``), and *clips* it otherwise. The code is
    ``0`` both allow, ``1`` Band allows and the other clips, ``2`` the other allows
    and the Band clips, ``3`` both clip.

    Args:
        band_scheme: The Band (any scheme; named "Band" in the region labels).
        other_scheme: The scheme to compare with (e.g. DAPO Clip-Higher).
        p: 1-D grid of old probabilities in ``(0, 1]``.
        q: 1-D grid of new probabilities in ``[0, 1]``.

    Returns:
        A :class:`RegionGrid`.
    """
    p = _as_p(p)
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or not np.all((q >= 0) & (q <= 1)):
        raise ValueError("q must be a non-empty 1-D array of probabilities in [0, 1]")
    log_p = np.log(p)
    band = band_scheme.bounds(log_p)
    other = other_scheme.bounds(log_p)
    b_lo, b_hi = np.asarray(band.lower, np.float64), np.asarray(band.upper, np.float64)
    o_lo, o_hi = np.asarray(other.lower, np.float64), np.asarray(other.upper, np.float64)
    ratio = q[:, None] / p[None, :]
    band_ok = (ratio >= b_lo[None, :]) & (ratio <= b_hi[None, :])
    other_ok = (ratio >= o_lo[None, :]) & (ratio <= o_hi[None, :])
    region = np.where(band_ok & other_ok, 0, np.where(band_ok, 1, np.where(other_ok, 2, 3)))
    return RegionGrid(
        p=p,
        q=q,
        ratio=ratio,
        region=region.astype(np.int8),
        band_bounds=(b_lo, b_hi),
        other_bounds=(o_lo, o_hi),
        band_label=_label(band_scheme),
        other_label=_label(other_scheme),
    )


# --------------------------------------------------------------------------------------
# Saturation, tail gain, small delta
# --------------------------------------------------------------------------------------


def saturating(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The divergences whose Band saturates (``f(0+)`` finite), built-ins by default."""
    names = _div.names() if names is None else tuple(names)
    return tuple(_div.get(n).name for n in names if math.isfinite(_div.get(n).f_at_0))


def saturation_threshold(divergence: str | _div.Divergence, *, delta: float) -> tuple[float, float]:
    """The old probabilities beyond which a Band bound hits the simplex.

    The upper bound is ``1/p`` exactly when ``h(p) = g_f(p, 1/p) = p f(1/p) + (1 - p)
    f(0) <= delta``. ``h`` is convex in ``p`` (a perspective plus a linear term) with
    ``h(1) = 0``, hence decreasing, from ``h(0+) = f(0) + f'(inf)``: the upper bound
    saturates for ``p >= p_upper``, the root of ``h(p) = delta`` (``0`` when
    ``delta >= h(0+)``). Likewise the lower bound is ``0`` for ``p <= p_lower``, the root
    of ``g_f(p, 0) = delta``; by the mirror identity ``p_lower = 1 - p_upper``. Both roots
    are found by Brent's method in ``log p`` on the defining equations (the mirror
    identity is left to the tests as an independent check).

    Args:
        divergence: A registry name or entry with finite ``f(0+)``.
        delta: Trust-region radius ``> 0``.

    Returns:
        ``(p_lower, p_upper)``: ``lower = 0`` for ``p <= p_lower``, ``upper = 1/p`` for
        ``p >= p_upper``.

    Raises:
        ValueError: When ``f(0+) = inf`` (the Band never saturates) or ``delta <= 0``.
    """
    from scipy.optimize import brentq

    div = _div.get(divergence)
    delta = _check_real("delta", delta, low=0.0, high=math.inf)
    if not math.isfinite(div.f_at_0):
        raise ValueError(f"divergence {div.name!r} has f(0+) = inf: its Band never saturates")
    h_zero = div.f_at_0 + div.slope_at_inf
    if delta >= h_zero:
        return 1.0, 0.0

    f0 = div.f_at_0

    def f(u: float) -> float:
        return float(div(u))

    # Written out rather than through g(p, r): at r = 1/p the complement's ratio
    # (1 - r p)/(1 - p) is 0 only up to rounding, and f can be steep at 0 (Hellinger).
    def upper_gap(x: float) -> float:
        p = math.exp(x)
        return p * f(1.0 / p) + (-math.expm1(x)) * f0 - delta

    def lower_gap(x: float) -> float:
        p = math.exp(x)
        q = -math.expm1(x)
        return p * f0 + q * f(1.0 / q) - delta

    # h(p) - delta changes sign between p -> 0 (h -> h(0+) > delta) and p -> 1 (h -> 0).
    x_min, x_max = math.log(1e-300), math.log1p(-1e-15)
    x_up = brentq(upper_gap, x_min, x_max, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    x_lo = brentq(lower_gap, x_min, x_max, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return math.exp(x_lo), math.exp(x_up)


def saturation_thresholds(names: Iterable[str] | None = None, *, deltas: Any) -> pd.DataFrame:
    """:func:`saturation_threshold` for each saturating divergence and each ``delta``.

    Args:
        names: Divergence names (default: the built-ins that saturate); divergences that
            never saturate are skipped.
        deltas: 1-D array of radii ``> 0``.

    Returns:
        Frame with columns ``divergence, key, delta, p_lower, p_upper``.
    """
    deltas = np.asarray(deltas, dtype=np.float64).ravel()
    rows = []
    for name in saturating(names):
        for delta in deltas:
            p_lo, p_up = saturation_threshold(name, delta=float(delta))
            rows.append((name, name, float(delta), p_lo, p_up))
    return pd.DataFrame(rows, columns=["divergence", "key", "delta", "p_lower", "p_upper"])


def tail_gain(
    names: Iterable[str] | None = None, *, deltas: Any, p_small: float | None = 1e-10
) -> pd.DataFrame:
    """The ``p -> 0`` limit of the probability gain ``p (upper - 1)`` against ``delta``.

    By the mirror identity ``p (upper(p) - 1) = (1 - p)(1 - lower(1 - p))``, so the limit
    is ``1 - r*(delta)`` with ``r*`` the ``p -> 1`` lower bound (root of
    ``f(r) + (1 - r) f'(inf) = delta``): ``1 - exp(-delta)`` for KL, ``0`` whenever
    ``f'(inf) = inf`` (Pearson chi2). Fixed clipping's gain ``eps_high * p`` tends to 0.

    Args:
        names: Divergence names (default: every built-in).
        deltas: 1-D array of radii ``> 0``.
        p_small: Also report the exact gain at this tiny ``p`` (``None`` to skip), a
            numerical check of the limit.

    Returns:
        Frame with columns ``divergence, key, delta, gain`` (the limit) and, unless
        ``p_small`` is None, ``gain_at_p_small``.
    """
    names = _div.names() if names is None else tuple(names)
    deltas = np.asarray(deltas, dtype=np.float64).ravel()
    rows = []
    for name in names:
        div = _div.get(name)
        for delta in deltas:
            row = {"divergence": div.name, "key": div.name, "delta": float(delta),
                   "gain": 1.0 - r_star(div, delta=float(delta))}
            if p_small is not None:
                upper = float(band_bounds(math.log(p_small), div, delta=float(delta)).upper)
                row["gain_at_p_small"] = p_small * (upper - 1.0)
            rows.append(row)
    return pd.DataFrame(rows)


def _series(div: _div.Divergence, p: float, deltas: np.ndarray) -> dict[str, np.ndarray] | None:
    """The expansion with its ``O(delta)`` term, ``1 +/- a1 sqrt(delta) + a2 delta``, from
    :func:`bandtheory.symbolic.derive` (``None`` when the symbolic layer is missing or
    found no series)."""
    try:
        from .. import symbolic
    except ImportError:  # the symbolic layer is optional for the figures
        return None
    derivation = symbolic.derive(div, timeout=60.0)
    if derivation.series_upper is None or derivation.series_lower is None:
        return None
    out = {}
    p_arr = np.full_like(deltas, p)
    for side in ("upper", "lower"):
        fn = symbolic.compile_expression(getattr(derivation, f"series_{side}"))
        with np.errstate(all="ignore"):
            out[side] = np.asarray(fn(np, p_arr, deltas), dtype=np.float64)
    return out


def small_delta(
    divergence: str | _div.Divergence, *, p: float, deltas: Any, second_order: bool = False
) -> pd.DataFrame:
    """Exact Band ends against the small-delta expansion, over ``delta``.

    The expansion (THEORY.md section 2) is

    .. math:: r_\\pm = 1 \\pm \\sqrt{2 \\delta (1 - p) / (f''(1) p)} + O(\\delta).

    Args:
        divergence: A smooth divergence (``f''(1)`` finite and ``> 0``).
        p: Old probability in ``(0, 1)``.
        deltas: 1-D array of radii ``> 0``.
        second_order: Also give ``1 +/- a1 sqrt(delta) + a2 delta`` with ``a2`` derived
            by :func:`bandtheory.symbolic.derive` (a few seconds of sympy).

    Returns:
        Frame with columns ``divergence, key, p, delta, side`` (``"lower"``/``"upper"``),
        ``exact``, ``first_order`` and ``rel_error`` (``|first_order - exact| /
        |exact - 1|``); with ``second_order``, also ``second_order`` and
        ``rel_error_2`` when the symbolic layer found the series.
    """
    div = _div.get(divergence)
    p = _check_real("p", p, low=0.0, high=1.0)
    if not div.smooth:
        raise ValueError(
            f"divergence {div.name!r} is not twice differentiable at u = 1 (f''(1) = "
            f"{div.curvature_at_1}); the small-delta expansion needs a smooth f"
        )
    deltas = np.asarray(deltas, dtype=np.float64).ravel()
    if deltas.size == 0 or not np.all(deltas > 0):
        raise ValueError("deltas must be a non-empty array of numbers > 0")
    half_width = np.sqrt(2.0 * deltas * (1.0 - p) / (div.curvature_at_1 * p))
    lower = np.empty_like(deltas)
    upper = np.empty_like(deltas)
    for i, delta in enumerate(deltas):
        band = band_bounds(math.log(p), div, delta=float(delta))
        lower[i], upper[i] = float(band.lower), float(band.upper)
    series = _series(div, p, deltas) if second_order else None
    frames = []
    for side, sign, exact in (("lower", -1.0, lower), ("upper", 1.0, upper)):
        first = 1.0 + sign * half_width
        data = {
            "divergence": div.name,
            "key": div.name,
            "p": p,
            "delta": deltas,
            "side": side,
            "exact": exact,
            "first_order": first,
            "rel_error": np.abs(first - exact) / np.abs(exact - 1.0),
        }
        if series is not None:
            data["second_order"] = series[side]
            data["rel_error_2"] = np.abs(series[side] - exact) / np.abs(exact - 1.0)
        frames.append(pd.DataFrame(data))
    return pd.concat(frames, ignore_index=True)
