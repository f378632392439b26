"""A canary: a candidate build serving a share of one plugin's calls beside
the version serving now, sticky by key, judged on the same live traffic.

``host.canary(name, path, share=0.05, key=0)`` returns a ``Canary``.  Its
state goes one way: ``running`` -> ``promoted`` (the candidate is the only
route; the baseline drains as after a reload) or ``aborted`` (the candidate
drains; the baseline never stopped serving).  The split itself is the
route's (``split.py``, in C for the compiled router); the swap's bookkeeping
is the ``Swapper``'s (``swap.py``), which ends a canary under the plugin's
lock.  This module holds the handle and the judge's thread.
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import Any

from .._artifact import signatures
from .._errors import BusyError, CanaryRefusedError
from . import judge as judging
from .journal import set_origin
from .judge import Judge
from .lifecycle import Version

log = logging.getLogger(__name__)

RUNNING, PROMOTED, ABORTED = "running", "promoted", "aborted"

#: Where a canary's end goes: ``end(canary, promote, verdict)`` (the Swapper's,
#: under the plugin's lock; it returns False when the canary had already ended).
End = Callable[["Canary", bool, str], bool]
Widen = Callable[["Canary", float], None]


def check_share(share: object) -> float:
    """A share is a number in (0, 1], at least one key in 2**32 (less rounds to none)."""
    if isinstance(share, bool) or not isinstance(share, (int, float)):
        raise TypeError(f"share must be a number in (0, 1], not {type(share).__name__}")
    if not 2**-32 <= share <= 1:
        raise ValueError(f"share must be in (0, 1] (at least 2**-32), not {share!r}")
    return float(share)


def _printable(text: str) -> str:
    """A verdict or reason as a terminal may show it: control and format
    characters (an escape sequence in an operator's reason) as ``?``."""
    return "".join("?" if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


def refuse_swap(rec: Any, op: str) -> None:
    """A reload or rollback while a canary runs is refused: which version
    would it replace?  End the canary first.  The same while a release that
    switches this plugin later is staged."""
    if rec.staged is not None:
        raise BusyError(
            f"{rec.name}: staged for release {rec.staged.id}, which switches it at a set time: "
            f"cancel that release before a {op} (`hotload release --cancel {rec.staged.id}`)"
        )
    if rec.canary is not None:
        c = rec.canary
        raise BusyError(
            f"{rec.name}: a canary is running (v{c.candidate.seq} beside v{c.baseline.seq}, "
            f"{c.share:.1%} of keys): promote or abort it before a {op} "
            f"(`hotload canary {rec.name} --promote` or `--abort`)"
        )


def parse_key(key: object) -> tuple[int | None, Callable[..., Any] | None]:
    """A canary's key: an argument's index, or a function of the arguments."""
    if isinstance(key, bool) or not (isinstance(key, int) or callable(key)):
        raise TypeError(
            f"key must be an argument's index or a function of the arguments, not {key!r}"
        )
    if isinstance(key, int):
        if not 0 <= key < 64:
            raise ValueError(f"key={key}: an argument's index, 0 to 63")
        return key, None
    return None, key


def check_start(rec: Any, judge: Judge | None, *, counting: bool) -> None:
    """One canary at a time per plugin, none on a plugin staged for a release;
    a judge needs the figures."""
    if rec.canary is not None:
        raise BusyError(
            f"{rec.name}: a canary is already running (v{rec.canary.candidate.seq}, "
            f"{rec.canary.share:.1%} of keys): promote or abort it first"
        )
    refuse_swap(rec, "canary")
    if judge is not None and not counting:
        raise CanaryRefusedError(
            f"{rec.name}: the judge reads the versions' figures, and this host counts none "
            "(Host(metrics=False)): canary(..., judge=None) to judge by hand"
        )


def check_candidate(old: Any, cand: Any, key_index: int | None) -> None:
    """Both versions of a canary serve at once: they must take the same calls,
    and each would own the plugin's state, so a plugin with state hooks runs
    as a canary only if it says it can (HOTLOAD_SIDE_BY_SIDE).  An argument
    index as the key must exist in some export."""
    if key_index is not None and not any(
        len(signatures.pointer_type(p).args) > key_index for p in cand.prototypes.values()
    ):
        raise ValueError(
            f"{cand.name}: key={key_index}: no export of {cand.name} takes {key_index + 1} "
            "argument(s); give the index of an argument, or a function of them"
        )
    if cand.prototypes != old.prototypes:
        changed = sorted(
            f
            for f in set(cand.prototypes) | set(old.prototypes)
            if cand.prototypes.get(f) != old.prototypes.get(f)
        )
        raise CanaryRefusedError(
            f"{cand.source}: a canary takes the same calls as the version serving, and these "
            f"exports differ: {', '.join(changed)}; a build that changes them goes out by reload "
            "(allow_signature_change=True)"
        )
    desc = cand.descriptor
    hands_over = old.on_unload is not None or (desc is not None and desc.on_unload is not None)
    hands_over = hands_over or old.descriptor is not None and old.descriptor.state is not None
    if hands_over and not (desc is not None and desc.side_by_side):
        raise CanaryRefusedError(
            f"{cand.source}: {cand.name} hands state over (on_unload): as a canary, two versions "
            "would each own the state. A plugin that keeps its state in host services or "
            "handles declares HOTLOAD_SIDE_BY_SIDE() and can run as a canary"
        )


class Canary:
    """A candidate beside the baseline (``host.canary``): ``state``,
    ``verdict``, ``promote()``, ``abort()``, ``widen(share)``, ``wait()``.

    ``verdict`` says why it ended (the figure, both values and the test), or,
    while it runs, what the judge sees.  ``figures()`` gives both sides'
    figures in the window since it started."""

    def __init__(
        self,
        name: str,
        baseline: Version,
        candidate: Version,
        *,
        share: float,
        key: int | Callable[..., Any],
        judge: Judge | None,
        end: End,
        widen: Widen,
        key_errors: Callable[[], int],
    ) -> None:
        self.name = name
        self.baseline = baseline
        self.candidate = candidate
        self.share = share
        self.key = key
        self.judge = judge
        self.state = RUNNING
        self.verdict = "running: " + ("judged" if judge is not None else "not judged")
        self.started = time.monotonic()
        self.started_at = time.time()
        self.ended_at: float | None = None
        self._ended: float | None = None  # monotonic: durations survive a clock jump
        self.build: tuple[bytes, str] = (b"", "")  # the candidate's bytes and source (promote)
        self._end = end
        self._widen = widen
        self._key_errors = key_errors
        # the window starts now on both sides; a canary taking every key leaves the baseline
        # no traffic to compare with, so it is compared with the baseline's whole life
        self._base0 = judging.read(baseline) if share < 1 else judging.Side()
        self._cand0 = judging.read(candidate)
        self._final: tuple[judging.Side, judging.Side] | None = None
        self._key_errors0 = key_errors()  # the route's count: this canary's are the rise
        self._key_errors_final: int | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (
            f"<hotload.Canary {self.name} v{self.candidate.seq} beside v{self.baseline.seq} "
            f"{self.share:.0%} {self.state}>"
        )

    # -- what an operator does ---------------------------------------------------
    def promote(self, reason: str = "promoted by hand") -> bool:
        """Make the candidate the only route; the baseline drains.  False when
        the canary had already ended (its ``verdict`` says how)."""
        return self._end(self, True, reason)

    def abort(self, reason: str = "aborted by hand") -> bool:
        """Stop routing to the candidate; it drains, the baseline serves on.
        False when the canary had already ended."""
        return self._end(self, False, reason)

    def widen(self, share: float) -> None:
        """Send ``share`` of the keys to the candidate (at least the share it
        has: a key never moves back to the baseline while the canary runs)."""
        self._widen(self, check_share(share))

    def wait(self, timeout: float | None = None) -> str:
        """Wait until the canary ends (or ``timeout``); its state."""
        self._done.wait(timeout)
        return self.state

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def key_errors(self) -> int:
        """Calls of this canary whose key could not be hashed (they went to the baseline)."""
        if self._key_errors_final is not None:
            return self._key_errors_final
        return self._key_errors() - self._key_errors0

    # -- what it sees --------------------------------------------------------------
    def sides(self) -> tuple[judging.Side, judging.Side]:
        """The candidate's and the baseline's figures since the canary started
        (until it ended: the window the verdict speaks of)."""
        if self._final is not None:
            return self._final
        cand = judging.since(judging.read(self.candidate), self._cand0)
        base = judging.since(judging.read(self.baseline), self._base0)
        return cand, base

    def figures(self) -> dict[str, Any]:
        cand, base = self.sides()
        return {
            "name": self.name,
            "state": self.state,
            "verdict": self.verdict,
            "share": self.share,
            "baseline_seq": self.baseline.seq,
            "candidate_seq": self.candidate.seq,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "seconds": round((self._ended or time.monotonic()) - self.started, 3),
            "key_errors": self.key_errors(),
            "judged": self.judge is not None,
            "candidate": cand.as_dict(),
            "baseline": base.as_dict(),
        }

    # -- the Swapper's side ----------------------------------------------------------
    def freeze(self) -> None:
        """The figures of the window, kept as they are now: called by the
        Swapper before the route changes (a promoted candidate's later calls
        are not the canary's)."""
        if self._final is None:
            self._final = self.sides()
            self._key_errors_final = self.key_errors()

    def ended(self, promoted: bool, verdict: str) -> None:
        """Called by the Swapper once the route changed."""
        self.freeze()
        with self._lock:
            self.state = PROMOTED if promoted else ABORTED
            self.verdict = _printable(verdict)
        self.ended_at, self._ended = time.time(), time.monotonic()
        self._stop.set()
        self._done.set()

    def start_judging(self) -> None:
        if self.judge is None:
            return
        self._thread = threading.Thread(
            target=self._judge, name=f"hotload-canary-{self.name}", daemon=True
        )
        self._thread.start()

    def _judge(self) -> None:
        judge = self.judge
        assert judge is not None
        set_origin("judge")  # this thread's promote or abort, in the journal
        while not self._stop.wait(judge.interval):
            try:
                if self._look(judge):
                    return
            except Exception:  # the judge must never take the host down; the canary runs on
                log.exception("canary %s: the judge failed; it stops judging", self.name)
                self.verdict = "running: the judge failed (see the log); promote or abort by hand"
                return

    def _look(self, judge: Judge) -> bool:
        """One look; True when the judge is done (an end, or a verdict left to
        an operator)."""
        cand, base = self.sides()
        elapsed = time.monotonic() - self.started
        finding = judging.look(cand, base, judge, elapsed)
        if finding is not None:
            verdict = f"regression in {finding.figure}: {finding.text}"
            if judge.abort:
                self._end(self, False, f"aborted by the judge after {elapsed:.1f} s: {verdict}")
                return True
            self._say(f"running: {verdict} (Judge(abort=False): promote or abort by hand)")
            return False
        untested = judging.untested(cand, base, judge, elapsed)
        cold = judging.cold(cand, judge, elapsed)
        # no baseline to wait for: a canary of every key on a fresh baseline, or keys that all
        # hash to the candidate (an attacker's ten players at share 0.5 never ended)
        alone = base.calls < judge.min_calls and (self.share >= 1 or cand.calls >= judge.min_calls)
        ready = cand.calls >= judge.min_calls and (not untested or alone)
        if elapsed >= judge.bake and ready:
            passed = f"no regression in {elapsed:.1f} s: {judging.summary(cand, base)}"
            if cold:
                passed += f" ({cold})"
            if untested:
                passed += (
                    f" (the baseline had {base.calls:,} calls to compare with: errors judged "
                    f"against Judge(max_error_rate={judge.max_error_rate:g}), not judged: "
                    + ", ".join(t.split(" (")[0] for t in untested if not t.startswith("err"))
                    + ")"
                )
            if judge.promote:
                self._end(self, True, f"promoted by the judge: {passed}")
                return True
            self._say(f"running: {passed} (Judge(promote=False): promote by hand)")
            return False
        wanting = f"; waiting for data: {', '.join(untested)}" if untested and not alone else ""
        if wanting and (unkeyed := self.key_errors()):
            wanting += (
                f" ({unkeyed:,} call(s) whose key could not be hashed went to the baseline: "
                f"see the key function)"
            )
        self._say(
            f"running: judged for {elapsed:.1f} of {judge.bake:g} s{wanting}; "
            + judging.summary(cand, base)
        )
        return False

    def _say(self, verdict: str) -> None:
        """The judge's running verdict, unless the canary ended meanwhile."""
        with self._lock:
            if self.state == RUNNING:
                self.verdict = verdict
