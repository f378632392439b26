"""The worker process contract: what ``_process`` needs from the OS to run a
worker (preflight or isolated), copy a plugin's state blob safely, tie the
worker's life to its host, end its process tree, and apply its limits.

``_proc_posix`` and ``_proc_windows`` are modules that satisfy
``WorkerProcess``; ``_platform`` picks one as ``proc``.
"""

from __future__ import annotations

from typing import Any, Protocol


class WorkerProcess(Protocol):
    @property
    def WORKERS(self) -> bool:  # noqa: N802 - a module constant in both implementations
        """Whether worker processes (preflight, isolation) run on this OS."""
        ...

    def read_memory(self, address: int, size: int) -> bytes:
        """A copy of ``size`` bytes at ``address`` in this process, or ``OSError``
        (EFAULT) when any of them cannot be read: never a crash."""
        ...

    def write_memory(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to ``address`` in this process, or ``OSError`` (EFAULT)
        when any byte of the range cannot be written (a read-only page): never
        a crash."""
        ...

    def die_with_parent(self, parent_pid: int) -> None:
        """Called first thing in a worker: end this process when ``parent_pid``
        ends, even while the main thread is stuck inside plugin code; exit at
        once if it has already ended."""
        ...

    def parent_gone(self, parent_pid: int) -> bool:
        """Whether ``parent_pid`` (this process's parent) has ended."""
        ...

    def stopped(self, pid: int) -> bool:
        """Whether the process ``pid`` is stopped by a signal (SIGSTOP, job
        control, a tracer): it cannot make progress until someone resumes it."""
        ...

    def exit_signal(self, returncode: int) -> str | None:
        """The name of the signal that ended a child with ``returncode``
        (``Popen.returncode``), None when it exited normally."""
        ...

    def spawn_options(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments for a worker (its own session,
        so a Ctrl-C meant for the host's terminal does not hit it mid-check)."""
        ...

    def adopt_orphans(self) -> None:
        """In a worker: become the reaper of every orphan among its
        descendants (a plugin's double-forked daemon stays in its tree)."""
        ...

    def descendants(self, pid: int) -> dict[int, int]:
        """Every live descendant of ``pid``: pid -> start time (a pid reused
        later has another start time, so a remembered one is never the
        wrong process)."""
        ...

    def kill_tree(self, pid: int, known: dict[int, int], *, walk: bool) -> None:
        """SIGKILL the process group ``pid`` leads (the worker and the
        children that stayed in it), the processes in ``known`` that still
        have the same start time, and (``walk``: ``pid`` not reaped yet)
        every descendant found now."""
        ...

    def end_descendants(self, timeout: float) -> int:
        """In a worker about to exit: kill and reap every descendant (the
        plugin's forked children); how many there were."""
        ...

    def sized_memfd(self, name: str, size: int) -> int:
        """A memfd of ``size`` bytes whose size is sealed for good (shrink,
        grow, and the seals themselves): a worker that truncated the call
        channel's area made the host's next access die of SIGBUS."""
        ...

    def poller(self, *fds: int) -> Any:
        """A poll object watching ``fds`` for input: ``poll(ms)`` returns the
        ``(fd, events)`` pairs ready (the shared-memory channel's doorbells and
        its socket).  ``NotImplementedError`` where isolation is not built."""
        ...

    def apply_limits(self, limits: dict[str, int]) -> None:
        """In a worker, before any plugin code: the kernel's limits on it
        (``address_space`` and ``cpu_seconds`` as rlimits, ``nice``)."""
        ...

    def trim_heap(self) -> bool:
        """Give the free pages of the C heap back to the OS (glibc's
        ``malloc_trim(0)``): freed memory stays resident otherwise, and each
        worker's threads and buffers dirty a little more of it.  False where
        there is no such call (musl, Windows)."""
        ...

    def fd_usage(self) -> tuple[int, int] | None:
        """``(open, limit)``: how many file descriptors this process has open
        and its soft ``RLIMIT_NOFILE``; None when there is no limit or the
        count cannot be had.  The control server sizes its sessions by it."""
        ...

    def sandbox(self, host_pid: int) -> tuple[tuple[str, ...], str]:
        """In a worker, first thing (one thread, its modules imported): put
        this process in a sandbox; returns in the process that serves (it may
        not be this one: the sandbox may fork), with the protections in force
        and why the strongest ones are missing (empty when they are all
        there).  See ``_sandbox_linux``."""
        ...

    def fork_ready(self, *, sandbox: bool) -> str:
        """In the worker zygote (one thread, its modules imported): "" when
        ``fork_sibling`` works here, else why not (the zygote is then not
        used); ``sandbox``: what every sandbox of its workers would compute
        alike is computed now, once."""
        ...

    def fork_sibling(self) -> int:
        """Fork a child whose parent is this process's parent (the host), not
        this process: 0 in the child, its pid here.  ``_sibling_linux``."""
        ...

    def set_cmdline(self, args: list[str]) -> bool:
        """Make this process's command line, as others read it, ``args`` (a
        worker forked by the zygote shows its own); False when it cannot."""
        ...

    def die_with_parent_signal(self, parent_pid: int) -> None:
        """``die_with_parent`` without its watchdog thread, for a process that
        must stay single-threaded (the zygote, which also watches its
        channel's end of file)."""
        ...

    def worker_pid(self, pid: int) -> int:
        """The process that runs plugin code in the worker ``pid`` (the
        process the host started) leads: ``pid`` itself, or the one a
        sandbox forked below it."""
        ...

    def in_worker(self, pid: int) -> bool:
        """Whether the process ``pid`` runs inside a hotload worker (it or an
        ancestor is one): a plugin's process, which may not control a host."""
        ...

    def start_time(self, pid: int) -> int | None:
        """When ``pid`` started (clock ticks), None if it is gone or a zombie."""
        ...

    def wait_gone(self, pid: int, start: int | None, timeout: float) -> bool:
        """Wait until the process ``pid`` that started at ``start`` is no more
        (not even a zombie); whether it went within ``timeout``."""
        ...

    def wait_exit(self, popen: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` for the child ``popen`` (a ``subprocess.Popen``)
        to end, and reap it; whether it ended.  Woken by its end where the
        system can (a pidfd on Linux), not by polling with sleeps."""
        ...
