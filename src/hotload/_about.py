"""The package's version, read from its installed metadata (pyproject.toml is the
one place it is written), so ``hotload.__version__``, ``hotload --version`` and a
fleet host's report can never disagree with what pip installed."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hotload")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
