"""The control protocol's ``record`` and ``replay`` operations (``hotload
record``, ``hotload replay``): keep a plugin's recent calls, and run them on
a build in a worker to see what it would have done."""

from __future__ import annotations

import logging
from typing import Any

from .._engine.recording import MAX_CALLS
from .._errors import ControlError
from .control_wire import request_number, request_path
from .protocols import PluginHost

log = logging.getLogger("hotload._ops.control_server")


def record_result(host: PluginHost, name: str, req: dict[str, Any]) -> dict[str, Any]:
    """``hotload record NAME [--calls N | --stop]``."""
    calls = None  # not given: the running recording (its status), or a new one
    if req.get("calls") is not None:
        calls = int(request_number(req, "calls", 0, low=0, high=MAX_CALLS))
    rec = host.record(name, calls=calls)
    log.info("control: recording of %s: %s on request", name, rec or "stopped")
    if rec is None:
        return {"recording": None}
    return {"recording": {"name": name, "capacity": rec.capacity, "total": rec.total}}


def replay_result(host: PluginHost, name: str, req: dict[str, Any]) -> dict[str, Any]:
    """``hotload replay NAME FILE``: the report (it changes nothing)."""
    path = request_path(req)
    if path is None:
        raise ControlError("replay needs the build's absolute 'path'", "bad_request")
    return {"replay": host.replay(name, path).as_dict()}
