"""On the second: how a staged release's thread wakes at its instant.

A staged release sleeps until its wall-clock time, then flips.  Waking on
time is the easy part; getting the CPU and the GIL at once, with other
threads busy calling plugins, is not: ``PREPARE`` before the time the GIL's
switch interval is shortened and the collector is turned off, ``EARLY``
before it the thread takes the GIL and keeps it while it sleeps in the
kernel to the instant (``sleep_until``, ``clock_nanosleep`` on an absolute
time), raised to nice ``URGENT`` and, where allowed, ``SCHED_FIFO``.  Each
of these is undone as soon as the flip is done, and several timers at once
share the process-wide settings by counting (the last one out restores).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

#: How long before a staged release's time its thread takes the GIL and keeps it.
EARLY = 0.03
#: How long before it the GIL's switch interval is shortened, so that the thread's
#: wake at ``EARLY`` gets the GIL within a fraction of a millisecond.
PREPARE = 0.05
SHORT_INTERVAL = 0.0002  # seconds: the switch interval from PREPARE to EARLY
CHUNK = 0.005  # seconds: the longest kernel sleep before the wall clock is read again

_interval_lock = threading.Lock()
_interval = {"short": 0, "kept": 0, "base": 0.005}  # timers in each phase; the interval to restore


@contextlib.contextmanager
def gil(phase: str) -> Iterator[None]:
    """Change the GIL's switch interval while the block runs: ``short``
    (SHORT_INTERVAL: a thread asking for the GIL gets it soon) or ``kept``
    (1 s: the thread holding it keeps it).  Process-wide, so counted: two
    releases due at once restore the interval once, after both; ``kept``
    wins over ``short``."""

    def apply() -> None:
        if _interval["kept"]:
            sys.setswitchinterval(max(_interval["base"], 1.0))
        elif _interval["short"]:
            sys.setswitchinterval(min(_interval["base"], SHORT_INTERVAL))
        else:
            sys.setswitchinterval(_interval["base"])

    with _interval_lock:
        if not _interval["short"] and not _interval["kept"]:
            _interval["base"] = sys.getswitchinterval()
        _interval[phase] += 1
        apply()
    try:
        yield
    finally:
        with _interval_lock:
            _interval[phase] -= 1
            apply()


#: The nice value of a staged release's thread from PREPARE to the switch, where the
#: process may raise it (CAP_SYS_NICE, or RLIMIT_NICE): on a busy machine a thread
#: woken at the instant otherwise queues behind every runnable thread of its core.
URGENT = -10


@contextlib.contextmanager
def priority(nice: int) -> Iterator[Callable[[], None]]:
    """This thread at ``nice`` while the block runs, if allowed (Linux sets a
    nice value per thread); as it was afterwards (lowering one's own
    priority back is always allowed).  Yields the function that puts it
    back early: right after the flip, so that the work after it (the
    journal...) yields the core to other hosts' switches still waiting."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError):  # not allowed, or not Linux: the default priority
        yield lambda: None
        return

    def restore() -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, before)

    try:
        yield restore
    finally:
        restore()


#: The real-time priority (``SCHED_FIFO``) of a staged release's thread for its last
#: kernel sleep and the flip, where the process may (root, ``CAP_SYS_NICE`` or
#: ``RLIMIT_RTPRIO``): it then runs before every ordinary thread of the machine the
#: moment the kernel wakes it, and for a few microseconds only (it sleeps until then).
REALTIME = 1


@contextlib.contextmanager
def realtime() -> Iterator[Callable[[], None]]:
    """This thread under ``SCHED_FIFO`` at ``REALTIME`` while the block runs,
    if allowed and if the sleep is a kernel sleep (a real-time thread that
    spins would keep a core from everything else); as it was afterwards.
    Yields the function that puts it back early: right after the flip."""
    tid = threading.get_native_id()
    setter = getattr(os, "sched_setscheduler", None)
    try:
        if setter is None or _SLEEP_ABS is None:
            raise OSError("no real-time scheduling here")
        policy, nice = os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)
        setter(tid, os.SCHED_FIFO, os.sched_param(REALTIME))
    except OSError:  # not allowed (no CAP_SYS_NICE, a container without a real-time budget)
        yield lambda: None
        return
    back = [False]

    def restore() -> None:
        if not back[0]:
            back[0] = True
            with contextlib.suppress(OSError):
                setter(tid, policy, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, nice)

    try:
        yield restore
    finally:
        restore()


_gc_off = [0, True]  # timers keeping the collector off, whether it was on


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off while the block runs (counted, as
    ``_gil``): a full collection started by the switch's own allocations
    would run before the flip.  (On fifty busy hosts, rounds with a 150-220 ms
    tail did not recur once it was off; that the collector caused them is a
    guess, not proven.)"""
    with _interval_lock:
        if _gc_off[0] == 0:
            _gc_off[1] = gc.isenabled()
            gc.disable()
        _gc_off[0] += 1
    try:
        yield
    finally:
        with _interval_lock:
            _gc_off[0] -= 1
            if _gc_off[0] == 0 and _gc_off[1]:
                gc.enable()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc(name: str) -> Any:
    """A libc function called *without* letting go of the GIL
    (``ctypes.PyDLL``), or None where there is none (macOS, Windows)."""
    if sys.platform == "win32":
        return None
    try:
        return getattr(ctypes.PyDLL(None), name)
    except (OSError, AttributeError):
        return None


_SLEEP_ABS = _libc("clock_nanosleep")
if _SLEEP_ABS is not None:
    _SLEEP_ABS.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Timespec), ctypes.c_void_p]
    _SLEEP_ABS.restype = ctypes.c_int
_PRCTL = _libc("prctl") if sys.platform.startswith("linux") else None
PR_SET_TIMERSLACK = 29


def exact_timers() -> None:
    """This thread's timer slack to 1 ns (Linux: 50 us by default, by which
    the kernel may delay a wake-up to batch it with others)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_TIMERSLACK, ctypes.c_ulong(1), 0, 0, 0)


def sleep_until(
    at: float, until: Callable[[], bool] = lambda: False, *, keep_gil: bool = False
) -> bool:
    """Wait until the wall-clock time ``at`` holding the GIL: the kernel
    wakes the thread at the instant (``clock_nanosleep(CLOCK_REALTIME,
    TIMER_ABSTIME)``) and no other thread can take the GIL meanwhile, so the
    code after it runs at once.  It used to spin instead: on a busy machine
    fifty processes spinning at once starved each other of the CPU.  Without
    ``clock_nanosleep`` it spins.  ``until``: stop early when it says so.

    The GIL is kept for at most ``2 * EARLY`` of sleep: the kernel sleeps
    end at most ``CHUNK`` apart and the clock is read again after each, and
    when the time is further off than that (the clock was stepped back) the
    wait goes on with the GIL let go, so a stepped clock cannot freeze the
    process's other threads.  ``keep_gil``: never let go of it; False is
    returned at once instead when the time is that far (True: the time came)."""
    target = int(at * 1e9)
    while not until():
        now = time.time_ns()
        if now >= target:
            return True
        if target - now > 2 * EARLY * 1e9:
            if keep_gil:
                return False
            time.sleep((target - now) / 1e9 - EARLY)  # lets go of the GIL
            continue
        if _SLEEP_ABS is not None:
            end = min(target, now + int(CHUNK * 1e9))
            ts = _Timespec(end // 1_000_000_000, end % 1_000_000_000)
            _SLEEP_ABS(0, 1, ctypes.byref(ts), None)  # CLOCK_REALTIME, TIMER_ABSTIME; EINTR: again
    return False
