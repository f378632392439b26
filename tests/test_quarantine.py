"""Issue 22 item 4: a crash caused by one input does not take an isolated
plugin down for everyone.  An input that crashed the worker twice is
refused at once (``PluginQuarantinedError``) while every other input is
served; the crash-loop limit counts distinct inputs; a stopped plugin says
``stopped`` in ``ls`` and in the errors its calls get.  Real plugins compiled
here, real worker processes, real SIGSEGVs."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest

from hotload import (
    ConfigError,
    Host,
    Isolated,
    PluginCrashedError,
    PluginQuarantinedError,
    PluginStoppedError,
)
from hotload._cli import main as cli
from hotload._process import quarantine
from hotload._process.quarantine import Quarantine, fingerprint

from conftest import Compile, wait_for

DROPS = r"""
#include <hotload.h>
#include <string.h>
HOTLOAD_PLUGIN("drops", "VERSION");
/* player 1337 (a corrupt save) and every negative id crash it */
HOTLOAD_API int64_t drop_rate(int64_t player)
{
    if (player == 1337 || player < 0) { volatile int *p = NULL; *p = 1; }
    return player % 100;
}
HOTLOAD_EXPORT(drop_rate, int64_t, (int64_t));
HOTLOAD_API int32_t named(const char *who)
{
    if (strcmp(who, "mallory") == 0) { volatile int *p = NULL; *p = 1; }
    return (int32_t)strlen(who);
}
HOTLOAD_EXPORT(named, int32_t, (const char *));
"""


@pytest.fixture
def drops(cc: Compile):  # type: ignore[no-untyped-def]
    def build(version: str = "1") -> Path:
        return cc(DROPS.replace("VERSION", version), f"drops{version}")

    return build


def test_one_bad_input_is_quarantined_and_every_other_input_is_served(
    tmp_path: Path, drops
) -> None:  # type: ignore[no-untyped-def]
    """The issue's case: 1 call in 2,000 carries the bad player id, on one
    of two calling threads.  It crashes the worker twice, then is refused
    without reaching it; the other inputs keep being served (a call queued
    behind a crash fails with it, nothing more), and the plugin never stops."""
    with Host(tmp_path / "w", preflight=False) as host:
        p = host.load(drops(), isolate=True)
        outcome: dict[str, list[int]] = {"ok": [], "collateral": [], "bad": [], "refused": []}
        lock = threading.Lock()

        def player(offset: int) -> None:
            for i in range(6_000):
                who = 1337 if offset == 100_000 and i % 2_000 == 1_999 else offset + i
                try:
                    assert p.drop_rate(who) == who % 100
                    kind = "ok"
                except PluginQuarantinedError:
                    kind = "refused"
                except PluginCrashedError:
                    kind = "bad" if who == 1337 else "collateral"
                with lock:
                    outcome[kind].append(who)

        threads = [threading.Thread(target=player, args=(k * 100_000,)) for k in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        info = host.current("drops")
        assert info is not None
        assert outcome["bad"] == [1337, 1337] and outcome["refused"] == [1337]
        assert len(outcome["collateral"]) <= 2  # a call that waited behind a crash
        assert len(outcome["ok"]) == 12_000 - 3 - len(outcome["collateral"])
        assert (str(info.state), info.worker, info.quarantined) == ("active", "running", 1)
        assert info.restarts == 2
        with pytest.raises(PluginQuarantinedError, match=r"drop_rate\(1337\) crashed its worker 2"):
            p.drop_rate(1337)
        assert p.drop_rate(1338) == 38
        entries = [e for e in host.journal() if e.kind == "quarantine"]
        assert [e.detail for e in entries] == ["drop_rate(1337) quarantined after 2 crashes"]
        snap = host.metrics()["plugins"]["drops"]["versions"][-1]
        assert snap["quarantined"] == 1
        errors = snap["exports"]["drop_rate"]["errors"]
        assert errors["crash"] == 2  # the two real crashes; what was refused did not crash
        assert errors["stopped"] == 2 + len(outcome["collateral"])

        host.reload("drops")  # a new version: its quarantine starts empty
        with pytest.raises(PluginCrashedError) as again:
            p.drop_rate(1337)
        assert not isinstance(again.value, PluginQuarantinedError)
        assert host.current("drops").quarantined == 0  # type: ignore[union-attr]


def test_the_crash_loop_counts_distinct_inputs_and_a_stopped_plugin_says_so(
    tmp_path: Path, drops, capsys: pytest.CaptureFixture[str], short_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    """One input crashing again and again never stops the plugin; more
    distinct crashing inputs than ``max_restarts`` do, and then ``ls`` says
    ``stopped`` and a call's error says the plugin is stopped and why."""
    ctl = short_tmp / "ctl"
    ctl.mkdir(mode=0o700)
    with Host(tmp_path / "w", preflight=False) as host:
        sock = host.serve_control(directory=ctl).path
        p = host.load(drops(), isolate=Isolated(max_restarts=2))
        for _ in range(6):
            with pytest.raises(PluginCrashedError):
                p.drop_rate(1337)
        assert p.drop_rate(5) == 5
        assert host.current("drops").worker == "running"  # type: ignore[union-attr]
        for who in (-1, -2):  # inputs 2 and 3 within the window: past max_restarts
            with pytest.raises(PluginCrashedError):
                p.drop_rate(who)
            wait_for(lambda: host.current("drops").worker != "restarting")  # type: ignore[union-attr]
        info = host.current("drops")
        assert info is not None and info.worker == "stopped"
        with pytest.raises(PluginStoppedError) as stopped:
            p.drop_rate(7)
        text = str(stopped.value)
        assert "is stopped (crash loop: 4 crashes of 3 distinct inputs within 60 s" in text
        assert "this call was not run" in text and "SIGSEGV" in text
        stop = [e for e in host.journal() if e.kind == "stop"]
        assert len(stop) == 1 and stop[0].detail.startswith("crash loop: 4 crashes of 3 distinct")
        assert cli.main(["ls", "--json", "--socket", str(sock)]) == 0
        listed = json.loads(capsys.readouterr().out)["plugins"][0]["versions"][0]
        assert (listed["worker"], listed["quarantined"]) == ("stopped", 1)
        assert cli.main(["ls", "--socket", str(sock)]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if "drops" in line)
        assert " stopped [worker stopped, 3 restarts, 1 input quarantined]" in row, row
        assert " active" not in row


def test_without_a_quarantine_every_crash_counts(tmp_path: Path, drops) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "w", preflight=False) as host:
        p = host.load(drops(), isolate=Isolated(max_restarts=2, quarantine=0))
        for _ in range(3):
            with pytest.raises(PluginCrashedError) as err:
                p.drop_rate(1337)
            assert not isinstance(err.value, PluginQuarantinedError)
            wait_for(lambda: host.current("drops").worker != "restarting")  # type: ignore[union-attr]
        info = host.current("drops")
        assert info is not None and (info.worker, info.quarantined) == ("stopped", 0)


def test_a_string_input_is_quarantined_by_value(tmp_path: Path, drops) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "w", preflight=False) as host:
        p = host.load(drops(), isolate=True)
        for _ in range(2):
            with pytest.raises(PluginCrashedError):
                p.named("mallory")
        with pytest.raises(PluginQuarantinedError, match="named\\('mallory'\\)"):
            p.named("mallory")
        with pytest.raises(PluginQuarantinedError):
            p.named(b"mallory".decode())  # another object, the same value
        assert p.named("alice") == 5 and p.drop_rate(1337 - 1) == 36


def test_fingerprints_compare_values_and_stay_small() -> None:
    """Hostile and odd inputs: a 10 MB string is kept as a digest; a NaN is
    the same input as itself; True is not 1; a value with no comparable
    contents (a cffi pointer, a list) is never quarantined."""
    big = "x" * 10_000_000
    fp = fingerprint("f", (big,))
    assert fp is not None and len(repr(fp)) < 200
    assert fp == fingerprint("f", ("x" * 10_000_000,)) != fingerprint("f", (big + "y",))
    assert fingerprint("f", (math.nan,)) == fingerprint("f", (float("nan"),))
    assert fingerprint("f", (True,)) != fingerprint("f", (1,))
    assert fingerprint("f", (1,)) != fingerprint("g", (1,))
    assert fingerprint("f", ("\udcff",)) is not None  # a lone surrogate: still a value
    assert fingerprint("f", (b"ab",)) != fingerprint("f", ("ab",))
    assert fingerprint("f", ([1, 2],)) is None and fingerprint("f", (object(),)) is None


def test_the_quarantine_is_bounded() -> None:
    """A caller crashing the worker with ever new inputs cannot grow it."""
    q = Quarantine(2)
    for i in range(3 * quarantine.MAX_KEPT):
        q.crashed(("f", i))
        q.crashed(("f", i))
    assert len(q.refused) == quarantine.MAX_KEPT
    assert len(q.crashes) <= quarantine.MAX_KEPT
    off = Quarantine(0)
    assert not off.crashed(("f", 1)) and not off.crashed(("f", 1)) and not off.refused


@pytest.mark.parametrize("bad", [-1, True, "2", 2.0, None])
def test_a_bad_quarantine_setting_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="quarantine must be an integer >= 0"):
        Isolated(quarantine=bad)  # type: ignore[arg-type]
