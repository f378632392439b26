#!/usr/bin/env python3
"""Run every benchmark and print one table: each figure beside the baseline
it is compared with, measured in the same process and run (``make bench``).
Ends with every target missed, so a miss is never buried in the table."""

from __future__ import annotations

import importlib
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

#: One module per figure group, in the order of issue 5.
MODULES = (
    "bench_calls",
    "bench_swap",
    "bench_storm",
    "bench_watch",
    "bench_scale",
    "bench_top",
    "bench_memory",
    "bench_fleet",
    "bench_fleet_judged",
    "bench_contract",
    "bench_isolate",
    "bench_metrics",
    "bench_spares",
    "bench_large",
    "bench_quarantine",
    "bench_canary",
    "bench_release",
    "bench_replay",
    "bench_state",
    "bench_fleet_release",
    "proof_go_unload",
)


def main() -> int:
    print(
        f"hotload benchmarks: Python {platform.python_version()}, {platform.machine()}, "
        f"{platform.platform(terse=True)}"
    )
    for name in MODULES:
        mod = importlib.import_module(name)
        print()
        print("\n".join(mod.report(mod.run())), flush=True)
    missed = [label for label, met in common.VERDICTS if not met]
    print()
    print(f"targets: {len(common.VERDICTS) - len(missed)} of {len(common.VERDICTS)} met")
    for label in missed:
        print(f"  MISSED: {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
