"""The memory store's fast lane: successes of a closed breaker counted without the lock.

The lane must lose no count under threads, keep the consecutive-failure rule
exact, and never outlive its state (reset, eviction).
"""

from __future__ import annotations

import contextlib
import threading

import baldur
from baldur import _runtime
from baldur.policies import breaker as breaker_policy
from baldur.policies.breaker import BreakerState, State
from baldur.stores.memory import MemoryStore


def lane_state(name: str) -> BreakerState:
    store = _runtime.current().sync
    assert isinstance(store, MemoryStore)
    state = store._keys[f"b:{name}"]
    assert isinstance(state, BreakerState)
    return state


def totals(state: BreakerState) -> tuple[int, int]:
    store = _runtime.current().sync
    assert isinstance(store, MemoryStore)
    with store._lock:
        breaker_policy.absorb(state)
        return state.window.totals(store.clock())


def test_sixteen_threads_lose_no_success() -> None:
    @baldur.protected("lane-threads", breaker=baldur.Breaker(window=600))
    def call() -> int:
        return 1

    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(10_000):
            call()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert call.__baldur__.lane is not None, "the calls never took the fast lane"  # type: ignore[attr-defined]
    assert totals(lane_state("lane-threads")) == (160_000, 0)


def test_a_success_on_the_lane_resets_the_failure_streak() -> None:
    outcomes = iter([True] + [False] * 4 + [True] + [False] * 4 + [False])

    @baldur.protected("lane-streak", breaker=baldur.Breaker(consecutive_failures=5, failure_rate=None))
    def call() -> str:
        if not next(outcomes):
            raise OSError("down")
        return "up"

    def fail_times(count: int) -> None:
        for _ in range(count):
            with contextlib.suppress(OSError):
                call()

    assert call() == "up"  # opens the lane
    assert call.__baldur__.lane is not None  # type: ignore[attr-defined]
    fail_times(4)
    assert call() == "up"  # counted on the lane, without the lock
    fail_times(4)
    assert baldur.breaker("lane-streak").state is State.CLOSED  # 4 in a row since the success
    fail_times(1)
    assert baldur.breaker("lane-streak").state is State.OPEN


def test_reset_retires_the_lane_and_counting_starts_afresh() -> None:
    @baldur.protected("lane-reset")
    def call() -> int:
        return 1

    for _ in range(3):
        call()
    old = lane_state("lane-reset")
    baldur.reset()
    assert old.state is not State.CLOSED, "a retired state must never read closed"
    for _ in range(5):
        call()
    assert totals(lane_state("lane-reset")) == (5, 0)


def test_client_traffic_never_evicts_a_breaker_on_the_fast_lane() -> None:
    store = MemoryStore(max_keys=2)
    options = baldur.Breaker()
    from baldur.stores._types import Plan

    plan = Plan("evicted", options, None, None)
    lane = store.fast_lane(plan)
    assert lane is not None
    store.rate("a", baldur.RateLimit("5/second"))
    store.rate("b", baldur.RateLimit("5/second"))  # past max_keys: a client's key goes, never the breaker
    assert store._keys["b:evicted"] is lane
    assert lane.state is State.CLOSED
    assert list(store._clients) == ["a", "b"]


def test_successes_racing_the_opening_leave_a_consistent_open_breaker() -> None:
    failing = threading.Event()

    @baldur.protected("lane-race", breaker=baldur.Breaker(consecutive_failures=3, failure_rate=None))
    def call() -> int:
        if failing.is_set():
            raise OSError("down")
        return 1

    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, baldur.CircuitOpen):
                call()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        failing.set()
        for _ in range(10_000):
            if baldur.breaker("lane-race").state is State.OPEN:
                break
            with contextlib.suppress(OSError, baldur.CircuitOpen):
                call()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert baldur.breaker("lane-race").state is State.OPEN
