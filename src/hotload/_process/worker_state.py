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

The host's side is here too (``read_into``, ``write_from``, for the proxy of
the version): a state's bytes go from the socket straight into their buffer
and out of it without being copied into a frame (a 100 MB state was copied
five times on its way through the ordinary control path).

Each request names the variable as the host read it from the descriptor
(``symbol``, ``size``, ``align``): a range outside it, a NULL or misaligned
pointer is refused.  A state larger than a frame travels in several
requests (``CHUNK`` bytes each).  The memory is this process's own: a wild
pointer crashes this worker, never the host, and the host refuses the swap.
"""

from __future__ import annotations

import socket
from typing import Any

from .._artifact import loader, signatures
from .._errors import HotloadError, StateMigrationError
from . import wire
from .spawn import UP

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


# ---- the host's side (the version's ``proxy.Proxy``) ---------------------------------------
def read_into(proxy: Any, req: dict[str, Any], into: memoryview, what: str) -> None:
    """A ``state_read`` whose bytes go straight from the socket into
    ``into``; anything but exactly that many bytes is garbage (a crash of
    the worker, as the proxy reports one)."""
    with proxy.lock:
        worker = proxy._w()
        if proxy.state != UP:
            raise proxy._dead_error()
        head = wire.pack_control(wire.ST_OK, None, b"")

        def read() -> None:
            sock = worker.sock
            worker._settimeout(proxy.hook_timeout)
            (n,) = wire.FRAME.unpack(_exactly(sock, 4))
            if n != len(head) + len(into):
                body = _exactly(sock, n) if n <= wire.MAX_FRAME else b""
                if body[:1] == bytes([wire.ST_ERROR]):
                    raise _refused(body)
                raise wire._Garbage(f"a state reply of {n} bytes for {len(into)} asked")
            if _exactly(sock, len(head)) != head:
                raise wire._Garbage("a state reply that does not start as one")
            _exactly(sock, len(into), into)

        request = wire.pack_control(wire.OP_CONTROL, req)
        proxy._guarded(worker, what, lambda: worker.send(request), read)


def write_from(proxy: Any, req: dict[str, Any], data: memoryview, what: str) -> None:
    """A ``state_write`` of ``data``, sent without copying it into a frame first."""
    with proxy.lock:
        worker = proxy._w()
        if proxy.state != UP:
            raise proxy._dead_error()
        head = wire.pack_control(wire.OP_CONTROL, req) + b"\n"

        def send() -> None:
            worker.sock.sendall(wire.FRAME.pack(len(head) + len(data)) + head)
            worker.sock.sendall(data)

        reply: list[bytes] = []
        proxy._guarded(worker, what, send, lambda: reply.append(worker.recv(proxy.hook_timeout)))
        if reply[0][:1] == bytes([wire.ST_ERROR]):
            raise _refused(reply[0])
        if reply[0][:1] != bytes([wire.ST_OK]):
            proxy._crashed(worker, what, garbage="a bad control reply")


def _refused(body: bytes) -> Exception:
    """A worker's error reply to a state message: its own error, or a refusal."""
    err = wire._worker_error(body)
    return StateMigrationError(str(err)) if type(err) is wire._WorkerError else err


def _exactly(sock: socket.socket, n: int, into: memoryview | None = None) -> bytes:
    """Exactly ``n`` bytes from ``sock`` (into ``into`` when given: then b"")."""
    view = into if into is not None else memoryview(bytearray(n))
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise EOFError
        got += k
    return b"" if into is not None else bytes(view)
