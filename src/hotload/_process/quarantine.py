"""Inputs that crash an isolated worker, kept away from it.

A plugin that crashes on one rare input (a player id, a malformed name)
used to crash its worker every time that input came back, and the
crash-loop limit then stopped the plugin for every caller: 460k failed calls
against 32k good ones in 5 s, from one input in 2,000 (issue 22).  Here a
version keeps the inputs (an export and its argument values) that crashed or
hung its worker and have not returned since, the *suspects*; one that fails
``Isolated(quarantine=)`` times in a row is refused from then on, before it
reaches the worker, and the crash-loop limit counts distinct inputs.

"Never returned" is what tells a poison input from bad luck: a crash that
does not follow the input (a plugin that dies every Nth call, a
``cpu_seconds`` limit, a leak) lands on whatever input was running, and that
input then returns on its next call, which clears it.  So the suspects are
fingerprinted on every call once a version has crashed (~1 us a call, on
calls of several microseconds), and not at all before.

An input is known by the value the plugin receives: numbers by value (``13``,
``13.0`` and ``True`` are the numbers C gets; numpy scalars and int
subclasses too, by what they hold, not their ``__int__``; ``-0.0`` is not
``0.0``), ``str`` as its UTF-8 bytes (the same as those bytes or a bytearray
of them), long ones by length and digest.  An argument with no
value the host can compare (a cffi pointer or struct, a list) is never
quarantined: that call's crashes count one by one, as before.  The value is
read when the call starts when the version has suspects; the first crash of
an input reads it after the crash, so a buffer another thread refills during
that call is blamed in its new contents (a caller that shares buffers that
way can turn the quarantine off).  Only a call that returned a result clears
its input: one refused before it reached the worker (a bad argument) did not
run.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

MAX_KEPT = 1024  # suspects, and refused inputs, per version
_LONG = 256  # bytes kept as they are; longer: (length, digest)
_NAN = ("nan",)  # a NaN is the same input as itself (nan != nan)
_NEG_ZERO = ("-0.0",)  # -0.0 == 0.0 in Python, another double in C


def _number(f: float) -> Hashable:
    if f != f:
        return _NAN
    if f == 0.0 and math.copysign(1.0, f) < 0:
        return _NEG_ZERO
    return f


def _value(a: Any) -> Hashable:
    """The value the plugin gets, comparable and small; raises TypeError
    for an argument that has none."""
    t = type(a)
    if t is int or t is bool or a is None:
        same: Hashable = a  # True == 1 == 1.0, as C receives them
        return same
    if t is float:
        return _number(a)
    if t is str:
        return _text(a.encode("utf-8", "surrogatepass"))
    if t is bytes:
        return _text(a)
    # a subclass by what it holds, as the encoder reads it: not through an
    # overridable __str__ or __int__ (the value refused must be the value sent)
    if isinstance(a, (bytearray, memoryview, bytes)):
        return _text(bytes(a))
    if isinstance(a, str):
        return _text(str.encode(a, "utf-8", "surrogatepass"))
    if isinstance(a, int):
        return int.__index__(a)
    if isinstance(a, float):
        return _number(float.__float__(a))
    if isinstance(a, numbers.Integral):  # numpy integers
        return operator.index(a)
    if isinstance(a, numbers.Real):  # numpy floats that are not float subclasses
        return _number(float(a))
    raise TypeError(type(a).__name__)


def _text(data: bytes) -> Hashable:
    if len(data) <= _LONG:
        return ("b", data)
    return ("b#", len(data), hashlib.blake2b(data, digest_size=16).digest())


def fingerprint(fname: str, args: tuple[Any, ...]) -> Hashable | None:
    """What identifies a call's input, or None when an argument has no value
    the host can compare."""
    try:
        return (fname, *(_value(a) for a in args))
    except TypeError:
        return None


@dataclass(eq=False)
class Suspect:
    """An input that crashed or hung the worker, and never returned since.
    Compared by identity: the crash loop counts one suspect once, and an
    input that returned and then crashed again is a new suspect."""

    crashes: int = 0
    hangs: int = 0
    signal_name: str | None = None
    exit_code: int | None = None

    @property
    def failures(self) -> int:
        return self.crashes + self.hangs

    def said(self) -> str:
        """``2 crashes``, ``2 hangs``, ``1 crash and 1 hang``."""
        parts = [
            f"{n} {word}{'' if n == 1 else plural}"
            for n, word, plural in ((self.crashes, "crash", "es"), (self.hangs, "hang", "s"))
            if n
        ]
        return " and ".join(parts)


class Quarantine:
    """One version's suspects and refused inputs (both empty until its first
    crash: the call path tests only that)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # failures in a row before an input is refused; 0: never
        self.suspects: dict[Hashable, Suspect] = {}
        self.refused: dict[Hashable, Suspect] = {}

    def failed(
        self, fp: Hashable, *, hung: bool, signal_name: str | None, exit_code: int | None
    ) -> tuple[str, Suspect | None]:
        """Count a crash (or hang) of ``fp``: ``"quarantined"`` when that
        refuses it, ``"suspect"`` when it is counted, ``"full"`` when the
        version refuses ``MAX_KEPT`` inputs already (the crash then counts
        toward the crash loop like one of an input it cannot tell); and the
        suspect, the crash loop's key for it."""
        if not self.limit:
            return "full", None
        s = self.suspects.pop(fp, None) or Suspect()
        if hung:
            s.hangs += 1
        else:
            s.crashes += 1
        s.signal_name, s.exit_code = signal_name, exit_code
        if s.failures >= self.limit:
            if len(self.refused) >= MAX_KEPT:
                return "full", None
            self.refused[fp] = s
            return "quarantined", s
        if len(self.suspects) >= MAX_KEPT:
            del self.suspects[next(iter(self.suspects))]  # the one suspected longest ago
        self.suspects[fp] = s
        return "suspect", s

    def suspect(self, fp: Hashable) -> None:
        """``fp`` was in flight with others at a crash: nobody can tell whose it
        was, so it is suspected (its next call runs alone) without a failure
        counted (with ``limit`` 1, counting it refused every innocent input in
        flight); a suspect already counted keeps its count."""
        if not self.limit or fp in self.suspects or fp in self.refused:
            return
        if len(self.suspects) >= MAX_KEPT:
            del self.suspects[next(iter(self.suspects))]  # the one suspected longest ago
        self.suspects[fp] = Suspect()

    def returned(self, fp: Hashable) -> None:
        """``fp`` ran to its end: not a poison input (its crashes were someone else's)."""
        self.suspects.pop(fp, None)


def preview(args: tuple[Any, ...]) -> str:
    """``(1337, 'x')``: a call's arguments in a few characters, for the log,
    the journal and the error; a long string or buffer is cut before its
    ``repr`` is taken (a 50 MB argument cost 0.6 s a refusal), and ``repr``
    escapes control characters."""
    shown = []
    for a in args:
        if isinstance(a, (str, bytes, bytearray)) and len(a) > 40:
            shown.append(f"{a[:40]!r}... ({len(a):,} long)")
        else:
            text = repr(a)
            shown.append(text if len(text) <= 60 else text[:57] + "...")
    text = ", ".join(shown)
    return f"({text if len(text) <= 120 else text[:117] + '...'})"
