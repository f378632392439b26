"""Fleet rollout on Redis: publish a build once, canary it on a few hosts, widen step by
step, roll back everywhere on failure (see the fleet guide).

``from hotload import fleet``; ``fleet.publish(path)``, ``fleet.rollout(name, digest)``,
``fleet.status()``.  A host joins with ``Host(fleet=...)`` or ``host.join_fleet(...)``.
"""

from ._client import (
    Controller,
    Fleet,
    Rule,
    abort,
    connect,
    embedded,
    publish,
    resume,
    rollback,
    rollout,
    status,
)

__all__ = [
    "Controller",
    "Fleet",
    "Rule",
    "abort",
    "connect",
    "embedded",
    "publish",
    "resume",
    "rollback",
    "rollout",
    "status",
]
