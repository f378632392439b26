"""Replaying a plugin's recorded calls on a candidate build (``host.replay``).

The candidate runs in a worker process of a host of its own (an isolated
version: a crash is counted, not fatal, and nothing it does touches the
serving host), with every host service answered from the recording: the
n-th call of service S within a recorded call gets the answer S gave the
n-th time in the original call (or raises again, if it raised), so a replay
never grants XP twice.  A service call the original never made gets the
service's error value and is counted.

The report counts crashes and *new* errors (a call that returned when
recorded and raises now): either refuses the build when the replay is part
of a reload (``reload(..., replay=True)``).  Results that differ are
reported, with the first differing inputs, but refuse nothing: a changed
reward formula should change rewards.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._artifact.signatures import ffi
from .._errors import HotloadError, PluginCrashedError, PluginStoppedError
from .recording import RecordedCall, ServiceCall

SHOW = 5  # differing inputs and failures a report keeps, of each


class _Recorded(Exception):
    """A service call that raised when recorded raises again in the replay."""


class _Unrecorded(Exception):
    """A service call the recording has no answer for: the plugin gets the error value."""


@dataclass(frozen=True)
class Difference:
    """One call whose outcome differs: the export, its inputs, both outcomes."""

    export: str
    args: tuple[Any, ...]
    recorded: str
    now: str

    def __str__(self) -> str:
        args = ", ".join(_short(a) for a in self.args)
        return f"{self.export}({args}): recorded {self.recorded}, now {self.now}"


@dataclass
class ReplayReport:
    """What a replay found (``str()`` it for the summary)."""

    name: str
    path: str
    calls: int = 0  # replayed
    skipped: int = 0  # not replayable (an argument is a pointer into the caller's memory)
    crashes: int = 0  # calls that crashed the worker now
    new_crashes: int = 0  # of those, calls that did not crash when recorded
    new_errors: int = 0  # returned when recorded, raise now (crashes included)
    same_errors: int = 0  # raised when recorded and now
    fixed: int = 0  # raised when recorded, return now
    differ: int = 0  # returned both times, other results
    unrecorded_services: int = 0  # service calls the recording had no answer for
    stopped: str = ""  # why the replay ended early (the worker's crash loop stopped it)
    seconds: float = 0.0
    failures: list[Difference] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No new crash and no new error: a reload with ``replay=True`` goes ahead."""
        return self.new_crashes == 0 and self.new_errors == 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``hotload replay --json``)."""
        out: dict[str, Any] = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        out.update(name=self.name, path=self.path, ok=self.ok, stopped=self.stopped)
        out["seconds"] = round(self.seconds, 3)
        out["failures"] = [str(d) for d in self.failures]
        out["differences"] = [str(d) for d in self.differences]
        out["summary"] = str(self)
        return out

    def __str__(self) -> str:
        lines = [
            f"{self.name}: replayed {self.calls:,} recorded calls on {self.path} in "
            f"{self.seconds:.2f} s: {self.crashes:,} crashed, {self.new_errors:,} new errors, "
            f"{self.differ:,} other results, {self.same_errors:,} same errors, "
            f"{self.fixed:,} errors fixed"
            + (f", {self.skipped:,} skipped (pointer arguments)" if self.skipped else "")
            + (
                f", {self.unrecorded_services:,} service calls not in the recording "
                f"(answered with the error value)"
                if self.unrecorded_services
                else ""
            )
        ]
        if self.stopped:
            lines.append(f"  stopped after {self.calls:,} calls: {self.stopped}")
        lines += [f"  failed: {d}" for d in self.failures]
        lines += [f"  differs: {d}" for d in self.differences]
        return "\n".join(lines)


def _short(x: Any, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _outcome(ok: bool, value: Any) -> str:
    return _short(value) if ok else f"raised {type(value).__name__}: {_short(str(value), 80)}"


def _same(a: Any, b: Any) -> bool:
    """Equal results; a C struct (cffi) by its bytes."""
    if isinstance(a, ffi.CData) and isinstance(b, ffi.CData):
        try:
            return bool(ffi.buffer(ffi.addressof(a))[:] == ffi.buffer(ffi.addressof(b))[:])
        except (TypeError, ValueError):
            return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an __eq__ that raises: not the same
        return False


def _replayable(args: tuple[Any, ...]) -> bool:
    """A pointer argument (cffi cdata that is not a struct value) points
    into the caller's memory, which may be gone or changed since."""
    for a in args:
        if isinstance(a, ffi.CData) and ffi.typeof(a).kind in ("pointer", "array"):
            return False
    return True


class _Answers:
    """The recording's answers for the call being replayed, by service name."""

    def __init__(self) -> None:
        self.pending: dict[str, list[ServiceCall]] = {}
        self.unrecorded = 0

    def start(self, services: Iterable[ServiceCall]) -> None:
        pending: dict[str, list[ServiceCall]] = {}
        for s in services:
            pending.setdefault(s.name, []).append(s)
        for queue in pending.values():
            queue.reverse()  # pop() from the end: first recorded, first answered
        self.pending = pending

    def service(self, name: str) -> Callable[..., Any]:
        def answer(*args: Any) -> Any:
            queue = self.pending.get(name)
            if not queue:
                self.unrecorded += 1
                raise _Unrecorded(f"service {name}{args!r}: not in the recording")
            s = queue.pop()
            if not s.ok:  # raise again (a new exception: the recorded one stays as it was)
                raise _Recorded(f"service {name}: recorded as raising {s.answer!r}")
            return s.answer

        answer.__name__ = f"replay_{name}"
        return answer


def run(
    name: str,
    path: Any,
    calls: list[RecordedCall],
    *,
    services: Mapping[str, tuple[str, Any]],
    make_host: Callable[[str], Any],
    isolate: Any,
) -> ReplayReport:
    """Replay ``calls`` on the build at ``path``, in a worker of a host made
    by ``make_host(workdir)`` that provides each of ``services`` (name ->
    (prototype, error)) from the recording."""
    report = ReplayReport(name, str(getattr(path, "source", path)))
    answers = _Answers()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hotload-replay-") as work:
        host = make_host(work)
        try:
            for sname, (prototype, error) in services.items():
                host.provide(sname, answers.service(sname), prototype, error=error)
            plugin = host.load(path, isolate=isolate)
            for call in calls:
                _one(plugin, call, answers, report)
                if report.stopped:
                    break
        finally:
            host.close()
    report.unrecorded_services = answers.unrecorded
    report.seconds = time.perf_counter() - t0
    return report


def _one(plugin: Any, call: RecordedCall, answers: _Answers, report: ReplayReport) -> None:
    if not _replayable(call.args):
        report.skipped += 1
        return
    answers.start(call.services)
    report.calls += 1
    try:
        fn = plugin[call.export]
    except Exception as exc:  # noqa: BLE001 - an export the candidate lacks
        ok, now = False, exc
    else:
        try:
            ok, now = True, fn(*call.args)
        except Exception as exc:  # noqa: BLE001 - counted and shown
            ok, now = False, exc
    diff = Difference(call.export, call.args, _outcome(call.ok, call.result), _outcome(ok, now))
    if isinstance(now, PluginStoppedError):  # crashed too often: the rest would say the same
        report.stopped = str(now)
        report.new_crashes += 1
        return
    if isinstance(now, PluginCrashedError):
        report.crashes += 1
        if call.ok or not isinstance(call.result, PluginCrashedError):
            report.new_crashes += 1
            if not call.ok and len(report.failures) < SHOW:
                report.failures.append(diff)
    if not ok and call.ok:
        report.new_errors += 1
        if len(report.failures) < SHOW:
            report.failures.append(diff)
    elif not ok:
        report.same_errors += 1
    elif not call.ok:
        report.fixed += 1
    elif not _same(call.result, now):
        report.differ += 1
        if len(report.differences) < SHOW:
            report.differences.append(diff)


def replay_plugin(
    rec: Any,
    path: Any,
    calls: list[RecordedCall] | None,
    *,
    services: Any,
    make_host: Callable[[str], Any],
    isolate: Any,
) -> ReplayReport:
    """``host.replay``: the calls of ``rec``'s recording (or ``calls``) on
    ``path`` (None: the plugin's own file)."""
    if calls is None:
        if rec.recording is None:
            raise HotloadError(
                f"{rec.name}: no calls recorded to replay: start with host.record({rec.name!r})"
            )
        calls = rec.recording.calls()
    provided = {n: (s.prototype, s.error) for n, s in services.services.items()}
    target = path if path is not None else rec.source
    return run(rec.name, target, calls, services=provided, make_host=make_host, isolate=isolate)
