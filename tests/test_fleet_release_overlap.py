"""Overlapping fleet decisions (issue 23, the third attack's open findings):
releases written with ``--no-wait`` (no desired states follow them), a
later release or rollout of some of their plugins, two controllers adopting
at once.  A host that comes late goes from where it is to the fleet's final
set in one switch: for each plugin the newest decision (by rev) naming it,
a release's other plugins following that release.

Real redis-server, real agents, real plugins compiled here; a player thread
reads both plugins' generations all along."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload import Host
from hotload.fleet import Fleet
from hotload.fleet._release_plan import Plan, releases_key, sign
from hotload.fleet._schema import Keys, Rule, new_id
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


def write_plan(
    url: str, key: Any, builds: dict[str, str], at: float, match: dict[str, str] | None = None
) -> Plan:
    """A signed plan written as ``hotload fleet release --no-wait`` leaves
    it (its time may be past here: a host that comes after both times)."""
    from redis import Redis

    r = Redis.from_url(url)
    gen = int(r.get("hotload:gen") or 0)
    rev = max(gen + 1, int(time.time() * 1000))
    plan = sign(key, Plan(new_id(), rev, tuple(builds.items()), at, at - 1.0, match or {}))
    r.hset(releases_key(Keys("hotload:")), plan.id, plan.record())
    r.set("hotload:gen", rev)
    r.publish("hotload:wake", "x")
    time.sleep(0.002)  # the next decision's rev (ms) is above this one
    return plan


def late_host(cluster: Cluster, one: dict[str, Path]) -> tuple[Host, list[Any]]:
    """A host that starts on gen 1 of both, watched from before its agent's first look."""
    watching: list[Any] = []

    def setup(h: Host) -> None:
        h.load(one["drops"])
        h.load(one["reward"])
        watching.append(player(h))
        watching.append(watching[0].__enter__())

    cluster.add("late", {"role": "game"}, setup=setup)
    return cluster.hosts["late"], watching


@pytest.mark.parametrize(
    "then",
    ["release-reward-after", "release-reward-before", "release-both", "rollout-reward"],
)
def test_overlapping_no_wait_releases_reach_the_final_set_in_one_switch(
    cluster: Cluster,
    redis_server: RedisServer,
    gens: Callable[[int], dict[str, Path]],
    fleet_key: Any,
    then: str,
) -> None:
    """Release X moved (reward, drops) to gen 2 with --no-wait (no desired
    state written), then Y moved reward (or both) to gen 3, by a release
    whose time is after or before X's, or by a rollout.  A host starting
    after both times refused X as "not switched alone", took Y alone and
    stayed split at (3, 1) (the third attack's G5).  Now one switch to the
    fleet's final set: (3, 2), or (3, 3) when Y names both."""
    one, two, three = gens(1), gens(2), gens(3)
    d2, d3 = publish(redis_server.url, two), publish(redis_server.url, three)
    now = time.time()
    x = write_plan(redis_server.url, fleet_key, d2, now - 5)
    if then == "rollout-reward":
        with Fleet(redis_server.url) as f:
            f.set_desired("reward", [Rule({}, d3["reward"])])
    else:
        y_builds = d3 if then == "release-both" else {"reward": d3["reward"]}
        write_plan(redis_server.url, fleet_key, y_builds, now - (8 if "before" in then else 2))
    h, watching = late_host(cluster, one)
    final = (3, 3) if then == "release-both" else (3, 2)
    try:
        wait_for(lambda: gen_of(h) == final, timeout=10, what=f"one switch to {final}")
        time.sleep(0.5)  # a few syncs more: nothing moves again
    finally:
        watching[0].__exit__(None, None, None)
    assert watching[1] == [(1, 1), final], watching[1]
    if then != "release-both":  # X's report: switched, late, its drops joined to reward's decision
        rep = wait_for(lambda: reports(redis_server.url, x.id).get("late"), what="X's report")
        assert (rep["state"], rep.get("late")) == ("switched", True), rep


@pytest.mark.soak  # ~4 s: two real releases' leads
@pytest.mark.parametrize("then", ["release-after", "release-before", "rollout-before"])
def test_a_host_on_time_and_a_late_one_end_on_the_same_set(
    cluster: Cluster,
    redis_server: RedisServer,
    gens: Callable[[int], dict[str, Path]],
    then: str,
) -> None:
    """The same two --no-wait releases seen live: a host staged X, so Y (of
    reward, whose time is after X's, or before it) is refused there while X
    is staged (reward is X's until X's time).  That host tries Y again once X
    switched and converges to it at its time; it and a host started after
    both times end on (3, 2), never on a pair no decision made.  The same
    for a desired state of reward written while X is staged (refused there
    then: taken once X switched)."""
    one, two, three = gens(1), gens(2), gens(3)
    d2, d3 = publish(redis_server.url, two), publish(redis_server.url, three)
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    a = cluster.hosts["a"]
    a.load(one["drops"])
    with player(a) as seen, Fleet(redis_server.url) as f:
        now = time.time()
        x_at, y_at = (now + 1.6, now + 2.6) if then == "release-after" else (now + 2.6, now + 1.6)
        f.release(d2, at=x_at, deadline=x_at - 0.5, wait=False)
        if then == "rollout-before":
            wait_for(lambda: a.staged_releases(), what="X staged on a")
            f.set_desired("reward", [Rule({}, d3["reward"])])
        else:
            f.release({"reward": d3["reward"]}, at=y_at, deadline=y_at - 0.5, wait=False)
        wait_for(lambda: gen_of(a) == (3, 2), timeout=15, what="a on (3, 2)")
        time.sleep(0.3)
    assert seen == [(1, 1), (2, 2), (3, 2)], seen
    h, watching = late_host(cluster, one)
    try:
        wait_for(lambda: gen_of(h) == (3, 2), timeout=10, what="the late host on (3, 2)")
        time.sleep(0.3)
    finally:
        watching[0].__exit__(None, None, None)
    assert watching[1] == [(1, 1), (3, 2)], watching[1]


def adopt_record(plan: Plan) -> dict[str, Any]:
    """The controller's record of a release, as ``drive`` has it at the end."""
    return {"id": plan.id, "plan": plan.record(), "builds": plan.digests, "hosts": "*"}


@pytest.mark.parametrize("y_names", [("reward", "drops"), ("reward",)])
def test_two_controllers_adopting_at_once_leave_the_later_release_whole(
    cluster: Cluster,
    redis_server: RedisServer,
    gens: Callable[[int], dict[str, Path]],
    fleet_key: Any,
    y_names: tuple[str, ...],
) -> None:
    """Two releases' controllers write their desired states at the end of
    their waits; X's (the older release) came last, or between Y's two
    writes.  The desired states then held X's drops beside Y's reward (or X
    whole), and a fresh host moved to that pair: one no single decision made,
    and not what the hosts that switched on time run (the third attack's
    G8).  The rule: adoption is ordered by the plans' revs, so the release
    published later keeps every plugin it names, whoever writes last."""
    from hotload.fleet._release_ctl import ReleaseController

    one, two, three = gens(1), gens(2), gens(3)
    d2, d3 = publish(redis_server.url, two), publish(redis_server.url, three)
    now = time.time()
    x = write_plan(redis_server.url, fleet_key, d2, now - 5)
    y = write_plan(redis_server.url, fleet_key, {n: d3[n] for n in y_names}, now - 3)
    with Fleet(redis_server.url) as f:
        ctl = ReleaseController(f, progress=lambda _: None)
        ctl._adopt(adopt_record(y))
        skipped = ctl._adopt(adopt_record(x))  # the slower controller writes after
        owners = {n: f.desired(n)[1][0].release.id for n in NAMES}  # type: ignore[union-attr]
    assert owners == {n: (y.id if n in y_names else x.id) for n in NAMES}
    assert [s.split()[0] for s in skipped] == list(y_names), skipped
    final = (3, 3) if len(y_names) == 2 else (3, 2)
    h, watching = late_host(cluster, one)
    try:
        wait_for(lambda: gen_of(h) == final, timeout=10, what=f"one switch to {final}")
        time.sleep(0.3)
    finally:
        watching[0].__exit__(None, None, None)
    assert watching[1] == [(1, 1), final], watching[1]


def test_adopting_at_once_from_threads_never_leaves_a_mixed_pair(
    redis_server: RedisServer, gens: Callable[[int], dict[str, Path]], fleet_key: Any
) -> None:
    """The two controllers' writes race for real (threads, one Redis): every
    round ends with both plugins' desired states naming the later release."""
    import threading

    from hotload.fleet._release_ctl import ReleaseController

    d2, d3 = publish(redis_server.url, gens(2)), publish(redis_server.url, gens(3))
    for _ in range(8):
        now = time.time()
        x = write_plan(redis_server.url, fleet_key, d2, now - 5)
        y = write_plan(redis_server.url, fleet_key, d3, now - 3)
        go = threading.Barrier(2)

        def adopt(plan: Plan, go: threading.Barrier = go) -> None:
            with Fleet(redis_server.url) as f:
                go.wait(5)
                ReleaseController(f, progress=lambda _: None)._adopt(adopt_record(plan))

        threads = [threading.Thread(target=adopt, args=(p,)) for p in (x, y)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        with Fleet(redis_server.url) as f:
            owners = {n: f.desired(n)[1][0].release.id for n in NAMES}  # type: ignore[union-attr]
        assert owners == {n: y.id for n in NAMES}


@pytest.mark.soak  # ~2 s: the second plan's time
def test_a_late_host_takes_a_past_release_whole_before_a_later_one_of_a_plugin(
    cluster: Cluster,
    redis_server: RedisServer,
    gens: Callable[[int], dict[str, Path]],
    fleet_key: Any,
) -> None:
    """X (both plugins, gen 2) is past its time; Y (reward, gen 3), newer,
    is still to come.  A host coming now does what a host that was there did:
    X whole now, Y at its time; never (1, 2), drops alone, until Y's time
    (Y's coming plan counted as holding reward away from X)."""
    one, two, three = gens(1), gens(2), gens(3)
    d2, d3 = publish(redis_server.url, two), publish(redis_server.url, three)
    write_plan(redis_server.url, fleet_key, d2, time.time() - 3)
    y = write_plan(redis_server.url, fleet_key, {"reward": d3["reward"]}, time.time() + 1.5)
    h, watching = late_host(cluster, one)
    try:
        wait_for(lambda: gen_of(h) == (2, 2), timeout=10, what="X whole")
        assert time.time() < y.at
        wait_for(lambda: gen_of(h) == (3, 2), timeout=10, what="Y at its time")
        assert time.time() >= y.at
        time.sleep(0.3)
    finally:
        watching[0].__exit__(None, None, None)
    assert watching[1] == [(1, 1), (2, 2), (3, 2)], watching[1]
