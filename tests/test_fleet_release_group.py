"""A fleet release's plugins move together on every path (issue 23, the
fixes after the attack and the new user): the desired states a release
writes name the release (``Rule.release``) and an agent applies such a
group with ``reload_together``, all or none; a release switched on a host
holds its plugins whatever becomes of its plan; an older release's plan
never takes back plugins a newer accepted decision moved; a cancel is
refused in the last ``CANCEL_MARGIN`` s.

Real redis-server, real agents, real plugins compiled here; a player
thread reads both plugins' generations all along and fails on any mixed
pair it sees."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hotload import FleetError, Host
from hotload._cli.fleet_release import release_lines
from hotload.fleet import Fleet
from hotload.fleet._release_ctl import CANCEL_MARGIN
from hotload.fleet._schema import Group, Rule, parse_desired_record
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    cluster,
    fleet_key,
    redis_server,
)
from test_fleet_release import NAMES, gens, publish, reports  # noqa: F401

from conftest import wait_for

RID = "0123456789ab"


@contextmanager
def player(h: Host) -> Iterator[list[tuple[int, ...]]]:
    """Every distinct (reward, drops) pair a caller saw, in order."""
    seen: list[tuple[int, ...]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            g = tuple(h[n].generation() for n in NAMES)
            if not seen or seen[-1] != g:
                seen.append(g)
            time.sleep(0.0002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join(5)


def gen_of(h: Host) -> tuple[int, ...]:
    return tuple(h[n].generation() for n in NAMES)


def group_rules(digests: dict[str, str], rid: str = RID) -> dict[str, list[Rule]]:
    g = Group(rid, tuple(NAMES))
    return {n: [Rule({}, digests[n], release=g)] for n in NAMES}


def test_a_release_group_moves_together_once_every_member_is_written(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    one, two = gens(1), gens(2)
    d2 = publish(redis_server.url, two)
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    h = cluster.hosts["a"]
    h.load(one["drops"])
    rules = group_rules(d2)
    with player(h) as seen, Fleet(redis_server.url) as f:
        f.set_desired("reward", rules["reward"])  # the other member not written yet: waits
        time.sleep(0.6)
        assert gen_of(h) == (1, 1)
        f.set_desired("drops", rules["drops"])
        wait_for(lambda: gen_of(h) == (2, 2), what="both on gen 2")
    assert seen == [(1, 1), (2, 2)], seen
    rep = {n: json.loads(redis_server.client().hget("hotload:report:a", n)) for n in NAMES}
    assert all(r["state"] == "live" for r in rep.values()), rep


@pytest.mark.parametrize("then", ["release", "rollout"])
def test_a_late_host_joins_overlapping_decisions_into_one_switch(
    cluster: Cluster,
    redis_server: RedisServer,
    gens: Callable[[int], dict[str, Path]],
    then: str,
) -> None:
    """Release X moved both plugins to gen 2, then a release of reward alone
    (or a rollout of it) to gen 3: the desired states hold drops from X and
    reward from the later decision.  A host starting on gen 1 went (1,1) ->
    (1,2) -> (3,2), X split (the second attack); now one switch to (3,2)."""
    one, two, three = gens(1), gens(2), gens(3)
    d2, d3 = publish(redis_server.url, two), publish(redis_server.url, three)
    later = Group("ba9876543210", ("reward",)) if then == "release" else None
    with Fleet(redis_server.url) as f:  # the fleet's state before the host comes
        f.set_desired("reward", [Rule({}, d3["reward"], release=later)])
        f.set_desired("drops", group_rules(d2)["drops"])
    watching: list[Any] = []

    def setup(h: Host) -> None:  # both on gen 1, watched, before the agent's first look
        h.load(one["drops"])
        h.load(one["reward"])
        watching.append(player(h))
        watching.append(watching[0].__enter__())

    cluster.add("a", {"role": "game"}, setup=setup)
    h = cluster.hosts["a"]
    try:
        wait_for(lambda: gen_of(h) == (3, 2), what="one switch to (3, 2)")
        time.sleep(0.2)
    finally:
        watching[0].__exit__(None, None, None)
    seen = watching[1]
    assert seen == [(1, 1), (3, 2)], seen


def test_a_rollback_by_history_of_a_plugin_a_release_moved_is_refused(
    redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    """The history has no step for a release: `fleet rollback reward` took
    reward to the build before the last rollout, apart from drops (the second
    attack's G6).  Refused, saying how to take the release back; nothing
    written."""
    d2 = publish(redis_server.url, gens(2))
    with Fleet(redis_server.url) as f:
        f.set_desired("reward", group_rules(d2)["reward"])
        rev = f.desired("reward")[0]
        with pytest.raises(FleetError, match=r"release 0123456789ab moved it last.*release of"):
            f.rollback("reward", step_timeout=5)
        assert f.desired("reward")[0] == rev


def test_a_group_one_build_of_which_fails_changes_nothing_and_says_why_for_each(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    one, two = gens(1), gens(2)
    d2 = publish(redis_server.url, two)
    redis_server.client().delete(f"hotload:blob:{d2['drops']}")  # its bytes are gone
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    h = cluster.hosts["a"]
    h.load(one["drops"])
    rules = group_rules(d2)
    r = redis_server.client()
    with player(h) as seen, Fleet(redis_server.url) as f:
        for n in NAMES:
            f.set_desired(n, rules[n])

        def failed() -> dict[str, Any]:
            raw = {n: r.hget("hotload:report:a", n) for n in NAMES}
            reps = {n: json.loads(v) for n, v in raw.items() if v}
            return reps if all(v["state"] == "failed" for v in reps.values()) and reps else {}

        reps = wait_for(failed, what="both reported failed")
        time.sleep(0.4)  # a few syncs more: not retried, not applied in part
    assert seen == [(1, 1)], seen
    for n in NAMES:
        assert f"release {RID}:" in reps[n]["error"], reps[n]
        assert "not in Redis" in reps[n]["error"] and "none of its plugins" in reps[n]["error"]


def test_a_garbled_member_keeps_the_group_as_it_runs(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    one, two = gens(1), gens(2)
    d2 = publish(redis_server.url, two)
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    h = cluster.hosts["a"]
    h.load(one["drops"])
    rules = group_rules(d2)
    r = redis_server.client()
    with player(h) as seen, Fleet(redis_server.url) as f:
        f.set_desired("reward", rules["reward"])
        r.hset("hotload:desired", "drops", b"\xff{garbage" * 1000)  # a keyless writer
        r.incr("hotload:gen")
        r.publish("hotload:wake", "x")
        time.sleep(0.8)
    assert seen == [(1, 1)], seen


@pytest.mark.parametrize(
    "bad",
    [
        "not a dict",
        {"id": RID},
        {"id": "XYZ", "plugins": ["reward"]},
        {"id": RID, "plugins": "reward"},
        {"id": RID, "plugins": []},
        {"id": RID, "plugins": ["reward"] * 2},
        {"id": RID, "plugins": [f"p{i}" for i in range(10_000)]},
        {"id": RID, "plugins": ["bad name!"]},
        {"id": RID, "plugins": ["drops"]},  # a group that does not hold this plugin
        {"id": RID, "plugins": ["reward"], "extra": 1},
    ],
)
def test_a_malformed_release_in_a_rule_is_refused(bad: Any) -> None:
    rec = {"rev": 1, "rules": [{"match": {}, "digest": "a" * 64, "release": bad}]}
    with pytest.raises(FleetError, match="release"):
        parse_desired_record(json.dumps(rec).encode(), "reward")


def test_a_rule_with_a_release_round_trips_and_one_without_is_unchanged() -> None:
    from hotload.fleet._schema import rules_json

    g = Group(RID, ("reward", "drops"))
    out = rules_json([Rule({}, "a" * 64, release=g), Rule({"x": "y"}, None)])
    assert out == [
        {"match": {}, "digest": "a" * 64, "release": {"id": RID, "plugins": ["reward", "drops"]}},
        {"match": {"x": "y"}, "digest": None},  # as signed before releases: byte for byte
    ]
    _, _, rules = parse_desired_record(json.dumps({"rev": 1, "rules": out}).encode(), "reward")
    assert rules[0].release == g and rules[1].release is None


@pytest.mark.soak  # ~2 s: a real release's lead
def test_a_cancel_in_the_last_moment_and_a_deadline_too_close_are_refused(
    cluster: Cluster, redis_server: RedisServer, gens: Callable[[int], dict[str, Path]]
) -> None:
    one, two = gens(1), gens(2)
    d2 = publish(redis_server.url, two)
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    with Fleet(redis_server.url) as f:
        at = time.time() + 1.5
        with pytest.raises(FleetError, match="at least 0.25 s before the time"):
            f.release(d2, at=at, deadline=at - 0.1, wait=False)
        assert not redis_server.client().hlen("hotload:releases")  # nothing written
        rid = f.release(d2, at=at, deadline=at - 0.5, wait=False)["id"]
        time.sleep(max(0.0, at - CANCEL_MARGIN + 0.02 - time.time()))
        with pytest.raises(FleetError, match="too late to cancel"):
            f.cancel_release(rid, "the last moment")
        wait_for(lambda: reports(redis_server.url, rid).get("a", {}).get("state") == "switched")
    assert gen_of(cluster.hosts["a"]) == (2, 2)


def test_release_lines_print_no_escape_sequence() -> None:
    rec = {
        "id": RID,
        "state": "planned",
        "builds": {"reward": "a" * 64},
        "at": time.time() - 10,
        "hosts": {"a\x1b[2J": {"state": "failed", "error": "drops: \x1b[2J\x1b[Hok\x07"}},
    }
    text = "\n".join(release_lines([rec]))
    assert "\x1b" not in text and "\x07" not in text and "?[2J" in text


def test_what_a_release_holds_is_kept_across_restarts_and_only_rises(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from hotload.fleet._guard import Guard
    from hotload.fleet._signing import public_hex

    pub = public_hex(Ed25519PrivateKey.generate())
    kw: dict[str, Any] = {"fleet": "f", "where": "w", "embedded": False, "state_dir": tmp_path}
    g = Guard(public_key=pub, **kw)
    g.hold(["reward", "drops"], 7)
    g.hold(["reward"], 5)  # an older release: nothing changes
    assert Guard(public_key=pub, **kw).held() == {"reward": 7, "drops": 7}  # a new process
    g.hold(["drops"], 9)
    assert Guard(public_key=pub, **kw).held() == {"reward": 7, "drops": 9}
    insecure = Guard(insecure=True, **kw)  # in memory only
    insecure.hold(["reward"], 3)
    assert insecure.held() == {"reward": 3} and Guard(insecure=True, **kw).held() == {}
