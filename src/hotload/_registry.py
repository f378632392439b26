"""The version registry: route every call to the newest active version and
account for calls in flight, so an old version is closed only when its last
call has returned.

The hot path takes no lock.  Each call appends to its version's ``calls``
deque (an atomic operation under the GIL), re-checks that the version is not
being retired, calls the cffi function pointer, and pops.  The retiring side
sets ``retiring`` and only then looks at ``calls``.  Under the GIL these steps
are sequentially consistent, so either the retirer sees the call, or the call
sees ``retiring`` and re-routes: no call can start in an image being closed.
(Free-threaded CPython builds are not supported: see the README.)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _signatures as signatures
from ._errors import ClosedError, NotLoadedError, SignatureError
from ._loader import Image

ACTIVE, DRAINING, UNLOADED, LEAKED, RETAINED = (
    "active",
    "draining",
    "unloaded",
    "leaked",
    "retained",
)


class Version:
    """One loaded version of a plugin (one image)."""

    __slots__ = (
        "plugin_name",
        "seq",
        "image",
        "fns",
        "table",
        "calls",
        "retiring",
        "state",
        "drained",
        "wake",
        "unloaded_at",
        "mapped_bytes",
        "retired_at",
        "note",
    )

    def __init__(
        self, plugin_name: str, seq: int, image: Image | None, wake: threading.Event
    ) -> None:
        self.plugin_name = plugin_name
        self.seq = seq
        self.image = image
        self.fns: dict[str, Any] = dict(image.functions) if image else {}
        self.table: list[Any] = []  # fns in the plugin's index order: what routers call
        self.calls: deque[None] = deque()
        self.retiring = False
        self.state = ACTIVE
        self.drained = threading.Event()
        self.wake = wake
        self.unloaded_at: float | None = None
        self.retired_at: float | None = None
        self.mapped_bytes = 0
        self.note = ""

    def exited(self) -> None:
        """Slow path of a call leaving a retiring version: wake whoever waits
        for it to drain (the switch that quiesces it, or the reaper)."""
        if not self.calls:
            self.drained.set()
            self.wake.set()

    def drop_functions(self) -> None:
        """Forget the function pointers: the image may be gone after this."""
        self.fns = {}
        self.table = []

    def retire(self) -> None:
        self.drained.clear()
        self.retiring = True
        if self.state == ACTIVE:
            self.state = DRAINING
        self.retired_at = time.time()

    def unretire(self) -> None:
        self.retiring = False
        self.state = ACTIVE
        self.retired_at = None


class _Sentinel:
    """Stands in for a version: during a switch (callers wait) or after the
    plugin is unloaded (callers get ``ClosedError``)."""

    __slots__ = ("calls", "retiring", "fns")

    def __init__(self) -> None:
        self.calls: deque[None] = deque()
        self.retiring = True
        self.fns: dict[str, Any] = {}

    def exited(self) -> None:
        pass


SWITCHING = _Sentinel()
UNLOADED_PLUGIN = _Sentinel()


@dataclass(frozen=True)
class VersionInfo:
    """A snapshot of one version, as ``Host.versions()`` reports it."""

    name: str
    seq: int
    plugin_version: str
    state: str
    in_flight: int
    loaded_at: float
    unloaded_at: float | None
    source: str
    copy: str
    digest: str
    size: int
    dlopen_count: int
    dlclose_count: int
    mapped_bytes: int
    blockers: tuple[str, ...] = field(default=())
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


_ROUTER_TEMPLATE = """\
def make(route, fname, idx, slow, bad_call):
    def _router({params}):
        v = route.current
        calls = v.calls
        calls.append(None)
        if v.retiring:
            calls.pop()
            v.exited()
            return slow(fname, ({params}{comma}))
        try:
            return v.table[idx]({params})
        except (TypeError, OverflowError) as exc:
            raise bad_call(v, fname, exc) from None
        finally:
            calls.pop()
            if v.retiring:
                v.exited()
    return _router
"""


class _Route:
    """Where a plugin's calls go now.  A separate slotted object because a
    class with ``__getattr__`` (``Plugin``) defeats CPython's attribute
    specialisation: reading ``plugin._current`` would cost ~40 ns a call."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: Version | _Sentinel = SWITCHING


class Plugin:
    """The caller's handle: ``plugin.reward(100, 3)`` runs ``reward`` in the
    newest active version.  Exported functions are attributes; one whose
    name clashes with a method here is reachable as ``plugin["name"]``."""

    def __init__(self, name: str, versions_lookup: Callable[[str], list[VersionInfo]]) -> None:
        self._name = name
        self._route = _Route()
        self._switched = threading.Event()
        self._routers: dict[str, Callable[..., Any]] = {}
        self._arity: dict[str, int] = {}
        self._index: dict[
            str, int
        ] = {}  # export name -> slot in every version's table, append-only
        self._versions_lookup = versions_lookup

    @property
    def name(self) -> str:
        """The plugin's name (an export called ``name`` is ``plugin["name"]``)."""
        return self._name

    @property
    def _current(self) -> Version | _Sentinel:
        return self._route.current

    @_current.setter
    def _current(self, version: Version | _Sentinel) -> None:
        self._route.current = version

    # -- calling ---------------------------------------------------------
    def __getitem__(self, fname: str) -> Callable[..., Any]:
        router = self._routers.get(fname)
        if router is None:
            cur = self._current
            if not isinstance(cur, Version):
                raise ClosedError(f"plugin {self.name} is not loaded")
            raise NotLoadedError(
                f"plugin {self.name} (v{cur.seq}) exports no function {fname!r}; "
                f"it exports: {', '.join(sorted(cur.fns)) or 'nothing'}"
            )
        return router

    def __dir__(self) -> list[str]:
        cur = self._current
        return sorted(set(super().__dir__()) | set(getattr(cur, "fns", {})))

    def functions(self) -> dict[str, str]:
        """Exported function -> C prototype, for the current version."""
        cur = self._current
        return dict(cur.image.prototypes) if isinstance(cur, Version) and cur.image else {}

    @contextlib.contextmanager
    def pinned(self) -> Iterator[Any]:
        """Pin the current version for a batch of calls: inside the block,
        ``f.reward(...)`` is a raw cffi call (no routing), and the pinned
        version cannot be unloaded until the block ends."""
        while True:
            v = self._current
            v.calls.append(None)
            if not v.retiring:
                break
            v.calls.pop()
            v.exited()
            self._wait_for_switch(v)
        try:
            yield _Pinned(v)  # type: ignore[arg-type]
        finally:
            v.calls.pop()
            if v.retiring:
                v.exited()

    def versions(self) -> list[VersionInfo]:
        return self._versions_lookup(self.name)

    def __repr__(self) -> str:
        cur = self._current
        seq = f"v{cur.seq}" if isinstance(cur, Version) else "not serving"
        return f"<hotload.Plugin {self.name} {seq}>"

    # -- routing internals ---------------------------------------------------
    def _prepare(self, version: Version) -> Callable[[], None]:
        """Get everything ready for ``version`` to serve without changing
        anything a caller can see: it may raise (a router that cannot be
        built), and then nothing has happened.  Returns the commit step, which
        cannot fail: it sets the version's call table and the attributes.

        Routers are plain instance attributes (``Plugin`` has no
        ``__getattr__``, which would defeat CPython's attribute caching and
        cost ~150 ns per ``plugin.fn`` lookup), and they call through a list
        index (~10 ns cheaper than a dict lookup by name)."""
        assert version.image is not None
        prototypes = version.image.prototypes
        index = dict(self._index)
        for fname in prototypes:
            index.setdefault(fname, len(index))
        table = [version.fns.get(fname) or self._missing(fname, version.seq) for fname in index]
        arity = {f: len(signatures.pointer_type(p).args) for f, p in prototypes.items()}
        routers = {
            f: self._routers[f]
            if f in self._routers and self._arity.get(f) == n
            else self._make_router(f, n, index[f])
            for f, n in arity.items()
        }

        def commit() -> None:
            self._index = index
            version.table = table
            self._arity.update(arity)
            self._routers.update(routers)
            for fname in routers:
                if not hasattr(type(self), fname) and not fname.startswith("_"):
                    self.__dict__[fname] = routers[fname]
            for gone in set(self._routers) - set(prototypes):
                self.__dict__.pop(gone, None)

        return commit

    def _make_router(self, fname: str, arity: int, idx: int) -> Callable[..., Any]:
        """Generate a router with the exact arity (``*args`` costs ~25 ns a
        call); the names it uses are closure cells, as fast as locals."""
        params = ", ".join(f"a{i}" for i in range(arity))
        src = _ROUTER_TEMPLATE.format(params=params, comma="," if arity == 1 else "")
        namespace: dict[str, Any] = {}
        exec(compile(src, f"<hotload router {self.name}.{fname}>", "exec"), namespace)  # noqa: S102
        router = namespace["make"](self._route, fname, idx, self._slow_call, self._bad_call)
        router.__name__, router.__qualname__ = fname, f"{self.name}.{fname}"
        return router

    def _missing(self, fname: str, seq: int) -> Callable[..., Any]:
        def missing(*args: Any) -> Any:
            raise NotLoadedError(f"plugin {self.name} v{seq} no longer exports {fname!r}")

        return missing

    def _slow_call(self, fname: str, args: tuple[Any, ...]) -> Any:
        """A call that met a retiring version: wait out a switch, then route
        to whatever is current now."""
        while True:
            v = self._current
            v.calls.append(None)
            if v.retiring:
                v.calls.pop()
                v.exited()
                self._wait_for_switch(v)
                continue
            try:
                fn = v.fns[fname]
            except KeyError:
                v.calls.pop()
                v.exited()
                raise NotLoadedError(
                    f"plugin {self.name} v{v.seq} no longer exports {fname!r}"
                ) from None
            try:
                return fn(*args)
            except (TypeError, OverflowError) as exc:
                raise self._bad_call(v, fname, exc) from None
            finally:
                v.calls.pop()
                if v.retiring:
                    v.exited()

    def _wait_for_switch(self, seen: Version | _Sentinel) -> None:
        if seen is UNLOADED_PLUGIN:
            raise ClosedError(f"plugin {self.name} has been unloaded")
        if seen is SWITCHING:
            self._switched.wait(1.0)
        # else: a version retired an instant ago; _current already moved on

    def _bad_call(self, v: Version | _Sentinel, fname: str, exc: Exception) -> Exception:
        if fname not in v.fns:
            return NotLoadedError(f"plugin {self.name} no longer exports {fname!r}")
        proto = v.image.prototypes.get(fname, "?") if isinstance(v, Version) and v.image else "?"
        return SignatureError(f"{self.name}.{fname}: bad arguments for {proto}: {exc}")


class _Pinned:
    """The raw cffi functions of one pinned version, as attributes (any
    export name, ``f["name"]`` too); ``_seq`` is the pinned version's seq."""

    def __init__(self, version: Version) -> None:
        self._seq = version.seq
        self.__dict__.update(version.fns)

    def __getitem__(self, fname: str) -> Any:
        return self.__dict__[fname]
