"""Typed generators: a safe parser, time-limited sympy work, and the generator checks.

A user may type a generator such as ``"(u - 1)**2 / u"``. The text is parsed by
Python's :mod:`ast` into a syntax tree and every node is checked against a whitelist
*before* anything is built; the sympy expression is then assembled node by node by
this module. Nothing in the text is ever passed to ``eval``, ``exec``, ``sympify`` or
``parse_expr``.

The whitelist (everything else is refused with a :class:`ValueError` naming the piece):

- the symbol ``u`` (the likelihood ratio ``pi / pi_old``, positive);
- numeric literals (integers and decimals; decimals are read as exact fractions,
  ``0.1 = 1/10``, so that sympy works with exact numbers);
- the binary operators ``+ - * / **``, unary minus and parentheses;
- calls with one argument to ``log``, ``exp``, ``sqrt``, ``abs`` and ``Abs``.

Symbolic work on typed (or derived) expressions can be slow or even endless in sympy,
so every such call goes through :func:`call_with_time_limit`, which runs it in a
forked worker process and kills the worker when the limit passes. A thread cannot be
stopped from outside in Python, so a process is the only way to *guarantee* that the
caller gets control back on time.

:func:`check_generator` then makes sure the parsed ``f`` defines an f-divergence:
``f(1) = 0`` (or applies the standard normalisation on request), ``f`` convex on
``(0, inf)`` (proved symbolically, or checked numerically on a dense log-spaced grid),
and it computes ``f(0+)``, ``f'(inf)`` and ``f''(1)`` under the time limit.
"""

from __future__ import annotations

import ast
import math
import multiprocessing
import multiprocessing.connection
import pickle
import time
from dataclasses import dataclass
from typing import Any, Callable

import sympy as sp

__all__ = [
    "MAX_LENGTH",
    "FUNCTIONS",
    "TimeLimitExceeded",
    "call_with_time_limit",
    "call_many_with_time_limit",
    "parse_generator",
    "CheckedGenerator",
    "check_generator",
]

#: Longest generator text accepted (characters).
MAX_LENGTH = 500

#: The functions a typed generator may call, by the name it uses.
FUNCTIONS: dict[str, Callable[[sp.Expr], sp.Expr]] = {
    "log": sp.log,
    "exp": sp.exp,
    "sqrt": sp.sqrt,
    "abs": sp.Abs,
    "Abs": sp.Abs,
}

# Same name and assumptions as ``divergences.U``, so the two are the same sympy symbol.
_U = sp.Symbol("u", positive=True)

_ALLOWED = (
    "allowed: the symbol u, numbers, + - * / **, unary minus, parentheses and "
    "log/exp/sqrt/abs/Abs calls"
)
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_OPERATOR_NAMES = {
    ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.BitXor: "^ (use ** for powers)",
    ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
    ast.UAdd: "unary +", ast.Not: "not", ast.Invert: "~",
}
# A numeric power b**e is evaluated exactly by sympy; bound the digits it may create
# so that "9**9**9**9" is refused instead of exhausting memory.
_MAX_POWER_DIGITS = 1000
_MAX_EXPONENT = 1000


# --------------------------------------------------------------------------------------
# Time-limited work
# --------------------------------------------------------------------------------------


class TimeLimitExceeded(TimeoutError):
    """A time-limited computation did not finish; its worker process was killed."""


def _worker(conn, fn, args):  # pragma: no cover - runs in the child process
    try:
        result = ("ok", fn(*args))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        result = ("error", exc)
    try:
        conn.send(result)
    except Exception:  # noqa: BLE001 - an unpicklable result or exception
        tag, value = result
        conn.send(("error", RuntimeError(f"{type(value).__name__}: {value}"[:2000])))
    finally:
        conn.close()


def _context():
    # fork copies the parent's imported sympy, so a worker starts in milliseconds;
    # spawn (other platforms) re-imports it, which costs about a second per call.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def call_with_time_limit(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
    """Run ``fn(*args)`` in a worker process and return its result within ``timeout``.

    The worker is forked (spawned where fork does not exist), the result comes back
    pickled through a pipe, and the worker is killed when the limit passes, so the
    call returns control within ``timeout`` plus a few milliseconds whatever ``fn``
    does. ``fn``, ``args`` and the result must be picklable (sympy expressions are).

    Args:
        fn: A module-level function.
        *args: Its positional arguments.
        timeout: Wall-clock limit in seconds, ``> 0``.

    Returns:
        ``fn(*args)``.

    Raises:
        TimeLimitExceeded: When ``fn`` did not finish in time (or the worker died).
        Exception: Whatever ``fn`` raised, re-raised in the caller.
    """
    if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_worker, args=(sender, fn, args), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise TimeLimitExceeded(f"{getattr(fn, '__name__', 'call')} exceeded {timeout:.3g} s")
        try:
            tag, value = receiver.recv()
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise TimeLimitExceeded(
                f"{getattr(fn, '__name__', 'call')}: worker died ({type(exc).__name__})"
            ) from None
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join()
        process.close()
    if tag == "error":
        raise value
    return value


def call_many_with_time_limit(
    calls: list[tuple[Callable[..., Any], tuple]],
    *,
    timeout: float,
    timeouts: list[float | None] | None = None,
) -> list[tuple[str, Any]]:
    """Run several ``fn(*args)`` at once, each in its own worker, within one limit.

    Args:
        calls: ``(fn, args)`` pairs (module-level functions, picklable arguments).
        timeout: Wall-clock limit in seconds for all of them together, ``> 0``.
        timeouts: Optional shorter limit per call (``None``: ``timeout``).

    Returns:
        One ``(status, value)`` per call, in order: ``("ok", result)``,
        ``("error", exception)`` or ``("timeout", None)``.
    """
    if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    ctx = _context()
    start = time.monotonic()
    deadline = start + timeout
    limits = [
        start + min(timeout, t) if t is not None else deadline
        for t in (timeouts or [None] * len(calls))
    ]
    running = []
    for fn, args in calls:
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_worker, args=(sender, fn, args), daemon=True)
        process.start()
        sender.close()
        running.append((receiver, process))
    results: list[tuple[str, Any]] = [("timeout", None)] * len(calls)
    pending = {receiver: i for i, (receiver, _) in enumerate(running)}
    try:
        while pending:
            now = time.monotonic()
            for receiver, i in list(pending.items()):
                if limits[i] <= now:
                    del pending[receiver]  # stays ("timeout", None); killed below
            if not pending:
                break
            left = min(limits[i] for i in pending.values()) - now
            for receiver in multiprocessing.connection.wait(list(pending), timeout=left):
                i = pending.pop(receiver)
                try:
                    results[i] = receiver.recv()
                except (EOFError, OSError, pickle.UnpicklingError):
                    results[i] = ("timeout", None)
    finally:
        for receiver, process in running:
            receiver.close()
            if process.is_alive():
                process.kill()
            process.join()
            process.close()
    return results


# --------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= 60 else text[:57] + "..."


def _piece(text: str, node: ast.AST) -> str:
    segment = ast.get_source_segment(text, node)
    if segment is None:
        segment = type(node).__name__
    return segment if len(segment) <= 80 else segment[:77] + "..."


def _refuse(text: str, node: ast.AST, what: str) -> ValueError:
    return ValueError(f"{what} {_piece(text, node)!r} is not allowed in a generator; {_ALLOWED}")


def _number(text: str, node: ast.Constant) -> sp.Expr:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "string" if isinstance(value, (str, bytes)) else type(value).__name__
        raise _refuse(text, node, f"{kind} literal")
    if isinstance(value, int):
        return sp.Integer(value)
    if not math.isfinite(value):
        raise ValueError(f"number {_piece(text, node)!r} is not finite; use a finite literal")
    # repr() gives the shortest decimal that round-trips, so 0.1 becomes exactly 1/10.
    return sp.Rational(repr(value))


def _power(text: str, node: ast.AST, base: sp.Expr, exponent: sp.Expr) -> sp.Expr:
    if exponent.is_number:
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError(
                f"power {_piece(text, node)!r} has an exponent above {_MAX_EXPONENT} in size; "
                "use a smaller exponent"
            )
        if base.is_number and base != 0:
            magnitude = abs(float(exponent)) * abs(math.log10(abs(float(sp.N(base, 15)))))
            if magnitude > _MAX_POWER_DIGITS:
                raise ValueError(
                    f"power {_piece(text, node)!r} would have about {magnitude:.0f} digits; "
                    "numbers in a generator must stay below 1e1000"
                )
    return base**exponent


def _build(text: str, node: ast.AST) -> sp.Expr:
    if isinstance(node, ast.Expression):
        return _build(text, node.body)
    if isinstance(node, ast.Constant):
        return _number(text, node)
    if isinstance(node, ast.Name):
        if node.id == "u":
            return _U
        if node.id in FUNCTIONS:
            raise _refuse(text, node, "function name without a call")
        raise _refuse(text, node, "name")
    if isinstance(node, ast.BinOp):
        op = type(node.op)
        if op not in _BINOPS:
            name = _OPERATOR_NAMES.get(op, op.__name__)
            raise ValueError(
                f"operator {name} in {_piece(text, node)!r} is not allowed in a generator; "
                f"{_ALLOWED}"
            )
        left = _build(text, node.left)
        right = _build(text, node.right)
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        if op is ast.Div:
            if right.is_zero:
                raise ValueError(f"division by zero in {_piece(text, node)!r}")
            return left / right
        return _power(text, node, left, right)
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return -_build(text, node.operand)
        name = _OPERATOR_NAMES.get(type(node.op), type(node.op).__name__)
        raise ValueError(
            f"operator {name} in {_piece(text, node)!r} is not allowed in a generator; {_ALLOWED}"
        )
    if isinstance(node, ast.Call):
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
            raise _refuse(text, func, "call to")
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise ValueError(
                f"call {_piece(text, node)!r} must have exactly one positional argument"
            )
        return FUNCTIONS[func.id](_build(text, node.args[0]))
    kinds = {
        ast.Attribute: "attribute access",
        ast.Subscript: "subscript",
        ast.Lambda: "lambda",
        ast.Compare: "comparison",
        ast.BoolOp: "boolean operator",
        ast.IfExp: "conditional expression",
        ast.JoinedStr: "f-string",
        ast.List: "list",
        ast.Tuple: "tuple",
        ast.Dict: "dict",
        ast.Set: "set",
        ast.NamedExpr: "assignment expression",
        ast.Starred: "starred expression",
    }
    for kind, label in kinds.items():
        if isinstance(node, kind):
            raise _refuse(text, node, label)
    raise _refuse(text, node, type(node).__name__)


def parse_generator(text: str) -> sp.Expr:
    """Parse a typed generator ``f(u)`` into a sympy expression, safely.

    Args:
        text: The generator, e.g. ``"(u - 1)**2 / u"`` or ``"-log(u) + u - 1"``; at
            most :data:`MAX_LENGTH` characters, in the whitelist of the module docstring.

    Returns:
        The sympy expression in the positive symbol ``u`` (equal to
        :data:`bandtheory.divergences.U`).

    Raises:
        TypeError: If ``text`` is not a string.
        ValueError: For text that is empty, too long, not an expression, or contains
            anything outside the whitelist; the message names the offending piece.
    """
    if not isinstance(text, str):
        raise TypeError(f"a generator must be given as a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ValueError(
            f"generator text has {len(text)} characters; at most {MAX_LENGTH} are accepted"
        )
    if not text.strip():
        raise ValueError("generator text is empty; type an expression in u such as (u - 1)**2")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"generator {_short(text)!r} is not a valid expression: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ValueError(f"generator {_short(text)!r} is nested too deeply") from None
    try:
        expr = _build(text.strip(), tree)
    except RecursionError:
        raise ValueError("generator is nested too deeply") from None
    if expr.has(sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity):
        raise ValueError(f"generator {_short(text)!r} is not finite: it simplifies to {expr}")
    if not expr.has(_U):
        raise ValueError(f"generator {_short(text)!r} does not depend on u")
    return expr


# --------------------------------------------------------------------------------------
# Checks of a parsed generator
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedGenerator:
    """A generator that passed the checks, with the values computed on the way.

    Attributes:
        f: The (possibly normalised) generator.
        normalization: What was applied, in words (``"none"`` when nothing).
        convexity: How convexity was established, in words.
        f_at_0: ``f(0+)`` (``inf`` allowed).
        slope_at_inf: ``f'(inf) = lim f(u)/u`` (``inf`` allowed).
        curvature_at_1: ``f''(1)``, ``nan`` when ``f`` is not twice differentiable at 1.
    """

    f: sp.Expr
    normalization: str
    convexity: str
    f_at_0: float
    slope_at_inf: float
    curvature_at_1: float


def _simplify_value(expr: sp.Expr) -> sp.Expr:
    return sp.simplify(expr)


def _limit(expr: sp.Expr, point: Any, direction: str) -> sp.Expr:
    return sp.limit(expr, _U, point, direction)


def _as_float(value: sp.Expr) -> float:
    if value is sp.oo:
        return math.inf
    if value is sp.S.NegativeInfinity:
        return -math.inf
    if value.is_number:
        number = complex(sp.N(value, 30))
        if abs(number.imag) <= 1e-25 * max(1.0, abs(number.real)):
            return number.real
    return math.nan


def _numeric_limit(f: sp.Expr, kind: str) -> float:
    """``f(0+)`` or ``lim f(u)/u`` from f at 1e-20, 1e-40, ... (convex f: monotone tail)."""
    values = []
    for k in (20, 40, 80, 160):
        point = sp.Rational(1, 10**k) if kind == "zero" else sp.Integer(10) ** k
        expr = f if kind == "zero" else f / _U
        values.append(_as_float(expr.subs(_U, point)))
    if not all(math.isfinite(v) for v in values):
        if math.isinf(values[-1]) and values[-1] > 0:
            return math.inf
        raise ValueError(f"could not determine the {'value f(0+)' if kind == 'zero' else 'slope lim f(u)/u'}")
    if abs(values[-1] - values[-2]) <= 1e-9 * max(1.0, abs(values[-1])):
        return values[-1]
    if values[-1] > values[-2] > values[-3] and values[-1] > 1e6:
        return math.inf
    raise ValueError(
        f"could not determine the {'value f(0+)' if kind == 'zero' else 'slope lim f(u)/u'}"
    )


def _bounded_float(fn: Callable[..., Any], args: tuple, *, timeout: float) -> float | None:
    try:
        return _as_float(call_with_time_limit(fn, *args, timeout=timeout))
    except (TimeLimitExceeded, NotImplementedError, ValueError, TypeError):
        return None


def _value_at_1(f: sp.Expr, *, timeout: float) -> sp.Expr:
    value = f.subs(_U, 1)
    if value.is_zero:
        return sp.Integer(0)
    try:
        return call_with_time_limit(_simplify_value, value, timeout=timeout)
    except (TimeLimitExceeded, NotImplementedError):
        return value


def _is_zero(value: sp.Expr) -> bool:
    """Whether ``value`` is exactly zero: sympy's answer when it has one, else 2 x 100 digits.

    A tiny exact number (``1e-300`` is read as the fraction ``10**-300``) is not zero.
    """
    decided = value.is_zero
    if decided is not None:
        return bool(decided)
    if value.has(sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity):
        return False
    # Undecided (e.g. an unsimplified log or radical identity): an exact zero evaluates
    # to noise that shrinks with the working precision, a tiny nonzero value does not.
    return abs(complex(sp.N(value, 100))) < 1e-90 and abs(complex(sp.N(value, 200))) < 1e-190


def _convexity_proof(f2: sp.Expr) -> bool:
    simplified = sp.simplify(f2)
    if simplified.is_nonnegative is True:
        return True
    return sp.factor(simplified).is_nonnegative is True


_GRID_POINTS = 20001


def _numeric_convexity(f: sp.Expr, f1: sp.Expr, f2: sp.Expr) -> None:
    """Refuse ``f`` unless ``f'' >= 0`` and ``f'`` is nondecreasing on a log grid."""
    import numpy as np

    from .divergences import _compile

    u = np.logspace(-8, 8, _GRID_POINTS)
    smooth_f2 = f2.replace(sp.DiracDelta, lambda *args: sp.Integer(0))

    def exact(expr: sp.Expr, at: float) -> complex:
        return complex(sp.N(expr.subs(_U, sp.Float(at, 30)), 30))

    with np.errstate(all="ignore"):
        values = np.asarray(_compile(f)(np, u), dtype=float) * np.ones_like(u)
        second = np.asarray(_compile(smooth_f2)(np, u), dtype=float) * np.ones_like(u)
        first = np.asarray(_compile(f1)(np, u), dtype=float) * np.ones_like(u)

    # NaN in float64 may be overflow (inf - inf); only an exact evaluation decides.
    for index in np.flatnonzero(np.isnan(values))[:20]:
        value = exact(f, u[index])
        if not math.isfinite(value.real) or abs(value.imag) > 1e-20 * max(1.0, abs(value)):
            raise ValueError(f"f is not real and finite on (0, inf): f({u[index]:.6g}) = {value}")
    suspects = np.flatnonzero(~(second >= 0))
    for index in suspects[:50]:
        value = exact(smooth_f2, u[index])
        if abs(value.imag) > 1e-20 * max(1.0, abs(value)):
            raise ValueError(f"f is not real on (0, inf): f''({u[index]:.6g}) = {value}")
        if value.real < -1e-20 * max(1.0, abs(value)):
            raise ValueError(
                f"f is not convex on (0, inf): f''(u) = {value.real:.6g} < 0 at u = {u[index]:.6g}"
            )
    if len(suspects) > 50:
        raise ValueError(
            f"cannot confirm convexity: f''(u) evaluates negative or undefined at "
            f"{len(suspects)} grid points, e.g. u = {u[suspects[0]]:.6g}"
        )
    # A concave kink hides from f'' (a negative Dirac mass); it shows as f' decreasing.
    drops = np.flatnonzero(first[1:] < first[:-1] - 1e-9 * (np.abs(first[1:]) + np.abs(first[:-1])))
    for index in drops[:50]:
        a = exact(f1, u[index]).real
        b = exact(f1, u[index + 1]).real
        if b < a - 1e-20 * max(1.0, abs(a)):
            raise ValueError(
                f"f is not convex on (0, inf): f' decreases between u = {u[index]:.6g} and "
                f"u = {u[index + 1]:.6g} (f'' < 0 there, e.g. a concave kink)"
            )


def check_generator(f: sp.Expr, *, normalize: bool = False, timeout: float = 3.0) -> CheckedGenerator:
    """Check that ``f`` generates an f-divergence, and compute its limits safely.

    1. ``f(1) = 0``. If not, refuse with the value found, unless ``normalize`` asks for
       the standard normalisation

       .. math:: \\tilde f(u) = f(u) - f(1) - f'(1)\\,(u - 1),

       which changes no divergence value up to the constant ``f(1)``
       (``sum pi_old (pi/pi_old - 1) = 0``), so that ``D(pi || pi) = 0``.
    2. ``f`` convex on ``(0, inf)``: ``f'' >= 0`` proved by sympy (time-limited), or
       else checked on 20001 log-spaced points in ``[1e-8, 1e8]`` (``f'' >= 0`` and
       ``f'`` nondecreasing, suspects confirmed at 30 digits).
    3. ``f(0+)``, ``f'(inf)``, ``f''(1)`` by sympy limits under the time limit, with a
       numeric fallback for the first two.

    Args:
        f: A sympy expression in the positive symbol ``u`` (from :func:`parse_generator`).
        normalize: Apply the normalisation above instead of refusing ``f(1) != 0``.
        timeout: Seconds allowed for each symbolic step.

    Returns:
        A :class:`CheckedGenerator`.

    Raises:
        ValueError: When ``f(1) != 0`` (and ``normalize`` is false), when ``f`` is affine
            (the divergence is identically zero), not real, or not convex (naming a
            ``u`` where ``f'' < 0``).
    """
    value = _value_at_1(f, timeout=timeout)
    normalization = "none"
    if normalize:
        slope = sp.diff(f, _U).subs(_U, 1)
        slope = _value_at_1(slope, timeout=timeout) if not slope.is_number else slope
        applied = []
        if not _is_zero(value):
            applied.append(f"subtracted f(1) = {value}")
        if not _is_zero(slope):
            applied.append(f"subtracted f'(1)*(u - 1) with f'(1) = {slope}")
        f = f - value - slope * (_U - 1)
        normalization = "; ".join(applied) if applied else "none needed (f(1) = 0, f'(1) = 0)"
        value = _value_at_1(f, timeout=timeout)
    if value.has(sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity):
        raise ValueError(f"f is not finite at u = 1 (f(1) = {value}); a generator needs f(1) = 0")
    if not _is_zero(value):
        raise ValueError(
            f"f(1) = {value} (= {complex(sp.N(value)).real:.6g}) but a generator needs f(1) = 0; "
            "pass normalize=True to use f(u) - f(1) - f'(1)(u - 1)"
        )

    f1 = sp.diff(f, _U)
    f2 = sp.diff(f, _U, 2)
    if f2.is_zero:
        raise ValueError(f"f(u) = {f} is affine: its divergence is identically zero")
    try:
        proved = call_with_time_limit(_convexity_proof, f2, timeout=timeout)
    except (TimeLimitExceeded, NotImplementedError, TypeError, ValueError):
        proved = False
    if proved:
        convexity = "proved symbolically (sympy: f''(u) >= 0 for u > 0)"
    else:
        _numeric_convexity(f, f1, f2)
        convexity = (
            f"checked numerically: f'' >= 0 and f' nondecreasing at {_GRID_POINTS} "
            "log-spaced points in [1e-8, 1e8]"
        )

    f_at_0 = _bounded_float(_limit, (f, 0, "+"), timeout=timeout)
    if f_at_0 is None or math.isnan(f_at_0):
        f_at_0 = _numeric_limit(f, "zero")
    slope_at_inf = _bounded_float(_limit, (f / _U, sp.oo, "-"), timeout=timeout)
    if slope_at_inf is None or math.isnan(slope_at_inf):
        slope_at_inf = _numeric_limit(f, "inf")
    curvature = _curvature(f2, timeout=timeout)
    return CheckedGenerator(
        f=f,
        normalization=normalization,
        convexity=convexity,
        f_at_0=f_at_0,
        slope_at_inf=slope_at_inf,
        curvature_at_1=curvature,
    )


def _curvature(f2: sp.Expr, *, timeout: float) -> float:
    """``f''(1)``, ``nan`` when a Dirac mass or differing one-sided values sit at 1."""
    if f2.has(sp.DiracDelta, sp.Heaviside):
        mass = f2.atoms(sp.DiracDelta)
        if any(sp.N(d.args[0].subs(_U, 1)) == 0 for d in mass):
            return math.nan
        f2 = f2.replace(sp.DiracDelta, lambda *args: sp.Integer(0))
    if f2.has(sp.sign, sp.Abs, sp.Heaviside):
        left = _bounded_float(_limit, (f2, 1, "-"), timeout=timeout)
        right = _bounded_float(_limit, (f2, 1, "+"), timeout=timeout)
        if left is None or right is None or not math.isclose(left, right, rel_tol=1e-12, abs_tol=1e-300):
            return math.nan
        return right
    return _as_float(_value_at_1(f2.subs(_U, 1), timeout=timeout))
