"""Preflight: try a new plugin version in a worker process before the host
opens it, so a build that crashes, hangs or refuses to start is a refused
reload instead of an outage.

The worker is the one kind ``spawn`` starts (role ``preflight``, the trial in
``trial``): a fresh interpreter with the scrubbed environment every worker
gets, so a build is tried in the environment it will run in; and for an
isolated plugin with ``limits``, under those limits.  A worker is started
once and reused: per reload the cost is a round trip on its socket plus the
plugin's own ``dlopen``/``on_load``/self-test, not a Python start-up.  A
worker that a plugin crashed, hung or tainted (it left code running), or
that ran a trial under limits (they cannot be lifted), is replaced: a new one
is started in the background, so the next check finds it warm.

One deadline (``timeout``) covers the whole exchange, sending the request
included, so a worker that stopped reading cannot block a reload.  A worker
killed or stopped by someone else is reported as such, not as a crash of the
build.  The worker dies with the host (see ``spawn``).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from .. import _errors as errors
from .._artifact.loader import MAX_STATE_SIZE
from .._errors import (
    HotloadError,
    PreflightError,
    resource_error,
)
from .._platform import proc as channel
from .pool import Spawner
from .spawn import Worker, _StartFailed
from .wire import OP_CONTROL, _Garbage

log = logging.getLogger(__name__)

STEP_WORDS = {
    "start": "its start-up (before it checked anything)",
    "send": "receiving the request",
    "check": "reading and checking the file",
    "dlopen": "dlopen (library constructors)",
    "resolve": "resolving exports",
    "on_load": "on_load",
    "self_test": "the self-test",
    "on_unload": "on_unload (handing over its state)",
}

# Signals that a crashing plugin does not raise: a worker ended by one of these
# was killed from outside (another process, a terminal, the OOM killer).
EXTERNAL_SIGNALS = frozenset({"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP"})


class PreflightWorker:
    """The preflight's workers, used under a lock by one host: the warm one
    that trials without limits reuse, and (only while builds with limits are
    tried) a fresh spare for those."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        # sandboxed or not (an isolated plugin's trial runs as it will run) -> the warm
        # worker that trials without limits reuse, and its spawner (made by the first check)
        self._warm: dict[bool, Worker | None] = {False: None, True: None}
        self._busy: Worker | None = None  # the worker of the check under way
        self._spawners: dict[bool, Spawner] = {}
        self._ids = 0

    @property
    def _worker(self) -> Worker | None:
        """The warm worker of in-process plugins' trials (not sandboxed)."""
        return self._warm[False]

    @property
    def pid(self) -> int | None:
        """The pid of the worker of the check under way, else of the warm one
        (None before the first check)."""
        w = self._busy or self._warm[False] or self._warm[True]
        return w.pid if w is not None and w.alive() else None

    # -- workers ------------------------------------------------------------------
    def _start(self, source: str, sandbox: bool = False) -> Worker:
        """A ready worker: the spare if one is warm, else a new one (its pid is
        ``pid`` while it starts)."""
        spawner = self._spawners.get(sandbox)
        if spawner is None:
            spawner = self._spawners[sandbox] = Spawner("preflight", sandbox=sandbox)
        try:
            worker = spawner.take()
        except OSError as exc:  # EMFILE for its socket or pipes: say so, not a bare errno
            error = resource_error(exc, f"{source}: cannot start the preflight worker")
            if error is None:
                raise HotloadError(
                    f"{source}: cannot start the preflight worker: {exc.strerror or exc}"
                ) from None
            raise error from None
        self._busy = worker
        try:
            worker.greet()
        except _StartFailed as exc:
            raise _start_error(exc, source) from None
        return worker

    def _usable(self, source: str, sandbox: bool = False) -> Worker:
        """The warm worker, or a fresh one if it died or was stopped while idle."""
        w = self._warm[sandbox]
        if w is not None and w.alive():
            if not channel.stopped(w.pid):
                return w
            log.warning(
                "preflight worker (pid %d) is stopped by a signal (SIGSTOP from another "
                "process?); replacing it",
                w.pid,
            )
        self._discard(w, refill=False)
        fresh = self._warm[sandbox] = self._start(source, sandbox)
        return fresh

    def _discard(self, worker: Worker | None, *, refill: bool = True) -> None:
        """Kill ``worker`` (and its tree); start its successor in the background."""
        if worker is None:
            return
        kind = worker.sandboxed
        if worker is self._warm[kind]:
            self._warm[kind] = None
        worker.kill()  # SIGKILL also ends a stopped process
        spawner = self._spawners.get(kind)
        if refill and spawner is not None:
            spawner.refill()

    def close(self) -> None:
        with self._lock:
            for kind in (False, True):
                self._discard(self._warm[kind], refill=False)
            for spawner in self._spawners.values():
                spawner.close()
            self._spawners.clear()

    def start(self) -> None:
        """Start the worker ahead of the first reload (optional)."""
        with self._lock:
            try:
                self._usable("preflight")
            finally:
                self._busy = None

    # -- one check ------------------------------------------------------------
    def check(
        self,
        path: str,
        source: str,
        *,
        name: str | None,
        declared: Mapping[str, str] | None,
        prev_version: str | None,
        state: bytes | None,
        self_test: bool = True,
        unload_safe: bool = False,
        max_state_size: int = MAX_STATE_SIZE,
        services: Mapping[str, list[Any]] | None = None,
        want_report: bool = True,
        limits: Mapping[str, int] | None = None,
        sandbox: bool = False,
        image: bytes | None = None,
    ) -> dict[str, Any]:
        """Try the plugin at ``path`` (its private copy); raise PreflightError.
        ``timeout`` bounds the whole exchange, from sending the request on.
        ``want_report=False``: this process already has the build's report
        (the worker's copy of a 20-type report costs ~2 ms to ship).
        ``limits``: an isolated plugin's, applied in the worker before the
        plugin's first instruction; such a trial runs in a worker that has run
        nothing else, which is then replaced.  ``sandbox``: an isolated
        plugin's, tried in a sandboxed worker (sent ``image``, the build's
        bytes: the sandbox cannot see the copy)."""
        with self._lock:
            try:
                return self._check(
                    {
                        "op": "trial",
                        "path": path,
                        "source": source,
                        "name": name,
                        "declared": dict(declared) if declared else None,
                        "prev_version": prev_version,
                        "state": base64.b64encode(state).decode() if state is not None else None,
                        "self_test": self_test,
                        "unload_safe": unload_safe,
                        "max_state_size": max_state_size,
                        "services": dict(services) if services else None,
                        "want_report": want_report,
                        "limits": dict(limits) if limits else None,
                        **(
                            {"image": base64.b64encode(image).decode()} if sandbox and image else {}
                        ),
                    },
                    source,
                    sandbox,
                )
            finally:
                self._busy = None

    def _check(self, req: dict[str, Any], source: str, sandbox: bool) -> dict[str, Any]:
        limited = bool(req["limits"])
        worker = self._start(source, sandbox) if limited else self._usable(source, sandbox)
        self._busy = worker
        self._ids += 1
        req["id"] = rid = self._ids
        body = bytes([OP_CONTROL]) + json.dumps(req).encode()
        try:
            deadline = time.monotonic() + self.timeout
            try:
                sent = worker.send_by(body, deadline)
            except (BrokenPipeError, ConnectionResetError):  # it died after the idle check
                self._discard(worker, refill=False)  # start afresh, once
                worker = self._start(source, sandbox)
                if not limited:
                    self._warm[sandbox] = worker
                deadline = time.monotonic() + self.timeout
                sent = worker.send_by(body, deadline)
            if not sent:
                self._failed(worker, source, "send", hung=True)
            return self._await(worker, source, rid, deadline)
        finally:
            if limited:  # its limits cannot be lifted: a fresh spare for the next one
                self._discard(worker)

    def _await(self, worker: Worker, source: str, rid: int, deadline: float) -> dict[str, Any]:
        step = "check"
        while True:
            try:
                frame = worker.recv_by(deadline)
            except (EOFError, OSError):  # it is gone
                frame = None
            except _Garbage as exc:
                self._failed(worker, source, step, garbage=str(exc))
            if frame is None:
                self._failed(worker, source, step, hung=time.monotonic() >= deadline)
            try:
                msg = json.loads(frame)
            except (ValueError, UnicodeDecodeError):
                msg = None
            if not isinstance(msg, dict):
                self._failed(
                    worker, source, step, garbage=f"a frame that is not a message: {frame[:40]!r}"
                )
            if msg.get("id") != rid:
                continue
            if "step" in msg and "done" not in msg:
                step = msg["step"]
                continue
            if msg.get("tainted"):
                self._discard(worker)  # it kept an image that may still run code
            if msg.get("done"):
                return msg
            known = getattr(errors, msg.get("type") or "", None)
            if isinstance(known, type) and issubclass(known, HotloadError):
                raise known(msg["error"])  # the same error the host itself would raise
            raise PreflightError(
                f"{source}: preflight refused the new version at "
                f"{STEP_WORDS.get(msg['step'], msg['step'])}: "
                f"{msg['error'].removeprefix(source + ': ')}",
                step=msg["step"],
                rc=msg.get("rc"),
                stderr=worker.tail(),
            )

    def _failed(
        self, worker: Worker, source: str, step: str, *, hung: bool = False, garbage: str = ""
    ) -> NoReturn:
        """The worker died, hung or broke the protocol during ``step``:
        explain, then replace it.

        A worker stopped by a signal, or killed by one that a crash does not
        raise, was stopped by someone else: say so, and that the build was not
        judged, rather than blame the build."""
        where = STEP_WORDS.get(step, step)
        pid = worker.pid
        stopped = hung and worker.stopped()
        if not hung and not garbage and not worker.reap(2.0):  # its socket closed: it is dying
            hung = True
            stopped = worker.stopped()
        self._discard(worker)
        tail = worker.tail()
        more = f"; stderr: {tail}" if tail else ""
        if garbage:
            raise PreflightError(
                f"{source}: preflight: the worker wrote garbage to the channel during {where} "
                f"({garbage}); it was killed" + more,
                step=step,
                stderr=tail,
            )
        if stopped:
            raise PreflightError(
                f"{source}: preflight: the worker process (pid {pid}) was stopped by a signal "
                f"during {where} (SIGSTOP, SIGTSTP or a debugger, from outside: a plugin crash "
                f"does not stop a process); the new build was not judged, retry the reload" + more,
                step=step,
                signal_name="SIGSTOP",
                stderr=tail,
                external=True,
            )
        if hung:
            what = (
                "did not read the request"
                if step == "send"
                else f"the new version did not finish {where}"
            )
            raise PreflightError(
                f"{source}: preflight: {what} within {self.timeout:.1f} s (hung)" + more,
                step=step,
                stderr=tail,
            )
        sig, code = worker.how_it_ended()
        if sig in EXTERNAL_SIGNALS:
            raise PreflightError(
                f"{source}: preflight: the worker process (pid {pid}) was killed by {sig} "
                f"during {where}, a signal a crashing plugin does not raise: another process "
                f"(or the kernel's OOM killer) killed it; the new build was not judged, retry "
                f"the reload" + more,
                step=step,
                signal_name=sig,
                stderr=tail,
                external=True,
            )
        if sig is not None:
            raise PreflightError(
                f"{source}: preflight: the new version crashed with {sig} during {where}" + more,
                step=step,
                signal_name=sig,
                stderr=tail,
            )
        raise PreflightError(
            f"{source}: preflight: the new version exited the process with code {code} "
            f"during {where}" + more,
            step=step,
            exit_code=code,
            stderr=tail,
        )


def _start_error(exc: _StartFailed, source: str) -> HotloadError:
    """A worker that never said hello, as the preflight reports it.  One
    killed by SIGKILL/SIGTERM or stopped while starting was hit from outside
    (nothing of the plugin has run yet): the build was not judged, and
    retrying is worth it."""
    more = f"; stderr: {exc.stderr}" if exc.stderr else ""
    sig = exc.signal_name
    if exc.stopped or sig in EXTERNAL_SIGNALS:
        return PreflightError(
            f"{source}: preflight: the worker process (pid {exc.pid}) was "
            f"{'stopped' if exc.stopped else 'killed'} by {sig} during its start-up, before it "
            f"checked anything: another process (or the kernel's OOM killer) did it; the new "
            f"build was not judged, retry the reload" + more,
            step="start",
            signal_name=sig,
            stderr=exc.stderr,
            external=True,
        )
    return HotloadError(
        f"{source}: preflight worker (pid {exc.pid}) failed to start: it {exc.how}"
        + (more or "; no output")
    )
