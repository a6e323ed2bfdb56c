"""Retries with exponential backoff and full jitter, capped by attempts and a deadline.

Pure: the random draw and the clock are arguments, so a test can replay any
schedule. Both the sync and the async pipeline ask ``next_delay``; neither
has a rule of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from baldur.errors import ConfigError, Rejected

__all__ = ["Retry", "next_delay"]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True, init=False)
class Retry:
    """Try a call up to ``attempts`` times in all.

    Before retry *n* (1, 2, …) it waits a random time between 0 and
    ``min(max_backoff, backoff × 2^(n−1))`` ("full jitter", which spreads
    the retries of many clients). No retry starts if it could not begin
    before ``deadline`` seconds after the first attempt. Only exceptions of
    the ``on`` classes are retried, and never a ``baldur.Rejected``: a call
    that was refused must not be hammered again at once.
    """

    attempts: int
    backoff: float
    max_backoff: float
    deadline: float | None
    on: tuple[type[BaseException], ...]

    def __init__(
        self,
        attempts: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        deadline: float | None = None,
        on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    ) -> None:
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigError("Retry(attempts=...)", attempts, "Retry(attempts=3)", "a whole number ≥ 1")
        if not _number(backoff) or backoff < 0:
            raise ConfigError("Retry(backoff=...)", backoff, "Retry(backoff=0.1)", "seconds, ≥ 0")
        if not _number(max_backoff) or max_backoff < backoff:
            raise ConfigError("Retry(max_backoff=...)", max_backoff, "Retry(max_backoff=5.0)",
                              "seconds, ≥ backoff")
        if deadline is not None and (not _number(deadline) or deadline <= 0):
            raise ConfigError("Retry(deadline=...)", deadline, "Retry(deadline=10.0)", "seconds, > 0, or None")
        types = on if isinstance(on, tuple) else (on,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
            raise ConfigError("Retry(on=...)", on, "Retry(on=(ConnectionError,))",
                              "an exception class or a tuple of them")
        object.__setattr__(self, "attempts", attempts)
        object.__setattr__(self, "backoff", float(backoff))
        object.__setattr__(self, "max_backoff", float(max_backoff))
        object.__setattr__(self, "deadline", None if deadline is None else float(deadline))
        object.__setattr__(self, "on", types)


def next_delay(retry: Retry, exc: BaseException, attempt: int, elapsed: float, draw: float) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` to give up and raise ``exc``.

    ``attempt`` is the number of the attempt that just failed (1-based),
    ``elapsed`` the seconds since the first attempt began, ``draw`` a uniform
    random number in [0, 1).
    """
    if attempt >= retry.attempts or isinstance(exc, Rejected) or not isinstance(exc, retry.on):
        return None
    try:  # backoff × 2^(attempt−1); past 2^1023 a float overflows (attempts=2000 is legal, if odd)
        grown = math.ldexp(retry.backoff, attempt - 1)
    except OverflowError:
        grown = math.inf
    delay = draw * min(retry.max_backoff, grown)
    if retry.deadline is not None and elapsed + delay >= retry.deadline:
        return None
    return delay
