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


def _check_float(name: str, x: Any) -> Any:
    if isinstance(x, (list, tuple, float, int)) and not isinstance(x, bool):
        x = np.asarray(x, dtype=np.float64)
    try:
        xp = array_namespace(x)
    except TypeError as exc:
        raise TypeError(
            f"{name} must be a float array (numpy or torch), got {type(x).__name__}"
        ) from exc
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} must have a real floating dtype (float16/32/64, bfloat16), got {x.dtype}"
        )
    return x


def _prepare(log_prob, old_log_prob, advantages, response_mask, agg, check_input):
    log_prob = _check_float("log_prob", log_prob)
    old_log_prob = _check_float("old_log_prob", old_log_prob)
    advantages = _check_float("advantages", advantages)
    xp = array_namespace(log_prob, old_log_prob, advantages)
    shape = tuple(log_prob.shape)
    for name, arr in (("old_log_prob", old_log_prob), ("advantages", advantages)):
        if tuple(arr.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(arr.shape)} but log_prob has shape {shape}; "
                "all per-token inputs must have the same shape"
            )
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown agg {agg!r}; choose one of {', '.join(AGGREGATIONS)}")
    if agg != "token-mean" and len(shape) != 2:
        raise ValueError(
            f"agg={agg!r} needs 2-D [batch, seq] inputs, got shape {shape}; "
            "use agg='token-mean' for other shapes"
        )
    if response_mask is None:
        mask = xp.ones(shape, dtype=xp.bool, device=_device(log_prob))
    else:
        try:
            mxp = array_namespace(response_mask)
        except TypeError as exc:
            raise TypeError(
                f"response_mask must be an array (numpy or torch), got {type(response_mask).__name__}"
            ) from exc
        if tuple(response_mask.shape) != shape:
            raise ValueError(
                f"response_mask has shape {tuple(response_mask.shape)} but log_prob has shape "
                f"{shape}; they must match"
            )
        mask = response_mask if mxp.isdtype(response_mask.dtype, "bool") else response_mask != 0
    if check_input:
        _validate(xp, log_prob, old_log_prob, advantages, mask)
    return xp, log_prob, old_log_prob, advantages, mask


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def _validate(xp, log_prob, old_log_prob, advantages, mask):
    """NaN / +inf / positive checks on unmasked tokens (needs a host synchronisation)."""
    zero = 0.0
    validate_log_prob(xp.where(mask, _detach(log_prob), zero), xp, name="log_prob")
    old = xp.where(mask, _detach(old_log_prob), zero)
    validate_log_prob(old, xp, name="old_log_prob")
    old_np = _to_numpy(xp, old)
    if np.isneginf(old_np).any():
        raise ValueError(
            "old_log_prob is -inf on an unmasked token: the ratio pi/pi_old is undefined there; "
            "mask such tokens out"
        )
    adv = xp.where(mask, advantages, zero)
    adv_np = _to_numpy(xp, _detach(adv))
    if not np.isfinite(adv_np).all():
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


def _core(log_prob, old_log_prob, advantages, *, scheme, response_mask, agg, c, check_input):
    """Everything both public functions need: loss, token weights, active set, metrics."""
    if scheme is None:
        scheme = _clip_scheme(eps=0.2)
    c = _resolve_c(scheme, c)
    xp, log_prob, old_log_prob, advantages, mask = _prepare(
        log_prob, old_log_prob, advantages, response_mask, agg, check_input
    )
    old = _detach(old_log_prob)
    adv = _detach(advantages)
    dtype = log_prob.dtype
    zero = 0.0
    # Masked entries may hold padding garbage (NaN, -inf): neutralise them before use so
    # they cannot leak into the sums (or the gradient) through 0 * NaN.
    lp = xp.where(mask, log_prob, zero)
    old = xp.where(mask, old, zero)
    adv = xp.where(mask, adv, zero)
    maskf = xp.astype(mask, dtype)

    band = scheme.bounds(old, check_input=False)
    lower = xp.astype(_detach(band.lower), dtype)
    upper = xp.astype(_detach(band.upper), dtype)

    log_ratio = lp - old
    ratio = xp.exp(log_ratio)
    clipped = xp.minimum(xp.maximum(ratio, lower), upper)
    obj = xp.minimum(ratio * adv, clipped * adv)
    neg = adv < 0
    if c is not None:
        obj = xp.where(neg, xp.maximum(obj, c * adv), obj)
    token_loss = -obj

    # Aggregation weights w (loss = sum w * token_loss); data-independent control flow.
    if agg == "token-mean":
        count = xp.sum(maskf)
        weight = maskf / xp.maximum(count, xp.ones_like(count))
    else:
        per_seq = xp.sum(maskf, axis=1, keepdims=True)
        has = xp.astype(per_seq > 0, dtype)
        n_seq = xp.sum(has)
        n_seq = xp.maximum(n_seq, xp.ones_like(n_seq))
        if agg == "seq-mean-token-mean":
            weight = maskf / xp.maximum(per_seq, xp.ones_like(per_seq)) / n_seq
        else:
            weight = maskf / n_seq
    loss = xp.sum(token_loss * weight)

    # Metrics (no gradient). Clipping "bites" only on the side that limits the objective.
    r = _detach(ratio)
    pos = adv > 0
    lo_d = lower
    up_d = upper
    hit_up = mask & pos & (r > up_d)
    hit_lo = mask & neg & (r < lo_d)
    active = mask & ~hit_up & ~hit_lo
    if c is not None:
        hit_dual = mask & neg & (xp.maximum(r, xp.minimum(xp.maximum(r, lo_d), up_d)) > c)
        active = active & ~hit_dual
    else:
        hit_dual = xp.zeros_like(mask)
    # min(rA, clip(r)A) picks rA exactly when the unclipped term is the smaller one; with
    # A == 0 the token contributes nothing either way.
    n = xp.maximum(xp.sum(maskf), xp.ones((), dtype=dtype, device=_device(maskf)))
    fdt = xp.float64 if is_numpy_array(r) else dtype

    def frac(b):
        return xp.sum(xp.astype(b, fdt)) / xp.astype(n, fdt)

    r_m = xp.where(mask, r, zero)
    k3 = xp.where(mask, (r - 1.0) - _detach(log_ratio), zero)
    metrics = {
        "clip_frac_upper": frac(hit_up),
        "clip_frac_lower": frac(hit_lo),
        "clip_frac": frac(hit_up | hit_lo),
        "dual_clip_frac": frac(hit_dual),
        "ratio_mean": xp.sum(xp.astype(r_m, fdt)) / xp.astype(n, fdt),
        "ratio_max": xp.max(r_m),
        "approx_kl": xp.sum(xp.astype(k3, fdt)) / xp.astype(n, fdt),
    }
    return xp, loss, token_loss, weight, active, r, adv, metrics


def _empty(xp, log_prob):
    """The documented result for an empty batch: zero loss (kept on the graph), no metrics."""
    loss = xp.sum(log_prob) * 0.0
    return loss, {}


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
    aggregation.

    Args:
        log_prob: ``log pi`` of the sampled tokens, a float numpy array or torch tensor
            (any shape for ``"token-mean"``, ``[batch, seq]`` for the ``seq-*``
            aggregations). Differentiable in torch.
        old_log_prob: ``log pi_old``, same shape and array type; bounds are computed
            from it without gradient.
        advantages: Advantage per token, same shape.
        scheme: Any :mod:`bandtheory.schemes` scheme (``clip``, ``clip_higher``,
            ``dcpo``, ``band(..., mode=...)``, ``relax``/``cap`` of them, ``dual_clip``
            of them). Default: canonical ``clip(eps=0.2)``.
        response_mask: Optional mask of the same shape (bool, or numbers where nonzero
            means "use this token"). Masked-out entries are ignored, whatever they hold.
        agg: ``"token-mean"``, ``"seq-mean-token-mean"`` or ``"seq-mean-token-sum"``.
        c: Dual-clip constant ``> 1`` for negative advantages; ``None`` takes it from a
            :func:`bandtheory.schemes.dual_clip` scheme, or disables dual clipping.
        check_input: Check the unmasked values for NaN, ``+inf``, positive
            log-probabilities, ``-inf`` old log-probabilities and non-finite advantages.
            This reads the values on the host (a device synchronisation); pass
            ``False`` in a GPU hot loop. Shape and dtype checks always run (no sync).

    Returns:
        ``(loss, metrics)``. For torch, ``loss`` is a 0-d tensor on the input's device
        (with gradient wrt ``log_prob``) and the metrics are detached 0-d tensors (no
        host synchronisation). For numpy, ``loss`` and the metrics are Python floats.
        Metrics: ``clip_frac_upper`` (A > 0 and r > upper), ``clip_frac_lower``
        (A < 0 and r < lower), ``clip_frac`` (their sum), ``dual_clip_frac`` (A < 0
        and the dual clip ``c A`` binds), ``ratio_mean``, ``ratio_max``, ``approx_kl``
        (mean of ``r - 1 - log r``, an estimator of KL(pi_old || pi)); fractions and
        means are over unmasked tokens. An empty batch (no elements) gives loss ``0``
        (connected to the graph in torch) and an empty metrics dict; a batch whose
        tokens are all masked gives loss ``0`` and zero metrics.

    Raises:
        TypeError: Integer/boolean or non-array inputs, a non-numeric ``c``.
        ValueError: Mismatched shapes, unknown ``agg``, ``seq-*`` with non-2-D input,
            ``c <= 1``, and (with ``check_input``) bad values as listed above.
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
        ``(loss, grad, metrics)`` with ``grad`` an array like ``log_prob`` (detached in
        torch), zero on masked tokens.
    """
    return _run(
        log_prob, old_log_prob, advantages, scheme=scheme, response_mask=response_mask,
        agg=agg, c=c, check_input=check_input, want_grad=True,
    )


def _run(log_prob, old_log_prob, advantages, *, scheme, response_mask, agg, c, check_input,
         want_grad):
    size = getattr(log_prob, "size", None)
    size = size() if callable(size) and is_torch_array(log_prob) else size
    if size is not None and (math.prod(log_prob.shape) == 0):
        # Shapes are still checked so that an empty batch cannot hide a bug.
        xp, log_prob, *_ = _prepare(log_prob, old_log_prob, advantages, response_mask, agg, False)
        loss, metrics = _empty(xp, log_prob)
        grad = xp.zeros_like(_detach(log_prob))
        return (_out(loss), grad, metrics) if want_grad else (_out(loss), None, metrics)
    if is_numpy_array(log_prob) or isinstance(log_prob, (list, tuple)):
        with np.errstate(all="ignore"):
            xp, loss, _, weight, active, r, adv, metrics = _core(
                log_prob, old_log_prob, advantages, scheme=scheme, response_mask=response_mask,
                agg=agg, c=c, check_input=check_input,
            )
            grad = -weight * r * adv * xp.astype(active, weight.dtype) if want_grad else None
    else:
        xp, loss, _, weight, active, r, adv, metrics = _core(
            log_prob, old_log_prob, advantages, scheme=scheme, response_mask=response_mask,
            agg=agg, c=c, check_input=check_input,
        )
        grad = None
        if want_grad:
            grad = _detach(-weight * r * adv * xp.astype(active, weight.dtype))
        metrics = {k: _detach(v) for k, v in metrics.items()}
    return _out(loss), grad, {k: _out(v) for k, v in metrics.items()}


def _out(x: Any) -> Any:
    """Python float for numpy results; tensors stay tensors (no host sync)."""
    if is_numpy_array(x) or isinstance(x, np.generic):
        return float(x)
    return x
