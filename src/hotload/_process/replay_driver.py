"""The host's side of a replay worker (``replaying``): start it, open the
candidate in it, send the recorded calls in bulk with their services'
answers, read one result per call, and restart it after a crash.

Every call is encoded here first (``wire.encode``, as an isolated call is):
a call whose arguments do not cross (a bad type, a body over the cap) is an
error of that call, found without the worker.  The calls go in batches of at
most ``BATCH_CALLS`` calls and ``BATCH_BYTES`` bytes (a single larger call
goes alone); the worker answers each call as it returns, so a crash is the
first call without a result.  A call that does not return within the
build's ``call_timeout`` (``CALL_TIMEOUT`` when it has none: a replay must
end) is a hang: the worker is killed.  After a crash the rest of the calls
go to a new worker; more than ``max_restarts`` crashes stop the replay (the
rest would say the same).  Everything the worker sends is parsed strictly: a
frame that breaks the protocol is a crash of the call it answers.
"""

from __future__ import annotations

import array
import contextlib
import copy
import dataclasses
import socket
import time
from collections.abc import Callable
from typing import Any

from .._engine.recording import ServiceCall
from .._errors import HotloadError, PluginCrashedError, PluginTimeoutError
from . import replaying, wire
from .pool import Spawner
from .spawn import START_TIMEOUT, Worker, _StartFailed

BATCH_CALLS = 2048
BATCH_BYTES = 1 << 20
# Seconds a replayed call may take when the build sets no call_timeout: a
# plugin call a host serves players with returns in microseconds, and a
# hanging candidate costs (max_restarts + 1) of these before the replay stops
# (with 10 s, four hanging replays held the control socket's workers ~1 min).
CALL_TIMEOUT = 1.0

#: A call to send: (sequence number, its wire body, its answers), or the
#: outcome it already has (ok, value) when it cannot be sent.
Encoded = tuple[int, bytes, list[tuple[int, int, Any, bytes]]] | tuple[bool, Any]
Judge = Callable[[Any, bool, Any, tuple[int, int, list[str]]], None]
NO_DIVERGENCE: tuple[int, int, list[str]] = (0, 0, [])


class Driver:
    """One replay of one candidate build."""

    def __init__(self, cand: Any, table: Any, opts: Any) -> None:
        self.cand, self.opts = cand, opts
        self.source = cand.source
        self.cps = wire.plans(cand.prototypes, where=cand.source)  # refuses what cannot cross
        self.svc, imports = _imports(cand, table)
        desc = cand.descriptor
        self.request = {
            "op": "open",
            "name": cand.name,
            "path": "",
            "image": True,
            "source": cand.source,
            "prototypes": cand.prototypes,
            "on_load": desc.on_load if desc else None,
            "limits": opts.limits,
            "types": [dataclasses.asdict(t) for t in desc.types] if desc and cand.types else None,
            "imports": imports,
        }
        self.timeout = opts.call_timeout or CALL_TIMEOUT
        self.spawner: Spawner | None = None
        self.worker: Worker | None = None
        self.booting: Worker | None = None  # started, not greeted yet
        self.buf = bytearray()  # what the worker sent and was not read yet
        self.crashes = 0
        self.stopped = ""
        self.seq = 0

    # -- encoding -----------------------------------------------------------------------
    def encode(self, call: Any) -> Encoded:
        """``call`` as it will be sent, or the outcome it has without the worker."""
        cp = self.cps.get(call.export)
        if cp is None:
            return False, HotloadError(f"{self.source}: the build has no export {call.export!r}")
        try:
            body = wire.encode(cp, tuple(call.args))
        except Exception as exc:  # noqa: BLE001 - the call's own error, as in an isolated call
            return False, exc
        if len(body) > wire.MAX_BODY - 4096:
            return False, HotloadError(
                str(wire.too_large(f"{call.export}: its request", len(body)))
            )
        answers = []
        for s in call.services if isinstance(call.services, list) else ():
            if not isinstance(s, ServiceCall):
                continue  # garbage in a recording answers nothing
            scp = self.svc.get(s.name) if isinstance(s.name, str) else None
            if scp is None:
                continue  # a service the build does not import: it cannot ask for it
            kind, value = replaying.answer_bytes(scp, s.ok is True, s.answer)
            flag, args = replaying.compared_args(scp, s.args)
            answers.append((scp.idx, kind | flag, args, value))
        self.seq += 1
        return self.seq, body, answers

    # -- running ------------------------------------------------------------------------
    def run(self, jobs: list[tuple[Any, Encoded]], judge: Judge) -> None:
        """Replay ``jobs`` (recorded call, ``encode``'s answer), in order,
        calling ``judge(call, ok, now, divergences)`` for each."""
        i = 0
        while i < len(jobs):
            call, enc = jobs[i]
            if len(enc) == 2:  # an outcome already
                judge(call, bool(enc[0]), enc[1], NO_DIVERGENCE)
                i += 1
                continue
            batch: list[tuple[Any, int, bytes]] = []
            size = 0
            while i + len(batch) < len(jobs) and len(batch) < BATCH_CALLS:
                nxt = jobs[i + len(batch)]
                if len(nxt[1]) == 2:
                    break
                seq, body, answers = nxt[1]
                packed = replaying.pack_call(seq, self.cps[nxt[0].export].idx, body, answers)
                if batch and size + len(packed) > BATCH_BYTES:
                    break
                batch.append((nxt[0], seq, packed))
                size += len(packed)
            done = self._batch(batch, judge)
            i += done
            if self.stopped:
                return

    def _batch(self, batch: list[tuple[Any, int, bytes]], judge: Judge) -> int:
        """Send one batch and judge its results; the number of calls judged
        (fewer than sent: a crash, after which the rest go again)."""
        worker = self._worker()
        blob = b"".join(p for _, _, p in batch)
        with contextlib.suppress(OSError):  # it died already: the first call's read says how
            worker.send(wire.pack_control(wire.OP_CONTROL, {"op": "run"}, blob))
        for n, (call, seq, _) in enumerate(batch):
            try:
                frame = self._frame(worker, time.monotonic() + self.timeout)
                if frame is None:
                    raise TimeoutError
                if frame[:1] == bytes([wire.ST_ERROR]):  # the run request failed in the worker
                    raise wire._worker_error(frame)
                got, unrecorded, other, detail, reply = replaying.unpack_result(frame)
                if got != seq:
                    raise wire._Garbage(f"the result of call {got}, expected {seq}")
                cp = self.cps[call.export]
                try:
                    ok, now = True, wire.decode(cp, reply, _own(call.args))
                except wire._Garbage:
                    raise
                except Exception as exc:  # noqa: BLE001 - the call's error, as the worker said
                    ok, now = False, exc
            except (EOFError, OSError, TimeoutError, wire._Garbage, wire._WorkerError) as exc:
                judge(call, False, self._crashed(call.export, exc), NO_DIVERGENCE)
                return n + 1
            judge(call, ok, now, (unrecorded, other, detail))
        return len(batch)

    def _frame(self, worker: Worker, deadline: float) -> bytes | None:
        """The worker's next frame, read through a buffer (a result is a few
        bytes: reading each exactly cost two system calls); None at the
        deadline, ``EOFError`` when it is gone, ``_Garbage`` for a length no
        frame may have."""
        buf = self.buf
        while True:
            if len(buf) >= 4:
                (n,) = wire.FRAME.unpack_from(buf)
                if n > wire.MAX_FRAME:
                    raise wire._Garbage(f"a frame of {n} bytes")
                if len(buf) >= 4 + n:
                    frame = bytes(buf[4 : 4 + n])
                    del buf[: 4 + n]
                    return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            worker._settimeout(left)
            try:
                chunk = worker.sock.recv(1 << 20)
            except TimeoutError:
                return None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError
            buf += chunk

    def start(self) -> None:
        """Start the worker now (it boots while the calls are encoded)."""
        if self.spawner is None:
            self.spawner = Spawner("replay", sandbox=self.opts.sandbox, size=0)
        if self.booting is None:
            self.booting = self.spawner.take()

    def _worker(self) -> Worker:
        if self.worker is not None:
            return self.worker
        self.start()
        worker, self.booting = self.booting, None
        assert worker is not None
        self.buf = bytearray()
        try:
            worker.greet()
        except _StartFailed as exc:
            raise HotloadError(f"{self.source}: the replay worker {exc}") from None
        self.worker = worker
        body = wire.pack_control(wire.OP_CONTROL, self.request, self.cand.data)
        try:
            if not worker.send_by(body, time.monotonic() + START_TIMEOUT):
                raise TimeoutError
            reply = worker.recv_by(time.monotonic() + START_TIMEOUT)
        except (EOFError, OSError, wire._Garbage) as exc:
            raise self._crashed("open", exc) from None
        if reply is None:
            raise self._crashed("open", TimeoutError())
        if reply != b"\x00":
            self._end()
            err = wire._worker_error(reply) if reply[:1] == bytes([wire.ST_ERROR]) else None
            if isinstance(err, HotloadError):
                raise err
            raise HotloadError(f"{self.source}: the replay worker could not open it: {err}")
        return worker

    def _crashed(self, what: str, why: BaseException) -> PluginCrashedError:
        """The worker died (or hung, or broke the protocol) during ``what``:
        ended here; the error that call gets.  Past ``max_restarts``
        crashes the replay stops."""
        worker = self.worker
        assert worker is not None
        hung = isinstance(why, TimeoutError)
        if not hung:
            worker.reap(1.0)
        self._end()
        sig, code = worker.how_it_ended()
        if hung:
            how = f"did not return within {self.timeout:g} s (killed)"
        elif isinstance(why, (wire._Garbage, wire._WorkerError)):
            how = f"broke the replay protocol ({why}; killed)"
        elif sig is not None:
            how = f"crashed with {sig}"
        else:
            how = f"exited with code {code}"
        cls = PluginTimeoutError if hung else PluginCrashedError
        exc = cls(
            f"{self.source}: {self.cand.name} (replay worker, pid {worker.pid}): {how} during "
            f"{what}",
            signal_name=sig,
            exit_code=code,
            stderr=worker.tail(),
        )
        self.crashes += 1
        if self.crashes > self.opts.max_restarts:
            self.stopped = (
                f"{self.source}: the build crashed {self.crashes} times, more than max_restarts="
                f"{self.opts.max_restarts}; the last: {exc}"
            )
        return exc

    def _end(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill()

    def close(self) -> None:
        """End the worker (it exits when its channel closes) and the spawner."""
        worker, self.worker = self.worker, None
        if worker is not None:
            with contextlib.suppress(OSError):
                worker.sock.shutdown(socket.SHUT_RDWR)  # the worker exits at its EOF
            if not worker.reap(1.0):
                worker.kill()
        if self.booting is not None:
            self.booting.kill()
        if self.spawner is not None:
            self.spawner.close()


def _imports(cand: Any, table: Any) -> tuple[dict[str, wire.CallPlan], dict[str, list[Any]] | None]:
    """The build's imports as a load checks them (every one provided here
    with its prototype: a ``ServiceError`` names the first that is not),
    how each crosses, and what the worker binds (name -> [prototype, error])."""
    desc = cand.descriptor
    if desc is None or not desc.imports:
        return {}, None
    plain = {i.name: i.signature for i in desc.imports}
    table.check(plain, cand.source)
    sigs = {n: cand.types.rewrite(p) if cand.types else p for n, p in plain.items()}
    cps = wire.plans(sigs, where=cand.source, service=True)
    return cps, {n: [sigs[n], table.services[n].error] for n in sigs}


def _own(args: Any) -> tuple[Any, ...]:
    """The recorded arguments, with the buffers a reply copies back into
    copied first: a replay never changes a recording."""
    return tuple(copy.copy(a) if isinstance(a, (bytearray, list, array.array)) else a for a in args)
