"""The swap journal: what changed in the host, when, and who asked for it.

Every load, reload, rollback and unload, every refused build (with its
error), and every crash, timeout, restart and stop of an isolated worker is one
``JournalEntry`` in a bounded ring: a host that reloads all day, or a plugin
in a crash loop, must not grow, so the oldest entries go and ``dropped``
counts them.  Each entry is also one INFO line on the ``hotload.journal``
logger, so a host that ships its log keeps the whole story.

Entries are recorded by the layer that knows the event: the swap
(``swap.Swapper``) for what serves, the isolation supervisor
(``_process.proxy``) for its workers, the watcher and the fleet agent for a
build they could not even hand over (a descriptor that does not parse, bytes
that fail their checks).  None of them knows *why* the change was asked
for, so the origin travels in a context variable: the control server, the
watcher and the fleet agent set it around the calls they make (``origin``),
and a call from the application's own code is ``api``.  This module imports
nothing of hotload: any layer may record.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("hotload.journal")

#: The kinds recorded today.  The list will grow (canary steps, ...): a reader
#: must show a kind it does not know rather than fail on it.
KINDS = (
    "load",
    "reload",
    "rollback",
    "unload",
    "refused",
    "crash",
    "timeout",
    "restart",
    "stop",
    "quarantine",
    "canary",
    "widen",
    "promote",
    "abort",
    "release",
    "staged",
    "cancel",
)

#: Who asked: the application (``api``), the control socket (``cli``: ``hotload
#: reload`` and any other client), a watcher (``watcher``; ``startup`` for its
#: pass over what was there when it started), the fleet agent (``fleet``), or
#: the isolation supervisor acting on a crash (``supervisor``), or a canary's judge
#: ending it (``judge``).
ORIGINS = ("api", "cli", "watcher", "startup", "fleet", "supervisor", "judge")

DEFAULT_SIZE = 1000  # entries kept; ~0.5 KB each
MAX_TEXT = 2000  # characters of an error kept in an entry (a compiler's output can be long)
MAX_SEQ = 2**63 - 1  # the largest cursor a reader may ask from

_origin: contextvars.ContextVar[str] = contextvars.ContextVar("hotload_origin", default="api")


def current_origin() -> str:
    """Who is asking for the change being made in this thread (``api`` unless set)."""
    return _origin.get()


@contextlib.contextmanager
def origin(name: str) -> Iterator[None]:
    """Every change made inside the ``with`` is recorded as asked for by ``name``."""
    token = _origin.set(name)
    try:
        yield
    finally:
        _origin.reset(token)


def set_origin(name: str) -> None:
    """For a thread whose every change has one origin (the fleet agent's):
    a thread starts with its own context, so this stays in that thread."""
    _origin.set(name)


@dataclass(frozen=True, slots=True)  # slots: a full ring of 1,000 entries is ~0.3 MB
class JournalEntry:
    """One thing that happened to a plugin, as ``Host.journal()`` lists it.

    ``seq`` numbers the host's entries from 1 with no gap, so a reader that
    kept the last one it saw asks for what came after it
    (``journal(since=seq)``), and a jump tells how many it missed.
    ``from_seq``/``from_digest`` is the version that served before (None for
    a first load), ``to_seq``/``to_digest`` the one that serves after (None
    for an unload; for a refused build, ``to_digest`` is the refused build's
    SHA-256 when it was read far enough to know it, and the version that
    served before keeps serving).  For a crash, restart or stop both name the
    isolated version concerned.  ``version`` is the plugin's own version
    string, ``source`` the file (or ``fleet:NAME@DIGEST``), ``error`` why a
    build was refused or a worker crashed, ``detail`` what else there is to
    say: the operation a refused entry tried (``load``, ``reload``,
    ``rollback``, ``fleet decision``), the signal of a crash, the new
    worker's pid."""

    seq: int
    time: float  # Unix seconds
    kind: str
    plugin: str  # empty when a refused build's name could not be read
    origin: str
    from_seq: int | None = None
    to_seq: int | None = None
    from_digest: str | None = None
    to_digest: str | None = None
    version: str = ""
    source: str = ""
    error: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def seqs(self) -> str:
        """``v1 -> v2``, ``v2``, ``-``: the versions concerned."""
        a, b = self.from_seq, self.to_seq
        if a is not None and b is not None and a != b:
            return f"v{a} -> v{b}"
        one = b if b is not None else a
        return f"v{one}" if one is not None else "-"

    def describe(self) -> str:
        """What happened, in one line, without the time, kind and plugin
        that a table shows in columns of their own."""
        digest = self.to_digest if self.kind == "refused" else self.to_digest or self.from_digest
        build = " ".join(
            part for part in (self.version, f"({digest[:12]})" if digest else "") if part
        )
        if self.kind == "refused":
            what = f"{self.detail or 'build'} of {self.source or 'a build'}"
            said = [f"build {build}" if build and self.to_digest else ""]
            said.append(f"v{self.from_seq} keeps serving" if self.from_seq is not None else "")
            if any(said):
                what += f" ({', '.join(s for s in said if s)})"
            error = self.error.replace(f" {self.source}: ", " ", 1) if self.source else self.error
            return f"{what}: {error}" if error else what  # the source is said once
        if self.kind in ("crash", "timeout") and self.error:  # the signal, the call, the worker
            return self.error.replace(f"{self.source}: ", "", 1) if self.source else self.error
        if self.kind in ("crash", "timeout", "restart", "stop", "quarantine"):
            return "; ".join(p for p in (self.detail, self.error) if p) or build
        text = build
        if self.source and self.kind != "unload":
            text += f" from {self.source}"
        return "; ".join(p for p in (text.strip(), self.detail) if p)


class Journal:
    """The host's journal (``host.journal``): a ring of the newest ``size``
    entries (``Host(journal_size=...)``).

    Calling it lists them, oldest first: ``host.journal(name=None,
    since=None)``; ``name`` keeps one plugin's entries (a name that never
    loaded has its refused builds), ``since`` the entries after the one
    with that ``seq`` (the last one a reader saw).  ``dropped`` counts the
    entries the ring let go; ``refusals()`` keeps, per plugin, how many
    builds were refused and the last refusal, for as long as the host runs
    (``hotload ls`` shows them after the ring has moved on).  The host
    records; ``record`` and ``refused`` are how its parts do it."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"journal_size must be a positive integer, not {size!r}")
        self.size = size
        self._lock = threading.Lock()
        self._ring: collections.deque[JournalEntry] = collections.deque(maxlen=size)
        self._seq = 0
        self._refusals: dict[str, tuple[int, JournalEntry]] = {}  # plugin -> (count, last)

    @property
    def last(self) -> int:
        """The ``seq`` of the newest entry (0: none yet)."""
        return self._seq

    @property
    def dropped(self) -> int:
        """How many entries the ring has let go since the host started."""
        with self._lock:
            return self._seq - len(self._ring)

    def __call__(self, name: str | None = None, since: int | None = None) -> list[JournalEntry]:
        """The entries kept, oldest first.

        Args:
            name: Only this plugin's entries (a name never loaded has its
                refused builds); None: every plugin's.
            since: Only entries newer than the one with this ``seq`` (the
                last one a reader saw); None: every entry kept.
        """
        return self.page(name, since)[0]

    def page(
        self, name: str | None = None, since: int | None = None
    ) -> tuple[list[JournalEntry], int]:
        """``journal(name, since)`` and the ``seq`` of the newest entry of
        any plugin when it was read: where a reader that follows the journal
        asks from next (an entry added meanwhile is not lost between the two)."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"journal(name=...) takes a plugin name, not {name!r:.60}")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_SEQ
        ):
            raise ValueError(
                f"journal(since=...) takes the seq of an entry (an integer >= 0), not {since!r:.60}"
            )
        with self._lock:
            entries, last = list(self._ring), self._seq
        if since is not None:
            entries = [e for e in entries if e.seq > since]
        if name is not None:
            entries = [e for e in entries if e.plugin == name]
        return entries, last

    def record(
        self,
        kind: str,
        plugin: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_digest: str | None = None,
        to_digest: str | None = None,
        version: str = "",
        source: str = "",
        error: str = "",
        detail: str = "",
        origin: str | None = None,
    ) -> JournalEntry:
        """Add an entry (origin: this thread's, unless given) and log it."""
        with self._lock:
            self._seq += 1
            entry = JournalEntry(
                seq=self._seq,
                time=time.time(),
                kind=kind,
                plugin=plugin,
                origin=origin or _origin.get(),
                from_seq=from_seq,
                to_seq=to_seq,
                from_digest=from_digest,
                to_digest=to_digest,
                version=version,
                source=source,
                error=_cut(error),
                detail=_cut(detail),
            )
            self._ring.append(entry)
            if kind == "refused":
                key = plugin or source
                count = self._refusals.pop(key, (0, entry))[0]
                self._refusals[key] = (count + 1, entry)  # newest last: the oldest go first
                while len(self._refusals) > self.size:
                    del self._refusals[next(iter(self._refusals))]
        if log.isEnabledFor(logging.INFO):  # describe() is the costly part of a record
            log.info(
                "%s %s %s [%s]: %s",
                entry.kind,
                entry.plugin or "?",
                entry.seqs(),
                entry.origin,
                entry.describe(),
            )
        return entry

    def refused(
        self,
        plugin: str,
        exc: BaseException,
        *,
        op: str,
        source: str = "",
        from_seq: int | None = None,
        from_digest: str | None = None,
        to_digest: str | None = None,
        version: str = "",
    ) -> JournalEntry | None:
        """Record that a build was refused with ``exc``, once: the layers a
        refusal passes through (the swap, then the watcher or the fleet
        agent that asked) may each report it, and the first one wins."""
        if getattr(exc, "_hotload_journal", None) is not None:
            return None
        entry = self.record(
            "refused",
            plugin,
            from_seq=from_seq,
            from_digest=from_digest,
            to_digest=to_digest,
            version=version,
            source=source,
            error=f"{type(exc).__name__}: {exc}",
            detail=op,
        )
        with contextlib.suppress(AttributeError):  # an exception with __slots__: may repeat
            exc._hotload_journal = entry.seq  # type: ignore[attr-defined]
        return entry

    def refusals(self) -> dict[str, tuple[int, JournalEntry]]:
        """Per plugin (or, for a build whose name could not be read, per
        source): how many builds were refused, and the last refusal."""
        with self._lock:
            return dict(self._refusals)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


__all__ = [
    "DEFAULT_SIZE",
    "KINDS",
    "ORIGINS",
    "Journal",
    "JournalEntry",
    "current_origin",
    "origin",
    "set_origin",
]
