"""Check an ELF shared object *before* ``dlopen`` sees it.

glibc trusts the file: a truncated library can kill the process with SIGBUS
inside ``dlopen`` instead of returning an error.  This module checks, from the
bytes alone, that the file is an ELF shared object for this machine and that
every table and loadable segment lies inside the file, and it pulls out the
``.hotload`` descriptor section.

It is deliberately a small ``struct`` reader rather than pyelftools: it sits on
the reload's critical path, where pyelftools costs ~1.4 ms per file against
~20 us here.  Everything deeper (symbols, dynamic flags, relocations) lives in
``inspector``, which uses pyelftools off the critical path.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from .._errors import InvalidPluginError

ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_SONAME, DT_FLAGS_1 = 0, 14, 0x6FFFFFFB
DF_1_PIE = 0x08000000
NOT_A_LIBRARY = "is an executable, not a shared library ({}; build it with -fPIC -shared)"
MACHINES = {
    3: "x86 (i386)",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC64",
    22: "s390",
    40: "ARM",
    62: "x86-64",
    183: "AArch64",
    243: "RISC-V",
    258: "LoongArch",
}


@dataclass(frozen=True)
class ElfFacts:
    bits: int
    little_endian: bool
    machine: int
    hotload_section: bytes | None

    @property
    def machine_name(self) -> str:
        return MACHINES.get(self.machine, f"machine {self.machine}")


def sniff(data: bytes) -> str:
    """What a file is, from its first bytes: "elf", "pe", "archive", "text"
    or "binary".  Both checkers use it to say what a wrong file is instead."""
    head = data[:64]
    if head.startswith(b"\x7fELF"):
        return "elf"
    if head.startswith(b"MZ"):
        return "pe"
    if head.startswith((b"!<arch>", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")):
        return "archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text"


def _describe_non_elf(data: bytes) -> str:
    return {
        "pe": "a Windows PE file (a .dll or .exe), not an ELF shared library",
        "archive": "an archive or Mach-O file, not an ELF shared library",
        "binary": "not an ELF file (bad magic bytes)",
    }.get(sniff(data), "a text file, not a shared library (no ELF magic)")


def check(
    data: bytes, path: str, *, expect_machine: int | None = None, any_machine: bool = False
) -> ElfFacts:
    """Validate ``data`` (the whole file) as a loadable ELF shared object.

    Raises ``InvalidPluginError`` naming ``path`` and the cause.  With
    ``expect_machine`` (defaults to this process's), a foreign architecture is
    refused too, unless ``any_machine`` (for inspecting files offline).
    """
    size = len(data)
    if size == 0:
        raise InvalidPluginError(f"{path}: empty file, not a shared library")
    if not data.startswith(b"\x7fELF"):
        raise InvalidPluginError(f"{path}: {_describe_non_elf(data)}")
    if size < 52:
        raise InvalidPluginError(f"{path}: truncated ELF file ({size} bytes, no complete header)")
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise InvalidPluginError(f"{path}: corrupt ELF header (class {ei_class}, data {ei_data})")
    bits = 64 if ei_class == 2 else 32
    end = "<" if ei_data == 1 else ">"
    if bits == 64 and size < 64:
        raise InvalidPluginError(f"{path}: truncated ELF file ({size} bytes, no complete header)")
    # the ELF header after e_ident: addresses and offsets are 8 bytes in ELF64, 4 in ELF32
    (
        e_type,
        e_machine,
        _v,
        _entry,
        e_phoff,
        e_shoff,
        _fl,
        _eh,
        e_phentsize,
        e_phnum,
        e_shentsize,
        e_shnum,
        e_shstrndx,
    ) = struct.unpack_from(end + ("HHIQQQIHHHHHH" if bits == 64 else "HHIIIIIHHHHHH"), data, 16)
    facts_machine = MACHINES.get(e_machine, f"machine {e_machine}")
    want = host_machine() if expect_machine is None else expect_machine
    if e_type == ET_EXEC:
        raise InvalidPluginError(f"{path}: {NOT_A_LIBRARY.format('ELF type ET_EXEC')}")
    if e_type != ET_DYN:
        kind = {1: "a relocatable object (.o)", 4: "a core dump"}.get(e_type, f"ELF type {e_type}")
        raise InvalidPluginError(
            f"{path}: {kind}, not a shared library (build it with -fPIC -shared)"
        )
    if not any_machine and want is not None and (e_machine != want or bits != host_bits()):
        raise InvalidPluginError(
            f"{path}: built for {facts_machine} ({bits}-bit), this host is "
            f"{MACHINES.get(want, want)} ({host_bits()}-bit): wrong architecture"
        )

    ph_fmt = end + ("IIQQQQQQ" if bits == 64 else "IIIIIIII")
    ph_size = struct.calcsize(ph_fmt)
    if e_phnum == 0 or e_phentsize < ph_size or e_phoff + e_phnum * e_phentsize > size:
        raise InvalidPluginError(
            f"{path}: truncated or corrupt: program header table ends past the end of the file "
            f"({size} bytes)"
        )
    interp, dynamic = False, None
    for i in range(e_phnum):
        fields = struct.unpack_from(ph_fmt, data, e_phoff + i * e_phentsize)
        if bits == 64:
            p_type, _flags, p_offset, _va, _pa, p_filesz = fields[:6]
        else:
            p_type, p_offset, _va, _pa, p_filesz = fields[:5]
        if p_type in (PT_LOAD, PT_DYNAMIC) and p_offset + p_filesz > size:
            raise InvalidPluginError(
                f"{path}: truncated: a loadable segment needs {p_offset + p_filesz} bytes, the "
                f"file has {size} (a build still being written?)"
            )
        interp = interp or p_type == PT_INTERP
        if p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    exe_kind = _executable_kind(data, end, bits, interp, dynamic)
    if exe_kind:
        raise InvalidPluginError(f"{path}: {NOT_A_LIBRARY.format(exe_kind)}")
    return ElfFacts(
        bits,
        end == "<",
        e_machine,
        _find_section(data, path, end, bits, e_shoff, e_shentsize, e_shnum, e_shstrndx),
    )


def _executable_kind(
    data: bytes, end: str, bits: int, interp: bool, dynamic: tuple[int, int] | None
) -> str | None:
    """Is this ET_DYN file a position-independent executable?  ``DF_1_PIE``
    (binutils >= 2.32) says so for PIE and static-PIE alike; an older PIE has
    a program interpreter and no ``DT_SONAME``.  libc.so.6 and ld.so have a
    ``PT_INTERP`` too (they can be run), but they have a soname: libraries.
    glibc would refuse a PIE at dlopen ("cannot dynamically load position-
    independent executable"); saying it here names the real mistake."""
    flags_1, soname = 0, False
    if dynamic is not None:
        fmt = end + ("qQ" if bits == 64 else "iI")
        step = struct.calcsize(fmt)
        offset, length = dynamic
        for tag, val in struct.iter_unpack(fmt, data[offset : offset + length - length % step]):
            if tag == DT_NULL:
                break
            if tag == DT_FLAGS_1:
                flags_1 |= val
            soname = soname or tag == DT_SONAME
    if flags_1 & DF_1_PIE:
        return "a PIE: DF_1_PIE in DT_FLAGS_1" if interp else "a static-PIE: DF_1_PIE, no PT_INTERP"
    if interp and not soname:
        return "a PIE: a program interpreter (PT_INTERP) and no DT_SONAME"
    return None


def _find_section(
    data: bytes,
    path: str,
    end: str,
    bits: int,
    shoff: int,
    shentsize: int,
    shnum: int,
    shstrndx: int,
) -> bytes | None:
    """Return the bytes of the ``.hotload`` section, or None when there is none."""
    if shnum == 0 or shoff == 0:
        return None  # stripped of section headers: no descriptor can be found
    sh_fmt = end + ("IIQQQQIIQQ" if bits == 64 else "IIIIIIIIII")
    if shentsize < struct.calcsize(sh_fmt) or shoff + shnum * shentsize > len(data):
        raise InvalidPluginError(
            f"{path}: truncated or corrupt: section header table ends past the end of the file "
            f"({len(data)} bytes)"
        )
    headers = [struct.unpack_from(sh_fmt, data, shoff + i * shentsize) for i in range(shnum)]
    if shstrndx >= shnum:
        raise InvalidPluginError(f"{path}: corrupt ELF: section name table index out of range")
    str_off, str_size = headers[shstrndx][4], headers[shstrndx][5]
    if str_off + str_size > len(data):
        raise InvalidPluginError(f"{path}: truncated: section name table lies past the end of file")
    for sh_name, sh_type, _f, _a, sh_offset, sh_size, *_ in headers:
        if data[str_off + sh_name : str_off + sh_name + 9] == b".hotload\0":
            if sh_type == 8:  # SHT_NOBITS
                return None
            if sh_offset + sh_size > len(data):
                raise InvalidPluginError(
                    f"{path}: truncated: .hotload section lies past end of file"
                )
            return bytes(data[sh_offset : sh_offset + sh_size])
    return None


@functools.cache
def _self_header() -> tuple[int, int] | None:
    try:
        with open("/proc/self/exe", "rb") as fh:
            head = fh.read(20)
    except OSError:
        return None
    if not head.startswith(b"\x7fELF"):
        return None
    end = "<" if head[5] == 1 else ">"
    return (64 if head[4] == 2 else 32), struct.unpack_from(end + "H", head, 18)[0]


def host_machine() -> int | None:
    """e_machine of the running interpreter (None when it is not ELF)."""
    hdr = _self_header()
    return hdr[1] if hdr else None


def host_bits() -> int:
    hdr = _self_header()
    return hdr[0] if hdr else struct.calcsize("P") * 8
