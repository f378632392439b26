"""The swap: bring a new version of a plugin in, or leave the old one serving.

Every stage of a load or reload that can refuse a build happens here, in the
order that keeps the running version safe: checks against the other plugins
(events, types, services), preflight in a worker process, opening the build
(in this process or an isolated worker), the state handover, the switch.
``Host`` decides *what* to load; this module decides *how* it goes live.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._artifact import loader as loader_mod
from .._artifact import signatures as sig
from .._artifact.descriptor import TypeDecl
from .._artifact.loader import Candidate, Image, Loader, Staged
from .._artifact.reader import Reader
from .._contract.events import EventTable
from .._contract.services import ServiceTable
from .._contract.structs import plain
from .._errors import (
    AlreadyLoadedError,
    DescriptorError,
    HookTimeoutError,
    SignatureError,
    TypeLayoutError,
)
from .._inspect import report as inspector
from .._process.isolation import Isolation
from .._process.options import Isolated
from .._process.preflight import PreflightWorker
from .lifecycle import Version, VersionInfo
from .metrics import SwapCounts
from .reaper import Reaper
from .record import PluginRecord
from .registry import Plugin
from .settings import Settings
from .table import PluginTable
from .unload_policy import UnloadPolicy

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _counted(op: str) -> Callable[[_F], _F]:
    """Count the swap in ``Swapper.counts`` by its result ("ok" or "refused"),
    for a plugin this host knows (a name never loaded is not counted)."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def counted(self: Swapper, target: Any, *args: Any, **kwargs: Any) -> Any:
            name = target.name if isinstance(target, Candidate) else target
            try:
                result = method(self, target, *args, **kwargs)
            except BaseException:
                if self._table.get(name) is not None:
                    self.counts.count(name, op, False)
                raise
            self.counts.count(name, op, True)
            return result

        return counted  # type: ignore[return-value]

    return wrap


class Swapper:
    """Every change of what serves a plugin: load, reload, rollback, unload.

    It owns the records' bookkeeping (the history, the rollback chain, the
    source a reload reads), so a first load and a reload go live the same way.
    Each method runs under the plugin's own lock."""

    def __init__(
        self,
        *,
        table: PluginTable,
        settings: Settings,
        reader: Reader,
        loader: Loader,
        policy: UnloadPolicy,
        reaper: Reaper,
        preflight: PreflightWorker,
        provided: ServiceTable,
        events: EventTable,
    ) -> None:
        self._table = table
        self._settings = settings
        self._reader = reader
        self._loader = loader
        self._policy = policy
        self._reaper = reaper
        self._preflight = preflight
        self._provided = provided
        self._events = events
        self.counts = SwapCounts()  # swaps by plugin, operation and result (metrics)
        self._isolation: Isolation | None = None  # started by the first isolated load
        self._isolation_lock = threading.Lock()

    # -- what the host asks for ----------------------------------------------------
    @_counted("load")
    def load(
        self,
        cand: Candidate,
        *,
        declared: dict[str, str] | None,
        unload_safe: bool,
        isolate: Isolated | None,
        preflight: bool | None,
    ) -> Plugin:
        """Open a plugin's first version and make it serve."""
        rec = self._table.record(cand.name)
        with rec.lock:
            self._table.check_open()
            if rec.plugin is not None:
                raise AlreadyLoadedError(
                    f"{cand.source}: plugin {cand.name} is already loaded; "
                    f"use reload({cand.name!r})"
                )
            rec.declared, rec.unload_safe, rec.isolate = declared, unload_safe, isolate
            plugin, version = self._first(rec, cand, preflight)
            rec.plugin, rec.source = plugin, cand.source
            self._events.changed(loaded=cand.name)
            rec.add(version)
            rec.went_live(version, cand.data, cand.source)
            log.info(
                "loaded %s %s as v%d from %s", cand.name, cand.version, version.seq, cand.source
            )
            self._table.changed(cand.name)
            return plugin

    @_counted("reload")
    def reload(
        self,
        name: str,
        path: str | os.PathLike[str] | Candidate | None,
        *,
        allow_signature_change: bool,
        preflight: bool | None,
    ) -> VersionInfo:
        """A new version of ``name`` from ``path`` (None: the file it came from)."""
        rec = self._table.loaded(name)
        with rec.lock:
            self._table.check_open()
            self._table.loaded(name)
            if isinstance(path, Candidate):
                cand = path
                self._policy.check_budget(rec.history, name, cand.source)
            else:
                source = rec.source if path is None else os.fspath(path)
                self._policy.check_budget(rec.history, name, source)
                cand = self._reader.read(
                    source, name=name, signatures=rec.declared, known=rec.live()
                )
            if cand.name != name:
                raise DescriptorError(
                    f"{cand.source}: the file declares plugin {cand.name!r}, not {name!r}"
                )
            version = self._swap_in(rec, cand, allow_signature_change, preflight)
            self._events.changed()
            rec.went_live(version, cand.data, cand.source)
            rec.source = cand.source
            self._table.changed(name)
            # the reaper inspects a new build; versions() measures its mapped bytes
            return rec.info(version, inspect=False, measure=False)

    @_counted("rollback")
    def rollback(self, name: str, *, preflight: bool | None) -> VersionInfo:
        """The build live before the current one serves again, as a new version."""
        rec = self._table.loaded(name)
        with rec.lock:
            self._table.check_open()
            self._table.loaded(name)
            target = rec.rollback_target()
            self._policy.check_budget(rec.history, name, target.source)
            cand = loader_mod.candidate(
                target.data, target.source, name=name, declared=rec.declared
            )
            note = f"rollback to v{target.seq}"
            if target.first_seq != target.seq:
                note += f" (first loaded as v{target.first_seq})"
            version = self._swap_in(rec, cand, True, preflight, note=note)
            self._events.changed()
            rec.rolled_back(version)
            self._table.changed(name)
            return rec.info(version, inspect=False, measure=False)

    @_counted("unload")
    def unload(self, name: str) -> None:
        """Stop serving ``name``; its versions close once their calls return."""
        rec = self._table.loaded(name)
        with rec.lock:
            self._table.loaded(name)
            self._retire(rec)
            self._table.changed(name)

    def close(self, timeout: float) -> None:
        """Retire every plugin (the host is closing), then stop the workers.
        A plugin stuck in a swap for longer than ``timeout`` is left as it is."""
        for rec in self._table.records():
            if not rec.lock.acquire(timeout=timeout):
                log.warning("close: %s is stuck in a swap; its images stay loaded", rec.name)
                continue
            try:
                if rec.plugin is not None:
                    self._retire(rec)
            finally:
                rec.lock.release()
                rec.hooks.close()
        if not self._reaper.settle(timeout):
            busy = [f"{v.plugin_name} v{v.seq}" for v in self._reaper.draining()]
            log.warning("closing with calls still running in %s: their images stay loaded", busy)
        if self._isolation is not None:
            self._isolation.close()  # kills workers still busy (a hung call gets an error)
            self._reaper.settle(1.0)

    def _retire(self, rec: PluginRecord) -> None:
        """Close the plugin's route; its current version drains and is reaped."""
        plugin = rec.plugin
        assert plugin is not None
        current = plugin._close()
        rec.unloaded()
        self._events.changed(unloaded=rec.name)
        if current is not None:
            current.retire()  # a call racing the close re-checks this and backs out
            self._reaper.retire(current, unload_safe=rec.unload_safe)

    def _isolated(self) -> Isolation:
        with self._isolation_lock:
            if self._isolation is None:
                self._isolation = Isolation(on_rollback=self._rollback_after_crash)
            return self._isolation

    def _rollback_after_crash(self, name: str) -> None:
        """``on_crash="rollback"``: the previous build takes over (from the
        supervisor thread, never a caller's)."""
        rec = self._table.get(name)
        if not self._table.closed and rec is not None and rec.plugin is not None:
            info = self.rollback(name, preflight=None)
            log.warning("%s crashed: rolled back, v%d serves now", name, info.seq)

    # -- how a version goes live ------------------------------------------------------
    def _first(
        self, rec: PluginRecord, cand: Candidate, preflight: bool | None
    ) -> tuple[Plugin, Version]:
        staged = self._loader.stage(cand, rec.seq + 1)
        image = self._open(rec, staged, None, preflight)
        plugin = Plugin(cand.name, rec.infos)
        version = Version(cand.name, staged.seq, image, self._reaper.wake, self._settings.sample)
        try:
            commit = plugin._prepare(version)
        except BaseException:
            self._discard(rec, version)
            raise
        self._start(rec, version, None, None)
        commit()
        plugin._publish(version)
        self._inspect_later(image)
        return plugin, version

    def _swap_in(
        self,
        rec: PluginRecord,
        cand: Candidate,
        allow_signature_change: bool,
        preflight: bool | None,
        note: str = "",
    ) -> Version:
        old = rec.current
        assert old is not None
        if not allow_signature_change:
            _check_compatible(old.image, cand)
        staged = self._loader.stage(cand, rec.seq + 1)
        image = self._open(rec, staged, old, preflight)
        new = Version(rec.name, staged.seq, image, self._reaper.wake, self._settings.sample)
        new.note = note
        self._switch(rec, old, new)
        rec.add(new)
        self._inspect_later(image)
        log.info(
            "%s %s: v%d (%s) -> v%d (%s)",
            note or "reload",
            rec.name,
            old.seq,
            old.image.version,
            new.seq,
            image.version,
        )
        return new

    def _open(
        self, rec: PluginRecord, staged: Staged, old: Version | None, preflight: bool | None
    ) -> Image:
        """Preflight the staged copy (unless off), under the limits it will run
        with (an isolated plugin's), then open it: here, or in its worker."""
        cand = staged.cand
        try:
            self._events.check(cand.name, cand.source, cand.prototypes, self._table.plugins())
            self._check_types(cand)
            imports = _imports(cand)
            if imports:  # refused before preflight: a missing service names itself
                self._provided.check(imports, cand.source)
            if self._settings.preflight if preflight is None else preflight:
                state = self._take_state(rec, old) if old is not None else None
                result = self._preflight.check(
                    str(staged.copy),
                    cand.source,
                    name=cand.name,
                    declared=rec.declared,
                    prev_version=old.image.version if old is not None else None,
                    state=state,
                    unload_safe=rec.unload_safe
                    or bool(cand.descriptor and cand.descriptor.unload_safe),
                    max_state_size=self._settings.max_state_size,
                    services=self._standins(imports),
                    want_report=inspector.cached(cand.digest, cand.source) is None,
                    limits=rec.isolate.limits if rec.isolate is not None else None,
                    sandbox=rec.isolate is not None and rec.isolate.sandbox,
                    image=cand.data,
                )
                if result.get("report"):  # the worker inspected it: no ELF parse in this process
                    inspector.remember(inspector.Report.from_dict(result["report"]))
        except BaseException:
            staged.discard()
            raise
        if rec.isolate is not None:
            return self._isolated().open(
                staged, rec.isolate, self._settings.hook_timeout, services=self._provided
            )
        image = self._loader.open(
            staged,
            may_close=lambda c: self._policy.may_close_candidate(c, rec.unload_safe),
            services=self._provided,
        )
        return image

    def _inspect_later(self, image: Image) -> None:
        """The reaper inspects a build once it serves, not while the swap runs:
        an ELF parse holds the GIL whenever the swap waits in a system call."""
        if image.process is None:
            self._reaper.inspect_later(image)

    def _check_types(self, cand: Candidate) -> None:
        """Two plugins must not give one type name two layouts: a value made
        for one could be passed to the other."""
        if cand.types is None:
            return
        for pname, plugin in self._table.plugins().items():
            cur = plugin._version()
            theirs = cur.image.types if cur is not None and pname != cand.name else None
            for tname, cname in cand.types.names.items():
                other = theirs.names.get(tname) if theirs is not None else None
                if other is not None and other != cname:
                    raise TypeLayoutError(
                        f"{cand.source}: declares type {tname} "
                        f"({_layout(cand.types.decls[tname])}), but plugin {pname} declares it "
                        f"with another layout ({_layout(theirs.decls[tname])})"  # type: ignore[union-attr]
                    )

    def _standins(self, imports: dict[str, str]) -> dict[str, list[Any]] | None:
        """What the preflight worker needs to stand in for the services."""
        services = self._provided.services
        return {n: [services[n].prototype, services[n].error] for n in imports} or None

    def _take_state(self, rec: PluginRecord, old: Version) -> bytes | None:
        if old.image.on_unload is None:
            return None
        take = old.image.call_on_unload
        try:
            return rec.hooks.run(
                lambda: take(self._settings.max_state_size), _hook_name(old.image, "on_unload")
            )
        except HookTimeoutError as exc:
            if old.image.process is None:  # in-process: a thread is still inside the image
                old.stuck = f"its on_unload never returned ({exc})"
            raise

    def _switch(self, rec: PluginRecord, old: Version, new: Version) -> None:
        """Hand over state and make ``new`` current, or leave ``old`` serving.

        A stateful plugin (one with ``on_unload``) holds new calls at the gate
        while the old version goes quiet, so no update is lost between its
        snapshot and the new version's start; a stateless one switches at once."""
        plugin = rec.plugin
        assert plugin is not None
        try:
            commit = plugin._prepare(new)  # may fail: before anything is switched
        except BaseException:
            self._discard(rec, new)
            raise
        stateful = old.image.on_unload is not None
        try:
            if stateful:
                plugin._hold()
                old.retire()
                if old.calls and not old.drained.wait(self._settings.quiesce_timeout):
                    log.warning(
                        "%s v%d: %d call(s) still running after %.2fs; taking its state "
                        "now, their later effects stay in v%d",
                        rec.name,
                        old.seq,
                        len(old.calls),
                        self._settings.quiesce_timeout,
                        old.seq,
                    )
            try:
                state = self._take_state(rec, old)
            except BaseException:
                self._discard(rec, new)
                raise
            self._start(rec, new, old.image.version, state)
        except BaseException:
            if stateful:
                old.unretire()
                plugin._publish(old)
            raise
        commit()
        plugin._publish(new)
        if not stateful:
            old.retire()
        self._reaper.retire(old, unload_safe=rec.unload_safe)

    def _start(
        self, rec: PluginRecord, version: Version, prev: str | None, state: bytes | None
    ) -> None:
        """Run the new version's ``on_load``; a version that refuses is closed,
        one whose hook never returns is kept (its code is still running)."""
        image = version.image
        if image.on_load is None and image.process is None:
            return  # nothing of the plugin runs here: no need for the hook runner's thread
        try:
            rec.hooks.run(lambda: image.call_on_load(prev, state), _hook_name(image, "on_load"))
        except HookTimeoutError as exc:
            if image.process is not None:  # isolated: its worker is stopped, nothing stays
                self._discard(rec, version)
                raise
            version.retain(f"refused: {exc}")
            self._loader.keep(image)
            rec.add(version)
            raise
        except BaseException:
            self._discard(rec, version)
            raise

    def _discard(self, rec: PluginRecord, version: Version) -> None:
        """Close a version that never served, unless code its constructors
        started may still run (then it stays loaded)."""
        hazards = self._policy.hazards(version.image, rec.unload_safe)
        self._loader.discard(version.image, may_close=not hazards)


def _layout(decl: TypeDecl) -> str:
    fields = ", ".join(f"{f.name} {f.ctype} @{f.offset}" for f in decl.fields)
    return f"size {decl.size}, align {decl.align}" + (f": {fields}" if fields else "")


def _imports(cand: Candidate) -> dict[str, str]:
    desc = cand.descriptor
    return {i.name: i.signature for i in desc.imports} if desc is not None else {}


def _hook_name(image: Image, hook: str) -> str:
    return f"{image.source}: {hook} of {image.name} {image.version}"


_ACCEPT_CHANGE = (
    "To accept it: host.reload(..., allow_signature_change=True), "
    "host.watch(..., allow_signature_change=True) or "
    "`hotload reload {name} --allow-signature-change`"
)


def _check_compatible(old: Image, new: Candidate) -> None:
    """A reload must keep every function callers already use, with the same
    prototype, unless the host explicitly allows a change."""
    if new.prototypes == old.prototypes:  # the same text is the same cffi type: nothing changed
        return
    for fname, proto in old.prototypes.items():
        if fname not in new.prototypes:
            raise SignatureError(
                f"{new.source}: the new build no longer exports {fname} ({proto}); callers still "
                f"use it. {_ACCEPT_CHANGE.format(name=old.name)}"
            )
        if sig.pointer_type(proto) is not sig.pointer_type(new.prototypes[fname]):
            if plain(proto) == plain(new.prototypes[fname]):
                raise TypeLayoutError(
                    f"{new.source}: {fname} ({plain(proto)}) uses a type whose layout changed "
                    f"from version {old.version} to {new.version}; callers' values have the old "
                    f"layout. {_ACCEPT_CHANGE.format(name=old.name)}"
                )
            raise SignatureError(
                f"{new.source}: {fname} changed from {proto!r} (version {old.version}) to "
                f"{new.prototypes[fname]!r} (version {new.version}); callers were written for the "
                f"old prototype. {_ACCEPT_CHANGE.format(name=old.name)}"
            )
