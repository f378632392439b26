"""The scripted run's verdict: each check with the line that reports it
(calls, the switch, the carried state, the old image gone, the live-ops
grants), and whether the kernel still maps an old copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._engine.registry import Plugin
from .._host import Host
from .._ops.watcher import WatchEvent
from .demo_players import LiveOps, Server
from .demo_plugins import ACTIVITY
from .demo_view import describe


@dataclass
class Outcome:
    ok: bool
    lines: list[str]


def verify(
    host: Host, server: Server, xp: Plugin, v1: Any, swap: WatchEvent, edited_at: float
) -> Outcome:
    """The checks, each with the line that reports it."""
    t = server.total()
    grants = xp.grant_count()
    host.settle(5.0)
    old = next(v for v in host.versions("double_xp") if v.seq == v1.seq)
    still_mapped = _mapped(old.copy)
    x2, x3 = t.by_multiplier.get(2, 0), t.by_multiplier.get(3, 0)
    clean_switch = (
        t.went_back == 0
        and set(t.by_multiplier) == {2, 3}
        and all(p.tally.order[-1:] == [3] for p in server.players)
    )
    checks = [
        (
            t.failed == 0,
            "calls",
            f"{t.rewards + t.loot:,} served, {t.failed} failed"
            + (f" (first: {t.errors[0]})" if t.errors else ""),
        ),
        (
            clean_switch,
            "switch",
            f"{describe(v1)} (x2) -> v{swap.seq} {swap.plugin_version} (x3); "
            f"{len(server.players)} players went x2 -> x3 once, {t.went_back} went back",
        ),
        (
            grants == x2 + x3,
            "state",
            f"grant_count() = {grants:,} = {x2:,} rewards at x2 in v1 + {x3:,} at x3 "
            f"in v2 (v1 handed its count to v2)",
        ),
        (
            old.state == "unloaded" and not still_mapped,
            "old image",
            f"v{old.seq} {old.state}: dlclose'd {old.dlclose_count}x, {old.mapped_bytes} bytes "
            f"mapped, "
            f"{'still in' if still_mapped else 'gone from'} /proc/self/maps",
        ),
    ]
    lines = ["", "result"]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {what:<10} {text}" for ok, what, text in checks]
    ok = all(c[0] for c in checks)
    lines.append(
        "ok: hot swap under load with no failed call, state carried, old image unloaded"
        if ok
        else "FAILED: " + ", ".join(what for good, what, _ in checks if not good)
    )
    return Outcome(ok, lines)


def verify_live(
    host: Host,
    server: Server,
    live: LiveOps,
    activity: Plugin,
    a1: Any,
    swap: WatchEvent,
    outcome: Outcome,
) -> Outcome:
    """The live-ops checks, added before the verdict line."""
    t = server.total()
    total = activity.total_granted()
    host.settle(5.0)
    old = next(v for v in host.versions(ACTIVITY) if v.seq == a1.seq)
    gone = old.state == "unloaded" and not _mapped(old.copy)
    errors = sum(v.service_errors for v in host.versions(ACTIVITY))
    checks = [
        (
            t.granted == live.granted == total and total > 0 and errors == 0,
            "grants",
            f"{t.events:,} events emitted; {live.granted:,} items reached the host = "
            f"{t.granted:,} the handlers returned = total_granted() {total:,} "
            f"(carried across the swap); {live.mails} mail(s), {errors} service errors",
        ),
        (
            gone and activity.login_reward() == 3,
            "activity",
            f"{describe(a1)} -> v{swap.seq} {swap.plugin_version} (login reward 3); "
            f"v{old.seq} {old.state}, "
            + (
                "its worker exited"
                if old.isolated
                else f"{'still in' if not gone else 'gone from'} /proc/self/maps"
            ),
        ),
    ]
    lines = outcome.lines[:-1]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {what:<10} {text}" for ok, what, text in checks]
    ok = outcome.ok and all(c[0] for c in checks)
    lines.append(
        outcome.lines[-1]
        if ok
        else "FAILED: " + ", ".join(what for good, what, _ in checks if not good)
        if outcome.ok
        else outcome.lines[-1]
    )
    return Outcome(ok, lines)


def _mapped(copy: str) -> bool:
    """Whether the kernel still maps ``copy`` into this process (False where
    there is no /proc: the host's own verdict then stands alone)."""
    try:
        with open("/proc/self/maps") as fh:
            return any(line.rstrip("\n").removesuffix(" (deleted)").endswith(copy) for line in fh)
    except OSError:
        return False
