"""Run a plugin's ``on_load``/``on_unload`` with a deadline.

A hook is plugin code running inside the host.  If it never returns, the
thread that called it is lost, so hooks never run on a caller's thread: they
run on a runner thread, and the caller waits at most ``timeout``.  A runner
stuck in a hook is abandoned (it is still running plugin code, so its image
must stay loaded) and the next hook gets a fresh runner.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

from .._errors import HookTimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Job:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class HookRunner:
    """One daemon thread that runs hooks, replaced when a hook hangs."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self.abandoned = 0  # runner threads left inside a hook that never returned

    def run(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` on the runner; ``HookTimeoutError`` naming ``what`` when
        it does not return within the timeout (the hook keeps running)."""
        if self.timeout is None:
            return fn()
        job = _Job(fn)
        with self._lock:
            if self._jobs is None:
                self._jobs = queue.SimpleQueue()
                threading.Thread(
                    target=_serve, args=(self._jobs,), name="hotload-hooks", daemon=True
                ).start()
            jobs = self._jobs
            jobs.put(job)
            if not job.done.wait(self.timeout):
                self._jobs = None  # this runner is stuck: the next hook gets a new one
                self.abandoned += 1
                raise HookTimeoutError(
                    f"{what} did not return within {self.timeout:g} s "
                    f"(Host(hook_timeout=...)); it is still running, so its image stays loaded"
                )
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            if self._jobs is not None:
                self._jobs.put(None)
                self._jobs = None


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.result = job.fn()
        except BaseException as exc:  # handed to the waiting caller
            job.error = exc
        job.done.set()
