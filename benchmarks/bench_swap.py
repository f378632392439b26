"""Swap latency: ``host.reload()`` vs the floor (copy the file + ctypes
``dlopen`` of the copy), same file, same run.  Target: p50 <= 2x the floor."""

from __future__ import annotations

import ctypes
import os
import shutil
import statistics

from hotload import Host

from common import build_bench, now, percentiles, row, scratch

ROUNDS = 300


def _floor(lib: str, tmp: str) -> list[float]:
    """What any hot reload must at least do: copy, open, and close the old."""
    samples = []
    old = None
    for i in range(ROUNDS):
        dst = os.path.join(tmp, f"floor{i}.so")
        t0 = now()
        shutil.copyfile(lib, dst)
        h = ctypes.CDLL(dst, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        if old is not None:
            ctypes.CDLL(None).dlclose(ctypes.c_void_p(old._handle))
        samples.append(now() - t0)
        old = h
        os.unlink(dst)
    return samples


def run() -> dict[str, float]:
    tmp = scratch()
    lib = build_bench(tmp / "bench.so")
    out: dict[str, float] = {}
    with Host(tmp / "work") as host:
        p = host.load(lib)
        reloads = []
        for _ in range(ROUNDS):
            t0 = now()
            host.reload("bench")
            reloads.append(now() - t0)
        assert p.add(1, 2) == 3
        host.settle()
        out["images mapped after"] = float(len([v for v in host.versions("bench") if v.state != "unloaded"]))
    floor = _floor(str(lib), str(tmp))
    out["floor p50"], out["floor p95"], _ = (x * 1e6 for x in percentiles(floor))
    out["reload p50"], out["reload p95"], out["reload p99"] = (x * 1e6 for x in percentiles(reloads))
    out["reload mean"] = statistics.mean(reloads) * 1e6
    return out


def report(r: dict[str, float]) -> list[str]:
    return [
        f"swap latency ({ROUNDS} reloads, stateless 16 KB plugin, preflight off)",
        row("floor: copy + dlopen + dlclose old, p50", r["floor p50"], "us"),
        row("host.reload() p50", r["reload p50"], "us", r["floor p50"], "vs floor  [target <= 2x]"),
        row("host.reload() p95", r["reload p95"], "us", r["floor p95"], "vs floor p95"),
        row("host.reload() p99", r["reload p99"], "us"),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
