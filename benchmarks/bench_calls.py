"""Call overhead (figure 1) and the hot-loop API (figure 2).

A routed call vs a hand-written ctypes call vs a raw cffi call of the same C
function, in the same process and run; and a call through ``p.pinned()``
vs raw cffi.  Targets: routed <= 1.0x ctypes; pinned <= 1.1x raw cffi.

Method: every statement is timed inlined in timeit's loop (as a caller's
own code calls; the loop itself adds ~10 ns to every figure alike), once
per round, all statements in turn within a round, for ``ROUNDS`` rounds;
each figure is the median over rounds.  Interleaving matters on a shared
machine: a slow patch of seconds then hits every figure, not one.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import cffi

from hotload import Host

from common import build_bench, loop_ns, median, row, scratch

ROUNDS = 9
NUMBER = 100_000

STATEMENTS = {
    "ctypes add": "c_add(1, 2)",
    "ctypes add (attribute each call)": "c.add(1, 2)",
    "cffi add": "f_add(1, 2)",
    "routed add": "r_add(1, 2)",
    "routed add (attribute each call)": "p.add(1, 2)",
    "pinned add": "pin_add(1, 2)",
    "ctypes sum": "c_sum(arr, 16)",
    "cffi sum": "f_sum(buf, 16)",
    "routed sum": "r_sum(buf, 16)",
    "pinned sum": "pin_sum(buf, 16)",
}


PAIRS = {  # figure -> its baseline, compared round by round
    "cffi add": "ctypes add",
    "routed add": "ctypes add",
    "routed add (attribute each call)": "ctypes add (attribute each call)",
    "pinned add": "cffi add",
    "cffi sum": "ctypes sum",
    "routed sum": "ctypes sum",
    "pinned sum": "cffi sum",
}


def _ctypes_env(lib: Path) -> dict[str, Any]:
    """The hand-written ctypes baseline: argtypes and restype declared."""
    c = ctypes.CDLL(str(lib))
    c_add, c_sum = c.add, c.sum
    c_add.argtypes, c_add.restype = [ctypes.c_int64, ctypes.c_int64], ctypes.c_int64
    c_sum.argtypes, c_sum.restype = (
        [ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t],
        ctypes.c_int64,
    )
    return {"c": c, "c_add": c_add, "c_sum": c_sum, "arr": (ctypes.c_int32 * 16)(*range(16))}


def _cffi_env(lib: Path) -> dict[str, Any]:
    """Raw cffi in ABI mode: the fastest call without a compiled extension."""
    ffi = cffi.FFI()
    ffi.cdef("int64_t add(int64_t, int64_t); int64_t sum(const int32_t *, size_t);")
    f = ffi.dlopen(str(lib))
    return {
        "f_add": f.add,
        "f_sum": f.sum,
        "buf": ffi.new("int32_t[]", list(range(16))),
        "_keep": (ffi, f),
    }


def run() -> dict[str, float]:
    tmp = scratch()
    lib = build_bench(tmp / "bench.so")
    env = {**_ctypes_env(lib), **_cffi_env(lib)}
    samples: dict[str, list[float]] = {k: [] for k in STATEMENTS}
    with Host(tmp / "work", preflight=False) as host:
        p = host.load(lib)
        with p.pinned() as pin:
            env.update(p=p, r_add=p.add, r_sum=p.sum, pin_add=pin.add, pin_sum=pin.sum)
            for stmt in STATEMENTS.values():  # warm up: specialisation, caches
                loop_ns(stmt, env, 20_000)
            for _ in range(ROUNDS):
                for key, stmt in STATEMENTS.items():
                    samples[key].append(loop_ns(stmt, env, NUMBER))
    out = {k: median(v) for k, v in samples.items()}
    # Each round measures every statement back to back, so a burst of load on
    # this shared machine hits a pair alike: judge the median of the paired
    # per-round ratios, not a ratio of medians taken at different moments.
    for key, base in PAIRS.items():
        out[f"ratio {key}"] = median(
            a / b for a, b in zip(samples[key], samples[base], strict=True)
        )
    return out


def report(r: dict[str, float]) -> list[str]:
    return [
        f"call overhead and hot-loop API (median over {ROUNDS} interleaved rounds of {NUMBER:,} "
        f"calls, ns per "
        f"call; ratios are medians of per-round paired ratios)",
        row("hand-written ctypes add(int64, int64)", r["ctypes add"], "ns"),
        row(
            "raw cffi add",
            r["cffi add"],
            "ns",
            r["ctypes add"],
            "vs ctypes",
            ratio=r["ratio cffi add"],
        ),
        row(
            "routed add (add = p.add; add(...))",
            r["routed add"],
            "ns",
            r["ctypes add"],
            "vs ctypes",
            1.0,
            ratio=r["ratio routed add"],
        ),
        row(
            "ctypes add, lib.add(...) looked up per call",
            r["ctypes add (attribute each call)"],
            "ns",
        ),
        row(
            "routed add, p.add(...) looked up per call",
            r["routed add (attribute each call)"],
            "ns",
            r["ctypes add (attribute each call)"],
            "vs ctypes lib.add(...)",
            1.0,
            ratio=r["ratio routed add (attribute each call)"],
        ),
        row(
            "pinned add (with p.pinned() as f: f.add)",
            r["pinned add"],
            "ns",
            r["cffi add"],
            "vs cffi",
            1.1,
            ratio=r["ratio pinned add"],
        ),
        row("hand-written ctypes sum(int32*, size_t)", r["ctypes sum"], "ns"),
        row(
            "raw cffi sum",
            r["cffi sum"],
            "ns",
            r["ctypes sum"],
            "vs ctypes",
            ratio=r["ratio cffi sum"],
        ),
        row(
            "routed sum",
            r["routed sum"],
            "ns",
            r["ctypes sum"],
            "vs ctypes",
            1.0,
            ratio=r["ratio routed sum"],
        ),
        row(
            "pinned sum",
            r["pinned sum"],
            "ns",
            r["cffi sum"],
            "vs cffi",
            1.1,
            ratio=r["ratio pinned sum"],
        ),
        row("routing cost (routed - raw cffi, add)", r["routed add"] - r["cffi add"], "ns"),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
