"""The two routers (compiled ``_crouter.Router`` and the generated Python
function) on the same gates, driven directly: same accounting, same slow
path, same errors.  Table entries are plain Python callables here, as the
isolated plugins' IPC callables will be: a router calls whatever sits in the
table."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload import Host, SignatureError
from hotload._engine import lifecycle as _version
from hotload._engine import metrics
from hotload._engine import registry as _registry
from hotload._engine.lifecycle import PyGate

HAVE_EXT = importlib.util.find_spec("hotload._engine._crouter") is not None
if HAVE_EXT:
    from hotload._engine import _crouter

MakeRouter = Callable[..., Any]
IMPLS = [
    "python",
    pytest.param("compiled", marks=pytest.mark.skipif(not HAVE_EXT, reason="no ext")),
]


class Impl:
    """One router implementation: its gate and route types, and a factory."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "compiled":
            self.Gate: Any = _crouter.Gate
            self.Route: Any = _crouter.Route
        else:
            self.Gate, self.Route = PyGate, _registry.PyRoute

    def router(self, route: Any, fname: str, idx: int, arity: int, slow: Any, bad_call: Any) -> Any:
        if self.kind == "compiled":
            return _crouter.Router(route, fname, idx, arity, slow, bad_call, f"p.{fname}")
        params = ", ".join(f"a{i}" for i in range(arity))
        src = _registry._ROUTER_TEMPLATE.format(params=params, comma="," if arity == 1 else "")
        ns: dict[str, Any] = {}
        exec(src, ns)  # noqa: S102 - the registry's own template
        return ns["make"](
            route,
            fname,
            idx,
            slow,
            bad_call,
            time.perf_counter_ns,
            metrics.record,
            metrics.failed,
            random.random,
        )


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Impl:
    return Impl(request.param)


class Owner:
    """Stands in for a Version: what the slow path and bad_call look at."""

    def __init__(self, fns: dict[str, Any]) -> None:
        self.fns = fns


def _gate(impl: Impl, fns: dict[str, Any]) -> Any:
    g = impl.Gate(Owner(fns), threading.Event(), threading.Event())
    g.table = list(fns.values())
    return g


def test_a_call_is_counted_in_while_it_runs_and_out_after(impl: Impl) -> None:
    seen: list[int] = []

    def add(a: int, b: int) -> int:
        seen.append(len(route.gate))
        return a + b

    g = _gate(impl, {"add": add})
    route = impl.Route(g)
    r = impl.router(route, "add", 0, 2, None, None)
    assert r(2, 3) == 5 and r(4, 5) == 9
    assert seen == [1, 1] and len(g) == 0 and not g and g.served == 2


def test_an_exception_from_the_callee_passes_through_and_the_call_leaves(impl: Impl) -> None:
    def boom(a: int) -> int:
        raise RuntimeError(f"boom {a}")

    g = _gate(impl, {"boom": boom})
    r = impl.router(impl.Route(g), "boom", 0, 1, None, None)
    with pytest.raises(RuntimeError, match="boom 7"):
        r(7)
    assert len(g) == 0


ARGUMENT_ERRORS = [TypeError, OverflowError, ValueError, KeyError, IndexError]


@pytest.mark.parametrize("error", ARGUMENT_ERRORS)
def test_argument_errors_go_to_bad_call_which_raises_from_none(impl: Impl, error: type) -> None:
    """What cffi raises for an argument it refuses goes to ``bad_call`` (with
    the arguments, the call still counted in), whose exception is the call's."""

    def bad(a: Any) -> Any:
        raise error("wrong")

    got: list[tuple[Any, str, str, tuple[Any, ...], int]] = []

    def bad_call(v: Any, fname: str, exc: Exception, args: tuple[Any, ...]) -> Any:
        got.append((v, fname, type(exc).__name__, args, len(g)))
        raise SignatureError(f"p.{fname}: bad arguments: {exc}") from None

    g = _gate(impl, {"f": bad})
    r = impl.router(impl.Route(g), "f", 0, 1, None, bad_call)
    with pytest.raises(SignatureError, match="p.f: bad arguments: .*wrong") as info:
        r(1)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert got == [(g.owner, "f", error.__name__, (1,), 1)] and len(g) == 0


def test_bad_call_may_convert_and_call_again(impl: Impl) -> None:
    """The one rule's conversions (a str for a const char *...) run in
    ``bad_call``, which returns the result of the call it makes again."""

    def takes_bytes(s: Any) -> int:
        if not isinstance(s, bytes):
            raise TypeError("bytes please")
        return len(s)

    def bad_call(v: Any, fname: str, exc: Exception, args: tuple[Any, ...]) -> Any:
        assert len(g) == 1  # still counted in: the version cannot close under the retry
        return takes_bytes(args[0].encode())

    g = _gate(impl, {"f": takes_bytes})
    r = impl.router(impl.Route(g), "f", 0, 1, None, bad_call)
    assert r("abc") == 3 and r(b"ab") == 2
    assert len(g) == 0 and g.served == 2


def test_a_retiring_gate_sends_the_call_to_the_slow_path(impl: Impl) -> None:
    g = _gate(impl, {"f": lambda a, b: pytest.fail("called a retiring version")})
    g.retiring = True
    slow_calls: list[tuple[str, tuple[Any, ...]]] = []

    def slow(fname: str, args: tuple[Any, ...]) -> str:
        assert len(g) == 0  # counted out before the slow path runs
        slow_calls.append((fname, args))
        return "rerouted"

    r = impl.router(impl.Route(g), "f", 0, 2, slow, None)
    assert r(1, "x") == "rerouted"
    assert slow_calls == [("f", (1, "x"))] and g.served == 0
    assert g.drained.is_set() and g.wake.is_set()  # the empty retiring gate woke them


def test_the_last_call_leaving_a_retiring_gate_wakes_the_reaper(impl: Impl) -> None:
    """Two calls inside; the version retires; only the second exit wakes."""
    inside, release = threading.Barrier(3), threading.Event()

    def work(a: int) -> int:
        inside.wait(5)
        release.wait(5)
        return a

    g = _gate(impl, {"work": work})
    r = impl.router(impl.Route(g), "work", 0, 1, None, None)
    threads = [threading.Thread(target=r, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    inside.wait(5)
    assert len(g) == 2
    g.retiring = True
    g.drained.clear()
    release.set()
    assert g.drained.wait(5) and g.wake.is_set()
    for t in threads:
        t.join(5)
    assert len(g) == 0


def test_an_export_beyond_the_current_table_takes_the_slow_path(impl: Impl) -> None:
    """A router committed for a new export while the old version still
    serves (commit runs before publish) never indexes past its table."""
    g = _gate(impl, {"old": lambda: 1})
    r = impl.router(impl.Route(g), "new", 5, 0, lambda f, a: ("slow", f, a), None)
    assert r() == ("slow", "new", ())
    assert len(g) == 0 and g.served == 0

    def index_error() -> None:
        raise IndexError("from the callee")

    def bad_call(v: Any, fname: str, exc: Exception, args: tuple[Any, ...]) -> Any:
        raise exc  # not an argument error after all: the callee's, as it is

    g.table = [index_error] * 6
    r = impl.router(impl.Route(g), "new", 5, 0, lambda f, a: ("slow", f, a), bad_call)
    with pytest.raises(IndexError, match="from the callee"):
        r()
    assert len(g) == 0


def test_wrong_arity_and_keywords_are_type_errors(impl: Impl) -> None:
    g = _gate(impl, {"f": lambda a, b: a})
    r = impl.router(impl.Route(g), "f", 0, 2, None, None)
    with pytest.raises(TypeError, match="positional argument"):
        r(1)
    with pytest.raises(TypeError, match="positional argument"):
        r(1, 2, 3)
    with pytest.raises(TypeError):
        r(1, b=2)
    assert len(g) == 0 and g.served == 0


def test_no_call_runs_in_a_gate_after_it_drained(impl: Impl) -> None:
    """Four threads call while the main thread switches gates 300 times the
    way the host does (publish the new gate, retire the old, wait until it is
    empty, then "close" it): a call that runs in a closed gate is a failure."""
    closed: set[int] = set()
    problems: list[str] = []

    def make_gate(n: int) -> Any:
        def fn(a: int) -> int:
            if n in closed:
                problems.append(f"call ran in closed gate {n}")
            time.sleep(0)  # let another thread run mid-call
            return n

        return _gate(impl, {"fn": fn})

    def slow(fname: str, args: tuple[Any, ...]) -> int:
        while True:  # the registry's slow path, minus the switch gate
            g = route.gate
            g.append(None)
            if g.retiring:
                g.pop()
                g.exited()
                continue
            try:
                return g.table[0](*args)  # type: ignore[no-any-return]
            finally:
                g.pop()
                if g.retiring:
                    g.exited()

    route = impl.Route(make_gate(0))
    r = impl.router(route, "fn", 0, 1, slow, None)
    stop = threading.Event()
    seen = [0] * 4

    def caller(i: int) -> None:
        while not stop.is_set():
            r(i)
            seen[i] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 301):
            old = route.gate
            route.gate = make_gate(n)
            old.drained.clear()
            old.retiring = True
            if old and not old.drained.wait(5):
                problems.append(f"gate {n - 1} never drained ({len(old)} inside)")
            assert not old or problems
            closed.add(n - 1)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not problems
    assert min(seen) > 0


@pytest.mark.skipif(not HAVE_EXT, reason="the compiled router is not built")
def test_compiled_types_refuse_bad_values() -> None:
    g = _crouter.Gate(None)
    with pytest.raises(TypeError):
        _crouter.Route(g=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _crouter.Route(1)  # type: ignore[arg-type]
    route = _crouter.Route(g)
    with pytest.raises(TypeError):
        route.gate = None  # type: ignore[assignment]
    with pytest.raises(TypeError):
        g.table = (1, 2)  # type: ignore[assignment]
    with pytest.raises(IndexError):
        g.pop()
    with pytest.raises(AttributeError):
        del g.retiring
    with pytest.raises(ValueError):
        _crouter.Router(route, "f", -1, 0, None, None, "p.f")
    with pytest.raises(TypeError):
        _crouter.Router(g, "f", 0, 0, None, None, "p.f")  # type: ignore[arg-type]
    r = _crouter.Router(route, "f", 0, 0, None, None, "p.f")
    assert repr(r) == "<hotload router p.f>" and r.__name__ == "f" and r.arity == 0


@pytest.mark.skipif(not HAVE_EXT, reason="the compiled router is not built")
def test_call_each_calls_every_callable_in_order_and_stops_at_an_error() -> None:
    order: list[int] = []

    def f(i: int) -> Callable[[int, int], int]:
        def g(a: int, b: int) -> int:
            order.append(i)
            if i == 2:
                raise ValueError("third")
            return a + b + i

        return g

    assert _crouter.call_each([f(0), f(1)], (10, 20)) == [30, 31]
    with pytest.raises(ValueError, match="third"):
        _crouter.call_each([f(0), f(1), f(2), f(3)], (1, 1))
    assert order == [0, 1, 0, 1, 2]
    with pytest.raises(TypeError):
        _crouter.call_each([f(0)], [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _crouter.call_each(5, ())  # type: ignore[arg-type]


@pytest.mark.skipif(not HAVE_EXT, reason="the compiled router is not built")
def test_call_each_leaves_out_the_calls_whose_exception_matches_skip() -> None:
    order: list[int] = []

    def f(i: int, exc: type[BaseException] | None = None) -> Callable[[int], int]:
        def g(a: int) -> int:
            order.append(i)
            if exc is not None:
                raise exc(f"call {i}")
            return a + i

        return g

    calls = [f(0, KeyError), f(1), f(2, LookupError), f(3), f(4, KeyError)]
    with pytest.raises(LookupError, match="call 2"):  # KeyError skipped, LookupError stops
        _crouter.call_each(calls, (10,), KeyError)
    assert order == [0, 1, 2]
    order.clear()
    assert _crouter.call_each(calls, (10,), (KeyError, LookupError)) == [11, 13]
    assert order == [0, 1, 2, 3, 4]
    assert _crouter.call_each([f(0, KeyError)] * 3, (1,), (KeyError,)) == []
    assert _crouter.call_each(calls[1::2], (1,), None) == [2, 4]
    with pytest.raises(KeyError):
        _crouter.call_each(calls, (1,), None)
    with pytest.raises(TypeError):  # skip must be an exception class or a tuple of them
        _crouter.call_each(calls, (1,), 5)


def test_routers_of_a_loaded_plugin_are_of_the_active_kind(host: Host, cc: Any) -> None:
    p = host.load(
        cc(
            '#include <hotload.h>\nHOTLOAD_PLUGIN("k", "1");\n'
            "HOTLOAD_API int add(int a, int b) { return a + b; }\n"
            "HOTLOAD_EXPORT(add, int, (int, int));\n",
            name="k",
        )
    )
    compiled = type(p.add).__name__ == "Router"
    assert compiled == (_version.ROUTER == "compiled")
    assert p.add(2, 3) == 5 and p.versions()[0].served == 1
    with pytest.raises(SignatureError, match=r"k.add: bad arguments for int\(int, int\)"):
        p.add("x", 1)
    with pytest.raises(SignatureError, match="k.add: bad arguments"):
        p.add(2**40, 1)


def _router_in_subprocess(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "HOTLOAD_PURE_PYTHON"}
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", "from hotload._engine.lifecycle import ROUTER; print(ROUTER)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return proc.stdout.strip()


def test_the_router_is_compiled_when_built_and_pure_python_on_request() -> None:
    assert _router_in_subprocess({}) == ("compiled" if HAVE_EXT else "python")
    assert _router_in_subprocess({"HOTLOAD_PURE_PYTHON": "1"}) == "python"
    assert _router_in_subprocess({"HOTLOAD_PURE_PYTHON": "0"}) == (
        "compiled" if HAVE_EXT else "python"
    )


def test_hotload_version_names_the_router() -> None:
    exe = Path(sys.executable).parent / "hotload"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hotload._cli.main"]
    out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"router: {_version.ROUTER}" in out.stdout
