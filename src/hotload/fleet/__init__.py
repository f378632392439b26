"""Fleet rollout on Redis: publish a build once, canary it on a few hosts, widen step by
step, roll back everywhere on failure (see the fleet guide).

``from hotload import fleet``; ``fleet.publish(path)``, ``fleet.rollout(name, digest)``,
``fleet.status()``; ``fleet.release({name: digest, ...}, at=...)`` switches several plugins
on every host at one instant (the Releases page).  A host joins with ``Host(fleet=...)``
or ``host.join_fleet(...)``.
"""

from ._client import (
    Fleet,
    abort,
    cancel_release,
    publish,
    release,
    resign,
    resume,
    rollback,
    rollout,
    status,
)
from ._connection import connect, embedded
from ._controller import Controller
from ._schema import Rule

__all__ = [
    "Controller",
    "Fleet",
    "Rule",
    "abort",
    "cancel_release",
    "connect",
    "embedded",
    "publish",
    "release",
    "resign",
    "resume",
    "rollback",
    "rollout",
    "status",
]
