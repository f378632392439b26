"""Key presses from a POSIX terminal: cbreak mode and ``select`` with a timeout.

cbreak (not raw) mode: echo and line buffering off, but the terminal still
turns Ctrl-C into SIGINT and keeps its output processing, so a view that
dies still leaves a usable shell behind, and ``tcsetattr`` puts the saved
settings back however the block ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import tty
from collections.abc import Callable, Iterator

# The escape sequences terminals send for the keys hotload top uses: ANSI
# (``ESC [ A``) and the "application cursor" form (``ESC O A``) tmux and
# xterm send after some programs switch it on.
_SEQUENCES = {
    b"\x1b[A": "up",
    b"\x1b[B": "down",
    b"\x1b[C": "right",
    b"\x1b[D": "left",
    b"\x1bOA": "up",
    b"\x1bOB": "down",
    b"\x1bOC": "right",
    b"\x1bOD": "left",
}
_SINGLE = {
    b"\r": "enter",
    b"\n": "enter",
    b"\x1b": "esc",
    b"\x7f": "backspace",
    b"\x08": "backspace",
}


def decode(data: bytes) -> list[str]:
    """The keys in one read from the terminal, in order.  An escape
    sequence this does not know (a function key) is dropped whole rather
    than read as ``esc`` followed by letters that would act as commands."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        if data[i : i + 1] == b"\x1b" and i + 1 < len(data):
            seq = data[i : i + 3]
            if seq in _SEQUENCES:
                keys.append(_SEQUENCES[seq])
                i += 3
                continue
            if data[i + 1 : i + 2] in (b"[", b"O"):  # CSI/SS3 we do not know: skip to its end
                j = i + 2
                while j < len(data) and not (0x40 <= data[j] <= 0x7E):
                    j += 1
                i = j + 1
                continue
        byte = data[i : i + 1]
        if byte in _SINGLE:
            keys.append(_SINGLE[byte])
            i += 1
            continue
        # one UTF-8 character: its lead byte says how many bytes follow; a
        # byte that starts no valid character is skipped alone
        n = 1 if byte < b"\x80" else 2 if byte < b"\xe0" else 3 if byte < b"\xf0" else 4
        try:
            char = data[i : i + n].decode("utf-8")
        except UnicodeDecodeError:
            i += 1
            continue
        if len(char) == 1 and char.isprintable():
            keys.append(char)
        i += n
    return keys


@contextlib.contextmanager
def raw_keys(fd: int) -> Iterator[Callable[[float], list[str]]]:
    saved = termios.tcgetattr(fd)

    def read(timeout: float) -> list[str]:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        if not ready:
            return []
        data = os.read(fd, 256)
        if not data:  # the terminal hung up: nothing more will come
            raise EOFError("the terminal closed")
        return decode(data)

    tty.setcbreak(fd, termios.TCSANOW)
    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
