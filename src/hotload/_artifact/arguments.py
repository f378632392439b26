"""One rule for a call's arguments, in process and isolated.

A plugin that works isolated must not break when it moves in process, or
back (issue 19 item 10), so what each parameter accepts is decided here, once:
the in-process router (``_engine.registry``) and the isolated wire
(``_process.wire``) both apply it.

The rule, by parameter (the C type in the prototype):

- ``const char *`` (not followed by ``size_t``): ``bytes``, ``bytearray``,
  ``str`` (encoded as UTF-8; lone surrogates as the bytes they escape, the
  way a service gets a ``char *`` as ``str``), ``None`` or ``ffi.NULL`` for
  NULL, or a cffi ``char`` array or pointer.  A string holding a NUL is
  refused: C would see only its start.
- ``_Bool``: ``True``, ``False``, ``0`` or ``1``; anything else is refused
  (no truth value of an arbitrary object, no 2 read as true).
- ``float``: a number within the float range; a finite one beyond
  ``FLT_MAX`` (after rounding) is refused, never turned into infinity
  (infinities and NaN pass as themselves).
- ``T *`` (``T`` a number type, usually followed by its ``size_t``
  length): a list or tuple of numbers, a cffi array or pointer, NULL, or any
  object with the buffer protocol (``bytes``, ``bytearray``, ``array``,
  ``memoryview``: its raw bytes).  Unless ``const``, the callee's writes
  reach the caller's object: a list, a writable buffer, a cffi array; a tuple
  or a read-only buffer is a temporary copy (its writes are dropped).  A
  length past the end of a list or buffer object is refused.
- ``S *`` (``S`` a plugin's struct): ``p.new(...)``, NULL, a cffi array of
  ``S``, a list of initializers (a temporary array), or a struct value
  (``ptr[0]``, a struct a call returned), passed by its address: the callee
  reads, and unless ``const`` writes, that very struct.
- Everything else is cffi's own rule (integers in range, a struct by value
  as ``ptr[0]`` or an initializer).  A bad initializer (an unknown field,
  too many values) is refused like any bad argument.

Refused is a ``SignatureError`` in both modes.  In process nothing here runs
on a call that cffi takes as it is: the router calls the cffi function
directly, and the conversions run only on cffi's refusal (``convert``, from
the router's bad-call path).  The three things cffi takes without complaint
but the rule refuses or treats otherwise (a float beyond ``FLT_MAX``, a NUL
in ``bytes``, a list whose callee writes must come back) are looked at
before the call, for the exports that have such a parameter only
(``checks``: the compiled router's ``Checked`` does it in C).  ``pinned()``
calls are raw cffi calls: cffi's own rule, nothing added.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import signatures

ffi = signatures.ffi
CData = ffi.CData
FLT_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]

# the kinds of parameter the rule looks at ("" is cffi's own rule)
TEXT, BOOL, FLOAT, BUF, SPTR, SVAL = "text", "bool", "float", "buf", "sptr", "sval"


@dataclass(frozen=True)
class Param:
    kind: str
    const: bool = True
    item: Any = None  # a buffer's element type or a struct pointer's struct (cffi)
    sized: bool = False  # a buffer followed by its size_t length


@dataclass(frozen=True)
class Rules:
    """The rule for one prototype's parameters."""

    params: tuple[Param, ...]
    #: one byte per parameter for the check before an in-process call (``Checked``):
    #: ``f`` a float, ``s`` a ``const char *``, ``o`` a buffer the callee writes, ``v`` a
    #: struct by value (an initializer goes the long way: cffi leaves the fields it does
    #: not name as whatever was in memory, not zero); ``-`` none.
    #: Empty when no parameter needs one: the cffi function is called as it is.
    checks: bytes

    def convert(self, args: tuple[Any, ...]) -> tuple[tuple[Any, ...], Callable[[], None]] | None:
        """The arguments as cffi takes them, and what to run after the call
        (copying a temporary back into the caller's list); None when the rule
        changes nothing (cffi's refusal stands).  ``TypeError``,
        ``ValueError`` or ``OverflowError`` with the reason when the rule
        refuses an argument."""
        if len(args) != len(self.params):
            return None
        out = list(args)
        backs: list[Callable[[], None]] = []
        kept: list[Any] = []
        changed = False
        for i, (p, a) in enumerate(zip(self.params, args, strict=True)):
            n = i + 1
            if p.kind == TEXT:
                b = text(a, n)
                if b is not a or a is None:
                    out[i], changed = (ffi.NULL if b is None else b), True
            elif p.kind == BOOL:
                check_bool(a, n)
            elif p.kind == FLOAT:
                check_float(a, n)
            elif p.kind == BUF:
                count = args[i + 1] if p.sized and i + 1 < len(args) else None
                made = _buffer(p, a, n, count)
                if made is not None:
                    out[i], back = made
                    changed = True
                    if back is not None:
                        backs.append(back)
            elif p.kind == SPTR and isinstance(a, CData) and ffi.typeof(a) is p.item:
                out[i], changed = ffi.addressof(a), True  # a struct value, by its address
            elif p.kind == SVAL and isinstance(a, (dict, list, tuple)):
                made = ffi.new(f"{p.item.cname} *", a)  # zeroed, then the initializer
                out[i], changed = made[0], True
                kept.append(made)  # owns the memory out[i] reads: alive until after()
        if not changed:
            return None

        def after() -> None:
            for back in backs:
                back()
            kept.clear()

        return tuple(out), after


@functools.lru_cache(maxsize=1024)
def rules(proto: str) -> Rules:
    """The rule for ``proto``'s parameters (cached: a reload of the same
    prototypes computes nothing)."""
    ctype = signatures.pointer_type(proto)
    texts = split_params(proto)
    args = list(ctype.args)
    params: list[Param] = []
    for i, a in enumerate(args):
        txt = texts[i] if i < len(texts) else ""
        const = txt.startswith("const") or " const" in txt.split("*")[0]
        nxt = args[i + 1] if i + 1 < len(args) else None
        sized = nxt is not None and nxt.cname == "size_t"
        if a.kind == "primitive" and a.cname in ("_Bool", "float"):
            params.append(Param(BOOL if a.cname == "_Bool" else FLOAT))
        elif a.kind == "pointer" and a.item.kind == "primitive":
            item = a.item
            if item.cname == "char" and not sized:
                params.append(Param(TEXT) if const else Param(""))  # char *: cffi's rule
            elif item.cname in ("void", "long double") or "complex" in item.cname:
                params.append(Param(""))
            else:
                params.append(Param(BUF, const, item, sized))
        elif a.kind == "pointer" and a.item.kind == "struct":
            params.append(Param(SPTR, const, a.item))
        elif a.kind == "struct":
            params.append(Param(SVAL, True, a))
        else:
            params.append(Param(""))
    checks = bytes(
        ord("f")
        if p.kind == FLOAT
        else ord("s")
        if p.kind == TEXT
        else ord("o")
        if p.kind == BUF and not p.const
        else ord("v")
        if p.kind == SVAL
        else ord("-")
        for p in params
    )
    return Rules(tuple(params), checks if checks.strip(b"-") else b"")


def checked(fn: Callable[..., Any], checks: bytes) -> Callable[..., Any]:
    """``fn`` behind ``checks`` (``Rules.checks``): the Python router's
    version of the compiled ``_crouter.Checked``."""
    todo = [(i, chr(c)) for i, c in enumerate(checks) if c != ord("-")]

    def call(*args: Any) -> Any:
        for i, kind in todo:
            if i >= len(args):
                break
            a = args[i]
            if kind == "f":
                check_float(a, i + 1)
            elif kind == "s" and isinstance(a, bytes) and b"\0" in a:
                raise ValueError(f"argument {i + 1}: a C string cannot hold a NUL byte")
            elif kind == "o" and isinstance(a, (list, bytes)):
                what = type(a).__name__
                raise TypeError(f"argument {i + 1}: a {what} for a buffer the callee writes")
            elif kind == "v" and isinstance(a, (dict, list, tuple)):
                raise TypeError(f"argument {i + 1}: an initializer for a struct by value")
        return fn(*args)

    return call


def split_params(proto: str) -> list[str]:
    """The parameter texts of ``ret(params)`` at depth 0 (cffi drops ``const``,
    which decides whether a buffer is copied back, so we read the text)."""
    inner = proto[proto.index("(") + 1 : proto.rindex(")")]
    out, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch in "([" and 1 or 0
        depth -= ch in ")]" and 1 or 0
        cur += ch
    if cur.strip() and cur.strip() != "void":
        out.append(cur.strip())
    return out


# ---- the rule for one argument, shared with the wire ------------------------------------


def text(value: Any, n: int) -> Any:
    """A ``const char *`` argument: ``bytes``, or None for NULL, or ``value``
    itself when cffi passes it as it is (``bytes`` without NUL, a cdata);
    ``TypeError``/``ValueError`` when the rule refuses it."""
    if isinstance(value, bytes):
        return _no_nul(value, n)
    if isinstance(value, CData):
        return value
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, bytearray):
        value = bytes(value)
    else:
        raise TypeError(
            f"argument {n}: expected a string (str, bytes, bytearray) or None for a C string, "
            f"got {type(value).__name__}"
        )
    return _no_nul(value, n)


def _no_nul(value: bytes, n: int) -> bytes:
    if b"\0" in value:
        raise ValueError(f"argument {n}: a C string cannot hold a NUL byte (at {value.index(0)})")
    return value


def check_bool(value: Any, n: int) -> None:
    if isinstance(value, int) and value in (0, 1):  # True and False are ints
        return
    if isinstance(value, int):
        raise OverflowError(f"argument {n}: {value} is not 0 or 1 for a _Bool")
    raise TypeError(f"argument {n}: a _Bool takes True, False, 0 or 1, not {type(value).__name__}")


def check_float(value: Any, n: int) -> None:
    """Refuse a finite number that a float can only hold as infinity (C's
    conversion would silently make it one)."""
    if isinstance(value, float):
        d = value
    elif isinstance(value, int):
        d = float(value)  # OverflowError past a double, as cffi's
    else:
        try:
            d = float(value)
        except (TypeError, ValueError):
            return  # not a number: cffi's own refusal
    if math.isfinite(d) and abs(d) > FLT_MAX and _rounds_to_inf(d):
        raise OverflowError(
            f"argument {n}: {value!r} is beyond the range of a float (FLT_MAX {FLT_MAX!r})"
        )


def _rounds_to_inf(d: float) -> bool:
    try:
        struct.pack("<f", d)
    except OverflowError:
        return True
    return False


def _buffer(
    p: Param, value: Any, n: int, count: Any
) -> tuple[Any, Callable[[], None] | None] | None:
    """A buffer argument as cffi takes it, and the copy back into a list;
    None when cffi takes ``value`` as it is."""
    if isinstance(value, CData) or value is None:
        return None
    size = ffi.sizeof(p.item)
    if isinstance(value, list) and not p.const:
        arr = ffi.new(f"{p.item.cname}[]", value)  # TypeError/OverflowError: a bad element
        _fits(len(value), count, n)
        # what the callee was given to write: its length's worth (isolated, what travels)
        m = min(count, len(value)) if isinstance(count, int) and count >= 0 else len(value)

        def back() -> None:
            value[:m] = arr[0:m]

        return arr, back
    if isinstance(value, (list, tuple)):
        return None  # cffi makes a temporary array of it
    try:
        view = memoryview(value)
    except TypeError:
        return None  # not a buffer: cffi's refusal stands
    _fits(view.nbytes // size, count, n)
    if p.const or not view.readonly:
        return ffi.from_buffer(f"{p.item.cname}[]", value, require_writable=not p.const), None
    arr = ffi.new(f"{p.item.cname}[]", view.nbytes // size)  # read-only: a temporary copy
    ffi.memmove(arr, view.cast("B").tobytes()[: ffi.sizeof(arr)], ffi.sizeof(arr))
    return arr, None


def _fits(have: int, count: Any, n: int) -> None:
    if isinstance(count, int) and not isinstance(count, bool) and count > have:
        raise TypeError(
            f"argument {n + 1}: length {count!r} is more than the {have} element(s) in the "
            f"buffer given as argument {n}"
        )
