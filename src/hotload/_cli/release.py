"""``hotload release``: switch several plugins of a running host as one.

hotload release NAME=FILE [NAME=FILE ...] [--allow-signature-change]
hotload release --rollback          undo the last release, as one switch
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .._errors import HotloadError
from .._ops import control_client
from .text import ahead


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "release", parents=parents, help="switch several plugins of a running host as one"
    )
    p.add_argument("builds", nargs="*", metavar="NAME=FILE", help="each plugin and its build")
    p.add_argument("--rollback", action="store_true", help="undo the last release")
    p.add_argument(
        "--at",
        type=_when,
        metavar="TIME",
        help="switch then: ISO 8601 (2026-12-24T18:00:00Z) or +SECONDS (+30, +2m)",
    )
    p.add_argument("--staged", action="store_true", help="list the releases staged for later")
    p.add_argument("--cancel", type=int, metavar="ID", help="drop a staged release")
    p.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="accept builds that remove an export or change a prototype",
    )
    p.set_defaults(func=cmd_release)


def _when(text: str) -> float:
    """ISO 8601 (naive: this machine's local time), or ``+SECONDS`` from now
    (``+30``, ``+5s``, ``+2m``), as ``hotload fleet release --at`` takes."""
    soon = ahead(text)
    if soon is not None:
        return soon
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: ISO 8601, e.g. 2026-12-24T18:00:00Z, or +SECONDS (+30, +2m)"
        ) from None
    return when.timestamp()


def cmd_release(args: argparse.Namespace) -> int:
    sock = control_client.resolve(socket_path=args.socket, host=args.host)
    if args.staged or args.cancel is not None:
        if args.builds or args.rollback:
            raise HotloadError("--staged and --cancel take no NAME=FILE and no --rollback")
        req: dict[str, Any] = {"staged": True} if args.staged else {"cancel": args.cancel}
        result = control_client.request(sock, "release", **req)
        if args.json:
            print(json.dumps(result, indent=2))
        elif args.staged:
            for r in result["staged"] or [{"id": None}]:
                print(_staged_line(r) if r["id"] is not None else "no release is staged")
        else:
            print(f"release {args.cancel}: {result['release']['state']}")
        return 0
    if args.rollback:
        if args.builds:
            raise HotloadError("--rollback takes no NAME=FILE")
        result = control_client.request(sock, "release", rollback=True)
    else:
        if not args.builds:
            raise HotloadError("give each plugin and its build: NAME=FILE ...")
        builds: dict[str, str] = {}
        for item in args.builds:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise HotloadError(f"{item!r}: write NAME=FILE")
            if name in builds:
                raise HotloadError(f"{name} is given twice")
            builds[name] = str(Path(path).resolve())  # the host's working directory is not ours
        extra: dict[str, Any] = (
            {"allow_signature_change": True} if args.allow_signature_change else {}
        )
        if args.at is not None:
            extra["at"] = args.at
        result = control_client.request(sock, "release", builds=builds, **extra)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    done = result["release"]
    if done["state"] == "staged":
        print(_staged_line(done))
        return 0
    what = ", ".join(
        f"{name} v{done['replaced'][name]} -> v{v['seq']} ({v['plugin_version']})"
        if done["replaced"].get(name) is not None
        else f"{name} v{v['seq']} ({v['plugin_version']}, new)"
        for name, v in done["versions"].items()
    )
    gone = f"; unloaded {', '.join(done['unloaded'])}" if done["unloaded"] else ""
    print(f"release {done['id']}: {what}{gone}")
    return 0


def _staged_line(r: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(r["at"]))
    return f"release {r['id']}: {', '.join(r['names'])} staged, switches at {when}"
