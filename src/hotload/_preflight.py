"""Preflight: try a new plugin version in a separate process before the host
loads it, so a build that crashes, hangs or refuses to start is a refused
reload instead of an outage.

A worker process (``preflight_worker``; a fresh interpreter, never a fork of
the host) is started once and reused: per reload the cost is a pipe round
trip plus the plugin's own ``dlopen``/``on_load``/self-test, not a Python
start-up.  A worker that a plugin crashed or hung is replaced on the next use.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import _errors as errors
from ._errors import HotloadError

log = logging.getLogger(__name__)

STEP_WORDS = {
    "check": "reading and checking the file",
    "dlopen": "dlopen (library constructors)",
    "resolve": "resolving exports",
    "on_load": "on_load",
    "self_test": "the self-test",
}


class PreflightError(errors.HookError):
    """The new version failed in the preflight process: crashed, hung, or
    refused; the message says which step and how."""

    def __init__(
        self,
        message: str,
        *,
        step: str,
        signal_name: str | None = None,
        exit_code: int | None = None,
        rc: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.step, self.signal_name, self.exit_code, self.rc, self.stderr = (
            step,
            signal_name,
            exit_code,
            rc,
            stderr,
        )


class PreflightWorker:
    """One reusable worker process, used under a lock by one host."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._buf = b""
        self._ids = 0

    # -- process management -------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "hotload._preflight_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self._stderr.clear()
        self._buf = b""
        threading.Thread(
            target=self._drain_stderr, args=(proc,), daemon=True, name="hotload-preflight-stderr"
        ).start()
        self._proc = proc
        hello = self._read_line(proc, time.monotonic() + 30.0)
        if hello is None or not hello.get("ready"):
            self._kill()
            raise HotloadError(
                f"preflight worker failed to start: {self._stderr_tail() or 'no output'}"
            )
        return proc

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
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def start(self) -> None:
        """Start the worker ahead of the first reload (optional)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._spawn()

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
    ) -> dict[str, Any]:
        """Try the plugin at ``path`` (its private copy); raise PreflightError."""
        with self._lock:
            proc = (
                self._proc
                if self._proc is not None and self._proc.poll() is None
                else self._spawn()
            )
            self._ids += 1
            req = {
                "id": self._ids,
                "path": path,
                "source": source,
                "name": name,
                "declared": dict(declared) if declared else None,
                "prev_version": prev_version,
                "state": base64.b64encode(state).decode() if state is not None else None,
                "self_test": self_test,
                "unload_safe": unload_safe,
            }
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps(req) + "\n").encode())
                proc.stdin.flush()
            except BrokenPipeError:
                self._kill()
                proc = self._spawn()
                assert proc.stdin is not None
                proc.stdin.write((json.dumps(req) + "\n").encode())
                proc.stdin.flush()
            return self._await(proc, source, req["id"])

    def _await(self, proc: subprocess.Popen[bytes], source: str, rid: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
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
        """The worker died or hung during ``step``: explain, then replace it."""
        where = STEP_WORDS.get(step, step)
        if not hung:
            try:  # its pipe closed: it is dying; collect how
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                hung = True
        self._kill()
        time.sleep(0.01)  # let the stderr drain thread pick up the last lines
        tail = self._stderr_tail()
        if hung:
            msg = (
                f"{source}: preflight: the new version did not finish {where} "
                f"within {self.timeout:.1f} s (hung)"
            )
            raise PreflightError(
                msg + (f"; stderr: {tail}" if tail else ""), step=step, stderr=tail
            )
        code = proc.returncode
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:  # a real-time signal has no name in the enum
                sig = f"signal {-code}"
            msg = f"{source}: preflight: the new version crashed with {sig} during {where}"
            raise PreflightError(
                msg + (f"; stderr: {tail}" if tail else ""), step=step, signal_name=sig, stderr=tail
            )
        if (
            os.name == "nt" and code is not None and code >= 0xC0000000
        ):  # an NTSTATUS, e.g. access violation
            msg = (
                f"{source}: preflight: the new version crashed with exception 0x{code:08X} "
                f"during {where}"
            )
            raise PreflightError(
                msg + (f"; stderr: {tail}" if tail else ""), step=step, exit_code=code, stderr=tail
            )
        msg = (
            f"{source}: preflight: the new version exited the process with code {code} "
            f"during {where}"
        )
        raise PreflightError(
            msg + (f"; stderr: {tail}" if tail else ""), step=step, exit_code=code, stderr=tail
        )

    def _read_line(self, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any] | None:
        """Next protocol line, or None when the worker died or the deadline passed."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)
