"""The worker zygote: one started, imported, idle process per kind of worker
that forks each new one (issue 24 item 4).

A worker start used to be a fresh interpreter importing hotload: 0.1-0.2 s
of CPU and 0.2-0.5 s of wall time on the shared 2-core machine, so a burst
of reloads past the pool of spares waited for starts.  The zygote pays that
once: it is started like a worker (``python -s -m hotload._process.worker
--zygote``, scrubbed environment, only its channel), imports everything the
role runs, then waits; each worker is then a ``fork()`` of it, which returns
into the worker's own start-up (``worker._main``) as if it had been exec'd,
with the descriptors the host sent along.

- **The host stays the parent.**  The zygote forks with ``CLONE_PARENT``
  (``proc.fork_sibling``): every worker is the host's child, reaped by it
  (``Sibling``, the ``Popen`` of such a worker), killed by a pid that cannot
  be reused before that, its crash signal read from its wait status, its
  parent-death signal tied to the host.  A zygote that dies or is stopped
  changes nothing for the workers it forked.
- **Nothing to steal, nothing to reach.**  The zygote holds no plugin code
  and none of the host's memory (it is a fresh interpreter, not a fork of
  the host) and one descriptor: its channel, a socketpair with the host.  A
  child closes it (and everything else) before anything of a worker runs,
  so no worker can ask for forks or talk to the zygote; the channel carries
  requests one way (host to zygote) and a pid back.
- **The sandbox stays per worker.**  A sandboxed kind's zygote is not
  sandboxed itself; each child enters a sandbox of its own exactly as a
  fresh worker does (``proc.sandbox``: its own namespaces, file system,
  Landlock domain and seccomp filter).  What the zygote prepares once is
  what every sandbox computed the same way: the list of directories to bind.
- **One thread.**  A fork copies only the calling thread: the zygote starts
  none (its parent-death signal without ``die_with_parent``'s watchdog
  thread; its host's end of file ends it).
- **It dies with the host** (its parent-death signal, and its channel's end
  of file), and the spawner restarts it when it died or was stopped; a
  start it does not answer within ``FORK_TIMEOUT`` (stopped, killed,
  garbage on its channel) falls back to a fresh interpreter (logged).
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from .._platform import proc

log = logging.getLogger(__name__)

#: Seconds a started zygote may take to say hello, and a fork request to be
#: answered (a live zygote answers in about a millisecond).
BOOT_TIMEOUT = 10.0
FORK_TIMEOUT = 1.0
HELLO = b"\x00zygote"
MAX_FDS = 8  # descriptors one request may carry
MAX_REQUEST = 65536  # a request's bytes: the command line and the environment
ROOM = " " * 120  # the zygote's last argument: where a worker's longer command line goes
FD_FLAGS = ("--fd", "--svc", "--shm")  # the worker's arguments that name descriptors
_REPLY = struct.Struct("<i")
EXIT_GARBAGE = 71  # the zygote read a request that breaks the protocol


class _ZygoteFailed(Exception):
    """The zygote did not answer a request properly (dead, stopped, silent,
    garbage); it has been killed."""


# ---- the zygote process ---------------------------------------------------------------
def serve(argv: list[str], parent: int) -> list[str]:
    """The zygote's loop (``worker --zygote``): say hello, then fork one
    worker per request.  Returns only in a forked worker, with that worker's
    command line; exits when the host closes the channel."""
    sock = socket.socket(fileno=int(argv[argv.index("--fd") + 1]))
    proc.die_with_parent_signal(parent)  # no watchdog thread: the zygote stays one thread
    why = proc.fork_ready(sandbox="--sandbox" in argv)
    orig = getattr(sys, "orig_argv", [])  # python -s -m hotload._process.worker ...
    prefix = orig[: orig.index("--role")] if "--role" in orig else [sys.executable]
    if why:
        sock.send(b"\x01" + why.encode()[:200])
        os._exit(0)
    import gc

    gc.collect()
    gc.freeze()  # what is here now is shared with every child: the collector leaves it be
    sock.send(HELLO)
    while True:
        try:
            msg, anc, flags, _ = sock.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(MAX_FDS * 4))
        except InterruptedError:
            continue
        if not msg:
            os._exit(0)  # the host closed the channel (or is gone)
        fds = _fds(anc)
        child_argv, cwd, env = _request(msg, flags, fds)
        if child_argv is None:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            os._exit(EXIT_GARBAGE)
        try:
            pid = proc.fork_sibling()
        except OSError as exc:
            pid = -(exc.errno or 1)
        if pid == 0:
            _become_worker(sock, fds, cwd, env)
            proc.set_cmdline([*prefix, *child_argv])
            return child_argv
        for fd in fds:
            os.close(fd)
        sock.send(_REPLY.pack(pid))


def _fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _request(
    msg: bytes, flags: int, fds: list[int]
) -> tuple[list[str] | None, str, dict[str, str]]:
    """The worker's command line, working directory and environment from a
    request: JSON ``{"argv": [...], "cwd": ..., "env": {...}}`` in which
    ``@N`` stands for the N-th descriptor sent (the last one is the worker's
    stderr); None when it breaks the protocol."""
    bad: tuple[None, str, dict[str, str]] = (None, "", {})
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or not 1 <= len(fds) <= MAX_FDS:
        return bad
    try:
        req = json.loads(msg)
        argv, cwd, env = req["argv"], req.get("cwd") or "/", req.get("env") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return bad
    if not isinstance(argv, list) or len(argv) > 32 or not isinstance(cwd, str):
        return bad
    if not all(isinstance(a, str) and len(a) <= 256 for a in argv):
        return bad
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    ):
        return bad
    out = list(argv)
    for i in range(1, len(out)):
        if out[i - 1] in FD_FLAGS:
            parts = out[i].split(",")
            if not all(p[:1] == "@" and p[1:].isdigit() and int(p[1:]) < len(fds) for p in parts):
                return bad
            out[i] = ",".join(str(fds[int(p[1:])]) for p in parts)
    return out, cwd, env


def _become_worker(sock: socket.socket, fds: list[int], cwd: str, env: dict[str, str]) -> None:
    """In the child, before anything of a worker runs: the zygote's channel
    and every other descriptor closed, the worker's stderr on fd 2, stdin
    and stdout on /dev/null, its own session (as ``start_new_session``),
    the environment and working directory a worker started now would have."""
    sock.close()
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    os.environ.clear()  # putenv()s: the C library's environment too
    os.environ.update(env)
    err = fds[-1]
    os.dup2(err, 2)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    keep = {0, 1, 2, *fds[:-1]}
    for fd in (null, err):
        if fd not in keep:
            os.close(fd)
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)  # the listing's own descriptor is among them
    os.setsid()


# ---- the host's side ------------------------------------------------------------------
class Sibling:
    """A worker forked by the zygote, as the host sees it: the parts of
    ``subprocess.Popen`` the worker's code uses (``pid``, ``returncode``,
    ``poll``, ``wait``, ``kill``, ``stderr``).  It is the host's child
    (``CLONE_PARENT``), so the host waits for it as for any other."""

    def __init__(self, pid: int, stderr_fd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stderr = os.fdopen(stderr_fd, "rb")
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                self._waitpid(os.WNOHANG)
            finally:
                self._lock.release()
        return self.returncode

    def _waitpid(self, options: int) -> None:
        if self.returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as Popen does
            self.returncode = 0
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            with self._lock:
                self._waitpid(0)
            assert self.returncode is not None
            return self.returncode
        end = time.monotonic() + timeout
        pause = 0.0005
        while self.poll() is None:
            left = end - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired([f"worker {self.pid}"], timeout)
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.02)
        return self.returncode or 0

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class Zygote:
    """The host's handle on one zygote: started and asked for forks from the
    spawner's thread only (the parent-death signal of the zygote, and so of
    what it forks, follows that thread)."""

    def __init__(self, argv: list[str], env: Callable[[], dict[str, str]]) -> None:
        self._argv = argv  # the worker's command line, without --fd and --zygote
        self._env = env  # the environment of a worker started now
        self.popen: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.forks = 0  # workers forked (tests, benchmarks)
        self.starts = 0  # zygotes started, ever
        self.unusable = False  # a zygote said it cannot fork here (``proc.fork_ready``)

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    def running(self) -> bool:
        """Started and said hello, not dead, not stopped."""
        return (
            self.popen is not None
            and self.popen.poll() is None
            and self.sock is not None
            and not proc.stopped(self.popen.pid)
        )

    def boot(self) -> str:
        """Start it and wait for its hello: "" when it is up, else why not
        (it has been killed)."""
        self.stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # room for the command line of each worker it forks (``proc.set_cmdline``)
            argv = [*self._argv, "--fd", str(theirs.fileno()), "--zygote", ROOM]
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=self._env(),
                close_fds=True,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            return f"could not be started: {exc}"
        finally:
            theirs.close()
        self.starts += 1
        self.sock = ours
        said = self._answer(BOOT_TIMEOUT)
        if said == HELLO:
            return ""
        self.stop()
        if said.startswith(b"\x01"):
            self.unusable = True
            return said[1:].decode(errors="replace")
        return self.state(said)

    def _answer(self, timeout: float) -> bytes:
        """One message from the zygote within ``timeout``; b"" when none came
        (dead, stopped, silent: ``_how`` says which)."""
        assert self.sock is not None and self.popen is not None
        poller = proc.poller(self.sock.fileno())
        end = time.monotonic() + timeout
        while True:
            if poller.poll(20):
                try:
                    return self.sock.recv(MAX_REQUEST, socket.MSG_DONTWAIT)
                except OSError:
                    return b""
            if self.popen.poll() is not None or proc.stopped(self.popen.pid):
                return b""
            if time.monotonic() > end:
                return b""

    def state(self, said: bytes = b"") -> str:
        """How it failed: what it said instead, or how it ended, or that it
        is stopped or silent."""
        popen = self.popen
        if said:
            return f"said {said[:40]!r}"
        if popen is not None and popen.poll() is not None:
            sig = proc.exit_signal(popen.returncode)
            return f"died of {sig}" if sig else f"exited with code {popen.returncode}"
        if popen is not None and proc.stopped(popen.pid):
            return "was stopped (SIGSTOP)"
        return "did not answer"

    def fork(self, argv: list[str], fds: list[int]) -> Sibling:
        """A new worker with command line ``argv`` (the worker module's
        arguments: a descriptor in ``fds`` appears as itself and is sent
        along).  ``_ZygoteFailed`` (the zygote killed) when it does not
        answer with the pid of a new child of ours within ``FORK_TIMEOUT``."""
        if self.sock is None:
            raise _ZygoteFailed("the worker zygote is not running")
        index = {str(fd): f"@{i}" for i, fd in enumerate(fds)}
        sent = argv[argv.index("--role") :]
        for i in range(1, len(sent)):
            if sent[i - 1] in FD_FLAGS:  # descriptors, by their index in the request
                sent[i] = ",".join(index[p] for p in sent[i].split(","))
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            # the environment and working directory a worker started now would have
            req = {"argv": sent, "cwd": os.getcwd(), "env": self._env()}
            body = json.dumps(req).encode()
            if len(body) > MAX_REQUEST:
                raise OSError(7, f"a worker's environment of {len(body)} bytes")  # E2BIG
            rights = array.array("i", [*fds, err_w]).tobytes()
            try:
                self.sock.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
            except OSError as exc:
                raise self._failed(f"did not take the request ({exc})") from None
            said = self._answer(FORK_TIMEOUT)
            if len(said) != _REPLY.size:
                raise self._failed(self.state(said))
            (pid,) = _REPLY.unpack(said)
            if pid < 0:  # a fresh start then fails the same way (EAGAIN) or not (EPERM)
                if -pid in (errno.EPERM, errno.ENOSYS, errno.EINVAL):
                    self.unusable = True  # the clone itself is refused here (a seccomp profile)
                raise self._failed(f"could not fork: {os.strerror(-pid)}")
            if not _our_child(pid):
                raise self._failed(f"answered pid {pid}, not a new child of the host")
        except BaseException:
            if err_r >= 0:
                os.close(err_r)
            raise
        finally:
            os.close(err_w)
        self.forks += 1
        return Sibling(pid, err_r)

    def _failed(self, how: str) -> _ZygoteFailed:
        pid = self.pid
        self.stop()
        return _ZygoteFailed(f"the worker zygote (pid {pid}) {how}")

    def stop(self) -> None:
        """Kill it (a zygote holds nothing to save) and close the channel."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
        popen, self.popen = self.popen, None
        if popen is not None:
            with contextlib.suppress(OSError):
                popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(5.0)


def _our_child(pid: int) -> bool:
    """``pid`` is a child of this process (not reaped): ``waitid`` answers
    only for our own children, and ``WNOWAIT`` leaves it unreaped."""
    if pid <= 0:
        return False
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    except OSError:
        return False
    return True


def wanted() -> bool:
    """Whether workers come from a zygote here (``HOTLOAD_ZYGOTE=0``: never)."""
    on = os.environ.get("HOTLOAD_ZYGOTE", "1") != "0"
    return on and proc.WORKERS and sys.platform.startswith("linux")  # clone(CLONE_PARENT)
