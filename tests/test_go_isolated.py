"""A real Go c-shared library: what ``hotload inspect`` advises and what
``hotload ls`` says keeps each version in memory (issue 19, item 14).

In process a Go library never leaves (NODELETE, its runtime's threads); the
project's own answer is ``load(isolate=True)``, whose worker's exit is the
unload.  So ``inspect`` must name that fix, and an isolated version must not
be reported as held by an in-process unload blocker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hotload import Host

from conftest import build_go_plugin

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain")


@pytest.fixture(scope="module")
def go_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go plugin, built once for this module with ``-buildmode=c-shared``."""
    return build_go_plugin(tmp_path_factory.mktemp("go"))


def hotload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotload", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_inspect_on_a_go_library_names_load_isolate(go_lib: Path) -> None:
    human = hotload("inspect", str(go_lib))
    assert human.returncode == 0, human.stderr
    assert "go-runtime" in human.stdout
    assert "isolate=True" in human.stdout, human.stdout
    assert "restart the process" not in human.stdout
    assert "none in the plugin" not in human.stdout
    report = json.loads(hotload("inspect", "--json", str(go_lib)).stdout)
    (blocker,) = report["unload_blockers"]
    assert blocker["code"] == "go-runtime"
    assert "load(..., isolate=True)" in blocker["fix"]


def _ls_rows(socket_path: str) -> list[str]:
    out = hotload("ls", "--socket", socket_path)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("gox ")]


def test_ls_shows_no_in_process_blocker_on_an_isolated_go_version(
    go_lib: Path, tmp_path: Path, short_tmp: Path
) -> None:
    """Isolated, every version of the Go plugin (the live one and the one a
    reload stopped) leaves memory with its worker: WHY is empty.  In process
    the same file is held by its runtime, and WHY says so."""
    with Host(tmp_path / "iso", preflight=False) as h:
        server = h.serve_control(directory=short_tmp / "ctl-iso")
        p = h.load(go_lib, isolate=True)
        h.reload("gox")
        assert h.settle(30.0)
        assert p.Add(2, 3) == 5
        infos = h.versions("gox")
        assert [v.state for v in infos] == ["unloaded", "active"]
        assert all(v.isolated and v.blockers == () for v in infos), infos
        rows = _ls_rows(str(server.path))
        assert len(rows) == 2
        assert not any("go-runtime" in row for row in rows), rows
    with Host(tmp_path / "in", preflight=False) as h:
        server = h.serve_control(directory=short_tmp / "ctl-in")
        h.load(go_lib)
        assert h.versions("gox")[-1].blockers == ("go-runtime",)
        (row,) = _ls_rows(str(server.path))
        assert "go-runtime" in row
