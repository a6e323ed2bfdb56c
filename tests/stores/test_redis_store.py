"""The Redis store against a real, private redis-server (see tests/redis_server.py).

The conformance tests drive the memory store and the Redis store through the
same sequences with the same clock and expect the same decisions: the Lua
scripts must follow ``baldur.policies`` rule for rule.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import pytest
import redis

from baldur.bridges import SyncOverAsync
from baldur.errors import CircuitOpen, ConfigError, Overloaded, Rejected
from baldur.policies.breaker import BUCKETS, Breaker, Outcome, State
from baldur.policies.rate_limit import MICROS, RateDecision, RateLimit
from baldur.stores import redis as redis_store
from baldur.stores._decisions import Admission
from baldur.stores._types import Plan, Ticket
from baldur.stores.memory import MemoryStore
from baldur.stores.redis import RedisStore, _decision
from tests.breaker_cases import CASE_IDS, CASES, RuleCase
from tests.redis_server import RedisServer
from tests.stores.conftest import FakeClock

#: The Redis timeout of the tests that are not about a slow Redis: on a loaded machine the store's
#: 100 ms default is sometimes missed, and a timeout (correctly) falls back to this process's memory.
PATIENT = 2.0


def make_pair(url: str, clock: FakeClock) -> tuple[Any, Any]:
    memory = MemoryStore(clock=clock)
    shared = SyncOverAsync(RedisStore(url, redacted_url=url, prefix="conf", clock=clock, timeout=PATIENT))
    return memory, shared


def attempt(store: Any, plan: Plan, client: str | None = None) -> tuple[str, Ticket | None, float]:
    try:
        ticket = store.admit(plan, client)
    except Rejected as exc:
        return type(exc).__name__, None, round(exc.retry_after, 6)
    rate = None if ticket.rate is None else (ticket.rate.remaining, round(ticket.rate.next_after, 6))
    return f"admitted trial={ticket.trial} rate={rate}", ticket, 0.0


def flush(store: Any) -> None:
    if isinstance(store, SyncOverAsync):
        from baldur.bridges import run_sync

        run_sync(store.store.flush)


def test_the_same_random_sequence_gives_the_same_decisions_on_both_stores(redis_url: str) -> None:
    clock = FakeClock()
    memory, shared = make_pair(redis_url, clock)
    options = Breaker(failure_rate=0.5, min_calls=4, window=10, consecutive_failures=3, open_for=5,
                      half_open_calls=2)
    plan = Plan("conformance", options, RateLimit("20/minute", burst=5), 3)
    rng = random.Random(7)
    held: list[tuple[Ticket, Ticket]] = []
    for step in range(400):
        move = rng.random()
        if move < 0.45:
            a, ticket_m, ra = attempt(memory, plan)
            b, ticket_s, rb = attempt(shared, plan)
            assert (a, ra) == (b, rb), f"step {step}"
            if ticket_m is not None and ticket_s is not None:
                held.append((ticket_m, ticket_s))
        elif move < 0.85 and held:
            ticket_m, ticket_s = held.pop(rng.randrange(len(held)))
            outcome = rng.choice([Outcome.SUCCESS, Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED])
            memory.finish(ticket_m, outcome)
            shared.finish(ticket_s, outcome)
            flush(shared)
        else:
            clock.advance(rng.choice([0.1, 0.5, 1.0, 3.0, 6.0]))
        assert memory.read_breaker(plan.name, options) == shared.read_breaker(plan.name, options), f"step {step}"


@pytest.mark.parametrize("written_behind", [False, True], ids=["flushed", "written-behind"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_failure_rate_is_checked_after_every_outcome_on_both_stores(
        redis_url: str, case: RuleCase, written_behind: bool) -> None:
    clock = FakeClock()
    start = clock.us
    memory, shared = make_pair(redis_url, clock)
    plan = Plan(f"rule-{case.id}", case.options, None, None)
    for at, failed in case.outcomes:
        if written_behind and clock.us != start + round(at * MICROS):
            flush(shared)  # the background flusher sends within FLUSH_SECONDS: before the clock moves on
        clock.us = start + round(at * MICROS)
        for store in (memory, shared):
            assert store.read_breaker(plan.name, case.options) is State.CLOSED, f"opened before {at}"
            store.finish(store.admit(plan), Outcome.FAILURE if failed else Outcome.SUCCESS)
        if not written_behind:
            flush(shared)
    # Written behind, the last successes reach Redis with the next admission, which they refuse.
    for store in (memory, shared):
        with pytest.raises(CircuitOpen):
            store.admit(plan)
        assert store.read_breaker(plan.name, case.options) is State.OPEN


def test_written_behind_successes_are_checked_where_they_reach_min_calls(redis_url: str) -> None:
    clock = FakeClock()
    memory, shared = make_pair(redis_url, clock)
    options = Breaker(failure_rate=0.5, min_calls=10, consecutive_failures=None)
    plan = Plan("batch", options, None, None)
    for store in (memory, shared):
        tickets = [store.admit(plan) for _ in range(12)]
        for ticket in tickets[:5]:
            store.finish(ticket, Outcome.FAILURE)
        # Seven successes: the tenth call makes 5 of 10 (the rule fires); all twelve would be 5 of 12.
        for ticket in tickets[5:]:
            store.finish(ticket, Outcome.SUCCESS)
    assert memory.read_breaker(plan.name, options) is State.OPEN
    with pytest.raises(CircuitOpen):
        shared.admit(plan)  # carries the seven successes to Redis as one batch
    assert shared.read_breaker(plan.name, options) is State.OPEN


def test_the_scripts_get_the_bucket_count_and_admission_codes_from_python(redis_url: str) -> None:
    store = RedisStore(redis_url, redacted_url=redis_url)
    admit = store._scripts["admit"].text
    common = store._scripts["finish"].text
    assert f"local BUCKETS = {BUCKETS}\n" in common
    assert "local BUCKETS = 10" not in common.split("\n", len(Admission) + 1)[-1], "a second definition"
    for admission in Admission:
        assert f"local {admission.name} = {admission.value}\n" in admit
        assert f"return {{{admission.name}," in admit, f"admit.lua never answers {admission.name}"


def test_rate_decisions_match_the_memory_store(redis_url: str) -> None:
    clock = FakeClock(1_700_000_000.0)  # a Redis-like epoch clock
    memory, shared = make_pair(redis_url, clock)
    limit = RateLimit("100/minute")
    rng = random.Random(3)
    for _ in range(300):
        assert memory.rate("client", limit) == shared.rate("client", limit)
        clock.advance(rng.choice([0.0, 0.0, 0.1, 0.6, 2.0]))


def _script_decisions(url: str, store: RedisStore, key: str, limit: RateLimit,
                      instants: list[int]) -> list[RateDecision]:
    """The rate script run at each instant (µs), pipelined: a burst of 100 000 in a second or two."""
    client = redis.Redis.from_url(url)
    script = store._scripts["rate"]
    client.script_load(script.text)
    decisions = []
    for start in range(0, len(instants), 10_000):
        pipe = client.pipeline(transaction=False)
        for now in instants[start:start + 10_000]:
            pipe.evalsha(script.sha, 1, store._key(key, "r"), now, limit.interval_us, limit.tolerance_us)
        decisions += [_decision(reply[:5]) for reply in pipe.execute()]
    client.close()
    return decisions


@pytest.mark.parametrize("spec", ["10000/second", "15000/second", "50000/minute", "100000/day"])
def test_at_an_epoch_clock_both_stores_make_identical_decisions_at_any_rate(redis_url: str, spec: str) -> None:
    """A burst at one instant, then a drain, probes a microsecond either side of each boundary and
    random steps: every decision, remaining, retry_after, next_after and reset_after is identical."""
    limit = RateLimit(spec)
    start = 1_700_000_000_123_457
    rng = random.Random(spec)
    instants = [start] * (limit.quota + 10)
    now = start + limit.interval_us * 3 // 2  # half an interval after the first refill
    for _ in range(2000):
        step = rng.choice([0, 1, limit.interval_us - 1, limit.interval_us, rng.randrange(3 * limit.interval_us)])
        now += step
        instants.append(now)
    now += limit.interval_us * (limit.quota + 1)  # drained: a full burst again, and one call early or late
    instants += [now - 1, now, now]
    memory = MemoryStore(clock=lambda: 0.0)
    expected = []
    for instant in instants:
        memory.clock = lambda instant=instant: instant / MICROS
        expected.append(memory.rate("client", limit))
    store = RedisStore(redis_url, redacted_url=redis_url, prefix="epoch")
    got = _script_decisions(redis_url, store, "client", limit, instants)
    assert sum(d.allowed for d in got[:limit.quota + 10]) == limit.quota
    for i, (mine, theirs) in enumerate(zip(expected, got, strict=True)):
        assert mine == theirs, (i, instants[i] - start, mine, theirs)


def test_a_limit_of_100_admits_exactly_100_at_once(redis_url: str) -> None:
    store = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    plan = Plan("hundred", None, RateLimit("100/hour"), None)
    outcomes = [attempt(store, plan)[0] for _ in range(150)]
    assert sum(o.startswith("admitted") for o in outcomes) == 100
    assert outcomes[100:] == ["RateLimited"] * 50


def test_every_key_has_a_ttl_and_carries_the_prefix_and_a_hash_tag(redis_url: str) -> None:
    store = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, prefix="tt", timeout=PATIENT))
    plan = Plan("keys", Breaker(consecutive_failures=1), RateLimit("5/second"), 2)
    ticket = store.admit(plan, "10.0.0.1")
    store.finish(ticket, Outcome.FAILURE)
    store.rate("web:10.0.0.1", RateLimit("10/minute"))
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.keys("*")]
    assert keys, "nothing was written"
    for key in keys:
        assert key.startswith("tt:{"), key
        assert client.ttl(key) > 0, f"{key} lives forever"
    client.close()


def test_distinct_client_values_are_distinct_keys_and_none_opens_a_hash_tag(redis_url: str) -> None:
    store = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, prefix="esc"))
    limit = RateLimit("1/hour")
    values = ["{bob}", "(bob)", "bob", "%7Bbob%7D", "{", "}{", "web:{x}y"]
    for value in values:
        assert store.rate(value, limit).allowed, value  # each its own bucket: its first call passes
        assert not store.rate(value, limit).allowed, value
    client = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in client.keys("esc:*"))
    client.close()
    assert len(keys) == len(values)
    for key in keys:  # the hash tag is the whole (escaped) value: one "{" and one "}", in order
        assert key.count("{") == 1 and key.count("}") == 1 and key.index("{") < key.index("}"), key


def test_clients_cannot_grow_the_packing_caches_or_make_one_key_stand_for_another(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keys and small arguments are packed once and looked up after: an attacker who rotates
    # client keys (addresses, key_func values) only evicts cache entries, never grows them, and
    # every key still comes out as it would without the cache.
    monkeypatch.setattr(redis_store, "_bulks", {})  # what other tests packed must not decide the order here
    store = RedisStore(redis_url, redacted_url=redis_url, prefix="cache")
    script = store._scripts["rate"]
    for i in range(3 * redis_store.KEYS_CACHED):
        client = f"{{attacker-{i}}}"
        key = store._key("demo", "r", client)
        assert key == f"cache:{{demo}}:r:%7Battacker-{i}%7D"
        assert script.packed([key], ["", 3600, i]).endswith(b"$%d\r\n%d\r\n" % (len(str(i)), i))
        assert len(store._keys) <= redis_store.KEYS_CACHED
        assert len(redis_store._bulks) <= redis_store.BULKS_MAX
    # 62.0 == 62 as a dict key: a float packed first must not make the int go out as "62.0" (EXPIRE
    # refuses it); a float after the int may go out as the int's "63", the same number to Lua.
    assert script.packed(["k"], [61.5]).endswith(b"$4\r\n61.5\r\n")
    assert script.packed(["k"], [62.0]).endswith(b"$4\r\n62.0\r\n")
    assert script.packed(["k"], [62]).endswith(b"$2\r\n62\r\n")
    assert script.packed(["k"], [63]).endswith(b"$2\r\n63\r\n")
    assert script.packed(["k"], [63.0]).endswith(b"$2\r\n63\r\n")
    big = "x" * (redis_store.BULK_MAX_BYTES + 1)  # a stored response, say: packed, never kept
    assert script.packed(["k"], [big]).endswith(b"$%d\r\n%s\r\n" % (len(big), big.encode()))
    assert big not in redis_store._bulks


def test_a_script_flushed_from_redis_is_loaded_again(redis_url: str) -> None:
    store = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    plan = Plan("noscript", Breaker(), None, None)
    store.admit(plan)
    redis.Redis.from_url(redis_url).script_flush()
    store.admit(plan)  # NOSCRIPT → SCRIPT LOAD → EVALSHA


def test_concurrency_leases_are_shared_and_given_back(redis_url: str) -> None:
    one = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    two = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    plan = Plan("pool", None, None, 2)
    first, second = one.admit(plan), two.admit(plan)
    with pytest.raises(Overloaded):
        one.admit(plan)
    two.finish(second, Outcome.SUCCESS)
    third = one.admit(plan)
    one.finish(first, Outcome.SUCCESS)
    one.finish(third, Outcome.SUCCESS)


def test_a_breaker_opened_through_one_process_rejects_in_another(redis_url: str) -> None:
    one = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    two = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    plan = Plan("shared-breaker", Breaker(consecutive_failures=2, open_for=30), None, None)
    for store in (one, two):
        store.finish(store.admit(plan), Outcome.FAILURE)
    with pytest.raises(CircuitOpen) as caught:
        two.admit(plan)
    assert 29 < caught.value.retry_after <= 30
    assert one.read_breaker(plan.name, plan.breaker) is State.OPEN  # type: ignore[arg-type]


def test_written_behind_successes_reach_redis_and_reset_the_failure_streak(redis_url: str) -> None:
    store = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    plan = Plan("streak", Breaker(consecutive_failures=3, failure_rate=None), None, None)
    for _ in range(2):
        store.finish(store.admit(plan), Outcome.FAILURE)
    store.finish(store.admit(plan), Outcome.SUCCESS)  # written behind
    for _ in range(2):
        store.finish(store.admit(plan), Outcome.FAILURE)
    assert store.read_breaker(plan.name, plan.breaker) is State.CLOSED  # type: ignore[arg-type]
    store.finish(store.admit(plan), Outcome.FAILURE)
    assert store.read_breaker(plan.name, plan.breaker) is State.OPEN  # type: ignore[arg-type]


def test_forced_states_are_shared(redis_url: str) -> None:
    one = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    two = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=PATIENT))
    options = Breaker()
    one.force_breaker("forced", options, State.FORCED_OPEN)
    with pytest.raises(CircuitOpen):
        two.admit(Plan("forced", options, None, None))
    one.force_breaker("forced", options, State.CLOSED)
    two.admit(Plan("forced", options, None, None))


def test_a_frozen_redis_costs_one_timeout_then_nothing(redis_server: RedisServer, redis_url: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    timeout = 0.1
    store = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=timeout))
    plan = Plan("frozen", Breaker(), RateLimit("1000/second"), None)
    store.admit(plan)
    caplog.set_level(logging.WARNING, logger="baldur")
    redis_server.freeze()
    try:
        started = time.monotonic()
        store.admit(plan)  # waits one timeout, then falls back to memory
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(20):
            store.admit(plan)  # Redis is known down: nobody waits
        rest = time.monotonic() - started
    finally:
        redis_server.thaw()
    # The first call waits one timeout (allowed ten: it would hang without one); the 20 after it
    # would take at least 20 timeouts if each still waited on Redis, so that is their bound.
    assert first < 1.0 and rest < 20 * timeout
    assert store.store.down
    assert "store.degraded" in caplog.text
    # The prober clears ``down`` and then logs: wait for both, or the log line can come after the check.
    deadline = time.monotonic() + 10
    while (store.store.down or "store.recovered" not in caplog.text) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.store.down, "the store did not recover after Redis came back"
    assert "store.recovered" in caplog.text


def test_an_unparseable_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisStore("redis://user:hunter2@host:notaport/0", redacted_url="redis://user:***@host:notaport/0")
    assert "hunter2" not in str(caught.value)


def test_a_wrong_password_degrades_and_never_logs_the_password(redis_url: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    url = redis_url.replace("redis://", "redis://user:hunter2@")
    store = SyncOverAsync(RedisStore(url, redacted_url=redis_url.replace("redis://", "redis://user:***@"),
                                      timeout=PATIENT))
    caplog.set_level(logging.WARNING, logger="baldur")
    store.admit(Plan("auth", Breaker(), RateLimit("5/second"), None))  # fails open on memory
    assert store.store.down
    assert "hunter2" not in caplog.text
    assert "user:***@" in caplog.text
