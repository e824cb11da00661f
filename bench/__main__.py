"""Run every benchmark, or those named: ``python -m bench [name ...] [-- options]``.

To add one, write ``bench/<name>.py`` with a ``main(argv: list[str]) -> int`` and list it in
BENCHMARKS. Options after ``--`` are passed to each benchmark.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["records", "http", "load", "sync", "freshness", "audit"]


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    names, options = argv[:split], argv[split + 1:]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; available: {', '.join(BENCHMARKS)}")
        return 2
    status = 0
    for name in names or BENCHMARKS:
        print(f"== bench.{name}")
        status |= importlib.import_module(f"bench.{name}").main(options)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
