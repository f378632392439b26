"""The file of accepted fleet decisions that every host of one user on one
machine shares (issue 23, the third attack's G2 and G9): a release's hold
is the host's that switched, not the machine's, and the file stays bounded
however many releases and host processes pass through it, with several
processes writing it at once."""

# ruff: noqa: F811  (the fixtures imported from test_fleet are parameters here)
from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload import FleetError
from hotload.fleet import Fleet
from hotload.fleet._guard import HOLDERS, MAX_FILE, PLUGIN_SLOTS, RELEASE_SLOTS, Guard, bounded
from hotload.fleet._schema import Rule
from test_fleet import (  # noqa: F401  (fixtures)
    Cluster,
    RedisServer,
    cluster,
    fleet_key,
    redis_server,
)
from test_fleet_release import gens, publish  # noqa: F401
from test_fleet_release_group import gen_of
from test_fleet_release_overlap import write_plan

from conftest import wait_for


def _guard(tmp: Path, owner: str) -> Guard:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from hotload.fleet._signing import public_hex

    pub = public_hex(Ed25519PrivateKey.generate())
    g = Guard(fleet="f", where="w", embedded=False, state_dir=tmp, public_key=pub)
    g.own(owner)
    return g


def test_one_hosts_hold_is_not_anothers(tmp_path: Path) -> None:
    a, b = _guard(tmp_path, "game-1"), _guard(tmp_path, "game-2")
    a.hold(["reward", "drops"], 7)
    b.hold(["drops"], 5)
    assert _guard(tmp_path, "game-1").held() == {"reward": 7, "drops": 7}  # a restart of game-1
    assert _guard(tmp_path, "game-2").held() == {"drops": 5}
    assert _guard(tmp_path, "game-3").held() == {}


def test_a_host_skips_no_desired_state_for_another_hosts_release(
    cluster: Cluster,
    redis_server: RedisServer,
    gens: Callable[[int], dict[str, Path]],
    fleet_key: Any,
) -> None:
    """Host a took a release for it alone (rev R); host b, same user, same
    machine, then joins with reward on gen 1 and a desired state of reward
    gen 2 written before R.  b read a's hold as its own, skipped that older
    desired state and stayed on gen 1 until a newer decision (the third
    attack's G2); now it converges."""
    one, two, three = gens(1), gens(2), gens(3)
    d2, d3 = publish(redis_server.url, two), publish(redis_server.url, three)
    with Fleet(redis_server.url) as f:
        f.set_desired("reward", [Rule({}, d2["reward"])])
    time.sleep(0.002)
    plan = write_plan(redis_server.url, fleet_key, d3, time.time() - 2, match={"name": "a"})
    cluster.add("a", {"role": "game", "name": "a"}, setup=lambda h: [h.load(one[n]) for n in one])
    a = cluster.hosts["a"]
    wait_for(lambda: gen_of(a) == (3, 3), timeout=10, what="a on the release")
    held = {"reward": plan.rev, "drops": plan.rev}
    wait_for(lambda: cluster.agents["a"].guard.held() == held, what="a's hold")
    cluster.add("b", {"role": "game", "name": "b"}, start_with=one["reward"])
    b = cluster.hosts["b"]
    wait_for(lambda: b["reward"].generation() == 2, timeout=10, what="b on reward gen 2")


def _writer(state_dir: str, owner: str, start: int, n: int) -> None:
    g = _guard(Path(state_dir), owner)
    for i in range(start, start + n):
        g._accepted.accept(f"release:{i:012x}", (i, float(i)))  # type: ignore[union-attr]
        if i % 10 == 0:
            g.hold(["reward"], i)


def test_what_is_kept_is_the_newest_releases_and_holders_and_the_own() -> None:
    newest = {f"release:{i:012x}": (i, 0.0) for i in range(1000)}
    newest.update({f"held:h{i}:reward": (i, 0.0) for i in range(100)})
    newest.update({"held:drops": (10**6, 0.0), "reward": (5, 1.0)})  # a shared hold, a plugin
    kept = bounded(newest, "h3")
    assert sorted(v[0] for k, v in kept.items() if k.startswith("release:")) == list(
        range(1000 - RELEASE_SLOTS, 1000)
    )
    holders = {k.split(":")[1] for k in kept if k.startswith("held:")}
    assert holders == {f"h{i}" for i in range(100 - HOLDERS, 100)} | {"h3"}
    assert kept["reward"] == (5, 1.0)


@pytest.mark.soak  # ~5 s: three processes
def test_the_file_stays_bounded_with_processes_writing_at_once(tmp_path: Path) -> None:
    """Three host processes accept 400 releases each at once, and 80 more
    hosts each hold a plugin: the file keeps the newest RELEASE_SLOTS
    releases and the holds of the HOLDERS newest hosts, and stays valid
    JSON all along (before: a slot for every release ever accepted)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_writer, args=(str(tmp_path), f"h{k}", 1 + k * 400, 400))
        for k in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for k in range(80):  # hosts that came and went (a generated id at each start)
        _guard(tmp_path, f"gone-{k}").hold(["drops"], 2000 + k)
    path = next(tmp_path.glob("fleet-accepted-*.json"))
    newest = json.loads(path.read_text())["newest"]
    releases = sorted(int(k[len("release:") :], 16) for k in newest if k.startswith("release:"))
    assert releases == list(range(1201 - RELEASE_SLOTS, 1201))
    holders = {k.split(":")[1] for k in newest if k.startswith("held:")}
    assert holders == {f"gone-{k}" for k in range(80 - HOLDERS, 80)}
    g = _guard(tmp_path, "h0")  # a host restarted under its id: its hold pruned as one of
    g.hold(["reward"], 1)  # the oldest, its own new one is kept whatever its rev
    assert g.held() == {"reward": 1}


WRONG_SHAPES = {
    "top level a list": "[1]",
    "no newest": '{"fleet": "f"}',
    "newest a list": '{"fleet": "f", "newest": [1, 2]}',
    "newest a string": '{"fleet": "f", "newest": "x"}',
    "fleet a number": '{"fleet": 5, "newest": {}}',
    "a slot of one element": '{"fleet": "f", "newest": {"reward": [5]}}',
    "a slot of three": '{"fleet": "f", "newest": {"reward": [5, 0.0, 1]}}',
    "a slot an object": '{"fleet": "f", "newest": {"reward": {"rev": 5}}}',
    "a rev of 1e999": '{"fleet": "f", "newest": {"reward": [1e999, 0]}}',
    "a rev of 5.5": '{"fleet": "f", "newest": {"reward": [5.5, 0]}}',
    "a rev of true": '{"fleet": "f", "newest": {"reward": [true, 0]}}',
    "a rev below 0": '{"fleet": "f", "newest": {"reward": [-1, 0]}}',
    "a rev of 2**64": '{"fleet": "f", "newest": {"reward": [18446744073709551616, 0]}}',
    "a time of NaN": '{"fleet": "f", "newest": {"reward": [5, NaN]}}',
    "a time of -1e999": '{"fleet": "f", "newest": {"reward": [5, -1e999]}}',
    "a time a string": '{"fleet": "f", "newest": {"reward": [5, "now"]}}',
}


@pytest.mark.parametrize("body", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_a_wrongly_shaped_file_is_a_fleet_error_at_join_and_at_accept(
    tmp_path: Path, body: str
) -> None:
    """Valid JSON of the wrong shape raised AttributeError, IndexError or
    OverflowError (the fourth attack's R5), at join and in a running
    agent's accept(); now the FleetError that says to remove the file."""
    g = _guard(tmp_path, "game-1")
    g.hold(["reward"], 3)  # the file exists, well formed
    path = next(tmp_path.glob("fleet-accepted-*.json"))
    path.write_text(body)
    with pytest.raises(FleetError, match=r"fleet-accepted-.*unreadable .*remove it to start over"):
        _guard(tmp_path, "game-1")  # join
    with pytest.raises(FleetError, match="unreadable"):
        g.hold(["reward"], 4)  # accept() re-reads the file under its lock
    path.unlink()
    g.hold(["reward"], 5)  # removed: starts over, from what this host has in memory
    assert _guard(tmp_path, "game-1").held() == {"reward": 5}


def test_the_plugins_decided_last_are_kept() -> None:
    """Desired-state slots were not bounded: now the PLUGIN_SLOTS plugins
    signed last stay, as the release slots do."""
    newest = {f"p{i}": (1, float(i)) for i in range(PLUGIN_SLOTS + 500)}
    newest["release:00000000000a"] = (10, 0.0)
    kept = bounded(newest, "h")
    assert "release:00000000000a" in kept
    plugins = sorted(v[1] for k, v in kept.items() if k.startswith("p"))
    assert plugins == [float(i) for i in range(500, PLUGIN_SLOTS + 500)]


def test_a_file_over_the_size_cap_is_refused_at_once(tmp_path: Path) -> None:
    """A 50 MB file of plugin slots took 27 s at every accept(), read again
    under a 10 s lock; a file over MAX_FILE is now refused before it is parsed."""
    g = _guard(tmp_path, "game-1")
    g.hold(["reward"], 3)
    path = next(tmp_path.glob("fleet-accepted-*.json"))
    slots = {f"plugin-{i:09d}": [i, float(i)] for i in range(MAX_FILE // 30)}
    path.write_text(json.dumps({"fleet": "f", "newest": slots}))
    assert path.stat().st_size > MAX_FILE
    t0 = time.monotonic()
    with pytest.raises(FleetError, match=r"unreadable \(over 4 MiB.*remove it to start over"):
        _guard(tmp_path, "game-1")
    with pytest.raises(FleetError, match="over 4 MiB"):
        g.hold(["reward"], 4)
    assert time.monotonic() - t0 < 2.0
