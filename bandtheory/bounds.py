"""The exact Band: ratio bounds allowed by an f-divergence trust region.

For a token with old probability ``p`` the Band is the interval of ratios
``r = pi(a) / p`` reachable inside ``{pi : D_f(pi || pi_old) <= delta}``. By the
reduction theorem (THEORY.md section 2) it depends on ``p`` alone, and its ends are
the roots in ``r`` of

.. math::

    g_f(p, r) = p\\, f(r) + (1 - p)\\, f\\!\\left(\\frac{1 - r p}{1 - p}\\right) = \\delta,
    \\qquad \\text{lower} \\in [0, 1],\\ \\text{upper} \\in [1, 1/p].

Numerical method (why it is accurate everywhere). Both ends are one problem: one of
the two masses ``p`` and ``1 - p`` shrinks by the factor ``v = exp(-y)`` and the other
absorbs what it lost. With ``a`` the shrinking mass and ``b = 1 - a``,

.. math::

    G(y) = a\\, f(e^{-y}) + b\\, f\\!\\left(1 + \\frac{a (1 - e^{-y})}{b}\\right) = \\delta,
    \\qquad y \\in [0, \\infty].

The lower bound is ``a = p`` and ``lower = exp(-y)``; the upper bound is ``a = 1 - p``
and ``upper = 1 + (1 - p)(1 - exp(-y)) / p``. ``1 - p`` is formed as ``-expm1(log p)``,
``1 - exp(-y)`` as ``-expm1(-y)`` and ``f(exp(-y))`` symbolically in ``y``, so no step
cancels catastrophically: the upper bound keeps its relative accuracy for ``p`` down
to the smallest normal double and the lower bound its absolute accuracy when
``exp(-y)`` underflows. ``G`` is increasing in ``y``; it is solved by Newton's method
safeguarded by a bracket (bisection or doubling when a step leaves it), started at the
small-``delta`` solution ``y0 = sqrt(2 delta b / (f''(1) a))``. Above the root the
Newton step is taken in ``(log y, log G)``: a tail that grows like a power of ``y``
(``alpha(a)``, ``a > 2``, at tiny ``p``, where ``y0`` is dozens of orders of magnitude
too large) is then a straight line, where Newton in ``y`` needs hundreds of steps.
Saturation is decided first and exactly: ``G(inf) = a f(0+) + b f(1 + a/b) <= delta``
gives ``lower = 0`` or ``upper = 1/p``. At ``p = 1`` the term ``b f(1 + c/b)`` is
replaced by its perspective limit ``c f'(inf)``, which gives ``[r*, 1]``.

Large inputs (32768 tokens or more on NumPy, 1024 or more on other backends, whose
bracketing solver cannot stop early without a host read) skip the bracket: a fixed
number of Newton steps, in ``w = e^{-m y}`` with ``m`` the order of ``f(v) - f(0)`` at ``v = 0``
(:func:`_newton_power`), from a table start (:mod:`bandtheory.fast`: the fast table if
cached, else a small start table built once per ``(divergence, delta)``). The number of
steps is certified against the safeguarded solver when the table is built; it is a
constant, so nothing depends on the data and nothing synchronises with the host.

References:
    BandPO (arXiv 2603.04918), the Band operator and its reduction to one dimension
    (THEORY.md section 2).
"""

from __future__ import annotations

import functools
import math
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_array

from . import divergences as _div

__all__ = ["Band", "band_bounds", "g", "r_star", "LOG_P_MIN"]

#: Below this log-probability ``p`` is not a normal double; the Band is reported as
#: its ``p -> 0`` limit ``[0, inf]`` (the true upper bound overflows float64 there
#: for every divergence with a finite ``f'(inf)``).
LOG_P_MIN = math.log(np.finfo(np.float64).tiny)

_MAX_ITER = 100
# Newton converges quadratically, so once a step is below 1e-13 relative the iterate
# after it is exact to rounding; a tighter test would chase the ~1e-16 noise of G.
_RTOL = 1e-13


@dataclass(frozen=True)
class Band:
    """Ratio bounds ``lower <= r <= upper`` (arrays of the input's shape and type)."""

    lower: Any
    upper: Any

    def __iter__(self):
        yield self.lower
        yield self.upper


# --------------------------------------------------------------------------------------
# Input handling (public boundary only)
# --------------------------------------------------------------------------------------


def _check_delta(delta: Any) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)):
        raise TypeError(f"delta must be a real number, got {type(delta).__name__}")
    value = float(delta)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"delta must be a finite number > 0, got {delta!r}")
    return value


#: Valid values of ``mode`` in :func:`band_bounds`.
MODES = ("exact", "fast", "compiled")


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def _as_array(old_log_prob: Any) -> tuple[Any, Any, bool]:
    """Return (array, namespace, was_python_scalar); refuse non-float dtypes."""
    scalar = False
    if isinstance(old_log_prob, bool):
        raise TypeError("old_log_prob must be floating point, got bool")
    if isinstance(old_log_prob, (int, float)):
        old_log_prob = np.asarray(float(old_log_prob), dtype=np.float64)
        scalar = True
    elif isinstance(old_log_prob, (list, tuple)) or np.isscalar(old_log_prob):
        old_log_prob = np.asarray(old_log_prob)
    try:
        xp = array_namespace(old_log_prob)
    except TypeError as exc:
        raise TypeError(
            f"old_log_prob must be a float array (numpy or torch) or a Python float, "
            f"got {type(old_log_prob).__name__}"
        ) from exc
    if not xp.isdtype(old_log_prob.dtype, "real floating"):
        raise TypeError(
            f"old_log_prob must have a real floating dtype (float16/32/64, bfloat16), "
            f"got {old_log_prob.dtype}"
        )
    return old_log_prob, xp, scalar


def _first_index(mask_np: np.ndarray) -> tuple[int, ...]:
    flat = int(np.flatnonzero(mask_np.reshape(-1))[0])
    return tuple(int(i) for i in np.unravel_index(flat, mask_np.shape))


def _to_numpy(xp: Any, x: Any) -> np.ndarray:
    if is_numpy_array(x):
        return x
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 is exact
            x = x.float()
        return np.asarray(x)
    return np.asarray(x)


def _rounding_tolerance(dtype: Any) -> float:
    """Largest log-probability accepted as rounding above 0: ``8 eps`` of ``dtype``.

    ``eps`` is that of the dtype in which :func:`validate_log_prob` reads the values
    (NumPy has no bfloat16, so bfloat16 is read, and judged, as float32), so the
    check and the unchecked hot path (``check_input=False``) agree on what is invalid.
    """
    name = str(dtype).rsplit(".", 1)[-1]
    if name == "bfloat16":
        name = "float32"
    return 8.0 * float(np.finfo(np.dtype(name)).eps)


def validate_log_prob(x: Any, xp: Any, *, name: str = "old_log_prob") -> None:
    """Raise ``ValueError`` for NaN or positive (beyond rounding) log-probabilities.

    Positive means above :func:`_rounding_tolerance` (``8 eps`` of the dtype), which
    includes ``+inf``. This needs the values on the host (a device synchronisation
    for GPU tensors).
    """
    values = _to_numpy(xp, x)
    bad_nan = np.isnan(values)
    if bad_nan.any():
        raise ValueError(
            f"{name} contains NaN in {int(bad_nan.sum())} entries (first at index "
            f"{_first_index(bad_nan)}); log-probabilities must be <= 0 or -inf"
        )
    bad_pos = values > _rounding_tolerance(values.dtype)
    if bad_pos.any():
        raise ValueError(
            f"{name} is positive in {int(bad_pos.sum())} entries (first at index "
            f"{_first_index(bad_pos)}, value {values[_first_index(bad_pos)]!r}); "
            "log-probabilities must be <= 0 (or -inf)"
        )


# --------------------------------------------------------------------------------------
# The reduced objective and its Newton solve
# --------------------------------------------------------------------------------------


def _objective(xp, div, a, b, b_pos, b_safe, y, slope_inf):
    """``G(y) - 0`` and ``dG/dy`` for the shrinking mass ``a`` and growing mass ``b``."""
    x = -xp.expm1(-y)
    # exp(-y) = 1 - x only enters the derivative, which needs no full accuracy.
    v = 1.0 - x
    w = 1.0 + a * x / b_safe
    fw = div.f_num(xp, w)
    f1w = div.f1_num(xp, w)
    # b f(1 + c/b) -> c f'(inf) as b -> 0 (perspective of f): at p == 1 exactly, and
    # where f(w) overflows (w beyond ~1e154, e.g. (w - 1)^2 / w), which only happens
    # when b / c is so small that the limit is exact to rounding.
    tail = b_safe * fw
    tail = xp.where(b_pos & xp.isfinite(tail), tail, a * x * slope_inf)
    slope_w = xp.where(b_pos & xp.isfinite(f1w), f1w, slope_inf)
    value = a * div.f_logspace_num(xp, y) + tail
    deriv = a * (div.f_logspace1_num(xp, y) + v * slope_w)
    return value, deriv


def _saturation_value(xp, div, a, b, b_pos, b_safe):
    """``G(inf) = a f(0+) + b f(1 + a/b)`` (perspective limit at ``b = 0``)."""
    f0 = div.f_at_0
    if math.isinf(f0):
        return xp.full_like(a, math.inf)
    tail = b_safe * div.f_num(xp, 1.0 + a / b_safe)
    tail = xp.where(b_pos & xp.isfinite(tail), tail, a * div.slope_at_inf)
    return a * f0 + tail


def _solve_side(xp, div, a, b, delta, *, early_exit: bool):
    """Solve ``G(y) = delta`` for ``y`` in ``[0, inf]`` (``inf`` when saturated)."""
    b_pos = b > 0
    b_safe = xp.where(b_pos, b, 1.0)
    a_pos = a > 0
    a_safe = xp.where(a_pos, a, 1.0)
    saturated = _saturation_value(xp, div, a_safe, b, b_pos, b_safe) <= delta
    saturated = saturated & a_pos

    slope_inf = div.slope_at_inf
    curvature = div.curvature_at_1
    if not (math.isfinite(curvature) and curvature > 0):
        curvature = 1.0  # kinked f (TV): any positive start works, Newton corrects it
    y = xp.sqrt(2.0 * delta * xp.where(b_pos, b, 1.0) / (curvature * a_safe))
    y = xp.where(y > 0, y, 1.0)
    lo = xp.zeros_like(a)
    hi = xp.full_like(a, math.inf)
    step_old = xp.full_like(a, math.inf)
    step = xp.full_like(a, math.inf)
    done = saturated | ~a_pos
    # With early_exit (NumPy) converged entries are dropped from the working arrays once
    # they are the majority, so a few slow tokens do not keep the whole batch iterating.
    compact = early_exit and y.ndim == 1
    y_out, active = (xp.asarray(y, copy=True), None) if compact else (None, None)
    for _ in range(_MAX_ITER):
        if compact and y.shape[0] > 64 and 2 * int(xp.sum(done)) > y.shape[0]:
            keep = ~done
            if active is None:
                active = xp.arange(y.shape[0])
            y_out[active] = y
            active = active[keep]
            y, lo, hi, step_old, step, done = (v[keep] for v in (y, lo, hi, step_old, step, done))
            a_safe, b, b_pos, b_safe = (v[keep] for v in (a_safe, b, b_pos, b_safe))
        value, deriv = _objective(xp, div, a_safe, b, b_pos, b_safe, y, slope_inf)
        above = ~(value <= delta)  # NaN or overflow counts as "beyond the root"
        hi = xp.where(above, xp.minimum(hi, y), hi)
        lo = xp.where(above, lo, xp.maximum(lo, y))
        # Above the root the step is Newton's in (log y, log G): where the tail grows
        # like a power y^k (alpha(a), a > 2, at tiny p: k = a) Newton in y only shrinks
        # y by 1 - 1/k per step, and from the small-delta start that takes hundreds of
        # steps; in log-log coordinates a power is a line. Near the root both steps
        # agree to second order. Below the root (and where G is not finite) it is
        # Newton's in y.
        newton = y - (value - delta) / deriv
        newton = xp.where(above & (value < math.inf),
                          y * xp.exp(-xp.log(value / delta) * value / (y * deriv)), newton)
        # Newton is taken when it stays in the bracket and at least halves the step of
        # two iterations ago (as in Numerical Recipes' rtsafe); otherwise the bracket is
        # split: geometrically while it spans orders of magnitude (G can grow like
        # exp(y), e.g. Neyman chi2 at tiny p), else at its midpoint, or doubled while
        # it is still open above. Where G overflows and nothing below the root is known
        # yet, the root can be dozens of orders of magnitude lower (f(w) ~ w^a
        # overflows for a tail far beyond it): y shrinks by 2^-64 at once.
        accept = (newton >= lo) & (newton <= hi) & (xp.abs(newton - y) <= 0.5 * step_old)
        wide = (lo > 0) & (hi > 4.0 * lo)
        split = xp.where(wide, xp.sqrt(lo) * xp.sqrt(hi), 0.5 * (lo + hi))  # lo * hi underflows
        split = xp.where((lo > 0) | (value < math.inf), split, 5.421010862427522e-20 * hi)
        fallback = xp.where(hi < math.inf, split, 2.0 * y + 1.0)
        y_next = xp.where(accept, newton, fallback)
        converged = (xp.abs(y_next - y) <= _RTOL * y_next) | (hi - lo <= _RTOL * lo)
        step_old = xp.where(done, step_old, step)
        step = xp.where(done, step, xp.abs(y_next - y))
        y = xp.where(done, y, y_next)
        done = done | converged
        if early_exit and bool(xp.all(done)):
            break
    if active is not None:
        y_out[active] = y
        y = y_out
    y = xp.where(saturated, math.inf, y)
    return y


@functools.lru_cache(maxsize=256)
def _newton_power(div: _div.Divergence) -> float:
    """Exponent ``m`` of the Newton variable ``w = v^m = e^{-m y}`` of :func:`_polish_side`.

    ``m`` is the order of ``f(v) - f(0+)`` as ``v -> 0`` (``G`` is then about linear in
    ``w`` next to a saturation kink, where the root ``v`` is tiny): ``0`` (Newton in
    ``y``) where ``f(0+) = inf``, ``1/2`` for Hellinger, ``a`` for ``alpha(a)`` with
    ``0 < a < 1``, else ``1`` (``v`` itself; also for ``v log v``, whose estimate is
    ``0.95``). Estimated from ``f`` at ``v = 1e-6`` and ``1e-12`` and cached on the
    entry (by identity). Any ``m`` in ``[0, 1]`` gives Newton's method, quadratic at the
    root; ``m`` only sets how far from the root a start may be (the number of steps is
    certified either way).
    """
    if not math.isfinite(div.f_at_0):
        return 0.0
    with np.errstate(all="ignore"):
        diff = div.f_num(np, np.asarray([1e-6, 1e-12])) - div.f_at_0
        est = float(np.log(diff[0] / diff[1]) / np.log(1e6))
    return est if 0.0 < est < 0.9 else 1.0


def _polish_side(xp, div, a, b, delta, y, *, safeguard: bool, steps: int):
    """Root ``y`` from a table start by a fixed number of Newton steps.

    ``steps`` is certified when the table is built: the fewest steps that reach
    ``1e-12`` (relative for ``upper``, absolute for ``lower``) against the safeguarded
    solver on the table's dense check grid (the error peaks of every piece and 256
    points on each side of each saturation kink), so the fixed steps are the whole
    method, on every backend. With ``safeguard`` (NumPy) a token where Newton visibly
    fails (a non-finite or non-positive iterate) is re-solved by the safeguarded
    solver, which converges from any start. Saturation is decided exactly as in
    :func:`_solve_side`.
    """
    b_pos = b > 0
    b_safe = xp.where(b_pos, b, 1.0)
    a_pos = a > 0
    a_safe = xp.where(a_pos, a, 1.0)
    saturated = None
    if math.isfinite(div.f_at_0):
        saturated = (_saturation_value(xp, div, a_safe, b, b_pos, b_safe) <= delta) & a_pos
    failed = None
    # Newton in w = v^m = e^{-m y} (v the ratio of the shrinking mass) where f(0) is
    # finite, m the order of f(v) - f(0) at v = 0 (_newton_power): G is then about
    # linear in w as v -> 0, so a start next to a saturation kink (y far from the root,
    # G' ~ e^{-m y}) converges in a few steps, where Newton in y moves y by about 1/m a
    # step (and Newton in v, for Hellinger's sqrt(v), only halves log v a step). Where
    # f(0) = inf, G grows like y (KL's -log v) and Newton in y (m = 0) is the one that
    # is exact there. All are Newton's method, quadratic near the root.
    power = _newton_power(div)
    for _ in range(steps):
        value, deriv = _objective(xp, div, a_safe, b, b_pos, b_safe, y, div.slope_at_inf)
        ratio = (value - delta) / deriv
        if power == 1.0:
            y_next = y - xp.log1p(ratio)
        elif power > 0.0:
            y_next = y - xp.log1p(power * ratio) * (1.0 / power)
        else:
            y_next = y - ratio
        ok = xp.isfinite(y_next) & (y_next > 0)
        if safeguard:
            failed = ~ok if failed is None else failed | ~ok
        # A rejected step still moves y by a factor 2 towards the root: next to a
        # saturation kink G is flat far above the root (G' ~ e^-y), so Newton from a
        # start clipped at lower = 1e-16 lands below 0, and staying put would never end.
        y = xp.where(ok, y_next, xp.where(value > delta, 0.5 * y, 2.0 * y))
    if safeguard and failed is not None:
        bad = a_pos & failed
        if saturated is not None:
            bad = bad & ~saturated
        if bool(xp.any(bad)):
            y[bad] = _solve_side(xp, div, a[bad], b[bad], delta, early_exit=True)
    if saturated is not None:
        y = xp.where(saturated, math.inf, y)
    return y


# Inputs from which exact mode starts from a table (built once per (divergence, delta),
# 0.1-0.5 s). NumPy's safeguarded solver drops converged tokens and is fast on small
# inputs (1.5 ms for 1000 KL tokens), so the build pays only for large ones; other
# backends run it for a fixed 100 iterations (no host sync): 60 ms for 1000 torch CPU
# tokens, 0.6 s for 32767, against ~1-10 ms from the table.
_POLISH_MIN_SIZE = 1 << 15
_POLISH_MIN_SIZE_OTHER = 1 << 10
# Chunk length for CPU backends: the temporaries of one chunk stay in the L2 cache and
# the peak extra memory stays a small constant instead of tens of arrays of N.
_CHUNK = 1 << 16


def _band64(xp, div, logp, delta, *, early_exit: bool, table=None, tol: float = math.inf):
    """The Band for float64 log-probabilities ``logp`` (validated or not).

    With a certified ``table`` (large inputs) it starts from the table and takes the
    table's certified number of Newton steps; otherwise it runs the safeguarded solver.
    Invalid entries (NaN, or above ``tol``: ``+inf`` and positive values beyond
    rounding) are solved at a harmless stand-in and come out as NaN at both ends, with
    no host synchronisation; ``-inf`` gives ``[0, inf]``.
    """
    invalid = ~(logp <= tol)  # NaN compares false
    logp = xp.minimum(logp, 0.0)
    tiny = logp < LOG_P_MIN  # includes -inf
    # The stand-in keeps NaN out of the solver and out of the table's piece index.
    logp_safe = xp.where(tiny | invalid, -1.0, logp)
    p = xp.exp(logp_safe)
    pbar = -xp.expm1(logp_safe)

    if table is not None:
        from .fast import _coefficients, _evaluate_parts, y_start_lower, y_start_upper

        lower0, v = _evaluate_parts(xp, table, logp_safe, _coefficients(xp, table, logp))
        k_lo, k_up = table.polish_steps
        numpy = is_numpy_array(logp)
        y0_up = y_start_upper(xp, v, logp_safe, xp.log(pbar))
        y_up = _polish_side(xp, div, pbar, p, delta, y0_up, safeguard=numpy, steps=k_up)
        y_lo = _polish_side(xp, div, p, pbar, delta, y_start_lower(xp, lower0),
                            safeguard=numpy, steps=k_lo)
    else:
        y_up = _solve_side(xp, div, pbar, p, delta, early_exit=early_exit)
        y_lo = _solve_side(xp, div, p, pbar, delta, early_exit=early_exit)
    x_up = -xp.expm1(-y_up)
    inv_p = xp.exp(-logp_safe)
    upper = xp.where(xp.isinf(y_up), inv_p, 1.0 + pbar * x_up / p)
    upper = xp.where(pbar > 0, upper, 1.0)
    upper = xp.minimum(upper, inv_p)  # rounding never leaves the simplex

    lower = xp.exp(-y_lo)

    upper = xp.where(tiny, math.inf, upper)
    lower = xp.where(tiny, 0.0, lower)
    upper = xp.where(invalid, math.nan, upper)
    lower = xp.where(invalid, math.nan, lower)
    return lower, upper


def _fast64(xp, table, logp, tol: float = math.inf):
    """Fast-mode ``(lower, upper)`` from a certified table (float64 ``logp``); entries
    above ``tol`` or NaN give NaN (see :func:`bandtheory.fast._locate`)."""
    from .fast import _coefficients, _evaluate

    # No clamp of logp: the coordinate uses |log p|, so rounding above 0 acts as p ~ 1.
    return _evaluate(xp, table, logp, coefs=_coefficients(xp, table, logp), tol=tol)


def _chunk_length(x) -> int:
    """Static chunk length: whole arrays on accelerators, cache-sized chunks on CPU."""
    if is_numpy_array(x):
        return _CHUNK
    dev = getattr(x, "device", None)
    if getattr(dev, "type", None) == "cpu" and hasattr(x, "__setitem__"):
        return _CHUNK
    return 1 << 62


def _map_chunks(xp, fn, x, *others):
    """Apply ``fn`` chunk by chunk: float64 1-D ``x`` (and 1-D slices of ``others``, arrays
    of ``x``'s shape) in, a tuple of float64 1-D arrays out.

    The loop is over a static number of chunks (a function of the shape only); results
    are written into outputs of the input's dtype, so no float64 copy of the whole
    batch is ever held. Returns the tuple of outputs, each of ``x``'s shape and dtype.
    """
    shape = tuple(x.shape)
    dtype = x.dtype
    flat = xp.reshape(x, (-1,))
    flat_others = [xp.reshape(o, (-1,)) for o in others]
    n = int(flat.shape[0])
    chunk = _chunk_length(x)
    if n <= chunk:
        outs = fn(xp.astype(flat, xp.float64), *flat_others)
        return tuple(xp.reshape(xp.astype(o, dtype), shape) for o in outs)
    from array_api_compat import device

    results = None
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        outs = fn(xp.astype(flat[start:stop], xp.float64), *(o[start:stop] for o in flat_others))
        if results is None:
            results = [xp.empty((n,), dtype=dtype, device=device(x)) for _ in outs]
        for res, o in zip(results, outs):
            res[start:stop] = o
    return tuple(xp.reshape(res, shape) for res in results)


def band_bounds(
    old_log_prob: Any,
    divergence: str | _div.Divergence = "kl",
    *,
    delta: float = 0.05,
    check_input: bool = True,
    mode: str = "exact",
) -> Band:
    """The exact Band of every token: ratio bounds from an f-divergence trust region.

    .. math::

        \\text{upper}(p) = \\max\\{r \\in [1, 1/p] : g_f(p, r) \\le \\delta\\},\\quad
        \\text{lower}(p) = \\min\\{r \\in [0, 1] : g_f(p, r) \\le \\delta\\}

    with ``g_f(p, r) = p f(r) + (1 - p) f((1 - r p)/(1 - p))``. No heuristics: the
    saturated ends are exactly ``1/p`` and ``0``; ``p = 1`` gives ``[r*, 1]`` and
    ``log p = -inf`` gives ``[0, inf]``. Accuracy in float64: relative error
    ``<= 1e-12`` for ``upper``, absolute ``<= 1e-12`` for ``lower``.

    Args:
        old_log_prob: ``log pi_old`` of each token, any shape; a float array (numpy;
            other array-API libraries through array-api-compat) or a Python float.
            Values must be ``<= 0`` (tiny positive rounding is clamped) or ``-inf``.
        divergence: A registry name (``"kl"``, ``"tv"``, ``"alpha(2)"``, ...) or a
            :class:`~bandtheory.divergences.Divergence`.
        delta: Trust-region radius, a finite number ``> 0``.
        check_input: Check for NaN and positive log-probabilities (needs the values on
            the host; pass ``False`` to skip the check in a hot loop). Without the
            check nothing is raised and nothing is synchronised: an invalid entry (NaN,
            ``+inf``, or ``log p`` above ``8 eps`` of the input dtype, the rounding the
            check accepts) gives NaN at both ends, every other entry its exact value,
            and ``-inf`` still ``[0, inf]``.
        mode: ``"exact"`` (float64 roots, the accuracy above), ``"fast"`` (the
            certified table of :mod:`bandtheory.fast`, error ``<= 1e-7``, about 20 ns a
            token on CPU, built on first use for each ``(divergence, delta)``). Where no
            table certifies, fast mode returns the exact mode's values and warns once
            per ``(divergence, delta)`` with
            :class:`~bandtheory.fast.TableFallbackWarning`. Exact mode solves NumPy
            inputs of 32768 tokens or more (other arrays, e.g. torch: 1024 or more)
            by a fixed, certified number of Newton steps from a table start, with
            no host synchronisation: from fast mode's table if one is already
            cached for ``(divergence, delta)``, else from a small start table that
            exact mode builds once per ``(divergence, delta)`` (about
            0.1 s for KL, up to 0.5 s; cached). Exact mode never builds fast mode's
            table (seconds). The start table's values are not certified; the number
            of steps is (``1e-12`` against the safeguarded solver on a dense check
            grid; see :mod:`bandtheory.fast`), so the accuracy above holds. Where
            no step count up to six certifies, exact mode runs the safeguarded
            solver (on NumPy until every token has converged; on other backends a
            fixed 100 iterations, slow on CPU), a decision cached like the table.
            About 0.15 s per million KL tokens on one CPU core once the start table
            exists. Smaller inputs run the safeguarded solver (torch CPU: ~60 ms
            for 1000 tokens, against ~1 ms from the table). CPU inputs are
            processed in chunks of 65536 tokens (a static loop), so the extra memory
            is the outputs plus one chunk. ``"compiled"``: fast mode's table and
            evaluation, for torch tensors fused into one loop by ``torch.compile``
            (inductor; CPU needs a C++ compiler, CUDA triton): the same values to
            rounding, about 3 times faster than fast mode on CPU (2.6 against
            7-9 ms per million tokens, two threads), no chunks. The first call per
            dtype and device compiles: about 15 s in a new environment, 2-4 s once
            torch's on-disk cache holds the kernel; new shapes and tables do not
            recompile. Where it cannot compile, fast mode's eager evaluation is used
            with a :class:`~bandtheory.fast.CompileFallbackWarning` (once per
            device type). NumPy inputs and inputs of fewer than two tokens are
            evaluated as in fast mode.

    Returns:
        :class:`Band` with ``lower`` and ``upper`` of the input's shape, array type and
        floating dtype (a Python float input gives NumPy float64 scalars).

    Raises:
        TypeError: For integer, boolean or non-array input, or a non-numeric delta.
        ValueError: For NaN or positive log-probabilities (with the count and the first
            index), ``delta <= 0`` or non-finite, or an unknown divergence name.

    References:
        BandPO (arXiv 2603.04918), the Band operator; THEORY.md section 2.

    Examples:
        >>> import numpy as np
        >>> band = band_bounds(np.log([0.5, 0.01]), "chi2", delta=0.05)
        >>> band.upper.round(6).tolist()
        [1.223607, 3.22486]
    """
    div = _div.get(divergence)
    delta = _check_delta(delta)
    mode = _check_mode(mode)
    x, xp, scalar = _as_array(old_log_prob)
    if check_input:
        validate_log_prob(x, xp)
    numpy = is_numpy_array(x)
    size = math.prod(tuple(x.shape))
    tol = _rounding_tolerance(x.dtype)
    table = None
    min_size = _POLISH_MIN_SIZE if numpy else _POLISH_MIN_SIZE_OTHER
    if mode != "exact":
        from .fast import _table_or_none

        table = _table_or_none(div, delta, stacklevel=3)  # builds; warns if none certifies
        if mode == "compiled" and table is not None:
            from .fast import _compiled_bounds

            out = _compiled_bounds(xp, table, x, tol)  # None: NumPy, < 2 tokens, no compiler
            if out is not None:
                return Band(*out)
    elif size >= min_size:
        from .fast import _exact_start

        # The cached fast table, else the small start table (built once per (div,
        # delta), 50-250 ms); never the fast table itself (seconds, may not certify).
        table = _exact_start(div, delta)
    if mode != "exact" and table is not None:
        def fn(t):
            return _fast64(xp, table, t, tol)
    else:
        polish = (table if size >= min_size and table is not None
                  and table.polish_steps is not None else None)

        def fn(t):
            return _band64(xp, div, t, delta, early_exit=numpy, table=polish, tol=tol)
    with np.errstate(all="ignore") if numpy else _nullcontext():
        lower, upper = _map_chunks(xp, fn, x)
    if scalar:
        return Band(np.float64(lower), np.float64(upper))
    return Band(lower, upper)


# --------------------------------------------------------------------------------------
# Small exact helpers used by schemes, plots and tests
# --------------------------------------------------------------------------------------


def g(p: Any, r: Any, divergence: str | _div.Divergence = "kl") -> np.ndarray:
    """The reduced divergence ``g_f(p, r) = p f(r) + (1 - p) f((1 - r p)/(1 - p))``.

    Args:
        p: Old probabilities in ``(0, 1)`` (NumPy-broadcastable with ``r``).
        r: Ratios in ``[0, 1/p]``.
        divergence: A registry name or entry.

    Returns:
        ``g_f(p, r)`` as a float64 NumPy array (``f(0)`` taken as the limit ``f(0+)``).
    """
    div = _div.get(divergence)
    p = np.asarray(p, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    xp = array_namespace(p)
    with np.errstate(all="ignore"):
        rest = (1.0 - r * p) / (1.0 - p)
        fr = np.where(r > 0, div.f_num(xp, np.where(r > 0, r, 1.0)), div.f_at_0)
        frest = np.where(rest > 0, div.f_num(xp, np.where(rest > 0, rest, 1.0)), div.f_at_0)
        return p * fr + (1.0 - p) * frest


def r_star(divergence: str | _div.Divergence = "kl", *, delta: float = 0.05) -> float:
    """The ``p -> 1`` limit of the lower bound: the root in ``(0, 1)`` of
    ``f(r) + (1 - r) f'(inf) = delta`` (``0`` if it saturates, ``1`` if ``f'(inf) = inf``).

    Args:
        divergence: A registry name or entry.
        delta: Trust-region radius ``> 0``.

    Returns:
        ``r*`` as a float.
    """
    return float(band_bounds(0.0, divergence, delta=delta).lower)
