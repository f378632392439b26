"""The agent's wait between syncs, and its wake-ups on the fleet's ``wake``
channel coalesced.

Any host's Redis user may publish on ``wake`` (the ACL lets a host publish),
and each wake-up costs every agent a full sync (read ``desired`` and the
release plans, check their signatures).  So a wake-up is taken at once when
the agent is rested, and through a flood at most once per ``WAKE_GAP``
seconds, stretched so that syncs for wake-ups take at most ``SYNC_SHARE`` of
a core however costly one is: a cell-rate limit (GCRA) where each sync for a
wake-up spaces the next by ``max(WAKE_GAP, its CPU / SYNC_SHARE)``, and a
rested agent has ``WAKE_CREDIT`` seconds of that spacing to spend at once (a
rollout's steps in quick succession, or one costly sync that loaded a plugin,
hold nothing back).  A wake-up that came while held back is never lost: the
sync runs when the gap ends and reads what is there then.  While held back
the socket is not read; then at most ``DRAIN_MAX`` waiting messages are read,
and a longer backlog is dropped with the subscription (subscribed anew on a
fresh connection, before the sync reads the keys), so a flood faster than
Python parses costs no more than a slow one.  Nothing else is held back: a
changed ``gen`` seen by a heartbeat (a real change waits a heartbeat at
most), the host's own changes, canary verdicts, the sync at a (re)connect.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

WAKE_GAP = 0.05  # seconds: through a flood, at most one sync per this for wake-ups
WAKE_CREDIT = 1.0  # seconds of that spacing a rested agent may use at once (a burst)
SYNC_SHARE = 0.1  # the share of a core a flood's syncs may take (the gap stretches)
DRAIN_MAX = 256  # messages read per sync; a longer backlog is dropped with the socket
FLOOD_LOG = 60.0  # seconds between two warnings of a flood


class Wakes:
    """One agent's wait: ``wait(until)`` returns when the agent should sync
    (``agent._dirty`` set) or beat (``until`` passed), or it stops."""

    def __init__(self, agent: Any) -> None:  # the FleetAgent (which imports this module)
        self.a = agent
        self.pending = False  # a wake-up read that no sync has covered yet
        self.messages = 0  # wake-ups read (the tests read it)
        self.dropped = 0  # backlogs dropped with their subscription
        self._tat = 0.0  # GCRA: the theoretical time of the next wake-up sync
        self._taken = False  # the coming sync is for a wake-up
        self._logged = -FLOOD_LOG

    def synced(self, cpu: float) -> None:
        """A sync that took ``cpu`` thread CPU seconds ran: it covered every
        wake-up read before it; when a wake-up started it, the next one
        waits in proportion (a sync for another cause spends no credit: the
        first one at a start, say, costs the most)."""
        self.pending = False
        if self._taken:
            self._taken = False
            now = time.monotonic()
            self._tat = max(self._tat, now) + max(WAKE_GAP, cpu / SYNC_SHARE)

    def ready_at(self) -> float:
        """When a pending wake-up may start a sync."""
        return self._tat - WAKE_CREDIT

    def wait(self, until: float) -> None:
        """Sleep on the wake channel until the next heartbeat, a wake-up or
        stop.  Waiting on a subscribed socket sends no command."""
        a = self.a
        while not a._stop.is_set() and not a._dirty:
            if a._canaries.changed():  # a verdict: reported at once, not at the next beat
                a._dirty = True
                return
            now = time.monotonic()
            left = until - now
            if self.pending and now >= self.ready_at():
                self._drain()
                a._dirty = self._taken = True
                return
            if left <= 0:
                return
            if self.pending:  # held back: the socket waits too (a flood costs nothing now)
                a._stop.wait(min(self.ready_at() - now, left, 0.25))
                continue
            msg = a._ps.get_message(timeout=min(left, 0.25))
            if msg is not None and msg.get("type") == "message":
                self.messages += 1
                self.pending = True

    def _drain(self) -> None:
        """Read the wake-ups waiting (the sync that follows covers them); a
        backlog over ``DRAIN_MAX`` goes with the socket, subscribed anew."""
        a = self.a
        for _ in range(DRAIN_MAX):
            msg = a._ps.get_message(timeout=0)
            if msg is None:
                return
            self.messages += msg.get("type") == "message"
        self.dropped += 1
        now = time.monotonic()
        if now - self._logged >= FLOOD_LOG:
            self._logged = now
            log.warning(
                "fleet agent %s: the wake channel is flooded (over %d wake-ups waiting at "
                "once; a host's Redis user may publish there): syncing at most every %.0f ms, "
                "the backlog dropped",
                a.id,
                DRAIN_MAX,
                WAKE_GAP * 1000,
            )
        ps = a._r.pubsub(ignore_subscribe_messages=True) if a._r is not None else None
        if ps is None:
            return
        ps.subscribe(a.keys.wake)
        a.commands += 1
        old, a._ps = a._ps, ps
        try:
            old.close()
        except Exception:  # noqa: BLE001  (a broken connection may not close)
            log.debug("fleet agent %s: closing a flooded subscription failed", a.id)
