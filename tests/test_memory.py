"""Memory across reloads (issue 19, item 11): after a warm-up, a host that
keeps reloading a plugin, in process or isolated, keeps its RSS flat (within
1 MiB over 1,000 reloads), and an isolated host its threads and descriptors.

Each run is a fresh child process (``python test_memory.py --child ...``):
RSS read from ``/proc/self/status`` in the test process would also count
pytest's own allocations, and a process that ran other tests reuses their
freed heap and hides growth.  Besides RSS, the child reports what does not
depend on how the allocator reuses pages:

* ``blocks``: ``sys.getallocatedblocks()``, the small Python objects alive;
* ``interned``: the names of versioned copies passed to ``sys.intern``.
  ``pathlib`` interns every name it parses (3.12 and older), and from Python
  3.12 on an interned string is never freed: a ``Path`` of each version's
  unique copy name kept one string per reload for good (about 1 MB per
  15,000 reloads).  Counting them catches that on every Python.
* ``traced``: bytes allocated through Python's allocator and still alive
  (``tracemalloc``), large objects included, where a run asks for it.

The full runs (1,000 reloads of each kind) are marked ``soak``; the isolated
one (~10 minutes: each reload starts a worker process) and the fresh-build
one run with ``HOTLOAD_SLOW=1`` (``make test-slow``).
Each has a fast variant with the same checks, its RSS bound cut in proportion.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from hotload import Host
from hotload._artifact.builder import compile_plugin
from hotload._engine import reaper

from conftest import Compile

NAME = "memplug"
PLUGIN = """
#include <hotload.h>
#include <string.h>
HOTLOAD_PLUGIN("memplug", "1");
static unsigned char blob[STATE];
static int64_t gen = 1;
HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
HOTLOAD_API int64_t generation(void) { return gen; }
HOTLOAD_EXPORT(generation, int64_t, (void));
static int save(const void **state, size_t *size)
{
    memcpy(blob, &gen, sizeof gen);
    *state = blob;
    *size = sizeof blob;
    return 0;
}
HOTLOAD_ON_UNLOAD(save);
static int restore(const char *prev, const void *state, size_t size)
{
    (void)prev;
    if (state && size == sizeof blob) {
        memcpy(&gen, state, sizeof gen);
        gen++;
    }
    return 0;
}
HOTLOAD_ON_LOAD(restore);
HOTLOAD_UNLOAD_SAFE();
"""

MIB = 1024  # KiB
#: The target: RSS growth over 1,000 reloads after the warm-up.
RSS_LIMIT_KB_PER_1000 = 1 * MIB


def build(cc: Compile, state: int = 64) -> Path:
    return cc(PLUGIN.replace("STATE", str(state)), NAME)


def run_child(lib: Path, work: Path, **opts: Any) -> dict[str, Any]:
    """Measure in a fresh interpreter (see the module docstring)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(lib), str(work), json.dumps(opts)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return figures


def check_flat(f: dict[str, Any], *, isolated: bool, rss: bool = True) -> None:
    """The soak runs bound RSS; every run bounds what the allocator cannot
    blur: the names interned, the objects kept alive and, where traced, the
    bytes kept alive, in proportion to the reloads (1 KiB a reload is the
    1 MiB per 1,000 target)."""
    n = f["reloads"]
    assert f["generation"] == f["warmup"] + n + 1  # the state was carried by every reload
    assert f["interned"] == [], f"copy names interned (immortal on 3.12): {f['interned'][:5]}"
    assert f["blocks"] < n / 5, f  # objects kept alive per reload: none (a few settle at first)
    if f["traced"] is not None:
        assert f["traced"] < n * RSS_LIMIT_KB_PER_1000, f  # bytes: n KiB is 1 MiB per 1,000
    if rss:
        assert f["rss_kb"] < RSS_LIMIT_KB_PER_1000 * n / 1000, f
    if isolated:
        assert f["threads"] == 0 and f["fds"] == 0, f


# -- in process ---------------------------------------------------------------


@pytest.mark.soak
def test_1000_in_process_reloads_keep_rss_flat(tmp_path: Path, cc: Compile) -> None:
    f = run_child(build(cc), tmp_path / "work", warmup=1000, reloads=1000)
    check_flat(f, isolated=False)


def test_in_process_reloads_keep_nothing_per_reload(tmp_path: Path, cc: Compile) -> None:
    f = run_child(build(cc), tmp_path / "work", warmup=300, reloads=300, trace=True, rss=False)
    check_flat(f, isolated=False, rss=False)


@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("HOTLOAD_SLOW"), reason="~1 min: set HOTLOAD_SLOW=1")
def test_1000_reloads_of_fresh_builds_keep_rss_flat(tmp_path: Path, cc: Compile) -> None:
    """Every reload a new build (new bytes, new digest), as a watcher's
    rebuilds are: the caches keyed by digest stay bounded, and so does the
    set of builds warned about.  The warm-up is longer: with a new build to
    inspect each time, malloc's arenas (the reaper thread's among them) keep
    growing their free lists for the first ~2,000 (then stay flat)."""
    f = run_child(build(cc), tmp_path / "work", warmup=2500, reloads=1000, fresh=True)
    check_flat(f, isolated=False)


@pytest.mark.soak  # in make test-slow: make test's 300 s budget
def test_reloads_of_fresh_builds_keep_nothing_per_build(tmp_path: Path, cc: Compile) -> None:
    f = run_child(build(cc), tmp_path / "work", warmup=300, reloads=300, fresh=True, rss=False)
    check_flat(f, isolated=False, rss=False)  # not traced: it slows each inspection 10x


# -- isolated -------------------------------------------------------------------


@pytest.fixture(scope="module")
def isolated_1000(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One child run of 1,000 isolated reloads after a warm-up of 1,000 (the
    host's allocators, malloc's arenas and pymalloc's, settle slowly: measured
    after 300, runs of 500 reloads grew RSS by +1048, +196, +20, +8, +4 KiB):
    both tests below read its figures."""
    tmp = tmp_path_factory.mktemp("iso1000")

    def cc(source: str, name: str = "plugin", **_: Any) -> Path:
        src, out = tmp / f"{name}.c", tmp / f"{name}.so"
        src.write_text(source)
        compile_plugin(src, out)
        return out

    return run_child(build(cc), tmp / "work", warmup=1000, reloads=1000, isolate=True)


@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("HOTLOAD_SLOW"), reason="minutes: set HOTLOAD_SLOW=1")
def test_1000_isolated_reloads_keep_threads_fds_and_objects_flat(
    isolated_1000: dict[str, Any],
) -> None:
    """Every check but RSS: no thread, descriptor, interned name or live
    object added over 1,000 isolated reloads."""
    check_flat(isolated_1000, isolated=True, rss=False)


@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("HOTLOAD_SLOW"), reason="minutes: set HOTLOAD_SLOW=1")
def test_1000_isolated_reloads_keep_rss_flat(isolated_1000: dict[str, Any]) -> None:
    """Issue 19 item 11's target, 1 MiB over 1,000 isolated reloads after
    warm-up: met before the worker-stack merges (+612, +128, +32, +48, +24
    KiB in five runs of 300), missed after them (+1.5 MiB, sandboxed or not),
    met again since the supervisor trims the C heap after workers come and
    go (issue 24 item 5: +604 KiB, blocks +89, under load), missed again in
    CI (+1,100 to +1,160 KiB: each version waited for a full collection of
    the cyclic GC), +16 KiB since a pruned version is released at once (see
    the test of that above)."""
    assert isolated_1000["rss_kb"] < RSS_LIMIT_KB_PER_1000, isolated_1000


@pytest.mark.parametrize("isolate", [False, True], ids=["in_process", "isolated"])
def test_a_pruned_version_is_freed_at_once_not_left_to_the_cycle_collector(
    tmp_path: Path, cc: Compile, isolate: bool
) -> None:
    """A version and its gate referred to each other (gate -> owner, table
    entries -> gate), so a version leaving the history waited for a full
    collection of the cyclic GC; 1,000 isolated reloads in a row left ~1.1 MiB
    of RSS behind, allocated for that garbage (32 KiB with a collection every
    50 reloads), and missed the 1 MiB target in CI.  Released on its prune,
    it is freed when its last reference goes: no version, gate or worker
    proxy is cyclic garbage."""
    import collections

    with Host(tmp_path / "w", preflight=False, history_limit=2) as host:
        host.load(build(cc), isolate=isolate)
        for _ in range(4):
            host.reload(NAME)
        assert host.settle(60)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(10):
                host.reload(NAME)
            assert host.settle(60)
            gc.collect()
            kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert host.pruned(NAME) >= 10
    assert not {"Version", "Gate", "Proxy", "IsolatedImage"} & set(kinds), kinds


@pytest.mark.soak
def test_isolated_reloads_keep_nothing_per_reload(tmp_path: Path, cc: Compile) -> None:
    """In the slow tier since 120 sandboxed worker starts took 25-57 s of
    make test's 300 (the 1,000-reload soak above checks RSS; this one the
    objects).  The fast variant: past the version history's bound (4 here, so that a
    warm-up of 24 reloads fills it; the soak above keeps the default 64), 120
    more reloads: no thread, descriptor, interned name or live object added,
    and the bytes kept alive within 1 KiB a reload.  (120, not 60: the
    sandboxed spare workers leave ~10-20 objects once, whatever the count,
    which 60 reloads' bound of 12 cannot tell from growth; 180 reloads kept
    11, 100 reloads 13 and 20.  After a warm-up of 8, one CI run beside the
    1,000-reload soak kept 35 once, which that soak's own check (0.2 a reload
    over 1,000) showed to be no growth: the warm-up is 24 now.)"""
    f = run_child(
        build(cc),
        tmp_path / "work",
        warmup=24,
        reloads=120,
        history=4,
        isolate=True,
        trace=True,
        rss=False,
    )
    check_flat(f, isolated=True, rss=False)


def test_an_unloaded_isolated_version_keeps_no_state_blob(tmp_path: Path, cc: Compile) -> None:
    """An isolated version keeps the state it started with, to restart its
    worker after a crash; once its worker is gone for good it is only history
    (``versions()`` keeps 64), and must not hold a 1 MiB blob there."""
    f = run_child(
        build(cc, state=1 << 20),
        tmp_path / "work",
        warmup=2,
        reloads=6,
        isolate=True,
        trace=True,
        rss=False,
        steady=False,  # nor its threads and descriptors: only what it keeps alive
    )
    assert f["generation"] == 9
    assert f["traced"] < 1 << 20, f  # less than one blob (it kept all 6: 6 MiB)


# -- the child --------------------------------------------------------------------


def test_trim_heap_gives_the_freed_pages_of_the_c_heap_back() -> None:
    """What the isolation supervisor calls after workers come and go: freed
    heap memory below a live block stays resident until trimmed.  In a
    fresh interpreter (this one's heap is pytest's)."""
    code = (
        "from hotload._platform import proc\n"
        "def rss():\n"
        "    with open('/proc/self/status') as fh:\n"
        "        return next(int(x.split()[1]) for x in fh if x.startswith('VmRSS:'))\n"
        "blocks = [bytes(4000) for _ in range(10_000)]\n"  # ~40 MB of malloc'd 4 kB blocks
        "keep = blocks[-1]\n"  # the heap's top stays in use: free() alone gives nothing back
        "del blocks\n"
        "before = rss()\n"
        "print(proc.trim_heap(), before - rss())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    if out[0] == "False":
        pytest.skip("no malloc_trim in this C library (musl)")
    assert int(out[1]) > 20 * MIB, out  # KiB given back, of the ~40 MB freed


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _steady() -> tuple[int, int]:
    """Threads and open descriptors once they stop changing (a stopped
    worker's stderr reader and the next warm spare come and go in the
    background): unchanged over 1 s, or whatever they are after 60 s."""
    last, since = (-1, -1), time.monotonic()
    deadline = since + 60
    while time.monotonic() < deadline:
        now = (_status("Threads"), len(os.listdir("/proc/self/fd")))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
        time.sleep(0.1)
    return last


def _child(lib: Path, work: Path, opts: dict[str, Any]) -> dict[str, Any]:
    from hotload import Host

    warmup, reloads = opts["warmup"], opts["reloads"]
    isolate, fresh, trace = opts.get("isolate", False), opts.get("fresh", False), opts.get("trace")
    # rss=False: a run whose RSS no check reads skips the waits for the heap trim, and
    # steady=False one whose threads and descriptors none reads the wait for them to settle
    rss, steady = opts.get("rss", True), opts.get("steady", isolate)
    data = lib.read_bytes()
    if trace:  # from the start: what the warm-up made and the run replaced is in the baseline
        tracemalloc.start()
    interned: set[str] = set()
    real_intern = sys.intern

    def spy(s: str) -> str:
        if f"{NAME}.v" in s:
            interned.add(s)
        return real_intern(s)

    # The journal keeps its newest journal_size entries, one per reload (the default 1,000
    # fill after 1,000 reloads).  A ring of 4 is full within the shortest warm-up, so what
    # is counted is growth per reload, not the ring filling up, nor its entries' numbers
    # growing past 256 (CPython shares the ints up to 256: a seq above is one block more).
    history = opts.get("history", 64)
    with Host(work, preflight=False, history_limit=history, journal_size=4) as host:
        p = host.load(lib, isolate=isolate)
        count = 0

        def reload() -> None:
            nonlocal count
            count += 1
            if fresh:  # new bytes each time: a new digest, as a rebuild has
                cand = host.adopt(data + count.to_bytes(8, "little"), source=str(lib))
                host.reload(NAME, cand)
            else:
                host.reload(NAME)

        for _ in range(warmup):
            reload()
        assert host.settle(120)
        gc.collect()
        if rss:
            time.sleep(reaper.TRIM_EVERY + 0.25)  # the reaper's heap trim after the last close
        threads0, fds0 = _steady() if steady else (0, 0)
        rss0, blocks0 = _status("VmRSS"), sys.getallocatedblocks()
        traced0 = tracemalloc.get_traced_memory()[0] if trace else None
        sys.intern = spy
        try:
            for _ in range(reloads):
                reload()
        finally:
            sys.intern = real_intern
        assert host.settle(120)
        assert p.add(2, 3) == 5
        generation = p.generation()
        gc.collect()
        if rss:
            time.sleep(reaper.TRIM_EVERY + 0.25)
        threads1, fds1 = _steady() if steady else (0, 0)
        rss1, blocks1 = _status("VmRSS"), sys.getallocatedblocks()
        traced1 = tracemalloc.get_traced_memory()[0] if trace else None
    return {
        "warmup": warmup,
        "reloads": reloads,
        "generation": generation,
        "rss_kb": rss1 - rss0,
        "blocks": blocks1 - blocks0,
        "traced": traced1 - traced0 if traced1 is not None and traced0 is not None else None,
        "threads": threads1 - threads0,
        "fds": fds1 - fds0,
        "interned": sorted(interned),
        "python_threads": threading.active_count(),
    }


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    print(json.dumps(_child(Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]))))
