"""Inputs that crash an isolated worker, kept away from it.

A plugin that crashes on one rare input (a player id, a malformed name)
used to crash its worker every time that input came back, and the
crash-loop limit then stopped the plugin for every caller: 460k failed calls
against 32k good ones in 5 s, from one input in 2,000 (issue 22).  Here a
version counts the crashes of each input (an export and its arguments); one
that crashed ``Isolated(quarantine=)`` times is refused from then on, before
it reaches the worker, and the crash-loop limit counts distinct inputs.

An input is known by its value: ints, floats, bools, None, str and bytes
(long ones by a digest, so a kept fingerprint stays small).  An argument
that is a cffi pointer or struct has no value the host can compare (what it
points at may change), so such a call is never quarantined and its crashes
count one by one, as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import Any

MAX_KEPT = 1024  # inputs remembered per version (crash counts and refusals)
_LONG = 256  # str or bytes longer than this are kept as a digest


def fingerprint(fname: str, args: tuple[Any, ...]) -> Hashable | None:
    """What identifies a call's input, or None when an argument has no value
    the host can compare."""
    out: list[Hashable] = [fname]
    for a in args:
        t = type(a)
        if t is int or t is bool or a is None:
            out.append((t.__name__, a))
        elif t is float:
            out.append(("float", repr(a)))  # a NaN is the same input as itself
        elif t is str or t is bytes or t is bytearray:
            data = a.encode("utf-8", "surrogatepass") if t is str else bytes(a)
            if len(data) > _LONG:
                data = hashlib.blake2b(data, digest_size=16).digest()
            out.append((t.__name__, data))
        else:
            return None
    return tuple(out)


class Quarantine:
    """One version's crash counts per input and the inputs it refuses
    (``refused`` is empty until the first quarantine: the call path tests
    only that)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # crashes of one input before it is refused; 0: never
        self.crashes: dict[Hashable, int] = {}
        self.refused: set[Hashable] = set()
        self.calls_refused = 0

    def crashed(self, fp: Hashable) -> bool:
        """Count a crash of ``fp``; True when that quarantines it."""
        if not self.limit or fp in self.refused:
            return False
        n = self.crashes.pop(fp, 0) + 1
        if n >= self.limit and len(self.refused) < MAX_KEPT:
            self.refused.add(fp)
            return True
        if len(self.crashes) >= MAX_KEPT:
            del self.crashes[next(iter(self.crashes))]  # the longest unseen
        self.crashes[fp] = n
        return False
