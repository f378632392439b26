"""Fleet faults, each against a real redis-server on a random local port:
Redis restarted or paused mid-rollout, a host killed mid-step, the controller
killed and resumed, a host joining during a rollout.  After each: no host ever
ran a digest that no rollout named, and every host ends on the final or the
previous digest."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotload._cli.fleet_demo import HostProcess, build_variants
from hotload._errors import RolloutFailed
from hotload.fleet import Fleet
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    builds,
    cluster,
    fleet_key,
    redis_server,
    rollout_kw,
)

from conftest import wait_for


def only_named(cluster: Cluster, *allowed: str) -> None:
    for host_id, host in cluster.hosts.items():
        ran = {v.digest for v in host.versions("xp")}
        assert ran <= set(allowed), f"{host_id} ran digests no rollout named: {ran - set(allowed)}"


class Background:
    """Runs a rollout in a thread and keeps its outcome."""

    def __init__(self, fn: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Any) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 30.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "rollout did not finish"
        return self.result


def phase(f: Fleet, step: int, name: str) -> bool:
    return phase_of(f, "xp", step, name)


def phase_of(f: Fleet, plugin: str, step: int, name: str) -> bool:
    rec = f.rollout_record(plugin) or {}
    return rec.get("state") == "running" and rec.get("step") == step and rec.get("phase") == name


def four_hosts(cluster: Cluster, start: Path) -> None:
    for i in range(4):
        cluster.add(f"h{i}", {"role": "canary" if i < 2 else "main"}, start_with=start)


def test_redis_restarted_mid_rollout(cluster: Cluster, redis_server: RedisServer, builds) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    four_hosts(cluster, v1)
    with Fleet(redis_server.url, timeout=1.0) as f:
        wait_for(lambda: len(f.hosts()) == 4, what="4 hosts")
        f.publish(v2)
        run = Background(lambda: f.rollout("xp", d2, canary="role=canary", **rollout_kw(bake=1.5)))
        wait_for(lambda: phase(f, 0, "bake"), what="canary bake")
        redis_server.stop()  # SIGTERM; down for longer than the client's own retries
        time.sleep(1.0)
        redis_server.start()  # a new server on the same port, same append-only file
        rec = run.join()
        assert run.error is None, run.error
        assert rec["state"] == "done"
        wait_for(lambda: all(cluster.live(h) == d2 for h in cluster.hosts), what="all on d2")
    only_named(cluster, d1, d2)


def test_redis_paused_longer_than_the_heartbeat(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    """DEBUG SLEEP blocks Redis for 5 heartbeats: hosts serve on, their keys
    expire meanwhile, and the rollout neither counts them gone nor hangs."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    four_hosts(cluster, v1)
    with Fleet(redis_server.url, timeout=1.0) as f:
        wait_for(lambda: len(f.hosts()) == 4, what="4 hosts")
        f.publish(v2)
        run = Background(
            lambda: f.rollout(
                "xp", d2, canary="role=canary", gone_grace=1.0, **rollout_kw(bake=1.5)
            )
        )
        wait_for(lambda: phase(f, 0, "bake"), what="canary bake")
        pauser = redis_server.client()
        pauser.execute_command("DEBUG", "SLEEP", "1.0")
        assert cluster.hosts["h0"]["xp"].reward(10, 1) == 31  # served throughout
        rec = run.join()
        assert run.error is None, run.error
        assert rec["state"] == "done" and rec["failures"] == {}
    only_named(cluster, d1, d2)


@pytest.fixture
def host_procs(redis_server: RedisServer) -> Iterator[list[HostProcess]]:
    procs: list[HostProcess] = []
    yield procs
    for p in procs:
        p.kill()


def start_host(redis: RedisServer, host_id: str, labels: str, plugin: Path) -> HostProcess:
    return HostProcess(redis.url, host_id, labels, plugin, heartbeat=0.2).wait_ready()


@pytest.mark.parametrize("on_gone", ["fail", "wait"])
def test_host_killed_mid_step(
    redis_server: RedisServer, tmp_path: Path, host_procs: list[HostProcess], on_gone: str
) -> None:
    b = build_variants(tmp_path)
    host_procs += [
        HostProcess(redis_server.url, "canary-1", "role=canary", b["v1"], heartbeat=0.2),
        HostProcess(redis_server.url, "main-1", "role=main", b["v1"], heartbeat=0.2),
    ]
    for p in host_procs:
        p.wait_ready()
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len([h for h in f.hosts() if h["alive"]]) == 2, what="2 hosts")
        good = f.publish(b["v2"])
        kw = rollout_kw(bake=1.0, on_gone=on_gone, gone_grace=0.5)
        run = Background(lambda: f.rollout("double_xp", good, canary="role=canary", **kw))
        wait_for(lambda: (f.rollout_record("double_xp") or {}).get("phase") == "bake", what="bake")
        host_procs[0].kill()  # SIGKILL: no goodbye, the heartbeat just stops
        if on_gone == "wait":  # it comes back (same id, restarted) and converges
            host_procs[0] = start_host(redis_server, "canary-1", "role=canary", b["v1"])
        run.join(40)
        if on_gone == "fail":
            assert isinstance(run.error, RolloutFailed)
            assert "vanished" in run.error.record["failures"]["canary-1"]
            assert run.error.record["state"] == "aborted"
        else:
            assert run.error is None, run.error
            assert run.result["state"] == "done"
        want = "double_xp"
        digests = {
            h["id"]: h["plugins"][want]["digest"] for h in f.hosts(want) if want in h["plugins"]
        }
    main = host_procs[1].finish()
    assert main["errors"] == 0
    if on_gone == "fail":  # aborted at the canary step: the main host never ran it
        assert good not in main["digests"]
    else:
        assert set(digests.values()) == {good} and good in main["digests"]


CONTROLLER = """
import sys
from hotload import fleet
fleet.rollout("xp", sys.argv[2], url=sys.argv[1], canary="role=canary", bake=30,
              step_timeout=30, poll=0.05, lock_ttl=1.0)
"""


def test_controller_killed_then_resumed(
    cluster: Cluster, redis_server: RedisServer, builds, tmp_path: Path
) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    four_hosts(cluster, v1)
    script = tmp_path / "controller.py"
    script.write_text(textwrap.dedent(CONTROLLER))
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len(f.hosts()) == 4, what="4 hosts")
        f.publish(v2)
        ctl = subprocess.Popen([sys.executable, str(script), redis_server.url, d2])
        try:
            wait_for(lambda: phase(f, 0, "bake"), what="canary bake", timeout=30)
        finally:
            ctl.kill()
            ctl.wait()
        # a second controller is refused while the dead one's lock lasts...
        r = redis_server.client()
        wait_for(lambda: not r.exists("hotload:lock:xp"), what="lock expiry")
        rec = f.rollout_record("xp")
        assert rec is not None and rec["state"] == "running"
        # ...then resumes from the step reached, with a shorter bake for the test
        rec["bake"] = 0.3
        f.save_rollout(rec)
        done = f.resume("xp", poll=0.05, lock_ttl=2.0)
        assert done["state"] == "done" and done["id"] == rec["id"]
        wait_for(lambda: all(cluster.live(h) == d2 for h in cluster.hosts), what="all on d2")
    only_named(cluster, d1, d2)


def test_host_joining_during_a_rollout(cluster: Cluster, redis_server, builds) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    cluster.add("c0", {"role": "canary"}, start_with=v1)
    cluster.add("m0", {"role": "main"}, start_with=v1)
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len(f.hosts()) == 2, what="2 hosts")
        f.publish(v2)
        run = Background(lambda: f.rollout("xp", d2, canary="role=canary", **rollout_kw(bake=1.5)))
        wait_for(lambda: phase(f, 0, "bake"), what="canary bake")
        late_main = cluster.add("m1", {"role": "main"}, start_with=v1)
        late_canary = cluster.add("c1", {"role": "canary"}, start_with=v1)
        wait_for(late_main.synced.is_set, what="late main synced")
        assert cluster.live("m1") == d1  # not a canary: it waits for its step
        rec = run.join()
        assert run.error is None, run.error
        assert "c1" in rec["members"]  # the late canary was counted in the canary step
        assert late_canary.live_digest("xp") == d2
        wait_for(lambda: all(cluster.live(h) == d2 for h in cluster.hosts), what="all on d2")
    only_named(cluster, d1, d2)


def test_flushall_mid_rollout_is_never_reported_as_success(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    """Found by a reviewer: a ``FLUSHALL`` during the canary's bake made the
    controller print "done: every host runs" (exit 0) while two of three hosts
    stayed on the old build ("not in Redis"), and ``status`` listed 0 hosts for
    good.  Now: the hosts register again; the controller writes its rules
    again, sees the main hosts refuse the build whose bytes are gone, aborts,
    and the canary goes back to the old build from the bytes it keeps (that
    build's blob is gone too), so the abort says every host is back, truly."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    cluster.add("c0", {"role": "canary"}, start_with=v1)
    cluster.add("m0", {"role": "main"}, start_with=v1)
    cluster.add("m1", {"role": "main"}, start_with=v1)
    said: list[str] = []
    with Fleet(redis_server.url, timeout=1.0) as f:
        wait_for(lambda: len(f.hosts()) == 3, what="3 hosts")
        f.publish(v1)
        f.rollout("xp", d1, canary="role=canary", **rollout_kw(bake=0))  # the old build
        f.publish(v2)
        kw = rollout_kw(bake=1.5, progress=said.append)
        run = Background(lambda: f.rollout("xp", d2, canary="role=canary", **kw))
        wait_for(lambda: phase(f, 0, "bake") and cluster.live("c0") == d2, what="canary bake")
        redis_server.client().flushall()  # both builds' bytes, the rules, the hosts: gone
        run.join(60)
        assert isinstance(run.error, RolloutFailed), (run.error, said)
        rec = run.error.record
        assert rec["state"] == "aborted"
        assert set(rec["failures"]) <= {"m0", "m1"} and rec["failures"], rec["failures"]
        assert all("not in Redis" in e for e in rec["failures"].values()), rec["failures"]
        assert "not_reverted" not in rec, rec["not_reverted"]
        assert not any(line.startswith("done") for line in said), said
        assert said[-1] == "aborted: 3 host(s) back on the previous build", said
        assert all(cluster.live(h) == d1 for h in cluster.hosts)  # c0 from its kept bytes
        assert cluster.hosts["c0"]["xp"].reward(10, 1) == 21
        alive = wait_for(
            lambda: sorted(h["id"] for h in f.hosts() if h["alive"]) == ["c0", "m0", "m1"],
            what="every host registered again",
        )
        assert alive
    only_named(cluster, d1, d2)


def test_a_host_killed_before_the_last_step_is_named_while_the_rollout_waits(
    redis_server: RedisServer, tmp_path: Path, host_procs: list[HostProcess]
) -> None:
    """Found by a new user: a host killed before step 2 gave a silent wait,
    then the whole fleet rolled back.  Now the wait says whom it waits for and
    why; with ``--on-gone fail`` (the default) the dead host is a failure once
    ``--gone-grace`` has passed, and with ``--max-failures 0`` that aborts."""
    b = build_variants(tmp_path)
    host_procs += [
        HostProcess(redis_server.url, name, labels, b["v1"], heartbeat=0.2)
        for name, labels in (
            ("canary-1", "role=canary"),
            ("main-1", "role=main"),
            ("main-2", "role=main"),
        )
    ]
    for p in host_procs:
        p.wait_ready()
    said: list[str] = []
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len([h for h in f.hosts() if h["alive"]]) == 3, what="3 hosts")
        good = f.publish(b["v2"])
        kw = rollout_kw(bake=1.0, gone_grace=3.0, progress=said.append)
        run = Background(lambda: f.rollout("double_xp", good, canary="role=canary", **kw))
        wait_for(lambda: phase_of(f, "double_xp", 0, "bake"), what="canary bake")
        host_procs[2].kill()  # main-2 dies before step 2 reaches it
        run.join(60)
    assert isinstance(run.error, RolloutFailed), said
    assert "vanished" in run.error.record["failures"]["main-2"]
    waiting = [line for line in said if "waiting for main-2" in line]
    assert waiting, said
    assert re.fullmatch(
        r"step 2/2: [0-2]/3 hosts live, waiting for main-2 \(no heartbeat.*\)", waiting[0]
    ), waiting
    assert said[-1].startswith("aborted: 2 host(s) back on the previous build"), said


def test_an_abort_that_cannot_bring_a_host_back_says_so_and_claims_nothing_more(
    redis_server: RedisServer, tmp_path: Path, host_procs: list[HostProcess]
) -> None:
    """Issue 19 item 3: no message claims what did not happen.  Two canaries
    bake the new build; one is killed (SIGKILL: its heartbeat just stops), the
    rollout aborts, the other canary goes back, and the outcome names the one
    that did not, in the record, the error and the last line ("every host
    goes back" was printed after a failed revert)."""
    b = build_variants(tmp_path)
    host_procs += [
        HostProcess(redis_server.url, name, "role=canary", b["v1"], heartbeat=0.2)
        for name in ("canary-1", "canary-2")
    ]
    for p in host_procs:
        p.wait_ready()
    said: list[str] = []
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len([h for h in f.hosts() if h["alive"]]) == 2, what="2 hosts")
        old = f.publish(b["v1"])
        f.rollout("double_xp", old, canary="role=canary", **rollout_kw(bake=0))
        new = f.publish(b["v2"])
        kw = rollout_kw(bake=30.0, gone_grace=0.5, step_timeout=5.0, progress=said.append)
        run = Background(lambda: f.rollout("double_xp", new, canary="role=canary", **kw))
        wait_for(lambda: phase_of(f, "double_xp", 0, "bake"), what="the canaries bake")
        host_procs[1].kill()  # SIGKILL: no goodbye, and it cannot go back
        run.join(60)
    assert isinstance(run.error, RolloutFailed), (run.error, said)
    rec = run.error.record
    assert rec["state"] == "aborted", rec
    assert set(rec.get("not_reverted") or ()) == {"canary-2"}, (str(run.error), said)
    assert "canary-2" in str(run.error) and "every host" not in str(run.error), run.error
    assert said[-1].startswith(
        "aborted: 1 host(s) back on the previous build; not back: canary-2"
    ), said
    assert not any("every host" in line for line in said), said


def test_a_controller_killed_while_reverting_is_resumed_into_the_revert(
    cluster: Cluster, redis_server: RedisServer, builds, tmp_path: Path
) -> None:
    """An attacker read it in the code: a controller killed after it began
    to revert but before it saved the abort left a running record, and a
    resumed controller wrote the rollout's rules back (hosts took the build
    again) before aborting once more.  The revert is now saved first
    (``aborting``) and a resume goes straight back to it."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    four_hosts(cluster, v1)
    script = tmp_path / "controller.py"
    script.write_text(textwrap.dedent(CONTROLLER))
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len(f.hosts()) == 4, what="4 hosts")
        f.publish(v2)
        ctl = subprocess.Popen([sys.executable, str(script), redis_server.url, d2])
        try:
            wait_for(lambda: phase(f, 0, "bake"), what="canary bake", timeout=30)
        finally:
            ctl.kill()
            ctl.wait()
        rec = f.rollout_record("xp")
        assert rec is not None and rec["state"] == "running"
        rec["aborting"] = "stopped by the operator"  # as _revert saves it before it writes
        f.save_rollout(rec)  # sealed with the fleet's key, as the controller does
        r = redis_server.client()
        wait_for(lambda: not r.exists("hotload:lock:xp"), what="lock expiry")
        with pytest.raises(RolloutFailed, match="aborted"):
            f.resume("xp", poll=0.05, lock_ttl=2.0)
        done = f.rollout_record("xp")
        assert done is not None and done["state"] == "aborted"
        assert "stopped by the operator" in done["reason"]
        wait_for(lambda: all(cluster.live(h) == d1 for h in cluster.hosts), what="all on d1")
