"""Check a Windows DLL *before* ``LoadLibraryExW`` sees it: the PE twin of ``elfcheck``.

Windows does not die on a truncated DLL the way glibc can, but the loader's
answer is one opaque code (193, "not a valid Win32 application") for a text
file, a half-written build, an EXE and an ARM64 DLL alike.  Checking the
bytes first gives the operator the actual cause, and it reads the ``.hotload``
descriptor section without running any of the plugin's code, on any OS (so
``hotload inspect`` can look at a Windows build from Linux).

It uses pefile (a dependency already); ``fast_load`` keeps it to the headers
and section table, so the check stays off the data directories that the
loader does not need from us.  ``exports`` and ``pdb_path`` parse the one
directory they need, off the reload's critical path.

``expect_machine`` and ``PeFacts.machine`` are PE machine numbers
(``IMAGE_FILE_MACHINE_*``, e.g. 0x8664), not ELF ``e_machine`` numbers.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import pefile

from .._errors import InvalidPluginError
from . import _elf as elfcheck
from ._elf import sniff as sniff  # one sniffer for both formats (BinaryFormat.sniff)

IMAGE_FILE_DLL = 0x2000
IMAGE_FILE_EXECUTABLE_IMAGE = 0x0002
IMAGE_DEBUG_TYPE_CODEVIEW = 2
OPTIONAL_MAGIC_BITS = {0x10B: 32, 0x20B: 64}
MACHINES = {
    0x014C: "x86 (i386)",
    0x01C0: "ARM",
    0x01C4: "ARM (Thumb-2)",
    0x0200: "IA-64",
    0x8664: "x86-64",
    0xA641: "ARM64EC",
    0xAA64: "AArch64",
    0x5032: "RISC-V",
    0x5064: "RISC-V",
    0x6264: "LoongArch",
}
_SECTION = b".hotload"


@dataclass(frozen=True)
class PeFacts:
    """What ``check`` learnt: the same attribute names as ``elfcheck.ElfFacts``
    where they apply, so callers can treat both alike."""

    bits: int
    machine: int
    hotload_section: bytes | None
    image_base: int
    little_endian: bool = True  # every PE image is

    @property
    def machine_name(self) -> str:
        return MACHINES.get(self.machine, f"machine 0x{self.machine:04x}")


@dataclass(frozen=True)
class CodeView:
    """A CodeView debug record: what a debugger or symbol server matches a
    DLL to its PDB by (signature + age), and the PDB path the linker wrote."""

    signature: str  # "RSDS" (PDB 7.0) or "NB10" (PDB 2.0)
    guid: str  # RSDS: the GUID as a symbol server prints it; NB10: the timestamp, hex
    age: int
    pdb_path: str | None


def _describe_non_pe(data: bytes) -> str:
    return {
        "elf": "an ELF shared object (a Linux/BSD .so), not a Windows DLL",
        "archive": "an archive or Mach-O file, not a Windows DLL",
        "binary": "not a PE file (no MZ header)",
    }.get(elfcheck.sniff(data), "a text file, not a DLL (no MZ header)")


def _u16(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 2], "little")


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 4], "little")


def _parse(data: bytes, path: str) -> pefile.PE:
    """pefile's view of ``data``, after checking by hand that the headers are
    all there, so a file cut short gets a message that says "truncated"
    rather than one of pefile's internal complaints."""
    size = len(data)
    if size == 0:
        raise InvalidPluginError(f"{path}: empty file, not a DLL")
    if not data.startswith(b"MZ"):
        raise InvalidPluginError(f"{path}: {_describe_non_pe(data)}")
    if size < 64:
        raise InvalidPluginError(
            f"{path}: truncated PE file ({size} bytes, no complete DOS header)"
        )
    lfanew = _u32(data, 60)
    if lfanew + 24 > size:
        raise InvalidPluginError(
            f"{path}: truncated PE file: the PE header at offset {lfanew} lies past the end of the "
            f"file ({size} bytes)"
        )
    if data[lfanew : lfanew + 4] != b"PE\0\0":
        raise InvalidPluginError(
            f"{path}: an MZ file without a PE header (a DOS program?), not a DLL"
        )
    opt = lfanew + 24
    headers_end = opt + _u16(data, lfanew + 20) + 40 * _u16(data, lfanew + 6)  # + section table
    size_of_headers = _u32(data, opt + 60) if opt + 64 <= size else 0
    need = max(headers_end, size_of_headers)
    if need > size:
        raise InvalidPluginError(
            f"{path}: truncated: the headers need {need} bytes, the file has {size} "
            "(a build still being written?)"
        )
    try:
        return pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as exc:
        raise InvalidPluginError(f"{path}: corrupt PE file ({str(exc).strip(chr(39))})") from None


def check(
    data: bytes, path: str, *, expect_machine: int | None = None, any_machine: bool = False
) -> PeFacts:
    """Validate ``data`` (the whole file) as a loadable Windows DLL.

    Raises ``InvalidPluginError`` naming ``path`` and the cause: not PE,
    truncated (headers or a section's raw data past the end of the file), an
    EXE rather than a DLL, or built for another machine than
    ``expect_machine`` (default: this interpreter's, on Windows; no check
    elsewhere, where no PE machine is native).  ``any_machine`` skips the
    machine check, as in ``elfcheck.check``, for inspecting files offline.
    """
    pe = _parse(data, path)
    size = len(data)
    fh, oh = pe.FILE_HEADER, getattr(pe, "OPTIONAL_HEADER", None)
    if oh is None or oh.Magic not in OPTIONAL_MAGIC_BITS:
        magic = "none" if oh is None else f"0x{oh.Magic:x}"
        raise InvalidPluginError(f"{path}: corrupt PE file: optional header magic {magic}")
    bits = OPTIONAL_MAGIC_BITS[oh.Magic]
    if not fh.Characteristics & IMAGE_FILE_DLL:
        kind = (
            "a Windows executable (.exe)"
            if fh.Characteristics & IMAGE_FILE_EXECUTABLE_IMAGE
            else "an object file"
        )
        raise InvalidPluginError(f"{path}: {kind}, not a DLL (link it with -shared)")
    want = host_machine() if expect_machine is None else expect_machine
    facts_name = MACHINES.get(fh.Machine, f"machine 0x{fh.Machine:04x}")
    if not any_machine and want is not None and fh.Machine != want:
        raise InvalidPluginError(
            f"{path}: built for {facts_name} ({bits}-bit), this host is "
            f"{MACHINES.get(want, f'machine 0x{want:04x}')}: wrong architecture"
        )
    hotload: bytes | None = None
    for index, sec in enumerate(pe.sections):
        end = sec.PointerToRawData + sec.SizeOfRawData
        if sec.SizeOfRawData and end > size:
            # names over 8 bytes ("/19") point into the string table at the file's end: gone too
            name = sec.Name.rstrip(b"\0").decode("utf-8", errors="replace")
            raise InvalidPluginError(
                f"{path}: truncated: section #{index} ({name}) needs {end} bytes, the file has "
                f"{size} (a build still being written?)"
            )
        if sec.Name.rstrip(b"\0") == _SECTION:
            # VirtualSize is the real length; SizeOfRawData is padded to FileAlignment
            length = min(sec.Misc_VirtualSize or sec.SizeOfRawData, sec.SizeOfRawData)
            hotload = bytes(data[sec.PointerToRawData : sec.PointerToRawData + length])
    _check_tail(data, path, pe)
    return PeFacts(bits=bits, machine=fh.Machine, hotload_section=hotload, image_base=oh.ImageBase)


def _check_tail(data: bytes, path: str, pe: pefile.PE) -> None:
    """The parts after the sections: the COFF symbol and string tables (GNU ld
    keeps them in DLLs) and an Authenticode certificate table.  The loader
    needs neither, but when they are cut short the file is still being
    written (or was copied incompletely), and the next bytes may not be the
    ones the build meant: refuse it now rather than load half a story."""
    size = len(data)
    fh = pe.FILE_HEADER
    if fh.PointerToSymbolTable:
        strings = fh.PointerToSymbolTable + 18 * fh.NumberOfSymbols
        end = strings + (_u32(data, strings) if strings + 4 <= size else 4)
        if end > size:
            raise InvalidPluginError(
                f"{path}: truncated: the COFF symbol table ends at {end} bytes, the file has "
                f"{size} "
                "(a build still being written?)"
            )
    dirs = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    security = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]
    if len(dirs) > security and dirs[security].Size:
        end = dirs[security].VirtualAddress + dirs[security].Size  # a file offset, for this one
        if end > size:
            raise InvalidPluginError(
                f"{path}: truncated: the signature (certificate table) ends at {end} bytes, the "
                f"file "
                f"has {size}"
            )


def exports(data: bytes, path: str = "<data>") -> list[str]:
    """Names in the export table, in table order (sorted: the loader binary-
    searches it).  Exports by ordinal only have no name and are left out."""
    pe = _parse(data, path)
    pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXPORT"]])
    table = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    if table is None:
        return []
    return [sym.name.decode("ascii", errors="replace") for sym in table.symbols if sym.name]


def codeview(data: bytes, path: str = "<data>") -> CodeView | None:
    """The first CodeView record of the debug directory, or None."""
    pe = _parse(data, path)
    pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_DEBUG"]])
    for entry in getattr(pe, "DIRECTORY_ENTRY_DEBUG", []):
        if entry.struct.Type != IMAGE_DEBUG_TYPE_CODEVIEW:
            continue
        start, length = entry.struct.PointerToRawData, entry.struct.SizeOfData
        rec = data[start : start + length]
        if rec[:4] == b"RSDS" and len(rec) >= 24:  # GUID, age, UTF-8 path
            guid = (
                f"{_u32(rec, 4):08X}{_u16(rec, 8):04X}{_u16(rec, 10):04X}{rec[12:20].hex().upper()}"
            )
            age, name = _u32(rec, 20), rec[24:]
        elif rec[:4] == b"NB10" and len(rec) >= 16:  # offset, timestamp, age, ANSI path
            guid, age, name = f"{_u32(rec, 8):08X}", _u32(rec, 12), rec[16:]
        else:
            continue
        pdb = name.split(b"\0", 1)[0].decode("utf-8", errors="replace") or None
        return CodeView(signature=rec[:4].decode("ascii"), guid=guid, age=age, pdb_path=pdb)
    return None


def pdb_path(data: bytes, path: str = "<data>") -> str | None:
    """The PDB path recorded in the DLL's CodeView debug record (RSDS), or
    None when there is no record or it names no file (``ld --build-id``
    writes an RSDS record with a GUID and an empty name)."""
    cv = codeview(data, path)
    return cv.pdb_path if cv else None


@functools.cache
def host_machine() -> int | None:
    """PE machine of the running interpreter (None when it is not a PE file,
    i.e. not on Windows).  Read from ``sys.executable`` itself rather than
    ``platform.machine()``, which names the OS: a 32-bit Python on 64-bit
    Windows must refuse 64-bit DLLs."""
    if sys.platform != "win32":
        return None
    try:
        with open(sys.executable, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if not head.startswith(b"MZ") or len(head) < 64:
        return None
    lfanew = int.from_bytes(head[60:64], "little")
    if head[lfanew : lfanew + 4] != b"PE\0\0":
        return None
    return int.from_bytes(head[lfanew + 4 : lfanew + 6], "little")
