"""Helpers shared by the benchmarks: build a plugin, time a callable."""

from __future__ import annotations

import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from hotload.builder import compile_plugin

BENCH_SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("bench", "1");
HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, "int64_t(int64_t, int64_t)");
HOTLOAD_API int64_t sum(const int32_t *xs, size_t n)
{
    int64_t t = 0;
    for (size_t i = 0; i < n; i++) t += xs[i];
    return t;
}
HOTLOAD_EXPORT(sum, "int64_t(const int32_t *, size_t)");
HOTLOAD_API int32_t tag(void) { return TAG; }
HOTLOAD_EXPORT(tag, "int32_t(void)");
"""


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="hotload-bench-"))


def build_bench(out: Path, tag: int = 1, source: str = BENCH_SRC, name: str = "bench") -> Path:
    src = out.parent / f"{name}-{tag}.c"
    src.write_text(source.replace("TAG", str(tag)))
    compile_plugin(src, out, extra_cflags=["-O2"])
    return out


def per_call_ns(fn: Callable[[], object], number: int = 200_000, repeat: int = 7) -> float:
    """Median over ``repeat`` runs of the per-call time, in ns."""
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e9


def loop_ns(stmt: str, env: dict[str, object], number: int = 200_000, repeat: int = 7) -> float:
    """Like per_call_ns but times ``stmt`` inlined in timeit's loop (no
    lambda frame), which is how a real caller's code calls."""
    runs = timeit.repeat(stmt, globals=env, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e9


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return pick(0.50), pick(0.95), pick(0.99)


def now() -> float:
    return time.perf_counter()


def row(label: str, value: float, unit: str, baseline: float | None = None, base_label: str = "") -> str:
    ratio = f"{value / baseline:6.2f}x {base_label}" if baseline else ""
    return f"  {label:<46} {value:>10.1f} {unit:<3} {ratio}"
