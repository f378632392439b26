"""Fleet hosts starting up: the embedded Redis shared by hosts that start at
the same moment, the application's own ``load`` racing the agent, and what a
host reports (every plugin it runs, under the name it was given).

Found by a new user (issue 19, items 1, 2 and 4)."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from test_fleet import (  # noqa: F401  (fixtures)
    RedisServer,
    builds,
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


def _stop_embedded(db: Path) -> None:
    """Test hygiene: the last host's exit stops the embedded server; make sure."""
    settings = db.with_name(db.name + ".settings")
    if not settings.exists():
        return
    pidfile = Path(json.loads(settings.read_text())["pidfile"])
    if pidfile.exists():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
