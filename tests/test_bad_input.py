"""Every bad input is a clear HotloadError naming the file and cause, and a
failed reload loses nothing: the previous version keeps serving, with its
state, and no versioned copy is left behind."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hotload import (
    DescriptorError,
    Host,
    HotloadError,
    InvalidPluginError,
    LoadError,
    SignatureError,
)

from conftest import versioned_copies


def _elf_machine_patched(src: Path, dst: Path, machine: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into("<H", data, 18, machine)
    dst.write_bytes(bytes(data))
    return dst


def _bad_files(tmp_path: Path, good: Path, cc) -> dict[str, tuple[Path, type[HotloadError], str]]:
    """name -> (file, expected error class, regex the message must match)."""
    data = good.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()

    def put(name: str, content: bytes) -> Path:
        p = bad / name
        p.write_bytes(content)
        return p

    exe_src = tmp_path / "main.c"
    exe_src.write_text("int main(void) { return 0; }\n")
    exe = bad / "exe.so"
    subprocess.run(["cc", "-no-pie", str(exe_src), "-o", str(exe)], check=True)
    unreadable = put("unreadable.so", data)
    unreadable.chmod(0)
    nodesc = cc("int f(int x) { return x; }\n", "nodesc")
    versioned = '#include <hotload.h>\nHOTLOAD_PLUGIN("xp", "VERSION");\n'
    long_version = cc(versioned.replace("VERSION", "1." * 100), "longver")
    escape_version = cc(versioned.replace("VERSION", "1.0\\033[2J"), "escver")
    c1_version = cc(versioned.replace("VERSION", "1.0\u009b2J"), "c1ver")  # CSI, in UTF-8
    bidi_version = cc(versioned.replace("VERSION", "1.0\u202e0.1"), "bidiver")
    return {
        "long version": (long_version, DescriptorError, "at most 128 characters"),
        "control character in version": (escape_version, DescriptorError, "no control characters"),
        "C1 control in version": (c1_version, DescriptorError, "no control characters"),
        "bidi override in version": (bidi_version, DescriptorError, "no control characters"),
        "empty": (put("empty.so", b""), InvalidPluginError, "empty file"),
        "text": (put("notes.so", b"this is not a library\n"), InvalidPluginError, "text file"),
        "truncated header": (put("trunc40.so", data[:40]), InvalidPluginError, "truncated"),
        "truncated 25%": (
            put("trunc25.so", data[: len(data) // 4]),
            InvalidPluginError,
            "truncated",
        ),
        "truncated 50%": (
            put("trunc50.so", data[: len(data) // 2]),
            InvalidPluginError,
            "truncated",
        ),
        "truncated 75%": (
            put("trunc75.so", data[: len(data) * 3 // 4]),
            InvalidPluginError,
            "truncated",
        ),
        "truncated -1": (put("trunc-1.so", data[:-1]), InvalidPluginError, "truncated"),
        "other arch": (
            _elf_machine_patched(good, bad / "arm.so", 183),
            InvalidPluginError,
            "built for AArch64.*wrong architecture",
        ),
        "executable": (exe, InvalidPluginError, "executable, not a shared library"),
        "directory": (bad, InvalidPluginError, "is a directory"),
        "missing": (bad / "nope.so", InvalidPluginError, "no such file"),
        "unreadable": (unreadable, InvalidPluginError, "permission denied"),
        "pe file": (put("win.so", b"MZ" + b"\0" * 200), InvalidPluginError, "Windows PE"),
        "no descriptor": (nodesc, DescriptorError, "no hotload descriptor"),
    }


def test_every_bad_file_is_refused_on_reload_and_nothing_is_lost(
    host: Host, xp_build, cc, tmp_path: Path
) -> None:
    good = xp_build(mult=2)
    keep = tmp_path / "good-copy.so"
    shutil.copyfile(good, keep)
    xp = host.load(good)
    for _ in range(3):
        xp.reward(1, 0)
    cases = _bad_files(tmp_path, keep, cc)
    for case, (path, err_type, pattern) in cases.items():
        if case == "unreadable" and os.geteuid() == 0:
            continue  # root reads anything; see test_unreadable_file
        with pytest.raises(err_type) as err:
            host.reload("xp", path)
        msg = str(err.value)
        assert str(path) in msg, f"{case}: message does not name the file: {msg}"
        assert __import__("re").search(pattern, msg), f"{case}: {msg!r} !~ {pattern!r}"
        assert xp.reward(1, 0) == 2, case
        assert [v.seq for v in host.versions("xp")] == [1], case
        assert len(versioned_copies(host.workdir)) == 1, f"{case}: copy left behind"
    assert xp.grants_so_far() == 3 + len(cases) - (os.geteuid() == 0)


def test_bad_files_on_first_load_are_refused_too(host: Host, xp_build, cc, tmp_path: Path) -> None:
    cases = _bad_files(tmp_path, xp_build(), cc)
    for case, (path, err_type, _pattern) in cases.items():
        if case == "unreadable" and os.geteuid() == 0:
            continue
        with pytest.raises(err_type, match=None):
            host.load(path)
        assert not versioned_copies(host.workdir), case
    assert host.names() == []


def test_truncated_library_never_reaches_dlopen_in_a_child(tmp_path: Path, xp_build) -> None:
    """glibc can die with SIGBUS inside dlopen on a truncated file: prove the
    check stops every truncation point before that, in a child process so a
    crash would show as a signal rather than kill the test run."""
    good = xp_build().read_bytes()
    script = textwrap.dedent(f"""
        import sys
        from hotload import Host, InvalidPluginError
        data = open({str(tmp_path / "build" / "xp.so")!r}, 'rb').read()
        refused = 0
        with Host({str(tmp_path / "w")!r}) as host:
            for cut in range(1, len(data), max(1, len(data) // 64)):
                p = {str(tmp_path)!r} + f'/cut{{cut}}.so'
                open(p, 'wb').write(data[:cut])
                try:
                    host.load(p)
                except InvalidPluginError:
                    refused += 1
                else:
                    sys.exit(f'loaded a truncated file of {{cut}} bytes')
        print(refused)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 60
    assert len(good) > 1000


def test_unreadable_file(tmp_path: Path, xp_build) -> None:
    """Root reads any file, so as root the check runs in a child that keeps
    uid 0 but drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: permissions apply."""
    src = xp_build()
    p = tmp_path / "locked.so"
    shutil.copyfile(src, p)
    p.chmod(0)
    script = textwrap.dedent(f"""
        from hotload import Host, InvalidPluginError
        with Host({str(tmp_path / "w2")!r}) as host:
            try:
                host.load({str(p)!r})
            except InvalidPluginError as exc:
                print(exc)
    """)
    cmd = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip(
                "running as root without setpriv (util-linux): cannot drop CAP_DAC_OVERRIDE"
            )
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{p}: cannot read: permission denied" in proc.stdout


def test_vanished_file_between_event_and_reload(host: Host, xp_build) -> None:
    src = xp_build()
    xp = host.load(src)
    src.unlink()
    with pytest.raises(InvalidPluginError, match=rf"{src}: no such file"):
        host.reload("xp")
    assert xp.reward(2, 0) == 4


def test_foreign_descriptor_name_is_refused(host: Host, xp_build, example_plugins) -> None:
    host.load(xp_build())
    with pytest.raises(
        DescriptorError, match=r"double_xp\.so: the file declares plugin 'double_xp', not 'xp'"
    ):
        host.reload("xp", example_plugins["double_xp"])


def test_declared_signatures_are_rechecked_on_reload(host: Host, cc, tmp_path: Path) -> None:
    out = tmp_path / "libm2.so"
    src = "#include <stdint.h>\nint64_t add(int64_t a, int64_t b) { return a + b; }\n"
    lib = host.load(cc(src, out=out), name="m2", signatures={"add": "int64_t(int64_t, int64_t)"})
    cc("int other(void) { return 1; }\n", out=out)  # the rebuilt library lost its function
    with pytest.raises(
        LoadError, match=r"libm2\.so: add is declared .* not in the library's dynamic"
    ):
        host.reload("m2")
    assert lib.add(1, 2) == 3
    with pytest.raises(SignatureError):
        host.load(out, name="m3", signatures={"add": "int64_t(int64_t, ...)"})
