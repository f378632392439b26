#!/usr/bin/env python3
"""Run every benchmark and print one table: each figure beside the baseline
it is compared with, measured in the same process and run (``make bench``)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_calls  # noqa: E402
import bench_swap  # noqa: E402


def main() -> int:
    print(f"hotload benchmarks: Python {platform.python_version()}, {platform.machine()}, "
          f"{platform.platform(terse=True)}")
    for mod in (bench_calls, bench_swap):
        print()
        print("\n".join(mod.report(mod.run())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
