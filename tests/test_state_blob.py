"""A bogus ``on_unload`` blob (a bad pointer, a size past the buffer, 1<<40,
SIZE_MAX) is a refused reload, never a crash of the host: preflight runs the
new build's ``on_unload`` and refuses it, and the host copies the blob through
the kernel (EFAULT instead of SIGSEGV) under a size cap."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hotload import HookError, Host
from hotload._artifact.loader import MAX_STATE_SIZE, copy_state
from hotload._platform import _proc_posix
from hotload._process.preflight import PreflightError

from conftest import xp_source

HANDOVER = "*state = snap;\n    *size = sizeof snap;"

BOGUS = {  # case -> (on_unload body, what the refusal must say)
    "pointer 0x10": (
        "*state = (const void *)0x10; *size = 16;",
        r"pointer 0x10, size 16 bytes \(Bad address at 0x10\)",
    ),
    "256 MiB past a small buffer": (
        "*state = snap; *size = (size_t)256 << 20;",
        r"state blob of 268435456 bytes at 0x[0-9a-f]+, over the 64 MiB limit",
    ),
    "1<<40": (
        "*state = snap; *size = (size_t)1 << 40;",
        r"state blob of 1099511627776 bytes at 0x[0-9a-f]+, over the 64 MiB limit",
    ),
    "SIZE_MAX": (
        "*state = snap; *size = SIZE_MAX;",
        rf"state blob of {2**64 - 1} bytes at 0x[0-9a-f]+, over the 64 MiB limit",
    ),
    "runs into a guard page": (  # under the cap, readable at first, then not
        "static char *p; long pg = sysconf(_SC_PAGESIZE);"
        " if (!p) { p = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE,"
        " MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); mprotect(p + pg, pg, PROT_NONE); }"
        " *state = p; *size = 2 * pg;",
        r"pointer (0x[0-9a-f]+), size 8192 bytes \(Bad address at 0x[0-9a-f]+000\)",
    ),
    "NULL with a size": ("*state = NULL; *size = 8;", r"NULL state pointer with a size of 8"),
}


def bogus_source(body: str) -> str:
    src = xp_source(mult=7, version="2.0.0-bogus")
    assert HANDOVER in src
    head = (
        "#define _DEFAULT_SOURCE\n#include <stdint.h>\n#include <sys/mman.h>\n#include <unistd.h>\n"
    )
    return head + src.replace(HANDOVER, body)


@pytest.mark.parametrize("case", sorted(BOGUS))
def test_preflight_refuses_a_build_whose_on_unload_blob_is_bad(
    tmp_path: Path, cc, case: str
) -> None:
    body, pattern = BOGUS[case]
    with Host(tmp_path / "w", preflight_timeout=30) as host:
        xp = host.load(cc(xp_source(mult=2), "good"))
        assert xp.reward(1, 0) == 2
        with pytest.raises(PreflightError, match=pattern) as err:
            host.reload("xp", cc(bogus_source(body), "bogus"))
        assert err.value.step == "on_unload"
        assert "on_unload of xp 2.0.0-bogus" in str(err.value)
        assert xp.reward(1, 0) == 2 and [v.seq for v in host.versions("xp")] == [1]


HOST_SCRIPT = """
import json, sys
from hotload import HookError, Host
good, bogus, fixed, work = sys.argv[1:5]
with Host(work, preflight=False) as host:
    xp = host.load(good)
    host.reload("xp", bogus)  # without preflight the bogus build goes live
    out = {"tag": xp.version_tag()}
    try:
        host.reload("xp", fixed)  # ...and its on_unload runs in the host here
    except HookError as exc:
        out["error"], out["type"] = str(exc), type(exc).__name__
    out["after"] = xp.version_tag()
    out["seqs"] = [v.seq for v in host.versions("xp")]
print(json.dumps(out))
"""


@pytest.mark.parametrize("case", sorted(BOGUS))
def test_host_refuses_a_bogus_blob_instead_of_crashing(tmp_path: Path, cc, case: str) -> None:
    """In a child process: before the fix the host died with SIGSEGV/SIGBUS, or
    raised MemoryError/OverflowError."""
    body, pattern = BOGUS[case]
    good = cc(xp_source(mult=2), "good")
    bogus = cc(bogus_source(body), "bogus")
    fixed = cc(xp_source(mult=3, version="3.0.0"), "fixed")
    proc = subprocess.run(
        [sys.executable, "-c", HOST_SCRIPT, str(good), str(bogus), str(fixed), str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"host died (rc {proc.returncode}): {proc.stderr[-1500:]}"
    out = json.loads(proc.stdout)
    assert out["type"] == "HookError", out
    assert f"{bogus}: on_unload of xp 2.0.0-bogus" in out["error"]
    assert out["error"].endswith("it keeps serving")
    assert re.search(pattern, out["error"]), out["error"]
    assert out["tag"] == out["after"] == 7  # the bogus build keeps serving
    assert out["seqs"][-1] == 2


# ---- the copy itself ---------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
_libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PAGE = mmap.PAGESIZE


def _guarded() -> int:
    """Two pages, the first full of b"x", the second unreadable (PROT_NONE)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    base = _libc.mmap(None, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    ctypes.memset(base, ord("x"), PAGE)
    assert _libc.mprotect(base + PAGE, PAGE, 0) == 0
    return int(base)


COPIERS = {
    "process_vm_readv": _proc_posix.read_memory,
    "write() to a file": _proc_posix._copy_via_file,
}


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_copy_reads_good_memory_and_refuses_bad(how: str) -> None:
    copy = COPIERS[how]
    good = ctypes.create_string_buffer(b"hello state", 11)
    assert copy(ctypes.addressof(good), 11) == b"hello state"
    with pytest.raises(OSError) as err:
        copy(0x10, 16)
    assert err.value.errno == errno.EFAULT
    base = _guarded()
    try:
        assert copy(base, PAGE) == b"x" * PAGE
        with pytest.raises(OSError) as err:
            copy(base, 2 * PAGE)
        assert err.value.errno == errno.EFAULT
        assert f"at 0x{base + PAGE:x}" in str(err.value)  # where it stopped
    finally:
        _libc.munmap(base, 2 * PAGE)


def test_copy_state_refuses_over_the_cap_before_reading() -> None:
    with pytest.raises(HookError, match=r"over the 64 MiB limit \(max_state_size\)"):
        copy_state("x.so: on_unload of x 1", 0x10, MAX_STATE_SIZE + 1)
    with pytest.raises(HookError, match=r"state blob of 101 bytes .* over the 100 bytes limit"):
        copy_state("x.so: on_unload of x 1", 0x10, 101, max_size=100)
    assert copy_state("x.so: on_unload of x 1", 0, 0) == b""
    assert MAX_STATE_SIZE == 64 << 20
