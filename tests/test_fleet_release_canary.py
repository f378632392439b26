"""A fleet release with a canary (``hotload fleet release ... --canary SEL
--bake S``): the canary hosts switch at the time and are judged for the
bake, the others switch after it only if none regressed, failed or went
silent; else the canaries roll it back and the others drop it.

Real redis-server, each host its own process; a build that crashes its
host (SIGSEGV in the call) on the first canary."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from hotload import FleetError
from hotload._errors import RolloutFailed
from hotload.fleet import Fleet
from hotload.fleet._release_plan import Plan, check_canary, parse
from test_fleet import RedisServer, fleet_key, redis_server  # noqa: F401  (fixtures)

from conftest import Lines, wait_for

NAMES = ("reward", "drops")

SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "GEN.0.0");
HOTLOAD_API int32_t generation(void) {
    volatile int32_t *nowhere = (int32_t *)0;
    return CRASH ? *nowhere : GEN;  /* a crashing build: the first call takes the host down */
}
HOTLOAD_EXPORT(generation, int32_t, (void));
"""

HOST = textwrap.dedent(
    """
    import json, sys, threading, time
    from hotload import Host

    url, name, role, play, work, *paths = sys.argv[1:]
    host = Host(work, preflight=False)
    for p in paths:
        host.load(p)
    host.join_fleet(url, {"role": role}, name=name, heartbeat=0.2, timeout=1.0)

    def players():
        while True:
            for n in ("reward", "drops"):
                host[n].generation()
            time.sleep(0.002)

    if play == "play":
        threading.Thread(target=players, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        gens = {n: host[n].generation() for n in host.names()}
        staged = len(host.staged_releases())
        print("state", json.dumps({"gens": gens, "staged": staged}), flush=True)
    host.close()
    """
)


class HostProcess:
    def __init__(self, tmp: Path, url: str, name: str, role: str, play: bool, paths: Any) -> None:
        script = tmp / f"host-{name}.py"  # its own: rewriting one a host is reading races it
        script.write_text(HOST)
        args = [url, name, role, "play" if play else "idle", str(tmp / f"w-{name}")]
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args, *map(str, paths.values())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = Lines(self.proc)

    def state(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.lines.expect("^state ").split(" ", 1)[1]))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def gens(cc: Any) -> Any:
    def build(gen: int, crash: bool = False) -> dict[str, Path]:
        out = {}
        for n in NAMES:
            text = SRC.replace("NAME", n).replace("GEN", str(gen))
            out[n] = cc(text.replace("CRASH", "1" if crash else "0"), f"{n}{gen}{'c' * crash}")
        return out

    return build


def _reports(url: str, rid: str) -> dict[str, str]:
    with Fleet(url) as f:
        return {h: r["state"] for h, r in f.release_status(rid)["hosts"].items()}


@pytest.mark.soak
def test_a_crashing_build_is_aborted_on_its_canary_and_a_good_one_completes(
    tmp_path: Path, redis_server: RedisServer, gens: Any
) -> None:
    url = redis_server.url
    one, bad, good = gens(1), gens(2, crash=True), gens(3)
    with Fleet(url) as f:
        bad_d = {n: f.publish(p) for n, p in bad.items()}
        good_d = {n: f.publish(p) for n, p in good.items()}
    hosts = {
        "c1": HostProcess(tmp_path, url, "c1", "canary", True, one),  # its players crash it
        "c2": HostProcess(tmp_path, url, "c2", "canary", False, one),  # idle: it switches
        "g1": HostProcess(tmp_path, url, "g1", "game", True, one),
        "g2": HostProcess(tmp_path, url, "g2", "game", False, one),
    }
    try:
        for h in hosts.values():
            h.lines.expect("^ready")
        with Fleet(url) as f:
            wait_for(lambda: sum(h["alive"] for h in f.hosts()) == 4, what="4 hosts alive")
            at = time.time() + 2.5
            with pytest.raises(RolloutFailed) as info:
                f.release(bad_d, at=at, canary="role=canary", bake=5.0, poll=0.05)
        assert "canary c1 stopped answering after the switch" in str(info.value)
        assert time.time() < at + 5.0  # aborted within the bake, before the others' time
        assert hosts["c1"].proc.wait(10) == -signal.SIGSEGV
        rid = info.value.record["id"]
        wait_for(
            lambda: (
                {k: v for k, v in _reports(url, rid).items() if k != "c1"}
                == {"c2": "reverted", "g1": "cancelled", "g2": "cancelled"}
            ),
            what="c2 reverted, g1 and g2 cancelled",
        )
        time.sleep(max(0.0, at + 5.0 - time.time()) + 0.3)  # past the others' time
        for name in ("c2", "g1", "g2"):  # no host left on the crashing build
            assert hosts[name].state() == {"gens": {"reward": 1, "drops": 1}, "staged": 0}
        assert _reports(url, rid) == {
            "c1": "staged",  # its last report before the crash
            "c2": "reverted",
            "g1": "cancelled",
            "g2": "cancelled",
        }
        with Fleet(url) as f:
            assert f.release_status(rid)["state"] == "aborted"
            with pytest.raises(FleetError, match="already aborted"):
                f.cancel_release(rid)
            wait_for(lambda: sum(h["alive"] for h in f.hosts()) == 3, what="c1 gone")
            # a good build: c2 at the time, g1 and g2 after the bake
            at = time.time() + 2.0
            seen: dict[str, Any] = {}

            def progress(line: str) -> None:
                if "canary: 1/1 switched" in line and not seen:
                    seen.update({n: hosts[n].state()["gens"] for n in ("c2", "g1")})

            rec = f.release(
                good_d, at=at, canary="role=canary", bake=1.5, poll=0.05, progress=progress
            )
        assert rec["state"] == "switched", rec
        assert seen == {"c2": {"reward": 3, "drops": 3}, "g1": {"reward": 1, "drops": 1}}
        for name in ("c2", "g1", "g2"):
            assert hosts[name].state()["gens"] == {"reward": 3, "drops": 3}
        assert rec["hosts_state"]["c2"].get("verdict") == "passed"
    finally:
        for h in hosts.values():
            h.close()


def _plan(**canary: Any) -> bytes:
    p = Plan("0123456789ab", 1, (("reward", "a" * 64),), 100.0, 90.0, canary=canary or None)
    return p.record().encode()


@pytest.mark.parametrize(
    "bad",
    [
        "x",
        None,
        [],
        {"match": {"role": "canary"}},
        {"match": {}, "bake": 5},
        {"match": {"role": "canary"}, "bake": 0},
        {"match": {"role": "canary"}, "bake": -1},
        {"match": {"role": "canary"}, "bake": 1e12},
        {"match": {"role": "canary"}, "bake": "5"},
        {"match": {"role": "canary"}, "bake": True},
        {"match": "role=canary", "bake": 5},
        {"match": {"role": "x" * 10_000}, "bake": 5},
        {"match": {"role": "canary"}, "bake": 5, "more": 1},
    ],
)
def test_a_malformed_canary_in_a_plan_is_refused(bad: Any) -> None:
    rec = json.loads(_plan(match={"role": "canary"}, bake=5.0))
    rec["canary"] = bad
    with pytest.raises(FleetError, match="canary"):
        parse(json.dumps(rec).encode(), "release 0123456789ab")


def test_a_canary_plan_reads_back_and_says_each_host_its_time() -> None:
    plan = parse(_plan(match={"role": "canary"}, bake=30), "release 0123456789ab")
    assert plan.canary == {"match": {"role": "canary"}, "bake": 30.0}
    assert plan.time_for({"role": "canary", "zone": "eu"}) == 100.0
    assert plan.time_for({"role": "game"}) == plan.last == 130.0
    plain = parse(_plan(), "release 0123456789ab")
    assert plain.canary is None and plain.time_for({"role": "game"}) == 100.0
    assert "canary" not in json.loads(_plan())  # a plan without one signs as before
    assert check_canary({"match": {"role": "c"}, "bake": 2}, "x") == {
        "match": {"role": "c"},
        "bake": 2.0,
    }


def test_a_canary_that_is_every_host_or_none_is_refused(
    redis_server: RedisServer, gens: Any, tmp_path: Path
) -> None:
    one = gens(1)
    with Fleet(redis_server.url) as f:
        digests = {n: f.publish(p) for n, p in one.items()}
    host = HostProcess(tmp_path, redis_server.url, "g1", "game", False, one)
    try:
        host.lines.expect("^ready")
        with Fleet(redis_server.url) as f:
            wait_for(lambda: any(h["alive"] for h in f.hosts()), what="the host alive")
            for sel in ("role=game", "role=canary"):
                with pytest.raises(FleetError, match="a canary is some of them"):
                    f.release(digests, at=time.time() + 5, canary=sel, bake=2)
            with pytest.raises(FleetError, match="bake"):
                f.release(digests, at=time.time() + 5, canary="role=x", bake=-1)
            assert f.status()["releases"] == []  # nothing written
    finally:
        host.close()
