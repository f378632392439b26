"""``hotload record`` and ``hotload replay``: keep a plugin's recent calls in
a running host, and run them on a build before players see it.

    hotload record NAME [--calls N]     keep NAME's last N calls (10,000); without
                                        --calls, a running recording is kept (its status)
    hotload record NAME --stop          stop recording
    hotload replay NAME FILE [--json]   run the recorded calls on FILE in a worker and
                                        compare; exit 0 when it neither crashed nor raised
                                        where the version serving answered, 3 otherwise
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._ops import control_client
from .text import printable

#: Exit status of ``hotload replay`` when the build crashed or raised on recorded calls.
REFUSED = 3


def add_commands(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("record", parents=parents, help="keep a plugin's recent calls for replay")
    p.add_argument("name")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--calls", type=_calls, help="calls to keep (10000; not given: a running one is kept)"
    )
    how.add_argument("--stop", action="store_true", help="stop recording")
    p.set_defaults(func=cmd_record)
    p = sub.add_parser(
        "replay", parents=parents, help="run a plugin's recorded calls on a build, compare"
    )
    p.add_argument("name")
    p.add_argument("path", help="the build to replay the calls on")
    p.set_defaults(func=cmd_replay)


def _calls(text: str) -> int:
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        value = -1
    if not 1 <= value <= 1 << 24:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of calls from 1 to 16,777,216")
    return value


def cmd_record(args: argparse.Namespace) -> int:
    sock = control_client.resolve(socket_path=args.socket, host=args.host)
    calls = 0 if args.stop else args.calls
    result = control_client.request(sock, "record", name=args.name, calls=calls)
    r = result.get("recording")
    if args.json:
        print(json.dumps(result, indent=2))
    elif r is None:
        print(f"{args.name}: not recording")
    else:
        print(
            f"{args.name}: recording, {r['total']:,} calls so far, keeps the last {r['capacity']:,}"
        )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    sock = control_client.resolve(socket_path=args.socket, host=args.host)
    path = str(Path(args.path).resolve())  # the host's working directory is not ours
    result = control_client.request(sock, "replay", name=args.name, path=path)
    r = result["replay"]
    print(json.dumps(result, indent=2) if args.json else printable(r["summary"]))
    return 0 if r["ok"] else REFUSED
