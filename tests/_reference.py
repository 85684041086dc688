"""Independent 50-digit references for the Band, computed with mpmath.

This route shares nothing with :mod:`bandtheory.bounds` but the sympy generator: it
evaluates ``g_f(p, r) = p f(r) + (1 - p) f((1 - r p)/(1 - p))`` directly in ``r`` at
50 digits and bisects (no Newton, no change of variable, no log-space forms).
"""

from __future__ import annotations

import functools

import mpmath as mp
import sympy as sp

from bandtheory import divergences

DPS = 50
_BISECTIONS = 200


@functools.lru_cache(maxsize=None)
def _mp_f(name: str):
    div = divergences.get(name)
    f = sp.lambdify(divergences.U, div.f, modules="mpmath")
    f0 = sp.limit(div.f, divergences.U, 0, "+")
    slope = sp.limit(div.f / divergences.U, divergences.U, sp.oo)
    return f, f0, slope


def _f_at(name: str, u):
    f, f0, _ = _mp_f(name)
    if u == 0:
        return mp.inf if f0 is sp.oo else mp.mpf(sp.N(f0, DPS + 10))
    return f(u)


def g_mp(name: str, p, r):
    """``g_f(p, r)`` at 50 digits (``p`` in ``(0, 1)``, ``r`` in ``[0, 1/p]``)."""
    with mp.workdps(DPS):
        p = mp.mpf(p)
        r = mp.mpf(r)
        rest = (1 - r * p) / (1 - p)
        if rest < 0:
            rest = mp.mpf(0)
        return p * _f_at(name, r) + (1 - p) * _f_at(name, rest)


def _bisect(fun, lo, hi, increasing: bool):
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        above = fun(mid) > 0
        if above == increasing:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def band_mp(name: str, log_p: float, delta: float):
    """The exact Band at ``p = exp(log_p)`` (``log_p`` taken as an exact binary float).

    Returns:
        ``(lower, upper)`` as mpmath numbers at 50 digits.
    """
    with mp.workdps(DPS):
        p = mp.exp(mp.mpf(log_p))
        d = mp.mpf(delta)
        if p == 1:
            return r_star_mp(name, delta), mp.mpf(1)
        # upper
        if g_mp(name, p, 1 / p) <= d:
            upper = 1 / p
        else:
            upper = _bisect(lambda r: g_mp(name, p, r) - d, mp.mpf(1), 1 / p, increasing=True)
        if g_mp(name, p, 0) <= d:
            lower = mp.mpf(0)
        else:
            lower = _bisect(lambda r: g_mp(name, p, r) - d, mp.mpf(0), mp.mpf(1), increasing=False)
        return lower, upper


def r_star_mp(name: str, delta: float):
    """Root in ``(0, 1)`` of ``f(r) + (1 - r) f'(inf) = delta`` (the ``p -> 1`` limit)."""
    _, _, slope = _mp_f(name)
    with mp.workdps(DPS):
        d = mp.mpf(delta)
        if slope is sp.oo:
            return mp.mpf(1)
        s = mp.mpf(sp.N(slope, DPS + 10))

        def h(r):
            return _f_at(name, r) + (1 - r) * s - d

        if h(mp.mpf(0)) <= 0:
            return mp.mpf(0)
        return _bisect(h, mp.mpf(0), mp.mpf(1), increasing=False)
