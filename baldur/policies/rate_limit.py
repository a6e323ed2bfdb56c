"""Rate limiting with GCRA (the generic cell rate algorithm), as a pure function.

One number per key, the theoretical arrival time (TAT), is the whole state:
constant memory, no background refill. ``RateLimit("100/minute")`` emits one
unit of quota every 0.6 s and tolerates a burst of 100; ``burst=10`` makes it
smoother. The answer carries everything the HTTP headers need
(remaining, retry_after, next_after), so they cost nothing extra.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from baldur.errors import ConfigError

__all__ = ["RateDecision", "RateLimit", "gcra"]

_UNITS = {
    "second": 1.0, "seconds": 1.0, "sec": 1.0, "s": 1.0,
    "minute": 60.0, "minutes": 60.0, "min": 60.0, "m": 60.0,
    "hour": 3600.0, "hours": 3600.0, "h": 3600.0,
    "day": 86400.0, "days": 86400.0, "d": 86400.0,
}
_SPEC = re.compile(r"^\s*(\d+)\s*(?:/|per\s+)\s*(\d*)\s*([a-z]+)\s*$")
_EXAMPLE = 'RateLimit("100/minute")'


@dataclass(frozen=True, slots=True, init=False)
class RateLimit:
    """A quota per period: ``"10/second"``, ``"100/minute"``, ``"5000/hour"``, ``"off"``.

    ``burst`` (default: the quota) is how many calls may arrive at once.
    """

    quota: int
    period: float
    burst: int
    spec: str

    def __init__(self, spec: str, *, burst: int | None = None, setting: str = "RateLimit") -> None:
        if not isinstance(spec, str):
            raise ConfigError(setting, spec, _EXAMPLE, "expected a string like '100/minute'")
        quota, period = _parse(spec, setting)
        if burst is None:
            burst = max(quota, 1)
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise ConfigError(f"{setting}(burst=...)", burst, 'RateLimit("100/minute", burst=10)',
                              "a whole number ≥ 1")
        object.__setattr__(self, "quota", quota)
        object.__setattr__(self, "period", period)
        object.__setattr__(self, "burst", burst)
        object.__setattr__(self, "spec", spec.strip())

    @property
    def enabled(self) -> bool:
        return self.quota > 0

    @property
    def interval(self) -> float:
        """Seconds between two units of quota (GCRA's emission interval T)."""
        return self.period / self.quota

    @property
    def tolerance(self) -> float:
        """GCRA's burst tolerance τ = T × (burst − 1)."""
        return self.interval * (self.burst - 1)

    def __repr__(self) -> str:
        return f"RateLimit({self.spec!r}, burst={self.burst})"


OFF = "off"


def _parse(spec: str, setting: str) -> tuple[int, float]:
    text = spec.strip().lower()
    if text in (OFF, "none", "0"):  # not "": an empty spec is a mistake, not a way to say off
        return 0, 1.0
    match = _SPEC.match(text)
    if match is None:
        raise ConfigError(setting, spec, _EXAMPLE, "expected '<count>/<unit>', unit one of second, minute, hour, day")
    count, multiple, unit = int(match[1]), match[2], match[3]
    if unit not in _UNITS:
        raise ConfigError(setting, spec, _EXAMPLE, f"unknown unit {unit!r}; use second, minute, hour or day")
    if count < 1:
        raise ConfigError(setting, spec, _EXAMPLE, "the count must be ≥ 1; use 'off' to switch the limit off")
    period = _UNITS[unit] * (int(multiple) if multiple else 1)
    if period <= 0:
        raise ConfigError(setting, spec, _EXAMPLE, "the period must be longer than zero")
    return count, period


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    #: Calls that may still be made right now (after this one, if it was allowed).
    remaining: int
    #: Seconds to wait before a refused call would be allowed (0 when allowed).
    retry_after: float
    #: Seconds until one more unit of quota is available (the draft's ``t``); 0 when full.
    next_after: float
    #: Seconds until the quota is entirely refilled.
    reset_after: float


def gcra(tat: float | None, now: float, limit: RateLimit, cost: int = 1) -> tuple[RateDecision, float | None]:
    """Decide one call of ``cost`` units; return the decision and the TAT to store.

    ``tat`` is the stored theoretical arrival time (``None`` for a new key);
    a refused call stores nothing, so the returned TAT is then the old one.
    """
    interval = limit.interval
    tolerance = limit.tolerance
    base = now if tat is None or tat < now else tat
    new_tat = base + interval * cost
    allow_at = new_tat - tolerance - interval
    # A TAT built by adding intervals drifts by up to half an ulp per addition: without
    # this slack a burst of N would admit N - 1 (and count one unit too few) for many
    # values of ``now``. A few ulps per unit of burst: nanoseconds, never a real early admission.
    eps = min(0.5 * interval, 4 * (tolerance / interval + 1) * _ulp(new_tat))
    if allow_at - now > eps:
        return RateDecision(
            allowed=False,
            remaining=_remaining(tolerance - (base - now), interval, eps),
            retry_after=allow_at - now,
            next_after=allow_at - now,
            reset_after=base - now,
        ), tat
    slack = tolerance - (new_tat - now)
    next_after = interval - ((slack + eps) % interval - eps) if slack + eps >= 0 else -slack
    return RateDecision(True, _remaining(slack, interval, eps), 0.0, next_after, new_tat - now), new_tat


def _ulp(x: float) -> float:
    """The spacing of doubles near ``x`` (as the Redis scripts compute it, with frexp)."""
    return math.ldexp(1.0, math.frexp(x)[1] - 53)


def _remaining(slack: float, interval: float, eps: float = 0.0) -> int:
    """Units of quota left when the bucket has ``slack`` seconds of tolerance unused."""
    return math.floor((slack + eps) / interval) + 1 if slack + eps >= 0 else 0
