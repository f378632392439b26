"""A plugin's revisions: every rollout and rollback, numbered, with the
desired state it left the fleet in (``hotload fleet history NAME``), and which
revision ``rollback`` goes back to.

A revision number is taken (``INCR revision:<plugin>``) when a rollout or a
rollback starts; every desired state it writes carries it, and its entry is
appended to ``history:<plugin>`` (a list, the newest ``HISTORY_MAX`` kept)
when it ends.  An entry::

    {"revision": 3, "action": "rollout" | "rollback", "state": "done" |
     "aborted" | "failed", "rules": [{"match", "digest"}], "digest", "version",
     "from": 2, "base": 3, "to": null, "rollout": "<id>", "by", "started_at",
     "finished_at", "reason"?}

``rules`` is the desired state the fleet was left in; ``from`` the revision
current when it started; ``base`` the revision whose rules are in force after
it (its own for a finished rollout, the target's for a rollback).  Revision 0
is the fleet before any rollout: no rule, every host on its own build.

The current revision is the ``base`` of the newest finished entry;
``rollback`` without a target goes to the revision that was current before
that one, so repeated rollbacks walk back one revision at a time.  Going
back is a new decision: its desired state is signed with a new, higher
``rev`` (``_signing``), so hosts take it, while a replay of the old desired
record itself is refused.  The signature covers the revision too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from .._errors import FleetError
from ._schema import Keys, Rule, check_digest, check_labels, load_json

HISTORY_MAX = 200  # entries kept per plugin


class _Store(Protocol):
    r: Any
    keys: Keys

    def _call(self, what: str, fn: Callable[[], Any]) -> Any: ...


def next_revision(f: _Store, plugin: str) -> int:
    return int(f._call("take a revision", lambda: f.r.incr(f.keys.revision(plugin))))


def append(f: _Store, plugin: str, entry: dict[str, Any]) -> None:
    body = json.dumps({**entry, "finished_at": entry.get("finished_at") or time.time()})
    key = f.keys.history(plugin)

    def write() -> None:
        pipe = f.r.pipeline(transaction=True)
        pipe.rpush(key, body)
        pipe.ltrim(key, -HISTORY_MAX, -1)
        pipe.execute()

    f._call("write history", write)


def read(f: _Store, plugin: str) -> list[dict[str, Any]]:
    """The entries, oldest first; an entry that does not check out is
    returned as ``{"revision": None, "error": ...}``."""
    raws = f._call("read history", lambda: f.r.lrange(f.keys.history(plugin), 0, -1))
    out = []
    for raw in raws:
        try:
            out.append(check_entry(load_json(raw, f"history of {plugin}"), plugin))
        except FleetError as exc:
            out.append({"revision": None, "error": str(exc)})
    return out


def check_entry(entry: Any, plugin: str) -> dict[str, Any]:
    where = f"history of {plugin}"
    if not isinstance(entry, dict):
        raise FleetError(f"{where}: an entry is not an object")
    for field in ("revision", "from", "base"):
        value = entry.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FleetError(f"{where}: {field} {value!r:.40} is not a revision")
    rules = entry.get("rules")
    if not isinstance(rules, list):
        raise FleetError(f"{where}: revision {entry['revision']}: rules is not a list")
    for r in rules:
        if not isinstance(r, dict):
            raise FleetError(f"{where}: revision {entry['revision']}: a rule is not an object")
        check_labels(r.get("match", {}), where)
        if r.get("digest") is not None:
            check_digest(r["digest"], where)
    return entry


def find(entries: list[dict[str, Any]], revision: int) -> dict[str, Any] | None:
    return next((e for e in reversed(entries) if e.get("revision") == revision), None)


def current(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest finished entry: its ``base`` is the revision in force."""
    return next((e for e in reversed(entries) if e.get("state") == "done"), None)


def current_revision(entries: list[dict[str, Any]]) -> int:
    cur = current(entries)
    return int(cur["base"]) if cur is not None else 0


def rules_of(entries: list[dict[str, Any]], revision: int, plugin: str) -> list[Rule]:
    """The rules of ``revision`` (0: none), or a ``FleetError`` saying why
    it cannot be gone back to."""
    if revision == 0:
        return []
    entry = find(entries, revision)
    if entry is None:
        oldest = min((e["revision"] for e in entries if e.get("revision")), default=None)
        raise FleetError(
            f"{plugin}: no revision {revision} in the history"
            + (f" (the oldest kept is {oldest})" if oldest is not None else " (it is empty)")
        )
    if entry.get("state") != "done":
        raise FleetError(
            f"{plugin}: revision {revision} is a {entry.get('action')} that "
            f"{entry.get('state')}; it left the fleet on revision {entry.get('from')}"
        )
    return [Rule(dict(r.get("match", {})), r.get("digest")) for r in entry["rules"]]


def previous(entries: list[dict[str, Any]], plugin: str) -> int:
    """The revision ``rollback`` goes to when none is named: the one that
    was current before the revision in force now."""
    cur = current(entries)
    if cur is None:
        raise FleetError(f"{plugin}: nothing to roll back: no rollout of it has finished")
    base = int(cur["base"])
    if base == 0:
        raise FleetError(
            f"{plugin}: nothing to roll back: the fleet is on revision 0 (every host on its "
            f"own build); roll forward with rollout, or rollback --to a revision"
        )
    entry = find(entries, base)
    if entry is None:
        raise FleetError(f"{plugin}: revision {base} is no longer in the history")
    return int(entry["from"])


def describe(rules: list[Rule] | list[dict[str, Any]]) -> str:
    """What a revision's rules run, in a few words."""
    digests = {r.digest if isinstance(r, Rule) else r.get("digest") for r in rules}
    digests.discard(None)
    if not digests:
        return "every host on its own build"
    return ", ".join(sorted(str(d)[:12] for d in digests))


def refuse_after_release(rules: list[Rule], plugin: str) -> None:
    """A rollback by history after a release moved ``plugin`` (its desired
    state names the release) would take it to the revision before the last
    *rollout*, apart from the release's other plugins: refused, saying how."""
    group = next((r.release for r in rules if r.release is not None), None)
    if group is not None:
        raise FleetError(
            f"{plugin}: release {group.id} moved it last, with {', '.join(group.plugins)}; "
            "a rollback by history would take it back alone, to a build from before that "
            "release: take the release back with a release of the builds before it "
            "(hotload fleet release NAME=BUILD ..., the Releases page), or name --to"
        )
