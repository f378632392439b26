"""``hotload``: see and steer running hosts, inspect and build plugins, run the demo.

    hotload ls [--json] [--host PID|NAME | --socket PATH]   plugins and versions of a running host
    hotload hosts [--json]                                  running hosts of this user
    hotload top [--interval S] [--once] [--json] [--sort KEY] [--plugin NAME] [--host ...]
                                                            live view: calls/s, errors, latency
    hotload reload NAME [--path FILE] [--allow-signature-change] [--json] [--host ...]
                                                            reload a plugin in a running host
    hotload rollback NAME [--json] [--host ...]             make the previous version live again
    hotload canary NAME [FILE] [--share S] [--promote|--abort|--wait] [--json] [--host ...]
                                                            a build beside the one serving, judged
    hotload release NAME=FILE ... | --rollback [--json] [--host ...]
                                                            switch several plugins as one
    hotload record NAME [--calls N | --stop] [--host ...]  keep a plugin's recent calls
    hotload replay NAME FILE [--json] [--host ...]          run them on FILE in a worker, compare
    hotload log [NAME] [--follow] [--json] [-n N] [--host ...]
                                                            the host's swap journal
    hotload inspect FILE [--json]                           offline: descriptor, exports,
                                                            unload blockers
    hotload build [FILES...] [-o DIR] [--target T]          same as `make plugins` / build.py
    hotload cflags [--cxx] [--include-dir]                  flags to build a plugin against the SDK
    hotload demo [--interactive|--isolate] [--players N]           the demo (see hotload._cli.demo)

With exactly one host running, host commands need no ``--host``/``--socket``.
``ls`` prints one line per version: ``CALLS`` is the calls that version has
served, ``ERRORS`` those that raised, ``P99`` its 99th-percentile call time
(``-``: not measured), ``INFLIGHT`` the calls running in it now, ``WHY`` the short codes of
what keeps it in memory (``hotload inspect FILE`` explains each and its fix),
``NOTE`` its note (``rollback to v2``), if any.
``reload --path`` takes a path relative to the current directory.
Errors are one line on stderr, ``hotload: error: ...``, exit status 1 (2 for
bad usage); ``-v`` adds the library's log.

``--json`` output (stable; new keys may be added, none removed or renamed):

``ls --json``
    The control protocol's ``ls`` result: ``{"host": HOST, "plugins": [{"name",
    "versions": [VERSION, ...], "pruned"}], "leaks": {"images", "bytes"},
    "refused": [{"plugin", "count", "last": ENTRY}]}``; ``refused`` lists every
    plugin with refused builds, loaded or not (ENTRY: see ``hotload log``).
    VERSION is ``VersionInfo.as_dict()``:
    ``name, seq, plugin_version, state, in_flight, loaded_at, unloaded_at,
    source, copy, digest, size, dlopen_count, dlclose_count, mapped_bytes,
    blockers, note`` (times in Unix seconds); the active version also has
    ``source_digest``, the SHA-256 of what its source file holds now (null:
    no readable file there).
``top --json``
    One object per snapshot, one per line: ``{"time", "interval", "host",
    "calls_per_s", "last_swap", "leaks", "plugins": [{"name", "versions":
    [VERSION + {"calls_per_s", "errors_per_s"}]}]}`` (see ``hotload._cli.top``;
    it exits 3 when the host goes away).
``hosts --json``
    ``{"hosts": [HOST, ...]}``; HOST is ``{"protocol", "hotload", "pid",
    "uid", "name", "argv", "started_at", "socket", "plugins"}``, or ``{"pid",
    "socket", "name", "error"}`` for a host that did not answer.
``reload --json``
    ``{"version": VERSION, "previous": VERSION}``.
``rollback --json``
    ``{"version": VERSION}``.
``release --json``
    ``{"release": {"id", "versions": {NAME: VERSION}, "replaced": {NAME: SEQ | null},
    "unloaded": [NAME]}}``.
``canary --json``
    ``{"canary": CANARY | null}``; CANARY is ``Canary.figures()``: ``name, state,
    verdict, share, baseline_seq, candidate_seq, started_at, ended_at, seconds,
    key_errors, judged, candidate, baseline``, the last two ``{"calls", "errors",
    "crashes", "service_errors", "error_rate", "sampled", "p50_us", "p99_us"}``.
``inspect --json``
    ``{"path", "format": "ELF"|"PE", "machine", "bits", "size", "sha256",
    "plugin": {"name", "version", "abi", "hooks": {"on_load", "on_unload",
    "self_test"}} | null, "descriptor_error": str | null, "exports": [{"name",
    "signature", "c"}], "dynamic_exports": [str], "needed": [str], "soname",
    "unload_blockers": [FINDING], "hazards": [FINDING], "unloads": bool}``;
    FINDING is ``{"code", "message", "fix"}``; ``unloads`` is false when a
    blocker keeps the image mapped after ``dlclose``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from .._errors import HotloadError
from .._ops import control_client, control_paths
from .canary import add_command as add_canary_command
from .log import add_command as add_log_command
from .log import refusal_notes
from .release import add_command as add_release_command
from .replay import add_commands as add_replay_commands
from .text import printable
from .top_data import fmt_count, fmt_us, shown_state

_VERSION_NODE = re.compile(r"^[A-Z][A-Z0-9_]*_[0-9][0-9.]*$")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="hotload: %(levelname)s: %(message)s",
    )
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left (``| head``) shows here, not at exit
        return status
    except BrokenPipeError:
        return _reader_left()
    except HotloadError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130


def _reader_left() -> int:
    """The reader of our output closed it (``hotload inspect X | head -3``):
    not an error worth a message.  As the Python docs advise, point stdout
    at devnull so the interpreter's own flush at exit does not fail again;
    the status is what a shell reports for a command SIGPIPE ended."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 141  # 128 + SIGPIPE (13); Windows has no signal.SIGPIPE


def _fail(message: str) -> int:
    """One line on stderr.  A compiler's multi-line output is cut to its
    first diagnostic, which is the line a person needs first."""
    lines = [ln.strip() for ln in message.strip().splitlines()] or ["failed"]
    first = lines[0]
    diagnostic = next((ln for ln in lines[1:] if "error" in ln), None)
    if diagnostic:
        first = f"{first.split(' (', 1)[0].rstrip(':')}: {diagnostic}"
    print(f"hotload: error: {first}", file=sys.stderr)
    return 1


def _version_line() -> str:
    """``hotload --version``: the package version and which router runs."""
    from .. import __version__
    from .._engine.lifecycle import ROUTER

    return f"hotload {__version__} (router: {ROUTER})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotload", description="Hot-swap C plugins in running Python hosts."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's log")
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    target = argparse.ArgumentParser(add_help=False)
    pick = target.add_mutually_exclusive_group()
    pick.add_argument(
        "--host", metavar="PID|NAME", help="the host to talk to, when several are running"
    )
    pick.add_argument("--socket", metavar="PATH", help="the host's control socket")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output (stable)")

    p = sub.add_parser(
        "ls", parents=[target, as_json], help="plugins and versions of a running host"
    )
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("hosts", parents=[as_json], help="running hosts of this user")
    p.set_defaults(func=cmd_hosts)
    p = sub.add_parser(
        "reload", parents=[target, as_json], help="reload a plugin in a running host"
    )
    p.add_argument("name")
    p.add_argument("--path", help="load this file instead of the plugin's own")
    p.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="accept a build that removes an export or changes a prototype",
    )
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser(
        "rollback", parents=[target, as_json], help="make a plugin's previous version live"
    )
    p.add_argument("name")
    p.set_defaults(func=cmd_rollback)
    add_log_command(sub, [target, as_json])  # hotload log
    add_canary_command(sub, [target, as_json])  # hotload canary
    add_release_command(sub, [target, as_json])  # hotload release
    add_replay_commands(sub, [target, as_json])  # hotload record, hotload replay
    p = sub.add_parser("inspect", parents=[as_json], help="describe a plugin file (offline)")
    p.add_argument("file")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("build", help="build plugins (like `make plugins`)")
    p.add_argument(
        "files",
        nargs="*",
        help="C sources or plugin directories, or C++ files (.cpp, .cc, .cxx: built with $CXX, "
        "default c++, -std=c++17) (default: ./native/plugins/*.c)",
    )
    p.add_argument("-o", "--out-dir", help="output directory (default: build/plugins)")
    p.add_argument("--target", default="native", help="native (default) or windows")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser(
        "cflags", help="compiler flags for building a plugin against the installed SDK"
    )
    p.add_argument(
        "--include-dir", action="store_true", help="print only the SDK include directory"
    )
    p.add_argument(
        "--cxx", action="store_true", help="flags for a C++ plugin (g++/clang++: -std=c++17)"
    )
    p.set_defaults(func=cmd_cflags)
    p = sub.add_parser("demo", help="a game server hot-swapping a C plugin under load")
    p.add_argument(
        "--interactive", action="store_true", help="keep watching the plugin sources until Ctrl-C"
    )
    p.add_argument(
        "--isolate",
        action="store_true",
        help="run double_xp and activity in worker processes; crash an isolated plugin on purpose",
    )
    p.add_argument("--players", type=int, default=4, help="player threads (default 4)")
    p.add_argument(
        "--seconds", type=float, default=1.0, help="seconds of play before and after the swap"
    )
    p.add_argument(
        "--src", type=Path, help="sources to watch with --interactive (default: native/plugins)"
    )
    p.add_argument("--fleet", action="store_true", help="4 host processes rolled out over Redis")
    p.set_defaults(func=cmd_demo)
    from .fleet import add_commands as add_fleet_commands
    from .top import add_command as add_top_command

    add_top_command(sub, target)  # hotload top

    add_fleet_commands(sub)  # hotload fleet ...
    return parser


def _emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# ---- talking to a host --------------------------------------------------------------


def _target(args: argparse.Namespace) -> Path:
    return control_client.resolve(socket_path=args.socket, host=args.host)


def cmd_ls(args: argparse.Namespace) -> int:
    result = control_client.request(_target(args), "ls")
    if args.json:
        _emit_json(result)
        return 0
    host = result["host"]
    handles = f", {result['handles']} handle(s)" if result.get("handles") else ""
    print(
        f"host pid {host['pid']} ({host['name']}), {len(result['plugins'])} plugin(s){handles}, "
        f"socket {host['socket']}"
    )
    rows: list[tuple[str, ...]] = [
        (
            "PLUGIN",
            "SEQ",
            "VERSION",
            "STATE",
            "CALLS",
            "ERRORS",
            "P99",
            "INFLIGHT",
            "LOADED",
            "SOURCE",
            "WHY",
            "NOTE",
        )
    ]
    notes: list[str] = []
    for plugin in result["plugins"]:
        rows += [_version_row(v) for v in plugin["versions"]]
        notes += [
            f"{v['name']} v{v['seq']} runs build {v['digest'][:12]}; {v['source']} now holds "
            f"{v['source_digest'][:12]}, not what runs"
            for v in plugin["versions"]
            if _changed_on_disk(v)
        ]
        if plugin.get("pruned"):
            notes.append(
                f"{plugin['name']}: {plugin['pruned']} older unloaded version(s) not kept in "
                f"the history"
            )
    _table(rows)
    leaks = result.get("leaks") or {}
    if leaks.get("images"):
        print(f"leaked: {leaks['images']} image(s) still in memory, {leaks['bytes']:,} bytes")
    if any("[" in row[3] for row in rows[1:]):
        notes.append(
            "STATE [pid N, sandboxed, K restarts]: runs isolated in worker process N, in a "
            "sandbox (its protections below), restarted K times after crashes"
        )
    kinds = {
        _sandbox_word(v): tuple(v.get("sandbox") or ())
        for plugin in result["plugins"]
        for v in plugin["versions"]
        if v.get("isolated") and v.get("worker") == "running"
    }
    for word, protections in sorted(kinds.items()):
        notes.append(
            f"{word}: {' '.join(protections)}"
            if protections
            else f"{word}: isolated with Isolated(sandbox=False): the plugin can reach this host"
        )
    if any(row[-2] != "-" for row in rows[1:]):
        notes.append("WHY: what keeps a version in memory; `hotload inspect FILE` explains each")
    notes += refusal_notes(result)
    if notes:
        print("\n".join(notes))
    return 0


def _version_row(v: dict[str, Any]) -> tuple[str, ...]:
    """One line per version, whatever its blockers or note say: WHY is the
    blocker codes joined (``inspect`` has the prose), NOTE the note's first
    line cut short (a rollback's "rollback to v2"); the two never share a
    column, since WHY means "what keeps it in memory"."""
    served = v.get("served")
    why = ",".join(_one_line(str(b), 40) for b in v.get("blockers") or ())
    return (
        v["name"],
        f"v{v['seq']}",
        v["plugin_version"],
        shown_state(v).partition("/")[0] + _isolated(v),
        "-" if served is None else f"{served:,}",
        fmt_count(v.get("errors")),  # .get: a host from before per-version errors says "-"
        fmt_us(v.get("p99_us")),
        str(v["in_flight"]),
        time.strftime("%H:%M:%S", time.localtime(v["loaded_at"])),
        v["source"] + (" (changed)" if _changed_on_disk(v) else ""),
        why or "-",
        _one_line(v.get("note") or "", 60),
    )


def _changed_on_disk(v: dict[str, Any]) -> bool:
    """The version runs, and its source file now holds another build."""
    now = v.get("source_digest")
    return isinstance(now, str) and now != v["digest"]


def _isolated(v: dict[str, Any]) -> str:
    """`` [pid 4242, sandboxed, 1 restart]`` for an isolated version: its
    worker (or what became of it) in a few characters, so the table stays one
    screen wide."""
    if not v.get("isolated"):
        return ""
    worker = v.get("worker") or ""
    where = f"pid {v['pid']}" if v.get("pid") and worker == "running" else worker or "isolated"
    if worker == "stopped":
        where = "worker stopped"
    if worker == "running":
        where += f", {_sandbox_word(v)}"
    n = v.get("restarts") or 0
    if n:
        where += f", {n} restart" + ("s" if n != 1 else "")
    q = v.get("quarantined") or 0
    if q:
        where += f", {q} input{'s' if q != 1 else ''} quarantined"
    return f" [{where}]"


def _sandbox_word(v: dict[str, Any]) -> str:
    """How an isolated version's worker is confined, in a word or two: the
    full sandbox, the fallback (no namespaces), or none; the notes under the
    table list the protections."""
    protections = v.get("sandbox") or ()
    if not protections:
        return "no sandbox"
    return "sandboxed" if "pid-ns" in protections else "sandbox (fallback)"


def _one_line(text: str, width: int) -> str:
    first = " ".join(text.split())
    return first if len(first) <= width else first[: width - 3].rstrip() + "..."


def cmd_hosts(args: argparse.Namespace) -> int:
    hosts = control_client.discover()
    if args.json:
        _emit_json({"hosts": hosts})
        return 0
    if not hosts:
        print(f"no running hotload host in {control_paths.control_dir()}")
        return 0
    rows: list[tuple[str, ...]] = [("PID", "NAME", "PLUGINS", "UP", "SOCKET")]
    for h in hosts:
        if "error" in h:
            rows.append((str(h["pid"]), "?", "-", "-", f"{h['socket']} ({h['error']})"))
            continue
        up = _duration(time.time() - h["started_at"])
        rows.append((str(h["pid"]), h["name"], ", ".join(h["plugins"]) or "-", up, h["socket"]))
    _table(rows)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    # the host's working directory is not ours: send an absolute path
    extra: dict[str, Any] = {"path": str(Path(args.path).resolve())} if args.path else {}
    if args.allow_signature_change:
        extra["allow_signature_change"] = True
    result = control_client.request(_target(args), "reload", name=args.name, **extra)
    if args.json:
        _emit_json(result)
        return 0
    new, old = result["version"], result.get("previous")
    before = f"v{old['seq']} ({old['plugin_version']}) -> " if old else ""
    print(
        f"reloaded {new['name']}: {before}v{new['seq']} ({new['plugin_version']}) from "
        f"{new['source']}"
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    result = control_client.request(_target(args), "rollback", name=args.name)
    if args.json:
        _emit_json(result)
        return 0
    v = result["version"]
    print(
        f"rolled back {args.name}: now v{v['seq']} ({v['plugin_version']})"
        if v
        else f"rolled back {args.name}"
    )
    return 0


# ---- offline ------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from .._inspect import report as inspector

    report = inspector.describe(args.file)
    if args.json:
        _emit_json(inspection_json(report))
    else:
        print(render_inspection(report))
    return 0


def inspection_json(r: Any) -> dict[str, Any]:
    """A ``Report`` as ``hotload inspect --json`` prints it (see the module doc)."""
    p = r.plugin

    def finding(f: Any) -> dict[str, Any]:
        return {"code": f.code, "message": f.message, "fix": f.fix, "explanation": f.explanation}

    return {
        "path": r.path,
        "format": r.format,
        "machine": r.machine,
        "bits": r.bits,
        "size": r.size,
        "sha256": r.digest,
        "toolchain": r.toolchain,
        "compiler": r.compiler,
        "plugin": None
        if p is None
        else {
            "name": p.name,
            "version": p.version,
            "abi": p.abi,
            "hooks": {"on_load": p.on_load, "on_unload": p.on_unload, "self_test": p.self_test},
        },
        "descriptor_error": r.descriptor_error,
        "exports": [
            {"name": e.name, "signature": e.signature, "c": c_declaration(e.name, e.signature)}
            for e in (p.exports if p else ())
        ],
        "imports": [
            {"name": i.name, "signature": i.signature, "c": c_declaration(i.name, i.signature)}
            for i in (p.imports if p else ())
        ],
        "types": [_type_line(t) for t in (p.types if p else ())],
        "state": None
        if p is None or p.state is None
        else {"type": p.state.type, "size": p.state.size, "migrate": dict(p.state.migrations)},
        "dynamic_exports": list(r.dynamic_exports),
        "needed": list(r.needed),
        "soname": r.soname,
        "unload_blockers": [finding(f) for f in r.pins()],
        "hazards": [finding(f) for f in r.hazards()],
        "unloads": not r.pins(),
    }


def c_declaration(name: str, signature: str) -> str:
    """``int64_t(int64_t, int32_t)`` named ``reward`` -> ``int64_t reward(int64_t, int32_t)``."""
    open_at = signature.find("(")
    if open_at <= 0:
        return f"{name}: {signature}"
    ret, params = signature[:open_at].strip(), signature[open_at:]
    return f"{ret}{'' if ret.endswith('*') else ' '}{name}{params}"


def render_inspection(r: Any) -> str:
    """A ``Report`` for a person: what the file is, then each reason that
    keeps it in memory or makes it unsafe to unload, explained once."""
    kind = f"{r.format} {r.machine} {r.bits}-bit, {r.size:,} bytes"
    label = {"go": "Go", "rust": "Rust", "c++": "C++", "c": "C", "c/c++": "C or C++"}.get(
        r.toolchain or "", ""
    )
    built = (f", {label}" if label else "") + (f" ({r.compiler})" if r.compiler else "")
    if r.plugin:
        p = r.plugin
        lines = [f"{r.path}: hotload plugin {p.name} {p.version} (ABI {p.abi}), {kind}{built}"]
        hooks = [h for h in ("on_load", "on_unload", "self_test") if getattr(p, h)]
        none = "none (stateless)" if p.state is None else "none"
        lines.append(f"  hooks     {', '.join(hooks) or none}")
        decls = [c_declaration(e.name, e.signature) for e in p.exports] or ["(none)"]
        lines += [f"  {'exports' if i == 0 else '':<9} {d}" for i, d in enumerate(decls)]
        imports = [c_declaration(i.name, i.signature) for i in p.imports]
        lines += [f"  {'imports' if i == 0 else '':<9} {d}" for i, d in enumerate(imports)]
        types = [_type_line(t) for t in p.types]
        lines += [f"  {'types' if i == 0 else '':<9} {d}" for i, d in enumerate(types)]
        if p.state is not None:
            migrate = ", ".join(f for f, _ in p.state.migrations)
            lines.append(
                f"  state     {p.state.type} ({p.state.size} bytes, HOTLOAD_STATE)"
                + (f"; migrates {migrate}" if migrate else "")
            )
    else:
        why = r.descriptor_error or "no .hotload descriptor"
        lines = [f"{r.path}: not a hotload plugin ({why}), {kind}{built}"]
        names = [n for n in r.dynamic_exports if not _VERSION_NODE.match(n)]  # GLIBC_2.2.5 & co.
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        lines.append(f"  exports   {shown or '(none)'}")
    if r.needed:
        lines.append(f"  needs     {', '.join(r.needed)}")
    seen: set[str] = set()
    hazards = [f for f in r.hazards() if not f.pins]  # a pin that is also unsafe: said once
    if not r.analysed:
        lines.append(f"  unload    (the unload analysis reads ELF files only, not {r.format})")
    elif not r.pins():
        lines.append("  unload    nothing in the file keeps it mapped after dlclose")
    else:
        lines.append("  unload    stays mapped after dlclose:")
        lines += _finding_lines(r.pins(), seen)
    if hazards:
        lines.append("  hazards   code that may run after an unload:")
        lines += _finding_lines(hazards, seen)
    return "\n".join(lines)


def _type_line(t: Any) -> str:
    """``struct player_t (32 bytes, align 8): id int64_t @0, level int32_t @8``."""
    if t.kind == "enum":
        members = ", ".join(f"{n} = {v}" for n, v in t.values)
    else:
        members = ", ".join(f"{f.name} {f.ctype} @{f.offset}" for f in t.fields)
    return f"{t.kind} {t.name} ({t.size} bytes, align {t.align}): {members or '(no members)'}"


def _finding_lines(findings: Any, seen: set[str]) -> list[str]:
    """Per finding: its code and message and its fix; the reason's
    explanation only the first time that reason appears."""
    out: list[str] = []
    for f in findings:
        out.append(f"            - [{f.code}] {f.message}")
        why = f.code.split(":", 1)[0]
        if why not in seen:
            seen.add(why)
            out += [f"              {line}" for line in textwrap.wrap(f.explanation, 86)]
        out.append(f"              fix: {f.fix}")
    return out


def cmd_build(args: argparse.Namespace) -> int:
    from .._artifact import builder

    root = Path.cwd()
    if not args.files and not any((root / "native" / "plugins").glob("*.c")):
        raise HotloadError(
            f"no sources given and no native/plugins/*.c under {root}; name the .c files to build"
        )
    argv = [*args.files, "--target", args.target, *(["-o", args.out_dir] if args.out_dir else [])]
    return builder.main(argv, root=root, environ=os.environ)


def cmd_cflags(args: argparse.Namespace) -> int:
    from .._artifact.builder import sdk_include_dir, user_cflags

    print(sdk_include_dir() if args.include_dir else shlex.join(user_cflags(cxx=args.cxx)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.fleet:
        from .fleet_demo import run as run_fleet_demo

        return run_fleet_demo(verbose=args.verbose)
    from . import demo

    if args.players < 1:
        raise HotloadError("--players must be at least 1")
    return demo.run(
        players=args.players,
        seconds=args.seconds,
        interactive=args.interactive,
        src=args.src,
        verbose=args.verbose,
        isolate=args.isolate,
    )


# ---- formatting ---------------------------------------------------------------------


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print(printable("  ".join([*cells, row[-1]]).rstrip()))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


if __name__ == "__main__":
    sys.exit(main())
