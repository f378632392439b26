"""The operator's side of a fleet release: publish the signed plan, watch
every host stage it, cancel it everywhere when one cannot in time, and see
every host switch (``Fleet.release``, ``hotload fleet release``).

The point of no return is the switch time: until then the controller cancels
(a signed plan with ``state: cancelled`` and a higher rev) as soon as a host
reports a failure, and at the staging deadline for every host that has not
reported ``staged``; once the time has come the hosts switch on their own
staged plans, so a cancel is refused.  A host that cannot hear the cancel
(Redis unreachable from it between the cancel and the time) switches alone:
the deadline before the time is the margin for the cancel to reach every
host; say it generously.

With a canary (``canary=SEL, bake=S``), the canary hosts switch at the time
and the others at ``time + bake``: after the time the controller aborts (a
signed plan with ``state: aborted``) as soon as a canary host reports a
regression (its own judge rolled the release back there), a failure, or
stops answering (its heartbeat gone: an in-process crash took it down), or
has not reported its switch ``CANARY_SETTLE`` s after the time; the canary
hosts then roll the release back and the others drop it.  The point of no
return is then ``time + bake``.

The hosts' reports are advisory, read by the controller alone: the hosts
act only on the signed plan, so a faked report cannot make a host switch.
A faked ``failed`` (``aborted``) cancels (aborts) everywhere, the safe way;
a faked ``staged`` hides a host's failure, as if the controller were gone.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from .._errors import FleetError, RolloutFailed
from ._controller import FleetStore
from ._release_plan import (
    Plan,
    check_builds,
    check_canary,
    parse,
    parse_host_report,
    releases_key,
    report_key,
    sign,
    verify,
    when,
)
from ._schema import (
    matches,
    new_id,
    selector,
    selector_text,
)


class Fleet(FleetStore, Protocol):
    """What a release reads and writes through its ``Fleet`` (named here:
    ``Fleet.release`` makes a controller, so the import goes one way)."""

    expires: float

    def signing_key(self, *, required: bool = True) -> Any: ...


log = logging.getLogger(__name__)

SETTLE = 3.0  # seconds after the time the controller waits for every host's ``switched``
CONFIRM = 10.0  # seconds at most a cancel waits for the hosts that staged it to drop it
CANARY_SETTLE = 2.0  # seconds after the time a canary host has to report its switch
KEEP = 50  # release plans kept: older ones that are over are cleaned out (``prune``)
GRACE = 3600.0  # seconds after its last host's time a finished plan is still kept
CANCEL_MARGIN = 0.25  # seconds before the time a cancel is refused (a host's timer holds
# the GIL from up to 30 ms before it, and a cancel takes a sync to reach each host)
MIN_LEAD = 1.0  # seconds: a release's time is at least this far ahead when it is published
MAX_LEAD = 365 * 86400.0  # and at most this (a host refuses a staged release beyond a year)


def default_deadline(at: float, now: float) -> float:
    """The staging deadline when none is given: a fifth of the lead before
    the time, at least 0.5 s and at most 60 s (the margin for a cancel)."""
    return at - min(60.0, max(0.5, (at - now) / 5))


class ReleaseController:
    """One release, from its plan to every host switched (or cancelled)."""

    def __init__(
        self, fleet: Fleet, *, poll: float = 0.5, progress: Callable[[str], None] | None = None
    ) -> None:
        self.f = fleet
        self.poll = poll
        self.progress = progress or (lambda msg: log.info("release: %s", msg))
        self._said_away = 0.0

    # -- the plan -------------------------------------------------------------------------
    def publish(
        self,
        builds: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        at: float,
        deadline: float | None = None,
        hosts: str | Mapping[str, str] = "*",
        canary: str | Mapping[str, str] | None = None,
        bake: float = 60.0,
    ) -> dict[str, Any]:
        """Check, sign and write the plan; the controller's record of it."""
        pairs = list(builds.items()) if isinstance(builds, Mapping) else list(builds)
        names = [n for n, _ in pairs]
        check_builds([(n, "0" * 64) for n in names], "release")  # twice-named: before Redis
        pairs = [(n, self.f.resolve(n, ref)) for n, ref in pairs]
        check_builds(pairs, "release")
        for name, digest in pairs:
            meta = self.f.builds(digest)
            if meta.get("name") != name:
                raise FleetError(
                    f"release: build {digest} is plugin {meta.get('name')!r}, not {name!r}"
                )
        now = time.time()
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise FleetError(f"release: at={at!r} is not a time")
        if at < now + MIN_LEAD:
            raise FleetError(
                f"release: its time {when(at)} is {'in the past' if at <= now else 'too close'} "
                f"({at - now:+.1f} s from now): a release is staged on every host before its "
                f"time, so the time must be at least {MIN_LEAD:g} s ahead; refused, nothing "
                f"written"
            )
        if at > now + MAX_LEAD:
            raise FleetError(f"release: its time {when(at)} is more than a year ahead")
        deadline = default_deadline(at, now) if deadline is None else float(deadline)
        if not now < deadline <= at - CANCEL_MARGIN:
            raise FleetError(
                f"release: the staging deadline {when(deadline)} must be after now and at "
                f"least {CANCEL_MARGIN:g} s before the time {when(at)} (the last moment a "
                f"cancel is taken)"
            )
        match = selector(hosts)
        live = [h for h in self.f.hosts() if h["alive"] and matches(match, h["labels"])]
        expected = sorted(h["id"] for h in live)
        if not expected:
            raise FleetError(f"release: no live host matches {selector_text(match)}")
        spec, canaries = None, []
        if canary is not None:
            spec = check_canary({"match": selector(canary), "bake": bake}, "release")
            canaries = sorted(h["id"] for h in live if matches(spec["match"], h["labels"]))
            if not canaries or len(canaries) == len(expected):
                raise FleetError(
                    f"release: the canary {selector_text(spec['match'])} matches "
                    f"{len(canaries)} of the release's {len(expected)} live host(s): a canary "
                    f"is some of them, not none or all"
                )
        plan = Plan(new_id(), self._rev(), tuple(pairs), float(at), deadline, match, canary=spec)
        plan = self._write(plan)
        rec = {
            "id": plan.id,
            "plan": plan.record(),  # as signed: a cancel falls back on it if Redis's is changed
            "builds": dict(pairs),
            "at": plan.at,
            "deadline": plan.deadline,
            "hosts": selector_text(match),
            "expected": expected,
            "state": "planned",
            "created_at": now,
        }
        if spec is not None:
            rec.update(canary=selector_text(spec["match"]), bake=spec["bake"], canaries=canaries)
        self._save(rec)
        self.prune()
        listed = ", ".join(f"{n}={d[:12]}" for n, d in pairs)
        self.progress(
            f"release {plan.id}: {listed} at {when(plan.at)}; {len(expected)} host(s) stage it "
            f"by {when(plan.deadline)}"
            + (
                f"; canary {rec['canary']} ({len(canaries)} host(s)) judged {plan.bake:g} s, "
                f"the others at {when(plan.last)}"
                if spec is not None
                else ""
            )
        )
        return rec

    def _rev(self) -> int:
        """A rev above every decision written so far (as ``Fleet.set_desired``)."""
        gen = self.f._call("read gen", lambda: self.f.r.get(self.f.keys.gen))
        counted = (int(gen) if gen and gen.isdigit() else 0) + 1
        return max(counted, int(time.time() * 1000))

    def _write(self, plan: Plan) -> Plan:
        key = self.f.signing_key()
        if key is None:
            raise FleetError("release: a release plan is always signed (insecure=True signs none)")
        signed = sign(key, plan)
        k = self.f.keys

        def write() -> None:
            pipe = self.f.r.pipeline(transaction=True)
            pipe.hset(releases_key(k), plan.id, signed.record())
            pipe.set(k.gen, signed.rev)  # the agents poll gen: a new value makes them sync
            pipe.publish(k.wake, f"release {plan.id}")
            pipe.execute()

        self.f._call("write release plan", write)
        return signed

    # -- driving --------------------------------------------------------------------------
    def drive(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Watch the hosts stage (cancel on a failure, or at the deadline for
        the hosts not staged), then wait ``SETTLE`` s after the time for every
        host's ``switched``; the final record (``RolloutFailed`` when cancelled)."""
        rid, at, deadline = rec["id"], rec["at"], rec["deadline"]
        said = ""
        while time.time() < at - CANCEL_MARGIN:  # after: no cancel is taken any more
            self._restore(rec)
            reports = self._look(rid, rec["expected"])
            if reports is None:  # Redis away: no cancel can be written either; wait for it
                time.sleep(min(self.poll, max(0.005, at - time.time())))
                continue
            failed = {h: r for h, r in reports.items() if r["state"] in ("failed", "invalid")}
            waiting = [h for h in rec["expected"] if reports.get(h, {}).get("state") != "staged"]
            if failed:
                host, rep = sorted(failed.items())[0]
                why = f"{host} could not stage it: {_cause(rep)}"
                return self._cancel_and_raise(rec, why)
            if waiting and time.time() >= deadline:
                named = [f"{h} ({_cause(reports[h])})" if h in reports else h for h in waiting[:3]]
                why = (
                    f"{len(waiting)} host(s) had not staged it by the deadline "
                    f"{when(deadline)}: {', '.join(named)}"
                    + (f" and {len(waiting) - 3} more" if len(waiting) > 3 else "")
                )
                return self._cancel_and_raise(rec, why)
            line = f"{len(rec['expected']) - len(waiting)}/{len(rec['expected'])} hosts staged"
            if line != said:
                self.progress(f"release {rid}: {line}")
                said = line
            time.sleep(min(self.poll, max(0.005, at - CANCEL_MARGIN - time.time())))
        time.sleep(max(0.0, at - time.time()))
        self.progress(f"release {rid}: its time {when(at)}: the hosts switch on their own")
        if rec.get("canaries"):
            self._bake(rec)
            at = at + float(rec["bake"])
        settle = at + SETTLE
        last: dict[str, dict[str, Any]] = {}
        while True:
            reports = last = self._look(rid, rec["expected"]) or last
            switched = {h: r for h, r in reports.items() if r["state"] == "switched"}
            judged = all("verdict" in switched.get(h, {}) for h in rec.get("canaries") or ())
            if (judged and all(h in switched for h in rec["expected"])) or time.time() >= settle:
                break
            time.sleep(0.1)
        rec["hosts_state"] = reports
        rec["switched"] = sorted(switched)
        rec["not_switched"] = sorted(h for h in rec["expected"] if h not in switched)
        rec["state"] = "switched" if not rec["not_switched"] else "partly switched"
        at_ns = int(at * 1e9)
        canaries = set(rec.get("canaries") or ())  # they switched ``bake`` s before ``at`` here
        skews = [
            (r["switched_ns"] - at_ns) / 1e6
            for h, r in switched.items()
            if "switched_ns" in r and h not in canaries
        ]
        if skews:
            rec["skew_ms"] = {"min": min(skews), "max": max(skews)}
        self._save(rec)
        self._adopt(rec)
        self.progress(
            f"release {rid}: {len(switched)}/{len(rec['expected'])} hosts switched"
            + (f", skew {min(skews):+.2f} to {max(skews):+.2f} ms" if skews else "")
            + (f"; not switched: {', '.join(rec['not_switched'])}" if rec["not_switched"] else "")
        )
        return rec

    def _restore(self, rec: dict[str, Any]) -> None:
        """Write the plan again, as signed, when Redis lost it (a FLUSHALL, a
        restart without persistence): the hosts that had not staged it yet
        still can, and a cancel still finds it.  Best effort."""
        key, rid = releases_key(self.f.keys), rec["id"]
        try:
            if self.f._call("read plan", lambda: self.f.r.hexists(key, rid)):
                return
            self.progress(f"release {rid}: its plan is gone from Redis: written again")
            self.f._call("write plan", lambda: self.f.r.hset(key, rid, rec["plan"]))
            self.f._call("wake", lambda: self.f.r.publish(self.f.keys.wake, f"release {rid}"))
            self._save(rec)
        except FleetError:
            pass  # Redis away: the next look tries again

    def _bake(self, rec: dict[str, Any]) -> None:
        """The canary phase: from the time to ``time + bake``, abort at the
        first canary host that regressed, failed, went silent or did not
        switch (``RolloutFailed``); return when the bake passed."""
        rid, canaries = rec["id"], rec["canaries"]
        at, last = rec["at"], rec["at"] + float(rec["bake"])
        said = ""
        while time.time() < last:
            reports = self._look(rid, canaries)
            if reports is None:
                time.sleep(min(self.poll, max(0.005, last - time.time())))
                continue
            alive = {h["id"] for h in self.f.hosts() if h["alive"]}
            for host in canaries:
                rep = reports.get(host, {})
                state = rep.get("state")
                why = None
                if state in ("aborted", "failed", "invalid"):
                    why = f"canary {host}: {rep.get('verdict') or _cause(rep)}"
                elif host not in alive:
                    why = f"canary {host} stopped answering after the switch (crashed?)"
                elif state != "switched" and time.time() >= at + CANARY_SETTLE:
                    why = f"canary {host} did not report its switch ({state or 'no report'})"
                if why is not None:
                    self._abort_and_raise(rec, why)
            done = sum(reports.get(h, {}).get("state") == "switched" for h in canaries)
            line = f"canary: {done}/{len(canaries)} switched"
            if line != said:
                self.progress(f"release {rid}: {line}")
                said = line
            time.sleep(min(self.poll, max(0.005, last - time.time())))
        self.progress(f"release {rid}: the canary passed; the other hosts switch at {when(last)}")

    def _abort_and_raise(self, rec: dict[str, Any], why: str) -> None:
        self.abort(rec["id"], why)
        rec = self.record(rec["id"]) or rec
        deadline = time.time() + SETTLE  # the canary hosts' ``reverted``, the others' cancel
        while time.time() < deadline:
            reports = self._look(rec["id"], rec.get("expected") or ()) or {}
            if all(r.get("state") != "switched" for r in reports.values()):
                break
            time.sleep(0.1)
        rec["hosts_state"] = self._reports(rec["id"], rec.get("expected") or ())
        raise RolloutFailed(f"release {rec['id']} aborted: {why}", rec)

    def abort(self, release_id: str, reason: str = "aborted by hand") -> dict[str, Any]:
        """Abort a canary release between its time and ``time + bake``: the
        canary hosts roll it back, the others drop it (a newer signed plan)."""
        key = releases_key(self.f.keys)
        raw = self.f._call("read plan", lambda: self.f.r.hget(key, release_id))
        if raw is None:
            raise FleetError(f"release {release_id}: no such release in this fleet")
        plan = self._ours(release_id, raw)
        if plan.state != "planned":
            raise FleetError(f"release {release_id} is already {plan.state}: {plan.reason}")
        if time.time() >= plan.last:
            raise FleetError(
                f"release {release_id}: every host switched at {when(plan.last)} (the point of "
                f"no return); a new release (or rollout) undoes it"
            )
        rev = max(self._rev(), plan.rev + 1)
        state = "aborted" if time.time() >= plan.at else "cancelled"
        self._write(replace(plan, rev=rev, state=state, reason=reason))
        rec = self.record(release_id) or {"id": release_id}
        rec.update({"state": state, "reason": reason, "cancelled_at": time.time()})
        self._save(rec)
        self.progress(f"release {release_id}: {state} on every host: {reason}")
        return rec

    def _adopt(self, rec: dict[str, Any]) -> list[str]:
        """``_release_adopt.adopt``: the release's desired states written."""
        from ._release_adopt import adopt

        return adopt(self, rec)

    def _cancel_and_raise(self, rec: dict[str, Any], why: str) -> dict[str, Any]:
        done = self.cancel(rec["id"], why)
        rec = self.record(rec["id"]) or rec
        rec["hosts_state"] = self._reports(rec["id"], rec.get("expected") or ())
        left = done.get("unconfirmed")
        where = f", not confirmed by {', '.join(left)}" if left else " on every host"
        raise RolloutFailed(f"release {rec['id']} cancelled{where}: {why}", rec)

    def _look(self, rid: str, also: Iterable[str]) -> dict[str, dict[str, Any]] | None:
        """The hosts' reports, or None while Redis does not answer (said once a
        second: the hosts switch on their own staged plans meanwhile)."""
        try:
            return self._reports(rid, also)
        except FleetError as exc:
            if time.monotonic() - self._said_away >= 1.0:
                self._said_away = time.monotonic()
                self.progress(f"release {rid}: {exc}; the hosts go on with their staged plans")
            return None

    # -- cancel ---------------------------------------------------------------------------
    def cancel(self, release_id: str, reason: str = "cancelled by hand") -> dict[str, Any]:
        """Cancel a planned release everywhere (a newer signed plan saying
        so); refused once its time has come (the point of no return)."""
        key = releases_key(self.f.keys)
        raw = self.f._call("read plan", lambda: self.f.r.hget(key, release_id))
        if raw is None:
            raise FleetError(f"release {release_id}: no such release in this fleet")
        plan = self._ours(release_id, raw)
        if plan.state != "planned":
            raise FleetError(f"release {release_id} is already {plan.state}: {plan.reason}")
        if plan.canary is not None and time.time() >= plan.at:
            return self.abort(release_id, reason)  # in its bake: the canaries roll it back
        if time.time() >= plan.at - CANCEL_MARGIN:
            raise FleetError(
                f"release {release_id}: too late to cancel: its time {when(plan.at)} is less "
                f"than {CANCEL_MARGIN:g} s away (the hosts' timers are about to switch, or "
                f"did: the point of no return); a new release of the builds before (or a "
                f"rollout) takes it back"
            )
        rev = max(self._rev(), plan.rev + 1)
        staged = self._staged_on(release_id)  # the hosts that must drop it
        self._write(replace(plan, rev=rev, state="cancelled", reason=reason))
        rec = self.record(release_id) or {"id": release_id}
        staged |= set(rec.get("expected") or ())  # and those still staging it (R2)
        rec.update({"state": "cancelled", "reason": reason, "cancelled_at": time.time()})
        self._save(rec)
        return self._confirm(rec, plan, staged)

    def _staged_on(self, rid: str) -> set[str]:
        try:
            reports = self._reports(rid)
        except FleetError:
            return set()
        return {h for h, r in reports.items() if r["state"] == "staged"}

    def _confirm(self, rec: dict[str, Any], plan: Plan, staged: set[str]) -> dict[str, Any]:
        """Wait for every host that had staged the release, or was to stage
        it (its selected hosts: one may be staging it still, a slow fetch or
        preflight), to report it cancelled, or failed (until ``SETTLE`` s
        after its time, at most ``CONFIRM`` s):
        a host stopped over the time (SIGSTOP, a suspended VM) reads the cancel
        only when it resumes, and its timer re-checks the plan then.  The
        hosts not confirmed are named (``unconfirmed``), and the command
        exits non-zero: "cancelled on every host" is said only when it is so."""
        rid = rec["id"]
        until = min(plan.at + SETTLE, time.time() + CONFIRM)
        left: dict[str, str] = {}
        while True:
            reports = self._look(rid, staged)
            if reports is None:  # Redis away: no host is confirmed
                left = {h: "unknown: Redis did not answer" for h in sorted(staged)}
            else:
                left = {}
                hosts = staged | {h for h, r in reports.items() if r["state"] == "staged"}
                for host in sorted(hosts):
                    rep = reports.get(host, {"state": "no report"})
                    if rep["state"] not in ("cancelled", "failed", "invalid"):
                        why = f": {rep['error']}" if rep.get("error") else ""
                        left[host] = rep["state"] + why
            if not left or time.time() >= until:
                break
            time.sleep(0.05)
        if left:
            rec["unconfirmed"] = left
            self._save(rec)
            self.progress(
                f"release {rid}: cancelled; not confirmed by {len(left)} host(s) that had staged "
                f"it or were to: " + ", ".join(f"{h} ({s})" for h, s in left.items())
            )
        else:
            self.progress(f"release {rid}: cancelled on every host")
        return rec

    def _ours(self, rid: str, raw: bytes) -> Plan:
        """The plan as this controller's key signed it: the one in Redis, or,
        when that was changed (it no longer verifies), the copy in the
        release's record."""
        key = self.f.signing_key()
        record = self.record(rid) or {}
        copy = record.get("plan")
        for text in (raw, copy.encode() if isinstance(copy, str) else None):
            try:
                plan = parse(text, f"release {rid}")
                verify(key.public_key(), plan, f"release {rid}", now=0.0)
                return plan
            except FleetError as exc:
                why = str(exc)
        raise FleetError(f"release {rid}: no copy of its plan verifies with this key ({why})")

    def prune(self, keep: int = KEEP, *, now: float | None = None) -> list[str]:
        """Clean old releases out of Redis (each ``publish`` does): beyond the
        newest ``keep`` plans, every plan that is over (cancelled, aborted, or
        planned with its last host's time ``GRACE`` s past; a record that does
        not parse, which no host acts on) goes, with its record and every
        host's report on it.  A plan still to switch, or within its grace (a
        host restarted just after the time converges to it), stays whatever
        its age.  The ids removed."""
        import redis

        from ._release_adopt import adopt_due

        k, now = self.f.keys, time.time() if now is None else now
        key = releases_key(k)
        try:  # a release no controller adopted (--no-wait) is adopted first, or kept (R4)
            left = adopt_due(self, now)
        except FleetError as exc:
            log.warning("releases not cleaned out this time: %s", exc)
            return []

        def attempt() -> list[str] | None:
            with self.f.r.pipeline(transaction=True) as pipe:
                pipe.watch(key)  # a plan written meanwhile: try again at the next publish
                raw: dict[Any, Any] = pipe.hgetall(key)
                if len(raw) <= keep:
                    return []
                ranked = []  # (newest first by rev, id as stored, over?)
                for id_b, value in raw.items():
                    rid = id_b.decode("utf-8", "replace")
                    try:
                        plan = parse(value, f"release {rid[:40]}")
                    except FleetError:
                        ranked.append((-1, id_b, True))  # garbage: no host acts on it
                        continue
                    over = plan.state != "planned" or (
                        now >= plan.last + GRACE and plan.id not in left
                    )
                    ranked.append((plan.rev, id_b, over))
                ranked.sort(key=lambda e: e[0], reverse=True)
                gone = [rid for _, rid, over in ranked[keep:] if over]
                if not gone:
                    return []
                listed: set[Any] = pipe.smembers(k.hosts)
                hosts = {i.decode("utf-8", "replace") for i in listed}
                pipe.multi()
                pipe.hdel(key, *gone)
                for rid in gone:
                    pipe.delete(_record_key(self.f, rid.decode("utf-8", "replace")))
                    for host in hosts:
                        pipe.hdel(report_key(k, host), rid)
                pipe.execute()
                return [rid.decode("utf-8", "replace") for rid in gone]

        try:
            gone: list[str] = self.f._call("clean out old releases", attempt)
        except (FleetError, redis.exceptions.WatchError) as exc:
            log.warning("releases not cleaned out this time: %s", exc)
            return []
        if gone:
            log.info("cleaned out %d old release(s): %s", len(gone), ", ".join(gone[:5]))
        return gone

    # -- records --------------------------------------------------------------------------
    def _reports(self, rid: str, also: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """Each host's report on release ``rid``: every host of the fleet's set
        and ``also`` (the hosts the release waits for), those that wrote one."""
        k = self.f.keys
        listed = self.f._call("list hosts", lambda: self.f.r.smembers(k.hosts))
        ids = sorted({i.decode("utf-8", "replace") for i in listed} | set(also))

        def read() -> list[Any]:
            pipe = self.f.r.pipeline(transaction=False)
            for host in ids:
                pipe.hget(report_key(k, host), rid)
            return pipe.execute() if ids else []

        out = {}
        for host, value in zip(ids, self.f._call("read reports", read), strict=True):
            if value is not None:
                out[host] = parse_host_report(value, f"report of {host} on release {rid}")
        return out

    def record(self, rid: str) -> dict[str, Any] | None:
        raw = self.f._call("read release", lambda: self.f.r.get(_record_key(self.f, rid)))
        try:
            rec = json.loads(raw) if raw else None
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None

    def _save(self, rec: dict[str, Any]) -> None:
        body = json.dumps({**rec, "updated_at": time.time()})
        self.f._call("write release", lambda: self.f.r.set(_record_key(self.f, rec["id"]), body))


_ID = re.compile(r"[0-9a-f]{12}")


def _record_key(f: Fleet, rid: str) -> str:
    return f"{f.keys.prefix}release:{rid}"


def _cause(rep: dict[str, Any]) -> str:
    plugin, error = rep.get("plugin"), str(rep.get("error") or rep.get("state"))
    return error if not plugin or error.startswith(f"{plugin}:") else f"{plugin}: {error}"


def overview(f: Fleet) -> list[dict[str, Any]]:
    """Every release plan in the fleet with each host's state (``status``):
    newest first; a plan that does not parse is listed with its error."""
    k = f.keys
    raw = f._call("read releases", lambda: f.r.hgetall(releases_key(k)))
    out = []
    for id_b, value in raw.items():
        rid = id_b.decode("utf-8", "replace")[:40]
        ctl = ReleaseController(f)
        try:
            plan = parse(value, f"release {rid}")
        except FleetError as exc:
            hosts = ctl._reports(rid) if _ID.fullmatch(rid) else {}
            out.append({"id": rid, "state": "invalid", "error": str(exc), "hosts": hosts})
            continue
        entry = {
            "id": plan.id,
            "state": plan.state,
            "reason": plan.reason,
            "builds": plan.digests,
            "at": plan.at,
            "deadline": plan.deadline,
            "rev": plan.rev,
            "canary": plan.canary,
            "hosts": ctl._reports(plan.id),
        }
        out.append(entry)
    return sorted(out, key=lambda e: -float(e.get("at") or 0))
