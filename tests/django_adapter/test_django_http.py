"""The HTTP answers of the Django adapter, for sync, ``async def`` and class-based views, through
Django's WSGI handler (the sync middleware) and its ASGI handler (the async middleware): the same
statuses and headers as the Flask adapter's (tests/adapters/test_flask_http.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _dj_support import IANA, MODES, Site, content, problem_of
from dj_views import KINDS, ran

import baldur
from baldur.adapters import _web
from baldur.policies.breaker import State

pytestmark = pytest.mark.parametrize("mode", MODES)


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    ran.clear()


# -- rate limited: 429 --------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_default_limit_counts_down_then_answers_429(mode: str, kind: str,
                                                        baldur_settings: Callable[..., None]) -> None:
    # The GCRA figures of the Flask table: "3/minute" leaves 2, 1, 0 with t=20, then 429 for 20 s.
    baldur_settings(rate_limit="3/minute")
    site = Site(mode)
    for remaining in (2, 1, 0):
        response = site.get(f"/plain/{kind}")
        assert response.status_code == 200
        assert response["RateLimit-Policy"] == '"default";q=3;w=60'
        assert response["RateLimit"] == f'"default";r={remaining};t=20'
        assert not response.has_header("Retry-After")
    refused = site.get(f"/plain/{kind}")
    body = problem_of(refused, 429)
    assert refused["Retry-After"] == "20"
    assert refused["RateLimit-Policy"] == '"default";q=3;w=60'
    assert refused["RateLimit"] == '"default";r=0;t=20'
    assert body["type"] == IANA + "quota-exceeded"
    assert body["violated-policies"] == ["default"]
    assert body["instance"] == f"/plain/{kind}"
    assert ran["plain"] == 3  # the 429 was answered before the view


@pytest.mark.parametrize("kind", KINDS)
def test_a_route_limit_is_per_client_and_both_policies_are_listed(mode: str, kind: str,
                                                                  baldur_settings: Callable[..., None]) -> None:
    baldur_settings(rate_limit="10/minute", trust_proxy=1)
    site = Site(mode, headers={"X-Forwarded-For": "192.0.2.1"})
    other = Site(mode, headers={"X-Forwarded-For": "192.0.2.9"})
    first = site.get(f"/route/{kind}")
    assert first.status_code == 200
    assert first["RateLimit-Policy"] == f'"default";q=10;w=60, "route-{kind}";q=2;w=60'
    assert first["RateLimit"] == f'"default";r=9;t=6, "route-{kind}";r=1;t=30'
    assert site.get(f"/route/{kind}").status_code == 200
    refused = site.get(f"/route/{kind}")
    body = problem_of(refused, 429)
    assert body["violated-policies"] == [f"route-{kind}"]
    assert refused["Retry-After"] == "30"
    assert refused["RateLimit-Policy"] == f'"default";q=10;w=60, "route-{kind}";q=2;w=60'
    assert other.get(f"/route/{kind}").status_code == 200  # another client has its own quota
    assert ran["route"] == 3


def test_unmatched_routes_spend_no_quota(mode: str, baldur_settings: Callable[..., None]) -> None:
    baldur_settings(rate_limit="1/minute")
    site = Site(mode)
    for _ in range(3):
        assert site.get("/no/such/page").status_code == 404
    assert site.get("/plain/sync").status_code == 200
    assert site.get("/plain/sync").status_code == 429


@pytest.mark.parametrize("kind", KINDS)
def test_an_exempt_view_is_not_limited(mode: str, kind: str, baldur_settings: Callable[..., None]) -> None:
    baldur_settings(rate_limit="1/minute")
    site = Site(mode)
    for _ in range(3):
        response = site.get(f"/healthz/{kind}")
        assert response.status_code == 200
        assert not response.has_header("RateLimit")


def test_exempt_by_url_name(mode: str, baldur_settings: Callable[..., None]) -> None:
    baldur_settings(rate_limit="1/minute", exempt=["plain-async"])
    site = Site(mode)
    assert [site.get("/plain/async").status_code for _ in range(3)] == [200, 200, 200]
    assert [site.get("/plain/sync").status_code for _ in range(2)] == [200, 429]


# -- circuit open: 503 ---------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_an_open_circuit_answers_503_before_the_view(mode: str, kind: str) -> None:
    site = Site(mode)
    assert site.get(f"/guarded/{kind}").status_code == 200
    baldur.breaker(f"guarded-{kind}").open()
    refused = site.get(f"/guarded/{kind}")
    body = problem_of(refused, 503)
    assert refused["Retry-After"] == "30"
    assert body["type"] == IANA + "temporary-reduced-capacity"
    assert ran["guarded"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_failures_open_the_breaker_and_a_4xx_is_no_failure(mode: str, kind: str) -> None:
    site = Site(mode, raise_request_exception=False)
    for _ in range(5):
        assert site.get(f"/missing/{kind}").status_code == 404  # a 4xx: the breaker stays closed
    assert baldur.breaker(f"missing-{kind}").state is State.CLOSED
    assert [site.get(f"/fails/{kind}").status_code for _ in range(3)] == [500, 500, 500]
    assert baldur.breaker(f"fails-{kind}").state is State.OPEN
    problem_of(site.get(f"/fails/{kind}"), 503)
    assert ran["fails"] == 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_5xx_response_is_a_failure(mode: str, kind: str) -> None:
    site = Site(mode)
    assert [site.get(f"/bad-gateway/{kind}").status_code for _ in range(3)] == [502, 502, 502]
    assert baldur.breaker(f"bad-gateway-{kind}").state is State.OPEN


@pytest.mark.parametrize("kind", KINDS)
def test_circuit_open_raised_inside_the_view_is_a_503(mode: str, kind: str) -> None:
    baldur.breaker("downstream").open()
    refused = Site(mode).get(f"/inner/{kind}")
    body = problem_of(refused, 503)
    assert refused["Retry-After"] == "30"
    assert "downstream" in body["detail"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_view_that_overruns_its_timeout_answers_504(mode: str, kind: str) -> None:
    body = problem_of(Site(mode).get(f"/slow/{kind}"), 504)
    assert body["title"] == "Gateway Timeout"


# Closing the broken stream fires Django's request_finished, which closes old database connections:
# once an earlier test has opened the test database, that is database access.
@pytest.mark.django_db
@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_that_breaks_while_sent_is_a_failure_settled_when_closed(mode: str, kind: str) -> None:
    site = Site(mode)
    for _ in range(2):
        response = site.get(f"/stream/{kind}")
        assert response.status_code == 200  # the status left before the body broke
        with pytest.raises(RuntimeError, match="the stream broke"):
            content(response)
    assert baldur.breaker(f"stream-{kind}").state is State.OPEN


# -- load shed: 503 --------------------------------------------------------------

@pytest.mark.parametrize("unit", [1e3, 1e6])
def test_a_request_that_queued_too_long_is_shed(mode: str, unit: float,
                                               baldur_settings: Callable[..., None]) -> None:
    baldur_settings(max_queue_ms=100)
    site = Site(mode)
    waited = f"t={int((time.time() - 5) * unit)}"
    refused = site.get("/plain/sync", headers={"X-Request-Start": waited})
    body = problem_of(refused, 503)
    assert int(refused["Retry-After"]) >= 1
    assert body["type"] == IANA + "temporary-reduced-capacity"
    assert ran["plain"] == 0
    fresh = f"t={int(time.time() * unit)}"
    assert site.get("/healthz/sync", headers={"X-Request-Start": waited}).status_code == 200  # exempt
    assert site.get("/plain/sync", headers={"X-Request-Start": fresh}).status_code in (200, 503)


def test_the_in_flight_ceiling_sheds_with_503(mode: str, baldur_settings: Callable[..., None]) -> None:
    if mode == "asgi":
        pytest.skip("the held request needs a thread of its own: the WSGI handler's")
    baldur_settings(max_concurrency=1)
    site = Site(mode)
    entered, release = threading.Event(), threading.Event()
    import dj_views

    dj_views.gates["hold"] = (entered, release)
    answers: list[Any] = []
    # One client, so one handler and its middleware: the in-flight count is the handler's (the process's).
    holder = threading.Thread(target=lambda: answers.append(site.get("/hold")))
    holder.start()
    try:
        assert entered.wait(10)
        refused = site.get("/plain/sync")
        body = problem_of(refused, 503)
        assert int(refused["Retry-After"]) >= 1
        assert body["detail"].startswith("The server is at capacity")
        assert site.get("/healthz/sync").status_code == 200  # exempt views are never shed
    finally:
        release.set()
        holder.join(10)
    assert answers[0].status_code == 200
    assert site.get("/plain/sync").status_code == 200


def test_a_refusal_is_never_a_500_without_the_middleware(mode: str, settings: Any) -> None:
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "Baldur" not in m]
    baldur.breaker("guarded-sync").open()
    site = Site(mode, raise_request_exception=False)
    assert site.get("/guarded/sync").status_code == 500  # documented: W001 says so


def test_problem_bodies_are_json(mode: str) -> None:
    baldur.breaker("guarded-async").open()
    refused = Site(mode).get("/guarded/async")
    assert json.loads(content(refused))["retry-after"] == 30


# -- the request in progress ------------------------------------------------------

@pytest.mark.django_db  # (closing the stream fires request_finished: see the stream test above)
@pytest.mark.parametrize("kind", KINDS)
def test_no_request_is_in_progress_while_its_streamed_body_is_sent(mode: str, kind: str) -> None:
    """A request's WebCall is the one in progress only while its view runs: a streamed body is
    sent after the view returned, so a protected call made while it is sent is a call of its own
    (and nothing is left in progress in the thread that served it)."""
    assert content(Site(mode).get(f"/sent/{kind}")) == b"no request in progress"
    assert _web.current() is None
