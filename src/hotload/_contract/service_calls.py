"""How a host calls a provided function for a plugin: ``fn`` behind a
wrapper of the exact arity (no ``*args`` packing on the call path) that
converts ``char *`` arguments, or that counts and times the calls when the
compiled meter is not there."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from .._artifact.signatures import ffi
from .._engine.metrics import PyStats
from .._engine.native import crouter as _crouter


def adapt(fn: Callable[..., Any], ctype: Any) -> Callable[..., Any]:
    """``fn`` itself, or ``fn`` behind a wrapper of the exact arity that turns
    each ``char *`` argument into ``str`` (None for NULL)."""
    strings = [
        i for i, a in enumerate(ctype.args) if a.kind == "pointer" and a.item.cname == "char"
    ]
    if not strings:
        return fn
    params = ", ".join(f"a{i}" for i in range(len(ctype.args)))
    args = ", ".join(f"_s(a{i})" if i in strings else f"a{i}" for i in range(len(ctype.args)))
    src = f"def adapted({params}):\n    return fn({args})\n"
    namespace: dict[str, Any] = {"fn": fn, "_s": string}
    exec(compile(src, "<hotload service>", "exec"), namespace)  # noqa: S102
    adapted: Callable[..., Any] = namespace["adapted"]
    return adapted


def measured(fn: Callable[..., Any], ctype: Any, box: list[Any], sample: int) -> Callable[..., Any]:
    """Without the compiled router: ``fn`` behind a wrapper of the exact
    arity (no ``*args`` packing) that counts each call on ``box[0]`` (a
    ``PyStats``) and times one in ``sample``, at random."""
    params = ", ".join(f"a{i}" for i in range(len(ctype.args)))
    src = (
        f"def measured({params}):\n"
        f"    stats = box[0]\n"
        f"    next(stats.calls)\n"
        f"    if rand() * sample >= 1.0:  # timed at no fixed phase (_crouter.c)\n"
        f"        return fn({params})\n"
        f"    t0 = clock()\n"
        f"    try:\n"
        f"        return fn({params})\n"
        f"    finally:\n"
        f"        stats.record(clock() - t0)\n"
    )
    namespace: dict[str, Any] = {
        "fn": fn,
        "box": box,
        "sample": sample,
        "next": next,
        "rand": random.random,
        "clock": time.perf_counter_ns,
    }
    exec(compile(src, "<hotload service metrics>", "exec"), namespace)  # noqa: S102
    measured: Callable[..., Any] = namespace["measured"]
    return measured


def service_stats(sample: int) -> Any:
    """Where one image counts its calls of one service: slot 0 of a compiled
    ``Gate`` (what a ``Meter`` counts in), else a ``PyStats``."""
    if _crouter is not None:
        gate = _crouter.Gate(None, sample=sample)
        if sample:
            gate.grow(1)
        return gate
    return PyStats()


def string(ptr: Any) -> str | None:
    return None if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "surrogateescape")
