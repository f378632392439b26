"""The control channel under attack: session-cap storms, slow lorises,
clients that never read, a host with SIGPIPE at its default, junk in the
control directory.  Real sockets, real threads, real host processes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotload import Host
from hotload import _control as control
from test_control import HostProcess, _connect, _server


@pytest.fixture
def ctl_env(tmp_path: Path, short_tmp: Path) -> dict[str, str]:
    ctl = short_tmp / "ctl"
    ctl.mkdir(mode=0o700)
    return {**os.environ, control.ENV_DIR: str(ctl), "HOTLOAD_WORKDIR": str(tmp_path / "work")}


@pytest.fixture
def hosts(ctl_env: dict[str, str]) -> Iterator[list[HostProcess]]:
    started: list[HostProcess] = []
    yield started
    for h in started:
        h.stop()


def _storm(sock: Path, n: int, op: str = "ls") -> list[object]:
    start = threading.Barrier(n)
    results: list[object] = [None] * n

    def client(i: int) -> None:
        start.wait()
        try:
            results[i] = control.request(sock, op, timeout=60)["host"]["pid"]
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_400_concurrent_clients_all_succeed_past_the_session_cap(ctl_env, hosts, xp_build) -> None:
    """At the 128-session cap the server used to close a session whose
    request was still unread in the kernel: that client saw "connection
    reset" (224 of 400 failed)."""
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    results = _storm(hosts[0].socket, 400)
    failures = [r for r in results if r != hosts[0].pid]
    assert not failures, f"{len(failures)} of 400 failed: {failures[:3]}"


def test_slow_lorises_at_the_cap_do_not_shut_out_a_real_client(host: Host, short_tmp: Path) -> None:
    """128 connections that each send one byte and reconnect when dropped
    used to hold all 128 slots: every newcomer was answered ``busy``."""
    server = _server(host, short_tmp)
    stop = threading.Event()

    def loris() -> None:
        while not stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(60.0)  # patient: it reconnects only when dropped
                    s.connect(str(server.path))
                    s.send(b"{")
                    while not stop.is_set() and s.recv(100):  # until dropped
                        pass
            except OSError:
                time.sleep(0.01)

    lorises = [threading.Thread(target=loris, daemon=True) for _ in range(control.MAX_SESSIONS)]
    try:
        for t in lorises:
            t.start()
        deadline = time.monotonic() + 30
        while len(server._sessions) < server.max_sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server._sessions) == server.max_sessions  # the house is full of lorises
        for _ in range(3):
            assert control.request(server.path, "ls", timeout=10)["host"]["pid"] == os.getpid()
    finally:
        stop.set()
        server.stop()  # drops every loris
        for t in lorises:
            t.join(10)


SIGPIPE_HOST = textwrap.dedent("""
    import signal, sys
    from hotload import Host
    host = Host(control=True)
    host.load(sys.argv[1])
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as many CLI tools and embedders do
    print(host.serve_control().path, flush=True)
    sys.stdin.read()
    host.close()
""")


def test_a_host_with_default_sigpipe_survives_clients_that_hang_up(ctl_env, xp_build) -> None:
    """A client that pipelined 200 requests and closed killed such a host
    (exit status 141, SIGPIPE) when the server wrote an answer."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGPIPE_HOST, str(xp_build(mult=2))],
        env=ctl_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path, "the host did not start"
        for _ in range(30):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(b'{"op":"ls"}\n' * 200)
            time.sleep(0.02)
        assert control.request(path, "ping", timeout=20)["pid"] == proc.pid
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"the host died: exit status {proc.returncode}"


def test_clients_that_never_read_answers_do_not_hold_the_workers(
    host: Host, short_tmp: Path
) -> None:
    """Four clients that pipeline thousands of requests and never read used
    to keep all four workers blocked in send for ``request_deadline``."""
    server = _server(host, short_tmp, request_deadline=60.0)
    hogs = [_connect(server.path) for _ in range(control.WORKERS)]
    try:
        for hog in hogs:
            with contextlib.suppress(OSError):
                hog.settimeout(5)
                hog.sendall(b'{"op":"ls"}\n' * 5000)
        time.sleep(0.5)  # the hogs' answers fill their sockets
        for _ in range(3):  # workers are free: answered long before the hogs' 60 s run out
            assert control.request(server.path, "ls", timeout=10)["host"]["pid"] == os.getpid()
        # a slow reader still gets every answer, in order, whole
        reader = hogs[0].makefile("rb")
        for _ in range(5000):
            assert json.loads(reader.readline())["ok"] is True
    finally:
        for hog in hogs:
            hog.close()
        server.stop()


def test_junk_named_like_a_host_socket_is_not_listed_nor_removed(ctl_env, hosts, xp_build) -> None:
    ctl = Path(ctl_env[control.ENV_DIR])
    fifo, regular, directory = (ctl / f"host-{n}-abcdef.sock" for n in (11, 12, 13))
    os.mkfifo(fifo)
    regular.write_text("not a socket")
    directory.mkdir()
    hosts.append(HostProcess(ctl_env, xp_build(mult=2)))
    (ctl / "host-1-link.sock").symlink_to(hosts[0].socket)
    found = control.discover(ctl)
    assert [h["pid"] for h in found] == [hosts[0].pid]  # the link is that host, listed once
    assert "error" not in found[0]
    assert fifo.exists() and regular.exists() and directory.exists()


class _StuckHost:
    """A host whose ``names()`` blocks until released: requests that stay
    in progress, so every session is busy in a worker."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.release = threading.Event()

    def names(self) -> list[str]:
        self.release.wait(30)
        return self._host.names()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


def test_a_full_house_of_running_requests_answers_busy(host: Host, short_tmp: Path) -> None:
    stuck = _StuckHost(host)
    server = control.ControlServer(stuck, directory=short_tmp / "ctl", max_sessions=2)  # type: ignore[arg-type]
    server.start()
    conns = [_connect(server.path) for _ in range(2)]
    try:
        for conn in conns:
            conn.sendall(b'{"op": "ping"}\n')  # both run, and block, in workers
        deadline = time.monotonic() + 10
        while True:  # the loop hands them to workers asynchronously
            extra = _connect(server.path)
            line = extra.makefile("rb").readline()
            extra.close()
            if line or time.monotonic() > deadline:
                break
        reply = json.loads(line)
        assert reply["error"]["code"] == "busy" and "control sessions" in reply["error"]["message"]
        with pytest.raises(control.ControlError) as err:  # the client retries, then says so
            control.request(server.path, "ping", timeout=0.5)
        assert err.value.code == "busy"
        stuck.release.set()
        for conn in conns:
            assert json.loads(conn.makefile("rb").readline())["ok"] is True
    finally:
        stuck.release.set()
        for conn in conns:
            conn.close()
        server.stop()


def test_a_stalled_partial_request_makes_room_for_a_newcomer(host: Host, short_tmp: Path) -> None:
    server = _server(host, short_tmp, max_sessions=2)
    conns = [_connect(server.path) for _ in range(2)]
    try:
        for conn in conns:
            conn.sendall(b'{"op": "pi')  # mid-request, never finished
        assert control.request(server.path, "ping", timeout=10)["pid"] == os.getpid()
        dropped = 0
        for conn in conns:
            conn.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                dropped += conn.recv(100) == b""
        assert dropped >= 1
    finally:
        for conn in conns:
            conn.close()
        server.stop()
