"""Replaying a plugin's recorded calls on a candidate build (``host.replay``).

The candidate runs in a replay worker (``_process/replaying``, driven by
``_process/replay_driver``): a sandboxed process of its own, where a crash is
counted, not fatal, and nothing it does touches the serving host.  The
recorded calls go to it in bulk with the answers of the service calls each
made, and the worker answers the plugin's service calls itself: the n-th
call of service S within a recorded call gets the answer S gave the n-th
time in the original call (its error value, if it raised), so a replay never
grants XP twice, never calls a real service, and makes no round trip per
service call.  A service call the recording does not hold gets the service's
error value; one made with other arguments gets the recorded answer; both
are counted and named (``divergences``).

The report counts crashes and *new* errors (a call that returned when
recorded and raises now): either refuses the build when the replay is part
of a reload (``reload(..., replay=True)``).  Results that differ are
reported, with the first differing inputs, but refuse nothing: a changed
reward formula should change rewards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._artifact.loader import Candidate
from .._artifact.signatures import ffi
from .._errors import HotloadError, PluginCrashedError, PluginStoppedError
from .recording import RecordedCall

SHOW = 5  # differing inputs and failures a report keeps, of each


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
    other_args_services: int = 0  # service calls made with other arguments than recorded
    stopped: str = ""  # why the replay ended early (the worker's crash loop stopped it)
    seconds: float = 0.0
    failures: list[Difference] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    divergences: list[str] = field(default_factory=list)  # service calls unlike the recording

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
        out["divergences"] = list(self.divergences)
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
            + (
                f", {self.other_args_services:,} service calls with other arguments than "
                f"recorded (answered from the recording)"
                if self.other_args_services
                else ""
            )
        ]
        if self.stopped:
            lines.append(f"  stopped after {self.calls:,} calls: {self.stopped}")
        lines += [f"  failed: {d}" for d in self.failures]
        lines += [f"  differs: {d}" for d in self.differences]
        lines += [f"  diverged: {d}" for d in self.divergences]
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


def run(
    name: str,
    cand: Any,
    calls: list[RecordedCall],
    *,
    table: Any,
    isolate: Any,
) -> ReplayReport:
    """Replay ``calls`` on the build ``cand`` (a ``Candidate``) in a replay
    worker (``_process/replaying``), with every host service the build
    imports from ``table`` (checked as a load checks them, never called)
    answered there from the recording."""
    from .._process.replay_driver import Driver

    if not isinstance(calls, list) or not all(
        isinstance(c, RecordedCall) and isinstance(c.export, str) and isinstance(c.args, tuple)
        for c in calls
    ):
        raise HotloadError(
            f"{name}: replay(calls=...) takes a list of RecordedCall (an export name, a tuple "
            f"of arguments)"
        )
    report = ReplayReport(name, cand.source)
    t0 = time.perf_counter()
    driver = Driver(cand, table, isolate)
    try:
        driver.start()  # it boots while the calls are encoded
        jobs = []
        for call in calls:
            if not _replayable(call.args):
                report.skipped += 1
                continue
            jobs.append((call, driver.encode(call)))
        driver.run(jobs, lambda call, ok, now, div: _judge(call, ok, now, div, report))
    finally:
        driver.close()
    report.stopped = driver.stopped
    report.seconds = time.perf_counter() - t0
    return report


def _judge(
    call: RecordedCall,
    ok: bool,
    now: Any,
    diverged: tuple[int, int, list[str]],
    report: ReplayReport,
) -> None:
    """Count one replayed call's outcome (and its services' divergences)."""
    report.calls += 1
    unrecorded, other, detail = diverged
    report.unrecorded_services += unrecorded
    report.other_args_services += other
    for d in detail:
        if len(report.divergences) < SHOW:
            svc, _, kind = d.partition("\t")
            args = ", ".join(_short(a) for a in call.args)
            report.divergences.append(f"{call.export}({args}) called {svc}: {kind}")
    diff = Difference(call.export, call.args, _outcome(call.ok, call.result), _outcome(ok, now))
    if isinstance(now, PluginStoppedError):  # crashed too often: the rest would say the same
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
    read: Callable[[Any], Any],
    isolate: Any,
) -> ReplayReport:
    """``host.replay``: the calls of ``rec``'s recording (or ``calls``) on
    ``path`` (a path or a candidate; None: the plugin's own file), read
    by ``read`` (the host's read policy)."""
    if calls is None:
        if rec.recording is None:
            raise HotloadError(
                f"{rec.name}: no calls recorded to replay: start with host.record({rec.name!r})"
            )
        calls = rec.recording.calls()
    target = path if path is not None else rec.source
    cand = target if isinstance(target, Candidate) else read(target)
    return run(rec.name, cand, calls, table=services, isolate=isolate)
