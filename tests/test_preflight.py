"""Preflight: a new build that crashes, hangs or refuses is a refused reload,
never an outage.  Every case: a clear error naming the step, the host alive,
the live version still serving with its state, no versioned copy left."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from hotload import HookError, Host, Isolated
from hotload._process.preflight import PreflightError

from conftest import versioned_copies

BAD = r"""
#define _POSIX_C_SOURCE 200809L
#include <hotload.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
HOTLOAD_PLUGIN("xp", "2.0.0-bad");
HOTLOAD_API int64_t reward(int64_t base, int32_t level) { return base * 100 + level; }
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
HOTLOAD_API int64_t grants_so_far(void) { return -1; }
HOTLOAD_EXPORT(grants_so_far, int64_t, (void));
HOTLOAD_API int32_t version_tag(void) { return 100; }
HOTLOAD_EXPORT(version_tag, int32_t, (void));
HOTLOAD_API int32_t slow_tag(int32_t ms) { return ms; }
HOTLOAD_EXPORT(slow_tag, int32_t, (int32_t));
HOTLOAD_API int64_t gen(void) { return 0; }
HOTLOAD_EXPORT(gen, int64_t, (void));
HOTLOAD_API const char *previous_version(void) { return ""; }
HOTLOAD_EXPORT(previous_version, const char *, (void));
static const size_t *seen_size;
static int on_load(const char *prev, const void *state, size_t size)
{
    (void)prev; (void)state; (void)size;
    ON_LOAD_BODY
    return 0;
}
HOTLOAD_ON_LOAD(on_load);
static int self_test(void) { SELF_TEST_BODY return 0; }
HOTLOAD_SELF_TEST(self_test);
__attribute__((constructor)) static void ctor(void) { CTOR_BODY }
"""

CASES = {
    "segfault in on_load": (
        {"ON_LOAD_BODY": 'fprintf(stderr, "about to crash\\n"); *(volatile int *)0 = 1;'},
        r"crashed with SIGSEGV during on_load.*stderr: about to crash",
    ),
    "abort in on_load": ({"ON_LOAD_BODY": "abort();"}, r"crashed with SIGABRT during on_load"),
    "hang in on_load": (
        {"ON_LOAD_BODY": "for (;;) pause();"},
        r"did not finish on_load within 1\.0 s \(hung\)",
    ),
    "segfault in self-test": (
        {"SELF_TEST_BODY": "raise(SIGSEGV);"},
        r"crashed with SIGSEGV during the self-test",
    ),
    "self-test fails": (
        {"SELF_TEST_BODY": "return 42;"},
        r"refused the new version at the self-test: self-test failed \(returned 42\)",
    ),
    "exit in constructor": (
        {"CTOR_BODY": "_exit(3);"},
        r"exited the process with code 3 during dlopen \(library constructors\)",
    ),
    "on_load refuses": (
        {"ON_LOAD_BODY": "return 5;"},
        r"refused the new version at on_load: on_load of xp 2\.0\.0-bad refused .*returned 5",
    ),
}


def _bad_source(**bodies: str) -> str:
    src = BAD
    for key in ("ON_LOAD_BODY", "SELF_TEST_BODY", "CTOR_BODY"):
        src = src.replace(key, bodies.get(key, ""))
    return src


@pytest.fixture
def strict_host(tmp_path: Path):
    with Host(tmp_path / "work", preflight_timeout=1.0) as h:
        yield h


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_build_is_refused_in_preflight_and_host_keeps_serving(
    strict_host: Host, xp_build, cc, tmp_path: Path, case: str
) -> None:
    host = strict_host
    xp = host.load(xp_build(mult=2))
    for _ in range(4):
        xp.reward(1, 0)
    bodies, pattern = CASES[case]
    bad = cc(_bad_source(**bodies), "bad")
    with pytest.raises(HookError, match=pattern) as err:  # the message names what went wrong
        host.reload("xp", bad)
    assert str(bad) in str(err.value)
    assert xp.reward(1, 0) == 2 and xp.grants_so_far() == 5  # same version, state intact
    assert [v.seq for v in host.versions("xp")] == [1]
    assert len(versioned_copies(host.workdir)) == 1
    # the worker was replaced if it died: the next good build goes live
    xp_build(mult=3)
    host.reload("xp")
    assert xp.reward(1, 0) == 3 and xp.grants_so_far() == 6


def test_preflight_error_carries_step_and_signal(strict_host: Host, xp_build, cc) -> None:
    strict_host.load(xp_build())
    bad = cc(_bad_source(ON_LOAD_BODY="*(volatile int *)0 = 1;"), "bad")
    with pytest.raises(PreflightError) as err:
        strict_host.reload("xp", bad)
    assert (err.value.step, err.value.signal_name) == ("on_load", "SIGSEGV")


def test_preflight_runs_on_load_with_the_live_state(tmp_path: Path, xp_build, cc) -> None:
    """The preflight's on_load gets the blob the live version would hand over:
    a build that rejects the *current* state layout is refused up front."""
    picky = _bad_source(ON_LOAD_BODY="if (state == NULL || size != 16) return 9;")
    with Host(tmp_path / "w") as host:
        host.load(xp_build())  # its on_unload hands over 16 bytes
        ok = host.reload("xp", cc(picky, "picky"), preflight=True, allow_signature_change=True)
        assert ok.seq == 2
    with Host(tmp_path / "w2") as host:
        no_state = cc(_bad_source(ON_LOAD_BODY="if (state != NULL) return 9;"), "nostate")
        host.load(xp_build())
        with pytest.raises(HookError, match="returned 9"):
            host.reload("xp", no_state)


def test_first_load_is_preflighted_too(strict_host: Host, cc) -> None:
    bad = cc(_bad_source(ON_LOAD_BODY="*(volatile int *)0 = 1;"), "bad")
    with pytest.raises(PreflightError, match="SIGSEGV during on_load"):
        strict_host.load(bad)
    assert strict_host.names() == [] and not versioned_copies(strict_host.workdir)


def test_preflight_can_be_turned_off(tmp_path: Path, xp_build, cc) -> None:
    failing_test = cc(_bad_source(SELF_TEST_BODY="return 1;"), "failing")
    with Host(tmp_path / "w", preflight=False) as host:
        host.load(xp_build())
        host.reload(
            "xp", failing_test, allow_signature_change=True
        )  # the self-test only runs in preflight
        assert host.plugin("xp").version_tag() == 100
    with Host(tmp_path / "w2") as host:
        host.load(xp_build())
        with pytest.raises(HookError, match="self-test failed"):
            host.reload("xp", failing_test)
        host.reload("xp", failing_test, preflight=False)


SPINNER = r"""
#include <hotload.h>
#include <pthread.h>
#include <unistd.h>
HOTLOAD_PLUGIN("spinner", "1");
/* Reads stdin forever (the worker's is /dev/null: it loops, sleeping 1 ms a turn). */
static void *spin(void *arg) {
    (void)arg; char c; for (;;) if (read(0, &c, 1) <= 0) usleep(1000); return NULL;
}
HOTLOAD_API int f(void) { return 1; }
HOTLOAD_EXPORT(f, int, (void));
static int start(const char *p, const void *s, size_t n)
{ (void)p; (void)s; (void)n; pthread_t t; pthread_create(&t, NULL, spin, NULL); return 0; }
HOTLOAD_ON_LOAD(start);
"""


def test_a_plugin_that_leaves_a_thread_never_gets_another_build_blamed(
    cc, xp_build, tmp_path: Path
) -> None:
    """The preflight worker is reused.  If it unmapped a plugin whose thread
    keeps running, that thread would crash the worker during the *next*
    plugin's check, and an innocent build would be refused."""
    spinner = cc(SPINNER, "spinner", flags=["-pthread"])
    innocent = xp_build()
    script = f"""
import time
from hotload import Host
with Host({str(tmp_path / "w")!r}) as host:
    host.load({str(spinner)!r})
    time.sleep(0.2)
    for _ in range(3):
        host.load({str(innocent)!r}) if "xp" not in host else host.reload("xp")
    print("ok", host.plugin("xp").reward(1, 0))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.strip() == "ok 2"


def test_a_real_time_signal_is_named_too(strict_host: Host, xp_build, cc) -> None:
    strict_host.load(xp_build())
    bad = cc(_bad_source(SELF_TEST_BODY="raise(SIGRTMIN + 4);"), "bad")
    with pytest.raises(
        PreflightError, match=r"crashed with signal \d+ during the self-test"
    ) as err:
        strict_host.reload("xp", bad)
    assert err.value.signal_name.startswith("signal ")


# ---- the same worker as the plugin will run in ------------------------------------------
SECRET = "HOTLOAD_TEST_PREFLIGHT_SECRET"  # in the host's environment; workers never get it
AS_ISOLATED = 3 << 30  # room for the worker's Python (~200 MB of address space) and more
WHERE = r"""
#define _GNU_SOURCE
#include <hotload.h>
#include <stdlib.h>
#include <sys/resource.h>
HOTLOAD_PLUGIN("NAME", "1.0.0");
HOTLOAD_API int32_t sees_secret(void) { return getenv("SECRET") != NULL; }
HOTLOAD_EXPORT(sees_secret, int32_t, (void));
HOTLOAD_API int64_t address_space(void)
{ struct rlimit r; getrlimit(RLIMIT_AS, &r); return (int64_t)r.rlim_cur; }
HOTLOAD_EXPORT(address_space, int64_t, (void));
/* Passes only where the plugin will run: the workers' environment, and the
   limits it will serve under (an isolated plugin's, or the host's own). */
static int self_test(void)
{
    struct rlimit as, cpu;
    if (sees_secret()) return 1;
    getrlimit(RLIMIT_AS, &as);
    getrlimit(RLIMIT_CPU, &cpu);
    if (as.rlim_cur != EXPECT_AS || as.rlim_max != EXPECT_AS) return 2;
    if (cpu.rlim_cur != EXPECT_CPU || cpu.rlim_max != EXPECT_HARD_CPU) return 3;
    return 0;
}
HOTLOAD_SELF_TEST(self_test);
"""


def _where(cc, name: str, address_space: int, cpu: int, hard_cpu: int | None = None) -> Path:
    """A build whose self-test passes only under these limits (``hard_cpu``:
    the hard CPU limit, ``cpu`` when None)."""

    def c(v: int) -> str:
        return "RLIM_INFINITY" if v == resource.RLIM_INFINITY else f"((rlim_t){v}ULL)"

    src = WHERE.replace("NAME", name).replace("SECRET", SECRET)
    src = src.replace("EXPECT_HARD_CPU", c(cpu if hard_cpu is None else hard_cpu))
    return cc(src.replace("EXPECT_AS", c(address_space)).replace("EXPECT_CPU", c(cpu)), name)


def test_preflight_tries_a_build_in_the_environment_and_limits_it_will_run_with(
    tmp_path: Path, cc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker stack: the preflight of an isolated plugin runs under its
    ``limits``, that of an in-process one under the host's own, and both in
    the scrubbed environment every worker gets.  Each self-test below fails
    (rc 1, 2, 3) where the build would not run as tried."""
    monkeypatch.setenv(SECRET, "the host's")
    limits = {"address_space": AS_ISOLATED, "cpu_seconds": 600}
    host_as = resource.getrlimit(resource.RLIMIT_AS)[0]
    host_cpu = resource.getrlimit(resource.RLIMIT_CPU)[0]
    # cpu_seconds is the soft limit (SIGXCPU); the hard one, a second later, is the SIGKILL
    caged = _where(cc, "caged", AS_ISOLATED, 600, 601)
    free = _where(cc, "free", host_as, host_cpu, resource.getrlimit(resource.RLIMIT_CPU)[1])
    with Host(tmp_path / "w", preflight_timeout=30.0) as host:
        p = host.load(caged, isolate=Isolated(limits=limits))  # preflighted under its limits
        assert p.address_space() == AS_ISOLATED and p.sees_secret() == 0  # served under them
        misplaced = _where(cc, "misplaced", AS_ISOLATED, 600, 601)  # expects the caged limits...
        with pytest.raises(PreflightError, match=r"self-test failed \(returned 2\)"):
            host.load(misplaced)  # ...but runs in process, and is tried without them
        # the worker that tried the caged build is not reused: the next trial runs
        # under the host's own limits again, still without the host's environment
        q = host.load(free)
        assert q.sees_secret() == 1  # the host has it: the trial's worker did not
        host.reload("caged")  # a second trial under limits: a fresh worker again
        host.reload("free")
        assert host.current("caged").seq == 2 and host.current("free").seq == 2


def test_a_plugin_without_imports_sees_it_is_in_preflight_from_the_first_trial(
    tmp_path: Path, cc
) -> None:
    """Found by a new user: hotload_in_preflight() said 0 in a fresh preflight
    worker until a plugin with imports had been tried there (the flag came with
    the first service binding), so the same build passed or failed by what the
    host had loaded before it."""
    src = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("probe", "1");
    static int start(const char *p, const void *s, size_t n)
    { (void)p; (void)s; (void)n; return hotload_in_preflight() ? 7 : 0; }
    HOTLOAD_ON_LOAD(start);
    HOTLOAD_API int32_t f(void) { return 1; }
    HOTLOAD_EXPORT(f, int32_t, (void));
    """
    for i in range(2):  # a fresh host (and worker) each time: the first trial is the case
        with Host(tmp_path / f"w{i}") as host:
            with pytest.raises(PreflightError, match=r"refused to start \(returned 7\)"):
                host.load(cc(src, "probe"))
            host.load(cc(src, "probe"), preflight=False)  # in the host it says 0
