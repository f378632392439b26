"""hotload: hot-swap C plugins inside a running Python process.

from hotload import Host

with Host() as host:
    xp = host.load("build/plugins/double_xp.so")
    xp.reward(100, 3)
    host.reload("double_xp")
"""

from . import fleet  # noqa: F401  (fleet rollout on Redis: fleet.publish, ...)
from ._about import __version__
from ._artifact.descriptor import ABI_VERSION
from ._engine.lifecycle import VersionInfo, VersionState
from ._engine.registry import Plugin
from ._errors import (
    BuildError,
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
    PluginStoppedError,
    PluginTimeoutError,
    PreflightError,
    ResourceError,
    ServiceError,
    SignatureError,
    TrustError,
    TypeLayoutError,
)
from ._host import Host
from ._process.options import Isolated

__all__ = [
    "__version__",
    "ABI_VERSION",
    "BuildError",
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
    "LoadError",
    "NotAPluginError",
    "NotLoadedError",
    "Plugin",
    "PluginCrashedError",
    "PluginStoppedError",
    "PluginTimeoutError",
    "PreflightError",
    "ResourceError",
    "ServiceError",
    "SignatureError",
    "TrustError",
    "TypeLayoutError",
    "VersionInfo",
    "VersionState",
]
