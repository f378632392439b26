"""Memory (figure 6): after N reload cycles of a clean C plugin (N = 10, 100,
1000, cumulative in one host), the images of it still mapped, RSS growth,
open file descriptors and files left in the work directory.  Targets: at
most 2 images, RSS growth < 5 MB at N = 1000, no leftover files or fds.

Baseline: the same process after the plugin's first load and a warm-up of
20 reloads (Python's and the allocator's one-off growth), settled.  Each
checkpoint is taken settled (retired versions closed and verified).

"Flat" is judged on what each reload leaves alive (``sys.getallocatedblocks``
between N = 100 and 1000: exact, whatever the allocator does with pages).
To explain any growth the run also prints the RSS slope, the length of
``host.versions()`` (each record costs ~5 KB: an unbounded history was the
growth this benchmark first found) and, as a control, the RSS growth of the
bare floor (copy + ``dlopen`` + ``dlclose``, no hotload) over 1000 cycles.
Measured in a fresh interpreter: RSS in a process that already ran the
other benchmarks mostly reuses their freed heap and hides growth.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hotload import Host

from common import (
    build_bench,
    files_left,
    limit_row,
    mapped_images,
    open_fds,
    row,
    rss_kb,
    scratch,
    text_row,
)

CHECKPOINTS = (10, 100, 1000)
WARMUP = 20
PEEK_EVERY = 10
#: Flat means no live allocation is added per reload.  The RSS slope is printed
#: too, but not judged: between N = 100 and 1000 it swings by +-1 KB per reload
#: with how the allocator reuses pages, while live allocations are exact.
BLOCKS_LIMIT = 1.0
_dlclose = ctypes.CDLL(None).dlclose
_dlclose.argtypes = [ctypes.c_void_p]


def _snapshot(host: Host) -> dict[str, int]:
    gc.collect()
    return {
        "rss": rss_kb(),
        "blocks": sys.getallocatedblocks(),
        "fds": open_fds(),
        "images": mapped_images(host.workdir),
        "files": files_left(host.workdir),
        "versions": len(host.versions("bench")),
    }


def _floor_growth(lib: Path, tmp: Path, cycles: int) -> int:
    """RSS growth (KiB) of ``cycles`` bare copy/dlopen/dlclose cycles."""

    def cycle(i: int) -> None:
        dst = str(tmp / f"floor{i}.so")
        shutil.copyfile(lib, dst)
        handle = ctypes.CDLL(dst, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        _dlclose(handle._handle)
        os.unlink(dst)

    for i in range(WARMUP):
        cycle(i)
    before = rss_kb()
    for i in range(cycles):
        cycle(i)
    return rss_kb() - before


def run() -> dict[str, Any]:
    """Measure in a fresh interpreter: RSS in a process that already ran
    other benchmarks mostly reuses their freed heap, and hides growth."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child"], capture_output=True, text=True, check=True
    )
    raw = json.loads(proc.stdout)
    return {int(k) if k.isdigit() else k: v for k, v in raw.items()}


def _measure() -> dict[str, Any]:
    tmp = scratch()
    lib = build_bench(tmp / "bench.so")
    out: dict[str, Any] = {}
    with Host(tmp / "work", preflight=False) as host:
        p = host.load(lib)
        for _ in range(WARMUP):
            host.reload("bench")
        host.settle()
        base = _snapshot(host)
        done, peak = 0, 0
        for n in CHECKPOINTS:
            for i in range(done, n):
                host.reload("bench")
                if i % PEEK_EVERY == 0:  # unsettled: the old image may still be draining
                    peak = max(peak, mapped_images(host.workdir))
            done = n
            assert p.add(1, 2) == 3
            host.settle()
            snap = _snapshot(host)
            out[n] = {
                k: snap[k] - base[k] if k in ("rss", "fds", "blocks") else snap[k] for k in snap
            }
    out["peak"] = peak
    out["floor"] = _floor_growth(lib, tmp, CHECKPOINTS[-1])
    return out


def _slope(r: dict[str, Any]) -> float:
    """RSS bytes added per reload between the last two checkpoints: flat
    means ~0, whatever the total stays under."""
    a, b = CHECKPOINTS[-2], CHECKPOINTS[-1]
    return (r[b]["rss"] - r[a]["rss"]) * 1024 / (b - a)


def _blocks_slope(r: dict[str, Any]) -> float:
    """Live Python allocations added per reload (``sys.getallocatedblocks``):
    what the host retains, independent of how the allocator reuses pages."""
    a, b = CHECKPOINTS[-2], CHECKPOINTS[-1]
    return (r[b]["blocks"] - r[a]["blocks"]) / (b - a)


def report(r: dict[str, Any]) -> list[str]:
    last = CHECKPOINTS[-1]
    lines = [
        f"memory (N reloads of a clean C plugin in one host, settled; baseline after {WARMUP} "
        f"warm-up reloads)"
    ]
    for n in CHECKPOINTS:
        f = r[n]
        lines.append(
            text_row(
                f"N = {n}",
                f"images {f['images']}, RSS {f['rss']:+d} KiB, fds {f['fds']:+d}, "
                f"files {f['files']}, versions kept {f['versions']}",
            )
        )
    f = r[last]
    lines += [
        limit_row(f"images of it mapped at N = {last}", f["images"], "", 2, "<="),
        limit_row(
            f"peak images mapped during the run (every {PEEK_EVERY}th)", r["peak"], "", 2, "<="
        ),
        limit_row(f"RSS growth at N = {last}", f["rss"] / 1024, "MiB", 5.0, "<"),
        limit_row(f"open fds added at N = {last}", f["fds"], "", 0, "<="),
        limit_row(
            f"files left in the work dir at N = {last}",
            max(f["files"] - 1, 0),
            "",
            0,
            "<=",
            "(beyond the current version's copy)",
        ),
        row(f"RSS slope N = {CHECKPOINTS[-2]} -> {last}, per reload", _slope(r), "B"),
        limit_row(
            f"Python objects kept per reload (N = {CHECKPOINTS[-2]} -> {last})",
            _blocks_slope(r),
            "",
            BLOCKS_LIMIT,
            "<",
            "(flat)",
        ),
        row(f"host.versions() entries kept after {last + WARMUP} reloads", f["versions"], ""),
        row(f"control: bare copy+dlopen+dlclose x{last}, RSS", r["floor"], "KiB"),
    ]
    return lines


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(_measure()))
    else:
        print("\n".join(report(run())))
