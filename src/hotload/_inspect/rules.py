"""The hazard rules: from what an ELF file says (``elf_facts.Facts``), why
its image may stay mapped after ``dlclose`` ("leak") or be unsafe to
unload.

Each ``Finding`` carries a stable reason ``code`` (see ``REASONS``), a
one-line message and a fix, so a reason is explained once, not once per
version.  The rules read the file only; what this process does to an image
(hotload's counts, another library bound into it) is ``leaks``.

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

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .elf_facts import Facts

log = logging.getLogger(__name__)

DF_STATIC_TLS = 0x10  # DT_FLAGS
DF_1_NODELETE = 0x8  # DT_FLAGS_1

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
            "one static-TLS block, until a new copy no longer loads. Loaded with isolate=True, "
            "each version runs in its own worker process and leaves memory when that exits.",
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


def demangle(names: list[str]) -> dict[str, str]:
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


def counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def listing(names: Iterable[str], limit: int = 8) -> str:
    items = list(dict.fromkeys(names))
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---- the findings ---------------------------------------------------------

#: The project's own answer to a runtime that cannot leave a process: run it in another one.
ISOLATE_FIX = (
    "load it isolated, host.load(..., isolate=True): each version runs in its own worker "
    "process, whose exit is the unload"
)


def _go_runtime(facts: Facts, names: dict[str, str]) -> list[Finding]:
    if facts.go_buildinfo is None:
        return []
    built = f" built with {facts.compiler}" if facts.compiler else ""
    return [
        Finding(
            "go-runtime",
            pins=True,
            unsafe=True,
            message=f"a Go c-shared library{built}: the Go runtime can never be unloaded",
            fix=ISOLATE_FIX + "; in process each reload leaks one image",
        )
    ]


def _nodelete(facts: Facts, names: dict[str, str]) -> list[Finding]:
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


def _gnu_unique(facts: Facts, names: dict[str, str]) -> list[Finding]:
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
            message=f"C++ STB_GNU_UNIQUE symbols: {listing(shown, 4)}",
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


def _tls_dtor(facts: Facts, names: dict[str, str]) -> list[Finding]:
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


def _static_tls(facts: Facts, names: dict[str, str]) -> list[Finding]:
    flagged = bool(facts.flags & DF_STATIC_TLS)
    if not flagged and not facts.tls_relocs:
        return []
    how = [
        w
        for w, on in (
            ("DF_STATIC_TLS", flagged),
            (counted(facts.tls_relocs, "initial-exec relocation", "initial-exec relocations"), 1),
        )
        if on and (w != "0 initial-exec relocations")
    ]
    against = f" against {listing((names[n] for n in facts.tls_symbols), 3)}"
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


def _runtime(facts: Facts, names: dict[str, str]) -> list[Finding]:
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
                    fix=f"{ISOLATE_FIX}, or keep it loaded for the life of the process",
                )
            )
    return found


def _imported(facts: Facts, wanted: Iterable[str]) -> list[str]:
    return [n for n in wanted if n in facts.imports]


def _hazard(facts: Facts, code: str, used: list[str], what: str, fix: str) -> list[Finding]:
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


def _threads(facts: Facts, names: dict[str, str]) -> list[Finding]:
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


def _thread_key(facts: Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        facts,
        "thread-key",
        _imported(facts, KEY_CREATORS),
        "creates thread-specific keys, whose destructors run at every thread exit",
        f"delete every key (pthread_key_delete / tss_delete) in {DESTRUCTOR}",
    )


def _signal_handler(facts: Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        facts,
        "signal-handler",
        _imported(facts, SIGNAL_SETTERS),
        "may install signal handlers",
        f"restore the previous handlers (saved by sigaction) in {DESTRUCTOR}",
    )


def _atexit(facts: Facts, names: dict[str, str]) -> list[Finding]:
    return _hazard(
        facts,
        "atexit",
        _imported(facts, EXIT_HANDLERS),
        "registers process-exit handlers that run after the image is unmapped",
        f"do that cleanup in {DESTRUCTOR}, or with atexit(), which glibc runs at dlclose",
    )


_FINDERS: tuple[Callable[[Facts, dict[str, str]], list[Finding]], ...] = (
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


def findings(facts: Facts) -> list[Finding]:
    """Every finding, except that a Go library gets its one: the runtime
    explains its NODELETE, TLS, threads and signal handlers."""
    names = demangle([*facts.unique, *facts.tls_symbols])
    found = [f for finder in _FINDERS for f in finder(facts, names)]
    if facts.go_buildinfo is not None:
        return [f for f in found if f.code == "go-runtime"]
    return found
