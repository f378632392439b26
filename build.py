#!/usr/bin/env python3
"""Build hotload plugins: ``native/plugins/*.c`` -> ``build/plugins/*.so``.

    python build.py [FILES...]        # default: every native/plugins/*.c
    CC=clang CFLAGS=-O2 python build.py
    python build.py --target windows  # -> build/plugins-win/*.dll
                                      # (x86_64-w64-mingw32-gcc; WIN_CC=...)

Each output is written to a temporary name beside its target and renamed
into place, so a watcher (or a host) never sees a half-written library.
``make plugins``, ``hotload build`` and the watcher's rebuild all use this.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))

from hotload._artifact.builder import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], root=ROOT, environ=os.environ))
