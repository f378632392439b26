"""The rules by which a typed state follows its type, as a plan made once.

Two versions' ``HOTLOAD_STATE`` types are matched field by field, by name
(nested structs by their fields' names too).  Each kept field becomes one step
of a plan: a byte copy (same type), a widening (an integer grew: each byte
lane moved with one strided slice copy, the new high bytes filled from the
sign lane), a checked narrowing (only where a narrowing is allowed: a
rollback, and the proof's way back; a value that does not fit refuses), or a
call of the plugin's ``HOTLOAD_MIGRATE`` function.  Anything else is refused
here, before any byte moves, naming the field and both types.

A plan is a list of ``Step`` over offsets; ``apply.py`` runs it on two
buffers.  Equal layouts give one copy of the whole struct, adjacent copies
merge, and an array of N elements is one step with a count and two strides,
never N steps: so 100 MB of unchanged array is one ``memcpy``.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace

import cffi

from .._artifact.descriptor import Field, StateDecl, TypeDecl
from .._errors import StateMigrationError

_ffi = cffi.FFI()
_ARRAY = re.compile(r"^(.*?)\s*((?:\[\s*\d+\s*\])+)$")
_DIM = re.compile(r"\[\s*(\d+)\s*\]")
_INTEGERS = {
    *(f"{u}int{n}_t" for u in ("", "u") for n in (8, 16, 32, 64)),
    *(f"{u}int_{k}{n}_t" for u in ("", "u") for k in ("least", "fast") for n in (8, 16, 32, 64)),
    "signed char", "unsigned char", "short", "unsigned short", "int", "unsigned", "unsigned int",
    "long", "unsigned long", "long long", "unsigned long long", "size_t", "ssize_t",
    "intptr_t", "uintptr_t", "ptrdiff_t", "intmax_t", "uintmax_t", "short int", "long int",
    "unsigned short int", "unsigned long int", "long long int", "unsigned long long int",
    "signed", "signed int", "signed short", "signed long", "signed long long",
}  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One move of a plan: ``kind`` is copy, widen, narrow or call.

    Elements of ``swidth`` bytes at ``src`` (+ i * ``sstride``) go to
    ``dwidth`` bytes at ``dst`` (+ i * ``dstride``), for i < ``count``, for
    each combination of the ``outer`` repetitions (count, sstride, dstride)."""

    kind: str
    path: str  # the field, for messages: "coins", "inner.hp", "slots[].id"
    src: int
    dst: int
    swidth: int
    dwidth: int
    count: int = 1
    sstride: int = 0
    dstride: int = 0
    outer: tuple[tuple[int, int, int], ...] = ()
    ssigned: bool = False
    dsigned: bool = False
    types: tuple[str, str] = ("", "")  # the field's old and new type, as declared
    fn: str = ""  # call: the HOTLOAD_MIGRATE symbol
    side: str = ""  # call: "new" (down=0) or "old" (down=1): whose function


@dataclass(frozen=True)
class Plan:
    """How one version's state becomes another's."""

    steps: tuple[Step, ...]
    removed: tuple[str, ...]  # fields dropped (reported)
    added: tuple[str, ...]  # fields that start at the new build's initial value
    src_size: int
    dst_size: int

    @property
    def calls(self) -> bool:
        return any(s.kind == "call" for s in self.steps)


class _Ctx:
    """What the rules need of both sides."""

    def __init__(
        self,
        old: tuple[TypeDecl, ...],
        new: tuple[TypeDecl, ...],
        narrow: bool,
        versions: tuple[str, str],
    ) -> None:
        self.old = {t.name: t for t in old}
        self.new = {t.name: t for t in new}
        self.narrow = narrow
        self.versions = versions
        self.removed: list[str] = []
        self.added: list[str] = []
        self.newer = versions[1]  # the build whose migration functions count


def make(
    old: StateDecl,
    old_types: tuple[TypeDecl, ...],
    new: StateDecl,
    new_types: tuple[TypeDecl, ...],
    *,
    narrow: bool,
    newer_is_new: bool = True,
    versions: tuple[str, str],
) -> Plan:
    """The plan from ``old``'s state to ``new``'s.  ``narrow``: a narrowing is
    allowed and checked value by value (a rollback, the proof's way back).

    A field whose declared type differs is converted by the newer build's
    ``HOTLOAD_MIGRATE`` function when it has one (the newer build knows both
    layouts, as in Erlang): ``newer_is_new`` says which side that is, and the
    call gets down=0 when the newer build is the target, down=1 when it is
    the source (a rollback, or the proof's way back).  The older build's
    function is never used: it converts from a layout older still."""
    try:
        return _make(old, old_types, new, new_types, narrow, newer_is_new, versions)
    except _Refused as why:
        raise StateMigrationError(str(why)) from None


class _Refused(Exception):
    pass


@functools.lru_cache(maxsize=64)
def _make(
    old: StateDecl,
    old_types: tuple[TypeDecl, ...],
    new: StateDecl,
    new_types: tuple[TypeDecl, ...],
    narrow: bool,
    newer_is_new: bool,
    versions: tuple[str, str],
) -> Plan:
    ctx = _Ctx(old_types, new_types, narrow, versions)
    ctx.newer = versions[1] if newer_is_new else versions[0]
    odecl, ndecl = ctx.old[old.type], ctx.new[new.type]
    if old.type != new.type:
        raise _Refused(
            f"the state type changed from {old.type} (version {versions[0]}) to {new.type} "
            f"(version {versions[1]}); keep the name and change its fields"
        )
    newer = dict(new.migrations if newer_is_new else old.migrations)
    side = "new" if newer_is_new else "old"
    steps: list[Step] = []
    olds = {f.name: f for f in odecl.fields}
    for nf in ndecl.fields:
        of = olds.get(nf.name)
        if of is None:
            ctx.added.append(nf.name)
        elif nf.name in newer and _retyped(of, nf, ctx):
            fn = newer[nf.name]
            steps.append(
                Step(
                    "call",
                    nf.name,
                    of.offset,
                    nf.offset,
                    of.size,
                    nf.size,
                    types=(of.ctype, nf.ctype),
                    fn=fn,
                    side=side,
                )
            )
        else:
            steps += _shift(_field(nf.name, of, nf, ctx), of.offset, nf.offset)
    kept = {f.name for f in ndecl.fields}
    ctx.removed += [f.name for f in odecl.fields if f.name not in kept]
    return Plan(tuple(_merge(steps)), tuple(ctx.removed), tuple(ctx.added), odecl.size, ndecl.size)


def _field(path: str, of: Field, nf: Field, ctx: _Ctx) -> list[Step]:
    """Steps for one kept field, relative to the field's start on each side."""
    obase, odims = _split(of.ctype)
    nbase, ndims = _split(nf.ctype)
    if not odims and not ndims:
        return _element(path, obase, nbase, of, nf, ctx)
    if len(odims) != len(ndims) or odims[1:] != ndims[1:]:
        raise _changed(path, of, nf, ctx, "the array's shape changed")
    if ndims[0] < odims[0]:
        if not ctx.narrow:
            raise _changed(path, of, nf, ctx, f"the array shrank from {odims[0]} to {ndims[0]}")
        ctx.removed.append(f"{path}[{ndims[0]}:{odims[0]}]")
    on, nn = math.prod(odims), math.prod(ndims)
    if on == 0 or nn == 0 or of.size % on or nf.size % nn:
        raise _changed(path, of, nf, ctx, "an array size disagrees with its declared type")
    oes, nes = of.size // on, nf.size // nn
    inner = math.prod(odims[1:])
    keep = min(odims[0], ndims[0]) * inner
    ofe, nfe = Field(of.name, obase, 0, oes), Field(nf.name, nbase, 0, nes)
    out = []
    for s in _element(f"{path}[]", obase, nbase, ofe, nfe, ctx):
        out.append(_repeat(s, keep, oes, nes))
    return out


def _repeat(s: Step, n: int, sstride: int, dstride: int) -> Step:
    """``s`` for each of ``n`` array elements."""
    if s.count == 1 and not s.outer:
        return replace(s, count=n, sstride=sstride, dstride=dstride)
    return replace(s, outer=((n, sstride, dstride), *s.outer))


def _element(path: str, ot: str, nt: str, of: Field, nf: Field, ctx: _Ctx) -> list[Step]:
    """Steps for one element of type ``ot`` becoming one of type ``nt``."""
    for t in (ot, nt):
        if "*" in t or "(" in t:
            raise _changed(
                path,
                of,
                nf,
                ctx,
                "a pointer cannot follow a state (it may point "
                "into the old image): keep an index or a handle",
            )
    ostruct, nstruct = ctx.old.get(ot), ctx.new.get(nt)
    if ostruct is not None or nstruct is not None:
        if ostruct is None or nstruct is None or ot != nt or ostruct.kind != nstruct.kind:
            raise _changed(path, of, nf, ctx, "a changed type")
        if ostruct.kind == "enum" or _same(ot, ctx):
            if ostruct.size != nstruct.size:
                raise _changed(path, of, nf, ctx, "the enum's size changed")
            return [Step("copy", path, 0, 0, ostruct.size, nstruct.size, types=(ot, nt))]
        return _struct(path, ostruct, nstruct, ctx)
    oint, nint = integer(ot), integer(nt)
    if oint and nint:
        (osize, osigned), (nsize, nsigned) = oint, nint
        kind = ""
        if (osize, osigned) == (nsize, nsigned):
            kind = "copy"
        elif nsize > osize and (osigned == nsigned or not osigned):
            kind = "widen"
        elif ctx.narrow:  # a rollback, the proof's way back: checked value by value
            kind = "narrow"
        if not kind:
            why = "a narrowing" if nsize < osize else "a change of sign"
            raise _changed(path, of, nf, ctx, why)
        return [
            Step(kind, path, 0, 0, osize, nsize, ssigned=osigned, dsigned=nsigned, types=(ot, nt))
        ]
    if _norm(ot) == _norm(nt) and _known(ot) and of.size == nf.size:
        return [Step("copy", path, 0, 0, of.size, nf.size, types=(ot, nt))]
    if _norm(ot) == _norm(nt):
        raise _changed(path, of, nf, ctx, "no rule covers this type")
    raise _changed(path, of, nf, ctx, "a changed type")


def _struct(path: str, od: TypeDecl, nd: TypeDecl, ctx: _Ctx) -> list[Step]:
    """A nested struct whose layout changed: its fields, by name."""
    olds = {f.name: f for f in od.fields}
    steps: list[Step] = []
    for nf in nd.fields:
        of = olds.get(nf.name)
        if of is None:
            ctx.added.append(f"{path}.{nf.name}")
            continue
        steps += _shift(_field(f"{path}.{nf.name}", of, nf, ctx), of.offset, nf.offset)
    kept = {n.name for n in nd.fields}
    ctx.removed += [f"{path}.{f.name}" for f in od.fields if f.name not in kept]
    return steps


def _retyped(of: Field, nf: Field, ctx: _Ctx) -> bool:
    """Whether a kept field's declared type (or the layout of its struct) changed."""
    base, _ = _split(of.ctype)
    return (
        _norm(of.ctype) != _norm(nf.ctype)
        or of.size != nf.size
        or (base in ctx.old and ctx.old[base].kind == "struct" and not _same(base, ctx))
    )


def _same(name: str, ctx: _Ctx) -> bool:
    """Whether struct ``name`` has the very same layout on both sides (nested
    types included): then it is copied whole."""
    od, nd = ctx.old.get(name), ctx.new.get(name)
    if od is None or nd is None or od != nd:
        return False
    for f in od.fields:
        base, _ = _split(f.ctype)
        if base in ctx.old and ctx.old[base].kind == "struct" and not _same(base, ctx):
            return False
    return True


def _shift(steps: list[Step], src: int, dst: int) -> list[Step]:
    return [replace(s, src=s.src + src, dst=s.dst + dst) for s in steps]


def _merge(steps: list[Step]) -> list[Step]:
    """Contiguous arrays as one copy, and adjacent copies as one."""
    flat = []
    for s in steps:
        if (
            s.kind == "copy"
            and not s.outer
            and s.count > 1
            and s.sstride == s.dstride == s.swidth == s.dwidth
        ):
            s = replace(s, swidth=s.swidth * s.count, dwidth=s.dwidth * s.count, count=1)
        flat.append(s)
    out: list[Step] = []
    for s in sorted(flat, key=lambda s: s.src):
        p = out[-1] if out else None
        if (
            p is not None
            and p.kind == s.kind == "copy"
            and p.count == s.count == 1
            and not p.outer
            and not s.outer
            and p.src + p.swidth == s.src
            and p.dst + p.dwidth == s.dst
        ):
            out[-1] = replace(
                p,
                swidth=p.swidth + s.swidth,
                dwidth=p.dwidth + s.dwidth,
                path=f"{p.path}, {s.path}",
            )
        else:
            out.append(s)
    return out


def _changed(path: str, of: Field, nf: Field, ctx: _Ctx, why: str) -> _Refused:
    old_v, new_v = ctx.versions
    return _Refused(
        f"field {path} changed from {of.ctype} (version {old_v}) to {nf.ctype} "
        f"(version {new_v}): {why}; export HOTLOAD_MIGRATE({path.split('.')[0].rstrip('[]')}, fn) "
        f"from version {ctx.newer} (the newer build, whose migrations count both ways) to "
        "convert it (to return to an earlier build, roll back: a rollback checks that each "
        "value fits)"
    )


def at(path: str, index: int) -> str:
    """``path`` naming element ``index`` of its array: "party[].xp" -> "party[3].xp"."""
    return path.replace("[]", f"[{index}]", 1) if "[]" in path else f"{path}[{index}]"


def _split(ctype: str) -> tuple[str, list[int]]:
    m = _ARRAY.match(ctype.strip())
    if not m:
        return _norm(ctype), []
    return _norm(m.group(1)), [int(d) for d in _DIM.findall(m.group(2))]


def _norm(ctype: str) -> str:
    return " ".join(ctype.replace("*", " * ").split())


@functools.lru_cache(maxsize=128)
def integer(ctype: str) -> tuple[int, bool] | None:
    """(size, signed) of an integer type the rules widen; None for others."""
    name = _norm(ctype)
    if name not in _INTEGERS:
        return None
    try:
        return _ffi.sizeof(name), int(_ffi.cast(name, -1)) < 0
    except (cffi.CDefError, cffi.FFIError, TypeError, ValueError, KeyError):
        return None


@functools.lru_cache(maxsize=128)
def _known(ctype: str) -> bool:
    """A scalar the host can copy as bytes (char, bool, float, double...)."""
    try:
        t = _ffi.typeof(_norm(ctype))
    except (cffi.CDefError, cffi.FFIError, TypeError, ValueError, KeyError):
        return False
    return bool(t.kind == "primitive")
