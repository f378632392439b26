"""Host services: plugins call Python functions through HOTLOAD_IMPORT.

Real plugins compiled here, real dlopen, real threads (started by the plugin
in C), real preflight worker.  Service names are unique per test where the
prototype differs: a name keeps its prototype for the life of the process.

One spec for both modes: every test that loads a plugin runs in process and
isolated (``mode``, from conftest); a case that cannot cross the process
boundary is an explicit ``xfail`` or, for a test about one mode by nature, a
skip that says so.  Tests that load nothing (``provide`` refusals, the
descriptor records) have no mode.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request

import pytest

from hotload import (
    ClosedError,
    Host,
    HotloadError,
    Isolated,
    ServiceError,
)
from hotload._artifact import descriptor
from hotload._platform import binfmt

from conftest import modes

Mode = bool | Isolated

ACTIVITY = """
#include <hotload.h>
HOTLOAD_PLUGIN("activity", "VERSION");
HOTLOAD_IMPORT(grant_item, int32_t, (int64_t, const char *, int32_t));
HOTLOAD_IMPORT(note, void, (const char *));

static int32_t at_ctor = -100;
__attribute__((constructor)) static void init(void) { at_ctor = grant_item(7, "ctor", 1); }

HOTLOAD_API int32_t login(int64_t player)
{ note("login"); return grant_item(player, "crate", BONUS); }
HOTLOAD_EXPORT(login, int32_t, (int64_t));
HOTLOAD_API int32_t ctor_result(void) { return at_ctor; }
HOTLOAD_EXPORT(ctor_result, int32_t, (void));
HOTLOAD_API int32_t in_preflight(void) { return hotload_in_preflight(); }
HOTLOAD_EXPORT(in_preflight, int32_t, (void));
/* passes only where services are stand-ins returning the error value (-1) */
static int self_test(void) { return hotload_in_preflight() && grant_item(1, "x", 1) == -1 ? 0 : 3; }
HOTLOAD_SELF_TEST(self_test);
"""

GRANT = "int32_t(int64_t player, const char *item, int32_t count)"


def activity(cc, version: str = "1", bonus: int = 2, name: str = "activity"):
    src = ACTIVITY.replace("VERSION", version).replace("BONUS", str(bonus))
    return cc(src, name)


def provide_basics(host: Host, grants: list[tuple[int, str, int]]) -> None:
    host.provide(
        "grant_item", lambda p, item, n: grants.append((p, item, n)) or 100 + n, GRANT, error=-1
    )
    host.provide("note", lambda text: None, "void(const char *)")


def test_plugin_calls_host_services_constructors_included(host: Host, cc, isolate: Mode) -> None:
    grants: list[tuple[int, str, int]] = []
    provide_basics(host, grants)
    p = host.load(
        activity(cc), isolate=isolate
    )  # preflight on: the self-test passes only with stand-ins
    assert p.login(5) == 102
    assert p.ctor_result() == 101  # the constructor called the host's service, not a stand-in
    assert p.in_preflight() == 0
    assert grants == [(7, "ctor", 1), (5, "crate", 2)]  # char * arrives as str


def test_services_survive_swaps_and_replacement_reaches_every_plugin(
    host: Host, cc, isolate: Mode
) -> None:
    grants: list[tuple[int, str, int]] = []
    provide_basics(host, grants)
    a = host.load(activity(cc, name="a"), isolate=isolate)
    src = ACTIVITY.replace('"activity"', '"other"').replace("VERSION", "1").replace("BONUS", "3")
    b = host.load(cc(src, "b"), isolate=isolate)
    host.reload("activity", activity(cc, version="2", bonus=4, name="a2"))
    assert (a.login(1), b.login(1)) == (104, 103)
    host.provide("grant_item", lambda p, item, n: 1000 + n, GRANT, error=-1)  # replace
    assert (a.login(1), b.login(1)) == (1004, 1003)
    host.reload("activity", activity(cc, version="3", bonus=5, name="a3"))
    assert a.login(1) == 1005 and a.ctor_result() == 1001


def test_service_that_raises_returns_error_value_logged_and_counted(
    host: Host, cc, caplog, isolate: Mode
) -> None:
    def broken(player: int, item: str, count: int) -> int:
        raise RuntimeError(f"no such item {item}")

    host.provide("grant_item", broken, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    with caplog.at_level(logging.ERROR, logger="hotload"):
        p = host.load(activity(cc), isolate=isolate)
        assert p.login(1) == -1
        assert p.login(2) == -1
    info = host.current("activity")
    assert info is not None and info.service_errors == 3  # constructor + two calls
    assert "no such item crate" in caplog.text and "Traceback" in caplog.text
    assert "activity v1: service grant_item raised" in caplog.text


def test_service_calls_are_counted_and_timed_on_the_calling_version(
    tmp_path, cc, isolate: Mode
) -> None:
    """Issue 21: a version's host-service calls (calls, errors, latency) are
    figures of that version, in ``host.metrics()`` and on ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    def grant(player: int, item: str, count: int) -> int:
        if player < 0:
            raise ValueError("no such player")
        return 100 + count

    with Host(tmp_path / "w", preflight=False, metrics_sample=1) as host:
        host.provide("grant_item", grant, GRANT, error=-1)
        host.provide("note", lambda text: None, "void(const char *)")
        p = host.load(activity(cc), isolate=isolate)
        assert [p.login(i) for i in range(20)] == [102] * 20
        assert p.login(-1) == -1
        host.reload("activity", activity(cc, version="2", name="a2"))
        assert p.login(1) == 102
        snap = host.metrics()["plugins"]["activity"]["versions"]
        v1, v2 = snap[0]["services"], snap[1]["services"]
        assert v1["grant_item"]["calls"] == 1 + 21  # its constructor's call, then the logins
        assert v1["grant_item"]["errors"] == 1 and v1["note"]["errors"] == 0
        assert v1["note"]["calls"] == 21
        lat = v1["grant_item"]["latency"]
        assert lat["sampled"] >= 21 and lat["p50_us"] is not None and lat["p50_us"] > 0
        assert (v2["grant_item"]["calls"], v2["note"]["calls"]) == (2, 1)  # the new version's own
        host.settle()  # v1 leaves memory: v3 reuses its callbacks (spare), counting as v3's
        host.reload("activity", activity(cc, version="3", name="a3"))
        assert [p.login(i) for i in range(3)] == [102] * 3
        again = host.metrics()["plugins"]["activity"]["versions"]
        by_seq = {v["seq"]: v["services"] for v in again}
        assert by_seq[1]["grant_item"]["calls"] == 22  # final: nothing counted on a gone image
        assert (by_seq[3]["grant_item"]["calls"], by_seq[3]["note"]["calls"]) == (4, 3)
        with urllib.request.urlopen(host.serve_metrics(), timeout=30) as resp:
            text = resp.read().decode()
    fams = {f.name: f.samples for f in text_string_to_metric_families(text)}
    calls = {(s.labels["seq"], s.labels["service"]): s.value for s in fams["hotload_service_calls"]}
    assert calls[("1", "grant_item")] == 22 and calls[("2", "note")] == 1
    errors = {(s.labels["seq"], s.labels["service"]) for s in fams["hotload_service_call_errors"]}
    assert errors == {("1", "grant_item")}
    durations = fams["hotload_service_call_duration_seconds"]
    assert any(s.name.endswith("_count") and s.labels["seq"] == "3" for s in durations)


def test_a_service_raising_systemexit_or_keyboardinterrupt_gives_the_error_value(
    tmp_path, cc, caplog, mode: str
) -> None:
    """Not Exception subclasses, so a handler written for ``except Exception``
    misses them; a service is still a C function: the plugin gets the error
    value, and the error is logged and counted, as for any other exception.
    Isolated, the host's service thread for the worker used to die of it and
    every later service call hung (issue 19 item 8); ``call_timeout`` turns
    such a hang into a failure instead of a test that never ends (a service
    answers in microseconds).  In a constructor's call (before the image is
    bound) it is the same."""
    raised: list[str] = []

    def leaving(player: int, item: str, count: int) -> int:
        if item == "ctor":  # the constructor's call, at load: a plain answer
            return 1
        exc = SystemExit if not raised else KeyboardInterrupt
        raised.append(exc.__name__)
        raise exc(f"service asked to leave ({item})")

    opts: Mode = Isolated(call_timeout=5.0) if mode == "isolated" else False
    with Host(tmp_path / "work", preflight=False) as host:
        host.provide("grant_item", leaving, GRANT, error=-1)
        host.provide("note", lambda text: None, "void(const char *)")
        p = host.load(activity(cc), isolate=opts)
        with caplog.at_level(logging.ERROR, logger="hotload"):
            assert p.login(1) == -1  # SystemExit
            assert p.login(2) == -1  # KeyboardInterrupt
            assert p.login(3) == -1  # and the services still answer
        assert raised == ["SystemExit", "KeyboardInterrupt", "KeyboardInterrupt"]
        assert host.current("activity").service_errors == 3  # type: ignore[union-attr]
        assert caplog.text.count("activity v1: service grant_item raised") == 3


def test_errors_count_on_the_calling_version_across_many_swaps(
    host: Host, cc, caplog, isolate: Mode
) -> None:
    """The callbacks of an image that left serve the next images (no new
    libffi closure per import per reload): an error still counts on the
    version that called, and a replaced service is never called again."""
    calls: list[str] = []

    def broken(player: int, item: str, count: int) -> int:
        calls.append(item)
        raise RuntimeError(f"no such item {item}")

    host.provide("grant_item", broken, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    builds = [activity(cc, version=str(i), name=f"act{i}") for i in range(2)]
    with caplog.at_level(logging.ERROR, logger="hotload"):
        p = host.load(builds[0], preflight=False, isolate=isolate)
        for i in range(1, 6):
            assert p.login(1) == -1  # constructor + this call
            host.reload("activity", builds[i % 2], preflight=False)
            assert host.settle()
            mine = [v for v in host.versions("activity") if v.seq == i + 1]
            assert [v.service_errors for v in mine] == [1]  # its constructor's call only
        assert p.login(1) == -1
        assert host.current("activity").service_errors == 2  # type: ignore[union-attr]
        done = [v for v in host.versions("activity") if v.state == "unloaded"]
        assert len(done) == 5 and all(v.service_errors == 2 for v in done)
        assert "activity v6: service grant_item raised" in caplog.text
        host.provide("grant_item", lambda p, item, n: 7, GRANT, error=-1)  # replaced
        host.reload("activity", builds[0], preflight=False)
        assert host.settle() and p.login(1) == 7 and p.ctor_result() == 7
        assert len(calls) == 12  # the old function was not called after it was replaced


def test_import_with_no_provider_is_refused_and_live_version_keeps_serving(
    host: Host, cc, isolate: Mode
) -> None:
    plain = cc(
        """
        #include <hotload.h>
        HOTLOAD_PLUGIN("activity", "0");
        HOTLOAD_API int32_t login(int64_t p) { return (int32_t)p; }
        HOTLOAD_EXPORT(login, int32_t, (int64_t));
        """,
        "plain",
    )
    p = host.load(plain, isolate=isolate)
    host.provide("note", lambda text: None, "void(const char *)")
    with pytest.raises(ServiceError) as err:
        host.reload("activity", activity(cc))
    msg = str(err.value)
    assert "imports service grant_item" in msg and "int32_t(int64_t, char *, int32_t)" in msg
    assert "provides no service of that name" in msg and "activity.so" in msg
    assert p.login(9) == 9 and [v.seq for v in host.versions("activity")] == [1]


def test_import_with_other_prototype_names_both(host: Host, cc, isolate: Mode) -> None:
    host.provide("grant_item", lambda p, item, n: 0, "int64_t(int64_t, const char *, int32_t)")
    host.provide("note", lambda text: None, "void(const char *)")
    with pytest.raises(ServiceError) as err:
        host.load(activity(cc), isolate=isolate)
    msg = str(err.value)
    assert "imports service grant_item as 'int32_t(int64_t, char *, int32_t)'" in msg
    assert "host provides it as 'int64_t(int64_t, char *, int32_t)'" in msg
    assert "activity" not in host.names()


def test_services_are_called_from_threads_the_plugin_starts(host: Host, cc, isolate: Mode) -> None:
    src = """
    #include <hotload.h>
    #include <pthread.h>
    HOTLOAD_PLUGIN("threads", "1");
    HOTLOAD_IMPORT(tick_count, int64_t, (int64_t));
    static void *worker(void *arg) {
        for (int i = 0; i < 500; i++) tick_count((int64_t)(intptr_t)arg);
        return NULL;
    }
    HOTLOAD_API int32_t run(int32_t n) {
        pthread_t t[8];
        for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
        for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
        return n;
    }
    HOTLOAD_EXPORT(run, int32_t, (int32_t));
    """
    seen: list[tuple[int, str]] = []
    host.provide(
        "tick_count",
        lambda i: seen.append((i, threading.current_thread().name)) or 0,
        "int64_t(int64_t)",
    )
    p = host.load(cc(src, "threads", ["-pthread"]), isolate=isolate)
    assert p.run(4) == 4
    assert len(seen) == 2000 and sorted({i for i, _ in seen}) == [0, 1, 2, 3]
    assert all(name != threading.current_thread().name for _, name in seen)


@modes(
    isolated=pytest.mark.skip(
        reason="about one mode by nature: an image retained in this process, whose thread "
        "writes into the host's memory through a pointer without a length (refused "
        "isolated); an isolated worker ends with the host, and its service calls after "
        "close() are tested in test_isolation_contract.py"
    )
)
def test_service_called_after_close_returns_error_value(tmp_path, cc, caplog, mode: str) -> None:
    """A retained image (its thread outlives the host) keeps calling: each
    call returns the error value and is logged; nothing crashes."""
    src = """
    #include <hotload.h>
    #include <pthread.h>
    #include <unistd.h>
    HOTLOAD_PLUGIN("lingers", "1");
    HOTLOAD_IMPORT(beat, int32_t, (int32_t));
    static volatile int32_t *out;
    static void *loop(void *arg) {
        (void)arg;
        for (int i = 0; i < 400; i++) { out[0] = beat(i); out[1] = i; usleep(5000); }
        return NULL;
    }
    HOTLOAD_API int32_t start(int32_t *where) {
        pthread_t t; out = where; return pthread_create(&t, NULL, loop, NULL);
    }
    HOTLOAD_EXPORT(start, int32_t, (int32_t *));
    """
    from hotload._artifact.signatures import ffi

    out = ffi.new("int32_t[2]")
    host = Host(tmp_path / "work", preflight=False)
    host.provide("beat", lambda i: 1, "int32_t(int32_t)", error=-7)
    p = host.load(cc(src, "lingers", ["-pthread"]))
    assert p.start(out) == 0
    deadline = time.monotonic() + 10
    while out[0] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert out[0] == 1
    with caplog.at_level(logging.ERROR, logger="hotload"):
        host.close()
        deadline = time.monotonic() + 10
        while out[0] != -7 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert out[0] == -7
    assert "service beat called after host.close()" in caplog.text
    with pytest.raises(ClosedError):
        host.provide("beat", lambda i: 1, "int32_t(int32_t)")
    while out[1] < 399 and time.monotonic() < deadline + 5:  # let the thread finish
        time.sleep(0.02)


@pytest.mark.parametrize(
    "proto, error, words",
    [
        ("char *(int32_t)", 0, "cannot return a pointer"),
        ("int8_t(int32_t)", 1000, "does not fit int8_t"),
        ("int32_t(int32_t", 0, "cannot parse the C signature"),
        ("int32_t(int32_t, ...)", 0, "variadic"),
    ],
)
def test_bad_provide_is_refused(host: Host, proto: str, error: int, words: str) -> None:
    with pytest.raises(HotloadError, match=words):
        host.provide("svc_bad", lambda *a: 0, proto, error=error)


def test_prototype_change_of_an_imported_service_is_refused(host: Host, cc, isolate: Mode) -> None:
    provide_basics(host, [])
    p = host.load(activity(cc), isolate=isolate)
    with pytest.raises(ServiceError, match=r"imported so by activity v1"):
        host.provide("grant_item", lambda p, i, n: 0, "int32_t(int64_t, const char *, int64_t)")
    assert p.login(1) == 102


def test_import_records_are_abi_2_and_exports_stay_abi_1(cc) -> None:
    facts = binfmt.check(activity(cc).read_bytes(), "activity.so")
    section = facts.hotload_section or b""
    assert b"hotload\x1f2\x1fimport\x1fgrant_item\x1f" in section
    assert b"hotload\x1f1\x1fexport\x1flogin\x1f" in section
    desc = descriptor.parse(section, "activity.so")
    assert desc.abi == 2 and [i.name for i in desc.imports] == ["grant_item", "note"]


def test_preflight_stand_ins_follow_each_services_error_value_across_reloads(
    cc, isolate: Mode
) -> None:
    """The preflight worker keeps its stand-ins between requests (no new
    callbacks per reload): a service re-provided with another error value must
    still reach the next preflight, and the old value must come back."""
    src = """
#include <hotload.h>
HOTLOAD_PLUGIN("pf_errval", "VERSION");
HOTLOAD_IMPORT(pf_grant, int32_t, (int64_t));
HOTLOAD_API int32_t one(void) { return 1; }
HOTLOAD_EXPORT(one, int32_t, (void));
static int self_test(void) { return pf_grant(1) == 7 ? 0 : 5; }
HOTLOAD_SELF_TEST(self_test);
"""
    with Host() as host:
        host.provide("pf_grant", lambda p: 0, "int32_t(int64_t)", error=7)
        p = host.load(cc(src.replace("VERSION", "1"), "pf_errval"), isolate=isolate)
        for i in range(2, 6):  # the same stand-ins, reused
            host.reload("pf_errval", path=cc(src.replace("VERSION", str(i)), "pf_errval"))
        host.provide("pf_grant", lambda p: 0, "int32_t(int64_t)", error=8)
        with pytest.raises(HotloadError, match="self-test failed"):
            host.reload("pf_errval", path=cc(src.replace("VERSION", "6"), "pf_errval"))
        host.provide("pf_grant", lambda p: 0, "int32_t(int64_t)", error=7)
        host.reload("pf_errval", path=cc(src.replace("VERSION", "7"), "pf_errval"))
        assert p.one() == 1
        assert host.current("pf_errval").plugin_version == "7"
