"""GCRA rate limiting as a pure function, against an exact reference model.

The reference (REFERENCES.md, "GCRA") works in exact fractions: ``tat = max(stored, now)``;
allowed iff ``tat - now <= tau``; store ``tat + T``; ``retry_after = tat - tau - now`` when
refused; ``remaining = floor((tau - (tat + T - now)) / T) + 1`` clamped at 0 when admitted.
The code keeps time in integer microseconds with T = period / quota rounded up to a whole
microsecond, so it must agree with the reference exactly, at any clock (epoch-scale too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from baldur.errors import ConfigError
from baldur.policies.rate_limit import MICROS, RateDecision, RateLimit, gcra

QUOTAS = (1, 2, 3, 5, 7, 10, 30, 50)
UNITS = ("second", "minute", "hour")
#: Clocks in microseconds, from a fresh monotonic clock to Redis TIME (the epoch, 1.7e15 µs).
STARTS = (0, 250_000, 12_340_000, 1_000_500_000, 1_700_000_000_123_457)


# -- the reference model ------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    allowed: bool
    remaining: int
    retry_after: Fraction
    next_after: Fraction
    reset_after: Fraction
    tat: Fraction | None


def reference(stored: Fraction | None, now: Fraction, interval: Fraction, tau: Fraction) -> Expected:
    """GCRA for a call of cost 1, exactly as REFERENCES.md states it."""
    tat = now if stored is None else max(stored, now)
    if tat - now > tau:
        wait = tat - tau - now
        return Expected(False, 0, wait, wait, tat - now, stored)
    new_tat = tat + interval
    slack = tau - (new_tat - now)
    remaining = max(0, math.floor(slack / interval) + 1)
    # One more unit is available when the slack reaches the next multiple of the interval.
    next_after = interval - slack % interval if slack >= 0 else -slack
    return Expected(True, remaining, Fraction(0), next_after, new_tat - now, new_tat)


def seconds(micros: Fraction) -> float:
    return float(micros / MICROS)


def matches(d: RateDecision, e: Expected) -> bool:
    return (
        d.allowed == e.allowed
        and d.remaining == e.remaining
        and d.retry_after == seconds(e.retry_after)
        and d.next_after == seconds(e.next_after)
        and d.reset_after == seconds(e.reset_after)
    )


def us(seconds: float) -> int:
    return round(seconds * MICROS)


def capacity(tat: int | None, now: int, limit: RateLimit) -> int:
    """How many calls would be admitted at ``now`` (probing with one call)."""
    d, _ = gcra(tat, now, limit)
    return d.remaining + 1 if d.allowed else 0


@st.composite
def limits(draw: st.DrawFn) -> RateLimit:
    quota = draw(st.sampled_from(QUOTAS))
    unit = draw(st.sampled_from(UNITS))
    burst = draw(st.none() | st.integers(1, 50))
    return RateLimit(f"{quota}/{unit}", burst=burst)


# -- the state machine ------------------------------------------------------------


class GcraMachine(RuleBasedStateMachine):
    """Random calls and clock moves: the code agrees with the exact reference model."""

    limit: RateLimit
    T: Fraction
    tau: Fraction
    now: int
    tat: int | None
    model_tat: Fraction | None
    admitted: list[int]
    due: int | None
    last_retry: int

    @initialize(limit=limits(), start=st.sampled_from(STARTS))
    def setup(self, limit: RateLimit, start: int) -> None:
        self.limit = limit
        self.T = Fraction(limit.interval_us)
        assert limit.period * MICROS / limit.quota <= self.T < limit.period * MICROS / limit.quota + 1
        self.tau = self.T * (limit.burst - 1)
        self.now = start
        self.tat = self.model_tat = None
        self.admitted = []
        self.due = None  # when the last refusal said the call would be admitted
        self.last_retry = 0

    @rule(kind=st.sampled_from(("grid", "any", "refill", "to_tat", "retry")), k=st.integers(0, 24),
          x=st.floats(0, 1, allow_nan=False))
    def advance(self, kind: str, k: int, x: float) -> None:
        interval = self.limit.interval_us
        if kind == "grid":  # multiples of T/8 hit the exact boundaries
            step = interval * k // 8
        elif kind == "any":
            step = round(x * 3 * interval)
        elif kind == "refill":
            step = interval * (self.limit.burst + 1)
        elif kind == "to_tat":
            step = 0 if self.tat is None else max(0, self.tat - self.now)
        else:
            step = self.last_retry
        self.now += step

    @rule()
    def call(self) -> None:
        limit = self.limit
        decision, stored = gcra(self.tat, self.now, limit)
        now = Fraction(self.now)
        exact = reference(self.model_tat, now, self.T, self.tau)
        assert matches(decision, exact), (decision, exact)
        if self.due is not None and self.now >= self.due:
            assert decision.allowed, "a call made retry_after seconds after a refusal must be admitted"
        if decision.allowed:
            assert stored is not None
            assert decision.retry_after == 0.0
            assert 0 <= decision.remaining < limit.burst
            assert 0 < decision.next_after <= limit.interval
            base = now if self.model_tat is None else max(self.model_tat, now)
            self.model_tat = base + self.T
            assert stored == self.model_tat
            self._check_horizon()
            self.due = None
        else:
            assert stored == self.tat  # a refused call stores nothing
            assert decision.remaining == 0
            assert decision.retry_after > 0 and decision.next_after == decision.retry_after
            self.due = self.now + us(decision.retry_after)
            self.last_retry = us(decision.retry_after)
        self.tat = stored

    def _check_horizon(self) -> None:
        """Over any horizon H, at most burst + H/T calls are admitted."""
        t_j = self.now
        self.admitted.append(t_j)
        n = len(self.admitted)
        for i, t_i in enumerate(self.admitted):
            count = n - i
            assert count <= self.limit.burst + (t_j - t_i) / self.limit.interval_us, (count, t_j - t_i)

    @invariant()
    def model_and_code_store_the_same_tat(self) -> None:
        if self.model_tat is None:
            assert self.tat is None
        else:
            assert self.tat == self.model_tat


GcraMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestGcraMachine = GcraMachine.TestCase


# -- properties -------------------------------------------------------------------


@given(limit=limits(), now=st.integers(0, 2_000_000_000_000_000))
@settings(max_examples=200, deadline=None)
def test_a_burst_at_one_instant_admits_exactly_burst(limit: RateLimit, now: int) -> None:
    tat = None
    remaining = []
    for _ in range(limit.burst):
        decision, tat = gcra(tat, now, limit)
        assert decision.allowed
        remaining.append(decision.remaining)
    assert remaining == list(range(limit.burst - 1, -1, -1))
    refused, kept = gcra(tat, now, limit)
    assert not refused.allowed and kept == tat
    assert refused.retry_after == limit.interval


@st.composite
def histories(draw: st.DrawFn) -> tuple[RateLimit, int | None, int]:
    """A limit, a stored TAT built by random earlier calls, and the time of the next call."""
    limit = draw(limits())
    now = draw(st.sampled_from(STARTS))
    tat: int | None = None
    for gap in draw(st.lists(st.floats(0, 1, allow_nan=False), max_size=60)):
        now += round(gap * limit.interval_us)
        _, tat = gcra(tat, now, limit)
    return limit, tat, now


@given(histories())
@settings(max_examples=300, deadline=None)
def test_remaining_is_what_can_still_be_admitted_now(history: tuple[RateLimit, int | None, int]) -> None:
    limit, tat, now = history
    decision, tat = gcra(tat, now, limit)
    assume(decision.allowed)
    for _ in range(decision.remaining):
        more, tat = gcra(tat, now, limit)
        assert more.allowed
    assert not gcra(tat, now, limit)[0].allowed


@given(histories())
@settings(max_examples=300, deadline=None)
def test_next_after_is_the_time_until_one_more_unit(history: tuple[RateLimit, int | None, int]) -> None:
    limit, tat, now = history
    decision, tat = gcra(tat, now, limit)
    target = now + us(decision.next_after)
    if decision.allowed:
        assert capacity(tat, now, limit) == decision.remaining
        assert capacity(tat, target, limit) == decision.remaining + 1
        assert capacity(tat, target - 1, limit) == decision.remaining
    else:
        assert decision.next_after == decision.retry_after
        assert capacity(tat, now + us(decision.retry_after), limit) >= 1  # retry_after is never too early
        assert capacity(tat, now + us(decision.retry_after) - 1, limit) == 0


@given(histories())
@settings(max_examples=200, deadline=None)
def test_reset_after_is_the_time_until_the_full_quota(history: tuple[RateLimit, int | None, int]) -> None:
    limit, tat, now = history
    decision, tat = gcra(tat, now, limit)
    assert decision.reset_after >= 0
    assert capacity(tat, now + us(decision.reset_after), limit) == limit.burst
    if decision.reset_after > 0:
        assert capacity(tat, now + us(decision.reset_after) - 1, limit) < limit.burst


# -- the documented examples ------------------------------------------------------


@pytest.mark.parametrize("start", [0, 1_000_000_000, 123_456_789_000, 1_700_000_000_123_457])
def test_100_per_minute_admits_100_at_once_then_one_every_0_6_s(start: int) -> None:
    limit = RateLimit("100/minute")
    assert (limit.quota, limit.period, limit.burst) == (100, 60.0, 100)
    assert limit.interval_us == 600_000 and limit.interval == 0.6
    tat = None
    for i in range(100):
        decision, tat = gcra(tat, start, limit)
        assert decision.allowed, i
        assert decision.remaining == 99 - i
    decision, tat = gcra(tat, start, limit)
    assert not decision.allowed
    assert decision.retry_after == 0.6
    for k in range(1, 301):
        now = start + k * 600_000
        assert not gcra(tat, now - 1, limit)[0].allowed, k  # not a microsecond before the tick
        decision, tat = gcra(tat, now, limit)
        assert decision.allowed, k  # one on each tick
        assert decision.remaining == 0 and decision.next_after == 0.6
        refused, tat = gcra(tat, now, limit)
        assert not refused.allowed, k  # and only one
        assert refused.retry_after == 0.6


def test_a_smaller_burst_is_smoother() -> None:
    limit = RateLimit("100/minute", burst=10)
    assert limit.tolerance_us == 600_000 * 9
    tat = None
    admitted = 0
    for _ in range(20):
        decision, tat = gcra(tat, 0, limit)
        admitted += decision.allowed
    assert admitted == 10
    assert gcra(tat, 600_000, limit)[0].allowed


def test_decision_fields_for_10_per_second() -> None:
    limit = RateLimit("10/second")
    first, tat = gcra(None, 100_000_000, limit)
    assert (first.allowed, first.remaining, first.retry_after) == (True, 9, 0.0)
    assert first.next_after == 0.1 and first.reset_after == 0.1
    assert tat == 100_100_000
    for _ in range(9):
        last, tat = gcra(tat, 100_000_000, limit)
    assert last.allowed and last.remaining == 0
    assert last.next_after == 0.1 and last.reset_after == 1.0
    refused, kept = gcra(tat, 100_050_000, limit)
    assert not refused.allowed and kept == tat
    assert refused.retry_after == 0.05 and refused.next_after == 0.05
    assert refused.reset_after == 0.95
    later, _ = gcra(tat, 100_100_000, limit)
    assert later.allowed and later.remaining == 0
    idle, _ = gcra(tat, 500_000_000, limit)  # long idle: a full quota again
    assert idle.allowed and idle.remaining == 9


def test_a_call_may_cost_several_units() -> None:
    limit = RateLimit("10/second")
    decision, tat = gcra(None, 0, limit, cost=3)
    assert decision.allowed and decision.remaining == 7
    assert tat == 300_000
    decision, tat = gcra(tat, 0, limit, cost=7)
    assert decision.allowed and decision.remaining == 0
    refused, _ = gcra(tat, 0, limit, cost=2)
    assert not refused.allowed and refused.retry_after == 0.2


@pytest.mark.parametrize(("spec", "interval_us"), [
    ("10000/second", 100), ("50000/minute", 1200), ("100000/day", 864_000), ("15000/second", 67),
    ("3/second", 333_334), ("7/2 hours", 1_028_571_429),
])
def test_the_interval_is_whole_microseconds_rounded_up(spec: str, interval_us: int) -> None:
    limit = RateLimit(spec)
    assert limit.interval_us == interval_us
    assert limit.interval_us * limit.quota >= limit.period * MICROS  # never more than the quota


@pytest.mark.parametrize("spec", ["10000/second", "15000/second", "50000/minute", "100000/day"])
def test_a_burst_at_an_epoch_instant_admits_exactly_the_quota_and_then_one_per_interval(spec: str) -> None:
    limit = RateLimit(spec)
    now = 1_700_000_000_123_457
    tat = None
    admitted = 0
    for _ in range(limit.quota + 10):
        decision, tat = gcra(tat, now, limit)
        admitted += decision.allowed
    assert admitted == limit.quota
    refused, _ = gcra(tat, now, limit)
    assert refused.retry_after == limit.interval
    assert not gcra(tat, now + limit.interval_us - 1, limit)[0].allowed  # not one microsecond early
    decision, _ = gcra(tat, now + limit.interval_us, limit)
    assert decision.allowed and decision.remaining == 0


# -- parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "quota", "period"),
    [
        ("10/second", 10, 1.0),
        ("100/minute", 100, 60.0),
        ("5000/hour", 5000, 3600.0),
        ("1/day", 1, 86400.0),
        ("100 per minute", 100, 60.0),
        ("  7 / 2 hours ", 7, 7200.0),
        ("10/SECOND", 10, 1.0),
        ("3/5m", 3, 300.0),
        ("30/s", 30, 1.0),
        ("2/days", 2, 86400.0),
    ],
)
def test_rate_strings_parse(spec: str, quota: int, period: float) -> None:
    limit = RateLimit(spec)
    assert (limit.quota, limit.period, limit.burst) == (quota, period, quota)
    assert limit.enabled
    assert 0 <= limit.interval - period / quota < 1e-6
    assert limit.spec == spec.strip()
    assert repr(limit) == f"RateLimit({spec.strip()!r}, burst={quota})"


@pytest.mark.parametrize("spec", ["off", "OFF", " off ", "none", "0"])
def test_off_disables(spec: str) -> None:
    assert not RateLimit(spec).enabled


BAD_SPECS = ["abc", "0/minute", "10/fortnight", "", "   ", "10", "/minute", "-5/minute", "1.5/second",
             "ten/second", "10/0seconds", "10/minute/extra", "10 minutes"]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_rate_strings_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimit(spec)
    message = str(caught.value)
    assert message.startswith("RateLimit=")
    assert repr(spec) in message
    assert 'for example: RateLimit("100/minute")' in message


def test_the_setting_named_in_the_error_is_the_callers() -> None:
    with pytest.raises(ConfigError, match=r"^BALDUR_RATE_LIMIT='10/fortnight' .*fortnight"):
        RateLimit("10/fortnight", setting="BALDUR_RATE_LIMIT")


@pytest.mark.parametrize("spec", [100, 1.5, None, b"10/second", ("10", "second")])
def test_a_spec_that_is_not_a_string_is_a_config_error(spec: object) -> None:
    with pytest.raises(ConfigError, match="RateLimit") as caught:
        RateLimit(spec)  # type: ignore[arg-type]
    assert repr(spec) in str(caught.value) and "100/minute" in str(caught.value)


@pytest.mark.parametrize("burst", [0, -1, True, False, 1.5, 10.0, "10", math.nan, math.inf])
def test_bad_burst_is_a_config_error(burst: object) -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimit("100/minute", burst=burst)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "burst" in message and repr(burst) in message
    assert 'for example: RateLimit("100/minute", burst=10)' in message


def test_burst_may_exceed_the_quota() -> None:
    limit = RateLimit("1/second", burst=5)
    tat = None
    admitted = 0
    for _ in range(10):
        decision, tat = gcra(tat, 0, limit)
        admitted += decision.allowed
    assert admitted == 5
