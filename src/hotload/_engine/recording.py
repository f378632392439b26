"""Recording a plugin's calls for replay (``host.record``).

While a plugin is recorded, its route holds a recorder: a ring of its last
``calls`` calls, each with the export, the arguments (the caller's own
objects, kept by reference: nothing is copied on the call path), whether it
returned, what it returned or raised, and the host-service calls it made with
their answers.  The compiled router keeps it in C (``_crouter.Recorder``: one
pointer test per call when off, a tuple and a few stores when on); the Python
router in ``PyRecorder``, with the same semantics.

Service calls are collected per thread: while a recorded call runs on a
thread, the service layer's ``note`` appends each service call made on that
thread to it.  A recorded call made from inside another (a service that
calls a plugin) keeps its own list and gives the outer one back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .native import crouter as _native

MAX_CALLS = 1 << 24  # the largest ring: ~16M calls
DEFAULT_CALLS = 10_000


@dataclass(frozen=True)
class ServiceCall:
    """A host-service call a recorded call made, and its answer."""

    name: str
    args: tuple[Any, ...]
    ok: bool  # False: the service raised (``answer`` is the exception)
    answer: Any


@dataclass(frozen=True)
class RecordedCall:
    """One recorded call of a plugin."""

    export: str
    args: tuple[Any, ...]
    ok: bool  # False: the call raised (``result`` is the exception)
    result: Any
    services: list[ServiceCall] = field(default_factory=list)


class _Notes(threading.local):
    def __init__(self) -> None:
        self.depth = 0
        self.notes: list[Any] | None = None


_tl = _Notes()


class PyRecorder:
    """The Python router's recorder (the compiled router's is ``_crouter.Recorder``)."""

    __slots__ = ("capacity", "total", "_ring", "_lock")

    def __init__(self, capacity: int) -> None:
        if not 1 <= capacity <= MAX_CALLS:
            raise ValueError(f"Recorder(capacity): 1 to {MAX_CALLS} calls")
        self.capacity = capacity
        self.total = 0
        self._ring: list[tuple[Any, ...] | None] = [None] * capacity
        self._lock = threading.Lock()

    def through(self, fn: Callable[..., Any], idx: int, args: tuple[Any, ...]) -> Any:
        """``fn(*args)``, recorded."""
        tl = _tl
        outer, tl.notes = tl.notes, None
        tl.depth += 1
        try:
            result = fn(*args)
        except BaseException as exc:
            self._add((idx, args, False, exc, tl.notes))
            raise
        else:
            self._add((idx, args, True, result, tl.notes))
            return result
        finally:
            tl.notes = outer
            tl.depth -= 1

    def _add(self, entry: tuple[Any, ...]) -> None:
        with self._lock:
            self._ring[self.total % self.capacity] = entry
            self.total += 1

    def calls(self) -> list[tuple[Any, ...]]:
        with self._lock:
            n, cap = self.total, self.capacity
            order = range(n) if n <= cap else range(n - cap, n)
            out = [self._ring[i % cap] for i in order]
        return [(i, a, ok, r, list(s or ())) for i, a, ok, r, s in out]  # type: ignore[misc]


def _py_note(entry: tuple[Any, ...]) -> None:
    tl = _tl
    if tl.depth:
        if tl.notes is None:
            tl.notes = []
        tl.notes.append(entry)


def _py_recording() -> bool:
    return _tl.depth > 0


#: The recorder type of the router this process runs.
Recorder: Any = _native.Recorder if _native is not None else PyRecorder
#: ``note((name, args, ok, answer))``: keep a service call in the recorded call on this thread.
note: Callable[[tuple[Any, ...]], None] = _native.note if _native is not None else _py_note
#: Whether a recorded call runs on this thread.
recording: Callable[[], bool] = _native.recording if _native is not None else _py_recording


def noted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a provided service) whose calls are noted for the recorded
    call running on the calling thread, if any (in C with the compiled router)."""
    if _native is not None:
        return _native.Noted(name, fn)  # type: ignore[no-any-return]

    def call(*args: Any) -> Any:
        try:
            answer = fn(*args)
        except BaseException as exc:
            note((name, args, False, exc))
            raise
        note((name, args, True, answer))
        return answer

    return call


def calls_of(recorder: Any, names: dict[int, str]) -> list[RecordedCall]:
    """The recorder's calls, oldest first, with export names (``names``:
    slot -> export)."""
    out = []
    for idx, args, ok, result, services in recorder.calls():
        out.append(
            RecordedCall(
                names.get(idx, f"#{idx}"),
                args,
                ok,
                result,
                [ServiceCall(*s) for s in services],
            )
        )
    return out


class Recording:
    """``host.record(name)``'s handle: the plugin's recent calls, kept until
    ``stop()`` (or ``host.record(name, calls=0)``)."""

    def __init__(
        self,
        name: str,
        recorder: Any,
        names: Callable[[], dict[int, str]],
        stop: Callable[[], None],
    ) -> None:
        self.name = name
        self._recorder = recorder
        self._names = names
        self._stop = stop

    @property
    def capacity(self) -> int:
        """How many calls the ring keeps."""
        return int(self._recorder.capacity)

    @property
    def total(self) -> int:
        """Calls recorded since the recording started (the ring keeps the last ``capacity``)."""
        return int(self._recorder.total)

    def calls(self) -> list[RecordedCall]:
        """The calls the ring holds now, oldest first."""
        return calls_of(self._recorder, self._names())

    def stop(self) -> None:
        """Stop recording (the calls recorded so far stay readable here)."""
        self._stop()

    def __repr__(self) -> str:
        return f"<Recording of {self.name}: {self.total:,} calls, keeps {self.capacity:,}>"


def record(rec: Any, services: Any, calls: int | None) -> Recording | None:
    """Start recording the plugin of ``rec`` (a ``PluginRecord``), keeping
    its last ``calls`` calls; 0 stops a recording.  A recording that runs
    with that ring already is kept (asking twice must not throw its calls
    away); one with another size is replaced (its calls stay readable on its
    handle).  ``None``: the running recording, or a new one of ``DEFAULT_CALLS``."""
    if calls is not None and (
        isinstance(calls, bool) or not isinstance(calls, int) or not 0 <= calls <= MAX_CALLS
    ):
        raise ValueError(f"record({rec.name!r}, calls={calls!r}): 0 to {MAX_CALLS:,} calls")
    with rec.lock:
        running = rec.recording
        if running is not None and calls in (None, running.capacity):
            return running  # type: ignore[no-any-return]
        calls = DEFAULT_CALLS if calls is None else calls
        if running is not None:
            running.stop()
        if calls == 0:
            return None
        plugin = rec.plugin
        recorder = Recorder(calls)
        stopped = threading.Event()

        def stop() -> None:
            with rec.lock:
                if stopped.is_set():
                    return
                stopped.set()
                if plugin._route.recorder is recorder:
                    plugin._record(None)
                if rec.recording is handle:
                    rec.recording = None
                services.note_calls(False)

        handle = Recording(rec.name, recorder, plugin._export_names, stop)
        services.note_calls(True)
        plugin._record(recorder)
        rec.recording = handle
        return handle
