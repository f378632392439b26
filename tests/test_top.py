"""``hotload top``: the live view driven in a real terminal (tmux) against a real
host process, its plain and JSON output for pipes, what it does when the host
dies or answers nonsense, and the pure arithmetic (rates, sorting, keys) it
draws from."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotload import Host
from hotload._cli import top, top_data
from hotload._cli.top_data import Controls, Sample, build_view, plain_lines, press
from hotload._ops import control_client, control_paths
from hotload._platform import _keys_posix, dl

from conftest import wait_for

PLUGIN = """
#include <hotload.h>
#include <stdlib.h>
HOTLOAD_PLUGIN("NAME", "1.0.0");
HOTLOAD_API int64_t work(int64_t x) { return x * 2; }
HOTLOAD_EXPORT(work, int64_t, (int64_t));
HOTLOAD_API int64_t crash(void) { abort(); }
HOTLOAD_EXPORT(crash, int64_t, (void));
"""

# zeta runs in process and is called in a loop (about a thousand calls a
# second, so the machine stays usable); alpha runs isolated and is called only
# when the test writes "crash" (its worker dies and is restarted).
HOST_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    from hotload import Host
    host = Host(control=True)
    zeta = host.load(sys.argv[1])
    alpha = host.load(sys.argv[2], isolate=True)
    stop = threading.Event()
    def loop():
        while not stop.is_set():
            zeta.work(3)
            time.sleep(0.001)
    threading.Thread(target=loop, daemon=True).start()
    print(host.serve_control().path, flush=True)
    for line in sys.stdin:  # until the test closes stdin
        try:
            alpha.crash()
        except Exception as exc:
            print(type(exc).__name__, flush=True)
    stop.set()
    host.close()
""")


class HostProcess:
    def __init__(self, env: dict[str, str], zeta: Path, alpha: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOST_SCRIPT, str(zeta), str(alpha)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "the host process did not start"
        self.socket = Path(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def ctl_env(tmp_path: Path, short_tmp: Path) -> dict[str, str]:
    ctl = short_tmp / "ctl"
    ctl.mkdir(mode=0o700)
    return {**os.environ, control_paths.ENV_DIR: str(ctl), "HOTLOAD_WORKDIR": str(tmp_path / "w")}


@pytest.fixture
def host(cc, ctl_env: dict[str, str]) -> Iterator[HostProcess]:
    zeta = cc(PLUGIN.replace("NAME", "zeta"), "zeta")
    alpha = cc(PLUGIN.replace("NAME", "alpha"), "alpha")
    h = HostProcess(ctl_env, zeta, alpha)
    yield h
    h.stop()


class Tmux:
    """One tmux session of 160x40 on a private server (its socket under
    ``short_tmp``), running ``command``; when the command ends the pane says
    ``[top exited N]`` and stays, so its last words can be read."""

    def __init__(self, where: Path, env: dict[str, str], command: list[str]) -> None:
        assert shutil.which("tmux"), "tmux is needed to drive hotload top (.ci/run installs it)"
        self.base = ["tmux", "-u", "-S", str(where / "tmux.sock")]
        self.env = env
        # after the command: its status, and whether the terminal is back in
        # canonical (line) mode, i.e. top undid its cbreak mode
        tty = "$(stty -a | grep -oE -- '-?icanon' | head -n 1)"
        script = f'{shlex.join(command)}; echo "[top exited $?] [tty {tty}]"; sleep 600'
        self._tmux("new-session", "-d", "-x", "160", "-y", "40", "-s", "top", script)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "top")

    def wait(self, cond: Callable[[str], object], what: str, timeout: float = 30.0) -> str:
        """The screen once ``cond(screen)`` holds; on a timeout the error
        shows the last screen (what top said instead)."""
        last = [""]

        def check() -> str | None:
            last[0] = self.screen()
            return last[0] if cond(last[0]) else None

        try:
            return wait_for(check, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{last[0]}") from None

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "top", *keys)

    def command_pid(self) -> int:
        """The pid of the command (the pane's shell's child)."""
        shell = int(self._tmux("list-panes", "-t", "top", "-F", "#{pane_pid}").strip())
        kids = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        assert len(kids) == 1, kids
        return int(kids[0])

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux_top(short_tmp: Path, ctl_env: dict[str, str], host: HostProcess) -> Iterator[Tmux]:
    command = [sys.executable, "-m", "hotload", "top", "--socket", str(host.socket)]
    term = Tmux(short_tmp, ctl_env, [*command, "--interval", "0.5"])
    yield term
    term.close()


def rows(screen: str) -> list[list[str]]:
    """The table's lines, split into cells (the ``>`` cursor mark dropped);
    a plugin's second version starts with its seq, not its name."""
    out = []
    for line in screen.splitlines():
        cells = line.split()
        if cells[:1] == [">"]:
            cells = cells[1:]
        is_version = len(cells) >= 12 and any(
            c.startswith("v") and c[1:].isdigit() for c in cells[:2]
        )
        if is_version:
            out.append(cells)
    return out


def order(screen: str) -> list[str]:
    return [r[0] for r in rows(screen) if not r[0].startswith("v")]


def cell(screen: str, plugin: str, column: int) -> str | None:
    row = next((r for r in rows(screen) if r[0] == plugin), None)
    return row[column] if row else None


def calls_per_s(screen: str, plugin: str) -> float:
    row = next((r for r in rows(screen) if r[0] == plugin), None)
    if row is None or row[4] == "-":
        return 0.0
    return float(row[4].replace(",", ""))


# ---- in a real terminal --------------------------------------------------------------------


def test_top_in_a_terminal_shows_rates_sorts_picks_and_quits(
    tmux_top: Tmux, host: HostProcess, ctl_env: dict[str, str]
) -> None:
    screen = tmux_top.wait(
        lambda s: calls_per_s(s, "zeta") > 0, "zeta's calls/s above zero in hotload top"
    )
    assert order(screen) == ["alpha", "zeta"], screen  # by name at first
    assert "q quit" in screen and "c calls" in screen, screen  # the footer names the keys
    listing = control_client.request(host.socket, "ls")
    alpha = next(p for p in listing["plugins"] if p["name"] == "alpha")["versions"][0]
    alpha_row = next(r for r in rows(screen) if r[0] == "alpha")
    assert alpha_row[3] == "active" and alpha_row[9] == str(alpha["pid"]), screen  # its worker
    assert alpha_row[10] == "0", screen  # restarts
    zeta_row = next(r for r in rows(screen) if r[0] == "zeta")
    assert (zeta_row[9], zeta_row[10]) == ("-", "-"), screen  # in process: no worker

    assert host.proc.stdin is not None and host.proc.stdout is not None
    host.proc.stdin.write("crash\n")  # alpha's worker dies; a new one serves
    host.proc.stdin.flush()
    assert host.proc.stdout.readline().strip() == "PluginCrashedError"
    tmux_top.wait(lambda s: cell(s, "alpha", 10) == "1", "alpha's restart in RESTARTS")
    again = control_client.request(host.socket, "ls")
    pid = next(p for p in again["plugins"] if p["name"] == "alpha")["versions"][0]["pid"]
    assert pid != alpha["pid"]
    # hotload ls: the crash is an error of alpha v1 when the host counts errors, "-" if not
    listed = hotload(ctl_env, "ls").stdout.splitlines()
    header, row = listed[1], next(line for line in listed if line.startswith("alpha "))
    errors = next(p for p in again["plugins"] if p["name"] == "alpha")["versions"][0].get("errors")
    column = row[header.index("ERRORS") :].split()[0]
    assert column == ("-" if errors is None else f"{errors:,}"), listed
    assert errors in (None, 1), errors
    tmux_top.wait(lambda s: cell(s, "alpha", 9) == str(pid), "the new worker's pid")

    tmux_top.keys("c")  # sort by calls/s: the busy plugin first
    tmux_top.wait(lambda s: order(s) == ["zeta", "alpha"], "sorted by calls/s")

    control_client.request(host.socket, "reload", name="zeta")
    tmux_top.wait(lambda s: "last swap zeta v2" in s, "the swap in the summary line")
    tmux_top.wait(
        lambda s: any(r[:2] in (["zeta", "v2"], ["v2", "1.0.0"]) for r in rows(s)),
        "zeta v2 in the table",
    )

    tmux_top.keys("/", "z", "e")  # a filter narrows as it is typed
    tmux_top.wait(lambda s: order(s) == ["zeta"], "the filter 'ze'")
    tmux_top.keys("Enter")
    assert "filter 'ze'" in tmux_top.wait(lambda s: "enter keep" not in s, "filter kept")
    tmux_top.keys("Escape")
    tmux_top.wait(lambda s: order(s) == ["zeta", "alpha"], "the filter cleared")

    tmux_top.keys("Down", "Enter")  # the second plugin on screen, picked
    screen = tmux_top.wait(lambda s: order(s) == ["alpha"], "alpha picked")
    assert "showing plugin alpha" in screen, screen
    assert f"build {alpha['digest'][:12]}" in screen, screen  # its details under the table

    tmux_top.keys("q")
    screen = tmux_top.wait(lambda s: "[top exited" in s, "top to quit")
    assert "[top exited 0] [tty icanon]" in screen, screen
    assert "Traceback" not in screen, screen
    check_once_prints_plain_lines_and_json(ctl_env, host)  # same host: one start-up less


def test_top_exits_with_a_message_when_its_host_dies(
    tmux_top: Tmux, host: HostProcess, ctl_env: dict[str, str]
) -> None:
    """The live view in a terminal and a JSON stream into a pipe, both on one
    host that is then killed: each ends with one line naming the host, exit 3."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotload", "top", "--interval", "0.2", "--json"],
        env=ctl_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        snaps: list[dict[str, Any]] = []
        reader = threading.Thread(
            target=lambda: snaps.extend(json.loads(line) for line in proc.stdout or ()),
            daemon=True,
        )
        reader.start()
        wait_for(lambda: len(snaps) >= 2, what="two JSON snapshots")
        assert all(s["calls_per_s"] > 0 for s in snaps[:2]), snaps[:2]
        tmux_top.wait(lambda s: calls_per_s(s, "zeta") > 0, "top running")

        host.proc.kill()
        host.proc.wait(30)
        screen = tmux_top.wait(lambda s: "[top exited" in s, "top to exit")
        assert "[top exited 3] [tty icanon]" in screen, screen
        assert f"hotload top: host pid {host.proc.pid} (" in screen, screen
        assert "went away" in screen and "Traceback" not in screen, screen

        assert proc.wait(30) == 3
        reader.join(30)
        assert proc.stderr is not None
        err = proc.stderr.read().strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"hotload top: host pid {host.proc.pid} ("), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_top_puts_the_terminal_back_when_terminated(tmux_top: Tmux) -> None:
    tmux_top.wait(lambda s: calls_per_s(s, "zeta") > 0, "top running")
    os.kill(tmux_top.command_pid(), signal.SIGTERM)
    screen = tmux_top.wait(lambda s: "[top exited" in s, "top to exit")
    assert f"[top exited {128 + signal.SIGTERM}] [tty icanon]" in screen, screen
    assert "PLUGIN" not in screen, screen  # the main screen is back: the view is gone


# ---- without a terminal ---------------------------------------------------------------------


def hotload(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotload", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def check_once_prints_plain_lines_and_json(ctl_env: dict[str, str], host: HostProcess) -> None:
    """``--once`` (stdout a pipe): one plain snapshot, then one JSON one."""
    done = hotload(ctl_env, "top", "--once", "--interval", "0.3")  # the only host: no --socket
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# ") and f"host pid {host.proc.pid}" in lines[0], lines
    assert tuple(lines[1].split()) == top_data.PLAIN_HEADER, lines
    table = [line.split() for line in lines[2:]]
    assert all(len(r) == len(top_data.PLAIN_HEADER) for r in table), lines  # no cell has a space
    by_name = {r[0]: dict(zip(top_data.PLAIN_HEADER, r, strict=True)) for r in table}
    assert set(by_name) == {"alpha", "zeta"}
    assert float(by_name["zeta"]["CALLS/S"]) > 0, lines
    assert float(by_name["alpha"]["CALLS/S"]) == 0, lines
    assert by_name["alpha"]["PID"].isdigit() and by_name["zeta"]["PID"] == "-"
    assert "\x1b" not in done.stdout  # no terminal codes in a pipe

    done = hotload(ctl_env, "top", "--once", "--json", "--interval", "0.3", "--plugin", "zeta")
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert [p["name"] for p in snap["plugins"]] == ["zeta"]
    versions = snap["plugins"][0]["versions"]
    assert [v["seq"] for v in versions] == [1, 2]  # a picked plugin: its history too
    v = versions[-1]
    assert v["calls_per_s"] > 0 and v["served"] > 0 and v["digest"]  # ls's fields, and rates
    assert snap["host"]["pid"] == host.proc.pid and snap["interval"] >= 0.3

    done = hotload(ctl_env, "top", "--once", "--plugin", "zetta")  # a typo: not an empty table
    assert done.returncode == 1 and not done.stdout, done.stdout
    assert "has no plugin 'zetta'; it has: alpha, zeta" in done.stderr, done.stderr


@pytest.mark.parametrize("interval", ["0", "nan", "-1", "abc", "1e9"])
def test_top_refuses_a_bad_interval(ctl_env, interval: str) -> None:
    done = hotload(ctl_env, "top", "--interval", interval)
    assert done.returncode == 2 and "--interval" in done.stderr, done.stderr


def test_top_without_a_host_is_a_one_line_error(ctl_env, short_tmp: Path) -> None:
    done = hotload(ctl_env, "top", "--once")
    assert done.returncode == 1 and "no running hotload host" in done.stderr, done.stderr
    not_a_socket = short_tmp / "file"
    not_a_socket.write_text("x")
    done = hotload(ctl_env, "top", "--socket", str(not_a_socket))
    assert done.returncode == 1 and "not a socket" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


class FakeHost:
    """A socket that answers every request with ``reply`` (bytes), or never."""

    def __init__(self, path: Path, reply: bytes | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.path = path
        self.reply = reply
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.reply is not None:
                conn.recv(65536)
                conn.sendall(self.reply)

    def command_pid(self) -> int:
        """The pid of the command (the pane's shell's child)."""
        shell = int(self._tmux("list-panes", "-t", "top", "-F", "#{pane_pid}").strip())
        kids = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        assert len(kids) == 1, kids
        return int(kids[0])

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.mark.parametrize(
    "result",
    [
        {"plugins": "many"},
        {"plugins": [{"name": "x", "versions": [{"name": "x", "seq": "1"}]}]},
        {"plugins": [{"name": "x", "versions": [{"name": "x", "seq": 1, "state": "active",
                                                  "in_flight": 0, "loaded_at": 0,
                                                  "served": True}]}]},
        {"plugins": [{"versions": []}]},
        {"plugins": [], "leaks": [1]},
    ],
)  # fmt: skip
def test_top_says_what_is_wrong_with_a_strange_answer(ctl_env, short_tmp, result) -> None:
    fake = FakeHost(
        short_tmp / "fake.sock", json.dumps({"ok": True, "result": result}).encode() + b"\n"
    )
    try:
        done = hotload(ctl_env, "top", "--once", "--interval", "0.1", "--socket", str(fake.path))
    finally:
        fake.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "the host's ls answer is not what hotload top reads" in line, line


def test_top_gives_up_on_a_host_that_never_answers(ctl_env, short_tmp) -> None:
    fake = FakeHost(short_tmp / "mute.sock", None)
    try:
        done = hotload(ctl_env, "top", "--once", "--socket", str(fake.path))
    finally:
        fake.close()
    assert done.returncode == 1 and "did not answer within" in done.stderr, done.stderr


# ---- the arithmetic and the keys (pure) --------------------------------------------------------


def version(name: str, seq: int, **kw: Any) -> dict[str, Any]:
    v = {"name": name, "seq": seq, "plugin_version": "1.0.0", "state": "active", "in_flight": 0}
    v.update({"loaded_at": 1000.0, "served": 0, "mapped_bytes": 4096, **kw})
    return v


def sample(at: float, *plugins: tuple[str, list[dict[str, Any]]]) -> Sample:
    listing = {
        "host": {"pid": 7, "name": "game"},
        "plugins": [{"name": n, "versions": vs} for n, vs in plugins],
        "leaks": {"images": 0, "bytes": 0},
    }
    return Sample(taken=at, wall=1000.0 + at, listing=top_data.check_listing(listing))


def test_rates_come_from_the_difference_between_two_samples() -> None:
    a = sample(0.0, ("xp", [version("xp", 1, served=100, errors=1)]))
    b = sample(
        2.0,
        ("xp", [version("xp", 1, served=300, errors=5, state="draining"),
                version("xp", 2, served=50, errors=0, loaded_at=1001.0)]),
    )  # fmt: skip
    view = build_view(a, b, Controls())
    (g,) = view.groups
    assert [(r.seq, r.calls_s, r.errors_s) for r in g.rows] == [(1, 100.0, 2.0), (2, 25.0, 0.0)]
    assert (g.calls_s, g.errors_s, view.calls_s) == (125.0, 2.0, 125.0)
    assert view.last_swap == ("xp", 2, 1.0)  # loaded 1 s before the sample
    assert build_view(None, b, Controls()).groups[0].rows[0].calls_s is None  # no earlier sample


def test_figures_a_host_does_not_report_are_unknown_not_zero() -> None:
    a = sample(0.0, ("xp", [version("xp", 1, served=10)]))
    b = sample(1.0, ("xp", [version("xp", 1, served=20)]))
    (row,) = build_view(a, b, Controls()).groups[0].rows
    assert (row.errors, row.errors_s, row.p50_us, row.p99_us) == (None, None, None, None)
    line = plain_lines(build_view(a, b, Controls()))[2].split()
    assert line[5:8] == ["-", "-", "-"]  # ERRORS/S P50_US P99_US
    c = sample(2.0, ("xp", [version("xp", 1, served=5)]))  # went back: say nothing
    assert build_view(b, c, Controls()).groups[0].rows[0].calls_s is None


def test_unloaded_versions_are_shown_only_when_asked() -> None:
    old = version("xp", 1, served=10, state="unloaded")
    a = sample(0.0, ("xp", [old, version("xp", 2, served=0)]))
    b = sample(1.0, ("xp", [old, version("xp", 2, served=9)]))
    assert [r.seq for r in build_view(a, b, Controls()).groups[0].rows] == [2]
    assert [r.seq for r in build_view(a, b, Controls(all_versions=True)).groups[0].rows] == [1, 2]
    assert [r.seq for r in build_view(a, b, Controls(picked="xp")).groups[0].rows] == [1, 2]
    drained = sample(1.0, ("xp", [version("xp", 1, served=15, state="unloaded"), b.listing[
        "plugins"][0]["versions"][1]]))  # fmt: skip
    assert [r.seq for r in build_view(a, drained, Controls()).groups[0].rows] == [1, 2]


def test_sorting_puts_unknowns_last_and_the_same_key_flips_it() -> None:
    a = sample(
        0.0,
        ("a", [version("a", 1, served=0, errors=0, p99_us=5.0)]),
        ("b", [version("b", 1, served=0, errors=0, p99_us=50.0)]),
        ("c", [version("c", 1, served=0)]),
    )
    b = sample(
        1.0,
        ("a", [version("a", 1, served=30, errors=3, p99_us=5.0)]),
        ("b", [version("b", 1, served=10, errors=0, p99_us=50.0)]),
        ("c", [version("c", 1, served=20)]),
    )

    def names(c: Controls) -> list[str]:
        return [g.name for g in build_view(a, b, c).groups]

    assert names(Controls()) == ["a", "b", "c"]
    c = press(Controls(), "c", [])
    assert (c.sort, names(c)) == ("calls", ["a", "c", "b"])
    assert names(press(c, "c", [])) == ["b", "c", "a"]  # same key: the other way
    assert names(press(c, "e", [])) == ["a", "b", "c"]  # c has no error count: last
    assert names(press(c, "p", [])) == ["b", "a", "c"]  # the slowest first, unknown last
    assert names(press(press(c, "n", []), "n", [])) == ["c", "b", "a"]


def test_keys_move_pick_filter_and_quit() -> None:
    shown = ["a", "b", "c"]
    c = Controls()
    assert top_data.highlighted(c, shown) == "a"  # the first, until an arrow moves
    for _ in range(4):
        c = press(c, "down", shown)
    assert c.selected == "c"  # stops at the last
    assert press(c, "enter", shown).picked == "c"
    assert press(press(c, "enter", shown), "esc", shown) == c
    assert press(press(c, "up", shown), "up", shown).selected == "a"
    # the highlight follows its plugin when the rows are reordered, not the position
    assert press(c, "up", ["c", "b", "a"]).selected == "c"
    assert press(c, "down", ["c", "b", "a"]).selected == "b"
    assert top_data.highlighted(c, ["a", "b"]) == "a"  # c filtered out: the first shown
    typed = Controls()
    for key in ["/", "x", "p", "q", "backspace"]:  # q while typing is a letter, not quit
        typed = press(typed, key, shown)
    assert (typed.typing, typed.filter, typed.quit) == (True, "xp", False)
    kept = press(typed, "enter", shown)
    assert (kept.typing, kept.filter) == (False, "xp")
    assert press(typed, "esc", shown).filter == ""
    assert press(Controls(), "q", shown).quit
    assert press(Controls(), "enter", []) == Controls()  # nothing to pick
    assert press(Controls(), "F5", shown) == Controls()
    a = sample(0.0, ("xp", [version("xp", 1)]), ("loot", [version("loot", 1)]))
    assert [g.name for g in build_view(a, a, kept).groups] == ["xp"]
    assert [g.name for g in build_view(a, a, Controls(filter="LO")).groups] == ["loot"]


def test_a_strange_answer_is_refused_with_its_reason() -> None:
    good = version("xp", 1)
    for bad, why in [
        ({**good, "served": True}, "served"),
        ({**good, "seq": 1.5}, "seq"),
        ({**good, "p99_us": "fast"}, "p99_us"),
        ({k: v for k, v in good.items() if k != "state"}, "state"),
    ]:
        with pytest.raises(ValueError, match=why):
            top_data.check_listing({"plugins": [{"name": "xp", "versions": [bad]}]})
    assert top_data.check_listing({"plugins": [{"name": "xp", "versions": [good]}]})


def test_numbers_for_a_person() -> None:
    f = top_data.fmt_us
    assert [f(None), f(0.42), f(12.34), f(512.0), f(1500.0), f(2_500_000.0)] == [
        "-", "0.42us", "12.3us", "512us", "1.50ms", "2.50s"
    ]  # fmt: skip
    assert [top_data.fmt_rate(x) for x in (None, 0.0, 2.25, 1234.4)] == ["-", "0", "2.2", "1,234"]
    assert top_data.fmt_bytes(0) == "-" and top_data.fmt_bytes(3 << 20) == "3.0MiB"
    assert top_data.duration(59) == "59s" and top_data.duration(3725) == "1h02m"
    assert top_data.fmt_us(math.inf) == "infs"  # never raises on what a host sends


def test_terminal_key_decoding() -> None:
    d = _keys_posix.decode
    assert d(b"\x1b[A\x1b[B\x1bOA") == ["up", "down", "up"]
    assert d(b"\x1b") == ["esc"]
    assert d(b"c\r/xp\x7f") == ["c", "enter", "/", "x", "p", "backspace"]
    assert d(b"\x1b[15~q") == ["q"]  # F5 is dropped whole, not read as letters
    assert d("é".encode()) == ["é"]
    assert d(b"\x03\x00") == []  # control characters are no keys


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_any_bytes_from_a_terminal_decode_to_known_keys(data: bytes) -> None:
    """Whatever a terminal (or a paste, or line noise) sends, ``decode``
    returns names it knows or single printable characters, never raises."""
    names = {"up", "down", "left", "right", "enter", "esc", "backspace"}
    for key in _keys_posix.decode(data):
        assert key in names or (len(key) == 1 and key.isprintable()), key


def test_one_read_of_the_mappings_answers_every_image_alike(cc, tmp_path: Path) -> None:
    """``ls`` (every ``top`` refresh) measures each image's mapped bytes from
    one read of /proc/self/maps (``dl.maps_snapshot``): the same figures as a
    fresh read per image, and a thread outside the block still reads fresh."""
    with Host(tmp_path / "work") as h:
        for i in range(3):
            h.load(cc(PLUGIN.replace("NAME", f"m{i}"), f"m{i}"))
        fresh = [v.mapped_bytes for n in h.names() for v in h.versions(n)]
        with dl.maps_snapshot():
            shared = [v.mapped_bytes for n in h.names() for v in h.versions(n)]
            h.load(cc(PLUGIN.replace("NAME", "late"), "late"))  # mapped after the read
            st = os.stat(h.versions("late")[0].copy)
            assert dl.mapped_ranges((st.st_dev, st.st_ino)) == 0  # this thread: the snapshot
            seen: list[int] = []
            other = threading.Thread(
                target=lambda: seen.append(dl.mapped_ranges((st.st_dev, st.st_ino)))
            )
            other.start()
            other.join(30)
        assert shared == fresh and all(b > 0 for b in fresh), (shared, fresh)
        assert seen and seen[0] > 0  # another thread reads the mappings fresh
        assert dl.mapped_ranges((st.st_dev, st.st_ino)) == seen[0]  # after the block: fresh


def test_a_long_table_shows_what_fits_and_keeps_the_highlight_in_sight() -> None:
    plugins = [(f"p{i:02d}", [version(f"p{i:02d}", 1)]) for i in range(30)]
    view = build_view(None, sample(0.0, *plugins), Controls())
    rows, above, below = top._window(view, Controls(), True, budget=10)
    assert (len(rows), above, below) == (9, 0, 21)  # one line goes to "... 21 below"
    assert rows[0][2] and rows[0][0].plugin == "p00"  # the first plugin, highlighted
    far = Controls(selected="p25")
    rows, above, below = top._window(view, far, True, budget=10)
    names = [r.plugin for r, _, _ in rows]
    assert "p25" in names and above + len(rows) + below == 30, (names, above, below)
    assert [r.plugin for r, _, hl in rows if hl] == ["p25"]
    rows, above, below = top._window(view, Controls(), True, budget=40)
    assert (len(rows), above, below) == (30, 0, 0)  # it all fits: no "more" line
    assert "21 version(s) below" in top._more(0, 21)


def test_the_windows_key_reader_maps_console_keys(monkeypatch) -> None:
    """The Windows reader, driven with a stand-in for ``msvcrt`` (this suite
    runs on Linux; the wine harness does not drive a console)."""
    from hotload._platform import _keys_windows

    pending = list("\xe0Hq\r\x1b\x08\x00P\x07é")

    class FakeCrt:
        def kbhit(self) -> bool:
            return bool(pending)

        def getwch(self) -> str:
            return pending.pop(0)

    monkeypatch.setattr(_keys_windows, "_msvcrt", lambda: FakeCrt())
    with _keys_windows.raw_keys(0) as read:
        assert read(1.0) == ["up", "q", "enter", "esc", "backspace", "down", "é"]
        assert read(0.05) == []  # nothing pressed: back after the timeout
