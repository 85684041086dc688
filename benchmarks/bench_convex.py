"""Timings and accuracy of the convex projector (reported in benchmarks/README.md, never asserted).

Run: .venv/bin/python benchmarks/bench_convex.py [--quick]

1. K = 1000 (Dirichlet(1), seed 0; largest token), every DCP built-in: cold (build +
   compile + lower + upper) and warm (compiled program; one Band = a lower and an upper
   side, each solved, polished and refined unless saturated), median of repeats; "per
   solve" is the warm Band over the number of sides actually solved (a saturated side
   costs no solve).
2. DPP re-solve at K = 50 with a new delta and with a new pi_old (compiled once), per
   solved side.
3. Agreement with band_bounds, |a - b| / max(1, |b|), over p in [1e-4, 0.999] (and down
   to 1e-6) x delta in {0.01, 0.05, 0.2, 1} (K = 50, the rest Dirichlet); how many of
   the solves ended 'optimal_inaccurate' (a warning; the value is still compared).
4. `validate(name)` with defaults, wall time and verdict, every built-in.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np

from bandtheory import band_bounds, divergences
from bandtheory.convex import BandProblem, validate

NAMES = list(divergences.names()) + ["alpha(2)", "alpha(1/2)", "alpha(-1)"]


def _median_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _per_solve_ms(fn, repeat):
    """Median time of one Band divided by the sides it actually solved (not saturated)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        res = fn()
        elapsed = time.perf_counter() - t
        solved = sum(s != "saturated" for s in res.status_lower + res.status_upper)
        times.append(elapsed / max(1, solved))
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip validate")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    repeat = 3 if args.quick else 7
    print(f"load average at start: {os.getloadavg()}")
    pi1000 = np.random.default_rng(0).dirichlet(np.ones(1000))
    i1000 = int(np.argmax(pi1000))
    print(f"\n1. K=1000, token p={pi1000[i1000]:.4g} (min p in pi_old: {pi1000.min():.2g}), delta=0.05")
    print(f"{'divergence':<12} {'cold Band':>10} {'warm Band':>10} {'per solve':>10}  statuses")
    for name in NAMES:
        cold = _median_ms(lambda: BandProblem(1000, name).solve(pi1000, i1000, delta=0.05), 1)
        bp = BandProblem(1000, name)
        res = bp.solve(pi1000, i1000, delta=0.05)
        warm = _median_ms(lambda: bp.solve(pi1000, i1000, delta=0.05), repeat)
        solved = max(1, sum(s != "saturated" for s in res.status_lower + res.status_upper))
        print(f"{name:<12} {cold:>7.0f} ms {warm:>7.1f} ms {warm / solved:>7.1f} ms  "
              f"{res.status_lower + res.status_upper}")

    rng = np.random.default_rng(1)
    pi50 = rng.dirichlet(np.ones(50))
    others = [rng.dirichlet(np.ones(50)) for _ in range(5)]
    print("\n2. DPP re-solve at K=50 (one Band of token 0, per solved side), median")
    print(f"{'divergence':<12} {'new delta':>10} {'new pi_old':>11}")
    for name in NAMES:
        bp = BandProblem(50, name)
        bp.solve(pi50, 0, delta=0.05)
        deltas = iter(np.linspace(0.02, 0.9, 1000))
        pis = iter(others * 200)
        t_delta = _per_solve_ms(lambda: bp.solve(pi50, 0, delta=next(deltas)), repeat)
        t_pi = _per_solve_ms(lambda: bp.solve(next(pis), 0, delta=0.05), repeat)
        print(f"{name:<12} {t_delta:>7.2f} ms {t_pi:>8.2f} ms   (per solve)")

    print("\n3. Agreement with band_bounds, K=50: max |a-b|/max(1,|b|)")
    ps = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999]
    deltas = [0.01, 0.05, 0.2, 1.0]
    rest = np.random.default_rng(1).dirichlet(np.ones(49))
    print(f"{'divergence':<12} {'p>=1e-4':>9} {'p>=1e-6':>9}  inaccurate  worst (p, delta, side)")
    for name in NAMES:
        bp = BandProblem(50, name)
        worst = {1e-4: (0.0, None), 1e-6: (0.0, None)}
        inaccurate = 0
        for p in ps:
            pi = np.concatenate([[p], (1 - p) * rest])
            for d in deltas:
                res = bp.solve(pi, 0, delta=d)
                statuses = res.status_lower + res.status_upper
                inaccurate += sum(s == "optimal_inaccurate" for s in statuses)
                ref = band_bounds(np.log(p), name, delta=d)
                for side, a, b in (("lower", res.lower, ref.lower), ("upper", res.upper, ref.upper)):
                    rel = abs(float(a) - float(b)) / max(1.0, abs(float(b)))
                    for floor in worst:
                        if p >= floor and rel > worst[floor][0]:
                            worst[floor] = (rel, (p, d, side))
        total = 2 * len(ps) * len(deltas)
        print(f"{name:<12} {worst[1e-4][0]:>9.1e} {worst[1e-6][0]:>9.1e}  {inaccurate:>4d}/{total}"
              f"     {worst[1e-6][1]}")

    if not args.quick:
        print("\n4. validate(name) with defaults")
        for name in NAMES:
            t = time.perf_counter()
            report = validate(name)
            print(f"{name:<12} {time.perf_counter() - t:5.1f} s  {'PASS' if report.passed else 'FAIL'}")
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
