"""Large bodies across the isolation boundary (issue 19 item 7), in one run:

- an isolated reload that hands over a 20 MiB state (``on_unload`` ->
  ``on_load`` in a new worker), beside one that hands over 8 bytes;
- an isolated call whose ``char *`` result is 60 MiB (under the 64 MiB body
  cap), beside the same call returning 1 byte.

Bodies used to be received with ``buf += chunk`` (quadratic; the issue measured a 60 MiB reply at
4.1 s and a 20 MiB state reload at 7.1 s); they are now received into a buffer allocated once.
The state and the text are built by the plugin; medians of a few runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from hotload import Host
from hotload._artifact.builder import compile_plugin

from common import row, scratch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_isolation_large import BIG  # noqa: E402  (the tests' plugin: one source of truth)

MIB = 1 << 20
RUNS = 5


def _build(tmp: Path, version: str) -> Path:
    src = tmp / f"big{version}.c"
    src.write_text(BIG.replace("VERSION", version))
    return compile_plugin(src, tmp / f"big{version}.so").output


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run() -> dict[str, float]:
    tmp = scratch()
    builds = [_build(tmp, "1"), _build(tmp, "2")]
    r: dict[str, float] = {"load": os.getloadavg()[0]}
    with Host(tmp / "work", preflight=False) as host:
        p = host.load(builds[0], isolate=True)
        p.bump(1000)
        k = 0
        for size, key in ((8, "reload 8 B"), (20 * MIB, "reload 20 MiB")):
            times = []
            for _ in range(RUNS):
                p.set_state_size(size)
                k += 1
                times.append(_timed(lambda b=builds[k % 2]: host.reload("bigstate", b)))
                assert p.received_size() == size and p.received_intact() == 1
            r[key] = statistics.median(times)
        for n, key in ((1, "reply 1 B"), (60 * MIB, "reply 60 MiB")):
            times = []
            for _ in range(RUNS):
                times.append(_timed(lambda n=n: p.text_of(n)))
            r[key] = statistics.median(times)
    return r


def report(r: dict[str, float]) -> list[str]:
    return [
        f"large bodies, isolated (issue 19 item 7); median of {RUNS}; load average "
        f"{r['load']:.1f} at the start",
        row("isolated reload, 8-byte state", r["reload 8 B"] * 1e3, "ms"),
        row("isolated reload, 20 MiB state (was 7.1 s)", r["reload 20 MiB"] * 1e3, "ms"),
        row("isolated call, 1-byte char * result", r["reply 1 B"] * 1e3, "ms"),
        row("isolated call, 60 MiB char * result (was 4.1 s)", r["reply 60 MiB"] * 1e3, "ms"),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
