"""Key presses from a Windows console: ``msvcrt.kbhit``/``getwch``.

The console already delivers keys one at a time without echo to
``getwch``; arrows arrive as two characters, ``\\xe0`` (or ``\\x00``) then
a scan code.  ``msvcrt`` is imported on first use, so this module imports
on any OS (mypy checks it against the Protocol on Linux).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
from collections.abc import Callable, Iterator
from typing import Any

_SCAN = {"H": "up", "P": "down", "M": "right", "K": "left"}
_SINGLE = {"\r": "enter", "\n": "enter", "\x1b": "esc", "\x08": "backspace"}


@functools.cache
def _msvcrt() -> Any:
    return importlib.import_module("msvcrt")


@contextlib.contextmanager
def raw_keys(fd: int) -> Iterator[Callable[[float], list[str]]]:
    crt = _msvcrt()

    def read(timeout: float) -> list[str]:
        deadline = time.monotonic() + max(timeout, 0.0)
        while not crt.kbhit():
            if time.monotonic() >= deadline:
                return []
            time.sleep(0.02)  # the console has no waitable "key ready" for select
        keys: list[str] = []
        while crt.kbhit():
            ch = crt.getwch()
            if ch in ("\x00", "\xe0"):
                name = _SCAN.get(crt.getwch())
                if name:
                    keys.append(name)
            elif ch in _SINGLE:
                keys.append(_SINGLE[ch])
            elif ch.isprintable():
                keys.append(ch)
        return keys

    yield read
