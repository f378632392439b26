"""The one worker-process runner: every process hotload starts, for a
preflight trial or to serve an isolated version, is started, greeted, watched
and ended here (HashiCorp go-plugin has one process runner for every plugin
kind; this is hotload's).

- **A fresh interpreter**, ``python -s -m hotload._process.worker`` (never a
  fork of the host: a fork would copy the host's threads' locks mid-state),
  with only the descriptors it needs and a scrubbed environment
  (``ENV_KEEP``): a plugin sees the same environment in a trial as when it
  serves.  ``--role`` says which requests it takes (``worker``).
- **The handshake**: the worker's hello on its socket (``Worker.greet``); a
  worker that dies, is stopped or stays silent first is ``_StartFailed``,
  saying how.
- **Limits**: the worker is started warm, before it knows its plugin, so its
  rlimits and niceness are applied in the worker by the request that first
  runs plugin code (``limits`` in an ``open`` or a ``trial``), and such a
  worker serves nothing else afterwards (a hard limit cannot be raised again).
- **It dies with the host**: the worker asks for a parent-death signal and
  watches its parent, and it is forked by one long-lived thread
  (``Spawner``), since Linux sends that signal when the *thread* that forked
  it exits.
- **Its stderr**: a thread keeps the last 40 lines (``Worker.tail``) for
  crash reports.
- **Its end**: ``Worker.kill`` ends the worker and everything the plugin
  forked (its process group, its descendants seen now and before), and
  ``reap`` collects it.
- **The sandbox** (``sandbox=True``): the worker locks itself in before its
  hello, which names the protections in force (``Worker.sandbox``).  The
  process the host started is then the sandbox's guard, and the plugin runs
  in a process below it: ``Worker.pid`` is that one (what ``VersionInfo.pid``,
  the rss and a stopped worker are about), found at the hello; the tree the
  host kills is still rooted at the guard (``popen.pid``).

``Worker`` owns the host's ends of the channels: the socketpair (control
frames, large bodies, EOF), and for an isolated version the service channel
and, on Linux x86, the shared-memory area and its two eventfds (the call path,
``call_shm``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import mmap
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from .._platform import proc as channel
from .wire import (
    FRAME,
    HOST_SLEEPS,
    HOST_SPIN_NS,
    MAX_FRAME,
    OP_CALL,
    REP_LEN,
    REP_SEQ,
    REQ_LEN,
    REQ_SEQ,
    SHM_CAP,
    SHM_REP,
    SHM_REQ,
    SHM_SIZE,
    ST_OK,
    SVC_OK,
    CallPlan,
    _Garbage,
    cspin,
    decode,
    drain,
    encode,
    recv_exactly,
    yield_cpu,
)
from .zygote import Sibling, Zygote

log = logging.getLogger(__name__)

#: Environment variables a worker keeps from the host; everything else is dropped.
ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")
WORKER_MODULE = "hotload._process.worker"
ROLES = ("preflight", "isolated", "replay")
HELLO = b"\x00ready"
START_TIMEOUT = 30.0  # seconds a fresh worker may take to say hello
#: A wait of this many seconds or more is unbounded (as in ``_spin.c``): poll() takes
#: at most 2**31-1 ms (24.8 days) and the C end's deadline is a 64-bit nanosecond.
NO_BOUND = 1e9
FLOOD_WAKES = 32  # eventfd wake-ups without a reply in one wait: a flood (_spin.c)

# The states of an isolated version's worker, as VersionInfo.worker shows them.
UP, RESTARTING, STOPPED = "running", "restarting", "stopped"


class _StartFailed(Exception):
    """A worker never said hello: how it ended, or that it was stopped
    (``stopped``) or silent; it has been killed."""

    def __init__(
        self,
        pid: int,
        *,
        signal_name: str | None,
        exit_code: int | None,
        stopped: bool,
        stderr: str,
        said: bytes | None,
        timeout: float,
    ) -> None:
        self.pid, self.signal_name, self.exit_code = pid, signal_name, exit_code
        self.stopped, self.stderr = stopped, stderr
        if stopped:
            how = "was stopped by SIGSTOP"
        elif said is not None:
            how = f"said {said[:40]!r} instead of hello"
        elif signal_name is not None:
            how = f"died of {signal_name}"
        elif exit_code is not None:
            how = f"exited with code {exit_code}"
        else:
            how = f"did not say it was ready within {timeout:g} s"
        self.how = how
        super().__init__(
            f"worker (pid {pid}) failed to start: it {how}"
            + (f"; stderr: {stderr}" if stderr else "; no output")
        )


# ---- one worker process ------------------------------------------------------------
class Worker:
    """A worker process and the host's ends of its channels: the socket
    (control frames, large bodies, EOF), and for an isolated version the
    service channel and the shared-memory area.  Started by ``start``, ready
    once ``greet`` has read its hello."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes] | Sibling,
        sock: socket.socket,
        shm: tuple[mmap.mmap, int, int] | None = None,
        svc: socket.socket | None = None,
    ) -> None:
        self.popen = popen
        self.sock = sock
        self.svc = svc  # the service channel: the plugin's calls of host services
        self.svc_lock = threading.Lock()  # answers come from several host threads
        self.svc_thread: threading.Thread | None = None
        self.svc_garbage = ""  # why the host killed it for its service requests
        self._reap_lock = threading.Lock()
        self._reaped = False
        self.pid = popen.pid  # the process running plugin code (below the guard when sandboxed)
        self.sandboxed = False  # started with --sandbox
        self._start: int | None = None  # the start time of ``pid`` (a sandboxed worker's)
        self.sandbox: tuple[str, ...] = ()  # the protections in force, from its hello
        self.sandbox_why = ""  # why the strongest ones are missing
        self.greeted = False  # its hello came: the interpreter is up and listening
        self.pooled = False  # started as a spare (``pool.Spawner``), not on demand
        self._greet_lock = threading.Lock()  # a spare may be greeted by its taker and the tick
        self._timeout: float | None = None
        self.mm: mmap.mmap | None = None
        self.seq = 0
        self.pending = 0  # a call whose wait was abandoned (a signal): see _settle
        self.sock_pending = False  # the same on the socket: see exchange
        self.chan: Any = None  # the C end of the channel (``_spin.c``), when built
        self.lanes: list[Any] = []  # the C ends of its other lanes (``inflight``), when opened
        if shm is not None:
            self.mm, self.wake, self.done = shm
            self.ctl = memoryview(self.mm).cast("B")[:SHM_REQ].cast("Q")
            if cspin is not None:
                self.chan = cspin.Channel(
                    self.mm, peer=self.wake, own=self.done, sock=sock.fileno(), host=True
                )
            self.poller = channel.poller(self.done, sock.fileno())
            self.sock_poller = channel.poller(sock.fileno())
        # The socket and the eventfds close at _release only when no caller
        # waits on them here (in poll() or recv() without the GIL): a number
        # closed under a waiter could be reused by another file, which it would
        # then read; else the waiter closes them as it leaves.  (The C end keeps
        # its own copies: _spin.c.)
        self._efds = () if shm is None else (shm[1], shm[2])
        self._waiting = 0  # callers in a wait (one: calls are serialized per version)
        self._released = False
        self._sock_open = True
        self._fds_lock = threading.Lock()
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        self.kin: dict[int, int] = {}  # descendants seen (pid -> start time): see note_kin
        self._tree_ended = False
        self._drain = threading.Thread(
            target=self._read_stderr, daemon=True, name=f"hotload-isolate-stderr-{self.pid}"
        )
        self._drain.start()

    def _read_stderr(self) -> None:
        """The worker's stderr until EOF; this thread closes the pipe (closing
        it from another thread would wait for that EOF, which a forked child
        holding the pipe can put off for as long as it lives)."""
        pipe = self.popen.stderr
        assert pipe is not None
        try:
            for raw in pipe:
                self.stderr.append(raw.decode(errors="replace").rstrip())
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    def tail(self, lines: int = 6) -> str:
        """Its last stderr lines, ``" | "``-joined (its last words, when it is dead)."""
        if self.popen.returncode is not None:
            self._drain.join(0.2)
        return " | ".join(list(self.stderr)[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def intact(self) -> bool:
        """Alive and able to serve: its process (and, sandboxed, the one below
        the guard that runs plugin code) not gone, not a zombie, not stopped
        by a signal.  A spare killed from outside fails this before its guard
        has noticed."""
        if not self.alive() or self.stopped():
            return False
        return self.pid == self.popen.pid or channel.start_time(self.pid) == self._start

    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP, job control, a tracer): it cannot
        make progress until someone resumes it."""
        return channel.stopped(self.pid)

    # -- the handshake -----------------------------------------------------------------
    def greet(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for its hello (once); ``_StartFailed`` saying how it ended, or
        that it was stopped or silent, when none came.  The worker is killed
        then."""
        with self._greet_lock:
            self._greet(timeout)

    def hello_waiting(self) -> bool:
        """Its hello (or its EOF) is on the socket: ``greet`` would not wait."""
        if self.greeted:
            return True
        fd = self.sock.fileno()
        return fd < 0 or bool(channel.poller(fd).poll(0))  # closed: greet says how it ended

    def _greet(self, timeout: float) -> None:
        if self.greeted:
            return
        if self.popen.returncode is not None and self._reaped:
            hello: bytes | None = None  # killed already (by another greet): say how
        else:
            try:
                hello = self.recv(timeout)
            except (EOFError, OSError, _Garbage):  # OSError: TimeoutError, a reset
                hello = None
        if hello is not None and hello.startswith(HELLO):
            if len(hello) > len(HELLO):
                self._hello(hello[len(HELLO) :])
            self.greeted = True
            return
        if hello is None:  # its socket closed (it is dying: collect how) or it said nothing
            self.reap(2.0)
        stopped = self.popen.returncode is None and self.stopped()
        code = self.popen.returncode
        self.kill()
        sig = channel.exit_signal(code) if code is not None else None
        raise _StartFailed(
            self.pid,
            signal_name="SIGSTOP" if stopped else sig,
            exit_code=code,
            stopped=stopped,
            stderr=self.tail(),
            said=hello,
            timeout=timeout,
        )

    def _hello(self, extra: bytes) -> None:
        """A sandboxed worker's hello: its protections; and the pid that runs
        plugin code, below the guard (nothing of the plugin has run yet, so
        that chain has no other branch)."""
        try:
            info = json.loads(extra)
        except ValueError:
            info = {}
        if isinstance(info, dict):
            self.sandbox = tuple(str(p) for p in info.get("sandbox") or ())
            self.sandbox_why = str(info.get("why") or "")
        self.pid = channel.worker_pid(self.popen.pid)
        self._start = channel.start_time(self.pid)

    # -- requests with one deadline (a trial: the host must not wait past it) -----------
    def send_by(self, body: bytes, deadline: float) -> bool:
        """Send one frame; False when ``deadline`` passed first (the worker
        stopped reading: the channel is in an unknown state, kill it).
        ``BrokenPipeError``/``ConnectionResetError`` when it is gone."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self._settimeout(left)
        try:
            self.sock.sendall(FRAME.pack(len(body)) + body)  # the timeout bounds the whole send
        except TimeoutError:
            return False
        return True

    def recv_by(self, deadline: float) -> bytes | None:
        """The next frame, read exactly (several may be on their way); None
        when ``deadline`` passed first, ``EOFError`` when the worker is gone,
        ``_Garbage`` for a length no frame may have."""
        try:
            (n,) = FRAME.unpack(self._exactly_by(4, deadline))
            if n > MAX_FRAME:
                raise _Garbage(f"a frame of {n} bytes")
            return self._exactly_by(n, deadline)
        except TimeoutError:
            return None

    def _exactly_by(self, n: int, deadline: float) -> bytes:
        buf = bytearray(n)  # received in place: buf += chunk is quadratic for a large body
        view = memoryview(buf)
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._settimeout(left)
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except ConnectionResetError:
                k = 0
            if not k:
                raise EOFError
            got += k
        return bytes(buf)

    def _settimeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def send(self, body: bytes) -> None:
        self.sock.sendall(FRAME.pack(len(body)) + body)

    def exchange(self, body: bytes, timeout: float | None) -> bytes:
        """Send a request on the socket and read its reply, within ``timeout``.
        A reply still owed (the last wait was abandoned by a signal handler:
        Ctrl-C, an alarm) is read and dropped first, within the same timeout:
        it would otherwise be taken for this request's."""
        if self.sock_pending:
            self.recv(timeout)
            self.sock_pending = False
        self.send(body)
        self.sock_pending = True
        reply = self.recv(timeout)
        self.sock_pending = False
        return reply

    # -- the shared-memory path of a call --------------------------------------------
    def call_shm(
        self, cp: CallPlan, args: tuple[Any, ...], timeout: float | None, *, again: bool = False
    ) -> Any:
        """One call through shared memory; ``NotImplemented`` if its body does
        not fit (the caller sends it on the socket).  Raises as ``recv``.
        ``again``: the C end made the call (the proxy's hot path, which also
        answers the services it asks in place) and handed it back (``chan.why``)."""
        mm = self.mm
        assert mm is not None
        chan = self.chan
        if chan is not None and cp.spin is not None and again:  # the C end made the call
            why = chan.why
            if why == cspin.WHY_TIMEOUT:
                raise TimeoutError
            if why == cspin.WHY_SOCKET:  # a large reply, EOF or garbage
                return decode(cp, self.recv(timeout), args)
            if why == cspin.WHY_REPLY:  # not the plan's reply, or bytes on the socket
                return self._shm_reply(cp, args)
            if why == cspin.WHY_CLOSED:
                raise ValueError("the worker's channel was released")
            # WHY_PACK: nothing was sent; the Python path judges the arguments
        self._settle(timeout)
        if cp.simple:
            if len(args) != len(cp.params) or cp.bools:
                encode(cp, args)  # raises the TypeError (a _Bool: checked by the rule)
            try:
                cp.req.pack_into(mm, SHM_REQ, OP_CALL, cp.idx, *args)
            except struct.error as exc:
                raise OverflowError(str(exc)) from None
            n = cp.req.size
        else:
            body = encode(cp, args)
            n = len(body)
            if n > SHM_CAP:
                return NotImplemented
            mm[SHM_REQ : SHM_REQ + n] = body
        ctl = self.ctl
        ctl[SVC_OK] = 0  # this waiter answers services on the service channel only
        if chan is not None:  # one sequence for both paths
            chan.seq = seq = chan.seq + 1
        else:
            self.seq = seq = self.seq + 1
        ctl[REQ_LEN] = n
        ctl[REQ_SEQ] = seq  # after the body: x86 keeps stores in order
        os.eventfd_write(self.wake, 1)  # always (the protocol's superset: _spin.c)
        waited = False
        try:
            reply = self._await(seq, timeout)
            waited = True
        finally:
            if not waited:  # a signal handler raised (or it died: then no matter)
                if chan is not None:
                    chan.pending = seq
                else:
                    self.pending = seq
        if reply is None:
            return self._shm_reply(cp, args)
        return decode(cp, reply, args)

    def _shm_reply(self, cp: CallPlan, args: tuple[Any, ...]) -> Any:
        """The reply in shared memory, after a check for stray bytes on the socket."""
        mm, ctl = self.mm, self.ctl
        assert mm is not None
        size = ctl[REP_LEN]
        if size == cp.rep.size and cp.simple and mm[SHM_REP] == ST_OK:
            out = cp.rep.unpack_from(mm, SHM_REP)
            self._no_strays()
            return out[1] if len(out) > 1 else None
        if size > SHM_CAP:
            raise _Garbage(f"a reply of {size} bytes in shared memory")
        reply = mm[SHM_REP : SHM_REP + size]
        self._no_strays()
        return decode(cp, reply, args)

    def _settle(self, timeout: float | None) -> None:
        """Before a call: wait (within ``timeout``) for the reply to the call
        whose wait a signal handler abandoned (Ctrl-C, an alarm): the worker
        may still run it, and reads the request area until it starts.  A reply
        of it on the socket (a large one) is read and dropped.  Raises as
        ``_await`` (a timeout: the worker is killed)."""
        chan = self.chan
        pend = chan.pending if chan is not None else self.pending
        if not pend:
            return
        self._await(pend, timeout)
        if chan is not None:
            chan.pending = 0
        else:
            self.pending = 0

    def _await(self, seq: int, timeout: float | None) -> bytes | None:
        """Wait for the reply to request ``seq``: None when it is in shared
        memory, the body when it came on the socket (too large)."""
        ctl = self.ctl
        clock = time.perf_counter_ns
        end = clock() + HOST_SPIN_NS
        while ctl[REP_SEQ] != seq:
            if clock() > end:
                break
            yield_cpu()  # the worker may be waiting for this very core
        else:
            return None
        if timeout is not None and timeout >= NO_BOUND:
            timeout = None
        deadline = None if timeout is None else time.monotonic() + timeout
        self._waiting += 1
        try:
            return self._sleep(seq, deadline)
        finally:
            self._left()

    def _left(self) -> None:
        self._waiting -= 1
        if self._released and not self._waiting:
            self._close_fds()

    def _close_fds(self) -> None:
        with self._fds_lock:
            efds, self._efds = self._efds, ()
            sock, self._sock_open = self._sock_open, False
        if sock:
            with contextlib.suppress(OSError):
                self.sock.close()
        for fd in efds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _sleep(self, seq: int, deadline: float | None) -> bytes | None:
        ctl = self.ctl
        spurious = 0
        while True:
            ctl[HOST_SLEEPS] = 1  # then drain: the eventfd's lock is the fence (_spin.c)
            drain(self.done)
            if ctl[REP_SEQ] == seq:
                ctl[HOST_SLEEPS] = 0
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                ctl[HOST_SLEEPS] = 0
                raise TimeoutError
            ms = -1 if left is None else min(max(1, int(left * 1000)), 2**31 - 1)
            if spurious >= FLOOD_WAKES:  # an eventfd flood: look every ms (_spin.c)
                events = self.sock_poller.poll(1 if ms < 0 else min(ms, 1))
            else:
                events = self.poller.poll(ms)
                spurious += any(fd == self.done for fd, _ in events)
            ctl[HOST_SLEEPS] = 0
            if any(fd != self.done for fd, _ in events):
                if ctl[REP_SEQ] == seq:
                    return None  # replied, then died or wrote garbage: _no_strays decides
                return self.recv(left)  # a large reply, EOF or garbage

    def _no_strays(self) -> None:
        """Bytes on the socket during a shared-memory call are garbage (the
        plugin wrote to a descriptor it does not own); EOF is fine here, the
        supervisor reports a death after the reply."""
        if self.sock_poller.poll(0):
            try:
                stray = self.sock.recv(64, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            except OSError:
                return
            if stray:
                raise _Garbage(f"{len(stray)}+ stray bytes on the socket during the call")

    def recv(self, timeout: float | None) -> bytes:
        """One reply body; EOFError when the worker is gone, TimeoutError at
        the deadline, _Garbage for a frame that breaks the protocol.  One
        deadline for the whole frame, ``timeout`` seconds from now: each
        recv() gets the time left (a worker dripping a byte at a time does not
        re-arm it)."""
        deadline = None
        if timeout is not None and timeout < NO_BOUND:
            deadline = time.monotonic() + timeout
        self._waiting += 1
        try:
            buf = self._exactly(4, b"", deadline)  # usually the whole reply in one recv
            return self._rest(buf, deadline)
        finally:
            self._left()

    def _rest(self, buf: bytes, deadline: float | None) -> bytes:
        (n,) = FRAME.unpack_from(buf)
        if n > MAX_FRAME:
            raise _Garbage(f"a frame of {n} bytes")
        if len(buf) > 4 + n:
            raise _Garbage(f"{len(buf) - 4 - n} bytes after a reply")
        if len(buf) < 4 + n:  # a large body: the rest into one buffer
            if deadline is None:
                self._settimeout(None)
                return buf[4:] + recv_exactly(self.sock, 4 + n - len(buf))
            return buf[4:] + self._exactly_by(4 + n - len(buf), deadline)
        return buf[4:]

    def _exactly(self, n: int, buf: bytes, deadline: float | None) -> bytes:
        while len(buf) < n:
            if deadline is None:
                self._settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._settimeout(left)
            try:
                chunk = self.sock.recv(max(n - len(buf), 4096) if n == 4 else n - len(buf))
            except TimeoutError:
                raise TimeoutError from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def note_kin(self) -> None:
        """Remember the worker's descendants (the supervisor's tick): a child
        that left its process group (a daemon) is re-parented away when the
        worker dies, and is then found only by this memory."""
        found = channel.descendants(self.popen.pid)
        self.kin = found if self.alive() else {**self.kin, **found}

    def wake_caller(self) -> None:
        """The worker is dead but a forked child keeps the channel open, so
        the call waiting on it would see no EOF: end the tree and shut the
        host's end (the caller wakes up with EOF and reports the crash)."""
        self._end_tree()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def kill(self) -> None:
        """SIGKILL the worker and everything it forked (also a stopped one)."""
        if self.popen.returncode is None:  # not reaped: its tree is still there to walk
            channel.kill_tree(self.popen.pid, self.kin, walk=True)
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
        if self.reap(5.0) and self.pid != self.popen.pid:
            channel.wait_gone(self.pid, self._start, 2.0)  # reaped by its namespace's init

    def _end_tree(self) -> None:
        if not self._tree_ended:
            self._tree_ended = True
            channel.kill_tree(self.popen.pid, self.kin, walk=False)

    def reap(self, timeout: float) -> bool:
        if not channel.wait_exit(self.popen, timeout):
            return False
        with self._reap_lock:  # the caller, the supervisor and the service thread may all reap
            if not self._reaped:
                self._reaped = True
                self._end_tree()  # children left in its group, and daemons seen before
                self._release()
        return True

    def _release(self) -> None:
        # not stderr: its reader thread closes it at EOF (closing it here would
        # wait for that read, i.e. for every forked child still holding the pipe)
        # The socket and the eventfds stay open while a caller waits on them (see
        # __init__): shutdown() and a write of our eventfd wake it, and it closes
        # them as it leaves.
        for f in (self.sock, self.svc):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
        if self.svc is not None:
            with contextlib.suppress(OSError):
                self.svc.close()
        if self.mm is not None:
            done, self.wake, self.done = self.done, -1, -1  # first: see _call_shm
            for chan in [self.chan, *self.lanes]:  # a waiting call returns; the mapping
                if chan is not None:  # stays until the last one is freed
                    chan.close()
            with contextlib.suppress(OSError):
                os.eventfd_write(done, 1)  # a waiter's poll() returns
        self._released = True
        if not self._waiting:
            self._close_fds()
        if self.mm is not None:
            self.ctl.release()  # a call still spinning on it gets ValueError: a crash
            with contextlib.suppress(BufferError):
                self.mm.close()  # the mapping holds a dup of the memfd

    def how_it_ended(self) -> tuple[str | None, int | None]:
        code = self.popen.returncode
        if code is None:
            return None, None
        return channel.exit_signal(code), code

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0


def worker_env() -> dict[str, str]:
    """The environment every worker gets: ``ENV_KEEP`` from the host's (and
    ``LC_*``), plus the host's ``sys.path`` so it imports this very hotload."""
    env = {k: v for k, v in os.environ.items() if k in ENV_KEEP or k.startswith("LC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def start(
    role: str,
    *,
    shm: bool = False,
    services: bool = False,
    sandbox: bool = False,
    via: Zygote | None = None,
) -> Worker:
    """Start a worker process of ``role``: the socket always, the service
    channel and the shared-memory area when asked, in a sandbox when asked;
    forked by the zygote ``via`` (``_ZygoteFailed`` when it fails), else a
    fresh interpreter.  Returns at once (greet it before use); ``OSError`` as
    the system gave it (out of descriptors, say), with nothing left open.
    Call it from a thread that lives as long as the worker (``Spawner``)."""
    if role not in ROLES:
        raise ValueError(f"unknown worker role {role!r}")
    if not channel.WORKERS:  # no socketpair to pass by descriptor (see _platform._proc_windows)
        raise OSError(errno.ENOSYS, "worker processes need a POSIX host (not built for Windows)")
    argv = [sys.executable, "-s", "-m", WORKER_MODULE, "--role", role]
    argv += ["--parent", str(os.getpid())]
    if sandbox:
        argv.append("--sandbox")
    opened: list[Any] = []  # closed if anything below fails
    passed: list[int] = []  # the worker's ends, closed here once it has them
    memfd = -1
    try:
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        opened += [host_end, worker_end]
        argv += ["--fd", str(worker_end.fileno())]
        passed.append(worker_end.fileno())
        svc_host: socket.socket | None = None
        if services:
            svc_host, svc_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            opened += [svc_host, svc_worker]
            argv += ["--svc", str(svc_worker.fileno())]
            passed.append(svc_worker.fileno())
        area: tuple[mmap.mmap, int, int] | None = None
        if shm:
            # sealed: a worker that truncated it (through /proc/self/map_files)
            # made the host's next access of the mapping die of SIGBUS
            memfd = channel.sized_memfd("hotload-isolate", SHM_SIZE)
            mm = mmap.mmap(memfd, SHM_SIZE)
            opened.append(mm)
            flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
            wake = os.eventfd(0, flags)
            opened.append(wake)
            done = os.eventfd(0, flags)
            opened.append(done)
            area = (mm, wake, done)
            argv += ["--shm", f"{memfd},{wake},{done}"]
            passed += [memfd, wake, done]
        popen: subprocess.Popen[bytes] | Sibling
        if via is not None:
            popen = via.fork(argv, passed)
        else:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=worker_env(),
                close_fds=True,
                pass_fds=passed,
                **channel.spawn_options(),
            )
    except BaseException:
        for f in opened:
            with contextlib.suppress(OSError):
                if isinstance(f, int):
                    os.close(f)
                else:
                    f.close()
        raise
    finally:
        if memfd >= 0:
            os.close(memfd)  # the mapping stays; the plugin cannot write() into it
    for f in opened:  # the worker's ends: it has its own copies now
        if isinstance(f, socket.socket) and f.fileno() in passed:
            f.close()
    worker = Worker(popen, host_end, area, svc_host)
    worker.sandboxed = sandbox
    return worker
