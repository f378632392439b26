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
import faulthandler
import logging
import random
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import (
    HotloadError,
    PluginCrashedError,
    PluginQuarantinedError,
    PluginStoppedError,
    PluginTimeoutError,
    SignatureError,
)
from . import native
from .metrics import PyStats

if TYPE_CHECKING:
    from .._artifact.loader import Image


log = logging.getLogger(__name__)

_crouter = native.crouter
if _crouter is not None:  # how the compiled router counts a call that raised (metrics.kind)
    _crouter.error_kinds(
        SignatureError,
        PluginTimeoutError,
        (PluginStoppedError, PluginQuarantinedError),  # both: refused without running
        PluginCrashedError,
    )

#: Which router this process uses: "compiled" (``_crouter.c``) or "python".
ROUTER = native.ROUTER


class PyGate(deque):  # type: ignore[type-arg]
    """One version's hot routing state, for the Python router: the deque's
    length is the in-flight count (``append``/``pop`` are atomic under the
    GIL), the slots are the flags and the call table a router reads, and
    ``stats`` its figures per export slot (``metrics.PyStats``; None each
    when the host's metrics are off).  The compiled router's
    ``_crouter.Gate`` has the same interface."""

    __slots__ = ("retiring", "served", "table", "owner", "drained", "wake", "sample", "stats")

    def __init__(
        self,
        owner: Any,
        drained: threading.Event | None = None,
        wake: threading.Event | None = None,
        retiring: bool = False,
        sample: int = 1,
    ) -> None:
        super().__init__()
        self.owner = owner
        self.drained = drained
        self.wake = wake
        self.retiring = retiring
        self.served = 0
        self.table: list[Any] = []
        self.sample = sample
        self.stats: list[PyStats | None] = []

    def release(self) -> None:
        """Drop the owner and the table (see ``Version.release``)."""
        self.owner = None
        self.table = []

    def exited(self) -> None:
        """If no call is inside, wake whoever waits for this version to
        drain (the switch that quiesces it, or the reaper)."""
        if not self:
            if self.drained is not None:
                self.drained.set()
            if self.wake is not None:
                self.wake.set()

    # -- the figures (metrics.py); the compiled gate has the same methods --------------
    def grow(self, n: int) -> None:
        """Room for the figures of ``n`` export slots (set before the table)."""
        while len(self.stats) < n:
            self.stats.append(PyStats() if self.sample else None)

    def enter(self, idx: int) -> int:
        """Count a call of slot ``idx`` in; its start time if sampled, else 0."""
        s = self.stats[idx] if idx < len(self.stats) else None
        if s is None:
            return 0
        next(s.calls)
        s.inflight.append(None)
        return time.perf_counter_ns() if random.random() * self.sample < 1.0 else 0

    def leave(self, idx: int, t0: int, exc: BaseException | None) -> None:
        """Count it out: its latency if sampled, its error if it raised."""
        s = self.stats[idx] if idx < len(self.stats) else None
        if s is None:
            return
        s.inflight.pop()
        if t0:
            s.record(time.perf_counter_ns() - t0)
        if exc is not None:
            s.failed(exc)

    def snapshot(self) -> list[tuple[Any, ...]]:
        return [s.row() for s in self.stats if s is not None]


#: The gate type both routers use in this process.
Gate: Any = _crouter.Gate if _crouter is not None else PyGate


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

    The accounting lives on ``gate`` (a ``Gate``: C or Python, see above),
    which the routers read without going through the version: ``calls`` is
    the gate itself (``len(v.calls)`` is the in-flight count), ``retiring``
    the flag a caller re-checks after counting itself in (see
    ``_registry``), ``served`` counts routed calls."""

    __slots__ = (
        "plugin_name",
        "seq",
        "image",
        "fns",
        "gate",
        "state",
        "drained",
        "wake",
        "unloaded_at",
        "mapped_bytes",
        "retired_at",
        "note",
        "leak_codes",
        "stuck",
        "slots",
    )

    def __init__(
        self, plugin_name: str, seq: int, image: Image, wake: threading.Event, sample: int = 1
    ) -> None:
        self.plugin_name = plugin_name
        self.seq = seq
        self.image = image
        self.fns: dict[str, Any] = dict(image.functions)
        self.state = VersionState.ACTIVE
        self.drained = threading.Event()
        self.wake = wake
        self.gate = Gate(self, self.drained, wake, sample=sample)  # sample 0: no metrics
        self.slots: dict[str, int] = {}  # export -> its slot in the table and figures (commit)
        self.unloaded_at: float | None = None
        self.retired_at: float | None = None
        self.mapped_bytes = 0
        self.note = ""
        self.leak_codes: tuple[str, ...] = ()  # why it stayed mapped, found by the reaper
        self.stuck = ""  # a hook that never returned is still running in this image: why

    @property
    def calls(self) -> Any:
        """The calls in flight: ``len()`` counts them, false when none."""
        return self.gate

    @property
    def retiring(self) -> bool:
        return bool(self.gate.retiring)

    @property
    def served(self) -> int:
        """Routed calls that entered this version.  The Python router counts
        them without a lock (``+= 1`` costs ~15 ns; an atomic counter ~40 ns a
        call): a thread switch between the read and the write can drop a
        count, so under heavy contention it may undercount slightly.  Never
        used for safety."""
        return int(self.gate.served)

    @property
    def table(self) -> list[Any]:
        """The functions in the plugin's index order: what routers call."""
        return self.gate.table  # type: ignore[no-any-return]

    @table.setter
    def table(self, table: list[Any]) -> None:
        self.gate.grow(len(table))  # the figures' slots first: a router counts in them
        self.gate.table = table

    def exited(self) -> None:
        """Slow path of a call leaving a retiring version: wake whoever waits
        for it to drain (the switch that quiesces it, or the reaper)."""
        self.gate.exited()

    def release(self) -> None:
        """The version left the history (unloaded, pruned): break the cycle
        through its gate (gate -> owner and table -> gate), so that it is
        freed when the last reference goes, not at the next full collection
        of the cyclic GC.  Its figures stay readable: a reader that took the
        history before the prune may still be reading them."""
        self.gate.release()

    # -- transitions ----------------------------------------------------------
    def retire(self) -> None:
        """Stop taking new calls; calls already inside finish here."""
        self.drained.clear()
        self.gate.retiring = True
        if self.state is VersionState.ACTIVE:
            self.state = VersionState.DRAINING
        self.retired_at = time.time()

    def unretire(self) -> None:
        """Serve again: the swap that retired this version was refused."""
        self.gate.retiring = False
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

    __slots__ = ("gate", "fns", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.fns: dict[str, Any] = {}
        self.gate = Gate(self, retiring=True)  # every call that meets it takes the slow path

    @property
    def calls(self) -> Any:
        return self.gate

    @property
    def retiring(self) -> bool:
        return True

    @property
    def served(self) -> int:
        return 0

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
    stay) in memory, which ``hotload inspect`` explains (none for an
    isolated version: it leaves memory with its worker process).  ``sandbox``
    names the protections an isolated version's worker runs under (the
    Security page explains each; empty in process or with
    ``Isolated(sandbox=False)``).  ``errors`` counts the routed calls that
    raised (``crashes`` and ``timeouts`` of them, isolated only), and
    ``p50_us``/``p99_us`` are the latency quantiles of the sampled calls
    (``Host(metrics_sample=)``), None before any: the Observability page."""

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
    isolated: bool = False  # runs in its own worker process (load(isolate=True))
    pid: int | None = None  # that worker's pid while it runs
    rss: int = 0  # that worker's resident memory, bytes
    restarts: int = 0  # workers restarted after a crash (on_crash="restart")
    worker: str = ""  # "running", "restarting" or "stopped" (isolated only)
    quarantined: int = 0  # inputs refused after crashing its worker (Isolated(quarantine=))
    service_errors: int = 0  # host-service calls from this version that raised
    # while a canary runs (host.canary): "candidate" or "baseline", and the share of keys
    # whose calls come here; "" and None otherwise
    canary: str = ""
    share: float | None = None
    # the protections its worker runs under (isolated only; empty: none), e.g. ("user-ns",
    # "pid-ns", "mount-ns", "fs-view", "no-new-privs", "no-caps", "landlock", "seccomp")
    sandbox: tuple[str, ...] = field(default=())
    # routed calls that raised (any kind: a bad argument, a crash, a timeout, a stopped
    # worker, the plugin's own error), and of them crashes and timeouts (isolated only);
    # None on a host that counts nothing (Host(metrics=False)): unknown, not zero
    errors: int | None = 0
    crashes: int | None = 0
    timeouts: int | None = 0
    # latency quantiles of the sampled calls (Host(metrics_sample=)), microseconds, to
    # within one histogram bucket (12.5 %); None before any sampled call
    p50_us: float | None = None
    p99_us: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blockers"] = list(self.blockers)
        d["sandbox"] = list(self.sandbox)
        d["state"] = str(self.state)
        return d


# -- what the host checks and sets up as it starts ------------------------------------------
def refuse_free_threading() -> None:
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        raise HotloadError(
            "hotload needs the GIL: its lock-free call routing is not safe on a free-threaded "
            "CPython with the GIL disabled (run with PYTHON_GIL=1)"
        )


def enable_faulthandler() -> None:
    """A crash inside a plugin call kills the process with a signal; make it
    print the Python stack of the crashing thread first, unless the
    application set up faulthandler itself."""
    if not faulthandler.is_enabled() and sys.stderr is not None:
        try:
            # Only the crashing thread: walking the other threads' frames from a
            # signal handler races with them (seen: a dump cut short in a thread
            # that was importing), and the crashing call is what an operator needs.
            faulthandler.enable(all_threads=False)
        except (RuntimeError, ValueError, OSError):  # no usable stderr (a daemon)
            log.debug("faulthandler not enabled: stderr is not a real file")
