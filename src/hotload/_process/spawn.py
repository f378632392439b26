"""A worker process as the host sees it: start it, talk to it, end it.

``spawn`` starts a fresh interpreter running ``_isolated_worker`` (never a
fork of the host: a fork would copy the host's threads' locks mid-state)
with only the descriptors it needs and a scrubbed environment, and waits for
its hello.  ``Worker`` owns the host's ends of its channels (the socketpair
for control frames and EOF, the service channel, and on Linux x86 the
shared-memory area and its two eventfds), reads its stderr for crash
reports, and kills and reaps it together with everything the plugin forked.
"""

from __future__ import annotations

import collections
import contextlib
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

from .._artifact.loader import ON_LOAD_TYPE, ON_UNLOAD_TYPE, Image, Staged  # noqa: F401
from .._errors import (
    HotloadError,
)
from .._platform import proc as channel
from .wire import (
    FRAME,
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
    SVC_HEAD,
    CallPlan,
    _Garbage,
    decode,
    drain,
    encode,
    shm_supported,
    yield_cpu,
)

log = logging.getLogger(__name__)

#: Environment variables a worker keeps from the host; everything else is dropped.
ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")

# ---- one worker process ------------------------------------------------------------
UP, RESTARTING, STOPPED = "running", "restarting", "stopped"


class Worker:
    """A running worker process and its end of the channel."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
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
        self.pid = popen.pid
        self._timeout: float | None = None
        self.mm: mmap.mmap | None = None
        self.seq = 0
        if shm is not None:
            self.mm, self.wake, self.done = shm
            self.ctl = memoryview(self.mm).cast("B")[:SHM_REQ].cast("Q")
            self.poller = channel.poller(self.done, sock.fileno())
            self.sock_poller = channel.poller(sock.fileno())
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
        self._drain.join(0.2)  # its last words, when it is dead
        return " | ".join(list(self.stderr)[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, body: bytes) -> None:
        self.sock.sendall(FRAME.pack(len(body)) + body)

    # -- the shared-memory path of a call --------------------------------------------
    def call_shm(self, cp: CallPlan, args: tuple[Any, ...], timeout: float | None) -> Any:
        """One call through shared memory; ``NotImplemented`` if its body does
        not fit (the caller sends it on the socket).  Raises as ``recv``."""
        mm = self.mm
        assert mm is not None
        if cp.simple:
            if len(args) != len(cp.params):
                encode(cp, args)  # raises the TypeError
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
        self.seq = seq = self.seq + 1
        ctl[REQ_LEN] = n
        ctl[REQ_SEQ] = seq  # after the body: x86 keeps stores in order
        os.eventfd_write(self.wake, 1)
        reply = self._await(seq, timeout)
        if reply is None:
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
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            drain(self.done)
            if ctl[REP_SEQ] == seq:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError
            events = self.poller.poll(None if left is None else max(1, int(left * 1000)))
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
        the deadline, _Garbage for a frame that breaks the protocol."""
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout
        buf = self._exactly(4, b"")  # usually the whole reply in one recv
        (n,) = FRAME.unpack_from(buf)
        if n > MAX_FRAME:
            raise _Garbage(f"a frame of {n} bytes")
        if len(buf) > 4 + n:
            raise _Garbage(f"{len(buf) - 4 - n} bytes after a reply")
        return self._exactly(4 + n, buf)[4:]

    def _exactly(self, n: int, buf: bytes) -> bytes:
        while len(buf) < n:
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
        found = channel.descendants(self.pid)
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
            channel.kill_tree(self.pid, self.kin, walk=True)
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
        self.reap(5.0)

    def _end_tree(self) -> None:
        if not self._tree_ended:
            self._tree_ended = True
            channel.kill_tree(self.pid, self.kin, walk=False)

    def reap(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
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
        for f in (self.sock, self.svc):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
                with contextlib.suppress(OSError):
                    f.close()
        if self.mm is not None:
            for fd in (self.wake, self.done):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.wake = self.done = -1
            self.ctl.release()  # a call still spinning on it gets ValueError: a crash
            with contextlib.suppress(BufferError):
                self.mm.close()  # the mapping holds a dup of the memfd

    # -- the service channel (the plugin calls the host) -------------------------------
    def svc_frame(self) -> bytes:
        """The next service request; EOFError when the worker is gone,
        _Garbage for a length no request may have."""
        assert self.svc is not None
        (n,) = FRAME.unpack(_recv_exactly(self.svc, 4))
        if n < SVC_HEAD.size or n > MAX_FRAME:
            raise _Garbage(f"a service request of {n} bytes")
        return _recv_exactly(self.svc, n)

    def svc_send(self, body: bytes) -> None:
        assert self.svc is not None
        with self.svc_lock:
            self.svc.sendall(FRAME.pack(len(body)) + body)

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


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def spawn() -> Worker:
    """Start a worker process and wait for its hello (the spare pool calls this
    on a thread of its own)."""
    host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    svc_host, svc_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {k: v for k, v in os.environ.items() if k in ENV_KEEP or k.startswith("LC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    argv = [
        sys.executable,
        "-s",
        "-m",
        "hotload._process.isolated_worker",
        "--parent",
        str(os.getpid()),
        "--fd",
        str(worker_end.fileno()),
        "--svc",
        str(svc_worker.fileno()),
    ]
    fds = [worker_end.fileno(), svc_worker.fileno()]
    shm: tuple[mmap.mmap, int, int] | None = None
    memfd = -1
    try:
        if shm_supported():
            memfd = os.memfd_create("hotload-isolate", os.MFD_CLOEXEC)
            os.ftruncate(memfd, SHM_SIZE)
            flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
            shm = (mmap.mmap(memfd, SHM_SIZE), os.eventfd(0, flags), os.eventfd(0, flags))
            fds += [memfd, shm[1], shm[2]]
            argv += ["--shm", f"{memfd},{shm[1]},{shm[2]}"]
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
            pass_fds=fds,
            **channel.spawn_options(),
        )
    except OSError as exc:
        host_end.close()
        svc_host.close()
        if shm is not None:
            shm[0].close()
            os.close(shm[1])
            os.close(shm[2])
        raise HotloadError(f"cannot start an isolated worker: {exc}") from None
    finally:
        worker_end.close()
        svc_worker.close()
        if memfd >= 0:
            os.close(memfd)  # the mapping stays; the plugin cannot write() into it
    worker = Worker(popen, host_end, shm, svc_host)
    try:
        hello = worker.recv(30.0)
    except (EOFError, TimeoutError, _Garbage):
        worker.kill()
        tail = worker.tail() or "no output"
        raise HotloadError(f"isolated worker (pid {worker.pid}) failed to start: {tail}") from None
    if hello != b"\x00ready":
        worker.kill()
        raise HotloadError(f"isolated worker (pid {worker.pid}) said {hello[:40]!r}")
    return worker
