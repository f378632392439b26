"""What the services around a host (watcher, control server, fleet agent)
may ask of it.  They depend on this small protocol, never on ``Host``
itself, so data flows one way: the host starts its services; the services
drive it through these methods and nothing else."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from .._artifact.loader import Candidate
from .._engine.canary import Canary
from .._engine.journal import Journal
from .._engine.judge import Judge
from .._engine.lifecycle import VersionInfo
from .._engine.recording import Recording
from .._engine.registry import Plugin
from .._engine.release import Release
from .._engine.replay import ReplayReport
from .._errors import ClosedError
from .._process.options import Isolated

PathOrCandidate = str | os.PathLike[str] | Candidate

log = logging.getLogger(__name__)


class PluginHost(Protocol):
    journal: Journal  # what changed: the services record the builds they could not hand over

    def __contains__(self, name: object) -> bool: ...

    def names(self) -> list[str]: ...

    def read(self, path: str | os.PathLike[str]) -> Candidate:
        """Read and check a plugin file once (trust checks, size cap, format,
        descriptor); the candidate can then be loaded or reloaded."""
        ...

    def adopt(self, data: bytes, *, source: str) -> Candidate:
        """The same checks for bytes that came from elsewhere (the fleet)."""
        ...

    def kept(self, name: str, digest: str) -> Candidate | None:
        """The build of ``name`` with this SHA-256 from the rollback chain, or None."""
        ...

    def load(
        self,
        path: PathOrCandidate,
        *,
        isolate: bool | Isolated = False,
    ) -> Plugin: ...

    def reload(
        self,
        name: str,
        path: PathOrCandidate | None = None,
        *,
        allow_signature_change: bool = False,
    ) -> VersionInfo: ...

    def rollback(self, name: str) -> VersionInfo: ...

    def canary(
        self,
        name: str,
        path: PathOrCandidate | None = None,
        *,
        share: float = ...,
        key: int | Callable[..., Any] = ...,
        judge: Judge | None = ...,
    ) -> Canary: ...

    def canaries(self, *, ended: bool = False) -> list[Canary]: ...

    def record(self, name: str, calls: int | None = ...) -> Recording | None: ...

    def replay(
        self, name: str, path: PathOrCandidate | None = None, *, calls: Any = None
    ) -> ReplayReport: ...

    def reload_together(
        self,
        builds: Mapping[str, PathOrCandidate | None],
        *,
        at: float | None = None,
        allow_signature_change: bool = False,
    ) -> Release: ...

    def rollback_together(self) -> Release: ...

    def staged_releases(self) -> list[Release]: ...

    def unload(self, name: str) -> None: ...

    @property
    def keep_versions(self) -> int:
        """How many builds the rollback chain keeps."""
        ...

    def current(self, name: str) -> VersionInfo | None:
        """The version serving ``name`` now, or None (not loaded)."""
        ...

    def versions(self, name: str | None = None) -> list[VersionInfo]: ...

    def pruned(self, name: str) -> int: ...

    def leaks(self) -> list[VersionInfo]: ...

    def handles(self) -> int:
        """How many handles to host objects are live (``Host.handle``)."""
        ...

    def on_change(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(name)`` after each load, reload, rollback and unload;
        returns the function that stops it."""
        ...

    def metrics(self) -> dict[str, Any]:
        """Every version's call figures as plain data (``Host.metrics``)."""
        ...


class Service(Protocol):
    """Something the host starts and stops with itself."""

    def stop(self) -> None: ...


S = TypeVar("S", bound=Service)


class Running:
    """The services a host runs, started and stopped under one lock: a
    ``serve_metrics()`` racing ``close()`` left a server answering for a
    closed host, and four racing each other started four (the attacker's
    review).  After ``stop_all`` nothing can be added: the service is stopped
    and ``ClosedError`` raised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Service] = []
        self.closed = False

    def __iter__(self) -> Iterator[Service]:
        return iter(list(self._items))

    def __getitem__(self, i: int) -> Service:
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def get_or_add(self, kind: type[S], make: Callable[[], S]) -> S:
        """The running service of ``kind``, or the one ``make()`` starts."""
        with self._lock:
            if self.closed:
                raise ClosedError("this host is closed")
            found = next((s for s in self._items if isinstance(s, kind)), None)
            if found is None:
                found = make()
                self._items.append(found)
            return found

    def add(self, service: S) -> S:
        with self._lock:
            if not self.closed:
                self._items.append(service)
                return service
        service.stop()
        raise ClosedError("this host is closed")

    def stop_all(self) -> None:
        with self._lock:
            self.closed = True
            items, self._items = self._items, []
        for service in reversed(items):
            try:
                service.stop()
            except Exception:  # closing must go on
                log.exception("stopping %r failed", service)
