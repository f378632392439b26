"""What a rollout waits for: each host it counts, classified against the rules
it should follow (done, pending and why, refused), and the line printed while
it waits.

A host is *done* only when its own report says so: live on the digest its
rule names, or, for a rule without a digest, a report written for this rev
that says it went back to its own build.  A host without a report, or whose
report predates the rules, is *pending*, never done: the controller reports
success only for hosts it has seen report the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._schema import Rule, count_of, pick

SHOWN = 3  # hosts named in a progress line; the rest are counted


@dataclass
class Tally:
    """One look at the hosts a wait counts."""

    done: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # host -> why it is waited for
    refused: dict[str, str] = field(default_factory=dict)  # host -> its error

    def waiting(self, total: int | None = None) -> str:
        """``2/3 hosts live, waiting for game-3 (no heartbeat 3 s)``."""
        total = total if total is not None else len(self.done) + len(self.pending)
        named = [f"{h} ({why})" for h, why in sorted(self.pending.items())[:SHOWN]]
        more = len(self.pending) - SHOWN
        return f"{len(self.done)}/{total} hosts live, waiting for {', '.join(named)}" + (
            f" and {more} more" if more > 0 else ""
        )


def classify(host: Mapping[str, Any], plugin: str, rules: list[Rule], rev: int) -> tuple[str, str]:
    """``("done" | "pending" | "refused", why)`` for a live host, judged by
    its report for ``plugin`` against ``rules`` written as ``rev``."""
    rep = host.get("plugins", {}).get(plugin) or {}
    rule = pick(rules, host.get("labels") or {})
    fresh = isinstance(rep.get("rev"), int) and rep["rev"] >= rev
    state = rep.get("state")
    if rule is None:
        return "done", ""  # the fleet asks nothing of this host
    if rule.digest is not None:
        if state == "live" and rep.get("digest") == rule.digest:
            return "done", ""
        refused = state == "invalid" or (state == "failed" and rep.get("target") == rule.digest)
    else:
        if fresh and state in ("live", "unloaded") and rep.get("target") is None:
            return "done", ""
        refused = state in ("failed", "invalid")
    if fresh and refused:
        return "refused", str(rep.get("error"))
    return "pending", why_pending(host, rep)


def promoted(host: Mapping[str, Any], plugin: str, digest: str) -> bool:
    """Whether the host's report says its in-host judge promoted ``digest``."""
    canary = ((host.get("plugins") or {}).get(plugin) or {}).get("canary") or {}
    return canary.get("digest") == digest and canary.get("state") == "promoted"


def judged(host: Mapping[str, Any], plugin: str, rule: Rule | None = None) -> tuple[str, str]:
    """``("done" | "pending" | "refused", why)`` for a host whose report says
    it runs the step's build.  When the rule asked for a canary, the report's
    ``canary`` must say that the host's judge promoted the build (or why the
    host took it without one: ``skipped``); a report without it is pending (a
    report is untrusted input: one that says too little proves nothing).
    Then by the health its heartbeat carries for the
    version it reported: that version crashed, timed out, stopped its worker
    or had a host-service call fail -> refused (after a promoted canary, whose
    judge compared those with the old build's on the same traffic, only a
    stopped worker) (the step fails: a build that
    loads is not yet a good build); no heartbeat since it went live -> pending
    (the bake waits for one, ``FleetAgent`` beats within 0.25 s of a swap).  A
    host whose heartbeat carries no health for the plugin (an older agent,
    or more plugins than a heartbeat lists) is not judged by health."""
    compared = False  # its judge compared the build with the one before, on the same traffic
    if rule is not None and rule.canary is not None and rule.digest is not None:
        rep = (host.get("plugins") or {}).get(plugin) or {}
        canary = rep.get("canary") or {}
        if canary.get("digest") != rule.digest or canary.get("state") not in (
            "promoted",
            "skipped",
        ):
            bad = rep.get("canary_error")
            return "pending", "no verdict of its canary in its report" + (
                f" ({str(bad)[:80]})" if bad else ""
            )
        compared = canary.get("state") == "promoted"
    health = (host.get("health") or {}).get(plugin)
    if health is None:
        return "done", ""
    seq = ((host.get("plugins") or {}).get(plugin) or {}).get("seq")
    if isinstance(seq, int) and health.get("seq") != seq:
        return "pending", "its first heartbeat on the new build"
    words = (
        ("crashes", "crash", "crashes"),
        ("timeouts", "timeout", None),
        ("service_errors", "failed host-service call", None),
    )
    # A judge that promoted the build weighed its errors against the old build's (a
    # service that fails now and then fails for both): only a stopped worker is news.
    counted = () if compared else words
    bad = [count_of(health[key], one, many) for key, one, many in counted if health.get(key)]
    if health.get("worker") == "stopped":
        bad.append("its worker stopped")
    if bad:
        return "refused", f"the new build is unhealthy here (v{seq}): {', '.join(bad)}"
    return "done", ""


def why_pending(host: Mapping[str, Any], rep: Mapping[str, Any]) -> str:
    """What a pending host is doing, for the progress line."""
    age = host.get("heartbeat_age")
    ttl = host.get("ttl")
    beat = ttl / 3 if isinstance(ttl, (int, float)) and ttl > 0 else 2.5
    if isinstance(age, (int, float)) and age > 1.5 * beat:
        return f"no heartbeat {age:.0f} s"
    if not rep:
        return "no report yet"
    if rep.get("state") == "invalid":
        return f"refused the desired state: {str(rep.get('error'))[:80]}"
    if rep.get("state") == "ignored":
        return "does not take this plugin from the fleet (Host(fleet_plugins=...))"
    if rep.get("state") == "failed":
        return f"failed before: {str(rep.get('error'))[:60]}"
    if rep.get("state") == "canary":
        return canary_progress(rep.get("canary") or {})
    running = rep.get("version") or str(rep.get("digest") or "nothing")[:12]
    return f"still on {running}"


def gone_why(since: float, unlisted: bool) -> str:
    """Why a host that stopped beating is waited for (or failed)."""
    if unlisted:
        return f"registration gone from Redis {since:.0f} s"
    return f"no heartbeat, gone {since:.0f} s"


def canary_progress(canary: Mapping[str, Any]) -> str:
    """``canary 5% for 12 s, 1,204 calls, error rate 0.00%, p99 14.2us``:
    what a host's judge sees while the step waits for it."""
    cand = canary.get("candidate") or {}
    if not cand:
        return "canary running"
    p99 = cand.get("p99_us")
    return (
        f"canary {canary.get('share', 0):.0%} for {canary.get('seconds', 0):.0f} s, "
        f"{cand.get('calls', 0):,} calls, error rate {cand.get('error_rate', 0):.2%}"
        + (f", p99 {p99:.1f}us" if p99 is not None else "")
    )
