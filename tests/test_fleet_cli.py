"""``hotload fleet ...`` and ``hotload demo --fleet`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_fleet import Cluster, RedisServer, builds, cluster, redis_server  # noqa: F401

from conftest import wait_for

# ruff: noqa: F811  (fixtures imported from test_fleet are parameters here)


def hotload(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotload", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOTLOAD_FLEET_REDIS": ""},
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
    assert "step 1/2: role=canary" in out.stdout and "done: every host runs" in out.stdout

    out = hotload("fleet", "status", *url)
    assert out.returncode == 0, out.stderr
    assert "rollout xp" in out.stdout and "done" in out.stdout
    assert out.stdout.count(d2[:12]) >= 3  # the rollout line and both hosts
    st = json.loads(hotload("fleet", "status", "--json", "--plugin", "xp", *url).stdout)
    assert {h["id"]: h["plugins"]["xp"]["digest"] for h in st["hosts"]} == {"c1": d2, "m1": d2}

    assert hotload("fleet", "publish", str(bad), *url).returncode == 0
    out = hotload("fleet", "rollout", "xp", dbad, "--canary", "role=canary", "--bake", "1s", *url)
    assert out.returncode == 1
    assert "aborted" in out.stderr and "c1:" in out.stderr
    assert cluster.live("c1") == d2 and cluster.live("m1") == d2

    out = hotload("fleet", "abort", "xp", *url)  # nothing is running now
    assert out.returncode == 1 and "no rollout in progress" in out.stderr
    out = hotload("fleet", "rollout", "xp", "nothex", "--canary", "role=canary", *url)
    assert out.returncode == 1 and "not a SHA-256 digest" in out.stderr
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
