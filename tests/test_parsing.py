"""Tests of the safe generator parser, the generator checks and time-limited work."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import sympy as sp

from bandtheory import band_bounds, divergences, parsing
from bandtheory.parsing import (
    MAX_LENGTH,
    TimeLimitExceeded,
    call_many_with_time_limit,
    call_with_time_limit,
    parse_generator,
)

U = divergences.U


# --------------------------------------------------------------------------------------
# Accepted text
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(u - 1)**2 / u", (U - 1) ** 2 / U),
        ("-log(u) + u - 1", -sp.log(U) + U - 1),
        ("abs(u - 1) / 2", sp.Abs(U - 1) / 2),
        ("Abs(u - 1) * 0.5", sp.Abs(U - 1) / 2),
        ("(sqrt(u) - 1)**2", (sp.sqrt(U) - 1) ** 2),
        ("exp(u) - exp(1)*u", sp.exp(U) - sp.E * U),
        ("u**1.5 - 1.5*u + 0.5", U ** sp.Rational(3, 2) - sp.Rational(3, 2) * U + sp.Rational(1, 2)),
        ("-(-(u - 1))**2", -((U - 1) ** 2)),
    ],
)
def test_parse_builds_the_expected_sympy_tree(text, expected):
    assert sp.simplify(parse_generator(text) - expected) == 0


def test_decimals_are_read_as_exact_fractions():
    expr = parse_generator("0.1*u")
    assert expr == sp.Rational(1, 10) * U


# --------------------------------------------------------------------------------------
# Refused text: every branch of the whitelist, and the message names the piece
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "piece"),
    [
        ("__import__('os').system('ls')", "__import__('os').system"),
        ("__import__('sys').exit(3)", "__import__('sys').exit"),
        ("u.__class__", "u.__class__"),
        ("(u).real", "(u).real"),
        ("lambda: 1", "lambda: 1"),
        ("(lambda u: u)(1)", "lambda u: u"),
        ("u[0]", "u[0]"),
        ("'abc'", "'abc'"),
        ("u + 'x'", "'x'"),
        ("x + u", "x"),
        ("os", "os"),
        ("eval('u')", "eval"),
        ("exec('import os')", "exec"),
        ("sympify('u')", "sympify"),
        ("log", "log"),
        ("u if u else 1", "u if u else 1"),
        ("[u]", "[u]"),
        ("(u, 1)", "(u, 1)"),
        ("{u: 1}", "{u: 1}"),
        ("u < 1", "u < 1"),
        ("u and 1", "u and 1"),
        ("f'{u}'", "f'{u}'"),
        ("u ^ 2", "^"),
        ("u // 2", "//"),
        ("u % 2", "%"),
        ("+u", "unary +"),
        ("~u", "~"),
        ("log(u, 2)", "log(u, 2)"),
        ("log(u=1)", "log(u=1)"),
        ("log(*u)", "log(*u)"),
        ("True * u", "True"),
        ("1j * u", "1j"),
        ("(u := 2)", "u := 2"),
    ],
)
def test_refused_text_names_the_offending_piece(text, piece):
    with pytest.raises(ValueError) as info:
        parse_generator(text)
    assert piece in str(info.value)


def test_nothing_is_evaluated_before_the_whitelist(monkeypatch):
    calls = []
    monkeypatch.setattr("builtins.__import__", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError):
        parse_generator("__import__('os').system('echo pwned')")
    monkeypatch.undo()
    assert calls == []


def test_too_long_text_is_refused_before_parsing():
    text = "u" + " + 0" * 200
    assert len(text) > MAX_LENGTH
    with pytest.raises(ValueError, match=f"at most {MAX_LENGTH}"):
        parse_generator(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("u +", "not a valid expression"),
        ("u; 1", "not a valid expression"),
        ("(" * 240 + "u" + ")" * 240, "nested|not a valid"),
        ("9**9**9**9", "digits|exponent"),
        ("u**100000", "exponent"),
        ("1e999 * u", "not finite"),
        ("u / 0", "division by zero"),
        ("2 + 3", "does not depend on u"),
    ],
)
def test_malformed_or_dangerous_numbers_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        parse_generator(text)


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError, match="string"):
        parse_generator(U)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# from_expression: the generator checks
# --------------------------------------------------------------------------------------


def test_f_of_one_not_zero_is_refused_with_the_value():
    with pytest.raises(ValueError, match=r"f\(1\) = 1 .*normalize=True"):
        divergences.from_expression("u**2")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("(u - 1)**2 + 1e-300", "1e-300"),  # read as the exact fraction 10**-300
        ("(u - 1)**2 - 1e-95", "-1e-95"),
        ("(u - 1)**2 + 2**-400", "3.87259e-121"),
        ("(u - 1)**2 + exp(-250)", "2.66919e-109"),
    ],
)
def test_tiny_nonzero_f_of_one_is_refused(text, shown):
    # sympy decides these are nonzero; no numeric threshold may call them zero.
    with pytest.raises(ValueError, match=r"f\(1\) = .*\(= " + re.escape(shown)):
        divergences.from_expression(text)


def test_tiny_f_of_one_is_normalised_and_reported():
    div = divergences.from_expression("(u - 1)**2 + 1e-300", normalize=True)
    assert sp.simplify(div.f - (U - 1) ** 2) == 0
    assert "subtracted f(1) = 1/1" in div.extra["normalization"]


def test_zero_test_trusts_sympy_and_falls_back_only_when_undecided():
    undecided_zero = sp.log(2) + sp.log(3) - sp.log(6)
    assert undecided_zero.is_zero is None
    assert parsing._is_zero(undecided_zero) is True
    # Undecided too, but 1e-109 at every precision: not zero.
    tiny = sp.exp(-sp.Integer(250)) + undecided_zero
    assert parsing._is_zero(tiny) is False
    assert parsing._is_zero(sp.Rational(1, 10**300)) is False
    assert parsing._is_zero(sp.Float(1e-300)) is False
    assert parsing._is_zero(sp.Integer(0)) is True


def test_normalisation_is_explicit_and_reported():
    div = divergences.from_expression("u**2", normalize=True)
    assert sp.simplify(div.f - (U - 1) ** 2) == 0
    assert "subtracted f(1) = 1" in div.extra["normalization"]
    assert "f'(1) = 2" in div.extra["normalization"]
    assert "normalised" in div.description
    # The normalised generator defines Pearson chi2, so the Band is the same.
    logp = np.log(np.array([0.01, 0.3, 0.9]))
    np.testing.assert_allclose(
        band_bounds(logp, div, delta=0.1).upper, band_bounds(logp, "chi2", delta=0.1).upper, rtol=1e-12
    )


def test_normalisation_not_needed_says_so():
    div = divergences.from_expression("(u - 1)**2", normalize=True)
    assert div.extra["normalization"].startswith("none needed")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("-(u - 1)**2", r"not convex .* u = "),
        ("log(u) - u + 1", r"not convex .* u = "),
        ("(u - 1)**3", r"not convex .* u = "),
        ("-abs(u - 1)", r"f' decreases between u = "),
        ("abs(u - 1) - 2*abs(u - 2) + 2", r"not convex"),
    ],
)
def test_non_convex_generators_are_refused_naming_a_u(text, match):
    with pytest.raises(ValueError, match=match):
        divergences.from_expression(text)


def test_non_convex_message_names_a_u_where_f2_is_negative():
    with pytest.raises(ValueError) as info:
        divergences.from_expression("(u - 1)**3")
    u_named = float(str(info.value).rsplit("u = ", 1)[1])
    assert 6 * (u_named - 1) < 0  # f''(u) = 6 (u - 1)


def test_affine_generator_is_refused():
    with pytest.raises(ValueError, match="affine"):
        divergences.from_expression("2*u - 2")


def test_invalid_name_is_refused():
    with pytest.raises(ValueError, match="name"):
        divergences.from_expression("(u - 1)**2", name="bad name; rm -rf")


def test_user_divergence_matches_the_builtin_everywhere():
    div = divergences.from_expression("(u - 1)**2 / u", name="my_neyman")
    assert div.builtin is False
    assert div.name == "my_neyman"
    assert div.f_at_0 == math.inf and div.slope_at_inf == 1.0 and div.curvature_at_1 == 2.0
    assert "proved symbolically" in div.extra["convexity"]
    logp = np.log(np.linspace(0.001, 0.999, 41))
    for delta in (0.01, 0.2, 2.0):
        mine = band_bounds(logp, div, delta=delta)
        ref = band_bounds(logp, "neyman_chi2", delta=delta)
        np.testing.assert_allclose(mine.upper, ref.upper, rtol=1e-13)
        np.testing.assert_allclose(mine.lower, ref.lower, rtol=1e-13, atol=1e-15)


def test_kinked_user_divergence_is_checked_numerically_and_works():
    div = divergences.from_expression("abs(u - 1)")
    assert "numerically" in div.extra["convexity"]
    assert math.isnan(div.curvature_at_1)
    assert div.f_at_0 == 1.0 and div.slope_at_inf == 1.0
    band = band_bounds(np.log(0.5), div, delta=0.1)
    # g = 2 p |r - 1| = delta
    assert band.upper == pytest.approx(1 + 0.1 / (2 * 0.5), rel=1e-12)
    assert band.lower == pytest.approx(1 - 0.1 / (2 * 0.5), rel=1e-12)


def test_user_divergence_works_in_the_schemes():
    schemes = pytest.importorskip("bandtheory.schemes")
    div = divergences.from_expression("(sqrt(u) - 1)**2")
    logp = np.log(np.array([0.02, 0.5, 0.97]))
    got = schemes.band(divergence=div, delta=0.1).bounds(logp)
    ref = band_bounds(logp, "hellinger", delta=0.1)
    np.testing.assert_allclose(got.upper, ref.upper, rtol=1e-12)
    np.testing.assert_allclose(got.lower, ref.lower, atol=1e-12)


# --------------------------------------------------------------------------------------
# Time-limited work
# --------------------------------------------------------------------------------------


def _sleep_forever():
    time.sleep(1000)


def _fail():
    raise NotImplementedError("no algorithm")


def test_time_limit_kills_a_runaway_worker():
    start = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        call_with_time_limit(_sleep_forever, timeout=0.5)
    # A hang guard, not a benchmark: 0.5 s asked, anything near it is fine.
    assert time.monotonic() - start < 15


def test_time_limit_returns_results_and_reraises_errors():
    assert call_with_time_limit(sp.factor, U**2 - 1, timeout=20) == (U - 1) * (U + 1)
    with pytest.raises(NotImplementedError, match="no algorithm"):
        call_with_time_limit(_fail, timeout=20)


def test_many_calls_report_each_outcome():
    out = call_many_with_time_limit(
        [(sp.expand, ((U + 1) ** 2,)), (_fail, ()), (_sleep_forever, ())], timeout=3
    )
    assert out[0] == ("ok", U**2 + 2 * U + 1)
    assert out[1][0] == "error" and isinstance(out[1][1], NotImplementedError)
    assert out[2] == ("timeout", None)


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, "1"])
def test_bad_timeout_is_refused(timeout):
    with pytest.raises(ValueError, match="timeout"):
        call_with_time_limit(sp.factor, U, timeout=timeout)
