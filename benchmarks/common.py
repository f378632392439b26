"""Helpers shared by the benchmarks: build plugins, time things, read the
process's own figures, and print each figure beside its baseline with a
plain verdict on its target.

Every verdict is also recorded in ``VERDICTS`` so ``run.py`` can end with
the list of targets missed: a miss is never hidden in the middle of a table.
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hotload._artifact.builder import compile_plugin

BENCH_SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "1");
HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
HOTLOAD_API int64_t sum(const int32_t *xs, size_t n)
{
    int64_t t = 0;
    for (size_t i = 0; i < n; i++) t += xs[i];
    return t;
}
HOTLOAD_EXPORT(sum, int64_t, (const int32_t *, size_t));
HOTLOAD_API int32_t tag(void) { return TAG; }
HOTLOAD_EXPORT(tag, int32_t, (void));
"""

#: (label, met) for every figure that has a target, in print order.
VERDICTS: list[tuple[str, bool]] = []


def scratch() -> Path:
    """A private temporary directory, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="hotload-bench-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def build_bench(out: Path, tag: int = 1, source: str = BENCH_SRC, name: str = "bench") -> Path:
    src = out.parent / f"{name}-{tag}-{out.stem}.c"
    src.write_text(source.replace("NAME", name).replace("TAG", str(tag)))
    compile_plugin(src, out, extra_cflags=["-O2"])
    return out


def build_many(outs: Iterable[tuple[Path, int]], name: str = "bench") -> list[Path]:
    """Compile one build per ``(path, tag)``: distinct bytes, so each is a
    new digest, like a real rebuild.  Two compilers at a time."""
    jobs = list(outs)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda job: build_bench(job[0], job[1], name=name), jobs))


def loop_ns(stmt: str, env: dict[str, object], number: int = 200_000) -> float:
    """One sample: ns per execution of ``stmt`` inlined in timeit's loop (no
    lambda frame: that is how a caller's own code calls).  Callers take the
    median over interleaved repeats, so drift hits every figure alike."""
    return timeit.timeit(stmt, globals=env, number=number) / number * 1e9


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 by nearest rank."""
    s = sorted(samples)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return pick(0.50), pick(0.95), pick(0.99)


def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = now()
    fn()
    return now() - t0


# -- the process's own figures ------------------------------------------------


def rss_kb() -> int:
    """Resident set size (VmRSS) of this process, in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mapped_images(prefix: Path) -> int:
    """Distinct files under ``prefix`` that the kernel maps into this process
    (a deleted copy still counts: the kernel shows it with " (deleted)")."""
    found = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith(str(prefix)):
                found.add(parts[5].strip().removesuffix(" (deleted)"))
    return len(found)


def files_left(workdir: Path) -> int:
    """Versioned copies in a host's work directory (its ``.lock`` excluded)."""
    return sum(1 for p in workdir.iterdir() if p.name != ".lock")


# -- printing ------------------------------------------------------------------


def row(
    label: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    base_label: str = "",
    target: float | None = None,
    ratio: float | None = None,
) -> str:
    """``label  value unit  ratio vs baseline  [target <= Nx: met|MISSED]``.
    ``ratio`` overrides value/baseline, e.g. with a median of paired ratios."""
    text = f"  {label:<50} {value:>10.1f} {unit:<3}"
    if baseline:
        ratio = value / baseline if ratio is None else ratio
        text += f" {ratio:6.2f}x {base_label}"
        if target is not None:
            text += f"  {_verdict(label, ratio <= target, f'target <= {target:g}x')}"
    return text


def limit_row(
    label: str, value: float, unit: str, limit: float, op: str = "<", note: str = ""
) -> str:
    """A figure with an absolute target: ``[target < 60 ms: met|MISSED]``."""
    met = {"<": value < limit, "<=": value <= limit, ">=": value >= limit}[op]
    tail = f" {note}" if note else ""
    verdict = _verdict(label, met, f"target {op} {limit:g} {unit}".rstrip())
    return f"  {label:<50} {value:>10.1f} {unit:<3}{tail}  {verdict}"


def text_row(label: str, text: str) -> str:
    return f"  {label:<50} {text}"


def _verdict(label: str, met: bool, what: str) -> str:
    VERDICTS.append((label.strip(), met))
    return f"[{what}: {'met' if met else 'MISSED'}]"
