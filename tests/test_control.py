"""The control channel: real host processes, real sockets, the real CLI."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import pkgutil
import resource
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotload import Host
from hotload._cli import main as cli
from hotload._ops import control_client, control_paths, control_server, control_wire

from conftest import pid_alive, wait_for, xp_source

HOST_SCRIPT = textwrap.dedent("""
    import sys
    from hotload import Host
    host = Host(control=True)
    for path in sys.argv[1:]:
        host.load(path)
    print(host.serve_control().path, flush=True)
    sys.stdin.read()  # the test closes stdin to stop us
    host.close()
""")


class HostProcess:
    """A host in its own process, serving its control socket."""

    def __init__(self, env: dict[str, str], *plugins: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOST_SCRIPT, *map(str, plugins)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "the host process did not start"
        self.socket = Path(line)
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def ctl_env(tmp_path: Path, short_tmp: Path) -> dict[str, str]:
    ctl = short_tmp / "ctl"
    ctl.mkdir(mode=0o700)
    return {
        **os.environ,
        control_paths.ENV_DIR: str(ctl),
        "HOTLOAD_WORKDIR": str(tmp_path / "work"),
    }


@pytest.fixture
def hosts(ctl_env: dict[str, str]) -> Iterator[list[HostProcess]]:
    started: list[HostProcess] = []
    yield started
    for h in started:
        h.stop()


def hotload(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotload", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hotload: error: "), proc.stderr
    return lines[0]


def test_ls_and_reload_through_the_cli_against_a_host_process(
    ctl_env, hosts, xp_build, example_plugins
) -> None:
    target = xp_build(mult=2)
    hosts.append(HostProcess(ctl_env, target, example_plugins["loot_drop"]))
    sock = hosts[0].socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    listing = json.loads(hotload(ctl_env, "ls", "--json").stdout)
    assert listing["host"]["pid"] == hosts[0].pid and listing["host"]["socket"] == str(sock)
    assert [p["name"] for p in listing["plugins"]] == ["loot_drop", "xp"]
    v1 = listing["plugins"][1]["versions"][0]
    assert (v1["seq"], v1["plugin_version"], v1["state"], v1["in_flight"], v1["source"]) == (
        1,
        "1.0.0",
        "active",
        0,
        str(target),
    )
    assert {"loaded_at", "blockers", "digest", "mapped_bytes"} <= set(v1)

    xp_build(mult=3, version="1.1.0")
    done = hotload(ctl_env, "reload", "xp")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"reloaded xp: v1 (1.0.0) -> v2 (1.1.0) from {target}"
    table = hotload(ctl_env, "ls").stdout
    assert f"host pid {hosts[0].pid}" in table
    rows = [line.split()[:4] for line in table.splitlines() if line.startswith("xp ")]
    assert rows[-1] == ["xp", "v2", "1.1.0", "active"]

    err = one_line_error(hotload(ctl_env, "reload", "nope"))
    assert "no plugin named 'nope' is loaded (loaded: loot_drop, xp)" in err


def test_rollback_through_the_cli(ctl_env, hosts, xp_build) -> None:
    target = xp_build(mult=2)
    hosts.append(HostProcess(ctl_env, target))
    assert "xp: nothing to roll back to" in one_line_error(hotload(ctl_env, "rollback", "xp"))
    xp_build(mult=3, version="2.0.0")
    assert hotload(ctl_env, "reload", "xp").returncode == 0
    back = hotload(ctl_env, "rollback", "xp", "--json")
    assert back.returncode == 0, back.stderr
    version = json.loads(back.stdout)["version"]
    assert (version["seq"], version["plugin_version"], version["state"]) == (3, "1.0.0", "active")
    # the rollback's note has its own column: WHY is only what keeps a version in memory
    header, *rows = hotload(ctl_env, "ls").stdout.splitlines()[1:]
    why, note = header.index("WHY"), header.index("NOTE")
    v3 = next(row for row in rows if row.split()[:2] == ["xp", "v3"])
    assert v3[why:note].strip() == "-" and v3[note:] == "rollback to v1", (header, v3)


SIG_SOURCE = """
    #include <hotload.h>
    HOTLOAD_PLUGIN("sig", "V");
    HOTLOAD_API int64_t f(PARAMS) { return BODY; }
    HOTLOAD_EXPORT(f, int64_t, (PARAMS));
"""


def test_reload_allow_signature_change_through_the_cli(ctl_env, hosts, cc, tmp_path) -> None:
    out = tmp_path / "build" / "sig.so"

    def build(version: str, params: str, body: str) -> Path:
        src = SIG_SOURCE.replace("V", version).replace("PARAMS", params).replace("BODY", body)
        return cc(src, "sig", out=out)

    hosts.append(HostProcess(ctl_env, build("1", "int64_t a", "a")))
    build("2", "int64_t a, int64_t b", "a + b")
    err = one_line_error(hotload(ctl_env, "reload", "sig"))
    assert "f changed from 'int64_t(int64_t a)'" in err
    assert "`hotload reload sig --allow-signature-change`" in err  # all three ways are named
    assert "host.watch(..., allow_signature_change=True)" in err
    assert "--allow-signature-change" in hotload(ctl_env, "reload", "--help").stdout
    done = hotload(ctl_env, "reload", "sig", "--allow-signature-change")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"reloaded sig: v1 (1) -> v2 (2) from {out}"


def test_reload_allow_signature_change_must_be_a_boolean(
    host: Host, xp_build, short_tmp: Path
) -> None:
    host.load(xp_build(mult=2))
    server = control_server.ControlServer(host, directory=short_tmp / "ctl")
    for value in (b"1", b"0", b'"yes"', b"null", b"[]"):
        reply = server.handle(
            b'{"op": "reload", "name": "xp", "allow_signature_change": ' + value + b"}"
        )
        assert reply["error"]["code"] == "bad_request", value
        assert "allow_signature_change" in reply["error"]["message"]
    assert [v.seq for v in host.versions("xp")] == [1]  # nothing was reloaded
    reply = server.handle(b'{"op": "reload", "name": "xp", "allow_signature_change": true}')
    assert reply["ok"] is True and reply["result"]["version"]["seq"] == 2


def test_protocol_rejects_bad_requests_with_a_code(host: Host, short_tmp: Path) -> None:
    server = control_server.ControlServer(host, directory=short_tmp / "ctl")
    assert server.handle(b"{oops")["error"]["code"] == "bad_request"
    assert server.handle(b'{"v": 2, "op": "ls"}')["error"]["code"] == "unsupported_version"
    assert server.handle(b'{"op": "format_disk"}')["error"]["code"] == "unknown_op"
    assert server.handle(b'{"op": "reload"}')["error"]["code"] == "bad_request"
    assert server.handle(b'{"op": "versions", "name": "zz"}')["error"]["code"] == "not_loaded"
    assert server.handle(b'{"op": "ping"}')["result"]["pid"] == os.getpid()


def test_two_hosts_at_once(ctl_env, hosts, xp_build, example_plugins) -> None:
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    hosts.append(HostProcess(ctl_env, example_plugins["double_xp"]))
    listed = json.loads(hotload(ctl_env, "hosts", "--json").stdout)["hosts"]
    assert sorted(h["pid"] for h in listed) == sorted(h.pid for h in hosts)
    assert sorted(h["plugins"][0] for h in listed) == ["double_xp", "xp"]
    table = hotload(ctl_env, "hosts").stdout
    assert all(str(h.pid) in table for h in hosts)

    err = one_line_error(hotload(ctl_env, "ls"))
    assert "2 hosts are running" in err and "pick one with --host PID or --socket PATH" in err
    by_pid = json.loads(hotload(ctl_env, "ls", "--json", "--host", str(hosts[1].pid)).stdout)
    assert [p["name"] for p in by_pid["plugins"]] == ["double_xp"]
    by_socket = json.loads(
        hotload(ctl_env, "ls", "--json", "--socket", str(hosts[0].socket)).stdout
    )
    assert [p["name"] for p in by_socket["plugins"]] == ["xp"]
    assert "no running host matches '1'" in one_line_error(hotload(ctl_env, "ls", "--host", "1"))


def test_a_killed_hosts_socket_is_cleaned_up(ctl_env, hosts, xp_build) -> None:
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    dead = hosts[0]
    dead.proc.send_signal(signal.SIGKILL)
    dead.proc.wait()
    assert dead.socket.exists()  # a crash leaves it behind
    assert "no running hotload host found" in one_line_error(hotload(ctl_env, "ls"))
    assert not dead.socket.exists()  # the client removed it on the way
    assert json.loads(hotload(ctl_env, "hosts", "--json").stdout) == {"hosts": []}


def test_a_new_host_sweeps_stale_sockets_but_not_live_ones(
    tmp_path: Path, ctl_env, hosts, xp_build
) -> None:
    ctl = Path(ctl_env[control_paths.ENV_DIR])
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    stale = ctl / "host-999999-abcdef.sock"  # a pid that is not running, a socket nobody listens on
    assert not pid_alive(999999)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    reused = ctl / f"host-{os.getpid()}-aaaaaa.sock"  # a live pid (ours), but nothing listening
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(reused))
    with Host(tmp_path / "work2") as host:
        server = host.serve_control(directory=ctl)
        assert server.path.exists() and hosts[0].socket.exists()
        assert not stale.exists() and not reused.exists()
        assert host.serve_control() is server  # one endpoint per host
    assert not server.path.exists()  # close() removed its own


def _import_all_of_hotload() -> None:
    """Import every module of the package.  Once another user, the child may
    not be able to read the checkout (a clone in /root, mode 0700): a module
    the CLI imports lazily must already be in memory."""
    package = importlib.import_module("hotload")
    for module in pkgutil.walk_packages(package.__path__, "hotload."):
        importlib.import_module(module.name)


def _as_other_uid(argv: list[str], uid: int = 65534) -> tuple[int, str]:
    """Run ``hotload._cli.main.main(argv)`` in a forked child that switched to
    ``uid`` (the interpreter itself lives under /root, out of that user's
    reach, so a fork of this process is the way to be another user)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc, buf = 99, io.StringIO()
        try:
            os.close(r)
            _import_all_of_hotload()  # while still root
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
                rc = cli.main(argv)
        except BaseException as exc:
            buf.write(f"child: {exc!r}")
        finally:
            os.write(w, f"{rc}\n{buf.getvalue()}".encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    rc, _, text = out.partition("\n")
    return int(rc), text


@pytest.mark.skipif(
    not hasattr(os, "fork") or os.geteuid() != 0,
    reason="needs root to act as a second uid (setuid in a forked child)",
)
def test_another_uid_is_refused(hosts, xp_build) -> None:
    ctl = Path(tempfile.mkdtemp(prefix="hotload-ctl-"))  # under /tmp: reachable by another user
    env = {**os.environ, control_paths.ENV_DIR: str(ctl)}
    try:
        hosts.append(HostProcess(env, xp_build(mult=2)))
        sock = str(hosts[0].socket)
        rc, text = _as_other_uid(["ls", "--socket", sock])  # 1st lock: the 0700 directory
        assert rc == 1 and "permission denied: the host belongs to another user" in text, text
        ctl.chmod(0o711)  # now loosen the directory and the socket, as a careless admin might
        os.chmod(sock, 0o666)
        rc, text = _as_other_uid(["ls", "--socket", sock])  # 2nd lock: SO_PEERCRED
        assert rc == 1 and "refused a client with uid 65534" in text, text
        assert "only root may control this host" in text
        assert json.loads(hotload(env, "ls", "--json", "--socket", sock).stdout)[
            "plugins"
        ]  # we still may
    finally:
        for h in hosts:
            h.stop()
        ctl.chmod(0o700)
        for p in ctl.iterdir():
            p.unlink()
        ctl.rmdir()


def test_no_host_running_is_one_clear_line(ctl_env) -> None:
    err = one_line_error(hotload(ctl_env, "ls"))
    assert "no running hotload host found in" in err
    assert hotload(ctl_env, "hosts").stdout.startswith("no running hotload host in")


def test_ls_reports_leaked_images_their_bytes_and_why(
    ctl_env: dict[str, str], hosts: list[HostProcess], cc, tmp_path: Path
) -> None:
    src = """
        #include <hotload.h>
        HOTLOAD_PLUGIN("sticky", "1");
        HOTLOAD_API int v(void) { return 1; }
        HOTLOAD_EXPORT(v, int, (void));
    """
    lib = cc(src, "sticky", flags=["-Wl,-z,nodelete"])
    host = HostProcess(ctl_env, lib)
    hosts.append(host)
    assert hotload(ctl_env, "reload", "sticky").returncode == 0
    for _ in range(100):  # the reaper verifies the old image just after the reload returns
        result = json.loads(hotload(ctl_env, "ls", "--json").stdout)
        if result["leaks"]["images"]:
            break
    assert result["leaks"]["images"] == 1 and result["leaks"]["bytes"] > 0
    [plugin] = result["plugins"]
    assert [v["state"] for v in plugin["versions"]] == ["leaked", "active"]
    text = hotload(ctl_env, "ls").stdout
    assert f"leaked: 1 image(s) still in memory, {result['leaks']['bytes']:,} bytes" in text
    rows = [line for line in text.splitlines() if line.startswith("sticky ")]
    assert [r.split()[1] for r in rows] == ["v1", "v2"]  # one line per version, nothing more
    blocker = plugin["versions"][0]["blockers"][0]
    assert " ".join(blocker.split())[:20] in rows[0]  # its blocker, on its own line
    assert max(len(line) for line in text.splitlines()) < 300
    assert rows[0].split()[-1] == "nodelete"  # the reason code ends the line


def test_deeply_nested_json_is_a_bad_request_and_the_session_lives(
    host: Host, short_tmp: Path
) -> None:
    server = host.serve_control(directory=short_tmp / "ctl")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(server.path))
        reader = conn.makefile("rb")
        conn.sendall(b"[" * 60000 + b"\n")
        assert json.loads(reader.readline())["error"]["code"] == "bad_request"
        conn.sendall(b'{"op": "ping", "id": 2}\n')  # the same session still answers
        assert json.loads(reader.readline())["result"]["pid"] == os.getpid()


def test_a_listening_socket_is_never_swept_whatever_pid_its_name_shows(
    host: Host, short_tmp: Path
) -> None:
    """A host in another pid namespace sharing the directory has a pid we
    cannot see: only a refused connection proves a socket stale."""
    directory = short_tmp / "ctl"
    directory.mkdir(mode=0o700)
    alien = directory / "host-4000000-abcdef.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(alien))
    listener.listen(1)
    try:
        assert control_paths.sweep_stale(directory) == []
        assert alien.exists()
    finally:
        listener.close()
    assert control_paths.sweep_stale(directory) == [alien]  # now nobody listens: stale


# ---- issue 9: --path, relative paths, strict JSON ----------------------------------------


def test_reload_with_path_through_the_cli(ctl_env, hosts, xp_build, cc, tmp_path: Path) -> None:
    """``--path`` used to die with "request() got multiple values for argument
    'path'"; a relative path is the client's, not the host's."""
    target = xp_build(mult=2)
    hosts.append(HostProcess(ctl_env, target))
    other = cc(xp_source(5, "3.0.0"), "xp", out=tmp_path / "elsewhere" / "xp.so")
    done = hotload(ctl_env, "reload", "xp", "--path", "elsewhere/xp.so", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"reloaded xp: v1 (1.0.0) -> v2 (3.0.0) from {other}"
    listing = json.loads(hotload(ctl_env, "ls", "--json").stdout)
    current = listing["plugins"][0]["versions"][-1]
    assert (current["seq"], current["plugin_version"], current["source"]) == (
        2,
        "3.0.0",
        str(other),
    )
    missing = one_line_error(hotload(ctl_env, "reload", "xp", "--path", str(tmp_path / "no.so")))
    assert str(tmp_path / "no.so") in missing


def test_the_server_refuses_relative_and_malformed_reload_paths(
    host: Host, short_tmp: Path, xp_build
) -> None:
    host.load(xp_build(mult=2))
    server = control_server.ControlServer(host, directory=short_tmp / "ctl")
    for path in ("build/xp.so", "", "/tmp/a\u0000b", 7):
        req = json.dumps({"op": "reload", "name": "xp", "path": path}).encode()
        reply = server.handle(req)
        assert reply["error"]["code"] == "bad_request", (path, reply)
    assert (
        "relative path"
        in server.handle(b'{"op":"reload","name":"xp","path":"x.so"}')["error"]["message"]
    )
    assert [v.seq for v in host.versions("xp")] == [1]  # nothing was reloaded


def test_nan_infinity_and_boolean_versions_are_bad_requests(host: Host, short_tmp: Path) -> None:
    server = control_server.ControlServer(host, directory=short_tmp / "ctl")
    for line in (
        b'{"op": "ping", "id": NaN}',
        b'{"op": "ping", "id": Infinity}',
        b'{"op": "ping", "id": -Infinity}',
        b'{"op": "ping", "id": 1e999}',
    ):
        reply = server.handle(line)
        assert reply["error"]["code"] == "bad_request", line
        json.loads(control_wire.encode(reply), parse_constant=pytest.fail)  # strict JSON out
    for v in (b"true", b"1.0", b'"1"'):
        reply = server.handle(b'{"op": "ping", "v": ' + v + b"}")
        assert reply["error"]["code"] == "unsupported_version", v
    assert server.handle(b'{"op": "ping", "v": 1}')["ok"] is True


def test_an_answer_never_carries_nan() -> None:
    line = control_wire.encode({"v": 1, "id": 3, "ok": True, "result": {"x": float("nan")}})
    reply = json.loads(line, parse_constant=pytest.fail)
    assert reply["id"] == 3 and reply["error"]["code"] == "internal"


# ---- issue 9: --socket on the wrong thing, symlinks, the control directory ----------------


def test_socket_option_on_a_file_or_directory_says_not_a_socket(ctl_env, tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("hi")
    for target, kind in ((plain, "a regular file"), (tmp_path, "a directory")):
        err = one_line_error(hotload(ctl_env, "ls", "--socket", str(target)))
        assert f"{target}: not a socket ({kind})" in err, err
        assert "refused" not in err


def test_a_symlink_to_a_live_socket_lists_its_host_once(ctl_env, hosts, xp_build) -> None:
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    ctl = Path(ctl_env[control_paths.ENV_DIR])
    (ctl / "host-1-aaaaaa.sock").symlink_to(hosts[0].socket)
    listed = json.loads(hotload(ctl_env, "hosts", "--json").stdout)["hosts"]
    assert [h["pid"] for h in listed] == [hosts[0].pid]
    assert hotload(ctl_env, "ls").returncode == 0  # one host, not "2 hosts are running"


def test_a_bad_control_directory_is_called_a_control_directory(short_tmp: Path) -> None:
    loose = short_tmp / "ctl"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    env = {**os.environ, control_paths.ENV_DIR: str(loose)}
    err = one_line_error(hotload(env, "ls"))
    assert f"{loose}: control directory has mode 755" in err and "work directory" not in err


def test_after_a_rollback_ls_says_the_source_on_disk_is_not_what_runs(
    ctl_env, hosts, xp_build
) -> None:
    """Issue 19, item 13: after a rollback (or a refused build written over
    the file), nothing on disk matched what ran, and ``ls`` showed the
    version's source as if it did."""
    target = xp_build(mult=2)
    hosts.append(HostProcess(ctl_env, target))
    v1 = hashlib.sha256(target.read_bytes()).hexdigest()
    listed = json.loads(hotload(ctl_env, "ls", "--json").stdout)["plugins"][0]["versions"]
    assert listed[0]["source_digest"] == listed[0]["digest"] == v1
    assert "(changed)" not in hotload(ctl_env, "ls").stdout

    xp_build(mult=3, version="2.0.0")
    v2 = hashlib.sha256(target.read_bytes()).hexdigest()
    assert hotload(ctl_env, "reload", "xp").returncode == 0
    assert hotload(ctl_env, "rollback", "xp").returncode == 0  # v3 runs v1's bytes again
    listed = json.loads(hotload(ctl_env, "ls", "--json").stdout)["plugins"][0]["versions"]
    v3 = listed[-1]
    assert (v3["seq"], v3["state"], v3["digest"], v3["source_digest"]) == (3, "active", v1, v2)
    assert all("source_digest" not in v for v in listed[:-1])  # only what runs is compared

    out = hotload(ctl_env, "ls").stdout.splitlines()
    header = out[1]
    row = next(line for line in out if line.split()[:2] == ["xp", "v3"])
    source = header.index("SOURCE")
    assert row[source:].startswith(f"{target} (changed)"), row
    assert f"xp v3 runs build {v1[:12]}; {target} now holds {v2[:12]}" in out[-1], out


def test_ls_shows_calls_served_and_in_flight_apart(ctl_env, hosts, xp_build) -> None:
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    lines = hotload(ctl_env, "ls").stdout.splitlines()
    assert lines[1].split() == [
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
    ]
    row = lines[2].split()
    served = json.loads(hotload(ctl_env, "ls", "--json").stdout)["plugins"][0]["versions"][0]
    assert row[4] == (f"{served['served']:,}" if "served" in served else "-")
    # errors and p99: what the host reports (a host that does not measure them: "-")
    assert row[5] == (f"{served['errors']:,}" if served.get("errors") is not None else "-")
    assert row[6] == "-"  # no call yet: no latency
    assert row[7] == "0"  # in flight
    with_served = {**served, "served": 1234567, "in_flight": 3, "blockers": ["a", "b"]}
    unmeasured = {k: v for k, v in with_served.items() if k not in ("errors", "p99_us")}
    assert cli._version_row(unmeasured)[4:8] == ("1,234,567", "-", "-", "3")  # an older host
    measured = {**with_served, "errors": 12345, "p99_us": 18.25}
    assert cli._version_row(measured)[4:8] == ("1,234,567", "12,345", "18.2us", "3")
    assert cli._version_row(with_served)[-2:] == ("a,b", "")
    noted = {**with_served, "blockers": [], "note": "rollback to v2"}
    assert cli._version_row(noted)[-2:] == ("-", "rollback to v2")


# ---- issue 9: the control server's limits --------------------------------------------------


def _server(host: Host, base: Path, **limits: float) -> control_server.ControlServer:
    server = control_server.ControlServer(host, directory=base / "ctl", **limits)  # type: ignore[arg-type]
    return server.start()


def _connect(path: Path, timeout: float = 10.0) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(str(path))
    return conn


def _control_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("hotload-control")]


def test_128_concurrent_clients_all_succeed(ctl_env, hosts, xp_build) -> None:
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    sock = hosts[0].socket
    n = 128
    start = threading.Barrier(n)
    results: list[object] = [None] * n

    def client(i: int) -> None:
        start.wait()
        try:
            results[i] = control_client.request(sock, "ls", timeout=30)["host"]["pid"]
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    failures = [r for r in results if r != hosts[0].pid]
    assert not failures, f"{len(failures)} of {n} failed: {failures[:3]}"


def test_a_host_too_busy_to_answer_the_ping_is_still_the_host_to_talk_to(short_tmp: Path) -> None:
    """128 CLI processes at once on 2 cores: a host that did not answer
    discovery's 2 s ping was dropped, and ``hotload ls`` said "no running
    hotload host found" while it ran.  A socket that is there and listening
    is a busy host: resolve() picks it, and the request waits longer."""
    ctl = short_tmp / "ctl"
    ctl.mkdir(mode=0o700)
    path = ctl / f"host-{os.getpid()}-busy01.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stall() -> None:  # reads nothing, answers nothing: busy
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    t = threading.Thread(target=accept_and_stall, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        assert control_client.resolve(directory=ctl) == path
        assert time.monotonic() - started < 30
        assert path.exists()  # listening: not removed as stale
        [listed] = control_client.discover(ctl)
        assert listed["pid"] == os.getpid() and "error" in listed
    finally:
        stop.set()
        t.join(5)
        listener.close()
        for c in accepted:
            c.close()


@pytest.mark.parametrize("n", [8, pytest.param(128, marks=pytest.mark.soak)])
def test_concurrent_cli_processes_all_succeed(ctl_env, hosts, xp_build, n: int) -> None:
    """``n`` CLI processes at once (128 Python start-ups are ~40 s on two
    cores: that one is a soak; test_128_concurrent_clients_all_succeed puts
    128 clients on the socket at once in the fast tier)."""
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hotload", "ls", "--json"],
            env=ctl_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    outcomes = [p.communicate(timeout=300) for p in procs]
    failed = [err for p, (_out, err) in zip(procs, outcomes, strict=True) if p.returncode != 0]
    assert not failed, f"{len(failed)} of {n} failed: {failed[:3]}"
    assert all(json.loads(out)["host"]["pid"] == hosts[0].pid for out, _ in outcomes)


def test_a_slow_loris_is_dropped_at_its_deadline_while_others_are_served(
    host: Host, short_tmp: Path
) -> None:
    server = _server(host, short_tmp, request_deadline=1.0)
    try:
        slow = _connect(server.path, timeout=20)
        sent = 0
        stop = threading.Event()

        def drip() -> None:  # one byte every 0.2 s, never a newline: a per-recv timeout never fires
            nonlocal sent
            with contextlib.suppress(OSError):
                while not stop.is_set() and sent < 100:
                    slow.send(b" ")
                    sent += 1
                    time.sleep(0.2)

        dripper = threading.Thread(target=drip)
        dripper.start()
        assert control_client.request(server.path, "ping", timeout=10)["pid"] == os.getpid()
        answer = slow.makefile("rb").readline()  # the server gives up on it, not we on it
        stop.set()
        dripper.join(30)
        assert json.loads(answer)["error"]["code"] == "timeout"
        assert "not complete within 1 s" in json.loads(answer)["error"]["message"]
        assert sent < 100  # dropped while still dripping
        slow.close()
        assert control_client.request(server.path, "ping", timeout=10)["pid"] == os.getpid()
    finally:
        server.stop()


def test_idle_connections_cost_no_threads_and_the_idlest_make_room(
    host: Host, short_tmp: Path
) -> None:
    server = _server(host, short_tmp, max_sessions=32)
    conns: list[socket.socket] = []
    try:
        assert control_client.request(server.path, "ping", timeout=10)["pid"] == os.getpid()
        before = len(_control_threads())
        conns = [_connect(server.path) for _ in range(300)]  # 300 idle clients
        assert control_client.request(server.path, "ping", timeout=10)["pid"] == os.getpid()
        assert len(_control_threads()) <= max(before, 1 + control_server.WORKERS)
        dropped = 0
        for conn in conns[:-32]:  # the oldest were closed to make room for the newest
            conn.settimeout(10)
            dropped += conn.recv(1) == b""
        assert dropped == 300 - 32
        conns[-1].sendall(b'{"op": "ping"}\n')
        assert json.loads(conns[-1].makefile("rb").readline())["ok"] is True
    finally:
        for conn in conns:
            conn.close()
        server.stop()


def test_out_of_file_descriptors_the_server_backs_off_then_recovers(
    host: Host, short_tmp: Path
) -> None:
    server = _server(host, short_tmp)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # made before the limit drops
    client.settimeout(20)
    fillers: list[int] = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        with contextlib.suppress(OSError):
            while True:  # fill every free slot below the limit: no fd left to accept with
                fillers.append(os.dup(0))
        client.connect(str(server.path))  # queued in the backlog; accept() gets EMFILE
        # (the old server did not count its failures)
        wait_for(lambda: getattr(server, "_accept_errors", 0), what="a failed accept()")
        first = server._accept_errors
        time.sleep(1.5)  # a window to count in, not a bound on anything's speed
        errors = server._accept_errors - first
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    try:
        # backing off (0.05 s, doubling up to 1 s), the loop tries a few times in 1.5 s;
        # a spinning loop fails accept() thousands of times
        assert errors <= 20, errors
        client.sendall(b'{"op": "ping"}\n')  # the queued client is served once fds are back
        assert json.loads(client.makefile("rb").readline())["result"]["pid"] == os.getpid()
    finally:
        client.close()
        server.stop()


def test_a_thread_that_cannot_start_does_not_kill_the_server(
    host: Host, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _server(host, short_tmp)
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith("hotload-control"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    try:
        monkeypatch.setattr(threading.Thread, "start", start)
        for _ in range(3):  # served without a worker, and again: the accept loop lives
            assert control_client.request(server.path, "ping", timeout=10)["pid"] == os.getpid()
        monkeypatch.undo()
        assert control_client.request(server.path, "ping", timeout=10)["pid"] == os.getpid()
    finally:
        monkeypatch.undo()
        server.stop()
