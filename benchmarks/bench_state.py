"""Typed state that follows its type (issue 23 item 3): 100 MB migrated.

A plugin keeps ``HOTLOAD_STATE`` with a 100 MB fixed array (filled, so every
page is real) beside a few scalar fields; the next build widens ``level``
(int32_t -> int64_t) and adds ``bonus``.  Measured inside real reloads, from
the host's own log lines: the migration at the switch (the live state copied
field by field from the old image's variable into the new one's: the
target, <= 100 ms), and the proof before it (old -> new -> old on copies:
three 100 MB copies and two plan runs).  A second pair widens a 100 MB
``int32_t[25M]`` array to ``int64_t`` (strided lane copies): informational."""

from __future__ import annotations

import logging
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from hotload import Host
from hotload._artifact.builder import compile_plugin
from hotload._state import apply

from common import limit_row, scratch, text_row

ROUNDS = 3
MB = 100_000_000

SRC = r"""
#include <string.h>
#include <hotload.h>
typedef struct { LEVEL level; int64_t coins; CELLS; EXTRA } big_state_t;
HOTLOAD_STRUCT(big_state_t);
HOTLOAD_FIELD(big_state_t, level, LEVEL);
HOTLOAD_FIELD(big_state_t, coins, int64_t);
HOTLOAD_FIELD(big_state_t, cells, CTYPE);
FIELDX
static big_state_t state;
HOTLOAD_STATE(big_state_t, state);
HOTLOAD_PLUGIN("big", "VERSION");
HOTLOAD_API int64_t fill(int32_t seed) {
    memset(state.cells, seed, sizeof state.cells); state.level = seed; state.coins = seed;
    return (int64_t)sizeof state; }
HOTLOAD_EXPORT(fill, int64_t, (int32_t));
HOTLOAD_API int64_t probe(int32_t i) { return (int64_t)state.cells[i] + state.level; }
HOTLOAD_EXPORT(probe, int64_t, (int32_t));
"""


def _build(tmp: Path, tag: str, version: str, level: str, elem: str, n: int, bonus: bool) -> Path:
    text = (
        SRC.replace("VERSION", version)
        .replace("LEVEL", level)
        .replace("CELLS", f"{elem} cells[{n}]")
        .replace("CTYPE", f"{elem}[{n}]")
        .replace("EXTRA", "int32_t bonus;" if bonus else "")
        .replace("FIELDX", "HOTLOAD_FIELD(big_state_t, bonus, int32_t);" if bonus else "")
    )
    src, lib = tmp / f"{tag}.c", tmp / f"{tag}.so"
    src.write_text(text)
    compile_plugin(src, lib, extra_cflags=["-O2"])
    return lib


class _Figures(logging.Handler):
    """The proof's and the switch's times, from the host's log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.proof: list[float] = []
        self.switch: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if m := re.search(r"proven on a copy of \d+ bytes in ([\d.]+) ms", text):
            self.proof.append(float(m.group(1)))
        elif m := re.search(r"migrated \d+ bytes to .* in ([\d.]+) ms", text):
            self.switch.append(float(m.group(1)))


def _case(
    tmp: Path, name: str, elem: str, n: int, elem2: str, rounds: int, isolate: bool = False
) -> dict[str, Any]:
    v1 = _build(tmp, f"{name}1", "1.0.0", "int32_t", elem, n, False)
    v2 = _build(tmp, f"{name}2", "2.0.0", "int64_t", elem2, n, True)
    figures = _Figures()
    logger = logging.getLogger("hotload._state")
    logger.addHandler(figures)
    logger.setLevel(logging.INFO)
    totals = []
    try:
        with Host(tmp / f"work-{name}", preflight=False, max_state_size=512 << 20) as host:
            big = host.load(v1, isolate=isolate)
            size = big.fill(3)
            expect = big.probe(n - 1)
            for _ in range(rounds):
                for lib in (v2, v1):
                    t0 = time.perf_counter()
                    if lib is v2:
                        host.reload("big", lib)
                    else:
                        host.rollback("big")
                    totals.append((time.perf_counter() - t0) * 1e3)
                    assert big.probe(n - 1) == expect  # cells and level kept
    finally:
        logger.removeHandler(figures)
    return {"size": size, "proof": figures.proof, "switch": figures.switch, "total": totals}


def run() -> dict[str, Any]:
    logging.getLogger("hotload").addHandler(logging.NullHandler())
    tmp = scratch()
    load = os.getloadavg()[0]
    same = _case(tmp, "bytes", "uint8_t", MB, "uint8_t", ROUNDS)
    wide = _case(tmp, "wide", "int32_t", MB // 4, "int64_t", 1)  # slow: one reload, one rollback
    iso = _case(tmp, "iso", "uint8_t", MB, "uint8_t", 1, isolate=True)
    return {"load": load, "same": same, "wide": wide, "iso": iso, "load_end": os.getloadavg()[0]}


def report(r: dict[str, Any]) -> list[str]:
    same, wide, iso = r["same"], r["wide"], r["iso"]
    med = statistics.median
    return [
        f"typed state (issue 23 item 3): {same['size'] / 1e6:.0f} MB of HOTLOAD_STATE carried "
        f"by {ROUNDS} reloads and {ROUNDS} rollbacks (level int32_t <-> int64_t, bonus added "
        f"and dropped); load average {r['load']:.1f} at the start",
        limit_row(
            "100 MB migrated at the switch, median",
            med(same["switch"]),
            "ms",
            100,
            op="<=",
            note=f"(max {max(same['switch']):.1f} ms)",
        ),
        text_row(
            "the proof before it (old -> new -> old on copies), median",
            f"{med(same['proof']):.1f} ms",
        ),
        text_row("the whole reload or rollback, median", f"{med(same['total']):.0f} ms"),
        text_row(
            f"100 MB int32_t[25M] widened to int64_t at the switch ("
            f"{'compiled' if apply.NATIVE is not None else 'memoryview'} loop), median",
            f"{med(wide['switch']):.1f} ms (proof {med(wide['proof']):.1f} ms)",
        ),
        text_row(
            "100 MB handed over isolated at the switch (read in the old worker, migrated "
            "here, written into the new one), median",
            f"{med(iso['switch']):.1f} ms (in process {med(same['switch']):.1f} ms; proof "
            f"{med(iso['proof']):.1f} ms; whole reload or rollback {med(iso['total']):.0f} ms; "
            f"load average {r['load_end']:.1f} at the end)",
        ),
    ]


if __name__ == "__main__":
    print("\n".join(report(run())))
