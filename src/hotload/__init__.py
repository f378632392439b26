"""hotload: hot-swap C plugins inside a running Python process.

from hotload import Host

with Host() as host:
    xp = host.load("build/plugins/double_xp.so")
    xp.reward(100, 3)
    host.reload("double_xp")
"""

from typing import TYPE_CHECKING, Any

from ._errors import (
    BuildError,
    BusyError,
    CanaryRefusedError,
    ClosedError,
    ConfigError,
    ControlError,
    DescriptorError,
    FleetError,
    HandleError,
    HookError,
    HotloadError,
    InvalidPluginError,
    LoadError,
    NotAPluginError,
    NotLoadedError,
    PluginCrashedError,
    PluginQuarantinedError,
    PluginStoppedError,
    PluginTimeoutError,
    PreflightError,
    ReleaseError,
    ReplayError,
    ResourceError,
    ServiceError,
    SignatureError,
    StateMigrationError,
    TrustError,
    TypeLayoutError,
)

# Tracebacks and reprs name the path users import from (``hotload.HotloadError``,
# not ``hotload._errors.HotloadError``), as httpx does for its exceptions.
for _error in (
    BuildError,
    BusyError,
    CanaryRefusedError,
    ClosedError,
    ConfigError,
    ControlError,
    DescriptorError,
    FleetError,
    HandleError,
    HookError,
    HotloadError,
    InvalidPluginError,
    LoadError,
    NotAPluginError,
    NotLoadedError,
    PluginCrashedError,
    PluginQuarantinedError,
    PluginStoppedError,
    PluginTimeoutError,
    PreflightError,
    ReleaseError,
    ReplayError,
    ResourceError,
    ServiceError,
    StateMigrationError,
    SignatureError,
    TrustError,
    TypeLayoutError,
):
    _error.__module__ = __name__
del _error

if TYPE_CHECKING:
    from . import fleet  # noqa: F401  (hotload.fleet: fleet rollout on Redis)
    from ._about import __version__
    from ._artifact.descriptor import ABI_VERSION
    from ._engine.canary import Canary
    from ._engine.journal import Journal, JournalEntry
    from ._engine.judge import Judge
    from ._engine.lifecycle import VersionInfo, VersionState
    from ._engine.recording import RecordedCall, Recording, ServiceCall
    from ._engine.registry import Plugin
    from ._engine.release import Release
    from ._engine.replay import ReplayReport
    from ._host import Host
    from ._process.options import Isolated

# What the package's names come from, imported on first use (PEP 562).  A worker
# process runs ``python -m hotload._process.worker``, which imports this package
# first: importing Host eagerly pulled the swap engine, cffi's C parser, the
# fleet and redis into every worker and every CLI call (~0.24 s of a sandboxed
# worker's ~0.3 s start).  The errors stay eager: they are small and every layer
# raises them.
_LAZY = {
    "__version__": "._about",
    "ABI_VERSION": "._artifact.descriptor",
    "Canary": "._engine.canary",
    "Judge": "._engine.judge",
    "Journal": "._engine.journal",
    "JournalEntry": "._engine.journal",
    "VersionInfo": "._engine.lifecycle",
    "VersionState": "._engine.lifecycle",
    "Plugin": "._engine.registry",
    "Release": "._engine.release",
    "Recording": "._engine.recording",
    "RecordedCall": "._engine.recording",
    "ServiceCall": "._engine.recording",
    "ReplayReport": "._engine.replay",
    "Host": "._host",
    "Isolated": "._process.options",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "fleet":
        return importlib.import_module(".fleet", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "fleet"})


__all__ = [
    "__version__",
    "ABI_VERSION",
    "BuildError",
    "BusyError",
    "CanaryRefusedError",
    "Canary",
    "ClosedError",
    "ConfigError",
    "ControlError",
    "DescriptorError",
    "FleetError",
    "HandleError",
    "HookError",
    "Host",
    "HotloadError",
    "InvalidPluginError",
    "Isolated",
    "Journal",
    "JournalEntry",
    "Judge",
    "LoadError",
    "NotAPluginError",
    "NotLoadedError",
    "Plugin",
    "PluginCrashedError",
    "PluginQuarantinedError",
    "PluginStoppedError",
    "PluginTimeoutError",
    "PreflightError",
    "Release",
    "ReleaseError",
    "RecordedCall",
    "Recording",
    "ReplayError",
    "ReplayReport",
    "ServiceCall",
    "ResourceError",
    "ServiceError",
    "StateMigrationError",
    "SignatureError",
    "TrustError",
    "TypeLayoutError",
    "VersionInfo",
    "VersionState",
]
