"""Plugin-declared C types: built as cffi types, verified against the compiler.

A plugin records each struct's and enum's layout in its descriptor (the
compiler's ``sizeof``, ``alignof`` and every declared field's offset and
size).  Before the plugin is opened, the host declares the same type to cffi
and compares the two layouts; any difference (a packed struct, an unusual
alignment) refuses the plugin, naming the type, the field and both offsets.

One process-wide cffi FFI holds every type, under a name that carries a digest
of its layout (``player_t__hl1a2b3c4d5e``), and the plugin's prototypes are
rewritten to use it before anything else reads them.  So a type name may mean
different layouts in different plugin versions without clashing, equal layouts
are the very same cffi type (a struct made for one plugin can be passed to
another), and a layout change shows up as a prototype change, which a reload
refuses unless ``allow_signature_change=True``.  Messages print the plain name.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cffi

from .._artifact import signatures
from .._artifact.descriptor import Descriptor, TypeDecl
from .._errors import TypeLayoutError

ffi = signatures.ffi
_lock = threading.Lock()
_defined: dict[str, str | None] = {}  # mangled name -> None, or why it was refused
_ARRAY = re.compile(r"^(.*?)\s*((?:\[\s*\d+\s*\])+)$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class TypeSet:
    """A plugin version's types: plain name -> mangled cffi name."""

    names: Mapping[str, str]
    decls: Mapping[str, TypeDecl]

    def cname(self, name: str) -> str:
        try:
            return self.names[name]
        except KeyError:
            known = ", ".join(sorted(self.names)) or "none"
            raise TypeLayoutError(f"no type {name!r} is declared (declared: {known})") from None

    def new(self, name: str, fields: Mapping[str, Any]) -> Any:
        """A zeroed ``name *`` with ``fields`` set (``str`` for a ``char[N]``
        field is encoded as UTF-8)."""
        decl = self.decls.get(name)
        if decl is None or decl.kind != "struct":
            raise TypeLayoutError(f"{name!r} is not a struct declared by this plugin")
        known = {f.name for f in decl.fields}
        unknown = set(fields) - known
        if unknown:
            raise TypeLayoutError(
                f"{name} has no declared field {', '.join(sorted(unknown))} (declared: "
                f"{', '.join(f.name for f in decl.fields)}); a field the plugin does not "
                f"declare with HOTLOAD_FIELD is padding to hotload"
            )
        init = {k: v.encode() if isinstance(v, str) else v for k, v in fields.items()}
        cname = f"{self.names[name]} *"
        try:
            return ffi.new(cname, init)
        except (TypeError, OverflowError, IndexError, ValueError) as exc:
            raise TypeLayoutError(f"{name}: {_field_error(cname, init, exc)}") from None

    def rewrite(self, prototype: str) -> str:
        """``prototype`` with each declared type name replaced by its cffi name."""
        return _WORD.sub(lambda m: self.names.get(m.group(0), m.group(0)), prototype)


def _field_error(cname: str, init: Mapping[str, Any], exc: Exception) -> str:
    """Which field a value did not fit, and why (cffi only says why)."""
    for key, value in init.items():
        try:
            ffi.new(cname, {key: value})
        except (TypeError, OverflowError, IndexError, ValueError) as one:
            hint = (
                " (pass a Python object to a plugin as a handle: host.handle(obj))"
                if isinstance(one, TypeError) and not isinstance(value, (int, float, bytes))
                else ""
            )
            return f"field {key}={value!r:.40}: {plain(str(one))}{hint}"
    return plain(str(exc))


def plain(text: str) -> str:
    """Text with mangled type names back to their plain names."""
    return re.sub(r"__hl[0-9a-f]{10}\b", "", text)


def build(desc: Descriptor, source: str) -> TypeSet:
    """Declare (or find) every type of ``desc`` and verify its layout."""
    try:
        return _build(desc.types)
    except TypeLayoutError as exc:
        raise TypeLayoutError(str(exc).replace("\0", source)) from None


@functools.lru_cache(maxsize=256)
def _build(types: tuple[TypeDecl, ...]) -> TypeSet:
    """``build`` for one set of declarations (errors say NUL for the file)."""
    decls = {t.name: t for t in types}
    names: dict[str, str] = {}
    for decl in _ordered(decls, "\0"):
        names[decl.name] = _declare(decl, names, "\0")
    return TypeSet(names, decls)


def _ordered(decls: dict[str, TypeDecl], source: str) -> list[TypeDecl]:
    """Types in an order where each comes after the types its fields use."""
    done: list[TypeDecl] = []
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise TypeLayoutError(
                f"{source}: types {' -> '.join((*path, name))} refer to each other; a type "
                f"cannot contain (or point to) itself through declared fields"
            )
        state[name] = 1
        for f in decls[name].fields:
            for word in _WORD.findall(f.ctype):
                if word in decls:
                    visit(word, (*path, name))
        state[name] = 2
        done.append(decls[name])

    for name in decls:
        visit(name, ())
    return done


def _declare(decl: TypeDecl, names: Mapping[str, str], source: str) -> str:
    if decl.kind == "enum":  # an integer of the compiler's size: enumerator names stay out of
        # cffi's one global namespace, so a value may change between versions
        text = f"int{8 * decl.size}_t" if decl.size in (1, 2, 4, 8) else f"char[{decl.size}]"
    else:
        # in the compiler's order; bytes no declared field covers (an undeclared field, or
        # padding) become explicit char arrays, so an undeclared field is padding to hotload
        members, end = [], 0
        for i, f in enumerate(sorted(decl.fields, key=lambda f: f.offset)):
            if f.offset > end:
                members.append(f"char hotload__gap{i}[{f.offset - end}];")
            ctype = _WORD.sub(lambda m: names.get(m.group(0), m.group(0)), f.ctype)
            arr = _ARRAY.match(ctype)
            decl_text = f"{arr.group(1)} {f.name}{arr.group(2)}" if arr else f"{ctype} {f.name}"
            members.append(decl_text + ";")
            end = max(end, f.offset + f.size)
        if decl.fields and decl.size > end:
            members.append(f"char hotload__tail[{decl.size - end}];")
        text = f"struct {{ {' '.join(members)} }}"
    key = f"{decl.name}|{decl.size}|{decl.align}|{text}|{decl.values}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    mangled = f"{decl.name}__hl{digest[:10]}"
    with _lock:
        if mangled not in _defined:
            _defined[mangled] = _try_declare(decl, text, mangled, source)
        why = _defined[mangled]
    if why is not None:
        raise TypeLayoutError(why)
    return mangled


def _try_declare(decl: TypeDecl, text: str, mangled: str, source: str) -> str | None:
    """None when cffi's layout is the compiler's; else the refusal, with NUL
    standing for the file name (the verdict is cached per layout)."""
    try:
        ffi.cdef(f"typedef {text} {mangled};")
    except (cffi.CDefError, cffi.FFIError, TypeError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        unknown = [w for w in _WORD.findall(text) if w in first]
        cause = f"unknown type {unknown[0]}" if unknown else plain(first)
        return f"\0: cannot declare type {decl.name} ({cause}): declare each type it uses first"
    layout = dict(ffi.typeof(mangled).fields or []) if decl.kind == "struct" else {}
    for f in sorted(decl.fields, key=lambda f: f.offset):  # the first difference is the cause
        offset, size = layout[f.name].offset, ffi.sizeof(layout[f.name].type)
        if (offset, size) != (f.offset, f.size):
            return (
                f"\0: type {decl.name}, field {f.name} ({f.ctype}): the compiler put it at "
                f"offset {f.offset} (size {f.size}), hotload's C layout at offset {offset} "
                f"(size {size}); hotload refuses a layout it cannot reproduce"
            )
    ours = (ffi.sizeof(mangled), ffi.alignof(mangled))
    if ours != (decl.size, decl.align):
        hint = " (a packed or specially aligned type?)" if ours[1] != decl.align else ""
        return (
            f"\0: type {decl.name}: the compiler laid it out with size {decl.size} and "
            f"alignment {decl.align}, hotload's C layout has size {ours[0]} and alignment "
            f"{ours[1]}{hint}; hotload refuses a layout it cannot reproduce"
        )
    return None


def undeclared(prototype: str, types: TypeSet) -> list[str]:
    """The words in a prototype that name no C type cffi or the plugin knows,
    in type position (the first word of a parameter or of the result)."""
    head, _, rest = prototype.partition("(")
    parts = [head, *rest.rstrip(")").split(",")]
    missing = []
    for part in parts:
        words = [w for w in _WORD.findall(part) if w not in ("const", "volatile", "struct")]
        if not words or words[0] in types.names:
            continue
        try:
            ffi.typeof(words[0])
        except (cffi.CDefError, cffi.FFIError, TypeError, ValueError, KeyError):
            if words[0] not in ("unsigned", "signed", "short", "long"):
                missing.append(words[0])
    return missing


def canonical(prototype: str) -> str:
    """The plain canonical spelling of a prototype that may name plugin types
    the host has no layout for (``"int32_t(const player_t *)"`` ->
    ``"int32_t(player_t *)"``): unknown names stand for opaque structs, so a
    pointer to one parses; a by-value use of one does not."""
    text = prototype
    for _ in range(32):
        try:
            spelled = signatures.spelling(signatures.pointer_type(text))
            return plain(spelled).replace("hotload__op_", "")
        except (cffi.CDefError, cffi.FFIError, TypeError, ValueError) as exc:
            missing = undeclared(text, TypeSet({}, {}))
            if not missing:
                raise exc from None
            word = missing[0]
            with _lock:
                try:
                    ffi.typeof(f"hotload__op_{word}")
                except (cffi.CDefError, cffi.FFIError, TypeError, ValueError, KeyError):
                    ffi.cdef(f"typedef struct hotload__op_{word} hotload__op_{word};")
            text = re.sub(rf"\b{word}\b", f"hotload__op_{word}", text)
    raise ValueError(f"cannot parse {prototype!r}")
