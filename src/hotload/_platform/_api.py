"""What hotload needs from the operating system, one ``Protocol`` per concern.

Each concern has a POSIX and a Windows implementation, written as a plain
module whose top-level names match the Protocol; ``_platform/__init__`` picks
one module per concern, once, at import time.  Modules satisfy a Protocol in
mypy's eyes (``loader: DynamicLoader = _posix`` checks every attribute and
signature), and ``__init__`` makes exactly that assignment for *both*
implementations under ``TYPE_CHECKING``, so a Windows module that drifts from
its POSIX twin fails the type check on Linux, where nobody runs it.

Nothing here imports an implementation: this module is the contract only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class LoadedObject:
    """One object the dynamic loader has mapped in this process, as
    ``DynamicLoader.walk_loaded`` sees it: the path it was loaded from
    (empty for the main program), its load base, and the [start, end) of
    each readable ``PT_LOAD`` segment."""

    name: str
    base: int
    readable: tuple[tuple[int, int], ...]


class DynamicLoader(Protocol):
    """Opens, looks into and closes native images (``dlopen`` / ``LoadLibraryExW``).

    A handle is the loader's own opaque value as an ``int``; every failure is
    a ``LoadError`` naming ``path`` and the loader's own words for the cause.
    """

    @property
    def SUFFIX(self) -> str:  # noqa: N802 - a module constant in both implementations
        """File suffix of a plugin on this OS (``.so``, ``.dylib``, ``.dll``)."""
        ...

    def open_image(self, path: str, search_dir: str | None = None) -> int:
        """Open ``path`` with every import resolved now; ``search_dir`` is
        where the plugin's own dependencies live (its source directory)."""
        ...

    def close_image(self, handle: int, path: str) -> None:
        """Drop one reference to the image (``path`` is for messages)."""
        ...

    def symbol(self, handle: int, name: str) -> int | None:
        """Address of the export ``name``, None when it is not exported."""
        ...

    def symbols(self, handle: int, names: list[str]) -> list[int | None]:
        """``symbol`` for each of ``names``, in order (one call for a whole plugin)."""
        ...

    def image_path(self, handle: int) -> str | None:
        """The file the loader recorded for ``handle`` (None when unknown)."""
        ...

    def loader_has(self, path: str) -> bool:
        """Is an image opened from ``path`` still loaded?  Must not take a
        lasting reference, or the probe would keep the image alive."""
        ...

    def mapped_ranges(self, file_id: tuple[int, int]) -> int:
        """Bytes of the file ``(st_dev, st_ino)`` mapped right now; -1 when
        the OS cannot tell (callers then rely on ``loader_has``)."""
        ...

    def maps_snapshot(self) -> AbstractContextManager[None]:
        """A block within which ``mapped_ranges`` on this thread answers from
        one reading of the process's mappings: a listing of every version
        costs one read, not one per image."""
        ...

    def open_global(self, path: str) -> None:
        """Load ``path`` for good, its symbols visible to every library loaded
        after it (``RTLD_GLOBAL``): the host-services library plugins bind to.
        ``LoadError`` naming the file when it cannot be loaded."""
        ...

    def walk_loaded(self, visit: Callable[[LoadedObject], None]) -> None:
        """Call ``visit`` on every loaded object, in load order, with the
        loader's lock held, so that no object is unmapped while ``visit``
        reads its memory (``read_pointer``).  An exception in ``visit`` is
        logged and the walk goes on.  ``NotImplementedError`` where the
        loader's list cannot be walked."""
        ...

    def read_pointer(self, address: int) -> int:
        """The pointer-sized value at ``address`` in this process (0 for
        NULL).  Unchecked: only for a slot inside a readable segment of an
        object that ``walk_loaded`` is visiting right now."""
        ...


class ImageFacts(Protocol):
    """What a format check learnt about a file (``ElfFacts``, ``PeFacts``)."""

    @property
    def bits(self) -> int: ...

    @property
    def machine(self) -> int: ...

    @property
    def machine_name(self) -> str: ...

    @property
    def little_endian(self) -> bool: ...

    @property
    def hotload_section(self) -> bytes | None: ...


class BinaryFormat(Protocol):
    """Checks a candidate's bytes *before* the loader sees them (ELF / PE).

    The loader's own answer to a bad file is a crash (glibc, truncated ELF)
    or one opaque code (Windows 193); the checker names the cause instead.
    """

    def check(
        self,
        data: bytes,
        path: str,
        *,
        expect_machine: int | None = None,
        any_machine: bool = False,
    ) -> ImageFacts:
        """Validate ``data`` (the whole file) as a loadable library for this
        host; raise ``InvalidPluginError`` naming ``path`` and the cause."""
        ...

    def sniff(self, data: bytes) -> str:
        """What a file is from its first bytes: "elf", "pe", "archive",
        "text" or "binary", so a wrong file is named, not just refused."""
        ...

    def host_machine(self) -> int | None:
        """This interpreter's machine number in the format's own numbering
        (None when the interpreter is not in this format)."""
        ...


class DirectoryLock(Protocol):
    """The lock that tells a live host's work directory from a crashed one's,
    and the rules for what counts as a private directory on this OS.

    A host creates and locks ``<dir>/.lock`` for its lifetime; a sweep tries
    the same lock without waiting and removes the directory only when it
    gets it.  The OS drops the lock when the holder dies, so no PID (which
    the kernel may reuse) is ever trusted.
    """

    @property
    def OPEN_FLAGS(self) -> int:  # noqa: N802 - a module constant in both implementations
        """Extra ``os.open`` flags for every file in a work directory: do not
        follow a planted symlink, do not leak the fd into child processes."""
        ...

    def create_locked(self, path: Path) -> int:
        """Create ``path`` (it must not exist) 0600 and lock it exclusively
        without blocking; return the fd that holds the lock until ``release``."""
        ...

    def try_lock(self, path: Path) -> int | None:
        """Open the existing ``path`` and try to lock it without blocking: the
        holding fd, or None when another process holds the lock.  Raises
        ``FileNotFoundError`` when there is no such file, ``OSError`` else."""
        ...

    def wait_lock(self, path: Path, timeout: float) -> int:
        """Open ``path`` (created 0600 if missing) and lock it exclusively,
        waiting up to ``timeout`` seconds for another holder to let go (then
        ``TimeoutError``); return the fd that holds the lock until ``release``.
        Used around a start that only one process may do (the embedded Redis)."""
        ...

    def release(self, fd: int) -> None:
        """Unlock and close an fd from ``create_locked``, ``try_lock`` or ``wait_lock``."""
        ...

    def user_tag(self) -> str:
        """Names this user in a shared temp directory (``hotload-<tag>``)."""
        ...

    def not_private(self, st: os.stat_result) -> str | None:
        """Why a directory with this ``lstat`` is not ours alone (None when it
        is): another user could swap a copy between our write and our open."""
        ...


class TerminalKeys(Protocol):
    """Single key presses from the user's terminal, for ``hotload top``:
    no echo, no waiting for Enter, and Ctrl-C still interrupts."""

    def raw_keys(self, fd: int) -> AbstractContextManager[Callable[[float], list[str]]]:
        """Put the terminal on ``fd`` in that mode until the block ends, and
        restore it however the block ends.  The block gets ``read(timeout)``:
        the keys pressed within ``timeout`` seconds (``[]`` when none), each
        one character or a name: ``up``, ``down``, ``left``, ``right``,
        ``enter``, ``esc``, ``backspace``."""
        ...
