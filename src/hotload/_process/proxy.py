"""One isolated version as the host sees it: ``Proxy`` forwards its calls
and hooks to its worker process, and handles the worker's crashes per
``on_crash`` (restart with backoff from the warm spare, roll back, or stop).

A call of numbers takes a free lane of the worker (``inflight``: up to
``Isolated(threads=N)`` calls in it at once); any other call, or one that
finds no lane free, takes the version's lock (lane 0) and goes through the
worker's shared-memory area when there is one (``spawn.Worker.call_shm``),
else on its socket.  A worker that dies, hangs past
``call_timeout`` or breaks the protocol during a call is killed, the call
raises ``PluginCrashedError`` (or ``PluginTimeoutError``), and every call
queued for that worker raises too.  The version and its forwarders outlive
its workers: a restart puts a new worker behind the same forwarders.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, NoReturn, Protocol

from .._contract.services import ImportBinding
from .._engine import recording
from .._engine.journal import Journal
from .._errors import (
    HotloadError,
    PluginCrashedError,
    PluginStoppedError,
    PluginTimeoutError,
    StateMigrationError,
)
from .._platform import proc as channel
from . import inflight, service_channel
from .options import Isolated
from .quarantine import Quarantine
from .spawn import RESTARTING, STOPPED, UP, Worker
from .wire import (
    AGAIN,
    MAX_BODY,
    MAX_STATE,
    OP_CONTROL,
    ST_ERROR,
    ST_OK,
    WHY_SERVICE,
    CallPlan,
    _Garbage,
    _worker_error,
    _WorkerError,
    cspin,
    decode,
    encode,
    pack_control,
    too_large,
    unpack_control,
)

log = logging.getLogger(__name__)


class Supervisor(Protocol):
    """What a proxy needs of the supervisor that owns it (``isolation.Isolation``)."""

    shm: bool  # calls go through shared memory
    closed: bool  # the host is closing: a SIGKILL is ours, not a crash
    exit_faults: int  # workers that crashed or hung at exit, after their stop
    journal: Journal | None  # where crashes, restarts and stops are recorded

    def take(self, sandbox: bool = True, spares: int = 1, *, zygote: bool = True) -> Worker: ...
    def later(self, job: Callable[[], None]) -> None: ...
    def rollback(self, name: str, seq: int) -> None: ...
    def forget(self, proxy: Proxy, *, exiting: bool = False) -> None: ...


class Proxy:
    """One isolated version's worker, as the host sees it: calls, hooks,
    crash handling and restarts.  Replaces the worker on a restart; the
    version (and its forwarders) stay the same."""

    def __init__(
        self,
        iso: Supervisor,
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
        # (when, its crash-loop key: the input's Suspect, whose crashes in a row count once,
        # or an object of its own for a crash no input explains)
        self.crashes: list[tuple[float, Hashable]] = []
        self.quarantine = Quarantine(opts.quarantine)
        self.lanes = inflight.Lanes(opts.threads)  # calls beside lane 0's (threads > 1)
        # the call in the worker now: export, arguments, fingerprint (None: not taken yet)
        self.input: tuple[str, tuple[Any, ...], Hashable | None] | None = None
        # a recorded call in flight (host.record): the service calls the service channel
        # answered for it, handed to the recording on the caller's thread when it returns
        self.notes: list[Any] | None = None
        self.stop_reason = ""  # why the worker is stopped, for the calls that find it so
        self._crash_key: Hashable | None = None  # the input _blame charged the crash to
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
        self._stopped: Worker | None = None  # a worker the supervisor killed for being stopped
        self.image: bytes | None = None  # the build's bytes, for a sandbox that cannot see the copy
        self.sandbox: tuple[str, ...] = ()  # the protections of its last worker
        self.digest, self.version = "", ""  # the build's, for the journal

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
            self.sandbox = worker.sandbox
            service_channel.listen(self, worker)
            self._open("opening the copy (dlopen, resolving exports)")
            self.lanes.publish()  # calls come once the version is published
            # live once its hooks ran, or its typed state came in (``go_live``)
            self.live = not self.request.get("on_load") and not self.request.get("typed")

    def _open(self, what: str) -> None:
        """The ``open`` request; a sandboxed worker gets the build's bytes
        (the copy's directory is not in its file system), raw after the JSON."""
        # lanes need the C end on both sides: a host without it asks for none
        req = {**self.request, "threads": self.opts.threads if cspin and self.iso.shm else 1}
        if self.image is not None:
            req["image"] = True
        reply, _ = self._control(req, 30.0, what, self.image)
        self.lanes.attach(self._w(), reply, len(self.cps))

    def _control(
        self, req: dict[str, Any], timeout: float | None, what: str, blob: bytes | None = None
    ) -> tuple[Any, bytes | None]:
        """A JSON request to the worker, with a blob as raw bytes (a state);
        its answer's JSON and blob.  The lock is held."""
        reply = self._exchange(pack_control(OP_CONTROL, req, blob), timeout, what)
        if reply[:1] == bytes([ST_ERROR]):
            raise _worker_error(reply)
        if reply[:1] != bytes([ST_OK]):
            self._crashed(self._w(), what, garbage="a bad control reply")
        try:
            return unpack_control(reply)
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
            return worker.exchange(body, timeout)
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
        ln = self.lanes
        if (self.nested is not None or ln.nesting) and (
            self.nested == threading.get_ident() or threading.get_ident() in ln.nesting
        ):
            raise HotloadError(
                f"{self.source}: {cp.fname} called from a host service that {self.name} "
                f"v{self.seq} is waiting for: its worker serves one call at a time, so this "
                f"would deadlock (call it after the service returns, or from another thread)"
            )
        q = self.quarantine
        fp = None
        if q.suspects or q.refused:  # both empty until the version's first crash
            fp = inflight.check_quarantine(self, cp.fname, args)
        spec = cp.spin
        alone = fp is not None and fp in q.suspects  # its crash must be its own (inflight)
        if ln.state[1] and spec is not None and cp.idx in ln.bound and not alone:
            result = inflight.call(self, cp, spec, args, fp)  # on a free lane, no lock
            if result is not inflight.UNSENT:
                return result
        body = None if self.iso.shm else encode(cp, args)
        gen = self.gen
        while True:
            with self.lock:
                if self.gen != gen:  # the worker this call was queued for crashed
                    raise self._dead_error()
                if alone:
                    ln.alone(self.opts.call_timeout)
                w = self.worker
                if (
                    spec is not None
                    and self.state == UP
                    and w is not None
                    and w.chan is not None
                    and not recording.recording()
                ):  # the hot path: a call of numbers, packed, waited for and unpacked in C
                    self.input = (cp.fname, args, fp)  # a crash now is this input's
                    self.call_started = time.monotonic()
                    try:
                        result = w.chan.call(spec, args, self.opts.call_timeout)
                        if result is AGAIN:  # the Python path takes it from where C left it
                            result = self._call_shm(cp, args, again=w)
                    finally:
                        self.input = None
                        self.call_started = 0.0
                        ln.excl = False
                    self.served_ok = True
                    if fp is not None and q.suspects:
                        q.returned(fp)
                    return result
                if self.state == UP:
                    self.input = (cp.fname, args, fp)  # a crash now is this input's
                    notes = self.notes = [] if recording.recording() else None
                    try:
                        result = self._call_up(cp, args, body)
                    finally:
                        self.input = self.notes = None
                        ln.excl = False
                        for note in notes or ():
                            recording.note(note)
                    if fp is not None and q.suspects:
                        q.returned(fp)  # it ran and returned: its crashes were not its own
                        # (an error raised before the worker ran it, a bad argument, clears
                        # nothing: alternating 1337 with a refused 1337.0 evaded it)
                    return result
                ln.excl = False
                if self.state == STOPPED:
                    raise self._dead_error()
            # restarting: wait for the new worker (bounded), then try once more
            if not self.ready.wait(30.0):
                raise self._dead_error()
            if ln.threads > 1:  # from the start: on a lane, or refused if quarantined meanwhile
                return self.call(cp, args)
            gen = self.gen

    def _call_up(self, cp: CallPlan, args: tuple[Any, ...], body: bytes | None) -> Any:
        """The call, in the running worker (the lock is held)."""
        if body is None:
            result = self._call_shm(cp, args)
            if result is not NotImplemented:
                self.served_ok = True
                return result
            body = encode(cp, args)
        if len(body) > MAX_BODY:  # refused before it is sent: nothing ran
            raise TypeError(str(too_large("a request", len(body))))
        reply = self._exchange(body, self.opts.call_timeout, cp.fname)
        try:
            result = decode(cp, reply, args)
            self.served_ok = True
            return result
        except _Garbage as exc:
            self._crashed(self._w(), cp.fname, garbage=str(exc))
        except _WorkerError as exc:
            raise HotloadError(f"{self.source}: {cp.fname}: {exc}") from None

    def _call_shm(self, cp: CallPlan, args: tuple[Any, ...], *, again: Worker | None = None) -> Any:
        """A call through the worker's shared memory (the lock is held);
        ``again``: the worker whose C end made the call and handed it back
        (``Worker.call_shm``; the host may have stopped it meanwhile)."""
        worker = again or self._w()
        if worker.mm is None:
            return NotImplemented
        if again is None:
            self.call_started = time.monotonic()
        try:
            while again is not None and worker.chan.why == WHY_SERVICE:  # asked in the mapping
                out = service_channel.in_place(self, worker, cp, self.opts.call_timeout)
                if out is not AGAIN:
                    return out
            t = self.opts.call_timeout  # what the C end left of it (one deadline per call)
            t = t if t is None or again is None else t + self.call_started - time.monotonic()
            return worker.call_shm(cp, args, t, again=again is not None)
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

    def _dead_error(self) -> PluginStoppedError:
        """The error of a call that finds no worker: that the version is
        stopped and why (or that the worker it waited for crashed), then the
        crash, as a ``PluginStoppedError`` (the metrics count it as "stopped",
        not as another crash): the call did not crash anything."""
        who = f"{self.source}: {self.name} v{self.seq}"
        if self.state == STOPPED:
            head = f"{who} is stopped ({self.stop_reason or 'its worker is gone'}); "
            head += "this call was not run"
        else:
            head = f"{who}: its worker crashed while this call waited for it; not run"
        last = self.last_error
        if last is None:
            return PluginStoppedError(head)
        return PluginStoppedError(
            f"{head}. The crash: {last}",
            signal_name=last.signal_name,
            exit_code=last.exit_code,
            stderr=last.stderr,
        )

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
        if timeout is None and not garbage:  # killed by a lane call that timed out?
            timeout, hung = inflight.culprit(self, worker, timeout)
            what = hung[0] if hung is not None else what
        else:  # a hang of lane 0's call is its own only, not the lanes' beside it
            hung = self.input if timeout is not None else None
        svc = "" if garbage or timeout is not None else worker.svc_garbage  # killed for it
        if not (garbage or svc or timeout is not None or outside) and self._stopped is worker:
            outside = (
                f"its worker was stopped (SIGSTOP, SIGTSTP or a debugger) during {what}, for "
                f"over 1 s; the host killed it"
            )
        if garbage or svc or timeout is not None or outside or not worker.reap(2.0):
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
        elif svc:
            err = PluginCrashedError(
                f"{who}: {svc}, during {what}; the host killed the worker" + more, stderr=tail
            )
        elif outside:
            err = PluginCrashedError(f"{who}: {outside}" + more, signal_name="SIGSTOP", stderr=tail)
        elif self.iso.closed and sig == "SIGKILL":  # we ended it: no crash to report
            err = PluginCrashedError(
                f"{who}: the host was closed during {what}; the worker was stopped before the "
                f"call returned",
                signal_name=sig,
                stderr=tail,
            )
        elif sig == "SIGXCPU" and "cpu_seconds" in self.opts.limits:
            err = PluginCrashedError(
                f"{who}: killed by the kernel with SIGXCPU during {what}: it used up its "
                f"cpu_seconds limit ({self.opts.limits['cpu_seconds']} s of CPU)" + more,
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
        if self.live:  # before that, a crash is a refused load: the swap records it
            if timeout is not None:  # hung, not crashed: its own kind, as in the metrics
                self._journal("timeout", f"no reply within {timeout:g} s during {what}", str(err))
            else:
                how = sig or (f"exit {code}" if code else "")
                self._journal("crash", f"{how or 'killed'} during {what}", str(err))
        self.last_error, self.lanes.dead = err, worker
        self.gen += 1
        self.worker = None
        self.lanes.detach()
        closing = self.iso.closed and sig == "SIGKILL"  # we ended it: not the input's doing
        if self.live and self.quarantine.limit and not closing:
            if outside:  # stopped: an operator's as likely as the input's (``blame_stop``)
                inflight.blame_stop(self, worker, err)
            else:
                inflight.blame(self, worker, err, hung=hung, timeout=timeout is not None)
        self._after_crash()
        raise err

    def _after_crash(self) -> None:
        """The crash policy.  The crashes of one input in a row, with no
        return between (``_blame``), count once toward the crash loop; any
        other crash counts on its own."""
        now = time.monotonic()
        key, self._crash_key = self._crash_key or object(), None
        window = self.opts.restart_window
        self.crashes = [(t, k) for t, k in self.crashes if now - t < window] + [(now, key)]
        policy = self.opts.on_crash
        if self.retiring or self.state == STOPPED or not self.live:
            self.state = STOPPED
            return
        counted = len({k for _, k in self.crashes})
        if policy == "restart" and counted > self.opts.max_restarts:
            n = len(self.crashes)
            once = f", {counted} counted (an input's crashes in a row count once)"
            self._stop(
                f"crash loop: {n} crashes within {window:g} s{once if counted != n else ''}, "
                f"restarts stopped (reload or roll back)"
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
        self._stop(f"on_crash={policy!r}")
        if policy == "rollback":
            self.iso.rollback(self.name, self.seq)

    def _stop(self, why: str, error: str = "") -> None:
        """No more restarts: a call finds the version stopped, and why."""
        log.error(
            "%s v%d: stopped: %s%s",
            self.name,
            self.seq,
            why,
            f": {error}" if error else "",
        )
        self.state, self.stop_reason = STOPPED, why
        self._journal("stop", why, error)

    def _restart(self, delay: float) -> None:
        if delay:
            time.sleep(delay)
        try:
            worker = self.iso.take(self.opts.sandbox, self.opts.spares, zygote=self.opts.zygote)
        except HotloadError as exc:
            with self.lock:
                self._stop("restart failed", str(exc))
            self.ready.set()
            return
        with self.lock:
            if self.state != RESTARTING:
                worker.kill()
                self.ready.set()
                return
            self.worker = worker
            self.sandbox = worker.sandbox
            self.state = UP
            service_channel.listen(self, worker)
            try:
                self._open("opening the copy (restart)")
                if self.has_on_load:
                    self._on_load(self.prev_version, self.snapshot)
                self.lanes.publish()  # not before: a lane call would run beside on_load
                self.restarts += 1
                log.warning(
                    "%s v%d restarted in a new worker (pid %d)%s",
                    self.name,
                    self.seq,
                    worker.pid,
                    " with its last state snapshot" if self.snapshot is not None else "",
                )
                self._journal("restart", f"restart {self.restarts}: worker pid {worker.pid}")
            except PluginCrashedError:
                pass  # _crashed ran the policy again (backoff, crash-loop limit)
            except HotloadError as exc:
                if self.worker is not None:
                    self.worker.kill()
                self.worker = None
                self._stop("restart refused", str(exc))
        if self.state != RESTARTING:
            self.ready.set()

    def _journal(self, kind: str, detail: str, error: str = "") -> None:
        """A crash, restart or stop of this live version, in the host's journal."""
        if self.iso.journal is not None:
            self.iso.journal.record(
                kind,
                self.name,
                from_seq=self.seq,
                to_seq=self.seq,
                from_digest=self.digest or None,
                to_digest=self.digest or None,
                version=self.version,
                source=self.source,
                error=error,
                detail=detail,
                origin="supervisor",
            )

    def check(self) -> None:
        """Supervisor tick: a worker that died while idle, or one stopped by a
        signal while a call waits for it."""
        started = self.call_started or self.lanes.started()
        if self.state != UP or started or not self.lock.acquire(blocking=False):
            w = self.worker
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
                self._stopped = w  # the waiting call reports that, not the SIGKILL it sees
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

    # -- hooks --------------------------------------------------------------------------
    def on_load(self, prev_version: str | None, state: bytes | None) -> None:
        with self.lock:
            self.has_on_load = True
            self._on_load(prev_version, state)
            self.prev_version, self.snapshot = prev_version, state
            self.live = True

    def _on_load(self, prev_version: str | None, state: bytes | None) -> None:
        self._control({"op": "on_load", "prev": prev_version}, self.hook_timeout, "on_load", state)

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
            # a state travels in one frame: above MAX_STATE the worker refuses it before
            # anything is lost (HookError: the reload is refused, this version serves on)
            limit = "max_state_size" if max_size <= MAX_STATE else "an isolated plugin's state cap"
            req = {"op": "on_unload", "max": min(max_size, MAX_STATE), "limit": limit}
            _, blob = self._control(req, self.hook_timeout, "on_unload")
            self.snapshot = blob
            return blob

    def go_live(self) -> None:
        """A version without ``on_load`` serves from now on (its typed state is in)."""
        self.live = True

    def state_op(self, req: dict[str, Any], blob: bytes | None, what: str) -> tuple[Any, bytes]:
        """One typed-state request (``worker_state``), bounded by the hook
        timeout; its answer's JSON and blob.  A crash, a hang or garbage
        raises (``PluginCrashedError``): a version not live yet is stopped,
        the live one follows ``on_crash``."""
        with self.lock:
            if self.state != UP:
                raise self._dead_error()
            try:
                obj, out = self._control(req, self.hook_timeout, what, blob)
            except _WorkerError as exc:  # refused there (a bad pointer, a missing function)
                raise StateMigrationError(str(exc)) from None
            return obj, out or b""

    def state_read_into(self, req: dict[str, Any], into: memoryview, what: str) -> None:
        """A ``state_read`` received straight into ``into`` (``worker_state``)."""
        from .worker_state import read_into

        read_into(self, req, into, what)

    def state_write_from(self, req: dict[str, Any], data: memoryview, what: str) -> None:
        """A ``state_write`` sent without copying ``data`` into a frame (``worker_state``)."""
        from .worker_state import write_from

        write_from(self, req, data, what)

    def _guarded(
        self, worker: Worker, what: str, send: Callable[[], None], read: Callable[[], None]
    ) -> None:
        """``send`` then ``read`` on the worker's socket, its failures a crash
        during ``what``, as ``_exchange`` has them (the lock is held)."""
        self.call_started = time.monotonic()
        try:
            send()
            read()
            return
        except TimeoutError:
            self._crashed(worker, what, timeout=self.hook_timeout)
        except _Garbage as exc:
            self._crashed(worker, what, garbage=str(exc))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._crashed(worker, what)
        finally:
            self.call_started = 0.0

    # -- stopping --------------------------------------------------------------------------
    def stop(self, *, kill: bool = False) -> None:
        """Stop the worker: ask it to exit; kill it if it does not at once (or
        if ``kill``, e.g. a hung call holds the lock)."""
        self.retiring = True
        got = self.lock.acquire(timeout=0 if kill else 1.0)
        try:
            worker, self.worker = self.worker, None
            self.lanes.detach()
            self.state = STOPPED
            self.snapshot = None  # never restarted or handed over again: history keeps no blob
            self.ready.set()
        finally:
            if got:
                self.lock.release()
        self.image = None  # no restart from here on: the bytes may go
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
