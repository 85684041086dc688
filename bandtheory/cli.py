"""The ``bandtheory`` command.

Each subcommand is one ``_add_<name>(subparsers)`` function below that registers its
parser and sets ``func``; imports of heavy layers happen inside the handlers so that
``bandtheory --help`` stays fast. Errors from bad input are printed as one line
(``bandtheory: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

__all__ = ["main"]


# --------------------------------------------------------------------------------------
# bounds
# --------------------------------------------------------------------------------------


def _add_bounds(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bounds",
        help="print the ratio bounds of clipping schemes and the Band at given p",
        description="Print a table of ratio bounds [lower, upper] at each old probability p "
        "for canonical clipping, Clip-Higher, DCPO and the Band.",
    )
    parser.add_argument("--divergence", default="kl", help="registry name (default: kl)")
    parser.add_argument("--delta", type=float, default=0.05, help="trust-region radius (default 0.05)")
    parser.add_argument("--p", type=float, nargs="+", default=[1e-4, 0.01, 0.08, 0.2, 0.5, 0.9, 0.99],
                        help="old-policy probabilities in (0, 1]")
    parser.add_argument("--eps", type=float, default=0.2, help="canonical clip epsilon")
    parser.add_argument("--eps-low", type=float, default=0.2, help="Clip-Higher / DCPO eps_low")
    parser.add_argument("--eps-high", type=float, default=0.28, help="Clip-Higher / DCPO eps_high")
    parser.set_defaults(func=_run_bounds)


def _run_bounds(args: argparse.Namespace) -> int:
    import math

    import numpy as np

    from . import schemes

    for p in args.p:
        if not (0.0 < p <= 1.0) or not math.isfinite(p):
            raise ValueError(f"--p values must lie in (0, 1], got {p}")
    log_p = np.log(np.asarray(args.p, dtype=np.float64))
    table = [
        ("clip", schemes.clip(eps=args.eps)),
        ("clip_higher", schemes.clip_higher(eps_low=args.eps_low, eps_high=args.eps_high)),
        ("dcpo", schemes.dcpo(eps_low=args.eps_low, eps_high=args.eps_high)),
        (f"band[{args.divergence}, delta={args.delta:g}]",
         schemes.band(divergence=args.divergence, delta=args.delta)),
    ]
    rows = [(name, scheme.bounds(log_p)) for name, scheme in table]
    width = max(len(name) for name, _ in rows)
    header = f"{'scheme':<{width}}  {'p':>10}  {'lower':>14}  {'upper':>14}"
    print(header)
    print("-" * len(header))
    for name, band in rows:
        for i, p in enumerate(args.p):
            print(f"{name:<{width}}  {p:>10.4g}  {float(band.lower[i]):>14.8g}  {float(band.upper[i]):>14.8g}")
    return 0


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------

_FIGURE_FORMATS = ("pdf", "png", "svg")


def _add_figures(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "figures",
        help="regenerate the paper's figures (deterministic PDF/PNG/SVG)",
        description="Render the paper's figures with one shared style and save them as "
        "DIR/NAME.FORMAT. PDF and SVG bytes are reproducible (no dates in the metadata). "
        "Figures: ratio_bounds, probability_variation, clipping_region, all_divergences, "
        "saturation, tail_gain, small_delta.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--format", default="pdf", metavar="FMT[,FMT...]",
                        help="comma-separated formats among pdf, png, svg (default: pdf)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="render only these figures")
    parser.add_argument("--delta", type=float, default=0.1,
                        help="Band radius of ratio_bounds, probability_variation, clipping_region (paper: 0.1)")
    parser.add_argument("--delta-all", type=float, default=0.05,
                        help="Band radius of all_divergences (default 0.05)")
    parser.add_argument("--eps-low", type=float, default=0.2, help="DAPO / DCPO eps_low (paper: 0.2)")
    parser.add_argument("--eps-high", type=float, default=0.28, help="DAPO / DCPO eps_high (paper: 0.28)")
    parser.add_argument("--small-delta-p", type=float, default=0.1,
                        help="old probability of the small_delta figure (default 0.1)")
    parser.add_argument("--dpi", type=int, default=300, help="resolution of PNG output (default 300)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=_run_figures)


def _progress(done: int, total: int, name: str, *, enabled: bool) -> None:
    if not enabled:
        return
    width = 24
    filled = int(round(width * done / total)) if total else width
    bar = "#" * filled + "-" * (width - filled)
    end = "\n" if done == total else ""
    sys.stderr.write(f"\rfigures [{bar}] {done}/{total} {name:<22}{end}")
    sys.stderr.flush()


def _run_figures(args: argparse.Namespace) -> int:
    import pathlib
    import time

    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in _FIGURE_FORMATS]
    if not formats or bad:
        raise ValueError(
            f"unknown figure format {', '.join(map(repr, bad)) or repr(args.format)}; "
            f"choose from {', '.join(_FIGURE_FORMATS)} (comma-separated)"
        )
    formats = list(dict.fromkeys(formats))
    if args.dpi <= 0:
        raise ValueError(f"--dpi must be a positive integer, got {args.dpi}")

    import matplotlib

    matplotlib.use("Agg")
    from .plotting import FIGURES
    from .plotting.figures import FIGURE_FUNCTIONS, freeze_layout
    from .plotting.style import mpl_style, save_metadata

    names = list(FIGURES) if not args.only else list(dict.fromkeys(args.only))
    unknown = [n for n in names if n not in FIGURE_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
    fig1 = dict(delta=args.delta, eps_low=args.eps_low, eps_high=args.eps_high)
    options = {
        "ratio_bounds": fig1,
        "probability_variation": fig1,
        "clipping_region": fig1,
        "all_divergences": dict(delta=args.delta_all, eps_low=args.eps_low, eps_high=args.eps_high),
        "saturation": {},
        "tail_gain": dict(eps_high=args.eps_high),
        "small_delta": dict(p=args.small_delta_p),
    }
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    show = not args.no_progress
    start = time.perf_counter()
    written = []
    for i, name in enumerate(names):
        _progress(i, len(names), name, enabled=show)
        fig = FIGURE_FUNCTIONS[name](**options[name])
        # Saving inside the style too: hash salt, font embedding and dpi are read at save time.
        with mpl_style():
            freeze_layout(fig)
            for fmt in formats:
                path = out / f"{name}.{fmt}"
                fig.savefig(path, format=fmt, dpi=args.dpi, metadata=save_metadata(fmt))
                written.append(path)
        del fig
    _progress(len(names), len(names), "done", enabled=show)
    for path in written:
        print(path)
    print(f"wrote {len(written)} files to {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------


def _add_validate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "validate",
        help="check a divergence: closed form, numeric Band and convex projector agree",
        description="Validate a divergence (registry name or expression in u): f(1) = 0, "
        "convexity, closed form, and agreement of band_bounds with the convex program over "
        "the whole simplex on a grid of p and delta and on random Dirichlet pi_old. "
        "Exit status 0 on PASS, 1 on FAIL.",
    )
    parser.add_argument("divergence", metavar="EXPRESSION_OR_NAME", help='e.g. kl or "(u - 1)**2 / u"')
    parser.add_argument("--delta", type=float, nargs="+", default=None, help="trust-region radii")
    parser.add_argument("--p", type=float, nargs="+", default=None, help="grid probabilities in (0, 1)")
    parser.add_argument("--k", type=int, nargs="+", default=None, help="random distribution sizes")
    parser.add_argument("--seeds", type=int, default=3, help="number of Dirichlet seeds (default 3)")
    parser.add_argument("--method", default="auto", choices=["auto", "dcp", "cutting_plane"])
    parser.add_argument("--solver", default=None, help="cvxpy solver name")
    parser.add_argument("--out", default=None, help="directory for validation.csv and validation.png")
    parser.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    import os
    import warnings

    from . import convex

    kwargs = {"method": args.method, "solver": args.solver, "seeds": tuple(range(args.seeds))}
    if args.delta is not None:
        kwargs["deltas"] = tuple(args.delta)
    if args.p is not None:
        kwargs["ps"] = tuple(args.p)
    if args.k is not None:
        kwargs["k"] = tuple(args.k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", convex.InaccurateSolutionWarning)
        report = convex.validate(args.divergence, **kwargs)
    print(report.format())
    inaccurate = [w for w in caught if issubclass(w.category, convex.InaccurateSolutionWarning)]
    if inaccurate:
        print(f"note: {len(inaccurate)} solves reported optimal_inaccurate (values kept and compared)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        csv = os.path.join(args.out, "validation.csv")
        png = os.path.join(args.out, "validation.png")
        report.comparisons.to_csv(csv, index=False)
        convex.validation_figure(report).savefig(png, dpi=120)
        print(f"wrote {csv} and {png}")
    return 0 if report.passed else 1


# --------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "simulate",
        help="the entropy-collapse lab: train a toy policy under several clipping schemes",
        description="Train a tabular softmax policy (Zipf-like initialisation) GRPO-style with "
        "each clipping scheme and several seeds; write the per-step table (CSV), the "
        "aggregated table and figures to --out, and print a summary with a verdict on "
        "whether Band beat canonical clipping in this run. Scheme specs: clip, clip_higher, "
        "dcpo, none, band_<divergence>, optionally with parameters, e.g. clip:eps=0.3, "
        "band_tv:delta=0.1.",
    )
    parser.add_argument("--env", default="bandit", choices=["bandit", "sequence"],
                        help="environment (default: bandit)")
    parser.add_argument("--schemes", nargs="+", default=None, metavar="SPEC",
                        help="schemes to compare (default: clip clip_higher dcpo band_kl "
                        "band_tv band_chi2 none)")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 150)")
    parser.add_argument("--vocab", "-K", type=int, default=None, dest="K",
                        help="vocabulary size K (default: 256 bandit, 128 sequence)")
    parser.add_argument("--group", type=int, default=None, help="completions per group G (default 16)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per group (default 4)")
    parser.add_argument("--minibatches", type=int, default=None, help="minibatches per epoch (default 4)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 0.05)")
    parser.add_argument("--entropy-coef", type=float, default=None, help="entropy bonus (default 0)")
    parser.add_argument("--kl-coef", type=float, default=None, help="KL penalty to the initial policy (default 0)")
    parser.add_argument("--sweep", choices=["delta", "eps_high"], default=None,
                        help="instead of a comparison: final entropy and reward against the "
                        "Band radius delta or the Clip-Higher eps_high")
    parser.add_argument("--values", type=float, nargs="+", default=None,
                        help="radii of the sweep (default: a log grid)")
    parser.add_argument("--divergence", default="kl", help="divergence of --sweep delta (default kl)")
    parser.add_argument("--format", default="png", help="figure formats, comma separated (png, pdf, svg)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    import dataclasses
    import math
    import os
    import time

    from . import simulate as lab

    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    for fmt in formats:
        if fmt not in ("png", "pdf", "svg"):
            raise ValueError(f"unknown figure format {fmt!r}; choose from png, pdf, svg")
    overrides = {k: getattr(args, k) for k in ("steps", "group", "epochs", "minibatches", "lr",
                                                "entropy_coef", "kl_coef")
                 if getattr(args, k) is not None}
    config = dataclasses.replace(lab.TrainConfig(), **overrides)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.sweep is None and (args.values is not None):
        raise ValueError("--values needs --sweep delta or --sweep eps_high")
    os.makedirs(args.out, exist_ok=True)
    show = not args.no_progress
    start = time.perf_counter()

    last_percent = [-1]

    def bar(done: int, total: int) -> None:
        if not show or total == 0:
            return
        percent = 100 * done // total
        if percent == last_percent[0]:
            return
        last_percent[0] = percent
        width = 30
        filled = int(width * done / total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} steps "
                         f"{time.perf_counter() - start:5.1f} s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting.lab import lab_curves, lab_sweep
    from .plotting.style import save_metadata

    written = []

    def save(fig, stem: str) -> None:
        for fmt in formats:
            path = os.path.join(args.out, f"{stem}.{fmt}")
            fig.savefig(path, format=fmt, metadata=save_metadata(fmt))
            written.append(path)
        plt.close(fig)

    if args.sweep is not None:
        table = lab.sweep(args.sweep, args.values, env=args.env, divergence=args.divergence,
                          seeds=args.seeds, config=config, K=args.K, progress=bar)
        stem = f"sweep_{args.sweep}_{args.env}"
        path = os.path.join(args.out, f"{stem}.csv")
        table.to_csv(path, index=False)
        written.append(path)
        save(lab_sweep(table, title=f"{args.env}: sweep of {args.sweep}"), stem)
        print(f"{'radius':>8}  {'final entropy [95% CI]':>26}  {'final reward [95% CI]':>26}  "
              f"{'steps to P(best)>=0.5':>22}")
        for _, r in table.iterrows():
            print(f"{r['value']:>8g}  {_ci(r, 'final_entropy'):>26}  {_ci(r, 'final_reward'):>26}  "
                  f"{_steps(r):>22}")
    else:
        table = lab.simulate(args.env, args.schemes, seeds=args.seeds, config=config, K=args.K,
                             progress=bar)
        stem = f"simulate_{args.env}"
        path = os.path.join(args.out, f"{stem}.csv")
        table.to_csv(path, index=False)
        written.append(path)
        agg = lab.aggregate(table)
        path = os.path.join(args.out, f"{stem}_aggregate.csv")
        agg.to_csv(path, index=False)
        written.append(path)
        summary = lab.summarize(table)
        path = os.path.join(args.out, f"{stem}_summary.csv")
        summary.to_csv(path, index=False)
        written.append(path)
        save(lab_curves(agg, title=f"{args.env}: {args.seeds} seeds, mean and 95% CI"), stem)
        width = max(len(s) for s in summary["label"])
        print(f"{'scheme':<{width}}  {'final entropy [95% CI]':>26}  {'mean entropy':>12}  "
              f"{'steps to P(best)>=0.5':>22}  {'final reward [95% CI]':>26}")
        for _, r in summary.iterrows():
            print(f"{r['label']:<{width}}  {_ci(r, 'final_entropy'):>26}  {r['mean_entropy']:>12.3f}  "
                  f"{_steps(r):>22}  {_ci(r, 'final_reward'):>26}")
        text = lab.verdict(table)
        print()
        print(text)
        path = os.path.join(args.out, f"{stem}_verdict.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        written.append(path)
    for path in written:
        print(path, file=sys.stderr)
    return 0


def _ci(row, name: str) -> str:
    return f"{row[name]:.3f} [{row[name + '_lo']:.3f}, {row[name + '_hi']:.3f}]"


def _steps(row) -> str:
    import math

    med = row["median_steps_to_half"]
    reached = f"({int(row['reached'])}/{int(row['seeds'])} seeds)"
    return (f"{med:g} {reached}" if not math.isnan(med) else f"never {reached}" if row["reached"] == 0
            else f"- {reached}")


# --------------------------------------------------------------------------------------
# derive
# --------------------------------------------------------------------------------------


def _add_derive(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "derive",
        help="derive the Band of a divergence symbolically (sympy)",
        description="Print g, the closed-form bounds (or why there are none), saturation "
        "conditions, the p -> 1 and p -> 0 limits and the small-delta series of a registry "
        "divergence or of a generator typed in u, e.g. '(u - 1)**2 / u'.",
    )
    parser.add_argument("divergence", metavar="NAME_OR_EXPRESSION",
                        help="registry name (kl, tv, alpha(1/2), ...) or a generator f(u)")
    parser.add_argument("--latex", action="store_true", help="print LaTeX instead of sympy text")
    parser.add_argument("--normalize", action="store_true",
                        help="for a typed f with f(1) != 0: use f(u) - f(1) - f'(1)(u - 1)")
    parser.add_argument("--timeout", type=float, default=6.0,
                        help="seconds for all sympy work (default 6)")
    parser.set_defaults(func=_run_derive)


def _run_derive(args: argparse.Namespace) -> int:
    from . import divergences, symbolic

    try:
        div = divergences.get(args.divergence)
    except ValueError as name_error:
        try:
            div = divergences.from_expression(args.divergence, normalize=args.normalize)
        except ValueError as expression_error:
            raise ValueError(
                f"{args.divergence!r} is neither a divergence name ({name_error}) nor a valid "
                f"generator ({expression_error})"
            ) from None
        if div.extra.get("normalization", "none") != "none":
            print(f"normalisation   {div.extra['normalization']}")
    print(symbolic.derive(div, timeout=args.timeout).report(latex=args.latex))
    return 0


# --------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------


def _add_bench(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="time the Band evaluators and surrogate losses against a bisection baseline",
        description="Benchmark baseline bisection, exact and fast Band, clip and Band-KL "
        "losses on N = 1e6 and 1e7 realistic tokens (numpy and torch; on torch also "
        "mode='compiled' and its Band-KL loss).",
    )
    from . import bench

    bench.add_arguments(parser)
    parser.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from . import bench

    bench.run_from_args(args)
    return 0


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_bounds,
    _add_figures,
    _add_validate,
    _add_simulate,
    _add_derive,
    _add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="bandtheory",
        description="Theory toolkit for BandPO's probability-aware clipping bounds.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        print(f"bandtheory: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
