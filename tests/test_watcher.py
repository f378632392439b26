"""The watcher: real watchdog events on real files, a real host, real builds."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import resource
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload import ConfigError, Host, HotloadError
from hotload._artifact.builder import compile_plugin
from hotload._ops.apply import WatchEvent

from conftest import xp_source


def next_event(
    events: queue.Queue[WatchEvent],
    want: Callable[[WatchEvent], bool] = lambda e: True,
    timeout: float = 15.0,
) -> WatchEvent:
    """The next event matching ``want``; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("the watcher reported nothing matching in time")
        try:
            ev = events.get(timeout=left)
        except queue.Empty:
            continue
        if want(ev):
            return ev


def drain(events: queue.Queue[WatchEvent]) -> list[WatchEvent]:
    out = []
    while True:
        try:
            out.append(events.get_nowait())
        except queue.Empty:
            return out


def done(ev: WatchEvent) -> bool:
    return ev.action in ("reloaded", "loaded", "failed")


@pytest.fixture
def events() -> queue.Queue[WatchEvent]:
    return queue.Queue()


def test_build_renamed_into_place_is_swapped_in_with_state(host: Host, xp_build, events) -> None:
    target = xp_build(mult=2)
    xp = host.load(target)
    xp.reward(1, 0)
    xp.reward(1, 0)
    # wait: the start-up pass (which looks at the loaded build) is over before the clock starts
    watcher = host.watch(target.parent, on_event=events.put, wait=True)
    before = time.monotonic()
    xp_build(mult=3, version="1.1.0")  # the builder: temp file + rename
    ev = next_event(events, done)
    after = time.monotonic()
    assert (ev.action, ev.name, ev.seq, ev.plugin_version) == ("reloaded", "xp", 2, "1.1.0")
    assert xp.version_tag() == 3 and xp.grants_so_far() == 2
    # the times are this build's: seen after it started, serving before the event came
    assert before <= ev.changed_at <= ev.done_at <= after
    assert ev.latency == ev.done_at - ev.changed_at
    assert watcher.idle()
    assert [e.action for e in drain(events)] == []  # one swap, no second look


def test_cp_in_place_is_loaded_once_the_copy_is_complete(
    host: Host, xp_build, cc, tmp_path, events
) -> None:
    target = xp_build(mult=2)
    xp = host.load(target)
    new = cc(xp_source(mult=5), "xp5", out=tmp_path / "elsewhere" / "xp.so")
    host.watch(target.parent, on_event=events.put)
    shutil.copyfile(new, target)  # truncates and rewrites the same inode
    ev = next_event(events, done)
    assert ev.action == "reloaded", ev.error
    assert xp.version_tag() == 5
    assert [v.seq for v in host.versions("xp")] == [1, 2]


def test_slow_partial_write_is_never_loaded_half_written(
    host: Host, xp_build, cc, tmp_path, events
) -> None:
    target = xp_build(mult=2)
    xp = host.load(target)
    data = cc(xp_source(mult=7), "xp7", out=tmp_path / "elsewhere" / "xp.so").read_bytes()
    host.watch(target.parent, on_event=events.put)
    with open(target, "r+b") as fh:  # one slow writer, file open throughout
        fh.truncate(0)
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(0.45)  # past the settle time: the watcher looks, finds it truncated, retries
        assert xp.version_tag() == 2
        fh.write(data[len(data) // 2 :])
    ev = next_event(events, done)
    assert ev.action == "reloaded", ev.error
    assert xp.version_tag() == 7
    assert [v.seq for v in host.versions("xp")] == [1, 2]  # no version was made of the partial file


def test_a_file_that_stays_truncated_is_given_up_and_the_old_version_serves(
    host: Host, xp_build, cc, tmp_path, events
) -> None:
    target = xp_build(mult=2)
    xp = host.load(target)
    data = cc(xp_source(mult=7), "xp7", out=tmp_path / "elsewhere" / "xp.so").read_bytes()
    host.watch(target.parent, on_event=events.put, settle=0.03, retries=2)
    target.write_bytes(data[: len(data) * 3 // 4])
    ev = next_event(events, done)
    assert ev.action == "failed"
    assert "truncated" in (ev.error or "") and "gave up after 2 retries" in (ev.error or "")
    assert xp.version_tag() == 2 and [v.seq for v in host.versions("xp")] == [1]


def test_a_refused_build_is_reported_and_the_old_version_keeps_its_state(
    host: Host, xp_build, events
) -> None:
    target = xp_build(mult=2)
    xp = host.load(target)
    xp.reward(1, 0)
    host.watch(target.parent, on_event=events.put)
    xp_build(mult=9, refuse=7)
    ev = next_event(events, done)
    assert ev.action == "failed" and "refused to start (returned 7)" in (ev.error or "")
    assert xp.version_tag() == 2 and xp.grants_so_far() == 1
    xp_build(mult=4)  # the next good build goes live
    assert next_event(events, done).action == "reloaded"
    assert xp.version_tag() == 4 and xp.grants_so_far() == 1


def test_new_file_in_the_watched_directory_is_loaded(host: Host, xp_build, cc, events) -> None:
    target = xp_build(mult=2)
    host.load(target)
    host.watch(target.parent, on_event=events.put)
    cc(
        """
        #include <hotload.h>
        HOTLOAD_PLUGIN("calc", "0.1.0");
        HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
        HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
    """,
        "calc",
        out=target.parent / "calc.so",
    )
    ev = next_event(events, done)
    assert (ev.action, ev.name) == ("loaded", "calc")
    assert host["calc"].add(2, 3) == 5


def test_start_loads_what_is_there_and_leaves_unchanged_files_alone(
    tmp_path: Path, xp_build, cc, events
) -> None:
    target = xp_build(mult=2)
    cc(
        '#include <hotload.h>\nHOTLOAD_PLUGIN("other", "1");\n',
        "other",
        out=target.parent / "other.so",
    )
    (target.parent / "notes.txt").write_text("not a plugin")
    with Host(tmp_path / "work") as host:
        host.load(target)
        watcher = host.watch(target.parent, on_event=events.put)
        assert watcher.idle()
        got = {(e.name, e.action) for e in drain(events)}
        assert got == {("xp", "unchanged"), ("other", "loaded")}
        assert [v.seq for v in host.versions("xp")] == [1]


def test_touch_without_new_bytes_makes_no_new_version(host: Host, xp_build, events) -> None:
    target = xp_build(mult=2)
    host.load(target)
    watcher = host.watch(target.parent, on_event=events.put)
    os.utime(target)
    target.write_bytes(target.read_bytes())
    ev = next_event(events)
    assert ev.action == "unchanged"
    assert watcher.idle() and [v.seq for v in host.versions("xp")] == [1]


REBUILD_SRC = """
#include <hotload.h>
#include "tuning.h"
HOTLOAD_PLUGIN("tuned", VERSION);
HOTLOAD_API int32_t factor(void) { return FACTOR; }
HOTLOAD_EXPORT(factor, int32_t, (void));
"""


def _sources(tmp_path: Path, factor: int = 2) -> tuple[Path, Path, Path]:
    src = tmp_path / "srcdir"
    src.mkdir()
    (src / "tuned.c").write_text(REBUILD_SRC.replace("VERSION", '"1.0.0"'))
    (src / "tuning.h").write_text(f"#define FACTOR {factor}\n")
    out = tmp_path / "out"
    compile_plugin(src / "tuned.c", out / "tuned.so")
    return src, out, out / "tuned.so"


def _save(path: Path, text: str) -> None:
    """Save like an editor: write a hidden temp file, rename it over."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_rebuild_swaps_a_c_source_edit_and_a_header_edit(
    host: Host, tmp_path: Path, events
) -> None:
    src, out, so = _sources(tmp_path)
    tuned = host.load(so)
    host.watch(src, rebuild=True, out_dir=out, on_event=events.put)
    _save(src / "tuned.c", REBUILD_SRC.replace("VERSION", '"1.1.0"'))
    ev = next_event(events, done)
    assert (ev.action, ev.plugin_version) == ("reloaded", "1.1.0"), ev.error
    assert ev.build_seconds is not None and ev.source == str(src / "tuned.c")
    (src / "tuning.h").write_text("#define FACTOR 3\n")  # in place: modify + close
    ev = next_event(events, done)
    assert ev.action == "reloaded", ev.error
    assert tuned.factor() == 3


def test_broken_build_is_logged_with_the_compiler_message_and_old_keeps_serving(
    host: Host, tmp_path: Path, events, caplog
) -> None:
    src, out, so = _sources(tmp_path)
    tuned = host.load(so)
    host.watch(src, rebuild=True, out_dir=out, on_event=events.put)
    _save(src / "tuned.c", REBUILD_SRC.replace("return FACTOR;", "return FACTOR") + "\n")
    ev = next_event(events, done)
    assert ev.action == "failed"
    assert "compile failed" in (ev.error or "") and "error:" in (ev.error or "")
    assert any("error:" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert tuned.factor() == 2 and [v.seq for v in host.versions("tuned")] == [1]
    _save(src / "tuned.c", REBUILD_SRC.replace("VERSION", '"1.2.0"'))
    assert next_event(events, done).action == "reloaded"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_refused_rebuild_is_kept_aside_and_the_output_holds_what_runs(
    host: Host, tmp_path: Path, events, caplog
) -> None:
    """Issue 19, item 13: a build the host refused still replaced the
    watched output file, so nothing on disk matched what ran.  Only a build
    that serves is renamed into place; a refused one is kept beside it as
    ``xp.so.refused`` (a name no ``*.so`` watcher or glob takes for a plugin)."""
    src, out = tmp_path / "srcdir", tmp_path / "out"
    src.mkdir()
    (src / "xp.c").write_text(xp_source(mult=2))
    so, refused = out / "xp.so", out / "xp.so.refused"
    host.watch(src, rebuild=True, out_dir=out, on_event=events.put)
    assert next_event(events, done).action == "loaded"
    running = host.current("xp")
    assert running is not None and _sha(so) == running.digest

    _save(src / "xp.c", xp_source(mult=9, refuse=7))
    ev = next_event(events, done)
    assert ev.action == "failed" and "refused to start (returned 7)" in (ev.error or "")
    assert host["xp"].version_tag() == 2
    assert _sha(so) == running.digest  # the output still holds the build that runs
    assert refused.is_file() and (ev.path, ev.kept_as) == (str(so), str(refused))
    assert host.read(refused).name == "xp" and _sha(refused) != running.digest
    log = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert f"the refused build is kept as {refused}; {so} holds the build that runs" in log
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging left

    _save(src / "xp.c", xp_source(mult=4, version="1.1.0"))  # the next good build goes live
    ev = next_event(events, done)
    assert (ev.action, ev.path) == ("reloaded", str(so)), ev.error
    current = host.current("xp")
    assert current is not None and _sha(so) == current.digest and host["xp"].version_tag() == 4
    assert not refused.exists()  # superseded: a .refused file is always the latest refusal
    assert host.reload("xp").digest == current.digest  # its source holds what runs


def test_rebuild_loads_a_new_source_file(host: Host, tmp_path: Path, events) -> None:
    src, out, _so = _sources(tmp_path)
    host.watch(src, rebuild=True, out_dir=out, on_event=events.put, initial=False)
    _save(
        src / "extra.c",
        '#include <hotload.h>\nHOTLOAD_PLUGIN("extra", "1");\n'
        "HOTLOAD_API int32_t one(void) { return 1; }\nHOTLOAD_EXPORT(one, int32_t, (void));\n",
    )
    ev = next_event(events, done)
    assert (ev.action, ev.name) == ("loaded", "extra"), ev.error
    assert host["extra"].one() == 1 and (out / "extra.so").is_file()


def test_calls_never_fail_while_the_watcher_swaps(host: Host, xp_build, events) -> None:
    target = xp_build(mult=2)
    xp = host.load(target)
    host.watch(target.parent, on_event=events.put)
    stop, failures, calls = threading.Event(), [], [0]

    def player() -> None:
        while not stop.is_set():
            try:
                xp.reward(10, 1)
                calls[0] += 1
            except Exception as exc:  # the count is the assertion
                failures.append(exc)

    threads = [threading.Thread(target=player) for _ in range(3)]
    for t in threads:
        t.start()
    for mult in (3, 4, 5):
        xp_build(mult=mult)
        assert next_event(events, done).action == "reloaded"
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and xp.grants_so_far() == calls[0]


def test_close_stops_the_watcher_threads(tmp_path: Path, xp_build) -> None:
    target = xp_build(mult=2)
    before = {t.name for t in threading.enumerate()}
    with Host(tmp_path / "work") as host:
        host.load(target)
        host.watch(target.parent)
        assert any(t.name.startswith("hotload-watch") for t in threading.enumerate())
    leftover = {t.name for t in threading.enumerate()} - before
    assert not [n for n in leftover if n.startswith("hotload-watch")]


def test_watching_a_missing_path_is_a_clear_error(host: Host, tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"nowhere: cannot watch: no such file or directory"):
        host.watch(tmp_path / "nowhere")


def test_file_deleted_between_the_event_and_the_load_is_harmless(
    host: Host, xp_build, cc, tmp_path: Path, events
) -> None:
    """A build that appears and is deleted before the debounce ends: nothing is
    loaded, nothing breaks, the live version keeps serving, and the watcher
    still picks up the next build."""
    target = xp_build(mult=2)
    xp = host.load(target)
    xp.reward(1, 0)
    watcher = host.watch(target.parent, on_event=events.put)
    other = cc(xp_source(mult=5, version="9.9.9"), "other", out=tmp_path / "elsewhere" / "other.so")
    for i in range(5):
        ghost = target.parent / f"ghost{i}.so"
        shutil.copyfile(other, ghost)  # close-after-write: the watcher's 10 ms debounce starts
        os.unlink(ghost)
    deadline = time.monotonic() + 5
    while not watcher.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e for e in drain(events) if e.action in ("loaded", "reloaded")] == []
    assert xp.reward(1, 0) == 2 and xp.grants_so_far() == 2
    assert [v.seq for v in host.versions("xp")] == [1]
    xp_build(mult=3)
    ev = next_event(events, done)
    assert (ev.action, ev.seq) == ("reloaded", 2) and xp.reward(1, 0) == 3


# ---- hostile files in a watched directory (issue 9, item 2) -------------------------------


def peak_rss() -> int:
    """This process's peak resident set size, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_fifo_and_dev_zero_symlink_are_skipped_once_and_later_builds_still_apply(
    host: Host, xp_build, events, caplog
) -> None:
    """A FIFO used to block the watcher's thread forever (no later build was
    applied) and a symlink to /dev/zero made it read until OOM."""
    caplog.set_level(logging.WARNING, logger="hotload")
    target = xp_build(mult=2)
    xp = host.load(target)
    seen: list[WatchEvent] = []
    watcher = host.watch(target.parent, on_event=lambda e: (seen.append(e), events.put(e)))
    fifo, zero = target.parent / "evil.so", target.parent / "zero.so"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    for _ in range(3):  # more events for the same files: still one report each
        assert watcher.idle(15)
        os.utime(fifo)
        os.utime(zero, follow_symlinks=False)
    xp_build(mult=3, version="1.1.0")
    ev = next_event(events, done)
    assert (ev.action, ev.name, ev.plugin_version) == ("reloaded", "xp", "1.1.0"), ev.error
    assert xp.version_tag() == 3
    assert watcher.idle(15)
    skipped = [e for e in seen if e.action == "skipped"]
    assert sorted(Path(e.path).name for e in skipped) == ["evil.so", "zero.so"]
    errors = {Path(e.path).name: e.error or "" for e in skipped}
    assert "not a regular file (a FIFO)" in errors["evil.so"]
    assert "a symlink to /dev/zero, a character device" in errors["zero.so"]
    logged = [r.getMessage() for r in caplog.records if "not a regular file" in r.getMessage()]
    assert len(logged) == 2, logged


def test_a_sparse_1_gib_file_is_refused_unread_naming_the_cap(
    host: Host, xp_build, events, caplog
) -> None:
    target = xp_build(mult=2)
    xp = host.load(target)
    watcher = host.watch(target.parent, on_event=events.put)
    huge = target.parent / "huge.so"
    before = peak_rss()
    with open(huge, "wb") as fh:
        fh.truncate(1 << 30)
    ev = next_event(events, lambda e: e.path == str(huge))
    assert ev.action == "failed"
    assert "is 1,073,741,824 bytes, over the plugin size cap: refused unread" in (ev.error or "")
    assert "the cap is 256 MiB" in (ev.error or "")
    assert "Host(max_plugin_size=...)" in (ev.error or "")
    assert peak_rss() - before < 1 << 28  # never read: no 1 GiB buffer
    assert watcher.idle(15)
    assert [e for e in drain(events) if e.path == str(huge)] == []  # refused once, not retried
    xp_build(mult=3)
    assert next_event(events, done).action == "reloaded" and xp.version_tag() == 3
    # a failure that names no plugin does not claim a running version
    refusal = [r.getMessage() for r in caplog.records if "huge.so" in r.getMessage()]
    assert len(refusal) == 1 and "nothing was loaded from it" in refusal[0]


def test_max_size_option_caps_what_the_watcher_reads(host: Host, xp_build, events) -> None:
    target = xp_build(mult=2)
    host.watch(target.parent, on_event=events.put, max_size=1000)
    ev = next_event(events, done)
    assert ev.action == "failed" and "the cap is 1,000 bytes" in (ev.error or "")
    assert "xp" not in host


def test_rebuild_mode_skips_a_fifo_and_a_dev_zero_source(
    host: Host, tmp_path: Path, events
) -> None:
    """Sources are read too (to find the headers they include): a FIFO named
    like a source must not hang ``watch()`` itself."""
    src, out, _so = _sources(tmp_path)
    os.mkfifo(src / "evil.c")
    (src / "zero.c").symlink_to("/dev/zero")
    started: list[object] = []
    t = threading.Thread(
        target=lambda: started.append(
            host.watch(src, rebuild=True, out_dir=out, on_event=events.put)
        ),
        daemon=True,
    )
    t.start()
    t.join(30)
    assert started, "watch() blocked on a FIFO"
    got = {}
    while len(got) < 3:
        ev = next_event(events)
        got[Path(ev.source or ev.path).name] = ev
    assert got["evil.c"].action == "skipped" and "a FIFO" in (got["evil.c"].error or "")
    assert got["zero.c"].action == "skipped" and "/dev/zero" in (got["zero.c"].error or "")
    assert got["tuned.c"].action == "loaded"


# ---- a plugin whose first load fails (issue 9, item 16) ----------------------------------


def test_a_first_load_that_fails_says_nothing_runs_and_the_next_build_loads(
    host: Host, xp_build, events, caplog
) -> None:
    target = xp_build(mult=2, refuse=7)
    host.watch(target.parent, on_event=events.put)
    ev = next_event(events, done)
    assert (ev.action, ev.name) == ("failed", "xp")
    assert "refused to start (returned 7)" in (ev.error or "")
    msg = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "xp was not loaded (no version of it runs)" in msg
    assert "the watcher retries on the next change" in msg
    assert "keeps serving" not in msg
    xp_build(mult=4)
    ev = next_event(events, done)
    assert (ev.action, ev.seq) == ("loaded", 1) and host["xp"].version_tag() == 4


def test_a_failed_swap_of_a_running_plugin_says_it_keeps_serving(
    host: Host, xp_build, events, caplog
) -> None:
    target = xp_build(mult=2)
    host.load(target)
    host.watch(target.parent, on_event=events.put)
    xp_build(mult=9, refuse=3)
    assert next_event(events, done).action == "failed"
    msg = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "not swapped, the running version of xp keeps serving" in msg


# ---- plugins made of several .c files (issue 9, item 20) ---------------------------------

COMBO_MAIN = """
#include <hotload.h>
#include "combo.h"
HOTLOAD_PLUGIN("combo", "VERSION");
HOTLOAD_API int32_t value(void) { return helper() * FACTOR; }
HOTLOAD_EXPORT(value, int32_t, (void));
"""
COMBO_HELPER = '#include "combo.h"\nint helper(void) { return BASE; }\n'
SOLO = (
    '#include <hotload.h>\nHOTLOAD_PLUGIN("solo", "1");\n'
    "HOTLOAD_API int32_t one(void) { return 1; }\nHOTLOAD_EXPORT(one, int32_t, (void));\n"
)


def test_a_plugin_directory_is_built_into_one_library_and_rebuilt_when_any_file_changes(
    host: Host, tmp_path: Path, events
) -> None:
    src = tmp_path / "src"
    (src / "combo").mkdir(parents=True)
    (src / "combo" / "main.c").write_text(COMBO_MAIN.replace("VERSION", "1.0.0"))
    (src / "combo" / "helper.c").write_text(COMBO_HELPER.replace("BASE", "10"))
    (src / "combo" / "combo.h").write_text("#define FACTOR 2\nint helper(void);\n")
    (src / "solo.c").write_text(SOLO)  # a single .c beside them stays its own plugin
    watcher = host.watch(src, rebuild=True, on_event=events.put)
    first = {next_event(events, done).name for _ in range(2)}
    assert first == {"combo", "solo"}
    out = src / "build"  # the documented default for a directory not named native/plugins
    assert sorted(p.name for p in out.iterdir()) == ["combo.so", "solo.so"]
    combo = host["combo"]
    assert combo.value() == 20

    _save(src / "combo" / "helper.c", COMBO_HELPER.replace("BASE", "20"))
    ev = next_event(events, done)
    assert (ev.action, ev.name, ev.source) == ("reloaded", "combo", str(src / "combo")), ev.error
    assert combo.value() == 40

    _save(src / "combo" / "main.c", COMBO_MAIN.replace("VERSION", "1.1.0"))
    ev = next_event(events, done)
    assert (ev.action, ev.plugin_version) == ("reloaded", "1.1.0"), ev.error

    (src / "combo" / "combo.h").write_text("#define FACTOR 3\nint helper(void);\n")
    ev = next_event(events, done)
    assert (ev.action, ev.name) == ("reloaded", "combo"), ev.error
    assert combo.value() == 60

    assert watcher.idle(15)
    assert [v.seq for v in host.versions("solo")] == [1]  # untouched by the combo edits
    assert not drain(events)


def test_a_plugin_directory_moved_in_later_is_built_and_loaded(
    host: Host, tmp_path: Path, events
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    host.watch(src, rebuild=True, out_dir=out, on_event=events.put)
    staging = tmp_path / "staging" / "late"
    staging.mkdir(parents=True)
    (staging / "main.c").write_text(COMBO_MAIN.replace('"combo"', '"late"').replace("VERSION", "1"))
    (staging / "helper.c").write_text(COMBO_HELPER.replace("BASE", "7"))
    (staging / "combo.h").write_text("#define FACTOR 1\nint helper(void);\n")
    os.rename(staging, src / "late")
    ev = next_event(events, done)
    assert (ev.action, ev.name) == ("loaded", "late"), ev.error
    assert host["late"].value() == 7 and (out / "late.so").is_file()


def test_a_file_and_a_directory_claiming_the_same_plugin_is_a_clear_error(
    host: Host, tmp_path: Path, events
) -> None:
    src = tmp_path / "src"
    (src / "solo").mkdir(parents=True)
    (src / "solo" / "a.c").write_text(SOLO)
    (src / "solo.c").write_text(SOLO)
    host.watch(src, rebuild=True, out_dir=tmp_path / "out", on_event=events.put)
    ev = next_event(events, done)
    assert ev.action == "failed" and "would build the same solo.so; rename one" in (ev.error or "")


SIG_SOURCE = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("sig", "V");
    HOTLOAD_API int64_t f(PARAMS) { return BODY; }
    HOTLOAD_EXPORT(f, int64_t, (PARAMS));
"""


def test_allow_signature_change_lets_the_watcher_swap_in_a_new_prototype(
    host: Host, cc, tmp_path: Path, events
) -> None:
    out = tmp_path / "watched" / "sig.so"

    def build(version: str, params: str, body: str) -> Path:
        src = SIG_SOURCE.replace("V", version).replace("PARAMS", params).replace("BODY", body)
        return cc(src, "sig", out=out)

    sig = host.load(build("1", "int64_t a", "a"))
    strict = host.watch(out.parent, on_event=events.put)
    build("2", "int64_t a, int64_t b", "a + b")
    ev = next_event(events, done)
    assert ev.action == "failed" and "allow_signature_change" in (ev.error or ""), ev.error
    assert sig.f(5) == 5
    strict.stop()
    host.watch(out.parent, on_event=events.put, allow_signature_change=True)  # sees the new file
    ev = next_event(events, done)
    assert (ev.action, ev.seq, ev.plugin_version) == ("reloaded", 2, "2"), ev.error
    assert sig.f(5, 6) == 11


# ---- waiting for the start-up builds (issue 19, item 15) ---------------------------------

SLOW_CC = "sh -c 'sleep 1; exec cc \"$@\"' slow-cc"  # a compiler that takes a second at least


def _one_source(tmp_path: Path, **xp: Any) -> Path:
    src = tmp_path / "srcdir"
    src.mkdir()
    (src / "xp.c").write_text(xp_source(**xp))
    return src


def test_watch_wait_returns_once_the_start_up_build_is_loaded(host: Host, tmp_path: Path) -> None:
    """``host.watch(src, rebuild=True)`` returned before the initial build was
    loaded (0.83 s later): ``host["xp"]`` right after it failed."""
    src = _one_source(tmp_path, mult=3)
    watcher = host.watch(src, rebuild=True, out_dir=tmp_path / "out", cc=SLOW_CC, wait=True)
    assert watcher.ready and host["xp"].version_tag() == 3
    assert [(e.action, e.name) for e in watcher.wait(0)] == [("loaded", "xp")]


def test_the_watcher_handle_says_when_the_start_up_pass_is_done(host: Host, tmp_path: Path) -> None:
    src = _one_source(tmp_path, mult=3)
    (src / "broken.c").write_text("#include <hotload.h>\nint oops(void) { return }\n")
    watcher = host.watch(src, rebuild=True, out_dir=tmp_path / "out", cc=SLOW_CC)
    assert not watcher.ready and "xp" not in host  # returns at once, as before
    outcomes = watcher.wait(timeout=60)
    assert watcher.ready
    by_source = {Path(e.source or "").name: e for e in outcomes}
    assert sorted(by_source) == ["broken.c", "xp.c"]
    assert by_source["xp.c"].action == "loaded" and host["xp"].version_tag() == 3
    assert by_source["broken.c"].action == "failed"
    assert "compile failed" in (by_source["broken.c"].error or "")


def test_watch_wait_raises_naming_a_failed_start_up_build_and_stops_watching(
    host: Host, tmp_path: Path
) -> None:
    src = _one_source(tmp_path, mult=3, refuse=7)
    with pytest.raises(HotloadError) as err:
        host.watch(src, rebuild=True, out_dir=tmp_path / "out", wait=60.0)
    message = str(err.value)
    assert "the start-up pass failed" in message and str(src / "xp.c") in message
    assert "refused to start (returned 7)" in message
    assert not [t for t in threading.enumerate() if t.name.startswith("hotload-watch")]
    assert "xp" not in host


def test_watch_wait_times_out_stops_the_watcher_and_kills_the_build(
    host: Host, tmp_path: Path
) -> None:
    src = _one_source(tmp_path)
    with pytest.raises(HotloadError) as err:
        host.watch(src, rebuild=True, out_dir=tmp_path / "out", cc=SLOW_CC, wait=0.2)
    assert "did not finish within 0.2 s" in str(err.value) and "xp.c" in str(err.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("hotload-watch")]
    assert "xp" not in host and not (tmp_path / "out" / "xp.so").exists()


@pytest.mark.parametrize("wait", ["yes", -1.0, float("nan")])
def test_watch_wait_must_be_a_bool_or_seconds(host: Host, tmp_path: Path, wait: object) -> None:
    src = _one_source(tmp_path)
    with pytest.raises(ConfigError, match="wait"):
        host.watch(src, rebuild=True, out_dir=tmp_path / "out", wait=wait)
    assert not [t for t in threading.enumerate() if t.name.startswith("hotload-watch")]
