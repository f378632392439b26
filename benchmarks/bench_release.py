"""Several plugins switched as one (issue 23 items 1 and 2, in one host).

``ROUNDS`` releases of three plugins, each staged for a time ``LEAD`` seconds
ahead (``reload_together(..., at=)``) while ``THREADS`` threads call the three
plugins: how late each switch ended after its time (the skew; the issue's
target is for 50 hosts on one clock, p99 <= 5 ms), and the longest a call
waited across a switch (the price of holding the routes)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from hotload import Host
from hotload._artifact.builder import compile_plugin

from common import limit_row, percentiles, scratch, text_row

ROUNDS = 20
LEAD = 0.3
THREADS = 3
NAMES = ("reward", "drops", "login")

SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "GEN.0");
HOTLOAD_API int32_t generation(void) { return GEN; }
HOTLOAD_EXPORT(generation, int32_t, (void));
"""


def _build(tmp: Path, name: str, gen: int) -> Path:
    src, lib = tmp / f"{name}{gen}.c", tmp / f"{name}{gen}.so"
    src.write_text(SRC.replace("NAME", name).replace("GEN", str(gen)))
    compile_plugin(src, lib)
    return lib


def run() -> dict[str, Any]:
    logging.getLogger("hotload").addHandler(logging.NullHandler())
    tmp = scratch()
    libs = {(n, g): _build(tmp, n, g) for n in NAMES for g in range(1, ROUNDS + 2)}
    skews: list[float] = []
    worst = [0.0]
    mixed = [0]
    stop = threading.Event()
    load = os.getloadavg()[0]
    with Host(tmp / "work", preflight=False) as host:
        plugins = [host.load(libs[(n, 1)]) for n in NAMES]

        def caller() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                seen = [p.generation() for p in plugins]
                worst[0] = max(worst[0], time.perf_counter() - t0)
                mixed[0] += any(a > b for a, b in zip(seen, seen[1:], strict=False))

        threads = [threading.Thread(target=caller) for _ in range(THREADS)]
        for t in threads:
            t.start()
        try:
            for gen in range(2, ROUNDS + 2):
                r = host.reload_together({n: libs[(n, gen)] for n in NAMES}, at=time.time() + LEAD)
                assert r.wait(10) == "done", r.reason
                assert r.skew_ms is not None
                skews.append(r.skew_ms)
        finally:
            stop.set()
            for t in threads:
                t.join()
    return {"load": load, "skews": skews, "worst_call_ms": worst[0] * 1e3, "mixed": mixed[0]}


def report(r: dict[str, Any]) -> list[str]:
    p50, p95, p99 = percentiles(r["skews"])
    return [
        f"several plugins as one (issue 23): {ROUNDS} releases of {len(NAMES)} plugins, each "
        f"staged {LEAD:g} s ahead, {THREADS} threads calling all three; load average "
        f"{r['load']:.1f} at the start",
        limit_row(
            "switch ended after its time, p99", p99, "ms", 5, op="<=", note=f"(p50 {p50:.2f} ms)"
        ),
        text_row("the longest call across the switches", f"{r['worst_call_ms']:.2f} ms"),
        limit_row("callers that read a newer plugin, then an older", r["mixed"], "", 0, op="<="),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
