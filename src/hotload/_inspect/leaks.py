"""Why an image is still mapped after hotload's last ``dlclose`` of it:
the pins its file declares (``rules``), hotload's own counts, or another
loaded library bound into it (``bound-by:<soname>``).

The binder search reads this process, not the file: the walk over the
loader's objects and the reads of their slots are ``_platform``'s
(``dl.walk_loaded``, ``dl.read_pointer``), the relocations that name the
slots are ``elf_facts``'.
"""

from __future__ import annotations

import logging
import os
import re
import struct

from .._platform import LoadedObject, dl
from .elf_facts import pointer_relocs
from .report import Report
from .rules import Finding, counted, demangle, listing

log = logging.getLogger(__name__)


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
                f"{counted(n, 'handle is', 'handles are')} still open",
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


# ---- who binds into a loaded image ----------------------------------------
#
# glibc keeps an image mapped while another loaded object has a symbol binding
# into it (a GOT or PLT slot that resolved to one of its definitions).  That is
# a fact of this process, not of the file: walk the loaded objects with
# dl_iterate_phdr, find in each object's file the pointer relocations that name
# a symbol the image defines, and read those slots.  A slot whose value lies
# inside the image is a binding.  Only objects loaded after the image can hold
# one: hotload opens images RTLD_LOCAL, so earlier objects never see them.

_POINTER = struct.calcsize("P")  # bytes in a GOT or PLT slot
_LIBSTDCXX = re.compile(r"^lib(stdc\+\+|c\+\+)\.so")


def find_binders(loaded_as: str, report: Report) -> list[Finding]:
    """``bound-by:<lib>`` findings: the loaded objects whose symbol bindings
    resolve into the image dlopened from ``loaded_as`` (still mapped in this
    process).  [] when none is found or the platform cannot tell."""
    if not report.dynamic_exports:
        return []
    try:
        return _find_binders(loaded_as, report)
    except NotImplementedError:  # the platform cannot tell (not Linux, or Windows)
        return []
    except Exception:  # a diagnosis must never fail the caller
        log.debug("cannot look for binders of %s", loaded_as, exc_info=True)
        return []


def _find_binders(loaded_as: str, report: Report) -> list[Finding]:
    target = os.stat(loaded_as)
    order: list[LoadedObject] = []
    dl.walk_loaded(order.append)
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
        relocs = pointer_relocs(obj.name)
        hits = {n: offs for n, offs in relocs.items() if n in defined}
        if hits:
            candidates[(obj.name, obj.base)] = hits
    if not candidates:
        return []
    image = order[index].readable
    bound: dict[str, list[str]] = {}

    def check(obj: LoadedObject) -> None:
        hits = candidates.get((obj.name, obj.base))
        if not hits:
            return
        for sym, offsets in hits.items():
            for off in offsets:
                slot = obj.base + off
                if not any(lo <= slot and slot + _POINTER <= hi for lo, hi in obj.readable):
                    continue
                value = dl.read_pointer(slot)
                if any(lo <= value < hi for lo, hi in image):
                    bound.setdefault(obj.name, []).append(sym)
                    break

    dl.walk_loaded(check)
    return [_bound_by(lib, syms) for lib, syms in bound.items()]


def _same_file(name: str, target: os.stat_result) -> bool:
    try:
        st = os.stat(name)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)


def _bound_by(lib: str, symbols: list[str]) -> Finding:
    base = os.path.basename(lib)
    names = demangle(symbols)
    shown = listing((names[s] for s in sorted(symbols)), 2)
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
        message=f"{lib} bound {counted(len(symbols), 'symbol', 'symbols')} into it: {shown}",
        fix=fix,
    )
