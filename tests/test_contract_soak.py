"""The issue's "done when": an activity plugin written only against hotload.h
reads a player_t, calls three host services and handles two events, and is
swapped 1000 times under 4 calling threads: no failed call, no lost grant,
no dangling callback (every old image left the process)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from hotload import Host, VersionState

ACTIVITY = r"""
#include <hotload.h>
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

SWAPS = 1000
THREADS = 4


class Player:
    def __init__(self, name: str, level: int) -> None:
        self.name, self.level = name, level
        self.items: Counter[str] = Counter()
        self.mail: list[str] = []
        self.lock = threading.Lock()


@pytest.mark.soak
def test_activity_plugin_swapped_1000_times_under_4_calling_threads(tmp_path, cc) -> None:
    builds = [
        cc(ACTIVITY.replace("VERSION", str(v)).replace("REWARD", "2"), f"act{v}") for v in (1, 2)
    ]
    with Host(tmp_path / "work", preflight=False, quiesce_timeout=2.0) as host:
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
            for i in range(SWAPS):
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
        assert host.current("activity").seq == SWAPS + 1
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
