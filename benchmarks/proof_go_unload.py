"""The real-unload proof of issue 12: 200 reloads of a Go ``c-shared`` plugin.

A Go library never leaves a process (``DF_1_NODELETE``, static TLS, its own
threads): in process, each reload leaks its mapping and threads, and the
host's leak budget (``max_leaked``) refuses reloads after a few.  Isolated,
each reload stops the old version's worker, so the host's RSS, thread count
and fd count stay flat and no worker is left behind.

Isolated first (so the in-process leaks cannot pollute its figures), then
the same sequence in process until the leak budget refuses.  Needs ``go``
(``.ci/sdk-deps.sh``); without it the proof is skipped with a line saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from hotload import Host, HotloadError

from common import limit_row, median, now, open_fds, rss_kb, scratch, text_row

RELOADS = int(os.environ.get("HOTLOAD_GO_RELOADS", "200"))
WARMUP = 70
ROOT = Path(__file__).resolve().parent.parent
GO_MAIN = """package main

// #include <stdint.h>
import "C"

//export Add
func Add(a, b C.int64_t) C.int64_t { return a + b }

func main() {}
"""
GO_DESC = """#include <hotload.h>
extern int64_t Add(int64_t, int64_t);
HOTLOAD_PLUGIN("gox", "1");
HOTLOAD_EXPORT(Add, int64_t, (int64_t, int64_t));
"""


def build_go(tmp: Path) -> Path:
    """``go build -buildmode=c-shared`` of a one-function plugin with a
    hotload descriptor (cgo compiles ``desc.c`` beside it)."""
    pkg = tmp / "gopkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "main.go").write_text(GO_MAIN)
    (pkg / "desc.c").write_text(GO_DESC)
    lib = tmp / "gox.so"
    env = {
        **os.environ,
        "GOCACHE": str(tmp / "gocache"),
        "GO111MODULE": "off",
        "CGO_CFLAGS": f"-I{ROOT / 'native' / 'include'}",
    }
    subprocess.run(
        ["go", "build", "-buildmode=c-shared", "-o", str(lib), "."],
        cwd=pkg,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return lib


def live_children() -> list[int]:
    """This process's isolated workers that are not zombies (not the other
    children an earlier benchmark of the same run may have left, such as
    multiprocessing's resource tracker)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read()
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            mine = int(fields[1]) == os.getpid() and fields[0] != b"Z"
            argv = cmdline.split(b"\0")
            if mine and b"hotload._process.worker" in argv and b"isolated" in argv:
                out.append(int(entry))
    return out


def figures() -> tuple[int, int, int]:
    return rss_kb(), threading.active_count(), open_fds()


def isolated(lib: Path, tmp: Path) -> dict[str, float]:
    r: dict[str, float] = {}
    with Host(tmp / "iso", preflight=False) as h:
        p = h.load(lib, isolate=True)
        # Warm-up: the spare worker, and the host's bounded memory of past
        # versions (the last builds kept for rollback, the capped version
        # history) filling up; the proof measures from there.
        for _ in range(WARMUP):
            h.reload("gox")
        h.settle(10.0)
        time.sleep(0.5)
        r["rss0"], r["threads0"], r["fds0"] = figures()
        times, pids = [], set()
        for i in range(RELOADS):
            t0 = now()
            info = h.reload("gox")
            times.append((now() - t0) * 1e3)
            pids.add(info.pid)
            if p.Add(i, 1) != i + 1:
                raise AssertionError("the reloaded Go plugin answered wrong")
        h.settle(30.0)
        time.sleep(0.5)
        r["rss1"], r["threads1"], r["fds1"] = figures()
        live = h.current("gox")
        pids.discard(live.pid if live else None)
        r["old alive"] = sum(1 for pid in pids if pid in live_children())
        r["children"] = len(live_children())  # the live worker, the warm spare, the zygote
        r["reload p50"] = median(times)
        r["reload mean"] = sum(times) / len(times)
        r["leaks"] = len(h.leaks())
    deadline = time.monotonic() + 10
    while live_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    r["after close"] = len(live_children())
    return r


def in_process(lib: Path, tmp: Path) -> dict[str, float]:
    r: dict[str, float] = {}
    with Host(tmp / "in", preflight=False) as h:
        h.load(lib)
        r["rss0"], r["threads0"], _ = figures()
        done = 0
        r["refused"] = 0
        for _ in range(RELOADS):
            try:
                h.reload("gox")
            except HotloadError as exc:
                r["refused"] = 1
                r["why"] = "max_leaked" in str(exc)
                break
            h.settle(10.0)
            done += 1
        r["done"] = done
        r["leaked"] = len(h.leaks())
        r["rss1"], r["threads1"], _ = figures()
    return r


def run() -> dict[str, object]:
    if shutil.which("go") is None:
        return {"skipped": "no Go toolchain (.ci/sdk-deps.sh installs golang-go)"}
    tmp = scratch()
    lib = build_go(tmp)
    return {"iso": isolated(lib, tmp), "in": in_process(lib, tmp)}


def report(r: dict[str, object]) -> list[str]:
    head = f"real unload (issue 12): {RELOADS} reloads of a Go c-shared plugin"
    if "skipped" in r:
        return [head, text_row("skipped", str(r["skipped"]))]
    iso: dict[str, float] = r["iso"]  # type: ignore[assignment]
    inp: dict[str, float] = r["in"]  # type: ignore[assignment]
    drss = iso["rss1"] - iso["rss0"]
    return [
        head,
        text_row(
            "isolated: host RSS start -> end",
            f"{iso['rss0'] / 1024:.1f} MB -> {iso['rss1'] / 1024:.1f} MB ({drss:+.0f} KB)",
        ),
        text_row(
            "isolated: host threads / fds start -> end",
            f"threads {iso['threads0']:.0f} -> {iso['threads1']:.0f}, "
            f"fds {iso['fds0']:.0f} -> {iso['fds1']:.0f}",
        ),
        limit_row("isolated: host RSS growth over the reloads", drss / 1024, "MB", 4.0, "<"),
        limit_row("isolated: old workers left behind", iso["old alive"], "", 0.0, "<="),
        text_row(
            "isolated: processes alive at the end / after close",
            f"{iso['children']:.0f} (the live worker, the spare, the zygote) / "
            f"{iso['after close']:.0f}",
        ),
        text_row(
            "isolated: reload() back to back (a zygote's fork each)",
            f"p50 {iso['reload p50']:.1f} ms, mean {iso['reload mean']:.1f} ms; "
            f"leaked versions {iso['leaks']:.0f}",
        ),
        text_row(
            "in-process: the same sequence",
            f"{inp['done']:.0f} reloads, then "
            + (
                "refused by the leak budget (max_leaked)"
                if inp["refused"] and inp.get("why")
                else "no refusal"
            )
            + f"; {inp['leaked']:.0f} versions leaked, "
            f"RSS {inp['rss0'] / 1024:.1f} -> {inp['rss1'] / 1024:.1f} MB, "
            f"threads {inp['threads0']:.0f} -> {inp['threads1']:.0f}",
        ),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
