"""The C SDK checks what it promises: an export's C type is the prototype it declares.

``HOTLOAD_EXPORT(fn, result_type, (parameter types))`` is compiled here, good
and bad, with every toolchain at hand (gcc and clang for C, g++ and clang++
for C++, mingw-w64 for Windows; each skipped with a reason when missing):

* a function whose type differs from its declared prototype, or a hook whose
  type differs from the hook's, is a compile *error* (even under ``-w``) whose
  diagnostic names the function;
* a good plugin compiles without a warning under strict flags, loads in a
  ``Host`` and its calls return the right results;
* the descriptor text is the prototype as written, byte for byte what the
  string form stored, so ABI 1 records and the host's parser are unchanged;
* the deprecated string form still builds and loads, with a warning naming
  the function (silenced by ``HOTLOAD_ALLOW_STRING_EXPORT``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotload import Host
from hotload._artifact import descriptor, signatures
from hotload._artifact.builder import compile_plugin, sdk_include_dir
from hotload._platform import _elf as elfcheck
from hotload._platform import _pe as pecheck

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "native" / "plugins"
TIMEOUT = 120


@dataclass(frozen=True)
class Toolchain:
    name: str
    command: str
    cxx: bool = False
    windows: bool = False

    @property
    def suffix(self) -> str:
        return ".dll" if self.windows else ".so"

    def need(self) -> str:
        found = shutil.which(self.command)
        if found is None:
            pytest.skip(f"{self.command} not installed (.ci/sdk-deps.sh installs clang)")
        return found

    def compile(
        self, tmp: Path, source: str, name: str, flags: list[str] | None = None
    ) -> tuple[subprocess.CompletedProcess[str], Path]:
        exe = self.need()
        src = tmp / f"{name}{'.cpp' if self.cxx else '.c'}"
        src.write_text(source)
        out = tmp / f"{name}{self.suffix}"
        std = "-std=c++17" if self.cxx else "-std=c11"
        pic = [] if self.windows else ["-fPIC"]
        cmd = [exe, std, *pic, "-shared", f"-I{sdk_include_dir()}", *(flags or [])]
        proc = subprocess.run(
            [*cmd, str(src), "-o", str(out)], capture_output=True, text=True, timeout=TIMEOUT
        )
        return proc, out


GCC = Toolchain("gcc", os.environ.get("CC_GCC", "gcc"))
CLANG = Toolchain("clang", "clang")
GXX = Toolchain("g++", "g++", cxx=True)
CLANGXX = Toolchain("clang++", "clang++", cxx=True)
MINGW = Toolchain("mingw", os.environ.get("WIN_CC") or "x86_64-w64-mingw32-gcc", windows=True)
NATIVE = [GCC, CLANG, GXX, CLANGXX]
ALL = [*NATIVE, MINGW]
STRICT = ["-Wall", "-Wextra", "-Werror", "-pedantic"]


def ids(chains: list[Toolchain]) -> list[str]:
    return [c.name for c in chains]


# One source for C and C++: the exports cover no parameters spelled (void) and
# (), pointer parameters, a char * result, parameter names, double and void.
GOOD = """\
#include <hotload.h>
#include <string.h>

HOTLOAD_PLUGIN("sdk_good", "2.0.0");

static int64_t calls;

HOTLOAD_API int64_t reward(int64_t base, int32_t level) { calls++; return base * 3 + level; }
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));

HOTLOAD_API int32_t seven(void) { return 7; }
HOTLOAD_EXPORT(seven, int32_t, (void));

HOTLOAD_API int64_t call_count(void) { return calls; }
HOTLOAD_EXPORT(call_count, int64_t, ());

HOTLOAD_API size_t text_length(const char *text) { return strlen(text); }
HOTLOAD_EXPORT(text_length, size_t, (const char *));

static char shout_buf[64];
HOTLOAD_API char *shout(const char *text, int32_t times)
{
    size_t n = 0, len = strlen(text);
    for (int32_t i = 0; i < times && n + len + 1 < sizeof shout_buf; i++, n += len)
        memcpy(shout_buf + n, text, len);
    shout_buf[n] = 0;
    return shout_buf;
}
HOTLOAD_EXPORT(shout, char *, (const char *text, int32_t times));

HOTLOAD_API double half(double x) { return x / 2; }
HOTLOAD_EXPORT(half, double, (double));

static int64_t total;
HOTLOAD_API void add_all(const int32_t *values, size_t n)
{
    for (size_t i = 0; i < n; i++) total += values[i];
}
HOTLOAD_EXPORT(add_all, void, (const int32_t *, size_t));
HOTLOAD_API int64_t total_so_far(void) { return total; }
HOTLOAD_EXPORT(total_so_far, int64_t, (void));

static int64_t snap;
static int save(const void **state, size_t *size)
{
    snap = calls;
    *state = &snap;
    *size = sizeof snap;
    return 0;
}
HOTLOAD_ON_UNLOAD(save);
static int restore(const char *prev, const void *state, size_t size)
{
    (void)prev;
    if (state && size == sizeof snap) memcpy(&calls, state, sizeof snap);
    return 0;
}
HOTLOAD_ON_LOAD(restore);
static int self_test(void) { return reward(1, 0) == 3 ? 0 : 1; }
HOTLOAD_SELF_TEST(self_test);
"""

# What the descriptor must hold: the prototypes exactly as written above.
GOOD_PROTOTYPES = {
    "reward": "int64_t(int64_t, int32_t)",
    "seven": "int32_t(void)",
    "call_count": "int64_t()",
    "text_length": "size_t(const char *)",
    "shout": "char *(const char *text, int32_t times)",
    "half": "double(double)",
    "add_all": "void(const int32_t *, size_t)",
    "total_so_far": "int64_t(void)",
}

# C++ only: noexcept is part of a function's type since C++17 and must still match.
GOOD_CXX_EXTRA = """
HOTLOAD_API int32_t eight(void) noexcept { return 8; }
HOTLOAD_EXPORT(eight, int32_t, ());
"""

# Each function's definition disagrees with what it declares; every one must be
# a compile error that names it.  reward_v1 is issue 10's example.
BAD = """\
#include <hotload.h>

HOTLOAD_PLUGIN("sdk_bad", "1.0.0");

HOTLOAD_API int64_t reward_v1(int64_t base, int32_t level) { return base + level; }
HOTLOAD_EXPORT(reward_v1, double, (const char *));

HOTLOAD_API int64_t wrong_result(int32_t x) { return x; }
HOTLOAD_EXPORT(wrong_result, int32_t, (int32_t));

HOTLOAD_API int64_t wrong_width(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(wrong_width, int64_t, (int64_t, int32_t));

HOTLOAD_API int64_t too_few(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(too_few, int64_t, (int64_t));

HOTLOAD_API size_t drops_const(char *text) { return text[0] != 0; }
HOTLOAD_EXPORT(drops_const, size_t, (const char *));

HOTLOAD_API const char *const_result(void) { return ""; }
HOTLOAD_EXPORT(const_result, char *, (void));

HOTLOAD_API int32_t takes_one(int32_t x) { return x; }
HOTLOAD_EXPORT(takes_one, int32_t, ());

static long on_load_wide(const char *prev, const void *state, size_t size)
{
    (void)prev; (void)state; return (long)size;
}
HOTLOAD_ON_LOAD(on_load_wide);

static int on_unload_int(const void **state, int *size) { *state = 0; *size = 0; return 0; }
HOTLOAD_ON_UNLOAD(on_unload_int);

static int self_test_arg(int verbose) { return verbose; }
HOTLOAD_SELF_TEST(self_test_arg);
"""
BAD_NAMES = [
    "reward_v1",
    "wrong_result",
    "wrong_width",
    "too_few",
    "drops_const",
    "const_result",
    "takes_one",
    "on_load_wide",
    "on_unload_int",
    "self_test_arg",
]

OLD_FORM = """\
#include <hotload.h>
HOTLOAD_PLUGIN("sdk_old", "1.0.0");
HOTLOAD_API int64_t reward(int64_t base, int32_t level) { return base * 2 + level; }
HOTLOAD_EXPORT(reward, "int64_t(int64_t, int32_t)");
"""


def good_source(chain: Toolchain) -> str:
    return GOOD + (GOOD_CXX_EXTRA if chain.cxx else "")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line]


def descriptor_of(path: Path) -> descriptor.Descriptor:
    data = path.read_bytes()
    if path.suffix == ".dll":
        section = pecheck.check(data, str(path), any_machine=True).hotload_section
    else:
        section = elfcheck.check(data, str(path)).hotload_section
    assert section is not None, f"{path}: no .hotload section"
    return descriptor.parse(section, str(path))


@pytest.mark.parametrize("chain", ALL, ids=ids(ALL))
def test_mismatched_prototype_is_a_compile_error_naming_the_function(
    chain: Toolchain, tmp_path: Path
) -> None:
    """Every mismatch in BAD is an error even with all warnings off (-w):
    nothing about it depends on the plugin's warning flags."""
    proc, out = chain.compile(tmp_path, BAD, "bad", ["-w"])
    assert proc.returncode != 0, f"{chain.name} compiled a mismatched export:\n{proc.stderr}"
    assert not out.exists()
    errors = error_lines(proc.stderr)
    for name in BAD_NAMES:
        assert any(
            f"{name} is not a function of type" in line or f"{name} must take" in line
            for line in errors
        ), f"{chain.name}: no error names {name}:\n{proc.stderr}"


@pytest.mark.parametrize("chain", ALL, ids=ids(ALL))
def test_the_issue_example_says_what_was_declared(chain: Toolchain, tmp_path: Path) -> None:
    """The message of issue 10's case, as a plugin author sees it."""
    src = BAD.split("HOTLOAD_API int64_t wrong_result")[0]
    proc, _ = chain.compile(tmp_path, src, "issue", ["-Wall", "-Wextra"])
    assert proc.returncode != 0
    [line] = [x for x in error_lines(proc.stderr) if "reward_v1" in x]
    assert (
        "HOTLOAD_EXPORT(reward_v1, double, (const char *)): reward_v1 is not a function of type "
        "double(const char *)" in line
    ), proc.stderr


@pytest.mark.parametrize("chain", ALL, ids=ids(ALL))
def test_good_plugin_compiles_clean_under_strict_flags(chain: Toolchain, tmp_path: Path) -> None:
    proc, out = chain.compile(tmp_path, good_source(chain), "good", STRICT)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert descriptor_of(out).signatures() == {
        **GOOD_PROTOTYPES,
        **({"eight": "int32_t()"} if chain.cxx else {}),
    }


@pytest.mark.parametrize("chain", NATIVE, ids=ids(NATIVE))
def test_good_plugin_loads_and_calls_with_the_right_results(
    chain: Toolchain, tmp_path: Path
) -> None:
    proc, out = chain.compile(tmp_path, good_source(chain), "good", ["-Wall", "-Wextra"])
    assert proc.returncode == 0, proc.stderr
    with Host(tmp_path / "work", quiesce_timeout=0.5) as host:
        p: Any = host.load(out)  # exports are dynamic attributes
        assert host.current("sdk_good") is not None and "sdk_good" in repr(p)
        assert p.reward(100, 3) == 303
        assert p.reward(-5, 2**31 - 1) == -15 + 2**31 - 1
        assert p.seven() == 7
        assert p.call_count() == 2
        assert p.text_length(b"hotload") == 7
        assert p.shout(b"ab", 3) == b"ababab"
        assert p.half(5.0) == 2.5
        p.add_all([1, 2, 3, 40], 4)
        assert p.total_so_far() == 46
        if chain.cxx:
            assert p.eight() == 8
        with pytest.raises(TypeError, match="seven"):
            p.seven(1)  # () and (void) both mean: no arguments
        with pytest.raises(TypeError, match="call_count"):
            p.call_count(1)
        # a swap runs the checked hooks: on_unload's state reaches on_load
        host.reload("sdk_good", out)
        assert p.call_count() == 2


@pytest.mark.parametrize("chain", ALL, ids=ids(ALL))
def test_descriptor_text_is_byte_identical_to_the_string_form(
    chain: Toolchain, tmp_path: Path
) -> None:
    """ABI 1 unchanged: the typed form stores exactly what the string form did,
    so hosts and `hotload inspect` built before it read new plugins."""
    typed = OLD_FORM.replace('"int64_t(int64_t, int32_t)"', "int64_t, (int64_t, int32_t)")
    a, typed_out = chain.compile(tmp_path, typed, "typed")
    b, string_out = chain.compile(tmp_path, OLD_FORM, "string", ["-DHOTLOAD_ALLOW_STRING_EXPORT"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert descriptor_of(typed_out) == descriptor_of(string_out)
    assert descriptor_of(typed_out).signatures() == {"reward": "int64_t(int64_t, int32_t)"}


def test_every_prototype_text_parses_with_the_hosts_parser() -> None:
    for name, text in GOOD_PROTOTYPES.items():
        ctype = signatures.parse(text, where="test", function=name)
        assert ctype.kind == "function"
    assert signatures.spelling(signatures.pointer_type("int64_t()")) == "int64_t()"
    assert signatures.pointer_type("int64_t()") is signatures.pointer_type("int64_t(void)")
    assert (
        signatures.spelling(signatures.pointer_type(GOOD_PROTOTYPES["shout"]))
        == "char *(char *, int32_t)"
    )


@pytest.mark.parametrize("chain", NATIVE, ids=ids(NATIVE))
def test_string_form_still_loads_with_a_deprecation_warning(
    chain: Toolchain, tmp_path: Path
) -> None:
    proc, out = chain.compile(tmp_path, OLD_FORM, "old", ["-Wall", "-Wextra"])
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, proc.stderr
    assert (
        'HOTLOAD_EXPORT(reward, "signature") is not checked by the compiler; '
        "write HOTLOAD_EXPORT(reward, result_type, (parameter types))" in warnings[0]
    )
    quiet, _ = chain.compile(
        tmp_path, OLD_FORM, "old_quiet", [*STRICT, "-DHOTLOAD_ALLOW_STRING_EXPORT"]
    )
    assert quiet.returncode == 0 and not quiet.stderr.strip(), quiet.stderr
    with Host(tmp_path / "work", quiesce_timeout=0.5) as host:
        old: Any = host.load(out)
        assert old.reward(10, 1) == 21


@pytest.mark.parametrize("chain", [GCC, GXX], ids=["gcc", "g++"])
@pytest.mark.parametrize(
    "call",
    ["HOTLOAD_EXPORT(f)", "HOTLOAD_EXPORT(f, int32_t, (void), extra)"],
    ids=["one-argument", "four-arguments"],
)
def test_wrong_number_of_macro_arguments_says_the_right_shape(
    chain: Toolchain, call: str, tmp_path: Path
) -> None:
    src = (
        f'#include <hotload.h>\nHOTLOAD_PLUGIN("a", "1");\n'
        f"HOTLOAD_API int32_t f(void) {{ return 1; }}\n{call};\n"
    )
    proc, _ = chain.compile(tmp_path, src, "arity")
    assert proc.returncode != 0
    assert "HOTLOAD_EXPORT takes (fn, result_type, (parameter types))" in proc.stderr


@pytest.mark.parametrize("chain", [GCC, CLANG, GXX], ids=["gcc", "clang", "g++"])
def test_exporting_an_undefined_function_fails_naming_it(chain: Toolchain, tmp_path: Path) -> None:
    src = (
        '#include <hotload.h>\nHOTLOAD_PLUGIN("a", "1");\nHOTLOAD_EXPORT(rewrd, int32_t, (void));\n'
    )
    proc, _ = chain.compile(tmp_path, src, "missing")
    assert proc.returncode != 0
    assert any("rewrd" in line for line in error_lines(proc.stderr)), proc.stderr


@pytest.mark.parametrize(
    ("chain", "std"),
    [
        (GCC, "-std=c99"),
        (GCC, "-std=c11"),
        (GCC, "-std=c2x"),
        (CLANG, "-std=c11"),
        (GXX, "-std=c++11"),
        (GXX, "-std=c++17"),
        (GXX, "-std=c++20"),
        (CLANGXX, "-std=c++17"),
        (MINGW, "-std=c11"),
    ],
    ids=lambda v: v.name if isinstance(v, Toolchain) else v,
)
def test_header_and_examples_compile_clean(chain: Toolchain, std: str, tmp_path: Path) -> None:
    """The shipped examples (and the header) cost a plugin no warning, under
    -Wall -Wextra -Werror -pedantic in every standard a plugin may use."""
    sources = [good_source(chain)]
    if not chain.cxx and std != "-std=c99":  # double_xp uses C11 atomics
        sources += [p.read_text() for p in sorted(PLUGINS.glob("*.c"))]
    for i, source in enumerate(sources):
        proc, _ = chain.compile(tmp_path, source, f"clean{i}", [*STRICT, std])
        assert proc.returncode == 0 and not proc.stderr.strip(), (i, proc.stderr)


def test_one_abi_number_across_c_and_python(tmp_path: Path) -> None:
    """``HOTLOAD_ABI_VERSION`` in the header the package ships is
    ``hotload.ABI_VERSION``; a plugin's base records are stamped 1 (an ABI 1
    host still loads it), its contract records 2 and the side-by-side flag
    3 (ABI 4 added the typed state records)."""
    import re

    import hotload

    header = (sdk_include_dir() / "hotload.h").read_text()
    found = re.search(r"#define HOTLOAD_ABI_VERSION (\d+)", header)
    assert found and int(found.group(1)) == hotload.ABI_VERSION == descriptor.ABI_VERSION
    src = tmp_path / "abi.c"
    src.write_text(
        "#include <hotload.h>\n"
        'HOTLOAD_PLUGIN("abi", "1");\n'
        "HOTLOAD_IMPORT(svc, int32_t, (int32_t));\n"
        "HOTLOAD_API int32_t f(int32_t x) { return x; }\n"
        "HOTLOAD_EXPORT(f, int32_t, (int32_t));\n"
        "HOTLOAD_SIDE_BY_SIDE();\n"
    )
    out = tmp_path / "abi.so"
    compile_plugin(src, out)
    section = elfcheck.check(out.read_bytes(), str(out)).hotload_section or b""
    records = [r.split(b"\x1f")[:3] for r in section.split(b"\0") if r.startswith(b"hotload")]
    stamps = {kind.decode(): int(abi) for _, abi, kind in records}
    assert stamps["plugin"] == stamps["export"] == 1
    assert stamps["import"] == 2
    assert stamps["side_by_side"] == 3
    assert hotload.ABI_VERSION == 4  # HOTLOAD_STATE / HOTLOAD_MIGRATE (tests/test_state_typed.py)
