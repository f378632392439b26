"""Call overhead (figure 1) and the hot-loop API (figure 2).

A routed call vs a hand-written ctypes call vs a raw cffi call of the same C
function, in the same process and run; and a call through ``p.pinned()``
vs raw cffi.  The routed call is measured with the router this process uses
(the compiled one when ``hotload._engine._crouter`` is built) and with the Python
router (a second host whose gates and routers are made the Python way), and
the floor of any Python-to-C call, a ``METH_FASTCALL`` builtin
(``operator.add``), is measured beside them.  Targets (issue 14): routed <=
1.1x raw cffi, routed <= 0.7x ctypes; pinned <= 1.1x raw cffi.

Method: every statement is timed inlined in timeit's loop (as a caller's
own code calls; the loop itself adds ~10 ns to every figure alike), once
per round, all statements in turn within a round, for ``ROUNDS`` rounds;
each figure is the median over rounds.  Interleaving matters on a shared
machine: a slow patch of seconds then hits every figure, not one.
"""

from __future__ import annotations

import contextlib
import ctypes
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cffi

from hotload import Host
from hotload._engine import lifecycle as _version
from hotload._engine import registry as _registry

from common import build_bench, loop_ns, median, row, scratch

ROUNDS = 9
NUMBER = 100_000

STATEMENTS = {
    "METH_FASTCALL floor": "op_add(1, 2)",
    "ctypes add": "c_add(1, 2)",
    "ctypes add (attribute each call)": "c.add(1, 2)",
    "cffi add": "f_add(1, 2)",
    "routed add": "r_add(1, 2)",
    "routed add (attribute each call)": "p.add(1, 2)",
    "python router add": "py_add(1, 2)",
    "pinned add": "pin_add(1, 2)",
    "ctypes sum": "c_sum(arr, 16)",
    "cffi sum": "f_sum(buf, 16)",
    "routed sum": "r_sum(buf, 16)",
    "python router sum": "py_sum(buf, 16)",
    "pinned sum": "pin_sum(buf, 16)",
}


PAIRS: dict[str, str | tuple[str, str]] = {  # figure -> its baseline, compared round by round
    "cffi add": "ctypes add",
    "routed add": "ctypes add",
    "routed add/cffi": ("routed add", "cffi add"),
    "python router add/cffi": ("python router add", "cffi add"),
    "routed sum/cffi": ("routed sum", "cffi sum"),
    "python router sum/cffi": ("python router sum", "cffi sum"),
    "routed add (attribute each call)": "ctypes add (attribute each call)",
    "pinned add": "cffi add",
    "cffi sum": "ctypes sum",
    "routed sum": "ctypes sum",
    "pinned sum": "cffi sum",
}


def _ctypes_env(lib: Path) -> dict[str, Any]:
    """The hand-written ctypes baseline: argtypes and restype declared."""
    c = ctypes.CDLL(str(lib))
    c_add, c_sum = c.add, c.sum
    c_add.argtypes, c_add.restype = [ctypes.c_int64, ctypes.c_int64], ctypes.c_int64
    c_sum.argtypes, c_sum.restype = (
        [ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t],
        ctypes.c_int64,
    )
    return {"c": c, "c_add": c_add, "c_sum": c_sum, "arr": (ctypes.c_int32 * 16)(*range(16))}


def _cffi_env(lib: Path) -> dict[str, Any]:
    """Raw cffi in ABI mode: the fastest call without a compiled extension."""
    ffi = cffi.FFI()
    ffi.cdef("int64_t add(int64_t, int64_t); int64_t sum(const int32_t *, size_t);")
    f = ffi.dlopen(str(lib))
    return {
        "f_add": f.add,
        "f_sum": f.sum,
        "buf": ffi.new("int32_t[]", list(range(16))),
        "_keep": (ffi, f),
    }


@contextlib.contextmanager
def _python_routers() -> Iterator[None]:
    """Versions and routers made the Python way while the block runs (the
    gate type and the router factory are chosen once at import): so the
    Python router is measured in the same run as the compiled one."""
    saved = _version.Gate, _registry._native, _registry._Route
    _version.Gate, _registry._native = _version.PyGate, None
    _registry._Route = _registry.PyRoute
    try:
        yield
    finally:
        _version.Gate, _registry._native, _registry._Route = saved


def run() -> dict[str, float]:
    tmp = scratch()
    lib = build_bench(tmp / "bench.so")
    env = {**_ctypes_env(lib), **_cffi_env(lib), "op_add": operator.add}
    samples: dict[str, list[float]] = {k: [] for k in STATEMENTS}
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(Host(tmp / "work", preflight=False))
        p = host.load(lib)
        with _python_routers():
            py_host = stack.enter_context(Host(tmp / "work-py", preflight=False))
            py = py_host.load(lib)
        out: dict[str, Any] = {"router": _version.ROUTER, "python router": type(py.add).__name__}
        with p.pinned() as pin:
            env.update(p=p, r_add=p.add, r_sum=p.sum, pin_add=pin.add, pin_sum=pin.sum)
            env.update(py_add=py.add, py_sum=py.sum)
            for stmt in STATEMENTS.values():  # warm up: specialisation, caches
                loop_ns(stmt, env, 20_000)
            for _ in range(ROUNDS):
                for key, stmt in STATEMENTS.items():
                    samples[key].append(loop_ns(stmt, env, NUMBER))
    out.update({k: median(v) for k, v in samples.items()})
    # Each round measures every statement back to back, so a burst of load on
    # this shared machine hits a pair alike: judge the median of the paired
    # per-round ratios, not a ratio of medians taken at different moments.
    for key, base in PAIRS.items():
        fig, ref = base if isinstance(base, tuple) else (key, base)
        out[f"ratio {key}"] = median(
            [a / b for a, b in zip(samples[fig], samples[ref], strict=True)]
        )
    return out


def report(r: dict[str, Any]) -> list[str]:
    return [
        f"call overhead and hot-loop API (median over {ROUNDS} interleaved rounds of {NUMBER:,} "
        f"calls, ns per "
        f"call; ratios are medians of per-round paired ratios; router: {r['router']})",
        row("METH_FASTCALL floor: operator.add(1, 2)", r["METH_FASTCALL floor"], "ns"),
        row("hand-written ctypes add(int64, int64)", r["ctypes add"], "ns"),
        row(
            "raw cffi add",
            r["cffi add"],
            "ns",
            r["ctypes add"],
            "vs ctypes",
            ratio=r["ratio cffi add"],
        ),
        row(
            "routed add (add = p.add; add(...))",
            r["routed add"],
            "ns",
            r["ctypes add"],
            "vs ctypes",
            0.7,
            ratio=r["ratio routed add"],
        ),
        row(
            "routed add vs raw cffi add",
            r["routed add"],
            "ns",
            r["cffi add"],
            "vs cffi",
            1.1,
            ratio=r["ratio routed add/cffi"],
        ),
        row(
            "Python router add (HOTLOAD_PURE_PYTHON's router)",
            r["python router add"],
            "ns",
            r["cffi add"],
            "vs cffi",
            ratio=r["ratio python router add/cffi"],
        ),
        row(
            "ctypes add, lib.add(...) looked up per call",
            r["ctypes add (attribute each call)"],
            "ns",
        ),
        row(
            "routed add, p.add(...) looked up per call",
            r["routed add (attribute each call)"],
            "ns",
            r["ctypes add (attribute each call)"],
            "vs ctypes lib.add(...)",
            1.0,
            ratio=r["ratio routed add (attribute each call)"],
        ),
        row(
            "pinned add (with p.pinned() as f: f.add)",
            r["pinned add"],
            "ns",
            r["cffi add"],
            "vs cffi",
            1.1,
            ratio=r["ratio pinned add"],
        ),
        row("hand-written ctypes sum(int32*, size_t)", r["ctypes sum"], "ns"),
        row(
            "raw cffi sum",
            r["cffi sum"],
            "ns",
            r["ctypes sum"],
            "vs ctypes",
            ratio=r["ratio cffi sum"],
        ),
        row(
            "routed sum",
            r["routed sum"],
            "ns",
            r["ctypes sum"],
            "vs ctypes",
            0.7,
            ratio=r["ratio routed sum"],
        ),
        row(
            "routed sum vs raw cffi sum",
            r["routed sum"],
            "ns",
            r["cffi sum"],
            "vs cffi",
            1.1,
            ratio=r["ratio routed sum/cffi"],
        ),
        row(
            "Python router sum",
            r["python router sum"],
            "ns",
            r["cffi sum"],
            "vs cffi",
            ratio=r["ratio python router sum/cffi"],
        ),
        row(
            "pinned sum",
            r["pinned sum"],
            "ns",
            r["cffi sum"],
            "vs cffi",
            1.1,
            ratio=r["ratio pinned sum"],
        ),
        row("routing cost (routed - raw cffi, add)", r["routed add"] - r["cffi add"], "ns"),
        row(
            "Python routing cost (Python router - raw cffi, add)",
            r["python router add"] - r["cffi add"],
            "ns",
        ),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
