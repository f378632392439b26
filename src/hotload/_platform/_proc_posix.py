"""POSIX worker processes (``WorkerProcess`` in ``_proc_api``): a state-blob
copy through the kernel, a worker that dies with its host, its process tree,
the poll of its channel, and its limits.

Why the kernel copies the blob: a plugin's ``on_unload`` hands over a raw
pointer and size.  Reading them with ``memcpy`` (what ``ffi.buffer`` does)
turns a bad pointer into a SIGSEGV of the host; ``process_vm_readv`` on our
own pid, or ``write()`` of the range into a file, make the kernel do the
reading, and a bad address comes back as ``EFAULT`` instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PARENT_POLL = 0.5  # seconds between parent checks in the worker's watchdog
EXIT_PARENT_GONE = 70  # a worker whose host is gone exits with this code
WORKERS = True  # worker processes (preflight, isolation) run here


# ---- copying a state blob without faulting ---------------------------------------
class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


_vm_readv_works = True  # cleared when the kernel (or a seccomp filter) refuses it


def _process_vm_readv() -> Any | None:
    fn = getattr(_libc(), "process_vm_readv", None) if _vm_readv_works else None
    if fn is not None and fn.restype is not ctypes.c_ssize_t:
        fn.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(_IOVec),
            ctypes.c_ulong,
            ctypes.POINTER(_IOVec),
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        fn.restype = ctypes.c_ssize_t
    return fn


def _fault(address: int, err: int) -> OSError:
    return OSError(err, f"{os.strerror(err)} at 0x{address:x}")


def read_memory(address: int, size: int) -> bytes:
    if size == 0:
        return b""
    global _vm_readv_works
    fn = _process_vm_readv()
    if fn is not None:
        try:
            return _copy_vm_readv(fn, address, size)
        except NotImplementedError:
            _vm_readv_works = False
    return _copy_via_file(address, size)


def _copy_vm_readv(fn: Any, address: int, size: int) -> bytes:
    """``process_vm_readv`` on our own pid; NotImplementedError when the kernel
    or a seccomp filter does not allow it."""
    buf = ctypes.create_string_buffer(size)
    base, done, pid = ctypes.addressof(buf), 0, os.getpid()
    while done < size:
        local = _IOVec(base + done, size - done)
        remote = _IOVec(address + done, size - done)
        n = fn(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in (errno.ENOSYS, errno.EPERM):
                raise NotImplementedError
            raise _fault(address + done, err)
        if n == 0:  # a partial copy stopped at an unreadable page
            raise _fault(address + done, errno.EFAULT)
        done += n
    return buf.raw


def _copy_via_file(address: int, size: int) -> bytes:
    """Fallback: ``write()`` the range into an anonymous file (EFAULT, not a
    crash, on a bad address), then read it back."""
    fd = _scratch_fd()
    try:
        _move(_libc_io("write"), fd, address, size, errno.EFAULT)
        parts, got = [], 0
        while got < size:
            part = os.pread(fd, size - got, got)
            if not part:
                raise _fault(address + got, errno.EIO)
            parts.append(part)
            got += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def write_memory(address: int, data: bytes | bytearray | memoryview) -> None:
    """The kernel writes: ``data`` goes into an anonymous file, and ``read()``
    brings it to ``address``; a read-only or unmapped page there is ``EFAULT``
    (the kernel's copy to user memory checks the page), where a ``memmove``
    would be the host's SIGSEGV."""
    size = len(data)
    if size == 0:
        return
    fd = _scratch_fd()
    try:
        view, put = memoryview(data).cast("B"), 0
        while put < size:
            put += os.write(fd, view[put:])
        os.lseek(fd, 0, os.SEEK_SET)
        _move(_libc_io("read"), fd, address, size, errno.EIO)
    finally:
        os.close(fd)


def _libc_io(name: str) -> Any:
    """libc's ``read`` or ``write``, taking a raw address (ctypes, not os: the
    address is the plugin's, and the kernel must be the one to touch it)."""
    fn = getattr(_libc(), name)
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_ssize_t
    return fn


def _move(io: Any, fd: int, address: int, size: int, short: int) -> None:
    """``size`` bytes between ``fd`` and ``address`` by ``io`` (read or
    write), again on EINTR; a bad page is ``OSError`` naming its address,
    and an early end (0 bytes) the errno ``short``."""
    done = 0
    while done < size:
        n = io(fd, address + done, size - done)
        if n < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            raise _fault(address + done, err)
        if n == 0:
            raise _fault(address + done, short)
        done += n


def _scratch_fd() -> int:
    """An anonymous file, gone when its descriptor is closed."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("hotload-state", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as tmp:
        return os.dup(tmp.fileno())  # unlinked already; the dup keeps it until closed


# ---- a worker that dies with its host ------------------------------------------
def die_with_parent(parent_pid: int) -> None:
    """``PR_SET_PDEATHSIG`` on Linux (the kernel kills us even while plugin code
    holds the main thread), then a getppid check (the parent may have died
    before the prctl) and a watchdog thread for systems without it.  The host
    must spawn the worker from a thread that lives as long as the worker:
    Linux sends the signal when the *thread* that forked us exits."""
    die_with_parent_signal(parent_pid)
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), daemon=True, name="hotload-parent-watch"
    ).start()


def die_with_parent_signal(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        prctl = _libc().prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_gone(parent_pid):
        os._exit(EXIT_PARENT_GONE)


def _watch_parent(parent_pid: int) -> None:
    while not parent_gone(parent_pid):
        time.sleep(_PARENT_POLL)
    os._exit(EXIT_PARENT_GONE)


def parent_gone(parent_pid: int) -> bool:
    return os.getppid() != parent_pid  # re-parented to init or a subreaper


def stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False  # no /proc, or the process is gone
    fields = stat[stat.rfind(b")") + 1 :].split()  # the name may contain ") "
    return bool(fields) and fields[0] in (b"T", b"t")


def exit_signal(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:  # a real-time signal has no name in the enum
        return f"signal {-returncode}"


def spawn_options() -> dict[str, Any]:
    return {"start_new_session": True}


# ---- a worker's process tree ---------------------------------------------------------
# A plugin may fork: a child that sleeps holding every descriptor it inherited
# (the channel too), or a double-forked daemon in its own session.  The worker
# leads its own session and process group (``spawn_options``) and is the
# subreaper of its descendants, so while it lives every one of them is in its
# tree; stopping a version kills that tree.  Killing the group catches the
# children that stayed in it even after the worker died; the host remembers
# the others (``descendants`` on its supervisor's ticks) by pid and start time.
def adopt_orphans() -> None:
    if sys.platform.startswith("linux"):
        prctl = _libc().prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
        prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _start_time(pid: int, *, zombies: bool = False) -> int | None:
    """The process's start time (clock ticks since boot); None if it is gone
    or (unless ``zombies``) a zombie (a zombie holds nothing and cannot be
    killed)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or (fields[0] in (b"Z", b"X") and not zombies):
        return None
    return int(fields[19])


def start_time(pid: int) -> int | None:
    return _start_time(pid)


def wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while True:
        now = _start_time(pid, zombies=True)
        if now is None or (start is not None and now != start):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.002)


def wait_exit(popen: Any, timeout: float) -> bool:
    """``Popen.wait(timeout)`` polls with sleeps that double from 0.5 ms: a
    worker that ended 3.6 ms after the wait began was seen at 7.5 ms, and a
    restart after a crash waits for that (issue 24 item 4).  A pidfd (Linux
    5.3+) wakes the waiter when the process ends.  Polled in slices, so a
    process reaped meanwhile by another thread (its pid free for reuse) ends
    the wait too."""
    if popen.returncode is None and timeout > 0 and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(popen.pid)
        except OSError:
            fd = -1  # already reaped by another thread, or an old kernel: Popen.wait
        if fd >= 0:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                end = time.monotonic() + timeout
                while popen.poll() is None and not poller.poll(
                    max(0, min(50, int((end - time.monotonic()) * 1000) + 1))
                ):
                    if time.monotonic() >= end:
                        return False
            finally:
                os.close(fd)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _children_of(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                kids += [int(k) for k in fh.read().split()]
        except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: scan
            return _scan_children(pid)
        except OSError:
            continue  # the thread ended meanwhile
    return kids


def _scan_children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def descendants(pid: int) -> dict[int, int]:
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for kid in _children_of(todo.pop()):
            start = _start_time(kid)
            if kid not in found and start is not None:
                found[kid] = start
                todo.append(kid)
    return found


def kill_tree(pid: int, known: dict[int, int], *, walk: bool) -> None:
    victims = dict(known)
    if walk:
        victims.update(descendants(pid))
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    for kid, start in victims.items():
        if _start_time(kid) == start:
            with contextlib.suppress(OSError):
                os.kill(kid, signal.SIGKILL)


def end_descendants(timeout: float) -> int:
    victims = descendants(os.getpid())
    for kid in victims:
        with contextlib.suppress(OSError):
            os.kill(kid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # ours to reap: we are their subreaper
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.005)
    return len(victims)


def sized_memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def poller(*fds: int) -> Any:
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return p


def apply_limits(limits: dict[str, int]) -> None:
    if "address_space" in limits:
        n = int(limits["address_space"])
        resource.setrlimit(resource.RLIMIT_AS, (n, n))
    if "cpu_seconds" in limits:
        n = int(limits["cpu_seconds"])
        # soft n: SIGXCPU ends it (its default action), as documented; the hard limit a
        # second later is the kernel's SIGKILL for a plugin that catches or ignores SIGXCPU
        # (with both at n, the kernel sends SIGKILL first: issue 19 item 10)
        resource.setrlimit(resource.RLIMIT_CPU, (n, n + 1))
    if "nice" in limits:
        os.nice(int(limits["nice"]))


def trim_heap() -> bool:
    fn = getattr(_libc(), "malloc_trim", None)  # glibc; musl has none
    if fn is None:
        return False
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    fn(0)
    return True


def fd_usage() -> tuple[int, int] | None:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    for listing in ("/proc/self/fd", "/dev/fd"):  # Linux; macOS and the BSDs
        try:
            entries = os.listdir(listing)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return soft, soft  # not one fd left to list them with
            continue
        return len(entries) - 1, soft  # not the fd that listed the directory
    return None


# ---- the sandbox -----------------------------------------------------------------------
def sandbox(host_pid: int) -> tuple[tuple[str, ...], str]:
    if not sys.platform.startswith("linux"):
        return (), f"no sandbox on {sys.platform}"
    from . import _sandbox_linux

    return _sandbox_linux.enter(host_pid)


def fork_ready(*, sandbox: bool) -> str:
    if not sys.platform.startswith("linux"):
        return f"no worker zygote on {sys.platform}"
    from . import _sibling_linux

    why = _sibling_linux.probe()
    if not why and sandbox:
        from . import _sandbox_linux

        _sandbox_linux.prepare()
    return why


def fork_sibling() -> int:
    from . import _sibling_linux

    return _sibling_linux.fork_sibling()


def set_cmdline(args: list[str]) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    from . import _sibling_linux

    return _sibling_linux.set_cmdline(args)


def worker_pid(pid: int) -> int:
    """Down the chain of only children: a sandbox's guard, its init, its
    worker (none of them has forked anything else before the worker's hello)."""
    for _ in range(4):
        kids = [k for k in _children_of(pid) if _start_time(k) is not None]
        if len(kids) != 1:
            break
        pid = kids[0]
    return pid


def in_worker(pid: int) -> bool:
    """Up the ancestry of ``pid`` (one ``stat`` read a level; the command
    line only of a Python process, as every worker is), to init or to us."""
    me = os.getpid()
    names = (b"python", os.path.basename(sys.executable).encode()[:15])  # a worker's comm
    for _ in range(64):
        if pid <= 1 or pid == me:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            close = stat.rfind(b")")
            comm = stat[stat.find(b"(") + 1 : close]
            if any(n and n in comm for n in names):
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"hotload._process.worker" in fh.read().split(b"\0")[1:4]:
                        return True
        except OSError:
            return False
        pid = int(stat[close + 2 :].split()[1])
    return False
