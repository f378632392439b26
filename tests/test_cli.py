"""The offline commands: inspect, cflags, build; the shipped SDK; error lines."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hotload import Host
from hotload._cli import c_declaration

from conftest import PLUGINS_SRC, ROOT, have, run


def hotload(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "hotload", *args], cwd=cwd)


def test_inspect_a_plugin(example_plugins) -> None:
    path = str(example_plugins["double_xp"])
    human = hotload("inspect", path)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"{path}: hotload plugin double_xp 1.0.0 (ABI 1), ELF ")
    assert "  exports   int64_t reward(int64_t, int32_t)" in lines
    assert "  hooks     on_load, on_unload" in lines
    assert "  unload    nothing in the file keeps it mapped after dlclose" in lines
    report = json.loads(hotload("inspect", "--json", path).stdout)
    assert report["plugin"] == {
        "name": "double_xp",
        "version": "1.0.0",
        "abi": 1,
        "hooks": {
            "on_load": "hotload_on_load",
            "on_unload": "hotload_on_unload",
            "self_test": None,
        },
    }
    assert report["exports"][0] == {
        "name": "reward",
        "signature": "int64_t(int64_t, int32_t)",
        "c": "int64_t reward(int64_t, int32_t)",
    }
    assert (
        report["format"] == "ELF" and report["unloads"] is True and report["unload_blockers"] == []
    )
    assert "reward" in report["dynamic_exports"] and len(report["sha256"]) == 64


def test_inspect_names_what_keeps_an_image_mapped_and_what_is_unsafe(cc) -> None:
    so = cc(
        """
        #include <hotload.h>
        #include <pthread.h>
        HOTLOAD_PLUGIN("sticky", "1");
        static pthread_key_t key;
        HOTLOAD_API int32_t start(void) { return pthread_key_create(&key, 0); }
        HOTLOAD_EXPORT(start, "int32_t(void)");
    """,
        "sticky",
        ["-Wl,-z,nodelete", "-pthread"],
    )
    report = json.loads(hotload("inspect", "--json", str(so)).stdout)
    assert report["unloads"] is False
    assert [f["code"] for f in report["unload_blockers"]] == ["nodelete"]
    assert "thread-key" in [f["code"] for f in report["hazards"]]
    human = hotload("inspect", str(so)).stdout
    assert "  unload    stays mapped after dlclose:" in human and "-z nodelete" in human


def test_inspect_any_shared_library_and_refuse_non_libraries(tmp_path: Path) -> None:
    libc = next(
        (
            p
            for p in (
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/aarch64-linux-gnu/libc.so.6",
                "/usr/lib/libc.so.6",
            )
            if Path(p).exists()
        ),
        None,
    )
    if libc is not None:
        out = hotload("inspect", libc)
        assert out.returncode == 0 and "not a hotload plugin (no .hotload descriptor)" in out.stdout
        assert json.loads(hotload("inspect", "--json", libc).stdout)["plugin"] is None
    text = tmp_path / "notes.so"
    text.write_text("hello")
    bad = hotload("inspect", str(text))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip()
        == f"hotload: error: {text}: a text file, not a shared library (no ELF magic)"
    )
    missing = hotload("inspect", str(tmp_path / "nope.so"))
    assert missing.returncode == 1 and "no such file" in missing.stderr


@pytest.mark.skipif(
    not have("x86_64-w64-mingw32-gcc"), reason="no mingw-w64 cross compiler to build a DLL"
)
def test_inspect_a_windows_dll(tmp_path: Path) -> None:
    dll = tmp_path / "double_xp.dll"
    built = hotload(
        "build", "--target", "windows", "-o", str(tmp_path), str(PLUGINS_SRC / "double_xp.c")
    )
    assert built.returncode == 0, built.stdout + built.stderr
    report = json.loads(hotload("inspect", "--json", str(dll)).stdout)
    assert report["format"] == "PE" and report["plugin"]["name"] == "double_xp"
    assert "reward" in report["dynamic_exports"]


def test_cflags_builds_a_plugin_that_loads(tmp_path: Path) -> None:
    flags = hotload("cflags")
    assert flags.returncode == 0
    assert flags.stdout.split()[1:] == ["-std=c11", "-fPIC", "-shared"]
    include = hotload("cflags", "--include-dir").stdout.strip()
    assert (Path(include) / "hotload.h").is_file()
    src = tmp_path / "mine.c"
    src.write_text(
        '#include <hotload.h>\nHOTLOAD_PLUGIN("mine", "0.1");\n'
        "HOTLOAD_API int32_t twice(int32_t x) { return 2 * x; }\n"
        'HOTLOAD_EXPORT(twice, "int32_t(int32_t)");\n'
    )
    so = tmp_path / "mine.so"
    cc = run(["cc", *shlex.split(flags.stdout), str(src), "-o", str(so)])
    assert cc.returncode == 0, cc.stderr
    with Host(tmp_path / "work") as host:
        assert host.load(so).twice(21) == 42


def test_build_is_build_py(tmp_path: Path) -> None:
    out = tmp_path / "out"
    built = hotload("build", "-o", str(out), str(PLUGINS_SRC / "loot_drop.c"))
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == f"built {out / 'loot_drop.so'}"
    checkout = hotload(
        "build", "-o", str(out), cwd=ROOT
    )  # no files: native/plugins/*.c, as make plugins
    assert checkout.returncode == 0 and {p.name for p in out.iterdir()} == {
        "loot_drop.so",
        "double_xp.so",
    }
    nothing = hotload("build", cwd=tmp_path)
    assert (
        nothing.returncode == 1 and "no sources given and no native/plugins/*.c" in nothing.stderr
    )
    broken = tmp_path / "broken.c"
    broken.write_text("int x = ;\n")
    failed = hotload("build", "-o", str(out), str(broken))
    assert failed.returncode == 1 and "compile failed" in failed.stdout


def test_usage_errors_exit_2() -> None:
    assert hotload().returncode == 2
    assert hotload("frobnicate").returncode == 2


def test_c_declaration() -> None:
    assert (
        c_declaration("reward", "int64_t(int64_t, int32_t)") == "int64_t reward(int64_t, int32_t)"
    )
    assert c_declaration("name", "const char *(void)") == "const char *name(void)"


def test_installed_package_ships_the_sdk(tmp_path: Path) -> None:
    """A non-editable install must carry hotload.h and the example sources:
    setup.py's build_py (what every wheel build runs) copies them in.  Run on
    a copy of the tree so that the checkout gets no build artifacts."""
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    shutil.copytree(ROOT / "native", tree / "native")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    lib = tmp_path / "lib"
    built = run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)], cwd=tree)
    assert built.returncode == 0, built.stderr
    sdk = lib / "hotload" / "sdk"
    assert (sdk / "include" / "hotload.h").read_bytes() == (
        ROOT / "native" / "include" / "hotload.h"
    ).read_bytes()
    assert sorted(p.name for p in (sdk / "plugins").iterdir()) == sorted(
        p.name for p in PLUGINS_SRC.glob("*.c")
    )
