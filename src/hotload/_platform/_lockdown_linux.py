"""The last step into a sandbox, in the worker process itself (Linux): the
kernel's own restrictions, each kept for the rest of the process's life and
inherited by everything it forks.

- ``PR_SET_NO_NEW_PRIVS``: no ``execve`` can raise privileges again (set-uid
  programs, file capabilities), and it lets an unprivileged process load
  seccomp filters;
- every capability dropped: effective, permitted, inheritable, ambient and the
  bounding set (in a user namespace the worker holds them over that namespace
  only; a root host's worker has already become ``nobody``);
- Landlock (``landlock(7)``): a domain that cannot ptrace, read or write the
  memory of any process outside it (so not its host, nor the sandbox's own
  guard), and with ABI 6 cannot signal one nor connect to its abstract unix
  sockets; in the fallback sandbox (no user namespace) it also refuses every
  file write and every read under ``/dev`` but a few harmless devices;
- a seccomp filter (``_seccomp``).

Each step reports the name of the protection it put in force;
``lockdown`` returns them, and the host shows them (``VersionInfo.sandbox``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from typing import Any

from . import _seccomp

_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522

# landlock(7)
_LL_CREATE_RULESET_VERSION = 1
_LL_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_WRITES = sum(1 << b for b in (4, 5, 6, 7, 8, 9, 10, 11, 12))  # remove and make anything
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_FS_MAKE_DEVICES = (1 << 6) | (1 << 11)  # MAKE_CHAR, MAKE_BLOCK
_SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1  # ABI 6
#: Devices a fallback-sandboxed worker may still open (read; write: the first three).
SAFE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


@functools.lru_cache(maxsize=1)
def libc() -> Any:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    lib.prctl.restype = ctypes.c_int
    lib.syscall.restype = ctypes.c_long
    return lib


def prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    if libc().prctl(option, arg, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def syscall(name: str, *args: Any) -> int:
    """A raw system call by name (this architecture's number); ``OSError``."""
    nr = _seccomp.numbers().get(name)
    if nr is None:
        raise OSError(38, f"{name}: no system call number here")  # ENOSYS
    rc = int(libc().syscall(ctypes.c_long(nr), *args))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return rc


def set_dumpable(on: bool) -> None:
    """A process that is not dumpable has its ``/proc`` files owned by root
    and cannot be traced or read by a process of the same uid."""
    with contextlib.suppress(OSError):
        prctl(_PR_SET_DUMPABLE, 1 if on else 0)


# -- capabilities ---------------------------------------------------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capget() -> int:
    head, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    syscall("capget", ctypes.byref(head), ctypes.byref(data))
    return sum(d.effective | d.permitted | d.inheritable for d in data)


def drop_capabilities() -> bool:
    """Drop every capability, the bounding set and the ambient set included;
    whether none is left."""
    for cap in range(64):  # needs CAP_SETPCAP, so before the capset below
        if libc().prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:
            break  # EINVAL: past the last capability this kernel knows
    with contextlib.suppress(OSError):
        prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    head, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    with contextlib.suppress(OSError):
        syscall("capset", ctypes.byref(head), ctypes.byref(data))
    try:
        return _capget() == 0
    except OSError:
        return False


# -- Landlock -------------------------------------------------------------------------
class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none, or disabled)."""
    try:
        return syscall(
            "landlock_create_ruleset", None, ctypes.c_size_t(0), _LL_CREATE_RULESET_VERSION
        )
    except OSError:
        return 0


def landlock(*, fallback: bool) -> list[str]:
    """Put this process in a new Landlock domain; the protections it gives.
    ``fallback``: no mount namespace hides the file system, so Landlock
    refuses writes everywhere and reads under ``/dev`` itself."""
    abi = landlock_abi()
    if abi < 1:
        return []
    handled = _FS_MAKE_DEVICES
    if fallback:
        handled = _FS_WRITE_FILE | _FS_READ_FILE | _FS_WRITES
        handled |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
        handled |= _FS_IOCTL_DEV if abi >= 5 else 0
    scoped = _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX if abi >= 6 else 0
    attr = _RulesetAttr(handled, 0, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = syscall("landlock_create_ruleset", ctypes.byref(attr), ctypes.c_size_t(size), 0)
    try:
        if fallback:
            _fallback_rules(fd, abi)
        syscall("landlock_restrict_self", fd, 0)
    finally:
        os.close(fd)
    done = ["landlock"]  # ptrace and /proc/<pid>/mem of anything outside the domain
    if scoped:
        done += ["landlock-signal", "landlock-unix"]
    if fallback:
        done.append("landlock-fs")
    return done


def _fallback_rules(ruleset: int, abi: int) -> None:
    """Reads everywhere but under /dev; writes nowhere but the harmless devices."""
    trunc = _FS_TRUNCATE if abi >= 3 else 0
    for entry in os.listdir("/"):
        path = os.path.join("/", entry)
        if entry == "dev" or os.path.islink(path) or not os.path.isdir(path):
            continue  # a symlink (/lib -> usr/lib) reaches a directory allowed anyway
        _allow(ruleset, path, _FS_READ_FILE)
    for dev in SAFE_DEVICES:
        rw = dev in ("/dev/null", "/dev/zero", "/dev/full")
        _allow(ruleset, dev, _FS_READ_FILE | (_FS_WRITE_FILE | trunc if rw else 0))


def _allow(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        rule = _PathBeneath(access, fd)
        with contextlib.suppress(OSError):
            syscall("landlock_add_rule", ruleset, _LL_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
    finally:
        os.close(fd)


# -- everything, in order ----------------------------------------------------------------
def lockdown(*, fallback: bool, guard: tuple[int, ...] = ()) -> list[str]:
    """Restrict this process (single-threaded: Landlock and seccomp bind the
    calling thread and what it creates later); the protections in force.
    ``guard``: pids no signal may reach (the host and the guard, visible when
    no pid namespace hides them)."""
    done: list[str] = []
    prctl(_PR_SET_NO_NEW_PRIVS, 1)
    done.append("no-new-privs")
    if drop_capabilities():
        done.append("no-caps")
    with contextlib.suppress(OSError):  # an older or disabled Landlock: the others still hold
        done += landlock(fallback=fallback)
    if _seccomp.arch() is not None:
        extra = ("setsid",) if fallback else ()
        signal_scoped = "landlock-signal" in done
        program = _seccomp.build(
            also=extra,
            guard=() if signal_scoped else guard,
            own_group=os.getpgrp() if guard and not signal_scoped else None,
        )
        _seccomp.install(program)
        done.append("seccomp")
    return done
