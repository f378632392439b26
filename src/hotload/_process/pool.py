"""``Spawner``: where the workers of one role come from, and the pool of
spares that makes a restart or a reload cost a round trip, not an interpreter
start (issue 24 item 4).

A worker start is a fresh interpreter importing hotload, and in a sandbox
entering its namespaces: ~250-600 ms here, all of it CPU.  A crash right
after a load, or a burst of reloads, would each pay that unless a started
worker waits for them, so the spawner keeps ``size`` spares:

- **Started together, greeted late.**  A spare is started (``spawn.start``:
  a fork and exec, a few ms) on the spawner's thread and put in the pool at
  once; its hello is read by whoever takes it, or by ``tend`` once it is on
  the socket.  Starting is never blocked behind a slow start, so the first
  take of an empty pool and its spares boot side by side: the spares of a
  freshly loaded plugin are up about when the load returns.
- **Replaced as soon as taken.**  ``take`` hands out the oldest spare that
  has said hello (else the oldest one still starting), and the caller tops
  the pool up (``refill``), so a burst draws on the pool and the pool refills
  behind it.
- **Never a dead one.**  A spare that died or was stopped while idle (killed
  from outside, the OOM killer) is dropped and killed at ``take`` and at the
  supervisor's tick (``tend``), and replaced.  Spares that keep dying before
  their hello (a broken installation) are retried with a growing pause, not
  in a loop.
- **Reaped.**  ``resize(0)`` (the last plugin that wanted spares is gone)
  and ``close`` kill every spare, started or not.

Every worker is forked by the spawner's one long-lived thread: Linux sends a
worker its parent-death signal when the *thread* that forked it exits, so a
caller's thread (a control session, a watcher) must not be the one.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import zygote as _zygote
from .spawn import WORKER_MODULE, Worker, _StartFailed, start, worker_env

log = logging.getLogger(__name__)

#: Spares started in a row that died before their hello: then the pool waits
#: ``FAIL_PAUSE * 2**(n - FAIL_LIMIT)`` s (at most ``FAIL_PAUSE_MAX``) before
#: the next refill, instead of starting doomed workers in a loop.
FAIL_LIMIT = 2
FAIL_PAUSE = 1.0
FAIL_PAUSE_MAX = 60.0


class Spawner:
    """Starts the workers of one role from one long-lived thread, and keeps a
    pool of ``size`` spares (greeted or on their way) for ``take``.

    The pool only fills when asked (``refill``): a preflight keeps its one
    warm worker itself and asks for a spare only when it discards one."""

    def __init__(
        self,
        role: str,
        *,
        shm: bool = False,
        services: bool = False,
        sandbox: bool = False,
        size: int = 1,
        zygote: bool = False,
    ) -> None:
        self.role = role
        self.sandbox = sandbox
        self.size = size
        self._kw = {"shm": shm, "services": services, "sandbox": sandbox}
        self.zygote: _zygote.Zygote | None = None  # forks the workers (``zygote``), when wanted
        if zygote and _zygote.wanted():
            argv = [sys.executable, "-s", "-m", WORKER_MODULE, "--role", role]
            argv += ["--parent", str(os.getpid())] + (["--sandbox"] if sandbox else [])
            self.zygote = _zygote.Zygote(argv, worker_env)
        self._zygote_off = ""  # why this kind's workers never come from a zygote here
        self._zygote_fails = 0  # zygotes in a row that failed to start or to answer
        self._zygote_pause = 0.0  # no new zygote before this (monotonic)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"hotload-{role}-spawn")
        self._cv = threading.Condition()
        self._pool: collections.deque[Worker] = collections.deque()  # oldest first
        self._starting = 0  # spares asked of the thread, not in the pool yet
        self._closed = False
        self._fails = 0  # spares in a row that died before their hello
        self._pause_until = 0.0  # no refill before this (monotonic), after such deaths
        self.started = 0  # spares started, ever (tests, benchmarks)

    # -- taking ---------------------------------------------------------------------
    def start(self) -> Worker:
        """A new worker, forked on this object's thread; not greeted yet, so
        its pid is known while it starts."""
        return self._thread.submit(self._launch).result()

    def _launch(self) -> Worker:
        """A new worker (on the spawner's thread): forked by the zygote, else
        a fresh interpreter."""
        via = self._zygote_up()
        if via is not None:
            try:
                worker = self._start(via)
                self._zygote_fails = 0
                return worker
            except _zygote._ZygoteFailed as exc:
                if via.unusable:  # it cannot fork here at all: fresh starts only, for good
                    self._zygote_off = str(exc)
                    log.warning("%s: %s workers start as fresh interpreters", exc, self.role)
                else:
                    self._zygote_failed(f"{exc}: this worker starts as a fresh interpreter")
        return self._start(None)

    def _start(self, via: _zygote.Zygote | None) -> Worker:
        kw = self._kw
        return start(
            self.role, shm=kw["shm"], services=kw["services"], sandbox=kw["sandbox"], via=via
        )

    def _zygote_up(self, starting: bool = True) -> _zygote.Zygote | None:
        """The zygote, (re)started when it is not running (the spawner's
        thread); None when there is none to use now.  ``starting``: a worker
        waits for it (else the supervisor's tick found it dead or stopped)."""
        z = self.zygote
        if z is None or self._zygote_off or self._closed or self.size <= 0:
            return None
        if z.running():
            return z
        if z.popen is not None:  # it was running: died, or stopped, since
            then = "; this worker starts as a fresh interpreter" if starting else " while idle"
            self._zygote_failed(f"the worker zygote (pid {z.pid}) {z.state()}{then}")
            return None  # and the next one boots at once (``_zygote_failed``)
        if time.monotonic() < self._zygote_pause:
            return None
        why = z.boot()
        if not why:
            return z
        if z.unusable:  # it said why it cannot fork here: fresh starts only, for good
            self._zygote_off = why
            log.info("%s workers start without a zygote here: %s", self.role, why)
            return None
        self._zygote_failed(f"the {self.role} workers' zygote did not start: {why}")
        return None

    def park(self) -> None:
        """Stop the zygote (no plugin of this kind wants spares): the next
        start with spares wanted boots another.  Done on the spawner's
        thread, after the starts asked before."""
        if self.zygote is not None:
            with contextlib.suppress(RuntimeError):  # closed meanwhile: close stops it
                self._thread.submit(self.zygote.stop)

    def _zygote_failed(self, what: str) -> None:
        """Kill the zygote; the next one starts after a pause that grows."""
        assert self.zygote is not None
        self.zygote.stop()
        self._zygote_fails += 1
        pause = 0.0 if self._zygote_fails == 1 else FAIL_PAUSE * 2 ** (self._zygote_fails - 2)
        pause = min(pause, FAIL_PAUSE_MAX)
        self._zygote_pause = time.monotonic() + pause
        if pause:
            again = f"in {pause:g} s or later"
        else:
            again = "now"
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self._thread.submit(self._zygote_up)  # after the start under way
        log.warning("%s; it was killed, and another is started %s", what, again)

    def take(self) -> Worker:
        """A spare from the pool, else a new worker; greet it before use (a
        spare may still be starting).  A spare that died or was stopped while
        idle is killed, never handed out."""
        dead: list[Worker] = []
        chosen: Worker | None = None
        with self._cv:
            while self._pool and chosen is None:
                chosen = self._pick()
                self._pool.remove(chosen)
                if not _usable(chosen):
                    dead.append(chosen)
                    chosen = None
        self._bury(dead, idle=True)
        return chosen or self.start()

    def _pick(self) -> Worker:
        """The oldest spare that said hello (or has it waiting on its socket),
        else the oldest one: it has been starting the longest."""
        for w in self._pool:
            if w.greeted or w.hello_waiting():
                return w
        return self._pool[0]

    def spares(self) -> list[Worker]:
        """The spares in the pool now (started, greeted or not)."""
        with self._cv:
            return list(self._pool)

    # -- filling --------------------------------------------------------------------
    def resize(self, size: int) -> None:
        """Keep ``size`` spares from now on: spares beyond it are killed (the
        youngest first: the oldest are the readiest); a larger pool fills at
        the next ``refill``."""
        extra: list[Worker] = []
        with self._cv:
            self.size = size
            while len(self._pool) > max(size, 0):
                extra.append(self._pool.pop())
        for w in extra:
            w.kill()
        if size <= 0:
            self.park()  # no spares wanted: no idle zygote either

    def refill(self) -> None:
        """Start spares, side by side, until the pool (with those starting)
        holds ``size``; returns at once."""
        with self._cv:
            if self._closed or time.monotonic() < self._pause_until:
                return
            want = self.size - len(self._pool) - self._starting
            if want <= 0:
                return
            self._starting += want
        for _ in range(want):
            try:
                self._thread.submit(self._add)
            except RuntimeError:  # closed meanwhile
                with self._cv:
                    self._starting -= 1
                    self._cv.notify_all()

    def _add(self) -> None:
        """One spare, started (not greeted: starting the next one does not
        wait for this one's hello) and put in the pool (the spawner's thread)."""
        worker: Worker | None = None
        try:
            worker = self._launch()
        except OSError as exc:
            log.warning("could not start a spare %s worker: %s", self.role, exc)
        with self._cv:
            self._starting -= 1
            if worker is not None and not self._closed and len(self._pool) < self.size:
                worker.pooled = True
                self._pool.append(worker)
                self.started += 1
                worker = None
            self._cv.notify_all()
        if worker is not None:  # closed or shrunk meanwhile
            worker.kill()

    def tend(self) -> None:
        """The supervisor's tick: read the hellos that came, drop (and kill)
        spares that died or were stopped while idle, and top the pool up."""
        dead: list[Worker] = []
        with self._cv:
            pool = list(self._pool)
        for w in pool:
            if not w.greeted and w.hello_waiting():
                try:
                    w.greet(0.5)  # on its socket already (or EOF): no wait
                    self._fails = 0
                except _StartFailed as exc:
                    log.warning("a spare %s worker failed to start: %s", self.role, exc)
                    self._failed()
                    dead.append(w)
                    continue
            if not _usable(w):
                dead.append(w)
        if dead:
            with self._cv:
                for w in dead:
                    if w in self._pool:
                        self._pool.remove(w)
            self._bury(dead, idle=True)
        z = self.zygote
        if z is not None and z.popen is not None and not self._closed and not z.running():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self._thread.submit(self._zygote_up, False)  # died or stopped while idle
        self.refill()

    def _failed(self) -> None:
        self._fails += 1
        if self._fails >= FAIL_LIMIT:
            pause = min(FAIL_PAUSE * 2 ** (self._fails - FAIL_LIMIT), FAIL_PAUSE_MAX)
            self._pause_until = time.monotonic() + pause

    def _bury(self, dead: list[Worker], *, idle: bool) -> None:
        for w in dead:
            if idle and w.greeted:
                log.warning(
                    "a spare %s worker (pid %d) died or was stopped while idle; replaced",
                    self.role,
                    w.pid,
                )
            w.kill()

    def ready_one(self, timeout: float) -> bool:
        """Wait until one spare has said hello (True); False at once with an
        empty pool and none starting, or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cv:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not self._pool:
                    if not self._starting:
                        return False
                    self._cv.wait(left)  # for _add to put it in the pool
                    continue
                if any(w.greeted for w in self._pool):
                    return True
                oldest = self._pool[0]
            try:
                oldest.greet(left)
            except _StartFailed as exc:
                log.warning("a spare %s worker failed to start: %s", self.role, exc)
                self._failed()
                with self._cv:
                    if oldest in self._pool:
                        self._pool.remove(oldest)

    def warm(self, timeout: float = 10.0) -> bool:
        """Wait until every spare of the pool has said hello (True), e.g.
        before timing a reload; False after ``timeout`` or with no pool."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cv:
                left = max(0.0, deadline - time.monotonic())
                self._cv.wait_for(lambda: self._starting == 0, left)
                pool = list(self._pool)
                full = len(pool) >= self.size > 0
            if full:
                for w in pool:
                    try:
                        w.greet(max(0.01, deadline - time.monotonic()))
                    except _StartFailed:
                        self.tend()
                        break
                else:
                    return True
            if time.monotonic() >= deadline:
                return False
            self.refill()
            time.sleep(0.01)

    def close(self) -> None:
        """Kill every spare; those being started are waited for and killed too."""
        with self._cv:
            self._closed = True
            pool, self._pool = list(self._pool), collections.deque()
        for w in pool:
            w.kill()
        self._thread.shutdown(wait=True, cancel_futures=True)  # spares not started yet: never
        with self._cv:
            pool, self._pool = list(self._pool), collections.deque()
        for w in pool:
            w.kill()
        if self.zygote is not None:
            self.zygote.stop()


def _usable(w: Worker) -> bool:
    """Alive, not stopped by a signal (``Worker.intact``)."""
    return w.intact()
