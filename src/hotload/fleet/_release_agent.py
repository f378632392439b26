"""A fleet host's side of a release (``hotload fleet release``): stage the
plan's builds with the host's own staged release, report, and let the
host's timer switch at the time, with or without Redis.

At each sync of its ``FleetAgent`` (a wake-up, a heartbeat's poll, a
reconnect) this reads every plan in ``releases``, refuses any that does not
verify with the fleet key (or is older than one it accepted: a cancelled
plan cannot be replayed as planned), and for each:

- *planned, before its time*: fetches every build (SHA-256 checked, as a
  rollout's), stages them all with ``Host.reload_together(builds, at=)``
  (read, checked, preflighted, opened: everything but the switch) and
  reports ``staged``; or ``failed`` with the plugin and the cause.  The
  switch is the host's own timer: Redis unreachable at the time does not
  stop it.  An agent that restarts before the time (a new process) finds the
  plan and stages the release's builds again.
- *planned, after its time*: reports ``switched`` with the instant its
  timer flipped (``switched_ns``, ``time.time_ns()``); a host that did not
  stage it (it restarted after the time, joined late, or was refused while
  another release held its plugins) takes it as a decision like a desired
  state (``_due``): for each plugin the newest decision (by rev) naming it
  wins, a release's other plugins follow that release, and ``converge``
  switches the lot in one step; then it says ``switched`` and ``late``.  A
  timer syncs at the time of each plan not staged here.
- *cancelled*: drops the staged release (``Release.cancel``: nothing changes)
  and reports ``cancelled``.
- *with a canary*: a host the plan's ``canary.match`` names stages it for
  ``at``, every other host for ``at + bake``.  After its switch a canary host
  judges the release for the bake (``judge.look``: each plugin's new version
  since the switch against the version it replaced, over that one's life on
  this host, the pre-release baseline): a regression rolls the release back
  here at once and reports ``aborted`` with the verdict; else ``switched``
  with ``verdict: passed`` after the bake.  A canary host that did not stage
  it before ``at`` (it restarted or joined in the bake) is not judged: it
  takes the plan late only after ``at + bake``, as the other hosts do.
- *aborted* (a canary plan, between ``at`` and ``at + bake``): a canary host
  rolls the release back (``Release.rollback``) and reports ``reverted``; a
  host that had it staged cancels it and reports ``cancelled``; a host that
  starts later never converges to it.

While a plan is in force, its plugins follow it, not an older desired state
(``read`` returns them, the agent skips those desired states); a desired
state decided later (a higher rev: a rollout after the release) wins again.
A release that switched here (by its timer, or late) keeps its plugins
after that too (``Guard.hold``, saved with the accepted decisions): its plan
cancelled too late, deleted, expired or cleaned out does not hand them back
to an older desired state.  A plan after its time converges only plugins no
newer accepted decision moved (a newer desired state that is gone or
unreadable now means "keep what runs"), joined into one switch with the
decisions that took its other plugins.

The desired states a release's controller writes after the time name the
release (``Rule.release``): ``converge`` moves such a group with one
``reload_together`` once every member is readable, or leaves them all.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import BusyError, FleetError, HotloadError
from ._release_plan import Plan, parse, releases_key, report_key, when
from ._schema import Group, Rule, matches

if TYPE_CHECKING:
    from .._engine.release import Release

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9a-f]{12}")
MAX_PLANS = 256  # plans one sync looks at (the newest revs): a flood is not worked through


class ReleaseAgent:
    """The releases of one ``FleetAgent`` (its thread calls every method)."""

    def __init__(self, agent: Any) -> None:  # the FleetAgent (which imports this module)
        self.a = agent
        agent.guard.own(agent.id)  # its holds are this host's, not the machine's
        self._plans: list[Plan] = []  # verified at the last read
        self._staged: dict[str, Release] = {}  # release id -> the host's staged release
        self._revs: dict[str, int] = {}  # release id -> the rev of the plan it staged
        self._skipped = 0  # entries of the plans' hash that are no release id (logged once)
        self._blocked: dict[str, str] = {}  # release id -> why its group waits (logged once)
        self._failed: dict[str, int] = {}  # release id -> rev refused here (not tried again)
        self._reported: dict[str, dict[str, Any]] = {}
        self._invalid: dict[str, bytes] = {}
        self._conn: Any = None
        self._no_access = False  # the ACL does not let this host read the plans
        self._judged: dict[str, dict[str, Any]] = {}  # release id -> its canary's judging
        self._late_errors: dict[str, str] = {}  # release id -> why its late switch failed
        self._timer: tuple[threading.Timer, float] | None = None  # a sync at a plan's time
        self._deferred: set[str] = set()  # late timers that could not re-check: to converge
        self._settled: set[str] = set()  # staged releases seen over (refusals retried once)
        # plugin -> the rev of its desired state read at this sync that has no rule for this
        # host: no decision here (a release for other hosts), not a newer one
        self.other: dict[str, int] = {}

    def judging(self) -> bool:
        """Whether a canary release is being judged here (the agent syncs at
        every heartbeat then, for fresh figures)."""
        return any("verdict" not in j for j in self._judged.values())

    def read(self) -> dict[str, int]:
        """Read and verify every plan; plugin -> the rev of the newest planned
        release naming it (the agent leaves those plugins to the release
        unless a later desired state overrides it)."""
        import redis

        r = self.a._r
        assert r is not None
        self.other = {}  # filled by this sync's reading of the desired states
        try:
            raw: dict[bytes, bytes] = r.hgetall(releases_key(self.a.keys))
        except redis.exceptions.NoPermissionError as exc:  # an ACL from before releases
            if not self._no_access:
                self._no_access = True
                log.warning(
                    "fleet agent %s: cannot read %s (%s): this host takes no fleet release; "
                    "the fleet guide's ACL lists the keys a host needs",
                    *(self.a.id, releases_key(self.a.keys), exc),
                )
            self._plans = []
            return {}
        self.a.commands += 1
        plans = []
        # only release ids: garbage entries (any writer can add them) are not worked through
        # and do not push plans past the cap
        listed = [(i, rec) for i, rec in raw.items() if _ID.fullmatch(i.decode("latin-1"))]
        if len(listed) < len(raw) and self._skipped != len(raw) - len(listed):
            self._skipped = len(raw) - len(listed)
            log.warning(
                "fleet agent %s: %d entries of %s are not release ids: ignored",
                *(self.a.id, self._skipped, releases_key(self.a.keys)),
            )
        for id_b, rec in listed[: MAX_PLANS * 4]:
            rid = id_b.decode("utf-8", "replace")[:40]
            where = f"release {rid}"
            try:
                plan = parse(rec, where)
                if plan.id != rid:
                    raise FleetError(f"{where}: the record is plan {plan.id}: copied, refused")
                self.a.guard.judge_release(plan, where)
            except FleetError as exc:
                self._refuse(rid, rec, str(exc))
                continue
            self._invalid.pop(rid, None)
            plans.append(plan)
        seen = {i.decode("utf-8", "replace")[:40] for i in raw}
        for gone in [i for i in self._invalid if i not in seen]:
            del self._invalid[gone]
        mine = [p for p in plans if matches(p.match, self.a.labels)]  # the others: not ours
        self._plans = sorted(mine, key=lambda p: p.order)[-MAX_PLANS:]
        for rid, rel in self._staged.items():  # switched here: kept, whatever the plan says now
            if rel.state == "done" and rid in self._revs:
                self.a.guard.hold(rel.names, self._revs[rid])
        held: dict[str, int] = dict(self.a.guard.held())
        for rid, rel in self._staged.items():  # a staged one switches on its own, plan or not
            if rel.state in ("staged", "done") and rid in self._revs:
                for name in rel.names:
                    held[name] = max(held.get(name, -1), self._revs[rid])
        for plan in self._plans:
            if plan.state == "planned":
                for name in plan.names:
                    held[name] = max(held.get(name, -1), plan.rev)
        return held

    def act(self, revs: dict[str, int]) -> None:
        """Act on each plan read (``revs``: plugin -> the rev of its desired
        state, so that a release after its time converges only the plugins no
        later decision took over)."""
        if self._conn is not self.a._w:  # a new connection: Redis may have lost the reports
            self._conn = self.a._w
            self._reported.clear()
        ids = {p.id for p in self._plans}  # a plan cleaned out of Redis is forgotten here
        self._settled &= set(self._staged)
        for table in (self._judged, self._failed, self._reported, self._late_errors):
            for gone in [i for i in table if i not in ids]:
                del table[gone]
        for rid, rel in self._staged.items():
            if rel.state != "staged" and rid not in self._settled:  # switched, or dropped:
                self._settled.add(rid)  # a desired state refused while it held a plugin
                stale = [k for k in self.a._failed if k[0] in rel.names]  # is tried again
                for k in stale:
                    del self.a._failed[k]
                self.a._dirty = self.a._dirty or bool(stale)
        for rid in list(self._deferred):  # cancelled here by a late timer: converges as late
            self._deferred.discard(rid)
            if rid in self._staged and self._staged[rid].state == "cancelled":
                del self._staged[rid]
                self._revs.pop(rid, None)
                self.a._dirty = True  # the next sync's ``converge`` takes it
        for gone in [i for i, r in self._staged.items() if i not in ids and r.state != "staged"]:
            del self._staged[gone]  # one still staged switches on its own, plan or not
            self._revs.pop(gone, None)
        newest: dict[str, int] = {}
        for plan in self._plans:
            if plan.state == "planned":
                newest.update({n: plan.rev for n in plan.names})
        now = time.time()
        coming = [  # a plan not staged here converges at its time: a sync then
            t
            for p in self._plans
            if p.state == "planned" and p.id not in self._staged
            for t in (_late_time(p, self.a.labels, now),)
            if t > now
        ]
        if coming:
            self._wake_at(min(coming))
        for plan in self._plans:
            try:
                self._act(plan, newest, revs)
            except (HotloadError, ValueError) as exc:  # ValueError: a time the host refuses
                self._fail(plan, getattr(exc, "plugin", None), exc)

    def _act(self, plan: Plan, newest: dict[str, int], revs: dict[str, int]) -> None:
        mine = self._staged.get(plan.id)
        if plan.state == "aborted":
            self._aborted(plan, mine)
            return
        if plan.state == "cancelled":
            if mine is not None and mine.cancel(f"cancelled by the fleet: {plan.reason}"):
                log.warning(
                    "fleet agent %s: release %s cancelled: %s", self.a.id, plan.id, plan.reason
                )
            said = (self._reported.get(plan.id) or {}).get("state")
            if mine is None and (plan.id in self._failed or said == "failed"):
                return  # its report says why this host could not stage it: kept
            if mine is None or mine.state == "cancelled":
                self._report(plan, "cancelled", error=plan.reason or None)
                return
        if mine is not None:
            late = None
            if plan.state == "cancelled" and mine.state == "done":
                late = (
                    f"the cancel came too late: switched at {when((mine.switched_ns or 0) / 1e9)}"
                )
            if mine.state == "staged":
                self._report(plan, "staged")
            elif mine.state == "done" and plan.is_canary(self.a.labels):
                self._judge(plan, mine)
            elif mine.state == "done":  # cancelled too late: the release's plugins stay
                self._report(plan, "switched", switched_ns=mine.switched_ns, error=late)
            else:  # failed at the switch (the host closed), or cancelled on the host by hand
                self._report(plan, "failed", error=f"{mine.state} on this host: {mine.reason}")
            return
        if plan.state != "planned":
            return
        at = plan.time_for(self.a.labels)  # a canary plan's other hosts: after the bake
        if time.time() >= at:  # after its time: ``converge`` joined it with what came since
            if time.time() < plan.last:  # a canary host that did not stage it: unjudged,
                return  # it takes it as the others do, once the bake passed (or never)
            self._late(plan, newest, revs)
            return
        if self._failed.get(plan.id) == plan.rev:
            return
        for rel in self._staged.values():  # a release staged here holds a plugin: after it
            busy = [n for n in plan.names if rel.state == "staged" and n in rel.names]
            if busy:
                raise _Refused(
                    busy[0], f"{busy[0]}: staged here for release {rel.id}, which switches it "
                    f"first: staged after it, if its time has not come", retry=True,
                )  # fmt: skip
        cands = {}
        for name in plan.names:
            if not self.a.guard.takes(name):  # yet: the application may load it in a moment
                raise _Refused(name, self.a.guard.not_taken(name), retry=True)
            try:
                cands[name] = self.a._build(name, plan.digests[name])
            except HotloadError as exc:
                raise _Refused(name, str(exc)) from None
        try:  # a timer that wakes late (staging ended after the time) reads the plan again
            rel = self.a.host.reload_together(cands, at=at, recheck=self._recheck(plan))
        except BusyError as exc:  # staged for an earlier release here: tried again after it
            plugin = getattr(exc, "plugin", None) or plan.names[0]
            raise _Refused(plugin, str(exc), retry=True) from None
        self._staged[plan.id] = rel
        self._revs[plan.id] = plan.rev
        threading.Thread(
            target=self._watch, args=(rel,), name=f"hotload-fleet-release-{plan.id}", daemon=True
        ).start()
        import redis

        try:  # staging took a while (a slow fetch, preflight): cancelled meanwhile?
            why = self._cancelled_since(plan)
        except redis.exceptions.RedisError:
            why = None  # staged on the plan as read: its timer switches, Redis or not
        if why is not None and rel.cancel(why):
            log.warning("fleet agent %s: release %s %s", self.a.id, plan.id, why)
            self._report(plan, "cancelled", error=why[:500])
            return
        log.info("fleet agent %s: release %s staged for %s", self.a.id, plan.id, when(at))
        self._report(plan, "staged")

    def _late(self, plan: Plan, newest: dict[str, int], revs: dict[str, int]) -> None:
        """A plan past its time that this host did not stage: ``converge``
        switched it, joined with every newer decision on its plugins, in one
        step (or says why not); here it is held and reported."""
        held = self.a.guard.held()
        names = [
            n
            for n in plan.names
            if newest.get(n) == plan.rev
            and revs.get(n, -1) < plan.rev
            and self._accepted(n) < plan.rev  # a newer decision, gone: kept
            and held.get(n, -1) <= plan.rev  # a newer release switched it here
        ]
        if not names:
            return  # every plugin of it was decided again since: nothing of it to converge
        for name in names:
            if not self.a.guard.takes(name):  # yet: the application may load it in a moment
                raise _Refused(name, self.a.guard.not_taken(name), retry=True)
        if all(self.a.live_digest(n) == plan.digests[n] for n in names):
            if any(held.get(n, -1) < plan.rev for n in names):
                log.warning(
                    "fleet agent %s: release %s: its time %s had passed: switched late%s",
                    self.a.id, plan.id, when(plan.time_for(self.a.labels)),
                    "" if len(names) == len(plan.names) else
                    f" (its {', '.join(names)}; the rest follow newer decisions)",
                )  # fmt: skip
            self.a.guard.hold(names, plan.rev)
            said = self._reported.get(plan.id) or {}
            switched = said.get("switched_ns") if said.get("state") == "switched" else None
            self._report(plan, "switched", switched_ns=switched or time.time_ns(), late=True)
            return
        error = self._late_errors.get(plan.id)
        if error is not None:
            self._report(plan, "failed", error=error)

    def _recheck(self, plan: Plan) -> Callable[[], str | None]:
        """What a staged release's timer asks when it wakes late or was paused
        (``Release.recheck``, on the timer's thread): the plan read again.
        Cancelled (or aborted) since: not switched.  Redis unreachable: not
        switched either, and left to the agent's next sync, which converges
        to the plan as a host that comes late does if it is still planned
        (a timer on time switches on its staged plan, Redis or not).  The
        plan gone or not verifying: switched on the staged plan, as on time."""
        import redis

        def check() -> str | None:
            if self.a._stop.is_set():  # the host left the fleet: no agent to leave it to
                return None
            try:
                return self._cancelled_since(plan)
            except redis.exceptions.RedisError as exc:
                self._deferred.add(plan.id)
                return (
                    f"late, and Redis did not answer ({exc}): the agent converges to the "
                    f"plan once it reads it still planned"
                )

        return check

    def _cancelled_since(self, plan: Plan) -> str | None:
        """The plan read again (``RedisError`` when Redis does not answer):
        why it no longer stands (cancelled or aborted since), or None (still
        planned; gone or not verifying: the staged plan stands)."""
        import redis

        where = f"release {plan.id}"
        r = self.a._r
        if r is None:
            raise redis.exceptions.ConnectionError("not connected")
        raw = r.hget(releases_key(self.a.keys), plan.id)
        if raw is None:
            return None
        try:
            now = parse(raw, where)
            self.a.guard.verify_release(now, where)
        except FleetError as exc:
            log.warning("fleet agent %s: %s: switching on the staged plan", self.a.id, exc)
            return None
        if now.state == "planned" or now.order <= plan.order:
            return None
        return f"{now.state} by the fleet while it was staged: {now.reason}"

    def _wake_at(self, at: float) -> None:
        """Sync just after ``at`` (nothing else wakes the agent then): a plan
        this host could not stage converges at its time.  One timer, for the
        nearest such time; the sync it starts sets the next."""
        old = self._timer
        if old is not None and old[1] > time.time() and old[1] <= at:
            return
        if old is not None:
            old[0].cancel()
        timer = threading.Timer(at - time.time() + 0.05, self._watch, args=(None,))
        timer.daemon = True
        timer.start()
        self._timer = (timer, at)

    def took(self, cands: dict[str, Any]) -> None:
        """What the agent notes before it switches plugins itself: the build
        each ran before the fleet (or none: the fleet loads it), so that the
        application's own ``load`` later gets the fleet's version."""
        a = self.a
        with a._lock:
            for name in cands:
                if name in a.host:
                    a._baseline.setdefault(name, a.live_digest(name))
                else:
                    a._baseline.setdefault(name, None)
                    a._managed.add(name)

    def converge(
        self, groups: dict[str, dict[str, tuple[Rule, int]]], revs: dict[str, int],
        held: dict[str, int], plain: dict[str, tuple[Rule, int]],
    ) -> dict[str, tuple[Rule, int]]:  # fmt: skip
        """Bring each group of desired states a release wrote (``Rule.release``)
        to their builds together (``reload_together``), or not at all: a
        member still missing (not written yet, unreadable, expired) keeps
        every plugin as it runs; a refusal is reported for every member.

        Groups that share a plugin are one switch, and so is the plain desired
        state (a rollout's, no canary) of a plugin a group names: a host that
        comes late to two releases, or to a release and a rollout after it,
        goes from where it is to where the fleet is in one step, never through
        a pair the fleet never ran.  Returns the plain states left to converge
        one by one."""
        plain, groups = dict(plain), {rid: dict(g) for rid, g in groups.items()}
        settled, pending = self._switched_here()
        for name, (rule, rev) in self._due(revs, settled, pending).items():  # newest here
            plain.pop(name, None)
            for g in groups.values():
                g.pop(name, None)
            assert rule.release is not None
            groups.setdefault(rule.release.id, {})[name] = (rule, rev)
        groups = {rid: g for rid, g in groups.items() if g}
        for rids in _joined(groups):
            members: dict[str, tuple[Rule, int]] = {}
            names: set[str] = set()
            for rid in rids:
                members.update(groups[rid])
                group = next(iter(groups[rid].values()))[0].release
                assert group is not None
                names.update(group.plugins)
            for n in names - set(members):
                rule_rev = plain.get(n)
                if rule_rev is not None and rule_rev[0].digest and rule_rev[0].canary is None:
                    members[n] = plain.pop(n)
            label = " + ".join(sorted(rids))
            rev = max(r for _, r in members.values())
            missing = sorted(  # decided by none, or held by a release still to switch here
                n for n in names if n not in members and (n in pending or settled.get(n, -1) <= rev)
            )
            if missing:
                why = f"release {label}: no desired state of {', '.join(missing)} to go with it"
                if self._blocked.get(label) != why:
                    self._blocked[label] = why
                    log.warning("fleet agent %s: %s: its plugins stay as they run", self.a.id, why)
                continue
            self._blocked.pop(label, None)
            self._apply_group(label, members)
        return plain

    def _switched_here(self) -> tuple[dict[str, int], set[str]]:
        """Plugin -> the rev of the newest release that switched it here (held
        with the accepted decisions, or switched by this agent's staged
        release); and the plugins a release staged here will switch (nothing
        else moves them until it did).  A plan still to come holds nothing
        here: until its time the decisions in force are the others."""
        held = dict(self.a.guard.held())
        pending: set[str] = set()
        for rid, rel in self._staged.items():
            if rel.state == "staged":
                pending.update(rel.names)
            elif rel.state == "done" and rid in self._revs:
                for name in rel.names:
                    held[name] = max(held.get(name, -1), self._revs[rid])
        return held, pending

    def _due(
        self, revs: dict[str, int], held: dict[str, int], pending: set[str]
    ) -> dict[str, tuple[Rule, int]]:
        """Plugin -> (the rule, the rev) of the newest plan past its time
        here that this host did not stage (``--no-wait`` wrote no desired
        state after it), where no newer decision took the plugin: such a
        plan is a decision like a desired state, joined into one switch with
        the ones that overlap it."""
        out: dict[str, tuple[Rule, int]] = {}
        now = time.time()
        for plan in self._plans:  # oldest first: a newer plan's plugins overwrite
            if plan.state != "planned" or plan.id in self._staged:
                continue
            if now < plan.last:  # a canary plan: only once its bake passed (R8)
                continue
            group = Group(plan.id, tuple(plan.names))
            for name, digest in plan.builds:
                out[name] = (Rule(dict(plan.match), digest, release=group), plan.rev)
        return {
            n: (rule, rev)
            for n, (rule, rev) in out.items()
            if self.a.guard.takes(n)
            and n not in pending  # a release staged here switches it first
            and rev > revs.get(n, -1)  # a desired state written since wins
            and rev >= self._accepted(n)  # and one accepted, gone since
            and rev >= held.get(n, -1)  # a newer release switched it here
        }

    def _accepted(self, name: str) -> int:
        """The rev of the newest desired state of ``name`` this host accepted,
        unless that is the one in Redis now and it has no rule for this host
        (a decision for other hosts is none here: R7)."""
        newest = self.a.guard.newest(name)
        return -1 if newest is None or newest == self.other.get(name) else newest

    def _apply_group(self, label: str, members: dict[str, tuple[Rule, int]]) -> None:
        want = {n: rule.digest for n, (rule, _) in members.items() if rule.digest}
        todo = {n: d for n, d in want.items() if self.a.live_digest(n) != d}
        if any(self.a._failed.get((n, d)) == members[n][1] for n, d in todo.items()):
            return  # refused for these revs; a new decision tries again
        error = None
        if todo:
            try:
                cands = {n: self.a._build(n, d) for n, d in todo.items()}
                for n, c in cands.items():
                    if c.name != n:
                        raise FleetError(f"{n}: build {todo[n]} declares plugin {c.name!r}")
                self.took(cands)
                self.a.host.reload_together(cands)
            except HotloadError as exc:
                error = f"release {label}: {exc}; none of its plugins changed here"
                log.warning("fleet agent %s: %s", self.a.id, error)
                self._late_errors.update({rid: error[:500] for rid in label.split(" + ")})
                for n, d in todo.items():
                    self.a._failed[(n, d)] = members[n][1]
        for n, (rule, r) in members.items():
            self.a._report(n, "failed" if error else "live", rule.digest, r, error)

    def _judge(self, plan: Plan, mine: Release) -> None:
        """A canary host's look at the release it switched: each plugin's new
        version against the one it replaced (its whole life here); rolled
        back at the first regression, passed after the bake."""
        from .._engine import judge

        j = self._judged.get(plan.id)
        if j is None:
            pairs = mine.versions_pairs()
            j = self._judged[plan.id] = {
                "pairs": pairs,
                "base": {n: judge.read(old) for n, old, _ in pairs},
                # the window starts at the flip, not at this first look
                "t0": time.monotonic() - max(0.0, time.time() - (mine.switched_ns or 0) / 1e9),
            }
        if "verdict" not in j:
            rules = judge.Judge(bake=plan.bake, interval=min(0.5, plan.bake))
            seconds = time.monotonic() - j["t0"]
            for name, _, new in j["pairs"]:
                found = judge.look(judge.read(new), j["base"][name], rules, seconds)
                if found is not None:
                    j["verdict"] = f"{name}: regression in {found.figure}: {found.text}"
                    break
            else:
                if seconds >= plan.bake:
                    j["verdict"] = "passed"
        verdict = j.get("verdict")
        if verdict is None or verdict == "passed":
            self._report(plan, "switched", switched_ns=mine.switched_ns, verdict=verdict)
            return
        if mine.state == "done" and not j.get("reverted"):
            j["reverted"] = "judge"
            log.warning("fleet agent %s: release %s aborted here: %s", self.a.id, plan.id, verdict)
            mine.rollback()
        self._report(plan, "aborted", switched_ns=mine.switched_ns, verdict=verdict[:500])

    def _aborted(self, plan: Plan, mine: Release | None) -> None:
        """The fleet aborted a canary release: roll it back where it switched
        (unless this host's judge did already), drop it where it is staged."""
        if mine is None:
            if plan.id not in self._failed:
                self._report(plan, "cancelled", error=plan.reason or None)
            return
        j = self._judged.setdefault(plan.id, {})
        j.setdefault("verdict", "aborted by the fleet")  # judged no further
        if mine.state == "staged":
            mine.cancel(f"aborted by the fleet: {plan.reason}")
        if mine.state == "done" and not j.get("reverted"):
            j["reverted"] = "fleet"
            log.warning("fleet agent %s: release %s aborted: %s", self.a.id, plan.id, plan.reason)
            mine.rollback()
        if mine.state == "cancelled":
            self._report(plan, "cancelled", error=plan.reason or None)
        elif j.get("reverted") == "fleet":
            self._report(plan, "reverted", error=plan.reason or None)
        elif mine.state == "done":  # rolled back by its own judge: that report stays
            self._report(plan, "aborted", verdict=str(j.get("verdict", ""))[:500])

    def _watch(self, rel: Release | None) -> None:
        """Sync (and so report) as soon as the staged release switched or not."""
        if rel is not None:
            rel.wait()
        self.a._dirty = True

    def _fail(self, plan: Plan, plugin: str | None, exc: Exception) -> None:
        retry = getattr(exc, "retry", False)
        if not retry:  # else tried again at each sync (logged at the first)
            self._failed[plan.id] = plan.rev
        if not retry or (self._reported.get(plan.id) or {}).get("error") != str(exc):
            log.warning("fleet agent %s: release %s: refused: %s", self.a.id, plan.id, exc)
        # a refusal that may pass is "waiting": a controller waits for it up to the deadline
        self._report(plan, "waiting" if retry else "failed", plugin=plugin, error=str(exc))

    def _refuse(self, rid: str, raw: bytes, why: str) -> None:
        """A plan that does not verify: logged once and reported (when its id
        is one a report can be filed under), never acted on."""
        if self._invalid.get(rid) == raw:
            return
        self._invalid[rid] = raw
        log.warning("fleet agent %s: %s", self.a.id, why)
        if len(rid) == 12 and rid.isalnum():
            self._write(rid, {"state": "invalid", "error": why[:500]})

    def _report(self, plan: Plan, state: str, **extra: Any) -> None:
        if plan.is_canary(self.a.labels):
            extra["canary"] = True  # it switched at the time; the others after the bake
        rep = {"state": state, "rev": plan.rev, **{k: v for k, v in extra.items() if v is not None}}
        if self._reported.get(plan.id) != rep:
            self._write(plan.id, rep)
            self._reported[plan.id] = rep

    def _write(self, rid: str, rep: dict[str, Any]) -> None:
        w = self.a._w
        assert w is not None
        pipe = w.pipeline(transaction=False)
        pipe.hset(report_key(self.a.keys, self.a.id), rid, json.dumps({**rep, "at": time.time()}))
        pipe.publish(self.a.keys.reports, f"release {rid} {self.a.id}")
        pipe.execute()
        self.a.commands += 2


class _Refused(FleetError):
    """A plan this host cannot stage: the plugin and why."""

    def __init__(self, plugin: str, why: str, *, retry: bool = False) -> None:
        super().__init__(why)
        self.plugin = plugin
        self.retry = retry  # the host may take it later (its application loads it)


def _late_time(plan: Plan, labels: dict[str, str], now: float) -> float:
    """When a host that did not stage ``plan`` acts on it: its time, or, past
    it, the end of the bake (a canary host that missed its time is not judged:
    it takes the release late as the other hosts do, once the bake passed)."""
    t = plan.time_for(labels)
    return t if t > now else plan.last


def _joined(groups: dict[str, dict[str, tuple[Rule, int]]]) -> list[list[str]]:
    """The release ids of ``groups``, joined where their plugins overlap."""
    out: list[tuple[set[str], list[str]]] = []
    for rid in sorted(groups):
        group = next(iter(groups[rid].values()))[0].release
        names = set(group.plugins if group is not None else ()) | set(groups[rid])
        hit = [c for c in out if c[0] & names]
        for c in hit:
            out.remove(c)
            names |= c[0]
        out.append((names, sorted({rid, *(r for c in hit for r in c[1])})))
    return [rids for _, rids in out]
