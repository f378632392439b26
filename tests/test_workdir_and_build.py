"""Work directory hygiene (private, swept after a crash) and the build."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hotload import Host, HotloadError
from hotload._artifact.builder import BuildError, compile_plugin

from conftest import ROOT, versioned_copies


def _crashing_host(workdir: Path, plugin: Path) -> subprocess.Popen[str]:
    script = textwrap.dedent(f"""
        import sys, time
        from hotload import Host
        host = Host({str(workdir)!r})
        host.load({str(plugin)!r})
        host.reload("double_xp")
        print(host.workdir, flush=True)
        time.sleep(60)
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def test_copies_of_a_crashed_host_are_swept_by_the_next_host(
    tmp_path: Path, example_plugins
) -> None:
    work = tmp_path / "work"
    proc = _crashing_host(work, example_plugins["double_xp"])
    crashed_dir = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
    assert versioned_copies(crashed_dir)
    with Host(work) as live:  # a live host's files are never touched by a sweep
        assert versioned_copies(crashed_dir)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert crashed_dir.exists()  # nobody swept yet
        with Host(work) as later:
            assert not crashed_dir.exists()
            assert live.workdir.exists() and later.workdir.exists()
    assert not any(work.iterdir())


def test_work_directory_must_be_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(
        HotloadError, match=r"shared: work directory has mode 777; it must be private"
    ):
        Host(shared)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(HotloadError, match="symlink"):
        Host(link)


def test_versioned_copies_are_unique_read_only_files(host: Host, example_plugins) -> None:
    host.load(example_plugins["loot_drop"])
    host.reload("loot_drop")
    host.reload("loot_drop")
    names = [Path(v.copy).name for v in host.versions("loot_drop")]
    assert len(set(names)) == 3 and all(
        n.startswith(f"loot_drop.v{i + 1}.") for i, n in enumerate(names)
    )
    [current] = versioned_copies(host.workdir) if host.settle() else []
    assert stat.S_IMODE(current.stat().st_mode) == 0o500


def test_build_py_builds_every_plugin_and_honours_cc_and_cflags(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "CC": "gcc", "CFLAGS": "-O2 -DHOTLOAD_TEST_FLAG=1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "build.py"), "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = sorted(p.name for p in out.iterdir())
    expected = sorted(p.stem + ".so" for p in (ROOT / "native" / "plugins").glob("*.c"))
    assert built == expected
    bad = subprocess.run(
        [sys.executable, str(ROOT / "build.py"), "-o", str(out)],
        capture_output=True,
        text=True,
        env={**env, "CC": "no-such-compiler-xyz"},
    )
    assert bad.returncode == 1 and "no-such-compiler-xyz" in bad.stdout


def test_failed_build_keeps_the_previous_output_and_leaves_no_temp(tmp_path: Path) -> None:
    src = tmp_path / "p.c"
    src.write_text(
        '#include <hotload.h>\nHOTLOAD_PLUGIN("p", "1");\nHOTLOAD_API int f(void) { return 1; }\n'
        "HOTLOAD_EXPORT(f, int, (void));\n"
    )
    out = tmp_path / "out" / "p.so"
    compile_plugin(src, out)
    before = out.read_bytes()
    inode = out.stat().st_ino
    src.write_text("this does not compile\n")
    with pytest.raises(BuildError, match=r"p\.c: compile failed"):
        compile_plugin(src, out)
    assert out.read_bytes() == before and out.stat().st_ino == inode
    assert [p.name for p in out.parent.iterdir()] == ["p.so"]


def test_build_replaces_output_by_rename_not_in_place(tmp_path: Path) -> None:
    """A reader holding the old file keeps it intact: the output is a new inode."""
    src = tmp_path / "p.c"
    src.write_text('#include <hotload.h>\nHOTLOAD_PLUGIN("p", "1");\n')
    out = tmp_path / "p.so"
    compile_plugin(src, out)
    with open(out, "rb") as old:
        first = old.read()
        compile_plugin(src, out)
        old.seek(0)
        assert old.read() == first
        assert os.fstat(old.fileno()).st_ino != out.stat().st_ino


@pytest.mark.parametrize("starts", [75, pytest.param(300, marks=pytest.mark.soak)])
def test_hosts_starting_and_sweeping_at_once_never_hurt_each_other(
    tmp_path: Path, starts: int
) -> None:
    """Each new WorkDir sweeps the base: with several processes starting hosts
    at once, no live host's directory may be swept and no start may fail.
    (Half of each process's directories are left behind, so every sweep has
    more to look at: 300 starts each is ~16 times the work of 75.)"""
    base = tmp_path / "base"
    script = textwrap.dedent(f"""
        from hotload._artifact.workdir import WorkDir
        bad = 0
        for i in range({starts}):
            w = WorkDir({str(base)!r})
            try:
                w.write_copy("p", i, b"x" * 64, ".so")
            except Exception as exc:  # a swept live directory shows up here
                bad += 1
                print(type(exc).__name__, exc)
            if i % 2:
                w.close()  # the others are left behind, as by a crashed host, for the next sweeps
        print("bad", bad)
    """)
    base.mkdir(mode=0o700)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-800:]
        assert out.strip().endswith("bad 0"), out[-800:]


def test_relative_work_directory(tmp_path: Path, example_plugins, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Host("relwork") as host:
        assert host.workdir.is_absolute()
        assert host.load(example_plugins["loot_drop"]).rarity(0, 0) == 0
        host.reload("loot_drop")


def test_unusable_work_directory_is_a_hotload_error(tmp_path: Path) -> None:
    with pytest.raises(
        HotloadError, match=r"cannot create the work directory: No such file or directory"
    ):
        Host(tmp_path / "missing" / "deeper")
