"""The sync bridge: per-thread loops from a pool, the background loop, the store faces, and fork()."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import baldur
from baldur import _log
from baldur.bridges import AsyncOverSync, SyncOverAsync, background, loop_pool, run_sync
from baldur.errors import Rejected
from baldur.policies.breaker import Breaker, Outcome, State
from baldur.policies.rate_limit import RateDecision, RateLimit
from baldur.stores._types import ExtraLimit, Plan, SyncStore, Ticket
from baldur.stores.memory import MemoryStore

WAIT = 10.0  # seconds: only an upper bound for waits that should end at once


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SuspendingStore:
    """An async store whose every operation really suspends before it decides (like one doing I/O)."""

    def __init__(self, store: MemoryStore) -> None:
        self.inner = AsyncOverSync(store)

    def defer(self, ticket: Ticket, outcome: Outcome) -> bool:
        return False  # nothing is written behind: every outcome goes through ``finish``

    def admit_without_io(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None
                         ) -> Ticket | None:
        return None  # every admission goes through ``admit``

    def rate_without_io(self, key: str, limit: RateLimit) -> RateDecision | None:
        return None  # every unit goes through ``rate``

    async def admit(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None) -> Ticket:
        await asyncio.sleep(0)
        return await self.inner.admit(plan, client, extra)

    async def finish(self, ticket: Ticket, outcome: Outcome) -> None:
        await asyncio.sleep(0)
        await self.inner.finish(ticket, outcome)

    async def rate(self, key: str, limit: RateLimit) -> RateDecision:
        await asyncio.sleep(0)
        return await self.inner.rate(key, limit)

    async def read_breaker(self, name: str, options: Breaker) -> State:
        await asyncio.sleep(0)
        return await self.inner.read_breaker(name, options)

    async def force_breaker(self, name: str, options: Breaker, state: State) -> None:
        await asyncio.sleep(0)
        await self.inner.force_breaker(name, options, state)

    async def reset(self) -> None:
        await asyncio.sleep(0)
        await self.inner.reset()

    async def close(self) -> None:
        await asyncio.sleep(0)
        await self.inner.close()


@pytest.fixture
def stop_background() -> Iterator[None]:
    """The test may start the background loop; it is stopped again afterwards."""
    yield
    background.close()


def run_in_threads(count: int, target: Callable[[], Any]) -> list[Any]:
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            value = target()
        except BaseException as exc:
            errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    if errors:
        raise errors[0]
    return results


# -- run_sync ----------------------------------------------------------------------------

async def where_am_i(value: int) -> tuple[int, asyncio.AbstractEventLoop, int]:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    await anyio.sleep(0)
    future = loop.create_future()
    loop.call_soon(future.set_result, value * 2)  # really suspends until the loop runs the callback
    return threading.get_ident(), loop, await future


def test_run_sync_drives_the_coroutine_in_the_calling_thread() -> None:
    ident, loop, doubled = run_sync(where_am_i, 21)
    assert ident == threading.get_ident() and doubled == 42
    assert not loop.is_running() and not loop.is_closed()  # back in the pool, ready for the next caller

    [(ident, _, doubled)] = run_in_threads(1, lambda: (*run_sync(where_am_i, 1)[::2], threading.get_ident()))
    assert ident == doubled  # the worker thread ran it itself


def test_run_sync_propagates_exceptions() -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise LookupError("from the coroutine")

    with pytest.raises(LookupError, match="from the coroutine"):
        run_sync(fail)
    assert run_sync(where_am_i, 2)[2] == 4  # the loop survived


def test_two_hundred_short_lived_threads_share_a_few_loops() -> None:
    """200 threads come and go, 8 at a time: the pool grows to the peak (8), not to 200."""
    pool = loop_pool()
    before = pool.size
    wave = 8
    barrier = threading.Barrier(wave)
    seen: set[int] = set()
    lock = threading.Lock()

    async def meet() -> int:
        await asyncio.sleep(0)
        barrier.wait(WAIT)  # all 8 hold a loop at the same time
        loop = asyncio.get_running_loop()
        with lock:
            seen.add(id(loop))
        return threading.get_ident()

    for _ in range(200 // wave):
        idents = run_in_threads(wave, lambda: (run_sync(meet), threading.get_ident()))
        assert all(inside == outside for inside, outside in idents)
    assert pool.size <= max(before, wave)
    assert len(seen) == wave  # each wave of 8 reused the same 8 loops


def test_run_sync_inside_a_running_loop_hops_to_the_background_loop(stop_background: None) -> None:
    async def main() -> tuple[int, tuple[int, asyncio.AbstractEventLoop, int], asyncio.AbstractEventLoop]:
        await asyncio.sleep(0)
        return threading.get_ident(), run_sync(where_am_i, 21), asyncio.get_running_loop()

    caller, (ident, loop, doubled), callers_loop = asyncio.run(main())
    assert doubled == 42
    assert ident != caller and loop is not callers_loop
    assert background.running


def test_background_loop_runs_calls_and_restarts_after_close(stop_background: None) -> None:
    async def ident() -> int:
        await anyio.sleep(0)
        return threading.get_ident()

    first = background.call(ident)
    assert first != threading.get_ident() and background.running
    background.close()
    assert not background.running
    assert background.call(ident) != threading.get_ident()


def test_closing_the_background_loop_cancels_what_still_runs_there(stop_background: None) -> None:
    """A task that never ends on its own (a write-behind flusher, a prober) must not keep
    ``close()`` (run at interpreter exit) waiting forever."""
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    background.portal().start_task_soon(forever)
    closer = threading.Thread(target=background.close, daemon=True)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive(), "background.close() waits for a task that never ends"
    assert cancelled.is_set() and not background.running


# -- the store faces -----------------------------------------------------------------------

def decisions(store: SyncStore, clock: Clock, seed: int) -> list[object]:
    """A seeded random script of store operations; the list of what each one answered."""
    rng = random.Random(seed)
    options = Breaker(failure_rate=0.5, min_calls=4, consecutive_failures=3, open_for=2.0, half_open_calls=2)
    plans = [
        Plan("all", options, RateLimit("20/second"), 3),
        Plan("breaker", options, None, None),
        Plan("rate", None, RateLimit("5/second", burst=2), None),
    ]
    held: list[Ticket] = []
    answers: list[object] = []
    for _ in range(2_000):
        op = rng.random()
        if op < 0.45:
            plan = rng.choice(plans)
            try:
                ticket = store.admit(plan, rng.choice([None, "alice", "bob"]))
            except Rejected as exc:
                answers.append((type(exc).__name__, round(exc.retry_after, 6)))
            else:
                rate = None if ticket.rate is None else (ticket.rate.remaining, round(ticket.rate.next_after, 6))
                answers.append(("admitted", ticket.trial, ticket.holds_slot, rate))
                held.append(ticket)
        elif op < 0.8 and held:
            ticket = held.pop(rng.randrange(len(held)))
            store.finish(ticket, rng.choice([Outcome.SUCCESS, Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED]))
        elif op < 0.88:
            decision = store.rate(f"key-{rng.randrange(3)}", RateLimit("3/second"))
            answers.append((decision.allowed, decision.remaining, round(decision.retry_after, 6)))
        elif op < 0.95:
            answers.append(str(store.read_breaker(rng.choice(["all", "breaker"]), options)))
        elif op < 0.96:
            store.force_breaker("breaker", options, rng.choice([State.CLOSED, State.FORCED_OPEN, State.FORCED_CLOSED]))
        else:
            clock.now += rng.choice([0.05, 0.3, 1.0, 2.5])
    return answers


@pytest.mark.parametrize("face", ["sync-over-async-over-sync", "sync-over-suspending"])
def test_sync_over_async_gives_the_same_decisions_as_the_memory_store(face: str) -> None:
    for seed in range(3):
        direct_clock, wrapped_clock = Clock(), Clock()
        direct = decisions(MemoryStore(clock=direct_clock), direct_clock, seed)
        memory = MemoryStore(clock=wrapped_clock)
        wrapped: SyncStore = SyncOverAsync(AsyncOverSync(memory) if face == "sync-over-async-over-sync"
                                          else SuspendingStore(memory))
        assert decisions(wrapped, wrapped_clock, seed) == direct
        wrapped.reset()
        assert len(memory) == 0


def test_sync_over_a_suspending_store_loses_no_counts_across_threads() -> None:
    memory = MemoryStore(clock=Clock())
    store = SyncOverAsync(SuspendingStore(memory))
    quota = 777
    limit = RateLimit(f"{quota}/day")
    barrier = threading.Barrier(8)

    def hammer() -> int:
        barrier.wait(WAIT)
        return sum(store.rate("shared", limit).allowed for _ in range(300))

    assert sum(run_in_threads(8, hammer)) == quota


@pytest.mark.anyio
async def test_async_over_sync_answers_without_suspending_on_both_backends() -> None:
    store = AsyncOverSync(MemoryStore(clock=Clock()))
    plan = Plan("face", Breaker(failure_rate=None, consecutive_failures=1), RateLimit("2/minute"), None)
    ticket = await store.admit(plan)
    await store.finish(ticket, Outcome.FAILURE)
    assert await store.read_breaker("face", Breaker()) is State.OPEN
    assert (await store.rate("k", RateLimit("1/minute"))).allowed
    assert not (await store.rate("k", RateLimit("1/minute"))).allowed


# -- fork ------------------------------------------------------------------------------------

def _in_the_child() -> dict[str, object]:
    """Everything the child checks; runs after fork(), before os._exit."""
    report: dict[str, object] = {"background_running_after_fork": background.running,
                                 "pool_size_after_fork": loop_pool().size}
    caller = threading.get_ident()

    @baldur.protected("child-sync", rate_limit="2/hour", max_concurrency=2, timeout=WAIT,
                      retry=baldur.Retry(attempts=2, backoff=0))
    def sync_call() -> int:
        return threading.get_ident()

    report["sync_threads"] = [sync_call() == caller, sync_call() == caller]
    try:
        sync_call()
    except baldur.RateLimited:
        report["sync_third"] = "rate limited"

    @baldur.protected("child-async", max_concurrency=1, timeout=WAIT)
    async def async_call(x: int) -> int:
        await anyio.sleep(0)
        return x * 2

    async def main() -> list[int]:
        return [await async_call(i) for i in range(3)]

    report["async_asyncio"] = anyio.run(main)
    report["async_trio"] = anyio.run(main, backend="trio")
    report["run_sync"] = run_sync(where_am_i, 5)[2]

    async def on_background() -> int:
        await anyio.sleep(0)
        return threading.get_ident()

    report["background_thread_differs"] = background.call(on_background) != caller
    report["background_running_after_start"] = background.running
    background.close()
    report["background_running_after_close"] = background.running
    return report


def run_forked(child: Callable[[], dict[str, object]], timeout: float = 30.0) -> dict[str, object]:
    """Run ``child()`` in a forked process; return what it returned (or the error it raised).

    The child always leaves through ``os._exit`` (no atexit hooks, no pytest
    teardown in the child); a child that does not answer in ``timeout``
    seconds is killed and the test fails.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 70
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(child()).encode())
            code = 0
        except BaseException as exc:
            try:
                os.write(write_end, json.dumps({"error": repr(exc)}).encode())
            finally:
                os._exit(71)
        finally:
            os._exit(code)

    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    answered = False
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read_end, 65536)
            if not chunk:
                answered = True
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if not answered:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert answered, f"the forked child did not answer within {timeout:g} s"
    report: dict[str, object] = json.loads(b"".join(chunks) or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
multi_threaded_fork = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


@fork_only
@multi_threaded_fork
def test_a_forked_child_uses_protected_and_rebuilds_the_loops(stop_background: None) -> None:
    background.portal()  # the parent's background loop thread is running when it forks
    assert background.running
    run_sync(where_am_i, 1)  # and the parent's pool holds a loop

    @baldur.protected("parent", breaker=Breaker(failure_rate=None, consecutive_failures=1))
    def parent_call() -> str:
        return "parent"

    assert parent_call() == "parent"
    report = run_forked(_in_the_child)
    assert report == {
        "background_running_after_fork": False,
        "pool_size_after_fork": 0,
        "sync_threads": [True, True],
        "sync_third": "rate limited",
        "async_asyncio": [0, 2, 4],
        "async_trio": [0, 2, 4],
        "run_sync": 10,
        "background_thread_differs": True,
        "background_running_after_start": True,
        "background_running_after_close": False,
    }
    assert background.running  # the parent's loop is untouched
    assert parent_call() == "parent"


def _child_behind_held_locks() -> dict[str, object]:
    logging.getLogger("baldur").setLevel(logging.INFO)  # so that a rejection takes the log's lock

    @baldur.protected("locked", rate_limit="1/hour", max_concurrency=1)
    def call() -> str:
        return "ok"

    answers = [call()]
    try:
        call()
    except baldur.RateLimited:
        answers.append("rate limited")
    return {"answers": answers}


@fork_only
@multi_threaded_fork
def test_a_forked_child_does_not_inherit_locks_held_by_parent_threads() -> None:
    """A thread of the parent is inside a store operation (and logging an event) at the moment
    of fork(): the child, which has no such thread, must still be able to decide."""
    store = baldur.init().sync
    assert isinstance(store, MemoryStore)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock, _log._lock:
            holding.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    level = logging.getLogger("baldur").level
    try:
        assert holding.wait(WAIT)
        report = run_forked(_child_behind_held_locks, timeout=10.0)
    finally:
        release.set()
        holder.join(WAIT)
        logging.getLogger("baldur").setLevel(level)
    assert report == {"answers": ["ok", "rate limited"]}
