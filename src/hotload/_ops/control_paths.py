"""Where the control sockets live, and which of them still have a host.

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
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

from .._artifact.workdir import ensure_private_dir, runtime_base
from .._errors import ControlError

log = logging.getLogger(__name__)

ENV_DIR = "HOTLOAD_CONTROL_DIR"


def require_unix_sockets() -> None:
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):
        raise ControlError(
            "the control channel needs Unix domain sockets and POSIX users, which this "
            "platform lacks",
            "unsupported",
        )


def control_dir() -> Path:
    """The private directory holding this user's host sockets (created 0700)."""
    require_unix_sockets()
    env = os.environ.get(ENV_DIR)
    path = Path(env) if env else runtime_base() / "control"
    ensure_private_dir(path, what="control directory")
    return path


def socket_paths(directory: Path | None = None) -> list[Path]:
    """The host sockets in ``directory``: only real sockets (or symlinks to
    one) named ``host-*.sock``.  A FIFO, file or directory with such a name
    is no host: listing it would report a phantom, and sweeping it as stale
    would delete someone's file."""
    directory = directory or control_dir()
    return sorted(p for p in directory.glob("host-*.sock") if _is_socket(p))


def _is_socket(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            mode = path.stat().st_mode  # a symlink to a host's socket is that host
    except OSError:
        return False  # gone, or a dangling link
    return stat.S_ISSOCK(mode)


def pid_of(path: Path) -> int | None:
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


__all__ = [
    "ENV_DIR",
    "control_dir",
    "is_stale",
    "pid_of",
    "require_unix_sockets",
    "socket_paths",
    "sweep_stale",
]
