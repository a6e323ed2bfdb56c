from __future__ import annotations

from collections.abc import Iterator

import pytest

import baldur


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
