"""The control channel: one Unix socket per host, so that ``hotload`` in
another terminal can see and steer a running host.

Where and who
-------------
Sockets live in a private per-user directory: ``$HOTLOAD_CONTROL_DIR`` if
set, else ``<runtime base>/control`` where the runtime base is the one the
work directories use (``$XDG_RUNTIME_DIR/hotload``, or ``<tmp>/hotload-<uid>``;
see ``workdir.runtime_base``).  The directory is 0700 and each socket 0600.
Each host has its own socket, ``host-<pid>-<token>.sock``, so several hosts
coexist and ``hotload hosts`` can list them.  A socket is bound under a
hidden temporary name, made 0600, put in listening state and only then
renamed into place: a client never finds a socket that refuses it because it
is still being set up, so a refused connection means a dead host, and that
stale socket is removed (by the next host that starts, or by any client
listing hosts).  On accepting a connection the server reads the peer's
credentials (``SO_PEERCRED``) and serves only the same uid, or root.

Protocol (version 1)
--------------------
Line-delimited JSON over the stream: each request is one JSON object on one
line (UTF-8, ending ``\\n``, at most 64 KiB), each answer is one line.  A
connection may carry any number of requests, answered in order.

Request::

    {"v": 1, "op": "<op>", "id": <anything, echoed back>, ...arguments}

``v`` may be omitted (it means 1); another value gets ``unsupported_version``.

Answer::

    {"v": 1, "id": <echoed>, "ok": true,  "result": {...}}
    {"v": 1, "id": <echoed>, "ok": false, "error": {"code": "<code>", "type": "<exception>",
                                                    "message": "<one line>"}}

Operations and their ``result``:

``ping`` (alias ``hosts``)
    This host: ``{"protocol", "hotload", "pid", "uid", "name", "argv",
    "started_at", "socket", "plugins": [names]}``.
``ls``
    ``{"host": <ping result>, "plugins": [{"name", "versions": [version...],
    "pruned"}], "leaks": {"images", "bytes"}}``; ``pruned`` counts old unloaded
    versions the host's bounded history dropped; ``leaks`` sums every leaked
    or retained image.
``versions`` ``{"name"}``
    ``{"name", "versions": [version...]}``, oldest first.
``reload`` ``{"name", "path"?}``
    ``{"version": <the new current version>, "previous": <the version it replaced>}``
``rollback`` ``{"name"}``
    ``{"version": <the version now current>}``; ``unsupported`` when the host
    has no ``rollback``.

A *version* object is ``VersionInfo.as_dict()``: ``name, seq, plugin_version,
state (active|draining|unloaded|leaked|retained), in_flight, loaded_at, unloaded_at,
source, copy, digest, size, dlopen_count, dlclose_count, mapped_bytes,
blockers [str], note``; times are Unix seconds.  New keys may be added to any
object without a protocol bump; removing or changing one bumps ``v``.

Error codes: ``bad_request``, ``unsupported_version``, ``unknown_op``,
``forbidden`` (peer uid refused), ``not_loaded``, ``unsupported``, ``failed``
(the host refused: the message says why), ``internal``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import selectors
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import HotloadError, NotLoadedError
from ._workdir import ensure_private_dir, runtime_base

if TYPE_CHECKING:
    from ._protocols import PluginHost

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_LINE = 64 * 1024
ENV_DIR = "HOTLOAD_CONTROL_DIR"
SESSION_IDLE = 60.0  # seconds a connected client may stay silent
_SUN_PATH_MAX = 107


class ControlError(HotloadError):
    """A control request failed; ``code`` is the protocol's error code."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


# ---- where ---------------------------------------------------------------------


def _require_unix_sockets() -> None:
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):
        raise ControlError(
            "the control channel needs Unix domain sockets and POSIX users, which this "
            "platform lacks",
            "unsupported",
        )


def control_dir() -> Path:
    """The private directory holding this user's host sockets (created 0700)."""
    _require_unix_sockets()
    env = os.environ.get(ENV_DIR)
    path = Path(env) if env else runtime_base() / "control"
    ensure_private_dir(path)
    return path


def socket_paths(directory: Path | None = None) -> list[Path]:
    directory = directory or control_dir()
    return sorted(directory.glob("host-*.sock"))


def _pid_of(path: Path) -> int | None:
    try:
        return int(path.name.split("-")[1])
    except (IndexError, ValueError):
        return None


def is_stale(path: Path) -> bool:
    """True when no host listens on ``path`` any more (its process died
    without closing).  Decided by connecting (refused: nobody listens), never
    by the pid in the name: a host in another pid namespace sharing this
    directory has a pid we cannot see, and pids are reused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def sweep_stale(directory: Path | None = None) -> list[Path]:
    """Remove the sockets of hosts that died; return what was removed."""
    removed = []
    for path in socket_paths(directory):
        if is_stale(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
                log.info("removed stale control socket %s (its host is gone)", path)
    return removed


# ---- server ------------------------------------------------------------------------


class ControlServer:
    """Serves the control protocol for one host on its own socket."""

    def __init__(
        self,
        host: PluginHost,
        *,
        directory: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        _require_unix_sockets()
        self.host = host
        self.directory = Path(directory) if directory else control_dir()
        if directory:
            ensure_private_dir(self.directory)
        self.name = name or _default_name()
        self.path = self.directory / f"host-{os.getpid()}-{secrets.token_hex(3)}.sock"
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise HotloadError(
                f"{self.path}: control socket path is longer than the {_SUN_PATH_MAX} bytes "
                f"a Unix socket allows; set {ENV_DIR} to a shorter directory"
            )
        self.started_at = time.time()
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._sessions: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="hotload-control", daemon=True)

    def start(self) -> ControlServer:
        sweep_stale(self.directory)
        tmp = self.directory / f".{self.path.name}.{secrets.token_hex(3)}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(16)
            os.replace(tmp, self.path)  # appears only once it accepts
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._sock = sock
        self._thread.start()
        log.info("control socket %s (try: hotload ls)", self.path)
        return self

    def stop(self) -> None:
        """Stop accepting, end open sessions and remove the socket."""
        if self._sock is None:  # never started (or start failed): only the wake pair to close
            self._wake_r.close()
            self._wake_w.close()
            return
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)
        with self._lock:
            for conn in list(self._sessions):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._wake_r.close()
        self._wake_w.close()

    def describe(self) -> dict[str, Any]:
        """This host, as ``ping`` answers."""
        from . import __version__

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

    # -- connections ---------------------------------------------------------------
    def _serve(self) -> None:
        assert self._sock is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        conn, _addr = self._sock.accept()
                    except OSError:
                        continue
                    threading.Thread(
                        target=self._session,
                        args=(conn,),
                        name="hotload-control-session",
                        daemon=True,
                    ).start()

    def _session(self, conn: socket.socket) -> None:
        with self._lock:
            self._sessions.add(conn)
        try:
            with conn:
                refusal = _check_peer(conn)
                if refusal:
                    log.warning("control: %s", refusal)
                    _send(conn, _error(None, "forbidden", refusal, "PermissionError"))
                    _linger(conn)
                    return
                conn.settimeout(SESSION_IDLE)
                self._converse(conn)
        except OSError:
            pass  # client went away, idle timeout, or stop()
        finally:
            with self._lock:
                self._sessions.discard(conn)

    def _converse(self, conn: socket.socket) -> None:
        with conn.makefile("rb") as reader:
            while True:
                line = reader.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    _send(
                        conn, _error(None, "bad_request", f"request longer than {MAX_LINE} bytes")
                    )
                    return
                _send(conn, self.handle(line))

    # -- requests -----------------------------------------------------------------
    def handle(self, line: bytes) -> dict[str, Any]:
        """Answer one request line (also usable without a socket, in tests)."""
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # e.g. 60,000 nested "["
            return _error(None, "bad_request", f"not a JSON object: {exc}")
        if not isinstance(req, dict):
            return _error(None, "bad_request", "a request is a JSON object")
        rid = req.get("id")
        if req.get("v", PROTOCOL) != PROTOCOL:
            return _error(
                rid,
                "unsupported_version",
                f"protocol version {req.get('v')!r} is not supported; this host speaks {PROTOCOL}",
            )
        op = req.get("op")
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            return _error(rid, "unknown_op", f"unknown op {op!r}; known: {', '.join(sorted(_OPS))}")
        try:
            return {"v": PROTOCOL, "id": rid, "ok": True, "result": handler(self, req)}
        except NotLoadedError as exc:
            return _error(rid, "not_loaded", str(exc), type(exc).__name__)
        except ControlError as exc:
            return _error(rid, exc.code, str(exc), type(exc).__name__)
        except HotloadError as exc:
            return _error(rid, "failed", str(exc), type(exc).__name__)
        except Exception as exc:
            log.exception("control: %s failed", op)
            return _error(rid, "internal", f"{type(exc).__name__}: {exc}", type(exc).__name__)

    def _op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.describe()

    def _op_ls(self, req: dict[str, Any]) -> dict[str, Any]:
        plugins = [
            {"name": n, "versions": self._versions(n), "pruned": self.host.pruned(n)}
            for n in self.host.names()
        ]
        leaks = self.host.leaks()
        return {
            "host": self.describe(),
            "plugins": plugins,
            "leaks": {"images": len(leaks), "bytes": sum(v.mapped_bytes for v in leaks)},
        }

    def _op_versions(self, req: dict[str, Any]) -> dict[str, Any]:
        name = _arg(req, "name")
        return {"name": name, "versions": self._versions(name)}

    def _op_reload(self, req: dict[str, Any]) -> dict[str, Any]:
        name = _arg(req, "name")
        path = req.get("path")
        if path is not None and not isinstance(path, str):
            raise ControlError("'path' must be a string", "bad_request")
        self.host.plugin(name)  # not loaded: the error lists what is
        before = [v for v in self.host.versions(name) if v.state == "active"]
        info = self.host.reload(name, path)
        log.info("control: reloaded %s to v%d (%s) on request", name, info.seq, info.plugin_version)
        return {"version": info.as_dict(), "previous": before[-1].as_dict() if before else None}

    def _op_rollback(self, req: dict[str, Any]) -> dict[str, Any]:
        name = _arg(req, "name")
        self.host.plugin(name)
        rollback = getattr(self.host, "rollback", None)
        if rollback is None:
            raise ControlError(
                "rollback is not supported by this host (its hotload has no Host.rollback)",
                "unsupported",
            )
        result = rollback(name)
        if hasattr(result, "as_dict"):
            return {"version": result.as_dict()}
        current = [v for v in self.host.versions(name) if v.state == "active"]
        return {"version": current[-1].as_dict() if current else None}

    def _versions(self, name: str) -> list[dict[str, Any]]:
        return [v.as_dict() for v in self.host.versions(name)]


_OPS = {
    "ping": ControlServer._op_ping,
    "hosts": ControlServer._op_ping,
    "ls": ControlServer._op_ls,
    "versions": ControlServer._op_versions,
    "reload": ControlServer._op_reload,
    "rollback": ControlServer._op_rollback,
}


def _arg(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError(f"request {req.get('op')!r} needs a string {key!r}", "bad_request")
    return value


def _error(rid: Any, code: str, message: str, kind: str = "ControlError") -> dict[str, Any]:
    return {
        "v": PROTOCOL,
        "id": rid,
        "ok": False,
        "error": {"code": code, "type": kind, "message": message},
    }


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def _linger(conn: socket.socket) -> None:
    """Let the client read our last line: closing with its request still
    unread would make the kernel reset the connection and drop that line."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        while conn.recv(MAX_LINE):
            pass


def _check_peer(conn: socket.socket) -> str | None:
    """None if the peer may talk to us, else why not.  The 0700 directory
    already keeps other users out; this is the second lock, and the one that
    holds if the directory's mode is ever loosened."""
    cred_opt = getattr(socket, "SO_PEERCRED", None)
    if cred_opt is None:
        return None  # no SO_PEERCRED here: the directory's mode is the only guard
    raw = conn.getsockopt(socket.SOL_SOCKET, cred_opt, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    if uid in (os.getuid(), 0):
        return None
    allowed = "root" if os.getuid() == 0 else f"uid {os.getuid()} (the host's owner) or root"
    return f"refused a client with uid {uid} (pid {pid}): only {allowed} may control this host"


def _default_name() -> str:
    """The command line, shortened: ``hotload demo``, ``server.py --port 1``."""
    prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = prog.parent.name if prog.name == "__main__.py" else prog.name  # python -m pkg
    return " ".join([name, *sys.argv[1:]])[:80]


# ---- client ------------------------------------------------------------------------


def request(
    path: str | os.PathLike[str], op: str, *, timeout: float = 30.0, **args: Any
) -> dict[str, Any]:
    """Send one request and return its ``result``; raise ``ControlError``."""
    _require_unix_sockets()
    req = {"v": PROTOCOL, "op": op, "id": 1, **args}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                _send(sock, req)  # a host that refuses us answers at once and may hang up: read on
            with sock.makefile("rb") as reader:
                line = reader.readline()  # our own uid's host: an answer may be long (ls)
    except FileNotFoundError:
        raise ControlError(
            f"{path}: no such control socket (is the host still running?)", "unreachable"
        ) from None
    except ConnectionRefusedError:
        raise ControlError(
            f"{path}: connection refused: the host that owned it is gone", "unreachable"
        ) from None
    except PermissionError:
        raise ControlError(
            f"{path}: permission denied: the host belongs to another user", "forbidden"
        ) from None
    except TimeoutError:
        raise ControlError(
            f"{path}: the host did not answer within {timeout:g} s", "timeout"
        ) from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}", "unreachable") from None
    if not line:
        raise ControlError(
            f"{path}: the host closed the connection without answering", "unreachable"
        )
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(
            f"{path}: the host sent an answer that is not JSON", "bad_reply"
        ) from None
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise ControlError(err.get("message", "request failed"), err.get("code", "failed"))
    return reply["result"]


def discover(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every live host of this user, as ``ping`` describes it, by pid.

    Sockets of dead hosts are removed on the way.  A host that does not
    answer in time is listed with an ``error`` key."""
    hosts = []
    for path in socket_paths(directory):
        try:
            hosts.append(request(path, "ping", timeout=2.0))
        except ControlError as exc:
            if exc.code == "unreachable" and path.exists() and is_stale(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    log.info("removed stale control socket %s", path)
                continue
            if exc.code == "unreachable" and not path.exists():
                continue
            hosts.append(
                {"pid": _pid_of(path), "socket": str(path), "name": None, "error": str(exc)}
            )
    return sorted(hosts, key=lambda h: (h.get("pid") or 0, h["socket"]))


def resolve(
    *,
    socket_path: str | os.PathLike[str] | None = None,
    host: str | None = None,
    directory: Path | None = None,
) -> Path:
    """The socket to talk to: ``socket_path`` as given; else the live host
    matching ``host`` (a pid, a socket file name, or the host's name); else
    the only live host.  None or several is an error that says what to do."""
    if socket_path is not None:
        return Path(socket_path)
    directory = directory or control_dir()
    live = [h for h in discover(directory) if "error" not in h]
    if host is not None:
        chosen = [
            h for h in live if host in (str(h.get("pid")), Path(h["socket"]).name, h.get("name"))
        ]
        if len(chosen) == 1:
            return Path(chosen[0]["socket"])
        if not chosen:
            raise ControlError(
                f"no running host matches {host!r} in {directory} ({_summary(live)})", "no_host"
            )
        raise ControlError(
            f"{len(chosen)} hosts match {host!r} ({_summary(chosen)}); pick one with --socket PATH",
            "ambiguous",
        )
    if len(live) == 1:
        return Path(live[0]["socket"])
    if not live:
        raise ControlError(
            f"no running hotload host found in {directory} (start one with Host(control=True) "
            f"or `hotload demo --interactive`)",
            "no_host",
        )
    raise ControlError(
        f"{len(live)} hosts are running ({_summary(live)}); pick one with --host PID or "
        f"--socket PATH",
        "ambiguous",
    )


def _summary(hosts: list[dict[str, Any]]) -> str:
    if not hosts:
        return "none running"
    return ", ".join(f"pid {h.get('pid')} {h.get('name') or ''}".strip() for h in hosts)


__all__ = [
    "PROTOCOL",
    "ControlError",
    "ControlServer",
    "control_dir",
    "discover",
    "request",
    "resolve",
    "sweep_stale",
]
