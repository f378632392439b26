"""`make demo-interactive` builds its edits into a private directory (issue 9, item 22).

It used to watch ``native/plugins`` with the watcher's default output,
``build/plugins``: the edited ``double_xp.so`` replaced the one ``make plugins``
built, and the README's quickstart then printed other numbers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import PLUGINS_SRC, Lines


def test_interactive_demo_leaves_build_plugins_alone_and_removes_its_private_build(
    tmp_path: Path,
    short_tmp: Path,
) -> None:
    checkout = tmp_path / "checkout"  # laid out like the repository
    src = checkout / "native" / "plugins"
    src.mkdir(parents=True)
    for name in ("double_xp.c", "loot_drop.c"):
        shutil.copy(PLUGINS_SRC / name, src / name)
    shared_build = checkout / "build" / "plugins"  # where the watcher's default would build
    env = {
        **os.environ,
        "HOTLOAD_CONTROL_DIR": str(short_tmp / "ctl"),
        "HOTLOAD_WORKDIR": str(tmp_path / "work"),
    }
    (short_tmp / "ctl").mkdir(mode=0o700)
    cmd = [sys.executable, "-m", "hotload", "demo", "--interactive", "--players", "1"]
    proc = subprocess.Popen(
        [*cmd, "--src", str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out = Lines(proc)

    try:
        out.expect(r"and save; Ctrl-C to stop")
        assert not shared_build.exists(), list(shared_build.iterdir())
        private = Path(
            re.search(r"builds +(\S+) \(private", "".join(out.seen)).group(1)  # type: ignore[union-attr]
        )
        assert (private / "double_xp.so").is_file()
        source = src / "double_xp.c"
        source.write_text(
            source.read_text().replace("#define MULTIPLIER 2", "#define MULTIPLIER 3")
        )
        assert "double_xp now v2" in out.expect(r"swap +double_xp\.c")
        assert not shared_build.exists()
        proc.send_signal(signal.SIGINT)
        out.expect(r"^stopped")
        assert proc.wait(30) == 0
        assert not private.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
