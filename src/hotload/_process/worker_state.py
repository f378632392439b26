"""The isolated role's typed-state requests (``HOTLOAD_STATE`` in a worker):
the host reads the state variable of the version serving, proves the
migration old -> new -> old on copies and writes the result into the new
version's worker before the switch (``_state/handover``).

- ``state_read`` (``offset``, ``size``): that range of the variable, as the
  reply's blob;
- ``state_write`` (``offset``, the bytes as the blob): written into it;
- ``state_migrate`` (``fn``, ``down``, ``split``: the blob is ``from`` then
  ``to``): runs the build's ``HOTLOAD_MIGRATE`` function on copies, answers
  its return code and ``to`` as it left it.

Each request names the variable as the host read it from the descriptor
(``symbol``, ``size``, ``align``): a range outside it, a NULL or misaligned
pointer is refused.  A state larger than a frame travels in several
requests (``CHUNK`` bytes each).  The memory is this process's own: a wild
pointer crashes this worker, never the host, and the host refuses the swap.
"""

from __future__ import annotations

from typing import Any

from .._artifact import loader, signatures
from .._errors import HotloadError, StateMigrationError
from . import wire

OPS = ("state_read", "state_write", "state_migrate")
CHUNK = 16 << 20  # bytes of state in one request or reply
MIGRATE_TYPE = "int(*)(int, const void *, size_t, void *, size_t)"


def serve(what: str, req: dict[str, Any], blob: bytes | None, handle: Any, source: str) -> bytes:
    """Answer one typed-state request (the reply body)."""
    if handle is None:
        raise HotloadError(f"{source}: {what} before the build was opened")
    ffi = signatures.ffi
    if what == "state_migrate":
        addr = loader.dl.symbol(handle, str(req["fn"]))
        if addr is None:
            raise StateMigrationError(f"{source}: {req['fn']} is declared but not exported")
        split = int(req["split"])
        data = bytearray(blob or b"")
        if not 0 <= split <= len(data):
            raise ValueError(f"a split at {split} of {len(data)} bytes")
        frm, to = data[:split], data[split:]
        rc = ffi.cast(MIGRATE_TYPE, addr)(
            int(req["down"]),
            ffi.from_buffer("char[]", frm),
            len(frm),
            ffi.from_buffer("char[]", to, require_writable=True),
            len(to),
        )
        return wire.pack_control(wire.ST_OK, {"rc": int(rc)}, bytes(to))
    at, size = _variable(handle, req, source)
    offset = int(req["offset"])
    n = int(req["size"]) if what == "state_read" else len(blob or b"")
    if offset < 0 or n < 0 or offset + n > size or n > CHUNK:
        raise ValueError(f"bytes {offset}..{offset + n} of a {size}-byte state")
    if what == "state_read":  # the reply built in one buffer: the state copied once here
        head = wire.pack_control(wire.ST_OK, None, b"")
        out = bytearray(len(head) + n)
        out[: len(head)] = head
        ffi.memmove(
            ffi.from_buffer(memoryview(out)[len(head) :]), ffi.cast("char *", at + offset), n
        )
        return out  # type: ignore[return-value]  # sent as it is
    ffi.memmove(ffi.cast("char *", at + offset), blob or b"", n)
    return wire.pack_control(wire.ST_OK, None)


def _variable(handle: Any, req: dict[str, Any], source: str) -> tuple[int, int]:
    """The state variable's address and size (``hotload_state`` points at it)."""
    ffi = signatures.ffi
    symbol, size, align = str(req["symbol"]), int(req["bytes"]), max(int(req["align"]), 1)
    addr = loader.dl.symbol(handle, symbol)
    at = int(ffi.cast("uintptr_t", ffi.cast("void *const *", addr)[0])) if addr else 0
    if at == 0 or at % align:
        raise StateMigrationError(
            f"{source}: its {symbol} is {'missing' if not addr else f'0x{at:x}'}: not a "
            f"state variable the host can use"
        )
    return at, size
