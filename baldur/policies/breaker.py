"""The circuit breaker as a pure state machine.

Rules of this file, in the manner of h11's ``_state.py``:

* Everything that changes a breaker's state lives here and nowhere else.
  Stores keep a ``BreakerState`` and call ``preflight`` before a call and
  ``record`` after it; they add locking or atomicity, never rules.
* No I/O, no clock, no event loop: ``now`` is an argument (seconds on any
  monotonic scale), so every decision is a deterministic function of
  (state, now, options). The state object is updated in place and the
  decision is returned; the caller owns the state and its lock.
* The transitions are the table ``TRANSITIONS`` below; the docs draw their
  diagram from it, and a test checks that the code takes no other edge.

States::

    closed ──(failure rate ≥ threshold after any outcome, or N consecutive failures)──▶ open
    open ──(open_for elapsed, at the next call)──▶ half_open
    half_open ──(half_open_calls trials all succeeded)──▶ closed
    half_open ──(a trial failed)──▶ open
    any ──(force_open)──▶ forced_open      any ──(force_closed)──▶ forced_closed
    any ──(reset)──▶ closed

``forced_open`` rejects every call; ``forced_closed`` admits every call and
records nothing (the breaker is disabled). Only ``reset`` (or another force)
leaves them.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field

from baldur.errors import ConfigError

__all__ = [
    "BUCKETS",
    "TRANSITIONS",
    "Breaker",
    "BreakerState",
    "Outcome",
    "Preflight",
    "State",
    "Window",
    "absorb",
    "bucket_width",
    "diagram",
    "force",
    "open_lane",
    "preflight",
    "record",
]


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    #: Neither: cancelled, or an exception the breaker was told to ignore.
    IGNORED = "ignored"


#: (from, to, why). The only edges the state machine takes.
TRANSITIONS: tuple[tuple[State, State, str], ...] = (
    (State.CLOSED, State.OPEN, "failure rate or consecutive failures reached"),
    (State.OPEN, State.HALF_OPEN, "open_for elapsed"),
    (State.HALF_OPEN, State.CLOSED, "half_open_calls trials succeeded"),
    (State.HALF_OPEN, State.OPEN, "a trial failed"),
)

#: The window is this many buckets of ``window / BUCKETS`` seconds (the Redis scripts get it from here).
BUCKETS = 10


def diagram() -> str:
    """``TRANSITIONS`` as a Mermaid state diagram (docs/strategies.md shows exactly this)."""
    lines = ["stateDiagram-v2", "    [*] --> closed"]
    lines += [f"    {source} --> {target}: {why}" for source, target, why in TRANSITIONS]
    return "\n".join(lines)


def _check(field_name: str, ok: bool, value: object, example: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"Breaker({field_name}=...)", value, example, reason)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _exception_types(field_name: str, value: object, example: str) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    _check(
        field_name,
        all(isinstance(t, type) and issubclass(t, BaseException) for t in types),
        value,
        example,
        "expected an exception class or a tuple of them",
    )
    return types


class _NotGiven(float):
    """A default in ``Breaker``'s signature: shows as its value, but marks the option as not given."""


class _NotGivenCount(int):
    """``_NotGiven`` for whole numbers."""


_NOT_GIVEN_RATE: float = _NotGiven(0.5)
_NOT_GIVEN_MIN_CALLS: int = _NotGivenCount(10)
_NOT_GIVEN_WINDOW: float = _NotGiven(30.0)
_NOT_GIVEN_CONSECUTIVE: int = _NotGivenCount(5)
_NOT_GIVEN_OPEN_FOR: float = _NotGiven(30.0)
_NOT_GIVEN_HALF_OPEN_CALLS: int = _NotGivenCount(3)


_OPTION_NAMES = ("failure_rate", "min_calls", "window", "consecutive_failures", "open_for", "half_open_calls",
                 "slow_call", "failure_on", "ignore")
#: What ``repr`` leaves out: options given with the value they would have had anyway.
_DEFAULTS: dict[str, object] = {"slow_call": None, "failure_on": (Exception,), "ignore": ()}


@dataclass(frozen=True, slots=True, init=False)
class Breaker:
    """Options of a circuit breaker; every field is checked when it is built.

    The breaker opens when, over the last ``window`` seconds, at least
    ``min_calls`` calls were made and the share of failures reached
    ``failure_rate`` — or after ``consecutive_failures`` failures in a row.
    It then rejects calls for ``open_for`` seconds, lets ``half_open_calls``
    trial calls through, and closes when they all succeed. A successful call
    slower than ``slow_call`` seconds counts as a failure. Exceptions that are
    instances of ``failure_on`` and not of ``ignore`` are failures; others pass
    through without counting. ``failure_rate=None`` or
    ``consecutive_failures=None`` switches that rule off. An option that is
    not given takes its value from the runtime's ``BALDUR_BREAKER_*``
    settings (the signature shows their defaults).
    """

    failure_rate: float | None
    min_calls: int
    window: float
    consecutive_failures: int | None
    open_for: float
    half_open_calls: int
    slow_call: float | None
    failure_on: tuple[type[BaseException], ...]
    ignore: tuple[type[BaseException], ...]
    #: The options left at their default: ``inherit`` takes them from the runtime's
    #: ``BALDUR_BREAKER_*`` settings.
    unset: frozenset[str]

    def __init__(
        self,
        failure_rate: float | None = _NOT_GIVEN_RATE,
        min_calls: int = _NOT_GIVEN_MIN_CALLS,
        window: float = _NOT_GIVEN_WINDOW,
        consecutive_failures: int | None = _NOT_GIVEN_CONSECUTIVE,
        open_for: float = _NOT_GIVEN_OPEN_FOR,
        half_open_calls: int = _NOT_GIVEN_HALF_OPEN_CALLS,
        slow_call: float | None = None,
        failure_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        ignore: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> None:
        _check("failure_rate", failure_rate is None or (_is_number(failure_rate) and 0 < failure_rate <= 1),
               failure_rate, "Breaker(failure_rate=0.5)", "a share between 0 (excluded) and 1")
        _check("min_calls", _is_count(min_calls) and min_calls >= 1,
               min_calls, "Breaker(min_calls=10)", "a whole number ≥ 1")
        _check("window", _is_number(window) and window > 0,
               window, "Breaker(window=30.0)", "seconds, > 0")
        _check("consecutive_failures",
               consecutive_failures is None or (_is_count(consecutive_failures) and consecutive_failures >= 1),
               consecutive_failures, "Breaker(consecutive_failures=5)", "a whole number ≥ 1, or None")
        _check("open_for", _is_number(open_for) and open_for > 0,
               open_for, "Breaker(open_for=30.0)", "seconds, > 0")
        _check("half_open_calls", _is_count(half_open_calls) and half_open_calls >= 1,
               half_open_calls, "Breaker(half_open_calls=3)", "a whole number ≥ 1")
        _check("slow_call", slow_call is None or (_is_number(slow_call) and slow_call > 0),
               slow_call, "Breaker(slow_call=2.0)", "seconds, > 0, or None")
        _check("failure_rate/consecutive_failures", failure_rate is not None or consecutive_failures is not None,
               None, "Breaker(failure_rate=0.5)", "at least one opening rule must be on")
        set_ = object.__setattr__
        set_(self, "failure_rate", None if failure_rate is None else float(failure_rate))
        set_(self, "min_calls", int(min_calls))
        set_(self, "window", float(window))
        set_(self, "consecutive_failures", None if consecutive_failures is None else int(consecutive_failures))
        set_(self, "open_for", float(open_for))
        set_(self, "half_open_calls", int(half_open_calls))
        set_(self, "slow_call", None if slow_call is None else float(slow_call))
        set_(self, "failure_on", _exception_types("failure_on", failure_on, "Breaker(failure_on=(OSError,))"))
        set_(self, "ignore", _exception_types("ignore", ignore, "Breaker(ignore=(ValueError,))"))
        set_(self, "unset", frozenset(name for name, value in (
            ("failure_rate", failure_rate), ("min_calls", min_calls), ("window", window),
            ("consecutive_failures", consecutive_failures), ("open_for", open_for),
            ("half_open_calls", half_open_calls)) if type(value) is _NotGiven or type(value) is _NotGivenCount))

    def inherit(self, defaults: Breaker) -> Breaker:
        """These options, with every one that was not given taken from ``defaults``."""
        if not self.unset:
            return self
        return Breaker(**{name: getattr(defaults if name in self.unset else self, name) for name in _OPTION_NAMES})

    def __repr__(self) -> str:
        defaults = _DEFAULTS
        given = [f"{name}={getattr(self, name)!r}" for name in _OPTION_NAMES
                 if name not in self.unset and getattr(self, name) != defaults.get(name)]
        return f"Breaker({', '.join(given)})"

    def classify(self, exc: BaseException) -> Outcome:
        """Whether an exception raised by the call is a failure for this breaker."""
        if isinstance(exc, self.failure_on) and not isinstance(exc, self.ignore):
            return Outcome.FAILURE
        return Outcome.IGNORED


def bucket_width(options: Breaker) -> float:
    """Seconds per bucket of the breaker's window."""
    return options.window / BUCKETS


@dataclass(slots=True)
class Window:
    """Calls and failures of the last ``BUCKETS`` buckets of ``width`` seconds each.

    A bucket is reused when its epoch (``int(now / width)``, ``now`` ≥ 0; the
    Redis scripts compute ``math.floor(now / width)``, the same double) comes
    round again, so counting costs constant memory and no background work.
    """

    width: float
    epochs: list[int] = field(default_factory=lambda: [-1] * BUCKETS)
    calls: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    failures: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def add(self, now: float, failed: bool) -> None:
        epoch = int(now / self.width)
        i = epoch % BUCKETS
        if self.epochs[i] != epoch:
            self.epochs[i] = epoch
            self.calls[i] = 0
            self.failures[i] = 0
        self.calls[i] += 1
        if failed:
            self.failures[i] += 1

    def add_successes(self, epoch: int, count: int) -> None:
        """``count`` successes that happened in bucket ``epoch`` (dropped if it has left the window)."""
        i = epoch % BUCKETS
        if self.epochs[i] == epoch:
            self.calls[i] += count

    def totals(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the buckets that are still inside the window."""
        oldest = int(now / self.width) - BUCKETS
        calls = failures = 0
        for i in range(BUCKETS):
            if self.epochs[i] > oldest:
                calls += self.calls[i]
                failures += self.failures[i]
        return calls, failures

    def clear(self) -> None:
        self.epochs[:] = [-1] * BUCKETS
        # Zero the counts too: ``totals`` counts a bucket of epoch -1 while now < 9 widths.
        self.calls[:] = [0] * BUCKETS
        self.failures[:] = [0] * BUCKETS


@dataclass(slots=True)
class BreakerState:
    window: Window
    #: The options the state was built for: the window's width and the fast lane's rule come from them.
    options: Breaker
    #: The protected name, for the events a store emits about this state.
    name: str = ""
    state: State = State.CLOSED
    #: When the breaker last opened (valid in OPEN and HALF_OPEN).
    opened_at: float = 0.0
    consecutive_failures: int = 0
    #: Half-open trial permits handed out, and trials that succeeded.
    trials_issued: int = 0
    trials_succeeded: int = 0
    #: When the current half-open period began; trial permits older than
    #: ``open_for`` are taken back, so a lost outcome never wedges the breaker.
    half_open_since: float = 0.0
    #: The fast lane (``MemoryStore.succeed``): while closed and ``now < lane_end``,
    #: a success is one ``next(lane_count)`` without any lock (``itertools.count``
    #: is atomic under the GIL); all such successes fall in bucket ``lane_epoch``.
    #: ``absorb`` folds them into the window before any decision reads it. The
    #: lane is open only while no success in that bucket could open the breaker
    #: (see ``open_lane``), so skipping their evaluation changes no decision.
    lane_epoch: int = -1
    lane_end: float = -math.inf
    lane_count: itertools.count[int] = field(default_factory=itertools.count)
    #: ``next()`` calls made to read ``lane_count`` (not successes), and successes absorbed.
    lane_reads: int = 0
    lane_absorbed: int = 0

    @classmethod
    def new(cls, options: Breaker, name: str = "") -> BreakerState:
        return cls(window=Window(bucket_width(options)), options=options, name=name)


@dataclass(frozen=True, slots=True)
class Preflight:
    """Answer of ``preflight``: run the call or not, and what changed."""

    admitted: bool
    #: The call holds a half-open trial permit; its outcome decides the state.
    trial: bool = False
    retry_after: float = 0.0
    transition: State | None = None


ADMIT = Preflight(True)


def preflight(s: BreakerState, now: float, o: Breaker) -> Preflight:
    """May a call start now? Moves open → half_open when ``open_for`` has passed."""
    state = s.state
    if state is State.CLOSED or state is State.FORCED_CLOSED:
        return ADMIT
    if state is State.FORCED_OPEN:
        return Preflight(False, retry_after=o.open_for)
    transition = None
    if state is State.OPEN:
        wait = s.opened_at + o.open_for - now
        if wait > 0:
            return Preflight(False, retry_after=wait)
        s.state = State.HALF_OPEN
        s.half_open_since = now
        s.trials_issued = s.trials_succeeded = 0
        transition = State.HALF_OPEN
    elif s.trials_issued >= o.half_open_calls and now - s.half_open_since >= o.open_for:
        s.half_open_since = now
        s.trials_issued = s.trials_succeeded
    if s.trials_issued < o.half_open_calls:
        s.trials_issued += 1
        return Preflight(True, trial=True, transition=transition)
    return Preflight(False, retry_after=min(1.0, o.open_for), transition=transition)


def absorb(s: BreakerState) -> None:
    """Fold the fast lane's successes into the state, as if each had been recorded.

    Successes that arrive after the breaker left ``closed`` (their calls began
    before the transition) are dropped, as ``record`` drops such outcomes.
    """
    total = next(s.lane_count) - s.lane_reads
    s.lane_reads += 1
    fresh = total - s.lane_absorbed
    if not fresh:
        return
    s.lane_absorbed = total
    if s.state is State.CLOSED:
        s.consecutive_failures = 0
        s.window.add_successes(s.lane_epoch, fresh)


def open_lane(s: BreakerState, now: float) -> State | None:
    """Record one success at ``now`` (with ``s.options``) and open the fast lane for the rest
    of its bucket if no success there could open the breaker; return the new state if it changed.

    Within one bucket no count leaves the window, so successes only lower the
    share of failures: the rule can fire on a success only where the count of
    calls reaches ``min_calls``, and never if the failures already counted are
    below ``failure_rate`` of ``max(min_calls, calls + 1)``. A failure recorded
    meanwhile checks that again (``record``).
    """
    o = s.options
    absorb(s)  # before ``lane_epoch`` moves on: late counts of a closed lane belong to its bucket
    transition = record(s, now, o, Outcome.SUCCESS, False)
    # ``lane_end`` ends the bucket only where int() floors: on clocks at or after 0, as monotonic clocks are.
    if s.state is State.CLOSED and now >= 0.0 and (
            o.failure_rate is None or _lane_is_safe(o.failure_rate, o.min_calls, *s.window.totals(now))):
        s.lane_epoch = int(now / s.window.width)
        s.lane_end = (s.lane_epoch + 1) * s.window.width
    return transition


def _lane_is_safe(rate: float, min_calls: int, calls: int, failures: int) -> bool:
    """No further success in the current bucket can make the failure rate fire."""
    return not _share_reached(failures, max(min_calls, calls + 1), rate)


def _share_reached(failures: int, calls: int, rate: float) -> bool:
    # A share, not a product: 7 of 100 must reach failure_rate=0.07 (0.07 * 100 > 7.0).
    return failures / calls >= rate


def record(s: BreakerState, now: float, o: Breaker, outcome: Outcome, trial: bool) -> State | None:
    """Count the outcome of a call admitted by ``preflight``; return the new state if it changed."""
    if s.lane_end != -math.inf:
        absorb(s)
    state = s.state
    if state is State.CLOSED:
        if trial or outcome is Outcome.IGNORED:
            return None
        failed = outcome is Outcome.FAILURE
        s.window.add(now, failed)
        if failed:
            s.consecutive_failures += 1
            if o.consecutive_failures is not None and s.consecutive_failures >= o.consecutive_failures:
                return _open(s, now)
        else:
            s.consecutive_failures = 0
        rate = o.failure_rate
        if rate is not None:
            # After every outcome, as Resilience4j does: a success may complete min_calls, and
            # old successes leaving the window raise the share of the failures still in it.
            calls, failures = s.window.totals(now)
            if calls >= o.min_calls and _share_reached(failures, calls, rate):
                return _open(s, now)
            if failed and now < s.lane_end and not _lane_is_safe(rate, o.min_calls, calls, failures):
                _close_lane(s)  # the next success could open the breaker: it must be evaluated
        return None
    if state is State.HALF_OPEN and trial:
        if outcome is Outcome.FAILURE:
            return _open(s, now)
        if outcome is Outcome.IGNORED:
            s.trials_issued = max(0, s.trials_issued - 1)
            return None
        s.trials_succeeded += 1
        if s.trials_succeeded >= o.half_open_calls:
            _close(s)
            return State.CLOSED
    # Outcomes of calls that started before the last transition say nothing
    # about the current period; forced states record nothing.
    return None


def force(s: BreakerState, target: State) -> None:
    """Manual control: force open, force closed, or reset to a fresh closed breaker."""
    absorb(s)
    if target is State.CLOSED:
        _close(s)
    elif target in (State.FORCED_OPEN, State.FORCED_CLOSED):
        _close(s)
        s.state = target
    else:
        raise ValueError(f"cannot force a breaker to {target}")


def _close_lane(s: BreakerState) -> None:
    absorb(s)
    s.lane_end = -math.inf


def _open(s: BreakerState, now: float) -> State:
    _close_lane(s)
    s.state = State.OPEN
    s.opened_at = now
    s.consecutive_failures = 0
    s.trials_issued = s.trials_succeeded = 0
    s.window.clear()
    return State.OPEN


def _close(s: BreakerState) -> None:
    _close_lane(s)
    s.state = State.CLOSED
    s.consecutive_failures = 0
    s.trials_issued = s.trials_succeeded = 0
    s.window.clear()
