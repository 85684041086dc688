"""Benchmark of the Band evaluators and losses; same code as ``bandtheory bench``.

Usage: ``python benchmarks/bench_band.py [--quick] [--repeats N] [--backend numpy|torch|both]``.
"""

import sys

from bandtheory.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
