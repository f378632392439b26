"""``host.serve_metrics()``: the host's figures at ``/metrics`` in the
Prometheus text format, through the ``prometheus-client`` library.

A custom collector reads ``host.metrics()`` when a scrape comes in: nothing
runs per call in Python, and a scrape sees every version's counters as they
are at that instant.  The log-linear latency histogram (``_engine/metrics``:
8 buckets per power of two) is reduced to ``LE_BOUNDS``: the histogram's own
bucket edges nearest to 100 ns, 300 ns, 1 us, 3 us ... 1 s, 3 s, 10 s (a
1-3 step in every decade, so a ``histogram_quantile`` interpolated inside one
``le`` bucket is off by at most 3x, in the millisecond range too), and every
cumulative ``le`` count is exact (no bucket is split).

A scrape's cost is per line.  The library's ``generate_latest`` validates
and escapes every label of every line on every scrape, so ``Renderer``
writes the same text (byte for byte: a test compares them) from the same
metric families with each series' label string kept between scrapes (2-3x
faster).  And the lines are kept few: 17 ``le`` bounds; a per-export error
series only for the kinds that happened (the per-plugin
``hotload_plugin_call_errors_total`` has every kind from the start); and a
version that has left memory (``unloaded``) keeps its call and error
counters in the scrape, final, but not its latency histogram and in-flight
gauge, which stopped moving when it stopped serving (its quantiles stay in
``host.metrics()``).

The HTTP side is a small WSGI app (``GET``/``HEAD`` of ``/metrics``, gzip
when asked, as the library's app) on the standard library's threading WSGI
server, with a read timeout per connection (a client that sends nothing is
dropped after ``READ_TIMEOUT`` s) and nothing logged per request.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from .._engine import metrics as figures
from .._errors import HotloadError

if TYPE_CHECKING:
    from .protocols import PluginHost

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0  # seconds a connection may wait for its next bytes
REQUEST_DEADLINE = 15.0  # seconds a connection may last in all (a trickling client: cut)
MAX_CONNECTIONS = 16  # at once; more are closed on arrival


def _cut(request: socket.socket) -> None:
    """A connection past its deadline: shut, so the thread serving it returns."""
    with contextlib.suppress(OSError):
        request.shutdown(socket.SHUT_RDWR)


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

LABELS = ["plugin", "version", "seq", "export"]


def cumulative(buckets: list[list[Any]], total: int) -> list[tuple[str, float]]:
    """``metrics()``'s sparse buckets ([upper_ns or None, count], ascending)
    as Prometheus's cumulative ``le`` buckets at ``LE_BOUNDS``, and +Inf."""
    out: list[tuple[str, float]] = []
    acc, j, n = 0, 0, len(buckets)
    for edge, label in LE_BOUNDS:
        while j < n and buckets[j][0] is not None and buckets[j][0] <= edge:
            acc += buckets[j][1]
            j += 1
        out.append((label, acc))
    out.append(("+Inf", total))
    return out


class HostCollector:
    """A ``prometheus_client`` collector over one host's ``metrics()``."""

    def __init__(self, host: PluginHost) -> None:
        self._host = host

    def collect(self) -> Iterator[Metric]:
        snap = self._host.metrics()
        calls = CounterMetricFamily(
            "hotload_calls", "Routed calls of an export in a version.", labels=LABELS
        )
        errors = CounterMetricFamily(
            "hotload_call_errors",
            "Routed calls that raised, by kind: argument, crash, timeout, stopped, other.",
            labels=[*LABELS, "kind"],
        )
        inflight = GaugeMetricFamily(
            "hotload_calls_in_flight", "Calls inside an export of a version now.", labels=LABELS
        )
        latency = HistogramMetricFamily(
            "hotload_call_duration_seconds",
            f"Latency of the sampled calls (one in {snap['sample'] or '-'} per export).",
            labels=LABELS,
        )
        versions = GaugeMetricFamily(
            "hotload_versions", "A plugin's versions by state.", labels=["plugin", "state"]
        )
        leaked = GaugeMetricFamily(
            "hotload_leaked_images",
            "A plugin's images still in memory after their unload (leaked or retained).",
            labels=["plugin"],
        )
        leaked_bytes = GaugeMetricFamily(
            "hotload_leaked_bytes", "The bytes of those images.", labels=["plugin"]
        )
        swaps = CounterMetricFamily(
            "hotload_swaps",
            "Loads, reloads, rollbacks and unloads by result.",
            labels=["plugin", "op", "result"],
        )
        restarts = CounterMetricFamily(
            "hotload_worker_restarts",
            "Isolated workers restarted after a crash.",
            labels=["plugin", "version", "seq"],
        )
        service_errors = CounterMetricFamily(
            "hotload_service_errors",
            "Host-service calls from a version that raised.",
            labels=["plugin", "version", "seq"],
        )
        svc_labels = ["plugin", "version", "seq", "service"]
        svc_calls = CounterMetricFamily(
            "hotload_service_calls",
            "Host-service calls a version made, by service.",
            labels=svc_labels,
        )
        svc_errors = CounterMetricFamily(
            "hotload_service_call_errors",
            "Host-service calls of a version that raised, by service.",
            labels=svc_labels,
        )
        svc_latency = HistogramMetricFamily(
            "hotload_service_call_duration_seconds",
            f"Latency of the sampled host-service calls (one in {snap['sample'] or '-'}).",
            labels=svc_labels,
        )
        plugin_calls = CounterMetricFamily(
            "hotload_plugin_calls",
            "Routed calls of a plugin, every version it had (never goes back).",
            labels=["plugin"],
        )
        plugin_errors = CounterMetricFamily(
            "hotload_plugin_call_errors",
            "Routed calls of a plugin that raised, every version, by kind.",
            labels=["plugin", "kind"],
        )
        counting = bool(snap["sample"])  # Host(metrics=False): no call series, not zeros
        for name, plugin in snap["plugins"].items():
            if counting:
                plugin_calls.add_metric([name], plugin["calls"])
                for kind, n in plugin["errors"].items():
                    plugin_errors.add_metric([name, kind], n)
            for op, results in plugin["swaps"].items():
                for result, n in results.items():
                    swaps.add_metric([name, op, result], n)
            states: dict[str, int] = dict.fromkeys(
                ("active", "draining", "unloaded", "leaked", "retained"), 0
            )
            stuck = stuck_bytes = 0
            for v in plugin["versions"]:
                states[v["state"]] = states.get(v["state"], 0) + 1
                if v["state"] in ("leaked", "retained"):
                    stuck += 1
                    stuck_bytes += v["leaked_bytes"]
                vlabels = [name, v["version"], str(v["seq"])]
                if counting:
                    service_errors.add_metric(vlabels, v["service_errors"])
                if v["isolated"]:
                    restarts.add_metric(vlabels, v["restarts"])
                if counting:
                    _exports(v, vlabels, calls, errors, inflight, latency)
                    _services(v, vlabels, svc_calls, svc_errors, svc_latency)
            for state, n in states.items():
                versions.add_metric([name, state], n)
            leaked.add_metric([name], stuck)
            leaked_bytes.add_metric([name], stuck_bytes)
        yield from (calls, errors, inflight, latency, versions, leaked, leaked_bytes)
        yield from (swaps, restarts, service_errors, plugin_calls, plugin_errors)
        yield from (svc_calls, svc_errors, svc_latency)


def _exports(
    v: dict[str, Any],
    vlabels: list[str],
    calls: CounterMetricFamily,
    errors: CounterMetricFamily,
    inflight: GaugeMetricFamily,
    latency: HistogramMetricFamily,
) -> None:
    serving = v["state"] != "unloaded"  # what has left memory keeps its counts only
    for fname, e in v["exports"].items():
        labels = [*vlabels, fname]
        calls.add_metric(labels, e["calls"])
        for kind, n in e["errors"].items():
            if n:  # a series from its first error on (the plugin totals have every kind)
                errors.add_metric([*labels, kind], n)
        if not serving:
            continue
        inflight.add_metric(labels, e["in_flight"])
        lat = e["latency"]
        if lat["sampled"]:
            latency.add_metric(
                labels, cumulative(lat["buckets"], lat["sampled"]), lat["sum_ns"] / 1e9
            )


def _services(
    v: dict[str, Any],
    vlabels: list[str],
    calls: CounterMetricFamily,
    errors: CounterMetricFamily,
    latency: HistogramMetricFamily,
) -> None:
    """A version's host-service calls, per service (the histogram while it serves)."""
    for name, svc in v.get("services", {}).items():
        labels = [*vlabels, name]
        calls.add_metric(labels, svc["calls"])
        if svc["errors"]:
            errors.add_metric(labels, svc["errors"])
        lat = svc["latency"]
        if v["state"] != "unloaded" and lat["sampled"]:
            latency.add_metric(
                labels, cumulative(lat["buckets"], lat["sampled"]), lat["sum_ns"] / 1e9
            )


class _Handler(WSGIRequestHandler):
    timeout = READ_TIMEOUT  # socketserver sets it on the connection: a silent client goes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Nothing per request (a scrape every few seconds would flood the log)."""


class _Server(ThreadingMixIn, WSGIServer):
    """At most ``MAX_CONNECTIONS`` at once, each for at most ``REQUEST_DEADLINE``
    seconds: a thread and a descriptor per connection, unbounded, let a local
    user trickle a byte every few seconds on 1,000 connections and take every
    descriptor of the host (its reloads and its own ``open()`` failed with
    EMFILE: the attacker's review).  A connection over the cap is closed at
    once; a scraper tries again at its next interval."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: give the slot back
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        cut = threading.Timer(REQUEST_DEADLINE, _cut, (request,))
        cut.daemon = True
        cut.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            cut.cancel()
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or hung up: not worth a traceback."""
        log.debug("metrics endpoint: a request from %s failed", client_address, exc_info=True)


class Renderer:
    """The Prometheus text format (0.0.4) of a registry, as the library's
    ``generate_latest`` writes it, byte for byte (a test compares them), with
    one difference: each series' label string is built once and kept.  The
    library validates and escapes every label name and value on every line
    of every scrape, ~80 % of a scrape's time (a 13,000-line scrape spent
    ~0.7 s of its 0.9 s there when profiled); the series of a host change only
    when versions come and go.  What is kept is the last scrape's series
    only: a series gone from the host (a version pruned from its history) is
    gone from the cache at the next scrape, so it never outgrows one scrape
    (it grew by ~43 series a reload: the attacker's review)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}

    def render(self) -> bytes:
        out: list[str] = []
        old = self._labels
        kept: dict[tuple[tuple[str, str], ...], str] = {}
        for metric in self.registry.collect():
            name = metric.name + ("_total" if metric.type == "counter" else "")
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            out.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
            for sample in metric.samples:
                key = tuple(sorted(sample.labels.items()))
                labels = kept.get(key)
                if labels is None:
                    labels = kept[key] = old.get(key) or _label_string(key)
                out.append(f"{sample.name}{labels} {floatToGoString(sample.value)}\n")
        self._labels = kept  # one assignment: a scrape running beside it reads either
        return "".join(out).encode("utf-8")


def _label_string(pairs: tuple[tuple[str, str], ...]) -> str:
    """``{name="value",...}`` with the text format's escapes (backslash, newline,
    double quote); label names are hotload's own, all legacy-valid."""
    if not pairs:
        return ""
    body = ",".join(
        '{}="{}"'.format(k, v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\""))
        for k, v in pairs
    )
    return "{" + body + "}"


def _gzip_accepted(header: str) -> bool:
    """``gzip`` among the ``Accept-Encoding`` tokens, unless with ``q=0``
    (a substring test took ``notgzip`` and ``gzip;q=0`` for yes)."""
    for token in header.lower().split(","):
        coding, _, params = token.strip().partition(";")
        if coding.strip() == "gzip":
            q = params.replace(" ", "")
            return not (q.startswith("q=0") and q.rstrip("0.") in ("q=", "q"))
    return False


def _app(renderer: Renderer) -> Callable[..., Iterable[bytes]]:
    """``GET /metrics`` (and ``/``): the scrape, gzipped when the scraper
    accepts it, as the library's app does; any other path 404, method 405."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if environ.get("PATH_INFO") not in ("/metrics", "/"):
            start_response("404 Not Found", text)
            return [b"hotload serves /metrics only\n"]
        if environ.get("REQUEST_METHOD") != "GET":
            start_response("405 Method Not Allowed", [*text, ("Allow", "GET")])
            return [b"GET only\n"]
        body = renderer.render()
        headers = [("Content-Type", CONTENT_TYPE_LATEST)]
        if _gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return serve


class MetricsServer:
    """The ``/metrics`` endpoint of one host, on its own thread; a ``Service``
    (``stop()`` when the host closes)."""

    def __init__(self, host: PluginHost, *, port: int = 0, addr: str = "127.0.0.1") -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise HotloadError(f"serve_metrics: port must be an int in 0..65535, not {port!r}")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HostCollector(host))
        app = _app(Renderer(self.registry))
        try:
            family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
        except (socket.gaierror, UnicodeError) as exc:
            raise HotloadError(f"serve_metrics: cannot resolve {addr!r}: {exc}") from None

        class Server(_Server):
            address_family = family

        try:
            self._httpd = make_server(addr, port, app, Server, handler_class=_Handler)
        except OSError as exc:
            why = (
                "the port is already in use"
                if exc.errno == errno.EADDRINUSE
                else (exc.strerror or str(exc))
            )
            raise HotloadError(f"serve_metrics: cannot listen on {addr}:{port}: {why}") from None
        host_part = f"[{addr}]" if family == socket.AF_INET6 else addr
        self.asked = (addr, port)  # what the caller asked for (port 0: any)
        self.url = f"http://{host_part}:{self._httpd.server_port}/metrics"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="hotload-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("serving metrics at %s", self.url)

    def same(self, addr: str, port: int) -> str:
        """The URL, for a second ``serve_metrics(addr, port)`` that asks for
        this server (or any port); one that asks for another address or port
        is refused rather than leave a scraper pointed at a port nobody serves."""
        if (addr, port) != self.asked and not (port == 0 and addr == self.asked[0]):
            raise HotloadError(
                f"serve_metrics: already serving at {self.url}; this host serves one "
                f"endpoint (close the host to move it)"
            )
        return self.url

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)

    def __repr__(self) -> str:
        return f"<hotload metrics server {self.url}>"
