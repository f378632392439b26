"""``hotload log [--follow] [--json] [-n N] [NAME]``: a running host's swap journal.

One line per entry, oldest first::

    TIME          KIND      PLUGIN    SEQ       ORIGIN   WHAT
    05:13:02.123  load      pricing   v1        api      1.0.0 (9fc77d6250d3) from /srv/pricing.so
    05:13:05.456  refused   pricing   v1        watcher  reload of /srv/pricing.so (...): ...

``--follow`` keeps printing new entries (it asks the host every half second
with the last ``seq`` it saw) until the host goes away, which it says on
stderr before it exits with status 0, or until Ctrl-C.  ``--json`` prints the
control protocol's ``log`` result, ``{"entries": [ENTRY...], "last",
"dropped", "size"}``; with ``--follow``, one ENTRY per line (JSON Lines).
ENTRY is ``JournalEntry.as_dict()``: ``seq, time, kind, plugin, origin,
from_seq, to_seq, from_digest, to_digest, version, source, error, detail``.

Also here: the lines ``hotload ls`` adds for refused builds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .._engine.journal import MAX_SEQ, JournalEntry
from .._errors import ControlError
from .._ops import control_client
from .text import printable

FOLLOW_INTERVAL = 0.5  # seconds between two asks of --follow
_COLUMNS = (("TIME", 12), ("KIND", 10), ("PLUGIN", 16), ("SEQ", 9), ("ORIGIN", 10))


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``hotload log``, with the host-picking and ``--json`` options of the others."""
    p = sub.add_parser(
        "log", parents=parents, help="a running host's swap journal (what changed, who asked)"
    )
    p.add_argument("name", nargs="?", help="only this plugin's entries")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new entries until the host exits"
    )
    p.add_argument("-n", "--last", type=_positive, metavar="N", help="only the newest N entries")
    p.set_defaults(func=cmd_log)


def _positive(text: str) -> int:
    try:
        value = int(text) if len(text) <= 20 else 0  # no 4,000-digit int() for a count
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SEQ:
        raise argparse.ArgumentTypeError(
            f"{text[:30]!r} is not a number of entries (1 to {MAX_SEQ:,})"
        )
    return value


def cmd_log(args: argparse.Namespace) -> int:
    sock = control_client.resolve(socket_path=args.socket, host=args.host)
    result = control_client.request(sock, "log", name=args.name, limit=args.last)
    if args.json and not args.follow:
        print(json.dumps(result, indent=2))
        return 0
    if not args.json:
        print(header())
    show(result["entries"], args.json)
    if not args.follow:
        if result.get("dropped") and not args.json:
            print(
                f"({result['dropped']:,} older entries were dropped: the journal keeps the "
                f"newest {result['size']:,}, Host(journal_size=...))"
            )
        return 0
    return follow(sock, args.name, result["last"], as_json=args.json)


def follow(sock: Path, name: str | None, last: int, *, as_json: bool) -> int:
    """Print what the host records after ``last`` until it goes away."""
    while True:
        sys.stdout.flush()
        time.sleep(FOLLOW_INTERVAL)
        try:
            result = control_client.request(sock, "log", name=name, since=last, timeout=10.0)
        except ControlError as exc:
            if exc.code != "unreachable":
                raise
            print(f"hotload: the host went away ({sock}); stopped following", file=sys.stderr)
            return 0
        entries = result["entries"]
        # the ring's oldest entry is dropped + 1: whatever came after `last` and before
        # it went before we asked (of any plugin: a NAME filter cannot tell whose)
        missed = int(result.get("dropped") or 0) - last
        if missed > 0:
            what = f"{missed:,} entries were dropped before they could be shown"
            if name is not None:
                what += f" (of any plugin: some may have been {name}'s)"
            if as_json:  # stdout stays one entry per line
                print(f"hotload log: {what}", file=sys.stderr, flush=True)
            else:
                print(f"({what})")
        show(entries, as_json)
        last = max(last, result["last"])


def header() -> str:
    return " ".join(title.ljust(width) for title, width in _COLUMNS) + " WHAT"


def show(entries: list[dict[str, Any]], as_json: bool) -> None:
    for e in entries:
        print(json.dumps(e) if as_json else line(e))


def line(e: dict[str, Any]) -> str:
    """One entry under ``header()``; the columns are fixed so that lines
    printed as they come (``--follow``) stay aligned."""
    entry = _entry(e)
    stamp = time.strftime("%H:%M:%S", time.localtime(entry.time))
    stamp += f".{int(entry.time % 1 * 1000):03d}"
    cells = (stamp, entry.kind, entry.plugin or "?", entry.seqs().replace(" ", ""), entry.origin)
    columns = " ".join(c.ljust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True))
    return printable(f"{columns} {entry.describe()}")


def _entry(e: dict[str, Any]) -> JournalEntry:
    """The entry a host sent, as a ``JournalEntry`` (its ``describe()``): a
    host of another hotload version may add keys, which are left out."""
    known = {k: e[k] for k in JournalEntry.__dataclass_fields__ if k in e}
    known.setdefault("time", 0.0)
    for key in ("seq", "kind", "plugin", "origin"):
        known.setdefault(key, 0 if key == "seq" else "?")
    return JournalEntry(**known)


def refusal_notes(result: dict[str, Any]) -> list[str]:
    """``hotload ls``: one line per plugin (or file) with refused builds:
    how many, and the last one, cut to a line."""
    notes = []
    for r in result.get("refused") or ():
        last = r["last"]
        when = time.strftime("%H:%M:%S", time.localtime(last["time"]))
        source = str(last.get("source") or "")
        error = " ".join(str(last.get("error") or "").replace(f"{source}: ", "").split())
        error = error if len(error) <= 120 else error[:117] + "..."
        who = r["plugin"] or "a build of unknown name"
        notes.append(
            f"refused: {who}: {r['count']} build(s); last at {when} "
            f"({last.get('detail') or 'load'} of {source or '?'}, {last.get('origin')}): {error}"
        )
    if notes:
        notes.append("refused builds: `hotload log NAME` tells the whole story")
    return notes


__all__ = ["add_command", "cmd_log", "header", "line", "refusal_notes"]
