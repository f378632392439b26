"""Load one version of a plugin: source bytes -> checks -> private copy ->
``dlopen`` -> typed exports; and close it again, verifying that it left.

The source path is read exactly once.  Every check runs on those bytes and
the very same bytes are written to the private copy that is opened, so a
build overwriting the source at any moment (``cp`` in place, or a rename)
can never reach a loaded image or slip between check and open.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._contract import structs as typedecl
from .._errors import (
    DescriptorError,
    HookError,
    HotloadError,
    InvalidPluginError,
    LoadError,
    NotAPluginError,
    SignatureError,
    TypeLayoutError,
)
from .._platform import binfmt, dl, proc
from . import descriptor as desc_mod
from . import signatures
from .descriptor import Descriptor
from .workdir import WorkDir

if TYPE_CHECKING:
    from .._contract.services import ImportBinding, ServiceTable

log = logging.getLogger(__name__)

ON_LOAD_TYPE = "int(const char *, const void *, size_t)"
ON_UNLOAD_TYPE = "int(const void **, size_t *)"
_MAX_NEW_IMAGE_TRIES = 3
MAX_STATE_SIZE = 64 << 20
"""The largest state blob ``on_unload`` may hand over (``Host(max_state_size=...)``): a
size past the plugin's buffer must be refused before it is copied, not read until it faults."""


@dataclass(eq=False)
class Image:
    """One opened versioned copy of a plugin."""

    source: str
    copy: str  # the versioned copy's path: a str, never a Path (see WorkDir.write_copy)
    file_id: tuple[int, int]
    digest: str
    size: int
    descriptor: Descriptor | None
    name: str
    version: str
    handle: int
    functions: dict[str, Callable[..., Any]]
    prototypes: dict[str, str]
    on_load: Callable[..., Any] | None = None
    on_unload: Callable[..., Any] | None = None
    opens: int = 1
    closes: int = 0
    loaded_at: float = field(default_factory=time.time)
    process: Any = None  # an isolated image's worker (``_isolation.Proxy``); None in-process
    imports: ImportBinding | None = None  # its host services (see _services)
    types: typedecl.TypeSet | None = None  # its declared C types (see _types)
    state_plan: Any = None  # how the state it replaces becomes its own (_state.plan.Plan)
    state_initial: Any = None  # an isolated build's initial state, read by the proof

    def call_on_load(self, prev_version: str | None, state: bytes | None) -> None:
        if self.on_load is None:
            return
        prev = (
            signatures.ffi.new("char[]", prev_version.encode())
            if prev_version
            else signatures.ffi.NULL
        )
        buf = signatures.ffi.from_buffer(state) if state else signatures.ffi.NULL
        rc = self.on_load(prev, buf, len(state) if state else 0)
        if rc != 0:
            raise HookError(
                f"{self.source}: on_load of {self.name} {self.version} refused to start "
                f"(returned {rc}) with the state of version {prev_version or '(none)'}"
            )

    def call_on_unload(self, max_size: int = MAX_STATE_SIZE) -> bytes | None:
        """The state blob this version hands to its successor (None if no hook).
        A blob that cannot be read or is over ``max_size`` bytes is a
        ``HookError``, never a crash or a ``MemoryError``."""
        if self.on_unload is None:
            return None
        ptr = signatures.ffi.new("const void **")
        size = signatures.ffi.new("size_t *")
        rc = self.on_unload(ptr, size)
        who = f"{self.source}: on_unload of {self.name} {self.version}"
        if rc != 0:
            raise HookError(f"{who} failed (returned {rc}); it keeps serving")
        address = int(signatures.ffi.cast("uintptr_t", ptr[0]))
        try:
            return copy_state(who, address, int(size[0]), max_size)
        except HookError as exc:
            raise HookError(f"{exc}; it keeps serving") from None


def copy_state(
    who: str, address: int, size: int, max_size: int = MAX_STATE_SIZE, limit: str = "max_state_size"
) -> bytes:
    """Copy the ``size`` bytes an ``on_unload`` hook pointed at, through the
    kernel (``proc.read_memory``): a plugin's bad pointer or size must refuse
    the swap, not fault the host the way a ``memcpy`` would.  ``who`` starts
    the error message ("<source>: on_unload of <name> <version>")."""
    if size == 0:
        return b""
    if address == 0:
        raise HookError(f"{who} handed over a NULL state pointer with a size of {size} bytes")
    if size > max_size:
        raise HookError(
            f"{who} handed over a state blob of {size} bytes at 0x{address:x}, over the "
            f"{_bytes(max_size)} limit ({limit})"
        )
    try:
        return proc.read_memory(address, size)
    except OSError as exc:
        raise HookError(
            f"{who} handed over a state blob that cannot be read: pointer 0x{address:x}, "
            f"size {size} bytes ({exc.strerror})"
        ) from None


def _bytes(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


#: The largest plugin file hotload reads (``Host(max_plugin_size=...)`` changes it).  Far above
#: any real plugin (a Go c-shared library is a few MiB), yet small enough that a symlink to
#: ``/dev/zero`` or a sparse 1 GiB file dropped where a plugin is expected cannot exhaust memory.
DEFAULT_MAX_PLUGIN_SIZE = 256 * 1024 * 1024


def read_source(
    path: str,
    *,
    real: str | None = None,
    verify: Callable[[os.stat_result], None] | None = None,
    max_size: int = DEFAULT_MAX_PLUGIN_SIZE,
) -> bytes:
    """Read the whole plugin file once, with errors that name the cause.

    Hostile files are refused before their bytes cost anything: the open is
    non-blocking (a FIFO must not hang us), only a regular file is read, one
    whose ``fstat`` size is over ``max_size`` is refused unread, and no more
    than ``max_size + 1`` bytes are ever read, so a file that grows while we
    read it (or a ``/proc`` file that reports size 0) is refused too.

    ``real``: the already resolved (and trust-checked) path to open instead,
    without following a symlink; ``verify`` checks the opened file's own
    ``fstat``, so no one can swap the file between the check and the read.
    """
    # O_NONBLOCK, O_NOFOLLOW: POSIX only; O_BINARY: Windows only (text mode would mangle bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0) if real else 0  # os.open adds O_CLOEXEC (PEP 446)
    try:
        fd = os.open(real or path, flags)
    except FileNotFoundError:
        raise InvalidPluginError(f"{path}: no such file (deleted or not built yet?)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidPluginError(
                f"{path}: was replaced by a symlink while being checked"
            ) from None
        if exc.errno == errno.ENXIO:  # opening a socket (or a FIFO nobody writes, for O_WRONLY)
            raise InvalidPluginError(f"{path}: not a regular file ({file_kind(path)})") from None
        reason = "permission denied" if exc.errno == errno.EACCES else exc.strerror
        raise InvalidPluginError(f"{path}: cannot read: {reason}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidPluginError(f"{path}: is a directory, not a shared library")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidPluginError(f"{path}: not a regular file ({file_kind(st)})")
        check_size(path, st.st_size, max_size)
        if verify is not None:
            verify(st)
        return _read_capped(fd, path, st.st_size, max_size)
    except OSError as exc:
        raise InvalidPluginError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def check_size(path: str, size: int, max_size: int, *, grew: bool = False) -> None:
    """Refuse a plugin file larger than ``max_size``, saying how to allow it."""
    if size <= max_size:
        return
    what = (
        "grew past the plugin size cap while being read (reading stopped there)"
        if grew
        else f"is {size:,} bytes, over the plugin size cap: refused unread"
    )
    raise InvalidPluginError(
        f"{path}: {what}; the cap is {_mib(max_size)} (if this really is a plugin, "
        f"raise it with Host(max_plugin_size=...))"
    )


def file_kind(what: str | os.stat_result) -> str:
    """What a non-regular file is, in words (a path is ``stat``ed, following symlinks)."""
    try:
        mode = (os.stat(what) if isinstance(what, str) else what).st_mode
    except OSError:
        return "cannot stat it"
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return kind
    return f"file type {stat.S_IFMT(mode):#o}"


def _read_capped(fd: int, path: str, size: int, max_size: int) -> bytes:
    """Read to EOF, but never more than ``max_size + 1`` bytes."""
    chunks, left = [], max_size + 1
    while left > 0 and (chunk := os.read(fd, min(left, max(size + 1, 1 << 16)))):
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    check_size(path, len(data), max_size, grew=True)
    return data


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB ({n:,} bytes)" if n >= 1 << 20 else f"{n:,} bytes"


def identify(
    data: bytes, source: str, *, name: str | None, declared: Mapping[str, str] | None
) -> tuple[Descriptor | None, str, str, dict[str, str]]:
    """Check the bytes and work out the plugin's name, version and prototypes.

    A library with a hotload descriptor speaks for itself (and must agree
    with anything the host declares); one without needs ``name`` and
    ``signatures`` from the host.
    """
    desc, plugin_name, version, prototypes, _ = _identify(
        data, source, name=name, declared=declared
    )
    return desc, plugin_name, version, prototypes


def _identify(
    data: bytes,
    source: str,
    *,
    name: str | None,
    declared: Mapping[str, str] | None,
    digest: str | None = None,
) -> tuple[Descriptor | None, str, str, dict[str, str], typedecl.TypeSet | None]:
    """``identify``, and the plugin's type set.  With the bytes' ``digest``,
    the binary-format check of bytes seen before is not redone."""
    section = _section(data, source, digest)
    desc = desc_mod.parse(section, source) if section else None
    if desc is None:
        if not declared or not name:
            raise NotAPluginError(
                f"{source}: no hotload descriptor (.hotload section): build it with "
                f"HOTLOAD_PLUGIN and "
                f"HOTLOAD_EXPORT from hotload.h, or load it with name= and signatures= declared "
                f"by the host"
            )
        prototypes = dict(declared)
        _check_prototypes(prototypes, None, source)
        return None, name, "unversioned", prototypes, None
    if name is not None and name != desc.name:
        raise DescriptorError(f"{source}: the file declares plugin {desc.name!r}, not {name!r}")
    if declared:
        signatures.check_declared(declared, desc.signatures(), where=source)
    typeset, prototypes = _contract(desc, source)
    return desc, desc.name, desc.version, dict(prototypes), typeset


_formats: dict[str, bytes | None] = {}  # digest -> .hotload section of bytes that passed
_formats_lock = threading.Lock()


def _section(data: bytes, source: str, digest: str | None) -> bytes | None:
    """The ``.hotload`` section of ``data`` after the binary-format check
    (``binfmt.check``).  Its verdict depends on the bytes alone, so bytes that
    passed once (same SHA-256) pass again: a reload of the same build skips the
    header and section-table walk.  Failures are not remembered: they say the file."""
    if digest is not None and digest in _formats:
        return _formats[digest]
    section = binfmt.check(data, source).hotload_section
    if digest is not None:
        with _formats_lock:
            while len(_formats) >= 64:
                _formats.pop(next(iter(_formats)))
            _formats[digest] = section
    return section


_contracts: dict[int, tuple[Descriptor, typedecl.TypeSet | None, dict[str, str]]] = {}
_contracts_lock = threading.Lock()


def _contract(desc: Descriptor, source: str) -> tuple[typedecl.TypeSet | None, dict[str, str]]:
    """The verified type set and the checked prototypes (in cffi's names) of a
    descriptor, worked out once per descriptor.  ``_descriptor.parse`` hands
    back the very same object for the same section bytes, so a reload of the
    same build, or of a rebuild whose descriptor did not change, finds it here
    by identity (hashing a descriptor's nested records would cost more than a
    small plugin's whole check).  Failures are not remembered: they say the file."""
    hit = _contracts.get(id(desc))
    if hit is not None and hit[0] is desc:
        return hit[1], hit[2]
    typeset = typedecl.build(desc, source) if desc.types else None
    prototypes = desc.signatures()
    if typeset is not None:  # verified before anything is opened; prototypes use cffi's names
        prototypes = {f: typeset.rewrite(p) for f, p in prototypes.items()}
    _check_prototypes(prototypes, typeset, source)
    with _contracts_lock:
        while len(_contracts) >= 64:
            _contracts.pop(next(iter(_contracts)))
        _contracts[id(desc)] = (desc, typeset, prototypes)  # holds desc: its id stays unique
    return typeset, prototypes


def _check_prototypes(
    prototypes: Mapping[str, str], typeset: typedecl.TypeSet | None, source: str
) -> None:
    for fname, proto in prototypes.items():
        try:
            signatures.parse(proto, where=source, function=fname)
        except SignatureError:
            missing = typedecl.undeclared(proto, typeset or typedecl.TypeSet({}, {}))
            if not missing:
                raise
            raise TypeLayoutError(
                f"{source}: cannot parse the C signature of {fname} ({typedecl.plain(proto)}): "
                f"it uses type {missing[0]}, which the plugin does not declare: declare it with "
                f"HOTLOAD_STRUCT/HOTLOAD_FIELD (or HOTLOAD_ENUM) from hotload.h"
            ) from None


@dataclass(eq=False)
class Candidate:
    """A plugin file read once and checked, not yet copied or opened.

    This is what travels between the parts of hotload: the watcher and the
    fleet agent make one from the bytes they checked and hand it to the
    host, so the bytes that were checked are the bytes that run."""

    source: str
    data: bytes
    descriptor: Descriptor | None
    name: str
    version: str
    prototypes: dict[str, str]
    digest: str
    types: typedecl.TypeSet | None = None

    @property
    def size(self) -> int:
        return len(self.data)


def candidate(
    data: bytes,
    source: str,
    *,
    name: str | None = None,
    declared: Mapping[str, str] | None = None,
    known: tuple[bytes, str] | None = None,
) -> Candidate:
    """Check ``data`` (the bytes of ``source``) and identify the plugin.
    ``known``: bytes read before and their SHA-256 (the build serving now):
    a reload of unchanged bytes costs a comparison, not a hash."""
    same = known is not None and len(known[0]) == len(data) and known[0] == data
    digest = known[1] if same and known is not None else hashlib.sha256(data).hexdigest()
    desc, plugin_name, version, prototypes, types = _identify(
        data, source, name=name, declared=declared, digest=digest
    )
    return Candidate(
        source=source,
        data=data,
        descriptor=desc,
        name=plugin_name,
        version=version,
        prototypes=prototypes,
        digest=digest,
        types=types,
    )


@dataclass(eq=False)
class Staged:
    """A candidate written to its private copy: the point where a preflight
    can try it in another process before this one opens it."""

    cand: Candidate
    seq: int
    copy: str
    file_id: tuple[int, int]

    def discard(self) -> None:
        unlink(self.copy)


@dataclass(frozen=True)
class UnloadVerdict:
    gone: bool
    mapped_bytes: int
    loader_has: bool


class Loader:
    """Opens candidates in this process and closes them again.

    It remembers every image it opened and has not closed, and every image
    that could not leave memory, so that a later ``dlopen`` handing back one
    of them is never mistaken for a new image."""

    def __init__(self, workdir: WorkDir) -> None:
        self.workdir = workdir
        self._live: set[Image] = set()  # opened and not yet released, or stuck in memory

    def stage(self, cand: Candidate, seq: int) -> Staged:
        copy, file_id = self.workdir.write_copy(cand.name, seq, cand.data, dl.SUFFIX)
        return Staged(cand, seq, copy, file_id)

    def open(
        self,
        staged: Staged,
        *,
        may_close: Callable[[Candidate], bool],
        services: ServiceTable | None = None,
    ) -> Image:
        """``dlopen`` the staged copy and resolve its exports and hooks.
        On failure the copy is deleted and the image closed, unless
        ``may_close`` says its constructors may have left code running (then
        it stays loaded: unmapping it could crash the process).  A plugin's
        imports are checked against ``services`` and linked before ``dlopen``
        (its constructors may call them) and bound to the image after."""
        cand, source = staged.cand, staged.cand.source
        desc = cand.descriptor
        binding = None
        if desc is not None and desc.imports:
            if services is None:
                raise LoadError(f"{source}: imports host services, but none are available here")
            imports = {i.name: i.signature for i in desc.imports}
            label = f"{cand.name} v{staged.seq}"
            try:
                binding = services.prepare(imports, source, label)
            except BaseException:
                staged.discard()
                raise
        with binding.table.opening(binding) if binding else contextlib.nullcontext():
            handle, copy, file_id = self._open_new_image(staged)
        try:
            functions, on_load, on_unload = _resolve_all(handle, cand, binding)
        except BaseException:
            if binding is not None:
                binding.detach()
            if may_close(cand):
                dl.close_image(handle, source)
            else:
                log.warning(
                    "%s: refused image kept loaded, not closed: unloading it could crash "
                    "the process",
                    source,
                )
                self._live.add(_stub(staged, handle, binding))
            unlink(copy)
            raise
        image = Image(
            source=source,
            copy=copy,
            file_id=file_id,
            digest=cand.digest,
            size=cand.size,
            descriptor=desc,
            name=cand.name,
            version=cand.version,
            handle=handle,
            functions=functions,
            prototypes=cand.prototypes,
            on_load=on_load,
            on_unload=on_unload,
            imports=binding,
            types=cand.types,
        )
        self._live.add(image)
        return image

    def _open_new_image(self, staged: Staged) -> tuple[int, str, tuple[int, int]]:
        rejected: list[str] = []  # copies whose inode matched a loaded image: kept until done
        copy, file_id, source = staged.copy, staged.file_id, staged.cand.source
        try:
            for _ in range(_MAX_NEW_IMAGE_TRIES):
                try:
                    handle = _open_new_image(copy, source, self._live_handles)
                except BaseException:
                    unlink(copy)
                    raise
                if handle is not None:
                    return handle, copy, file_id
                rejected.append(copy)
                copy, file_id = self.workdir.write_copy(
                    staged.cand.name, staged.seq, staged.cand.data, dl.SUFFIX
                )
            unlink(copy)
            raise LoadError(f"{source}: dlopen kept returning an image that is already loaded")
        finally:
            for path in rejected:
                unlink(path)

    def _live_handles(self) -> frozenset[int]:
        return frozenset(img.handle for img in self._live)

    def keep(self, image: Image) -> None:
        """An image that stays in memory for good (retained, or refused but
        unsafe to close): its copy's name goes, its mapping stays."""
        self._live.add(image)
        unlink(image.copy)

    def release(self, image: Image) -> None:
        """Drop hotload's reference to the image (``dlclose``); cheap, so it
        runs on the reload path as soon as the old version is quiet."""
        if image.closes >= image.opens:
            raise LoadError(
                f"{image.source}: version copy {os.path.basename(image.copy)} is already closed "
                f"(dlopen {image.opens}, dlclose {image.closes}): refusing a double close"
            )
        if image.imports is not None:
            image.imports.detach()  # before the image may leave: never write into it again
        if image.process is None:
            dl.close_image(image.handle, image.source)
        image.closes += 1
        # The image may be gone now: its function pointers must never be called.
        image.functions, image.on_load, image.on_unload = {}, None, None
        if image.process is not None:  # isolated: closing it stops its worker process
            image.process.stop()

    def verify_gone(self, image: Image) -> UnloadVerdict:
        """Ask the kernel whether a released image really left this process.

        The kernel's mapping list (``/proc/self/maps``, matched by device and
        inode so a deleted or renamed copy still counts) decides; the loader's
        ``RTLD_NOLOAD`` probe is recorded beside it and decides only where
        there is no ``/proc``.  The copy is deleted once its image is gone.
        """
        if image.process is not None:  # isolated: gone when its worker process is
            gone = image.process.gone()
            if gone:
                unlink(image.copy)
            return UnloadVerdict(gone=gone, mapped_bytes=0, loader_has=not gone)
        still = dl.loader_has(image.copy)
        mapped = dl.mapped_ranges(image.file_id)
        gone = (mapped == 0) if mapped >= 0 else not still
        if mapped >= 0 and (mapped == 0) == still:
            log.debug(
                "%s: loader says %s, kernel says %d bytes mapped; the kernel wins",
                image.copy,
                "loaded" if still else "gone",
                mapped,
            )
        if gone:
            self._live.discard(image)
            unlink(image.copy)
            if image.imports is not None:  # no call can come from it: its callbacks may serve on
                image.imports.left()
        return UnloadVerdict(gone=gone, mapped_bytes=max(mapped, 0), loader_has=still)

    def discard(self, image: Image, *, may_close: bool) -> None:
        """Close a version that never served (a refused load).  Its copy goes
        at once; an image that cannot leave memory stays remembered."""
        if not may_close and image.process is None:  # on_load may have started a thread
            log.warning("%s: refused version kept loaded, not closed", image.source)
            self.keep(image)
            return
        try:
            self.release(image)
            self.verify_gone(image)
        except HotloadError as exc:
            log.error("%s", exc)
        unlink(image.copy)


def unlink(path: str) -> None:
    """Delete a versioned copy if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _stub(staged: Staged, handle: int, imports: ImportBinding | None) -> Image:
    """A record of an image that failed to resolve but must stay loaded (with
    the callbacks its constructors' threads may still call)."""
    cand = staged.cand
    return Image(
        source=cand.source,
        copy=staged.copy,
        file_id=staged.file_id,
        digest=cand.digest,
        size=cand.size,
        descriptor=cand.descriptor,
        name=cand.name,
        version=cand.version,
        handle=handle,
        functions={},
        prototypes={},
        imports=imports,
    )


def open_copy(copy: str, source: str) -> int:
    """``dlopen`` a private copy, reporting errors against the source path
    (the file the operator knows) and looking for the plugin's own
    dependencies next to the source."""
    try:
        return dl.open_image(copy, search_dir=os.path.dirname(os.path.abspath(source)))
    except LoadError as exc:
        raise LoadError(
            str(exc).replace(copy, source, 1) + f" (loading copy {os.path.basename(copy)})"
        ) from None


def _open_new_image(
    copy: str, source: str, live_handles: Callable[[], frozenset[int]]
) -> int | None:
    """dlopen ``copy``; None when the loader handed back an image it already
    had (glibc matches files by device and inode, and an inode of a deleted
    copy whose image leaked can be reused by a new file).

    An image the loader already had carries the path it was first opened
    from, never this (unique) copy's, so where the loader names its images
    the path says it; only where it cannot (``opened is None``) is the handle
    compared with every live one, which costs a walk over all versions."""
    handle = open_copy(copy, source)
    opened = dl.image_path(handle)
    same = opened is None or os.path.normcase(os.path.abspath(opened)) == os.path.normcase(copy)
    if not same or (opened is None and handle in live_handles()):
        log.warning(
            "%s: dlopen of %s returned an already loaded image (%s); retrying with a new copy",
            source,
            os.path.basename(copy),
            opened,
        )
        dl.close_image(handle, source)
        return None
    return handle


def resolve(handle: int, source: str, fname: str, proto: str) -> Callable[..., Any]:
    addr = dl.symbol(handle, fname)
    if addr is None:
        raise _not_exported(source, fname, proto)
    return signatures.bind(signatures.pointer_type(proto), addr)


def _not_exported(source: str, fname: str, proto: str) -> LoadError:
    return LoadError(
        f"{source}: {fname} is declared ({proto}) but is not in the library's dynamic "
        f"symbol table; define it with HOTLOAD_API (or check its spelling)"
    )


def _resolve_all(
    handle: int, cand: Candidate, binding: ImportBinding | None
) -> tuple[dict[str, Callable[..., Any]], Callable[..., Any] | None, Callable[..., Any] | None]:
    """Every export, hook and import slot of a freshly opened image, looked up
    in one batch (a 20-export, 20-import plugin costs 40 lookups a reload, and
    per-name calls through the platform layer cost as much as the lookups), then
    the exports as callables and the slots pointed at this image's callbacks."""
    desc, source = cand.descriptor, cand.source
    hooks = [desc.on_load, desc.on_unload] if desc is not None else [None, None]
    slots = [f"hotload__slot_{n}" for n in binding.imports] if binding is not None else []
    names = [*cand.prototypes, *(h for h in hooks if h), *slots]
    addrs = dict(zip(names, dl.symbols(handle, names), strict=True))
    functions, cast = {}, signatures.cast
    for f, p in cand.prototypes.items():  # _export, inlined for the common case
        addr = addrs[f]
        ctype, text = _export_type(p)
        functions[f] = _export(addr, source, f, p) if addr is None or text else cast(ctype, addr)
    on_load, on_unload = (
        _export(addrs[h], source, h, proto) if h else None
        for h, proto in zip(hooks, (ON_LOAD_TYPE, ON_UNLOAD_TYPE), strict=True)
    )
    if binding is not None:
        binding.attach(addrs.get, source)
    return functions, on_load, on_unload


def _export(addr: int | None, source: str, fname: str, proto: str) -> Callable[..., Any]:
    """``resolve`` for an address already looked up; a ``char *`` result comes
    back as ``bytes`` (None for NULL), as ctypes' ``c_char_p`` does."""
    if addr is None:
        raise _not_exported(source, fname, proto)
    ctype, text = _export_type(proto)
    fn: Callable[..., Any] = signatures.cast(ctype, addr)
    if not text:
        return fn
    ffi = signatures.ffi

    def call(*args: object) -> bytes | None:
        ptr = fn(*args)
        return None if ptr == ffi.NULL else ffi.string(ptr)

    return call


@functools.lru_cache(maxsize=1024)
def _export_type(proto: str) -> tuple[Any, bool]:
    """An export's cffi type, and whether it returns text (asked per export
    per reload: cffi builds a new ``cname`` string on every read)."""
    ctype = signatures.pointer_type(proto)
    return ctype, ctype.result.cname == "char *"
