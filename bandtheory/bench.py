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
5. ``band_loss``: the same with ``band("kl", mode="fast")`` (bounds computed inside).

The losses are timed in the configuration a trainer's hot loop uses: float32 inputs,
no response mask (a packed batch), ``agg="token-mean"``, ``check_input=False`` (the
NaN / sign validation reads every value on the host; it is a debugging aid).

Peak extra memory: ``tracemalloc`` for NumPy (it tracks NumPy's buffers); for torch CPU
it is not measured (torch allocations are invisible to tracemalloc) and is reported as
``nan``.
"""

from __future__ import annotations

import math
import statistics
import time
import tracemalloc
from typing import Any, Callable

import numpy as np

from . import schemes
from .bounds import band_bounds
from .fast import band_table
from .losses import policy_loss

__all__ = ["make_tokens", "baseline_kl_band", "run"]


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


def _time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_numpy(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return float(peak)


def _max_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1.0)
    rel = np.where(np.isfinite(b) | np.isfinite(a), rel, 0.0)
    return float(np.nanmax(rel))


def run(*, sizes=(1_000_000, 10_000_000), backends=("numpy", "torch"), repeats: int = 5,
        delta: float = 0.05, dtype: str = "float32", write: Callable[[str], None] = print
        ) -> list[dict[str, Any]]:
    """Run the benchmark, print a table with ``write`` and return the rows."""
    t0 = time.perf_counter()
    band_table("kl", delta=delta)
    build = time.perf_counter() - t0
    write(f"fast table build (kl, delta={delta:g}): {build * 1e3:.0f} ms (cached afterwards)")
    band_fast = schemes.band("kl", delta=delta, mode="fast")
    clip = schemes.clip(eps=0.2)
    rows = []
    for n in sizes:
        old64, new64, adv64 = make_tokens(n)
        # The truth is the exact Band of the tokens as the methods see them (rounded to dtype).
        truth = band_bounds(old64.astype(dtype).astype(np.float64), "kl", delta=delta,
                            check_input=False)
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
                if backend == "numpy":
                    conv = lambda a: a.astype(dtype)  # noqa: E731
                    sync = lambda: None  # noqa: E731
                else:
                    conv = lambda a: torch.as_tensor(a, dtype=getattr(torch, dtype), device=dev)  # noqa: E731
                    sync = (torch.cuda.synchronize if dev == "cuda" else (lambda: None))
                old, new, adv = conv(old64), conv(new64), conv(adv64)
                methods = {
                    "baseline": lambda: baseline_kl_band(old, delta=delta),
                    "exact": lambda: band_bounds(old, "kl", delta=delta, check_input=False),
                    "fast": lambda: band_bounds(old, "kl", delta=delta, check_input=False, mode="fast"),
                    "clip_loss": lambda: policy_loss(new, old, adv, scheme=clip, check_input=False),
                    "band_loss": lambda: policy_loss(new, old, adv, scheme=band_fast, check_input=False),
                }
                times = {}
                for name, fn in methods.items():
                    np.seterr(all="ignore")
                    reps = 1 if (name == "baseline" and n >= 10_000_000) else repeats
                    fn()
                    sync()

                    def timed(fn=fn):
                        fn()
                        sync()

                    times[name] = _time(timed, reps)
                    out = fn() if name in ("baseline", "exact", "fast") else None
                    err = math.nan
                    if out is not None:
                        lo, up = out
                        lo = lo if backend == "numpy" else lo.float().cpu().numpy()
                        up = up if backend == "numpy" else up.float().cpu().numpy()
                        err = max(_max_err(lo, truth.lower), _rel_err(up, truth.upper))
                    peak = _peak_numpy(fn) / (n * np.dtype(np.float64).itemsize) \
                        if backend == "numpy" else math.nan
                    row = dict(n=n, backend=f"{backend}-{dev}" if backend == "torch" else backend,
                               method=name, seconds=times[name], max_err=err, peak_arrays64=peak)
                    rows.append(row)
                base = times["baseline"]
                write(f"\nN={n:.0e}  {rows[-1]['backend']}  ({dtype} in)")
                write(f"{'method':<10} {'median ms':>10} {'x baseline':>11} {'max err':>9} {'peak (f64 arrays of N)':>23}")
                for row in rows[-len(methods):]:
                    write(f"{row['method']:<10} {row['seconds'] * 1e3:>10.2f} {base / row['seconds']:>11.1f} "
                          f"{row['max_err']:>9.1e} {row['peak_arrays64']:>23.2f}")
                write(f"band_loss / clip_loss = {times['band_loss'] / times['clip_loss']:.2f}")
    return rows


def _rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    finite = np.isfinite(b)
    with np.errstate(all="ignore"):
        rel = np.abs(a[finite] - b[finite]) / np.abs(b[finite])
    return float(rel.max()) if rel.size else 0.0
