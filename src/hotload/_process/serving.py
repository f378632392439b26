"""The isolated role of the worker (``worker --role isolated``): it opens one
version of one plugin and serves its calls and hooks.

The worker is warm before it knows its plugin: the host keeps one spare
ready, so a reload or a restart after a crash pays a ``dlopen`` and a round
trip, not a Python start-up.  The ``open`` request applies the plugin's
limits, declares its types, binds its imports to the service channel, then
``dlopen``s the copy.  Calls come through the shared-memory area when there
is one, else (and for bodies too large for it) on the socket; the wire
format is in ``wire``.  The main thread serves one call at a time; with
``Isolated(threads=N)``, N - 1 lane threads serve calls of numbers beside it,
one lane each, in C (``_Shm.start_lanes``).  A ``trial`` request is refused here (that is
the preflight role's).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from .._artifact import loader, signatures, workdir
from .._errors import HookError, HotloadError
from .._platform import proc
from . import wire, worker_state


def session(
    send: Callable[[bytes], None],
    recv: Callable[[], bytes | None],
    sock: socket.socket,
    *,
    svc_fd: int,
    shm: tuple[int, int, int] | None,
) -> Callable[[], None]:
    """The isolated role's request loop, its channels mapped, to run after
    the hello."""
    area = _Shm(*shm, sock) if shm is not None else None
    return lambda: _serve(send, recv, area, svc_fd)


def _serve(
    send: Callable[[bytes], None],
    recv: Callable[[], bytes | None],
    shm: _Shm | None,
    svc_fd: int,
) -> None:
    """Serve requests until the host closes the channel."""
    ffi = signatures.ffi
    fns: list[Any] = []
    plans: list[wire.CallPlan] = []
    hooks: dict[str, Any] = {}
    source = "?"
    handle: Any = None

    def error(exc: BaseException) -> bytes:
        kind = type(exc).__name__
        return bytes([wire.ST_ERROR]) + json.dumps({"error": str(exc), "type": kind}).encode()

    while True:
        if shm is not None and not shm.serve(plans, fns, ffi, wire, error):
            continue  # a call came through shared memory
        body = recv()
        if body is None:
            if shm is not None:
                shm.close_lanes()
            return  # the host closed the channel: the version stops
        op = body[0]
        if op == wire.OP_CALL:
            (idx,) = struct.unpack_from("<H", body, 1)
            cp = plans[idx]
            try:
                send(wire.serve(cp, fns[idx], body))
            except wire._BodyTooLarge as exc:  # the call ran; its result cannot travel
                send(error(HotloadError(str(exc))))
            except (TypeError, OverflowError, ValueError, wire._Garbage) as exc:
                send(error(TypeError(str(exc))))
            continue
        try:
            req, blob = wire.unpack_control(body)
            what = req["op"]
            if what == "open":
                source = req["source"]
                proc.apply_limits(req.get("limits") or {})
                _types(req.get("types"), source)  # the plugin's structs, as the host named them
                binding = _imports(req, svc_fd, source, shm)
                path = image_file(req, blob)
                with binding.table.opening(binding) if binding else contextlib.nullcontext():
                    handle = loader.open_copy(path, source)
                if binding is not None:
                    binding.attach(lambda sym, h=handle: loader.dl.symbol(h, sym), source)
                protos = req["prototypes"]
                by_name = wire.plans(protos, where=source)
                plans = sorted(by_name.values(), key=lambda c: c.idx)
                fns = [loader.resolve(handle, source, c.fname, protos[c.fname]) for c in plans]
                lanes: dict[str, Any] = {}
                if shm is not None:
                    bound = shm.bind(plans, fns, protos)
                    n = shm.start_lanes(int(req.get("threads") or 1) - 1) if bound else 0
                    lanes = {"lanes": n, "bound": bound} if n else {}
                for key, proto in (
                    ("on_load", loader.ON_LOAD_TYPE),
                    ("on_unload", loader.ON_UNLOAD_TYPE),
                ):
                    if req.get(key):
                        hooks[key] = loader.resolve(handle, source, req[key], proto)
                send(wire.pack_control(wire.ST_OK, lanes) if lanes else b"\x00")
            elif what == "on_load":
                state = blob or None  # raw bytes after the JSON (wire.pack_control)
                prev = req.get("prev")
                rc = hooks["on_load"](
                    ffi.new("char[]", prev.encode()) if prev else ffi.NULL,
                    ffi.from_buffer(state) if state else ffi.NULL,
                    len(state) if state else 0,
                )
                if rc != 0:
                    raise HookError(
                        f"{source}: on_load refused to start (returned {rc}) with the state of "
                        f"version {prev or '(none)'}"
                    )
                send(b"\x00")
            elif what == "on_unload":
                ptr, size = ffi.new("const void **"), ffi.new("size_t *")
                rc = hooks["on_unload"](ptr, size)
                who = f"{source}: on_unload"
                if rc != 0:
                    raise HookError(f"{who} failed (returned {rc}); it keeps serving")
                address = int(ffi.cast("uintptr_t", ptr[0]))
                limit = str(req.get("limit") or "max_state_size")
                state = loader.copy_state(who, address, int(size[0]), int(req["max"]), limit)
                send(wire.pack_control(wire.ST_OK, None, state))
            elif what in worker_state.OPS:  # typed state (HOTLOAD_STATE)
                send(worker_state.serve(what, req, blob, handle, source))
            else:
                raise ValueError(f"unknown request {what!r}")
        except HotloadError as exc:
            send(error(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the host
            send(error(HotloadError(f"{source}: {type(exc).__name__}: {exc}")))


def image_file(req: dict[str, Any], blob: bytes | None) -> str:
    """The path to open the build from: its copy, or (a sandboxed worker,
    which cannot see the copy) an anonymous copy of the bytes the host sent
    raw after the request, open for the worker's life (one version per worker)."""
    if not req.get("image"):
        return str(req["path"])
    if not blob:
        raise HotloadError(f"{req.get('source', '?')}: the host sent no build bytes")
    return workdir.anonymous_copy(blob, req.get("name") or "")


class _Shm:
    """The worker's end of the shared-memory channel (see ``wire``)."""

    def __init__(self, memfd: int, wake: int, done: int, sock: socket.socket) -> None:
        import mmap

        self.mm = mmap.mmap(memfd, wire.SHM_SIZE)
        os.close(memfd)  # a plugin write()ing to stray descriptors cannot reach it
        self.ctl = memoryview(self.mm).cast("B")[: wire.SHM_REQ].cast("Q")
        self.wake, self.done, self.sock = wake, done, sock
        self.seq = 0
        self.poller = proc.poller(wake, sock.fileno())
        self.chan: Any = None  # the C end (``_spin.c``): serves calls of numbers itself
        self.table: list[Any] = []  # what the C end serves: (spec, address) or None per export
        self.lanes: dict[int, Any] = {}  # a lane thread's ident -> its lane (``start_lanes``)
        if wire.cspin is not None and wire.cspin.SERVES:
            self.chan = wire.cspin.Channel(
                self.mm, peer=done, own=wake, sock=sock.fileno(), host=False
            )

    def bind(self, plans: list[wire.CallPlan], fns: list[Any], protos: dict[str, str]) -> list[int]:
        """Hand the C end the exports it calls itself: calls of numbers, by
        their resolved address (``_spin.c`` says why that call is sound);
        the indices it took."""
        if self.chan is None:
            return []
        ffi = signatures.ffi
        self.table = [
            (cp.spin, int(ffi.cast("uintptr_t", fn)))
            if cp.spin is not None and "..." not in protos[cp.fname]
            else None
            for cp, fn in zip(plans, fns, strict=True)
        ]
        return list(self.chan.bind(self.table))

    def start_lanes(self, n: int) -> int:
        """Start ``n`` lane threads (issue 24 item 3), each serving the calls of
        numbers on its own lane of the mapping in C, without the GIL, beside
        the main thread (lane 0); how many started.  A lane serves nothing
        else: the host sends it only the exports ``bind`` took."""
        n = max(0, min(n, wire.MAX_LANES - 1))
        if self.chan is None or not n:
            return 0
        for k in range(1, n + 1):
            chan = wire.cspin.Channel(self.mm, peer=-1, own=-1, sock=-1, host=False, lane=k)
            chan.bind(self.table)
            t = threading.Thread(target=self._lane, args=(chan,), daemon=True, name=f"lane-{k}")
            t.start()
            assert t.ident is not None
            self.lanes[t.ident] = chan
        return n

    @staticmethod
    def _lane(chan: Any) -> None:
        """A lane thread: serve until the lane is closed (the version stops)."""
        with contextlib.suppress(OSError):
            while chan.serve() == 0:
                pass

    def close_lanes(self) -> None:
        for chan in self.lanes.values():
            chan.close()

    def serve(self, plans: list[Any], fns: list[Any], ffi: Any, wire: Any, error: Any) -> bool:
        """Serve one call from shared memory (False), or return True when a
        frame waits on the socket (a control request, a large call, EOF)."""
        if self.chan is not None:  # serves bound calls in C until one is not, or the socket
            if self.chan.serve():
                return True
            self.seq = self.chan.seq
            return self._serve(plans, fns, ffi, wire, error)
        ctl, seq = self.ctl, self.seq
        if ctl[wire.REQ_SEQ] == seq:
            clock = time.perf_counter_ns
            end = clock() + wire.WORKER_SPIN_NS
            while ctl[wire.REQ_SEQ] == seq:
                if clock() > end:
                    break
                wire.yield_cpu()  # the host may be waiting for this very core
            else:
                return self._serve(plans, fns, ffi, wire, error)
            while True:
                ctl[wire.WORKER_SLEEPS] = 1  # then drain: the eventfd's lock is the fence
                wire.drain(self.wake)
                if ctl[wire.REQ_SEQ] != seq:
                    ctl[wire.WORKER_SLEEPS] = 0
                    break
                events = self.poller.poll()
                ctl[wire.WORKER_SLEEPS] = 0
                if any(fd != self.wake for fd, _ in events):
                    return True
        return self._serve(plans, fns, ffi, wire, error)

    def _serve(self, plans: list[Any], fns: list[Any], ffi: Any, wire: Any, error: Any) -> bool:
        ctl, chan = self.ctl, self.chan
        self.seq = seq = ctl[wire.REQ_SEQ]
        if chan is not None:
            chan.in_call = 1  # its service calls may go in place (ask)
        try:
            return self._call(plans, fns, ffi, wire, error, seq)
        finally:
            if chan is not None:
                chan.in_call = 0

    def _call(
        self, plans: list[Any], fns: list[Any], ffi: Any, wire: Any, error: Any, seq: int
    ) -> bool:
        ctl, mm = self.ctl, self.mm
        n = ctl[wire.REQ_LEN]
        try:
            if n > wire.SHM_CAP or n < 3:
                raise ValueError(f"a request of {n} bytes")
            (op, idx) = struct.unpack_from("<BH", mm, wire.SHM_REQ)
            cp = plans[idx]
            fn = fns[idx]
        except (ValueError, IndexError, struct.error) as exc:
            reply = error(TypeError(f"bad request: {exc}"))
        else:
            try:
                if cp.simple:
                    result = fn(*cp.req.unpack_from(mm, wire.SHM_REQ)[2:])
                    if cp.result:
                        cp.rep.pack_into(mm, wire.SHM_REP, 0, result)
                    else:
                        mm[wire.SHM_REP] = 0
                    ctl[wire.REP_LEN] = cp.rep.size
                    self._served(seq)
                    ctl[wire.REP_SEQ] = seq
                    os.eventfd_write(self.done, 1)
                    return False
                reply = wire.serve(cp, fn, mm[wire.SHM_REQ : wire.SHM_REQ + n])
            except wire._BodyTooLarge as exc:  # the call ran; its result cannot travel
                reply = error(HotloadError(str(exc)))
            except (TypeError, OverflowError, ValueError, struct.error, wire._Garbage) as exc:
                reply = error(TypeError(str(exc)))
        if len(reply) > wire.SHM_CAP:
            self._served(seq)
            self.sock.sendall(wire.FRAME.pack(len(reply)) + reply)
            return False
        mm[wire.SHM_REP : wire.SHM_REP + len(reply)] = reply
        ctl[wire.REP_LEN] = len(reply)
        self._served(seq)
        ctl[wire.REP_SEQ] = seq
        os.eventfd_write(self.done, 1)
        return False

    def _served(self, seq: int) -> None:
        """Before the reply goes: the sequence served last is this call's, never
        the word now (a call published meanwhile, after its caller's wait was
        abandoned, is the next one to serve; the answer to a service request
        moved the word to its marker, which is no request)."""
        self.seq = seq
        if self.chan is not None:
            self.chan.seq = self.seq

    def can_ask(self) -> bool:
        """A service call may travel in the mapping now: inside a call whose
        waiter (the host's C end) answers in place."""
        return self.chan is not None and bool(self.chan.in_call) and self.ctl[wire.SVC_OK] == 1


def _types(decls: list[dict[str, Any]] | None, source: str) -> None:
    """Declare the plugin's types to this process's cffi under the very names
    the host gave them (the name carries a digest of the layout, so the same
    declarations give the same names), so its prototypes parse here."""
    if not decls:
        return
    from .._artifact.descriptor import Descriptor, Field, TypeDecl
    from .._contract import structs as typedecl

    types = tuple(
        TypeDecl(
            d["kind"],
            d["name"],
            int(d["size"]),
            int(d["align"]),
            tuple(
                Field(f["name"], f["ctype"], int(f["offset"]), int(f["size"])) for f in d["fields"]
            ),
            tuple((str(n), int(v)) for n, v in d["values"]),
        )
        for d in decls
    )
    typedecl.build(Descriptor("isolated", "0", types=types), source)


def _imports(req: dict[str, Any], svc_fd: int, source: str, shm: _Shm | None = None) -> Any:
    """Bind the plugin's imports, before it is opened, to forwarders that send
    each call to the host and wait for its answer (None: it imports nothing).
    The binding is the one an in-process host makes (``_contract.services``): a
    data-only library defines the symbols, the slots point at callbacks."""
    imports: dict[str, list[Any]] = req.get("imports") or {}
    if not imports:
        return None
    from .._contract import services

    if svc_fd < 0:
        raise HotloadError(f"{source}: imports host services, but the worker has no channel")
    client = _ServiceClient(svc_fd, shm)
    protos = {name: proto for name, (proto, _) in imports.items()}
    cps = wire.plans(protos, where=source, service=True)
    table = services.ServiceTable(os.path.dirname(req["path"]))
    for name, (proto, error) in imports.items():
        ctype = services.signatures.pointer_type(proto)
        fwd = client.forwarder(cps[name])
        table.services[name] = services.Service(name, fwd, ctype, error, fwd)
    return table.prepare(protos, source, f"{req.get('name', '?')} (isolated)")


class _ServiceClient:
    """The worker's end of the service channel: any thread of the plugin may
    call a service at any time, so each request carries an id, and whichever
    waiting thread is reading hands the other threads their answers."""

    def __init__(self, fd: int, shm: _Shm | None = None) -> None:
        import itertools

        self.shm = shm  # a service call inside a call of the C end goes in place (issue 24)
        self.sock = socket.socket(fileno=fd)
        self.send_lock = threading.Lock()
        self.cv = threading.Condition()
        self.replies: dict[int, bytes] = {}
        self.reading = False
        self.broken = False
        self.ids = itertools.count(1)
        self.main = threading.get_ident()  # the thread that serves the host's calls

    def forwarder(self, cp: Any) -> Any:
        head = struct.Struct("<QB")

        def forward(*args: Any) -> Any:
            body = wire.encode(cp, args)
            main = threading.get_ident() == self.main
            shm = self.shm
            chan = None
            if shm is None or not cp.simple:
                pass
            elif main and shm.can_ask():
                chan = shm.chan
            elif not main and shm.lanes:  # a lane thread, inside a call of its lane
                lane = shm.lanes.get(threading.get_ident())
                chan = lane if lane is not None and lane.can_ask() else None
            if chan is not None and len(body) <= chan.cap:
                answer = chan.ask(body)  # in the mapping: the call's waiter answers
                if answer is None:
                    raise EOFError("the host closed the channel")
                return wire.decode(cp, answer, args)
            rid = next(self.ids)
            lane = shm.lanes.get(threading.get_ident()) if shm is not None else None
            nested = 1 if main or (lane is not None and lane.in_call) else 0  # inside a host call
            frame = head.pack(rid, nested) + body[1:]
            with self.send_lock:
                self.sock.sendall(wire.FRAME.pack(len(frame)) + frame)
            return wire.decode(cp, self._wait(rid), args)

        forward.__name__ = f"service_{cp.fname}"
        return forward

    def _wait(self, rid: int) -> bytes:
        with self.cv:
            while True:
                if rid in self.replies:
                    return self.replies.pop(rid)
                if self.broken:
                    raise EOFError("the host closed the service channel")
                if not self.reading:
                    self.reading = True
                    break
                self.cv.wait()
        try:
            while True:
                frame = self._frame()
                (got,) = struct.unpack_from("<Q", frame)
                if got == rid:
                    return frame[8:]
                with self.cv:
                    self.replies[got] = frame[8:]
                    self.cv.notify_all()
        except BaseException:
            with self.cv:
                self.broken = True
            raise
        finally:
            with self.cv:
                self.reading = False
                self.cv.notify_all()

    def _frame(self) -> bytes:
        try:
            (n,) = wire.FRAME.unpack(wire.recv_exactly(self.sock, 4))
            if n < 8 or n > wire.MAX_FRAME:
                raise EOFError(f"a service answer of {n} bytes")
            return bytes(wire.recv_exactly(self.sock, n))
        except EOFError as exc:
            raise EOFError(str(exc) or "the host closed the service channel") from None
