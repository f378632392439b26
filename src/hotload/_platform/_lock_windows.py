"""Windows directory lock: ``msvcrt.locking`` on a file, as filelock does it.

``msvcrt.locking(fd, LK_NBLCK, 1)`` takes a mandatory lock on the first byte
(``LockFile`` underneath): another process's attempt fails at once, and
Windows releases it when the holder's handle goes away, also when the
process dies.  A locked, open ``.lock`` cannot be deleted either, so a sweep
could not remove a live host's directory even if it tried.

"Private" cannot be read from mode bits on Windows (they do not reflect the
ACL): the work directory lives under the user's own profile (``%TEMP%`` or
``HOTLOAD_WORKDIR``), whose ACL is the protection, and the check here refuses
what can be planted inside it, a symlink or junction (a reparse point).

``msvcrt`` is imported on first use, so this module imports on any OS; the
tests drive it on Linux with a recording fake in its place.
"""

from __future__ import annotations

import functools
import getpass
import importlib
import os
import stat
import time
from pathlib import Path
from typing import Any

# O_NOINHERIT: the fd is not inherited by child processes (the CLOEXEC of the
# CRT); O_BINARY: no newline translation.  Symlinks are refused by the
# reparse-point check on the directory instead of O_NOFOLLOW, which Windows lacks.
OPEN_FLAGS = getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_BINARY", 0)
FILE_ATTRIBUTE_REPARSE_POINT = 0x400


@functools.cache
def _msvcrt() -> Any:
    return importlib.import_module("msvcrt")


def _lock(fd: int) -> bool:
    """Lock byte 0 of ``fd`` without waiting; False when someone else has it."""
    crt = _msvcrt()
    try:
        crt.locking(fd, crt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def create_locked(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, 0o600)
    try:
        if not _lock(fd):
            raise BlockingIOError(f"{path}: locked by another process")
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | OPEN_FLAGS)
    try:
        locked = _lock(fd)
    except BaseException:
        os.close(fd)
        raise
    if not locked:
        os.close(fd)
        return None  # a live host holds it
    return fd


def wait_lock(path: Path, timeout: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | OPEN_FLAGS, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while not _lock(fd):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{path}: still locked by another process")
            time.sleep(0.02)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    """Unlock before closing: the CRT documents that a region must be
    unlocked before its file is closed (the OS frees it later otherwise)."""
    crt = _msvcrt()
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        crt.locking(fd, crt.LK_UNLCK, 1)
    except OSError:
        pass
    finally:
        os.close(fd)


def user_tag() -> str:
    return getpass.getuser()


def not_private(st: os.stat_result) -> str | None:
    attrs = getattr(st, "st_file_attributes", 0)
    if attrs & FILE_ATTRIBUTE_REPARSE_POINT or stat.S_ISLNK(st.st_mode):
        return "is a symlink or junction (a reparse point)"
    return None
