"""Adaptive shedding as a pure policy: time and observations in, decision out."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baldur.errors import ConfigError
from baldur.policies.shedding import MAX_RETRY_AFTER, AdaptiveLimit, Priority, QueueDelay, parse_priority

delays = st.floats(0, 0.010, allow_nan=False)
gaps = st.floats(0.0001, 0.5, allow_nan=False)


@given(st.lists(st.tuples(gaps, delays), min_size=1, max_size=300))
@settings(max_examples=200, deadline=None)
def test_a_queue_that_never_waits_past_the_target_sheds_nothing(arrivals: list[tuple[float, float]]) -> None:
    policy = QueueDelay()
    now = 1000.0
    for gap, waited in arrivals:
        now += gap
        assert policy.admits(now, waited)
    assert not policy.overloaded


@given(st.lists(st.tuples(gaps, st.floats(0, 0.100, allow_nan=False)), min_size=1, max_size=300))
@settings(max_examples=200, deadline=None)
def test_nothing_is_shed_unless_a_queue_stands(
        arrivals: list[tuple[float, float]]) -> None:
    policy = QueueDelay()
    now = 1000.0
    for gap, waited in arrivals:
        now += gap
        admitted = policy.admits(now, waited)
        if not policy.overloaded:
            assert admitted


@given(waited=st.floats(0.011, 5.0, allow_nan=False), requests=st.integers(30, 200))
@settings(max_examples=100, deadline=None)
def test_a_standing_queue_sheds_after_one_interval(waited: float, requests: int) -> None:
    policy = QueueDelay()
    now, shed = 1000.0, 0
    policy.admits(now, 0.0)  # an idle moment first: the delay floor
    for _ in range(requests):
        now += 0.01
        shed += not policy.admits(now, waited)
    assert policy.overloaded and shed > 0
    assert policy.retry_after(now) >= 1.0


@given(skew=st.floats(0, 5.0, allow_nan=False), jitter=st.lists(delays, min_size=1, max_size=300))
@settings(max_examples=100, deadline=None)
def test_a_proxy_clock_behind_by_a_constant_is_not_a_queue(skew: float, jitter: list[float]) -> None:
    policy = QueueDelay()
    now = 1000.0
    policy.admits(now, skew)
    for waited in jitter:
        now += 0.01
        assert policy.admits(now, skew + waited)


@given(waited=st.floats(0, 5.0, allow_nan=False), steps=st.integers(1, 100))
@settings(max_examples=100, deadline=None)
def test_critical_requests_are_shed_only_past_the_ceiling(waited: float, steps: int) -> None:
    policy = QueueDelay(ceiling=1.0)
    now = 1000.0
    for _ in range(steps):
        now += 0.01
        assert policy.admits(now, waited, Priority.CRITICAL) is (waited <= 1.0)


@given(st.lists(st.tuples(gaps, st.floats(0, 1.0, allow_nan=False)), min_size=1, max_size=200))
@settings(max_examples=200, deadline=None)
def test_sheddable_is_shed_whenever_normal_is(arrivals: list[tuple[float, float]]) -> None:
    normal, sheddable = QueueDelay(), QueueDelay()
    now = 1000.0
    for gap, waited in arrivals:
        now += gap
        if not normal.admits(now, waited):
            assert not sheddable.admits(now, waited, Priority.SHEDDABLE)
        else:
            sheddable.admits(now, waited, Priority.SHEDDABLE)


@given(st.lists(st.tuples(gaps, st.floats(0, 10.0, allow_nan=False)), min_size=1, max_size=200))
@settings(max_examples=100, deadline=None)
def test_retry_after_is_at_least_a_second_and_bounded(arrivals: list[tuple[float, float]]) -> None:
    policy = QueueDelay()
    now = 1000.0
    for gap, waited in arrivals:
        now += gap
        policy.admits(now, waited)
        assert 1.0 <= policy.retry_after(now) <= MAX_RETRY_AFTER


@given(latency=st.floats(0.0001, 10.0, allow_nan=False), in_flight=st.integers(0, 64),
       requests=st.integers(1, 2000))
@settings(max_examples=200, deadline=None)
def test_a_steady_latency_never_lowers_the_limit(latency: float, in_flight: int, requests: int) -> None:
    limit = AdaptiveLimit()
    for _ in range(requests):
        limit.observe(latency, in_flight)
        assert limit.admits(in_flight)
    assert limit.limit == limit.max_limit


@given(base=st.floats(0.001, 0.5, allow_nan=False), factor=st.floats(3.0, 50.0, allow_nan=False))
@settings(max_examples=100, deadline=None)
def test_latency_far_above_its_usual_lowers_the_limit_but_not_below_the_floor(base: float, factor: float) -> None:
    limit = AdaptiveLimit()
    for _ in range(500):
        limit.observe(base, 900)
    for _ in range(50):
        limit.observe(base * factor, 900)
    assert limit.min_limit <= limit.limit < limit.max_limit
    assert not limit.admits(int(limit.limit) + 1)
    assert limit.admits(int(limit.limit) + 1, Priority.CRITICAL)
    assert 1.0 <= limit.retry_after() <= MAX_RETRY_AFTER


@given(latencies=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=200),
       in_flight=st.integers(0, 2000))
@settings(max_examples=200, deadline=None)
def test_the_limit_always_stays_between_floor_and_ceiling(latencies: list[float], in_flight: int) -> None:
    limit = AdaptiveLimit()
    for latency in latencies:
        limit.observe(latency, in_flight)
        assert limit.min_limit <= limit.limit <= limit.max_limit
        # a window holding a latency that cannot be (NaN, infinite, negative) is dropped, not averaged in
        assert math.isfinite(limit.short_latency) and math.isfinite(limit.long_latency)


@given(base=st.floats(0.0001, 5.0, allow_nan=False),
       shares=st.lists(st.floats(1.0, 1.9, allow_nan=False), min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_a_window_moves_the_averages_as_its_requests_would_one_by_one(base: float, shares: list[float]) -> None:
    """The reference: each request's latency moves the averages by its own weight. Each window
    here holds one latency, and all are within 2x of each other (no overload branch)."""
    limit = AdaptiveLimit()
    short = long = None
    for share in shares:
        latency = base * share
        for _ in range(limit.window):
            limit.observe(latency, 0)
            if short is None or long is None:
                short = long = latency
            else:
                short += limit.short_weight * (latency - short)
                long += limit.long_weight * (latency - long)
        assert limit.window_count == 0
        assert math.isclose(limit.short_latency, short, rel_tol=1e-9)
        assert math.isclose(limit.long_latency, long, rel_tol=1e-9)


def test_a_window_closed_twice_by_two_threads_is_sampled_once() -> None:
    """Two threads finishing at once may both see the window full (it takes no lock): the
    second then finds it empty, which must change nothing (and divide nothing by zero)."""
    limit = AdaptiveLimit()
    for _ in range(limit.window):
        limit.observe(0.02, 0)
    before = (limit.short_latency, limit.long_latency, limit.samples, limit.limit)
    limit._sample(0)
    assert (limit.short_latency, limit.long_latency, limit.samples, limit.limit) == before


def test_the_averages_move_only_when_a_window_is_full() -> None:
    limit = AdaptiveLimit()
    for _ in range(limit.window - 1):
        limit.observe(0.5, 0)
    assert limit.short_latency == limit.long_latency == 0.0
    limit.observe(0.5, 0)
    assert limit.short_latency == limit.long_latency == pytest.approx(0.5)
    assert limit.samples == limit.window


@pytest.mark.parametrize("name", ["critical", "normal", "sheddable"])
def test_priorities_by_name(name: str) -> None:
    assert parse_priority(name).value == name
    assert parse_priority(Priority(name)) is Priority(name)


@pytest.mark.parametrize("value", ["high", "", None, 1])
def test_an_unknown_priority_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match='priority="critical"'):
        parse_priority(value)


@given(service=st.floats(0.02, 2.0, allow_nan=False), share=st.floats(0, 0.5, allow_nan=False),
       requests=st.integers(1, 500))
@settings(max_examples=100, deadline=None)
def test_a_queue_shorter_than_half_a_service_time_is_never_shed(service: float, share: float, requests: int) -> None:
    policy = QueueDelay()
    now = 1000.0
    policy.admits(now, 0.0, service_time=service)
    for _ in range(requests):
        now += 0.01
        assert policy.admits(now, service * share, service_time=service)
