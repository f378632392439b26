"""Fleet releases (issue 23 item 2): several plugins staged on every host and
switched at one instant, cancelled everywhere when one host cannot stage.

Real redis-server, real agents; the main end-to-end case and the restart
case run each host in its own process."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload import FleetError, Host
from hotload._errors import RolloutFailed
from hotload.fleet import Fleet
from hotload.fleet._release_plan import Plan, parse, releases_key, report_key, sign
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    cluster,
    fleet_key,
    redis_server,
)

from conftest import Lines, wait_for

NAMES = ("reward", "drops")

SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "GEN.0.0");
HOTLOAD_API int32_t generation(void) { return GEN; }
HOTLOAD_EXPORT(generation, int32_t, (void));
"""

HOST = textwrap.dedent(
    """
    import json, sys
    from hotload import Host

    url, name, work, *paths = sys.argv[1:]
    host = Host(work, preflight=False)
    for p in paths:
        host.load(p)
    host.join_fleet(url, {"role": "game"}, name=name, heartbeat=0.2, timeout=1.0)
    print("ready", flush=True)
    for line in sys.stdin:
        gens = {n: host[n].generation() for n in host.names()}
        staged = [r.as_dict() for r in host.staged_releases()]
        print("state", json.dumps({"gens": gens, "staged": staged}), flush=True)
    host.close()
    """
)


@pytest.fixture
def gens(cc: Any) -> Callable[[int], dict[str, Path]]:
    """``gens(n)``: generation ``n`` of every plugin of the release (its paths)."""

    def build(gen: int) -> dict[str, Path]:
        return {n: cc(SRC.replace("NAME", n).replace("GEN", str(gen)), f"{n}{gen}") for n in NAMES}

    return build


class HostProcess:
    """A host in its own process, started on generation-1 builds."""

    def __init__(self, tmp: Path, url: str, name: str, paths: dict[str, Path]) -> None:
        script = tmp / f"host-{name}.py"  # its own: rewriting one a host is reading races it
        script.write_text(HOST)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), url, name, str(tmp / f"w-{name}-{time.time_ns()}")]
            + [str(p) for p in paths.values()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = Lines(self.proc)

    def ready(self) -> HostProcess:
        self.lines.expect("^ready")
        return self

    def state(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.lines.expect("^state ").split(" ", 1)[1]))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def publish(url: str, paths: dict[str, Path]) -> dict[str, str]:
    with Fleet(url) as f:
        return {n: f.publish(p) for n, p in paths.items()}


def alive(url: str, n: int) -> None:
    with Fleet(url) as f:
        wait_for(lambda: sum(h["alive"] for h in f.hosts()) >= n, what=f"{n} hosts alive")


def reports(url: str, rid: str) -> dict[str, dict[str, Any]]:
    with Fleet(url) as f:
        return dict(f.release_status(rid)["hosts"])


def _states(reps: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {h: r["state"] for h, r in reps.items()}


def test_every_host_process_stages_then_switches_at_the_time(
    tmp_path: Path, redis_server: RedisServer, gens: Any
) -> None:
    one, two = gens(1), gens(2)
    digests = publish(redis_server.url, two)
    hosts = [HostProcess(tmp_path, redis_server.url, f"h{i}", one) for i in range(2)]
    try:
        for h in hosts:
            h.ready()
        alive(redis_server.url, 2)
        at = time.time() + 3.0
        with Fleet(redis_server.url) as f:
            rec = f.release(digests, at=at, deadline=at - 1.5, poll=0.05)
        assert rec["state"] == "switched", rec
        assert rec["switched"] == ["h0", "h1"]
        for h in hosts:
            assert h.state()["gens"] == {"drops": 2, "reward": 2}
        reps = reports(redis_server.url, rec["id"])
        for rep in reps.values():
            assert rep["state"] == "switched"
            assert rep["switched_ns"] >= int(at * 1e9)  # never before its time
        with Fleet(redis_server.url) as f:
            st = f.status()
        assert st["releases"][0]["id"] == rec["id"]
        # the release is adopted as each plugin's desired state: a later rollout starts there
        assert {n: d["rules"][0]["digest"] for n, d in st["desired"].items()} == digests
    finally:
        for h in hosts:
            h.close()


def test_one_host_that_cannot_stage_cancels_it_everywhere(
    cluster: Cluster, redis_server: RedisServer, gens: Any
) -> None:
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    cluster.add("b", {"role": "game"}, start_with=one["reward"])  # never takes drops
    at = time.time() + 3.0
    with Fleet(redis_server.url) as f, pytest.raises(RolloutFailed) as info:
        f.release(digests, at=at, poll=0.05)
    # a refusal that may pass (the application may load drops in a moment) is waited
    # for up to the deadline, then named with its cause
    assert "had not staged it by the deadline" in str(info.value)
    assert "b (drops: " in str(info.value), str(info.value)
    assert "does not take drops from the fleet" in str(info.value)
    wait_for(lambda: not cluster.hosts["a"].staged_releases(), what="a's staged release dropped")
    rid = info.value.record["id"]
    wait_for(lambda: reports(redis_server.url, rid).get("a", {}).get("state") == "cancelled")
    time.sleep(max(0.0, at - time.time()) + 0.3)  # past the time: nobody switched
    assert cluster.hosts["a"]["reward"].generation() == 1
    assert cluster.hosts["a"]["drops"].generation() == 1
    assert cluster.hosts["b"]["reward"].generation() == 1
    assert reports(redis_server.url, rid)["b"]["state"] == "cancelled"  # confirmed
    with Fleet(redis_server.url) as f:
        assert f.release_status(info.value.record["id"])["state"] == "cancelled"
        with pytest.raises(FleetError, match="already cancelled"):
            f.cancel_release(info.value.record["id"])


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_hosts_switch_with_redis_stopped_or_paused_before_the_time(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fault: str
) -> None:
    """A Redis gone (connections refused) or paused (a peer that stops
    answering: every call times out) at the time: the hosts switch anyway."""
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    for h in ("a", "b"):
        cluster.add(h, {"role": "game"}, start_with=one["reward"], plugins=["drops"])
        cluster.hosts[h].load(one["drops"])
    at = time.time() + 2.5
    with Fleet(redis_server.url) as f:
        rid = f.release(digests, at=at, wait=False)["id"]
    wait_for(lambda: _states(reports(redis_server.url, rid)) == {"a": "staged", "b": "staged"})
    handles = {h: cluster.hosts[h].staged_releases() for h in ("a", "b")}
    redis_server.stop() if fault == "stopped" else redis_server.pause()
    try:
        for h, (r,) in handles.items():
            assert r.wait(10) == "done"
            assert r.switched_ns is not None and r.switched_ns >= int(at * 1e9)
            assert [cluster.hosts[h][n].generation() for n in NAMES] == [2, 2]
    finally:
        if fault == "paused":
            redis_server.resume()


def test_a_host_restarted_before_the_time_stages_the_release_again(
    tmp_path: Path, redis_server: RedisServer, gens: Any
) -> None:
    one, two = gens(1), gens(2)
    digests = publish(redis_server.url, two)
    first = HostProcess(tmp_path, redis_server.url, "h0", one).ready()
    alive(redis_server.url, 1)
    at = time.time() + 4.0
    with Fleet(redis_server.url) as f:
        rid = f.release(digests, at=at, deadline=at - 1.0, wait=False)["id"]
    wait_for(lambda: reports(redis_server.url, rid).get("h0", {}).get("state") == "staged")
    first.kill()  # staged, then gone: its staged release died with it
    again = HostProcess(tmp_path, redis_server.url, "h0", one).ready()  # the old builds
    late: HostProcess | None = None
    try:
        staged = wait_for(lambda: again.state()["staged"], what="the restarted host staged")
        assert staged[0]["names"] == ["drops", "reward"]
        assert again.state()["gens"] == {"drops": 1, "reward": 1}
        wait_for(lambda: again.state()["gens"] == {"drops": 2, "reward": 2}, what="the switch")
        # after the time, a host started on the old builds converges to the release's
        late = HostProcess(tmp_path, redis_server.url, "h1", one).ready()
        wait_for(lambda: late.state()["gens"] == {"drops": 2, "reward": 2}, what="h1 converged")
        rep = wait_for(lambda: reports(redis_server.url, rid).get("h1"), what="h1's report")
        assert (rep["state"], rep.get("late")) == ("switched", True)
    finally:
        again.close()
        if late is not None:
            late.close()


def test_cancel_by_hand_before_the_time_and_refused_after(
    cluster: Cluster, redis_server: RedisServer, gens: Any
) -> None:
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    at = time.time() + 2.0
    with Fleet(redis_server.url) as f:
        rid = f.release(digests, at=at, wait=False)["id"]
        wait_for(lambda: cluster.hosts["a"].staged_releases())
        f.cancel_release(rid, "the event moved")
        wait_for(lambda: reports(redis_server.url, rid).get("a", {}).get("state") == "cancelled")
        assert not cluster.hosts["a"].staged_releases()
        again = f.release(digests, at=time.time() + 2.0, wait=False)["id"]
        wait_for(lambda: reports(redis_server.url, again).get("a", {}).get("state") == "switched")
        with pytest.raises(FleetError, match="point of no return"):
            f.cancel_release(again)
    assert [cluster.hosts["a"][n].generation() for n in NAMES] == [2, 2]


def test_a_time_in_the_past_or_too_close_is_refused_and_nothing_written(
    cluster: Cluster, redis_server: RedisServer, gens: Any
) -> None:
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, plugins=list(NAMES))
    with Fleet(redis_server.url) as f:
        for at in (time.time() - 10, time.time() + 0.2):
            with pytest.raises(FleetError, match="the time must be at least"):
                f.release(digests, at=at)
        with pytest.raises(FleetError, match="deadline"):
            f.release(digests, at=time.time() + 5, deadline=time.time() + 6)
        with pytest.raises(FleetError, match="more than a year ahead"):
            f.release(digests, at=time.time() + 400 * 86400)
        with pytest.raises(FleetError, match="is not a time"):
            f.release(digests, at="tomorrow")  # type: ignore[arg-type]
    assert redis_server.client().hgetall("hotload:releases") == {}


def test_a_plan_naming_a_plugin_twice_is_refused(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"])
    twice = [("reward", digests["reward"]), ("reward", digests["reward"])]
    with Fleet(redis_server.url) as f:
        with pytest.raises(FleetError, match="reward is named twice"):
            f.release(twice, at=time.time() + 5)
        many = [(f"p{i}", digests["reward"]) for i in range(65)]
        with pytest.raises(FleetError, match="over the 64 a release takes"):
            f.release(many, at=time.time() + 5)
        with pytest.raises(FleetError, match="not a plugin name"):
            f.release([("../x", digests["reward"])], at=time.time() + 5)
    assert redis_server.client().hgetall("hotload:releases") == {}
    # signed by the fleet key and written straight to Redis: the host refuses it all the same
    plan = Plan("0123456789ab", 10**15, tuple(twice), time.time() + 5, time.time() + 4)
    redis_server.client().hset("hotload:releases", plan.id, sign(fleet_key, plan).record())
    redis_server.client().publish("hotload:wake", "x")
    rep = wait_for(lambda: reports(redis_server.url, plan.id).get("a"), what="a's report")
    assert rep["state"] == "invalid" and "named twice" in rep["error"]
    assert not cluster.hosts["a"].staged_releases()


def test_a_forged_altered_or_replayed_plan_is_refused(
    cluster: Cluster, redis_server: RedisServer, gens: Any, tmp_path: Path
) -> None:
    from hotload.fleet._signing import write_private_key

    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    r = redis_server.client()
    builds = tuple(digests.items())
    other = write_private_key(tmp_path / "keys" / "other.pem")
    forged = sign(other, Plan("aaaaaaaaaaaa", 10**15, builds, time.time() + 5, time.time() + 4))
    r.hset("hotload:releases", forged.id, forged.record())
    with Fleet(redis_server.url) as f:
        rid = f.release(digests, at=time.time() + 6, wait=False)["id"]
        wait_for(lambda: reports(redis_server.url, rid).get("a", {}).get("state") == "staged")
        good = json.loads(r.hget("hotload:releases", rid))
        altered = {**good, "builds": [{"plugin": "reward", "digest": "f" * 64}]}  # same signature
        r.hset("hotload:releases", rid, json.dumps(altered))
        f.cancel_release(rid, "replay test")
        cancelled = r.hget("hotload:releases", rid)
        wait_for(lambda: reports(redis_server.url, rid)["a"]["state"] == "cancelled")
        r.hset("hotload:releases", rid, json.dumps(good))  # the planned record, replayed
        r.publish("hotload:wake", "x")
        wait_for(lambda: reports(redis_server.url, rid)["a"]["state"] == "invalid")
        assert "older than rev" in reports(redis_server.url, rid)["a"]["error"]
    rep = reports(redis_server.url, forged.id)["a"]
    assert rep["state"] == "invalid" and "does not verify" in rep["error"]
    assert not cluster.hosts["a"].staged_releases()
    assert parse(cancelled, "x").state == "cancelled"
    assert cluster.hosts["a"]["reward"].generation() == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json",
        b"[]",
        b'{"id": "0123456789ab", "rev": "1"}',
        b'{"id": "0123456789ab", "rev": 1, "builds": "x"}',
        json.dumps({"id": "0123456789ab", "rev": 1, "builds": [{"plugin": "../x"}] * 9}).encode(),
        b"[" * 100_000,
        b"x" * 2_000_000,
    ],
    ids=["text", "list", "rev-text", "builds-text", "bad-names", "deep", "huge"],
)
def test_garbage_in_the_release_keys_is_reported_and_nothing_staged(
    cluster: Cluster, redis_server: RedisServer, gens: Any, garbage: bytes
) -> None:
    one = gens(1)
    cluster.add("a", {"role": "game"}, start_with=one["reward"])
    r = redis_server.client()
    r.hset("hotload:releases", "0123456789ab", garbage)
    r.hset("hotload:releases", "\xff" * 300, garbage)
    r.hset(report_key(cluster.agents["a"].keys, "zz"), "0123456789ab", garbage)
    r.sadd("hotload:hosts", "zz")
    r.publish("hotload:wake", "x")
    rep = wait_for(lambda: reports(redis_server.url, "0123456789ab").get("a"), what="a's report")
    assert rep["state"] == "invalid"
    with Fleet(redis_server.url) as f:
        st = f.status()
    listed = {e["id"]: e for e in st["releases"]}
    assert listed["0123456789ab"]["state"] == "invalid"
    assert cluster.hosts["a"]["reward"].generation() == 1 and cluster.agents["a"].connected.is_set()
    assert releases_key(cluster.agents["a"].keys) == "hotload:releases"


def test_cli_fleet_release_and_status(
    cluster: Cluster, redis_server: RedisServer, gens: Any
) -> None:
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    args = [f"{n}={d[:12]}" for n, d in digests.items()]
    cmd = [sys.executable, "-m", "hotload", "fleet", "release", *args, "--at", "+3s"]
    out = subprocess.run(
        [*cmd, "--redis", redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1/1 hosts switched" in out.stdout
    status = subprocess.run(
        [sys.executable, "-m", "hotload", "fleet", "status", "--redis", redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "a: switched" in status.stdout, status.stdout
    bad = subprocess.run(
        [*cmd[:-2], "--at", "2026-12-24T18:00:00", "--redis", redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "has no offset" in bad.stderr
    assert [cluster.hosts["a"][n].generation() for n in NAMES] == [2, 2]
    assert isinstance(Host, type)


def test_the_controller_waits_out_a_redis_pause_and_sees_every_host_switched(
    cluster: Cluster, redis_server: RedisServer, gens: Any
) -> None:
    """Redis paused from the staging to past the time: the controller says
    so, does not fail, and once Redis answers finds every host switched."""
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    for h in ("a", "b"):
        cluster.add(h, {"role": "game"}, start_with=one["reward"], plugins=["drops"])
        cluster.hosts[h].load(one["drops"])
    at = time.time() + 2.5
    said: list[str] = []
    out: list[dict[str, Any]] = []

    def drive() -> None:
        with Fleet(redis_server.url, timeout=0.5) as f:
            rec = f.release(digests, at=at, deadline=at - 1.0, poll=0.05, progress=said.append)
            out.append(rec)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    wait_for(lambda: any("2/2 hosts staged" in line for line in said), what="both staged")
    redis_server.pause()
    try:
        time.sleep(max(0.0, at - time.time()) + 0.3)
    finally:
        redis_server.resume()
    thread.join(30)
    assert out and out[0]["state"] == "switched", said
    assert any("the hosts go on with their staged plans" in line for line in said)


def test_a_signed_plan_the_host_cannot_stage_is_reported_not_retried_forever(
    cluster: Cluster, redis_server: RedisServer, gens: Any, fleet_key: Any
) -> None:
    """A plan written straight to Redis, signed, but for a time beyond what a
    host stages (over a year ahead): the host reports ``failed`` with the
    cause, keeps serving, and its agent stays connected."""
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    far = time.time() + 400 * 86400
    plan = Plan("0123456789ab", 10**15, tuple(digests.items()), far, far - 60)
    redis_server.client().hset("hotload:releases", plan.id, sign(fleet_key, plan).record())
    redis_server.client().publish("hotload:wake", "x")
    rep = wait_for(lambda: reports(redis_server.url, plan.id).get("a"), what="a's report")
    assert rep["state"] == "failed" and "within a year" in rep["error"]
    assert cluster.agents["a"].connected.is_set()
    assert cluster.hosts["a"]["reward"].generation() == 1


def test_a_release_for_some_hosts_leaves_the_others_alone(
    cluster: Cluster, redis_server: RedisServer, gens: Any
) -> None:
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    for h, role in (("a", "game"), ("b", "lobby")):
        cluster.add(h, {"role": role}, start_with=one["reward"], plugins=["drops"])
        cluster.hosts[h].load(one["drops"])
    with Fleet(redis_server.url) as f:
        rec = f.release(digests, at=time.time() + 2.0, hosts="role=game", poll=0.05)
    assert (rec["state"], rec["expected"], rec["switched"]) == ("switched", ["a"], ["a"])
    assert [cluster.hosts["a"][n].generation() for n in NAMES] == [2, 2]
    gen = redis_server.client().get("hotload:gen")  # the desired states written after it
    wait_for(lambda: cluster.agents["b"]._gen == gen, what="b synced with them")
    assert [cluster.hosts["b"][n].generation() for n in NAMES] == [1, 1]
    assert "b" not in reports(redis_server.url, rec["id"])


def test_the_switch_timer_sleeps_to_the_instant_holding_the_gil() -> None:
    """``sleep_until`` returns at or after its time, and no other Python
    thread runs while it sleeps (the switch that follows it comes first)."""
    from hotload._engine.release_clock import _SLEEP_ABS, EARLY, sleep_until

    if _SLEEP_ABS is None:
        pytest.skip("no clock_nanosleep here: the timer spins")
    ticks = [0]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            ticks[0] += 1

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    wait_for(lambda: ticks[0] > 0)
    before_interval = sys.getswitchinterval()
    ran: list[int] = []  # the other thread's ticks during each sleep
    try:
        for _ in range(5):  # a switch already asked for may still land before the sleep
            sys.setswitchinterval(0.05)  # as the timer does: no switch between these lines
            at = time.time() + EARLY / 2
            seen = ticks[0]
            sleep_until(at)
            ran.append(ticks[0] - seen)
            sys.setswitchinterval(before_interval)
            assert time.time_ns() >= int(at * 1e9)
            time.sleep(0.01)  # the GIL to the other thread a while
    finally:
        sys.setswitchinterval(before_interval)
        stop.set()
        thread.join(5)
    assert min(ran) == 0, ran  # a sleep that let go of the GIL: thousands, every time


def test_the_last_sleep_keeping_the_gil_gives_up_on_a_far_time() -> None:
    """The timer's last sleep (the routes already held) never lets go of
    the GIL: a time further than it may wait so (a clock stepped back) is
    answered False at once, and the timer switches then rather than hold
    the callers at the routes."""
    from hotload._engine.release_clock import EARLY, sleep_until

    t0 = time.monotonic()
    assert sleep_until(time.time() + 3600, keep_gil=True) is False
    assert sleep_until(time.time() + 3 * EARLY, keep_gil=True) is False
    assert time.monotonic() - t0 < 0.5
    assert sleep_until(time.time() + EARLY / 2, keep_gil=True) is True
    assert sleep_until(time.time() - 1, keep_gil=True) is True
    assert sleep_until(time.time() + 1, lambda: True) is False  # stopped early


@pytest.mark.soak  # ~6 s: it waits out a release's settle for the host that never switches
def test_a_faked_host_report_cannot_make_a_host_switch(
    cluster: Cluster, redis_server: RedisServer, gens: Any
) -> None:
    """Anyone who can write to Redis can write a host's report: the hosts
    act only on the signed plan, so a faked ``failed`` only cancels (safe),
    and a faked ``staged`` for a host that could not stage it does not make
    that host switch; the controller then misses the failure (as if it were
    gone) and lists the host as not switched."""
    from hotload.fleet._release_ctl import ReleaseController

    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    cluster.add("a", {"role": "game"}, start_with=one["reward"], plugins=["drops"])
    cluster.hosts["a"].load(one["drops"])
    cluster.add("b", {"role": "game"}, start_with=one["reward"])  # never takes drops
    r = redis_server.client()
    with Fleet(redis_server.url) as f:  # a faked failed: cancelled everywhere
        rid = f.release(digests, at=time.time() + 3, wait=False)["id"]
        wait_for(lambda: reports(redis_server.url, rid).get("a", {}).get("state") == "staged")
        r.hset("hotload:release-report:a", rid, json.dumps({"state": "failed", "error": "x"}))
        rec = ReleaseController(f, poll=0.05).record(rid)
        assert rec is not None
        with pytest.raises(RolloutFailed, match="a could not stage it"):
            ReleaseController(f, poll=0.05).drive(rec)
        wait_for(lambda: not cluster.hosts["a"].staged_releases(), what="a dropped it")
        # a faked staged for b, written over b's own failed until the time
        at = time.time() + 2.5
        rec = ReleaseController(f, poll=0.05).publish(digests, at=at)
        stop = threading.Event()

        def fake() -> None:
            while not stop.is_set() and time.time() < at:
                r.hset("hotload:release-report:b", rec["id"], json.dumps({"state": "staged"}))
                time.sleep(0.001)

        faker = threading.Thread(target=fake)
        faker.start()
        try:
            outcome = ReleaseController(f, poll=0.05).drive(rec)
        except RolloutFailed as exc:  # it saw b's own report between two fakes: cancelled
            outcome = exc.record
        finally:
            stop.set()
            faker.join(5)
    assert cluster.hosts["b"]["reward"].generation() == 1  # b never switched
    assert not cluster.hosts["b"].staged_releases()
    if outcome["state"] != "cancelled":
        assert outcome["state"] == "partly switched" and outcome["not_switched"] == ["b"]
        assert cluster.hosts["a"]["reward"].generation() == 2
