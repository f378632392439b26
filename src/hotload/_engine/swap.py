"""The swap: bring a new version of a plugin in, or leave the old one serving.

Every stage of a load or reload that can refuse a build happens here, in the
order that keeps the running version safe: checks against the other plugins
(events, types, services), preflight in a worker process, opening the build
(in this process or an isolated worker), the state handover, the switch.
``Host`` decides *what* to load; this module decides *how* it goes live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from .._artifact import signatures as sig
from .._artifact.descriptor import TypeDecl
from .._artifact.loader import Candidate, Image, Loader, Staged
from .._contract.events import EventTable
from .._contract.services import ServiceTable
from .._contract.structs import plain
from .._errors import HookTimeoutError, SignatureError, TypeLayoutError
from .._inspect import report as inspector
from .._process.isolation import Isolation
from .._process.preflight import PreflightWorker
from .lifecycle import Version
from .reaper import Reaper
from .record import PluginRecord
from .registry import Plugin
from .unload_policy import UnloadPolicy

log = logging.getLogger(__name__)


class Settings(Protocol):
    """The host's options a swap reads (``Host`` provides them)."""

    preflight: bool
    quiesce_timeout: float
    hook_timeout: float | None
    max_state_size: int


class Swapper:
    def __init__(
        self,
        *,
        loader: Loader,
        policy: UnloadPolicy,
        reaper: Reaper,
        preflight: PreflightWorker,
        provided: ServiceTable,
        events: EventTable,
        isolated: Callable[[], Isolation],
        plugins: Callable[[], dict[str, Plugin]],
        settings: Settings,
    ) -> None:
        self._loader = loader
        self._policy = policy
        self._reaper = reaper
        self._preflight = preflight
        self._provided = provided
        self._events = events
        self._isolated = isolated
        self._plugins = plugins
        self._settings = settings

    def first(
        self, rec: PluginRecord, cand: Candidate, preflight: bool | None
    ) -> tuple[Plugin, Version]:
        """Open a plugin's first version and make it serve."""
        staged = self._loader.stage(cand, rec.seq + 1)
        image = self._open(rec, staged, None, preflight)
        plugin = Plugin(cand.name, rec.infos)
        version = Version(cand.name, staged.seq, image, self._reaper.wake)
        try:
            commit = plugin.prepare(version)
        except BaseException:
            self._discard(rec, version)
            raise
        self._start(rec, version, None, None)
        commit()
        plugin.publish(version)
        self._inspect_later(image)
        return plugin, version

    def swap_in(
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
        new = Version(rec.name, staged.seq, image, self._reaper.wake)
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
            self._events.check(cand.name, cand.source, cand.prototypes, self._plugins())
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
        for pname, plugin in self._plugins().items():
            cur = plugin.current
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
            commit = plugin.prepare(new)  # may fail: before anything is switched
        except BaseException:
            self._discard(rec, new)
            raise
        stateful = old.image.on_unload is not None
        try:
            if stateful:
                plugin.hold()
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
                plugin.publish(old)
            raise
        commit()
        plugin.publish(new)
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
