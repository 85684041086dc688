"""Clipped surrogate losses for PPO-style policy optimisation, with clip metrics.

For each token with ratio ``r = exp(log_prob - old_log_prob)``, advantage ``A`` and the
interval ``[lower, upper]`` of a clipping scheme (computed from ``old_log_prob``),

.. math::

    \\ell(r) = -\\min\\big(r A,\\ \\mathrm{clip}(r, \\text{lower}, \\text{upper}) A\\big),

and with dual clipping (constant ``c > 1``, negative advantages only)

.. math::

    \\ell(r) = -\\max\\big(\\min(r A, \\mathrm{clip}(r) A),\\ c A\\big) \\quad (A < 0).

The per-token losses are reduced over the response mask by one of three
aggregations (the names used by verl): ``"token-mean"`` (mean over every unmasked
token of the batch), ``"seq-mean-token-mean"`` (mean over tokens inside each sequence,
then over sequences that have at least one token) and ``"seq-mean-token-sum"`` (sum
inside each sequence, then mean over sequences).

The gradient with respect to ``log_prob`` of one token's term is ``-r A`` times its
aggregation weight while the token is active (not clipped where clipping bites, not
dual-clipped) and ``0`` otherwise; :func:`policy_loss_and_grad` returns it in closed
form for NumPy users, torch users get it from autograd.

References:
    PPO (Schulman et al. 2017) clipped surrogate; dual-clip PPO (Ye et al. 2020);
    DAPO Clip-Higher (Yu et al. 2025); BandPO (arXiv 2603.04918).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_array, is_torch_array

from .bounds import _to_numpy, validate_log_prob
from .schemes import clip as _clip_scheme

__all__ = ["AGGREGATIONS", "policy_loss", "policy_loss_and_grad"]

#: Valid values of ``agg``.
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")

_METRIC_NAMES = (
    "clip_frac_upper",
    "clip_frac_lower",
    "clip_frac",
    "dual_clip_frac",
    "ratio_mean",
    "ratio_max",
    "approx_kl",
)


def _detach(x: Any) -> Any:
    return x.detach() if is_torch_array(x) else x


def _kind(x: Any) -> str:
    """``"torch"``, ``"numpy"`` (NumPy arrays and Python sequences) or the type's name."""
    if is_torch_array(x):
        return "torch"
    if is_numpy_array(x) or isinstance(x, (list, tuple, np.generic)):
        return "numpy"
    return type(x).__name__


_ACCEPTED = "numpy arrays (or Python lists) or torch tensors, all of one kind"


def _check_float(name: str, x: Any) -> Any:
    if isinstance(x, (list, tuple, float, int)) and not isinstance(x, bool):
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{name} could not be read as a float array ({exc}); pass a rectangular "
                "array of numbers"
            ) from None
    if not (is_numpy_array(x) or is_torch_array(x)):
        raise TypeError(f"{name} must be a float array ({_ACCEPTED}), got {type(x).__name__}")
    xp = array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} must have a real floating dtype (float16/32/64, bfloat16), got {x.dtype}"
        )
    return x


def _check_mask(response_mask: Any, kind: str, shape: tuple, dev: Any) -> Any:
    """The mask as a boolean array of the inputs' kind, or a one-line error."""
    if kind == "numpy" and isinstance(response_mask, (list, tuple)):
        try:
            response_mask = np.asarray(response_mask)
        except ValueError as exc:
            raise ValueError(f"response_mask could not be read as an array ({exc})") from None
    mkind = _kind(response_mask)
    if mkind != kind:
        # Converting silently would hide a host <-> device copy (or a sync) in a hot loop.
        cls = type(response_mask)
        got = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
        raise TypeError(
            f"response_mask is a {got} but the inputs are {kind} arrays; pass {_ACCEPTED} "
            "(bool, or numbers where nonzero means use the token)"
        )
    if tuple(response_mask.shape) != shape:
        raise ValueError(
            f"response_mask has shape {tuple(response_mask.shape)} but log_prob has shape "
            f"{shape}; they must match"
        )
    if kind == "torch" and response_mask.device != dev:
        raise ValueError(
            f"response_mask is on {response_mask.device} but log_prob is on {dev}; "
            "put every input on one device"
        )
    mxp = array_namespace(response_mask)
    if mxp.isdtype(response_mask.dtype, "bool"):
        return response_mask
    if not mxp.isdtype(response_mask.dtype, ("integral", "real floating")):
        raise TypeError(f"response_mask must be bool or real numbers, got {response_mask.dtype}")
    return response_mask != 0


def _prepare(log_prob, old_log_prob, advantages, response_mask, agg, check_input):
    """Type, shape and (with ``check_input``) value checks at the public boundary."""
    log_prob = _check_float("log_prob", log_prob)
    old_log_prob = _check_float("old_log_prob", old_log_prob)
    advantages = _check_float("advantages", advantages)
    kinds = {n: _kind(a) for n, a in
             (("log_prob", log_prob), ("old_log_prob", old_log_prob), ("advantages", advantages))}
    kind = kinds["log_prob"]
    if len(set(kinds.values())) > 1:
        got = ", ".join(f"{n} is {k}" for n, k in kinds.items())
        raise TypeError(f"mixed array types ({got}); pass {_ACCEPTED}")
    shape = tuple(log_prob.shape)
    for name, arr in (("old_log_prob", old_log_prob), ("advantages", advantages)):
        if tuple(arr.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(arr.shape)} but log_prob has shape {shape}; "
                "all per-token inputs must have the same shape"
            )
    dev = log_prob.device if kind == "torch" else None
    if kind == "torch":
        for name, arr in (("old_log_prob", old_log_prob), ("advantages", advantages)):
            if arr.device != dev:
                raise ValueError(
                    f"{name} is on {arr.device} but log_prob is on {dev}; "
                    "put every input on one device"
                )
    xp = array_namespace(log_prob, old_log_prob, advantages)
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown agg {agg!r}; choose one of {', '.join(AGGREGATIONS)}")
    empty = math.prod(shape) == 0
    # ``[]`` (shape (0,)) is accepted as a batch of no sequences for every aggregation.
    if agg != "token-mean" and len(shape) != 2 and not (empty and len(shape) == 1):
        raise ValueError(
            f"agg={agg!r} needs 2-D [batch, seq] inputs, got shape {shape}; "
            "use agg='token-mean' for other shapes"
        )
    # mask None: every token counts, and no masking work is done at all.
    mask = None if response_mask is None else _check_mask(response_mask, kind, shape, dev)
    if check_input and not empty:
        _validate(xp, log_prob, old_log_prob, advantages, mask)
    return xp, log_prob, old_log_prob, advantages, mask


def _validate(xp, log_prob, old_log_prob, advantages, mask):
    """NaN / +inf / positive checks on unmasked tokens (needs a host synchronisation)."""
    def keep(x):
        return x if mask is None else xp.where(mask, x, 0.0)

    validate_log_prob(keep(_detach(log_prob)), xp, name="log_prob")
    old = keep(_detach(old_log_prob))
    validate_log_prob(old, xp, name="old_log_prob")
    if np.isneginf(_to_numpy(xp, old)).any():
        raise ValueError(
            "old_log_prob is -inf on an unmasked token: the ratio pi/pi_old is undefined there; "
            "mask such tokens out"
        )
    if not np.isfinite(_to_numpy(xp, keep(_detach(advantages)))).all():
        raise ValueError("advantages contain NaN or inf on unmasked tokens; they must be finite")


def _resolve_c(scheme: Any, c: float | None) -> float | None:
    if c is None:
        c = getattr(scheme, "dual_clip_c", None)
    if c is None:
        return None
    if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)):
        raise TypeError(f"c must be a real number, got {type(c).__name__}")
    c = float(c)
    if not (c > 1.0) or not math.isfinite(c):
        raise ValueError(f"dual-clip c must be a finite number > 1, got {c!r}")
    return c


def _compute_dtype(xp: Any, *arrays: Any) -> Any:
    """The working dtype: the inputs' common float dtype, at least float32.

    Half precision cannot carry the loss: bfloat16 spaces numbers 2^-7 apart at 1, so
    ratios within 0.4 % of 1 round to 1 (``approx_kl`` becomes 0), and float16 counts
    and sums overflow at 65504.
    """
    cdt = xp.result_type(*(a.dtype for a in arrays))
    if xp.finfo(cdt).bits < 32:
        cdt = xp.float32
    return cdt


def _core(xp, log_prob, old_log_prob, advantages, mask, *, scheme, agg, c, want_grad=False):
    """Loss, metrics and (with ``want_grad``) the closed-form gradient of checked inputs.

    Lean by design (this runs once per minibatch on millions of tokens): everything is
    computed in the inputs' float dtype, promoted to at least float32 (the bounds come
    back in it too), a batch without a mask skips every masking operation, and each
    metric is one reduction (counts of boolean masks; ``approx_kl`` as
    ``mean(r) - 1 - mean(log r)``). No value is read on the host.
    """
    dtype = log_prob.dtype
    cdt = _compute_dtype(xp, log_prob, old_log_prob, advantages)
    # The casts are differentiable in torch: the gradient reaches log_prob in its dtype.
    lp = log_prob if log_prob.dtype == cdt else xp.astype(log_prob, cdt)
    old = _detach(old_log_prob)
    old = old if old.dtype == cdt else xp.astype(old, cdt)
    adv = _detach(advantages)
    adv = adv if adv.dtype == cdt else xp.astype(adv, cdt)
    if mask is not None:
        # Masked entries may hold padding garbage (NaN, -inf): neutralise them before use
        # so they cannot leak into the sums (or the gradient) through 0 * NaN.
        lp = xp.where(mask, lp, 0.0)
        old = xp.where(mask, old, 0.0)
        adv = xp.where(mask, adv, 0.0)

    log_ratio = lp - old
    ratio = xp.exp(log_ratio)
    biting = getattr(scheme, "biting_bound", None)
    if biting is not None:
        # Only one end can bind: upper for A > 0, lower for A < 0, and
        # min(rA, clip(r, lower, upper) A) = min(rA, bA) with that end b.
        bound = _detach(biting(old, adv > 0, check_input=False))
        if bound.dtype != cdt:
            bound = xp.astype(bound, cdt)
        lower = upper = bound
        obj = xp.minimum(ratio * adv, bound * adv)
    else:
        band = scheme.bounds(old, check_input=False)
        lower = _detach(band.lower)
        upper = _detach(band.upper)
        if lower.dtype != cdt:
            lower, upper = xp.astype(lower, cdt), xp.astype(upper, cdt)
        obj = xp.minimum(ratio * adv, xp.clip(ratio, lower, upper) * adv)
    if c is not None:
        obj = xp.where(adv < 0, xp.maximum(obj, c * adv), obj)

    # Aggregation (loss = -sum w * obj); data-independent control flow.
    n_tok = math.prod(tuple(lp.shape))
    if mask is None:
        maskf = None
        count = n_tok
        # token-mean and seq-mean-token-mean are both the plain mean here.
        loss = -xp.sum(obj) / (obj.shape[0] if agg == "seq-mean-token-sum" else n_tok)
    else:
        maskf = xp.astype(mask, cdt)
        count = xp.sum(maskf)
        if agg == "token-mean":
            loss = -xp.sum(obj * maskf) / xp.maximum(count, xp.ones_like(count))
        else:
            per_seq = xp.sum(maskf, axis=1, keepdims=True)
            n_seq = xp.sum(xp.astype(per_seq > 0, cdt))
            n_seq = xp.maximum(n_seq, xp.ones_like(n_seq))
            if agg == "seq-mean-token-mean":
                per_tok = obj * (maskf / xp.maximum(per_seq, xp.ones_like(per_seq)))
            else:
                per_tok = obj * maskf
            loss = -xp.sum(per_tok) / n_seq
    if loss.dtype != dtype and not is_numpy_array(loss):
        # torch returns the loss in log_prob's dtype (what mixed-precision training
        # expects); NumPy returns a Python float, so it keeps the working precision.
        loss = xp.astype(loss, dtype)

    # Metrics (no gradient). Clipping "bites" only on the side that limits the objective.
    r = _detach(ratio)
    lr = _detach(log_ratio)
    hit_up = (adv > 0) & (r > upper)
    hit_lo = (adv < 0) & (r < lower)
    hit_dual = None
    if c is not None:
        # min(rA, clip(r)A) < cA for A < 0 exactly when max(r, clip(r)) > c.
        # With A < 0, max(r, clip(r, lower, upper)) = max(r, lower).
        hit_dual = (adv < 0) & (xp.maximum(r, lower) > c)
    if mask is not None:
        hit_up = hit_up & mask
        hit_lo = hit_lo & mask
        if hit_dual is not None:
            hit_dual = hit_dual & mask
    # NumPy accumulates in float64 for free; torch keeps the working dtype (>= float32),
    # whose pairwise / tree reductions lose ~1e-7 relative, and stays on the device.
    fdt = xp.float64 if is_numpy_array(r) else cdt
    if mask is None:
        denom = float(max(n_tok, 1))
        r_sum, lr_sum, r_max = xp.sum(r, dtype=fdt), xp.sum(lr, dtype=fdt), xp.max(r)
    else:
        denom = xp.maximum(xp.astype(count, fdt), xp.ones((), dtype=fdt, device=_device(r)))
        r_m = r * maskf
        r_sum, lr_sum, r_max = xp.sum(r_m, dtype=fdt), xp.sum(lr * maskf, dtype=fdt), xp.max(r_m)

    def frac(b):
        return xp.astype(xp.sum(b), fdt) / denom

    up_frac, lo_frac = frac(hit_up), frac(hit_lo)
    metrics = {
        "clip_frac_upper": up_frac,
        "clip_frac_lower": lo_frac,
        # The two events are disjoint (A > 0 versus A < 0).
        "clip_frac": up_frac + lo_frac,
        "dual_clip_frac": frac(hit_dual) if hit_dual is not None else up_frac * 0.0,
        "ratio_mean": r_sum / denom,
        "ratio_max": r_max,
        "approx_kl": (r_sum - lr_sum) / denom - 1.0 if mask is None
        else (r_sum - lr_sum - xp.astype(count, fdt)) / denom,
    }
    grad = None
    if want_grad:
        active = ~(hit_up | hit_lo)
        if hit_dual is not None:
            active = active & ~hit_dual
        weight = _weights(xp, maskf, lp, agg, cdt)
        grad = -weight * r * adv * xp.astype(active, cdt)
        if grad.dtype != dtype:
            grad = xp.astype(grad, dtype)
    return loss, grad, metrics


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def _weights(xp, maskf, lp, agg, dtype):
    """Aggregation weights ``w`` with ``loss = sum w * token_loss`` (closed-form gradient)."""
    if maskf is None:
        maskf = xp.ones_like(_detach(lp))
    if agg == "token-mean":
        count = xp.sum(maskf)
        return maskf / xp.maximum(count, xp.ones_like(count))
    per_seq = xp.sum(maskf, axis=1, keepdims=True)
    n_seq = xp.sum(xp.astype(per_seq > 0, dtype))
    n_seq = xp.maximum(n_seq, xp.ones_like(n_seq))
    if agg == "seq-mean-token-mean":
        return maskf / xp.maximum(per_seq, xp.ones_like(per_seq)) / n_seq
    return maskf / n_seq


def policy_loss(
    log_prob: Any,
    old_log_prob: Any,
    advantages: Any,
    *,
    scheme: Any = None,
    response_mask: Any = None,
    agg: str = "token-mean",
    c: float | None = None,
    check_input: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Clipped surrogate loss of a batch and its clip metrics.

    .. math::

        L = \\sum_t w_t\\, \\ell_t,\\qquad
        \\ell_t = -\\min\\big(r_t A_t,\\ \\mathrm{clip}(r_t, l(p_t), u(p_t)) A_t\\big),
        \\qquad r_t = e^{\\log\\pi_t - \\log\\pi_{old,t}},

    (``\\ell_t = -\\max(\\cdot, c A_t)`` for ``A_t < 0`` under dual clipping) with
    ``[l, u]`` the scheme's interval at ``p_t = pi_old`` and ``w_t`` the weights of the
    aggregation. Only one end can bind per token (``u`` for ``A_t > 0``, ``l`` for
    ``A_t < 0``); a Band scheme evaluates just that end
    (:meth:`bandtheory.schemes.BandScheme.biting_bound`), which gives the same loss and
    metrics for about half the cost of the bounds.

    Args:
        log_prob: ``log pi`` of the sampled tokens, a float numpy array, Python list or
            torch tensor (any shape for ``"token-mean"``, ``[batch, seq]`` for the
            ``seq-*`` aggregations; ``[]`` is an empty batch for every aggregation).
            Differentiable in torch.
        old_log_prob: ``log pi_old``, same shape and array type; bounds are computed
            from it without gradient.
        advantages: Advantage per token, same shape and array type.
        scheme: Any :mod:`bandtheory.schemes` scheme (``clip``, ``clip_higher``,
            ``dcpo``, ``band(..., mode=...)``, ``relax``/``cap`` of them, ``dual_clip``
            of them). Default: canonical ``clip(eps=0.2)``.
        response_mask: Optional mask of the same shape and array type as the inputs
            (numpy or a list with numpy / list inputs, a tensor on the same device with
            torch inputs; bool, or numbers where nonzero means "use this token"). A
            numpy mask is never moved into torch (or back): that would hide a
            host-device copy. Masked-out entries are ignored, whatever they hold.
        agg: ``"token-mean"``, ``"seq-mean-token-mean"`` or ``"seq-mean-token-sum"``.
        c: Dual-clip constant ``> 1`` for negative advantages; ``None`` takes it from a
            :func:`bandtheory.schemes.dual_clip` scheme, or disables dual clipping.
        check_input: Check the unmasked values for NaN, ``+inf``, positive
            log-probabilities, ``-inf`` old log-probabilities and non-finite advantages.
            This reads the values on the host (a device synchronisation); pass
            ``False`` in a GPU hot loop. Type, shape and device checks always run
            (no sync); with ``False`` the call reads no value on the host at all.

    Returns:
        ``(loss, metrics)``. For torch, ``loss`` is a 0-d tensor of ``log_prob``'s dtype
        on its device (with gradient wrt ``log_prob``) and the metrics are detached 0-d
        tensors of the working dtype (no host synchronisation). For numpy, ``loss`` and
        the metrics are Python floats (of the working precision). The arithmetic runs
        in the inputs' common float dtype promoted to at least float32 (float16 and
        bfloat16 inputs are upcast: half precision rounds ratios near 1 to 1 and
        overflows counts above 65504); NumPy metrics accumulate in float64.
        Metrics: ``clip_frac_upper`` (A > 0 and r > upper), ``clip_frac_lower``
        (A < 0 and r < lower), ``clip_frac`` (their sum), ``dual_clip_frac`` (A < 0
        and the dual clip ``c A`` binds), ``ratio_mean``, ``ratio_max``, ``approx_kl``
        (mean of ``r - 1 - log r``, an estimator of KL(pi_old || pi)); fractions and
        means are over unmasked tokens. An empty batch (no elements; any aggregation,
        with or without a mask) gives loss ``0`` (connected to the graph in torch) and
        an empty metrics dict; a batch whose tokens are all masked gives loss ``0`` and
        zero metrics.

    Raises:
        TypeError: Integer/boolean or non-array inputs, inputs (mask included) of mixed
            array types (numpy with torch), a non-bool non-numeric mask, a non-numeric
            ``c``.
        ValueError: Mismatched shapes or devices, ragged lists, unknown ``agg``,
            ``seq-*`` with non-2-D input, ``c <= 1``, and (with ``check_input``) bad
            values as listed above.
    """
    loss, _, metrics = _run(
        log_prob, old_log_prob, advantages, scheme=scheme, response_mask=response_mask,
        agg=agg, c=c, check_input=check_input, want_grad=False,
    )
    return loss, metrics


def policy_loss_and_grad(
    log_prob: Any,
    old_log_prob: Any,
    advantages: Any,
    *,
    scheme: Any = None,
    response_mask: Any = None,
    agg: str = "token-mean",
    c: float | None = None,
    check_input: bool = True,
) -> tuple[Any, Any, dict[str, Any]]:
    """:func:`policy_loss` plus its gradient with respect to ``log_prob`` in closed form.

    .. math::

        \\frac{\\partial L}{\\partial \\log\\pi_t} = -w_t\\, r_t A_t\\, [t \\text{ active}],

    where a token is inactive when clipping bites (``A > 0, r > upper`` or
    ``A < 0, r < lower``) or the dual clip binds. Useful for NumPy (no autograd); for
    torch the result equals autograd's (ties at a bound aside, a measure-zero set).

    Args:
        log_prob, old_log_prob, advantages, scheme, response_mask, agg, c, check_input:
            As in :func:`policy_loss`.

    Returns:
        ``(loss, grad, metrics)`` with ``grad`` an array like ``log_prob`` (its dtype;
        detached in torch), zero on masked tokens.
    """
    return _run(
        log_prob, old_log_prob, advantages, scheme=scheme, response_mask=response_mask,
        agg=agg, c=c, check_input=check_input, want_grad=True,
    )


def _run(log_prob, old_log_prob, advantages, *, scheme, response_mask, agg, c, check_input,
         want_grad):
    if scheme is None:
        scheme = _clip_scheme(eps=0.2)
    c = _resolve_c(scheme, c)
    # Shapes and types are checked for an empty batch too, so that it cannot hide a bug.
    xp, log_prob, old_log_prob, advantages, mask = _prepare(
        log_prob, old_log_prob, advantages, response_mask, agg, check_input
    )
    numpy = is_numpy_array(log_prob)
    if math.prod(tuple(log_prob.shape)) == 0:
        # The documented empty result: zero loss, kept on the graph in torch (so that
        # ``loss.backward()`` works unchanged), and no metrics (there is nothing to count).
        loss = xp.sum(log_prob) * 0.0
        grad = xp.zeros_like(_detach(log_prob)) if want_grad else None
        return _out(loss), grad, {}
    with np.errstate(all="ignore") if numpy else _NoContext():
        loss, grad, metrics = _core(
            xp, log_prob, old_log_prob, advantages, mask, scheme=scheme, agg=agg, c=c,
            want_grad=want_grad,
        )
    if not numpy:
        metrics = {k: _detach(v) for k, v in metrics.items()}
        grad = None if grad is None else _detach(grad)
    return _out(loss), grad, {k: _out(v) for k, v in metrics.items()}


class _NoContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _out(x: Any) -> Any:
    """Python float for numpy results; tensors stay tensors (no host sync)."""
    if is_numpy_array(x) or isinstance(x, np.generic):
        return float(x)
    return x
