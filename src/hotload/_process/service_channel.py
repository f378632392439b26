"""The host's side of the service channel: an isolated plugin's calls of host
services (``HOTLOAD_IMPORT``), served while its version lives.

Before the worker opens the copy, it binds the imports the way an in-process
host does (``_contract.services``), to forwarders that send each call on a
second socketpair, the service channel, and wait for the answer
(``serving._ServiceClient``).  Any plugin thread may call, so requests carry an
id.  The host reads each worker's service channel on a thread of its own: a
request made inside a host call (by the worker's main thread) is served right
there, since the caller holding the version's lock is waiting for it; one from
a plugin thread goes to a small pool of that worker's own, since it may have
to wait for a call in flight.  The provided function is looked up at that
moment, with the in-process conversions and rules.  A worker that breaks the
protocol is killed, and the call in flight (or the supervisor) reports it as a
crash.

The channel is bounded (issue 19 item 6: a plugin writing requests and never
reading the answers grew the host by 1.3 GB in 2 s).  At most
``MAX_IN_FLIGHT`` requests of one worker, and ``MAX_IN_FLIGHT_BYTES`` of
them, are read and not yet answered: past that the host stops reading the
worker's channel (back-pressure: its threads wait in ``write``) until answers
have gone out, and the bytes are counted before a request is allocated.  A
worker that does not take an answer within ``ANSWER_TIMEOUT`` s (it stopped
reading its own channel; a well-behaved worker always has a thread waiting
for its answers) is killed as misbehaving, and the call in flight or the
supervisor reports it, naming the service channel.  The host's threads never
die of a worker: anything unexpected while serving one ends that worker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .._artifact import signatures
from .._contract.services import ImportBinding, log_bad_result
from .._errors import ClosedError, ServiceError
from .spawn import Worker
from .wire import (
    _CTYPES,
    FRAME,
    MAX_FRAME,
    OP_CALL,
    REP_LEN,
    SHM_CAP,
    SHM_REP,
    SVC_HEAD,
    SVC_ID,
    CallPlan,
    _Garbage,
    recv_exactly,
    serve,
)

log = logging.getLogger(__name__)

#: Requests of one worker read and not yet answered, at most (its plugin threads waiting in
#: services at once: more wait in the kernel, their requests unread)
MAX_IN_FLIGHT = 64
#: and their bytes (requests, and answers not yet sent), at most; one request alone may be
#: as large as a frame (``wire.MAX_FRAME``)
MAX_IN_FLIGHT_BYTES = MAX_FRAME
#: Seconds an answer may wait for the worker to take it before the worker is killed as
#: misbehaving (it does not read its own service channel)
ANSWER_TIMEOUT = 10.0


class _Budget:
    """One worker's requests in flight: the reader takes a place before it
    reads a request's body, the thread that sends its answer gives it back."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.count = 0
        self.bytes = 0
        self.ended = False

    def take(self, n: int) -> bool:
        """Wait for room for a request of ``n`` bytes (one request always
        fits when nothing else is in flight); False once the worker ended."""
        with self.cv:
            while (
                not self.ended
                and self.count
                and (self.count >= MAX_IN_FLIGHT or self.bytes + n > MAX_IN_FLIGHT_BYTES)
            ):
                self.cv.wait(1.0)
            if self.ended:
                return False
            self.count += 1
            self.bytes += n
            return True

    def give(self, n: int) -> None:
        with self.cv:
            self.count -= 1
            self.bytes -= n
            self.cv.notify_all()

    def end(self) -> None:
        with self.cv:
            self.ended = True
            self.cv.notify_all()


class Served(Protocol):
    """What the service channel needs of an isolated version (``proxy.Proxy``)."""

    name: str
    seq: int
    source: str
    binding: ImportBinding | None  # its imports (errors are counted there)
    svc_plans: list[CallPlan]  # how each imported service's calls cross
    nested: int | None  # the thread serving a service its worker's call waits for
    notes: list[Any] | None  # a recorded call in flight (host.record): its service calls
    call_started: float  # monotonic time of the call in the worker now (its one deadline)


def listen(version: Served, worker: Worker) -> None:
    """Serve ``worker``'s service requests (a thread per worker, when the
    version imports any service)."""
    if not version.svc_plans or worker.svc is None or worker.svc_thread is not None:
        return
    worker.svc_thread = threading.Thread(
        target=_serve_services,
        args=(version, worker),
        daemon=True,
        name=f"hotload-isolate-svc-{worker.pid}",
    )
    worker.svc_thread.start()


def _serve_services(version: Served, worker: Worker) -> None:
    """Read the worker's service requests until it ends.  A request made
    inside a host call is served right here (its caller holds the
    version's lock: nothing else can be waiting for this thread); one
    from a plugin thread goes to a pool thread, since it may have to
    wait for a call in flight, which may itself need a service.  The pool
    is this worker's own: a plugin whose threads block in services starves
    only itself, never another plugin."""
    pool = ThreadPoolExecutor(4, thread_name_prefix=f"hotload-isolate-svc-{worker.pid}")
    budget = _Budget()
    try:
        assert worker.svc is not None
        with contextlib.suppress(OSError):  # closed already: the reads below end at once
            worker.svc.settimeout(ANSWER_TIMEOUT)  # bounds sending an answer; reads retry
        _read_services(version, worker, pool, budget)
    except BaseException as exc:  # noqa: BLE001 - this thread must not die of a worker
        why = f"{type(exc).__name__}: {exc}"
        _misbehaved(version, worker, f"the host could not serve its service channel ({why})")
    finally:
        budget.end()
        pool.shutdown(wait=False, cancel_futures=True)


def _read_services(
    version: Served, worker: Worker, pool: ThreadPoolExecutor, budget: _Budget
) -> None:
    sock = worker.svc
    assert sock is not None
    while True:
        try:
            (n,) = FRAME.unpack(recv_exactly(sock, FRAME.size, patient=True))
            if n < SVC_HEAD.size or n > MAX_FRAME:
                raise _Garbage(f"a service request of {n} bytes")
            head = recv_exactly(sock, SVC_HEAD.size, patient=True)
            rid, nested, idx = SVC_HEAD.unpack(head)
            if nested > 1 or idx >= len(version.svc_plans):
                what = "a nested flag" if nested > 1 else "an unknown service index"
                raise _Garbage(f"{what} ({nested}, {idx})")
            # a nested request is served by this very thread, one at a time: no budget
            if not nested and not budget.take(n):
                return
            rest = recv_exactly(sock, n - SVC_HEAD.size, patient=True)
        except (OSError, EOFError):
            return
        except _Garbage as exc:
            _misbehaved(version, worker, f"wrote garbage to the service channel ({exc})")
            return
        body = bytes(head + rest)
        cp = version.svc_plans[idx]
        if nested:
            if not _serve_one(version, worker, rid, cp, body, True, None):
                return
            continue
        try:
            pool.submit(_serve_one, version, worker, rid, cp, body, False, budget)
        except RuntimeError:  # the host is closing
            return


def _serve_one(
    version: Served,
    worker: Worker,
    rid: int,
    cp: CallPlan,
    body: bytes,
    nested: bool,
    budget: _Budget | None,
) -> bool:
    """Serve one request and send its answer; False when the worker is done
    for (gone, or killed here).  A plugin thread's request gives its place
    in the budget back once its answer is sent (or cannot be)."""
    if nested:
        version.nested = threading.get_ident()  # a call into this version would deadlock
    try:
        try:
            reply = serve(cp, _service(version, cp), body[SVC_ID.size :])
        except _Garbage as exc:
            why = f"wrote garbage to the service channel ({cp.fname}: {exc})"
            _misbehaved(version, worker, why)
            return False
        except BaseException as exc:  # noqa: BLE001 - the host's thread must not die of it
            why = f"{cp.fname}: {type(exc).__name__}: {exc}"
            _misbehaved(version, worker, f"the host could not serve a service request ({why})")
            return False
        finally:
            if nested:
                version.nested = None
        return _answer(version, worker, SVC_ID.pack(rid) + reply)
    finally:
        if budget is not None:
            budget.give(len(body))


def in_place(version: Served, worker: Worker, cp: CallPlan, timeout: float | None) -> Any:
    """Answer the service request the worker made inside call ``cp`` (the
    proxy's, the lock held; ``answer_in_place``), then wait on for the call's
    reply, within what is left of its one deadline (``TimeoutError`` past
    it): the C end's result, or ``AGAIN`` with its reason."""
    answer_in_place(version, worker)
    if timeout is not None:
        timeout -= time.monotonic() - version.call_started
        if timeout <= 0:
            raise TimeoutError
    return worker.chan.wait(cp.spin, timeout)


def answer_in_place(version: Served, worker: Worker) -> None:
    """A service request the worker made inside a call of the C end, in the
    shared mapping (issue 24 item 2): served here, on the caller's thread,
    which holds the version's lock and waits for that very call (no socket,
    no service thread: two wake-ups fewer), and answered in the mapping.
    ``_Garbage`` for a request that breaks the protocol."""
    mm = worker.mm
    assert mm is not None
    n = worker.ctl[REP_LEN]
    if n < 3 or n > SHM_CAP:
        raise _Garbage(f"a service request of {n} bytes in shared memory")
    body = bytes(mm[SHM_REP : SHM_REP + n])
    version.nested = threading.get_ident()  # a call into this version would deadlock
    try:
        reply = answer_body(version, body)
    finally:
        version.nested = None
    worker.chan.answer(reply)


def answer_body(version: Served, body: bytes | None) -> bytes:
    """The answer to a service request read from the mapping (lane 0's
    area, or a lane's: ``inflight``); ``_Garbage`` for one that breaks the
    protocol (None: a length past the area)."""
    if body is None or len(body) < 3:
        raise _Garbage(f"a service request of {len(body or b'')}+ bytes in shared memory")
    idx = int.from_bytes(body[1:3], "little")
    plans = version.svc_plans
    if body[0] != OP_CALL or idx >= len(plans) or not plans[idx].simple:
        raise _Garbage(f"a service request in shared memory for service {idx}")
    cp = plans[idx]
    return serve(cp, _service(version, cp), body)


def _answer(version: Served, worker: Worker, body: bytes) -> bool:
    """Send one answer; a worker that does not take it within
    ``ANSWER_TIMEOUT`` (the socket's timeout) is killed as misbehaving."""
    assert worker.svc is not None
    try:
        with worker.svc_lock:  # answers come from several host threads
            worker.svc.sendall(FRAME.pack(len(body)) + body)
    except TimeoutError:
        _misbehaved(
            version,
            worker,
            f"does not read the answers on its service channel (an answer waited "
            f"{ANSWER_TIMEOUT:g} s for it; its requests are read {MAX_IN_FLIGHT} at most at a "
            f"time)",
        )
        return False
    except OSError:
        return False
    return True


def _keep(version: Served, note: tuple[Any, ...]) -> None:
    """A service call answered for a recorded call in flight: kept for it
    (the caller's thread hands it to the recording when the call returns)."""
    notes = version.notes
    if notes is not None:
        notes.append(note)


def _service(version: Served, cp: CallPlan) -> Callable[..., Any]:
    """The provided function behind ``cp``, looked up now (``provide()``
    replaces it for every version at once), with the in-process rules:
    an exception (or a result that does not fit) is logged, counted on
    this version, and the plugin gets the service's error value."""
    table, name = version.binding.table if version.binding else None, cp.fname

    def call(*args: Any) -> Any:
        svc = table.services.get(name) if table is not None else None
        binding = version.binding
        label = binding.label if binding else version.name
        error = svc.error if svc is not None else 0
        t0 = binding.enter(name) if binding is not None else 0
        try:
            if table is None or table.closed:
                raise ClosedError(f"service {name} called after host.close()")
            if svc is None:
                raise ServiceError(f"service {name} is not provided by this host")
            result = svc.call(*args)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: a service is a C function
            # (in process, cffi's callback catches every exception the same way)
            log.error("%s: service %s raised", label, name, exc_info=True)
            _keep(version, (name, args, False, exc))
            return failed(error)
        else:
            _keep(version, (name, args, True, result))
        finally:
            if binding is not None:
                binding.leave(name, t0)
        try:
            if cp.result == "T":
                return signatures.ffi.new(f"{cp.rtype} *", result)[0]
            if cp.result:
                signatures.ffi.new(f"{_CTYPES[cp.result]}[1]", [result])  # fits, as in C?
                return result
            return None
        except (TypeError, OverflowError, ValueError, KeyError, IndexError) as why:
            log_bad_result(label, name, svc.ctype if svc else None, why, error)
            return failed(error)

    def failed(error: Any) -> Any:
        """Count the failure on this version; the plugin gets the error value."""
        if version.binding is not None:
            version.binding.failed(name)
        if not cp.result:
            return None
        return signatures.ffi.new(f"{cp.rtype} *")[0] if cp.result == "T" else error

    return call


def _misbehaved(version: Served, worker: Worker, why: str) -> None:
    """A worker broke the service protocol (garbage), stopped reading its
    answers, or could not be served: it is killed, and the call in flight
    (or the supervisor) reports it as a crash, naming the service channel."""
    if not worker.svc_garbage:
        worker.svc_garbage = why
    log.error(
        "%s: %s v%d (isolated worker, pid %d): %s; killing it",
        version.source,
        version.name,
        version.seq,
        worker.pid,
        why,
    )
    worker.kill()
