"""A rollout step's build taken as an in-host canary: the agent's side (start
one, watch it, promote an idle one after its bake, remember a build its judge
aborted) and the ``canary`` record a host's report carries, built by the
agent and checked by every reader.

Why a canary and not a reload: a reload only says the build loads, and the
heartbeat's health only sees crashes and failed service calls.  The canary's
judge compares the new build's error rate and latency with the build serving,
on the same traffic at the same moment (the Releases page), so a build that
fails 1 % of its calls is aborted in seconds, on the first hosts, and the
rollout reverts with the judge's verdict as its reason.

The report's ``canary``: ``{digest, state, verdict, share, seconds,
candidate, baseline}``; ``state`` is ``running``, ``promoted``, ``aborted``
or ``skipped`` (the rule asked for a canary and the host took the build
otherwise: it ran it already, or the build cannot run beside the one serving,
and its ``verdict`` says why); each side is ``{calls, errors, crashes,
service_errors, error_rate, p50_us, p99_us}`` in the canary's window.  Anyone
who can write a host's report can write anything there: ``parse_report``
keeps only a well-formed record and names what it left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .._engine.judge import Judge
from .._errors import CanaryRefusedError, FleetError, HotloadError
from ._schema import CanaryPlan, check_digest

if TYPE_CHECKING:
    from .._artifact.loader import Candidate
    from .._engine.canary import Canary
    from .._ops.protocols import PluginHost

log = logging.getLogger(__name__)

STATES = ("running", "promoted", "aborted", "skipped")
MAX_VERDICT = 1000  # characters of a verdict a report carries
LET_GO = "aborted by the fleet: the desired build is now"  # not a verdict on the build
IDLE_GRACE = 2.0  # seconds past its bake before the agent promotes a canary that had no traffic
_SIDE_COUNTS = ("calls", "errors", "crashes", "service_errors")
_MAX_COUNT = 2**64 - 1
_MAX_US = 1e12
_MAX_SECONDS = 1e8


def cannot_run_beside(exc: HotloadError) -> bool:
    """Whether ``host.canary`` refused the build for its shape (a changed
    export, state hooks without ``HOTLOAD_SIDE_BY_SIDE``, a host that counts
    no figures), which a plain reload handles, rather than for being bad."""
    return isinstance(exc, CanaryRefusedError)


def judge_for(plan: CanaryPlan) -> Judge:
    """The in-host judge of a rollout step: the defaults, with the step's bake."""
    return Judge(bake=plan.bake, interval=min(0.5, plan.bake))


# ---- the report's record ---------------------------------------------------------------


def _round(x: Any, digits: int) -> Any:
    return round(float(x), digits) if isinstance(x, (int, float)) else None


def _side(side: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(side.get(k) or 0) for k in _SIDE_COUNTS}
    out["error_rate"] = _round(side.get("error_rate"), 6) or 0.0
    out["p50_us"] = _round(side.get("p50_us"), 2)
    out["p99_us"] = _round(side.get("p99_us"), 2)
    return out


def record(canary: Canary, digest: str) -> dict[str, Any]:
    """The ``canary`` of a report: the canary's state, verdict and both
    sides' figures (``canary.figures()``), compact."""
    fig = canary.figures()
    return {
        "digest": digest,
        "state": fig["state"],
        "verdict": str(fig["verdict"])[:MAX_VERDICT],
        "share": fig["share"],
        "seconds": _round(fig["seconds"], 1),
        "candidate": _side(fig["candidate"]),
        "baseline": _side(fig["baseline"]),
    }


def skipped(digest: str, why: str) -> dict[str, Any]:
    """The ``canary`` of a host that took the rule's build without one."""
    return {"digest": digest, "state": "skipped", "verdict": why[:MAX_VERDICT]}


def _within(v: object, lo: float, hi: float, *, whole: bool = False) -> bool:
    """A JSON number (not a bool; an integer when ``whole``) in [lo, hi]:
    NaN and infinities are not."""
    kinds: tuple[type, ...] = (int,) if whole else (int, float)
    return type(v) in kinds and lo <= v <= hi  # type: ignore[operator]


def _bad_side(side: object) -> str | None:
    if not isinstance(side, dict):
        return "not an object"
    for key in _SIDE_COUNTS:
        v = side.get(key)
        if not _within(v, 0, _MAX_COUNT, whole=True):
            return f"{key} {v!r:.30} is not a count"
    rate = side.get("error_rate")
    if not _within(rate, 0, 1):
        return f"error_rate {rate!r:.30} is not a rate"
    for key in ("p50_us", "p99_us"):
        v = side.get(key)
        if v is not None and not _within(v, 0, _MAX_US):
            return f"{key} {v!r:.30} is not a latency"
    return None


def _bad(rec: dict[str, Any]) -> str | None:
    try:
        check_digest(rec.get("digest"), "digest")
    except HotloadError:
        return f"digest {rec.get('digest')!r:.30} is not a SHA-256 digest"
    if rec.get("state") not in STATES:
        return f"state {rec.get('state')!r:.30} is not one of {', '.join(STATES)}"
    verdict = rec.get("verdict")
    if not isinstance(verdict, str) or len(verdict) > MAX_VERDICT:
        return "verdict is not a text of at most 1000 characters"
    if rec["state"] == "skipped":
        return None
    share, seconds = rec.get("share"), rec.get("seconds")
    if not _within(share, 2**-32, 1):
        return f"share {share!r:.30} is not in (0, 1]"
    if not _within(seconds, 0, _MAX_SECONDS):
        return f"seconds {seconds!r:.30} is not a duration"
    for side in ("candidate", "baseline"):
        why = _bad_side(rec.get(side))
        if why:
            return f"{side}: {why}"
    return None


def parse_report(value: object) -> tuple[dict[str, Any] | None, str | None]:
    """A report's ``canary`` as read from Redis: the record if well formed
    (only its known fields), else None and what was wrong."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, "canary: not an object"
    why = _bad(value)
    if why:
        return None, f"canary: {why}"
    keys = ("digest", "state", "verdict", "share", "seconds", "candidate", "baseline")
    out = {k: value[k] for k in keys if k in value}
    for side in ("candidate", "baseline"):
        if side in out:
            out[side] = {k: out[side].get(k) for k in (*_SIDE_COUNTS, "error_rate")} | {
                k: out[side].get(k) for k in ("p50_us", "p99_us")
            }
    return out, None


# ---- the agent's canaries -----------------------------------------------------------------


class Canaries:
    """The canaries a fleet agent runs (one per plugin at most), the last
    one that ended per plugin, and the builds whose canary was aborted for
    a decision (a rollout's revision): such a build is not tried again
    until another rollout names it, so a bad build is not canaried in a
    loop at every step of the rollout that carries it."""

    def __init__(self, host: PluginHost, agent: str) -> None:
        self.host = host
        self.agent = agent
        self._last: dict[str, tuple[str, Canary]] = {}  # plugin -> (digest, its last canary)
        self._aborted: dict[tuple[str, str], tuple[Hashable, str]] = {}  # -> (decision, verdict)
        self._seen: dict[str, str] = {}  # plugin -> its canary's state when last reported

    def of(self, name: str, digest: str | None = None) -> Canary | None:
        """This agent's last canary of ``name`` (of ``digest``, when given)."""
        last = self._last.get(name)
        if last is None or (digest is not None and last[0] != digest):
            return None
        return last[1]

    def last_record(self, name: str) -> dict[str, Any] | None:
        """The report's ``canary`` of the last canary of ``name``: a verdict
        stays in ``status`` after its rollout reverted."""
        last = self._last.get(name)
        return record(last[1], last[0]) if last is not None else None

    def running(self) -> bool:
        return any(c.running for _, c in self._last.values())

    def changed(self) -> bool:
        """Whether a canary started or ended since the last call: the agent
        then syncs, and the verdict goes out at once."""
        states = {n: c.state for n, (_, c) in self._last.items()}
        if states == self._seen:
            return False
        self._seen = states
        return True

    def let_go(self, name: str, digest: str | None) -> None:
        """Abort this agent's running canary of ``name`` when the desired
        build is another (a revert, an abort, a new rollout)."""
        c = self.of(name)
        if c is not None and c.running and self._last[name][0] != digest:
            what = digest[:12] if digest else "the build the host ran before the fleet"
            c.abort(f"{LET_GO} {what}")

    def refused(self, name: str, digest: str, decision: Hashable) -> str | None:
        """The verdict that aborted ``digest``'s canary for this decision, if one did."""
        found = self._aborted.get((name, digest))
        return found[1] if found is not None and found[0] == decision else None

    def start(self, name: str, cand: Candidate, digest: str, plan: CanaryPlan) -> str | None:
        """Start ``cand`` as a canary beside the version serving; None when it
        runs, else why it cannot run beside it (then it is reloaded)."""
        try:
            c = self.host.canary(name, cand, share=plan.share, key=plan.key, judge=judge_for(plan))
        except ValueError as exc:  # the plan's key: no export takes that argument
            raise FleetError(f"{name}: canary: {exc}") from None
        except HotloadError as exc:
            if not cannot_run_beside(exc):
                raise
            log.info("fleet agent %s: %s: not run as a canary: %s", self.agent, name, exc)
            return f"not run as a canary ({exc}); reloaded, judged by its health"
        self._last[name] = (digest, c)
        log.info(
            "fleet agent %s: %s: %s as a canary, %.1f%% of keys, bake %gs",
            *(self.agent, name, digest[:12], 100 * plan.share, plan.bake),
        )
        return None

    def ended(self, name: str, digest: str, decision: Hashable) -> str | None:
        """The verdict of ``digest``'s aborted canary if it was aborted under
        ``decision``: the first time it is seen aborted, it is remembered
        for the decision in force; a later decision (another rollout) may
        try the build again."""
        c = self.of(name, digest)
        judged = c is not None and c.state == "aborted" and not c.verdict.startswith(LET_GO)
        if c is not None and judged and (name, digest) not in self._aborted:
            self._aborted[(name, digest)] = (decision, c.verdict)
        return self.refused(name, digest, decision)

    def promote_idle(self, name: str) -> None:
        """A canary whose judge still waits for calls after its bake (an idle
        host, or a share too small for its traffic) is ended by the agent,
        saying so: a step waits for every host, and the judge never ends a
        canary without traffic.  Promoted when none of its few calls failed
        (crashes were judged meanwhile); aborted when some did, as too few
        calls cannot clear a build that fails."""
        c = self.of(name)
        judge = c.judge if c is not None else None
        if c is None or judge is None or not c.running:
            return
        elapsed = time.monotonic() - c.started
        if elapsed < judge.bake + max(IDLE_GRACE, 2 * judge.interval):
            return
        cand, base = c.sides()
        if cand.calls >= judge.min_calls:
            return  # the judge decides at its next look
        few = (
            f"after {elapsed:.1f} s: the candidate had {cand.calls:,} call(s), fewer than "
            f"the judge's {judge.min_calls:,}"
        )
        if base.calls >= judge.min_calls and c.share < 1:
            # a busy host whose keys missed the share (few keys, a constant key argument,
            # keys that cannot be hashed): the build was never tried, so it is not promoted
            c.abort(
                f"aborted by the fleet agent {few}, while the baseline had {base.calls:,}: the "
                f"share's keys ({c.share:.3g} of them, key {c.key}) took almost none of this "
                f"host's calls, so the build was not judged (a wider --share, or another --key)"
            )
        elif cand.failed or cand.crashes or cand.stopped:
            c.abort(f"aborted by the fleet agent {few}, and {cand.failed:,} of them failed")
        else:
            c.promote(f"promoted by the fleet agent {few}: only crashes were judged")

    def forget(self) -> None:
        """Redis lost its data (revisions may restart): aborted builds may be tried again."""
        self._aborted.clear()
        self._last = {n: last for n, last in self._last.items() if last[1].state != "aborted"}
