"""What the services around a host (watcher, control server, fleet agent)
may ask of it.  They depend on this small protocol, never on ``Host``
itself, so data flows one way: the host starts its services; the services
drive it through these methods and nothing else."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from .._artifact.loader import Candidate
from .._engine.lifecycle import VersionInfo
from .._engine.registry import Plugin
from .._process.options import Isolated

PathOrCandidate = str | os.PathLike[str] | Candidate


class PluginHost(Protocol):
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
