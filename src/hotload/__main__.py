"""``python -m hotload``: the ``hotload`` command (see ``hotload.cli``)."""

import sys

from .cli import main

sys.exit(main())
