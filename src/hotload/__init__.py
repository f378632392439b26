"""hotload: hot-swap C plugins inside a running Python process.

    from hotload import Host

    with Host() as host:
        xp = host.load("build/plugins/double_xp.so")
        xp.reward(100, 3)
        host.reload("double_xp")
"""

from .descriptor import ABI_VERSION
from .errors import (
    ClosedError,
    DescriptorError,
    HookError,
    HotloadError,
    InvalidPluginError,
    LoadError,
    NotLoadedError,
    SignatureError,
)
from .host import Host
from .registry import Plugin, VersionInfo

__all__ = [
    "ABI_VERSION",
    "ClosedError",
    "DescriptorError",
    "HookError",
    "Host",
    "HotloadError",
    "InvalidPluginError",
    "LoadError",
    "NotLoadedError",
    "Plugin",
    "SignatureError",
    "VersionInfo",
]
__version__ = "0.1.0"
