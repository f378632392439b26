"""Out of file descriptors, and a preflight worker killed while it starts:
every failure is a HotloadError that says what happened, and the running
version keeps serving.  Real rlimits, real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import hotload
from hotload import Host

from conftest import xp_source

EMFILE_CHILD = textwrap.dedent("""
    import json, os, resource, sys
    import hotload
    from hotload._ops import control_server

    v1, v2, ctl, watched = sys.argv[1:5]
    host = hotload.Host(preflight=True)
    plugin = host.load(v1, preflight=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    results = {}

    def at_the_limit(label, free, fn):
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        hog = []
        try:
            while len(os.listdir("/proc/self/fd")) < 256 - free - 1:
                hog.append(os.open("/dev/null", os.O_RDONLY))
            if not free:  # not one left
                try:
                    while True:
                        hog.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    pass
            try:
                fn()
                outcome = "ok"
            except hotload.HotloadError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            except BaseException as exc:
                outcome = f"RAW {type(exc).__name__}: {exc}"
        finally:
            for fd in hog:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        results.setdefault(label, []).append(outcome)

    for free in range(1, 13):  # reload reads the file, then spawns the worker (pipes)
        at_the_limit("reload", free, lambda: host.reload("fdp", v2 if free % 2 else v1))
    at_the_limit("Host()", 0, lambda: hotload.Host().close())
    at_the_limit("Host(control=True)", 0, lambda: hotload.Host(control=True).close())
    at_the_limit("ControlServer", 0, lambda: control_server.ControlServer(host, directory=ctl))
    at_the_limit("watch", 0, lambda: host.watch(watched))
    results["serving"] = plugin.reward(1, 1)
    print(json.dumps(results))
    host.close()
""")


def test_out_of_file_descriptors_is_a_resource_error_and_the_old_version_serves(
    cc, tmp_path: Path, short_tmp: Path
) -> None:
    v1 = cc(xp_source(mult=2).replace('"xp"', '"fdp"'), "fdp1")
    v2 = cc(xp_source(mult=3, version="2.0.0").replace('"xp"', '"fdp"'), "fdp2")
    ctl = short_tmp / "ctl"
    watched = tmp_path / "watched"
    watched.mkdir()
    env = {**os.environ, "HOTLOAD_WORKDIR": str(tmp_path / "work")}
    proc = subprocess.run(
        [sys.executable, "-c", EMFILE_CHILD, str(v1), str(v2), str(ctl), str(watched)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    raw = [(k, o) for k, outs in results.items() if k != "serving" for o in outs if "RAW" in o]
    assert not raw, f"not a HotloadError: {raw}"
    for label in ("Host()", "Host(control=True)", "ControlServer", "watch"):
        (outcome,) = results[label]
        assert outcome.startswith("ResourceError:") and "out of file descriptors" in outcome, (
            label,
            outcome,
        )
    assert results["serving"] in (3, 4)  # the running version kept serving throughout
    spawn = [o for o in results["reload"] if "preflight worker" in o]
    assert spawn and all(o.startswith("ResourceError:") for o in spawn), results["reload"]
    assert all("fdp" in o for o in spawn)  # names the file being reloaded


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_worker_killed_during_its_start_up_is_reported_as_external(
    host: Host, cc, sig: signal.Signals
) -> None:
    v1 = cc(xp_source(mult=2), "a1")
    v2 = cc(xp_source(mult=3, version="2.0.0"), "a2")
    plugin = host.load(v1, preflight=False)
    outcome: list[BaseException | None] = []

    def reload() -> None:
        try:
            host.reload("xp", v2, preflight=True)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=reload, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while host._preflight.pid is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    pid = host._preflight.pid
    assert pid is not None, "the worker never started"
    os.kill(pid, signal.SIGSTOP)  # freeze it mid-start-up (Python takes tens of ms to start)
    os.kill(pid, sig)
    if sig != signal.SIGKILL:
        os.kill(pid, signal.SIGCONT)
    t.join(60)
    assert outcome, "the reload never returned"
    error = outcome[0]
    assert isinstance(error, hotload.PreflightError), repr(error)
    assert error.step == "start" and error.external and error.signal_name == sig.name, str(error)
    assert sig.name in str(error) and "start-up" in str(error) and "a2" in str(error)
    assert plugin.reward(1, 1) == 3  # the running version keeps serving
    assert host.reload("xp", v2, preflight=True).plugin_version == "2.0.0"  # and retry works
