"""A host's settings, fixed when it starts.

``Host(...)`` takes them as keyword arguments and hands this frozen object down
to the parts that read them (the swap, the records, the reaper), so nothing
below the host ever reads an option back from it, and an option cannot change
under a swap in progress.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._artifact.loader import MAX_STATE_SIZE
from .metrics import DEFAULT_SAMPLE


@dataclass(frozen=True)
class Settings:
    """What a swap, a plugin's record and the reaper read of the host's options
    (``Host`` documents each one)."""

    preflight: bool = True
    preflight_timeout: float = 5.0
    quiesce_timeout: float = 0.5
    hook_timeout: float | None = 10.0
    max_state_size: int = MAX_STATE_SIZE
    keep_versions: int = 8
    history_limit: int = 64
    journal_size: int = 1000  # entries the swap journal keeps (journal.py)
    metrics: bool = True  # count every routed call per version and export (metrics.py)
    metrics_sample: int = DEFAULT_SAMPLE  # time one call in N per export (random gaps)

    @property
    def sample(self) -> int:
        """What a version's gate is given: one call in N timed; 0: no metrics."""
        return self.metrics_sample if self.metrics else 0

    def __post_init__(self) -> None:
        _seconds("preflight_timeout", self.preflight_timeout)
        _seconds("quiesce_timeout", self.quiesce_timeout, zero=True)  # 0: take state at once
        if self.hook_timeout is not None:
            _seconds("hook_timeout", self.hook_timeout)
        for field in (
            "max_state_size",
            "keep_versions",
            "history_limit",
            "metrics_sample",
            "journal_size",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, not {value!r}")


def _seconds(field: str, value: object, *, zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value >= 0 if zero else value > 0):  # type: ignore[operator]
        raise ValueError(f"{field} must be a positive number of seconds, not {value!r}")
