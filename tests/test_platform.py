"""The platform split, proven on Linux.

* ``import hotload`` in a process where ``fcntl``, ``select``, ``termios`` and
  the POSIX modules of ``_platform`` cannot be imported and ``sys.platform``
  is ``"win32"`` works, and picks the Windows implementation of every concern;
* ``_platform._windows`` runs a load / swap / unload against a recording fake
  kernel32 (tests/fake_kernel32.py), and the calls it makes are the ones the
  Windows loader needs: flags, search directories, one FreeLibrary per load;
* ``_workdir`` runs on the Windows directory lock (msvcrt.locking, faked the
  same way) and still tells a live host's directory from a crashed one's;
* mypy checks every implementation against its Protocol (``_platform/__init__``).

The wine harness in test_windows.py runs the same Win32 calls for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fake_kernel32 import SRC, V1, V2, WORK, FakeKernel32, run_swap
from hotload._artifact import workdir as _workdir
from hotload._errors import HotloadError, LoadError
from hotload._platform import _lock_windows, _windows

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
FLAGS = 0x1100  # LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_DEFAULT_DIRS
QUIET = 0x8001  # SEM_FAILCRITICALERRORS | SEM_NOOPENFILEERRORBOX
BLOCKED = (
    "fcntl",
    "select",
    "termios",
    "hotload._platform._posix",
    "hotload._platform._lock_posix",
)


def _expected_calls(h1: int, h2: int) -> list[list[Any]]:
    def load(path: str) -> list[list[Any]]:
        return [
            ["AddDllDirectory", SRC],  # the source dir, for the plugin's own DLLs...
            ["SetThreadErrorMode", QUIET],  # ...no modal box for a bad image...
            ["LoadLibraryExW", path, None, FLAGS],  # ...never PATH or the cwd...
            ["SetThreadErrorMode", 0],
            ["RemoveDllDirectory", SRC],  # ...and the search path is put back at once
        ]

    return [
        *load(V1),
        ["GetProcAddress", h1, "double_xp"],
        ["GetModuleFileNameW", h1, 260],
        *load(V2),
        ["GetProcAddress", h2, "double_xp"],
        ["GetProcAddress", h2, "nope"],
        ["FreeLibrary", h1],
        ["GetModuleHandleExW", 2, V1],  # 2: UNCHANGED_REFCOUNT, the probe holds nothing
        ["GetModuleHandleExW", 2, V2],
        ["FreeLibrary", h2],
        ["GetModuleHandleExW", 2, V2],
    ]


def _check_swap(out: dict[str, Any]) -> None:
    h1, h2 = out["h1"], out["h2"]
    assert h1 != h2 and h1 > 2**32  # a handle above 4 GiB survives intact
    assert out["fn1"] == h1 + 0x1000 and out["fn2"] == h2 + 0x1000
    assert out["missing"] is None
    assert out["path1"] == V1  # verbatim \\?\ form from the loader, stripped
    assert out["v1_after_close"] is False and out["v2_while_live"] is True
    assert out["v2_after_close"] is False
    assert out["loaded"] == {}
    calls = [list(c) for c in out["calls"]]
    assert calls == _expected_calls(h1, h2)
    assert [c[1] for c in calls if c[0] == "FreeLibrary"] == [h1, h2]  # each image freed once


# ---- import hotload as Windows would ------------------------------------------------

PRETEND_WINDOWS = textwrap.dedent(
    """
    import json, sys
    # First pass on the real platform: the stdlib and third-party modules hotload
    # uses, imported as this OS has them (subprocess, selectors, watchdog...).
    # hotload's names load on first use (PEP 562): touch every one.
    import hotload
    [getattr(hotload, n) for n in [*hotload.__all__, "fleet"]]
    for name in [m for m in sys.modules if m == "hotload" or m.startswith("hotload.")]:
        del sys.modules[name]
    # Second pass: hotload's own modules again, with POSIX-only modules gone and
    # the platform claiming to be Windows.
    for name in BLOCKED:
        sys.modules[name] = None  # "import fcntl" now raises ImportError
    sys.platform = "win32"
    import hotload
    [getattr(hotload, n) for n in [*hotload.__all__, "fleet"]]
    from hotload import _platform
    sys.path.insert(0, TESTS)
    from fake_kernel32 import V1, V2, FakeKernel32, install, run_swap

    k32 = FakeKernel32(files={V1, V2}, exports={b"double_xp"})
    install(_platform.dl, k32)
    out = run_swap(_platform.dl, k32)
    out["chosen"] = {
        n: getattr(_platform, n).__name__ for n in ("dl", "binfmt", "dirlock")
    }
    out["suffix"] = _platform.dl.SUFFIX
    out["workers"] = _platform.proc.WORKERS  # no worker processes: preflight is off by default
    out["blocked_still_blocked"] = [n for n in BLOCKED if sys.modules.get(n) is not None]
    out["hotload_modules"] = sorted(m for m in sys.modules if m.startswith("hotload"))
    print(json.dumps(out))
    """
)


def test_import_hotload_as_windows_picks_the_windows_layer() -> None:
    """``import hotload`` needs nothing POSIX-only, and the Windows loader
    runs its load / swap / unload there (against the recording fake)."""
    script = f"BLOCKED = {BLOCKED!r}\nTESTS = {str(TESTS)!r}\n" + PRETEND_WINDOWS
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=TESTS,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["chosen"] == {
        "dl": "hotload._platform._windows",
        "binfmt": "hotload._platform._pe",
        "dirlock": "hotload._platform._lock_windows",
    }
    assert out["suffix"] == ".dll"
    assert out["workers"] is False
    assert out["blocked_still_blocked"] == []
    assert "hotload._host" in out["hotload_modules"]  # the whole package imported
    _check_swap(out)


# ---- the Windows loader against the recording fake, in this process ----------------


@pytest.fixture
def k32(monkeypatch: pytest.MonkeyPatch) -> FakeKernel32:
    fake = FakeKernel32(files={V1, V2}, exports={b"double_xp"})
    monkeypatch.setattr(_windows, "_kernel32", lambda: fake)
    monkeypatch.setattr(_windows, "_last_error", fake.get_last_error)
    return fake


def test_load_swap_unload_call_sequence(k32: FakeKernel32) -> None:
    _check_swap(run_swap(_windows, k32))


def test_failed_load_names_the_missing_dependency_and_restores_state(
    k32: FakeKernel32,
) -> None:
    broken = WORK + "\\uses_dep.v1.cc33.dll"
    k32.missing_dep.add(broken.lower())
    with pytest.raises(LoadError) as err:
        _windows.open_image(broken, search_dir=SRC)
    msg = str(err.value)
    assert msg.startswith(f"{broken}: LoadLibraryExW failed: a DLL it depends on was not found")
    assert SRC in msg and "not PATH" in msg
    # the search path and the thread's error mode are put back on failure too
    assert k32.dll_dirs == {} and k32.error_mode == 0
    assert [c[0] for c in k32.calls] == [
        "AddDllDirectory",
        "SetThreadErrorMode",
        "LoadLibraryExW",
        "SetThreadErrorMode",
        "RemoveDllDirectory",
        "GetFileAttributesW",  # 126 for the file itself or for a DLL it imports? the file is there
    ]


def test_missing_copy_is_named_as_such(k32: FakeKernel32) -> None:
    gone = WORK + "\\double_xp.v9.ee55.dll"
    with pytest.raises(LoadError, match=r"v9\.ee55\.dll: LoadLibraryExW failed: the file does not"):
        _windows.open_image(gone)


def test_dependencies_next_to_the_copy_add_no_search_directory(k32: FakeKernel32) -> None:
    handle = _windows.open_image(V1, search_dir=WORK)
    assert [c[0] for c in k32.calls] == [
        "SetThreadErrorMode",
        "LoadLibraryExW",
        "SetThreadErrorMode",
    ]
    _windows.close_image(handle, V1)
    assert k32.loaded() == {}


def test_double_free_is_a_load_error_naming_the_file(k32: FakeKernel32) -> None:
    handle = _windows.open_image(V1)
    _windows.close_image(handle, V1)
    with pytest.raises(LoadError, match=r"double_xp\.v1\.aa11\.dll: FreeLibrary failed: .*error 6"):
        _windows.close_image(handle, V1)
    assert [c for c in k32.calls if c[0] == "FreeLibrary"] == [("FreeLibrary", handle)] * 2


def test_same_copy_loaded_twice_needs_two_frees(k32: FakeKernel32) -> None:
    """The Windows loader counts references per module: a second open of the
    same path returns the same handle, and the image stays until both go."""
    a = _windows.open_image(V1)
    b = _windows.open_image(V1)
    assert a == b
    _windows.close_image(a, V1)
    assert _windows.loader_has(V1)
    _windows.close_image(b, V1)
    assert not _windows.loader_has(V1)


def test_long_paths_are_passed_verbatim_and_read_back_plain(k32: FakeKernel32) -> None:
    deep = "C:\\" + "d" * 250 + "\\double_xp.v3.dd44.dll"
    k32.files.add(deep.lower())
    handle = _windows.open_image(deep)
    assert k32.calls[1] == ("LoadLibraryExW", "\\\\?\\" + deep, None, FLAGS)
    assert _windows.image_path(handle) == deep  # grew the buffer past MAX_PATH
    sizes = [c[2] for c in k32.calls if c[0] == "GetModuleFileNameW"]
    assert sizes == [260, 520]
    assert _windows.loader_has(deep)


def test_non_ascii_export_is_not_looked_up(k32: FakeKernel32) -> None:
    handle = _windows.open_image(V1)
    assert _windows.symbol(handle, "dóuble") is None
    assert not [c for c in k32.calls if c[0] == "GetProcAddress"]


# ---- the Windows directory lock, driving the real _workdir ---------------------------


class FakeMsvcrt:
    """msvcrt.locking with Windows semantics across fds of this process: a
    second lock of byte 0 of the same file fails at once (LK_NBLCK)."""

    LK_UNLCK, LK_NBLCK = 0, 2

    def __init__(self) -> None:
        self.held: dict[tuple[int, int], int] = {}
        self.calls: list[tuple[str, int]] = []

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        assert nbytes == 1 and os.lseek(fd, 0, os.SEEK_CUR) == 0  # byte 0, as filelock does
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        self.calls.append(("lock" if mode == self.LK_NBLCK else "unlock", fd))
        if mode == self.LK_NBLCK:
            if key in self.held:
                raise PermissionError(13, "Permission denied")  # what the CRT raises
            self.held[key] = fd
        elif self.held.get(key) == fd:
            del self.held[key]
        else:
            raise PermissionError(13, "Permission denied")


@pytest.fixture
def msvcrt(monkeypatch: pytest.MonkeyPatch) -> FakeMsvcrt:
    fake = FakeMsvcrt()
    monkeypatch.setattr(_lock_windows, "_msvcrt", lambda: fake)
    monkeypatch.setattr(_workdir, "dirlock", _lock_windows)
    return fake


def test_workdir_on_the_windows_lock_sweeps_only_dead_hosts(
    tmp_path: Path, msvcrt: FakeMsvcrt
) -> None:
    base = tmp_path / "work"
    live = _workdir.WorkDir(base)
    live.write_copy("double_xp", 1, b"MZ live", ".dll")
    crashed = _workdir.WorkDir(base)
    crashed.write_copy("double_xp", 1, b"MZ crashed", ".dll")
    _lock_windows.release(crashed._lock_fd)  # the OS drops a dead process's lock
    assert _workdir.sweep(base) == 1
    assert live.path.exists() and not crashed.path.exists()
    assert len(msvcrt.held) == 1  # the sweep's own lock on the dead .lock was released
    live.close()
    assert msvcrt.held == {} and not live.path.exists()


def test_windows_privacy_rule_refuses_a_reparse_point(tmp_path: Path, msvcrt: FakeMsvcrt) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "work"
    link.symlink_to(target)
    with pytest.raises(HotloadError, match=r"work: work directory is a symlink"):
        _workdir.WorkDir(link)
    st = os.stat_result((0o40777, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    assert _lock_windows.not_private(st) is None  # mode bits mean nothing on Windows
    assert "reparse point" in (_lock_windows.not_private(_Junction()) or "")


class _Junction:
    st_mode = 0o40755
    st_file_attributes = _lock_windows.FILE_ATTRIBUTE_REPARSE_POINT


# ---- the contract is checked by mypy -------------------------------------------------


def test_every_implementation_conforms_to_its_protocol() -> None:
    """``_platform/__init__`` assigns each POSIX and Windows module to its
    Protocol under TYPE_CHECKING; mypy fails on any drift."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:  # pragma: no cover
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    proc = subprocess.run(
        [mypy, "src/hotload/_platform"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
