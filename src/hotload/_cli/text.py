"""Text for a terminal: what the commands print of names, paths and reasons
they did not choose (a plugin file's name, a verdict or a host report from
Redis) goes through ``printable``, so an escape sequence in one cannot
rewrite the operator's screen or hide a line."""

from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    """``text`` with control and format characters (ESC, BEL, CR, a
    right-to-left override) as ``?``; newlines kept."""
    return "".join(
        "?" if c != "\n" and unicodedata.category(c) in ("Cc", "Cf") else c for c in text
    )
