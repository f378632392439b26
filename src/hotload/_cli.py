"""``hotload``: see and steer running hosts, inspect and build plugins, run the demo.

    hotload ls [--json] [--host PID|NAME | --socket PATH]   plugins and versions of a running host
    hotload hosts [--json]                                  running hosts of this user
    hotload reload NAME [--path FILE] [--json] [--host ...] reload a plugin in a running host
    hotload rollback NAME [--json] [--host ...]             make the previous version live again
    hotload inspect FILE [--json]                           offline: descriptor, exports,
                                                            unload blockers
    hotload build [FILES...] [-o DIR] [--target T]          same as `make plugins` / build.py
    hotload cflags [--include-dir]                          flags to build a plugin against the SDK
    hotload demo [--interactive] [--players N]              the demo (see hotload._demo)

With exactly one host running, host commands need no ``--host``/``--socket``.
Errors are one line on stderr, ``hotload: error: ...``, exit status 1 (2 for
bad usage); ``-v`` adds the library's log.

``--json`` output (stable; new keys may be added, none removed or renamed):

``ls --json``
    The control protocol's ``ls`` result: ``{"host": HOST, "plugins": [{"name",
    "versions": [VERSION, ...], "pruned"}], "leaks": {"images", "bytes"}}``.
    VERSION is ``VersionInfo.as_dict()``:
    ``name, seq, plugin_version, state, in_flight, loaded_at, unloaded_at,
    source, copy, digest, size, dlopen_count, dlclose_count, mapped_bytes,
    blockers, note`` (times in Unix seconds).
``hosts --json``
    ``{"hosts": [HOST, ...]}``; HOST is ``{"protocol", "hotload", "pid",
    "uid", "name", "argv", "started_at", "socket", "plugins"}``, or ``{"pid",
    "socket", "name", "error"}`` for a host that did not answer.
``reload --json``
    ``{"version": VERSION, "previous": VERSION}``.
``rollback --json``
    ``{"version": VERSION}``.
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
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from . import _control as control
from ._errors import HotloadError

_VERSION_NODE = re.compile(r"^[A-Z][A-Z0-9_]*_[0-9][0-9.]*$")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="hotload: %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except HotloadError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotload", description="Hot-swap C plugins in running Python hosts."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's log")
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
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser(
        "rollback", parents=[target, as_json], help="make a plugin's previous version live"
    )
    p.add_argument("name")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("inspect", parents=[as_json], help="describe a plugin file (offline)")
    p.add_argument("file")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("build", help="build plugins (like `make plugins`)")
    p.add_argument("files", nargs="*", help="C sources (default: ./native/plugins/*.c)")
    p.add_argument("-o", "--out-dir", help="output directory (default: build/plugins)")
    p.add_argument("--target", default="native", help="native (default) or windows")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser(
        "cflags", help="compiler flags for building a plugin against the installed SDK"
    )
    p.add_argument(
        "--include-dir", action="store_true", help="print only the SDK include directory"
    )
    p.set_defaults(func=cmd_cflags)
    p = sub.add_parser("demo", help="a game server hot-swapping a C plugin under load")
    p.add_argument(
        "--interactive", action="store_true", help="keep watching the plugin sources until Ctrl-C"
    )
    p.add_argument("--players", type=int, default=4, help="player threads (default 4)")
    p.add_argument(
        "--seconds", type=float, default=1.0, help="seconds of play before and after the swap"
    )
    p.add_argument(
        "--src", type=Path, help="sources to watch with --interactive (default: native/plugins)"
    )
    p.set_defaults(func=cmd_demo)
    from ._fleet_cli import add_commands as add_fleet_commands

    add_fleet_commands(sub)  # hotload fleet ...; hotload demo --fleet
    return parser


def _emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# ---- talking to a host --------------------------------------------------------------


def _target(args: argparse.Namespace) -> Path:
    return control.resolve(socket_path=args.socket, host=args.host)


def cmd_ls(args: argparse.Namespace) -> int:
    result = control.request(_target(args), "ls")
    if args.json:
        _emit_json(result)
        return 0
    host = result["host"]
    print(
        f"host pid {host['pid']} ({host['name']}), {len(result['plugins'])} plugin(s), socket "
        f"{host['socket']}"
    )
    rows = [("PLUGIN", "SEQ", "VERSION", "STATE", "CALLS", "LOADED", "SOURCE")]
    notes: list[str] = []
    for plugin in result["plugins"]:
        for v in plugin["versions"]:
            rows.append(
                (
                    v["name"],
                    f"v{v['seq']}",
                    v["plugin_version"],
                    v["state"],
                    str(v["in_flight"]),
                    time.strftime("%H:%M:%S", time.localtime(v["loaded_at"])),
                    v["source"],
                )
            )
            notes += [f"  {v['name']} v{v['seq']}: {b}" for b in v.get("blockers") or []]
            if v.get("note"):
                notes.append(f"  {v['name']} v{v['seq']}: {v['note']}")
        if plugin.get("pruned"):
            notes.append(
                f"  {plugin['name']}: {plugin['pruned']} older unloaded version(s) not kept in "
                f"the history"
            )
    _table(rows)
    leaks = result.get("leaks") or {}
    if leaks.get("images"):
        print(f"leaked: {leaks['images']} image(s) still in memory, {leaks['bytes']:,} bytes")
    if notes:
        print("blockers and notes:")
        print("\n".join(notes))
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    hosts = control.discover()
    if args.json:
        _emit_json({"hosts": hosts})
        return 0
    if not hosts:
        print(f"no running hotload host in {control.control_dir()}")
        return 0
    rows = [("PID", "NAME", "PLUGINS", "UP", "SOCKET")]
    for h in hosts:
        if "error" in h:
            rows.append((str(h["pid"]), "?", "-", "-", f"{h['socket']} ({h['error']})"))
            continue
        up = _duration(time.time() - h["started_at"])
        rows.append((str(h["pid"]), h["name"], ", ".join(h["plugins"]) or "-", up, h["socket"]))
    _table(rows)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    extra = {"path": str(Path(args.path).resolve())} if args.path else {}
    result = control.request(_target(args), "reload", name=args.name, **extra)
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
    result = control.request(_target(args), "rollback", name=args.name)
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
    report = inspect_file(args.file)
    if args.json:
        _emit_json(report)
    else:
        print(render_inspection(report))
    return 0


def inspect_file(path: str) -> dict[str, Any]:
    """Everything ``hotload inspect`` says about a file, as its JSON."""
    from ._loader import read_source

    data = read_source(path)
    is_pe = data[:2] == b"MZ" or path.lower().endswith(".dll")
    facts = _pe_facts(data, path) if is_pe else _elf_facts(data, path)
    desc, desc_error = _descriptor(facts.pop("section"), path)
    out: dict[str, Any] = {
        "path": path,
        **facts,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    out["plugin"] = (
        None
        if desc is None
        else {
            "name": desc.name,
            "version": desc.version,
            "abi": desc.abi,
            "hooks": {
                "on_load": desc.on_load,
                "on_unload": desc.on_unload,
                "self_test": desc.self_test,
            },
        }
    )
    out["descriptor_error"] = desc_error
    out["exports"] = [
        {"name": e.name, "signature": e.signature, "c": c_declaration(e.name, e.signature)}
        for e in (desc.exports if desc else ())
    ]
    out.update(_unload_facts(data, path, is_pe))
    return out


def _elf_facts(data: bytes, path: str) -> dict[str, Any]:
    from ._platform import _elf as elfcheck

    facts = elfcheck.check(data, path, any_machine=True)
    return {
        "format": "ELF",
        "machine": facts.machine_name,
        "bits": facts.bits,
        "section": facts.hotload_section,
    }


def _pe_facts(data: bytes, path: str) -> dict[str, Any]:
    try:
        from ._platform import _pe as pecheck
    except ImportError as exc:  # pefile missing
        raise HotloadError(f"{path}: cannot inspect a Windows DLL here: {exc}") from None
    facts = pecheck.check(data, path, expect_machine=None)
    return {
        "format": "PE",
        "machine": facts.machine_name,
        "bits": facts.bits,
        "section": facts.hotload_section,
    }


def _descriptor(section: bytes | None, path: str) -> tuple[Any, str | None]:
    from . import _descriptor as descriptor
    from ._errors import DescriptorError

    if section is None:
        return None, None
    try:
        return descriptor.parse(section, path), None
    except DescriptorError as exc:
        return None, str(exc)


def _unload_facts(data: bytes, path: str, is_pe: bool) -> dict[str, Any]:
    if is_pe:
        from ._platform import _pe as pecheck

        return {
            "dynamic_exports": pecheck.exports(data, path),
            "needed": [],
            "soname": None,
            "unload_blockers": [],
            "hazards": [],
            "unloads": True,
        }
    from . import _inspector as inspector

    report = inspector.inspect_bytes(data, path)

    def finding(f: Any) -> dict[str, Any]:
        return {"code": f.code, "message": f.message, "fix": f.fix}

    return {
        "dynamic_exports": list(report.dynamic_exports),
        "needed": list(report.needed),
        "soname": report.soname,
        "unload_blockers": [finding(f) for f in report.pins()],
        "hazards": [finding(f) for f in report.hazards()],
        "unloads": not report.pins(),
    }


def c_declaration(name: str, signature: str) -> str:
    """``int64_t(int64_t, int32_t)`` named ``reward`` -> ``int64_t reward(int64_t, int32_t)``."""
    open_at = signature.find("(")
    if open_at <= 0:
        return f"{name}: {signature}"
    ret, params = signature[:open_at].strip(), signature[open_at:]
    return f"{ret}{'' if ret.endswith('*') else ' '}{name}{params}"


def render_inspection(r: dict[str, Any]) -> str:
    kind = f"{r['format']} {r['machine']} {r['bits']}-bit, {r['size']:,} bytes"
    if r["plugin"]:
        p = r["plugin"]
        lines = [f"{r['path']}: hotload plugin {p['name']} {p['version']} (ABI {p['abi']}), {kind}"]
        hooks = [h for h, sym in p["hooks"].items() if sym]
        lines.append(f"  hooks     {', '.join(hooks) or 'none (stateless)'}")
        decls = [e["c"] for e in r["exports"]] or ["(none)"]
        lines += [f"  {'exports' if i == 0 else '':<9} {d}" for i, d in enumerate(decls)]
    else:
        why = r["descriptor_error"] or "no .hotload descriptor"
        lines = [f"{r['path']}: not a hotload plugin ({why}), {kind}"]
        names = [n for n in r["dynamic_exports"] if not _VERSION_NODE.match(n)]  # GLIBC_2.2.5 & co.
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        lines.append(f"  exports   {shown or '(none)'}")
    if r["needed"]:
        lines.append(f"  needs     {', '.join(r['needed'])}")
    if r["format"] == "PE":
        lines.append("  unload    (the unload analysis reads ELF files only)")
    elif r["unloads"]:
        lines.append("  unload    nothing in the file keeps it mapped after dlclose")
    else:
        lines.append("  unload    stays mapped after dlclose:")
        lines += [f"            - {_finding_text(f)}" for f in r["unload_blockers"]]
    if r["hazards"]:
        lines.append("  hazards   code that may run after an unload:")
        lines += [f"            - {_finding_text(f)}" for f in r["hazards"]]
    return "\n".join(lines)


def _finding_text(f: dict[str, Any]) -> str:
    return f"{f['message']}" + (f" Fix: {f['fix']}." if f.get("fix") else "")


def cmd_build(args: argparse.Namespace) -> int:
    from . import _builder as builder

    root = Path.cwd()
    if not args.files and not any((root / "native" / "plugins").glob("*.c")):
        raise HotloadError(
            f"no sources given and no native/plugins/*.c under {root}; name the .c files to build"
        )
    argv = [*args.files, "--target", args.target, *(["-o", args.out_dir] if args.out_dir else [])]
    return builder.main(argv, root=root, environ=os.environ)


def cmd_cflags(args: argparse.Namespace) -> int:
    from ._builder import sdk_include_dir

    include = sdk_include_dir()
    print(include if args.include_dir else f"-I{include} -std=c11 -fPIC -shared")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import _demo as demo

    if args.players < 1:
        raise HotloadError("--players must be at least 1")
    return demo.run(
        players=args.players,
        seconds=args.seconds,
        interactive=args.interactive,
        src=args.src,
        verbose=args.verbose,
    )


# ---- formatting ---------------------------------------------------------------------


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


if __name__ == "__main__":
    sys.exit(main())
