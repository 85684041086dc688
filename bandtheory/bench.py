"""Benchmark of the Band evaluators and the surrogate losses (used by ``bandtheory bench``
and ``benchmarks/bench_band.py``). Timing code lives here, never in the maths modules.

Methods, all on the same generated tokens (most old log-probs near 0, a heavy tail down
to ``p = 1e-8``):

1. ``baseline``: a reference-style KL Band written from the paper's description:
   vectorised bisection in ``r`` on ``g(p, r) = delta``, 50 iterations, tolerance 1e-6,
   the largest bracket width read back to the host every iteration (a device sync);
2. ``exact``: :func:`bandtheory.band_bounds` ``mode="exact"``;
3. ``fast``: ``mode="fast"`` (the table is built before timing; its build time is
   reported separately);
4. ``clip_loss``: :func:`bandtheory.policy_loss` with canonical clipping;
5. ``band_loss``: the same with ``band("kl", mode="fast")`` (bounds computed inside);
6. and 7., torch only: ``compiled`` and ``compiled_loss``, methods 3 and 5 with
   ``mode="compiled"`` (the table evaluated by a ``torch.compile`` kernel; the first
   call, which compiles, is reported separately and not timed).

The losses are timed in the configuration a trainer's hot loop uses: float32 inputs,
no response mask (a packed batch), ``agg="token-mean"``, ``check_input=False`` (the
NaN / sign validation reads every value on the host; it is a debugging aid).

Errors (``max err``) are against float64 references on the same tokens rounded to the
input dtype: exact-mode bounds for the three Band methods (absolute error of ``lower``,
relative of ``upper``; a NaN counts as infinite), the float64 clip loss for
``clip_loss``, and the float64 loss with exact-mode bounds for ``band_loss`` (relative).
The baseline is within its tolerance except where ``p`` rounds to 1 in the input dtype
(``|log p| < 3e-8`` in float32; ~1 token in 1e6 of this mix): there ``1 - p = 0``
makes its ``g`` NaN, every comparison fails and its lower bound collapses to 0, an
error of ``exp(-delta)`` (0.95 at ``delta = 0.05``).

Peak extra memory, in float64 arrays of ``N``, outputs included: ``tracemalloc`` for
NumPy (it tracks NumPy's buffers). torch's allocations are invisible to tracemalloc:
with ``torch_memory=True`` (``--torch-memory``) each torch CPU method runs once more in
a fresh process (Linux; glibc's mmap threshold fixed, so freed buffers leave the
resident set), warmed up on 70,000 tokens, and its peak resident memory
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call) minus the
resident memory before the call is reported; otherwise (and on CUDA) ``nan``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from . import divergences as _div
from . import schemes
from .bounds import band_bounds
from .fast import _start_table, band_table
from .losses import policy_loss

__all__ = ["make_tokens", "baseline_kl_band", "run", "add_arguments", "run_from_args", "main"]


def make_tokens(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(old_log_prob, log_prob, advantages)`` float64 arrays of ``n`` realistic tokens.

    90 % of the old log-probs are ``-Exponential(0.05)`` (p near 1), 10 % are
    log-uniform on ``[1e-8, 1]``; ``log_prob`` moves each by ``N(0, 0.1)`` (kept <= 0).
    """
    rng = np.random.default_rng(seed)
    head = -rng.exponential(0.05, size=n)
    tail = rng.uniform(math.log(1e-8), 0.0, size=n)
    old = np.where(rng.random(n) < 0.9, head, tail)
    new = np.minimum(old + rng.normal(0.0, 0.1, size=n), 0.0)
    adv = rng.normal(size=n)
    return old, new, adv


def baseline_kl_band(old_log_prob: Any, *, delta: float = 0.05, iters: int = 50,
                     tol: float = 1e-6) -> tuple[Any, Any]:
    """Reference-style bisection for the KL Band (paper's description), in the input dtype."""
    from array_api_compat import array_namespace

    xp = array_namespace(old_log_prob)
    p = xp.exp(old_log_prob)
    q = 1.0 - p

    def g(r):
        rest = (1.0 - r * p) / q
        return p * (r - 1.0 - xp.log(r)) + q * (rest - 1.0 - xp.log(rest))

    lo_u, hi_u = xp.ones_like(p), 1.0 / p  # p = 1 gives NaN bounds, as in the reference
    lo_l, hi_l = xp.zeros_like(p), xp.ones_like(p)
    for _ in range(iters):
        mid_u = 0.5 * (lo_u + hi_u)
        over = g(mid_u) > delta
        hi_u = xp.where(over, mid_u, hi_u)
        lo_u = xp.where(over, lo_u, mid_u)
        mid_l = 0.5 * (lo_l + hi_l)
        over = g(mid_l) > delta
        lo_l = xp.where(over, mid_l, lo_l)
        hi_l = xp.where(over, hi_l, mid_l)
        width = float(xp.max(xp.maximum(hi_u - lo_u, hi_l - lo_l)))  # host sync
        if width < tol:
            break
    return 0.5 * (lo_l + hi_l), 0.5 * (lo_u + hi_u)


def _interleaved(methods: dict[str, Callable[[], Any]], sync: Callable[[], Any], repeats: int,
                 *, baseline_once: bool) -> dict[str, list[float]]:
    """Seconds of each method over ``repeats`` rounds, every method once per round.

    Interleaving keeps the ratios fair on a machine whose speed drifts (a shared 2-core
    VM moves by 30 % within minutes): each ratio compares methods timed seconds apart,
    not one method's repeats against another's a minute later. ``baseline_once``: the
    baseline runs in the first round only (it takes seconds at ``N >= 1e7``).
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(repeats):
        for name, fn in methods.items():
            if name == "baseline" and baseline_once and round_ > 0:
                continue
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num / den`` (a single ``num`` divides every ``den``)."""
    if len(num) == 1:
        return num[0] / statistics.median(den)
    return statistics.median(a / b for a, b in zip(num, den))


def _ratio_range(num: Sequence[float], den: Sequence[float]) -> str:
    ratios = [a / b for a, b in zip(num, den)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def _peak_numpy(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return float(peak)


def _band_err(lower: Any, upper: Any, truth: Any) -> float:
    """Largest error of a Band against the truth: absolute for ``lower`` (in
    ``[0, 1]``), relative for ``upper`` (up to ``1/p``). A non-finite value where the
    truth is finite counts as an infinite error (``nanmax`` would hide it); equal
    infinities count as exact."""
    def err(a, b, relative):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        with np.errstate(all="ignore"):
            e = np.abs(a - b) / (np.abs(b) if relative else 1.0)
        e = np.where(a == b, 0.0, e)  # inf == inf
        e = np.where(np.isnan(e), np.inf, e)
        return float(e.max()) if e.size else 0.0

    return max(err(lower, truth.lower, False), err(upper, truth.upper, True))


def _loss_err(loss: Any, truth: float) -> float:
    """Relative error of a loss value against the float64 reference (absolute if it is 0)."""
    value = float(loss)
    return abs(value - truth) / (abs(truth) if truth != 0.0 else 1.0)


def run(*, sizes=(1_000_000, 10_000_000), backends=("numpy", "torch"), repeats: int = 5,
        delta: float = 0.05, dtype: str = "float32", write: Callable[[str], None] = print,
        torch_memory: bool = False) -> list[dict[str, Any]]:
    """Run the benchmark, print a table with ``write`` and return the rows.

    Errors (the ``max_err`` of each row) are measured against references computed in
    float64 on the tokens as the methods see them (rounded to ``dtype``): the Band
    methods against exact-mode bounds (absolute on ``lower``, relative on ``upper``),
    ``clip_loss`` against the float64 clip loss, ``band_loss`` (fast mode, ``dtype``)
    against the float64 loss with exact-mode bounds (both relative). Where ``p`` rounds
    to 1 in ``dtype`` the baseline's lower bound collapses to 0 (its ``g`` is NaN at
    ``1 - p = 0``): an error of ``exp(-delta)`` (0.95 for 0.05), about one token in 1e6
    of this mix in float32; elsewhere it is within its 1e-6 tolerance.

    Args:
        sizes: Numbers of tokens ``N`` (each ``>= 1``).
        backends: ``"numpy"`` and / or ``"torch"`` (CPU, and CUDA when available).
        repeats: Timed rounds; each round runs every method once, in turn (the baseline
            only in the first round at ``N >= 1e7``).
        delta: KL radius of the Band.
        dtype: Input dtype of the methods (``"float32"``, ``"float64"``, ...).
        write: Where the table lines go.
        torch_memory: Also measure torch CPU's peak extra memory (one fresh process
            per method and size; Linux).

    Returns:
        One dict per (size, backend, method): ``n``, ``backend``, ``method``,
        ``seconds`` (median over rounds), ``x_baseline`` (median over rounds of the
        baseline's time over this method's in the same round), ``loss_ratio`` (the same
        median of ``band_loss`` over ``clip_loss``), ``compiled_loss_ratio`` (of
        ``compiled_loss``; ``nan`` on NumPy), ``max_err``, ``peak_arrays64`` (peak
        extra memory in float64 arrays of ``N``; ``nan`` for torch unless
        ``torch_memory``).
    """
    sizes = tuple(int(n) for n in sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be numbers of tokens >= 1, got {sizes}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    # Exact mode's cold start on large inputs: its small start table (built once per
    # divergence and delta; a cached fast table is used instead when there is one).
    t0 = time.perf_counter()
    start = _start_table(_div.get("kl"), float(delta))
    build = time.perf_counter() - t0
    steps = None if start is None else start.polish_steps
    write(f"exact-mode start table build (kl, delta={delta:g}): {build * 1e3:.0f} ms, "
          f"certified Newton steps {steps} (cached afterwards)")
    t0 = time.perf_counter()
    band_table("kl", delta=delta)
    build = time.perf_counter() - t0
    write(f"fast table build (kl, delta={delta:g}): {build * 1e3:.0f} ms (cached afterwards)")
    band_fast = schemes.band("kl", delta=delta, mode="fast")
    band_exact = schemes.band("kl", delta=delta, mode="exact")
    clip = schemes.clip(eps=0.2)
    rows = []
    for n in sizes:
        old64, new64, adv64 = make_tokens(n)
        # The references use the tokens as the methods see them (rounded to dtype).
        old_r, new_r, adv_r = (a.astype(dtype).astype(np.float64) for a in (old64, new64, adv64))
        truth = band_bounds(old_r, "kl", delta=delta, check_input=False)
        loss_truth = {
            "clip_loss": policy_loss(new_r, old_r, adv_r, scheme=clip, check_input=False)[0],
            "band_loss": policy_loss(new_r, old_r, adv_r, scheme=band_exact,
                                     check_input=False)[0],
        }
        for backend in backends:
            devices = ["cpu"]
            if backend == "torch":
                try:
                    import torch
                except ImportError:
                    write("torch not installed: skipped")
                    continue
                if torch.cuda.is_available():
                    devices.append("cuda")
            for dev in devices:
                rows.extend(_measure(backend, dev, n, (old64, new64, adv64), truth, loss_truth,
                                     repeats=repeats, delta=delta, dtype=dtype,
                                     schemes_=(clip, band_fast), write=write,
                                     torch_memory=torch_memory))
    return rows


def _methods(old, new, adv, delta, clip, band_fast) -> dict[str, Callable[[], Any]]:
    """The timed methods on the tokens ``(old, new, adv)``: the five, and for torch
    the two compiled ones."""
    methods = {
        "baseline": lambda: baseline_kl_band(old, delta=delta),
        "exact": lambda: band_bounds(old, "kl", delta=delta, check_input=False),
        "fast": lambda: band_bounds(old, "kl", delta=delta, check_input=False, mode="fast"),
        "clip_loss": lambda: policy_loss(new, old, adv, scheme=clip, check_input=False)[0],
        "band_loss": lambda: policy_loss(new, old, adv, scheme=band_fast, check_input=False)[0],
    }
    if not isinstance(old, np.ndarray):
        band_compiled = schemes.band("kl", delta=delta, mode="compiled")
        methods["compiled"] = lambda: band_bounds(old, "kl", delta=delta, check_input=False,
                                                  mode="compiled")
        methods["compiled_loss"] = lambda: policy_loss(new, old, adv, scheme=band_compiled,
                                                       check_input=False)[0]
    return methods


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _memory_child(argv: Sequence[str]) -> None:
    """Child process of :func:`_peak_torch_rss`: prints the peak extra resident memory
    of one torch CPU method on ``N`` tokens, in float64 arrays of ``N``."""
    import gc

    import torch

    n, method, delta, dtype = int(argv[0]), argv[1], float(argv[2]), argv[3]
    tdtype = getattr(torch, dtype)
    tokens = [torch.as_tensor(a, dtype=tdtype) for a in make_tokens(n)]
    clip = schemes.clip(eps=0.2)
    band_fast = schemes.band("kl", delta=delta, mode="fast")
    with np.errstate(all="ignore"):
        # Warm-up (imports, tables, first-call allocations) on a slice of two chunks,
        # so that the full-size buffers of the measured call are new pages.
        small = [t[:70_000].clone() for t in tokens]
        _methods(*small, delta, clip, band_fast)[method]()
        del small
        gc.collect()
        fn = _methods(*tokens, delta, clip, band_fast)[method]
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident set
        before = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
    del out
    print((peak - before) * 1024 / (8 * n))


def _peak_torch_rss(n: int, method: str, delta: float, dtype: str) -> float:
    """Peak extra resident memory of a torch CPU method (float64 arrays of ``n``),
    measured in a fresh process; ``nan`` where that cannot be done (not Linux)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return math.nan
    code = "import sys; from bandtheory.bench import _memory_child; _memory_child(sys.argv[1:])"
    # A fixed mmap threshold (glibc): every large buffer is mapped on allocation and
    # unmapped on release, so freed memory never sits resident in the heap, where a
    # later allocation would reuse it unseen.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code, str(n), method, repr(delta), dtype],
                         capture_output=True, text=True, timeout=1800, env=env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        warnings.warn(f"torch memory of {method} at N={n} not measured: {last}", stacklevel=2)
        return math.nan
    return float(out.stdout.strip().splitlines()[-1])


def _measure(backend, dev, n, tokens, truth, loss_truth, *, repeats, delta, dtype, schemes_,
             write, torch_memory=False):
    """Time, check and print the five methods on one backend and device."""
    clip, band_fast = schemes_
    old64, new64, adv64 = tokens
    if backend == "numpy":
        def conv(a):
            return a.astype(dtype)

        def sync():
            return None
    else:
        import torch

        def conv(a):
            return torch.as_tensor(a, dtype=getattr(torch, dtype), device=dev)

        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    old, new, adv = conv(old64), conv(new64), conv(adv64)
    methods = _methods(old, new, adv, delta, clip, band_fast)
    label = f"{backend}-{dev}" if backend == "torch" else backend
    # Overflow and 0/0 are intended in the baseline (p = 1, r = 0); silenced here only,
    # not for the caller's process.
    with np.errstate(all="ignore"):
        outs = {}
        for name, fn in methods.items():
            t0 = time.perf_counter()
            outs[name] = fn()  # warm-up; its result is the one checked
            sync()
            if name.startswith("compiled"):
                write(f"{name} first call ({label}, compiles the kernel; torch caches it on "
                      f"disk): {time.perf_counter() - t0:.2f} s")
        times = _interleaved(methods, sync, repeats, baseline_once=n >= 10_000_000)
        rows = []
        for name, fn in methods.items():
            out = outs[name]
            if name.endswith("_loss"):
                err = _loss_err(out, loss_truth["clip_loss" if name == "clip_loss"
                                                else "band_loss"])
            else:
                lo, up = out
                if backend != "numpy":
                    lo, up = lo.double().cpu().numpy(), up.double().cpu().numpy()
                err = _band_err(lo, up, truth)
            if backend == "numpy":
                peak = _peak_numpy(fn) / (n * np.dtype(np.float64).itemsize)
            elif torch_memory and dev == "cpu":
                peak = _peak_torch_rss(n, name, delta, dtype)
            else:
                peak = math.nan
            rows.append(dict(n=n, backend=label, method=name,
                             seconds=statistics.median(times[name]),
                             x_baseline=_median_ratio(times["baseline"], times[name]),
                             max_err=err, peak_arrays64=peak))
    loss_ratio = _median_ratio(times["band_loss"], times["clip_loss"])
    compiled_ratio = (_median_ratio(times["compiled_loss"], times["clip_loss"])
                      if "compiled_loss" in times else math.nan)
    for row in rows:
        row["loss_ratio"] = loss_ratio
        row["compiled_loss_ratio"] = compiled_ratio
    write(f"\nN={n:.0e}  {label}  ({dtype} in)")
    write(f"{'method':<13} {'median ms':>10} {'x baseline':>11} {'max err':>9} "
          f"{'peak (f64 arrays of N)':>23}")
    for row in rows:
        write(f"{row['method']:<13} {row['seconds'] * 1e3:>10.2f} {row['x_baseline']:>11.1f} "
              f"{row['max_err']:>9.1e} {row['peak_arrays64']:>23.2f}")
    write(f"band_loss / clip_loss = {loss_ratio:.2f} (median over rounds; range "
          f"{_ratio_range(times['band_loss'], times['clip_loss'])})")
    if "compiled_loss" in times:
        write(f"compiled_loss / clip_loss = {compiled_ratio:.2f} (median over rounds; range "
              f"{_ratio_range(times['compiled_loss'], times['clip_loss'])})")
    return rows


# --------------------------------------------------------------------------------------
# Command line (``benchmarks/bench_band.py``; ``bandtheory bench`` takes the same options)
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the benchmark's options on ``parser``."""
    parser.add_argument("--quick", action="store_true", help="N = 1e6 only")
    parser.add_argument("--n", type=int, action="append", metavar="N",
                        help="number of tokens (repeatable; overrides --quick)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds, every method once per round (medians)")
    parser.add_argument("--backend", choices=["numpy", "torch", "both"], default="both")
    parser.add_argument("--torch-memory", action="store_true",
                        help="also measure torch CPU's peak extra memory (a fresh process "
                        "per method and size; Linux)")


def run_from_args(args: argparse.Namespace, *, write: Callable[[str], None] = print
                  ) -> list[dict[str, Any]]:
    """:func:`run` with the options of :func:`add_arguments`."""
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.n is not None:
        if min(args.n) < 1:
            raise ValueError(f"--n must be >= 1, got {min(args.n)}")
        sizes = tuple(args.n)
    else:
        sizes = (1_000_000,) if args.quick else (1_000_000, 10_000_000)
    backends = ("numpy", "torch") if args.backend == "both" else (args.backend,)
    return run(sizes=sizes, backends=backends, repeats=args.repeats, write=write,
               torch_memory=args.torch_memory)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``benchmarks/bench_band.py``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="bench_band",
        description="Benchmark baseline bisection, exact and fast Band, clip and Band-KL "
        "losses on realistic tokens (numpy and torch; on torch also mode='compiled' and "
        "its Band-KL loss).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_from_args(args)
    except ValueError as exc:
        print(f"bench_band: error: {exc}", file=sys.stderr)
        return 2
    return 0
