"""The shared-memory call channel against a hostile worker and a host whose
waits are cut short (attack 24's findings on ``_process/_spin.c``).

What it must keep: one deadline per call, whatever the worker drips on the
socket meanwhile (F1); a call made after a wait abandoned by a signal handler
(Ctrl-C, an alarm) is served, not lost (F2), with both host ends and both
routers of the worker; a huge ``call_timeout`` (``inf``, 1e11, 30 days) is no
bound, not a deadline of "now" or an overflow (F6, F4); the mapping's size is
sealed, so a worker cannot truncate it under the host (F5); an eventfd flood
does not make the waiting host spin (F3); the socket and eventfds a caller may
be waiting on stay open until the worker is freed (F7).

Real plugins compiled here, real worker processes; every wait is bounded."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hotload import Host, Isolated, PluginCrashedError
from hotload._process import wire

from conftest import Compile, run_guarded

HOSTILE = r"""
#define _GNU_SOURCE
#include <hotload.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

HOTLOAD_PLUGIN("hostile", "1");

HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
HOTLOAD_API int64_t slow(int32_t ms) { nap_ms(ms); return 1000 + ms; }
HOTLOAD_EXPORT(slow, int64_t, (int32_t));
/* a string argument: served by the Python code at both ends */
HOTLOAD_API int64_t slow_s(const char *s, int32_t ms)
{
    nap_ms(ms);
    return (int64_t)strlen(s) + ms;
}
HOTLOAD_EXPORT(slow_s, int64_t, (const char *, int32_t));

static int fds_of(const char *kind, int *out, int max)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;
    char path[300], link[128];
    while (d && (e = readdir(d)) && n < max) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, link, sizeof link - 1);
        if (k <= 0) continue;
        link[k] = 0;
        if (strncmp(link, kind, strlen(kind)) == 0) out[n++] = atoi(e->d_name);
    }
    if (d) closedir(d);
    return n;
}

/* the start of a frame of 1000 bytes on every socket, then a byte every gap_ms */
HOTLOAD_API int32_t drip(int32_t gap_ms, int32_t count)
{
    int fds[16], n = fds_of("socket:", fds, 16);
    unsigned char frame[4] = {0xe8, 0x03, 0, 0};
    for (int i = 0; i < count; i++) {
        unsigned char b = i < 4 ? frame[i] : 0x41;
        for (int k = 0; k < n; k++) (void)!write(fds[k], &b, 1);
        nap_ms(gap_ms);
    }
    for (;;) pause();
    return 0;
}
HOTLOAD_EXPORT(drip, int32_t, (int32_t, int32_t));

/* write every eventfd as fast as it can for ms; 7 */
HOTLOAD_API int32_t flood(int32_t ms)
{
    int fds[16], n = fds_of("anon_inode:[eventfd]", fds, 16);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t one = 1;
    for (;;) {
        for (int k = 0; k < n; k++) (void)!write(fds[k], &one, 8);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >= ms) break;
    }
    return n ? 7 : -1;
}
HOTLOAD_EXPORT(flood, int32_t, (int32_t));

/* truncate the channel's memfd through /proc/self/map_files: 0 when it shrank,
 * else the errno (+1000 for the truncate itself) */
HOTLOAD_API int32_t shrink(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512], path[128];
    unsigned long lo = 0, hi = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "memfd:hotload-isolate") && sscanf(line, "%lx-%lx", &lo, &hi) == 2) break;
    if (f) fclose(f);
    if (!lo) return -1;
    snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", lo, hi);
    int fd = open(path, O_RDWR);
    if (fd < 0) return errno;
    int r = ftruncate(fd, 0) < 0 ? 1000 + errno : 0;
    close(fd);
    return r;
}
HOTLOAD_EXPORT(shrink, int32_t, (void));
"""

SHM = os.environ.get("HOTLOAD_ISOLATE_CHANNEL", "") != "socket"


@pytest.fixture
def hostile(cc: Compile) -> Path:
    return cc(HOSTILE, "hostile")


def test_a_drip_on_the_socket_is_bounded_by_call_timeout(tmp_path: Path, hostile: Path) -> None:
    """F1: a byte every 100 ms on the socket during a call (the start of a
    frame that never ends) re-armed the socket's timeout at every recv(), and
    the C end's hand-back gave the whole timeout again: 4 s for 0.5 s.  One
    deadline per call now."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(hostile, isolate=Isolated(sandbox=False, call_timeout=0.5))
        assert p.add(1, 2) == 3
        t0 = time.monotonic()
        with pytest.raises(PluginCrashedError):  # a timeout, or garbage
            run_guarded(lambda: p.drip(100, 40), 30, what="a dripping worker")
        took = time.monotonic() - t0
        assert took < 2.5, f"the call took {took:.1f} s with call_timeout=0.5"
        assert run_guarded(lambda: p.add(2, 2), 30, what="the restart") == 4


class _Interrupted(Exception):
    pass


def _raise(signum: int, frame: object) -> None:
    raise _Interrupted


def _interrupted_then_called(p: object, call: str) -> tuple[int, float]:
    """Abandon a 400 ms call at 100 ms with an exception from a SIGALRM
    handler, then call add(): its result, and how long it took."""
    old = signal.signal(signal.SIGALRM, _raise)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        try:
            if call == "slow":
                p.slow(400)  # type: ignore[attr-defined]
            else:
                p.slow_s("abc", 400)  # type: ignore[attr-defined]
        except _Interrupted:
            pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    t0 = time.monotonic()
    got = run_guarded(lambda: p.add(20, 22), 30, what="the call after the interrupt")  # type: ignore[attr-defined]
    return got, time.monotonic() - t0


@pytest.mark.parametrize("call", ["slow", "slow_s"])
def test_a_call_after_an_interrupted_wait_is_served(
    tmp_path: Path, hostile: Path, call: str
) -> None:
    """F2: the worker took its next sequence from the word (the call published
    while it still ran the abandoned one) instead of the call it served: the
    next call was taken as done and timed out, blamed on the innocent caller
    (with no call_timeout: a hang).  ``slow`` is waited for and served in C,
    ``slow_s`` (a string) by the Python code at both ends."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(hostile, isolate=Isolated(sandbox=False, call_timeout=3))
        assert p.add(1, 2) == 3
        got, took = _interrupted_then_called(p, call)
        assert got == 42
        assert took < 2.5  # it waited for the abandoned call's reply (0.3 s), not a timeout
        info = h.current("hostile")
        assert info is not None and info.restarts == 0
        assert p.add(1, 1) == 2


PURE = r"""
import json, signal, sys, time
sys.path.insert(0, sys.argv[3])
from test_isolation_spin_faults import _interrupted_then_called
from hotload import Host, Isolated
with Host(sys.argv[1], preflight=False) as h:
    p = h.load(sys.argv[2], isolate=Isolated(sandbox=False, call_timeout=3))
    out = [_interrupted_then_called(p, c)[0] for c in ("slow", "slow_s")]
    print(json.dumps({"got": out, "restarts": h.current("hostile").restarts}))
"""


def test_a_call_after_an_interrupted_wait_with_the_python_end(
    tmp_path: Path, hostile: Path
) -> None:
    """F2 with the host's end in Python (``HOTLOAD_PURE_PYTHON=1``)."""
    env = {**os.environ, "HOTLOAD_PURE_PYTHON": "1"}
    here = str(Path(__file__).parent)
    argv = [sys.executable, "-c", PURE, str(tmp_path / "w"), str(hostile), here]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"got": [42, 42], "restarts": 0}


@pytest.mark.parametrize("timeout", [math.inf, 1e11, 30 * 86400.0])
def test_a_huge_call_timeout_is_no_bound(tmp_path: Path, hostile: Path, timeout: float) -> None:
    """F6/F4: ``inf`` and 1e11 made the C end's deadline "now" (an undefined
    float->uint64 cast): every call past the spin window "timed out"; 30 days
    overflowed poll()'s milliseconds on the Python end (a call with a string),
    reported as a SignatureError.  Now no bound (``inf`` reads as None)."""
    iso = Isolated(sandbox=False, call_timeout=timeout)
    assert iso.call_timeout == (None if timeout == math.inf else timeout)
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(hostile, isolate=iso)
        assert run_guarded(lambda: p.slow(30), 30, what="a slow call") == 1030
        assert run_guarded(lambda: p.slow_s("ab", 30), 30, what="a slow call in Python") == 32
        info = h.current("hostile")
        assert info is not None and info.restarts == 0


@pytest.mark.skipif(not SHM, reason="the socket channel has no mapping")
def test_the_mapping_cannot_be_truncated_by_the_worker(tmp_path: Path, hostile: Path) -> None:
    """F5: unsandboxed, the worker reopened the memfd through
    /proc/self/map_files and truncated it: the host's next access of the
    mapping died of SIGBUS.  The size is sealed before the worker starts."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(hostile, isolate=Isolated(sandbox=False, call_timeout=5))
        assert p.add(1, 2) == 3
        err = run_guarded(lambda: p.shrink(), 30, what="a truncate")
        assert err == 1000 + 1, err  # EPERM: F_SEAL_SHRINK
        assert p.add(2, 3) == 5


@pytest.mark.skipif(not SHM, reason="the socket channel has no eventfds")
def test_an_eventfd_flood_does_not_make_the_host_spin(tmp_path: Path, hostile: Path) -> None:
    """F3: a worker writing its eventfds as fast as it can during a call woke
    the waiting host at every write (a core of CPU); it now looks every
    millisecond after 32 wake-ups without a reply."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(hostile, isolate=Isolated(sandbox=False, call_timeout=10))
        assert p.add(1, 2) == 3
        proxy = h._swap._isolation._proxies[0]  # type: ignore[union-attr]  # noqa: SLF001
        chan = proxy.worker.chan  # the C end's counters (None with HOTLOAD_PURE_PYTHON=1)
        woken = chan.stats()["woken"] if chan is not None else 0
        cpu0, t0 = time.thread_time(), time.monotonic()
        assert p.flood(600) == 7
        cpu, wall = time.thread_time() - cpu0, time.monotonic() - t0
        print(
            f"the caller used {cpu * 1000:.0f} ms of CPU in {wall * 1000:.0f} ms, "
            f"load {os.getloadavg()[0]:.1f}"
        )
        assert cpu < 0.3 * wall
        if chan is not None:  # woken at most FLOOD_WAKES times, then it looked every ms
            assert chan.stats()["woken"] - woken <= 40
        assert p.add(2, 2) == 4


def test_the_c_end_waits_on_descriptors_of_its_own() -> None:
    """F7: ``Worker._release`` closed the eventfds and the socket while a caller
    could be inside the C wait without the GIL: poll() on a closed number
    returned at once (POLLNVAL, taken for the socket), and a number reused by
    another file meanwhile would have been read.  The C end keeps its own
    copies: the Worker's closing them changes nothing for the waiter;
    ``close()`` wakes it (``WHY_CLOSED``), and the copies are closed as the
    last caller leaves."""
    cspin = wire.cspin
    if cspin is None:
        pytest.skip("the C end is not built here")
    mm = mmap.mmap(-1, wire.SHM_SIZE)
    flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
    wake, done = os.eventfd(0, flags), os.eventfd(0, flags)
    a, b = socket.socketpair()
    ino = os.readlink(f"/proc/self/fd/{a.fileno()}")  # socket:[inode]
    chan = cspin.Channel(mm, peer=wake, own=done, sock=a.fileno(), host=True)
    out: list[object] = []

    def call(chan: object = chan) -> None:
        out.append(chan.call(b"\x00\x00qqq", (1, 2), 20.0))  # type: ignore[attr-defined]

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.1)  # asleep in poll(): nobody answers
    os.close(wake)
    os.close(done)
    a.close()
    reused = os.eventfd(1, flags)  # likely one of the numbers just closed, readable
    time.sleep(0.1)
    assert t.is_alive(), "the waiter woke on a descriptor closed under it"
    assert ino in _links()  # the C end's own copy
    t0 = time.monotonic()
    chan.close()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 2
    assert out == [cspin.AGAIN] and chan.why == cspin.WHY_CLOSED
    os.close(reused)
    b.close()
    del chan, call, t
    gc.collect()
    mm.close()
    assert ino not in _links()  # its copy of the socket was closed (its last one)


def _links() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out
