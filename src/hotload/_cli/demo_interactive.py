"""``hotload demo --interactive``: the players serve while the watcher
builds and swaps every save of the examples' sources, until Ctrl-C.
"""

from __future__ import annotations

import queue
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from .._host import Host
from .._ops.watcher import WatchEvent
from .demo_players import LiveOps, Server
from .demo_plugins import ACTIVITY, PLUGINS, interactive_sources
from .demo_view import View, describe, header, status_text


def run_interactive(out: TextIO, *, players: int, src: Path | None) -> int:
    # The edits are built into a private directory, removed at exit: the
    # default (``build/plugins`` for ``native/plugins``) would leave the edited
    # build where ``make plugins`` put the original, and the README's
    # quickstart would then print other numbers.
    build = Path(tempfile.mkdtemp(prefix="hotload-demo-build-"))
    try:
        return _interactive(out, players=players, src=src, build=build)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _interactive(out: TextIO, *, players: int, src: Path | None, build: Path) -> int:
    view = View(out)
    src, note = interactive_sources(src)
    events: queue.Queue[WatchEvent] = queue.Queue()
    with Host(control=True) as host:
        live = LiveOps(host)  # before the watcher loads activity.c (if the sources have it)
        host.watch(src, rebuild=True, out_dir=build, on_event=events.put)  # builds, loads all
        wanted = (*PLUGINS, ACTIVITY) if (src / f"{ACTIVITY}.c").is_file() else PLUGINS
        if not _await_loaded(host, events, view, wanted):
            return 1
        xp = host["double_xp"]
        header(view, host, src, players, interactive=True)
        if note:
            view.line(note)
        view.line(f"  builds    {build} (private, removed at exit)")
        view.line(f"  edit {src / 'double_xp.c'} (try MULTIPLIER 3) and save; Ctrl-C to stop")
        view.line()
        server = Server(host, players, live).start()
        serving = {name: _active(host, name) for name in PLUGINS}
        _stop_on_signals()
        try:
            while True:
                announced = _drain(view, events)
                _show_outside_swaps(view, host, serving, announced)
                view.status(status_text(server, xp, describe(serving["double_xp"])))
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        server.stop()
        view.close()
        t = server.total()
        out.write(f"\nstopped: {t.rewards + t.loot:,} calls served, {t.failed} failed\n")
    return 0


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both end the run cleanly (players stopped, host
    closed, socket removed), even where the shell started us with SIGINT
    ignored, as it does for background jobs."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _await_loaded(
    host: Host, events: queue.Queue[WatchEvent], view: View, wanted: tuple[str, ...] = PLUGINS
) -> bool:
    deadline = time.monotonic() + 60.0
    while not all(name in host for name in wanted):
        try:
            ev = events.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            view.line("hotload: error: the example plugins did not load within 60 s")
            return False
        if ev.action == "failed":
            view.line(f"hotload: error: {(ev.error or '').splitlines()[0]}")
            return False
    return True


def _drain(view: View, events: queue.Queue[WatchEvent]) -> set[tuple[str, int]]:
    """Show the watcher's news; return the (plugin, seq) swaps it announced."""
    announced: set[tuple[str, int]] = set()
    while True:
        try:
            ev = events.get_nowait()
        except queue.Empty:
            return announced
        where = Path(ev.source or ev.path).name
        if ev.action in ("reloaded", "loaded") and ev.name and ev.seq:
            built = f"rebuilt in {ev.build_seconds * 1e3:.0f} ms, " if ev.build_seconds else ""
            view.event("swap", f"{where}: {built}{ev.name} now v{ev.seq} {ev.plugin_version}")
            announced.add((ev.name, ev.seq))
        elif ev.action == "failed":
            first = (ev.error or "").strip().splitlines()
            detail = next((ln for ln in first if "error" in ln), first[-1] if first else "")
            view.event("refused", f"{where}: {detail.strip()} (the running version keeps serving)")
        elif ev.action == "unchanged":
            view.event("same", f"{where}: rebuilt to the same bytes; nothing to swap")


def _active(host: Host, name: str) -> Any:
    """The version serving ``name``, waiting out a switch in progress (during
    a stateful swap no version is active for a moment)."""
    deadline = time.monotonic() + 10.0
    while (current := host.current(name)) is None and time.monotonic() < deadline:
        time.sleep(0.001)
    return current


def _show_outside_swaps(
    view: View, host: Host, serving: dict[str, Any], announced: set[tuple[str, int]]
) -> None:
    """A swap the watcher did not make (``hotload reload``/``rollback`` from
    another terminal) shows up too."""
    for name, before in serving.items():
        now = _active(host, name)
        if now.seq != before.seq and (name, now.seq) not in announced:
            how = now.note or "reloaded from outside the watcher"
            view.event("swap", f"{name} now v{now.seq} {now.plugin_version} ({how})")
        serving[name] = now
