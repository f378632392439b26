"""The version registry: route every call to the newest active version and
account for calls in flight, so an old version is closed only when its last
call has returned.

The hot path takes no lock.  Each call counts itself into its version's gate
(``gate.append``: atomic under the GIL), re-checks that the version is not
being retired, calls the version's function, and counts itself out.  The
retiring side sets ``retiring`` and only then looks at the count.  Under the
GIL these steps are sequentially consistent, so either the retirer sees the
call, or the call sees ``retiring`` and re-routes: no call can start in an
image being closed.  (Free-threaded CPython builds are not supported: see the
docs.)

Two routers do this, one per export: the compiled ``_crouter.Router`` (see
``_crouter.c``) when the extension was built, else one generated Python
function per export (``_ROUTER_TEMPLATE``); ``_version.ROUTER`` says which.
Both share the gate (``_version.Gate``) and the slow path here.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._artifact import arguments, signatures
from .._contract.structs import plain
from .._errors import (
    ClosedError,
    HotloadError,
    NotLoadedError,
    SignatureError,
    TypeLayoutError,
)
from . import metrics
from .lifecycle import SWITCHING, UNLOADED_PLUGIN, Sentinel, Version, VersionInfo
from .lifecycle import _crouter as _native
from .split import PyRoute

# The router's body, once plain and once behind the recorder's test (host.record):
# a recorded call runs the plain body through the recorder.
_ROUTER_BODY = """\
        g = route.gate if route.canary is None else route.pick({params})
        g.append(None)
        if g.retiring:
            g.pop()
            g.exited()
            return slow(fname, ({params}{comma}))
        try:
            s = g.stats[idx]
        except IndexError:
            if idx < len(g.table):  # a table without figures (set without grow())
                s = None
            else:  # an export newer than this version: committed, not published yet
                g.pop()
                if g.retiring:
                    g.exited()
                return slow(fname, ({params}{comma}))
        g.served += 1
        if s is None:  # metrics off
            try:
                return g.table[idx]({params})
            except (TypeError, OverflowError, ValueError, KeyError, IndexError) as exc:
                return bad_call(g.owner, fname, exc, ({params}{comma}))
            finally:
                g.pop()
                if g.retiring:
                    g.exited()
        next(s.calls)
        t0 = clock() if rand() * g.sample < 1.0 else 0  # at no fixed phase (_crouter.c)
        s.inflight.append(None)
        try:
            try:
                return g.table[idx]({params})
            except (TypeError, OverflowError, ValueError, KeyError, IndexError) as exc:
                return bad_call(g.owner, fname, exc, ({params}{comma}))
        except BaseException as exc:
            failed(s, exc)
            raise
        finally:
            s.inflight.pop()
            if t0:
                record(s, clock() - t0)
            g.pop()
            if g.retiring:
                g.exited()
"""

_ROUTER_TEMPLATE = (
    """\
def make(route, fname, idx, slow, bad_call, clock, record, failed, rand):
    def _plain({params}):
"""
    + _ROUTER_BODY
    + """\
    def _router({params}):
        if route.recorder is not None:
            return route.recorder.through(_plain, idx, ({params}{comma}))
"""
    + _ROUTER_BODY
    + """\
    return _router
"""
)


_Route: Any = _native.Route if _native is not None else PyRoute


@dataclass(frozen=True, eq=False)
class _Shape:
    """The routing of one export set: a reload of a build exporting the same
    functions reuses it whole, and only the call table is new."""

    prototypes: dict[str, str]
    index: dict[str, int]  # export -> slot (every export ever seen: append-only)
    arity: dict[str, int]
    routers: dict[str, Callable[..., Any]]
    attrs: tuple[str, ...]  # the routers that are attributes of the plugin
    gone: tuple[str, ...]  # exports of earlier sets that are not attributes any more


class Plugin:
    """The caller's handle: ``plugin.reward(100, 3)`` runs ``reward`` in the
    newest active version.

    Every exported function is an attribute, whatever its name (``close``,
    ``versions``, ``new``...): an export wins over the method of the same
    name, which stays reachable through the class (``Plugin.new(p, ...)``).
    ``plugin["name"]`` reaches any export too.  What the host knows about the
    plugin (its name, versions, the version serving) is on the host:
    ``host.current(name)``, ``host.versions(name)``."""

    if TYPE_CHECKING:

        def __getattr__(self, fname: str) -> Callable[..., Any]:
            """Exports are attributes (set per version, not looked up here)."""

    def __init__(self, name: str, infos: Callable[[], list[VersionInfo]]) -> None:
        self._name = name
        self._route = _Route(SWITCHING.gate)
        self._switched = threading.Event()
        self._routers: dict[str, Callable[..., Any]] = {}
        self._arity: dict[str, int] = {}
        self._index: dict[str, int] = {}  # export -> slot in every version's table, append-only
        self._shape: _Shape | None = None  # the export set of the last commit
        self._infos = infos

    def _version(self) -> Version | None:
        """The version new calls go to (None while switching or unloaded)."""
        cur = self._current
        return cur if isinstance(cur, Version) else None

    @property
    def _current(self) -> Version | Sentinel:
        return self._route.gate.owner  # type: ignore[no-any-return]

    # -- calling ---------------------------------------------------------
    def __getitem__(self, fname: str) -> Callable[..., Any]:
        router = self._routers.get(fname)
        if router is None:
            cur = self._current
            if not isinstance(cur, Version):
                raise ClosedError(f"plugin {self._name} is not loaded")
            raise NotLoadedError(
                f"plugin {self._name} (v{cur.seq}) exports no function {fname!r}; "
                f"it exports: {', '.join(sorted(cur.fns)) or 'nothing'}"
            )
        return router

    def __dir__(self) -> list[str]:
        cur = self._current
        return sorted(set(super().__dir__()) | set(getattr(cur, "fns", {})))

    def functions(self) -> dict[str, str]:
        """Exported function -> C prototype, for the current version."""
        cur = self._current
        if not isinstance(cur, Version) or not cur.image:
            return {}
        return {f: plain(p) for f, p in cur.image.prototypes.items()}

    @contextlib.contextmanager
    def pinned(self) -> Iterator[Any]:
        """Pin the current version for a batch of calls: inside the block,
        ``f.reward(...)`` is a raw cffi call (no routing), and the pinned
        version cannot be unloaded until the block ends."""
        while True:
            g = self._route.gate
            g.append(None)
            if not g.retiring:
                break
            g.pop()
            g.exited()
            self._wait_for_switch(g.owner)
        try:
            yield _Pinned(g.owner)
        finally:
            g.pop()
            if g.retiring:
                g.exited()

    def new(self, type_name: str, **fields: Any) -> Any:
        """A new, zeroed ``type_name *`` of a struct the current version declares
        (``HOTLOAD_STRUCT``), with ``fields`` set: ``p.new("player_t", id=1)``."""
        cur = self._current
        if cur is UNLOADED_PLUGIN:
            raise ClosedError(f"plugin {self._name} has been unloaded (or its host closed)")
        types = cur.image.types if isinstance(cur, Version) else None
        if types is None:
            raise TypeLayoutError(f"plugin {self._name} declares no types")
        return types.new(type_name, fields)

    def versions(self) -> list[VersionInfo]:
        """This plugin's versions, as ``Host.versions(name)`` reports them."""
        return self._infos()

    def __repr__(self) -> str:
        cur = self._current
        seq = f"v{cur.seq}" if isinstance(cur, Version) else "not serving"
        return f"<hotload.Plugin {self._name} {seq}>"

    # -- switching (the swap's; private, so no export name can clash) ----------
    def _hold(self) -> None:
        """Make new calls wait at the gate (a stateful switch is under way)."""
        self._switched.clear()
        self._route.gate = SWITCHING.gate

    def _publish(self, version: Version) -> None:
        """Route new calls to ``version`` and release any caller at the gate."""
        self._route.gate = version.gate
        self._switched.set()

    def _split(self, version: Version, threshold: int, key: int, keyfn: Any) -> None:
        """Send the calls whose key hashes below ``threshold`` to ``version``
        (a canary's candidate; ``split.py``), every other call where they went."""
        self._route.split(version.gate, threshold, key, keyfn)

    def _unsplit(self) -> None:
        """End a canary's split: every call to the current version."""
        self._route.unsplit()

    def _promote(self) -> None:
        """The canary's candidate becomes the current version, in one step."""
        self._route.promote()

    def _record(self, recorder: Any) -> None:
        """Keep every call in ``recorder`` (None: stop recording)."""
        self._route.recorder = recorder

    def _export_names(self) -> dict[int, str]:
        """Slot -> export, for reading a recording."""
        return {i: f for f, i in self._index.items()}

    def _close(self) -> Version | None:
        """Stop serving: later calls raise ``ClosedError``.  Returns the
        version that was current, for the caller to retire."""
        cur = self._version()
        self._route.gate = UNLOADED_PLUGIN.gate
        self._switched.set()
        return cur

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
        shape = self._shape
        if shape is None or shape.prototypes != version.image.prototypes:
            shape = self._shape_of(version.image.prototypes)  # may raise: nothing changed yet
        index, routers, fns = shape.index, shape.routers, version.fns
        protos = version.image.prototypes if version.image.process is None else {}
        table = [
            _checked(fns[fname], protos.get(fname))
            if fname in fns
            else self._missing(fname, version.seq)
            for fname in index
        ]
        slots = {fname: index[fname] for fname in fns}

        def commit() -> None:
            version.slots = slots
            version.table = table
            if shape is not self._shape:
                self._index = index
                self._arity.update(shape.arity)
                self._routers.update(routers)
                self._shape = shape
            attrs = self.__dict__
            for fname in shape.attrs:
                attrs[fname] = routers[fname]
            for gone in shape.gone:
                attrs.pop(gone, None)

        return commit

    def _shape_of(self, prototypes: dict[str, str]) -> _Shape:
        """What a version exporting ``prototypes`` needs besides its call
        table (worked out once per export set, not per reload)."""
        index = dict(self._index)
        for fname in prototypes:
            index.setdefault(fname, len(index))
        arity = {f: len(signatures.pointer_type(p).args) for f, p in prototypes.items()}
        routers = {
            f: self._routers[f]
            if f in self._routers and self._arity.get(f) == n
            else self._make_router(f, n, index[f])
            for f, n in arity.items()
        }
        attrs = tuple(f for f in routers if not f.startswith("_"))  # exports win over methods
        gone = tuple(set(self._routers) - set(prototypes))
        return _Shape(dict(prototypes), index, arity, routers, attrs, gone)

    def _make_router(self, fname: str, arity: int, idx: int) -> Callable[..., Any]:
        """A compiled router if the extension is there; else generate a
        Python one with the exact arity (``*args`` costs ~25 ns a call); the
        names it uses are closure cells, as fast as locals."""
        if _native is not None:
            return _native.Router(  # type: ignore[no-any-return]
                self._route,
                fname,
                idx,
                arity,
                self._slow_call,
                self._bad_call,
                f"{self._name}.{fname}",
            )
        params = ", ".join(f"a{i}" for i in range(arity))
        src = _ROUTER_TEMPLATE.format(params=params, comma="," if arity == 1 else "")
        namespace: dict[str, Any] = {}
        exec(compile(src, f"<hotload router {self._name}.{fname}>", "exec"), namespace)  # noqa: S102
        router: Callable[..., Any] = namespace["make"](
            self._route,
            fname,
            idx,
            self._slow_call,
            self._bad_call,
            time.perf_counter_ns,
            metrics.record,
            metrics.failed,
            random.random,
        )
        router.__name__, router.__qualname__ = fname, f"{self._name}.{fname}"
        return router

    def _missing(self, fname: str, seq: int) -> Callable[..., Any]:
        def missing(*args: Any) -> Any:
            raise NotLoadedError(f"plugin {self._name} v{seq} no longer exports {fname!r}")

        return missing

    def _slow_call(self, fname: str, args: tuple[Any, ...]) -> Any:
        """A call that met a retiring version: wait out a switch, then route
        to whatever is current now."""
        while True:
            g = self._route.gate
            g.append(None)
            if g.retiring:
                g.pop()
                g.exited()
                self._wait_for_switch(g.owner)
                continue
            v = g.owner
            if fname not in v.fns:
                g.pop()
                g.exited()
                raise NotLoadedError(f"plugin {self._name} v{v.seq} no longer exports {fname!r}")
            idx = self._index[fname]
            fn = v.table[idx]  # its checks too (_checked), as a router calls it
            t0, raised = g.enter(idx), None  # counted on v, as a routed call
            try:
                try:
                    return fn(*args)
                except _ARGUMENT_ERRORS as exc:
                    return self._bad_call(v, fname, exc, args)
            except BaseException as exc:
                raised = exc
                raise
            finally:
                g.leave(idx, t0, raised)
                g.pop()
                if g.retiring:
                    g.exited()

    def _wait_for_switch(self, seen: Version | Sentinel) -> None:
        if seen is UNLOADED_PLUGIN:
            raise ClosedError(f"plugin {self._name} has been unloaded (or its host closed)")
        if seen is SWITCHING:
            self._switched.wait(1.0)
        # else: a version retired an instant ago; _current already moved on

    def _bad_call(
        self, v: Version | Sentinel, fname: str, exc: Exception, args: tuple[Any, ...]
    ) -> Any:
        """cffi refused an argument of a call still counted in ``v``: convert
        the arguments by the one rule (``_artifact.arguments``: a ``str`` for a
        ``const char *``, a buffer object for a ``T *``...) and call again,
        or raise the ``SignatureError`` that says why.  An isolated version's
        forwarder applies the same rule itself (``_process.wire``)."""
        if isinstance(exc, HotloadError) and not isinstance(exc, SignatureError):
            raise exc  # hotload's own (NotLoadedError is a KeyError): not an argument
        if fname not in v.fns:
            raise NotLoadedError(f"plugin {self._name} no longer exports {fname!r}") from None
        image = v.image if isinstance(v, Version) else None
        proto = image.prototypes.get(fname, "?") if image is not None else "?"
        if image is not None and image.process is not None:  # isolated: its forwarder's error
            if not isinstance(exc, (TypeError, OverflowError)):  # not an argument it refused
                raise exc
        elif image is not None and proto != "?":
            try:
                converted = arguments.rules(proto).convert(args)
            except _ARGUMENT_ERRORS as why:  # a struct initializer's unknown field: KeyError
                raise self._refused(fname, proto, why) from None
            if converted is not None:
                new_args, after = converted
                try:
                    result = v.fns[fname](*new_args)
                except _ARGUMENT_ERRORS as why:
                    raise self._refused(fname, proto, why) from None
                after()
                return result
        raise self._refused(fname, proto, exc) from None

    def _refused(self, fname: str, proto: str, exc: BaseException) -> SignatureError:
        why = plain(str(exc) if not isinstance(exc, KeyError) else f"no field {exc}")
        if "must be a cdata pointer" in why:
            why += ' (make one with plugin.new("type_name", field=value, ...))'
        return SignatureError(f"{self._name}.{fname}: bad arguments for {plain(proto)}: {why}")


#: What cffi raises for an argument it refuses (a KeyError: a struct initializer's unknown
#: field; an IndexError or a ValueError: too many initializers)
_ARGUMENT_ERRORS = (TypeError, OverflowError, ValueError, KeyError, IndexError)

_Checked: Any = _native.Checked if _native is not None else arguments.checked


def _checked(fn: Callable[..., Any], proto: str | None) -> Callable[..., Any]:
    """An in-process export as its version's call table holds it: the cffi
    function itself, or (for an export with a float, a ``const char *`` or a
    buffer the callee writes) the function behind the checks cffi does not
    make (``arguments.Rules.checks``)."""
    if proto is None:
        return fn
    checks = arguments.rules(proto).checks
    return _Checked(fn, checks) if checks else fn


class _Pinned:
    """The raw cffi functions of one pinned version, as attributes (any
    export name, ``f["name"]`` too); ``_seq`` is the pinned version's seq."""

    def __init__(self, version: Version) -> None:
        self._seq = version.seq
        self.__dict__.update(version.fns)

    def __getitem__(self, fname: str) -> Any:
        return self.__dict__[fname]
