"""Windows worker channel (``WorkerProcess`` in ``_proc_api``), the twin of
``_proc_posix``.

``select`` works only on sockets here, and an anonymous pipe (what
``subprocess`` gives) cannot be made non-blocking, so: reads poll
``PeekNamedPipe`` until the deadline, writes run in a short-lived thread the
caller stops waiting for (killing the worker then breaks the pipe and ends
it).  The state blob is copied with ``ReadProcessMemory`` on this process,
which fails with ERROR_PARTIAL_COPY / ERROR_NOACCESS on a bad pointer instead
of raising an access violation.  The worker waits on a handle of its host
process and exits when it is signalled.

Nothing here touches kernel32 or ``msvcrt`` at import, so the module imports
(and is type-checked) on any OS.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import threading
import time
from typing import Any

_CHUNK = 1 << 16
_SYNCHRONIZE = 0x00100000
_INFINITE = 0xFFFFFFFF
_WAIT_OBJECT_0 = 0
_ERROR_BROKEN_PIPE = 109
_CREATE_NEW_PROCESS_GROUP = 0x00000200
EXIT_PARENT_GONE = 70

_HANDLE = ctypes.c_void_p
_DWORD = ctypes.c_uint32
_BOOL = ctypes.c_int


@functools.lru_cache(maxsize=1)
def _kernel32() -> Any:
    k32 = getattr(ctypes, "WinDLL")("kernel32", use_last_error=True)  # noqa: B009 - not on POSIX
    protos: dict[str, tuple[Any, list[Any]]] = {
        "PeekNamedPipe": (
            _BOOL,
            [
                _HANDLE,
                ctypes.c_void_p,
                _DWORD,
                ctypes.c_void_p,
                ctypes.POINTER(_DWORD),
                ctypes.c_void_p,
            ],
        ),
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
        "OpenProcess": (_HANDLE, [_DWORD, _BOOL, _DWORD]),
        "WaitForSingleObject": (_DWORD, [_HANDLE, _DWORD]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(k32, name)
        fn.restype, fn.argtypes = restype, argtypes
    return k32


def _last_error() -> int:
    return int(getattr(ctypes, "get_last_error")())  # noqa: B009 - not on POSIX


# ---- pipes with a deadline ---------------------------------------------------
def read_chunk(fd: int, deadline: float) -> bytes | None:
    import msvcrt

    handle = getattr(msvcrt, "get_osfhandle")(fd)  # noqa: B009 - not on POSIX
    avail = _DWORD(0)
    pause = 0.0005
    while True:
        if not _kernel32().PeekNamedPipe(handle, None, 0, None, ctypes.byref(avail), None):
            err = _last_error()
            if err == _ERROR_BROKEN_PIPE:
                return b""  # the worker closed its end: it is gone
            raise OSError(errno.EIO, f"PeekNamedPipe failed (error {err})")
        if avail.value:
            return os.read(fd, min(avail.value, _CHUNK))
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.01)


def write_all(fd: int, data: bytes, deadline: float) -> bool:
    failure: list[OSError] = []

    def write() -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            failure.append(exc)

    writer = threading.Thread(target=write, daemon=True, name="hotload-pipe-writer")
    writer.start()
    writer.join(max(0.0, deadline - time.monotonic()))
    if writer.is_alive():
        return False  # it ends when the caller kills the reader
    if failure:
        exc = failure[0]
        raise (
            BrokenPipeError(exc.errno, exc.strerror)
            if exc.errno
            in (
                errno.EPIPE,
                errno.EINVAL,
            )
            else exc
        )
    return True


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


def poller(*fds: int) -> Any:
    raise NotImplementedError("isolated plugins need a POSIX host (poll on the channel)")


def apply_limits(limits: dict[str, int]) -> None:
    raise NotImplementedError("isolated plugins need a POSIX host (rlimits)")


def fd_usage() -> tuple[int, int] | None:
    return None  # no RLIMIT_NOFILE: handles are limited by memory
