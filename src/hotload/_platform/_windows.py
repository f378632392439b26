"""Windows platform layer: ``LoadLibraryExW``/``FreeLibrary`` through ctypes.

The twin of ``_posix``: both implement ``_api.DynamicLoader`` as a module
(mypy checks both in ``_platform/__init__``), which picks one at import time.

Why it differs from a plain ``ctypes.WinDLL(path)``:

* The host loads a *private, versioned copy* of a plugin, so the build can
  overwrite the source DLL while the copy is loaded (Windows refuses to write
  or delete a mapped image).  The plugin's own dependencies sit next to its
  *source*, not next to the copy, so ``open_image`` adds the source directory
  with ``AddDllDirectory`` for the duration of the load and searches only
  ``LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_DEFAULT_DIRS``
  (the copy's directory, the application directory, System32 and the added
  directory), never the current directory or ``PATH``, which is how DLL
  planting happens.
* ``GetLastError`` codes become words an operator can act on: the system text
  for 126 ("The specified module could not be found") makes people look for
  the plugin file when a DLL *it depends on* is missing.
* Hard-error dialogs ("bad image", "no disk in drive") are switched off for
  the loading thread: a service must fail a reload, not wait on a modal box.

The pure logic (error codes to words, Windows path rules) is in plain
functions that import and run on any OS, so it is unit-tested on Linux;
kernel32 is bound lazily, on the first call that needs it, through
``_kernel32()`` and ``_last_error()``: the two seams where
tests/test_platform.py puts a recording fake to drive the load / swap /
unload sequence on Linux.  Paths go through ``ntpath`` (which *is*
``os.path`` on Windows) for the same reason.  The loader calls
themselves are mirrored step by step by ``native/harness/win_harness.c``,
which the test suite runs under wine.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import ntpath
import threading
from collections.abc import Callable
from typing import Any

from .._errors import LoadError
from ._api import LoadedObject

log = logging.getLogger(__name__)

SUFFIX = ".dll"

LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR = 0x00000100
LOAD_LIBRARY_SEARCH_DEFAULT_DIRS = 0x00001000
LOAD_FLAGS = LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_DEFAULT_DIRS
GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT = 0x00000002
SEM_FAILCRITICALERRORS = 0x0001
SEM_NOOPENFILEERRORBOX = 0x8000
FORMAT_MESSAGE_FROM_SYSTEM = 0x00001000
FORMAT_MESSAGE_IGNORE_INSERTS = 0x00000200
ERROR_MOD_NOT_FOUND = 126
INVALID_FILE_ATTRIBUTES = 0xFFFFFFFF

MAX_PATH = 260
_EXTENDED = "\\\\?\\"  # \\?\  : "do not parse this path", lifts the MAX_PATH limit
_EXTENDED_UNC = _EXTENDED + "UNC\\"  # \\?\UNC\server\share
_LONGEST_PATH = 32767  # UNICODE_STRING limit, in UTF-16 units

# GetLastError codes seen from LoadLibraryExW, GetProcAddress, FreeLibrary and
# the file operations around them, as (symbolic name, what it means here).
ERRORS: dict[int, tuple[str, str]] = {
    2: ("ERROR_FILE_NOT_FOUND", "the file does not exist"),
    3: ("ERROR_PATH_NOT_FOUND", "a directory in the path does not exist"),
    5: (
        "ERROR_ACCESS_DENIED",
        "access denied (permissions, or the file is loaded or being deleted)",
    ),
    8: ("ERROR_NOT_ENOUGH_MEMORY", "not enough memory to map the image"),
    11: ("ERROR_BAD_FORMAT", "not a valid program image (corrupt or truncated)"),
    32: (
        "ERROR_SHARING_VIOLATION",
        "the file is in use by another process (a compiler still writing it, an antivirus scan, "
        "or a loaded image)",
    ),
    87: ("ERROR_INVALID_PARAMETER", "invalid parameter (is the path fully qualified?)"),
    126: ("ERROR_MOD_NOT_FOUND", "a DLL it depends on was not found"),
    127: (
        "ERROR_PROC_NOT_FOUND",
        "a function it imports is missing from a DLL it depends on (an older or different "
        "version of that DLL was found)",
    ),
    182: (
        "ERROR_INVALID_ORDINAL",
        "it imports an ordinal that a DLL it depends on does not export",
    ),
    193: (
        "ERROR_BAD_EXE_FORMAT",
        "not a valid Win32 application (wrong architecture or not a DLL)",
    ),
    206: ("ERROR_FILENAME_EXCED_RANGE", "the path is too long"),
    216: ("ERROR_EXE_MACHINE_TYPE_MISMATCH", "built for another CPU architecture"),
    225: ("ERROR_VIRUS_INFECTED", "blocked by antivirus: the file was reported as infected"),
    577: ("ERROR_INVALID_IMAGE_HASH", "its digital signature is invalid or required and missing"),
    1114: (
        "ERROR_DLL_INIT_FAILED",
        "its initialisation failed (DllMain or a static constructor returned an error)",
    ),
    1157: ("ERROR_DLL_NOT_FOUND", "a DLL it depends on was not found"),
    1392: ("ERROR_FILE_CORRUPT", "the file is corrupt and unreadable"),
    1455: ("ERROR_COMMITMENT_LIMIT", "the paging file is too small to map the image"),
    4551: (
        "ERROR_SYSTEM_INTEGRITY_POLICY_VIOLATION",
        "blocked by the system's code integrity policy (WDAC / AppLocker)",
    ),
    14001: (
        "ERROR_SXS_CANT_GEN_ACTCTX",
        "its side-by-side configuration is incorrect (a manifest names a missing runtime)",
    ),
}


def describe_error(code: int, system_text: str | None = None) -> str:
    """Words for a ``GetLastError`` code: ours when we know the code (they name
    the likely cause), else the system's ``FormatMessageW`` text, always
    followed by the number and symbolic name so it can be looked up."""
    known = ERRORS.get(code)
    if known:
        return f"{known[1]} (Windows error {code}, {known[0]})"
    text = (system_text or "").strip().rstrip(".")
    return f"{text} (Windows error {code})" if text else f"Windows error {code}"


def describe_load_error(
    path: str,
    code: int,
    *,
    file_exists: bool = True,
    search_dirs: tuple[str, ...] = (),
    system_text: str | None = None,
) -> str:
    """The ``LoadError`` message for a failed ``LoadLibraryExW`` of ``path``.

    126 means "module not found" for the file itself *and* for any DLL it
    imports; which one is decided by ``file_exists``.  For a missing
    dependency the message lists where the loader looked, because the usual
    fix is putting the dependency next to the plugin's source DLL.
    """
    if code in (2, 3, ERROR_MOD_NOT_FOUND) and not file_exists:
        return f"{path}: LoadLibraryExW failed: the file does not exist (Windows error {code})"
    msg = f"{path}: LoadLibraryExW failed: {describe_error(code, system_text)}"
    if code in (ERROR_MOD_NOT_FOUND, 1157):
        where = ", ".join(
            (
                f"the DLL's own directory ({ntpath.dirname(path) or '.'})",
                *search_dirs,
                "the application directory",
                "System32",
            )
        )
        msg += f"; searched: {where} (not PATH, not the current directory)"
    return msg


def is_fully_qualified(path: str) -> bool:
    r"""True for ``C:\x``, ``\\server\share\x`` and ``\\?\...`` paths: what
    ``LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR`` requires (a relative or drive-relative
    path makes ``LoadLibraryExW`` fail with ``ERROR_INVALID_PARAMETER``)."""
    p = path.replace("/", "\\")
    if p.startswith(_EXTENDED) or p.startswith("\\\\.\\"):
        return True
    if p.startswith("\\\\"):
        parts = p[2:].split("\\")
        return len(parts) >= 2 and bool(parts[0]) and bool(parts[1])
    return len(p) >= 3 and p[0].isalpha() and p[1] == ":" and p[2] == "\\"


def strip_extended_prefix(path: str) -> str:
    r"""``\\?\C:\x`` -> ``C:\x`` and ``\\?\UNC\srv\share`` -> ``\\srv\share``:
    the form people and ``os.path`` use, so paths from ``GetModuleFileNameW``
    compare equal to the ones the host passed in."""
    if path[:8].upper() == _EXTENDED_UNC.upper():
        return "\\\\" + path[8:]
    if path.startswith(_EXTENDED) and len(path) >= 6 and path[5] == ":":
        return path[4:]
    return path


def loader_path(path: str) -> str:
    r"""The string to hand to ``LoadLibraryExW``/``GetModuleHandleExW`` for an
    absolute ``path``.

    Backslashes only (the loader documents forward slashes as unsupported,
    and module-name lookups compare strings), ``.``/``..`` resolved, and the
    ``\\?\`` prefix added when the path reaches ``MAX_PATH``: versioned copies
    in a deep private directory can get there, and unprefixed they fail with
    ``ERROR_FILENAME_EXCED_RANGE`` unless the machine opted into long paths.
    Used for both the load and the ``loader_has`` probe, so both name the
    module the same way.  Raises ``LoadError`` for a path that is not fully
    qualified: callers make it absolute first.
    """
    if not is_fully_qualified(path):
        raise LoadError(f"{path}: not a fully qualified Windows path (LoadLibraryExW needs one)")
    p = path.replace("/", "\\")
    if p.startswith(_EXTENDED):
        return p  # already verbatim: the loader does not normalise it, neither do we
    p = ntpath.normpath(p)
    if len(p) < MAX_PATH:
        return p
    if p.startswith("\\\\"):
        return _EXTENDED_UNC + p[2:]
    return _EXTENDED + p


def _key(path: str) -> str:
    """Case- and prefix-insensitive form of a path, for comparisons only."""
    return ntpath.normcase(strip_extended_prefix(path.replace("/", "\\"))).rstrip("\\")


def search_dir_for(image: str, search_dir: str | None) -> str | None:
    """The directory to add with ``AddDllDirectory`` when loading ``image``, or
    None when there is nothing to add: no ``search_dir``, or it is the image's
    own directory, which ``LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR`` already searches
    (adding it again would only cost a process-wide search-path change).
    Both arguments must be fully qualified."""
    if not search_dir:
        return None
    wanted = loader_path(search_dir)
    if _key(wanted) == _key(ntpath.dirname(loader_path(image))):
        return None
    return wanted


# ---- kernel32, bound on first use ------------------------------------------------

# AddDllDirectory changes the search path of the whole process: one load's
# extra directory must not leak into another's, so loads (and frees, which can
# run DllMain of dependencies) are serialised.  GetLastError is per thread and
# read through use_last_error, so it needs no lock.
_lock = threading.Lock()


# The kernel32 functions used, with their C prototypes spelt as in the Windows
# SDK headers.  tests/test_windows.py compiles these against mingw-w64's
# <windows.h>, so a wrong argument count or type, or a handle declared as an
# int, is caught on Linux before anyone runs this on Windows.
PROTOTYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "LoadLibraryExW": ("HMODULE", ("LPCWSTR", "HANDLE", "DWORD")),
    "FreeLibrary": ("BOOL", ("HMODULE",)),
    "GetFileAttributesW": ("DWORD", ("LPCWSTR",)),
    "GetProcAddress": ("FARPROC", ("HMODULE", "LPCSTR")),
    "GetModuleFileNameW": ("DWORD", ("HMODULE", "LPWSTR", "DWORD")),
    "GetModuleHandleExW": ("BOOL", ("DWORD", "LPCWSTR", "HMODULE *")),
    "AddDllDirectory": ("DLL_DIRECTORY_COOKIE", ("PCWSTR",)),
    "RemoveDllDirectory": ("BOOL", ("DLL_DIRECTORY_COOKIE",)),
    "SetThreadErrorMode": ("BOOL", ("DWORD", "LPDWORD")),
    "FormatMessageW": (
        "DWORD",
        ("DWORD", "LPCVOID", "DWORD", "DWORD", "LPWSTR", "DWORD", "va_list *"),
    ),
}

# Pointers and handles all become c_void_p: ctypes' default int return type
# would truncate a module handle to 32 bits, which works until the DLL is
# mapped above 4 GiB (on x64 it usually is).
_POINTERS = frozenset(
    {"HMODULE", "HANDLE", "FARPROC", "DLL_DIRECTORY_COOKIE", "LPCVOID", "va_list *", "HMODULE *"}
)


def ctype_of(c_type: str) -> Any:
    """The ctypes type for a C type name used in ``PROTOTYPES``."""
    from ctypes import wintypes  # importable on any OS; kept out of module import anyway

    if c_type == "HMODULE *":
        return ctypes.POINTER(ctypes.c_void_p)
    if c_type in _POINTERS:
        return ctypes.c_void_p
    table: dict[str, Any] = {
        "DWORD": wintypes.DWORD,
        "BOOL": wintypes.BOOL,
        "LPDWORD": ctypes.POINTER(wintypes.DWORD),
        "LPCWSTR": wintypes.LPCWSTR,
        "PCWSTR": wintypes.LPCWSTR,
        "LPWSTR": wintypes.LPWSTR,
        "LPCSTR": wintypes.LPCSTR,
    }
    return table[c_type]


@functools.cache
def _kernel32() -> Any:
    """kernel32, loaded on first use, with the prototypes of ``PROTOTYPES``."""
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(k32, name)
        fn.restype = ctype_of(restype)
        fn.argtypes = [ctype_of(a) for a in argtypes]
    return k32


def _last_error() -> int:
    code: int = ctypes.get_last_error()  # type: ignore[attr-defined]
    return code


def system_message(code: int) -> str | None:
    """``FormatMessageW`` text for ``code`` (None when the system has none)."""
    buf = ctypes.create_unicode_buffer(1024)
    n = _kernel32().FormatMessageW(
        FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
        None,
        code,
        0,
        buf,
        len(buf),
        None,
    )
    text = buf.value[:n].strip() if n else ""
    return text or None


def _failure(path: str, call: str, code: int) -> LoadError:
    text = None if code in ERRORS else system_message(code)
    return LoadError(f"{path}: {call} failed: {describe_error(code, text)}")


def open_image(path: str, search_dir: str | None = None) -> int:
    """``LoadLibraryExW(path, LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | _DEFAULT_DIRS)``.

    ``search_dir`` is where the plugin's own dependencies live, normally the
    directory of the *source* DLL that ``path`` is a private copy of; it is
    added with ``AddDllDirectory`` for this load only.  That change is
    process-wide while it lasts, so a DLL load elsewhere in the process during
    that window could see the extra directory too; it is removed at once.
    Imports are all resolved now (there is no lazy binding of DLL imports), so
    a missing dependency fails here, not at the first call.
    """
    full = loader_path(ntpath.abspath(path))
    extra = search_dir_for(full, ntpath.abspath(search_dir)) if search_dir else None
    k32 = _kernel32()
    with _lock:
        cookie = None
        if extra:
            cookie = k32.AddDllDirectory(extra)
            if not cookie:
                raise _failure(path, f"AddDllDirectory({search_dir})", _last_error())
        old_mode = ctypes.c_ulong(0)
        k32.SetThreadErrorMode(
            SEM_FAILCRITICALERRORS | SEM_NOOPENFILEERRORBOX, ctypes.byref(old_mode)
        )
        try:
            handle = k32.LoadLibraryExW(full, None, LOAD_FLAGS)
            code = 0 if handle else _last_error()
        finally:
            k32.SetThreadErrorMode(old_mode.value, None)
            if cookie and not k32.RemoveDllDirectory(cookie):
                log.warning(
                    "%s: RemoveDllDirectory(%s) failed: %s",
                    path,
                    search_dir,
                    describe_error(_last_error()),
                )
    if not handle:
        text = None if code in ERRORS else system_message(code)
        raise LoadError(
            describe_load_error(
                path,
                code,
                file_exists=k32.GetFileAttributesW(full) != INVALID_FILE_ATTRIBUTES,
                search_dirs=(extra,) if extra else (),
                system_text=text,
            )
        )
    return int(handle)


def close_image(handle: int, path: str) -> None:
    """``FreeLibrary``: drops one reference; the image leaves memory when the
    last one goes (check with ``loader_has``)."""
    with _lock:
        if not _kernel32().FreeLibrary(handle):
            raise _failure(path, "FreeLibrary", _last_error())


def symbol(handle: int, name: str) -> int | None:
    """Address of the export ``name``, or None when it is not exported.
    ``GetProcAddress`` takes ANSI names only; a name that is not ASCII cannot
    be a C export, so it is simply not found."""
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        return None
    addr = _kernel32().GetProcAddress(handle, raw)
    return int(addr) if addr else None


def symbols(handle: int, names: list[str]) -> list[int | None]:
    """``symbol`` for several names (the POSIX twin takes its lock once)."""
    return [symbol(handle, name) for name in names]


def image_path(handle: int) -> str | None:
    """The file the module was loaded from (``GetModuleFileNameW``), without a
    ``\\?\\`` prefix.  The buffer grows until the name fits: a name that does
    not fit is truncated silently and the call returns the buffer size."""
    k32 = _kernel32()
    size = MAX_PATH
    while size <= 2 * _LONGEST_PATH:
        buf = ctypes.create_unicode_buffer(size)
        n = k32.GetModuleFileNameW(handle, buf, size)
        if n == 0:
            return None
        if n < size:
            return strip_extended_prefix(buf.value[:n])
        size *= 2
    return None


def loader_has(path: str) -> bool:
    """The loader's view: is an image loaded from ``path`` still in this
    process?  ``GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT`` looks without
    taking a reference, so the probe cannot itself keep the image alive."""
    full = loader_path(ntpath.abspath(path))
    handle = ctypes.c_void_p()
    ok = _kernel32().GetModuleHandleExW(
        GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT, full, ctypes.byref(handle)
    )
    return bool(ok and handle.value)


def maps_snapshot() -> contextlib.AbstractContextManager[None]:
    """Nothing to share: ``mapped_ranges`` reads nothing on Windows."""
    return contextlib.nullcontext()


def mapped_ranges(file_id: tuple[int, int]) -> int:
    """-1 (unknown): Windows has no cheap equivalent of ``/proc/self/maps`` for
    a file identity, so the host relies on ``loader_has``.  A copy that is
    still mapped also cannot be deleted, which the host sees when it removes
    the copy."""
    del file_id
    return -1


_NO_WALK = (
    "not on Windows: the loaded-object walk asks which library's symbol bindings keep an ELF "
    "image mapped (glibc), and the inspector asks it on Linux only"
)


def open_global(path: str) -> None:
    """Does not apply: a DLL imports from named DLLs, there is no global
    namespace to put host services in (they are linked per plugin)."""
    raise LoadError(f"{path}: host services are not available on Windows")


def walk_loaded(visit: Callable[[LoadedObject], None]) -> None:
    """Does not apply: a DLL stays loaded through the loader's reference
    counts, not through another library's symbol bindings into it."""
    del visit
    raise NotImplementedError(_NO_WALK)


def read_pointer(address: int) -> int:
    """Does not apply: only ``walk_loaded``'s ``visit`` reads slots."""
    del address
    raise NotImplementedError(_NO_WALK)
