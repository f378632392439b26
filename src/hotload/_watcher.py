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
2. **Stable.**  The file's size, mtime and inode must be the same at the
   last event and at the deadline (and then ``stable_interval`` apart, if
   they were not); otherwise it is still moving and goes back to 1.
3. **Complete.**  The bytes must pass the pre-``dlopen`` binary check
   (``elfcheck`` / ``pecheck``).  A file that fails it, or a load that fails
   the way a partial file does (``InvalidPluginError``, ``LoadError``), is
   retried with a growing delay, ``retries`` times, before the watcher gives
   up and logs the loader's message.
4. **Apply.**  The plugin is the one the file's descriptor names.  Same
   bytes as its version serving: nothing to do.  Already loaded (from this
   path or another): reloaded from this file.  Not loaded: loaded.  A failure
   (a refused ``on_load``, a changed signature, a compiler error) is logged
   with its message, and the running version keeps serving: ``Host.reload``
   only switches on success.

With ``rebuild=True`` the watcher watches ``*.c`` files and every header they
include (found by scanning ``#include`` lines against the SDK include
directory), rebuilds a changed source with ``builder.compile_plugin`` (what
``build.py`` uses: temp file, then rename) and applies the output.  A header
change rebuilds every source that includes it.

All work happens on one worker thread, so builds and reloads never overlap;
watchdog's own threads only record events.  ``on_event`` receives a
:class:`WatchEvent` for every outcome (the demo's live view uses it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _descriptor as desc_mod
from ._builder import BuildError, compile_plugin, sdk_include_dir
from ._errors import HotloadError, InvalidPluginError, LoadError
from ._platform import binfmt, dl

if TYPE_CHECKING:
    from ._protocols import PluginHost

log = logging.getLogger(__name__)

#: Errors a half-written file can cause; anything else (a bad descriptor, a
#: refused on_load, a changed signature) is the build's final verdict.
RETRYABLE = (InvalidPluginError, LoadError)
_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.MULTILINE)


@dataclass(frozen=True)
class WatchEvent:
    """What the watcher did about one changed path.

    ``action`` is one of ``loaded``, ``reloaded``, ``unchanged``, ``failed``
    or ``skipped`` (not a hotload plugin).  Times are ``time.monotonic()``:
    ``changed_at`` is the first event of the burst, ``done_at`` the moment
    the new version was serving (or the failure was final)."""

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
    last_stat: tuple[int, int, int] | None = None
    initial: bool = False  # found by the start-up scan, not by an event


class Watcher:
    """Watches a directory (or one file) and keeps ``host`` serving the
    newest good build of each plugin in it.  Use ``Host.watch`` to make one;
    ``stop()`` (or ``Host.close()``) ends it."""

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
    ) -> None:
        self.host = host
        self.rebuild = rebuild
        self.quiet, self.settle, self.stable_interval, self.retries = (
            quiet,
            settle,
            stable_interval,
            retries,
        )
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
        self._headers: dict[Path, set[Path]] = {}  # header -> sources including it
        self._applied: dict[str, str] = {}  # file -> digest this watcher last saw serving from it
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
        self._scan_headers()
        self._observer = _start_observer(self._dirs(), self._handler)
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
        """Stop watching.  A build or reload already running finishes first."""
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer.stop()
                self._observer.join(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
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
    def _wanted(self, path: Path) -> bool:
        if path.name.startswith("."):  # builder temp files, editor swap files
            return False
        if path in self._headers:
            return True
        if path.parent != self.root or path.suffix != self._suffix:
            return False
        return self._only is None or path == self._only

    def _existing(self) -> list[Path]:
        if self._only is not None:
            return [self._only] if self._only.exists() else []
        return sorted(p for p in self.root.glob(f"*{self._suffix}") if self._wanted(p))

    def _dirs(self) -> list[Path]:
        return sorted({self.root, *(h.parent for h in self._headers)})

    def _scan_headers(self) -> None:
        """Map each local header to the sources that include it (transitively)."""
        headers: dict[Path, set[Path]] = {}
        sources = [self._only] if self._only else sorted(self.root.glob("*.c"))
        for src in sources if self.rebuild else []:
            for header in _includes(src, self._include_dirs):
                headers.setdefault(header, set()).add(src)
        self._headers = headers

    # -- events (watchdog's thread) ------------------------------------------------
    def _event(self, kind: str, raw: str | bytes) -> None:
        path = Path(os.fsdecode(raw))
        if not path.is_absolute():
            path = path.resolve()
        if not self._wanted(path):
            return
        ends_write = kind in ("closed", "moved")
        self._schedule(path, self.quiet if ends_write else self.settle)

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
        if key is None:
            log.info("watch: %s is gone; the loaded version keeps serving", path)
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

    def _header_changed(self, header: Path, item: _Pending) -> None:
        sources = sorted(self._headers.get(header, ()))
        log.info(
            "watch: %s changed; rebuilding %s",
            header.name,
            ", ".join(s.name for s in sources) or "nothing",
        )
        for src in sources:
            self._build_and_apply(src, _Pending(0.0, item.changed_at))

    # -- rebuild mode -------------------------------------------------------------
    def _build_and_apply(self, src: Path, item: _Pending) -> None:
        assert self.out_dir is not None
        output = self.out_dir / (src.stem + dl.SUFFIX)
        if item.initial and _up_to_date(src, output):
            self._apply(output, item, source=src)  # start-up scan: the build is current
            return
        started = time.monotonic()
        try:
            compile_plugin(src, output, cc=self._cc, extra_cflags=self._cflags)
        except BuildError as exc:
            self._emit(
                WatchEvent(
                    "failed",
                    str(src),
                    error=str(exc),
                    source=str(src),
                    build_seconds=time.monotonic() - started,
                    changed_at=item.changed_at,
                    done_at=time.monotonic(),
                )
            )
            return
        built = time.monotonic() - started
        self._scan_headers_for(src)
        self._apply(output, item, source=src, build_seconds=built)

    def _scan_headers_for(self, src: Path) -> None:
        """A source edit may add an #include: watch the new header too."""
        new = [h for h in _includes(src, self._include_dirs) if src not in self._headers.get(h, ())]
        for header in new:
            self._headers.setdefault(header, set()).add(src)
        dirs = {h.parent for h in new} - set(self._dirs_watched())
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
            event = WatchEvent("failed", error=f"{exc}{tail}", done_at=time.monotonic(), **common)
        except (HotloadError, OSError) as exc:
            event = WatchEvent("failed", error=str(exc), done_at=time.monotonic(), **common)
        self._emit(event)

    def _load_or_reload(self, path: Path, common: dict[str, Any]) -> WatchEvent:
        """Check the file's bytes, then load, reload or leave alone its plugin."""
        data = path.read_bytes()
        facts = binfmt.check(data, str(path))
        if facts.hotload_section is None:
            return WatchEvent(
                "skipped",
                error=f"{path}: not a hotload plugin (no .hotload descriptor); ignored",
                done_at=time.monotonic(),
                **common,
            )
        name = desc_mod.parse(facts.hotload_section, str(path)).name
        digest = hashlib.sha256(data).hexdigest()
        if self._serving(name, str(path), digest):
            return WatchEvent("unchanged", name=name, done_at=time.monotonic(), **common)
        if name in self.host:
            action, info = "reloaded", self.host.reload(name, path)
        else:
            self.host.load(path)
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
        current = [v for v in self.host.versions(name) if v.state == "active"]
        return bool(current) and current[-1].digest == digest

    def _emit(self, event: WatchEvent) -> None:
        where = event.source or event.path
        if event.action == "failed":
            log.error(
                "watch: %s: not swapped, the running version keeps serving:\n%s", where, event.error
            )
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
    loading never triggers another look."""

    _KINDS = frozenset({"created", "modified", "closed", "moved"})

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        if event.is_directory or kind not in self._KINDS:
            return
        path = event.dest_path if kind == "moved" else event.src_path
        if path:  # an unpaired move out of the directory has no destination
            self.watcher._event(kind, path)


def _start_observer(dirs: list[Path], handler: _Handler) -> Any:
    """One watchdog observer watching ``dirs`` (not recursively).

    On Linux, ``generate_full_events`` reports a rename from outside the
    directory as a move (a finished file), not as a create (a write just
    starting), which saves the ``settle`` wait."""
    from watchdog.observers import Observer

    try:
        observer = Observer(generate_full_events=True)  # type: ignore[call-arg]
    except TypeError:
        observer = Observer()
    for directory in dirs:
        observer.schedule(handler, str(directory), recursive=False)  # type: ignore[arg-type]
    observer.daemon = True
    observer.start()
    return observer


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _includes(source: Path, include_dirs: list[Path], seen: set[Path] | None = None) -> set[Path]:
    """Local headers ``source`` includes, transitively; system headers
    (not found beside the file or in ``include_dirs``) are left out."""
    seen = set() if seen is None else seen
    try:
        text = source.read_text(errors="replace")
    except OSError:
        return seen
    for quote, name in _INCLUDE.findall(text):
        dirs = ([source.parent] if quote == '"' else []) + include_dirs
        for directory in dirs:
            candidate = (directory / name).resolve()
            if candidate.is_file():
                if candidate not in seen:
                    seen.add(candidate)
                    _includes(candidate, include_dirs, seen)
                break
    return seen


def _sdk_dir() -> Path:
    try:
        return sdk_include_dir()
    except BuildError:
        return Path(__file__).resolve().parent / "sdk" / "include"


def _default_out_dir(src_dir: Path) -> Path:
    """``native/plugins`` builds into ``build/plugins`` beside it, as
    ``build.py`` does; any other source directory into ``<dir>/build``."""
    if src_dir.parts[-2:] == ("native", "plugins"):
        return src_dir.parent.parent / "build" / "plugins"
    return src_dir / "build"


def _up_to_date(src: Path, output: Path) -> bool:
    try:
        return output.stat().st_mtime_ns >= src.stat().st_mtime_ns
    except OSError:
        return False


__all__ = ["RETRYABLE", "WatchEvent", "Watcher"]
