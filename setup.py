"""Ship the plugin SDK inside the package, from its one true copy.

``native/include/hotload.h`` and ``native/plugins/*.c`` are the SDK header
and the example plugins.  ``hotload cflags`` and ``hotload demo`` need them
in an installed package too, as ``hotload/sdk/include`` and
``hotload/sdk/plugins`` (``builder.sdk_include_dir`` looks there).  Rather
than commit copies that can drift, ``build_py`` copies them into the build
tree, so every wheel (``pip install .``, ``python -m build``) carries the
exact files of its checkout.  An editable install needs nothing: it finds
the checkout's ``native/`` directly.  All metadata stays in pyproject.toml.

``hotload._engine._crouter`` is the compiled router (``src/hotload/_engine/_crouter.c``).  It
is optional: without a working C compiler the build prints a warning and the
package installs anyway, with the Python router (``hotload info`` says which
one runs).  ``HOTLOAD_PURE_PYTHON=1`` at build time skips it altogether.
``hotload._state._convert`` (``src/hotload/_state/_convert.c``) is optional the
same way: one loop for a typed state's integer array whose type changed.
"""

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SDK = {"include": "native/include/*.h", "plugins": "native/plugins/*.c"}


class BuildPyWithSdk(build_py):
    def run(self) -> None:
        super().run()
        for sub, pattern in SDK.items():
            files = sorted(ROOT.glob(pattern))
            if not files:
                raise SystemExit(f"hotload: no {pattern} to ship as hotload/sdk/{sub}")
            dest = Path(self.build_lib) / "hotload" / "sdk" / sub
            self.mkpath(str(dest))
            for src in files:
                self.copy_file(str(src), str(dest / src.name))


CROUTER = Extension(
    "hotload._engine._crouter",
    sources=["src/hotload/_engine/_crouter.c"],
    optional=True,  # no compiler: install with the Python router
)
CONVERT = Extension(
    "hotload._state._convert",
    sources=["src/hotload/_state/_convert.c"],
    optional=True,  # no compiler: typed state widens arrays with memoryview copies
)
SPIN = Extension(
    "hotload._process._spin",
    sources=["src/hotload/_process/_spin.c"],
    optional=True,  # no compiler: isolated calls wait in Python (wire.py, serving.py)
)
PURE = os.environ.get("HOTLOAD_PURE_PYTHON", "") not in ("", "0")

setup(cmdclass={"build_py": BuildPyWithSdk}, ext_modules=[] if PURE else [CROUTER, CONVERT, SPIN])
