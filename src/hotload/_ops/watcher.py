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
5. **Apply.**  The plugin is the one the file's descriptor names.  Same
   bytes as its version serving: nothing to do.  Already loaded (from this
   path or another): reloaded from this file.  Not loaded: loaded.  A failure
   (a refused ``on_load``, a changed signature, a compiler error) is logged
   with its message: a running version keeps serving (``Host.reload`` only
   switches on success), and a plugin that never loaded is tried again at
   the file's next change.

With ``rebuild=True`` the watcher watches C sources: each ``*.c`` directly in
the watched directory is one plugin, and each subdirectory holding ``*.c``
files is one plugin built from all of them (``src/foo/*.c`` ->
``<out_dir>/foo.so``).  Every local header they ``#include "..."`` (found
beside the including file or in ``include_dirs`` and the SDK directory) is
watched too.  A change rebuilds the plugin with ``builder.compile_plugin``
(what ``build.py`` uses: temp file, then rename) and applies the output; a
header change rebuilds every plugin that includes it.

``isolate=True`` (or an ``Isolated(...)``, as for ``Host.load``) loads each new
plugin in its own worker process; a plugin already loaded keeps the mode it was loaded with.

All work happens on one worker thread, so builds and reloads never overlap;
watchdog's own threads only record events.  ``on_event`` receives a
:class:`WatchEvent` for every outcome (the demo's live view uses it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._artifact.builder import (
    BUILD_TIMEOUT,
    BuildError,
    compile_plugin,
    output_name,
    plugin_sources,
    plugin_units,
    sdk_include_dir,
)
from .._artifact.loader import (
    DEFAULT_MAX_PLUGIN_SIZE,
    Candidate,
    check_size,
    file_kind,
    read_source,
)
from .._errors import (
    HotloadError,
    InvalidPluginError,
    LoadError,
    NotAPluginError,
    resource_error,
)
from .._platform import dl
from .._process.options import Isolated
from .._process.options import options as isolation_options

if TYPE_CHECKING:
    from .protocols import PluginHost

log = logging.getLogger(__name__)

#: Errors a half-written file can cause; anything else (a bad descriptor, a
#: refused on_load, a changed signature) is the build's final verdict.
RETRYABLE = (InvalidPluginError, LoadError)
_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.MULTILINE)


@dataclass(frozen=True)
class WatchEvent:
    """What the watcher did about one changed path.

    ``action`` is one of ``loaded``, ``reloaded``, ``unchanged``, ``failed``
    or ``skipped`` (not a hotload plugin, or not a regular file).  ``name``
    is the plugin's, when the watcher knows it (a failed first build may not
    tell).  Times are ``time.monotonic()``: ``changed_at`` is the first event
    of the burst, ``done_at`` the moment the new version was serving (or the
    failure was final)."""

    action: str
    path: str
    name: str | None = None
    seq: int | None = None
    plugin_version: str | None = None
    error: str | None = None
    source: str | None = None
    build_seconds: float | None = None
    changed_at: float = 0.0
    done_at: float = 0.0

    @property
    def latency(self) -> float:
        return self.done_at - self.changed_at


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
        self.load_options: dict[str, Any] = {"isolate": opts} if opts is not None else {}
        self.build_timeout = build_timeout
        self._cancel = threading.Event()  # set by stop(): kills a running compiler
        self.rebuild = rebuild
        self.allow_signature_change = allow_signature_change
        self.quiet, self.settle, self.stable_interval, self.retries = (
            quiet,
            settle,
            stable_interval,
            retries,
        )
        self.max_size = max_size
        self.on_event = on_event
        self._cc = cc
        self._cflags = (
            list(cflags) if cflags is not None else shlex.split(os.environ.get("CFLAGS", ""))
        )
        self._include_dirs = [Path(d).resolve() for d in (*include_dirs, _sdk_dir())]
        target = Path(path).resolve()
        if not target.exists():
            raise HotloadError(f"{path}: cannot watch: no such file or directory")
        self.root = target if target.is_dir() else target.parent
        self._only = None if target.is_dir() else target
        suffix = ".c" if rebuild else dl.SUFFIX
        if self._only is not None and self._only.suffix != suffix:
            raise HotloadError(
                f"{path}: cannot watch: expected a {suffix} file "
                f"({'C source, rebuild=True' if rebuild else 'built plugin'})"
            )
        self.out_dir = (
            Path(out_dir).resolve() if out_dir else _default_out_dir(self.root) if rebuild else None
        )
        self._suffix = suffix
        self._units = rebuild and self._only is None  # plugin directories are plugins too
        self._headers: dict[Path, set[Path]] = {}  # header -> plugins (sources or dirs) using it
        self._applied: dict[str, str] = {}  # file -> digest this watcher last saw serving from it
        self._names: dict[str, str] = {}  # file or source -> the plugin name it last declared
        self._refused: dict[Path, str] = {}  # path -> why it was last refused unread (logged once)
        self._pending: dict[Path, _Pending] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._initial = initial
        self._observer: Any = None
        self._handler = _Handler(self)
        self._worker = threading.Thread(
            target=self._run, name=f"hotload-watch {self.root.name}", daemon=True
        )

    # -- life cycle -----------------------------------------------------------
    def start(self) -> Watcher:
        """Start watching; with ``initial``, files already there are applied
        too (a new plugin is loaded, a changed one reloaded, an unchanged one
        left alone; in rebuild mode a source newer than its output is built)."""
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
            for path in self._existing():
                self._schedule(path, 0.0, initial=True)
        log.info(
            "watching %s%s",
            self._only or self.root,
            f" (rebuilding into {self.out_dir})" if self.rebuild else "",
        )
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
        self._cancel.set()
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
        if path in self._headers:
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
        outside = {h.parent for h in self._headers if not self._covers(h.parent)}
        return [(self.root, self._units), *((d, False) for d in sorted(outside - {self.root}))]

    def _covers(self, directory: Path) -> bool:
        return directory == self.root or (self._units and directory.is_relative_to(self.root))

    def _scan_headers(self) -> None:
        """Map each local header to the plugins that include it (transitively)."""
        headers: dict[Path, set[Path]] = {}
        units = [self._only] if self._only else self._existing()
        for unit in units if self.rebuild else []:
            for header in self._includes_of(unit):
                headers.setdefault(header, set()).add(unit)
        self._headers = headers

    def _includes_of(self, unit: Path) -> set[Path]:
        found: set[Path] = set()
        for src in plugin_sources(unit):
            _includes(src, self._include_dirs, found, self.max_size)
        return found

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
                    self._process(path, item)
            except Exception:  # never let one bad file kill the watcher
                log.exception("watcher: unexpected error")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

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
            log.info("watch: %s %s; %s", path, gone, self._fate(self._names.get(str(path))))
            return
        if self._refuse_unread(path, item):
            return
        if key != item.last_stat:  # written since the last event or look: look again shortly
            item.last_stat = key
            self._requeue(path, item, self.stable_interval)
            return
        if path in self._headers:
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
        why, action = None, "skipped"
        for file in plugin_sources(path):
            try:
                st = os.stat(file)
            except OSError:
                continue  # gone meanwhile: the next look says so
            if not stat.S_ISREG(st.st_mode):
                why = f"{file}: not a regular file ({_describe(file, st)}); ignored"
                break
            try:
                check_size(str(file), st.st_size, self.max_size)
            except InvalidPluginError as exc:
                why, action = str(exc), "failed"
                break
        if why is None:
            self._refused.pop(path, None)
            return False
        if self._refused.get(path) != why:
            self._refused[path] = why
            self._emit(
                WatchEvent(
                    action,
                    str(path),
                    name=self._names.get(str(path)),
                    error=why,
                    changed_at=item.changed_at,
                    done_at=time.monotonic(),
                )
            )
        return True

    def _header_changed(self, header: Path, item: _Pending) -> None:
        units = sorted(self._headers.get(header, ()))
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
        assert self.out_dir is not None
        output = self.out_dir / output_name(unit, dl.SUFFIX)
        sources = plugin_sources(unit)
        if item.initial and _up_to_date(sources, output):
            self._apply(output, item, source=unit)  # start-up scan: the build is current
            return
        started = time.monotonic()
        try:
            self._check_no_twin(unit, output)
            compile_plugin(
                unit,
                output,
                cc=self._cc,
                extra_cflags=self._cflags,
                timeout=self.build_timeout,
                cancel=self._cancel,
            )
        except BuildError as exc:
            self._emit(
                WatchEvent(
                    "failed",
                    str(unit),
                    name=self._names.get(str(unit)),
                    error=str(exc),
                    source=str(unit),
                    build_seconds=time.monotonic() - started,
                    changed_at=item.changed_at,
                    done_at=time.monotonic(),
                )
            )
            return
        built = time.monotonic() - started
        self._scan_headers_for(unit)
        self._apply(output, item, source=unit, build_seconds=built)

    def _check_no_twin(self, unit: Path, output: Path) -> None:
        """``foo.c`` and ``foo/`` would both build ``foo.so``: refuse to guess."""
        twin = unit.with_suffix("") if unit.suffix == ".c" else unit.with_name(unit.name + ".c")
        if self._units and twin in plugin_units(self.root):
            raise BuildError(
                f"{unit}: {twin.name} would build the same {output.name}; rename one of them"
            )

    def _scan_headers_for(self, unit: Path) -> None:
        """A source edit may add an #include: watch the new header too."""
        new = [h for h in self._includes_of(unit) if unit not in self._headers.get(h, ())]
        for header in new:
            self._headers.setdefault(header, set()).add(unit)
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
    ) -> None:
        common = {
            "path": str(path),
            "source": str(source) if source else None,
            "build_seconds": build_seconds,
            "changed_at": item.changed_at,
        }
        try:
            event = self._load_or_reload(path, common)
        except FileNotFoundError:
            log.info("watch: %s vanished before it could be loaded", path)
            return
        except RETRYABLE as exc:
            if not path.exists():
                log.info("watch: %s vanished before it could be loaded", path)
                return
            # Our own builds are renamed into place whole: only a file someone
            # else writes can be caught half-written.
            if source is None and item.attempts < self.retries:
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
                return
            tail = f" (gave up after {item.attempts} retries)" if item.attempts else ""
            event = self._failed(path, source, f"{exc}{tail}", common)
        except (HotloadError, OSError) as exc:
            event = self._failed(path, source, str(exc), common)
        self._emit(event)

    def _failed(
        self, path: Path, source: Path | None, error: str, common: dict[str, Any]
    ) -> WatchEvent:
        name = self._names.get(str(path)) or (source and self._names.get(str(source)))
        return WatchEvent(
            "failed", name=name or None, error=error, done_at=time.monotonic(), **common
        )

    def _read(self, path: Path) -> Candidate | None:
        """The watcher's one read of a plugin file: the host reads and checks
        it (trust rules, the size cap, a non-blocking open of regular files
        only, the format) and the very bytes it checked are what is loaded.
        None for a library that is not a hotload plugin."""
        check_size(str(path), path.stat().st_size, self.max_size)  # the watcher's own cap too
        try:
            return self.host.read(path)
        except NotAPluginError:
            return None

    def _load_or_reload(self, path: Path, common: dict[str, Any]) -> WatchEvent:
        """Check the file's bytes, then load, reload or leave alone its plugin."""
        cand = self._read(path)
        if cand is None:
            return WatchEvent(
                "skipped",
                error=f"{path}: not a hotload plugin (no .hotload descriptor); ignored",
                done_at=time.monotonic(),
                **common,
            )
        name, digest = cand.name, cand.digest
        self._names[str(path)] = name
        if common["source"]:
            self._names[common["source"]] = name
        if self._serving(name, str(path), digest):
            return WatchEvent("unchanged", name=name, done_at=time.monotonic(), **common)
        if name in self.host:
            info = self.host.reload(name, cand, allow_signature_change=self.allow_signature_change)
            action = "reloaded"
        else:
            self.host.load(cand, **self.load_options)
            action, info = "loaded", self.host.versions(name)[-1]
        self._applied[str(path)] = digest
        return WatchEvent(
            action,
            name=name,
            seq=info.seq,
            plugin_version=info.plugin_version,
            done_at=time.monotonic(),
            **common,
        )

    def _serving(self, name: str, path: str, digest: str) -> bool:
        """True when ``name``'s current version already has these bytes.

        The watcher's own record answers the common case without asking the
        host (whose ``versions()`` also inspects images); a match is confirmed
        with the host, since someone else may have reloaded it since."""
        if name not in self.host:
            return False
        if self._applied.get(path) not in (None, digest):
            return False
        current = self.host.current(name)
        return current is not None and current.digest == digest

    def _fate(self, name: str | None) -> str:
        """What a failure means for the plugin: only a plugin that runs keeps serving."""
        if name is not None and name in self.host:
            return f"not swapped, the running version of {name} keeps serving"
        if name is not None:
            return (
                f"{name} was not loaded (no version of it runs); "
                "the watcher retries on the next change"
            )
        return (
            "nothing was loaded from it (a version already running, if any, keeps serving); "
            "the watcher retries on the next change"
        )

    def _emit(self, event: WatchEvent) -> None:
        where = event.source or event.path
        if event.action == "failed":
            log.error("watch: %s: %s:\n%s", where, self._fate(event.name), event.error)
        elif event.action == "skipped":
            log.warning("watch: %s", event.error)
        elif event.action == "unchanged":
            log.debug("watch: %s: same bytes as the version serving; nothing to do", where)
        else:
            log.info(
                "watch: %s %s v%s (%s) from %s in %.1f ms",
                event.action,
                event.name,
                event.seq,
                event.plugin_version,
                where,
                event.latency * 1e3,
            )
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("watch: on_event callback failed")

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


def _includes(
    source: Path,
    include_dirs: list[Path],
    seen: set[Path] | None = None,
    max_size: int = DEFAULT_MAX_PLUGIN_SIZE,
) -> set[Path]:
    """Local headers ``source`` includes, transitively; system headers
    (not found beside the file or in ``include_dirs``) are left out.  Files
    are read with the hardened reader: a FIFO or device named like a source
    must not hang or flood the watcher."""
    seen = set() if seen is None else seen
    try:
        text = read_source(str(source), max_size=max_size).decode(errors="replace")
    except InvalidPluginError:
        return seen
    for quote, name in _INCLUDE.findall(text):
        dirs = ([source.parent] if quote == '"' else []) + include_dirs
        for directory in dirs:
            candidate = (directory / name).resolve()
            if candidate.is_file():
                if candidate not in seen:
                    seen.add(candidate)
                    _includes(candidate, include_dirs, seen, max_size)
                break
    return seen


def _sdk_dir() -> Path:
    try:
        return sdk_include_dir()
    except BuildError:
        return Path(__file__).resolve().parents[1] / "sdk" / "include"


def _default_out_dir(src_dir: Path) -> Path:
    """``native/plugins`` builds into ``build/plugins`` beside it, as
    ``build.py`` does; any other source directory into ``<dir>/build``."""
    if src_dir.parts[-2:] == ("native", "plugins"):
        return src_dir.parent.parent / "build" / "plugins"
    return src_dir / "build"


def _up_to_date(sources: list[Path], output: Path) -> bool:
    try:
        built = output.stat().st_mtime_ns
        return bool(sources) and all(built >= src.stat().st_mtime_ns for src in sources)
    except OSError:
        return False


__all__ = ["RETRYABLE", "WatchEvent", "Watcher"]
