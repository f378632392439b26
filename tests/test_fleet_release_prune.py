"""Old fleet releases cleaned out of Redis (``ReleaseController.prune``,
run by every ``Fleet.release``): beyond the newest plans kept, every plan
that is over goes with its record and its host reports; a plan still to
switch stays whatever its age; garbage goes too.  Real redis-server; one
real host whose staged release's plan is among the oldest."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hotload.fleet import Fleet
from hotload.fleet._release_ctl import GRACE, ReleaseController
from hotload.fleet._release_plan import Plan, releases_key, report_key, sign
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    cluster,
    fleet_key,
    redis_server,
)

from conftest import wait_for

SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("reward", "GEN.0.0");
HOTLOAD_API int32_t generation(void) { return GEN; }
HOTLOAD_EXPORT(generation, int32_t, (void));
"""


def _put(r: Any, key: Any, plan: Plan, hosts: tuple[str, ...] = ("h1", "h2")) -> None:
    r.hset("hotload:releases", plan.id, sign(key, plan).record())
    r.set(f"hotload:release:{plan.id}", "{}")
    for h in hosts:
        r.hset(f"hotload:release-report:{h}", plan.id, '{"state": "switched"}')
        r.sadd("hotload:hosts", h)


def test_prune_keeps_the_newest_and_every_plan_still_to_switch(
    redis_server: RedisServer, fleet_key: Any
) -> None:
    r = redis_server.client()
    now = time.time()
    build = (("reward", "a" * 64),)
    long_ago = now - GRACE - 100
    plans = {
        "000000000001": Plan("000000000001", 1, build, long_ago, long_ago - 5),  # over
        "000000000002": Plan("000000000002", 2, build, now + 600, now + 500),  # to switch
        "000000000003": Plan("000000000003", 3, build, now + 9, now + 8, state="cancelled"),
        "000000000004": Plan("000000000004", 4, build, now - 10, now - 15),  # in its grace
        "000000000005": Plan(  # its canary baked, the others switch in a minute: not over
            "000000000005",
            5,
            build,
            long_ago,
            long_ago - 5,
            canary={"match": {"role": "c"}, "bake": GRACE + 160},
        ),  # fmt: skip
        "000000000006": Plan("000000000006", 6, build, long_ago, long_ago - 5, state="aborted"),
        "000000000007": Plan("000000000007", 7, build, long_ago, long_ago - 5),
        "000000000008": Plan("000000000008", 8, build, long_ago, long_ago - 5),
    }
    for plan in plans.values():
        _put(r, fleet_key, plan)
    r.hset("hotload:releases", b"garbage\x00\xff", b"\xff\xfe not json")
    r.hset("hotload:releases", "000000000009", b"{" * 100_000)
    with Fleet(redis_server.url) as f:
        ctl = ReleaseController(f)
        assert ctl.prune(keep=100) == []  # under the bound: nothing goes
        gone = ctl.prune(keep=2)
        left = {k.decode("utf-8", "replace") for k in r.hkeys(releases_key(f.keys))}
        assert sorted(gone) == [
            "000000000001",
            "000000000003",
            "000000000006",
            "000000000009",
            "garbage\x00\ufffd",  # a key that is not UTF-8 goes too
        ]
        # kept: the two newest, one still to switch, one in its grace, one whose rest waits
        assert left == {"000000000008", "000000000007", "000000000002", "000000000004",
                        "000000000005"}  # fmt: skip
        for rid in ("000000000001", "000000000003", "000000000006"):
            assert r.get(f"hotload:release:{rid}") is None
            assert r.hget(report_key(f.keys, "h1"), rid) is None
            assert r.hget(report_key(f.keys, "h2"), rid) is None
        for rid in left:  # a planned one past its time was adopted first (issue 23, R4)
            assert r.get(f"hotload:release:{rid}") is not None
            assert r.hget(report_key(f.keys, "h1"), rid) is not None
        assert ctl.prune(keep=2) == []  # nothing more is over


def test_a_staged_release_survives_the_cleanup_and_switches(
    cluster: Cluster, redis_server: RedisServer, fleet_key: Any, cc: Any, tmp_path: Path
) -> None:
    one = cc(SRC.replace("GEN", "1"), "reward1")
    two = cc(SRC.replace("GEN", "2"), "reward2")
    cluster.add("a", {"role": "game"}, start_with=one)
    with Fleet(redis_server.url) as f:
        digest = f.publish(two)
        at = time.time() + 2.5
        rid = f.release({"reward": digest}, at=at, wait=False)["id"]
        wait_for(lambda: cluster.hosts["a"].staged_releases(), what="staged on a")
        r = redis_server.client()
        old = time.time() - GRACE - 100
        for i in range(6):  # newer plans, over: the staged one is now the oldest
            p = Plan(
                f"{i:012x}", 10**14 + i, (("reward", digest),), old, old - 5, state="cancelled"
            )
            _put(r, fleet_key, p, hosts=("a",))
        gone = ReleaseController(f).prune(keep=2)
        assert rid not in gone and len(gone) == 4
    (rel,) = cluster.hosts["a"].staged_releases()
    assert rel.wait(10) == "done"
    assert cluster.hosts["a"]["reward"].generation() == 2
