"""The worker process: one program for every process hotload starts
(``python -s -m hotload._process.worker --role ROLE --parent PID --fd N``).

It is a fresh interpreter started by ``spawn`` (never a fork of the host),
warm before it knows its plugin.  Whatever its role, it starts the same way:
it ends when its host ends (a parent-death signal plus a watchdog, set up
before anything else), it is the subreaper of everything a plugin forks, the
plugin's stdout goes to its stderr (whose tail the host keeps), it says hello
on its socket, and when the host closes the channel it kills and reaps what
the plugin forked and exits.  The role says which requests it takes:

- ``preflight`` (``trial``): tries builds, one ``trial`` request after
  another; ``hotload_in_preflight()`` says 1 and host services are
  stand-ins;
- ``isolated`` (``serving``): opens one version and serves its calls and
  hooks, with the service channel (``--svc``) and, on Linux x86, the
  shared-memory area (``--shm``);
- ``replay`` (``replaying``): opens a candidate build and runs recorded calls
  in bulk, its host services answered from the recording in this process.

With ``--zygote`` the process is the role's zygote (``zygote``): it imports
everything, then forks each new worker, which goes on from here as if it
had been started so.

A request that runs plugin code carries the plugin's ``limits``; the role
applies them before the plugin's first instruction (``_platform.proc``).

With ``--sandbox`` the worker imports everything its role runs, then enters
the sandbox (``_platform.proc.sandbox``: on Linux new namespaces, a
read-only file system of its own, no capabilities, Landlock and a seccomp
filter) before its hello, which names the protections in force; the process
that says hello (and runs the plugin) is then a child of the one the host
started.  A sandboxed worker gets each build's bytes, not its path.

Frames on the socket are ``<I`` length + body (``wire``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable


def _arg(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def _preload(role: str | None) -> None:
    """Import, before the sandbox, everything the role runs and will import
    later: a root host's sandboxed worker is ``nobody``, who may not be able
    to read the Python installation any more (the fallback sandbox has no
    view of its own to bind it into)."""
    import importlib
    import pkgutil

    from .. import _artifact, _contract, _inspect, _process
    from .._artifact import signatures
    from .._contract import services

    for pkg in (_artifact, _contract, _inspect, _process):
        for mod in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
            if mod.name != __name__:
                importlib.import_module(mod.name)
    if role == "preflight":  # the inspector imports the ELF parser on first use
        try:
            import elftools
        except ImportError:
            pass
        else:
            for mod in pkgutil.walk_packages(elftools.__path__, "elftools."):
                with contextlib.suppress(ImportError):
                    importlib.import_module(mod.name)
    signatures.pointer_type("int(void)")  # cffi's C parser, imported on first use
    services.host_machine()


def _main(argv: list[str]) -> int:
    from .._platform import proc

    parent = int(_arg(argv, "--parent") or os.getppid())
    role = _arg(argv, "--role")
    if "--zygote" in argv:  # the role's zygote: forks its workers, each returns here
        from . import zygote

        _preload(role)
        if role == "isolated":
            from .._artifact import signatures

            signatures.warm()
        argv = zygote.serve(argv, parent)
        role = _arg(argv, "--role")
    protections: tuple[str, ...] = ()
    why = ""
    if "--sandbox" in argv:
        _preload(role)
        # first, on one thread: the sandbox checks that its host is alive, may fork, and
        # returns in the process that serves
        protections, why = proc.sandbox(parent)
        parent = os.getppid()  # the sandbox's init or guard
    proc.die_with_parent(parent)  # before any request: a parent already gone ends us here
    proc.adopt_orphans()  # a plugin's forked children stay in this tree, to be ended with it
    os.dup2(2, 1)  # plugin printf()s go to stderr, never into the protocol
    sys.stdout = sys.stderr
    from . import wire

    sock = socket.socket(fileno=int(_arg(argv, "--fd") or -1))
    frame = wire.FRAME

    def send(body: bytes) -> None:
        sock.sendall(frame.pack(len(body)) + body)

    def recv() -> bytes | None:
        """The next frame's body; None when the host closed the channel.  A
        large body is received into one buffer (``wire.recv_exactly``)."""
        buf = b""
        while len(buf) < 4:
            chunk = sock.recv(65536)  # usually the whole request
            if not chunk:
                return None
            buf += chunk
        (size,) = frame.unpack_from(buf)
        if len(buf) >= 4 + size:
            return buf[4 : 4 + size]
        try:
            return buf[4:] + wire.recv_exactly(sock, 4 + size - len(buf))
        except EOFError:
            return None

    serve: Callable[[], None]
    if role == "preflight":
        from . import trial

        serve = trial.session(send, recv)
    elif role == "isolated":
        from .._artifact import signatures
        from . import serving

        signatures.warm()  # idle now: opening a plugin then parses no common type name

        shm = _arg(argv, "--shm")  # memfd,wake,done
        area = None
        if shm:
            memfd, wake, done = (int(x) for x in shm.split(","))
            area = (memfd, wake, done)
        serve = serving.session(send, recv, sock, svc_fd=int(_arg(argv, "--svc") or -1), shm=area)
    elif role == "replay":
        from . import replaying

        serve = replaying.session(send, recv)
    else:
        print(f"hotload worker: unknown role {role!r}", file=sys.stderr)
        return 2
    hello = {"sandbox": list(protections), "why": why} if "--sandbox" in argv else {}
    send(b"\x00ready" + (json.dumps(hello).encode() if hello else b""))
    serve()  # until the host closes the channel
    proc.end_descendants(1.0)  # what the plugin forked ends with it
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
