"""The control protocol (version 1): what a request and an answer look like
on the socket, and the one encoder both sides use.

Line-delimited JSON over the stream: each request is one JSON object on one
line (UTF-8, ending ``\\n``, at most 64 KiB), each answer is one line.  A
connection may carry any number of requests, answered in order.

Request::

    {"v": 1, "op": "<op>", "id": <anything, echoed back>, ...arguments}

``v`` may be omitted (it means 1); another value gets ``unsupported_version``.

Answer::

    {"v": 1, "id": <echoed>, "ok": true,  "result": {...}}
    {"v": 1, "id": <echoed>, "ok": false, "error": {"code": "<code>", "type": "<exception>",
                                                    "message": "<one line>"}}

Operations and their ``result``:

``ping`` (alias ``hosts``)
    This host: ``{"protocol", "hotload", "pid", "uid", "name", "argv",
    "started_at", "socket", "plugins": [names]}``.
``ls``
    ``{"host": <ping result>, "plugins": [{"name", "versions": [version...],
    "pruned"}], "leaks": {"images", "bytes"}, "refused": [{"plugin", "count",
    "last": <entry>}]}``; ``pruned`` counts old unloaded versions the host's
    bounded history dropped; ``leaks`` sums every leaked or retained image;
    ``refused`` has, per plugin with refused builds (loaded or not; ``plugin``
    empty for a build whose name could not be read), how many and the last one.
``versions`` ``{"name"}``
    ``{"name", "versions": [version...]}``, oldest first.
``reload`` ``{"name", "path"?, "allow_signature_change"?}``
    ``{"version": <the new current version>, "previous": <the version it replaced>}``;
    ``path`` must be absolute (the host's working directory is not the
    client's: ``hotload reload --path`` resolves it first);
    ``allow_signature_change`` (a boolean, default false) accepts a build
    that removes an export or changes a prototype.
``rollback`` ``{"name"}``
    ``{"version": <the version now current>}``.
``log`` ``{"name"?, "since"?, "limit"?}``
    The swap journal: ``{"entries": [<entry>...], "last", "dropped", "size"}``,
    oldest first; ``name`` keeps one plugin's entries, ``since`` (an entry's
    ``seq``) those after it, ``limit`` the newest N; ``last`` is the newest
    ``seq`` of any plugin (where a follower asks from next), ``dropped`` how
    many entries the bounded journal let go, ``size`` how many it keeps.  An
    *entry* is ``JournalEntry.as_dict()``: ``seq, time, kind, plugin, origin,
    from_seq, to_seq, from_digest, to_digest, version, source, error, detail``.
    The answer comes at once: a follower asks again (``hotload log --follow``).

A *version* object is ``VersionInfo.as_dict()``: ``name, seq, plugin_version,
state (active|draining|unloaded|leaked|retained), in_flight, loaded_at, unloaded_at,
source, copy, digest, size, dlopen_count, dlclose_count, mapped_bytes,
blockers [str], note``; times are Unix seconds.  New keys may be added to any
object without a protocol bump; removing or changing one bumps ``v``.

Requests and answers are strict JSON: ``NaN``/``Infinity`` (or a number that
overflows to one) make a request a ``bad_request``, and ``"v"`` must be the
integer 1 (``true`` is not).

Error codes: ``bad_request``, ``unsupported_version``, ``unknown_op``,
``forbidden`` (peer uid refused), ``not_loaded``, ``failed`` (the host
refused: the message says why), ``busy`` (every session slot is in use by a
request in progress), ``timeout`` (a request not complete within its
deadline; the connection is then closed), ``internal``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

from .._errors import ControlError

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_LINE = 64 * 1024
# A host that set SIGPIPE back to SIG_DFL must not die of a client that hangs up
# before its answers are written: every server send says so (Linux; elsewhere
# Python's own SIG_IGN is the guard).
NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def error_reply(rid: Any, code: str, message: str, kind: str = "ControlError") -> dict[str, Any]:
    return {
        "v": PROTOCOL,
        "id": rid,
        "ok": False,
        "error": {"code": code, "type": kind, "message": message},
    }


def encode(obj: dict[str, Any]) -> bytes:
    """One answer line.  Strict JSON only: a NaN or Infinity (which Python
    would write as bare words no other parser accepts) becomes an error."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        log.error("control: an answer held a value JSON cannot carry: %s", exc)
        text = json.dumps(
            error_reply(obj.get("id"), "internal", f"the answer is not valid JSON: {exc}"),
            separators=(",", ":"),
        )
    return text.encode() + b"\n"


__all__ = ["MAX_LINE", "NOSIGNAL", "PROTOCOL", "encode", "error_reply"]


def request_path(req: dict[str, Any]) -> str | None:
    """A request's build path: absolute (the host's working directory is not
    the client's), or absent."""
    path = req.get("path")
    if path is None:
        return None
    if not isinstance(path, str) or not path or "\0" in path:
        raise ControlError("'path' must be a non-empty string without NUL", "bad_request")
    if not os.path.isabs(path):
        raise ControlError(
            f"{path}: a relative path; send an absolute one (this host's working "
            f"directory is not the client's)",
            "bad_request",
        )
    return path


def request_number(
    req: dict[str, Any], key: str, default: float, *, low: float, high: float
) -> float:
    value = req.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ControlError(f"{key!r} must be a number from {low:g} to {high:g}", "bad_request")
    return float(value)
