"""The shared-memory channel's spin-then-sleep protocol (issue 24 item 1,
``_process/_spin.c``): calls of numbers packed, waited for and served in C,
an eventfd written only to a side that said it sleeps.

What it must keep: every argument and result crosses bit for bit as in
process (the worker calls the export through one wide prototype); no wake-up
is lost whatever the gap between calls (spinning, yielding, asleep, and the
moments between); a worker killed while it spins, a caller thread that ends
while the worker spins, and a torn or forged write in shared memory each get
the answer the socket protocol gives.  The Python ends (``HOTLOAD_PURE_PYTHON=1``
on the host) keep the same protocol against the C worker.

Real plugins compiled here, real worker processes; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hotload import Host, Isolated, PluginCrashedError, PluginTimeoutError
from hotload._process import wire

from conftest import Compile, run_guarded, wait_for

SPINNY = r"""
#define _GNU_SOURCE
#include <hotload.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

HOTLOAD_PLUGIN("spinny", "1");

HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));

/* every scalar kind, ints and floats interleaved: the wide call must find each
 * (6 integers: every integer register; mix7's seventh goes to cffi) */
HOTLOAD_API double mix(int8_t a, float x, uint16_t b, double y, int32_t c, _Bool t,
                       uint64_t big, float z, int16_t d)
{
    return a + x * 2.0 + b * 3.0 + y * 4.0 + c * 5.0 + t * 6.0 + (double)(big >> 40)
        + z * 7.0 + d * 11.0;
}
HOTLOAD_EXPORT(mix, double, (int8_t, float, uint16_t, double, int32_t, _Bool, uint64_t,
                             float, int16_t));
HOTLOAD_API int64_t mix7(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e, int64_t f,
                         int64_t g)
{
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g;
}
HOTLOAD_EXPORT(mix7, int64_t, (int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t));

HOTLOAD_API float halve(float x) { return x / 2.0f; }
HOTLOAD_EXPORT(halve, float, (float));
HOTLOAD_API int8_t neg8(int8_t x) { return (int8_t)-x; }
HOTLOAD_EXPORT(neg8, int8_t, (int8_t));
HOTLOAD_API uint16_t low16(uint32_t x) { return (uint16_t)x; }
HOTLOAD_EXPORT(low16, uint16_t, (uint32_t));
HOTLOAD_API _Bool odd(int64_t x) { return (x & 1) != 0; }
HOTLOAD_EXPORT(odd, _Bool, (int64_t));
HOTLOAD_API uint64_t umax(void) { return ~(uint64_t)0; }
HOTLOAD_EXPORT(umax, uint64_t, (void));
static int64_t total;
HOTLOAD_API void bump(int64_t by) { total += by; }
HOTLOAD_EXPORT(bump, void, (int64_t));
HOTLOAD_API int64_t tally(void) { return total; }
HOTLOAD_EXPORT(tally, int64_t, (void));

/* The channel's mapping, found as a hostile plugin would (its descriptor is closed). */
static volatile uint64_t *area(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long lo = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "memfd:hotload-isolate") && sscanf(line, "%lx", &lo) == 1) break;
    if (f) fclose(f);
    return (volatile uint64_t *)lo;
}

/* 1: half a reply written, never published (the sequence is written last), then a crash;
 * 2: a reply of the wrong length published under the call's own sequence, then a hang;
 * on lane how >> 8 (0: the eventfd channel; k: lane k, 1 KiB each after it) */
HOTLOAD_API int32_t forge(int32_t how)
{
    volatile uint64_t *ctl = area();
    if (!ctl) return -1;
    int lane = how >> 8;
    how &= 0xff;
    volatile unsigned char *rep = (volatile unsigned char *)ctl + 128 + 65536;
    if (lane) {
        ctl = (volatile uint64_t *)((volatile unsigned char *)ctl + 128 + 2 * 65536
                                    + (lane - 1) * 1024);
        rep = (volatile unsigned char *)ctl + 128 + 448;
    }
    if (how == 1) {
        rep[0] = 0; rep[1] = 0x41; rep[2] = 0x41; rep[3] = 0x41; rep[4] = 0x41;
        ctl[9] = 5;
        volatile int *p = NULL;
        *p = 1;
    }
    if (how == 2) {
        rep[0] = 0;
        ctl[9] = 3;
        __atomic_store_n(&ctl[8], ctl[0], __ATOMIC_RELEASE);
        for (;;) sleep(1);
    }
    if (how == 3) { /* a service request (the service bit) for a service it does not import */
        rep[0] = 1; rep[1] = 0xff; rep[2] = 0xff;
        ctl[9] = 3;
        __atomic_store_n(&ctl[8], (uint64_t)1 << 63 | 12345, __ATOMIC_RELEASE);
        for (;;) sleep(1);
    }
    return 0;
}
HOTLOAD_EXPORT(forge, int32_t, (int32_t));
"""

pytestmark = pytest.mark.skipif(not wire.shm_supported(), reason="no shared-memory channel here")


@pytest.fixture
def spinny(cc: Compile) -> Path:
    return cc(SPINNY, "spinny")


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_every_scalar_crosses_as_in_process(tmp_path: Path, spinny: Path) -> None:
    """The worker calls through one wide prototype (ints in order, floats in
    order): each kind, interleaved, narrow, signed and unsigned, returns what
    the same build returns in process."""
    calls = [
        ("add", (2**40, -7)),
        ("mix", (-5, 1.5, 65535, -2.25, -(2**31), True, 2**63 + 2**41, 0.1, -300)),
        ("mix", (127, -1e30, 0, 1e300, 2**31 - 1, False, 0, -0.0, 32767)),
        ("mix7", (1, 2, 3, 4, 5, 6, 7)),
        ("halve", (3.0,)),
        ("halve", (-1e-40,)),
        ("neg8", (-128,)),
        ("neg8", (5,)),
        ("low16", (2**32 - 1,)),
        ("odd", (7,)),
        ("odd", (-8,)),
        ("umax", ()),
        ("bump", (5,)),
        ("tally", ()),
    ]
    with Host(tmp_path / "a", preflight=False) as h1, Host(tmp_path / "b", preflight=False) as h2:
        inproc = h1.load(spinny)
        iso = h2.load(spinny, isolate=Isolated(sandbox=False))
        for name, args in calls:
            want, got = getattr(inproc, name)(*args), getattr(iso, name)(*args)
            assert type(got) is type(want) and repr(got) == repr(want), (name, args, got, want)
        # arguments the C end hands back to the Python path: the same errors as before
        for bad in [(2**63, 0), ("1", 2), (1.5, 2)]:
            with pytest.raises((TypeError, OverflowError)):
                iso.add(*bad)
        assert iso.add(1, 1) == 2


STRESS = r"""
import json, os, sys, time
from hotload import Host, Isolated
spin_ns = int(sys.argv[3])
with Host(sys.argv[1], preflight=False) as h:
    p = h.load(sys.argv[2], isolate=Isolated(sandbox=False, call_timeout=20))
    gaps = [0, 2e-6, 20e-6, 45e-6, 55e-6, 120e-6, 1e-3]
    bad = 0
    for i in range(350):
        end = time.perf_counter() + gaps[i % len(gaps)]
        while time.perf_counter() < end:
            pass
        bad += p.add(i, 1) != i + 1
    print(json.dumps({"bad": bad}))
"""


@pytest.mark.parametrize("host_end", ["c", "python"])
def test_no_wake_up_is_lost_whatever_the_gap(tmp_path: Path, spinny: Path, host_end: str) -> None:
    """Calls after gaps around the worker's spin window (spinning, yielding,
    just asleep, long asleep) all return: a lost wake-up would hang a call
    until ``call_timeout``.  With the host's end in C, and in Python
    (``HOTLOAD_PURE_PYTHON=1``) against the C worker."""
    env = dict(os.environ)
    if host_end == "python":
        env["HOTLOAD_PURE_PYTHON"] = "1"
    else:
        env.pop("HOTLOAD_PURE_PYTHON", None)
    argv = [sys.executable, "-c", STRESS, str(tmp_path / "w"), str(spinny), "0"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"bad": 0}


def test_a_worker_killed_while_it_spins(tmp_path: Path, spinny: Path) -> None:
    """SIGKILL right after a reply, while the worker spins for the next
    request: the next call sees the socket's EOF (it never said it sleeps, so
    no eventfd is written) and raises ``PluginCrashedError``; the restart
    serves."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(spinny, isolate=Isolated(sandbox=False, call_timeout=20))
        raised = 0
        for i in range(3):
            assert p.add(i, 1) == i + 1
            info = h.current("spinny")
            assert info is not None and info.pid is not None
            os.kill(info.pid, signal.SIGKILL)
            try:
                run_guarded(lambda: p.add(1, 1), 30, what="a call to a worker killed mid-spin")
            except PluginCrashedError as exc:
                assert exc.signal_name == "SIGKILL", exc
                raised += 1
            assert run_guarded(lambda: p.add(2, 2), 30, what="the call after the restart") == 4
        assert raised >= 1  # (the supervisor's idle check may see a death first, now and then)


def test_a_caller_thread_that_ends_while_the_worker_spins(tmp_path: Path, spinny: Path) -> None:
    """Threads that each make a call and end at once leave the worker
    spinning; it then sleeps (no CPU while idle) and the next call, from
    another thread, wakes it."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(spinny, isolate=Isolated(sandbox=False, call_timeout=20))
        got: list[int] = []
        for i in range(10):
            t = threading.Thread(target=lambda i=i: got.append(p.add(i, 0)))
            t.start()
            t.join(30)
            assert not t.is_alive()
        assert sorted(got) == list(range(10))
        info = h.current("spinny")
        assert info is not None and info.pid is not None
        time.sleep(0.05)  # past the spin window: asleep in poll()
        before = _cpu_ticks(info.pid)
        time.sleep(0.5)
        assert _cpu_ticks(info.pid) - before <= 5  # a spinning worker would burn ~50 ticks
        assert run_guarded(lambda: p.add(20, 22), 30, what="a call that wakes the worker") == 42


@pytest.mark.parametrize("threads", [1, 4])
def test_a_torn_write_in_shared_memory_is_never_read(
    tmp_path: Path, spinny: Path, threads: int
) -> None:
    """A reply half written and never published (the sequence comes last):
    the host never reads it, and reports the crash that followed; a reply
    forged under the call's own sequence with a wrong length is garbage.  On
    lane 0 (threads=1) and on a lane (one calling thread: lane 1)."""
    lane = 0 if threads == 1 or wire.cspin is None else 1 << 8
    with Host(tmp_path / "w", preflight=False) as h:
        # 1 s: a forger writes no eventfd, so a caller already asleep sees its reply only
        # when it wakes at the deadline (and calls it garbage then)
        p = h.load(spinny, isolate=Isolated(sandbox=False, call_timeout=1, threads=threads))
        assert p.add(1, 2) == 3
        with pytest.raises(PluginCrashedError) as err:
            run_guarded(lambda: p.forge(lane | 1), 30, what="a torn reply")
        assert err.value.signal_name == "SIGSEGV"
        assert run_guarded(lambda: p.add(2, 2), 30, what="the restart") == 4
        with pytest.raises(PluginCrashedError, match="garbage"):
            run_guarded(lambda: p.forge(lane | 2), 30, what="a forged reply")
        wait_for(lambda: run_guarded(lambda: p.add(3, 3), 30) == 6, what="the second restart")


ASKER = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("asker", "1");
HOTLOAD_IMPORT(give, int32_t, (int64_t, int32_t));
HOTLOAD_API int64_t ask_many(int64_t player, int32_t times)
{
    int64_t t = 0;
    for (int32_t i = 0; i < times; i++) t += give(player, i);
    return t;
}
HOTLOAD_EXPORT(ask_many, int64_t, (int64_t, int32_t));
/* seven integers: served by the worker's Python path (cffi), in place all the same */
HOTLOAD_API int64_t ask7(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e, int64_t f,
                         int64_t g)
{
    return give(a, (int32_t)(b + c + d + e + f + g));
}
HOTLOAD_EXPORT(ask7, int64_t, (int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t));
HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
HOTLOAD_API int64_t ask_forever(void) { for (;;) give(0, 0); return 0; }
HOTLOAD_EXPORT(ask_forever, int64_t, (void));
"""


@pytest.mark.skipif(wire.cspin is None, reason="the C end of the channel is not built")
def test_service_calls_inside_a_call_are_answered_in_place(tmp_path: Path, cc: Compile) -> None:
    """Issue 24 item 2: a host service the plugin calls inside a call is
    served on the calling thread, in the mapping (not by the service thread,
    not on the socket), with the in-process rules: an exception gives the
    plugin the error value, a call back into the waiting version is refused;
    calls with and without services interleave."""
    lib = cc(ASKER, "asker")
    with Host(tmp_path / "w", preflight=False) as h:
        threads: list[int] = []
        p: Any = None

        def give(player: int, n: int) -> int:
            threads.append(threading.get_ident())
            if n == 5:
                raise ValueError("five")
            if n == 9:
                return int(p.add(1, 1))  # would deadlock: refused, the error value
            return n * 2 + player

        h.provide("give", give, "int32_t(int64_t, int32_t)", error=-1)
        p = h.load(lib, isolate=Isolated(sandbox=False, call_timeout=20))
        for k in range(50):
            assert p.ask_many(k, 4) == 12 + 4 * k
            assert p.add(k, 1) == k + 1
        assert p.ask_many(0, 6) == 0 + 2 + 4 + 6 + 8 - 1
        assert p.ask_many(0, 10) == sum(2 * i for i in range(10) if i not in (5, 9)) - 2
        assert p.ask7(1, 1, 1, 1, 1, 1, 1) == 13
        assert set(threads) == {threading.get_ident()}  # each answered on the caller's thread


@pytest.mark.skipif(wire.cspin is None, reason="the C end of the channel is not built")
def test_a_call_that_asks_services_forever_still_times_out(tmp_path: Path, cc: Compile) -> None:
    """Services answered in place share the call's one deadline: a plugin
    that loops on a service is a hang, killed at ``call_timeout``."""
    lib = cc(ASKER, "asker")
    with Host(tmp_path / "w", preflight=False) as h:
        h.provide("give", lambda player, n: 1, "int32_t(int64_t, int32_t)", error=-1)
        p = h.load(lib, isolate=Isolated(sandbox=False, call_timeout=0.5))
        with pytest.raises(PluginTimeoutError):
            run_guarded(p.ask_forever, 30, what="a call that asks services forever")
        assert run_guarded(lambda: p.add(1, 2), 30, what="the restart") == 3


@pytest.mark.skipif(wire.cspin is None, reason="the C end of the channel is not built")
@pytest.mark.parametrize("threads", [1, 4])
def test_a_forged_service_request_in_shared_memory_is_garbage(
    tmp_path: Path, spinny: Path, threads: int
) -> None:
    """A request published under the service bit by a plugin that imports no
    service: the waiting caller finds it breaks the protocol and kills the
    worker (garbage), as on the socket; on lane 0 and on a lane."""
    lane = 0 if threads == 1 else 1 << 8
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(spinny, isolate=Isolated(sandbox=False, call_timeout=1, threads=threads))
        with pytest.raises(PluginCrashedError, match="garbage"):
            run_guarded(lambda: p.forge(lane | 3), 30, what="a forged service request")
        wait_for(lambda: run_guarded(lambda: p.add(3, 3), 30) == 6, what="the restart")
