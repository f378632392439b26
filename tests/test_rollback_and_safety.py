"""Rollback, unload safety (retained images), and the leak budget."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hotload import Host, HotloadError

from conftest import mapped_images


def test_rollback_restores_the_previous_build_as_a_new_seq(host: Host, xp_build) -> None:
    xp = host.load(xp_build(mult=2, version="1.0"))
    xp.reward(1, 0)
    xp_build(mult=3, version="2.0")
    host.reload("xp")
    xp_build(mult=4, version="3.0")
    host.reload("xp")
    xp.reward(1, 0)
    info = host.rollback("xp")
    assert (info.seq, info.plugin_version, info.note) == (4, "2.0", "rollback to v2")
    assert xp.reward(1, 0) == 3 and xp.grants_so_far() == 3  # state handed across
    assert host.rollback("xp").plugin_version == "1.0"
    assert xp.reward(1, 0) == 2 and xp.grants_so_far() == 4
    with pytest.raises(
        HotloadError,
        match=r"xp: nothing to roll back to: v5 \(a rollback to v1\) is the oldest build loaded",
    ):
        host.rollback("xp")
    assert [(v.seq, v.plugin_version) for v in host.versions("xp")] == [
        (1, "1.0"),
        (2, "2.0"),
        (3, "3.0"),
        (4, "2.0"),
        (5, "1.0"),
    ]
    xp_build(mult=7, version="4.0")  # a reload after rollbacks goes on normally
    host.reload("xp")
    assert host.rollback("xp").plugin_version == "1.0"


def test_rollback_works_after_the_source_file_is_gone(host: Host, xp_build) -> None:
    src = xp_build(mult=2)
    xp = host.load(src)
    xp_build(mult=5)
    host.reload("xp")
    src.unlink()
    host.rollback("xp")  # bytes were kept in memory
    assert xp.reward(1, 0) == 2


def test_rollback_limit_is_explained(tmp_path: Path, xp_build) -> None:
    with Host(tmp_path / "w", keep_versions=2, preflight=False) as host:
        host.load(xp_build(mult=1))
        for m in (2, 3, 4):
            xp_build(mult=m)
            host.reload("xp")
        host.rollback("xp")  # v5 serves v3's build; v4's build was rolled back
        with pytest.raises(
            HotloadError,
            match=r"cannot roll back past v5 \(a rollback to v3\): older builds are no longer "
            r"kept \(Host\(keep_versions=2\)\)",
        ):
            host.rollback("xp")


def test_rollback_never_reaches_across_an_unload(host: Host, xp_build) -> None:
    """After unload + load, "previous" means previous since that load, and
    the new copy is named after its real seq (issue 9, item 15)."""
    host.load(xp_build(mult=2, version="1.0"))
    xp_build(mult=3, version="2.0")
    host.reload("xp")
    host.unload("xp")
    xp = host.load(xp_build(mult=4, version="3.0"))
    assert [v.seq for v in host.versions("xp")][-1] == 3
    assert ".v3." in host.versions("xp")[-1].copy
    with pytest.raises(HotloadError, match=r"xp: nothing to roll back to: v3 is the oldest build"):
        host.rollback("xp")
    assert xp.reward(1, 0) == 4


KEY_PLUGIN = r"""
#include <hotload.h>
#include <pthread.h>
#include <stdlib.h>
HOTLOAD_PLUGIN("keyed", "V");
static pthread_key_t key;
static void dtor(void *p) { free(p); }
__attribute__((constructor)) static void init(void) { pthread_key_create(&key, dtor); }
SAFE
HOTLOAD_API int touch(void) {
    if (!pthread_getspecific(key)) pthread_setspecific(key, malloc(8)); return V;
}
HOTLOAD_EXPORT(touch, int, (void));
"""


def test_plugin_with_thread_key_destructor_is_retained_not_unloaded(
    host: Host, cc, tmp_path: Path
) -> None:
    """Unmapping it would make the process die at the next thread exit
    (the key's destructor would jump into unmapped code): keep it."""
    out = tmp_path / "keyed.so"
    keyed = host.load(
        cc(KEY_PLUGIN.replace("SAFE", "").replace("V", "1"), out=out, flags=["-pthread"])
    )
    t = threading.Thread(target=keyed.touch)
    t.start()
    t.join()
    cc(KEY_PLUGIN.replace("SAFE", "").replace("V", "2"), out=out, flags=["-pthread"])
    host.reload("keyed")
    assert host.settle()
    v1 = host.versions("keyed")[0]
    assert v1.state == "retained" and v1.dlclose_count == 0
    assert "thread-key" in v1.blockers and "thread-key" in v1.note
    assert [v.seq for v in host.leaks()] == [1]
    t = threading.Thread(target=keyed.touch)  # a thread exit after the swap: the process survives
    t.start()
    t.join()
    assert keyed.touch() == 2


def test_unload_safe_declaration_lets_it_close(host: Host, cc, tmp_path: Path) -> None:
    safe = KEY_PLUGIN.replace(
        "SAFE",
        "HOTLOAD_UNLOAD_SAFE();\n"
        "__attribute__((destructor)) static void fini(void) { pthread_key_delete(key); }",
    )
    out = tmp_path / "keyed.so"
    keyed = host.load(cc(safe.replace("V", "1"), out=out, flags=["-pthread"]))
    keyed.touch()
    cc(safe.replace("V", "2"), out=out, flags=["-pthread"])
    host.reload("keyed")
    assert host.settle()
    assert host.versions("keyed")[0].state == "unloaded"
    t = threading.Thread(target=keyed.touch)
    t.start()
    t.join()


def test_leak_budget_refuses_reloads_of_a_plugin_that_cannot_unload(tmp_path: Path, cc) -> None:
    src = """
        #include <hotload.h>
        HOTLOAD_PLUGIN("sticky", "V");
        HOTLOAD_API int v(void) { return V; }
        HOTLOAD_EXPORT(v, int, (void));
    """
    out = tmp_path / "sticky.so"
    with Host(tmp_path / "w", max_leaked=2, preflight=False) as host:
        sticky = host.load(cc(src.replace("V", "1"), flags=["-Wl,-z,nodelete"], out=out))
        for i in (2, 3):
            cc(src.replace("V", str(i)), flags=["-Wl,-z,nodelete"], out=out)
            host.reload("sticky")
            host.settle()
        with pytest.raises(
            HotloadError,
            match=r"sticky\.so: reload of sticky refused: 2 of its images are still "
            r"in memory \(max_leaked=2, \d+ bytes; reasons: nodelete\)\. "
            r"Fix: relink without -Wl,-z,nodelete\.",
        ):
            host.reload("sticky")
        assert sticky.v() == 3
        assert host.leaked_bytes() > 0
        assert len(mapped_images(host.workdir)) == 3


# A thread_local! with a destructor makes every rustc link std's thread-key code in (rustc 1.63,
# Debian's, links none of it into a cdylib of `add` alone; 1.95 does).  `remember` is never
# called: a used thread-local would keep the image mapped while its thread lives (tls-dtor).
RUST_LIB = """
use std::cell::RefCell;

thread_local! {
    static SEEN: RefCell<Vec<i64>> = RefCell::new(Vec::new());
}

#[no_mangle]
pub extern "C" fn add(a: i64, b: i64) -> i64 { a + ADDEND }

#[no_mangle]
pub extern "C" fn remember(a: i64) { SEEN.with(|seen| seen.borrow_mut().push(a)); }
"""


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_rust_cdylib_is_retained_unless_the_host_declares_it_unload_safe(tmp_path: Path) -> None:
    """A real Rust cdylib imports pthread_key_create through its runtime: by
    default its old versions are kept loaded; unload_safe=True closes them."""

    def build(b: int) -> Path:
        src = tmp_path / "lib.rs"
        src.write_text(RUST_LIB.replace("ADDEND", str(b)))
        tmp = tmp_path / "librs.so.tmp"
        subprocess.run(
            ["rustc", "--crate-type", "cdylib", "-O", str(src), "-o", str(tmp)],
            check=True,
            capture_output=True,
        )
        tmp.replace(tmp_path / "librs.so")
        return tmp_path / "librs.so"

    sigs = {"add": "int64_t(int64_t, int64_t)"}
    for safe, expected in ((False, "retained"), (True, "unloaded")):
        with Host(tmp_path / f"w{safe}", preflight=False) as host:
            lib = host.load(build(1), name="rs", signatures=sigs, unload_safe=safe)
            assert lib.add(1, 1) == 2
            build(10)
            host.reload("rs")
            assert lib.add(1, 1) == 11
            assert host.settle()
            assert host.versions("rs")[0].state == expected


THREAD_THEN_REFUSE = r"""
#include <hotload.h>
#include <pthread.h>
#include <unistd.h>
HOTLOAD_PLUGIN("bg", "1.0.0");
static void *spin(void *arg) { (void)arg; for (;;) usleep(1000); return NULL; }
HOTLOAD_API int f(void) { return 1; }
HOTLOAD_EXPORT(f, int, (void));
static int start(const char *p, const void *s, size_t n)
{
    (void)p; (void)s; (void)n;
    pthread_t t;
    pthread_create(&t, NULL, spin, NULL);
    return 7;   /* refuse, with a thread of ours still running */
}
HOTLOAD_ON_LOAD(start);
"""


def test_refused_load_that_left_a_thread_running_is_not_unmapped(cc, tmp_path: Path) -> None:
    """Closing it would pull code out from under its thread (SIGSEGV): it is
    kept loaded instead, and the process lives on.  Run in a child so that a
    crash shows as an exit status."""
    lib = cc(THREAD_THEN_REFUSE, "bg", flags=["-pthread"])
    script = f"""
import time
from hotload import Host, HookError
with Host({str(tmp_path / "w")!r}, preflight=False) as host:
    try:
        host.load({str(lib)!r})
    except HookError as exc:
        print("refused:", exc)
    time.sleep(0.3)   # the thread keeps running in the kept image
print("alive")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert "refused to start (returned 7)" in proc.stdout and "alive" in proc.stdout
    assert "refused version kept loaded, not closed" in proc.stderr
