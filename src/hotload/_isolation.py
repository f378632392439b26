"""Isolated plugins: each version runs in its own worker process.

A plugin loaded with ``isolate=True`` is staged as usual (read once,
checked, copied), but it is ``dlopen``ed by a worker process: a fresh
interpreter (never a fork of the host, see ``_isolated_worker``), one per
live version.  The version's ``Image.functions`` are forwarders that send
the call over a Unix socketpair and wait for the answer, so the routers,
in-flight accounting, drain, state handover and rollback work unchanged.

Why a process: a plugin that dereferences NULL in a call kills only its
worker (the caller gets ``PluginCrashedError``), and closing a version stops
its worker, so its memory goes back to the OS whatever its runtime (a Go
``c-shared`` library never leaves a process it was loaded into).

The channel carries one request at a time (a lock per worker), in a compact
binary form: ``<I`` frame length, then a body.  A call's body is a struct of
its scalar arguments followed by length-prefixed bytes for strings and
buffers; the answer is a status byte, the result, and the contents of every
non-const buffer (copied back into the caller's buffer).  Control requests
(open, hooks, stop) are JSON.  Replies are parsed strictly: a worker writing
garbage to the channel is treated as a crashed worker.

What crosses (checked at load, see ``plan``): integer, floating, bool and
enum scalars; ``const char *`` (a NUL-terminated string, in); a pointer to a
scalar type immediately followed by a ``size_t`` parameter (a buffer and its
length in elements; copied in, and back out unless ``const``); a plain-data
struct (no pointer at any depth) by value, or one struct by pointer (copied
in, and back unless ``const``), carried as its ``sizeof`` bytes: both sides
are the same machine and the layout was verified against the compiler's
(``_types``); a ``char *``, struct or scalar result.  Anything else
(``void *``, function pointers, structs with pointer fields, pointers to
pointers) is refused with the reason.

Host services (``HOTLOAD_IMPORT``) work from the worker: before it opens the
copy, the worker binds the imports the way an in-process host does
(``_services``), to forwarders that send each call on a second socketpair,
the service channel, and wait for the answer.  Any plugin thread may call, so
requests carry an id.  The host reads each worker's service channel on a
thread of its own: a request made inside a host call (by the worker's main
thread) is served right there, since the caller holding the version's lock
is waiting for it; one from a plugin thread goes to a small pool, since it
may have to wait for a call in flight.  The host runs the provided function
looked up at that moment, with the in-process conversions and rules.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import mmap
import os
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import _signatures as signatures
from ._errors import (
    ClosedError,
    HotloadError,
    PluginCrashedError,
    PluginTimeoutError,
    ServiceError,
    SignatureError,
)
from ._loader import ON_LOAD_TYPE, ON_UNLOAD_TYPE, Image, Staged  # noqa: F401
from ._platform import proc as channel
from ._services import ImportBinding, ServiceTable

log = logging.getLogger(__name__)

# ---- the wire format (shared with _isolated_worker) -----------------------------
FRAME = struct.Struct("<I")
OP_CALL = 1
OP_CONTROL = 2
ST_OK = 0
ST_ERROR = 1
NULL_LEN = 0xFFFFFFFF  # a NULL string
# A service request (worker -> host, on the service channel): id, nested (1: made by the
# thread serving a host call, 0: by a thread of the plugin's own), the service's index,
# then a call body as above; the answer: the id, then a reply body.
SVC_HEAD = struct.Struct("<QBH")
SVC_ID = struct.Struct("<Q")
MAX_FRAME = (64 << 20) + 4096  # the largest frame either side accepts (state blob cap + slack)
ON_CRASH = ("restart", "rollback", "stop")
# ---- the shared-memory channel (Linux on x86: stores are seen in order) ------------
# One memfd page-set per worker, mapped by both sides.  Header in 8-byte slots:
# [0] request sequence, [1] request length, [8] reply sequence, [9] reply length
# (a cache line apart); then the request area and the reply area.  A call
# writes its body, then bumps the sequence, then writes 1 to the worker's
# eventfd; the worker spins a little on the sequence before it sleeps in
# poll() on that eventfd and the socket (control frames, EOF).  The reply
# comes back the same way.  Bodies larger than an area travel on the socket.
SHM_CAP = 64 << 10
SHM_REQ = 128
SHM_REP = SHM_REQ + SHM_CAP
SHM_SIZE = SHM_REP + SHM_CAP
REQ_SEQ, REQ_LEN, REP_SEQ, REP_LEN = 0, 1, 8, 9
#: How long a caller spins for a reply, and a worker for the next request,
#: before sleeping (ns).  Bounded so an idle plugin costs no CPU; each turn of
#: the spin yields the CPU, because on a busy machine the two sides often share
#: one core and a spin that does not yield only delays the other side (measured
#: here: ~165 us round trips with 60/100 us spins that did not yield).
HOST_SPIN_NS = 20_000
WORKER_SPIN_NS = 50_000


def shm_supported() -> bool:
    """Whether calls can use the shared-memory channel: memfd and eventfd
    (Linux, Python 3.10+) and an x86 CPU (the ring relies on its store order;
    elsewhere calls use the socket)."""
    if os.environ.get("HOTLOAD_ISOLATE_CHANNEL", "") == "socket":
        return False
    return (
        hasattr(os, "eventfd")
        and hasattr(os, "memfd_create")
        and platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    )


yield_cpu = getattr(os, "sched_yield", lambda: None)


def drain(efd: int) -> None:
    """Empty an eventfd (non-blocking) before sleeping on it."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(efd)


#: Environment variables a worker keeps from the host; everything else is dropped.
ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")


@dataclass(frozen=True)
class Param:
    # "scalar", "str" (const char *), "buf" (pointer + size_t), "len" (the size_t),
    # "struct" (a struct by value), "sptr" (a pointer to one struct)
    kind: str
    code: str = ""  # struct code of a scalar or of a buffer's element; a struct's cffi name
    const: bool = True
    size: int = 0  # a struct's size in bytes
    ctype: Any = field(default=None, compare=False)  # a struct's cffi type
    ptr: Any = field(default=None, compare=False)  # and its pointer type


@dataclass(frozen=True)
class CallPlan:
    """How one export's (or host service's) arguments and result cross the channel."""

    fname: str
    idx: int
    params: tuple[Param, ...]
    result: str  # struct code, "" for void, "s" for a char * result, "T" for a struct
    req: struct.Struct  # op, idx, then every scalar (lengths included)
    rep: struct.Struct  # status, then the scalar result (if any)
    rtype: str = ""  # the cffi name of a struct result
    rsize: int = 0
    #: numbers and structs only: ``req`` and ``rep`` hold everything (a struct as its bytes,
    #: a struct pointer as a present flag and the bytes; the copied-back structs follow the
    #: result), so a call is one pack and one unpack each way, like a call of scalars
    fixed: bool = False

    #: scalars only, both ways: one struct pack each way (worked out once: the hot path reads it)
    simple: bool = field(init=False, compare=False)
    outs: tuple[int, ...] = field(init=False, compare=False)  # the params copied back

    def __post_init__(self) -> None:
        simple = all(p.kind in ("scalar", "len") for p in self.params)
        object.__setattr__(self, "simple", simple and self.result not in ("s", "T"))
        outs = [i for i, p in enumerate(self.params) if _out(p)]
        object.__setattr__(self, "outs", tuple(outs))


def _scalar_code(ctype: Any) -> str | None:
    ffi = signatures.ffi
    if ctype.kind != "primitive":
        return None
    name = ctype.cname
    if name in ("float", "double"):
        return "f" if name == "float" else "d"
    if name == "_Bool":
        return "?"
    if name == "char":
        return "c"
    if name == "long double" or "complex" in name:
        return None
    size = ffi.sizeof(ctype)
    try:
        signed = int(ffi.cast(ctype, -1)) < 0
    except (TypeError, OverflowError):
        return None
    code = {1: "b", 2: "h", 4: "i", 8: "q"}.get(size)
    if code is None:
        return None
    return code if signed else code.upper()


def split_params(proto: str) -> list[str]:
    """The parameter texts of ``ret(params)`` at depth 0 (cffi drops ``const``,
    which decides whether a buffer is copied back, so we read the text)."""
    inner = proto[proto.index("(") + 1 : proto.rindex(")")]
    out, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch in "([" and 1 or 0
        depth -= ch in ")]" and 1 or 0
        cur += ch
    if cur.strip() and cur.strip() != "void":
        out.append(cur.strip())
    return out


def _pointer_field(ctype: Any, path: str) -> tuple[str, str] | None:
    """The first field at any depth of struct ``ctype`` that holds a pointer
    (or a union, or an opaque struct), as ``(dotted path, its C type)``."""
    for fname, f in ctype.fields or ():
        t = f.type
        while t.kind == "array":
            t = t.item
        where = f"{path}.{fname}"
        if t.kind in ("pointer", "function", "union") or (t.kind == "struct" and not t.fields):
            return where, f.type.cname
        if t.kind == "struct":
            inner = _pointer_field(t, where)
            if inner is not None:
                return inner
    return None


def _plain_struct(ctype: Any, what: str, refuse: Callable[[str], SignatureError]) -> int:
    """The size of a struct that can be copied as bytes, or the refusal naming
    the type and the field that holds a pointer."""
    from ._types import plain

    name = plain(ctype.cname)
    if ctype.kind == "union" or not ctype.fields:
        raise refuse(f"{what} ({name}) is a union or an opaque struct: it cannot be copied")
    bad = _pointer_field(ctype, name)
    if bad is not None:
        path, ptype = bad
        owner, _, fname = path.rpartition(".")
        raise refuse(
            f"{what} ({name}): type {owner.split('.')[0]} has a pointer field {path} "
            f"({plain(ptype)}): memory a pointer points to cannot be copied to another "
            f"process; only plain-data structs (numbers, fixed arrays, nested plain structs) "
            f"cross"
        )
    return int(signatures.ffi.sizeof(ctype))


def plan(fname: str, proto: str, idx: int, *, where: str, service: bool = False) -> CallPlan:
    """How ``fname`` crosses the process boundary, or a ``SignatureError``
    naming the parameter that cannot (``service``: a host service the
    isolated plugin imports, whose calls cross the other way)."""
    ctype = signatures.parse(proto, where=where, function=fname)
    texts = split_params(proto)
    args = list(ctype.args)
    params: list[Param] = []

    def refuse(why: str) -> SignatureError:
        from ._types import plain

        if service:
            return SignatureError(
                f"{where}: imports service {fname} ({plain(proto)}), which cannot be called "
                f"from an isolated worker: {why}"
            )
        return SignatureError(
            f"{where}: {fname} ({plain(proto)}) cannot be called in an isolated worker: {why}"
        )

    i = 0
    while i < len(args):
        a = args[i]
        text = texts[i] if i < len(texts) else ""
        code = _scalar_code(a)
        if code is not None:
            params.append(Param("scalar", code))
            i += 1
            continue
        if a.kind == "function":
            raise refuse(
                f"parameter {i + 1} is a function pointer: code in the host cannot be "
                f"called from another process"
            )
        if a.kind in ("struct", "union"):
            size = _plain_struct(a, f"parameter {i + 1}", refuse)
            ptr = signatures.ffi.typeof(f"{a.cname} *")
            params.append(Param("struct", a.cname, True, size, a, ptr))
            i += 1
            continue
        if a.kind != "pointer":
            raise refuse(f"parameter {i + 1} ({a.cname}) cannot be copied to another process")
        item = a.item
        const = text.startswith("const") or " const" in text.split("*")[0]
        nxt = args[i + 1] if i + 1 < len(args) else None
        elem = _scalar_code(item)
        if nxt is not None and nxt.cname == "size_t" and elem is not None:
            params.append(Param("buf", elem, const))
            params.append(Param("len", "Q"))
            i += 2
            continue
        if item.cname == "char" and const:
            params.append(Param("str"))
            i += 1
            continue
        if item.kind in ("struct", "union"):
            size = _plain_struct(item, f"parameter {i + 1}", refuse)
            params.append(Param("sptr", item.cname, const, size, item, a))
            i += 1
            continue
        if item.kind == "void":
            raise refuse(
                f"parameter {i + 1} is an opaque void *: memory of the host cannot be "
                f"reached from another process (pass a typed buffer followed by its size_t "
                f"length instead)"
            )
        if elem is not None:
            raise refuse(
                f"parameter {i + 1} ({a.cname}) is a pointer without a length: declare it "
                f"as a buffer, followed by a size_t parameter with its number of elements"
            )
        raise refuse(f"parameter {i + 1} ({a.cname}) cannot be copied to another process")
    res = ctype.result
    rtype, rsize = "", 0
    if res.kind == "void":
        rcode = ""
    elif res.kind == "pointer" and res.item.cname == "char":
        rcode = "s"
    elif res.kind in ("struct", "union"):
        rsize = _plain_struct(res, "its result", refuse)
        rcode, rtype = "T", res.cname
    else:
        rc = _scalar_code(res)
        if rc is None:
            raise refuse(f"its result ({res.cname}) cannot be copied back")
        rcode = rc
    fixed = rcode != "s" and all(p.kind in ("scalar", "struct", "sptr") for p in params)
    if fixed and any(p.kind != "scalar" for p in params) or rcode == "T" and fixed:
        # every size is known: the whole body is one struct, each way (see CallPlan.fixed)
        req = "".join(
            p.code if p.kind == "scalar" else f"{'?' if p.kind == 'sptr' else ''}{p.size}s"
            for p in params
        )
        back = "".join(f"?{params[i].size}s" for i, p in enumerate(params) if _out(p))
        res = f"{rsize}s" if rcode == "T" else rcode
        return CallPlan(
            fname,
            idx,
            tuple(params),
            rcode,
            struct.Struct("<BH" + req),
            struct.Struct("<B" + res + back),
            rtype,
            rsize,
            fixed=True,
        )
    scalars = "".join(p.code for p in params if p.kind in ("scalar", "len"))
    return CallPlan(
        fname,
        idx,
        tuple(params),
        rcode,
        struct.Struct("<BH" + scalars),
        struct.Struct("<B" + (rcode if rcode not in ("", "s", "T") else "")),
        rtype,
        rsize,
    )


def _out(p: Param) -> bool:
    return p.kind in ("buf", "sptr") and not p.const


def plans(
    prototypes: Mapping[str, str], *, where: str, service: bool = False
) -> dict[str, CallPlan]:
    return {
        f: plan(f, p, i, where=where, service=service)
        for i, (f, p) in enumerate(sorted(prototypes.items()))
    }


# ---- the caller's side of a call ----------------------------------------------------
CData = signatures.ffi.CData


def _as_bytes(value: Any, code: str, fname: str, n: int, count: Any) -> bytes:
    if isinstance(value, CData):  # a plugin's buffer, passed on to a host service
        size = struct.calcsize(code) * (count if isinstance(count, int) and count > 0 else 0)
        return (
            b""
            if value == signatures.ffi.NULL or not size
            else signatures.ffi.buffer(value, size)[:]
        )
    if isinstance(value, (list, tuple)):
        try:
            return struct.pack(f"<{len(value)}{code}", *value)
        except struct.error as exc:
            raise TypeError(f"argument {n}: {exc}") from None
    try:
        return memoryview(value).cast("B").tobytes()
    except TypeError:
        raise TypeError(
            f"argument {n}: expected a buffer (bytes, bytearray, array, memoryview) or a "
            f"list of numbers, got {type(value).__name__}"
        ) from None


def _struct_bytes(p: Param, value: Any, n: int) -> bytes | None:
    """The bytes of the struct an argument holds or points to (None: NULL),
    accepting what cffi accepts for the same parameter in process."""
    ffi = signatures.ffi
    if isinstance(value, CData):
        t = ffi.typeof(value)
        if t is p.ctype:  # a struct by value
            return bytes(ffi.buffer(ffi.addressof(value)))
        if p.kind == "sptr" and (t is p.ptr or (t.kind == "array" and t.item is p.ctype)):
            return ffi.buffer(value, p.size)[:] if value else None  # a NULL pointer is false
        if p.kind == "sptr" and value == ffi.NULL:
            return None
    elif p.kind == "struct" or isinstance(value, (list, tuple)):
        try:  # an initializer (dict, list): cffi builds a temporary struct
            made = (
                ffi.new(f"{p.code}[]", value) if p.kind == "sptr" else ffi.new(f"{p.code} *", value)
            )
        except (TypeError, OverflowError, ValueError, IndexError, KeyError) as exc:
            raise TypeError(f"argument {n}: {_plain(str(exc))}") from None
        return ffi.buffer(made, p.size)[:] if len(ffi.buffer(made)) >= p.size else None
    want = f"{p.code} *" if p.kind == "sptr" else p.code
    got = ffi.typeof(value).cname if isinstance(value, CData) else type(value).__name__
    raise TypeError(f"argument {n}: expected {_plain(want)}, got {_plain(got)}")


def _plain(text: str) -> str:
    from ._types import plain

    return plain(text)


def encode(cp: CallPlan, args: tuple[Any, ...]) -> bytes:
    """The request body for a call (TypeError/OverflowError on bad arguments)."""
    if len(args) != len(cp.params):
        raise TypeError(f"{cp.fname}() takes {len(cp.params)} arguments ({len(args)} given)")
    if cp.simple:
        try:
            return cp.req.pack(OP_CALL, cp.idx, *args)
        except struct.error as exc:
            raise OverflowError(str(exc)) from None
    if cp.fixed:
        return _encode_fixed(cp, args)
    scalars: list[Any] = []
    tail: list[bytes] = []
    for n, (p, a) in enumerate(zip(cp.params, args, strict=True), 1):
        kind = p.kind
        if kind in ("scalar", "len"):
            scalars.append(a)
        elif kind == "str":
            if isinstance(a, CData):  # a plugin's string, passed on to a host service
                a = None if a == signatures.ffi.NULL else signatures.ffi.string(a)
            if a is None:
                tail.append(FRAME.pack(NULL_LEN))
            else:
                if isinstance(a, str):
                    a = a.encode()
                if not isinstance(a, (bytes, bytearray)) or b"\0" in a:
                    raise TypeError(f"argument {n}: expected bytes without NUL for a C string")
                tail += [FRAME.pack(len(a)), bytes(a)]
        elif kind in ("struct", "sptr"):
            data = _struct_bytes(p, a, n)
            tail.append(FRAME.pack(NULL_LEN) if data is None else FRAME.pack(p.size) + data)
        else:
            count = args[n]  # the size_t that follows
            data = _as_bytes(a, p.code, cp.fname, n, count)
            size = struct.calcsize(p.code)
            if not isinstance(count, int) or count < 0 or count * size > len(data):
                raise TypeError(
                    f"argument {n + 1}: length {count!r} is more than the {len(data) // size} "
                    f"element(s) in the buffer given as argument {n}"
                )
            tail += [FRAME.pack(len(data)), data]
    try:
        head = cp.req.pack(OP_CALL, cp.idx, *scalars)
    except struct.error as exc:
        raise OverflowError(str(exc)) from None
    return head + b"".join(tail)


def _encode_fixed(cp: CallPlan, args: tuple[Any, ...]) -> bytes:
    values: list[Any] = [OP_CALL, cp.idx]
    for n, (p, a) in enumerate(zip(cp.params, args, strict=True), 1):
        if p.kind == "scalar":
            values.append(a)
        elif p.kind == "struct":
            values.append(_struct_bytes(p, a, n))
        else:
            data = _struct_bytes(p, a, n)
            values += (False, b"") if data is None else (True, data)
    try:
        return cp.req.pack(*values)
    except struct.error as exc:
        raise OverflowError(str(exc)) from None


def _copy_back(target: Any, data: bytes, p: Param) -> None:
    if isinstance(target, CData):  # a struct the caller passed, or a plugin's buffer
        if target != signatures.ffi.NULL:
            signatures.ffi.memmove(target, data, len(data))
        return
    if p.kind == "sptr":
        return  # built from an initializer: a temporary, as in process
    code = p.code
    if isinstance(target, list):
        target[:] = list(struct.unpack(f"<{len(data) // struct.calcsize(code)}{code}", data))
        return
    try:
        view = memoryview(target).cast("B")
    except TypeError:
        return
    if not view.readonly and len(view) == len(data):
        view[:] = data


class _Garbage(Exception):
    """The worker's answer does not follow the protocol."""


def _struct_from(cp: CallPlan, data: bytes | None) -> Any:
    if data is None or len(data) != cp.rsize:
        raise _Garbage(f"a struct result of {len(data or b'')} bytes, expected {cp.rsize}")
    ffi = signatures.ffi
    out = ffi.new(f"{cp.rtype} *")
    ffi.memmove(out, data, cp.rsize)
    return out[0]  # a struct value (it keeps its memory alive), as cffi returns one


def decode(cp: CallPlan, body: bytes, args: tuple[Any, ...]) -> Any:
    """The call's result from a reply body; copies non-const buffers back."""
    if len(body) < 1:
        raise _Garbage("an empty reply")
    if body[0] == ST_ERROR:
        raise _worker_error(body)
    if body[0] != ST_OK:
        raise _Garbage(f"status byte {body[0]}")
    if cp.simple:
        if len(body) != cp.rep.size:
            raise _Garbage(f"a reply of {len(body)} bytes, expected {cp.rep.size}")
        out = cp.rep.unpack(body)
        return out[1] if len(out) > 1 else None
    if cp.fixed:
        return _decode_fixed(cp, body, args)
    pos = cp.rep.size
    if len(body) < pos:
        raise _Garbage("a short reply")
    out = cp.rep.unpack_from(body)
    result = out[1] if len(out) > 1 else None
    chunks, pos = _chunks(body, pos)
    if cp.result in ("s", "T"):
        if not chunks:
            raise _Garbage("no result")
        result = chunks.pop(0)
        if cp.result == "T":
            result = _struct_from(cp, result)
    outs = cp.outs
    if len(chunks) != len(outs):
        raise _Garbage(f"{len(chunks)} buffers back, expected {len(outs)}")
    for i, data in zip(outs, chunks, strict=True):
        if data is not None:
            p = cp.params[i]
            if p.kind == "sptr" and len(data) != p.size:
                raise _Garbage(f"a struct of {len(data)} bytes back, expected {p.size}")
            _copy_back(args[i], data, p)
    return result


# ---- the callee's side of a call ----------------------------------------------------
_CTYPES = {
    "b": "int8_t",
    "B": "uint8_t",
    "h": "int16_t",
    "H": "uint16_t",
    "i": "int32_t",
    "I": "uint32_t",
    "q": "int64_t",
    "Q": "uint64_t",
    "f": "float",
    "d": "double",
    "?": "_Bool",
    "c": "char",
}


def _serve_fixed(cp: CallPlan, fn: Callable[..., Any], values: tuple[Any, ...]) -> bytes:
    ffi = signatures.ffi
    args: list[Any] = []
    outs: list[Any] = []
    pos = 2
    for p in cp.params:
        if p.kind == "scalar":
            args.append(values[pos])
            pos += 1
            continue
        if p.kind == "sptr" and not values[pos]:
            args.append(ffi.NULL)
            pos += 2
            if not p.const:
                outs += (False, b"")
            continue
        pos += p.kind == "sptr"
        mem = bytearray(values[pos])
        pos += 1
        ptr = ffi.from_buffer(p.ptr, mem)  # the struct lives in ``mem`` (kept by ``ptr``)
        args.append(ptr if p.kind == "sptr" else ptr[0])
        if not p.const:
            outs += (True, mem)
    result = fn(*args)
    head: list[Any] = [ST_OK]
    if cp.result == "T":
        head.append(ffi.buffer(ffi.addressof(result), cp.rsize)[:])
    elif cp.result:
        head.append(result)
    return bytes(cp.rep.pack(*head, *outs))


def serve(cp: CallPlan, fn: Callable[..., Any], body: bytes) -> bytes:
    """Run ``fn`` with the arguments of a request body (as C values: strings
    and buffers as cffi pointers, structs as cffi structs) and return the
    reply body.  A body that breaks the protocol raises ``_Garbage``, ``fn``'s
    own exceptions propagate.  The worker serves calls with it, the host
    serves an isolated plugin's service calls."""
    ffi = signatures.ffi
    try:
        if cp.simple:
            result = fn(*cp.req.unpack(body)[2:])
            return bytes(cp.rep.pack(ST_OK, result)) if cp.result else b"\x00"
        if cp.fixed:
            return _serve_fixed(cp, fn, cp.req.unpack(body))
        scalars = list(cp.req.unpack_from(body)[2:])
    except struct.error as exc:
        raise _Garbage(f"a request that does not unpack ({exc})") from None
    chunks, _ = _chunks(body, cp.req.size)
    need = sum(p.kind not in ("scalar", "len") for p in cp.params)
    if len(chunks) != need:
        raise _Garbage(f"{len(chunks)} buffers in a request, expected {need}")
    args: list[Any] = []
    outs: list[tuple[Any, int]] = []
    for p in cp.params:
        if p.kind in ("scalar", "len"):
            args.append(scalars.pop(0))
            continue
        data = chunks.pop(0)
        if p.kind == "str":
            args.append(ffi.NULL if data is None else ffi.new("char[]", data))
        elif p.kind in ("struct", "sptr"):
            if data is None:
                if p.kind == "struct":
                    raise _Garbage("a NULL struct by value")
                args.append(ffi.NULL)
                if not p.const:
                    outs.append((None, 0))
                continue
            if len(data) != p.size:
                raise _Garbage(f"a struct of {len(data)} bytes, expected {p.size}")
            mem = bytearray(data)
            ptr = ffi.from_buffer(p.ptr, mem)  # the struct lives in ``mem`` (kept by ``ptr``)
            args.append(ptr[0] if p.kind == "struct" else ptr)
            if not p.const:
                outs.append((mem, p.size))
        else:
            data = data or b""
            buf = ffi.new("char[]", data if data else b"\0")
            args.append(ffi.cast(f"{_CTYPES[p.code]} *", buf))
            if not p.const:
                outs.append((buf, len(data)))
    result = fn(*args)
    out: bytes
    if cp.result == "s":
        text = None if result == ffi.NULL else ffi.string(result)
        out = b"\x00" + (FRAME.pack(NULL_LEN) if text is None else FRAME.pack(len(text)) + text)
    elif cp.result == "T":
        out = b"\x00" + FRAME.pack(cp.rsize) + ffi.buffer(ffi.addressof(result), cp.rsize)[:]
    elif cp.result:
        out = bytes(cp.rep.pack(ST_OK, result))
    else:
        out = b"\x00"
    for buf, n in outs:
        if buf is None:
            out += FRAME.pack(NULL_LEN)
        else:
            out += FRAME.pack(n) + (
                bytes(buf) if isinstance(buf, bytearray) else ffi.buffer(buf, n)[:]
            )
    return out


def _decode_fixed(cp: CallPlan, body: bytes, args: tuple[Any, ...]) -> Any:
    if len(body) != cp.rep.size:
        raise _Garbage(f"a reply of {len(body)} bytes, expected {cp.rep.size}")
    out = cp.rep.unpack(body)
    pos = 1
    result = None
    if cp.result:
        result = out[1]
        pos = 2
        if cp.result == "T":
            result = _struct_from(cp, result)
    for i in cp.outs:
        if out[pos]:
            _copy_back(args[i], out[pos + 1], cp.params[i])
        pos += 2
    return result


def _chunks(body: bytes, pos: int) -> tuple[list[bytes | None], int]:
    out: list[bytes | None] = []
    while pos < len(body):
        if pos + 4 > len(body):
            raise _Garbage("a truncated length")
        (n,) = FRAME.unpack_from(body, pos)
        pos += 4
        if n == NULL_LEN:
            out.append(None)
            continue
        if pos + n > len(body):
            raise _Garbage("a truncated buffer")
        out.append(body[pos : pos + n])
        pos += n
    return out, pos


class _WorkerError(Exception):
    pass


def _worker_error(body: bytes) -> Exception:
    try:
        msg = json.loads(body[1:].decode())
        text, kind = str(msg["error"]), str(msg.get("type", ""))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return _Garbage("an unreadable error reply")
    if kind == "TypeError":
        return TypeError(text)
    if kind in ("HookError", "LoadError", "SignatureError", "DescriptorError"):
        from . import _errors

        cls = getattr(_errors, kind)
        return cls(text)  # type: ignore[no-any-return]
    return _WorkerError(text)


# ---- one worker process ------------------------------------------------------------
UP, RESTARTING, STOPPED = "running", "restarting", "stopped"


@dataclass
class Options:
    """What ``load(isolate=True, ...)`` asked for; kept by reload and rollback."""

    on_crash: str = "restart"
    call_timeout: float | None = None
    max_restarts: int = 5
    restart_window: float = 60.0
    limits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_crash not in ON_CRASH:
            raise ValueError(
                f"on_crash must be one of {', '.join(ON_CRASH)}, not {self.on_crash!r}"
            )


class Worker:
    """A running worker process and its end of the channel."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        sock: socket.socket,
        shm: tuple[mmap.mmap, int, int] | None = None,
        svc: socket.socket | None = None,
    ) -> None:
        self.popen = popen
        self.sock = sock
        self.svc = svc  # the service channel: the plugin's calls of host services
        self.svc_lock = threading.Lock()  # answers come from several host threads
        self.svc_thread: threading.Thread | None = None
        self.svc_garbage = ""  # why the host killed it for its service requests
        self._reap_lock = threading.Lock()
        self._reaped = False
        self.pid = popen.pid
        self._timeout: float | None = None
        self.mm: mmap.mmap | None = None
        self.seq = 0
        if shm is not None:
            import select  # POSIX only; importing hotload must not need it

            self.mm, self.wake, self.done = shm
            self.ctl = memoryview(self.mm).cast("B")[:SHM_REQ].cast("Q")
            self.poller = select.poll()
            self.poller.register(self.done, select.POLLIN)
            self.poller.register(sock, select.POLLIN)
            self.sock_poller = select.poll()
            self.sock_poller.register(sock, select.POLLIN)
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        self.kin: dict[int, int] = {}  # descendants seen (pid -> start time): see note_kin
        self._tree_ended = False
        self._drain = threading.Thread(
            target=self._read_stderr, daemon=True, name=f"hotload-isolate-stderr-{self.pid}"
        )
        self._drain.start()

    def _read_stderr(self) -> None:
        """The worker's stderr until EOF; this thread closes the pipe (closing
        it from another thread would wait for that EOF, which a forked child
        holding the pipe can put off for as long as it lives)."""
        pipe = self.popen.stderr
        assert pipe is not None
        try:
            for raw in pipe:
                self.stderr.append(raw.decode(errors="replace").rstrip())
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    def tail(self, lines: int = 6) -> str:
        self._drain.join(0.2)  # its last words, when it is dead
        return " | ".join(list(self.stderr)[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, body: bytes) -> None:
        self.sock.sendall(FRAME.pack(len(body)) + body)

    # -- the shared-memory path of a call --------------------------------------------
    def call_shm(self, cp: CallPlan, args: tuple[Any, ...], timeout: float | None) -> Any:
        """One call through shared memory; ``NotImplemented`` if its body does
        not fit (the caller sends it on the socket).  Raises as ``recv``."""
        mm = self.mm
        assert mm is not None
        if cp.simple:
            if len(args) != len(cp.params):
                encode(cp, args)  # raises the TypeError
            try:
                cp.req.pack_into(mm, SHM_REQ, OP_CALL, cp.idx, *args)
            except struct.error as exc:
                raise OverflowError(str(exc)) from None
            n = cp.req.size
        else:
            body = encode(cp, args)
            n = len(body)
            if n > SHM_CAP:
                return NotImplemented
            mm[SHM_REQ : SHM_REQ + n] = body
        ctl = self.ctl
        self.seq = seq = self.seq + 1
        ctl[REQ_LEN] = n
        ctl[REQ_SEQ] = seq  # after the body: x86 keeps stores in order
        os.eventfd_write(self.wake, 1)
        reply = self._await(seq, timeout)
        if reply is None:
            size = ctl[REP_LEN]
            if size == cp.rep.size and cp.simple and mm[SHM_REP] == ST_OK:
                out = cp.rep.unpack_from(mm, SHM_REP)
                self._no_strays()
                return out[1] if len(out) > 1 else None
            if size > SHM_CAP:
                raise _Garbage(f"a reply of {size} bytes in shared memory")
            reply = mm[SHM_REP : SHM_REP + size]
            self._no_strays()
        return decode(cp, reply, args)

    def _await(self, seq: int, timeout: float | None) -> bytes | None:
        """Wait for the reply to request ``seq``: None when it is in shared
        memory, the body when it came on the socket (too large)."""
        ctl = self.ctl
        clock = time.perf_counter_ns
        end = clock() + HOST_SPIN_NS
        while ctl[REP_SEQ] != seq:
            if clock() > end:
                break
            yield_cpu()  # the worker may be waiting for this very core
        else:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            drain(self.done)
            if ctl[REP_SEQ] == seq:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError
            events = self.poller.poll(None if left is None else max(1, int(left * 1000)))
            if any(fd != self.done for fd, _ in events):
                if ctl[REP_SEQ] == seq:
                    return None  # replied, then died or wrote garbage: _no_strays decides
                return self.recv(left)  # a large reply, EOF or garbage

    def _no_strays(self) -> None:
        """Bytes on the socket during a shared-memory call are garbage (the
        plugin wrote to a descriptor it does not own); EOF is fine here, the
        supervisor reports a death after the reply."""
        if self.sock_poller.poll(0):
            try:
                stray = self.sock.recv(64, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            except OSError:
                return
            if stray:
                raise _Garbage(f"{len(stray)}+ stray bytes on the socket during the call")

    def recv(self, timeout: float | None) -> bytes:
        """One reply body; EOFError when the worker is gone, TimeoutError at
        the deadline, _Garbage for a frame that breaks the protocol."""
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout
        buf = self._exactly(4, b"")  # usually the whole reply in one recv
        (n,) = FRAME.unpack_from(buf)
        if n > MAX_FRAME:
            raise _Garbage(f"a frame of {n} bytes")
        if len(buf) > 4 + n:
            raise _Garbage(f"{len(buf) - 4 - n} bytes after a reply")
        return self._exactly(4 + n, buf)[4:]

    def _exactly(self, n: int, buf: bytes) -> bytes:
        while len(buf) < n:
            try:
                chunk = self.sock.recv(max(n - len(buf), 4096) if n == 4 else n - len(buf))
            except TimeoutError:
                raise TimeoutError from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def note_kin(self) -> None:
        """Remember the worker's descendants (the supervisor's tick): a child
        that left its process group (a daemon) is re-parented away when the
        worker dies, and is then found only by this memory."""
        found = channel.descendants(self.pid)
        self.kin = found if self.alive() else {**self.kin, **found}

    def wake_caller(self) -> None:
        """The worker is dead but a forked child keeps the channel open, so
        the call waiting on it would see no EOF: end the tree and shut the
        host's end (the caller wakes up with EOF and reports the crash)."""
        self._end_tree()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def kill(self) -> None:
        """SIGKILL the worker and everything it forked (also a stopped one)."""
        if self.popen.returncode is None:  # not reaped: its tree is still there to walk
            channel.kill_tree(self.pid, self.kin, walk=True)
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
        self.reap(5.0)

    def _end_tree(self) -> None:
        if not self._tree_ended:
            self._tree_ended = True
            channel.kill_tree(self.pid, self.kin, walk=False)

    def reap(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        with self._reap_lock:  # the caller, the supervisor and the service thread may all reap
            if not self._reaped:
                self._reaped = True
                self._end_tree()  # children left in its group, and daemons seen before
                self._release()
        return True

    def _release(self) -> None:
        # not stderr: its reader thread closes it at EOF (closing it here would
        # wait for that read, i.e. for every forked child still holding the pipe)
        for f in (self.sock, self.svc):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
                with contextlib.suppress(OSError):
                    f.close()
        if self.mm is not None:
            for fd in (self.wake, self.done):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.wake = self.done = -1
            self.ctl.release()  # a call still spinning on it gets ValueError: a crash
            with contextlib.suppress(BufferError):
                self.mm.close()  # the mapping holds a dup of the memfd

    # -- the service channel (the plugin calls the host) -------------------------------
    def svc_frame(self) -> bytes:
        """The next service request; EOFError when the worker is gone,
        _Garbage for a length no request may have."""
        assert self.svc is not None
        (n,) = FRAME.unpack(_recv_exactly(self.svc, 4))
        if n < SVC_HEAD.size or n > MAX_FRAME:
            raise _Garbage(f"a service request of {n} bytes")
        return _recv_exactly(self.svc, n)

    def svc_send(self, body: bytes) -> None:
        assert self.svc is not None
        with self.svc_lock:
            self.svc.sendall(FRAME.pack(len(body)) + body)

    def how_it_ended(self) -> tuple[str | None, int | None]:
        code = self.popen.returncode
        if code is None:
            return None, None
        return channel.exit_signal(code), code

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


class Isolation:
    """The host's isolated workers: spawning (from one long-lived thread, for
    the parent-death signal), a warm spare, and a supervisor thread that
    notices dead or stopped workers and runs the crash policy."""

    def __init__(self, on_rollback: Callable[[str], object]) -> None:
        self._on_rollback = on_rollback
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="hotload-isolate-spawn")
        # service calls from the plugins' own threads (a call made while a host call is in
        # the worker is answered on the channel's thread: nothing can be waiting for it)
        self.services = ThreadPoolExecutor(4, thread_name_prefix="hotload-isolate-svc")
        self._lock = threading.Lock()
        self._spare: Worker | None = None
        self._proxies: list[Proxy] = []
        self._exiting: list[Proxy] = []  # stopped, their workers not reaped yet
        self.exit_faults = 0  # workers that crashed or hung at exit, after their stop
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._wake = threading.Event()
        self._closed = False
        self.shm = shm_supported()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="hotload-isolate")
        self._thread.start()

    # -- workers --------------------------------------------------------------
    def warm(self, timeout: float = 10.0) -> bool:
        """Wait until a spare worker is ready (True), e.g. before timing a reload."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._spare is not None:
                    return True
            time.sleep(0.005)
        return False

    def take(self) -> Worker:
        """A ready worker: the warm spare if it is alive, else a new one;
        a new spare is started in the background either way."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and not spare.alive():
            spare.kill()
            spare = None
        worker = spare or self._spawner.submit(self._spawn).result()
        if not self._closed:
            self._spawner.submit(self._refill)
        return worker

    def _refill(self) -> None:
        with self._lock:
            if self._spare is not None or self._closed:
                return
        try:
            w = self._spawn()
        except HotloadError as exc:
            log.warning("could not start a spare isolated worker: %s", exc)
            return
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare, w = w, None  # type: ignore[assignment]
        if w is not None:
            w.kill()

    @staticmethod
    def _spawn() -> Worker:
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        svc_host, svc_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k in ENV_KEEP or k.startswith("LC_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        argv = [
            sys.executable,
            "-s",
            "-m",
            "hotload._isolated_worker",
            "--parent",
            str(os.getpid()),
            "--fd",
            str(worker_end.fileno()),
            "--svc",
            str(svc_worker.fileno()),
        ]
        fds = [worker_end.fileno(), svc_worker.fileno()]
        shm: tuple[mmap.mmap, int, int] | None = None
        memfd = -1
        try:
            if shm_supported():
                memfd = os.memfd_create("hotload-isolate", os.MFD_CLOEXEC)
                os.ftruncate(memfd, SHM_SIZE)
                flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
                shm = (mmap.mmap(memfd, SHM_SIZE), os.eventfd(0, flags), os.eventfd(0, flags))
                fds += [memfd, shm[1], shm[2]]
                argv += ["--shm", f"{memfd},{shm[1]},{shm[2]}"]
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                pass_fds=fds,
                **channel.spawn_options(),
            )
        except OSError as exc:
            host_end.close()
            svc_host.close()
            if shm is not None:
                shm[0].close()
                os.close(shm[1])
                os.close(shm[2])
            raise HotloadError(f"cannot start an isolated worker: {exc}") from None
        finally:
            worker_end.close()
            svc_worker.close()
            if memfd >= 0:
                os.close(memfd)  # the mapping stays; the plugin cannot write() into it
        worker = Worker(popen, host_end, shm, svc_host)
        try:
            hello = worker.recv(30.0)
        except (EOFError, TimeoutError, _Garbage):
            worker.kill()
            tail = worker.tail() or "no output"
            raise HotloadError(
                f"isolated worker (pid {worker.pid}) failed to start: {tail}"
            ) from None
        if hello != b"\x00ready":
            worker.kill()
            raise HotloadError(f"isolated worker (pid {worker.pid}) said {hello[:40]!r}")
        return worker

    # -- opening a version --------------------------------------------------------
    def open(
        self,
        staged: Staged,
        opts: Options,
        hook_timeout: float | None,
        services: ServiceTable | None = None,
    ) -> IsolatedImage:
        cand = staged.cand
        desc = cand.descriptor
        try:  # refuses before anything starts
            cps = plans(cand.prototypes, where=cand.source)
            binding, svc_cps, imports = _services(staged, services)
        except BaseException:
            staged.discard()
            raise
        proxy = Proxy(self, cand.name, staged.seq, cand.source, cps, opts, hook_timeout)
        proxy.binding, proxy.svc_plans = binding, svc_cps
        proxy.request = {
            "op": "open",
            "name": cand.name,
            "path": str(staged.copy),
            "source": cand.source,
            "prototypes": cand.prototypes,
            "on_load": desc.on_load if desc else None,
            "on_unload": desc.on_unload if desc else None,
            "limits": opts.limits,
            "types": [dataclasses.asdict(t) for t in desc.types] if desc and cand.types else None,
            "imports": imports,
        }
        try:
            proxy.start(self.take())
        except BaseException:
            staged.discard()
            raise
        with self._lock:
            self._proxies.append(proxy)
        image = IsolatedImage(
            source=cand.source,
            copy=staged.copy,
            file_id=staged.file_id,
            digest=cand.digest,
            size=cand.size,
            descriptor=desc,
            name=cand.name,
            version=cand.version,
            handle=0,
            functions={f: proxy.forwarder(cp) for f, cp in cps.items()},
            prototypes=cand.prototypes,
            on_load=None,
            on_unload=(lambda *a: 0) if desc and desc.on_unload else None,
            process=proxy,
            imports=binding,
            types=cand.types,
        )
        image.on_load = (lambda *a: 0) if desc and desc.on_load else None
        return image

    def forget(self, proxy: Proxy, *, exiting: bool = False) -> None:
        """``proxy`` no longer serves; ``exiting``: its worker was asked to
        exit and ``close()`` must see it gone."""
        with self._lock:
            if proxy in self._proxies:
                self._proxies.remove(proxy)
            if exiting:
                self._exiting.append(proxy)
            elif proxy in self._exiting:
                self._exiting.remove(proxy)

    def later(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)
        self._wake.set()

    def rollback(self, name: str) -> None:
        self.later(lambda: self._run_rollback(name))

    def _run_rollback(self, name: str) -> None:
        try:
            self._on_rollback(name)
        except HotloadError as exc:
            log.error("%s: rollback after a crash failed: %s", name, exc)

    # -- the supervisor -------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(0.25)
            self._wake.clear()
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    job()
                except Exception:  # the supervisor must go on
                    log.exception("isolated worker job failed")
            with self._lock:
                proxies = list(self._proxies)
            for p in proxies:
                p.check()

    def close(self) -> None:
        """Stop every worker (a hung one is killed)."""
        self._closed = True
        self._wake.set()
        self._thread.join(2.0)
        with self._lock:
            proxies, self._proxies = self._proxies, []
            spare, self._spare = self._spare, None
        for p in proxies:
            p.stop(kill=True)
        if spare is not None:
            spare.kill()
        with self._lock:
            exiting = list(self._exiting)
        for p in exiting:
            p.gone()  # reaps it, or kills it after 2 s
        self._spawner.shutdown(wait=True)
        self.services.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()


def _services(
    staged: Staged, table: ServiceTable | None
) -> tuple[ImportBinding | None, list[CallPlan], dict[str, list[Any]] | None]:
    """A version's imports: the binding its service errors count on, how each
    service's calls cross (refused here if one cannot), and what the worker
    needs to bind them (name -> [prototype, error value])."""
    cand = staged.cand
    desc = cand.descriptor
    if desc is None or not desc.imports:
        return None, [], None
    if table is None:
        raise SignatureError(f"{cand.source}: imports host services, but none are available here")
    plain_sigs = {i.name: i.signature for i in desc.imports}
    wanted = table.check(plain_sigs, cand.source)
    sigs = {n: cand.types.rewrite(p) if cand.types else p for n, p in plain_sigs.items()}
    cps = sorted(plans(sigs, where=cand.source, service=True).values(), key=lambda c: c.idx)
    errors = {n: table.services[n].error for n in sigs}
    binding = ImportBinding(table, f"{cand.name} v{staged.seq}", wanted)
    return binding, cps, {n: [sigs[n], errors[n]] for n in sigs}


class Proxy:
    """One isolated version's worker, as the host sees it: calls, hooks,
    crash handling and restarts.  Replaces the worker on a restart; the
    version (and its forwarders) stay the same."""

    def __init__(
        self,
        iso: Isolation,
        name: str,
        seq: int,
        source: str,
        cps: dict[str, CallPlan],
        opts: Options,
        hook_timeout: float | None,
    ) -> None:
        self.iso, self.name, self.seq, self.source = iso, name, seq, source
        self.cps, self.opts, self.hook_timeout = cps, opts, hook_timeout
        self.request: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.worker: Worker | None = None
        self.state = UP
        self.gen = 0
        self.restarts = 0
        self.crashes: list[float] = []
        self.last_error: PluginCrashedError | None = None
        self.ready = threading.Event()
        self.ready.set()
        self.retiring = False
        self.prev_version: str | None = None
        self.snapshot: bytes | None = None  # the state the version started with, or its latest
        self.started_with_state = False
        self.call_started = 0.0  # monotonic time of the call in the worker now (0: idle)
        self.has_on_load = False
        self._exiting: Worker | None = None  # asked to stop, not reaped yet
        self._gone_lock = threading.Lock()
        self.exit_fault = ""  # a crash or hang of its worker at exit, after its stop
        self.streak = 0  # crashes in a row with no successful call between them
        self.served_ok = True  # a call succeeded since the last (re)start: resets the backoff
        self.live = False  # serving: a crash before this point is a refused load, no policy
        self.binding: ImportBinding | None = None  # its imports (errors are counted there)
        self.svc_plans: list[CallPlan] = []  # how each imported service's calls cross
        self.nested: int | None = None  # the thread serving a service its worker's call waits for

    @property
    def pid(self) -> int | None:
        w = self.worker
        return w.pid if w is not None and self.state == UP else None

    def rss(self) -> int:
        w = self.worker
        return w.rss() if w is not None and self.state == UP else 0

    # -- start --------------------------------------------------------------------
    def start(self, worker: Worker) -> None:
        """Have ``worker`` open the copy (dlopen, resolve); the caller's thread."""
        with self.lock:
            self.worker = worker
            self._listen(worker)
            self._control(self.request, 30.0, "opening the copy (dlopen, resolving exports)")
            self.live = not self.request.get("on_load")

    def _control(self, req: dict[str, Any], timeout: float | None, what: str) -> Any:
        """A JSON request to the worker; the lock is held."""
        body = bytes([OP_CONTROL]) + json.dumps(req).encode()
        reply = self._exchange(body, timeout, what)
        if reply[:1] == bytes([ST_ERROR]):
            raise _worker_error(reply)
        if reply[:1] != bytes([ST_OK]):
            self._crashed(self._w(), what, garbage="a bad control reply")
        try:
            return json.loads(reply[1:].decode()) if len(reply) > 1 else None
        except (ValueError, UnicodeDecodeError):
            self._crashed(self._w(), what, garbage="an unreadable control reply")

    def _w(self) -> Worker:
        if self.worker is None:
            raise self._dead_error()
        return self.worker

    def _exchange(self, body: bytes, timeout: float | None, what: str) -> bytes:
        worker = self.worker
        if worker is None:
            raise self._dead_error()
        self.call_started = time.monotonic()
        try:
            worker.send(body)
            return worker.recv(timeout)
        except TimeoutError:
            self._crashed(worker, what, timeout=timeout)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._crashed(worker, what)
        except _Garbage as exc:
            self._crashed(worker, what, garbage=str(exc))
        finally:
            self.call_started = 0.0
        raise AssertionError("unreachable")

    # -- calls ----------------------------------------------------------------------
    def forwarder(self, cp: CallPlan) -> Callable[..., Any]:
        call = self.call

        def forward(*args: Any) -> Any:
            return call(cp, args)

        forward.__name__ = cp.fname
        return forward

    def call(self, cp: CallPlan, args: tuple[Any, ...]) -> Any:
        if self.nested is not None and self.nested == threading.get_ident():
            raise HotloadError(
                f"{self.source}: {cp.fname} called from a host service that {self.name} "
                f"v{self.seq} is waiting for: its worker serves one call at a time, so this "
                f"would deadlock (call it after the service returns, or from another thread)"
            )
        body = None if self.iso.shm else encode(cp, args)
        gen = self.gen
        while True:
            with self.lock:
                if self.gen != gen:  # the worker this call was queued for crashed
                    raise self._dead_error()
                if self.state == UP:
                    if body is None:
                        result = self._call_shm(cp, args)
                        if result is not NotImplemented:
                            self.served_ok = True
                            return result
                        body = encode(cp, args)
                    reply = self._exchange(body, self.opts.call_timeout, cp.fname)
                    try:
                        result = decode(cp, reply, args)
                        self.served_ok = True
                        return result
                    except _Garbage as exc:
                        self._crashed(self._w(), cp.fname, garbage=str(exc))
                    except _WorkerError as exc:
                        raise HotloadError(f"{self.source}: {cp.fname}: {exc}") from None
                if self.state == STOPPED:
                    raise self._dead_error()
            # restarting: wait for the new worker (bounded), then try once more
            if not self.ready.wait(30.0):
                raise self._dead_error()
            gen = self.gen

    def _call_shm(self, cp: CallPlan, args: tuple[Any, ...]) -> Any:
        """A call through the worker's shared memory (the lock is held)."""
        worker = self._w()
        if worker.mm is None:
            return NotImplemented
        self.call_started = time.monotonic()
        try:
            return worker.call_shm(cp, args, self.opts.call_timeout)
        except TimeoutError:
            self._crashed(worker, cp.fname, timeout=self.opts.call_timeout)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._crashed(worker, cp.fname)
        except ValueError:
            if worker.wake != -1:
                raise
            self._crashed(worker, cp.fname)  # reaped meanwhile: its mapping was released
        except _Garbage as exc:
            self._crashed(worker, cp.fname, garbage=str(exc))
        except _WorkerError as exc:
            raise HotloadError(f"{self.source}: {cp.fname}: {exc}") from None
        finally:
            self.call_started = 0.0
        raise AssertionError("unreachable")

    def _dead_error(self) -> PluginCrashedError:
        if self.last_error is not None:
            return self.last_error
        return PluginCrashedError(f"{self.source}: {self.name} v{self.seq}: its worker is stopped")

    # -- crashes ---------------------------------------------------------------------
    def _crashed(
        self,
        worker: Worker,
        what: str,
        *,
        timeout: float | None = None,
        garbage: str = "",
        outside: str = "",
    ) -> NoReturn:
        """The worker died, hung or broke the protocol during ``what``: kill
        it, raise the error here, and hand the rest to the crash policy.
        The lock is held (or was given up by ``stop``)."""
        garbage = garbage or worker.svc_garbage
        if garbage or timeout is not None or outside or not worker.reap(2.0):
            worker.kill()
        sig, code = worker.how_it_ended()
        tail = worker.tail()
        who = f"{self.source}: {self.name} v{self.seq} (isolated worker, pid {worker.pid})"
        more = f"; stderr: {tail}" if tail else ""
        err: PluginCrashedError
        knob = "hook_timeout" if what in ("on_load", "on_unload") else "call_timeout"
        if timeout is not None:
            err = PluginTimeoutError(
                f"{who}: {what} did not return within {timeout:g} s ({knob}); the "
                f"worker was killed" + more,
                signal_name=None,
                stderr=tail,
            )
        elif garbage:
            err = PluginCrashedError(
                f"{who}: wrote garbage to the channel during {what} ({garbage}); the worker "
                f"was killed" + more,
                stderr=tail,
            )
        elif outside:
            err = PluginCrashedError(f"{who}: {outside}" + more, signal_name="SIGSTOP", stderr=tail)
        elif sig is not None:
            err = PluginCrashedError(
                f"{who}: crashed with {sig} during {what}" + more, signal_name=sig, stderr=tail
            )
        else:
            err = PluginCrashedError(
                f"{who}: the worker exited with code {code} during {what}" + more,
                exit_code=code,
                stderr=tail,
            )
        if self.worker is not worker:  # stopped by the host meanwhile: no policy
            raise err
        log.error("%s", err)
        self.last_error = err
        self.gen += 1
        self.worker = None
        self._after_crash()
        raise err

    def _after_crash(self) -> None:
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < self.opts.restart_window] + [now]
        policy = self.opts.on_crash
        if self.retiring or self.state == STOPPED or not self.live:
            self.state = STOPPED
            return
        if policy == "restart" and len(self.crashes) > self.opts.max_restarts:
            log.error(
                "%s v%d: crash loop: %d crashes within %g s; stopped (reload or roll back)",
                self.name,
                self.seq,
                len(self.crashes),
                self.opts.restart_window,
            )
            self.state = STOPPED
            if self.last_error is not None:
                self.last_error = PluginCrashedError(
                    f"{self.last_error}; crash loop: {len(self.crashes)} crashes within "
                    f"{self.opts.restart_window:g} s, restarts stopped (reload or roll back)",
                    signal_name=self.last_error.signal_name,
                    stderr=self.last_error.stderr,
                )
            return
        if policy == "restart":
            self.state = RESTARTING
            self.ready.clear()
            self.streak = 0 if self.served_ok else self.streak + 1
            self.served_ok = False
            delay = min(0.05 * 2 ** (self.streak - 1), 2.0) if self.streak else 0.0
            self.iso.later(lambda: self._restart(delay))
            return
        self.state = STOPPED
        if policy == "rollback":
            self.iso.rollback(self.name)

    def _restart(self, delay: float) -> None:
        if delay:
            time.sleep(delay)
        try:
            worker = self.iso.take()
        except HotloadError as exc:
            log.error("%s v%d: restart failed: %s", self.name, self.seq, exc)
            with self.lock:
                self.state = STOPPED
            self.ready.set()
            return
        with self.lock:
            if self.state != RESTARTING:
                worker.kill()
                self.ready.set()
                return
            self.worker = worker
            self.state = UP
            self._listen(worker)
            try:
                self._control(self.request, 30.0, "opening the copy (restart)")
                if self.has_on_load:
                    self._on_load(self.prev_version, self.snapshot)
                self.restarts += 1
                log.warning(
                    "%s v%d restarted in a new worker (pid %d)%s",
                    self.name,
                    self.seq,
                    worker.pid,
                    " with its last state snapshot" if self.snapshot is not None else "",
                )
            except PluginCrashedError:
                pass  # _crashed ran the policy again (backoff, crash-loop limit)
            except HotloadError as exc:
                log.error("%s v%d: restart refused: %s", self.name, self.seq, exc)
                if self.worker is not None:
                    self.worker.kill()
                self.worker, self.state = None, STOPPED
        if self.state != RESTARTING:
            self.ready.set()

    def check(self) -> None:
        """Supervisor tick: a worker that died while idle, or one stopped by a
        signal while a call waits for it."""
        if self.state != UP or not self.lock.acquire(blocking=False):
            w = self.worker
            started = self.call_started
            if w is not None and started and not w.alive():
                w.wake_caller()  # died in a call, but a forked child may hold the channel
            elif (
                w is not None
                and started
                and time.monotonic() - started > 1.0
                and channel.stopped(w.pid)
            ):
                log.error(
                    "%s v%d: worker pid %d is stopped; killing it", self.name, self.seq, w.pid
                )
                w.kill()  # the waiting call sees EOF and reports the crash
            return
        try:
            w = self.worker
            if w is not None and self.state == UP and not w.alive():
                with contextlib.suppress(PluginCrashedError):
                    self._crashed(w, "no call (it died while idle)")
            elif w is not None and self.state == UP:
                w.note_kin()
        finally:
            self.lock.release()

    # -- host services, called by the plugin ---------------------------------------------
    def _listen(self, worker: Worker) -> None:
        """Serve ``worker``'s service requests (a thread per worker, when the
        version imports any service)."""
        if not self.svc_plans or worker.svc is None or worker.svc_thread is not None:
            return
        worker.svc_thread = threading.Thread(
            target=self._serve_services,
            args=(worker,),
            daemon=True,
            name=f"hotload-isolate-svc-{worker.pid}",
        )
        worker.svc_thread.start()

    def _serve_services(self, worker: Worker) -> None:
        """Read the worker's service requests until it ends.  A request made
        inside a host call is served right here (its caller holds the
        version's lock: nothing else can be waiting for this thread); one
        from a plugin thread goes to a pool thread, since it may have to
        wait for a call in flight, which may itself need a service."""
        while True:
            try:
                body = worker.svc_frame()
                rid, nested, idx = SVC_HEAD.unpack_from(body)
                if nested > 1 or idx >= len(self.svc_plans):
                    what = "a nested flag" if nested > 1 else "an unknown service index"
                    raise _Garbage(f"{what} ({nested}, {idx})")
            except (OSError, EOFError):
                return
            except _Garbage as exc:
                self._svc_garbage(worker, str(exc))
                return
            if nested:
                if not self._serve_one(worker, rid, self.svc_plans[idx], body, True):
                    return
                continue
            try:
                self.iso.services.submit(
                    self._serve_one, worker, rid, self.svc_plans[idx], body, False
                )
            except RuntimeError:  # the host is closing
                return

    def _serve_one(self, worker: Worker, rid: int, cp: CallPlan, body: bytes, nested: bool) -> bool:
        if nested:
            self.nested = threading.get_ident()  # a call into this version would deadlock
        try:
            reply = serve(cp, self._service(cp), body[SVC_ID.size :])
        except Exception as exc:  # noqa: BLE001 - the request broke the protocol
            self._svc_garbage(worker, f"{cp.fname}: {exc}")
            return False
        finally:
            if nested:
                self.nested = None
        try:
            worker.svc_send(SVC_ID.pack(rid) + reply)
        except OSError:
            return False
        return True

    def _service(self, cp: CallPlan) -> Callable[..., Any]:
        """The provided function behind ``cp``, looked up now (``provide()``
        replaces it for every version at once), with the in-process rules:
        an exception (or a result that does not fit) is logged, counted on
        this version, and the plugin gets the service's error value."""
        table, name = self.binding.table if self.binding else None, cp.fname

        def call(*args: Any) -> Any:
            svc = table.services.get(name) if table is not None else None
            try:
                if table is None or table.closed:
                    raise ClosedError(f"service {name} called after host.close()")
                if svc is None:
                    raise ServiceError(f"service {name} is not provided by this host")
                result = svc.call(*args)
                if cp.result == "T":
                    return signatures.ffi.new(f"{cp.rtype} *", result)[0]
                if cp.result:
                    struct.pack("<" + cp.result, result)  # raises if it does not fit, as cffi would
                    return result
                return None
            except Exception:
                if self.binding is not None:
                    self.binding.errors += 1
                label = self.binding.label if self.binding else self.name
                log.error("%s: service %s raised", label, name, exc_info=True)
                if not cp.result:
                    return None
                error = svc.error if svc is not None else 0
                return signatures.ffi.new(f"{cp.rtype} *")[0] if cp.result == "T" else error

        return call

    def _svc_garbage(self, worker: Worker, why: str) -> None:
        """A worker broke the service protocol: it is killed, and the call in
        flight (or the supervisor) reports it as a crash."""
        worker.svc_garbage = f"service channel: {why}"
        log.error(
            "%s: %s v%d (isolated worker, pid %d) wrote garbage to the service channel (%s); "
            "killing it",
            self.source,
            self.name,
            self.seq,
            worker.pid,
            why,
        )
        worker.kill()

    # -- hooks --------------------------------------------------------------------------
    def on_load(self, prev_version: str | None, state: bytes | None) -> None:
        with self.lock:
            self.has_on_load = True
            self._on_load(prev_version, state)
            self.prev_version, self.snapshot = prev_version, state
            self.live = True

    def _on_load(self, prev_version: str | None, state: bytes | None) -> None:
        self._control(
            {"op": "on_load", "prev": prev_version, "state": state.hex() if state else None},
            self.hook_timeout,
            "on_load",
        )

    def on_unload(self, max_size: int) -> bytes | None:
        """The version's state blob; from its last snapshot when its worker is
        gone (a rollback after a crash hands over what it had)."""
        with self.lock:
            if self.state != UP:  # crashed: hand over what it started with
                log.warning(
                    "%s v%d: its worker is stopped; handing over its last state snapshot "
                    "(%s), updates since are lost",
                    self.name,
                    self.seq,
                    f"{len(self.snapshot)} bytes" if self.snapshot is not None else "none",
                )
                return self.snapshot
            out = self._control(
                {"op": "on_unload", "max": max_size}, self.hook_timeout, "on_unload"
            )
            blob = bytes.fromhex(out) if isinstance(out, str) else None
            self.snapshot = blob
            return blob

    # -- stopping --------------------------------------------------------------------------
    def stop(self, *, kill: bool = False) -> None:
        """Stop the worker: ask it to exit; kill it if it does not at once (or
        if ``kill``, e.g. a hung call holds the lock)."""
        self.retiring = True
        got = self.lock.acquire(timeout=0 if kill else 1.0)
        try:
            worker, self.worker = self.worker, None
            self.state = STOPPED
            self.ready.set()
        finally:
            if got:
                self.lock.release()
        if worker is None:
            return
        for sock in (worker.sock, worker.svc):
            with contextlib.suppress(OSError, AttributeError):
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # EOF: it exits
        if kill:
            worker.kill()
        else:
            self._exiting = worker  # reaped by gone(), off the reload path
        self.iso.forget(self, exiting=not kill)

    def gone(self) -> bool:
        """Whether the worker has exited: waits a little for one that was
        asked to, and kills it if it does not (the reaper's thread).  A crash
        or a hang as it exits (a destructor, an atexit handler) is logged and
        noted on the version: the next version does not depend on it."""
        with self._gone_lock:
            w = self._exiting or self.worker
            if w is None:
                return True
            if w is not self._exiting:
                return not w.alive()
            who = f"{self.name} v{self.seq}: worker pid {w.pid}"
            if not w.reap(2.0):
                self.exit_fault = "killed at exit: did not exit within 2 s of its stop"
                log.warning(
                    "%s ignored the stop (a destructor or atexit handler hangs at exit?); "
                    "killed at exit after 2 s",
                    who,
                )
                w.kill()
            else:
                sig, code = w.how_it_ended()
                if sig is not None or code:
                    how = f"crashed with {sig}" if sig else f"exited with code {code}"
                    self.exit_fault = f"{how} at exit"
                    tail = w.tail()
                    log.error(
                        "%s %s at exit, after its stop (a destructor or atexit handler)%s",
                        who,
                        how,
                        f"; stderr: {tail}" if tail else "",
                    )
            if self.exit_fault:
                self.iso.exit_faults += 1
            self._exiting = None
            self.iso.forget(self)
            return True


@dataclass(eq=False)
class IsolatedImage(Image):
    """An image that lives in a worker process: its functions forward calls,
    its hooks run there, and closing it stops the worker."""

    def call_on_load(self, prev_version: str | None, state: bytes | None) -> None:
        if self.on_load is None:
            return
        proxy: Proxy = self.process
        proxy.on_load(prev_version, state)

    def call_on_unload(self, max_size: int = 64 << 20) -> bytes | None:
        if self.on_unload is None:
            return None
        proxy: Proxy = self.process
        return proxy.on_unload(max_size)


def stop_image(image: Image) -> None:
    """Close an isolated image: stop its worker."""
    proxy: Proxy = image.process
    proxy.stop()
