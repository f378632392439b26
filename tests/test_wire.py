"""The call wire format against a hostile peer: lengths that do not match the
bytes that came with them must never become reads or writes past a buffer.

Found by attacking the isolation layer: a worker could make the host read
past (or write into) a service's buffer, and a reply could overflow the
caller's buffer; both killed the host.  These drive the very functions both
sides run (``encode``/``decode`` on the caller, ``serve`` on the callee)."""

from __future__ import annotations

import struct
from array import array

import pytest

from hotload import Isolated
from hotload._artifact.signatures import ffi
from hotload._process import wire

SUM = wire.plan("sum", "int64_t(const int32_t *, size_t)", 0, where="t.so")
FILL = wire.plan("fill", "void(int32_t *, size_t, int32_t)", 1, where="t.so")


def _request(cp: wire.CallPlan, chunk: bytes, count: int, *extra: int) -> bytes:
    return cp.req.pack(wire.OP_CALL, cp.idx, count, *extra) + wire.FRAME.pack(len(chunk)) + chunk


def test_a_request_whose_length_exceeds_its_bytes_is_garbage() -> None:
    seen = []
    body = _request(SUM, struct.pack("<i", 5), 100_000)  # 4 bytes, "100000 elements"
    with pytest.raises(wire._Garbage, match="4 bytes for 100000"):
        wire.serve(SUM, lambda xs, n: seen.append(n) or 0, body)
    assert seen == []  # the service never ran
    ok = _request(SUM, struct.pack("<3i", 1, 2, 3), 3)
    assert wire.serve(SUM, lambda xs, n: sum(ffi.unpack(xs, n)), ok) == SUM.rep.pack(0, 6)


def test_a_reply_that_copies_back_more_than_was_sent_is_garbage() -> None:
    target = ffi.new("int32_t[4]")
    wire.encode(FILL, (target, 4, 7))
    forged = b"\x00" + wire.FRAME.pack(4096) + b"\xff" * 4096
    with pytest.raises(wire._Garbage, match="4096 bytes back"):
        wire.decode(FILL, forged, (target, 4, 7))
    assert list(target) == [0, 0, 0, 0]  # nothing written
    honest = b"\x00" + wire.FRAME.pack(16) + struct.pack("<4i", 7, 7, 7, 7)
    wire.decode(FILL, honest, (target, 4, 7))
    assert list(target) == [7, 7, 7, 7]


def test_only_the_counted_elements_travel_and_come_back() -> None:
    buf = array("i", [1, 2, 3, 4, 5])
    body = wire.encode(FILL, (buf, 2, 9))
    reply = wire.serve(
        FILL, lambda xs, n, v: [xs.__setitem__(i, v) for i in range(n)] and None, body
    )
    wire.decode(FILL, reply, (buf, 2, 9))
    assert list(buf) == [9, 9, 3, 4, 5]
    short = b"\x00" + wire.FRAME.pack(20) + b"\x00" * 20  # the whole buffer: more than was sent
    with pytest.raises(wire._Garbage):
        wire.decode(FILL, short, (buf, 2, 9))


def test_a_count_past_a_cdata_array_is_refused_before_anything_is_read() -> None:
    one = ffi.new("int32_t[1]", [5])
    with pytest.raises(TypeError, match="more than the 1 element"):
        wire.encode(SUM, (one, 100_000_000))
    assert wire.encode(SUM, (one, 1)).endswith(struct.pack("<i", 5))


def test_an_empty_struct_array_is_refused(cc) -> None:
    from hotload import Host

    src = """
#include <hotload.h>
HOTLOAD_PLUGIN("wire_sp", "1");
typedef struct { int64_t id; int32_t level; } wp_t;
HOTLOAD_STRUCT(wp_t);
HOTLOAD_FIELD(wp_t, id, int64_t);
HOTLOAD_FIELD(wp_t, level, int32_t);
HOTLOAD_API int32_t level_of(const wp_t *p) { return p->level; }
HOTLOAD_EXPORT(level_of, int32_t, (const wp_t *));
"""
    with Host(preflight=False) as host:
        p = host.load(cc(src, "wire_sp"), isolate=Isolated(call_timeout=10))
        cp = host.current("wire_sp")
        assert cp.isolated
        with pytest.raises(TypeError, match="empty array"):
            p.level_of(ffi.new(f"{ffi.typeof(p.new('wp_t', level=3)).item.cname}[0]"))
        assert p.level_of(p.new("wp_t", level=3)) == 3
