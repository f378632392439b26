"""What the demo shows: a live view (event lines, one status line redrawn
in place on a terminal), the status text, the header that names the host
and its plugins, and how a person reaches this CLI from a shell.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from .._engine.registry import Plugin
from .._host import Host
from .demo_players import Server
from .demo_plugins import ACTIVITY, CRASHY, PLUGINS


class View:
    """A compact live view: event lines with a time stamp, and on a
    terminal one status line redrawn in place below them.  Piped output
    gets the same event lines, and the status only when asked to print it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.t0 = time.monotonic()
        self._status = ""
        self._lock = threading.Lock()

    def line(self, text: str = "") -> None:
        with self._lock:
            self._clear()
            self.out.write(text + "\n")
            self._draw()

    def event(self, tag: str, text: str) -> None:
        self.line(f"  [{time.monotonic() - self.t0:5.2f}s] {tag:<8} {text}")

    def status(self, text: str, *, print_it: bool = False) -> None:
        with self._lock:
            self._clear()
            self._status = text
            if print_it and not self.tty:
                self.out.write(f"  [{time.monotonic() - self.t0:5.2f}s] {'serving':<8} {text}\n")
            self._draw()

    def close(self) -> None:
        with self._lock:
            self._clear()
            self._status = ""

    def _clear(self) -> None:
        if self.tty and self._status:
            self.out.write("\r\x1b[K")

    def _draw(self) -> None:
        if self.tty and self._status:
            width = shutil.get_terminal_size((100, 24)).columns
            self.out.write(f"  {self._status}"[: width - 1])  # a wrapped line could not be redrawn
        self.out.flush()


def status_text(server: Server, xp: Plugin, current: str) -> str:
    t = server.total()
    rate = (t.rewards + t.loot) / max(time.monotonic() - server.started, 1e-9)
    try:
        mult = f"x{xp.multiplier()}"
    except Exception:
        mult = "x?"
    return (
        f"double_xp {current} {mult} | {t.rewards:,} rewards | {t.legendary:,} legendary drops "
        f"| {rate / 1000:,.0f}k calls/s | {t.failed} failed"
    )


def describe(info: Any) -> str:
    return f"v{info.seq} {info.plugin_version}"


def header(
    view: View, host: Host, watched: Path, players: int, *, interactive: bool = False
) -> None:

    view.line("hotload demo: a game server keeps serving while a C plugin is hot-swapped under it")
    cli = cli_command()
    if interactive:
        view.line(f"  host      pid {os.getpid()}")
        view.line(f"  try       `{cli} ls` in another terminal")
    else:  # this run ends in seconds, before anyone could type that
        view.line(f"  host      pid {os.getpid()} (this run ends in seconds)")
        view.line(f"  try       `{cli} demo --interactive`, then `{cli} ls` in another terminal")
    kinds = {
        "double_xp": "XP event, keeps a grant counter across swaps",
        "loot_drop": "loot rarity rules, stateless",
        ACTIVITY: "handles on_player_login/on_tick, calls grant_item/send_mail/log",
        CRASHY: "boom() dereferences NULL on purpose",
    }
    for name in (*PLUGINS, ACTIVITY, CRASHY):
        if name in host:
            info = host.versions(name)[-1]
            where = f"; isolated, worker pid {info.pid}" if info.isolated else ""
            view.line(f"  plugin    {name} {info.plugin_version} ({kinds[name]}{where})")
    calls = "reward() and rarity()" + (", emitting on_tick" if ACTIVITY in host else "")
    view.line(f"  players   {players} threads, each calling {calls} every tick")
    view.line(f"  watching  {watched} (rebuild on save)")
    view.line()


def cli_command() -> str:
    """How a person reaches this CLI from a shell: ``hotload`` when that is
    on PATH and is ours, else the script next to this interpreter
    (``.venv/bin/hotload`` relative to the current directory when inside it),
    else ``python -m hotload`` with this interpreter."""
    script = Path(sys.executable).parent / ("hotload.exe" if os.name == "nt" else "hotload")
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m hotload"
    on_path = shutil.which("hotload")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "hotload"
    try:
        shown = script.relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(script))
    return shlex.quote(str(shown))
