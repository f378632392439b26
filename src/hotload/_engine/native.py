"""Which router this process runs: the compiled one (``_crouter.c``), unless
it was not built (no C compiler at install time) or ``HOTLOAD_PURE_PYTHON=1``
asks for the Python one.  A module of its own so that every layer that has a
compiled fast path (the router, events, service meters) asks the same
question once, and none of them imports another to learn the answer."""

from __future__ import annotations

import os
from types import ModuleType


def _native() -> ModuleType | None:
    if os.environ.get("HOTLOAD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _crouter
    except ImportError:
        return None
    return _crouter


#: The compiled router module, or None (the Python router).
crouter = _native()

#: Which router this process uses: "compiled" or "python".
ROUTER = "compiled" if crouter is not None else "python"
