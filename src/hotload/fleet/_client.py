"""The operator's side of the fleet: ``Fleet``, one connection to a fleet's
Redis and everything an operator does with it (publish a build, read and
write the desired state, read the hosts' heartbeats and reports, and the
rollout commands, which run a ``Controller``), and the module-level API
(``from hotload import fleet``; ``fleet.publish(path)``, ``fleet.rollout(...)``).

The keys it reads and writes are laid out in ``_schema``; everything read back
is checked there before it is used.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from .._errors import FleetError
from . import _history
from ._canary import parse_report
from ._connection import DEFAULT_TIMEOUT, connect, describe_error, describe_url, redis_errors
from ._controller import Controller
from ._release_ctl import ReleaseController, overview
from ._schema import (
    MAX_BLOB,
    PREFIX,
    Keys,
    Rule,
    check_digest,
    check_labels,
    check_name,
    load_json,
    parse_desired,
    parse_desired_record,
    parse_health,
    rules_json,
    unhealthy,
)
from ._signing import (
    DEFAULT_EXPIRES,
    SIGN_KEY_ENV,
    check_rollout_seal,
    decision,
    load_private_key,
    local_signing_key,
    seal_rollout,
    sign_decision,
    signed_message,
    verify_decision,
)

if TYPE_CHECKING:
    import redis as redis_mod

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{6,63}")


# ---- the fleet: publish, desired state, status ---------------------------------------


class Fleet:
    """One connection to a fleet's Redis and everything an operator does
    with it.  The module-level functions (``fleet.publish`` ...) make one.

    Every desired state it writes is a decision signed with ``signing_key``
    (an Ed25519 private key: the object, PEM bytes or a PEM file's path;
    default ``$HOTLOAD_FLEET_SIGN_KEY``, else, for this user's embedded
    fleet, the key pair in the state directory, made on first use), valid
    for ``expires`` seconds (7 days; a running rollout re-signs, ``resign``
    otherwise).  Without a key a desired-state write fails, unless
    ``insecure=True``: unsigned, for hosts that run ``fleet_insecure=True``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        client: redis_mod.Redis | None = None,
        signing_key: Any = None,
        insecure: bool = False,
        expires: float = DEFAULT_EXPIRES,
    ) -> None:
        self.url = url
        self.where = describe_url(url)  # for messages: which Redis, no password
        self.keys = Keys(prefix)
        self.timeout = timeout
        self.insecure = insecure
        if expires <= 0:
            raise FleetError(f"expires must be > 0 seconds, not {expires!r}")
        self.expires = float(expires)
        self._embedded = client is None and not (url or os.environ.get("HOTLOAD_FLEET_REDIS"))
        self._key_arg = signing_key or os.environ.get(SIGN_KEY_ENV) or None
        self._key: Any = None  # loaded when first needed: status and history need none
        self.r = client if client is not None else connect(url, timeout=timeout)

    def close(self) -> None:
        self.r.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def signing_key(self, *, required: bool = True) -> Any:
        """The key this client signs with: given, from the variable, or this
        user's embedded fleet key (made now if there is none yet)."""
        if self._key is None and self._key_arg is not None:
            self._key = load_private_key(self._key_arg)
        if self._key is None and self._embedded and not self.insecure:
            self._key = local_signing_key()
        if self._key is None and required and not self.insecure:
            raise FleetError(
                f"Redis {self.where}: no signing key, and hosts act only on signed desired "
                f"states: pass signing_key= (--sign-key PEM, or ${SIGN_KEY_ENV}), the key whose "
                f"public half the hosts trust (hotload fleet keygen; Host(fleet_public_key=...)), "
                f"or insecure=True (--insecure) for a fleet whose hosts run fleet_insecure=True"
            )
        return self._key

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except redis_errors() as exc:
            raise FleetError(f"Redis {self.where}: {what}: {describe_error(exc)}") from None

    # -- publish -------------------------------------------------------------------
    def publish(
        self,
        path: str | os.PathLike[str],
        *,
        signing_key: Any = None,
        max_size: int = MAX_BLOB,
        publisher: str | None = None,
    ) -> str:
        """Store the build content-addressed and return its SHA-256 digest.
        Idempotent: publishing the same bytes again changes nothing (a blob
        found tampered under its digest is repaired).  A file that is not a
        loadable plugin with a descriptor is refused before upload."""
        from .._artifact import loader

        source = os.fspath(path)
        data = loader.read_source(source)
        if len(data) > max_size:
            raise FleetError(f"{source}: {len(data)} bytes is over the {max_size}-byte cap")
        desc, name, version, _ = loader.identify(data, source, name=None, declared=None)
        if desc is None:  # pragma: no cover - identify refuses a file without descriptor
            raise FleetError(f"{source}: no hotload descriptor")
        digest = hashlib.sha256(data).hexdigest()
        meta: dict[str, Any] = {
            "name": name,
            "version": version,
            "size": len(data),
            "sha256": digest,
            "publisher": publisher or f"{getpass.getuser()}@{socket.gethostname()}",
            "published_at": time.time(),
        }
        key = load_private_key(signing_key) if signing_key else self.signing_key(required=False)
        if key is not None:
            meta["signature"] = key.sign(signed_message(name, digest)).hex()
        k = self.keys
        existing = self._call("read blob", lambda: self.r.get(k.blob(digest)))
        if existing is None or hashlib.sha256(existing).hexdigest() != digest:
            if existing is not None:
                log.warning("%s: blob %s in Redis was tampered with: replaced", source, digest)
            self._call("store blob", lambda: self.r.set(k.blob(digest), data))
        old = self._meta(digest)
        sig = meta.get("signature")
        if old is None or old.get("name") != name or (sig and old.get("signature") != sig):
            self._call("store meta", lambda: self.r.set(k.meta(digest), json.dumps(meta)))
        self._call("index build", lambda: self.r.sadd(k.builds(name), digest))
        log.info("published %s %s (%d bytes) as %s", name, version, len(data), digest)
        return digest

    def _meta(self, digest: str) -> dict[str, Any] | None:
        raw = self._call("read meta", lambda: self.r.get(self.keys.meta(digest)))
        try:
            meta = load_json(raw, f"meta of {digest}")
        except FleetError:
            return None
        return meta if isinstance(meta, dict) else None

    def builds(self, digest: str) -> dict[str, Any]:
        """The metadata of a published build (FleetError if unknown)."""
        check_digest(digest)
        meta = self._meta(digest)
        if meta is None:
            raise FleetError(f"build {digest} was not published to this fleet")
        return meta

    def resolve(self, plugin: str, ref: str) -> str:
        """The digest a rollout names: ``ref`` is a SHA-256 digest, an
        unambiguous prefix of one (at least 6 hex digits, as status prints
        12) among the builds of ``plugin`` published here, or
        ``NAME@VERSION`` (``NAME`` must be ``plugin``).  FleetError when it
        matches none, or several (each named)."""
        ref = ref.strip()
        if _DIGEST.fullmatch(ref):
            return ref
        name, at, version = ref.rpartition("@")
        if at:
            if name and name != plugin:
                raise FleetError(f"{ref!r} names plugin {name!r}, not {plugin!r}")
            found = [m for m in self._published(plugin) if m.get("version") == version]
            what = f"version {version} of {plugin}"
        elif _PREFIX.fullmatch(ref):
            found = [m for m in self._published(plugin) if m["sha256"].startswith(ref)]
            what = f"a build of {plugin} whose digest starts with {ref}"
            if not found:
                raise FleetError(
                    f"{ref!r}: not a SHA-256 digest of a build of {plugin} published to this "
                    f"fleet, nor a prefix of one (hotload fleet history {plugin} lists them)"
                )
        else:
            raise FleetError(
                f"{ref!r} is not a SHA-256 digest (64 lowercase hex), a prefix of one (6 or "
                f"more), nor NAME@VERSION"
            )
        if not found:
            raise FleetError(f"no {what} was published to this fleet")
        if len(found) > 1:
            listed = ", ".join(
                f"{m['sha256'][:12]} ({m.get('version')}, published "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(m.get('published_at') or 0))})"
                for m in sorted(found, key=lambda m: m.get("published_at") or 0)
            )
            raise FleetError(f"{ref!r} is ambiguous: {len(found)} builds match: {listed}")
        return str(found[0]["sha256"])

    def _published(self, plugin: str) -> list[dict[str, Any]]:
        """The metadata of every build of ``plugin`` published here."""
        members = self._call("list builds", lambda: self.r.smembers(self.keys.builds(plugin)))
        digests = sorted(m.decode() for m in members if _DIGEST.fullmatch(m.decode("latin-1")))
        out = []
        for digest in digests:
            meta = self._meta(digest)
            if meta is not None and meta.get("name") == plugin:
                out.append({**meta, "sha256": digest})
        return out

    # -- desired state -----------------------------------------------------------------
    def desired(self, plugin: str) -> tuple[int, list[Rule]]:
        raw = self._call("read desired", lambda: self.r.hget(self.keys.desired, plugin))
        if raw is None:
            return 0, []
        return parse_desired(raw, plugin)

    def set_desired(
        self, plugin: str, rules: list[Rule], *, min_rev: int = 0, revision: int | None = None
    ) -> int:
        """Write the plugin's rules as a new signed decision (a new rev), bump
        ``gen`` and wake every agent.  ``min_rev``: the rev is at least this
        (a controller writing again what Redis lost keeps its revs above the
        ones hosts reported).  ``revision``: the rollout's or rollback's
        revision, kept in the record."""
        key = self.signing_key()
        # rev: above every rev written so far (gen counts writes, and is lifted
        # to each rev), readable even when the record it replaces is garbage, and
        # never below this clock in ms: after Redis lost its data, a new decision
        # still outranks the ones hosts accepted before
        gen = self._call("read gen", lambda: self.r.get(self.keys.gen))
        counted = (int(gen) if gen and gen.isdigit() else 0) + 1
        rev = max(counted, min_rev, int(time.time() * 1000))
        body: dict[str, Any] = {"rev": rev, "rules": rules_json(rules), "at": time.time()}
        if revision is not None:
            body["revision"] = revision
        if key is not None:
            body.update(sign_decision(key, plugin, rev, revision, rules, expires=self.expires))
        else:
            log.warning("desired %s rev %d written UNSIGNED (insecure=True)", plugin, rev)
        record = json.dumps(body)
        k = self.keys

        def write() -> None:
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(k.desired, plugin, record)
            if rev > counted:  # Redis lost gen (a flush): lift it so that gen = rev
                pipe.set(k.gen, rev - 1)
            pipe.incr(k.gen)
            pipe.publish(k.wake, plugin)
            pipe.execute()

        self._call("write desired", write)
        log.info("desired %s rev %d: %s", plugin, rev, rules_json(rules))
        return rev

    def signed_by_us(self, plugin: str, rec: dict[str, Any], rev: int, rules: list[Rule]) -> bool:
        """Whether a desired-state record read back is this client's signed
        decision (any record, when it writes unsigned); expiry aside."""
        key = self.signing_key(required=False)
        if key is None:
            return True
        try:
            verify_decision(key.public_key(), decision(rec, plugin, rev, rules), plugin, now=0.0)
        except FleetError:
            return False
        return True

    def resign(self, plugin: str | None = None) -> dict[str, float]:
        """Sign the desired state of ``plugin`` (default: every plugin that has
        one) again, unchanged but for a new ``signed_at`` and ``expires_at``
        (the same rev: hosts take it as the same decision, renewed), and wake
        the hosts.  Only a record that verifies with this client's key is
        re-signed; returns plugin -> new expiry."""
        key = self.signing_key()
        if key is None:
            raise FleetError("resign: insecure=True signs nothing")
        k = self.keys
        names = (
            [check_name(plugin)]
            if plugin is not None
            else sorted(
                n.decode("utf-8", "replace")
                for n in self._call("read desired", lambda: self.r.hkeys(k.desired))
            )
        )
        out: dict[str, float] = {}
        for name in names:
            out[name] = self._call("resign", partial(self._resign_one, name, key))
        return out

    def _resign_one(self, name: str, key: Any) -> float:
        import redis

        k = self.keys
        for _ in range(20):  # a desired write between the read and the write: read again
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(k.desired)
                    raw = pipe.hget(k.desired, name)
                    if not isinstance(raw, bytes):
                        raise FleetError(f"{name}: no desired state to re-sign")
                    rec, rev, rules = parse_desired_record(raw, name)
                    d = decision(rec, name, rev, rules)
                    try:
                        verify_decision(key.public_key(), d, name, now=0.0)
                    except FleetError as exc:
                        raise FleetError(
                            f"{name}: not re-signed: {exc}; write a new decision (rollout, "
                            f"rollback) instead"
                        ) from None
                    rec.update(
                        sign_decision(key, name, rev, d.revision, rules, expires=self.expires)
                    )
                    pipe.multi()
                    pipe.hset(k.desired, name, json.dumps(rec))
                    pipe.incr(k.gen)
                    pipe.publish(k.wake, name)
                    pipe.execute()
                except redis.WatchError:
                    continue
            log.info("desired %s rev %d re-signed until %s", name, rev, rec["expires_at"])
            return float(rec["expires_at"])
        raise FleetError(f"{name}: the desired state kept changing; not re-signed")

    # -- hosts and reports ---------------------------------------------------------------
    def hosts(self, plugin: str | None = None, *, also: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Every host that joined: its heartbeat record (or ``alive: False``
        when its heartbeat expired) and its per-plugin reports.  ``also``:
        host ids to read even when they are not in the set of hosts (a
        rollout's hosts: one that left says ``left``, one whose registration
        Redis lost is ``alive: False``)."""
        k = self.keys
        listed = {
            i.decode("utf-8", "replace")
            for i in self._call("list hosts", lambda: self.r.smembers(k.hosts))
        }
        ids = sorted(listed | set(also))

        def read() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for i in ids:
                pipe.get(k.host(i))
                pipe.pttl(k.host(i))
                if plugin is None:
                    pipe.hgetall(k.report(i))
                else:
                    pipe.hget(k.report(i), plugin)
            return pipe.execute() if ids else []

        raw = self._call("read hosts", read)
        out = []
        for n, host_id in enumerate(ids):
            beat, pttl, reports = raw[3 * n : 3 * n + 3]
            entry = self._host_entry(host_id, beat, pttl, reports, plugin)
            if host_id not in listed:
                entry["unlisted"] = True
            out.append(entry)
        return out

    def _host_entry(
        self, host_id: str, beat: bytes | None, pttl: int, reports: Any, plugin: str | None
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": host_id, "alive": False, "labels": {}}
        try:
            rec = load_json(beat, f"heartbeat of {host_id}")
            if isinstance(rec, dict) and rec.get("left"):
                entry["left"] = True  # it left the fleet cleanly
            elif isinstance(rec, dict):
                entry.update(
                    {k: rec[k] for k in ("pid", "machine", "hotload", "insecure") if k in rec}
                )
                entry["labels"] = check_labels(rec.get("labels", {}), f"labels of {host_id}")
                entry["alive"] = True
                ttl = rec.get("ttl")
                if isinstance(ttl, (int, float)):
                    entry["ttl"] = ttl
                if isinstance(ttl, (int, float)) and pttl >= 0:
                    entry["heartbeat_age"] = max(0.0, round(ttl - pttl / 1000, 3))
                health, bad = parse_health(rec.get("health"), f"health of {host_id}")
                entry["health"] = health
                entry["unhealthy"] = {n: why for n, h in health.items() if (why := unhealthy(h))}
                if bad:
                    entry["health_error"] = bad
        except FleetError as exc:
            entry["error"] = str(exc)
        if plugin is not None:
            reports = {plugin.encode(): reports} if reports is not None else {}
        entry["plugins"] = {}
        for name, value in (reports or {}).items():
            pname = name.decode("utf-8", "replace")
            try:
                rep = load_json(value, f"report of {host_id} for {pname}")
            except FleetError as exc:
                rep = {"error": str(exc)}
            if isinstance(rep, dict):
                entry["plugins"][pname] = _checked_report(rep)
        return entry

    def status(self, plugin: str | None = None) -> dict[str, Any]:
        """Hosts x plugins, the desired state and the rollouts: what
        ``hotload fleet status --json`` prints."""
        if plugin is not None:
            check_name(plugin)
        k = self.keys
        desired_raw = self._call("read desired", lambda: self.r.hgetall(k.desired))
        desired: dict[str, Any] = {}
        rollouts: dict[str, Any] = {}
        for name_b, raw in sorted(desired_raw.items()):
            name = name_b.decode("utf-8", "replace")
            if plugin is not None and name != plugin:
                continue
            try:
                found, rev, rules = parse_desired_record(raw, name)
                desired[name] = {"rev": rev, "rules": rules_json(rules)}
                for field in ("revision", "signed_at", "expires_at"):
                    if field in found:
                        desired[name][field] = found[field]
                desired[name]["signed"] = "signature" in found
            except FleetError as exc:
                desired[name] = {"error": str(exc)}
            rec = self.rollout_record(name)
            if rec is not None:
                rollouts[name] = rec
        releases = [
            r for r in overview(self) if plugin is None or plugin in (r.get("builds") or {})
        ]
        return {
            "hosts": self.hosts(plugin),
            "desired": desired,
            "rollouts": rollouts,
            "releases": releases,
        }

    def rollout_record(self, plugin: str) -> dict[str, Any] | None:
        raw = self._call("read rollout", lambda: self.r.get(self.keys.rollout(plugin)))
        try:
            rec = load_json(raw, f"rollout of {plugin}")
        except FleetError as exc:
            return {"plugin": plugin, "state": "invalid", "error": str(exc)}
        return rec if isinstance(rec, dict) else None

    def trusted_rollout(self, plugin: str) -> dict[str, Any] | None:
        """The rollout record, for a controller that will act on it (resume,
        abort): a running one must carry a controller's seal by this fleet's
        key (``insecure=True``: unchecked, as everything else)."""
        rec = self.rollout_record(plugin)
        if rec is not None and rec.get("state") == "running" and not self.insecure:
            check_rollout_seal(self.signing_key().public_key(), rec, plugin)
        return rec

    def save_rollout(self, rec: dict[str, Any]) -> None:
        rec["updated_at"] = time.time()
        key = self.signing_key(required=False)
        if key is not None:
            seal_rollout(key, rec)
        body = json.dumps(rec)
        self._call("write rollout", lambda: self.r.set(self.keys.rollout(rec["plugin"]), body))

    # -- rollouts -----------------------------------------------------------------------
    def rollout(
        self,
        plugin: str,
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
        lock_ttl: float = 30.0,
        poll: float = 1.0,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Drive a rollout to the end (blocking) and return its final record;
        raise ``RolloutFailed`` after an abort (the previous rules written
        back; its message says which hosts are back on the previous build).

        Each step's hosts take the build as an in-host canary beside the
        build they run: ``share`` of the keys (the argument ``key``), judged
        for ``bake`` seconds, and a host is live on the step once its judge
        promoted the build; ``bake=0``: a plain reload, judged by health."""
        self.adopt_releases(progress)  # its previous rules: after a --no-wait release (R1)
        ctl = Controller(self, plugin, lock_ttl=lock_ttl, poll=poll, progress=progress)
        return ctl.start(
            digest,
            canary=canary,
            then=then,
            bake=bake,
            share=share,
            key=key,
            max_failures=max_failures,
            on_gone=on_gone,
            step_timeout=step_timeout,
            gone_grace=gone_grace,
        )

    def resume(
        self,
        plugin: str,
        *,
        lock_ttl: float = 30.0,
        poll: float = 1.0,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Take over a rollout whose controller died (its lock expired) and
        drive it on from the step it had reached."""

        return Controller(self, plugin, lock_ttl=lock_ttl, poll=poll, progress=progress).resume()

    def abort(self, plugin: str, *, wait: float = 30.0, lock_ttl: float = 30.0) -> dict[str, Any]:
        """Stop the plugin's rollout and put every host back on the previous
        digest; works whether its controller is alive (it obeys) or dead."""

        return Controller(self, plugin, lock_ttl=lock_ttl).abort(wait=wait)

    def rollback(
        self,
        plugin: str,
        *,
        to: int | None = None,
        step_timeout: float = 120.0,
        lock_ttl: float = 30.0,
        poll: float = 1.0,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Put the fleet back on an earlier revision of the plugin (``to``;
        default: the one before the revision in force, see ``history``) and
        wait, at most ``step_timeout``, until every live host reports it;
        returns the rollback's record, or raises ``RolloutFailed`` naming
        each host that is not back and why."""

        self.adopt_releases(progress)  # a --no-wait release moved it: refused as after one
        ctl = Controller(self, plugin, lock_ttl=lock_ttl, poll=poll, progress=progress)
        return ctl.rollback(to=to, step_timeout=step_timeout)

    def adopt_releases(self, progress: Callable[[str], None] | None = None) -> set[str]:
        """Adopt into the desired states every release past its last host's
        time that no controller adopted (``--no-wait``, or its controller
        died); a rollout, a rollback and each release's publish do it first.
        The ids of those that could not be written (kept, tried again)."""
        from ._release_adopt import adopt_due

        return adopt_due(ReleaseController(self, progress=progress))

    def release(
        self,
        builds: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        at: float,
        deadline: float | None = None,
        hosts: str | Mapping[str, str] = "*",
        canary: str | Mapping[str, str] | None = None,
        bake: float = 60.0,
        wait: bool = True,
        poll: float = 0.5,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Switch several plugins on every host at the instant ``at`` (Unix
        seconds): a signed plan every host stages (``builds``: plugin ->
        digest, prefix or NAME@VERSION; pairs name a plugin twice only to be
        refused), cancelled everywhere when a host fails to stage or has not
        staged by ``deadline`` (default: a fifth of the lead before ``at``,
        0.5 to 60 s).  ``hosts``: the selector of the hosts that must stage
        it (every live host).  ``wait``: drive it to the end (the final
        record; ``RolloutFailed`` when cancelled), else return once the plan
        is written (``Fleet.release_status``, ``cancel_release``).  ``canary``:
        the selector of the hosts that switch at ``at`` and are judged for
        ``bake`` seconds; the others switch at ``at + bake`` only if no canary
        host regressed, failed or went silent (else every canary host rolls
        it back and the others drop it; ``RolloutFailed``)."""
        ctl = ReleaseController(self, poll=poll, progress=progress)
        rec = ctl.publish(builds, at=at, deadline=deadline, hosts=hosts, canary=canary, bake=bake)
        return ctl.drive(rec) if wait else rec

    def cancel_release(self, release_id: str, reason: str = "cancelled by hand") -> dict[str, Any]:
        """Cancel a planned release on every host before its time (a canary
        release: abort it before ``time + bake``, the canaries roll it back)."""
        return ReleaseController(self).cancel(release_id, reason)

    def release_status(self, release_id: str) -> dict[str, Any]:
        """One release: its plan's state and each host's (staged, failed,
        switched, cancelled)."""
        for r in overview(self):
            if r["id"] == release_id:
                return r
        raise FleetError(f"release {release_id}: no such release in this fleet")

    def history(self, plugin: str) -> list[dict[str, Any]]:
        """The plugin's revisions, oldest first: every finished rollout and
        rollback, with the desired state it left (``hotload fleet history``)."""
        check_name(plugin)
        return _history.read(self, plugin)


def _checked_report(rep: dict[str, Any]) -> dict[str, Any]:
    """A host's report with its ``canary`` checked (the controller decides a
    step on it): a malformed one is left out and named in ``canary_error``."""
    if "canary" in rep:
        canary, bad = parse_report(rep["canary"])
        if canary is None:
            rep.pop("canary")
        else:
            rep["canary"] = canary
        if bad:
            rep["canary_error"] = bad
    return rep


# ---- module-level API: ``from hotload import fleet`` ----------------------------------

_CLIENT_OPTIONS = ("signing_key", "insecure", "expires", "prefix", "timeout")


def _open(url: str | None, kw: dict[str, Any]) -> Fleet:
    """A ``Fleet`` on ``url``, taking its own options (``signing_key``,
    ``insecure``, ``expires``, ``prefix``, ``timeout``) out of ``kw``."""
    return Fleet(url, **{k: kw.pop(k) for k in _CLIENT_OPTIONS if k in kw})


def publish(path: str | os.PathLike[str], *, url: str | None = None, **kw: Any) -> str:
    """Store a build in the fleet's Redis; returns its SHA-256 digest."""
    with _open(url, kw) as f:
        return f.publish(path, **kw)


def status(*, url: str | None = None, plugin: str | None = None) -> dict[str, Any]:
    """Hosts x plugins, the desired state and the rollouts (``Fleet.status``)."""
    with Fleet(url) as f:
        return f.status(plugin)


def rollout(plugin: str, digest: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    """Drive a rollout to the end; the options are ``Fleet.rollout``'s, and
    ``Fleet``'s own (``signing_key``, ``insecure``, ``expires``)."""
    with _open(url, kw) as f:
        return f.rollout(plugin, digest, **kw)


def resume(plugin: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    """Take over a rollout whose controller died (``Fleet.resume``)."""
    with _open(url, kw) as f:
        return f.resume(plugin, **kw)


def abort(plugin: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    """Stop a rollout; every host back on the previous build (``Fleet.abort``)."""
    with _open(url, kw) as f:
        return f.abort(plugin, **kw)


def rollback(plugin: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    """The fleet back on an earlier revision, waited for (``Fleet.rollback``)."""
    with _open(url, kw) as f:
        return f.rollback(plugin, **kw)


def resign(plugin: str | None = None, *, url: str | None = None, **kw: Any) -> dict[str, float]:
    """Sign the desired state again with a new expiry (``Fleet.resign``):
    run it from a timer (cron) more often than ``expires`` (7 days)."""
    with _open(url, kw) as f:
        return f.resign(plugin)


def release(builds: Any, *, at: float, url: str | None = None, **kw: Any) -> dict[str, Any]:
    """Switch several plugins on every host at one instant (``Fleet.release``)."""
    with _open(url, kw) as f:
        return f.release(builds, at=at, **kw)


def cancel_release(release_id: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    """Cancel a planned release everywhere (``Fleet.cancel_release``)."""
    with _open(url, kw) as f:
        return f.cancel_release(release_id, **kw)
