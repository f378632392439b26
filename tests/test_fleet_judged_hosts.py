"""Issue 22, "done when": the judged fleet bake on real host *processes*.

Each host here is its own Python process (a ``Host`` serving isolated
``reward`` to a player thread, and its fleet agent), as in production and in
``benchmarks/bench_fleet_judged.py``; the controller is this process or, for
the kill test, a process of its own.  Real Redis, real compiled plugins.

- The newcomer's build (it segfaults on every positive player id, passes
  preflight and loads) at 5 % of the players: the canary hosts' judges abort
  it on its first crashes, the controller aborts the rollout with the judge's
  reason, and every host serves the previous build; no host process died.
- A controller killed mid-bake: the hosts' canaries run on without it and
  their judges decide; a controller resumed later finds their verdicts and
  finishes the rollout."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotload._errors import RolloutFailed
from hotload.fleet import Fleet
from test_fleet import RedisServer, fleet_key, redis_server  # noqa: F401  (fixtures)

from conftest import Compile, wait_for

REWARD = r"""
#include <hotload.h>
#include <stdint.h>
HOTLOAD_PLUGIN("reward", "VERSION");
HOTLOAD_API int64_t reward(int64_t player, int32_t level)
{
    if (CRASH && player > 0) { volatile int *p = 0; *p = 1; }
    return player * MULT + level;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
"""

# One host process: load the build (isolated), join the fleet, play at ~1,000
# calls a second, say "ready"; on a line "ask N" print reward(N, 1); on EOF close.
HOST = """
import sys, threading, time
from hotload import Host

url, name, path, work, role = sys.argv[1:6]
host = Host(work, preflight=False)
host.load(path, isolate=True)
host.join_fleet(url, {"role": role}, name=name, heartbeat=0.5, timeout=1.0)
stop = threading.Event()

def play():
    i = 0
    while not stop.is_set():
        for _ in range(10):
            i += 1
            try:
                host["reward"].reward(i % 10000, 1)
            except Exception:
                pass
        time.sleep(0.01)

threading.Thread(target=play, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    print(host["reward"].reward(int(line.split()[1]), 1), flush=True)
stop.set()
host.close()
"""

CONTROLLER = """
import sys
from hotload import fleet
fleet.rollout("reward", sys.argv[2], url=sys.argv[1], canary="role=canary", bake=4,
              share=0.5, step_timeout=60, poll=0.05, lock_ttl=1.0)
"""

ROLES = {"canary-1": "canary", "canary-2": "canary", "main-1": "main"}


@pytest.fixture
def reward(cc: Compile) -> Callable[..., tuple[Path, str]]:
    """``reward(mult, crash=0)`` -> (the build, its digest)."""

    def build(mult: int, *, crash: int = 0) -> tuple[Path, str]:
        src = (
            REWARD.replace("VERSION", f"{mult}.{crash}")
            .replace("MULT", str(mult))
            .replace("CRASH", str(crash))
        )
        path = cc(src, f"reward_{mult}_{crash}")
        return path, hashlib.sha256(path.read_bytes()).hexdigest()

    return build


class Hosts:
    """The host processes, by name."""

    def __init__(self, tmp: Path, url: str, build: Path) -> None:
        script = tmp / f"host-{time.time_ns()}.py"  # its own: rewriting one being read races
        script.write_text(HOST)
        self.procs: dict[str, subprocess.Popen[str]] = {}
        for name, role in ROLES.items():
            args = [url, name, str(build), str(tmp / f"work-{name}"), role]
            self.procs[name] = subprocess.Popen(
                [sys.executable, str(script), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # each crash of the bad build is logged
                text=True,
            )
        for name, p in self.procs.items():
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", name

    def ask(self, name: str, player: int) -> int:
        """``reward(player, 1)`` as that host's own code calls it now."""
        p = self.procs[name]
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(f"ask {player}\n")
        p.stdin.flush()
        return int(p.stdout.readline())

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def close(self) -> None:
        for p in self.procs.values():
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def hosts(
    tmp_path: Path, redis_server: RedisServer, reward: Callable[..., tuple[Path, str]]
) -> Iterator[Hosts]:
    v1, _ = reward(2)
    h = Hosts(tmp_path, redis_server.url, v1)
    with Fleet(redis_server.url) as f:
        wait_for(lambda: sum(x["alive"] for x in f.hosts()) == len(ROLES), what="3 hosts")
    yield h
    h.close()


def _canaries(f: Fleet, digest: str) -> set[str]:
    """The states of the canary hosts' canaries of ``digest``."""
    return {
        str(c.get("state")) if c.get("digest") == digest else "none"
        for h in f.hosts()
        if h["labels"].get("role") == "canary"
        for c in [h["plugins"].get("reward", {}).get("canary") or {}]
    }


def _live(f: Fleet) -> dict[str, Any]:
    return {h["id"]: h["plugins"].get("reward", {}).get("digest") for h in f.hosts()}


def test_a_build_that_crashes_on_some_inputs_is_aborted_on_real_host_processes(
    redis_server: RedisServer, hosts: Hosts, reward: Callable[..., tuple[Path, str]]
) -> None:
    _, d1 = reward(2)
    bad, dbad = reward(3, crash=1)
    with Fleet(redis_server.url) as f:
        f.publish(bad)
        with pytest.raises(RolloutFailed) as failed:
            f.rollout("reward", dbad, canary="role=canary", bake=30, share=0.05, poll=0.05)
        rec = f.rollout_record("reward")
        assert rec is not None and rec["state"] == "aborted"
        assert "aborted by the judge" in rec["reason"], rec["reason"]
        assert "regression in crashes" in rec["reason"], rec["reason"]
        assert "regression in crashes" in str(failed.value)
        wait_for(lambda: set(_live(f).values()) == {d1}, what="every host on the old build")
    assert hosts.alive() == list(ROLES)  # a crashing canary took no host down
    for name in ROLES:  # and each serves the old build to its own callers
        assert hosts.ask(name, 5) == 11, name


@pytest.mark.soak  # make test-slow: 3 hosts, a controller killed mid-bake, ~9 s
def test_a_controller_killed_mid_bake_is_resumed_from_the_hosts_verdicts(
    redis_server: RedisServer, hosts: Hosts, reward: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    """The hosts' canaries do not need their controller: killed while they
    bake, a resumed controller reads the verdicts their judges reached
    meanwhile and takes the rollout to the end."""
    v2, d2 = reward(4)
    script = tmp_path / "controller.py"
    script.write_text(textwrap.dedent(CONTROLLER))
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        ctl = subprocess.Popen([sys.executable, str(script), redis_server.url, d2])
        try:
            wait_for(lambda: _canaries(f, d2) == {"running"}, what="the canary hosts' canaries")
        finally:
            ctl.kill()
            ctl.wait()
        r = redis_server.client()
        wait_for(lambda: not r.exists("hotload:lock:reward"), what="the dead controller's lock")
        rec = f.rollout_record("reward")
        assert rec is not None and rec["state"] == "running" and rec["step"] == 0
        assert rec["phase"] == "apply"  # killed while the hosts judged
        # the canary hosts' judges promote on their own while no controller runs
        wait_for(lambda: _canaries(f, d2) == {"promoted"}, what="the judges promoting")
        done = f.resume("reward", poll=0.05, lock_ttl=2.0)
        assert done["state"] == "done" and done["id"] == rec["id"], done
        wait_for(lambda: set(_live(f).values()) == {d2}, what="every host on the new build")
    for name in ROLES:
        assert hosts.ask(name, 5) == 21, name
