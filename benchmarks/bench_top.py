"""``hotload top``: what one refresh costs, with 3 plugins and with 200 loaded.

A refresh is one ``ls`` over the control socket (the host's share: it builds
the answer on a control thread), then, in the ``top`` process, the answer's
check, the rates against the previous answer, and the drawing of the table
with ``rich`` (to a console that writes nowhere, 160 columns, every version
shown).  Figures are medians; the ratio is refresh / ``ls`` alone, measured
in the same run: what ``top`` adds to the request it cannot avoid.  At the
default interval (1 s) the fraction of one core a refresh takes is its time
in ms / 10 (as a percentage).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from bench_scale import _named_copies

from hotload import Host
from hotload._cli import top, top_data
from hotload._ops import control_client

from common import median, row, scratch, timed

PLUGINS = (3, 200)
ROUNDS = 15


def _refresh(sock: str, prev: top_data.Sample, console: Any) -> top_data.Sample:
    listing = top_data.check_listing(control_client.request(sock, "ls"))
    cur = top_data.Sample(time.monotonic(), time.time(), listing)
    view = top_data.build_view(prev, cur, top_data.Controls(all_versions=True))
    console.print(top._render(view, top_data.Controls(), None, "up/down", True, console))
    return cur


def _measure(host: Host, ctl: Path) -> dict[str, float]:
    from rich.console import Console

    sock = str(host.serve_control(directory=ctl).path)
    console = Console(file=io.StringIO(), width=160, force_terminal=True)
    control_client.request(sock, "ls")
    ls = median([timed(lambda: control_client.request(sock, "ls")) for _ in range(ROUNDS)])
    prev = top_data.Sample(time.monotonic(), time.time(), control_client.request(sock, "ls"))
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        prev = _refresh(sock, prev, console)
        samples.append(time.perf_counter() - t0)
        console.file = io.StringIO()  # type: ignore[assignment]
    return {"ls": ls * 1e3, "refresh": median(samples) * 1e3}


def run() -> dict[str, Any]:
    tmp = scratch()
    paths = _named_copies(tmp, max(PLUGINS))
    out: dict[str, Any] = {}
    for n in PLUGINS:
        with Host(tmp / f"work-{n}", preflight=False) as host:
            for path in paths[:n]:
                host.load(path)
            host.settle()
            ctl = tmp / f"ctl-{n}"
            ctl.mkdir(mode=0o700)
            out[n] = _measure(host, ctl)
    return out


def report(r: dict[str, Any]) -> list[str]:
    lines = [f"hotload top (one refresh: ls over the socket + rates + drawing; median of {ROUNDS})"]
    for n in PLUGINS:
        lines.append(row(f"ls over the control socket, {n} plugins", r[n]["ls"], "ms"))
        lines.append(
            row(f"one top refresh, {n} plugins", r[n]["refresh"], "ms", r[n]["ls"], "vs ls alone")
        )
    return lines


if __name__ == "__main__":
    print("\n".join(report(run())))
