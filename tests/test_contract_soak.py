"""The issue's "done when": an activity plugin written only against hotload.h
reads a player_t, calls three host services and handles two events, and is
swapped 1000 times under 4 calling threads: no failed call, no lost grant,
no dangling callback (every old image left the process).

The C side is also run under AddressSanitizer: the plugin is built with
``-fsanitize=address`` and the swap loop runs in a child Python with the ASan
runtime preloaded (CPython is not instrumented; ASan must be the first library
loaded, so ``dlopen`` of an instrumented plugin into a plain interpreter needs
``LD_PRELOAD``).  ASan handles ``dlclose`` of instrumented images (each image
unregisters its globals in its destructor), so every swap really unmaps the
old image and a later access through a stale pointer would be reported.  A
plugin with a deliberate heap overflow and one with a use-after-free prove
that the check can fail.  ``make test`` runs 100 swaps in this process and
50 under ASan; the full 1000 of each (~15 s and ~45 s) are marked ``soak``
and run in ``make test-slow`` (the ASan one needs ``HOTLOAD_SLOW=1`` too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from hotload import Host, VersionState

ACTIVITY = r"""
#include <hotload.h>
#include <stdlib.h>
#include <string.h>

HOTLOAD_PLUGIN("activity", "VERSION");

typedef struct { int64_t id; int32_t level; char name[16]; } player_t;
HOTLOAD_STRUCT(player_t);
HOTLOAD_FIELD(player_t, id, int64_t);
HOTLOAD_FIELD(player_t, level, int32_t);
HOTLOAD_FIELD(player_t, name, char[16]);

HOTLOAD_IMPORT(grant_item, int32_t, (int64_t player, const char *item, int32_t count));
HOTLOAD_IMPORT(send_mail, int32_t, (int64_t player, const char *subject));
HOTLOAD_IMPORT(log, void, (const char *line));

/* state carried across swaps: what this plugin granted, in total */
static struct { uint32_t layout; int64_t granted; } state = { 1, 0 };

static int32_t grant(int64_t player, const char *item, int32_t n)
{
    if (grant_item(player, item, n) != n) return 0;   /* the host returns what it granted */
    __atomic_add_fetch(&state.granted, n, __ATOMIC_RELAXED);
    return n;
}

/* event: a player logs in (the host passes its player_t; id is a handle) */
HOTLOAD_API int32_t on_player_login(const player_t *p)
{
    int32_t n = grant(p->id, "login_crate", REWARD + (p->level >= 10));
    if (p->name[0] == 'V') send_mail(p->id, "welcome back, veteran");
    return n;
}
HOTLOAD_EXPORT(on_player_login, int32_t, (const player_t *));

/* event: a server tick for one player */
HOTLOAD_API int32_t on_tick(int64_t player, int32_t tick)
{
    if (tick == 25) BUG
    if (tick % 50 == 0) log("tick");
    return tick % 10 == 0 ? grant(player, "tick_gem", 1) : 0;
}
HOTLOAD_EXPORT(on_tick, int32_t, (int64_t, int32_t));

HOTLOAD_API int64_t granted(void) { return __atomic_load_n(&state.granted, __ATOMIC_RELAXED); }
HOTLOAD_EXPORT(granted, int64_t, (void));

static int on_unload(const void **s, size_t *n) { *s = &state; *n = sizeof state; return 0; }
HOTLOAD_ON_UNLOAD(on_unload);
static int on_load(const char *prev, const void *s, size_t n)
{
    (void)prev;
    if (s == NULL) return 0;
    if (n != sizeof state || ((const uint32_t *)s)[0] != 1) return 1;  /* unknown layout */
    memcpy(&state, s, sizeof state);
    return 0;
}
HOTLOAD_ON_LOAD(on_load);
HOTLOAD_UNLOAD_SAFE();
"""

SWAPS = 1000  # make test-slow (soak)
SHORT_SWAPS = 100  # in make test
THREADS = 4
ASAN_SWAPS = 50  # in make test; the full SWAPS with HOTLOAD_SLOW=1 (make test-slow)
BAD_SWAPS = 200  # a run that must fail stops at tick 25, long before the last swap
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
# CPython itself leaks by design at exit; abort (not exit 1) on the first report
ASAN_OPTIONS = "detect_leaks=0:abort_on_error=1:verify_asan_link_order=0"

# on_tick does something ASan must catch, once, at tick 25 (every thread gets there)
HEAP_OVERFLOW = "{ volatile int i = 8; char *p = malloc(8); p[i] = 1; free(p); }"
USE_AFTER_FREE = "{ volatile int i = 0; char *p = malloc(8); free(p); p[i] = 1; }"


class Player:
    def __init__(self, name: str, level: int) -> None:
        self.name, self.level = name, level
        self.items: Counter[str] = Counter()
        self.mail: list[str] = []
        self.lock = threading.Lock()


@pytest.mark.parametrize(
    "swaps", [SHORT_SWAPS, pytest.param(SWAPS, marks=pytest.mark.soak)], ids=["short", "full"]
)
def test_activity_plugin_swapped_under_4_calling_threads(tmp_path, cc, swaps) -> None:
    swap_under_load(tmp_path / "work", _activity(cc), swaps)


def _activity(cc, flags: list[str] | None = None, bug: str = "{}") -> list[Path]:
    """The two builds that are swapped (versions 1 and 2)."""
    return [
        cc(
            ACTIVITY.replace("VERSION", str(v)).replace("REWARD", "2").replace("BUG", bug),
            f"act{v}",
            flags,
        )
        for v in (1, 2)
    ]


def _asan_runtime() -> str | None:
    """The compiler's shared ASan runtime, or None when it has none."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return None
    out = subprocess.run(
        [cc, "-print-file-name=libasan.so"], capture_output=True, text=True, timeout=30
    )
    path = out.stdout.strip()
    return os.path.realpath(path) if os.path.isabs(path) and os.path.exists(path) else None


def _swap_under_asan(tmp_path: Path, builds: list[Path], swaps: int) -> subprocess.CompletedProcess:
    runtime = _asan_runtime()
    assert runtime is not None
    env = {**os.environ, "LD_PRELOAD": runtime, "ASAN_OPTIONS": ASAN_OPTIONS}
    return subprocess.run(
        [sys.executable, __file__, str(tmp_path / "work"), str(swaps), *map(str, builds)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


needs_asan = pytest.mark.skipif(_asan_runtime() is None, reason="the compiler has no ASan runtime")


@needs_asan
def test_activity_plugin_swapped_under_asan(tmp_path, cc) -> None:
    proc = _swap_under_asan(tmp_path, _activity(cc, ASAN_FLAGS), ASAN_SWAPS)
    assert "AddressSanitizer" not in proc.stderr, proc.stderr[-4000:]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"swapped {ASAN_SWAPS} times" in proc.stdout


@needs_asan
@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("HOTLOAD_SLOW"), reason="~45 s: set HOTLOAD_SLOW=1")
def test_activity_plugin_swapped_1000_times_under_asan(tmp_path, cc) -> None:
    proc = _swap_under_asan(tmp_path, _activity(cc, ASAN_FLAGS), SWAPS)
    assert "AddressSanitizer" not in proc.stderr, proc.stderr[-4000:]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"swapped {SWAPS} times" in proc.stdout


@needs_asan
@pytest.mark.parametrize(
    ("bug", "report"),
    [(HEAP_OVERFLOW, "heap-buffer-overflow"), (USE_AFTER_FREE, "heap-use-after-free")],
    ids=["heap-overflow", "use-after-free"],
)
def test_asan_catches_a_bad_plugin(tmp_path, cc, bug: str, report: str) -> None:
    """The same run with a plugin that corrupts memory fails: the check can fail."""
    proc = _swap_under_asan(tmp_path, _activity(cc, ASAN_FLAGS, bug), BAD_SWAPS)
    assert proc.returncode != 0
    assert f"ERROR: AddressSanitizer: {report}" in proc.stderr, proc.stderr[-4000:]
    assert "on_tick" in proc.stderr  # the report points at the plugin's own code


def swap_under_load(work: Path, builds: list[Path], swaps: int) -> None:
    """Swap the activity plugin ``swaps`` times, alternating ``builds``, while
    ``THREADS`` threads emit its two events; assert that nothing was lost.
    Also run by the ASan test in a child process (see ``__main__`` below)."""
    with Host(work, preflight=False, quiesce_timeout=2.0) as host:
        players = [Player("Vera" if i % 2 else "Nim", 5 + 5 * (i % 3)) for i in range(8)]
        handles = [host.handle(p) for p in players]
        logged = [0]

        def grant_item(h: int, item: str, count: int) -> int:
            player = host.resolve(h)
            with player.lock:
                player.items[item] += count
            return count

        def send_mail(h: int, subject: str) -> int:
            host.resolve(h).mail.append(subject)
            return 0

        def log(line: str) -> None:
            logged[0] += 1

        host.provide("grant_item", grant_item, "int32_t(int64_t, const char *, int32_t)", error=-1)
        host.provide("send_mail", send_mail, "int32_t(int64_t, const char *)", error=-1)
        host.provide("log", log, "void(const char *)")
        host.declare_event("on_player_login", "int32_t(const player_t *)")
        host.declare_event("on_tick", "int32_t(int64_t, int32_t)")
        activity = host.load(builds[0])
        structs = [
            activity.new("player_t", id=h, level=p.level, name=p.name)
            for h, p in zip(handles, players, strict=True)
        ]
        stop = threading.Event()
        failures: list[BaseException] = []
        returned = [0] * THREADS

        def play(t: int) -> None:
            tick = 0
            try:
                while not stop.is_set():
                    for i in range(t, len(players), THREADS):
                        returned[t] += sum(host.emit("on_player_login", structs[i]))
                        tick += 1
                        returned[t] += sum(host.emit("on_tick", handles[i], tick))
            except BaseException as exc:  # noqa: BLE001 - asserted below
                failures.append(exc)

        threads = [threading.Thread(target=play, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        try:
            for i in range(swaps):
                host.reload("activity", builds[(i + 1) % 2])
                if failures:
                    break
        finally:
            stop.set()
            for th in threads:
                th.join(30)
        assert failures == []
        granted_by_host = sum(sum(p.items.values()) for p in players)
        assert sum(returned) == granted_by_host > 0  # every grant the plugin made reached the host
        assert activity.granted() == granted_by_host  # and its counter carried across 1000 swaps
        assert all(p.mail for p in players if p.name == "Vera") and logged[0] > 0
        assert host.current("activity").seq == swaps + 1
        assert host.current("activity").service_errors == 0
        assert host.settle(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            v.state is not VersionState.UNLOADED for v in host.versions("activity")[:-1]
        ):
            time.sleep(0.05)
        old = host.versions("activity")[:-1]
        assert old and all(v.state is VersionState.UNLOADED for v in old)  # none dangles
        assert host.leaks() == []


if __name__ == "__main__":  # the ASan child: python test_contract_soak.py WORK SWAPS BUILD...
    swap_under_load(Path(sys.argv[1]), [Path(a) for a in sys.argv[3:]], int(sys.argv[2]))
    print("swapped", sys.argv[2], "times: no failed call, no lost grant, no dangling callback")
