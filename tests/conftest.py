"""Shared fixtures: real plugins compiled from C source into the test's tmp dir."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from hotload import Host, Isolated
from hotload._artifact.builder import compile_plugin

ROOT = Path(__file__).resolve().parent.parent
PLUGINS_SRC = ROOT / "native" / "plugins"

Compile = Callable[..., Path]
T = TypeVar("T")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the tests that share a module-scoped fixture on one xdist worker.

    ``make test`` distributes with ``--dist loadgroup``: each test is its own
    unit of work, so no long file is the floor of the run, except the tests
    of one ``xdist_group``, which go to one worker together.  A module-scoped
    fixture (a wine prefix, a Go build, a module's compiled plugins) is built
    once per worker that needs it: grouping the tests that use it by module
    keeps that at once, as ``--dist loadfile`` did."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d[-1].scope in ("module", "class", "package") for d in defs if d):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def pytest_collection_finish(session: pytest.Session) -> None:
    """On an xdist worker with ``--dist loadgroup``: warn if the groups did not take.

    xdist carries a test's group to the scheduler as a ``@group`` suffix of its
    node id; pytest 9.2's structured node ids drop that suffix without a word
    (pytest-xdist issue 1386): every module-scoped fixture was then built on
    both workers (the wine prefix twice, ~15 s more) and the run took minutes
    more.  pyproject.toml keeps pytest below 9.2 for that."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup")):
        return
    lost = [
        i.nodeid
        for i in session.items
        if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
    ]
    if lost:
        warnings.warn(
            pytest.PytestWarning(
                f"--dist loadgroup: {len(lost)} tests lost their xdist_group ({lost[0]}...): "
                "pytest 9.2 with pytest-xdist 3.8 (pytest-xdist issue 1386); their module "
                "fixtures are built on every worker.  Install pytest<9.2 (make venv)."
            ),
            stacklevel=1,
        )


@pytest.fixture(scope="session")
def compiled_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Where ``cc`` keeps what it compiled, and what every key includes: the
    same source is compiled by many tests (every contract test twice, in
    process and isolated; again in the Python-router pass), and gcc was a
    large part of the suite's time.  ``$HOTLOAD_TEST_CACHE`` (the Makefile
    sets it under ``build/``) keeps it across passes and runs; else it is
    shared by the xdist workers of one run.  Keys include the SDK header and
    the compiler's version, so a changed header or compiler is a miss."""
    env = os.environ.get("HOTLOAD_TEST_CACHE")
    if env:
        path = Path(env)
    else:
        base = tmp_path_factory.getbasetemp()
        path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cc-cache"
    path.mkdir(parents=True, exist_ok=True)
    header = (ROOT / "native" / "include" / "hotload.h").read_bytes()
    versions = [
        subprocess.run([c, "--version"], capture_output=True, text=True, check=False).stdout
        for c in (os.environ.get("CC") or "cc", "g++")
    ]
    return path, hashlib.sha256(header + repr(versions).encode()).hexdigest()


@pytest.fixture
def cc(tmp_path: Path, compiled_cache: tuple[Path, str]) -> Compile:
    """``cc(source_text, name, flags=[], cxx=False)`` -> path of a fresh .so,
    compiled with the project's own builder (temp file + rename).  A build of
    the same source, name, flags and compiler made earlier in the run is
    copied instead (a new file, renamed into place, as a build is)."""

    def build(
        source: str,
        name: str = "plugin",
        flags: list[str] | None = None,
        *,
        cxx: bool = False,
        out: Path | None = None,
    ) -> Path:
        ext = ".cpp" if cxx else ".c"
        text = textwrap.dedent(source)
        src = tmp_path / "src" / f"{name}{ext}"
        src.parent.mkdir(exist_ok=True)
        src.write_text(text)
        output = out or tmp_path / "build" / f"{name}.so"
        output.parent.mkdir(parents=True, exist_ok=True)
        extra = list(flags or [])
        cache, base = compiled_cache
        key = hashlib.sha256(
            repr(
                (base, text, name, extra, cxx, os.environ.get("CC"), os.environ.get("CFLAGS"))
            ).encode()
        ).hexdigest()[:32]
        cached = cache / f"{key}.so"
        if cached.exists():
            _place(cached, output)
            return output
        if cxx:  # the builder's -std=c11 is for C; g++ takes the last -std
            compile_plugin(src, output, cc="g++", extra_cflags=["-std=c++17", *extra])
        else:
            compile_plugin(src, output, extra_cflags=extra)
        _place(output, cached)
        return output

    return build


def _place(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name and a rename: a reader
    (another worker, a watcher) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dst)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """An empty private directory with a short path, removed afterwards: for
    control sockets, whose path must fit in 108 bytes (``sun_path``).  Under
    ``tmp_path`` (``/tmp/pytest-of-<user>/pytest-<n>/[popen-gw<k>/]<test>/``)
    a socket's temporary name is past that with xdist, and close to it without."""
    path = Path(tempfile.mkdtemp(prefix="hl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    work = tmp_path / "work"
    with Host(work, quiesce_timeout=0.5) as h:
        yield h
    leftovers = [p for p in work.rglob("*") if p.is_file()]
    assert not leftovers, f"versioned copies left after close(): {leftovers}"


# ---- one spec, two modes: the contract suites run in process and isolated -------------
MODES = ("in_process", "isolated")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """How the test's plugins run: ``in_process`` or ``isolated`` (each in its
    own worker process).  A test takes ``isolate`` (or ``mode``) and passes it
    to every ``host.load``; reloads and rollbacks keep the mode."""
    return str(request.param)


@pytest.fixture
def isolate(mode: str) -> bool | Isolated:
    """``host.load(..., isolate=isolate)`` for the test's mode (``Isolated()``:
    the defaults, what ``isolate=True`` means)."""
    return Isolated() if mode == "isolated" else False


Marks = pytest.MarkDecorator | tuple[pytest.MarkDecorator, ...]


def modes(*, in_process: Marks = (), isolated: Marks = ()) -> pytest.MarkDecorator:
    """Both modes, with marks on one case: ``@modes(isolated=pytest.mark.xfail(
    strict=True, reason=...))`` for what cannot cross the process boundary (or a
    bug: the reason names the issue), ``pytest.mark.skip(reason=...)`` only for
    a test that is by nature about one mode."""
    marks = {"in_process": in_process, "isolated": isolated}
    return pytest.mark.parametrize("mode", [pytest.param(m, marks=marks[m]) for m in MODES])


@pytest.fixture
def example_plugins(tmp_path: Path) -> dict[str, Path]:
    """The shipped example plugins, built fresh for this test."""
    out = {}
    for src in sorted(PLUGINS_SRC.glob("*.c")):
        out[src.stem] = tmp_path / "plugins" / f"{src.stem}.so"
        compile_plugin(src, out[src.stem])
    return out


def mapped_images(workdir: Path) -> set[str]:
    """Distinct files under ``workdir`` that the kernel maps into this process."""
    prefix = str(workdir)
    found = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip().startswith(prefix):
                found.add(parts[5].strip().removesuffix(" (deleted)"))
    return found


def versioned_copies(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.rglob("*") if p.is_file() and p.name != ".lock")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


XP_SOURCE = """
#define _POSIX_C_SOURCE 200809L
#include <hotload.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

HOTLOAD_PLUGIN("xp", "VERSION");

static _Atomic int64_t grants;
static int refuse_load = REFUSE;

HOTLOAD_API int64_t reward(int64_t base, int32_t level)
{
    atomic_fetch_add(&grants, 1);
    return base * MULT + level;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));

HOTLOAD_API int64_t grants_so_far(void) { return atomic_load(&grants); }
HOTLOAD_EXPORT(grants_so_far, int64_t, (void));

HOTLOAD_API int32_t version_tag(void) { return MULT; }
HOTLOAD_EXPORT(version_tag, int32_t, (void));

/* Sleeps `ms` milliseconds inside the plugin, then returns version_tag(). */
HOTLOAD_API int32_t slow_tag(int32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return MULT;
}
HOTLOAD_EXPORT(slow_tag, int32_t, (int32_t));

/* generation: 1 on first load, +1 at every swap, carried in the state */
static int64_t generation = 1;
HOTLOAD_API int64_t gen(void) { return generation; }
HOTLOAD_EXPORT(gen, int64_t, (void));

static int64_t snap[2];
static int save(const void **state, size_t *size)
{
    snap[0] = atomic_load(&grants);
    snap[1] = generation;
    *state = snap;
    *size = sizeof snap;
    return 0;
}
HOTLOAD_ON_UNLOAD(save);

static char prev_seen[64];
static int restore(const char *prev, const void *state, size_t size)
{
    if (refuse_load) return refuse_load;
    if (prev) { strncpy(prev_seen, prev, sizeof prev_seen - 1); }
    if (state && size == sizeof snap) {
        int64_t s[2];
        memcpy(s, state, sizeof s);
        atomic_store(&grants, s[0]);
        generation = s[1] + 1;
    }
    return 0;
}
HOTLOAD_ON_LOAD(restore);

HOTLOAD_API const char *previous_version(void) { return prev_seen; }
HOTLOAD_EXPORT(previous_version, const char *, (void));
"""


def xp_source(mult: int = 2, version: str = "1.0.0", refuse: int = 0) -> str:
    """A stateful test plugin whose behaviour and version string are parameters."""
    return (
        XP_SOURCE.replace("VERSION", version)
        .replace("MULT", str(mult))
        .replace("REFUSE", str(refuse))
    )


@pytest.fixture
def xp_build(cc: Compile, tmp_path: Path) -> Callable[..., Path]:
    """Build the test plugin to one fixed source path (like a real build would),
    with another multiplier/version; returns that path."""
    target = tmp_path / "build" / "xp.so"

    def build(mult: int = 2, version: str = "1.0.0", refuse: int = 0, name: str = "xp") -> Path:
        return cc(xp_source(mult, version, refuse), name, out=target if name == "xp" else None)

    return build


def child_pids(*, zombies: bool = False) -> list[int]:
    """This process's child processes (zombies only if asked), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == os.getpid() and (zombies or fields[0] != b"Z"):
            out.append(int(entry))
    return out


def host_pid(worker: int, pid: int) -> int:
    """The pid, as this process sees it, of the process ``worker`` (a
    sandboxed worker, pid as we see it) forked and knows as ``pid``: a sandbox
    has its own pid namespace, so what a plugin's ``fork()`` returns is a pid
    in there.  ``pid`` itself when the worker shares our namespace."""
    with open(f"/proc/{worker}/status") as fh:
        ns = next(line.split()[1:] for line in fh if line.startswith("NSpid:"))
    if len(ns) == 1:
        return pid
    todo = [worker]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                continue
            for kid in kids:
                try:
                    with open(f"/proc/{kid}/status") as fh:
                        nspid = next(line.split() for line in fh if line.startswith("NSpid:"))
                except (OSError, StopIteration):
                    continue
                if int(nspid[-1]) == pid:
                    return kid
                todo.append(kid)
    raise LookupError(f"no descendant of {worker} is pid {pid} in its namespace")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(
    cond: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.02
) -> T:
    """Poll ``cond()`` until it returns something truthy, and return that.

    ``timeout`` only stops a test that would otherwise hang: it is generous
    on purpose and says nothing about speed.  After it, ``AssertionError``
    naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def run_guarded(fn: Callable[[], T], timeout: float = 60.0, what: str = "the call") -> T:
    """``fn()`` on a daemon thread: its result, or its exception raised here.

    ``AssertionError`` if it has not returned after ``timeout`` seconds: a
    guard that turns a hang into a failure, generous on purpose (it says
    nothing about speed; the thread is left behind)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=call, name=f"guarded {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {timeout:g} s (hung)")
    if errors:
        raise errors[0]
    return result[0]


class Lines:
    """The stdout lines of ``proc`` (a ``Popen`` with text pipes), read on a
    thread; ``expect(pattern)`` waits for the next line that matches."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout
        threading.Thread(target=lambda: [self._queue.put(ln) for ln in out], daemon=True).start()

    def expect(self, pattern: str, timeout: float = 60.0) -> str:
        def matching_line() -> str | None:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                return None
            self.seen.append(line)
            return line if re.search(pattern, line) else None

        try:
            return wait_for(matching_line, timeout, f"a line matching {pattern!r}", interval=0)
        except AssertionError as exc:
            self.proc.kill()
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"{exc}; lines seen: {self.seen}; stderr: {stderr}") from None


GO_MAIN = """package main

// #include <stdint.h>
import "C"

//export Add
func Add(a, b C.int64_t) C.int64_t { return a + b }

func main() {}
"""
GO_DESC = """#include <hotload.h>
extern int64_t Add(int64_t, int64_t);
HOTLOAD_PLUGIN("gox", "1");
HOTLOAD_EXPORT(Add, int64_t, (int64_t, int64_t));
"""


def build_go_plugin(where: Path) -> Path:
    """``gox.so``: a Go ``-buildmode=c-shared`` plugin exporting ``Add``, with
    its descriptor in ``desc.c``, built in ``where`` (the Go build cache is
    kept in ``build/go-cache``: a cold build is ~5 s of CPU)."""
    pkg = where / "gopkg"
    pkg.mkdir(parents=True)
    (pkg / "main.go").write_text(GO_MAIN)
    (pkg / "desc.c").write_text(GO_DESC)
    lib = where / "gox.so"
    env = {
        **os.environ,
        "GOCACHE": str(ROOT / "build" / "go-cache"),
        "GO111MODULE": "off",
        "CGO_CFLAGS": f"-I{ROOT / 'native' / 'include'}",
    }
    built = subprocess.run(
        ["go", "build", "-buildmode=c-shared", "-o", str(lib), "."],
        cwd=pkg,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return lib
