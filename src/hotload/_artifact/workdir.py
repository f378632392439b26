"""Private, per-host directories for versioned copies.

Layout::

    <base>/                      0700, owned by us: $HOTLOAD_WORKDIR,
                                 $XDG_RUNTIME_DIR/hotload or <tmp>/hotload-<uid>
    <base>/host-<pid>-<rand>/    one per Host, 0700, holds a locked ``.lock``
        double_xp.v3.k2j4.so     one file per loaded version, created O_EXCL

A host holds an exclusive lock on its ``.lock`` for its lifetime, so a later
host can tell a crashed host's directory (lock free) from a live one and
sweep it, without trusting PIDs that the kernel may have reused.  The lock
and what "private" means are the platform's (``_platform.dirlock``: ``flock``
and mode 0700 on POSIX, ``msvcrt.locking`` and no reparse point on Windows).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

from .._errors import HotloadError, resource_error
from .._platform import dirlock

log = logging.getLogger(__name__)
_STALE_UNLOCKED_AGE = 3600.0  # a dir with no lock file yet is only swept when this old


def runtime_base(sub: str = "hotload") -> Path:
    """The per-user private base directory, created 0700 if missing."""
    env = os.environ.get("HOTLOAD_WORKDIR")
    if env:
        base = Path(env).absolute()
    elif os.environ.get("XDG_RUNTIME_DIR") and _owned_private(Path(os.environ["XDG_RUNTIME_DIR"])):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / sub
    else:
        base = Path(tempfile.gettempdir()) / f"{sub}-{dirlock.user_tag()}"
    ensure_private_dir(base)
    return base


def _owned_private(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and dirlock.not_private(st) is None


def _create_locked(base: Path) -> tuple[Path, int]:
    """Make ``host-<pid>-<rand>`` whole before anyone can see it: build it
    under a name a sweep never matches, lock its ``.lock``, then rename it.
    A sweep therefore never meets a live host's directory unlocked."""
    staging = Path(tempfile.mkdtemp(prefix=".new-host-", dir=base))
    fd = dirlock.create_locked(staging / ".lock")  # nobody else knows this directory yet
    final = base / f"host-{os.getpid()}-{staging.name.removeprefix('.new-host-')}"
    os.rename(staging, final)
    return final, fd


def ensure_private_dir(path: Path, *, what: str = "work directory") -> None:
    """Create ``path`` 0700 or check that an existing one is ours and private.

    A directory another user can write to (or a symlink planted in a shared
    /tmp) would let them swap a versioned copy between our write and our
    ``dlopen``: refuse it, naming the path and the problem.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        doing = f"{path}: cannot create the {what}"
        raise resource_error(exc, doing) or HotloadError(f"{doing}: {exc.strerror}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise HotloadError(f"{path}: {what} is a symlink or not a directory; refusing to use it")
    problem = dirlock.not_private(st)
    if problem:
        raise HotloadError(f"{path}: {what} {problem}")


class WorkDir:
    """One host's private directory of versioned copies."""

    def __init__(self, base: str | os.PathLike[str] | None = None) -> None:
        # absolute: the loader compares the path dlopen reports with the copy's
        self.base = Path(base).absolute() if base is not None else runtime_base()
        ensure_private_dir(self.base)
        try:
            swept = sweep(self.base)
        except OSError as exc:  # EMFILE listing it: say so; anything else, as it is
            error = resource_error(exc, f"{self.base}: cannot sweep the work directory")
            if error is None:
                raise
            raise error from None
        if swept:
            log.info(
                "swept %d version cop%s left by crashed hosts in %s",
                swept,
                "y" if swept == 1 else "ies",
                self.base,
            )
        try:
            self.path, self._lock_fd = _create_locked(self.base)
        except OSError as exc:
            what = f"{self.base}: cannot create a work directory"
            raise resource_error(exc, what) or HotloadError(f"{what}: {exc.strerror}") from None
        self._dir = str(self.path)  # versioned copies are named as str (see write_copy)

    def write_copy(
        self, stem: str, seq: int, data: bytes, suffix: str
    ) -> tuple[str, tuple[int, int]]:
        """Write ``data`` to a new, never-before-used file; return its path and
        ``(st_dev, st_ino)``, the identity the kernel's mapping list shows.

        The path is a ``str``, never a ``pathlib.Path``: pathlib (3.12 and
        older) passes every name it parses through ``sys.intern``, and from
        Python 3.12 an interned string is immortal, so a ``Path`` of each
        version's unique name would keep that name in memory for good (a host
        reloading all day grew by one name per reload)."""
        path = os.path.join(self._dir, f"{stem}.v{seq}.{secrets.token_hex(3)}{suffix}")
        try:
            return self._write(path, data)
        except OSError as exc:
            raise HotloadError(f"{path}: cannot write the versioned copy: {exc.strerror}") from None

    def _write(self, path: str, data: bytes) -> tuple[str, tuple[int, int]]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | dirlock.OPEN_FLAGS, 0o500)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return path, (st.st_dev, st.st_ino)

    def files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.name != ".lock")

    def close(self) -> None:
        """Delete the directory and every copy in it (a mapped copy stays
        valid for the kernel: unlinking only drops the name)."""
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            dirlock.release(self._lock_fd)


def sweep(base: Path) -> int:
    """Remove host directories whose owner is gone; return the files removed.
    Several hosts may sweep at once: a directory vanishing under us is fine."""
    removed = 0
    for entry in base.glob(".new-host-*"):  # being created right now, or a crash mid-creation
        with contextlib.suppress(OSError):
            if time.time() - entry.stat().st_mtime > _STALE_UNLOCKED_AGE:
                removed += _remove(entry)
    for entry in base.glob("host-*"):
        lock = entry / ".lock"
        try:
            fd = dirlock.try_lock(lock)
        except FileNotFoundError:  # no lock file (or already swept by another host): only when old
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > _STALE_UNLOCKED_AGE:
                    removed += _remove(entry)
            continue
        except OSError:
            continue
        if fd is None:
            continue  # a live host holds it
        try:
            removed += _remove(entry)
        finally:
            dirlock.release(fd)
    return removed


def _remove(entry: Path) -> int:
    try:
        count = sum(1 for p in entry.iterdir() if p.name != ".lock")
    except FileNotFoundError:
        return 0  # another host swept it first
    shutil.rmtree(entry, ignore_errors=True)
    return count


# ---- a worker's copy, where no work directory is visible ----------------------------
def anonymous_copy(data: bytes, name: str) -> str:
    """``data`` in an anonymous file (``memfd``), as a path to open
    (``/proc/self/fd/N``): a sandboxed worker, which can see no copy on disk,
    opens the bytes its host checked.  The file stays open until
    ``drop_anonymous``, to call only once no image opened from it is loaded:
    the dynamic loader knows an image by the path it was opened from, and a
    later file given the same descriptor number would be taken for it."""
    fd = os.memfd_create(f"hotload-{name or 'plugin'}", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as fh:
            fh.write(data)
    except BaseException:
        os.close(fd)
        raise
    return f"/proc/self/fd/{fd}"


def drop_anonymous(path: str) -> None:
    """Close an ``anonymous_copy`` whose images are all closed."""
    if path.startswith("/proc/self/fd/"):
        with contextlib.suppress(OSError, ValueError):
            os.close(int(path.rsplit("/", 1)[1]))
