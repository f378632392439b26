"""The control protocol's ``canary`` operation (``hotload canary``): start a
canary, widen, promote or abort it, or say how the running one goes."""

from __future__ import annotations

import logging
from typing import Any

from .._engine.judge import Judge
from .._errors import ControlError
from .control_wire import request_number, request_path
from .protocols import PluginHost

log = logging.getLogger("hotload._ops.control_server")


def canary_result(host: PluginHost, name: str, req: dict[str, Any]) -> dict[str, Any]:
    """``hotload canary``: start one (``path``), widen, promote, abort, or
    say how the running one goes (``status``); ``name`` is loaded."""
    action = req.get("action", "status")
    last = {c.name: c for c in host.canaries(ended=True)}.get(name)
    running = last if last is not None and last.running else None
    if action == "start":
        bake = request_number(req, "bake", 30.0, low=0.1, high=86400.0)
        share = request_number(req, "share", 0.05, low=2**-32, high=1.0)
        key = req.get("key", 0)
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 64:
            raise ControlError("'key' must be an argument's index, 0 to 63", "bad_request")
        judged = req.get("judge", True)
        if not isinstance(judged, bool):
            raise ControlError("'judge' must be true or false", "bad_request")
        judge = Judge(bake=bake, interval=min(Judge.interval, bake)) if judged else None
        canary = host.canary(name, request_path(req), share=share, key=key, judge=judge)
        log.info("control: canary of %s started on request", name)
        return {"canary": canary.figures()}
    if action not in ("status", "widen", "promote", "abort"):
        raise ControlError(f"unknown canary action {action!r}", "bad_request")
    if running is None:
        if action == "status":  # the last one's end, if any: why did it abort?
            return {"canary": last.figures() if last is not None else None}
        raise ControlError(f"{name}: no canary is running", "not_running")
    if action == "widen":
        running.widen(request_number(req, "share", 0.0, low=2**-32, high=1.0))
    elif action in ("promote", "abort"):
        how = {"promote": "promoted", "abort": "aborted"}[action]
        how += f" by hand (hotload canary --{action})"
        end = running.promote if action == "promote" else running.abort
        end(how)
        log.info("control: canary of %s %s on request", name, running.state)
    return {"canary": running.figures()}
