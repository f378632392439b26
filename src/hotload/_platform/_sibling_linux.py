"""A fork whose child is its parent's sibling (Linux): ``clone(CLONE_PARENT)``.

The worker zygote (``_process/zygote``) forks every new worker, but the host
must stay each worker's parent: it reaps it, reads how it ended (the signal
of a crash) from its wait status, kills it by a pid that cannot be reused
before it is reaped, and the worker's parent-death signal must follow the
host, not the zygote.  ``clone`` with ``CLONE_PARENT`` gives the child the
zygote's own parent; a zygote that dies, or is stopped, later changes
nothing for the workers it forked.

Python has no ``os.clone``, so this is the system call through ctypes, with
what ``os.fork`` wraps around ``fork()``: ``PyOS_BeforeFork`` (the import
lock, ``os.register_at_fork`` hooks) before, ``PyOS_AfterFork_Child`` or
``_Parent`` after; the GIL is held throughout (``PyDLL``).  And what glibc's
``fork()`` does that a raw ``clone`` does not: the kernel writes the child's
thread id into the thread descriptor (``CLONE_CHILD_SETTID``), else the
child's ``pthread_self()`` would still name the zygote's thread (its
``pthread_setaffinity_np`` would move the zygote).  Where that field is in
``struct pthread`` is not public: ``probe`` finds it, once, as the int equal
to the thread id whose change changes what ``pthread_getcpuclockid`` (a
function of that field alone) returns, and must find exactly one.

Single-threaded callers only: the zygote is one thread by design (a fork
copies only the calling thread; another thread's locks would stay held).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import threading
from typing import Any

from . import _seccomp

_CLONE_PARENT = 0x00008000
_CLONE_CHILD_CLEARTID = 0x00200000
_CLONE_CHILD_SETTID = 0x01000000
_SCAN = 4096  # bytes of the thread descriptor searched for its tid field


@functools.lru_cache(maxsize=1)
def _lib() -> Any:
    lib = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held in the call
    lib.syscall.restype = ctypes.c_long
    lib.pthread_self.restype = ctypes.c_void_p
    lib.pthread_self.argtypes = []
    lib.pthread_getcpuclockid.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    lib.pthread_getcpuclockid.restype = ctypes.c_int
    return lib


def _clock_of_self() -> int | None:
    clk = ctypes.c_int()
    lib = _lib()
    if lib.pthread_getcpuclockid(lib.pthread_self(), ctypes.byref(clk)) != 0:
        return None
    return clk.value


_offset: int | None = None  # of the tid in this thread's descriptor, once probed


def probe() -> str:
    """Find where the thread descriptor keeps the thread id; "" when found
    (a sibling fork can be made here), else why not."""
    global _offset
    if _offset is not None:
        return ""
    if not one_thread():
        return "more than one thread"
    if "clone" not in _seccomp.numbers():
        return "no clone() number for this architecture"
    try:
        lib = _lib()
        me = int(lib.pthread_self())
        tid = threading.get_native_id()
        base = _clock_of_self()
    except (OSError, AttributeError) as exc:
        return f"no thread descriptor to probe: {exc}"
    if base is None:
        return "pthread_getcpuclockid() failed"
    found = []
    for off in range(0, _SCAN, 4):
        field = ctypes.c_int.from_address(me + off)
        if field.value != tid:
            continue
        field.value = tid + 1  # our own descriptor, one thread: nobody reads it meanwhile
        moved = _clock_of_self() != base
        field.value = tid
        if moved:
            found.append(off)
    if len(found) != 1:
        return f"the thread id field of the C library's thread descriptor ({len(found)} found)"
    _offset = found[0]
    return ""


def one_thread() -> bool:
    """This process runs one thread (Python's and the kernel's count: a C
    library may start threads Python does not know of)."""
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    return threading.active_count() == 1 and tasks == 1


def fork_sibling() -> int:
    """Fork a child whose parent is this process's parent: 0 in the child,
    its pid in this process; ``OSError`` as the kernel gave it.  ``probe``
    first."""
    return clone(_CLONE_PARENT)


def clone(flags: int) -> int:
    """``fork()`` with more ``clone`` flags (``CLONE_PARENT``, new
    namespaces: the sandbox's init is cloned straight into its namespaces):
    0 in the child, its pid here; ``OSError`` as the kernel gave it.
    ``probe`` first (else ``ENOSYS``)."""
    if _offset is None:
        raise OSError(38, "clone() before a successful probe()")  # ENOSYS
    if not one_thread():  # a fork would copy only this thread: others' locks stay held
        raise OSError(35, "clone() in a process with more than one thread")  # EDEADLK
    lib = _lib()
    nr = _seccomp.numbers()["clone"]
    flags |= _CLONE_CHILD_SETTID | _CLONE_CHILD_CLEARTID | signal.SIGCHLD
    ctid = ctypes.c_void_p(int(lib.pthread_self()) + _offset)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    # clone(flags, stack, parent_tid, child_tid, tls) on x86-64; (flags, stack,
    # parent_tid, tls, child_tid) on AArch64
    x86 = _seccomp.arch() == "x86_64"
    args = (None, None, ctid, None) if x86 else (None, None, None, ctid)
    pid = int(lib.syscall(ctypes.c_long(nr), ctypes.c_ulong(flags), *args))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone(0x{flags:x}): {os.strerror(err)}")
    return pid


def set_cmdline(args: list[str]) -> bool:
    """Make ``/proc/self/cmdline`` (what ``ps`` shows, and what a plugin
    reading its own command line finds) read ``args``, written over this
    process's own argument area as setproctitle does; False when they do not
    fit in it (the zygote is started with room to spare)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rfind(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: fields 48, 49
    except (OSError, ValueError, IndexError):
        return False
    data = b"\0".join(a.encode() for a in args) + b"\0"
    if not start or len(data) > end - start:
        return False
    left = end - start - len(data)
    if left >= 2:  # the rest as one blank argument (as the zygote's own last one)
        data += b" " * (left - 1) + b"\0"
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)
    return True
