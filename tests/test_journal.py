"""The swap journal (issue 21 item 4): every change of what serves a plugin,
every refused build, every crash, restart and stop of a worker, with the
versions, the digests and who asked; bounded; over the control socket and
``hotload log [--follow]``; refused builds in ``hotload ls``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotload import (
    ControlError,
    Host,
    HotloadError,
    Isolated,
    JournalEntry,
    PluginCrashedError,
    PluginTimeoutError,
)
from hotload._cli import main as cli
from hotload._engine.journal import Journal, current_origin, origin
from hotload._ops import control_client, control_paths

from conftest import Compile, run_guarded, wait_for

BOOM = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("boom", "VERSION");
HOTLOAD_API int32_t ok(void) { return TAG; }
HOTLOAD_EXPORT(ok, int32_t, (void));
HOTLOAD_API int32_t die(void) { volatile int *p = 0; *p = 1; return 0; }
HOTLOAD_EXPORT(die, int32_t, (void));
HOTLOAD_API int32_t hang(void) { for (volatile int spin = 1; spin;) {} return 0; }
HOTLOAD_EXPORT(hang, int32_t, (void));
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kinds(entries: list[JournalEntry]) -> list[str]:
    return [e.kind for e in entries]


@pytest.fixture
def boom(cc: Compile) -> Callable[..., Path]:
    def build(tag: int = 1, version: str = "1") -> Path:
        return cc(BOOM.replace("VERSION", version).replace("TAG", str(tag)), "boom")

    return build


@pytest.fixture
def ctl(short_tmp: Path) -> Path:
    path = short_tmp / "ctl"
    path.mkdir(mode=0o700)
    return path


def hotload(ctl: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, control_paths.ENV_DIR: str(ctl)}
    return subprocess.run(
        [sys.executable, "-m", "hotload", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- the ring ---------------------------------------------------------------------------
def test_the_ring_keeps_the_newest_entries_and_counts_the_dropped_ones() -> None:
    j = Journal(size=5)
    assert (j(), j.last, j.dropped) == ([], 0, 0)
    for i in range(10_000):
        j.record("reload", f"p{i % 3}", from_seq=i, to_seq=i + 1)
    entries = j()
    assert len(entries) == 5 and j.dropped == 9_995 and j.last == 10_000
    assert [e.seq for e in entries] == [9_996, 9_997, 9_998, 9_999, 10_000]
    assert [e.seq for e in j(since=9_998)] == [9_999, 10_000]
    assert j(since=10_000) == [] and j(since=2**63 - 1) == []
    assert [e.seq for e in j("p0")] == [9_997, 10_000]  # i = 9_996 and 9_999
    assert j("never") == []
    # refused builds are counted per plugin beyond the ring, for that many plugins at most
    for i in range(20):
        j.refused(f"r{i}", HotloadError(f"no {i}"), op="load")
    refusals = j.refusals()
    assert sorted(refusals) == [f"r{i}" for i in range(15, 20)]
    assert refusals["r19"][0] == 1 and refusals["r19"][1].error == "HotloadError: no 19"


def test_one_refusal_passing_through_two_layers_is_recorded_once() -> None:
    j = Journal()
    exc = HotloadError("bad build")
    assert j.refused("xp", exc, op="reload") is not None
    assert j.refused("xp", exc, op="reload") is None  # the watcher, after the swap
    assert j.refusals()["xp"][0] == 1 and len(j()) == 1


@pytest.mark.parametrize("since", [-1, 1.5, "3", True, 2**63, [1]])
def test_bad_since_is_refused_in_python(since: Any) -> None:
    with pytest.raises(ValueError, match="since"):
        Journal()(since=since)


@pytest.mark.parametrize("size", [0, -1, True, "10", 1.5])
def test_a_bad_journal_size_is_refused(size: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="journal_size"):
        Host(tmp_path / "w", journal_size=size)


def test_the_origin_is_per_thread_and_restored() -> None:
    seen: list[str] = []
    with origin("cli"):
        with origin("watcher"):
            seen.append(current_origin())
        seen.append(current_origin())
        t = threading.Thread(target=lambda: seen.append(current_origin()))
        t.start()
        t.join()
    seen.append(current_origin())
    assert seen == ["watcher", "cli", "api", "api"]  # a new thread starts as "api"


def test_an_entry_as_a_dict_and_a_line() -> None:
    j = Journal()
    e = j.record("reload", "xp", from_seq=1, to_seq=2, to_digest="ab" * 32, version="2.0")
    d = e.as_dict()
    assert d["kind"] == "reload" and d["from_seq"] == 1 and d["to_digest"] == "ab" * 32
    assert set(d) == {
        "seq", "time", "kind", "plugin", "origin", "from_seq", "to_seq", "from_digest",
        "to_digest", "version", "source", "error", "detail",
    }  # fmt: skip
    assert e.seqs() == "v1 -> v2" and e.describe() == "2.0 (abababababab)"
    long = j.record("refused", "xp", error="x" * 10_000)
    assert len(long.error) == 2000  # an entry stays small, whatever the error


# ---- what the swap records ---------------------------------------------------------------
def test_each_change_made_through_the_api_is_recorded_with_versions_digests_and_origin(
    tmp_path: Path, xp_build, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hotload.journal")
    with Host(tmp_path / "w", preflight=False) as host:
        v1 = xp_build(mult=2, version="1.0.0")
        d1 = sha(v1)
        host.load(v1)
        d2 = sha(xp_build(mult=3, version="2.0.0"))
        host.reload("xp")
        host.rollback("xp")  # v3 runs d1 again
        d4 = sha(xp_build(mult=4, version="4.0.0", refuse=7))
        with pytest.raises(HotloadError, match="refused"):
            host.reload("xp")
        host.unload("xp")
        entries = host.journal()
    assert kinds(entries) == ["load", "reload", "rollback", "refused", "unload"]
    load, reload, rollback, refused, unload = entries
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert {e.origin for e in entries} == {"api"} and {e.plugin for e in entries} == {"xp"}
    assert (load.from_seq, load.to_seq, load.from_digest, load.to_digest) == (None, 1, None, d1)
    assert (reload.from_seq, reload.to_seq, reload.from_digest, reload.to_digest) == (
        1,
        2,
        d1,
        d2,
    )
    assert (reload.version, reload.source) == ("2.0.0", str(v1))
    assert (rollback.from_seq, rollback.to_seq, rollback.to_digest) == (2, 3, d1)
    assert rollback.detail == "rollback to v1"
    # the refused build: its digest, and the version that kept serving
    assert (refused.from_seq, refused.to_seq, refused.from_digest, refused.to_digest) == (
        3,
        None,
        d1,
        d4,
    )
    assert refused.detail == "reload" and "refused to start (returned 7)" in refused.error
    assert refused.error.startswith("HookError: ") and refused.version == "4.0.0"
    assert (unload.from_seq, unload.to_seq, unload.from_digest) == (3, None, d1)
    # one INFO line per entry on hotload.journal
    lines = [r.getMessage() for r in caplog.records if r.name == "hotload.journal"]
    assert len(lines) == 5 and all(r.levelno == logging.INFO for r in caplog.records)
    assert lines[1].startswith("reload xp v1 -> v2 [api]: 2.0.0")
    assert lines[3].startswith("refused xp v3 [api]: reload of ")


def test_a_name_that_never_loaded_keeps_its_refusals_and_ls_shows_them(
    tmp_path: Path, xp_build, ctl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "junk.so"
    garbage.write_text("not a library\n")
    with Host(tmp_path / "w", preflight=False) as host:
        refused = xp_build(refuse=3)
        for path in (refused, garbage):
            with pytest.raises(HotloadError):
                host.load(path)
        with pytest.raises(HotloadError):
            host.load(refused)  # twice: counted
        assert "xp" not in host and host.names() == []
        first, nameless, second = host.journal()
        assert (first.kind, first.plugin, first.detail, first.to_digest) == (
            "refused",
            "xp",
            "load",
            sha(refused),
        )
        assert (nameless.plugin, nameless.source) == ("", str(garbage))
        assert "InvalidPluginError" in nameless.error
        sock = host.serve_control(directory=ctl).path
        listing = control_client.request(sock, "ls")
        assert [(r["plugin"], r["count"]) for r in listing["refused"]] == [("", 1), ("xp", 2)]
        assert listing["refused"][1]["last"]["seq"] == second.seq
        assert cli.main(["ls", "--socket", str(sock)]) == 0
        text = capsys.readouterr().out
        assert "refused: xp: 2 build(s); last at " in text
        assert f"(load of {refused}, api): HookError: on_load of xp 1.0.0 refused to start" in text
        assert "refused: a build of unknown name: 1 build(s); last at " in text
        assert f"(load of {garbage}, api): InvalidPluginError: a text file" in text


# ---- who asked: the CLI, a watcher, the fleet, the supervisor ----------------------------
def test_changes_made_through_the_control_socket_are_recorded_as_cli(
    tmp_path: Path, xp_build, ctl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> str:  # the CLI in this process: the same socket, no start-up
        capsys.readouterr()
        assert cli.main([*args, "--socket", str(sock)]) == 0
        return capsys.readouterr().out

    with Host(tmp_path / "w", preflight=False) as host:
        sock = host.serve_control(directory=ctl).path
        host.load(xp_build(mult=2))
        d2 = sha(xp_build(mult=3, version="2.0.0"))
        assert hotload(ctl, "reload", "xp").returncode == 0  # the real command, once
        run("rollback", "xp")
        junk = tmp_path / "junk.so"
        junk.write_bytes(b"\x7fELF" + b"\0" * 60)
        assert cli.main(["reload", "xp", "--path", str(junk), "--socket", str(sock)]) == 1
        assert "hotload: error:" in capsys.readouterr().err
        host.reload("xp")  # the application's own call, after the CLI's
        log = json.loads(run("log", "--json"))
        text = run("log", "xp").splitlines()
        last = run("log", "-n", "1", "--json")
    entries = log["entries"]
    assert [(e["kind"], e["origin"]) for e in entries] == [
        ("load", "api"),
        ("reload", "cli"),
        ("rollback", "cli"),
        ("refused", "cli"),
        ("reload", "api"),
    ]
    assert (entries[1]["from_seq"], entries[1]["to_seq"], entries[1]["to_digest"]) == (1, 2, d2)
    assert entries[3]["source"] == str(junk) and entries[3]["from_seq"] == 3
    assert (log["last"], log["dropped"], log["size"]) == (5, 0, 1000)
    assert text[0].split() == ["TIME", "KIND", "PLUGIN", "SEQ", "ORIGIN", "WHAT"]
    assert text[2].split()[1:5] == ["reload", "xp", "v1->v2", "cli"]
    assert f"reload of {junk} (v3 keeps serving): " in text[4]
    assert [e["seq"] for e in json.loads(last)["entries"]] == [5]


def test_a_watcher_records_its_changes_as_startup_then_watcher(
    tmp_path: Path, xp_build, cc: Compile
) -> None:
    target = xp_build(mult=2)
    with Host(tmp_path / "w", preflight=False) as host:
        host.watch(target.parent, wait=True, settle=0.03, retries=0)
        d2 = sha(xp_build(mult=3, version="2.0.0"))
        wait_for(lambda: len(host.journal()) >= 2, what="the watcher's reload")
        xp_build(mult=4, version="4.0.0", refuse=5)
        wait_for(lambda: len(host.journal()) >= 3, what="the refused build")
        (target.parent / "junk.so").write_text("not a plugin, not a library\n")
        wait_for(lambda: len(host.journal()) >= 4, what="the junk file")
        time.sleep(0.3)  # anything recorded twice would be there by now
        entries = host.journal()
    assert [(e.kind, e.origin, e.plugin) for e in entries] == [
        ("load", "startup", "xp"),
        ("reload", "watcher", "xp"),
        ("refused", "watcher", "xp"),  # recorded by the swap; the watcher's report is a repeat
        ("refused", "watcher", ""),
    ]
    assert (entries[1].from_seq, entries[1].to_seq, entries[1].to_digest) == (1, 2, d2)
    assert "refused to start (returned 5)" in entries[2].error
    assert entries[3].source == str(target.parent / "junk.so")
    assert entries[3].detail == "load" and "InvalidPluginError" in entries[3].error


# ---- isolated workers: crash, restart, stop ----------------------------------------------
def test_a_crash_a_restart_and_a_crash_loop_stop_are_recorded_on_the_crashed_version(
    tmp_path: Path, boom
) -> None:
    with Host(tmp_path / "w", preflight=False) as host:
        path = boom()
        # quarantine=0: every crash of die() counts (with it, one input is one crash-loop step)
        p = host.load(path, isolate=Isolated(max_restarts=1, quarantine=0))
        with pytest.raises(PluginCrashedError):
            p.die()
        assert p.ok() == 1  # waits for the restart
        with pytest.raises(PluginCrashedError):
            p.die()
        wait_for(lambda: kinds(host.journal())[-1:] == ["stop"], what="the stop")
        entries = host.journal()
    assert kinds(entries) == ["load", "crash", "restart", "crash", "stop"]
    for e in entries[1:]:
        assert (e.plugin, e.from_seq, e.to_seq, e.to_digest) == ("boom", 1, 1, sha(path))
        assert e.origin == "supervisor"
    assert entries[1].detail == "SIGSEGV during die" and "crashed with SIGSEGV" in entries[1].error
    assert entries[2].detail.startswith("restart 1: worker pid ")
    assert entries[4].detail.startswith("crash loop: 2 crashes within")


def test_a_call_that_hangs_past_call_timeout_is_recorded_as_a_timeout_not_a_crash(
    tmp_path: Path, boom
) -> None:
    """The metrics count a hung call as a timeout; the journal said "crash"
    (new-user review): an operator reading it looked for a signal that never came."""
    with Host(tmp_path / "w", preflight=False) as host:
        p = host.load(boom(), isolate=Isolated(call_timeout=0.3))
        with pytest.raises(PluginTimeoutError):
            p.hang()
        assert p.ok() == 1  # restarted
        wait_for(lambda: "restart" in kinds(host.journal()), what="the restart")
        entries = host.journal()
    assert kinds(entries) == ["load", "timeout", "restart"]
    assert entries[1].detail == "no reply within 0.3 s during hang"
    assert "did not return within 0.3 s (call_timeout)" in entries[1].error
    assert entries[1].origin == "supervisor"
    assert "did not return within 0.3 s" in entries[1].describe()


def test_on_crash_rollback_is_recorded_as_a_stop_and_a_rollback_by_the_supervisor(
    tmp_path: Path, boom
) -> None:
    with Host(tmp_path / "w", preflight=False) as host:
        d1 = sha(boom(tag=1))
        p = host.load(boom(tag=1), isolate=Isolated(on_crash="rollback"))
        boom(tag=2, version="2")
        host.reload("boom")
        with pytest.raises(PluginCrashedError):
            p.die()
        wait_for(lambda: kinds(host.journal())[-1:] == ["rollback"], what="the rollback")
        assert p.ok() == 1
        entries = host.journal()
    assert [(e.kind, e.origin) for e in entries] == [
        ("load", "api"),
        ("reload", "api"),
        ("crash", "supervisor"),
        ("stop", "supervisor"),
        ("rollback", "supervisor"),
    ]
    assert entries[3].detail == "on_crash='rollback'"
    assert (entries[4].from_seq, entries[4].to_seq, entries[4].to_digest) == (2, 3, d1)


def test_a_crash_loop_floods_a_bounded_journal_and_the_dropped_count_is_exact(
    tmp_path: Path, boom
) -> None:
    crashes = 5
    with Host(tmp_path / "w", preflight=False, journal_size=4) as host:
        p = host.load(boom(), isolate=Isolated(max_restarts=1000, quarantine=0))
        for _ in range(crashes):
            with pytest.raises(PluginCrashedError):
                p.die()
            assert p.ok() == 1  # a call that succeeds: no backoff before the next restart
        total = 1 + 2 * crashes  # the load, then a crash and a restart each time
        wait_for(lambda: host.journal.last == total, what="every entry")
        entries = host.journal()
        assert len(entries) == 4 and host.journal.dropped == total - 4 == 7
        assert [e.seq for e in entries] == list(range(total - 3, total + 1))
        assert kinds(entries) == ["crash", "restart"] * 2  # seq 2k: a crash, 2k + 1: its restart


# ---- the log verb and hotload log ----------------------------------------------------------
def test_hotload_log_follow_prints_new_entries_and_exits_when_the_host_closes(
    tmp_path: Path, xp_build, ctl: Path
) -> None:
    host = Host(tmp_path / "w", preflight=False)
    try:
        sock = host.serve_control(directory=ctl).path
        host.load(xp_build(mult=2))
        proc = subprocess.Popen(
            [sys.executable, "-m", "hotload", "log", "--follow", "--socket", str(sock)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout
        threading.Thread(target=lambda: [lines.put(s) for s in out], daemon=True).start()

        def next_line() -> str:
            return lines.get(timeout=30)

        assert next_line().startswith("TIME ")
        assert next_line().split()[1:4] == ["load", "xp", "v1"]
        xp_build(mult=3, version="2.0.0")
        host.reload("xp")  # made after the follower started
        assert next_line().split()[1:5] == ["reload", "xp", "v1->v2", "api"]
    finally:
        host.close()
    rc = run_guarded(lambda: proc.wait(), timeout=60, what="hotload log --follow to exit")
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert rc == 0 and "the host went away" in err and "Traceback" not in err, err


def test_follow_as_json_or_by_name_says_on_stderr_what_the_ring_dropped(
    tmp_path: Path, xp_build, ctl: Path
) -> None:
    """A journal of 4 and 30 reloads between two polls of ``log -f``: the text
    follower said how many were dropped, ``--json`` and ``NAME`` followers
    skipped them in silence (the attacker's review).  Each follower is waited
    for by what it prints: the load (it has read the journal once and
    follows), then the last reload (it has asked again after the 30)."""
    host = Host(tmp_path / "w", preflight=False, journal_size=4)
    procs: list[subprocess.Popen[str]] = []
    outs: list[list[str]] = []
    readers: list[threading.Thread] = []

    def printed(k: int, text: str) -> bool:
        return any(text in line for line in list(outs[k]))

    try:
        sock = host.serve_control(directory=ctl).path
        host.load(xp_build(mult=2))
        # built first: compiled between the reloads, on a loaded machine, the
        # followers polled between each two and had nothing dropped to report
        builds = [xp_build(mult=3 + k % 2, version=f"2.{k}.0") for k in range(30)]
        for extra in (["--json"], ["xp"]):
            proc = subprocess.Popen(
                [sys.executable, "-m", "hotload", "log", "-f", *extra, "--socket", str(sock)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            outs.append([])
            out, lines = proc.stdout, outs[-1]
            readers.append(
                threading.Thread(target=lambda o=out, ls=lines: ls.extend(o), daemon=True)
            )
            readers[-1].start()
        for k in range(2):  # the load's entry: read once, now following
            wait_for(lambda k=k: printed(k, "1.0.0"), 60, f"follower {k}'s first read")
        for build in builds:
            host.reload("xp", build)
        for k in range(2):  # the last reload's entry: asked again after the 60
            wait_for(lambda k=k: printed(k, "2.29.0"), 60, f"follower {k}'s next read")
    finally:
        host.close()
    for proc, lines, reader in zip(procs, outs, readers, strict=True):
        rc = run_guarded(lambda p=proc: p.wait(), timeout=60, what="hotload log -f to exit")
        reader.join(30)
        assert proc.stderr is not None
        err, out = proc.stderr.read(), "".join(lines)
        assert rc == 0 and "entries were dropped before they could be shown" in err + out, err
        if "--json" in proc.args:
            assert all(json.loads(line)["kind"] for line in out.splitlines())  # JSON Lines only
        else:
            assert "some may have been xp's" in out, out


BAD_LOG_ARGUMENTS: list[dict[str, Any]] = [
    {"since": -1},
    {"since": "3"},
    {"since": 1.5},
    {"since": True},
    {"since": 2**63},
    {"since": [1]},
    {"since": {"a": 1}},
    {"limit": 0},
    {"limit": -5},
    {"limit": 10**30},
    {"limit": "10"},
    {"name": 5},
    {"name": ""},
    {"name": "x" * 300},
    {"name": ["xp"]},
]


def test_the_log_verb_refuses_bad_arguments_and_the_host_serves_on(
    host: Host, xp_build, ctl: Path
) -> None:
    sock = host.serve_control(directory=ctl).path
    p = host.load(xp_build(mult=2))

    def ask(args: dict[str, Any]) -> str:
        try:
            control_client.request(sock, "log", timeout=10.0, **args)
        except ControlError as exc:
            assert exc.code == "bad_request", (args, exc)
            assert next(iter(args)) in str(exc), (args, exc)  # it names the argument
            return str(exc)
        raise AssertionError(f"{args!r:.80} was accepted")

    said = run_guarded(lambda: [ask(a) for a in BAD_LOG_ARGUMENTS], timeout=60, what="answers")
    assert all(len(m) < 300 for m in said)  # a huge value is not echoed back whole
    assert control_client.request(sock, "log", timeout=10.0)["last"] == 1
    assert p.reward(1, 0) == 2


def test_the_log_verb_takes_large_valid_values_and_raw_hostile_lines(
    host: Host, xp_build, ctl: Path
) -> None:
    import socket as socketlib

    sock = host.serve_control(directory=ctl).path
    host.load(xp_build(mult=2))
    big = control_client.request(sock, "log", since=2**63 - 1, limit=2**63 - 1, timeout=10.0)
    assert big["entries"] == [] and big["last"] == 1
    assert control_client.request(sock, "log", name="never-loaded")["entries"] == []
    raw = [
        b'{"op": "log", "since": ' + b"9" * 5000 + b"}\n",  # past Python's int digits limit
        b'{"op": "log", "since": 1e999}\n',
        b'{"op": "log", "since": NaN}\n',
        b'{"op": "log", "limit": null, "since": null, "name": null, "extra": [1,2]}\n',
    ]
    with socketlib.socket(socketlib.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        reader = s.makefile("rb")
        answers = []
        for line in raw:
            s.sendall(line)
            answers.append(json.loads(reader.readline()))
    assert [a["ok"] for a in answers] == [False, False, False, True]
    assert {a["error"]["code"] for a in answers[:3]} == {"bad_request"}
    assert [e["kind"] for e in answers[3]["result"]["entries"]] == ["load"]


# ---- the fleet ------------------------------------------------------------------------------
@pytest.fixture
def fleet_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real redis-server and a signing key (the fleet tests' own fixtures)."""
    pytest.importorskip("redis")
    from hotload.fleet._signing import public_hex, write_private_key
    from test_fleet import RedisServer

    key_path = tmp_path / "keys" / "fleet.pem"
    key_path.parent.mkdir(mode=0o700)
    key = write_private_key(key_path)
    monkeypatch.setenv("HOTLOAD_FLEET_SIGN_KEY", str(key_path))
    monkeypatch.setenv("HOTLOAD_FLEET_PUBLIC_KEY", public_hex(key))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def test_fleet_driven_changes_are_recorded_as_fleet(
    tmp_path: Path, xp_build, fleet_env: Any
) -> None:
    from hotload.fleet import Fleet, Rule
    from hotload.fleet._agent import FleetAgent

    def build(mult: int, refuse: int = 0) -> tuple[Path, str]:
        out = tmp_path / "builds" / f"xp-{mult}.so"
        out.parent.mkdir(exist_ok=True)
        shutil.copyfile(xp_build(mult=mult, version=f"{mult}.0.0", refuse=refuse), out)
        return out, sha(out)

    v1, d1 = build(2)
    v2, d2 = build(3)
    v3, d3 = build(4, refuse=9)
    with Host(tmp_path / "w", preflight=False) as host:
        host.load(v1)
        agent = FleetAgent(host, fleet_env.url, {}, host_id="a", heartbeat=0.2, timeout=1.0)
        agent.start()
        try:
            with Fleet(fleet_env.url) as f:
                f.publish(v2)
                f.set_desired("xp", [Rule({}, d2)])
                wait_for(lambda: agent.live_digest("xp") == d2, what="d2 live")
                f.publish(v3)
                f.set_desired("xp", [Rule({}, d3)])
                wait_for(lambda: kinds(host.journal())[-1:] == ["refused"], what="d3 refused")
                time.sleep(0.5)  # a second record of that refusal would be there by now
        finally:
            agent.stop()
        entries = host.journal()
    assert [(e.kind, e.origin) for e in entries] == [
        ("load", "api"),
        ("reload", "fleet"),
        ("refused", "fleet"),
    ]
    assert (entries[1].from_digest, entries[1].to_digest, entries[1].source) == (
        d1,
        d2,
        f"fleet:xp@{d2[:12]}",
    )
    assert (entries[2].from_seq, entries[2].to_digest) == (2, d3)
    assert "refused to start (returned 9)" in entries[2].error


def test_a_fleet_decision_the_host_refuses_is_recorded(
    tmp_path: Path, xp_build, fleet_env: Any
) -> None:
    from hotload.fleet._agent import FleetAgent

    with Host(tmp_path / "w", preflight=False) as host:
        host.load(xp_build(mult=2))
        agent = FleetAgent(host, fleet_env.url, {}, host_id="a", heartbeat=0.2, timeout=1.0)
        agent.start()
        try:
            fleet_env.client().hset("hotload:desired", "xp", b'{"rev": 1, "rules": []}')
            fleet_env.client().incr("hotload:gen")
            fleet_env.client().publish("hotload:wake", "x")
            wait_for(lambda: kinds(host.journal())[-1:] == ["refused"], what="the refusal")
        finally:
            agent.stop()
        refused = host.journal()[-1]
        assert host.current("xp").seq == 1  # type: ignore[union-attr]  # its own build serves on
    assert (refused.plugin, refused.origin, refused.detail) == ("xp", "fleet", "fleet decision")
    assert "sign" in refused.error  # unsigned: this host acts only on signed decisions


# the CLI page lists hotload log; the reference lists Journal and JournalEntry
def test_the_journal_is_documented() -> None:
    root = Path(__file__).resolve().parent.parent
    cli_page = (root / "docs/guide/cli.md").read_text(encoding="utf-8")
    assert "hotload log" in cli_page and "--follow" in cli_page
    reference = (root / "docs/reference/host.md").read_text(encoding="utf-8")
    assert "::: hotload.Journal" in reference and "::: hotload.JournalEntry" in reference


@pytest.mark.parametrize("n", ["0", "-3", "x", "1.5", "9" * 20, "9" * 5000])
def test_a_bad_last_count_is_a_usage_error(n: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``-n`` past the journal's cursor range was sent to the host and came back
    as its bad_request (exit 1), with Python's int-digits hint for a 4,400-digit
    one (the attacker's review): it is a usage error, exit 2, said here."""
    with pytest.raises(SystemExit) as done:
        cli.main(["log", "-n", n])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "is not a number of entries" in err and "set_int_max_str_digits" not in err
    assert len(err) < 1000
