"""Spare workers (issue 24 item 4): a pool of started, idle workers that a
restart or a reload takes instead of starting an interpreter, replaced as
soon as taken, never handed out dead, and reaped with their plugin.

Real workers (sandboxed, the default), real signals.  Which worker served is
told by pids known before the event, never by timing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hotload import ConfigError, Host, Isolated, PluginCrashedError
from hotload._process import zygote
from hotload._process.isolation import Isolation
from hotload._process.spawn import Worker

from conftest import Compile, child_pids, wait_for

ZYGOTES = 1 if zygote.wanted() else 0  # HOTLOAD_ZYGOTE=0: every worker a fresh interpreter
SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("spared", "1");
HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
HOTLOAD_API int32_t boom(void) { volatile int *p = 0; *p = 1; return 0; }
HOTLOAD_EXPORT(boom, int32_t, (void));
"""


@pytest.fixture
def lib(cc: Compile) -> Path:
    return cc(SRC, "spared")


def iso(host: Host) -> Isolation:
    isolation = host._swap._isolation  # noqa: SLF001 - the pool is what these tests are about
    assert isolation is not None
    return isolation


def running(pid: int) -> bool:
    """In the process table and not a zombie (dead, not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def ready_spares(host: Host, n: int, sandbox: bool = True) -> list[Worker]:
    """Wait until the pool holds ``n`` spares that said hello; those spares."""

    def ready() -> list[Worker] | None:
        spares = iso(host).spares(sandbox)
        if len(spares) == n and all(w.hello_waiting() for w in spares):
            for w in spares:
                w.greet()
            return spares
        return None

    return wait_for(ready, 60.0, f"{n} ready spare workers")


def test_a_crash_right_after_load_restarts_in_the_spare_started_with_it(
    tmp_path: Path, lib: Path
) -> None:
    """The spare is started with the load, so the first crash finds it: the
    restarted worker is that very process, not one started at crash time."""
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=True)
        spares = iso(h).spares()
        assert len(spares) == 1  # exists as soon as the load returns (maybe still starting)
        spare = spares[0]
        first = h.current("spared").pid  # type: ignore[union-attr]
        with pytest.raises(PluginCrashedError, match="SIGSEGV"):
            p.boom()
        assert p.add(2, 3) == 5  # waits for the restart
        info = h.current("spared")
        assert info is not None and info.restarts == 1
        assert spare.greeted and info.pid == spare.pid != first
        wait_for(lambda: len(iso(h).spares()) == 1, what="the pool refilled after the restart")
        assert iso(h).spares()[0] is not spare


def test_a_burst_of_reloads_draws_on_the_pool_and_the_pool_refills(
    tmp_path: Path, lib: Path
) -> None:
    opts = Isolated(spares=2)
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=opts)
        pool = {w.pid for w in ready_spares(h, 2)}
        served = []
        for _ in range(2):
            h.reload("spared")
            served.append(h.current("spared").pid)  # type: ignore[union-attr]
            assert p.add(1, 1) == 2
        assert set(served) == pool  # both reloads ran in workers started before the burst
        again = {w.pid for w in ready_spares(h, 2)}
        assert not again & (pool | set(served))  # two new spares, started after the burst
        h.settle(10.0)
        # the serving worker and two spares (guards), and the zygote that forked them
        assert len(child_pids()) == 3 + ZYGOTES
        assert not ZYGOTES or iso(h).zygote_pid() in child_pids()


def test_a_spare_killed_while_idle_is_not_handed_out(tmp_path: Path, lib: Path) -> None:
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=True)
        (spare,) = ready_spares(h, 1)
        os.kill(spare.pid, signal.SIGKILL)  # the process that would run plugin code
        wait_for(lambda: not running(spare.pid), what="the kill delivered")
        h.reload("spared")  # at once: the supervisor's tick may not have seen the death
        assert p.add(2, 2) == 4
        info = h.current("spared")
        assert info is not None and info.pid != spare.pid and info.seq == 2
        (fresh,) = ready_spares(h, 1)
        assert fresh is not spare and fresh.intact()


def test_a_stopped_spare_is_replaced_by_the_supervisor(tmp_path: Path, lib: Path) -> None:
    """A spare stopped while idle (SIGSTOP) cannot serve: the supervisor's tick
    kills it and starts another, with no reload to notice it."""
    with Host(tmp_path / "w", preflight=False) as h:
        h.load(lib, isolate=True)
        (spare,) = ready_spares(h, 1)
        os.kill(spare.pid, signal.SIGSTOP)
        wait_for(lambda: not spare.alive(), what="the stopped spare killed")
        (fresh,) = ready_spares(h, 1)
        assert fresh is not spare


def test_pool_size_zero_starts_each_worker_on_demand(tmp_path: Path, lib: Path) -> None:
    before = set(child_pids())
    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=Isolated(spares=0, sandbox=False))
        h.reload("spared")
        with pytest.raises(PluginCrashedError):
            p.boom()
        assert p.add(1, 2) == 3
        assert iso(h).spares(False) == []
        h.settle(10.0)
        wait_for(lambda: len(set(child_pids()) - before) == 1, what="only the serving worker")


def test_unload_and_close_leave_no_process(tmp_path: Path, lib: Path, cc: Compile) -> None:
    before = set(child_pids(zombies=True))
    h = Host(tmp_path / "w", preflight=False)
    try:
        h.load(lib, isolate=Isolated(spares=2))
        ready_spares(h, 2)
        other = cc(SRC.replace('"spared"', '"other"'), "other")
        h.load(other, isolate=Isolated(spares=1, sandbox=False))
        ready_spares(h, 1, sandbox=False)
        h.unload("spared")  # the last sandboxed plugin: its spares go with it
        wait_for(lambda: iso(h).spares(True) == [], what="the sandboxed spares reaped")
        assert len(iso(h).spares(False)) == 1  # the other kind keeps its own
        h.settle(10.0)
        # other's worker and spare, and its kind's zygote (the sandboxed kind's is gone)
        wait_for(
            lambda: len(set(child_pids()) - before) == 2 + ZYGOTES, what="other's worker and spare"
        )
        assert not ZYGOTES or iso(h).zygote_pid(sandbox=False) in child_pids()
        assert not iso(h).zygote_pid(sandbox=True)
    finally:
        h.close()
    wait_for(lambda: not set(child_pids(zombies=True)) - before, what="no child left")


def test_close_while_spares_are_starting_leaves_no_process(tmp_path: Path, lib: Path) -> None:
    before = set(child_pids(zombies=True))
    with Host(tmp_path / "w", preflight=False) as h:
        h.load(lib, isolate=Isolated(spares=3, sandbox=False))
        # closed at once: the spares are still starting
    wait_for(lambda: not set(child_pids(zombies=True)) - before, what="no child left")


def test_the_largest_pool_asked_for_is_kept(tmp_path: Path, lib: Path, cc: Compile) -> None:
    with Host(tmp_path / "w", preflight=False) as h:
        h.load(lib, isolate=Isolated(spares=1))
        h.load(cc(SRC.replace('"spared"', '"big"'), "big"), isolate=Isolated(spares=2))
        ready_spares(h, 2)
        h.unload("big")
        wait_for(lambda: len(iso(h).spares()) == 1, what="the pool shrunk to what spared asks")


@pytest.mark.parametrize("bad", [-1, 9, 1.5, True, "2", None])
def test_invalid_pool_sizes_are_refused(tmp_path: Path, lib: Path, bad: object) -> None:
    before = set(child_pids())
    with pytest.raises(ConfigError, match=r"spares must be an integer from 0 to 8"):
        Isolated(spares=bad)  # type: ignore[arg-type]
    with Host(tmp_path / "w", preflight=False) as h:
        assert h.names() == []
    assert set(child_pids()) == before  # nothing was started for it


def test_reaping_a_worker_waits_for_its_end_not_past_it_and_gives_up_in_time() -> None:
    """``Worker.reap``'s wait (``proc.wait_exit``, a pidfd where there is one):
    a process that does not end is given up on at the timeout; one that ends
    is reaped with its status; one reaped meanwhile by another thread ends
    the wait too (its pid may already be another process's)."""
    import subprocess
    import threading
    import time

    from hotload._platform import proc

    hung = subprocess.Popen(["sleep", "30"])
    try:
        t0 = time.monotonic()
        assert not proc.wait_exit(hung, 0.2)
        assert 0.15 <= time.monotonic() - t0 < 5.0
        assert hung.returncode is None
    finally:
        hung.kill()
    assert proc.wait_exit(hung, 5.0)
    assert hung.returncode == -signal.SIGKILL

    other = subprocess.Popen(["sleep", "30"])
    threading.Timer(0.2, lambda: (other.kill(), other.wait())).start()
    t0 = time.monotonic()
    assert proc.wait_exit(other, 20.0)
    assert time.monotonic() - t0 < 5.0
    assert other.returncode == -signal.SIGKILL
    assert proc.wait_exit(other, 0.0)  # already reaped: at once


def test_a_crashed_sandboxed_worker_is_reported_with_its_signal_and_its_tree_reaped(
    lib: Path, tmp_path: Path
) -> None:
    """The guard reaps the namespace's init as soon as SIGCHLD says it is
    gone (no fixed sleep), then ends as the worker did: the host still names
    the signal, and no process of the dead worker's tree is left."""
    from hotload._platform import proc

    with Host(tmp_path / "w", preflight=False) as h:
        p = h.load(lib, isolate=True)
        proxy = h._swap._isolation._proxies[0]  # type: ignore[union-attr]  # noqa: SLF001
        guard = proxy.worker.popen.pid
        tree = {guard, *proc.descendants(guard)}
        assert len(tree) >= 2  # the guard and what runs below it
        with pytest.raises(PluginCrashedError, match="SIGSEGV") as exc:
            p.boom()
        assert exc.value.signal_name == "SIGSEGV"
        assert not any(running(q) for q in tree)  # reaped before the error was raised
        assert p.add(2, 3) == 5  # restarted, in a worker of its own
        assert h.current("spared").pid not in tree  # type: ignore[union-attr]
