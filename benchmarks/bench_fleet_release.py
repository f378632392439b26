"""A fleet release (issue 23 item 2): two plugins switched at one instant on
as many local host *processes* as the machine allows (the issue asks 50).

Each host is its own Python process: a ``Host`` serving ``reward`` and
``drops`` (a player thread calls both ``RATE`` times a second) and its fleet
agent (default 2.5 s heartbeat).  ``ROUNDS`` releases of a new generation of
both plugins, each ``LEAD`` seconds ahead (``Fleet.release``): every host
stages both builds, then switches on its own timer.  All hosts share this
machine's clock, so the figure is each host's own scheduling: its switch
instant (``time.time_ns()`` right after the flip, from its report) minus the
release's time, over every host and round; the spread is the latest minus
the earliest host of a round.  One second after each time, every host is
asked which generation each plugin serves: a host on the old generation of
either plugin, or on two different generations, is *mixed*.

``python benchmarks/bench_fleet_release.py [HOSTS]``; ``make bench`` runs it
with ``HOSTS`` (or ``$HOTLOAD_BENCH_FLEET_HOSTS``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from bench_fleet import _redis

from hotload._artifact.builder import compile_plugin
from hotload.fleet import Fleet
from hotload.fleet._signing import public_hex, write_private_key

from common import limit_row, percentiles, row, scratch, text_row

HOSTS = int(os.environ.get("HOTLOAD_BENCH_FLEET_HOSTS", "50"))
RATE = int(os.environ.get("HOTLOAD_BENCH_RELEASE_RATE", "1000"))  # calls/s per host and plugin
ROUNDS = 3
LEAD = 8.0  # seconds from the plan written to its time
NAMES = ("reward", "drops")

SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "GEN.0.0");
HOTLOAD_API int32_t generation(void) { return GEN; }
HOTLOAD_EXPORT(generation, int32_t, (void));
"""

HOST = textwrap.dedent(
    """
    import json, sys, threading, time
    from hotload import Host

    url, name, work, rate, key, *paths = sys.argv[1:]
    rate = int(rate)
    host = Host(work, preflight=False)
    for p in paths:
        host.load(p)
    host.join_fleet(url, {"role": "game"}, name=name, public_key=key)

    def play():
        batch = max(1, rate // 100)
        while True:
            t = time.monotonic()
            for _ in range(batch):
                host["reward"].generation()
                host["drops"].generation()
            time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))

    threading.Thread(target=play, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        gens = {n: host[n].generation() for n in ("reward", "drops")}
        print(json.dumps(gens), flush=True)
    host.close()
    """
)


def _build(tmp: Path, name: str, gen: int) -> Path:
    src, out = tmp / f"{name}{gen}.c", tmp / f"{name}{gen}.so"
    src.write_text(SRC.replace("NAME", name).replace("GEN", str(gen)))
    compile_plugin(src, out, extra_cflags=["-O2"])
    return out


def _start_hosts(tmp: Path, url: str, key: str, n: int, first: list[Path]) -> list[Any]:
    script = tmp / "host.py"
    script.write_text(HOST)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state")}
    procs = []
    for i in range(n):
        args = [url, f"h{i}", str(tmp / f"w{i}"), str(RATE), key, *map(str, first)]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                text=True,
            )
        )
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs


def _ask(procs: list[Any]) -> list[dict[str, int]]:
    """Every host's generation of each plugin, asked at once."""
    for p in procs:
        p.stdin.write("?\n")
        p.stdin.flush()
    return [json.loads(p.stdout.readline()) for p in procs]


def _round(f: Fleet, procs: list[Any], digests: dict[str, str], gen: int) -> dict[str, Any]:
    at = time.time() + LEAD
    staged: list[float] = []

    def progress(line: str) -> None:
        if line.endswith(f"{len(procs)}/{len(procs)} hosts staged"):
            staged.append(time.time() - (at - LEAD))

    rec = f.release(digests, at=at, deadline=at - 2.0, poll=0.05, progress=progress)
    time.sleep(max(0.0, at + 1.0 - time.time()))
    seen = _ask(procs)
    at_ns = int(at * 1e9)
    skews = [
        (rep["switched_ns"] - at_ns) / 1e6
        for rep in rec["hosts_state"].values()
        if rep.get("state") == "switched" and "switched_ns" in rep
    ]
    return {
        "skews": skews,
        "switched": len(rec["switched"]),
        "mixed": sum(1 for s in seen if set(s.values()) != {gen}),
        "staged_s": staged[0] if staged else float("inf"),
    }


def run(hosts: int = HOSTS) -> dict[str, Any]:
    tmp = scratch()
    builds = {g: [_build(tmp, n, g) for n in NAMES] for g in range(1, ROUNDS + 2)}
    proc, url = _redis(tmp)
    (tmp / "keys").mkdir(mode=0o700)
    key = write_private_key(tmp / "keys" / "fleet.pem")
    procs: list[Any] = []
    out: dict[str, Any] = {"hosts": hosts, "rounds": []}
    try:
        with Fleet(url, signing_key=key) as f:
            procs = _start_hosts(tmp, url, public_hex(key), hosts, builds[1])
            while sum(h["alive"] for h in f.hosts()) < hosts:
                time.sleep(0.1)
            out["load"] = os.getloadavg()[0]
            for gen in range(2, ROUNDS + 2):
                digests = {n: f.publish(p) for n, p in zip(NAMES, builds[gen], strict=True)}
                out["rounds"].append(_round(f, procs, digests, gen))
        out["load_after"] = os.getloadavg()[0]
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        proc.terminate()
        proc.wait(10)
    return out


def report(r: dict[str, Any]) -> list[str]:
    n, rounds = r["hosts"], r["rounds"]
    skews = [s for rd in rounds for s in rd["skews"]]
    p50, _, p99 = percentiles(skews) if skews else (float("inf"),) * 3
    spread = max((max(rd["skews"]) - min(rd["skews"]) for rd in rounds if rd["skews"]), default=0)
    return [
        f"fleet release: {n} host processes x {RATE} calls/s to each of {len(NAMES)} plugins, "
        f"{len(rounds)} releases each {LEAD:g} s ahead (load average {r['load']:.1f} before, "
        f"{r['load_after']:.1f} after, on {os.cpu_count()} cores)",
        limit_row(
            "switch instant after the time, p99 (every host, round)",
            p99,
            "ms",
            5,
            op="<=",
            note=f"(p50 {p50:.2f} ms, max {max(skews, default=float('inf')):.2f} ms)",
        ),
        row("latest minus earliest host of a round, worst", spread, "ms"),
        limit_row(
            "hosts mixed 1 s after the time, worst round",
            max(rd["mixed"] for rd in rounds),
            "",
            0,
            op="<=",
        ),
        text_row(
            "each round: p50 / max after the time, ms",
            ", ".join(
                f"{percentiles(rd['skews'])[0]:.2f} / {max(rd['skews']):.2f}"
                for rd in rounds
                if rd["skews"]
            ),
        ),
        text_row(
            "hosts that reported their switch",
            ", ".join(f"{rd['switched']}/{n}" for rd in rounds),
        ),
        row("plan written -> every host staged, worst", max(rd["staged_s"] for rd in rounds), "s"),
    ]


if __name__ == "__main__":
    print("\n".join(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else HOSTS))))
