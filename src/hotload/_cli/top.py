"""``hotload top``: a live view of one running host, refreshed every ``--interval``.

Each refresh is one ``ls`` request on the host's control socket; the rates
come from the difference between two answers (``top_data``).  In a terminal
the view is drawn with ``rich`` (``Live`` on the alternate screen) and keys
are read one at a time (``_platform.keys``: cbreak mode, ``select``);
anywhere else (a pipe, a file, ``--once``) it prints plain snapshots, or
JSON lines with ``--json``.

Exit status: 0 after ``q``, Ctrl-C in the live view, or ``--once``; 1 when
the host cannot be reached at the start (the usual one-line error) or has no
plugin ``--plugin NAME``; 2 for
bad usage; 3 (``EXIT_HOST_GONE``) when the host goes away while watched,
after one line on stderr saying which host and why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import ControlError
from .._ops import control_client
from .top_data import (
    SORTS,
    Controls,
    Row,
    Sample,
    View,
    build_view,
    check_listing,
    duration,
    fmt_bytes,
    fmt_count,
    fmt_rate,
    fmt_us,
    highlighted,
    json_snapshot,
    plain_lines,
    press,
    summary,
)

EXIT_HOST_GONE = 3
# the control client's codes that mean the host is no more (a timeout or a
# busy answer is a host still there: the view keeps its last figures and says so)
_GONE = {"unreachable", "not_a_socket"}


class _HostGone(Exception):
    def __init__(self, error: ControlError) -> None:
        self.error = error


def add_command(sub: Any, target: argparse.ArgumentParser) -> None:
    """``hotload top`` in the ``hotload`` subcommands; ``target`` gives it
    ``--host``/``--socket`` like the other host commands."""
    p = sub.add_parser(
        "top", parents=[target], help="live view of a running host: calls/s, errors, latency"
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="seconds between refreshes (default 1)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot (rates over one interval) and exit",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per snapshot, one per line")
    p.add_argument(
        "--sort", choices=SORTS, default="name", help="initial order of the plugins (default name)"
    )
    p.add_argument("--plugin", metavar="NAME", help="show only this plugin, with all its versions")
    p.set_defaults(func=cmd_top)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"{text}: give between 0.1 and 3600 seconds")
    return value


def cmd_top(args: argparse.Namespace) -> int:
    path = control_client.resolve(socket_path=args.socket, host=args.host)
    timeout = max(2.0, 2 * args.interval)

    def sample() -> Sample:
        listing = control_client.request(path, "ls", timeout=timeout)
        try:
            return Sample(time.monotonic(), time.time(), check_listing(listing))
        except ValueError as exc:
            raise ControlError(
                f"{path}: the host's ls answer is not what hotload top reads ({exc})", "bad_reply"
            ) from None

    first = sample()  # a host we cannot reach now is an error like any other command's
    host = first.listing.get("host") or {}
    names = sorted(p.get("name", "") for p in first.listing.get("plugins") or [])
    if args.plugin is not None and args.plugin not in names:  # a typo shows no empty table
        print(
            f"hotload top: host pid {host.get('pid', '?')} ({host.get('name') or '?'}) has no "
            f"plugin {args.plugin!r}; it has: {', '.join(names) or 'none'}",
            file=sys.stderr,
        )
        return 1
    controls = Controls(sort=args.sort, picked=args.plugin)
    try:
        if args.once:
            time.sleep(args.interval)
            _emit(build_view(first, sample(), controls), args.json)
            return 0
        if args.json or not sys.stdout.isatty():
            return _stream(first, sample, controls, args.interval, args.json)
        return _live(first, sample, controls, args.interval)
    except _HostGone as gone:
        who = f"host pid {host.get('pid', '?')} ({host.get('name') or '?'})"
        print(f"hotload top: {who} went away: {gone.error}", file=sys.stderr)
        return EXIT_HOST_GONE


def _next(sample: Callable[[], Sample]) -> Sample | ControlError:
    """The next sample, or the reason there is none this time; raises
    ``_HostGone`` when the host is gone for good."""
    try:
        return sample()
    except ControlError as exc:
        if exc.code in _GONE:
            raise _HostGone(exc) from None
        return exc


def _emit(view: View, as_json: bool) -> None:
    if as_json:
        print(json.dumps(json_snapshot(view)), flush=True)
    else:
        print("\n".join(plain_lines(view)), flush=True)


def _stream(
    first: Sample, sample: Callable[[], Sample], controls: Controls, interval: float, as_json: bool
) -> int:
    """Snapshots for a pipe or a file, one per interval (the first after one
    interval, so that every snapshot has its rates), until the host goes
    away or the reader stops reading."""
    prev = first
    while True:
        time.sleep(max(prev.taken + interval - time.monotonic(), 0.0))
        cur = _next(sample)
        if isinstance(cur, ControlError):  # on stderr: stdout stays snapshots only
            print(f"hotload top: the host did not answer: {cur}", file=sys.stderr, flush=True)
            continue
        _emit(build_view(prev, cur, controls), as_json)
        if not as_json:
            print(flush=True)  # a blank line ends each plain snapshot
        prev = cur


def _live(first: Sample, sample: Callable[[], Sample], controls: Controls, interval: float) -> int:
    from rich.console import Console
    from rich.live import Live

    from .._platform import keys

    # The view follows the terminal's real size, also after a resize: COLUMNS and
    # LINES in the environment (stale, or set by a parent such as a test runner)
    # would pin rich to them.
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)
    console = Console()
    arrows = "↑/↓" if console.encoding.lower().startswith("utf") else "up/down"
    prev: Sample | None = None
    cur = first
    trouble: str | None = None
    view = build_view(prev, cur, controls)
    stdin_keys = sys.stdin.isatty()
    with _ended_by_signals():
        try:
            with (
                _KeysOrWait(keys.raw_keys, stdin_keys) as read,
                Live(
                    console=console, screen=True, auto_refresh=False, redirect_stdout=False
                ) as live,
            ):
                next_at = cur.taken + interval
                while True:
                    frame = _render(view, controls, trouble, arrows, stdin_keys, console)
                    live.update(frame, refresh=True)
                    for key in read(max(next_at - time.monotonic(), 0.0)):
                        controls = press(controls, key, [g.name for g in view.groups])
                        if controls.quit:
                            return 0
                    if time.monotonic() >= next_at:
                        got = _next(sample)
                        if isinstance(got, ControlError):
                            trouble = f"the host did not answer ({got}); showing its last figures"
                        else:
                            prev, cur, trouble = cur, got, None
                        next_at = time.monotonic() + interval
                    view = build_view(prev, cur, controls)
        except (KeyboardInterrupt, EOFError):  # Ctrl-C, or the terminal closed: a plain quit
            return 0


@contextlib.contextmanager
def _ended_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal window) end the view like an
    exception, so the blocks above put the terminal back (cbreak off, the
    main screen again) before the process exits with 128 + the signal."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    wanted = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    before = {sig: signal.signal(sig, stop) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


class _KeysOrWait:
    """The terminal's keys when stdin is one; otherwise a reader that only
    waits (the view still refreshes, and Ctrl-C leaves it)."""

    def __init__(self, raw_keys: Any, on: bool) -> None:
        self._cm = raw_keys(sys.stdin.fileno()) if on else None

    def __enter__(self) -> Callable[[float], list[str]]:
        if self._cm is None:
            return _only_wait
        read: Callable[[float], list[str]] = self._cm.__enter__()
        return read

    def __exit__(self, *exc: object) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)


def _only_wait(timeout: float) -> list[str]:
    time.sleep(timeout)
    return []


# ---- drawing -----------------------------------------------------------------------------

_COLUMNS = (
    ("  PLUGIN", "left", None),  # "> name": the highlighted plugin, also without colours
    ("SEQ", "left", None),
    ("VERSION", "left", None),
    ("STATE", "left", None),
    ("CALLS/S", "right", "calls"),
    ("ERRORS/S", "right", "errors"),
    ("P50", "right", None),
    ("P99", "right", "p99"),
    ("INFLIGHT", "right", None),
    ("PID", "right", None),
    ("RESTARTS", "right", None),
    ("LEAKED", "right", None),
    ("AGE", "right", None),
)
# what goes first when the terminal is too narrow for every column (the picked
# view's details still say each version's number and build)
_OPTIONAL = ("VERSION", "P50", "LEAKED", "RESTARTS", "INFLIGHT")
_STATE_STYLE = {"active": "green", "draining": "yellow", "leaked": "red", "retained": "magenta"}


def _render(
    view: View, c: Controls, trouble: str | None, arrows: str, with_keys: bool, console: Any
) -> Any:
    """One frame.  Only the rows that fit the terminal are drawn (a long table
    scrolls to keep the highlighted plugin in sight, and a line says how many
    more there are), and columns are dropped in ``_OPTIONAL`` order when it
    is too narrow: a frame costs the same with 5 plugins or 500."""
    from rich.console import Group as Stack
    from rich.text import Text

    head: list[Any] = [Text(summary(view), style="bold")]
    if trouble:
        head.append(Text(trouble, style="bold red"))
    narrowed = f"plugin {c.picked}" if c.picked else f"filter '{c.filter}'" if c.filter else ""
    if narrowed:
        shown = f"{len(view.groups)} of {view.plugins}"
        head.append(Text(f"showing {narrowed} ({shown}); esc shows all", style="cyan"))
    if not view.groups:
        head.append(Text("no plugin to show", style="dim"))
    tail = _details(view) if c.picked else []
    footer = _footer(c, arrows, with_keys)
    tail.append(Text(footer, style="dim" if not c.typing else "bold"))
    footer_lines = -(-len(footer) // max(console.width, 1))
    # the table's header and rule, the summary lines, the details, the footer, a "more" line
    budget = max(console.height - len(head) - len(tail) - footer_lines - 2, 1)
    rows, above, below = _window(view, c, with_keys, budget)
    if above or below:
        tail.insert(0, Text(_more(above, below), style="dim"))
    return Stack(*head, _table(rows, c, arrows, console.width), *tail)


def _window(
    view: View, c: Controls, with_keys: bool, budget: int
) -> tuple[list[tuple[Row, bool, bool]], int, int]:
    """The rows to draw, as (row, first of its plugin, highlighted), and how
    many are left out above and below."""
    current = highlighted(c, [g.name for g in view.groups])
    rows: list[tuple[Row, bool, bool]] = []
    at = 0
    for g in view.groups:
        selected = g.name == current and c.picked is None and with_keys
        if selected:
            at = len(rows)
        rows += [(r, j == 0, selected) for j, r in enumerate(g.rows)]
    if len(rows) <= budget:
        return rows, 0, 0
    budget = max(budget - 1, 1)  # the "more" line takes one
    start = 0 if at < budget else min(at - budget // 2, len(rows) - budget)
    return rows[start : start + budget], start, len(rows) - start - budget


def _more(above: int, below: int) -> str:
    where = [f"{n} version(s) {side}" for n, side in ((above, "above"), (below, "below")) if n]
    return f"... {' and '.join(where)}: the arrows scroll, / filters"


def _table(rows: list[tuple[Row, bool, bool]], c: Controls, arrows: str, width: int) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    mark = {False: " ▼", True: " ▲"} if arrows != "up/down" else {False: " v", True: " ^"}
    titles = []
    for title, _, sort in _COLUMNS:
        if sort == c.sort or (sort is None and title.strip() == "PLUGIN" and c.sort == "name"):
            flipped = c.reverse if c.sort != "name" else not c.reverse
            title += mark[flipped]
        titles.append(title)
    cells = [
        (
            ("> " if selected else "  ") + r.plugin if first else "",
            f"v{r.seq}",
            r.version,
            r.state,
            fmt_rate(r.calls_s),
            fmt_rate(r.errors_s),
            fmt_us(r.p50_us),
            fmt_us(r.p99_us),
            str(r.in_flight),
            "-" if r.pid is None else str(r.pid),
            "-" if r.restarts is None else str(r.restarts),
            fmt_bytes(r.leaked_bytes),
            duration(r.age_s),
        )
        for r, first, selected in rows
    ]
    widths = [max([len(t), *(len(row[i]) for row in cells)]) for i, t in enumerate(titles)]
    keep = list(range(len(_COLUMNS)))
    for optional in _OPTIONAL:  # two spaces between columns
        if sum(widths[i] for i in keep) + 2 * (len(keep) - 1) <= width:
            break
        keep.remove(next(i for i, (t, _, _) in enumerate(_COLUMNS) if t == optional))
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),  # with the box's blank separator: two spaces between columns
        pad_edge=False,
        show_edge=False,
        header_style="bold",
    )
    for i in keep:
        table.add_column(titles[i], justify=_COLUMNS[i][1], no_wrap=True)  # type: ignore[arg-type]
    for (r, _, selected), row in zip(rows, cells, strict=True):
        styled: list[Any] = list(row)
        styled[3] = Text(row[3], style=_STATE_STYLE.get(r.state.split("/")[0], "dim"))
        if r.errors_s:
            styled[5] = Text(row[5], style="red")
        table.add_row(*(styled[i] for i in keep), style="reverse" if selected else None)
    return table


def _details(view: View) -> list[Any]:
    """Under the table of one picked plugin: where each version came from
    and what the host says about it beyond the figures."""
    from rich.text import Text

    lines = []
    for g in view.groups:
        for r in g.rows:
            v = r.info
            bits = [f"v{r.seq}", f"calls {fmt_count(r.calls)}", f"errors {fmt_count(r.errors)}"]
            bits += [f"{k} {v[k]}" for k in ("crashes", "timeouts") if v.get(k) is not None]
            bits.append(f"build {str(v.get('digest') or '-')[:12]}")
            bits.append(str(v.get("source") or "-"))
            if v.get("note"):
                bits.append(f"note: {v['note']}")
            if v.get("blockers"):
                bits.append(f"why in memory: {','.join(v['blockers'])}")
            if v.get("sandbox"):
                bits.append(f"sandbox: {' '.join(v['sandbox'])}")
            lines.append(Text("  ".join(bits), overflow="ellipsis", no_wrap=True))
    return lines


def _footer(c: Controls, arrows: str, with_keys: bool) -> str:
    if not with_keys:
        return "Ctrl-C quits (stdin is not a terminal: no keys)"
    if c.typing:
        return f"filter: {c.filter}_   enter keep  esc clear"
    pick = "esc all" if c.picked else f"{arrows} move  enter show only"
    if c.filter and not c.picked:
        pick += "  esc all"
    return f"{pick}  / filter  sort: c calls  e errors  p p99  n name  a all versions  q quit"


__all__ = ["EXIT_HOST_GONE", "add_command", "cmd_top"]
