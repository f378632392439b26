"""Events: one call on the host, the export of that name in every plugin.

pluggy's hook model, for C plugins: exporting a function named like the
event *is* the subscription, so a plugin never hands the host a function
pointer that could dangle after a swap; ``emit`` calls each plugin through
its router (a swap in the middle of an emit is as safe as any call), in load
order, and returns the results in that order.  Like a pluggy hookspec, an
event's prototype is one for all plugins: ``declare_event`` fixes it, and a
name once emitted is an event too (its prototype is that of the plugins that
export it), so a plugin exporting it with another prototype is refused at
load, naming the plugin (or the declaration) it disagrees with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import cffi

from .._engine.lifecycle import _crouter
from .._engine.registry import Plugin
from .._errors import ClosedError, NotLoadedError, SignatureError
from .structs import canonical

log = logging.getLogger(__name__)


class EventTable:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.declared: dict[str, str] = {}  # name -> canonical prototype
        self.events: set[str] = set()  # declared or emitted names
        self.order: list[str] = []  # plugin names, in load order
        self.cache: dict[str, list[Callable[..., Any]]] = {}

    def declare(self, name: str, prototype: str, plugins: Mapping[str, Plugin]) -> None:
        want = _canonical(prototype, f"declare_event({name!r})", name)
        with self.lock:
            old = self.declared.get(name)
            if old is not None and old != want:
                raise SignatureError(f"event {name} is already declared as {old!r}, not {want!r}")
            for pname, plugin in plugins.items():
                proto = plugin.functions().get(name)
                if proto is not None and _canonical(proto, pname, name) != want:
                    raise SignatureError(
                        f"event {name} cannot be declared as {want!r}: "
                        f"plugin {pname} exports it as {proto!r}"
                    )
            self.declared[name] = want
            self.events.add(name)

    def check(
        self, name: str, source: str, exports: Mapping[str, str], plugins: Mapping[str, Plugin]
    ) -> None:
        """Refuse a build of plugin ``name`` that exports an event with
        another prototype than the declaration or another plugin."""
        for event in self.events.intersection(exports):
            want = self.declared.get(event)
            got = _canonical(exports[event], source, event)
            if want is not None and want != got:
                raise SignatureError(
                    f"{source}: exports event {event} as {got!r} but the host declared it as "
                    f"{want!r}"
                )
            for pname, plugin in plugins.items():
                proto = plugin.functions().get(event) if pname != name else None
                if proto is not None and _canonical(proto, pname, event) != got:
                    raise SignatureError(
                        f"{source}: exports event {event} as {got!r} but plugin {pname} exports "
                        f"it as {proto!r}"
                    )

    def changed(self, loaded: str | None = None, unloaded: str | None = None) -> None:
        """A plugin was loaded, swapped or unloaded: rebuild the call lists."""
        with self.lock:
            if loaded is not None and loaded not in self.order:
                self.order.append(loaded)
            if unloaded is not None and unloaded in self.order:
                self.order.remove(unloaded)
            self.cache = {}

    def routers(self, name: str, plugins: Mapping[str, Plugin]) -> list[Callable[..., Any]]:
        """The routers of ``name`` in load order (cached until a change)."""
        with self.lock:
            found = [(p, plugins[p]) for p in self.order if p in plugins]
            found = [(p, plug) for p, plug in found if name in plug.functions()]
            if name not in self.events:
                if not found and name not in self.declared:
                    log.warning(  # once per name: the name becomes an event now
                        "emit(%r): no loaded plugin exports it and it was never declared "
                        "(a typo? declare_event() names the events you mean)",
                        name,
                    )
                protos = {plug.functions()[name] for _, plug in found}
                kinds = {_canonical(p, name, name) for p in protos}
                if len(kinds) > 1:
                    who = ", ".join(f"{p} ({plug.functions()[name]})" for p, plug in found)
                    raise SignatureError(
                        f"event {name}: the plugins disagree on its prototype: {who}"
                    )
                self.events.add(name)
            routers = [plug[name] for _, plug in found]
            self.cache[name] = routers
            return routers


def emit(routers: list[Callable[..., Any]], args: tuple[Any, ...]) -> list[Any]:
    """Call each router in order; a plugin unloaded during the emit is
    skipped, any other exception stops the emit and propagates.  With the
    compiled router the loop runs in C (``_crouter.call_each``)."""
    if _call_each is not None:
        return _call_each(routers, args, _GONE)
    return _emit_py(routers, args)


def _emit_py(routers: list[Callable[..., Any]], args: tuple[Any, ...]) -> list[Any]:
    """``emit`` as a Python loop: the pure-Python mode's."""
    results = []
    for router in routers:
        try:
            results.append(router(*args))
        except _GONE:
            continue
    return results


_GONE = (ClosedError, NotLoadedError)  # what a router raises for a plugin unloaded meanwhile
_call_each: Callable[..., list[Any]] | None = _crouter.call_each if _crouter else None


def _canonical(prototype: str, where: str, name: str) -> str:
    try:
        return canonical(prototype)
    except (ValueError, TypeError, cffi.CDefError, cffi.FFIError) as exc:
        cause = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SignatureError(
            f"{where}: cannot parse the C signature of {name}: {prototype!r}: {cause}"
        ) from None
