"""Builds that never end: a source including a FIFO makes the compiler wait
forever.  Real compilers, real FIFOs, a real watcher."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pytest

from hotload import BuildError, Host
from hotload._artifact.builder import compile_plugin
from hotload._ops.apply import WatchEvent

GOOD = """
#include <hotload.h>
#include <stdint.h>
HOTLOAD_PLUGIN("good", "VERSION");
HOTLOAD_API int32_t value(void) { return RESULT; }
HOTLOAD_EXPORT(value, int32_t, (void));
"""


def _good(version: str, result: int) -> str:
    return GOOD.replace("VERSION", version).replace("RESULT", str(result))


def _processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _gone(text: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _processes_mentioning(text):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def evil(tmp_path: Path) -> Path:
    """A source directory whose ``evil.c`` includes a FIFO."""
    src = tmp_path / "srcdir"
    src.mkdir()
    os.mkfifo(src / "pipe.h")
    (src / "evil.c").write_text('#include "pipe.h"\n')
    return src


def test_a_build_past_its_timeout_is_killed_whole_and_is_a_build_error(
    tmp_path: Path, evil: Path
) -> None:
    outcome: list[BaseException | None] = []

    def build() -> None:
        try:
            compile_plugin(evil / "evil.c", tmp_path / "out" / "evil.so", timeout=1.0)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=build, daemon=True)
    t.start()
    t.join(60)
    assert outcome, "the build never returned"
    assert isinstance(outcome[0], BuildError), outcome[0]
    message = str(outcome[0])
    assert str(evil / "evil.c") in message and "within 1 s" in message
    assert _gone(str(evil)), "the compiler (cc1) outlived the build"
    assert not list((tmp_path / "out").glob(".*.tmp")), "a temp output was left"


def test_the_watcher_times_out_a_wedged_build_and_keeps_applying(
    host: Host, tmp_path: Path
) -> None:
    """A new ``evil.c`` including a FIFO used to wedge the watcher's only
    worker: a later edit of ``good.c`` was never applied."""
    src = tmp_path / "srcdir"
    src.mkdir()
    (src / "good.c").write_text(_good("1.0.0", 1))
    events: queue.Queue[WatchEvent] = queue.Queue()
    watcher = host.watch(
        src, rebuild=True, out_dir=tmp_path / "out", build_timeout=1.0, on_event=events.put
    )
    assert watcher.idle(60)
    good = host["good"]
    assert good.value() == 1
    while not events.empty():
        events.get_nowait()
    os.mkfifo(src / "pipe.h")
    (src / "evil.c").write_text('#include "pipe.h"\n')
    time.sleep(0.5)  # the evil build starts first
    tmp = src / ".good.swp"
    tmp.write_text(_good("2.0.0", 2))
    os.replace(tmp, src / "good.c")
    seen: dict[str, WatchEvent] = {}
    deadline = time.monotonic() + 60
    while not ("good" in seen and "evil" in seen) and time.monotonic() < deadline:
        try:
            ev = events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if ev.action in ("failed", "reloaded", "loaded"):
            seen[Path(ev.source or ev.path).stem] = ev
    assert seen["evil"].action == "failed" and "within 1 s" in (seen["evil"].error or "")
    assert seen["good"].action == "reloaded", seen["good"].error
    assert good.value() == 2
    assert _gone(str(src))


def test_stopping_the_watcher_kills_a_running_build(host: Host, tmp_path: Path, evil: Path) -> None:
    watcher = host.watch(evil, rebuild=True, out_dir=tmp_path / "out", build_timeout=600.0)
    deadline = time.monotonic() + 30
    while not _processes_mentioning(str(evil)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(str(evil)), "the build did not start"
    watcher.stop(timeout=30)
    assert not watcher._worker.is_alive(), "stop() waited on the wedged build"
    assert _gone(str(evil)), "the compiler outlived the watcher"
