#!/usr/bin/env python
"""Run every ``benchmarks/bench_*.py`` with its default arguments, one after the other.

Extra arguments are passed to every script (e.g. ``--device cpu``). Exits nonzero if any failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if not scripts:
        print(f"run_all: no bench_*.py in {HERE}", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *argv])
        print(f"=== {script.name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(f"{script.name} (exit {rc})")
    if failed:
        print("run_all: FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    print(f"\nrun_all: {len(scripts)} benchmark(s) passed; results in {HERE / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
