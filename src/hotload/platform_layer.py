"""Pick the platform layer for this OS at import time.

Both layers expose the same functions: ``open_image``, ``close_image``,
``symbol``, ``image_path``, ``loader_has``, ``mapped_ranges`` and ``SUFFIX``.
Everything above them (registry, typed calls, hooks, CLI) is shared.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - exercised under wine by the harness
    from . import dl_windows as dl
else:
    from . import dl_posix as dl

__all__ = ["dl"]
