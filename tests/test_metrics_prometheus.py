"""host.serve_metrics(): the Prometheus endpoint (issue 21 item 2), read the
way Prometheus reads it (``prometheus_client.parser``), and fed bad input:
a busy port, garbage on the socket, a silent client, a reload storm."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hotload import Host, HotloadError, SignatureError
from hotload._ops import metrics_exposition, metrics_server

from conftest import Compile, wait_for

SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("gauge", "VERSION");
HOTLOAD_API int32_t clamp(int32_t x) { return x > 100 ? 100 : x; }
HOTLOAD_EXPORT(clamp, int32_t, (int32_t));
HOTLOAD_API int64_t twice(int64_t x) { return 2 * x; }
HOTLOAD_EXPORT(twice, int64_t, (int64_t));
"""


@pytest.fixture
def gauge(cc: Compile, tmp_path: Path):  # type: ignore[no-untyped-def]
    target = tmp_path / "build" / "gauge.so"

    def make(version: str = "1.0.0") -> Path:
        return cc(SRC.replace("VERSION", version), "gauge", out=target)

    return make


def scrape(url: str) -> dict[str, Any]:
    """The families of one scrape, by name, each a {(sample name, labels): value}."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def lab(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_the_endpoint_has_the_right_series_and_values(tmp_path: Path, gauge) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False, metrics_sample=1) as host:
        p = host.load(gauge())
        for i in range(7):
            p.clamp(i)
        with pytest.raises(SignatureError):
            p.clamp(2**40)
        host.reload("gauge", gauge("2.0.0"))
        for i in range(3):
            p.twice(i)
        url = host.serve_metrics()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        fams = scrape(url)

        v1 = dict(plugin="gauge", version="1.0.0", seq="1")
        v2 = dict(plugin="gauge", version="2.0.0", seq="2")
        calls = fams["hotload_calls"]
        assert calls[("hotload_calls_total", lab(**v1, export="clamp"))] == 8
        assert calls[("hotload_calls_total", lab(**v1, export="twice"))] == 0
        assert calls[("hotload_calls_total", lab(**v2, export="twice"))] == 3
        errors = fams["hotload_call_errors"]
        assert errors == {
            ("hotload_call_errors_total", lab(**v1, export="clamp", kind="argument")): 1
        }
        assert (
            fams["hotload_calls_in_flight"][("hotload_calls_in_flight", lab(**v2, export="twice"))]
            == 0
        )

        hist = fams["hotload_call_duration_seconds"]
        labels = lab(**v2, export="twice")
        count = hist[("hotload_call_duration_seconds_count", labels)]
        assert count == 3  # every call sampled (metrics_sample=1)
        assert hist[("hotload_call_duration_seconds_sum", labels)] > 0
        buckets = sorted(
            (float(dict(k[1])["le"]), v)
            for k, v in hist.items()
            if k[0].endswith("_bucket") and k[1] == lab(**v2, export="twice", le=dict(k[1])["le"])
        )
        assert len(buckets) == len(metrics_exposition.LE_BOUNDS) + 1
        assert buckets[-1] == (float("inf"), 3)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))
        assert [le for le, _ in buckets[:-1]] == [
            float(label) for _, label in metrics_exposition.LE_BOUNDS
        ]

        plugin = fams["hotload_plugin_calls"]
        assert plugin[("hotload_plugin_calls_total", lab(plugin="gauge"))] == 11
        perr = fams["hotload_plugin_call_errors"]
        assert perr[("hotload_plugin_call_errors_total", lab(plugin="gauge", kind="argument"))] == 1
        assert perr[("hotload_plugin_call_errors_total", lab(plugin="gauge", kind="crash"))] == 0
        swaps = fams["hotload_swaps"]
        assert swaps[("hotload_swaps_total", lab(plugin="gauge", op="load", result="ok"))] == 1
        assert swaps[("hotload_swaps_total", lab(plugin="gauge", op="reload", result="ok"))] == 1
        host.settle()  # v1 leaves memory: its counters stay, final; its histogram goes
        after = scrape(url)
        assert after["hotload_calls"][("hotload_calls_total", lab(**v1, export="clamp"))] == 8
        assert not [k for k in after["hotload_call_duration_seconds"] if dict(k[1])["seq"] == "1"]
        assert [k for k in after["hotload_call_duration_seconds"] if dict(k[1])["seq"] == "2"]
        states = after["hotload_versions"]
        assert states[("hotload_versions", lab(plugin="gauge", state="active"))] == 1
        assert states[("hotload_versions", lab(plugin="gauge", state="unloaded"))] == 1
        leaked = scrape(url)["hotload_leaked_bytes"]
        assert leaked[("hotload_leaked_bytes", lab(plugin="gauge"))] == 0
        assert host.serve_metrics() == url  # one server per host


def test_a_scrape_during_a_reload_storm_never_fails_nor_goes_back(tmp_path: Path, gauge) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False, history_limit=3) as host:
        p = host.load(gauge())
        url = host.serve_metrics()
        stop = threading.Event()
        problems: list[str] = []
        scrapes = [0]

        def caller() -> None:
            while not stop.is_set():
                p.twice(1)

        def scraper() -> None:
            seen: dict[Any, float] = {}
            while not stop.is_set():
                try:
                    fams = scrape(url)
                except Exception as exc:  # noqa: BLE001 - collected for the assertion
                    problems.append(f"scrape failed: {exc!r}")
                    return
                scrapes[0] += 1
                for name in ("hotload_calls", "hotload_plugin_calls", "hotload_swaps"):
                    for key, value in fams[name].items():
                        if value < seen.get(key, 0):
                            problems.append(f"{key} went from {seen[key]} to {value}")
                        seen[key] = value

        threads = [threading.Thread(target=caller), threading.Thread(target=scraper)]
        for t in threads:
            t.start()
        try:
            for k in range(30):
                host.reload("gauge", gauge(f"1.{k + 1}.0"))
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not problems, problems[:5]
        assert scrapes[0] >= 1


def test_a_port_in_use_is_named_in_the_error(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        with Host(tmp_path / "work", preflight=False) as host:
            with pytest.raises(
                HotloadError, match=rf"127\.0\.0\.1:{port}: the port is already in use"
            ):
                host.serve_metrics(port=port)
            url = host.serve_metrics()  # the host is fine, and another port works
            assert scrape(url) is not None
    finally:
        busy.close()


def test_a_bad_port_or_address_is_refused(tmp_path: Path) -> None:
    with Host(tmp_path / "work", preflight=False) as host:
        for port in (-1, 70000, "80", True):
            with pytest.raises(HotloadError, match="port"):
                host.serve_metrics(port=port)  # type: ignore[arg-type]
        with pytest.raises(HotloadError, match=r"192\.0\.2\.1:0"):  # not this machine's
            host.serve_metrics(addr="192.0.2.1")


def _exchange(url: str, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send raw bytes to the endpoint and read until it closes (bounded)."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        s.settimeout(timeout)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


def test_garbage_on_the_socket_gets_an_error_and_the_endpoint_serves_on(
    tmp_path: Path, gauge
) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False) as host:
        host.load(gauge())
        url = host.serve_metrics()
        assert b" 400 " in _exchange(url, b"\x00\xff\xfe GARBAGE\r\n\r\n")
        assert b" 400 " in _exchange(url, b"GET /metrics HTTP/9.9\r\n\r\n") or b" 505 " in (
            _exchange(url, b"GET /metrics HTTP/9.9\r\n\r\n")
        )
        assert b" 414 " in _exchange(url, b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n")
        assert b" 404 " in _exchange(url, b"GET /secret HTTP/1.0\r\n\r\n")
        assert b" 405 " in _exchange(url, b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        assert b" 405 " in _exchange(url, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        for accept, gzipped in (("notgzip, identity", False), ("gzip;q=0", False), ("GZIP", True)):
            req = urllib.request.Request(url, headers={"Accept-Encoding": accept})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert (resp.headers["Content-Encoding"] == "gzip") is gzipped, accept
        assert "hotload_calls" in scrape(url)


def test_a_silent_client_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_server._Handler, "timeout", 0.5)
    with Host(tmp_path / "work", preflight=False) as host:
        url = host.serve_metrics()
        assert _exchange(url, b"") == b""  # nothing sent: the server closes (else a timeout)
        assert "hotload_calls" in scrape(url)


def test_close_stops_the_endpoint(tmp_path: Path) -> None:
    host = Host(tmp_path / "work", preflight=False)
    url = host.serve_metrics()
    scrape(url)
    host.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=10)


def test_the_documented_dashboard_is_valid_and_queries_real_metrics() -> None:
    """The Grafana dashboard the Observability page links to: valid JSON, and
    every metric its queries name is one the endpoint serves."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    dashboard = json.loads((docs / "grafana/hotload-dashboard.json").read_text())
    page = (docs / "guide/observability.md").read_text()
    assert "(../grafana/hotload-dashboard.json)" in page
    served = {
        "hotload_calls_total",
        "hotload_call_errors_total",
        "hotload_calls_in_flight",
        "hotload_call_duration_seconds_bucket",
        "hotload_plugin_calls_total",
        "hotload_plugin_call_errors_total",
        "hotload_versions",
        "hotload_leaked_images",
        "hotload_leaked_bytes",
        "hotload_swaps_total",
        "hotload_worker_restarts_total",
        "hotload_service_errors_total",
    }
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    assert len(exprs) >= 10
    for expr in exprs:
        named = set(re.findall(r"\bhotload_[a-z_]+", expr))
        assert named and named <= served, (expr, named - served)


def test_a_second_call_returns_the_same_endpoint_or_says_it_cannot_move(tmp_path: Path) -> None:
    with Host(tmp_path / "work", preflight=False) as host:
        url = host.serve_metrics()
        assert host.serve_metrics() == url
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(HotloadError, match=rf"already serving at {re.escape(url)}"):
            host.serve_metrics(port=port + 1 if port < 65535 else port - 1)
        with pytest.raises(HotloadError, match="already serving"):
            host.serve_metrics(addr="::1")
        assert scrape(url) is not None  # the first one serves on


SLOW_SRC = r"""
#define _DEFAULT_SOURCE
#include <hotload.h>
#include <time.h>
HOTLOAD_PLUGIN("slow", "1.0.0");
HOTLOAD_API int32_t wait_us(int32_t us)
{
    struct timespec t = {0, (long)us * 1000};
    nanosleep(&t, NULL);
    return us;
}
HOTLOAD_EXPORT(wait_us, int32_t, (int32_t));
"""


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile``: the rank's bucket, interpolated linearly."""
    total = buckets[-1][1]
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    raise AssertionError("rank beyond +Inf")


def test_the_le_bounds_keep_a_millisecond_quantile_within_3x(tmp_path: Path, cc: Compile) -> None:
    """A 1-10 step above 1 ms made Grafana overstate a 1.2 ms export's p50 ~5x
    (new-user review); a 1-3 step in every decade keeps it within 3x."""
    edges = [edge for edge, _ in metrics_exposition.LE_BOUNDS]
    assert edges[0] <= 100 and edges[-1] >= 9 * 10**9
    assert max(b / a for a, b in zip(edges, edges[1:], strict=False)) < 3.7
    lib = cc(SLOW_SRC, "slow")
    with Host(tmp_path / "work", preflight=False, metrics_sample=1) as host:
        slow = host.load(lib)
        for _ in range(20):
            slow.wait_us(1200)
        fams = scrape(host.serve_metrics())
    hist = fams["hotload_call_duration_seconds"]
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in hist.items()
        if name.endswith("_bucket") and dict(labels)["export"] == "wait_us"
    )
    p50 = histogram_quantile(0.5, buckets)
    assert 0.0012 <= p50 <= 0.0012 * 3, f"histogram_quantile(0.5) = {p50 * 1e3:.2f} ms"


ACTIVITY = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("activity", "1.0.0");
HOTLOAD_IMPORT(grant_item, int32_t, (int64_t));
HOTLOAD_API int32_t login(int64_t player) { return grant_item(player); }
HOTLOAD_EXPORT(login, int32_t, (int64_t));
"""


def library_text(host: Host) -> bytes:
    """What ``prometheus_client.generate_latest`` writes for the host's collector."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(host.metrics_collector())
    return generate_latest(registry)


def test_an_application_serves_the_hosts_series_from_its_own_registry(
    tmp_path: Path, gauge
) -> None:  # type: ignore[no-untyped-def]
    """``host.metrics_collector()`` beside the application's own metrics, in
    the registry its own endpoint serves: a scraper parses both."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    logins = Counter("game_logins", "Logins.", registry=registry)
    with Host(tmp_path / "work", preflight=False, metrics_sample=1) as host:
        p = host.load(gauge())
        registry.register(host.metrics_collector())
        for i in range(5):
            p.clamp(i)
            logins.inc()
        host.reload("gauge", gauge("2.0.0"))
        p.clamp(1)
        fams = {
            f.name: f.samples
            for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
    assert [s.value for s in fams["game_logins"] if s.name == "game_logins_total"] == [5.0]
    calls = {(s.labels["seq"], s.labels["export"]): s.value for s in fams["hotload_calls"]}
    assert calls[("1", "clamp")] == 5 and calls[("2", "clamp")] == 1


@pytest.mark.parametrize("counting", [True, False], ids=["metrics", "metrics-off"])
def test_the_endpoint_writes_the_librarys_text_byte_for_byte(
    tmp_path: Path, gauge, cc: Compile, counting: bool
) -> None:  # type: ignore[no-untyped-def]
    """The endpoint writes the text format itself, keeping each series' line
    prefixes between scrapes (the library builds and escapes every line on
    every scrape: ~85 % of a scrape); what it serves must be exactly what
    ``generate_latest`` writes of ``HostCollector``: escapes, counts past a
    million, isolated versions, services (one raising), versions gone from
    memory, before and after the series change, and with metrics off."""

    def grant(player: int) -> int:
        if player < 0:
            raise ValueError("no such player")
        return 1

    odd = SRC.replace('"gauge"', '"odd"').replace("VERSION", 'v\\"1\\\\x')  # " and \ in a label
    with Host(tmp_path / "work", preflight=False, metrics=counting, metrics_sample=1) as host:
        host.provide("grant_item", grant, "int32_t(int64_t)", error=-1)
        g = host.load(gauge())
        o = host.load(cc(odd, "odd"))
        a = host.load(cc(ACTIVITY, "activity"), isolate=True)
        url = host.serve_metrics()
        renderer = metrics_exposition.Renderer(host)
        twice = g.twice
        for i in range(1_000_001):
            twice(i)
        for step in range(3):
            for i in range(20):
                g.clamp(i)
                o.twice(i)
                a.login(i - 3)
            with pytest.raises(SignatureError):
                g.clamp(2**40)
            if step:
                host.reload("gauge", gauge(f"1.{step}.0"))
            host.settle()
            # counters may move between the two renderings: compare while nothing calls
            assert renderer.render() == library_text(host), step
        text = renderer.render().decode()
        assert ('version="v\\"1\\\\x"' in text) is counting  # off: no per-version series
        assert ('hotload_service_call_errors_total{plugin="activity"' in text) is counting
        assert ("e+06" in text) is counting  # the million calls, in Go's float form
        assert 'hotload_versions{plugin="gauge",state="unloaded"} 2.0' in text
        with urllib.request.urlopen(url, timeout=30) as resp:
            served = resp.read()
        assert served == library_text(host)
        gz = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(gz, timeout=30) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            import gzip

            assert gzip.decompress(resp.read()) == served


def test_trickling_clients_cannot_take_the_hosts_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 connections that each send a byte every 0.3 s (under the per-read
    timeout, forever): the attacker's review held ~1,000 such connections and
    the host ran out of descriptors.  At most MAX_CONNECTIONS are served at
    once, each cut at the deadline, and a scrape gets through afterwards."""
    monkeypatch.setattr(metrics_server, "REQUEST_DEADLINE", 1.5)
    with Host(tmp_path / "work", preflight=False) as host:
        url = host.serve_metrics()
        hostport = url.split("//")[1].split("/")[0].rsplit(":", 1)
        fds0 = len(os.listdir("/proc/self/fd"))
        threads0 = threading.active_count()
        socks = []
        try:
            for _ in range(60):
                s = socket.create_connection((hostport[0], int(hostport[1])), timeout=5)
                s.sendall(b"GET /metrics HTTP/1.1\r\n")
                socks.append(s)
                # each accepted before the next: past the listen backlog (5) the kernel drops
                # the SYN and the client tries again a second later (6 s of this test)
                wait_for(
                    lambda: _accept_queue(int(hostport[1])) == 0, what="the accept", interval=0
                )
            peak_threads = peak_fds = 0
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X: y\r\n")
                peak_threads = max(peak_threads, threading.active_count() - threads0)
                peak_fds = max(peak_fds, len(os.listdir("/proc/self/fd")) - fds0 - len(socks))
                time.sleep(0.3)
        finally:
            for s in socks:
                s.close()
        # a thread and a deadline timer per served connection: 2 x the cap at most
        assert peak_threads <= 2 * metrics_server.MAX_CONNECTIONS, peak_threads
        assert peak_fds <= metrics_server.MAX_CONNECTIONS + 4, peak_fds
        assert scrape(url) is not None  # the endpoint serves on


def _accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the IPv4 socket listening on
    ``port`` (``/proc/net/tcp``: a listener's rx_queue is its accept queue)."""
    with open("/proc/net/tcp") as fh:
        for row in fh.readlines()[1:]:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return int(f[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def _serve_while_closing(work: Path) -> None:
    host = Host(work, preflight=False)
    barrier = threading.Barrier(5)
    urls: list[str] = []
    errors: list[BaseException] = []

    def serve() -> None:
        barrier.wait()
        try:
            urls.append(host.serve_metrics())
        except HotloadError as exc:  # ClosedError: close() came first
            errors.append(exc)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for t in threads:
        t.start()
    barrier.wait()
    host.close()
    for t in threads:
        t.join(30)
    assert len(set(urls)) <= 1, urls
    assert all("closed" in str(e) for e in errors), errors
    for url in set(urls):  # whichever started, close() stopped it
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url, timeout=5)


def test_racing_serve_metrics_calls_start_one_server_and_close_stops_it(tmp_path: Path) -> None:
    """Four threads calling serve_metrics() at once started four servers, and
    one racing close() left a server answering for a closed host (the
    attacker's review)."""
    for k in range(5):
        _serve_while_closing(tmp_path / f"work{k}")
    with Host(tmp_path / "work2", preflight=False) as host:
        barrier = threading.Barrier(4)
        got: list[str] = []

        def serve_only() -> None:
            barrier.wait()
            got.append(host.serve_metrics())

        threads = [threading.Thread(target=serve_only) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(got) == 4 and len(set(got)) == 1, got


def test_the_label_cache_holds_the_last_scrapes_series_only(tmp_path: Path, gauge) -> None:  # type: ignore[no-untyped-def]
    """Reloads with a short history: each scrape's series replace the last
    ones in the renderer's cache (it grew by ~43 series a reload, forever up
    to 200,000: the attacker's review)."""
    with Host(tmp_path / "work", preflight=False, history_limit=1) as host:
        g = host.load(gauge())
        host.serve_metrics()
        renderer = metrics_exposition.Renderer(host)
        sizes = []
        for k in range(30):
            g.clamp(k)
            host.reload("gauge", gauge(f"1.{k}.0"))
            host.settle()
            lines = renderer.render().decode().count("\n")
            sizes.append(len(renderer._prefixes))
            assert len(renderer._prefixes) <= lines
        assert max(sizes[5:]) <= max(sizes[:5]) + 5, sizes  # flat, not growing
