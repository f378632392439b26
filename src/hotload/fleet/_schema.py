"""What the fleet reads and writes, checked: the keys layout, the records,
rules and selectors (what is signed, and how, is ``_signing``'s).

Redis is the only coordination layer, so an operator can read every piece of
state with ``redis-cli``.  All keys live under one prefix (``hotload:``):

``blob:<sha256>``     the build's bytes (content-addressed: the key *is* the digest)
``meta:<sha256>``     JSON: plugin name, version, size, publisher, time, optional signature
``hosts``             set of host ids that ever joined (``status`` shows dead ones as gone)
``host:<id>``         JSON heartbeat of a live host (labels, pid, machine, and since
                      schema 2 the health of each plugin's current version); expires
``report:<id>``       hash plugin -> JSON: live digest, seq, state, target, last error
``desired``           hash plugin -> JSON desired state: ordered rules ``{match, digest}``
                      (``canary``, ``release``: ``Group``), a signed decision (``_signing``)
``gen``               counter bumped on every change of ``desired`` (cheap poll)
``rollout:<plugin>``  JSON record of the plugin's current or last rollout
``lock:<plugin>``     redis-py ``Lock`` (SET NX PX) held by the controller that drives it
``abort:<plugin>``    set by ``abort`` from another terminal; the controller obeys it
``builds:<plugin>``   set of the digests published for the plugin (``rollout`` resolves
                      a digest prefix or ``NAME@VERSION`` among them)
``revision:<plugin>`` counter: the revision number of the next rollout or rollback
``history:<plugin>``  list of JSON entries, one per finished rollout or rollback

Channels: ``wake`` (a desired state changed: agents sync at once) and
``reports`` (an agent reported: controllers look at once).  Both are only
wake-ups; the keys are the truth, and every waiter also polls.

Nothing read from Redis is eval'ed or unpickled: records are JSON validated
field by field, digests must be 64 hex digits, blobs are size-capped and their
SHA-256 is checked against the key on every fetch.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import FleetError

if TYPE_CHECKING:
    from .._engine.lifecycle import VersionInfo

PREFIX = "hotload:"
MAX_BLOB = 64 * 1024 * 1024  # bytes: a plugin bigger than this is not a plugin
MAX_RECORD = 256 * 1024  # bytes of any JSON record read from Redis

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
class CanaryPlan:
    """How a host takes a rule's new build: as an in-host canary beside the
    build it runs, ``share`` of the keys (argument ``key``), judged for
    ``bake`` seconds (``host.canary(..., judge=Judge(bake=bake))``).  A rule
    without one is a plain reload: a rollout's revert, a rollback, the rule
    a finished rollout leaves, and every record written before canaries."""

    share: float = 1.0
    key: int = 0
    bake: float = 30.0

    def as_json(self) -> dict[str, Any]:
        return {"share": self.share, "key": self.key, "bake": self.bake}


MAX_BAKE = 86400.0  # seconds: a canary plan's bake beyond a day is a typo


def check_plan(value: object, where: str = "canary") -> CanaryPlan:
    """A rule's ``canary`` (signed with the rule, so a forged one fails the
    signature; checked anyway: an insecure host acts on unsigned ones)."""
    if not isinstance(value, dict) or set(value) - {"share", "key", "bake"}:
        raise FleetError(f"{where}: {value!r:.80} is not {{share, key, bake}}")
    share, key, bake = value.get("share", 1.0), value.get("key", 0), value.get("bake", 30.0)
    if type(share) not in (int, float) or not 0 < share <= 1:
        raise FleetError(f"{where}: share {share!r:.30} is not in (0, 1]")
    if type(key) is not int or not 0 <= key < 64:
        raise FleetError(f"{where}: key {key!r:.30} is not an argument's index (0 to 63)")
    if type(bake) not in (int, float) or not 0.01 <= bake <= MAX_BAKE:
        raise FleetError(f"{where}: bake {bake!r:.30} is not 0.01 to {MAX_BAKE:g} seconds")
    return CanaryPlan(float(share), key, float(bake))


@dataclass(frozen=True)
class Rule:
    """One rule of a plugin's desired state: a host whose labels include every
    ``label: value`` of ``match`` runs ``digest``; the first rule that matches
    wins.  ``digest`` ``None`` sends the host back to what it ran before the
    fleet.  ``canary``: take the build as a judged canary (``CanaryPlan``);
    None: a plain reload."""

    match: dict[str, str]
    digest: str | None  # None: this plugin should not be loaded by the fleet
    canary: CanaryPlan | None = None
    release: Group | None = None  # written by a fleet release: its plugins move together


@dataclass(frozen=True)
class Group:
    """A rule's ``release``: the fleet release (``id``) that decided it, and
    every plugin that release switched.  A host moves the plugins whose
    picked rules name the same release together, through its own release
    (``reload_together``), all or none (the Releases page)."""

    id: str
    plugins: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "plugins": list(self.plugins)}


_RELEASE_ID = re.compile(r"[0-9a-f]{12}")
MAX_GROUP = 64  # plugins in one release (as ``_release_plan.MAX_BUILDS``)


def check_group(value: object, where: str) -> Group:
    """A rule's ``release`` (signed with the rule; checked anyway)."""
    if not isinstance(value, dict) or set(value) != {"id", "plugins"}:
        raise FleetError(f"{where}: {value!r:.80} is not {{id, plugins}}")
    rid, names = value["id"], value["plugins"]
    if not isinstance(rid, str) or not _RELEASE_ID.fullmatch(rid):
        raise FleetError(f"{where}: id {rid!r:.40} is not 12 hex digits")
    if not isinstance(names, list) or not 0 < len(names) <= MAX_GROUP:
        raise FleetError(f"{where}: plugins is not a list of 1 to {MAX_GROUP} names")
    out = tuple(check_name(n, f"{where}: plugin") for n in names)
    if len(set(out)) != len(out):
        raise FleetError(f"{where}: a plugin is named twice")
    return Group(rid, out)


def parse_desired(raw: bytes | None, plugin: str) -> tuple[int, list[Rule]]:
    """The desired-state record of one plugin: ``{"rev": int, "rules": [...]}``."""
    _, rev, rules = parse_desired_record(raw, plugin)
    return rev, rules


def parse_desired_record(raw: bytes | None, plugin: str) -> tuple[dict[str, Any], int, list[Rule]]:
    """``parse_desired`` and the record itself (its signed fields are checked
    by ``_signing.decision``)."""
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
        plan = r.get("canary")
        if plan is not None:
            plan = check_plan(plan, f"{where}: rule {i}: canary")
            if digest is None:
                raise FleetError(f"{where}: rule {i}: a canary of no build")
        group = r.get("release")
        if group is not None:
            group = check_group(group, f"{where}: rule {i}: release")
            if digest is None or plugin not in group.plugins:
                raise FleetError(f"{where}: rule {i}: a release that does not switch {plugin}")
        match = check_labels(r.get("match", {}), f"{where}: rule {i}")
        rules.append(Rule(match, digest, plan, group))
    return rec, rev, rules


def pick(rules: Iterable[Rule], labels: Mapping[str, str]) -> Rule | None:
    """The first rule that matches the host's labels, or None."""
    return next((r for r in rules if matches(r.match, labels)), None)


def rules_json(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    """The rules as a record holds them, and as they are signed: a rule
    without a canary plan has no ``canary`` key, so the records signed
    before plans existed still verify, byte for byte."""
    return [_rule_json(r) for r in rules]


def _rule_json(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"match": rule.match, "digest": rule.digest}
    if rule.canary is not None:
        out["canary"] = rule.canary.as_json()
    if rule.release is not None:
        out["release"] = rule.release.as_json()
    return out


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

    def history(self, plugin: str) -> str:
        return f"{self.prefix}history:{plugin}"

    def revision(self, plugin: str) -> str:
        return f"{self.prefix}revision:{plugin}"

    def builds(self, plugin: str) -> str:
        return f"{self.prefix}builds:{plugin}"


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
    for field in ("members", "expected"):
        if not isinstance(rec.get(field), list) or not all(isinstance(h, str) for h in rec[field]):
            rec[field] = []
    if not isinstance(rec.get("missing"), dict):
        rec["missing"] = {}
    if not isinstance(rec.get("gone_grace"), (int, float)):
        rec["gone_grace"] = 5.0
    rec.setdefault("on_gone", "fail")
    rec.setdefault("phase", "apply")


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# ---- the heartbeat's health summary ------------------------------------------------------

#: The heartbeat's layout.  1 (no ``schema`` key): id, labels, ttl, pid, machine,
#: hotload.  2: adds ``health``.  A reader takes what it knows of any schema: a
#: newer host's heartbeat is read as far as this one understands it.
HEARTBEAT_SCHEMA = 2
MAX_HEALTH = 64  # plugins a heartbeat summarises (it stays one small record)
HEALTH_COUNTS = ("calls", "errors", "crashes", "timeouts", "service_errors")
_HEALTH_KEYS = ("seq", *HEALTH_COUNTS, "p99_us", "worker")
_MAX_COUNT = 2**64 - 1  # the routers' counters are 64-bit
_MAX_US = 1e12  # microseconds: 11 days, far past any call timeout
#: A plugin is unhealthy when its current version failed this share of its calls
#: (or crashed, or its worker stopped); below it, its errors are shown but not flagged.
UNHEALTHY_ERROR_RATE = 0.01


def health_of(info: VersionInfo) -> dict[str, Any]:
    """One plugin's current version in a few numbers: its ``seq``, ``calls``,
    ``errors``, ``crashes``, ``timeouts``, ``service_errors`` (host-service
    calls that failed), and ``p99_us`` (left out before
    any sampled call), and
    ``worker`` when an isolated version's worker is not running."""
    health: dict[str, Any] = {
        "seq": info.seq,
        "calls": info.served,
        "errors": info.errors,
        "crashes": info.crashes,
        "timeouts": info.timeouts,
        "service_errors": info.service_errors,
    }
    health = {k: v for k, v in health.items() if v is not None}  # metrics off: unknown
    if info.p99_us is not None and math.isfinite(info.p99_us):
        health["p99_us"] = round(float(info.p99_us), 1)
    if info.isolated and info.worker not in ("", "running"):
        health["worker"] = info.worker
    return health


def health_summary(infos: Iterable[VersionInfo | None]) -> dict[str, dict[str, Any]]:
    """The heartbeat's ``health``: plugin name -> ``health_of`` its current
    version, for at most ``MAX_HEALTH`` plugins."""
    out: dict[str, dict[str, Any]] = {}
    for info in infos:
        if info is not None and len(out) < MAX_HEALTH:
            out[info.name] = health_of(info)
    return out


def parse_health(value: object, where: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """A heartbeat's ``health`` as read from Redis: what is well formed, and
    what was not (anyone who can write the key can put anything there; a
    bad entry is left out and named, never trusted, never fatal)."""
    if value is None:
        return {}, None
    if not isinstance(value, dict):
        return {}, f"{where}: health is not an object"
    out: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    for name, rec in list(value.items())[: MAX_HEALTH * 4]:
        if not (isinstance(name, str) and PLUGIN_NAME.fullmatch(name)):
            bad.append(f"{name!r:.40}: not a plugin name")
            continue
        why = _bad_health(rec)
        if why:
            bad.append(f"{name}: {why}")
            continue
        out[name] = {k: rec[k] for k in _HEALTH_KEYS if k in rec}  # unknown keys: not ours
        if len(out) >= MAX_HEALTH:
            break
    return out, (f"{where}: {'; '.join(bad[:3])}" if bad else None)


def _bad_health(rec: object) -> str | None:
    if not isinstance(rec, dict):
        return "not an object"
    for key in ("seq", *HEALTH_COUNTS):
        v = rec.get(key)
        if v is not None and (type(v) is not int or not 0 <= v <= _MAX_COUNT):
            return f"{key} {v!r:.30} is not a count"
    p99 = rec.get("p99_us")
    if p99 is not None and (
        type(p99) not in (int, float) or not math.isfinite(p99) or not 0 <= p99 <= _MAX_US
    ):
        return f"p99_us {p99!r:.30} is not a latency"
    worker = rec.get("worker")
    if worker is not None and not (isinstance(worker, str) and _LABEL.fullmatch(worker)):
        return f"worker {worker!r:.30} is not a worker state"
    return None


def count_of(n: int, one: str, many: str | None = None) -> str:
    """``1 crash``, ``3 crashes``: a count and its noun."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def unhealthy(health: Mapping[str, Any]) -> list[str]:
    """Why a plugin's current version is unhealthy (empty: it is not): it
    crashed, timed out, its worker is not running, or at least
    ``UNHEALTHY_ERROR_RATE`` of its calls failed."""
    why = []
    if health.get("crashes"):
        why.append(count_of(health["crashes"], "crash", "crashes"))
    if health.get("timeouts"):
        why.append(count_of(health["timeouts"], "timeout"))
    if health.get("worker"):
        why.append(f"worker {health['worker']}")
    errors, calls = health.get("errors") or 0, health.get("calls") or 0
    if errors and errors >= UNHEALTHY_ERROR_RATE * max(calls, 1):
        rate = 100 * errors / max(calls, 1)
        why.append(f"{count_of(errors, 'error')} in {count_of(calls, 'call')} ({rate:.1f}%)")
    return why
