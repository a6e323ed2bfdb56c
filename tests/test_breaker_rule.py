"""``@baldur.protected`` opens its breaker on the failure rate after any outcome, a success too.

The cases are those of ``tests/breaker_cases.py``; successes of a closed
breaker take the memory store's fast lane, so these also check that the lane
never skips a success that completes the rule. Time is the memory store's
injectable clock, as in ``tests/test_pipeline.py``.
"""

from __future__ import annotations

import pytest

import baldur
from baldur.stores.memory import MemoryStore
from tests.breaker_cases import CASE_IDS, CASES, RuleCase


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The runtime's memory store decides on this clock for the test's duration."""
    store = baldur.init().sync
    assert isinstance(store, MemoryStore)
    fake = Clock()
    monkeypatch.setattr(store, "clock", fake)
    return fake


class Down(Exception):
    pass


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_a_sync_call_opens_the_breaker_on_the_failure_rate_after_any_outcome(clock: Clock, case: RuleCase) -> None:
    name = f"rule-sync-{case.id}"
    ran: list[bool] = []

    @baldur.protected(name, breaker=case.options)
    def call(fail: bool) -> str:
        ran.append(fail)
        if fail:
            raise Down()
        return "ok"

    start = clock.now
    for at, failed in case.outcomes:
        assert baldur.breaker(name).state == "closed", f"opened before the outcome at {at}"
        clock.now = start + at
        if failed:
            with pytest.raises(Down):
                call(True)
        else:
            assert call(False) == "ok"
    assert baldur.breaker(name).state == "open"
    with pytest.raises(baldur.CircuitOpen):
        call(False)
    assert len(ran) == len(case.outcomes), "the call after the opening ran"


@pytest.mark.anyio
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
async def test_an_async_call_opens_the_breaker_on_the_failure_rate_after_any_outcome(
        clock: Clock, case: RuleCase) -> None:
    name = f"rule-async-{case.id}"
    ran: list[bool] = []

    @baldur.protected(name, breaker=case.options)
    async def call(fail: bool) -> str:
        ran.append(fail)
        if fail:
            raise Down()
        return "ok"

    start = clock.now
    for at, failed in case.outcomes:
        assert baldur.breaker(name).state == "closed", f"opened before the outcome at {at}"
        clock.now = start + at
        if failed:
            with pytest.raises(Down):
                await call(True)
        else:
            assert await call(False) == "ok"
    assert baldur.breaker(name).state == "open"
    with pytest.raises(baldur.CircuitOpen):
        await call(False)
    assert len(ran) == len(case.outcomes), "the call after the opening ran"
