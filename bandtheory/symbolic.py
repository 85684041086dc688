"""Symbolic derivation of the Band with sympy: g, closed-form bounds, saturation, limits.

For a divergence of the registry (or one typed by a user) :func:`derive` lets sympy
find, not look up, everything THEORY.md sections 2-3 state about its Band:

.. math::

    g_f(p, r) = p\\, f(r) + (1 - p)\\, f\\!\\left(\\frac{1 - r p}{1 - p}\\right) = \\delta,
    \\qquad \\text{lower} \\in [0, 1],\\ \\text{upper} \\in [1, 1/p].

- ``g``: :math:`g_f` simplified (computed with ``q = 1 - p`` as a positive symbol and
  the complement ratio written ``1 + p (1 - r)/q``, so that ``|.|`` and square roots
  split cleanly, then ``q -> 1 - p``).
- ``upper`` / ``lower``: the roots of ``g = delta`` from ``sympy.solve`` (directly, after
  the substitution ``r = s**2`` when ``g`` has ``sqrt(r)``, or after clearing
  denominators). ``|.|`` is resolved per side. Every candidate root is checked against
  :func:`bandtheory.band_bounds` on a grid of ``(p, delta)``; squaring can create
  spurious roots (Hellinger), so a root is only the answer *together with* its
  saturation condition, outside which the bound is ``1/p`` (upper) or ``0`` (lower).
- No closed form, classified by structure rather than by how sympy failed: ``g`` with
  ``log``/``exp`` of ``r`` is "transcendental in r". ``sympy.solve`` is only tried
  when the equation has a single log/exp generator in ``r`` and ``r`` appears nowhere
  else (it can then be inverted: ``-log r = delta``); with two generators (``log r``
  and ``log(1 - p r)``: KL, reverse KL, JS, Jeffreys) or ``r`` also outside one
  (``r log r``) it is not tried. A LambertW root is not counted as a closed form: the
  closed forms here are elementary (``+ * / **``, ``sqrt``, ``exp``, ``log``, ``|.|``),
  which is also what :func:`compile_expression` evaluates. An algebraic equation
  without a root is reported with its degree.
- ``upper_stable`` / ``lower_stable``: the roots rearranged for floating point. Where
  ``X + Y sqrt(Z)`` cancels (opposite signs at the unsaturated sample points, e.g.
  ``(delta + 2p - sqrt(delta) sqrt(delta + 4p - 4p^2))/(2p(1 + delta))``, Neyman's
  lower bound at small ``p``), it is replaced by ``(X^2 - Y^2 Z)/(X - Y sqrt(Z))``
  with the numerator expanded and factored by sympy, so the cancellation is exact;
  innermost sums first, so Hellinger's ``(c - sqrt(w))^2`` is treated too. The numeric
  callables evaluate these forms; ``upper``/``lower`` stay as sympy found them.
- Saturation: ``g(p, 1/p) <= delta`` (upper) and ``g(p, 0) <= delta`` (lower) as sympy
  relations, and the threshold in ``p`` when ``sympy`` solves it (TV upper
  ``p >= 1 - delta``, Pearson upper ``p >= 1/(1 + delta)``; never when ``f(0+) = inf``).
- ``r_star``: the ``p -> 1`` limit of the lower bound, the root of
  ``f(r) + (1 - r) f'(inf) = delta`` (``0`` once ``delta >= f(0+) + f'(inf)``);
  that relation is ``r_star_equation`` (given also when it has no closed form, JS).
- ``gain_limit``: the ``p -> 0`` limit of the probability gain ``p (upper - 1)``; by the
  mirror identity it equals ``1 - r_star``.
- The small-``delta`` expansion ``r = 1 +/- a1 sqrt(delta) + a2 delta + O(delta^{3/2})``
  from the Taylor coefficients ``c2, c3`` of ``g(p, 1 + s)``:
  ``a1 = 1/sqrt(c2) = sqrt(2 (1 - p)/(f''(1) p))``, ``a2 = -c3/(2 c2^2)``.

No sympy call can hang: each runs in a worker process under a time limit
(:func:`bandtheory.parsing.call_with_time_limit`) and the whole derivation shares one
deadline; what does not finish is reported as such (``upper = None`` with a reason).
A step that raises (sympy on an unusual user ``f``) degrades the same way: its item is
``None`` with the note "not derived: ... failed (...)"; :func:`derive` does not raise.

References:
    BandPO (arXiv 2603.04918), the Band operator, its reduction to one dimension and
    the closed forms for TV and Pearson chi2; THEORY.md sections 2-3.
"""

from __future__ import annotations

import functools
import math
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import sympy as sp

from . import divergences as _div
from .bounds import Band, band_bounds
from .parsing import TimeLimitExceeded, call_many_with_time_limit

__all__ = ["P", "DELTA", "R", "Derivation", "derive", "compile_expression"]

#: The old-policy probability of the token.
P = sp.Symbol("p", positive=True)
#: The trust-region radius.
DELTA = sp.Symbol("delta", positive=True)
#: The importance ratio ``pi / pi_old`` of the token.
R = sp.Symbol("r", positive=True)

_Q = sp.Symbol("q", positive=True)  # 1 - p while simplifying
_S = sp.Symbol("s", positive=True)  # sqrt(r), or r - 1 in the series
_T = sp.Symbol("t", positive=True)  # sqrt(delta) in the series
_A1, _A2 = sp.symbols("a1 a2", real=True)
_U = _div.U

# Validation grid: wide in p, moderate to large delta so that saturation shows up.
_P_GRID = (0.03, 0.15, 0.4, 0.6, 0.85, 0.97)
_DELTA_GRID = (0.02, 0.1, 0.4, 1.5)
_MATCH_RTOL = 1e-8

# Shares of derive()'s time budget given to its three rounds of sympy work.
_SHARES = (0.2, 0.6, 0.2)
# Transcendental equations either fail fast in sympy or grind for a long time (JS);
# they get this share only, so that the derivation is not held up by them.
_SHARE_TRANSCENDENTAL = 0.3


# --------------------------------------------------------------------------------------
# Compiling closed forms in (p, delta) to array functions (numpy, torch, ...)
# --------------------------------------------------------------------------------------


def compile_expression(expr: sp.Expr, symbols: tuple[sp.Symbol, ...] = (P, DELTA)) -> Callable:
    """Compile a closed form into ``fn(xp, *values)`` with array-API calls (no eval).

    Supports numbers, the given symbols, ``+``, ``*``, ``**`` (square roots through
    ``xp.sqrt``), ``exp``, ``log`` and ``Abs`` — every node a closed-form Band has.

    Args:
        expr: A sympy expression in ``symbols``.
        symbols: The argument order of the compiled function.

    Returns:
        ``fn(xp, *values)``, evaluated elementwise in the namespace ``xp``.

    Raises:
        ValueError: For a node outside that list (e.g. ``LambertW``).
    """
    index = {s: i for i, s in enumerate(symbols)}

    def build(node: sp.Expr) -> Callable:
        if node in index:
            i = index[node]
            return lambda xp, args: args[i]
        if node.is_number:
            value = complex(sp.N(node, 20))
            if value.imag != 0:
                raise ValueError(f"complex constant {node} in a closed form")
            real = value.real
            return lambda xp, args: real
        if isinstance(node, (sp.Add, sp.Mul)):
            parts = [build(a) for a in node.args]
            is_add = isinstance(node, sp.Add)

            def combine(xp, args):
                total = parts[0](xp, args)
                for part in parts[1:]:
                    total = total + part(xp, args) if is_add else total * part(xp, args)
                return total

            return combine
        if isinstance(node, sp.Pow):
            base = build(node.base)
            e = node.exp
            if e == sp.Rational(1, 2):
                return lambda xp, args: xp.sqrt(base(xp, args))
            if e == -sp.Rational(1, 2):
                return lambda xp, args: 1.0 / xp.sqrt(base(xp, args))
            if e.is_Integer and abs(int(e)) <= 8:
                n = int(e)
                if n > 0:
                    return lambda xp, args: base(xp, args) ** n
                return lambda xp, args: 1.0 / base(xp, args) ** (-n)
            if e.is_Rational and e.q == 2:
                k = int(e.p)
                return lambda xp, args: xp.sqrt(base(xp, args)) ** k
            power = build(e)
            return lambda xp, args: base(xp, args) ** power(xp, args)
        for func, attr in ((sp.exp, "exp"), (sp.log, "log"), (sp.Abs, "abs")):
            if isinstance(node, func):
                inner = build(node.args[0])
                return lambda xp, args, attr=attr: getattr(xp, attr)(inner(xp, args))
        raise ValueError(f"cannot compile {type(node).__name__} in {node}")

    body = build(expr)
    return lambda xp, *values: body(xp, values)


# --------------------------------------------------------------------------------------
# Worker functions (module level so that they can run in a worker process)
# --------------------------------------------------------------------------------------


def _measure(expr: sp.Expr) -> int:
    # log(x**y) "simplifications" are short but unreadable; count them heavily.
    penalty = sum(
        10
        for lg in expr.atoms(sp.log)
        if any(not pw.exp.is_Integer for pw in lg.args[0].atoms(sp.Pow))
    )
    return int(sp.count_ops(expr)) + penalty


def _shortest(*candidates: sp.Expr) -> sp.Expr:
    return min(candidates, key=_measure)


def _w_g(f: sp.Expr) -> sp.Expr:
    """``g_f(p, r)`` in its shortest readable form (see the module docstring)."""
    candidates = [P * f.subs(_U, R) + (1 - P) * f.subs(_U, (1 - R * P) / (1 - P))]
    for rest in (1 + P * (1 - R) / _Q, (1 - R * P) / _Q):
        e = sp.simplify(P * f.subs(_U, R) + _Q * f.subs(_U, rest)).subs(_Q, 1 - P)
        candidates += [e, sp.factor(sp.expand(e))]
    return _shortest(*candidates)


def _w_limits(f: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """Exact ``f(0+)`` and ``f'(inf) = lim f(u)/u``."""
    return sp.limit(f, _U, 0, "+"), sp.limit(f / _U, _U, sp.oo)


def _transcendental(eq: sp.Expr, var: sp.Symbol = R) -> bool:
    """Whether ``eq`` contains ``log`` or ``exp`` of an expression in ``var``."""
    return any(fn.has(var) for fn in eq.atoms(sp.log, sp.exp))


def _transcendence(eq: sp.Expr, var: sp.Symbol = R) -> str | None:
    """Why ``eq`` is transcendental in ``var`` (the structural reason), or ``None``."""
    if _transcendental(eq, var):
        return f"g contains log/exp of {var}"
    for pw in eq.atoms(sp.Pow):
        if pw.exp.has(var) or (pw.base.has(var) and not pw.exp.is_Rational):
            return f"g contains the power {pw} of {var}"
    return None


def _inversion_blocked(eq: sp.Expr, var: sp.Symbol) -> str | None:
    """Why ``eq = 0`` cannot be inverted in elementary functions, or ``None`` when it may.

    An equation with ``log``/``exp`` of ``var`` is inverted by isolating its one
    transcendental generator (``-log r = delta`` gives ``r = exp(-delta)``). When ``var``
    also appears outside that generator (``r log r``: at best a LambertW root), or two
    generators appear (``log r`` and ``log(1 - p r)``, as in the ``g`` of KL, reverse
    KL, JS and Jeffreys: ``r^p (1 - p r)^(1 - p) = c`` for a symbolic ``p``), sympy
    either gives up or grinds for its whole time limit; such an equation is classified
    without calling ``sympy.solve``. (Two log generators with equal weights,
    ``log r + log(1 + r)``, could combine into one; no g of this form arises from
    ``p f(r) + (1 - p) f(...)``, whose two terms carry the weights ``p`` and ``1 - p``.)
    """
    if not _transcendental(eq, var):
        return None
    expanded = sp.expand_log(eq, force=True)
    kernels: list[sp.Expr] = []
    for atom in expanded.atoms(sp.log, sp.exp):
        if not atom.has(var):
            continue
        # exp(a) and exp(b) are one generator when a / b is a number (exp(2 r) = exp(r)**2).
        same = any(
            isinstance(atom, sp.exp) and isinstance(k, sp.exp)
            and sp.cancel(atom.args[0] / k.args[0]).is_Rational
            for k in kernels
        )
        if not same:
            kernels.append(atom)
    if len(kernels) > 1:
        shown = ", ".join(sorted(str(k) for k in kernels)[:3])
        return f"the equation has {len(kernels)} independent log/exp generators in {var} ({shown})"
    outside = expanded.xreplace({k: sp.Dummy() for k in expanded.atoms(sp.log, sp.exp) if k.has(var)})
    if outside.has(var):
        return f"{var} appears both inside and outside {kernels[0]} (at best a LambertW-type root)"
    return None


def _is_elementary(root: sp.Expr) -> bool:
    return not root.has(sp.LambertW) and all(
        isinstance(fn, (sp.exp, sp.log, sp.Abs)) for fn in root.atoms(sp.Function)
    )


def _w_roots(eq: sp.Expr) -> tuple[list[tuple[list[sp.Expr], str]], list[str], str | None]:
    """Candidate roots in ``r`` of ``eq = 0``: ``([(forms, method), ...], errors, blocked)``.

    ``forms`` holds the root as sympy returned it and simplified variants (the caller
    keeps the shortest that still matches the numeric bound). ``blocked`` says why no
    solve was attempted (:func:`_inversion_blocked`), else ``None``. Roots that are not
    elementary (LambertW) are reported in ``errors``, not returned.
    """
    found: list[tuple[sp.Expr, str]] = []
    errors: list[str] = []
    blocked = _inversion_blocked(eq, R)
    if blocked is not None:
        return [], errors, blocked

    def attempt(label, fn):
        try:
            roots = fn()
        except (NotImplementedError, ValueError, TypeError) as exc:
            errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            return
        for root in roots:
            if root.has(R, _S):
                continue
            if _is_elementary(root):
                found.append((root, label))
            else:
                errors.append(f"{label}: a root that is not elementary ({str(root)[:100]})")

    # check=False: sympy's own substitution check is slow with radicals, and every
    # candidate is checked numerically against band_bounds by the caller anyway.
    attempt("sympy.solve(g = delta, r)", lambda: sp.solve(eq, R, check=False))
    if not found and any(pw.base.has(R) and not pw.exp.is_Integer for pw in eq.atoms(sp.Pow)):
        attempt(
            "sympy.solve after r = s**2",
            lambda: [s**2 for s in sp.solve(eq.subs(R, _S**2), _S, check=False)],
        )
    if not found and not _transcendental(eq):
        numerator = sp.numer(sp.together(eq))
        attempt(
            "sympy.solve on the numerator of g - delta",
            lambda: sp.solve(numerator, R, check=False),
        )
    out = []
    for root, label in found:
        forms = [root]
        for fn in (sp.radsimp, sp.factor):
            try:
                forms.append(fn(root))
            except Exception:  # noqa: BLE001 - a failing simplifier is just skipped
                continue
        out.append((sorted(forms, key=_measure), label))
    return out, errors, None


def _w_degree(eq: sp.Expr) -> tuple[int, str] | None:
    """The degree of the algebraic equation ``eq = 0``: ``(n, "r")`` or ``(n, "sqrt(r)")``."""
    for variable, label, e in ((R, "r", eq), (_S, "sqrt(r)", eq.subs(R, _S**2))):
        numerator = sp.numer(sp.together(e))
        try:
            return sp.Poly(numerator, variable).degree(), label
        except sp.PolynomialError:
            continue
    return None


def _simplify_in_p(expr: sp.Expr) -> sp.Expr:
    # With q = 1 - p positive, sqrt(1/(1 - p)) and friends split and cancel.
    via_q = sp.simplify(expr.subs(P, 1 - _Q)).subs(_Q, 1 - P)
    direct = sp.simplify(expr)
    return _shortest(expr, direct, via_q, sp.factor(direct))


def _w_saturation(values: dict[str, sp.Expr]) -> dict[str, sp.Expr]:
    """Per side: the saturation value ``g(p, 1/p)`` or ``g(p, 0)``, simplified."""
    return {side: _simplify_in_p(value) for side, value in values.items()}


def _w_threshold(value: sp.Expr) -> tuple[list[sp.Expr], str | None]:
    """The roots in ``p`` of ``value(p) = delta``, and why none was sought (or ``None``)."""
    blocked = _inversion_blocked(value - DELTA, P)
    if blocked is not None:
        return [], blocked
    return [sp.factor(root) for root in sp.solve(value - DELTA, P) if not root.has(P)], None


def _w_solve_for(eq: sp.Expr, var: sp.Symbol) -> tuple[list[sp.Expr], str | None]:
    """Elementary roots of ``eq = 0`` in ``var``, and why none was sought (or ``None``)."""
    blocked = _inversion_blocked(eq, var)
    if blocked is not None:
        return [], blocked
    roots = [sp.simplify(root) for root in sp.solve(eq, var) if not root.has(var)]
    return [root for root in roots if _is_elementary(root)], None


def _w_closed_limits(lower: sp.Expr | None, upper: sp.Expr | None) -> tuple:
    """``lim_{p -> 1} lower`` and ``lim_{p -> 0} p (upper - 1)`` (``None`` where absent)."""
    out = []
    for expr, point, direction in ((lower, 1, "-"), (None if upper is None else P * (upper - 1), 0, "+")):
        if expr is None:
            out.append(None)
            continue
        try:
            out.append(sp.simplify(sp.limit(expr, P, point, direction)))
        except (NotImplementedError, ValueError, TypeError):
            out.append(None)
    return tuple(out)


def _taylor(g_side: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    shifted = g_side.subs(R, 1 + _S)
    c2 = sp.simplify(sp.diff(shifted, _S, 2).subs(_S, 0) / 2)
    c3 = sp.simplify(sp.diff(shifted, _S, 3).subs(_S, 0) / 6)
    return c2, c3


def _w_series(g_upper: sp.Expr, g_lower: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """Two-term expansions ``1 + a1 sqrt(delta) + a2 delta`` of the upper and lower roots.

    With ``r = 1 + s``: ``g = c2 s^2 + c3 s^3 + O(s^4)``; inserting
    ``s = a1 t + a2 t^2`` (``t = sqrt(delta)``) and matching ``t^2`` and ``t^3``
    gives ``c2 a1^2 = 1`` and ``2 c2 a1 a2 + c3 a1^3 = 0``.
    """
    coefficients = {g_upper: _taylor(g_upper)}
    if g_lower != g_upper:
        coefficients[g_lower] = _taylor(g_lower)
    out = []
    for g_side, sign in ((g_upper, 1), (g_lower, -1)):
        c2, c3 = coefficients[g_side]
        s = _A1 * _T + _A2 * _T**2
        poly = sp.expand(c2 * s**2 + c3 * s**3 - _T**2)
        a1 = [
            a for a in sp.solve(poly.coeff(_T, 2), _A1)
            if bool(a.subs(P, sp.Rational(1, 3)) > 0) == (sign > 0)
        ][0]
        a2 = sp.solve(poly.coeff(_T, 3).subs(_A1, a1), _A2)[0]
        out.append(1 + sp.simplify(a1) * sp.sqrt(DELTA) + sp.factor(sp.simplify(a2)) * DELTA)
    return out[0], out[1]


# --------------------------------------------------------------------------------------
# Cancellation-free numeric forms of a closed-form root
# --------------------------------------------------------------------------------------


def _split_radical(term: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """``term = coefficient * radical``, ``radical`` the product of its square roots."""
    coefficient, radical = [], []
    for factor in sp.Mul.make_args(term):
        if factor.is_Pow and factor.exp.is_Rational and factor.exp.q == 2:
            # b**(k/2) = b**((k - 1)/2) * sqrt(b), k odd.
            radical.append(sp.sqrt(factor.base))
            coefficient.append(factor.base ** ((int(factor.exp.p) - 1) // 2))
        else:
            coefficient.append(factor)
    return sp.Mul(*coefficient), sp.Mul(*radical)


def _has_radical(expr: sp.Expr) -> bool:
    return any(pw.exp.is_Rational and not pw.exp.is_Integer for pw in expr.atoms(sp.Pow))


def _conjugate(node: sp.Add, points: tuple[np.ndarray, np.ndarray]) -> sp.Expr:
    """``A + B`` as ``(A^2 - B^2)/(A - B)`` when ``A``, ``B`` cancel at ``points``.

    ``A`` and ``B`` are the terms of ``node`` grouped by their square-root factor
    (``X`` and ``Y sqrt(Z)``); ``A^2 - B^2`` has no square root, and sympy expands and
    factors it exactly, so the cancellation happens in exact arithmetic and the float
    evaluation only adds two terms of one sign.
    """
    groups: dict[sp.Expr, sp.Expr] = {}
    for term in node.args:
        coefficient, radical = _split_radical(term)
        groups[radical] = groups.get(radical, sp.Integer(0)) + coefficient
    if len(groups) != 2 or any(_has_radical(c) for c in groups.values()):
        return node
    (ra, ca), (rb, cb) = groups.items()
    a, b = ca * ra, cb * rb
    try:
        with np.errstate(all="ignore"):
            va = np.asarray(compile_expression(a)(np, *points), dtype=float) * np.ones_like(points[0])
            vb = np.asarray(compile_expression(b)(np, *points), dtype=float) * np.ones_like(points[0])
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return node
    usable = np.isfinite(va) & np.isfinite(vb) & (va != 0) & (vb != 0)
    if not usable.any() or not np.all(va[usable] * vb[usable] < 0):
        return node
    numerator = sp.factor(sp.expand(ca**2 * ra**2 - cb**2 * rb**2))
    if numerator == 0 or _has_radical(numerator):
        return node
    return numerator / (a - b)


def _stable(expr: sp.Expr, points: tuple[np.ndarray, np.ndarray]) -> sp.Expr:
    """``expr`` with every cancelling ``X + Y sqrt(Z)`` conjugated, innermost first.

    Innermost first, so that a root written ``(c - sqrt(w))**2`` (Hellinger's
    quadratic in ``sqrt(r)``) is treated inside the square as well as expanded.
    """
    if not expr.args or expr.is_Number:
        return expr
    rebuilt = expr.func(*[_stable(arg, points) for arg in expr.args])
    if isinstance(rebuilt, sp.Add) and _has_radical(rebuilt):
        rebuilt = _conjugate(rebuilt, points)
    return rebuilt


def _stable_points(run: _Run, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Unsaturated ``(p, delta)`` points of ``side``, down to small ``p``."""
    ps = (1e-6, 1e-4, 1e-2) + _P_GRID + (0.995,)
    p_values, delta_values = [], []
    for delta in (1e-3,) + _DELTA_GRID + (3.0,):
        free = ~run.saturated(side, ps, delta)
        p_values += [p for p, keep in zip(ps, free) if keep]
        delta_values += [delta] * int(free.sum())
    return np.asarray(p_values, dtype=float), np.asarray(delta_values, dtype=float)


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derivation:
    """Everything sympy derived about one divergence's Band.

    Symbols are :data:`P` (``p``), :data:`DELTA` (``delta``) and :data:`R` (``r``).
    A ``None`` field comes with a ``*_note`` saying why; a found one with a note saying
    how (and that it was checked against :func:`bandtheory.band_bounds`).

    Attributes:
        divergence: The registry name (or the user name).
        f: The generator ``f(u)``.
        g: ``g_f(p, r)`` simplified.
        upper, lower: Closed-form roots of ``g = delta`` (valid where the side is not
            saturated), or ``None``; shown as sympy found them.
        upper_stable, lower_stable: The same roots rearranged for floating point: each
            ``X + Y sqrt(Z)`` whose terms cancel (opposite signs) is written
            ``(X^2 - Y^2 Z)/(X - Y sqrt(Z))`` with the numerator expanded and factored
            exactly by sympy. ``upper_numeric`` and ``lower_numeric`` evaluate these
            (equal to ``upper``/``lower`` when nothing cancels; ``None`` with them).
        upper_saturation, lower_saturation: ``g(p, 1/p) <= delta`` and
            ``g(p, 0) <= delta`` as sympy relations (``false`` when ``f(0+) = inf``).
        upper_threshold, lower_threshold: The same conditions solved for ``p``
            (e.g. ``p >= 1/(delta + 1)``), or ``None``.
        r_star: ``lim_{p -> 1} lower``.
        r_star_equation: Its defining relation ``f(r) + (1 - r) f'(inf) = delta`` as a
            sympy ``Eq`` in ``r`` and ``delta`` (``None`` when ``f'(inf) = inf``, where
            ``r* = 1``); r* is its root in ``(0, 1)``, or ``0`` once
            ``delta >= f(0+) + f'(inf)``. Given also when r* has no closed form (JS).
        gain_limit: ``lim_{p -> 0} p (upper - 1)``.
        series_upper, series_lower: ``1 +/- a1 sqrt(delta) + a2 delta``, or ``None``
            when ``f`` is not twice differentiable at 1.
        latex: LaTeX of every item, by field name.
    """

    divergence: str
    f: sp.Expr
    g: sp.Expr
    upper: sp.Expr | None
    upper_note: str
    lower: sp.Expr | None
    lower_note: str
    upper_stable: sp.Expr | None
    lower_stable: sp.Expr | None
    upper_saturation: sp.Basic
    lower_saturation: sp.Basic
    upper_threshold: sp.Basic | None
    upper_threshold_note: str
    lower_threshold: sp.Basic | None
    lower_threshold_note: str
    r_star: sp.Expr | None
    r_star_equation: sp.Basic | None
    r_star_note: str
    gain_limit: sp.Expr | None
    gain_limit_note: str
    series_upper: sp.Expr | None
    series_lower: sp.Expr | None
    series_note: str
    upper_saturation_value: sp.Expr
    lower_saturation_value: sp.Expr
    latex: Mapping[str, str]

    # -- numeric callables ------------------------------------------------------------
    @functools.cached_property
    def _compiled(self) -> dict[str, Callable]:
        compiled = {}
        for key in ("upper", "lower", "upper_saturation_value", "lower_saturation_value"):
            # The bounds compile from their cancellation-free forms (see the class docstring).
            expr = getattr(self, key + "_stable", None) if key in ("upper", "lower") else getattr(self, key)
            if expr is None or expr.has(sp.oo):
                continue
            try:
                compiled[key] = compile_expression(expr)
            except ValueError:
                continue
        return compiled

    def _side(self, key: str, p: Any, delta: Any) -> Any:
        from array_api_compat import array_namespace

        if getattr(self, key) is None or key not in self._compiled:
            raise ValueError(
                f"{self.divergence}: no closed-form {key} bound "
                f"({getattr(self, key + '_note')}); use bandtheory.band_bounds"
            )
        xp = array_namespace(p)
        delta = xp.asarray(delta, dtype=p.dtype) if hasattr(p, "dtype") else delta
        with np.errstate(all="ignore"):
            root = self._compiled[key](xp, p, delta)
            sat_key = key + "_saturation_value"
            if sat_key in self._compiled:
                saturated = self._compiled[sat_key](xp, p, delta) <= delta
                edge = 1.0 / p if key == "upper" else xp.zeros_like(p)
                root = xp.where(saturated, edge, root)
        return root

    def upper_numeric(self, p: Any, *, delta: Any) -> Any:
        """The closed-form upper bound at ``p`` (numpy or torch array), saturation included.

        Args:
            p: Old probabilities in ``(0, 1)``, a float array.
            delta: Trust-region radius ``> 0`` (scalar or broadcastable array).

        Returns:
            ``upper(p)``: the root where ``g(p, 1/p) > delta``, ``1/p`` elsewhere.

        Raises:
            ValueError: When sympy found no closed form.
        """
        return self._side("upper", p, delta)

    def lower_numeric(self, p: Any, *, delta: Any) -> Any:
        """The closed-form lower bound at ``p``, ``0`` where ``g(p, 0) <= delta``.

        Raises:
            ValueError: When sympy found no closed form.
        """
        return self._side("lower", p, delta)

    def band(self, p: Any, *, delta: Any) -> Band:
        """Both closed-form bounds as a :class:`~bandtheory.bounds.Band`."""
        return Band(self.lower_numeric(p, delta=delta), self.upper_numeric(p, delta=delta))

    @property
    def closed_form(self) -> bool:
        """Whether both bounds have closed forms."""
        return self.upper is not None and self.lower is not None

    def report(self, *, latex: bool = False) -> str:
        """The derivation as text, one item per line (``latex=True``: LaTeX items)."""

        def show(key: str, value: Any) -> str:
            if value is None:
                return "none"
            return self.latex[key] if latex else str(value)

        def numeric(side: str) -> list[str]:
            stable = getattr(self, side + "_stable")
            if stable is None or stable == getattr(self, side):
                return []
            return [f"  numeric form  {show(side + '_stable', stable)}    [the same root without "
                    f"cancellation; {side}_numeric evaluates it]"]

        lines = [
            f"divergence      {self.divergence}",
            f"f(u)            {show('f', self.f)}",
            f"g(p, r)         {show('g', self.g)}",
            f"upper           {show('upper', self.upper)}    [{self.upper_note}]",
            *numeric("upper"),
            f"lower           {show('lower', self.lower)}    [{self.lower_note}]",
            *numeric("lower"),
            f"upper saturated {show('upper_saturation', self.upper_saturation)}"
            f"  <=>  {show('upper_threshold', self.upper_threshold)}    [{self.upper_threshold_note}]",
            f"lower saturated {show('lower_saturation', self.lower_saturation)}"
            f"  <=>  {show('lower_threshold', self.lower_threshold)}    [{self.lower_threshold_note}]",
            f"r* (p -> 1)     {show('r_star', self.r_star)}    [{self.r_star_note}]",
            *([f"r* equation     {show('r_star_equation', self.r_star_equation)}"]
              if self.r_star_equation is not None else []),
            f"gain (p -> 0)   {show('gain_limit', self.gain_limit)}    [{self.gain_limit_note}]",
            f"series upper    {show('series_upper', self.series_upper)}",
            f"series lower    {show('series_lower', self.series_lower)}    [{self.series_note}]",
        ]
        return "\n".join(lines)



# --------------------------------------------------------------------------------------
# The derivation
# --------------------------------------------------------------------------------------

_SOLVE_ERRORS = (TimeLimitExceeded, NotImplementedError, ValueError, TypeError, IndexError)


class _Run:
    """One derivation: its deadline, its divergence and a cache of exact numeric bounds."""

    def __init__(self, div: _div.Divergence, timeout: float):
        self.div = div
        self.deadline = time.monotonic() + timeout
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def parallel(
        self, calls: list[tuple[Callable, tuple]], *, cap: float, caps: list | None = None
    ) -> list[tuple[str, Any]]:
        """Run sympy steps at once in workers; ``("timeout", None)`` for late ones."""
        left = self.deadline - time.monotonic()
        if left <= 0.05 or not calls:
            return [("timeout", None)] * len(calls)
        return call_many_with_time_limit(calls, timeout=min(cap, left), timeouts=caps)

    def bounds(self, ps: tuple[float, ...], delta: float) -> tuple[np.ndarray, np.ndarray]:
        """``band_bounds`` at old probabilities ``ps`` (1.0 allowed) and ``delta``."""
        key = (ps, delta)
        if key not in self._cache:
            band = band_bounds(np.log(np.asarray(ps, dtype=np.float64)), self.div, delta=delta)
            self._cache[key] = (np.asarray(band.lower), np.asarray(band.upper))
        return self._cache[key]

    def saturated(self, side: str, ps: tuple[float, ...], delta: float) -> np.ndarray:
        lower, upper = self.bounds(ps, delta)
        if side == "upper":
            return upper >= (1.0 / np.asarray(ps)) * (1 - 1e-12)
        return lower <= 1e-12


def _ok(result: tuple[str, Any]) -> Any:
    status, value = result
    return value if status == "ok" else None


def _why(result: tuple[str, Any]) -> str:
    status, value = result
    if status == "timeout":
        return "sympy did not finish within the time limit"
    return f"sympy failed ({type(value).__name__}: {str(value).splitlines()[0][:120] if str(value) else ''})"


def _resolve_abs(expr: sp.Expr, points: list[dict]) -> sp.Expr | None:
    """Replace each ``|a|`` by ``a`` or ``-a`` by its sign at ``points``; ``None`` if mixed."""
    for _ in range(20):
        atoms = sorted(expr.atoms(sp.Abs), key=sp.count_ops)
        if not atoms:
            return expr
        atom = atoms[0]
        signs = set()
        for point in points:
            try:
                value = complex(sp.N(atom.args[0].subs(point), 20))
            except (TypeError, ValueError, ZeroDivisionError):  # nan or zoo at a point
                return None
            if abs(value.imag) > 1e-15 or not math.isfinite(value.real):
                return None
            if value.real != 0:
                signs.add(value.real > 0)
        if len(signs) > 1:
            return None
        expr = expr.xreplace({atom: -atom.args[0] if signs == {False} else atom.args[0]})
    return None


def _side_points(side: str) -> list[dict]:
    points = []
    for p in (0.1, 0.5, 0.9):
        for frac in (0.01, 0.5, 0.99):
            r = 1 + frac * (1 / p - 1) if side == "upper" else frac
            points.append({P: sp.Float(p, 20), R: sp.Float(r, 20)})
    return points


_P_POINTS = [{P: sp.Float(x, 20)} for x in (0.01, 0.2, 0.5, 0.8, 0.99)]


def _evaluate(expr: sp.Expr, ps: tuple[float, ...], delta: float) -> np.ndarray:
    """``expr`` at each ``p`` (NaN where complex or undefined)."""
    try:
        fn = compile_expression(expr)
        with np.errstate(all="ignore"):
            values = fn(np, np.asarray(ps, dtype=np.float64), np.float64(delta))
        return np.asarray(values, dtype=np.float64) * np.ones(len(ps))
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        out = []
        for p in ps:
            value = complex(sp.N(expr.subs({P: p, DELTA: delta}), 30))
            out.append(value.real if abs(value.imag) <= 1e-12 * max(1.0, abs(value)) else math.nan)
        return np.asarray(out)


def _matches(run: _Run, expr: sp.Expr, side: str) -> tuple[bool, int]:
    """Whether ``expr`` equals the exact ``side`` bound wherever it is not saturated."""
    checked = 0
    for delta in _DELTA_GRID:
        lower, upper = run.bounds(_P_GRID, delta)
        exact = upper if side == "upper" else lower
        free = ~run.saturated(side, _P_GRID, delta)
        values = _evaluate(expr, _P_GRID, delta)
        close = np.abs(values - exact) <= _MATCH_RTOL * np.maximum(1.0, np.abs(exact))
        if not np.all(close[free]):
            return False, checked
        checked += int(free.sum())
    return checked >= 3, checked


def _threshold_matches(run: _Run, side: str, relation: sp.Basic) -> bool:
    """Whether ``relation`` is the exact saturation set on a (p, delta) grid."""
    ps = (0.01, 0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 0.99)
    for delta in _DELTA_GRID + (3.0, 10.0):
        saturated = run.saturated(side, ps, delta)
        for p, truth_exact in zip(ps, saturated):
            try:
                truth = relation.subs({P: p, DELTA: delta})
                if truth not in (sp.true, sp.false):
                    return False
                if bool(truth) != bool(truth_exact):
                    # On the boundary itself rounding decides; elsewhere it is a mismatch.
                    near = {relation.subs({P: p * (1 + s), DELTA: delta}) for s in (-1e-7, 1e-7)}
                    if len(near) == 1:
                        return False
            except (TypeError, ValueError):
                # e.g. a root that sympy.solve returned as Piecewise((x, cond), (nan, True)):
                # "p >= nan" is no relation, so this candidate is not the threshold.
                return False
    return True


def _threshold(run: _Run, side: str, roots: list[sp.Expr], ceiling: sp.Expr):
    for root in roots:
        for relation in (sp.Ge(P, root), sp.Le(P, root)):
            forms = [relation]
            if ceiling is not sp.oo:
                # delta >= f(0+) + f'(inf) saturates every p (the sup of the saturation value).
                forms.append(sp.Or(relation, sp.Ge(DELTA, ceiling)))
            for form in forms:
                if _threshold_matches(run, side, form):
                    return form, "solved for p by sympy; checked against band_bounds"
    return None, "sympy found no threshold in p matching the numeric saturation"


def _check_limit(run: _Run, value: sp.Expr, which: str) -> bool:
    """``which = "r_star"``: vs band_bounds at p = 1; ``"gain"``: p (upper - 1) at p = 1e-12."""
    for delta in _DELTA_GRID + (3.0,):
        got = complex(sp.N(value.subs(DELTA, delta), 30))
        if abs(got.imag) > 1e-12:
            return False
        if which == "r_star":
            exact = float(run.bounds((1.0,), delta)[0][0])
            tolerance = 1e-9
        else:
            p = 1e-12
            exact = p * (float(run.bounds((p,), delta)[1][0]) - 1)
            # p (upper - 1) approaches its limit like sqrt(p) at worst (f'(inf) = inf).
            tolerance = 1e-5
        if not abs(got.real - exact) <= tolerance:
            return False
    return True


def _gain_vanishes(run: _Run) -> bool:
    ps = (1e-6, 1e-9, 1e-12, 1e-15)
    for delta in _DELTA_GRID + (3.0,):
        gains = np.asarray(ps) * (run.bounds(ps, delta)[1] - 1)
        if not (np.all(np.diff(gains) < 0) and gains[-1] < 0.5 * gains[0]):
            return False
    return True


def _with_ceiling(value: sp.Expr, ceiling: sp.Expr, saturated_value: int) -> sp.Expr:
    if ceiling is sp.oo:
        return value
    return sp.Piecewise((saturated_value, DELTA >= ceiling), (value, True))


def _exact_number(symbolic: Any, numeric: float) -> sp.Expr:
    """The exact limit when sympy's agrees with the float; else the float as a number."""
    if math.isinf(numeric):
        return sp.oo if numeric > 0 else -sp.oo
    try:
        if symbolic is not None and symbolic.is_number and symbolic.is_finite:
            if math.isclose(float(symbolic), numeric, rel_tol=1e-9, abs_tol=1e-12):
                return sp.nsimplify(symbolic) if symbolic.is_Float else symbolic
    except (TypeError, ValueError):  # a limit sympy left unevaluated or complex
        pass
    return sp.nsimplify(numeric)


def derive(divergence: str | _div.Divergence, *, timeout: float = 6.0) -> Derivation:
    """Derive the Band of a divergence symbolically (see the module docstring).

    The sympy steps run in worker processes, independent ones at the same time, in
    three rounds: (1) ``g`` and the limits ``f(0+)``, ``f'(inf)``; (2) the roots of
    ``g = delta``, the saturation values and the series; (3) the saturation
    thresholds, the ``p -> 1`` and ``p -> 0`` limits of the closed forms, the ``r*``
    equation, the cancellation-free numeric forms of the roots and, for an algebraic
    equation without a root, its degree. Every result is checked numerically against
    :func:`bandtheory.band_bounds`. A step that fails (sympy raises, or its result does
    not survive the check) leaves its item ``None`` with a note saying so; it never
    makes ``derive`` raise.

    Args:
        divergence: A registry name (``"kl"``, ``"alpha(1/2)"``, ...) or a
            :class:`~bandtheory.divergences.Divergence` (e.g. from
            :func:`~bandtheory.divergences.from_expression`).
        timeout: Wall-clock budget in seconds for all sympy work together, ``> 0``;
            the three rounds get 20 %, 60 % and the rest of it, and solving a
            transcendental ``g = delta`` with one log/exp generator at most 30 %.
            What does not finish in time is reported as not found, never waited for;
            on a loaded machine pass more.

    Returns:
        A frozen :class:`Derivation`.

    Raises:
        ValueError: For an unknown name or a timeout that is not a positive number.

    Examples:
        >>> d = derive("chi2")
        >>> d.upper
        sqrt(delta)*sqrt(1 - p)/sqrt(p) + 1
        >>> d.upper_threshold
        p >= 1/(delta + 1)
    """
    div = _div.get(divergence)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
        timeout > 0 and math.isfinite(timeout)
    ):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    run = _Run(div, float(timeout))
    f = div.f

    # Round 1: g and the two limits of f.
    caps = [share * float(timeout) for share in _SHARES]
    g_result, limits_result = run.parallel([(_w_g, (f,)), (_w_limits, (f,))], cap=caps[0])
    g = _ok(g_result)
    if g is None:
        g = div.g_expr(P, R)
    limits = _ok(limits_result) or (None, None)
    f0 = _exact_number(limits[0], div.f_at_0)
    slope = _exact_number(limits[1], div.slope_at_inf)
    ceiling = f0 + slope if f0 is not sp.oo and slope is not sp.oo else sp.oo

    g_sides = {side: _resolve_abs(g, _side_points(side)) for side in ("upper", "lower")}
    smooth = math.isfinite(div.curvature_at_1) and div.curvature_at_1 > 0

    # Round 2: roots, saturation values and series, at the same time.
    saturation_values = {}
    if f0 is not sp.oo:
        for side, value in (
            ("upper", P * f.subs(_U, 1 / P) + (1 - P) * f0),
            ("lower", P * f0 + (1 - P) * f.subs(_U, 1 / (1 - P))),
        ):
            resolved = _resolve_abs(value, _P_POINTS)
            saturation_values[side] = value if resolved is None else resolved
    r_star_eq = r_star_equation = None
    if slope is not sp.oo:
        lhs = f.subs(_U, R) + (1 - R) * slope
        resolved = _resolve_abs(lhs, [{R: sp.Float(x, 20)} for x in (0.01, 0.5, 0.99)])
        r_star_equation = sp.Eq(lhs if resolved is None else resolved, DELTA, evaluate=False)
        r_star_eq = None if resolved is None else resolved - DELTA
    equations = []
    for side in ("upper", "lower"):
        if g_sides[side] is not None and g_sides[side] not in equations:
            equations.append(g_sides[side])
    calls = [(_w_roots, (eq - DELTA,)) for eq in equations]
    calls.append((_w_saturation, (saturation_values,)))
    calls.append((_w_series, (g_sides["upper"], g_sides["lower"])) if smooth and all(g_sides.values()) else (_w_noop, ()))
    quick = _SHARE_TRANSCENDENTAL * float(timeout)
    call_caps = [quick if _transcendence(eq) else None for eq in equations]
    outcomes = run.parallel(calls, cap=caps[1], caps=call_caps + [None, None])
    root_outcomes = dict(zip(equations, outcomes[: len(equations)]))
    saturation_outcome, series_outcome = outcomes[len(equations):]

    roots = {}
    for side in ("upper", "lower"):
        chosen = _step("choosing the root", _interpret_root, run, side, g_sides[side],
                       root_outcomes.get(g_sides[side]))
        roots[side] = chosen if len(chosen) == 3 else (*chosen, False)
    upper, lower = roots["upper"][0], roots["lower"][0]

    saturation_values = _ok(saturation_outcome) or saturation_values

    # Series.
    if not smooth:
        series_upper = series_lower = None
        series_note = (
            "f is not twice differentiable at u = 1 (f'' has a Dirac mass or a jump there): "
            "the Band is not 1 +/- c sqrt(delta) + O(delta)"
            if not math.isfinite(div.curvature_at_1)
            else "f''(1) = 0: the Band is not 1 +/- c sqrt(delta) + O(delta)"
        )
    elif not all(g_sides.values()):
        series_upper = series_lower = None
        series_note = "not attempted: f has a kink away from u = 1"
    elif series_outcome[0] == "ok":
        series_upper, series_lower = series_outcome[1]
        series_note = (
            "r = 1 +/- sqrt(2 delta (1 - p)/(f''(1) p)) + a2 delta + O(delta^(3/2)), from the "
            "Taylor coefficients of g(p, 1 + s) (a2 = -c3/(2 c2^2))"
        )
    else:
        series_upper = series_lower = None
        series_note = f"not derived: {_why(series_outcome)}"

    # Round 3: saturation thresholds in p, the limits of the closed forms, their
    # cancellation-free numeric forms and the degree of an unsolved algebraic equation;
    # without a closed-form lower bound, r* (and with it the gain) comes from its own
    # equation f(r) + (1 - r) f'(inf) = delta.
    calls: list[tuple[Callable, tuple]] = []
    keys: list[tuple[str, Any]] = []
    for side, value in saturation_values.items():
        calls.append((_w_threshold, (value,)))
        keys.append(("threshold", side))
    if upper is not None or lower is not None:
        calls.append((_w_closed_limits, (lower, upper)))
        keys.append(("closed", None))
    if lower is None and r_star_eq is not None:
        calls.append((_w_solve_for, (r_star_eq, R)))
        keys.append(("r_star", None))
    for side in ("upper", "lower"):
        root = roots[side][0]
        if root is not None:
            points = _attempt(_stable_points, run, side)
            if points is not None:
                calls.append((_w_stable, (root, points)))
                keys.append(("stable", side))
        elif roots[side][2] and g_sides[side] not in [k[1] for k in keys if k[0] == "degree"]:
            calls.append((_w_degree, (g_sides[side] - DELTA,)))
            keys.append(("degree", g_sides[side]))
    outcomes = dict(zip(keys, run.parallel(calls, cap=float(timeout))))

    notes = {}
    stable = {}
    for side in ("upper", "lower"):
        root, note, algebraic = roots[side]
        if root is None and algebraic:
            note = _algebraic_note(outcomes.get(("degree", g_sides[side]), ("timeout", None)), note)
        notes[side] = note
        stable[side] = root
        outcome = outcomes.get(("stable", side))
        if root is not None and outcome is not None and _ok(outcome) is not None:
            candidate = _ok(outcome)
            # The rewrite is exact algebra; the check guards against a bug in it.
            if candidate != root and _attempt(_matches, run, candidate, side, default=(False, 0))[0]:
                stable[side] = candidate
    closed = _ok(outcomes.get(("closed", None), ("ok", None))) or (None, None)
    r_star_outcome = outcomes.get(("r_star", None), ("ok", ([], None)))

    sat = {}
    for side in ("upper", "lower"):
        if f0 is sp.oo:
            sat[side] = (sp.oo, sp.false, None, "never: f(0+) = inf")
            continue
        value = saturation_values[side]
        outcome = outcomes[("threshold", side)]
        if outcome[0] == "ok" and outcome[1][1] is not None:
            threshold = None
            note = f"no threshold in p: transcendental in p ({outcome[1][1]}; sympy.solve not attempted)"
        elif outcome[0] == "ok":
            threshold, note = _step("matching the threshold", _threshold, run, side, outcome[1][0], ceiling)
        else:
            threshold, note = None, f"no threshold in p: {_why(outcome)}"
        sat[side] = (value, sp.Le(value, DELTA), threshold, note)
    r_star, r_star_note = _step(
        "finding r*", _r_star, run, closed[0], slope, ceiling, r_star_outcome, r_star_eq, r_star_equation,
        lower is not None,
    )
    gain, gain_note = _step(
        "finding the gain limit", _gain, run, closed[1], slope, ceiling, r_star, r_star_equation,
        r_star_note,
    )

    # The fields that have a LaTeX form, passed to Derivation once from here.
    items = {
        "f": f,
        "g": g,
        "upper": upper,
        "lower": lower,
        "upper_stable": stable["upper"],
        "lower_stable": stable["lower"],
        "upper_saturation": sat["upper"][1],
        "lower_saturation": sat["lower"][1],
        "upper_threshold": sat["upper"][2],
        "lower_threshold": sat["lower"][2],
        "r_star": r_star,
        "r_star_equation": r_star_equation,
        "gain_limit": gain,
        "series_upper": series_upper,
        "series_lower": series_lower,
    }
    latex = {key: _latex(value) for key, value in items.items()}
    return Derivation(
        divergence=div.name,
        **items,
        upper_note=notes["upper"],
        lower_note=notes["lower"],
        upper_threshold_note=sat["upper"][3],
        lower_threshold_note=sat["lower"][3],
        r_star_note=r_star_note,
        gain_limit_note=gain_note,
        series_note=series_note,
        upper_saturation_value=sat["upper"][0],
        lower_saturation_value=sat["lower"][0],
        latex=types.MappingProxyType(latex),
    )


def _w_noop() -> None:
    return None


def _w_stable(root: sp.Expr, points: tuple[np.ndarray, np.ndarray]) -> sp.Expr:
    return _stable(root, points)


def _latex(value: Any) -> str:
    if value is None:
        return r"\text{none}"
    try:
        return sp.latex(value)
    except Exception:  # noqa: BLE001 - a printer failure must not lose the derivation
        return r"\text{" + str(value).replace("\\", "") + "}"


def _attempt(fn: Callable, *args: Any, default: Any = None) -> Any:
    """``fn(*args)``, or ``default`` when it raises (an optional refinement step)."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - the step is optional; its absence is the fallback
        return default


def _step(label: str, fn: Callable, *args: Any) -> tuple[Any, Any]:
    """``fn(*args)``, a ``(value, note)`` pair; ``(None, "not derived: ...")`` if it raises.

    sympy raises many kinds of errors on unusual input (``TypeError: Invalid NaN
    comparison`` for a root it returned as ``Piecewise((x, c), (nan, True))``, ...);
    one failed step is reported in its item's note instead of losing the derivation.
    """
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - see above; the failure is reported, not hidden
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        return None, f"not derived: {label} failed ({type(exc).__name__}: {detail})"


def _interpret_root(
    run: _Run, side: str, g_side: sp.Expr | None, outcome: tuple[str, Any] | None
) -> tuple[sp.Expr | None, str, bool]:
    """Pick the candidate root equal to the exact bound: ``(root, note, algebraic)``.

    ``algebraic`` is true when no root was found for an algebraic equation (its note
    is then completed with the degree by :func:`_algebraic_note`).
    """
    if g_side is None:
        return None, "not attempted: f has a kink away from u = 1 on this side", False
    transcendence = _transcendence(g_side)
    head = (
        f"transcendental in r ({transcendence}): no closed form in elementary functions"
        if transcendence else None
    )
    if outcome[0] != "ok":
        if head:
            return None, f"{head} ({_why(outcome)})", False
        return None, _why(outcome), True
    candidates, errors, blocked = outcome[1]
    if not candidates:
        if blocked:
            return None, f"{head} ({blocked}; sympy.solve not attempted)", False
        detail = "; ".join(errors)[:240] or "sympy.solve returned no root"
        if head:
            return None, f"{head} ({detail})", False
        return None, detail, True
    chosen = None
    for forms, method in candidates:
        for form in forms:
            ok, checked = _matches(run, form, side)
            if ok:
                chosen = (form, method, checked)
                break
        if chosen:
            break
    if chosen is None:
        return None, (
            f"sympy found {len(candidates)} candidate root(s), none equal to the exact "
            "bound on the whole (p, delta) grid"
        ), False
    root, method, checked = chosen
    return root, (
        f"found by {method}; branch checked against band_bounds at {checked} unsaturated "
        "(p, delta) points; valid where the side is not saturated"
    ), False


def _algebraic_note(degree_outcome: tuple[str, Any], detail: str) -> str:
    degree = _ok(degree_outcome)
    if degree is None:
        return f"algebraic in r: no solution in radicals found by sympy ({detail})"
    n, variable = degree
    if n <= 4:
        return (
            f"algebraic of degree {n} in {variable}: solvable in radicals, but sympy gave no "
            f"usable root ({detail})"
        )
    return (
        f"algebraic of degree {n} in {variable}: no solution in radicals found ({detail}; "
        "beyond degree 4 there is none in general)"
    )


def _r_star(run, closed_limit, slope, ceiling, outcome, equation, shown, closed_lower):
    """``lim_{p -> 1} lower``: from the closed form, else from its defining equation."""
    candidates = []
    if closed_limit is not None:
        candidates.append((closed_limit, "limit p -> 1 of the closed-form lower bound"))
    if slope is sp.oo:
        candidates.append((sp.Integer(1), "f'(inf) = inf: the complement term forbids any decrease"))
    roots, blocked = _ok(outcome) or ([], None)
    for root in roots:
        candidates.append((root, "root of f(r) + (1 - r) f'(inf) = delta (sympy.solve)"))
    for value, note in candidates:
        full = _with_ceiling(value, ceiling, 0)
        if _check_limit(run, full, "r_star"):
            return full, note + "; checked against band_bounds at p = 1"
    if closed_lower:
        # The r* equation is only solved without a closed-form lower bound.
        where = f"; r* is the root in (0, 1) of {shown}" if shown is not None else ""
        return None, (
            "not derived: sympy gave no p -> 1 limit of the closed-form lower bound that "
            f"matches band_bounds (in time){where}"
        )
    if equation is None:
        return None, "f has a kink inside (0, 1): the r* equation was not attempted"
    if outcome[0] != "ok":
        return None, f"not derived ({_why(outcome)}): r* is the root in (0, 1) of {shown}"
    kind = "transcendental" if _transcendence(equation) else "algebraic"
    edge = f" (r* = 0 when delta >= {ceiling})" if ceiling is not sp.oo else ""
    why = f"{blocked}; sympy.solve not attempted" if blocked else "sympy.solve found no elementary root"
    return None, (
        f"{kind}: r* is the root in (0, 1) of {shown}{edge}; no closed form ({why}); "
        "band_bounds at p = 1 solves it numerically"
    )


def _gain(run, closed_limit, slope, ceiling, r_star, shown, r_star_note):
    """``lim_{p -> 0} p (upper - 1)``: from the closed form, else ``1 - r*`` (mirror)."""
    candidates = []
    if closed_limit is not None:
        candidates.append((_with_ceiling(closed_limit, ceiling, 1),
                           "limit p -> 0 of p (upper - 1) with the closed-form upper bound"))
    if slope is sp.oo and _gain_vanishes(run):
        # x = p (upper - 1) obeys x f(u)/u <= delta with u = 1 + x/p -> inf, so x -> 0;
        # when f grows like u log u this is slow (about delta / log(1/p)), too slow to
        # compare with a value at p = 1e-12, so the check is the decrease to 0 instead.
        at = float(run.bounds((1e-12,), 0.1)[1][0]) * 1e-12
        return sp.Integer(0), (
            "f'(inf) = inf: x = p (upper - 1) obeys x f(u)/u <= delta with u -> inf, so the "
            f"gain vanishes (slowly: {at:.3g} at p = 1e-12, delta = 0.1); checked "
            "decreasing in band_bounds from p = 1e-6 to 1e-15"
        )
    if r_star is not None:
        candidates.append((sp.piecewise_fold(1 - r_star),
                           "1 - r* (mirror identity lower(p) = (1 - (1 - p) upper(1 - p)) / p)"))
    for value, note in candidates:
        if _check_limit(run, value, "gain"):
            return value, note + "; checked against band_bounds at p = 1e-12"
    if r_star is not None:
        return None, "not derived: neither the closed-form limit nor 1 - r* matched band_bounds at p = 1e-12"
    if shown is None or not r_star_note.startswith(("transcendental", "algebraic")):
        return None, "not derived: the limit is 1 - r* (mirror identity), and r* was not derived"
    kind = r_star_note.split(":")[0]
    return None, (
        f"{kind}: the limit is 1 - r* (mirror identity), r* the root in (0, 1) of {shown} "
        "(r_star_equation); no closed form"
    )
