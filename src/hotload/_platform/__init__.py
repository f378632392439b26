"""Pick the platform layer for this OS, once, at import time.

One concern, one Protocol in ``_api``, one module per OS (filelock's
``_api`` / ``_unix`` / ``_windows`` split):

========  ==================  ===================  =====================
name      Protocol            POSIX                Windows
========  ==================  ===================  =====================
``dl``    ``DynamicLoader``   ``_posix`` (dlopen)  ``_windows`` (LoadLibraryExW)
binfmt    ``BinaryFormat``    ``_elf``             ``_pe``
dirlock   ``DirectoryLock``   ``_lock_posix``      ``_lock_windows``
========  ==================  ===================  =====================

(``proc``, the worker processes' plumbing, joins this table from
``_proc_api`` / ``_proc_posix`` / ``_proc_windows``; ``keys``, single key
presses for ``hotload top``, from ``TerminalKeys`` / ``_keys_posix`` /
``_keys_windows``.)
``dl``'s walk over every loaded object (``dl_iterate_phdr``, for the
inspector) is its own module, ``_loaded_posix``, which ``_posix`` exports.

Everything above these names (registry, typed calls, hooks, CLI) is shared,
and nothing outside this package imports a POSIX-only or Windows-only module.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ._api import BinaryFormat, DirectoryLock, DynamicLoader, LoadedObject, TerminalKeys

if sys.platform == "win32":  # proven on Linux by tests/test_platform.py and under wine
    from . import _keys_windows as keys
    from . import _lock_windows as dirlock
    from . import _pe as binfmt
    from . import _proc_windows as proc
    from . import _windows as dl
else:
    from . import _elf as binfmt
    from . import _keys_posix as keys
    from . import _lock_posix as dirlock
    from . import _posix as dl
    from . import _proc_posix as proc

if TYPE_CHECKING:
    # mypy reads only one side of the sys.platform test above, so both
    # implementations of every concern are checked against their Protocol
    # here: a drifting signature is a type error on any OS.
    from . import (
        _elf,
        _keys_posix,
        _keys_windows,
        _lock_posix,
        _lock_windows,
        _pe,
        _posix,
        _proc_posix,
        _proc_windows,
        _windows,
    )
    from ._proc_api import WorkerProcess

    _posix_loader: DynamicLoader = _posix
    _windows_loader: DynamicLoader = _windows
    _elf_format: BinaryFormat = _elf
    _pe_format: BinaryFormat = _pe
    _posix_lock: DirectoryLock = _lock_posix
    _windows_lock: DirectoryLock = _lock_windows
    _posix_keys: TerminalKeys = _keys_posix
    _windows_keys: TerminalKeys = _keys_windows
    _posix_proc: WorkerProcess = _proc_posix
    _windows_proc: WorkerProcess = _proc_windows

__all__ = [
    "BinaryFormat",
    "DirectoryLock",
    "DynamicLoader",
    "LoadedObject",
    "TerminalKeys",
    "binfmt",
    "dirlock",
    "dl",
    "keys",
    "proc",
]
