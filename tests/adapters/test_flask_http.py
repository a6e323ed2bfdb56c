"""The HTTP answers of the Flask adapter (docs/getting-started/flask.md), for sync and ``async def`` views.

Header values are checked exactly. The expected ``RateLimit`` values come from the
GCRA definitions (REFERENCES.md) and the draft's: ``r`` is the quota left after this
request, ``t`` the whole seconds until one more unit of quota becomes available.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _flask_support import DEADLINE, KINDS, add_view, new_app
from flask import Flask, request
from werkzeug.test import TestResponse

import baldur
from baldur.adapters.flask import init_flask

PROBLEM = "application/problem+json"
IANA = "https://iana.org/assignments/http-problem-types#"


def problem_of(response: TestResponse, status: int) -> dict[str, Any]:
    """The RFC 9457 body of ``response``, after checking its media type and the common members."""
    assert response.status_code == status
    assert response.headers["Content-Type"] == PROBLEM
    body = response.get_json()
    assert isinstance(body, dict)
    assert body["status"] == status
    for member in ("type", "title", "detail"):
        assert isinstance(body[member], str) and body[member]
    return body


def counted(calls: list[int], result: Any = "ok") -> Callable[[], Any]:
    def body() -> Any:
        calls.append(1)
        return result

    return body


# -- rate limited: 429 --------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_default_limit_counts_down_then_answers_429(kind: str) -> None:
    # "3/minute": T = 20 s, burst 3, so τ = 40 s. After the 1st request TAT = now + 20:
    # slack τ − 20 = 20 → r = floor(20/20) + 1 = 2, and the unit just spent comes back
    # in t = 20 s. 2nd: slack 0 → r = 1, t = 20. 3rd: r = 0, t = 20. The 4th would need
    # TAT − τ − T = now + 20 > now: refused, retry after 20 s (rounded up), r = 0, t = 20.
    app = new_app()
    init_flask(app, rate_limit="3/minute")
    calls: list[int] = []
    add_view(app, "/r", kind, counted(calls))
    client = app.test_client()
    for remaining in (2, 1, 0):
        response = client.get("/r", buffered=True)
        assert response.status_code == 200
        assert response.headers["RateLimit-Policy"] == '"default";q=3;w=60'
        assert response.headers["RateLimit"] == f'"default";r={remaining};t=20'
        assert "Retry-After" not in response.headers
    refused = client.get("/r", buffered=True)
    body = problem_of(refused, 429)
    assert refused.headers["Retry-After"] == "20"
    assert refused.headers["RateLimit-Policy"] == '"default";q=3;w=60'
    assert refused.headers["RateLimit"] == '"default";r=0;t=20'
    assert body["type"] == IANA + "quota-exceeded"
    assert body["title"] == "Too Many Requests"
    assert body["violated-policies"] == ["default"]
    assert body["instance"] == "/r"
    assert len(calls) == 3  # the 429 was answered before the view


def test_a_quota_that_does_not_divide_its_period_still_counts_exactly() -> None:
    # "100/minute": T = 0.6 s; the first request leaves 99 and the next unit in 0.6 s → t=1.
    app = new_app()
    init_flask(app, rate_limit="100/minute")
    add_view(app, "/r", "sync", lambda: "ok")
    client = app.test_client()
    for remaining in (99, 98, 97):
        response = client.get("/r", buffered=True)
        assert response.headers["RateLimit-Policy"] == '"default";q=100;w=60'
        assert response.headers["RateLimit"] == f'"default";r={remaining};t=1'


@pytest.mark.parametrize("kind", KINDS)
def test_a_route_limit_is_per_client_and_both_policies_are_listed(kind: str) -> None:
    # Route "2/minute": T = 30 s, τ = 30 s. 1st: r=1, t=30; 2nd: r=0, t=30; 3rd: refused,
    # retry after 30 s. The default "3/minute" runs alongside (r = 2, 1, 0 with t = 20).
    app = new_app()
    init_flask(app, rate_limit="3/minute")
    calls: list[int] = []
    add_view(app, "/x", kind, counted(calls), protect=baldur.protected("x", rate_limit="2/minute"))
    client = app.test_client()
    policy = '"default";q=3;w=60, "x";q=2;w=60'

    def get(addr: str) -> TestResponse:
        return client.get("/x", environ_base={"REMOTE_ADDR": addr}, buffered=True)

    first = get("10.0.0.1")
    assert first.status_code == 200
    assert first.headers["RateLimit-Policy"] == policy
    assert first.headers["RateLimit"] == '"default";r=2;t=20, "x";r=1;t=30'
    other = get("10.0.0.2")  # another client: a quota of its own on both policies
    assert other.status_code == 200
    assert other.headers["RateLimit"] == '"default";r=2;t=20, "x";r=1;t=30'
    second = get("10.0.0.1")
    assert second.status_code == 200
    assert second.headers["RateLimit"] == '"default";r=1;t=20, "x";r=0;t=30'
    refused = get("10.0.0.1")
    body = problem_of(refused, 429)
    assert refused.headers["Retry-After"] == "30"
    assert refused.headers["RateLimit-Policy"] == policy
    assert refused.headers["RateLimit"] == '"default";r=0;t=20, "x";r=0;t=30'
    assert body["violated-policies"] == ["x"]  # the default limit admitted this request
    assert get("10.0.0.2").status_code == 200
    assert len(calls) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_a_per_second_route_limit_without_a_default_limit(kind: str) -> None:
    # "2/second": T = 0.5 s, so t rounds up to 1 and w is 1.
    app = new_app()
    init_flask(app)
    add_view(app, "/x", kind, lambda: "ok", protect=baldur.protected("x", rate_limit="2/second"))
    add_view(app, "/free", kind, lambda: "ok")
    client = app.test_client()
    first = client.get("/x", buffered=True)
    assert first.headers["RateLimit-Policy"] == '"x";q=2;w=1'
    assert first.headers["RateLimit"] == '"x";r=1;t=1'
    assert client.get("/x", environ_base={"REMOTE_ADDR": "10.9.9.9"}, buffered=True).status_code == 200
    assert client.get("/x", buffered=True).headers["RateLimit"] == '"x";r=0;t=1'
    refused = client.get("/x", buffered=True)
    problem_of(refused, 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["RateLimit"] == '"x";r=0;t=1'
    free = client.get("/free", buffered=True)  # no limit, no headers
    assert free.status_code == 200
    assert "RateLimit" not in free.headers and "RateLimit-Policy" not in free.headers


# -- load shedding: 503 -----------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_in_flight_ceiling_sheds_with_503(kind: str) -> None:
    app = new_app()
    init_flask(app, max_concurrency=1)
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def block() -> str:
        entered.set()
        assert release.wait(DEADLINE)
        return "done"

    add_view(app, "/block", kind, block)
    add_view(app, "/fast", kind, counted(calls))
    results: list[TestResponse] = []
    worker = threading.Thread(target=lambda: results.append(app.test_client().get("/block", buffered=True)))
    worker.start()
    try:
        assert entered.wait(DEADLINE)
        shed = app.test_client().get("/fast", buffered=True)
        body = problem_of(shed, 503)
        assert shed.headers["Retry-After"] == "1"
        assert body["type"] == IANA + "temporary-reduced-capacity"
        assert body["title"] == "Service Unavailable"
        assert calls == []
    finally:
        release.set()
        worker.join(DEADLINE)
    assert not worker.is_alive()
    assert results[0].status_code == 200 and results[0].data == b"done"
    assert app.test_client().get("/fast", buffered=True).status_code == 200  # the slot came back


def _now_in(unit: str, ago: float) -> str:
    stamp = time.time() - ago
    return {
        "s": f"t={stamp:.3f}",  # nginx's $msec: seconds with a millisecond fraction
        "ms": f"t={int(stamp * 1e3)}",
        "us": f"t={int(stamp * 1e6)}",
        "ns": f"t={int(stamp * 1e9)}",
        "bare-ms": f"{int(stamp * 1e3)}",
    }[unit]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns", "bare-ms"])
def test_a_request_that_queued_too_long_is_shed(kind: str, unit: str) -> None:
    app = new_app()
    init_flask(app)  # BALDUR_MAX_QUEUE_MS defaults to 10 000
    calls: list[int] = []
    add_view(app, "/q", kind, counted(calls), protect=baldur.protected("q"))
    client = app.test_client()
    stale = client.get("/q", headers={"X-Request-Start": _now_in(unit, 30.0)}, buffered=True)
    problem_of(stale, 503)
    assert stale.headers["Retry-After"] == "1"
    fresh = client.get("/q", headers={"X-Request-Start": _now_in(unit, 0.5)}, buffered=True)
    assert fresh.status_code == 200
    assert len(calls) == 1


@pytest.mark.parametrize(
    "header",
    [
        f"t={int((time.time() + 3600) * 1000)}",  # in the future: clock skew
        f"t={int((time.time() - 3 * 86400) * 1000)}",  # days old: not a queue
        "t=1000",  # absurdly old (1970)
        "t=0", "t=-5", "t=", "t=nan", "t=inf", "garbage", "t=12ab", "", "t=1e400", "x" * 5000,
    ],
)
def test_an_implausible_request_start_is_ignored(header: str) -> None:
    app = new_app()
    init_flask(app)
    add_view(app, "/q", "sync", lambda: "ok")
    response = app.test_client().get("/q", headers={"X-Request-Start": header}, buffered=True)
    assert response.status_code == 200


def test_the_queue_threshold_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, fresh_runtime: Callable[[], baldur.Runtime]) -> None:
    monkeypatch.setenv("BALDUR_MAX_QUEUE_MS", "200")
    fresh_runtime()
    app = new_app()
    init_flask(app)
    add_view(app, "/q", "sync", lambda: "ok")
    client = app.test_client()
    assert client.get("/q", headers={"X-Request-Start": _now_in("ms", 5.0)}, buffered=True).status_code == 503
    assert client.get("/q", headers={"X-Request-Start": _now_in("ms", -0.0)}, buffered=True).status_code == 200


# -- circuit open: 503 --------------------------------------------------------------

def _failing(calls: list[int]) -> Callable[[], Any]:
    def body() -> Any:
        calls.append(1)
        raise RuntimeError("backend down")

    return body


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("open_for", "retry_after"), [(30.0, "30"), (7.5, "8")])
def test_an_open_circuit_answers_503_before_the_view(kind: str, open_for: float, retry_after: str) -> None:
    app = new_app()
    init_flask(app)
    calls: list[int] = []
    breaker = baldur.Breaker(consecutive_failures=2, open_for=open_for)
    add_view(app, "/c", kind, _failing(calls), protect=baldur.protected("c", breaker=breaker))
    client = app.test_client()
    assert [client.get("/c", buffered=True).status_code for _ in range(2)] == [500, 500]
    assert baldur.breaker("c").state == "open"
    refused = client.get("/c", buffered=True)
    body = problem_of(refused, 503)
    # The time until half-open, rounded up: open_for minus the few µs since it opened.
    assert refused.headers["Retry-After"] == retry_after
    assert body["type"] == IANA + "temporary-reduced-capacity"
    assert "'c'" in body["detail"]
    assert len(calls) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_forced_open_circuit_answers_503_before_the_view(kind: str) -> None:
    app = new_app()
    init_flask(app)
    calls: list[int] = []
    add_view(app, "/f", kind, counted(calls), protect=baldur.protected("f"))
    baldur.breaker("f").open()
    client = app.test_client()
    refused = client.get("/f", buffered=True)
    problem_of(refused, 503)
    assert refused.headers["Retry-After"] == "30"  # BALDUR_BREAKER_OPEN_SECONDS
    assert calls == []
    baldur.breaker("f").reset()
    assert client.get("/f", buffered=True).status_code == 200


def _nested_app(kind: str) -> tuple[Flask, list[int]]:
    app = new_app()
    init_flask(app)
    calls: list[int] = []

    @baldur.protected("inner")
    def inner() -> str:
        return "inner"

    def body() -> str:
        calls.append(1)
        return inner()

    one_failure = baldur.Breaker(consecutive_failures=1)
    add_view(app, "/outer", kind, body, protect=baldur.protected("outer", breaker=one_failure))
    return app, calls


@pytest.mark.parametrize("kind", KINDS)
def test_circuit_open_raised_inside_the_view_is_a_503_and_not_the_views_failure(kind: str) -> None:
    app, calls = _nested_app(kind)
    baldur.breaker("inner").open()
    client = app.test_client()
    for _ in range(3):
        response = client.get("/outer", buffered=True)
        body = problem_of(response, 503)
        assert response.headers["Retry-After"] == "30"
        assert "'inner'" in body["detail"]
    assert len(calls) == 3  # the view ran each time: its own breaker never opened
    assert baldur.breaker("outer").state == "closed"
    baldur.breaker("inner").reset()
    assert client.get("/outer", buffered=True).data == b"inner"


# -- timeout: 504 ---------------------------------------------------------------------

def test_an_async_view_that_overruns_its_timeout_answers_504() -> None:
    app = new_app()
    init_flask(app)
    finished: list[int] = []

    @baldur.protected("slow", timeout=0.05, breaker=baldur.Breaker(consecutive_failures=2))
    async def slow() -> str:
        await asyncio.sleep(1)
        finished.append(1)
        return "late"

    app.add_url_rule("/slow", view_func=slow)
    client = app.test_client()
    response = client.get("/slow", buffered=True)
    body = problem_of(response, 504)
    assert body["title"] == "Gateway Timeout"
    assert "Retry-After" not in response.headers
    assert finished == []  # cancelled, not waited for
    # A timeout is a failure of the view: the second one opens the breaker.
    problem_of(client.get("/slow", buffered=True), 504)
    assert baldur.breaker("slow").state == "open"
    problem_of(client.get("/slow", buffered=True), 503)


def test_a_sync_view_that_overruns_its_timeout_answers_504() -> None:
    app = new_app()
    init_flask(app)
    never = threading.Event()

    @baldur.protected("slow-sync", timeout=0.01)
    def slow_sync() -> str:
        never.wait(0.1)  # the view's own work: outlasts its timeout, then returns late
        return "late"

    app.add_url_rule("/slow-sync", view_func=slow_sync)
    response = app.test_client().get("/slow-sync", buffered=True)
    problem_of(response, 504)
    assert response.data.find(b"late") == -1


@pytest.mark.parametrize("kind", KINDS)
def test_a_route_concurrency_limit_sheds_that_route_only(kind: str) -> None:
    app = new_app()
    init_flask(app)
    entered, release = threading.Event(), threading.Event()

    def block() -> str:
        if request.args.get("block"):
            entered.set()
            assert release.wait(DEADLINE)
        return "done"

    add_view(app, "/one", kind, block, protect=baldur.protected("one-at-a-time", max_concurrency=1))
    add_view(app, "/other", kind, lambda: "other")
    results: list[TestResponse] = []
    worker = threading.Thread(
        target=lambda: results.append(app.test_client().get("/one?block=1", buffered=True)))
    worker.start()
    try:
        assert entered.wait(DEADLINE)
        shed = app.test_client().get("/one", buffered=True)
        body = problem_of(shed, 503)
        assert shed.headers["Retry-After"] == "1"
        assert body["type"] == IANA + "temporary-reduced-capacity"
        assert app.test_client().get("/other", buffered=True).status_code == 200
    finally:
        release.set()
        worker.join(DEADLINE)
    assert not worker.is_alive()
    assert results[0].status_code == 200
    assert app.test_client().get("/one", buffered=True).status_code == 200
