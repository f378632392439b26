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
"""

from __future__ import annotations

import logging
import os
import queue
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .._artifact.builder import compile_plugin
from .._engine.registry import Plugin
from .._errors import HotloadError, PluginCrashedError
from .._host import Host
from .._ops.apply import WatchEvent
from .._platform import dl

PLUGINS = ("double_xp", "loot_drop")
ACTIVITY = "activity"  # the live-ops plugin: events, services, handles (optional when interactive)
CRASHY = "crashy"  # --isolate: an isolated plugin that crashes on purpose in a call
CRASHY_SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("crashy", "1.0.0");
HOTLOAD_API int32_t ping(int32_t x) { return x + 1; }
HOTLOAD_EXPORT(ping, int32_t, (int32_t));
HOTLOAD_API int32_t boom(void) { volatile int *p = 0; *p = 1; return 0; } /* on purpose */
HOTLOAD_EXPORT(boom, int32_t, (void));
"""
BATCH = 25  # reward + loot calls per player per server tick
TICK = 0.001  # seconds between a player's ticks


def example_sources_dir() -> Path:
    """The example plugins' C sources: the checkout's ``native/plugins``
    when running from source, else the copy shipped in the package."""
    here = Path(__file__).resolve().parents[1]  # the hotload package
    for candidate in (here.parent.parent / "native" / "plugins", here / "sdk" / "plugins"):
        if all((candidate / f"{name}.c").is_file() for name in PLUGINS):
            return candidate
    raise HotloadError(
        f"the example plugin sources ({', '.join(PLUGINS)}) are not installed next to {here}"
    )


# ---- the game server -----------------------------------------------------------------


@dataclass
class Tally:
    """One player's counters; only its own thread writes them."""

    rewards: int = 0
    loot: int = 0
    legendary: int = 0
    failed: int = 0
    by_multiplier: dict[int, int] = field(default_factory=dict)
    went_back: int = 0  # saw a multiplier older than one it had already seen
    granted: int = 0  # what the activity plugin's event handlers returned as granted
    events: int = 0
    order: list[int] = field(default_factory=list)  # multipliers, in the order first seen
    errors: list[str] = field(default_factory=list)


class Player(threading.Thread):
    """A player loop: every tick, a batch of XP rewards and loot rolls."""

    def __init__(
        self,
        index: int,
        xp: Plugin,
        loot: Plugin,
        stop: threading.Event,
        live: LiveOps | None = None,
    ) -> None:
        super().__init__(name=f"player-{index}", daemon=True)
        self.tally = Tally()
        self._xp, self._loot, self._halt = xp, loot, stop
        self._rng = random.Random(index)
        self._seat = live.join(index) if live is not None else None
        self._emit = live.host.emit if live is not None else None

    def run(self) -> None:
        reward, rarity, rng, t = self._xp.reward, self._loot.rarity, self._rng, self.tally
        seat = self._seat
        if seat is not None:
            self._event("on_player_login", seat.struct)
        tick = 0
        while not self._halt.is_set():
            tick += 1
            if seat is not None:
                self._event("on_tick", seat.handle, tick)
            for _ in range(BATCH):
                base, level = rng.randint(10, 500), rng.randint(1, 60)
                try:
                    xp = reward(base, level)
                    tier = rarity(rng.randint(0, 9999), rng.randint(0, 40))
                except Exception as exc:  # the demo's whole point is that this stays at zero
                    t.failed += 1
                    if len(t.errors) < 3:
                        t.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                self._count(t, (xp - (base // 10 if level >= 10 else 0)) // base, tier)
            time.sleep(TICK)

    def _event(self, name: str, *args: Any) -> None:
        assert self._emit is not None
        t = self.tally
        try:
            t.granted += sum(self._emit(name, *args))
            t.events += 1
        except Exception as exc:  # counted as a failed call, like the others
            t.failed += 1
            if len(t.errors) < 3:
                t.errors.append(f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _count(t: Tally, mult: int, tier: int) -> None:
        t.rewards += 1
        t.loot += 1
        t.legendary += tier == 3
        if mult not in t.by_multiplier:
            t.by_multiplier[mult] = 0
            t.order.append(mult)
        elif mult != t.order[-1]:
            t.went_back += 1
        t.by_multiplier[mult] += 1


@dataclass
class Character:
    """A player as the game server knows it: a host object, behind a handle."""

    name: str
    level: int
    items: dict[str, int] = field(default_factory=dict)
    mail: list[str] = field(default_factory=list)


@dataclass
class Seat:
    handle: int
    struct: Any  # the player_t the activity plugin reads


class LiveOps:
    """The host side of the activity plugin: its three services, its two
    events, and the players it sees as handles.  Every grant the plugin makes
    lands in ``granted`` (under a lock: plugin threads and players call)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.lock = threading.Lock()
        self.granted = self.mails = self.logged = 0
        self.characters: list[Character] = []
        grant = "int32_t(int64_t player, const char *item, int32_t count)"
        host.provide("grant_item", self.grant_item, grant, error=-1)
        host.provide(
            "send_mail", self.send_mail, "int32_t(int64_t player, const char *subject)", error=-1
        )
        host.provide("log", self.log, "void(const char *line)")
        host.declare_event("on_player_login", "int32_t(const player_t *)")
        host.declare_event("on_tick", "int32_t(int64_t player, int32_t tick)")

    def join(self, index: int) -> Seat:
        who = Character(f"{'vera' if index % 2 else 'nim'}{index}", 10 + 15 * (index % 3))
        self.characters.append(who)
        h = self.host.handle(who)
        player = self.host[ACTIVITY].new("player_t", id=h, level=who.level, name=who.name)
        return Seat(h, player)

    def grant_item(self, player: int, item: str, count: int) -> int:
        who = self.host.resolve(player)  # a stale or forged handle raises: -1 to the plugin
        with self.lock:
            who.items[item] = who.items.get(item, 0) + count
            self.granted += count
        return count

    def send_mail(self, player: int, subject: str) -> int:
        self.host.resolve(player).mail.append(subject)
        with self.lock:
            self.mails += 1
        return 0

    def log(self, line: str) -> None:
        with self.lock:
            self.logged += 1


class Server:
    """The players, started and stopped together, and their summed tallies."""

    def __init__(self, host: Host, players: int, live: LiveOps | None = None) -> None:
        self.stop_event = threading.Event()
        live = live if live is not None and ACTIVITY in host else None
        self.players = [
            Player(i, host["double_xp"], host["loot_drop"], self.stop_event, live)
            for i in range(players)
        ]
        self.started = time.monotonic()

    def start(self) -> Server:
        for p in self.players:
            p.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for p in self.players:
            p.join()

    def total(self) -> Tally:
        out = Tally()
        for p in self.players:
            t = p.tally
            out.rewards += t.rewards
            out.loot += t.loot
            out.legendary += t.legendary
            out.failed += t.failed
            out.went_back += t.went_back
            out.granted += t.granted
            out.events += t.events
            out.errors += t.errors
            for mult, n in list(t.by_multiplier.items()):
                out.by_multiplier[mult] = out.by_multiplier.get(mult, 0) + n
        return out


# ---- the view ------------------------------------------------------------------------


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


# ---- the scripted run -----------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    lines: list[str]


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
        src, build = workspace / "src", workspace / "build"
        src.mkdir()
        for name in (*PLUGINS, ACTIVITY):
            shutil.copy2(example_sources_dir() / f"{name}.c", src / f"{name}.c")
            compile_plugin(src / f"{name}.c", build / f"{name}{dl.SUFFIX}")
        if isolate:
            (workspace / f"{CRASHY}.c").write_text(CRASHY_SRC)
            compile_plugin(workspace / f"{CRASHY}.c", workspace / f"{CRASHY}{dl.SUFFIX}")
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
    _header(view, host, src, players)
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
    view.status(status_text(server, xp, current), print_it=True)
    server.stop()
    outcome = _verify(host, server, xp, v1, swap, edited_at)
    outcome = _verify_live(host, server, live, activity, a1, aswap, outcome)
    if crash is not None:
        good, text = crash
        outcome.lines.insert(-1, f"  {'ok  ' if good else 'FAIL'} {'crash':<10} {text}")
        if not good:
            outcome.ok = False
            outcome.lines[-1] = "FAILED: crash"
    return outcome


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


def _header(
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


def _verify(
    host: Host, server: Server, xp: Plugin, v1: Any, swap: WatchEvent, edited_at: float
) -> Outcome:
    """The checks, each with the line that reports it."""
    t = server.total()
    grants = xp.grant_count()
    host.settle(5.0)
    old = next(v for v in host.versions("double_xp") if v.seq == v1.seq)
    still_mapped = _mapped(old.copy)
    x2, x3 = t.by_multiplier.get(2, 0), t.by_multiplier.get(3, 0)
    clean_switch = (
        t.went_back == 0
        and set(t.by_multiplier) == {2, 3}
        and all(p.tally.order[-1:] == [3] for p in server.players)
    )
    checks = [
        (
            t.failed == 0,
            "calls",
            f"{t.rewards + t.loot:,} served, {t.failed} failed"
            + (f" (first: {t.errors[0]})" if t.errors else ""),
        ),
        (
            clean_switch,
            "switch",
            f"{describe(v1)} (x2) -> v{swap.seq} {swap.plugin_version} (x3); "
            f"{len(server.players)} players went x2 -> x3 once, {t.went_back} went back",
        ),
        (
            grants == x2 + x3,
            "state",
            f"grant_count() = {grants:,} = {x2:,} rewards at x2 in v1 + {x3:,} at x3 "
            f"in v2 (v1 handed its count to v2)",
        ),
        (
            old.state == "unloaded" and not still_mapped,
            "old image",
            f"v{old.seq} {old.state}: dlclose'd {old.dlclose_count}x, {old.mapped_bytes} bytes "
            f"mapped, "
            f"{'still in' if still_mapped else 'gone from'} /proc/self/maps",
        ),
    ]
    lines = ["", "result"]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {what:<10} {text}" for ok, what, text in checks]
    ok = all(c[0] for c in checks)
    lines.append(
        "ok: hot swap under load with no failed call, state carried, old image unloaded"
        if ok
        else "FAILED: " + ", ".join(what for good, what, _ in checks if not good)
    )
    return Outcome(ok, lines)


def _verify_live(
    host: Host,
    server: Server,
    live: LiveOps,
    activity: Plugin,
    a1: Any,
    swap: WatchEvent,
    outcome: Outcome,
) -> Outcome:
    """The live-ops checks, added before the verdict line."""
    t = server.total()
    total = activity.total_granted()
    host.settle(5.0)
    old = next(v for v in host.versions(ACTIVITY) if v.seq == a1.seq)
    gone = old.state == "unloaded" and not _mapped(old.copy)
    errors = sum(v.service_errors for v in host.versions(ACTIVITY))
    checks = [
        (
            t.granted == live.granted == total and total > 0 and errors == 0,
            "grants",
            f"{t.events:,} events emitted; {live.granted:,} items reached the host = "
            f"{t.granted:,} the handlers returned = total_granted() {total:,} "
            f"(carried across the swap); {live.mails} mail(s), {errors} service errors",
        ),
        (
            gone and activity.login_reward() == 3,
            "activity",
            f"{describe(a1)} -> v{swap.seq} {swap.plugin_version} (login reward 3); "
            f"v{old.seq} {old.state}, "
            + (
                "its worker exited"
                if old.isolated
                else f"{'still in' if not gone else 'gone from'} /proc/self/maps"
            ),
        ),
    ]
    lines = outcome.lines[:-1]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {what:<10} {text}" for ok, what, text in checks]
    ok = outcome.ok and all(c[0] for c in checks)
    lines.append(
        outcome.lines[-1]
        if ok
        else "FAILED: " + ", ".join(what for good, what, _ in checks if not good)
        if outcome.ok
        else outcome.lines[-1]
    )
    return Outcome(ok, lines)


def _mapped(copy: str) -> bool:
    """Whether the kernel still maps ``copy`` into this process (False where
    there is no /proc: the host's own verdict then stands alone)."""
    try:
        with open("/proc/self/maps") as fh:
            return any(line.rstrip("\n").removesuffix(" (deleted)").endswith(copy) for line in fh)
    except OSError:
        return False


# ---- the interactive run ---------------------------------------------------------------


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
    src, note = _interactive_sources(src)
    events: queue.Queue[WatchEvent] = queue.Queue()
    with Host(control=True) as host:
        live = LiveOps(host)  # before the watcher loads activity.c (if the sources have it)
        host.watch(src, rebuild=True, out_dir=build, on_event=events.put)  # builds, loads all
        wanted = (*PLUGINS, ACTIVITY) if (src / f"{ACTIVITY}.c").is_file() else PLUGINS
        if not _await_loaded(host, events, view, wanted):
            return 1
        xp = host["double_xp"]
        _header(view, host, src, players, interactive=True)
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


def _interactive_sources(src: Path | None) -> tuple[Path, str | None]:
    if src is not None:
        return src, None
    examples = example_sources_dir()
    if os.access(examples, os.W_OK) and examples.parts[-2:] == ("native", "plugins"):
        return examples, None
    copy = Path(tempfile.mkdtemp(prefix="hotload-demo-src-"))
    for name in PLUGINS:
        shutil.copy2(examples / f"{name}.c", copy / f"{name}.c")
    return copy, f"  (the installed examples are read-only: editing copies in {copy})"


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


__all__ = ["example_sources_dir", "run"]


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
