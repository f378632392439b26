"""The control channel: real host processes, real sockets, the real CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotload import Host
from hotload import _cli as cli
from hotload import _control as control

from conftest import pid_alive

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
def ctl_env(tmp_path: Path) -> dict[str, str]:
    ctl = tmp_path / "ctl"
    ctl.mkdir(mode=0o700)
    return {**os.environ, control.ENV_DIR: str(ctl), "HOTLOAD_WORKDIR": str(tmp_path / "work")}


@pytest.fixture
def hosts(ctl_env: dict[str, str]) -> Iterator[list[HostProcess]]:
    started: list[HostProcess] = []
    yield started
    for h in started:
        h.stop()


def hotload(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotload", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
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


def test_rollback_on_a_host_without_it_says_unsupported(tmp_path: Path, xp_build) -> None:
    class OldHost:  # a host from before Host.rollback existed
        def names(self) -> list[str]:
            return ["xp"]

        def plugin(self, name: str) -> object:
            return object()

    server = control.ControlServer(OldHost(), directory=tmp_path / "ctl")  # type: ignore[arg-type]
    reply = server.handle(b'{"v": 1, "op": "rollback", "name": "xp", "id": 7}')
    assert reply["id"] == 7 and reply["ok"] is False
    assert reply["error"]["code"] == "unsupported"
    assert "not supported by this host" in reply["error"]["message"]


def test_protocol_rejects_bad_requests_with_a_code(host: Host, tmp_path: Path) -> None:
    server = control.ControlServer(host, directory=tmp_path / "ctl")
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
    ctl = Path(ctl_env[control.ENV_DIR])
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


def _as_other_uid(argv: list[str], uid: int = 65534) -> tuple[int, str]:
    """Run ``hotload._cli.main(argv)`` in a forked child that switched to
    ``uid`` (the interpreter itself lives under /root, out of that user's
    reach, so a fork of this process is the way to be another user)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc, buf = 99, io.StringIO()
        try:
            os.close(r)
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
    env = {**os.environ, control.ENV_DIR: str(ctl)}
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
        HOTLOAD_EXPORT(v, "int(void)");
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
    assert "sticky v1: nodelete" in text


def test_deeply_nested_json_is_a_bad_request_and_the_session_lives(
    host: Host, tmp_path: Path
) -> None:
    server = host.serve_control(directory=tmp_path / "ctl")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(server.path))
        reader = conn.makefile("rb")
        conn.sendall(b"[" * 60000 + b"\n")
        assert json.loads(reader.readline())["error"]["code"] == "bad_request"
        conn.sendall(b'{"op": "ping", "id": 2}\n')  # the same session still answers
        assert json.loads(reader.readline())["result"]["pid"] == os.getpid()


def test_a_listening_socket_is_never_swept_whatever_pid_its_name_shows(
    host: Host, tmp_path: Path
) -> None:
    """A host in another pid namespace sharing the directory has a pid we
    cannot see: only a refused connection proves a socket stale."""
    directory = tmp_path / "ctl"
    directory.mkdir(mode=0o700)
    alien = directory / "host-4000000-abcdef.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(alien))
    listener.listen(1)
    try:
        assert control.sweep_stale(directory) == []
        assert alien.exists()
    finally:
        listener.close()
    assert control.sweep_stale(directory) == [alien]  # now nobody listens: stale
