"""The loaded objects of this process, walked with ``dl_iterate_phdr``
through ctypes: ``walk_loaded`` and ``read_pointer`` of ``DynamicLoader``
(``_posix`` exports them; ``_windows`` says they do not apply).

The inspector asks this to find which loaded object binds into an image that
stayed mapped after its last ``dlclose`` (``_inspect.leaks``): it needs each
object's load base and readable segments, in load order, and must read GOT
and PLT slots while nothing can be unmapped under it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
from collections.abc import Callable
from typing import Any

from ._api import LoadedObject

log = logging.getLogger(__name__)

PF_R = 4


class _PhdrInfo(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_size_t),
        ("name", ctypes.c_char_p),
        ("phdr", ctypes.c_void_p),
        ("phnum", ctypes.c_uint16),
    ]


_PHDR_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t, ctypes.c_void_p
)


def walk_loaded(visit: Callable[[LoadedObject], None]) -> None:
    """Call ``visit`` on every loaded object, in load order, inside
    dl_iterate_phdr: the loader lock is held, so no object is unmapped while
    ``visit`` reads its memory.  ``NotImplementedError`` where the C library
    has no ``dl_iterate_phdr`` with glibc's layout (only Linux is read)."""
    if not sys.platform.startswith("linux"):
        raise NotImplementedError("walking the loaded objects is read on Linux only")
    fmt = "IIQQQQQQ" if struct.calcsize("P") == 8 else "IIIIIIII"
    step = struct.calcsize(fmt)

    def callback(info: Any, _size: int, _data: Any) -> int:
        i = info.contents
        segs = []
        for k in range(i.phnum):
            f = struct.unpack(fmt, ctypes.string_at(i.phdr + k * step, step))
            p_type, flags, vaddr, memsz = (
                (f[0], f[1], f[3], f[6]) if step == 56 else (f[0], f[6], f[2], f[5])
            )
            if p_type == 1 and flags & PF_R:
                segs.append((i.addr + vaddr, i.addr + vaddr + memsz))
        try:
            visit(LoadedObject(os.fsdecode(i.name or b""), i.addr, tuple(segs)))
        except Exception:  # never let an exception cross the C frame
            log.debug("binder walk failed on %r", i.name, exc_info=True)
        return 0

    libc = ctypes.CDLL(None)
    libc.dl_iterate_phdr(_PHDR_CALLBACK(callback), None)


def read_pointer(address: int) -> int:
    """The pointer at ``address``, read in place: a bad address is a crash,
    so callers read only inside a readable segment ``walk_loaded`` reported,
    from within its ``visit``."""
    return ctypes.c_void_p.from_address(address).value or 0
