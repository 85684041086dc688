"""Timings of the convex projector (reported in benchmarks/README.md, never asserted).

Run: .venv/bin/python benchmarks/bench_convex.py [--quick]

1. K = 1000, one Band (lower and upper of one token, i.e. two solves), every built-in:
   cold (build + compile + solve) and the upper solve alone on the compiled problem.
2. DPP re-solve at K = 50 with a new delta and with a new pi_old (compiled once).
3. Agreement with band_bounds over p in [1e-4, 0.999] x delta in [0.01, 1] (K = 50).
4. `validate("kl")` with defaults, wall time.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from bandtheory import band_bounds, divergences
from bandtheory.convex import BandProblem, ConvexSolveError, validate


def _time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    names = list(divergences.names()) + ["alpha(2)", "alpha(1/2)", "alpha(-1)"]
    rng = np.random.default_rng(0)
    pi1000 = rng.dirichlet(np.ones(1000))
    i1000 = int(np.argmax(pi1000))
    print("K=1000, token with p=%.4g" % pi1000[i1000])
    print(f"{'divergence':<12} {'cold build+2 solves':>20} {'one warm solve':>15}")
    for name in names:
        def cold():
            BandProblem(1000, name).solve(pi1000, i1000, delta=0.05)
        bp = BandProblem(1000, name)
        try:
            bp.solve(pi1000, i1000, delta=0.05)
        except ConvexSolveError as exc:
            print(f"{name:<12} {exc.status} ({exc.solver})")
            continue
        c = np.zeros(1000)
        c[i1000] = -1.0

        def warm():
            bp._c.value = c
            bp.problem.solve(solver=bp.solver)
        print(f"{name:<12} {_time(cold, 1 if args.quick else 2) * 1e3:>17.1f} ms "
              f"{_time(warm, 3) * 1e3:>12.1f} ms")

    pi50 = rng.dirichlet(np.ones(50))
    print("\nDPP re-solve at K=50 (one solve: the upper bound of one token)")
    print(f"{'divergence':<12} {'new delta':>10} {'new pi_old':>11}")
    others = [rng.dirichlet(np.ones(50)) for _ in range(5)]
    for name in names:
        bp = BandProblem(50, name)
        bp.solve(pi50, 0, delta=0.05)
        c = np.zeros(50)
        c[0] = -1.0
        bp._c.value = c
        deltas = iter(np.linspace(0.02, 0.9, 1000))

        def new_delta():
            bp._delta.value = next(deltas)
            bp.problem.solve(solver=bp.solver)
        pis = iter(others * 200)

        def new_pi():
            bp._pi_old.value = next(pis)
            bp.problem.solve(solver=bp.solver)
        print(f"{name:<12} {_time(new_delta, 5) * 1e3:>7.2f} ms {_time(new_pi, 5) * 1e3:>8.2f} ms")

    print("\nAgreement with band_bounds, K=50, p in [1e-4, 0.999], delta in [0.01, 1]")
    ps = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999])
    deltas = [0.01, 0.05, 0.2, 1.0]
    rest = np.random.default_rng(1).dirichlet(np.ones(49))
    print(f"{'divergence':<12} {'max |d|/max(1,b)':>17} {'max |d|*p (mass)':>17}")
    for name in names:
        bp = BandProblem(50, name)
        worst_rel = worst_mass = 0.0
        for p in ps:
            pi = np.concatenate([[p], (1 - p) * rest])
            for d in deltas:
                res = bp.solve(pi, 0, delta=d)
                ref = band_bounds(np.log(p), name, delta=d)
                for a, b in ((res.lower, ref.lower), (res.upper, ref.upper)):
                    diff = abs(float(a) - float(b))
                    worst_rel = max(worst_rel, diff / max(1.0, abs(float(b))))
                    worst_mass = max(worst_mass, diff * p)
        print(f"{name:<12} {worst_rel:>17.2e} {worst_mass:>17.2e}")

    t = time.perf_counter()
    report = validate("kl")
    print(f"\nvalidate('kl') with defaults: {time.perf_counter() - t:.1f} s, "
          f"{'PASS' if report.passed else 'FAIL'}")


if __name__ == "__main__":
    main()
