"""The preflight worker: a separate Python process that tries a plugin before
the host loads it (``python -m hotload._process.preflight_worker``).

Protocol: one JSON request per line on stdin, one JSON line per *step* on the
protocol pipe before the step runs (so if the plugin kills the process, the
host knows which step it was in), then a final ``{"done": ...}`` line.  The
plugin's own stdout is sent to stderr so it cannot corrupt the protocol.

Requests: ``{"id", "path", "source", "name", "declared", "prev_version",
"state" (base64 or null), "self_test": bool, "unload_safe": bool,
"max_state_size": int}``.  After ``on_load`` and the self-test the new
build's ``on_unload`` runs too and its blob is copied as the host would copy
it, so a build whose blob cannot be read (or is over the cap) is refused here
instead of taking the host down at its next reload.

Started as ``... --parent PID``: the worker ends when that process ends, even
while a plugin hook hangs in its main thread.

The soft-purge rule holds here too: a plugin whose binary shows unload
hazards (threads, thread keys, handlers) and does not declare itself unload
safe is never closed in the worker; its final line says ``"tainted": true``
and the host replaces the worker, so a thread it left behind cannot crash
the worker during another plugin's check.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
from typing import Any


def _main(argv: list[str]) -> int:
    from .._platform import proc

    parent = int(argv[argv.index("--parent") + 1]) if "--parent" in argv else os.getppid()
    proc.die_with_parent(parent)
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # plugin printf()s go to stderr, never into the protocol
    sys.stdout = sys.stderr
    from .._artifact import loader, signatures
    from .._contract import services
    from .._errors import HotloadError
    from .._inspect import report as inspector
    from .._platform import dl

    keep_open = False  # this request's plugin may leave code running: never dlclose it here

    def say(msg: dict[str, Any]) -> None:
        if "done" in msg:
            msg["tainted"] = keep_open  # the host then replaces this worker
        channel.write(json.dumps(msg) + "\n")
        channel.flush()

    services.mark_preflight()  # hotload_in_preflight() says 1 in this process
    say({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        if proc.parent_gone(parent):
            return 1
        req = json.loads(line)
        rid = req["id"]
        step = "check"
        handle = None
        binding = None
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
            binding = _standins(services, desc, req, name)
            with binding.table.opening(binding) if binding else contextlib.nullcontext():
                handle = loader.open_copy(req["path"], req["source"])
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
                    say(
                        {
                            "id": rid,
                            "done": False,
                            "step": step,
                            "rc": rc,
                            "error": f"on_load of {name} {version} refused to start (returned "
                            f"{rc}) with the "
                            f"state of version {prev or '(none)'}",
                        }
                    )
                    continue
            if desc is not None and desc.self_test and req.get("self_test", True):
                step = "self_test"
                say({"id": rid, "step": step})
                fn = loader.resolve(handle, req["source"], desc.self_test, "int(void)")
                rc = fn()
                result["self_test"] = rc
                if rc != 0:
                    say(
                        {
                            "id": rid,
                            "done": False,
                            "step": step,
                            "rc": rc,
                            "error": f"self-test failed (returned {rc})",
                        }
                    )
                    continue
            if desc is not None and desc.on_unload:
                step = "on_unload"
                say({"id": rid, "step": step})
                error = _try_on_unload(loader, handle, req, desc.on_unload, name, version)
                if error is not None:
                    say({"id": rid, "done": False, "step": step, "error": error})
                    continue
            say({"id": rid, "done": True, **result})
        except HotloadError as exc:
            say(
                {
                    "id": rid,
                    "done": False,
                    "step": step,
                    "error": str(exc),
                    "type": type(exc).__name__,
                }
            )
        except Exception as exc:  # noqa: BLE001 - reported to the host, worker keeps going
            say({"id": rid, "done": False, "step": step, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            if binding is not None:
                _release(binding)
            if handle is not None and not keep_open:
                dl.close_image(handle, req["path"])
    return 0


def _standins(services: Any, desc: Any, req: dict[str, Any], name: str) -> Any:
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
    loader: Any, handle: int, req: dict[str, Any], symbol: str, name: str, version: str
) -> str | None:
    """Run the new build's ``on_unload`` and copy its blob the way the host will
    at the next swap; the refusal's text, or None when the blob is good."""
    from .._artifact.signatures import ffi
    from .._errors import HookError

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


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
