"""Adaptive load shedding: when to refuse a request so that the rest stay fast.

Pure rules: time and observations in, decision out; the caller holds the lock.

Two signals, used when the server lets Baldur see them:

* **Queue delay** (``X-Request-Start`` from a proxy): CoDel as Facebook's
  "Fail at Scale" applies it to server queues. The queue is *overloaded* when
  the smallest delay seen over a whole ``interval`` stayed above ``target``
  (a standing queue, not a burst). While it is, a request that already waited
  longer than ``target`` is shed; otherwise none is (but past the explicit
  ceiling). A healthy server drains its bursts within an interval, so its
  minimum delay drops to near zero and nothing is shed.
* **In-flight limit from latency** (no header needed): Netflix's Gradient2.
  The limit follows ``limit × min(1, tolerance × long-term latency / recent
  latency)`` plus a little headroom, so it shrinks only when requests take
  longer than ``tolerance`` times their usual time, and grows back when they
  do not. A steady app, however slow its views, keeps a limit far above what
  it uses and never sheds. As in Netflix's ``WindowedLimit``, the latencies
  of a window of requests are averaged into one sample: every request adds
  its latency, and only the last of a window does the arithmetic.

Priorities: a *critical* request is shed only by the explicit ceilings, a
*sheddable* one past ``interval`` even without a standing queue, past half
the target with one, and against half the in-flight limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

__all__ = ["AdaptiveLimit", "Priority", "QueueDelay", "parse_priority"]


class Priority(Enum):
    """How early a request is shed under overload."""

    CRITICAL = "critical"
    NORMAL = "normal"
    SHEDDABLE = "sheddable"


def _compounded(weight: float, count: int) -> float:
    """The weight of ``count`` equal samples in an exponential average that gives one sample ``weight``."""
    return 1.0 - (1.0 - weight) ** count


def parse_priority(value: object, setting: str = "priority") -> Priority:
    """``"critical"``, ``"normal"`` or ``"sheddable"`` (or a :class:`Priority`)."""
    from baldur.errors import ConfigError

    if isinstance(value, Priority):
        return value
    for priority in Priority:
        if value == priority.value:
            return priority
    raise ConfigError(setting, value, 'priority="critical"', "one of critical, normal, sheddable")


_NORMAL, _CRITICAL = Priority.NORMAL, Priority.CRITICAL

#: The longest Retry-After a shed request is told: past it, a client is better off failing over.
MAX_RETRY_AFTER = 30.0


@dataclass(slots=True)
class QueueDelay:
    """CoDel on the queue delay a proxy stamps; ``ceiling`` is ``BALDUR_MAX_QUEUE_MS`` (always applies).

    The delay judged is the excess over the smallest delay seen in the last
    ``skew_horizon`` to twice that: a proxy whose clock runs behind the app's
    makes every request look older by a constant, which is not a queue.
    """

    target: float = 0.010
    interval: float = 0.100
    ceiling: float | None = 10.0
    skew_horizon: float = 30.0
    #: When the current observation window started, and the smallest excess delay seen in it.
    window_start: float = -math.inf
    window_min: float = math.inf
    overloaded: bool = False
    #: Since when the queue has been overloaded without a break (for Retry-After).
    overloaded_since: float = math.inf
    #: The smallest delay seen in this skew epoch and in the one before.
    floor_epoch_start: float = -math.inf
    floor_now: float = math.inf
    floor_before: float = math.inf

    def admits(self, now: float, waited: float, priority: Priority = Priority.NORMAL,
               service_time: float = 0.0) -> bool:
        """Record that a request waited ``waited`` seconds and decide whether it runs.

        ``service_time`` is how long a request usually takes once running: the
        target is at least half of it and the interval at least twice it, since
        a queue shorter than one service time costs a request less than being
        shed costs it (and leaves the workers idle once the queue empties).
        """
        service_time = service_time if math.isfinite(service_time) and service_time > 0 else 0.0
        target = max(self.target, service_time / 2)
        interval = max(self.interval, 2 * service_time)
        if now - self.floor_epoch_start >= self.skew_horizon:
            self.floor_epoch_start, self.floor_before, self.floor_now = now, self.floor_now, math.inf
        self.floor_now = min(self.floor_now, waited)
        excess = waited - min(self.floor_now, self.floor_before)
        if now - self.window_start >= interval:
            was = self.overloaded
            # A window with no request in it says nothing about a standing queue.
            self.overloaded = self.window_min > target and self.window_min != math.inf
            if self.overloaded and not was:
                self.overloaded_since = now
            elif not self.overloaded:
                self.overloaded_since = math.inf
            self.window_start, self.window_min = now, math.inf
        self.window_min = min(self.window_min, excess)
        if self.ceiling is not None and waited > self.ceiling:
            return False
        if priority is Priority.CRITICAL:
            return True
        if priority is Priority.SHEDDABLE:
            return excess <= (target / 2 if self.overloaded else interval)
        return not self.overloaded or excess <= target

    def retry_after(self, now: float) -> float:
        """Seconds a shed client should wait: the longer the overload has lasted, the longer."""
        lasted = max(0.0, now - self.overloaded_since) if self.overloaded else 0.0
        return min(MAX_RETRY_AFTER, max(1.0, 2 * lasted))


@dataclass(slots=True)
class AdaptiveLimit:
    """A per-process in-flight limit from observed latency (Gradient2, simplified)."""

    limit: float = 1000.0
    min_limit: float = 8.0
    max_limit: float = 1000.0
    tolerance: float = 2.0
    #: Smoothing factors of the recent and the long-term latency averages, per request.
    short_weight: float = 0.1
    long_weight: float = 0.01
    short_latency: float = 0.0
    long_latency: float = 0.0
    #: Requests observed so far (in whole windows).
    samples: int = 0
    #: Requests before the limit may move: the averages must mean something first.
    warmup: int = 20
    #: Requests averaged into one sample: the averages and the limit move once per window, by as
    #: much as its requests would have moved them one by one.
    window: int = 10
    window_total: float = 0.0
    window_count: int = 0

    def observe(self, latency: float, in_flight: int) -> None:
        """Record one finished request's latency, taken with ``in_flight`` requests running.

        Every request asks (kept lean): the window's last request moves the averages."""
        self.window_total += latency
        self.window_count += 1
        if self.window_count >= self.window:
            self._sample(in_flight)

    def _sample(self, in_flight: int) -> None:
        """The window's mean latency moves the averages as that many requests of it would, one by one."""
        count, total = self.window_count, self.window_total
        self.window_count, self.window_total = 0, 0.0
        # Threads finishing at once may both close a window (the second finds it empty); a window
        # holding a latency that cannot be (a NaN fails this too) says nothing.
        if count <= 0 or not 0.0 <= total < math.inf:
            return
        latency = total / count
        self.samples += count
        if self.samples == count:
            self.short_latency = self.long_latency = latency
            return
        short = self.short_latency = self.short_latency + _compounded(self.short_weight, count) * (
            latency - self.short_latency)
        # Under overload the usual latency follows only slowly, so that a sustained
        # overload does not become the new normal (Gradient2's drift).
        usual = self.long_latency
        weight = self.long_weight if short <= self.tolerance * usual else self.long_weight / 10
        usual = self.long_latency = usual + _compounded(weight, count) * (latency - usual)
        if self.samples < self.warmup or short <= 0:
            return
        ratio = self.tolerance * usual / short
        if ratio >= 1.0 and in_flight < self.limit / 2:
            return  # the app does not use its limit: no evidence it could take more
        gradient = 0.5 if ratio < 0.5 else min(ratio, 1.0)
        limit = self.limit
        for _ in range(count):  # one step per request, as each would have moved it
            wanted = limit * gradient + math.sqrt(limit)  # (the square root: headroom)
            limit = min(self.max_limit, max(self.min_limit, 0.8 * limit + 0.2 * wanted))
        self.limit = limit

    def admits(self, in_flight: int, priority: Priority = Priority.NORMAL) -> bool:
        """One more request may start while ``in_flight`` run (every request asks: kept lean)."""
        if priority is _NORMAL:
            return in_flight < self.limit
        if priority is _CRITICAL:
            return True
        return in_flight < self.limit / 2

    def retry_after(self) -> float:
        """Seconds a shed client should wait: about the time the running requests take to drain."""
        return min(MAX_RETRY_AFTER, max(1.0, math.ceil(self.short_latency * 2)))
