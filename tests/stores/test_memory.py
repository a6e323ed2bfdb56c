"""The memory store: atomic under threads, bounded (LRU), deciding on an injectable clock.

Time is the store's injectable ``clock``: every test below that depends on time
moves a ``Clock`` by hand instead of sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import baldur
from baldur import _runtime
from baldur.errors import CircuitOpen, Overloaded, RateLimited
from baldur.policies import breaker as breaker_policy
from baldur.policies.breaker import Breaker, BreakerState, Outcome, State
from baldur.policies.rate_limit import RateLimit
from baldur.stores._types import Plan, Ticket
from baldur.stores.memory import MemoryStore

FAIL = Outcome.FAILURE
OK = Outcome.SUCCESS


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` in ``count`` threads and join them all; re-raise the first error."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def breaker_state(store: MemoryStore, name: str) -> BreakerState:
    state = store._keys[f"b:{name}"]
    assert isinstance(state, BreakerState)
    return state


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def restore_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that rebuild the runtime get the previous one back afterwards."""
    monkeypatch.setattr(_runtime, "_current", _runtime._current)


# -- decisions ----------------------------------------------------------------

def test_breaker_opens_after_consecutive_failures_and_half_opens_when_open_for_passed(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    options = Breaker(failure_rate=None, consecutive_failures=3, open_for=10.0, half_open_calls=2)
    plan = Plan("svc", options, None, None)
    for _ in range(3):
        store.finish(store.admit(plan), FAIL)
    assert store.read_breaker("svc", options) is State.OPEN

    with pytest.raises(CircuitOpen) as caught:
        store.admit(plan)
    assert caught.value.retry_after == pytest.approx(10.0)
    clock.advance(4.0)
    with pytest.raises(CircuitOpen) as caught:
        store.admit(plan)
    assert caught.value.retry_after == pytest.approx(6.0)

    clock.advance(6.0)
    first, second = store.admit(plan), store.admit(plan)
    assert first.trial and second.trial
    assert store.read_breaker("svc", options) is State.HALF_OPEN
    with pytest.raises(CircuitOpen):
        store.admit(plan)  # both trial permits are out
    store.finish(first, OK)
    assert store.read_breaker("svc", options) is State.HALF_OPEN
    store.finish(second, OK)
    assert store.read_breaker("svc", options) is State.CLOSED


def test_a_failed_trial_reopens_for_a_full_open_for(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    options = Breaker(failure_rate=None, consecutive_failures=1, open_for=5.0, half_open_calls=1)
    plan = Plan("svc", options, None, None)
    store.finish(store.admit(plan), FAIL)
    clock.advance(5.0)
    store.finish(store.admit(plan), FAIL)
    assert store.read_breaker("svc", options) is State.OPEN
    with pytest.raises(CircuitOpen) as caught:
        store.admit(plan)
    assert caught.value.retry_after == pytest.approx(5.0)


def test_failure_rate_opens_over_the_window(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    options = Breaker(failure_rate=0.5, min_calls=4, consecutive_failures=None, window=10.0)
    plan = Plan("svc", options, None, None)
    for outcome in (OK, FAIL, OK):
        store.finish(store.admit(plan), outcome)
    assert store.read_breaker("svc", options) is State.CLOSED
    store.finish(store.admit(plan), FAIL)  # 2 of 4 failed
    assert store.read_breaker("svc", options) is State.OPEN


def test_rate_limit_admits_the_quota_then_refills_with_the_clock(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    limit = RateLimit("5/second")
    decisions = [store.rate("k", limit) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[5].retry_after == pytest.approx(0.2)
    clock.advance(0.2)
    assert store.rate("k", limit).allowed
    assert not store.rate("k", limit).allowed


def test_admit_applies_rate_limit_then_concurrency_then_breaker(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    options = Breaker(failure_rate=None, consecutive_failures=1, open_for=30.0)
    plan = Plan("svc", options, RateLimit("3/minute"), 1)
    held = store.admit(plan)
    assert held.holds_slot and held.rate is not None and held.rate.remaining == 2
    with pytest.raises(Overloaded):
        store.admit(plan)  # spends a unit of quota, then finds no slot
    store.finish(held, FAIL)  # opens the breaker and frees the slot
    with pytest.raises(CircuitOpen):
        store.admit(plan)  # the last unit of quota, then the breaker
    with pytest.raises(RateLimited) as caught:
        store.admit(plan)
    assert caught.value.limit == RateLimit("3/minute")
    assert store._keys["c:svc"] == 0  # the rejected calls hold no slot


def test_rate_limit_per_client_uses_separate_keys(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    plan = Plan("route", None, RateLimit("1/minute"), None)
    store.admit(plan, "alice")
    store.admit(plan, "bob")
    with pytest.raises(RateLimited):
        store.admit(plan, "alice")


def test_forced_states_and_reset(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    options = Breaker(failure_rate=None, consecutive_failures=1)
    plan = Plan("svc", options, None, None)
    store.force_breaker("svc", options, State.FORCED_OPEN)
    with pytest.raises(CircuitOpen):
        store.admit(plan)
    store.force_breaker("svc", options, State.FORCED_CLOSED)
    for _ in range(5):
        store.finish(store.admit(plan), FAIL)
    assert store.read_breaker("svc", options) is State.FORCED_CLOSED
    store.force_breaker("svc", options, State.CLOSED)
    store.finish(store.admit(plan), FAIL)
    assert store.read_breaker("svc", options) is State.OPEN
    store.reset()
    assert len(store) == 0
    assert store.read_breaker("svc", options) is State.CLOSED


# -- concurrency ----------------------------------------------------------------

THREADS = 16
CALLS = 10_000


def test_sixteen_threads_lose_no_counts(clock: Clock) -> None:
    """16 threads × 10 000 calls on one breaker and one limiter key: every count is exact."""
    store = MemoryStore(clock=clock)  # a clock that stands still: one window bucket, no refill
    options = Breaker(failure_rate=None, consecutive_failures=10**9, window=30.0)
    plan = Plan("hot", options, None, None)
    quota = 12_345
    limit = RateLimit(f"{quota}/day")
    admitted = [0] * THREADS
    barrier = threading.Barrier(THREADS)

    def work(i: int) -> None:
        barrier.wait()
        allowed = 0
        for j in range(CALLS):
            store.finish(store.admit(plan), FAIL if j % 4 == 0 else OK)
            allowed += store.rate("r:shared", limit).allowed
        admitted[i] = allowed

    run_threads(THREADS, work)
    assert sum(admitted) == quota
    total = THREADS * CALLS
    state = breaker_state(store, "hot")
    breaker_policy.absorb(state)  # the fast lane's successes, counted without the lock
    assert state.window.totals(clock()) == (total, total // 4)
    assert store.read_breaker("hot", options) is State.CLOSED


def test_threads_never_exceed_max_concurrency(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    limit = 3
    plan = Plan("bulkhead", None, None, limit)
    lock = threading.Lock()
    in_flight = peak = 0
    done = [0] * 8
    shed = [0] * 8
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        nonlocal in_flight, peak
        barrier.wait()
        for _ in range(2_000):
            try:
                ticket = store.admit(plan)
            except Overloaded:
                shed[i] += 1
                continue
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            with lock:
                in_flight -= 1
            store.finish(ticket, OK)
            done[i] += 1

    run_threads(8, work)
    assert peak <= limit
    assert sum(done) + sum(shed) == 8 * 2_000
    assert store._keys["c:bulkhead"] == 0
    tickets = [store.admit(plan) for _ in range(limit)]  # every slot came back
    with pytest.raises(Overloaded):
        store.admit(plan)
    for ticket in tickets:
        store.finish(ticket, OK)


def test_half_open_hands_out_exactly_half_open_calls_permits_across_threads(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    options = Breaker(failure_rate=None, consecutive_failures=1, open_for=1.0, half_open_calls=5)
    plan = Plan("svc", options, None, None)
    store.finish(store.admit(plan), FAIL)
    clock.advance(1.0)
    trials: list[Ticket] = []
    rejected = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)

    def work(_: int) -> None:
        barrier.wait()
        for _ in range(100):
            try:
                ticket = store.admit(plan)
            except CircuitOpen:
                with lock:
                    rejected[0] += 1
            else:
                with lock:
                    trials.append(ticket)

    run_threads(THREADS, work)
    assert len(trials) == 5 and all(t.trial for t in trials)
    assert rejected[0] == THREADS * 100 - 5
    for ticket in trials:
        store.finish(ticket, OK)
    assert store.read_breaker("svc", options) is State.CLOSED


# -- bounded ----------------------------------------------------------------------

def test_two_hundred_thousand_rate_keys_stay_within_max_keys(clock: Clock) -> None:
    store = MemoryStore(max_keys=10_000, clock=clock)
    limit = RateLimit("10/minute")
    peak = 0
    for i in range(200_000):
        assert store.rate(f"client-{i}", limit).allowed
        peak = max(peak, len(store))
        if i % 1_000 == 0:
            clock.advance(1.0)  # some keys drain, most do not: both kinds are evicted
    assert peak <= 10_000
    assert len(store) == 10_000
    assert "client-199999" in store._clients  # the newest keys are the ones kept


def test_per_client_rate_keys_stay_within_max_keys(clock: Clock) -> None:
    store = MemoryStore(max_keys=10_000, clock=clock)
    plan = Plan("route", Breaker(), RateLimit("5/minute"), 4)
    for i in range(50_000):
        store.finish(store.admit(plan, f"10.0.{i // 256}.{i % 256}"), OK)
        assert len(store._clients) <= 10_000
    assert store.read_breaker("route", Breaker()) is State.CLOSED


def test_client_churn_never_evicts_a_breaker(clock: Clock) -> None:
    """Breakers live in their own table: no amount of client keys evicts one, busy or idle."""
    store = MemoryStore(max_keys=100, clock=clock)
    options = Breaker(failure_rate=None, consecutive_failures=5, open_for=3_600.0)
    busy, idle, counting = (Plan(n, options, None, None) for n in ("busy", "idle", "counting"))
    limit = RateLimit("1/hour")
    for plan in (busy, idle):
        for _ in range(5):
            store.finish(store.admit(plan), FAIL)
    assert store.read_breaker("busy", options) is State.OPEN
    assert store.read_breaker("idle", options) is State.OPEN

    for i in range(20_000):
        store.rate(f"churn-{i}", limit)
        if i % 50 == 0:
            with pytest.raises(CircuitOpen):
                store.admit(busy)
        if i in (0, 50, 100, 150, 200):  # five failures in a row, 50 churned keys apart
            store.finish(store.admit(counting), FAIL)
        if i == 200:
            assert store.read_breaker("counting", options) is State.OPEN  # no failure lost to churn
        assert len(store._clients) <= 100
    for plan in (busy, idle, counting):
        assert store.read_breaker(plan.name, options) is State.OPEN


def test_memory_max_keys_from_init_bounds_protected_rate_limits(restore_runtime: None) -> None:
    runtime = baldur.init(memory_max_keys=10_000)
    store = runtime.sync
    assert isinstance(store, MemoryStore) and store.max_keys == 10_000
    limit = baldur.RateLimit("10/minute")

    def handler() -> str:
        return "ok"

    plan = Plan("route", None, limit, None)
    assert baldur.protected("route-as-a-whole", rate_limit=limit)(handler)() == "ok"
    for i in range(30_000):
        store.finish(store.admit(plan, f"client-{i}"), OK)
        assert len(store._clients) <= 10_000
    assert len(store._clients) == 10_000
    assert "r:route-as-a-whole" in store._keys  # a name's own limit is never evicted by clients


def test_memory_max_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALDUR_MEMORY_MAX_KEYS", "10000")
    monkeypatch.setattr(_runtime, "_current", None)
    runtime = baldur.init()
    store = runtime.sync
    assert isinstance(store, MemoryStore) and store.max_keys == 10_000

    @baldur.protected("per-key", rate_limit="1/minute", breaker=None)
    def handler() -> str:
        return "ok"

    for i in range(20_000):
        store.rate(f"k{i}", RateLimit("1/minute"))
    assert handler() == "ok"
    assert len(store._clients) <= 10_000
