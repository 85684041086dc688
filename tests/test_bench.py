"""The Band benchmark at a tiny N: every row present, finite, and errors as documented.

Speed is not asserted here (a benchmark is not a test); only the shape of the report
and the accuracy figures, which do not depend on the machine.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from bandtheory import band_bounds, bench, cli

METHODS = ["baseline", "exact", "fast", "clip_loss", "band_loss"]
TORCH_METHODS = METHODS + ["compiled", "compiled_loss"]
DELTA = 0.05


def _check_rows(rows, backend, n):
    mine = [r for r in rows if r["backend"] == backend and r["n"] == n]
    assert [r["method"] for r in mine] == (METHODS if backend == "numpy" else TORCH_METHODS)
    for r in mine:
        assert r["seconds"] > 0 and math.isfinite(r["seconds"]), r
        assert r["x_baseline"] > 0 and math.isfinite(r["x_baseline"]), r
        assert math.isfinite(r["max_err"]) and r["max_err"] >= 0, r
    err = {r["method"]: r["max_err"] for r in mine}
    # Baseline: bisection to a bracket width of 1e-6 (the midpoint is within 5e-7), plus
    # float32 rounding; no token of these N has p rounding to 1 (checked below).
    assert 1e-8 < err["baseline"] <= 1e-6
    # exact and fast: the float32 rounding of the output (6e-8) on top of <= 1e-7 / 1e-12.
    assert err["exact"] <= 1.2e-7 and err["fast"] <= 2e-7
    # Losses against float64 (band_loss: fast float32 vs exact float64 bounds): float32
    # sums of terms of both signs leave ~1e-7 relative.
    assert err["clip_loss"] <= 1e-5 and err["band_loss"] <= 1e-5
    if backend != "numpy":
        assert err["compiled"] <= 2e-7 and err["compiled_loss"] <= 1e-5
        assert all(r["compiled_loss_ratio"] > 0 for r in mine)
    else:
        assert all(math.isnan(r["compiled_loss_ratio"]) for r in mine)
    return mine


def _check_table(text, backend):
    assert f"{backend}  (float32 in)" in text
    for method in (METHODS if backend == "numpy" else TORCH_METHODS):
        line = next(ln for ln in text.splitlines() if ln.startswith(method + " "))
        assert "nan" not in line.split()[:4], line  # time, ratio and error are numbers
    assert "band_loss / clip_loss = " in text
    if backend != "numpy":
        assert "compiled_loss / clip_loss = " in text
        assert "compiled first call (torch-cpu, compiles the kernel" in text


def test_run_python_api_numpy_and_torch():
    pytest.importorskip("torch")
    settings = np.geterr()
    lines = []
    rows = bench.run(sizes=(10_000,), backends=("numpy",), repeats=1, delta=DELTA,
                     write=lines.append)
    # A smaller torch run: the whole benchmark (the baseline included) on 1000 tokens.
    rows += bench.run(sizes=(1_000,), backends=("torch",), repeats=1, delta=DELTA,
                      write=lines.append)
    assert np.geterr() == settings  # floating-point warnings are silenced locally only
    _check_rows(rows, "numpy", 10_000)
    _check_rows(rows, "torch-cpu", 1_000)
    text = "\n".join(lines)
    _check_table(text, "numpy")
    _check_table(text, "torch-cpu")
    for r in rows:
        if r["backend"] == "numpy":
            assert math.isfinite(r["peak_arrays64"]) and r["peak_arrays64"] > 0
        else:
            assert math.isnan(r["peak_arrays64"])  # documented: not measured for torch
    old32 = bench.make_tokens(10_000)[0].astype(np.float32)
    assert np.all(np.exp(old32) < 1.0)  # the premise of the baseline's small error above


def test_baseline_error_is_large_where_p_rounds_to_one():
    # |log p| < 3e-8 rounds p to 1 in float32: 1 - p = 0, the baseline's g is NaN, every
    # comparison fails and its lower bound collapses to 0 while the exact lower bound
    # (computed from log p, which keeps 1 - p) is ~exp(-delta): an error of 0.95.
    old = np.array([-1e-9, -2e-8, -0.01, -3.0], dtype=np.float32)
    with np.errstate(all="ignore"):
        lower, upper = bench.baseline_kl_band(old, delta=DELTA)
    truth = band_bounds(old.astype(np.float64), "kl", delta=DELTA)
    assert lower[0] < 1e-6 and lower[1] < 1e-6
    assert truth.lower[0] == pytest.approx(math.exp(-DELTA), abs=1e-6)
    assert bench._band_err(lower, upper, truth) == pytest.approx(math.exp(-DELTA), abs=1e-6)
    # Away from p = 1 it is within its tolerance.
    assert bench._band_err(lower[2:], upper[2:], _slice(truth, 2)) <= 1e-6


def _slice(band, start):
    return type(band)(band.lower[start:], band.upper[start:])


def test_band_error_counts_nan_as_infinite():
    truth = band_bounds(np.log([0.5, 0.1]), "kl", delta=DELTA)
    assert bench._band_err(truth.lower, truth.upper, truth) == 0.0
    bad_upper = np.array([np.nan, truth.upper[1]])
    assert bench._band_err(truth.lower, bad_upper, truth) == math.inf


def test_bench_script_cli_with_n(capsys):
    # benchmarks/bench_band.py is a two-line wrapper around bench.main.
    assert bench.main(["--n", "10000", "--repeats", "1", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "N=1e+04  numpy" in out
    _check_table(out, "numpy")
    assert bench.main(["--n", "0", "--backend", "numpy"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err


def test_bandtheory_bench_cli(monkeypatch, capsys):
    # The command line's wiring (options -> bench.run) with the size shrunk: --quick
    # means N = 1e6, which is a benchmark, not a test.
    seen = {}
    original = bench.run

    def tiny_run(**kwargs):
        seen.update(kwargs)
        return original(**{**kwargs, "sizes": (10_000,)})

    monkeypatch.setattr(bench, "run", tiny_run)
    assert cli.main(["bench", "--quick", "--repeats", "1", "--backend", "numpy"]) == 0
    assert seen["sizes"] == (1_000_000,) and seen["backends"] == ("numpy",)
    assert seen["repeats"] == 1 and seen["torch_memory"] is False
    out = capsys.readouterr().out
    assert "fast table build (kl, delta=0.05)" in out
    _check_table(out, "numpy")
    assert cli.main(["bench", "--n", "5", "--repeats", "1", "--backend", "numpy",
                     "--torch-memory"]) == 0
    assert seen["torch_memory"] is True


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux only")
def test_torch_peak_memory_is_measured_in_a_fresh_process():
    pytest.importorskip("torch")
    n = 1_000_000
    # fast mode: two float32 outputs (one float64 array of N) plus one chunk's temporaries
    fast = bench._peak_torch_rss(n, "fast", 0.05, "float32")
    assert 1.0 <= fast <= 4.0
    # the baseline holds several full-size float32 temporaries at once
    assert bench._peak_torch_rss(n, "baseline", 0.05, "float32") > fast
    # the compiled kernel is one fused loop: its two float32 outputs and nothing else
    assert 1.0 <= bench._peak_torch_rss(n, "compiled", 0.05, "float32") <= 1.05
    assert 1.0 <= bench._peak_torch_rss(n, "compiled_loss", 0.05, "float32") <= 4.0


def test_rounds_interleave_methods_and_ratios_pair_rounds():
    calls = []
    methods = {name: (lambda name=name: calls.append(name)) for name in METHODS}
    times = bench._interleaved(methods, lambda: None, 3, baseline_once=False)
    assert calls == METHODS * 3  # every method once per round, in turn
    assert {name: len(t) for name, t in times.items()} == dict.fromkeys(METHODS, 3)
    calls.clear()
    times = bench._interleaved(methods, lambda: None, 3, baseline_once=True)
    assert calls == METHODS + METHODS[1:] * 2 and len(times["baseline"]) == 1
    # Ratios pair the rounds: median of (2/1, 4/1, 9/3) = 3, not median / median = 4.
    assert bench._median_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    assert bench._median_ratio([6.0], [1.0, 2.0, 3.0]) == 3.0  # one baseline run
    assert bench._ratio_range([2.0, 4.0], [1.0, 1.0]) == "2.00-4.00"
