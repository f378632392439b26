"""Every complete plugin the documentation shows compiles without a warning
and swaps cleanly.

A complete plugin is a ```c or ```cpp block, or a shell heredoc writing a
``.c``/``.cpp`` file (the README's quickstart), that declares
``HOTLOAD_PLUGIN``.  Each is built the way its page says (C: ``-std=c11``;
C++: ``hotload cflags --cxx`` with ``-fno-gnu-unique`` for g++) plus
``-Wall -Wextra -Werror``, with every compiler at hand: clang++ warned about
the SDK page's ``extern "C" HOTLOAD_API`` where g++ did not.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hotload import Host
from hotload._artifact.builder import sdk_include_dir

ROOT = Path(__file__).resolve().parent.parent
# Go and Rust plugins: its desc.c files are half a plugin each; built as the page says below.
OTHER_LANGUAGES = ROOT / "docs/guide/go-and-rust.md"
PAGES = [
    p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))] if p != OTHER_LANGUAGES
]
FENCE = re.compile(r"^```(c|cpp)\n(.*?)^```", re.M | re.S)
HEREDOC = re.compile(r"^cat > \S+\.(c|cpp) <<'(\w+)'\n(.*?)^\2$", re.M | re.S)
COMPILERS = {"c": ("cc", "gcc", "clang"), "cpp": ("g++", "clang++")}


def examples() -> list[tuple[str, str, str]]:
    """(where, language, source) of each complete plugin in the docs."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        blocks = [(m.start(), m.group(1), m.group(2)) for m in FENCE.finditer(text)]
        blocks += [(m.start(), m.group(1), m.group(3)) for m in HEREDOC.finditer(text)]
        for start, lang, source in blocks:
            if "HOTLOAD_PLUGIN(" in source:
                line = text.count("\n", 0, start) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", lang, source))
    return found


EXAMPLES = examples()


def test_the_docs_have_complete_examples_in_c_and_cpp() -> None:
    where = {w.split(":")[0] for w, _, _ in EXAMPLES}
    assert {"README.md", "docs/guide/sdk.md"} <= where, where
    assert {lang for _, lang, _ in EXAMPLES} == {"c", "cpp"}


@pytest.mark.parametrize(
    "where, lang, source, compiler",
    [(w, lang, src, cc) for w, lang, src in EXAMPLES for cc in COMPILERS[lang]],
    ids=lambda v: v if isinstance(v, str) and "\n" not in v and len(v) < 40 else "",
)
def test_a_documented_plugin_builds_clean_and_swaps(
    where: str, lang: str, source: str, compiler: str, tmp_path: Path
) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")
    src = tmp_path / f"plugin.{lang}"
    src.write_text(source)
    so = tmp_path / "plugin.so"
    std = ["-std=c++17"] if lang == "cpp" else ["-std=c11"]
    unique = ["-fno-gnu-unique"] if compiler == "g++" else []
    flags = [f"-I{sdk_include_dir()}", *std, "-fPIC", "-shared", *unique]
    cmd = [compiler, *flags, "-Wall", "-Wextra", "-Werror", str(src), "-o", str(so)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0 and built.stderr == "", f"{where}: {built.stderr}"
    with Host(tmp_path / "work") as host:
        cand = host.read(so)
        for imp in cand.descriptor.imports if cand.descriptor else ():  # a documented importer
            host.provide(imp.name, lambda *args: 0, imp.signature)  # gets stand-in services
        host.load(cand)
        name = cand.name
        host.reload(name)
        host.settle(30)
        states = [v.state for v in host.versions(name)]
        assert states == ["unloaded", "active"], (where, host.versions(name))


def test_the_contract_pages_complete_example_runs_as_written(tmp_path: Path) -> None:
    """Found by a new user: the host side loaded a path no build step made.
    The page's C and Python blocks, built and run as the page says."""
    import sys

    text = (ROOT / "docs/guide/contract.md").read_text(encoding="utf-8")
    part = text[text.index("## A complete example") :]
    c_src = FENCE.search(part).group(2)  # type: ignore[union-attr]
    py_src = re.search(r"^```python\n(.*?)^```", part, re.M | re.S).group(1)  # type: ignore[union-attr]
    (tmp_path / "activity.c").write_text(c_src)
    flags = subprocess.run(
        [sys.executable, "-m", "hotload", "cflags"], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(["cc", *flags, "activity.c", "-o", "activity.so"], cwd=tmp_path, check=True)
    out = subprocess.run(
        [sys.executable, "-c", py_src], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[3]"


def page_section(page: Path, heading: str) -> str:
    text = page.read_text(encoding="utf-8")
    part = text[text.index(f"\n{heading}\n") :]
    end = part.find("\n## ", 1)
    return part if end < 0 else part[:end]


@pytest.mark.parametrize("section, tool", [("## Go", "go"), ("## Rust", "rustc")])
def test_the_go_and_rust_plugins_build_and_run_as_written(
    section: str, tool: str, tmp_path: Path
) -> None:
    """Found by a new user: no page said how to build a Go or Rust plugin.  The
    page's files (each block's first line names it), its shell commands, then
    its Python, run as written: the output is the page's "Real output"."""
    import os
    import sys

    if shutil.which(tool) is None:
        pytest.skip(f"no {tool} (.ci/sdk-deps.sh installs golang-go and rustc)")
    part = page_section(OTHER_LANGUAGES, section)
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", part, re.M | re.S)
    files = {}
    for lang, body in blocks:
        named = re.match(r"(?://|/\*) (\S+\.(?:go|c|rs))\b", body)
        if lang in ("go", "c", "rust"):
            assert named, f"{section}: a {lang} block whose first line does not name its file"
            files[named.group(1)] = body
    assert {"desc.c"} < set(files), files
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GOPROXY": "off",  # nothing is fetched: the example has no dependencies
    }
    if "HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(tmp_path / "gocache")
    (build,) = [body for lang, body in blocks if lang == "sh"]
    built = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", build],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    inspected = subprocess.run(
        [sys.executable, "-m", "hotload", "inspect", "--json", "pricing.so"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(inspected.stdout)
    assert report["plugin"]["name"] == "pricing", report  # the descriptor made it in
    # What the page says: Go never unloads (hence isolate=True), this Rust plugin does
    go_runtime = [f for f in report["unload_blockers"] if f["code"] == "go-runtime"]
    assert bool(go_runtime) == (tool == "go") and report["unloads"] == (tool != "go"), report
    (code,) = [body for lang, body in blocks if lang == "python"]
    shown = re.search(r"^Real output:\n\n```\n(.*?)^```", part, re.M | re.S).group(1)  # type: ignore[union-attr]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == shown


def test_the_contract_pages_configuration_example_runs_as_written(tmp_path: Path) -> None:
    """The configuration step (a handle from a service, asked for in on_load):
    the page's C and Python blocks, built and run as the page says, print
    what the page's comments say."""
    import sys

    text = (ROOT / "docs/guide/contract.md").read_text(encoding="utf-8")
    part = text[text.index("## Configuration at start-up") :]
    part = part[: part.index("\n## ")]
    c_src = FENCE.search(part).group(2)  # type: ignore[union-attr]
    py_src = re.search(r"^```python\n(.*?)^```", part, re.M | re.S).group(1)  # type: ignore[union-attr]
    shown = re.findall(r"^ *print\(.*\) +# (\d+)\b", py_src, re.M)
    assert len(shown) == 2, py_src
    (tmp_path / "quests.c").write_text(c_src)
    flags = subprocess.run(
        [sys.executable, "-m", "hotload", "cflags"], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(["cc", *flags, "quests.c", "-o", "quests.so"], cwd=tmp_path, check=True)
    out = subprocess.run(
        [sys.executable, "-c", py_src], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == shown


def test_getting_starteds_python_api_prints_its_real_output(
    example_plugins: dict[str, Path], tmp_path: Path
) -> None:
    """The ten lines of "The Python API in ten lines", run as written (from a
    directory with ``build/plugins/double_xp.so``), print the page's output."""
    import sys

    text = (ROOT / "docs/guide/getting-started.md").read_text(encoding="utf-8")
    part = text[text.index("## The Python API in ten lines") :]
    code = re.search(r"^```python\n(.*?)^```", part, re.M | re.S).group(1)  # type: ignore[union-attr]
    shown = re.search(r"^Real output:\n\n```\n(.*?)^```", part, re.M | re.S).group(1)  # type: ignore[union-attr]
    (tmp_path / "run/build/plugins").mkdir(parents=True)
    shutil.copy(example_plugins["double_xp"], tmp_path / "run/build/plugins/double_xp.so")
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path / "run",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == shown


# What each step of `make test` is called where the README says what it runs.
MAKE_STEPS = {
    "pip": "installs hotload",
    "build.py": "builds the plugins",
    "ruff": "ruff (check, format)",
    "mypy": "mypy",
    "mkdocs": "the docs build",
    "pytest": "pytest",
    "HOTLOAD_PURE_PYTHON=1": "again on the Python router",
}


def make_steps(target: str) -> set[str]:
    """The tools ``make TARGET`` runs, from the Makefile: its prerequisites and
    the targets its recipe runs with ``$(MAKE)`` too, variables expanded."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", makefile, re.M))
    rules = {
        m.group(1): (m.group(2).split(), m.group(3))
        for m in re.finditer(r"^([$()\w.-]+):([^=\n]*)\n((?:\t.*\n)*)", makefile, re.M)
    }
    deps, recipe = rules[target]
    for _ in range(3):  # $(PYTEST) -> $(VPY) -m pytest ... -> ...
        recipe = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), recipe)
    steps = re.findall(r"-m (\w+)|python\S* (\w+\.py)\b|(HOTLOAD_\w+=\S+)", recipe)
    found = {s for group in steps for s in group if s}
    called = re.findall(r"\$\(MAKE\)(?: --?[\w-]+)* ([\w-]+)", rules[target][1])
    for dep in [*deps, *called]:
        if dep in rules:  # not a file
            found |= make_steps(dep)
    return found


def test_the_readme_says_what_make_test_runs() -> None:
    """Found by a new user: the README said `make test` runs "ruff, the docs build
    and pytest"; it runs mypy too.  Every tool the Makefile's test target runs
    (prerequisites included) is named where the README and getting-started say
    what `make test` does."""
    steps = make_steps("test") - {"venv"}
    assert {"ruff", "mypy", "mkdocs", "pytest"} <= steps, steps
    unknown = steps - set(MAKE_STEPS)
    assert not unknown, f"make test runs {unknown}: name it in MAKE_STEPS and the README"
    for page in ("README.md", "docs/guide/getting-started.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        block = re.search(r"^make demo .*\n(?:.*\n)*?make test .*\n(?: +#.*\n)*", text, re.M)
        assert block, f"{page}: no make demo / make test lines"
        said = " ".join(block.group(0).replace("#", " ").split())
        missing = [MAKE_STEPS[s] for s in sorted(steps) if MAKE_STEPS[s] not in said]
        assert not missing, f"{page} does not say that make test runs {missing}: {said}"
