"""Compile plugin sources into shared libraries, atomically.

The compiler writes to a temporary file in the output directory; only a
complete, successful output is renamed over the target.  A reader (a host,
a watcher) therefore sees either the old library or the new one, never a
partial file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .._errors import (
    BuildError,  # noqa: F401 - re-exported
)

log = logging.getLogger(__name__)

BASE_FLAGS = ["-std=c11", "-fPIC", "-shared", "-Wall", "-Wextra"]
#: Seconds one plugin build may take.  A source that includes a FIFO (or
#: ``/dev/zero``) makes the compiler wait forever; without a bound that wedges
#: the watcher's only worker thread.
BUILD_TIMEOUT = 120.0
_POLL = 0.1  # seconds between looks at ``cancel`` while the compiler runs
TARGETS = {
    # target: (compiler variable, default compiler, output suffix, output dir name)
    "native": ("CC", "cc", ".so", "plugins"),
    "windows": ("WIN_CC", "x86_64-w64-mingw32-gcc", ".dll", "plugins-win"),
}
# A C++ source (by its suffix, as gcc decides) gets the C++ compiler and
# standard: g++ warns that -std=c11 "is valid for C/ObjC but not for C++".
CXX_SUFFIXES = frozenset({".cpp", ".cc", ".cxx"})
CXX_COMPILERS = {"native": ("CXX", "c++"), "windows": ("WIN_CXX", "x86_64-w64-mingw32-g++")}


def sdk_include_dir() -> Path:
    """The directory holding ``hotload.h``: the checkout's ``native/include``
    when running from source, else the copy shipped inside the package."""
    here = Path(__file__).resolve().parents[1]  # the hotload package
    for candidate in (here.parent.parent / "native" / "include", here / "sdk" / "include"):
        if (candidate / "hotload.h").is_file():
            return candidate
    raise BuildError(f"hotload.h not found next to {here}")


def cflags(*, cxx: bool = False) -> list[str]:
    base = ["-std=c++17", *BASE_FLAGS[1:]] if cxx else BASE_FLAGS
    return [*base, f"-I{sdk_include_dir()}"]


def user_cflags(*, cxx: bool = False) -> list[str]:
    """What ``hotload cflags`` prints: enough to build a plugin by hand.  A
    C++ compiler warns about (or rejects) ``-std=c11``, so C++ gets its own
    standard; hotload.h is valid C++ as well."""
    return [f"-I{sdk_include_dir()}", "-std=c++17" if cxx else "-std=c11", "-fPIC", "-shared"]


@dataclass(frozen=True)
class BuildResult:
    source: Path
    output: Path


def plugin_sources(unit: Path) -> list[Path]:
    """The C files one plugin is built from: a ``.c`` file alone, or every
    ``*.c`` directly in a plugin directory (hidden files, such as editor
    swap files, left out)."""
    if not unit.is_dir():
        return [unit]
    return sorted(p for p in unit.glob("*.c") if not p.name.startswith("."))


def plugin_units(directory: Path, *, exclude: Iterable[Path] = ()) -> list[Path]:
    """The plugins in a source directory: each ``*.c`` beside the others is
    one plugin, and so is each subdirectory holding ``*.c`` files (a plugin
    made of several files).  Hidden entries and ``exclude`` (an output
    directory inside it) are left out."""
    skip = {p.resolve() for p in exclude}
    units = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or entry.resolve() in skip:
            continue
        if (entry.is_dir() and plugin_sources(entry)) or (entry.suffix == ".c" and entry.is_file()):
            units.append(entry)
    return units


def output_name(unit: Path, suffix: str) -> str:
    """``plugins/foo.c`` and ``plugins/foo/`` both build ``foo<suffix>``."""
    return (unit.name if unit.is_dir() else unit.stem) + suffix


def compile_plugin(
    source: Path,
    output: Path,
    *,
    cc: str | None = None,
    extra_cflags: Iterable[str] = (),
    target: str = "native",
    timeout: float | None = BUILD_TIMEOUT,
    cancel: threading.Event | None = None,
) -> BuildResult:
    """Compile one plugin, a ``.c`` file or a directory of them (see
    ``plugin_sources``), or one C++ file (``.cpp``, ``.cc``, ``.cxx``: built
    with ``$CXX``, default ``c++``, and ``-std=c++17``); raise ``BuildError``
    with the compiler's output.

    The compiler runs in its own process group, so that on ``timeout``
    (seconds; None: no bound) or when ``cancel`` is set the whole group is
    killed: the driver *and* ``cc1``, which would otherwise outlive us,
    stuck reading a FIFO."""
    cxx = source.suffix in CXX_SUFFIXES and not source.is_dir()
    cc_var, default_cc = CXX_COMPILERS[target] if cxx else TARGETS[target][:2]
    cc_cmd = shlex.split(cc or os.environ.get(cc_var) or default_cc)
    files = plugin_sources(source)
    if not files:
        raise BuildError(f"{source}: no .c files in this plugin directory")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    cmd = [*cc_cmd, *cflags(cxx=cxx), *extra_cflags, "-o", tmp, *map(str, files)]
    try:
        returncode, stderr = _run(cmd, source, timeout, cancel)
    except BaseException:
        os.unlink(tmp)
        raise
    if returncode != 0:
        os.unlink(tmp)
        raise BuildError(f"{source}: compile failed ({shlex.join(cmd)}):\n{stderr.strip()}")
    if stderr.strip():
        log.warning("%s: compiler warnings:\n%s", source, stderr.strip())
    os.chmod(tmp, 0o755)
    rename_into_place(tmp, output)
    return BuildResult(source, output)


def _run(
    cmd: list[str], source: Path, timeout: float | None, cancel: threading.Event | None
) -> tuple[int, str]:
    """Run the compiler; its exit status and stderr.  BuildError when it
    cannot start, runs past ``timeout`` or is cancelled (its group killed)."""
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: killed whole
        )
    except FileNotFoundError:
        raise BuildError(f"{source}: compiler {cmd[0]!r} not found") from None
    except OSError as exc:
        raise BuildError(f"{source}: cannot start the compiler {cmd[0]!r}: {exc}") from None
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = _POLL if cancel is not None else None
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            wait = left if wait is None else min(wait, left)
        try:
            _out, err = proc.communicate(timeout=wait)
            return proc.returncode, err
        except subprocess.TimeoutExpired:
            pass
        if cancel is not None and cancel.is_set():
            _kill_group(proc)
            raise BuildError(f"{source}: build cancelled (the watcher stopped)")
        if deadline is not None and time.monotonic() >= deadline:
            _kill_group(proc)
            raise BuildError(
                f"{source}: the compiler did not finish within {timeout:g} s (killed it); "
                f"does it include a FIFO or a device?"
            )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the compiler and every process it started (cc1, as, ld)."""
    if os.name == "nt":
        proc.kill()
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a grandchild holds the pipes: let it go
        proc.wait()


def rename_into_place(tmp: str | Path, output: Path) -> None:
    """Rename into place.  On Windows a reader holding the old file open
    blocks the rename for a moment: retry briefly, then say so."""
    for attempt in range(20):
        try:
            os.replace(tmp, output)
            return
        except PermissionError as exc:
            if os.name != "nt" or attempt == 19:
                os.unlink(tmp)
                raise BuildError(f"{output}: cannot replace it: {exc}") from None
            time.sleep(0.05)


def main(argv: list[str], *, root: Path, environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description="Build hotload plugins.")
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="plugin sources, .c files or plugin directories (default: native/plugins/*.c and "
        "native/plugins/*/)",
    )
    parser.add_argument("--target", choices=sorted(TARGETS), default="native")
    parser.add_argument(
        "-o", "--out-dir", type=Path, help="output directory (default: build/<plugins dir>)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _var, _cc, suffix, dir_name = TARGETS[args.target]
    out_dir = args.out_dir or root / "build" / dir_name
    sources = args.files or plugin_units(root / "native" / "plugins", exclude=[out_dir])
    extra = shlex.split(environ.get("CFLAGS", ""))
    failed = 0
    for src in sources:
        try:
            res = compile_plugin(
                src, out_dir / output_name(src, suffix), extra_cflags=extra, target=args.target
            )
            print(f"built {res.output}")
        except BuildError as exc:
            print(f"error: {exc}")
            failed += 1
    return 1 if failed else 0
