"""Run a migration plan on two buffers, with bulk copies only.

No loop runs per element in Python: a copy is one slice assignment, and an
integer array that widened (or narrows, checked) is one strided slice copy
per byte lane, its new high bytes filled from the sign lane through one
``bytes.translate``.  A 100 MB array is therefore a ``memcpy``, and 25 M
``int32_t`` widened to ``int64_t`` are eight strided copies.  Only the outer
repetitions of an array of structs whose layout changed loop in Python.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import StateMigrationError
from . import plan
from .plan import Plan, Step

_LITTLE = sys.byteorder == "little"
_FORMAT: dict[int, Any] = {1: "B", 2: "H", 4: "I", 8: "Q"}  # item size -> memoryview format
_SIGN = bytes(0xFF if b & 0x80 else 0 for b in range(256))  # a byte -> its sign-fill byte

Call = Callable[[Step, memoryview, memoryview], None]


def _native() -> Any:
    """The compiled loop (``_convert.c``), unless it was not built or
    ``HOTLOAD_PURE_PYTHON=1`` asks for the memoryview fallback."""
    if os.environ.get("HOTLOAD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _convert
    except ImportError:
        return None
    return _convert


#: The compiled integer loop, or None (strided memoryview copies).
NATIVE = _native()


def run(plan: Plan, src: memoryview, dst: memoryview, call: Call, native: Any = NATIVE) -> None:
    """Apply ``plan`` from ``src`` (the old layout) into ``dst`` (the new one).
    Bytes the plan does not write keep their value in ``dst``.  ``native``:
    the compiled loop for integers that change width (None: the fallback)."""
    if len(src) < plan.src_size or len(dst) < plan.dst_size:
        raise StateMigrationError(
            f"a state buffer is smaller than its type ({len(src)} < {plan.src_size} or "
            f"{len(dst)} < {plan.dst_size} bytes)"
        )
    for step in plan.steps:
        for s, d in bases(step):
            if step.kind == "call":
                call(step, src[s : s + step.swidth], dst[d : d + step.dwidth])
            elif native is not None and step.kind != "copy":
                _native_step(native, step, src, dst, s, d)
            else:
                _lanes(step, src, dst, s, d)


def bases(step: Step) -> Iterator[tuple[int, int]]:
    """The start of each innermost run, over the outer repetitions."""
    if not step.outer:
        yield step.src, step.dst
        return
    for idx in itertools.product(*(range(n) for n, _, _ in step.outer)):
        s = step.src + sum(i * ss for i, (_, ss, _) in zip(idx, step.outer, strict=True))
        d = step.dst + sum(i * ds for i, (_, _, ds) in zip(idx, step.outer, strict=True))
        yield s, d


def _lane(buf: memoryview, start: int, count: int, stride: int) -> memoryview:
    """Byte ``start`` of each of ``count`` elements ``stride`` bytes apart."""
    return buf[start : start + (count - 1) * stride + 1 : stride or 1]


def _unit(width: int, *strides: int) -> int:
    """The widest item (8, 4, 2 or 1 bytes) that divides ``width`` and every stride."""
    return next(k for k in (8, 4, 2, 1) if width % k == 0 and all(t % k == 0 for t in strides))


def _chunks(
    buf: memoryview, start: int, n: int, stride: int, width: int, k: int
) -> list[memoryview]:
    """Bytes [start, start + width) of each of ``n`` elements ``stride`` bytes
    apart, as strided views of ``k``-byte items: a strided copy moves whole
    items, so an int32_t moves as one item, not as four bytes."""
    if n == 1:
        return [buf[start : start + width]]
    out = []
    for j in range(0, width, k):
        view = buf[start + j : start + j + (n - 1) * stride + k]
        out.append(view.cast(_FORMAT[k])[:: stride // k] if k > 1 else view[::stride])
    return out


def elements(buf: memoryview, start: int, n: int, stride: int, width: int) -> list[memoryview]:
    """``width`` bytes of each of ``n`` elements ``stride`` bytes apart, as
    strided views (compare two lists view by view to compare the elements)."""
    return _chunks(buf, start, n, stride, width, _unit(width, stride))


def _move(step: Step, src: memoryview, s: int, dst: memoryview, d: int, width: int) -> None:
    """``width`` bytes of each element from ``src`` to ``dst``."""
    n, ss, ds = step.count, step.sstride, step.dstride
    if n == 1 or (ss == ds == width):
        dst[d : d + width * n] = src[s : s + width * n]
        return
    k = _unit(width, ss, ds)
    for to, frm in zip(
        _chunks(dst, d, n, ds, width, k), _chunks(src, s, n, ss, width, k), strict=True
    ):
        to[:] = frm


def _native_step(native: Any, step: Step, src: memoryview, dst: memoryview, s: int, d: int) -> None:
    n, sw, dw = step.count, step.swidth, step.dwidth
    bad = native.convert(
        dst,
        d,
        step.dstride,
        dw,
        step.dsigned,
        src,
        s,
        step.sstride,
        sw,
        step.ssigned,
        n,
        step.kind == "narrow",
    )
    if bad >= 0:
        at = s + bad * step.sstride
        _misfit(step, src, at, bad if n > 1 else None)


def _misfit(step: Step, src: memoryview, at: int, index: int | None) -> None:
    value = int.from_bytes(bytes(src[at : at + step.swidth]), sys.byteorder, signed=step.ssigned)
    where = plan.at(step.path, index) if index is not None else step.path
    raise StateMigrationError(
        f"field {where} holds {value}, which does not fit {step.types[1]} (from {step.types[0]})"
    )


def _lanes(step: Step, src: memoryview, dst: memoryview, s: int, d: int) -> None:
    n, sw, dw = step.count, step.swidth, step.dwidth
    if step.kind == "copy":
        _move(step, src, s, dst, d, sw)
        return
    keep = min(sw, dw)
    slanes = range(sw) if _LITTLE else range(sw - 1, -1, -1)  # byte lanes, low to high
    dlanes = range(dw) if _LITTLE else range(dw - 1, -1, -1)
    top = _lane(src, s + slanes[keep - 1], n, step.sstride)
    if step.kind == "narrow":
        _check_narrow(step, src, s, slanes, keep, top)
    # the low ``keep`` bytes of each integer (at its start little-endian, at its end big-endian)
    _move(step, src, s if _LITTLE else s + sw - keep, dst, d if _LITTLE else d + dw - keep, keep)
    if dw <= sw:
        return
    fill = bytes(top).translate(_SIGN) if step.ssigned else b""
    if not fill or fill.count(0) == n:  # no negative value: the high bytes are zero
        high, width = (d + sw) if _LITTLE else d, dw - sw
        if n == 1:
            dst[high : high + width] = bytes(width)
            return
        k = _unit(width, step.dstride)
        for view in _chunks(dst, high, n, step.dstride, width, k):
            view[:] = memoryview(bytes(n * k)).cast(_FORMAT[k])
        return
    for j in range(sw, dw):  # some negative: each high byte lane is the sign
        _lane(dst, d + dlanes[j], n, step.dstride)[:] = fill


def _check_narrow(
    step: Step, src: memoryview, s: int, slanes: range, keep: int, top: memoryview
) -> None:
    """Every value must fit the narrower (or other-signed) type: its dropped
    lanes are the sign-fill of the kept top lane (zero when either side is
    unsigned), and a value going to a signed type from an unsigned one, or
    kept whole across a sign change, has its top bit clear."""
    n = step.count
    fill = bytes(top).translate(_SIGN)
    zeros = bytes(n)
    want = fill if step.ssigned and step.dsigned else zeros
    checks = [
        (bytes(_lane(src, s + slanes[j], n, step.sstride)), want) for j in range(keep, step.swidth)
    ]
    if step.ssigned != step.dsigned and (step.dsigned or keep == step.swidth):
        checks.append((fill, zeros))
    for got, expect in checks:
        if got != expect:
            first = next(k for k in range(n) if got[k] != expect[k])
            _misfit(step, src, s + first * step.sstride, first if n > 1 else None)
