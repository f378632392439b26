"""The judged fleet bake (issue 22 item 3): time from the first degraded
second to the rollout's abort, on as many local host *processes* as the
machine allows (the issue asks 50).

Each host is its own Python process: a ``Host`` serving ``reward`` (which
calls the host service ``audit``), a player thread calling it ``RATE`` times
a second, and the fleet agent (default 2.5 s heartbeat).  Every host is in
the canary step (``--canary role=canary``, share 1.0, bake 30 s, the default
judge).  The build rolled out fails 1 % of its ``audit`` calls.  The clock
starts when the step's desired state is written: the first degraded second
starts after that (a host fetches, loads and starts its canary first), so
the figure is an upper bound.  It stops when the controller decides to abort
(a host's judge aborted and reported) and, second figure, when every host
reported being back on the previous build.  ``ROUNDS`` rollouts of distinct
bad builds; the median and the worst.  Target: abort within 10 s.

``python benchmarks/bench_fleet_judged.py [HOSTS]``; ``make bench`` runs it
with ``HOSTS`` (or ``$HOTLOAD_BENCH_FLEET_HOSTS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from bench_fleet import _redis

from hotload._errors import RolloutFailed
from hotload.fleet import Fleet
from hotload.fleet._signing import public_hex, write_private_key

from common import limit_row, median, row, scratch, text_row

HOSTS = int(os.environ.get("HOTLOAD_BENCH_FLEET_HOSTS", "50"))
RATE = 2000  # calls a second per host
ROUNDS = 3
SHARES = (1.0, 0.05)  # the canary's share of the players on each host
AA_BAKE = 10.0  # seconds each A/A canary is judged

REWARD = r"""
#include <hotload.h>
#include <stdint.h>
HOTLOAD_PLUGIN("reward", "MULT.FAIL");
HOTLOAD_IMPORT(audit, int32_t, (int64_t));
HOTLOAD_API int64_t reward(int64_t player, int32_t level)
{
    if (audit) audit(FAIL && player % 100 == 42 ? -1 : player);
    return player * MULT + level;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
"""

HOST = textwrap.dedent(
    """
    import sys, threading, time
    from hotload import Host

    url, name, path, work, rate, key = sys.argv[1:7]
    rate = int(rate)

    def audit(player):
        if player < 0:
            raise ValueError("audit refused")
        return 0

    host = Host(work, preflight=False)
    host.provide("audit", audit, "int32_t(int64_t)", error=-1)
    host.load(path)
    host.join_fleet(url, {"role": "canary"}, name=name, public_key=key)

    def play():
        i, batch = 0, max(1, rate // 100)
        while True:
            t = time.monotonic()
            for _ in range(batch):
                i += 1
                try:
                    host["reward"].reward(i % 10000, 1)
                except Exception:
                    pass
            time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))

    threading.Thread(target=play, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    host.close()
    """
)


def _build(tmp: Path, mult: int, fail: int) -> Path:
    from hotload._artifact.builder import compile_plugin

    src = tmp / f"reward-{mult}-{fail}.c"
    src.write_text(REWARD.replace("MULT", str(mult)).replace("FAIL", str(fail)))
    out = tmp / f"reward-{mult}-{fail}.so"
    compile_plugin(src, out, extra_cflags=["-O2"])
    return out


def _start_hosts(tmp: Path, url: str, base: Path, key: str, n: int) -> list[Any]:
    script = tmp / "host.py"
    script.write_text(HOST)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state")}
    procs = []
    for i in range(n):
        args = [url, f"h{i}", str(base), str(tmp / f"w{i}"), str(RATE), key]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # each failed audit is logged: 20 a second a host
                env=env,
                text=True,
            )
        )
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs


def _round(f: Fleet, digest: str, share: float) -> dict[str, Any]:
    """One rollout of a bad build: seconds to the abort, to every host back."""
    marks: dict[str, float] = {}

    def progress(line: str) -> None:
        for word in ("step 1/", "aborting:", "aborted:"):
            if line.startswith(word):
                marks.setdefault(word, time.monotonic())

    try:
        f.rollout(
            "reward",
            digest,
            canary="role=canary",
            bake=30,
            share=share,
            poll=0.05,
            progress=progress,
        )
    except RolloutFailed as exc:
        rec = exc.record
    else:
        rec = {"state": "done"}
    t0 = marks.get("step 1/", 0.0)
    back = len(rec.get("members") or []) - len(rec.get("not_reverted") or {})
    return {
        "abort": marks.get("aborting:", float("inf")) - t0,
        "back": marks.get("aborted:", float("inf")) - t0,
        "reason": str(rec.get("reason", rec.get("state"))),
        "hosts_back": back,
    }


def _aa(f: Fleet, digest: str, share: float, hosts: int) -> int:
    """A/A: the same code with another constant rolled out with a budget of
    every host, so that each host's judge decides alone: how many aborted."""
    rec = f.rollout(
        "reward", digest, canary="role=canary", bake=AA_BAKE, share=share, max_failures=hosts
    )
    return len(rec.get("failures") or {})


def run(hosts: int = HOSTS) -> dict[str, Any]:
    tmp = scratch()
    base = _build(tmp, 2, 0)
    bads = [_build(tmp, 3 + i, 1) for i in range(ROUNDS * len(SHARES))]
    goods = [_build(tmp, 100 + i, 0) for i in range(len(SHARES))]
    proc, url = _redis(tmp)
    (tmp / "keys").mkdir(mode=0o700)
    key = write_private_key(tmp / "keys" / "fleet.pem")
    procs: list[Any] = []
    out: dict[str, Any] = {"hosts": hosts}
    try:
        with Fleet(url, signing_key=key) as f:
            procs = _start_hosts(tmp, url, base, public_hex(key), hosts)
            while sum(h["alive"] for h in f.hosts()) < hosts:
                time.sleep(0.1)
            time.sleep(3.0)  # every baseline past the judge's minimum calls
            for i, share in enumerate(SHARES):
                builds = bads[i * ROUNDS : (i + 1) * ROUNDS]
                rounds = [_round(f, f.publish(b), share) for b in builds]
                out[share] = {
                    "abort": [r["abort"] for r in rounds],
                    "back": [r["back"] for r in rounds],
                    "reason": rounds[0]["reason"],
                    "hosts_back": min(r["hosts_back"] for r in rounds),
                }
            for share, good in zip(SHARES, goods, strict=True):
                out[share]["aa"] = _aa(f, f.publish(good), share, hosts)
        out["load"] = os.getloadavg()[0]
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        proc.terminate()
        proc.wait(10)
    return out


def report(r: dict[str, Any]) -> list[str]:
    n = r["hosts"]
    lines = [
        f"judged fleet bake: {n} host processes x {RATE} calls/s, every host a canary, "
        f"a build failing 1% of its service calls, {ROUNDS} rollouts per share "
        f"(load average {r['load']:.1f} on {os.cpu_count()} cores)"
    ]
    for share in SHARES:
        s = r[share]
        at = f"share {share:g}: "
        lines += [
            limit_row(f"{at}step written -> abort, median", median(s["abort"]), "s", 10.0, "<="),
            row(f"{at}step written -> abort, worst", max(s["abort"]), "s"),
            row(f"{at}step written -> every host back, median", median(s["back"]), "s"),
            text_row(f"{at}hosts back (fewest in a round)", f"{s['hosts_back']} of {n}"),
            text_row(f"{at}reason", s["reason"][:150]),
            text_row(
                f"{at}A/A: hosts whose judge aborted a good build",
                f"{s['aa']} of {n} (bake {AA_BAKE:g} s)",
            ),
        ]
    return lines


if __name__ == "__main__":
    print("\n".join(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else HOSTS))))
