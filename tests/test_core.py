"""The core after the restructuring: per-plugin locks and hook timeouts, one
error type at the API boundary, the kernel's count of mapped bytes, the
queries.  (The shape of the package is test_layout.py.)"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hotload import HookError, Host, HotloadError, InvalidPluginError, NotLoadedError

from conftest import run_guarded

HUNG = r"""
#include <hotload.h>
#include <unistd.h>
HOTLOAD_PLUGIN("hung", "V");
static int blocked;
static int on_load(const char *prev, const void *state, size_t size) {
    (void)prev; (void)state; (void)size;
    if (HANG_LOAD) for (;;) pause();
    return 0;
}
static int on_unload(const void **state, size_t *size) {
    if (HANG_UNLOAD) for (;;) pause();
    *state = &blocked; *size = sizeof blocked; return 0;
}
HOTLOAD_ON_LOAD(on_load);
HOTLOAD_ON_UNLOAD(on_unload);
HOTLOAD_API int v(void) { return V; }
HOTLOAD_EXPORT(v, int, (void));
"""


def hung_source(v: int, *, hang_load: bool = False, hang_unload: bool = False) -> str:
    return (
        HUNG.replace("V", str(v))
        .replace("HANG_LOAD", "1" if hang_load else "0")
        .replace("HANG_UNLOAD", "1" if hang_unload else "0")
    )


def gated_source(v: int, entered_w: int, gate_r: int) -> str:
    """``hung`` whose on_load writes a byte to ``entered_w``, then waits for
    one on ``gate_r`` (this process's pipe fds): held as long as the test wants."""
    held = (
        f"{{ char c = 1; if (write({entered_w}, &c, 1) != 1) return 1;"
        f" if (read({gate_r}, &c, 1) != 1) return 1; }}"
    )
    return hung_source(v).replace("if (0) for (;;) pause();", held, 1)


def test_a_hook_in_progress_blocks_only_its_own_plugin(tmp_path: Path, cc, example_plugins) -> None:
    """Issue 9, item 4: while one plugin's swap is inside its on_load (held
    there on a pipe, with no hook deadline near to end it), another plugin
    serves, reloads and is listed."""
    out = tmp_path / "hung.so"
    entered_r, entered_w = os.pipe()
    gate_r, gate_w = os.pipe()
    try:
        with Host(tmp_path / "w", preflight=False, hook_timeout=600.0) as host:
            hung = host.load(cc(hung_source(1), out=out))
            loot = host.load(example_plugins["loot_drop"])
            cc(gated_source(2, entered_w, gate_r), out=out)
            reload = threading.Thread(target=host.reload, args=("hung",), daemon=True)
            reload.start()
            try:
                assert select.select([entered_r], [], [], 60)[0], "on_load of hung 2 never ran"

                def other_plugin() -> tuple[str, set[str]]:
                    assert loot.rarity(7, 1) == loot.rarity(7, 1)  # another plugin serves
                    host.reload("loot_drop")  # and reloads
                    return host.versions("loot_drop")[-1].state, {v.name for v in host.versions()}

                state, names = run_guarded(other_plugin, what="the other plugin's calls")
                assert state == "active" and {"hung", "loot_drop"} <= names
                assert reload.is_alive()  # all that while hung's on_load had not returned
            finally:
                os.write(gate_w, b"x")
                reload.join(60)
            assert not reload.is_alive()
            assert hung.v() == 2 and [v.state for v in host.versions("hung")][-1] == "active"
    finally:
        for fd in (entered_r, entered_w, gate_r, gate_w):
            os.close(fd)


def test_a_hung_on_load_refuses_the_swap_after_hook_timeout(tmp_path: Path, cc) -> None:
    """Issue 9, item 4: a hook that never returns refuses the swap after
    hook_timeout, the stuck image is kept (retained), the old version keeps
    serving, and close() does not wait for the hook."""
    out = tmp_path / "hung.so"
    host = Host(tmp_path / "w", preflight=False, hook_timeout=1.0)
    try:
        hung = host.load(cc(hung_source(1), out=out))
        cc(hung_source(2, hang_load=True), out=out)
        with pytest.raises(HookError, match="on_load of hung 2 did not return within 1 s"):
            host.reload("hung")
        assert hung.v() == 1  # the old version keeps serving
        stuck = host.versions("hung")[-1]
        assert (stuck.seq, stuck.state) == (2, "retained")
        assert "did not return" in stuck.note
    finally:
        run_guarded(lambda: host.close(timeout=2.0), what="close() with a hook stuck for good")


def test_a_hung_on_unload_refuses_the_swap_and_keeps_serving(tmp_path: Path, cc) -> None:
    out = tmp_path / "hung.so"
    with Host(tmp_path / "w", preflight=False, hook_timeout=0.5) as host:
        hung = host.load(cc(hung_source(1, hang_unload=True), out=out))
        cc(hung_source(2), out=out)
        with pytest.raises(HookError, match=r"on_unload of hung 1 did not return within 0.5 s"):
            host.reload("hung")
        assert hung.v() == 1
        assert [v.state for v in host.versions("hung")] == ["active"]


def test_mapped_bytes_are_the_kernels_count_for_every_image_in_memory(
    host: Host, example_plugins
) -> None:
    """Issue 9, item 8: an active (or retained) version is in memory, so its
    mapped bytes are not 0."""
    host.load(example_plugins["loot_drop"])
    [info] = host.versions("loot_drop")
    assert info.state == "active" and info.mapped_bytes > 4096
    host.unload("loot_drop")
    assert host.settle()
    [info] = host.versions("loot_drop")
    assert info.state == "unloaded" and info.mapped_bytes == 0


def test_a_burst_of_reloads_is_proven_gone_with_few_reads_of_the_maps(
    host: Host, example_plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24 item 6: the reaper proves a burst's retired images gone from
    one read of ``/proc/self/maps`` per batch (at most one every 20 ms), not
    one read each; every image is still proven gone, by the kernel's list."""
    from hotload._platform import _posix

    reads = [0]
    real = _posix._read_maps

    def counted() -> bytes:
        reads[0] += 1
        return real()

    monkeypatch.setattr(_posix, "_read_maps", counted)
    host.load(example_plugins["loot_drop"])
    for _ in range(40):
        host.reload("loot_drop")
    assert host.settle()
    infos = host.versions("loot_drop")
    assert [i.state for i in infos[:-1]] == ["unloaded"] * (len(infos) - 1)
    assert all(i.mapped_bytes == 0 for i in infos[:-1]) and infos[-1].mapped_bytes > 4096
    assert 1 <= reads[0] < 20, reads[0]  # was 40: one per retired version


@pytest.mark.parametrize(
    "bad",
    ["bad\0name.so", "x" * 5000 + ".so", "/proc/self/mem", "/dev/zero", "/", ""],
)
def test_every_bad_path_is_a_hotload_error(host: Host, bad: str) -> None:
    """Issue 9, item 9: no raw OSError/ValueError escapes the public API."""
    with pytest.raises(HotloadError):
        host.load(bad)
    with pytest.raises(HotloadError):
        host.read(bad)


def test_a_source_flipping_between_symlink_and_file_never_leaks_oserror(
    tmp_path: Path, host: Host, example_plugins
) -> None:
    src = tmp_path / "flip.so"
    real = example_plugins["loot_drop"]
    src.write_bytes(real.read_bytes())
    host.load(src)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            tmp = tmp_path / "flip.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(real)
            os.replace(tmp, src)
            tmp.write_bytes(real.read_bytes())
            os.replace(tmp, src)

    t = threading.Thread(target=flip)
    t.start()
    outcomes: set[str] = set()
    try:
        for _ in range(300):
            try:
                host.reload("loot_drop")
                outcomes.add("ok")
            except HotloadError as exc:
                outcomes.add(type(exc).__name__)
    finally:
        stop.set()
        t.join()
    assert "ok" in outcomes  # only HotloadErrors, and some reloads went through
    assert host.plugin("loot_drop").rarity(3, 1) == host.plugin("loot_drop").rarity(3, 1)


def test_versions_without_a_name_lists_every_plugin(host: Host, example_plugins) -> None:
    """Issue 9, item 21."""
    host.load(example_plugins["loot_drop"])
    xp = host.load(example_plugins["double_xp"])
    assert host.names() == ["double_xp", "loot_drop"]
    assert [v.name for v in host.versions()] == ["double_xp", "loot_drop"]
    assert host.plugin("double_xp") is xp and host["double_xp"] is xp
    assert xp.functions()["reward"].startswith("int64_t")
    assert host.current("double_xp").seq == 1 and host.current("nope") is None
    with pytest.raises(NotLoadedError, match="exports no function 'nope'; it exports: "):
        xp["nope"]
    with pytest.raises(AttributeError) as info:
        xp.rewad  # noqa: B018
    assert (
        "reward" in str(info.value)
        or "reward" in getattr(info.value, "name", "")
        or ("reward" in dir(xp))
    )


def test_calls_served_are_counted_per_version(host: Host, example_plugins) -> None:
    xp = host.load(example_plugins["double_xp"])
    for _ in range(25):
        xp.reward(10, 1)
    [info] = host.versions("double_xp")
    assert info.served == 25 and info.in_flight == 0


def test_candidate_is_read_once_and_loaded_as_checked(tmp_path: Path, host: Host, xp_build) -> None:
    """The watcher's and the fleet's path: the bytes that were checked are
    the bytes that run, even if the file changes after the read."""
    path = xp_build(mult=2)
    cand = host.read(path)
    xp_build(mult=9)  # the file changes after the read
    xp = host.load(cand)
    assert xp.reward(1, 0) == 2
    cand2 = host.adopt(path.read_bytes(), source="fleet:xp")
    info = host.reload("xp", cand2)
    assert info.source == "fleet:xp" and xp.reward(1, 0) == 9
    with pytest.raises(InvalidPluginError, match="not an ELF|not a shared library|truncated"):
        host.adopt(b"\x7fELF garbage", source="fleet:bad")


def test_native_crash_prints_where_it_happened(tmp_path: Path, cc) -> None:
    """Issue 9, item 23: a crash inside a call prints the Python stack
    (faulthandler) instead of dying silently with rc 139."""
    lib = cc(
        """
        #include <hotload.h>
        HOTLOAD_PLUGIN("boom", "1");
        HOTLOAD_API int boom(int x) { volatile int *p = 0; return *p + x; }
        HOTLOAD_EXPORT(boom, int, (int));
        """,
        "boom",
    )
    code = (
        "import sys; from hotload import Host\n"
        f"h = Host({str(tmp_path / 'w')!r}, preflight=False)\n"
        f"p = h.load({str(lib)!r})\n"
        "def serve_players(): return p.boom(1)\n"
        "serve_players()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Fatal Python error: Segmentation fault" in proc.stderr
    assert "serve_players" in proc.stderr


SLOW_UNLOAD = r"""
#include <hotload.h>
#include <unistd.h>
HOTLOAD_PLUGIN("slow", "V");
static int calls;
static char blob[8] = "state";
static int save(const void **s, size_t *n) {
    if (calls++ == 0) usleep(1500 * 1000);  /* the first on_unload outlives hook_timeout */
    *s = blob; *n = sizeof blob; return 0;
}
HOTLOAD_ON_UNLOAD(save);
static int restore(const char *p, const void *s, size_t n) { (void)p; (void)s; (void)n; return 0; }
HOTLOAD_ON_LOAD(restore);
HOTLOAD_API int value(void) { return V; }
HOTLOAD_EXPORT(value, int, (void));
"""


def test_an_image_whose_hook_timed_out_is_never_closed(tmp_path: Path, cc) -> None:
    """Found by the attack on the restructured core: after an on_unload timed
    out, a later swap retired the old image and the reaper unmapped it while
    the abandoned hook was still running in it (SIGSEGV when it returned).
    Run in a child so that a crash fails the test instead of killing it."""
    v1 = cc(SLOW_UNLOAD.replace("V", "1"), "slow1")
    v2 = cc(SLOW_UNLOAD.replace("V", "2"), "slow2")
    code = f"""
import time
from hotload import Host, HookError
h = Host({str(tmp_path / "w")!r}, preflight=False, hook_timeout=0.3)
p = h.load({str(v1)!r})
try:
    h.reload("slow", {str(v2)!r})
    raise SystemExit("the hung on_unload was not refused")
except HookError as exc:
    assert "did not return" in str(exc), exc
assert p.value() == 1
h.reload("slow", {str(v2)!r})  # the hook returns at once this time
assert p.value() == 2
assert h.settle(3)
v1 = h.versions("slow")[0]
assert v1.state == "retained" and "on_unload never returned" in v1.note, v1
time.sleep(2.0)  # the abandoned hook returns into v1: it must still be mapped
assert p.value() == 2
h.close()
print("alive")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "alive" in proc.stdout, proc.stderr[-2000:]


def test_unload_marks_the_version_draining_at_once(host: Host, example_plugins) -> None:
    """After unload() returns no version is reported active, and a call that
    raced the unload backs out instead of entering a closing image."""
    host.load(example_plugins["loot_drop"])
    host.unload("loot_drop")
    assert [v.state for v in host.versions("loot_drop")] != ["active"]
    assert host.settle()
    assert [v.state for v in host.versions("loot_drop")] == ["unloaded"]
