"""The per-host fleet agent: one thread that keeps a host on the desired state
its labels select.

It registers a heartbeat key that expires when the host dies, wakes on the
fleet's ``wake`` channel (coalesced: ``_wake``; it polls ``gen`` at every heartbeat, in case a
message was lost), acts only on desired states its ``Guard`` accepts (signed
by the fleet key it trusts, not older than the newest it accepted, for a
plugin name it takes from the fleet), fetches the named digest's bytes,
checks their SHA-256, applies them through the host's public API and
reports what is live: every plugin the
host runs, also the ones it loaded itself, again at once after the host
changes one (``Host.on_change``).  Each heartbeat learns whether the
registration was still there (``SET ... GET``); when it was not (Redis
flushed, restarted without persistence, or the host was paused past its
TTL), the host registers again and reports everything anew.  When Redis is gone
the host keeps serving what it has; the agent reconnects with backoff and
catches up.  Every Redis call has a bounded timeout, so a Redis that stops
answering costs a timeout, never a hung agent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._engine.journal import set_origin
from .._errors import AlreadyLoadedError, FleetError, HotloadError
from ._canary import Canaries, record, skipped
from ._connection import (
    DEFAULT_TIMEOUT,
    connect,
    default_db,
    describe_error,
    describe_url,
    redis_errors,
    resolve_url,
)
from ._guard import Guard, fleet_id
from ._release_agent import ReleaseAgent
from ._schema import (
    HEARTBEAT_SCHEMA,
    MAX_BLOB,
    PLUGIN_NAME,
    PREFIX,
    CanaryPlan,
    Keys,
    Rule,
    check_labels,
    health_summary,
    load_json,
    new_id,
    parse_desired_record,
    pick,
    selector_text,
)
from ._wake import Wakes

if TYPE_CHECKING:
    import redis as redis_mod

    from .._artifact.loader import Candidate
    from .._ops.protocols import PluginHost

log = logging.getLogger(__name__)

LEFT_TTL = 600.0  # seconds the note that a host left the fleet stays
SYNC_BEAT = 0.25  # seconds from a change this agent made (or saw) to a heartbeat with its health


class FleetAgent:
    """Joins ``host`` to the fleet at ``url`` with ``labels``; ``start()`` /
    ``stop()`` like the watcher.

    ``heartbeat``: seconds between heartbeats; each one also polls ``gen``
    (two Redis commands), so an idle host costs ``2 / heartbeat`` commands/s.
    ``ttl``: lifetime of the heartbeat key (default three heartbeats): a host
    silent that long is shown as gone and a rollout step counts it.
    ``public_key``: the Ed25519 public key (object, PEM path/bytes or 64
    hex) whose private half signs the desired states this host acts on
    (default ``$HOTLOAD_FLEET_PUBLIC_KEY``, else for the embedded fleet the
    key in the state directory; any other fleet needs one, or ``insecure``).
    ``insecure``: act on unsigned desired states (experiments only: a
    WARNING at start, and ``status`` shows it).  ``plugins``: names this
    host takes from the fleet besides the ones it loaded itself.
    ``state_dir``: where the newest accepted decisions are kept (default
    ``$XDG_STATE_HOME/hotload``).  ``report_url``: another Redis URL (the
    same server, another ACL user) for every write this host makes
    (heartbeat, reports), so that the user of ``url`` can be read-only (the
    fleet guide's ACL setup for Redis 6).
    """

    def __init__(
        self,
        host: PluginHost,
        url: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        host_id: str | None = None,
        prefix: str = PREFIX,
        heartbeat: float = 2.5,
        ttl: float | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        public_key: Any = None,
        insecure: bool = False,
        plugins: Any = None,
        state_dir: str | os.PathLike[str] | None = None,
        report_url: str | None = None,
        max_size: int = MAX_BLOB,
    ) -> None:
        self.host = host
        embedded = not (url or os.environ.get("HOTLOAD_FLEET_REDIS"))
        self.guard = Guard(
            fleet=fleet_id(url or "", prefix, embedded_db=default_db() if embedded else None),
            where=f"Redis {describe_url(url)}",
            embedded=embedded,
            public_key=public_key,
            insecure=insecure,
            plugins=plugins,
            state_dir=state_dir,
        )
        self.url = resolve_url(url)
        self.report_url = report_url
        self.labels = check_labels(dict(labels or {}))
        self.id = host_id or f"{host_identity()['machine']}-{os.getpid()}-{new_id()[:6]}"
        check_labels({"id": self.id}, "host id")
        self._canaries = Canaries(host, self.id)
        self._releases = ReleaseAgent(self)
        self._wakes = Wakes(self)
        self.keys = Keys(prefix)
        self.heartbeat = heartbeat
        self.ttl = ttl if ttl is not None else 3 * heartbeat
        self.timeout = timeout
        self.max_size = max_size
        self.connected = threading.Event()  # set while Redis answers
        self.synced = threading.Event()  # set after each full sync; tests wait on it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._r: redis_mod.Redis | None = None
        self._w: redis_mod.Redis | None = None  # writes: _r, or report_url's connection
        self._ps: Any = None
        self._gen: bytes | None = None
        self._dirty = True
        self._reported: dict[str, dict[str, Any]] = {}  # plugin -> last report written
        self._failed: dict[tuple[str, str], int] = {}  # (plugin, digest) -> desired rev
        self._invalid: dict[str, bytes] = {}  # plugin -> raw desired record reported invalid
        self._managed: set[str] = set()  # plugins this agent loaded itself
        self._baseline: dict[str, str | None] = {}  # plugin -> digest before the fleet
        self._baseline_cand: dict[str, Candidate] = {}  # the application's load, claimed
        self._loading: str | None = None  # the plugin this agent is loading now
        self._lock = threading.Lock()  # the four above: claim() runs in the app's thread
        self._set_get = True  # SET ... GET (Redis >= 6.2); else SADD at every beat
        self._clash_logged = False
        self._unlisten: Any = None
        self.commands = 0  # Redis commands sent (the benchmark reads it)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> FleetAgent:
        if self._thread is not None:
            raise HotloadError(f"fleet agent {self.id} is already started")
        self._thread = threading.Thread(
            target=self._run, name=f"hotload-fleet-{self.id}", daemon=True
        )
        self._unlisten = self.host.on_change(self._host_changed)
        if self.guard.insecure:
            log.warning(
                "fleet agent %s: INSECURE (fleet_insecure=True): this host acts on unsigned "
                "desired states, so anyone who can write to %s runs code in this process; "
                "for experiments only",
                self.id,
                describe_url(self.url),
            )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Leave the fleet: stop the thread, remove the reports and the
        registration (best effort: Redis may be gone).  The heartbeat key
        becomes a note that the host left (for ``LEFT_TTL`` seconds), so a
        rollout in progress tells a clean leave from a host that vanished."""
        self._stop.set()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            r = self._w or connect(self.report_url or self.url, timeout=min(self.timeout, 1.0))
            left = json.dumps({"id": self.id, "left": True, "at": time.time()})
            pipe = r.pipeline(transaction=False)
            pipe.set(self.keys.host(self.id), left, px=int(LEFT_TTL * 1000))
            pipe.delete(self.keys.report(self.id))
            pipe.srem(self.keys.hosts, self.id)
            pipe.publish(self.keys.reports, f"{self.id} left")
            pipe.execute()
        except redis_errors() as exc:
            log.info("fleet agent %s: could not deregister: %s", self.id, describe_error(exc))
        self._drop()

    def __enter__(self) -> FleetAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FleetAgent {self.id} {selector_text(self.labels)} {self.url}>"

    # -- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        set_origin("fleet")  # every change this thread makes, the journal says the fleet asked
        backoff = 0.05
        next_beat = last_beat = 0.0
        outage_logged = False
        while not self._stop.is_set():
            try:
                if self._r is None:
                    self._connect()
                    next_beat = 0.0
                if time.monotonic() >= next_beat:
                    self._beat()
                    last_beat, next_beat = time.monotonic(), time.monotonic() + self.heartbeat
                    judging = self._canaries.running() or self._releases.judging()
                    self._dirty = self._dirty or judging  # fresh figures
                if self._dirty:
                    self._dirty, cpu = False, time.thread_time()
                    self._sync()
                    self._wakes.synced(time.thread_time() - cpu)
                    # the health of what changed goes out soon (a rollout's bake waits for
                    # it), but at most every SYNC_BEAT s through a storm of changes
                    next_beat = min(next_beat, last_beat + SYNC_BEAT)
                self._wakes.wait(next_beat)  # wake-ups coalesced: _wake.py
                backoff = 0.05
                if outage_logged:
                    log.warning("fleet agent %s: Redis is back, caught up", self.id)
                    outage_logged = False
            except redis_errors() as exc:
                if not outage_logged:
                    log.warning(
                        "fleet agent %s: Redis unreachable (%s); serving what is loaded, retrying",
                        self.id,
                        describe_error(exc),
                    )
                    outage_logged = True
                self._drop()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.heartbeat)
            except Exception:  # a bug must not kill the host's agent silently
                log.exception("fleet agent %s: unexpected error; retrying", self.id)
                self._drop()
                self._stop.wait(self.heartbeat)

    def _connect(self) -> None:
        r = connect(self.url, timeout=self.timeout)
        w = r
        try:
            ps = r.pubsub(ignore_subscribe_messages=True)
            ps.subscribe(self.keys.wake)
            if self.report_url:
                w = connect(self.report_url, timeout=self.timeout)
                w.ping()
        except BaseException:
            r.close()
            raise
        self.commands += 1
        self._r, self._w, self._ps = r, w, ps
        self._reported.clear()  # Redis may have lost them (restart): write them again
        self._failed.clear()  # and its revs may restart: try refused builds once more
        self._dirty = True  # the first heartbeat (next) registers if the registration is gone
        self.connected.set()

    def _register(self) -> None:
        """Join the set of hosts and write every report again: at each
        connect, and whenever a heartbeat finds its key gone (a ``FLUSHALL``,
        a restart without persistence, a pause past the TTL)."""
        assert self._w is not None
        pipe = self._w.pipeline(transaction=False)
        pipe.sadd(self.keys.hosts, self.id)
        pipe.delete(self.keys.report(self.id))  # what is left of it may be stale
        pipe.execute()
        self.commands += 2
        self._reported.clear()
        self._releases._reported.clear()  # the release reports too (a FLUSHALL took them)
        self._failed.clear()  # revs may restart with the data: try refused builds once more
        self._canaries.forget()
        self._dirty = True

    def _host_changed(self, name: str) -> None:
        """``Host.on_change``: the application (or a watcher, or the control
        socket) changed ``name``: converge and report it at once.  The
        agent's own swaps are reported where they are made."""
        if threading.current_thread() is not self._thread:
            self._dirty = True

    def _drop(self) -> None:
        self.connected.clear()
        self._dirty = True
        for obj in (self._ps, self._r, self._w):
            if obj is not None:
                with contextlib.suppress(Exception):  # a broken connection may not close
                    obj.close()
        self._r = self._w = self._ps = None

    def _beat(self) -> None:
        """Heartbeat and poll in one round trip: ``SET host PX ttl GET; GET
        gen`` (the old heartbeat says whether the registration survived).  A
        Redis older than 6.2 has no ``SET ... GET``: ``SADD hosts`` at every
        beat instead (its answer says the same), one command more."""
        import redis

        assert self._r is not None and self._w is not None
        identity = host_identity()
        beat = {"id": self.id, "labels": self.labels, "ttl": self.ttl, **identity}
        beat["schema"] = HEARTBEAT_SCHEMA
        beat["health"] = health_summary(self.host.current(n) for n in self.host.names())
        if self.guard.insecure:
            beat["insecure"] = True  # status shows it
        record = json.dumps(beat)
        key, px = self.keys.host(self.id), int(self.ttl * 1000)
        pipe = self._w.pipeline(transaction=False)
        if self._set_get:
            pipe.set(key, record, px=px, get=True)
        else:
            pipe.sadd(self.keys.hosts, self.id)
            pipe.set(key, record, px=px)
        if self._w is self._r:
            pipe.get(self.keys.gen)
        try:
            answers = pipe.execute()
            if self._w is not self._r:  # a write-only user for reports: gen on the reader
                answers.append(self._r.get(self.keys.gen))
        except redis.ResponseError as exc:
            if not self._set_get or "syntax" not in str(exc).lower():
                raise
            log.info("fleet agent %s: no SET ... GET (Redis < 6.2): SADD every beat", self.id)
            self._set_get = False
            self._beat()
            return
        self.commands += 2 if self._set_get else 3
        first, gen = answers[0], answers[-1]
        old = _record(first) if self._set_get else None
        if first in (None, 1) or (old or {}).get("left"):
            self._register()  # the registration was gone (or said we left): register again
        elif old is not None and not self._clash_logged:
            self._check_clash(old, identity)
        if gen != self._gen:
            self._dirty = True

    def _check_clash(self, old: dict[str, Any], identity: dict[str, Any]) -> None:
        """The heartbeat replaced one written by another process: a restart
        within the TTL under the same name, or two live hosts sharing it."""
        if (old.get("pid"), old.get("machine")) != (identity["pid"], identity["machine"]):
            self._clash_logged = True
            log.warning(
                "fleet agent %s: the name was in use by pid %s on %s until now (a restart; "
                "if that host still runs, two hosts share one name and their reports mix)",
                self.id,
                old.get("pid"),
                old.get("machine"),
            )

    # -- converging -----------------------------------------------------------------------
    def _sync(self) -> None:
        """Converge every plugin the desired state has a rule for here, then
        report the others this host runs (loaded by the application itself)
        and drop the reports of plugins it no longer runs."""
        assert self._r is not None
        pipe = self._r.pipeline(transaction=False)
        pipe.get(self.keys.gen)
        pipe.hgetall(self.keys.desired)
        gen, desired = pipe.execute()
        self.commands += 2
        self.guard.note_loaded(self.host.names())
        revs: dict[str, int] = {}  # plugin -> the rev of its desired state with a rule here
        held, covered = self._releases.read(), set()  # held: a release plan's last
        groups: dict[str, dict[str, tuple[Rule, int]]] = {}  # release id -> its desired states
        plain: dict[str, tuple[Rule, int, int]] = {}  # the others: rule, rev, decision
        for name_b, raw in sorted(desired.items()):
            name = name_b.decode("utf-8", "replace")
            if not PLUGIN_NAME.fullmatch(name):
                log.warning("fleet agent %s: ignoring desired state %r: bad name", self.id, name)
                continue
            taken = self.guard.takes(name)
            try:
                rec, rev, rules = parse_desired_record(raw, name)
                if taken:  # signed by the trusted key, for this name, unexpired, not a replay
                    self.guard.judge(name, rec, rev, rules)
            except FleetError as exc:
                if not taken:
                    continue  # not this host's business
                covered.add(name)
                self._warn_once(name, raw, str(exc))
                self._report(name, "invalid", None, 0, str(exc))
                continue
            rule = pick(rules, self.labels)
            if rule is not None and not taken:
                if rule.digest is not None:  # a name from Redis alone: never loaded
                    covered.add(name)
                    self._warn_once(name, raw, self.guard.not_taken(name))
                    self._report(name, "ignored", rule.digest, rev, self.guard.not_taken(name))
                continue
            self._invalid.pop(name, None)
            (revs if rule is not None else self._releases.other)[name] = rev  # R7: ours?
            if rule is not None and held.get(name, -1) <= rev:
                covered.add(name)
                if rule.release is not None:  # a release's: its plugins move together
                    groups.setdefault(rule.release.id, {})[name] = (rule, rev)
                    continue
                revision = rec.get("revision")
                plain[name] = (rule, rev, revision if isinstance(revision, int) else rev)
        alone = self._releases.converge(groups, revs, held, {n: p[:2] for n, p in plain.items()})
        for name in alone:  # the rest, one by one
            self._converge(name, *plain[name])
        for name in self.host.names():
            if name not in covered:
                self._report(name, "live", None, 0, None)
        for name in list(self._reported):
            if name not in covered and name not in self.host:
                self._unreport(name)
        self._releases.act(revs)
        self._gen = gen
        self.synced.set()

    def _warn_once(self, name: str, raw: bytes, why: str) -> None:
        """Log why a desired state is not acted on, once per record (and
        journal it: an operator asks the host why the fleet's build is not there)."""
        if self._invalid.get(name) != raw:
            self._invalid[name] = raw
            log.warning("fleet agent %s: %s", self.id, why)
            self.host.journal.record(
                "refused", name, source=f"fleet:{name}", error=why, detail="fleet decision"
            )

    def _converge(self, name: str, rule: Rule, rev: int, decision: int) -> None:
        """Bring ``name`` to what ``rule`` asks (``decision``: the rollout's
        revision, under which a build its canary's judge aborted is not tried
        again)."""
        digest = rule.digest
        self._canaries.let_go(name, digest)
        live = self.live_digest(name)
        if digest is None:
            self._to_baseline(name, live, rev)
            return
        if live == digest:
            self._report(name, "live", digest, rev, None, self._canary_of(name, digest, rule))
            return
        if self._judging(name, digest, rev, decision):
            return
        if self._failed.get((name, digest)) == rev:
            return  # already refused for this rev; a new rollout (new rev) retries it
        try:
            note = self._take(name, self._build(name, digest), digest, rule.canary)
        except HotloadError as exc:
            self._failed[(name, digest)] = rev
            log.warning("fleet agent %s: %s: refused %s: %s", self.id, name, digest[:12], exc)
            cur = self.host.current(name)  # once: the swap may have recorded it already
            self.host.journal.refused(
                name,
                exc,
                op="reload" if cur is not None else "load",
                source=f"fleet:{name}@{digest[:12]}",
                from_seq=cur.seq if cur is not None else None,
                from_digest=cur.digest if cur is not None else None,
                to_digest=digest,
            )
            self._report(name, "failed", digest, rev, str(exc))
            return
        if self._judging(name, digest, rev, decision):
            return
        self._report(name, "live", digest, rev, None, skipped(digest, note) if note else None)

    def _take(self, name: str, cand: Candidate, digest: str, plan: CanaryPlan | None) -> str | None:
        """Start ``cand`` as a canary when the rule says so and the plugin
        serves here (None), else make it live (why it was not a canary)."""
        if plan is not None and name in self.host:
            with self._lock:
                self._baseline.setdefault(name, self.live_digest(name))
            why = self._canaries.start(name, cand, digest, plan)
            if why is None:
                return None
        else:
            why = "first load here: nothing to compare with" if plan is not None else None
        self._apply(name, cand, digest)
        return why

    def _judging(self, name: str, digest: str, rev: int, decision: int) -> bool:
        """Report ``digest``'s canary while it runs (True), or its abort as a
        failure of the build (True: the judge's verdict, never retried under
        the same decision); False when there is none, or it was promoted."""
        self._canaries.promote_idle(name)
        c = self._canaries.of(name, digest)
        verdict = self._canaries.ended(name, digest, decision)
        if verdict is not None:
            rec = self._canary_of(name, digest, None)
            self._report(name, "failed", digest, rev, verdict, rec)
            return True
        if c is None:
            return False
        if c.running:
            self._report(name, "canary", digest, rev, None, self._canary_of(name, digest, None))
            return True
        if self.live_digest(name) == digest:  # promoted just now (by the agent, if idle)
            self._report(name, "live", digest, rev, None, self._canary_of(name, digest, None))
            return True
        return False

    def _canary_of(self, name: str, digest: str, rule: Rule | None) -> dict[str, Any] | None:
        """The report's ``canary`` for ``digest``: this agent's canary of it,
        or, when the rule asked for one and none ran, why."""
        c = self._canaries.of(name, digest)
        if c is not None:
            return record(c, digest)
        if rule is not None and rule.canary is not None:
            return skipped(digest, "it ran this build already")
        return None

    def _to_baseline(self, name: str, live: str | None, rev: int) -> None:
        """A rule without a digest: go back to what this host ran before the
        fleet first changed ``name`` (unload it if the fleet loaded it)."""
        if name not in self._baseline:  # the fleet never touched it here: nothing to undo
            self._report(name, "live" if name in self.host else "unloaded", None, rev, None)
            return
        base = self._baseline[name]
        if live != base and self._failed.get((name, "baseline")) != rev:
            try:
                if base is None:
                    self.host.unload(name)
                    with self._lock:
                        self._managed.discard(name)
                else:
                    cand = self.host.kept(name, base) or self._baseline_cand.get(name)
                    if cand is None or cand.digest != base:
                        raise FleetError(
                            f"{name}: cannot go back to {base[:12]}, the build it ran before "
                            f"the fleet: its bytes are no longer kept (Host(keep_versions="
                            f"{self.host.keep_versions}))"
                        )
                    if name in self.host:
                        self.host.reload(name, cand)
                    else:
                        self.host.load(cand)
                live = self.live_digest(name)
                if live != base:
                    raise FleetError(f"{name}: could not get back to {base}")
            except HotloadError as exc:
                self._failed[(name, "baseline")] = rev
                self._report(name, "failed", None, rev, str(exc))
                return
        self._report(name, "unloaded" if base is None else "live", None, rev, None)

    def _build(self, name: str, digest: str) -> Candidate:
        """The build to apply: from this host's own rollback chain when it
        keeps it (it ran here before: nothing to fetch, and it can be gone
        back to after its bytes left Redis), else fetched and verified."""
        kept = self.host.kept(name, digest)
        if kept is not None:
            return kept
        data = self._fetch(name, digest)
        return self.host.adopt(data, source=f"fleet:{name}@{digest[:12]}")

    def _fetch(self, name: str, digest: str) -> bytes:
        """The build's bytes, verified: size cap, SHA-256 = key (the signed
        decision named the digest, so the bytes are the ones it chose)."""
        assert self._r is not None
        key = self.keys.blob(digest)
        size = self._r.strlen(key)
        self.commands += 1
        if size == 0:
            raise FleetError(f"{name}: build {digest} is not in Redis (not published?)")
        if size > self.max_size:
            raise FleetError(
                f"{name}: build {digest} is {size} bytes, over the {self.max_size}-byte cap"
            )
        data = self._r.get(key)
        self.commands += 1
        if not isinstance(data, bytes) or len(data) > self.max_size:
            raise FleetError(f"{name}: build {digest} vanished or grew while fetched")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise FleetError(
                f"{name}: build {digest} fetched from Redis has SHA-256 {actual}: "
                f"tampered or corrupt, refused"
            )
        return data

    def _apply(self, name: str, cand: Candidate, digest: str) -> None:
        """Make the verified bytes live: the host checked them (format,
        descriptor, allow-list) and loads exactly those bytes, then the live
        digest is checked against the one asked for."""
        if cand.name != name:
            raise FleetError(f"{name}: build {digest} declares plugin {cand.name!r}")
        reloaded = self._swap_in(name, cand)
        live = self.live_digest(name)
        if live != digest:
            if reloaded:
                self.host.rollback(name)
            raise FleetError(f"{name}: live digest {live} is not the {digest} asked for")

    def _swap_in(self, name: str, cand: Candidate) -> bool:
        """Load ``cand``, or reload with it when ``name`` is loaded (also when
        the application's own ``load`` of it won a race with this one: the
        agent reloads what the application loaded).  True when it reloaded."""
        if name not in self.host:
            with self._lock:
                self._loading = name  # claim() may run before load() returns here
            try:
                self.host.load(cand)
            except AlreadyLoadedError:
                pass  # the application loaded it meanwhile: reload that, below
            else:
                with self._lock:
                    self._baseline.setdefault(name, None)
                    self._managed.add(name)
                return False
            finally:
                with self._lock:
                    self._loading = None
        with self._lock:
            self._baseline.setdefault(name, self.live_digest(name))
        self.host.reload(name, cand)
        return True

    def claim(self, cand: Candidate, *, isolate: bool) -> bool:
        """The application's ``load`` of ``cand`` found its name loaded:
        True when this agent loaded it first (``Host(fleet=...)`` started the
        agent before the application loaded); the application then gets the
        fleet's version, and ``cand`` becomes what this host goes back to
        when the fleet lets go of the plugin.  False when the fleet did not
        load it (the load's "already loaded" stands).  Raises, saying why,
        when the load asks for another mode than the fleet's version has."""
        name = cand.name
        if threading.current_thread() is self._thread:
            return False  # this agent's own load met the application's: it reloads instead
        with self._lock:
            if name not in self._managed and name != self._loading:
                return False
            current = self.host.current(name)
            if current is not None and current.isolated != isolate:
                have, want = (
                    ("isolated", "in process")
                    if current.isolated
                    else (
                        "in process",
                        "isolated",
                    )
                )
                raise FleetError(
                    f"{cand.source}: plugin {name} was loaded {have} by the fleet before this "
                    f"load(isolate={isolate}) asked for it {want}, and a plugin keeps its mode; "
                    f"load it before joining the fleet (Host(), load(), then join_fleet(): "
                    f"see the fleet guide's startup order)"
                )
            if self._baseline.get(name) is None:
                self._baseline[name] = cand.digest
                self._baseline_cand[name] = cand
        log.info(
            "fleet agent %s: %s: the fleet loaded %s here first; load(%s) returns the "
            "fleet's version, and this host goes back to that build when the fleet lets go",
            self.id,
            name,
            current.digest[:12] if current is not None else "it",
            cand.source,
        )
        return True

    def live_digest(self, name: str) -> str | None:
        """SHA-256 of the version of ``name`` that new calls go to, or None."""
        if name not in self.host:
            return None
        current = self.host.current(name)
        return current.digest if current is not None else None

    def _report(
        self,
        name: str,
        state: str,
        target: str | None,
        rev: int,
        error: str | None,
        canary: dict[str, Any] | None = None,
    ) -> None:
        """Write this host's state for ``name`` (only when it changed)."""
        assert self._w is not None
        info = self.host.current(name)
        rep: dict[str, Any] = {
            "state": state,
            "digest": info.digest if info else None,
            "version": info.plugin_version if info else None,
            "seq": info.seq if info else None,
            "target": target,
            "rev": rev,
            "error": error,
        }
        canary = canary or self._canaries.last_record(name)  # its last verdict, for status
        if canary is not None:
            rep["canary"] = canary
        if self._reported.get(name) == rep:
            return
        body = json.dumps({**rep, "at": time.time()})
        pipe = self._w.pipeline(transaction=False)
        pipe.hset(self.keys.report(self.id), name, body)
        pipe.publish(self.keys.reports, f"{self.id} {name}")
        pipe.execute()
        self.commands += 2
        self._reported[name] = rep

    def _unreport(self, name: str) -> None:
        """``name`` is no longer loaded here and the fleet has no rule for it."""
        assert self._w is not None
        pipe = self._w.pipeline(transaction=False)
        pipe.hdel(self.keys.report(self.id), name)
        pipe.publish(self.keys.reports, f"{self.id} {name}")
        pipe.execute()
        self.commands += 2
        self._reported.pop(name, None)


def _record(raw: Any) -> dict[str, Any] | None:
    """A heartbeat record read back (None when absent or not a JSON object)."""
    try:
        rec = load_json(raw, "heartbeat") if isinstance(raw, bytes) else None
    except FleetError:
        return None
    return rec if isinstance(rec, dict) else None


def host_identity() -> dict[str, Any]:
    """What a host says about itself in its heartbeat (and its default id)."""
    from .._about import __version__

    return {"pid": os.getpid(), "machine": platform.node(), "hotload": __version__}
