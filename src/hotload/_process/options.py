"""``Isolated``: how an isolated plugin runs, in one object.

``load(path, isolate=Isolated(on_crash="rollback", call_timeout=0.5))``;
``isolate=True`` means ``Isolated()`` (the defaults: sandboxed).  Every field is checked
when the object is made, so a typo in a limit's name or a value the kernel
would refuse is an error at ``load`` that names it, not a worker that dies later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._errors import ConfigError

ON_CRASH = ("restart", "rollback", "stop")
LIMITS = {
    "address_space": "bytes of virtual memory (RLIMIT_AS), at least 64 MiB",
    "cpu_seconds": "seconds of CPU time (RLIMIT_CPU), at least 1",
    "nice": "a niceness increment from 0 to 19",
}
_MIN = {"address_space": 64 << 20, "cpu_seconds": 1, "nice": 0}
#: The most spare workers a plugin may ask for: each is an idle process and
#: its memory (~20-30 MB here), for a burst of reloads or crashes.
MAX_SPARES = 8
#: One input's crashes in a row count once toward the crash loop, so this many
#: crashes of one input can come before anything stops it: keep it small.
MAX_QUARANTINE = 16
#: The most calls one worker serves at once (``threads``): lane 0 and the lanes after it in
#: the shared mapping (``wire.MAX_LANES``), each served by a thread of the worker's own.
MAX_THREADS = 16


@dataclass(frozen=True)
class Isolated:
    """Run each version of a plugin in its own worker process.

    ``on_crash``: what serves after a crash: ``"restart"`` (a fresh worker
    of the same build), ``"rollback"`` (the previous build) or ``"stop"``.
    ``call_timeout``: seconds a call may take before its worker is killed
    (None or ``inf``: no bound; 1e9 s or more is none either).
    ``max_restarts`` crashes within ``restart_window`` seconds stop the
    restarts.  ``limits``: the kernel's limits on the
    worker: ``address_space`` (bytes), ``cpu_seconds``, ``nice``.
    ``sandbox``: the worker cannot reach this process (its memory, its
    signals, its files; see the Security page); ``False`` opts out, for a
    plugin that needs what the sandbox takes away (logged at every load).
    ``spares``: workers kept started and idle (0 to ``MAX_SPARES``), so a
    restart or a reload takes one instead of starting an interpreter; the
    host keeps the largest number its loaded isolated plugins ask for, per
    kind (sandboxed or not), and replaces each spare as soon as it is taken.
    0: none, every worker starts on demand (~0.3-0.6 s here).
    ``quarantine``: an input (an export and its arguments) that crashed or
    hung the worker this many times is refused from then on, at once, with
    ``PluginQuarantinedError``, while every other input is served; the
    crash loop counts one input's crashes in a row once, so one bad input
    cannot stop the plugin for everyone.  0 to 16; 0: no quarantine (every
    crash counts).
    ``threads``: how many calls of numbers the worker serves at once, each in a
    thread of its own (1 to ``MAX_THREADS``; 1: one call at a time, calls from
    several threads queue).  Calls from several host threads then run in the
    plugin at once, as they do in process: the plugin must be thread-safe.
    ``zygote``: False starts this plugin's workers (and its spares) as fresh
    interpreters, not forks of the kind's zygote, so they share no address
    layout, stack canary or hash secret with other plugins' workers (a plugin
    that parses hostile input; each start costs a fresh interpreter's time).
    ``HOTLOAD_ZYGOTE=0`` does that for every plugin."""

    on_crash: str = "restart"
    call_timeout: float | None = None
    max_restarts: int = 5
    restart_window: float = 60.0
    limits: Mapping[str, int] = field(default_factory=dict)
    sandbox: bool = True
    spares: int = 1
    quarantine: int = 2
    threads: int = 4
    zygote: bool = True

    def __post_init__(self) -> None:
        if self.on_crash not in ON_CRASH:
            raise ConfigError(
                f"on_crash must be one of {', '.join(ON_CRASH)}, not {self.on_crash!r}"
            )
        if self.call_timeout is not None:
            _positive("call_timeout", self.call_timeout)
            if self.call_timeout == math.inf:  # no bound, as None
                object.__setattr__(self, "call_timeout", None)
        _positive("restart_window", self.restart_window)
        if not _is_int(self.max_restarts) or self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be an integer >= 0, not {self.max_restarts!r}")
        object.__setattr__(self, "limits", check_limits(self.limits))
        if not isinstance(self.sandbox, bool):
            raise ConfigError(f"sandbox must be True or False, not {self.sandbox!r}")
        if not _is_int(self.quarantine) or not 0 <= self.quarantine <= MAX_QUARANTINE:
            raise ConfigError(
                f"quarantine must be an integer from 0 to {MAX_QUARANTINE} (crashes of one "
                f"input in a row before it is refused; 0: never), not {self.quarantine!r}"
            )
        if not _is_int(self.spares) or not 0 <= self.spares <= MAX_SPARES:
            raise ConfigError(
                f"spares must be an integer from 0 to {MAX_SPARES} (idle workers kept ready), "
                f"not {self.spares!r}"
            )
        if not isinstance(self.zygote, bool):
            raise ConfigError(f"zygote must be True or False, not {self.zygote!r}")
        if not _is_int(self.threads) or not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(
                f"threads must be an integer from 1 to {MAX_THREADS} (calls one worker serves "
                f"at once; 1: one at a time), not {self.threads!r}"
            )


def check_limits(limits: object) -> dict[str, int]:
    """``limits`` as a plain dict, or a ``ConfigError`` naming the key at fault."""
    if not isinstance(limits, Mapping):
        raise ConfigError(f"limits must be a mapping of {', '.join(LIMITS)}, not {limits!r}")
    out = {}
    for key, value in limits.items():
        if key not in LIMITS:
            known = "; ".join(f"{k}: {v}" for k, v in LIMITS.items())
            raise ConfigError(f"limits: unknown limit {key!r} (known: {known})")
        if not _is_int(value) or value < _MIN[key] or (key == "nice" and value > 19):
            raise ConfigError(f"limits[{key!r}] must be {LIMITS[key]}, not {value!r}")
        out[key] = int(value)
    return out


def options(isolate: bool | Isolated) -> Isolated | None:
    """What ``load(isolate=...)`` asked for: None for in process."""
    if isinstance(isolate, Isolated):
        return isolate
    if isinstance(isolate, bool):
        return Isolated() if isolate else None
    raise ConfigError(f"isolate must be True, False or an Isolated(...), not {isolate!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not value > 0:  # type: ignore[operator]
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
