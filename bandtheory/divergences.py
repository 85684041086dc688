"""The f-divergence registry: every divergence is defined once, here.

Each entry holds the generator :math:`f(u)` as a sympy expression in the positive
symbol ``u`` (:data:`U`), a one-line description stating the direction, and
everything derived from ``f``: derivatives, the limits ``f(0+)`` and
``f'(inf) = lim f(u)/u``, the curvature ``f''(1)``, and backend-agnostic numeric
callables compiled from the sympy tree (numpy, torch, ... through the array API).

.. math::

    D_f(\\pi \\,\\|\\, \\pi_{old}) = \\sum_x \\pi_{old}(x)\\, f\\!\\left(\\frac{\\pi(x)}{\\pi_{old}(x)}\\right)

The generators are exactly those of THEORY.md section 3, so that ``delta`` means the
same thing everywhere in bandtheory.

References:
    BandPO: Bridging Trust Regions and Ratio Clipping via Probability-Aware Bounds for
    LLM Reinforcement Learning (arXiv 2603.04918), section 3 (the Band operator).
    I. Csiszar, "Information-type measures of difference of probability distributions"
    (1967) for f-divergences; S. Amari, "Alpha-divergence is unique" (2009) for ``alpha``.
"""

from __future__ import annotations

import functools
import math
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import sympy as sp

__all__ = [
    "U",
    "Divergence",
    "DIVERGENCES",
    "get",
    "names",
    "alpha",
    "from_expression",
]

#: The generator's variable: the likelihood ratio ``u = pi / pi_old`` (positive).
U = sp.Symbol("u", positive=True)

#: Log-space variable for ratios below one: ``u = exp(-y)``, ``y >= 0``.
Y = sp.Symbol("y", nonnegative=True)


# --------------------------------------------------------------------------------------
# Compiling sympy trees to array functions (one code path for numpy and torch)
# --------------------------------------------------------------------------------------

_UNARY = {
    sp.log: "log",
    sp.exp: "exp",
    sp.Abs: "abs",
    sp.sign: "sign",
}


def _compile(expr: sp.Expr, var: sp.Symbol = U) -> Callable[[Any, Any], Any]:
    """Compile a sympy expression in ``var`` into ``fn(xp, x)`` using array-API calls.

    Only the node types that generators can contain are supported (numbers, ``u``,
    ``+``, ``*``, ``**``, ``log``, ``exp``, ``abs``, ``sign``); nothing is ``eval``-ed.
    The returned function works for any array namespace ``xp`` (numpy, torch, ...).
    """
    if expr.has(sp.DiracDelta, sp.Heaviside):
        # Distributional derivatives (TV's f'') carry no pointwise numeric value.
        raise ValueError(f"cannot compile a distribution to a numeric function: {expr}")

    if expr == var:
        return lambda xp, u: u
    if expr.is_Number or (expr.is_number and expr.is_finite is not False):
        value = float(expr)
        return lambda xp, u: value
    if isinstance(expr, sp.Add):
        parts = [_compile(a, var) for a in expr.args]

        def add(xp, u):
            total = parts[0](xp, u)
            for part in parts[1:]:
                total = total + part(xp, u)
            return total

        return add
    if isinstance(expr, sp.Mul):
        parts = [_compile(a, var) for a in expr.args]

        def mul(xp, u):
            total = parts[0](xp, u)
            for part in parts[1:]:
                total = total * part(xp, u)
            return total

        return mul
    if isinstance(expr, sp.Pow):
        base = _compile(expr.base, var)
        exponent = expr.exp
        if exponent == sp.Rational(1, 2):
            return lambda xp, u: xp.sqrt(base(xp, u))
        if exponent == -sp.Rational(1, 2):
            return lambda xp, u: 1.0 / xp.sqrt(base(xp, u))
        if exponent == -1:
            return lambda xp, u: 1.0 / base(xp, u)
        if exponent.is_Integer and abs(int(exponent)) <= 8:
            n = int(exponent)
            if n > 0:
                return lambda xp, u: base(xp, u) ** n
            return lambda xp, u: 1.0 / base(xp, u) ** (-n)
        power = _compile(exponent, var)
        return lambda xp, u: xp.pow(base(xp, u), power(xp, u))
    for func, attr in _UNARY.items():
        if isinstance(expr, func):
            (arg,) = expr.args
            inner = _compile(arg, var)
            return lambda xp, u, attr=attr: getattr(xp, attr)(inner(xp, u))
    raise ValueError(f"unsupported expression node {type(expr).__name__} in {expr}")


def _as_float(value: sp.Expr) -> float:
    """A sympy limit as a Python float (``inf`` for ``oo``, ``nan`` when undefined)."""
    if value is sp.oo:
        return math.inf
    if value is sp.S.NegativeInfinity:
        return -math.inf
    if value.is_number and value.is_real:
        return float(value)
    return math.nan


# --------------------------------------------------------------------------------------
# The Divergence entry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Divergence:
    """One f-divergence: its generator and everything derived from it.

    Args:
        name: Registry name (``"kl"``, ``"alpha(2)"``, or a user name).
        f: The generator :math:`f(u)` as a sympy expression in :data:`U`; convex on
            ``(0, inf)`` with ``f(1) = 0``.
        description: One line stating what the divergence is, including its direction.
        latex: LaTeX name for labels.
        references: Where the generator comes from.
        builtin: Whether the entry ships with bandtheory.
        dcp: Optional exact cvxpy builder ``dcp(pi, pi_old) -> (t, constraints)``:
            an elementwise epigraph ``t >= pi_old * f(pi / pi_old)`` (equality
            attainable) over the auxiliary cones ``constraints``; ``t`` is affine in
            fresh variables and holds no parameter, and ``pi_old`` enters the cones
            affinely, so programs stay DPP with ``pi_old`` a parameter. ``None`` sends
            :mod:`bandtheory.convex` to its cutting-plane path.

    Derived attributes (computed once, on first use): ``f1`` and ``f2`` (sympy
    derivatives), ``f_at_0`` (``f(0+)``, may be ``inf``), ``slope_at_inf``
    (``f'(inf) = lim f(u)/u``, may be ``inf``), ``curvature_at_1`` (``f''(1)``, ``nan``
    when ``f`` is not twice differentiable at 1) and the numeric callables
    :meth:`f_num`, :meth:`f1_num` and :meth:`f2_num` taking ``(xp, u)``.
    """

    name: str
    f: sp.Expr
    description: str
    latex: str = ""
    references: str = ""
    builtin: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    dcp: Callable[..., Any] | None = None

    def __repr__(self) -> str:
        return f"Divergence({self.name!r}, f={self.f})"

    # -- symbolic derivatives and limits ------------------------------------------
    @functools.cached_property
    def f1(self) -> sp.Expr:
        """The derivative ``f'(u)``."""
        return sp.diff(self.f, U)

    @functools.cached_property
    def f2(self) -> sp.Expr:
        """The second derivative ``f''(u)`` (may contain ``DiracDelta`` for kinks)."""
        return sp.diff(self.f, U, 2)

    @functools.cached_property
    def f_at_0(self) -> float:
        """``f(0+) = lim_{u -> 0+} f(u)``; ``inf`` means the Band never saturates."""
        if "f_at_0" in self.extra:  # precomputed under a time limit (typed generators)
            return float(self.extra["f_at_0"])
        return _as_float(sp.limit(self.f, U, 0, "+"))

    @functools.cached_property
    def slope_at_inf(self) -> float:
        """``f'(inf) = lim_{u -> inf} f(u) / u`` (the perspective of ``f`` at 0)."""
        if "slope_at_inf" in self.extra:  # precomputed under a time limit (typed generators)
            return float(self.extra["slope_at_inf"])
        return _as_float(sp.limit(self.f / U, U, sp.oo))

    @functools.cached_property
    def curvature_at_1(self) -> float:
        """``f''(1)``, or ``nan`` when ``f`` is not twice differentiable at 1 (TV)."""
        if "curvature_at_1" in self.extra:  # precomputed under a time limit (typed generators)
            return float(self.extra["curvature_at_1"])
        f2 = self.f2
        if f2.has(sp.DiracDelta, sp.Heaviside, sp.sign, sp.Abs):
            left = sp.limit(f2, U, 1, "-")
            right = sp.limit(f2, U, 1, "+")
            if f2.has(sp.DiracDelta, sp.Heaviside) or left != right:
                return math.nan
            return _as_float(right)
        return _as_float(sp.simplify(f2.subs(U, 1)))

    @property
    def smooth(self) -> bool:
        """Whether ``f`` is twice differentiable at ``u = 1`` (small-delta theory holds)."""
        value = self.curvature_at_1
        return math.isfinite(value) and value > 0

    # -- numeric callables ----------------------------------------------------------
    @functools.cached_property
    def _f_compiled(self) -> Callable[[Any, Any], Any]:
        return _compile(self.f)

    @functools.cached_property
    def _f1_compiled(self) -> Callable[[Any, Any], Any]:
        return _compile(self.f1)

    @functools.cached_property
    def _f2_compiled(self) -> Callable[[Any, Any], Any]:
        # A kink's Dirac mass is left out: what is compiled is the absolutely continuous
        # part of f'' (TV: 0 everywhere, its curvature being all at u = 1).
        return _compile(self.f2.replace(sp.DiracDelta, lambda *args: sp.S.Zero))

    @functools.cached_property
    def f_logspace(self) -> sp.Expr:
        """``f(exp(-y))`` simplified, so that ``log u`` never sees an underflowed ``u``."""
        expr = sp.expand_log(self.f.subs(U, sp.exp(-Y)), force=True)
        return sp.powsimp(expr)

    @functools.cached_property
    def _fy_compiled(self) -> Callable[[Any, Any], Any]:
        return _compile(self.f_logspace, Y)

    @functools.cached_property
    def _fy1_compiled(self) -> Callable[[Any, Any], Any]:
        return _compile(sp.powsimp(sp.expand_log(sp.diff(self.f_logspace, Y), force=True)), Y)

    def f_logspace_num(self, xp: Any, y: Any) -> Any:
        """Evaluate ``f(exp(-y))`` elementwise, accurate when ``exp(-y)`` underflows."""
        return self._fy_compiled(xp, y)

    def f_logspace1_num(self, xp: Any, y: Any) -> Any:
        """Evaluate ``d/dy f(exp(-y)) = -exp(-y) f'(exp(-y))`` elementwise."""
        return self._fy1_compiled(xp, y)

    def f_num(self, xp: Any, u: Any) -> Any:
        """Evaluate ``f(u)`` elementwise with the array namespace ``xp``."""
        return self._f_compiled(xp, u)

    def f1_num(self, xp: Any, u: Any) -> Any:
        """Evaluate ``f'(u)`` elementwise with the array namespace ``xp``."""
        return self._f1_compiled(xp, u)

    def f2_num(self, xp: Any, u: Any) -> Any:
        """Evaluate ``f''(u)`` elementwise (away from kinks: Dirac masses left out)."""
        # Broadcast: f'' is a constant for some generators (chi2: 2; TV: 0).
        return xp.zeros_like(u) + self._f2_compiled(xp, u)

    def __call__(self, u: Any) -> Any:
        """Evaluate ``f(u)`` on numpy input (convenience for plots and tests)."""
        import numpy as np
        from array_api_compat import array_namespace

        arr = np.asarray(u, dtype=float)
        with np.errstate(all="ignore"):
            return self.f_num(array_namespace(arr), arr)

    def g_expr(self, p: sp.Symbol | None = None, r: sp.Symbol | None = None) -> sp.Expr:
        """The reduced divergence ``g_f(p, r) = p f(r) + (1-p) f((1 - r p)/(1 - p))``."""
        p = sp.Symbol("p", positive=True) if p is None else p
        r = sp.Symbol("r", nonnegative=True) if r is None else r
        return p * self.f.subs(U, r) + (1 - p) * self.f.subs(U, (1 - r * p) / (1 - p))


# --------------------------------------------------------------------------------------
# Exact cvxpy (DCP) builders of the perspectives, used by bandtheory.convex
# --------------------------------------------------------------------------------------
# Each builder takes new masses ``pi`` (a cvxpy expression, ``pi >= 0``) and old masses
# ``pi_old`` (a positive cvxpy Parameter or constant), both of shape ``(K,)``, and
# returns an *epigraph* ``(t, constraints)``: ``t`` is an elementwise affine expression
# of fresh variables only (no parameter in it), and on the feasible set of
# ``constraints`` (vectorised cones)
#
#     t >= pi_old * f(pi / pi_old)     elementwise, with equality attainable,
#
# so ``sum(t) <= delta`` is exactly the f-ball. ``pi_old`` enters every cone affinely
# (DPP). Because ``t`` holds no parameter, a caller may weight it by a parameter:
# the perspective is 1-homogeneous, ``sigma * persp(pi / sigma, pi_old / sigma) =
# persp(pi, pi_old)``, so feeding a builder the rescaled masses ``(pi/sigma,
# pi_old/sigma)`` and using ``sum(sigma * t) <= delta`` describes the same ball in
# better-scaled cones (bandtheory.convex rescales a rare token this way).
# Every ``t`` is nonnegative, like the perspective: sums of signed terms that cancel
# (``pi log(pi/q) + q log(q/pi)``) make interior-point solvers stall on rare tokens.
# cvxpy is imported inside each builder.


def _rotated_cone(x: Any, y: Any, z: Any) -> Any:
    """Elementwise ``x * y >= z**2`` with ``x, y >= 0`` (second-order cones, vectorised)."""
    import cvxpy as cp

    return cp.SOC(x + y, cp.vstack([x - y, 2 * z]), axis=0)


def _gkl_epigraph(x: Any, y: Any) -> tuple[Any, list]:
    """``s >= x log(x/y) - x + y`` (the generalised KL term, ``>= 0``): one exponential
    cone per entry, ``(-(s + x - y), x, y)``, i.e. ``x exp(-(s + x - y)/x) <= y``."""
    import cvxpy as cp

    s = cp.Variable(x.shape, name="t")
    return s, [cp.constraints.ExpCone(-(s + x - y), x, y)]


def _dcp_kl(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``t >= pi_old log(pi_old/pi) + pi - pi_old`` (exponential cone)."""
    return _gkl_epigraph(pi_old, pi)


def _dcp_reverse_kl(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``t >= pi log(pi/pi_old) - pi + pi_old`` (exponential cone)."""
    return _gkl_epigraph(pi, pi_old)


def _dcp_tv(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``2 t >= |pi - pi_old|`` (two linear inequalities)."""
    import cvxpy as cp

    t = cp.Variable(pi.shape, name="t")
    return t, [2 * t >= pi - pi_old, 2 * t >= pi_old - pi]


def _dcp_chi2(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``t pi_old >= (pi - pi_old)^2`` (rotated second-order cone)."""
    import cvxpy as cp

    t = cp.Variable(pi.shape, name="t")
    return t, [_rotated_cone(t, pi_old, pi - pi_old)]


def _dcp_neyman_chi2(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``t pi >= (pi - pi_old)^2`` (rotated second-order cone)."""
    import cvxpy as cp

    t = cp.Variable(pi.shape, name="t")
    return t, [_rotated_cone(t, pi, pi - pi_old)]


def _dcp_hellinger(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``t >= (sqrt(pi) - sqrt(pi_old))^2``, i.e. ``pi pi_old >= ((pi + pi_old - t)/2)^2``.

    The cone also caps ``t <= (sqrt(pi) + sqrt(pi_old))^2``, harmless for an epigraph
    (the cap lies above every value the ball needs) and it saves an auxiliary variable.
    """
    import cvxpy as cp

    t = cp.Variable(pi.shape, name="t")
    return t, [_rotated_cone(pi, pi_old, (pi + pi_old - t) / 2)]


def _dcp_js(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``t = (s1 + s2)/2`` with ``s1 >= gkl(pi, m)``, ``s2 >= gkl(pi_old, m)``,
    ``m = (pi + pi_old)/2`` (the linear parts of the two KL terms cancel)."""
    m = (pi + pi_old) / 2
    s1, c1 = _gkl_epigraph(pi, m)
    s2, c2 = _gkl_epigraph(pi_old, m)
    return (s1 + s2) / 2, c1 + c2


def _dcp_jeffreys(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``(pi - pi_old) log(pi/pi_old) = gkl(pi, pi_old) + gkl(pi_old, pi)``: two
    nonnegative exponential-cone epigraphs (not ``rel_entr + rel_entr``, whose signed
    terms cancel and stall the solver on rare tokens)."""
    s1, c1 = _gkl_epigraph(pi, pi_old)
    s2, c2 = _gkl_epigraph(pi_old, pi)
    return s1 + s2, c1 + c2


def _dcp_triangular(pi: Any, pi_old: Any) -> tuple[Any, list]:
    """``t (pi + pi_old) >= (pi - pi_old)^2`` (rotated second-order cone)."""
    import cvxpy as cp

    t = cp.Variable(pi.shape, name="t")
    return t, [_rotated_cone(t, pi + pi_old, pi - pi_old)]


def _dcp_alpha_power(pi: Any, pi_old: Any, *, a: Any) -> tuple[Any, list]:
    """``t >= pi_old f_a(pi / pi_old) = (h - l) / (a (a - 1))`` with one 3-D power cone
    per entry, where ``h = pi^a pi_old^(1-a)`` and ``l = pi_old + a (pi - pi_old)`` (the
    tangent of ``h`` at ``pi = pi_old``). With ``v = |a (a - 1)| t >= 0``:

    - ``a > 1`` (``h`` convex):  ``(v + l)^(1/a) pi_old^(1-1/a) >= pi``;
    - ``a < 0`` (``h`` convex):  ``(v + l)^(1/(1-a)) pi^(-a/(1-a)) >= pi_old``;
    - ``0 < a < 1`` (``h`` concave, ``a (a - 1) < 0``):  ``pi^a pi_old^(1-a) >= |l - v|``
      (the cone also caps ``v <= l + h``, above every value the ball needs).

    The epigraph variable sits in the cone itself, shifted by ``l``, instead of a cone
    on ``h`` and a row ``v >= h - l``: the divergence share of a token near
    ``pi_old`` is a tiny difference of two numbers of the token's size, and with it
    in the cone Clarabel stalls less often and takes fewer iterations (Dirichlet K = 10,
    100, 1000, 3 seeds, 4 deltas, 36 Band solves: with the row form 2 failed in every
    attempt at a = -2 and 10 at a = -3, all at K = 1000 (lower bounds, small delta);
    with this form 2 and 1, and 0 with the extra attempts of :mod:`bandtheory.convex`). ``pi_old`` enters affinely
    (DPP), ``t`` holds no parameter, and every cone is 1-homogeneous in
    ``(pi, pi_old, v)``, so rescaled cones describe the same ball. The exact float64
    polish and Newton refinement of :mod:`bandtheory.convex` carry the last digits
    (every ``alpha(a)`` has a pointwise ``f''``).
    """
    import cvxpy as cp

    a = float(a)
    v = cp.Variable(pi.shape, name="v")
    tangent = pi_old + a * (pi - pi_old)
    if a > 1:
        cone = cp.constraints.PowCone3D(v + tangent, pi_old, pi, 1.0 / a)
    elif a < 0:
        cone = cp.constraints.PowCone3D(v + tangent, pi, pi_old, 1.0 / (1.0 - a))
    else:
        cone = cp.constraints.PowCone3D(pi, pi_old, tangent - v, a)
    return v / abs(a * (a - 1.0)), [cone]


def _dcp_alpha(pi: Any, pi_old: Any, *, a: Any) -> tuple[Any, list]:
    """The exact epigraph of ``alpha(a)`` (any ``a`` not in {0, 1}).

    Three ``a`` are multiples of second-order-cone forms: ``alpha(2) = chi2 / 2``,
    ``alpha(1/2) = 2 hellinger``, ``alpha(-1) = neyman_chi2 / 2`` (expand
    ``(u^a - 1 - a (u - 1)) / (a (a - 1))``). Their direct forms avoid the difference
    ``pi^a pi_old^(1-a) - pi_old`` of order-one terms, which loses the relative
    accuracy of small divergences, and Clarabel's second-order cones are better
    conditioned than its power cones, so they are kept. Every other ``a`` uses one
    power cone per entry (:func:`_dcp_alpha_power`)."""
    if a == 2:
        t, cons = _dcp_chi2(pi, pi_old)
        return t / 2, cons
    if a == sp.Rational(1, 2):
        t, cons = _dcp_hellinger(pi, pi_old)
        return 2 * t, cons
    if a == -1:
        t, cons = _dcp_neyman_chi2(pi, pi_old)
        return t / 2, cons
    return _dcp_alpha_power(pi, pi_old, a=a)


#: ``alpha(a)`` for these ``a`` uses a second-order-cone form (a multiple of chi2,
#: hellinger or neyman_chi2); every other ``a`` uses power cones
#: (:func:`_dcp_alpha_power`). Every ``alpha(a)`` has an exact DCP form.
_ALPHA_DCP = (sp.Integer(2), sp.Rational(1, 2), sp.Integer(-1))

_DCP_BUILDERS: Mapping[str, Callable[[Any, Any], Any]] = types.MappingProxyType(
    {
        "kl": _dcp_kl,
        "reverse_kl": _dcp_reverse_kl,
        "tv": _dcp_tv,
        "chi2": _dcp_chi2,
        "neyman_chi2": _dcp_neyman_chi2,
        "hellinger": _dcp_hellinger,
        "js": _dcp_js,
        "jeffreys": _dcp_jeffreys,
        "triangular": _dcp_triangular,
    }
)


# --------------------------------------------------------------------------------------
# Built-ins
# --------------------------------------------------------------------------------------

_BUILTIN_SPECS: tuple[tuple[str, sp.Expr, str, str], ...] = (
    (
        "kl",
        -sp.log(U) + U - 1,
        "Kullback-Leibler D_KL(pi_old || pi), the paper's KL (f(u) = -log u + u - 1)",
        r"\mathrm{KL}(\pi_{old}\,\|\,\pi)",
    ),
    (
        "reverse_kl",
        U * sp.log(U) - U + 1,
        "reverse Kullback-Leibler D_KL(pi || pi_old) (f(u) = u log u - u + 1)",
        r"\mathrm{KL}(\pi\,\|\,\pi_{old})",
    ),
    (
        "tv",
        sp.Abs(U - 1) / 2,
        "total variation (1/2) sum |pi - pi_old|, symmetric (f(u) = |u - 1| / 2)",
        r"\mathrm{TV}",
    ),
    (
        "chi2",
        (U - 1) ** 2,
        "Pearson chi-squared sum (pi - pi_old)^2 / pi_old (f(u) = (u - 1)^2)",
        r"\chi^2_{\mathrm{Pearson}}",
    ),
    (
        "neyman_chi2",
        (U - 1) ** 2 / U,
        "Neyman chi-squared sum (pi - pi_old)^2 / pi (f(u) = (u - 1)^2 / u)",
        r"\chi^2_{\mathrm{Neyman}}",
    ),
    (
        "hellinger",
        (sp.sqrt(U) - 1) ** 2,
        "squared Hellinger sum (sqrt(pi) - sqrt(pi_old))^2, no 1/2, symmetric",
        r"H^2",
    ),
    (
        "js",
        (U * sp.log(2 * U / (U + 1)) + sp.log(2 / (U + 1))) / 2,
        "Jensen-Shannon divergence between pi and pi_old, symmetric",
        r"\mathrm{JS}",
    ),
    (
        "jeffreys",
        (U - 1) * sp.log(U),
        "Jeffreys divergence D_KL(pi || pi_old) + D_KL(pi_old || pi), symmetric",
        r"J",
    ),
    (
        "triangular",
        (U - 1) ** 2 / (U + 1),
        "triangular (Le Cam) discrimination sum (pi - pi_old)^2 / (pi + pi_old), symmetric",
        r"\Delta",
    ),
)

_PAPER = "BandPO (arXiv 2603.04918); generator as in bandtheory THEORY.md section 3"

_BUILTINS: dict[str, Divergence] = {
    name: Divergence(
        name, f, desc, latex=tex, references=_PAPER, builtin=True, dcp=_DCP_BUILDERS.get(name)
    )
    for name, f, desc, tex in _BUILTIN_SPECS
}

#: Read-only mapping of the built-in divergences by name.
DIVERGENCES: Mapping[str, Divergence] = types.MappingProxyType(_BUILTINS)

_ALPHA_NAME = re.compile(r"^\s*alpha\s*\(\s*([+-]?\d+(?:\.\d+)?(?:\s*/\s*\d+)?)\s*\)\s*$")


def _parse_alpha_parameter(a: Any) -> sp.Rational:
    if isinstance(a, bool):
        raise TypeError("alpha parameter a must be a real number, not bool")
    if isinstance(a, str):
        text = a.replace(" ", "")
        if not re.fullmatch(r"[+-]?\d+(?:\.\d+)?(?:/\d+)?", text):
            raise ValueError(f"alpha parameter {a!r} is not a number; use e.g. 2, 0.5 or 1/2")
        value = sp.Rational(text)
    elif isinstance(a, (int, sp.Integer, sp.Rational)):
        value = sp.Rational(a)
    elif isinstance(a, float):
        if not math.isfinite(a):
            raise ValueError(f"alpha parameter must be finite, got {a}")
        value = sp.nsimplify(a, rational=True)
    else:
        raise TypeError(f"alpha parameter must be a number, got {type(a).__name__}")
    if value in (0, 1):
        raise ValueError(f"alpha parameter a={value} is not allowed: a must not be 0 or 1")
    return value


@functools.lru_cache(maxsize=64)
def _alpha_cached(a: sp.Rational) -> Divergence:
    f = (U**a - 1 - a * (U - 1)) / (a * (a - 1))
    return Divergence(
        f"alpha({a})",
        f,
        f"Amari alpha-divergence with a = {a} (f(u) = (u^a - 1 - a(u - 1)) / (a(a - 1)))",
        latex=rf"D_{{\alpha={sp.latex(a)}}}",
        references="S. Amari, Alpha-divergence is unique (2009); " + _PAPER,
        builtin=True,
        extra=types.MappingProxyType({"family": "alpha", "a": a}),
        dcp=functools.partial(_dcp_alpha, a=a),
    )


def alpha(a: Any) -> Divergence:
    """The Amari alpha-divergence with parameter ``a`` (``a`` not in {0, 1}).

    .. math:: f_a(u) = \\frac{u^a - 1 - a (u - 1)}{a (a - 1)}

    ``a = 2`` is half the Pearson chi2, ``a = 1/2`` twice the squared Hellinger,
    ``a = -1`` half the Neyman chi2; ``a -> 1`` tends to reverse KL and ``a -> 0``
    to the paper's KL.

    Args:
        a: A real number (int, float, ``"1/2"`` style string or sympy Rational).

    Returns:
        The registry entry, cached per ``a``.
    """
    return _alpha_cached(_parse_alpha_parameter(a))


def names() -> tuple[str, ...]:
    """Names of the built-in divergences (the family ``alpha(a)`` is extra)."""
    return tuple(_BUILTINS)


def get(name: str | Divergence) -> Divergence:
    """Look up a divergence by name (or pass an entry through).

    Args:
        name: A built-in name (``"kl"``, ``"tv"``, ...), ``"alpha(a)"`` for a number
            ``a`` not in {0, 1}, or a :class:`Divergence` (returned as is).

    Returns:
        The registry entry.

    Raises:
        ValueError: For an unknown name; the message lists the valid names.
        TypeError: For anything that is neither a string nor a :class:`Divergence`.
    """
    if isinstance(name, Divergence):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"divergence must be a name or a Divergence, got {type(name).__name__}"
        )
    key = name.strip()
    if key in _BUILTINS:
        return _BUILTINS[key]
    match = _ALPHA_NAME.match(key)
    if match:
        return alpha(match.group(1))
    raise ValueError(
        f"unknown divergence {name!r}; choose one of {', '.join(_BUILTINS)}, "
        "or alpha(a) with a number a not in {0, 1}"
    )


# --------------------------------------------------------------------------------------
# User divergences typed as text
# --------------------------------------------------------------------------------------

_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.()/+-]{0,63}$")


def from_expression(
    text: str, *, name: str | None = None, normalize: bool = False, timeout: float = 3.0
) -> Divergence:
    """A user divergence from a typed generator, e.g. ``"(u - 1)**2 / u"``.

    The text is parsed by the AST whitelist of :mod:`bandtheory.parsing` (the symbol
    ``u``, numbers, ``+ - * / **``, unary minus, parentheses, ``log``/``exp``/``sqrt``/
    ``abs``/``Abs``; nothing is evaluated before it passes), then checked:
    ``f(1) = 0`` (or, with ``normalize``, replaced by the standard normalisation
    ``f(u) - f(1) - f'(1)(u - 1)``, which changes no divergence value except the
    constant ``f(1)``) and convexity on ``(0, inf)`` (symbolic proof of ``f'' >= 0``,
    else a numeric check on a log-spaced grid in ``[1e-8, 1e8]``). The limits
    ``f(0+)``, ``f'(inf)`` and ``f''(1)`` are computed here under ``timeout`` so that
    no later use of the entry can hang in sympy.

    Args:
        text: The generator ``f(u)``, at most 500 characters.
        name: A name for labels (letters, digits, ``_ . ( ) / + -``, at most 64
            characters); default ``"f(u)=<the parsed expression>"``.
        normalize: Apply the normalisation instead of refusing ``f(1) != 0``.
        timeout: Seconds allowed for each symbolic step, ``> 0``.

    Returns:
        A :class:`Divergence` with ``builtin=False``; ``extra`` records the source
        text, the normalisation applied (``"none"`` when nothing) and how convexity
        was established. It works with ``band_bounds``, ``symbolic.derive`` and the
        schemes like any built-in.

    Raises:
        TypeError: If ``text`` is not a string.
        ValueError: For text outside the whitelist (naming the offending piece), more
            than 500 characters, ``f(1) != 0`` (with the value found), or a generator
            that is not convex (naming a ``u`` where ``f'' < 0``).
    """
    from . import parsing

    if name is not None and (not isinstance(name, str) or not _USER_NAME.match(name)):
        raise ValueError(
            f"name {name!r} is not valid; use 1-64 letters, digits or _ . ( ) / + - "
            "starting with a letter"
        )
    parsed = parsing.parse_generator(text)
    checked = parsing.check_generator(parsed, normalize=normalize, timeout=timeout)
    f = checked.f
    label = name if name is not None else f"f(u)={f}"
    description = f"user divergence with f(u) = {f}"
    if checked.normalization != "none":
        description += f" (normalised: {checked.normalization})"
    extra = {
        "source": text,
        "normalization": checked.normalization,
        "convexity": checked.convexity,
        "f_at_0": checked.f_at_0,
        "slope_at_inf": checked.slope_at_inf,
        "curvature_at_1": checked.curvature_at_1,
    }
    return Divergence(
        label,
        f,
        description,
        latex=rf"D_{{\mathrm{{{name}}}}}" if name is not None and name.isidentifier() else "D_f",
        references="typed by the user",
        builtin=False,
        extra=types.MappingProxyType(extra),
    )
