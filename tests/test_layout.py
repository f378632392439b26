"""The shape of the package: one folder per concept, data flowing one way.

The import graph is read from the source (every import at any depth, lazy ones
included), so a shortcut taken inside a function counts as much as one at the
top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import hotload

SRC = Path(hotload.__file__).parent
ROOT = SRC.parent.parent

# The front door: the public package, the Host façade, the command line.  Everything
# else is "below" and must never reach back up into it.
FACADE = {"hotload", "hotload.__main__", "hotload._host"}
# Modules that exist on one OS only (or behave so differently that using them is
# a platform decision): only ``_platform`` may import them.
OS_SPECIFIC = {"fcntl", "termios", "msvcrt", "winreg", "_winapi", "resource", "pwd", "grp"}
OS_SPECIFIC |= {"posix", "nt", "select", "ctypes.wintypes"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = [p for p in path.relative_to(SRC).with_suffix("").parts if p != "__init__"]
        out[".".join(["hotload", *parts])] = path
    return out


def _imports(mod: str, path: Path, modules: set[str]) -> set[str]:
    """Every module ``mod`` imports (hotload's own resolved to full names).

    ``from pkg import name`` depends on ``pkg.name`` when that is a module, and
    on ``pkg`` itself otherwise."""
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = node.module or ""
            if node.level:
                target = f"{base}.{node.module}" if node.module else base
            subs = {f"{target}.{a.name}" for a in node.names}
            deps |= (subs & modules) or {target}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names}
    return deps


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {
        m: {d for d in _imports(m, p, set(mods)) if d in mods and d != m} for m, p in mods.items()
    }


def _is_facade(mod: str) -> bool:
    return mod in FACADE or mod.startswith("hotload._cli")


def test_nothing_below_the_facade_imports_it() -> None:
    for mod, deps in _graph().items():
        if not _is_facade(mod):
            up = sorted(d for d in deps if _is_facade(d))
            assert not up, f"{mod} reaches back up into {up}"


def test_no_import_cycle() -> None:
    graph = _graph()
    below = {m: {d for d in deps if d != "hotload"} for m, deps in graph.items() if m != "hotload"}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(below.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, m, d]))
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(below):
        if m not in state:
            visit(m, [])


def test_only_the_platform_layer_imports_os_specific_modules() -> None:
    mods = _modules()
    for mod, path in mods.items():
        if mod.startswith("hotload._platform"):
            continue
        used = sorted(_imports(mod, path, set(mods)) & OS_SPECIFIC)
        assert not used, f"{mod} imports {used}: that belongs in hotload._platform"


def test_the_top_level_is_only_the_front_door() -> None:
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "_about.py", "_errors.py", "_host.py"], top


def test_every_module_is_one_job() -> None:
    """No module grows past ~700 lines: by then it holds more than one job.
    The façade, _host.py, only delegates: most of it is the public API's
    docstrings, one per operation, so it is held to its code instead: past
    400 lines of code (docstrings, comments and blank lines aside), an
    operation's logic has crept into it."""
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if path.name == "_host.py":
            lines = _code_lines(text)
            assert lines <= 400, f"_host.py: {lines} lines of code, more than delegation"
            continue
        lines = len(text.splitlines())
        assert lines <= 750, f"{path.relative_to(SRC)}: {lines} lines, more than one job"


def _code_lines(text: str) -> int:
    """Lines of a module that are not docstrings, comments or blank."""
    import ast

    docs: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docs.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    return sum(
        1
        for i, line in enumerate(text.splitlines(), 1)
        if i not in docs and line.strip() and not line.strip().startswith("#")
    )


def test_every_exception_class_lives_in_errors() -> None:
    for path in SRC.rglob("*.py"):
        if path.name == "_errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not any(b.endswith("Error") or b == "Exception" for b in bases), (
                    f"{path.name}: exception {node.name} belongs in _errors.py"
                )


def _design_tree() -> set[str]:
    """The files docs/design.md's tree names, as paths under src/hotload/ (a
    line ending in ``/`` opens a folder; indentation closes it)."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("<!-- package-tree -->")[1]
    stack: list[tuple[int, str]] = []
    files = set()
    for line in block.splitlines():
        name = line.strip().split(" ")[0]
        if not name or name.startswith("`"):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
        else:
            files.add("/".join([s for _, s in stack[1:]] + [name]))  # [0] is src/hotload
    return files


def test_the_design_page_lists_every_module() -> None:
    """docs/design.md holds one tree of the package: it names every module that
    exists (package ``__init__`` files aside), and nothing that does not."""
    listed = _design_tree()
    have = {
        str(p.relative_to(SRC))
        for p in [*SRC.rglob("*.py"), *SRC.rglob("*.c")]
        if p.name != "__init__.py" or p.parent == SRC
    }
    assert sorted(have - listed) == [], "not in docs/design.md"
    assert sorted(listed - have) == [], "in docs/design.md but gone"


def test_a_worker_process_imports_only_what_it_runs() -> None:
    """A worker runs ``python -m hotload._process.worker``, which imports the
    package first: the package's names load on first use, so a worker (and
    every sandboxed spare) starts without the host, the fleet, redis or
    prometheus (they made ~0.24 s of a worker's ~0.3 s start)."""
    import subprocess
    import sys

    probe = "import hotload._process.worker, sys; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    heavy = {"hotload._host", "hotload.fleet", "redis", "prometheus_client", "hotload._ops"}
    assert sorted(heavy & set(out)) == []
    # and the names are all still there, on first use
    names = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hotload; print([getattr(hotload, n).__class__.__name__"
            " for n in [*hotload.__all__, 'fleet']])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "module" in names and "type" in names


def test_public_errors_are_named_by_their_public_path() -> None:
    """A traceback says ``hotload.HotloadError``, the name the docs use and
    users import (it said ``hotload._errors.HotloadError``: new-user review),
    and the exceptions still pickle."""
    import pickle
    import traceback

    import hotload

    errors = [n for n in hotload.__all__ if n.endswith("Error")]
    assert len(errors) >= 20
    for name in errors:
        assert getattr(hotload, name).__module__ == "hotload", name
    for exc in (hotload.HotloadError("x"), hotload.SignatureError("y")):
        assert type(pickle.loads(pickle.dumps(exc))) is type(exc)
    try:
        raise hotload.SignatureError("price changed")
    except hotload.HotloadError as exc:
        shown = "".join(traceback.format_exception_only(type(exc), exc))
    assert shown == "hotload.SignatureError: price changed\n"
