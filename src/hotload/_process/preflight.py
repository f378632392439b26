"""Preflight: try a new plugin version in a separate process before the host
loads it, so a build that crashes, hangs or refuses to start is a refused
reload instead of an outage.

A worker process (``preflight_worker``; a fresh interpreter, never a fork of
the host) is started once and reused: per reload the cost is a pipe round
trip plus the plugin's own ``dlopen``/``on_load``/self-test, not a Python
start-up.  A worker that a plugin crashed or hung is replaced on the next use.

One deadline (``timeout``) covers the whole exchange, writing the request
included, so a worker that stopped reading cannot block a reload.  A worker
killed or stopped by someone else is reported as such, not as a crash of the
build.  The worker dies with the host (see ``_platform.proc.die_with_parent``),
which is why it is always started from one long-lived thread of this object.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import _errors as errors
from .._artifact.loader import MAX_STATE_SIZE
from .._errors import (
    HotloadError,
    PreflightError,
    resource_error,
)
from .._platform import proc as channel

log = logging.getLogger(__name__)
WORKER_MODULE = "hotload._process.preflight_worker"

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
_START_TIMEOUT = 30.0  # seconds a fresh worker may take to say it is ready


class PreflightWorker:
    """One reusable worker process, used under a lock by one host."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._buf = b""
        self._ids = 0
        # Linux kills the worker (PR_SET_PDEATHSIG) when the *thread* that started
        # it exits: start it from this object's own thread, never from the
        # caller's (a control-channel session or watcher thread that ends soon).
        self._spawner: ThreadPoolExecutor | None = None

    @property
    def pid(self) -> int | None:
        """The running worker's pid (None before the first check)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # -- process management -------------------------------------------------
    def _spawn(self, source: str = "preflight") -> subprocess.Popen[bytes]:
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(1, thread_name_prefix="hotload-preflight-spawn")
        try:
            proc = self._spawner.submit(self._popen).result()
        except OSError as exc:  # EMFILE for its pipes: say so, not a bare errno
            error = resource_error(exc, f"{source}: cannot start the preflight worker")
            if error is None:
                raise HotloadError(
                    f"{source}: cannot start the preflight worker: {exc.strerror or exc}"
                ) from None
            raise error from None
        self._stderr.clear()
        self._buf = b""
        threading.Thread(
            target=self._drain_stderr, args=(proc,), daemon=True, name="hotload-preflight-stderr"
        ).start()
        self._proc = proc
        hello = self._read_line(proc, time.monotonic() + _START_TIMEOUT)
        if hello is None or not hello.get("ready"):
            self._start_failed(proc, source)
        return proc

    def _start_failed(self, proc: subprocess.Popen[bytes], source: str) -> None:
        """The worker died or hung before saying it was ready: say how.  A
        worker killed by SIGKILL/SIGTERM while starting was killed from
        outside (nothing of the plugin has run yet): the build was not
        judged, and retrying is worth it."""
        pid = proc.pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2.0)  # its pipe closed: it is dying; collect how
        stopped = proc.returncode is None and channel.stopped(pid)
        code = proc.returncode
        self._kill()
        time.sleep(0.01)  # let the stderr drain thread pick up the last lines
        tail = self._stderr_tail()
        more = f"; stderr: {tail}" if tail else ""
        sig = "SIGSTOP" if stopped else channel.exit_signal(code) if code is not None else None
        if stopped or sig in EXTERNAL_SIGNALS:
            raise PreflightError(
                f"{source}: preflight: the worker process (pid {pid}) was "
                f"{'stopped' if stopped else 'killed'} by {sig} during its start-up, before it "
                f"checked anything: another process (or the kernel's OOM killer) did it; the new "
                f"build was not judged, retry the reload" + more,
                step="start",
                signal_name=sig,
                stderr=tail,
                external=True,
            )
        if sig is not None:
            how = f"died of {sig}"
        elif code is not None:
            how = f"exited with code {code}"
        else:
            how = f"did not say it was ready within {_START_TIMEOUT:g} s"
        raise HotloadError(
            f"{source}: preflight worker (pid {pid}) failed to start: it {how}"
            + (more or "; no output")
        )

    @staticmethod
    def _popen() -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hotload._process.preflight_worker",
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
            **channel.spawn_options(),
        )

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    def _stderr_tail(self, lines: int = 6) -> str:
        return " | ".join(list(self._stderr)[-lines:])

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()  # SIGKILL also ends a stopped process
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()

    def close(self) -> None:
        with self._lock:
            self._kill()
            if self._spawner is not None:
                self._spawner.shutdown(wait=False)
                self._spawner = None

    def start(self) -> None:
        """Start the worker ahead of the first reload (optional)."""
        with self._lock:
            self._usable()

    def _usable(self, source: str = "preflight") -> subprocess.Popen[bytes]:
        """The running worker, or a fresh one if it died or was stopped while idle."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if not channel.stopped(proc.pid):
                return proc
            log.warning(
                "preflight worker (pid %d) is stopped by a signal (SIGSTOP from another "
                "process?); replacing it",
                proc.pid,
            )
        self._kill()
        return self._spawn(source)

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
    ) -> dict[str, Any]:
        """Try the plugin at ``path`` (its private copy); raise PreflightError.
        ``timeout`` bounds the whole exchange, from writing the request on.
        ``want_report=False``: this process already has the build's report
        (the worker's copy of a 20-type report costs ~2 ms to ship)."""
        with self._lock:
            proc = self._usable(source)
            self._ids += 1
            rid = self._ids
            req = {
                "id": rid,
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
            }
            payload = (json.dumps(req) + "\n").encode()
            deadline = time.monotonic() + self.timeout
            try:
                sent = self._send(proc, payload, deadline)
            except BrokenPipeError:  # it died after the check above: start afresh once
                self._kill()
                proc = self._spawn(source)
                deadline = time.monotonic() + self.timeout
                sent = self._send(proc, payload, deadline)
            if not sent:
                return self._failed(proc, source, "send", hung=True)
            return self._await(proc, source, rid, deadline)

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], payload: bytes, deadline: float) -> bool:
        assert proc.stdin is not None
        return channel.write_all(proc.stdin.fileno(), payload, deadline)

    def _await(
        self, proc: subprocess.Popen[bytes], source: str, rid: int, deadline: float
    ) -> dict[str, Any]:
        step = "check"
        while True:
            msg = self._read_line(proc, deadline)
            if msg is None:
                return self._failed(proc, source, step, hung=time.monotonic() >= deadline)
            if msg.get("id") != rid:
                continue
            if "step" in msg and "done" not in msg:
                step = msg["step"]
                continue
            if msg.get("tainted"):
                self._kill()  # it kept an image that may still run code: start afresh next time
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
                stderr=self._stderr_tail(),
            )

    def _failed(
        self, proc: subprocess.Popen[bytes], source: str, step: str, *, hung: bool
    ) -> dict[str, Any]:
        """The worker died or hung during ``step``: explain, then replace it.

        A worker stopped by a signal, or killed by one that a crash does not
        raise, was stopped by someone else: say so, and that the build was not
        judged, rather than blame the build."""
        where = STEP_WORDS.get(step, step)
        pid = proc.pid
        stopped = hung and channel.stopped(pid)
        if not hung:
            try:  # its pipe closed: it is dying; collect how
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                hung = True
                stopped = channel.stopped(pid)
        self._kill()
        time.sleep(0.01)  # let the stderr drain thread pick up the last lines
        tail = self._stderr_tail()
        more = f"; stderr: {tail}" if tail else ""
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
        code = proc.returncode
        sig = channel.exit_signal(code) if code is not None else None
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
        if (
            os.name == "nt" and code is not None and code >= 0xC0000000
        ):  # an NTSTATUS, e.g. access violation
            raise PreflightError(
                f"{source}: preflight: the new version crashed with exception 0x{code:08X} "
                f"during {where}" + more,
                step=step,
                exit_code=code,
                stderr=tail,
            )
        raise PreflightError(
            f"{source}: preflight: the new version exited the process with code {code} "
            f"during {where}" + more,
            step=step,
            exit_code=code,
            stderr=tail,
        )

    def _read_line(self, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any] | None:
        """Next protocol line, or None when the worker died or the deadline passed."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            chunk = channel.read_chunk(fd, deadline)
            if not chunk:  # None: the deadline passed; b"": it closed the pipe
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        result: dict[str, Any] = json.loads(line)
        return result
