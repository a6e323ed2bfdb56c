"""Retry policy: exponential backoff with full jitter, capped by attempts and a deadline.

``next_delay`` is pure: the random draw and the elapsed time are arguments.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import baldur
from baldur.errors import ConfigError
from baldur.policies.retry import Retry, next_delay

ALMOST_ONE = math.nextafter(1.0, 0.0)


def test_defaults() -> None:
    r = Retry()
    assert (r.attempts, r.backoff, r.max_backoff, r.deadline, r.on) == (3, 0.1, 5.0, None, (Exception,))


def test_full_jitter_bounds() -> None:
    r = Retry(attempts=10, backoff=0.1, max_backoff=5.0)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (6, 3.2), (7, 5.0), (9, 5.0)]:
        assert next_delay(r, OSError(), attempt, 0.0, 0.0) == 0.0
        top = next_delay(r, OSError(), attempt, 0.0, ALMOST_ONE)
        assert top is not None and top <= cap and top == pytest.approx(cap)
        assert next_delay(r, OSError(), attempt, 0.0, 0.5) == pytest.approx(cap / 2)


@given(
    attempts=st.integers(2, 3000),
    backoff=st.floats(0, 10, allow_nan=False),
    extra=st.floats(0, 100, allow_nan=False),
    data=st.data(),
)
@settings(max_examples=300, deadline=None)
def test_delay_is_a_full_jitter_draw_below_the_cap(attempts: int, backoff: float, extra: float,
                                                   data: st.DataObject) -> None:
    r = Retry(attempts=attempts, backoff=backoff, max_backoff=backoff + extra)
    attempt = data.draw(st.integers(1, attempts - 1))
    draw = data.draw(st.floats(0, 1, exclude_max=True))
    delay = next_delay(r, RuntimeError(), attempt, 0.0, draw)
    cap = float(min(Fraction(r.max_backoff), Fraction(r.backoff) * 2 ** (attempt - 1)))  # exact, never overflows
    assert delay is not None
    assert 0.0 <= delay <= r.max_backoff
    assert delay <= cap
    assert delay == pytest.approx(draw * cap)


def test_max_backoff_caps_even_a_huge_attempt_number() -> None:
    r = Retry(attempts=5000, backoff=1.0, max_backoff=30.0)
    assert next_delay(r, OSError(), 40, 0.0, ALMOST_ONE) == pytest.approx(30.0)
    assert next_delay(r, OSError(), 4000, 0.0, ALMOST_ONE) == pytest.approx(30.0)  # 2.0 ** 3999 would overflow
    assert next_delay(Retry(attempts=5000, backoff=0.0, max_backoff=0.0), OSError(), 4000, 0.0, 0.9) == 0.0


def test_attempts_cap_counts_the_first_try() -> None:
    r = Retry(attempts=3)
    assert next_delay(r, OSError(), 1, 0.0, 0.5) is not None
    assert next_delay(r, OSError(), 2, 0.0, 0.5) is not None
    assert next_delay(r, OSError(), 3, 0.0, 0.5) is None
    assert next_delay(r, OSError(), 7, 0.0, 0.5) is None
    assert next_delay(Retry(attempts=1), OSError(), 1, 0.0, 0.0) is None  # one attempt: no retry at all


def test_deadline_stops_a_retry_that_could_not_start_in_time() -> None:
    r = Retry(attempts=10, backoff=1.0, max_backoff=1.0, deadline=5.0)
    assert next_delay(r, OSError(), 1, 3.0, 0.5) == 0.5  # starts at 3.5 < 5
    assert next_delay(r, OSError(), 1, 4.4, 0.5) == 0.5  # starts at 4.9
    assert next_delay(r, OSError(), 1, 4.5, 0.5) is None  # would start at 5.0, the deadline
    assert next_delay(r, OSError(), 1, 4.9, 0.5) is None
    assert next_delay(r, OSError(), 1, 6.0, 0.0) is None  # already past it
    assert next_delay(Retry(attempts=10), OSError(), 1, 1e9, 0.5) is not None  # no deadline


@pytest.mark.parametrize(
    "exc",
    [
        baldur.CircuitOpen("x", 1.0),
        baldur.RateLimited("x", 1.0),
        baldur.Overloaded("x", 1.0),
        baldur.IdempotencyConflict("x", 1.0),
    ],
)
def test_never_retries_a_rejection(exc: baldur.Rejected) -> None:
    assert next_delay(Retry(attempts=5), exc, 1, 0.0, 0.5) is None
    # not even when asked to
    assert next_delay(Retry(attempts=5, on=(baldur.Rejected,)), exc, 1, 0.0, 0.5) is None
    assert next_delay(Retry(attempts=5, on=(Exception, BaseException)), exc, 1, 0.0, 0.5) is None


def test_only_the_on_classes_are_retried() -> None:
    r = Retry(attempts=5, on=ConnectionError)
    assert r.on == (ConnectionError,)
    assert next_delay(r, ConnectionError(), 1, 0.0, 0.5) is not None
    assert next_delay(r, ConnectionRefusedError(), 1, 0.0, 0.5) is not None  # a subclass
    assert next_delay(r, ValueError(), 1, 0.0, 0.5) is None
    assert next_delay(r, OSError(), 1, 0.0, 0.5) is None  # a parent is not enough
    both = Retry(attempts=5, on=(KeyError, baldur.CallTimeout))
    assert next_delay(both, KeyError(), 1, 0.0, 0.5) is not None
    assert next_delay(both, baldur.CallTimeout("x", 1.0), 1, 0.0, 0.5) is not None
    assert next_delay(both, TimeoutError(), 1, 0.0, 0.5) is None
    default = Retry(attempts=5)
    assert next_delay(default, KeyboardInterrupt(), 1, 0.0, 0.5) is None  # not an Exception
    assert next_delay(default, baldur.CallTimeout("x", 1.0), 1, 0.0, 0.5) is not None


def test_good_values_are_normalised() -> None:
    r = Retry(attempts=1, backoff=0, max_backoff=0, deadline=2)
    assert (r.backoff, r.max_backoff, r.deadline) == (0.0, 0.0, 2.0)
    assert all(isinstance(v, float) for v in (r.backoff, r.max_backoff, r.deadline))


NAN, INF = math.nan, math.inf
BAD: list[tuple[str, object]] = [
    *[("attempts", v) for v in (0, -1, True, 2.5, 3.0, "3", None, NAN)],
    *[("backoff", v) for v in (-0.1, True, "0.1", None, NAN, INF)],
    *[("max_backoff", v) for v in (0.05, -1, False, "5", None, NAN, INF)],  # 0.05 < the default backoff
    *[("deadline", v) for v in (0, -1.0, True, "10", NAN, INF)],
    *[("on", v) for v in ("OSError", 42, OSError(), (OSError, 1), [OSError], None, int)],
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_option_is_a_config_error_naming_field_value_and_example(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Retry(**{name: value})  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"Retry({name}=...)=")
    assert repr(value) in message
    assert f"for example: Retry({name}=" in message
