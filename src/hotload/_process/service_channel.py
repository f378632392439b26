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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .._artifact import signatures
from .._contract.services import ImportBinding, log_bad_result
from .._errors import ClosedError, ServiceError
from .spawn import Worker
from .wire import _CTYPES, SVC_HEAD, SVC_ID, CallPlan, _Garbage, serve

log = logging.getLogger(__name__)


class Served(Protocol):
    """What the service channel needs of an isolated version (``proxy.Proxy``)."""

    name: str
    seq: int
    source: str
    binding: ImportBinding | None  # its imports (errors are counted there)
    svc_plans: list[CallPlan]  # how each imported service's calls cross
    nested: int | None  # the thread serving a service its worker's call waits for


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
    try:
        _read_services(version, worker, pool)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _read_services(version: Served, worker: Worker, pool: ThreadPoolExecutor) -> None:
    while True:
        try:
            body = worker.svc_frame()
            rid, nested, idx = SVC_HEAD.unpack_from(body)
            if nested > 1 or idx >= len(version.svc_plans):
                what = "a nested flag" if nested > 1 else "an unknown service index"
                raise _Garbage(f"{what} ({nested}, {idx})")
        except (OSError, EOFError):
            return
        except _Garbage as exc:
            _garbage(version, worker, str(exc))
            return
        if nested:
            if not _serve_one(version, worker, rid, version.svc_plans[idx], body, True):
                return
            continue
        try:
            pool.submit(_serve_one, version, worker, rid, version.svc_plans[idx], body, False)
        except RuntimeError:  # the host is closing
            return


def _serve_one(
    version: Served, worker: Worker, rid: int, cp: CallPlan, body: bytes, nested: bool
) -> bool:
    if nested:
        version.nested = threading.get_ident()  # a call into this version would deadlock
    try:
        reply = serve(cp, _service(version, cp), body[SVC_ID.size :])
    except Exception as exc:  # noqa: BLE001 - the request broke the protocol
        _garbage(version, worker, f"{cp.fname}: {exc}")
        return False
    finally:
        if nested:
            version.nested = None
    try:
        worker.svc_send(SVC_ID.pack(rid) + reply)
    except OSError:
        return False
    return True


def _service(version: Served, cp: CallPlan) -> Callable[..., Any]:
    """The provided function behind ``cp``, looked up now (``provide()``
    replaces it for every version at once), with the in-process rules:
    an exception (or a result that does not fit) is logged, counted on
    this version, and the plugin gets the service's error value."""
    table, name = version.binding.table if version.binding else None, cp.fname

    def call(*args: Any) -> Any:
        svc = table.services.get(name) if table is not None else None
        label = version.binding.label if version.binding else version.name
        error = svc.error if svc is not None else 0
        try:
            if table is None or table.closed:
                raise ClosedError(f"service {name} called after host.close()")
            if svc is None:
                raise ServiceError(f"service {name} is not provided by this host")
            result = svc.call(*args)
        except BaseException:  # noqa: BLE001 - SystemExit too: a service is a C function
            # (in process, cffi's callback catches every exception the same way)
            log.error("%s: service %s raised", label, name, exc_info=True)
            return failed(error)
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
            version.binding.errors += 1
        if not cp.result:
            return None
        return signatures.ffi.new(f"{cp.rtype} *")[0] if cp.result == "T" else error

    return call


def _garbage(version: Served, worker: Worker, why: str) -> None:
    """A worker broke the service protocol: it is killed, and the call in
    flight (or the supervisor) reports it as a crash."""
    worker.svc_garbage = f"service channel: {why}"
    log.error(
        "%s: %s v%d (isolated worker, pid %d) wrote garbage to the service channel (%s); "
        "killing it",
        version.source,
        version.name,
        version.seq,
        worker.pid,
        why,
    )
    worker.kill()
