"""The plugin descriptor: what ``hotload.h`` writes into the ``.hotload`` section.

Each macro in the SDK emits one NUL-terminated text record::

    hotload <US> abi <US> kind <US> field [<US> field]      (US = 0x1f)

Text records need no relocation, so the descriptor can be read from the file
alone (ELF or PE), before any of the plugin's code runs, and by ``hotload
inspect`` on a machine of another architecture.

ABI 2 adds record kinds (``import``; ``type``/``field``/``enum``), ABI 4 the
typed state (``state``, ``migrate``); they are stamped with their ABI so that
a host reading only ABI 1 refuses the plugin with both numbers, while the
ABI 1 kinds keep their stamp and their meaning.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass

from .._errors import DescriptorError

ABI_VERSION = 4
"""The ABI of the hotload.h this package ships (``HOTLOAD_ABI_VERSION``, the same
number) and the newest this host reads (it reads every record of ABI 1 to 4)."""
_ABI_KINDS = {
    1: frozenset({"plugin", "export", "on_load", "on_unload", "self_test", "unload_safe"}),
    2: frozenset({"import", "struct", "field", "enum", "enumerator"}),
    3: frozenset({"side_by_side"}),
    4: frozenset({"state", "migrate"}),
}
_NUMBERED = {"struct": 1, "field": 3, "enum": 1, "enumerator": 2, "state": 2}  # kind -> text fields
_FLAGS = ("on_load", "on_unload", "self_test", "unload_safe", "side_by_side")  # one field each
SECTION = ".hotload"
_US = "\x1f"


@dataclass(frozen=True)
class Export:
    name: str
    signature: str


@dataclass(frozen=True)
class Import:
    """A host service the plugin calls (``HOTLOAD_IMPORT``)."""

    name: str
    signature: str


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str  # as written in HOTLOAD_FIELD, e.g. "char[16]"
    offset: int
    size: int


@dataclass(frozen=True)
class TypeDecl:
    """A struct or enum as the compiler laid it out (``HOTLOAD_STRUCT``...)."""

    kind: str  # "struct" or "enum"
    name: str
    size: int
    align: int
    fields: tuple[Field, ...] = ()  # in offset order
    values: tuple[tuple[str, int], ...] = ()  # enumerators


@dataclass(frozen=True)
class StateDecl:
    """``HOTLOAD_STATE(T, var)``: the plugin keeps its state in a ``T`` whose
    address the exported pointer ``symbol`` holds; ``migrations`` maps a
    top-level field to the exported ``HOTLOAD_MIGRATE`` function for it."""

    type: str
    symbol: str
    size: int
    align: int
    migrations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Descriptor:
    """What a plugin says about itself."""

    name: str
    version: str
    abi: int = ABI_VERSION
    exports: tuple[Export, ...] = ()
    on_load: str | None = None
    on_unload: str | None = None
    self_test: str | None = None
    unload_safe: bool = False
    side_by_side: bool = False  # HOTLOAD_SIDE_BY_SIDE(): may serve beside another version
    imports: tuple[Import, ...] = ()
    types: tuple[TypeDecl, ...] = ()
    state: StateDecl | None = None  # HOTLOAD_STATE (ABI 4)

    def signatures(self) -> dict[str, str]:
        return {e.name: e.signature for e in self.exports}


_parsed: dict[bytes, Descriptor] = {}  # section bytes -> descriptor (a reload rereads them)
_parsed_lock = threading.Lock()


MAX_VERSION = 128  # characters of a plugin's version string


def parse(blob: bytes, path: str) -> Descriptor:
    """Parse the raw bytes of a ``.hotload`` section found in ``path``."""
    desc = _parsed.get(blob)
    if desc is None:
        desc = _parse(blob, path)
        with _parsed_lock:
            while len(_parsed) >= 64:
                _parsed.pop(next(iter(_parsed)))
            _parsed[blob] = desc
    return desc


def _parse(blob: bytes, path: str) -> Descriptor:
    records = _join_numbers([r for r in blob.split(b"\0") if r], path)
    if not records:
        raise DescriptorError(f"{path}: the .hotload section is empty")
    typed: list[tuple[str, list[str], tuple[int, int]]] = []
    plugin: tuple[str, str] | None = None
    exports: list[Export] = []
    imports: list[Import] = []
    migrations: list[tuple[str, str]] = []
    newest = 1
    hooks: dict[str, str] = {}
    for raw, numbers in records:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DescriptorError(f"{path}: descriptor record is not UTF-8 text ({exc})") from None
        parts = text.split(_US)
        if len(parts) < 4 or parts[0] != "hotload":
            raise DescriptorError(f"{path}: malformed descriptor record {text!r}")
        try:
            abi = int(parts[1])
        except ValueError:
            raise DescriptorError(f"{path}: malformed ABI version in record {text!r}") from None
        if abi not in _ABI_KINDS:
            raise DescriptorError(
                f"{path}: plugin was built for hotload ABI {abi}, this host reads ABI 1 to "
                f"ABI {ABI_VERSION}; rebuild it against this host's hotload.h (hotload cflags)"
            )
        kind, fields = parts[2], parts[3:]
        if kind not in _ABI_KINDS[abi]:
            raise DescriptorError(f"{path}: unknown descriptor record {text!r}")
        newest = max(newest, abi)
        if kind == "plugin" and len(fields) == 2:
            if plugin is not None:
                raise DescriptorError(f"{path}: HOTLOAD_PLUGIN appears more than once")
            plugin = (fields[0], fields[1])
        elif kind == "export" and len(fields) == 2:
            if fields[0] in {e.name for e in exports}:
                raise DescriptorError(f"{path}: {fields[0]} is exported twice")
            exports.append(Export(fields[0], fields[1]))
        elif kind in _NUMBERED and len(fields) == _NUMBERED[kind] and numbers is not None:
            typed.append((kind, fields, numbers))
        elif kind == "import" and len(fields) == 2:
            if fields[0] in {i.name for i in imports}:
                raise DescriptorError(f"{path}: {fields[0]} is imported twice")
            imports.append(Import(fields[0], fields[1]))
        elif kind == "migrate" and len(fields) == 2:
            if fields[0] in {m for m, _ in migrations}:
                raise DescriptorError(f"{path}: HOTLOAD_MIGRATE({fields[0]}, ...) appears twice")
            migrations.append((fields[0], fields[1]))
        elif kind in _FLAGS and len(fields) == 1:
            hooks[kind] = fields[0]
        else:
            raise DescriptorError(f"{path}: unknown descriptor record {text!r}")
    if plugin is None:
        raise DescriptorError(f"{path}: descriptor has no HOTLOAD_PLUGIN(name, version) record")
    name, version = plugin
    if not name.isidentifier():
        raise DescriptorError(f"{path}: plugin name {name!r} is not an identifier")
    if len(version) > MAX_VERSION or any(_hidden(c) for c in version):
        # it is printed by ls, top and log and is a label of every /metrics series: a
        # 200,000-character version made a 50 MB scrape, a control character (C0, DEL,
        # and the C1 CSI U+009B) a terminal escape in the operator's view, a bidi
        # override text that reads other than it is (the attacker's reviews)
        raise DescriptorError(
            f"{path}: plugin version {version[:40]!r}{'...' if len(version) > 40 else ''} is "
            f"not a version: at most {MAX_VERSION} characters, no control characters"
        )
    types = _types([t for t in typed if t[0] != "state"], path)
    return Descriptor(
        name=name,
        version=version,
        abi=newest,
        exports=tuple(exports),
        imports=tuple(imports),
        types=types,
        state=_state([t for t in typed if t[0] == "state"], types, migrations, path),
        on_load=hooks.get("on_load"),
        on_unload=hooks.get("on_unload"),
        self_test=hooks.get("self_test"),
        unload_safe=hooks.get("unload_safe") == "yes",
        side_by_side=hooks.get("side_by_side") == "yes",
    )


def _join_numbers(chunks: list[bytes], path: str) -> list[tuple[bytes, tuple[int, int] | None]]:
    """Attach each ``=<n>,<n>`` chunk (two numbers the compiler computed) to the
    record before it."""
    out: list[tuple[bytes, tuple[int, int] | None]] = []
    for chunk in chunks:
        if not chunk.startswith(b"="):
            out.append((chunk, None))
            continue
        try:
            a, b = (int(x) for x in chunk[1:].split(b","))
        except ValueError:
            raise DescriptorError(f"{path}: malformed descriptor numbers {chunk!r}") from None
        if not out or out[-1][1] is not None:
            raise DescriptorError(f"{path}: descriptor numbers {chunk!r} follow no record")
        out[-1] = (out[-1][0], (a, b))
    return out


def _types(typed: list[tuple[str, list[str], tuple[int, int]]], path: str) -> tuple[TypeDecl, ...]:
    heads: dict[str, tuple[str, int, int]] = {}
    fields: dict[str, list[Field]] = {}
    values: dict[str, list[tuple[str, int]]] = {}
    for kind, text, (a, b) in typed:
        if kind in ("struct", "enum"):
            if text[0] in heads:
                raise DescriptorError(f"{path}: type {text[0]} is declared twice")
            heads[text[0]] = (kind, a, b)
        elif kind == "field":
            fields.setdefault(text[0], []).append(Field(text[1], text[2], a, b))
        else:
            values.setdefault(text[0], []).append((text[1], a))
    for owner, what in ((fields, "HOTLOAD_FIELD"), (values, "HOTLOAD_ENUMERATOR")):
        for tname in owner:
            want = "struct" if what == "HOTLOAD_FIELD" else "enum"
            if heads.get(tname, ("",))[0] != want:
                raise DescriptorError(
                    f"{path}: {what}({tname}, ...) without HOTLOAD_{want.upper()}({tname})"
                )
    return tuple(
        TypeDecl(
            kind,
            name,
            size,
            align,
            tuple(sorted(fields.get(name, []), key=lambda f: f.offset)),
            tuple(values.get(name, [])),
        )
        for name, (kind, size, align) in heads.items()
    )


def _state(
    records: list[tuple[str, list[str], tuple[int, int]]],
    types: tuple[TypeDecl, ...],
    migrations: list[tuple[str, str]],
    path: str,
) -> StateDecl | None:
    """The ``HOTLOAD_STATE`` record, checked against the type it names: a state
    whose size or alignment is not its type's is refused before any code runs."""
    if not records:
        if migrations:
            raise DescriptorError(
                f"{path}: HOTLOAD_MIGRATE({migrations[0][0]}, ...) without HOTLOAD_STATE"
            )
        return None
    if len(records) > 1:
        raise DescriptorError(f"{path}: HOTLOAD_STATE appears more than once")
    _, (tname, symbol), (size, align) = records[0]
    decl = next((t for t in types if t.name == tname and t.kind == "struct"), None)
    if decl is None:
        raise DescriptorError(
            f"{path}: HOTLOAD_STATE({tname}, ...): {tname} is not a struct declared with "
            f"HOTLOAD_STRUCT({tname}) and HOTLOAD_FIELD"
        )
    if (size, align) != (decl.size, decl.align) or size <= 0:
        raise DescriptorError(
            f"{path}: HOTLOAD_STATE({tname}, ...) says size {size}, alignment {align}, but "
            f"{tname} is declared with size {decl.size}, alignment {decl.align}"
        )
    if symbol != "hotload_state":
        raise DescriptorError(f"{path}: HOTLOAD_STATE names symbol {symbol!r}, not hotload_state")
    fields = {f.name for f in decl.fields}
    for fname, fn in migrations:
        if fname not in fields or fn != f"hotload__migrate_{fname}":
            raise DescriptorError(
                f"{path}: HOTLOAD_MIGRATE({fname}, ...): {tname} declares no field {fname} "
                f"(declared: {', '.join(sorted(fields)) or 'none'})"
            )
    return StateDecl(tname, symbol, size, align, tuple(migrations))


def _hidden(c: str) -> bool:
    """A character that is not text to show: a control (C0, DEL, C1), a format
    character (bidi overrides, zero-width), a line or paragraph separator."""
    return unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")
