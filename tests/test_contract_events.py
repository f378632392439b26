"""Events: host.emit() calls the export of that name in every loaded plugin.

One spec for both modes: every test runs with its plugins in process and
isolated (``mode``, from conftest).  The compiled and the Python router both
run this file (the Makefile's ROUTING_TESTS; its isolated cases with the
compiled router only, ROUTING_SKIP says why).
"""

from __future__ import annotations

import threading

import pytest

from hotload import Host, Isolated, SignatureError
from hotload._contract import events as _events

Mode = bool | Isolated

HANDLER = """
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "VERSION");
HOTLOAD_API int64_t on_player_login(int64_t player) { return player * FACTOR; }
HOTLOAD_EXPORT(on_player_login, int64_t, (int64_t));
HOTLOAD_API int32_t on_tick(int32_t t) { return t + FACTOR; }
HOTLOAD_EXPORT(on_tick, int32_t, (int32_t));
"""


def handler(cc, name: str, factor: int, version: str = "1", out: str | None = None):
    src = HANDLER.replace("NAME", name).replace("FACTOR", str(factor))
    return cc(src.replace("VERSION", version), out or f"{name}_{version}")


def test_emit_calls_every_plugin_in_load_order(host: Host, cc, isolate: Mode) -> None:
    for name, factor in (("zeta", 2), ("alpha", 3), ("mid", 5)):
        host.load(handler(cc, name, factor), isolate=isolate)
    host.load(
        cc(
            """
            #include <hotload.h>
            HOTLOAD_PLUGIN("bystander", "1");
            HOTLOAD_API int32_t other(void) { return 1; }
            HOTLOAD_EXPORT(other, int32_t, (void));
            """,
            "bystander",
        ),
        isolate=isolate,
    )
    assert host.emit("on_player_login", 10) == [20, 30, 50]  # load order, not name order
    host.reload("alpha", handler(cc, "alpha", 7, "2"))
    assert host.emit("on_player_login", 10) == [20, 70, 50]  # the swap is seen at once
    host.unload("zeta")
    assert host.emit("on_player_login", 1) == [7, 5]
    host.load(handler(cc, "zeta", 11, "3"), isolate=isolate)
    assert host.emit("on_player_login", 1) == [7, 5, 11]
    assert host.emit("on_nobody_handles") == []


def test_event_prototype_conflict_is_refused_naming_the_other_plugin(
    host: Host, cc, isolate: Mode
) -> None:
    host.load(handler(cc, "first", 2), isolate=isolate)
    assert host.emit("on_tick", 1) == [3]  # emitted once: on_tick is an event now
    other = cc(
        """
        #include <hotload.h>
        HOTLOAD_PLUGIN("second", "1");
        HOTLOAD_API int64_t on_tick(int64_t t) { return t; }
        HOTLOAD_EXPORT(on_tick, int64_t, (int64_t));
        """,
        "second",
    )
    with pytest.raises(SignatureError) as err:
        host.load(other, isolate=isolate)
    msg = str(err.value)
    assert "second.so: exports event on_tick as 'int64_t(int64_t)'" in msg
    assert "plugin first exports it as 'int32_t(int32_t)'" in msg
    assert host.names() == ["first"] and host.emit("on_tick", 1) == [3]


def test_declared_event_refuses_other_prototype_and_late_declaration(
    host: Host, cc, isolate: Mode
) -> None:
    host.declare_event("on_player_login", "int64_t(int64_t player)")
    host.load(handler(cc, "ok", 2), isolate=isolate)
    with pytest.raises(SignatureError, match="plugin ok exports it as 'int32_t\\(int32_t\\)'"):
        host.declare_event("on_tick", "int64_t(int64_t)")  # ok exports on_tick as int32_t
    host.declare_event("on_tick", "int32_t(int32_t)")
    bad = cc(
        """
        #include <hotload.h>
        HOTLOAD_PLUGIN("bad", "1");
        HOTLOAD_API int32_t on_player_login(int32_t p) { return p; }
        HOTLOAD_EXPORT(on_player_login, int32_t, (int32_t));
        """,
        "bad",
    )
    with pytest.raises(SignatureError, match="host declared it as 'int64_t\\(int64_t\\)'"):
        host.load(bad, isolate=isolate)
    assert host.names() == ["ok"]


def test_emit_during_swaps_never_fails(tmp_path, cc, isolate: Mode) -> None:
    builds = [handler(cc, "swapped", 1, str(i), out=f"swapped_{i}") for i in range(2)]
    with Host(tmp_path / "work", preflight=False) as host:
        host.load(handler(cc, "steady", 1000), isolate=isolate)
        host.load(builds[0], isolate=isolate)
        stop, failures, calls = threading.Event(), [], [0]

        def caller() -> None:
            while not stop.is_set():
                try:
                    assert host.emit("on_player_login", 1) == [1000, 1]
                    calls[0] += 1
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    failures.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        swaps = 6 if isolate else 40  # each isolated swap starts a worker process
        for i in range(swaps):
            host.reload("swapped", builds[i % 2])
        stop.set()
        for t in threads:
            t.join(10)
        assert failures == [] and calls[0] > 0


COUNTING = """
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "1");
static int32_t calls;
HOTLOAD_API int32_t on_tick(int32_t t) { calls++; return t + FACTOR; }
HOTLOAD_EXPORT(on_tick, int32_t, (int32_t));
HOTLOAD_API int32_t tick_calls(void) { return calls; }
HOTLOAD_EXPORT(tick_calls, int32_t, (void));
"""


def test_emit_skips_a_plugin_unloaded_after_its_router_was_taken(
    host: Host, cc, isolate: Mode
) -> None:
    """The routers an emit runs may be of a plugin unloaded meanwhile (the
    list is taken, then another thread unloads): that plugin is skipped and
    the others still answer, in order, in both router modes."""
    for name, factor in (("first", 1), ("gone", 2), ("last", 3)):
        src = COUNTING.replace("NAME", name).replace("FACTOR", str(factor))
        host.load(cc(src, name), isolate=isolate)
    routers = host._events.routers("on_tick", host._table.plugins())  # what an emit in flight holds
    host.unload("gone")
    assert _events.emit(routers, (10,)) == [11, 13]
    assert _events._emit_py(routers, (10,)) == [11, 13]
    assert host.emit("on_tick", 10) == [11, 13]


def test_an_error_in_an_emit_stops_it_and_propagates(host: Host, cc, isolate: Mode) -> None:
    """A call that fails for another reason than an unloaded plugin ends the
    emit with that error: the later plugins are not called."""
    plugins = [
        host.load(cc(COUNTING.replace("NAME", n).replace("FACTOR", "1"), n), isolate=isolate)
        for n in ("a", "b")
    ]
    with pytest.raises(SignatureError, match="on_tick"):
        host.emit("on_tick", 1 << 40)  # does not fit int32_t: the first call refuses it
    assert [p.tick_calls() for p in plugins] == [0, 0]
    assert host.emit("on_tick", 1) == [2, 2]
    assert [p.tick_calls() for p in plugins] == [1, 1]
