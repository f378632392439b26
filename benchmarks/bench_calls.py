"""Call overhead: a routed call vs hand-written ctypes vs raw cffi, same
function, same process, same run.  Target: routed <= 1.0x ctypes; pinned
batch <= 1.1x raw cffi."""

from __future__ import annotations

import ctypes

import cffi

from hotload import Host

from common import build_bench, loop_ns, row, scratch


def run() -> dict[str, float]:
    tmp = scratch()
    lib_path = build_bench(tmp / "bench.so")
    out: dict[str, float] = {}
    # hand-written ctypes, the usual baseline
    c = ctypes.CDLL(str(lib_path))
    c_add = c.add
    c_add.argtypes, c_add.restype = [ctypes.c_int64, ctypes.c_int64], ctypes.c_int64
    c_sum = c.sum
    c_sum.argtypes, c_sum.restype = [ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t], ctypes.c_int64
    arr = (ctypes.c_int32 * 16)(*range(16))
    # raw cffi ABI mode
    ffi = cffi.FFI()
    ffi.cdef("int64_t add(int64_t, int64_t); int64_t sum(const int32_t *, size_t);")
    f = ffi.dlopen(str(lib_path))
    f_add, f_sum = f.add, f.sum
    buf = ffi.new("int32_t[]", list(range(16)))
    with Host(tmp / "work") as host:
        p = host.load(lib_path)
        r_add, r_sum = p.add, p.sum
        env = {"c_add": c_add, "c_sum": c_sum, "arr": arr, "f_add": f_add, "f_sum": f_sum, "buf": buf,
               "r_add": r_add, "r_sum": r_sum, "p": p}
        # interleave the measurements so drift on a shared machine hits all alike
        for _ in range(2):
            out["ctypes add"] = loop_ns("c_add(1, 2)", env)
            out["cffi add"] = loop_ns("f_add(1, 2)", env)
            out["routed add"] = loop_ns("r_add(1, 2)", env)
            out["routed add (attribute each call)"] = loop_ns("p.add(1, 2)", env)
            out["ctypes sum(ptr, len)"] = loop_ns("c_sum(arr, 16)", env)
            out["cffi sum(ptr, len)"] = loop_ns("f_sum(buf, 16)", env)
            out["routed sum(ptr, len)"] = loop_ns("r_sum(buf, 16)", env)
        with p.pinned() as pin:
            env["pin_add"] = pin.add
            env["pin_sum"] = pin.sum
            out["pinned add"] = loop_ns("pin_add(1, 2)", env)
            out["pinned sum(ptr, len)"] = loop_ns("pin_sum(buf, 16)", env)
            out["cffi add (again, beside pinned)"] = loop_ns("f_add(1, 2)", env)
    return out


def report(r: dict[str, float]) -> list[str]:
    return [
        "call overhead (median ns per call)",
        row("hand-written ctypes add(int64, int64)", r["ctypes add"], "ns"),
        row("raw cffi add", r["cffi add"], "ns", r["ctypes add"], "vs ctypes"),
        row("routed add (hotload)", r["routed add"], "ns", r["ctypes add"], "vs ctypes  [target <= 1.0x]"),
        row("routed add, p.add(...) looked up per call", r["routed add (attribute each call)"], "ns",
            r["ctypes add"], "vs ctypes"),
        row("pinned add (with p.pinned() as f)", r["pinned add"], "ns", r["cffi add (again, beside pinned)"],
            "vs cffi  [target <= 1.1x]"),
        row("hand-written ctypes sum(int32*, size_t)", r["ctypes sum(ptr, len)"], "ns"),
        row("raw cffi sum", r["cffi sum(ptr, len)"], "ns", r["ctypes sum(ptr, len)"], "vs ctypes"),
        row("routed sum", r["routed sum(ptr, len)"], "ns", r["ctypes sum(ptr, len)"], "vs ctypes  [<= 1.0x]"),
        row("pinned sum", r["pinned sum(ptr, len)"], "ns", r["cffi sum(ptr, len)"], "vs cffi  [<= 1.1x]"),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
