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
# Entry point
# --------------------------------------------------------------------------------------

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_bounds,
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
