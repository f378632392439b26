"""The host: the object a service creates to load, call, swap and unload
plugins.  It owns the work directory, the per-plugin version registry and a
reaper thread that closes retired versions once their last call returns."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import _inspector as inspector
from . import _loader as loader
from . import _signatures as sig
from . import _trust as trust
from ._descriptor import Descriptor
from ._errors import ClosedError, HotloadError, NotLoadedError, SignatureError
from ._preflight import PreflightWorker
from ._registry import (
    LEAKED,
    RETAINED,
    SWITCHING,
    UNLOADED,
    UNLOADED_PLUGIN,
    Plugin,
    Version,
    VersionInfo,
)
from ._workdir import WorkDir

if TYPE_CHECKING:
    from ._control import ControlServer
    from ._watcher import Watcher

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

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        quiesce_timeout: float = 0.5,
        preflight: bool = True,
        preflight_timeout: float = 5.0,
        max_leaked: int = 3,
        trust_checks: bool = True,
        allowed_digests: str | os.PathLike[str] | Iterable[str] | None = None,
        keep_versions: int = 8,
        history_limit: int = 64,
        control: bool = False,
    ) -> None:
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            raise HotloadError(
                "hotload needs the GIL: its lock-free call routing is not safe on a "
                "free-threaded CPython with the GIL disabled (run with PYTHON_GIL=1)"
            )
        self.quiesce_timeout = quiesce_timeout
        self.preflight = preflight
        self.max_leaked = max_leaked
        self.trust_checks = trust_checks
        self.keep_versions = keep_versions
        self.history_limit = history_limit
        self._allowed = (
            trust.load_allow_list(allowed_digests) if allowed_digests is not None else None
        )
        self._preflight = PreflightWorker(preflight_timeout)
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
        self._chain: dict[str, list[int]] = {}  # seqs that went live by load/reload, for rollback
        self._kept: dict[tuple[str, int], tuple[bytes, str]] = {}  # their bytes and source path
        self._pruned: dict[str, int] = {}  # unloaded versions dropped from the history
        self._unload_safe: dict[str, bool] = {}  # the host declared: close even with hazards
        self._to_inspect: list[loader.Image] = []
        self._warned: set[str] = set()
        self._wake = threading.Event()
        self._closed = False
        self._reaper = threading.Thread(target=self._reap_loop, name="hotload-reaper", daemon=True)
        self._reaper.start()
        self._services: list = []  # watchers and the control server; close() stops them
        if control:
            try:
                self.serve_control()
            except BaseException:
                self.close()
                raise

    # -- context manager ----------------------------------------------------
    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workdir(self) -> Path:
        return self._workdir.path

    # -- loading --------------------------------------------------------------
    def load(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        signatures: Mapping[str, str] | None = None,
        preflight: bool | None = None,
        unload_safe: bool = False,
    ) -> Plugin:
        """Load a plugin as its first version and return its call handle.

        ``unload_safe=True`` is the host's word for what a plugin says with
        ``HOTLOAD_UNLOAD_SAFE()``: nothing of it runs after it is closed, so
        its old versions are closed even where the inspector sees hazards.
        It is meant for libraries without a descriptor (a Rust ``cdylib``
        imports ``pthread_key_create`` through its runtime whether it uses
        thread keys or not).

        The name and C signatures come from the plugin's descriptor; a library
        without one needs ``name`` and ``signatures`` (which a descriptor, if
        present, must agree with)."""
        source = os.fspath(path)
        declared = dict(signatures) if signatures else None
        with self._lock:
            self._check_open()
            if name is not None and name in self._plugins:
                raise HotloadError(
                    f"{source}: plugin {name} is already loaded; use reload({name!r})"
                )
            cand = self._candidate(source, name, declared)
            if cand.name in self._plugins:
                cand.discard()
                raise HotloadError(
                    f"{source}: plugin {cand.name} is already loaded; use reload({cand.name!r})"
                )
            self._unload_safe[cand.name] = unload_safe
            try:
                image = self._open(cand, None, preflight, declared)
            except BaseException:
                del self._unload_safe[cand.name]
                raise
            plugin = Plugin(image.name, self.versions)
            version = self._new_version(image)
            try:
                commit = plugin._prepare(version)
                image.call_on_load(None, None)
            except BaseException:
                self._discard(image)
                del self._unload_safe[cand.name]
                raise
            commit()
            self._record(version, source, declared, cand.data, live_by="load")
            self._publish(plugin, version)
            self._plugins[image.name] = plugin
            log.info("loaded %s %s as v%d from %s", image.name, image.version, version.seq, source)
            return plugin

    def reload(
        self,
        name: str,
        path: str | os.PathLike[str] | None = None,
        *,
        allow_signature_change: bool = False,
        preflight: bool | None = None,
    ) -> VersionInfo:
        """Load the plugin's file again (or ``path``) as a new version and
        route new calls to it.  On any failure the current version keeps
        serving with its state, and the error says which file and why."""
        with self._lock:
            self._check_open()
            plugin = self._plugin(name)
            default_source, declared = self._sources[name]
            source = os.fspath(path) if path is not None else default_source
            self._check_leak_budget(name, source)
            cand = self._candidate(source, name, declared)
            return self._swap_in(
                plugin, cand, declared, allow_signature_change, preflight, "reload"
            )

    def rollback(self, name: str, *, preflight: bool | None = None) -> VersionInfo:
        """Make the version that was live before the current one live again,
        as a new seq (the history stays honest), with state handed across as
        in a reload."""
        with self._lock:
            self._check_open()
            plugin = self._plugin(name)
            chain = self._chain[name]
            cur = plugin._current
            assert isinstance(cur, Version)
            if len(chain) < 2:
                raise HotloadError(
                    f"{name}: nothing to roll back to: v{chain[-1]} is the first version "
                    f"this host loaded"
                )
            target = chain[-2]
            kept = self._kept.get((name, target))
            if kept is None:
                raise HotloadError(
                    f"{name}: cannot roll back to v{target}: its bytes are no longer kept "
                    f"(Host(keep_versions={self.keep_versions}))"
                )
            data, source = kept
            declared = self._sources[name][1]
            self._check_leak_budget(name, source)
            cand = loader.prepare(
                source, self._workdir, self._seq[name] + 1, name=name, declared=declared, data=data
            )
            info = self._swap_in(plugin, cand, declared, True, preflight, f"rollback to v{target}")
            self._kept.pop((name, chain.pop()), None)
            chain[-1] = info.seq
            self._kept[(name, info.seq)] = self._kept.pop((name, target))
            return info

    def _swap_in(
        self,
        plugin: Plugin,
        cand: loader.Candidate,
        declared: dict[str, str] | None,
        allow_signature_change: bool,
        preflight: bool | None,
        why: str,
    ) -> VersionInfo:
        old = plugin._current
        assert isinstance(old, Version) and old.image is not None
        if not allow_signature_change:
            try:
                _check_compatible(old.image, cand)
            except BaseException:
                cand.discard()
                raise
        image = self._open(cand, old, preflight, declared)
        version = self._new_version(image)
        self._switch(plugin, old, version)
        self._record(
            version,
            cand.source if why == "reload" else self._sources[plugin.name][0],
            declared,
            cand.data,
            live_by=why,
        )
        if why != "reload":
            version.note = why
        log.info(
            "%s %s: v%d (%s) -> v%d (%s)",
            why,
            plugin.name,
            old.seq,
            old.image.version,
            version.seq,
            image.version,
        )
        return self._info(
            version, inspect=False
        )  # a new build is inspected by the reaper, not here

    def _candidate(
        self, source: str, name: str | None, declared: dict[str, str] | None
    ) -> loader.Candidate:
        """Trust checks on the path, then read, check and copy the file."""
        real = trust.check_path(source) if self.trust_checks else None
        verify = (lambda st: trust.check_stat(st, source, real)) if real else None
        cand = loader.prepare(
            source,
            self._workdir,
            self._seq.get(name or "", 0) + 1,
            name=name,
            declared=declared,
            real=real,
            verify=verify,
        )
        if self._allowed is not None:
            try:
                trust.check_digest(source, cand.digest, *self._allowed)
            except BaseException:
                cand.discard()
                raise
        return cand

    def _open(
        self,
        cand: loader.Candidate,
        old: Version | None,
        preflight: bool | None,
        declared: dict[str, str] | None,
    ) -> loader.Image:
        """Preflight the candidate (unless off), then open it in this process."""
        try:
            if self.preflight if preflight is None else preflight:
                old_img = old.image if old is not None else None
                state = old_img.call_on_unload() if old_img is not None else None
                result = self._preflight.check(
                    str(cand.copy),
                    cand.source,
                    name=cand.name,
                    declared=declared,
                    prev_version=old_img.version if old_img else None,
                    state=state,
                    unload_safe=self._declared_safe(cand.descriptor, cand.name),
                )
                if result.get("report"):  # the worker inspected it: no ELF parse in this process
                    inspector.remember(inspector.Report.from_dict(result["report"]))
        except BaseException:
            cand.discard()
            raise
        image = loader.open_candidate(
            cand,
            self._workdir,
            self._live_handles,
            may_close=lambda c: (
                not self._hazards(c.descriptor, c.name, lambda: _inspect_quietly(c))
            ),
        )
        self._to_inspect.append(image)
        self._wake.set()
        return image

    def _record(
        self,
        version: Version,
        source: str,
        declared: dict[str, str] | None,
        data: bytes,
        live_by: str,
    ) -> None:
        name = version.plugin_name
        self._seq[name] = version.seq
        self._history.setdefault(name, []).append(version)
        self._sources[name] = (source, declared)
        if live_by in ("load", "reload"):
            chain = self._chain.setdefault(name, [])
            chain.append(version.seq)
            self._kept[(name, version.seq)] = (data, source)
            while len(chain) > self.keep_versions:
                self._kept.pop((name, chain.pop(0)), None)

    def _check_leak_budget(self, name: str, source: str) -> None:
        """Refuse another reload of a plugin whose images cannot leave memory
        once ``max_leaked`` of them are stuck: each costs memory (and, for
        static TLS, a slot that eventually makes every load fail)."""
        stuck = [v for v in self._history.get(name, []) if v.state in (LEAKED, RETAINED)]
        if len(stuck) >= self.max_leaked:
            why = (
                "; ".join(dict.fromkeys(b for v in stuck for b in self._blockers(v)))
                or "see hotload ls"
            )
            raise HotloadError(
                f"{source}: reload of {name} refused: {len(stuck)} of its images are still in "
                f"memory "
                f"(max_leaked={self.max_leaked}), {sum(v.mapped_bytes for v in stuck)} bytes: "
                f"{why}. "
                f"Fix the plugin, restart the process, or raise Host(max_leaked=...)"
            )

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
        try:
            commit = plugin._prepare(new)  # may fail: before anything is switched
        except BaseException:
            self._discard(new.image)
            raise
        if old.image.on_unload is None:
            try:
                new.image.call_on_load(old.image.version, None)
            except BaseException:
                self._discard(new.image)
                raise
            commit()
            self._publish(plugin, new)
            self._retire(old)
            return
        # Stateful: hold new calls at the gate, let the old version go quiet,
        # snapshot its state, start the new version with it.
        try:
            plugin._switched.clear()
            plugin._current = SWITCHING
            old.retire()
            if old.calls and not old.drained.wait(self.quiesce_timeout):
                log.warning(
                    "%s v%d: %d call(s) still running after %.2fs; taking its state now, "
                    "their later effects stay in v%d",
                    plugin.name,
                    old.seq,
                    len(old.calls),
                    self.quiesce_timeout,
                    old.seq,
                )
            state = old.image.call_on_unload()
            new.image.call_on_load(old.image.version, state)
        except BaseException:
            old.unretire()
            self._publish(plugin, old)
            self._discard(new.image)
            raise
        commit()
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
        assert version.image is not None
        if version.calls or inspector.cached(version.image.digest, version.image.source) is None:
            self._retired.append(version)  # busy, or never inspected: the reaper releases it
        else:
            self._release(version)
        self._wake.set()

    def _release(self, version: Version) -> None:
        assert version.image is not None
        hazards = self._unload_hazards(version.image)
        if hazards:
            version.state, version.note = RETAINED, "kept loaded: " + "; ".join(hazards)
            version.drop_functions()
            log.warning(
                "%s v%d is kept loaded, not closed: %s",
                version.plugin_name,
                version.seq,
                "; ".join(hazards),
            )
            return
        version.drop_functions()  # the image may be gone after this: never call into it again
        try:
            loader.release(version.image)
        except HotloadError as exc:
            log.error("%s", exc)
            version.state, version.note = LEAKED, str(exc)
            return
        self._unverified.append(version)

    def _prune(self, name: str) -> None:
        """Keep the history bounded: every version still in memory stays, but
        only the newest ``history_limit`` unloaded ones (each costs ~5 KB;
        a service reloading all day must not grow)."""
        hist = self._history.get(name, [])
        done = [v for v in hist if v.state == UNLOADED]
        excess = len(done) - self.history_limit
        if excess > 0:
            drop = {id(v) for v in done[:excess]}
            self._history[name] = [v for v in hist if id(v) not in drop]
            self._pruned[name] = self._pruned.get(name, 0) + excess

    def _unload_hazards(self, image: loader.Image) -> list[str]:
        """Reasons why closing this image could crash the process later."""
        return self._hazards(image.descriptor, image.name, lambda: self._report(image))

    def _hazards(
        self, desc: Descriptor | None, name: str, report: Callable[[], inspector.Report | None]
    ) -> list[str]:
        """Reasons why closing an image could crash the process later (its
        code may still run: threads, thread-key destructors, handlers), unless
        the plugin or the host declared it unload safe.  Soft purge, like
        Erlang: keep the code rather than pull it out from under a thread."""
        if self._declared_safe(desc, name):
            return []
        found = report()
        return [f.message for f in found.hazards()] if found is not None else []

    def _declared_safe(self, desc: Descriptor | None, name: str) -> bool:
        """HOTLOAD_UNLOAD_SAFE() in the plugin, or load(unload_safe=True) by the host."""
        return bool((desc is not None and desc.unload_safe) or self._unload_safe.get(name))

    def _report(self, image: loader.Image) -> inspector.Report | None:
        """The inspector's report on an image (cached by digest)."""
        hit = inspector.cached(image.digest, image.source)
        if hit is not None:
            return hit  # without reading the copy again
        try:
            return inspector.inspect_bytes(image.copy.read_bytes(), image.source, image.digest)
        except (HotloadError, OSError) as exc:
            log.debug("cannot inspect %s: %s", image.copy, exc)
            return None

    def _inspect_new(self, image: loader.Image) -> None:
        """Inspect a newly loaded image off the reload path (the reaper does
        it): warm the cache, and warn once per build about what will keep it
        in memory or make it unsafe to unload."""
        report = self._report(image)
        if report is None or image.digest in self._warned:
            return
        self._warned.add(image.digest)
        for f in report.findings:
            if f.pins or f.unsafe:
                log.warning(
                    "%s (%s %s): %s%s",
                    image.source,
                    image.name,
                    image.version,
                    f.message,
                    f" Fix: {f.fix}" if f.fix else "",
                )

    def _reap_loop(self) -> None:
        while True:
            self._wake.wait(0.25 if self._retired else None)
            self._wake.clear()
            with self._lock:
                ready = [v for v in self._retired if not v.calls]
                fresh, self._to_inspect = self._to_inspect, []
                self._verifying = len(ready) + len(fresh)  # settle() waits for this work too
            # Inspect outside the lock (~2 ms with pyelftools): the releases
            # below then find every report cached and never stall a reload.
            for image in fresh:
                self._inspect_new(image)
            for version in ready:
                assert version.image is not None
                self._report(version.image)
            with self._lock:
                for version in ready:
                    if version in self._retired and not version.calls:
                        self._retired.remove(version)
                        self._release(version)
                batch, self._unverified = self._unverified, []
                self._verifying = len(batch)
                done = self._closed and not self._retired
            for version in batch:  # outside the lock: reading /proc/self/maps costs ~0.3 ms
                self._verify(version)
            with self._lock:
                self._verifying = 0
                for name in {v.plugin_name for v in batch}:
                    self._prune(name)
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
            log.info(
                "unloaded %s v%d: image gone from the process", version.plugin_name, version.seq
            )
        else:
            version.state = LEAKED
            log.warning(
                "%s v%d: still mapped after dlclose (%d bytes): %s",
                version.plugin_name,
                version.seq,
                verdict.mapped_bytes,
                "; ".join(self._blockers(version)),
            )

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until every retired version has been closed and checked;
        True when none is left draining."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not (self._retired or self._unverified or self._verifying or self._to_inspect):
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
        """The versions of ``name`` this host has loaded, oldest first: every
        one still in memory, and the newest ``history_limit`` unloaded ones
        (``pruned(name)`` counts the older unloaded ones left out)."""
        with self._lock:
            if name not in self._history:
                raise NotLoadedError(f"no plugin named {name!r} was loaded in this host")
            return [self._info(v) for v in self._history[name]]

    def pruned(self, name: str) -> int:
        """How many old, unloaded versions of ``name`` the history dropped."""
        return self._pruned.get(name, 0)

    def leaks(self) -> list[VersionInfo]:
        """Every version whose image is still in memory although it was
        retired: ``leaked`` (still mapped after its final dlclose) and
        ``retained`` (deliberately never closed: unloading it was unsafe)."""
        with self._lock:
            return [
                self._info(v)
                for vs in self._history.values()
                for v in vs
                if v.state in (LEAKED, RETAINED)
            ]

    def leaked_bytes(self) -> int:
        """Total bytes of plugin images stuck in memory (leaked or retained)."""
        return sum(v.mapped_bytes for v in self.leaks())

    def _info(self, v: Version, *, inspect: bool = True) -> VersionInfo:
        img = v.image
        assert img is not None
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
            mapped_bytes=v.mapped_bytes,
            blockers=tuple(self._blockers(v, inspect=inspect)),
            note=v.note,
        )

    def _blockers(self, v: Version, *, inspect: bool = True) -> list[str]:
        """Why this image did (leaked, retained) or would (active) stay in
        memory.  ``inspect=False``: only what is known already (a build not
        inspected yet gets none; the reaper inspects it and warns)."""
        img = v.image
        assert img is not None
        if v.state == UNLOADED:
            return []
        report = self._report(img) if inspect else inspector.cached(img.digest, img.source)
        if report is None:
            return [f"cannot inspect {img.copy}"] if inspect else []
        if v.state == LEAKED:
            return inspector.explain_leak(report, img.opens, img.closes)
        if v.state == RETAINED:
            return [
                f"kept loaded because unloading could crash the process: {f.message}"
                for f in report.hazards()
            ] + [f.message for f in report.pins()]
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
        live = {
            v.image.handle
            for vs in self._history.values()
            for v in vs
            if v.image is not None and (v.image.closes < v.image.opens or v.state == LEAKED)
        }
        return frozenset(live | {img.handle for img in self._orphans})

    def _discard(self, image: loader.Image) -> None:
        """Close a version that never served (a refused load).  Its copy goes
        at once; an image that cannot leave memory is remembered so that no
        later dlopen can be mistaken for a new image."""
        hazards = self._unload_hazards(image)
        if hazards:  # its on_load may have started a thread: closing could crash the process
            log.warning(
                "%s: refused version kept loaded, not closed: %s", image.source, "; ".join(hazards)
            )
            self._orphans.append(image)
            image.copy.unlink(missing_ok=True)  # the mapping survives the name
            return
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
        self._stop_services()
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
        self._preflight.close()
        self._workdir.close()

    # -- operating a running host (the logic lives in watcher.py and control.py) --
    def watch(
        self, path: str | os.PathLike[str], *, rebuild: bool = False, **options: object
    ) -> Watcher:
        """Watch built plugins in ``path`` (a directory or one file) and
        reload each one that changes; load new ones.  ``rebuild=True``
        watches C sources instead and rebuilds before reloading.  Options go
        to ``watcher.Watcher``.  Stopped by ``close()``."""
        from ._watcher import Watcher

        self._check_open()
        watcher = Watcher(self, path, rebuild=rebuild, **options)  # type: ignore[arg-type]
        self._services.append(watcher)
        return watcher.start()

    def serve_control(
        self, *, directory: str | os.PathLike[str] | None = None, name: str | None = None
    ) -> ControlServer:
        """Open this host's control socket so ``hotload ls/reload/...`` in
        another process can reach it (see ``control`` for the protocol).
        Idempotent; stopped by ``close()``."""
        from ._control import ControlServer

        self._check_open()
        for service in self._services:
            if isinstance(service, ControlServer):
                return service
        server = ControlServer(self, directory=directory, name=name)
        try:
            server.start()
        except BaseException:
            server.stop()  # closes what the constructor opened
            raise
        self._services.append(server)
        return server

    def _stop_services(self) -> None:
        while self._services:
            service = self._services.pop()
            try:
                service.stop()
            except Exception:  # closing must go on
                log.exception("stopping %r failed", service)

    def __repr__(self) -> str:
        return f"<hotload.Host {len(self._plugins)} plugin(s) in {self.workdir}>"


def _inspect_quietly(cand: loader.Candidate) -> inspector.Report | None:
    try:
        return inspector.inspect_bytes(cand.data, cand.source, cand.digest)
    except HotloadError:
        return None


def _check_compatible(old: loader.Image, new: loader.Candidate) -> None:
    """A reload must keep every function callers already use, with the same
    prototype, unless the host explicitly allows a change."""
    for fname, proto in old.prototypes.items():
        if fname not in new.prototypes:
            raise SignatureError(
                f"{new.source}: the new build no longer exports {fname} ({proto}); "
                f"callers still use it. Pass allow_signature_change=True to accept"
            )
        if sig.pointer_type(proto) is not sig.pointer_type(new.prototypes[fname]):
            raise SignatureError(
                f"{new.source}: {fname} changed from {proto!r} (v{old.version}) to "
                f"{new.prototypes[fname]!r} ({new.version}); callers were written for the old "
                f"prototype. Pass allow_signature_change=True to accept"
            )
