"""What ``/metrics`` says: the host's figures as Prometheus metric families,
walked once from ``host.metrics()`` and written two ways.

``walk`` is the one statement of which series exist and what they hold.
``HostCollector`` feeds it into the ``prometheus-client`` library's metric
families (a collector for any ``CollectorRegistry``; the library's
``generate_latest`` of it is the reference text).  ``Renderer`` writes the
same walk straight to the text format, byte for byte what ``generate_latest``
writes (a test compares them, escapes included): the library builds a
``Sample`` per line and validates and escapes every label of every line on
every scrape, ~85 % of a 13,000-line scrape when profiled; the series of a
host change only when versions come and go, so the renderer keeps each
series' line prefixes from the last scrape and formats the numbers alone.

The log-linear latency histogram (``_engine/metrics``: 8 buckets per power
of two) is reduced to ``LE_BOUNDS``: the histogram's own bucket edges
nearest to 100 ns, 300 ns, 1 us, 3 us ... 1 s, 3 s, 10 s (a 1-3 step in
every decade, so a ``histogram_quantile`` interpolated inside one ``le``
bucket is off by at most 3x, in the millisecond range too), and every
cumulative ``le`` count is exact (no bucket is split).  A scrape's cost is
per line, so the lines are kept few: 17 ``le`` bounds; a per-export error
series only for the kinds that happened (the per-plugin
``hotload_plugin_call_errors_total`` has every kind from the start); and a
version that has left memory (``unloaded``) keeps its call and error
counters, final, but not its latency histogram and in-flight gauge, which
stopped moving when it stopped serving (its quantiles stay in
``host.metrics()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .._engine import metrics as figures

if TYPE_CHECKING:
    from .protocols import PluginHost


def _le_bounds() -> tuple[tuple[int, str], ...]:
    """(edge in ns, its ``le`` label in seconds) for 100 ns, 300 ns, 1 us, 3 us
    ... 1 s, 3 s, 10 s: each the histogram bucket edge nearest to that value
    (17 bounds and +Inf: a scrape's cost is its lines, see the module doc; a
    1-3 step keeps ``histogram_quantile`` within 3x of the truth everywhere,
    where a 1-10 step above 1 ms overstated a 1 ms export ~5x)."""
    edges = [int(u) for u in figures.UPPER if u != float("inf")]
    nominal = [m * 10**e for e in range(2, 10) for m in (1, 3)] + [10**10]
    out = []
    for v in nominal:
        edge = min(edges, key=lambda x: (abs(x - v), x))
        out.append((edge, floatToGoString(edge / 1e9)))
    return tuple(out)


#: The ``le`` boundaries of hotload_call_duration_seconds: (edge in ns, label).
LE_BOUNDS = _le_bounds()
_LE_EDGES = tuple(edge for edge, _ in LE_BOUNDS)
_LE_LABELS = (*(label for _, label in LE_BOUNDS), "+Inf")


def cumulative_counts(buckets: list[list[Any]], total: int) -> list[int]:
    """``metrics()``'s sparse buckets ([upper_ns or None, count], ascending)
    as Prometheus's cumulative counts at ``LE_BOUNDS``, and +Inf."""
    out: list[int] = []
    acc, j, n = 0, 0, len(buckets)
    for edge in _LE_EDGES:
        while j < n and buckets[j][0] is not None and buckets[j][0] <= edge:
            acc += buckets[j][1]
            j += 1
        out.append(acc)
    out.append(total)
    return out


@dataclass(frozen=True, eq=False)
class Family:
    """One metric family of the scrape (``help`` may name ``{sample}``); each
    is a module constant, compared and hashed by identity (a scrape hashes
    one per line)."""

    name: str
    type: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...]

    def doc(self, sample: int) -> str:
        return self.help.format(sample=sample or "-")

    @property
    def exposed(self) -> str:
        """The name in the text format (a counter's carries ``_total``)."""
        return self.name + ("_total" if self.type == "counter" else "")


_EXPORT = ("plugin", "version", "seq", "export")
_VERSION = ("plugin", "version", "seq")
_SERVICE = ("plugin", "version", "seq", "service")

CALLS = Family("hotload_calls", "counter", "Routed calls of an export in a version.", _EXPORT)
ERRORS = Family(
    "hotload_call_errors",
    "counter",
    "Routed calls that raised, by kind: argument, crash, timeout, stopped, other.",
    (*_EXPORT, "kind"),
)
IN_FLIGHT = Family(
    "hotload_calls_in_flight", "gauge", "Calls inside an export of a version now.", _EXPORT
)
LATENCY = Family(
    "hotload_call_duration_seconds",
    "histogram",
    "Latency of the sampled calls (one in {sample} per export).",
    _EXPORT,
)
VERSIONS = Family("hotload_versions", "gauge", "A plugin's versions by state.", ("plugin", "state"))
LEAKED = Family(
    "hotload_leaked_images",
    "gauge",
    "A plugin's images still in memory after their unload (leaked or retained).",
    ("plugin",),
)
LEAKED_BYTES = Family("hotload_leaked_bytes", "gauge", "The bytes of those images.", ("plugin",))
SWAPS = Family(
    "hotload_swaps",
    "counter",
    "Loads, reloads, rollbacks and unloads by result.",
    ("plugin", "op", "result"),
)
RESTARTS = Family(
    "hotload_worker_restarts", "counter", "Isolated workers restarted after a crash.", _VERSION
)
QUARANTINED = Family(
    "hotload_quarantined_inputs",
    "gauge",
    "Inputs an isolated version refuses after they crashed its worker.",
    _VERSION,
)
CANARY_SHARE = Family(
    "hotload_canary_share",
    "gauge",
    "While a canary runs: the share of keys whose calls go to each side (role candidate or "
    "baseline).",
    (*_VERSION, "role"),
)
SERVICE_ERRORS = Family(
    "hotload_service_errors", "counter", "Host-service calls from a version that raised.", _VERSION
)
PLUGIN_CALLS = Family(
    "hotload_plugin_calls",
    "counter",
    "Routed calls of a plugin, every version it had (never goes back).",
    ("plugin",),
)
PLUGIN_ERRORS = Family(
    "hotload_plugin_call_errors",
    "counter",
    "Routed calls of a plugin that raised, every version, by kind.",
    ("plugin", "kind"),
)
SVC_CALLS = Family(
    "hotload_service_calls", "counter", "Host-service calls a version made, by service.", _SERVICE
)
SVC_ERRORS = Family(
    "hotload_service_call_errors",
    "counter",
    "Host-service calls of a version that raised, by service.",
    _SERVICE,
)
SVC_LATENCY = Family(
    "hotload_service_call_duration_seconds",
    "histogram",
    "Latency of the sampled host-service calls (one in {sample}).",
    _SERVICE,
)

#: Every family, in the order of the scrape.
FAMILIES = (
    CALLS,
    ERRORS,
    IN_FLIGHT,
    LATENCY,
    VERSIONS,
    LEAKED,
    LEAKED_BYTES,
    SWAPS,
    RESTARTS,
    QUARANTINED,
    CANARY_SHARE,
    SERVICE_ERRORS,
    PLUGIN_CALLS,
    PLUGIN_ERRORS,
    SVC_CALLS,
    SVC_ERRORS,
    SVC_LATENCY,
)
_INDEX = {f: i for i, f in enumerate(FAMILIES)}

#: One series: its family, label values, and value (a histogram's: its
#: cumulative counts at LE_BOUNDS and +Inf, and its sum in seconds).
Series = tuple[Family, tuple[str, ...], Any]


def walk(snap: dict[str, Any]) -> Iterator[Series]:
    """Every series of a ``host.metrics()`` snapshot, each family's in the
    order the scrape lists them."""
    counting = bool(snap["sample"])  # Host(metrics=False): no call series, not zeros
    for name, plugin in snap["plugins"].items():
        if counting:
            yield PLUGIN_CALLS, (name,), plugin["calls"]
            for kind, n in plugin["errors"].items():
                yield PLUGIN_ERRORS, (name, kind), n
        for op, results in plugin["swaps"].items():
            for result, n in results.items():
                yield SWAPS, (name, op, result), n
        states: dict[str, int] = dict.fromkeys(
            ("active", "draining", "unloaded", "leaked", "retained"), 0
        )
        stuck = stuck_bytes = 0
        for v in plugin["versions"]:
            states[v["state"]] = states.get(v["state"], 0) + 1
            if v["state"] in ("leaked", "retained"):
                stuck += 1
                stuck_bytes += v["leaked_bytes"]
            vlabels = (name, v["version"], str(v["seq"]))
            if counting:
                yield SERVICE_ERRORS, vlabels, v["service_errors"]
            if v["isolated"]:
                yield RESTARTS, vlabels, v["restarts"]
                if v["state"] != "unloaded":  # a gauge: gone with the version
                    yield QUARANTINED, vlabels, v.get("quarantined", 0)
            if v.get("canary"):
                yield CANARY_SHARE, (*vlabels, v["canary"]), v["share"]
            if counting:
                yield from _exports(v, vlabels)
                yield from _services(v, vlabels)
        for state, n in states.items():
            yield VERSIONS, (name, state), n
        yield LEAKED, (name,), stuck
        yield LEAKED_BYTES, (name,), stuck_bytes


def _histogram(lat: dict[str, Any]) -> tuple[list[int], float]:
    return cumulative_counts(lat["buckets"], lat["sampled"]), lat["sum_ns"] / 1e9


def _exports(v: dict[str, Any], vlabels: tuple[str, ...]) -> Iterator[Series]:
    serving = v["state"] != "unloaded"  # what has left memory keeps its counts only
    for fname, e in v["exports"].items():
        labels = (*vlabels, fname)
        yield CALLS, labels, e["calls"]
        for kind, n in e["errors"].items():
            if n:  # a series from its first error on (the plugin totals have every kind)
                yield ERRORS, (*labels, kind), n
        if serving:
            yield IN_FLIGHT, labels, e["in_flight"]
            if e["latency"]["sampled"]:
                yield LATENCY, labels, _histogram(e["latency"])


def _services(v: dict[str, Any], vlabels: tuple[str, ...]) -> Iterator[Series]:
    """A version's host-service calls, per service (the histogram while it serves)."""
    for name, svc in v.get("services", {}).items():
        labels = (*vlabels, name)
        yield SVC_CALLS, labels, svc["calls"]
        if svc["errors"]:
            yield SVC_ERRORS, labels, svc["errors"]
        if v["state"] != "unloaded" and svc["latency"]["sampled"]:
            yield SVC_LATENCY, labels, _histogram(svc["latency"])


_LIBRARY = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
}


class HostCollector:
    """A ``prometheus_client`` collector over one host's ``metrics()``: register
    it in a ``CollectorRegistry`` to serve the host's figures from an
    application's own endpoint."""

    def __init__(self, host: PluginHost) -> None:
        self._host = host

    def collect(self) -> Iterator[Metric]:
        snap = self._host.metrics()
        out = [
            _LIBRARY[f.type](f.name, f.doc(snap["sample"]), labels=list(f.labels)) for f in FAMILIES
        ]
        for family, labels, value in walk(snap):
            metric = out[_INDEX[family]]
            if family.type == "histogram":
                counts, seconds = value
                buckets = list(zip(_LE_LABELS, counts, strict=True))
                metric.add_metric(list(labels), buckets, seconds)
            else:
                metric.add_metric(list(labels), value)
        yield from out


class Renderer:
    """The text format (0.0.4) of one host's figures, as ``generate_latest``
    of a ``HostCollector`` writes it, byte for byte (a test compares them),
    each series' line prefixes (name and escaped labels) built once and kept
    between scrapes.  What is kept is the last scrape's series only: a series
    gone from the host (a version pruned from its history) is gone from the
    cache at the next scrape, so it never outgrows one scrape (it grew by ~43
    series a reload: the attacker's review)."""

    def __init__(self, host: PluginHost) -> None:
        self._host = host
        self._prefixes: dict[tuple[Family, tuple[str, ...]], tuple[str, ...]] = {}

    def render(self) -> bytes:
        return self.text(self._host.metrics()).encode("utf-8")

    def text(self, snap: dict[str, Any]) -> str:
        """The scrape of one snapshot."""
        lines: list[list[str]] = [[] for _ in FAMILIES]
        old = self._prefixes
        kept: dict[tuple[Family, tuple[str, ...]], tuple[str, ...]] = {}
        for family, labels, value in walk(snap):
            key = (family, labels)
            pre = old.get(key) or _prefixes(family, labels)
            kept[key] = pre
            out = lines[_INDEX[family]]
            if family.type == "histogram":
                counts, seconds = value
                out += [f"{p}{_number(c)}\n" for p, c in zip(pre, counts, strict=False)]
                out.append(f"{pre[-2]}{_number(counts[-1])}\n{pre[-1]}{floatToGoString(seconds)}\n")
            else:
                out.append(f"{pre[0]}{_number(value)}\n")
        self._prefixes = kept  # one assignment: a scrape running beside it reads either
        head = [
            f"# HELP {f.exposed} {_help(f.doc(snap['sample']))}\n# TYPE {f.exposed} {f.type}\n"
            for f in FAMILIES
        ]
        return "".join(h + "".join(body) for h, body in zip(head, lines, strict=True))


def _number(value: float) -> str:
    """``floatToGoString``, with the common case (a count under a million,
    where it is Python's own ``repr`` of the float) taken first."""
    if isinstance(value, int) and 0 <= value < 1_000_000:
        return f"{value}.0"
    return str(floatToGoString(value))


def _help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


def _prefixes(family: Family, values: tuple[str, ...]) -> tuple[str, ...]:
    """``name{labels} `` for each line of a series: one for a counter or a
    gauge; for a histogram one per ``le`` bound, then ``_count`` and ``_sum``
    (labels sorted by name, as the library writes them)."""
    pairs = list(zip(family.labels, values, strict=True))
    if family.type != "histogram":
        return (f"{family.exposed}{_label_string(pairs)} ",)
    buckets = tuple(
        f"{family.name}_bucket{_label_string([*pairs, ('le', le)])} " for le in _LE_LABELS
    )
    plain = _label_string(pairs)
    return (*buckets, f"{family.name}_count{plain} ", f"{family.name}_sum{plain} ")


def _label_string(pairs: list[tuple[str, str]]) -> str:
    """``{name="value",...}`` sorted by name, with the text format's escapes
    (backslash, newline, double quote); label names are hotload's own, all
    legacy-valid."""
    if not pairs:
        return ""
    body = ",".join(
        '{}="{}"'.format(k, v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\""))
        for k, v in sorted(pairs)
    )
    return "{" + body + "}"
