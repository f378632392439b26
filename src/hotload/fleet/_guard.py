"""What a fleet host agrees to act on: the fleet key it trusts, the plugin
names it takes from the fleet, and the newest decision it accepted per plugin.

A host acts on a desired-state record only when

- it names a plugin this host takes from the fleet: one the host loaded
  itself (by ``load``, at any time since it joined) or one listed in
  ``Host(fleet_plugins=[...])``; a new name written to Redis alone is never
  loaded;
- it is signed by the key the host trusts (``Host(fleet_public_key=...)``,
  else ``$HOTLOAD_FLEET_PUBLIC_KEY``, else, for this user's embedded fleet,
  ``fleet-key.pub`` in the state directory), for this plugin, and not
  expired (``_signing.verify_decision``);
- it is not older than the newest decision this host accepted for the
  plugin (TUF's rollback protection): a lower rev, or the same rev signed
  earlier, is a replay.  The newest accepted decision per plugin is kept in
  memory and in a small file in the state directory
  (``fleet-accepted-<id>.json``, mode 0600, one per fleet: its Redis and key
  prefix), so a restart does not reopen a replay; every host of the user on
  the machine shares it (they follow the same decisions).  A release that
  switched a plugin on a host *holds* it there (``hold``): that slot is keyed
  by the host id, so one host's release never holds another's plugins; a
  host restarted under the same id keeps its holds, one with a generated id
  (pid and random) starts without.  The file is bounded (``bounded``): the
  newest ``RELEASE_SLOTS`` release slots, the ``PLUGIN_SLOTS`` plugins
  decided last and the holds of the ``HOLDERS`` hosts with the newest holds,
  pruned under the lock by whichever process writes, with the same rule in
  each.  A file over ``MAX_FILE`` bytes, or of another shape than the one
  written, is refused (``FleetError``: remove it to start over).

``Host(fleet_insecure=True)`` (``join_fleet(insecure=True)``) turns the key
and replay checks off, loudly: a WARNING at every start and the host marked
insecure in ``hotload fleet status``.  The plugin names stay checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._errors import FleetError
from .._platform import dirlock
from ._release_plan import Plan
from ._release_plan import verify as verify_plan
from ._schema import Rule, check_name
from ._signing import (
    PUBLIC_KEY_ENV,
    PUBLIC_NAME,
    check_key_file,
    decision,
    key_dir,
    load_public_key,
    local_public_key,
    verify_decision,
)

log = logging.getLogger(__name__)


def fleet_id(url: str, prefix: str, *, embedded_db: Path | None) -> str:
    """Which fleet a host is in, for its file of accepted decisions: the
    embedded database, or the Redis URL without credentials or options,
    and the key prefix."""
    if embedded_db is not None:
        where = f"embedded:{embedded_db}"
    else:
        where = re.sub(r"^([a-z]+://)[^@/]*@", r"\1", url).split("?")[0]
    return f"{where}|{prefix}"


HELD = "held:"  # ``held:<host id>:<plugin>``: the rev of the release that switched it there
RELEASE = "release:"  # ``release:<id>``: the newest plan of that release a host accepted
RELEASE_SLOTS = 320  # release slots kept: the 256 plans an agent reads (MAX_PLANS), and more
HOLDERS = 64  # host ids whose holds are kept (the newest holds; a host's own always)
PLUGIN_SLOTS = 4096  # plugins' newest decisions kept (the newest signed)
MAX_FILE = 4 << 20  # bytes: a bigger file of accepted decisions is refused (bounded: far less)


class Guard:
    """One agent's checks (see the module's docstring).  ``embedded``: the
    fleet is this user's embedded one, whose key pair lives in ``state_dir``;
    without ``public_key`` (or its variable) any other fleet needs
    ``insecure=True``, else joining fails."""

    def __init__(
        self,
        *,
        fleet: str,
        where: str,
        embedded: bool,
        public_key: Any = None,
        insecure: bool = False,
        plugins: Iterable[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(plugins, str):
            raise FleetError(f"fleet plugins: give a list of names, not the string {plugins!r}")
        self.plugins = frozenset(check_name(p, "fleet plugin") for p in plugins or ())
        self.insecure = bool(insecure)
        self.state_dir = Path(state_dir) if state_dir is not None else key_dir()
        self._names: set[str] = set(self.plugins)  # the names this host takes from the fleet
        self._key: Any = None
        self._local = False  # the key is this user's embedded fleet key, read when needed
        if self.insecure:
            if public_key is not None:
                raise FleetError(
                    "a fleet public key and insecure=True: choose one (the key checks "
                    "every decision; insecure checks none)"
                )
        elif public_key is not None or os.environ.get(PUBLIC_KEY_ENV):
            self._key = load_public_key(public_key or os.environ[PUBLIC_KEY_ENV])
        elif embedded:
            self._local = True
        else:
            raise FleetError(
                f"{where}: refusing to join: no fleet key to check decisions with. Pass "
                f"Host(fleet_public_key=...) (join_fleet(public_key=...), or "
                f"${PUBLIC_KEY_ENV}): the public half of the key the operator signs with "
                f"(hotload fleet keygen); or Host(fleet_insecure=True) to run unsigned "
                f"decisions, for experiments only: then anyone who can write to this "
                f"Redis runs code in this process"
            )
        self._accepted = Accepted(self.state_dir, fleet) if not self.insecure else None
        self._seen: dict[str, int] = {}  # insecure: revs accepted, in memory only
        self.owner = ""  # the host id whose holds these are (``own``)

    def own(self, host_id: str) -> None:
        """Whose holds this guard keeps: every host of the user on the machine
        shares the file, and one host's release holds its plugins on that
        host only."""
        self.owner = host_id
        if self._accepted is not None:
            self._accepted.owner = host_id

    # -- the plugin names --------------------------------------------------------------
    def note_loaded(self, names: Iterable[str]) -> None:
        """The host runs these (it loaded them, or the fleet did once it could)."""
        self._names.update(names)

    def takes(self, name: str) -> bool:
        return name in self._names

    def not_taken(self, name: str) -> str:
        return (
            f"{name}: this host does not take {name} from the fleet: it never loaded it and "
            f"Host(fleet_plugins=...) does not name it, so a name written to Redis alone "
            f"is not loaded"
        )

    # -- the decision ------------------------------------------------------------------
    def judge(self, name: str, rec: dict[str, Any], rev: int, rules: list[Rule]) -> None:
        """Raise ``FleetError`` (the host keeps what it runs) unless the record
        may be acted on; remember it as the newest accepted."""
        if self.insecure:
            self._seen[name] = max(rev, self._seen.get(name, rev))
            return
        d = decision(rec, name, rev, rules)
        verify_decision(self._public_key(name), d, name)
        assert self._accepted is not None
        newest = self._accepted.newest(name)
        if newest is not None and d.order < newest:
            raise FleetError(
                f"desired state of {name}: rev {d.rev} (signed {d.signed_at:.0f}) is older "
                f"than rev {newest[0]} that this host accepted: a replayed decision, refused "
                f"(a rollback is a new decision, with a higher rev)"
            )
        if newest != d.order:
            self._accepted.accept(name, d.order)

    def newest(self, name: str) -> int | None:
        """The rev of the newest desired state of ``name`` this host accepted
        (kept across restarts): an older release's plan does not take the
        plugin back once it is gone, unreadable or expired."""
        if self._accepted is None:
            return self._seen.get(name)
        seen = self._accepted.newest(name)
        return seen[0] if seen is not None else None

    def hold(self, names: Iterable[str], rev: int) -> None:
        """A release of rev ``rev`` switched ``names`` here: they stay on it
        until a newer decision (its plan cancelled after the switch, deleted,
        expired or cleaned out, an older desired state does not take them
        back one by one).  Kept across restarts with the accepted decisions."""
        for name in names:
            slot = f"{HELD}{self.owner}:{name}"
            if self.held().get(name, -1) < rev:
                self._seen[slot] = rev
                if self._accepted is not None:
                    self._accepted.accept(slot, (rev, 0.0))

    def held(self) -> dict[str, int]:
        """Plugin -> the rev of the newest release that switched it on this
        host (another host's holds in the shared file are not this one's)."""
        slots = dict(self._seen)
        if self._accepted is not None:
            slots.update({k: v[0] for k, v in self._accepted.items()})
        mine = f"{HELD}{self.owner}:"
        return {k[len(mine) :]: v for k, v in slots.items() if k.startswith(mine)}

    def judge_release(self, plan: Plan, where: str) -> None:
        """As ``judge``, for a release plan: signed by the trusted key,
        unexpired, and not older than the newest this host accepted for its
        id (a cancel is a newer rev: the planned record replayed is refused)."""
        if self.insecure:
            return
        verify_plan(self._public_key(where), plan, where)
        assert self._accepted is not None
        slot = f"{RELEASE}{plan.id}"
        newest = self._accepted.newest(slot)
        if newest is not None and plan.order < newest:
            raise FleetError(
                f"{where}: rev {plan.rev} is older than rev {newest[0]} that this host "
                f"accepted (a cancelled plan replayed?), refused"
            )
        if newest != plan.order:
            self._accepted.accept(slot, plan.order)

    def verify_release(self, plan: Plan, where: str) -> None:
        """Signed by the trusted key and unexpired, nothing remembered (a
        staged release's timer re-reading its plan, on its own thread)."""
        if not self.insecure:
            verify_plan(self._public_key(where), plan, where)

    def _public_key(self, name: str) -> Any:
        if self._key is None and self._local:
            self._key = local_public_key(self.state_dir)
            if self._key is None:
                raise FleetError(
                    f"desired state of {name}: this host trusts this machine's fleet key, "
                    f"{self.state_dir / PUBLIC_NAME}, which does not exist yet (the first "
                    f"publish on this machine makes it)"
                )
        return self._key

    def describe(self) -> str:
        if self.insecure:
            return "INSECURE: unsigned decisions accepted"
        if self._local:
            return f"signed by this machine's fleet key ({self.state_dir / PUBLIC_NAME})"
        return "signed decisions only"


def _holder(slot: str) -> str | None:
    """The host id of a ``held:<host>:<plugin>`` slot (None: a slot from
    before holds were per host, which every host read as its own)."""
    host, sep, _ = slot[len(HELD) :].rpartition(":")
    return host if sep else None


def bounded(newest: dict[str, tuple[int, float]], owner: str) -> dict[str, tuple[int, float]]:
    """``newest`` without the slots no host needs: beyond the newest
    ``RELEASE_SLOTS`` releases (by rev: the plans Redis keeps are the newest,
    and an agent reads at most ``MAX_PLANS``), beyond the ``PLUGIN_SLOTS``
    plugins decided last (by the time signed), the holds of all but the
    ``HOLDERS`` hosts with the newest holds (and ``owner``'s), and holds from
    before they were per host.  The same rule in every process: whichever
    writes, the file stays within it."""
    releases = sorted((v, k) for k, v in newest.items() if k.startswith(RELEASE))
    drop = {k for _, k in releases[: max(0, len(releases) - RELEASE_SLOTS)]}
    plugins = sorted((v[1], v, k) for k, v in newest.items() if not k.startswith((RELEASE, HELD)))
    drop.update(k for *_, k in plugins[: max(0, len(plugins) - PLUGIN_SLOTS)])
    holders: dict[str, int] = {}
    for k, v in newest.items():
        host = _holder(k) if k.startswith(HELD) else None
        if host is not None:
            holders[host] = max(holders.get(host, -1), v[0])
    kept = set(sorted(holders, key=lambda h: (holders[h], h), reverse=True)[:HOLDERS])
    kept.add(owner)
    for k in newest:
        if k.startswith(HELD) and _holder(k) not in kept:
            drop.add(k)
    return {k: v for k, v in newest.items() if k not in drop}


class Accepted:
    """The newest decision accepted per plugin, ``(rev, signed_at)``: in
    memory, and in ``state_dir/fleet-accepted-<id>.json`` (merged under a
    lock, bounded (``bounded``), written whole and renamed)."""

    def __init__(self, state_dir: Path, fleet: str) -> None:
        tag = hashlib.sha256(fleet.encode()).hexdigest()[:16]
        self.path = state_dir / f"fleet-accepted-{tag}.json"
        self.fleet = fleet
        self.owner = ""  # the host whose holds are always kept
        self._newest: dict[str, tuple[int, float]] = {}
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._newest = self._read()

    def newest(self, name: str) -> tuple[int, float] | None:
        return self._newest.get(name)

    def items(self) -> list[tuple[str, tuple[int, float]]]:
        return list(self._newest.items())

    def accept(self, name: str, order: tuple[int, float]) -> None:
        self._newest[name] = order
        try:
            fd = dirlock.wait_lock(self.path.with_suffix(".lock"), timeout=10.0)
        except OSError as exc:
            log.warning("fleet: %s: not saved (%s); kept in memory", self.path, exc)
            return
        try:
            merged = self._read()
            for plugin, seen in self._newest.items():
                merged[plugin] = max(seen, merged.get(plugin, seen))
            merged = bounded(merged, self.owner)
            self._newest = merged
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.unlink(missing_ok=True)
            fd2 = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd2, "w") as fh:
                json.dump({"fleet": self.fleet, "newest": merged}, fh)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("fleet: %s: not saved (%s); kept in memory", self.path, exc)
        finally:
            dirlock.release(fd)

    def _read(self) -> dict[str, tuple[int, float]]:
        if not self.path.exists():
            return dict(self._newest)
        check_key_file(self.path, private=False, what="file of accepted fleet decisions")
        try:
            with self.path.open("rb") as fh:
                text = fh.read(MAX_FILE + 1)
            if len(text) > MAX_FILE:
                raise ValueError(f"over {MAX_FILE >> 20} MiB, which the bounds keep it far under")
            newest = _slots(json.loads(text))
        except (OSError, ValueError) as exc:
            raise FleetError(f"{self.path}: unreadable ({exc}); remove it to start over") from None
        out = dict(self._newest)
        for plugin, order in newest.items():
            out[plugin] = max(order, out.get(plugin, order))
        return out


def _slots(rec: Any) -> dict[str, tuple[int, float]]:
    """The slots of the file's record, checked strictly (``ValueError``
    saying what is wrong): ``{"fleet": str, "newest": {slot: [rev, signed_at]}}``
    with a whole rev in 0..2**63 and a finite time."""
    if not isinstance(rec, dict) or not isinstance(rec.get("newest"), dict):
        raise ValueError('not an object with an object "newest"')
    if not isinstance(rec.get("fleet", ""), str):
        raise ValueError('"fleet" is not a string')
    out: dict[str, tuple[int, float]] = {}
    for slot, seen in rec["newest"].items():
        if not (isinstance(seen, list) and len(seen) == 2):
            raise ValueError(f"slot {slot[:80]!r} is not [rev, signed_at]")
        rev, at = seen
        if not (type(rev) is int and 0 <= rev < 2**63):
            raise ValueError(f"slot {slot[:80]!r}: rev {str(rev)[:40]} is not a whole rev")
        if type(at) not in (int, float) or not math.isfinite(at):
            raise ValueError(f"slot {slot[:80]!r}: signed_at {str(at)[:40]} is not a time")
        out[slot] = (rev, float(at))
    return out
