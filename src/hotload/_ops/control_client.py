"""The control client: send one request to a host's socket, find this user's
live hosts, and pick the one a command means (``hotload ls``, ``hosts``,
``reload``, ``rollback``).

``request()`` retries a full backlog, a ``busy`` answer or a fresh
connection closed before any answer for up to ``CONNECT_RETRY`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from .._errors import ControlError
from .control_paths import control_dir, is_stale, pid_of, require_unix_sockets, socket_paths
from .control_wire import NOSIGNAL, PROTOCOL, encode

log = logging.getLogger(__name__)

CONNECT_RETRY = 5.0  # seconds a client retries a full backlog or a busy host
_REFUSED_RETRY = 0.2  # seconds a client retries a refused connection


class _Retry(Exception):
    """A transient refusal (full backlog, busy host, a fresh connection
    closed before any answer): try again shortly, for up to ``budget``
    seconds."""

    def __init__(self, error: ControlError, budget: float = CONNECT_RETRY) -> None:
        self.error = error
        self.budget = budget


def request(
    socket_path: str | os.PathLike[str], op: str, /, *, timeout: float = 30.0, **args: Any
) -> dict[str, Any]:
    """Send one request and return its ``result``; raise ``ControlError``.

    A full listen backlog (``EAGAIN``), a ``busy`` answer, or a fresh
    connection reset or closed before any answer (a host at its session cap
    made room) is retried for up to ``CONNECT_RETRY`` seconds (within
    ``timeout``), since a burst of clients clears in moments; a refused
    connection is retried only briefly, as it almost always means the host
    is gone.  A host closes a connection only before it read a whole
    request, or when it stops, so a retried request never ran twice."""
    require_unix_sockets()
    _check_is_socket(socket_path)
    req = {"v": PROTOCOL, "op": op, "id": 1, **args}
    start = time.monotonic()
    delay = 0.005
    while True:
        try:
            return _exchange(socket_path, req, timeout)
        except _Retry as retry:
            spent = time.monotonic() - start
            if spent + delay > min(retry.budget, timeout):
                raise retry.error from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _check_is_socket(path: str | os.PathLike[str]) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # connect() says what is wrong
    if stat.S_ISSOCK(mode):
        return
    kind = "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else ""
    raise ControlError(
        f"{os.fspath(path)}: not a socket{f' ({kind})' if kind else ''}; give a host's control "
        f"socket (`hotload hosts` lists them)",
        "not_a_socket",
    )


def _exchange(path: str | os.PathLike[str], req: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                _send(sock, req)  # a host that refuses us answers at once and may hang up: read on
            with sock.makefile("rb") as reader:
                line = reader.readline()  # our own uid's host: an answer may be long (ls)
    except (ConnectionResetError, BrokenPipeError):
        line = b""  # closed before answering: see below
    except FileNotFoundError:
        raise ControlError(
            f"{path}: no such control socket (is the host still running?)", "unreachable"
        ) from None
    except BlockingIOError:  # EAGAIN: the listen backlog is full
        raise _Retry(
            ControlError(f"{path}: the host's connection queue stayed full; try again", "busy")
        ) from None
    except ConnectionRefusedError:
        raise _Retry(
            ControlError(
                f"{path}: connection refused: the host that owned it is gone", "unreachable"
            ),
            _REFUSED_RETRY,
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
    if not line:  # a host at its session cap closed us to make room: a fresh try gets in
        raise _Retry(
            ControlError(f"{path}: the host closed the connection without answering", "unreachable")
        )
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(
            f"{path}: the host sent an answer that is not JSON", "bad_reply"
        ) from None
    if not reply.get("ok"):
        err = reply.get("error") or {}
        error = ControlError(err.get("message", "request failed"), err.get("code", "failed"))
        if error.code == "busy":
            raise _Retry(error)
        raise error
    result: dict[str, Any] = reply["result"]
    return result


def discover(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every live host of this user, as ``ping`` describes it, by pid.

    Sockets of dead hosts are removed on the way.  A host that does not
    answer in time is listed with an ``error`` key."""
    hosts = []
    seen: set[tuple[Any, ...]] = set()
    for path in socket_paths(directory):
        real = path.resolve()  # a symlink to a host's socket is that host, listed once
        if ("path", real) in seen:
            continue
        seen.add(("path", real))
        try:
            found = request(path, "ping", timeout=2.0)
            identity = ("host", found.get("pid"), found.get("socket"))
            if identity not in seen:
                seen.add(identity)
                hosts.append(found)
        except ControlError as exc:
            if exc.code == "unreachable" and path.exists() and is_stale(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    log.info("removed stale control socket %s", path)
                continue
            if exc.code == "unreachable" and not path.exists():
                continue
            hosts.append(
                {"pid": pid_of(path), "socket": str(path), "name": None, "error": str(exc)}
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
    found = discover(directory)
    live = [h for h in found if "error" not in h]
    if not live:
        # A host whose socket is there but that did not answer the 2 s ping is busy,
        # not gone (128 CLI processes at once on 2 cores): it is still the one to
        # talk to, and the request itself waits longer.  Saying "no running host"
        # sent an operator looking for a host that was there.
        live = [h for h in found if h.get("pid") is not None]
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


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(encode(obj), NOSIGNAL)


__all__ = ["CONNECT_RETRY", "discover", "request", "resolve"]
