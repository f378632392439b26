"""What an ELF file says about itself, read with pyelftools (and with
``struct`` where pyelftools is slow): its dynamic section, ``.dynsym``,
sections, TLS segment and relocations, and the toolchain that built it.

``read_facts`` gives the ``Facts`` that ``rules`` judges; ``pointer_relocs``
gives a loaded library's pointer relocations, for the binder search in
``leaks``.  Nothing here judges a file: the words are ``rules``'.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .._errors import InvalidPluginError

log = logging.getLogger(__name__)

GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"

# Dynamic relocation types that write a thread-pointer offset (initial-exec or
# local-exec TLS), per e_machine.  In a linked .so the compiler's GOTTPOFF /
# TLS_IE relocations have become these.  MIPS is left out: its 64-bit r_info
# layout differs, and DF_STATIC_TLS covers it.
STATIC_TLS_RELOCS: dict[int, frozenset[int]] = {
    62: frozenset({18, 23}),  # R_X86_64_TPOFF64, R_X86_64_TPOFF32
    3: frozenset({14, 37}),  # R_386_TLS_TPOFF, R_386_TLS_TPOFF32
    183: frozenset({1030}),  # R_AARCH64_TLS_TPREL64
    40: frozenset({19}),  # R_ARM_TLS_TPOFF32
    243: frozenset({10, 11}),  # R_RISCV_TLS_TPREL32/64
    20: frozenset({73}),  # R_PPC_TPREL32
    21: frozenset({73}),  # R_PPC64_TPREL64
    22: frozenset({56}),  # R_390_TLS_TPOFF
    258: frozenset({10, 11}),  # R_LARCH_TLS_TPREL32/64
}


# ---- the facts of one file -------------------------------------------------


@dataclass
class Facts:
    """The raw facts read from the file; the findings are derived from these."""

    machine: int
    needed: list[str] = field(default_factory=list)
    soname: str | None = None
    flags: int = 0
    flags_1: int = 0
    go_buildinfo: bytes | None = None
    comment: str = ""
    rust_marks: bool = False
    exports: set[str] = field(default_factory=set)
    unique: list[str] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)
    tls_symbols: list[str] = field(default_factory=list)
    tls_relocs: int = 0
    tls_size: int = 0
    toolchain: str | None = None
    compiler: str | None = None


def read_facts(data: bytes, path: str, machine: int) -> Facts:
    """Parse with pyelftools.  Imported here: it costs ~40 ms to import and
    only the first inspection should pay that, not ``import hotload``."""
    from elftools.elf.elffile import ELFFile

    try:
        elf = _Elf(ELFFile(io.BytesIO(data)))
        facts = Facts(machine=machine)
        _read_dynamic(elf, facts)
        _read_symbols(elf, facts)
        _read_sections_and_tls(elf, facts)
        _read_tls_relocs(elf, data, facts)
        _identify_toolchain(elf, facts)
    except InvalidPluginError:
        raise
    except Exception as exc:  # pyelftools raises a zoo of types on corrupt input
        log.debug("pyelftools failed on %s", path, exc_info=True)
        raise InvalidPluginError(
            f"{path}: corrupt ELF file, cannot read its dynamic information "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return facts


class _Elf:
    """An ELFFile whose segments, sections and dynamic tags are read once:
    pyelftools re-parses headers on every ``iter_*`` call, which tripled the
    cost of a small file."""

    def __init__(self, elf: Any) -> None:
        self.elf = elf
        self.segments = list(elf.iter_segments())
        self.sections = list(elf.iter_sections())
        self.dynamic = next((s for s in self.segments if s["p_type"] == "PT_DYNAMIC"), None)
        self.tags = list(self.dynamic.iter_tags()) if self.dynamic is not None else []
        # .dynsym by type; a file stripped of section headers falls back to the
        # table the dynamic segment points at.
        self.symtab = next((s for s in self.sections if s["sh_type"] == "SHT_DYNSYM"), self.dynamic)


def _read_dynamic(elf: _Elf, facts: Facts) -> None:
    for tag in elf.tags:
        kind = tag.entry.d_tag
        if kind == "DT_NEEDED":
            facts.needed.append(tag.needed)
        elif kind == "DT_SONAME":
            facts.soname = tag.soname
        elif kind == "DT_FLAGS":
            facts.flags |= tag.entry.d_val
        elif kind == "DT_FLAGS_1":
            facts.flags_1 |= tag.entry.d_val


def _read_symbols(elf: _Elf, facts: Facts) -> None:
    if elf.symtab is None:
        return
    for sym in elf.symtab.iter_symbols():
        name, info = sym.name, sym["st_info"]
        if not name:
            continue
        if sym["st_shndx"] == "SHN_UNDEF":
            facts.imports.add(name)
            continue
        unique = info["bind"] in ("STB_LOOS", "STB_GNU_UNIQUE")  # bind 10
        if unique:
            facts.unique.append(name)
        if (unique or info["bind"] in ("STB_GLOBAL", "STB_WEAK")) and info["type"] in (
            "STT_FUNC",
            "STT_OBJECT",
            "STT_LOOS",
            "STT_GNU_IFUNC",
        ):  # type 10: a GNU IFUNC function
            facts.exports.add(name)


def _read_sections_and_tls(elf: _Elf, facts: Facts) -> None:
    for section in elf.sections:
        if section.name == ".go.buildinfo":
            facts.go_buildinfo = section.data() if section["sh_type"] != "SHT_NOBITS" else b""
        elif section.name == ".comment" and section["sh_type"] != "SHT_NOBITS":
            facts.comment = section.data()[:4096].replace(b"\0", b"\n").decode("utf-8", "replace")
        elif section.name == ".rustc":
            facts.rust_marks = True
    for segment in elf.segments:
        if segment["p_type"] == "PT_TLS":
            facts.tls_size = segment["p_memsz"]


# Rust's legacy mangling ends in a 16-hex-digit hash ("17h" + hash + "E"); v0
# mangling starts with "_R".  Either in a dynamic or static symbol says Rust.
_RUST_SYMBOL = re.compile(r"^(_ZN.*17h[0-9a-f]{16}E|_R[NC][0-9A-Za-z_]+)$")
_RUST_NAMES = ("rust_begin_unwind", "rust_eh_personality", "rust_panic")
_CXX_LIBS = re.compile(r"^lib(stdc\+\+|c\+\+)\.so")
_GCC_COMMENT = re.compile(r"GCC: \([^)]*\) (\S+)")
_CLANG_COMMENT = re.compile(r"clang version (\S+)")
_RUSTC_COMMENT = re.compile(r"rustc version (\S+)")
STATIC_SYMBOLS_SCANNED = 20000  # enough for a Rust cdylib; bounded for a big C++ one


def _is_rust_symbol(name: str) -> bool:
    return name.startswith("__rust_") or name in _RUST_NAMES or bool(_RUST_SYMBOL.match(name))


def _identify_toolchain(elf: _Elf, facts: Facts) -> None:
    """Go (``.go.buildinfo``), Rust (``rustc`` in ``.comment``, a ``.rustc``
    section, Rust-mangled or ``__rust_`` symbols), C++ (libstdc++/libc++
    needed, or mangled names), else, when GCC or clang built it, C or C++
    as its static symbols tell (``_static_c_or_cxx``).  The fix a
    finding advises depends on it: Rust's std imports the C++ thread-local
    destructor hook, and its fix is not the C++ one."""
    rustc = _RUSTC_COMMENT.search(facts.comment)
    dynamic = facts.imports | facts.exports
    if facts.go_buildinfo is not None:
        facts.toolchain, facts.compiler = "go", _go_version(facts.go_buildinfo)
    elif rustc or facts.rust_marks or any(_is_rust_symbol(n) for n in dynamic):
        facts.toolchain = "rust"
        facts.compiler = f"rustc {rustc.group(1)}" if rustc else None
    elif not facts.comment and _static_rust_symbol(elf):  # rustc always writes .comment
        facts.toolchain = "rust"
    elif any(_CXX_LIBS.match(os.path.basename(n)) for n in facts.needed) or any(
        n.startswith("_Z") for n in dynamic
    ):
        facts.toolchain = "c++"
    elif "GCC:" in facts.comment or "clang" in facts.comment:
        facts.toolchain = _static_c_or_cxx(elf)
    if facts.compiler is None and facts.toolchain in ("c", "c++", "c/c++"):
        clang, gcc = _CLANG_COMMENT.search(facts.comment), _GCC_COMMENT.search(facts.comment)
        facts.compiler = (
            f"clang {clang.group(1)}" if clang else f"GCC {gcc.group(1)}" if gcc else None
        )


_CXX_SOURCE = re.compile(r"\.(cc|cp|cxx|cpp|CPP|c\+\+|C)$")


def _static_c_or_cxx(elf: _Elf) -> str:
    """C or C++ for a GCC/clang library that neither needs libstdc++ (g++
    links it only when used) nor exports mangled names, as a plain
    ``extern "C"`` C++ plugin does.  Its static symbol table still names
    the source files (``STT_FILE``: ``plugin.cpp``) and its internal C++
    symbols (``_Z...``); a stripped file has no such table, and then the
    honest answer is "C or C++" (``c/c++``), not a guess."""
    symtab = next((s for s in elf.sections if s["sh_type"] == "SHT_SYMTAB"), None)
    if symtab is None:
        return "c/c++"
    for i, sym in enumerate(symtab.iter_symbols()):
        if i >= STATIC_SYMBOLS_SCANNED:
            break
        if sym.name.startswith("_Z") or (
            sym["st_info"]["type"] == "STT_FILE" and _CXX_SOURCE.search(sym.name)
        ):
            return "c++"
    return "c"


def _static_rust_symbol(elf: _Elf) -> bool:
    """A Rust cdylib exports only its ``#[no_mangle]`` functions; its static
    symbol table (when not stripped) still has std's mangled names."""
    symtab = next((s for s in elf.sections if s["sh_type"] == "SHT_SYMTAB"), None)
    if symtab is None:
        return False
    for i, sym in enumerate(symtab.iter_symbols()):
        if i >= STATIC_SYMBOLS_SCANNED:
            return False
        if _is_rust_symbol(sym.name):
            return True
    return False


def _read_tls_relocs(elf: _Elf, data: bytes, facts: Facts) -> None:
    """Count thread-pointer-offset relocations in DT_RELA/DT_REL.  Read with
    ``struct``: a big C++ library has tens of thousands of relocations and
    pyelftools decodes each one through construct."""
    wanted = STATIC_TLS_RELOCS.get(facts.machine)
    if not wanted or not elf.tags:
        return
    tags = {t.entry.d_tag: t.entry.d_val for t in elf.tags}
    syms: set[int] = set()
    for base, size, rela in (("DT_RELA", "DT_RELASZ", True), ("DT_REL", "DT_RELSZ", False)):
        if base in tags and tags.get(size):
            for sym_index in _tls_reloc_symbols(
                elf.elf, data, tags[base], tags[size], rela, wanted
            ):
                facts.tls_relocs += 1
                syms.add(sym_index)
    if elf.symtab is not None:
        names = {elf.symtab.get_symbol(i).name for i in syms if i}
        facts.tls_symbols = sorted(n for n in names if n)


def _tls_reloc_symbols(
    elf: Any, data: bytes, addr: int, size: int, rela: bool, wanted: frozenset[int]
) -> Iterable[int]:
    """The symbol index of each relocation of the ``wanted`` types."""
    return (sym for _offset, sym in _relocs(elf, data, addr, size, rela, wanted))


def _go_version(blob: bytes) -> str | None:
    """The Go version recorded in ``.go.buildinfo`` (Go >= 1.18 inline format)."""
    if not blob.startswith(GO_BUILDINFO_MAGIC) or len(blob) < 33 or not blob[15] & 2:
        return None
    length, shift, pos = 0, 0, 32
    while pos < len(blob) and shift < 35:
        byte = blob[pos]
        length |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            text = blob[pos : pos + length]
            return text.decode("ascii", "replace") if 0 < length == len(text) else None
    return None


# ---- a loaded library's pointer relocations (the binder search in leaks) ----

# Dynamic relocation types that store a symbol's absolute address in a
# pointer-sized slot (ABS, GLOB_DAT, JUMP_SLOT), per e_machine.
POINTER_RELOCS: dict[int, frozenset[int]] = {
    62: frozenset({1, 6, 7}),  # R_X86_64_64, GLOB_DAT, JUMP_SLOT
    3: frozenset({1, 6, 7}),  # R_386_32, GLOB_DAT, JMP_SLOT
    183: frozenset({257, 1025, 1026}),  # R_AARCH64_ABS64, GLOB_DAT, JUMP_SLOT
    40: frozenset({2, 21, 22}),  # R_ARM_ABS32, GLOB_DAT, JUMP_SLOT
    243: frozenset({1, 2, 5}),  # R_RISCV_32, 64, JUMP_SLOT
    22: frozenset({4, 10, 11, 22}),  # R_390_32, GLOB_DAT, JMP_SLOT, 64
    258: frozenset({1, 2, 5}),  # R_LARCH_32, 64, JUMP_SLOT
}
RELOCS_CACHE_SIZE = 256  # libraries, as many as report.CACHE_SIZE builds
_relocs_lock = threading.Lock()
_relocs_cache: OrderedDict[tuple[str, int, int, int], dict[str, list[int]]] = OrderedDict()


def pointer_relocs(path: str) -> dict[str, list[int]]:
    """Symbol name -> slot offsets (from the object's base) of the pointer
    relocations in ``path``'s DT_RELA/DT_REL/DT_JMPREL.  Read with struct (a
    libstdc++ has thousands); cached by the file's identity."""
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _relocs_lock:
        hit = _relocs_cache.get(key)
    if hit is not None:
        return hit
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as fh:
        data = fh.read()
    elf = _Elf(ELFFile(io.BytesIO(data)))
    wanted = POINTER_RELOCS.get(_machine(data), frozenset())
    tags = {t.entry.d_tag: t.entry.d_val for t in elf.tags}
    out: dict[str, list[int]] = {}
    if wanted and elf.symtab is not None:
        tables = [("DT_RELA", "DT_RELASZ", True), ("DT_REL", "DT_RELSZ", False)]
        if "DT_JMPREL" in tags:
            tables.append(("DT_JMPREL", "DT_PLTRELSZ", tags.get("DT_PLTREL") == 7))  # DT_RELA
        name_of = _symbol_names(elf, data, tags)
        for base, size, rela in tables:
            if base not in tags or not tags.get(size):
                continue
            for offset, sym in _relocs(elf.elf, data, tags[base], tags[size], rela, wanted):
                name = name_of(sym) if sym else ""
                if name:
                    out.setdefault(name, []).append(offset)
    with _relocs_lock:
        _relocs_cache[key] = out
        while len(_relocs_cache) > RELOCS_CACHE_SIZE:
            _relocs_cache.popitem(last=False)
    return out


def _symbol_names(elf: _Elf, data: bytes, tags: dict[str, int]) -> Callable[[int], str]:
    """Symbol index -> name, read with struct from DT_SYMTAB/DT_STRTAB:
    pyelftools decodes each symbol through construct (a second for
    libstdc++'s thousands)."""
    symtab = next(iter(elf.elf.address_offsets(tags.get("DT_SYMTAB", 0))), None)
    strtab = next(iter(elf.elf.address_offsets(tags.get("DT_STRTAB", 0))), None)
    bits, end = elf.elf.elfclass, "<" if elf.elf.little_endian else ">"
    entsize = tags.get("DT_SYMENT") or (24 if bits == 64 else 16)
    names: dict[int, str] = {}

    def name_of(index: int) -> str:
        if index not in names:
            names[index] = ""
            if symtab is not None and strtab is not None:
                at = symtab + index * entsize
                if at + 4 <= len(data):
                    start = strtab + struct.unpack_from(end + "I", data, at)[0]
                    stop = data.find(b"\0", start)
                    if 0 <= start < len(data) and stop > start:
                        names[index] = data[start:stop].decode("utf-8", "replace")
        return names[index]

    return name_of


def _machine(data: bytes) -> int:
    return int(struct.unpack_from("<H" if data[5] == 1 else ">H", data, 18)[0])


def _relocs(
    elf: Any, data: bytes, addr: int, size: int, rela: bool, wanted: frozenset[int]
) -> Iterable[tuple[int, int]]:
    """(r_offset, symbol index) of the relocations of the ``wanted`` types."""
    offset = next(iter(elf.address_offsets(addr)), None)
    if offset is None:
        return
    bits = elf.elfclass
    end = "<" if elf.little_endian else ">"
    fmt = end + ("QQq" if rela else "QQ") if bits == 64 else end + ("IIi" if rela else "II")
    step = struct.calcsize(fmt)
    chunk = data[offset : offset + size - size % step]
    type_bits, mask = (32, 0xFFFFFFFF) if bits == 64 else (8, 0xFF)
    for entry in struct.iter_unpack(fmt, chunk):
        if entry[1] & mask in wanted:
            yield entry[0], entry[1] >> type_bits
