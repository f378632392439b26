"""The control server: one Unix socket per host, so that ``hotload`` in
another terminal can see and steer a running host (the protocol is in
``control_wire``, where the socket lives in ``control_paths``).

Limits
------
One thread multiplexes every connection; at most ``WORKERS`` threads run
requests.  At most ``MAX_SESSIONS`` connections are open at once, and never
more than a quarter (``FD_SHARE``) of the file descriptors the rest of the
process leaves free under its ``RLIMIT_NOFILE``: with ``ulimit -n 100``
thousands of connections must not take the fds the application's own
``reload()`` needs.  At the cap the longest-idle session with nothing unread
is closed to admit a newcomer, else the one stalled longest on a partial
request or an untaken answer, else the newcomer is answered ``busy``; a
request must be complete within ``REQUEST_DEADLINE`` seconds of its first
byte, and its answer taken as quickly (by the selector thread: workers never
wait on a client); a silent session is closed after ``SESSION_IDLE``
seconds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import queue
import secrets
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._artifact.reader import on_disk
from .._artifact.workdir import ensure_private_dir
from .._engine.journal import origin
from .._errors import ControlError, HotloadError, NotLoadedError, resource_error
from .._platform import dl, proc
from .control_canary import canary_result
from .control_journal import log_result, refused_builds
from .control_paths import ENV_DIR, control_dir, require_unix_sockets, sweep_stale
from .control_release import release_result
from .control_replay import record_result, replay_result
from .control_wire import MAX_LINE, NOSIGNAL, PROTOCOL, encode, error_reply, request_path

if TYPE_CHECKING:
    from .protocols import PluginHost

log = logging.getLogger(__name__)

SESSION_IDLE = 60.0  # seconds a connected client may stay silent between requests
REQUEST_DEADLINE = 10.0  # seconds from a request's first byte to its last (and to send the answer)
MAX_SESSIONS = 128  # open connections per host; each costs an fd, not a thread
FD_SHARE = 4  # sessions take at most 1/FD_SHARE of the fds the rest of the process leaves free
WORKERS = 4  # threads that run requests; started on demand
BACKLOG = 512  # connections the kernel queues before accept (capped by net.core.somaxconn)
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_BACKOFF_MIN, _ACCEPT_BACKOFF_MAX = 0.05, 1.0
_LOOP_TICK = 1.0
_RECV_CHUNK = 65536
_SUN_PATH_MAX = 107
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class _Session:
    """One client connection: what it has sent so far and when it must have
    finished.  Owned by the accept loop while it waits for a request line,
    by a worker while its request runs."""

    __slots__ = ("conn", "buf", "out", "deadline", "idle_since", "stalled_since")

    def __init__(self, conn: socket.socket, now: float, idle: float) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.out = b""  # the rest of an answer the client has not taken yet
        self.deadline = now + idle
        self.idle_since = now
        self.stalled_since = now  # first byte of a partial request, or start of an unsent answer


class ControlServer:
    """Serves the control protocol for one host on its own socket.

    One thread runs a selector over the listening socket and every open
    session, so an idle or slow client costs an fd, never a thread; a small
    pool of workers (started on demand, at most ``workers``) runs complete
    request lines against the host.  Limits: ``max_sessions`` open
    connections, fewer when the fd limit leaves less room (``session_cap``;
    at the cap the longest-idle one is closed to make room, and when every
    session is busy the newcomer is answered ``busy``); a request
    must arrive whole within ``request_deadline`` seconds of its first byte
    and its answer be taken within as long again; a session silent for
    ``idle_timeout`` seconds is closed.  When ``accept`` fails for lack of
    file descriptors or memory the loop stops accepting for a while
    (backing off up to a second) instead of spinning on a listener that
    stays readable."""

    def __init__(
        self,
        host: PluginHost,
        *,
        directory: str | os.PathLike[str] | None = None,
        name: str | None = None,
        max_sessions: int = MAX_SESSIONS,
        workers: int = WORKERS,
        request_deadline: float = REQUEST_DEADLINE,
        idle_timeout: float = SESSION_IDLE,
    ) -> None:
        require_unix_sockets()
        self.host = host
        self.directory = Path(directory) if directory else control_dir()
        if directory:
            ensure_private_dir(self.directory, what="control directory")
        self.name = name or _default_name()
        self.path = self.directory / f"host-{os.getpid()}-{secrets.token_hex(3)}.sock"
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise HotloadError(
                f"{self.path}: control socket path is longer than the {_SUN_PATH_MAX} bytes "
                f"a Unix socket allows; set {ENV_DIR} to a shorter directory"
            )
        self.max_sessions = max_sessions
        self.max_workers = max(1, workers)
        self.request_deadline = request_deadline
        self.idle_timeout = idle_timeout
        self.started_at = time.time()
        self._sock: socket.socket | None = None
        try:
            self._wake_r, self._wake_w = socket.socketpair()
        except OSError as exc:
            raise _out_of(exc, f"{self.path}: cannot set up the control channel") from None
        try:
            self._sel = selectors.DefaultSelector()
        except OSError as exc:
            self._wake_r.close()
            self._wake_w.close()
            raise _out_of(exc, f"{self.path}: cannot set up the control channel") from None
        self._lock = threading.Lock()  # guards what workers share with the loop, below
        self._sessions: set[_Session] = set()  # every open session, waiting or running
        self._returned: deque[_Session] = deque()  # answered by a worker, back to the loop
        self._jobs: queue.SimpleQueue[tuple[_Session, bytes] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._stopping = False
        self._accept_errors = 0  # accept() failures for lack of fds/memory (tests watch it)
        self._thread = threading.Thread(target=self._serve, name="hotload-control", daemon=True)

    def start(self) -> ControlServer:
        try:
            sweep_stale(self.directory)
        except OSError as exc:
            raise _out_of(exc, f"{self.directory}: cannot list the control directory") from None
        tmp = self.directory / f".{self.path.name}.{secrets.token_hex(3)}.tmp"
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            raise _out_of(exc, f"{self.path}: cannot open the control socket") from None
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(BACKLOG)
            sock.setblocking(False)
            os.replace(tmp, self.path)  # appears only once it accepts
            self._sock = sock
            self._thread.start()
        except BaseException:
            self._sock = None
            sock.close()
            for leftover in (tmp, self.path):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            raise
        log.info("control socket %s (try: hotload ls)", self.path)
        return self

    def stop(self) -> None:
        """Stop accepting, end open sessions and remove the socket."""
        if self._sock is not None:
            self._stopping = True
            self._wake()
            if self._thread is not threading.current_thread():
                self._thread.join(2.0)
            for _ in self._workers:
                self._jobs.put(None)
            with self._lock:
                sessions = list(self._sessions)
            for session in sessions:  # a worker still answering one sees its socket shut
                with contextlib.suppress(OSError):
                    session.conn.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def describe(self) -> dict[str, Any]:
        """This host, as ``ping`` answers."""
        from .._about import __version__

        return {
            "protocol": PROTOCOL,
            "hotload": __version__,
            "pid": os.getpid(),
            "uid": os.getuid(),
            "name": self.name,
            "argv": list(sys.argv),
            "started_at": self.started_at,
            "socket": str(self.path),
            "plugins": self.host.names(),
        }

    # -- the accept loop (one thread) --------------------------------------------------
    def _serve(self) -> None:
        assert self._sock is not None
        self._sel.register(self._sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        backoff, paused_until = _ACCEPT_BACKOFF_MIN, 0.0
        try:
            while not self._stopping:
                for key, events in self._sel.select(self._select_timeout(paused_until)):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif key.fileobj is self._sock:
                        if not self._accept():
                            self._sel.unregister(self._sock)  # out of fds: stop listening a while
                            paused_until = time.monotonic() + backoff
                            backoff = min(backoff * 2, _ACCEPT_BACKOFF_MAX)
                        else:
                            backoff = _ACCEPT_BACKOFF_MIN
                    elif events & selectors.EVENT_WRITE:
                        self._flush(key.data, time.monotonic())
                    else:
                        self._read(key.data)
                now = time.monotonic()
                if paused_until and now >= paused_until:
                    paused_until = 0.0
                    self._sel.register(self._sock, selectors.EVENT_READ)
                self._take_back_returned(now)
                self._expire(now)
        finally:
            with self._lock:
                sessions = list(self._sessions)
            for session in sessions:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(session.conn)
                with contextlib.suppress(OSError):
                    session.conn.shutdown(socket.SHUT_RDWR)

    def _select_timeout(self, paused_until: float) -> float:
        now = time.monotonic()
        waits = [_LOOP_TICK]
        if paused_until:
            waits.append(paused_until - now)
        waits += [key.data.deadline - now for key in self._waiting()]
        return max(0.0, min(waits))

    def _waiting(self) -> list[selectors.SelectorKey]:
        """The sessions waiting in the selector for their next request."""
        return [k for k in self._sel.get_map().values() if isinstance(k.data, _Session)]

    def _accept(self) -> bool:
        """Accept what is queued; False when out of file descriptors or memory."""
        assert self._sock is not None
        for _ in range(64):  # bounded: the wake socket and the sessions get their turn too
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return True
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    log.warning("control: accept failed: %s", exc)
                    return True
                self._accept_errors += 1
                if self._accept_errors == 1 or self._accept_errors % 100 == 0:
                    log.warning(
                        "control: cannot accept a client (%s); pausing accepts (%d so far)",
                        exc.strerror,
                        self._accept_errors,
                    )
                return False
            self._admit(conn)
        return True

    def _admit(self, conn: socket.socket) -> None:
        refusal = _check_peer(conn)
        if refusal:
            log.warning("control: %s", refusal)
            _send_and_close(conn, error_reply(None, "forbidden", refusal, "PermissionError"))
            return
        cap, why = self.session_cap()
        while len(self._sessions) >= cap:
            if cap == 0 or not self._evict():
                message = (
                    f"the host is busy: all {cap} control sessions are in use{why}; try again"
                    if cap
                    else f"the host has no file descriptor to spare for a control session{why}"
                )
                _send_and_close(conn, error_reply(None, "busy", message))
                return
        conn.setblocking(False)
        session = _Session(conn, time.monotonic(), self.idle_timeout)
        with self._lock:
            self._sessions.add(session)
        self._sel.register(conn, selectors.EVENT_READ, session)

    def session_cap(self) -> tuple[int, str]:
        """How many sessions may be open now, and why fewer than
        ``max_sessions`` (empty when not).  The newcomer's fd is already
        open: it is counted as a session, the rest of the process's fds are
        the application's, and the sessions may take a quarter of what its
        ``RLIMIT_NOFILE`` leaves free, so the application keeps the rest
        (the host's own ``reload()`` opens files, the preflight pipes)."""
        usage = proc.fd_usage()
        if usage is None:
            return self.max_sessions, ""
        used, limit = usage
        others = used - len(self._sessions) - 1
        share = max(0, limit - others) // FD_SHARE
        if share >= self.max_sessions:
            return self.max_sessions, ""
        return share, (
            f" (the most its fd limit allows: {others} of its {limit} file descriptors are "
            f"the application's, the control sessions take at most 1/{FD_SHARE} of the rest)"
        )

    def _evict(self) -> bool:
        """Make room for a newcomer; False if every session is busy.

        First choice: the session silent longest, but only one with nothing
        unread in the kernel either: closing a socket with unread data
        resets it, and the client whose request was on its way would see
        "connection reset".  Second choice: the session stalled longest on a
        partial request or on an answer it does not take.  A real client
        sends a request and takes its answer in microseconds; 128 slow
        lorises that each send one byte would otherwise hold every slot."""
        idle: list[_Session] = []
        stalled: list[_Session] = []
        for key in self._waiting():
            session: _Session = key.data
            if session.out:
                stalled.append(session)
            elif not _nothing_unread(session.conn):
                continue  # its request is on its way: read it, never reset it
            elif session.buf:
                stalled.append(session)
            else:
                idle.append(session)
        if idle:
            self._close(min(idle, key=lambda s: s.idle_since))
        elif stalled:
            victim = min(stalled, key=lambda s: s.stalled_since)
            log.info(
                "control: closing a session stalled for %.1f s to admit a newcomer",
                time.monotonic() - victim.stalled_since,
            )
            self._close(victim)
        else:
            return False
        return True

    def _read(self, session: _Session) -> None:
        try:
            data = session.conn.recv(_RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(session)  # the client hung up
            return
        if not session.buf:  # the first byte of a request starts its deadline
            session.stalled_since = time.monotonic()
            session.deadline = session.stalled_since + self.request_deadline
        session.buf += data
        self._dispatch_if_complete(session)

    def _dispatch_if_complete(self, session: _Session) -> bool:
        """Hand a complete request line to a worker; True if one was."""
        end = session.buf.find(b"\n", 0, MAX_LINE + 1)
        if end < 0:
            if len(session.buf) > MAX_LINE:
                message = f"request longer than {MAX_LINE} bytes"
                self._close(session, error_reply(None, "bad_request", message))
            return False
        line = bytes(session.buf[:end])
        del session.buf[: end + 1]
        self._sel.unregister(session.conn)
        self._submit(session, line)
        return True

    def _take_back_returned(self, now: float) -> None:
        """Sessions a worker answered: wait for the client to take the rest
        of a long answer, else serve a pipelined request at once, else wait
        in the selector for the next one."""
        while True:
            with self._lock:
                if not self._returned:
                    return
                session = self._returned.popleft()
            if session.out:
                session.stalled_since = now
                session.deadline = now + self.request_deadline
                self._sel.register(session.conn, selectors.EVENT_WRITE, session)
            else:
                self._await_next(session, now)

    def _await_next(self, session: _Session, now: float) -> None:
        session.idle_since = session.stalled_since = now
        session.deadline = now + (self.request_deadline if session.buf else self.idle_timeout)
        self._sel.register(session.conn, selectors.EVENT_READ, session)
        self._dispatch_if_complete(session)

    def _flush(self, session: _Session, now: float) -> None:
        """Send more of an answer the client is slow to take."""
        try:
            sent = session.conn.send(session.out, NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(session)
            return
        session.out = session.out[sent:]
        if not session.out:
            self._sel.unregister(session.conn)
            self._await_next(session, now)

    def _expire(self, now: float) -> None:
        for key in self._waiting():
            session = key.data
            if now < session.deadline:
                continue
            if session.out:
                log.info("control: closing a session that did not take its answer in time")
                self._close(session)  # no room to say why: it does not read
            elif session.buf:
                message = f"request not complete within {self.request_deadline:g} s"
                self._close(session, error_reply(None, "timeout", message))
            else:
                self._close(session)  # silent for idle_timeout

    def _close(self, session: _Session, last_word: dict[str, Any] | None = None) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(session.conn)
        with self._lock:
            self._sessions.discard(session)
        if last_word is None:
            session.conn.close()
        else:
            _send_and_close(session.conn, last_word)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x", NOSIGNAL)

    # -- workers -------------------------------------------------------------------------
    def _submit(self, session: _Session, line: bytes) -> None:
        with self._lock:
            need = self._idle_workers == 0 and len(self._workers) < self.max_workers
        if need:
            worker = threading.Thread(target=self._work, name="hotload-control-worker", daemon=True)
            try:
                worker.start()
            except RuntimeError as exc:  # "can't start new thread": the process is at its limit
                log.warning("control: cannot start a worker thread (%s)", exc)
            else:
                with self._lock:
                    self._workers.append(worker)
        if not any(w.is_alive() for w in self._workers):
            self._answer(session, line)  # no worker at all: answer here rather than never
            return
        self._jobs.put((session, line))

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle_workers += 1
            job = self._jobs.get()
            with self._lock:
                self._idle_workers -= 1
            if job is None:
                return
            self._answer(*job)

    def _answer(self, session: _Session, line: bytes) -> None:
        """Run one request and send what of its answer the socket takes now;
        then give the session back to the loop, which sends the rest as the
        client reads (within ``request_deadline``).  A worker never waits on
        a client: four clients that pipeline requests and never read would
        otherwise hold every worker."""
        reply = encode(self.handle(line))
        try:
            while reply:
                reply = reply[session.conn.send(reply, NOSIGNAL) :]
        except (BlockingIOError, InterruptedError):
            pass  # the socket's buffer is full: the loop sends the rest
        except OSError:  # gone, or stop()
            with self._lock:
                self._sessions.discard(session)
            session.conn.close()
            return
        session.out = reply
        with self._lock:
            self._returned.append(session)
        self._wake()

    # -- requests -----------------------------------------------------------------
    def handle(self, line: bytes) -> dict[str, Any]:
        """Answer one request line (also usable without a socket, in tests)."""
        try:
            req = json.loads(line, parse_constant=_no_constant, parse_float=_finite_float)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # e.g. 60,000 nested "["
            return error_reply(None, "bad_request", f"not a JSON object: {exc}")
        if not isinstance(req, dict):
            return error_reply(None, "bad_request", "a request is a JSON object")
        rid = req.get("id")
        version = req.get("v", PROTOCOL)
        if type(version) is not int or version != PROTOCOL:  # true is not 1
            return error_reply(
                rid,
                "unsupported_version",
                f"protocol version {version!r} is not supported; this host speaks {PROTOCOL}",
            )
        op = req.get("op")
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            return error_reply(
                rid, "unknown_op", f"unknown op {op!r}; known: {', '.join(sorted(_OPS))}"
            )
        try:
            with origin("cli"):  # what a request changes, the journal says the CLI asked
                result = handler(self, req)
            return {"v": PROTOCOL, "id": rid, "ok": True, "result": result}
        except NotLoadedError as exc:
            return error_reply(rid, "not_loaded", str(exc), type(exc).__name__)
        except ControlError as exc:
            return error_reply(rid, exc.code, str(exc), type(exc).__name__)
        except HotloadError as exc:
            return error_reply(rid, "failed", str(exc), type(exc).__name__)
        except Exception as exc:
            log.exception("control: %s failed", op)
            return error_reply(rid, "internal", f"{type(exc).__name__}: {exc}", type(exc).__name__)

    def _op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.describe()

    def _op_ls(self, req: dict[str, Any]) -> dict[str, Any]:
        with dl.maps_snapshot():  # one read of the process's mappings for every version
            plugins = [
                {"name": n, "versions": self._versions(n), "pruned": self.host.pruned(n)}
                for n in self.host.names()
            ]
            leaks = self.host.leaks()
        return {
            "host": self.describe(),
            "plugins": plugins,
            "leaks": {"images": len(leaks), "bytes": sum(v.mapped_bytes for v in leaks)},
            "handles": self.host.handles(),
            "refused": refused_builds(self.host.journal),
        }

    def _op_log(self, req: dict[str, Any]) -> dict[str, Any]:
        return log_result(self.host.journal, req)

    def _op_versions(self, req: dict[str, Any]) -> dict[str, Any]:
        name = _arg(req, "name")
        return {"name": name, "versions": self._versions(name)}

    def _op_reload(self, req: dict[str, Any]) -> dict[str, Any]:
        name = self._loaded(req)
        path = request_path(req)
        allow = req.get("allow_signature_change", False)
        if not isinstance(allow, bool):  # not 0/1, not "yes": a typo must not accept a change
            raise ControlError("'allow_signature_change' must be true or false", "bad_request")
        before = [v for v in self.host.versions(name) if v.state == "active"]
        info = self.host.reload(name, path, allow_signature_change=allow)
        log.info("control: reloaded %s to v%d (%s) on request", name, info.seq, info.plugin_version)
        return {"version": info.as_dict(), "previous": before[-1].as_dict() if before else None}

    def _op_rollback(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"version": self.host.rollback(self._loaded(req)).as_dict()}

    def _op_release(self, req: dict[str, Any]) -> dict[str, Any]:
        return release_result(self.host, req)

    def _op_canary(self, req: dict[str, Any]) -> dict[str, Any]:
        return canary_result(self.host, self._loaded(req), req)

    def _op_record(self, req: dict[str, Any]) -> dict[str, Any]:
        return record_result(self.host, self._loaded(req), req)

    def _op_replay(self, req: dict[str, Any]) -> dict[str, Any]:
        return replay_result(self.host, self._loaded(req), req)

    def _loaded(self, req: dict[str, Any]) -> str:
        name = _arg(req, "name")
        loaded = self.host.names()
        if name not in loaded:
            raise NotLoadedError(
                f"no plugin named {name!r} is loaded (loaded: {', '.join(loaded) or 'none'})"
            )
        return name

    def _versions(self, name: str) -> list[dict[str, Any]]:
        """Each version as a dict; the active one also says what its source
        file holds now (``source_digest``), so that ``ls`` shows when that
        file is not what runs (after a rollback, or a build written over it
        that the host refused)."""
        versions = [v.as_dict() for v in self.host.versions(name)]
        for v in versions:
            if v["state"] == "active":
                v["source_digest"] = on_disk(v["source"])
        return versions


_OPS = {
    "ping": ControlServer._op_ping,
    "hosts": ControlServer._op_ping,
    "ls": ControlServer._op_ls,
    "versions": ControlServer._op_versions,
    "reload": ControlServer._op_reload,
    "rollback": ControlServer._op_rollback,
    "canary": ControlServer._op_canary,
    "release": ControlServer._op_release,
    "record": ControlServer._op_record,
    "replay": ControlServer._op_replay,
    "log": ControlServer._op_log,
}


def _arg(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError(f"request {req.get('op')!r} needs a string {key!r}", "bad_request")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _nothing_unread(conn: socket.socket) -> bool:
    """True when the kernel holds no unread byte from this client (or it
    hung up): closing it then ends the connection cleanly instead of
    resetting it."""
    try:
        return not conn.recv(1, socket.MSG_PEEK | _DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return True  # already broken: nothing to lose


def _send_and_close(conn: socket.socket, obj: dict[str, Any]) -> None:
    """A last line without waiting: the loop never blocks on one client.  A
    short line fits the empty send buffer of a fresh or answered session."""
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(encode(obj), NOSIGNAL)
        conn.shutdown(socket.SHUT_WR)
    conn.close()


def _out_of(exc: OSError, what: str) -> HotloadError:
    """A setup failure as a HotloadError: ``ResourceError`` when the process
    is out of file descriptors or memory."""
    return resource_error(exc, what) or HotloadError(f"{what}: {exc.strerror or exc}")


def _check_peer(conn: socket.socket) -> str | None:
    """None if the peer may talk to us, else why not.  The 0700 directory
    already keeps other users out; this is the second lock, and the one that
    holds if the directory's mode is ever loosened.  A process inside a
    worker (a plugin's, of this host or another) is refused whatever its uid:
    a sandboxed worker cannot reach the socket, but an unsandboxed one
    (``Isolated(sandbox=False)``, or the fallback sandbox) runs as our user."""
    cred_opt = getattr(socket, "SO_PEERCRED", None)
    if cred_opt is None:
        return None  # no SO_PEERCRED here: the directory's mode is the only guard
    raw = conn.getsockopt(socket.SOL_SOCKET, cred_opt, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    if pid > 0 and proc.in_worker(pid):  # a plugin, isolated or in a preflight: never
        return (
            f"refused a client inside a hotload worker process (pid {pid}): a plugin may not "
            f"control a host"
        )
    if uid in (os.getuid(), 0):
        return None
    allowed = "root" if os.getuid() == 0 else f"uid {os.getuid()} (the host's owner) or root"
    return f"refused a client with uid {uid} (pid {pid}): only {allowed} may control this host"


def _default_name() -> str:
    """The command line, shortened: ``hotload demo``, ``server.py --port 1``."""
    prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = prog.parent.name if prog.name == "__main__.py" else prog.name  # python -m pkg
    return " ".join([name, *sys.argv[1:]])[:80]


__all__ = [
    "FD_SHARE",
    "MAX_SESSIONS",
    "REQUEST_DEADLINE",
    "SESSION_IDLE",
    "WORKERS",
    "ControlServer",
]
