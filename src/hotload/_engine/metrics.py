"""Per-version, per-export call figures: what the routers count, and the
plain snapshot ``host.metrics()`` returns.

Both routers count every routed call in its version's gate (``lifecycle.Gate``),
one slot per export: calls and errors by kind exactly (64-bit in C), the calls
inside now, and the latency of every Nth call (``Settings.metrics_sample``) in
a log-linear histogram.  The compiled router does it in ``_crouter.c``; the
Python router (``registry._ROUTER_TEMPLATE``) and the slow path use
``PyStats`` and the gate's ``enter``/``leave`` here.  Nothing is computed per
call beyond the counts: quantiles, sums and Prometheus buckets are worked out
when someone reads them.

The histogram: bucket 0 holds [0, 64 ns); then 8 sub-buckets per power of two
from 2^6 ns to 2^36 ns (~68.7 s), each an eighth of its power wide, so a
quantile is known to within 12.5 %; the last bucket holds 2^36 ns and above.
``_crouter.c`` has the same arithmetic (``hist_bucket``).

A version's figures are its own and stay with it (its gate lives as long as
the version is in the history); a plugin's totals are the sum over its
versions plus what the versions pruned from the history had counted, so no
total goes backwards.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .._errors import (
    PluginCrashedError,
    PluginQuarantinedError,
    PluginStoppedError,
    PluginTimeoutError,
    SignatureError,
)


class Version(Protocol):
    """What this module reads of a ``lifecycle.Version`` (which imports this one)."""

    gate: Any
    slots: dict[str, int]


#: The error kinds, in the order the gates count them (``_crouter.c``'s enum).
ERROR_KINDS = ("argument", "crash", "timeout", "stopped", "other")

SUB_BITS = 3
SUB = 1 << SUB_BITS  # sub-buckets per power of two
MIN_EXP = 6  # 64 ns: the first power with sub-buckets
MAX_EXP = 36  # 2^36 ns (~68.7 s): at or above it, the last bucket
BUCKETS = 2 + (MAX_EXP - MIN_EXP) * SUB

#: The default ``Host(metrics_sample=...)``: the latency of one call in 64 per export is
#: timed.  Two clock reads cost ~40 ns; at 1 in 16 that is ~2.5 ns on a ~100 ns routed call,
#: beside the ~2-3 ns the counts cost: too close to the 5 % budget (bench_metrics measured
#: 1.07x at 16 under load); 1 in 64 keeps the timing under 1 ns a call.  A hot export
#: reaches 100 samples (a p99) within 6,400 calls.
DEFAULT_SAMPLE = 64


def bucket(ns: int) -> int:
    """The histogram bucket of a latency in nanoseconds."""
    if ns < (1 << MIN_EXP):
        return 0
    e = ns.bit_length() - 1
    if e >= MAX_EXP:
        return BUCKETS - 1
    return 1 + (e - MIN_EXP) * SUB + ((ns >> (e - SUB_BITS)) & (SUB - 1))


def _bounds(i: int) -> tuple[int, float]:
    """Bucket ``i`` holds latencies in [lower, upper) nanoseconds."""
    if i == 0:
        return 0, float(1 << MIN_EXP)
    if i == BUCKETS - 1:
        return 1 << MAX_EXP, float("inf")
    e, sub = MIN_EXP + (i - 1) // SUB, (i - 1) % SUB
    return (SUB + sub) << (e - SUB_BITS), float((SUB + sub + 1) << (e - SUB_BITS))


LOWER = tuple(_bounds(i)[0] for i in range(BUCKETS))
UPPER = tuple(_bounds(i)[1] for i in range(BUCKETS))
INF = float("inf")
UPPER_NS = tuple(int(u) if u != float("inf") else None for u in UPPER)  # JSON has no inf


def quantiles(hist: dict[int, int], qs: tuple[float, ...] = (0.5, 0.99)) -> list[float | None]:
    """The ``qs`` quantiles (ascending) of a histogram (bucket -> count, the
    non-empty ones), in microseconds, in one pass, each interpolated within
    its bucket (so exact to within one bucket: 12.5 %); None when it is empty."""
    total = sum(hist.values())
    if not total:
        return [None] * len(qs)
    out: list[float | None] = []
    ranks = [q * total for q in qs]
    seen = 0
    for i in sorted(hist):
        c = hist[i]
        while ranks and seen + c >= ranks[0]:
            lo, hi = LOWER[i], UPPER[i]
            value = lo if hi == INF else lo + (hi - lo) * max(ranks.pop(0) - seen, 0.0) / c
            if hi == INF:
                ranks.pop(0)
            out.append(value / 1000.0)
        seen += c
    out += [LOWER[max(hist)] / 1000.0] * len(ranks)  # only by rounding
    return out


def quantile(hist: dict[int, int], q: float) -> float | None:
    """One quantile of a histogram (see ``quantiles``)."""
    return quantiles(hist, (q,))[0]


# -- the Python router's side ------------------------------------------------------
_KIND_OF: list[tuple[type[BaseException], int]] = [
    (SignatureError, 0),
    (PluginTimeoutError, 2),  # before its base class
    (PluginStoppedError, 3),
    (PluginQuarantinedError, 3),  # refused without reaching a worker, as a stopped one
    (PluginCrashedError, 1),
]


def kind(exc: BaseException) -> int:
    """The error kind of a call that raised ``exc`` (an index of ``ERROR_KINDS``)."""
    for cls, k in _KIND_OF:
        if isinstance(exc, cls):
            return k
    return 4


class PyStats:
    """One export's figures in a version, for the Python router.  ``calls`` is
    an ``itertools.count`` and ``inflight`` a deque, both exact under threads
    (``next()`` and ``append``/``pop`` are atomic under the GIL); the rare
    updates (an error, a sampled latency) take ``lock``."""

    __slots__ = ("calls", "inflight", "errors", "sampled", "sum_ns", "hist", "lock")

    def __init__(self) -> None:
        self.calls = itertools.count()
        self.inflight: deque[None] = deque()
        self.errors = [0] * len(ERROR_KINDS)
        self.sampled = 0
        self.sum_ns = 0
        self.hist = [0] * BUCKETS
        self.lock = threading.Lock()

    def record(self, ns: int) -> None:
        with self.lock:
            self.sampled += 1
            self.sum_ns += ns
            self.hist[bucket(ns)] += 1

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            self.errors[kind(exc)] += 1

    def row(self) -> tuple[Any, ...]:
        """As the compiled gate's ``snapshot()`` gives a slot."""
        calls = int(repr(self.calls)[6:-1])  # "count(N)": N calls so far
        with self.lock:
            hist = tuple((i, c) for i, c in enumerate(self.hist) if c)
            return calls, len(self.inflight), tuple(self.errors), self.sampled, self.sum_ns, hist


def record(s: PyStats, ns: int) -> None:
    """A sampled call's latency (the Python router's closure cell)."""
    s.record(ns)


def failed(s: PyStats, exc: BaseException) -> None:
    """A call that raised (the Python router's closure cell)."""
    s.failed(exc)


# -- reading the figures ------------------------------------------------------------
@dataclass
class ExportFigures:
    """One export's figures in one version (or a sum of them); ``hist`` maps
    a bucket to its count, for the non-empty ones."""

    calls: int = 0
    in_flight: int = 0
    errors: list[int] = field(default_factory=lambda: [0] * len(ERROR_KINDS))
    sampled: int = 0
    sum_ns: int = 0
    hist: dict[int, int] = field(default_factory=dict)

    def add(self, other: ExportFigures) -> None:
        self.calls += other.calls
        self.in_flight += other.in_flight
        self.errors = [a + b for a, b in zip(self.errors, other.errors, strict=True)]
        self.sampled += other.sampled
        self.sum_ns += other.sum_ns
        hist = self.hist
        for i, c in other.hist.items():
            hist[i] = hist.get(i, 0) + c

    def latency(self) -> dict[str, Any]:
        hist = self.hist
        p50, p99 = quantiles(hist)
        return {
            "sampled": self.sampled,
            "sum_ns": self.sum_ns,
            "p50_us": p50,
            "p99_us": p99,
            # [upper bound in ns (None: the last bucket, unbounded), count], ascending
            "buckets": [[UPPER_NS[i], hist[i]] for i in sorted(hist)],
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "in_flight": self.in_flight,
            "errors": dict(zip(ERROR_KINDS, self.errors, strict=True)),
            "latency": self.latency(),
        }


def _figures(row: tuple[Any, ...]) -> ExportFigures:
    calls, inflight, errors, sampled, sum_ns, hist = row
    return ExportFigures(calls, max(inflight, 0), list(errors), sampled, sum_ns, dict(hist))


def exports(version: Version) -> dict[str, ExportFigures]:
    """Each export of ``version`` (the ones its build declares) with its figures."""
    rows = version.gate.snapshot()
    out = {}
    for fname, slot in version.slots.items():
        if slot < len(rows):
            out[fname] = _figures(rows[slot])
    return out


def summary(version: Version) -> ExportFigures:
    """The figures of every export of ``version``, added up."""
    total = ExportFigures()
    for fig in exports(version).values():
        total.add(fig)
    return total


def version_fields(version: Version) -> dict[str, Any]:
    """What ``VersionInfo`` carries of the figures (on every ``versions()`` and
    on the reload path: summed straight from the gate's rows, exports never
    called skipped).  A host that counts nothing (sample 0) knows no errors:
    None, not 0."""
    if not version.gate.sample:
        return {"errors": None, "crashes": None, "timeouts": None, "p50_us": None, "p99_us": None}
    rows = version.gate.snapshot()
    errors = [0] * len(ERROR_KINDS)
    hist: dict[int, int] = {}
    for slot in version.slots.values():
        if slot < len(rows) and rows[slot][0]:
            _, _, errs, _, _, pairs = rows[slot]
            errors = [a + b for a, b in zip(errors, errs, strict=True)]
            for i, c in pairs:
                hist[i] = hist.get(i, 0) + c
    p50, p99 = quantiles(hist)
    return {
        "errors": sum(errors),
        "crashes": errors[1],
        "timeouts": errors[2],
        "p50_us": p50,
        "p99_us": p99,
    }


class Folded:
    """What the versions pruned from a plugin's history had counted: kept so
    that the plugin's totals never go backwards."""

    def __init__(self) -> None:
        self.calls = 0
        self.errors = [0] * len(ERROR_KINDS)

    def fold(self, version: Version) -> None:
        s = summary(version)
        self.calls += s.calls
        self.errors = [a + b for a, b in zip(self.errors, s.errors, strict=True)]


# -- swaps ---------------------------------------------------------------------------
SWAP_OPS = ("load", "reload", "rollback", "unload", "canary", "release")


class SwapCounts:
    """Swaps per plugin, operation and result ("ok" or "refused")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, dict[str, dict[str, int]]] = {}

    def count(self, name: str, op: str, ok: bool) -> None:
        with self._lock:
            ops = self.counts.setdefault(name, {o: {"ok": 0, "refused": 0} for o in SWAP_OPS})
            ops[op]["ok" if ok else "refused"] += 1

    def of(self, name: str) -> dict[str, dict[str, int]]:
        with self._lock:
            ops = self.counts.get(name)
            if ops is None:
                return {o: {"ok": 0, "refused": 0} for o in SWAP_OPS}
            return {o: dict(r) for o, r in ops.items()}


def services(binding: Any) -> dict[str, Any]:
    """The host services a version imports, each with the calls it made of
    it, those that failed (raised, or returned what the C result cannot
    hold), and their sampled latency (``ImportBinding.stats``: a gate's slot
    0, or a ``PyStats``, both giving a snapshot row)."""
    out = {}
    for name, stats in sorted(binding.stats.items()):
        if isinstance(stats, PyStats):
            row = stats.row()
        else:
            rows = stats.snapshot()
            row = rows[0] if rows else (0, 0, (0,) * len(ERROR_KINDS), 0, 0, ())
        fig = _figures(row)
        out[name] = {
            "calls": fig.calls,
            "errors": binding.failures(name),
            "latency": fig.latency(),
        }
    return out


# -- the snapshot ----------------------------------------------------------------------
def version_snapshot(version: Any, leaked_bytes: int = 0) -> dict[str, Any]:
    """One version's part of ``host.metrics()`` (a ``lifecycle.Version``; read
    directly, not through ``VersionInfo``, whose figures it would add up again)."""
    counting = bool(version.gate.sample)  # Host(metrics=False): nothing counted, nothing shown
    figs = exports(version) if counting else {}
    total = ExportFigures()
    for fig in figs.values():
        total.add(fig)
    p50, p99 = quantiles(total.hist)
    img = version.image
    proxy = img.process  # isolated: the worker's figures
    return {
        "seq": version.seq,
        "version": img.version,
        "state": str(version.state),
        "isolated": proxy is not None,
        "pid": proxy.pid if proxy is not None else None,
        "restarts": proxy.restarts if proxy is not None else 0,
        "quarantined": len(proxy.quarantine.refused) if proxy is not None else 0,
        "leaked_bytes": leaked_bytes,
        "service_errors": img.imports.errors if img.imports is not None else 0,
        "services": services(img.imports) if counting and img.imports is not None else {},
        "calls": total.calls if counting else None,
        "in_flight": total.in_flight if counting else None,
        "errors": dict(zip(ERROR_KINDS, total.errors, strict=True)) if counting else None,
        "p50_us": p50,
        "p99_us": p99,
        "exports": {f: fig.as_dict() for f, fig in sorted(figs.items())},
    }


def snapshot(records: Iterable[Any], swaps: SwapCounts, sample: int) -> dict[str, Any]:
    """``host.metrics()``: see ``Host.metrics`` for the shape."""
    plugins: dict[str, Any] = {}
    leaked_images = leaked_bytes = 0
    for rec in sorted(records, key=lambda r: r.name):
        versions = []
        calls, errors, history = rec.counted()
        for v in history:
            stuck = 0
            if str(v.state) in ("leaked", "retained"):  # what the kernel says is still mapped
                stuck = rec.info(v, inspect=False).mapped_bytes
                leaked_images += 1
                leaked_bytes += stuck
            snap = version_snapshot(v, stuck)
            snap.update({"canary": "", "share": None, **rec.canary_fields(v)})
            versions.append(snap)
            if snap["calls"] is not None:
                calls += snap["calls"]
                errors = [a + b for a, b in zip(errors, snap["errors"].values(), strict=True)]
        plugins[rec.name] = {
            "loaded": rec.plugin is not None,
            "calls": calls if sample else None,
            "errors": dict(zip(ERROR_KINDS, errors, strict=True)) if sample else None,
            "swaps": swaps.of(rec.name),
            "pruned_versions": rec.pruned,
            "versions": versions,
        }
    return {
        "taken_at": time.time(),
        "sample": sample,
        "histogram": {
            "unit": "ns",
            "sub_buckets": SUB,
            "first_upper_ns": UPPER_NS[0],
            "last_lower_ns": LOWER[-1],
        },
        "leaked": {"images": leaked_images, "bytes": leaked_bytes},
        "plugins": plugins,
    }


_F = TypeVar("_F", bound=Callable[..., Any])


def counted(op: str) -> Callable[[_F], _F]:
    """Count a swap method of ``Swapper`` in its ``counts`` by its result ("ok"
    or "refused"), for a plugin this host knows (a name never loaded is not
    counted).  The method's first argument is the plugin's name or a
    candidate build (which has a ``name``)."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def run(self: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            name = target if isinstance(target, str) else target.name
            try:
                result = method(self, target, *args, **kwargs)
            except BaseException:
                if self._table.get(name) is not None:
                    self.counts.count(name, op, False)
                raise
            self.counts.count(name, op, True)
            return result

        return run  # type: ignore[return-value]

    return wrap
