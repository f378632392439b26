"""``hotload demo``: a game server keeps serving while a C plugin is
hot-swapped under it.

The scripted run (the default) is the project's end-to-end proof, run by
the test suite too: a host loads the example plugins, player threads
earn event rewards through them, the demo edits a *copy* of
``double_xp.c`` (XP multiplier 2 -> 3, version 1.0.0 -> 1.1.0), and the
watcher (``rebuild=True``) rebuilds and swaps it.  Then it checks, and
prints, what a person wants to know: no call failed, every player moved from
x2 to x3 once and never back, the grant counter carried across, and the old
image really left the process.  Any failed check exits 1.

The live-ops part: the players are host objects behind handles, the
``activity`` plugin handles the ``on_player_login`` and ``on_tick`` events
(each player thread emits them), reads the player's ``player_t`` and calls
the host's ``grant_item``, ``send_mail`` and ``log`` services.  The demo
swaps it too (login reward 2 -> 3) and checks that every grant the plugin
made reached the host, and that its total carried across.

``--isolate`` runs ``double_xp`` and ``activity`` each in its own worker
process (the activity plugin's ``player_t`` crosses as bytes, its
``grant_item``/``send_mail``/``log`` calls travel back to the host, the
events reach it like any plugin) and loads ``crashy``, an isolated plugin whose
``boom()`` dereferences NULL on purpose: the call raises
``PluginCrashedError``, the worker restarts, and the players never notice.

``--interactive`` watches the examples' sources (``native/plugins`` in a
checkout) until Ctrl-C, so a person can edit the C and watch it go live.

This module is the scripted run; the players are ``demo_players``, what
is shown ``demo_view``, the checks ``demo_verdict``, the sources and builds
``demo_plugins``, the interactive run ``demo_interactive``.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from .._artifact.builder import compile_plugin
from .._engine.judge import Judge
from .._engine.registry import Plugin
from .._errors import HotloadError, PluginCrashedError
from .._host import Host
from .._ops.apply import WatchEvent
from .._platform import dl
from .demo_interactive import run_interactive
from .demo_players import LiveOps, Server
from .demo_plugins import ACTIVITY, CRASHY, build_examples, example_sources_dir
from .demo_verdict import Outcome, verify, verify_live
from .demo_view import View, describe, header, status_text

__all__ = ["run"]


def run(
    out: TextIO = sys.stdout,
    *,
    players: int = 4,
    seconds: float = 1.0,
    interactive: bool = False,
    src: Path | None = None,
    verbose: bool = False,
    isolate: bool = False,
) -> int:
    """Entry point for ``hotload demo``; returns the exit status."""
    if not verbose:
        logging.getLogger("hotload").setLevel(logging.CRITICAL)  # the view reports what matters
    if interactive:
        return run_interactive(out, players=players, src=src)
    return run_scripted(out, players=players, seconds=seconds, isolate=isolate)


def run_scripted(out: TextIO, *, players: int, seconds: float, isolate: bool = False) -> int:
    view = View(out)
    workspace = Path(tempfile.mkdtemp(prefix="hotload-demo-"))
    try:
        src, build = build_examples(workspace, isolate=isolate)
        with Host(control=True) as host:
            outcome = _scripted(view, host, src, build, players, seconds, isolate=isolate)
        view.close()
        for line in outcome.lines:
            out.write(line + "\n")
        out.flush()
        return 0 if outcome.ok else 1
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _scripted(
    view: View,
    host: Host,
    src: Path,
    build: Path,
    players: int,
    seconds: float,
    *,
    isolate: bool = False,
) -> Outcome:
    xp = host.load(build / f"double_xp{dl.SUFFIX}", isolate=isolate)
    crashy = host.load(build.parent / f"{CRASHY}{dl.SUFFIX}", isolate=True) if isolate else None
    host.load(build / f"loot_drop{dl.SUFFIX}")
    live = LiveOps(host)
    activity = host.load(build / f"activity{dl.SUFFIX}", isolate=isolate)
    v1 = host.versions("double_xp")[-1]
    a1 = host.versions(ACTIVITY)[-1]
    header(view, host, src, players)
    events: queue.Queue[WatchEvent] = queue.Queue()
    host.watch(src, rebuild=True, out_dir=build, on_event=events.put, initial=False)
    server = Server(host, players, live).start()
    current = describe(v1)
    _run_for(view, server, xp, current, seconds)
    view.status(status_text(server, xp, current), print_it=True)
    crash = _crash_on_purpose(view, host, crashy) if crashy is not None else None
    edited_at = _edit(src / "double_xp.c", "MULTIPLIER", 2, 3)
    view.event("edit", f"double_xp.c: MULTIPLIER 2 -> 3, version 1.0.0 -> 1.1.0 (a copy in {src})")
    swap = _await_swap(view, server, xp, current, events)
    if swap is None or swap.action != "reloaded":
        server.stop()
        why = swap.error if swap is not None else "the watcher did not swap it within 60 s"
        return Outcome(False, [f"FAILED: double_xp was not swapped: {why}"])
    current = f"v{swap.seq} {swap.plugin_version}"
    view.event(
        "swap",
        f"watcher rebuilt double_xp.c in {(swap.build_seconds or 0.0) * 1e3:.0f} ms and swapped "
        f"{describe(v1)} -> {current}; serving {(swap.done_at - edited_at) * 1e3:.0f} ms "
        f"after the save",
    )
    _run_for(view, server, xp, current, seconds / 2)
    _edit(src / "activity.c", "LOGIN_REWARD", 2, 3)
    aswap = _await_swap(view, server, xp, current, events, ACTIVITY)
    if aswap is None or aswap.action != "reloaded":
        server.stop()
        why = aswap.error if aswap is not None else "the watcher did not swap it within 60 s"
        return Outcome(False, [f"FAILED: activity was not swapped: {why}"])
    view.event(
        "swap",
        f"activity.c: LOGIN_REWARD 2 -> 3; swapped {describe(a1)} -> "
        f"v{aswap.seq} {aswap.plugin_version} while players emitted events",
    )
    _run_for(view, server, xp, current, seconds / 2)
    judged = _canary_of_a_slow_build(view, host, server, xp, current, build.parent)
    view.status(status_text(server, xp, current), print_it=True)
    server.stop()
    outcome = verify(host, server, xp, v1, swap, edited_at)
    outcome = verify_live(host, server, live, activity, a1, aswap, outcome)
    good, text = judged
    outcome.lines.insert(-1, f"  {'ok  ' if good else 'FAIL'} {'canary':<10} {text}")
    if not good:
        outcome.ok = False
        outcome.lines[-1] = "FAILED: canary"
    if crash is not None:
        good, text = crash
        outcome.lines.insert(-1, f"  {'ok  ' if good else 'FAIL'} {'crash':<10} {text}")
        if not good:
            outcome.ok = False
            outcome.lines[-1] = "FAILED: crash"
    return outcome


def _canary_of_a_slow_build(
    view: View, host: Host, server: Server, xp: Plugin, current: str, where: Path
) -> tuple[bool, str]:
    """A debug build of ``loot_drop`` (a busy loop left in every roll) as a
    canary on a quarter of the rolls: the judge sees it is slower than the
    version serving, on the same calls, and aborts it; the players whose
    rolls it took go back to v1 and never see an error."""
    source = (example_sources_dir() / "loot_drop.c").read_text()
    slow = source.replace(
        "    int32_t r = roll + luck * 25;",
        "    volatile int spin = 0;\n    for (int i = 0; i < 2000; i++) spin += i;\n"
        "    int32_t r = roll + luck * 25;",
    ).replace('HOTLOAD_PLUGIN("loot_drop", "1.0.0")', 'HOTLOAD_PLUGIN("loot_drop", "1.1.0-debug")')
    (where / "loot_drop-debug.c").write_text(slow)
    lib = where / f"loot_drop-debug{dl.SUFFIX}"
    compile_plugin(where / "loot_drop-debug.c", lib)
    before = host.current("loot_drop")
    canary = host.canary("loot_drop", lib, share=0.25, judge=Judge(bake=10.0))
    end = time.monotonic() + 20.0
    while canary.running and time.monotonic() < end:
        view.status(status_text(server, xp, current))
        time.sleep(0.05)
    if canary.running:
        canary.abort("the demo's 20 s ran out")
    view.event(
        "canary",
        f"loot_drop 1.1.0-debug (a busy loop left in) on 25% of the rolls beside "
        f"v{canary.baseline.seq} 1.0.0: {canary.verdict.split(': latency ')[0]}",
    )
    after = host.current("loot_drop")
    good = (
        canary.state == "aborted"
        and "regression in latency" in canary.verdict
        and before is not None
        and after is not None
        and after.seq == before.seq
    )
    f = canary.figures()
    return good, (
        f"loot_drop 1.1.0-debug {canary.state} by the judge in {f['seconds']:.1f} s, its p50 "
        f"{f['candidate']['p50_us'] or 0:.1f} us against {f['baseline']['p50_us'] or 0:.1f} us; "
        f"v{canary.baseline.seq} 1.0.0 serves every roll again"
    )


def _crash_on_purpose(view: View, host: Host, crashy: Plugin) -> tuple[bool, str]:
    """Call ``crashy.boom()``, which dereferences NULL in its worker: the
    call raises, the worker restarts, the host (and its players) serve on."""
    pid = host.versions(CRASHY)[-1].pid
    try:
        crashy.boom()
    except PluginCrashedError as exc:
        view.event("crash", f"{CRASHY}.boom() in worker pid {pid}: PluginCrashedError: {exc}")
    else:
        return False, f"{CRASHY}.boom() returned instead of crashing"
    t0 = time.monotonic()
    try:
        pong = crashy.ping(41)  # waits for the restarted worker
    except HotloadError as exc:
        return False, f"{CRASHY} did not come back: {exc}"
    info = host.versions(CRASHY)[-1]
    ms = (time.monotonic() - t0) * 1e3
    view.event(
        "restart",
        f"{CRASHY} v{info.seq} restarted in worker pid {info.pid} "
        f"({info.restarts} restart); ping(41) = {pong}, {ms:.0f} ms after the crash",
    )
    good = pong == 42 and info.restarts == 1 and info.pid not in (None, pid)
    return good, (
        f"{CRASHY}.boom() crashed worker pid {pid} (SIGSEGV): PluginCrashedError in that call, "
        f"restarted as pid {info.pid}, the host and its players served on"
    )


def _run_for(view: View, server: Server, xp: Plugin, current: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        view.status(status_text(server, xp, current))
        time.sleep(min(0.1, max(end - time.monotonic(), 0)))


def _edit(path: Path, macro: str, old: int, new_value: int) -> float:
    """Edit the copy like an editor saves: a new file renamed over the old
    (``#define macro old`` -> ``new_value``, version 1.0.0 -> 1.1.0)."""
    text = path.read_text()
    new = re.sub(rf"#define {macro} {old}\b", f"#define {macro} {new_value}", text)
    plugin = f'HOTLOAD_PLUGIN("{path.stem}", '
    new = new.replace(f'{plugin}"1.0.0")', f'{plugin}"1.1.0")')
    if new.count("1.1.0") == text.count("1.1.0") or f"{macro} {new_value}" not in new:
        raise HotloadError(f"{path}: could not find {macro} {old} / version 1.0.0 to edit")
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(new)
    started = time.monotonic()
    os.replace(tmp, path)
    return started


def _await_swap(
    view: View,
    server: Server,
    xp: Plugin,
    current: str,
    events: queue.Queue[WatchEvent],
    name: str = "double_xp",
) -> WatchEvent | None:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        view.status(status_text(server, xp, current))
        try:
            ev = events.get(timeout=0.05)
        except queue.Empty:
            continue
        ours = ev.name == name or (ev.source or "").endswith(f"{name}.c")
        if ours and ev.action in ("reloaded", "failed"):
            return ev
    return None
