"""Spare workers (issue 24 item 4): what the pool of started, idle workers
buys and costs.

- first restart after load: a fresh host loads a plugin isolated, and its
  first call crashes it at once; the time from that crash to the next call
  served (the restarted worker): target <= 10 ms p50.  The spare is started
  with the load, side by side with the load's own worker;
- back-to-back isolated reloads of a C plugin and of a Go plugin
  (``Isolated(spares=2)``), no pause between them but the old version's
  drain (``settle``): target <= 20 ms p50, and the same within a burst no
  longer than the pool (each reload finds a spare that said hello);
- a worker's start to its hello, forked by the zygote against a fresh
  interpreter (``HOTLOAD_ZYGOTE=0``), sandboxed and not;
- what ``Isolated(zygote=False)`` (fresh workers, no layout shared with
  other plugins') costs a plugin: its first restart and its back-to-back
  reloads;
- the cost: RSS and PSS of one idle spare (every process of its tree: a
  sandboxed spare is a guard, a namespace init and the worker), and of the
  idle zygote.

Run on a shared machine: the figures follow its load (printed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from hotload import Host, Isolated, PluginCrashedError
from hotload._artifact.builder import compile_plugin
from hotload._platform import proc
from hotload._process.pool import Spawner

from common import limit_row, now, percentiles, row, scratch, text_row

FRESH_HOSTS = 4
RELOADS = 20
POOL = 2
SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("spared", "1");
HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
HOTLOAD_API int32_t boom(void) { volatile int *p = 0; *p = 1; return 0; }
HOTLOAD_EXPORT(boom, int32_t, (void));
"""


def _build(tmp: Path, name: str, source: str) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / f"{name}.so"
    compile_plugin(src, out, extra_cflags=["-O2"])
    return out


def _first_restart(
    lib: Path, tmp: Path, *, settled: bool = False, zygote: bool = True
) -> list[float]:
    """Crash to serving again, in fresh hosts: at once after the load, or
    (``settled``) with the spare ready and the host idle for 0.5 s first:
    the cost of a restart itself (reaping the dead worker's tree, opening
    the version in the spare), for comparison."""
    out = []
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(FRESH_HOSTS):
        with Host(tmp / f"fresh{i}", preflight=False) as h:
            p = h.load(lib, isolate=Isolated(zygote=zygote))
            if settled:
                iso = h._swap._isolation  # noqa: SLF001 - waits for the spare
                assert iso is not None
                iso.warm(60.0, zygote=zygote)
                time.sleep(0.5)
            t0 = now()
            with contextlib.suppress(PluginCrashedError):
                p.boom()
            p.add(1, 1)  # waits for the restarted worker
            out.append((now() - t0) * 1e3)
    return out


def _back_to_back(
    lib: Path, tmp: Path, name: str, export: str, zygote: bool = True
) -> tuple[list[float], list[float]]:
    """Reload times back to back, and reload times in bursts of ``POOL``
    (the pool ready before each burst)."""
    with Host(tmp, preflight=False) as h:
        p = h.load(lib, isolate=Isolated(spares=POOL, zygote=zygote))
        iso = h._swap._isolation  # noqa: SLF001 - waits for the pool before the bursts
        assert iso is not None
        iso.warm(60.0, zygote=zygote)
        straight = []
        for i in range(RELOADS):
            t0 = now()
            h.reload(name)
            straight.append((now() - t0) * 1e3)
            if getattr(p, export)(i, 1) != i + 1:
                raise AssertionError(f"{name} answered wrong after a reload")
            h.settle(10.0)
        burst = []
        for _ in range(RELOADS // POOL):
            iso.warm(60.0, zygote=zygote)
            for _ in range(POOL):
                t0 = now()
                h.reload(name)
                burst.append((now() - t0) * 1e3)
                h.settle(10.0)
    return straight, burst


def _spare_cost(lib: Path, tmp: Path) -> tuple[float, float]:
    """RSS and PSS (kB) of one idle, ready spare's process tree."""
    with Host(tmp, preflight=False) as h:
        h.load(lib, isolate=True)
        iso = h._swap._isolation  # noqa: SLF001 - reads the spare's pids
        assert iso is not None
        iso.warm(60.0)
        (spare,) = iso.spares()
        return _rollup([spare.popen.pid, *proc.descendants(spare.popen.pid)])


def _starts(sandbox: bool, zygote: bool, n: int = 8) -> list[float]:
    """Worker start to hello (ms), ``n`` in a row: forked by the zygote
    (booted before the first), or each a fresh interpreter."""
    sp = Spawner("isolated", shm=True, services=True, sandbox=sandbox, size=1, zygote=zygote)
    out = []
    try:
        sp.start().kill()  # the zygote's boot is not a start
        for _ in range(n):
            t0 = now()
            w = sp.start()
            w.greet()
            out.append((now() - t0) * 1e3)
            w.kill()
    finally:
        sp.close()
    return out


def _zygote_cost() -> tuple[float, float]:
    """RSS and PSS (kB) of an idle zygote (the sandboxed kind's)."""
    sp = Spawner("isolated", shm=True, services=True, sandbox=True, size=1, zygote=True)
    try:
        sp.start().kill()
        assert sp.zygote is not None
        return _rollup([sp.zygote.pid])
    finally:
        sp.close()


def _rollup(pids: list[int]) -> tuple[float, float]:
    rss = pss = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key == "Rss":
                    rss += int(rest.split()[0])
                elif key == "Pss":
                    pss += int(rest.split()[0])
    return rss, pss


def run() -> dict[str, float]:
    tmp = scratch()
    r: dict[str, float] = {"load before": os.getloadavg()[0]}
    lib = _build(tmp, "spared", SRC)
    first: list[float] = []
    settled: list[float] = []
    alone: list[float] = []
    for k in range(2):  # alternating, so a busy moment of the machine hits both
        first += _first_restart(lib, tmp / f"a{k}")
        settled += _first_restart(lib, tmp / f"b{k}", settled=True)
        alone += _first_restart(lib, tmp / f"f{k}", zygote=False)
    r["fresh first p50"], _, _ = percentiles(alone)
    r["first p50"], _, r["first max"] = percentiles(first)
    r["settled p50"], _, _ = percentiles(settled)
    straight, burst = _back_to_back(lib, tmp / "c", "spared", "add")
    r["c p50"], _, r["c p99"] = percentiles(straight)
    r["c burst p50"], _, _ = percentiles(burst)
    straight, _ = _back_to_back(lib, tmp / "cf", "spared", "add", zygote=False)
    r["c fresh p50"], _, _ = percentiles(straight)
    if shutil.which("go"):
        from proof_go_unload import build_go

        go = build_go(tmp)
        straight, burst = _back_to_back(go, tmp / "go", "gox", "Add")
        r["go p50"], _, r["go p99"] = percentiles(straight)
        r["go burst p50"], _, _ = percentiles(burst)
    else:
        r["no go"] = 1.0
    r["rss"], r["pss"] = _spare_cost(lib, tmp / "cost")
    r["z rss"], r["z pss"] = _zygote_cost()
    for sandbox in (True, False):
        kind = "sandboxed" if sandbox else "plain"
        r[f"start {kind} zygote"], _, _ = percentiles(_starts(sandbox, True))
        r[f"start {kind} fresh"], _, _ = percentiles(_starts(sandbox, False, 4))
    r["load after"] = os.getloadavg()[0]
    return r


def report(r: dict[str, float]) -> list[str]:
    out = [
        f"isolated plugins: spare workers (issue 24 item 4), pool of {POOL} for the reloads",
        limit_row("first restart after load (crash at once) p50", r["first p50"], "ms", 10.0, "<="),
        row(
            "first restart after load p50 vs spare settled",
            r["first p50"],
            "ms",
            r["settled p50"],
            "vs settled",
        ),
        row("crash to serving, spare ready, host idle (same run)", r["settled p50"], "ms"),
        row("first restart after load, slowest", r["first max"], "ms"),
        limit_row("back-to-back isolated reloads, C p50", r["c p50"], "ms", 20.0, "<="),
        row("back-to-back isolated reloads, C p99", r["c p99"], "ms"),
        row(f"isolated reloads, C, bursts of {POOL} (pool ready) p50", r["c burst p50"], "ms"),
        row("first restart after load, zygote=False p50", r["fresh first p50"], "ms"),
        row("back-to-back reloads, C, zygote=False p50", r["c fresh p50"], "ms"),
    ]
    if "no go" in r:
        out.append(text_row("back-to-back isolated reloads, Go", "no Go toolchain here"))
    else:
        out += [
            limit_row("back-to-back isolated reloads, Go p50", r["go p50"], "ms", 20.0, "<="),
            row("back-to-back isolated reloads, Go p99", r["go p99"], "ms"),
            row(
                f"isolated reloads, Go, bursts of {POOL} (pool ready) p50",
                r["go burst p50"],
                "ms",
            ),
        ]
    for kind in ("sandboxed", "plain"):
        zyg, fresh = r[f"start {kind} zygote"], r[f"start {kind} fresh"]
        label = f"a worker's start to hello, {kind}, zygote p50"
        out.append(row(label, zyg, "ms", fresh, "vs fresh"))
        out.append(row(f"a worker's start to hello, {kind}, fresh p50", fresh, "ms"))
    out += [
        row("one idle spare (sandboxed): RSS of its processes", r["rss"] / 1024, "MB"),
        row("one idle spare (sandboxed): PSS of its processes", r["pss"] / 1024, "MB"),
        row("the idle zygote (one per kind): RSS", r["z rss"] / 1024, "MB"),
        row("the idle zygote (one per kind): PSS", r["z pss"] / 1024, "MB"),
        text_row(
            "machine load (1-min average, before / after)",
            f"{r['load before']:.1f} / {r['load after']:.1f} on {os.cpu_count()} cores",
        ),
    ]
    return out


if __name__ == "__main__":
    print("\n".join(report(run())))
