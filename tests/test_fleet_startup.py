"""Fleet hosts starting up: the embedded Redis shared by hosts that start at
the same moment, the application's own ``load`` racing the agent, and what a
host reports (every plugin it runs, under the name it was given).

Found by a new user (issue 19, items 1, 2 and 4)."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from hotload import Host, HotloadError, fleet
from hotload.fleet import Fleet, Rule
from test_fleet import (  # noqa: F401  (fixtures)
    RedisServer,
    builds,
    fleet_key,
    redis_server,
    wait_for,
)

# ---- item 2: one embedded server per database file ----------------------------------

EMBEDDED_HOST = """
import json, os, sys, time
from hotload import Host

go, name, work = sys.argv[1], sys.argv[2], sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.001)
host = Host(work, preflight=False, fleet=True, fleet_labels={"n": name})
agent = host._services[-1]
agent.connected.wait(30)
print(json.dumps({"url": agent.url, "id": agent.id}), flush=True)
sys.stdin.read()
host.close()
"""


def test_hosts_started_at_the_same_moment_share_one_embedded_redis(tmp_path: Path) -> None:
    """Three hosts with ``fleet=True`` released at the same instant: one
    redis-server for the database file, and every host in its status."""
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(EMBEDDED_HOST))
    go = tmp_path / "go"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "HOTLOAD_FLEET_REDIS": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(go), f"h{i}", str(tmp_path / f"w{i}")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(3)
    ]
    db = tmp_path / "state" / "hotload" / "fleet.rdb"
    try:
        time.sleep(1.0)  # every interpreter has started and waits for the go
        go.touch()
        joined = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        urls = {j["url"] for j in joined}
        assert len(urls) == 1, f"split brain: {len(urls)} embedded servers for {db}: {urls}"
        status = subprocess.run(
            [sys.executable, "-m", "hotload", "fleet", "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        seen = {h["id"] for h in json.loads(status.stdout)["hosts"] if h["alive"]}
        assert seen == {j["id"] for j in joined}
    finally:
        for p in procs:
            p.communicate("", timeout=30)
        _stop_embedded(db)


def _servers_of(db: Path) -> list[int]:
    """The redis-server processes serving ``db`` (their working directory is its folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
            if b"redis-server" in cmd and os.readlink(entry / "cwd") == str(db.parent):
                pids.append(int(entry.name))
    return pids


@pytest.mark.soak  # in make test-slow: make test's 300 s budget
def test_the_embedded_server_stops_with_its_last_user_and_not_before(tmp_path: Path) -> None:
    """``hotload fleet status`` alone left an orphaned redis-server every other
    run (its own connections counted as another user at exit: new-user
    review); and a status run while a host is on the server must not stop it."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "HOTLOAD_FLEET_REDIS": ""}
    db = tmp_path / "state" / "hotload" / "fleet.rdb"
    status = [sys.executable, "-m", "hotload", "fleet", "status", "--json"]
    try:
        for run in range(3):
            done = subprocess.run(status, capture_output=True, text=True, env=env, timeout=60)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["hosts"] == []
            assert _servers_of(db) == [], f"run {run + 1} left a redis-server for {db}"

        script = tmp_path / "host.py"
        script.write_text(textwrap.dedent(EMBEDDED_HOST))
        (tmp_path / "go").touch()
        host = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "go"), "h", str(tmp_path / "w")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        joined = json.loads(host.stdout.readline())  # type: ignore[union-attr]
        server = _servers_of(db)
        assert len(server) == 1
        for _ in range(2):  # an operator looks twice: the host stays on its server
            done = subprocess.run(status, capture_output=True, text=True, env=env, timeout=60)
            assert done.returncode == 0, done.stderr
            assert [h["id"] for h in json.loads(done.stdout)["hosts"]] == [joined["id"]]
            assert _servers_of(db) == server
        host.communicate("", timeout=30)
        assert host.returncode == 0
        wait_for(lambda: not _servers_of(db), what="the server to stop with its last user")
    finally:
        _stop_embedded(db)


def _stop_embedded(db: Path) -> None:
    """Test hygiene: the last host's exit stops the embedded server; make sure."""
    settings = db.with_name(db.name + ".settings")
    if not settings.exists():
        return
    pidfile = Path(json.loads(settings.read_text())["pidfile"])
    if pidfile.exists():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


# ---- item 4: status shows what hosts run ------------------------------------------------


def _row(url: str, host_id: str, name: str = "xp") -> dict[str, Any] | None:
    """The status report of one host for one plugin, or None."""
    for h in fleet.status(url=url)["hosts"]:
        if h["id"] == host_id and h.get("alive"):
            rep: dict[str, Any] | None = h["plugins"].get(name)
            return rep
    return None


def test_status_shows_the_plugins_a_host_loaded_itself_under_its_name(
    tmp_path: Path, redis_server: RedisServer, builds
) -> None:
    """No rollout ever touched ``xp``: the host's own load, its reload and its
    unload show in ``fleet status`` at once, under ``fleet_name``, and again
    after Redis forgot everything (``FLUSHALL``, a restart without data)."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    url = redis_server.url
    with Host(
        tmp_path / "w",
        preflight=False,
        fleet=url,
        fleet_labels={"zone": "eu-1"},
        fleet_name="game-1",
    ) as host:
        host.load(v1)
        rep = wait_for(lambda: _row(url, "game-1"), what="the host's own plugin reported")
        assert (rep["state"], rep["digest"], rep["version"], rep["seq"]) == ("live", d1, "2.0.0", 1)
        host.reload("xp", v2)  # the application's own reload: reported without a rollout
        rep = wait_for(
            lambda: (r := _row(url, "game-1")) and r["digest"] == d2 and r, what="reload reported"
        )
        assert (rep["version"], rep["seq"]) == ("3.0.0", 2)

        redis_server.client().flushall()  # Redis forgets the host: it registers again
        rep = wait_for(lambda: _row(url, "game-1"), what="reported again after FLUSHALL")
        assert (rep["state"], rep["digest"]) == ("live", d2)

        redis_server.stop()  # a restart that lost the data (no persistence)
        for f in redis_server.dir.iterdir():
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
        redis_server.start()
        rep = wait_for(lambda: _row(url, "game-1"), what="reported again after a restart")
        assert rep["digest"] == d2
        st = fleet.status(url=url)
        assert [h["labels"] for h in st["hosts"]] == [{"zone": "eu-1"}]

        host.unload("xp")
        wait_for(lambda: _row(url, "game-1") is None, what="the unload reported")


# ---- item 1: Host(fleet=...) and the application's own load, in every order --------------

DROPS = """
#include <hotload.h>
#include <time.h>

HOTLOAD_PLUGIN("drops", "VERSION");

HOTLOAD_API int32_t drop_rate(void) { return RATE; }
HOTLOAD_EXPORT(drop_rate, int32_t, (void));

static int slow_start(const char *prev, const void *state, size_t size)
{
    (void)prev; (void)state; (void)size;
    struct timespec ts = {SLEEP_MS / 1000, (long)(SLEEP_MS % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return 0;
}
HOTLOAD_ON_LOAD(slow_start);
"""


def drops(cc: Any, rate: int, sleep_ms: int = 0) -> tuple[Path, str]:
    source = (
        DROPS.replace("VERSION", f"{rate}.0.0")
        .replace("RATE", str(rate))
        .replace("SLEEP_MS", str(sleep_ms))
    )
    path = cc(source, f"drops{rate}")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(host: Host, name: str = "drops") -> str | None:
    info = host.current(name)
    return info.digest if info is not None else None


@pytest.mark.parametrize("order", ["racing", "fleet_first", "load_first"])
def test_startup_converges_in_every_order(
    tmp_path: Path, redis_server: RedisServer, cc: Any, order: str
) -> None:
    """The fleet wants drops 3.0.0; the application loads its own drops 2.0.0.

    ``racing``: ``Host(fleet=...)`` then ``load`` at once; the application's
    load is slow (its ``on_load`` takes 1.5 s), so the agent's first load meets
    it (before: the agent failed with "already loaded" and the host stayed on
    2.0.0 for good).  ``fleet_first``: the fleet loaded 3.0.0 before the
    application's ``load`` (before: it raised "already loaded").
    ``load_first``: ``Host()``, ``load``, ``join_fleet``.  (The first two
    name drops in ``fleet_plugins``: without it the fleet never loads a
    plugin the host did not load itself.)  In every order the
    host converges to the fleet's build, the application's handle calls it,
    and when the fleet lets go the host returns to the application's build."""
    v1, d1 = drops(cc, 2, sleep_ms=1500 if order == "racing" else 0)
    v2, d2 = drops(cc, 3)
    url = redis_server.url
    with Fleet(url) as f:
        f.publish(v2)
        f.set_desired("drops", [Rule({}, d2)])
    kw: dict[str, Any] = {"preflight": False}
    if order != "load_first":
        # the fleet may load drops before the application does: the host names it
        kw.update(fleet=url, fleet_labels={"role": "game"}, fleet_name="h", fleet_plugins=["drops"])
    with Host(tmp_path / "w", **kw) as host:
        if order == "fleet_first":
            wait_for(lambda: _digest(host) == d2, what="the fleet's build loaded first")
            with pytest.raises(HotloadError, match="isolate") as err:
                host.load(v1, isolate=True)  # a mode the fleet's version does not have: why
            assert "before joining the fleet" in str(err.value)
        p: Any = host.load(v1)
        if order == "load_first":
            host.join_fleet(url, {"role": "game"}, name="h")
        wait_for(lambda: _digest(host) == d2, what="the fleet's build live")
        assert p.drop_rate() == 3  # the application's handle calls the fleet's version
        rep = wait_for(lambda: _row(url, "h", "drops"), what="report")
        wait_for(
            lambda: (r := _row(url, "h", "drops")) and r["state"] == "live" and r["digest"] == d2,
            what="reported live",
        )
        assert rep.get("error") is None
        with Fleet(url) as f:  # the fleet lets go: what the host ran before the fleet
            f.set_desired("drops", [Rule({}, None)])
        wait_for(lambda: _digest(host) == d1, what="back on the application's build")
        assert p.drop_rate() == 2


def test_a_redis_without_set_get_still_sees_a_lost_registration(
    tmp_path: Path, redis_server: RedisServer, builds
) -> None:
    """On Redis < 6.2 (no ``SET ... GET``) the heartbeat adds ``SADD hosts``,
    whose answer tells the same: after a ``FLUSHALL`` the host is back."""
    from hotload.fleet._agent import FleetAgent

    v1, d1 = builds(2)
    with Host(tmp_path / "w", preflight=False) as host:
        host.load(v1)
        agent = FleetAgent(host, redis_server.url, {}, host_id="old-redis", heartbeat=0.2)
        agent._set_get = False  # as after Redis answered "syntax error" to SET ... GET
        with agent:
            wait_for(lambda: _row(redis_server.url, "old-redis"), what="registered")
            redis_server.client().flushall()
            rep = wait_for(lambda: _row(redis_server.url, "old-redis"), what="registered again")
            assert rep["digest"] == d1
            assert not agent._set_get
