"""Isolated plugins: each version in its own worker process (``isolate=True``).

Real plugins compiled here, real worker processes, real signals.  Every
wait is bounded."""

from __future__ import annotations

import array
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hotload import (
    Host,
    HotloadError,
    Isolated,
    PluginCrashedError,
    PluginTimeoutError,
    SignatureError,
)

from conftest import Compile, build_go_plugin, pid_alive, run_guarded, wait_for
from conftest import child_pids as children

FAULTY = r"""
#define _GNU_SOURCE
#define HOTLOAD_ALLOW_STRING_EXPORT
#include <hotload.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

HOTLOAD_PLUGIN("faulty", "VERSION");

static int64_t counter;

HOTLOAD_API int64_t add(int64_t a, int64_t b) { counter++; return a + b + TAG; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));

HOTLOAD_API int64_t count(void) { return counter; }
HOTLOAD_EXPORT(count, int64_t, (void));

HOTLOAD_API int32_t crash(int32_t how)
{
    fprintf(stderr, "faulty: about to crash (%d)\n", how);
    fflush(stderr);
    if (how == 1) { volatile int *p = NULL; *p = 1; }
    if (how == 2) abort();
    if (how == 3) _exit(42);
    return how;
}
HOTLOAD_EXPORT(crash, int32_t, (int32_t));

HOTLOAD_API int32_t nap(int32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return ms;
}
HOTLOAD_EXPORT(nap, int32_t, (int32_t));

HOTLOAD_API int32_t spew(void)
{
    for (int fd = 3; fd < 64; fd++) (void)!write(fd, "GARBAGE GARBAGE GARBAGE!", 24);
    return 0;
}
HOTLOAD_EXPORT(spew, int32_t, (void));

HOTLOAD_API int64_t sum(const int32_t *xs, size_t n)
{
    int64_t t = 0;
    for (size_t i = 0; i < n; i++) t += xs[i];
    return t;
}
HOTLOAD_EXPORT(sum, int64_t, (const int32_t *, size_t));

HOTLOAD_API void fill(int32_t *xs, size_t n, int32_t v)
{
    for (size_t i = 0; i < n; i++) xs[i] = v + (int32_t)i;
}
HOTLOAD_EXPORT(fill, void, (int32_t *, size_t, int32_t));

static char greeting[128];
HOTLOAD_API const char *greet(const char *who)
{
    snprintf(greeting, sizeof greeting, "hello %s", who);
    return greeting;
}
HOTLOAD_EXPORT(greet, const char *, (const char *));

HOTLOAD_API int32_t has_env(const char *name) { return getenv(name) != NULL; }
HOTLOAD_EXPORT(has_env, int32_t, (const char *));

HOTLOAD_API int32_t spin(void) { for (;;) {} return 0; }
HOTLOAD_EXPORT(spin, int32_t, (void));

static int64_t saved;
static int save(const void **state, size_t *size)
{
    if (ON_UNLOAD_CRASH) { volatile int *p = NULL; *p = 1; }
    saved = counter; *state = &saved; *size = sizeof saved; return 0;
}
HOTLOAD_ON_UNLOAD(save);

static int restore(const char *prev, const void *state, size_t size)
{
    (void)prev;
    if (ON_LOAD_CRASH) { volatile int *p = NULL; *p = 1; }
    if (ON_LOAD_HANG) { for (;;) pause(); }
    if (state && size == sizeof counter) memcpy(&counter, state, sizeof counter);
    return 0;
}
HOTLOAD_ON_LOAD(restore);
"""

Build = Callable[..., Path]


@pytest.fixture
def faulty(cc: Compile, tmp_path: Path) -> Build:
    target = tmp_path / "build" / "faulty.so"

    def build(
        tag: int = 0,
        version: str = "1",
        on_load_crash: int = 0,
        on_unload_crash: int = 0,
        on_load_hang: int = 0,
    ) -> Path:
        src = (
            FAULTY.replace("VERSION", version)
            .replace("TAG", str(tag))
            .replace("ON_LOAD_CRASH", str(on_load_crash))
            .replace("ON_UNLOAD_CRASH", str(on_unload_crash))
            .replace("ON_LOAD_HANG", str(on_load_hang))
        )
        return cc(src, "faulty", out=target)

    return build


@pytest.fixture
def ihost(tmp_path: Path) -> Host:
    h = Host(tmp_path / "work", preflight=False, hook_timeout=5.0)
    yield h  # type: ignore[misc]
    h.close()


def worker_pid(host: Host, name: str = "faulty") -> int:
    info = host.current(name)
    assert info is not None and info.pid is not None
    return info.pid


# ---- calls and versions ---------------------------------------------------------------
def test_isolated_call_runs_in_another_process(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(tag=1), isolate=True)
    assert p.add(2, 3) == 6
    info = ihost.current("faulty")
    assert info is not None and info.isolated and info.worker == "running"
    assert info.pid not in (None, os.getpid()) and pid_alive(info.pid)
    assert info.rss > 0 and info.restarts == 0
    # the image is mapped in the worker, never in the host; the sandboxed worker maps the
    # bytes the host checked (an anonymous copy: the work directory is not in its view)
    with open("/proc/self/maps") as fh:
        assert str(ihost.workdir) not in fh.read()
    with open(f"/proc/{info.pid}/maps") as fh:
        assert "/memfd:hotload-faulty" in fh.read()


def test_reload_hands_state_over_and_stops_the_old_worker(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(tag=1), isolate=True)
    for _ in range(5):
        p.add(1, 1)
    old_pid = worker_pid(ihost)
    faulty(tag=100, version="2")
    info = ihost.reload("faulty")
    assert info.isolated and info.pid != old_pid
    assert p.add(1, 1) == 102 and p.count() == 6  # the counter crossed in the state blob
    assert ihost.settle(10.0)
    wait_for(lambda: not pid_alive(old_pid))
    states = [v.state for v in ihost.versions("faulty")]
    assert states == ["unloaded", "active"]
    ihost.rollback("faulty")
    assert p.add(1, 1) == 3 and p.count() == 7  # v2's counter (6) came back, plus one
    assert ihost.current("faulty").isolated  # type: ignore[union-attr]


def test_close_stops_every_worker(tmp_path: Path, faulty: Build) -> None:
    h = Host(tmp_path / "w", preflight=False)
    p = h.load(faulty(), isolate=True)
    p.add(1, 2)
    pid = worker_pid(h)
    h.close()
    wait_for(lambda: not pid_alive(pid))
    wait_for(
        lambda: not children()
    )  # the warm spare too -------------------------------------------------------------------


def test_buffers_and_strings_cross(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(), isolate=True)
    assert p.sum(array.array("i", [1, 2, 3, 4]), 4) == 10
    assert p.sum([5, 6, 7], 2) == 11
    buf = bytearray(16)
    p.fill(buf, 4, 10)
    assert array.array("i", bytes(buf)).tolist() == [10, 11, 12, 13]
    xs = [0, 0, 0]
    p.fill(xs, 3, 7)
    assert xs == [7, 8, 9]
    assert p.greet(b"world") == b"hello world"
    with pytest.raises(SignatureError, match="more than"):
        p.sum([1, 2], 3)  # a length past the buffer never reaches the plugin
    with pytest.raises(SignatureError):
        p.add("x", 1)
    assert p.add(1, 1) == 2  # still serving


def test_a_prototype_that_cannot_cross_is_refused_at_load(ihost: Host, cc: Compile) -> None:
    lib = cc(
        r"""
        #define HOTLOAD_ALLOW_STRING_EXPORT
        #include <hotload.h>
        HOTLOAD_PLUGIN("opaque", "1");
        HOTLOAD_API int32_t poke(void *p) { return p != 0; }
        HOTLOAD_EXPORT(poke, int32_t, (void *));
        """,
        "opaque",
    )
    with pytest.raises(SignatureError, match=r"opaque void \*"):
        ihost.load(lib, isolate=True)
    assert "opaque" not in ihost
    p = ihost.load(lib)  # in-process, the same prototype is fine
    assert "poke" in p.functions()


def test_the_worker_environment_is_scrubbed(ihost: Host, faulty: Build) -> None:
    os.environ["HOTLOAD_TEST_SECRET"] = "s3cret"
    try:
        p = ihost.load(faulty(), isolate=True)
        assert p.has_env(b"HOTLOAD_TEST_SECRET") == 0
        assert p.has_env(b"PATH") == 1
    finally:
        del os.environ["HOTLOAD_TEST_SECRET"]


# ---- crashes --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("how", "word"), [(1, "SIGSEGV"), (2, "SIGABRT"), (3, "exited with code 42")]
)
def test_a_crash_in_a_call_raises_and_the_worker_restarts(
    ihost: Host, faulty: Build, how: int, word: str
) -> None:
    p = ihost.load(faulty(), isolate=True)
    for _ in range(3):
        p.add(1, 1)
    ihost.reload("faulty")  # now a state snapshot exists (count 3)
    pid = worker_pid(ihost)
    with pytest.raises(PluginCrashedError, match=word) as exc:
        p.crash(how)
    assert "about to crash" in exc.value.stderr and "about to crash" in str(exc.value)
    assert not pid_alive(pid)
    assert p.add(1, 1) == 2  # the restart policy put a new worker on the same version
    assert p.count() == 4  # restarted with the snapshot it started from (3), plus this call
    info = ihost.current("faulty")
    assert info is not None and info.restarts == 1 and info.pid != pid


def test_on_crash_stop_keeps_raising(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(), isolate=Isolated(on_crash="stop"))
    with pytest.raises(PluginCrashedError):
        p.crash(1)
    with pytest.raises(PluginCrashedError, match="SIGSEGV"):
        p.add(1, 1)
    assert ihost.current("faulty").worker == "stopped"  # type: ignore[union-attr]
    ihost.reload("faulty")  # the operator acts: a new version serves
    assert p.add(1, 1) == 2


def test_on_crash_rollback_brings_the_previous_build_back(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(tag=1), isolate=Isolated(on_crash="rollback"))
    faulty(tag=2, version="2")
    ihost.reload("faulty")
    with pytest.raises(PluginCrashedError):
        p.crash(1)
    wait_for(lambda: getattr(ihost.current("faulty"), "seq", 0) == 3)  # None while switching
    assert p.add(0, 0) == 1
    assert "rollback" in ihost.current("faulty").note  # type: ignore[union-attr]


def test_a_crash_loop_stops_restarting(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(), isolate=Isolated(max_restarts=2))
    for how in (1, 2, 3):  # three inputs (one input alone is quarantined: test_quarantine.py)
        with pytest.raises(PluginCrashedError):
            p.crash(how)
        wait_for(lambda: ihost.current("faulty").worker != "restarting")  # type: ignore[union-attr]
    with pytest.raises(PluginCrashedError, match="crash loop"):
        p.add(1, 1)
    info = ihost.current("faulty")
    assert info is not None and info.worker == "stopped" and info.restarts == 2


def test_every_call_in_flight_raises_when_the_worker_dies(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(), isolate=Isolated(on_crash="stop"))
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            p.nap(2000)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=slow) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    os.kill(worker_pid(ihost), signal.SIGKILL)
    for t in threads:
        t.join(10.0)
    assert len(errors) == 3 and all(isinstance(e, PluginCrashedError) for e in errors)
    assert "SIGKILL" in str(errors[0]) or "SIGKILL" in str(errors[-1])


def test_call_timeout_kills_a_hung_worker(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(), isolate=Isolated(call_timeout=0.5))
    pid = worker_pid(ihost)
    with pytest.raises(PluginTimeoutError, match="did not return within 0.5 s"):
        p.nap(5000)
    assert not pid_alive(pid)
    assert p.add(1, 1) == 2  # restarted


def test_a_worker_killed_while_idle_is_restarted(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(), isolate=True)
    pid = worker_pid(ihost)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: ihost.current("faulty").restarts == 1)  # type: ignore[union-attr]
    assert p.add(1, 1) == 2


def test_a_worker_stopped_from_outside_fails_the_call(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(), isolate=True)
    pid = worker_pid(ihost)
    threading.Timer(0.2, os.kill, (pid, signal.SIGSTOP)).start()
    with pytest.raises(PluginCrashedError) as err:
        p.nap(1500)  # no call_timeout: the supervisor notices the stopped worker
    # what happened, not the SIGKILL that ended it ("crashed with SIGKILL during nap": issue 19)
    assert "its worker was stopped (SIGSTOP" in str(err.value) and "during nap" in str(err.value)
    assert "crashed with SIGKILL" not in str(err.value)
    assert err.value.signal_name == "SIGSTOP"
    assert p.add(1, 1) == 2


def test_garbage_on_the_channel_is_a_crash(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(), isolate=True)
    with pytest.raises(PluginCrashedError, match="garbage"):
        p.spew()
    assert p.add(1, 1) == 2


def test_a_crash_in_on_load_refuses_the_reload(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(tag=1), isolate=True)
    p.add(0, 0)
    faulty(tag=2, on_load_crash=1)
    with pytest.raises(PluginCrashedError, match="SIGSEGV during on_load"):
        ihost.reload("faulty")
    assert p.add(0, 0) == 1 and p.count() == 2  # the old version serves, state intact
    assert ihost.current("faulty").restarts == 0  # type: ignore[union-attr]


def test_a_hang_in_on_load_refuses_the_reload(tmp_path: Path, faulty: Build) -> None:
    with Host(tmp_path / "w", preflight=False, hook_timeout=0.5) as h:
        p = h.load(faulty(tag=1), isolate=True)
        faulty(tag=2, on_load_hang=1)
        with pytest.raises(Exception, match="0.5"):
            h.reload("faulty")
        assert p.add(0, 0) == 1
        h.settle(5.0)
        assert [v.state for v in h.versions("faulty")] == ["active"]
        # v1's worker, the warm spare and the zygote that forks them, no hung one
        wait_for(lambda: len(children()) <= 3)


def test_a_crash_in_on_unload_keeps_the_old_version(ihost: Host, faulty: Build) -> None:
    p = ihost.load(faulty(tag=1, on_unload_crash=1), isolate=True)
    p.add(0, 0)
    faulty(tag=2)
    with pytest.raises(PluginCrashedError, match="on_unload"):
        ihost.reload("faulty")
    assert p.add(0, 0) == 1  # the old build, restarted in a new worker


def test_close_while_a_worker_hangs(tmp_path: Path, faulty: Build) -> None:
    h = Host(tmp_path / "w", preflight=False)
    p = h.load(faulty(), isolate=True)
    pid = worker_pid(h)
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            p.spin()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    t = threading.Thread(target=hang)
    t.start()
    wait_for(lambda: h.versions("faulty")[-1].in_flight, what="spin() in flight")
    run_guarded(lambda: h.close(timeout=1.0), what="close() while a worker hangs")
    t.join(10.0)
    assert not t.is_alive() and errors and isinstance(errors[0], PluginCrashedError)
    assert "the host was closed during spin" in str(errors[0])  # not "crashed"
    wait_for(lambda: not pid_alive(pid))


def test_cpu_limit_kills_a_runaway_plugin_with_sigxcpu(ihost: Host, faulty: Build) -> None:
    """The documented signal: the kernel's SIGXCPU at the soft limit ends it
    (both limits at ``cpu_seconds`` made the kernel send SIGKILL first:
    issue 19 item 10), and the error says which limit it hit."""
    p = ihost.load(faulty(), isolate=Isolated(limits={"cpu_seconds": 1}, on_crash="stop"))
    with pytest.raises(PluginCrashedError, match="SIGXCPU") as err:
        p.spin()
    assert err.value.signal_name == "SIGXCPU"
    assert "its cpu_seconds limit (1 s of CPU)" in str(err.value)


# ---- real unload ------------------------------------------------------------------------
@pytest.mark.parametrize("reloads", [5, pytest.param(20, marks=pytest.mark.soak)])
def test_nodelete_plugin_really_unloads_when_isolated(
    tmp_path: Path, cc: Compile, reloads: int
) -> None:
    """A library linked ``-z nodelete`` can never leave a process; isolated,
    each reload stops its worker: the host's threads, fds and mappings stay
    flat (a thread or an fd kept per reload is past the slack after 5)."""
    src = r"""
    #define HOTLOAD_ALLOW_STRING_EXPORT
    #include <hotload.h>
    HOTLOAD_PLUGIN("sticky", "1");
    HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b + TAG; }
    HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
    """
    out = tmp_path / "build" / "sticky.so"
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(
            cc(src.replace("TAG", "0"), "sticky", ["-Wl,-z,nodelete"], out=out), isolate=True
        )
        h.reload("sticky")
        h.settle(10.0)
        time.sleep(0.5)  # the spare worker is started in the background
        threads0, fds0 = threading.active_count(), len(os.listdir("/proc/self/fd"))
        pids = set()
        for i in range(1, reloads + 1):
            cc(src.replace("TAG", str(i)), "sticky", ["-Wl,-z,nodelete"], out=out)
            pids.add(h.reload("sticky").pid)
            assert p.add(1, 1) == 2 + i
        assert h.settle(10.0)
        time.sleep(0.5)
        assert threading.active_count() <= threads0 + 1
        assert len(os.listdir("/proc/self/fd")) <= fds0 + 2
        assert not h.leaks()
        live = [v for v in h.versions("sticky") if v.state != "unloaded"]
        assert len(live) == 1
        pids.discard(live[0].pid)
        wait_for(lambda: not any(pid_alive(pid) for pid in pids))
        with open("/proc/self/maps") as fh:
            assert str(h.workdir) not in fh.read()


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain (.ci/sdk-deps.sh)")
@pytest.mark.parametrize(
    ("reloads", "rss_limit_kb"),
    [(10, 4 * 1024), pytest.param(40, 8 * 1024, marks=pytest.mark.soak)],
    ids=["10", "40"],
)
def test_go_c_shared_really_unloads_when_isolated(
    tmp_path: Path, reloads: int, rss_limit_kb: int
) -> None:
    """Go c-shared libraries never leave a process (NODELETE, static TLS, their
    own threads): in-process the leak budget stops reloads; isolated, the
    host's RSS, threads and fds stay flat and no worker is left behind (an
    in-process Go reload leaks ~900 KB: 10 of them are past 4 MiB)."""
    lib = build_go_plugin(tmp_path)
    before = set(children())  # a process an earlier test in this pytest worker left
    with Host(tmp_path / "in", preflight=False, max_leaked=3) as h:
        h.load(lib)
        with pytest.raises(HotloadError, match="max_leaked"):
            for _ in range(6):
                h.reload("gox")
                h.settle(10.0)
    with Host(tmp_path / "iso", preflight=False, max_leaked=3) as h:
        p = h.load(lib, isolate=True)
        for _ in range(8):  # the host's RSS grows ~5 MiB over the first few, then stays flat
            h.reload("gox")
        h.settle(10.0)
        time.sleep(0.5)
        threads0, fds0 = threading.active_count(), len(os.listdir("/proc/self/fd"))
        rss0 = _rss_kb()
        for i in range(reloads):
            h.reload("gox")
            assert p.Add(i, 1) == i + 1
        assert h.settle(10.0)
        time.sleep(0.5)
        assert threading.active_count() <= threads0 + 1
        assert len(os.listdir("/proc/self/fd")) <= fds0 + 2
        assert _rss_kb() - rss0 < rss_limit_kb
        assert not h.leaks()
        # the live worker, the warm spare and the zygote that forks them
        try:
            wait_for(lambda: len(set(children()) - before) <= 3)
        except AssertionError:
            raise AssertionError(f"children left: {_cmdlines(set(children()) - before)}") from None
    wait_for(lambda: not set(children()) - before)


def _cmdlines(pids: set[int]) -> list[str]:
    """What each process is, for a failure's message."""
    out = []
    for pid in sorted(pids):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            raw = b"(gone)"
        text = raw.replace(b"\0", b" ").decode(errors="replace")
        out.append(f"{pid}: {text[:120]}")
    return out


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def test_ls_shows_the_worker_pid_and_restarts(ihost: Host, faulty: Build, short_tmp: Path) -> None:
    import re
    import sys

    server = ihost.serve_control(directory=short_tmp / "ctl")
    p = ihost.load(faulty(), isolate=True)
    with pytest.raises(PluginCrashedError):
        p.crash(1)
    assert p.add(1, 1) == 2  # restarted
    pid = worker_pid(ihost)
    out = subprocess.run(
        [sys.executable, "-m", "hotload", "ls", "--socket", str(server.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("faulty"))
    assert re.search(rf"\bactive \[pid {pid}, sandboxed, 1 restart\] ", row), out.stdout
    assert "runs isolated in worker process N" in out.stdout


def test_a_buffer_larger_than_shared_memory_crosses_on_the_socket(
    ihost: Host, faulty: Build
) -> None:
    p = ihost.load(faulty(), isolate=True)
    big = array.array("i", range(100_000))  # 400 KB: more than the shared-memory area
    assert p.sum(big, len(big)) == sum(range(100_000))
    p.fill(big, len(big), 7)
    assert big[0] == 7 and big[-1] == 7 + 99_999  # copied back into the caller's buffer
    assert p.add(2, 3) == 5  # and the next call goes through shared memory again


@pytest.mark.parametrize(
    ("limits", "named"),
    [
        ({"adress_space": 1 << 30}, "unknown limit 'adress_space'"),
        ({"address_space": "x"}, "limits\\['address_space'\\]"),
        ({"address_space": -1}, "limits\\['address_space'\\]"),
        ({"cpu_seconds": 0}, "limits\\['cpu_seconds'\\]"),
        ({"cpu_seconds": True}, "limits\\['cpu_seconds'\\]"),
        ({"nice": 20}, "limits\\['nice'\\]"),
        (["cpu_seconds"], "limits must be a mapping"),
    ],
)
def test_bad_isolation_options_are_refused_before_anything_starts(
    tmp_path: Path, faulty, limits, named
) -> None:
    """A typo in a limit's name, a string, a negative number: a ``ConfigError``
    (a ``HotloadError``) naming the key, raised by ``Isolated(...)`` itself, so
    no worker is ever spawned with a limit the kernel would refuse or ignore."""
    from hotload import ConfigError

    before = children()
    with pytest.raises(ConfigError, match=named):
        Isolated(limits=limits)
    with Host(tmp_path / "w", preflight=False) as h:
        with pytest.raises(ConfigError, match="isolate must be"):
            h.load(faulty(), isolate="yes")  # type: ignore[arg-type]
        assert h.names() == []
    assert children() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("on_crash", "explode"), ("call_timeout", 0), ("call_timeout", "1"), ("max_restarts", -1)],
)
def test_every_isolation_option_is_checked(field: str, value: object) -> None:
    from hotload import ConfigError, HotloadError

    with pytest.raises(ConfigError, match=field) as err:
        Isolated(**{field: value})  # type: ignore[arg-type]
    assert isinstance(err.value, HotloadError) and isinstance(err.value, ValueError)
