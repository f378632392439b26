"""Typed state between two opened images: find it, prove the plan, migrate.

The state lives in the plugin's own variable (``HOTLOAD_STATE(T, var)``
exports ``hotload_state``, a pointer to it).  Before a swap the new build is
opened but serves nothing: the host copies the old version's live state and
runs the plan old -> new -> old on copies (the new side starts from the new
build's own initial values, which are the new fields' defaults).  Every kept
field must come back as it was, or the build is refused with the first field
that did not; the running version is not touched.  At the switch, once the
old version is quiet, the same plan runs from the old image's variable
straight into the new one's.

A ``HOTLOAD_MIGRATE`` function is plugin code: it runs on the host's hook
runner (bounded by ``hook_timeout``); a returned error refuses the swap, a
crash in it is a crash of this process, as a crash in ``on_load`` is.

An isolated version's state lives in its worker: the host reads it there
(and the new build's initial values) with state messages
(``_process/worker_state``, in ``CHUNK``-byte pieces), runs the same plan
and the same proof on the copies here, calls a migration function in the
worker of the build that exports it, and writes the result into the new
version's worker before the switch.  A worker that crashes, hangs or answers
garbage meanwhile refuses the swap; the running version keeps serving.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from .._artifact import signatures
from .._artifact.descriptor import Descriptor, StateDecl
from .._artifact.loader import Image
from .._errors import PluginCrashedError, StateMigrationError
from .._platform import dl, proc
from . import apply, plan
from .plan import Plan, Step

log = logging.getLogger(__name__)
_PIECE = 4 << 20  # bytes written back at a time by _writable
_MIGRATE_TYPE = "int(*)(int, const void *, size_t, void *, size_t)"
CHUNK = 16 << 20  # bytes of an isolated version's state in one state message


def declared(desc: Descriptor | None) -> StateDecl | None:
    return desc.state if desc is not None else None


def typed(image: Image) -> bool:
    """Whether ``image`` keeps a typed state (``HOTLOAD_STATE``)."""
    return declared(image.descriptor) is not None


def _where(decl: StateDecl) -> dict[str, Any]:
    """The state variable, as a worker's state request names it."""
    return {"symbol": decl.symbol, "bytes": decl.size, "align": decl.align}


def _remote_read(image: Image) -> bytearray:
    """A copy of an isolated version's state, read in its worker."""
    decl = declared(image.descriptor)
    assert decl is not None
    out = bytearray(decl.size)
    view = memoryview(out)
    for offset in range(0, decl.size, CHUNK):
        n = min(CHUNK, decl.size - offset)
        req = {"op": "state_read", "offset": offset, "size": n, **_where(decl)}
        image.process.state_read_into(req, view[offset : offset + n], "reading its state")
    return out


def _remote_write(image: Image, data: bytes | bytearray | memoryview) -> None:
    """Write a state into an isolated version's variable, in its worker."""
    decl = declared(image.descriptor)
    assert decl is not None
    view = memoryview(data)
    for offset in range(0, decl.size, CHUNK):
        req = {"op": "state_write", "offset": offset, **_where(decl)}
        image.process.state_write_from(req, view[offset : offset + CHUNK], "writing its state")


def _copy(image: Image) -> bytes | bytearray:
    """A copy of the image's state, wherever it lives."""
    return _readable(image) if image.process is None else _remote_read(image)


def live(image: Image) -> memoryview:
    """The image's state variable itself, as a writable buffer."""
    decl = declared(image.descriptor)
    assert decl is not None
    addr = dl.symbol(image.handle, decl.symbol)
    ffi = signatures.ffi
    ptr = ffi.cast("void *const *", addr)[0] if addr is not None else ffi.NULL
    at = int(ffi.cast("uintptr_t", ptr))
    if at == 0 or at % max(decl.align, 1):
        raise StateMigrationError(
            f"{image.source}: {image.name} {image.version} declares HOTLOAD_STATE({decl.type}) "
            f"but its {decl.symbol} is {'missing' if addr is None else f'0x{at:x}'}: not a "
            f"{decl.type} the host can use"
        )
    return memoryview(ffi.buffer(ptr, decl.size))


def _readable(image: Image) -> bytes:
    """A copy of the image's state, through the kernel (an unreadable range is a
    refusal naming it, never a crash)."""
    view = live(image)
    at = int(signatures.ffi.cast("uintptr_t", signatures.ffi.from_buffer(view)))
    try:
        return proc.read_memory(at, len(view))
    except OSError as exc:
        raise StateMigrationError(
            f"{_who(image)}: {image.version}'s state at 0x{at:x} ({len(view)} bytes) cannot be "
            f"read ({exc.strerror}): its HOTLOAD_STATE record disagrees with its variable"
        ) from None


def _writable(image: Image) -> None:
    """The image's state written back with its own values through the kernel,
    a piece at a time: a page that cannot be written is a refusal naming it."""
    view = live(image)
    at = int(signatures.ffi.cast("uintptr_t", signatures.ffi.from_buffer(view)))
    for offset in range(0, len(view), _PIECE):
        n = min(_PIECE, len(view) - offset)
        try:
            proc.write_memory(at + offset, proc.read_memory(at + offset, n))
        except OSError as exc:
            raise StateMigrationError(
                f"{_who(image)}: {image.version}'s state at 0x{at:x} ({len(view)} bytes) "
                f"cannot be written ({exc.strerror}): its HOTLOAD_STATE record names a "
                "variable the plugin cannot change (read-only memory)"
            ) from None


def between(old: Image, new: Image, *, down: bool, newer_is_new: bool | None = None) -> Plan | None:
    """The plan from ``old``'s state to ``new``'s (None: nothing to carry).
    ``down``: a rollback, whose narrowings are checked value by value; the
    newer build (whose migration functions count) is ``new`` unless ``down``."""
    ostate, nstate = declared(old.descriptor), declared(new.descriptor)
    if ostate is None or nstate is None:
        if ostate is not None:
            log.warning(
                "%s: %s %s keeps no typed state: %s's fields are dropped",
                new.source,
                new.name,
                new.version,
                ostate.type,
            )
        return None
    assert old.descriptor is not None and new.descriptor is not None
    try:
        return plan.make(
            ostate,
            old.descriptor.types,
            nstate,
            new.descriptor.types,
            narrow=down,
            newer_is_new=not down if newer_is_new is None else newer_is_new,
            versions=(old.version, new.version),
        )
    except StateMigrationError as exc:
        raise StateMigrationError(
            f"{_who(new)}: {exc} (before the switch; the running version keeps serving)"
        ) from None


def prove(
    old: Image, new: Image, *, down: bool, max_size: int, run: Callable[[Callable[[], None]], Any]
) -> Plan | None:
    """The plan from ``old`` to ``new``, once old -> new -> old gave back
    every kept field on copies of ``old``'s live state; else refused.
    ``run`` runs plugin code (a migration function) with the hook deadline."""
    fwd = between(old, new, down=down)
    if fwd is None:
        return None
    for image, size in ((old, fwd.src_size), (new, fwd.dst_size)):
        if size > max_size:
            raise StateMigrationError(
                f"{_who(image)}: the state is {size} bytes, over the {max_size}-byte limit "
                f"(Host(max_state_size=...))"
            )
    back = between(new, old, down=True, newer_is_new=down)  # the same newer build
    assert back is not None

    def trip() -> None:
        # both states copied through the kernel first: a range that a hand-made record
        # declares bigger than the variable is an error here, not a fault at the switch
        orig = _copy(old)
        first = _copy(new)
        # the new build's initial values matter only to a migration function (its `to`);
        # else a zeroed buffer will do: the way back reads only what the way there wrote
        there = bytearray(first) if fwd.calls else bytearray(fwd.dst_size)
        if new.process is not None:
            new.state_initial = first  # the switch starts from them: no second read then
        del first
        apply.run(fwd, memoryview(orig), memoryview(there), _caller(old, new))
        again = bytearray(fwd.src_size)
        apply.run(back, memoryview(there), memoryview(again), _caller(new, old))
        _compare(fwd, orig, again, new)
        if new.process is None:
            # write the new build's state back through the kernel now (same values: it
            # has not started): a variable in read-only memory (a hand-made record) is
            # refused here rather than fault the host at the switch, and every page is
            # touched, so the switch, which holds the callers, pays no page faults
            _writable(new)

    t0 = time.perf_counter()
    _wrapped(lambda: run(trip) if fwd.calls or back.calls else trip(), new, "the proof", old)
    log.info(
        "%s: %s -> %s -> %s proven on a copy of %d bytes in %.1f ms",
        _who(new),
        old.version,
        new.version,
        old.version,
        fwd.src_size,
        (time.perf_counter() - t0) * 1e3,
    )
    if fwd.removed:
        log.warning("%s: %s drops field(s) %s", _who(new), new.version, ", ".join(fwd.removed))
    return fwd


def migrate(old: Image, new: Image, how: Plan) -> None:
    """Carry the live state from ``old``'s variable into ``new``'s."""
    t0 = time.perf_counter()
    if old.process is None and new.process is None:
        _wrapped(
            lambda: apply.run(how, live(old), live(new), _caller(old, new)), new, "the switch", old
        )
    else:
        _wrapped(lambda: _migrate_isolated(old, new, how), new, "the switch", old)
    log.info(
        "%s: migrated %d bytes to %s in %.1f ms (%d step(s); new: %s; dropped: %s)",
        _who(new),
        how.src_size,
        new.version,
        (time.perf_counter() - t0) * 1e3,
        len(how.steps),
        ", ".join(how.added) or "none",
        ", ".join(how.removed) or "none",
    )


def _migrate_isolated(old: Image, new: Image, how: Plan) -> None:
    """The switch when a state lives in a worker: read it there, run the plan
    here into the new build's initial values, write the result into the new
    version's worker."""
    src = live(old) if old.process is None else _remote_read(old)
    initial = getattr(new, "state_initial", None)
    new.state_initial = None
    if new.process is None:
        apply.run(how, memoryview(src), live(new), _caller(old, new))
        return
    dst = bytearray(initial) if initial is not None else _remote_read(new)
    apply.run(how, memoryview(src), memoryview(dst), _caller(old, new))
    del src
    _remote_write(new, dst)


def summary(image: Image) -> str:
    """What the typed state did on the way to ``image``, for the journal ("" if nothing)."""
    how = image.state_plan
    if not isinstance(how, Plan):
        return ""
    return (
        f"state: new {', '.join(how.added) or 'none'}; dropped {', '.join(how.removed) or 'none'}"
    )


def _wrapped(fn: Callable[[], None], new: Image, when: str, old: Image) -> None:
    try:
        fn()
    except (StateMigrationError, PluginCrashedError) as exc:
        text = str(exc)
        if isinstance(exc, PluginCrashedError):  # a worker died, hung or answered garbage
            text = f"{_who(new)}: the state handover failed: {text}"
        elif not text.startswith((new.source, old.source)):
            text = f"{_who(new)}: {text}"
        raise StateMigrationError(f"{text} ({when}; the running version keeps serving)") from exc


def _caller(src: Image, dst: Image) -> apply.Call:
    """Calls a ``HOTLOAD_MIGRATE`` function: the destination's (down=0) or the
    source's (down=1) as the plan says."""
    ffi = signatures.ffi

    def call(step: Step, frm: memoryview, to: memoryview) -> None:
        image = dst if step.side == "new" else src
        down = int(step.side != "new")
        if image.process is not None:  # the function runs in its build's worker
            req = {"op": "state_migrate", "fn": step.fn, "down": down, "split": len(frm)}
            what = f"HOTLOAD_MIGRATE({step.path})"
            obj, out = image.process.state_op(req, bytes(frm) + bytes(to), what)
            rc = obj.get("rc") if isinstance(obj, dict) else None
            if not isinstance(rc, int) or len(out) != len(to):
                raise StateMigrationError(
                    f"{image.source}: its worker answered garbage to {what} ({len(out)} bytes "
                    f"for {len(to)})"
                )
            to[:] = out
            _rc(rc, step, image, down)
            return
        addr = dl.symbol(image.handle, step.fn)
        if addr is None:
            raise StateMigrationError(f"{image.source}: {step.fn} is declared but not exported")
        fn = ffi.cast(_MIGRATE_TYPE, addr)
        rc = fn(
            down,
            ffi.from_buffer("char[]", frm),
            len(frm),
            ffi.from_buffer("char[]", to, require_writable=True),
            len(to),
        )
        _rc(rc, step, image, down)

    return call


def _rc(rc: int, step: Step, image: Image, down: int) -> None:
    if rc != 0:
        raise StateMigrationError(
            f"HOTLOAD_MIGRATE({step.path}) of {image.name} {image.version} returned {rc} "
            f"(down={down}, {step.types[0]} -> {step.types[1]})"
        )


def _compare(fwd: Plan, orig: bytes | bytearray, again: bytearray, new: Image) -> None:
    """The first kept field whose value did not come back: each step's
    source bytes compared as wholes (per element only to name the first)."""
    a, b = memoryview(orig), memoryview(again)
    for step in fwd.steps:
        n, w, stride = step.count, step.swidth, step.sstride or step.swidth
        for s, _ in apply.bases(step):
            if n == 1 or stride == w:
                if a[s : s + n * w] == b[s : s + n * w]:
                    continue
            elif all(
                x == y
                for x, y in zip(
                    apply.elements(a, s, n, stride, w),
                    apply.elements(b, s, n, stride, w),
                    strict=True,
                )
            ):
                continue
            k = next(
                i
                for i in range(n)
                if a[s + i * stride : s + i * stride + w] != b[s + i * stride : s + i * stride + w]
            )
            where = plan.at(step.path, k) if n > 1 else step.path
            raise StateMigrationError(
                f"the migration to {new.version} does not round-trip: field {where} was "
                f"{_show(step, a, s + k * stride)}, came back as {_show(step, b, s + k * stride)}"
            )


def _show(step: Step, buf: memoryview, at: int) -> str:
    raw = bytes(buf[at : at + step.swidth])
    integer = plan.integer(step.types[0])
    if integer is not None and integer[0] == len(raw):  # the old side's type: types[0]
        return str(int.from_bytes(raw, sys.byteorder, signed=integer[1]))
    return raw[:16].hex() + ("..." if len(raw) > 16 else "")


def _who(image: Image) -> str:
    decl = declared(image.descriptor)
    return f"{image.source}: state {decl.type if decl else '(none)'} of {image.name}"
