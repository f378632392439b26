"""The demo's plugins: which examples it runs, where their C sources are,
and the private copies it builds and edits (never the checkout's own).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .._artifact.builder import compile_plugin
from .._errors import HotloadError
from .._platform import dl

PLUGINS = ("double_xp", "loot_drop")
ACTIVITY = "activity"  # the live-ops plugin: events, services, handles (optional when interactive)
CRASHY = "crashy"  # --isolate: an isolated plugin that crashes on purpose in a call
CRASHY_SRC = r"""
#include <hotload.h>
HOTLOAD_PLUGIN("crashy", "1.0.0");
HOTLOAD_API int32_t ping(int32_t x) { return x + 1; }
HOTLOAD_EXPORT(ping, int32_t, (int32_t));
HOTLOAD_API int32_t boom(void) { volatile int *p = 0; *p = 1; return 0; } /* on purpose */
HOTLOAD_EXPORT(boom, int32_t, (void));
"""


def example_sources_dir() -> Path:
    """The example plugins' C sources: the checkout's ``native/plugins``
    when running from source, else the copy shipped in the package."""
    here = Path(__file__).resolve().parents[1]  # the hotload package
    for candidate in (here.parent.parent / "native" / "plugins", here / "sdk" / "plugins"):
        if all((candidate / f"{name}.c").is_file() for name in PLUGINS):
            return candidate
    raise HotloadError(
        f"the example plugin sources ({', '.join(PLUGINS)}) are not installed next to {here}"
    )


def interactive_sources(src: Path | None) -> tuple[Path, str | None]:
    """What ``--interactive`` watches, and a note to show: ``src`` when
    given, the checkout's own examples when writable, else copies of the
    installed ones (which a person cannot edit) in a temporary directory."""
    if src is not None:
        return src, None
    examples = example_sources_dir()
    if os.access(examples, os.W_OK) and examples.parts[-2:] == ("native", "plugins"):
        return examples, None
    copy = Path(tempfile.mkdtemp(prefix="hotload-demo-src-"))
    for name in PLUGINS:
        shutil.copy2(examples / f"{name}.c", copy / f"{name}.c")
    return copy, f"  (the installed examples are read-only: editing copies in {copy})"


def build_examples(workspace: Path, *, isolate: bool) -> tuple[Path, Path]:
    """Copy the example sources into ``workspace/src`` and build them into
    ``workspace/build`` (and ``crashy`` next to them for ``--isolate``):
    the scripted run edits those copies, so the checkout stays as it is."""
    src, build = workspace / "src", workspace / "build"
    src.mkdir()
    for name in (*PLUGINS, ACTIVITY):
        shutil.copy2(example_sources_dir() / f"{name}.c", src / f"{name}.c")
        compile_plugin(src / f"{name}.c", build / f"{name}{dl.SUFFIX}")
    if isolate:
        (workspace / f"{CRASHY}.c").write_text(CRASHY_SRC)
        compile_plugin(workspace / f"{CRASHY}.c", workspace / f"{CRASHY}{dl.SUFFIX}")
    return src, build
