"""``dl.symbols`` (every export, hook and import slot of a plugin looked up in
one call on the reload path): the compiled lookup (``_crouter.symbols``) and
the ctypes one agree name for name on a real plugin, refuse bad input with a
Python error instead of reaching ``dlsym``, leave no ``dlerror`` behind, and
never hold the GIL inside ``dlsym`` (a constructor calling a host service
from another thread's ``dlopen`` would deadlock); ``HOTLOAD_PURE_PYTHON=1``
selects the ctypes one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hotload._platform import _posix

HAVE_EXT = importlib.util.find_spec("hotload._engine._crouter") is not None
native = pytest.mark.skipif(not HAVE_EXT, reason="the compiled extension is not built")

PLUGIN = """
#include <hotload.h>
HOTLOAD_PLUGIN("syms", "1");
HOTLOAD_IMPORT(svc0, int32_t, (int64_t));
HOTLOAD_API int32_t f0(int32_t x) { return svc0(x); }
HOTLOAD_EXPORT(f0, int32_t, (int32_t));
HOTLOAD_API int32_t f1(int32_t x) { return x + 1; }
HOTLOAD_EXPORT(f1, int32_t, (int32_t));
"""
NAMES = ["f0", "nope", "f1", "hotload__slot_svc0", "hotload__slot_nope", "", "f0"]


@pytest.fixture
def handle(cc):
    h = _posix.open_image(str(cc(PLUGIN, "syms")))
    yield h
    _posix.close_image(h, "syms")


@native
def test_compiled_lookup_agrees_with_ctypes_on_found_and_missing_names(handle: int) -> None:
    from hotload._engine._crouter import symbols

    found = symbols(handle, NAMES)
    assert found == _posix._symbols_py(handle, NAMES)
    assert [a is not None for a in found] == [True, False, True, True, False, False, True]
    assert found[0] == found[-1] == _posix.symbol(handle, "f0")
    assert symbols(handle, ()) == [] and symbols(handle, ("f1",)) == [found[2]]
    assert _posix._dlerror() is None  # the missing names' dlerror() text was cleared


@native
def test_compiled_lookup_refuses_bad_input_before_dlsym(handle: int) -> None:
    from hotload._engine._crouter import symbols

    with pytest.raises(TypeError, match="names must be str, not bytes"):
        symbols(handle, ["f0", b"f1"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence of str"):
        symbols(handle, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        symbols(handle, ["f0\0f1"])
    with pytest.raises(UnicodeEncodeError):
        symbols(handle, ["f\udc80"])
    with pytest.raises(ValueError, match="handle is NULL"):
        symbols(0, ["f0"])  # dlsym(NULL) would search the whole process instead
    with pytest.raises(TypeError):
        symbols("0x1", ["f0"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        symbols(handle)  # type: ignore[call-arg]


def _run(code: str, env_extra: dict[str, str], timeout: float = 60) -> str:
    env = {k: v for k, v in os.environ.items() if k != "HOTLOAD_PURE_PYTHON"}
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


WHICH = "from hotload._platform import dl, _posix; print(dl.symbols is _posix._symbols_py)"


def test_pure_python_mode_uses_the_ctypes_lookup() -> None:
    assert _run(WHICH, {"HOTLOAD_PURE_PYTHON": "1"}) == "True"
    assert _run(WHICH, {"HOTLOAD_PURE_PYTHON": "0"}) == str(not HAVE_EXT)
    assert _run(WHICH, {}) == str(not HAVE_EXT)


SLOW_CTOR = """
#include <hotload.h>
#include <time.h>
HOTLOAD_PLUGIN("slowctor", "1");
HOTLOAD_IMPORT(entered, int32_t, (int32_t));
__attribute__((constructor)) static void init(void)
{
    entered(1);  /* the other thread now looks symbols up while we hold the loader's lock */
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    entered(2);  /* needs the GIL: a lookup holding it inside dlsym would deadlock here */
}
HOTLOAD_API int32_t one(void) { return 1; }
HOTLOAD_EXPORT(one, int32_t, (void));
"""

DEADLOCK = """
import sys, threading
from hotload import Host
from hotload._platform import dl, _posix
slow, other, work = sys.argv[1:4]
h = _posix.open_image(other)
inside = threading.Event()
seen = []
def entered(n):
    seen.append(n)
    inside.set()
    return 0
def look():
    inside.wait(30)
    seen.append(dl.symbols(h, ["f1", "nope"])[1])
with Host(work, preflight=False) as host:
    host.provide("entered", entered, "int32_t(int32_t)")
    t = threading.Thread(target=look)
    t.start()
    p = host.load(slow)
    t.join(30)
    print(seen, p.one())
"""


@pytest.mark.parametrize("mode", ["compiled", "ctypes"])
def test_lookup_during_a_constructor_calling_a_service_does_not_deadlock(
    cc, tmp_path: Path, mode: str
) -> None:
    if mode == "compiled" and not HAVE_EXT:
        pytest.skip("the compiled extension is not built")
    slow, other = cc(SLOW_CTOR, "slow"), cc(PLUGIN, "other")
    env = {"HOTLOAD_PURE_PYTHON": "1" if mode == "ctypes" else "0"}
    code = DEADLOCK.replace("sys.argv[1:4]", repr([str(slow), str(other), str(tmp_path / "w")]))
    assert _run(code, env, timeout=30) == "[1, 2, None] 1"
