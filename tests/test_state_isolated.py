"""Typed state (``HOTLOAD_STATE``) of isolated plugins: the host reads the
old worker's state with state messages, proves old -> new -> old on copies,
migrates, and writes the result into the new worker before the switch; a
worker that crashes or answers garbage during the handover refuses the swap
and the running version serves on with its state.  Real plugins compiled
here, real sandboxed worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotload import Host, StateMigrationError
from hotload._state import handover
from test_state_typed import V1, V2, _migrating, _play, winter

from conftest import Compile


@pytest.fixture
def ihost(tmp_path: Path) -> Host:
    with Host(tmp_path / "w", preflight=False, hook_timeout=5.0) as host:
        yield host


def test_isolated_kept_widened_new_and_dropped_fields_and_a_rollback_down(
    ihost: Host, cc: Compile, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = ihost.load(cc(winter("1.0.0", V1, init=".level = 1"), "v1"), isolate=True)
    _play(w)
    monkeypatch.setattr(handover, "CHUNK", 24)  # a 32-byte state in two state messages each way
    v2 = cc(winter("2.0.0", V2, init=".bonus = 5, .bag = {1,1,1,1,1,1}"), "v2")
    ihost.reload("winter", v2, allow_signature_change=True)
    assert ihost.current("winter").isolated
    assert (w.get_level(), w.get_coins(), w.get_bonus()) == (-7, 1 << 40, 5)
    assert [w.at_bag(i) for i in range(6)] == [65535, 0, 0, 9, 1, 1]  # grown: the rest default
    assert ihost.journal("winter")[-1].detail == "state: new bonus; dropped old"
    w.set_level(12)
    ihost.rollback("winter")  # down: int64_t -> int32_t, checked (12 fits)
    assert (w.get_level(), w.get_coins(), w.at_bag(0), w.get_old()) == (12, 1 << 40, 65535, 0)
    ihost.reload("winter", v2, allow_signature_change=True)
    w.set_level(1 << 33)
    with pytest.raises(StateMigrationError, match=r"field level holds 8589934592.*keeps serving"):
        ihost.rollback("winter")
    assert w.get_level() == 1 << 33 and ihost.current("winter").seq == 4


def test_isolated_narrowing_is_refused_and_a_migration_runs_in_the_worker(
    ihost: Host, cc: Compile
) -> None:
    w = ihost.load(cc(winter("1.0.0", [("int64_t", "coins")]), "n1"), isolate=True)
    w.set_coins(40)
    with pytest.raises(StateMigrationError, match=r"field coins changed from int64_t"):
        ihost.reload(
            "winter", cc(winter("2.0.0", [("int32_t", "coins")]), "n2"), allow_signature_change=True
        )
    assert w.get_coins() == 40 and [v.seq for v in ihost.versions("winter")] == [1]
    ihost.unload("winter")
    fields = [("int64_t", "coins"), ("int32_t", "level")]
    w = ihost.load(cc(winter("1.0.0", fields), "m1"), isolate=True)
    w.set_coins(15)
    w.set_level(3)
    ihost.reload("winter", cc(_migrating("100.0"), "m2"), allow_signature_change=True)
    assert w.coins_now() == 1500.0 and w.get_level() == 3  # HOTLOAD_MIGRATE ran in a worker
    ihost.rollback("winter")  # the newer build's function, down=1, in its worker
    assert w.get_coins() == 15 and w.get_level() == 3


KILL = "#include <signal.h>\n#include <unistd.h>\n"
GARBAGE = r"""
        { static const char junk[] = "\xff\xff\xff\x7fgarbage";
          for (int fd = 3; fd < 64; fd++) (void)!write(fd, junk, sizeof junk); }
"""


@pytest.mark.parametrize(
    ("what", "body", "why"),
    [
        ("killed", "        kill(getpid(), SIGKILL);\n", "SIGKILL"),
        ("garbage", GARBAGE, "garbage"),
    ],
)
def test_a_worker_killed_or_answering_garbage_in_the_handover_refuses_the_swap(
    ihost: Host, cc: Compile, what: str, body: str, why: str
) -> None:
    fields = [("int64_t", "coins"), ("int32_t", "level")]
    w = ihost.load(cc(winter("1.0.0", fields), f"{what}1"), isolate=True)
    w.set_coins(66)
    src = KILL + _migrating("1.0").replace(
        "        if (*(const int64_t *)from == REFUSE) return 7;\n".replace("REFUSE", "-1"), body
    )
    assert body in src
    with pytest.raises(StateMigrationError, match=rf"state handover failed.*{why}") as err:
        ihost.reload("winter", cc(src, f"{what}2"), allow_signature_change=True)
    assert "the running version keeps serving" in str(err.value)
    assert w.get_coins() == 66 and [v.seq for v in ihost.versions("winter")] == [1]
    w.set_coins(67)  # the old worker serves on, its state intact
    assert w.get_coins() == 67 and ihost.current("winter").worker == "running"


def test_a_state_over_the_inline_limit_crosses_on_the_socket(ihost: Host, cc: Compile) -> None:
    """160 KB of state, over the 64 KiB a call carries in shared memory."""
    big = [("int64_t[20000]", "big"), ("int32_t", "level")]
    w = ihost.load(cc(winter("1.0.0", big), "b1"), isolate=True)
    for i in (0, 9_999, 19_999):
        w.put_big(i, i + 1)
    w.set_level(3)
    wider = [("int64_t[20000]", "big"), ("int64_t", "level"), ("int32_t", "extra")]
    ihost.reload("winter", cc(winter("2.0.0", wider, init=".extra = 4"), "b2"),
                 allow_signature_change=True)  # fmt: skip
    assert [w.at_big(i) for i in (0, 1, 9_999, 19_999)] == [1, 0, 10_000, 20_000]
    assert (w.get_level(), w.get_extra()) == (3, 4)


def test_a_state_pointer_the_worker_cannot_use_refuses_the_swap(ihost: Host, cc: Compile) -> None:
    """The new build's ``hotload_state`` is NULL: its worker refuses the state
    message, the swap is refused, the old worker serves on with its state."""
    from test_state_typed import HAND_MADE

    good = HAND_MADE + (
        "HOTLOAD_STATE(winter_state_t, state);\n"
        "HOTLOAD_API void set(int64_t v) { state.coins = v; }\n"
        "HOTLOAD_EXPORT(set, void, (int64_t));\n"
    )
    null = HAND_MADE.replace('"1.0.0"', '"2.0.0"') + (
        "HOTLOAD_API void *const hotload_state = 0;\n"
        'HOTLOAD__RECORD_N(hotload__state, HOTLOAD__REC4("state") "winter_state_t\\x1f"'
        ' "hotload_state", 8, 8);\n'
    )
    w = ihost.load(cc(good, "ptr1"), isolate=True)
    w.set(5)
    with pytest.raises(StateMigrationError, match=r"its hotload_state is 0x0.*keeps serving"):
        ihost.reload("winter", cc(null, "ptr2"), allow_signature_change=True)
    assert w.get() == 5 and [v.seq for v in ihost.versions("winter")] == [1]
