"""Issue 23's fourth attack on fleet releases (R8, R2, R7): a canary host
that (re)starts during the bake, a cancel while a host is still staging,
and a newer decision for other hosts blocking a late host.  In-process
hosts and agents on a real redis-server; signed plans written as a
controller writes them."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
from redis import Redis

from hotload.fleet import Fleet
from hotload.fleet._release_ctl import ReleaseController
from hotload.fleet._release_plan import Plan, releases_key, sign
from hotload.fleet._schema import Keys, new_id
from test_fleet import Cluster, RedisServer, cluster, fleet_key, redis_server  # noqa: F401
from test_fleet_release import gens, publish, reports  # noqa: F401  (fixtures)
from test_fleet_release_group import gen_of, player
from test_fleet_release_overlap import write_plan

from conftest import wait_for

KEYS = Keys("hotload:")


def _canary_plan(url: str, key: Any, digests: dict[str, str], bake: float) -> tuple[Redis, Plan]:
    """A canary plan whose canaries switched a second ago (its bake running)."""
    r = Redis.from_url(url)
    now = time.time()
    rev = max(int(r.get("hotload:gen") or 0) + 1, int(now * 1000))
    at = now - 1.0
    plan = sign(key, Plan(new_id(), rev, tuple(digests.items()), at, at - 1.0, {},
                          canary={"match": {"role": "canary"}, "bake": bake}))  # fmt: skip
    r.hset(releases_key(KEYS), plan.id, plan.record())
    r.set("hotload:gen", rev)
    return r, plan


def _start_canary(cluster: Cluster, one: dict[str, Any]) -> None:
    def setup(h: Any) -> None:
        h.load(one["drops"])
        h.load(one["reward"])

    cluster.add("c", {"role": "canary"}, setup=setup)


def test_a_canary_host_starting_in_the_bake_waits_and_keeps_nothing_aborted(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """R8. Before: c took the canary plan as a late decision, unjudged, and
    kept (2, 2) after the abort, reporting ``cancelled``."""
    one = gens(1)
    r, plan = _canary_plan(redis_server.url, fleet_key, publish(redis_server.url, gens(2)), 30.0)
    _start_canary(cluster, one)
    wait_for(lambda: "c" in cluster.hosts, what="c joined")
    time.sleep(1.0)  # its agent synced (a host joins with one): nothing taken in the bake
    assert gen_of(cluster.hosts["c"]) == (1, 1)
    aborted = sign(fleet_key, dataclasses.replace(plan, rev=plan.rev + 5, state="aborted",
                                                  reason="canary b regressed"))  # fmt: skip
    r.hset(releases_key(KEYS), plan.id, aborted.record())
    r.set("hotload:gen", plan.rev + 5)
    r.publish("hotload:wake", "x")
    wait_for(lambda: reports(redis_server.url, plan.id).get("c"), what="c's report")
    time.sleep(0.3)
    assert gen_of(cluster.hosts["c"]) == (1, 1)
    assert reports(redis_server.url, plan.id)["c"]["state"] == "cancelled"


@pytest.mark.soak  # ~4 s: a bake to wait out
def test_a_canary_host_starting_in_the_bake_takes_it_once_the_bake_passed(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """R8: the late canary host switches with the other hosts, at the bake's end."""
    one = gens(1)
    _, plan = _canary_plan(redis_server.url, fleet_key, publish(redis_server.url, gens(2)), 3.0)
    _start_canary(cluster, one)
    wait_for(lambda: "c" in cluster.hosts, what="c joined")
    time.sleep(0.8)
    assert gen_of(cluster.hosts["c"]) == (1, 1)
    assert time.time() < plan.last
    wait_for(lambda: gen_of(cluster.hosts["c"]) == (2, 2), timeout=10, what="c after the bake")
    assert time.time() >= plan.last
    rep = wait_for(lambda: reports(redis_server.url, plan.id).get("c"), what="c's report")
    assert rep["state"] == "switched" and rep.get("late"), rep


@pytest.mark.soak  # ~4 s each: a release's lead
@pytest.mark.parametrize("done_at", [-0.03, 0.3])  # staging ends this long after the time
def test_a_cancel_while_a_host_is_staging_waits_for_it_and_it_does_not_switch(
    cluster: Cluster, redis_server: RedisServer, gens: Any, done_at: float
) -> None:
    """R2. Before: the cancel said "cancelled on every host" at once (a had
    reported nothing yet), then a finished staging and switched: 30 ms
    before the time (its agent had not read the plan again), or after it
    (its timer's re-check was set only after the timer started)."""
    one, two = gens(1), gens(2)
    d2 = publish(redis_server.url, two)
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    a = cluster.hosts["a"]
    a.load(one["drops"])
    agent = cluster.agents["a"]
    real_build = agent._build
    at = time.time() + 2.0

    def slow_build(name: str, digest: str) -> Any:  # a slow fetch of the release's first build
        if name == "reward" and digest == d2["reward"]:
            time.sleep(max(0.0, at + done_at - time.time()))
        return real_build(name, digest)

    agent._build = slow_build  # type: ignore[method-assign]
    said: list[str] = []
    with player(a) as seen, Fleet(redis_server.url) as f:
        rid = f.release(d2, at=at, deadline=at - 1.0, wait=False)["id"]
        time.sleep(0.5)  # a is staging now
        out = ReleaseController(f, progress=said.append).cancel(rid, "stop it")
        rep = reports(redis_server.url, rid).get("a", {})
        time.sleep(max(0.0, at + 1.0 - time.time()))
    assert (2, 2) not in seen, seen
    assert gen_of(a) == (1, 1)
    assert not out.get("unconfirmed"), out
    assert any("cancelled on every host" in s for s in said), said
    assert rep.get("state") == "cancelled", rep  # confirmed before it said so


def _adopt(f: Fleet, plan: Plan, hosts: str) -> list[str]:
    """What a release's controller does at the end of its wait."""
    rec = {"id": plan.id, "plan": plan.record(), "builds": plan.digests, "hosts": hosts}
    return ReleaseController(f, progress=lambda _: None)._adopt(rec)


def test_a_release_for_other_hosts_does_not_block_a_late_host(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """R7: X (both plugins, every host) --no-wait, then Y (drops) for the eu
    hosts, adopted.  Before: Y's desired state, with no rule for a us host,
    counted there as a newer decision on drops; a us host that came late
    stayed on (1, 1) for good while the us hosts on time ran (2, 2)."""
    one, two, three = gens(1), gens(2), gens(3)
    d2, d3 = publish(redis_server.url, two), publish(redis_server.url, three)
    now = time.time()
    write_plan(redis_server.url, fleet_key, d2, now - 3)  # X, its time past
    y = write_plan(redis_server.url, fleet_key, {"drops": d3["drops"]}, now - 2,
                   match={"region": "eu"})  # fmt: skip
    with Fleet(redis_server.url) as f:
        assert _adopt(f, y, "region=eu") == []
    _start(cluster, "b", {"role": "game", "region": "us"}, one)
    wait_for(lambda: gen_of(cluster.hosts["b"]) == (2, 2), timeout=5, what="b on X")


def test_a_release_adopted_after_a_newer_one_for_some_hosts_keeps_the_rest(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """R7: X (both, every host) and Y (drops, region=eu, published after X)
    both waited; Y's controller adopted first.  Before: X's adoption skipped
    drops altogether (Y's rule is newer), so a us host had no rule of drops
    and a late one stayed on (1, 1).  Now X's rule of drops is written after
    Y's: the eu hosts keep Y's, every other host gets X's."""
    one, two, three = gens(1), gens(2), gens(3)
    d2, d3 = publish(redis_server.url, two), publish(redis_server.url, three)
    now = time.time()
    x = write_plan(redis_server.url, fleet_key, d2, now - 3)
    y = write_plan(redis_server.url, fleet_key, {"drops": d3["drops"]}, now - 4,
                   match={"region": "eu"})  # fmt: skip
    with Fleet(redis_server.url) as f:
        assert _adopt(f, y, "region=eu") == []
        assert _adopt(f, x, "*") == []
        rules = f.desired("drops")[1]
    assert [(r.match, r.digest) for r in rules] == [
        ({"region": "eu"}, d3["drops"]), ({}, d2["drops"])
    ]  # fmt: skip
    _start(cluster, "b", {"role": "game", "region": "us"}, one)
    _start(cluster, "e", {"role": "game", "region": "eu"}, one)
    wait_for(lambda: gen_of(cluster.hosts["b"]) == (2, 2), timeout=5, what="b on X")
    wait_for(lambda: gen_of(cluster.hosts["e"]) == (2, 3), timeout=5, what="e on X + Y")


def _start(cluster: Cluster, name: str, labels: dict[str, str], one: dict[str, Any]) -> None:
    def setup(h: Any) -> None:
        h.load(one["drops"])
        h.load(one["reward"])

    cluster.add(name, labels, setup=setup)


def test_a_no_wait_release_is_adopted_before_its_plan_is_cleaned_out(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """R4: a --no-wait release (its plan the only record of it) past its time;
    the fleet's earlier desired state is gen 1.  Before: cleaning out the
    plan (or its expiry) left the hosts on time on (2, 2) and a host started
    afterwards on (1, 1), for good.  Now the clean-out adopts it first."""
    from hotload.fleet._release_ctl import GRACE
    from hotload.fleet._schema import Rule

    one, two = gens(1), gens(2)
    d1, d2 = publish(redis_server.url, one), publish(redis_server.url, two)
    with Fleet(redis_server.url) as f:
        for n in ("reward", "drops"):
            f.set_desired(n, [Rule({}, d1[n])])
    x = write_plan(redis_server.url, fleet_key, d2, time.time() - 1.0)  # --no-wait, time past
    _start(cluster, "a", {"role": "game"}, one)
    wait_for(lambda: gen_of(cluster.hosts["a"]) == (2, 2), timeout=5, what="a on X")
    with Fleet(redis_server.url) as f:
        gone = ReleaseController(f).prune(keep=0, now=time.time() + GRACE + 1)
        assert gone == [x.id]
        assert {n: f.desired(n)[1][0].digest for n in ("reward", "drops")} == d2
    _start(cluster, "b", {"role": "game"}, one)
    wait_for(lambda: gen_of(cluster.hosts["b"]) == (2, 2), timeout=5, what="b on X")
    assert gen_of(cluster.hosts["a"]) == (2, 2)


def test_a_rollout_after_a_no_wait_release_starts_from_it(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """R1: a rollout of drops after a --no-wait release X of both.  Before:
    its previous rules were from before X (X's plan is no desired state),
    and the hosts outside its canary went to (reward 2, drops 1), a pair no
    decision made.  Now the rollout adopts X first."""
    from hotload.fleet._schema import Rule

    one, two, three = gens(1), gens(2), gens(3)
    d1, d2, d3 = (publish(redis_server.url, g) for g in (one, two, three))
    with Fleet(redis_server.url) as f:
        for n in ("reward", "drops"):
            f.set_desired(n, [Rule({}, d1[n])])
    write_plan(redis_server.url, fleet_key, d2, time.time() - 1.0)  # --no-wait, time past
    _start(cluster, "a", {"role": "game"}, one)
    _start(cluster, "c", {"role": "canary"}, one)
    a = cluster.hosts["a"]
    wait_for(lambda: gen_of(a) == (2, 2) and gen_of(cluster.hosts["c"]) == (2, 2), timeout=5)
    with player(a) as seen, Fleet(redis_server.url) as f:
        rec = f.rollout("drops", d3["drops"], canary="role=canary", bake=0, step_timeout=20,
                        poll=0.2)  # fmt: skip
        assert [r["digest"] for r in rec["prev_rules"]] == [d2["drops"]], rec["prev_rules"]
        wait_for(lambda: gen_of(a) == (2, 3), timeout=5, what="a on the rollout")
    assert (2, 1) not in seen, seen


def test_adopting_an_older_release_does_not_outrank_a_newer_plan(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """A new user's run: a --no-wait release X of both plugins, past its
    time, then a release Y of reward alone; X adopted after Y's plan was
    written (``fleet release`` publishes, then adopts).  Before: the adopted
    desired states took a rev of now, above Y's plan, so every host went to
    (3, 2) at Y's time, then back to X's (2, 2) a moment later, and a late host
    took (2, 2) too.  Now X's desired states carry X's own rev: Y stays newer."""
    from hotload.fleet._schema import Rule

    one, two, three = gens(1), gens(2), gens(3)
    d1, d2, d3 = (publish(redis_server.url, g) for g in (one, two, three))
    with Fleet(redis_server.url) as f:
        for n in ("reward", "drops"):
            f.set_desired(n, [Rule({}, d1[n])])
    x = write_plan(redis_server.url, fleet_key, d2, time.time() - 1.0)  # --no-wait, time past
    _start(cluster, "a", {"role": "game"}, one)
    a = cluster.hosts["a"]
    wait_for(lambda: gen_of(a) == (2, 2), timeout=5, what="a on X")
    y = write_plan(redis_server.url, fleet_key, {"reward": d3["reward"]}, time.time() + 1.0)
    with Fleet(redis_server.url) as f:
        assert f.adopt_releases() == set()
        desired = {n: f.desired(n) for n in ("reward", "drops")}
    wait_for(lambda: gen_of(a) == (3, 2), timeout=5, what="a on Y's reward with X's drops")
    time.sleep(1.0)  # the agent's next syncs: nothing takes Y's reward back
    assert gen_of(a) == (3, 2)
    _start(cluster, "b", {"role": "game"}, one)
    wait_for(lambda: gen_of(cluster.hosts["b"]) == (3, 2), timeout=5, what="b, late")
    assert all(rev == x.rev < y.rev for rev, _ in desired.values()), (desired, y.rev)


def test_a_waited_release_over_a_staged_one_waits_for_it_then_switches(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """A new user's run: a release Y of reward, waited for, published while
    a --no-wait release X of both is staged on the host.  Before: the host's
    "staged here for release X, which switches it first" was a ``failed``
    report and Y's controller cancelled it at once, though the page says the
    host tries Y again once X switched.  Now that refusal is ``waiting``: the
    controller waits up to its deadline, the host stages Y after X, both
    switch, each at its time."""
    from hotload.fleet._schema import Rule

    one, two, three = gens(1), gens(2), gens(3)
    d1, d2, d3 = (publish(redis_server.url, g) for g in (one, two, three))
    with Fleet(redis_server.url) as f:
        for n in ("reward", "drops"):
            f.set_desired(n, [Rule({}, d1[n])])
    _start(cluster, "a", {"role": "game"}, one)
    a = cluster.hosts["a"]
    wait_for(lambda: gen_of(a) == (1, 1), timeout=5, what="a on gen 1")
    write_plan(redis_server.url, fleet_key, d2, time.time() + 1.0)  # X, --no-wait
    wait_for(lambda: a.staged_releases(), timeout=5, what="X staged on a")
    with player(a) as seen, Fleet(redis_server.url) as f:
        rec = f.release({"reward": d3["reward"]}, at=time.time() + 3.5, poll=0.05)
        assert rec["state"] == "switched", rec
        wait_for(lambda: gen_of(a) == (3, 2), timeout=5, what="a on Y over X")
    assert set(seen) <= {(1, 1), (2, 2), (3, 2)}, seen
