"""Step 5 of the watcher, apply: one checked plugin file goes to the host,
and each outcome is reported as a :class:`WatchEvent` (logged, and given to
``on_event``).

The plugin is the one the file's descriptor names.  Same bytes as its
version serving: nothing to do.  Already loaded (from this path or another):
reloaded from this file.  Not loaded: loaded.  A failure (a refused
``on_load``, a changed signature, a compiler error) is logged with its
message: a running version keeps serving (``Host.reload`` only switches on
success), and a plugin that never loaded is tried again at the file's next
change.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._artifact.loader import Candidate, check_size
from .._artifact.reader import on_disk
from .._errors import InvalidPluginError, LoadError, NotAPluginError

if TYPE_CHECKING:
    from .protocols import PluginHost

log = logging.getLogger(__name__)

#: Errors a half-written file can cause; anything else (a bad descriptor, a
#: refused on_load, a changed signature) is the build's final verdict.
RETRYABLE = (InvalidPluginError, LoadError)


@dataclass(frozen=True)
class WatchEvent:
    """What the watcher did about one changed path.

    ``action`` is one of ``loaded``, ``reloaded``, ``unchanged``, ``failed``
    or ``skipped`` (not a hotload plugin, or not a regular file).  ``name``
    is the plugin's, when the watcher knows it (a failed first build may not
    tell).  Times are ``time.monotonic()``: ``changed_at`` is the first event
    of the burst, ``done_at`` the moment the new version was serving (or the
    failure was final).  In rebuild mode ``path`` is the plugin's output
    file, and ``kept_as`` where a build that did not go live was kept
    instead (``foo.so.refused``): the output is left holding what it held."""

    action: str
    path: str
    name: str | None = None
    seq: int | None = None
    plugin_version: str | None = None
    error: str | None = None
    source: str | None = None
    build_seconds: float | None = None
    changed_at: float = 0.0
    done_at: float = 0.0
    kept_as: str | None = None

    @property
    def latency(self) -> float:
        return self.done_at - self.changed_at


class Applier:
    """Loads, reloads or leaves alone the plugin of each file the watcher
    hands it, and reports what it did.

    ``load_options`` is how a plugin the watcher loads first runs
    (``Host.load``'s options); its reloads keep the mode it was loaded with.
    ``names`` remembers the plugin each file (or source) last declared, so a
    later failure can name it even when the file no longer tells."""

    def __init__(
        self,
        host: PluginHost,
        *,
        load_options: dict[str, Any],
        allow_signature_change: bool,
        max_size: int,
        on_event: Callable[[WatchEvent], Any] | None,
    ) -> None:
        self.host = host
        self.load_options = load_options
        self.allow_signature_change = allow_signature_change
        self.max_size = max_size
        self.on_event = on_event
        self.applied: dict[str, str] = {}  # file -> digest this watcher last saw serving from it
        self.names: dict[str, str] = {}  # file or source -> the plugin name it last declared

    def failed(
        self,
        path: Path,
        source: Path | None,
        error: str,
        common: dict[str, Any],
        exc: BaseException | None = None,
    ) -> WatchEvent:
        """A ``failed`` event, named by the plugin the file (or its source)
        last declared.  ``exc``: the host refused the build (not a compiler
        error): in the journal, unless the swap recorded it already."""
        name = self.names.get(str(path)) or (source and self.names.get(str(source)))
        if exc is not None:
            op = "reload" if name and name in self.host else "load"
            self.host.journal.refused(name or "", exc, op=op, source=str(path))
        return WatchEvent(
            "failed", name=name or None, error=error, done_at=time.monotonic(), **common
        )

    def _read(self, path: Path) -> Candidate | None:
        """The watcher's one read of a plugin file: the host reads and checks
        it (trust rules, the size cap, a non-blocking open of regular files
        only, the format) and the very bytes it checked are what is loaded.
        None for a library that is not a hotload plugin."""
        check_size(str(path), path.stat().st_size, self.max_size)  # the watcher's own cap too
        try:
            return self.host.read(path)
        except NotAPluginError:
            return None

    def load_or_reload(
        self, path: Path, common: dict[str, Any], *, staged: Path | None = None
    ) -> WatchEvent:
        """Check the file's bytes, then load, reload or leave alone its plugin.
        ``staged``: a fresh build to read instead, which becomes ``path`` if
        it goes live (rebuild mode): the version's source is ``path``, the
        file a later ``reload(name)`` reads."""
        cand = self._read(staged or path)
        if cand is not None and staged is not None:
            cand = dataclasses.replace(cand, source=str(path))
        if cand is None:
            return WatchEvent(
                "skipped",
                error=f"{path}: not a hotload plugin (no .hotload descriptor); ignored",
                done_at=time.monotonic(),
                **common,
            )
        name, digest = cand.name, cand.digest
        self.names[str(path)] = name
        if common["source"]:
            self.names[common["source"]] = name
        if self._serving(name, str(path), digest):
            return WatchEvent("unchanged", name=name, done_at=time.monotonic(), **common)
        if name in self.host:
            info = self.host.reload(name, cand, allow_signature_change=self.allow_signature_change)
            action = "reloaded"
        else:
            self.host.load(cand, **self.load_options)
            action, info = "loaded", self.host.versions(name)[-1]
        self.applied[str(path)] = digest
        return WatchEvent(
            action,
            name=name,
            seq=info.seq,
            plugin_version=info.plugin_version,
            done_at=time.monotonic(),
            **common,
        )

    def _serving(self, name: str, path: str, digest: str) -> bool:
        """True when ``name``'s current version already has these bytes.

        The watcher's own record answers the common case without asking the
        host (whose ``versions()`` also inspects images); a match is confirmed
        with the host, since someone else may have reloaded it since."""
        if name not in self.host:
            return False
        if self.applied.get(path) not in (None, digest):
            return False
        current = self.host.current(name)
        return current is not None and current.digest == digest

    def fate(self, name: str | None) -> str:
        """What a failure means for the plugin: only a plugin that runs keeps serving."""
        if name is not None and name in self.host:
            return f"not swapped, the running version of {name} keeps serving"
        if name is not None:
            return (
                f"{name} was not loaded (no version of it runs); "
                "the watcher retries on the next change"
            )
        return (
            "nothing was loaded from it (a version already running, if any, keeps serving); "
            "the watcher retries on the next change"
        )

    def _kept(self, event: WatchEvent) -> str:
        """Where a refused build went, and what the output holds now."""
        if not event.kept_as:
            return ""
        current = None
        if event.name is not None and event.name in self.host:
            current = self.host.current(event.name)
        kept = f"; the refused build is kept as {event.kept_as}"
        now = on_disk(event.path, self.max_size)
        if now is None:
            return kept  # no output yet: nothing was ever installed there
        runs = current is not None and now == current.digest
        return (
            f"{kept}; {event.path} {'holds the build that runs' if runs else 'is left as it was'}"
        )

    def emit(self, event: WatchEvent) -> None:
        """Log the event at its level, then hand it to ``on_event`` (whose
        errors are logged: a callback must not stop the watcher)."""
        where = event.source or event.path
        if event.action == "failed":
            fate = self.fate(event.name) + self._kept(event)
            log.error("watch: %s: %s:\n%s", where, fate, event.error)
        elif event.action == "skipped":
            log.warning("watch: %s%s", event.error, self._kept(event))
        elif event.action == "unchanged":
            log.debug("watch: %s: same bytes as the version serving; nothing to do", where)
        else:
            log.info(
                "watch: %s %s v%s (%s) from %s in %.1f ms",
                event.action,
                event.name,
                event.seq,
                event.plugin_version,
                where,
                event.latency * 1e3,
            )
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("watch: on_event callback failed")


__all__ = ["RETRYABLE", "Applier", "WatchEvent"]
