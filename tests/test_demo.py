"""`hotload demo`, run for real: the scripted hot swap and the interactive mode."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import PLUGINS_SRC, ROOT, Lines


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One run of ``hotload demo``: its output and its control directory."""
    tmp = tmp_path_factory.mktemp("demo")
    ctl = Path(tempfile.mkdtemp(prefix="hl-")) / "ctl"  # short: a socket path must fit 108 bytes
    env = {
        **os.environ,
        "HOTLOAD_CONTROL_DIR": str(ctl),
        "HOTLOAD_WORKDIR": str(tmp / "work"),
    }
    ctl.mkdir(mode=0o700)
    proc = subprocess.run(
        [sys.executable, "-m", "hotload", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout, ctl


def test_scripted_demo_runs_to_completion_with_every_check_passing(
    scripted: tuple[str, Path],
) -> None:
    out, ctl = scripted
    assert re.search(
        r"watcher rebuilt double_xp\.c in \d+ ms and swapped v1 1\.0\.0 -> v2 1\.1\.0", out
    )
    assert re.search(r"ok   calls +[\d,]+ served, 0 failed", out)
    assert (
        "ok   switch     v1 1.0.0 (x2) -> v2 1.1.0 (x3); 4 players went x2 -> x3 once, 0 went back"
        in out
    )
    assert re.search(
        r"ok   state +grant_count\(\) = ([\d,]+) = [\d,]+ rewards at x2 in v1 \+ [\d,]+ at x3", out
    )
    assert re.search(r"ok   old image +v1 unloaded: .*gone from /proc/self/maps", out)
    # the live-ops part: events, three services, handles, and a swap of the activity plugin
    grants = re.search(
        r"ok   grants +[\d,]+ events emitted; ([\d,]+) items reached the host = "
        r"([\d,]+) the handlers returned = total_granted\(\) ([\d,]+)",
        out,
    )
    assert grants and len(set(grants.groups())) == 1 and grants.group(1) != "0"
    assert re.search(r"ok   activity +v1 1\.0\.0 -> v2 1\.1\.0 \(login reward 3\); v1 unl", out)
    assert re.search(r"ok   canary +loot_drop 1\.1\.0-debug aborted by the judge in ", out)
    assert out.rstrip().endswith(
        "ok: hot swap under load with no failed call, state carried, old image unloaded"
    )
    assert len(out.splitlines()) <= 26  # a view for a person (one screen), not a log dump
    assert not list(ctl.iterdir())  # its control socket went with it


def shape(line: str) -> str:
    """A line of demo output without what changes from run to run: numbers,
    paths, the command shown in backticks, column padding."""
    line = re.sub(r"`[^`]*`", "`CMD`", line)
    line = re.sub(r"(?<![\w])/[^\s)]+", "PATH", line)
    line = re.sub(r"\d[\d,.]*", "N", line)
    return " ".join(line.split())


def test_the_documented_demo_output_is_what_the_demo_prints(scripted: tuple[str, Path]) -> None:
    """Found by a new user: getting-started's "real output" had fallen behind
    the demo (no activity lines).  Every line of the sample must be a line the
    demo prints now, in order, and none may be missing."""
    page = (ROOT / "docs/guide/getting-started.md").read_text(encoding="utf-8")
    section = page[page.index("## The demo (`make demo`)") :]
    sample = re.search(r"^```\n(.*?)^```", section, re.M | re.S).group(1)  # type: ignore[union-attr]
    assert [shape(ln) for ln in sample.splitlines()] == [
        shape(ln) for ln in scripted[0].splitlines()
    ]


NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


def test_the_readme_says_what_the_demo_does(scripted: tuple[str, Path]) -> None:
    """Found by a new user: the README said the demo calls two C plugins while it
    edits one; it loads three and swaps two."""
    out = scripted[0]
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = re.search(
        r"whose (\w+) player threads call (\w+) C plugins .*? while it edits (\w+) of them",
        readme,
    )
    assert said, "the README no longer describes the demo in the words this test reads"
    players = int(re.search(r"^  players +(\d+) threads", out, re.M).group(1))  # type: ignore[union-attr]
    plugins = len(re.findall(r"^  plugin +\w+", out, re.M))
    swaps = len(re.findall(r"^  \[ *[\d.]+s\] swap ", out, re.M))
    assert [NUMBERS[w] for w in said.groups()] == [players, plugins, swaps], out


def test_interactive_demo_swaps_a_saved_edit_until_ctrl_c(tmp_path: Path, short_tmp: Path) -> None:
    src = tmp_path / "plugins"
    src.mkdir()
    for name in ("double_xp.c", "loot_drop.c"):
        shutil.copy(PLUGINS_SRC / name, src / name)
    env = {
        **os.environ,
        "HOTLOAD_CONTROL_DIR": str(short_tmp / "ctl"),
        "HOTLOAD_WORKDIR": str(tmp_path / "work"),
    }
    (short_tmp / "ctl").mkdir(mode=0o700)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hotload",
            "demo",
            "--interactive",
            "--players",
            "2",
            "--src",
            str(src),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out = Lines(proc)

    try:
        out.expect(r"and save; Ctrl-C to stop")
        source = src / "double_xp.c"
        source.write_text(
            source.read_text().replace("#define MULTIPLIER 2", "#define MULTIPLIER 5")
        )
        assert "double_xp now v2" in out.expect(r"swap +double_xp\.c")
        back = subprocess.run(
            [sys.executable, "-m", "hotload", "rollback", "double_xp"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert back.returncode == 0, back.stderr
        out.expect(
            r"swap +double_xp now v3 1\.0\.0 \(rollback to v1\)"
        )  # the view shows outside swaps too
        source.write_text(
            source.read_text().replace("return xp;", "return xp")
        )  # a typo: refused, v2 serves
        assert "the running version keeps serving" in out.expect(r"refused +double_xp\.c")
        proc.send_signal(signal.SIGINT)
        assert re.search(r"stopped: [\d,]+ calls served, 0 failed", out.expect(r"^stopped"))
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_isolated_demo_survives_a_plugin_that_crashes_on_purpose(
    tmp_path: Path, short_tmp: Path
) -> None:
    env = {
        **os.environ,
        "HOTLOAD_CONTROL_DIR": str(short_tmp / "ctl"),
        "HOTLOAD_WORKDIR": str(tmp_path / "work"),
    }
    (short_tmp / "ctl").mkdir(mode=0o700)
    proc = subprocess.run(
        [sys.executable, "-m", "hotload", "demo", "--isolate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(r"plugin +double_xp 1\.0\.0 \(.*; isolated, worker pid \d+\)", out)
    assert re.search(r"plugin +activity 1\.0\.0 \(.*; isolated, worker pid \d+\)", out)
    # the isolated activity plugin read player_t, called the host's services and was swapped
    grants = re.search(r"ok   grants +.* ([\d,]+) items reached the host = ([\d,]+) the", out)
    assert grants and grants.group(1) == grants.group(2) and grants.group(1) != "0", out
    assert re.search(r"ok   activity +v1 1\.0\.0 -> v2 1\.1\.0 .*its worker exited", out)
    crashed = re.search(r"crashy\.boom\(\) in worker pid (\d+): PluginCrashedError: .*SIGSEGV", out)
    restarted = re.search(r"crashy v1 restarted in worker pid (\d+) \(1 restart\); ping", out)
    assert crashed and restarted and crashed.group(1) != restarted.group(1), out
    assert re.search(r"ok   calls +[\d,]+ served, 0 failed", out)  # the players never noticed
    assert re.search(r"ok   crash +crashy\.boom\(\) crashed worker pid \d+", out)
    assert re.search(r"watcher rebuilt double_xp\.c in \d+ ms and swapped v1 1\.0\.0 -> v2", out)
    assert out.rstrip().endswith("old image unloaded")
