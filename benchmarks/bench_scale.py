"""Scale (figure 5): the cost of one reload, and of listing every version
(what ``hotload ls`` does), in a host with 200 plugins loaded vs a host with
1, in the same process and run.  Target: reload cost does not grow with the
number of plugins loaded (<= 1.25x, the noise margin of this machine).

The 200 plugins are copies of one build, each renamed in its descriptor
(the plugin name is a fixed-width string, patched in place: same length, so
the ELF layout is untouched); compiling 200 would only slow the run down.
Both hosts run with preflight off: preflight adds the same constant to
each reload whatever the number of plugins.  Reload samples alternate
between the two hosts round by round, each host settled in between.

When the control channel exists (``Host.serve_control``), ``ls`` over the
socket is timed too, and when the CLI exists (``hotload._cli.main``), ``hotload
ls`` end to end (a new Python process each time).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from hotload import Host

from common import build_bench, median, now, row, scratch, text_row, timed

PLUGINS = 200
ROUNDS = 100
LS_ROUNDS = 15
CLI_ROUNDS = 3
_NAME = b"scale000"


def _named_copies(tmp: Path, count: int) -> list[Path]:
    """``count`` loadable plugins named scale000, scale001, ..."""
    base = build_bench(tmp / "scale.so", name=_NAME.decode()).read_bytes()
    marker = b"\x1f" + _NAME + b"\x1f"
    if base.count(marker) != 1:
        raise RuntimeError("cannot find the plugin name in the descriptor to patch")
    out = tmp / "plugins"
    out.mkdir()
    paths = []
    for i in range(count):
        path = out / f"scale{i:03d}.so"
        path.write_bytes(base.replace(marker, b"\x1f" + b"scale%03d" % i + b"\x1f"))
        paths.append(path)
    return paths


def _ls(host: Host) -> list[Any]:
    """What ``hotload ls`` asks the host for: every version of every plugin."""
    return [host.versions(name) for name in host.names()]


def _control_ls(host: Host, directory: Path) -> float | None:
    if not hasattr(host, "serve_control"):
        return None
    from hotload._ops import control_client

    sock = host.serve_control(directory=directory).describe()["socket"]
    control_client.request(sock, "ls")
    return median([timed(lambda: control_client.request(sock, "ls")) for _ in range(LS_ROUNDS)])


def _cli_ls(host: Host) -> float | str:
    """``hotload ls`` end to end, as the console script runs it."""
    if importlib.util.find_spec("hotload._cli.main") is None:
        return "skipped: hotload CLI (hotload._cli.main) not available"
    sock = host.serve_control().describe()["socket"]
    code = (
        "import sys; from hotload._cli.main import main; sys.argv[0] = 'hotload'; sys.exit(main())"
    )
    samples = []
    for _ in range(CLI_ROUNDS):
        t0 = now()
        proc = subprocess.run(
            [sys.executable, "-c", code, "ls", "--socket", sock],
            capture_output=True,
            text=True,
            check=False,
        )
        samples.append(now() - t0)
        if proc.returncode != 0:
            return f"failed: hotload ls exited {proc.returncode}: {proc.stderr.strip()[-200:]}"
    return median(samples)


def _measure(small: Host, big: Host, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"reload 1": [], "reload 200": []}
    for _ in range(ROUNDS):
        out["reload 1"].append(timed(lambda: small.reload("scale000")))
        small.settle()
        out["reload 200"].append(timed(lambda: big.reload("scale000")))
        big.settle()
    for key, host in (("1", small), ("200", big)):
        _ls(host)
        out[f"ls {key}"] = median([timed(lambda h=host: _ls(h)) for _ in range(LS_ROUNDS)])
        ctl = tmp / f"ctl-{key}"
        ctl.mkdir(mode=0o700)
        out[f"control {key}"] = _control_ls(host, ctl)
        out[f"cli {key}"] = (
            _cli_ls(host) if out[f"control {key}"] is not None else "skipped: no control channel"
        )
    return out


def run() -> dict[str, Any]:
    tmp = scratch()
    paths = _named_copies(tmp, PLUGINS)
    with (
        Host(tmp / "work-1", preflight=False) as small,
        Host(tmp / "work-200", preflight=False) as big,
    ):
        small.load(paths[0])
        for path in paths:
            big.load(path)
        big.settle()
        out = _measure(small, big, tmp)
    for key in ("reload 1", "reload 200"):
        out[key] = median(out[key]) * 1e6
    return out


def _time_row(label: str, value: float | str | None, baseline: float | str | None) -> str:
    if not isinstance(value, float):
        return text_row(label, value or "skipped: Host.serve_control not available")
    base = baseline if isinstance(baseline, float) else None
    return row(label, value * 1e3, "ms", base * 1e3 if base else None, "vs 1 plugin")


def report(r: dict[str, Any]) -> list[str]:
    return [
        f"scale ({PLUGINS} plugins loaded vs 1; median of {ROUNDS} alternating reloads, "
        f"{LS_ROUNDS} listings)",
        row("reload() with 1 plugin loaded", r["reload 1"], "us"),
        row(
            f"reload() with {PLUGINS} plugins loaded",
            r["reload 200"],
            "us",
            r["reload 1"],
            "vs 1 plugin",
            1.25,
        ),
        _time_row("list all versions, 1 plugin", r["ls 1"], None),
        _time_row(f"list all versions, {PLUGINS} plugins", r["ls 200"], r["ls 1"]),
        row(f"  per plugin, {PLUGINS} plugins", r["ls 200"] * 1e6 / PLUGINS, "us"),
        _time_row("ls over the control socket, 1 plugin", r["control 1"], None),
        _time_row(
            f"ls over the control socket, {PLUGINS} plugins", r["control 200"], r["control 1"]
        ),
        _time_row("hotload ls end to end, 1 plugin", r["cli 1"], None),
        _time_row(f"hotload ls end to end, {PLUGINS} plugins", r["cli 200"], r["cli 1"]),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
