"""``hotload release``: switch several plugins of a running host as one.

hotload release NAME=FILE [NAME=FILE ...] [--allow-signature-change]
hotload release --rollback          undo the last release, as one switch
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._errors import HotloadError
from .._ops import control_client


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "release", parents=parents, help="switch several plugins of a running host as one"
    )
    p.add_argument("builds", nargs="*", metavar="NAME=FILE", help="each plugin and its build")
    p.add_argument("--rollback", action="store_true", help="undo the last release")
    p.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="accept builds that remove an export or change a prototype",
    )
    p.set_defaults(func=cmd_release)


def cmd_release(args: argparse.Namespace) -> int:
    sock = control_client.resolve(socket_path=args.socket, host=args.host)
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
        extra = {"allow_signature_change": True} if args.allow_signature_change else {}
        result = control_client.request(sock, "release", builds=builds, **extra)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    done = result["release"]
    what = ", ".join(
        f"{name} v{done['replaced'][name]} -> v{v['seq']} ({v['plugin_version']})"
        if done["replaced"].get(name) is not None
        else f"{name} v{v['seq']} ({v['plugin_version']}, new)"
        for name, v in done["versions"].items()
    )
    gone = f"; unloaded {', '.join(done['unloaded'])}" if done["unloaded"] else ""
    print(f"release {done['id']}: {what}{gone}")
    return 0
