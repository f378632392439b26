"""How a call crosses the process boundary: the wire format shared by the
host (``proxy``, ``spawn``, ``service_channel``) and the worker (``serving``).

Each export (and each host service an isolated plugin imports) gets a
``CallPlan`` at load (``callplan``), which says how its arguments and result
travel, or a ``SignatureError`` naming the parameter that cannot.
``encode``/``decode`` are the caller's side, ``serve`` the callee's; both
sides run the same code, so the two ends cannot disagree on a layout.  The
arguments each parameter accepts are the in-process router's
(``_artifact.arguments``): one rule in both modes.

Frames are ``<I`` length, then a body.  A call's body is a struct of its
scalar arguments followed by length-prefixed bytes for strings and buffers
(or, for calls of numbers and plain structs, one fixed struct each way); the
answer is a status byte, the result, and the contents of every non-const
buffer or struct pointer (copied back into the caller's).  Replies are parsed
strictly: anything else is ``_Garbage`` and the worker is treated as crashed.
A control frame's body is a status or op byte, then JSON; a blob (the state
``on_unload`` hands over, or ``on_load`` receives) follows the JSON as raw
bytes, after its length (``pack_control``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import struct
from collections.abc import Callable
from typing import Any

from .._artifact import arguments, signatures
from .._artifact.loader import ON_LOAD_TYPE, ON_UNLOAD_TYPE, Image, Staged  # noqa: F401
from .callplan import CallPlan as CallPlan
from .callplan import Param as Param
from .callplan import plan as plan
from .callplan import plans as plans

# ---- the wire format (shared with the worker, ``serving``) ---------------------
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
#: The largest state blob an isolated version hands over or receives (Host(max_state_size)
#: above it applies in process only): it travels as raw bytes in one frame
MAX_STATE = 64 << 20
#: The largest call body either way (arguments and copied-back buffers, a ``char *`` result)
MAX_BODY = MAX_FRAME


class _BodyTooLarge(Exception):
    """A call's request or reply would not fit a frame (``MAX_BODY``)."""


def too_large(what: str, n: int) -> _BodyTooLarge:
    return _BodyTooLarge(
        f"{what} of {n:,} bytes is over the {MAX_BODY >> 20} MiB an isolated call may carry "
        f"each way (docs/guide/isolation.md, what crosses)"
    )


# ---- the shared-memory channel (Linux on x86: stores are seen in order) ------------
# One memfd page-set per worker, mapped by both sides.  Header in 8-byte slots:
# [0] request sequence, [1] request length, [2] the worker sleeps, [8] reply
# sequence, [9] reply length, [10] the host sleeps (a cache line apart); then the
# request area and the reply area.  A call writes its body, then the sequence
# (last), then wakes the worker's eventfd if the worker said it sleeps; the worker
# spins on the sequence before it says so and sleeps in poll() on that eventfd and
# the socket (control frames, EOF).  The reply comes back the same way.  Bodies
# larger than an area travel on the socket.  The protocol, and why no wake-up is
# lost, is at the top of ``_spin.c`` (the hot path in C); the Python ends below
# keep to it with the kernel as their fence (docs/guide/isolation.md).
SHM_CAP = 64 << 10
SHM_REQ = 128
SHM_REP = SHM_REQ + SHM_CAP
#: Lanes (issue 24 item 3): after lane 0 (the areas above), ``MAX_LANES - 1`` slot pairs of
#: ``LANE_SIZE`` bytes, each the same header words (its doorbells at [5] and [12]), then a
#: request and a reply area; each carries calls of numbers only, served in C by a worker
#: thread of its own, its sleepers on futexes (``_spin.c``).  Fixed: a spare maps them all
#: before it knows its plugin's ``Isolated(threads=...)``.
MAX_LANES = 16
LANE_SIZE = 1024
LANES_AT = SHM_REP + SHM_CAP
SHM_SIZE = LANES_AT + (MAX_LANES - 1) * LANE_SIZE
REQ_SEQ, REQ_LEN, WORKER_SLEEPS, REP_SEQ, REP_LEN, HOST_SLEEPS = 0, 1, 2, 8, 9, 10
#: [4]: the call's waiter answers a service request in place (the C end's calls; issue 24
#: item 2): the plugin's service calls made inside the call then travel in the mapping
SVC_OK = 4
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


def _spin_module() -> Any:
    """The channel's hot path in C (``_spin.c``), or None: not built (no
    compiler), not this platform, or ``HOTLOAD_PURE_PYTHON=1`` (the host's
    environment: a worker never sees it, so its end is C whenever built)."""
    if os.environ.get("HOTLOAD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _spin
    except ImportError:
        return None
    return _spin if hasattr(_spin, "Channel") else None


#: the C ends of the channel, or None (the Python ends)
cspin = _spin_module()
#: what the C end returns when the Python code takes a call over (never a result)
AGAIN: Any = cspin.AGAIN if cspin is not None else object()
WHY_SERVICE = getattr(cspin, "WHY_SERVICE", 6)  # the call's worker asks a service in place


def recv_exactly(sock: socket.socket, n: int, *, patient: bool = False) -> bytearray:
    """Exactly ``n`` bytes from ``sock``, received into one buffer allocated
    up front (``buf += chunk`` copies the body once per chunk: a 60 MiB reply
    took 4.1 s that way).  ``EOFError`` at the end of the stream (or a
    reset); ``TimeoutError`` at the socket's timeout, unless ``patient``
    (a reader that only waits for the next request: it waits on)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError:
            if patient:
                continue
            raise
        except ConnectionResetError:
            k = 0
        if not k:
            raise EOFError
        got += k
    return buf


def pack_control(lead: int, obj: Any, blob: bytes | None = None) -> bytes:
    """A control body: its lead byte (``OP_CONTROL``, or a reply's status),
    JSON, then ``blob`` as raw bytes after a newline (JSON as dumped here has
    none): a state blob costs its size, not twice that in hex."""
    head = bytes([lead]) + json.dumps(obj).encode()
    return head if blob is None else head + b"\n" + blob


def unpack_control(body: bytes) -> tuple[Any, bytes | None]:
    """The JSON and the blob of a control body (``pack_control``);
    ``ValueError`` (or ``UnicodeDecodeError``) when the JSON does not parse."""
    cut = body.find(b"\n", 1)
    if cut < 0:
        return (json.loads(body[1:].decode()) if len(body) > 1 else None), None
    return json.loads(body[1:cut].decode()), bytes(body[cut + 1 :])


def drain(efd: int) -> None:
    """Empty an eventfd (non-blocking) before sleeping on it."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(efd)


# ---- the caller's side of a call ----------------------------------------------------
CData = signatures.ffi.CData


def _as_bytes(value: Any, code: str, fname: str, n: int, count: Any) -> bytes:
    if isinstance(value, CData):
        ffi = signatures.ffi
        size = struct.calcsize(code) * (count if isinstance(count, int) and count > 0 else 0)
        if value == ffi.NULL or not size:
            return b""
        if ffi.typeof(value).kind == "array" and size > ffi.sizeof(value):
            # an array knows its extent: never read past it (a bare pointer, e.g. a plugin's
            # buffer passed on to a host service, does not: its length is trusted, as in C)
            return bytes(ffi.buffer(value))
        return bytes(ffi.buffer(value, size))
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
        if p.kind == "sptr" and t.kind == "array" and t.item is p.ctype:
            if ffi.sizeof(value) < p.size:
                raise TypeError(f"argument {n}: an empty array of {_plain(p.code)}")
            return bytes(ffi.buffer(value, p.size))
        if p.kind == "sptr" and t is p.ptr:
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
    from .._contract.structs import plain

    return plain(text)


def encode(cp: CallPlan, args: tuple[Any, ...]) -> bytes:
    """The request body for a call (TypeError/OverflowError on bad arguments)."""
    if len(args) != len(cp.params):
        raise TypeError(f"{cp.fname}() takes {len(cp.params)} arguments ({len(args)} given)")
    if cp.bools:
        check_bools(cp, args)
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
            if isinstance(a, CData):  # a cffi string, or a plugin's passed on to a service
                a = None if a == signatures.ffi.NULL else signatures.ffi.string(a)
            try:
                a = arguments.text(a, n)  # the rule in process too: str, bytearray, None...
            except ValueError as exc:  # a NUL: the caller's TypeError (encode's contract)
                raise TypeError(str(exc)) from None
            if a is None:
                tail.append(FRAME.pack(NULL_LEN))
            else:
                if not isinstance(a, bytes):
                    raise TypeError(f"argument {n}: expected a C string")
                tail += [FRAME.pack(len(a)), a]
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
            data = data[: count * size]  # exactly what the callee sees, and what comes back
            tail += [FRAME.pack(len(data)), data]
    try:
        head = cp.req.pack(OP_CALL, cp.idx, *scalars)
    except struct.error as exc:
        raise OverflowError(str(exc)) from None
    return head + b"".join(tail)


def check_bools(cp: CallPlan, args: tuple[Any, ...]) -> None:
    """``_Bool`` arguments by the rule: True, False, 0 or 1 (``struct``'s
    ``?`` would take any object's truth)."""
    for i in cp.bools:
        arguments.check_bool(args[i], i + 1)


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


def _sent(p: Param, value: Any, count: int) -> int:
    """How many bytes ``encode`` sent for a buffer argument: exactly what may
    come back (a reply claiming more would write past the caller's buffer)."""
    size = struct.calcsize(p.code)
    if isinstance(value, CData):
        return 0 if value == signatures.ffi.NULL else count * size  # checked by encode
    if isinstance(value, (list, tuple)):
        return min(len(value), count) * size
    return min(memoryview(value).nbytes, count * size)


def _copy_back(target: Any, data: bytes, p: Param) -> None:
    if isinstance(target, CData):  # a struct the caller passed, or a plugin's buffer
        ffi = signatures.ffi
        if ffi.typeof(target).kind == "struct":  # a struct value passed for S *: its memory
            ffi.memmove(ffi.addressof(target), data, len(data))
        elif target != ffi.NULL:
            ffi.memmove(target, data, len(data))
        return
    if p.kind == "sptr":
        return  # built from an initializer: a temporary, as in process
    code = p.code
    if isinstance(target, list):
        back = struct.unpack(f"<{len(data) // struct.calcsize(code)}{code}", data)
        target[: len(back)] = back
        return
    try:
        view = memoryview(target).cast("B")
    except TypeError:
        return
    if not view.readonly and len(data) <= len(view):
        view[: len(data)] = data


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
            if p.kind == "buf" and len(data) != _sent(p, args[i], args[i + 1]):
                raise _Garbage(f"a buffer of {len(data)} bytes back, expected what was sent")
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
            count = scalars[0]  # the size_t that follows it
            if len(data or b"") != count * struct.calcsize(p.code):
                raise _Garbage(f"a buffer of {len(data or b'')} bytes for {count} element(s)")
            data = data or b""
            buf = ffi.new("char[]", data if data else b"\0")
            args.append(ffi.cast(f"{_CTYPES[p.code]} *", buf))
            if not p.const:
                outs.append((buf, len(data)))
    result = fn(*args)
    out: bytes
    if cp.result == "s":
        text = None if result == ffi.NULL else ffi.string(result)
        if text is not None and len(text) + 5 > MAX_BODY:
            raise too_large(f"{cp.fname}: its char * result", len(text))
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
    if len(out) > MAX_BODY:
        raise too_large(f"{cp.fname}: its reply", len(out))
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
        from .. import _errors

        cls = getattr(_errors, kind)
        return cls(text)  # type: ignore[no-any-return]
    return _WorkerError(text)
