"""A kernel32 stand-in that records every call, for driving ``_platform._windows`` on Linux.

It keeps the one piece of loader state the Windows layer relies on, a module
table with reference counts keyed by full path (case-insensitive, as the
Windows loader compares them), so a test can tell "freed once too often" or
"still loaded" from the calls alone.  Calls are recorded as JSON-friendly
tuples, so a subprocess can hand its record back to the test.

No pytest import here: the pretend-Windows subprocess in test_platform.py
imports this module too.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

# A host's private copies of two versions of one plugin, and the plugin's source directory.
WORK = "C:\\Users\\op\\AppData\\Local\\Temp\\hotload-op\\host-1-ab"
V1 = WORK + "\\double_xp.v1.aa11.dll"
V2 = WORK + "\\double_xp.v2.bb22.dll"
SRC = "C:\\game\\plugins"

ERROR_FILE_NOT_FOUND = 2
ERROR_INVALID_HANDLE = 6
ERROR_MOD_NOT_FOUND = 126
ERROR_PROC_NOT_FOUND = 127


def _key(path: str) -> str:
    return path.removeprefix("\\\\?\\").lower()


@dataclass
class _Module:
    handle: int
    path: str
    refs: int = 1


@dataclass
class FakeKernel32:
    """``files``: DLLs that load; ``missing_dep``: DLLs whose dependency is
    missing (LoadLibraryExW fails with 126); ``exports``: names GetProcAddress finds."""

    files: set[str] = field(default_factory=set)
    missing_dep: set[str] = field(default_factory=set)
    exports: set[bytes] = field(default_factory=set)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    last_error: int = 0
    error_mode: int = 0
    modules: dict[str, _Module] = field(default_factory=dict)
    dll_dirs: dict[int, str] = field(default_factory=dict)
    _next_handle: int = 0x7FF8_0000_0000  # above 4 GiB, where a 32-bit int would truncate

    def __post_init__(self) -> None:
        self.files = {_key(f) for f in self.files}
        self.missing_dep = {_key(f) for f in self.missing_dep}

    # -- what _windows._last_error() reads
    def get_last_error(self) -> int:
        return self.last_error

    def _fail(self, code: int) -> None:
        self.last_error = code

    def _by_handle(self, handle: int) -> _Module | None:
        return next((m for m in self.modules.values() if m.handle == handle), None)

    def loaded(self) -> dict[str, int]:
        """Full path -> reference count of every module still loaded."""
        return {m.path: m.refs for m in self.modules.values()}

    # -- the kernel32 functions of _windows.PROTOTYPES
    def LoadLibraryExW(self, path: str, reserved: None, flags: int) -> int | None:  # noqa: N802
        self.calls.append(("LoadLibraryExW", path, reserved, flags))
        key = _key(path)
        if key in self.modules:
            self.modules[key].refs += 1
            return self.modules[key].handle
        if key in self.missing_dep:
            self._fail(ERROR_MOD_NOT_FOUND)
            return None
        if key not in self.files:
            self._fail(ERROR_FILE_NOT_FOUND)
            return None
        self._next_handle += 0x10000
        self.modules[key] = _Module(self._next_handle, path.removeprefix("\\\\?\\"))
        return self._next_handle

    def GetFileAttributesW(self, path: str) -> int:  # noqa: N802
        self.calls.append(("GetFileAttributesW", path))
        if _key(path) in self.files | self.missing_dep:
            return 0x20  # FILE_ATTRIBUTE_ARCHIVE
        self._fail(ERROR_FILE_NOT_FOUND)
        return 0xFFFFFFFF  # INVALID_FILE_ATTRIBUTES

    def FreeLibrary(self, handle: int) -> int:  # noqa: N802
        self.calls.append(("FreeLibrary", handle))
        mod = self._by_handle(handle)
        if mod is None:
            self._fail(ERROR_INVALID_HANDLE)
            return 0
        mod.refs -= 1
        if mod.refs == 0:
            del self.modules[_key(mod.path)]
        return 1

    def GetProcAddress(self, handle: int, name: bytes) -> int | None:  # noqa: N802
        self.calls.append(("GetProcAddress", handle, name.decode()))
        if self._by_handle(handle) is None:
            self._fail(ERROR_INVALID_HANDLE)
            return None
        if name not in self.exports:
            self._fail(ERROR_PROC_NOT_FOUND)
            return None
        return handle + 0x1000 + sorted(self.exports).index(name) * 0x10

    def GetModuleFileNameW(self, handle: int, buf: Any, size: int) -> int:  # noqa: N802
        self.calls.append(("GetModuleFileNameW", handle, size))
        mod = self._by_handle(handle)
        if mod is None:
            self._fail(ERROR_INVALID_HANDLE)
            return 0
        name = "\\\\?\\" + mod.path  # the loader may report the verbatim form
        if len(name) >= size:  # truncated, and the return value is the buffer size
            buf.value = name[: size - 1]
            return size
        buf.value = name
        return len(name)

    def GetModuleHandleExW(self, flags: int, path: str, out: Any) -> int:  # noqa: N802
        self.calls.append(("GetModuleHandleExW", flags, path))
        mod = self.modules.get(_key(path))
        if mod is None:
            self._fail(ERROR_MOD_NOT_FOUND)
            return 0
        if not flags & 0x2:  # without UNCHANGED_REFCOUNT the probe itself takes a reference
            mod.refs += 1
        out._obj.value = mod.handle  # ctypes.byref(c_void_p) -> the c_void_p
        return 1

    def AddDllDirectory(self, path: str) -> int:  # noqa: N802
        self.calls.append(("AddDllDirectory", path))
        cookie = 0x1000 + len(self.dll_dirs) + 1
        self.dll_dirs[cookie] = path
        return cookie

    def RemoveDllDirectory(self, cookie: int) -> int:  # noqa: N802
        self.calls.append(("RemoveDllDirectory", self.dll_dirs.get(cookie)))
        return 1 if self.dll_dirs.pop(cookie, None) else 0

    def SetThreadErrorMode(self, mode: int, old: Any) -> int:  # noqa: N802
        self.calls.append(("SetThreadErrorMode", mode))
        if old is not None:
            old._obj.value = self.error_mode
        self.error_mode = mode
        return 1

    def FormatMessageW(self, *args: Any) -> int:  # noqa: N802
        self.calls.append(("FormatMessageW", args[2]))
        return 0


def install(windows: Any, k32: FakeKernel32) -> None:
    """Point ``_platform._windows`` at ``k32`` (its two seams)."""
    windows._kernel32 = lambda: k32
    windows._last_error = k32.get_last_error


def run_swap(dl: Any, k32: FakeKernel32) -> dict[str, Any]:
    """What the host does to a plugin's images: load v1, load v2, retire v1, unload v2."""
    h1 = dl.open_image(V1, search_dir=SRC)
    out: dict[str, Any] = {"h1": h1, "fn1": dl.symbol(h1, "double_xp"), "path1": dl.image_path(h1)}
    h2 = dl.open_image(V2, search_dir=SRC)
    out |= {"h2": h2, "fn2": dl.symbol(h2, "double_xp"), "missing": dl.symbol(h2, "nope")}
    dl.close_image(h1, V1)
    out["v1_after_close"] = dl.loader_has(V1)
    out["v2_while_live"] = dl.loader_has(V2)
    dl.close_image(h2, V2)
    out["v2_after_close"] = dl.loader_has(V2)
    out["loaded"] = k32.loaded()
    out["calls"] = k32.calls
    return out


assert ctypes.sizeof(ctypes.c_void_p) == 8, "the fake's handles assume a 64-bit process"
