"""How a canary splits a plugin's calls between two versions, sticky by key.

A route (one per plugin) holds the gate new calls enter.  While a canary runs
it holds a second gate, the candidate's, and a threshold: a call whose key
hashes below it goes to the candidate, every other call to the baseline.  The
key is one argument (``key=0``: the first, a player id) or ``keyfn(*args)``.
So a given key lands on the same version for as long as the canary runs, and
widening the share only moves keys from the baseline to the candidate, never
back (the threshold only grows).

The hash is the same on every host for an int (player 42 is on the same side
on every server of a fleet), a str or bytes (FNV-1a of the bytes, not
Python's per-process salted ``hash``); any other key uses ``hash()``, stable
within one process.  A key that cannot be hashed (or a ``keyfn`` that raises)
sends the call to the baseline and is counted (``key_errors``).  An export
called with fewer arguments than the key's index has no key: its calls are
split by a counter, in the share.

The compiled router does this in ``_crouter.c`` (``route_pick``, same hash);
``PyRoute`` here is the Python router's route.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

_M64 = (1 << 64) - 1
SCALE = 1 << 32  # a share is a threshold of 2**32 on the hash's top 32 bits


def _mix(z: int) -> int:
    """splitmix64's finaliser (every input bit moves every output bit)."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for c in data:
        h = ((h ^ c) * 0x100000001B3) & _M64
    return h


def key_hash(key: object) -> int:
    """The 64-bit hash a canary's split uses for ``key`` (``_crouter.key_hash``
    is the same function in C)."""
    if isinstance(key, int):  # its value, as C reads it (not a subclass's __int__ or __and__)
        return _mix(int.__and__(key, _M64))
    if isinstance(key, str):
        return _mix(_fnv1a(str.encode(key, "utf-8")))
    if isinstance(key, (bytes, bytearray)):
        return _mix(_fnv1a(memoryview(key).tobytes()))
    return _mix(hash(key) & _M64)


def threshold(share: float) -> int:
    """The threshold of 2**32 that sends ``share`` of the keys to the canary."""
    return min(SCALE, round(share * SCALE))


def to_canary(key: object, share: float) -> bool:
    """Whether a call keyed ``key`` goes to a canary taking ``share``."""
    return (key_hash(key) >> 32) < threshold(share)


class PyRoute:
    """Where a plugin's calls go now: the gate of the current version (or of
    a sentinel), and while a canary runs the candidate's gate and the split.
    A separate slotted object because a class with ``__getattr__``
    (``Plugin``) defeats CPython's attribute specialisation: reading
    ``plugin._current`` would cost ~40 ns a call."""

    __slots__ = (
        "gate",
        "canary",
        "threshold",
        "key",
        "keyfn",
        "recorder",
        "_unkeyed",
        "_key_errors",
    )

    def __init__(self, gate: Any) -> None:
        self.gate = gate
        self.canary: Any = None
        self.threshold = 0
        self.key = 0
        self.keyfn: Callable[..., Any] | None = None
        self.recorder: Any = None  # host.record: a recording.PyRecorder
        self._unkeyed = itertools.count()
        self._key_errors = itertools.count()  # next() is atomic under the GIL

    @property
    def key_errors(self) -> int:
        return int(repr(self._key_errors)[6:-1])  # "count(N)"

    def split(self, canary: Any, threshold: int, key: int, keyfn: Any) -> None:
        if not 0 <= threshold <= SCALE or key < 0 or (keyfn is not None and not callable(keyfn)):
            raise ValueError("split(canary, threshold <= 2**32, key >= 0, keyfn)")
        # canary last: a call that sees it sees the threshold and the key too
        self.threshold, self.key, self.keyfn = threshold, key, keyfn
        self.canary = canary

    def unsplit(self) -> None:
        self.canary = None
        self.keyfn = None

    def promote(self) -> None:
        if self.canary is None:
            raise ValueError("promote(): the route has no canary")
        self.gate = self.canary  # between these two stores every call goes to the canary
        self.canary = None
        self.keyfn = None

    def pick(self, *args: Any) -> Any:
        """The gate this call goes to."""
        try:
            if self.keyfn is not None:
                h = key_hash(self.keyfn(*args))
            elif self.key < len(args):
                h = key_hash(args[self.key])
            else:
                h = _mix(next(self._unkeyed) & _M64)
        except Exception:
            next(self._key_errors)
            return self.gate
        canary = self.canary
        if canary is not None and (h >> 32) < self.threshold:
            return canary
        return self.gate
