"""Handles: integers that stand for host objects (Go's ``cgo.Handle``).

A plugin stores a handle (an ``int64_t``) across swaps and passes it back to
host services, which ``resolve`` it.  A handle is ``salt << 32 | serial``: the
salt is random per host, so a handle from another host (or a made-up number)
is refused, and serials are never reused, so a released handle stays
refused instead of silently meaning a newer object.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

from .._errors import HandleError


class HandleTable:
    def __init__(self) -> None:
        self._salt = secrets.randbelow((1 << 30) - 1) + 1
        self._next = 1
        self._objects: dict[int, Any] = {}
        self._lock = threading.Lock()

    def new(self, obj: Any) -> int:
        with self._lock:
            serial = self._next
            if serial >= 1 << 32:
                raise HandleError("this host has issued 2**32 handles; no more can be made")
            self._next += 1
            self._objects[serial] = obj
        return self._salt << 32 | serial

    def resolve(self, handle: int) -> Any:
        serial = self._serial(handle)
        try:
            return self._objects[serial]
        except KeyError:
            raise HandleError(self._why(handle, serial)) from None

    def release(self, handle: int) -> Any:
        """End the handle; returns its object."""
        serial = self._serial(handle)
        with self._lock:
            try:
                return self._objects.pop(serial)
            except KeyError:
                raise HandleError(self._why(handle, serial)) from None

    def __len__(self) -> int:
        return len(self._objects)

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()

    def _serial(self, handle: int) -> int:
        if not isinstance(handle, int) or isinstance(handle, bool):
            raise HandleError(f"a handle is an int, not {type(handle).__name__}")
        if handle >> 32 != self._salt:
            raise HandleError(
                f"handle {handle:#x} was not issued by this host (from another host, or forged)"
            )
        return handle & 0xFFFFFFFF

    def _why(self, handle: int, serial: int) -> str:
        if 0 < serial < self._next:
            return f"handle {handle:#x} was released (stale)"
        return f"handle {handle:#x} was never issued by this host (forged)"
