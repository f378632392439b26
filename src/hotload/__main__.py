"""``python -m hotload``: the ``hotload`` command (see ``hotload._cli``)."""

import sys

from ._cli import main

sys.exit(main())
