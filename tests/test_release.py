"""Issue 23 item 1: several plugins switched as one (``host.reload_together``).

Every build is read, checked, preflighted and opened first, and a refusal of
any changes nothing; then all switch at one instant, so that no caller that
saw a new version of one plugin meets an old version of another.  Real
plugins compiled here, real threads calling, both routers (``make test``
runs this file again with HOTLOAD_PURE_PYTHON=1)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hotload import Host, HotloadError, ReleaseError, SignatureError

from conftest import Compile, wait_for, xp_source

RULE = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("NAME", "GEN.0");
HOTLOAD_API int32_t generation(void) { return GEN; }
HOTLOAD_EXPORT(generation, int32_t, (void));
HOTLOAD_API int64_t apply(int64_t x) { return x * GEN; }
HOTLOAD_EXPORT(apply, int64_t, (int64_t));
"""
REFUSING = RULE.replace(
    "HOTLOAD_API int32_t generation",
    "static int no(const char *p, const void *s, size_t n) { (void)p; (void)s; (void)n; "
    "return 7; }\nHOTLOAD_ON_LOAD(no);\nHOTLOAD_API int32_t generation",
)


@pytest.fixture
def rule(cc: Compile) -> Callable[..., Path]:
    def build(name: str, gen: int, *, source: str = RULE) -> Path:
        text = source.replace("NAME", name).replace("GEN", str(gen))
        return cc(text, f"{name}_{gen}_{hash(source) & 0xFFFF}")

    return build


@pytest.mark.parametrize(
    "releases", [8, pytest.param(20, marks=pytest.mark.soak)], ids=["8", "20"]
)  # 8 in make test (its 300 s budget), 20 in make test-slow
def test_three_plugins_switch_as_one_and_no_caller_mixes_generations(
    host: Host, rule: Callable[..., Path], releases: int
) -> None:
    names = ("reward", "drops", "login")
    plugins = [host.load(rule(n, 1)) for n in names]
    mixed: list[tuple[int, ...]] = []
    calls = [0]
    stop = threading.Event()

    def player() -> None:
        # reads the three in one order, then the other: a caller that saw generation 2
        # of any plugin must never read generation 1 of a later one
        while not stop.is_set():
            for order in (plugins, plugins[::-1]):
                seen = tuple(p.generation() for p in order)  # in the order they were read
                if any(a > b for a, b in zip(seen, seen[1:], strict=False)):  # newer, then older
                    mixed.append(seen)
                calls[0] += 1

    threads = [threading.Thread(target=player) for _ in range(3)]
    interval = sys.getswitchinterval()
    # threads take turns between any two bytecodes of the flip: without the routes held,
    # a run of 20 releases caught a caller mixing generations 3 times in 3
    sys.setswitchinterval(1e-6)
    for t in threads:
        t.start()
    try:
        wait_for(lambda: calls[0] > 3000, what="callers warmed up")
        for gen in range(2, releases + 2):
            done = host.reload_together({n: rule(n, gen) for n in names})
            assert [v.plugin_version for v in done.versions.values()] == [f"{gen}.0"] * 3
            target = calls[0] + 100
            wait_for(lambda t=target: calls[0] > t, what="calls after the release")
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for t in threads:
            t.join(30)
    assert not mixed, mixed[:5]
    assert [p.generation() for p in plugins] == [releases + 1] * 3
    assert host.settle(10)
    for n in names:
        states = [str(v.state) for v in host.versions(n)]
        assert states.count("active") == 1 and states[-1] == "active"
    notes = {e.detail for e in host.journal() if e.kind == "release"}
    assert len(notes) == releases and all("drops, login, reward" in d for d in notes)


def test_a_refused_build_changes_nothing_and_names_the_plugin(
    host: Host, rule: Callable[..., Path], cc: Compile
) -> None:
    a, b = host.load(rule("reward", 1)), host.load(rule("drops", 1))
    refusing = {"reward": rule("reward", 2), "drops": rule("drops", 2, source=REFUSING)}
    with pytest.raises(ReleaseError, match=r"drops: PreflightError: .*on_load .*refused"):
        host.reload_together(refusing)
    with pytest.raises(ReleaseError, match=r"drops: HookError: .*refused") as err:
        host.reload_together(refusing, preflight=False)  # refused here: reward's new one closed
    assert err.value.plugin == "drops"
    changed = RULE.replace("int64_t apply(int64_t x)", "int64_t apply(int32_t x)").replace(
        "(int64_t));", "(int32_t));"
    )
    with pytest.raises(ReleaseError, match="reward: SignatureError") as err2:
        host.reload_together(
            {"reward": rule("reward", 3, source=changed), "drops": rule("drops", 3)}
        )
    assert isinstance(err2.value.cause, SignatureError)
    with pytest.raises(ReleaseError, match="drops"):
        host.reload_together({"reward": rule("reward", 4), "drops": Path("/nonexistent/drops.so")})
    with pytest.raises(ReleaseError, match="declares plugin 'reward', not 'drops'"):
        host.reload_together({"reward": rule("reward", 4), "drops": rule("reward", 5)})
    assert (a.generation(), b.generation()) == (1, 1)
    assert [v.seq for v in host.versions("reward")] == [1]
    assert [v.seq for v in host.versions("drops")] == [1]
    refused = [e for e in host.journal() if e.kind == "refused"]
    assert {e.detail for e in refused} == {"release"} and len(refused) == 5
    with pytest.raises(ValueError):
        host.reload_together({})
    with pytest.raises(ValueError):
        host.reload_together({"../x": rule("reward", 2)})


def test_a_release_loads_new_plugins_and_its_rollback_undoes_it_as_one(
    host: Host, rule: Callable[..., Path]
) -> None:
    reward = host.load(rule("reward", 1))
    done = host.reload_together({"reward": rule("reward", 2), "winter": rule("winter", 2)})
    assert done.replaced == {"reward": 1, "winter": None}
    winter = host["winter"]
    assert (reward.generation(), winter.generation()) == (2, 2)
    undone = host.rollback_together()
    assert undone.unloaded == ("winter",) and "winter" not in host
    assert reward.generation() == 1
    with pytest.raises(HotloadError, match="no release to roll back"):
        host.rollback_together()
    with pytest.raises(HotloadError, match="nothing to roll back to"):
        host.rollback("reward")  # its own chain walked back too: nothing before v1's build


def test_a_release_rollback_is_refused_once_one_of_its_plugins_moved_on(
    host: Host, rule: Callable[..., Path]
) -> None:
    """Rolling back a release after one of its plugins was reloaded alone would
    pair builds that never ran together (reward's release build, drops' old):
    refused, nothing changed; undoing the reload first makes it possible."""
    reward, drops = host.load(rule("reward", 1)), host.load(rule("drops", 1))
    host.reload_together({"reward": rule("reward", 2), "drops": rule("drops", 2)})
    host.reload("reward", rule("reward", 3))
    with pytest.raises(HotloadError, match="reward changed since"):
        host.rollback_together()
    assert (reward.generation(), drops.generation()) == (3, 2)
    host.rollback("reward")
    host.rollback_together()
    assert (reward.generation(), drops.generation()) == (1, 1)


def test_two_rollbacks_at_once_undo_the_release_once(host: Host, rule: Callable[..., Path]) -> None:
    """Two threads roll back the same release together: one does it, the
    other is told there is nothing (left) to roll back; never a mixed pair."""
    for _ in range(3):
        reward, drops = host.load(rule("reward", 1)), host.load(rule("drops", 1))
        host.reload_together({"reward": rule("reward", 2), "drops": rule("drops", 2)})
        go = threading.Barrier(2)
        outcomes: list[str] = []

        def undo(go: threading.Barrier = go, outcomes: list[str] = outcomes) -> None:
            go.wait()
            try:
                host.rollback_together()
                outcomes.append("done")
            except HotloadError as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=undo) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(outcomes) == ["HotloadError", "done"], outcomes
        assert (reward.generation(), drops.generation()) == (1, 1)
        host.unload("reward")
        host.unload("drops")


def test_stateful_plugins_hand_their_state_over_in_the_same_switch(
    host: Host, cc: Compile, rule: Callable[..., Path]
) -> None:
    xp = host.load(cc(xp_source(2, "1"), "xp1"))
    other = host.load(rule("reward", 1))
    for _ in range(5):
        xp.reward(10, 1)
    host.reload_together({"xp": cc(xp_source(3, "2"), "xp2"), "reward": rule("reward", 2)})
    assert xp.grants_so_far() == 5 and xp.gen() == 2 and other.generation() == 2
    assert xp.reward(10, 1) == 31  # x3 now
    assert xp.previous_version() == b"1"


def test_a_release_is_refused_while_a_canary_runs(host: Host, rule: Callable[..., Path]) -> None:
    host.load(rule("reward", 1))
    host.load(rule("drops", 1))
    c = host.canary("drops", rule("drops", 2), judge=None)
    with pytest.raises(ReleaseError, match="drops: a canary is running"):
        host.reload_together({"reward": rule("reward", 2), "drops": rule("drops", 3)})
    c.abort()
    host.reload_together({"reward": rule("reward", 2), "drops": rule("drops", 3)})


def test_the_cli_releases_and_rolls_back_and_refuses_hostile_requests(
    tmp_path: Path, rule: Callable[..., Path], short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hotload import ControlError
    from hotload._cli import main as cli
    from hotload._ops import control_client

    with Host(tmp_path / "work") as h:
        h.load(rule("reward", 1))
        sock = str(h.serve_control(directory=short_tmp).path)
        args = ["release", f"reward={rule('reward', 2)}", f"winter={rule('winter', 2)}"]
        assert cli.main([*args, "--socket", sock]) == 0
        out = capsys.readouterr().out
        assert "reward v1 -> v2 (2.0), winter v1 (2.0, new)" in out
        assert h["winter"].generation() == 2
        assert cli.main(["ls", "--socket", sock]) == 0
        assert capsys.readouterr().out.count("release 1: reward, winter") == 2  # NOTE, each
        assert cli.main(["release", "--rollback", "--socket", sock]) == 0
        assert "unloaded winter" in capsys.readouterr().out and "winter" not in h
        for bad in (["release", "--socket", sock], ["release", "reward", "--socket", sock]):
            assert cli.main(bad) == 1
            assert "NAME=FILE" in capsys.readouterr().err
        hostile: list[dict[str, object]] = [
            {"builds": []},
            {"builds": {}},
            {"builds": {"reward": "relative.so"}},
            {"builds": {"../x": str(rule("reward", 3))}},
            {"builds": {"reward": 7}},
            {"builds": {f"p{i}": "/x.so" for i in range(65)}},
            {"builds": {"reward": str(rule("reward", 3))}, "allow_signature_change": "yes"},
            {"rollback": "yes", "builds": None},
        ]
        for req in hostile:
            with pytest.raises(ControlError):
                control_client.request(sock, "release", **req)
        with pytest.raises(ControlError, match="no release to roll back"):
            control_client.request(sock, "release", rollback=True)
        assert [v.seq for v in h.versions("reward") if str(v.state) == "active"] == [3]


def test_a_release_at_a_time_stages_first_and_switches_on_the_second(
    host: Host, rule: Callable[..., Path]
) -> None:
    import datetime
    import time

    a, b = host.load(rule("reward", 1)), host.load(rule("drops", 1))
    interval = sys.getswitchinterval()
    at = time.time() + 1.0
    r = host.reload_together({"reward": rule("reward", 2), "drops": rule("drops", 2)}, at=at)
    assert r.state == "staged" and r.at == at
    assert (a.generation(), b.generation()) == (1, 1)  # staged: opened, not serving
    with pytest.raises(HotloadError, match="staged for release 1"):
        host.reload("reward", rule("reward", 3))
    with pytest.raises(HotloadError, match="staged for release 1"):
        host.canary("drops", rule("drops", 3), judge=None)
    with pytest.raises(ReleaseError, match="staged for release 1"):
        host.reload_together({"drops": rule("drops", 3)})
    assert r.wait(10) == "done", r.reason
    assert (a.generation(), b.generation()) == (2, 2)
    assert sys.getswitchinterval() == interval  # kept long only around the switch
    assert r.skew_ms is not None and 0 <= r.skew_ms < 1000  # not a speed bound: it switched
    kinds = [e.kind for e in host.journal("reward")]
    assert kinds == ["load", "staged", "release"]  # the reload meanwhile: busy, not a build

    # cancelled before its time: the host is as it was, the opened builds are closed
    r2 = host.reload_together(
        {"reward": rule("reward", 3)},
        at=datetime.datetime.now() + datetime.timedelta(seconds=30),
    )
    assert r2.cancel("not tonight") and r2.state == "cancelled" and r2.reason == "not tonight"
    assert not r2.cancel() and r2.wait(1) == "cancelled"
    assert a.generation() == 2
    assert host.settle(10)
    assert [str(v.state) for v in host.versions("reward")][-1] == "active"
    assert host.versions("reward")[-1].plugin_version == "2.0"
    host.reload("reward", rule("reward", 4))  # no longer staged: swaps again
    assert a.generation() == 4


def test_a_staged_release_is_cancelled_by_an_unload_or_the_hosts_close(
    tmp_path: Path, rule: Callable[..., Path]
) -> None:
    import time

    host = Host(tmp_path / "work")
    host.load(rule("reward", 1))
    host.load(rule("drops", 1))
    r = host.reload_together(
        {"reward": rule("reward", 2), "drops": rule("drops", 2)}, at=time.time() + 60
    )
    host.unload("drops")
    assert r.state == "cancelled" and "drops was unloaded" in r.reason
    assert host["reward"].generation() == 1
    r = host.reload_together({"reward": rule("reward", 2)}, at=time.time() + 60)
    host.close()
    assert r.state == "cancelled" and "closed" in r.reason
    with Host(tmp_path / "w2") as other:
        for bad in (time.time() - 60, time.time() + 400 * 86400, "tomorrow", True):
            with pytest.raises((ValueError, TypeError), match="at="):
                other.reload_together({"x": rule("reward", 1)}, at=bad)  # type: ignore[arg-type]


def test_the_cli_stages_lists_and_cancels_a_release_at_a_time(
    tmp_path: Path, rule: Callable[..., Path], short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime

    from hotload import ControlError
    from hotload._cli import main as cli
    from hotload._ops import control_client

    with Host(tmp_path / "work") as h:
        h.load(rule("reward", 1))
        sock = str(h.serve_control(directory=short_tmp).path)
        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        at = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert (
            cli.main(["release", f"reward={rule('reward', 2)}", "--at", at, "--socket", sock]) == 0
        )
        assert "release 1: reward staged, switches at " in capsys.readouterr().out
        assert cli.main(["release", "--staged", "--socket", sock]) == 0
        assert "release 1: reward staged" in capsys.readouterr().out
        assert cli.main(["release", "--cancel", "1", "--socket", sock]) == 0
        assert "release 1: cancelled" in capsys.readouterr().out
        assert cli.main(["release", "--staged", "--socket", sock]) == 0
        assert "no release is staged" in capsys.readouterr().out
        assert cli.main(["release", "--cancel", "1", "--socket", sock]) == 1
        assert "no staged release 1" in capsys.readouterr().err
        assert (
            cli.main(["release", f"reward={rule('reward', 2)}", "--at", "+1h", "--socket", sock])
            == 0
        )
        assert "release 2: reward staged, switches at " in capsys.readouterr().out
        assert cli.main(["release", "--cancel", "2", "--socket", sock]) == 0
        capsys.readouterr()
        with pytest.raises(SystemExit):
            cli.main(["release", f"reward={rule('reward', 2)}", "--at", "friday", "--socket", sock])
        for bad in ({"at": "friday"}, {"at": 1.0}, {"at": True}, {"at": 1e300}):
            with pytest.raises(ControlError):
                control_client.request(
                    sock, "release", builds={"reward": str(rule("reward", 2))}, **bad
                )
        for bad_id in ("1", True, None, [1]):
            with pytest.raises(ControlError):
                control_client.request(sock, "release", cancel=bad_id)
        assert h["reward"].generation() == 1 and not h.staged_releases()
