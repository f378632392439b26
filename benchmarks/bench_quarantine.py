"""One bad input in an isolated plugin (issue 22 item 4): the issue's case.

Four calling threads for ``SECONDS`` each; one of them sends the bad player
id (it crashes the worker with SIGSEGV) once in ``EVERY`` calls, the rest
are good ids.  The same run with the default ``Isolated()`` (an input that
crashed twice is quarantined) and with ``Isolated(quarantine=0)`` (every
crash counts, as before: the crash loop stops the plugin for everyone).
Prints served and failed calls of each, and the worker's crashes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from hotload import Host, Isolated, PluginCrashedError
from hotload._artifact.builder import compile_plugin

from common import scratch, text_row

SECONDS = 5.0
EVERY = 2_000
THREADS = 4
BAD = 1337

SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("drops", "1.0.0");
HOTLOAD_API int64_t drop_rate(int64_t player)
{
    if (player == 1337) { volatile int *p = 0; *p = 1; }
    return player % 100;
}
HOTLOAD_EXPORT(drop_rate, int64_t, (int64_t));
"""


def _one(tmp: Path, lib: Path, opts: Isolated) -> dict[str, float]:
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    with Host(tmp / f"w-{opts.quarantine}", preflight=False) as host:
        p = host.load(lib, isolate=opts)
        stop = time.monotonic() + SECONDS

        def player(k: int) -> None:
            ok = failed = 0
            i = 0
            while time.monotonic() < stop:
                i += 1
                who = BAD if k == 0 and i % EVERY == 0 else 10_000 * (k + 1) + i
                try:
                    p.drop_rate(who)
                    ok += 1
                except PluginCrashedError:
                    failed += 1
            with lock:
                counts["ok"] += ok
                counts["failed"] += failed

        threads = [threading.Thread(target=player, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        info = host.current("drops")
        assert info is not None
        crashes = host.metrics()["plugins"]["drops"]["versions"][-1]["errors"]["crash"]
        return {**counts, "crashes": crashes, "worker": info.worker}  # type: ignore[dict-item]


def run() -> dict[str, object]:
    # each crash and restart is logged (stderr, Python's last-resort handler): not here
    logging.getLogger("hotload").addHandler(logging.NullHandler())
    tmp = scratch()
    lib = tmp / "drops.so"
    src = tmp / "drops.c"
    src.write_text(SRC)
    compile_plugin(src, lib)
    return {
        "load": os.getloadavg()[0],
        "on": _one(tmp, lib, Isolated()),
        "off": _one(tmp, lib, Isolated(quarantine=0)),
    }


def report(r: dict[str, object]) -> list[str]:
    lines = [
        f"one bad input (issue 22 item 4): {THREADS} threads for {SECONDS:g} s, player {BAD} "
        f"(crashes the worker) once in {EVERY:,} calls on one thread; load average "
        f"{r['load']:.1f} at the start"
    ]
    for key, label in (("on", "Isolated() (quarantine=2)"), ("off", "Isolated(quarantine=0)")):
        f = r[key]
        assert isinstance(f, dict)
        lines.append(
            text_row(
                label,
                f"{f['ok']:,} served, {f['failed']:,} failed, {f['crashes']} crashes, "
                f"worker {f['worker']} at the end",
            )
        )
    return lines


if __name__ == "__main__":
    print("\n".join(report(run())))
