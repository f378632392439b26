"""One loaded version of a plugin, its life cycle, and the snapshot callers see.

A version moves one way through its states, and only the methods here move
it, so a reader can check every transition in one screen::

    ACTIVE -> DRAINING -> (released) -> UNLOADED     the image left memory
                       \\-> RETAINED                  kept: closing it could crash
                       \\-> LEAKED                    closed, yet still mapped

A stateful swap may put a draining version back to ACTIVE (its successor
refused to start); nothing else goes backwards.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._loader import Image


class VersionState(str, enum.Enum):
    """Where a version is in its life; compares equal to its string value."""

    ACTIVE = "active"
    DRAINING = "draining"
    UNLOADED = "unloaded"
    LEAKED = "leaked"
    RETAINED = "retained"

    def __str__(self) -> str:
        return self.value

    @property
    def in_memory(self) -> bool:
        return self is not VersionState.UNLOADED


class Version:
    """One image of a plugin, with the accounting its routers rely on.

    ``calls`` is the in-flight count (a deque: ``append``/``pop`` are atomic
    under the GIL), ``retiring`` the flag a caller re-checks after counting
    itself in (see ``_registry``), ``served`` counts routed calls."""

    __slots__ = (
        "plugin_name",
        "seq",
        "image",
        "fns",
        "table",
        "calls",
        "retiring",
        "state",
        "drained",
        "wake",
        "unloaded_at",
        "mapped_bytes",
        "retired_at",
        "note",
        "served",
        "leak_codes",
    )

    def __init__(self, plugin_name: str, seq: int, image: Image, wake: threading.Event) -> None:
        self.plugin_name = plugin_name
        self.seq = seq
        self.image = image
        self.fns: dict[str, Any] = dict(image.functions)
        self.table: list[Any] = []  # fns in the plugin's index order: what routers call
        self.calls: deque[None] = deque()
        self.retiring = False
        self.state = VersionState.ACTIVE
        self.drained = threading.Event()
        self.wake = wake
        self.unloaded_at: float | None = None
        self.retired_at: float | None = None
        self.mapped_bytes = 0
        self.note = ""
        # Routed calls that entered this version, counted without a lock
        # (``+= 1`` costs ~15 ns; an atomic counter ~40 ns a call): a thread
        # switch between the read and the write can drop a count, so under
        # heavy contention it may undercount slightly.  Never used for safety.
        self.served = 0
        self.leak_codes: tuple[str, ...] = ()  # why it stayed mapped, found by the reaper

    def exited(self) -> None:
        """Slow path of a call leaving a retiring version: wake whoever waits
        for it to drain (the switch that quiesces it, or the reaper)."""
        if not self.calls:
            self.drained.set()
            self.wake.set()

    # -- transitions ----------------------------------------------------------
    def retire(self) -> None:
        """Stop taking new calls; calls already inside finish here."""
        self.drained.clear()
        self.retiring = True
        if self.state is VersionState.ACTIVE:
            self.state = VersionState.DRAINING
        self.retired_at = time.time()

    def unretire(self) -> None:
        """Serve again: the swap that retired this version was refused."""
        self.retiring = False
        self.state = VersionState.ACTIVE
        self.retired_at = None

    def retain(self, reason: str) -> None:
        """Keep the image loaded for good: some of its code may still run."""
        self._drop_functions()
        self.state, self.note = VersionState.RETAINED, reason

    def released(self) -> None:
        """hotload dropped its reference: never call into the image again."""
        self._drop_functions()

    def leaked(self, reason: str, mapped_bytes: int = 0) -> None:
        self.state, self.note = VersionState.LEAKED, reason
        self.mapped_bytes = mapped_bytes
        self.unloaded_at = self.unloaded_at or time.time()

    def verified(self, gone: bool, mapped_bytes: int) -> None:
        """The kernel's answer after the final close: gone, or still mapped."""
        self.unloaded_at = time.time()
        self.mapped_bytes = mapped_bytes
        self.state = VersionState.UNLOADED if gone else VersionState.LEAKED

    def _drop_functions(self) -> None:
        self.fns = {}
        self.table = []


class Sentinel:
    """Stands in for a version: during a switch (callers wait) or after the
    plugin is unloaded (callers get ``ClosedError``)."""

    __slots__ = ("calls", "retiring", "fns", "served", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.calls: deque[None] = deque()
        self.retiring = True
        self.fns: dict[str, Any] = {}
        self.served = 0

    def exited(self) -> None:
        pass


SWITCHING = Sentinel()
UNLOADED_PLUGIN = Sentinel()


@dataclass(frozen=True)
class VersionInfo:
    """A snapshot of one version, as ``Host.versions()`` reports it.

    ``served`` counts routed calls, ``in_flight`` the calls inside it right
    now; ``mapped_bytes`` is the kernel's count of the image's bytes in
    memory; ``blockers`` are short reason codes for why it stays (or would
    stay) in memory, which ``hotload inspect`` explains."""

    name: str
    seq: int
    plugin_version: str
    state: str
    in_flight: int
    loaded_at: float
    unloaded_at: float | None
    source: str
    copy: str
    digest: str
    size: int
    dlopen_count: int
    dlclose_count: int
    mapped_bytes: int
    blockers: tuple[str, ...] = field(default=())
    note: str = ""
    served: int = 0
    service_errors: int = 0  # host-service calls from this version that raised

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blockers"] = list(self.blockers)
        d["state"] = str(self.state)
        return d
