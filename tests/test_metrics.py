"""Per-version, per-export call figures (issue 21 items 1): each figure moves
as it should, on the version that earned it, in both routers (the Makefile
runs this file again with HOTLOAD_PURE_PYTHON=1), in process and isolated.

Real plugins compiled here, real threads, real worker processes."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hotload import Host, Isolated, PluginCrashedError, PluginStoppedError, SignatureError
from hotload._cli import main as cli
from hotload._engine import lifecycle, metrics

from conftest import Compile, wait_for

SRC = r"""
#define _DEFAULT_SOURCE
#include <hotload.h>
#include <unistd.h>
#include <signal.h>

HOTLOAD_PLUGIN("meter", "VERSION");

HOTLOAD_API int32_t clamp(int32_t x) { return x > 100 ? 100 : x; }
HOTLOAD_EXPORT(clamp, int32_t, (int32_t));

HOTLOAD_API int64_t nap(int32_t us) { usleep((useconds_t)us); return us; }
HOTLOAD_EXPORT(nap, int64_t, (int32_t));

HOTLOAD_API int32_t die(int32_t how) { if (how) raise(SIGSEGV); return 0; }
HOTLOAD_EXPORT(die, int32_t, (int32_t));
"""

TOO_BIG = 2**40  # beyond int32_t: the argument rule refuses it (SignatureError)


@pytest.fixture
def meter(cc: Compile, tmp_path: Path):  # type: ignore[no-untyped-def]
    target = tmp_path / "build" / "meter.so"

    def make(version: str = "1.0.0") -> Path:
        return cc(SRC.replace("VERSION", version), "meter", out=target)

    return make


def info(host: Host, seq: int):  # type: ignore[no-untyped-def]
    return next(i for i in host.versions("meter") if i.seq == seq)


def version_of(snap: dict, seq: int) -> dict:  # type: ignore[type-arg]
    return next(v for v in snap["plugins"]["meter"]["versions"] if v["seq"] == seq)


def test_every_tenth_call_refused_shows_10_percent_on_that_version_only(
    tmp_path: Path,
    meter,
    isolate,  # type: ignore[no-untyped-def]
) -> None:
    with Host(tmp_path / "work", preflight=False, metrics_sample=1) as host:
        p = host.load(meter(), isolate=isolate)
        for i in range(50):
            assert p.clamp(i) == i
        before = version_of(host.metrics(), 1)
        host.reload("meter", meter("2.0.0"))
        for i in range(100):
            if i % 10 == 9:
                with pytest.raises(SignatureError):
                    p.clamp(TOO_BIG)
            else:
                p.clamp(i)
        v1, v2 = info(host, 1), info(host, 2)
        assert (v1.errors, v2.errors) == (0, 10)
        assert v2.crashes == v2.timeouts == 0
        snap = host.metrics()
        json.dumps(snap)  # plain data
        clamp2 = version_of(snap, 2)["exports"]["clamp"]
        assert clamp2["calls"] == 100 and clamp2["in_flight"] == 0
        assert clamp2["errors"] == {
            "argument": 10,
            "crash": 0,
            "timeout": 0,
            "stopped": 0,
            "other": 0,
        }
        assert clamp2["errors"]["argument"] / clamp2["calls"] == pytest.approx(0.10)
        after = version_of(snap, 1)
        assert after["calls"] == before["calls"] == 50  # the old version's figures unchanged
        assert after["exports"]["clamp"]["errors"] == before["exports"]["clamp"]["errors"]
        assert snap["plugins"]["meter"]["calls"] == 150
        assert snap["plugins"]["meter"]["errors"]["argument"] == 10


def test_a_slow_export_shows_its_latency_in_the_right_buckets(tmp_path: Path, meter) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False, metrics_sample=1) as host:
        p = host.load(meter())
        outer = []
        for _ in range(20):
            t0 = time.perf_counter_ns()
            p.nap(3000)  # usleep(3 ms): at least 3 ms
            outer.append(time.perf_counter_ns() - t0)
        for i in range(200):
            p.clamp(i)
        snap = version_of(host.metrics(), 1)["exports"]
        nap, clamp = snap["nap"]["latency"], snap["clamp"]["latency"]
        assert nap["sampled"] == 20 and clamp["sampled"] == 200
        # to within one bucket (12.5 %): never below the 3 ms it slept, never above what
        # the caller measured around each call
        assert nap["p50_us"] >= 3000 * 0.875
        assert nap["p99_us"] <= max(outer) / 1000 * 1.125
        assert 3000 * 0.875 <= nap["sum_ns"] / 20 / 1000 <= sum(outer) / 20 / 1000
        for upper, _count in nap["buckets"]:
            assert upper is None or upper > 3000_000 * 0.875
        assert sum(c for _, c in nap["buckets"]) == 20
        assert clamp["p99_us"] is not None and clamp["p50_us"] < nap["p50_us"]
        v = info(host, 1)
        assert v.p50_us is not None and v.p99_us is not None and v.p50_us <= v.p99_us


def test_before_any_sampled_call_the_quantiles_are_none(tmp_path: Path, meter) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False) as host:
        host.load(meter())
        v = host.current("meter")
        assert v is not None and v.p50_us is None and v.p99_us is None and v.errors == 0
        d = v.as_dict()
        assert {"errors", "crashes", "timeouts", "p50_us", "p99_us"} <= set(d)
        json.dumps(d)


@pytest.mark.parametrize("sample", [1, 7])
def test_counts_are_exact_under_four_threads(tmp_path: Path, meter, sample: int) -> None:  # type: ignore[no-untyped-def]
    per_thread, threads = 5000, 4
    with Host(tmp_path / "work", preflight=False, metrics_sample=sample) as host:
        p = host.load(meter())
        clamp = p.clamp
        start = threading.Barrier(threads)

        def work() -> None:
            start.wait()
            for i in range(per_thread):
                clamp(i)

        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        e = version_of(host.metrics(), 1)["exports"]["clamp"]
        assert e["calls"] == per_thread * threads
        assert e["in_flight"] == 0
        lat = e["latency"]
        assert sum(c for _, c in lat["buckets"]) == lat["sampled"]
        if sample == 1:
            assert lat["sampled"] == per_thread * threads
        else:  # one call in 7 of the export on average, at random, whichever thread made it
            assert abs(lat["sampled"] - per_thread * threads / 7) <= 300  # ~7 s.d.


def test_sampling_times_one_call_in_n_and_counts_every_call(tmp_path: Path, meter) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False, metrics_sample=10) as host:
        p = host.load(meter())
        for i in range(10_000):
            p.clamp(i)
        e = version_of(host.metrics(), 1)["exports"]["clamp"]
        # exact counts; about 1,000 timed (at random gaps: ~30 s.d.), the first call always
        assert e["calls"] == 10_000 and 800 <= e["latency"]["sampled"] <= 1200


def test_metrics_off_counts_nothing_and_calls_still_work(tmp_path: Path, meter) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False, metrics=False) as host:
        p = host.load(meter())
        assert [p.clamp(i) for i in (1, 200)] == [1, 100]
        with pytest.raises(SignatureError):
            p.clamp(TOO_BIG)
        snap = host.metrics()
        assert snap["sample"] == 0
        v = version_of(snap, 1)
        # unknown, not zero: a 0 beside CALLS 3 read as "no errors" (new-user review)
        assert v["calls"] is None and v["errors"] is None and v["exports"] == {}
        assert snap["plugins"]["meter"]["calls"] is None
        info = host.current("meter")
        assert info is not None and info.served == 3
        assert (info.errors, info.crashes, info.timeouts, info.p99_us) == (None,) * 4
        assert cli._version_row(json.loads(json.dumps(info.as_dict())))[4:7] == ("3", "-", "-")
        fams = {
            f.name: f.samples
            for f in text_string_to_metric_families(urlopen(host.serve_metrics()).read().decode())
        }
        assert not fams.get("hotload_calls") and not fams.get("hotload_plugin_calls")
        assert {s.labels["state"]: s.value for s in fams["hotload_versions"]}["active"] == 1


def test_a_bad_sample_setting_is_refused(tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="metrics_sample"):
            Host(tmp_path / "work", metrics_sample=bad)  # type: ignore[arg-type]


def test_counters_never_go_backwards_across_swaps(tmp_path: Path, meter) -> None:  # type: ignore[no-untyped-def]
    """A caller hammers the plugin while it is reloaded 25 times with a history
    of 2: every version's counts, and the plugin's total (pruned versions
    folded in), only ever grow."""
    with Host(tmp_path / "work", preflight=False, history_limit=2) as host:
        p = host.load(meter())
        stop = threading.Event()
        made = [0]

        def call() -> None:
            while not stop.is_set():
                p.clamp(1)
                made[0] += 1

        t = threading.Thread(target=call)
        t.start()
        seen: dict[int, int] = {}
        total = 0
        try:
            for k in range(25):
                host.reload("meter", meter(f"1.{k + 1}.0"))
                snap = host.metrics()["plugins"]["meter"]
                assert snap["calls"] >= total
                total = snap["calls"]
                for v in snap["versions"]:
                    assert v["calls"] >= seen.get(v["seq"], 0)
                    seen[v["seq"]] = v["calls"]
        finally:
            stop.set()
            t.join()
        host.settle()
        snap = host.metrics()["plugins"]["meter"]
        assert snap["pruned_versions"] > 0
        assert snap["calls"] == made[0]  # exact: nothing lost with the pruned versions
        assert snap["swaps"]["reload"] == {"ok": 25, "refused": 0}


def test_a_plugins_total_never_goes_back_while_another_thread_reads_it(
    tmp_path: Path, meter
) -> None:  # type: ignore[no-untyped-def]
    """A reader polling ``metrics()`` while versions are pruned (history 1,
    reloads as fast as they go, a caller on the plugin): the plugin's total
    went back when a prune fell between the reads of the folded counts and of
    the history (the attacker's review; Prometheus reads that as a reset)."""
    builds = [meter("1.0.0"), tmp_path / "b2.so"]
    builds[1].write_bytes(builds[0].read_bytes())
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # a thread switch between any two bytecodes
    try:
        with Host(tmp_path / "work", preflight=False, history_limit=1) as host:
            p = host.load(builds[0])
            stop = threading.Event()
            back: list[tuple[int, int]] = []

            def call() -> None:
                while not stop.is_set():
                    p.clamp(1)

            def read() -> None:
                last = 0
                while not stop.is_set():
                    now = host.metrics()["plugins"]["meter"]["calls"]
                    if now < last:
                        back.append((last, now))
                    last = now

            threads = [threading.Thread(target=call), threading.Thread(target=read)]
            for t in threads:
                t.start()
            try:
                for k in range(150):
                    host.reload("meter", builds[k % 2])
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            assert host.metrics()["plugins"]["meter"]["pruned_versions"] > 50
    finally:
        sys.setswitchinterval(before)
    assert not back, f"the total went back {len(back)} time(s), first {back[0]}"


def test_a_refused_reload_is_counted_as_refused(tmp_path: Path, meter, cc: Compile) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False) as host:
        host.load(meter())
        bad = tmp_path / "bad.so"
        bad.write_bytes(b"not an ELF file at all")
        with pytest.raises(Exception, match="bad.so"):
            host.reload("meter", bad)
        swaps = host.metrics()["plugins"]["meter"]["swaps"]
        assert swaps["load"] == {"ok": 1, "refused": 0}
        assert swaps["reload"] == {"ok": 0, "refused": 1}


def test_the_bucket_arithmetic_is_the_same_in_c_and_python() -> None:
    c = lifecycle._crouter
    values = [0, 1, 63, 64, 65, 71, 72, 127, 128, 1000, 2**20 + 12345, 2**36 - 1, 2**36, 2**62]
    values += [int(1.37**k) for k in range(1, 130)]
    for ns in values:
        b = metrics.bucket(ns)
        assert metrics.LOWER[b] <= ns < metrics.UPPER[b], ns
        if c is not None:  # the compiled router's own (not built, or HOTLOAD_PURE_PYTHON=1)
            assert c.HIST_BUCKETS == metrics.BUCKETS
            assert c.hist_bucket(ns) == b, ns
    widths = [(metrics.UPPER[b] - metrics.LOWER[b]) / metrics.LOWER[b] for b in range(1, 241)]
    assert max(widths) <= 0.125  # a quantile is known to within 12.5 %


# ---- isolated: crashes, timeouts, stopped workers ------------------------------------
def test_a_crash_counts_on_the_crashing_version(tmp_path: Path, meter) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False, metrics_sample=1) as host:
        p = host.load(meter(), isolate=Isolated(on_crash="stop"))
        for i in range(10):
            p.clamp(i)
        host.reload("meter", meter("2.0.0"))
        for i in range(9):
            p.clamp(i)
        with pytest.raises(PluginCrashedError) as crash:
            p.die(1)
        assert not isinstance(crash.value, PluginStoppedError)
        with pytest.raises(PluginStoppedError, match="SIGSEGV"):  # no worker now: stopped
            p.clamp(1)
        v1, v2 = info(host, 1), info(host, 2)
        assert (v1.errors, v1.crashes) == (0, 0)
        assert (v2.errors, v2.crashes, v2.timeouts) == (2, 1, 0)
        e = version_of(host.metrics(), 2)["exports"]
        assert e["die"]["errors"]["crash"] == 1 and e["die"]["calls"] == 1
        assert e["clamp"]["errors"]["stopped"] == 1 and e["clamp"]["calls"] == 10


def test_a_timeout_counts_as_a_timeout(tmp_path: Path, meter) -> None:  # type: ignore[no-untyped-def]
    with Host(tmp_path / "work", preflight=False) as host:
        p = host.load(meter(), isolate=Isolated(call_timeout=0.3))
        with pytest.raises(PluginCrashedError, match="did not return"):
            p.nap(3_000_000)
        wait_for(lambda: host.current("meter").worker == "running", what="the restart")  # type: ignore[union-attr]
        assert p.clamp(5) == 5
        v = info(host, 1)
        assert (v.errors, v.crashes, v.timeouts) == (1, 0, 1)
        nap = version_of(host.metrics(), 1)["exports"]["nap"]
        assert nap["errors"]["timeout"] == 1


def test_an_isolated_plugin_failing_every_tenth_call_with_a_crash(tmp_path: Path, meter) -> None:  # type: ignore[no-untyped-def]
    """A worker that dies every 10th call and is restarted: 10 % crashes, all on v2."""
    with Host(tmp_path / "work", preflight=False, metrics_sample=1) as host:
        p = host.load(meter(), isolate=Isolated(max_restarts=100))
        p.clamp(1)
        host.reload("meter", meter("2.0.0"))
        for i in range(30):
            wait_for(lambda: host.current("meter").worker == "running", what="the restart")  # type: ignore[union-attr]
            if i % 10 == 9:
                with pytest.raises(PluginCrashedError):
                    p.die(i)  # a new input each time: one input would be quarantined
            else:
                p.die(0)
        e = version_of(host.metrics(), 2)["exports"]["die"]
        assert e["calls"] == 30 and e["errors"]["crash"] == 3
        assert version_of(host.metrics(), 1)["errors"]["crash"] == 0


def test_sampled_calls_fall_at_no_fixed_phase_of_periodic_traffic(
    cc: Compile, tmp_path: Path
) -> None:
    """Found by an attacker: every 64th call was timed at a fixed phase, so
    traffic with a period that divides 64 (two players taking turns) had all
    its samples on one kind of call, and the canary judge compared such
    samples (A/A aborted 8 times of 8, a 3x slower build promoted).  Fast
    and slow calls alternate here: both must be in the samples."""
    src = r"""
    #include <hotload.h>
    #include <stdint.h>
    HOTLOAD_PLUGIN("tick", "1");
    HOTLOAD_API int64_t tick(int64_t slow)
    {
        volatile uint64_t x = 0;
        for (int64_t i = 0; i < slow * 20000; i++) x += (uint64_t)i;
        return (int64_t)x;
    }
    HOTLOAD_EXPORT(tick, int64_t, (int64_t));
    """
    with Host(tmp_path / "work", metrics_sample=16) as host:
        p = host.load(cc(src, "tick"))
        for _ in range(16 * 200):
            p.tick(0)
            p.tick(1)
        from hotload._engine import judge

        hist = judge.read(host._table.loaded("tick").current).hist
    slow_from = metrics.bucket(4_000)  # 20,000 additions: well over 4 us; a bare call: well under
    slow = sum(c for i, c in hist.items() if i >= slow_from)
    fast = sum(c for i, c in hist.items() if i < slow_from)
    assert fast + slow >= 300, hist
    assert 0.25 < slow / (fast + slow) < 0.75, (fast, slow)
