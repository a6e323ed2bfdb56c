"""GCRA rate limiting as a pure function, against an exact reference model.

The reference (REFERENCES.md, "GCRA") works in exact fractions: ``tat = max(stored, now)``;
allowed iff ``tat - now <= tau``; store ``tat + T``; ``retry_after = tat - tau - now`` when
refused; ``remaining = floor((tau - (tat + T - now)) / T) + 1`` clamped at 0 when admitted.
The code works in floats and may admit a call a hair (far below a microsecond here) before
its exact time, so that rounding never refuses a call that is due exactly now; the tests
allow that much and nothing more.
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
from baldur.policies.rate_limit import RateDecision, RateLimit, gcra

QUOTAS = (1, 2, 3, 5, 7, 10, 30, 50)
UNITS = ("second", "minute", "hour")
#: Clocks are non-negative (monotonic clocks and Redis TIME are): the code's rounding slack is sized
#: from the magnitude of the new TAT, which bounds the error of a TAT built upwards from a time >= 0.
STARTS = (0.0, 0.25, 12.34, 1000.5, 1e5 + 0.125)


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


def rounding_band(limit: RateLimit, now: float) -> float:
    """How early the float code may admit a call: a few parts per billion of the clock's magnitude."""
    return 2e-9 * (1.0 + abs(now) + limit.period * (limit.burst + 2) / limit.quota)


def matches(d: RateDecision, e: Expected, tol: float) -> bool:
    return (
        d.allowed == e.allowed
        and d.remaining == e.remaining
        and abs(d.retry_after - float(e.retry_after)) <= tol
        and abs(d.next_after - float(e.next_after)) <= tol
        and abs(d.reset_after - float(e.reset_after)) <= tol
    )


def capacity(tat: float | None, now: float, limit: RateLimit) -> int:
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
    now: float
    tat: float | None
    model_tat: Fraction | None
    admitted: list[float]
    due: float | None
    last_retry: float

    @initialize(limit=limits(), start=st.sampled_from(STARTS))
    def setup(self, limit: RateLimit, start: float) -> None:
        self.limit = limit
        self.T = Fraction(limit.period) / limit.quota
        self.tau = self.T * (limit.burst - 1)
        self.now = start
        self.tat = self.model_tat = None
        self.admitted = []
        self.due = None  # when the last refusal said the call would be admitted
        self.last_retry = 0.0

    @rule(kind=st.sampled_from(("grid", "any", "refill", "to_tat", "retry")), k=st.integers(0, 24),
          x=st.floats(0, 1, allow_nan=False))
    def advance(self, kind: str, k: int, x: float) -> None:
        interval = self.limit.interval
        if kind == "grid":  # multiples of T/8 hit the exact boundaries
            step = interval * k / 8
        elif kind == "any":
            step = x * 3 * interval
        elif kind == "refill":
            step = interval * (self.limit.burst + 1)
        elif kind == "to_tat":
            step = 0.0 if self.tat is None else max(0.0, self.tat - self.now)
        else:
            step = self.last_retry
        self.now += step

    @rule()
    def call(self) -> None:
        limit = self.limit
        decision, stored = gcra(self.tat, self.now, limit)
        band = rounding_band(limit, self.now)
        now = Fraction(self.now)
        exact = reference(self.model_tat, now, self.T, self.tau)
        early = reference(self.model_tat, now, self.T, self.tau + Fraction(band))
        assert matches(decision, exact, 3 * band) or matches(decision, early, 3 * band), (decision, exact, early)
        if self.due is not None and self.now >= self.due:
            assert decision.allowed, "a call made retry_after seconds after a refusal must be admitted"
        if decision.allowed:
            assert stored is not None
            assert decision.retry_after == 0.0
            assert 0 <= decision.remaining < limit.burst
            assert 0 < decision.next_after <= limit.interval * (1 + 1e-9) + band
            base = now if self.model_tat is None else max(self.model_tat, now)
            self.model_tat = base + self.T
            assert abs(stored - float(self.model_tat)) <= band
            self._check_horizon()
            self.due = None
        else:
            assert stored == self.tat  # a refused call stores nothing
            assert decision.remaining == 0
            assert decision.retry_after > 0 and decision.next_after == decision.retry_after
            self.due = self.now + decision.retry_after
            self.last_retry = decision.retry_after
        self.tat = stored

    def _check_horizon(self) -> None:
        """Over any horizon H, at most burst + H/T calls are admitted."""
        t_j = self.now
        self.admitted.append(t_j)
        n = len(self.admitted)
        for i, t_i in enumerate(self.admitted):
            count = n - i
            assert count <= self.limit.burst + (t_j - t_i) / self.limit.interval + 1e-3, (count, t_j - t_i)

    @invariant()
    def model_and_code_store_the_same_tat(self) -> None:
        if self.model_tat is None:
            assert self.tat is None
        else:
            assert self.tat is not None
            assert abs(self.tat - float(self.model_tat)) <= rounding_band(self.limit, self.now)


GcraMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestGcraMachine = GcraMachine.TestCase


# -- properties -------------------------------------------------------------------


@given(limit=limits(), now=st.floats(0, 1e6, allow_nan=False))
@settings(max_examples=200, deadline=None)
def test_a_burst_at_one_instant_admits_exactly_burst(limit: RateLimit, now: float) -> None:
    tat = None
    remaining = []
    for _ in range(limit.burst):
        decision, tat = gcra(tat, now, limit)
        assert decision.allowed
        remaining.append(decision.remaining)
    assert remaining == list(range(limit.burst - 1, -1, -1))
    refused, kept = gcra(tat, now, limit)
    assert not refused.allowed and kept == tat
    assert refused.retry_after == pytest.approx(limit.interval, rel=1e-6)


@st.composite
def histories(draw: st.DrawFn) -> tuple[RateLimit, float | None, float]:
    """A limit, a stored TAT built by random earlier calls, and the time of the next call."""
    limit = draw(limits())
    now = draw(st.sampled_from(STARTS))
    tat: float | None = None
    for gap in draw(st.lists(st.floats(0, 1, allow_nan=False), max_size=60)):
        now += gap * limit.interval
        _, tat = gcra(tat, now, limit)
    return limit, tat, now


@given(histories())
@settings(max_examples=300, deadline=None)
def test_remaining_is_what_can_still_be_admitted_now(history: tuple[RateLimit, float | None, float]) -> None:
    limit, tat, now = history
    decision, tat = gcra(tat, now, limit)
    assume(decision.allowed)
    for _ in range(decision.remaining):
        more, tat = gcra(tat, now, limit)
        assert more.allowed
    assert not gcra(tat, now, limit)[0].allowed


@given(histories())
@settings(max_examples=300, deadline=None)
def test_next_after_is_the_time_until_one_more_unit(history: tuple[RateLimit, float | None, float]) -> None:
    limit, tat, now = history
    decision, tat = gcra(tat, now, limit)
    probe = 3 * rounding_band(limit, now)
    assert probe < limit.interval / 4
    target = now + decision.next_after
    if decision.allowed:
        assert capacity(tat, now, limit) == decision.remaining
        assert capacity(tat, target + probe, limit) == decision.remaining + 1
        if decision.next_after > 2 * probe:
            assert capacity(tat, target - probe, limit) == decision.remaining
    else:
        assert decision.next_after == decision.retry_after
        assert capacity(tat, now + decision.retry_after, limit) >= 1  # retry_after is never too early
        if decision.retry_after > 2 * probe:
            assert capacity(tat, now + decision.retry_after - probe, limit) == 0


@given(histories())
@settings(max_examples=200, deadline=None)
def test_reset_after_is_the_time_until_the_full_quota(history: tuple[RateLimit, float | None, float]) -> None:
    limit, tat, now = history
    decision, tat = gcra(tat, now, limit)
    probe = 3 * rounding_band(limit, now)
    assert decision.reset_after >= 0
    assert capacity(tat, now + decision.reset_after + probe, limit) == limit.burst
    if decision.reset_after > limit.interval:
        assert capacity(tat, now + decision.reset_after - limit.interval / 2, limit) < limit.burst


# -- the documented examples ------------------------------------------------------


@pytest.mark.parametrize("start", [0.0, 1000.0, 123_456.789, 3e6])
def test_100_per_minute_admits_100_at_once_then_one_every_0_6_s(start: float) -> None:
    limit = RateLimit("100/minute")
    assert (limit.quota, limit.period, limit.burst) == (100, 60.0, 100)
    assert limit.interval == pytest.approx(0.6)
    tat = None
    for i in range(100):
        decision, tat = gcra(tat, start, limit)
        assert decision.allowed, i
        assert decision.remaining == 99 - i
    decision, tat = gcra(tat, start, limit)
    assert not decision.allowed
    assert decision.retry_after == pytest.approx(0.6)
    for k in range(1, 301):
        now = start + k * 0.6
        assert not gcra(tat, now - 0.3, limit)[0].allowed, k  # not between the ticks
        decision, tat = gcra(tat, now, limit)
        assert decision.allowed, k  # one on each tick
        assert decision.remaining == 0 and decision.next_after == pytest.approx(0.6)
        refused, tat = gcra(tat, now, limit)
        assert not refused.allowed, k  # and only one
        assert refused.retry_after == pytest.approx(0.6)


def test_a_smaller_burst_is_smoother() -> None:
    limit = RateLimit("100/minute", burst=10)
    assert limit.tolerance == pytest.approx(0.6 * 9)
    tat = None
    admitted = 0
    for _ in range(20):
        decision, tat = gcra(tat, 0.0, limit)
        admitted += decision.allowed
    assert admitted == 10
    assert gcra(tat, 0.6, limit)[0].allowed


def test_decision_fields_for_10_per_second() -> None:
    limit = RateLimit("10/second")
    first, tat = gcra(None, 100.0, limit)
    assert (first.allowed, first.remaining, first.retry_after) == (True, 9, 0.0)
    assert first.next_after == pytest.approx(0.1) and first.reset_after == pytest.approx(0.1)
    assert tat == pytest.approx(100.1)
    for _ in range(9):
        last, tat = gcra(tat, 100.0, limit)
    assert last.allowed and last.remaining == 0
    assert last.next_after == pytest.approx(0.1) and last.reset_after == pytest.approx(1.0)
    refused, kept = gcra(tat, 100.05, limit)
    assert not refused.allowed and kept == tat
    assert refused.retry_after == pytest.approx(0.05) and refused.next_after == pytest.approx(0.05)
    assert refused.reset_after == pytest.approx(0.95)
    later, _ = gcra(tat, 100.1, limit)
    assert later.allowed and later.remaining == 0
    idle, _ = gcra(tat, 500.0, limit)  # long idle: a full quota again
    assert idle.allowed and idle.remaining == 9


def test_a_call_may_cost_several_units() -> None:
    limit = RateLimit("10/second")
    decision, tat = gcra(None, 0.0, limit, cost=3)
    assert decision.allowed and decision.remaining == 7
    assert tat == pytest.approx(0.3)
    decision, tat = gcra(tat, 0.0, limit, cost=7)
    assert decision.allowed and decision.remaining == 0
    refused, _ = gcra(tat, 0.0, limit, cost=2)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.2)


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
    assert limit.interval == pytest.approx(period / quota)
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
        decision, tat = gcra(tat, 0.0, limit)
        admitted += decision.allowed
    assert admitted == 5
