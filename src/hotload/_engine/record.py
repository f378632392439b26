"""Everything the host knows about one plugin name, behind that plugin's lock.

One record per name, kept after an unload so that the history and the
sequence numbers stay honest if the name is loaded again.  The lock is per
plugin: a swap that waits (a draining call, a slow hook) holds up that
plugin's own reloads and nothing else.

The rollback chain
------------------
The builds that went live by ``load`` or ``reload`` form a chain, newest
last (at most ``keep_versions``, with their bytes).  ``rollback`` makes the
build before the current one live again as a new version and drops the
current build from the chain, so rolling back twice walks two builds back.
``unload`` ends the chain: a later ``load`` starts a new one, and a rollback
never reaches across an unload.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .._errors import HotloadError
from .._platform import dl
from .._process.options import Isolated
from . import metrics
from .canary import Canary
from .hook_runner import HookRunner
from .lifecycle import Version, VersionInfo, VersionState
from .registry import Plugin
from .settings import Settings
from .unload_policy import UnloadPolicy

# Looked up once: an enum member costs ~200 ns per access on Python 3.11, and the
# reload path walks the whole history (up to history_limit + live versions).
_STUCK = frozenset((VersionState.LEAKED, VersionState.RETAINED))
_UNLOADED = VersionState.UNLOADED


@dataclass
class Build:
    """One link of the rollback chain: a build's bytes and where it came from."""

    seq: int  # the version now serving (or last served) these bytes
    first_seq: int  # the version that first loaded them
    data: bytes
    source: str
    digest: str  # SHA-256 of data


class PluginRecord:
    def __init__(
        self,
        name: str,
        *,
        policy: UnloadPolicy,
        settings: Settings,
    ) -> None:
        self.name = name
        self.lock = threading.RLock()
        self.plugin: Plugin | None = None  # None while not loaded
        self.history: list[Version] = []
        self.source = ""  # what reload() reads when given no path
        self.recording: Any = None  # host.record's Recording while it runs
        self.declared: dict[str, str] | None = None
        self.unload_safe = False
        self.isolate: Isolated | None = None  # load(isolate=True): kept by reload and rollback
        self.canary: Canary | None = None  # a canary running beside the current version
        self.last_canary: Canary | None = None  # the one that ended last (its verdict)
        self.staged: Any = None  # a release staged to switch it later (release.Release)
        self.seq = 0
        self.pruned = 0
        self.folded = metrics.Folded()  # the pruned versions' counts: totals never go back
        self.chain: list[Build] = []
        self.dropped_builds = 0  # builds that fell off the chain (keep_versions)
        self.hooks = HookRunner(settings.hook_timeout)
        self._policy = policy
        self._keep = settings.keep_versions
        self._history_limit = settings.history_limit
        self._history_lock = threading.Lock()  # add vs prune: readers (versions()) prune too

    @property
    def current(self) -> Version | None:
        return self.plugin._version() if self.plugin is not None else None

    def add(self, version: Version) -> None:
        self.seq = version.seq
        with self._history_lock:
            self.history.append(version)
        self.prune()

    # -- the rollback chain -----------------------------------------------------
    def went_live(self, version: Version, data: bytes, source: str) -> None:
        """A load or reload: the build joins the chain."""
        self.chain.append(Build(version.seq, version.seq, data, source, version.image.digest))
        while len(self.chain) > self._keep:
            self.chain.pop(0)
            self.dropped_builds += 1

    def live(self) -> tuple[bytes, str] | None:
        """The bytes of the build serving now and their digest, if known."""
        cur = self.current
        build = self.chain[-1] if self.chain else None
        if cur is None or build is None or build.seq != cur.seq:
            return None
        return build.data, cur.image.digest

    def kept(self, digest: str) -> Build | None:
        """The newest build in the chain with this SHA-256, if it is kept."""
        return next((b for b in reversed(list(self.chain)) if b.digest == digest), None)

    def rollback_target(self) -> Build:
        """The build a rollback returns to, or a ``HotloadError`` saying why
        there is none."""
        cur = self.chain[-1] if self.chain else None
        if len(self.chain) >= 2:
            return self.chain[-2]
        if cur is None:
            raise HotloadError(f"{self.name}: nothing to roll back to")
        what = f"v{cur.seq}" + (
            f" (a rollback to v{cur.first_seq})" if cur.first_seq != cur.seq else ""
        )
        if self.dropped_builds:
            raise HotloadError(
                f"{self.name}: cannot roll back past {what}: older builds are no longer kept "
                f"(Host(keep_versions={self._keep}))"
            )
        raise HotloadError(
            f"{self.name}: nothing to roll back to: {what} is the oldest build loaded since "
            f"this plugin was last loaded"
        )

    def rolled_back(self, version: Version) -> None:
        """The build before the current one serves again as ``version``."""
        self.chain.pop()
        self.chain[-1].seq = version.seq

    def unloaded(self) -> None:
        self.plugin = None
        self.chain.clear()
        self.dropped_builds = 0

    # -- what callers see -------------------------------------------------------
    def infos(self, *, inspect: bool = True) -> list[VersionInfo]:
        self.prune()
        return [self.info(v, inspect=inspect) for v in self.history]

    def info(self, v: Version, *, inspect: bool = True, measure: bool = True) -> VersionInfo:
        """``measure=False`` skips the kernel's count of mapped bytes (reading
        ``/proc/self/maps`` costs ~0.25 ms: too much for the reload path)."""
        img = v.image
        mapped = v.mapped_bytes
        proxy = img.process  # isolated: the worker process's figures
        if measure and v.state is not VersionState.UNLOADED and proxy is None:
            live = dl.mapped_ranges(img.file_id)  # the kernel's count, for every image in memory
            mapped = live if live >= 0 else mapped
        return VersionInfo(
            name=v.plugin_name,
            seq=v.seq,
            plugin_version=img.version,
            state=v.state,
            in_flight=len(v.calls),
            loaded_at=img.loaded_at,
            unloaded_at=v.unloaded_at,
            source=img.source,
            copy=str(img.copy),
            digest=img.digest,
            size=img.size,
            dlopen_count=img.opens,
            dlclose_count=img.closes,
            mapped_bytes=mapped,
            blockers=tuple(self._policy.blockers(v, inspect=inspect)),
            note=v.note or (proxy.exit_fault if proxy is not None else ""),
            served=v.served,
            isolated=proxy is not None,
            pid=proxy.pid if proxy is not None else None,
            rss=proxy.rss() if proxy is not None else 0,
            restarts=proxy.restarts if proxy is not None else 0,
            sandbox=proxy.sandbox if proxy is not None else (),
            worker=proxy.state if proxy is not None else "",
            quarantined=len(proxy.quarantine.refused) if proxy is not None else 0,
            service_errors=img.imports.errors if img.imports is not None else 0,
            **self.canary_fields(v),
            **metrics.version_fields(v),
        )

    def canary_fields(self, v: Version) -> dict[str, Any]:
        """``canary`` (its role) and ``share`` of a version while a canary runs."""
        c = self.canary
        if c is None or not c.running:
            return {}
        if v is c.candidate:
            return {"canary": "candidate", "share": c.share}
        if v is c.baseline:
            return {"canary": "baseline", "share": 1 - c.share}
        return {}

    def serving(self) -> VersionInfo | None:
        """``Host.current``: the version serving now; mid-switch (a stateful
        swap holds calls at the gate) the one that served last, which serves
        on if the new one is refused."""
        version = self.current
        if version is None and self.plugin is not None:
            serving = (VersionState.ACTIVE, VersionState.DRAINING)
            live = [v for v in self.history if v.state in serving]
            version = live[-1] if live else None
        return self.info(version, inspect=False) if version else None

    def stuck(self) -> list[Version]:
        return [v for v in self.history if v.state in _STUCK]

    def prune(self) -> None:
        """Keep the history bounded: every version still in memory stays, but
        only the newest ``history_limit`` unloaded ones (each costs ~5 KB; a
        service reloading all day must not grow)."""
        with self._history_lock:
            self._prune_locked()

    def counted(self) -> tuple[int, list[int], list[Version]]:
        """The pruned versions' calls and errors and the versions still in the
        history, read at one instant: a prune between the two reads would drop
        a version from both, and a plugin's total would go back (metrics)."""
        with self._history_lock:
            return self.folded.calls, list(self.folded.errors), list(self.history)

    def _prune_locked(self) -> None:
        done = [v for v in self.history if v.state is _UNLOADED]
        excess = len(done) - self._history_limit
        if excess > 0:  # a new list (readers may hold the old one), cut in C: the oldest go
            history = self.history.copy()
            for v in done[:excess]:
                history.remove(v)  # by identity: a Version has no __eq__
                self.folded.fold(v)
                v.release()
            self.history = history
            self.pruned += excess
