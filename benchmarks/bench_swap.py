"""Swap latency (figure 3): ``host.reload()`` vs the floor, same file, same run.

The floor is what any hot reload must at least do: copy the file, ``dlopen``
the copy (ctypes, ``RTLD_NOW``) and ``dlclose`` the previous one.  Figures:

- preflight off (``Host(preflight=False)``), the same bytes reloaded: the
  target is p50 <= 2x the floor;
- preflight off, a *fresh build* each time (new bytes, new digest): what a
  real rebuild costs, held to the same target;
- preflight on (the default): the target is p50 < 60 ms.

Method: floor and reload samples alternate round by round (a slow patch on
a shared machine or a busy file system then hits both), and the host is
settled (retired versions closed and verified) between samples, as it is
between the reloads of a real service; a burst of back-to-back reloads is
printed too, for information.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from hotload import Host

from common import build_bench, build_many, limit_row, now, percentiles, row, scratch, timed

ROUNDS = 200
FRESH = 40
PREFLIGHT_ROUNDS = 40
_dlclose = ctypes.CDLL(None).dlclose
_dlclose.argtypes = [ctypes.c_void_p]


class Floor:
    """Copy + dlopen + dlclose of the previous image, one sample per call."""

    def __init__(self, lib: Path, tmp: Path) -> None:
        self.lib, self.dir, self.i, self.old = str(lib), tmp / "floor", 0, None
        self.dir.mkdir()

    def sample(self, lib: Path | None = None) -> float:
        """One floor sample, of ``lib`` (default: the benchmark's fixed build)."""
        self.i += 1
        dst = str(self.dir / f"floor{self.i}.so")
        t0 = now()
        shutil.copyfile(str(lib) if lib is not None else self.lib, dst)
        handle = ctypes.CDLL(dst, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        if self.old is not None:
            _dlclose(self.old._handle)
        took = now() - t0
        self.old = handle
        os.unlink(dst)
        return took


def _install(build: Path, lib: Path) -> None:
    """Put a build at the plugin's path the way a build tool does (rename)."""
    tmp = lib.with_name(".incoming.so")
    shutil.copyfile(build, tmp)
    os.replace(tmp, lib)


def _same_bytes(tmp: Path, lib: Path, floor: Floor) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"floor": [], "same": [], "burst": []}
    with Host(tmp / "work-off", preflight=False) as host:
        host.load(lib)
        for _ in range(ROUNDS):
            out["floor"].append(floor.sample())
            out["same"].append(timed(lambda: host.reload("bench")))
            host.settle()
        out["burst"] = [timed(lambda: host.reload("bench")) for _ in range(ROUNDS)]
        host.settle()
        out["history"] = [float(len(host.versions("bench")))]
    return out


def _fresh_builds(
    tmp: Path, builds: list[Path], floor: Floor, *, preflight: bool
) -> dict[str, list[float]]:
    """Reload a new build each time (unseen bytes: nothing cached by digest)."""
    tag = "on" if preflight else "off"
    lib = tmp / f"fresh-{tag}" / "bench.so"
    lib.parent.mkdir()
    out: dict[str, list[float]] = {"floor": [], "fresh": []}
    with Host(tmp / f"work-fresh-{tag}", preflight=preflight) as host:
        _install(builds[0], lib)
        host.load(lib)
        for build in builds[1:]:
            _install(build, lib)
            out["floor"].append(
                floor.sample(lib)
            )  # the floor of this very file: "same file, same run"
            out["fresh"].append(timed(lambda: host.reload("bench")))
            host.settle()
    return out


def _preflight_on(tmp: Path, lib: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"on": []}
    with Host(tmp / "work-on") as host:  # preflight is on by default
        assert host.settings.preflight
        out["cold"] = [timed(lambda: host.load(lib))]  # its preflight starts the worker process
        host.settle()
        for _ in range(PREFLIGHT_ROUNDS):
            out["on"].append(timed(lambda: host.reload("bench")))
            host.settle()
    return out


def run() -> dict[str, float]:
    tmp = scratch()
    lib = build_bench(tmp / "bench.so")
    (tmp / "builds").mkdir()
    builds = build_many((tmp / "builds" / f"b{i}.so", 100 + i) for i in range(2 * FRESH + 2))
    floor = Floor(lib, tmp)
    raw = _same_bytes(tmp, lib, floor)
    fresh = _fresh_builds(tmp, builds[: FRESH + 1], floor, preflight=False)
    raw["fresh"], raw["floor fresh"] = fresh["fresh"], fresh["floor"]
    raw["fresh on"] = _fresh_builds(tmp, builds[FRESH + 1 :], floor, preflight=True)["fresh"]
    raw.update(_preflight_on(tmp, lib))
    out: dict[str, float] = {"history": raw.pop("history")[0], "cold": raw.pop("cold")[0] * 1e6}
    for key, samples in raw.items():
        out[f"{key} p50"], out[f"{key} p95"], out[f"{key} p99"] = (
            x * 1e6 for x in percentiles(samples)
        )
    return out


def report(r: dict[str, float]) -> list[str]:
    return [
        f"swap latency (stateless 16 KB plugin; {ROUNDS} reloads of the same bytes, {FRESH} of "
        f"fresh builds, "
        f"{FRESH} fresh + {PREFLIGHT_ROUNDS} same with preflight; floor samples interleaved)",
        row("floor: copy + dlopen + dlclose old, p50", r["floor p50"], "us"),
        row("floor p95", r["floor p95"], "us"),
        row(
            "preflight off, same bytes: reload() p50",
            r["same p50"],
            "us",
            r["floor p50"],
            "vs floor",
            2.0,
        ),
        row(
            "preflight off, same bytes: reload() p95",
            r["same p95"],
            "us",
            r["floor p95"],
            "vs floor p95",
        ),
        row("floor of each fresh build (same file), p50", r["floor fresh p50"], "us"),
        row(
            "preflight off, fresh build: reload() p50",
            r["fresh p50"],
            "us",
            r["floor fresh p50"],
            "vs its floor",
            2.0,
        ),
        row(
            "preflight off, fresh build: reload() p95",
            r["fresh p95"],
            "us",
            r["floor fresh p95"],
            "vs its floor p95",
        ),
        row(
            "preflight off, back-to-back burst: p50",
            r["burst p50"],
            "us",
            r["floor p50"],
            "vs floor",
        ),
        limit_row(
            "preflight on, fresh build: reload() p50",
            r["fresh on p50"] / 1e3,
            "ms",
            60.0,
            "<",
            f"({r['fresh on p50'] / r['floor p50']:.1f}x floor)",
        ),
        row("preflight on, fresh build: reload() p95", r["fresh on p95"] / 1e3, "ms"),
        limit_row(
            "preflight on, same bytes: reload() p50",
            r["on p50"] / 1e3,
            "ms",
            60.0,
            "<",
            f"({r['on p50'] / r['floor p50']:.1f}x floor)",
        ),
        row("preflight on: first load (starts the worker)", r["cold"] / 1e3, "ms"),
        row("versions kept in host.versions() after the run", r["history"], ""),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
