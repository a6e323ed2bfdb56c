"""The circuit breaker's pure state machine, against a small reference model.

The clock is an argument of ``preflight`` and ``record``, so every test here is
deterministic: time moves only when a test (or hypothesis) moves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import baldur
from baldur.errors import ConfigError
from baldur.policies.breaker import (
    TRANSITIONS,
    Breaker,
    BreakerState,
    Outcome,
    Preflight,
    State,
    absorb,
    force,
    open_lane,
    preflight,
    record,
)
from tests.breaker_cases import CASE_IDS, CASES, RuleCase

OK = Outcome.SUCCESS
FAIL = Outcome.FAILURE
IGNORED = Outcome.IGNORED
EDGES = {(a, b) for a, b, _ in TRANSITIONS}
FORCE_TARGETS = (State.CLOSED, State.FORCED_OPEN, State.FORCED_CLOSED)


# -- the reference model ------------------------------------------------------


@dataclass
class Model:
    """The breaker as the docs describe it, written for clarity rather than speed.

    The sliding window is a plain list of (time, failed) events: an event counts
    while its bucket ``int(t / width)`` is one of the last ten, i.e. greater
    than ``int(now / width) - 10``. (The bucket is the code's arithmetic on
    purpose: ``1.0 // 0.1`` is 9.0 but ``int(1.0 / 0.1)`` is 10.) Both opening
    rules are checked after every outcome, the failure rate after successes too.
    """

    o: Breaker
    state: State = State.CLOSED
    events: list[tuple[float, bool]] = field(default_factory=list)
    consecutive: int = 0
    opened_at: float = 0.0
    half_open_since: float = 0.0
    issued: int = 0
    succeeded: int = 0

    def counted(self, now: float) -> tuple[int, int]:
        width = self.o.window / 10
        current = int(now / width)
        inside = [failed for t, failed in self.events if int(t / width) > current - 10]
        return len(inside), sum(inside)

    def _open(self, now: float) -> None:
        self.state = State.OPEN
        self.opened_at = now
        self._forget()

    def _forget(self) -> None:
        self.events.clear()
        self.consecutive = self.issued = self.succeeded = 0

    def preflight(self, now: float) -> tuple[bool, bool, float | None]:
        """(admitted, trial, retry_after); retry_after None: anything in (0, open_for]."""
        o = self.o
        if self.state in (State.CLOSED, State.FORCED_CLOSED):
            return True, False, 0.0
        if self.state is State.FORCED_OPEN:
            return False, False, o.open_for
        if self.state is State.OPEN:
            reopens_at = self.opened_at + o.open_for
            if now < reopens_at:
                return False, False, reopens_at - now
            self.state = State.HALF_OPEN
            self.half_open_since = now
            self.issued = self.succeeded = 0
        # Half-open: a bounded number of trial permits. When they are all out and
        # a whole open_for has passed, the ones that never reported are taken back.
        if self.issued >= o.half_open_calls and now - self.half_open_since >= o.open_for:
            self.half_open_since = now
            self.issued = self.succeeded
        if self.issued < o.half_open_calls:
            self.issued += 1
            return True, True, 0.0
        return False, False, None

    def record(self, now: float, outcome: Outcome, trial: bool) -> None:
        o = self.o
        if self.state is State.CLOSED and not trial and outcome is not IGNORED:
            failed = outcome is FAIL
            self.events.append((now, failed))
            self.consecutive = self.consecutive + 1 if failed else 0
            calls, failures = self.counted(now)
            by_count = o.consecutive_failures is not None and self.consecutive >= o.consecutive_failures
            by_rate = (o.failure_rate is not None and calls >= o.min_calls
                       and Fraction(failures, calls) >= Fraction(str(o.failure_rate)))
            if by_count or by_rate:
                self._open(now)
        elif self.state is State.HALF_OPEN and trial:
            if outcome is FAIL:
                self._open(now)
            elif outcome is IGNORED:
                self.issued = max(0, self.issued - 1)
            else:
                self.succeeded += 1
                if self.succeeded >= o.half_open_calls:
                    self.state = State.CLOSED
                    self._forget()

    def force(self, target: State) -> None:
        self._forget()
        self.state = target


def succeed_like_the_memory_store(s: BreakerState, now: float) -> State | None:
    """``MemoryStore.succeed`` without the store: a count on the open lane, else ``open_lane``."""
    if now < s.lane_end and s.state is State.CLOSED:
        next(s.lane_count)
        return None
    return open_lane(s, now)


# -- the state machine test -----------------------------------------------------

RATES = (None, 0.07, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0)


@st.composite
def breaker_options(draw: st.DrawFn) -> Breaker:
    failure_rate = draw(st.sampled_from(RATES))
    consecutive = draw(st.none() | st.integers(1, 5))
    if failure_rate is None and consecutive is None:
        consecutive = draw(st.integers(1, 5))
    return Breaker(
        failure_rate=failure_rate,
        min_calls=draw(st.integers(1, 6)),
        window=draw(st.sampled_from((0.3, 1.0, 3.0, 10.0))),
        consecutive_failures=consecutive,
        open_for=draw(st.sampled_from((0.5, 1.0, 2.5, 30.0))),
        half_open_calls=draw(st.integers(1, 3)),
    )


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, outcomes, lost outcomes, clock moves and forces: code and model agree."""

    o: Breaker
    s: BreakerState
    m: Model
    now: float
    pending: list[bool]

    @initialize(options=breaker_options(), start=st.sampled_from((0.0, 0.25, 7.5, -40.0, 1e5 + 0.5)))
    def setup(self, options: Breaker, start: float) -> None:
        self.o = options
        self.s = BreakerState.new(options)
        self.m = Model(options)
        self.now = start
        self.pending = []  # the trial flag of each call admitted and not yet finished

    @rule(kind=st.sampled_from(("zero", "width", "window", "open_for", "half", "any")),
          x=st.floats(0, 1, allow_nan=False))
    def advance(self, kind: str, x: float) -> None:
        o = self.o
        step = {"zero": 0.0, "width": o.window / 10, "window": o.window, "open_for": o.open_for,
                "half": o.open_for / 2, "any": x * 2 * max(o.window, o.open_for)}[kind]
        self.now += step

    def _check_edge(self, before: State, reported: State | None) -> None:
        after = self.s.state
        if after is before:
            assert reported is None
        else:
            assert (before, after) in EDGES, f"edge {before} -> {after} is not in TRANSITIONS"
            assert reported is after

    @rule()
    def call(self) -> None:
        before = self.s.state
        flight = preflight(self.s, self.now, self.o)
        admitted, trial, retry_after = self.m.preflight(self.now)
        assert isinstance(flight, Preflight)
        assert (flight.admitted, flight.trial) == (admitted, trial)
        if retry_after is None:
            assert 0 < flight.retry_after <= self.o.open_for
        else:
            assert flight.retry_after == pytest.approx(retry_after, abs=1e-9)
        if not flight.admitted:
            assert flight.retry_after > 0
        self._check_edge(before, flight.transition)
        if flight.admitted:
            self.pending.append(flight.trial)

    @precondition(lambda self: self.pending)
    @rule(which=st.integers(0, 1000), outcome=st.sampled_from(list(Outcome)))
    def finish(self, which: int, outcome: Outcome) -> None:
        trial = self.pending.pop(which % len(self.pending))
        before = self.s.state
        reported = record(self.s, self.now, self.o, outcome, trial)
        self.m.record(self.now, outcome, trial)
        self._check_edge(before, reported)

    @precondition(lambda self: False in self.pending)
    @rule()
    def succeed_on_the_lane(self) -> None:
        """A plain success the way ``MemoryStore.succeed`` counts it: lock-free while the lane is open."""
        self.pending.remove(False)
        before = self.s.state
        reported = succeed_like_the_memory_store(self.s, self.now)
        self.m.record(self.now, OK, False)
        self._check_edge(before, reported)

    @precondition(lambda self: self.pending)
    @rule(which=st.integers(0, 1000))
    def lose(self, which: int) -> None:
        """A call whose outcome never arrives (a crashed worker): it must not wedge the breaker."""
        self.pending.pop(which % len(self.pending))

    @rule(to=st.sampled_from(FORCE_TARGETS))
    def force(self, to: State) -> None:
        force(self.s, to)
        self.m.force(to)
        assert self.s.state is to

    @invariant()
    def agrees_with_the_model(self) -> None:
        absorb(self.s)  # as a store does before it reads the window
        assert self.s.state is self.m.state
        assert self.s.consecutive_failures == self.m.consecutive
        if self.s.state is State.CLOSED:
            assert self.s.window.totals(self.now) == self.m.counted(self.now)
        if self.s.state is State.HALF_OPEN:
            assert 0 <= self.s.trials_issued <= self.o.half_open_calls
            assert self.s.trials_issued == self.m.issued
            assert self.s.trials_succeeded == self.m.succeeded
        if self.s.state in (State.OPEN, State.HALF_OPEN):
            assert self.s.opened_at == self.m.opened_at


BreakerMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBreakerMachine = BreakerMachine.TestCase


def test_machine_pinned_a_failure_one_window_ago_has_left_it() -> None:
    """Found by the machine: 1.0 // 0.1 is 9.0, so a model bucketing with ``//`` kept this failure."""
    machine = BreakerMachine()
    machine.setup(options=Breaker(failure_rate=0.5, min_calls=1, window=1.0, consecutive_failures=None),
                  start=0.0)
    machine.call()
    machine.finish(which=0, outcome=OK)
    machine.advance(kind="window", x=0.0)  # now 1.0: bucket 10, the success's bucket 0 has left
    machine.agrees_with_the_model()
    assert machine.s.window.totals(machine.now) == (0, 0)
    machine.teardown()


# -- plain scenarios --------------------------------------------------------------


def fresh(**options: Any) -> tuple[Breaker, BreakerState]:
    o = Breaker(**options)
    return o, BreakerState.new(o)


def state_of(s: BreakerState) -> State:
    return s.state


def run(s: BreakerState, o: Breaker, now: float, outcome: Outcome) -> State | None:
    flight = preflight(s, now, o)
    assert flight.admitted
    return record(s, now, o, outcome, flight.trial)


def test_defaults_are_the_documented_ones() -> None:
    o = Breaker()
    assert (o.failure_rate, o.min_calls, o.window, o.consecutive_failures, o.open_for, o.half_open_calls) == (
        0.5, 10, 30.0, 5, 30.0, 3)
    assert o.slow_call is None
    assert o.failure_on == (Exception,) and o.ignore == ()


def test_transitions_table_is_the_documented_graph() -> None:
    drawn = {(a, b) for a, b, _ in TRANSITIONS}
    assert drawn == {
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
        (State.HALF_OPEN, State.OPEN),
    }
    assert all(why for _, _, why in TRANSITIONS)


def test_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    o, s = fresh(failure_rate=None, consecutive_failures=3)
    assert run(s, o, 1.0, FAIL) is None
    assert run(s, o, 1.0, FAIL) is None
    assert run(s, o, 1.0, OK) is None
    assert run(s, o, 1.0, FAIL) is None
    assert run(s, o, 1.0, IGNORED) is None  # neither a failure nor a success
    assert run(s, o, 1.0, FAIL) is None
    assert run(s, o, 1.0, FAIL) is State.OPEN
    assert s.state is State.OPEN


def test_opens_on_failure_rate_only_once_min_calls_were_seen() -> None:
    o, s = fresh(failure_rate=0.5, min_calls=4, consecutive_failures=None, window=10.0)
    for outcome in (FAIL, OK, FAIL):
        assert run(s, o, 5.0, outcome) is None  # 2 of 3 failed, but only 3 calls
    assert run(s, o, 5.0, OK) is State.OPEN  # 2 of 4: the rule is checked after a success too


def test_machine_pinned_no_fast_lane_before_time_zero() -> None:
    """Found by the machine: below 0, int() rounds up and a lane's end is not its bucket's end."""
    machine = BreakerMachine()
    machine.setup(options=Breaker(failure_rate=None, consecutive_failures=1, window=0.3), start=-40.0)
    machine.call()
    machine.succeed_on_the_lane()
    machine.advance(kind="width", x=0.0)  # -39.97: the next bucket of int(now / width)
    machine.call()
    machine.succeed_on_the_lane()
    machine.now += 0.27  # the first success's bucket leaves the window, the second's stays
    machine.agrees_with_the_model()
    assert machine.s.window.totals(machine.now) == (1, 0)
    machine.teardown()


@pytest.mark.parametrize("lane", [False, True], ids=["record", "fast-lane"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_failure_rate_is_checked_after_every_outcome(case: RuleCase, lane: bool) -> None:
    o = case.options
    s = BreakerState.new(o)
    start = 1000.0
    transition = None
    for at, failed in case.outcomes:
        assert s.state is State.CLOSED, f"opened before the outcome at {at}"
        now = start + at
        assert preflight(s, now, o).admitted
        if lane and not failed:
            transition = succeed_like_the_memory_store(s, now)
        else:
            transition = record(s, now, o, FAIL if failed else OK, False)
    assert transition is State.OPEN and s.state is State.OPEN
    assert not preflight(s, now, o).admitted


def test_a_failure_closes_the_fast_lane_when_the_next_success_could_open_the_breaker() -> None:
    o, s = fresh(failure_rate=0.5, min_calls=10, consecutive_failures=None, window=30.0)
    assert succeed_like_the_memory_store(s, 1.0) is None  # opens the lane: no failure yet
    lane_end = s.lane_end
    assert lane_end > 1.0
    for _ in range(3):
        assert succeed_like_the_memory_store(s, 1.0) is None  # on the lane
    for _ in range(4):
        assert run(s, o, 1.0, FAIL) is None
    assert s.lane_end == lane_end  # 4 failures of 8: the tenth call could reach at most 4 of 10
    assert run(s, o, 1.0, FAIL) is None
    assert s.lane_end < 1.0  # 5 failures of 9: a success as the tenth call would make 5 of 10
    assert succeed_like_the_memory_store(s, 1.0) is State.OPEN


def test_a_late_count_of_a_closed_lane_stays_in_the_lane_s_bucket() -> None:
    o, s = fresh(failure_rate=0.5, min_calls=4, consecutive_failures=None, window=30.0)
    assert succeed_like_the_memory_store(s, 1.0) is None  # the lane of bucket 0 (3 s wide)
    assert run(s, o, 1.0, FAIL) is None
    assert run(s, o, 1.0, FAIL) is None  # 2 of 3: the lane closes
    next(s.lane_count)  # a thread that saw the lane open counts after it closed
    assert succeed_like_the_memory_store(s, 31.0) is None  # bucket 10: bucket 0 has left the window
    absorb(s)
    assert s.window.totals(31.0) == (1, 0)


def test_the_fast_lane_stays_shut_while_a_success_could_open_the_breaker() -> None:
    o, s = fresh(failure_rate=0.5, min_calls=4, consecutive_failures=None, window=30.0)
    for _ in range(2):
        assert run(s, o, 1.0, FAIL) is None
    assert succeed_like_the_memory_store(s, 1.0) is None  # 2 of 3: a fourth call, a success, makes 2 of 4
    assert s.lane_end < 1.0
    assert succeed_like_the_memory_store(s, 1.0) is State.OPEN


def test_failure_rate_is_a_share_without_float_surprises() -> None:
    # 0.07 * 100 == 7.000000000000001 > 7: seven failures in a hundred calls must open a 7 % breaker.
    o, s = fresh(failure_rate=0.07, min_calls=100, consecutive_failures=None, window=100.0)
    for _ in range(93):
        assert run(s, o, 50.0, OK) is None
    for _ in range(6):
        assert run(s, o, 50.0, FAIL) is None
    assert run(s, o, 50.0, FAIL) is State.OPEN


def test_old_buckets_leave_the_window() -> None:
    o, s = fresh(failure_rate=0.5, min_calls=2, consecutive_failures=None, window=10.0)
    assert run(s, o, 100.0, FAIL) is None  # bucket 100
    assert s.window.totals(109.9) == (1, 1)  # bucket 109: 100 is the oldest of the last ten
    assert s.window.totals(110.0) == (0, 0)  # bucket 110: 100 has left
    assert run(s, o, 110.0, FAIL) is None  # one call in the window: below min_calls


def test_counts_from_before_an_opening_do_not_survive_it_even_near_time_zero() -> None:
    # The window is cleared when the breaker opens and closes; a clock that starts at 0
    # (or any value below nine bucket widths) must not see the cleared buckets again.
    o, s = fresh(failure_rate=0.5, min_calls=2, consecutive_failures=None, window=10.0, open_for=0.5,
                 half_open_calls=1)
    assert run(s, o, 0.0, FAIL) is None
    assert run(s, o, 0.0, FAIL) is State.OPEN
    assert run(s, o, 1.0, OK) is State.CLOSED  # the half-open trial
    assert s.window.totals(1.5) == (0, 0)
    assert run(s, o, 1.5, FAIL) is None  # one failure in one call: below min_calls=2
    assert s.state is State.CLOSED


def test_open_rejects_with_the_time_left_then_half_opens_at_the_first_call() -> None:
    o, s = fresh(consecutive_failures=1, open_for=30.0, half_open_calls=2)
    assert run(s, o, 100.0, FAIL) is State.OPEN
    flight = preflight(s, 110.0, o)
    assert not flight.admitted and flight.retry_after == pytest.approx(20.0)
    assert preflight(s, 129.999, o).retry_after == pytest.approx(0.001)
    assert s.state is State.OPEN  # time alone moves nothing
    flight = preflight(s, 130.0, o)
    assert flight == Preflight(True, trial=True, transition=State.HALF_OPEN)
    assert preflight(s, 130.0, o) == Preflight(True, trial=True)
    third = preflight(s, 130.0, o)  # both permits are out
    assert not third.admitted and 0 < third.retry_after <= o.open_for
    assert record(s, 131.0, o, OK, True) is None
    assert record(s, 131.0, o, OK, True) is State.CLOSED


def test_a_failed_trial_reopens_for_a_full_open_for() -> None:
    o, s = fresh(consecutive_failures=1, open_for=5.0, half_open_calls=3)
    run(s, o, 0.0, FAIL)
    assert preflight(s, 5.0, o).trial
    assert record(s, 6.0, o, FAIL, True) is State.OPEN
    assert s.opened_at == 6.0
    assert preflight(s, 10.0, o).retry_after == pytest.approx(1.0)


def test_an_ignored_trial_gives_its_permit_back() -> None:
    o, s = fresh(consecutive_failures=1, open_for=5.0, half_open_calls=1)
    run(s, o, 0.0, FAIL)
    assert preflight(s, 5.0, o).trial
    assert not preflight(s, 5.0, o).admitted
    assert record(s, 5.0, o, IGNORED, True) is None
    assert preflight(s, 5.0, o).trial
    assert record(s, 5.0, o, OK, True) is State.CLOSED


def test_lost_trial_permits_are_taken_back_after_open_for() -> None:
    o, s = fresh(consecutive_failures=1, open_for=5.0, half_open_calls=1)
    run(s, o, 0.0, FAIL)
    assert preflight(s, 5.0, o).trial  # this trial's outcome never arrives
    assert not preflight(s, 9.9, o).admitted
    assert preflight(s, 10.0, o).trial


def test_outcomes_of_calls_started_before_a_transition_change_nothing() -> None:
    o, s = fresh(consecutive_failures=1, open_for=5.0, half_open_calls=1)
    assert preflight(s, 0.0, o).admitted
    assert preflight(s, 0.0, o).admitted
    assert record(s, 0.0, o, FAIL, False) is State.OPEN
    assert record(s, 1.0, o, FAIL, False) is None  # the other call, finishing while open
    assert record(s, 1.0, o, OK, False) is None
    assert s.state is State.OPEN and s.opened_at == 0.0
    assert preflight(s, 5.0, o).trial
    assert record(s, 5.5, o, FAIL, False) is None  # a non-trial call finishing while half-open
    assert state_of(s) is State.HALF_OPEN


def test_forced_states_and_reset() -> None:
    o, s = fresh(consecutive_failures=1)
    force(s, State.FORCED_OPEN)
    flight = preflight(s, 0.0, o)
    assert not flight.admitted and flight.retry_after == o.open_for
    assert preflight(s, 1e9, o) == flight  # time does not end a forced state
    force(s, State.FORCED_CLOSED)
    for _ in range(10):
        assert run(s, o, 0.0, FAIL) is None  # disabled: records nothing
    assert state_of(s) is State.FORCED_CLOSED
    force(s, State.CLOSED)
    assert state_of(s) is State.CLOSED
    assert run(s, o, 0.0, FAIL) is State.OPEN
    force(s, State.CLOSED)  # reset leaves open at once
    assert state_of(s) is State.CLOSED and preflight(s, 0.0, o).admitted


@pytest.mark.parametrize("target", [State.OPEN, State.HALF_OPEN])
def test_force_refuses_states_that_only_the_rules_may_reach(target: State) -> None:
    _, s = fresh()
    with pytest.raises(ValueError, match=str(target)):
        force(s, target)


# -- classify ---------------------------------------------------------------------


def test_classify_default_counts_every_exception_but_not_base_exceptions() -> None:
    o = Breaker()
    assert o.classify(ValueError()) is FAIL
    assert o.classify(baldur.CallTimeout("x", 1.0)) is FAIL
    assert o.classify(KeyboardInterrupt()) is IGNORED
    assert o.classify(SystemExit()) is IGNORED


def test_classify_with_failure_on_and_ignore() -> None:
    o = Breaker(failure_on=(OSError, TimeoutError), ignore=FileNotFoundError)
    assert o.failure_on == (OSError, TimeoutError) and o.ignore == (FileNotFoundError,)
    assert o.classify(ConnectionError()) is FAIL  # an OSError
    assert o.classify(TimeoutError()) is FAIL
    assert o.classify(FileNotFoundError()) is IGNORED  # ignore wins over failure_on
    assert o.classify(ValueError()) is IGNORED
    single = Breaker(failure_on=KeyError)
    assert single.failure_on == (KeyError,)
    assert single.classify(KeyError()) is FAIL and single.classify(IndexError()) is IGNORED


# -- validation -------------------------------------------------------------------

NAN, INF = math.nan, math.inf

BAD_OPTIONS: list[tuple[str, object]] = [
    *[("failure_rate", v) for v in (0, 0.0, -0.5, 1.01, 2, True, False, "0.5", NAN, INF, -INF)],
    *[("min_calls", v) for v in (0, -1, 2.5, 10.0, True, "10", NAN, None)],
    *[("window", v) for v in (0, -1.0, True, "30", NAN, INF, None)],
    *[("consecutive_failures", v) for v in (0, -3, 1.5, 5.0, True, "5", INF)],
    *[("open_for", v) for v in (0, -30.0, False, "30", NAN, INF, None)],
    *[("half_open_calls", v) for v in (0, -1, 1.5, True, "3", NAN, None)],
    *[("slow_call", v) for v in (0, -2.0, True, "2", NAN, INF)],
    *[("failure_on", v) for v in ("OSError", 42, OSError(), (OSError, int), [OSError], None)],
    *[("ignore", v) for v in ("ValueError", ValueError("x"), (ValueError, "x"), object)],
]


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v in BAD_OPTIONS])
def test_bad_option_is_a_config_error_naming_field_value_and_example(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Breaker(**{name: value})  # type: ignore[arg-type]
    message = str(caught.value)
    assert name in message
    assert repr(value) in message
    assert f"for example: Breaker({name}=" in message
    assert caught.value.value is value or caught.value.value == value
    assert isinstance(caught.value, ValueError)  # ConfigError is also a ValueError


def test_both_opening_rules_off_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="failure_rate") as caught:
        Breaker(failure_rate=None, consecutive_failures=None)
    assert "consecutive_failures" in str(caught.value)
    assert "for example" in str(caught.value)


def test_good_options_are_normalised() -> None:
    o = Breaker(failure_rate=1, min_calls=1, window=1, consecutive_failures=None, open_for=2, half_open_calls=1,
                slow_call=3)
    assert o.failure_rate == 1.0 and isinstance(o.failure_rate, float)
    assert o.window == 1.0 and isinstance(o.window, float)
    assert o.open_for == 2.0 and isinstance(o.open_for, float)
    assert o.slow_call == 3.0 and isinstance(o.slow_call, float)
    assert Breaker(failure_rate=None).failure_rate is None
    assert Breaker(slow_call=0.25).slow_call == 0.25


@given(st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=200, deadline=None)
def test_failure_rate_accepts_exactly_the_shares_in_0_1(value: float) -> None:
    if 0 < value <= 1:
        assert Breaker(failure_rate=value).failure_rate == value
    else:
        with pytest.raises(ConfigError, match="failure_rate"):
            Breaker(failure_rate=value)
