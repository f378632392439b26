"""Explain, from the file alone, why an ELF plugin may stay mapped after
``dlclose`` ("leak") or be unsafe to unload.

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

import hashlib
import io
import logging
import os
import re
import shutil
import struct
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ._errors import InvalidPluginError
from ._platform import _elf as elfcheck

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
class Finding:
    """One reason the image may stay mapped (``pins``) or may run code after
    it is unmapped (``unsafe``); ``code`` is a stable id for programs."""

    code: str
    pins: bool
    unsafe: bool
    message: str
    fix: str | None


@dataclass(frozen=True)
class Report:
    """Everything the inspector learned from one file's bytes."""

    path: str
    digest: str
    findings: tuple[Finding, ...]
    needed: tuple[str, ...]
    soname: str | None
    dynamic_exports: tuple[str, ...]

    def pins(self) -> tuple[Finding, ...]:
        """Findings that can keep the image mapped after its last dlclose."""
        return tuple(f for f in self.findings if f.pins)

    def hazards(self) -> tuple[Finding, ...]:
        """Findings whose code may still run after an unload."""
        return tuple(f for f in self.findings if f.unsafe)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), e.g. for the preflight worker to send."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            path=d["path"],
            digest=d["digest"],
            findings=tuple(Finding(**f) for f in d["findings"]),
            needed=tuple(d["needed"]),
            soname=d["soname"],
            dynamic_exports=tuple(d["dynamic_exports"]),
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
    exports: set[str] = field(default_factory=set)
    unique: list[str] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)
    tls_symbols: list[str] = field(default_factory=list)
    tls_relocs: int = 0
    tls_size: int = 0


# ---- public API -----------------------------------------------------------

_cache: OrderedDict[str, Report] = OrderedDict()
_cache_lock = threading.Lock()


def inspect_bytes(data: bytes, path: str, digest: str | None = None) -> Report:
    """Inspect a whole file's bytes.  Cached by ``digest`` (computed when not
    given), so the same build seen again, under any name, costs nothing."""
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
    """Read and inspect ``path``; a missing or unreadable file is an
    ``InvalidPluginError`` like any other unusable plugin."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InvalidPluginError(f"{name}: cannot read: {exc.strerror or exc}") from None
    return inspect_bytes(data, name)


def explain_leak(report: Report, opens: int, closes: int) -> list[str]:
    """Sentences for a version that is still mapped after its final dlclose.

    The pinning findings when the file has any; otherwise the reference must
    come from outside hotload, and the sentence says where to look."""
    name = os.path.basename(report.path)
    pins = report.pins()
    if pins:
        return [f"{name}: {f.message}" + (f" Fix: {f.fix}." if f.fix else "") for f in pins]
    if opens > closes:
        return [
            f"{name} is still mapped: hotload opened it {opens} times but closed it {closes} "
            f"times, so "
            f"{_count(opens - closes, 'of its own handles is', 'of its own handles are')} "
            f"still open."
        ]
    if opens < closes:
        return [
            f"{name} is still mapped, and hotload's own counts are inconsistent ({opens} opens, "
            f"{closes} closes): a handle was closed twice, which may have released another "
            f"opener's reference."
        ]
    return [
        f"{name} is still mapped after its final dlclose, yet hotload's own dlopen/dlclose counts "
        f"balance ({opens} opens, {closes} closes) and the file has no reason to stay: another "
        f"dlopen handle to the same file (ctypes.CDLL, cffi, or a library that dlopens that path) "
        f"or a library that depends on it must still hold a reference."
    ]


def clear_cache() -> None:
    """Forget every cached report (tests, or after a pyelftools upgrade)."""
    with _cache_lock:
        _cache.clear()


# ---- reading the file -----------------------------------------------------


def _analyse(data: bytes, path: str, digest: str) -> Report:
    facts = _read_facts(data, path, _validate(data, path))
    names = _demangle([*facts.unique, *facts.tls_symbols])
    findings = [f for finder in _FINDERS for f in finder(facts, names)]
    return Report(
        path=path,
        digest=digest,
        findings=tuple(findings),
        needed=tuple(facts.needed),
        soname=facts.soname,
        dynamic_exports=tuple(sorted(facts.exports)),
    )


def _validate(data: bytes, path: str) -> int:
    """Refuse what is not an ELF shared object, with elfcheck's messages; the
    inspector explains foreign builds too (any machine, any word size).
    Returns the file's e_machine."""
    return elfcheck.check(data, path, any_machine=True).machine


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
    for segment in elf.segments:
        if segment["p_type"] == "PT_TLS":
            facts.tls_size = segment["p_memsz"]


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
    version = _go_version(facts.go_buildinfo)
    built = f" built with {version}" if version else ""
    return [
        Finding(
            "go_runtime",
            pins=True,
            unsafe=True,
            message=(
                f"a Go c-shared library{built} (.go.buildinfo section): the Go runtime cannot be "
                "unloaded (golang/go#11100). Go marks the image NODELETE and its runtime threads "
                "keep "
                "running its code, so every reload leaks one whole image, and one block of static "
                "TLS, "
                "until a new copy no longer loads; only restarting the process frees them."
            ),
            fix=None,
        )
    ]


def _nodelete(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    if not facts.flags_1 & DF_1_NODELETE or facts.go_buildinfo is not None:
        return []  # Go sets NODELETE itself; its own finding says so
    return [
        Finding(
            "nodelete",
            pins=True,
            unsafe=False,
            message=(
                "linked with -z nodelete (DF_1_NODELETE in DT_FLAGS_1): the dynamic loader never "
                "unmaps this image, so dlclose does nothing and every reload leaves the old "
                "version "
                "in memory for the life of the process."
            ),
            fix="relink without -Wl,-z,nodelete",
        )
    ]


def _gnu_unique(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    if not facts.unique:
        return []
    guards = [n for n in facts.unique if n.startswith("_ZGV")]
    shown = [names[n] for n in facts.unique if n not in guards] or [names[n] for n in guards]
    return [
        Finding(
            "gnu_unique",
            pins=True,
            unsafe=False,
            message=(
                f"has C++ STB_GNU_UNIQUE symbols (inline-function or template statics): "
                f"{_listing(shown)}. glibc keeps the first copy loaded in the process that defines "
                "them mapped for good, and every later copy uses that copy's objects instead of "
                "its "
                "own, so their state is silently shared across versions."
            ),
            fix=(
                "rebuild with -fno-gnu-unique, or with -fvisibility=hidden so that they are not "
                "exported "
                "(-Wl,-Bsymbolic does not help: the symbols stay unique)"
            ),
        )
    ]


def _tls_dtor(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    used = [n for n in THREAD_ATEXIT if n in facts.imports]
    if not used:
        return []
    return [
        Finding(
            "tls_dtor",
            pins=True,
            unsafe=False,
            message=(
                f"has C++ thread_local objects with destructors (imports {', '.join(used)}): glibc "
                "keeps the image mapped after dlclose while any thread that touched one of them is "
                "alive, because their destructors must still run there; touched from the main "
                "thread "
                "or a pool thread, the image stays for the life of the process (after such threads "
                "exit it goes at the next dlclose in the process)."
            ),
            fix=(
                "use thread_local only for trivially destructible types (integers, pointers, "
                "arrays), "
                "or touch them only from threads that exit before the reload"
            ),
        )
    ]


def _static_tls(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    flagged = bool(facts.flags & DF_STATIC_TLS)
    if (not flagged and not facts.tls_relocs) or facts.go_buildinfo is not None:
        return []  # Go chooses its TLS model itself; its own finding covers the cost
    how = [
        w
        for w, on in (
            ("DF_STATIC_TLS in DT_FLAGS", flagged),
            (
                _count(
                    facts.tls_relocs, "initial-exec TLS relocation", "initial-exec TLS relocations"
                ),
                facts.tls_relocs,
            ),
        )
        if on
    ]
    against = (
        f" against {_listing(names[n] for n in facts.tls_symbols)}" if facts.tls_symbols else ""
    )
    size = f"its {facts.tls_size}-byte" if facts.tls_size else "its"
    return [
        Finding(
            "static_tls",
            pins=False,
            unsafe=False,
            message=(
                f"uses the static TLS model ({'; '.join(how)}{against}): each loaded copy takes "
                f"{size} "
                "thread-local block from the process's small, fixed static TLS reserve, and glibc "
                "gives "
                "a block back only when it was the last one handed out; while old and new versions "
                'overlap, the reserve runs out after a few reloads and dlopen fails with "cannot '
                'allocate memory in static TLS block".'
            ),
            fix="compile with -ftls-model=global-dynamic; drop -ftls-model=initial-exec and "
            '__attribute__((tls_model("initial-exec")))',
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
                    message=(
                        f"links {lib}, {what}: a language runtime keeps threads, a garbage "
                        f"collector "
                        "or callbacks that point into the plugin's code and is not built to have "
                        "that "
                        "code unmapped, so after dlclose it may run it and crash the process."
                    ),
                    fix=(
                        "keep this plugin loaded for the life of the process (restart to update "
                        "it), or "
                        "run the runtime in a separate process"
                    ),
                )
            )
    return found


def _imported(facts: _Facts, wanted: Iterable[str]) -> list[str]:
    return [n for n in wanted if n in facts.imports]


def _hazard(code: str, used: list[str], what: str, fix: str) -> list[Finding]:
    if not used:
        return []
    return [
        Finding(
            code,
            pins=False,
            unsafe=True,
            message=f"{what} (imports {', '.join(used)}). {_hazard_tail(fix)}",
            fix=fix,
        )
    ]


def _hazard_tail(fix: str) -> str:
    return (
        f"The plugin must {fix[0].lower()}{fix[1:]}; "
        "otherwise the host has to keep this image loaded."
    )


def _threads(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    used = _imported(facts, THREAD_STARTERS)
    if any(n.startswith(STD_THREAD_PREFIX) for n in facts.imports):
        used.append("std::thread")
    return _hazard(
        "threads",
        used,
        "starts threads: one still running when the image is unmapped crashes the process",
        f"stop and join every thread it started in {DESTRUCTOR}",
    )


def _thread_key(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        "thread_key",
        _imported(facts, KEY_CREATORS),
        "creates thread-specific keys: their destructors run at every thread exit, so once "
        "the image is unmapped the next thread exit crashes the process (SIGSEGV)",
        f"delete every key (pthread_key_delete / tss_delete) in {DESTRUCTOR}",
    )


def _signal_handler(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        "signal_handler",
        _imported(facts, SIGNAL_SETTERS),
        "may install signal handlers: a handler left pointing into the unmapped image crashes "
        "the process at the next such signal",
        f"restore the previous handlers (saved by sigaction) in {DESTRUCTOR}",
    )


def _atexit(facts: _Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        "atexit",
        _imported(facts, EXIT_HANDLERS),
        "registers process-exit handlers that libc runs at exit() even after the image has "
        "been unmapped, which crashes the process at exit",
        f"do that cleanup in {DESTRUCTOR}, or register it with atexit(), which glibc runs "
        "at dlclose for a shared library",
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
