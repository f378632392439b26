"""The rollout controller: drives one plugin's rollout step by step over the
fleet's Redis, watches the hosts' reports, bakes, and reverts on failure.
``Fleet.rollout`` (and ``hotload fleet rollout``) run one to the end."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import FleetError, LockLost, RolloutFailed
from . import _history
from ._connection import describe_error, redis_errors
from ._converge import Tally, classify, gone_why, judged, promoted
from ._schema import (
    MAX_BAKE,
    CanaryPlan,
    Keys,
    Rule,
    check_name,
    check_rollout_record,
    matches,
    new_id,
    parse_desired_record,
    pick,
    rules_json,
    selector,
    selector_text,
)

if TYPE_CHECKING:
    import redis as redis_mod

log = logging.getLogger(__name__)

PROGRESS_AFTER = 1.0  # seconds a wait lasts before it says whom it waits for
PROGRESS_EVERY = 3.0  # seconds between two such lines while nothing changes
IDLE_GRACE = 5.0  # seconds past its bake an idle host's agent takes to promote (+ a report)


class FleetStore(Protocol):
    """What a controller reads and writes through its ``Fleet`` (which is
    one).  Named here rather than imported: ``Fleet.rollout`` makes a
    controller, so the import goes one way only, the client to this module."""

    r: redis_mod.Redis
    keys: Keys

    def _call(self, what: str, fn: Callable[[], Any]) -> Any: ...
    def builds(self, digest: str) -> dict[str, Any]: ...
    def desired(self, plugin: str) -> tuple[int, list[Rule]]: ...
    def resolve(self, plugin: str, ref: str) -> str: ...
    def set_desired(
        self, plugin: str, rules: list[Rule], *, min_rev: int = 0, revision: int | None = None
    ) -> int: ...
    def hosts(
        self, plugin: str | None = None, *, also: Iterable[str] = ()
    ) -> list[dict[str, Any]]: ...
    def rollout_record(self, plugin: str) -> dict[str, Any] | None: ...
    def trusted_rollout(self, plugin: str) -> dict[str, Any] | None: ...
    def save_rollout(self, rec: dict[str, Any]) -> None: ...
    def resign(self, plugin: str | None = None) -> dict[str, float]: ...
    def signed_by_us(
        self, plugin: str, rec: dict[str, Any], rev: int, rules: list[Rule]
    ) -> bool: ...


class _Abort(Exception):
    """Internal: the rollout must be aborted for ``reason``; ``first``: the
    first failed host and why (the judge's verdict), for the record's reason
    (the command prints every host's error once, after the progress lines)."""

    def __init__(self, reason: str, first: str = "") -> None:
        super().__init__(reason)
        self.first = first


class Controller:
    """Drives one plugin's rollout: writes the desired rules step by step,
    watches the hosts' reports, bakes, and reverts on failure.

    All of its state is the ``rollout:<plugin>`` record, saved at every
    change, so another process can ``resume`` it.  The ``lock:<plugin>`` key
    (redis-py's ``Lock``: ``SET NX PX`` plus a token check) is held for
    ``lock_ttl`` and renewed at every tick; a dead controller's lock expires
    and ``resume`` takes over.
    """

    def __init__(
        self,
        fleet: FleetStore,
        plugin: str,
        *,
        lock_ttl: float = 30.0,
        poll: float = 1.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.f = fleet
        self.plugin = check_name(plugin)
        self.poll = poll
        self.lock_ttl = lock_ttl
        self.progress = progress or (lambda msg: log.info("%s: %s", plugin, msg))
        self.lock = fleet.r.lock(fleet.keys.lock(plugin), timeout=lock_ttl, blocking=False)
        self._ps: Any = None
        self._fleet_size = 0

    # -- entry points -------------------------------------------------------------------
    def start(
        self,
        digest: str,
        *,
        canary: str | Mapping[str, str],
        then: Iterable[str | Mapping[str, str]] = (),
        bake: float = 30.0,
        share: float = 1.0,
        key: int = 0,
        max_failures: int = 0,
        on_gone: str = "fail",
        step_timeout: float = 120.0,
        gone_grace: float = 5.0,
    ) -> dict[str, Any]:
        digest = self.f.resolve(self.plugin, digest)
        if on_gone not in ("fail", "wait"):
            raise FleetError(f"on_gone must be 'fail' or 'wait', not {on_gone!r}")
        if max_failures < 0 or not 0 <= bake <= MAX_BAKE or step_timeout <= 0:
            raise FleetError(
                f"max_failures must be >= 0, bake 0 to {MAX_BAKE:g} s, step_timeout > 0"
            )
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise FleetError(f"share must be in (0, 1], not {share!r}")
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 64:
            raise FleetError(f"key must be an argument's index, 0 to 63, not {key!r}")
        meta = self.f.builds(digest)
        if meta.get("name") != self.plugin:
            raise FleetError(f"build {digest} is plugin {meta.get('name')!r}, not {self.plugin!r}")
        steps = [selector(canary), *(selector(s) for s in then)]
        if steps[-1] != {}:
            steps.append({})
        self._acquire()
        try:
            rec = self.f.rollout_record(self.plugin)
            if rec is not None and rec.get("state") == "running":
                raise FleetError(
                    f"{self.plugin}: rollout {rec.get('id')} is in progress (step "
                    f"{rec.get('step', 0) + 1}); resume or abort it first"
                )
            live = [h for h in self.f.hosts(self.plugin) if h["alive"]]
            if not any(matches(steps[0], h["labels"]) for h in live):
                raise FleetError(
                    f"{self.plugin}: no live host matches the canary selector "
                    f"{selector_text(steps[0])}"
                )
            _, prev = self.f.desired(self.plugin)
            entries = _history.read(self.f, self.plugin)
            rec = {
                "id": new_id(),
                "revision": _history.next_revision(self.f, self.plugin),
                "from_revision": _history.current_revision(entries),
                "plugin": self.plugin,
                "digest": digest,
                "version": meta.get("version"),
                "prev_rules": rules_json(prev),
                "steps": steps,
                "step": 0,
                "phase": "apply",
                "bake": bake,
                "share": float(share),
                "key": key,
                "max_failures": max_failures,
                "on_gone": on_gone,
                "step_timeout": step_timeout,
                "gone_grace": gone_grace,
                "state": "running",
                "failures": {},
                "members": [],
                "expected": sorted(h["id"] for h in live),
                "started_at": time.time(),
                "owner": f"{socket.gethostname()}:{os.getpid()}",
            }
            self.f.save_rollout(rec)
            return self._drive(rec)
        finally:
            self._release()

    def resume(self) -> dict[str, Any]:
        self._acquire()
        try:
            rec = self.f.trusted_rollout(self.plugin)
            if rec is None or rec.get("state") != "running":
                state = rec.get("state") if rec else "none"
                raise FleetError(f"{self.plugin}: no rollout to resume (last state: {state})")
            check_rollout_record(rec)
            rec["owner"] = f"{socket.gethostname()}:{os.getpid()}"
            if rec.get("aborting"):  # its controller died reverting: revert, never re-apply
                outcome = self._revert(rec, str(rec["aborting"])[:500])
                raise RolloutFailed(f"{self.plugin}: rollout {rec['id']} aborted; {outcome}", rec)
            self.progress(f"resuming rollout {rec['id']} at step {rec['step'] + 1}")
            return self._drive(rec)
        finally:
            self._release()

    def abort(self, *, wait: float = 30.0) -> dict[str, Any]:
        """If no controller holds the lock, revert here; otherwise ask the
        one that does (``abort:<plugin>``) and wait for it to finish."""
        k = self.f.keys
        if self.lock.acquire(blocking=False):
            try:
                rec = self.f.trusted_rollout(self.plugin)
                if rec is None or rec.get("state") != "running":
                    raise FleetError(f"{self.plugin}: no rollout in progress to abort")
                check_rollout_record(rec)
                self._revert(rec, "aborted by operator")
                return rec
            finally:
                self._release()
        self.f._call("request abort", lambda: self.f.r.set(k.abort(self.plugin), "1", ex=600))
        self.f._call("wake", lambda: self.f.r.publish(k.reports, f"abort {self.plugin}"))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            rec = self.f.rollout_record(self.plugin)
            if rec is None or rec.get("state") != "running":
                return rec or {}
            time.sleep(0.1)
        raise FleetError(f"{self.plugin}: the rollout's controller did not abort within {wait}s")

    def rollback(self, *, to: int | None = None, step_timeout: float = 120.0) -> dict[str, Any]:
        """Put the fleet back on revision ``to`` (default: the one before the
        revision in force) and wait until every live host reports it."""
        if step_timeout <= 0:
            raise FleetError("step_timeout must be > 0")
        self._acquire()
        try:
            last = self.f.rollout_record(self.plugin)
            if last is not None and last.get("state") == "running":
                raise FleetError(
                    f"{self.plugin}: rollout {last.get('id')} is in progress; abort it (it "
                    f"goes back by itself) before rolling back"
                )
            now: list[Rule] = []
            with contextlib.suppress(FleetError):  # a garbled record: roll back anyway
                now = self.f.desired(self.plugin)[1]
            if to is None:
                _history.refuse_after_release(now, self.plugin)
            entries = _history.read(self.f, self.plugin)
            target = _history.previous(entries, self.plugin) if to is None else to
            rules = _history.rules_of(entries, target, self.plugin)
            base = _history.find(entries, target)
            rec: dict[str, Any] = {
                "id": new_id(),
                "action": "rollback",
                "plugin": self.plugin,
                "revision": _history.next_revision(self.f, self.plugin),
                "from": _history.current_revision(entries),
                "base": int(base["base"]) if base is not None else 0,
                "to": target,
                "rules": rules_json(rules),
                "step_timeout": step_timeout,
                "started_at": time.time(),
                "by": f"{socket.gethostname()}:{os.getpid()}",
            }
            desired = rules or [Rule({}, None)]
            what = _history.describe(rules)
            self.progress(f"rollback to revision {target} ({what})")
            rec["rev"] = self._retry(
                lambda: self.f.set_desired(self.plugin, desired, revision=rec["revision"])
            )
            scope = {h["id"] for h in self.f.hosts(self.plugin) if h["alive"]}
            back, not_back = self._converge_on(rec, desired, "rev", scope, what="rollback")
            rec["state"] = "failed" if not_back else "done"
            rec["hosts"] = back
            if not_back:
                rec["not_back"] = not_back
            _history.append(self.f, self.plugin, {k: v for k, v in rec.items() if k != "rev"})
            if last is not None and last.get("state") == "done":
                last["state"] = "rolled_back"
                self.f.save_rollout(last)
            if not_back:
                listed = ", ".join(f"{h} ({why})" for h, why in not_back.items())
                raise RolloutFailed(
                    f"{self.plugin}: rollback to revision {target}: {len(back)} host(s) on it; "
                    f"not back: {listed}",
                    rec,
                )
            self.progress(f"done: {len(back)} host(s) on revision {target} ({what})")
            return rec
        finally:
            self._release()

    # -- the lock -------------------------------------------------------------------------
    def _acquire(self) -> None:
        ok = self.f._call("take lock", lambda: self.lock.acquire(blocking=False))
        if not ok:
            raise FleetError(
                f"{self.plugin}: another controller holds {self.f.keys.lock(self.plugin)} "
                f"(one rollout per plugin at a time; it expires {self.lock_ttl:g}s after its "
                f"controller dies)"
            )

    def _release(self) -> None:
        import redis

        try:
            self.lock.release()
        except (redis.RedisError, OSError) as exc:
            log.info("%s: lock not released (%s); it expires by itself", self.plugin, exc)
        if self._ps is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                self._ps.close()
            self._ps = None

    def _renew(self) -> None:
        """Keep the lock; if it expired (Redis was away longer than its TTL),
        take it again unless another controller did."""
        import redis

        try:
            self.lock.reacquire()
        except redis.exceptions.LockNotOwnedError:
            if not self.f._call("take lock", lambda: self.lock.acquire(blocking=False)):
                raise LockLost(
                    f"{self.plugin}: lost the rollout lock to another controller; stopping"
                ) from None
        except (redis.RedisError, OSError) as exc:
            raise FleetError(f"{self.plugin}: renew lock: {describe_error(exc)}") from None

    # -- driving --------------------------------------------------------------------------
    def _drive(self, rec: dict[str, Any]) -> dict[str, Any]:
        steps = rec["steps"]
        try:
            for i in range(rec["step"], len(steps)):
                fresh = i != rec["step"] or rec["phase"] == "apply" or "rev" not in rec
                rec["step"] = i
                if fresh:
                    rec["phase"] = "apply"  # members stay: each step's group holds the last's
                    rec["missing"] = {}
                    rules = self._rules(rec, i)
                    rec["rev"] = self._retry(
                        partial(
                            self.f.set_desired, self.plugin, rules, revision=rec.get("revision")
                        )
                    )
                    self._retry(partial(self.f.save_rollout, rec))
                self.progress(
                    f"step {i + 1}/{len(steps)}: {selector_text(steps[i])} -> "
                    f"{rec['digest'][:12]} ({rec.get('version')})"
                )
                self._wait_step(rec, i, bake=False)
                rec["phase"] = "bake"
                self._retry(lambda: self.f.save_rollout(rec))
                bake = self._bake_left(rec, i)
                self._wait_step(rec, i, bake=bake)
        except _Abort as exc:
            outcome = self._revert(rec, str(exc), exc.first)
            hosts = ", ".join(f"{h}: {e}" for h, e in rec["failures"].items()) or "none"
            raise RolloutFailed(
                f"{self.plugin}: rollout {rec['id']} aborted ({exc}); {outcome}. Failures: {hosts}",
                rec,
            ) from None
        final = [Rule({}, rec["digest"])]
        rec["rev"] = self._retry(
            lambda: self.f.set_desired(self.plugin, final, revision=rec.get("revision"))
        )
        rec["state"] = "done"
        rec["finished_at"] = time.time()
        self._retry(lambda: self.f.save_rollout(rec))
        self._record(rec, final)
        live = rec.get("live_hosts") or []
        self.progress(
            f"done: {len(live)} host(s) run {rec['digest'][:12]} ({rec.get('version')})"
            + (f"; gone, not counted: {', '.join(rec['unseen'])}" if rec.get("unseen") else "")
        )
        return rec

    def _bake_left(self, rec: dict[str, Any], step: int) -> bool:
        """Whether the step still bakes once live: not when every host of it
        was promoted by its in-host judge (the judge baked it, comparing it
        with the build before on the same traffic); a host that took the
        build by a plain reload bakes here, judged by its health."""
        where = f"step {step + 1}/{len(rec['steps'])}"
        live, canaried = rec.get("live_hosts") or [], set(rec.get("promoted") or [])
        if _plan(rec) is not None and live and canaried >= set(live):
            self.progress(
                f"{where}: live, {len(live)} host(s) promoted by their in-host judge "
                f"({rec['bake']:g}s bake each)"
            )
            return False
        if rec["bake"] > 0:
            self.progress(f"{where}: live, baking {rec['bake']:g}s")
        return True

    def _rules(self, rec: dict[str, Any], step: int) -> list[Rule]:
        """The step's rules: the new build for every step so far (taken as a
        judged canary), then the rules from before the rollout (plain: going
        back is never judged)."""
        plan = _plan(rec)
        new = [Rule(dict(m), rec["digest"], plan) for m in rec["steps"][: step + 1]]
        prev = [Rule(r["match"], r["digest"]) for r in rec["prev_rules"]]
        return new + (prev or [Rule({}, None)])

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """Run a Redis write, riding out an outage (Redis restarting) for up
        to the step timeout."""
        deadline = time.monotonic() + 120.0
        while True:
            try:
                return fn()
            except FleetError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("%s: %s; retrying", self.plugin, exc)
                time.sleep(min(self.poll, 0.5))

    def _wait_step(self, rec: dict[str, Any], step: int, *, bake: bool) -> None:
        """Return when every host of the step's group reports the digest live
        (and, with ``bake``, kept it for the bake time); raise ``_Abort`` when
        the failures exceed the budget or an operator asks.  A host still
        pending ``step_timeout`` after the phase began counts as failed.
        While it waits it says who it waits for, every few seconds."""
        started = time.monotonic()
        bake_time = rec["bake"] if bake else 0.0
        plan = _plan(rec)
        # a canary takes its bake before its host reports live: the wait allows for it
        timeout = rec["step_timeout"] + (plan.bake + IDLE_GRACE if plan and not bake else 0.0)
        last = 0.0
        said: tuple[float, frozenset[str]] = (started, frozenset())
        where = f"step {step + 1}/{len(rec['steps'])}"
        while True:
            # one evaluation reads 3 keys per host: wake-ups from a burst of
            # reports are coalesced so that a big fleet costs O(hosts) per
            # gap, not per report (50 hosts: 50 ms; 10,000 hosts: 1 s)
            gap = max(0.05, 1e-4 * self._fleet_size) - (time.monotonic() - last)
            if gap > 0:
                time.sleep(gap)
            last = time.monotonic()
            try:
                self._renew()
                self._check_abort()
                self._keep_desired(rec, self._rules(rec, step))
                tally = self._evaluate(rec, step)
                self.f.save_rollout(rec)
            except LockLost:
                raise
            except FleetError as exc:  # Redis away: hosts keep serving; wait for it
                log.warning("%s: %s; waiting for Redis", self.plugin, exc)
                rec["missing"] = {}  # what we could not see does not count as gone
                self._ps = None
                time.sleep(min(self.poll, 0.5))
                continue
            elapsed = time.monotonic() - started
            if len(rec["failures"]) > rec["max_failures"]:
                first, why = next(iter(rec["failures"].items()))
                raise _Abort(
                    f"{len(rec['failures'])} failure(s), more than --max-failures "
                    f"{rec['max_failures']}",
                    f"{first}: {str(why)[:400]}",
                )
            pending = tally.pending
            if elapsed >= bake_time and not pending:
                return
            if pending and elapsed >= timeout:
                for host_id in pending:
                    rec["failures"][host_id] = (
                        f"did not report {rec['digest'][:12]} live within {timeout:g}s"
                    )
                continue
            said = self._say_waiting(where, tally, said)
            self._sleep(
                min(self.poll, max(0.01, bake_time - elapsed)) if not pending else self.poll
            )

    def _say_waiting(
        self, where: str, tally: Tally, said: tuple[float, frozenset[str]]
    ) -> tuple[float, frozenset[str]]:
        """A progress line once a wait passes ``PROGRESS_AFTER`` seconds: again
        when the hosts waited for change, and every ``PROGRESS_EVERY``."""
        when, who = said
        now = time.monotonic()
        pending = frozenset(tally.pending)
        if not pending:
            return (now, pending)
        if now - when >= PROGRESS_EVERY or (pending != who and now - when >= PROGRESS_AFTER):
            self.progress(f"{where}: {tally.waiting()}")
            return (now, pending)
        return said

    def _keep_desired(self, rec: dict[str, Any], rules: list[Rule], rev_key: str = "rev") -> None:
        """Write the rules again when Redis lost them (a ``FLUSHALL``, a
        restart without its data) or holds something else: hosts follow
        ``desired``, so a rollout whose rules vanished would wait on nothing.
        Re-sign them once half their validity has passed: a long rollout's
        decision must not expire under the hosts that have yet to act on it."""
        k = self.f.keys
        raw = self.f._call("read desired", lambda: self.f.r.hget(k.desired, self.plugin))
        try:
            found, rev, read = (
                parse_desired_record(raw, self.plugin) if raw is not None else ({}, None, [])
            )
        except FleetError:
            found, rev, read = {}, None, []  # garbage: write ours again
        if rev is not None and not self.f.signed_by_us(self.plugin, found, rev, read):
            rev = None  # our rev, other contents (changed in Redis): write ours again
        if rev == rec.get(rev_key):
            signed, expires = found.get("signed_at"), found.get("expires_at")
            if not isinstance(signed, (int, float)) or not isinstance(expires, (int, float)):
                return
            if time.time() < (signed + expires) / 2:
                return
            log.info("%s: re-signing the desired state (half its validity passed)", self.plugin)
            try:
                self.f.resign(self.plugin)
                return
            except FleetError as exc:  # not ours any more (changed in Redis): write it anew
                log.warning("%s: %s", self.plugin, exc)
        self.progress(
            f"the desired state of {self.plugin} is not the one written (rev {rev} in Redis, "
            f"{rec.get(rev_key)} written: flushed, or restarted without its data): writing it again"
        )
        rec[rev_key] = self.f.set_desired(
            self.plugin,
            rules,
            min_rev=int(rec.get(rev_key) or 0) + 1,
            revision=rec.get("revision"),
        )

    def _evaluate(self, rec: dict[str, Any], step: int) -> Tally:
        """Classify the step's hosts; record failures; the tally (pending ids
        and why).  The group is every host matching a step so far, every host
        seen in it before (``members``: one whose registration vanished is
        still waited for) and, at a ``*`` step, every host alive when the
        rollout began (``expected``)."""
        steps = rec["steps"][: step + 1]
        rules = self._rules(rec, step)
        failures = rec["failures"]
        members = set(rec["members"])
        expected = set(rec.get("expected") or [])
        if {} in steps:
            members |= expected
        missing = rec.setdefault("missing", {})  # host -> when first seen gone
        now = time.time()
        tally = Tally()
        unseen = []
        hosts = self.f.hosts(self.plugin, also=members | expected)
        self._fleet_size = len(hosts)
        canaried = []
        for h in hosts:
            hid = h["id"]
            if hid in failures:
                continue
            if h.get("left"):  # it left the fleet cleanly: nothing to wait for
                if hid in members or hid in expected:
                    self.progress(f"{hid} left the fleet")
                members.discard(hid)
                expected.discard(hid)
                continue
            if not h["alive"]:
                if hid not in members:
                    unseen.append(hid)
                    continue
                since = missing.setdefault(hid, now)
                why = gone_why(now - since, bool(h.get("unlisted")))
                if rec["on_gone"] == "fail" and now - since >= rec.get("gone_grace", 0):
                    failures[hid] = f"host vanished mid-step ({why})"
                else:
                    tally.pending[hid] = why
                continue
            missing.pop(hid, None)
            if not any(matches(s, h["labels"]) for s in steps):
                continue
            members.add(hid)
            state, why = classify(h, self.plugin, rules, rec.get("rev", 0))
            rule = pick(rules, h["labels"])
            if state == "done" and rule is not None and rule.digest is not None:
                # live on the build: did its judge promote it, and is it healthy there?
                state, why = judged(h, self.plugin, rule)
                if state == "done" and promoted(h, self.plugin, rule.digest):
                    canaried.append(hid)
            if state == "done":
                tally.done.append(hid)
            elif state == "refused":
                failures[hid] = why
            else:
                tally.pending[hid] = why
        rec["members"] = sorted(members)
        rec["expected"] = sorted(expected)
        rec["live_hosts"] = sorted(tally.done)
        rec["promoted"] = sorted(canaried)
        rec["unseen"] = sorted(unseen)
        return tally

    def _check_abort(self) -> None:
        k = self.f.keys
        if self.f._call("read abort", lambda: self.f.r.delete(k.abort(self.plugin))):
            raise _Abort("aborted by operator")

    def _sleep(self, seconds: float) -> None:
        """Wait for a report (``reports`` channel) or ``seconds``."""
        try:
            if self._ps is None:
                self._ps = self.f.r.pubsub(ignore_subscribe_messages=True)
                self._ps.subscribe(self.f.keys.reports)
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                if self._ps.get_message(timeout=left) is not None:
                    return
        except redis_errors():
            self._ps = None
            time.sleep(seconds)

    def _revert(self, rec: dict[str, Any], reason: str, first: str = "") -> str:
        """Put the rules back as they were before the rollout and wait (at
        most ``step_timeout``) until every host of the rollout reports them
        again; returns what happened, as the last progress line says it.
        The record's reason names the first failed host and why."""
        self.progress(f"aborting: {reason}")
        prev = [Rule(r["match"], r["digest"]) for r in rec["prev_rules"]] or [Rule({}, None)]
        if not rec.get("aborting"):  # a controller killed from here on is resumed into the revert
            rec["aborting"] = reason
            self._retry(lambda: self.f.save_rollout(rec))
        rec["revert_rev"] = self._retry(
            lambda: self.f.set_desired(self.plugin, prev, revision=rec.get("from_revision"))
        )
        rec["state"] = "aborted"
        rec["reason"] = f"{first}; {reason}" if first else reason
        rec["finished_at"] = time.time()
        self._retry(lambda: self.f.save_rollout(rec))
        scope = set(rec["members"])
        back, not_back = self._converge_on(
            rec, prev, "revert_rev", scope, also_running=rec["digest"], what="aborting"
        )
        if not_back:
            rec["not_reverted"] = not_back
        self._retry(lambda: self.f.save_rollout(rec))
        self._record(rec, prev)
        outcome = f"{len(back)} host(s) back on the previous build"
        if not_back:
            outcome += "; not back: " + ", ".join(f"{h} ({why})" for h, why in not_back.items())
        self.progress(f"aborted: {outcome}")
        return outcome

    def _record(self, rec: dict[str, Any], rules: list[Rule]) -> None:
        """The rollout's entry in the plugin's history (a rollout started
        before revisions existed has none)."""
        if not isinstance(rec.get("revision"), int):
            return
        done = rec["state"] == "done"
        entries = _history.read(self.f, self.plugin)
        start = _history.find(entries, int(rec.get("from_revision") or 0))
        entry = {
            "revision": rec["revision"],
            "action": "rollout",
            "state": rec["state"],
            "rules": rules_json(rules),
            "digest": rec["digest"],
            "version": rec.get("version"),
            "from": int(rec.get("from_revision") or 0),
            "base": rec["revision"] if done else int((start or {}).get("base", 0)),
            "to": None,
            "rollout": rec["id"],
            "by": rec.get("owner"),
            "started_at": rec.get("started_at"),
            "finished_at": rec.get("finished_at"),
        }
        if rec.get("reason"):
            entry["reason"] = rec["reason"]
        try:
            self._retry(lambda: _history.append(self.f, self.plugin, entry))
        except FleetError as exc:  # the rollout itself ended; only its entry is lost
            log.warning(
                "%s: history entry of revision %s not written: %s",
                *(self.plugin, rec["revision"], exc),
            )

    def _converge_on(
        self,
        rec: dict[str, Any],
        rules: list[Rule],
        rev_key: str,
        scope: set[str],
        *,
        also_running: str | None = None,
        what: str,
    ) -> tuple[list[str], dict[str, str]]:
        """Wait (at most ``step_timeout``) until every live host of ``scope``
        (and every one still reporting ``also_running``) reports what
        ``rules`` ask of it.  Returns the hosts that do and, for the others,
        why not: refused (their error), gone, or no report in time.  A gone
        host is not waited for: it cannot report."""
        deadline = time.monotonic() + float(rec.get("step_timeout", 60.0))
        said: tuple[float, frozenset[str]] = (time.monotonic(), frozenset())
        while True:
            try:
                self._renew()
                self._keep_desired(rec, rules, rev_key)
                hosts = self.f.hosts(self.plugin, also=scope)
            except LockLost:
                raise
            except FleetError as exc:
                if time.monotonic() >= deadline:
                    return [], {h: f"Redis unreachable: {exc}" for h in sorted(scope)}
                time.sleep(min(self.poll, 0.5))
                continue
            tally, not_back = Tally(), {}
            for h in hosts:
                hid = h["id"]
                running = h["plugins"].get(self.plugin, {}).get("digest")
                outside = hid not in scope and (also_running is None or running != also_running)
                if h.get("left") or outside:
                    continue
                if not h["alive"]:
                    if h.get("unlisted"):  # Redis lost its registration: it comes back
                        tally.pending[hid] = "registration gone from Redis"
                    elif hid in scope:
                        not_back[hid] = "gone: no heartbeat"
                    continue
                state, why = classify(h, self.plugin, rules, rec[rev_key])
                if state == "done":
                    tally.done.append(hid)
                elif state == "refused":
                    not_back[hid] = why
                else:
                    tally.pending[hid] = why
            if not tally.pending:
                return sorted(tally.done), not_back
            if time.monotonic() >= deadline:
                timeout = f"no report within {float(rec.get('step_timeout', 60.0)):g}s"
                return sorted(tally.done), {
                    **not_back,
                    **{h: f"{timeout} ({why})" for h, why in tally.pending.items()},
                }
            said = self._say_waiting(what, tally, said)
            self._sleep(self.poll)


def _plan(rec: dict[str, Any]) -> CanaryPlan | None:
    """How the rollout's hosts take the build: a judged canary with the
    rollout's share, key and bake (a record from before canaries: share 1,
    key 0); none with ``bake=0`` (a plain reload, judged by health)."""
    bake = rec.get("bake")
    if not isinstance(bake, (int, float)) or bake <= 0:
        return None
    share, key = rec.get("share", 1.0), rec.get("key", 0)
    share = float(share) if isinstance(share, (int, float)) and 0 < share <= 1 else 1.0
    key = key if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 64 else 0
    return CanaryPlan(share, key, max(0.01, min(float(bake), MAX_BAKE)))
