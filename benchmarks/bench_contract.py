"""The plugin-host contract: services, events, structs (issue 11).

- A service call from C into Python vs a raw cffi callback of the same
  prototype, called the same way from the same C loop (target <= 1.2x).
- ``host.emit`` to 10 plugins vs ten routed calls in a Python loop that
  collects the results as emit does (target <= 1.2x).
- A struct-by-pointer call, routed and pinned, vs raw cffi with the same cdef
  (target <= 1.1x; judged on the pinned call, the like-for-like one: a routed
  call adds the routing cost of every routed call, shown beside it).
- ``reload()`` of a plugin with 20 types and 20 imports vs the copy + dlopen
  floor of the same file (``bench_swap.Floor``), samples alternating (target
  p50 <= 2x).

Method as in ``bench_calls``: statements inlined in timeit's loop,
interleaved rounds, medians of per-round paired ratios.
"""

from __future__ import annotations

from typing import Any

import cffi

from hotload import Host
from hotload._contract import events as _events
from hotload._engine.lifecycle import ROUTER

from bench_swap import Floor
from common import build_bench, loop_ns, median, percentiles, row, scratch, timed

ROUNDS = 9
NUMBER = 20_000
LOOP = 200  # service calls per C loop

SOURCE = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "1");
HOTLOAD_IMPORT(grant_item, int32_t, (int64_t, int32_t));
HOTLOAD_IMPORT(grant_named, int32_t, (int64_t, const char *, int32_t));
typedef struct { int64_t id; int32_t level; char name[16]; } player_t;
HOTLOAD_STRUCT(player_t);
HOTLOAD_FIELD(player_t, id, int64_t);
HOTLOAD_FIELD(player_t, level, int32_t);
HOTLOAD_FIELD(player_t, name, char[16]);

HOTLOAD_API int64_t via_service(int32_t n)
{ int64_t t = 0; for (int32_t i = 0; i < n; i++) t += grant_item(i, 1); return t; }
HOTLOAD_EXPORT(via_service, int64_t, (int32_t));
HOTLOAD_API int64_t via_pointer(int32_t (*fn)(int64_t, int32_t), int32_t n)
{ int64_t t = 0; for (int32_t i = 0; i < n; i++) t += fn(i, 1); return t; }
HOTLOAD_EXPORT(via_pointer, int64_t, (int32_t (*)(int64_t, int32_t), int32_t));
HOTLOAD_API int64_t named_service(int32_t n)
{ int64_t t = 0; for (int32_t i = 0; i < n; i++) t += grant_named(i, "crate", 1); return t; }
HOTLOAD_EXPORT(named_service, int64_t, (int32_t));
HOTLOAD_API int64_t named_pointer(int32_t (*fn)(int64_t, const char *, int32_t), int32_t n)
{ int64_t t = 0; for (int32_t i = 0; i < n; i++) t += fn(i, "crate", 1); return t; }
HOTLOAD_EXPORT(named_pointer, int64_t, (int32_t (*)(int64_t, const char *, int32_t), int32_t));
HOTLOAD_API int32_t on_tick(int32_t t) { return t + 1; }
HOTLOAD_EXPORT(on_tick, int32_t, (int32_t));
HOTLOAD_API int32_t level_of(const player_t *p) { return p->level; }
HOTLOAD_EXPORT(level_of, int32_t, (const player_t *));
"""

CDEF = """
typedef struct { int64_t id; int32_t level; char name[16]; } player_t;
int32_t level_of(const player_t *p);
int64_t via_pointer(int32_t (*fn)(int64_t, int32_t), int32_t n);
int64_t named_pointer(int32_t (*fn)(int64_t, const char *, int32_t), int32_t n);
"""

STATEMENTS = {
    "service": "svc(LOOP)",
    "raw callback": "raw(cb, LOOP)",
    "service (char *)": "named(LOOP)",
    "raw callback (char *)": "raw_named(cb_named, LOOP)",
    "emit to 10": "emit('on_tick', 1)",
    "emit to 10, Python loop": "emit_py('on_tick', 1)",
    "10 routed calls": "[r(1) for r in routers]",
    "routed struct ptr": "r_level(player)",
    "pinned struct ptr": "pin_level(player)",
    "raw cffi struct ptr": "f_level(raw_player)",
}
PAIRS = {
    "service": "raw callback",
    "service (char *)": "raw callback (char *)",
    "emit to 10": "10 routed calls",
    "emit to 10, Python loop": "10 routed calls",
    "routed struct ptr": "raw cffi struct ptr",
    "pinned struct ptr": "raw cffi struct ptr",
}


RELOAD_ROUNDS = 60


def wide_source(n: int = 20) -> str:
    """A plugin with ``n`` structs, ``n`` imports and ``n`` exports using both."""
    parts = ['#include <hotload.h>\nHOTLOAD_PLUGIN("wide", "1");']
    for i in range(n):
        parts.append(
            f"typedef struct {{ int64_t a; int32_t b; char c[8]; }} t{i}_t;\n"
            f"HOTLOAD_STRUCT(t{i}_t);\nHOTLOAD_FIELD(t{i}_t, a, int64_t);\n"
            f"HOTLOAD_FIELD(t{i}_t, b, int32_t);\nHOTLOAD_FIELD(t{i}_t, c, char[8]);\n"
            f"HOTLOAD_IMPORT(svc{i}, int32_t, (int64_t));\n"
            f"HOTLOAD_API int32_t f{i}(const t{i}_t *t) {{ return svc{i}(t->a); }}\n"
            f"HOTLOAD_EXPORT(f{i}, int32_t, (const t{i}_t *));"
        )
    return "\n".join(parts) + "\n"


def run_reload() -> dict[str, float]:
    """Reload the wide plugin and a plain one (``common.BENCH_SRC``), each
    after a floor sample of its own file, alternating."""
    from hotload._artifact.builder import compile_plugin

    tmp = scratch()
    src = tmp / "wide.c"
    src.write_text(wide_source())
    wide = tmp / "wide.so"
    compile_plugin(src, wide, extra_cflags=["-O2"])
    plain = build_bench(tmp / "bench.so")
    (tmp / "plain").mkdir()
    floors = {"wide": Floor(wide, tmp), "bench": Floor(plain, tmp / "plain")}
    out: dict[str, list[float]] = {k: [] for k in ("floor", "reload", "floor plain", "plain")}
    with Host(tmp / "work", preflight=False) as host:
        for i in range(20):
            host.provide(f"svc{i}", lambda a: 0, "int32_t(int64_t)")
        host.load(wide)
        host.load(plain)
        for _ in range(RELOAD_ROUNDS):
            out["floor"].append(floors["wide"].sample())
            out["reload"].append(timed(lambda: host.reload("wide")))
            host.settle()
            out["floor plain"].append(floors["bench"].sample())
            out["plain"].append(timed(lambda: host.reload("bench")))
            host.settle()
    return {f"{k} p50": percentiles(v)[0] * 1e6 for k, v in out.items()}


def _grant(player: int, count: int) -> int:
    return count


def _grant_named(player: int, item: str, count: int) -> int:
    return count


def run() -> dict[str, float]:
    from hotload._artifact.builder import compile_plugin

    tmp = scratch()
    libs = []
    for i in range(10):
        src = tmp / f"contract{i}.c"
        src.write_text(SOURCE.replace("NAME", f"contract{i}"))
        libs.append(tmp / f"contract{i}.so")
        compile_plugin(src, libs[-1], extra_cflags=["-O2"])
    samples: dict[str, list[float]] = {k: [] for k in STATEMENTS}
    with Host(tmp / "work", preflight=False) as host:
        host.provide("grant_item", _grant, "int32_t(int64_t, int32_t)")
        host.provide("grant_named", _grant_named, "int32_t(int64_t, const char *, int32_t)")
        plugins = [host.load(lib) for lib in libs]
        p = plugins[0]
        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        raw_lib = ffi.dlopen(str(libs[0]))

        def emit_py(event: str, *args: Any) -> list[Any]:
            """``Host.emit`` with the pure-Python mode's loop (what every emit ran before the
            C loop): the same frames, so the two rows differ only in the loop."""
            routers = host._events.cache.get(event)
            if routers is None:
                routers = host._events.routers(event, host._table.plugins())
            return _events._emit_py(routers, args)

        def raw_named_fn(player: Any, item: Any, count: int) -> int:  # converts as hotload does
            return _grant_named(player, ffi.string(item).decode("utf-8", "surrogateescape"), count)

        env: dict[str, Any] = {
            "LOOP": LOOP,
            "svc": p.via_service,
            "raw": raw_lib.via_pointer,
            "cb": ffi.callback("int32_t(int64_t, int32_t)", _grant),
            "named": p.named_service,
            "raw_named": raw_lib.named_pointer,
            "cb_named": ffi.callback("int32_t(int64_t, const char *, int32_t)", raw_named_fn),
            "emit": host.emit,
            "emit_py": emit_py,
            "routers": [q.on_tick for q in plugins],
            "r_level": p.level_of,
            "player": p.new("player_t", id=1, level=3),
            "f_level": raw_lib.level_of,
            "raw_player": ffi.new("player_t *", {"id": 1, "level": 3}),
        }
        with p.pinned() as pin:
            env["pin_level"] = pin.level_of
            for stmt in STATEMENTS.values():
                loop_ns(stmt, env, 2_000)
            for _ in range(ROUNDS):
                for key, stmt in STATEMENTS.items():
                    number = NUMBER // 20 if "LOOP" in stmt else NUMBER  # LOOP C calls each
                    samples[key].append(loop_ns(stmt, env, number))
    out = {k: median(v) for k, v in samples.items()}
    for key in ("service", "raw callback", "service (char *)", "raw callback (char *)"):
        out[key] /= LOOP  # per service call
    for key, base in PAIRS.items():
        out[f"ratio {key}"] = median(
            a / b for a, b in zip(samples[key], samples[base], strict=True)
        )
    out.update(run_reload())
    return out


def report(r: dict[str, float]) -> list[str]:
    return [
        f"plugin-host contract (median over {ROUNDS} interleaved rounds; ns per call; ratios are "
        f"medians of per-round paired ratios)",
        row("raw cffi callback int32_t(int64_t, int32_t), from C", r["raw callback"], "ns"),
        row(
            "host service, same prototype, from C",
            r["service"],
            "ns",
            r["raw callback"],
            "vs raw callback",
            1.2,
            ratio=r["ratio service"],
        ),
        row(
            "raw cffi callback with a char * (decoded in Python)", r["raw callback (char *)"], "ns"
        ),
        row(
            "host service with a char * (arrives as str)",
            r["service (char *)"],
            "ns",
            r["raw callback (char *)"],
            "vs raw callback",
            1.2,
            ratio=r["ratio service (char *)"],
        ),
        row("ten routed calls in a Python loop", r["10 routed calls"], "ns"),
        row(
            f"host.emit to 10 plugins (router: {ROUTER})",
            r["emit to 10"],
            "ns",
            r["10 routed calls"],
            "vs 10 routed calls",
            1.2,
            ratio=r["ratio emit to 10"],
        ),
        row(
            "host.emit to 10, Python loop (pure-Python mode)",
            r["emit to 10, Python loop"],
            "ns",
            r["10 routed calls"],
            "vs 10 routed calls",
            ratio=r["ratio emit to 10, Python loop"],
        ),
        row("raw cffi level_of(const player_t *)", r["raw cffi struct ptr"], "ns"),
        row(
            "pinned level_of(player_t *)",
            r["pinned struct ptr"],
            "ns",
            r["raw cffi struct ptr"],
            "vs raw cffi",
            1.1,
            ratio=r["ratio pinned struct ptr"],
        ),
        row(
            "routed level_of(player_t *) (routing cost incl.)",
            r["routed struct ptr"],
            "ns",
            r["raw cffi struct ptr"],
            "vs raw cffi",
            ratio=r["ratio routed struct ptr"],
        ),
        row("floor: copy + dlopen + dlclose old, plain plugin, p50", r["floor plain p50"], "us"),
        row(
            "reload() of the plain plugin, p50 (for scale)",
            r["plain p50"],
            "us",
            r["floor plain p50"],
            "vs its floor",
        ),
        row("floor: copy + dlopen + dlclose old (20 types/imports), p50", r["floor p50"], "us"),
        row(
            "reload() with 20 types and 20 imports, p50",
            r["reload p50"],
            "us",
            r["floor p50"],
            "vs floor",
            2.0,
        ),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
