"""The concurrency ceiling (bulkhead, backpressure): validation and the admission rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baldur.errors import ConfigError
from baldur.policies.concurrency import SHED_RETRY_AFTER, admits, check_limit


@pytest.mark.parametrize("value", [1, 2, 32, 10_000])
def test_whole_numbers_from_one_are_limits(value: int) -> None:
    assert check_limit(value) == value


def test_none_means_no_ceiling() -> None:
    assert check_limit(None) is None
    assert admits(0, None) and admits(10**9, None)


@pytest.mark.parametrize("value", [0, -1, True, False, 2.0, 2.5, "4", "auto", math.nan, math.inf, [4]])
def test_bad_limit_is_a_config_error_naming_setting_value_and_example(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        check_limit(value)
    message = str(caught.value)
    assert message.startswith(f"max_concurrency={value!r} is not valid")
    assert "for example: max_concurrency=32" in message


def test_the_setting_name_is_the_callers() -> None:
    with pytest.raises(ConfigError, match=r"^protected\('x', max_concurrency=\.\.\.\)=0 .*=32"):
        check_limit(0, "protected('x', max_concurrency=...)")


@given(limit=st.integers(1, 1000), in_flight=st.integers(0, 2000))
@settings(max_examples=200, deadline=None)
def test_admits_while_below_the_limit(limit: int, in_flight: int) -> None:
    assert admits(in_flight, limit) == (in_flight < limit)


def test_filling_up_to_the_limit_then_shedding() -> None:
    limit = 3
    in_flight = 0
    taken = 0
    for _ in range(10):
        if admits(in_flight, limit):
            in_flight += 1
            taken += 1
    assert taken == limit
    in_flight -= 1  # one call finishes
    assert admits(in_flight, limit)


def test_a_shed_call_is_told_to_come_back_soon() -> None:
    assert 0 < SHED_RETRY_AFTER <= 5
