"""POSIX platform layer: ``dlopen``/``dlclose`` through ctypes and the
kernel's view of what is mapped.

ctypes has no public ``dlclose``, so this module calls libc's ``dl*``
functions directly; that also gives ``dlerror`` text and ``RTLD_NOLOAD``
probes.  The Windows twin is ``_windows``; ``_platform`` picks one; both
implement ``_api.DynamicLoader``.  The walk over every loaded object
(``walk_loaded``, ``read_pointer``) lives in ``_loaded_posix``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import LoadError
from ._loaded_posix import read_pointer as read_pointer
from ._loaded_posix import walk_loaded as walk_loaded

RTLD_LAZY = 0x1
RTLD_NOW = 0x2
RTLD_NOLOAD = 0x4
RTLD_LOCAL = 0
RTLD_GLOBAL = 0x100
RTLD_DI_LINKMAP = 2
SUFFIX = ".dylib" if sys.platform == "darwin" else ".so"

_libc = ctypes.CDLL(None, use_errno=True)
_dlopen = _libc.dlopen
_dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
_dlopen.restype = ctypes.c_void_p
_dlclose = _libc.dlclose
_dlclose.argtypes = [ctypes.c_void_p]
_dlclose.restype = ctypes.c_int
_dlsym = _libc.dlsym
_dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_dlsym.restype = ctypes.c_void_p
_dlerror = _libc.dlerror
_dlerror.argtypes = []
_dlerror.restype = ctypes.c_char_p
_dlinfo: Any
try:
    _dlinfo = _libc.dlinfo
    _dlinfo.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    _dlinfo.restype = ctypes.c_int
except AttributeError:  # macOS has no dlinfo
    _dlinfo = None

# dlerror() state is per thread, but a dl* call and its dlerror() must not be
# interleaved with another call on the same thread; this lock also keeps the
# "is this a new image?" check atomic with the open that it checks.
_lock = threading.Lock()


class _LinkMap(ctypes.Structure):
    _fields_ = [("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p)]


def _error(default: str) -> str:
    msg = _dlerror()
    return msg.decode(errors="replace") if msg else default


def open_image(path: str, search_dir: str | None = None) -> int:
    """``dlopen(path, RTLD_NOW | RTLD_LOCAL)``: every undefined symbol is
    resolved now, so a missing one fails here, not at the first call.

    ``search_dir`` is for the Windows twin (where a plugin's own DLLs live);
    on POSIX a plugin finds its dependencies through its RUNPATH.
    """
    with _lock:
        _dlerror()
        handle = _dlopen(os.fsencode(path), RTLD_NOW | RTLD_LOCAL)
        if not handle:
            raise LoadError(f"{path}: dlopen failed: {_error('unknown error')}")
        return int(handle)


def open_global(path: str) -> None:
    """``dlopen(path, RTLD_NOW | RTLD_GLOBAL)``, never closed (plugins bind to it)."""
    with _lock:
        _dlerror()
        if not _dlopen(os.fsencode(path), RTLD_NOW | RTLD_GLOBAL):
            raise LoadError(f"{path}: dlopen failed: {_error('unknown error')}")


def close_image(handle: int, path: str) -> None:
    with _lock:
        _dlerror()
        if _dlclose(handle) != 0:
            raise LoadError(f"{path}: dlclose failed: {_error('unknown error')}")


def symbol(handle: int, name: str) -> int | None:
    """Address of ``name`` in the image, or None when it is not exported."""
    with _lock:
        _dlerror()
        addr = _dlsym(handle, name.encode())
        return addr or None


def _symbols_py(handle: int, names: list[str]) -> list[int | None]:
    """``symbol`` for several names under one lock: a reload resolves every
    export, hook and import slot of a plugin at once (one ctypes call each)."""
    with _lock:
        found = [_dlsym(handle, name.encode()) or None for name in names]
        _dlerror()  # a name not found leaves an error behind: clear it once
        return found


def _native_symbols() -> Callable[[int, list[str]], list[int | None]] | None:
    """The compiled extension's ``symbols`` (one C call for all names: ~1 us
    a name less than a ctypes call each), unless it was not built, predates
    it, or ``HOTLOAD_PURE_PYTHON=1`` asks for the Python paths."""
    if os.environ.get("HOTLOAD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from .._engine._crouter import symbols as native
    except ImportError:
        return None
    return native


symbols: Callable[[int, list[str]], list[int | None]] = _native_symbols() or _symbols_py


def image_path(handle: int) -> str | None:
    """The path the loader recorded for ``handle`` (glibc's link map)."""
    if _dlinfo is None:
        return None
    lm = ctypes.POINTER(_LinkMap)()
    if _dlinfo(handle, RTLD_DI_LINKMAP, ctypes.byref(lm)) != 0 or not lm:
        return None
    name = lm.contents.l_name
    return os.fsdecode(name) if name else None


def loader_has(path: str) -> bool:
    """The dynamic loader's view: is an image opened from ``path`` still
    loaded?  ``RTLD_NOLOAD`` opens nothing new; the reference it takes on a
    hit is dropped at once."""
    with _lock:
        handle = _dlopen(os.fsencode(path), RTLD_LAZY | RTLD_NOLOAD)
        if handle:
            _dlclose(handle)
        _dlerror()
        return bool(handle)


# Within ``maps_snapshot()``: this thread's bytes mapped per (device, inode), from one
# read of /proc/self/maps ({} until the first question).
_snapshot = threading.local()


@contextlib.contextmanager
def maps_snapshot() -> Iterator[None]:
    """Within the block, ``mapped_ranges`` on this thread reads
    ``/proc/self/maps`` once and answers every file from that read.  A
    listing of every version (``hotload ls``, each ``hotload top`` refresh)
    asks for each image in turn; with 200 images loaded the file is ~100 KB,
    and reading and scanning it per image made one listing take seconds on a
    loaded machine.  Other threads (an unload verifying that its image left)
    still read it fresh.  For blocks that only look: an image loaded or
    closed by this thread inside the block is not seen."""
    if getattr(_snapshot, "index", None) is not None:  # nested: the outer block's read
        yield
        return
    _snapshot.index = {}
    try:
        yield
    finally:
        _snapshot.index = None


def _read_maps() -> bytes:
    with open("/proc/self/maps", "rb") as fh:
        return fh.read()


def _dev_ino(file_id: tuple[int, int]) -> tuple[bytes, bytes]:
    dev, ino = file_id
    return f"{os.major(dev):02x}:{os.minor(dev):02x}".encode(), str(ino).encode()  # as printed


def _indexed(maps: bytes) -> dict[tuple[bytes, bytes], int]:
    """Bytes mapped per (device, inode) of every file-backed line."""
    index: dict[tuple[bytes, bytes], int] = {}
    for line in maps.splitlines():
        fields = line.split(None, 5)  # range perms offset dev inode [path]
        if len(fields) >= 5 and fields[4] != b"0":
            lo, _, hi = fields[0].partition(b"-")
            key = (fields[3], fields[4])
            index[key] = index.get(key, 0) + int(hi, 16) - int(lo, 16)
    return index


def mapped_ranges(file_id: tuple[int, int]) -> int:
    """The kernel's view: how many bytes of the file ``(st_dev, st_ino)`` are
    mapped into this process right now (0 when none)."""
    want_dev, want_ino = _dev_ino(file_id)
    index: dict[tuple[bytes, bytes], int] | None = getattr(_snapshot, "index", None)
    if index is not None:  # inside maps_snapshot(): one read and one parse for all
        try:
            if not index:
                index.update(_indexed(_read_maps()))
                index[(b"", b"")] = 0  # read: an empty process still counts as read
        except OSError:
            return -1
        return index.get((want_dev, want_ino), 0)
    try:
        maps = _read_maps()
    except OSError:  # no procfs (macOS, some sandboxes): fall back to the loader
        return -1
    total = 0
    # Find " <dev> <inode>" and take the line only when it is the 4th and 5th column: a
    # scan for the needle costs a fraction of splitting every line of a large process's maps.
    needle = b" " + want_dev + b" " + want_ino
    pos = maps.find(needle)
    while pos >= 0:
        end = pos + len(needle)
        if end == len(maps) or maps[end] in b" \n":
            head = maps[maps.rfind(b"\n", 0, pos) + 1 : pos].split()  # range, perms, offset
            if len(head) == 3:
                lo, _, hi = head[0].partition(b"-")
                total += int(hi, 16) - int(lo, 16)
        pos = maps.find(needle, end)
    return total
