"""C signatures as cffi types.

A plugin declares each export's C type as text, e.g. ``"int64_t(int64_t,
int32_t)"``.  cffi parses it once per distinct string; the resulting
function-pointer type both checks a call's arguments and converts its result.
Two prototypes match when cffi's canonical spelling of their types is equal,
so whitespace and parameter names do not matter, but ``int32_t`` vs
``int64_t`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import cffi

from .._errors import SignatureError

ffi = cffi.FFI()

#: ``ffi.cast`` for a type object (never a string), minus the wrapper's type test: a third of
#: the cost of each cast, and a reload casts every export and every import slot of a plugin.
cast: Callable[[Any, Any], Any] = ffi._backend.cast


@functools.lru_cache(maxsize=1024)
def pointer_type(signature: str) -> cffi.FFI.CType:
    """The cffi function-pointer type for ``"ret(args)"``; raises ValueError."""
    sig = signature.strip()
    open_at = sig.find("(")
    if open_at <= 0 or not sig.endswith(")"):
        raise ValueError("expected a C function type such as 'int64_t(int64_t, int32_t)'")
    ctype = ffi.typeof(f"{sig[:open_at]}(*){sig[open_at:]}")
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
