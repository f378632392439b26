"""``hotload fleet ...`` and ``hotload demo --fleet`` as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from test_fleet import (  # noqa: F401
    Cluster,
    RedisServer,
    builds,
    cluster,
    fleet_key,
    redis_server,
)

from conftest import wait_for

# ruff: noqa: F811  (fixtures imported from test_fleet are parameters here)


def hotload(
    *args: str, timeout: float = 60, redis_env: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotload", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOTLOAD_FLEET_REDIS": redis_env},
    )


def test_publish_rollout_status_abort_from_the_command_line(
    cluster: Cluster, redis_server: RedisServer, builds, tmp_path: Path
) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    bad, dbad = builds(5, refuse=9)
    url = ["--redis", redis_server.url]
    cluster.add("c1", {"role": "canary"}, start_with=v1)
    cluster.add("m1", {"role": "main"}, start_with=v1)
    wait_for(lambda: all(a.synced.is_set() for a in cluster.agents.values()), what="joined")

    out = hotload("fleet", "publish", str(v2), *url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == d2 and "xp 3.0.0" in out.stderr
    out = hotload("fleet", "rollout", "xp", d2, "--canary", "role=canary", "--bake", "200ms", *url)
    assert out.returncode == 0, out.stderr
    assert "step 1/2: role=canary" in out.stdout and "done: 2 host(s) run" in out.stdout

    out = hotload("fleet", "status", *url)
    assert out.returncode == 0, out.stderr
    assert "rollout xp" in out.stdout and "done" in out.stdout
    assert out.stdout.count(d2[:12]) >= 3  # the rollout line and both hosts
    st = json.loads(hotload("fleet", "status", "--json", "--plugin", "xp", *url).stdout)
    assert {h["id"]: h["plugins"]["xp"]["digest"] for h in st["hosts"]} == {"c1": d2, "m1": d2}

    assert hotload("fleet", "publish", str(bad), *url).returncode == 0
    out = hotload("fleet", "rollout", "xp", dbad, "--canary", "role=canary", "--bake", "1s", *url)
    assert out.returncode == 1
    assert "aborted: 1 host(s) back on the previous build" in out.stdout
    assert out.stderr.startswith("  c1: ") and "on_load" in out.stderr
    # the failure is printed once (it was printed twice: the host list, then the error)
    failure = out.stderr.strip().split(": ", 1)[1]
    assert (out.stdout + out.stderr).count(failure) == 1, out.stdout + out.stderr
    assert cluster.live("c1") == d2 and cluster.live("m1") == d2

    out = hotload("fleet", "abort", "xp", *url)  # nothing is running now
    assert out.returncode == 1 and "no rollout in progress" in out.stderr
    out = hotload("fleet", "rollout", "xp", "nothex", "--canary", "role=canary", *url)
    assert out.returncode == 1 and "not a SHA-256 digest" in out.stderr
    assert "NAME@VERSION" in out.stderr
    out = hotload("fleet", "publish", str(tmp_path / "missing.so"), *url)
    assert out.returncode == 1 and "no such file" in out.stderr


def test_keygen_and_signed_publish(redis_server: RedisServer, builds, tmp_path: Path) -> None:
    key = tmp_path / "fleet.pem"
    out = hotload("fleet", "keygen", str(key))
    assert out.returncode == 0 and len(out.stdout.strip()) == 64
    assert key.stat().st_mode & 0o777 == 0o600
    v2, d2 = builds(3)
    pub = hotload(
        "fleet", "publish", str(v2), "--sign-key", str(key), "--json", "--redis", redis_server.url
    )
    meta = json.loads(pub.stdout)
    assert meta["digest"] == d2 and len(meta["signature"]) == 128


@pytest.mark.soak
def test_demo_fleet() -> None:
    out = hotload("demo", "--fleet", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "aborting: " in out.stdout and "no call failed" in out.stdout
    assert out.stdout.count("0 failed, never ran the bad build") == 4
    # the winter event: two plugins released as one at a set time on the four hosts
    assert "4/4 hosts switched" in out.stdout, out.stdout
    assert "the winter double_xp beside the old loot_drop: 0" in out.stdout
    assert "the winter event opened as one" in out.stdout


@pytest.mark.soak  # in make test-slow: make test's 300 s budget
def test_rollout_by_prefix_or_version_history_and_rollback_to_any_revision(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    """Digests are printed as 12 hex digits: ``rollout`` takes such a prefix
    (and ``NAME@VERSION``); every rollout is a revision in ``fleet history``;
    ``rollback --to REV`` goes to any of them and returns once every host
    reports it, as ``rollout`` does; a plain ``rollback`` walks back one."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    v3, d3 = builds(4)
    twin, dtwin = builds(4, refuse=5)  # another build that says it is 4.0.0 too
    url = ["--redis", redis_server.url]
    cluster.add("c1", {"role": "canary"}, start_with=v1)
    cluster.add("m1", {"role": "main"}, start_with=v1)
    wait_for(lambda: all(a.synced.is_set() for a in cluster.agents.values()), what="joined")
    for build in (v2, v3, twin):
        assert hotload("fleet", "publish", str(build), *url).returncode == 0
    fast = ["--canary", "role=canary", "--bake", "0s", *url]

    out = hotload("fleet", "rollout", "xp", d2[:12], *fast)  # the prefix status prints
    assert out.returncode == 0, out.stderr
    assert "done: 2 host(s) run " + d2[:12] in out.stdout
    out = hotload("fleet", "rollout", "xp@4.0.0", *fast)  # two builds say 4.0.0
    assert out.returncode == 1 and "ambiguous" in out.stderr
    assert d3[:12] in out.stderr and dtwin[:12] in out.stderr
    out = hotload("fleet", "rollout", "xp", d3[:8], *fast)
    assert out.returncode == 0, out.stderr
    assert cluster.live("c1") == d3 and cluster.live("m1") == d3

    out = hotload("fleet", "history", "xp", *url)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:-1]]
    assert [(r[0], r[3], r[4]) for r in rows] == [
        ("1", "rollout", d2[:12]),
        ("*2", "rollout", d3[:12]),
    ]
    assert "revision in force: 2" in out.stdout

    out = hotload("fleet", "rollback", "xp", "--to", "1", *url)
    assert out.returncode == 0, out.stderr
    assert "done: 2 host(s) on revision 1" in out.stdout
    assert cluster.live("c1") == d2 and cluster.live("m1") == d2  # waited for: no polling here
    out = hotload("fleet", "rollback", "xp", *url)  # one back from revision 1: before the fleet
    assert out.returncode == 0, out.stderr
    assert "done: 2 host(s) on revision 0 (every host on its own build)" in out.stdout
    assert cluster.live("c1") == d1 and cluster.live("m1") == d1
    out = hotload("fleet", "rollback", "xp", *url)
    assert out.returncode == 1 and "nothing to roll back" in out.stderr
    hist = json.loads(hotload("fleet", "history", "xp", "--json", *url).stdout)
    assert [(e["revision"], e["action"], e["state"], e["base"]) for e in hist] == [
        (1, "rollout", "done", 1),
        (2, "rollout", "done", 2),
        (3, "rollback", "done", 1),
        (4, "rollback", "done", 0),
    ]
    out = hotload("fleet", "rollback", "xp", "--to", "9", *url)
    assert out.returncode == 1 and "no revision 9" in out.stderr


def test_messages_name_the_redis_the_url_came_from(tmp_path: Path) -> None:
    """ "Redis (default)" was printed when the URL came from
    $HOTLOAD_FLEET_REDIS; and a password in a URL is never printed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once it is closed
    env_url = f"redis://:s3cret@127.0.0.1:{port}/0"
    out = hotload("fleet", "status", redis_env=env_url, timeout=120)
    assert out.returncode == 1
    assert f"redis://:***@127.0.0.1:{port}/0 (from $HOTLOAD_FLEET_REDIS)" in out.stderr
    assert "(default)" not in out.stderr and "s3cret" not in out.stderr
    out = hotload("fleet", "status", "--redis", env_url.replace("s3cret", "hunter2"))
    assert out.returncode == 1 and "hunter2" not in out.stderr and ":***@" in out.stderr


@pytest.mark.soak  # make test-slow: six CLI runs, each starting the server, ~12 s
def test_the_embedded_fleet_signs_with_no_key_named(builds, tmp_path: Path) -> None:
    """No ``--redis``, no key, no variable: the commands use the embedded
    server and its key pair, made by the first publish in the state
    directory; what they write is signed.  ``--insecure`` writes unsigned,
    and ``status`` says so."""
    v2, d2 = builds(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTLOAD_FLEET_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hotload", "fleet", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    keys = tmp_path / "state" / "hotload"
    try:
        _embedded_commands(run, keys, v2, d2)
    finally:
        _stop_servers_in(keys)


def _embedded_commands(run: Any, keys: Path, v2: Path, d2: str) -> None:
    out = run("publish", str(v2), "--json")
    assert out.returncode == 0, out.stderr
    assert (keys / "fleet-key.pem").stat().st_mode & 0o777 == 0o600
    assert json.loads(out.stdout)["digest"] == d2 and json.loads(out.stdout)["signature"]
    out = run("rollback", "xp", "--to", "0", "--step-timeout", "1s")  # a decision, no hosts
    assert out.returncode == 0, out.stderr
    out = run("resign", "xp", "--expires", "2d")
    assert out.returncode == 0 and "xp: signed until" in out.stdout, out.stderr
    desired = json.loads(run("status", "--json").stdout)["desired"]["xp"]
    assert desired["signed"] and desired["expires_at"] - desired["signed_at"] > 1.9 * 86400
    out = run("rollback", "xp", "--to", "0", "--step-timeout", "1s", "--insecure")
    assert out.returncode == 0, out.stderr
    assert "UNSIGNED" in run("status").stdout


def _stop_servers_in(directory: Path) -> None:
    """Test hygiene: the embedded server the commands started stops after the
    last one exits, but a server still saving when pytest removes its
    directory never exits; wait for it (bounded), then end it by its pid."""
    import signal
    import time

    def servers() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"redis-server" in cmd and cwd == str(directory):
                found.append(int(pid))
        return found

    deadline = time.monotonic() + 10
    while servers() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in servers():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
