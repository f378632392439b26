"""The rebuild side of a watcher (``host.watch(dir, rebuild=True)``): which C
sources make which plugin, the local headers they include, and the compiler
run that turns them into a library for the watcher to apply.

Each ``*.c`` directly in the watched directory is one plugin, and each
subdirectory holding ``*.c`` files is one plugin built from all of them
(``src/foo/*.c`` -> ``<out_dir>/foo.so``).  Every local header they
``#include "..."`` (found beside the including file or in ``include_dirs``
and the SDK directory) is watched too.  A change rebuilds the plugin with
``builder.compile_plugin`` (what ``build.py`` uses: temp file, then rename);
a header change rebuilds every plugin that includes it.

The compiler's output goes to a hidden staging file beside the output, and
the watcher applies that.  Only a build that then serves (loaded, reloaded,
or the very bytes already running) is renamed into place as
``<out_dir>/foo.so``; one the host refused (a failed ``on_load``, a changed
signature, a crash in preflight) is kept as ``foo.so.refused``, and the
output keeps the build that runs.  So the file on disk is what runs (until
someone rolls back: ``hotload ls`` says so), and the refused build is there
to inspect.  The ``.refused`` suffix is deliberate: a ``*.so`` glob or a
watcher of the output directory must not take it for a plugin.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import threading
from collections.abc import Iterable
from pathlib import Path

from .._artifact.builder import (
    BuildError,
    compile_plugin,
    output_name,
    plugin_sources,
    plugin_units,
    rename_into_place,
    sdk_include_dir,
)
from .._artifact.loader import DEFAULT_MAX_PLUGIN_SIZE, read_source
from .._errors import InvalidPluginError
from .._platform import dl

log = logging.getLogger(__name__)

_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.MULTILINE)


class Rebuilder:
    """Builds the plugins of one source directory, one at a time, for a watcher.

    ``headers`` maps each local header to the plugins (a ``.c`` file or a
    plugin directory) that include it, transitively: the watcher watches
    their directories too, and a changed header rebuilds each of its users.
    ``cancel``, set by the watcher's ``stop()``, kills a running compiler."""

    def __init__(
        self,
        root: Path,
        *,
        out_dir: Path | None,
        units: bool,
        include_dirs: Iterable[str | os.PathLike[str]],
        cc: str | None,
        cflags: Iterable[str] | None,
        build_timeout: float,
        max_size: int,
    ) -> None:
        self.root = root
        self.out_dir = out_dir
        self.units = units  # plugin directories are plugins too
        self.cc = cc
        self.cflags = (
            list(cflags) if cflags is not None else shlex.split(os.environ.get("CFLAGS", ""))
        )
        self.include_dirs = [Path(d).resolve() for d in (*include_dirs, _sdk_dir())]
        self.build_timeout = build_timeout
        self.max_size = max_size
        self.cancel = threading.Event()
        self.headers: dict[Path, set[Path]] = {}

    def scan(self, units: Iterable[Path]) -> None:
        """Map each local header to the plugins that include it (transitively)."""
        headers: dict[Path, set[Path]] = {}
        for unit in units:
            for header in self.includes_of(unit):
                headers.setdefault(header, set()).add(unit)
        self.headers = headers

    def includes_of(self, unit: Path) -> set[Path]:
        found: set[Path] = set()
        for src in plugin_sources(unit):
            _includes(src, self.include_dirs, found, self.max_size)
        return found

    def note_includes(self, unit: Path) -> list[Path]:
        """A source edit may add an #include: map the new headers and return
        them (the watcher watches their directories too)."""
        new = [h for h in self.includes_of(unit) if unit not in self.headers.get(h, ())]
        for header in new:
            self.headers.setdefault(header, set()).add(unit)
        return new

    def users_of(self, header: Path) -> list[Path]:
        """The plugins to rebuild when ``header`` changes."""
        return sorted(self.headers.get(header, ()))

    def output_of(self, unit: Path) -> Path:
        assert self.out_dir is not None
        return self.out_dir / output_name(unit, dl.SUFFIX)

    def is_current(self, unit: Path) -> bool:
        """True when ``unit``'s output is newer than each of its sources."""
        return _up_to_date(plugin_sources(unit), self.output_of(unit))

    def build(self, unit: Path) -> Path:
        """Compile one plugin (a ``.c`` file or a plugin directory) into a
        staging file beside its output and return that; ``BuildError`` with
        the compiler's message.  The caller ``install``s it or ``set_aside``s
        it once the host has had its say."""
        output = self.output_of(unit)
        self._check_no_twin(unit, output)
        staged = output.with_name(f".{output.name}.{secrets.token_hex(4)}.staged")
        compile_plugin(
            unit,
            staged,
            cc=self.cc,
            extra_cflags=self.cflags,
            timeout=self.build_timeout,
            cancel=self.cancel,
        )
        return staged

    def install(self, unit: Path, staged: Path) -> Path:
        """A build that serves becomes the output; a refused build kept from
        before is superseded (a ``.refused`` file is the latest refusal)."""
        output = self.output_of(unit)
        rename_into_place(staged, output)
        refused_path(output).unlink(missing_ok=True)
        return output

    def set_aside(self, unit: Path, staged: Path) -> Path:
        """A build the host refused is kept as ``<output>.refused``; the
        output is left as it is."""
        kept = refused_path(self.output_of(unit))
        rename_into_place(staged, kept)
        return kept

    def place(self, unit: Path, staged: Path, *, serves: bool) -> Path | None:
        """``install`` a build that serves, else ``set_aside`` it; where a
        refused build was kept (None when installed, or when the rename
        failed: that is logged, and the staging file is the caller's to
        delete)."""
        try:
            if serves:
                self.install(unit, staged)
                return None
            return self.set_aside(unit, staged)
        except (BuildError, OSError) as exc:
            log.error(
                "watch: %s: cannot %s the build: %s", unit, "install" if serves else "keep", exc
            )
            return None

    def _check_no_twin(self, unit: Path, output: Path) -> None:
        """``foo.c`` and ``foo/`` would both build ``foo.so``: refuse to guess."""
        twin = unit.with_suffix("") if unit.suffix == ".c" else unit.with_name(unit.name + ".c")
        if self.units and twin in plugin_units(self.root):
            raise BuildError(
                f"{unit}: {twin.name} would build the same {output.name}; rename one of them"
            )


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


def refused_path(output: Path) -> Path:
    """Where a refused build of ``output`` is kept: ``foo.so.refused``."""
    return output.with_name(output.name + ".refused")


def default_out_dir(src_dir: Path) -> Path:
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


__all__ = ["Rebuilder", "default_out_dir", "refused_path"]
