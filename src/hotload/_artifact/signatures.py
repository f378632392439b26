"""C signatures as cffi types.

A plugin declares each export's C type as text, e.g. ``"int64_t(int64_t,
int32_t)"``.  cffi parses it once per distinct string; the resulting
function-pointer type both checks a call's arguments and converts its result.
Two prototypes match when cffi's canonical spelling of their types is equal,
so whitespace and parameter names do not matter, but ``int32_t`` vs
``int64_t`` does.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import cffi

from .._errors import SignatureError

ffi = cffi.FFI()

#: ``ffi.cast`` for a type object (never a string), minus the wrapper's type test: a third of
#: the cost of each cast, and a reload casts every export and every import slot of a plugin.
cast: Callable[[Any, Any], Any] = ffi._backend.cast


#: A type name that may be a parameter or a result on its own: words and trailing stars,
#: nothing cffi's parser must see as a whole declaration (no parentheses, brackets, dots).
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]*\**")

#: Type names most prototypes are made of, parsed ahead by ``warm``.
_SCALARS = ("int", "unsigned int", "long", "size_t", "double", "float")
_POINTEES = ("char", "void", "int32_t", "int64_t", "double", "uint8_t")
COMMON = (
    *(f"{s}int{n}_t" for s in ("", "u") for n in (8, 16, 32, 64)),
    *(f"{t}{p}" for t in _SCALARS for p in ("", " *")),
    *(f"{c}{t} *" for c in ("", "const ") for t in _POINTEES),
    "char",
    "void",
    "_Bool",
    "bool",
)


def warm(names: tuple[str, ...] = COMMON) -> None:
    """Parse the common type names now (an idle worker), so that opening a
    plugin builds its prototypes without cffi's C parser (``_plain``)."""
    for name in names:
        with contextlib.suppress(cffi.CDefError, cffi.FFIError, ValueError, TypeError):
            ffi.typeof(name)


def _plain(result: str, params: str) -> Any:
    """The function-pointer type of a prototype made of plain type names,
    built from their (cached) types instead of parsing the whole text with
    cffi's C parser: ~0.5 ms for each new prototype, which a fresh worker
    paid for every export it opened (issue 24 item 4).  None when the text
    is anything else (parameter names, arrays, function pointers, ``...``),
    or a name cffi does not know: the parser then decides, and words the
    error.  cffi keeps one type object per distinct type, so the result is
    the very object the parser would give."""
    parts = [p.strip() for p in params.split(",")] if params.strip() else []
    if parts == ["void"]:
        parts = []
    if not all(_PLAIN.fullmatch(p) for p in (result.strip(), *parts)):
        return None
    try:
        args = tuple(ffi.typeof(p) for p in parts)
        if any(a.kind == "void" for a in args):
            return None  # void as a parameter: the parser's error
        return ffi._backend.new_function_type(args, ffi.typeof(result.strip()), False)
    except (cffi.CDefError, cffi.FFIError, ValueError, TypeError, KeyError):
        return None


@functools.lru_cache(maxsize=1024)
def pointer_type(signature: str) -> cffi.FFI.CType:
    """The cffi function-pointer type for ``"ret(args)"``; raises ValueError."""
    sig = signature.strip()
    open_at = sig.find("(")
    if open_at <= 0 or not sig.endswith(")"):
        raise ValueError("expected a C function type such as 'int64_t(int64_t, int32_t)'")
    ctype = _plain(sig[:open_at], sig[open_at + 1 : -1]) or ffi.typeof(
        f"{sig[:open_at]}(*){sig[open_at:]}"
    )
    if ctype.kind != "function":  # cffi's kind for a pointer to function
        raise ValueError("not a function type")
    if ctype.ellipsis:
        raise ValueError("variadic functions cannot be called safely through a declared signature")
    return ctype


def parse(signature: str, *, where: str, function: str) -> cffi.FFI.CType:
    """``pointer_type`` with a message that names the file and the function."""
    try:
        return pointer_type(signature)
    except (ValueError, TypeError, cffi.CDefError, cffi.FFIError) as exc:
        cause = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SignatureError(
            f"{where}: cannot parse the C signature of {function}: {signature!r}: {cause}"
        ) from None


def spelling(ctype: cffi.FFI.CType) -> str:
    """The canonical prototype text, e.g. ``int64_t(int64_t, int32_t)``."""
    cname: str = ctype.cname
    return cname.replace("(*)", "", 1)


def check_declared(declared: Mapping[str, str], found: Mapping[str, str], *, where: str) -> None:
    """Refuse when the host's declared prototypes disagree with the plugin's.

    This is the "built against different headers" failure made legible: the
    message names the function and both prototypes.
    """
    for name, want in declared.items():
        if name not in found:
            raise SignatureError(
                f"{where}: the host expects {name} with prototype {want!r}, "
                f"but the plugin does not export it"
            )
        got = found[name]
        want_t = parse(want, where="host signatures", function=name)
        got_t = parse(got, where=where, function=name)
        if want_t is not got_t:
            raise SignatureError(
                f"{where}: signature mismatch for {name}: the host expects {spelling(want_t)!r} "
                f"but the plugin was built with {spelling(got_t)!r} (was it built against a "
                f"different version of its header?)"
            )


def bind(ctype: cffi.FFI.CType, address: int) -> Callable[..., Any]:
    """A callable cffi function pointer for ``address``."""
    fn: Callable[..., Any] = cast(ctype, address)
    return fn
