"""Host services: Python functions a plugin calls like C functions.

How an import is bound before any of the plugin's code runs
-----------------------------------------------------------
``HOTLOAD_IMPORT(grant_item, ...)`` gives the plugin a *static* function
pointer named ``grant_item`` whose initial value is the address of a weak
symbol ``hotload__svc_grant_item``, and exports the address of that pointer
as ``hotload__slot_grant_item``.  That initial value is a relocation, so the
dynamic linker fills it during ``dlopen``, before constructors run.

The host defines ``hotload__svc_<name>`` in the dynamic linker's global scope
with a tiny *data-only* shared library it generates itself (an ELF file of a
few hundred bytes: absolute symbols, no code, so no compiler is needed and
any ELF64 little-endian machine works), loaded ``RTLD_GLOBAL`` once per new
service name and never unloaded.  Each such symbol is the address of a
process-wide cffi callback, the *dispatcher*, which finds the right host and
service through the thread that is opening the plugin (constructors run on
the thread that calls ``dlopen``).

Right after ``dlopen`` (before ``on_load`` or any routed call) the host
re-points every slot of the new image at a callback of that image alone
(made anew, or left by an image the kernel says has left the process: a
reload then costs no libffi closure per import): the plugin calls the
provided Python function through one cffi callback, as fast as a raw
callback, and an exception is counted on the very version that called.
``provide()`` of an existing name, and ``close()``, re-point the slots of
every image still mapped; an image is detached before ``dlclose`` so nothing
is ever written into an unmapped image.

Why not the alternatives: filling a slot table after ``dlopen`` leaves
constructors with NULL pointers; a lazy resolver needs a stub that forwards
the arguments, which C cannot write from a parameter-type list alone; a
helper library compiled from C would need a compiler on every host, or a
platform wheel.  The cost: a service name keeps its prototype for the life of
the process (the dynamic linker binds it once).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import os
import random
import struct
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._artifact import signatures
from .._engine.metrics import PyStats
from .._engine.native import crouter as _crouter
from .._engine.recording import noted
from .._errors import ClosedError, LoadError, ServiceError
from .._platform import dl
from .service_calls import adapt, measured, service_stats

log = logging.getLogger(__name__)
ffi = signatures.ffi
_SLOT = ffi.typeof("void ***")  # a slot's address, typed once (a string type costs ~1 us per cast)


# -- the generated data-only library ------------------------------------------------------
def elf_data_library(symbols: list[tuple[str, int, bool]], machine: int) -> bytes:
    """An ELF64 little-endian shared object that defines ``symbols`` as absolute
    addresses (``(name, address, is_function)``): no code, no sections, just what
    the dynamic linker reads (a ``PT_LOAD``, ``PT_DYNAMIC``, a SysV hash table with
    one bucket, ``.dynsym``/``.dynstr``) and a non-executable ``PT_GNU_STACK``."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n, _, _ in symbols)
    nsym = len(symbols) + 1
    phnum = 3
    dynsym = 64 + 56 * phnum
    dynstr = dynsym + 24 * nsym
    hash_at = (dynstr + len(names) + 7) & ~7
    dynamic = (hash_at + 4 * (3 + nsym) + 7) & ~7
    dyn = [(4, hash_at), (5, dynstr), (6, dynsym), (10, len(names)), (11, 24), (0, 0)]
    size = dynamic + 16 * len(dyn)
    out = bytearray(size)
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    struct.pack_into(
        "<16sHHIQQQIHHHHHH", out, 0, ident, 3, machine, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0
    )
    rw = 4 | 2
    headers = [
        (1, rw, 0, size, 0x1000),  # PT_LOAD: the whole file
        (2, rw, dynamic, 16 * len(dyn), 8),  # PT_DYNAMIC
        (0x6474E551, rw, 0, 0, 16),  # PT_GNU_STACK: no executable stack
    ]
    for i, (ptype, flags, offset, length, align) in enumerate(headers):
        struct.pack_into(
            "<IIQQQQQQ",
            out,
            64 + 56 * i,
            ptype,
            flags,
            offset,
            offset,
            offset,
            length,
            length,
            align,
        )
    name_at = 1
    for i, (name, value, is_function) in enumerate(symbols, start=1):
        info = (1 << 4) | (2 if is_function else 1)  # STB_GLOBAL, STT_FUNC / STT_OBJECT
        struct.pack_into("<IBBHQQ", out, dynsym + 24 * i, name_at, info, 0, 0xFFF1, value, 8)
        name_at += len(name) + 1  # 0xfff1 = SHN_ABS: the value is the address itself
    out[dynstr : dynstr + len(names)] = names
    chain = [0] + [i + 1 if i + 1 < nsym else 0 for i in range(1, nsym)]
    struct.pack_into(f"<{3 + nsym}I", out, hash_at, 1, nsym, 1 if nsym > 1 else 0, *chain)
    for i, (tag, value) in enumerate(dyn):
        struct.pack_into("<qQ", out, dynamic + 16 * i, tag, value)
    return bytes(out)


@functools.lru_cache(maxsize=1)
def host_machine() -> int:
    """The ELF machine of this interpreter (read once: a sandboxed worker
    may not be able to read its own executable later)."""
    with open(sys.executable, "rb") as fh:
        head = fh.read(20)
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise ServiceError(
            "host services need an ELF64 little-endian host (this interpreter is not one)"
        )
    machine: int = struct.unpack_from("<H", head, 18)[0]
    return machine


# -- the process-wide binding ---------------------------------------------------------------
class _Global:
    """What this process has put into the dynamic linker's global scope."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.bound: dict[str, tuple[Any, Any]] = {}  # name -> (ctype, dispatcher callback)
        self.tables: weakref.WeakSet[ServiceTable] = weakref.WeakSet()
        self.tls = threading.local()
        self.preflight = False
        self.flag: Any = None  # the int behind hotload__in_preflight, once defined
        self.kept: list[ImportBinding] = []  # bindings of images left mapped by a closed host

    def bind(self, wanted: dict[str, Any], directory: str) -> None:
        """Define ``hotload__svc_<name>`` for every name in ``wanted`` (name ->
        cffi function type) not yet defined; refuse a name bound with another
        prototype."""
        with self.lock:
            for name, ctype in wanted.items():
                have = self.bound.get(name)
                if have is not None and have[0] is not ctype:
                    raise ServiceError(
                        f"service {name} is already bound in this process as "
                        f"{signatures.spelling(have[0])!r}; a plugin that imports it as "
                        f"{signatures.spelling(ctype)!r} cannot be linked (a service name keeps "
                        f"its prototype for the life of the process)"
                    )
            new = {n: c for n, c in wanted.items() if n not in self.bound}
            if not new and self.flag is not None:
                return
            callbacks = {n: _dispatcher(n, c) for n, c in new.items()}
            symbols = [
                (f"hotload__svc_{n}", int(ffi.cast("uintptr_t", cb)), True)
                for n, cb in callbacks.items()
            ]
            if self.flag is None:
                self.flag = ffi.new("int *", 1 if self.preflight else 0)
                symbols.append(
                    ("hotload__in_preflight", int(ffi.cast("uintptr_t", self.flag)), False)
                )
            _load_global(elf_data_library(symbols, host_machine()), directory)
            for n, cb in callbacks.items():
                self.bound[n] = (new[n], cb)

    def provider(self, name: str) -> tuple[ServiceTable, ImportBinding | None] | None:
        """Who serves a call that reached the dispatcher: the host opening a
        plugin on this thread, else the newest open host providing ``name``."""
        ctx: tuple[ServiceTable, ImportBinding] | None = getattr(self.tls, "opening", None)
        if ctx is not None:
            return ctx
        for table in reversed(list(self.tables)):
            if not table.closed and name in table.services:
                return table, None
        return None


_G = _Global()


def mark_preflight() -> None:
    """This process is a preflight worker: ``hotload_in_preflight()`` says 1."""
    _G.preflight = True


def define_preflight_flag(directory: str) -> None:
    """Put ``hotload__in_preflight`` in the global scope now, not only with the
    first plugin that imports a service: else a plugin without imports, tried
    first in a fresh worker, read 0 there (the weak symbol unbound) and 1 after
    one with imports, the same build behaving by what came before it."""
    _G.bind({}, directory)


def _load_global(data: bytes, directory: str) -> None:
    """``dlopen`` the data-only library: from an anonymous file where there
    is one (a sandboxed worker may write no file, and needs none), else from
    a file in ``directory`` unlinked at once."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        try:
            fd = memfd("hotload-services", os.MFD_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                with open(fd, "wb", closefd=False) as fh:
                    fh.write(data)
                # never closed, and neither is the file: the loader knows the library by
                # this path, which must never name another file it is asked to open
                dl.open_global(f"/proc/self/fd/{fd}")
            except (OSError, LoadError) as exc:
                os.close(fd)
                raise ServiceError(f"cannot link host services into this process: {exc}") from None
            return
    fd, path = tempfile.mkstemp(prefix=".hotload-services-", suffix=".so", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        dl.open_global(path)  # never closed: plugins bind to it
    except (OSError, LoadError) as exc:
        raise ServiceError(f"cannot link host services into this process: {exc}") from None
    finally:
        os.unlink(path)


def _dispatcher(name: str, ctype: Any) -> Any:
    """The process-wide entry of service ``name``: what a plugin's slot points
    at until its host re-points it (calls from constructors, or from threads
    they start)."""

    def dispatch(*args: Any) -> Any:
        found = _G.provider(name)
        if found is None:
            raise ServiceError(f"service {name} called, but no open host provides it")
        table, binding = found
        return table.call_unbound(name, args, binding)

    def onerror(exc: Any, value: Any, tb: Any) -> None:
        log.error("service %s failed", name, exc_info=(exc, value, tb))

    return ffi.callback(ctype, dispatch, onerror=onerror, **_error_kw(ctype, 0))


def _error_kw(ctype: Any, error: Any) -> dict[str, Any]:
    return {} if ctype.result.cname == "void" else {"error": error}


# -- services and their bindings to images --------------------------------------------------
@dataclass
class Service:
    name: str
    fn: Callable[..., Any]
    ctype: Any
    error: Any
    call: Callable[..., Any]  # fn, or fn behind argument conversion (char * -> str)

    @property
    def prototype(self) -> str:
        return signatures.spelling(self.ctype)


class _Callback:
    """A cffi callback for one service, and the binding its errors count on.
    A callback outlives its image (a plugin thread may still be in it while
    the image goes); once the kernel says the image left, no call can come
    through it any more, so the next image of that host reuses it (``spare``)
    instead of paying a new libffi closure per import per reload."""

    __slots__ = ("cb", "fn", "error", "name", "binding", "box", "meter")

    def __init__(self, binding: ImportBinding, name: str, fn: Callable[..., Any], error: Any):
        self.fn, self.error, self.name, self.binding = fn, error, name, binding
        ctype = binding.imports[name]
        self.box = [binding.stats[name]]  # the stats of the image it serves now (rebind)
        sample = binding.table.sample
        call: Any = fn
        self.meter = None
        if sample and _crouter is not None:  # the compiled meter: a few ns a call
            call = self.meter = _crouter.Meter(fn, self.box[0])
        elif sample:  # the Python router's: ~175 ns a call
            call = measured(fn, ctype, self.box, sample)
        self.cb = ffi.callback(ctype, call, onerror=self.report, **_error_kw(ctype, error))

    def rebind(self, binding: ImportBinding) -> None:
        """Serve ``binding``'s image (a callback of an image that left, reused)."""
        self.binding = binding
        self.box[0] = stats = binding.stats[self.name]
        if self.meter is not None:
            self.meter.gate = stats

    def report(self, exc: Any, value: Any, tb: Any) -> None:
        binding = self.binding
        binding.failed(self.name)
        n = binding.failures(self.name)
        if not _worth_logging(n):  # counted always (metrics); logged 1-10, 100, 1000...
            return
        if tb is None:  # cffi could not convert the result: fn itself returned
            ctype = binding.imports.get(self.name)
            log_bad_result(binding.label, self.name, ctype, value, self.error)
            return
        more = f" (failure {n:,} of this version's calls of it; later ones logged at 10x)"
        why = more if n >= LOG_EVERY_FIRST else ""
        log.error(
            "%s: service %s raised%s", binding.label, self.name, why, exc_info=(exc, value, tb)
        )


#: A version's first 10 failures of a service are logged, then the 100th, 1,000th...: a
#: bad build failing on every call logged 500 tracebacks a second.  All are counted.
LOG_EVERY_FIRST = 10


def _worth_logging(n: int) -> bool:
    if n <= LOG_EVERY_FIRST:
        return True
    while n % 10 == 0:
        n //= 10
    return n == 1


def log_bad_result(label: str, name: str, ctype: Any, why: BaseException, error: Any) -> None:
    """A service returned something its C result type cannot hold (often
    None: a missing ``return``).  Its effect happened; the plugin was told it
    failed, so say exactly that."""
    rtype = ctype.result.cname if ctype is not None else "its result type"
    log.error(
        "%s: service %s returned a value its prototype's result (%s) cannot hold (%s); "
        "the plugin got the error value %r. A missing `return`?",
        label,
        name,
        rtype,
        why,
        error,
    )


@dataclass(eq=False)
class ImportBinding:
    """One image's imports: its slots and the callbacks they point at.  Kept
    as long as the image's record (the callbacks must outlive every call a
    plugin thread may still be making)."""

    table: ServiceTable
    label: str
    imports: dict[str, Any]  # name -> cffi function type
    slots: dict[str, Any] = field(default_factory=dict)  # name -> void ** in the image
    callbacks: list[_Callback] = field(default_factory=list)
    attached: bool = False
    gone: bool = False  # the image left the process: its callbacks may serve another
    # per imported service: calls and sampled latency (a Gate's slot 0, or a PyStats), and
    # the calls that failed (``Host.metrics``)
    stats: dict[str, Any] = field(default_factory=dict)
    _failed: dict[str, itertools.count[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sample = self.table.sample
        self.stats = {name: service_stats(sample) for name in self.imports}
        # next() on a count is atomic under the GIL: exact with calls failing on many threads
        self._failed = {name: itertools.count() for name in self.imports}

    def failures(self, name: str) -> int:
        """Calls of service ``name`` from this image that failed."""
        counter = self._failed.get(name)
        return int(repr(counter)[6:-1]) if counter is not None else 0  # "count(N)"

    @property
    def errors(self) -> int:
        """Service calls of this image that failed, every service."""
        return sum(self.failures(name) for name in self._failed)

    def failed(self, name: str) -> None:
        """A call of service ``name`` raised, or returned what its C result
        cannot hold: counted on this image."""
        counter = self._failed.get(name)
        if counter is None:  # not an import of this image: counted all the same
            counter = self._failed.setdefault(name, itertools.count())
        next(counter)

    def enter(self, name: str) -> int:
        """A call of ``name`` that came another way than a meter (the
        dispatcher, an isolated worker's service channel) starts: counted;
        its start time if it is one to time, else 0 (give it to ``leave``)."""
        stats = self.stats.get(name)
        sample = self.table.sample
        if stats is None or not sample:
            return 0
        if isinstance(stats, PyStats):
            next(stats.calls)
            return time.perf_counter_ns() if random.random() * sample < 1.0 else 0
        t0: int = stats.enter(0)
        return t0

    def leave(self, name: str, t0: int) -> None:
        """That call returned (or raised): its time, if ``enter`` gave a start."""
        stats = self.stats.get(name)
        if stats is None or not self.table.sample:
            return
        if isinstance(stats, PyStats):
            if t0:
                stats.record(time.perf_counter_ns() - t0)
        else:
            stats.leave(0, t0, None)

    def attach(self, lookup: Callable[[str], int | None], source: str) -> None:
        """Find the image's slots (``lookup``: dlsym) and point them at this
        image's own callbacks."""
        cast, slots = signatures.cast, {}
        for name in self.imports:
            addr = lookup(f"hotload__slot_{name}")
            if addr is None:
                raise ServiceError(
                    f"{source}: imports {name} but exports no hotload__slot_{name}: "
                    f"declare imports with HOTLOAD_IMPORT from hotload.h"
                )
            slots[name] = cast(_SLOT, addr)[0]
        table = self.table
        with table.lock:
            self.slots, self.attached = slots, True
            table.bindings.add(self)
            services, spare, callbacks = table.services, table.spare, self.callbacks
            for name, slot in slots.items():  # point(), once per import, with locals
                svc = services[name]
                entry = spare(name, svc.call, svc.error)
                if entry is None:
                    entry = _Callback(self, name, svc.call, svc.error)
                else:
                    entry.rebind(self)
                callbacks.append(entry)
                slot[0] = entry.cb

    def track(self) -> None:
        """An isolated image's binding: it has no slots here (its worker binds
        them), but its imports are in use, so ``provide()`` refuses to change
        their prototypes until ``detach``."""
        with self.table.lock:
            self.table.bindings.add(self)

    def point(self, name: str, fn: Callable[..., Any]) -> None:
        """Make ``name``'s slot call ``fn`` (under the table's lock)."""
        if not self.attached:
            return
        svc = self.table.services.get(name)
        error = svc.error if svc is not None else 0
        entry = self.table.spare(name, fn, error)
        if entry is None:
            entry = _Callback(self, name, fn, error)
        else:
            entry.rebind(self)
        self.callbacks.append(entry)
        self.slots[name][0] = entry.cb

    def detach(self) -> None:
        """The image is about to be closed: never write into it again."""
        with self.table.lock:
            self.attached = False
            self.table.bindings.discard(self)

    def left(self) -> None:
        """The kernel says the image is no longer mapped: its callbacks, the
        ones still pointing at the current services, may serve a later image."""
        with self.table.lock:
            if self.gone or self.attached:
                return
            self.gone = True
            latest = {c.name: c for c in self.callbacks}  # what each slot pointed at last
            for entry in latest.values():
                self.table.give_back(entry)


class ServiceTable:
    """One host's services (``standin=True``: the preflight worker's, which
    return their error value)."""

    def __init__(self, directory: str | os.PathLike[str], *, standin: bool = False) -> None:
        self.directory = os.fspath(directory)
        self.standin = standin
        self.lock = threading.RLock()
        self.services: dict[str, Service] = {}
        self.bindings: set[ImportBinding] = set()
        self.closed = False
        # time every Nth service call of an image (Host(metrics_sample=)); 0: count nothing
        self.sample = 0
        self._spare: dict[str, list[_Callback]] = {}  # name -> callbacks of images that left
        self._recorded = 0  # plugins of this host being recorded (host.record): note calls
        # imports -> (services dict, its size, name -> cffi type) of the last check that passed:
        # a reload re-checks the same imports, and nothing can change the verdict but provide()
        self._checked: dict[
            tuple[tuple[str, str], ...], tuple[dict[str, Service], dict[str, Any]]
        ] = {}
        _G.tables.add(self)

    def provide(self, name: str, fn: Callable[..., Any], prototype: str, *, error: Any = 0) -> None:
        if self.closed:
            raise ClosedError(f"cannot provide {name}: this host is closed")
        if not name.isidentifier():
            raise ServiceError(f"service name {name!r} is not a C identifier")
        if not callable(fn):
            raise ServiceError(f"service {name}: {fn!r} is not callable")
        ctype = signatures.parse(prototype, where=f"provide({name!r})", function=name)
        _check_result(name, ctype, error)
        _check_arity(name, fn, len(ctype.args))
        with self.lock:
            svc = Service(name, fn, ctype, error, self._call(name, fn, ctype))
            old = self.services.get(name)
            if old is not None and old.ctype is not ctype:
                users = sorted(b.label for b in self.bindings if name in b.imports)
                if users:
                    raise ServiceError(
                        f"service {name} is provided as {old.prototype!r} and imported so by "
                        f"{', '.join(users)}; it cannot change to {svc.prototype!r} while they "
                        f"are loaded"
                    )
            self.services = {**self.services, name: svc}  # a new dict: a new check verdict
            for binding in list(self.bindings):
                if name in binding.imports:
                    binding.point(name, svc.call)

    def _call(self, name: str, fn: Callable[..., Any], ctype: Any) -> Callable[..., Any]:
        """What a plugin's call of ``name`` runs: ``fn`` behind the argument
        conversion, and noted for the recorded call on the calling thread
        while some plugin is recorded (``host.record``)."""
        return adapt(noted(name, fn) if self._recorded else fn, ctype)

    def note_calls(self, on: bool) -> None:
        """A plugin's recording starts (or stops): while any runs, every
        service call is noted (``recording.noted``); off, none pays for it.
        Re-points every image's slots, as ``provide`` does."""
        with self.lock:
            was = self._recorded > 0
            self._recorded = max(0, self._recorded + (1 if on else -1))
            if (self._recorded > 0) == was:
                return
            self.services = {
                n: Service(n, s.fn, s.ctype, s.error, self._call(n, s.fn, s.ctype))
                for n, s in self.services.items()
            }
            for binding in list(self.bindings):
                for name in binding.imports:
                    if name in self.services:
                        binding.point(name, self.services[name].call)

    def spare(self, name: str, fn: Callable[..., Any], error: Any) -> _Callback | None:
        """A callback of an image that left, made for exactly ``fn`` and
        ``error`` (under the lock)."""
        pool = self._spare.get(name)
        while pool:
            entry = pool.pop()
            if entry.fn is fn and entry.error is error:
                return entry
        return None

    def give_back(self, entry: _Callback) -> None:
        """Keep ``entry`` for a later image while it still calls the current
        service (under the lock)."""
        svc = self.services.get(entry.name)
        if self.closed or svc is None or entry.fn is not svc.call or entry.error is not svc.error:
            return
        pool = self._spare.setdefault(entry.name, [])
        if len(pool) < 4:  # images open one after another: a few spares suffice
            pool.append(entry)

    def check(self, imports: dict[str, str], source: str) -> dict[str, Any]:
        """Every import provided with the same prototype, or a ``ServiceError``
        naming the service and both prototypes.  Returns name -> cffi type."""
        key = tuple(imports.items())
        services = self.services
        hit = self._checked.get(key)
        if hit is not None and hit[0] is services:
            return dict(hit[1])
        wanted = self._check(imports, source)
        if len(self._checked) >= 64:
            self._checked.clear()
        self._checked[key] = (services, wanted)
        return dict(wanted)

    def _check(self, imports: dict[str, str], source: str) -> dict[str, Any]:
        wanted = {}
        for name, proto in imports.items():
            ctype = signatures.parse(proto, where=source, function=name)
            svc = self.services.get(name)
            if svc is None:
                known = ", ".join(sorted(self.services)) or "none"
                raise ServiceError(
                    f"{source}: imports service {name} ({signatures.spelling(ctype)}) but the "
                    f"host provides no service of that name (provided: {known}); "
                    f"use host.provide({name!r}, fn, {signatures.spelling(ctype)!r})"
                )
            if svc.ctype is not ctype:
                raise ServiceError(
                    f"{source}: imports service {name} as {signatures.spelling(ctype)!r} but the "
                    f"host provides it as {svc.prototype!r}"
                )
            wanted[name] = ctype
        return wanted

    def prepare(self, imports: dict[str, str], source: str, label: str) -> ImportBinding:
        """Check the imports and bind their names in this process; the binding
        is attached to the image right after ``dlopen``."""
        with self.lock:
            if self.closed:
                raise ClosedError(f"{source}: this host is closed")
            wanted = self.check(imports, source)
        _G.bind(wanted, self.directory)
        return ImportBinding(self, label, wanted)

    @contextlib.contextmanager
    def opening(self, binding: ImportBinding) -> Iterator[None]:
        """Calls made while this thread opens the image (constructors) are
        this host's, counted on ``binding``."""
        prev = getattr(_G.tls, "opening", None)
        _G.tls.opening = (self, binding)
        try:
            yield
        finally:
            _G.tls.opening = prev

    def call_unbound(self, name: str, args: tuple[Any, ...], binding: ImportBinding | None) -> Any:
        """A call that came through the process-wide dispatcher."""
        svc = self.services.get(name)
        if svc is None:
            raise ServiceError(f"service {name} is not provided by this host")
        t0 = binding.enter(name) if binding is not None else 0
        try:
            if self.closed:
                raise ClosedError(f"service {name} called after host.close()")
            return svc.call(*args)
        except BaseException:  # noqa: BLE001 - SystemExit too, as a bound callback's onerror
            if binding is not None:
                binding.failed(name)
            log.exception("%s: service %s raised", binding.label if binding else "?", name)
            return svc.error
        finally:
            if binding is not None:
                binding.leave(name, t0)

    def close(self, stuck: list[ImportBinding] | None = None) -> None:
        """Every later call of a service returns its error value (logged): the
        images that stay mapped (retained, leaked) may still call.  ``stuck``:
        the bindings of released images still mapped (leaked), whose callbacks
        must outlive this host too."""
        with self.lock:
            self.closed = True
            self._spare.clear()
            _G.kept.extend(stuck or ())
            for binding in list(self.bindings):
                for name in binding.imports:
                    binding.point(name, _closed(name))
                _G.kept.append(binding)  # its image outlives this host: keep its callbacks

    def errors(self) -> int:
        return sum(b.errors for b in self.bindings)


def _closed(name: str) -> Callable[..., Any]:
    def closed(*args: Any) -> Any:
        raise ClosedError(f"service {name} called after host.close()")

    return closed


def _check_result(name: str, ctype: Any, error: Any) -> None:
    result = ctype.result
    if result.kind == "pointer":
        raise ServiceError(
            f"service {name}: a service cannot return a pointer ({result.cname}): the memory "
            f"would have no owner; return a number or a handle"
        )
    if result.cname == "void":
        return
    try:
        ffi.new(f"{result.cname} *", error)
    except (TypeError, OverflowError) as exc:
        raise ServiceError(
            f"service {name}: error value {error!r} does not fit {result.cname}: {exc}"
        ) from None


def _check_arity(name: str, fn: Callable[..., Any], n: int) -> None:
    """Refuse at ``provide()`` a function that every call would fail with a
    TypeError (each logged, each giving the plugin the error value)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        sig.bind(*range(n))
    except TypeError as exc:
        raise ServiceError(
            f"service {name}: {getattr(fn, '__name__', fn)!s} cannot take the {n} argument(s) "
            f"of its prototype ({exc})"
        ) from None


def standin(name: str, ctype: Any, error: Any) -> Callable[..., Any]:
    """A preflight stand-in: returns the service's error value."""

    def stand_in(*args: Any) -> Any:
        return error

    stand_in.__name__ = f"standin_{name}"
    return stand_in
