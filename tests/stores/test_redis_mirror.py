"""The mirror of the breakers' states: a closed breaker costs no Redis command per call, and a
change of state made anywhere reaches every process's mirror through pub/sub.

These tests run their own redis-server (so that no other test's store adds commands to the
counts), and poll with a deadline where they wait for a message; no test measures time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from baldur.bridges import SyncOverAsync, run_sync
from baldur.errors import CircuitOpen, RateLimited
from baldur.policies.breaker import Breaker, Outcome, State
from baldur.policies.rate_limit import RateLimit
from baldur.stores import redis as redis_store
from baldur.stores._admin import Forced
from baldur.stores._types import Plan
from baldur.stores.redis import RedisStore
from tests.redis_server import RedisServer, find_binary

DEADLINE = 10.0


def poll(check: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {DEADLINE} s")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    binary = find_binary()
    if binary is None:
        pytest.skip("no redis-server binary found")
    own = RedisServer(binary)
    own.start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    own = redis.Redis.from_url(server.url, socket_timeout=5.0)
    yield own
    own.close()


@pytest.fixture
def prefix() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stores(server: RedisServer, prefix: str) -> Iterator[Callable[[], SyncOverAsync]]:
    """``make()`` starts a store (one per "worker") sharing the test's prefix, and waits until its
    mirror is subscribed; every store is closed after the test."""
    made: list[SyncOverAsync] = []

    def make() -> SyncOverAsync:
        store = RedisStore(server.url, redacted_url=server.url, prefix=prefix, timeout=2.0)
        store.start()
        poll(lambda: store.mirroring, "the mirror subscribed")
        made.append(SyncOverAsync(store))
        return made[-1]

    yield make
    for face in made:
        face.close()


def breaker_plan(**options: object) -> Plan:
    return Plan(f"b-{uuid.uuid4().hex[:8]}", Breaker(**options).inherit(Breaker()), None, None)  # type: ignore[arg-type]


def commands(client: redis.Redis) -> int:
    """Commands Redis has run, the INFO calls that ask this excepted."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def learnt(face: SyncOverAsync, plan: Plan) -> bool:
    assert isinstance(face.store, RedisStore)
    return face.store.admit_without_io(plan) is not None


def test_a_closed_breaker_costs_no_command_per_call(
        stores: Callable[[], SyncOverAsync], client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # Successes travel written behind; held back for the test, so that the count is of admissions.
    monkeypatch.setattr(redis_store, "FLUSH_SECONDS", 3600.0)
    face = stores()
    plan = breaker_plan()
    face.finish(face.admit(plan), Outcome.SUCCESS)  # the first call asks Redis and teaches the mirror
    poll(lambda: learnt(face, plan), "the mirror learnt the breaker")
    before = commands(client)
    for _ in range(500):
        face.finish(face.admit(plan), Outcome.SUCCESS)
    assert commands(client) - before == 0
    assert face.store._pending[plan.breaker_key][1] >= 500  # type: ignore[attr-defined]
    face.store.flush_now()  # type: ignore[attr-defined]
    assert commands(client) - before > 0  # and they reach Redis, in one script call


def test_a_call_with_no_shared_state_costs_no_command(
        stores: Callable[[], SyncOverAsync], client: redis.Redis) -> None:
    face = stores()
    plan = Plan(f"n-{uuid.uuid4().hex[:8]}", None, None, None)
    before = commands(client)
    for _ in range(100):
        face.finish(face.admit(plan), Outcome.FAILURE)
    assert commands(client) - before == 0


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()}


def test_a_limited_call_behind_a_closed_breaker_asks_redis_for_its_limit_alone(
        stores: Callable[[], SyncOverAsync], client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "FLUSH_SECONDS", 3600.0)
    face, peer = stores(), stores()
    plan = Plan(f"l-{uuid.uuid4().hex[:8]}", Breaker(consecutive_failures=3, failure_rate=None).inherit(Breaker()),
                RateLimit("20/hour"), None)
    face.finish(face.admit(plan), Outcome.SUCCESS)  # the first call reads the breaker and teaches the mirror
    assert isinstance(face.store, RedisStore)
    poll(lambda: face.store.mirrored(plan.name) == "closed", "the mirror learnt the breaker")  # type: ignore[union-attr]
    before = command_calls(client)
    admitted = 0
    for _ in range(40):
        try:
            ticket = face.admit(plan)
        except RateLimited:
            continue
        admitted += 1
        face.finish(ticket, Outcome.SUCCESS)
    after = command_calls(client)
    ran = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert admitted == 19  # the limit stays exact: 20 an hour, one spent by the first call
    assert ran.get("evalsha") == 40  # one round trip per call
    assert ran.get("get") == 40 and ran.get("set") == 19  # the limit's TAT, read, and written when spent
    # and nothing else: the breaker's hash is not read, written or expired (INFO is ours; CLIENT
    # is a new connection's greeting)
    assert {name for name, calls in ran.items() if calls} - {"info", "client"} == {"evalsha", "time", "get", "set"}

    # Failures still travel at once (another client, with quota left), and the open reaches every
    # mirror and stops every call.
    for _ in range(3):
        face.finish(face.admit(plan, "another client"), Outcome.FAILURE)
    poll(lambda: peer.store.mirrored(plan.name) == "open", "the open reached the peer")  # type: ignore[attr-defined]
    with pytest.raises(CircuitOpen):
        peer.admit(plan, "a third client")


def test_an_open_made_by_one_process_reaches_the_others_mirror(stores: Callable[[], SyncOverAsync]) -> None:
    opener, peer, other = stores(), stores(), stores()
    plan = breaker_plan(consecutive_failures=3, failure_rate=None)
    for face in (peer, other):
        face.finish(face.admit(plan), Outcome.SUCCESS)
        face.store.flush_now()  # type: ignore[attr-defined]  # (written behind, it could land between the failures)
        poll(lambda face=face: learnt(face, plan), "the mirror learnt the breaker")  # type: ignore[misc]
    for _ in range(3):
        opener.finish(opener.admit(plan), Outcome.FAILURE)
    for face in (opener, peer, other):
        poll(lambda face=face: not learnt(face, plan), "the open reached the mirror")  # type: ignore[misc]
        with pytest.raises(CircuitOpen):
            face.admit(plan)
    # Forced states ride the same way.
    opener.force_breaker(plan.name, plan.breaker, State.FORCED_CLOSED)  # type: ignore[arg-type]
    for face in (opener, peer, other):
        poll(lambda face=face: learnt(face, plan), "the forced close reached the mirror")  # type: ignore[misc]
    opener.force_breaker(plan.name, plan.breaker, State.FORCED_OPEN)  # type: ignore[arg-type]
    for face in (peer, other):
        poll(lambda face=face: not learnt(face, plan), "the forced open reached the mirror")  # type: ignore[misc]
        with pytest.raises(CircuitOpen):
            face.admit(plan)


def test_the_admins_force_and_reset_reach_every_mirror(stores: Callable[[], SyncOverAsync]) -> None:
    admin, peer = stores(), stores()
    plan = breaker_plan()
    assert plan.breaker is not None
    for face in (admin, peer):
        face.finish(face.admit(plan), Outcome.SUCCESS)
        poll(lambda face=face: learnt(face, plan), "the mirror learnt the breaker")  # type: ignore[misc]
    store = admin.store
    assert isinstance(store, RedisStore)
    forced = Forced(State.FORCED_OPEN, "maintenance", "key-1", time.time(), None)
    run_sync(store.admin_force, plan.name, plan.breaker, State.FORCED_OPEN, forced, "forced by the admin")
    for face in (admin, peer):
        poll(lambda face=face: not learnt(face, plan), "the admin's forced open reached the mirror")  # type: ignore[misc]
        with pytest.raises(CircuitOpen):
            face.admit(plan)
    run_sync(store.admin_force, plan.name, plan.breaker, State.CLOSED, None, "reset by the admin")
    for face in (admin, peer):
        poll(lambda face=face: learnt(face, plan), "the admin's reset reached the mirror")  # type: ignore[misc]


def test_no_thread_runs_a_call_once_the_open_has_reached_its_mirror(
        stores: Callable[[], SyncOverAsync]) -> None:
    opener, peer = stores(), stores()
    plan = breaker_plan(consecutive_failures=2, failure_rate=None)
    peer.finish(peer.admit(plan), Outcome.SUCCESS)
    poll(lambda: learnt(peer, plan), "the mirror learnt the breaker")
    reached = threading.Event()
    ran_after: list[int] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            seen = reached.is_set()
            try:
                ticket = peer.admit(plan)
            except CircuitOpen:
                continue
            if seen:
                ran_after.append(1)
            peer.finish(ticket, Outcome.SUCCESS)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        # Failures until the breaker opens: the peer's successes, written behind, may land between
        # two failures and reset their count (consecutive_failures=2), however the threads run.
        for _ in range(1000):
            try:
                ticket = opener.admit(plan)
            except CircuitOpen:
                break
            opener.finish(ticket, Outcome.FAILURE)
        poll(lambda: not learnt(peer, plan), "the open reached the mirror")
        reached.set()
        for _ in range(200):
            with pytest.raises(CircuitOpen):
                peer.admit(plan)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=DEADLINE)
    assert ran_after == []


def test_after_its_subscription_breaks_the_mirror_is_read_again(
        stores: Callable[[], SyncOverAsync], client: redis.Redis, prefix: str) -> None:
    face = stores()
    store = face.store
    assert isinstance(store, RedisStore)
    plan = breaker_plan()
    face.finish(face.admit(plan), Outcome.SUCCESS)
    poll(lambda: learnt(face, plan), "the mirror learnt the breaker")
    # A change the mirror cannot hear (no message: as if published while it was away) ...
    client.hset(f"{prefix}:{{{plan.name}}}:b", "st", "forced_open")
    assert learnt(face, plan)
    generation = store._generation
    # ... then its connection breaks: until it has subscribed again nothing is admitted from it,
    # and after that each breaker is read from Redis again.
    client.client_kill_filter(_type="pubsub")
    poll(lambda: store._generation > generation and store.mirroring, "the mirror subscribed again")
    with pytest.raises(CircuitOpen):
        face.admit(plan)
    assert not learnt(face, plan)
