"""Rate limiting with GCRA (the generic cell rate algorithm), as a pure function.

One number per key, the theoretical arrival time (TAT), is the whole state:
constant memory, no background refill. ``RateLimit("100/minute")`` emits one
unit of quota every 0.6 s and tolerates a burst of 100; ``burst=10`` makes it
smoother. The answer carries everything the HTTP headers need
(remaining, retry_after, next_after), so they cost nothing extra.

Time is integer microseconds, here and in the Redis scripts: a float of
seconds since the epoch has 0.24 µs spacing and drifts under addition, and
Lua numbers are doubles, so only integers let both stores decide alike at any
clock and any rate. The emission interval is the period over the quota in
whole microseconds, rounded up when it does not divide (``15000/second``:
67 µs, so 14 925 a second in the long run; never more than the quota); a burst
admits exactly ``burst`` calls whatever the interval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from baldur.errors import ConfigError

__all__ = ["ADVANCE_UNITS", "MICROS", "Advance", "RateDecision", "RateLimit", "gcra", "micros"]

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
    #: T, GCRA's emission interval, in whole microseconds, rounded up (at least 1): the unit both
    #: stores compute in; computed once, as it is read on every call.
    interval_us: int = field(init=False, repr=False, compare=False)
    #: GCRA's burst tolerance τ = T × (burst − 1), in microseconds.
    tolerance_us: int = field(init=False, repr=False, compare=False)

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
        interval_us = max(1, -(-round(period * MICROS) // max(quota, 1)))
        object.__setattr__(self, "interval_us", interval_us)
        object.__setattr__(self, "tolerance_us", interval_us * (burst - 1))

    @property
    def enabled(self) -> bool:
        return self.quota > 0

    @property
    def interval(self) -> float:
        """Seconds between two units of quota (GCRA's emission interval T, see ``interval_us``)."""
        return self.interval_us / MICROS

    def __repr__(self) -> str:
        return f"RateLimit({self.spec!r}, burst={self.burst})"


OFF = "off"
#: Microseconds in a second: the unit of time of ``gcra``.
MICROS = 1_000_000


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


class RateDecision(NamedTuple):
    """One call's decision. Immutable; a named tuple rather than a frozen dataclass, as one is made
    on every limited call and a frozen dataclass takes four times as long to build."""

    allowed: bool
    #: Calls that may still be made right now (after this one, if it was allowed).
    remaining: int
    #: Seconds to wait before a refused call would be allowed (0 when allowed).
    retry_after: float
    #: Seconds until one more unit of quota is available (the draft's ``t``); 0 when full.
    next_after: float
    #: Seconds until the quota is entirely refilled.
    reset_after: float


def gcra(tat: int | None, now: int, limit: RateLimit, cost: int = 1) -> tuple[RateDecision, int | None]:
    """Decide one call of ``cost`` units at ``now``; return the decision and the TAT to store.

    Times are integer microseconds. ``tat`` is the stored theoretical arrival
    time (``None`` for a new key); a refused call stores nothing, so the
    returned TAT is then the old one. The Redis scripts (``_common.lua``) do
    the same integer arithmetic and answer in µs; the Redis store then makes
    the same one division into seconds.
    """
    interval = limit.interval_us
    tolerance = limit.tolerance_us
    base = now if tat is None or tat < now else tat
    new_tat = base + interval * cost
    allow_at = new_tat - tolerance - interval
    if allow_at > now:
        wait = (allow_at - now) / MICROS
        return RateDecision(False, _remaining(tolerance - (base - now), interval), wait, wait,
                            (base - now) / MICROS), tat
    slack = tolerance - (new_tat - now)
    next_after = interval - slack % interval if slack >= 0 else -slack
    return RateDecision(True, _remaining(slack, interval), 0.0, next_after / MICROS,
                        (new_tat - now) / MICROS), new_tat


#: The units of a client's quota a process asks a shared store for at once (``Advance``).
ADVANCE_UNITS = 8
#: How long an advance's units stay usable at most, in µs, whatever their slots.
ADVANCE_LIFETIME_US = 1_000_000
#: Taken off each unit's slot, in µs: the process's clock and the store's may drift apart
#: while the advance lives (by far less than this in a second).
ADVANCE_MARGIN_US = 1_000


class Advance:
    """Units of one client's quota that a shared store handed this process ahead of use.

    The store spent ``units`` at once (``gcra`` in ``_common.lua``): the first for the call
    that asked; the others are the consecutive slots after it, each ``interval`` long,
    from ``first_slot`` on. A unit may be spent only until its slot starts. Then every
    call admitted, from an advance or by the store, holds a slot of its own that starts
    between its time and its time plus the tolerance: exactly the condition for a
    sequence of calls to conform to GCRA (docs/performance.md, "Advances"). The units
    left when the advance is dropped are given back on the next ask (``unspent``), if no
    one took quota since; else they are lost to the client, never given to anyone else.

    Times are this process's clock in µs; ``first_slot`` is the store's slot mapped onto
    it as if the store read its clock when the request was sent (the latest it can map
    to), so that a unit is never judged in time when the store would find it late.
    """

    __slots__ = ("end", "expires", "limit", "next_slot", "stored")

    def __init__(self, limit: RateLimit, first_slot: int, units: int, sent: int, stored: object) -> None:
        self.limit = limit
        self.next_slot = first_slot + limit.interval_us
        self.end = first_slot + units * limit.interval_us
        self.expires = sent + ADVANCE_LIFETIME_US
        #: The TAT the store kept after the advance (what a give-back must still find there).
        self.stored = stored

    def take(self, now: int) -> RateDecision | None:
        """Spend the next unit at ``now``: the decision GCRA makes for it, or ``None`` when
        no unit is left in time (then the store must be asked)."""
        slot = self.next_slot
        if slot >= self.end or now > slot - ADVANCE_MARGIN_US or now > self.expires:
            return None
        self.next_slot = slot + self.limit.interval_us
        return gcra(slot, now, self.limit)[0]

    def unspent(self) -> int:
        """The units not spent: the last ones of the advance."""
        return max(0, self.end - self.next_slot) // self.limit.interval_us


def micros(seconds: float) -> int:
    """A clock reading in seconds as the integer microseconds ``gcra`` and the scripts use."""
    return round(seconds * MICROS)


def _remaining(slack: int, interval: int) -> int:
    """Units of quota left when the bucket has ``slack`` microseconds of tolerance unused."""
    return slack // interval + 1 if slack >= 0 else 0
