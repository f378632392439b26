"""Several calling threads served at once by one isolated worker (issue 24
item 3, ``_process/inflight.py``): ``Isolated(threads=N)`` gives the worker
N - 1 lanes beside its channel, each a slot pair in the same mapping served
by a worker thread of its own in C.

What it must keep: calls from several threads run in the worker at once
(``threads=1``: one at a time, as before); a crash with several calls in
flight fails each of them with the crash and the plugin restarts; a lane
whose worker thread never returns is a timeout at ``call_timeout``; a caller
whose wait a signal handler cut short leaves its lane owing a reply that the
next call on it waits for, while the other lanes serve on; a plugin that
scribbles over another call's lane is garbage, never a host crash; and a
poison input crashing beside innocent ones is quarantined alone.

Real plugins compiled here, real worker processes and threads; every wait
is bounded."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hotload import (
    Host,
    Isolated,
    PluginCrashedError,
    PluginQuarantinedError,
    PluginTimeoutError,
)
from hotload._errors import ConfigError
from hotload._process import wire

from conftest import Compile, run_guarded, wait_for

LANES = r"""
#define _GNU_SOURCE
#include <hotload.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

HOTLOAD_PLUGIN("lanes", "1");

HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
HOTLOAD_API int64_t snooze(int64_t ms) { usleep((useconds_t)ms * 1000); return ms; }
HOTLOAD_EXPORT(snooze, int64_t, (int64_t));
/* a poison input: crashes on 1337 only (after 10 ms: the others are in flight); the
 * others take 30 ms */
HOTLOAD_API int64_t drop(int64_t player)
{
    if (player == 1337) { volatile int *p = NULL; usleep(10 * 1000); *p = 1; }
    usleep(30 * 1000);
    return player * 2;
}
HOTLOAD_EXPORT(drop, int64_t, (int64_t));
/* a string argument: a call on the channel (lane 0) only; "poison" never returns */
HOTLOAD_API int64_t hang_s(const char *s)
{
    if (!strcmp(s, "poison")) for (;;) usleep(1000);
    return (int64_t)strlen(s);
}
HOTLOAD_EXPORT(hang_s, int64_t, (const char *));
/* the thread serving this call ends: the process lives on, the call never returns */
HOTLOAD_API int64_t vanish(void) { pthread_exit(NULL); return 0; }
HOTLOAD_EXPORT(vanish, int64_t, (void));

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

/* Scribble over every other lane that has a call in flight (its request's sequence
 * not answered): publish a reply of a length no plan has under that very sequence,
 * then wait a little (the victim's caller finds it first) and return. */
HOTLOAD_API int32_t scribble(void)
{
    volatile unsigned char *base = (volatile unsigned char *)area();
    int hit = 0;
    if (!base) return -1;
    for (int k = 1; k < 16; k++) {
        volatile uint64_t *ctl = (volatile uint64_t *)(base + 128 + 2 * 65536 + (k - 1) * 1024);
        volatile unsigned char *rep = (volatile unsigned char *)ctl + 128 + 448;
        if (ctl[0] == ctl[8] || ctl[1] != 11) continue; /* idle, or not snooze's request */
        rep[0] = 0;
        ctl[9] = 77;
        __atomic_store_n(&ctl[8], ctl[0], __ATOMIC_RELEASE);
        hit++;
    }
    usleep(300 * 1000);
    return hit;
}
HOTLOAD_EXPORT(scribble, int32_t, (void));
"""

pytestmark = [
    pytest.mark.skipif(not wire.shm_supported(), reason="no shared-memory channel here"),
    pytest.mark.skipif(wire.cspin is None, reason="the C end of the channel is not built"),
]


@pytest.fixture
def lanes(cc: Compile) -> Path:
    return cc(LANES, "lanes")


def _at_once(fn: Any, n: int) -> tuple[list[Any], float]:
    """``fn(i)`` on ``n`` threads started together: each one's result or
    exception, and the seconds they took in all."""
    out: list[Any] = [None] * n
    go = threading.Barrier(n + 1)

    def run(i: int) -> None:
        go.wait()
        try:
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out[i] = exc

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    go.wait()
    t0 = time.monotonic()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "a caller thread is stuck"
    return out, time.monotonic() - t0


def test_threads_is_checked() -> None:
    for bad in (0, 17, 2.0, True, "4"):
        with pytest.raises(ConfigError, match="threads must be an integer from 1 to 16"):
            Isolated(threads=bad)  # type: ignore[arg-type]
    assert Isolated().threads == 4


def test_several_threads_run_in_the_worker_at_once(
    tmp_path: Path, lanes: Path, cc: Compile
) -> None:
    """4 calls of 150 ms from 4 threads take ~150 ms with threads=4 (and
    0.6 s with threads=1: one at a time); many short calls from 6 threads
    each get their own results."""
    with Host(tmp_path / "w", preflight=False) as h:
        four = h.load(lanes, isolate=Isolated(sandbox=False, threads=4))
        other = cc(LANES.replace('HOTLOAD_PLUGIN("lanes"', 'HOTLOAD_PLUGIN("one"'), "one")
        one = h.load(other, isolate=Isolated(sandbox=False, threads=1))
        out, took = _at_once(lambda i: four.snooze(150), 4)
        assert out == [150] * 4
        assert took < 0.5, f"4 calls of 0.15 s took {took:.2f} s with threads=4"
        out, took = _at_once(lambda i: one.snooze(150), 4)
        assert out == [150] * 4
        assert took >= 0.59, f"threads=1 ran calls at once ({took:.2f} s)"

        def many(i: int) -> bool:
            return all(four.add(i * 1_000_000, k) == i * 1_000_000 + k for k in range(2000))

        out, _ = _at_once(many, 6)  # more threads than lanes: the rest take lane 0
        assert out == [True] * 6


def test_a_crash_with_several_calls_in_flight_fails_each(tmp_path: Path, lanes: Path) -> None:
    """One call crashes the worker while three others sleep in it: each of
    the four raises the crash (SIGSEGV) at once, not after its sleep; then
    the plugin restarts and serves every lane."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lanes, isolate=Isolated(sandbox=False, threads=4, quarantine=0))

        def call(i: int) -> Any:
            if i == 0:
                time.sleep(0.2)  # the others are in flight by then
                return p.drop(1337)
            return p.snooze(5000)

        out, took = _at_once(call, 4)
        assert all(isinstance(e, PluginCrashedError) for e in out), out
        assert all(e.signal_name == "SIGSEGV" for e in out), [str(e) for e in out]
        assert sum("in flight in the same worker" in str(e) for e in out) >= 2, out
        assert took < 3.0, f"the calls in flight waited {took:.2f} s for the crash"
        wait_for(lambda: run_guarded(lambda: p.add(1, 2), 30) == 3, what="the restart")
        out, _ = _at_once(lambda i: p.add(i, 1), 4)
        assert out == [1, 2, 3, 4]


def test_a_worker_thread_that_never_returns_is_a_timeout(tmp_path: Path, lanes: Path) -> None:
    """The thread serving a lane ends (``pthread_exit``) mid-call: its caller
    gets ``PluginTimeoutError`` at ``call_timeout`` (one deadline), while the
    other lanes and lane 0 serve on until the worker is killed for it."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lanes, isolate=Isolated(sandbox=False, threads=4, call_timeout=0.5))
        served: list[int] = []
        stop = threading.Event()

        def others() -> None:
            while not stop.is_set():
                try:
                    served.append(p.add(1, 1))
                except PluginCrashedError:
                    return

        t = threading.Thread(target=others, daemon=True)
        t.start()
        t0 = time.monotonic()
        with pytest.raises(PluginTimeoutError, match="vanish did not return within 0.5 s"):
            run_guarded(p.vanish, 30, what="a lane whose thread ended")
        took = time.monotonic() - t0
        stop.set()
        t.join(30)
        assert 0.45 <= took < 5.0, took
        assert served and set(served) == {2}
        wait_for(lambda: run_guarded(lambda: p.add(2, 2), 30) == 4, what="the restart")


def test_a_caller_that_abandons_its_call_while_others_proceed(tmp_path: Path, lanes: Path) -> None:
    """A signal handler raises while the main thread waits on a lane: the
    worker still runs that call; two other threads are served meanwhile; the
    next calls on that lane wait for the reply owed and get their own."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lanes, isolate=Isolated(sandbox=False, threads=4, call_timeout=10))
        stop = threading.Event()
        wrong: list[Any] = []
        count = [0, 0]

        def other(i: int) -> None:
            while not stop.is_set():
                got = p.add(i, 10)
                count[i] += 1
                if got != i + 10:
                    wrong.append(got)

        ts = [threading.Thread(target=other, args=(i,), daemon=True) for i in range(2)]
        for t in ts:
            t.start()

        class Cut(Exception):
            pass

        def cut(signum: int, frame: Any) -> None:
            raise Cut

        old = signal.signal(signal.SIGALRM, cut)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(Cut):
                p.snooze(400)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        before = list(count)
        for k in range(200):  # lanes get reused: the one owing a reply among them
            assert p.add(k, 3) == k + 3
        stop.set()
        for t in ts:
            t.join(30)
        assert not wrong, wrong
        assert count[0] > before[0] and count[1] > before[1]
        out, _ = _at_once(lambda i: p.add(i, 100), 4)
        assert out == [100, 101, 102, 103]
        info = h.current("lanes")
        assert info is not None and info.restarts == 0


def test_a_plugin_scribbling_over_another_lane_is_garbage(tmp_path: Path, lanes: Path) -> None:
    """A call that publishes a forged reply on another call's lane: that
    caller finds a reply no plan has and calls it garbage (the worker is
    killed), every call in flight raises, the host serves on after a restart."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lanes, isolate=Isolated(sandbox=False, threads=4, call_timeout=10))

        def call(i: int) -> Any:
            if i == 0:
                time.sleep(0.3)  # the snoozes are on their lanes by then
                return p.scribble()
            return p.snooze(3000)

        out, took = _at_once(call, 3)
        assert all(isinstance(e, PluginCrashedError) for e in out), out
        assert any("garbage" in str(e) for e in out), [str(e) for e in out]
        assert took < 2.5, took
        wait_for(lambda: run_guarded(lambda: p.add(5, 5), 30) == 10, what="the restart")


@pytest.mark.parametrize("limit", [1, 2])
def test_a_poison_input_beside_innocent_ones_is_quarantined_alone(
    tmp_path: Path, lanes: Path, limit: int
) -> None:
    """drop(1337) crashes the worker while three threads call drop() with
    inputs of their own (30 ms each: in flight at every crash): every input
    in flight is suspected, with no failure counted, each suspect's next call
    runs alone, so 1337 is quarantined after its lone crashes and the innocent
    inputs, which return alone, never are (run beside it, they were quarantined
    with it; with ``quarantine=1`` at its first crash, when each input in flight
    counted one failure)."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lanes, isolate=Isolated(sandbox=False, threads=4, quarantine=limit))
        stop = threading.Event()
        refused: list[int] = []
        served = [0, 0, 0]

        def innocent(i: int) -> None:
            while not stop.is_set():
                try:
                    assert p.drop(i + 1) == 2 * (i + 1)
                    served[i] += 1
                except PluginQuarantinedError:
                    refused.append(i + 1)
                except PluginCrashedError:
                    pass  # in flight at a crash, or waited for the restart: again at once

        ts = [threading.Thread(target=innocent, args=(i,), daemon=True) for i in range(3)]
        for t in ts:
            t.start()
        wait_for(lambda: all(served), what="the innocent calls to run")
        crashes = 0
        for _ in range(20):
            try:
                run_guarded(lambda: p.drop(1337), 30, what="the poison input")
            except PluginQuarantinedError:
                break
            except PluginCrashedError:
                crashes += 1  # and at once again: it waits for the restart with the others
        else:
            pytest.fail("1337 was never quarantined")
        stop.set()
        for t in ts:
            t.join(30)
        assert limit <= crashes <= limit + 1, crashes  # one more at most for a shared crash
        assert not refused, refused
        info = h.current("lanes")
        assert info is not None and info.quarantined == 1
        assert run_guarded(lambda: p.drop(7), 30) == 14


def test_a_hang_on_the_channel_is_blamed_on_its_call_only(tmp_path: Path, lanes: Path) -> None:
    """hang_s("poison") (a string: lane 0) never returns while three threads
    call drop() on lanes: its timeout kills the worker and fails them all, but
    the hang is that call's only (``quarantine=1``: it is refused on its next
    call, the innocent inputs never are; each input in flight was counted a
    hang and quarantined with it)."""
    opts = Isolated(sandbox=False, threads=4, quarantine=1, call_timeout=0.5)
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lanes, isolate=opts)
        stop = threading.Event()
        refused: list[int] = []
        served = [0, 0, 0]

        def innocent(i: int) -> None:
            while not stop.is_set():
                try:
                    assert p.drop(i + 1) == 2 * (i + 1)
                    served[i] += 1
                except PluginQuarantinedError:
                    refused.append(i + 1)
                except PluginCrashedError:
                    pass

        ts = [threading.Thread(target=innocent, args=(i,), daemon=True) for i in range(3)]
        for t in ts:
            t.start()
        wait_for(lambda: all(served), what="the innocent calls to run")
        with pytest.raises(PluginTimeoutError):
            run_guarded(lambda: p.hang_s("poison"), 30, what="the hanging call")
        before = list(served)
        wait_for(
            lambda: all(a > b for a, b in zip(served, before, strict=True)),
            what="the innocents again",
        )
        stop.set()
        for t in ts:
            t.join(30)
        assert not refused, refused
        with pytest.raises(PluginQuarantinedError, match="1 hang"):
            p.hang_s("poison")
        info = h.current("lanes")
        assert info is not None and info.quarantined == 1
        assert p.hang_s("fine") == 4


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
"""


def test_services_asked_on_several_lanes_at_once(tmp_path: Path, cc: Compile) -> None:
    """Services of numbers asked inside calls on several lanes at once are
    each answered on the calling thread, in place on that call's lane."""
    lib = cc(ASKER, "asker")
    with Host(tmp_path / "w", preflight=False) as h:
        seen: dict[int, set[int]] = {}
        lock = threading.Lock()

        def give(player: int, n: int) -> int:
            with lock:
                seen.setdefault(player, set()).add(threading.get_ident())
            time.sleep(0.001)
            return n + player

        h.provide("give", give, "int32_t(int64_t, int32_t)", error=-1)
        p = h.load(lib, isolate=Isolated(sandbox=False, threads=4, call_timeout=20))
        idents: list[int] = [0] * 4

        def call(i: int) -> bool:
            idents[i] = threading.get_ident()
            return all(p.ask_many(i, 5) == 10 + 5 * i for _ in range(40))

        out, _ = _at_once(call, 4)
        assert out == [True] * 4
        assert all(seen[i] == {idents[i]} for i in range(4)), (seen, idents)


SLOW_START = r"""
#include <hotload.h>
#include <unistd.h>
HOTLOAD_PLUGIN("slowstart", "1");
static volatile int started;
static int begin(const char *prev, const void *state, size_t size)
{
    (void)prev, (void)state, (void)size;
    usleep(200 * 1000);
    started = 1;
    return 0;
}
HOTLOAD_ON_LOAD(begin);
HOTLOAD_API int32_t is_started(void) { return started; }
HOTLOAD_EXPORT(is_started, int32_t, (void));
HOTLOAD_API int32_t boom(void) { volatile int *p = NULL; *p = 1; return 0; }
HOTLOAD_EXPORT(boom, int32_t, (void));
"""


def test_no_lane_call_runs_before_a_restarted_worker_has_run_on_load(
    tmp_path: Path, cc: Compile
) -> None:
    """After a crash the new worker runs ``on_load`` (200 ms here) before it
    serves: calls made all through the restart wait for it, on a lane as on
    the channel (they ran beside ``on_load`` once the worker had opened the
    build: in a crash-loop test, such a call's crash was taken for one of
    ``on_load``)."""
    lib = cc(SLOW_START, "slowstart")
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=Isolated(sandbox=False, threads=4))
        assert p.is_started() == 1
        with pytest.raises(PluginCrashedError):
            p.boom()

        def running() -> bool:  # as soon as the restart begins (on_load ends 200 ms later)
            info = h.current("slowstart")
            return info is not None and info.worker == "running"

        wait_for(running, interval=0.001, what="the restart to begin")
        time.sleep(0.05)  # the new worker has opened the build; its on_load runs
        assert run_guarded(p.is_started, 30, what="a call during on_load") == 1
        info = h.current("slowstart")
        assert info is not None and info.restarts == 1


def test_no_wake_up_is_lost_on_lanes_used_at_once(tmp_path: Path, lanes: Path) -> None:
    """Four threads call with gaps around the spin windows (spinning,
    yielding, just asleep on the futex, long asleep), each lane's two sides
    going to sleep and waking on their own: every call returns, with its own
    result, well within ``call_timeout`` (a lost wake-up would end one there)."""
    gaps = [0, 2e-6, 20e-6, 45e-6, 60e-6, 200e-6, 2e-3, 7e-3]
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lanes, isolate=Isolated(sandbox=False, threads=4, call_timeout=5))

        def caller(i: int) -> float:
            worst = 0.0
            for k in range(120):
                time.sleep(gaps[(k * (i + 3)) % len(gaps)])
                t0 = time.monotonic()
                assert p.add(i * 1000, k) == i * 1000 + k
                worst = max(worst, time.monotonic() - t0)
            return worst

        out, _ = _at_once(caller, 4)
        assert all(isinstance(w, float) for w in out), out
        assert max(out) < 0.9, out  # a lost wake-up waits for a 1 s slice, or call_timeout


@pytest.mark.parametrize("seconds", [0.5, pytest.param(5.0, marks=pytest.mark.soak)])
def test_lanes_under_crashes_and_services_at_once(
    tmp_path: Path, cc: Compile, lanes: Path, seconds: float
) -> None:
    """Six threads call for a while, on lanes and on the channel, calls of
    numbers and services, while a seventh crashes the worker every 100 ms:
    every call returns its own result or raises the crash, no thread is left
    waiting, and the plugin serves at the end."""
    asker = cc(ASKER, "asker")
    with Host(tmp_path / "w", preflight=False) as h:
        h.provide("give", lambda player, n: n + player, "int32_t(int64_t, int32_t)", error=-1)
        opts = Isolated(sandbox=False, threads=4, quarantine=0, max_restarts=1000, call_timeout=10)
        p = h.load(lanes, isolate=opts)
        a = h.load(asker, isolate=opts)
        end = time.monotonic() + seconds
        wrong: list[Any] = []

        def call(i: int) -> tuple[int, int]:
            ok = failed = 0
            k = 0
            while time.monotonic() < end:
                k += 1
                try:
                    if i == 6:
                        time.sleep(0.1)
                        p.drop(1337)
                    elif i % 2:
                        got, want = a.ask_many(i, 3), 3 + 3 * i
                    else:
                        got, want = p.add(i, k), i + k
                    if i != 6 and got != want:
                        wrong.append((i, k, got))
                    ok += 1
                except PluginCrashedError:
                    failed += 1
            return ok, failed

        out, _ = _at_once(call, 7)
        assert not wrong, wrong[:5]
        assert all(isinstance(o, tuple) for o in out), out
        assert sum(o[0] for o in out[:6]) > 0 and out[6][1] > 0
        assert run_guarded(lambda: p.add(1, 1), 30, what="serving at the end") == 2
        assert run_guarded(lambda: a.ask_many(1, 2), 30) == 3
