"""The plugin table: one record per plugin name, and whether the host is closed.

It is the data the swap works on and the queries read; the host creates it and
hands it down, so nothing below the host needs a way back up to ask which
plugins are loaded.  Its lock guards only the table itself (adding a record,
closing); each record has its own lock for its swaps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .._errors import ClosedError, NotLoadedError
from .journal import Journal
from .record import PluginRecord
from .registry import Plugin
from .settings import Settings
from .unload_policy import UnloadPolicy

log = logging.getLogger(__name__)


class PluginTable:
    def __init__(self, settings: Settings, policy: UnloadPolicy) -> None:
        self._settings = settings
        self._policy = policy
        self._lock = threading.Lock()  # guards _records and closed; never held across work
        self._records: dict[str, PluginRecord] = {}
        self._listeners: list[Callable[[str], None]] = []
        self.journal = Journal(settings.journal_size)  # what changed, and who asked
        self.closed = False

    def record(self, name: str) -> PluginRecord:
        """The record of ``name``, created on first use (and kept after an
        unload, so a later load continues its history and sequence numbers)."""
        with self._lock:
            rec = self._records.get(name)
            if rec is None:
                rec = self._records[name] = PluginRecord(
                    name, policy=self._policy, settings=self._settings
                )
            return rec

    def get(self, name: str) -> PluginRecord | None:
        return self._records.get(name)

    def loaded(self, name: str) -> PluginRecord:
        """The record of a loaded plugin, or ``NotLoadedError`` naming what is."""
        rec = self._records.get(name)
        if rec is None or rec.plugin is None:
            known = ", ".join(self.names()) or "none"
            raise NotLoadedError(f"no plugin named {name!r} is loaded (loaded: {known})")
        return rec

    def records(self) -> list[PluginRecord]:
        return list(self._records.values())

    def names(self) -> list[str]:
        """The names of the plugins loaded now."""
        return sorted(n for n, r in list(self._records.items()) if r.plugin is not None)

    def all_names(self) -> list[str]:
        """Every name ever loaded here (the history outlives an unload)."""
        return sorted(self._records)

    def plugins(self) -> dict[str, Plugin]:
        """Loaded plugins by name, in load order."""
        return {n: r.plugin for n, r in list(self._records.items()) if r.plugin is not None}

    def listen(self, fn: Callable[[str], None]) -> Callable[[], None]:
        """Call ``fn(name)`` after each load, reload, rollback and unload;
        returns the function that stops it."""
        with self._lock:
            self._listeners.append(fn)

        def remove() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return remove

    def changed(self, name: str) -> None:
        """What serves ``name`` changed: tell the listeners (each must be quick;
        one that raises is logged, the swap has happened)."""
        for fn in list(self._listeners):
            try:
                fn(name)
            except Exception:
                log.exception("a listener of plugin changes failed on %s", name)

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError("this host is closed")

    def close(self) -> bool:
        """Mark the table closed; False when it already was."""
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            return True
