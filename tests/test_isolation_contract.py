"""The plugin-host contract across the isolation boundary: structs, host
services and events with ``isolate=True``.

Real plugins compiled here, real worker processes, real threads started by
the plugin in C.  Every wait is bounded.  Service names keep one prototype
per process (the in-process tests bind them in this process's global scope),
so a name used here has the same prototype as everywhere else in the suite.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hotload import Host, Isolated, PluginCrashedError, SignatureError
from hotload._artifact.signatures import ffi
from hotload._process import service_channel

from conftest import PLUGINS_SRC, Compile, pid_alive, run_guarded, wait_for

GRANT = "int32_t(int64_t player, const char *item, int32_t count)"

TYPES = r"""
#define _GNU_SOURCE
#include <hotload.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

HOTLOAD_PLUGIN("ty", "VERSION");

typedef struct { int64_t id; int32_t level; char name[16]; } player_t;
HOTLOAD_STRUCT(player_t);
HOTLOAD_FIELD(player_t, id, int64_t);
HOTLOAD_FIELD(player_t, level, int32_t);
HOTLOAD_FIELD(player_t, name, char[16]);
typedef enum { QUEST_NONE = -1, QUEST_DAILY = 5 } quest_t;
HOTLOAD_ENUM(quest_t);
HOTLOAD_ENUMERATOR(quest_t, QUEST_NONE);
HOTLOAD_ENUMERATOR(quest_t, QUEST_DAILY);
typedef struct { player_t leader; int32_t scores[4]; quest_t quest; } guild_t;
HOTLOAD_STRUCT(guild_t);
HOTLOAD_FIELD(guild_t, leader, player_t);
HOTLOAD_FIELD(guild_t, scores, int32_t[4]);
HOTLOAD_FIELD(guild_t, quest, quest_t);
typedef struct { int64_t n; char data[70000]; } big_t;   /* larger than the shared memory */
HOTLOAD_STRUCT(big_t);
HOTLOAD_FIELD(big_t, n, int64_t);
HOTLOAD_FIELD(big_t, data, char[70000]);

HOTLOAD_API int32_t level_of(const player_t *p) { return p ? p->level : -1; }
HOTLOAD_EXPORT(level_of, int32_t, (const player_t *));
HOTLOAD_API player_t promote(player_t p) { p.level += 1; p.name[0] = 'B'; return p; }
HOTLOAD_EXPORT(promote, player_t, (player_t));
HOTLOAD_API void bump(player_t *p) { p->level += 10; strcpy(p->name, "bumped"); }
HOTLOAD_EXPORT(bump, void, (player_t *));
/* writes through a const pointer (casting const away): the caller's copy must not change */
HOTLOAD_API int32_t sneaky(const player_t *p) { ((player_t *)p)->level = 999; return p->level; }
HOTLOAD_EXPORT(sneaky, int32_t, (const player_t *));
HOTLOAD_API int64_t guild_sum(guild_t *g)
{
    int64_t t = g->leader.level + g->quest;
    for (int i = 0; i < 4; i++) t += g->scores[i];
    g->scores[3] = 40; g->leader.level = 7; g->quest = QUEST_NONE;
    return t;
}
HOTLOAD_EXPORT(guild_sum, int64_t, (guild_t *));
HOTLOAD_API quest_t next_quest(quest_t q) { return q == QUEST_NONE ? QUEST_DAILY : QUEST_NONE; }
HOTLOAD_EXPORT(next_quest, quest_t, (quest_t));
HOTLOAD_API int64_t big_fill(big_t *b, int32_t c)
{
    int64_t t = 0;
    for (int i = 0; i < 70000; i++) { t += b->data[i]; b->data[i] = (char)c; }
    b->n = t;
    return t;
}
HOTLOAD_EXPORT(big_fill, int64_t, (big_t *, int32_t));
"""

SERVICES = r"""
#define _GNU_SOURCE
#include <hotload.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

HOTLOAD_PLUGIN("svc", "VERSION");
HOTLOAD_IMPORT(grant_item, int32_t, (int64_t, const char *, int32_t));
HOTLOAD_IMPORT(note, void, (const char *));

static int32_t at_load = -100;
static int on_load(const char *prev, const void *state, size_t size)
{ (void)prev; (void)state; (void)size; at_load = grant_item(0, "on_load", 1); return 0; }
HOTLOAD_ON_LOAD(on_load);

HOTLOAD_API int32_t login(int64_t player)
{ note("login"); return grant_item(player, "crate", BONUS); }
HOTLOAD_EXPORT(login, int32_t, (int64_t));
HOTLOAD_API int32_t loaded_with(void) { return at_load; }
HOTLOAD_EXPORT(loaded_with, int32_t, (void));
HOTLOAD_API int32_t in_preflight(void) { return hotload_in_preflight(); }
HOTLOAD_EXPORT(in_preflight, int32_t, (void));

/* threads of the plugin's own, calling a service while the call that started them waits */
static void *worker(void *arg)
{
    for (int i = 0; i < 50; i++) grant_item((int64_t)(intptr_t)arg, "thread", 1);
    return NULL;
}
HOTLOAD_API int32_t run_threads(int32_t n)
{
    pthread_t t[8];
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    return n;
}
HOTLOAD_EXPORT(run_threads, int32_t, (int32_t));

/* a thread that outlives the call that started it, calling a service every 2 ms */
static volatile int32_t beats, last;
static void *beat(void *arg)
{
    (void)arg;
    for (;;) { last = grant_item(9, "beat", 1); beats++; usleep(2000); }
    return NULL;
}
HOTLOAD_API int32_t start_beat(void) { pthread_t t; return pthread_create(&t, NULL, beat, NULL); }
HOTLOAD_EXPORT(start_beat, int32_t, (void));
HOTLOAD_API int32_t beat_count(void) { return beats; }
HOTLOAD_EXPORT(beat_count, int32_t, (void));

/* the worker's own end of the service channel (from its command line), for the hostile tests */
static int svc_fd(void)
{
    char buf[4096];
    int fd = open("/proc/self/cmdline", O_RDONLY);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
        if (strcmp(buf + i, "--svc") == 0) return atoi(buf + i + strlen(buf + i) + 1);
    return -1;
}
HOTLOAD_API int32_t svc_write(int32_t how)
{
    unsigned char f[64] = {0};
    uint32_t len;
    size_t n;
    if (how == 1) { memcpy(f, "GARBAGE! GARBAGE! GARBAGE!", 26); n = 26; }        /* garbage */
    else if (how == 2) { len = 0xFFFFFFF0u; memcpy(f, &len, 4); n = 4; }        /* huge length */
    else if (how == 3) {                                                         /* service 999 */
        len = 11; memcpy(f, &len, 4); f[4] = 1; f[13] = 0xe7; f[14] = 0x03; n = 15;
    } else { len = 3; memcpy(f, &len, 4); n = 7; }                               /* too short */
    if (write(svc_fd(), f, n) != (ssize_t)n) return -1;
    usleep(3000000);   /* the host kills this worker long before */
    return 0;
}
HOTLOAD_EXPORT(svc_write, int32_t, (int32_t));

/* n well-formed requests of grant_item (service 0) from "a plugin thread", never reading
   an answer (issue 19 item 6); 32 bytes each: length, id, nested 0, index 0, the int64 and
   int32 arguments, then the string "x" */
HOTLOAD_API int64_t svc_flood(int64_t n)
{
    static unsigned char f[32 * 1024];
    int fd = svc_fd();
    int64_t sent = 0;
    while (sent < n) {
        size_t k = 0;
        for (; k + 32 <= sizeof f && sent < n; k += 32, sent++) {
            uint32_t len = 28, slen = 1;
            uint64_t rid = (uint64_t)sent + 1000000000u;
            uint16_t idx = 0;
            int64_t player = sent;
            int32_t count = 1;
            memcpy(f + k, &len, 4);
            memcpy(f + k + 4, &rid, 8);
            f[k + 12] = 0;
            memcpy(f + k + 13, &idx, 2);
            memcpy(f + k + 15, &player, 8);
            memcpy(f + k + 23, &count, 4);
            memcpy(f + k + 27, &slen, 4);
            f[k + 31] = 'x';
        }
        for (size_t off = 0; off < k;) {
            ssize_t w = write(fd, f + off, k - off);
            if (w <= 0) return -1;
            off += (size_t)w;
        }
    }
    return sent;
}
HOTLOAD_EXPORT(svc_flood, int64_t, (int64_t));
"""


def build_types(cc: Compile, version: str = "1", name: str = "ty") -> Path:
    return cc(TYPES.replace("VERSION", version), name)


def build_svc(cc: Compile, version: str = "1", bonus: int = 2, name: str = "svc") -> Path:
    src = SERVICES.replace("VERSION", version).replace("BONUS", str(bonus))
    return cc(src, name, ["-pthread"])


def provide(host: Host, grants: list[tuple[int, str, int]]) -> None:
    host.provide(
        "grant_item", lambda p, item, n: grants.append((p, item, n)) or 100 + n, GRANT, error=-1
    )
    host.provide("note", lambda text: None, "void(const char *)")


# ---- structs -------------------------------------------------------------------------


@pytest.fixture(params=["shm", "socket"])
def channel(request, monkeypatch) -> str:
    """Both channels: shared memory (the default on x86 Linux) and the socket."""
    if request.param == "socket":
        monkeypatch.setenv("HOTLOAD_ISOLATE_CHANNEL", "socket")
    return str(request.param)


def test_structs_by_value_and_pointer_cross_like_in_process(
    tmp_path: Path, cc: Compile, channel: str
) -> None:
    lib = build_types(cc)
    with Host(tmp_path / "work", preflight=False) as host:
        for isolate in (False, True):  # the same calls give the same answers in both modes
            p = host.load(lib, isolate=isolate)
            assert host.versions("ty")[-1].isolated is isolate
            bob = p.new("player_t", id=1, level=3, name="bob")
            # by value: a struct from new()[0], or a dict initializer; the result is a struct
            up = p.promote(bob[0])
            assert (up.id, up.level, ffi.string(up.name)) == (1, 4, b"Bob")
            assert p.promote({"id": 2, "level": 5}).level == 6
            assert bob.level == 3  # by value: the caller's struct is untouched
            # by pointer: copied in, and copied back (not const)
            assert p.level_of(bob) == 3 and p.level_of(ffi.NULL) == -1
            p.bump(bob)
            assert (bob.level, ffi.string(bob.name)) == (13, b"bumped")
            # enums are scalars
            assert p.next_quest(-1) == 5 and p.next_quest(5) == -1
            with pytest.raises(SignatureError, match="player_t"):
                p.level_of(5)
            if isolate:  # a const pointer is never copied back, even when the plugin writes
                assert p.sneaky(bob) == 999 and bob.level == 13
            host.unload("ty")


def test_nested_struct_with_fixed_array_and_a_struct_larger_than_shared_memory(
    tmp_path: Path, cc: Compile, channel: str
) -> None:
    with Host(tmp_path / "work", preflight=False) as host:
        p = host.load(build_types(cc), isolate=True)
        g = p.new("guild_t", leader={"id": 1, "level": 5}, scores=[1, 2, 3, 4], quest=5)
        assert p.guild_sum(g) == 5 + 5 + 10
        assert list(g.scores) == [1, 2, 3, 40] and g.leader.level == 7 and g.quest == -1
        assert g.leader.id == 1
        big = p.new("big_t")
        big.data[0], big.data[69999] = b"\x02", b"\x03"
        assert p.big_fill(big, 7) == 5
        assert big.n == 5 and big.data[0] == big.data[69999] == b"\x07"


def test_struct_with_a_pointer_field_is_refused_at_load_naming_the_field(
    host: Host, cc: Compile
) -> None:
    src = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("ptrs", "1");
    typedef struct { int64_t id; int32_t level; } player_t;
    HOTLOAD_STRUCT(player_t);
    HOTLOAD_FIELD(player_t, id, int64_t);
    HOTLOAD_FIELD(player_t, level, int32_t);
    typedef struct { player_t leader; player_t *deputy; } guild_t;
    HOTLOAD_STRUCT(guild_t);
    HOTLOAD_FIELD(guild_t, leader, player_t);
    HOTLOAD_FIELD(guild_t, deputy, player_t *);
    typedef struct { int32_t n; guild_t g; } alliance_t;
    HOTLOAD_STRUCT(alliance_t);
    HOTLOAD_FIELD(alliance_t, n, int32_t);
    HOTLOAD_FIELD(alliance_t, g, guild_t);
    HOTLOAD_API int64_t size_of(const alliance_t *a) { return a->n; }
    HOTLOAD_EXPORT(size_of, int64_t, (const alliance_t *));
    """
    lib = cc(src, "ptrs")
    with pytest.raises(SignatureError) as err:
        host.load(lib, isolate=True)
    msg = str(err.value)
    assert "size_of" in msg and "pointer field alliance_t.g.deputy (player_t *)" in msg
    assert "__hl" not in msg  # plain type names, not cffi's
    assert "ptrs" not in host.names()
    p = host.load(lib)  # the same plugin still loads in process
    assert p.size_of(p.new("alliance_t", n=3)) == 3


# ---- host services -------------------------------------------------------------------


def test_services_from_a_call_a_hook_and_plugin_threads(host: Host, cc: Compile) -> None:
    grants: list[tuple[int, str, int]] = []
    provide(host, grants)
    p = host.load(build_svc(cc), isolate=True)  # preflight on: stand-ins, then the real ones
    assert p.in_preflight() == 0
    assert p.loaded_with() == 101  # on_load (in the worker) reached the host's service
    assert p.login(5) == 102  # during a call
    assert (5, "crate", 2) in grants
    assert p.run_threads(4) == 4  # four plugin threads while the call that joins them waits
    mine = [g for g in grants if g[1] == "thread"]
    assert len(mine) == 200 and {g[0] for g in mine} == {0, 1, 2, 3}
    assert host.versions("svc")[-1].service_errors == 0


def test_preflight_runs_an_isolated_plugin_with_stand_ins(host: Host, cc: Compile) -> None:
    """The shipped activity plugin's self-test passes only where the services
    are stand-ins returning their error value (the preflight worker)."""
    live: list[int] = []
    host.provide("grant_item", lambda p, item, n: live.append(n) or n, GRANT, error=-1)
    host.provide("send_mail", lambda p, s: 0, "int32_t(int64_t player, const char *subject)")
    host.provide("log", lambda line: None, "void(const char *line)")
    p = host.load(cc((PLUGINS_SRC / "activity.c").read_text(), "activity"), isolate=True)
    vera = p.new("player_t", id=1, level=40, name="vera")
    assert p.on_player_login(vera) == 3 and live == [3]  # the real service, not a stand-in


def test_raising_service_gives_error_value_logged_and_counted(
    host: Host, cc: Compile, caplog
) -> None:
    def grant(p: int, item: str, n: int) -> int:
        if p < 0:
            raise RuntimeError("no such player")
        return "many" if p == 0 else n  # type: ignore[return-value]  # a result that does not fit

    host.provide("grant_item", grant, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    p = host.load(build_svc(cc), isolate=True)
    with caplog.at_level(logging.ERROR, logger="hotload"):
        assert p.login(-3) == -1
        assert p.login(0) == -1
        assert p.login(4) == 2
    assert "service grant_item raised" in caplog.text and "no such player" in caplog.text
    assert "Traceback" in caplog.text
    assert host.versions("svc")[-1].service_errors == 3  # on_load's call (p=0) too


@pytest.mark.parametrize("isolate", [False, True])
def test_a_service_that_forgets_return_is_named_the_same_way_in_both_modes(
    host: Host, cc: Compile, caplog, isolate: bool
) -> None:
    """Found by a new user: a service without ``return`` granted the item,
    the plugin was told it failed, and the log said only "an integer is
    required" (in process) or "struct.error" (isolated)."""
    grants: list[int] = []
    host.provide("grant_item", lambda p, item, n: grants.append(p), GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    p = host.load(build_svc(cc, name=f"forgot{int(isolate)}"), isolate=isolate)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="hotload"):
        assert p.login(9) == -1
    assert 9 in grants  # the effect happened
    assert (
        "service grant_item returned a value its prototype's result (int32_t) cannot hold "
        "(an integer is required); the plugin got the error value -1. A missing `return`?"
    ) in caplog.text


def test_provide_replacement_reaches_the_isolated_plugin(host: Host, cc: Compile) -> None:
    provide(host, [])
    p = host.load(build_svc(cc), isolate=True)
    assert p.login(1) == 102
    host.provide("grant_item", lambda pl, item, n: 1000 + n, GRANT, error=-1)
    assert p.login(1) == 1002
    host.reload("svc", build_svc(cc, version="2", bonus=4, name="svc2"))
    assert p.login(1) == 1004 and host.versions("svc")[-1].isolated


def test_service_calling_back_into_its_own_version_is_an_error_not_a_hang(
    host: Host, cc: Compile, caplog
) -> None:
    """During a call the worker serves nothing else: a service calling the
    same isolated version would wait forever.  It is refused: the plugin gets
    the error value, the log says why.  From a plugin thread (no call in
    flight) the same call is fine."""
    holder: dict[str, object] = {}

    def grant(p: int, item: str, n: int) -> int:
        return int(holder["p"].in_preflight()) + n  # type: ignore[attr-defined]

    host.provide("grant_item", grant, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    p = holder["p"] = host.load(build_svc(cc), isolate=Isolated(call_timeout=10.0))
    with caplog.at_level(logging.ERROR, logger="hotload"):
        assert p.login(1) == -1  # refused: a wait would have ended in call_timeout's error
    assert "would deadlock" in caplog.text
    assert p.start_beat() == 0  # a plugin thread: its calls back into the version are served
    wait_for(lambda: p.beat_count() >= 3)


def test_a_service_after_host_close_gives_the_error_value(
    tmp_path: Path, cc: Compile, caplog
) -> None:
    """A request that reaches the host after ``close()`` (the plugin's thread
    calling while the host shuts down) is answered with the error value."""
    host = Host(tmp_path / "work", preflight=False)
    calls: list[int] = []
    host.provide("grant_item", lambda p, item, n: calls.append(p) or n, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    p = host.load(build_svc(cc), isolate=True)
    assert p.start_beat() == 0
    assert wait_for(lambda: p.beat_count() >= 3)
    proxy = host["svc"]._version().image.process  # type: ignore[union-attr]
    cp = proxy.svc_plans[0]
    assert cp.fname == "grant_item"
    pid = host.versions("svc")[-1].pid
    # the beating thread did not hold it up: close() would have waited up to its timeout
    run_guarded(lambda: host.close(timeout=600.0), what="close() with a plugin thread calling")
    assert pid is not None
    wait_for(lambda: not pid_alive(pid))
    n = len(calls)
    with caplog.at_level(logging.ERROR, logger="hotload"):
        assert service_channel._service(proxy, cp)(9, ffi.new("char[]", b"late"), 1) == -1
    assert "service grant_item called after host.close()" in caplog.text
    assert len(calls) == n  # the provided function was not called


def test_no_request_is_served_after_the_version_is_closed(host: Host, cc: Compile) -> None:
    calls: list[int] = []
    host.provide("grant_item", lambda p, item, n: calls.append(p) or n, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    p = host.load(build_svc(cc), isolate=True)
    pid = host.versions("svc")[-1].pid
    assert p.start_beat() == 0
    wait_for(lambda: len(calls) >= 3)
    host.unload("svc")
    assert host.settle(5.0)
    assert pid is not None
    wait_for(lambda: not pid_alive(pid))
    n = len(calls)
    time.sleep(0.05)
    assert len(calls) == n


def test_an_import_that_cannot_cross_is_refused_at_load(host: Host, cc: Compile) -> None:
    src = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("rawsvc", "1");
    HOTLOAD_IMPORT(iso_peek, int32_t, (void *));
    HOTLOAD_API int32_t peek(void) { int x = 1; return iso_peek(&x); }
    HOTLOAD_EXPORT(peek, int32_t, (void));
    """
    host.provide("iso_peek", lambda ptr: 7, "int32_t(void *)")
    lib = cc(src, "rawsvc")
    with pytest.raises(SignatureError, match="imports service iso_peek .*opaque void"):
        host.load(lib, isolate=True)
    assert "rawsvc" not in host.names()


# ---- hostile workers on the service channel -------------------------------------------


@pytest.mark.parametrize(
    "how, why",
    [
        (1, "service request of"),
        (2, "service request of"),
        (3, "unknown service index"),
        (4, "service request of 3 bytes"),
    ],
)
def test_garbage_on_the_service_channel_is_a_crash_not_a_host_failure(
    host: Host, cc: Compile, how: int, why: str
) -> None:
    provide(host, [])
    p = host.load(build_svc(cc), isolate=Isolated(call_timeout=10.0))
    pid = host.versions("svc")[-1].pid
    with pytest.raises(PluginCrashedError) as err:
        p.svc_write(how)  # the host reads the request and kills the worker during the call
    # (not call_timeout's error: the host saw the garbage, it did not wait out the call)
    assert "service channel" in str(err.value) and why in str(err.value)
    wait_for(lambda: p.login(1) == 102)  # restarted; the host never noticed
    assert host.versions("svc")[-1].restarts == 1 and host.versions("svc")[-1].pid != pid


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_worker_flooding_service_requests_without_reading_answers_is_bounded_then_killed(
    host: Host, cc: Compile, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19 item 6: a plugin writing well-formed service requests and
    never reading the answers took the host from 26 MB to 1.3 GB in 2 s (the
    host read every request and queued it).  The host reads at most
    ``MAX_IN_FLIGHT`` unanswered requests of a worker, then stops reading (the
    plugin's writes block), and kills the worker when an answer waits
    ``ANSWER_TIMEOUT`` s for it: the call raises, naming why, the host grew
    by a bounded amount, and the restarted worker's services work."""
    monkeypatch.setattr(service_channel, "ANSWER_TIMEOUT", 2.0)  # read when the worker starts
    served = [0]

    def grant(p: int, item: str, n: int) -> int:
        served[0] += 1
        return 100 + n

    host.provide("grant_item", grant, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    p = host.load(build_svc(cc), isolate=True, preflight=False)
    assert p.login(1) == 102
    before = _rss()
    with caplog.at_level(logging.ERROR, logger="hotload"), pytest.raises(PluginCrashedError) as err:
        p.svc_flood(200_000)  # 6.4 MB of requests: before the bound, all read and queued
    grown = _rss() - before
    assert "does not read the answers on its service channel" in str(err.value)
    assert "the host killed the worker" in str(err.value)
    assert "svc v1 (isolated worker, pid" in caplog.text  # the log names the plugin too
    assert served[0] < 200_000 // 10  # most requests were never read
    assert grown < 16 << 20, f"the host grew by {grown >> 20} MiB"
    assert wait_for(lambda: p.login(1) == 102, 10.0)  # restarted, and its services answer
    assert host.current("svc").restarts == 1  # type: ignore[union-attr]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_host_thread_never_dies_of_a_service_request(
    host: Host, cc: Compile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a memory limit the host's service thread for a worker died of
    ``MemoryError`` (issue 19 item 6), leaving that worker's services dead
    and its callers hanging.  Whatever a host thread meets while serving a
    worker ends that worker, with an error naming why, never the thread."""
    host.provide("grant_item", lambda p, item, n: 100 + n, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    p = host.load(build_svc(cc), isolate=Isolated(call_timeout=10.0), preflight=False)
    real = service_channel.serve

    def starved(*args: object) -> bytes:
        raise MemoryError("no memory for the request")

    monkeypatch.setattr(service_channel, "serve", starved)
    with pytest.raises(PluginCrashedError, match="could not serve a service request .*MemoryError"):
        p.login(1)
    monkeypatch.setattr(service_channel, "serve", real)
    assert wait_for(lambda: p.login(1) == 102, 10.0)


def test_a_worker_killed_in_a_service_call_leaves_the_host_serving(host: Host, cc: Compile) -> None:
    entered = threading.Event()
    release = threading.Event()

    def grant(p: int, item: str, n: int) -> int:
        if item == "crate":  # login's, not on_load's
            entered.set()
            release.wait(10)
        return n

    host.provide("grant_item", grant, GRANT, error=-1)
    host.provide("note", lambda text: None, "void(const char *)")
    p = host.load(build_svc(cc), isolate=True, preflight=False)
    pid = host.versions("svc")[-1].pid
    out: list[BaseException] = []

    def call() -> None:
        try:
            p.login(1)
        except BaseException as exc:  # noqa: BLE001
            out.append(exc)

    t = threading.Thread(target=call)
    t.start()
    assert entered.wait(10)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # while the host runs its service for it
    t.join(10)
    release.set()
    assert not t.is_alive() and isinstance(out[0], PluginCrashedError)
    wait_for(lambda: p.login(1) == 2)


# ---- events ----------------------------------------------------------------------------

EVENT = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "1");
typedef struct { int64_t id; int32_t level; char name[16]; } player_t;
HOTLOAD_STRUCT(player_t);
HOTLOAD_FIELD(player_t, id, int64_t);
HOTLOAD_FIELD(player_t, level, int32_t);
HOTLOAD_FIELD(player_t, name, char[16]);
HOTLOAD_API int32_t on_player_login(const player_t *p) { return p->level * 10 + TAG; }
HOTLOAD_EXPORT(on_player_login, int32_t, (const player_t *));
"""


def test_emit_reaches_isolated_and_in_process_plugins_in_load_order(
    host: Host, cc: Compile
) -> None:
    host.declare_event("on_player_login", "int32_t(const player_t *)")
    for tag, isolate in ((1, False), (2, True), (3, False), (4, True)):
        src = EVENT.replace("NAME", f"ev{tag}").replace("TAG", str(tag))
        host.load(cc(src, f"ev{tag}"), isolate=isolate)
    player = host["ev2"].new("player_t", id=1, level=3)
    assert host.emit("on_player_login", player) == [31, 32, 33, 34]
    host.reload("ev2")  # still isolated, still second
    assert host.emit("on_player_login", player) == [31, 32, 33, 34]


# ---- the activity plugin, swapped under load -------------------------------------------


def test_isolated_activity_plugin_reloaded_under_two_threads_loses_no_grant(
    host: Host, cc: Compile
) -> None:
    lock = threading.Lock()
    granted = [0]
    items: dict[int, int] = {}

    def grant_item(player: int, item: str, count: int) -> int:
        with lock:
            granted[0] += count
            items[player] = items.get(player, 0) + count
        return count

    host.provide("grant_item", grant_item, GRANT, error=-1)
    host.provide("send_mail", lambda p, s: 0, "int32_t(int64_t player, const char *subject)")
    host.provide("log", lambda line: None, "void(const char *line)")
    host.declare_event("on_player_login", "int32_t(const player_t *)")
    host.declare_event("on_tick", "int32_t(int64_t player, int32_t tick)")
    text = (PLUGINS_SRC / "activity.c").read_text()
    builds = [
        cc(text.replace("#define LOGIN_REWARD 2", f"#define LOGIN_REWARD {2 + i % 2}"), f"a{i}")
        for i in range(2)
    ]
    p = host.load(builds[0], isolate=True)
    stop = threading.Event()
    returned = [0, 0]
    failed: list[str] = []

    def player(k: int) -> None:
        seat = p.new("player_t", id=k, level=10 + 25 * k)
        tick = 0
        while not stop.is_set():
            tick += 1
            try:
                returned[k] += sum(host.emit("on_player_login", seat))
                returned[k] += sum(host.emit("on_tick", k, tick))
            except Exception as exc:  # noqa: BLE001 - the test's whole point is zero
                failed.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=player, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            time.sleep(0.05)
            host.reload("activity", builds[(i + 1) % 2])
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not failed, failed[:3]
    assert host.versions("activity")[-1].isolated
    total = p.total_granted()
    assert total > 0 and total == granted[0] == sum(returned)
    assert sum(v.service_errors for v in host.versions("activity")) == 0
    assert set(items) == {0, 1}


BLOCKERS = """
#include <hotload.h>
#include <pthread.h>
HOTLOAD_PLUGIN("NAME", "1");
HOTLOAD_IMPORT(pool_block, int32_t, (int32_t));
HOTLOAD_IMPORT(pool_ping, int32_t, (int32_t));
static void *blocker(void *a) { pool_block((int32_t)(intptr_t)a); return NULL; }
HOTLOAD_API int32_t start_blockers(int32_t n)
{ for (int i = 0; i < n; i++) { pthread_t t; pthread_create(&t, NULL, blocker, NULL);
                                pthread_detach(t); } return n; }
HOTLOAD_EXPORT(start_blockers, int32_t, (int32_t));
static int32_t got;
static void *pinger(void *a) { got = pool_ping((int32_t)(intptr_t)a); return NULL; }
HOTLOAD_API int32_t thread_ping(int32_t k)
{ pthread_t t; got = -99; pthread_create(&t, NULL, pinger, (void *)(intptr_t)k);
  pthread_join(t, NULL); return got; }
HOTLOAD_EXPORT(thread_ping, int32_t, (int32_t));
"""


def test_a_plugin_whose_threads_block_in_services_starves_only_itself(
    host: Host, cc: Compile
) -> None:
    """Found by attacking: one pool of 4 threads served the plugin-thread
    service calls of every isolated plugin, so 4 blocked calls from plugin A
    made plugin B's calls time out and B's worker get killed."""
    gate = threading.Event()
    host.provide("pool_block", lambda k: (gate.wait(20), 0)[1], "int32_t(int32_t)")
    host.provide("pool_ping", lambda k: k + 1, "int32_t(int32_t)")
    flags = ["-pthread"]
    a = host.load(cc(BLOCKERS.replace("NAME", "pool_a"), "pool_a", flags), isolate=True)
    b = host.load(
        cc(BLOCKERS.replace("NAME", "pool_b"), "pool_b", flags), isolate=Isolated(call_timeout=10)
    )
    try:
        assert a.start_blockers(6) == 6
        time.sleep(0.3)  # let A's threads reach the host and block there
        assert b.thread_ping(41) == 42
        assert host.current("pool_b").restarts == 0
    finally:
        gate.set()
