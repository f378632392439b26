"""hotload: hot-swap C plugins inside a running Python process.

from hotload import Host

with Host() as host:
    xp = host.load("build/plugins/double_xp.so")
    xp.reward(100, 3)
    host.reload("double_xp")
"""

from . import _fleet as fleet  # noqa: F401  (fleet rollout on Redis: fleet.publish, ...)
from ._builder import BuildError
from ._control import ControlError
from ._descriptor import ABI_VERSION
from ._errors import (
    ClosedError,
    DescriptorError,
    HookError,
    HotloadError,
    InvalidPluginError,
    LoadError,
    NotLoadedError,
    SignatureError,
)
from ._host import Host
from ._preflight import PreflightError
from ._registry import Plugin, VersionInfo
from ._trust import TrustError

__all__ = [
    "ABI_VERSION",
    "BuildError",
    "ClosedError",
    "ControlError",
    "DescriptorError",
    "HookError",
    "Host",
    "HotloadError",
    "InvalidPluginError",
    "LoadError",
    "NotLoadedError",
    "Plugin",
    "PreflightError",
    "SignatureError",
    "TrustError",
    "VersionInfo",
]
__version__ = "0.1.0"
