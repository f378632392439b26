"""Issue 22 item 3, first part: a rollout step is good only while the new
build is healthy where it runs.  The newcomer's case: a build whose
``reward`` segfaults on every positive input loads fine, went live on the
canary with ``--bake 5s``, crashed thousands of times there, stopped its
worker, and the rollout widened to every host and exited 0.  Now the
canary's heartbeat carries the new version's crashes, timeouts, failed
service calls and worker state, and the controller fails the step on them
and puts every host back.  Real host agents, a real Redis, isolated
plugins that really crash."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hotload import Host, PluginCrashedError
from hotload._errors import RolloutFailed
from hotload.fleet import Fleet
from hotload.fleet._converge import judged
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    builds,
    cluster,
    fleet_key,
    redis_server,
)

from conftest import Compile, wait_for, xp_source


@pytest.fixture
def crashy(cc: Compile, tmp_path: Path) -> tuple[Path, str]:
    """xp 3.0.0 whose ``reward`` dereferences NULL for every positive base."""
    src = xp_source(mult=3, version="3.0.0").replace(
        "return base * 3 + level;",
        "if (base > 0) { volatile int *p = 0; *p = 1; } return base * 3 + level;",
    )
    assert "*p = 1" in src
    out = tmp_path / "builds" / "xp-crashy.so"
    out.parent.mkdir(exist_ok=True)
    shutil.copyfile(cc(src, "xp-crashy"), out)
    return out, hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture
def players(cluster: Cluster) -> Iterator[Callable[[str], None]]:
    """``players(host_id)``: a thread calling ``xp.reward`` on that host until
    the test ends (every call that raises is the plugin's, and counted there)."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def play(host_id: str) -> None:
        host: Host = cluster.hosts[host_id]

        def loop() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    host.plugin("xp").reward(i, 1)
                except PluginCrashedError:
                    time.sleep(0.001)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        threads.append(t)

    yield play
    stop.set()
    for t in threads:
        t.join(10)


def test_a_build_that_crashes_on_the_canary_fails_the_step_and_every_host_goes_back(
    cluster: Cluster, redis_server: RedisServer, builds, crashy, players
) -> None:  # type: ignore[no-untyped-def]
    v1, d1 = builds(2)
    bad, dbad = crashy
    cluster.add("canary-1", {"role": "canary"}, start_with=v1, isolate=True)
    cluster.add("main-1", {}, start_with=v1, isolate=True)
    players("canary-1")
    progress: list[str] = []
    with Fleet(redis_server.url) as f:
        f.publish(bad)
        with pytest.raises(RolloutFailed) as failed:
            f.rollout(
                "xp", dbad, canary="role=canary", bake=20.0, poll=0.05, progress=progress.append
            )
        text = str(failed.value)
        assert "canary-1" in text and "unhealthy" in text and "crash" in text, text
        assert "main-1" not in text  # it never got the build
        rec = f.rollout_record("xp")
    assert rec is not None and rec["state"] != "done"
    assert not any("step 2/" in line for line in progress), progress  # it never widened
    wait_for(lambda: cluster.live("canary-1") == d1, what="the canary back on the old build")
    assert cluster.live("main-1") == d1


def test_a_healthy_build_bakes_through_under_load(
    cluster: Cluster, redis_server: RedisServer, builds, players
) -> None:  # type: ignore[no-untyped-def]
    """The control: the same rollout of a build that does not crash passes
    its bake while the canary serves, and reaches every host."""
    v1, d1 = builds(2)
    v2, d2 = builds(4)
    cluster.add("canary-1", {"role": "canary"}, start_with=v1, isolate=True)
    cluster.add("main-1", {}, start_with=v1, isolate=True)
    players("canary-1")
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        f.rollout("xp", d2, canary="role=canary", bake=1.0, poll=0.05)
    assert cluster.live("canary-1") == d2 and cluster.live("main-1") == d2


def test_the_bake_judges_the_version_the_host_reported() -> None:
    """The verdict, on heartbeats as Redis holds them: health of an older
    version is waited past; crashes, timeouts, failed service calls and a
    stopped worker of the reported version fail it; no health: not judged."""

    def host(health: dict[str, object] | None, seq: int = 2) -> dict[str, object]:
        h: dict[str, object] = {"plugins": {"xp": {"state": "live", "seq": seq}}}
        if health is not None:
            h["health"] = {"xp": health}
        return h

    assert judged(host(None), "xp") == ("done", "")
    assert judged(host({"seq": 1, "crashes": 9}), "xp")[0] == "pending"
    assert judged(host({"seq": 2, "calls": 100, "errors": 0}), "xp") == ("done", "")
    state, why = judged(host({"seq": 2, "crashes": 3, "timeouts": 1, "worker": "stopped"}), "xp")
    assert state == "refused"
    assert why == "the new build is unhealthy here (v2): 3 crashes, 1 timeout, its worker stopped"
    state, why = judged(host({"seq": 2, "service_errors": 1}), "xp")
    assert (state, why.endswith("1 failed host-service call")) == ("refused", True)
