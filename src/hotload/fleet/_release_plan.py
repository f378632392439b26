"""A fleet release's plan: several plugins' builds, the instant every host
switches them together, and the deadline by which every host must have
staged them (``hotload fleet release``; the Releases page).

The plan is a decision like a desired state (``_signing``'s module
docstring) and is signed the same way, under its own context so that a
desired-state signature cannot be passed off as a plan's: ``id``, ``rev``
(above every decision written before: a cancel re-signs the plan with a
higher rev, so the planned record replayed after it is older, refused),
``builds`` (a list of ``{"plugin", "digest"}``: each plugin once), ``at``,
``deadline``, ``match`` (the labels of the hosts it is for: every host whose
labels include them stages and switches it; ``{}``: every host), ``state``
(``planned`` or ``cancelled``), ``reason``,
``signed_at``, ``expires_at`` (``DEFAULT_EXPIRES`` after ``at``: a host
restarted after the time still converges to it), ``canary`` when it has one
(``{"match": labels, "bake": seconds}``: the hosts whose labels also include
``canary.match`` switch at ``at`` and are judged for ``bake`` seconds; every
other host switches at ``at + bake``; ``state: aborted`` reverts the canaries
and cancels the rest), and the Ed25519 signature over the canonical JSON of
those fields.

Keys: ``releases`` (a hash: id -> the signed plan) and
``release-report:<host>`` (a hash: release id -> that host's report, ``staged``,
``failed`` with the plugin and cause, ``switched`` with the instant,
``cancelled``, ``invalid``).  Anything read back is checked here first: a
record anyone could have written is garbage until it verifies.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .._errors import FleetError
from ._schema import Keys, check_digest, check_labels, check_name, load_json, matches
from ._signing import DEFAULT_EXPIRES, public_hex, signature_holds

RELEASE_CONTEXT = b"hotload-fleet-release-v1\n"
STATES = ("planned", "cancelled", "aborted")
# "waiting": not staged yet, for a reason that may pass (another release staged there
# switches the plugin first; the application has not loaded it yet): tried at each sync
HOST_STATES = (
    "staged", "waiting", "failed", "switched", "cancelled", "invalid", "aborted", "reverted"
)  # fmt: skip
MAX_BAKE = 86400.0  # seconds a release's canaries are judged at most
MAX_BUILDS = 64  # plugins one release switches: more is a typo or an attack
MAX_REASON = 500  # characters of a cancel's reason

_ID = re.compile(r"[0-9a-f]{12}")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")


def releases_key(keys: Keys) -> str:
    return keys.prefix + "releases"


def report_key(keys: Keys, host_id: str) -> str:
    """A host's reports on releases (hash: release id -> report): one key per
    host, so that an ACL lets each host write its own only."""
    return f"{keys.prefix}release-report:{host_id}"


@dataclass(frozen=True)
class Plan:
    """A release plan as read back (checked) or about to be signed."""

    id: str
    rev: int
    builds: tuple[tuple[str, str], ...]  # (plugin, digest), each plugin once
    at: float
    deadline: float
    match: dict[str, str] = field(default_factory=dict)
    state: str = "planned"
    reason: str = ""
    signed_at: float = 0.0
    expires_at: float = 0.0
    signature: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    canary: dict[str, Any] | None = None  # {"match": labels, "bake": seconds}

    @property
    def bake(self) -> float:
        return float(self.canary["bake"]) if self.canary else 0.0

    def is_canary(self, labels: dict[str, str]) -> bool:
        """Whether a host with ``labels`` is one of its canaries."""
        return self.canary is not None and matches(self.canary["match"], labels)

    def time_for(self, labels: dict[str, str]) -> float:
        """When a host with ``labels`` switches: ``at`` for a canary (or when
        there are none), ``at + bake`` for the rest."""
        return self.at if self.canary is None or self.is_canary(labels) else self.at + self.bake

    @property
    def last(self) -> float:
        """The point of no return: the time the last host switches."""
        return self.at + self.bake

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.builds]

    @property
    def digests(self) -> dict[str, str]:
        return dict(self.builds)

    @property
    def order(self) -> tuple[int, float]:
        return (self.rev, self.signed_at)

    def fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rev": self.rev,
            "builds": [{"plugin": n, "digest": d} for n, d in self.builds],
            "at": self.at,
            "deadline": self.deadline,
            "match": self.match,
            "state": self.state,
            "reason": self.reason,
            "signed_at": self.signed_at,
            "expires_at": self.expires_at,
            **({"canary": self.canary} if self.canary is not None else {}),
        }

    def message(self) -> bytes:
        body = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return RELEASE_CONTEXT + body.encode()

    def record(self) -> str:
        """The JSON stored in Redis (the signed fields, the signature, the key)."""
        return json.dumps({**self.fields(), "signature": self.signature, **self.extra})


def check_builds(builds: Iterable[tuple[str, str]], where: str) -> tuple[tuple[str, str], ...]:
    """Each plugin named once, each with a digest (a release naming a plugin
    twice has no answer to which build wins: refused, naming it)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, digest in builds:
        check_name(name, f"{where}: plugin")
        check_digest(digest, f"{where}: {name}")
        if name in seen:
            raise FleetError(f"{where}: plugin {name} is named twice: a release switches each once")
        seen.add(name)
        out.append((name, digest))
    if not out:
        raise FleetError(f"{where}: a release names at least one plugin")
    if len(out) > MAX_BUILDS:
        raise FleetError(f"{where}: {len(out)} plugins, over the {MAX_BUILDS} a release takes")
    return tuple(out)


def sign(key: Any, plan: Plan, *, now: float | None = None) -> Plan:
    """``plan`` signed with ``key`` (valid until ``DEFAULT_EXPIRES`` after its time)."""
    signed_at = round(time.time() if now is None else now, 3)
    expires_at = round(max(plan.last, signed_at) + DEFAULT_EXPIRES, 3)
    unsigned = replace(
        plan,
        reason=plan.reason[:MAX_REASON],
        signed_at=signed_at,
        expires_at=expires_at,
        signature=None,
        extra={},
    )
    signature = key.sign(unsigned.message()).hex()
    return replace(unsigned, signature=signature, extra={"key": public_hex(key)})


def parse(raw: bytes | None, where: str) -> Plan:
    """A plan record read from Redis, checked field by field (not verified:
    ``verify`` does that)."""
    rec = load_json(raw, where)
    if not isinstance(rec, dict):
        raise FleetError(f"{where}: not a release plan (expected an object)")
    rid = rec.get("id")
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        raise FleetError(f"{where}: id {rid!r:.40} is not 12 hex digits")
    rev = rec.get("rev")
    if type(rev) is not int or rev < 0:
        raise FleetError(f"{where}: rev {rev!r:.40} is not a count")
    raw_builds = rec.get("builds")
    if not isinstance(raw_builds, list) or len(raw_builds) > MAX_BUILDS:
        raise FleetError(f"{where}: builds is not a list of at most {MAX_BUILDS}")
    pairs = []
    for i, b in enumerate(raw_builds):
        if not isinstance(b, dict) or set(b) != {"plugin", "digest"}:
            raise FleetError(f"{where}: build {i} is not {{plugin, digest}}")
        pairs.append((b["plugin"], b["digest"]))
    builds = check_builds(pairs, where)
    times = []
    for name in ("at", "deadline", "signed_at", "expires_at"):
        value = rec.get(name, 0.0)
        if type(value) not in (int, float) or not 0 <= value < 1e11:
            raise FleetError(f"{where}: {name} {value!r:.40} is not a time")
        times.append(float(value))
    state, reason, sig = rec.get("state"), rec.get("reason", ""), rec.get("signature")
    if state not in STATES:
        raise FleetError(f"{where}: state {state!r:.40} is not one of {', '.join(STATES)}")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise FleetError(f"{where}: reason is not text of at most {MAX_REASON} characters")
    if sig is not None and not (isinstance(sig, str) and _SIGNATURE.fullmatch(sig)):
        raise FleetError(f"{where}: signature {sig!r:.40} is not 128 hex digits")
    if times[1] > times[0]:
        raise FleetError(f"{where}: its staging deadline is after its switch time")
    match = check_labels(rec.get("match", {}), f"{where}: match")
    canary = check_canary(rec.get("canary"), where) if "canary" in rec else None
    return Plan(
        rid, rev, builds, times[0], times[1], match, state, reason, times[2], times[3], sig,
        canary=canary,
    )  # fmt: skip


def check_canary(value: Any, where: str) -> dict[str, Any]:
    """A plan's ``canary``: ``{"match": labels, "bake": seconds}``, the labels
    not empty (every host a canary is no canary)."""
    if not isinstance(value, dict) or set(value) != {"match", "bake"}:
        raise FleetError(f"{where}: canary is not {{match, bake}}")
    match = check_labels(value["match"], f"{where}: canary")
    if not match:
        raise FleetError(f"{where}: canary names no label: every host would be a canary")
    bake = value["bake"]
    if type(bake) not in (int, float) or not 0 < bake <= MAX_BAKE:
        raise FleetError(f"{where}: canary bake {bake!r:.40} is not 0 to {MAX_BAKE:g} seconds")
    return {"match": match, "bake": float(bake)}


def verify(public_key: Any, plan: Plan, where: str, *, now: float | None = None) -> None:
    """Raise ``FleetError`` unless ``plan`` is signed by ``public_key`` and
    not expired: a plan written or changed by anyone else is refused."""
    if plan.signature is None:
        raise FleetError(
            f"{where}: not signed; this host acts only on release plans signed with its "
            f"fleet key (an unsigned fleet is Host(fleet_insecure=True) on every host)"
        )
    if not signature_holds(public_key, plan.signature, plan.message()):
        raise FleetError(
            f"{where}: rev {plan.rev}: the signature does not verify with this host's fleet "
            f"key (signed by another key, or changed after it was signed), refused"
        )
    if plan.expires_at <= (time.time() if now is None else now):
        raise FleetError(f"{where}: expired at {when(plan.expires_at)}, refused")


def when(t: float) -> str:
    """A time as the release's messages print it: UTC, ISO 8601, milliseconds."""
    ms = int(round(t * 1000)) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def parse_host_report(raw: bytes | None, where: str) -> dict[str, Any]:
    """A host's report on a release, checked (anyone who can write the key
    can put anything there: a malformed report is an ``invalid`` entry)."""
    try:
        rep = load_json(raw, where)
    except FleetError as exc:
        return {"state": "invalid", "error": str(exc)}
    if not isinstance(rep, dict) or rep.get("state") not in HOST_STATES:
        return {"state": "invalid", "error": f"{where}: not a release report"}
    out: dict[str, Any] = {"state": rep["state"]}
    for name, kinds in (
        ("plugin", (str,)),
        ("error", (str,)),
        ("switched_ns", (int,)),
        ("late", (bool,)),
        ("rev", (int,)),
        ("at", (int, float)),
        ("verdict", (str,)),
        ("canary", (bool,)),
    ):
        value = rep.get(name)
        if value is not None and type(value) in kinds:
            out[name] = value[:MAX_REASON] if isinstance(value, str) else value
    return out
