"""Describe a plugin file, and explain, from the file alone, why an ELF
plugin may stay mapped after ``dlclose`` ("leak") or be unsafe to unload.

``describe(path)`` is the one reader and identifier of a plugin file for
``hotload inspect``, the watcher and the preflight worker: it reads the file
once (the loader's hardened reader), checks its format (ELF or PE), parses
the descriptor and returns a ``Report``.  ``inspect_bytes`` does the same for
bytes a caller already holds.  Each ``Finding`` carries a stable reason
``code`` (see ``REASONS``), a one-line message and a fix, so a reason is
explained once, not once per version.

The registry *measures* whether an old version really left memory
(``/proc/self/maps``); this module says *why* it did not, in words a plugin
author can act on, and warns before a reload about code that could run after
an unload.  It reads the dynamic section, ``.dynsym`` and the dynamic
relocations with pyelftools, which costs a millisecond or two per file, so it
runs off the reload's critical path and caches each report by the SHA-256 of
the file's bytes (a reload of an unchanged build costs a dictionary lookup).

What glibc 2.36 was seen to do, which the messages below rely on:

* ``DF_1_NODELETE`` (``-z nodelete``; Go's c-shared mode always sets it):
  the image never leaves.
* ``STB_GNU_UNIQUE`` (C++ inline-function or template statics): the first
  copy that defines such a symbol stays mapped for good, and later copies use
  *its* object, so the state is shared across versions.  ``-fno-gnu-unique``
  builds unmap normally.
* C++ ``thread_local`` with a destructor: the image stays while a thread that
  touched it is alive; after that thread exits it goes at the next
  ``dlclose`` anywhere in the process.
* Static TLS (initial-exec): a block is given back only when it was the last
  one handed out, so with old and new versions overlapping, a 256-byte block
  ran out after 6 reloads ("cannot allocate memory in static TLS block").
* ``atexit()`` in a shared object compiles to ``__cxa_atexit`` with the
  object's DSO handle and runs at ``dlclose`` (harmless, not reported);
  ``on_exit()`` handlers run at ``exit()`` after the unmap: SIGSEGV.
* A ``pthread_key_create`` destructor left behind: SIGSEGV at the next
  thread exit; ``pthread_key_delete`` in a destructor function fixes it.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .._artifact.descriptor import Descriptor, Export, Field, Import, TypeDecl
from .._errors import DescriptorError, InvalidPluginError
from .._platform import _elf as elfcheck

log = logging.getLogger(__name__)

CACHE_SIZE = 256
DF_STATIC_TLS = 0x10  # DT_FLAGS
DF_1_NODELETE = 0x8  # DT_FLAGS_1
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

# DT_NEEDED libraries that bring a language runtime into the process.
RUNTIMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^libgo\.so"), "the Go runtime of gccgo"),
    (re.compile(r"^libpython\d"), "an embedded Python interpreter"),
    (re.compile(r"^libjvm\.so"), "the Java virtual machine"),
    (re.compile(r"^libmono(sgen)?-2\.0\.so"), "the Mono .NET runtime"),
    (re.compile(r"^libcoreclr\.so"), "the .NET CoreCLR runtime"),
    (re.compile(r"^libjulia\.so"), "the Julia runtime"),
    (re.compile(r"^libruby"), "the Ruby interpreter"),
    (re.compile(r"^libnode\.so"), "the Node.js runtime"),
    (re.compile(r"^lib(gphobos|phobos2|druntime)"), "the D runtime"),
    (re.compile(r"^libHSrts"), "the GHC Haskell runtime"),
)

THREAD_ATEXIT = ("__cxa_thread_atexit", "__cxa_thread_atexit_impl")
STD_THREAD_PREFIX = "_ZNSt6thread15_M_start_thread"  # std::thread / jthread / async
THREAD_STARTERS = ("pthread_create", "thrd_create")
KEY_CREATORS = ("pthread_key_create", "tss_create")
# -std=c11 turns signal() into __sysv_signal, so all the spellings count.
SIGNAL_SETTERS = ("signal", "sigaction", "bsd_signal", "sysv_signal", "__sysv_signal", "sigset")
# Not __cxa_atexit: glibc binds a shared object's atexit() to its DSO handle
# and runs it at dlclose.  on_exit() (and a libc that exports atexit itself)
# runs at exit(), after the image is gone.
EXIT_HANDLERS = ("atexit", "on_exit")

DESTRUCTOR = "an __attribute__((destructor)) function (dlclose runs it before unmapping)"


@dataclass(frozen=True)
class Reason:
    """What a reason code means, said once: ``hotload inspect`` prints it
    under the first finding with that code, the docs print the table."""

    code: str
    title: str
    explanation: str


# The stable reason codes.  A finding's ``code`` is one of these, or
# ``bound-by:<soname>`` (explained by "bound-by").  Programs may match on them.
REASONS: dict[str, Reason] = {
    r.code: r
    for r in (
        Reason(
            "go-runtime",
            "Go c-shared library",
            "The Go runtime cannot be unloaded (golang/go#11100): Go marks the image NODELETE and "
            "its runtime threads keep running its code, so every reload leaks one whole image and "
            "one static-TLS block, until a new copy no longer loads.",
        ),
        Reason(
            "nodelete",
            "linked with -z nodelete",
            "DF_1_NODELETE in DT_FLAGS_1: the dynamic loader never unmaps the image, so dlclose "
            "does nothing and every reload leaves the old version in memory.",
        ),
        Reason(
            "gnu-unique",
            "C++ STB_GNU_UNIQUE symbols",
            "Inline-function and template statics are unique symbols: glibc keeps the first copy "
            "that defines them mapped for good, and every later copy uses that copy's objects "
            "instead of its own, so their state is silently shared across versions. "
            "-fno-gnu-unique (g++; clang never makes them) is the fix that always works. "
            "-fvisibility=hidden clears the plugin's own statics but not those of std:: "
            "templates it instantiates (std::to_string's digit table), and -Wl,-Bsymbolic does "
            "not help: the symbols stay unique.",
        ),
        Reason(
            "tls-dtor",
            "thread-local objects with destructors",
            "glibc keeps the image mapped after dlclose while a thread that touched such an "
            "object is alive, because its destructor must still run there; touched from the main "
            "thread or a pool thread, the image stays for the life of the process.",
        ),
        Reason(
            "static-tls",
            "static (initial-exec) TLS",
            "Each loaded copy takes its thread-local block from the process's small, fixed static "
            "TLS reserve, and glibc gives a block back only when it was the last one handed out; "
            "while old and new versions overlap, the reserve runs out after a few reloads and "
            'dlopen fails with "cannot allocate memory in static TLS block".',
        ),
        Reason(
            "runtime",
            "a language runtime",
            "A language runtime keeps threads, a garbage collector or callbacks that point into "
            "the plugin's code and is not built to have that code unmapped, so after dlclose it "
            "may run it and crash the process.",
        ),
        Reason(
            "threads",
            "starts threads",
            "A thread still running when the image is unmapped crashes the process. hotload keeps "
            "such an image loaded (retained) unless the plugin or the host declares it unload "
            "safe.",
        ),
        Reason(
            "thread-key",
            "thread-specific keys",
            "A key's destructor runs at every thread exit, so once the image is unmapped the next "
            "thread exit crashes the process (SIGSEGV). hotload keeps such an image loaded "
            "(retained) unless the plugin or the host declares it unload safe.",
        ),
        Reason(
            "signal-handler",
            "installs signal handlers",
            "A handler left pointing into the unmapped image crashes the process at the next such "
            "signal. hotload keeps such an image loaded (retained) unless declared unload safe.",
        ),
        Reason(
            "atexit",
            "process-exit handlers",
            "on_exit() handlers (and atexit() where libc does not bind it to the library) run at "
            "exit(), after the image has been unmapped, and crash the process at exit.",
        ),
        Reason(
            "bound-by",
            "another library bound symbols into it",
            "glibc keeps an image mapped while another loaded library has symbol bindings into "
            "it. Typically a C++ plugin exports weak template instantiations that libstdc++ also "
            "defines (std::string::_M_construct<char const*>...): when the plugin's dlopen is what "
            "loads libstdc++, libstdc++'s own references resolve to the plugin's copies, and "
            "libstdc++, kept loaded by the next version, pins this one for good.",
        ),
        Reason(
            "other-handle",
            "held from outside hotload",
            "hotload's own dlopen/dlclose counts balance and the file has no reason to stay, so "
            "another reference holds it: a dlopen handle to the same file (ctypes.CDLL, cffi, a "
            "library that dlopens that path) or a library that depends on it.",
        ),
        Reason(
            "open-handles",
            "hotload's own handles still open",
            "hotload opened the image more often than it closed it.",
        ),
        Reason(
            "double-close",
            "hotload's counts are inconsistent",
            "A handle was closed more often than opened, which may have released another "
            "opener's reference.",
        ),
    )
}


def reason(code: str) -> Reason:
    """The documented reason for ``code`` (``bound-by:<lib>`` -> ``bound-by``)."""
    return REASONS[code.split(":", 1)[0]]


@dataclass(frozen=True)
class Finding:
    """One reason the image may stay mapped (``pins``) or may run code after
    it is unmapped (``unsafe``).  ``code`` is stable (see ``REASONS``);
    ``message`` is one line about this file; ``fix`` what to change."""

    code: str
    pins: bool
    unsafe: bool
    message: str
    fix: str

    def line(self) -> str:
        """``code: message`` -- the one line a blocker or a log shows."""
        return f"{self.code}: {self.message}"

    @property
    def explanation(self) -> str:
        return reason(self.code).explanation


@dataclass(frozen=True)
class Report:
    """Everything learned from one file's bytes: what it is (format, machine,
    toolchain), what it says about itself (the descriptor) and what keeps it
    in memory or makes it unsafe to unload (``findings``)."""

    path: str
    digest: str
    findings: tuple[Finding, ...]
    needed: tuple[str, ...]
    soname: str | None
    dynamic_exports: tuple[str, ...]
    format: str = "ELF"  # or "PE"
    machine: str = ""
    bits: int = 0
    size: int = 0
    plugin: Descriptor | None = None
    descriptor_error: str | None = None
    toolchain: str | None = None  # "go", "rust", "c++", "c", "c/c++" (stripped) or None
    compiler: str | None = None  # e.g. "rustc 1.95.0", "GCC 12.2.0", "go1.22.1"
    analysed: bool = True  # False: no unload analysis for this format (PE)

    def pins(self) -> tuple[Finding, ...]:
        """Findings that can keep the image mapped after its last dlclose."""
        return tuple(f for f in self.findings if f.pins)

    def hazards(self) -> tuple[Finding, ...]:
        """Findings whose code may still run after an unload."""
        return tuple(f for f in self.findings if f.unsafe)

    def prototypes(self) -> dict[str, str]:
        """Export name -> C prototype, from the descriptor ({} without one)."""
        return self.plugin.signatures() if self.plugin else {}

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), e.g. for the preflight worker to send."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        plugin = d.get("plugin")
        fields = {
            **d,
            "findings": tuple(Finding(**f) for f in d["findings"]),
            "needed": tuple(d["needed"]),
            "dynamic_exports": tuple(d["dynamic_exports"]),
            "plugin": None
            if plugin is None
            else Descriptor(
                **{
                    **plugin,
                    "exports": tuple(Export(**e) for e in plugin.get("exports", ())),
                    "imports": tuple(Import(**i) for i in plugin.get("imports", ())),
                    "types": tuple(_type_decl(t) for t in plugin.get("types", ())),
                }
            ),
        }
        return cls(**fields)


def _type_decl(d: dict[str, Any]) -> TypeDecl:
    return TypeDecl(
        **{
            **d,
            "fields": tuple(Field(**f) for f in d.get("fields", ())),
            "values": tuple((n, v) for n, v in d.get("values", ())),
        }
    )


@dataclass
class _Facts:
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


# ---- public API -----------------------------------------------------------

_cache: OrderedDict[str, Report] = OrderedDict()
_cache_lock = threading.Lock()


def describe(path: str | os.PathLike[str]) -> Report:
    """Read ``path`` once with the loader's hardened reader (regular files
    only, no blocking on a FIFO, its size cap) and describe it: format,
    descriptor, exports, toolchain, findings.  Any unusable file is an
    ``InvalidPluginError`` naming it and the cause."""
    from .._artifact.loader import read_source

    name = os.fspath(path)
    try:
        data = read_source(name)
    except (MemoryError, OverflowError, ValueError) as exc:  # ValueError: a NUL in the path
        raise InvalidPluginError(f"{name!r}: cannot read: {exc or type(exc).__name__}") from None
    return inspect_bytes(data, name)


def inspect_bytes(data: bytes, path: str, digest: str | None = None) -> Report:
    """Describe a whole file's bytes (ELF or PE, any machine).  Cached by
    ``digest`` (computed when not given), so the same build seen again,
    under any name, costs nothing."""
    digest = digest or hashlib.sha256(data).hexdigest()
    hit = cached(digest, path)
    if hit is not None:
        return hit
    start = time.perf_counter()
    report = _analyse(data, path, digest)
    log.debug(
        "inspected %s in %.2f ms: %s",
        path,
        (time.perf_counter() - start) * 1e3,
        [f.code for f in report.findings] or "clean",
    )
    remember(report)
    return report


def remember(report: Report) -> None:
    """Put a report into the cache, e.g. one made in another process (the
    preflight worker inspects every build it tries, so the host need not)."""
    with _cache_lock:
        _cache[report.digest] = report
        _cache.move_to_end(report.digest)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def cached(digest: str, path: str) -> Report | None:
    """The report on ``digest`` if one was already made, else None, without
    reading or parsing anything: the reload path asks this, so that it never
    waits for an ELF parse (~2 ms with pyelftools)."""
    with _cache_lock:
        hit = _cache.get(digest)
        if hit is not None:
            _cache.move_to_end(digest)
    if hit is None:
        return None
    return hit if hit.path == path else replace(hit, path=path)


def inspect_file(path: str | os.PathLike[str]) -> Report:
    """Old name of ``describe``."""
    return describe(path)


def explain_leak(
    report: Report, opens: int, closes: int, *, loaded_as: str | None = None
) -> list[str]:
    """``leak_findings`` as ``code: message (fix: ...)`` lines, for a host
    that keeps blockers as text."""
    return [
        f"{f.line()} (fix: {f.fix})"
        for f in leak_findings(report, opens, closes, loaded_as=loaded_as)
    ]


def leak_findings(
    report: Report, opens: int, closes: int, *, loaded_as: str | None = None
) -> list[Finding]:
    """Findings for a version that is still mapped after its final dlclose.

    The pinning findings when the file has any.  Otherwise, with
    ``loaded_as`` (the path the image was dlopened from, still mapped in
    this process), the libraries whose symbol bindings resolve into it
    (``bound-by:<lib>``); failing that, the reference comes from outside
    hotload and the finding says where to look."""
    pins = list(report.pins())
    if pins:
        return pins
    if opens > closes:
        n = opens - closes
        return [
            Finding(
                "open-handles",
                pins=True,
                unsafe=False,
                message=f"hotload opened it {opens} times and closed it {closes} times: "
                f"{_count(n, 'handle is', 'handles are')} still open",
                fix="report this as a hotload bug",
            )
        ]
    if opens < closes:
        return [
            Finding(
                "double-close",
                pins=True,
                unsafe=False,
                message=f"hotload's own counts are inconsistent ({opens} opens, {closes} closes)",
                fix="report this as a hotload bug",
            )
        ]
    binders = find_binders(loaded_as, report) if loaded_as else []
    return binders or [
        Finding(
            "other-handle",
            pins=True,
            unsafe=False,
            message=f"still mapped though hotload's dlopen/dlclose counts balance ({opens} opens, "
            f"{closes} closes) and nothing in the file keeps it",
            fix="find who else holds it: another dlopen of the same file (ctypes.CDLL, cffi) or "
            "a library that depends on it",
        )
    ]


def clear_cache() -> None:
    """Forget every cached report (tests, or after a pyelftools upgrade)."""
    with _cache_lock:
        _cache.clear()


# ---- reading the file -----------------------------------------------------


def _analyse(data: bytes, path: str, digest: str) -> Report:
    kind = elfcheck.sniff(data)
    if kind == "pe" and data[:2] == b"MZ":
        return _analyse_pe(data, path, digest)
    if kind != "elf":
        from .._platform import binfmt  # the native checker says what the file is instead

        binfmt.check(data, path)  # raises InvalidPluginError for every non-ELF, non-PE file
    checked = elfcheck.check(data, path, any_machine=True)  # any machine, any word size
    facts = _read_facts(data, path, checked.machine)
    names = _demangle([*facts.unique, *facts.tls_symbols])
    findings = _findings(facts, names)
    plugin, error = _descriptor(checked.hotload_section, path)
    return Report(
        path=path,
        digest=digest,
        findings=tuple(findings),
        needed=tuple(facts.needed),
        soname=facts.soname,
        dynamic_exports=tuple(sorted(facts.exports)),
        format="ELF",
        machine=checked.machine_name,
        bits=checked.bits,
        size=len(data),
        plugin=plugin,
        descriptor_error=error,
        toolchain=facts.toolchain,
        compiler=facts.compiler,
    )


def _analyse_pe(data: bytes, path: str, digest: str) -> Report:
    """A Windows DLL (a mingw build seen from Linux, or the Windows host's
    own): format facts and descriptor; the unload analysis is ELF-only."""
    try:
        from .._platform import _pe as pecheck
    except ImportError as exc:  # pefile missing
        raise InvalidPluginError(f"{path}: cannot read a Windows DLL here: {exc}") from None
    checked = pecheck.check(data, path, expect_machine=None, any_machine=True)
    plugin, error = _descriptor(checked.hotload_section, path)
    return Report(
        path=path,
        digest=digest,
        findings=(),
        needed=(),
        soname=None,
        dynamic_exports=tuple(pecheck.exports(data, path)),
        format="PE",
        machine=checked.machine_name,
        bits=checked.bits,
        size=len(data),
        plugin=plugin,
        descriptor_error=error,
        analysed=False,
    )


def _descriptor(section: bytes | None, path: str) -> tuple[Descriptor | None, str | None]:
    """The parsed ``.hotload`` section, or why it cannot be parsed: a
    description reports a bad descriptor instead of refusing the file."""
    from .._artifact import descriptor

    if section is None:
        return None, None
    try:
        return descriptor.parse(section, path), None
    except DescriptorError as exc:
        return None, str(exc)


def _read_facts(data: bytes, path: str, machine: int) -> _Facts:
    """Parse with pyelftools.  Imported here: it costs ~40 ms to import and
    only the first inspection should pay that, not ``import hotload``."""
    from elftools.elf.elffile import ELFFile

    try:
        elf = _Elf(ELFFile(io.BytesIO(data)))
        facts = _Facts(machine=machine)
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


def _read_dynamic(elf: _Elf, facts: _Facts) -> None:
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


def _read_symbols(elf: _Elf, facts: _Facts) -> None:
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


def _read_sections_and_tls(elf: _Elf, facts: _Facts) -> None:
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


def _identify_toolchain(elf: _Elf, facts: _Facts) -> None:
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


def _read_tls_relocs(elf: _Elf, data: bytes, facts: _Facts) -> None:
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
            yield entry[1] >> type_bits


def _demangle(names: list[str]) -> dict[str, str]:
    """Demangle C++ names with one ``c++filt`` call; a name keeps its mangled
    spelling when c++filt is missing or fails."""
    mangled = sorted({n for n in names if n.startswith("_Z")})
    result = {n: n for n in names}
    tool = shutil.which("c++filt")
    if not mangled or tool is None:
        return result
    try:
        out = subprocess.run(
            [tool],
            input="\n".join(mangled) + "\n",
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("c++filt failed: %s", exc)
        return result
    if len(out) == len(mangled):
        result.update(zip(mangled, out, strict=True))
    return result


# ---- the findings ---------------------------------------------------------


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _listing(names: Iterable[str], limit: int = 8) -> str:
    items = list(dict.fromkeys(names))
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


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


def _go_runtime(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    if facts.go_buildinfo is None:
        return []
    built = f" built with {facts.compiler}" if facts.compiler else ""
    return [
        Finding(
            "go-runtime",
            pins=True,
            unsafe=True,
            message=f"a Go c-shared library{built}: the Go runtime can never be unloaded",
            fix="none in the plugin: each reload leaks one image; reload it rarely, or restart "
            "the process to free them",
        )
    ]


def _nodelete(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    if not facts.flags_1 & DF_1_NODELETE:
        return []
    return [
        Finding(
            "nodelete",
            pins=True,
            unsafe=False,
            message="linked with -z nodelete (DF_1_NODELETE): the loader never unmaps it",
            fix="relink without -Wl,-z,nodelete",
        )
    ]


def _gnu_unique(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    if not facts.unique:
        return []
    guards = [n for n in facts.unique if n.startswith("_ZGV")]
    shown = [names[n] for n in facts.unique if n not in guards] or [names[n] for n in guards]
    # -fvisibility=hidden does not hide what std:: templates define (their
    # declarations carry default visibility), so advise it only when every
    # unique symbol is the plugin's own
    from_std = any(_STD_MANGLED.match(n) for n in facts.unique)
    return [
        Finding(
            "gnu-unique",
            pins=True,
            unsafe=False,
            message=f"C++ STB_GNU_UNIQUE symbols: {_listing(shown, 4)}",
            fix="rebuild with -fno-gnu-unique (g++)"
            + ("" if from_std else ", or hide them with -fvisibility=hidden"),
        )
    ]


# a mangled name in namespace std or __gnu_cxx: an object (_ZNSt...), a
# function's local static (_ZZNSt...) or its guard (_ZGVZNSt...)
_STD_MANGLED = re.compile(r"^_Z(GV)?Z?N?[rVK]*(St|9__gnu_cxx)")


UNLOAD_SAFE_FIX = (
    "declare it unload safe: host.load(..., unload_safe=True), or HOTLOAD_UNLOAD_SAFE() in a "
    "plugin with a descriptor"
)
RUST_FIX = (
    "if the crate starts no threads and keeps no thread_local! values with Drop, " + UNLOAD_SAFE_FIX
)


def _tls_dtor(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    used = [n for n in THREAD_ATEXIT if n in facts.imports]
    if not used:
        return []
    if facts.toolchain == "rust":
        return [
            Finding(
                "tls-dtor",
                pins=True,
                unsafe=False,
                message=f"Rust's std registers thread_local! destructors ({', '.join(used)}): "
                "a used one keeps the image while its thread lives",
                fix=RUST_FIX,
            )
        ]
    return [
        Finding(
            "tls-dtor",
            pins=True,
            unsafe=False,
            message=f"C++ thread_local objects with destructors (imports {', '.join(used)})",
            fix="use thread_local only for trivially destructible types, or touch them only "
            "from threads that exit before the reload",
        )
    ]


def _static_tls(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    flagged = bool(facts.flags & DF_STATIC_TLS)
    if not flagged and not facts.tls_relocs:
        return []
    how = [
        w
        for w, on in (
            ("DF_STATIC_TLS", flagged),
            (_count(facts.tls_relocs, "initial-exec relocation", "initial-exec relocations"), 1),
        )
        if on and (w != "0 initial-exec relocations")
    ]
    against = f" against {_listing((names[n] for n in facts.tls_symbols), 3)}"
    size = f"{facts.tls_size}-byte " if facts.tls_size else ""
    return [
        Finding(
            "static-tls",
            pins=False,
            unsafe=False,
            message=f"a {size}static TLS block per loaded copy ({', '.join(how)}"
            f"{against if facts.tls_symbols else ''})",
            fix="compile with -ftls-model=global-dynamic; drop -ftls-model=initial-exec and "
            'tls_model("initial-exec") attributes',
        )
    ]


def _runtime(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    found = []
    for lib in facts.needed:
        what = next((desc for rx, desc in RUNTIMES if rx.match(os.path.basename(lib))), None)
        if what:
            found.append(
                Finding(
                    "runtime",
                    pins=False,
                    unsafe=True,
                    message=f"links {lib}, {what}, which may run the plugin's code after dlclose",
                    fix="keep this plugin loaded for the life of the process, or run the runtime "
                    "in a separate process",
                )
            )
    return found


def _imported(facts: _Facts, wanted: Iterable[str]) -> list[str]:
    return [n for n in wanted if n in facts.imports]


def _hazard(facts: _Facts, code: str, used: list[str], what: str, fix: str) -> list[Finding]:
    if not used:
        return []
    rust = facts.toolchain == "rust"
    return [
        Finding(
            code,
            pins=False,
            unsafe=True,
            message=f"{'Rust std ' if rust else ''}{what} (imports {', '.join(used)})",
            fix=RUST_FIX if rust else f"{fix}, then {UNLOAD_SAFE_FIX}",
        )
    ]


def _threads(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    used = _imported(facts, THREAD_STARTERS)
    if any(n.startswith(STD_THREAD_PREFIX) for n in facts.imports):
        used.append("std::thread")
    return _hazard(
        facts,
        "threads",
        used,
        "starts threads",
        f"stop and join every thread it started in {DESTRUCTOR}",
    )


def _thread_key(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        facts,
        "thread-key",
        _imported(facts, KEY_CREATORS),
        "creates thread-specific keys, whose destructors run at every thread exit",
        f"delete every key (pthread_key_delete / tss_delete) in {DESTRUCTOR}",
    )


def _signal_handler(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        facts,
        "signal-handler",
        _imported(facts, SIGNAL_SETTERS),
        "may install signal handlers",
        f"restore the previous handlers (saved by sigaction) in {DESTRUCTOR}",
    )


def _atexit(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        facts,
        "atexit",
        _imported(facts, EXIT_HANDLERS),
        "registers process-exit handlers that run after the image is unmapped",
        f"do that cleanup in {DESTRUCTOR}, or with atexit(), which glibc runs at dlclose",
    )


_FINDERS: tuple[Callable[[_Facts, dict[str, str]], list[Finding]], ...] = (
    _go_runtime,
    _nodelete,
    _gnu_unique,
    _tls_dtor,
    _static_tls,
    _runtime,
    _threads,
    _thread_key,
    _signal_handler,
    _atexit,
)


def _findings(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    """Every finding, except that a Go library gets its one: the runtime
    explains its NODELETE, TLS, threads and signal handlers."""
    found = [f for finder in _FINDERS for f in finder(facts, names)]
    if facts.go_buildinfo is not None:
        return [f for f in found if f.code == "go-runtime"]
    return found


# ---- who binds into a loaded image ----------------------------------------
#
# glibc keeps an image mapped while another loaded object has a symbol binding
# into it (a GOT or PLT slot that resolved to one of its definitions).  That is
# a fact of this process, not of the file: walk the loaded objects with
# dl_iterate_phdr, find in each object's file the pointer relocations that name
# a symbol the image defines, and read those slots.  A slot whose value lies
# inside the image is a binding.  Only objects loaded after the image can hold
# one: hotload opens images RTLD_LOCAL, so earlier objects never see them.

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
PF_R = 4
_LIBSTDCXX = re.compile(r"^lib(stdc\+\+|c\+\+)\.so")


class _PhdrInfo(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_size_t),
        ("name", ctypes.c_char_p),
        ("phdr", ctypes.c_void_p),
        ("phnum", ctypes.c_uint16),
    ]


_PHDR_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t, ctypes.c_void_p
)


@dataclass(frozen=True)
class _Loaded:
    name: str
    base: int
    readable: tuple[tuple[int, int], ...]  # [start, end) of each readable PT_LOAD


def _walk(visit: Callable[[_Loaded], None]) -> None:
    """Call ``visit`` on every loaded object, in load order, inside
    dl_iterate_phdr: the loader lock is held, so no object is unmapped while
    ``visit`` reads its memory."""
    fmt = "IIQQQQQQ" if struct.calcsize("P") == 8 else "IIIIIIII"
    step = struct.calcsize(fmt)

    def callback(info: Any, _size: int, _data: Any) -> int:
        i = info.contents
        segs = []
        for k in range(i.phnum):
            f = struct.unpack(fmt, ctypes.string_at(i.phdr + k * step, step))
            p_type, flags, vaddr, memsz = (
                (f[0], f[1], f[3], f[6]) if step == 56 else (f[0], f[6], f[2], f[5])
            )
            if p_type == 1 and flags & PF_R:
                segs.append((i.addr + vaddr, i.addr + vaddr + memsz))
        try:
            visit(_Loaded(os.fsdecode(i.name or b""), i.addr, tuple(segs)))
        except Exception:  # never let an exception cross the C frame
            log.debug("binder walk failed on %r", i.name, exc_info=True)
        return 0

    libc = ctypes.CDLL(None)
    libc.dl_iterate_phdr(_PHDR_CALLBACK(callback), None)


_relocs_cache: OrderedDict[tuple[str, int, int, int], dict[str, list[int]]] = OrderedDict()


def _pointer_relocs(path: str) -> dict[str, list[int]]:
    """Symbol name -> slot offsets (from the object's base) of the pointer
    relocations in ``path``'s DT_RELA/DT_REL/DT_JMPREL.  Read with struct (a
    libstdc++ has thousands); cached by the file's identity."""
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
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
    with _cache_lock:
        _relocs_cache[key] = out
        while len(_relocs_cache) > CACHE_SIZE:
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


def find_binders(loaded_as: str, report: Report) -> list[Finding]:
    """``bound-by:<lib>`` findings: the loaded objects whose symbol bindings
    resolve into the image dlopened from ``loaded_as`` (still mapped in this
    process).  [] when none is found or the platform cannot tell."""
    if not sys.platform.startswith("linux") or not report.dynamic_exports:
        return []
    try:
        return _find_binders(loaded_as, report)
    except Exception:  # a diagnosis must never fail the caller
        log.debug("cannot look for binders of %s", loaded_as, exc_info=True)
        return []


def _find_binders(loaded_as: str, report: Report) -> list[Finding]:
    target = os.stat(loaded_as)
    order: list[_Loaded] = []
    _walk(order.append)
    index = next(
        (i for i, o in enumerate(order) if o.name and _same_file(o.name, target)),
        None,
    )
    if index is None:
        return []
    defined = set(report.dynamic_exports)
    candidates: dict[tuple[str, int], dict[str, list[int]]] = {}
    for obj in order[index + 1 :]:
        if not obj.name.startswith("/") or _same_file(obj.name, target):
            continue
        relocs = _pointer_relocs(obj.name)
        hits = {n: offs for n, offs in relocs.items() if n in defined}
        if hits:
            candidates[(obj.name, obj.base)] = hits
    if not candidates:
        return []
    image = order[index].readable
    bound: dict[str, list[str]] = {}

    def check(obj: _Loaded) -> None:
        hits = candidates.get((obj.name, obj.base))
        if not hits:
            return
        for sym, offsets in hits.items():
            for off in offsets:
                slot = obj.base + off
                if not any(
                    lo <= slot and slot + ctypes.sizeof(ctypes.c_void_p) <= hi
                    for lo, hi in obj.readable
                ):
                    continue
                value = ctypes.c_void_p.from_address(slot).value or 0
                if any(lo <= value < hi for lo, hi in image):
                    bound.setdefault(obj.name, []).append(sym)
                    break

    _walk(check)
    return [_bound_by(lib, syms) for lib, syms in bound.items()]


def _same_file(name: str, target: os.stat_result) -> bool:
    try:
        st = os.stat(name)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)


def _bound_by(lib: str, symbols: list[str]) -> Finding:
    base = os.path.basename(lib)
    names = _demangle(symbols)
    shown = _listing((names[s] for s in sorted(symbols)), 2)
    if _LIBSTDCXX.match(base):
        fix = (
            f"load {base} in the host before the plugin's first version (ctypes.CDLL({base!r}) "
            "at start-up), or export only the plugin's API with a version script "
            "(-Wl,--version-script; -fvisibility=hidden does not hide std:: templates)"
        )
    else:
        fix = (
            f"load {base} in the host before the plugin, or stop exporting the symbols it binds "
            "(-fvisibility=hidden, or a version script)"
        )
    return Finding(
        f"bound-by:{base}",
        pins=True,
        unsafe=False,
        message=f"{lib} bound {_count(len(symbols), 'symbol', 'symbols')} into it: {shown}",
        fix=fix,
    )
