"""Pick the platform layer for this OS at import time.

``dl`` opens and closes images and reports what is still loaded or mapped;
both implementations expose ``open_image``, ``close_image``, ``symbol``,
``image_path``, ``loader_has``, ``mapped_ranges`` and ``SUFFIX``.
``binfmt`` checks a file before it is opened (ELF here, PE on Windows).
Everything above them (registry, typed calls, hooks, CLI) is shared.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - proven under wine by tests/test_windows.py
    from . import _pe as binfmt
    from . import _proc_windows as proc
    from . import _windows as dl
else:
    from . import _elf as binfmt
    from . import _posix as dl
    from . import _proc_posix as proc

__all__ = ["binfmt", "dl", "proc"]
