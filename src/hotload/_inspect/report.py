"""Describe a plugin file: ``describe(path)`` -> ``Report``, cached.

``describe(path)`` is the one reader and identifier of a plugin file for
``hotload inspect``, the watcher and the preflight worker: it reads the file
once (the loader's hardened reader), checks its format (ELF or PE), parses
the descriptor and returns a ``Report``.  ``inspect_bytes`` does the same for
bytes a caller already holds.  The ``Report`` carries the ``Finding`` list
that ``rules`` derives from the ``elf_facts`` of the file.

The registry *measures* whether an old version really left memory
(``/proc/self/maps``); this package says *why* it did not (``leaks``), in
words a plugin author can act on, and warns before a reload about code that
could run after an unload.  Reading a file's dynamic section, ``.dynsym`` and
dynamic relocations with pyelftools costs a millisecond or two, so it runs
off the reload's critical path and each report is cached by the SHA-256 of
the file's bytes (a reload of an unchanged build costs a dictionary lookup).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any

from .._artifact.descriptor import Descriptor, Export, Field, Import, StateDecl, TypeDecl
from .._errors import DescriptorError, InvalidPluginError
from .._platform import _elf as elfcheck
from . import rules
from .elf_facts import read_facts
from .rules import Finding

log = logging.getLogger(__name__)

CACHE_SIZE = 256


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
                    "state": _state_decl(plugin.get("state")),
                }
            ),
        }
        return cls(**fields)


def _state_decl(d: dict[str, Any] | None) -> StateDecl | None:
    if d is None:
        return None
    return StateDecl(**{**d, "migrations": tuple((f, fn) for f, fn in d.get("migrations", ()))})


def _type_decl(d: dict[str, Any]) -> TypeDecl:
    return TypeDecl(
        **{
            **d,
            "fields": tuple(Field(**f) for f in d.get("fields", ())),
            "values": tuple((n, v) for n, v in d.get("values", ())),
        }
    )


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
    facts = read_facts(data, path, checked.machine)
    findings = rules.findings(facts)
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
