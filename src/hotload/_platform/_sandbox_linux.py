"""The worker's sandbox on Linux: namespaces, a file system of its own, and
the processes that hold it together.

The process the host starts (``P``, the *guard*) never runs plugin code.  It
sets up the sandbox, forks the worker that will, relays how that worker
ended (the host reads a crash's signal from ``P``'s exit status), and ends
with its host.  Two layouts:

**Namespaces** (the default wherever the kernel allows unprivileged user
namespaces)::

    host -> P (guard) -> I (pid 1 of a new pid namespace) -> W (the worker)

``P`` clones ``I`` straight into new user, pid and mount namespaces
(``clone`` with their flags, ``_cloned``): ``I`` is the new namespace's pid
1, maps its uid to itself (``setgroups`` denied), or for a root host
becomes ``nobody`` once ``P``, which alone may write that map, mapped it.
(Where that clone is refused but ``unshare`` is not, ``P`` forks ``C``,
which enters the namespaces, forks ``I`` and exits: ``I`` is re-parented
to ``P``, a subreaper.)  ``I`` builds the
worker's file system: a fresh tmpfs root holding read-only binds of
``/usr``, ``/etc``, ``/lib*``, ``/sys`` and the directories the worker's
Python imports from, a fresh ``/proc`` of the new pid namespace, a ``/dev``
with only ``null``, ``zero``, ``full``, ``random``, ``urandom`` and a
private ``/dev/shm``, and a private ``/tmp``; then it ``pivot_root``s into
it (one ``pivot_root``, one unmount) and forks ``W`` (pid 2: a plugin's
``abort()`` or ``raise()`` must work
as outside, which a pid 1 would ignore).  ``I`` waits for ``W`` and tells
``P`` how it ended; when ``I`` exits, or when ``P`` does (the socket between
them closes), the kernel kills everything in the namespace.  From inside,
the host, its ``/proc`` entry, the work directory, the control sockets,
``/tmp``, ``/run`` and every home directory do not exist.

**Fallback** (user namespaces refused: ``user.max_user_namespaces=0``, a
container's seccomp profile, an LSM)::

    host -> P (guard, subreaper) -> W (the worker)

``W`` becomes ``nobody`` when the host is root; Landlock keeps it from
tracing, reading or signalling anything outside its domain and from writing
any file, and the seccomp filter also refuses ``setsid``.  ``P`` watches its
host through a pidfd and kills its whole tree when the host or ``W`` ends
(the descendants of a subreaper cannot leave its tree).

Either way ``W`` then locks itself down (``_lockdown_linux``) and returns to
the worker's code, which says hello with the protections in force.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import select
import signal
import socket
import struct
import sys
import time
from typing import NoReturn

from . import _lockdown_linux as lock
from . import _sibling_linux as _sibling

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MNT_DETACH = 2
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
EXIT_PARENT_GONE = 70  # as _proc_posix: the host is gone
_SETUP_TIMEOUT = 30.0
#: The system's directories a worker sees (read-only), when they exist.
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys")
DEVICES = ("null", "zero", "full", "random", "urandom")
_TMPFS_SIZE = "size=64m,nr_inodes=16k"


def enter(host: int) -> tuple[tuple[str, ...], str]:
    """Called first thing in a worker (one thread, its modules imported):
    set up the sandbox; returns in the worker that serves, with the
    protections in force and, when the namespaces could not be had, why."""
    lock.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    lock.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != host:
        os._exit(EXIT_PARENT_GONE)
    lock.set_dumpable(False)  # nothing in the sandbox may read or trace the guard
    why = ""
    try:
        if _namespaced(host):
            return tuple(_worker(namespaced=True, host=host)), ""
    except OSError as exc:
        why = str(exc)
    _fallback(host)
    return tuple(_worker(namespaced=False, host=host)), why or "namespaces unavailable"


# -- the namespaces ------------------------------------------------------------------------
def _namespaced(host: int) -> bool:
    """In P: build the namespaced sandbox.  Returns True in W; in P it never
    returns once the sandbox stands (P relays, then exits), and raises
    ``OSError`` saying why when it could not be built (nothing is left)."""
    if not _sibling.probe() and _cloned():  # I cloned straight into its namespaces: no C
        return True  # (False: that clone was refused; unshare may not be)
    to_p, to_kids = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c = os.fork()
    if c == 0:  # C
        to_p.close()
        _child(to_kids)  # returns only in W
        return True
    to_kids.close()
    while True:
        got = _read(to_p, _SETUP_TIMEOUT)
        if got != b"M":
            break
        _map_for(c, to_p)  # a root host: C asked us to map it to nobody
    if not got.startswith(b"K"):
        _setup_failed(c, to_p, got)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(c, 0)  # C exited once it forked I: no zombie beside the worker
    _relay(to_p)
    raise AssertionError("unreachable")


def _setup_failed(pid: int, to_p: socket.socket, got: bytes) -> NoReturn:
    """The namespaces' setup said no (``E`` and why) or nothing: end what it
    started, and say why as the ``OSError`` the caller falls back on."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    _kill_tree()
    _reap_all(1.0)
    to_p.close()
    why = got[1:].decode(errors="replace") if got.startswith(b"E") else "no answer"
    raise OSError(f"user namespaces: {why}")


def _cloned() -> bool:
    """``_namespaced`` with ``I`` cloned by P straight into new user, pid and
    mount namespaces (``clone``, not ``fork`` then ``unshare``): one process
    and one wake-up fewer on the way to a worker (no ``C``; issue 24 item
    4).  A root host's P drops its supplementary groups first (I inherits
    none), and maps ``nobody`` into I's namespace at once.  False when the
    clone itself was refused (nothing was started); as ``_namespaced``
    otherwise."""
    to_p, to_kids = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    root = os.geteuid() == 0
    try:
        if root:
            os.setgroups([])  # before "setgroups deny" makes it impossible, for I
        i = _sibling.clone(_CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNS)
    except OSError:
        to_p.close()
        to_kids.close()
        return False
    if i == 0:  # I
        to_p.close()
        _cloned_init(to_kids, root)  # returns only in W
        return True
    to_kids.close()
    if root:
        _map_for(i, to_p)
    got = _read(to_p, _SETUP_TIMEOUT)
    if not got.startswith(b"K"):
        _setup_failed(i, to_p, got)
    _relay(to_p)
    raise AssertionError("unreachable")


def _cloned_init(sock: socket.socket, root: bool) -> None:
    """I, cloned into its namespaces: what ``_child`` did (take what the
    worker's root will hold, map its uid, or for a root host become nobody
    once P mapped it), then ``_init``.  Returns only in W."""
    global _dropped
    try:
        plan = _plan()  # as root still, for a root host
        uid, gid = _nobody() if root else (os.geteuid(), os.getegid())
        if root:
            if _read(sock, _SETUP_TIMEOUT) != b"m":
                raise OSError(0, "the guard could not map nobody into the user namespace")
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)  # no uid 0 inside: the namespace's capabilities stay
            _dropped = True
        else:
            lock.set_dumpable(True)  # else /proc/self/uid_map is root's, not ours to write
            _map_ids("self", uid, gid)
    except OSError as exc:
        _say(sock, _why(exc))
        os._exit(0)
    _init(sock, plan)


def _map_ids(proc: str, uid: int, gid: int) -> None:
    """Map ``uid``/``gid`` (and only them) into the user namespace of
    ``/proc/<proc>`` (``self``, or a child's pid), groups denied first as
    the kernel requires of an unprivileged writer."""
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        with open(f"/proc/{proc}/{name}", "w") as fh:
            fh.write(text)


def _map_for(c: int, sock: socket.socket) -> None:
    """P, real root: map ``nobody`` (and only it) into C's new user
    namespace, which C cannot do itself (it holds no capability over ours)."""
    uid, gid = _nobody()
    try:
        _map_ids(str(c), uid, gid)
    except OSError:
        return  # C sees no answer and reports the failure
    _say(sock, b"m")


def _child(sock: socket.socket) -> None:
    """C: enter the namespaces, take what the worker's root will hold (as
    root still, for a root host, which then becomes nobody), fork I, exit.
    Returns only in W."""
    global _dropped
    try:
        root = os.geteuid() == 0
        if root:
            os.setgroups([])  # before "setgroups deny" makes it impossible
        else:
            lock.set_dumpable(True)  # else /proc/self/uid_map is root's, not ours to write
        uid, gid = _nobody() if root else (os.geteuid(), os.getegid())
        if lock.libc().unshare(_CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNS) != 0:
            _fail("unshare(CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNS)")
        plan = _plan()  # in the new mount namespace, where it will be bound
        if root:
            _say(sock, b"M")
            if _read(sock, _SETUP_TIMEOUT) != b"m":
                raise OSError(0, "the guard could not map nobody into the user namespace")
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)  # no uid 0 inside: the namespace's capabilities stay
            _dropped = True
        else:
            _map_ids("self", uid, gid)
        i = os.fork()
    except OSError as exc:
        _say(sock, _why(exc))
        os._exit(0)
    if i == 0:
        _init(sock, plan)  # returns only in W
        return
    os._exit(0)


def _init(sock: socket.socket, plan: list[tuple[str, int, str]]) -> None:
    """I, pid 1 of the new pid namespace: build W's file system, fork W, wait
    for it; the namespace ends when this process does."""
    try:
        _build_root(plan)
        w = os.fork()
    except OSError as exc:
        _say(sock, _why(exc))
        os._exit(0)
    if w == 0:
        sock.close()
        return
    lock.set_dumpable(False)  # W may not read or trace its init
    _close_fds(keep={0, 1, 2, sock.fileno()})
    _say(sock, b"K")
    status = _wait_for(w, sock)
    _say(sock, b"S" + struct.pack("<i", status))
    os._exit(0)  # the kernel kills whatever W left in the namespace


def _wait_for(w: int, peer: socket.socket) -> int:
    """W's wait status; exit at once (the namespace with us) when ``peer``,
    the guard, is gone."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    poller = select.poll()
    poller.register(peer.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        while True:  # reap: W, and orphans of W's tree if W let them go
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                break
            if pid == w:
                return status
        for fd, _ in poller.poll():
            if fd == peer.fileno():
                os._exit(EXIT_PARENT_GONE)  # the guard is gone: so is the host
            with contextlib.suppress(OSError):
                os.read(wake_r, 512)


def _relay(sock: socket.socket) -> None:
    """P, once the namespace stands: wait for I's report of W's end, then
    end the same way (the host reads the crash from our status)."""
    _close_fds(keep={0, 1, 2, sock.fileno()})
    # I reports and exits at once: wait for its exit (one wake-up), then read
    # the report it left (waking for the report, then again for the exit, was
    # a process wake-up more between a crash and the restart, issue 24 item 4)
    waited = _reap_all(None)
    got = _read(sock, 0)
    status = struct.unpack("<i", got[1:5])[0] if got.startswith(b"S") and len(got) >= 5 else None
    _end_like(status if status is not None else waited)


# -- the worker's file system ----------------------------------------------------------------
def _plan() -> list[tuple[str, int, str]]:
    """In P, before anything changes: what W's root holds, as ``(kind, fd,
    path)``: ``bind`` a directory or file (an ``O_PATH`` descriptor opened
    now, bound later through ``/proc/self/fd``: a root host's sandbox is
    ``nobody`` by then), ``link`` a symlink (fd -1: its target is read at
    build time), ``dev`` a device."""
    plan: list[tuple[str, int, str]] = []
    for top in SYSTEM_DIRS:
        if os.path.islink(top):
            plan.append(("link", -1, top))
        elif os.path.isdir(top):
            plan.append(("bind", _opath(top), top))
    plan += [("bind", _opath(p), p) for p in _prepared or _needed_paths()]
    plan += [
        ("dev", _opath("/dev/" + d), "/dev/" + d) for d in DEVICES if os.path.exists("/dev/" + d)
    ]
    return [item for item in plan if item[1] != -2]


def _opath(path: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -2  # gone, or out of reach: left out


def _build_root(plan: list[tuple[str, int, str]]) -> None:
    """In I: a tmpfs root holding only ``plan``, a fresh ``/proc``, a small
    ``/dev`` and a private ``/tmp``, then ``pivot_root`` into it and the old
    root unmounted (``pivot_root(".", ".")``, as runc does).

    One pivot and one unmount: each unmount waits for the kernel's RCU grace
    period (8-16 ms each, measured under load); bubblewrap's sequence (a
    tmpfs base, a first pivot into it, the old root unmounted there, a
    second pivot into the new root and the base unmounted) paid two, for
    the same tree (issue 24 item 4)."""
    libc = lock.libc()
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    new = "/tmp"  # a tmpfs over the old tree's /tmp: the new root, a mount point itself
    _mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755")
    os.makedirs(new + "/tmp")  # first: a Python found under /tmp is bound on top of it
    _mount("tmpfs", new + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=1777,{_TMPFS_SIZE}")
    for kind, fd, path in plan:
        if kind == "link":
            with contextlib.suppress(OSError):
                os.symlink(os.readlink(path), new + path)
        elif kind == "bind" and not os.path.lexists(new + path):
            _bind(fd, new + path)
    os.makedirs(new + "/proc", exist_ok=True)
    _mount("proc", new + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY)
    _devices(new, [(fd, path) for kind, fd, path in plan if kind == "dev"])
    for _, fd, _ in plan:
        if fd >= 0:
            os.close(fd)
    os.chdir(new)
    _pivot(".", ".")  # the old root is now stacked on top of the new one, at "/"
    if libc.umount2(b".", _MNT_DETACH) != 0:
        _fail("umount2(the old root)")
    os.chdir("/")
    _setattr("/", _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, recursive=False)


_prepared: list[str] = []  # _needed_paths(), computed once in the zygote (``prepare``)
_zygote = 0  # the pid of the zygote that forked this worker: no signal of the fallback reaches it


def prepare() -> None:
    """In the worker zygote: compute the directories every sandbox binds
    (``_needed_paths``, 25-50 ms of ``realpath`` calls over the imported
    modules), once; each worker it forks imported nothing since.  And the
    zygote's pid, which the fallback's seccomp filter keeps the worker's
    signals from (as the host's and its guard's)."""
    global _prepared, _zygote
    _prepared = _needed_paths()
    _zygote = os.getpid()


def _needed_paths() -> list[str]:
    """What the worker's Python needs besides the system directories: its
    prefixes and every ``sys.path`` entry a module was imported from (the
    worker has imported what it runs), plus a few files ``/etc`` links to
    elsewhere (``/etc/resolv.conf`` into ``/run``), resolved, outermost first."""
    want: set[str] = set()
    for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        want.add(os.path.realpath(p))
    want.add(os.path.dirname(os.path.realpath(sys.executable)))
    entries = [os.path.realpath(e) for e in sys.path if e and os.path.exists(e)]
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        real = os.path.realpath(f)
        inside = [e for e in entries if real.startswith(e.rstrip("/") + "/")]
        want.add(max(inside, key=len) if inside else os.path.dirname(real))
    for f in ("/etc/resolv.conf", "/etc/localtime", "/etc/hosts"):
        real = os.path.realpath(f)
        if os.path.exists(real) and not real.startswith("/etc/"):
            want.add(real)
    out: list[str] = []
    tops = tuple(d + "/" for d in SYSTEM_DIRS)
    for p in sorted(want):
        if p == "/" or p in SYSTEM_DIRS or p.startswith(tops) or not os.path.exists(p):
            continue
        if not any(p.startswith(o.rstrip("/") + "/") for o in out):
            out.append(p)
    return out


def _devices(new: str, devices: list[tuple[int, str]]) -> None:
    dev = new + "/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", _MS_NOSUID | _MS_NOEXEC, "mode=0755,size=64k")
    for fd, path in devices:
        with open(new + path, "w"):
            pass
        _mount(_fd_path(fd), new + path, None, _MS_BIND)
        _setattr(new + path, _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NOEXEC, recursive=False)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(dev + "/shm", 0o755)
    _mount("tmpfs", dev + "/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=1777,{_TMPFS_SIZE}")
    _setattr(dev, _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NOEXEC, recursive=False)


def _fd_path(fd: int) -> str:
    """The path of an ``O_PATH`` descriptor, through the original /proc
    (before the pivot), where the magic link needs no permission on the
    directories above it."""
    return f"/proc/self/fd/{fd}"


def _bind(fd: int, dst: str) -> None:
    """A read-only bind of what ``fd`` names (a directory or a file) at ``dst``."""
    if os.path.isdir(_fd_path(fd)):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "w"):
            pass
    _mount(_fd_path(fd), dst, None, _MS_BIND | _MS_REC)
    _setattr(dst, _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, recursive=True)


def _setattr(path: str, attrs: int, *, recursive: bool) -> None:
    """Add mount flags (``mount_setattr``, Linux 5.12+; else a remount of the
    top mount only)."""
    attr = struct.pack("<QQQQ", attrs, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    flags = _AT_RECURSIVE if recursive else 0
    try:
        lock.syscall("mount_setattr", -100, path.encode(), flags, buf, ctypes.c_size_t(32))
    except OSError:
        ms = (_MS_RDONLY if attrs & _MOUNT_ATTR_RDONLY else 0) | _MS_NOSUID
        ms |= (_MS_NODEV if attrs & _MOUNT_ATTR_NODEV else 0) | (
            _MS_NOEXEC if attrs & _MOUNT_ATTR_NOEXEC else 0
        )
        _mount(None, path, None, _MS_REMOUNT | _MS_BIND | ms)


def _mount(
    src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    enc = [s.encode() if s is not None else None for s in (src, dst, fstype, data)]
    if lock.libc().mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        _fail(f"mount {src or ''} on {dst}")


def _pivot(new: str, old: str) -> None:
    lock.syscall("pivot_root", new.encode(), old.encode())


def _why(exc: OSError) -> bytes:
    return b"E" + (exc.strerror or str(exc)).encode(errors="replace")


def _fail(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


# -- the fallback ---------------------------------------------------------------------------
def _fallback(host: int) -> None:
    """In P: fork W with no namespaces; P guards its tree.  Returns in W."""
    lock.prctl(_PR_SET_PDEATHSIG, 0)  # P must outlive the host long enough to end the tree
    try:
        host_fd: int | None = os.pidfd_open(host)
    except (AttributeError, OSError):
        host_fd = None
        lock.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != host:
        os._exit(EXIT_PARENT_GONE)
    global _guarded
    _guarded = host_fd is not None  # else the tree may outlive a host killed with -9
    w = os.fork()
    if w == 0:
        if host_fd is not None:
            os.close(host_fd)
        _drop_root()
        return
    _close_fds(keep={0, 1, 2} | ({host_fd} if host_fd is not None else set()))
    status = _guard(w, host_fd)
    _kill_tree()
    _reap_all(2.0)
    _end_like(status)


def _guard(w: int, host_fd: int | None) -> int | None:
    """P in the fallback: W's wait status, or None when the host ended first."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    if host_fd is not None:
        poller.register(host_fd, select.POLLIN)
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                break
            if pid == w:
                return status
        for fd, _ in poller.poll(500 if host_fd is None else None):
            if fd == host_fd:
                return None
            with contextlib.suppress(OSError):
                os.read(wake_r, 512)


def _kill_tree() -> None:
    """SIGKILL every descendant of this process (a subreaper: none can have
    left its tree), until none is left."""
    for _ in range(50):
        kids = _descendants(os.getpid())
        if not kids:
            return
        for pid in kids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _reap_all(0.1)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError, ValueError):
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as fh:
                    kids = [int(k) for k in fh.read().split()]
                found += kids
                todo += kids
    return found


# -- the worker ------------------------------------------------------------------------------
def _worker(*, namespaced: bool, host: int) -> list[str]:
    """In W: lock down; the protections in force."""
    lock.set_dumpable(True)  # its own /proc entries must stay its own
    lock.prctl(_PR_SET_CHILD_SUBREAPER, 1)  # what the plugin forks stays in its tree
    done = ["user-ns", "pid-ns", "mount-ns", "fs-view"] if namespaced else []
    if not namespaced and _guarded:
        done.append("guard")
    if _dropped:
        done.append("uid-nobody")
    zygote = (_zygote,) if _zygote else ()  # it forked this worker, and forks the next ones
    guard = () if namespaced else (host, os.getppid(), *zygote)
    return done + lock.lockdown(fallback=not namespaced, guard=guard)


_dropped = False  # this worker's host is root; it runs as nobody
_guarded = False  # the fallback's guard watches the host through a pidfd


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return pw.pw_uid, pw.pw_gid


def _drop_root() -> None:
    """A root host's worker runs as ``nobody``: uid 0 without capabilities
    still owns every root file, device and socket on the machine."""
    global _dropped
    if os.geteuid() != 0:
        return
    uid, gid = _nobody()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _dropped = True


# -- small helpers ----------------------------------------------------------------------------
def _say(sock: socket.socket, msg: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.send(msg)


def _read(sock: socket.socket, timeout: float | None) -> bytes:
    """One message; ``b""`` at EOF or after ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except OSError:
        return b""


def _reap_all(timeout: float | None) -> int | None:
    """Reap every child until none is left (or ``timeout``, None: no
    bound); the last wait status seen (None: none).

    Between tries it waits for SIGCHLD itself (blocked first, so one sent
    between a try and the wait stays pending), not a fixed sleep: the guard
    reaps the namespace's init as soon as it is gone, and a restart after a
    crash waits for the guard (a 5 ms sleep here was most of the 7.5 ms from
    a sandboxed worker's crash to its guard's exit, issue 24 item 4)."""
    last = None
    end = time.monotonic() + (timeout or 0.0)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return last
            if pid:
                last = status
                continue
            if timeout is None:  # blocked above: one sent since the try is pending
                signal.sigwaitinfo([signal.SIGCHLD])  # no wake-up while the worker lives
                continue
            left = end - time.monotonic()
            if left <= 0:
                return last
            signal.sigtimedwait([signal.SIGCHLD], min(left, 0.05))  # 50 ms: never stuck
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _end_like(status: int | None) -> None:
    """Exit as the worker did: by the same signal, or with the same code."""
    if status is None:
        os._exit(EXIT_PARENT_GONE)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(Exception):
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the guard's core is no news
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(0.1)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _close_fds(keep: set[int]) -> None:
    """Close every descriptor but ``keep``: the channel is the worker's alone
    (its end of file must come when the worker dies, not when we do)."""
    low = 0
    for fd in sorted(keep):
        if fd > low:  # closerange(n, n) would close everything (close_range(n, n - 1))
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(low + 1, os.sysconf("SC_OPEN_MAX")))
