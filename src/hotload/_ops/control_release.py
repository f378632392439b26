"""The control protocol's ``release`` operation (``hotload release``): switch
several plugins as one, or roll the last release back."""

from __future__ import annotations

import logging
from typing import Any

from .._errors import ControlError
from .control_wire import request_path
from .protocols import PluginHost

log = logging.getLogger("hotload._ops.control_server")

MAX_PLUGINS = 64  # plugins in one release over the socket


def release_result(host: PluginHost, req: dict[str, Any]) -> dict[str, Any]:
    """``{"builds": {name: absolute path}, "at": unix seconds?}``, ``{"rollback":
    true}``, ``{"cancel": id}`` (a staged release) or ``{"staged": true}`` (list them)."""
    if req.get("staged", False) is True:
        return {"staged": [r.as_dict() for r in host.staged_releases()]}
    if "cancel" in req:
        rid = req["cancel"]
        found = [r for r in host.staged_releases() if r.id == rid and not isinstance(rid, bool)]
        if not found:
            raise ControlError(f"no staged release {rid!r}", "not_running")
        found[0].cancel("cancelled by hand (hotload release --cancel)")
        log.info("control: release %s cancelled on request", rid)
        return {"release": found[0].as_dict()}
    if req.get("rollback", False) is True:
        done = host.rollback_together()
        log.info("control: release rolled back on request")
        return {"release": done.as_dict()}
    builds = req.get("builds")
    if not isinstance(builds, dict) or not builds or len(builds) > MAX_PLUGINS:
        raise ControlError(
            f"'builds' must map 1 to {MAX_PLUGINS} plugin names to absolute paths", "bad_request"
        )
    paths: dict[str, str | None] = {}
    for name, path in builds.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ControlError(f"{name!r} is not a plugin name", "bad_request")
        paths[name] = request_path({"path": path})
    allow = req.get("allow_signature_change", False)
    if not isinstance(allow, bool):
        raise ControlError("'allow_signature_change' must be true or false", "bad_request")
    at = req.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float))):
        raise ControlError("'at' must be Unix seconds", "bad_request")
    try:
        done = host.reload_together(paths, allow_signature_change=allow, at=at)
    except (TypeError, ValueError) as exc:  # an at= out of range
        raise ControlError(str(exc), "bad_request") from None
    log.info("control: release %d on request: %s", done.id, ", ".join(paths))
    return {"release": done.as_dict()}
