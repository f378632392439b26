"""The journal over the control socket: the ``log`` operation (``hotload
log``) and the refused builds that ``ls`` reports.

``log`` never waits: ``hotload log --follow`` asks again every half second
with the ``seq`` it saw last (``since``), so a follower costs one short
request at a time and never holds one of the server's few workers.  Every
argument is checked before it is used: a bad one is a ``bad_request`` naming
it, and the host goes on serving.
"""

from __future__ import annotations

from typing import Any

from .._engine.journal import MAX_SEQ, Journal
from .._errors import ControlError

MAX_NAME = 256  # characters of a plugin name in a request (the fleet's names are <= 64)


def log_result(journal: Journal, req: dict[str, Any]) -> dict[str, Any]:
    """The ``log`` result: ``{"entries": [ENTRY...], "last", "dropped", "size"}``.

    ``name`` (a plugin, or null), ``since`` (the ``seq`` of the last entry
    the client saw, or null), ``limit`` (only the newest N, or null)."""
    name = req.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME):
        raise ControlError(
            f"'name' must be a plugin name (a string of 1 to {MAX_NAME} characters) or null, "
            f"not {_shown(name)}",
            "bad_request",
        )
    since = _count(req, "since", 0, MAX_SEQ)
    limit = _count(req, "limit", 1, MAX_SEQ)
    entries, last = journal.page(name, since)
    if limit is not None:
        entries = entries[-limit:]
    return {
        "entries": [e.as_dict() for e in entries],
        "last": last,
        "dropped": journal.dropped,
        "size": journal.size,
    }


def refused_builds(journal: Journal) -> list[dict[str, Any]]:
    """What ``ls`` says of refused builds: per plugin (or per file, when
    its name could not be read) the count and the last refusal, newest last;
    also for a name that never loaded, which has no version to show."""
    found = sorted(journal.refusals().items(), key=lambda kv: kv[1][1].seq)
    return [
        {"plugin": entry.plugin, "count": count, "last": entry.as_dict()}
        for _key, (count, entry) in found
    ]


def _count(req: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = req.get(key)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:  # true is not 1, 1.0 is not 1
        raise ControlError(
            f"{key!r} must be an integer from {low} to {high} or null, not {_shown(value)}",
            "bad_request",
        )
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["MAX_NAME", "log_result", "refused_builds"]
