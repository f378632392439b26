"""Fleet releases around the switch: the attack's and the new user's cases
(issue 23), end to end through a real release each (its time at least a
second ahead, then seconds of watching), so all under ``soak``.

A player thread reads both plugins' generations every 0.2 ms; a host is
*mixed* when it saw one plugin's new generation with the other's old one."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload import FleetError, Host
from hotload.fleet import Fleet
from hotload.fleet._schema import Rule
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    cluster,
    fleet_key,
    redis_server,
)
from test_fleet_release import NAMES, gens, publish, reports  # noqa: F401
from test_fleet_release_group import gen_of, player

from conftest import wait_for

pytestmark = pytest.mark.soak

DROPS = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("drops", "GEN.0.0");
typedef struct { COINS_T coins; } drops_state_t;
HOTLOAD_STRUCT(drops_state_t);
HOTLOAD_FIELD(drops_state_t, coins, COINS_T);
static drops_state_t state;
HOTLOAD_STATE(drops_state_t, state);
HOTLOAD_API int32_t generation(void) { return GEN; }
HOTLOAD_EXPORT(generation, int32_t, (void));
HOTLOAD_API void add(int64_t v) { state.coins += v; }
HOTLOAD_EXPORT(add, void, (int64_t));
MIG
"""
MIG = r"""
static int conv(int down, const void *from, size_t fs, void *to, size_t ts)
{
    (void)fs; (void)ts;
    if (down) { *(int64_t *)to = (int64_t)*(const double *)from; return 0; }
    int64_t v = *(const int64_t *)from;
    if (v > 1000) return 7;          /* a value this build cannot take */
    *(double *)to = (double)v;
    return 0;
}
HOTLOAD_MIGRATE(coins, conv);
"""
REWARD = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("reward", "GEN.0.0");
HOTLOAD_API int32_t generation(void) { return GEN; }
HOTLOAD_EXPORT(generation, int32_t, (void));
"""


def test_a_host_whose_switch_failed_is_not_moved_one_plugin_at_a_time_after(
    cc: Any, cluster: Cluster, redis_server: RedisServer
) -> None:
    """Attack F7: the staged release fails at the switch (the migration
    refuses the live value); the adoption after the time must not converge
    the host plugin by plugin: both stay old, and both say why."""
    d1 = cc(DROPS.replace("GEN", "1").replace("COINS_T", "int64_t").replace("MIG", ""), "d1")
    d2 = cc(DROPS.replace("GEN", "2").replace("COINS_T", "double").replace("MIG", MIG), "d2")
    r1, r2 = cc(REWARD.replace("GEN", "1"), "r1"), cc(REWARD.replace("GEN", "2"), "r2")
    digests = publish(redis_server.url, {"reward": r2, "drops": d2})
    cluster.add("a", {"role": "game"}, start_with=r1, plugins=["drops"])
    h = cluster.hosts["a"]
    h.load(d1)
    h["drops"].add(10)
    at = time.time() + 2.5
    box: dict[str, Any] = {}

    def drive() -> None:
        try:
            with Fleet(redis_server.url) as f:
                box["rec"] = f.release(digests, at=at, deadline=at - 1.2, poll=0.05)
        except Exception as exc:  # noqa: BLE001
            box["exc"] = exc

    with player(h) as seen:
        t = threading.Thread(target=drive, daemon=True)
        t.start()
        wait_for(lambda: h.staged_releases())
        h["drops"].add(5000)  # the live value changes after the proof at staging
        t.join(60)
        r = redis_server.client()

        def both_failed() -> bool:
            raw = [r.hget("hotload:report:a", n) for n in NAMES]
            return all(v and json.loads(v)["state"] == "failed" for v in raw)

        wait_for(both_failed, what="the adopted group refused, for both plugins")
        time.sleep(0.5)
    assert box["rec"]["not_switched"] == ["a"], box
    assert seen == [(1, 1)], seen


def test_a_switched_release_keeps_its_plugins_when_its_plan_goes(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    """Attack F8: ``--no-wait`` (no adoption); the plan is deleted after the
    switch, then a cancel-too-late style revert must not follow either."""
    d1, d2 = publish(redis_server.url, gens(1)), publish(redis_server.url, gens(2))
    with Fleet(redis_server.url) as f:
        for n in NAMES:
            f.set_desired(n, [Rule({}, d1[n])])
    cluster.add("a", {"role": "game"}, plugins=list(NAMES))
    h = cluster.hosts["a"]
    wait_for(lambda: all(n in h for n in NAMES) and gen_of(h) == (1, 1))
    at = time.time() + 1.5
    with Fleet(redis_server.url) as f:
        rid = f.release(d2, at=at, deadline=at - 0.8, wait=False)["id"]
    wait_for(lambda: reports(redis_server.url, rid).get("a", {}).get("state") == "switched")
    with player(h) as seen:
        r = redis_server.client()
        r.hdel("hotload:releases", rid)
        r.incr("hotload:gen")
        r.publish("hotload:wake", "x")
        time.sleep(1.5)
    assert seen == [(2, 2)], seen


@pytest.mark.parametrize("how", ["garbage", "delete"])
def test_an_older_release_does_not_take_back_what_a_newer_decision_moved(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]], how: str
) -> None:
    """Attack F1: a release (gen 2), then a rollout (gen 3); the rollout's
    desired states garbled or deleted: a host that joined after it keeps 3."""
    one = gens(1)
    d2, d3 = publish(redis_server.url, gens(2)), publish(redis_server.url, gens(3))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    at = time.time() + 1.5
    with Fleet(redis_server.url) as f:
        assert f.release(d2, at=at, deadline=at - 0.8, poll=0.05)["state"] == "switched"
        for n in NAMES:
            f.set_desired(n, [Rule({}, d3[n])])
    cluster.add("b", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    h = cluster.hosts["b"]
    wait_for(lambda: "drops" in h and gen_of(h) == (3, 3), what="b on gen 3")
    with player(h) as seen:
        r = redis_server.client()
        for n in NAMES:
            r.hset("hotload:desired", n, b"{not json") if how == "garbage" else r.hdel(
                "hotload:desired", n
            )
        r.incr("hotload:gen")
        r.publish("hotload:wake", "x")
        time.sleep(1.5)
    assert seen == [(3, 3)], seen


def test_the_controller_writes_the_plan_again_after_a_flushall(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    """Attack F5: Redis loses its data while the release is staged: the
    controller writes the plan again, the hosts report ``staged`` again,
    and every host switches (not one alone)."""
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    for name in ("a", "b"):
        cluster.add(name, {"role": "game"}, start_with=one["reward"], plugins=["drops"])
        cluster.hosts[name].load(one["drops"])
    at = time.time() + 3.0
    box: dict[str, Any] = {}

    def drive() -> None:
        try:
            with Fleet(redis_server.url) as f:
                box["rec"] = f.release(digests, at=at, deadline=at - 1.0, poll=0.05)
        except Exception as exc:  # noqa: BLE001
            box["exc"] = exc

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    wait_for(lambda: cluster.hosts["a"].staged_releases())
    redis_server.client().flushall()
    t.join(30)
    time.sleep(max(0.0, at + 0.5 - time.time()))
    g = {n: gen_of(cluster.hosts[n]) for n in ("a", "b")}
    assert g == {"a": (2, 2), "b": (2, 2)} or g == {"a": (1, 1), "b": (1, 1)}, g
    assert "exc" not in box or g["a"] == (1, 1), box


def test_garbage_entries_do_not_hide_a_plan(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    """Attack F3b: 5,000 ten-byte entries in the plans' hash."""
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    pipe = redis_server.client().pipeline(transaction=False)
    for i in range(5000):
        pipe.hset("hotload:releases", f"g{i:011d}", b"x")
    pipe.execute()
    at = time.time() + 3.0
    with Fleet(redis_server.url) as f:
        assert f.release(digests, at=at, deadline=at - 1.5, poll=0.05)["state"] == "switched"


def test_the_cli_prints_a_forged_cause_without_escapes_and_exits_2(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    """Attack F4 and new user 6: a host that does not switch makes the
    command exit 2 and print its cause, through ``printable``."""
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    r = redis_server.client()
    stop = threading.Event()
    evil = "\x1b[2J\x1b[Hrelease ok\x07"

    def forge() -> None:  # a host b that says staged, then failed with escapes at the time
        while not stop.is_set():
            beat = {"id": "b", "labels": {"role": "game"}, "ttl": 3.0}
            r.set("hotload:host:b", json.dumps(beat), px=3000)
            r.sadd("hotload:hosts", "b")
            for rid in r.hkeys("hotload:releases"):
                rec = json.loads(r.hget("hotload:releases", rid) or b"{}")
                late = time.time() > rec.get("at", 1e12) - 0.1
                rep = {"state": "failed", "error": evil} if late else {"state": "staged"}
                r.hset("hotload:release-report:b", rid, json.dumps(rep))
            time.sleep(0.01)

    t = threading.Thread(target=forge, daemon=True)
    t.start()
    with Fleet(redis_server.url) as f:
        wait_for(lambda: sum(h["alive"] for h in f.hosts()) == 2, what="a and the forged b")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "hotload", "fleet", "release", "--redis", redis_server.url]
            + [f"{n}={d}" for n, d in digests.items()]
            + ["--at", "+2.5", "--hosts", "role=game"],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ.copy(),
        )
    finally:
        stop.set()
        t.join()
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout, out.stdout
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "b: failed: ?[2J?[Hrelease ok?" in out.stdout, out.stdout


def test_a_cancel_too_late_is_refused_and_the_host_keeps_the_release(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    """Attack F2: a cancel in the last 40 ms is refused (before: taken,
    and the switched host reverted plugin by plugin through (2, 1))."""
    d1, d2 = publish(redis_server.url, gens(1)), publish(redis_server.url, gens(2))
    with Fleet(redis_server.url) as f:
        for n in NAMES:
            f.set_desired(n, [Rule({}, d1[n])])
    cluster.add("a", {"role": "game"}, plugins=list(NAMES))
    h = cluster.hosts["a"]
    wait_for(lambda: all(n in h for n in NAMES) and gen_of(h) == (1, 1))
    with player(h) as seen, Fleet(redis_server.url) as f:
        at = time.time() + 1.5
        rid = f.release(d2, at=at, deadline=at - 0.8, wait=False)["id"]
        wait_for(lambda: reports(redis_server.url, rid).get("a", {}).get("state") == "staged")
        time.sleep(max(0.0, at - 0.04 - time.time()))
        with pytest.raises(FleetError, match="too late to cancel"):
            f.cancel_release(rid, "the last moment")
        time.sleep(1.0)
    assert seen == [(1, 1), (2, 2)], seen


def test_hosts_started_after_the_time_take_the_release_in_either_startup_order(
    cluster: Cluster,
    redis_server: RedisServer,
    gens: Callable[[int], dict[str, Path]],
    tmp_path: Path,
) -> None:
    """New user 4 and 5: a host whose agent starts before the application
    loads, after the release's time (``--no-wait``: no desired state after
    it): with ``fleet_plugins`` the application's ``load`` gets the fleet's
    version (it raised AlreadyLoadedError); without, the agent takes the
    release once the application loaded both (it refused it for good)."""
    one = gens(1)
    d2 = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    at = time.time() + 1.5
    with Fleet(redis_server.url) as f:
        rid = f.release(d2, at=at, deadline=at - 0.8, wait=False)["id"]
    wait_for(lambda: reports(redis_server.url, rid).get("a", {}).get("state") == "switched")
    b, c = Host(tmp_path / "work-b", preflight=False), Host(tmp_path / "work-c", preflight=False)
    try:
        opts = {"heartbeat": 0.2, "timeout": 1.0}
        b.join_fleet(redis_server.url, {"role": "game"}, name="b", plugins=list(NAMES), **opts)
        wait_for(lambda: all(n in b for n in NAMES), what="b's agent loaded the release")
        for n in NAMES:  # Host(fleet_plugins=[...]), then the application's loads
            assert b.load(one[n]).generation() == 2  # the fleet's version, no AlreadyLoadedError
        c.join_fleet(redis_server.url, {"role": "game"}, name="c", **opts)  # Host(fleet=True)
        time.sleep(0.5)  # its agent saw the plan and could not take it yet
        c.load(one["reward"])
        c.load(one["drops"])
        with player(c) as seen:
            wait_for(lambda: gen_of(c) == (2, 2), what="c took the release")
        assert seen in ([(1, 1), (2, 2)], [(2, 2)]), seen
        wait_for(lambda: reports(redis_server.url, rid).get("c", {}).get("late"), what="c late")
    finally:
        b.close()
        c.close()
