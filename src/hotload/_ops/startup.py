"""The watcher's start-up pass: the files already there when it starts, and
when each of them has been applied.

``Host.watch(src, rebuild=True)`` returns at once while the first builds run
on the watcher's thread (a compiler takes most of a second), so code that
calls ``host["xp"]`` right after it found nothing loaded.  ``Watcher.ready``
and ``Watcher.wait()`` say when the pass is done, and what became of each
file; ``Host.watch(..., wait=True)`` returns only then.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from .._errors import ConfigError, HotloadError
from .apply import WatchEvent


class StartupPass:
    """The files found at start that are not applied yet, and the outcome
    (a :class:`WatchEvent`) of each one that is.  The watcher's thread says
    which file it is ``applying`` and when it has ``applied`` it; a file
    retried, or changed again meanwhile, is applied when that later look
    is done."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._cond = threading.Condition()
        self._left: set[Path] = set()
        self._events: list[WatchEvent] = []
        self._current: Path | None = None
        self._stopped = False

    def expect(self, paths: Iterable[Path]) -> None:
        with self._cond:
            self._left.update(paths)

    def applying(self, path: Path) -> None:
        with self._cond:
            self._current = path if path in self._left else None

    def record(self, event: WatchEvent) -> None:
        """An outcome the watcher reported: the pass's when it is about one of its files."""
        with self._cond:
            if self._current is not None:
                self._events.append(event)

    def applied(self, path: Path, *, again: bool) -> None:
        """The watcher is done with ``path`` for now; ``again`` when it will
        look at it once more (a retry, or a change since)."""
        with self._cond:
            self._current = None
            if not again and path in self._left:
                self._left.discard(path)
                self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @property
    def ready(self) -> bool:
        with self._cond:
            return not self._left

    def wait(self, timeout: float | None = None) -> list[WatchEvent]:
        """The outcomes, once every file is applied; ``HotloadError`` naming
        the files not applied yet when ``timeout`` seconds pass first or the
        watcher stops."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._left and not self._stopped:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            if not self._left:
                return list(self._events)
            why = (
                "was cut short: the watcher stopped"
                if self._stopped
                else f"did not finish within {timeout:g} s"
            )
            pending = ", ".join(sorted(map(str, self._left)))
            raise HotloadError(
                f"watch {self.where}: the start-up pass {why}; not applied yet: {pending}"
            )

    def check(self, events: list[WatchEvent]) -> None:
        """``HotloadError`` naming each file of the pass that failed, and why."""
        failed = [e for e in events if e.action == "failed"]
        if failed:
            why = "\n".join(f"{e.source or e.path}: {e.error}" for e in failed)
            raise HotloadError(
                f"watch {self.where}: the start-up pass failed, so nothing is watched:\n{why}"
            )


def wait_timeout(wait: object) -> float | None:
    """``wait=`` as a timeout in seconds: None for True (and for False,
    which does not wait at all); ``ConfigError`` for anything else than a
    bool or a finite number >= 0."""
    if isinstance(wait, bool):
        return None
    if isinstance(wait, (int, float)) and math.isfinite(wait) and wait >= 0:
        return float(wait)
    raise ConfigError(f"wait={wait!r}: expected True, False or a number of seconds (>= 0)")


__all__ = ["StartupPass", "wait_timeout"]
