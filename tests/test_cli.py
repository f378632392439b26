"""The offline commands: inspect, cflags, build; the shipped SDK; error lines."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from hotload import Host
from hotload._cli.main import c_declaration

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
        HOTLOAD_EXPORT(start, int32_t, (void));
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
        "HOTLOAD_EXPORT(twice, int32_t, (int32_t));\n"
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
        p.stem + ".so" for p in PLUGINS_SRC.glob("*.c")
    }
    nothing = hotload("build", cwd=tmp_path)
    assert (
        nothing.returncode == 1 and "no sources given and no native/plugins/*.c" in nothing.stderr
    )
    broken = tmp_path / "broken.c"
    broken.write_text("int x = ;\n")
    failed = hotload("build", "-o", str(out), str(broken))
    assert failed.returncode == 1 and "compile failed" in failed.stdout


@pytest.mark.skipif(not have("c++"), reason="no c++")
def test_build_compiles_cpp_as_cpp_without_warnings(tmp_path: Path) -> None:
    """`hotload build mine.cpp` ran the C compiler with -std=c11 (cc1plus warned)."""
    src = tmp_path / "mine.cpp"
    src.write_text(
        "#include <hotload.h>\n#include <string>\n"
        'HOTLOAD_PLUGIN("mine", "0.1");\n'
        "HOTLOAD_API int32_t digits(int32_t x) {\n"
        "    return static_cast<int32_t>(std::to_string(x).size());\n}\n"
        "HOTLOAD_EXPORT(digits, int32_t, (int32_t));\n"
    )
    built = hotload("build", "-o", str(tmp_path / "out"), str(src))
    assert built.returncode == 0, built.stdout + built.stderr
    assert built.stderr == "", built.stderr  # no compiler warning logged
    assert built.stdout.strip() == f"built {tmp_path / 'out' / 'mine.so'}"
    with Host(tmp_path / "work") as host:
        assert host.load(tmp_path / "out" / "mine.so").digits(-1234) == 5


def test_a_reader_that_leaves_early_is_not_an_error(example_plugins) -> None:
    """``hotload inspect X | head -3`` printed ``hotload: error: Broken pipe``.
    The pipe's read end is closed before the CLI writes, so every write
    fails, as when ``head`` has already exited."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hotload", "inspect", str(example_plugins["double_xp"])],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141, proc.stderr  # 128 + SIGPIPE, as a shell


def test_usage_errors_exit_2() -> None:
    assert hotload().returncode == 2
    assert hotload("frobnicate").returncode == 2


def test_c_declaration() -> None:
    assert (
        c_declaration("reward", "int64_t(int64_t, int32_t)") == "int64_t reward(int64_t, int32_t)"
    )
    assert c_declaration("name", "const char *(void)") == "const char *name(void)"


@pytest.mark.soak  # make test-slow: a wheel built in an isolated env, ~13 s
def test_installed_package_ships_the_sdk_and_current_license_metadata(tmp_path: Path) -> None:
    """A wheel, built as ``pip install`` builds one (isolated, with the
    build-system requirements), must carry hotload.h and the example sources
    (setup.py's build_py copies them in) and SPDX license metadata, without
    setuptools' ``project.license`` deprecation block.  Built from a copy of
    the tree so that the checkout gets no build artifacts."""
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    shutil.copytree(ROOT / "native", tree / "native")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    dist = tmp_path / "dist"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(tree)],
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "deprecated" not in (built.stdout + built.stderr).lower(), built.stderr
    [wheel] = dist.glob("hotload-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert (
            zf.read("hotload/sdk/include/hotload.h")
            == (ROOT / "native" / "include" / "hotload.h").read_bytes()
        )
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: MIT" in zf.read(meta).decode().splitlines()
    assert {n.removeprefix("hotload/sdk/plugins/") for n in names if "/sdk/plugins/" in n} == {
        p.name for p in PLUGINS_SRC.glob("*.c")
    }
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


@pytest.mark.skipif(not have("g++"), reason="no g++")
def test_cflags_cxx_builds_a_cpp_plugin_without_warnings(tmp_path: Path) -> None:
    """`g++ $(hotload cflags)` warned that -std=c11 is not for C++."""
    flags = hotload("cflags", "--cxx")
    assert flags.returncode == 0, flags.stderr
    assert "-std=c11" not in flags.stdout and "-std=c++17" in flags.stdout.split()
    src = tmp_path / "mine.cpp"
    src.write_text(
        "#include <hotload.h>\n#include <string>\n"
        'HOTLOAD_PLUGIN("mine", "0.1");\n'
        "HOTLOAD_API int32_t twice(int32_t x) {\n"
        "    return static_cast<int32_t>(std::to_string(x).size()) * 0 + 2 * x;\n}\n"
        "HOTLOAD_EXPORT(twice, int32_t, (int32_t));\n"
    )
    so = tmp_path / "mine.so"
    cxx = run(["g++", *shlex.split(flags.stdout), "-Wall", "-Wextra", str(src), "-o", str(so)])
    assert cxx.returncode == 0 and cxx.stderr == "", cxx.stderr
    with Host(tmp_path / "work") as host:
        assert host.load(so).twice(21) == 42


def test_the_cli_command_a_person_is_told_to_type_works(tmp_path: Path) -> None:
    """The demo tells the user the exact command (``.venv/bin/hotload``, as
    ``hotload`` is not on PATH after ``make demo``); that command runs."""
    code = "from hotload._cli.demo_view import cli_command; print(cli_command())"
    told = run([sys.executable, "-c", code], cwd=ROOT).stdout.strip()
    assert told in ("hotload", ".venv/bin/hotload") or Path(shlex.split(told)[0]).is_absolute()
    ran = run([*shlex.split(told), "--help"], cwd=ROOT)
    assert ran.returncode == 0 and "usage: hotload" in ran.stdout


def test_python_m_hotload_runs_the_cli_and_importing_main_does_not() -> None:
    assert "usage: hotload" in hotload("--help").stdout
    imported = run([sys.executable, "-c", "import hotload.__main__; print('still here')"])
    assert imported.returncode == 0 and imported.stdout.strip() == "still here", imported.stderr


def test_the_scripted_demo_points_to_a_run_the_user_can_steer(
    tmp_path: Path, short_tmp: Path
) -> None:
    """The scripted demo exits in seconds: its hint must not promise a host
    to query, but name the exact commands for one that keeps running."""
    env = {
        **os.environ,
        "HOTLOAD_CONTROL_DIR": str(short_tmp / "ctl"),
        "HOTLOAD_WORKDIR": str(tmp_path / "work"),
    }
    (short_tmp / "ctl").mkdir(mode=0o700)
    demo = run([sys.executable, "-m", "hotload", "demo", "--seconds", "0.2"], cwd=ROOT, env=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    [hint] = [line for line in demo.stdout.splitlines() if line.startswith("  try ")]
    assert "(this run ends in seconds)" in demo.stdout
    commands = re.findall(r"`([^`]+)`", hint)
    assert commands[0].endswith(" demo --interactive") and commands[1].endswith(" ls")
    exe = shlex.split(commands[1])[:-1]
    assert run([*exe, "hosts"], cwd=ROOT, env=env).returncode == 0  # the named command runs


def cli_help(*argv: str) -> str:
    """``hotload ARGV --help``, from the installed ``hotload`` command's entry point."""
    import contextlib
    import io
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="hotload")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        script.load()([*argv, "--help"])
    assert done.value.code == 0
    return out.getvalue()


def subcommands(help_text: str) -> list[str]:
    """The subcommands an argparse help lists under its COMMAND (or ACTION) heading."""
    listed = re.search(r"^  [A-Z]+\n((?:    .*\n)+)", help_text, re.M)
    return re.findall(r"^    (\w[\w-]*)", listed.group(1), re.M) if listed else []


def options(help_text: str) -> set[str]:
    """The options in an argparse help's usage (its first paragraph)."""
    usage = help_text.split("\n\n")[0]
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", usage)) - {"-h", "--help"}


def test_every_command_and_option_of_the_cli_is_in_the_cli_page() -> None:
    """Found by a new user: cli.md listed neither ``hotload fleet ...`` nor the demo's
    options.  Each command the CLI has gets an entry in the page's command list
    (a line starting ``hotload COMMAND``) naming every one of its options."""
    page = (ROOT / "docs/guide/cli.md").read_text(encoding="utf-8")
    listing = page[page.index("## The commands") :].split("```")[1]
    entries: dict[str, str] = {}
    for entry in re.split(r"\n(?=hotload )", listing.strip()):
        words = [w for w in entry.split()[1:4] if re.fullmatch(r"[a-z][a-z-]*", w)]
        for n in range(len(words), 0, -1):
            entries.setdefault(" ".join(words[:n]), entry)
    top = cli_help()
    missing = [opt for opt in options(top) if opt not in page]
    commands = [(c,) for c in subcommands(top)]
    assert {"ls", "reload", "demo", "fleet"} <= {c for (c,) in commands}, top
    checked = 0
    while commands:
        command = commands.pop()
        text = cli_help(*command)
        nested = subcommands(text)
        commands += [(*command, sub) for sub in nested]
        name = " ".join(command)
        if nested:
            continue
        entry = entries.get(name)
        if entry is None or not entry.startswith(f"hotload {name}"):
            missing.append(f"hotload {name}")
            continue
        missing += [f"hotload {name} {opt}" for opt in sorted(options(text)) if opt not in entry]
        checked += 1
    assert not missing, f"not in docs/guide/cli.md's command list: {missing}"
    assert checked >= 15  # ls ... demo, and the fleet's actions


def test_escape_sequences_in_a_plugin_path_never_reach_the_terminal(
    tmp_path: Path, short_tmp: Path, cc: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build's file name is chosen by whoever wrote it: one holding an ESC
    sequence (clear the screen, retitle the window, recolour the rows) or a
    right-to-left override must show as text in ``ls`` and ``log``."""
    from hotload import Host
    from hotload._cli import main as cli

    src = cc(
        '#include <hotload.h>\nHOTLOAD_PLUGIN("esc", "1");\n'
        "HOTLOAD_API int add(int a, int b) { return a + b; }\n"
        "HOTLOAD_EXPORT(add, int, (int, int));\n",
        "esc",
    )
    hostile = tmp_path / "x\x1b[2J\x1b]0;pwned\x07\u202eos.so"
    hostile.write_bytes(src.read_bytes())
    with Host(tmp_path / "work") as h:
        h.load(hostile)
        sock = ["--socket", str(h.serve_control(directory=short_tmp).path)]
        for cmd in (["ls"], ["log"]):
            assert cli.main([*cmd, *sock]) == 0
            out = capsys.readouterr().out
            assert "x?[2J?]0;pwned??os.so" in out, out
            assert not any(c in out for c in "\x1b\x07\u202e"), repr(out)
