"""What the fleet reads and writes, checked: the keys layout, the records,
rules and selectors, and the signature over a build.

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

import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ConfigError, FleetError, HotloadError

PREFIX = "hotload:"
MAX_BLOB = 64 * 1024 * 1024  # bytes: a plugin bigger than this is not a plugin
MAX_RECORD = 256 * 1024  # bytes of any JSON record read from Redis
SIGN_CONTEXT = b"hotload-fleet-v1\n"

_DIGEST = re.compile(r"[0-9a-f]{64}")
PLUGIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_LABEL = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


# ---- validation of everything that comes from Redis or the operator ----------------


def check_digest(value: object, where: str = "digest") -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise FleetError(f"{where}: {value!r:.80} is not a SHA-256 digest (64 lowercase hex)")
    return value


def check_name(value: object, where: str = "plugin name") -> str:
    if not isinstance(value, str) or not PLUGIN_NAME.fullmatch(value):
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


def selector(value: str | Mapping[str, str]) -> dict[str, str]:
    """A rollout step's selector, as the operator gave it (text or a mapping)."""
    return parse_selector(value) if isinstance(value, str) else check_labels(value, "selector")


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
    """One rule of a plugin's desired state: a host whose labels include every
    ``label: value`` of ``match`` runs ``digest``; the first rule that matches
    wins.  ``digest`` ``None`` sends the host back to what it ran before the
    fleet."""

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


# ---- the keys layout ------------------------------------------------------------------


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


# ---- the rollout record ---------------------------------------------------------------


def check_rollout_record(rec: dict[str, Any]) -> None:
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


# ---- signing ---------------------------------------------------------------------------


def signed_message(name: str, digest: str) -> bytes:
    """What a publisher signs: the plugin name and its digest (the digest
    binds the bytes; the name stops a signed build being used as another)."""
    return SIGN_CONTEXT + f"{name}\n{digest}".encode()


def _pem(key: Any, what: str, error: type[HotloadError]) -> bytes:
    """The PEM bytes of ``key`` (a file's path, or the bytes), or ``error``
    naming the key file and why it cannot be read (issue 19 item 10: a
    directory, a missing file or junk raised bare ``IsADirectoryError``,
    ``FileNotFoundError`` or ``ValueError``)."""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    if not isinstance(key, (str, os.PathLike)):
        raise error(f"{what}: expected a PEM file's path or PEM bytes, not {type(key).__name__}")
    try:
        return Path(key).read_bytes()
    except IsADirectoryError:
        raise error(f"{what} {os.fspath(key)}: is a directory, not a key file") from None
    except FileNotFoundError:
        raise error(f"{what} {os.fspath(key)}: no such file") from None
    except OSError as exc:
        raise error(f"{what} {os.fspath(key)}: cannot be read: {exc.strerror or exc}") from None


def _junk(key: Any, what: str, kind: str, exc: Exception) -> str:
    where = f" {os.fspath(key)}" if isinstance(key, (str, os.PathLike)) else f" {bytes(key)!r:.40}"
    cause = (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{what}{where}: not a PEM {kind} key ({cause})"


def load_private_key(key: Any) -> Any:
    """An Ed25519 private key object, or a PEM file path/bytes of one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    pem = _pem(key, "signing key", FleetError)
    try:
        obj = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise FleetError(_junk(key, "signing key", "private", exc)) from None
    if not isinstance(obj, Ed25519PrivateKey):
        raise FleetError(f"signing key {key!r:.80}: not an Ed25519 private key")
    return obj


def load_public_key(key: Any) -> Any:
    """An Ed25519 public key object, a PEM file path/bytes, or 64 hex
    digits; ``ConfigError`` naming the key file and why it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    what = "fleet_public_key"
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, str) and re.fullmatch(r"[0-9a-fA-F]{64}", key):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
    pem = _pem(key, what, ConfigError)
    try:
        obj = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_junk(key, what, "public", exc)) from None
    if not isinstance(obj, Ed25519PublicKey):
        raise ConfigError(f"{what} {key!r:.80}: not an Ed25519 public key")
    return obj
