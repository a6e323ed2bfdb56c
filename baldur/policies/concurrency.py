"""Concurrency limit (bulkhead, backpressure): how many calls may be in flight at once.

Pure rules; the stores keep the counters and hold the lock.
"""

from __future__ import annotations

from baldur.errors import ConfigError

__all__ = ["SHED_RETRY_AFTER", "admits", "check_limit"]

#: What a shed call is told: a saturated worker usually drains within a second.
SHED_RETRY_AFTER = 1.0


def check_limit(value: object, setting: str = "max_concurrency") -> int | None:
    """Validate a concurrency ceiling: a whole number ≥ 1, or ``None`` for no ceiling."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(setting, value, f"{setting}=32", "a whole number ≥ 1, or None for no ceiling")
    return value


def admits(in_flight: int, limit: int | None) -> bool:
    """One more call may start while ``in_flight`` calls run under ``limit``."""
    return limit is None or in_flight < limit
