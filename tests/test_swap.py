"""Hot swaps: routing, draining, state handover, overwrites, leaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hotload import HookError, Host, NotLoadedError, Plugin, SignatureError
from hotload._inspect.report import inspect_file

from conftest import mapped_images, versioned_copies, wait_for


def test_reload_routes_new_calls_and_hands_state_across(host: Host, xp_build) -> None:
    xp = host.load(xp_build(mult=2, version="1.0.0"))
    assert [xp.reward(10, 1) for _ in range(5)] == [21] * 5
    xp_build(mult=3, version="1.1.0")
    info = host.reload("xp")
    assert (info.seq, info.plugin_version, info.state) == (2, "1.1.0", "active")
    assert xp.reward(10, 1) == 31
    assert xp.grants_so_far() == 6  # 5 grants carried over, plus this one
    assert host.versions("xp")[1].plugin_version == "1.1.0"
    assert xp.previous_version() == b"1.0.0"  # on_load saw the previous version string
    assert host.settle()
    states = [(v.seq, v.state, v.dlopen_count, v.dlclose_count) for v in host.versions("xp")]
    assert states == [(1, "unloaded", 1, 1), (2, "active", 1, 0)]
    assert len(mapped_images(host.workdir)) == 1


def test_on_load_refusal_keeps_old_version_serving_with_state(host: Host, xp_build) -> None:
    xp = host.load(xp_build(mult=2))
    for _ in range(3):
        xp.reward(1, 0)
    xp_build(mult=9, refuse=7)
    refused = (
        r"xp\.so: preflight refused the new version at on_load: "
        r"on_load of xp 1\.0\.0 refused to start"
    )
    with pytest.raises(HookError, match=refused + r" \(returned 7\)"):
        host.reload("xp")
    assert xp.reward(1, 0) == 2 and xp.grants_so_far() == 4
    assert [v.seq for v in host.versions("xp")] == [1]
    assert len(versioned_copies(host.workdir)) == 1
    xp_build(mult=5)  # a good build after the bad one goes live normally
    assert host.reload("xp").seq == 2
    assert xp.reward(1, 0) == 5 and xp.grants_so_far() == 5


def test_signature_change_on_reload_is_refused_unless_allowed(
    host: Host, cc, tmp_path: Path
) -> None:
    src = """
        #include <hotload.h>
        HOTLOAD_PLUGIN("calc", "V");
        HOTLOAD_API int64_t f(PARAMS) { return BODY; }
        HOTLOAD_EXPORT(f, int64_t, (PARAMS));
    """
    out = tmp_path / "calc.so"
    calc = host.load(
        cc(src.replace("V", "1").replace("PARAMS", "int64_t a").replace("BODY", "a"), out=out)
    )
    cc(
        src.replace("V", "2").replace("PARAMS", "int64_t a, int64_t b").replace("BODY", "a + b"),
        out=out,
    )
    with pytest.raises(SignatureError, match=r"calc\.so: f changed from 'int64_t\(int64_t a\)'"):
        host.reload("calc")
    assert calc.f(5) == 5
    host.reload("calc", allow_signature_change=True)
    assert calc.f(5, 6) == 11  # the router follows the new arity


def test_call_sleeping_in_old_version_finishes_there_then_it_unloads(host: Host, xp_build) -> None:
    xp = host.load(xp_build(mult=2))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(xp.slow_tag(1500)))
    t.start()
    wait_for(lambda: host.versions("xp")[0].in_flight, what="the call to be in flight")
    xp_build(mult=3)
    host.reload("xp")  # stateful: waits up to quiesce_timeout (0.5 s) for the sleeper
    assert xp.version_tag() == 3
    v1 = host.versions("xp")[0]
    assert v1.state == "draining" and v1.in_flight == 1
    assert len(mapped_images(host.workdir)) == 2
    t.join()
    assert result == [2]  # finished on the version it started in
    assert host.settle()
    assert host.versions("xp")[0].state == "unloaded"
    assert len(mapped_images(host.workdir)) == 1


def test_stateless_swap_does_not_wait_for_a_running_call(cc, tmp_path: Path) -> None:
    """A plugin without on_unload switches at once.  The call in flight
    blocks on a pipe until the test writes to it, and the host would wait up
    to 600 s for it to drain: the reload can only return first if it does
    not wait for the call at all."""
    src = """
        #include <hotload.h>
        #include <unistd.h>
        HOTLOAD_PLUGIN("gate", "1");
        HOTLOAD_API int wait_byte(int fd) { char c; return read(fd, &c, 1) == 1 ? TAG : -1; }
        HOTLOAD_EXPORT(wait_byte, int, (int));
        HOTLOAD_API int tag(void) { return TAG; }
        HOTLOAD_EXPORT(tag, int, (void));
    """
    out = tmp_path / "gate.so"
    r, w = os.pipe()
    with Host(tmp_path / "w", quiesce_timeout=600.0) as host:
        gate = host.load(cc(src.replace("TAG", "1"), out=out))
        held: list[int] = []
        caller = threading.Thread(target=lambda: held.append(gate.wait_byte(r)))
        caller.start()
        try:
            wait_for(lambda: host.versions("gate")[0].in_flight, what="the call to be in flight")
            cc(src.replace("TAG", "2"), out=out)
            reloaded = threading.Event()
            errors: list[BaseException] = []

            def reload() -> None:
                try:
                    host.reload("gate")
                except BaseException as exc:  # noqa: BLE001 - asserted below
                    errors.append(exc)
                reloaded.set()

            threading.Thread(target=reload, daemon=True).start()
            assert reloaded.wait(60), "the swap waited for the call in flight"
            assert not errors, errors
            assert caller.is_alive() and host.versions("gate")[0].in_flight == 1  # still held
            assert gate.tag() == 2  # new calls already go to the new version
        finally:
            os.write(w, b"x")  # let the held call finish
            caller.join(30)
            os.close(r)
            os.close(w)
        assert held == [1]  # it finished in the version it started in
        assert host.settle()
        assert [v.state for v in host.versions("gate")] == ["unloaded", "active"]


def test_overwriting_source_in_place_with_cp_while_threads_call(
    host: Host, xp_build, tmp_path: Path
) -> None:
    """The classic crash: `cp new.so loaded.so` truncates and rewrites the
    loaded file.  Here the loaded file is a private copy, so nothing happens."""
    src = xp_build(mult=2)
    alt = tmp_path / "alt.so"
    shutil.copyfile(src, tmp_path / "orig.so")
    xp = host.load(src)
    xp_build(mult=3)
    shutil.move(src, alt)
    shutil.copyfile(tmp_path / "orig.so", src)
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = [0] * 3

    def caller(i: int) -> None:
        try:
            while not stop.is_set():
                assert xp.reward(1, 0) in (2, 3)
                counts[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for i in range(20):  # plain cp over the source: truncate + rewrite, same inode
        subprocess.run(
            ["cp", str(alt if i % 2 == 0 else tmp_path / "orig.so"), str(src)], check=True
        )
        time.sleep(0.005)
    subprocess.run(["cp", str(alt), str(src)], check=True)
    host.reload("xp")
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(counts)
    assert xp.reward(1, 0) == 3


@pytest.mark.parametrize("reloads", [20, pytest.param(200, marks=pytest.mark.soak)])
def test_threads_see_no_failed_calls_and_monotonic_versions(
    host: Host, xp_build, reloads: int
) -> None:
    """Four threads call while another reloads (preflight on): no failed call,
    each thread sees generations in non-decreasing order, no grant is lost.
    (test_soak.py does the same with preflight off, hundreds of times more.)"""
    xp = host.load(xp_build(mult=1))
    stop = threading.Event()
    problems: list[str] = []
    calls = [0] * 4

    def caller(i: int) -> None:
        last = 0
        try:
            while not stop.is_set():
                g = xp.gen()
                if g < last:
                    problems.append(f"thread {i} went back from generation {last} to {g}")
                last = g
                xp.reward(1, 0)
                calls[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(repr(exc))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(reloads):
        host.reload("xp")
        time.sleep(0.0005)
    stop.set()
    for t in threads:
        t.join()
    assert not problems
    assert xp.gen() == reloads + 1
    assert xp.grants_so_far() == sum(calls)  # the state never lost a grant
    assert min(calls) > 0
    assert host.settle()
    assert len(mapped_images(host.workdir)) == 1


def test_500_reloads_keep_at_most_two_images_mapped(host: Host, cc, tmp_path: Path) -> None:
    out = tmp_path / "tick.so"
    src = """
        #include <hotload.h>
        HOTLOAD_PLUGIN("tick", "1");
        HOTLOAD_API int tick(int x) { return x + 1; }
        HOTLOAD_EXPORT(tick, int, (int));
    """
    tick = host.load(cc(src, out=out))
    peak = 0
    for i in range(500):
        host.reload("tick")
        assert tick.tick(i) == i + 1
        if i % 50 == 0:
            peak = max(peak, len(mapped_images(host.workdir)))
    assert host.settle()
    peak = max(peak, len(mapped_images(host.workdir)))
    assert peak <= 2
    assert len(mapped_images(host.workdir)) == 1
    assert len(versioned_copies(host.workdir)) == 1
    versions = host.versions("tick")
    assert versions[-1].seq == 501 and len(versions) + host.pruned("tick") == 501
    assert len(versions) <= host.settings.history_limit + 2
    assert [v.seq for v in versions] == list(range(502 - len(versions), 502))  # oldest pruned
    assert all(v.state == "unloaded" for v in versions[:-1])
    assert host.leaks() == []


UNIQUE_SRC = """
#include <hotload.h>
inline int &counter() { static int c = 0; return c; }   // STB_GNU_UNIQUE with g++
HOTLOAD_PLUGIN("uniq", "1");
HOTLOAD_API int bump(void) { return ++counter(); }
HOTLOAD_EXPORT(bump, int, (void));
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_cxx_gnu_unique_symbol_is_reported_as_leaked_with_reason(host: Host, cc) -> None:
    uniq = host.load(cc(UNIQUE_SRC, "uniq", cxx=True))
    assert uniq.bump() == 1
    host.reload("uniq")
    assert host.settle()
    [leak] = host.leaks()
    assert leak.seq == 1 and leak.state == "leaked" and leak.mapped_bytes > 0
    assert leak.blockers == ("gnu-unique",)  # one reason code; `hotload inspect` explains it
    report = inspect_file(leak.source)
    [finding] = [f for f in report.findings if f.code == "gnu-unique"]
    assert "STB_GNU_UNIQUE" in finding.message and "counter()::c" in finding.message
    assert "-fno-gnu-unique" in (finding.fix or "")
    assert host.versions("uniq")[1].state == "active"


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_cxx_built_with_no_gnu_unique_unloads_cleanly(host: Host, cc) -> None:
    uniq = host.load(cc(UNIQUE_SRC, "uniq", ["-fno-gnu-unique"], cxx=True))
    assert uniq.bump() == 1
    host.reload("uniq")
    assert uniq.bump() == 1  # its own static, not the old image's
    assert host.settle()
    assert host.leaks() == []
    assert host.versions("uniq")[0].state == "unloaded"
    assert len(mapped_images(host.workdir)) == 1


def test_nodelete_image_is_leaked_and_kept_out_of_new_loads(host: Host, cc, tmp_path: Path) -> None:
    out = tmp_path / "sticky.so"
    src = """
        #include <hotload.h>
        HOTLOAD_PLUGIN("sticky", "1");
        HOTLOAD_API int v(void) { return V; }
        HOTLOAD_EXPORT(v, int, (void));
    """
    sticky = host.load(cc(src.replace("V", "1"), flags=["-Wl,-z,nodelete"], out=out))
    for i in range(2, 5):
        cc(src.replace("V", str(i)), flags=["-Wl,-z,nodelete"], out=out)
        host.reload("sticky")
        assert sticky.v() == i  # every reload is really a new image
    assert host.settle()
    leaks = host.leaks()
    assert [v.seq for v in leaks] == [1, 2, 3]
    assert all(v.blockers == ("nodelete",) for v in leaks)
    assert len(mapped_images(host.workdir)) == 4


def test_removed_export_raises_not_loaded_after_an_allowed_change(
    host: Host, cc, tmp_path: Path
) -> None:
    src = """
        #include <hotload.h>
        HOTLOAD_PLUGIN("shrink", "V");
        HOTLOAD_API int f(void) { return 1; }
        HOTLOAD_EXPORT(f, int, (void));
        EXTRA
    """
    out = tmp_path / "shrink.so"
    extra = "HOTLOAD_API int g(void) { return 2; }\nHOTLOAD_EXPORT(g, int, (void));"
    p = host.load(cc(src.replace("V", "1").replace("EXTRA", extra), out=out))
    g = p.g
    assert g() == 2
    cc(src.replace("V", "2").replace("EXTRA", ""), out=out)
    with pytest.raises(SignatureError, match="no longer exports g"):
        host.reload("shrink")
    host.reload("shrink", allow_signature_change=True)
    assert p.f() == 1
    with pytest.raises(NotLoadedError, match=r"shrink v2 no longer exports 'g'"):
        g()
    assert not hasattr(p, "g")


def test_export_sets_that_come_and_go_keep_routers_and_attributes_right(
    host: Host, cc, tmp_path: Path
) -> None:
    """A reload exporting the set it serves reuses that set's routing (only the
    call table is new); a changed set, and a change back, routes anew, and an
    attribute a caller overwrote is a router again after any reload."""
    src = """
        #include <hotload.h>
        HOTLOAD_PLUGIN("sets", "1");
        HOTLOAD_API int f(void) { return TAG; }
        HOTLOAD_EXPORT(f, int, (void));
        EXTRA
    """
    out = tmp_path / "sets.so"

    def build(tag: int, extra: str) -> None:
        name, body = extra, ""
        if extra:
            body = f"HOTLOAD_API int {name}(int x) {{ return x + TAG; }}\n"
            body += f"HOTLOAD_EXPORT({name}, int, (int));"
        cc(src.replace("EXTRA", body).replace("TAG", str(tag)), f"sets{tag}", out=out)

    build(1, "g")
    p = host.load(out)
    f, g = p.f, p.g
    build(2, "g")  # same set: same routers, new code
    host.reload("sets")
    assert (p.f is f, p.g is g, f(), g(1)) == (True, True, 2, 3)
    build(3, "h")  # g goes, h comes
    host.reload("sets", allow_signature_change=True)
    assert (p.f is f, f(), p.h(1), hasattr(p, "g")) == (True, 3, 4, False)
    with pytest.raises(NotLoadedError, match=r"sets v3 no longer exports 'g'"):
        g(1)
    build(4, "g")  # back to the first set: g's router serves again, h goes
    host.reload("sets", allow_signature_change=True)
    assert (p.g is g, g(1), f(), hasattr(p, "h")) == (True, 5, 4, False)
    p.f = None  # type: ignore[assignment]
    build(5, "g")
    host.reload("sets")  # an unchanged set still sets every attribute
    assert (p.f is f, f(), g(1)) == (True, 5, 6)
    assert [v.seq for v in host.versions("sets") if v.state.value == "active"] == [5]


ODD_NAMES = r"""
#include <hotload.h>
#include <string.h>
HOTLOAD_PLUGIN("bond", "V");
static double k = K;
HOTLOAD_API double yield(double x) { return x * k; }
HOTLOAD_EXPORT(yield, double, (double));
HOTLOAD_API int route(int x) { return x + 1; }
HOTLOAD_EXPORT(route, int, (int));
HOTLOAD_API int idx(int x) { return x + 2; }
HOTLOAD_EXPORT(idx, int, (int));
HOTLOAD_API const char *name(void) { return "bond-V"; }
HOTLOAD_EXPORT(name, const char *, (void));
HOTLOAD_API int close(int x) { return x * 10; }
HOTLOAD_EXPORT(close, int, (int));
HOTLOAD_API int publish(int x) { return x * 100; }
HOTLOAD_EXPORT(publish, int, (int));
HOTLOAD_API int current(void) { return V; }
HOTLOAD_EXPORT(current, int, (void));
HOTLOAD_API int versions(void) { return -V; }
HOTLOAD_EXPORT(versions, int, (void));
HOTLOAD_API int new(int x) { return x + V; }
HOTLOAD_EXPORT(new, int, (int));
static int save(const void **s, size_t *n) { *s = &k; *n = sizeof k; return 0; }
HOTLOAD_ON_UNLOAD(save);
static int restore(const char *p, const void *s, size_t n) { (void)p; (void)s; (void)n; return 0; }
HOTLOAD_ON_LOAD(restore);
"""


def test_any_export_name_works_as_an_attribute(host: Host, cc, tmp_path: Path) -> None:
    """C allows `yield`, `route`, `idx`, `name`, `close`, `publish`,
    `current`, `versions`, `new`: each is an attribute that calls the export,
    across a stateful reload and a rollback; the methods an export shadows stay
    reachable through the class, and the plugin's facts are on the host."""
    out = tmp_path / "bond.so"
    p = host.load(cc(ODD_NAMES.replace("V", "1").replace("K", "2.0"), out=out))
    assert getattr(p, "yield")(1.5) == 3.0 and p.route(1) == 2 and p.idx(1) == 3
    assert p.name() == b"bond-1" and p["name"]() == b"bond-1"
    assert (p.close(2), p.publish(2), p.current(), p.versions(), p.new(1)) == (20, 200, 1, -1, 2)
    cc(ODD_NAMES.replace("V", "2").replace("K", "3.0"), out=out)
    host.reload("bond")  # stateful: through the gate
    assert p["yield"](1.5) == 4.5 and p.name() == b"bond-2" and p.current() == 2
    assert p.close(3) == 30 and "bond" in host  # the export ran; nothing was closed
    assert host.rollback("bond").plugin_version == "1"
    assert getattr(p, "yield")(1.5) == 3.0 and p.current() == 1 and p.new(1) == 2
    assert [v.seq for v in Plugin.versions(p)] == [1, 2, 3]  # the method, through the class
    assert [v.seq for v in host.versions("bond")] == [1, 2, 3]
    assert host.current("bond").seq == 3  # type: ignore[union-attr]


def test_current_never_says_not_loaded_in_the_middle_of_a_swap(host: Host, xp_build) -> None:
    """Seen in CI: ``host.current(name)`` returned None (documented as "not
    loaded") while a reload switched the route; a monitor would have seen the
    plugin vanish for an instant."""
    host.load(xp_build(mult=2))
    builds = [xp_build(mult=3, name="xp3"), xp_build(mult=4, name="xp4")]  # built once
    stop = threading.Event()
    seen: list[object] = []

    def watch() -> None:
        while not stop.is_set():
            info = host.current("xp")
            if info is None:
                seen.append(None)

    t = threading.Thread(target=watch)
    t.start()
    try:
        for i in range(60):
            host.reload("xp", builds[i % 2])
    finally:
        stop.set()
        t.join(10)
    assert seen == []
    assert host.current("xp").seq == 61  # type: ignore[union-attr]


def test_history_stays_bounded_after_a_burst_and_concurrent_listing_loses_no_version(
    host: Host, cc
) -> None:
    """Seen in ``make bench``: after 1000 back-to-back reloads and
    ``settle()``, every version the reaper closed after the last reload was
    still in the history (~6 objects kept per reload); and ``versions()``
    (which prunes, from any thread) could replace the list while a reload
    appended to it."""
    src = """
#include <hotload.h>
HOTLOAD_PLUGIN("burst", "1");
HOTLOAD_API int32_t one(void) { return 1; }
HOTLOAD_EXPORT(one, int32_t, (void));
"""
    lib = cc(src, "burst")
    h = Host(host.workdir.parent / "burst-host", preflight=False, history_limit=10)
    try:
        h.load(lib)
        stop = threading.Event()

        def lister() -> None:
            while not stop.is_set():
                h.versions("burst")

        t = threading.Thread(target=lister)
        t.start()
        try:
            for _ in range(150):
                h.reload("burst")
        finally:
            stop.set()
            t.join(10)
        assert h.settle()
        seqs = [v.seq for v in h._table.loaded("burst").history]  # noqa: SLF001
        assert seqs[-1] == 151  # the newest was never lost to a concurrent prune
        assert (
            len(seqs) <= 11
        )  # the limit, plus the live one: cut at settle, not at the next reload
        assert h.pruned("burst") == 151 - len(seqs)
    finally:
        h.close()
