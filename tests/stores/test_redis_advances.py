"""Advances of a client's quota (``Advance`` in baldur/policies/rate_limit.py) against a real Redis.

A process asks Redis for several units of a client's per-client limit at once, when the client
runs ahead of its sustained rate and half its burst stays free, and spends them without asking
again, each only until its slot. What must hold (docs/performance.md, "Advances"):

- one process makes exactly the memory store's decisions (the unspent units are given back);
- many processes together never admit more than GCRA allows, whatever the interleaving;
- near the limit (less than half the burst free) every call asks Redis, as without advances.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baldur.bridges import SyncOverAsync, background
from baldur.policies.rate_limit import ADVANCE_UNITS, MICROS, RateDecision, RateLimit
from baldur.stores import redis as redis_store
from baldur.stores._types import ExtraLimit, Plan
from baldur.stores.memory import MemoryStore
from baldur.stores.redis import RedisStore
from tests.stores.conftest import FakeClock

PATIENT = 2.0


class Counted:
    """A Redis store whose asks (the scripts that spend quota) are counted."""

    def __init__(self, url: str, clock: FakeClock, prefix: str) -> None:
        self.async_ = RedisStore(url, redacted_url=url, prefix=prefix, clock=clock, timeout=PATIENT)
        self.sync = SyncOverAsync(self.async_)
        self.asks = 0
        run = self.async_._run

        async def counted(name: str, keys: Any, args: Any) -> Any:
            # Not the warm-up's health check, and a call handed to the background loop (while the
            # caller's own connection is made) once, where it was made.
            if name in ("rate", "admit", "admit_limits") and asyncio.get_running_loop() is not background.loop:
                self.asks += 1
            return await run(name, keys, args)

        self.async_._run = counted  # type: ignore[method-assign]


def _pair(url: str) -> tuple[FakeClock, MemoryStore, Counted]:
    clock = FakeClock(1_700_000_000.0)
    return clock, MemoryStore(clock=clock), Counted(url, clock, f"adv-{uuid.uuid4().hex[:8]}")


def test_a_client_ahead_of_its_rate_is_served_from_advances_with_the_memory_stores_decisions(
        redis_url: str) -> None:
    clock, memory, shared = _pair(redis_url)
    limit = RateLimit("1000/minute")  # a unit every 60 ms, a burst of 1000: far from the limit
    for _ in range(80):
        assert shared.sync.rate("client", limit) == memory.rate("client", limit)
        clock.us += 1_000  # a call a millisecond: ahead of the sustained rate
    # The first call finds no TAT ahead of now (no advance); the second takes an advance of 8 units,
    # and every eighth call after it another: 1 + ceil(79 / 8) asks for 80 calls.
    assert shared.asks == 1 + -(-79 // ADVANCE_UNITS)


def test_the_units_left_when_an_advance_lapses_are_given_back(redis_url: str) -> None:
    """An advance lives a second at most: the units not spent by then go back to the client with
    the next ask (nobody took quota since), so the decisions stay the memory store's."""
    clock, memory, shared = _pair(redis_url)
    limit = RateLimit("100/minute", burst=40)
    for pause in (0, 0, 0, 2.0, 0, 0, 3.0, 0, 0.5, 0, 0, 0, 2.0) * 3:
        clock.us += round(pause * MICROS)
        assert shared.sync.rate("client", limit) == memory.rate("client", limit)
    assert shared.asks < 39


def test_near_the_limit_every_call_asks_redis_and_the_limit_is_exact(redis_url: str) -> None:
    _, memory, shared = _pair(redis_url)
    limit = RateLimit("20/hour")
    decisions: list[tuple[RateDecision, RateDecision]] = [
        (shared.sync.rate("client", limit), memory.rate("client", limit)) for _ in range(25)]
    assert [mine == theirs for mine, theirs in decisions] == [True] * 25
    assert sum(mine.allowed for mine, _ in decisions) == 20
    # Call 1 finds no TAT ahead (no advance); call 2 takes 8 units while 11 of the 20 stay free
    # (at least half the burst); from call 10 on, fewer than half would stay: each call asks.
    assert shared.asks == 1 + 1 + (25 - 9)


def test_a_call_admitted_with_its_view_is_served_from_the_advance_too(redis_url: str) -> None:
    """The web adapter's per-client limit, admitted with a view whose breaker needs nothing from
    Redis (here: no breaker): the advance serves it without I/O, as ``rate`` would."""
    clock, memory, shared = _pair(redis_url)
    plan = Plan("view", None, None, None)
    extra = ExtraLimit("default", "web:client", RateLimit("600/minute"))
    for _ in range(30):
        ticket = shared.sync.admit(plan, None, extra)
        assert ticket.extra_rate == memory.rate(extra.key, extra.limit)
        clock.us += 10_000
    assert shared.asks == 1 + -(-29 // ADVANCE_UNITS)


def test_a_client_that_does_not_outpace_the_slots_at_a_process_gets_no_advance_there(redis_url: str) -> None:
    """Two processes take turns: the client runs ahead of its sustained rate overall, but each
    process sees it less often than once an emission interval, so an advance's units would see
    their slots pass unspent. None is asked for: every call asks Redis, and the decisions are
    exactly the memory store's."""
    clock, memory, first = _pair(redis_url)
    second = Counted(redis_url, clock, first.async_.prefix)
    limit = RateLimit("600/minute", burst=50)  # a unit every 100 ms
    for call in range(60):
        process = (first, second)[call % 2]
        assert process.sync.rate("client", limit) == memory.rate("client", limit)
        clock.us += 70_000  # ahead of the 100 ms overall; 140 ms between calls at each process
    assert first.asks + second.asks == 60
    assert not first.async_._advances and not second.async_._advances


def test_units_of_an_advance_are_never_given_back_at_another_limits_interval(redis_url: str) -> None:
    """The limit of a key changes (a new ``init()``) while this process holds an advance of the old
    one: its units are dropped, not given back, since Redis would take them back at the new limit's
    interval and free more than they hold."""
    _, _, shared = _pair(redis_url)
    old, new = RateLimit("100/second", burst=40), RateLimit("10/second", burst=20)
    for _ in range(2):
        assert shared.sync.rate("client", old).allowed
    assert shared.async_._advances["client"].unspent() == ADVANCE_UNITS - 1
    admitted = sum(shared.sync.rate("client", new).allowed for _ in range(40))
    # The old calls hold 90 ms of the TAT (1 + 8 units of 10 ms): 19 of the new limit's slots of
    # 100 ms fit in its 1.9 s of tolerance after them. Given back at 100 ms a unit, the 7 units
    # would free 700 ms and let all 20 through.
    assert admitted == 19


def _admitted_in_time_order_conform(admitted: list[int], limit: RateLimit) -> None:
    exact = MemoryStore()
    for instant in admitted:
        exact.clock = lambda instant=instant: instant / MICROS
        assert exact.rate("client", limit).allowed, (admitted, instant)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0, 1, 999, 1_000, 30_000, 500_000, 1_200_000]),
                                st.integers(1, 30)), min_size=1, max_size=30))
def test_processes_sharing_a_client_never_admit_more_than_gcra_allows(
        redis_url: str, steps: list[tuple[int, int, int]]) -> None:
    """Three processes (three stores, each with its advances) serve one client in any order and
    at any pace, in bursts: the calls admitted, taken in time order, are all admitted by an exact GCRA."""
    clock = FakeClock(1_700_000_000.0)
    prefix = f"adv-{uuid.uuid4().hex[:8]}"
    processes = [SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, prefix=prefix, clock=clock,
                                          timeout=PATIENT)) for _ in range(3)]
    limit = RateLimit("20/second", burst=24)  # a unit every 50 ms
    admitted = []
    for process, pause, calls in steps:
        clock.us += pause
        for _ in range(calls):
            if processes[process].rate("client", limit).allowed:
                admitted.append(clock.us)
    _admitted_in_time_order_conform(admitted, limit)


def test_units_whose_slot_has_passed_are_never_spent(redis_url: str) -> None:
    """The attack on a naive advance: a process keeps units, the client pauses until its bucket is
    full again, then spends a whole burst through another process and the old units on top."""
    clock = FakeClock(1_700_000_000.0)
    prefix = f"adv-{uuid.uuid4().hex[:8]}"
    first, second = (SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, prefix=prefix, clock=clock,
                                              timeout=PATIENT)) for _ in range(2))
    limit = RateLimit("20/second", burst=24)
    admitted = [clock.us for _ in range(2) if first.rate("client", limit).allowed]  # the second takes 8
    assert first.store._advances["client"].unspent() == ADVANCE_UNITS - 1
    clock.us += 1_200_000  # the bucket is full again
    for process in (second, first):
        admitted += [clock.us for _ in range(30) if process.rate("client", limit).allowed]
    assert len(admitted) == 2 + 24
    _admitted_in_time_order_conform(admitted, limit)


def test_rotating_clients_cannot_grow_the_advances_held(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "ADVANCES_MAX", 8)
    shared = _pair(redis_url)[2]
    limit = RateLimit("100/minute")
    for client in range(30):
        for _ in range(2):  # the second call of a client takes an advance
            assert shared.sync.rate(f"client-{client}", limit).allowed
    assert list(shared.async_._advances) == [f"client-{client}" for client in range(22, 30)]  # the newest
    assert len(shared.async_._asked) <= 8


def test_a_child_process_does_not_inherit_the_parents_advances(redis_url: str) -> None:
    """Units the parent holds are the parent's: spent in a forked child too, they would count twice."""
    shared = _pair(redis_url)[2]
    limit = RateLimit("100/minute")
    for _ in range(2):
        shared.sync.rate("client", limit)
    assert shared.async_._advances
    with warnings.catch_warnings():
        # Python 3.12+ warns of forking a threaded process: the parent runs Baldur's loop thread,
        # and a fork after it started (gunicorn --preload) is the case under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        os._exit(0 if not shared.async_._advances else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared.async_._advances  # the parent keeps its own
