"""The demo's game server: player threads that call the plugins every tick
and count what they saw, and the host side of the live-ops plugin (its
services, its events, the players it sees as handles).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .._engine.registry import Plugin
from .._host import Host
from .demo_plugins import ACTIVITY

BATCH = 25  # reward + loot calls per player per server tick
TICK = 0.001  # seconds between a player's ticks


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
