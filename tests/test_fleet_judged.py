"""Issue 22 item 3: the fleet bake is judged.  Each step's hosts take the new
build as an in-host canary beside the build they run, judged on the same
traffic, and a host is live on the step only once its judge promoted the
build.  A build that fails 1 % of its host-service calls, or crashes its
isolated worker on some inputs (the newcomer's case: it passed preflight,
went live on the canaries and the rollout widened), is aborted by the judge
on the first hosts, and the rollout reverts everywhere with the judge's
verdict as its reason.  Real Redis, real hosts and agents, real compiled
plugins; the hostile-input tests feed the new report and rule fields junk."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotload import FleetError, Host, PluginCrashedError
from hotload._cli.fleet import render_status
from hotload._errors import RolloutFailed
from hotload.fleet import Fleet, Rule
from hotload.fleet._canary import parse_report
from hotload.fleet._schema import CanaryPlan, parse_desired_record
from hotload.fleet._signing import decision, public_hex, sign_decision, verify_decision
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    cluster,
    fleet_key,
    redis_server,
)

from conftest import Compile, run_guarded, wait_for

REWARD = r"""
#include <hotload.h>
#include <stdint.h>
HOTLOAD_PLUGIN("reward", "VERSION");
HOTLOAD_IMPORT(audit, int32_t, (int64_t));
/* MULT tells the builds apart; FAIL: the audit of every 100th player fails (a
   host service that refuses: 1% of the calls); CRASH: every positive player
   id crashes it */
HOTLOAD_API int64_t reward(int64_t player, int32_t level)
{
    if (CRASH && player > 0) { volatile int *p = 0; *p = 1; }
    if (audit) audit(FAIL && player % 100 == 42 ? -1 : player);
    return player * MULT + level;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
"""


def _audit(player: int) -> int:
    if player < 0:
        raise ValueError("audit refused")
    return 0


@pytest.fixture
def reward(cc: Compile, tmp_path: Path) -> Callable[..., tuple[Path, str]]:
    """``reward(mult, fail=0, crash=0)`` -> (the build, its digest)."""

    def build(mult: int, *, fail: int = 0, crash: int = 0) -> tuple[Path, str]:
        src = (
            REWARD.replace("VERSION", f"{mult}.{fail}.{crash}")
            .replace("MULT", str(mult))
            .replace("FAIL", str(fail))
            .replace("CRASH", str(crash))
        )
        path = cc(src, f"reward_{mult}_{fail}_{crash}")
        return path, hashlib.sha256(path.read_bytes()).hexdigest()

    return build


def _serve(host: Host) -> None:
    host.provide("audit", _audit, "int32_t(int64_t)", error=-1)


@pytest.fixture
def players(cluster: Cluster) -> Iterator[Callable[[str], None]]:
    """``players(host_id)``: a thread calling ``reward`` on that host for
    players 0..9999, round and round, until the test ends."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def play(host_id: str) -> None:
        host = cluster.hosts[host_id]

        def loop() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    host.plugin("reward").reward(i % 10000, 1)
                except PluginCrashedError:
                    time.sleep(0.001)
                if i % 64 == 0:
                    time.sleep(0)  # let the agents and the judge run

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        threads.append(t)
        wait_for(lambda: host.current("reward").served > 500, what=f"{host_id} serving")  # type: ignore[union-attr]

    yield play
    stop.set()
    for t in threads:
        t.join(10)


def _add(cluster: Cluster, host_id: str, labels: dict[str, str], build: Path, **kw: Any) -> None:
    cluster.add(host_id, labels, start_with=build, setup=_serve, **kw)


def _report(f: Fleet, host_id: str) -> dict[str, Any]:
    return next((h["plugins"].get("reward", {}) for h in f.hosts() if h["id"] == host_id), {})


# ---- end to end -----------------------------------------------------------------------


def test_a_build_failing_1_percent_is_aborted_by_the_judge_and_the_fleet_reverts(
    cluster: Cluster, redis_server: RedisServer, reward, players
) -> None:  # type: ignore[no-untyped-def]
    v1, d1 = reward(2)
    bad, dbad = reward(3, fail=1)
    _add(cluster, "canary-1", {"role": "canary"}, v1)
    _add(cluster, "main-1", {}, v1)
    players("canary-1")
    players("main-1")
    progress: list[str] = []
    with Fleet(redis_server.url) as f:
        f.publish(bad)
        with pytest.raises(RolloutFailed) as failed:
            f.rollout(
                "reward", dbad, canary="role=canary", bake=30, poll=0.05, progress=progress.append
            )
        rec = f.rollout_record("reward")
        canary = _report(f, "canary-1").get("canary") or {}
        text = render_status(f.status("reward"))
    assert rec is not None and rec["state"] == "aborted"
    # the reason is the judge's verdict on the host, naming the figure and the test
    assert "canary-1: aborted by the judge" in rec["reason"], rec["reason"]
    assert "regression in errors" in rec["reason"] and "two-proportion" in rec["reason"]
    assert "regression in errors" in str(failed.value)
    assert not any("step 2/" in line for line in progress), progress
    assert canary["state"] == "aborted" and canary["digest"] == dbad
    assert canary["candidate"]["service_errors"] > 0 and canary["baseline"]["error_rate"] == 0
    assert "canary-1 reward" in text and "canary aborted" in text, text
    assert cluster.live("canary-1", "reward") == d1 and cluster.live("main-1", "reward") == d1
    assert cluster.hosts["main-1"].versions("reward")[-1].seq == 1  # it never got the build


def test_a_build_that_crashes_on_some_inputs_is_aborted_on_the_canary(
    cluster: Cluster, redis_server: RedisServer, reward, players
) -> None:  # type: ignore[no-untyped-def]
    """The newcomer's case: an isolated build whose ``reward`` segfaults on
    every positive player id passes preflight (nothing calls it there) and
    loads; at 5 % of the players, the judge aborts it at its first look."""
    v1, d1 = reward(2)
    bad, dbad = reward(3, crash=1)
    _add(cluster, "canary-1", {"role": "canary"}, v1, isolate=True)
    _add(cluster, "main-1", {}, v1, isolate=True)
    players("canary-1")
    with Fleet(redis_server.url) as f:
        f.publish(bad)
        with pytest.raises(RolloutFailed):
            f.rollout("reward", dbad, canary="role=canary", bake=30, share=0.05, poll=0.05)
        rec = f.rollout_record("reward")
    assert rec is not None and "regression in crashes" in rec["reason"], rec
    wait_for(lambda: cluster.live("canary-1", "reward") == d1, what="canary-1 on the old build")
    assert cluster.live("main-1", "reward") == d1
    assert cluster.hosts["canary-1"].plugin("reward").reward(5, 1) == 11  # the old build serves


def test_a_good_build_bakes_through_and_every_host_promotes_it(
    cluster: Cluster, redis_server: RedisServer, reward, players
) -> None:  # type: ignore[no-untyped-def]
    """Each host's judge promotes the build after the bake; an idle host
    (no traffic, so nothing to judge but crashes) is promoted by its agent
    after the bake, saying so; the step does not bake a second time."""
    v1, _ = reward(2)
    v2, d2 = reward(4)
    _add(cluster, "canary-1", {"role": "canary"}, v1)
    _add(cluster, "main-1", {}, v1)
    _add(cluster, "idle-1", {}, v1)
    players("canary-1")
    players("main-1")
    progress: list[str] = []
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        rec = f.rollout(
            "reward",
            d2,
            canary="role=canary",
            bake=1.0,
            share=0.5,
            poll=0.05,
            progress=progress.append,
        )
        reports = {h: _report(f, h) for h in ("canary-1", "main-1", "idle-1")}
        text = render_status(f.status("reward"))
    assert rec["state"] == "done"
    assert all(cluster.live(h, "reward") == d2 for h in reports)
    for host_id, rep in reports.items():
        assert rep["canary"]["state"] == "promoted" and rep["canary"]["digest"] == d2, host_id
    assert reports["canary-1"]["canary"]["verdict"].startswith("promoted by the judge")
    assert reports["idle-1"]["canary"]["verdict"].startswith("promoted by the fleet agent")
    assert any("promoted by their in-host judge" in line for line in progress), progress
    assert not any("baking" in line for line in progress), progress
    assert "canary promoted, 50% of keys" in text, text
    assert cluster.hosts["canary-1"].plugin("reward").reward(5, 1) == 21


def test_a_service_that_fails_now_and_then_for_both_builds_does_not_fail_the_step(
    cluster: Cluster, redis_server: RedisServer, reward, players
) -> None:  # type: ignore[no-untyped-def]
    """A host service that raises for 1 player in 100 whatever the build (an
    offline player, a full inventory): the judge sees the same rate on both
    sides and promotes, and the step's health gate does not count those
    failures against the new build (it did: no such game could finish a
    rollout)."""

    v1, _ = reward(2)
    v2, d2 = reward(4)
    _add(cluster, "canary-1", {"role": "canary"}, v1)
    cluster.hosts["canary-1"].provide(
        "audit", lambda p: _audit(-1 if p % 100 == 7 else p), "int32_t(int64_t)", error=-1
    )
    players("canary-1")
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        rec = f.rollout("reward", d2, canary="role=canary", bake=1.5, poll=0.05)
        rep = _report(f, "canary-1")
    assert rec["state"] == "done", rec
    assert rep["canary"]["verdict"].startswith("promoted by the judge"), rep["canary"]
    assert rep["canary"]["candidate"]["service_errors"] > 0  # it did fail, as the old one did
    assert cluster.live("canary-1", "reward") == d2


def test_a_canary_with_too_few_calls_to_judge_is_ended_by_its_agent(
    cluster: Cluster, redis_server: RedisServer, reward
) -> None:  # type: ignore[no-untyped-def]
    """A host whose few calls never reach the judge's minimum: its agent ends
    the canary after the bake; with a failed call among them it aborts (too
    few calls cannot clear a failing build), and the rollout reverts."""
    v1, d1 = reward(2)
    bad, dbad = reward(3, fail=1)
    _add(cluster, "quiet-1", {"role": "canary"}, v1)
    stop = threading.Event()

    def trickle() -> None:  # player 42, whose audit the bad build fails, 10 times a second
        while not stop.wait(0.1):
            cluster.hosts["quiet-1"].plugin("reward").reward(42, 1)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        with Fleet(redis_server.url) as f:
            f.publish(bad)
            with pytest.raises(RolloutFailed):
                f.rollout("reward", dbad, canary="role=canary", bake=1.0, poll=0.05)
            rec = f.rollout_record("reward")
    finally:
        stop.set()
        t.join(5)
    assert rec is not None and "aborted by the fleet agent after" in rec["reason"], rec
    assert "fewer than the judge's 100" in rec["reason"] and "failed" in rec["reason"]
    assert cluster.live("quiet-1", "reward") == d1


def test_a_busy_host_whose_keys_miss_the_share_does_not_promote_an_untried_build(
    cluster: Cluster, redis_server: RedisServer, reward
) -> None:  # type: ignore[no-untyped-def]
    """Found by an attacker: a host busy with ten players none of whose keys
    fall in a 5 % share gave the candidate no call, and its agent promoted
    the build as if the host were idle (a 500x slower build went live
    everywhere).  The agent now aborts such a canary, saying why."""
    from hotload._engine import split

    v1, d1 = reward(2)
    v2, d2 = reward(4)
    _add(cluster, "busy-1", {"role": "canary"}, v1)
    keys = [k for k in range(1000) if not split.to_canary(k, 0.05)][:10]
    stop = threading.Event()

    def play() -> None:
        p = cluster.hosts["busy-1"].plugin("reward")
        while not stop.is_set():
            for k in keys:
                p.reward(k, 1)
            time.sleep(0)

    t = threading.Thread(target=play, daemon=True)
    t.start()
    try:
        with Fleet(redis_server.url) as f:
            f.publish(v2)
            with pytest.raises(RolloutFailed):
                f.rollout("reward", d2, canary="role=canary", bake=1.0, share=0.05, poll=0.05)
            rec = f.rollout_record("reward")
    finally:
        stop.set()
        t.join(5)
    assert rec is not None and "the build was not judged" in rec["reason"], rec["reason"]
    assert "the candidate had 0 call(s)" in rec["reason"]
    assert cluster.live("busy-1", "reward") == d1


@pytest.mark.soak  # in make test-slow: make test's 300 s budget
def test_a_build_its_judge_aborted_is_not_tried_again_in_later_steps(
    cluster: Cluster, redis_server: RedisServer, reward, players
) -> None:  # type: ignore[no-untyped-def]
    """With a failure budget the rollout goes on past the aborted host, and
    every later step writes a new decision that still names the build for
    it: the host reports the verdict again, never a second canary of it."""
    v1, d1 = reward(2)
    bad, dbad = reward(3, fail=1)
    _add(cluster, "canary-1", {"role": "canary"}, v1)
    _add(cluster, "idle-1", {}, v1)
    players("canary-1")
    with Fleet(redis_server.url) as f:
        f.publish(bad)
        rec = f.rollout("reward", dbad, canary="role=canary", bake=3.0, max_failures=1, poll=0.05)
        failed = _report(f, "canary-1")
    assert rec["state"] == "done" and "regression in errors" in rec["failures"]["canary-1"]
    assert failed["state"] == "failed" and failed["canary"]["state"] == "aborted"
    tried = [v for v in cluster.hosts["canary-1"].versions("reward") if v.digest == dbad]
    assert len(tried) == 1, tried
    assert cluster.live("canary-1", "reward") == d1 and cluster.live("idle-1", "reward") == dbad


def test_a_verdict_after_an_operator_aborted_changes_nothing(
    cluster: Cluster, redis_server: RedisServer, reward, players
) -> None:  # type: ignore[no-untyped-def]
    v1, d1 = reward(2)
    v2, d2 = reward(4)
    _add(cluster, "canary-1", {"role": "canary"}, v1)
    players("canary-1")
    with Fleet(redis_server.url) as f:
        f.publish(v2)

        def go() -> None:
            with Fleet(redis_server.url) as g:
                g.rollout("reward", d2, canary="role=canary", bake=60, poll=0.05)

        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: _catch(go, errors))
        t.start()
        wait_for(lambda: _report(f, "canary-1").get("state") == "canary", what="the canary")
        f.abort("reward")
        t.join(30)
        assert errors and "aborted by operator" in str(errors[0])
        wait_for(lambda: cluster.live("canary-1", "reward") == d1, what="back on the old build")
        (c,) = cluster.hosts["canary-1"].canaries(ended=True)
        assert c.state == "aborted" and "aborted by the fleet" in c.verdict
        before = f.rollout_record("reward")
        history = f.history("reward")
        # a verdict that comes late (here forged, as a late writer would): nothing moves
        late = dict(_report(f, "canary-1"))
        late.update(
            state="live", digest=d2, canary={"digest": d2, "state": "promoted", "verdict": "late"}
        )
        redis_server.client().hset("hotload:report:canary-1", "reward", json.dumps(late))
        time.sleep(1.0)
        assert f.rollout_record("reward") == before
        assert f.history("reward") == history and history[-1]["state"] == "aborted"
        assert before is not None and before["reason"] == "aborted by operator"
    assert cluster.live("canary-1", "reward") == d1


def _catch(fn: Callable[[], None], errors: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the test reads it
        errors.append(exc)


@pytest.mark.soak  # in make test-slow: make test's 300 s budget
def test_garbage_in_a_hosts_report_does_not_crash_the_controller(
    cluster: Cluster, redis_server: RedisServer, reward, players
) -> None:  # type: ignore[no-untyped-def]
    """A writer that should not be trusted keeps a host "ghost" alive in the
    canary step with junk for its report and its heartbeat's health: the
    controller never counts it live, the step times out naming it, and the
    rollout reverts; status reads all of it."""
    v1, d1 = reward(2)
    v2, d2 = reward(4)
    _add(cluster, "canary-1", {"role": "canary"}, v1)
    players("canary-1")
    stop = threading.Event()
    r = redis_server.client()
    junk = [b"\x00\xff", b"[1,2]", *(json.dumps(v).encode() for v in _JUNK_REPORTS(d2))]
    health: list[Any] = [None, "x", {"reward": {"seq": -1}}, {"reward": {"calls": "many"}}]

    def scribble() -> None:
        i = 0
        while not stop.is_set():
            beat = {"id": "ghost", "labels": {"role": "canary"}, "ttl": 7.5, "schema": 2}
            beat["health"] = health[i % len(health)]
            r.set("hotload:host:ghost", json.dumps(beat), px=7500)
            r.sadd("hotload:hosts", "ghost")
            r.hset("hotload:report:ghost", "reward", junk[i % len(junk)])
            r.publish("hotload:reports", "ghost reward")
            i += 1
            time.sleep(0.01)

    writer = threading.Thread(target=scribble, daemon=True)
    writer.start()
    try:
        wait_for(lambda: r.exists("hotload:host:ghost"), what="the ghost's heartbeat")
        with Fleet(redis_server.url) as f:
            f.publish(v2)
            with pytest.raises(RolloutFailed) as failed:
                run_guarded(
                    lambda: f.rollout(
                        "reward", d2, canary="role=canary", bake=0.5, step_timeout=2, poll=0.05
                    ),
                    what="the rollout",
                )
            text = render_status(f.status())  # and status shows whatever is there
    finally:
        stop.set()
        writer.join(5)
    assert "ghost: did not report" in str(failed.value), failed.value
    assert "ghost" in text
    wait_for(lambda: cluster.live("canary-1", "reward") == d1, what="back on the old build")


def _JUNK_REPORTS(digest: str) -> list[Any]:  # noqa: N802 - a table
    live = {"state": "live", "digest": digest, "rev": 2**62, "target": digest}
    return [
        {**live, "canary": "promoted"},
        {**live, "canary": {"digest": digest, "state": "promoted"}},  # no verdict: not trusted
        {**live, "canary": {"digest": digest, "state": "promoted", "verdict": "x", "share": 2}},
        {**live, "canary": {"digest": digest[:12], "state": "skipped", "verdict": "ok"}},
        {**live, "canary": [1]},
        {**live, "canary": None, "state": ["live"]},
        {"state": {"a": 1}, "rev": "9", "error": {"deep": [[[[]]]]}},
        {"state": "canary", "canary": {"candidate": "x"}},
    ]


# ---- hostile input: the new fields ---------------------------------------------------------

D = "ab" * 32
SIDE = {
    "calls": 10,
    "errors": 0,
    "crashes": 0,
    "service_errors": 0,
    "error_rate": 0.0,
    "p50_us": 1.0,
    "p99_us": None,
}
GOOD = {
    "digest": D,
    "state": "running",
    "verdict": "running: judged",
    "share": 0.05,
    "seconds": 1.5,
    "candidate": SIDE,
    "baseline": SIDE,
}


@pytest.mark.parametrize(
    "bad",
    [
        "x",
        [GOOD],
        {**GOOD, "digest": "AB" * 32},
        {**GOOD, "state": "done"},
        {**GOOD, "verdict": 7},
        {**GOOD, "verdict": "v" * 1001},
        {**GOOD, "share": 0},
        {**GOOD, "share": True},
        {**GOOD, "share": float("nan")},
        {**GOOD, "seconds": -1},
        {**GOOD, "seconds": float("inf")},
        {**GOOD, "candidate": None},
        {**GOOD, "candidate": {**SIDE, "calls": -1}},
        {**GOOD, "candidate": {**SIDE, "calls": 2**64}},
        {**GOOD, "candidate": {**SIDE, "calls": 1.5}},
        {**GOOD, "baseline": {**SIDE, "error_rate": 2}},
        {**GOOD, "baseline": {**SIDE, "p99_us": "fast"}},
        {**GOOD, "baseline": {**SIDE, "p99_us": 1e13}},
    ],
)
def test_a_malformed_canary_record_is_left_out_and_named(bad: Any) -> None:
    rec, why = parse_report(json.loads(json.dumps(bad)))
    assert rec is None and why is not None and why.startswith("canary:")


def test_a_well_formed_canary_record_keeps_only_its_fields() -> None:
    rec, why = parse_report({**GOOD, "extra": "x", "candidate": {**SIDE, "more": 1}})
    assert why is None and rec is not None
    assert "extra" not in rec and "more" not in rec["candidate"]
    assert parse_report({"digest": D, "state": "skipped", "verdict": "ran it"}) == (
        {"digest": D, "state": "skipped", "verdict": "ran it"},
        None,
    )


@pytest.mark.parametrize(
    "plan",
    [
        "1.0",
        [1],
        {"share": 0},
        {"share": 1.5},
        {"share": "5%"},
        {"key": -1},
        {"key": 64},
        {"key": True},
        {"bake": 0},
        {"bake": 1e9},
        {"bake": "30s"},
        {"share": 0.5, "run": "rm -rf /"},
    ],
)
def test_a_malformed_canary_plan_makes_the_record_invalid(plan: Any) -> None:
    rec = {"rev": 1, "rules": [{"match": {}, "digest": D, "canary": plan}]}
    with pytest.raises(FleetError, match="canary"):
        parse_desired_record(json.dumps(rec).encode(), "reward")


def test_a_plan_is_signed_with_its_rule_and_old_records_still_verify(fleet_key: Any) -> None:
    """A record signed before plans existed verifies unchanged (a rule without
    a plan signs as it always did); a plan changed after signing does not."""
    pub = fleet_key.public_key()
    old = [Rule({}, D)]
    body = {"rev": 5, "rules": [{"match": {}, "digest": D}]}
    body.update(sign_decision(fleet_key, "reward", 5, None, old))
    rec, rev, rules = parse_desired_record(json.dumps(body).encode(), "reward")
    assert rules == old and rules[0].canary is None
    verify_decision(pub, decision(rec, "reward", rev, rules), "reward")

    planned = [Rule({"role": "canary"}, D, CanaryPlan(0.05, 0, 30.0)), Rule({}, None)]
    body = {"rev": 6, "rules": [{"match": {"role": "canary"}, "digest": D,
                                 "canary": {"share": 0.05, "key": 0, "bake": 30.0}},
                                {"match": {}, "digest": None}]}  # fmt: skip
    body.update(sign_decision(fleet_key, "reward", 6, None, planned))
    rec, rev, rules = parse_desired_record(json.dumps(body).encode(), "reward")
    assert rules == planned
    verify_decision(pub, decision(rec, "reward", rev, rules), "reward")
    body["rules"][0]["canary"]["share"] = 1.0  # a writer without the key widens it
    rec, rev, rules = parse_desired_record(json.dumps(body).encode(), "reward")
    with pytest.raises(FleetError, match="does not verify"):
        verify_decision(pub, decision(rec, "reward", rev, rules), "reward")
    del body["rules"][0]["canary"]  # or drops the canary: a plain reload was not signed
    rec, rev, rules = parse_desired_record(json.dumps(body).encode(), "reward")
    with pytest.raises(FleetError, match="does not verify"):
        verify_decision(pub, decision(rec, "reward", rev, rules), "reward")
    assert public_hex(fleet_key)


# ---- the rollout record is sealed ------------------------------------------------------


def _forged(evil: str, good: str, host_ids: list[str], **over: Any) -> dict[str, Any]:
    """A running rollout record as a Redis writer without the key would write
    one: its rules to go back to, or its build, name a build of the writer's."""
    rec = {
        "id": "forged000001", "revision": 7, "from_revision": 0, "plugin": "reward",
        "digest": good, "version": "x", "prev_rules": [{"match": {}, "digest": evil}],
        "steps": [{"role": "canary"}, {}], "step": 0, "phase": "bake", "bake": 1.0,
        "share": 1.0, "key": 0, "max_failures": 0, "on_gone": "fail", "step_timeout": 10.0,
        "gone_grace": 5.0, "state": "running", "failures": {}, "members": host_ids,
        "expected": host_ids, "started_at": time.time(), "owner": "dead:1",
    }  # fmt: skip
    rec.update(over)
    return rec


def test_an_operators_abort_or_resume_never_signs_a_record_a_redis_writer_forged(
    cluster: Cluster, redis_server: RedisServer, reward
) -> None:  # type: ignore[no-untyped-def]
    """Found by an attacker: abort and resume signed decisions from the
    rollout record's fields (the rules to go back to, the build), and the
    record was not signed, so a Redis writer got the operator's key to sign
    its own build onto every host.  The controller now seals the record with
    the fleet's key and refuses one without a valid seal; a real rollout's
    record (sealed at every save) still resumes."""
    v1, d1 = reward(2)
    evil, devil = reward(666)  # never published by the operator
    _add(cluster, "canary-1", {"role": "canary"}, v1)
    _add(cluster, "main-1", {}, v1)
    r = redis_server.client()
    r.set(f"hotload:blob:{devil}", evil.read_bytes())
    forged = [
        _forged(devil, d1, ["canary-1", "main-1"]),  # abort would go back to the writer's build
        _forged(d1, devil, ["canary-1"], prev_rules=[{"match": {}, "digest": d1}], steps=[{}]),
    ]
    with Fleet(redis_server.url) as f:
        for rec in forged:
            r.set("hotload:rollout:reward", json.dumps(rec))
            with pytest.raises(FleetError, match="not sealed by this fleet's signing key"):
                f.abort("reward", wait=5)
            with pytest.raises(FleetError, match="not sealed by this fleet's signing key"):
                f.resume("reward", poll=0.05)
            # a controller's own record with one field changed: refused the same
            sealed = dict(rec, prev_rules=[{"match": {}, "digest": d1}], digest=d1)
            f.save_rollout(sealed)
            raw = json.loads(r.get("hotload:rollout:reward"))
            raw["prev_rules"] = [{"match": {}, "digest": devil}]
            r.set("hotload:rollout:reward", json.dumps(raw))
            with pytest.raises(FleetError, match="not sealed"):
                f.abort("reward", wait=5)
    time.sleep(0.3)  # a heartbeat: no host may have taken anything
    assert cluster.live("canary-1", "reward") == d1 and cluster.live("main-1", "reward") == d1
