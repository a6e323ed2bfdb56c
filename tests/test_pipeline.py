"""The pipeline through the public API: ``baldur.protected``, ``baldur.guard`` and ``baldur.breaker``.

Time, where the breaker needs it, is the memory store's injectable clock (the
``clock`` fixture); the few tests about timeouts and slow calls use short real
durations because that is the behaviour under test. Concurrency is arranged
with events and barriers, never with sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import anyio
import pytest

import baldur
from baldur import Breaker, CallTimeout, CircuitOpen, ConfigError, Overloaded, RateLimit, RateLimited, Retry
from baldur.policies.breaker import State
from baldur.stores.memory import MemoryStore

WAIT = 10.0  # seconds: only an upper bound for waits that should end at once


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Abort(BaseException):
    """A BaseException that is not an Exception (KeyboardInterrupt confuses asyncio's tasks)."""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The runtime's memory store decides on this clock for the test's duration."""
    store = baldur.init().sync
    assert isinstance(store, MemoryStore)
    fake = Clock()
    monkeypatch.setattr(store, "clock", fake)
    return fake


class Threads:
    """Threads started by a test: joined at the end, their first error re-raised."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.results: list[object] = []

    def start(self, target: Callable[[], object]) -> None:
        def run() -> None:
            try:
                self.results.append(target())
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive()


@pytest.fixture
def threads() -> Iterator[Threads]:
    started = Threads()
    yield started
    started.join()


def opens_on_first_failure(**options: object) -> Breaker:
    return Breaker(failure_rate=None, consecutive_failures=1, **options)  # type: ignore[arg-type]


# -- the breaker ---------------------------------------------------------------------

def test_breaker_opens_after_consecutive_failures_and_tells_when_to_retry(clock: Clock) -> None:
    calls = 0

    @baldur.protected("cf-sync", breaker=Breaker(failure_rate=None, consecutive_failures=3, open_for=30.0))
    def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            down()
    assert baldur.breaker("cf-sync").state is State.OPEN
    with pytest.raises(CircuitOpen) as caught:
        down()
    assert caught.value.retry_after == pytest.approx(30.0)
    clock.advance(12.0)
    with pytest.raises(CircuitOpen) as caught:
        down()
    assert caught.value.retry_after == pytest.approx(18.0)
    assert calls == 3  # rejected calls never ran


@pytest.mark.anyio
async def test_async_breaker_opens_after_consecutive_failures(clock: Clock) -> None:
    calls = 0

    @baldur.protected("cf-async", breaker=Breaker(failure_rate=None, consecutive_failures=3, open_for=30.0))
    async def down() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(0)
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await down()
    with pytest.raises(CircuitOpen) as caught:
        await down()
    assert caught.value.retry_after == pytest.approx(30.0)
    assert calls == 3


@pytest.mark.parametrize("a_trial_fails", [False, True])
def test_half_open_admits_exactly_half_open_calls_concurrent_trials(
        clock: Clock, threads: Threads, a_trial_fails: bool) -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    @baldur.protected("ho-sync", breaker=opens_on_first_failure(open_for=10.0, half_open_calls=3))
    def call(mode: str) -> str:
        if mode == "fail":
            raise ConnectionError("down")
        if mode.startswith("block"):
            entered.release()
            assert release.wait(WAIT)
            if mode == "block-fail":
                raise ConnectionError("still down")
        return "ok"

    with pytest.raises(ConnectionError):
        call("fail")
    clock.advance(10.0)
    modes = ["block", "block", "block-fail" if a_trial_fails else "block"]
    for mode in modes:
        threads.start(lambda mode=mode: call(mode))  # type: ignore[misc]
    for _ in modes:
        assert entered.acquire(timeout=WAIT)
    assert baldur.breaker("ho-sync").state is State.HALF_OPEN
    with pytest.raises(CircuitOpen):
        call("ok")  # a fourth trial while three are running
    release.set()
    threads.join()
    if a_trial_fails:
        assert len(threads.errors) == 1 and isinstance(threads.errors[0], ConnectionError)
        assert baldur.breaker("ho-sync").state is State.OPEN
        with pytest.raises(CircuitOpen) as caught:
            call("ok")
        assert caught.value.retry_after == pytest.approx(10.0)
    else:
        assert threads.errors == [] and threads.results == ["ok"] * 3
        assert baldur.breaker("ho-sync").state is State.CLOSED
        assert call("ok") == "ok"


@pytest.mark.anyio
@pytest.mark.parametrize("a_trial_fails", [False, True])
async def test_async_half_open_admits_exactly_half_open_calls_concurrent_trials(
        clock: Clock, a_trial_fails: bool) -> None:
    release = anyio.Event()
    all_in = anyio.Event()
    inside = 0
    outcomes: list[str] = []

    @baldur.protected("ho-async", breaker=opens_on_first_failure(open_for=10.0, half_open_calls=3))
    async def call(mode: str) -> str:
        nonlocal inside
        if mode == "fail":
            raise ConnectionError("down")
        if mode.startswith("block"):
            inside += 1
            if inside == 3:
                all_in.set()
            await release.wait()
            if mode == "block-fail":
                raise ConnectionError("still down")
        return "ok"

    async def trial(mode: str) -> None:
        try:
            outcomes.append(await call(mode))
        except ConnectionError:
            outcomes.append("failed")

    with pytest.raises(ConnectionError):
        await call("fail")
    clock.advance(10.0)
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for mode in ["block", "block", "block-fail" if a_trial_fails else "block"]:
                tg.start_soon(trial, mode)
            await all_in.wait()
            assert baldur.breaker("ho-async").state is State.HALF_OPEN
            with pytest.raises(CircuitOpen):
                await call("ok")
            release.set()
    if a_trial_fails:
        assert sorted(outcomes) == ["failed", "ok", "ok"]
        assert baldur.breaker("ho-async").state is State.OPEN
    else:
        assert outcomes == ["ok"] * 3
        assert baldur.breaker("ho-async").state is State.CLOSED


def test_ignored_exceptions_do_not_count() -> None:
    @baldur.protected("ignore-sync", breaker=opens_on_first_failure(ignore=(ValueError,)))
    def call(exc: Exception) -> None:
        raise exc

    for _ in range(5):
        with pytest.raises(ValueError):
            call(ValueError("bad input"))
    assert baldur.breaker("ignore-sync").state is State.CLOSED
    with pytest.raises(ConnectionError):
        call(ConnectionError("down"))
    assert baldur.breaker("ignore-sync").state is State.OPEN


@pytest.mark.anyio
async def test_async_ignored_exceptions_do_not_count() -> None:
    @baldur.protected("ignore-async", breaker=opens_on_first_failure(ignore=(ValueError,)))
    async def call(exc: Exception) -> None:
        raise exc

    for _ in range(5):
        with pytest.raises(ValueError):
            await call(ValueError("bad input"))
    assert baldur.breaker("ignore-async").state is State.CLOSED
    with pytest.raises(ConnectionError):
        await call(ConnectionError("down"))
    assert baldur.breaker("ignore-async").state is State.OPEN


def test_a_slow_success_counts_as_a_failure() -> None:
    @baldur.protected("slow-sync", breaker=opens_on_first_failure(slow_call=0.01))
    def slow() -> str:
        time.sleep(0.03)
        return "late but fine"

    @baldur.protected("quick-sync", breaker=opens_on_first_failure(slow_call=60.0))
    def quick() -> str:
        return "quick"

    assert slow() == "late but fine"  # the caller still gets the result
    assert baldur.breaker("slow-sync").state is State.OPEN
    assert quick() == "quick"
    assert baldur.breaker("quick-sync").state is State.CLOSED


@pytest.mark.anyio
async def test_async_slow_success_counts_as_a_failure() -> None:
    @baldur.protected("slow-async", breaker=opens_on_first_failure(slow_call=0.01))
    async def slow() -> str:
        await anyio.sleep(0.03)
        return "late but fine"

    assert await slow() == "late but fine"
    assert baldur.breaker("slow-async").state is State.OPEN


# -- timeout ---------------------------------------------------------------------------

@pytest.mark.anyio
async def test_async_timeout_cancels_the_call_raises_call_timeout_and_counts() -> None:
    seen: list[str] = []

    @baldur.protected("timeout-async", timeout=0.05, breaker=opens_on_first_failure())
    async def hang() -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    with anyio.fail_after(WAIT):
        with pytest.raises(CallTimeout) as caught:
            await hang()
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, baldur.BaldurError)
    assert caught.value.timeout == 0.05 and caught.value.name == "timeout-async"
    assert seen == ["cancelled"]
    assert baldur.breaker("timeout-async").state is State.OPEN


@pytest.mark.anyio
async def test_async_timeout_bounds_the_retries_too() -> None:
    attempts = 0

    @baldur.protected("timeout-retry-async", timeout=0.05, retry=Retry(attempts=1_000_000, backoff=0.001),
                      breaker=None)
    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        await anyio.sleep(0)
        raise ConnectionError("down")

    with anyio.fail_after(WAIT):
        with pytest.raises(CallTimeout):
            await flaky()
    assert attempts > 1


def test_sync_timeout_lets_the_call_finish_then_raises_and_discards_the_result() -> None:
    """A sync call cannot be interrupted safely: it runs to its end in the caller's thread.

    Only then, since it took longer than ``timeout``, ``CallTimeout`` is
    raised, the late result is discarded, and the breaker counts a failure.
    """
    finished_in: list[int] = []

    @baldur.protected("timeout-sync", timeout=0.02, breaker=opens_on_first_failure())
    def slow() -> str:
        time.sleep(0.06)
        finished_in.append(threading.get_ident())
        return "late"

    with pytest.raises(CallTimeout) as caught:
        slow()
    assert isinstance(caught.value, TimeoutError)
    assert finished_in == [threading.get_ident()]
    assert baldur.breaker("timeout-sync").state is State.OPEN


def test_sync_timeout_starts_no_retry_after_the_deadline() -> None:
    attempts = 0

    @baldur.protected("timeout-retry-sync", timeout=0.02, retry=Retry(attempts=5, backoff=0), breaker=None)
    def slow_failure() -> None:
        nonlocal attempts
        attempts += 1
        time.sleep(0.03)
        raise ConnectionError("down")

    with pytest.raises(CallTimeout) as caught:
        slow_failure()
    assert attempts == 1
    assert isinstance(caught.value.__cause__, ConnectionError)


# -- retry ----------------------------------------------------------------------------

def test_retry_retries_failures_and_the_breaker_sees_one_outcome() -> None:
    attempts = 0

    @baldur.protected("retry-sync", retry=Retry(attempts=3, backoff=0),
                      breaker=Breaker(failure_rate=None, consecutive_failures=2))
    def flaky(fail_times: int) -> str:
        nonlocal attempts
        attempts += 1
        if attempts <= fail_times:
            raise ConnectionError("down")
        return "ok"

    assert flaky(2) == "ok" and attempts == 3
    attempts = 0
    with pytest.raises(ConnectionError):
        flaky(99)
    assert attempts == 3
    assert baldur.breaker("retry-sync").state is State.CLOSED  # three attempts, one failed call
    attempts = 0
    with pytest.raises(ConnectionError):
        flaky(99)
    assert baldur.breaker("retry-sync").state is State.OPEN


@pytest.mark.anyio
async def test_async_retry_retries_failures() -> None:
    attempts = 0

    @baldur.protected("retry-async", retry=Retry(attempts=3, backoff=0), breaker=None)
    async def flaky(fail_times: int) -> str:
        nonlocal attempts
        attempts += 1
        await anyio.sleep(0)
        if attempts <= fail_times:
            raise ConnectionError("down")
        return "ok"

    assert await flaky(2) == "ok" and attempts == 3
    attempts = 0
    with pytest.raises(ConnectionError):
        await flaky(99)
    assert attempts == 3


def test_retry_never_retries_a_rejection() -> None:
    attempts = 0

    @baldur.protected("retry-inner")
    def inner() -> str:
        return "inner"

    @baldur.protected("retry-outer", retry=Retry(attempts=3, backoff=0), breaker=None)
    def outer() -> str:
        nonlocal attempts
        attempts += 1
        return inner()

    baldur.breaker("retry-inner").open()
    with pytest.raises(CircuitOpen):
        outer()
    assert attempts == 1


@pytest.mark.anyio
async def test_async_retry_never_retries_a_rejection() -> None:
    attempts = 0

    @baldur.protected("retry-inner-async", rate_limit="1/hour", breaker=None)
    async def inner() -> str:
        return "inner"

    @baldur.protected("retry-outer-async", retry=Retry(attempts=3, backoff=0), breaker=None)
    async def outer() -> str:
        nonlocal attempts
        attempts += 1
        return await inner()

    assert await outer() == "inner"
    attempts = 0
    with pytest.raises(RateLimited):
        await outer()
    assert attempts == 1


# -- fallback ---------------------------------------------------------------------------

def test_fallback_after_failures_and_rejections_but_not_for_ignored_exceptions() -> None:
    received: list[Exception] = []
    attempts = 0

    def fallback(exc: Exception) -> str:
        received.append(exc)
        return "fallback"

    options = Breaker(failure_rate=None, consecutive_failures=2, ignore=(ValueError,))

    @baldur.protected("fb-sync", breaker=options, retry=Retry(attempts=2, backoff=0), fallback=fallback)
    def call(exc: Exception) -> str:
        nonlocal attempts
        attempts += 1
        raise exc

    with pytest.raises(ValueError):
        call(ValueError("ignored"))
    assert received == []
    attempts = 0
    assert call(ConnectionError("down")) == "fallback"
    assert attempts == 2  # the fallback comes after the retries
    assert isinstance(received[-1], ConnectionError)
    assert call(ConnectionError("down")) == "fallback"  # the second failure opens the breaker
    attempts = 0
    assert call(ConnectionError("never runs")) == "fallback"
    assert attempts == 0 and isinstance(received[-1], CircuitOpen)


def test_fallback_after_rate_limit_and_overload(threads: Threads) -> None:
    received: list[Exception] = []
    entered, release = threading.Event(), threading.Event()

    def fallback(exc: Exception) -> str:
        received.append(exc)
        return "fallback"

    @baldur.protected("fb-rate", rate_limit="1/hour", fallback=fallback)
    def limited() -> str:
        return "ok"

    @baldur.protected("fb-busy", max_concurrency=1, fallback=fallback)
    def busy(block: bool) -> str:
        if block:
            entered.set()
            assert release.wait(WAIT)
        return "ok"

    assert [limited(), limited()] == ["ok", "fallback"]
    assert isinstance(received[-1], RateLimited)
    threads.start(lambda: busy(True))
    assert entered.wait(WAIT)
    assert busy(False) == "fallback"
    assert isinstance(received[-1], Overloaded)
    release.set()
    threads.join()
    assert threads.results == ["ok"] and busy(False) == "ok"


@pytest.mark.anyio
async def test_async_fallback_after_failures_and_rejections_but_not_for_ignored_exceptions() -> None:
    received: list[Exception] = []

    async def fallback(exc: Exception) -> str:
        await anyio.sleep(0)
        received.append(exc)
        return "fallback"

    @baldur.protected("fb-async", breaker=opens_on_first_failure(ignore=(ValueError,)), fallback=fallback)
    async def call(exc: Exception) -> str:
        raise exc

    with pytest.raises(ValueError):
        await call(ValueError("ignored"))
    assert received == []
    assert await call(ConnectionError("down")) == "fallback"
    assert isinstance(received[-1], ConnectionError)
    assert await call(ConnectionError("never runs")) == "fallback"
    assert isinstance(received[-1], CircuitOpen)


def test_an_async_callable_with_a_sync_fallback_is_a_config_error() -> None:
    decorate = baldur.protected("fb-mismatch", fallback=lambda exc: "sync")
    with pytest.raises(ConfigError, match="fallback"):
        @decorate
        async def call() -> str:
            return "x"


def test_a_sync_callable_with_an_async_fallback_is_a_config_error() -> None:
    """Its failures would otherwise be answered with an un-awaited coroutine instead of a result."""
    async def fallback(exc: Exception) -> str:
        return "async"

    with pytest.raises(ConfigError, match="fallback"):
        @baldur.protected("fb-mismatch-sync", fallback=fallback)
        def call() -> str:
            raise ConnectionError("down")


@pytest.mark.anyio
async def test_async_fallback_answers_a_timeout() -> None:
    async def fallback(exc: Exception) -> str:
        assert isinstance(exc, CallTimeout)
        return "fallback"

    @baldur.protected("fb-timeout", timeout=0.02, fallback=fallback, breaker=opens_on_first_failure())
    async def hang() -> str:
        await anyio.sleep_forever()
        return "never"

    with anyio.fail_after(WAIT):
        assert await hang() == "fallback"
    assert baldur.breaker("fb-timeout").state is State.OPEN


# -- manual control ----------------------------------------------------------------------

def test_breaker_handle_forces_open_closed_and_resets() -> None:
    calls = 0

    @baldur.protected("handle", breaker=opens_on_first_failure())
    def call(fail: bool) -> str:
        nonlocal calls
        calls += 1
        if fail:
            raise ConnectionError("down")
        return "ok"

    handle = baldur.breaker("handle")

    def state() -> State:
        return handle.state

    assert state() is State.CLOSED
    handle.open()
    assert state() == "forced_open"
    for _ in range(3):
        with pytest.raises(CircuitOpen):
            call(False)
    assert calls == 0
    handle.close()
    assert state() == "forced_closed"
    for _ in range(5):
        with pytest.raises(ConnectionError):
            call(True)
    assert calls == 5 and state() is State.FORCED_CLOSED
    handle.reset()
    assert state() is State.CLOSED
    with pytest.raises(ConnectionError):
        call(True)
    assert state() is State.OPEN
    handle.reset()
    assert call(False) == "ok"


# -- guard ---------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_guard_times_out_a_block_and_counts_it() -> None:
    ran = 0
    with anyio.fail_after(WAIT):
        with pytest.raises(CallTimeout) as caught:
            async with baldur.guard("guarded", timeout=0.05, breaker=opens_on_first_failure()):
                await anyio.sleep_forever()
    assert isinstance(caught.value, TimeoutError)
    assert baldur.breaker("guarded").state is State.OPEN
    with pytest.raises(CircuitOpen):
        async with baldur.guard("guarded", timeout=0.05, breaker=opens_on_first_failure()):
            ran += 1
    assert ran == 0


@pytest.mark.anyio
async def test_guard_records_outcomes_and_lets_exceptions_through() -> None:
    options = Breaker(failure_rate=None, consecutive_failures=2, ignore=(ValueError,))
    async with baldur.guard("guard-outcomes", breaker=options, timeout=WAIT):
        await anyio.sleep(0)
    for _ in range(3):
        with pytest.raises(ValueError):
            async with baldur.guard("guard-outcomes", breaker=options):
                raise ValueError("ignored")
    assert baldur.breaker("guard-outcomes").state is State.CLOSED
    for _ in range(2):
        with pytest.raises(ConnectionError):
            async with baldur.guard("guard-outcomes", breaker=options):
                raise ConnectionError("down")
    assert baldur.breaker("guard-outcomes").state is State.OPEN


@pytest.mark.anyio
async def test_one_guard_object_can_be_entered_again_after_it_exited() -> None:
    guarded = baldur.guard("guard-again", timeout=WAIT, max_concurrency=1, breaker=opens_on_first_failure())
    for _ in range(3):
        async with guarded:
            await anyio.sleep(0)
    with pytest.raises(ConnectionError):
        async with guarded:
            raise ConnectionError("down")
    with pytest.raises(CircuitOpen):
        async with guarded:
            pass


@pytest.mark.anyio
async def test_guard_sheds_beyond_max_concurrency() -> None:
    async with baldur.guard("guard-busy", max_concurrency=1):
        with pytest.raises(Overloaded):
            async with baldur.guard("guard-busy", max_concurrency=1):
                pass
    async with baldur.guard("guard-busy", max_concurrency=1):
        pass


# -- threads, tasks, BaseException, cancellation ---------------------------------------------

def test_a_sync_function_runs_in_the_callers_thread(threads: Threads) -> None:
    @baldur.protected("where", rate_limit="1000/second", max_concurrency=8, timeout=WAIT,
                      retry=Retry(attempts=2, backoff=0))
    def where() -> int:
        return threading.get_ident()

    assert where() == threading.get_ident()
    for _ in range(4):
        threads.start(lambda: (where(), threading.get_ident()))
    threads.join()
    assert threads.errors == [] and len(threads.results) == 4
    pairs = cast(list[tuple[int, int]], threads.results)
    assert all(inside == outside for inside, outside in pairs)


def test_keyboard_interrupt_propagates_does_not_count_and_frees_its_slot() -> None:
    @baldur.protected("interrupt", max_concurrency=1, breaker=opens_on_first_failure())
    def call(interrupt: bool) -> str:
        if interrupt:
            raise KeyboardInterrupt
        return "ok"

    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            call(True)
    assert baldur.breaker("interrupt").state is State.CLOSED
    assert call(False) == "ok"


@pytest.mark.anyio
async def test_async_base_exception_propagates_does_not_count_and_frees_its_slot() -> None:
    received: list[Exception] = []

    async def fallback(exc: Exception) -> str:
        received.append(exc)
        return "fallback"

    @baldur.protected("abort-async", max_concurrency=1, breaker=opens_on_first_failure(), fallback=fallback)
    async def call(abort: bool) -> str:
        if abort:
            raise Abort
        return "ok"

    for _ in range(3):
        with pytest.raises(Abort):
            await call(True)
    assert received == []
    assert baldur.breaker("abort-async").state is State.CLOSED
    assert await call(False) == "ok"


@pytest.mark.anyio
async def test_cancelling_a_call_releases_its_slot_and_half_open_permit(clock: Clock) -> None:
    entered = anyio.Event()

    @baldur.protected("cancelled", max_concurrency=1, breaker=opens_on_first_failure(open_for=5.0, half_open_calls=1))
    async def call(mode: str) -> str:
        if mode == "fail":
            raise ConnectionError("down")
        if mode == "hang":
            entered.set()
            await anyio.sleep_forever()
        return "ok"

    with pytest.raises(ConnectionError):
        await call("fail")
    clock.advance(5.0)
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "hang")  # holds the one slot and the one trial permit
            await entered.wait()
            with pytest.raises(Overloaded):
                await call("ok")
            tg.cancel_scope.cancel()
    assert baldur.breaker("cancelled").state is State.HALF_OPEN  # a cancelled trial decides nothing
    assert await call("ok") == "ok"  # the slot and the permit came back
    assert baldur.breaker("cancelled").state is State.CLOSED


@pytest.mark.anyio
async def test_thousand_tasks_never_exceed_max_concurrency() -> None:
    limit, total = 7, 1_000
    running = peak = completed = shed = arrived = 0
    everyone_arrived, release = anyio.Event(), anyio.Event()

    def arrive() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == total:
            everyone_arrived.set()

    @baldur.protected("bulkhead", max_concurrency=limit)
    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            arrive()
            await release.wait()
        finally:
            running -= 1

    async def one() -> None:
        nonlocal completed, shed
        try:
            await work()
        except Overloaded:
            shed += 1
            arrive()
        else:
            completed += 1

    with anyio.fail_after(WAIT * 3):
        async with anyio.create_task_group() as tg:
            for _ in range(total):
                tg.start_soon(one)
            await everyone_arrived.wait()
            assert running == limit
            release.set()
    assert peak == limit and completed == limit and shed == total - limit


@pytest.mark.anyio
async def test_thousand_tasks_coming_and_going_stay_within_max_concurrency() -> None:
    limit, total = 5, 1_000
    running = peak = completed = shed = 0

    @baldur.protected("bulkhead-churn", max_concurrency=limit)
    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await anyio.sleep(0)
        running -= 1

    async def one() -> None:
        nonlocal completed, shed
        try:
            await work()
        except Overloaded:
            shed += 1
        else:
            completed += 1

    with anyio.fail_after(WAIT * 3):
        async with anyio.create_task_group() as tg:
            for _ in range(total):
                tg.start_soon(one)
    assert completed + shed == total
    assert limit <= completed and peak <= limit and running == 0


@pytest.mark.anyio
async def test_thousand_tasks_get_exactly_the_rate_limit() -> None:
    quota, total = 100, 1_000
    admitted = limited = 0

    @baldur.protected("rate-async", rate_limit=RateLimit(f"{quota}/day"))
    async def work() -> None:
        await anyio.sleep(0)

    async def one() -> None:
        nonlocal admitted, limited
        try:
            await work()
        except RateLimited as exc:
            assert exc.retry_after > 0
            limited += 1
        else:
            admitted += 1

    with anyio.fail_after(WAIT * 3):
        async with anyio.create_task_group() as tg:
            for _ in range(total):
                tg.start_soon(one)
    assert admitted == quota and limited == total - quota


def test_sixteen_threads_get_exactly_the_rate_limit(threads: Threads) -> None:
    quota, per_thread = 5_000, 1_000
    barrier = threading.Barrier(16)

    @baldur.protected("rate-threads", rate_limit=RateLimit(f"{quota}/day"), max_concurrency=1_000)
    def work() -> None:
        return None

    def hammer() -> int:
        barrier.wait()
        admitted = 0
        for _ in range(per_thread):
            try:
                work()
            except RateLimited:
                continue
            admitted += 1
        return admitted

    for _ in range(16):
        threads.start(hammer)
    threads.join()
    assert threads.errors == []
    assert sum(threads.results) == quota  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_one_guard_object_serves_many_tasks_at_once() -> None:
    shared = baldur.guard("shared-guard", max_concurrency=10, timeout=5)
    entered = 0
    all_in = anyio.Event()

    async def use() -> None:
        nonlocal entered
        async with shared:
            entered += 1
            if entered == 5:
                all_in.set()
            await all_in.wait()

    async with anyio.create_task_group() as tasks:
        for _ in range(5):
            tasks.start_soon(use)
    assert entered == 5
