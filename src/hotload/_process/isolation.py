"""Isolated plugins: each version runs in its own worker process.

A plugin loaded with ``isolate=True`` is staged as usual (read once,
checked, copied), but it is ``dlopen``ed by a worker process (role
``isolated``, see ``worker`` and ``serving``), one per live version.  The
version's ``Image.functions`` are forwarders that send each call to the
worker and wait for the answer, so the routers, in-flight accounting, drain,
state handover and rollback work unchanged.

Why a process: a plugin that dereferences NULL in a call kills only its
worker (the caller gets ``PluginCrashedError``), and closing a version stops
its worker, so its memory goes back to the OS whatever its runtime (a Go
``c-shared`` library never leaves a process it was loaded into).

The modules that share the work: ``wire`` says how a call crosses (the plans,
checked at load, and the encoding both sides run); ``spawn`` starts, talks to
and ends a worker process; ``proxy`` is one version as the host sees it (its
calls, hooks, crash handling per ``on_crash``, restarts with backoff);
``service_channel`` serves the plugin's calls of host services; and this
module supervises: the warm spare, opening a version in a worker, a thread
that notices dead or stopped workers, rollbacks after a crash, and the end of
every worker at ``close()``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._artifact.loader import Image, Staged
from .._contract.services import ImportBinding, ServiceTable
from .._engine.journal import Journal
from .._errors import HotloadError, SignatureError, resource_error
from .._platform import proc as channel
from .options import Isolated
from .pool import Spawner
from .proxy import Proxy
from .spawn import START_TIMEOUT, Worker, _StartFailed
from .wire import CallPlan, plans, shm_supported

__all__ = ["IsolatedImage", "Isolation"]

log = logging.getLogger(__name__)

TRIM_EVERY = 1.0  # seconds between two trims of the C heap, at most (``_trim``)


class Isolation:
    """The host's isolated workers: spawning (from one long-lived thread, for
    the parent-death signal), a warm spare, and a supervisor thread that
    notices dead or stopped workers and runs the crash policy."""

    def __init__(
        self, on_rollback: Callable[[str, int], object], journal: Journal | None = None
    ) -> None:
        self._on_rollback = on_rollback
        self.journal = journal  # crashes, restarts and stops of live versions go there
        self.shm = shm_supported()
        # (sandboxed, forked by a zygote) -> its spawner, made on use; ``Isolated(zygote=False)``
        # plugins have their own pool of fresh interpreters
        self._spawners: dict[tuple[bool, bool], Spawner] = {}
        self._fallback_said = False
        self._lock = threading.Lock()
        self._proxies: list[Proxy] = []
        self._exiting: list[Proxy] = []  # stopped, their workers not reaped yet
        self.exit_faults = 0  # workers that crashed or hung at exit, after their stop
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._churn = False  # a worker started or ended since the heap was last trimmed
        self._trimmed = 0.0  # when (monotonic)
        self._wake = threading.Event()
        self.closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="hotload-isolate")
        self._thread.start()

    # -- workers --------------------------------------------------------------
    def _spawner(self, sandbox: bool, zygote: bool = True) -> Spawner:
        with self._lock:
            spawner = self._spawners.get((sandbox, zygote))
            if spawner is None:
                spawner = Spawner(
                    "isolated", shm=self.shm, services=True, sandbox=sandbox, size=0, zygote=zygote
                )
                self._spawners[sandbox, zygote] = spawner
            return spawner

    def warm(self, timeout: float = 10.0, *, sandbox: bool = True, zygote: bool = True) -> bool:
        """Wait until the spare workers are ready (True), e.g. before timing a reload."""
        return self._spawner(sandbox, zygote).warm(timeout)

    def spares(self, sandbox: bool = True, zygote: bool = True) -> list[Worker]:
        """The spare workers of that kind now (started, ready or not)."""
        return self._spawner(sandbox, zygote).spares()

    def zygote_pid(self, sandbox: bool = True) -> int:
        """The pid of that kind's worker zygote, 0 when none runs (tests)."""
        z = self._spawner(sandbox).zygote
        return z.pid if z is not None and z.running() else 0

    def take(
        self, sandbox: bool = True, spares: int = 1, *, backed: bool = False, zygote: bool = True
    ) -> Worker:
        """A ready worker (sandboxed or not): a spare from the pool if one is
        alive, else a new one, started side by side with the spares that
        replace it (the pool keeps ``spares``, or more if another loaded
        plugin of that kind asks for more).  ``backed`` (a load or a reload):
        a worker started on demand is returned once a spare started with it
        is ready too, so the version's first crash finds one (a restart does
        not wait: it serves as soon as it can).  ``zygote=False``: a fresh
        interpreter, from a pool of its own (``Isolated(zygote=False)``)."""
        spawner = self._spawner(sandbox, zygote)
        self._churn = True
        with self._lock:
            size = max(spares, self._wanted(sandbox, zygote))
        spawner.resize(size)
        for attempt in (1, 2):
            try:
                worker = spawner.take()
                if not self.closed:
                    spawner.refill()  # replaced at once, before this one's hello
                worker.greet()
                break
            except OSError as exc:
                raise resource_error(exc, "cannot start an isolated worker") or HotloadError(
                    f"cannot start an isolated worker: {exc}"
                ) from None
            except _StartFailed as exc:
                if attempt == 2:
                    raise HotloadError(f"isolated {exc}") from None
                log.warning("an isolated worker failed to start (%s); starting another", exc)
        if backed and not worker.pooled and not self.closed:
            spawner.ready_one(START_TIMEOUT)  # started with it: about as far along
        if sandbox and worker.sandbox_why and not self._fallback_said:
            self._fallback_said = True
            log.warning(
                "isolated workers run in a weaker sandbox here (%s): %s",
                worker.sandbox_why,
                ", ".join(worker.sandbox) or "no protection",
            )
        return worker

    def _wanted(self, sandbox: bool, zygote: bool) -> int:
        """The pool size the loaded plugins of that kind ask for (the lock is held)."""
        mine = (
            p.opts.spares
            for p in self._proxies
            if (p.opts.sandbox, p.opts.zygote) == (sandbox, zygote)
        )
        return max(mine, default=0)

    def _resize(self, sandbox: bool, zygote: bool) -> None:
        """Fit the pool to the plugins loaded now: none left, no spares."""
        with self._lock:
            spawner = self._spawners.get((sandbox, zygote))
            size = self._wanted(sandbox, zygote)
        if spawner is not None and size < spawner.size:
            spawner.resize(size)

    # -- opening a version --------------------------------------------------------
    def open(
        self,
        staged: Staged,
        opts: Isolated,
        hook_timeout: float | None,
        services: ServiceTable | None = None,
    ) -> IsolatedImage:
        cand = staged.cand
        desc = cand.descriptor
        try:  # refuses before anything starts
            cps = plans(cand.prototypes, where=cand.source)
            binding, svc_cps, imports = _services(staged, services)
        except BaseException:
            staged.discard()
            raise
        if not opts.sandbox:
            log.warning(
                "%s: isolated without a sandbox (Isolated(sandbox=False)): its worker runs as "
                "this user and can read this process's memory and signal it",
                cand.source,
            )
        proxy = Proxy(self, cand.name, staged.seq, cand.source, cps, opts, hook_timeout)
        proxy.binding, proxy.svc_plans = binding, svc_cps
        proxy.digest, proxy.version = cand.digest, cand.version  # for the journal
        proxy.image = cand.data if opts.sandbox else None  # a sandbox cannot see the copy
        proxy.request = {
            "op": "open",
            "name": cand.name,
            "path": str(staged.copy),
            "source": cand.source,
            "prototypes": cand.prototypes,
            "on_load": desc.on_load if desc else None,
            "on_unload": desc.on_unload if desc else None,
            "limits": opts.limits,
            "types": [dataclasses.asdict(t) for t in desc.types] if desc and cand.types else None,
            "imports": imports,
            "typed": bool(desc and desc.state),  # HOTLOAD_STATE: live once its state is in
        }
        try:
            proxy.start(self.take(opts.sandbox, opts.spares, backed=True, zygote=opts.zygote))
        except BaseException:
            staged.discard()
            self._resize(
                opts.sandbox, opts.zygote
            )  # the spares it asked for, if no other plugin wants them
            raise
        if binding is not None:
            binding.track()  # its imports are in use until the image is released (detach)
        with self._lock:
            self._proxies.append(proxy)
        image = IsolatedImage(
            source=cand.source,
            copy=staged.copy,
            file_id=staged.file_id,
            digest=cand.digest,
            size=cand.size,
            descriptor=desc,
            name=cand.name,
            version=cand.version,
            handle=0,
            functions={f: proxy.forwarder(cp) for f, cp in cps.items()},
            prototypes=cand.prototypes,
            on_load=None,
            on_unload=(lambda *a: 0) if desc and desc.on_unload else None,
            process=proxy,
            imports=binding,
            types=cand.types,
        )
        image.on_load = (lambda *a: 0) if desc and desc.on_load else None
        return image

    def forget(self, proxy: Proxy, *, exiting: bool = False) -> None:
        """``proxy`` no longer serves; ``exiting``: its worker was asked to
        exit and ``close()`` must see it gone."""
        with self._lock:
            if proxy in self._proxies:
                self._proxies.remove(proxy)
            if exiting:
                self._exiting.append(proxy)
            elif proxy in self._exiting:
                self._exiting.remove(proxy)
        self._churn = True
        self._resize(
            proxy.opts.sandbox, proxy.opts.zygote
        )  # the last of its kind unloaded: its spares go

    def later(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)
        self._wake.set()

    def rollback(self, name: str, seq: int) -> None:
        """Roll ``name`` back after version ``seq`` crashed (on the supervisor)."""
        self.later(lambda: self._run_rollback(name, seq))

    def _run_rollback(self, name: str, seq: int) -> None:
        try:
            self._on_rollback(name, seq)
        except HotloadError as exc:
            log.error("%s: rollback after a crash failed: %s", name, exc)

    # -- the supervisor -------------------------------------------------------------
    def _loop(self) -> None:
        while not self.closed:
            self._wake.wait(0.25)
            self._wake.clear()
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    job()
                except Exception:  # the supervisor must go on
                    log.exception("isolated worker job failed")
            with self._lock:
                proxies = list(self._proxies)
                spawners = list(self._spawners.values())
            for p in proxies:
                p.check()
            for spawner in spawners:
                spawner.tend()  # spares that died while idle are replaced, not handed out
            self._trim()

    def _trim(self) -> None:
        """Give the C heap's free pages back, at most once a second and only
        after workers came or went: each worker's threads, buffers and
        frames are freed when it ends, but glibc keeps the pages they dirtied
        resident, so without this the host's RSS crept up ~3 KB per isolated
        reload (issue 24 item 5).  Off the call path: the supervisor's thread."""
        now = time.monotonic()
        if self._churn and now - self._trimmed >= TRIM_EVERY:
            self._churn = False
            self._trimmed = now
            channel.trim_heap()

    def close(self) -> None:
        """Stop every worker (a hung one is killed)."""
        self.closed = True
        self._wake.set()
        self._thread.join(2.0)
        with self._lock:
            proxies, self._proxies = self._proxies, []
        for p in proxies:
            p.stop(kill=True)
        with self._lock:
            exiting = list(self._exiting)
        for p in exiting:
            p.gone()  # reaps it, or kills it after 2 s
        with self._lock:
            spawners = list(self._spawners.values())
        for spawner in spawners:
            spawner.close()  # the spare, and one being started


def _services(
    staged: Staged, table: ServiceTable | None
) -> tuple[ImportBinding | None, list[CallPlan], dict[str, list[Any]] | None]:
    """A version's imports: the binding its service errors count on, how each
    service's calls cross (refused here if one cannot), and what the worker
    needs to bind them (name -> [prototype, error value])."""
    cand = staged.cand
    desc = cand.descriptor
    if desc is None or not desc.imports:
        return None, [], None
    if table is None:
        raise SignatureError(f"{cand.source}: imports host services, but none are available here")
    plain_sigs = {i.name: i.signature for i in desc.imports}
    wanted = table.check(plain_sigs, cand.source)
    sigs = {n: cand.types.rewrite(p) if cand.types else p for n, p in plain_sigs.items()}
    cps = sorted(plans(sigs, where=cand.source, service=True).values(), key=lambda c: c.idx)
    errors = {n: table.services[n].error for n in sigs}
    binding = ImportBinding(table, f"{cand.name} v{staged.seq}", wanted)
    return binding, cps, {n: [sigs[n], errors[n]] for n in sigs}


@dataclass(eq=False)
class IsolatedImage(Image):
    """An image that lives in a worker process: its functions forward calls,
    its hooks run there, and closing it stops the worker."""

    def call_on_load(self, prev_version: str | None, state: bytes | None) -> None:
        proxy: Proxy = self.process
        if self.on_load is None:
            proxy.go_live()  # a typed state's version: its state was written first
            return
        proxy.on_load(prev_version, state)

    def call_on_unload(self, max_size: int = 64 << 20) -> bytes | None:
        if self.on_unload is None:
            return None
        proxy: Proxy = self.process
        return proxy.on_unload(max_size)
