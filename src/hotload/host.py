"""The host: the object a service creates to load, call, swap and unload
plugins.  It owns the work directory, the per-plugin version registry and a
reaper thread that closes retired versions once their last call returns."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from . import loader
from .errors import ClosedError, HotloadError, NotLoadedError, SignatureError
from .registry import (
    LEAKED,
    SWITCHING,
    UNLOADED,
    UNLOADED_PLUGIN,
    Plugin,
    Version,
    VersionInfo,
)
from .workdir import WorkDir

log = logging.getLogger(__name__)


class Host:
    """Loads plugins into this process and hot-swaps them.

    ``quiesce_timeout``: how long a swap of a *stateful* plugin (one with an
    ``on_unload`` hook) waits for calls in the old version to return before
    taking its state; new calls wait during that short switch so that no
    update is lost.  A call still running after the timeout finishes on the
    old version, and its effect after the snapshot is not carried over (a
    warning says so).  Stateless plugins swap without any wait.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *,
                 quiesce_timeout: float = 0.5) -> None:
        self.quiesce_timeout = quiesce_timeout
        self._workdir = WorkDir(workdir)
        self._lock = threading.RLock()
        self._plugins: dict[str, Plugin] = {}
        self._history: dict[str, list[Version]] = {}
        self._sources: dict[str, tuple[str, dict[str, str] | None]] = {}
        self._seq: dict[str, int] = {}
        self._retired: list[Version] = []
        self._unverified: list[Version] = []
        self._verifying = 0
        self._orphans: list[loader.Image] = []
        self._wake = threading.Event()
        self._closed = False
        self._reaper = threading.Thread(target=self._reap_loop, name="hotload-reaper", daemon=True)
        self._reaper.start()

    # -- context manager ----------------------------------------------------
    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workdir(self) -> Path:
        return self._workdir.path

    # -- loading --------------------------------------------------------------
    def load(self, path: str | os.PathLike[str], *, name: str | None = None,
             signatures: Mapping[str, str] | None = None) -> Plugin:
        """Load a plugin as version 1 and return its call handle.

        The name and C signatures come from the plugin's descriptor; a library
        without one needs ``name`` and ``signatures`` (which a descriptor, if
        present, must agree with)."""
        source = os.fspath(path)
        declared = dict(signatures) if signatures else None
        with self._lock:
            self._check_open()
            if name is not None and name in self._plugins:
                raise HotloadError(f"{source}: plugin {name} is already loaded; use reload({name!r})")
            image = loader.open_version(source, self._workdir, self._seq.get(name or "", 0) + 1,
                                        name=name, declared=declared, live_handles=self._live_handles())
            if image.name in self._plugins:
                self._discard(image)
                raise HotloadError(f"{source}: plugin {image.name} is already loaded; "
                                   f"use reload({image.name!r})")
            plugin = Plugin(image.name, self.versions)
            version = self._new_version(image)
            try:
                image.call_on_load(None, None)
            except BaseException:
                self._discard(image)
                raise
            self._seq[image.name] = version.seq
            self._history.setdefault(image.name, []).append(version)
            self._sources[image.name] = (source, declared)
            plugin._install(image.prototypes)
            self._publish(plugin, version)
            self._plugins[image.name] = plugin
            log.info("loaded %s %s as v%d from %s", image.name, image.version, version.seq, source)
            return plugin

    def reload(self, name: str, path: str | os.PathLike[str] | None = None, *,
               allow_signature_change: bool = False) -> VersionInfo:
        """Load the plugin's file again (or ``path``) as a new version and
        route new calls to it.  On any failure the current version keeps
        serving with its state, and the error says which file and why."""
        with self._lock:
            self._check_open()
            plugin = self._plugin(name)
            old = plugin._current
            assert isinstance(old, Version) and old.image is not None
            default_source, declared = self._sources[name]
            source = os.fspath(path) if path is not None else default_source
            image = loader.open_version(source, self._workdir, self._seq[name] + 1, name=name,
                                        declared=declared, live_handles=self._live_handles())
            try:
                if not allow_signature_change:
                    _check_compatible(old.image, image)
            except BaseException:
                self._discard(image)
                raise
            version = self._new_version(image)
            self._switch(plugin, old, version)
            self._seq[name] = version.seq
            self._history[name].append(version)
            self._sources[name] = (source, declared)
            log.info("reloaded %s: v%d (%s) -> v%d (%s)", name, old.seq, old.image.version,
                     version.seq, image.version)
            return self._info(version)

    def unload(self, name: str) -> None:
        """Stop serving a plugin; its versions close once their calls return."""
        with self._lock:
            plugin = self._plugin(name)
            cur = plugin._current
            plugin._current = UNLOADED_PLUGIN
            plugin._switched.set()
            del self._plugins[name]
            if isinstance(cur, Version):
                self._retire(cur)

    def _switch(self, plugin: Plugin, old: Version, new: Version) -> None:
        """Hand over state and make ``new`` current, or leave ``old`` serving."""
        assert old.image is not None and new.image is not None
        if old.image.on_unload is None:
            try:
                new.image.call_on_load(old.image.version, None)
            except BaseException:
                self._discard(new.image)
                raise
            plugin._install(new.image.prototypes)
            self._publish(plugin, new)
            self._retire(old)
            return
        # Stateful: hold new calls at the gate, let the old version go quiet,
        # snapshot its state, start the new version with it.
        plugin._switched.clear()
        plugin._current = SWITCHING
        old.retire()
        try:
            if old.calls and not old.drained.wait(self.quiesce_timeout):
                log.warning("%s v%d: %d call(s) still running after %.2fs; taking its state now, "
                            "their later effects stay in v%d", plugin.name, old.seq, len(old.calls),
                            self.quiesce_timeout, old.seq)
            state = old.image.call_on_unload()
            new.image.call_on_load(old.image.version, state)
        except BaseException:
            old.unretire()
            self._publish(plugin, old)
            self._discard(new.image)
            raise
        plugin._install(new.image.prototypes)
        self._publish(plugin, new)
        self._retire(old, already=True)

    @staticmethod
    def _publish(plugin: Plugin, version: Version) -> None:
        plugin._current = version
        plugin._switched.set()

    # -- retiring and the reaper ---------------------------------------------
    def _retire(self, version: Version, *, already: bool = False) -> None:
        """Take a version out of service.  If no call is in it, release it at
        once (``dlclose`` is cheap), so a burst of reloads never piles up
        images; the reaper closes busy ones when their last call returns and
        does the costly check that each image really left."""
        if not already:
            version.retire()
        if version.calls:
            self._retired.append(version)
        else:
            self._release(version)
        self._wake.set()

    def _release(self, version: Version) -> None:
        assert version.image is not None
        try:
            loader.release(version.image)
        except HotloadError as exc:
            log.error("%s", exc)
            version.state, version.note = LEAKED, str(exc)
            return
        self._unverified.append(version)

    def _reap_loop(self) -> None:
        while True:
            self._wake.wait(0.25 if self._retired else None)
            self._wake.clear()
            with self._lock:
                for version in [v for v in self._retired if not v.calls]:
                    self._retired.remove(version)
                    self._release(version)
                batch, self._unverified = self._unverified, []
                self._verifying = len(batch)
                done = self._closed and not self._retired
            for version in batch:  # outside the lock: reading /proc/self/maps costs ~0.3 ms
                self._verify(version)
            with self._lock:
                self._verifying = 0
            if done and not self._unverified:
                return

    def _verify(self, version: Version) -> None:
        image = version.image
        assert image is not None
        verdict = loader.verify_gone(image)
        version.unloaded_at = time.time()
        version.mapped_bytes = verdict.mapped_bytes
        if verdict.gone:
            version.state = UNLOADED
            log.info("unloaded %s v%d: image gone from the process", version.plugin_name, version.seq)
        else:
            version.state = LEAKED
            log.warning("%s v%d: still mapped after dlclose (%d bytes): %s", version.plugin_name,
                        version.seq, verdict.mapped_bytes, "; ".join(self._blockers(version)))

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until every retired version has been closed and checked;
        True when none is left draining."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not (self._retired or self._unverified or self._verifying):
                    return True
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.002)

    # -- queries ----------------------------------------------------------------
    def plugin(self, name: str) -> Plugin:
        with self._lock:
            return self._plugin(name)

    __getitem__ = plugin

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name`` this host has loaded, oldest first."""
        with self._lock:
            if name not in self._history:
                raise NotLoadedError(f"no plugin named {name!r} was loaded in this host")
            return [self._info(v) for v in self._history[name]]

    def leaks(self) -> list[VersionInfo]:
        """Every version whose image did not leave memory after its final dlclose."""
        with self._lock:
            return [self._info(v) for vs in self._history.values() for v in vs if v.state == LEAKED]

    def _info(self, v: Version) -> VersionInfo:
        img = v.image
        assert img is not None
        return VersionInfo(
            name=v.plugin_name, seq=v.seq, plugin_version=img.version, state=v.state,
            in_flight=len(v.calls), loaded_at=img.loaded_at, unloaded_at=v.unloaded_at,
            source=img.source, copy=str(img.copy), digest=img.digest, size=img.size,
            dlopen_count=img.opens, dlclose_count=img.closes, mapped_bytes=v.mapped_bytes,
            blockers=tuple(self._blockers(v)), note=v.note,
        )

    def _blockers(self, v: Version) -> list[str]:
        """Why this image did (leaked) or would (active) stay in memory."""
        img = v.image
        assert img is not None
        if v.state == UNLOADED:
            return []
        from . import inspector  # pyelftools: imported only when a report is asked for

        try:
            report = inspector.inspect_bytes(img.copy.read_bytes(), img.source, img.digest)
        except (HotloadError, OSError) as exc:
            return [f"cannot inspect {img.copy}: {exc}"]
        if v.state == LEAKED:
            return inspector.explain_leak(report, img.opens, img.closes)
        return [f.message for f in report.pins()]

    # -- helpers -------------------------------------------------------------
    def _plugin(self, name: str) -> Plugin:
        try:
            return self._plugins[name]
        except KeyError:
            known = ", ".join(sorted(self._plugins)) or "none"
            raise NotLoadedError(f"no plugin named {name!r} is loaded (loaded: {known})") from None

    def _new_version(self, image: loader.Image) -> Version:
        return Version(image.name, self._seq.get(image.name, 0) + 1, image, self._wake)

    def _live_handles(self) -> frozenset[int]:
        # A released image's handle is dead: glibc may hand its address to the
        # next image.  Only images still held, or leaked, are live.
        live = {v.image.handle for vs in self._history.values() for v in vs
                if v.image is not None and (v.image.closes < v.image.opens or v.state == LEAKED)}
        return frozenset(live | {img.handle for img in self._orphans})

    def _discard(self, image: loader.Image) -> None:
        """Close a version that never served (a refused load).  Its copy goes
        at once; an image that cannot leave memory is remembered so that no
        later dlopen can be mistaken for a new image."""
        try:
            if not loader.close_version(image).gone:
                self._orphans.append(image)
        except HotloadError as exc:
            log.error("%s", exc)
        image.copy.unlink(missing_ok=True)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this host is closed")

    def close(self, timeout: float = 5.0) -> None:
        """Unload everything, wait up to ``timeout`` for calls in flight,
        verify each unload, and delete the work directory."""
        with self._lock:
            if self._closed:
                return
            for name in list(self._plugins):
                self.unload(name)
            self._closed = True
        if not self.settle(timeout):
            busy = [f"{v.plugin_name} v{v.seq}" for v in self._retired]
            log.warning("closing with calls still running in %s: their images stay loaded", busy)
        self._wake.set()
        self._reaper.join(timeout=1.0)
        self._workdir.close()

    def __repr__(self) -> str:
        return f"<hotload.Host {len(self._plugins)} plugin(s) in {self.workdir}>"


def _check_compatible(old: loader.Image, new: loader.Image) -> None:
    """A reload must keep every function callers already use, with the same
    prototype, unless the host explicitly allows a change."""
    from . import signatures as sig

    for fname, proto in old.prototypes.items():
        if fname not in new.prototypes:
            raise SignatureError(f"{new.source}: the new build no longer exports {fname} ({proto}); "
                                 f"callers still use it. Pass allow_signature_change=True to accept")
        if sig.pointer_type(proto) is not sig.pointer_type(new.prototypes[fname]):
            raise SignatureError(
                f"{new.source}: {fname} changed from {proto!r} (v{old.version}) to "
                f"{new.prototypes[fname]!r} ({new.version}); callers were written for the old "
                f"prototype. Pass allow_signature_change=True to accept"
            )
