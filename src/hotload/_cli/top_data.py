"""What ``hotload top`` shows, computed from two ``ls`` answers: pure data, no terminal.

A host reports counters (calls served, errors) and figures (in flight,
p50/p99, worker pid); a live view wants rates.  ``build_view`` turns two
samples taken ``dt`` apart into per-version rows with calls/s and errors/s,
grouped by plugin, filtered and sorted as the person at the keyboard asked
(``Controls``, changed by ``press``).  Everything here is a plain function of
its inputs, so the arithmetic and the key handling are tested without a
terminal, and ``top.py`` only draws.

Figures a host does not report (a host from before per-version errors and
latency were measured) are ``None`` here and ``-`` on screen: every read of
a version dict that may lack a key uses ``.get``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# key -> sort; the same key again flips the order
SORT_KEYS = {"n": "name", "c": "calls", "e": "errors", "p": "p99"}
SORTS = tuple(SORT_KEYS.values())
# the busiest, most failing or slowest first; names A to Z
_DESCENDING = {"calls", "errors", "p99"}
# states in which a version holds memory (an unloaded one is history)
_IN_MEMORY = {"active", "draining", "leaked", "retained"}


@dataclass(frozen=True)
class Sample:
    """One ``ls`` answer and when it was taken (``taken`` on the monotonic
    clock, for rates; ``wall`` in Unix seconds, for ages)."""

    taken: float
    wall: float
    listing: dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One version of a plugin, as a line of the view."""

    plugin: str
    seq: int
    version: str
    state: str  # the version's state; "active/restarting" when its worker is not running
    calls: int | None
    calls_s: float | None  # None: no earlier sample to compare with
    errors: int | None  # None: the host does not count errors per version
    errors_s: float | None
    p50_us: float | None
    p99_us: float | None
    in_flight: int
    pid: int | None  # the worker's pid (isolated and running)
    restarts: int | None  # None in process
    leaked_bytes: int  # bytes still mapped by a leaked or retained image
    age_s: float  # since this version was loaded
    info: dict[str, Any] = field(compare=False, repr=False)  # the host's own dict


@dataclass(frozen=True)
class Group:
    """A plugin and the versions shown for it."""

    name: str
    rows: tuple[Row, ...]
    calls_s: float | None
    errors_s: float | None
    p99_us: float | None  # the worst p99 among the versions shown


@dataclass(frozen=True)
class View:
    host: dict[str, Any]
    groups: tuple[Group, ...]
    plugins: int  # loaded plugins, before the filter or pick
    calls_s: float | None  # all plugins
    last_swap: tuple[str, int, float] | None  # plugin, seq, age in seconds
    leaks: dict[str, Any]
    wall: float
    dt: float | None  # seconds between the two samples the rates come from


@dataclass(frozen=True)
class Controls:
    """What the person at the keyboard asked for."""

    sort: str = "name"
    reverse: bool = False
    filter: str = ""  # case-insensitive part of a plugin name
    typing: bool = False  # "/" was pressed: keys go into the filter until Enter or Esc
    picked: str | None = None  # one plugin, with all its versions
    # the highlighted plugin, by name: it stays highlighted when the rates reorder
    # the rows; None (or a name no longer shown): the first one on screen
    selected: str | None = None
    all_versions: bool = False  # unloaded versions too
    quit: bool = False


# what build_view reads from each version, and the types it accepts (None: not reported)
_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "seq": (int,),
    "state": (str,),
    "in_flight": (int,),
    "loaded_at": (int, float),
    "served": (int, type(None)),
    "errors": (int, type(None)),
    "p50_us": (int, float, type(None)),
    "p99_us": (int, float, type(None)),
    "mapped_bytes": (int, type(None)),
    "pid": (int, type(None)),
    "restarts": (int, type(None)),
}
_REQUIRED = ("name", "seq", "state", "in_flight", "loaded_at")


def check_listing(listing: Any) -> dict[str, Any]:
    """``listing`` if it has the shape of an ``ls`` answer, as far as this
    view reads it; else ``ValueError`` saying what is wrong, so that a
    strange answer is a clear error and not a traceback mid-view."""
    if not isinstance(listing, dict) or not isinstance(listing.get("plugins"), list):
        raise ValueError("no 'plugins' list")
    for plugin in listing["plugins"]:
        if not isinstance(plugin, dict) or not isinstance(plugin.get("name"), str):
            raise ValueError("a plugin without a name")
        if not isinstance(plugin.get("versions"), list):
            raise ValueError(f"plugin {plugin['name']!r}: no 'versions' list")
        for v in plugin["versions"]:
            if not isinstance(v, dict):
                raise ValueError(f"plugin {plugin['name']!r}: a version that is not an object")
            for key, types in _FIELDS.items():
                if key not in v and key not in _REQUIRED:
                    continue
                value = v.get(key)
                if not isinstance(value, types) or isinstance(value, bool):
                    raise ValueError(f"plugin {plugin['name']!r}: {key} = {value!r}")
    for key in ("host", "leaks"):
        if not isinstance(listing.get(key, {}), dict):
            raise ValueError(f"'{key}' is not an object")
    return listing


def highlighted(c: Controls, shown: list[str]) -> str | None:
    """The plugin the arrows and Enter act on, of those on screen."""
    if c.selected in shown:
        return c.selected
    return shown[0] if shown else None


def press(c: Controls, key: str, shown: list[str]) -> Controls:
    """``c`` after ``key``; ``shown`` is the plugin names on screen, in order
    (what the arrows move over and Enter picks from)."""
    if c.typing:
        if key == "enter":
            return dataclasses.replace(c, typing=False)
        if key == "esc":
            return dataclasses.replace(c, typing=False, filter="")
        if key == "backspace":
            return dataclasses.replace(c, filter=c.filter[:-1])
        if len(key) == 1:
            return dataclasses.replace(c, filter=c.filter + key)
        return c
    if key == "q":
        return dataclasses.replace(c, quit=True)
    if key in SORT_KEYS:
        sort = SORT_KEYS[key]
        return dataclasses.replace(c, sort=sort, reverse=not c.reverse if sort == c.sort else False)
    if key == "/":
        return dataclasses.replace(c, typing=True, filter="", picked=None)
    if key == "a":
        return dataclasses.replace(c, all_versions=not c.all_versions)
    current = highlighted(c, shown)
    if key in ("up", "down") and current is not None and c.picked is None:
        at = shown.index(current) + (1 if key == "down" else -1)
        return dataclasses.replace(c, selected=shown[min(max(at, 0), len(shown) - 1)])
    if key == "enter" and current is not None and c.picked is None:
        return dataclasses.replace(c, picked=current, selected=current)
    if key in ("esc", "backspace"):
        return dataclasses.replace(c, picked=None, filter="")
    return c


def build_view(prev: Sample | None, cur: Sample, controls: Controls) -> View:
    """The rows for ``cur``, with rates against ``prev`` (None: the first
    sample; rates are then unknown)."""
    dt = cur.taken - prev.taken if prev is not None else None
    rate_dt = dt if dt is not None and dt > 0 else None
    before: dict[tuple[str, int], dict[str, Any]] = {}
    if prev is not None:
        before = {(v["name"], v["seq"]): v for p in prev.listing["plugins"] for v in p["versions"]}
    groups: list[Group] = []
    every: list[Row] = []
    for plugin in cur.listing["plugins"]:
        rows = [_row(v, before, rate_dt, cur.wall) for v in plugin["versions"]]
        every += rows
        name = plugin["name"]
        if controls.picked is not None and name != controls.picked:
            continue
        if controls.filter and controls.filter.lower() not in name.lower():
            continue
        if not (controls.all_versions or controls.picked):
            live = [r for r in rows if r.state.split("/")[0] in _IN_MEMORY or (r.calls_s or 0) > 0]
            rows = live or rows[-1:]
        groups.append(
            Group(
                name=name,
                rows=tuple(rows),
                calls_s=_total(r.calls_s for r in rows),
                errors_s=_total(r.errors_s for r in rows),
                p99_us=max((r.p99_us for r in rows if r.p99_us is not None), default=None),
            )
        )
    swapped = [r for r in every if r.seq > 1]
    newest = min(swapped, key=lambda r: r.age_s) if swapped else None
    return View(
        host=cur.listing.get("host") or {},
        groups=tuple(_sorted(groups, controls)),
        plugins=len(cur.listing["plugins"]),
        calls_s=_total(r.calls_s for r in every),
        last_swap=(newest.plugin, newest.seq, newest.age_s) if newest else None,
        leaks=cur.listing.get("leaks") or {},
        wall=cur.wall,
        dt=dt,
    )


def _row(
    v: dict[str, Any], before: dict[tuple[str, int], dict[str, Any]], dt: float | None, now: float
) -> Row:
    old = before.get((v["name"], v["seq"]))
    if old is None and before:
        old = {}  # loaded since the last sample: everything it counted is new
    state = shown_state(v)
    worker = v.get("worker") or ""
    isolated = bool(v.get("isolated"))
    return Row(
        plugin=v["name"],
        seq=int(v["seq"]),
        version=str(v.get("plugin_version") or "-"),
        state=state,
        calls=v.get("served"),
        calls_s=_rate(v.get("served"), old, "served", dt),
        errors=v.get("errors"),
        errors_s=_rate(v.get("errors"), old, "errors", dt),
        p50_us=v.get("p50_us"),
        p99_us=v.get("p99_us"),
        in_flight=int(v.get("in_flight") or 0),
        pid=v.get("pid") if isolated and worker == "running" else None,
        restarts=int(v.get("restarts") or 0) if isolated else None,
        leaked_bytes=int(v.get("mapped_bytes") or 0) if state in ("leaked", "retained") else 0,
        age_s=max(now - float(v.get("loaded_at") or now), 0.0),
        info=v,
    )


def _rate(now: Any, old: dict[str, Any] | None, key: str, dt: float | None) -> float | None:
    if now is None or old is None or dt is None:
        return None
    delta = now - (old.get(key) or 0)
    return delta / dt if delta >= 0 else None  # a counter never goes back; if it did, say nothing


def _total(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _sorted(groups: list[Group], c: Controls) -> list[Group]:
    """By name, or by a figure with the unknowns last (whichever way it runs)."""
    if c.sort == "name":
        return sorted(groups, key=lambda g: g.name, reverse=c.reverse)
    attr = {"calls": "calls_s", "errors": "errors_s", "p99": "p99_us"}[c.sort]
    known = [g for g in groups if getattr(g, attr) is not None]
    unknown = sorted((g for g in groups if getattr(g, attr) is None), key=lambda g: g.name)
    descending = (c.sort in _DESCENDING) != c.reverse
    known.sort(key=lambda g: g.name)  # ties: by name, stable
    known.sort(key=lambda g: getattr(g, attr), reverse=descending)
    return known + unknown


# ---- text --------------------------------------------------------------------------------


def shown_state(v: dict[str, Any]) -> str:
    """A version's state as ``ls`` and ``top`` show it: an active version
    whose worker is stopped is ``stopped`` (every call fails: calling it
    active hid a plugin that served nothing), a restarting one
    ``active/restarting``; while a canary runs, each side with its share of
    the keys: ``active candidate 5%``, ``active baseline 95%``."""
    state = str(v["state"])
    if v.get("canary") and isinstance(v.get("share"), (int, float)):  # a canary runs
        state += f" {v['canary']} {v['share'] * 100:.3g}%"
    worker = v.get("worker") or "" if v.get("isolated") else ""
    if worker == "stopped" and state.startswith("active"):
        return "stopped"
    return f"{state}/{worker}" if worker and worker != "running" else state


def fmt_us(us: float | None) -> str:
    """A latency for a person: ``-`` when unknown, then us, ms or s."""
    if us is None:
        return "-"
    if us < 10:
        return f"{us:.2f}us"
    if us < 1000:
        return f"{us:.1f}us" if us < 100 else f"{us:.0f}us"
    if us < 1_000_000:
        return f"{us / 1000:.2f}ms"
    return f"{us / 1_000_000:.2f}s"


def fmt_rate(r: float | None) -> str:
    if r is None:
        return "-"
    if r == 0:
        return "0"
    return f"{r:.1f}" if r < 10 else f"{r:,.0f}"


def fmt_count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def fmt_bytes(n: int) -> str:
    if not n:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def summary(view: View) -> str:
    """The line above the table: whose figures, and what changed last."""
    host = view.host
    parts = [
        time.strftime("%H:%M:%S", time.localtime(view.wall)),
        f"host pid {host.get('pid', '?')} ({host.get('name') or '?'})",
        f"{view.plugins} plugin(s)",
        f"{fmt_rate(view.calls_s)} calls/s",
    ]
    if view.last_swap:
        name, seq, age = view.last_swap
        parts.append(f"last swap {name} v{seq} {duration(age)} ago")
    else:
        parts.append("no swap yet")
    images, size = view.leaks.get("images"), view.leaks.get("bytes")
    if isinstance(images, int) and images:
        size = fmt_bytes(size) if isinstance(size, int) else "?"
        parts.append(f"leaked {images} image(s) {size}")
    return ", ".join(parts)


PLAIN_HEADER = (
    "PLUGIN",
    "SEQ",
    "VERSION",
    "STATE",
    "CALLS/S",
    "ERRORS/S",
    "P50_US",
    "P99_US",
    "INFLIGHT",
    "PID",
    "RESTARTS",
    "LEAKED_BYTES",
    "AGE_S",
)


def plain_lines(view: View) -> list[str]:
    """One snapshot for a pipe or a file: ``# summary``, a header, one line
    per version; columns split on whitespace (no cell has a space), ``-``
    for unknown, plain numbers (no thousands separators, latencies in us)."""
    rows = [PLAIN_HEADER]
    for g in view.groups:
        for r in g.rows:
            rows.append(
                (
                    r.plugin,
                    f"v{r.seq}",
                    r.version.replace(" ", "_") or "-",
                    r.state,
                    _num(r.calls_s),
                    _num(r.errors_s),
                    _num(r.p50_us, 2),
                    _num(r.p99_us, 2),
                    str(r.in_flight),
                    "-" if r.pid is None else str(r.pid),
                    "-" if r.restarts is None else str(r.restarts),
                    str(r.leaked_bytes),
                    str(int(r.age_s)),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(PLAIN_HEADER))]
    lines = [f"# {summary(view)}"]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return lines


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def json_snapshot(view: View) -> dict[str, Any]:
    """One snapshot for ``--json``: the host's own version dicts (``ls
    --json``'s fields) with the rates added."""
    return {
        "time": view.wall,
        "interval": view.dt,
        "host": view.host,
        "calls_per_s": view.calls_s,
        "last_swap": None
        if view.last_swap is None
        else dict(zip(("name", "seq", "age_s"), view.last_swap, strict=True)),
        "leaks": view.leaks,
        "plugins": [
            {
                "name": g.name,
                "versions": [
                    {**r.info, "calls_per_s": r.calls_s, "errors_per_s": r.errors_s} for r in g.rows
                ],
            }
            for g in view.groups
        ],
    }
