"""POSIX directory lock: ``flock`` on a file, and "private" means 0700 and ours.

``flock`` (not ``fcntl`` record locks) because its lock belongs to the open
file description, not to the process: closing any other fd on the same file
elsewhere in the process cannot drop it, and the kernel drops it when the
holder dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path

OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def create_locked(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # a live host holds it
    except BaseException:
        os.close(fd)
        raise
    return fd


def wait_lock(path: Path, timeout: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | OPEN_FLAGS, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path}: still locked by another process") from None
                time.sleep(0.02)
    except BaseException:
        os.close(fd)
        raise


def release(fd: int) -> None:
    os.close(fd)  # closing the only fd on the description drops the flock


def user_tag() -> str:
    return str(os.getuid())


def not_private(st: os.stat_result) -> str | None:
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not {os.getuid()}"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):o}; it must be private (0700)"
    return None
