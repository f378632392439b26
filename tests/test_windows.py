"""The Windows platform layer, tested from Linux.

Three layers of proof, each skipped with a reason when its tools are missing:

* the pure logic of ``dl_windows`` (error codes to words, Windows path rules,
  the search-directory choice) runs on any OS (its kernel32 call sequence
  against a recording fake, and its conformance to ``_platform._api``, are in
  test_platform.py);
* ``pecheck`` runs on real DLLs built here with mingw-w64 (through hotload's
  own builder, ``--target windows``);
* ``native/harness/win_harness.c`` performs the Win32 call sequence of
  ``dl_windows`` under wine and asserts every step; the codes it observes must
  be ones ``dl_windows`` has words for.

Everything is compiled into pytest's tmp directories, never into the repo.
Wine is started once per module, with a private prefix that is deleted at the
end (a wine 8 prefix is ~700 MB).
"""

from __future__ import annotations

import logging
import ntpath
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from hotload._artifact import descriptor
from hotload._artifact.builder import cflags, compile_plugin
from hotload._errors import InvalidPluginError, LoadError
from hotload._platform import _elf as elfcheck
from hotload._platform import _pe as pecheck
from hotload._platform import _windows as dl_windows

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "native" / "plugins"
HARNESS_SRC = ROOT / "native" / "harness" / "win_harness.c"
MINGW = os.environ.get("WIN_CC") or "x86_64-w64-mingw32-gcc"
AMD64 = 0x8664

# A plain DLL (no hotload SDK) and a plugin that imports from it: the harness
# loads the plugin's private copy and must find the dependency next to the source.
HL_DEP_C = "__declspec(dllexport) int hl_dep_answer(void) { return 42; }\n"
USES_DEP_C = """\
#include <hotload.h>
HOTLOAD_PLUGIN("uses_dep", "1.0.0");
__declspec(dllimport) int hl_dep_answer(void);
HOTLOAD_API int32_t dep_answer(void) { return hl_dep_answer(); }
HOTLOAD_EXPORT(dep_answer, int32_t, (void));
"""
HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'


# ---- dl_windows: pure logic, any OS ----------------------------------------------


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (126, "a DLL it depends on was not found"),
        (193, "not a valid Win32 application (wrong architecture or not a DLL)"),
        (127, "a function it imports is missing"),
        (5, "access denied"),
        (32, "in use by another process"),
        (1114, "initialisation failed"),
        (216, "another CPU architecture"),
        (4551, "code integrity policy"),
    ],
)
def test_error_codes_have_words_number_and_name(code: int, words: str) -> None:
    msg = dl_windows.describe_error(code)
    assert words in msg
    assert f"Windows error {code}" in msg
    assert dl_windows.ERRORS[code][0] in msg  # the symbolic name, to search for


def test_unknown_code_falls_back_to_system_text() -> None:
    assert dl_windows.describe_error(998, "Invalid access to memory location.\r\n") == (
        "Invalid access to memory location (Windows error 998)"
    )
    assert dl_windows.describe_error(998) == "Windows error 998"
    assert dl_windows.describe_error(998, "   ") == "Windows error 998"


def test_load_error_message_names_file_cause_and_search_path() -> None:
    path = r"C:\hot\private\double_xp.v3-1234.dll"
    dep = dl_windows.describe_load_error(path, 126, search_dirs=(r"C:\game\plugins",))
    assert dep.startswith(f"{path}: LoadLibraryExW failed: a DLL it depends on was not found")
    assert r"C:\game\plugins" in dep and "not PATH" in dep
    gone = dl_windows.describe_load_error(path, 126, file_exists=False)
    assert gone == f"{path}: LoadLibraryExW failed: the file does not exist (Windows error 126)"
    bad = dl_windows.describe_load_error(path, 193)
    assert "wrong architecture or not a DLL" in bad and "searched" not in bad
    other = dl_windows.describe_load_error(
        path, 998, system_text="Invalid access to memory location."
    )
    assert other.endswith("Invalid access to memory location (Windows error 998)")


@pytest.mark.parametrize(
    ("path", "qualified"),
    [
        (r"C:\plugins\x.dll", True),
        ("C:/plugins/x.dll", True),
        ("c:\\", True),
        ("C:x.dll", False),  # drive-relative: depends on that drive's current directory
        (r"\plugins\x.dll", False),  # rooted, but on the current drive
        (r"plugins\x.dll", False),
        (r"\\server\share\x.dll", True),
        (r"\\server", False),
        (r"\\?\C:\plugins\x.dll", True),
        ("", False),
    ],
)
def test_fully_qualified(path: str, qualified: bool) -> None:
    assert dl_windows.is_fully_qualified(path) is qualified


def test_loader_path_normalises_and_refuses_relative() -> None:
    assert dl_windows.loader_path("C:/hot/./private/../x.dll") == r"C:\hot\x.dll"
    assert dl_windows.loader_path(r"\\srv\share\a\..\x.dll") == r"\\srv\share\x.dll"
    verbatim = r"\\?\C:\hot\..\x.dll"
    assert dl_windows.loader_path(verbatim) == verbatim  # \\?\ means "take it literally"
    with pytest.raises(LoadError, match=r"plugins\\x\.dll: not a fully qualified"):
        dl_windows.loader_path(r"plugins\x.dll")


def test_loader_path_extended_prefix_only_from_max_path() -> None:
    head = "C:\\" + "d" * 200 + "\\"
    short = head + "x" * (dl_windows.MAX_PATH - 1 - len(head))
    long = short + "y"
    assert len(short) == dl_windows.MAX_PATH - 1 and len(long) == dl_windows.MAX_PATH
    assert dl_windows.loader_path(short) == short
    assert dl_windows.loader_path(long) == "\\\\?\\" + long
    unc = "\\\\srv\\share\\" + "u" * 300 + "\\x.dll"
    assert dl_windows.loader_path(unc) == "\\\\?\\UNC\\srv\\share\\" + "u" * 300 + "\\x.dll"
    # GetModuleFileNameW may hand back the prefixed form: stripping it round-trips
    assert dl_windows.strip_extended_prefix(dl_windows.loader_path(long)) == long
    assert dl_windows.strip_extended_prefix(dl_windows.loader_path(unc)) == unc
    assert dl_windows.strip_extended_prefix(r"C:\x.dll") == r"C:\x.dll"
    assert (
        dl_windows.strip_extended_prefix("\\\\?\\Volume{abc}\\x.dll") == "\\\\?\\Volume{abc}\\x.dll"
    )


def test_search_dir_choice() -> None:
    image = r"C:\hot\private\double_xp.v2-77.dll"
    assert dl_windows.search_dir_for(image, None) is None
    assert dl_windows.search_dir_for(image, "") is None
    # the copy's own directory is searched already (LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR)
    assert dl_windows.search_dir_for(image, r"c:\HOT\Private\\") is None
    assert dl_windows.search_dir_for(image, "C:/hot/private") is None
    assert dl_windows.search_dir_for(image, "C:/game/plugins/") == r"C:\game\plugins"
    deep = "C:\\" + "s" * 270
    assert dl_windows.search_dir_for(image, deep) == "\\\\?\\" + deep
    with pytest.raises(LoadError):
        dl_windows.search_dir_for(image, "plugins")


def test_flags_and_constants_match_the_sdk_values() -> None:
    # values from libloaderapi.h; the harness compiles against the real header
    assert dl_windows.LOAD_FLAGS == 0x1100
    assert dl_windows.GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT == 2
    assert dl_windows.SUFFIX == ".dll"
    assert dl_windows.mapped_ranges((1, 2)) == -1


# ---- mingw builds ---------------------------------------------------------------


def _need_mingw() -> str:
    cc = shutil.which(MINGW)
    if cc is None:
        pytest.skip(f"{MINGW} not found: install gcc-mingw-w64-x86-64 (.ci/windows-deps.sh)")
    return cc


def _cc(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stderr}"


@dataclass(frozen=True)
class WinBuild:
    src: Path  # the "source" DLLs, as a build would leave them
    double_xp: Path
    loot_drop: Path
    uses_dep: Path
    hl_dep: Path
    exe: Path
    with_pdb: Path
    with_build_id: Path
    seconds: float


@pytest.fixture(scope="module")
def win_build(tmp_path_factory: pytest.TempPathFactory) -> WinBuild:
    cc = _need_mingw()
    t0 = time.perf_counter()
    out = tmp_path_factory.mktemp("win-build")
    src = out / "src"
    src.mkdir()
    # the project's own builder, target "windows": what `build.py --target windows` runs
    for name in ("double_xp", "loot_drop"):
        compile_plugin(PLUGINS / f"{name}.c", src / f"{name}.dll", target="windows")
    (out / "hl_dep.c").write_text(HL_DEP_C)
    (out / "uses_dep.c").write_text(USES_DEP_C)
    (out / "hello.c").write_text(HELLO_C)
    _cc(
        [
            cc,
            "-std=c11",
            "-shared",
            "-Wall",
            "-Wextra",
            str(out / "hl_dep.c"),
            "-o",
            str(src / "hl_dep.dll"),
        ]
    )
    _cc(
        [
            cc,
            *cflags(),
            str(out / "uses_dep.c"),
            str(src / "hl_dep.dll"),
            "-o",
            str(src / "uses_dep.dll"),
        ]
    )
    _cc([cc, str(out / "hello.c"), "-o", str(out / "hello.exe")])
    # GNU ld >= 2.40 writes a PDB and an RSDS record naming it; --build-id an RSDS record alone
    pdb_dir = out / "pdb"
    pdb_dir.mkdir()
    _cc(
        [
            cc,
            *cflags(),
            str(PLUGINS / "loot_drop.c"),
            "-o",
            str(pdb_dir / "loot_drop.dll"),
            f"-Wl,--pdb={pdb_dir / 'loot_drop.pdb'}",
        ]
    )
    _cc(
        [
            cc,
            *cflags(),
            str(PLUGINS / "loot_drop.c"),
            "-o",
            str(pdb_dir / "loot_drop_bid.dll"),
            "-Wl,--build-id",
        ]
    )
    seconds = time.perf_counter() - t0
    log.info("mingw builds: %.2f s", seconds)
    return WinBuild(
        src,
        src / "double_xp.dll",
        src / "loot_drop.dll",
        src / "uses_dep.dll",
        src / "hl_dep.dll",
        out / "hello.exe",
        pdb_dir / "loot_drop.dll",
        pdb_dir / "loot_drop_bid.dll",
        seconds,
    )


def test_sdk_header_compiles_cleanly_with_mingw(tmp_path: Path) -> None:
    """The builder's flags (-fPIC included: mingw ignores it silently since GCC 5)
    plus -Werror -Wpedantic: the public header must not cost a plugin a warning."""
    cc = _need_mingw()
    for src in sorted(PLUGINS.glob("*.c")):
        args = [
            cc,
            *cflags(),
            "-Werror",
            "-Wpedantic",
            str(src),
            "-o",
            str(tmp_path / (src.stem + ".dll")),
        ]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_kernel32_prototypes_match_the_windows_headers(tmp_path: Path) -> None:
    """dl_windows' ctypes prototypes, checked against mingw-w64's <windows.h>:
    each becomes a function pointer initialised with the real function, which
    does not compile (-Werror) if a return type, an argument count or an
    argument type differs.  Handles and pointers must map to c_void_p."""
    import ctypes

    cc = _need_mingw()
    lines = [
        "#define _WIN32_WINNT 0x0A00",
        "#define WIN32_LEAN_AND_MEAN",
        "#include <windows.h>",
        "#include <stdarg.h>",
    ]
    for name, (ret, args) in dl_windows.PROTOTYPES.items():
        lines.append(f"{ret} (WINAPI *p_{name})({', '.join(args)}) = {name};")
    src = tmp_path / "protos.c"
    src.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [
            cc,
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-c",
            str(src),
            "-o",
            str(tmp_path / "protos.o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    handle_like = {"HMODULE", "HANDLE", "FARPROC", "DLL_DIRECTORY_COOKIE", "LPCVOID", "va_list *"}
    for name, (ret, args) in dl_windows.PROTOTYPES.items():
        for c_type in (ret, *args):
            ct = dl_windows.ctype_of(c_type)  # every name used has a ctypes type
            if c_type in handle_like:
                assert ct is ctypes.c_void_p, (name, c_type)
    assert dl_windows.ctype_of("HMODULE *")._type_ is ctypes.c_void_p


def test_check_reads_the_descriptor(win_build: WinBuild) -> None:
    data = win_build.double_xp.read_bytes()
    facts = pecheck.check(data, str(win_build.double_xp), expect_machine=AMD64)
    assert (facts.bits, facts.machine, facts.machine_name) == (64, AMD64, "x86-64")
    assert facts.little_endian
    assert facts.hotload_section is not None
    desc = descriptor.parse(facts.hotload_section, str(win_build.double_xp))
    assert (desc.name, desc.version) == ("double_xp", "1.0.0")
    assert desc.signatures() == {
        "reward": "int64_t(int64_t, int32_t)",
        "grant_count": "int64_t(void)",
        "total_xp": "int64_t(void)",
        "multiplier": "int32_t(void)",
    }
    assert (desc.on_load, desc.on_unload) == ("hotload_on_load", "hotload_on_unload")


def test_exports_are_the_described_functions_and_hooks(win_build: WinBuild) -> None:
    names = pecheck.exports(win_build.double_xp.read_bytes())
    assert names == sorted(names)  # the loader binary-searches the name table
    assert set(names) == {
        "reward",
        "grant_count",
        "total_xp",
        "multiplier",
        "hotload_on_load",
        "hotload_on_unload",
    }
    assert pecheck.exports(win_build.loot_drop.read_bytes()) == ["gem_value", "rarity"]
    assert pecheck.exports(win_build.exe.read_bytes()) == []


def test_descriptor_is_the_same_on_pe_and_elf(win_build: WinBuild, tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no native C compiler (cc) to build the ELF twin")
    so = tmp_path / "loot_drop.so"
    compile_plugin(PLUGINS / "loot_drop.c", so)
    elf = elfcheck.check(so.read_bytes(), str(so))
    pe = pecheck.check(
        win_build.loot_drop.read_bytes(), str(win_build.loot_drop), expect_machine=AMD64
    )
    assert elf.hotload_section and pe.hotload_section
    assert descriptor.parse(pe.hotload_section, "pe") == descriptor.parse(
        elf.hotload_section, "elf"
    )


def test_dll_without_sdk_has_no_descriptor(win_build: WinBuild) -> None:
    facts = pecheck.check(
        win_build.hl_dep.read_bytes(), str(win_build.hl_dep), expect_machine=AMD64
    )
    assert facts.hotload_section is None


@pytest.mark.parametrize("keep", [0.02, 0.3, 0.5, 0.9])
def test_truncated_dll_is_refused(win_build: WinBuild, keep: float) -> None:
    data = win_build.double_xp.read_bytes()
    cut = data[: int(len(data) * keep)]
    with pytest.raises(
        InvalidPluginError, match="^" + re.escape(f"{win_build.double_xp}: truncated")
    ) as exc:
        pecheck.check(cut, str(win_build.double_xp), expect_machine=AMD64)
    assert f"the file has {len(cut)}" in str(exc.value) or f"({len(cut)} bytes" in str(exc.value)


def test_text_elf_and_empty_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidPluginError, match=r"^notes\.dll: a text file, not a DLL"):
        pecheck.check(b"release notes for 1.2\n", "notes.dll")
    with pytest.raises(InvalidPluginError, match=r"^x\.dll: empty file"):
        pecheck.check(b"", "x.dll")
    with pytest.raises(InvalidPluginError, match="ELF shared object"):
        pecheck.check(b"\x7fELF\x02\x01\x01" + bytes(60), "x.dll")
    with pytest.raises(InvalidPluginError, match="without a PE header"):
        pecheck.check(
            b"MZ" + bytes(58) + (64).to_bytes(4, "little") + b"NE\0\0" + bytes(64), "x.dll"
        )
    for fn in (pecheck.exports, pecheck.pdb_path):
        with pytest.raises(InvalidPluginError, match="text file"):
            fn(b"hello\n", "notes.dll")


def test_exe_is_refused(win_build: WinBuild) -> None:
    with pytest.raises(
        InvalidPluginError, match=r"hello\.exe: a Windows executable \(\.exe\), not a DLL"
    ):
        pecheck.check(win_build.exe.read_bytes(), str(win_build.exe), expect_machine=AMD64)


def test_wrong_machine_is_refused(win_build: WinBuild) -> None:
    arm64 = 0xAA64
    with pytest.raises(
        InvalidPluginError,
        match=r"built for x86-64 \(64-bit\), this host is AArch64: wrong architecture",
    ):
        pecheck.check(
            win_build.double_xp.read_bytes(), str(win_build.double_xp), expect_machine=arm64
        )
    facts = pecheck.check(
        win_build.double_xp.read_bytes(), "x.dll", expect_machine=arm64, any_machine=True
    )
    assert facts.machine_name == "x86-64"  # offline inspection of a foreign build
    if os.name != "nt":  # no PE machine is native here: no default check, like inspect on Linux
        assert pecheck.host_machine() is None
        assert pecheck.check(win_build.double_xp.read_bytes(), "x.dll").machine == AMD64


def test_pdb_path_from_codeview_record(win_build: WinBuild) -> None:
    data = win_build.with_pdb.read_bytes()
    pdb = pecheck.pdb_path(data, str(win_build.with_pdb))
    assert pdb is not None and PurePosixPath(pdb.replace("\\", "/")).name == "loot_drop.pdb"
    cv = pecheck.codeview(data)
    assert cv is not None and cv.signature == "RSDS" and cv.age >= 1
    assert re.fullmatch(r"[0-9A-F]{32}", cv.guid) and cv.guid != "0" * 32
    objdump = shutil.which(MINGW.replace("-gcc", "-objdump"))
    if objdump:  # binutils prints the same GUID: the bytes are read in the right order
        dump = subprocess.run(
            [objdump, "-p", str(win_build.with_pdb)], capture_output=True, text=True
        ).stdout
        assert f"signature {cv.guid.lower()} age {cv.age}" in dump
    # --build-id: a record with a GUID but no PDB name
    bid = pecheck.codeview(win_build.with_build_id.read_bytes())
    assert bid is not None and bid.pdb_path is None and bid.guid != cv.guid
    assert pecheck.pdb_path(win_build.with_build_id.read_bytes()) is None
    # the project's build has no debug directory at all
    assert pecheck.codeview(win_build.double_xp.read_bytes()) is None
    assert pecheck.pdb_path(win_build.double_xp.read_bytes()) is None


# ---- the wine harness ---------------------------------------------------------


def _find(names: tuple[str, ...], fallbacks: tuple[str, ...]) -> str | None:
    for name in names:
        if found := shutil.which(name):
            return found
    return next((p for p in fallbacks if os.access(p, os.X_OK)), None)


def _wine_path(path: Path) -> str:
    """wine maps the Unix root to drive Z: in every new prefix."""
    return "Z:" + str(path).replace("/", "\\")


@dataclass(frozen=True)
class HarnessRun:
    returncode: int
    output: str
    steps: dict[str, tuple[str, str]]  # step -> (status, detail)
    codes: dict[str, int]
    boot_seconds: float
    run_seconds: float


def _boot_prefix(wine: str, wineserver: str, env: dict[str, str], prefix: Path) -> None:
    """Create the wine prefix, twice at most.

    A wineserver is found by the prefix directory's device and inode
    (/tmp/.wine-UID/server-DEV-INO): a server left running by an earlier,
    killed run whose prefix had the same inode answers a new prefix and
    wineboot then fails with "could not load kernel32.dll". So any server of
    this prefix is stopped first. wine's own err: lines are kept for the boot
    (WINEDEBUG=-all hides why it failed), and a boot that fails is retried
    once on a fresh prefix: wineboot waits a bounded time for its boot event,
    which a loaded 2-core machine can miss. Two failures fail the test."""
    boot_env = {**env, "WINEDEBUG": "-all,err+all"}
    errors = []
    for _attempt in range(2):
        subprocess.run([wineserver, "-k"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(prefix, ignore_errors=True)
        boot = subprocess.run(
            [wine, "wineboot", "--init"], env=boot_env, capture_output=True, text=True, timeout=300
        )
        if boot.returncode == 0:
            return
        errors.append(f"wineboot failed ({boot.returncode}):\n{boot.stderr[-4000:]}")
        log.warning("%s", errors[-1])
    pytest.fail("\n".join(errors))


@pytest.fixture(scope="module")
def harness(win_build: WinBuild, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HarnessRun]:
    cc = _need_mingw()
    wine = _find(("wine", "wine64"), ("/usr/lib/wine/wine64",))
    wineserver = _find(("wineserver",), ("/usr/lib/wine/wineserver",))
    if wine is None or wineserver is None:
        pytest.skip("wine not found: install wine64 and wine (.ci/windows-deps.sh)")
    work = tmp_path_factory.mktemp("wine")
    exe = work / "win_harness.exe"
    _cc(
        [
            cc,
            "-std=c11",
            "-O1",
            "-municode",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{ROOT / 'native' / 'include'}",
            str(HARNESS_SRC),
            "-o",
            str(exe),
        ]
    )
    env = {
        **os.environ,
        "WINEPREFIX": str(work / "prefix"),
        "WINEDEBUG": "-all",
        "WINEDLLOVERRIDES": "mscoree,mshtml=",
        "WINEARCH": "win64",
    }  # no mono/gecko prompts
    env.pop("DISPLAY", None)
    try:
        t0 = time.perf_counter()
        _boot_prefix(wine, wineserver, env, work / "prefix")
        boot_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                wine,
                str(exe),
                _wine_path(win_build.double_xp),
                _wine_path(work / "private"),
                _wine_path(win_build.uses_dep),
                "hl_dep.dll",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        run_seconds = time.perf_counter() - t0
    finally:
        # stop the wineserver of *this* prefix only (it lingers a few seconds),
        # then reclaim the disk
        subprocess.run([wineserver, "-k"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(work / "prefix", ignore_errors=True)
    log.info("wineboot %.1f s, harness %.2f s", boot_seconds, run_seconds)
    steps: dict[str, tuple[str, str]] = {}
    codes: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        if m := re.match(r"(ok  |FAIL|note) (\w+): (.*)", line):
            steps[m[2]] = (m[1].strip(), m[3])
        elif m := re.match(r"code (\w+): (\d+)$", line):
            codes[m[1]] = int(m[2])
    yield HarnessRun(
        proc.returncode, proc.stdout + proc.stderr, steps, codes, boot_seconds, run_seconds
    )


EXPECTED_STEPS = [
    "setup",
    "copy1",
    "load1",
    "image_path1",
    "loader_has1",
    "descriptor",
    "export_table",
    "descriptor_exports",
    "missing_symbol",
    "call1",
    "copy2",
    "load2",
    "separate_state",
    "on_unload1",
    "on_load2_refuses",
    "on_load2",
    "snapshot_not_destructor",
    "overwrite_source",
    "overwrite_loaded_copy",
    "replace_loaded_copy",
    "delete_loaded_copy",
    "still_serving",
    "same_path_same_module",
    "refcount",
    "free1",
    "unloaded1",
    "copy2_unaffected",
    "free2",
    "unloaded2",
    "delete_copy1",
    "delete_copy2",
    "load_text_file",
    "load_truncated",
    "load_missing_file",
    "dep_without_search_dir",
    "dep_failed_not_listed",
    "dep_with_search_dir",
    "dep_call",
    "dep_loaded",
    "dep_unloaded",
    "dep_released",
    "dep_delete_copy",
]


def test_harness_passes_every_step(harness: HarnessRun) -> None:
    assert harness.returncode == 0, harness.output
    closing = harness.output.strip().splitlines()[-1]
    m = re.fullmatch(r"win_harness: (\d+) passed, 0 failed", closing)
    assert m, harness.output
    missing = [s for s in EXPECTED_STEPS if harness.steps.get(s, ("", ""))[0] != "ok"]
    assert not missing, f"steps not ok: {missing}\n{harness.output}"
    assert int(m[1]) >= len(EXPECTED_STEPS)


def test_harness_reads_the_same_descriptor_as_pecheck(
    harness: HarnessRun, win_build: WinBuild
) -> None:
    """The descriptor parsed from the *mapped* image under wine equals the one
    pecheck reads from the file, and so does the export table."""
    data = win_build.double_xp.read_bytes()
    facts = pecheck.check(data, "double_xp.dll", expect_machine=AMD64)
    assert facts.hotload_section is not None
    desc = descriptor.parse(facts.hotload_section, "double_xp.dll")
    detail = harness.steps["descriptor"][1]
    assert detail == (
        f"name={desc.name} version={desc.version} "
        f"exports={','.join(e.name for e in desc.exports)} on_load=1 on_unload=1"
    )
    assert harness.steps["export_table"][1] == ",".join(pecheck.exports(data))


def test_harness_proves_private_copies(harness: HarnessRun) -> None:
    assert "distinct modules" in harness.steps["load2"][1]
    assert harness.steps["on_load2"][1].endswith("copy2 now has 2 grants, 310 xp")
    assert ntpath.basename(harness.steps["image_path1"][1].split(" = ")[1]).startswith(
        "double_xp.v1-"
    )


def test_observed_error_codes_have_specific_words(harness: HarnessRun) -> None:
    """Every code the loader produced under wine is one dl_windows explains
    (not the generic fallback), and the well-known ones are what we expect."""
    codes = harness.codes
    assert codes["load_text_file"] == 193 and codes["load_truncated"] == 193
    assert codes["load_missing_file"] == 126 and codes["dep_without_search_dir"] == 126
    assert codes["missing_symbol"] == 127
    assert codes["overwrite_loaded_copy"] in (32, 5) and codes["replace_loaded_copy"] in (32, 5)
    assert codes["delete_loaded_copy"] == 5
    for step, code in codes.items():
        assert code in dl_windows.ERRORS, f"{step}: code {code} has no words in dl_windows.ERRORS"
    assert "a DLL it depends on was not found" in dl_windows.describe_error(
        codes["dep_without_search_dir"]
    )
    assert "wrong architecture or not a DLL" in dl_windows.describe_error(codes["load_text_file"])
