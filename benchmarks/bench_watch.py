"""Watch-to-serve latency (figure 4): a finished ``.so`` is renamed into a
directory that ``host.watch()`` watches; the clock runs until the first call
served by the new build.  Target: p95 < 50 ms (debounce included).

Each round installs a *fresh build* (new bytes, as a real rebuild), finished
and closed in a staging directory on the same file system, then renamed into
place the way ``build.py`` does.  A caller polls ``p.tag()`` every 0.2 ms,
as a serving loop would call; the round ends at the first answer from the
new build.  Measured with the default host (preflight on) and, for
comparison, with preflight off.  Without ``Host.watch`` (the operations
issue) the benchmark prints that it was skipped.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from hotload import Host

from common import build_many, limit_row, now, percentiles, row, scratch, text_row

ROUNDS = 40
POLL = 0.0002
TIMEOUT = 5.0


def available() -> bool:
    return hasattr(Host, "watch")


def _serve_round(p: Any, staged: Path, target: Path, tag: int) -> float:
    """Rename the staged build into place; seconds until ``p.tag()`` says ``tag``."""
    t0 = now()
    os.rename(staged, target)
    deadline = t0 + TIMEOUT
    while p.tag() != tag:
        if now() > deadline:
            return float("inf")
        time.sleep(POLL)
    return now() - t0


def _phase(tmp: Path, builds: list[tuple[Path, int]], *, preflight: bool) -> dict[str, list[float]]:
    tag = "on" if preflight else "off"
    watched, staging = tmp / f"watched-{tag}", tmp / f"staging-{tag}"
    watched.mkdir()
    staging.mkdir()
    shutil.copyfile(builds[0][0], watched / "bench.so")
    events: list[float] = []
    out: dict[str, list[float]] = {"serve": [], "event": events}
    with Host(tmp / f"work-watch-{tag}", preflight=preflight) as host:
        watcher = host.watch(
            watched, on_event=lambda e: events.append(e.latency) if e.action == "reloaded" else None
        )
        if not (watcher.idle(10.0) and "bench" in host):
            raise RuntimeError(f"the watcher did not load {watched / 'bench.so'}")
        p = host.plugin("bench")
        for build, build_tag in builds[1:]:
            shutil.copyfile(build, staging / "bench.so")
            watcher.idle()
            host.settle()
            out["serve"].append(
                _serve_round(p, staging / "bench.so", watched / "bench.so", build_tag)
            )
    return out


def run() -> dict[str, float]:
    if not available():
        return {}
    tmp = scratch()
    (tmp / "builds").mkdir()
    specs = [(tmp / "builds" / f"w{i}.so", 1000 + i) for i in range(2 * (ROUNDS + 1))]
    builds = list(zip(build_many(specs), (t for _, t in specs), strict=True))
    out: dict[str, float] = {}
    for preflight, part in ((True, builds[: ROUNDS + 1]), (False, builds[ROUNDS + 1 :])):
        raw = _phase(tmp, part, preflight=preflight)
        tag = "on" if preflight else "off"
        out[f"{tag} p50"], out[f"{tag} p95"], out[f"{tag} p99"] = (
            x * 1e3 for x in percentiles(raw["serve"])
        )
        out[f"{tag} timeouts"] = float(sum(1 for x in raw["serve"] if x == float("inf")))
        out[f"{tag} event p50"] = (
            percentiles(raw["event"])[0] * 1e3 if raw["event"] else float("nan")
        )
    return out


def report(r: dict[str, float]) -> list[str]:
    title = (
        f"watch-to-serve latency ({ROUNDS} fresh builds renamed into a watched directory per mode)"
    )
    if not r:
        return [title, text_row("", "skipped: Host.watch not available")]
    lines = [title]
    for tag, what in (("on", "preflight on"), ("off", "preflight off")):
        lines += [
            row(f"{what}: rename -> first call, p50", r[f"{tag} p50"], "ms"),
            limit_row(f"{what}: rename -> first call, p95", r[f"{tag} p95"], "ms", 50.0, "<"),
            row(f"{what}: watcher's event latency, p50", r[f"{tag} event p50"], "ms"),
        ]
        if r[f"{tag} timeouts"]:
            lines.append(
                text_row(
                    f"{what}: rounds never served",
                    f"{r[f'{tag} timeouts']:.0f} (timeout {TIMEOUT} s)",
                )
            )
    return lines


if __name__ == "__main__":
    print("\n".join(report(run())))
