"""Benchmark of the Band evaluators and losses (the code of ``bandtheory bench``).

Usage: ``python benchmarks/bench_band.py [--quick] [--n N ...] [--repeats R]
[--backend numpy|torch|both]``.
"""

import sys

from bandtheory.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
