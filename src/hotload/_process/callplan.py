"""How each export's (or imported host service's) arguments and result cross
the process boundary: a ``CallPlan``, worked out once at load from its C
prototype, or a ``SignatureError`` naming the parameter that cannot cross.
The caller and the callee (``wire``) both run from the same plan, so the two
ends cannot disagree on a layout.

What crosses: integer, floating, bool and enum scalars; ``const char *`` (a
NUL-terminated string, in); a pointer to a scalar type immediately followed
by a ``size_t`` parameter (a buffer and its length in elements); a
plain-data struct (no pointer at any depth) by value, or one struct by
pointer, carried as its ``sizeof`` bytes: both sides are the same machine
and the layout was verified against the compiler's (``_contract.structs``); a
``char *``, struct or scalar result.  Anything else (``void *``, function
pointers, structs with pointer fields, pointers to pointers) is refused with
the reason.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._artifact import signatures
from .._artifact.arguments import split_params
from .._errors import SignatureError


@dataclass(frozen=True)
class Param:
    # "scalar", "str" (const char *), "buf" (pointer + size_t), "len" (the size_t),
    # "struct" (a struct by value), "sptr" (a pointer to one struct)
    kind: str
    code: str = ""  # struct code of a scalar or of a buffer's element; a struct's cffi name
    const: bool = True
    size: int = 0  # a struct's size in bytes
    ctype: Any = field(default=None, compare=False)  # a struct's cffi type
    ptr: Any = field(default=None, compare=False)  # and its pointer type


@dataclass(frozen=True)
class CallPlan:
    """How one export's (or host service's) arguments and result cross the channel."""

    fname: str
    idx: int
    params: tuple[Param, ...]
    result: str  # struct code, "" for void, "s" for a char * result, "T" for a struct
    req: struct.Struct  # op, idx, then every scalar (lengths included)
    rep: struct.Struct  # status, then the scalar result (if any)
    rtype: str = ""  # the cffi name of a struct result
    rsize: int = 0
    #: numbers and structs only: ``req`` and ``rep`` hold everything (a struct as its bytes,
    #: a struct pointer as a present flag and the bytes; the copied-back structs follow the
    #: result), so a call is one pack and one unpack each way, like a call of scalars
    fixed: bool = False

    #: scalars only, both ways: one struct pack each way (worked out once: the hot path reads it)
    simple: bool = field(init=False, compare=False)
    outs: tuple[int, ...] = field(init=False, compare=False)  # the params copied back
    #: the ``_Bool`` params: struct's ``?`` takes any object's truth, the rule only 0 and 1
    bools: tuple[int, ...] = field(init=False, compare=False)
    #: a call of numbers the C channel packs and serves (``_spin.c``): the index (2 bytes),
    #: the result's code (0: void), one code per argument; None: the Python path
    spin: bytes | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        simple = all(p.kind in ("scalar", "len") for p in self.params)
        object.__setattr__(self, "simple", simple and self.result not in ("s", "T"))
        outs = [i for i, p in enumerate(self.params) if _out(p)]
        object.__setattr__(self, "outs", tuple(outs))
        bools = [i for i, p in enumerate(self.params) if p.kind == "scalar" and p.code == "?"]
        object.__setattr__(self, "bools", tuple(bools))
        codes = "".join(p.code for p in self.params)
        numbers = "bBhHiIqQfd?"
        spin = (
            self.simple
            and len(codes) <= 14
            and all(c in numbers for c in codes)
            and (self.result in numbers or not self.result)
            and 0 <= self.idx < 1 << 16
        )
        head = self.idx.to_bytes(2, "little") + (self.result or "\0").encode() if spin else b""
        object.__setattr__(self, "spin", head + codes.encode() if spin else None)


def _scalar_code(ctype: Any) -> str | None:
    ffi = signatures.ffi
    if ctype.kind != "primitive":
        return None
    name = ctype.cname
    if name in ("float", "double"):
        return "f" if name == "float" else "d"
    if name == "_Bool":
        return "?"
    if name == "char":
        return "c"
    if name == "long double" or "complex" in name:
        return None
    size = ffi.sizeof(ctype)
    try:
        signed = int(ffi.cast(ctype, -1)) < 0
    except (TypeError, OverflowError):
        return None
    code = {1: "b", 2: "h", 4: "i", 8: "q"}.get(size)
    if code is None:
        return None
    return code if signed else code.upper()


def _pointer_field(ctype: Any, path: str) -> tuple[str, str] | None:
    """The first field at any depth of struct ``ctype`` that holds a pointer
    (or a union, or an opaque struct), as ``(dotted path, its C type)``."""
    for fname, f in ctype.fields or ():
        t = f.type
        while t.kind == "array":
            t = t.item
        where = f"{path}.{fname}"
        if t.kind in ("pointer", "function", "union") or (t.kind == "struct" and not t.fields):
            return where, f.type.cname
        if t.kind == "struct":
            inner = _pointer_field(t, where)
            if inner is not None:
                return inner
    return None


def _plain_struct(ctype: Any, what: str, refuse: Callable[[str], SignatureError]) -> int:
    """The size of a struct that can be copied as bytes, or the refusal naming
    the type and the field that holds a pointer."""
    from .._contract.structs import plain

    name = plain(ctype.cname)
    if ctype.kind == "union" or not ctype.fields:
        raise refuse(f"{what} ({name}) is a union or an opaque struct: it cannot be copied")
    bad = _pointer_field(ctype, name)
    if bad is not None:
        path, ptype = bad
        owner, _, fname = path.rpartition(".")
        raise refuse(
            f"{what} ({name}): type {owner.split('.')[0]} has a pointer field {path} "
            f"({plain(ptype)}): memory a pointer points to cannot be copied to another "
            f"process; only plain-data structs (numbers, fixed arrays, nested plain structs) "
            f"cross"
        )
    return int(signatures.ffi.sizeof(ctype))


def plan(fname: str, proto: str, idx: int, *, where: str, service: bool = False) -> CallPlan:
    """How ``fname`` crosses the process boundary, or a ``SignatureError``
    naming the parameter that cannot (``service``: a host service the
    isolated plugin imports, whose calls cross the other way)."""
    ctype = signatures.parse(proto, where=where, function=fname)
    texts = split_params(proto)
    args = list(ctype.args)
    params: list[Param] = []

    def refuse(why: str) -> SignatureError:
        from .._contract.structs import plain

        if service:
            return SignatureError(
                f"{where}: imports service {fname} ({plain(proto)}), which cannot be called "
                f"from an isolated worker: {why}"
            )
        return SignatureError(
            f"{where}: {fname} ({plain(proto)}) cannot be called in an isolated worker: {why}"
        )

    i = 0
    while i < len(args):
        a = args[i]
        text = texts[i] if i < len(texts) else ""
        code = _scalar_code(a)
        if code is not None:
            params.append(Param("scalar", code))
            i += 1
            continue
        if a.kind == "function":
            raise refuse(
                f"parameter {i + 1} is a function pointer: code in the host cannot be "
                f"called from another process"
            )
        if a.kind in ("struct", "union"):
            size = _plain_struct(a, f"parameter {i + 1}", refuse)
            ptr = signatures.ffi.typeof(f"{a.cname} *")
            params.append(Param("struct", a.cname, True, size, a, ptr))
            i += 1
            continue
        if a.kind != "pointer":
            raise refuse(f"parameter {i + 1} ({a.cname}) cannot be copied to another process")
        item = a.item
        const = text.startswith("const") or " const" in text.split("*")[0]
        nxt = args[i + 1] if i + 1 < len(args) else None
        elem = _scalar_code(item)
        if nxt is not None and nxt.cname == "size_t" and elem is not None:
            params.append(Param("buf", elem, const))
            params.append(Param("len", "Q"))
            i += 2
            continue
        if item.cname == "char" and const:
            params.append(Param("str"))
            i += 1
            continue
        if item.kind in ("struct", "union"):
            size = _plain_struct(item, f"parameter {i + 1}", refuse)
            params.append(Param("sptr", item.cname, const, size, item, a))
            i += 1
            continue
        if item.kind == "void":
            raise refuse(
                f"parameter {i + 1} is an opaque void *: memory of the host cannot be "
                f"reached from another process (pass a typed buffer followed by its size_t "
                f"length instead)"
            )
        if elem is not None:
            raise refuse(
                f"parameter {i + 1} ({a.cname}) is a pointer without a length: declare it "
                f"as a buffer, followed by a size_t parameter with its number of elements"
            )
        raise refuse(f"parameter {i + 1} ({a.cname}) cannot be copied to another process")
    res = ctype.result
    rtype, rsize = "", 0
    if res.kind == "void":
        rcode = ""
    elif res.kind == "pointer" and res.item.cname == "char":
        rcode = "s"
    elif res.kind in ("struct", "union"):
        rsize = _plain_struct(res, "its result", refuse)
        rcode, rtype = "T", res.cname
    else:
        rc = _scalar_code(res)
        if rc is None:
            raise refuse(f"its result ({res.cname}) cannot be copied back")
        rcode = rc
    fixed = rcode != "s" and all(p.kind in ("scalar", "struct", "sptr") for p in params)
    if fixed and any(p.kind != "scalar" for p in params) or rcode == "T" and fixed:
        # every size is known: the whole body is one struct, each way (see CallPlan.fixed)
        req = "".join(
            p.code if p.kind == "scalar" else f"{'?' if p.kind == 'sptr' else ''}{p.size}s"
            for p in params
        )
        back = "".join(f"?{params[i].size}s" for i, p in enumerate(params) if _out(p))
        res = f"{rsize}s" if rcode == "T" else rcode
        return CallPlan(
            fname,
            idx,
            tuple(params),
            rcode,
            struct.Struct("<BH" + req),
            struct.Struct("<B" + res + back),
            rtype,
            rsize,
            fixed=True,
        )
    scalars = "".join(p.code for p in params if p.kind in ("scalar", "len"))
    return CallPlan(
        fname,
        idx,
        tuple(params),
        rcode,
        struct.Struct("<BH" + scalars),
        struct.Struct("<B" + (rcode if rcode not in ("", "s", "T") else "")),
        rtype,
        rsize,
    )


def _out(p: Param) -> bool:
    return p.kind in ("buf", "sptr") and not p.const


def plans(
    prototypes: Mapping[str, str], *, where: str, service: bool = False
) -> dict[str, CallPlan]:
    return {
        f: plan(f, p, i, where=where, service=service)
        for i, (f, p) in enumerate(sorted(prototypes.items()))
    }
