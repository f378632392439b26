"""Soak: four threads call a stateful plugin without pause while another
thread reloads it thousands of times, alternating two builds.

Every call answers ``(generation << 32) | (x * MULT + ADD)``: ``(MULT, ADD)``
is a pair of constants that only one build has, so a result mixing two
builds, or from a half-set-up version, cannot pass; ``generation`` is handed
across every swap in the state blob (+1 per swap), so it also says which
build must have answered (they alternate) and lets each thread check that it
never goes back to an older version.  The call counter is handed across too,
and must equal the number of calls made: a swap must not lose an increment.

Two sizes.  The full soak (marked ``soak``: ``make test-slow``) is
bounded in time: ``FULL.reloads`` swaps with preflight off (stopping early
at ``FULL.budget`` seconds on a loaded machine, but never below
``FULL.min_reloads``), then ``FULL.preflight_reloads`` with preflight on (a
worker process tries each build first): 20-60 s on two shared cores.  The
short one (``make test``) makes the same checks over a few hundred swaps.
Then the memory figures of issue 5 are checked: images mapped, RSS growth,
fds, files in the work dir, and the Python objects each reload leaves alive.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hotload import Host
from hotload._engine import reaper

from conftest import Compile, mapped_images, versioned_copies


@dataclass(frozen=True)
class Size:
    reloads: int  # with preflight off, at most
    min_reloads: int  # the time budget ends the run only after this many: a count, not a speed
    budget: float  # seconds for the preflight-off phase
    preflight_reloads: int  # then, with preflight on


FULL = Size(reloads=3000, min_reloads=2000, budget=45.0, preflight_reloads=150)
SHORT = Size(reloads=300, min_reloads=300, budget=0.0, preflight_reloads=15)
WARMUP = 20
PEEK_EVERY = 100
CALLERS = 4  # the last one calls in pinned batches
PINNED_BATCH = 50
RSS_LIMIT_KB = 5 * 1024
BUILDS = ((3, 1), (5, 2))  # (MULT, ADD) of build A, build B

SOAK_SOURCE = """
#include <hotload.h>
#include <stdatomic.h>
#include <string.h>

HOTLOAD_PLUGIN("soak", "VERSION");

static _Atomic int64_t calls;
static int64_t generation = 1;  /* 1 on the first load, +1 at every swap */

/* x < 2^20: the low 32 bits carry x * MULT + ADD, the high ones the generation */
HOTLOAD_API int64_t step(int64_t x)
{
    atomic_fetch_add(&calls, 1);
    return (generation << 32) | (x * MULT + ADD);
}
HOTLOAD_EXPORT(step, int64_t, (int64_t));

HOTLOAD_API int64_t calls_so_far(void) { return atomic_load(&calls); }
HOTLOAD_EXPORT(calls_so_far, int64_t, (void));

static int64_t snap[2];
static int save(const void **state, size_t *size)
{
    snap[0] = atomic_load(&calls);
    snap[1] = generation;
    *state = snap;
    *size = sizeof snap;
    return 0;
}
HOTLOAD_ON_UNLOAD(save);

static int restore(const char *prev, const void *state, size_t size)
{
    (void)prev;
    if (state == NULL) return 0;          /* first load */
    if (size != sizeof snap) return 1;    /* a layout we do not know: refuse */
    int64_t s[2];
    memcpy(s, state, sizeof s);
    atomic_store(&calls, s[0]);
    generation = s[1] + 1;
    return 0;
}
HOTLOAD_ON_LOAD(restore);
"""


def check(x: int, result: int, last_gen: int) -> str | None:
    """Why ``result`` is not a valid answer to ``step(x)``, or None."""
    gen, low = result >> 32, result & 0xFFFFFFFF
    mult, add = BUILDS[(gen - 1) % 2]  # builds alternate, starting with A at generation 1
    if low != x * mult + add:
        build = "AB"[(gen - 1) % 2]
        return f"step({x}) = gen {gen}, {low}: not build {build}'s answer {x * mult + add}"
    if gen < last_gen:
        return f"step({x}) came from generation {gen} after generation {last_gen}: went back"
    return None


class Caller:
    """One calling thread's tally; errors are collected, not raised, so a
    failure in a thread cannot go unnoticed or stop the others."""

    def __init__(self) -> None:
        self.calls = 0
        self.swaps_seen = 0
        self.failures = 0
        self.errors: list[str] = []  # the first few failures, in words
        self.last_gen = 1
        self.x = 0

    def fail(self, why: str) -> None:
        self.failures += 1
        if len(self.errors) < 10:
            self.errors.append(why)

    def call(self, step: Any) -> int | None:
        """One call, checked; returns its generation (None if it failed)."""
        self.x = x = (self.x + 7) % 1000
        try:
            result = step(x)
        except Exception as exc:  # any failed call is a test failure
            self.fail(f"step({x}) raised {type(exc).__name__}: {exc}")
            return None
        self.calls += 1
        why = check(x, result, self.last_gen)
        if why:
            self.fail(why)
        gen = result >> 32
        self.swaps_seen += gen != self.last_gen
        self.last_gen = max(self.last_gen, gen)
        return gen


def call_loop(soak: Any, tally: Caller, stop: threading.Event) -> None:
    """Routed calls, one after another, as a service's threads make them."""
    step = soak.step
    while not stop.is_set():
        tally.call(step)


def pinned_loop(soak: Any, tally: Caller, stop: threading.Event) -> None:
    """Batches through the hot-loop API: every call of a batch must come
    from the one version pinned for it, however many swaps happen meanwhile."""
    while not stop.is_set():
        with soak.pinned() as f:
            gens = {tally.call(f.step) for _ in range(PINNED_BATCH)}
        if len(gens) != 1:
            tally.fail(f"one pinned batch was served by generations {sorted(gens, key=str)}")


@dataclass
class Reloader:
    """The reloading side: alternates the two builds, samples the images
    mapped (unsettled) every ``PEEK_EVERY`` reloads, stops at a deadline."""

    host: Host
    builds: list[Path]
    done: int = 0
    peak_images: int = 0
    errors: list[str] = field(default_factory=list)

    def run(
        self, count: int, *, preflight: bool, deadline: float = float("inf"), at_least: int = 0
    ) -> int:
        """Reload up to ``count`` times, stopping at ``deadline`` once at least
        ``at_least`` are done (a loaded machine takes longer, never fewer
        reloads); reload number ``i`` (from 0) makes generation ``i + 2``, so
        build B for even ``i``.  Returns swaps done."""
        for i in range(count):
            if i >= at_least and time.monotonic() > deadline:
                break
            try:
                self.host.reload("soak", self.builds[(self.done + 1) % 2], preflight=preflight)
            except Exception as exc:
                self.errors.append(
                    f"reload {self.done} (preflight {'on' if preflight else 'off'}) failed: {exc}"
                )
                break
            self.done += 1
            if self.done % PEEK_EVERY == 0:
                self.peak_images = max(self.peak_images, len(mapped_images(self.host.workdir)))
        return self.done


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def build_pair(cc: Compile) -> list[Path]:
    """Build A (generation odd) and build B (even): same exports, other constants."""
    return [
        cc(
            SOAK_SOURCE.replace("VERSION", v).replace("MULT", str(m)).replace("ADD", str(a)),
            f"soak_{v}",
        )
        for v, (m, a) in zip("AB", BUILDS, strict=True)
    ]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Hand the GIL over every 0.5 ms instead of 5 ms.  Four threads calling
    without pause keep the reloader waiting up to one interval at each of
    its blocking steps; a shorter interval gets more reloads into the time
    budget and interleaves the threads more finely (more stress, not less)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(before)


def process_figures() -> dict[str, int]:
    """RSS, descriptors and Python blocks, once the reaper's heap trim (at most
    one a second after images close) has run: what a host settles back to."""
    gc.collect()
    time.sleep(reaper.TRIM_EVERY + 0.25)
    return {
        "rss_kb": rss_kb(),
        "fds": len(os.listdir("/proc/self/fd")),
        "blocks": sys.getallocatedblocks(),
    }


def run_soak(host: Host, soak: Any, reloader: Reloader, size: Size) -> tuple[list[Caller], float]:
    """Four callers against the reloader; returns their tallies and the time taken."""
    tallies = [Caller() for _ in range(CALLERS)]
    stop = threading.Event()
    loops = [call_loop] * (CALLERS - 1) + [pinned_loop]
    threads = [
        threading.Thread(target=loop, args=(soak, t, stop), name=f"soak-caller-{i}")
        for i, (loop, t) in enumerate(zip(loops, tallies, strict=True))
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        deadline = started + size.budget
        reloader.run(size.reloads, preflight=False, deadline=deadline, at_least=size.min_reloads)
        reloader.run(size.preflight_reloads, preflight=True)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads), "a caller is stuck"
    return tallies, time.monotonic() - started


@pytest.mark.parametrize(
    "size",
    [pytest.param(SHORT, id="short"), pytest.param(FULL, id="full", marks=pytest.mark.soak)],
)
@pytest.mark.usefixtures("fast_switching")
def test_soak_four_callers_and_a_reloader(tmp_path: Path, cc: Compile, size: Size) -> None:
    builds = build_pair(cc)
    work = tmp_path / "work"
    # journal_size: the journal's ring (one entry per reload) full before the baseline too
    with Host(work, preflight=False, journal_size=WARMUP) as host:
        soak = host.load(builds[0])  # build A at generation 1
        reloader = Reloader(host, builds)
        # enough reloads to fill the bounded history before the baseline, so that
        # what is measured is growth per reload, not the history filling up
        reloader.run(host.settings.history_limit + WARMUP, preflight=False)
        reloader.run(
            1, preflight=True
        )  # starts the preflight worker (and its pipes) before the baseline
        assert host.settle() and not reloader.errors
        base, warm = process_figures(), reloader.done
        generation0, calls0 = soak.step(0) >> 32, soak.calls_so_far()

        tallies, elapsed = run_soak(host, soak, reloader, size)

        assert host.settle(10)
        swaps, made = reloader.done - warm, sum(t.calls for t in tallies)
        final_gen, final_calls = soak.step(0) >> 32, soak.calls_so_far() - 1
        end = process_figures()
        figures = {
            "images": len(mapped_images(work)),
            "peak_images": reloader.peak_images,
            "rss_kb": end["rss_kb"] - base["rss_kb"],
            "fds": end["fds"] - base["fds"],
            "files": len(versioned_copies(host.workdir)),
            "blocks_per_reload": round((end["blocks"] - base["blocks"]) / max(swaps, 1), 1),
            "versions_kept": len(host.versions("soak")),
        }
        print(
            f"\nsoak: {swaps} reloads ({size.preflight_reloads} with preflight), {made} calls from "
            f"{CALLERS} threads "
            f"in {elapsed:.1f} s; swaps seen per thread {[t.swaps_seen for t in tallies]}; "
            f"{figures}",
            file=sys.stderr,
        )

        failed = len(reloader.errors) + sum(t.failures for t in tallies)
        errors = reloader.errors + [e for t in tallies for e in t.errors]
        assert not failed, f"{failed} failure(s), first: {errors[:5]}"
        assert swaps >= size.min_reloads + size.preflight_reloads, f"only {swaps} reloads"
        assert final_gen == generation0 + swaps, "the generation was not handed across every swap"
        assert final_calls == calls0 + made, "the call counter lost increments across swaps"
        assert all(t.calls > 0 and t.swaps_seen > 0 for t in tallies), (
            "a caller starved or saw no swap"
        )
        assert figures["images"] == 1 and figures["peak_images"] <= 2, figures
        assert figures["files"] == 1 and figures["fds"] <= 0, figures
        assert figures["rss_kb"] < RSS_LIMIT_KB, (
            f"RSS grew {figures['rss_kb']} KiB over {swaps} reloads: {figures}"
        )
        # RSS can hide growth in heap that earlier tests freed; live allocations cannot
        assert figures["blocks_per_reload"] < 2, (
            f"each reload keeps Python objects alive: {figures}"
        )
    assert not [p for p in work.rglob("*") if p.is_file()], "files left after close()"
