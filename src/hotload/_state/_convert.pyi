"""Type stub for the optional integer-array loop (``_convert.c``)."""

from typing import Any

def convert(
    dst: Any,
    dst_off: int,
    dst_stride: int,
    dst_width: int,
    dst_signed: bool,
    src: Any,
    src_off: int,
    src_stride: int,
    src_width: int,
    src_signed: bool,
    count: int,
    check: bool,
    /,
) -> int: ...
