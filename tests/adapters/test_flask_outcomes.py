"""How a protected view's request ends for its breaker, and that every in-flight slot
comes back, however the request ends (docs/getting-started/flask.md, after_request/teardown)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from _flask_support import KINDS, add_view, new_app
from flask import Flask, Response, abort, request, stream_with_context

import baldur
from baldur.adapters.flask import init_flask

TWO = baldur.Breaker(consecutive_failures=2, open_for=30)


def _app_with(kind: str, body: Callable[[], Any], *, breaker: baldur.Breaker = TWO, **options: Any) -> Flask:
    app = new_app()
    init_flask(app, **options)
    add_view(app, "/v", kind, body, protect=baldur.protected("v", breaker=breaker), methods=("GET", "POST"))
    return app


def _statuses(app: Flask, n: int, method: str = "GET") -> list[int]:
    client = app.test_client()
    return [client.open("/v", method=method, buffered=True).status_code for _ in range(n)]


# -- failures and non-failures ----------------------------------------------------

def _raise() -> Any:
    raise RuntimeError("backend down")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (_raise, 500),
        (lambda: ("server error", 500), 500),
        (lambda: ("unavailable", 503), 503),
        (lambda: Response("bad gateway", status=502), 502),
        (lambda: abort(500), 500),
        (lambda: abort(503), 503),
    ],
    ids=["raises", "returns-500", "returns-503", "response-502", "abort-500", "abort-503"],
)
def test_an_exception_or_a_5xx_is_a_failure(kind: str, body: Callable[[], Any], status: int) -> None:
    app = _app_with(kind, body)
    assert _statuses(app, 3) == [status, status, 503]  # consecutive_failures=2, then open
    assert baldur.breaker("v").state == "open"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("body", "status"),
    [(_raise, 500), (lambda: ("server error", 500), 500), (lambda: abort(503), 503)],
    ids=["raises", "returns-500", "abort-503"],
)
def test_a_view_on_the_fast_lane_counts_its_failures_too(kind: str, body: Callable[[], Any], status: int) -> None:
    """After a success the view is admitted on the fast lane (no store step): its failures
    still reach the breaker when the response is sent."""
    failing = False

    def view() -> Any:
        return body() if failing else "ok"

    app = _app_with(kind, view)
    assert _statuses(app, 3) == [200, 200, 200]
    protection = app.view_functions["/v"].__baldur__
    assert protection.lane is not None
    failing = True
    assert _statuses(app, 3) == [status, status, 503]
    assert baldur.breaker("v").state == "open"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (lambda: ("missing", 404), 404),
        (lambda: abort(404), 404),
        (lambda: abort(400), 400),
        (lambda: abort(403), 403),
        (lambda: Response("conflict", status=409), 409),
        (lambda: ("slow down", 429), 429),
    ],
    ids=["returns-404", "abort-404", "abort-400", "abort-403", "response-409", "returns-429"],
)
def test_a_4xx_is_not_a_failure(kind: str, body: Callable[[], Any], status: int) -> None:
    app = _app_with(kind, body, breaker=baldur.Breaker(consecutive_failures=1, failure_rate=None))
    assert _statuses(app, 5) == [status] * 5
    assert baldur.breaker("v").state == "closed"


@pytest.mark.parametrize("kind", KINDS)
def test_a_4xx_between_failures_resets_the_consecutive_count(kind: str) -> None:
    def body() -> Any:
        return ("fine", 404) if request.method == "POST" else _raise()

    app = _app_with(kind, body)
    client = app.test_client()
    codes = [client.open("/v", method=m, buffered=True).status_code for m in ("GET", "POST", "GET", "POST")]
    assert codes == [500, 404, 500, 404]
    assert baldur.breaker("v").state == "closed"


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_that_never_reaches_the_view_is_not_an_outcome(kind: str) -> None:
    calls: list[int] = []

    def body() -> Any:
        calls.append(1)
        return _raise()

    app = _app_with(kind, body)

    @app.before_request
    def deny() -> Any:  # registered after init_flask: runs after Baldur admitted the view
        if request.headers.get("X-Deny"):
            abort(401)
        return None

    client = app.test_client()
    assert client.get("/v", buffered=True).status_code == 500
    # Neither an automatic OPTIONS answer nor a later hook's 401 ran the view: they say
    # nothing about it and must not reset its count of consecutive failures.
    assert client.options("/v", buffered=True).status_code == 200
    assert client.get("/v", headers={"X-Deny": "1"}, buffered=True).status_code == 401
    assert client.get("/v", buffered=True).status_code == 500
    assert baldur.breaker("v").state == "open"
    assert len(calls) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_fallback_answers_for_a_failed_view_which_still_counts(kind: str) -> None:
    seen: list[str] = []

    def fallback(exc: Exception) -> Any:
        seen.append(type(exc).__name__)
        return {"fallback": True}, 200

    async def async_fallback(exc: Exception) -> Any:
        return fallback(exc)

    app = new_app()
    init_flask(app)
    add_view(app, "/v", kind, _raise,
             protect=baldur.protected("v", breaker=TWO, fallback=fallback if kind == "sync" else async_fallback))
    client = app.test_client()
    for _ in range(3):
        response = client.get("/v", buffered=True)
        assert response.status_code == 200
        assert response.get_json() == {"fallback": True}
    # Two failures opened the breaker; the third request was refused before the view,
    # and the view's fallback answered that refusal too.
    assert seen == ["RuntimeError", "RuntimeError", "CircuitOpen"]
    assert baldur.breaker("v").state == "open"


@pytest.mark.parametrize("kind", KINDS)
def test_a_refusal_inside_the_view_answered_by_its_fallback_is_not_its_failure(kind: str) -> None:
    @baldur.protected("dependency")
    def dependency() -> str:
        return "fresh"

    def fallback(exc: Exception) -> Any:
        return "stale"

    async def async_fallback(exc: Exception) -> Any:
        return "stale"

    app = new_app()
    init_flask(app)
    add_view(app, "/v", kind, dependency,
             protect=baldur.protected("v", breaker=baldur.Breaker(consecutive_failures=1),
                                      fallback=fallback if kind == "sync" else async_fallback))
    baldur.breaker("dependency").open()
    client = app.test_client()
    assert [client.get("/v", buffered=True).data for _ in range(3)] == [b"stale"] * 3
    assert baldur.breaker("v").state == "closed"


# -- the in-flight slot always comes back ---------------------------------------------

def _ceiling_app(kind: str, body: Callable[[], Any]) -> Flask:
    app = _app_with(kind, body, breaker=baldur.Breaker(consecutive_failures=1), max_concurrency=1)
    add_view(app, "/ok", kind, lambda: "ok")
    return app


def _admits(app: Flask) -> bool:
    return app.test_client().get("/ok", buffered=True).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
def test_the_slot_comes_back_when_the_view_raises(kind: str) -> None:
    app = _ceiling_app(kind, _raise)
    assert _statuses(app, 1) == [500]
    assert _admits(app)
    assert _admits(app)


@pytest.mark.parametrize("kind", KINDS)
def test_the_slot_comes_back_when_the_view_raises_and_exceptions_propagate(kind: str) -> None:
    app = _ceiling_app(kind, _raise)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="backend down"):
        app.test_client().get("/v", buffered=True)
    assert _admits(app)
    assert baldur.breaker("v").state == "open"


@pytest.mark.parametrize("propagate", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_the_slot_comes_back_when_an_after_request_hook_raises(kind: str, propagate: bool) -> None:
    app = _ceiling_app(kind, lambda: "ok")
    app.config["PROPAGATE_EXCEPTIONS"] = propagate

    @app.after_request
    def broken(response: Response) -> Response:
        if request.path == "/v":
            raise LookupError("after_request failed")
        return response

    client = app.test_client()
    if propagate:
        with pytest.raises(LookupError):
            client.get("/v", buffered=True)
    else:
        assert client.get("/v", buffered=True).status_code == 500
    assert _admits(app)
    assert _admits(app)


def _stream_app(kind: str, closed: list[str]) -> Flask:
    app = new_app()
    init_flask(app, max_concurrency=1)

    def body() -> Response:
        def chunks() -> Iterator[str]:
            try:
                for i in range(1000):
                    yield f"chunk {i} of {request.path}\n"  # stream_with_context keeps the request
            finally:
                closed.append("generator closed")

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    add_view(app, "/stream", kind, body,
             protect=baldur.protected("stream", breaker=baldur.Breaker(consecutive_failures=1)))
    add_view(app, "/ok", kind, lambda: "ok")
    return app


@pytest.mark.parametrize("kind", KINDS)
def test_the_slot_comes_back_when_the_client_closes_a_stream_early(kind: str) -> None:
    closed: list[str] = []
    app = _stream_app(kind, closed)
    response = app.test_client().get("/stream", buffered=False)
    chunks = iter(response.response)
    assert next(chunks) == b"chunk 0 of /stream\n"
    assert app.test_client().get("/ok", buffered=True).status_code == 503  # the stream holds the slot
    response.close()
    assert closed == ["generator closed"]
    assert _admits(app)
    # A client that went away is not a failure of the view.
    assert baldur.breaker("stream").state == "closed"
    full = app.test_client().get("/stream", buffered=True)
    assert full.status_code == 200 and full.data.count(b"\n") == 1000


@pytest.mark.parametrize("kind", KINDS)
def test_no_request_is_in_progress_while_its_streamed_body_is_sent(kind: str) -> None:
    """As under Django: the request's WebCall is the one in progress only while the app handles
    it; a body streamed after the view returned (even with Flask's request context kept) is
    sent with no request in progress, so a protected call made then is a call of its own."""
    from baldur.adapters import _web

    app = new_app()
    init_flask(app)

    def body() -> Response:
        def chunks() -> Iterator[str]:
            yield "in progress" if _web.current() is not None else "no request in progress"

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    add_view(app, "/sent", kind, body, protect=baldur.protected("sent"))
    assert app.test_client().get("/sent", buffered=True).data == b"no request in progress"
    assert _web.current() is None


def _generator_middleware(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterator[bytes]]:
    """An outer WSGI middleware written as a generator (a common pattern): when its
    consumer closes it early, the inner body sees GeneratorExit before its close()."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        body = wsgi_app(environ, start_response)
        try:
            yield from body
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return middleware


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_closed_early_through_a_generator_middleware_is_not_a_failure(kind: str) -> None:
    closed: list[str] = []
    app = _stream_app(kind, closed)
    app.wsgi_app = _generator_middleware(app.wsgi_app)  # type: ignore[method-assign]
    for _ in range(3):
        response = app.test_client().get("/stream", buffered=False)
        assert next(iter(response.response)).startswith(b"chunk 0")
        response.close()
    assert closed == ["generator closed"] * 3
    assert baldur.breaker("stream").state == "closed"
    assert _admits(app)


@pytest.mark.parametrize("kind", KINDS)
def test_a_response_dropped_unread_is_settled_as_a_success(kind: str) -> None:
    # The most common test-client idiom reads the status and drops the response unread.
    app = _ceiling_app(kind, lambda: {"status": "ok"})
    client = app.test_client()
    gc.collect()
    assert [client.get("/v").status_code for _ in range(8)] == [200] * 8
    assert baldur.breaker("v").state == "closed"
    assert _admits(app)


@pytest.mark.parametrize("kind", KINDS)
def test_the_slot_comes_back_after_baldurs_own_refusals(kind: str) -> None:
    app = _app_with(kind, _raise, breaker=baldur.Breaker(consecutive_failures=1),
                    max_concurrency=1, rate_limit="2/minute")
    add_view(app, "/ok", kind, lambda: "ok")
    client = app.test_client()
    assert client.get("/v", buffered=True).status_code == 500
    assert client.get("/v", buffered=True).status_code == 503  # the breaker opened
    assert client.get("/v", buffered=True).status_code == 429  # the default limit is spent
    assert app.test_client().get("/ok", environ_base={"REMOTE_ADDR": "10.1.1.1"}, buffered=True).status_code == 200


def test_the_slot_comes_back_when_key_func_raises() -> None:
    def broken_key(req: Any) -> str:
        if req.path == "/v":
            raise ZeroDivisionError("a bug of the key function")
        return "anyone"

    app = _app_with("sync", lambda: "ok", max_concurrency=1, rate_limit="100/minute", key_func=broken_key)
    add_view(app, "/ok", "sync", lambda: "ok")
    assert _statuses(app, 2) == [500, 500]  # the application's own bug, answered as such
    assert _admits(app)


@pytest.mark.parametrize("kind", KINDS)
def test_a_limited_view_on_the_fast_lane_spends_its_limit_alone_and_still_counts_failures(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the per-client limit on, a view whose breaker reads closed is admitted by the limit's
    one step (``rate``) and the lane: no ticket, no ``admit`` or ``finish``. The limit stays exact,
    its refusal keeps its headers, and the view's failures still open the breaker."""
    from baldur.stores.memory import MemoryStore

    asked: list[str] = []
    for operation in ("admit", "finish", "rate"):
        real = getattr(MemoryStore, operation)

        def counted(self: MemoryStore, *args: Any, _real: Any = real, _name: str = operation) -> Any:
            asked.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(MemoryStore, operation, counted)
    failing = False

    def view() -> Any:
        return _raise() if failing else "ok"

    app = _app_with(kind, view, rate_limit="8/hour")
    client = app.test_client()
    assert client.get("/v").status_code == 200  # the first call takes the full path, then the lane
    asked.clear()
    answers = [client.get("/v") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert asked == ["rate"] * 3
    assert answers[-1].headers["RateLimit"].startswith('"default";r=4;')
    failing = True
    # Two failures open the breaker; its refusals spend the limit too (the limit is asked first).
    assert [client.get("/v").status_code for _ in range(4)] == [500, 500, 503, 503]
    assert baldur.breaker("v").state == "open"
    refused = client.get("/v")
    assert refused.status_code == 429
    assert refused.headers["RateLimit"].startswith('"default";r=0;')
    assert refused.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_success_of_a_view_counts_as_a_failure(kind: str) -> None:
    """A breaker that times slow calls keeps its clock on the view (the view's call is timed,
    not stood in for by the request): two answers slower than ``slow_call`` open it."""
    def view() -> Any:
        time.sleep(0.03)  # always longer than slow_call: the sleep lasts at least this long
        return "ok"

    slow = baldur.Breaker(consecutive_failures=2, failure_rate=None, slow_call=0.01, open_for=30)
    app = _app_with(kind, view, breaker=slow)
    assert _statuses(app, 3) == [200, 200, 503]
    assert baldur.breaker("v").state == "open"


# -- finding the request's WebCall ---------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_flask_request_inside_another_request_is_found_during_its_view_and_restores_it(kind: str) -> None:
    """A Flask app called from within another adapter's request (mounted under Django, or one Flask
    app dispatching to another): its view, sync or async, finds its own request, and the outer one
    is found again once the Flask app has answered, even when its view raised."""
    from baldur.adapters import _web

    seen: list[object] = []

    def view() -> str:
        seen.append(_web.current())
        if len(seen) == 2:
            raise RuntimeError("the view failed")
        return "ok"

    app = _app_with(kind, view)
    outer = _web.WebCall()
    token = _web.web_call.set(outer)
    try:
        assert _statuses(app, 2) == [200, 500]
        assert _web.current() is outer
    finally:
        _web.web_call.reset(token)
    assert len(seen) == 2 and all(type(call).__name__ == "_Request" for call in seen)
    assert seen[0] is not seen[1]  # each request its own
    assert _web.current() is None  # outside any request
