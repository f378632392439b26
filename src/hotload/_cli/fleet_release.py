"""``hotload fleet release``: several plugins switched on every host at one
instant (the Releases page).

    hotload fleet release NAME=BUILD [NAME=BUILD ...] --at TIME [--deadline TIME]
                          [--hosts SEL] [--canary SEL [--bake SECONDS]] [--no-wait]
    hotload fleet release --cancel ID [--reason TEXT]

TIME is ISO 8601 with its offset (``2026-12-24T18:00:00Z``: every host
reads the same instant, whatever its zone), or ``+SECONDS`` from now
(``+30``, ``+2m``).  BUILD is a digest, a prefix of one or NAME@VERSION, as
for a rollout.  It exits 1 when the release was cancelled (naming the host
and its cause) and 2 when some host did not report its switch.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from .._errors import FleetError, RolloutFailed
from ..fleet import Fleet
from ..fleet._release_plan import when
from .text import ahead, printable


def add_command(fsub: Any, parents: list[argparse.ArgumentParser]) -> None:
    q = fsub.add_parser(
        "release", parents=parents, help="switch several plugins on every host at one instant"
    )
    q.add_argument("builds", nargs="*", metavar="NAME=BUILD", help="each plugin and its build")
    q.add_argument("--at", type=instant, metavar="TIME", help="2026-12-24T18:00:00Z or +SECONDS")
    q.add_argument(
        "--deadline",
        type=instant,
        metavar="TIME",
        help="every host has staged it by then, or it is cancelled (default: a fifth of the "
        "lead before --at, 0.5 s to 60 s)",
    )
    q.add_argument("--hosts", default="*", metavar="SEL", help="the hosts that stage it (all)")
    q.add_argument(
        "--canary",
        metavar="SEL",
        help="these hosts switch at --at and are judged for --bake; the others switch at "
        "--at + --bake only if none regressed, crashed or failed (else all go back)",
    )
    q.add_argument(
        "--bake", type=float, default=60.0, metavar="SECONDS", help="the canary's bake (60)"
    )
    q.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the plan is written (then no one cancels it at the deadline: "
        "the hosts that staged it switch at the time)",
    )
    q.add_argument("--cancel", metavar="ID", help="cancel a planned release on every host")
    q.add_argument("--reason", default="cancelled by hand", help="the cancel's reason")
    q.set_defaults(func=cmd_release)


def instant(text: str) -> float:
    """``2026-12-24T18:00:00Z`` (an offset is required: hosts in other zones
    read the same instant) or ``+SECONDS`` (``+30``, ``+2m``) from now."""
    soon = ahead(text)
    if soon is not None:
        return soon
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: ISO 8601 with an offset (2026-12-24T18:00:00Z) or +SECONDS"
        ) from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no offset: a fleet's hosts may be in other time zones; add Z or +HH:MM"
        )
    return at.timestamp()


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_release(args: argparse.Namespace) -> int:
    with Fleet(
        args.redis, signing_key=args.sign_key, insecure=args.insecure, expires=args.expires
    ) as f:
        if args.cancel:
            if args.builds or args.at is not None:
                raise FleetError("--cancel ID takes no NAME=BUILD and no --at")
            rec = f.cancel_release(args.cancel, args.reason)
            left = rec.get("unconfirmed") or {}
            said = f"release {args.cancel}: {rec.get('state', 'cancelled')} everywhere"
            if left:  # a host that had staged it did not say it dropped it (stopped?)
                said = f"release {args.cancel}: {rec.get('state', 'cancelled')}; not confirmed by:"
                said += "".join(f"\n  {h}: {s}" for h, s in left.items())
            _emit(rec) if args.json else print(printable(said))
            return 2 if left else 0
        if not args.builds or args.at is None:
            raise FleetError("fleet release: give NAME=BUILD ... and --at TIME (or --cancel ID)")
        pairs = []
        for item in args.builds:
            name, eq, build = item.partition("=")
            if not eq or not name or not build:
                raise FleetError(f"fleet release: {item!r} is not NAME=BUILD")
            pairs.append((name, build))
        say = (lambda _m: None) if args.json else (lambda m: print(printable(m)))
        try:
            rec = f.release(
                pairs,
                at=args.at,
                deadline=args.deadline,
                hosts=args.hosts,
                canary=args.canary,
                bake=args.bake,
                wait=not args.no_wait,
                progress=say,
            )
        except RolloutFailed as exc:
            if args.json:
                _emit(exc.record)
            else:
                print(printable(f"error: {exc}"))
                for host, rep in sorted((exc.record.get("hosts_state") or {}).items()):
                    print(printable(f"  {host}: {_state(rep)}"))
            return 1
    if args.json:
        _emit(rec)
    elif args.no_wait:
        print(rec["id"])
    elif rec.get("not_switched"):  # each host that did not switch, and why (its own words)
        hosts = rec.get("hosts_state") or {}
        for host in rec["not_switched"]:
            rep = hosts.get(host) or {"state": "no report"}
            print(printable(f"  {host}: {_state(rep)}"))
    return 2 if rec.get("not_switched") else 0


def _state(rep: dict[str, Any], at: float | None = None) -> str:
    out = str(rep.get("state"))
    if at is not None and isinstance(rep.get("switched_ns"), int):
        out += f" {(rep['switched_ns'] - int(at * 1e9)) / 1e6:+.2f} ms after the time"
    if rep.get("verdict"):
        out += f" (its judge: {str(rep['verdict'])[:160]})"
    if rep.get("late"):
        out += " (late: it had not staged it)"
    if rep.get("plugin"):
        out += f" ({rep['plugin']})"
    if rep.get("error") and rep.get("state") != "cancelled":  # the release's line says why
        out += f": {str(rep['error'])[:160]}"
    return out


def release_lines(releases: list[dict[str, Any]], shown: int = 3) -> list[str]:
    """``fleet status``: each release (newest first, at most ``shown``), its
    state and each host's."""
    lines = []
    for r in releases[:shown]:
        if r.get("state") == "invalid":
            lines.append(f"release {r['id']}: INVALID: {str(r.get('error'))[:120]}")
            continue
        hosts = r.get("hosts") or {}
        counts: dict[str, int] = {}
        for rep in hosts.values():
            counts[rep["state"]] = counts.get(rep["state"], 0) + 1
        builds = ", ".join(f"{n}={str(d)[:12]}" for n, d in (r.get("builds") or {}).items())
        last = r["at"] + float((r.get("canary") or {}).get("bake", 0.0))
        passed = r["state"] == "planned" and time.time() >= last
        state = "its time passed" if passed else r["state"]
        lines.append(
            f"release {r['id']}: {state} at {when(r['at'])}: {builds}; hosts: "
            + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none reported")
            + (f"; reason: {r['reason']}" if r.get("reason") else "")
        )
        bake = float((r.get("canary") or {}).get("bake", 0.0))
        lines += [
            f"  {h}: {_state(rep, r['at'] + (0.0 if rep.get('canary') else bake))}"
            for h, rep in sorted(hosts.items())
        ]
    return [printable(line) for line in lines]
