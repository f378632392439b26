"""What kind of library it is, and who really keeps it mapped.

Issue 9 items 10 and 11: a Rust cdylib is named as Rust (not "C++
thread_local") with the fix that applies to it; a C++ library that libstdc++
bound a template instantiation into is reported as ``bound-by:libstdc++``,
not as "another dlopen handle".  Issue 10 item 5: ``describe`` is the one
reader, for ELF and PE alike, and hostile paths are refused without hanging.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hotload._errors import InvalidPluginError
from hotload._inspect import report as inspector

from conftest import ROOT, have

LINUX_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
SDK = ROOT / "native" / "include"

RUST_LIB = """
#[no_mangle]
pub extern "C" fn add(a: i64, b: i64) -> i64 { a + b }
"""

# At -O0, g++ emits basic_string::_M_construct<char const*> into the plugin as
# a weak, exported definition that libstdc++.so also has.
CXX_PLUGIN = """
#include <string>
extern "C" __attribute__((visibility("default"))) long greet(const char *who) {
    std::string s(who);
    s += "!";
    return (long)s.size();
}
"""

CHILD = """
import ctypes, _ctypes, json, os, shutil, sys
from hotload._inspect import leaks
from hotload._inspect import report as inspector

def mapped(path):
    st = os.stat(path)
    with open("/proc/self/maps") as fh:
        return any(line.split()[4:5] == [str(st.st_ino)] for line in fh)

lib, preload = sys.argv[1], sys.argv[2] == "preload"
already = any("libstdc++" in line for line in open("/proc/self/maps"))
if preload:
    ctypes.CDLL("libstdc++.so.6")
v1, v2 = lib + ".v1.so", lib + ".v2.so"
shutil.copyfile(lib, v1)
shutil.copyfile(lib, v2)
a = ctypes.CDLL(v1)
assert a.greet(b"hi") == 3
b = ctypes.CDLL(v2)          # the next version: it holds libstdc++ from now on
_ctypes.dlclose(a._handle)   # the old version's only handle
report = inspector.describe(lib)
found = leaks.leak_findings(report, 1, 1, loaded_as=v1) if mapped(v1) else []
print(json.dumps({
    "already": already,
    "v1_mapped": mapped(v1),
    "findings": [{"code": f.code, "message": f.message, "fix": f.fix} for f in found],
}))
"""


def _gxx(tmp_path: Path, name: str, *flags: str) -> Path:
    src = tmp_path / "greet.cpp"
    src.write_text(CXX_PLUGIN)
    out = tmp_path / f"lib{name}.so"
    subprocess.run(
        ["g++", "-fPIC", "-shared", "-O0", *flags, str(src), "-o", str(out)],
        check=True,
        timeout=120,
    )
    return out


def _child(lib: Path, mode: str = "plain") -> dict[str, object]:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(lib), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    if out["already"]:
        pytest.skip("this Python loads libstdc++ itself: the first plugin cannot be its binder")
    return out


# ---- item 10: the real binder ---------------------------------------------------


@pytest.mark.skipif(not (LINUX_GLIBC and have("g++")), reason="glibc and g++")
def test_libstdcxx_binding_into_the_first_version_is_named(tmp_path: Path) -> None:
    lib = _gxx(tmp_path, "greet")
    out = _child(lib)
    assert out["v1_mapped"], "glibc keeps v1: libstdc++ resolved _M_construct into it"
    (finding,) = out["findings"]  # type: ignore[misc]
    assert finding["code"] == "bound-by:libstdc++.so.6"
    assert "_M_construct<char const*>" in finding["message"]
    assert "libstdc++.so.6" in finding["message"]
    assert "ctypes.CDLL('libstdc++.so.6')" in finding["fix"]
    assert "--version-script" in finding["fix"]
    assert "another dlopen" not in json.dumps(finding)


@pytest.mark.skipif(not (LINUX_GLIBC and have("g++")), reason="glibc and g++")
def test_the_advised_fixes_really_unmap_the_first_version(tmp_path: Path) -> None:
    """Both fixes the finding gives work: libstdc++ loaded by the host first,
    or a version script that exports only the plugin's API."""
    assert _child(_gxx(tmp_path, "greet"), "preload")["v1_mapped"] is False
    script = tmp_path / "api.map"
    script.write_text("{ global: greet; local: *; };\n")
    hidden = _gxx(tmp_path, "greet_vs", f"-Wl,--version-script={script}")
    assert _child(hidden)["v1_mapped"] is False


@pytest.mark.skipif(not LINUX_GLIBC, reason="glibc")
def test_no_binder_found_falls_back_to_other_handle(tmp_path: Path) -> None:
    """A C library opened twice by someone else: no binding, no pin."""
    src = tmp_path / "p.c"
    src.write_text("int answer(void) { return 42; }\n")
    lib = tmp_path / "libp.so"
    subprocess.run(["gcc", "-fPIC", "-shared", str(src), "-o", str(lib)], check=True)
    code = textwrap.dedent(
        """
        import ctypes, sys
        from hotload._inspect import leaks
        from hotload._inspect import report as inspector
        ctypes.CDLL(sys.argv[1]); ctypes.CDLL(sys.argv[1])   # two handles, none closed
        report = inspector.describe(sys.argv[1])
        print(*[f.code for f in leaks.leak_findings(report, 1, 1, loaded_as=sys.argv[1])])
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(lib)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["other-handle"]


# ---- item 11: toolchains ----------------------------------------------------------


@pytest.fixture(scope="module")
def rust_cdylib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rustc = shutil.which("rustc")
    if rustc is None:
        pytest.skip("rustc not installed (CI should install a Rust toolchain)")
    out_dir = tmp_path_factory.mktemp("rust")
    src = out_dir / "lib.rs"
    src.write_text(RUST_LIB)
    out = out_dir / "libadd.so"
    res = subprocess.run(
        [rustc, "--crate-type", "cdylib", "-O", "--crate-name", "add", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CARGO_NET_OFFLINE": "true"},
    )
    assert res.returncode == 0, res.stderr
    return out


def test_a_rust_cdylib_is_named_rust_with_the_unload_safe_fix(rust_cdylib: Path) -> None:
    report = inspector.describe(rust_cdylib)
    assert report.toolchain == "rust"
    assert report.compiler and report.compiler.startswith("rustc ")
    assert "add" in report.dynamic_exports
    tls = [f for f in report.findings if f.code == "tls-dtor"]
    assert tls, [f.code for f in report.findings]
    for f in report.findings:
        assert "C++" not in f.message, f.message
        assert "unload_safe=True" in f.fix and "HOTLOAD_UNLOAD_SAFE()" in f.fix
    assert "Rust" in tls[0].message


def test_hotload_inspect_names_rust(rust_cdylib: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hotload", "inspect", str(rust_cdylib)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert ", Rust (rustc " in out.stdout.splitlines()[0]
    assert "thread_local objects with destructors" not in out.stdout
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "hotload", "inspect", "--json", str(rust_cdylib)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    assert data["toolchain"] == "rust"
    assert all("explanation" in f for f in data["unload_blockers"] + data["hazards"])


@pytest.mark.skipif(not have("g++"), reason="g++")
def test_cxx_and_c_are_told_apart(tmp_path: Path) -> None:
    cxx = inspector.describe(_gxx(tmp_path, "greet"))
    assert cxx.toolchain == "c++" and (cxx.compiler or "").startswith("GCC ")
    src = tmp_path / "c.c"
    src.write_text("int answer(void) { return 42; }\n")
    lib = tmp_path / "libc_only.so"
    subprocess.run(["gcc", "-fPIC", "-shared", str(src), "-o", str(lib)], check=True)
    assert inspector.describe(lib).toolchain == "c"


# ---- issue 10 item 5: one reader ---------------------------------------------------


@pytest.mark.skipif(not have("x86_64-w64-mingw32-gcc"), reason="needs mingw-w64")
def test_describe_a_mingw_dll(tmp_path: Path) -> None:
    src = tmp_path / "p.c"
    src.write_text(
        '#include <hotload.h>\nHOTLOAD_PLUGIN("winp", "0.3");\n'
        "HOTLOAD_API int32_t twice(int32_t x) { return 2 * x; }\n"
        "HOTLOAD_EXPORT(twice, int32_t, (int32_t));\n"
    )
    dll = tmp_path / "winp.dll"
    subprocess.run(
        ["x86_64-w64-mingw32-gcc", f"-I{SDK}", "-shared", str(src), "-o", str(dll)],
        check=True,
        timeout=120,
    )
    report = inspector.describe(dll)
    assert (report.format, report.machine, report.bits) == ("PE", "x86-64", 64)
    assert report.plugin is not None and (report.plugin.name, report.plugin.version) == (
        "winp",
        "0.3",
    )
    assert report.prototypes() == {"twice": "int32_t(int32_t)"}
    assert "twice" in report.dynamic_exports and not report.analysed
    assert inspector.inspect_bytes(dll.read_bytes(), str(dll)) == report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX special files")
def test_describe_refuses_special_files_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "plugin.so"
    os.mkfifo(fifo)
    with pytest.raises(InvalidPluginError, match="not a regular file"):
        inspector.describe(fifo)  # O_NONBLOCK: no writer, no hang
    link = tmp_path / "zero.so"
    link.symlink_to("/dev/zero")
    with pytest.raises(InvalidPluginError, match="not a regular file"):
        inspector.describe(link)
    with pytest.raises(InvalidPluginError, match="is a directory"):
        inspector.describe(tmp_path)
    with pytest.raises(InvalidPluginError, match="cannot read"):
        inspector.describe(str(tmp_path / "nul\0.so"))


def test_describe_reports_a_bad_descriptor_instead_of_refusing(tmp_path: Path) -> None:
    src = tmp_path / "p.c"
    src.write_text(
        '__attribute__((section(".hotload"), used)) static const char d[] = "garbage";\n'
        "int answer(void) { return 42; }\n"
    )
    lib = tmp_path / "libbad.so"
    subprocess.run(["gcc", "-fPIC", "-shared", str(src), "-o", str(lib)], check=True)
    report = inspector.describe(lib)
    assert report.plugin is None and report.descriptor_error
    assert str(lib) in report.descriptor_error
