"""Clipping schemes behind one interface: the ratio interval as a function of ``log p``.

Every scheme is a small frozen object with ``.bounds(old_log_prob) -> Band`` (the same
result type as :func:`bandtheory.band_bounds`), a machine ``name`` and a plot
``label``. Factories build them:

- :func:`clip`: canonical PPO/GRPO clipping ``[1 - eps, 1 + eps]``;
- :func:`clip_higher`: DAPO's decoupled ``[1 - eps_low, 1 + eps_high]``;
- :func:`dcpo`: DCPO's probability-dependent bounds
  ``upper = (1 + sqrt(1 + 4 eps_high / p)) / 2``,
  ``lower = (1 + sqrt(max(1 - 4 eps_low / p, 0))) / 2``;
- :func:`band`: the exact Band of an f-divergence trust region.

Heuristics are kept apart from the exact theory and compose with any scheme:

- :func:`relax`: union with the Clip-Higher interval (the official BandPO option);
- :func:`cap`: ``upper <= upper_max`` (the official code caps at 100);
- :func:`reference_compat`: the official implementation's overrides near the ends
  (``p < p_min`` gives ``[0, 1/p]``, ``p > p_max`` gives ``[r*, 1]``).

References:
    PPO (Schulman et al. 2017); DAPO Clip-Higher (Yu et al. 2025); DCPO dynamic adaptive
    clipping; BandPO (arXiv 2603.04918) section 3 and its reference implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from array_api_compat import array_namespace, is_numpy_array

from . import divergences as _div
from .bounds import (
    Band,
    _as_array,
    _check_delta,
    _check_mode,
    band_bounds,
    r_star,
    validate_log_prob,
)

__all__ = [
    "Scheme",
    "FixedClip",
    "DCPO",
    "BandScheme",
    "Relaxed",
    "Capped",
    "ReferenceCompat",
    "DualClip",
    "clip",
    "clip_higher",
    "dcpo",
    "band",
    "relax",
    "cap",
    "reference_compat",
    "dual_clip",
]


@runtime_checkable
class Scheme(Protocol):
    """What every clipping scheme provides."""

    name: str

    @property
    def label(self) -> str: ...

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band: ...


def _check_eps(name: str, value: Any, *, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > upper:
        valid = f"[0, {upper:g}]" if math.isfinite(upper) else ">= 0 and finite"
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return value


def _prepare(old_log_prob: Any, check_input: bool):
    x, xp, scalar = _as_array(old_log_prob)
    if check_input:
        validate_log_prob(x, xp)
    return x, xp, scalar


def _finish(lower: Any, upper: Any, scalar: bool) -> Band:
    if scalar:
        return Band(np.float64(lower), np.float64(upper))
    return Band(lower, upper)


def _quiet(xp: Any, x: Any):
    """Floating-point warnings off for NumPy (inf/0 are intended at the ends)."""
    return np.errstate(all="ignore") if is_numpy_array(x) else _NullContext()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------------------
# Exact schemes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedClip:
    """Fixed ratio interval ``[1 - eps_low, 1 + eps_high]`` (canonical or Clip-Higher)."""

    eps_low: float
    eps_high: float
    name: str = "clip"

    @property
    def label(self) -> str:
        if self.eps_low == self.eps_high:
            return f"clip ε={self.eps_low:g}"
        return f"Clip-Higher {self.eps_low:g}/{self.eps_high:g}"

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        """Constant bounds broadcast to the shape and dtype of ``old_log_prob``."""
        x, xp, scalar = _prepare(old_log_prob, check_input)
        lower = xp.full_like(x, 1.0 - self.eps_low)
        upper = xp.full_like(x, 1.0 + self.eps_high)
        return _finish(lower, upper, scalar)


@dataclass(frozen=True)
class DCPO:
    """DCPO's probability-dependent bounds.

    .. math::

        \\text{upper} = \\tfrac12 + \\tfrac12\\sqrt{1 + 4\\epsilon_{high}/p},\\qquad
        \\text{lower} = \\tfrac12 + \\tfrac12\\sqrt{\\max(1 - 4\\epsilon_{low}/p, 0)}
    """

    eps_low: float
    eps_high: float
    name: str = "dcpo"

    @property
    def label(self) -> str:
        return f"DCPO {self.eps_low:g}/{self.eps_high:g}"

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        """DCPO bounds, computed in float64 and returned in the input dtype."""
        x, xp, scalar = _prepare(old_log_prob, check_input)
        x64 = xp.minimum(xp.astype(x, xp.float64), 0.0)
        with _quiet(xp, x64):
            inv_p = xp.exp(-x64)
            upper = 0.5 + 0.5 * xp.sqrt(1.0 + 4.0 * self.eps_high * inv_p)
            lower = 0.5 + 0.5 * xp.sqrt(xp.clip(1.0 - 4.0 * self.eps_low * inv_p, 0.0, None))
        return _finish(xp.astype(lower, x.dtype), xp.astype(upper, x.dtype), scalar)


@dataclass(frozen=True)
class BandScheme:
    """The exact Band of :func:`bandtheory.band_bounds` as a scheme."""

    divergence: _div.Divergence
    delta: float
    name: str = "band"
    #: ``"exact"`` (float64 root, <= 1e-12), ``"fast"`` (certified table, <= 1e-7) or
    #: ``"compiled"`` (that table through a ``torch.compile`` kernel for torch tensors).
    mode: str = "exact"

    @property
    def label(self) -> str:
        return f"Band {self.divergence.name} δ={self.delta:g}"

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        """The Band (see :func:`bandtheory.band_bounds`), in this scheme's ``mode``."""
        return band_bounds(
            old_log_prob, self.divergence, delta=self.delta, check_input=check_input,
            mode=self.mode,
        )

    def biting_bound(self, old_log_prob: Any, positive: Any, *, check_input: bool = True) -> Any:
        """``upper`` where ``positive`` (advantage ``> 0``), else ``lower``: the only end
        that can bind a clipped surrogate. In fast mode one polynomial per token (see
        :func:`bandtheory.fast.biting_bound`); in exact mode both ends are solved."""
        if self.mode != "exact":
            from .fast import biting_bound

            return biting_bound(old_log_prob, positive, self.divergence, delta=self.delta,
                                check_input=check_input, compiled=self.mode == "compiled")
        band = self.bounds(old_log_prob, check_input=check_input)
        xp = array_namespace(band.upper)
        return xp.where(positive, band.upper, band.lower)


def clip(*, eps: float = 0.2) -> FixedClip:
    """Canonical PPO/GRPO clipping ``[1 - eps, 1 + eps]`` with ``eps`` in ``[0, 1]``."""
    eps = _check_eps("eps", eps, upper=1.0)
    return FixedClip(eps, eps, name="clip")


def clip_higher(*, eps_low: float = 0.2, eps_high: float = 0.28) -> FixedClip:
    """DAPO Clip-Higher ``[1 - eps_low, 1 + eps_high]``, ``eps_low`` in ``[0, 1]``."""
    return FixedClip(
        _check_eps("eps_low", eps_low, upper=1.0),
        _check_eps("eps_high", eps_high),
        name="clip_higher",
    )


def dcpo(*, eps_low: float = 0.2, eps_high: float = 0.28) -> DCPO:
    """DCPO dynamic adaptive clipping with ``eps_low, eps_high >= 0``."""
    return DCPO(_check_eps("eps_low", eps_low), _check_eps("eps_high", eps_high))


def band(
    divergence: str | _div.Divergence = "kl", *, delta: float = 0.05, mode: str = "exact"
) -> BandScheme:
    """The Band for a divergence (name or entry) and radius ``delta > 0``.

    ``mode="exact"`` solves for the float64 roots (<= 1e-12); ``mode="fast"`` evaluates
    a cached table certified to <= 1e-7 relative (see :mod:`bandtheory.fast`);
    ``mode="compiled"`` evaluates that table for torch tensors by a ``torch.compile``
    kernel (see :func:`bandtheory.band_bounds`).
    """
    return BandScheme(_div.get(divergence), _check_delta(delta), mode=_check_mode(mode))


# --------------------------------------------------------------------------------------
# Heuristics (not part of the exact theory)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relaxed:
    """Heuristic: widen a scheme to at least the Clip-Higher interval."""

    base: Any
    eps_low: float
    eps_high: float

    @property
    def name(self) -> str:
        return f"relax({self.base.name})"

    @property
    def label(self) -> str:
        return f"{self.base.label} ∪ [1-{self.eps_low:g}, 1+{self.eps_high:g}]"

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        """``lower = min(lower, 1 - eps_low)``, ``upper = max(upper, 1 + eps_high)``."""
        inner = self.base.bounds(old_log_prob, check_input=check_input)
        x, xp, scalar = _as_array(inner.lower)
        lower = xp.minimum(x, xp.full_like(x, 1.0 - self.eps_low))
        u, _, _ = _as_array(inner.upper)
        upper = xp.maximum(u, xp.full_like(u, 1.0 + self.eps_high))
        return _finish(lower, upper, scalar)


@dataclass(frozen=True)
class Capped:
    """Heuristic: cap the upper bound at ``upper_max``."""

    base: Any
    upper_max: float

    @property
    def name(self) -> str:
        return f"cap({self.base.name})"

    @property
    def label(self) -> str:
        return f"{self.base.label}, upper ≤ {self.upper_max:g}"

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        """``upper = min(upper, upper_max)``; ``lower`` unchanged."""
        inner = self.base.bounds(old_log_prob, check_input=check_input)
        u, xp, scalar = _as_array(inner.upper)
        upper = xp.minimum(u, xp.full_like(u, self.upper_max))
        return _finish(inner.lower, upper, scalar)


@dataclass(frozen=True)
class ReferenceCompat:
    """Heuristic: the official BandPO implementation's overrides near ``p = 0`` and 1."""

    base: BandScheme
    p_min: float
    p_max: float

    @property
    def name(self) -> str:
        return f"reference_compat({self.base.name})"

    @property
    def label(self) -> str:
        return f"{self.base.label} (reference overrides)"

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        """Band, then ``p < p_min -> [0, 1/p]`` and ``p > p_max -> [r*, 1]``."""
        x, xp, scalar = _prepare(old_log_prob, check_input)
        inner = self.base.bounds(x, check_input=False)
        x64 = xp.minimum(xp.astype(x, xp.float64), 0.0)
        low_p = x64 < math.log(self.p_min)
        high_p = x64 > math.log(self.p_max)
        rs = r_star(self.base.divergence, delta=self.base.delta)
        with _quiet(xp, x64):
            lower = xp.where(low_p, 0.0, xp.where(high_p, rs, xp.astype(inner.lower, xp.float64)))
            upper = xp.where(low_p, xp.exp(-x64), xp.where(high_p, 1.0, xp.astype(inner.upper, xp.float64)))
        return _finish(xp.astype(lower, x.dtype), xp.astype(upper, x.dtype), scalar)


def relax(scheme: Any, *, eps_low: float = 0.2, eps_high: float = 0.28) -> Relaxed:
    """Heuristic: the union of ``scheme``'s interval with ``[1 - eps_low, 1 + eps_high]``.

    This is the official BandPO code's optional "relaxation"; it is not part of the
    trust-region theory.
    """
    return Relaxed(scheme, _check_eps("eps_low", eps_low, upper=1.0), _check_eps("eps_high", eps_high))


def cap(scheme: Any, *, upper_max: float = 100.0) -> Capped:
    """Heuristic: ``upper = min(upper, upper_max)`` with ``upper_max >= 1``."""
    if isinstance(upper_max, bool) or not isinstance(upper_max, (int, float, np.integer, np.floating)):
        raise TypeError(f"upper_max must be a real number, got {type(upper_max).__name__}")
    value = float(upper_max)
    if not (value >= 1.0) or math.isnan(value):
        raise ValueError(f"upper_max must be >= 1 (a ratio bound), got {upper_max!r}")
    return Capped(scheme, value)


def reference_compat(
    scheme: BandScheme, *, p_min: float = 1e-6, p_max: float = 1.0 - 1e-6
) -> ReferenceCompat:
    """Heuristic: reproduce the official implementation's end overrides for a Band.

    The official code replaces ``p < 1e-6`` by the simplex limits ``[0, 1/p]`` and
    ``p > 1 - 1e-6`` by the ``p -> 1`` limits ``[r*, 1]``; compose with :func:`cap`
    (``upper_max=100``) to reproduce its final cap too.

    Args:
        scheme: A Band scheme (from :func:`band`).
        p_min: Below this ``p`` the simplex limits are used.
        p_max: Above this ``p`` the ``p -> 1`` limits are used.
    """
    if not isinstance(scheme, BandScheme):
        raise TypeError("reference_compat applies to a Band scheme (from bandtheory.schemes.band)")
    if not (0.0 < p_min < p_max < 1.0):
        raise ValueError(f"need 0 < p_min < p_max < 1, got p_min={p_min!r}, p_max={p_max!r}")
    return ReferenceCompat(scheme, float(p_min), float(p_max))


@dataclass(frozen=True)
class DualClip:
    """Heuristic: dual-clip PPO, the loss of negative-advantage tokens bounded at ``c A``.

    The interval is the base scheme's; the extra constant ``dual_clip_c`` is read by
    :func:`bandtheory.losses.policy_loss`, which applies
    ``max(min(r A, clip(r) A), c A)`` where ``A < 0``.
    """

    base: Any
    dual_clip_c: float

    @property
    def name(self) -> str:
        return f"dual_clip({self.base.name})"

    @property
    def label(self) -> str:
        return f"{self.base.label}, dual-clip c={self.dual_clip_c:g}"

    def bounds(self, old_log_prob: Any, *, check_input: bool = True) -> Band:
        """The base scheme's bounds (dual clipping acts on the loss, not the interval)."""
        return self.base.bounds(old_log_prob, check_input=check_input)


def dual_clip(scheme: Any, *, c: float = 3.0) -> DualClip:
    """Heuristic: add dual clipping (``c > 1``, for negative advantages) to any scheme."""
    if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)):
        raise TypeError(f"c must be a real number, got {type(c).__name__}")
    value = float(c)
    if not (value > 1.0) or not math.isfinite(value):
        raise ValueError(f"dual-clip c must be a finite number > 1, got {c!r}")
    return DualClip(scheme, value)
