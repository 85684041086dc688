"""Timings and accuracy of the convex projector (reported in benchmarks/README.md, never asserted).

Run: .venv/bin/python benchmarks/bench_convex.py [--quick] [--sections 1,1b,2,3,4]
     [--names kl,js] [--tol 1e-9]

``--tol`` overrides the projector's Clarabel tolerances (gap and feasibility) through
``BandProblem(solver_options=...)``, e.g. to compare with the former 1e-9 back to back.

1. K = 1000 (Dirichlet(1), seed 0; largest token), every DCP built-in: cold (build +
   compile + lower + upper) and warm (compiled program; one Band = a lower and an upper
   side, each solved, polished and refined unless saturated), median of repeats; "per
   solve" is the warm Band over the number of sides actually solved (a saturated side
   costs no solve).
1b. K = 1000 with rare tokens: 3 Dirichlet(1) draws (seeds [s, 1000], s = 0, 1, 2) x 4
   tokens (largest, median, smallest with p >= 1e-4, rarest, p ~ 1e-6) x delta in
   {0.01, 0.05, 0.2, 1}, warm, best of `repeat // 3 + 1` runs per Band: time and
   Clarabel iterations (every attempt, retries included) per solved side, median and
   worst, the Clarabel solves of the slowest Band (both sides), and the largest disagreement with band_bounds
   in units of the validator's tolerance max(1e-6 |b|, 1e-12) (a FAIL is above 1).
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
from bandtheory.convex import CONVEX_RTOL, RATIO_ATOL, BandProblem, ConvexSolveError, validate

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


class _ClarabelLog:
    """Clarabel's status and iteration count of every solve (retries included).

    Wraps cvxpy's Clarabel interface for the benchmark only: a retried side's cost is
    the sum of its attempts, which ``problem.solver_stats`` (the last attempt) hides.
    """

    def __init__(self):
        from cvxpy.reductions.solvers.conic_solvers import clarabel_conif

        self.entries = []
        cls = clarabel_conif.CLARABEL
        original = cls.solve_via_data

        def solve_via_data(solver, *args, **kwargs):
            result = original(solver, *args, **kwargs)
            self.entries.append((str(result.status), int(result.iterations)))
            return result

        cls.solve_via_data = solve_via_data


def _rare_token_grid(k=1000):
    for seed in (0, 1, 2):
        pi = np.random.default_rng([seed, k]).dirichlet(np.ones(k))
        order = np.argsort(pi)
        eligible = order[pi[order] >= 1e-4]
        yield seed, pi, [int(order[-1]), int(order[k // 2]), int(eligible[0]), int(order[0])]


def _section_rare(names, options, repeat, log):
    deltas = (0.01, 0.05, 0.2, 1.0)
    runs = repeat // 3 + 1
    print(f"\n1b. K=1000, rare tokens: 3 draws x 4 tokens x delta in {deltas}, per solved side "
          f"(best of {runs})")
    print(f"{'divergence':<12} {'median':>8} {'worst':>8} {'iters med':>9} {'worst':>6}  "
          f"{'err/tol':>8}  slowest (p, delta, its Band's Clarabel solves)   failed Bands")
    for name in names:
        bp = BandProblem(1000, name, solver_options=options)
        grid = list(_rare_token_grid())
        bp.solve(grid[0][1], grid[0][2][1], delta=0.05)  # compile
        sides, failed, worst_err = [], [], 0.0
        for seed, pi, idx in grid:
            for delta in deltas:
                ref = band_bounds(np.log(pi[idx]), name, delta=delta)
                for j, i in enumerate(idx):
                    best = None
                    for _ in range(runs):
                        log.entries.clear()
                        t = time.perf_counter()
                        try:
                            res = bp.solve(pi, i, delta=delta)
                        except ConvexSolveError as exc:
                            res = exc
                        elapsed = time.perf_counter() - t
                        if best is None or elapsed < best[0]:
                            best = (elapsed, res, list(log.entries))
                    elapsed, res, entries = best
                    if isinstance(res, ConvexSolveError):
                        failed.append(f"p={pi[i]:.2g} delta={delta:g} ({res.status})")
                        continue
                    for value, b in ((res.lower, ref.lower[j]), (res.upper, ref.upper[j])):
                        tol = max(CONVEX_RTOL * abs(float(b)), RATIO_ATOL)
                        worst_err = max(worst_err, abs(float(value) - float(b)) / tol)
                    solved = sum(s != "saturated" for s in res.status_lower + res.status_upper)
                    if solved:
                        sides.append((1e3 * elapsed / solved, sum(n for _, n in entries) / solved,
                                      pi[i], delta, [f"{st}:{n}" for st, n in entries]))
        ms = [x[0] for x in sides]
        its = [x[1] for x in sides]
        worst = max(sides, key=lambda x: x[0])
        print(f"{name:<12} {statistics.median(ms):5.1f} ms {worst[0]:5.0f} ms {statistics.median(its):9.1f} "
              f"{max(its):6.1f}  {worst_err:8.1e}  p={worst[2]:.2g}, {worst[3]:g}, {worst[4]}   "
              f"{len(failed)}{': ' + failed[0] if failed else ''}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip validate")
    parser.add_argument("--sections", default="1,1b,2,3,4", help="comma-separated sections")
    parser.add_argument("--names", default=",".join(NAMES), help="comma-separated divergences")
    parser.add_argument("--tol", type=float, default=None,
                        help="Clarabel tolerances (gap and feasibility); default: the projector's")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    repeat = 3 if args.quick else 7
    sections = set(args.sections.split(","))
    names = args.names.split(",")
    options = None if args.tol is None else {"tol_gap_abs": args.tol, "tol_gap_rel": args.tol,
                                             "tol_feas": args.tol}
    log = _ClarabelLog()
    print(f"load average at start: {os.getloadavg()}; Clarabel tolerances: "
          f"{'defaults' if options is None else args.tol}")
    pi1000 = np.random.default_rng(0).dirichlet(np.ones(1000))
    i1000 = int(np.argmax(pi1000))
    if "1" in sections:
        print(f"\n1. K=1000, token p={pi1000[i1000]:.4g} (min p in pi_old: {pi1000.min():.2g}), "
              "delta=0.05")
        print(f"{'divergence':<12} {'cold Band':>10} {'warm Band':>10} {'per solve':>10}  "
              "Clarabel iterations, statuses")
    for name in names if "1" in sections else ():
        try:
            cold = _median_ms(lambda: BandProblem(1000, name, solver_options=options).solve(
                pi1000, i1000, delta=0.05), 1)
        except ConvexSolveError as exc:
            print(f"{name:<12} failed: {exc}")
            continue
        bp = BandProblem(1000, name, solver_options=options)
        log.entries.clear()
        res = bp.solve(pi1000, i1000, delta=0.05)
        iterations = [f"{st}:{n}" for st, n in log.entries]
        warm = _median_ms(lambda: bp.solve(pi1000, i1000, delta=0.05), repeat)
        solved = max(1, sum(s != "saturated" for s in res.status_lower + res.status_upper))
        print(f"{name:<12} {cold:>7.0f} ms {warm:>7.1f} ms {warm / solved:>7.1f} ms  "
              f"{iterations} {res.status_lower + res.status_upper}")
    if "1b" in sections:
        _section_rare(names, options, repeat, log)
    if not sections & {"2", "3", "4"}:
        print(f"\nload average at end: {os.getloadavg()}")
        return

    rng = np.random.default_rng(1)
    pi50 = rng.dirichlet(np.ones(50))
    others = [rng.dirichlet(np.ones(50)) for _ in range(5)]
    if "2" in sections:
        print("\n2. DPP re-solve at K=50 (one Band of token 0, per solved side), median")
        print(f"{'divergence':<12} {'new delta':>10} {'new pi_old':>11}")
    for name in names if "2" in sections else ():
        bp = BandProblem(50, name, solver_options=options)
        bp.solve(pi50, 0, delta=0.05)
        deltas = iter(np.linspace(0.02, 0.9, 1000))
        pis = iter(others * 200)
        t_delta = _per_solve_ms(lambda: bp.solve(pi50, 0, delta=next(deltas)), repeat)
        t_pi = _per_solve_ms(lambda: bp.solve(next(pis), 0, delta=0.05), repeat)
        print(f"{name:<12} {t_delta:>7.2f} ms {t_pi:>8.2f} ms   (per solve)")

    if "3" in sections:
        print("\n3. Agreement with band_bounds, K=50: max |a-b|/max(1,|b|)")
    ps = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999]
    deltas = [0.01, 0.05, 0.2, 1.0]
    rest = np.random.default_rng(1).dirichlet(np.ones(49))
    if "3" in sections:
        print(f"{'divergence':<12} {'p>=1e-4':>9} {'p>=1e-6':>9}  inaccurate  worst (p, delta, side)")
    for name in names if "3" in sections else ():
        bp = BandProblem(50, name, solver_options=options)
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

    if not args.quick and "4" in sections:
        print("\n4. validate(name) with defaults (projector defaults, whatever --tol says)")
        for name in names:
            t = time.perf_counter()
            report = validate(name)
            print(f"{name:<12} {time.perf_counter() - t:5.1f} s  {'PASS' if report.passed else 'FAIL'}")
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
