"""``pip install`` on a machine without a C compiler still installs hotload,
with the Python router: the extension is optional.  The wheel is built from a
copy of the checkout with the compiler made unavailable (``CC`` and
``LDSHARED`` are ``/bin/false``, and no ``gcc``/``cc`` on ``PATH``), then
used from a fresh directory to load and call a real plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, Compile

SHIPPED = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "src", "native"]


def _no_compiler_path(tmp: Path) -> str:
    """A PATH holding only what the build needs besides a compiler."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "uname", "env"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def _build_wheel(tmp: Path, env: dict[str, str]) -> tuple[Path, str]:
    src = tmp / "checkout"
    for name in SHIPPED:
        s = ROOT / name
        if s.is_dir():
            shutil.copytree(
                s, src / name, ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info")
            )
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(s, src / name)
    out = tmp / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("hotload-*.whl")
    return wheel, proc.stdout + proc.stderr


@pytest.mark.soak  # in make test-slow: make test's 300 s budget
def test_without_a_compiler_the_wheel_installs_with_the_python_router(
    tmp_path: Path, cc: Compile
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HOTLOAD_PURE_PYTHON", "PYTHONPATH")}
    env.update(CC="/bin/false", LDSHARED="/bin/false", CXX="/bin/false")
    env["PATH"] = _no_compiler_path(tmp_path)
    assert shutil.which("gcc", path=env["PATH"]) is None
    wheel, log = _build_wheel(tmp_path, env)
    names = zipfile.ZipFile(wheel).namelist()
    built = [n for n in names if ("_crouter" in n or "_convert" in n)]
    assert not [n for n in built if not n.endswith((".c", ".pyi"))], names  # both optional
    assert "hotload/_engine/registry.py" in names
    assert "building 'hotload._engine._crouter' extension" in log  # it was tried, and failed

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    plugin = cc(
        """
        #include <hotload.h>
        HOTLOAD_PLUGIN("fb", "1");
        HOTLOAD_API int64_t add(int64_t a, int64_t b) { return a + b; }
        HOTLOAD_EXPORT(add, int64_t, (int64_t, int64_t));
        """,
        name="fb",
    )
    script = textwrap.dedent(
        f"""
        import hotload, hotload._engine.lifecycle as v
        assert hotload.__file__.startswith({str(site)!r}), hotload.__file__
        with hotload.Host({str(tmp_path / "work")!r}, preflight=False) as host:
            p = host.load({str(plugin)!r})
            print(v.ROUTER, type(p.add).__name__, p.add(40, 2), host.reload("fb").seq, p.add(1, 2))
        """
    )
    run_env = {k: v for k, v in os.environ.items() if k != "HOTLOAD_PURE_PYTHON"}
    run_env["PYTHONPATH"] = str(site)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=run_env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "function", "42", "2", "3"]
