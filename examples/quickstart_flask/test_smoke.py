"""Smoke test of the quickstart, with Flask's test client: no server, no Redis.

Run it with ``pytest examples/quickstart_flask/test_smoke.py``.
"""

from collections.abc import Iterator

import pytest
from app import app

import baldur


@pytest.fixture(autouse=True)
def clean_baldur() -> Iterator[None]:
    baldur.reset()  # every test starts with closed breakers and full quotas
    yield
    baldur.reset()


def test_demo_answers() -> None:
    response = app.test_client().get("/demo")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "service": "demo"}


def test_an_open_breaker_answers_503_before_the_view_runs() -> None:
    baldur.breaker("demo").open()
    response = app.test_client().get("/demo")
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    assert response.get_json()["status"] == 503


def test_reset_closes_the_breaker_again() -> None:
    baldur.breaker("demo").open()
    baldur.reset()
    assert app.test_client().get("/demo").status_code == 200
