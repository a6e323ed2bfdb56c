"""Per-name counters of this process, written behind to a shared store.

Each protected name has a ``Meter``: how many calls were admitted (``entered``)
and settled (``calls``), how many of those failed, and how many were refused,
by cause. The pipeline counts where a call is admitted and where it settles,
with one ``next()`` on an ``itertools.count`` each: atomic under the GIL, so
the request path takes no lock and does no I/O. In flight is admitted minus
settled.

With the memory store the meters are the truth (one process). With a shared
store (Redis) the background loop sends what changed every
``FLUSH_SECONDS`` (and at exit): counter increments, added up across the
fleet, and this process's in-flight gauges, which expire with the process.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import anyio

from baldur.bridges import background
from baldur.errors import CallTimeout, CircuitOpen, Overloaded, RateLimited, Rejected
from baldur.policies.breaker import Outcome

if TYPE_CHECKING:
    from baldur._runtime import Runtime

__all__ = [
    "CAUSES",
    "FLUSH_SECONDS",
    "Meter",
    "Reading",
    "cause_of",
    "flush",
    "meter",
    "read",
    "rejected",
    "write_behind",
]

#: How often a process sends its counts to a shared store.
FLUSH_SECONDS = 1.0
#: A process's in-flight gauges outlive its last flush by this long (then it is presumed gone).
IN_FLIGHT_TTL_SECONDS = 10 * FLUSH_SECONDS
CIRCUIT_OPEN, RATE_LIMITED, CONCURRENCY, SHED, TIMEOUT = CAUSES = (
    "circuit_open", "rate_limited", "concurrency", "shed", "timeout")
#: The counters a store adds up, by field name.
COUNTERS = ("entered", "calls", "failures", *(f"rejected_{cause}" for cause in CAUSES))

_FAILURE = Outcome.FAILURE
_logger = logging.getLogger("baldur.metrics")


def cause_of(refusal: Rejected) -> str | None:
    """The cause a store's refusal counts under (load shedding is counted by the adapter that sheds)."""
    if isinstance(refusal, CircuitOpen):
        return CIRCUIT_OPEN
    if isinstance(refusal, RateLimited):
        return RATE_LIMITED
    if isinstance(refusal, Overloaded):
        return CONCURRENCY
    return None


class Meter:
    """One name's counters in this process. The pipeline steps them with ``next()``."""

    __slots__ = ("breaker", "calls", "entered", "failures", "name", "rejections")

    def __init__(self, name: str) -> None:
        self.name = name
        #: The name has a circuit breaker (it gets a ``baldur_breaker_state`` gauge).
        self.breaker = False
        self.entered = itertools.count()
        self.calls = itertools.count()
        self.failures = itertools.count()
        self.rejections = {cause: itertools.count() for cause in CAUSES}

    def settled(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """An admitted call ended with ``outcome`` (``error``: what it raised, if anything)."""
        next(self.calls)
        if outcome is _FAILURE:
            next(self.failures)
            if isinstance(error, CallTimeout):
                next(self.rejections[TIMEOUT])

    def _counters(self) -> Iterable[tuple[str, itertools.count[int]]]:
        # ``calls`` before ``entered``: a call is admitted before it settles, so reading in this
        # order never shows more settled than admitted (in flight never reads negative).
        yield "calls", self.calls
        yield "entered", self.entered
        yield "failures", self.failures
        for cause, counter in self.rejections.items():
            yield f"rejected_{cause}", counter


@dataclass(frozen=True, slots=True)
class Reading:
    """A name's totals (this process's, or the fleet's) and its calls in flight."""

    name: str
    calls: int
    failures: int
    rejections: dict[str, int]
    in_flight: int
    breaker: bool


_lock = threading.Lock()
_meters: dict[str, Meter] = {}
#: Per name and counter: ``next()`` calls made by readers, the raw count at the last fork
#: (counted by the parent), and what was sent to the shared store (both past that base).
_reads: dict[str, int] = {}
_base: dict[tuple[str, str], int] = {}
_sent: dict[tuple[str, str], int] = {}
_flusher = False
_process = f"{secrets.token_hex(4)}:{os.getpid()}"


def meter(name: str, *, breaker: bool = False) -> Meter:
    """The meter of ``name`` (made on first use; kept for the process's life)."""
    found = _meters.get(name)
    if found is None:
        with _lock:
            found = _meters.get(name)
            if found is None:
                found = _meters[name] = Meter(name)
                _reads[name] = 0
    if breaker:
        found.breaker = True
    return found


def rejected(refusal: Rejected, cause: str | None = None) -> None:
    """Count ``refusal`` under the name that refused it (the name its HTTP answer shows)."""
    cause = cause or cause_of(refusal)
    if cause is not None:
        next(meter(refusal.name).rejections[cause])


def _totals() -> dict[str, dict[str, int]]:
    """Every meter's counts since the last fork (this process's own), read without stopping anyone."""
    with _lock:
        totals: dict[str, dict[str, int]] = {}
        for name, found in list(_meters.items()):
            reads = _reads[name]
            totals[name] = {field: next(counter) - reads - _base.get((name, field), 0)
                            for field, counter in found._counters()}
            _reads[name] = reads + 1
        return totals


def _reading(name: str, counts: dict[str, int], in_flight: int, breaker: bool) -> Reading:
    return Reading(name, counts.get("calls", 0), counts.get("failures", 0),
                   {cause: counts.get(f"rejected_{cause}", 0) for cause in CAUSES}, max(0, in_flight), breaker)


class SharedMetrics(Protocol):
    """What a shared store offers for metrics (``RedisStore``)."""

    async def add_metrics(self, counts: dict[str, dict[str, int]], breakers: list[str],
                          in_flight: dict[str, int], process: str, ttl: float) -> None: ...

    async def read_metrics(self) -> tuple[dict[str, dict[str, int]], set[str], dict[str, int]]: ...


async def read(runtime: Runtime) -> list[Reading]:
    """Every name's reading, sorted by name: the fleet's on a shared store (this process's
    counts sent first), else this process's."""
    if not runtime.shared:
        totals = _totals()
        return [_reading(name, counts, counts["entered"] - counts["calls"], _meters[name].breaker)
                for name, counts in sorted(totals.items())]
    await flush(runtime)
    store = cast(SharedMetrics, runtime.async_)
    counts, breakers, in_flight = await store.read_metrics()
    breakers |= {name for name, found in list(_meters.items()) if found.breaker}
    names = sorted(set(counts) | breakers | set(in_flight))
    return [_reading(name, counts.get(name, {}), in_flight.get(name, 0), name in breakers) for name in names]


async def flush(runtime: Runtime) -> None:
    """Send what this process counted since the last flush to the shared store of ``runtime``."""
    if not runtime.shared:
        return
    totals = _totals()
    deltas: dict[str, dict[str, int]] = {}
    with _lock:
        for name, counts in totals.items():
            changed = {field: value - _sent.get((name, field), 0) for field, value in counts.items()}
            changed = {field: delta for field, delta in changed.items() if delta}
            if changed:
                deltas[name] = changed
                for field in changed:
                    _sent[(name, field)] = counts[field]
    in_flight = {name: counts["entered"] - counts["calls"] for name, counts in totals.items()}
    breakers = [name for name in deltas if _meters[name].breaker]
    if not deltas and not any(in_flight.values()):
        return
    store = cast(SharedMetrics, runtime.async_)
    try:
        await store.add_metrics(deltas, breakers, in_flight, _process, IN_FLIGHT_TTL_SECONDS)
    except BaseException:
        with _lock:  # not sent: the next flush sends it
            for name, changed in deltas.items():
                for field, delta in changed.items():
                    _sent[(name, field)] -= delta
        raise


def write_behind(runtime: Runtime) -> None:
    """Flush to ``runtime``'s shared store from the background loop, every ``FLUSH_SECONDS``."""
    global _flusher
    with _lock:
        start, _flusher = not _flusher, True
    if start:
        background.portal().start_task_soon(_flush_forever, runtime)


async def _flush_forever(runtime: Runtime) -> None:
    global _flusher
    from baldur import _runtime

    try:
        while True:
            await anyio.sleep(FLUSH_SECONDS)
            if _runtime._current is not runtime:  # replaced by init(): its own flusher takes over
                break
            try:
                await flush(runtime)
            except Exception as exc:  # the store is down or slow: the counts wait for the next flush
                _logger.debug("metrics not flushed: %s", exc)
    finally:
        with _lock:
            _flusher = False
    current = _runtime._current
    if current is not None and current.shared:
        write_behind(current)


def _after_fork_in_child() -> None:
    """The parent counted (and sends) what its meters hold: the child counts from here; its calls
    in flight are the parent's threads', which do not exist here."""
    global _lock, _flusher, _process
    _lock = threading.Lock()
    _flusher = False
    _process = f"{secrets.token_hex(4)}:{os.getpid()}"
    for name, found in list(_meters.items()):
        reads = _reads[name]
        for field, counter in found._counters():
            _base[(name, field)] = next(counter) - reads
        _reads[name] = reads + 1
    _sent.clear()
    from baldur import _runtime

    runtime = _runtime._current
    if runtime is not None and runtime.shared:
        with contextlib.suppress(RuntimeError):  # an interpreter shutting down starts no thread
            write_behind(runtime)


def _flush_at_exit() -> None:
    from baldur import _runtime

    runtime = _runtime._current
    if runtime is None or not runtime.shared or not background.running:
        return
    try:
        background.call(flush, runtime)
    except Exception:
        _logger.warning("could not send this process's metrics to the shared store at exit", exc_info=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
