"""The per-client web limit and a protected view's own admission are one store step.

They must still behave as two policies: both in the headers, the right one named
when refused, the view's fallback never answering for the client's limit, and a
request that never reached the view still counted.
"""

from __future__ import annotations

import pytest
from _flask_support import new_app
from flask import request

import baldur
from baldur.adapters.flask import init_flask


def test_a_request_answered_before_the_view_still_counts_against_the_client_limit() -> None:
    app = new_app()
    init_flask(app, rate_limit="2/minute")

    @app.before_request
    def deny() -> tuple[str, int] | None:
        return ("no", 401) if request.headers.get("X-Deny") else None

    @app.get("/v")
    @baldur.protected("combined-v")
    def view() -> str:
        return "ok"

    client = app.test_client()
    assert client.get("/v", headers={"X-Deny": "1"}).status_code == 401
    assert client.get("/v", headers={"X-Deny": "1"}).status_code == 401
    refused = client.get("/v")
    assert refused.status_code == 429
    assert refused.get_json()["violated-policies"] == ["default"]


def test_the_view_fallback_never_answers_for_the_client_limit() -> None:
    app = new_app()
    init_flask(app, rate_limit="1/minute")

    @app.get("/f")
    @baldur.protected("combined-f", breaker=baldur.Breaker(), fallback=lambda exc: ("fallback", 200))
    def view() -> str:
        return "ok"

    client = app.test_client()
    assert client.get("/f").data == b"ok"
    refused = client.get("/f")
    assert refused.status_code == 429
    assert refused.headers["RateLimit-Policy"] == '"default";q=1;w=60'


@pytest.mark.parametrize("forced", [True, False])
def test_a_refusal_by_the_view_still_carries_the_client_limit_headers(forced: bool) -> None:
    app = new_app()
    init_flask(app, rate_limit="5/minute")

    @app.get("/b")
    @baldur.protected("combined-b")
    def view() -> str:
        return "ok"

    if forced:
        baldur.breaker("combined-b").open()
    response = app.test_client().get("/b")
    assert response.status_code == (503 if forced else 200)
    assert response.headers["RateLimit-Policy"] == '"default";q=5;w=60'
    assert response.headers["RateLimit"] == '"default";r=4;t=12'
