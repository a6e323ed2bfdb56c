"""The Redis store under real faults, in one process: a private redis-server frozen (SIGSTOP),
killed and restarted, out of memory, or refusing an ACL; a fork while down or holding claims.

A late answer is made by freezing Redis (a signal, not a race): the store's budget then runs
out for certain. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from baldur import _idempotency, _runtime
from baldur.bridges import SyncOverAsync, run_sync
from baldur.errors import ConfigError, Overloaded, Rejected
from baldur.policies import idempotency as idempotency_policy
from baldur.policies.breaker import Outcome
from baldur.policies.rate_limit import RateLimit
from baldur.stores import redis as redis_store
from baldur.stores._types import Plan
from baldur.stores.redis import DOWN_AFTER_TIMEOUTS, RedisStore
from tests.redis_server import RedisServer


def poll(check: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {deadline} s")
        time.sleep(0.02)


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, running and configured as usual after the test."""
    yield redis_server
    if redis_server.process is None:
        redis_server.start()
    redis_server.thaw()
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory", 0)
    client.close()


def make_store(url: str, timeout: float = 0.5) -> SyncOverAsync:
    """A store of its own; its log lines name it (the URL's fragment), apart from earlier tests' stores.
    Its budget is longer than production's (a loaded machine may stall 100 ms); the tests that
    make answers late by freezing Redis pass a short one."""
    prefix = f"f-{uuid.uuid4().hex[:8]}"
    return SyncOverAsync(RedisStore(url, redacted_url=f"{url}#{prefix}", prefix=prefix, timeout=timeout))


def lines(caplog: pytest.LogCaptureFixture, store: SyncOverAsync, event: str) -> int:
    return sum(event in r.getMessage() and store.store.redacted_url in r.getMessage() for r in caplog.records)


def limited(spec: str = "100/hour") -> Plan:
    return Plan(f"p-{uuid.uuid4().hex[:8]}", None, RateLimit(spec), None)


def admitted(store: SyncOverAsync, plan: Plan, n: int) -> int:
    count = 0
    for _ in range(n):
        try:
            store.admit(plan)
            count += 1
        except Rejected:
            pass
    return count


def test_one_late_answer_fails_open_for_that_call_only(server: RedisServer) -> None:
    store = make_store(server.url, timeout=0.2)
    plan = limited()
    store.admit(plan)
    server.freeze()
    try:
        ticket = store.admit(plan)  # later than the budget: decided locally, this call only
    finally:
        server.thaw()
    assert ticket.local and not store.store.down
    assert not store.admit(plan).local  # the next call is shared again


def test_late_answers_in_a_row_mark_redis_down_then_the_probe_brings_it_back(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="baldur")
    store = make_store(server.url, timeout=0.1)
    plan = limited()
    store.admit(plan)
    server.freeze()
    try:
        for _ in range(DOWN_AFTER_TIMEOUTS):
            assert store.admit(plan).local
        assert store.store.down
        started = time.monotonic()
        store.admit(plan)  # down: nobody waits any more
        assert time.monotonic() - started < store.store.timeout
    finally:
        server.thaw()
    poll(lambda: not store.store.down, "the probe did not find Redis back")
    assert "3 answers in a row later than 100 ms" in caplog.text


def test_a_refused_connection_marks_down_at_once_and_a_stale_one_is_replaced(server: RedisServer) -> None:
    store = make_store(server.url)
    plan = limited()
    store.admit(plan)
    server.stop()
    server.start()  # same port: the pooled connection is now stale, and nobody noticed
    assert not store.admit(plan).local, "a stale connection was not replaced inside the budget"
    assert not store.store.down
    server.stop()
    try:
        assert store.admit(plan).local
        assert store.store.down
        assert "ConnectionError" in store.store.down_reason
    finally:
        server.start()
    poll(lambda: not store.store.down, "the probe did not find Redis back")


def test_after_recovery_every_loop_renews_its_connections(server: RedisServer) -> None:
    store = make_store(server.url)
    plan = limited("100000/hour")
    barrier = threading.Barrier(4)

    def from_threads() -> list[bool]:
        """Four threads at once, so that four pooled loops (each with its own client) are used."""
        results: list[bool] = []

        def one() -> None:
            barrier.wait(timeout=10)
            results.append(store.admit(plan).local)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        return results

    assert from_threads() == [False] * 4
    server.stop()
    server.start()
    server.stop()  # restarted twice: even one reconnect finds nothing
    try:
        store.admit(plan)
        assert store.store.down
    finally:
        server.start()
    poll(lambda: not store.store.down, "the probe did not find Redis back")
    assert from_threads() == [False] * 4, "a loop kept a connection from before the outage"
    assert not store.store.down


def test_while_degraded_each_process_admits_its_share_of_the_limit(server: RedisServer) -> None:
    store = make_store(server.url)
    store.store.workers = 4  # as gunicorn -w 4 would say
    plan = limited("100/hour")
    store.admit(plan)
    server.stop()
    try:
        assert admitted(store, plan, 60) == 25  # 100 ÷ 4 workers
        assert sum(run_sync(store.store.rate, "web:x", RateLimit("8/minute")).allowed for _ in range(5)) == 2
    finally:
        server.start()


def test_out_of_memory_is_down_steadily_with_one_log_line(server: RedisServer,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """PING works, every write fails: the probe writes too, so the store does not flap."""
    caplog.set_level(logging.WARNING, logger="baldur")
    store = make_store(server.url)
    plan = limited()
    store.admit(plan)
    client = redis.Redis.from_url(server.url)
    client.config_set("maxmemory", 1)  # noeviction: every write is refused with OOM
    try:
        assert client.ping()
        assert store.admit(plan).local and store.store.down
        assert "OutOfMemoryError" in store.store.down_reason or "OOM" in store.store.down_reason
        end = time.monotonic() + 3.0  # six probes
        while time.monotonic() < end:
            assert store.store.down, "the store flapped back while Redis refuses every write"
            store.admit(plan)
            time.sleep(0.05)
    finally:
        client.config_set("maxmemory", 0)
        client.close()
    poll(lambda: not store.store.down, "the probe did not find Redis writable again")
    assert lines(caplog, store, "store.degraded") == 1 and lines(caplog, store, "store.recovered") == 1


def test_an_acl_that_refuses_the_writes_counts_as_down(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    user = f"ro{uuid.uuid4().hex[:6]}"
    client.acl_setuser(user, enabled=True, passwords=["+readonly-pw"], keys=["*"],
                       commands=["+@read", "+@connection", "+@scripting", "+script"])
    try:
        url = server.url.replace("redis://", f"redis://{user}:readonly-pw@")
        store = SyncOverAsync(RedisStore(url, redacted_url=server.url, prefix="acl"))
        assert store.admit(limited()).local
        assert store.store.down and "can't run this command" in store.store.down_reason
        assert "readonly-pw" not in store.store.down_reason
    finally:
        client.acl_deluser(user)
        client.close()


def test_a_concurrency_lease_is_renewed_while_its_call_runs(server: RedisServer) -> None:
    holder, other = make_store(server.url), make_store(server.url)
    other.store.prefix = holder.store.prefix
    holder.store.lease_seconds = 1.5  # renewed every 0.5 s by the background loop
    plan = Plan(f"slot-{uuid.uuid4().hex[:6]}", None, None, 1)
    ticket = holder.admit(plan)
    client = redis.Redis.from_url(server.url)
    key = holder.store._key(plan.name, "c")
    first_expiry = float(client.zscore(key, ticket.lease) or 0)

    def redis_now() -> float:
        seconds, micros = client.time()
        return seconds + micros / 1e6

    # Until well past the first lease's expiry, the slot stays taken.
    poll(lambda: redis_now() > first_expiry + 1.5, "Redis time did not pass the first expiry", deadline=10)
    assert float(client.zscore(key, ticket.lease) or 0) > first_expiry
    with pytest.raises(Overloaded):
        other.admit(plan)
    holder.finish(ticket, Outcome.SUCCESS)
    other.finish(other.admit(plan), Outcome.SUCCESS)
    client.close()


def _in_child(body: Callable[[], bool]) -> bool:
    """Run ``body`` in a forked child; its verdict is the child's exit status."""
    with warnings.catch_warnings():
        # Python 3.12+ warns of forking a threaded process: the parent runs Baldur's loop thread,
        # and a fork after it started (gunicorn --preload) is the case under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        try:
            code = 0 if body() else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_a_child_forked_while_redis_is_down_finds_it_again(server: RedisServer) -> None:
    store = make_store(server.url)
    plan = limited()
    store.store.start()
    server.stop()
    try:
        store.admit(plan)
        assert store.store.down
    finally:
        server.start()

    def child() -> bool:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if not store.store.down and not store.admit(plan).local:
                return True
            time.sleep(0.05)
        return False

    assert _in_child(child)


def test_claims_are_renewed_in_the_parent_after_a_fork_and_in_the_child(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idempotency_policy, "CLAIM_LEASE_SECONDS", 1.5)
    monkeypatch.setattr(redis_store, "CLAIM_LEASE_SECONDS", 1.5)
    monkeypatch.setattr(_idempotency, "CLAIM_LEASE_SECONDS", 1.5)  # renewed every 0.5 s
    runtime = _runtime.init(redis_url=server.url, key_prefix=f"claims-{uuid.uuid4().hex[:6]}",
                            redis_timeout_ms=1000)
    client = redis.Redis.from_url(server.url)

    def outlives_its_lease(key: str) -> bool:
        claim = _idempotency.Claim(runtime, "forked", key, "print")
        claim.begin()
        assert claim.held
        seconds, _ = client.time()
        end = seconds + 4
        while int(client.time()[0]) < end:  # more than two leases
            time.sleep(0.1)
        other = _idempotency.Claim(runtime, "forked", key, "print")
        try:
            other.begin()
        except Rejected:
            claim.abort()
            return True  # still held: a conflict
        return False

    try:
        held = _idempotency.Claim(runtime, "forked", "parent-key", "print")
        held.begin()
        assert _in_child(lambda: outlives_its_lease("child-key")), "the child's claim lapsed"
        with pytest.raises(Rejected):
            _idempotency.Claim(runtime, "forked", "parent-key", "print").begin()
        held.abort()
    finally:
        client.close()
        _runtime.init(redis_url=None, key_prefix="baldur", redis_timeout_ms=100)


def test_a_required_shared_store_that_is_unreachable_refuses_to_start(server: RedisServer) -> None:
    server.stop()
    try:
        with pytest.raises(ConfigError, match=r"BALDUR_REQUIRE_SHARED_STORE.*refusing to start") as caught:
            _runtime.init(redis_url=server.url.replace("redis://", "redis://u:hunter2@"),
                          require_shared_store=True)
    finally:
        server.start()
    assert "hunter2" not in str(caught.value)
    runtime = _runtime.init(redis_url=server.url, require_shared_store=True)
    assert runtime.shared and "hunter2" not in repr(runtime)
    _runtime.init(redis_url=None, require_shared_store=False)


def test_no_repr_shows_the_password(server: RedisServer) -> None:
    runtime = _runtime.init(redis_url=server.url.replace("redis://", "redis://:s3cret-pw@") + "?pass%77ord=pw2")
    try:
        for text in (repr(runtime), repr(runtime.settings), repr(runtime.async_), str(runtime.settings)):
            assert "s3cret-pw" not in text and "pw2" not in text, text
    finally:
        _runtime.init(redis_url=None)


def test_a_flapping_redis_logs_at_most_one_pair_per_damping_period_with_a_count(
        server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from baldur.stores import redis as redis_module

    monkeypatch.setattr(redis_module, "LOG_DAMPING_SECONDS", 3600.0)
    caplog.set_level(logging.WARNING, logger="baldur")
    store = make_store(server.url)
    plan = limited()
    for _ in range(3):  # three outages in a row, each seen and each over
        server.stop()
        try:
            assert store.admit(plan).local and store.store.down
        finally:
            server.start()
        poll(lambda: not store.store.down, "the probe did not find Redis back")
    assert lines(caplog, store, "store.degraded") == 1 and lines(caplog, store, "store.recovered") == 1
    monkeypatch.setattr(redis_module, "LOG_DAMPING_SECONDS", 0.0)
    server.stop()
    try:
        store.admit(plan)
    finally:
        server.start()
    poll(lambda: not store.store.down, "the probe did not find Redis back")
    assert lines(caplog, store, "store.degraded") == 2
    assert any("(4 transitions since the last line)" in r.getMessage() for r in caplog.records)


def test_a_late_answer_for_a_bucket_redis_just_emptied_is_refused_as_redis_would(server: RedisServer) -> None:
    store = make_store(server.url, timeout=0.2)
    plan = limited("3/hour")
    for _ in range(3):
        store.admit(plan)
    with pytest.raises(Rejected):
        store.admit(plan)  # Redis: empty for the next 20 minutes
    server.freeze()
    try:
        with pytest.raises(Rejected) as caught:
            store.admit(plan)  # late: decided here, and not admitted
    finally:
        server.thaw()
    assert not store.store.down and 1190 < caught.value.retry_after <= 1200


def test_an_answer_that_arrived_while_this_process_was_not_running_is_kept(server: RedisServer) -> None:
    """The loop is blocked (as a busy machine would stop the process) while the script is in
    flight and past the budget: the answer waits in the socket, and is used, not thrown away."""
    import asyncio

    store = make_store(server.url, timeout=0.1)
    plan = limited("3/hour")
    store.admit(plan)  # the connection is warm

    async def admit_while_the_loop_stops() -> Any:
        async def stop_the_loop() -> None:
            await asyncio.sleep(0)  # one turn: the script is sent and the admission waits for its answer
            time.sleep(5 * store.store.timeout)

        admission = asyncio.ensure_future(store.store.admit(plan))
        await stop_the_loop()
        return await asyncio.gather(admission, return_exceptions=True)

    [ticket] = run_sync(admit_while_the_loop_stops)
    assert not ticket.local, "decided locally instead of by Redis"
    assert ticket.rate.remaining == 1 and not store.store.down


def test_a_child_that_collects_the_parents_clients_leaves_the_parents_connections_alone(
        server: RedisServer) -> None:
    """The parent's loops share their epoll instance with a child: a client of the parent's
    finalised in the child (while a loop of the child's runs) must not unregister its socket."""
    import asyncio
    import gc

    store = make_store(server.url)
    plan = limited("1000/hour")
    assert not store.admit(plan).local  # this thread's loop has a connection now

    def child() -> bool:
        async def collect() -> None:
            gc.collect()

        asyncio.run(collect())
        return True

    assert _in_child(child)
    assert not store.admit(plan).local, "the parent's connection no longer hears its answers"
