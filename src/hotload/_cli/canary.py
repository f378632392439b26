"""``hotload canary``: start, widen, promote, abort a canary in a running
host, or see how it goes.

    hotload canary NAME                      how the running canary goes (or that none runs)
    hotload canary NAME FILE [--share S] [--key N] [--bake S] [--no-judge]
                                             start one: FILE beside the version serving
    hotload canary NAME --share S            widen the running one to S
    hotload canary NAME --promote | --abort  end it by hand
    hotload canary NAME --wait [SECONDS]     wait until it ends; exit 0 promoted, 3 aborted,
                                             4 still running when the wait ran out
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from .._errors import HotloadError
from .._ops import control_client
from .text import printable
from .top_data import fmt_us

#: Exit status of ``--wait`` when the canary was aborted (a script's "do not go on"),
#: and when it was still running as the wait ran out (neither promoted nor aborted).
ABORTED = 3
STILL_RUNNING = 4


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "canary",
        parents=parents,
        help="run a build beside the version serving, on a share of the keys, judged",
    )
    p.add_argument("name")
    p.add_argument("path", nargs="?", help="start a canary of this build")
    p.add_argument("--share", type=_share, help="fraction of keys to the candidate (0.05)")
    p.add_argument("--key", type=int, default=0, help="the argument that keys a caller (0)")
    p.add_argument(
        "--bake", type=duration, default=30.0, help="how long the judge bakes it (30s; 2m, 500ms)"
    )
    p.add_argument("--no-judge", action="store_true", help="do not judge: end it by hand")
    end = p.add_mutually_exclusive_group()
    end.add_argument("--promote", action="store_true", help="make the candidate the only route")
    end.add_argument("--abort", action="store_true", help="drop the candidate")
    end.add_argument(
        "--wait", type=float, nargs="?", const=3600.0, metavar="SECONDS", help="wait for the end"
    )
    p.set_defaults(func=cmd_canary)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def duration(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``7d``, ``1.5`` (seconds)."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 2m, 500ms")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def _share(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: 0.05 or 5%, up to 1")
    return value


def cmd_canary(args: argparse.Namespace) -> int:
    sock = control_client.resolve(socket_path=args.socket, host=args.host)
    if args.path is not None:
        if args.promote or args.abort:
            raise HotloadError("give a FILE to start a canary, or --promote/--abort, not both")
        req: dict[str, Any] = {
            "action": "start",
            "path": str(Path(args.path).resolve()),  # the host's working directory is not ours
            "key": args.key,
            "bake": args.bake,
            "judge": not args.no_judge,
        }
        if args.share is not None:
            req["share"] = args.share
    elif args.promote or args.abort:
        req = {"action": "promote" if args.promote else "abort"}
    elif args.share is not None:
        req = {"action": "widen", "share": args.share}
    else:
        req = {"action": "status"}
    result = control_client.request(sock, "canary", name=args.name, **req)
    if args.wait is not None and result.get("canary"):
        result = _wait(sock, args.name, args.wait, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(printable(describe(args.name, result.get("canary"))))
    c = result.get("canary")
    if args.wait is None or not c:
        return 0
    return {"aborted": ABORTED, "running": STILL_RUNNING}.get(c["state"], 0)


def _wait(sock: Any, name: str, timeout: float, result: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while result["canary"]["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.25)
        result = control_client.request(sock, "canary", name=name, action="status")
    return result


def describe(name: str, c: dict[str, Any] | None) -> str:
    """What a person reads: the state, the share, the verdict, both sides."""
    if c is None:
        return f"{name}: no canary has run (start one: hotload canary {name} FILE)"
    lines = [
        f"{name}: canary v{c['candidate_seq']} beside v{c['baseline_seq']}, "
        f"{c['share'] * 100:.3g}% of keys, {c['state']} ({c['seconds']:.1f} s)",
        f"  verdict: {c['verdict']}",
    ]
    for side in ("candidate", "baseline"):
        f = c[side]
        lines.append(
            f"  {side:<9}  {f['calls']:>12,} calls  errors {f['error_rate'] * 100:.2f}%  "
            f"crashes {f['crashes']:,}  p50 {_us(f['p50_us'])}  p99 {_us(f['p99_us'])}"
        )
    if c.get("key_errors"):
        lines.append(
            f"  {c['key_errors']:,} call(s) whose key could not be hashed went to v"
            f"{c['baseline_seq']}"
        )
    return "\n".join(lines)


def _us(us: float | None) -> str:
    return fmt_us(us)
