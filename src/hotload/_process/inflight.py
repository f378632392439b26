"""Several calls in one isolated worker at once (issue 24 item 3), and which
input a crash is blamed on when several were running.

``Isolated(threads=N)`` gives a worker N - 1 *lanes* beside its channel
(lane 0, the proxy's lock): small request/reply slot pairs in the same
mapping (``wire.MAX_LANES``), each served by a worker thread of its own in C.
A host thread calling an export of numbers that the worker serves in C takes
a free lane (a list pop, no lock), makes the call on it (``_spin.c``: packed,
waited for and unpacked with the GIL released, services of numbers answered
in place on the lane) and puts it back; with no lane free, or for any other
call, it queues for lane 0 under the lock as before.  ``threads=1`` has no
lanes: every call takes the lock (the behaviour before lanes).

A crash with several calls in flight fails each of them: the thread that
handles it (under the lock, ``Proxy._crashed``) raises the crash, and every
other call in flight raises a copy of it (``in_flight_error``).  A lane call
that outlives ``call_timeout`` kills the worker at once, outside the lock
(one deadline per call), and the crash is reported as its timeout.

Blame (``blame``): a crash with one call in flight is that input's, as
before.  With several, no one can tell whose it was, so each distinct input
in flight becomes a suspect *without* a failure counted (``Quarantine.suspect``:
with ``quarantine=1`` a count quarantined every innocent input in flight); a
suspect's next call runs *alone* (``alone``: no lane call starts, and the ones
in flight finish first), so its next crash is its own and counts.  An input
that keeps crashing is quarantined after one more crash than it would be alone
at most; an innocent one returns from its lone call and is cleared.  A hang is
blamed on the call that timed out only: a lane call's (``culprit``) or lane
0's (the proxy's ``input``), never the lane calls in flight beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from typing import Any

from .._engine import recording
from .._errors import PluginCrashedError, PluginQuarantinedError
from . import service_channel
from .quarantine import fingerprint, preview
from .spawn import Worker
from .wire import AGAIN, MAX_LANES, WHY_SERVICE, CallPlan, _Garbage, cspin

#: the version's ``proxy.Proxy`` (which imports this module: typed loosely here)
Proxy = Any

log = logging.getLogger(__name__)

#: a call the lane did not send (no lane free, an argument the Python path must judge,
#: a worker closed before it): the caller takes the proxy's lock as before
UNSENT: Any = object()
#: an input: the export, its arguments, its fingerprint (None: not taken)
Input = tuple[str, tuple[Any, ...], Hashable | None]
WHY_PACK = getattr(cspin, "WHY_PACK", 1)
WHY_TIMEOUT = getattr(cspin, "WHY_TIMEOUT", 3)
WHY_REPLY = getattr(cspin, "WHY_REPLY", 4)
WHY_CLOSED = getattr(cspin, "WHY_CLOSED", 5)
#: Seconds between two looks for stray bytes on the socket after a lane's reply
STRAYS_EVERY = 1e-4


class Lanes:
    """One version's lanes: those of its current worker, free or in flight."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        # (the worker, its free lanes): one attribute, so a caller never pairs a worker
        # with another's lanes; replaced, never emptied, when the worker goes
        self.state: tuple[Worker | None, list[Any]] = (None, [])
        self.opened: tuple[Worker | None, list[Any]] = (None, [])  # not taking calls yet
        self.bound: frozenset[int] = frozenset()  # the exports its worker serves in C
        # a lane (the object: each worker has its own) -> its call's input, when it started
        self.flight: dict[Any, tuple[Input, float]] = {}
        self.over: set[Any] = set()  # lanes in flight whose call ended in trouble (``_failed``)
        self.excl = False  # a suspect runs alone: no lane call starts
        self.nesting: set[int] = set()  # threads answering a lane's service in place
        self.hung: tuple[Worker, Input] | None = None  # a lane call that timed out
        self.checked = 0.0  # when a lane's caller last looked for stray bytes on the socket
        self.dead: Worker | None = None  # the worker whose crash ``last_error`` reports
        self.stop_fp: Hashable | None = None  # the lone input in flight at the last stop

    def attach(self, worker: Worker, reply: Any, exports: int) -> None:
        """The lanes the worker's ``open`` reply offers (``serving``), at most
        ``threads - 1``; a reply that does not say so gives none."""
        n, bound = 0, frozenset[int]()
        if isinstance(reply, dict) and worker.chan is not None and cspin is not None:
            got, idx = reply.get("lanes"), reply.get("bound")
            if isinstance(got, int) and isinstance(idx, list):
                n = max(0, min(got, self.threads - 1, MAX_LANES - 1))
                bound = frozenset(i for i in idx if isinstance(i, int) and 0 <= i < exports)
        lanes = [
            cspin.Channel(worker.mm, peer=-1, own=-1, sock=worker.sock.fileno(), host=True, lane=k)
            for k in range(1, n + 1)
        ]
        worker.lanes = lanes  # closed with the worker's channel (``Worker._release``)
        self.bound = bound if lanes else frozenset()
        self.opened = (worker, list(reversed(lanes)))

    def publish(self) -> None:
        """The lanes ``attach`` made take calls: once the worker serves (after
        its ``on_load`` on a restart; calls on the channel wait for the lock)."""
        self.state, self.opened = self.opened, (None, [])

    def detach(self) -> None:
        self.state = self.opened = (None, [])

    def inputs(self, worker: Worker) -> list[Input]:
        """The inputs in flight on ``worker``'s lanes (a lane still counted in
        flight after its worker died, waiting for the lock, is not the next one's)."""
        return [inp for lane, (inp, _) in list(self.flight.items()) if lane in worker.lanes]

    def started(self) -> float:
        """When the oldest lane call in flight started (0: none)."""
        times = [t for _, t in list(self.flight.values())]
        return min(times) if times else 0.0

    def alone(self, timeout: float | None) -> None:
        """Before a suspect's call (the lock held): no lane call starts, and
        those in flight finish (each bounded by its own ``call_timeout``)."""
        self.excl = True
        end = time.monotonic() + (timeout if timeout is not None else 30.0)
        # not those that ended in trouble: they wait for this very lock (``_failed``)
        while any(k not in self.over for k in list(self.flight)) and time.monotonic() < end:
            time.sleep(0.0002)


def call(p: Any, cp: CallPlan, spec: bytes, args: tuple[Any, ...], fp: Hashable | None) -> Any:
    """The call on a free lane of ``p``'s worker, or ``UNSENT``."""
    ln = p.lanes
    w, free = ln.state
    if w is None or ln.excl or recording.recording():
        return UNSENT
    try:
        lane = free.pop()
    except IndexError:
        return UNSENT  # all lanes busy: lane 0, under the lock
    key = lane
    flight = ln.flight
    started = time.monotonic()
    flight[key] = ((cp.fname, args, fp), started)  # before the look at excl (alone)
    try:
        if ln.excl:
            return UNSENT
        sent = lane.seq
        result = lane.call(spec, args, p.opts.call_timeout)
        if result is AGAIN or started - ln.checked > STRAYS_EVERY:
            result = _slow(p, w, lane, cp, args, fp, started, sent, result)
        if result is not UNSENT:
            p.served_ok = True
            if fp is not None and p.quarantine.suspects:
                p.quarantine.returned(fp)
        return result
    finally:
        del flight[key]
        ln.over.discard(key)
        free.append(lane)


def _slow(
    p: Proxy,
    w: Worker,
    lane: Any,
    cp: CallPlan,
    args: tuple[Any, ...],
    fp: Hashable | None,
    started: float,
    sent: int,
    result: Any,
) -> Any:
    """A lane call that the C end handed back (a service to answer, or
    trouble), or whose turn it is to look for bytes on the socket."""
    timeout = p.opts.call_timeout
    garbage = ""
    why = lane.why
    try:
        while result is AGAIN and why == WHY_SERVICE:  # asked in place, on this lane
            result = _service(p, lane, cp, timeout, started)
            why = lane.why
    except TimeoutError:
        result, why = AGAIN, WHY_TIMEOUT
    except _Garbage as exc:
        result, why, garbage = AGAIN, WHY_REPLY, str(exc)
    if result is not AGAIN and not w.sock_pending and p.lock.acquire(blocking=False):
        # bytes on the socket while lane 0 has no call: garbage (the plugin wrote them);
        # looked for once in STRAYS_EVERY (a system call, ~0.7 us here, on every call
        # cost a third of the round trip), and on every call handed back
        p.lanes.checked = time.monotonic()
        try:
            w._no_strays()
        except _Garbage as exc:
            result, why, garbage = AGAIN, WHY_REPLY, str(exc)
        finally:
            p.lock.release()
    if result is not AGAIN:
        return result
    if why == WHY_PACK or (why == WHY_CLOSED and lane.seq == sent):
        return UNSENT  # nothing sent: the Python path judges it, or waits for the restart
    if why == WHY_REPLY and not garbage:
        garbage = f"a reply on lane {lane.lane} that is not the call's"
    p.lanes.over.add(lane)  # its call is over (discarded as it leaves: ``call``)
    _failed(p, w, (cp.fname, args, fp), why, garbage)


def _service(p: Proxy, lane: Any, cp: CallPlan, timeout: float | None, started: float) -> Any:
    """A service of numbers the lane's worker thread asked inside this call:
    answered here, then the call's reply waited for, within its one deadline."""
    body = lane.asked()
    me = threading.get_ident()
    p.lanes.nesting.add(me)  # a call into this version from the service is refused
    try:
        lane.answer(service_channel.answer_body(p, body))
    finally:
        p.lanes.nesting.discard(me)
    if timeout is not None:
        timeout -= time.monotonic() - started
        if timeout <= 0:
            raise TimeoutError
    return lane.wait(cp.spin, timeout)


def _failed(p: Proxy, w: Worker, inp: Input, why: int, garbage: str) -> Any:
    """A lane call that did not get its reply: the worker is dead, hung or
    wrote garbage.  Handled under the lock by whichever caller gets there
    first (``Proxy._crashed``: the policy, the blame); the others raise a copy."""
    if why == WHY_TIMEOUT:
        p.lanes.hung = (w, inp)  # the crash is this call's hang
        w.kill()  # at once, outside the lock: lane 0's call (if any) ends with it
    with p.lock:
        last = p.last_error
        if p.lanes.dead is w and last is not None:  # handled: this call was in flight too
            raise in_flight_error(last)
        # the policy's if the worker still serves (a timeout: ``culprit`` says so), else
        # stopped by the host meanwhile: its error only
        p._crashed(w, inp[0], garbage=garbage)


def in_flight_error(last: PluginCrashedError) -> PluginCrashedError:
    """The crash of the worker, for a call that was in flight in it when
    another call's thread handled it (its class: a ``PluginTimeoutError``
    when a call timed out)."""
    return type(last)(
        f"{last} (this call was in flight in the same worker and did not return)",
        signal_name=last.signal_name,
        exit_code=last.exit_code,
        stderr=last.stderr,
    )


def culprit(p: Proxy, worker: Worker, timeout: float | None) -> tuple[float | None, Input | None]:
    """A crash of ``worker`` that a lane call's timeout caused (it killed
    the worker): that timeout and the input that hung; else as it was."""
    hung = p.lanes.hung
    if hung is None or hung[0] is not worker:
        return timeout, None
    p.lanes.hung = None
    return p.opts.call_timeout, hung[1]


def blame(
    p: Proxy, worker: Worker, err: PluginCrashedError, *, hung: Input | None, timeout: bool
) -> None:
    """Count the crash on the inputs in flight (the module's docstring):
    one input, as before; several, a suspect each and no failure counted (no
    crash-loop key: the crash counts on its own); a hang, the input that
    timed out only (none: a hook's, or a call the host cannot name)."""
    if timeout:
        inputs = [hung] if hung is not None else []
    else:
        inputs = ([p.input] if p.input is not None else []) + p.lanes.inputs(worker)
    if len(inputs) == 1:
        fname, args, fp = inputs[0]
        suspect = _count(p, err, fname, args, fp, timeout)
        if suspect is not None:
            p._crash_key = suspect  # its crashes in a row count once
        return
    for fname, args, fp in inputs:
        fp = fp if fp is not None else fingerprint(fname, args)
        if fp is not None:
            p.quarantine.suspect(fp)


def blame_stop(p: Proxy, worker: Worker, err: PluginCrashedError) -> None:
    """A worker stopped (``SIGSTOP``, a debugger) during a call, for over 1 s,
    and killed by the host: an operator's doing as likely as the input's, so
    it counts only when the same lone input was in flight at the version's
    previous stop too (a plugin that stops its own worker on one input);
    then as a crash, and each such stop after it."""
    inputs = ([p.input] if p.input is not None else []) + p.lanes.inputs(worker)
    fp: Hashable | None = None
    if len(inputs) == 1:
        fname, args, fp = inputs[0]
        fp = fp if fp is not None else fingerprint(fname, args)
    again, p.lanes.stop_fp = fp is not None and fp == p.lanes.stop_fp, fp
    if again:
        suspect = _count(p, err, fname, args, fp, False)
        if suspect is not None:
            p._crash_key = suspect  # its stops in a row count once
        log.warning(
            "%s v%d: %s%s in flight at two stops of its worker in a row: counted as a crash",
            p.name,
            p.seq,
            fname,
            preview(args),
        )


def _count(
    p: Proxy,
    err: PluginCrashedError,
    fname: str,
    args: tuple[Any, ...],
    fp: Hashable | None,
    hung: bool,
) -> Any:
    """One failure of an input; its suspect (None: it cannot be told)."""
    fp = fp if fp is not None else fingerprint(fname, args)
    if fp is None:
        return None
    q = p.quarantine
    verdict, suspect = q.failed(fp, hung=hung, signal_name=err.signal_name, exit_code=err.exit_code)
    if verdict == "quarantined":
        what = f"{fname}{preview(args)}"
        said = q.refused[fp].said()
        log.warning(
            "%s v%d: %s: %s of its worker in a row, and it never returned: "
            "quarantined (refused from now on; other inputs are served)",
            p.name,
            p.seq,
            what,
            said,
        )
        p._journal("quarantine", f"{what} quarantined after {said} in a row")
    return suspect


def check_quarantine(p: Proxy, fname: str, args: tuple[Any, ...]) -> Hashable | None:
    """The call's fingerprint; ``PluginQuarantinedError`` for an input
    that crashed or hung the worker ``quarantine`` times in a row."""
    fp = fingerprint(fname, args)
    s = p.quarantine.refused.get(fp) if fp is not None else None
    if s is None:
        return fp
    raise PluginQuarantinedError(
        f"{p.source}: {p.name} v{p.seq}: {fname}{preview(args)}: {s.said()} of "
        f"its worker in a row, and it never returned; quarantined: refused without "
        f"running (other inputs are served; a reload clears it)",
        signal_name=s.signal_name,
        exit_code=s.exit_code,
    )
