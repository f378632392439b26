"""A host stopped over a release's time (issue 23, the third attack's G7):
a cancel written while it slept is reported as not confirmed by it (and the
command exits non-zero), and when it resumes its timer, late, reads the
plan again before it switches: cancelled, it does not switch; Redis not
answering then, it does not switch either, and its agent converges to the
plan once it can read it.  Real host processes, SIGSTOP and SIGCONT, a real
redis-server (paused too for the last case)."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hotload.fleet import Fleet
from test_fleet import RedisServer, fleet_key, redis_server  # noqa: F401  (fixtures)
from test_fleet_release import HostProcess, alive, gens, publish, reports  # noqa: F401

from conftest import wait_for

pytestmark = pytest.mark.soak  # 6-8 s each: a release's lead, a host stopped over its time


def _staged(url: str, rid: str, hosts: list[str]) -> bool:
    reps = reports(url, rid)
    return all(reps.get(h, {}).get("state") == "staged" for h in hosts)


def test_a_cancel_a_stopped_host_slept_through_is_not_confirmed_and_not_switched(
    tmp_path: Path, redis_server: RedisServer, gens: Any
) -> None:
    """Before: the cancel 0.4 s before the time said "cancelled on every
    host" while h2 was stopped, and h2 switched when it resumed."""
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    hosts = {h: HostProcess(tmp_path, redis_server.url, h, one).ready() for h in ("h1", "h2")}
    try:
        alive(redis_server.url, 2)
        at = time.time() + 2.5
        with Fleet(redis_server.url) as f:
            rid = f.release(digests, at=at, deadline=at - 1.0, wait=False)["id"]
            wait_for(lambda: _staged(redis_server.url, rid, list(hosts)), what="both staged")
            time.sleep(max(0.0, at - 0.9 - time.time()))
            hosts["h2"].proc.send_signal(signal.SIGSTOP)
            time.sleep(max(0.0, at - 0.4 - time.time()))
            said: list[str] = []
            f_ctl = Fleet(redis_server.url)
            try:
                from hotload.fleet._release_ctl import ReleaseController

                rec = ReleaseController(f_ctl, progress=said.append).cancel(rid, "by hand")
            finally:
                f_ctl.close()
            assert time.time() > at  # it waited past the time for h2
        assert set(rec.get("unconfirmed") or {}) == {"h2"}, rec
        assert "staged" in rec["unconfirmed"]["h2"]
        assert not any("on every host" in s for s in said), said
        assert any("not confirmed by 1 host(s)" in s and "h2" in s for s in said), said
        hosts["h2"].proc.send_signal(signal.SIGCONT)
        wait_for(lambda: reports(redis_server.url, rid).get("h2", {}).get("state") == "cancelled")
        time.sleep(0.3)
        for h, p in hosts.items():
            assert p.state()["gens"] == {"reward": 1, "drops": 1}, h
    finally:
        for p in hosts.values():
            p.proc.send_signal(signal.SIGCONT)
            p.close()


def test_a_late_timer_that_cannot_reach_redis_leaves_it_to_the_agent(
    tmp_path: Path, redis_server: RedisServer, gens: Any
) -> None:
    """h2 stopped over the time, Redis paused when it resumes: its timer
    cannot re-read the plan, so it does not switch (h1, on time, did, on its
    staged plan); once Redis answers, h2's agent finds the plan still
    planned and converges to it in one switch, reported ``late``."""
    one = gens(1)
    digests = publish(redis_server.url, gens(2))
    hosts = {h: HostProcess(tmp_path, redis_server.url, h, one).ready() for h in ("h1", "h2")}
    try:
        alive(redis_server.url, 2)
        at = time.time() + 2.0
        with Fleet(redis_server.url) as f:
            rid = f.release(digests, at=at, deadline=at - 0.8, wait=False)["id"]
        wait_for(lambda: _staged(redis_server.url, rid, list(hosts)), what="both staged")
        time.sleep(max(0.0, at - 0.5 - time.time()))
        hosts["h2"].proc.send_signal(signal.SIGSTOP)
        time.sleep(max(0.0, at + 0.6 - time.time()))
        redis_server.pause()
        try:
            hosts["h2"].proc.send_signal(signal.SIGCONT)
            time.sleep(2.0)  # its timer woke, tried Redis (1 s time-out), and stood down
            assert hosts["h1"].state()["gens"] == {"reward": 2, "drops": 2}
            assert hosts["h2"].state()["gens"] == {"reward": 1, "drops": 1}
        finally:
            redis_server.resume()
        wait_for(lambda: hosts["h2"].state()["gens"] == {"reward": 2, "drops": 2}, what="h2")
        rep = wait_for(lambda: reports(redis_server.url, rid).get("h2", {}), what="h2's report")
        rep = wait_for(lambda: reports(redis_server.url, rid)["h2"].get("late") and rep)
        assert reports(redis_server.url, rid)["h2"]["state"] == "switched"
    finally:
        for p in hosts.values():
            p.proc.send_signal(signal.SIGCONT)
            p.close()
