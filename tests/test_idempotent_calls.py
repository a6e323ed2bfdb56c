"""``@baldur.protected(name, idempotency_key=...)``: exactly-once calls per key, sync and async.

A repeat of a completed call returns the stored (JSON) result without running; a repeat
while the first runs raises ``IdempotencyConflict``; an exception, a fallback's answer or
a result that is not JSON frees the key. Calls in flight are arranged with events
(threading for sync callers, anyio for async ones on asyncio and trio), never with sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import baldur
from baldur import _runtime
from baldur.errors import ConfigError, IdempotencyConflict, Rejected, StoreUnavailable
from tests.redis_server import RedisServer

DEADLINE = 20.0


class Ledger:
    """What a payment function did: one entry per run."""

    def __init__(self) -> None:
        self.runs: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def record(self, *what: Any) -> int:
        with self.lock:
            self.runs.append(what)
            return len(self.runs)


# -- sync ------------------------------------------------------------------------


def test_a_repeat_of_a_completed_call_returns_the_stored_result_without_running() -> None:
    ledger = Ledger()

    @baldur.protected("charge", idempotency_key="order_id")
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        return {"order": order_id, "amount": amount, "run": ledger.record(order_id, amount)}

    first = charge("o-1", 10)
    assert first == {"order": "o-1", "amount": 10, "run": 1}
    assert charge("o-1", 10) == first
    assert charge(order_id="o-1", amount=10) == first  # the same key however it is passed
    assert charge("o-1", amount=10) == first
    assert charge("o-2", 10)["run"] == 2
    assert ledger.runs == [("o-1", 10), ("o-2", 10)]


def test_the_key_alone_identifies_the_call() -> None:
    """Unlike HTTP requests, a function's other arguments are not compared: the key is the call."""
    ledger = Ledger()

    @baldur.protected("charge-key-only", idempotency_key="order_id")
    def charge(order_id: str, amount: int) -> int:
        ledger.record(order_id, amount)
        return amount

    assert charge("o-1", 10) == 10
    assert charge("o-1", 99) == 10
    assert ledger.runs == [("o-1", 10)]


def test_a_callable_key_over_the_arguments() -> None:
    ledger = Ledger()

    @baldur.protected("charge-callable", idempotency_key=lambda order, **_: f"{order['shop']}/{order['id']}")
    def charge(order: dict[str, Any], note: str = "") -> int:
        return ledger.record(order["id"])

    assert charge({"shop": "a", "id": 1}) == 1
    assert charge({"shop": "a", "id": 1}, note="retry") == 1
    assert charge({"shop": "b", "id": 1}) == 2
    assert len(ledger.runs) == 2


def test_the_stored_result_is_json_so_a_replay_returns_plain_data() -> None:
    @baldur.protected("charge-json", idempotency_key="order_id")
    def charge(order_id: str) -> Any:
        return {"ids": (1, 2), "amount": 1.5, "ok": True, "none": None}

    assert charge("o-1") == {"ids": (1, 2), "amount": 1.5, "ok": True, "none": None}  # the call's own result
    assert charge("o-1") == {"ids": [1, 2], "amount": 1.5, "ok": True, "none": None}  # JSON: a tuple is a list


def test_keys_are_scoped_by_the_protected_name() -> None:
    @baldur.protected("one", idempotency_key="key")
    def one(key: str) -> str:
        return "one"

    @baldur.protected("two", idempotency_key="key")
    def two(key: str) -> str:
        return "two"

    assert (one("k"), two("k"), one("k"), two("k")) == ("one", "two", "one", "two")


def test_a_repeat_while_the_first_call_runs_raises_idempotency_conflict() -> None:
    entered, release = threading.Event(), threading.Event()
    ledger = Ledger()

    @baldur.protected("charge-slow", idempotency_key="order_id")
    def charge(order_id: str) -> str:
        ledger.record(order_id)
        entered.set()
        assert release.wait(DEADLINE), "the test never released the call"
        return f"charged {order_id}"

    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(charge("o-1")), daemon=True)
    first.start()
    try:
        assert entered.wait(DEADLINE)
        with pytest.raises(IdempotencyConflict) as conflict:
            charge("o-1")
        assert isinstance(conflict.value, Rejected)
        assert conflict.value.retry_after == 1.0
        assert conflict.value.name == "charge-slow"
        assert len(ledger.runs) == 1
    finally:
        release.set()
        first.join(DEADLINE)
    assert not first.is_alive()
    assert results == ["charged o-1"]
    assert charge("o-1") == "charged o-1"
    assert len(ledger.runs) == 1


def test_a_conflict_reaches_the_caller_not_the_fallback() -> None:
    entered, release = threading.Event(), threading.Event()

    @baldur.protected("charge-slow-fb", idempotency_key="order_id", fallback=lambda exc: "queued")
    def charge(order_id: str) -> str:
        entered.set()
        assert release.wait(DEADLINE)
        return "charged"

    first = threading.Thread(target=charge, args=("o-1",), daemon=True)
    first.start()
    try:
        assert entered.wait(DEADLINE)
        with pytest.raises(IdempotencyConflict):
            charge("o-1")  # "queued" would hide that the charge is under way
    finally:
        release.set()
        first.join(DEADLINE)
    assert charge("o-1") == "charged"


def test_threads_racing_on_one_key_run_it_once() -> None:
    start, release = threading.Barrier(8, timeout=DEADLINE), threading.Event()
    ledger = Ledger()

    @baldur.protected("charge-race", idempotency_key="order_id")
    def charge(order_id: str) -> int:
        run = ledger.record(order_id)
        assert release.wait(DEADLINE)
        return run

    outcomes: list[Any] = []

    def attempt() -> None:
        start.wait()
        try:
            outcomes.append(charge("o-1"))
        except IdempotencyConflict as exc:
            outcomes.append(type(exc))
            if len([o for o in outcomes if o is IdempotencyConflict]) == 7:
                release.set()

    threads = [threading.Thread(target=attempt, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(DEADLINE)
    finally:
        release.set()
    assert sorted(outcomes, key=str) == sorted([1] + [IdempotencyConflict] * 7, key=str)
    assert len(ledger.runs) == 1


@pytest.mark.parametrize("bad", [object(), {1, 2}, math.nan, b"bytes"], ids=["object", "set", "nan", "bytes"])
def test_a_result_that_is_not_json_is_a_clear_error_at_the_first_call_and_frees_the_key(bad: Any) -> None:
    ledger = Ledger()
    answers: list[Any] = [bad, {"fine": True}]

    @baldur.protected("charge-bad-result", idempotency_key="order_id")
    def charge(order_id: str) -> Any:
        return answers[ledger.record(order_id) - 1]

    with pytest.raises(TypeError, match="not JSON-serialisable") as error:
        charge("o-1")
    assert "charge-bad-result" in str(error.value) and type(bad).__name__ in str(error.value)
    # The key was released: the next call runs (and this time stores its result).
    assert charge("o-1") == {"fine": True}
    assert charge("o-1") == {"fine": True}
    assert len(ledger.runs) == 2


def test_an_exception_frees_the_key_and_a_retry_runs() -> None:
    ledger = Ledger()

    @baldur.protected("charge-flaky", idempotency_key="order_id", breaker=None)
    def charge(order_id: str) -> str:
        if ledger.record(order_id) == 1:
            raise ConnectionError("the provider hung up")
        return "charged"

    with pytest.raises(ConnectionError):
        charge("o-1")
    assert charge("o-1") == "charged"
    assert charge("o-1") == "charged"
    assert len(ledger.runs) == 2


def test_a_fallback_answer_is_not_stored() -> None:
    ledger = Ledger()

    @baldur.protected("charge-fb", idempotency_key="order_id", fallback=lambda exc: "queued for later")
    def charge(order_id: str) -> str:
        if ledger.record(order_id) == 1:
            raise ConnectionError("the provider hung up")
        return "charged"

    assert charge("o-1") == "queued for later"  # the call failed; the fallback answered
    assert charge("o-1") == "charged"  # so the key was free: the retry ran
    assert charge("o-1") == "charged"  # and its result was stored
    assert len(ledger.runs) == 2

    baldur.breaker("charge-fb").open()
    assert charge("o-2") == "queued for later"  # refused by the open breaker, not run
    baldur.breaker("charge-fb").close()
    assert charge("o-2") == "charged"
    assert len(ledger.runs) == 3


def test_a_fallback_of_a_call_inside_is_not_the_fallback_of_the_idempotent_call() -> None:
    """The charge ran (and stored its result) even though the receipt it sent fell back."""
    ledger = Ledger()

    @baldur.protected("receipt", fallback=lambda exc: "receipt queued")
    def send_receipt(order_id: str) -> str:
        raise ConnectionError("the mail server is down")

    @baldur.protected("charge-outer", idempotency_key="order_id")
    def charge(order_id: str) -> dict[str, Any]:
        return {"run": ledger.record(order_id), "receipt": send_receipt(order_id)}

    assert charge("o-1") == {"run": 1, "receipt": "receipt queued"}
    assert charge("o-1") == {"run": 1, "receipt": "receipt queued"}
    assert len(ledger.runs) == 1  # never charged twice


def test_a_key_argument_left_at_its_default_is_that_value() -> None:
    ledger = Ledger()

    @baldur.protected("charge-default", idempotency_key="order_id")
    def charge(amount: int, order_id: str = "default-order") -> int:
        return ledger.record(amount, order_id)

    assert charge(10) == 1
    assert charge(10, "default-order") == 1
    assert charge(10, order_id="o-2") == 2


def test_a_key_of_none_runs_the_call_without_idempotency() -> None:
    """As Stripe's clients do: no key, no guarantee (never one shared key ``"None"``)."""
    ledger = Ledger()

    @baldur.protected("charge-optional", idempotency_key="idempotency_key")
    def charge(amount: int, idempotency_key: str | None = None) -> int:
        return ledger.record(amount)

    @baldur.protected("charge-optional-callable", idempotency_key=lambda amount, key=None: key)
    def charge_too(amount: int, key: str | None = None) -> int:
        return ledger.record(amount)

    assert [charge(10), charge(20), charge(30, None)] == [1, 2, 3]
    assert [charge_too(10), charge_too(20)] == [4, 5]
    assert [charge(40, "k"), charge(50, "k")] == [6, 6]


def test_an_unknown_argument_name_is_a_config_error_at_decoration() -> None:
    with pytest.raises(ConfigError) as error:

        @baldur.protected("charge-typo", idempotency_key="orderid")
        def charge(order_id: str) -> str:
            return order_id

    message = str(error.value)
    assert "orderid" in message and "no argument of that name" in message
    assert "idempotency_key='order_id'" in message  # the example names the function's first argument


@pytest.mark.parametrize("spec", [42, ["order_id"], b"order_id"])
def test_a_key_that_is_neither_a_name_nor_a_callable_is_a_config_error(spec: Any) -> None:
    with pytest.raises(ConfigError, match="an argument's name or a callable"):
        baldur.protected("charge-bad-spec", idempotency_key=spec)


# -- async (asyncio and trio) --------------------------------------------------------


@pytest.mark.anyio
async def test_async_a_repeat_of_a_completed_call_returns_the_stored_result() -> None:
    ledger = Ledger()

    @baldur.protected("acharge", idempotency_key="order_id")
    async def charge(order_id: str, amount: int) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return {"order": order_id, "run": ledger.record(order_id, amount)}

    first = await charge("o-1", 10)
    assert await charge("o-1", 10) == first == {"order": "o-1", "run": 1}
    assert await charge(order_id="o-1", amount=10) == first
    assert (await charge("o-2", 10))["run"] == 2


@pytest.mark.anyio
async def test_async_a_callable_key() -> None:
    ledger = Ledger()

    @baldur.protected("acharge-callable", idempotency_key=lambda order: order["id"])
    async def charge(order: dict[str, Any]) -> int:
        return ledger.record(order["id"])

    assert [await charge({"id": 7}), await charge({"id": 7}), await charge({"id": 8})] == [1, 1, 2]


@pytest.mark.anyio
async def test_async_a_repeat_while_the_first_task_runs_raises_idempotency_conflict() -> None:
    entered, release = anyio.Event(), anyio.Event()
    ledger = Ledger()

    @baldur.protected("acharge-slow", idempotency_key="order_id")
    async def charge(order_id: str) -> str:
        ledger.record(order_id)
        entered.set()
        await release.wait()
        return f"charged {order_id}"

    results: list[str] = []

    async def first() -> None:
        results.append(await charge("o-1"))

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            await entered.wait()
            with pytest.raises(IdempotencyConflict):
                await charge("o-1")
            release.set()
    assert results == ["charged o-1"]
    assert await charge("o-1") == "charged o-1"
    assert len(ledger.runs) == 1


@pytest.mark.anyio
async def test_async_a_result_that_is_not_json_is_a_type_error_and_frees_the_key() -> None:
    ledger = Ledger()

    @baldur.protected("acharge-bad", idempotency_key="order_id")
    async def charge(order_id: str) -> Any:
        return object() if ledger.record(order_id) == 1 else ["fine"]

    with pytest.raises(TypeError, match="not JSON-serialisable"):
        await charge("o-1")
    assert await charge("o-1") == ["fine"]
    assert await charge("o-1") == ["fine"]
    assert len(ledger.runs) == 2


@pytest.mark.anyio
async def test_async_an_exception_frees_the_key() -> None:
    ledger = Ledger()

    @baldur.protected("acharge-flaky", idempotency_key="order_id", breaker=None)
    async def charge(order_id: str) -> str:
        if ledger.record(order_id) == 1:
            raise ConnectionError("the provider hung up")
        return "charged"

    with pytest.raises(ConnectionError):
        await charge("o-1")
    assert [await charge("o-1"), await charge("o-1")] == ["charged", "charged"]
    assert len(ledger.runs) == 2


@pytest.mark.anyio
async def test_async_a_cancelled_call_frees_the_key() -> None:
    entered = anyio.Event()
    ledger = Ledger()

    @baldur.protected("acharge-cancel", idempotency_key="order_id")
    async def charge(order_id: str) -> str:
        if ledger.record(order_id) == 1:
            entered.set()
            await anyio.sleep_forever()
        return "charged"

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(charge, "o-1")
            await entered.wait()
            tasks.cancel_scope.cancel()
    assert await charge("o-1") == "charged"
    assert len(ledger.runs) == 2


@pytest.mark.anyio
async def test_async_a_fallback_answer_is_not_stored() -> None:
    ledger = Ledger()

    async def later(exc: Exception) -> str:
        return "queued for later"

    @baldur.protected("acharge-fb", idempotency_key="order_id", fallback=later)
    async def charge(order_id: str) -> str:
        if ledger.record(order_id) == 1:
            raise ConnectionError("the provider hung up")
        return "charged"

    assert await charge("o-1") == "queued for later"
    assert [await charge("o-1"), await charge("o-1")] == ["charged", "charged"]
    assert len(ledger.runs) == 2


@pytest.mark.anyio
async def test_async_a_fallback_of_a_call_inside_is_not_the_fallback_of_the_idempotent_call() -> None:
    ledger = Ledger()

    async def queued(exc: Exception) -> str:
        return "receipt queued"

    @baldur.protected("areceipt", fallback=queued)
    async def send_receipt(order_id: str) -> str:
        raise ConnectionError("the mail server is down")

    @baldur.protected("acharge-outer", idempotency_key="order_id")
    async def charge(order_id: str) -> dict[str, Any]:
        return {"run": ledger.record(order_id), "receipt": await send_receipt(order_id)}

    assert await charge("o-1") == await charge("o-1") == {"run": 1, "receipt": "receipt queued"}
    assert len(ledger.runs) == 1


# -- the store is unavailable: fail closed, or open when told -----------------------------


@pytest.fixture
def on_redis(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """``build(**env)`` makes a runtime on the private Redis (the test freezes it with SIGSTOP);
    Redis is thawed and the previous runtime restored after."""
    saved = _runtime._current
    built: list[_runtime.Runtime] = []

    def build(**env: str) -> _runtime.Runtime:
        monkeypatch.setenv("BALDUR_REDIS_URL", redis_server.url)
        monkeypatch.setenv("BALDUR_KEY_PREFIX", f"idem-calls-{len(built)}")
        # A loaded test machine must not make a slow Redis look down before the test freezes it.
        monkeypatch.setenv("BALDUR_REDIS_TIMEOUT_MS", "1000")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with _runtime._lock:
            _runtime._current = None
        runtime = _runtime.init()
        built.append(runtime)
        return runtime

    try:
        yield build
    finally:
        redis_server.thaw()
        with _runtime._lock:
            _runtime._current = saved
        for runtime in built:
            with contextlib.suppress(Exception):
                runtime.sync.reset()
            runtime.sync.close()


def test_a_frozen_store_fails_an_idempotent_call_closed(on_redis: Callable[..., Any],
                                                        redis_server: RedisServer) -> None:
    on_redis()
    ledger = Ledger()

    @baldur.protected("charge-frozen", idempotency_key="order_id")
    def charge(order_id: str) -> str:
        ledger.record(order_id)
        return "charged"

    @baldur.protected("plain-frozen")
    def plain() -> str:
        return "ok"

    redis_server.freeze()
    for _ in range(3):
        with pytest.raises(StoreUnavailable, match="idempotency needs Redis"):
            charge("o-1")
    assert ledger.runs == []
    assert plain() == "ok"  # everything else carries on with the local fallback


def test_fail_open_runs_the_call_without_the_guarantee_and_says_so(
        on_redis: Callable[..., Any], redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    on_redis(BALDUR_IDEMPOTENCY_FAIL_OPEN="1")
    caplog.set_level(logging.WARNING, logger="baldur")
    ledger = Ledger()

    @baldur.protected("charge-open", idempotency_key="order_id")
    def charge(order_id: str) -> int:
        return ledger.record(order_id)

    redis_server.freeze()
    assert [charge("o-1"), charge("o-1")] == [1, 2]  # no store, no exactly-once
    assert "'charge-open' runs without its guarantee" in caplog.text
    assert "BALDUR_IDEMPOTENCY_FAIL_OPEN=1" in caplog.text


def test_a_store_lost_while_the_call_ran_keeps_its_result_and_the_key_waits_for_its_lease(
        on_redis: Callable[..., Any], redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    runtime = on_redis()
    caplog.set_level(logging.WARNING, logger="baldur")
    ledger = Ledger()

    @baldur.protected("charge-lost-store", idempotency_key="order_id")
    def charge(order_id: str) -> str:
        ledger.record(order_id)
        if len(ledger.runs) == 1:
            redis_server.freeze()  # Redis goes away while the charge is made
        return "charged"

    assert charge("o-1") == "charged"  # the charge was made: its caller hears so, not StoreUnavailable
    assert "may not be stored for replay" in caplog.text
    redis_server.thaw()
    end = time.monotonic() + DEADLINE
    while runtime.sync.store.down:  # the store probes Redis and returns to it
        assert time.monotonic() < end, "the store never returned to Redis"
        time.sleep(0.02)
    # Unsettled, the claim holds the key until its lease lapses (the renewals stop); or the timed-out
    # command reached Redis after all once it was thawed, and the result is stored. Never a second charge.
    with contextlib.suppress(IdempotencyConflict):
        assert charge("o-1") == "charged"
    assert len(ledger.runs) == 1
