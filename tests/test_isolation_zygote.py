"""The worker zygote (issue 24 item 4): one imported, idle process per kind
of worker forks each new one, and the host stays every worker's parent.

Real zygotes, real workers, real signals: what is checked is where each
process comes from (``/proc``), what it holds (its descriptors), its
namespaces, and what the host does when the zygote is killed, stopped,
answers garbage or is sent garbage."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hotload import Host, Isolated
from hotload._errors import ConfigError
from hotload._process import zygote as zyg
from hotload._process.isolation import Isolation
from hotload._process.pool import Spawner
from hotload._process.spawn import Worker, start

from conftest import Compile, wait_for

SRC = r"""
#define _GNU_SOURCE
#include <hotload.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
HOTLOAD_PLUGIN("zyg", "1");
HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
/* the thread id the C library keeps for this thread (pthread_getcpuclockid encodes it)
   minus the kernel's: 0 unless a fork left the zygote's thread id in the descriptor */
HOTLOAD_API int64_t tid_gap(void)
{
    clockid_t c;
    if (pthread_getcpuclockid(pthread_self(), &c) != 0) return -1;
    return (int64_t)(~(c >> 3)) - (int64_t)syscall(SYS_gettid);
}
HOTLOAD_EXPORT(tid_gap, int64_t, (void));
#include <stdlib.h>
#include <string.h>
HOTLOAD_API int64_t env_len(int32_t which)
{
    const char *v = getenv(which ? "HOTLOAD_NOT_KEPT" : "TZ");
    return v ? (int64_t)strlen(v) : -1;
}
HOTLOAD_EXPORT(env_len, int64_t, (int32_t));
"""


@pytest.fixture
def lib(cc: Compile) -> Path:
    return cc(SRC, "zyg")


def iso(host: Host) -> Isolation:
    isolation = host._swap._isolation  # noqa: SLF001 - the zygote is what these tests are about
    assert isolation is not None
    return isolation


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a sandboxed worker: guard, init, worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo += [int(k) for k in fh.read().split()]
    return out


def sockets(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:"):
                out.add(link)
    return out


def ready(host: Host, n: int, sandbox: bool) -> list[Worker]:
    def got() -> list[Worker] | None:
        spares = iso(host).spares(sandbox)
        if len(spares) == n and all(w.hello_waiting() for w in spares):
            for w in spares:
                w.greet()
            return spares
        return None

    return wait_for(got, 60.0, f"{n} ready spares")


@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
def test_workers_are_forked_by_the_zygote_as_children_of_the_host(
    tmp_path: Path, lib: Path, sandbox: bool
) -> None:
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=Isolated(spares=2, sandbox=sandbox))
        spares = ready(h, 2, sandbox)
        z = iso(h).zygote_pid(sandbox)
        assert z and ppid(z) == os.getpid()
        channel = sockets(z)
        assert channel  # the zygote's one socket: its channel with the host
        for w in spares:
            assert isinstance(w.popen, zyg.Sibling)  # forked, not a fresh interpreter
            assert ppid(w.popen.pid) == os.getpid()  # the host's child, not the zygote's
            for pid in tree(w.popen.pid):  # no process of the worker holds the channel
                assert not sockets(pid) & channel, pid
            with open(f"/proc/{w.popen.pid}/cmdline", "rb") as fh:
                assert b"--shm" in fh.read() or not iso(h).shm  # its own command line
        assert p.tid_gap() == 0  # the C library's thread id is the worker's own
        assert p.add(2, 3) == 5
        if sandbox:  # a sandbox of its own each: namespaces not shared, not the zygote's
            for ns in ("pid", "user", "mnt"):
                seen = {os.readlink(f"/proc/{w.pid}/ns/{ns}") for w in spares}
                assert len(seen) == 2 and os.readlink(f"/proc/{z}/ns/{ns}") not in seen, ns


def test_a_killed_zygote_is_replaced(
    tmp_path: Path, lib: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=Isolated(sandbox=False))
        ready(h, 1, False)
        z = iso(h).zygote_pid(False)
        os.kill(z, signal.SIGKILL)
        # the supervisor's tick notices, and the spawner starts another
        wait_for(lambda: iso(h).zygote_pid(False) not in (0, z), 30.0, "a new zygote")
        h.reload("zyg")
        assert p.add(1, 1) == 2 and p.tid_gap() == 0
        worker = ready(h, 1, False)[0]
        assert isinstance(worker.popen, zyg.Sibling)
    assert f"the worker zygote (pid {z}) died of SIGKILL while idle" in caplog.text


def test_a_stopped_zygote_falls_back_to_a_fresh_start_in_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sp = Spawner("isolated", services=True, size=1, zygote=True)
    try:
        sp.start().kill()  # boots the zygote
        assert sp.zygote is not None
        z = sp.zygote.pid
        os.kill(z, signal.SIGSTOP)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING):
            w = sp.start()
        took = time.monotonic() - t0
        w.greet()
        assert not isinstance(w.popen, zyg.Sibling)  # a fresh interpreter
        assert took < zyg.FORK_TIMEOUT + 1.0, took
        assert f"the worker zygote (pid {z}) was stopped (SIGSTOP)" in caplog.text
        assert "this worker starts as a fresh interpreter" in caplog.text
        wait_for(lambda: not os.path.exists(f"/proc/{z}"), 10.0, "the stopped zygote reaped")
        w.kill()
        w2 = sp.start()  # a new zygote, booted behind the fresh start
        assert isinstance(w2.popen, zyg.Sibling) and sp.zygote.pid != z
        w2.kill()
    finally:
        sp.close()


def test_a_request_the_zygote_cannot_answer_in_time_is_given_up(tmp_path: Path) -> None:
    """The fork request itself (no spawner): a zygote stopped after it said
    hello answers nothing; the host gives up within ``FORK_TIMEOUT``."""
    sp = Spawner("isolated", size=1, zygote=True)
    try:
        sp.start().kill()
        z = sp.zygote
        assert z is not None
        pid = z.pid
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(zyg._ZygoteFailed, match=rf"pid {pid}\) was stopped"):
            start("isolated", via=z)
        assert time.monotonic() - t0 < zyg.FORK_TIMEOUT + 0.5
        assert z.popen is None  # killed
    finally:
        sp.close()


FAKE = r"""
import os, socket, sys, time
sock = socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1]))
how = os.environ["FAKE_ZYGOTE"]
if how == "hello":
    sock.send(b"nonsense instead of a hello")
    time.sleep(30)
sock.send(b"\x00zygote")
msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(64))
replies = {"short": b"xy", "pid1": (1).to_bytes(4, "little")}
replies["eperm"] = (-1).to_bytes(4, "little", signed=True)  # -EPERM: clone refused here
sock.send(replies[how])
time.sleep(30)
"""


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("hello", "said b'nonsense instead of a hello'"),
        ("short", "said b'xy'"),
        ("pid1", "answered pid 1, not a new child of the host"),
        ("eperm", "could not fork: Operation not permitted"),
    ],
)
def test_garbage_from_the_zygote_falls_back_to_a_fresh_start(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    said: str,
) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    monkeypatch.setenv("FAKE_ZYGOTE", how)
    sp = Spawner("isolated", size=1, zygote=True)
    sp.zygote = zyg.Zygote([sys.executable, str(script)], lambda: dict(os.environ))
    try:
        with caplog.at_level(logging.WARNING):
            w = sp.start()
        w.greet()
        assert not isinstance(w.popen, zyg.Sibling)  # a fresh interpreter served
        assert said in caplog.text
        w.kill()
        if how == "eperm":  # the clone is refused here: no zygote again, fresh starts
            caplog.clear()
            sp.start().kill()
            assert sp.zygote.starts == 1 and not caplog.text
    finally:
        sp.close()


def test_garbage_sent_to_the_zygote_ends_it_and_a_new_one_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sp = Spawner("isolated", size=1, zygote=True)
    try:
        sp.start().kill()
        z = sp.zygote
        assert z is not None and z.sock is not None
        pid = z.pid
        z.sock.send(b"not a request")  # no descriptors, not JSON: it exits, forks nothing
        wait_for(lambda: z.popen is None or z.popen.poll() is not None, 10.0, "its exit")
        with caplog.at_level(logging.WARNING):
            sp.start().kill()  # notices, starts fresh, and boots another
        assert f"(pid {pid}) exited with code {zyg.EXIT_GARBAGE}" in caplog.text
        w = sp.start()
        assert isinstance(w.popen, zyg.Sibling) and z.pid != pid
        w.kill()
    finally:
        sp.close()


HOST = """
import json, sys, time
from hotload import Host, Isolated
h = Host(sys.argv[2], preflight=False)
h.load(sys.argv[1], isolate=Isolated(spares=1, sandbox=sys.argv[3] == "1"))
iso = h._swap._isolation
iso.warm(60.0, sandbox=sys.argv[3] == "1")
pids = [w.popen.pid for w in iso.spares(sys.argv[3] == "1")]
pids.append(iso.zygote_pid(sys.argv[3] == "1"))
print(json.dumps(pids), flush=True)
time.sleep(60)
"""


def test_the_zygote_ends_when_the_host_closes_its_channel() -> None:
    """The short variant of the test below (make test): the zygote's end of
    file, as when its host dies without a word."""
    sp = Spawner("isolated", size=1, zygote=True)
    try:
        sp.start().kill()
        z = sp.zygote
        assert z is not None and z.sock is not None and z.popen is not None
        popen = z.popen
        z.sock.close()
        assert popen.wait(10) == 0  # it exits by itself
    finally:
        sp.close()


@pytest.mark.soak  # ~2.5 s each: a host process of its own
@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
def test_a_host_killed_leaves_no_zygote_and_no_worker(
    tmp_path: Path, lib: Path, sandbox: bool
) -> None:
    import json

    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOST), str(lib), str(tmp_path / "w"), str(+sandbox)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        pids = json.loads(proc.stdout.readline())
        everything = [p for pid in pids for p in tree(pid)]
        assert len(pids) == 2 and all(everything)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        def gone() -> bool:
            return not any(os.path.exists(f"/proc/{p}") for p in everything)

        wait_for(gone, 15.0, "the zygote and the workers gone with their host")
    finally:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait(10)


def test_a_forked_worker_gets_the_hosts_directory_of_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a worker started now would (and a preflight trial, a fresh
    interpreter, does): not those the zygote booted with."""
    sp = Spawner("isolated", size=1, zygote=True)
    try:
        sp.start().kill()  # the zygote boots here
        monkeypatch.chdir(tmp_path)
        w = sp.start()
        w.greet()
        assert isinstance(w.popen, zyg.Sibling)
        assert os.readlink(f"/proc/{w.popen.pid}/cwd") == str(tmp_path)
        w.kill()
    finally:
        sp.close()


def test_a_forked_worker_gets_the_hosts_environment_of_now(
    tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment a worker started now would have (and a preflight
    trial, a fresh interpreter, has): ``ENV_KEEP`` from the host's of now."""
    monkeypatch.setenv("TZ", "UTC")
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=Isolated(sandbox=False))  # the zygote boots with TZ=UTC
        assert p.env_len(0) == 3
        ready(h, 1, False)
        monkeypatch.setenv("TZ", "Europe/Paris")
        monkeypatch.setenv("HOTLOAD_NOT_KEPT", "1")  # not in ENV_KEEP: never passed on
        h.reload("zyg")  # takes the spare forked before the change, and forks the next
        ready(h, 1, False)
        h.reload("zyg")
        assert p.env_len(0) == len("Europe/Paris") and p.env_len(1) == -1


LAYOUT = r"""
#include <hotload.h>
#include <stdint.h>
#include <stdio.h>
HOTLOAD_PLUGIN("NAME", "1");
/* the stack protector's canary: the thread's, at %fs:0x28 on x86-64 */
HOTLOAD_API uint64_t canary(void)
{
#if defined(__x86_64__)
    uint64_t v;
    __asm__("mov %%fs:0x28, %0" : "=r"(v));
    return v;
#else
    return 0;
#endif
}
HOTLOAD_EXPORT(canary, uint64_t, (void));
HOTLOAD_API uint64_t libc_at(void) { return (uint64_t)(uintptr_t)&printf; }
HOTLOAD_EXPORT(libc_at, uint64_t, (void));
"""


def _aslr() -> bool:
    try:
        return Path("/proc/sys/kernel/randomize_va_space").read_text().strip() != "0"
    except OSError:
        return False


@pytest.mark.skipif(not _aslr(), reason="address space layout randomisation is off here")
@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
def test_a_plugin_can_start_its_workers_fresh(tmp_path: Path, cc: Compile, sandbox: bool) -> None:
    """Workers forked by one zygote share its address layout and its stack
    canary (a fork cannot renew them without an exec): two plugins' workers
    have the same libc address and canary.  ``Isolated(zygote=False)``
    starts a plugin's workers, its spares and its restarts as fresh
    interpreters, which share neither with anyone."""
    with pytest.raises(ConfigError, match="zygote must be True or False"):
        Isolated(zygote=0)  # type: ignore[arg-type]
    libs = {n: cc(LAYOUT.replace("NAME", n), n) for n in ("one", "two", "alone")}
    opts = Isolated(sandbox=sandbox, call_timeout=30, max_restarts=10)
    fresh = Isolated(sandbox=sandbox, call_timeout=30, max_restarts=10, zygote=False)
    x86 = os.uname().machine == "x86_64"
    with Host(tmp_path / "w", preflight=False) as h:
        one, two = h.load(libs["one"], isolate=opts), h.load(libs["two"], isolate=opts)
        alone = h.load(libs["alone"], isolate=fresh)
        if zyg.wanted():  # the trade the zygote makes (isolation.md, "The zygote")
            assert one.libc_at() == two.libc_at()
            assert not x86 or one.canary() == two.canary()
        seen = {alone.libc_at()}
        assert one.libc_at() not in seen and (not x86 or alone.canary() != one.canary())
        spares = wait_for(lambda: iso(h).spares(sandbox, zygote=False), 60.0, "its spare")
        assert not any(isinstance(w.popen, zyg.Sibling) for w in spares)  # fresh, not forked
        alone_pid = h.current("alone").pid  # type: ignore[union-attr]
        os.kill(alone_pid, signal.SIGKILL)  # a restart takes its own spare: fresh too
        seen.add(wait_for(lambda: _retry(alone.libc_at), 60.0, "the restart"))
        assert len(seen) == 2 and one.libc_at() not in seen


def _retry(call):  # type: ignore[no-untyped-def]
    try:
        return call()
    except Exception:  # noqa: BLE001 - the crash of the killed worker, then the restart
        return None
