"""Wake-ups coalesced (issue 23, the fourth attack's R3): any host's Redis
user may publish on the fleet's ``wake`` channel, and each wake-up was a
full sync in every agent, with no limit: a flood of 500 a second took a host
process from 0.01 to 0.45 CPU seconds a second.  Now a flood costs a bounded
share of a core, and a real wake-up among the flood still lands at once.

CPU is the process's (``time.process_time``: the agent thread and the
host's), the flood comes from another process; the bounds are generous (a
shared machine), the figures before the fix several times over them."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotload import Host
from hotload.fleet import Fleet
from hotload.fleet._agent import FleetAgent
from hotload.fleet._wake import WAKE_GAP
from test_fleet import (  # noqa: F401  (fixtures)
    RedisServer,
    builds,
    fleet_key,
    redis_server,
    set_all,
)

from conftest import wait_for

FLOOD = """
import sys, time
from redis import Redis
r = Redis.from_url(sys.argv[1])
end, burst = time.time() + float(sys.argv[2]), int(sys.argv[3])
while time.time() < end:
    pipe = r.pipeline(transaction=False)
    for _ in range(burst):
        pipe.publish("hotload:wake", "x")
    pipe.execute()
    if burst < 1000:
        time.sleep(0.01)
"""


def _flood(url: str, seconds: float, burst: int) -> subprocess.Popen[bytes]:
    """Another process publishing ``burst`` wake-ups every 10 ms (1000 or
    more: as fast as it can)."""
    return subprocess.Popen([sys.executable, "-c", FLOOD, url, str(seconds), str(burst)])


@pytest.fixture
def agent(
    tmp_path: Path, redis_server: RedisServer, builds: Callable[..., tuple[Path, str]]
) -> Iterator[FleetAgent]:
    """A host on xp v1 whose agent beats every 30 s: only a wake-up makes
    it sync within a test."""
    v1, _ = builds(2)
    host = Host(tmp_path / "work", preflight=False)
    host.load(v1)
    a = FleetAgent(host, redis_server.url, {"role": "game"}, host_id="a", heartbeat=30.0)
    a.start()
    wait_for(a.synced.is_set, what="the first sync")
    yield a
    a.stop()
    host.close()


def _flooded(agent: FleetAgent, url: str, burst: int, window: float) -> tuple[float, float]:
    """CPU seconds per second of this process and agent commands per second
    during ``window`` s of a flood (after its first 0.3 s)."""
    proc = _flood(url, window + 1.0, burst)
    try:
        time.sleep(0.3)
        c0, t0, cpu0 = agent.commands, time.monotonic(), time.process_time()
        time.sleep(window)
        wall = time.monotonic() - t0
        return (time.process_time() - cpu0) / wall, (agent.commands - c0) / wall
    finally:
        proc.kill()
        proc.wait(5)


def _lands(agent: FleetAgent, url: str, digest: str) -> float:
    """Seconds from a desired state set (a wake-up) to it live here."""
    with Fleet(url) as f:
        t0 = time.monotonic()
        set_all(f, digest)
    wait_for(lambda: agent.live_digest("xp") == digest, timeout=20, what=f"{digest[:12]} live")
    return time.monotonic() - t0


def test_a_wake_flood_costs_a_bounded_share_and_a_real_wake_still_lands(
    agent: FleetAgent, redis_server: RedisServer, builds: Callable[..., tuple[Path, str]]
) -> None:
    """2,000 wake-ups a second for a second: before, a sync each (the process
    at ~1 CPU s/s, thousands of commands a second); now at most one sync per
    WAKE_GAP after a short burst.  A desired state set during the flood,
    and one after it, are live well before the 30 s heartbeat."""
    _, d2 = builds(3)
    _, d1 = builds(2)
    url = redis_server.url
    with Fleet(url) as f:
        f.publish(builds(3)[0])
    proc = _flood(url, 3.0, 20)
    try:
        time.sleep(0.3)
        c0, t0, cpu0 = agent.commands, time.monotonic(), time.process_time()
        time.sleep(1.0)
        wall = time.monotonic() - t0
        cpu, cmds = (time.process_time() - cpu0) / wall, (agent.commands - c0) / wall
        during = _lands(agent, url, d2)  # among the flood: held back at most a gap
    finally:
        proc.kill()
        proc.wait(5)
    time.sleep(0.2)
    after = _lands(agent, url, d1)  # v1 is kept here: no fetch
    print(f"flood: {cpu:.3f} CPU s/s, {cmds:.0f} commands/s; lands {during:.3f} / {after:.3f} s")
    assert agent._wakes.messages > 1000  # the flood did arrive
    assert cpu < 0.3, f"a wake flood costs {cpu:.2f} CPU s per s"
    assert cmds < 8 * (1 / WAKE_GAP) + 40, f"{cmds:.0f} agent commands/s through a flood"
    assert during < 2.0 and after < 2.0


@pytest.mark.soak  # ~10 s: 1,024 junk plans and a flood of 500 wake-ups a second
def test_a_flood_over_junk_plans_is_bounded_too(
    agent: FleetAgent, redis_server: RedisServer, builds: Callable[..., tuple[Path, str]]
) -> None:
    """Each sync then re-reads 1,024 plans (~0.3 CPU s under load): syncs
    for wake-ups spread out to keep their share of a core near SYNC_SHARE,
    and a backlog too long to read is dropped with its subscription."""
    url = redis_server.url
    r = redis_server.client()
    builds_ = [{"plugin": f"p{i}", "digest": "ab" * 32} for i in range(64)]
    pipe = r.pipeline()
    for i in range(1024):
        rec: dict[str, Any] = {
            "id": f"{i:012x}", "rev": 1, "builds": builds_, "at": 1e10, "deadline": 1e10 - 5,
            "match": {}, "state": "planned", "reason": "", "signed_at": 1.0,
            "expires_at": 9e10, "signature": "00" * 64,
        }  # fmt: skip
        pipe.hset("hotload:releases", rec["id"], json.dumps(rec))
    pipe.execute()
    _, d2 = builds(3)
    with Fleet(url) as f:
        f.publish(builds(3)[0])
    cpu, cmds = _flooded(agent, url, 5, 6.0)  # before: 0.42-0.97 CPU s/s
    print(f"flood over junk plans: {cpu:.3f} CPU s/s, {cmds:.0f} commands/s")
    assert agent._wakes.dropped >= 1  # 1,500 wake-ups wait through a 3 s gap
    assert cpu < 0.25, f"a wake flood costs {cpu:.2f} CPU s per s"
    lag = _lands(agent, url, d2)
    assert lag < 10.0, f"a real wake-up after the flood took {lag:.1f} s"
