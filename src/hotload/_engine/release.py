"""A release: several plugins switched as one (``Host.reload_together``).

The winter event is a reward rule, a drop table and a login handler that
expect each other: a player must never meet the new rule with the old table.
A release reads, checks, preflights and opens every build and prepares every
route first; if any step fails, nothing has changed and the ``ReleaseError``
names the plugin and its cause.  Then the switch:

1. the new versions of plugins without state hand-over run ``on_load``
   (a refusal here still changes nothing);
2. every route involved is *held* (``Plugin._hold``: new calls wait at the
   gate, as in a stateful reload's short switch), the stateful ones' old
   versions drain, hand their state over, and their new versions start;
3. every route is published to its new version, one after another, while
   each is still held.

Why no thread can call a new version of one plugin and then an old version of
another: from step 2 on, no route leads to an old version (a call arriving
waits at the gate); in step 3 a route leads either to its new version or to
the gate, and a caller at the gate is released only onto the new version.  So
once any new version can be called, every other plugin of the release is new
or not callable yet.  Calls already inside an old version finish there, as in a
reload.  The price is that callers of these plugins wait while step 2 runs:
the state hand-over of the stateful ones, each bounded by ``quiesce_timeout``
and ``hook_timeout``.  Both routers share this argument: it uses the gate, not
the router.

``rollback`` of a release is a release of each plugin's previous build, with
the same guarantee; a plugin the release loaded first is unloaded in the same
switch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._artifact import loader as loader_mod
from .._artifact.loader import Candidate
from .._errors import BusyError, DescriptorError, HotloadError, ReleaseError, SignatureError
from .._state import handover
from . import compat
from .canary import refuse_swap
from .lifecycle import UNLOADED_PLUGIN, Version, VersionInfo
from .record import PluginRecord
from .registry import Plugin
from .release_clock import (
    EARLY,
    PREPARE,
    URGENT,
    exact_timers,
    gil,
    no_gc,
    priority,
    realtime,
    sleep_until,
)

log = logging.getLogger(__name__)

LATE = 0.1  # seconds after its time a timer that wakes re-checks before it switches
PAUSED = 0.25  # seconds a timer's wait overran: it was paused (SIGSTOP, a suspended VM)

Source = str | os.PathLike[str] | Candidate | None


def _went_back(rec: PluginRecord, source: Source) -> bool:
    """Whether ``source`` is a build the plugin ran before its current one
    (kept in its rollback chain): going back to it is a downgrade."""
    digest = getattr(source, "digest", None)
    return digest is not None and any(b.digest == digest for b in rec.chain[:-1])


@dataclass
class _Part:
    """One plugin of a release, as it is prepared."""

    name: str
    rec: PluginRecord
    old: Version | None  # None: the release loads it first
    unload: bool = False  # a rollback's: the release had loaded it first
    cand: Candidate | None = None
    plugin: Plugin | None = None
    new: Version | None = None
    commit: Callable[[], None] | None = None
    started: bool = False
    discarded: bool = False
    source: str = ""  # the build asked for (a refusal names it)
    down: bool = False  # a rollback's part: a narrowing of its typed state is checked, not refused

    @property
    def stateful(self) -> bool:
        return self.old is not None and (
            self.old.image.on_unload is not None or handover.typed(self.old.image)
        )


@dataclass(eq=False)
class Release:
    """What ``Host.reload_together`` did: its ``id`` (the journal says ``release N``),
    each plugin's new version, and the version each replaced (None: loaded by
    this release).

    A release given ``at=`` is ``staged`` until then (every build read,
    checked, preflighted, opened): ``cancel()`` leaves the host as it was,
    ``wait()`` waits for the switch; ``state`` becomes ``done`` (``skew_ms``:
    how late the flip ended after ``at``), ``cancelled`` or ``failed``
    (``reason`` says why)."""

    id: int
    versions: dict[str, VersionInfo] = field(default_factory=dict)
    replaced: dict[str, int | None] = field(default_factory=dict)
    unloaded: tuple[str, ...] = ()  # a rollback's: plugins the release had loaded first
    state: str = "done"  # "staged", "done", "cancelled", "failed"
    at: float | None = None  # the switch time asked for (Unix seconds), if any
    skew_ms: float | None = None  # how late the switch ended after ``at``
    switched_ns: int | None = None  # when the flip ended (time.time_ns()), if it did
    reason: str = ""  # why it was cancelled or failed
    names: tuple[str, ...] = ()
    # asked before a *late* switch (the timer woke more than LATE after the time, or
    # was paused on the way): a reason to cancel instead, or None to switch
    recheck: Callable[[], str | None] | None = field(default=None, repr=False)
    late: bool = False  # its timer found it late (or paused) and asked ``recheck``
    _parts: list[_Part] = field(default_factory=list, repr=False)
    _label: str = ""
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _releaser: Any = field(default=None, repr=False)

    def cancel(self, reason: str = "cancelled by hand") -> bool:
        """Drop a staged release: nothing changes.  False once it switched."""
        return bool(self._releaser.cancel(self, reason)) if self._releaser else False

    def rollback(self, *, preflight: bool | None = None) -> Release:
        """Undo this release as one switch (``Host.rollback_together``), if it
        switched and is still the host's last release."""
        rel = self._releaser
        if rel is None or self.state != "done" or not rel.history or rel.history[-1] is not self:
            raise HotloadError(
                f"release {self.id} ({self.state}) is not this host's last switched release: "
                f"not rolled back (roll the later ones back first)"
            )
        return rel.rollback(preflight=preflight)  # type: ignore[no-any-return]

    def versions_pairs(self) -> list[tuple[str, Any, Any]]:
        """(plugin, the version it replaced, its new version) for each plugin
        the release switched from a version to another (a canary's judge
        compares them)."""
        return [
            (p.name, p.old, p.new)
            for p in self._parts
            if p.old is not None and p.new is not None and not p.unload
        ]

    def wait(self, timeout: float | None = None) -> str:
        """Wait until a staged release switched (or was cancelled); its state."""
        self._done.wait(timeout)
        return self.state

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "at": self.at,
            "skew_ms": self.skew_ms,
            "switched_ns": self.switched_ns,
            "reason": self.reason,
            "names": list(self.names),
            "versions": {n: v.as_dict() for n, v in self.versions.items()},
            "replaced": self.replaced,
            "unloaded": list(self.unloaded),
        }


class Releaser:
    """The release operations of one host's ``Swapper`` (which owns the records)."""

    def __init__(self, swapper: Any) -> None:  # the Swapper (which imports this module)
        self._swap = swapper
        self.history: list[Release] = []  # newest last; a rollback pops
        self.staged: list[Release] = []  # waiting for their time (at=)
        self._ids = itertools.count(1)
        self._rolling = threading.Lock()

    def release(
        self,
        builds: Mapping[str, Source],
        *,
        preflight: bool | None,
        allow_signature_change: bool,
        note: str = "",
        unload: tuple[str, ...] = (),
        at: float | None = None,
        expect: Mapping[str, int] | None = None,
        recheck: Callable[[], str | None] | None = None,
    ) -> Release:
        if not builds and not unload:
            raise ValueError("a release names at least one plugin")
        for name in builds:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"release: {name!r} is not a plugin name")
        sw = self._swap
        names = sorted({*builds, *unload})
        recs = {n: sw._table.record(n) for n in names}
        with contextlib.ExitStack() as locks:
            for n in names:  # one order for every release: two cannot deadlock
                locks.enter_context(recs[n].lock)
            sw._table.check_open()
            for n, seq in (expect or {}).items():  # a rollback's: nothing moved meanwhile
                cur = recs[n].current
                if cur is None or cur.seq != seq:
                    raise ReleaseError(
                        f"release refused (nothing changed): {n}: changed since "
                        f"(v{cur.seq if cur else '-'} serves, not v{seq})",
                        plugin=n,
                        cause=HotloadError("changed since"),
                    )
            parts = [self._part(n, recs[n], n in unload) for n in names]
            p = parts[0]
            try:
                for p in parts:
                    if not p.unload:
                        # a release's rollback, or a release back to a build this plugin ran
                        # before (the fleet's way back): its state migrates down
                        p.down = bool(note) or _went_back(p.rec, builds[p.name])
                        self._prepare(p, builds[p.name], preflight, allow_signature_change)
                for p in parts:
                    if not p.unload and not p.stateful:
                        self._start(p, None)
            except Exception as exc:
                self._undo(parts)
                raise self._refused(p, exc) from exc
            except BaseException:
                self._undo(parts)
                raise
            rid = next(self._ids)  # a refused release takes no number
            label = note or f"release {rid}: " + ", ".join(names)
            for p in parts:
                if p.new is not None:
                    p.new.note = label
            if at is not None:
                staged = Release(rid, at=at, state="staged", names=tuple(names))
                staged.recheck = recheck  # before its timer starts: a late one asks it
                return self._stage(staged, parts, label)
            self._switch(parts)
            result = self._finish(rid, parts, label, rollback=bool(note))
        self.history.append(result)
        return result

    # -- at a given time ------------------------------------------------------------
    def _stage(self, r: Release, parts: list[_Part], label: str) -> Release:
        """Keep a prepared release until its time (its plugins' locks held by the caller)."""
        r._parts, r._label, r._releaser = parts, label, self
        for p in parts:
            p.rec.staged = r
        self.staged.append(r)
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r.at))
        for p in parts:
            self._swap._note("staged", p.name, p.old, p.new, f"{label}; switches at {when}")
        threading.Thread(
            target=self._timer, args=(r,), name=f"hotload-release-{r.id}", daemon=True
        ).start()
        return r

    def _timer(self, r: Release) -> None:
        """Sleep until ``r.at`` by the wall clock, read again at least every half
        second (a stepped clock moves the switch with it).  ``PREPARE``
        before it the GIL's switch interval is shortened (so that waking
        needs no wait for the GIL: with threads busy calling plugins, waking
        on time and then waiting 5 ms a turn for the GIL made the switch
        land ~10 ms late); ``EARLY`` before it the thread takes the GIL and
        keeps it (a long switch interval) while it sleeps in the kernel to
        the instant (``sleep_until``) and switches.  The threads wait
        meanwhile, as they would at the held routes anyway."""
        assert r.at is not None
        exact_timers()  # this thread is the release's own, and ends with it
        # staged at the last moment (a slow fetch or preflight): its stager had no time to
        # read its decision again (a cancel meanwhile), so the timer asks, as a late one does
        paused = r.recheck is not None and r.at - time.time() < LATE + PREPARE
        while not r._done.is_set():
            left = r.at - time.time()
            if left <= PREPARE:
                break
            step = min(left - PREPARE, 0.5)
            t0 = time.monotonic()
            r._done.wait(step)
            paused = paused or time.monotonic() - t0 > step + PAUSED
        if (paused or time.time() > r.at + LATE) and not self._rechecked(r):
            return
        with no_gc(), gil("short"), priority(URGENT) as unurgent:
            left = r.at - EARLY - time.time()
            if left > 0 and r.state == "staged":
                r._done.wait(left)
            with gil("kept"):
                self._switch_at(r, unurgent)

    def _rechecked(self, r: Release) -> bool:
        """A timer that woke late, or was paused on the way (a stopped process,
        a suspended VM), may have slept through a cancel: ask ``r.recheck``
        (the fleet re-reads the plan); so does one staged less than ``LATE +
        PREPARE`` before its time.  False: cancelled instead."""
        if r.recheck is None or r.state != "staged":
            return True
        r.late = True
        try:
            why = r.recheck()
        except Exception as exc:  # the check's own failure: switch, as a timer on time does
            log.warning("%s: late, and its re-check failed (%s): switching", r._label, exc)
            return True
        if why is None:
            return True
        log.warning("%s: its timer woke late; re-checked: %s: not switched", r._label, why)
        self.cancel(r, why)
        return False

    def _switch_at(self, r: Release, flipped: Callable[[], None] = lambda: None) -> None:
        """Switch ``r`` at its time.  Before the last sleep (the GIL kept from
        then on): its plugins' locks taken and the switch readied (``_ready``:
        the routes held, state handed over, call tables committed), so that
        after the instant only the flip is left, a few pointer stores, then
        the instant is read (``switched_ns``) and this thread's priority goes
        back (``flipped``) before anything else: the callers let go, the
        journal, the events, the agent's report."""
        with contextlib.ExitStack() as locks:
            for p in r._parts:  # sorted by name when staged: the same order as every release
                locks.enter_context(p.rec.lock)
            if r.state != "staged":
                return
            try:
                if self._swap._table.closed:
                    raise HotloadError("the host closed")
                flip, wake = self._ready(r._parts)
            except Exception as exc:
                self._unstage(r)
                r.state, r.reason = "failed", f"{type(exc).__name__}: {exc}"
                log.error("%s: not switched: %s", r._label, r.reason)
                r._done.set()
                return
            with realtime() as unrealtime:
                on_time = sleep_until(r.at or 0.0, keep_gil=True)
                flip()
                r.switched_ns = time.time_ns()  # the flip's instant: fleets compare hosts by it
                unrealtime()
            flipped()
            if not on_time:  # the routes are held: callers would wait at them until the time
                log.warning(
                    "%s: the clock was stepped back %.3f s in the last %g ms before the time; "
                    "switched now rather than hold its plugins' callers until then",
                    *(r._label, (r.at or 0.0) - r.switched_ns / 1e9, EARLY * 1e3),
                )
            wake()
            self._unstage(r)
            done = self._finish(r.id, r._parts, r._label, rollback=False)
        r.skew_ms = (r.switched_ns - int((r.at or 0) * 1e9)) / 1e6
        r.versions, r.replaced, r.state = done.versions, done.replaced, "done"
        self.history.append(r)
        r._done.set()

    def _unstage(self, r: Release) -> None:
        for p in r._parts:
            p.rec.staged = None
        self.staged.remove(r)

    def cancel(self, r: Release, reason: str) -> bool:
        with contextlib.ExitStack() as locks:
            for p in r._parts:
                locks.enter_context(p.rec.lock)
            if r.state != "staged":
                return False
            for p in r._parts:
                p.rec.staged = None
            self.staged.remove(r)
            self._undo(r._parts)
            r.state, r.reason = "cancelled", reason
            for p in r._parts:
                self._swap._note("cancel", p.name, p.old, p.new, f"{r._label}; {reason}")
        r._done.set()
        return True

    def rollback(self, *, preflight: bool | None) -> Release:
        """The last release undone as one switch: each plugin back on the build
        it replaced; one the release loaded first is unloaded.  Refused when
        one of its plugins serves another build since (a reload, a canary):
        the builds the release replaced never ran beside that one.  One
        rollback at a time: two at once would both undo the same release."""
        with self._rolling:
            if not self.history:
                raise HotloadError("no release to roll back")
            last = self.history[-1]
            builds: dict[str, Source] = {}
            expect: dict[str, int] = {}
            for name, seq in last.replaced.items():
                rec = self._swap._table.get(name)
                made, cur = last.versions.get(name), rec.current if rec is not None else None
                if rec is None or made is None or cur is None or cur.image.digest != made.digest:
                    now = f"v{cur.seq} serves" if cur is not None else "it is not loaded"
                    raise HotloadError(
                        f"release {last.id}: {name} changed since ({now}, another build than "
                        f"the release's v{made.seq if made else '-'}): roll it back alone, or "
                        "release the builds you want together"
                    )
                expect[name] = cur.seq
                if seq is None:
                    continue
                build = rec.chain[-2] if len(rec.chain) >= 2 else None
                if build is None or build.seq != seq:
                    raise HotloadError(
                        f"release {last.id}: {name}: the build of v{seq} is not kept"
                    )
                builds[name] = loader_mod.candidate(
                    build.data, build.source, name=name, declared=rec.declared
                )
            unload = tuple(n for n, seq in last.replaced.items() if seq is None)
            done = self.release(
                builds,
                preflight=preflight,
                allow_signature_change=True,
                note=f"rollback of release {last.id}",
                unload=unload,
                expect=expect,
            )
            self.history.remove(done)
            self.history.remove(last)
            return done

    # -- the steps ------------------------------------------------------------------
    def _part(self, name: str, rec: PluginRecord, unload: bool) -> _Part:
        try:
            refuse_swap(rec, "release")
        except BusyError as exc:
            raise ReleaseError(
                f"release refused (nothing changed): {exc}", plugin=name, cause=exc
            ) from None
        old = rec.current
        if old is None and rec.plugin is not None:
            raise ReleaseError(
                f"release refused (nothing changed): {name}: it is mid-switch",
                plugin=name,
                cause=HotloadError("mid-switch"),
            )
        return _Part(name, rec, old, unload=unload)

    def _prepare(self, p: _Part, source: Source, preflight: bool | None, allow: bool) -> None:
        sw, rec = self._swap, p.rec
        if isinstance(source, Candidate):
            p.source = source.source
        elif source is not None:
            p.source = os.fspath(source)
        if isinstance(source, Candidate):
            cand = source
        else:
            if source is None and not rec.source:
                raise HotloadError(f"{p.name} is not loaded: give its build")
            path = rec.source if source is None else os.fspath(source)
            if p.old is not None:
                sw._policy.check_budget(rec.history, p.name, path)
            cand = sw._reader.read(path, name=p.name, signatures=rec.declared, known=rec.live())
        if cand.name != p.name:
            raise DescriptorError(
                f"{cand.source}: the file declares plugin {cand.name!r}, not {p.name!r}"
            )
        if p.old is not None and not allow:
            compat.check_compatible(p.old.image, cand)
        p.cand = cand
        staged = sw._loader.stage(cand, rec.seq + 1)
        image = sw._open(rec, staged, p.old, preflight, down=p.down)
        p.plugin = rec.plugin or Plugin(p.name, rec.infos)
        p.new = Version(p.name, staged.seq, image, sw._reaper.wake, sw._settings.sample)
        p.commit = p.plugin._prepare(p.new)

    def _start(self, p: _Part, state: bytes | None) -> None:
        assert p.new is not None
        prev = p.old.image.version if p.old is not None else None
        try:
            self._swap._start(p.rec, p.new, prev, state, p.old.image if p.old else None)
        except BaseException:
            p.discarded = True  # the swap's _start closed (or kept) it already
            raise
        p.started = True

    def _undo(self, parts: list[_Part]) -> None:
        """Close what a refused release opened; what served serves on."""
        for p in parts:
            if p.new is not None and not p.discarded:
                p.discarded = True
                with contextlib.suppress(Exception):
                    self._swap._discard(p.rec, p.new)

    def _switch(self, parts: list[_Part]) -> None:
        """Hold every route, hand the stateful ones' state over, then publish
        every new version (see the module's docstring for why this order)."""
        flip, wake = self._ready(parts)
        flip()
        wake()

    def _ready(self, parts: list[_Part]) -> tuple[Callable[[], None], Callable[[], None]]:
        """Everything of the switch but the flip: every route held, the
        stateful ones' state handed over, the new versions' call tables
        committed.  Returns the flip (each route's gate stored: a few pointer
        stores, which cannot fail) and what comes after it (the callers that
        met a held route let go).  A timer readies its release before its
        instant and flips at it, holding the GIL in between: no Python thread
        can run between the two, so the hold is seen only by a caller already
        at a gate (it waits for the flip, as in a stateful reload)."""
        sw = self._swap
        held = [p for p in parts if p.old is not None]
        stateful = [p for p in held if p.stateful and not p.unload]
        for p in held:
            assert p.rec.plugin is not None
            p.rec.plugin._hold()
        try:
            for p in stateful:
                assert p.old is not None
                p.old.retire()
            for p in stateful:
                assert p.old is not None
                if p.old.calls and not p.old.drained.wait(sw._settings.quiesce_timeout):
                    log.warning("release: %s v%d still has calls in flight", p.name, p.old.seq)
                self._start(p, sw._take_state(p.rec, p.old))
        except BaseException as exc:
            for p in stateful:
                assert p.old is not None
                p.old.unretire()
            for p in held:
                assert p.rec.plugin is not None and p.old is not None
                p.rec.plugin._publish(p.old)
            self._undo(parts)
            if not isinstance(exc, Exception):
                raise
            failed = next((p for p in stateful if not p.started), parts[0])
            raise self._refused(failed, exc) from exc
        for p in parts:
            if p.commit is not None:
                p.commit()
        stores = []  # (route, gate): each route from the gate to its new version, or closed
        plugins = []
        for p in parts:
            plugin = p.rec.plugin if p.unload else p.plugin
            assert plugin is not None and (p.unload or p.new is not None)
            gate = UNLOADED_PLUGIN.gate if p.unload else p.new.gate  # type: ignore[union-attr]
            stores.append((plugin._route, gate))
            plugins.append(plugin)

        def flip() -> None:
            for route, gate in stores:
                route.gate = gate

        def wake() -> None:
            for plugin in plugins:
                plugin._switched.set()

        return flip, wake

    def _refused(self, p: _Part, exc: Exception) -> ReleaseError:
        """The error a refused release raises, journaled as a refused build of ``p``."""
        cand, old = p.cand, p.old
        self._swap._journal.refused(
            p.name,
            exc,
            op="release",
            source=cand.source if cand is not None else p.source or p.rec.source,
            from_seq=old.seq if old is not None else None,
            from_digest=old.image.digest if old is not None else None,
            to_digest=cand.digest if cand is not None else None,
            version=cand.version if cand is not None else "",
        )
        if isinstance(exc, ReleaseError):
            return exc
        hint = ""
        if isinstance(exc, SignatureError):
            hint = (
                " (a release accepts it with allow_signature_change=True, "
                "`hotload release --allow-signature-change`)"
            )
        text = str(exc).split(" To accept it:")[0]  # the reload's own hint does not apply
        return ReleaseError(
            f"release refused (nothing changed): {p.name}: {type(exc).__name__}: {text}{hint}",
            plugin=p.name,
            cause=exc,
        )

    def _finish(self, rid: int, parts: list[_Part], label: str, *, rollback: bool) -> Release:
        sw = self._swap
        versions: dict[str, VersionInfo] = {}
        replaced: dict[str, int | None] = {}
        for p in parts:
            rec = p.rec
            if p.old is not None:
                if not p.stateful or p.unload:
                    p.old.retire()
                sw._reaper.retire(p.old, unload_safe=rec.unload_safe)
            if p.unload:
                rec.unloaded()
                sw._events.changed(unloaded=p.name)
                sw._note("unload", p.name, p.old, None, label)
                sw._table.changed(p.name)
                continue
            assert p.new is not None and p.cand is not None and p.plugin is not None
            if rec.plugin is None:
                rec.plugin = p.plugin
                sw._events.changed(loaded=p.name)
            rec.add(p.new)
            if rollback and p.old is not None:
                rec.rolled_back(p.new)  # the chain walks back, as a plugin's rollback does
            else:
                rec.went_live(p.new, p.cand.data, p.cand.source)
            rec.source = p.cand.source
            sw._inspect_later(p.new.image)
            sw._note("release", p.name, p.old, p.new, label)
            replaced[p.name] = p.old.seq if p.old is not None else None
            versions[p.name] = rec.info(p.new, inspect=False, measure=False)
            sw.counts.count(p.name, "release", True)
            sw._table.changed(p.name)
        sw._events.changed()
        log.info("%s: %s", label, ", ".join(f"{n} v{v.seq}" for n, v in versions.items()))
        return Release(rid, versions, replaced, tuple(p.name for p in parts if p.unload))
