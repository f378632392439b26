"""The swap: bring a new version of a plugin in, or leave the old one serving.

Every stage of a load or reload that can refuse a build happens here, in the
order that keeps the running version safe: checks against the other plugins
(events, types, services), preflight in a worker process, opening the build
(in this process or an isolated worker), the state handover, the switch.
``Host`` decides *what* to load; this module decides *how* it goes live.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .._artifact import loader as loader_mod
from .._artifact.loader import Candidate, Image, Loader, Staged
from .._artifact.reader import Reader
from .._contract.events import EventTable
from .._contract.services import ServiceTable
from .._errors import (
    AlreadyLoadedError,
    BusyError,
    ClosedError,
    DescriptorError,
    HookTimeoutError,
    HotloadError,
    NotLoadedError,
)
from .._inspect import report as inspector
from .._process.isolation import Isolation
from .._process.options import Isolated
from .._process.preflight import PreflightWorker
from .._state import handover
from . import canary as canary_rules
from . import compat, split
from .canary import Canary, check_share
from .journal import origin
from .judge import Judge
from .lifecycle import Version, VersionInfo
from .metrics import SwapCounts, counted
from .reaper import Reaper
from .record import PluginRecord
from .registry import Plugin
from .release import Releaser
from .settings import Settings
from .table import PluginTable
from .unload_policy import UnloadPolicy

log = logging.getLogger(__name__)

#: A judged canary's baseline times at least every 8th call (the host's rate is 1 in
#: 64): at a few hundred calls a second, 1 in 64 left the latency test without data.
JUDGED_BASELINE_SAMPLE = 8


# Not a refused build: a request about a name that is not (or already) loaded,
# or made after the host closed.  The journal records what a build did, not typos.
_NOT_A_REFUSAL = (NotLoadedError, AlreadyLoadedError, ClosedError, BusyError)


class _Attempt:
    """What a load, reload or rollback knew of its build when it was refused."""

    __slots__ = ("source", "cand")

    def __init__(self, source: str) -> None:
        self.source = source
        self.cand: Candidate | None = None


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
        self._journal = table.journal
        self._isolation: Isolation | None = None  # started by the first isolated load
        self.releases = Releaser(self)  # several plugins switched as one (release.py)
        self._isolation_lock = threading.Lock()

    # -- what the host asks for ----------------------------------------------------
    @counted("load")
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
        with rec.lock, self._attempt("load", rec, cand.name, cand.source) as attempt:
            attempt.cand = cand
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
            self._note("load", cand.name, None, version)
            self._table.changed(cand.name)
            return plugin

    @counted("reload")
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
        source = _source(rec, path)
        with rec.lock, self._attempt("reload", rec, name, source) as attempt:
            self._table.check_open()
            self._table.loaded(name)
            canary_rules.refuse_swap(rec, "reload")
            cand = self._candidate(rec, path, source, attempt)
            old = rec.current
            version = self._swap_in(rec, cand, allow_signature_change, preflight)
            self._events.changed()
            rec.went_live(version, cand.data, cand.source)
            rec.source = cand.source
            self._note("reload", name, old, version)
            self._table.changed(name)
            # the reaper inspects a new build; versions() measures its mapped bytes
            return rec.info(version, inspect=False, measure=False)

    @counted("rollback")
    def rollback(self, name: str, *, preflight: bool | None) -> VersionInfo:
        """The build live before the current one serves again, as a new version."""
        rec = self._table.loaded(name)
        with rec.lock, self._attempt("rollback", rec, name, rec.source) as attempt:
            self._table.check_open()
            self._table.loaded(name)
            canary_rules.refuse_swap(rec, "rollback")
            target = rec.rollback_target()
            attempt.source = target.source
            self._policy.check_budget(rec.history, name, target.source)
            cand = attempt.cand = loader_mod.candidate(
                target.data, target.source, name=name, declared=rec.declared
            )
            note = f"rollback to v{target.seq}"
            if target.first_seq != target.seq:
                note += f" (first loaded as v{target.first_seq})"
            old = rec.current
            version = self._swap_in(rec, cand, True, preflight, note=note)
            self._events.changed()
            rec.rolled_back(version)
            self._note("rollback", name, old, version, note)
            self._table.changed(name)
            return rec.info(version, inspect=False, measure=False)

    @counted("unload")
    def unload(self, name: str) -> None:
        """Stop serving ``name``; its versions close once their calls return.
        A release staged to switch it is cancelled first."""
        rec = self._table.loaded(name)
        if rec.staged is not None:
            rec.staged.cancel(f"{name} was unloaded")
        with rec.lock:
            self._table.loaded(name)
            if rec.canary is not None:
                self._end_canary(rec, rec.canary, False, "aborted: the plugin was unloaded")
            old = rec.current
            self._retire(rec)
            self._note("unload", name, old, None)
            self._table.changed(name)

    # -- canaries ---------------------------------------------------------------------
    @counted("canary")
    def canary(
        self,
        name: str,
        path: str | os.PathLike[str] | Candidate | None,
        *,
        share: float,
        key: int | Callable[..., Any],
        judge: Judge | None,
        preflight: bool | None,
    ) -> Canary:
        """Load a candidate beside the current version of ``name`` and send it
        ``share`` of the calls, sticky by key (``canary.py``)."""
        share = check_share(share)
        key_index, keyfn = canary_rules.parse_key(key)
        rec = self._table.loaded(name)
        source = _source(rec, path)
        with rec.lock, self._attempt("canary", rec, name, source) as attempt:
            self._table.check_open()
            self._table.loaded(name)
            plugin = rec.plugin
            assert plugin is not None
            canary_rules.check_start(rec, judge, counting=bool(self._settings.sample))
            cand = self._candidate(rec, path, source, attempt)
            old = rec.current
            assert old is not None
            canary_rules.check_candidate(old.image, cand, key_index)
            staged = self._loader.stage(cand, rec.seq + 1)
            image = self._open(rec, staged, None, preflight)
            new = Version(name, staged.seq, image, self._reaper.wake, self._settings.sample)
            new.note = f"canary beside v{old.seq}"
            try:
                commit = plugin._prepare(new)
            except BaseException:
                self._discard(rec, new)
                raise
            self._start(rec, new, old.image.version, None)
            commit()
            if judge is not None:  # both sides timed more often while judged (the latency test)
                new.gate.sample = 1
                old.gate.sample = min(self._settings.sample, JUDGED_BASELINE_SAMPLE)
            canary = Canary(
                name,
                old,
                new,
                share=share,
                key=key,
                judge=judge,
                end=self.end_canary,
                widen=self.widen_canary,
                key_errors=lambda: int(plugin._route.key_errors),
            )
            canary.build = (cand.data, cand.source)
            plugin._split(new, split.threshold(share), key_index or 0, keyfn)
            rec.add(new)
            rec.canary = canary
            self._inspect_later(image)
            how = f"key {key_index}" if keyfn is None else "a key function"
            self._note("canary", name, old, new, f"{share:.1%} of keys ({how})")
            log.info(
                "canary %s: v%d beside v%d, %.1f%% of keys", name, new.seq, old.seq, 100 * share
            )
            self._table.changed(name)
        canary.start_judging()
        return canary

    def end_canary(self, canary: Canary, promote: bool, verdict: str) -> bool:
        """Promote or abort ``canary``; False when it had already ended."""
        rec = self._table.get(canary.name)
        if rec is None:
            return False
        with rec.lock:
            if rec.canary is not canary or not canary.running:
                return False
            self._end_canary(rec, canary, promote, verdict)
            return True

    def widen_canary(self, canary: Canary, share: float) -> None:
        rec = self._table.get(canary.name)
        assert rec is not None
        with rec.lock:
            if rec.canary is not canary or not canary.running or rec.plugin is None:
                raise HotloadError(f"{canary.name}: the canary has ended ({canary.state})")
            if share < canary.share:
                raise HotloadError(
                    f"{canary.name}: a canary only widens ({canary.share:.1%} -> {share:.1%} "
                    "would move keys back to the baseline mid-session); abort it instead"
                )
            key_index, keyfn = canary_rules.parse_key(canary.key)
            rec.plugin._split(canary.candidate, split.threshold(share), key_index or 0, keyfn)
            old_share, canary.share = canary.share, share
            self._note(
                "widen",
                canary.name,
                canary.baseline,
                canary.candidate,
                f"{old_share:.1%} -> {share:.1%} of keys",
            )
            self._table.changed(canary.name)

    def _end_canary(self, rec: PluginRecord, canary: Canary, promote: bool, verdict: str) -> None:
        plugin = rec.plugin
        assert plugin is not None
        base, new = canary.baseline, canary.candidate
        canary.freeze()  # the window the verdict speaks of ends before the route changes
        if self._settings.sample:  # the host's rate again
            new.gate.sample = base.gate.sample = self._settings.sample
        new.note = f"canary beside v{base.seq}: {'promoted' if promote else 'aborted'}"
        if promote:
            plugin._promote()
            base.retire()
            self._reaper.retire(base, unload_safe=rec.unload_safe)
            data, source = canary.build
            rec.went_live(new, data, source)
            rec.source = source
            self._events.changed()
            self._note("promote", rec.name, base, new, verdict)
        else:
            plugin._unsplit()
            new.retire()
            self._reaper.retire(new, unload_safe=rec.unload_safe)
            self._note("abort", rec.name, base, new, verdict)
        rec.canary, rec.last_canary = None, canary
        canary.ended(promote, verdict)
        log.log(logging.INFO if promote else logging.WARNING, "canary %s: %s", rec.name, verdict)
        self._table.changed(rec.name)

    def close(self, timeout: float) -> None:
        """Retire every plugin (the host is closing), then stop the workers.
        A plugin stuck in a swap for longer than ``timeout`` is left as it is."""
        for staged in list(self.releases.staged):
            staged.cancel("the host closed")
        for rec in self._table.records():
            if not rec.lock.acquire(timeout=timeout):
                log.warning("close: %s is stuck in a swap; its images stay loaded", rec.name)
                continue
            try:
                if rec.canary is not None:
                    self._end_canary(rec, rec.canary, False, "aborted: the host closed")
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
                self._isolation = Isolation(
                    on_rollback=self._rollback_after_crash, journal=self._journal
                )
            return self._isolation

    def _rollback_after_crash(self, name: str, seq: int) -> None:
        """``on_crash="rollback"`` of version ``seq``: the previous build takes
        over (from the supervisor thread, never a caller's).  A canary's
        candidate that crashed only ends its canary; a baseline that crashed
        ends the canary, then rolls back; a version no longer serving (the
        job ran late) rolls nothing back."""
        rec = self._table.get(name)
        if self._table.closed or rec is None or rec.plugin is None:
            return
        with origin("supervisor"):
            canary = rec.canary
            if canary is not None and canary.candidate.seq == seq:
                canary.abort("aborted: the candidate crashed (on_crash='rollback')")
                return
            if canary is not None and canary.baseline.seq == seq:
                canary.abort("aborted: the baseline crashed (on_crash='rollback'): rolling back")
            current = rec.current
            if current is None or current.seq != seq:
                log.warning(
                    "%s v%d crashed, but v%s serves now: nothing rolled back",
                    name,
                    seq,
                    current.seq if current else "-",
                )
                return
            info = self.rollback(name, preflight=None)
        log.warning("%s crashed: rolled back, v%d serves now", name, info.seq)

    def _candidate(
        self, rec: PluginRecord, path: object, source: str, attempt: _Attempt
    ) -> Candidate:
        """The build a reload or a canary brings in: read (unless given), within
        the budget of kept images, declaring the plugin's own name."""
        self._policy.check_budget(rec.history, rec.name, source)
        if isinstance(path, Candidate):
            cand = attempt.cand = path
        else:
            cand = attempt.cand = self._reader.read(
                source, name=rec.name, signatures=rec.declared, known=rec.live()
            )
        if cand.name != rec.name:
            raise DescriptorError(
                f"{cand.source}: the file declares plugin {cand.name!r}, not {rec.name!r}"
            )
        return cand

    # -- the journal --------------------------------------------------------------------
    def read(
        self, path: str | os.PathLike[str] | Candidate, *, name: str | None, signatures: Any
    ) -> Candidate:
        """``Host.load``'s read of a file: a build refused here (its
        descriptor, the trust rules, the allow-list) is a refused load."""
        if isinstance(path, Candidate):
            return path
        with self._attempt("load", None, name or "", os.fspath(path)):
            return self._reader.read(path, name=name, signatures=signatures)

    @contextlib.contextmanager
    def _attempt(
        self, op: str, rec: PluginRecord | None, name: str, source: str
    ) -> Iterator[_Attempt]:
        """Record a refusal of what the ``with`` block tries (and re-raise it),
        with the version that keeps serving and the refused build's digest."""
        attempt = _Attempt(source)
        try:
            yield attempt
        except Exception as exc:
            if not isinstance(exc, _NOT_A_REFUSAL):
                cur = rec.current if rec is not None else None
                cand = attempt.cand
                self._journal.refused(
                    cand.name if cand is not None else name,
                    exc,
                    op=op,
                    source=cand.source if cand is not None else attempt.source,
                    from_seq=cur.seq if cur is not None else None,
                    from_digest=cur.image.digest if cur is not None else None,
                    to_digest=cand.digest if cand is not None else None,
                    version=cand.version if cand is not None else "",
                )
            raise

    def _note(
        self, kind: str, name: str, old: Version | None, new: Version | None, detail: str = ""
    ) -> None:
        """A change of what serves ``name``, in the journal (with what a typed state
        dropped and gained on the way)."""
        img = (new or old).image  # type: ignore[union-attr]
        if kind in ("reload", "rollback", "release") and new is not None:
            detail = "; ".join(x for x in (detail, handover.summary(new.image)) if x)
        self._journal.record(
            kind,
            name,
            from_seq=old.seq if old is not None else None,
            to_seq=new.seq if new is not None else None,
            from_digest=old.image.digest if old is not None else None,
            to_digest=new.image.digest if new is not None else None,
            version=img.version,
            source=img.source,
            detail=detail,
        )

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
            compat.check_compatible(old.image, cand)
        staged = self._loader.stage(cand, rec.seq + 1)
        image = self._open(rec, staged, old, preflight, down=note.startswith("rollback"))
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
        self,
        rec: PluginRecord,
        staged: Staged,
        old: Version | None,
        preflight: bool | None,
        *,
        down: bool = False,
    ) -> Image:
        """Preflight the staged copy (unless off), under the limits it will run
        with (an isolated plugin's), then open it: here, or in its worker; a
        typed state's migration is proven on copies before the build may serve
        (``down``: a rollback, where a narrowing is checked value by value)."""
        cand = staged.cand
        try:
            self._events.check(cand.name, cand.source, cand.prototypes, self._table.plugins())
            compat.check_types(cand, self._table.plugins())
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
        image: Image
        if rec.isolate is not None:
            image = self._isolated().open(
                staged, rec.isolate, self._settings.hook_timeout, services=self._provided
            )
        else:
            image = self._loader.open(
                staged,
                may_close=lambda c: self._policy.may_close_candidate(c, rec.unload_safe),
                services=self._provided,
            )
        if old is not None and handover.typed(old.image):
            try:
                image.state_plan = handover.prove(
                    old.image,
                    image,
                    down=down,
                    max_size=self._settings.max_state_size,
                    run=lambda fn: rec.hooks.run(fn, _hook_name(image, "HOTLOAD_MIGRATE")),
                )
            except HookTimeoutError:
                if image.process is not None:  # isolated: its worker is stopped, nothing stays
                    self._loader.discard(image, may_close=True)
                    raise
                self._loader.keep(image)  # a thread is still inside its migration function
                raise
            except BaseException:
                hazards = image.process is None and self._policy.hazards(image, rec.unload_safe)
                self._loader.discard(image, may_close=not hazards)
                raise
        return image

    def _inspect_later(self, image: Image) -> None:
        """The reaper inspects a build once it serves, not while the swap runs:
        an ELF parse holds the GIL whenever the swap waits in a system call."""
        if image.process is None:
            self._reaper.inspect_later(image)

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
        stateful = old.image.on_unload is not None or handover.typed(old.image)
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
            self._start(rec, new, old.image.version, state, old.image)
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
        self,
        rec: PluginRecord,
        version: Version,
        prev: str | None,
        state: bytes | None,
        old: Image | None = None,
    ) -> None:
        """Carry ``old``'s typed state over and run the new version's ``on_load``;
        a version that refuses is closed, one whose hook never returns is kept
        (its code is still running)."""
        image = version.image
        plan = image.state_plan if old is not None else None
        if image.on_load is None and image.process is None and plan is None:
            return  # nothing of the plugin runs here: no need for the hook runner's thread

        def start() -> None:
            if plan is not None and old is not None:
                handover.migrate(old, image, plan)
            image.call_on_load(prev, state)

        hook = "on_load"
        if plan is not None and old is not None:
            hook = "the state migration (HOTLOAD_MIGRATE) or on_load" if plan.calls else hook
        try:
            rec.hooks.run(start, _hook_name(image, hook))
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


def _source(rec: PluginRecord, path: str | os.PathLike[str] | Candidate | None) -> str:
    """Where a reload's or a canary's build comes from: the candidate's source,
    the path given, or the file the plugin was last loaded from."""
    if isinstance(path, Candidate):
        return path.source
    return rec.source if path is None else os.fspath(path)


def _imports(cand: Candidate) -> dict[str, str]:
    desc = cand.descriptor
    return {i.name: i.signature for i in desc.imports} if desc is not None else {}


def _hook_name(image: Image, hook: str) -> str:
    return f"{image.source}: {hook} of {image.name} {image.version}"
