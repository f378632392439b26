"""Isolated plugins: each version runs in its own worker process.

A plugin loaded with ``isolate=True`` is staged as usual (read once,
checked, copied), but it is ``dlopen``ed by a worker process: a fresh
interpreter (never a fork of the host, see ``_isolated_worker``), one per
live version.  The version's ``Image.functions`` are forwarders that send
the call over a Unix socketpair and wait for the answer, so the routers,
in-flight accounting, drain, state handover and rollback work unchanged.

Why a process: a plugin that dereferences NULL in a call kills only its
worker (the caller gets ``PluginCrashedError``), and closing a version stops
its worker, so its memory goes back to the OS whatever its runtime (a Go
``c-shared`` library never leaves a process it was loaded into).

Three modules share the work: ``_wire`` says how a call crosses (the plans,
checked at load, and the encoding both sides run), ``_workerproc`` starts,
talks to and ends one worker process, and this module supervises: a warm
spare, one ``Proxy`` per isolated version (its calls, hooks, crash handling
per ``on_crash``, restarts with backoff), and the host's side of the service
channel.  Calls to one version are serialized (a lock per worker).

Host services (``HOTLOAD_IMPORT``) work from the worker: before it opens the
copy, the worker binds the imports the way an in-process host does
(``_services``), to forwarders that send each call on a second socketpair,
the service channel, and wait for the answer.  Any plugin thread may call, so
requests carry an id.  The host reads each worker's service channel on a
thread of its own: a request made inside a host call (by the worker's main
thread) is served right there, since the caller holding the version's lock
is waiting for it; one from a plugin thread goes to a small pool, since it
may have to wait for a call in flight.  The host runs the provided function
looked up at that moment, with the in-process conversions and rules.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

from .._artifact import signatures
from .._artifact.loader import ON_LOAD_TYPE, ON_UNLOAD_TYPE, Image, Staged  # noqa: F401
from .._contract.services import ImportBinding, ServiceTable, log_bad_result
from .._errors import (
    ClosedError,
    HotloadError,
    PluginCrashedError,
    PluginTimeoutError,
    ServiceError,
    SignatureError,
)
from .._platform import proc as channel
from .options import Isolated
from .spawn import (
    RESTARTING,
    STOPPED,
    UP,
    Worker,
    spawn,
)
from .wire import (
    _CTYPES,
    OP_CONTROL,
    ST_ERROR,
    ST_OK,
    SVC_HEAD,
    SVC_ID,
    CallPlan,
    _Garbage,
    _worker_error,
    _WorkerError,
    decode,
    encode,
    plans,
    serve,
    shm_supported,
)

log = logging.getLogger(__name__)


class Isolation:
    """The host's isolated workers: spawning (from one long-lived thread, for
    the parent-death signal), a warm spare, and a supervisor thread that
    notices dead or stopped workers and runs the crash policy."""

    def __init__(self, on_rollback: Callable[[str], object]) -> None:
        self._on_rollback = on_rollback
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="hotload-isolate-spawn")
        self._lock = threading.Lock()
        self._spare: Worker | None = None
        self._proxies: list[Proxy] = []
        self._exiting: list[Proxy] = []  # stopped, their workers not reaped yet
        self.exit_faults = 0  # workers that crashed or hung at exit, after their stop
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._wake = threading.Event()
        self._closed = False
        self.shm = shm_supported()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="hotload-isolate")
        self._thread.start()

    # -- workers --------------------------------------------------------------
    def warm(self, timeout: float = 10.0) -> bool:
        """Wait until a spare worker is ready (True), e.g. before timing a reload."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._spare is not None:
                    return True
            time.sleep(0.005)
        return False

    def take(self) -> Worker:
        """A ready worker: the warm spare if it is alive, else a new one;
        a new spare is started in the background either way."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and not spare.alive():
            spare.kill()
            spare = None
        worker = spare or self._spawner.submit(spawn).result()
        if not self._closed:
            self._spawner.submit(self._refill)
        return worker

    def _refill(self) -> None:
        with self._lock:
            if self._spare is not None or self._closed:
                return
        try:
            w = spawn()
        except HotloadError as exc:
            log.warning("could not start a spare isolated worker: %s", exc)
            return
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare, w = w, None  # type: ignore[assignment]
        if w is not None:
            w.kill()

    # -- opening a version --------------------------------------------------------
    def open(
        self,
        staged: Staged,
        opts: Isolated,
        hook_timeout: float | None,
        services: ServiceTable | None = None,
    ) -> IsolatedImage:
        cand = staged.cand
        desc = cand.descriptor
        try:  # refuses before anything starts
            cps = plans(cand.prototypes, where=cand.source)
            binding, svc_cps, imports = _services(staged, services)
        except BaseException:
            staged.discard()
            raise
        proxy = Proxy(self, cand.name, staged.seq, cand.source, cps, opts, hook_timeout)
        proxy.binding, proxy.svc_plans = binding, svc_cps
        proxy.request = {
            "op": "open",
            "name": cand.name,
            "path": str(staged.copy),
            "source": cand.source,
            "prototypes": cand.prototypes,
            "on_load": desc.on_load if desc else None,
            "on_unload": desc.on_unload if desc else None,
            "limits": opts.limits,
            "types": [dataclasses.asdict(t) for t in desc.types] if desc and cand.types else None,
            "imports": imports,
        }
        try:
            proxy.start(self.take())
        except BaseException:
            staged.discard()
            raise
        with self._lock:
            self._proxies.append(proxy)
        image = IsolatedImage(
            source=cand.source,
            copy=staged.copy,
            file_id=staged.file_id,
            digest=cand.digest,
            size=cand.size,
            descriptor=desc,
            name=cand.name,
            version=cand.version,
            handle=0,
            functions={f: proxy.forwarder(cp) for f, cp in cps.items()},
            prototypes=cand.prototypes,
            on_load=None,
            on_unload=(lambda *a: 0) if desc and desc.on_unload else None,
            process=proxy,
            imports=binding,
            types=cand.types,
        )
        image.on_load = (lambda *a: 0) if desc and desc.on_load else None
        return image

    def forget(self, proxy: Proxy, *, exiting: bool = False) -> None:
        """``proxy`` no longer serves; ``exiting``: its worker was asked to
        exit and ``close()`` must see it gone."""
        with self._lock:
            if proxy in self._proxies:
                self._proxies.remove(proxy)
            if exiting:
                self._exiting.append(proxy)
            elif proxy in self._exiting:
                self._exiting.remove(proxy)

    def later(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)
        self._wake.set()

    def rollback(self, name: str) -> None:
        self.later(lambda: self._run_rollback(name))

    def _run_rollback(self, name: str) -> None:
        try:
            self._on_rollback(name)
        except HotloadError as exc:
            log.error("%s: rollback after a crash failed: %s", name, exc)

    # -- the supervisor -------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(0.25)
            self._wake.clear()
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    job()
                except Exception:  # the supervisor must go on
                    log.exception("isolated worker job failed")
            with self._lock:
                proxies = list(self._proxies)
            for p in proxies:
                p.check()

    def close(self) -> None:
        """Stop every worker (a hung one is killed)."""
        self._closed = True
        self._wake.set()
        self._thread.join(2.0)
        with self._lock:
            proxies, self._proxies = self._proxies, []
            spare, self._spare = self._spare, None
        for p in proxies:
            p.stop(kill=True)
        if spare is not None:
            spare.kill()
        with self._lock:
            exiting = list(self._exiting)
        for p in exiting:
            p.gone()  # reaps it, or kills it after 2 s
        self._spawner.shutdown(wait=True)
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()


def _services(
    staged: Staged, table: ServiceTable | None
) -> tuple[ImportBinding | None, list[CallPlan], dict[str, list[Any]] | None]:
    """A version's imports: the binding its service errors count on, how each
    service's calls cross (refused here if one cannot), and what the worker
    needs to bind them (name -> [prototype, error value])."""
    cand = staged.cand
    desc = cand.descriptor
    if desc is None or not desc.imports:
        return None, [], None
    if table is None:
        raise SignatureError(f"{cand.source}: imports host services, but none are available here")
    plain_sigs = {i.name: i.signature for i in desc.imports}
    wanted = table.check(plain_sigs, cand.source)
    sigs = {n: cand.types.rewrite(p) if cand.types else p for n, p in plain_sigs.items()}
    cps = sorted(plans(sigs, where=cand.source, service=True).values(), key=lambda c: c.idx)
    errors = {n: table.services[n].error for n in sigs}
    binding = ImportBinding(table, f"{cand.name} v{staged.seq}", wanted)
    return binding, cps, {n: [sigs[n], errors[n]] for n in sigs}


class Proxy:
    """One isolated version's worker, as the host sees it: calls, hooks,
    crash handling and restarts.  Replaces the worker on a restart; the
    version (and its forwarders) stay the same."""

    def __init__(
        self,
        iso: Isolation,
        name: str,
        seq: int,
        source: str,
        cps: dict[str, CallPlan],
        opts: Isolated,
        hook_timeout: float | None,
    ) -> None:
        self.iso, self.name, self.seq, self.source = iso, name, seq, source
        self.cps, self.opts, self.hook_timeout = cps, opts, hook_timeout
        self.request: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.worker: Worker | None = None
        self.state = UP
        self.gen = 0
        self.restarts = 0
        self.crashes: list[float] = []
        self.last_error: PluginCrashedError | None = None
        self.ready = threading.Event()
        self.ready.set()
        self.retiring = False
        self.prev_version: str | None = None
        self.snapshot: bytes | None = None  # the state the version started with, or its latest
        self.started_with_state = False
        self.call_started = 0.0  # monotonic time of the call in the worker now (0: idle)
        self.has_on_load = False
        self._exiting: Worker | None = None  # asked to stop, not reaped yet
        self._gone_lock = threading.Lock()
        self.exit_fault = ""  # a crash or hang of its worker at exit, after its stop
        self.streak = 0  # crashes in a row with no successful call between them
        self.served_ok = True  # a call succeeded since the last (re)start: resets the backoff
        self.live = False  # serving: a crash before this point is a refused load, no policy
        self.binding: ImportBinding | None = None  # its imports (errors are counted there)
        self.svc_plans: list[CallPlan] = []  # how each imported service's calls cross
        self.nested: int | None = None  # the thread serving a service its worker's call waits for

    @property
    def pid(self) -> int | None:
        w = self.worker
        return w.pid if w is not None and self.state == UP else None

    def rss(self) -> int:
        w = self.worker
        return w.rss() if w is not None and self.state == UP else 0

    # -- start --------------------------------------------------------------------
    def start(self, worker: Worker) -> None:
        """Have ``worker`` open the copy (dlopen, resolve); the caller's thread."""
        with self.lock:
            self.worker = worker
            self._listen(worker)
            self._control(self.request, 30.0, "opening the copy (dlopen, resolving exports)")
            self.live = not self.request.get("on_load")

    def _control(self, req: dict[str, Any], timeout: float | None, what: str) -> Any:
        """A JSON request to the worker; the lock is held."""
        body = bytes([OP_CONTROL]) + json.dumps(req).encode()
        reply = self._exchange(body, timeout, what)
        if reply[:1] == bytes([ST_ERROR]):
            raise _worker_error(reply)
        if reply[:1] != bytes([ST_OK]):
            self._crashed(self._w(), what, garbage="a bad control reply")
        try:
            return json.loads(reply[1:].decode()) if len(reply) > 1 else None
        except (ValueError, UnicodeDecodeError):
            self._crashed(self._w(), what, garbage="an unreadable control reply")

    def _w(self) -> Worker:
        if self.worker is None:
            raise self._dead_error()
        return self.worker

    def _exchange(self, body: bytes, timeout: float | None, what: str) -> bytes:
        worker = self.worker
        if worker is None:
            raise self._dead_error()
        self.call_started = time.monotonic()
        try:
            worker.send(body)
            return worker.recv(timeout)
        except TimeoutError:
            self._crashed(worker, what, timeout=timeout)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._crashed(worker, what)
        except _Garbage as exc:
            self._crashed(worker, what, garbage=str(exc))
        finally:
            self.call_started = 0.0
        raise AssertionError("unreachable")

    # -- calls ----------------------------------------------------------------------
    def forwarder(self, cp: CallPlan) -> Callable[..., Any]:
        call = self.call

        def forward(*args: Any) -> Any:
            return call(cp, args)

        forward.__name__ = cp.fname
        return forward

    def call(self, cp: CallPlan, args: tuple[Any, ...]) -> Any:
        if self.nested is not None and self.nested == threading.get_ident():
            raise HotloadError(
                f"{self.source}: {cp.fname} called from a host service that {self.name} "
                f"v{self.seq} is waiting for: its worker serves one call at a time, so this "
                f"would deadlock (call it after the service returns, or from another thread)"
            )
        body = None if self.iso.shm else encode(cp, args)
        gen = self.gen
        while True:
            with self.lock:
                if self.gen != gen:  # the worker this call was queued for crashed
                    raise self._dead_error()
                if self.state == UP:
                    if body is None:
                        result = self._call_shm(cp, args)
                        if result is not NotImplemented:
                            self.served_ok = True
                            return result
                        body = encode(cp, args)
                    reply = self._exchange(body, self.opts.call_timeout, cp.fname)
                    try:
                        result = decode(cp, reply, args)
                        self.served_ok = True
                        return result
                    except _Garbage as exc:
                        self._crashed(self._w(), cp.fname, garbage=str(exc))
                    except _WorkerError as exc:
                        raise HotloadError(f"{self.source}: {cp.fname}: {exc}") from None
                if self.state == STOPPED:
                    raise self._dead_error()
            # restarting: wait for the new worker (bounded), then try once more
            if not self.ready.wait(30.0):
                raise self._dead_error()
            gen = self.gen

    def _call_shm(self, cp: CallPlan, args: tuple[Any, ...]) -> Any:
        """A call through the worker's shared memory (the lock is held)."""
        worker = self._w()
        if worker.mm is None:
            return NotImplemented
        self.call_started = time.monotonic()
        try:
            return worker.call_shm(cp, args, self.opts.call_timeout)
        except TimeoutError:
            self._crashed(worker, cp.fname, timeout=self.opts.call_timeout)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._crashed(worker, cp.fname)
        except ValueError:
            if worker.wake != -1:
                raise
            self._crashed(worker, cp.fname)  # reaped meanwhile: its mapping was released
        except _Garbage as exc:
            self._crashed(worker, cp.fname, garbage=str(exc))
        except _WorkerError as exc:
            raise HotloadError(f"{self.source}: {cp.fname}: {exc}") from None
        finally:
            self.call_started = 0.0
        raise AssertionError("unreachable")

    def _dead_error(self) -> PluginCrashedError:
        if self.last_error is not None:
            return self.last_error
        return PluginCrashedError(f"{self.source}: {self.name} v{self.seq}: its worker is stopped")

    # -- crashes ---------------------------------------------------------------------
    def _crashed(
        self,
        worker: Worker,
        what: str,
        *,
        timeout: float | None = None,
        garbage: str = "",
        outside: str = "",
    ) -> NoReturn:
        """The worker died, hung or broke the protocol during ``what``: kill
        it, raise the error here, and hand the rest to the crash policy.
        The lock is held (or was given up by ``stop``)."""
        garbage = garbage or worker.svc_garbage
        if garbage or timeout is not None or outside or not worker.reap(2.0):
            worker.kill()
        sig, code = worker.how_it_ended()
        tail = worker.tail()
        who = f"{self.source}: {self.name} v{self.seq} (isolated worker, pid {worker.pid})"
        more = f"; stderr: {tail}" if tail else ""
        err: PluginCrashedError
        knob = "hook_timeout" if what in ("on_load", "on_unload") else "call_timeout"
        if timeout is not None:
            err = PluginTimeoutError(
                f"{who}: {what} did not return within {timeout:g} s ({knob}); the "
                f"worker was killed" + more,
                signal_name=None,
                stderr=tail,
            )
        elif garbage:
            err = PluginCrashedError(
                f"{who}: wrote garbage to the channel during {what} ({garbage}); the worker "
                f"was killed" + more,
                stderr=tail,
            )
        elif outside:
            err = PluginCrashedError(f"{who}: {outside}" + more, signal_name="SIGSTOP", stderr=tail)
        elif self.iso._closed and sig == "SIGKILL":  # we ended it: no crash to report
            err = PluginCrashedError(
                f"{who}: the host was closed during {what}; the worker was stopped before the "
                f"call returned",
                signal_name=sig,
                stderr=tail,
            )
        elif sig is not None:
            err = PluginCrashedError(
                f"{who}: crashed with {sig} during {what}" + more, signal_name=sig, stderr=tail
            )
        else:
            err = PluginCrashedError(
                f"{who}: the worker exited with code {code} during {what}" + more,
                exit_code=code,
                stderr=tail,
            )
        if self.worker is not worker:  # stopped by the host meanwhile: no policy
            raise err
        log.error("%s", err)
        self.last_error = err
        self.gen += 1
        self.worker = None
        self._after_crash()
        raise err

    def _after_crash(self) -> None:
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < self.opts.restart_window] + [now]
        policy = self.opts.on_crash
        if self.retiring or self.state == STOPPED or not self.live:
            self.state = STOPPED
            return
        if policy == "restart" and len(self.crashes) > self.opts.max_restarts:
            log.error(
                "%s v%d: crash loop: %d crashes within %g s; stopped (reload or roll back)",
                self.name,
                self.seq,
                len(self.crashes),
                self.opts.restart_window,
            )
            self.state = STOPPED
            if self.last_error is not None:
                self.last_error = PluginCrashedError(
                    f"{self.last_error}; crash loop: {len(self.crashes)} crashes within "
                    f"{self.opts.restart_window:g} s, restarts stopped (reload or roll back)",
                    signal_name=self.last_error.signal_name,
                    stderr=self.last_error.stderr,
                )
            return
        if policy == "restart":
            self.state = RESTARTING
            self.ready.clear()
            self.streak = 0 if self.served_ok else self.streak + 1
            self.served_ok = False
            delay = min(0.05 * 2 ** (self.streak - 1), 2.0) if self.streak else 0.0
            self.iso.later(lambda: self._restart(delay))
            return
        self.state = STOPPED
        if policy == "rollback":
            self.iso.rollback(self.name)

    def _restart(self, delay: float) -> None:
        if delay:
            time.sleep(delay)
        try:
            worker = self.iso.take()
        except HotloadError as exc:
            log.error("%s v%d: restart failed: %s", self.name, self.seq, exc)
            with self.lock:
                self.state = STOPPED
            self.ready.set()
            return
        with self.lock:
            if self.state != RESTARTING:
                worker.kill()
                self.ready.set()
                return
            self.worker = worker
            self.state = UP
            self._listen(worker)
            try:
                self._control(self.request, 30.0, "opening the copy (restart)")
                if self.has_on_load:
                    self._on_load(self.prev_version, self.snapshot)
                self.restarts += 1
                log.warning(
                    "%s v%d restarted in a new worker (pid %d)%s",
                    self.name,
                    self.seq,
                    worker.pid,
                    " with its last state snapshot" if self.snapshot is not None else "",
                )
            except PluginCrashedError:
                pass  # _crashed ran the policy again (backoff, crash-loop limit)
            except HotloadError as exc:
                log.error("%s v%d: restart refused: %s", self.name, self.seq, exc)
                if self.worker is not None:
                    self.worker.kill()
                self.worker, self.state = None, STOPPED
        if self.state != RESTARTING:
            self.ready.set()

    def check(self) -> None:
        """Supervisor tick: a worker that died while idle, or one stopped by a
        signal while a call waits for it."""
        if self.state != UP or not self.lock.acquire(blocking=False):
            w = self.worker
            started = self.call_started
            if w is not None and started and not w.alive():
                w.wake_caller()  # died in a call, but a forked child may hold the channel
            elif (
                w is not None
                and started
                and time.monotonic() - started > 1.0
                and channel.stopped(w.pid)
            ):
                log.error(
                    "%s v%d: worker pid %d is stopped; killing it", self.name, self.seq, w.pid
                )
                w.kill()  # the waiting call sees EOF and reports the crash
            return
        try:
            w = self.worker
            if w is not None and self.state == UP and not w.alive():
                with contextlib.suppress(PluginCrashedError):
                    self._crashed(w, "no call (it died while idle)")
            elif w is not None and self.state == UP:
                w.note_kin()
        finally:
            self.lock.release()

    # -- host services, called by the plugin ---------------------------------------------
    def _listen(self, worker: Worker) -> None:
        """Serve ``worker``'s service requests (a thread per worker, when the
        version imports any service)."""
        if not self.svc_plans or worker.svc is None or worker.svc_thread is not None:
            return
        worker.svc_thread = threading.Thread(
            target=self._serve_services,
            args=(worker,),
            daemon=True,
            name=f"hotload-isolate-svc-{worker.pid}",
        )
        worker.svc_thread.start()

    def _serve_services(self, worker: Worker) -> None:
        """Read the worker's service requests until it ends.  A request made
        inside a host call is served right here (its caller holds the
        version's lock: nothing else can be waiting for this thread); one
        from a plugin thread goes to a pool thread, since it may have to
        wait for a call in flight, which may itself need a service.  The pool
        is this worker's own: a plugin whose threads block in services starves
        only itself, never another plugin."""
        pool = ThreadPoolExecutor(4, thread_name_prefix=f"hotload-isolate-svc-{worker.pid}")
        try:
            self._read_services(worker, pool)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _read_services(self, worker: Worker, pool: ThreadPoolExecutor) -> None:
        while True:
            try:
                body = worker.svc_frame()
                rid, nested, idx = SVC_HEAD.unpack_from(body)
                if nested > 1 or idx >= len(self.svc_plans):
                    what = "a nested flag" if nested > 1 else "an unknown service index"
                    raise _Garbage(f"{what} ({nested}, {idx})")
            except (OSError, EOFError):
                return
            except _Garbage as exc:
                self._svc_garbage(worker, str(exc))
                return
            if nested:
                if not self._serve_one(worker, rid, self.svc_plans[idx], body, True):
                    return
                continue
            try:
                pool.submit(self._serve_one, worker, rid, self.svc_plans[idx], body, False)
            except RuntimeError:  # the host is closing
                return

    def _serve_one(self, worker: Worker, rid: int, cp: CallPlan, body: bytes, nested: bool) -> bool:
        if nested:
            self.nested = threading.get_ident()  # a call into this version would deadlock
        try:
            reply = serve(cp, self._service(cp), body[SVC_ID.size :])
        except Exception as exc:  # noqa: BLE001 - the request broke the protocol
            self._svc_garbage(worker, f"{cp.fname}: {exc}")
            return False
        finally:
            if nested:
                self.nested = None
        try:
            worker.svc_send(SVC_ID.pack(rid) + reply)
        except OSError:
            return False
        return True

    def _service(self, cp: CallPlan) -> Callable[..., Any]:
        """The provided function behind ``cp``, looked up now (``provide()``
        replaces it for every version at once), with the in-process rules:
        an exception (or a result that does not fit) is logged, counted on
        this version, and the plugin gets the service's error value."""
        table, name = self.binding.table if self.binding else None, cp.fname

        def call(*args: Any) -> Any:
            svc = table.services.get(name) if table is not None else None
            label = self.binding.label if self.binding else self.name
            error = svc.error if svc is not None else 0
            try:
                if table is None or table.closed:
                    raise ClosedError(f"service {name} called after host.close()")
                if svc is None:
                    raise ServiceError(f"service {name} is not provided by this host")
                result = svc.call(*args)
            except Exception:
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
            if self.binding is not None:
                self.binding.errors += 1
            if not cp.result:
                return None
            return signatures.ffi.new(f"{cp.rtype} *")[0] if cp.result == "T" else error

        return call

    def _svc_garbage(self, worker: Worker, why: str) -> None:
        """A worker broke the service protocol: it is killed, and the call in
        flight (or the supervisor) reports it as a crash."""
        worker.svc_garbage = f"service channel: {why}"
        log.error(
            "%s: %s v%d (isolated worker, pid %d) wrote garbage to the service channel (%s); "
            "killing it",
            self.source,
            self.name,
            self.seq,
            worker.pid,
            why,
        )
        worker.kill()

    # -- hooks --------------------------------------------------------------------------
    def on_load(self, prev_version: str | None, state: bytes | None) -> None:
        with self.lock:
            self.has_on_load = True
            self._on_load(prev_version, state)
            self.prev_version, self.snapshot = prev_version, state
            self.live = True

    def _on_load(self, prev_version: str | None, state: bytes | None) -> None:
        self._control(
            {"op": "on_load", "prev": prev_version, "state": state.hex() if state else None},
            self.hook_timeout,
            "on_load",
        )

    def on_unload(self, max_size: int) -> bytes | None:
        """The version's state blob; from its last snapshot when its worker is
        gone (a rollback after a crash hands over what it had)."""
        with self.lock:
            if self.state != UP:  # crashed: hand over what it started with
                log.warning(
                    "%s v%d: its worker is stopped; handing over its last state snapshot "
                    "(%s), updates since are lost",
                    self.name,
                    self.seq,
                    f"{len(self.snapshot)} bytes" if self.snapshot is not None else "none",
                )
                return self.snapshot
            out = self._control(
                {"op": "on_unload", "max": max_size}, self.hook_timeout, "on_unload"
            )
            blob = bytes.fromhex(out) if isinstance(out, str) else None
            self.snapshot = blob
            return blob

    # -- stopping --------------------------------------------------------------------------
    def stop(self, *, kill: bool = False) -> None:
        """Stop the worker: ask it to exit; kill it if it does not at once (or
        if ``kill``, e.g. a hung call holds the lock)."""
        self.retiring = True
        got = self.lock.acquire(timeout=0 if kill else 1.0)
        try:
            worker, self.worker = self.worker, None
            self.state = STOPPED
            self.snapshot = None  # never restarted or handed over again: history keeps no blob
            self.ready.set()
        finally:
            if got:
                self.lock.release()
        if worker is None:
            return
        for sock in (worker.sock, worker.svc):
            with contextlib.suppress(OSError, AttributeError):
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # EOF: it exits
        if kill:
            worker.kill()
        else:
            self._exiting = worker  # reaped by gone(), off the reload path
        self.iso.forget(self, exiting=not kill)

    def gone(self) -> bool:
        """Whether the worker has exited: waits a little for one that was
        asked to, and kills it if it does not (the reaper's thread).  A crash
        or a hang as it exits (a destructor, an atexit handler) is logged and
        noted on the version: the next version does not depend on it."""
        with self._gone_lock:
            w = self._exiting or self.worker
            if w is None:
                return True
            if w is not self._exiting:
                return not w.alive()
            who = f"{self.name} v{self.seq}: worker pid {w.pid}"
            if not w.reap(2.0):
                self.exit_fault = "killed at exit: did not exit within 2 s of its stop"
                log.warning(
                    "%s ignored the stop (a destructor or atexit handler hangs at exit?); "
                    "killed at exit after 2 s",
                    who,
                )
                w.kill()
            else:
                sig, code = w.how_it_ended()
                if sig is not None or code:
                    how = f"crashed with {sig}" if sig else f"exited with code {code}"
                    self.exit_fault = f"{how} at exit"
                    tail = w.tail()
                    log.error(
                        "%s %s at exit, after its stop (a destructor or atexit handler)%s",
                        who,
                        how,
                        f"; stderr: {tail}" if tail else "",
                    )
            if self.exit_fault:
                self.iso.exit_faults += 1
            self._exiting = None
            self.iso.forget(self)
            return True


@dataclass(eq=False)
class IsolatedImage(Image):
    """An image that lives in a worker process: its functions forward calls,
    its hooks run there, and closing it stops the worker."""

    def call_on_load(self, prev_version: str | None, state: bytes | None) -> None:
        if self.on_load is None:
            return
        proxy: Proxy = self.process
        proxy.on_load(prev_version, state)

    def call_on_unload(self, max_size: int = 64 << 20) -> bytes | None:
        if self.on_unload is None:
            return None
        proxy: Proxy = self.process
        return proxy.on_unload(max_size)


def stop_image(image: Image) -> None:
    """Close an isolated image: stop its worker."""
    proxy: Proxy = image.process
    proxy.stop()
