"""A canary inside one host (issue 22 items 1 and 2).

- **Routing cost**: a routed call with a canary running (compiled router, the
  key hashed on every call) against the same call in a host without one, in
  CPU time, interleaved rounds, the median of paired differences.
- **The split**: 1,000,000 distinct keys through a plugin with a 5 % canary:
  the share that reached the candidate, and whether a second call of every
  key went where the first did.
- **The judge**, on paced traffic (``RATE`` calls/s from one thread, players
  round and round): a candidate whose host-service call fails for 1 % of
  players, aborted after how long; a candidate 25 % slower; and ``AA`` A/A
  canaries (the same build twice, with 1 % failing service calls on both
  sides) with a short bake: how many were aborted (a false abort).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hotload import Host, Judge
from hotload._artifact.builder import compile_plugin

from common import VERDICTS, limit_row, median, scratch, text_row

RATE = 10_000  # calls/s of the paced traffic
SLOW_BASE, SLOW_CAND = 3000, 4000  # busy-loop rounds: the candidate's calls ~25 % longer
SHARE = 0.1  # the judged canaries' share
AA = 100  # A/A canaries
AA_AT_ONCE = 10  # plugins baking at once (each its own traffic thread)
ROUNDS = 9
NUMBER = 200_000

SRC = r"""
#include <hotload.h>
#include <stdint.h>
HOTLOAD_PLUGIN("NAME", "VERSION");
HOTLOAD_IMPORT(audit, int32_t, (int64_t));
HOTLOAD_API int64_t reward(int64_t player, int32_t level)
{
    volatile uint64_t x = 0;
    for (int i = 0; i < SPIN; i++) x += (uint64_t)i;
    if (audit) audit(FAIL && player % 100 == 42 ? -1 : player);
    return player * MULT + level;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
"""


def _audit(player: int) -> int:
    if player < 0:
        raise ValueError("audit refused")
    return 0


def _build(tmp: Path, name: str, mult: int, *, fail: int = 0, spin: int = 200) -> Path:
    tag = f"{name}_{mult}_{fail}_{spin}"
    src, lib = tmp / f"{tag}.c", tmp / f"{tag}.so"
    text = SRC.replace("NAME", name).replace("VERSION", f"{mult}.{fail}.{spin}")
    src.write_text(
        text.replace("MULT", str(mult)).replace("FAIL", str(fail)).replace("SPIN", str(spin))
    )
    compile_plugin(src, lib)
    return lib


@contextlib.contextmanager
def _host(tmp: Path, tag: str) -> Iterator[Host]:
    with Host(tmp / f"w-{tag}", preflight=False) as host:
        host.provide("audit", _audit, "int32_t(int64_t)", error=-1)
        yield host


def _cpu_ns(stmt: str, env: dict[str, Any], number: int) -> float:
    return timeit.Timer(stmt, globals=env, timer=time.thread_time).timeit(number) / number * 1e9


def _routing(tmp: Path) -> dict[str, float]:
    lib, cand = _build(tmp, "reward", 2, spin=0), _build(tmp, "reward", 3, spin=0)
    with _host(tmp, "plain") as plain, _host(tmp, "split") as split:
        env = {"plain": plain.load(lib).reward, "split": split.load(lib).reward}
        split.canary("reward", cand, share=0.05, judge=None)
        assert env["split"](1, 0) == 2  # key 1 stays on the baseline: the same call, hashed
        stmts = {"plain": "plain(1, 0)", "split": "split(1, 0)"}
        for stmt in stmts.values():
            _cpu_ns(stmt, env, 20_000)
        samples: dict[str, list[float]] = {k: [] for k in stmts}
        for _ in range(ROUNDS):
            for key, stmt in stmts.items():
                samples[key].append(_cpu_ns(stmt, env, NUMBER))
    diffs = [s - p for s, p in zip(samples["split"], samples["plain"], strict=True)]
    return {
        "plain": median(samples["plain"]),
        "split": median(samples["split"]),
        "diff": median(diffs),
    }


def _split(tmp: Path) -> dict[str, float]:
    lib, cand = _build(tmp, "reward", 2, spin=0), _build(tmp, "reward", 3, spin=0)
    n = 1_000_000
    with _host(tmp, "keys") as host:
        p = host.load(lib)
        host.canary("reward", cand, share=0.05, judge=None)
        fn = p.reward
        first = [fn(k, 0) == 3 * k for k in range(1, n + 1)]
        again = [fn(k, 0) == 3 * k for k in range(1, n + 1)]
    return {
        "share": sum(first) / n,
        "sticky": sum(a == b for a, b in zip(first, again, strict=True)) / n,
    }


class _Traffic:
    """One thread calling ``reward`` at ``RATE`` calls/s (batches every 10 ms),
    players round and round; counts the calls that raised."""

    def __init__(self, fn: Any, rate: int = RATE) -> None:
        self.fn, self.rate = fn, rate
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        batch, k, t = self.rate // 100, 0, time.monotonic()
        while not self.stop.is_set():
            for _ in range(batch):
                k += 1
                try:
                    self.fn(k % 100_000, 1)
                except Exception:  # noqa: BLE001 - counted
                    self.failed += 1
            t += 0.01
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def __enter__(self) -> _Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _judged(tmp: Path, tag: str, base: Path, cand: Path, judge: Judge) -> dict[str, Any]:
    with _host(tmp, tag) as host:
        p = host.load(base)
        with _Traffic(p.reward) as traffic:
            time.sleep(1.0)  # the baseline warm, as a host that has served a while
            t0 = time.monotonic()
            c = host.canary("reward", cand, share=SHARE, judge=judge)
            state = c.wait(60)
            took = time.monotonic() - t0
        f = c.figures()
        cand, base_f = f["candidate"], f["baseline"]
        ratios = {
            q: (cand[f"{q}_us"] / base_f[f"{q}_us"] - 1)
            if cand[f"{q}_us"] and base_f[f"{q}_us"]
            else 0.0
            for q in ("p50", "p99")
        }
        return {
            "state": state,
            "seconds": took,
            "verdict": c.verdict,
            "failed": traffic.failed,
            **ratios,
        }


def _aa(tmp: Path) -> dict[str, Any]:
    judge = Judge(bake=3.0, interval=0.1)
    libs = [
        (_build(tmp, f"p{i}", 2, fail=1), _build(tmp, f"p{i}", 2, fail=1, spin=201))
        for i in range(AA_AT_ONCE)
    ]  # the same code twice; spin 201 vs 200 only so the two files differ
    outcomes: list[tuple[str, str]] = []
    with _host(tmp, "aa") as host:
        plugins = [host.load(base) for base, _ in libs]
        for _ in range(AA // AA_AT_ONCE):
            with contextlib.ExitStack() as stack:
                for p in plugins:
                    stack.enter_context(_Traffic(p.reward, RATE // AA_AT_ONCE))
                canaries = [
                    host.canary(f"p{i}", cand, share=0.5, judge=judge)
                    for i, (_, cand) in enumerate(libs)
                ]
                for c in canaries:
                    outcomes.append((c.wait(60), c.verdict))
            for i, (base, _) in enumerate(libs):  # back to the baseline build for the next round
                if host.current(f"p{i}").plugin_version != "2.1.200":  # type: ignore[union-attr]
                    host.reload(f"p{i}", base)
    aborted = [v for s, v in outcomes if s == "aborted"]
    return {
        "n": len(outcomes),
        "aborted": len(aborted),
        "verdicts": aborted[:3],
        "running": sum(s == "running" for s, _ in outcomes),
    }


def run() -> dict[str, Any]:
    logging.getLogger("hotload").addHandler(logging.NullHandler())
    logging.getLogger("hotload").propagate = False  # the canaries' ends are WARNINGs
    tmp = scratch()
    out: dict[str, Any] = {"load": os.getloadavg()[0]}
    out["routing"] = _routing(tmp)
    out["split"] = _split(tmp)
    base = _build(tmp, "reward", 2)
    out["errors"] = _judged(tmp, "err", base, _build(tmp, "reward", 3, fail=1), Judge())
    slow_base = _build(tmp, "reward", 2, spin=SLOW_BASE)
    slower = _build(tmp, "reward", 3, spin=SLOW_CAND)
    out["slower"] = _judged(tmp, "slow", slow_base, slower, Judge())
    out["aa"] = _aa(tmp)
    return out


def report(r: dict[str, Any]) -> list[str]:
    rt, sp, er, sl, aa = r["routing"], r["split"], r["errors"], r["slower"], r["aa"]
    lines = [
        f"a canary inside one host (issue 22): load average {r['load']:.1f} at the start; "
        f"judged canaries at {RATE:,} calls/s, share {SHARE:g}, Judge() defaults",
        limit_row(
            "routing with a canary, more than without",
            rt["diff"],
            "ns",
            10,
            op="<=",
            note=f"({rt['split']:.0f} vs {rt['plain']:.0f} ns a call, CPU time)",
        ),
        limit_row(
            "split over 1,000,000 keys, off 5.00%",
            abs(sp["share"] - 0.05) * 100,
            "pp",
            0.5,
            op="<=",
            note=f"({sp['share'] * 100:.3f}% reached the candidate)",
        ),
        limit_row(
            "keys whose second call went elsewhere", (1 - sp["sticky"]) * 1e6, "", 0, op="<="
        ),
        limit_row(
            "1% errors: aborted after",
            er["seconds"],
            "s",
            2,
            op="<=",
            note=f"({er['state']}; {er['failed']} calls failed)",
        ),
        limit_row(
            "25% slower: aborted after", sl["seconds"], "s", 10, op="<=", note=f"({sl['state']})"
        ),
        limit_row(
            f"A/A canaries aborted, of {aa['n']}",
            aa["aborted"],
            "",
            1,
            op="<=",
            note=f"({aa['running']} still running at 60 s)",
        ),
        text_row("the 1% errors verdict", er["verdict"][:160]),
        text_row("the 25% slower verdict", sl["verdict"][:160]),
    ]
    for v in aa["verdicts"]:
        lines.append(text_row("a false abort", v[:160]))
    if er["state"] != "aborted" or sl["state"] != "aborted":
        VERDICTS.append(("a bad candidate promoted", False))
    return lines


if __name__ == "__main__":
    print("\n".join(report(run())))
