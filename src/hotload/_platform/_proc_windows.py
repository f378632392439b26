"""Windows worker processes (``WorkerProcess`` in ``_proc_api``), the twin of
``_proc_posix``.

The state blob is copied with ``ReadProcessMemory`` on this process, which
fails with ERROR_PARTIAL_COPY / ERROR_NOACCESS on a bad pointer instead of
raising an access violation.  A worker waits on a handle of its host process
and exits when it is signalled.  Worker processes themselves (preflight,
isolated plugins) are not started on Windows yet: their channel is a Unix
socketpair passed by descriptor (``_process.spawn``); the process tree, the
channel's poll and the limits say so.

Nothing here touches kernel32 or ``msvcrt`` at import, so the module imports
(and is type-checked) on any OS.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import threading
from typing import Any

_SYNCHRONIZE = 0x00100000
_INFINITE = 0xFFFFFFFF
_WAIT_OBJECT_0 = 0
_CREATE_NEW_PROCESS_GROUP = 0x00000200
EXIT_PARENT_GONE = 70
WORKERS = False  # no socketpair to pass by descriptor: no preflight or isolated workers

_HANDLE = ctypes.c_void_p
_DWORD = ctypes.c_uint32
_BOOL = ctypes.c_int


@functools.lru_cache(maxsize=1)
class _MemoryInfo(ctypes.Structure):  # MEMORY_BASIC_INFORMATION
    _fields_ = [
        ("BaseAddress", ctypes.c_void_p),
        ("AllocationBase", ctypes.c_void_p),
        ("AllocationProtect", _DWORD),
        ("PartitionId", ctypes.c_ushort),
        ("RegionSize", ctypes.c_size_t),
        ("State", _DWORD),
        ("Protect", _DWORD),
        ("Type", _DWORD),
    ]


# PAGE_READWRITE, PAGE_WRITECOPY, PAGE_EXECUTE_READWRITE, PAGE_EXECUTE_WRITECOPY
_WRITABLE = 0x04 | 0x08 | 0x40 | 0x80
_MEM_COMMIT = 0x1000


def _kernel32() -> Any:
    k32 = getattr(ctypes, "WinDLL")("kernel32", use_last_error=True)  # noqa: B009 - not on POSIX
    protos: dict[str, tuple[Any, list[Any]]] = {
        "ReadProcessMemory": (
            _BOOL,
            [
                _HANDLE,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.POINTER(ctypes.c_size_t),
            ],
        ),
        "GetCurrentProcess": (_HANDLE, []),
        "VirtualQuery": (
            ctypes.c_size_t,
            [ctypes.c_void_p, ctypes.POINTER(_MemoryInfo), ctypes.c_size_t],
        ),
        "OpenProcess": (_HANDLE, [_DWORD, _BOOL, _DWORD]),
        "WaitForSingleObject": (_DWORD, [_HANDLE, _DWORD]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(k32, name)
        fn.restype, fn.argtypes = restype, argtypes
    return k32


def _last_error() -> int:
    return int(getattr(ctypes, "get_last_error")())  # noqa: B009 - not on POSIX


# ---- copying a state blob without faulting ---------------------------------------
def read_memory(address: int, size: int) -> bytes:
    if size == 0:
        return b""
    k32 = _kernel32()
    buf = ctypes.create_string_buffer(size)
    got = ctypes.c_size_t(0)
    ok = k32.ReadProcessMemory(k32.GetCurrentProcess(), address, buf, size, ctypes.byref(got))
    if not ok or got.value != size:
        err = _last_error()
        raise OSError(
            errno.EFAULT,
            f"ReadProcessMemory failed at 0x{address + got.value:x} (error {err})",
        )
    return buf.raw


def write_memory(address: int, data: bytes | bytearray | memoryview) -> None:
    """Every page of the range asked of ``VirtualQuery`` first (committed and
    writable, not a guard page), then copied; ``WriteProcessMemory`` is not
    used, since it writes through a read-only page's protection."""
    size = len(data)
    if size == 0:
        return
    k32, info, at, end = _kernel32(), _MemoryInfo(), address, address + size
    while at < end:
        if not k32.VirtualQuery(at, ctypes.byref(info), ctypes.sizeof(info)):
            raise OSError(errno.EFAULT, f"VirtualQuery failed at 0x{at:x} ({_last_error()})")
        if info.State != _MEM_COMMIT or not info.Protect & _WRITABLE or info.Protect & 0x100:
            raise OSError(errno.EFAULT, f"Bad address at 0x{at:x}: not writable")
        at = int(info.BaseAddress or 0) + int(info.RegionSize)
    ctypes.memmove(address, bytes(data), size)


# ---- a worker that dies with its host ------------------------------------------
_parents: dict[int, Any] = {}


def _parent_handle(parent_pid: int) -> Any:
    if parent_pid not in _parents:
        _parents[parent_pid] = _kernel32().OpenProcess(_SYNCHRONIZE, 0, parent_pid)
    return _parents[parent_pid]


def die_with_parent(parent_pid: int) -> None:
    if parent_gone(parent_pid):
        os._exit(EXIT_PARENT_GONE)
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), daemon=True, name="hotload-parent-watch"
    ).start()


def _watch_parent(parent_pid: int) -> None:
    _kernel32().WaitForSingleObject(_parent_handle(parent_pid), _INFINITE)
    os._exit(EXIT_PARENT_GONE)


def parent_gone(parent_pid: int) -> bool:
    handle = _parent_handle(parent_pid)
    if not handle:
        return True  # no such process any more
    return bool(_kernel32().WaitForSingleObject(handle, 0) == _WAIT_OBJECT_0)


def stopped(pid: int) -> bool:
    return False  # no stop signal here; a suspended worker looks hung


def exit_signal(returncode: int) -> str | None:
    return None  # crashes are NTSTATUS exit codes (0xC0000005...), not signals


def spawn_options() -> dict[str, Any]:
    return {"creationflags": _CREATE_NEW_PROCESS_GROUP}  # no Ctrl-C meant for the host


def adopt_orphans() -> None:
    pass  # no process tree to keep: a Job object would be the way (not done yet)


def descendants(pid: int) -> dict[int, int]:
    return {}


def kill_tree(pid: int, known: dict[int, int], *, walk: bool) -> None:
    pass  # the worker itself is ended by Popen.kill()


def end_descendants(timeout: float) -> int:
    return 0


def sized_memfd(name: str, size: int) -> int:
    raise NotImplementedError("isolated plugins need a POSIX host (memfd)")


def poller(*fds: int) -> Any:
    raise NotImplementedError("isolated plugins need a POSIX host (poll on the channel)")


def apply_limits(limits: dict[str, int]) -> None:
    raise NotImplementedError("isolated plugins need a POSIX host (rlimits)")


def trim_heap() -> bool:
    return False  # the process heap gives pages back by itself


def fd_usage() -> tuple[int, int] | None:
    return None  # no RLIMIT_NOFILE: handles are limited by memory


def sandbox(host_pid: int) -> tuple[tuple[str, ...], str]:
    return (), "no sandbox on Windows"


def fork_ready(*, sandbox: bool) -> str:
    return "no worker zygote on Windows"


def fork_sibling() -> int:
    raise OSError(errno.ENOSYS, "no worker zygote on Windows")


def die_with_parent_signal(parent_pid: int) -> None:
    if parent_gone(parent_pid):
        os._exit(EXIT_PARENT_GONE)


def set_cmdline(args: list[str]) -> bool:
    return False


def worker_pid(pid: int) -> int:
    return pid


def in_worker(pid: int) -> bool:
    return False


def start_time(pid: int) -> int | None:
    return None


def wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    return True


def wait_exit(popen: Any, timeout: float) -> bool:
    import subprocess  # here: the module must import where select is blocked (a test)

    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True
