"""The preflight role of the worker (``worker --role preflight``): it tries
new builds before the host opens them, one ``trial`` request after another.

A trial reads and checks the private copy, ``dlopen``s it (its
constructors run), resolves every export, runs ``on_load`` with the state
blob the live version would hand over, the self-test, and ``on_unload``,
whose blob is copied as the host would copy it, so a build whose blob cannot
be read (or is over the cap) is refused here instead of taking the host down
at its next reload.  Before the first of those steps, the worker takes on the
plugin's ``limits`` (an isolated plugin's rlimits and niceness): the build is
tried as it will run.  The host never reuses a worker for another trial
after that (a hard limit cannot be raised again).

Protocol (frames on the socket, ``wire``): the request is ``OP_CONTROL`` +
JSON ``{"op": "trial", "id", "path", "source", "name", "declared",
"prev_version", "state" (base64 or null), "self_test", "unload_safe",
"max_state_size", "services", "want_report", "limits"}``; the worker answers
with one JSON frame per *step* before the step runs (so if the plugin kills
the process, the host knows which step it was in), then a final frame with
``"done"``.

Host services are stand-ins returning each service's error value, and
``hotload_in_preflight()`` says 1 in this process.

The soft-purge rule holds here too: a plugin whose binary shows unload
hazards (threads, thread keys, handlers) and does not declare itself unload
safe is never closed in the worker; its final frame says ``"tainted": true``
and the host replaces the worker, so a thread it left behind cannot crash the
worker during another plugin's check.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

from .._artifact import loader, signatures, workdir
from .._contract import services
from .._errors import HookError, HotloadError
from .._inspect import report as inspector
from .._platform import dl, proc
from . import wire


def session(send: Callable[[bytes], None], recv: Callable[[], bytes | None]) -> Callable[[], None]:
    """The preflight role's request loop, to run after the hello."""
    services.mark_preflight()  # before any binding: hotload_in_preflight() says 1 here
    _warm_up()
    return lambda: _serve(send, recv)


def _warm_up() -> None:
    """Pay before the hello what a fresh worker's first trial would pay: the
    ELF parser the inspector imports on first use (~55 ms) and cffi's C
    parser (~10 ms).  A trial under limits runs in a fresh worker every time,
    from the warm spare: its cost stays a round trip."""
    with contextlib.suppress(ImportError):
        import elftools.elf.elffile  # noqa: F401
    signatures.pointer_type("int(void)")


def _serve(send: Callable[[bytes], None], recv: Callable[[], bytes | None]) -> None:
    """Serve trials until the host closes the channel."""
    limited = False  # a trial ran under limits: this worker takes no other

    def say(msg: dict[str, Any]) -> None:
        send(json.dumps(msg).encode())

    while True:
        body = recv()
        if body is None:
            return
        req: Any = None
        if body[:1] == bytes([wire.OP_CONTROL]):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                req = json.loads(body[1:].decode())
        if not isinstance(req, dict) or req.get("op") != "trial" or limited:
            why = (
                "this worker ran a trial under a plugin's limits; it takes no other"
                if limited and isinstance(req, dict)
                else f"not a trial request: {body[:40]!r}"
            )
            rid = req.get("id") if isinstance(req, dict) else None
            say({"id": rid, "done": False, "step": "check", "error": why})
            continue
        limited = bool(req.get("limits"))
        _trial(req, say)


def _trial(req: dict[str, Any], say: Callable[[dict[str, Any]], None]) -> None:
    """One trial: a frame per step, then the verdict.  A sandboxed worker
    gets the build's bytes (``image``): it cannot see the copy."""
    if req.get("image"):
        req["path"] = workdir.anonymous_copy(
            base64.b64decode(req.pop("image")), req.get("name") or ""
        )
        kept: list[bool] = []
        _trial_at(req, say, kept)
        if not kept:  # its image is closed: the file may go
            workdir.drop_anonymous(req["path"])
        return
    _trial_at(req, say, [])


def _trial_at(req: dict[str, Any], say: Callable[[dict[str, Any]], None], kept: list[bool]) -> None:
    """The trial of the build at ``req["path"]``; ``kept`` gets an entry when
    its image stays loaded (it may leave code running)."""
    rid = req["id"]
    step = "check"
    handle = None
    binding = None
    keep_open = False  # this plugin may leave code running: never dlclose it here

    def verdict(msg: dict[str, Any]) -> None:
        msg["tainted"] = keep_open  # the host then replaces this worker
        say(msg)

    try:
        say({"id": rid, "step": step})
        data = loader.read_source(req["path"])
        desc, name, version, protos = loader.identify(
            data, req["source"], name=req.get("name"), declared=req.get("declared")
        )
        report = inspector.inspect_bytes(data, req["source"])
        keep_open = not (
            req.get("unload_safe") or (desc is not None and desc.unload_safe)
        ) and bool(report.hazards())
        step = "dlopen"
        say({"id": rid, "step": step})
        proc.apply_limits(req.get("limits") or {})  # as it will run, from its first instruction
        services.define_preflight_flag(os.path.dirname(req["path"]))  # before any plugin code
        binding = _standins(desc, req, name)
        with binding.table.opening(binding) if binding else contextlib.nullcontext():
            handle = loader.open_copy(str(req["path"]), req["source"])
        if binding is not None:
            binding.attach(lambda sym, h=handle: dl.symbol(h, sym), req["source"])
        step = "resolve"
        say({"id": rid, "step": step})
        for fname, prototype in protos.items():
            loader.resolve(handle, req["source"], fname, prototype)
        result: dict[str, Any] = {"name": name, "version": version, "exports": protos}
        if req.get("want_report", True):  # so the host need not parse it again
            result["report"] = report.as_dict()
        if desc is not None and desc.on_load:
            step = "on_load"
            say({"id": rid, "step": step})
            on_load = loader.resolve(handle, req["source"], desc.on_load, loader.ON_LOAD_TYPE)
            state = base64.b64decode(req["state"]) if req.get("state") is not None else None
            prev = req.get("prev_version")
            ffi = signatures.ffi
            rc = on_load(
                ffi.new("char[]", prev.encode()) if prev else ffi.NULL,
                ffi.from_buffer(state) if state else ffi.NULL,
                len(state) if state else 0,
            )
            if rc != 0:
                verdict(
                    {
                        "id": rid,
                        "done": False,
                        "step": step,
                        "rc": rc,
                        "error": f"on_load of {name} {version} refused to start (returned "
                        f"{rc}) with the state of version {prev or '(none)'}",
                    }
                )
                return
        if desc is not None and desc.self_test and req.get("self_test", True):
            step = "self_test"
            say({"id": rid, "step": step})
            fn = loader.resolve(handle, req["source"], desc.self_test, "int(void)")
            rc = fn()
            result["self_test"] = rc
            if rc != 0:
                verdict(
                    {
                        "id": rid,
                        "done": False,
                        "step": step,
                        "rc": rc,
                        "error": f"self-test failed (returned {rc})",
                    }
                )
                return
        if desc is not None and desc.on_unload:
            step = "on_unload"
            say({"id": rid, "step": step})
            error = _try_on_unload(handle, req, desc.on_unload, name, version)
            if error is not None:
                verdict({"id": rid, "done": False, "step": step, "error": error})
                return
        verdict({"id": rid, "done": True, **result})
    except HotloadError as exc:
        verdict(
            {"id": rid, "done": False, "step": step, "error": str(exc), "type": type(exc).__name__}
        )
    except Exception as exc:  # noqa: BLE001 - reported to the host, the worker goes on
        verdict({"id": rid, "done": False, "step": step, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        if binding is not None:
            _release(binding)
        if handle is not None and not keep_open:
            dl.close_image(handle, req["path"])
        elif handle is not None:
            kept.append(True)


def _standins(desc: Any, req: dict[str, Any], name: str) -> Any:
    """The plugin's imports bound to stand-ins that return each service's
    error value (None when it imports nothing).

    One table serves every request: a stand-in is kept per (name, prototype,
    error), so a reload's preflight re-provides nothing, its import check is
    cached, and the callbacks of the previous request (given back after it,
    see ``_release``) are reused instead of 20 new libffi closures each time."""
    if desc is None or not desc.imports:
        return None
    directory = os.path.dirname(req["path"])
    table = _TABLES.get(directory)
    if table is None:
        table = _TABLES[directory] = services.ServiceTable(directory, standin=True)
    for sname, (proto, error) in (req.get("services") or {}).items():
        ctype = services.signatures.pointer_type(proto)
        svc = table.services.get(sname)
        if svc is not None and svc.ctype is ctype and svc.error == error:
            continue
        table.provide(sname, services.standin(sname, ctype, error), proto, error=error)
    imports = {i.name: i.signature for i in desc.imports}
    return table.prepare(imports, req["source"], f"{name} (preflight)")


def _release(binding: Any) -> None:
    """The image is closed (or kept open, never to be called again): its
    stand-in callbacks may serve the next request.  They only return error
    values, so one shared with an image still mapped is harmless."""
    binding.detach()
    binding.left()


_TABLES: dict[str, Any] = {}  # directory -> the stand-in table of that host's work dir


def _try_on_unload(
    handle: int, req: dict[str, Any], symbol: str, name: str, version: str
) -> str | None:
    """Run the new build's ``on_unload`` and copy its blob the way the host will
    at the next swap; the refusal's text, or None when the blob is good."""
    ffi = signatures.ffi
    hook = loader.resolve(handle, req["source"], symbol, loader.ON_UNLOAD_TYPE)
    ptr, size = ffi.new("const void **"), ffi.new("size_t *")
    rc = hook(ptr, size)
    who = f"on_unload of {name} {version}"
    if rc != 0:
        return f"{who} failed (returned {rc}): its state could never be handed over"
    address = int(ffi.cast("uintptr_t", ptr[0]))
    limit = req.get("max_state_size") or loader.MAX_STATE_SIZE
    try:
        loader.copy_state(who, address, int(size[0]), limit)
    except HookError as exc:
        return str(exc)
    return None
