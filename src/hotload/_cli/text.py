"""Text for a terminal: what the commands print of names, paths and reasons
they did not choose (a plugin file's name, a verdict or a host report from
Redis) goes through ``printable``, so an escape sequence in one cannot
rewrite the operator's screen or hide a line."""

from __future__ import annotations

import re
import time
import unicodedata

_AHEAD = re.compile(r"^\+\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def ahead(text: str) -> float | None:
    """``+SECONDS`` (``+30``, ``+5s``, ``+2m``, ``+1h``) as a Unix time from now;
    None when ``text`` is not of that form (then it is a date to parse)."""
    m = _AHEAD.match(text)
    if m is None:
        return None
    return time.time() + float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


def printable(text: str) -> str:
    """``text`` with control and format characters (ESC, BEL, CR, a
    right-to-left override) as ``?``; newlines kept."""
    return "".join(
        "?" if c != "\n" and unicodedata.category(c) in ("Cc", "Cf") else c for c in text
    )
