"""Whether a new build may replace the version serving: a reload (or a
release) keeps every function callers already use, with the same prototype,
unless the host explicitly allows a change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._artifact import signatures as sig
from .._artifact.descriptor import TypeDecl
from .._artifact.loader import Candidate, Image
from .._contract.structs import plain
from .._errors import SignatureError, TypeLayoutError

_ACCEPT_CHANGE = (
    "To accept it: host.reload(..., allow_signature_change=True), "
    "host.watch(..., allow_signature_change=True) or "
    "`hotload reload {name} --allow-signature-change`"
)


def check_compatible(old: Image, new: Candidate) -> None:
    """A reload must keep every function callers already use, with the same
    prototype, unless the host explicitly allows a change."""
    if new.prototypes == old.prototypes:  # the same text is the same cffi type: nothing changed
        return
    for fname, proto in old.prototypes.items():
        if fname not in new.prototypes:
            raise SignatureError(
                f"{new.source}: the new build no longer exports {fname} ({proto}); callers still "
                f"use it. {_ACCEPT_CHANGE.format(name=old.name)}"
            )
        if sig.pointer_type(proto) is not sig.pointer_type(new.prototypes[fname]):
            if plain(proto) == plain(new.prototypes[fname]):
                raise TypeLayoutError(
                    f"{new.source}: {fname} ({plain(proto)}) uses a type whose layout changed "
                    f"from version {old.version} to {new.version}; callers' values have the old "
                    f"layout. {_ACCEPT_CHANGE.format(name=old.name)}"
                )
            raise SignatureError(
                f"{new.source}: {fname} changed from {proto!r} (version {old.version}) to "
                f"{new.prototypes[fname]!r} (version {new.version}); callers were written for the "
                f"old prototype. {_ACCEPT_CHANGE.format(name=old.name)}"
            )


def check_types(cand: Candidate, plugins: Mapping[str, Any]) -> None:
    """Two plugins must not give one type name two layouts: a value made
    for one could be passed to the other."""
    if cand.types is None:
        return
    for pname, plugin in plugins.items():
        cur = plugin._version()
        theirs = cur.image.types if cur is not None and pname != cand.name else None
        for tname, cname in cand.types.names.items():
            other = theirs.names.get(tname) if theirs is not None else None
            if other is not None and other != cname:
                raise TypeLayoutError(
                    f"{cand.source}: declares type {tname} "
                    f"({_layout(cand.types.decls[tname])}), but plugin {pname} declares it "
                    f"with another layout ({_layout(theirs.decls[tname])})"  # type: ignore[union-attr]
                )


def _layout(decl: TypeDecl) -> str:
    fields = ", ".join(f"{f.name} {f.ctype} @{f.offset}" for f in decl.fields)
    return f"size {decl.size}, align {decl.align}" + (f": {fields}" if fields else "")
