"""Idempotency claims on both stores: the memory store and the Lua scripts of the Redis
store (a real, private redis-server) give the same answers to the same random sequence,
with the same clock; and every Redis record expires on its own."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from baldur.bridges import SyncOverAsync
from baldur.policies.idempotency import CLAIM_LEASE_SECONDS, Verdict
from baldur.stores.memory import MemoryStore
from baldur.stores.redis import RedisStore
from tests.redis_server import RedisServer


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix(redis_server: RedisServer) -> Iterator[str]:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_server.url)
    for key in client.scan_iter(match=f"{name}:*"):
        client.unlink(key)
    client.close()


def both(url: str, prefix: str, clock: FakeClock) -> tuple[MemoryStore, Any]:
    # (a generous timeout: a loaded test machine must not make Redis look down)
    return MemoryStore(clock=clock), SyncOverAsync(RedisStore(url, redacted_url=url, prefix=prefix, clock=clock,
                                                              timeout=2.0))


@pytest.mark.parametrize("seed", range(4))
def test_the_same_random_sequence_gives_the_same_answers_on_both_stores(
        redis_server: RedisServer, prefix: str, seed: int) -> None:
    clock = FakeClock()
    stores = both(redis_server.url, prefix, clock)
    rng = random.Random(seed)
    tokens: list[tuple[str, str]] = []
    steps = []
    for i in range(300):
        action = rng.choice(["begin", "begin", "complete", "renew", "abort", "advance"])
        key = rng.choice(["k1", "k2", "k3"])
        if action == "advance":
            clock.now += rng.choice([0.0, 0.25, 1.0, CLAIM_LEASE_SECONDS / 3, CLAIM_LEASE_SECONDS, 50.0])
            continue
        if action == "begin":
            token = f"t{i}"
            tokens.append((key, token))
            fingerprint = rng.choice(["fp-a", "fp-b"])
            answers = [store.idempotency_begin(key, fingerprint, token) for store in stores]
        else:
            key, token = rng.choice(tokens) if tokens and rng.random() < 0.9 else (key, "stranger")
            if action == "complete":
                result = f'{{"n": {i}}}'
                answers = [store.idempotency_complete(key, token, result, 60.0) for store in stores]
            elif action == "renew":
                answers = [store.idempotency_renew(key, token) for store in stores]
            else:
                answers = [store.idempotency_abort(key, token) for store in stores]
                # (abort says nothing; the next begin shows whether the claim went)
        steps.append((action, key, answers[0]))
        assert answers[0] == answers[1], (seed, i, action, key, steps[-10:])
    seen = {answer.verdict for action, _, answer in steps if action == "begin"}
    assert seen == set(Verdict), seen  # the sequence reached every verdict


def test_every_redis_record_carries_the_prefix_and_expires_on_its_own(
        redis_server: RedisServer, prefix: str) -> None:
    clock = FakeClock()
    _, store = both(redis_server.url, prefix, clock)
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert store.idempotency_begin("http:order-42", "fp", "t1").verdict is Verdict.RUN
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        assert len(keys) == 1
        # Running: the record outlives its lease by a second at most, so a dead worker's claim goes.
        assert CLAIM_LEASE_SECONDS * 1000 < client.pttl(keys[0]) <= CLAIM_LEASE_SECONDS * 1000 + 1000
        assert store.idempotency_complete("http:order-42", "t1", '{"r": 1}', 3600.0)
        assert 3600_000 < client.pttl(keys[0]) <= 3601_000
        start = store.idempotency_begin("http:order-42", "fp", "t2")
        assert (start.verdict, start.result) == (Verdict.REPLAY, '{"r": 1}')
        # The user's key never appears in Redis in clear (it is hashed into the record's name).
        assert b"order-42" not in keys[0]
    finally:
        client.close()
