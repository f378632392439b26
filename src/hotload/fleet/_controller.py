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
from ._connection import describe_error, redis_errors
from ._schema import (
    Keys,
    Rule,
    check_digest,
    check_name,
    check_rollout_record,
    matches,
    new_id,
    rules_json,
    selector,
    selector_text,
)

if TYPE_CHECKING:
    import redis as redis_mod

log = logging.getLogger(__name__)


class FleetStore(Protocol):
    """What a controller reads and writes through its ``Fleet`` (which is
    one).  Named here rather than imported: ``Fleet.rollout`` makes a
    controller, so the import goes one way only, the client to this module."""

    r: redis_mod.Redis
    keys: Keys

    def _call(self, what: str, fn: Callable[[], Any]) -> Any: ...
    def builds(self, digest: str) -> dict[str, Any]: ...
    def desired(self, plugin: str) -> tuple[int, list[Rule]]: ...
    def set_desired(self, plugin: str, rules: list[Rule]) -> int: ...
    def hosts(self, plugin: str | None = None) -> list[dict[str, Any]]: ...
    def rollout_record(self, plugin: str) -> dict[str, Any] | None: ...
    def save_rollout(self, rec: dict[str, Any]) -> None: ...


class _Abort(Exception):
    """Internal: the rollout must be aborted for ``reason``."""


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
        max_failures: int = 0,
        on_gone: str = "fail",
        step_timeout: float = 120.0,
        gone_grace: float = 5.0,
    ) -> dict[str, Any]:
        check_digest(digest)
        if on_gone not in ("fail", "wait"):
            raise FleetError(f"on_gone must be 'fail' or 'wait', not {on_gone!r}")
        if max_failures < 0 or bake < 0 or step_timeout <= 0:
            raise FleetError("max_failures and bake must be >= 0, step_timeout > 0")
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
            rec = {
                "id": new_id(),
                "plugin": self.plugin,
                "digest": digest,
                "version": meta.get("version"),
                "prev_rules": rules_json(prev),
                "steps": steps,
                "step": 0,
                "phase": "apply",
                "bake": bake,
                "max_failures": max_failures,
                "on_gone": on_gone,
                "step_timeout": step_timeout,
                "gone_grace": gone_grace,
                "state": "running",
                "failures": {},
                "members": [],
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
            rec = self.f.rollout_record(self.plugin)
            if rec is None or rec.get("state") != "running":
                state = rec.get("state") if rec else "none"
                raise FleetError(f"{self.plugin}: no rollout to resume (last state: {state})")
            check_rollout_record(rec)
            rec["owner"] = f"{socket.gethostname()}:{os.getpid()}"
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
                rec = self.f.rollout_record(self.plugin)
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

    def rollback(self) -> dict[str, Any]:
        self._acquire()
        try:
            rec = self.f.rollout_record(self.plugin)
            if rec is None or rec.get("state") != "done":
                state = rec.get("state") if rec else "none"
                raise FleetError(
                    f"{self.plugin}: nothing to roll back (last rollout state: {state}); "
                    f"a running rollout is stopped with abort, an aborted one already went back"
                )
            check_rollout_record(rec)
            rules = [Rule(r["match"], r["digest"]) for r in rec["prev_rules"]]
            self.f.set_desired(self.plugin, rules or [Rule({}, None)])
            rec["state"] = "rolled_back"
            self.f.save_rollout(rec)
            self.progress(f"rolled back: {rules_json(rules) or 'hosts return to their own build'}")
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
                    rec["phase"] = "apply"
                    rec["members"] = []
                    rec["missing"] = {}
                    rules = self._rules(rec, i)
                    rec["rev"] = self._retry(partial(self.f.set_desired, self.plugin, rules))
                    self._retry(partial(self.f.save_rollout, rec))
                self.progress(
                    f"step {i + 1}/{len(steps)}: {selector_text(steps[i])} -> "
                    f"{rec['digest'][:12]} ({rec.get('version')})"
                )
                self._wait_step(rec, i, bake=False)
                rec["phase"] = "bake"
                self._retry(lambda: self.f.save_rollout(rec))
                if rec["bake"] > 0:
                    self.progress(f"step {i + 1}/{len(steps)}: live, baking {rec['bake']:g}s")
                self._wait_step(rec, i, bake=True)
        except _Abort as exc:
            self._revert(rec, str(exc))
            hosts = ", ".join(f"{h}: {e}" for h, e in rec["failures"].items()) or "none"
            raise RolloutFailed(
                f"{self.plugin}: rollout {rec['id']} aborted ({exc}); every host goes back to "
                f"the previous build. Failures: {hosts}",
                rec,
            ) from None
        self._retry(lambda: self.f.set_desired(self.plugin, [Rule({}, rec["digest"])]))
        rec["state"] = "done"
        rec["finished_at"] = time.time()
        self._retry(lambda: self.f.save_rollout(rec))
        self.progress(f"done: every host runs {rec['digest'][:12]} ({rec.get('version')})")
        return rec

    def _rules(self, rec: dict[str, Any], step: int) -> list[Rule]:
        new = [Rule(dict(m), rec["digest"]) for m in rec["steps"][: step + 1]]
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
        pending ``step_timeout`` after the phase began counts as failed."""
        started = time.monotonic()
        bake_time = rec["bake"] if bake else 0.0
        last = 0.0
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
                pending = self._evaluate(rec, step)
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
                raise _Abort(
                    f"{len(rec['failures'])} failure(s), more than --max-failures "
                    f"{rec['max_failures']}"
                )
            if elapsed >= bake_time and not pending:
                return
            if pending and elapsed >= rec["step_timeout"]:
                for host_id in pending:
                    rec["failures"][host_id] = (
                        f"did not report {rec['digest'][:12]} live within {rec['step_timeout']:g}s"
                    )
                continue
            self._sleep(
                min(self.poll, max(0.01, bake_time - elapsed)) if not pending else self.poll
            )

    def _evaluate(self, rec: dict[str, Any], step: int) -> list[str]:
        """Classify the step's hosts; record failures; return the pending ids."""
        steps = rec["steps"][: step + 1]
        digest, failures = rec["digest"], rec["failures"]
        members = set(rec["members"])
        missing = rec.setdefault("missing", {})  # host -> when first seen gone
        now = time.time()
        pending = []
        hosts = self.f.hosts(self.plugin)
        self._fleet_size = len(hosts)
        for h in hosts:
            hid = h["id"]
            if hid in failures:
                continue
            if not h["alive"]:
                if hid in members:
                    since = missing.setdefault(hid, now)
                    if rec["on_gone"] == "fail" and now - since >= rec.get("gone_grace", 0):
                        failures[hid] = "host vanished mid-step (heartbeat expired)"
                    else:
                        pending.append(hid)
                continue
            missing.pop(hid, None)
            if not any(matches(s, h["labels"]) for s in steps):
                continue
            members.add(hid)
            rep = h["plugins"].get(self.plugin) or {}
            if rep.get("state") == "live" and rep.get("digest") == digest:
                continue
            fresh = isinstance(rep.get("rev"), int) and rep["rev"] >= rec.get("rev", 0)
            refused = rep.get("state") == "invalid" or (
                rep.get("state") == "failed" and rep.get("target") == digest
            )
            if fresh and refused:
                failures[hid] = str(rep.get("error"))
            else:
                pending.append(hid)
        rec["members"] = sorted(members)
        return pending

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

    def _revert(self, rec: dict[str, Any], reason: str) -> None:
        """Put the rules back as they were before the rollout and wait (a
        bounded time) until no live host reports the aborted digest."""
        self.progress(f"aborting: {reason}")
        prev = [Rule(r["match"], r["digest"]) for r in rec["prev_rules"]]
        self._retry(lambda: self.f.set_desired(self.plugin, prev or [Rule({}, None)]))
        rec["state"] = "aborted"
        rec["reason"] = reason
        rec["finished_at"] = time.time()
        self._retry(lambda: self.f.save_rollout(rec))
        deadline = time.monotonic() + rec.get("step_timeout", 60.0)
        while time.monotonic() < deadline:
            try:
                still = [
                    h["id"]
                    for h in self.f.hosts(self.plugin)
                    if h["alive"]
                    and h["plugins"].get(self.plugin, {}).get("digest") == rec["digest"]
                ]
            except FleetError:
                still = ["?"]
            if not still:
                self.progress("aborted: every live host is back on the previous build")
                return
            self._sleep(self.poll)
        rec["not_reverted"] = still
        self._retry(lambda: self.f.save_rollout(rec))
        self.progress(f"aborted, but still on the aborted build: {', '.join(still)}")
