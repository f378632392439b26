"""Issue 23 item 4: record a plugin's calls, replay them on a candidate
before players see it.  Real plugins compiled here, real threads, a real
worker process for the replay; both routers (``make test`` runs this file
again with HOTLOAD_PURE_PYTHON=1)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotload import (
    Host,
    HotloadError,
    NotLoadedError,
    RecordedCall,
    ReplayError,
    ServiceCall,
)
from hotload._artifact.signatures import ffi

from conftest import Compile

REWARD = r"""
#include <hotload.h>
#include <stdint.h>
HOTLOAD_PLUGIN("reward", "VERSION");
HOTLOAD_IMPORT(grant, int32_t, (int64_t, int64_t));
HOTLOAD_IMPORT(bonus, int64_t, (int64_t));
/* MULT: the formula; CRASH: players with id % 97 == 5 crash it; BONUS: also
   asks the bonus service (which the first build never called) */
HOTLOAD_API int64_t reward(int64_t player, int32_t level)
{
    if (CRASH && player % 97 == 5) { volatile int *p = 0; *p = 1; }
    int64_t xp = player * MULT + level;
    if (BONUS && bonus) xp += bonus(player);
    if (grant && grant(player, xp) < 0) return -1;
    return xp;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
HOTLOAD_API int64_t peek(const int64_t *p, size_t n) { return n ? p[0] * MULT : -1; }
HOTLOAD_EXPORT(peek, int64_t, (const int64_t *, size_t));
"""


@pytest.fixture
def reward(cc: Compile) -> Callable[..., Path]:
    def build(mult: int = 2, *, crash: int = 0, bonus: int = 0) -> Path:
        src = (
            REWARD.replace("VERSION", f"{mult}.{crash}{bonus}")
            .replace("MULT", str(mult))
            .replace("CRASH", str(crash))
            .replace("BONUS", str(bonus))
        )
        return cc(src, f"replay_reward_{mult}_{crash}_{bonus}")

    return build


class Grants:
    """The host's ``grant`` service: counts what it granted (a replay must
    grant nothing), and refuses player 13."""

    def __init__(self) -> None:
        self.granted: list[tuple[int, int]] = []

    def __call__(self, player: int, xp: int) -> int:
        if player == 13:
            raise ValueError("player 13 is banned")
        self.granted.append((player, xp))
        return 0


@pytest.fixture
def served(tmp_path: Path) -> Any:
    grants = Grants()
    with Host(tmp_path / "work", quiesce_timeout=0.5) as h:
        h.provide("grant", grants, "int32_t(int64_t, int64_t)", error=-1)
        h.provide("bonus", lambda p: 1000, "int64_t(int64_t)", error=0)
        yield h, grants


def test_a_recording_keeps_the_last_calls_with_their_service_calls(
    served: Any, reward: Callable[..., Path]
) -> None:
    host, grants = served
    p = host.load(reward(2))
    p.reward(1, 1)  # before the recording: not kept
    rec = host.record("reward", calls=100)
    for i in range(150):
        p.reward(i, 3)
    with pytest.raises(TypeError):
        p.reward("x", 1)  # a bad argument: recorded as raised
    calls = rec.calls()
    assert rec.total == 151 and rec.capacity == 100 and len(calls) == 100
    assert [c.args for c in calls[:2]] == [(51, 3), (52, 3)]  # the oldest kept first
    c = calls[0]
    grant = ServiceCall("grant", (51, 105), True, 0)
    assert c == RecordedCall("reward", (51, 3), True, 105, [grant])
    last = calls[-1]
    assert last.export == "reward" and not last.ok and isinstance(last.result, TypeError)
    assert last.services == []
    # the banned player (13 is not in the ring any more: 63 is, and granted)
    assert {c.args[0]: c for c in calls if c.ok}[63].services[0].ok
    rec.stop()
    p.reward(7, 7)
    assert rec.total == 151  # stopped: nothing more kept, what was kept is readable
    assert len(grants.granted) == 151  # 152 calls, and player 13 was refused


def test_a_service_that_raised_is_recorded_with_its_exception(
    served: Any, reward: Callable[..., Path]
) -> None:
    host, _ = served
    p = host.load(reward(2))
    rec = host.record("reward")
    assert p.reward(13, 1) == -1  # grant raised: the plugin got -1 and returned -1
    (call,) = rec.calls()
    (svc,) = call.services
    assert svc.name == "grant" and not svc.ok and isinstance(svc.answer, ValueError)
    assert call.ok and call.result == -1


def test_calls_on_other_threads_keep_their_own_service_calls(
    served: Any, reward: Callable[..., Path]
) -> None:
    host, _ = served
    p = host.load(reward(2))
    rec = host.record("reward", calls=50_000)

    def play(first: int) -> None:
        for i in range(first + 100, first + 4100):  # player 13 never: its grant raises
            p.reward(i, 1)

    threads = [threading.Thread(target=play, args=(k * 10_000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = rec.calls()
    assert len(calls) == 16_000
    for c in calls:  # each call's service call is its own, never another thread's
        assert c.services == [ServiceCall("grant", (c.args[0], c.result), True, 0)], c


def test_replaying_the_same_build_agrees_and_grants_nothing(
    served: Any, reward: Callable[..., Path]
) -> None:
    host, grants = served
    p = host.load(reward(2))
    host.record("reward", calls=1000)
    for i in range(300):
        p.reward(i, 1)
    granted = len(grants.granted)
    report = host.replay("reward", reward(2))
    assert report.ok and report.calls == 300, report
    assert (report.differ, report.new_errors, report.crashes) == (0, 0, 0), report
    assert report.unrecorded_services == 0
    assert len(grants.granted) == granted  # services answered from the recording
    assert "replayed 300 recorded calls" in str(report)


def test_a_new_formula_differs_and_is_shown_but_refuses_nothing(
    served: Any, reward: Callable[..., Path]
) -> None:
    host, _ = served
    p = host.load(reward(2))
    host.record("reward")
    for i in range(20):
        p.reward(i, 1)
    report = host.replay("reward", reward(3))
    # all but player 0 (0 either way) and 13 (whose grant raised: -1 either way)
    assert report.ok and report.differ == 18 and len(report.differences) == 5
    first = report.differences[0]
    assert first.args == (1, 1) and str(first) == "reward(1, 1): recorded 3, now 4"
    assert "  differs: reward(2, 1): recorded 5, now 7" in str(report)
    # a service the recording never saw: answered with its error value, counted
    report = host.replay("reward", reward(2, bonus=1))
    assert report.unrecorded_services == 20 and report.differ == 0, report  # bonus: 0


def test_a_crashing_build_is_refused_by_reload_with_replay_and_the_old_one_serves(
    served: Any, reward: Callable[..., Path]
) -> None:
    host, _ = served
    p = host.load(reward(2))
    host.record("reward")
    for i in range(300):
        p.reward(i, 1)
    report = host.replay("reward", reward(2, crash=1))
    assert not report.ok and report.crashes >= 1 and report.new_errors >= 1
    assert "PluginCrashedError" in str(report.failures[0]), report
    assert report.failures[0].args[0] % 97 == 5
    with pytest.raises(ReplayError, match="the replay refused the build") as refused:
        host.reload("reward", reward(2, crash=1), replay=True)
    assert not refused.value.report.ok
    assert host.current("reward").seq == 1 and p.reward(5, 1) == 11  # nothing changed
    # a good build goes through
    info = host.reload("reward", reward(4), replay=True)
    assert info.seq == 2 and p.reward(5, 1) == 21


def test_pointer_arguments_are_not_replayed_and_released_handles_do_not_matter(
    served: Any, reward: Callable[..., Path]
) -> None:
    """A pointer into the caller's memory may be gone by the replay: such a
    call is skipped and counted.  A handle is a number: the candidate passes
    it to services, which answer from the recording without resolving it."""
    host, _ = served
    p = host.load(reward(2))
    rec = host.record("reward")
    box = ffi.new("int64_t *", 21)
    assert p.peek(box, 1) == 42
    h = host.handle(object())
    p.reward(h, 1)
    host.release(h)
    report = host.replay("reward", reward(2), calls=rec.calls())
    assert report.skipped == 1 and report.calls == 1 and report.ok, report


def test_bad_requests_are_refused_clearly(
    served: Any, reward: Callable[..., Path], tmp_path: Path
) -> None:
    host, _ = served
    with pytest.raises(NotLoadedError):
        host.record("reward")
    host.load(reward(2))
    with pytest.raises(HotloadError, match="no calls recorded"):
        host.replay("reward", reward(2))
    for bad in (-1, 2**25, 1.5, True, "10"):
        with pytest.raises(ValueError, match="calls="):
            host.record("reward", calls=bad)
    with pytest.raises(HotloadError, match="no calls recorded"):
        host.reload("reward", reward(3), replay=True)
    assert host.current("reward").seq == 1
    host.record("reward")
    missing = tmp_path / "missing.so"
    with pytest.raises(HotloadError, match="missing.so"):
        host.replay("reward", missing)
    assert host.record("reward", calls=0) is None  # stops
    garbage = tmp_path / "garbage.so"
    garbage.write_bytes(b"\x7fELF" + b"\xff" * 200)
    with pytest.raises(HotloadError, match="garbage.so"):
        host.replay("reward", garbage, calls=[RecordedCall("reward", (1, 1), True, 3)])


def test_off_costs_nothing_on_the_route_and_a_new_recording_replaces_the_old(
    served: Any, reward: Callable[..., Path]
) -> None:
    host, _ = served
    p = host.load(reward(2))
    route = p._route
    assert route.recorder is None
    first = host.record("reward", calls=10)
    assert route.recorder is not None
    p.reward(1, 1)
    assert host.record("reward", calls=10) is first  # asked again: kept, calls and all
    assert host.record("reward", calls=None) is first and first.total == 1
    second = host.record("reward", calls=5)  # another size: a new ring
    p.reward(2, 1)
    assert first.total == 1 and second.total == 1
    second.stop()
    assert route.recorder is None and host._provided._recorded == 0
    first.stop()  # stopping twice, or an old handle, changes nothing
    assert host._provided._recorded == 0


def test_the_cli_records_and_replays_and_exits_3_on_a_refused_build(
    served: Any, reward: Callable[..., Path], short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hotload._cli import main as cli

    host, _ = served
    p = host.load(reward(2))
    sock = ["--socket", str(host.serve_control(directory=short_tmp).path)]

    def run(*args: str) -> tuple[int, str]:
        code = cli.main([*args, *sock])
        out, err = capsys.readouterr()
        return code, out + err

    code, out = run("record", "reward", "--calls", "5,000")
    assert code == 0 and out.strip() == "reward: recording, 0 calls so far, keeps the last 5,000"
    for i in range(200):
        p.reward(i, 1)
    code, out = run("record", "reward")  # its status: the running recording is kept
    assert code == 0 and out.strip() == "reward: recording, 200 calls so far, keeps the last 5,000"
    code, out = run("replay", "reward", str(reward(3)))
    assert code == 0 and "replayed 200 recorded calls" in out and "198 other results" in out
    code, out = run("replay", "reward", str(reward(2, crash=1)), "--json")
    r = json.loads(out)["replay"]
    assert code == 3 and not r["ok"] and r["new_errors"] >= 1 and r["failures"], r
    code, out = run("record", "reward", "--stop")
    assert code == 0 and "not recording" in out
    with pytest.raises(SystemExit) as usage:
        run("record", "reward", "--calls", "0")
    assert usage.value.code == 2 and "a number of calls" in capsys.readouterr().err
    assert host.current("reward").seq == 1  # a replay changes nothing


def test_hostile_record_and_replay_requests_are_refused_and_change_nothing(
    served: Any, reward: Callable[..., Path], short_tmp: Path, tmp_path: Path
) -> None:
    from hotload import ControlError
    from hotload._ops import control_client

    host, _ = served
    host.load(reward(2))
    sock = host.serve_control(directory=short_tmp).path
    for req in ({"calls": "10"}, {"calls": -1}, {"calls": 2**40}, {"calls": True}):
        with pytest.raises(ControlError, match="'calls'"):
            control_client.request(sock, "record", name="reward", **req)
    assert host._table.loaded("reward").recording is None
    control_client.request(sock, "record", name="reward", calls=10)
    fifo = tmp_path / "fifo.so"
    os.mkfifo(fifo)
    for path in (None, "relative.so", 42, str(tmp_path), "/dev/zero", str(fifo)):
        with pytest.raises((ControlError, HotloadError)):
            control_client.request(sock, "replay", name="reward", path=path)
    with pytest.raises(ControlError, match="no plugin named"):
        control_client.request(sock, "replay", name="nope", path=str(reward(2)))
    assert [v.seq for v in host.versions("reward")] == [1]


def test_an_isolated_plugins_service_calls_are_recorded_too(
    served: Any, reward: Callable[..., Path]
) -> None:
    """An isolated plugin's service calls are answered on the host's service
    thread, not the caller's: they are kept for the call in flight and handed
    to the recording when it returns, so its replay answers them too."""
    host, grants = served
    p = host.load(reward(2), isolate=True)
    rec = host.record("reward")
    for i in range(20):
        p.reward(i, 1)
    calls = rec.calls()
    assert [c.services for c in calls[:2]] == [
        [ServiceCall("grant", (0, 1), True, 0)],
        [ServiceCall("grant", (1, 3), True, 0)],
    ]
    (banned,) = [c for c in calls if c.args[0] == 13]
    assert not banned.services[0].ok and banned.result == -1
    granted = len(grants.granted)
    report = host.replay("reward", reward(2))
    assert report.ok and report.unrecorded_services == 0 and report.differ == 0, report
    assert len(grants.granted) == granted


# the replay worker's own tests: it runs no router, so make test's second pass (the Python
# router) would only run them again
once = pytest.mark.skipif(
    os.environ.get("HOTLOAD_PURE_PYTHON") == "1", reason="the replay worker routes nothing"
)

HOSTILE = r"""
#include <hotload.h>
#include <stdint.h>
#include <unistd.h>
HOTLOAD_PLUGIN("reward", "9.0");
HOTLOAD_IMPORT(grant, int32_t, (int64_t, int64_t));
HOTLOAD_API int64_t reward(int64_t player, int32_t level)
{
    if (player == 7) for (;;) {}  /* hangs */
    if (player == 8) {  /* writes garbage on every descriptor it may hold */
        static const char junk[] = "\xff\xff\xff\xffgarbage";
        for (int fd = 3; fd < 64; fd++) (void)!write(fd, junk, sizeof junk);
    }
    int64_t xp = player * 2 + level;
    if (grant && grant(player, xp) < 0) return -1;
    return xp;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
HOTLOAD_API int64_t peek(const int64_t *p, size_t n) { return n ? p[0] * 2 : -1; }
HOTLOAD_EXPORT(peek, int64_t, (const int64_t *, size_t));
"""


@once
def test_replay_answers_services_in_the_worker_and_names_what_diverged(
    served: Any, reward: Callable[..., Path]
) -> None:
    """The recorded answers travel with the calls; a service call the recording
    does not hold gets the error value, one made with other arguments gets the
    recorded answer; both are counted and named, and no real service runs."""
    host, grants = served
    host.load(reward(2))
    g = ServiceCall
    calls = [
        RecordedCall("reward", (1, 1), True, 3, [g("grant", (1, 3), True, 0)]),  # as recorded
        RecordedCall("reward", (2, 1), True, 5, []),  # grant not in the recording: -1 -> -1
        RecordedCall("reward", (3, 1), True, 7, [g("grant", (3, 999), True, 0)]),  # other args
        RecordedCall("reward", (4, 1), True, 9, [g("grant", (4, 9), False, ValueError("x"))]),
        RecordedCall("reward", (5, 1), True, 11, [g("nope", (5,), True, 0), g("grant", (5, 11), True, 7)]),  # noqa: E501
        RecordedCall("reward", (6, 1), True, 13, [g("grant", (b"\xff" * 9, object()), True, "x")]),
        RecordedCall("reward", (7, 1), True, 15, ["garbage", g("grant", "not a tuple", True, 0)]),
    ]  # fmt: skip
    before = list(grants.granted)
    report = host.replay("reward", reward(2), calls=calls)
    assert grants.granted == before  # the real service never ran
    assert report.calls == 7 and report.crashes == 0, report
    assert report.unrecorded_services == 1 and report.other_args_services == 3, report
    # -1 (the error value) for no answer (2), an answer recorded as raising (4), and an
    # answer that does not fit int32_t (6): the plugin returns -1
    assert report.new_errors == 0 and report.differ == 3, report
    assert [d.args for d in report.differences] == [(2, 1), (4, 1), (6, 1)]
    assert report.divergences[0] == "reward(2, 1) called grant: not in the recording"
    assert report.divergences[1] == "reward(3, 1) called grant: other arguments"
    assert "service calls with other arguments than recorded" in str(report)
    assert report.as_dict()["divergences"] == report.divergences


@once
def test_hostile_recordings_are_errors_of_their_calls_not_of_the_host(
    served: Any, cc: Compile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage arguments, a body over the cap, a body over a batch, a call
    that hangs, a plugin writing garbage into the replay channel, garbage
    instead of a list: each is that call's error (or refused), the replay
    goes on in a new worker."""
    from array import array

    from hotload._process import replay_driver

    monkeypatch.setattr(replay_driver, "CALL_TIMEOUT", 0.3)
    host, grants = served
    host.load(reward := cc(HOSTILE, "replay_hostile"))
    big = array("q", [21]) * (1 << 18)  # 2 MiB: more than a batch (1 MiB), less than a frame
    calls = [
        RecordedCall("reward", (b"\xff" * 16, "x"), True, 3),  # does not encode
        RecordedCall("peek", (b"\0" * (65 << 20), (65 << 20) // 8), True, 0),  # over the cap
        RecordedCall("peek", (big, len(big)), True, 42),  # alone in its batch
        RecordedCall("missing", (1,), True, 1),  # an export the build lacks
        RecordedCall("reward", (7, 1), True, 15),  # hangs: killed after CALL_TIMEOUT
        RecordedCall("reward", (8, 1), True, 17),  # garbage on the channel
        RecordedCall("reward", (9, 1), True, 19, [ServiceCall("grant", (9, 19), True, 0)]),
    ]
    report = host.replay("reward", reward, calls=calls)
    assert report.calls == 7 and report.crashes == 2 and report.new_errors == 5, report
    assert report.differ == 0 and report.same_errors == 0 and not report.stopped, report
    failed = {f.args[0] if isinstance(f.args[0], int) else f.export: f.now for f in report.failures}
    assert failed[7].startswith("raised PluginTimeoutError"), failed
    assert failed[8].startswith("raised PluginCrashedError"), failed
    assert list(big[:1]) == [21]  # a replay never writes into a recording
    for bad in ("calls", [1, 2], [RecordedCall("reward", 5, True, 1)]):  # type: ignore[list-item]
        with pytest.raises(HotloadError, match="takes a list of RecordedCall"):
            host.replay("reward", reward, calls=bad)  # type: ignore[arg-type]
    assert not grants.granted and host.current("reward").seq == 1


@pytest.mark.soak  # six workers started one after another: ~3 s
def test_a_build_that_crashes_on_every_call_stops_the_replay(
    served: Any, reward: Callable[..., Path]
) -> None:
    host, _ = served
    host.load(reward(2))
    calls = [RecordedCall("reward", (5 + 97 * i, 1), True, 11 + 194 * i) for i in range(12)]
    report = host.replay("reward", reward(2, crash=1), calls=calls)
    assert report.crashes == 6 and report.calls == 6 and not report.ok, report
    assert "crashed 6 times, more than max_restarts=5" in report.stopped
    assert "SIGSEGV" in report.stopped
