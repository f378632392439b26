"""Isolated plugins under hostile faults (issue 12): a plugin that forks, a
crash or a hang in a destructor at worker exit or in ``on_unload``, a worker
that exits while calls are in flight, ``close()`` while a worker hangs, and the
watcher loading isolated.

Real plugins compiled here, real worker processes and their children.  Every
wait is bounded (threads joined with a timeout, ``wait_for``)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hotload import Host, Isolated, PluginCrashedError

from conftest import Compile, child_pids, host_pid, wait_for

FORKY = r"""
#define _GNU_SOURCE
#define HOTLOAD_ALLOW_STRING_EXPORT
#include <hotload.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

HOTLOAD_PLUGIN("forky", "1");

HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b + TAG; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));

/* A child that sleeps holding every descriptor it inherited (the channel too). */
HOTLOAD_API int32_t spawn(int32_t secs)
{
    pid_t pid = fork();
    if (pid == 0) { sleep((unsigned)secs); _exit(0); }
    return (int32_t)pid;
}
HOTLOAD_EXPORT(spawn, int32_t, (int32_t));

/* A double-forked daemon in its own session; returns the daemon's pid. */
HOTLOAD_API int32_t daemonize(int32_t secs)
{
    int fds[2];
    if (pipe(fds)) return -1;
    pid_t mid = fork();
    if (mid == 0) {
        setsid();
        pid_t g = fork();
        if (g == 0) { sleep((unsigned)secs); _exit(0); }
        (void)!write(fds[1], &g, sizeof g);
        _exit(0);
    }
    pid_t g = -1;
    (void)!read(fds[0], &g, sizeof g);
    close(fds[0]);
    close(fds[1]);
    waitpid(mid, NULL, 0);
    return (int32_t)g;
}
HOTLOAD_EXPORT(daemonize, int32_t, (int32_t));

/* A child that crashes at once (nobody waits for it). */
HOTLOAD_API int32_t spawn_crash(void)
{
    pid_t pid = fork();
    if (pid == 0) { volatile int *p = NULL; *p = 1; _exit(1); }
    return (int32_t)pid;
}
HOTLOAD_EXPORT(spawn_crash, int32_t, (void));

HOTLOAD_API int32_t crash(int32_t how)
{
    if (how == 1) { volatile int *p = NULL; *p = 1; }
    return how;
}
HOTLOAD_EXPORT(crash, int32_t, (int32_t));

/* Sleep, then end the worker with exit code 0 (not a signal). */
HOTLOAD_API int32_t quit(int32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    _exit(0);
}
HOTLOAD_EXPORT(quit, int32_t, (int32_t));

HOTLOAD_API int32_t spin(void) { for (;;) {} return 0; }
HOTLOAD_EXPORT(spin, int32_t, (void));

static int64_t saved = TAG;
static int save(const void **state, size_t *size)
{
    if (UNLOAD_FAULT == 1) { volatile int *p = NULL; *p = 1; }
    if (UNLOAD_FAULT == 2) { for (;;) pause(); }
    *state = &saved; *size = sizeof saved; return 0;
}
HOTLOAD_ON_UNLOAD(save);

__attribute__((destructor)) static void bye(void)
{
    if (DTOR_FAULT == 1) { volatile int *p = NULL; *p = 1; }
    if (DTOR_FAULT == 2) { for (;;) pause(); }
}
"""

Build = Callable[..., Path]


@pytest.fixture
def forky(cc: Compile, tmp_path: Path) -> Build:
    def build(tag: int = 0, dtor: int = 0, unload: int = 0, where: Path | None = None) -> Path:
        src = (
            FORKY.replace("UNLOAD_FAULT", str(unload))
            .replace("DTOR_FAULT", str(dtor))
            .replace("TAG", str(tag))
        )
        return cc(src, "forky", out=where or tmp_path / "build" / "forky.so")

    return build


@pytest.fixture
def ihost(tmp_path: Path) -> Host:
    h = Host(tmp_path / "work", preflight=False, hook_timeout=2.0)
    yield h  # type: ignore[misc]
    h.close(timeout=2.0)


def running(pid: int) -> bool:
    """Whether ``pid`` is in the process table and not a zombie (orphans end
    as zombies of init, which in some containers never reaps them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def in_time(fn: Callable[[], object], timeout: float = 15.0) -> list[BaseException]:
    """Run ``fn`` in a thread, fail if it does not end within ``timeout``;
    the exceptions it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not finish within {timeout} s"
    return errors


def worker_pid(host: Host, name: str = "forky") -> int:
    info = host.current(name)
    assert info is not None and info.pid is not None
    return info.pid


# ---- a plugin that forks ------------------------------------------------------------
def test_forked_children_do_not_hold_up_reload_or_close(tmp_path: Path, forky: Build) -> None:
    """Children that hold every inherited descriptor (a sleeper, a daemon in
    its own session) neither hang the reload nor ``close()``, and stopping the
    version kills them."""
    h = Host(tmp_path / "w", preflight=False)
    try:
        p = h.load(forky(tag=1), isolate=True)
        old = worker_pid(h)
        kids = [host_pid(old, p.spawn(30)), host_pid(old, p.daemonize(30))]
        assert all(k > 0 and running(k) for k in kids)
        forky(tag=2)
        assert not in_time(lambda: h.reload("forky"))
        assert p.add(1, 1) == 4 and worker_pid(h) != old
        assert not in_time(lambda: h.settle(10.0))
        wait_for(lambda: not any(running(pid) for pid in [old, *kids]))
        new = worker_pid(h)
        kids2 = [host_pid(new, p.spawn(30)), host_pid(new, p.daemonize(30))]
    finally:
        assert not in_time(lambda: h.close(timeout=2.0))
    wait_for(lambda: not any(running(pid) for pid in [new, *kids2]))


def test_a_worker_that_dies_with_a_forked_child_fails_the_call_at_once(
    ihost: Host, forky: Build
) -> None:
    """The child keeps the channel open: the host must not wait for an EOF
    that never comes.  The call raises, the children die, the worker restarts."""
    p = ihost.load(forky(), isolate=True)
    old = worker_pid(ihost)
    kids = [host_pid(old, p.spawn(30)), host_pid(old, p.daemonize(30))]
    time.sleep(0.4)  # a supervisor tick sees the daemon
    errors = in_time(lambda: p.crash(1))
    assert len(errors) == 1 and isinstance(errors[0], PluginCrashedError), errors
    assert "SIGSEGV" in str(errors[0])
    wait_for(lambda: not any(running(pid) for pid in [old, *kids]))
    wait_for(lambda: ihost.current("forky").worker == "running")  # type: ignore[union-attr]
    assert p.add(2, 3) == 5


def test_a_forked_child_that_crashes_is_not_the_worker(ihost: Host, forky: Build) -> None:
    p = ihost.load(forky(), isolate=True)
    pid = worker_pid(ihost)
    kid = host_pid(pid, p.spawn_crash())
    wait_for(lambda: not running(kid))
    time.sleep(0.6)  # two supervisor ticks
    assert p.add(1, 2) == 3
    info = ihost.current("forky")
    assert info is not None and info.pid == pid and info.restarts == 0


# ---- destructors and on_unload ------------------------------------------------------
@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_fault_in_a_destructor_at_worker_exit_is_reported(
    tmp_path: Path, forky: Build, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The old version's worker crashes (or hangs) in a destructor as it
    exits after a reload: the stop finishes, is logged and noted on the old
    version, and the new version and the host serve on."""
    dtor = 1 if fault == "crash" else 2
    caplog.set_level(logging.WARNING, logger="hotload")
    h = Host(tmp_path / "w", preflight=False)
    try:
        p = h.load(forky(tag=1, dtor=dtor), isolate=True)
        old = worker_pid(h)
        forky(tag=2, dtor=dtor)
        h.reload("forky")
        assert p.add(0, 0) == 2
        assert not in_time(lambda: h.settle(10.0))
        wait_for(lambda: not running(old))
        done = [v for v in h.versions("forky") if v.state == "unloaded"]
        assert done and "at exit" in done[0].note, done
        want = "SIGSEGV" if fault == "crash" else "killed"
        assert any(want in r.getMessage() and "at exit" in r.getMessage() for r in caplog.records)
        assert p.add(0, 0) == 2  # the new version is untouched
        new = worker_pid(h)
    finally:
        assert not in_time(lambda: h.close(timeout=2.0))
    wait_for(lambda: not running(new))


def test_a_hang_in_on_unload_refuses_the_reload(ihost: Host, forky: Build) -> None:
    p = ihost.load(forky(tag=1, unload=2), isolate=True)
    forky(tag=2)
    errors = in_time(lambda: ihost.reload("forky"))
    assert len(errors) == 1 and "on_unload" in str(errors[0]), errors
    wait_for(lambda: ihost.current("forky").worker == "running")  # type: ignore[union-attr]
    assert p.add(0, 0) == 1  # the old build serves on, restarted in a new worker


def test_a_crash_in_on_unload_at_close_does_not_hang_it(tmp_path: Path, forky: Build) -> None:
    h = Host(tmp_path / "w", preflight=False, hook_timeout=2.0)
    p = h.load(forky(unload=1), isolate=True)
    assert p.add(1, 1) == 2
    pid = worker_pid(h)
    assert not in_time(lambda: h.close(timeout=2.0))
    wait_for(lambda: not running(pid))


# ---- a worker that exits while calls are in flight ------------------------------------
def test_a_worker_exit_fails_every_call_in_flight(ihost: Host, forky: Build) -> None:
    # one call at a time (threads=1): the adds queue behind quit() and fail with it
    # (with lanes they run beside it: tests/test_isolation_threads.py)
    p = ihost.load(forky(), isolate=Isolated(threads=1))
    errors: list[BaseException] = []
    results: list[object] = []

    def call(fn: Callable[[], object]) -> None:
        try:
            results.append(fn())
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    first = threading.Thread(target=call, args=(lambda: p.quit(400),))
    first.start()
    time.sleep(0.15)  # quit() is in the worker; the others queue behind it
    others = [threading.Thread(target=call, args=(lambda: p.add(1, 1),)) for _ in range(3)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(15.0)
        assert not t.is_alive()
    assert not results and len(errors) == 4, (results, errors)
    assert all(isinstance(e, PluginCrashedError) for e in errors)
    assert all("exited with code 0" in str(e) for e in errors), errors
    assert all(e.exit_code == 0 for e in errors)  # type: ignore[attr-defined]
    wait_for(lambda: ihost.current("forky").worker == "running")  # type: ignore[union-attr]
    assert p.add(1, 1) == 2
    assert ihost.current("forky").restarts == 1  # type: ignore[union-attr]


# ---- close() while a worker hangs in a call from 4 threads ---------------------------
def test_close_while_a_worker_hangs_in_calls_from_four_threads(
    tmp_path: Path, forky: Build
) -> None:
    h = Host(tmp_path / "w", preflight=False)
    p = h.load(forky(), isolate=True)
    pid = worker_pid(h)
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            p.spin()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=hang) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert not in_time(lambda: h.close(timeout=1.0))
    for t in threads:
        t.join(10.0)
        assert not t.is_alive()
    assert len(errors) == 4 and all(isinstance(e, PluginCrashedError) for e in errors), errors
    wait_for(lambda: not running(pid))
    assert not [k for k in child_pids(zombies=True) if running(k)]


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")


# ---- the watcher loads isolated ---------------------------------------------------------
def test_watch_isolate_loads_new_plugins_and_rebuilds_isolated(
    tmp_path: Path, forky: Build
) -> None:
    """A build dropped into a watched directory runs in a worker with the
    watch's options (call_timeout, on_crash); a rebuild is reloaded isolated."""
    from hotload import PluginTimeoutError

    drop = tmp_path / "plugins"
    drop.mkdir()
    h = Host(tmp_path / "w", preflight=False)
    try:
        h.watch(drop, isolate=Isolated(on_crash="stop", call_timeout=1.0), initial=False)
        os.replace(forky(tag=1), drop / "forky.so")  # a new plugin, whole (a rename)
        wait_for(lambda: "forky" in h)
        info = h.current("forky")
        assert info is not None and info.isolated and info.pid not in (None, os.getpid())
        p = h.plugin("forky")
        assert p.add(1, 1) == 3
        first = info.pid
        os.replace(forky(tag=2), drop / "forky.so")  # a rebuild
        wait_for(lambda: h.current("forky").seq == 2)  # type: ignore[union-attr]
        info = h.current("forky")
        assert info is not None and info.isolated and info.pid not in (None, first, os.getpid())
        assert p.add(1, 1) == 4
        errors = in_time(p.spin)  # call_timeout=1.0, then on_crash="stop"
        assert len(errors) == 1 and isinstance(errors[0], PluginTimeoutError), errors
        assert h.current("forky").worker == "stopped"  # type: ignore[union-attr]
    finally:
        assert not in_time(lambda: h.close(timeout=2.0))


def test_watch_isolate_refuses_a_bad_on_crash(tmp_path: Path) -> None:
    with Host(tmp_path / "w", preflight=False) as h, pytest.raises(ValueError, match="on_crash"):
        h.watch(tmp_path, isolate=Isolated(on_crash="explode"))
