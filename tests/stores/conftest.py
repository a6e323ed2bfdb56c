"""What the store tests share: an emptied private Redis, and a clock both stores read."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from baldur.policies.rate_limit import MICROS
from tests.redis_server import RedisServer


class FakeClock:
    """Seconds as the stores read them, kept in integer microseconds: both stores then see one instant
    (Redis receives the microseconds; a float of seconds since the epoch would not round-trip)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.us = round(start * MICROS)

    def __call__(self) -> float:
        return self.us / MICROS

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * MICROS)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, emptied before and after the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()
