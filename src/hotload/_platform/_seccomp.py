"""A seccomp-bpf filter built here, with no library: the system calls a
sandboxed worker may not make (Linux, x86-64 and AArch64).

The program is the classic shape (Chrome's and Docker's filters have it):
check the architecture (a foreign one, such as a 32-bit ``int 0x80`` call
from a 64-bit process, kills the process), refuse x32 numbers on x86-64,
then compare the call number against the deny list and answer ``EPERM``; a
few calls are judged by an argument (``clone`` with a namespace flag,
``prctl(PR_SET_CHILD_SUBREAPER)``, a signal aimed at a guarded pid); every
other call is allowed.  ``clone3`` answers ``ENOSYS``, so the C library falls
back to ``clone``, whose flags the filter can read.

The numbers are the kernel's (``arch/x86/entry/syscalls/syscall_64.tbl``, the
generic table for AArch64); ``tests/test_sandbox.py`` checks them against
libseccomp's own tables where that library is installed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterable

# -- the system call numbers --------------------------------------------------------
_COMMON = {  # the same number on every architecture (added after 5.1)
    "pidfd_send_signal": 424,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_open": 434,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "landlock_create_ruleset": 444,
    "landlock_add_rule": 445,
    "landlock_restrict_self": 446,
}
X86_64 = {
    **_COMMON,
    "ptrace": 101,
    "syslog": 103,
    "setsid": 112,
    "capget": 125,
    "capset": 126,
    "rt_sigqueueinfo": 129,
    "personality": 135,
    "pivot_root": 155,
    "prctl": 157,
    "chroot": 161,
    "acct": 163,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "tkill": 200,
    "lookup_dcookie": 212,
    "tgkill": 234,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "rt_tgsigqueueinfo": 297,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "seccomp": 317,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "kill": 62,
    "clone": 56,
}
AARCH64 = {
    **_COMMON,
    "ptrace": 117,
    "syslog": 116,
    "setsid": 157,
    "capget": 90,
    "capset": 91,
    "rt_sigqueueinfo": 138,
    "personality": 92,
    "pivot_root": 41,
    "prctl": 167,
    "chroot": 51,
    "acct": 89,
    "mount": 40,
    "umount2": 39,
    "swapon": 224,
    "swapoff": 225,
    "reboot": 142,
    "init_module": 105,
    "delete_module": 106,
    "quotactl": 60,
    "tkill": 130,
    "lookup_dcookie": 18,
    "tgkill": 131,
    "kexec_load": 104,
    "add_key": 217,
    "request_key": 218,
    "keyctl": 219,
    "unshare": 97,
    "rt_tgsigqueueinfo": 240,
    "perf_event_open": 241,
    "name_to_handle_at": 264,
    "open_by_handle_at": 265,
    "setns": 268,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "finit_module": 273,
    "seccomp": 277,
    "kexec_file_load": 294,
    "bpf": 280,
    "userfaultfd": 282,
    "kill": 129,
    "clone": 220,
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
TABLES = {"x86_64": X86_64, "aarch64": AARCH64}


def arch() -> str | None:
    """This machine's architecture if the filter knows its numbers."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return machine if machine in TABLES and struct.calcsize("P") == 8 else None


def numbers() -> dict[str, int]:
    """The system call numbers of this architecture (empty where unknown)."""
    a = arch()
    return TABLES[a] if a else {}


# -- what a sandboxed worker may not do ------------------------------------------------
#: Always refused: another process's memory, tracing, the kernel's keyrings,
#: BPF and perf, new namespaces and mounts (the sandbox's own are set up
#: before the filter), kernel modules, io_uring (its operations would not pass
#: through this filter).
DENY = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "perf_event_open",
    "bpf",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "name_to_handle_at",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
#: The calls that send a signal to a pid given as the first argument.
SIGNALS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_PR_SET_CHILD_SUBREAPER = 36

# -- classic BPF ------------------------------------------------------------------------
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (low 32 bits of arg 0)
_X32_BIT = 0x40000000


def _errno(err: int) -> int:
    return _RET_ERRNO | (err & 0xFFFF)


class _Program:
    """Instructions with symbolic jump targets, resolved at the end (a
    classic BPF jump is an 8-bit forward offset)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def ret(self, value: int) -> None:
        self.op(_RET, value)

    def assemble(self) -> bytes:
        out = b""
        for i, (code, jt, jf, k) in enumerate(self.code):
            offs = []
            for target in (jt, jf):
                if isinstance(target, str):
                    off = self.labels[target] - i - 1
                    if not 0 <= off <= 255:
                        raise ValueError(f"seccomp filter: a jump of {off} to {target}")
                    offs.append(off)
                else:
                    offs.append(int(target))  # type: ignore[call-overload]
            out += struct.pack("=HBBI", code, offs[0], offs[1], k)
        return out


def build(
    deny: Iterable[str] = DENY,
    *,
    also: Iterable[str] = (),
    guard: Iterable[int] = (),
    own_group: int | None = None,
    strict: bool = True,
    namespaces: bool = False,
) -> bytes:
    """The filter program for this architecture (``ValueError`` where its
    numbers are unknown).  ``also``: more calls refused (``setsid`` in the
    fallback sandbox).  ``guard``: pids no signal may reach (the host and the
    worker's guard, when no pid namespace hides them); with it, a signal to
    -1 or to a process group other than ``own_group`` is refused too.
    ``strict=False``: only the calls named (no ``clone``/``prctl`` rules,
    ``clone3`` allowed): a filter a test uses to take namespaces away;
    ``namespaces`` adds the ``clone``/``clone3`` rules back to it (the
    sandbox also clones straight into new namespaces)."""
    a = arch()
    if a is None:
        raise ValueError(f"seccomp: no system call table for {platform.machine()}")
    table = TABLES[a]
    denied = sorted({table[n] for n in (*deny, *also) if n in table})
    guarded = sorted({p & 0xFFFFFFFF for p in guard})
    p = _Program()
    p.op(_LD_ABS, _ARCH)
    p.op(_JEQ, _AUDIT_ARCH[a], "native", 0)
    p.ret(RET_KILL_PROCESS)
    p.label("native")
    p.op(_LD_ABS, _NR)
    if a == "x86_64":
        p.op(_JGE, _X32_BIT, "deny", 0)
    if strict or namespaces:
        p.op(_JEQ, table["clone3"], "nosys", 0)
        p.op(_JEQ, table["clone"], "clone", 0)
    if strict:
        p.op(_JEQ, table["prctl"], "prctl", 0)
    if guarded:
        for name in SIGNALS:
            p.op(_JEQ, table[name], "signal", 0)
    for nr in denied:
        p.op(_JEQ, nr, "deny", 0)
    p.ret(RET_ALLOW)
    p.label("clone")  # clone(flags, ...): a new namespace is refused
    p.op(_LD_ABS, _ARG0)
    p.op(_JSET, _NAMESPACE_FLAGS, "deny", "allow")
    p.label("prctl")  # prctl(PR_SET_CHILD_SUBREAPER, ...): the tree stays as set up
    p.op(_LD_ABS, _ARG0)
    p.op(_JEQ, _PR_SET_CHILD_SUBREAPER, "deny", "allow")
    if guarded:
        p.label("signal")  # kill(pid, sig) and its kin: never a guarded pid
        p.op(_LD_ABS, _ARG0)
        for pid in guarded:
            p.op(_JEQ, pid, "deny", 0)
        p.op(_JEQ, 0xFFFFFFFF, "deny", 0)  # -1: every process we may signal
        p.op(_JSET, 0x80000000, 0, "allow")  # positive: a process, allowed
        if own_group is not None:  # negative: a process group, only our own
            p.op(_JEQ, (-own_group) & 0xFFFFFFFF, "allow", "deny")
        else:
            p.ret(_errno(errno.EPERM))
    p.label("allow")
    p.ret(RET_ALLOW)
    p.label("deny")
    p.ret(_errno(errno.EPERM))
    p.label("nosys")
    p.ret(_errno(errno.ENOSYS))
    return p.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def install(program: bytes) -> None:
    """Load ``program`` for this thread and its future children (the caller
    has set ``PR_SET_NO_NEW_PRIVS`` and runs no other thread yet);
    ``OSError`` when the kernel refuses it."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {os.strerror(err)}")
