"""The fleet sees health (issue 21 item 5): each heartbeat carries a compact
summary of every plugin's current version, ``hotload fleet status`` shows
it per host and names the unhealthy ones, a hostile writer's garbage in a
heartbeat never breaks ``status``, and an idle host stays within its Redis
budget.  Real redis-server, real hosts and agents, real worker crashes."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from hotload import Isolated, PluginCrashedError, fleet
from hotload._cli.fleet import render_status
from hotload.fleet._schema import MAX_HEALTH
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    builds,
    cluster,
    fleet_key,
    redis_server,
)

from conftest import Compile, wait_for

HEALTH_KEYS = {
    "seq",
    "calls",
    "errors",
    "crashes",
    "timeouts",
    "service_errors",
    "p99_us",
    "worker",
}

BOOM = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("boom", "1");
HOTLOAD_API int32_t ok(void) { return 1; }
HOTLOAD_EXPORT(ok, int32_t, (void));
HOTLOAD_API int32_t die(void) { volatile int *p = 0; *p = 1; return 0; }
HOTLOAD_EXPORT(die, int32_t, (void));
"""


def host_status(url: str, host_id: str) -> dict[str, Any]:
    st = fleet.status(url=url)
    return next((h for h in st["hosts"] if h["id"] == host_id), {})  # {}: not registered yet


def test_heartbeats_carry_each_plugins_health_and_status_shows_it(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    v1, _ = builds(2)
    cluster.add("a", {"role": "main"}, start_with=v1)
    xp = cluster.hosts["a"]["xp"]
    for i in range(25):
        xp.reward(i, 1)

    def counted() -> dict[str, Any] | None:
        h = host_status(redis_server.url, "a")
        return h if (h.get("health") or {}).get("xp", {}).get("calls") == 25 else None

    h = wait_for(counted, what="25 calls in a's heartbeat")
    health = h["health"]["xp"]
    assert set(health) <= HEALTH_KEYS and health["seq"] == 1
    assert h["unhealthy"] == {} and "health_error" not in h
    raw = json.loads(redis_server.client().get("hotload:host:a"))
    assert raw["schema"] == 2 and raw["health"]["xp"]["calls"] == 25
    table = render_status(fleet.status(url=redis_server.url)).splitlines()
    header = table[0].split()
    row = next(line.split() for line in table if line.startswith("a "))
    # "0.1s ago" is two words; the health cell is "ok" or "ok, p99 12us" (sampled)
    assert header[8:10] == ["CALLS", "HEALTH"] and row[9] == "25" and row[10] in ("ok", "ok,")
    assert not any(line.startswith("UNHEALTHY") for line in table)
    out = subprocess.run(
        [sys.executable, "-m", "hotload", "fleet", "status", "--json", "--redis", redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    (cli_a,) = [x for x in json.loads(out.stdout)["hosts"] if x["id"] == "a"]
    assert cli_a["health"]["xp"]["calls"] == 25 and cli_a["unhealthy"] == {}


def test_a_stopped_worker_makes_its_host_unhealthy_at_a_glance(
    cluster: Cluster, redis_server: RedisServer, builds, cc: Compile
) -> None:
    v1, _ = builds(2)
    cluster.add("a", {"role": "main"}, start_with=v1)
    cluster.add("b", {"role": "main"}, start_with=v1)
    boom = cluster.hosts["b"].load(cc(BOOM, "boom"), isolate=Isolated(on_crash="stop"))
    with pytest.raises(PluginCrashedError):
        boom.die()

    def flagged() -> dict[str, Any] | None:
        h = host_status(redis_server.url, "b")
        return h if h.get("unhealthy") else None

    b = wait_for(flagged, what="b unhealthy")
    # the crash that stopped it counts too (the call that met it is an error)
    assert list(b["unhealthy"]) == ["boom"] and "worker stopped" in b["unhealthy"]["boom"]
    assert b["health"]["boom"]["worker"] == "stopped"
    assert host_status(redis_server.url, "a")["unhealthy"] == {}
    text = render_status(fleet.status(url=redis_server.url))
    assert "UNHEALTHY: 1 of 2 live host(s)\n  b: boom: " in text
    assert re.search(
        r"\n  b: boom: \d+ crash(es)?, worker stopped, \d+ errors? in \d+ calls?", text
    )
    rows = {(w[0], w[4]): line for line in text.splitlines() if len(w := line.split()) > 8}
    assert "UNHEALTHY" in rows[("b", "boom")] and "UNHEALTHY" not in rows[("b", "xp")]


def test_crashes_and_errors_of_the_current_version_reach_fleet_status(
    cluster: Cluster, redis_server: RedisServer, builds, cc: Compile
) -> None:
    v1, _ = builds(2)
    cluster.add("a", {"role": "main"}, start_with=v1)
    boom = cluster.hosts["a"].load(cc(BOOM, "boom"), isolate=Isolated(max_restarts=10))
    for _ in range(2):
        with pytest.raises(PluginCrashedError):
            boom.die()
        assert boom.ok() == 1
    wait_for(
        lambda: (
            (host_status(redis_server.url, "a").get("health") or {}).get("boom", {}).get("crashes")
            == 2
        ),
        what="two crashes in a's heartbeat",
    )
    a = host_status(redis_server.url, "a")
    assert a["health"]["boom"]["errors"] >= 2 and a["health"]["boom"]["calls"] >= 4
    assert "2 crashes" in a["unhealthy"]["boom"]
    assert "UNHEALTHY: 1 of 1 live host(s)" in render_status(fleet.status(url=redis_server.url))


@pytest.mark.parametrize(
    "health",
    [
        "garbage",
        [1, 2, 3],
        {"xp": []},
        {"xp": {"calls": -1}},
        {"xp": {"calls": "many"}},
        {"xp": {"calls": True}},
        {"xp": {"calls": 2**70}},
        {"xp": {"p99_us": 1e308}},
        {"xp": {"p99_us": "fast"}},
        {"xp": {"worker": "<script>" * 50}},
        {"../../etc": {"calls": 1}},
        {"x" * 100: {"calls": 1}},
        {f"p{i}": {"calls": i, "errors": i} for i in range(3_000)},
        {f"p{i}": {"calls": i, "errors": i} for i in range(10_000)},  # over the record cap
        {"xp": {"calls": 5, "evil": "x" * 1000, "errors": 5}},
        {"xp": {"seq": [[[[[[1]]]]]]}},
    ],
    ids=lambda h: repr(h)[:40],
)
def test_hostile_health_in_a_heartbeat_does_not_break_status(
    redis_server: RedisServer, health: Any
) -> None:
    r = redis_server.client()
    beat = {"id": "evil", "labels": {"role": "x"}, "ttl": 30, "schema": 2, "health": health}
    r.sadd("hotload:hosts", "evil", "old")
    r.set("hotload:host:evil", json.dumps(beat), px=30_000)
    r.set("hotload:host:old", json.dumps({"id": "old", "labels": {}, "ttl": 30}), px=30_000)
    st = fleet.status(url=redis_server.url)
    hosts = {h["id"]: h for h in st["hosts"]}
    evil, old = hosts["evil"], hosts["old"]
    assert old["alive"] and (old["health"], old["unhealthy"]) == ({}, {})  # schema 1: no health
    assert "health_error" not in old
    if isinstance(health, dict) and len(health) == 10_000:  # 350 KB: read as nothing at all
        assert not evil["alive"] and "over the" in evil["error"] and "health" not in evil
        assert "evil" in render_status(st)
        return
    assert evil["alive"]
    assert len(evil["health"]) <= MAX_HEALTH
    for name, h in evil["health"].items():  # what is kept is well formed, and only that
        assert set(h) <= HEALTH_KEYS and len(name) <= 64
        assert all(
            type(h[k]) is int and 0 <= h[k] < 2**64 for k in h if k not in ("p99_us", "worker")
        )
    if isinstance(health, dict) and len(health) == 3_000:
        assert "health_error" not in evil and len(evil["health"]) == MAX_HEALTH
        assert evil["unhealthy"]["p5"] == ["5 errors in 5 calls (100.0%)"]
    elif isinstance(health, dict) and "evil" in health.get("xp", {}):
        assert evil["health"] == {"xp": {"calls": 5, "errors": 5}}  # the unknown key left out
    else:
        assert evil["health"] == {} and "health of evil" in evil["health_error"]
    text = render_status(st)
    assert "evil" in text and len(max(text.splitlines(), key=len)) < 400


def test_an_idle_host_with_health_stays_within_the_redis_budget(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    """<= 1 Redis command/s per idle host at the default 2.5 s heartbeat: the
    health rides in the heartbeat's own SET, so a beat stays 2 commands."""
    v1, _ = builds(2)
    cluster.add("a", {"role": "main"}, start_with=v1)
    cluster.hosts["a"]["xp"].reward(1, 1)
    wait_for(
        lambda: (host_status(redis_server.url, "a").get("health") or {}).get("xp"),
        what="health in the heartbeat",
    )
    r = redis_server.client()
    hb = cluster.agents["a"].heartbeat
    before = r.info("stats")["total_commands_processed"]
    window = 3.0
    time.sleep(window)
    used = r.info("stats")["total_commands_processed"] - before - 1  # our INFO
    beats = window / hb + 1
    per_beat = used / (window / hb)
    assert used <= 2 * beats, f"{used} commands in {window} s ({beats:.0f} heartbeats)"
    assert per_beat / 2.5 <= 1.0, f"{per_beat:.1f} commands a beat: over 1/s at the default beat"


def test_a_host_that_counts_no_errors_is_not_shown_ok_and_gone_hosts_are_not_counted() -> None:
    """A ``Host(metrics=False)`` sends calls but no error counts: its health
    was shown ``ok``; and a host gone ten minutes ago was counted in
    "UNHEALTHY: 2 of 4" (the attacker's review)."""
    from hotload._cli.fleet import _health_cell

    assert _health_cell({"seq": 1, "calls": 5}, []) == "ok?, no error counts"
    assert _health_cell({"seq": 1, "calls": 5, "errors": 0}, []) == "ok"
    status = {
        "hosts": [
            {
                "id": "a",
                "alive": True,
                "labels": {},
                "plugins": {},
                "unhealthy": {"x": ["1 crash"]},
            },
            {"id": "b", "alive": True, "labels": {}, "plugins": {}, "unhealthy": {}},
            {"id": "c", "alive": False, "labels": {}, "plugins": {}, "unhealthy": {"x": ["stop"]}},
        ],
        "desired": {},
        "rollouts": {},
    }
    text = render_status(status)
    assert "UNHEALTHY: 1 of 2 live host(s)" in text, text
