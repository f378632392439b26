"""Record and replay (issue 23 item 4).

- What recording costs a routed call: ``reward(player, level)`` (which calls
  the host service ``grant``) timed with the recording off and on, in
  interleaved repeats, on the compiled router.  Targets: <= 50 ns a call on,
  0 off (off, the route's recorder is one pointer test: the two "off" figures
  are the same loop before and after a recording ran).
- What replaying 10,000 recorded calls costs, end to end (a worker started,
  the build opened in it, every call run and compared), for a plugin whose
  calls each make one service call and for one that makes none.  Target:
  <= 1 s.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from hotload import Host
from hotload._artifact.builder import compile_plugin

from common import limit_row, loop_ns, median, row, scratch, text_row

CALLS = 10_000
REPEATS = 7

SRC = r"""
#include <hotload.h>
#include <stdint.h>
HOTLOAD_PLUGIN("NAME", "MULT.0");
HOTLOAD_IMPORT(grant, int32_t, (int64_t, int64_t));
HOTLOAD_API int64_t reward(int64_t player, int32_t level)
{
    int64_t xp = player * MULT + level;
    if (SERVICE && grant) grant(player, xp);
    return xp;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
"""


def _build(tmp: Path, name: str, mult: int, service: int) -> Path:
    src, lib = tmp / f"{name}{mult}.c", tmp / f"{name}{mult}.so"
    text = SRC.replace("NAME", name).replace("MULT", str(mult)).replace("SERVICE", str(service))
    src.write_text(text)
    compile_plugin(src, lib, extra_cflags=["-O2"])
    return lib


def _cost(host: Host, plugin: Any) -> dict[str, float]:
    env = {"p": plugin}
    stmt = "p.reward(7, 1)"
    off, on, off_after = [], [], []
    for _ in range(REPEATS):
        off.append(loop_ns(stmt, env))
        rec = host.record(plugin_name(plugin), calls=CALLS)
        on.append(loop_ns(stmt, env))
        assert rec is not None
        rec.stop()
        off_after.append(loop_ns(stmt, env))
    return {"off": median(off), "on": median(on), "off_after": median(off_after)}


def _replay(host: Host, plugin: Any, build: Path) -> tuple[float, str]:
    host.record(plugin_name(plugin), calls=CALLS)
    for i in range(CALLS):
        plugin.reward(i, 1)
    t0 = time.perf_counter()
    report = host.replay(plugin_name(plugin), build)
    seconds = time.perf_counter() - t0
    assert report.calls == CALLS and report.ok, report
    return seconds, str(report).splitlines()[0]


def plugin_name(plugin: Any) -> str:
    return str(plugin._name)


def run() -> dict[str, Any]:
    logging.getLogger("hotload").addHandler(logging.NullHandler())
    tmp = scratch()
    out: dict[str, Any] = {"load": os.getloadavg()[0]}
    with Host(tmp / "work", preflight=False) as host:
        host.provide("grant", lambda p, xp: 0, "int32_t(int64_t, int64_t)", error=-1)
        p = host.load(_build(tmp, "reward", 2, 1))
        q = host.load(_build(tmp, "plain", 2, 0))
        out["cost_plain"] = _cost(host, q)
        out["cost"] = _cost(host, p)
        out["with_service"] = _replay(host, p, _build(tmp, "reward", 3, 1))
        out["plain"] = _replay(host, q, _build(tmp, "plain", 3, 0))
    return out


def report(r: dict[str, Any]) -> list[str]:
    c, b = r["cost"], r["cost_plain"]
    s, plain = r["with_service"], r["plain"]
    return [
        f"record and replay (issue 23 item 4): compiled router, load average {r['load']:.1f} "
        f"at the start",
        row("a routed call, not recording", b["off"], "ns"),
        limit_row(
            "recording costs a call", b["on"] - b["off"], "ns", 50, op="<=",
            note=f"({b['on']:.0f} vs {b['off']:.0f} ns a call)",
        ),
        row("... a call making 1 service call (its answer kept)", c["on"] - c["off"], "ns")
        + f" ({c['on']:.0f} vs {c['off']:.0f} ns a call)",
        limit_row(
            "not recording, after a recording ran, costs", b["off_after"] - b["off"], "ns", 5,
            op="<=", note="(noise: the same loop)",
        ),
        limit_row(f"replay {CALLS:,} calls, 1 service call each", s[0], "s", 1.0, op="<="),
        limit_row(f"replay {CALLS:,} calls, no service call", plain[0], "s", 1.0, op="<="),
        text_row("what a replay says", s[1][:150]),
    ]  # fmt: skip


if __name__ == "__main__":
    print("\n".join(report(run())))
