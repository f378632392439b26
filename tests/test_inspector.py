"""The inspector, on real libraries compiled by gcc/g++ for each finding.

The last tests open some of those libraries in this process (or a child) to
check that what a finding claims is what glibc really does.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload._errors import InvalidPluginError
from hotload._inspect import leaks, rules
from hotload._inspect import report as inspector
from hotload._inspect.report import Report
from hotload._platform import _elf as elfcheck

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "native" / "include"
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

pytestmark = [
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF platform"),
]
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the behaviour checked is glibc's")

Build = Callable[..., Path]

# ---- sources ---------------------------------------------------------------

CLEAN = """
#include <hotload.h>
HOTLOAD_PLUGIN("clean", "1.0.0");
HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
"""
PLAIN = "int answer(void) { return 42; }\n"


def unique_source(tag: str) -> str:
    """Inline-function and template statics: STB_GNU_UNIQUE by default.  Each
    build gets its own names: a unique symbol is global to the process, and a
    copy pinned by one test would otherwise serve the next test's copies."""
    return f"""
inline int &counter_{tag}() {{ static int c; return c; }}
template <class T> T &slot_{tag}() {{ static T v; return v; }}
extern "C" __attribute__((visibility("default"))) int bump() {{
    slot_{tag}<long>() += 1;
    return ++counter_{tag}();
}}
"""


TLS = """
__thread int tls_counter MODEL;
int tick(void) { return ++tls_counter; }
"""
THREAD_LOCAL = """
#include <string>
thread_local std::string hotload_tl_name;
extern "C" int touch() { hotload_tl_name = "a string long enough to live on the heap"; return 1; }
"""
PTHREAD = """
#include <pthread.h>
static void *run(void *arg) { return arg; }
int start(void) {
    pthread_t t; if (pthread_create(&t, 0, run, 0)) return -1; return pthread_join(t, 0);
}
"""
STD_THREAD = """
#include <thread>
extern "C" int start() { std::thread t([] {}); t.join(); return 0; }
"""
KEY = """
#include <pthread.h>
#include <stdlib.h>
static pthread_key_t key;
static void drop(void *p) { free(p); }
int make(void) {
    if (pthread_key_create(&key, drop)) return -1; return pthread_setspecific(key, malloc(8));
}
#ifdef FIXED
__attribute__((destructor)) static void fini(void) { pthread_key_delete(key); }
#endif
"""
SIGNAL = """
#include <signal.h>
static void on_usr1(int sig) { (void)sig; }
int arm(void) { return signal(SIGUSR1, on_usr1) == SIG_ERR; }
"""
SIGACTION = """
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
static void on_usr1(int sig) { (void)sig; }
int arm(void) {
    struct sigaction sa = {0}; sa.sa_handler = on_usr1; return sigaction(SIGUSR1, &sa, 0);
}
"""
EXIT_HANDLER = """
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
static void bye(void) { puts("handler ran"); fflush(stdout); }
static void bye2(int status, void *arg) { (void)status; (void)arg; bye(); }
int reg(void) { return REGISTER; }
"""
USES_RUNTIME = "extern int go_stub(void);\nint f(void) { return go_stub(); }\n"


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """``build(name, source, *flags, cxx=False)`` -> a shared library compiled
    once per module (the same name returns the same file)."""
    out_dir = tmp_path_factory.mktemp("inspector")
    built: dict[str, Path] = {}

    def compile_(name: str, source: str, *flags: str, cxx: bool = False) -> Path:
        if name not in built:
            src = out_dir / (name + (".cpp" if cxx else ".c"))
            src.write_text(textwrap.dedent(source))
            out = out_dir / f"lib{name}.so"
            std = [] if cxx else ["-std=c11"]
            cmd = [
                "g++" if cxx else "gcc",
                *std,
                "-fPIC",
                "-shared",
                "-Wall",
                "-Wextra",
                f"-I{SDK}",
                str(src),
                "-o",
                str(out),
                *flags,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
            built[name] = out
        return built[name]

    return compile_


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    inspector.clear_cache()


def codes(report: Report) -> list[str]:
    return [f.code for f in report.findings]


def only(report: Report, code: str) -> rules.Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, codes(report)
    return found[0]


def undefined(path: Path) -> set[str]:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as fh:
        dynsym = ELFFile(fh).get_section_by_name(".dynsym")
        return {s.name for s in dynsym.iter_symbols() if s.name and s["st_shndx"] == "SHN_UNDEF"}


# ---- a clean library ---------------------------------------------------------


def test_clean_plugin_has_no_findings(build: Build) -> None:
    path = build("clean", CLEAN, "-Wl,-soname,libclean.so.1")
    report = inspector.inspect_file(path)
    assert report.findings == ()
    assert report.pins() == () and report.hazards() == ()
    assert report.soname == "libclean.so.1"
    assert report.dynamic_exports == ("add",)
    assert report.path == str(path)
    assert report.digest == hashlib.sha256(path.read_bytes()).hexdigest()


# ---- what pins an image ------------------------------------------------------


def test_nodelete(build: Build) -> None:
    report = inspector.inspect_file(build("nodelete", PLAIN, "-Wl,-z,nodelete"))
    finding = only(report, "nodelete")
    assert codes(report) == ["nodelete"]
    assert finding.pins and not finding.unsafe
    assert "DF_1_NODELETE" in finding.message
    assert finding.fix == "relink without -Wl,-z,nodelete"
    assert report.pins() == (finding,) and report.hazards() == ()


def _go_buildinfo(version: str) -> bytes:
    """A Go >= 1.18 ``.go.buildinfo`` header: magic, pointer size, flags
    (2 = inline strings), padding to 32, then varint-prefixed strings."""
    head = b"\xff Go buildinf:" + bytes([8, 2])
    body = bytes([len(version)]) + version.encode() + bytes([3]) + b"mod"
    return head.ljust(32, b"\0") + body


def _with_go_section(build: Build, name: str, *flags: str) -> Path:
    base = build(name, TLS.replace("MODEL", '__attribute__((tls_model("initial-exec")))'), *flags)
    blob, out = base.with_suffix(".buildinfo"), base.with_name(f"lib{name}-go.so")
    blob.write_bytes(_go_buildinfo("go1.22.4"))
    subprocess.run(
        ["objcopy", "--add-section", f".go.buildinfo={blob}", str(base), str(out)], check=True
    )
    return out


@pytest.mark.skipif(shutil.which("objcopy") is None, reason="needs objcopy")
def test_go_runtime_from_buildinfo_section(build: Build) -> None:
    # Go's c-shared mode always sets NODELETE and STATIC_TLS: the Go finding
    # covers both, with no misleading "relink" or "-ftls-model" fix.
    report = inspector.inspect_file(_with_go_section(build, "gofake", "-Wl,-z,nodelete"))
    assert codes(report) == ["go-runtime"]
    finding = report.findings[0]
    assert finding.pins and finding.unsafe and "each reload leaks one image" in finding.fix
    assert "golang/go#11100" in finding.explanation
    assert "go1.22.4" in finding.message and report.compiler == "go1.22.4"
    assert report.toolchain == "go"
    assert "every reload leaks one whole image" in finding.explanation


@needs_gxx
def test_gnu_unique_names_demangled_symbols(build: Build) -> None:
    report = inspector.inspect_file(build("unique", unique_source("a"), cxx=True))
    finding = only(report, "gnu-unique")
    assert finding.pins and not finding.unsafe
    assert "counter_a()::c" in finding.message
    assert "slot_a<long>()::v" in finding.message
    assert "_ZZ" not in finding.message
    assert "-fno-gnu-unique" in (finding.fix or "")
    assert "bump" in report.dynamic_exports


@needs_gxx
@pytest.mark.parametrize("flag", ["-fno-gnu-unique", "-fvisibility=hidden"])
def test_gnu_unique_fixes_remove_the_finding(build: Build, flag: str) -> None:
    report = inspector.inspect_file(build("unique" + flag, unique_source("b"), flag, cxx=True))
    assert "gnu-unique" not in codes(report)


@needs_gxx
def test_a_plain_cxx_plugin_is_not_called_c(build: Build, tmp_path: Path) -> None:
    """g++ links libstdc++ only when it is used, and an ``extern "C"`` plugin
    exports no mangled name: it was labelled C.  Its static symbols (the
    source file's name, internal ``_Z`` names) tell; stripped of them, the
    file cannot tell C from C++ and says so."""
    cxx = build("plain_cxx", CLEAN, cxx=True)
    c = build("clean", CLEAN)
    assert inspector.inspect_file(cxx).toolchain == "c++"
    assert inspector.inspect_file(c).toolchain == "c"
    if shutil.which("strip") is None:
        pytest.skip("no strip")
    for lib in (cxx, c):
        stripped = tmp_path / lib.name
        subprocess.run(["strip", "-o", str(stripped), str(lib)], check=True)
        assert inspector.inspect_file(stripped).toolchain == "c/c++"
        human = subprocess.run(
            [sys.executable, "-m", "hotload", "inspect", str(stripped)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ", C or C++ (GCC " in human.stdout.splitlines()[0], human.stdout + human.stderr


TO_STRING = """
#include <hotload.h>
#include <string>
HOTLOAD_PLUGIN("digits", "1.0.0");
HOTLOAD_API int32_t digits(int32_t x) { return static_cast<int32_t>(std::to_string(x).size()); }
HOTLOAD_EXPORT(digits, int32_t, (int32_t));
"""

RELOAD_AND_SETTLE = """
import json, sys
from hotload import Host
with Host() as host:
    calls = [host.load(sys.argv[1]).digits(12345)]
    host.reload("digits")
    calls.append(host.plugin("digits").digits(-7))
    host.settle(30)
    print(json.dumps({"calls": calls, "v1": host.versions("digits")[0].state}))
"""


@needs_gxx
@needs_glibc
def test_gnu_unique_from_std_templates_is_cleared_only_by_no_gnu_unique(build: Build) -> None:
    """std::to_string's digit table is a unique symbol that -fvisibility=hidden
    does not hide; the fix used to offer it anyway."""
    hidden = inspector.inspect_file(
        build("to_string_hidden", TO_STRING, "-fvisibility=hidden", cxx=True)
    )
    finding = only(hidden, "gnu-unique")
    assert "__to_chars_10_impl" in finding.message
    assert finding.fix == "rebuild with -fno-gnu-unique (g++)"  # no -fvisibility=hidden
    own = only(inspector.inspect_file(build("unique", unique_source("a"), cxx=True)), "gnu-unique")
    assert "-fvisibility=hidden" in (own.fix or "")  # it does clear a plugin's own statics
    for flag, unloads in (("-fvisibility=hidden", False), ("-fno-gnu-unique", True)):
        path = build("to_string" + flag, TO_STRING, flag, cxx=True)
        assert ("gnu-unique" in codes(inspector.inspect_file(path))) is not unloads
        res = subprocess.run(
            [sys.executable, "-c", RELOAD_AND_SETTLE, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out == {"calls": [5, 2], "v1": "unloaded" if unloads else "leaked"}, flag


@needs_gxx
def test_gnu_unique_without_cxxfilt_keeps_mangled_names(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules.shutil, "which", lambda name: None)
    finding = only(
        inspector.inspect_file(build("unique", unique_source("a"), cxx=True)), "gnu-unique"
    )
    assert "_ZZ9counter_avE1c" in finding.message


@needs_gxx
@pytest.mark.parametrize(
    "static_libstdcxx", [False, True], ids=["libstdc++.so", "static-libstdc++"]
)
def test_thread_local_destructors(build: Build, static_libstdcxx: bool) -> None:
    flags = ["-static-libstdc++"] if static_libstdcxx else []
    report = inspector.inspect_file(build(f"tl{len(flags)}", THREAD_LOCAL, *flags, cxx=True))
    finding = only(report, "tls-dtor")
    assert (
        finding.pins and not finding.unsafe
    )  # glibc keeps the image while the destructors are due
    want = "__cxa_thread_atexit_impl" if static_libstdcxx else "__cxa_thread_atexit"
    assert f"imports {want})" in finding.message
    assert "trivially destructible" in (finding.fix or "")


# ---- static TLS --------------------------------------------------------------

IE = TLS.replace("MODEL", '__attribute__((tls_model("initial-exec")))')


def test_static_tls_initial_exec(build: Build) -> None:
    report = inspector.inspect_file(build("ie", IE))
    finding = only(report, "static-tls")
    assert codes(report) == ["static-tls"]
    assert not finding.pins and not finding.unsafe
    assert "DF_STATIC_TLS" in finding.message
    assert "1 initial-exec relocation against tls_counter" in finding.message
    assert "cannot allocate memory in static TLS block" in finding.explanation
    assert "-ftls-model=global-dynamic" in (finding.fix or "")


def test_global_dynamic_tls_is_clean(build: Build) -> None:
    assert inspector.inspect_file(build("gd", TLS.replace("MODEL", ""))).findings == ()


def _clear_dt_flags(data: bytes) -> bytes:
    """The same library with DT_FLAGS zeroed: only the relocations are left."""
    from io import BytesIO

    from elftools.elf.elffile import ELFFile

    dyn = ELFFile(BytesIO(data)).get_section_by_name(".dynamic")
    out = bytearray(data)
    for off in range(dyn["sh_offset"], dyn["sh_offset"] + dyn["sh_size"], 16):
        if struct.unpack_from("<q", out, off)[0] == 30:  # DT_FLAGS
            struct.pack_into("<Q", out, off + 8, 0)
    assert out != data
    return bytes(out)


def test_static_tls_found_from_relocations_alone(build: Build) -> None:
    report = inspector.inspect_bytes(_clear_dt_flags(build("ie", IE).read_bytes()), "ie-noflags.so")
    finding = only(report, "static-tls")
    assert "DF_STATIC_TLS" not in finding.message
    assert "1 initial-exec relocation against tls_counter" in finding.message


# ---- unload hazards ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, source, flags, code, symbol",
    [
        ("pthread", PTHREAD, (), "threads", "pthread_create"),
        ("key", KEY, (), "thread-key", "pthread_key_create"),
        (
            "signal",
            SIGNAL,
            (),
            "signal-handler",
            "__sysv_signal",
        ),  # what -std=c11 makes of signal()
        ("signal_gnu", SIGNAL, ("-std=gnu11",), "signal-handler", "signal"),
        ("sigaction", SIGACTION, (), "signal-handler", "sigaction"),
        ("on_exit", EXIT_HANDLER.replace("REGISTER", "on_exit(bye2, 0)"), (), "atexit", "on_exit"),
    ],
    ids=["pthread", "key", "signal", "signal_gnu", "sigaction", "on_exit"],
)
def test_unload_hazards(
    build: Build, name: str, source: str, flags: tuple[str, ...], code: str, symbol: str
) -> None:
    report = inspector.inspect_file(build(name, source, *flags))
    finding = only(report, code)
    assert codes(report) == [code]
    assert finding.unsafe and not finding.pins
    assert f"(imports {symbol})" in finding.message
    assert "__attribute__((destructor))" in (finding.fix or "")
    assert "unload_safe=True" in finding.fix and "HOTLOAD_UNLOAD_SAFE()" in finding.fix
    assert "retained" in finding.explanation or "after the image" in finding.explanation
    assert report.hazards() == (finding,) and report.pins() == ()


@needs_gxx
def test_std_thread_is_a_thread_hazard(build: Build) -> None:
    finding = only(inspector.inspect_file(build("stdthread", STD_THREAD, cxx=True)), "threads")
    assert "std::thread" in finding.message and finding.unsafe


def test_atexit_in_a_shared_library_is_not_a_hazard(build: Build) -> None:
    # glibc's atexit() lives in libc_nonshared.a and registers with the
    # library's DSO handle: the library imports __cxa_atexit, runs the
    # handler at dlclose (see test_exit_handlers_really_run_where_claimed).
    path = build("atexit", EXIT_HANDLER.replace("REGISTER", "atexit(bye)"))
    assert "__cxa_atexit" in undefined(path) and "atexit" not in undefined(path)
    assert inspector.inspect_file(path).findings == ()


def test_runtime_from_needed(build: Build) -> None:
    stub = build("go_stub_src", "int go_stub(void) { return 0; }\n", "-Wl,-soname,libgo.so.21")
    shutil.copyfile(stub, stub.with_name("libgo.so.21"))
    report = inspector.inspect_file(
        build("uses_go", USES_RUNTIME, f"-L{stub.parent}", "-l:libgo.so.21")
    )
    assert "libgo.so.21" in report.needed
    finding = only(report, "runtime")
    assert finding.unsafe and not finding.pins
    assert "libgo.so.21" in finding.message and "gccgo" in finding.message


# ---- robustness --------------------------------------------------------------


def test_not_elf_empty_truncated_missing(build: Build, tmp_path: Path) -> None:
    text = tmp_path / "notes.so"
    text.write_text("just some text\n")
    with pytest.raises(InvalidPluginError, match=re.escape(f"{text}: a text file")):
        inspector.inspect_file(text)
    with pytest.raises(InvalidPluginError, match="empty file"):
        inspector.inspect_bytes(b"", "empty.so")
    data = build("clean", CLEAN).read_bytes()
    with pytest.raises(InvalidPluginError, match="half.so: truncated"):
        inspector.inspect_bytes(data[: len(data) // 2], "half.so")
    with pytest.raises(InvalidPluginError, match="gone.so: no such file"):
        inspector.inspect_file(tmp_path / "gone.so")


def test_corrupt_bytes_only_raise_invalid_plugin_error(build: Build) -> None:
    data = (
        build("unique", unique_source("a"), cxx=True) if shutil.which("g++") else build("ie", IE)
    ).read_bytes()
    rng = random.Random(7)
    for i in range(300):
        blob = bytearray(data)
        for _ in range(rng.randint(1, 12)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            inspector.inspect_bytes(bytes(blob), f"fuzz{i}.so")
        except InvalidPluginError as exc:
            assert f"fuzz{i}.so" in str(exc)


def test_foreign_machine_is_inspected(build: Build) -> None:
    data = bytearray(build("nodelete", PLAIN, "-Wl,-z,nodelete").read_bytes())
    struct.pack_into("<H", data, 18, 183)  # e_machine = AArch64
    with pytest.raises(InvalidPluginError, match="wrong architecture"):
        elfcheck.check(bytes(data), "arm.so")  # the loader's check refuses it ...
    assert codes(inspector.inspect_bytes(bytes(data), "arm.so")) == [
        "nodelete"
    ]  # ... the inspector explains it


def test_other_word_size_is_inspected(build: Build) -> None:
    try:
        path = build("ie32", IE, "-m32", "-nostdlib")
    except AssertionError as exc:  # no 32-bit assembler/linker support
        pytest.skip(str(exc)[:200])
    finding = only(inspector.inspect_file(path), "static-tls")  # R_386_TLS_TPOFF
    assert "against tls_counter" in finding.message
    data = path.read_bytes()
    with pytest.raises(InvalidPluginError, match="truncated"):
        inspector.inspect_bytes(data[: len(data) // 3], "ie32-cut.so")


# ---- the cache ---------------------------------------------------------------


def test_cached_by_digest(build: Build) -> None:
    data = build("nodelete", PLAIN, "-Wl,-z,nodelete").read_bytes()
    first = inspector.inspect_bytes(data, "a.so")
    assert inspector.inspect_bytes(data, "a.so") is first
    other_name = inspector.inspect_bytes(data, "b.so")
    assert other_name.path == "b.so" and other_name.findings is first.findings
    # Keyed by the digest alone: a known digest never parses the bytes again.
    assert inspector.inspect_bytes(b"not even ELF", "a.so", digest=first.digest) is first


def test_cache_is_bounded(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspector, "CACHE_SIZE", 2)
    libs = [
        build("p41", PLAIN.replace("42", "41")),
        build("p43", PLAIN.replace("42", "43")),
        build("nodelete", PLAIN, "-Wl,-z,nodelete"),
    ]
    reports = [inspector.inspect_file(p) for p in libs]
    assert len({r.digest for r in reports}) == 3
    assert inspector.inspect_file(libs[2]) is reports[2]
    assert inspector.inspect_file(libs[0]) is not reports[0]  # evicted, parsed again
    assert inspector.inspect_file(libs[0]) == reports[0]


# ---- explain_leak ------------------------------------------------------------


def test_explain_leak_gives_pins_with_fixes(build: Build) -> None:
    report = inspector.inspect_file(build("nodelete", PLAIN, "-Wl,-z,nodelete"))
    (finding,) = leaks.leak_findings(report, 1, 1)
    assert finding.code == "nodelete" and finding.fix == "relink without -Wl,-z,nodelete"
    assert finding.line().startswith("nodelete: linked with -z nodelete")
    (line,) = leaks.explain_leak(report, 1, 1)
    assert line == f"{finding.line()} (fix: relink without -Wl,-z,nodelete)"


def test_explain_leak_without_a_reason_in_the_file(build: Build) -> None:
    report = inspector.inspect_file(build("clean", CLEAN))
    (other,) = leaks.leak_findings(report, 2, 2)
    assert other.code == "other-handle" and "(2 opens, 2 closes)" in other.message
    assert "another dlopen of the same file" in other.fix and "depends on it" in other.fix
    (unbalanced,) = leaks.leak_findings(report, 3, 2)
    assert unbalanced.code == "open-handles"
    assert "opened it 3 times and closed it 2 times" in unbalanced.message
    assert leaks.leak_findings(report, 2, 3)[0].code == "double-close"


def test_every_code_is_documented_once(build: Build) -> None:
    """Each finding's code has one explanation in REASONS; messages are one
    line, and no message repeats its explanation."""
    paths = [build("nodelete", PLAIN, "-Wl,-z,nodelete"), build("ie", IE), build("key", KEY)]
    for path in paths:
        for f in inspector.inspect_file(path).findings:
            assert rules.reason(f.code).explanation == f.explanation
            assert "\n" not in f.message and len(f.message) < 200, f.message
            assert f.explanation not in f.message and f.fix
    assert rules.reason("bound-by:libstdc++.so.6").code == "bound-by"


def test_report_round_trips_through_json(build: Build) -> None:
    import json

    report = inspector.inspect_file(build("clean", CLEAN))
    assert report.plugin is not None and report.prototypes() == {"add": "int64_t(int64_t, int64_t)"}
    for r in (report, inspector.inspect_file(build("key", KEY))):
        again = Report.from_dict(json.loads(json.dumps(r.as_dict())))
        assert again == r


# ---- what glibc really does --------------------------------------------------


# Each probe runs in a fresh interpreter: a unique symbol bound, a thread-local
# destructor registered or a NODELETE image stays in the process for good, and
# one test's leftovers changed what the next one saw (1 failure in 2 full runs).
PROBE = """
import _ctypes, ctypes, json, os, shutil, sys, threading, time

def mapped(path):
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    with open("/proc/self/maps") as fh:
        return any(line.split()[3:5] == [dev, str(st.st_ino)] for line in fh)

def two_copies(src, tag):
    a = src.replace(".so", f"-{tag}-v1.so")
    b = src.replace(".so", f"-{tag}-v2.so")
    shutil.copyfile(src, a)
    shutil.copyfile(src, b)
    lib_a, lib_b = ctypes.CDLL(a), ctypes.CDLL(b)
    bumps = [lib_a.bump(), lib_b.bump()]
    _ctypes.dlclose(lib_a._handle)
    _ctypes.dlclose(lib_b._handle)
    return {"bumps": bumps, "a": mapped(a), "b": mapped(b)}

def nodelete(src):
    copy = src.replace(".so", "-real.so")
    shutil.copyfile(src, copy)
    _ctypes.dlclose(ctypes.CDLL(copy)._handle)
    return {"mapped": mapped(copy)}

def thread_local(src, trigger):
    copy = src.replace(".so", "-real.so")
    shutil.copyfile(src, copy)
    lib = ctypes.CDLL(copy)
    touched, finish = threading.Event(), threading.Event()
    def worker():
        lib.touch(); touched.set(); finish.wait(10)
    thread = threading.Thread(target=worker)
    thread.start()
    assert touched.wait(10)
    _ctypes.dlclose(lib._handle)
    out = {"while_alive": mapped(copy)}
    tid = thread.native_id
    finish.set(); thread.join()
    # join() returns when the Python function is done; glibc runs the thread's TLS
    # destructors (and drops its hold on the image) after that, as the thread exits:
    # the next dlclose must come after the thread is gone, or it races them (a flake)
    end = time.monotonic() + 10
    while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < end:
        time.sleep(0.01)
    out["after_exit"] = mapped(copy)
    other = trigger.replace(".so", "-trigger.so")
    shutil.copyfile(trigger, other)
    _ctypes.dlclose(ctypes.CDLL(other)._handle)
    out["after_next_dlclose"] = mapped(copy)
    return out

print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])))
"""


def probe(kind: str, *args: object) -> dict[str, Any]:
    """Run one of PROBE's functions in a child interpreter; its JSON result."""
    res = subprocess.run(
        [sys.executable, "-c", PROBE, kind, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


@needs_gxx
@needs_glibc
def test_gnu_unique_really_pins_the_first_copy(build: Build) -> None:
    out = probe("two_copies", build("unique_real", unique_source("real"), cxx=True), "real")
    assert out["bumps"] == [1, 2]  # the second copy used the first copy's counter
    assert out["a"], "the first image to bind the unique symbol stays mapped"
    assert not out["b"]


@needs_gxx
@needs_glibc
@pytest.mark.parametrize(
    "flag, pinned",
    [("-fno-gnu-unique", False), ("-fvisibility=hidden", False), ("-Wl,-Bsymbolic", True)],
)
def test_gnu_unique_fixes_really_unmap(build: Build, flag: str, pinned: bool) -> None:
    tag = flag.strip("-").replace("=", "_").replace(",", "_").replace("-", "_")
    path = build("unique_" + tag, unique_source(tag), flag, cxx=True)
    assert ("gnu-unique" in codes(inspector.inspect_file(path))) is pinned
    out = probe("two_copies", path, "fix")
    assert out["bumps"] == ([1, 2] if pinned else [1, 1])
    assert out["a"] is pinned and not out["b"]


@needs_glibc
def test_nodelete_really_stays(build: Build) -> None:
    assert probe("nodelete", build("nodelete", PLAIN, "-Wl,-z,nodelete"))["mapped"]


@needs_gxx
@needs_glibc
def test_thread_local_really_pins_while_the_thread_lives(build: Build) -> None:
    out = probe("thread_local", build("tl0", THREAD_LOCAL, cxx=True), build("clean", CLEAN))
    assert out["while_alive"], "destructors still due on a live thread keep the image"
    assert out["after_exit"], "the thread's exit alone does not unmap it"
    assert not out["after_next_dlclose"], "the next dlclose in the process does"


CHILD = """
import _ctypes, ctypes, os, resource, sys, threading
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
lib = ctypes.CDLL(sys.argv[1])
worker = threading.Thread(target=getattr(lib, sys.argv[2]))
worker.start(); worker.join()          # registered (a key value is freed at this exit)
ready, hold = threading.Event(), threading.Event()
worker = threading.Thread(target=lambda: (getattr(lib, sys.argv[2])(), ready.set(), hold.wait()))
worker.start(); ready.wait()           # registered on a thread that outlives the dlclose
real = os.path.realpath(sys.argv[1])
with open("/proc/self/maps") as fh:
    spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in fh if real in line]
_ctypes.dlclose(lib._handle)
# Keep the library's old range unmapped-and-unusable: a later mmap of the interpreter could
# land there before the thread exits, and a call into it would then not crash (a flake).
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
for lo, hi in spans:  # PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
    libc.mmap(lo, hi - lo, 0, 0x02 | 0x20 | 0x100000, -1, 0)
print("closed", flush=True)
tid = worker.native_id
hold.set(); worker.join()
# join() returns once the Python function is done; glibc runs the key destructors after that,
# as the thread exits: wait until it is gone, or a busy machine exits the process first
import time
end = time.monotonic() + 10
while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < end:
    time.sleep(0.01)
"""


@needs_glibc
@pytest.mark.parametrize(
    "name, source, flags, crashes, output",
    [
        (
            "atexit",
            EXIT_HANDLER.replace("REGISTER", "atexit(bye)"),
            (),
            False,
            "handler ran\nhandler ran\nclosed",
        ),
        ("on_exit", EXIT_HANDLER.replace("REGISTER", "on_exit(bye2, 0)"), (), True, "closed"),
        ("key", KEY, (), True, "closed"),
        ("key_fixed", KEY, ("-DFIXED",), False, "closed"),
    ],
    ids=["atexit", "on_exit", "key", "key_fixed"],
)
def test_exit_handlers_and_keys_really_behave_as_claimed(
    build: Build, name: str, source: str, flags: tuple[str, ...], crashes: bool, output: str
) -> None:
    """atexit() handlers run at dlclose (no finding); on_exit() handlers and
    forgotten key destructors crash the process after the unmap (findings),
    and pthread_key_delete in a destructor (the advised fix) prevents it."""
    path = build(name, source, *flags)
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), "reg" if "exit" in name else "make"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.stdout.strip() == output
    assert (res.returncode == -11) is crashes, (res.returncode, res.stderr[-500:])
    # The fixed build imports pthread_key_create all the same: from the file
    # alone the inspector cannot tell that the destructor deletes the key.
    assert bool(inspector.inspect_file(path).hazards()) is (name != "atexit")
