"""Watch plugin files, or their C sources, and hot-swap each one that changes.

    host.watch("build/plugins")                  # built libraries: reload on change
    host.watch("native/plugins", rebuild=True)   # C sources: rebuild, then reload

A file system event says *when to look*, never that a file is ready: a
compiler or ``cp`` may still be writing, and glibc can die with SIGBUS on a
truncated library.  So each changed path goes through the same steps:

1. **Debounce.**  Every event moves the path's deadline.  An event that ends a
   write (inotify's close-after-write, or a rename into place) waits only
   ``quiet`` (10 ms); one that is a write in progress (create, modify) waits
   ``settle`` (150 ms), so a burst of writes costs one look.
2. **Regular.**  Only a regular file no larger than ``max_size`` is ever
   opened.  A FIFO would block the watcher's one thread, and a device (a
   symlink to ``/dev/zero``) or a sparse file would be read until the host
   runs out of memory; such a path is reported once and left alone.
3. **Stable.**  The file's size, mtime and inode must be the same at the
   last event and at the deadline (and then ``stable_interval`` apart, if
   they were not); otherwise it is still moving and goes back to 1.
4. **Complete.**  The bytes, read once through ``_loader.read_source``, must
   pass the pre-``dlopen`` binary check (``elfcheck`` / ``pecheck``).  A file
   that fails it, or a load that fails the way a partial file does
   (``InvalidPluginError``, ``LoadError``), is retried with a growing delay,
   ``retries`` times, before the watcher gives up and logs the loader's
   message.
5. **Apply** (``apply.Applier``).  The plugin is the one the file's
   descriptor names: loaded, reloaded from this file, or left alone when its
   bytes already serve.  A failure is logged with its message; a running
   version keeps serving.

With ``rebuild=True`` the watcher watches C sources (``rebuild.Rebuilder``):
each ``*.c`` in the directory, or directory of them, is one plugin, rebuilt
when it or a local header it includes changes, and its output applied.  The
compiler writes a hidden staging file; only a build that serves is renamed
into place as the output, a refused one is kept as ``foo.so.refused``.

``isolate=True`` (or an ``Isolated(...)``, as for ``Host.load``) loads each new
plugin in its own worker process; a plugin already loaded keeps the mode it was loaded with.

All work happens on one worker thread, so builds and reloads never overlap;
watchdog's own threads only record events.  ``on_event`` receives a
:class:`WatchEvent` for every outcome (the demo's live view uses it).

``start()`` returns at once; what was already there (the start-up pass) is
applied on that thread, which for a build takes the compiler's time.
``ready`` and ``wait()`` tell when the pass is done, and ``start(wait=...)``
(``Host.watch(..., wait=True)``) returns only then, or stops and raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._artifact.builder import BUILD_TIMEOUT, BuildError, plugin_sources, plugin_units
from .._artifact.loader import DEFAULT_MAX_PLUGIN_SIZE, check_size, file_kind
from .._engine.journal import origin
from .._errors import HotloadError, InvalidPluginError, resource_error
from .._platform import dl
from .._process.options import Isolated
from .._process.options import options as isolation_options
from .apply import RETRYABLE, Applier, WatchEvent
from .rebuild import Rebuilder, default_out_dir
from .startup import StartupPass, wait_timeout

if TYPE_CHECKING:
    from .protocols import PluginHost

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """One path waiting for its deadline."""

    deadline: float
    changed_at: float
    attempts: int = 0
    last_stat: object = None  # _stat_key() at the last event or look
    initial: bool = False  # found by the start-up scan, not by an event


class Watcher:
    """Watches a directory (or one file) and keeps ``host`` serving the
    newest good build of each plugin in it.  Use ``Host.watch`` to make one;
    ``stop()`` (or ``Host.close()``) ends it.

    ``path``
        A directory, or one file in it.  Built plugins (``*.so``) are watched;
        with ``rebuild=True``, C sources: ``dir/foo.c`` is plugin ``foo``, and
        so is a directory ``dir/foo/`` of ``*.c`` files built together, with
        every local header they include.  Watch the directory holding the
        plugin directories, not a plugin directory itself.
    ``rebuild``
        Watch sources and rebuild a plugin when it or a header it includes
        changes, then load or reload the output.
    ``out_dir``
        Where rebuilt plugins go: ``<out_dir>/foo.so``.  Default: for
        ``.../native/plugins``, ``.../build/plugins`` (where ``build.py`` puts
        them); for any other directory, its subdirectory ``build/``.
    ``build_timeout``
        Seconds one build may take (default 120, ``builder.BUILD_TIMEOUT``);
        a compiler still running then is killed, with every process it
        started, and the build fails.  ``stop()`` kills a running build too.
    ``cc``, ``cflags``
        The compiler command (default ``$CC``, else ``cc``) and flags added
        after the SDK's (``-std=c11 -fPIC -shared -Wall -Wextra -I<sdk>``;
        default ``$CFLAGS``).
    ``include_dirs``
        More directories where ``#include`` finds headers to watch (the SDK's
        is always searched; system headers are not watched).
    ``max_size``
        The largest file the watcher reads, in bytes (default 256 MiB,
        ``_loader.DEFAULT_MAX_PLUGIN_SIZE``): a larger file is refused
        unread.  It should match the host's ``max_plugin_size``.
    ``quiet``, ``settle``, ``stable_interval``
        Debounce (seconds): after an event that ends a write (close, rename
        into place), after one that starts or continues a write, and between
        two looks at a file that was still changing.
    ``retries``
        How often a file that looks half-written is looked at again (with a
        doubling delay from ``settle``) before the watcher gives up on it
        until its next change.
    ``initial``
        At start, apply what is already there: load new plugins, reload
        changed ones, and in rebuild mode build sources newer than their
        output.
    ``on_event``
        Called on the watcher's thread with a :class:`WatchEvent` for every
        outcome.
    ``allow_signature_change``
        Reload a build that removes an export or changes a prototype (passed
        to ``Host.reload``); by default such a build is refused (a ``failed``
        event) and the running version keeps serving.
    """

    def __init__(
        self,
        host: PluginHost,
        path: str | os.PathLike[str],
        *,
        rebuild: bool = False,
        out_dir: str | os.PathLike[str] | None = None,
        include_dirs: Iterable[str | os.PathLike[str]] = (),
        on_event: Callable[[WatchEvent], Any] | None = None,
        quiet: float = 0.01,
        settle: float = 0.15,
        stable_interval: float = 0.005,
        retries: int = 5,
        initial: bool = True,
        cc: str | None = None,
        cflags: Iterable[str] | None = None,
        max_size: int = DEFAULT_MAX_PLUGIN_SIZE,
        build_timeout: float = BUILD_TIMEOUT,
        allow_signature_change: bool = False,
        isolate: bool | Isolated = False,
    ) -> None:
        self.host = host
        # How a plugin the watcher loads first runs (``Host.load``'s options);
        # its reloads keep the mode it was loaded with.
        opts = isolation_options(isolate)  # a bad option fails here, not at the first load
        self.rebuild = rebuild
        self.quiet, self.settle, self.stable_interval, self.retries = (
            quiet,
            settle,
            stable_interval,
            retries,
        )
        self.max_size = max_size
        self._applier = Applier(
            host,
            load_options={"isolate": opts} if opts is not None else {},
            allow_signature_change=allow_signature_change,
            max_size=max_size,
            on_event=self._on_event,
        )
        self._user_on_event = on_event
        self.root, self._only, self._suffix = _watched(path, rebuild)
        self.out_dir = (
            Path(out_dir).resolve() if out_dir else default_out_dir(self.root) if rebuild else None
        )
        self._units = rebuild and self._only is None  # plugin directories are plugins too
        self._rebuilder = Rebuilder(
            self.root,
            out_dir=self.out_dir,
            units=self._units,
            include_dirs=include_dirs,
            cc=cc,
            cflags=cflags,
            build_timeout=build_timeout,
            max_size=max_size,
        )
        self._refused: dict[Path, str] = {}  # path -> why it was last refused unread (logged once)
        self._pending: dict[Path, _Pending] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._initial = initial
        self._startup = StartupPass(str(self._only or self.root))  # ready, wait
        self._observer: Any = None
        self._handler = _Handler(self)
        self._worker = threading.Thread(
            target=self._run, name=f"hotload-watch {self.root.name}", daemon=True
        )

    # -- life cycle -----------------------------------------------------------
    def start(self, *, wait: bool | float = False) -> Watcher:
        """Start watching; with ``initial``, files already there are applied
        too (a new plugin is loaded, a changed one reloaded, an unchanged one
        left alone; in rebuild mode a source newer than its output is built).

        ``wait``: return only once that start-up pass is done (True: however
        long it takes, each build bounded by ``build_timeout``; a number: at
        most that many seconds).  If a start-up file failed, or the time ran
        out, the watcher is stopped and ``HotloadError`` names the files and
        why.  False: return at once (``ready`` and ``wait()`` tell later)."""
        timeout = wait_timeout(wait)
        try:
            self._scan_headers()
            self._observer = _start_observer(self._dirs(), self._handler)
        except OSError as exc:  # EMFILE listing it, or no inotify instance left
            self.stop()
            error = resource_error(exc, f"{self._only or self.root}: cannot watch")
            if error is None:
                raise
            raise error from None
        self._worker.start()
        if self._initial:
            found = self._existing()
            self._startup.expect(found)
            for path in found:
                self._schedule(path, 0.0, initial=True)
        log.info(
            "watching %s%s",
            self._only or self.root,
            f" (rebuilding into {self.out_dir})" if self.rebuild else "",
        )
        if wait is not False:
            self._started(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching.  A reload already running finishes first; a build
        running is killed."""
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer.stop()
                self._observer.join(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._startup.stop()
        self._rebuilder.cancel.set()
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _started(self, timeout: float | None) -> None:
        """``start(wait=...)``: the start-up pass applied, or stop and raise."""
        try:
            self._startup.check(self._startup.wait(timeout))
        except BaseException:
            self.stop()
            raise

    @property
    def ready(self) -> bool:
        """True once the start-up pass is done: each file found at start
        applied (loaded, reloaded, unchanged, failed or skipped)."""
        return self._startup.ready

    def wait(self, timeout: float | None = None) -> list[WatchEvent]:
        """Wait for the start-up pass and return its outcomes, a
        :class:`WatchEvent` per file found at start (one gone meanwhile has
        none), in the order they were applied.  ``HotloadError`` when
        ``timeout`` seconds pass first or the watcher stops, naming the files
        not applied yet."""
        return self._startup.wait(timeout)

    def _on_event(self, event: WatchEvent) -> None:
        self._startup.record(event)
        if self._user_on_event is not None:
            self._user_on_event(event)

    def idle(self, timeout: float = 5.0) -> bool:
        """Wait until nothing is pending or running; True if it got there."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    # -- what to watch ----------------------------------------------------------
    def _target(self, path: Path, *, is_dir: bool = False) -> Path | None:
        """What a changed path stands for: itself (a plugin file, a source, a
        header), the plugin directory it belongs to, or None (not ours)."""
        if path.name.startswith("."):  # builder temp files, editor swap files
            return None
        if path in self._rebuilder.headers:
            return path
        if self._only is not None:
            return path if path == self._only else None
        if is_dir:
            return path if self._units and self._is_unit_dir(path) else None
        if path.suffix != self._suffix:
            return None
        if path.parent == self.root:
            return path
        return path.parent if self._units and self._is_unit_dir(path.parent) else None

    def _is_unit_dir(self, directory: Path) -> bool:
        return (
            directory.parent == self.root
            and not directory.name.startswith(".")
            and directory != self.out_dir
        )

    def _existing(self) -> list[Path]:
        if self._only is not None:
            return [self._only] if self._only.exists() else []
        if self._units:
            units = plugin_units(self.root, exclude=[self.out_dir] if self.out_dir else [])
            odd = [p for p in self.root.glob("*.c") if self._target(p) == p and not p.is_file()]
            return sorted({*units, *(p for p in odd if not p.is_dir())})  # odd: reported once
        return sorted(p for p in self.root.glob(f"*{self._suffix}") if self._target(p) == p)

    def _dirs(self) -> list[tuple[Path, bool]]:
        """(directory, recursive) pairs to watch.  In rebuild mode the root
        is watched recursively, so files in plugin directories (including
        ones created later) are seen; the depth is filtered by ``_target``."""
        outside = {h.parent for h in self._rebuilder.headers if not self._covers(h.parent)}
        return [(self.root, self._units), *((d, False) for d in sorted(outside - {self.root}))]

    def _covers(self, directory: Path) -> bool:
        return directory == self.root or (self._units and directory.is_relative_to(self.root))

    def _scan_headers(self) -> None:
        """Map each local header to the plugins that include it (transitively)."""
        units = [self._only] if self._only else self._existing()
        self._rebuilder.scan(units if self.rebuild else [])

    # -- events (watchdog's thread) ------------------------------------------------
    def _event(self, kind: str, raw: str | bytes, *, is_dir: bool = False) -> None:
        if is_dir and kind not in ("created", "moved"):  # only a plugin directory appearing
            return
        path = Path(os.fsdecode(raw))
        if not path.is_absolute():
            path = path.resolve()
        target = self._target(path, is_dir=is_dir)
        if target is None:
            return
        ends_write = kind in ("closed", "moved", "deleted")
        self._schedule(target, self.quiet if ends_write else self.settle)

    def _schedule(self, path: Path, delay: float, *, initial: bool = False) -> None:
        """(Re)arm ``path``'s deadline.  The file's identity is noted now, so
        the look at the deadline can tell whether it moved in between: the
        debounce wait doubles as the stability interval (one wake-up, not two,
        which matters when busy threads make every wake-up wait for the GIL)."""
        key = _stat_key(path)
        now = time.monotonic()
        with self._cond:
            item = self._pending.get(path)
            if item is None:
                item = self._pending[path] = _Pending(now + delay, now)
            else:
                item.deadline, item.attempts = now + delay, 0
            item.last_stat, item.initial = key, initial
            self._cond.notify_all()

    # -- the worker --------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._wait_for_due()
                if due is None:
                    return
                self._busy = True
            try:
                for path, item in due:
                    self._process_one(path, item)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _process_one(self, path: Path, item: _Pending) -> None:
        self._startup.applying(path)
        try:
            with origin("startup" if item.initial else "watcher"):
                self._process(path, item)
        except Exception:  # never let one bad file kill the watcher, nor the others due
            log.exception("watcher: unexpected error")
        finally:
            with self._cond:
                again = path in self._pending  # a retry, or changed since: not applied yet
            self._startup.applied(path, again=again)

    def _wait_for_due(self) -> list[tuple[Path, _Pending]] | None:
        """Block (holding the condition) until some path is due; None on stop."""
        while not self._stopping:
            now = time.monotonic()
            due = [(p, i) for p, i in self._pending.items() if i.deadline <= now]
            if due:
                for path, _ in due:
                    del self._pending[path]
                return due
            nearest = min((i.deadline for i in self._pending.values()), default=None)
            self._cond.wait(None if nearest is None else max(nearest - now, 0.0))
        return None

    def _requeue(self, path: Path, item: _Pending, delay: float) -> None:
        with self._cond:
            newer = self._pending.get(path)
            if newer is None:  # a fresh event since we took it wins
                item.deadline = time.monotonic() + delay
                self._pending[path] = item
                self._cond.notify_all()

    def _process(self, path: Path, item: _Pending) -> None:
        key = _stat_key(path)
        if key is None or key == ():
            gone = "is gone" if key is None else "has no .c files left"
            name = self._applier.names.get(str(path))
            log.info("watch: %s %s; %s", path, gone, self._applier.fate(name))
            return
        if self._refuse_unread(path, item):
            return
        if key != item.last_stat:  # written since the last event or look: look again shortly
            item.last_stat = key
            self._requeue(path, item, self.stable_interval)
            return
        if path in self._rebuilder.headers:
            self._header_changed(path, item)
        elif self.rebuild:
            self._build_and_apply(path, item)
        else:
            self._apply(path, item)

    def _refuse_unread(self, path: Path, item: _Pending) -> bool:
        """Refuse, without opening them, files no reader should touch: not a
        regular file (a FIFO would block this thread, a device such as
        ``/dev/zero`` never ends) or over ``max_size``.  Each refusal is
        reported once, not at every event the file causes."""
        why, action = self._why_refused(path)
        if why is None:
            self._refused.pop(path, None)
            return False
        if self._refused.get(path) != why:
            self._refused[path] = why
            self._applier.emit(
                WatchEvent(
                    action,
                    str(path),
                    name=self._applier.names.get(str(path)),
                    error=why,
                    changed_at=item.changed_at,
                    done_at=time.monotonic(),
                )
            )
        return True

    def _why_refused(self, path: Path) -> tuple[str | None, str]:
        """Why ``path`` (or a source of its plugin) must stay unread, and as
        what it is reported; None when it may be read."""
        for file in plugin_sources(path):
            try:
                st = os.stat(file)
            except OSError:
                continue  # gone meanwhile: the next look says so
            if not stat.S_ISREG(st.st_mode):
                return f"{file}: not a regular file ({_describe(file, st)}); ignored", "skipped"
            try:
                check_size(str(file), st.st_size, self.max_size)
            except InvalidPluginError as exc:
                return str(exc), "failed"
        return None, "skipped"

    def _header_changed(self, header: Path, item: _Pending) -> None:
        units = self._rebuilder.users_of(header)
        log.info(
            "watch: %s changed; rebuilding %s",
            header.name,
            ", ".join(u.name for u in units) or "nothing",
        )
        for unit in units:
            self._build_and_apply(unit, _Pending(0.0, item.changed_at))

    # -- rebuild mode -------------------------------------------------------------
    def _build_and_apply(self, unit: Path, item: _Pending) -> None:
        """Build one plugin (a ``.c`` file or a plugin directory), then apply it."""
        if item.initial and self._rebuilder.is_current(unit):
            output = self._rebuilder.output_of(unit)
            self._apply(output, item, source=unit)  # start-up scan: the build is current
            return
        started = time.monotonic()
        try:
            staged = self._rebuilder.build(unit)
        except BuildError as exc:
            self._build_failed(unit, item, exc, started)
            return
        built = time.monotonic() - started
        self._watch_new_headers(unit)
        try:
            output = self._rebuilder.output_of(unit)
            self._apply(output, item, source=unit, build_seconds=built, staged=staged)
        finally:
            staged.unlink(missing_ok=True)  # neither installed nor set aside: gone

    def _build_failed(self, unit: Path, item: _Pending, exc: BuildError, started: float) -> None:
        self._applier.emit(
            WatchEvent(
                "failed",
                str(unit),
                name=self._applier.names.get(str(unit)),
                error=str(exc),
                source=str(unit),
                build_seconds=time.monotonic() - started,
                changed_at=item.changed_at,
                done_at=time.monotonic(),
            )
        )

    def _watch_new_headers(self, unit: Path) -> None:
        """A source edit may add an #include: watch the new header too."""
        new = self._rebuilder.note_includes(unit)
        dirs = {h.parent for h in new if not self._covers(h.parent)} - set(self._dirs_watched())
        for directory in dirs:
            with contextlib.suppress(Exception):
                self._observer.schedule(self._handler, str(directory))

    def _dirs_watched(self) -> list[Path]:
        watches = getattr(self._observer, "emitters", ())
        return [Path(e.watch.path) for e in watches]

    # -- applying a built file ------------------------------------------------------
    def _apply(
        self,
        path: Path,
        item: _Pending,
        *,
        source: Path | None = None,
        build_seconds: float | None = None,
        staged: Path | None = None,
    ) -> None:
        common = {
            "path": str(path),
            "source": str(source) if source else None,
            "build_seconds": build_seconds,
            "changed_at": item.changed_at,
        }
        try:
            event = self._applier.load_or_reload(path, common, staged=staged)
        except FileNotFoundError:
            log.info("watch: %s vanished before it could be loaded", staged or path)
            return
        except RETRYABLE as exc:
            if not (staged or path).exists():
                log.info("watch: %s vanished before it could be loaded", path)
                return
            # Our own builds are renamed into place whole: only a file someone
            # else writes can be caught half-written.
            if source is None and item.attempts < self.retries:
                self._retry(path, item, exc)
                return
            tail = f" (gave up after {item.attempts} retries)" if item.attempts else ""
            event = self._applier.failed(path, source, f"{exc}{tail}", common, exc)
        except (HotloadError, OSError) as exc:
            event = self._applier.failed(path, source, str(exc), common, exc)
        if staged is not None and source is not None:  # only a build that serves is the output
            serves = event.action in ("loaded", "reloaded", "unchanged")
            kept = self._rebuilder.place(source, staged, serves=serves)
            event = dataclasses.replace(event, kept_as=str(kept)) if kept else event
        self._applier.emit(event)

    def _retry(self, path: Path, item: _Pending, exc: Exception) -> None:
        """Look at a file that seems half-written again, ``settle`` later and
        twice as long each time."""
        item.attempts += 1
        delay = self.settle * 2 ** (item.attempts - 1)
        log.debug(
            "watch: %s not loadable yet (%s); retry %d/%d in %.0f ms",
            path,
            exc,
            item.attempts,
            self.retries,
            delay * 1e3,
        )
        self._requeue(path, item, delay)

    def __repr__(self) -> str:
        mode = "sources" if self.rebuild else "plugins"
        return f"<hotload.Watcher {mode} in {self._only or self.root}>"


class _Handler:
    """watchdog event handler: forwards the kinds that can mean new bytes.

    Opens and read-only closes (the loader reading a file) are ignored, so
    loading never triggers another look.  Directory events matter only in
    rebuild mode (a plugin directory moved into place)."""

    _KINDS = frozenset({"created", "modified", "closed", "moved", "deleted"})

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        if kind not in self._KINDS:
            return
        path = event.dest_path if kind == "moved" else event.src_path
        if path:  # an unpaired move out of the directory has no destination
            self.watcher._event(kind, path, is_dir=event.is_directory)


def _start_observer(dirs: list[tuple[Path, bool]], handler: _Handler) -> Any:
    """One watchdog observer watching ``dirs``.

    On Linux, ``generate_full_events`` reports a rename from outside the
    directory as a move (a finished file), not as a create (a write just
    starting), which saves the ``settle`` wait."""
    from watchdog.observers import Observer

    try:
        observer = Observer(generate_full_events=True)  # type: ignore[call-arg]
    except TypeError:
        observer = Observer()
    for directory, recursive in dirs:
        observer.schedule(handler, str(directory), recursive=recursive)  # type: ignore[arg-type]
    observer.daemon = True
    observer.start()
    return observer


def _stat_key(path: Path) -> object:
    """A file's identity (size, mtime, inode), None when it is gone.  A plugin
    directory's is the tuple of its sources' (empty when it has none)."""
    try:
        if path.is_dir():
            return tuple((p.name, _stat_key(p)) for p in plugin_sources(path))
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _describe(path: Path, st: os.stat_result) -> str:
    kind = file_kind(st)
    if path.is_symlink():
        with contextlib.suppress(OSError):
            return f"a symlink to {os.readlink(path)}, {kind}"
    return kind


def _watched(path: str | os.PathLike[str], rebuild: bool) -> tuple[Path, Path | None, str]:
    """The directory to watch, the one file in it to watch (None: every
    plugin in it), and the suffix of what is watched."""
    target = Path(path).resolve()
    if not target.exists():
        raise HotloadError(f"{path}: cannot watch: no such file or directory")
    root = target if target.is_dir() else target.parent
    only = None if target.is_dir() else target
    suffix = ".c" if rebuild else dl.SUFFIX
    if only is not None and only.suffix != suffix:
        raise HotloadError(
            f"{path}: cannot watch: expected a {suffix} file "
            f"({'C source, rebuild=True' if rebuild else 'built plugin'})"
        )
    return root, only, suffix


__all__ = ["Watcher"]
