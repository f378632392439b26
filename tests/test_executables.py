"""An executable is refused before dlopen (issue 9 item 13): PIE, static-PIE,
ET_EXEC, and a Windows .exe; ``hotload inspect`` says the same."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hotload import Host
from hotload._errors import InvalidPluginError
from hotload._platform import _elf as elfcheck
from hotload._platform import _pe as pecheck

from conftest import have

MAIN = "int main(void) { return 0; }\n"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF platform")


def _link(tmp_path: Path, name: str, *flags: str) -> Path:
    src = tmp_path / "main.c"
    src.write_text(MAIN)
    out = tmp_path / name
    res = subprocess.run(["gcc", *flags, str(src), "-o", str(out)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"gcc {' '.join(flags)} unavailable here: {res.stderr.strip()[-200:]}")
    return out


@pytest.mark.skipif(not have("gcc"), reason="needs gcc")
@pytest.mark.parametrize(
    "flags, kind",
    [
        (("-pie", "-fPIE"), "a PIE"),
        (("-static-pie",), "a static-PIE"),
        (("-no-pie",), "ELF type ET_EXEC"),
    ],
    ids=["pie", "static-pie", "et-exec"],
)
def test_an_executable_is_refused_before_dlopen(
    tmp_path: Path, flags: tuple[str, ...], kind: str
) -> None:
    exe = _link(tmp_path, "prog.so", *flags)  # the suffix a watcher or a user would give it
    with pytest.raises(InvalidPluginError) as err:
        elfcheck.check(exe.read_bytes(), str(exe))
    assert str(err.value).startswith(f"{exe}: is an executable, not a shared library ({kind}")
    with Host(tmp_path / "work") as host, pytest.raises(InvalidPluginError, match="an executable"):
        host.load(exe, name="prog", signatures={"main": "int32_t(void)"})


def test_libraries_that_can_also_be_run_are_still_libraries() -> None:
    """libc.so.6 and ld.so have a program interpreter or an entry point, and a
    soname: they stay libraries."""
    for lib in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"):
        if Path(lib).exists():
            elfcheck.check(Path(lib).read_bytes(), lib)


def test_hotload_inspect_bin_ls_says_executable() -> None:
    ls = shutil.which("ls")
    assert ls is not None
    res = subprocess.run(
        [sys.executable, "-m", "hotload", "inspect", ls], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1, res.stdout
    assert "is an executable, not a shared library" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(not have("x86_64-w64-mingw32-gcc"), reason="needs mingw-w64")
def test_a_windows_exe_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "main.c"
    src.write_text(MAIN)
    exe = tmp_path / "prog.dll"
    subprocess.run(["x86_64-w64-mingw32-gcc", str(src), "-o", str(exe)], check=True)
    with pytest.raises(InvalidPluginError, match=r"prog\.dll: a Windows executable \(\.exe\)"):
        pecheck.check(exe.read_bytes(), str(exe), any_machine=True)
