"""``host.serve_metrics()``: the host's figures at ``/metrics`` in the
Prometheus text format.

What a scrape says is ``metrics_exposition``'s: the metric families of
``host.metrics()`` read when the scrape comes in (nothing runs per call in
Python), written as the ``prometheus-client`` library writes them.  This
module is the HTTP side: a small WSGI app (``GET`` of ``/metrics``, gzip when
asked, as the library's app) on the standard library's threading WSGI
server, at most ``MAX_CONNECTIONS`` connections at once, each with a read
timeout and a deadline, and nothing logged per request.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .._errors import HotloadError
from .metrics_exposition import Renderer

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
        self.renderer = Renderer(host)
        app = _app(self.renderer)
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
