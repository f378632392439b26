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
    """``{"builds": {name: absolute path}}``, or ``{"rollback": true}``."""
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
    done = host.reload_together(paths, allow_signature_change=allow)
    log.info("control: release %d on request: %s", done.id, ", ".join(paths))
    return {"release": done.as_dict()}
