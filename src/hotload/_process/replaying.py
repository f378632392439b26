"""The replay role of the worker (``worker --role replay``): a candidate build
runs a plugin's recorded calls, its host-service calls answered from the
recording inside this process.

The host (``_engine/replay.py``) opens the build here as it opens an isolated
version (the bytes, never a path: the worker is sandboxed), but the plugin's
imports are bound to *answerers*, not to forwarders: there is no service
channel, the host's services are never called, and a replayed call that makes
service calls costs no round trip for them.  The calls then come in bulk
(``run``: many calls in one frame, each with the recorded answers of the
service calls it made), and the worker answers each with one result frame
as soon as it returns, so the host knows which call a crash interrupted: the
first one without a result.

An answer is matched as it was recorded: the n-th call of service S within a
recorded call gets the n-th recorded answer of S.  A service call the
recording does not hold gets the service's error value; one made with other
arguments than recorded (compared as the bytes the arguments cross the
process boundary as: ``wire.encode``) gets the recorded answer.  Both are
counted and named in the call's result: a divergence, not a failure (a new
reward formula grants other amounts).  What a service wrote into the
plugin's buffers is not recorded, so it is not replayed.

Frames (after the ``wire`` frame length):

- ``open``: a control body as the isolated role's (``wire.pack_control``,
  the build's bytes as the blob); the answer ``\\x00`` or an error.
- ``run``: a control body whose blob is the calls, each ``CALL`` (sequence
  number, export index, request body length, answers), the request body
  (``wire.encode``), then each answer: ``ANSWER`` (service index, kind,
  arguments length or ``NULL_LEN`` when they are not compared, answer
  length), the arguments' bytes, the answer (the service result's own
  ``struct`` code, or a struct's bytes).
- each result: ``OP_RESULT``, ``RESULT`` (sequence number, services not in
  the recording, services called with other arguments, detail length), the
  detail (``name\\tkind`` lines, a few), then the reply body a call of an
  isolated version gets (``wire.serve``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._artifact import loader, signatures
from .._errors import HookError, HotloadError
from .._platform import proc
from . import wire

CALL = struct.Struct("<IHIH")
ANSWER = struct.Struct("<HBII")
RESULT = struct.Struct("<IIIH")
OP_RESULT = 3
KIND_ERROR, KIND_VALUE = 0, 1  # the service's error value; a recorded value
OTHER = 0x80  # or'ed into the kind: recorded arguments that cannot cross, never the same
DETAIL = 5  # divergences a result names, at most


# ---- the host's side: what goes in, what comes back ---------------------------------
def answer_bytes(cp: wire.CallPlan, ok: bool, answer: Any) -> tuple[int, bytes]:
    """A recorded answer as it travels: the service's error value when it
    raised, returned nothing, or returned what its prototype cannot hold
    (as the service channel answers such a result); else its bytes."""
    if not ok or not cp.result:
        return KIND_ERROR, b""
    ffi = signatures.ffi
    try:
        if cp.result == "T":
            made = ffi.new(f"{cp.rtype} *", answer)
            return KIND_VALUE, ffi.buffer(made, cp.rsize)[:]
        if cp.result == "?" and answer not in (0, 1):
            return KIND_ERROR, b""
        return KIND_VALUE, struct.pack("<" + cp.result, answer)
    except (TypeError, OverflowError, ValueError, KeyError, IndexError, struct.error):
        return KIND_ERROR, b""


def compared_args(cp: wire.CallPlan, args: Any) -> tuple[int, bytes | None]:
    """A recorded service call's arguments as they cross, and ``OTHER`` when
    they cannot (garbage in a recording: no call can match them); None: not
    compared (a pointer into a plugin's memory, recorded by reference, which
    may be gone since)."""
    if not isinstance(args, tuple):
        return OTHER, None
    for a in args:
        if isinstance(a, signatures.ffi.CData) and signatures.ffi.typeof(a).kind == "pointer":
            return 0, None
    try:
        body = wire.encode(cp, args)
    except Exception:  # noqa: BLE001 - whatever a recording holds
        return OTHER, None
    return 0, body[3:]  # without the op and the index


def pack_call(
    seq: int, idx: int, body: bytes, answers: Sequence[tuple[int, int, Any, bytes]]
) -> bytes:
    """One call for a ``run`` blob (``answers``: service index, kind,
    compared arguments or None, answer bytes)."""
    parts = [CALL.pack(seq, idx, len(body), len(answers)), body]
    for sidx, kind, args, value in answers:
        parts.append(
            ANSWER.pack(sidx, kind, wire.NULL_LEN if args is None else len(args), len(value))
        )
        if args is not None:
            parts.append(args)
        parts.append(value)
    return b"".join(parts)


def unpack_result(frame: bytes) -> tuple[int, int, int, list[str], bytes]:
    """A result frame: sequence number, services not in the recording, with
    other arguments, what diverged, the reply body; ``wire._Garbage`` for a
    frame that is not one."""
    if len(frame) < 1 + RESULT.size or frame[0] != OP_RESULT:
        raise wire._Garbage(f"a result frame of {len(frame)} bytes, lead {frame[:1]!r}")
    seq, unrecorded, other, n = RESULT.unpack_from(frame, 1)
    pos = 1 + RESULT.size
    if pos + n > len(frame):
        raise wire._Garbage("a truncated result detail")
    detail = bytes(frame[pos : pos + n]).decode("utf-8", "replace").splitlines()[:DETAIL]
    return seq, unrecorded, other, detail, bytes(frame[pos + n :])


# ---- the worker's side ----------------------------------------------------------------
class _Answers:
    """The answers of the call running now, by service index, and what diverged."""

    def __init__(self) -> None:
        self.queues: dict[int, collections.deque[tuple[int, bytes | None, bytes]]] = {}
        self.unrecorded = 0
        self.other = 0
        self.detail: list[str] = []

    def start(self, queues: dict[int, collections.deque[tuple[int, bytes | None, bytes]]]) -> None:
        self.queues = queues
        self.unrecorded = self.other = 0
        self.detail = []

    def service(self, cp: wire.CallPlan, error: Any) -> Callable[..., Any]:
        ffi = signatures.ffi
        rtype = f"{cp.rtype} *" if cp.result == "T" else ""

        def fallback() -> Any:
            if not cp.result:
                return None
            return ffi.new(rtype)[0] if rtype else error

        def answer(*args: Any) -> Any:
            queue = self.queues.get(cp.idx)
            if not queue:
                self.unrecorded += 1
                self._note(cp.fname, "not in the recording")
                return fallback()
            kind, want, value = queue.popleft()
            if kind & OTHER:
                self.other += 1
                self._note(cp.fname, "other arguments")
                kind &= ~OTHER
            elif want is not None:
                try:
                    got: bytes | None = wire.encode(cp, args)[3:]
                except Exception:  # noqa: BLE001 - arguments that do not cross: not the same
                    got = None
                if got != want:
                    self.other += 1
                    self._note(cp.fname, "other arguments")
            if kind != KIND_VALUE or not cp.result:
                return fallback()
            if rtype:
                out = ffi.new(rtype)
                ffi.memmove(out, value, min(len(value), cp.rsize))
                return out[0]
            return struct.unpack("<" + cp.result, value)[0]

        answer.__name__ = f"replay_{cp.fname}"
        return answer

    def _note(self, name: str, kind: str) -> None:
        if len(self.detail) < DETAIL:
            self.detail.append(f"{name}\t{kind}")


def _calls(blob: bytes, answers: _Answers) -> Iterable[tuple[int, int, bytes, dict[int, Any]]]:
    """The calls of a ``run`` blob, one at a time."""
    view = memoryview(blob)
    pos = 0
    while pos < len(view):
        seq, idx, n, k = CALL.unpack_from(view, pos)
        pos += CALL.size
        body = bytes(view[pos : pos + n])
        pos += n
        queues: dict[int, collections.deque[tuple[int, bytes | None, bytes]]] = {}
        for _ in range(k):
            sidx, kind, alen, vlen = ANSWER.unpack_from(view, pos)
            pos += ANSWER.size
            want = None
            if alen != wire.NULL_LEN:
                want = bytes(view[pos : pos + alen])
                pos += alen
            value = bytes(view[pos : pos + vlen])
            pos += vlen
            queues.setdefault(sidx, collections.deque()).append((kind, want, value))
        yield seq, idx, body, queues


def session(send: Callable[[bytes], None], recv: Callable[[], bytes | None]) -> Callable[[], None]:
    """The replay role's request loop, to run after the hello."""
    return lambda: _serve(send, recv)


def _error(exc: BaseException) -> bytes:
    kind = type(exc).__name__
    return bytes([wire.ST_ERROR]) + json.dumps({"error": str(exc), "type": kind}).encode()


def _serve(send: Callable[[bytes], None], recv: Callable[[], bytes | None]) -> None:
    answers = _Answers()
    plans: list[wire.CallPlan] = []
    fns: list[Any] = []
    source = "?"
    while True:
        body = recv()
        if body is None:
            return  # the host closed the channel
        try:
            req, blob = wire.unpack_control(body)
            what = req["op"]
            if what == "open":
                source = str(req["source"])
                plans, fns = _open(req, blob, answers, source)
                send(b"\x00")
            elif what == "run":
                _run(blob or b"", plans, fns, answers, send)
            else:
                raise ValueError(f"unknown request {what!r}")
        except HotloadError as exc:
            send(_error(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the host
            send(_error(HotloadError(f"{source}: {type(exc).__name__}: {exc}")))


def _open(
    req: dict[str, Any], blob: bytes | None, answers: _Answers, source: str
) -> tuple[list[wire.CallPlan], list[Any]]:
    from .serving import _types, image_file

    proc.apply_limits(req.get("limits") or {})
    _types(req.get("types"), source)
    binding = _bind(req, answers, source)
    path = image_file(req, blob)
    with binding.table.opening(binding) if binding else contextlib.nullcontext():
        handle = loader.open_copy(path, source)
    if binding is not None:
        binding.attach(lambda sym, h=handle: loader.dl.symbol(h, sym), source)
    protos = req["prototypes"]
    plans = sorted(wire.plans(protos, where=source).values(), key=lambda c: c.idx)
    fns = [loader.resolve(handle, source, c.fname, protos[c.fname]) for c in plans]
    if req.get("on_load"):  # as a version loaded with no state before it
        hook = loader.resolve(handle, source, req["on_load"], loader.ON_LOAD_TYPE)
        ffi = signatures.ffi
        rc = hook(ffi.NULL, ffi.NULL, 0)
        if rc != 0:
            raise HookError(f"{source}: on_load refused to start (returned {rc})")
    return plans, fns


def _bind(req: dict[str, Any], answers: _Answers, source: str) -> Any:
    """Bind the plugin's imports, before it is opened, to the answerers (None:
    it imports nothing); the binding an in-process host makes."""
    imports: dict[str, list[Any]] = req.get("imports") or {}
    if not imports:
        return None
    from .._contract import services

    protos = {name: proto for name, (proto, _) in imports.items()}
    cps = wire.plans(protos, where=source, service=True)
    table = services.ServiceTable(tempfile.gettempdir())
    for name, (proto, error) in imports.items():
        ctype = services.signatures.pointer_type(proto)
        fn = answers.service(cps[name], error)
        table.services[name] = services.Service(name, fn, ctype, error, fn)
    return table.prepare(protos, source, f"{req.get('name', '?')} (replay)")


def _run(
    blob: bytes,
    plans: list[wire.CallPlan],
    fns: list[Any],
    answers: _Answers,
    send: Callable[[bytes], None],
) -> None:
    """Run the calls of a ``run`` blob, one result frame each as it returns."""
    lead = bytes([OP_RESULT])
    for seq, idx, body, queues in _calls(blob, answers):
        answers.start(queues)
        try:
            reply = wire.serve(plans[idx], fns[idx], body)
        except wire._BodyTooLarge as exc:  # the call ran; its result cannot travel
            reply = _error(HotloadError(str(exc)))
        except (
            TypeError,
            OverflowError,
            ValueError,
            IndexError,
            struct.error,
            wire._Garbage,
        ) as exc:
            reply = _error(TypeError(str(exc)))
        detail = "\n".join(answers.detail).encode()
        head = RESULT.pack(seq, answers.unrecorded, answers.other, len(detail))
        send(lead + head + detail + reply)
