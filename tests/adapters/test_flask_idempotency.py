"""``Idempotency-Key`` on Flask (docs/idempotency.md), through the test client.

The first request with a key runs; a retry gets the stored response byte for byte with
``Idempotent-Replayed: true`` (2xx, 4xx and 5xx alike, never ``Set-Cookie``); a duplicate
while the first runs gets 409 with ``Retry-After``; the key with another payload 422; a
malformed key 400. Concurrency is arranged with threading events, never with sleeps.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _flask_support import DEADLINE, KINDS, add_view, new_app
from flask import Flask, Response, abort, jsonify, request, send_file, stream_with_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import TestResponse

import baldur
from baldur import _runtime
from baldur.adapters.flask import init_flask
from baldur.policies.idempotency import CLAIM_LEASE_SECONDS

PROBLEM = "application/problem+json"
FRESH = Callable[[], _runtime.Runtime]


def problem_of(response: TestResponse, status: int) -> dict[str, Any]:
    """The RFC 9457 body of ``response``, after checking its media type and the common members."""
    assert response.status_code == status, response.data
    assert response.headers["Content-Type"] == PROBLEM
    body = response.get_json()
    assert isinstance(body, dict)
    assert body["status"] == status
    for member in ("type", "title", "detail"):
        assert isinstance(body[member], str) and body[member]
    return body


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def replayed(response: TestResponse) -> bool:
    return response.headers.get("Idempotent-Replayed") == "true"


def comparable(response: TestResponse) -> list[tuple[str, str]]:
    """The headers a replay must repeat: all but the cookie and our marker, by name (the order of
    fields with different names carries no meaning; of fields with the same name it does)."""
    headers = [(k, v) for k, v in response.headers.items() if k not in ("Set-Cookie", "Idempotent-Replayed")]
    return sorted(headers, key=lambda item: item[0].lower())


class Charges:
    """An app whose ``POST``/``PATCH``/``PUT``/``GET /charges`` creates a numbered charge (201,
    a cookie, a custom header, a repeated header), counting each run of the view."""

    def __init__(self, kind: str = "sync", config: dict[str, str] | None = None, **options: Any) -> None:
        self.app = new_app()
        self.app.config.update(config or {})
        init_flask(self.app, **options)
        self.runs: list[bytes] = []
        add_view(self.app, "/charges", kind, self.charge, methods=("GET", "POST", "PATCH", "PUT"))
        add_view(self.app, "/charges/<int:n>", kind, self.charge, methods=("POST",))
        add_view(self.app, "/refunds", kind, self.charge, methods=("POST",))

    def charge(self) -> Response:
        self.runs.append(request.get_data())
        response = jsonify({"charge": len(self.runs), "body": request.get_data(as_text=True)})
        response.status_code = 201
        response.headers["X-Charge-Id"] = f"ch_{len(self.runs)}"
        response.headers.add("Link", "</a>; rel=a")
        response.headers.add("Link", "</b>; rel=b")
        response.set_cookie("session", f"s{len(self.runs)}")
        return response

    def client(self, remote_addr: str = "127.0.0.1") -> Any:
        # No cookie jar: the view's session cookie would change the retry's identity (an API
        # client's retry after a lost response never received that cookie anyway).
        client = self.app.test_client(use_cookies=False)
        client.environ_base["REMOTE_ADDR"] = remote_addr
        return client


@pytest.fixture(params=KINDS)
def charges(request: pytest.FixtureRequest) -> Charges:
    return Charges(request.param)


# -- first run and replay ------------------------------------------------------


def test_the_first_request_runs_and_a_retry_is_replayed_byte_for_byte(charges: Charges) -> None:
    client = charges.client()
    first = client.post("/charges", json={"amount": 10}, headers=key("order-1"))
    assert first.status_code == 201
    assert not replayed(first)
    assert first.get_json() == {"charge": 1, "body": '{"amount": 10}'}
    assert "session=s1" in first.headers["Set-Cookie"]

    for _ in range(3):
        retry = client.post("/charges", json={"amount": 10}, headers=key("order-1"))
        assert retry.status_code == 201
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.data == first.data
        assert comparable(retry) == comparable(first)
        assert retry.headers.getlist("Link") == ["</a>; rel=a", "</b>; rel=b"]
        assert "Set-Cookie" not in retry.headers  # a credential is never handed to whoever retries
    assert len(charges.runs) == 1


def test_patch_is_handled_like_post(charges: Charges) -> None:
    client = charges.client()
    first = client.patch("/charges", data=b"x", headers=key("p-1"))
    retry = client.patch("/charges", data=b"x", headers=key("p-1"))
    assert (first.status_code, replayed(first), replayed(retry), retry.data == first.data) == (201, False, True, True)
    assert len(charges.runs) == 1


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_other_methods_are_never_idempotency_handled(charges: Charges, method: str) -> None:
    client = charges.client()
    answers = [client.open("/charges", method=method, headers=key("k-1")) for _ in range(2)]
    answers.append(client.open("/charges", method=method, headers=key('"not terminated')))
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert not any(replayed(a) for a in answers)
    assert len(charges.runs) == 3


def test_requests_without_a_key_are_never_replayed(charges: Charges) -> None:
    client = charges.client()
    assert [client.post("/charges", data=b"x").get_json()["charge"] for _ in range(2)] == [1, 2]


def test_the_quoted_and_the_bare_spelling_are_the_same_key(charges: Charges) -> None:
    client = charges.client()
    assert client.post("/charges", data=b"x", headers=key("abc-123")).status_code == 201
    assert replayed(client.post("/charges", data=b"x", headers=key('"abc-123"')))
    assert replayed(client.post("/charges", data=b"x", headers=key(' "abc-123"\t')))


def _status_app(kind: str) -> tuple[Flask, list[int]]:
    app = new_app()
    init_flask(app)
    runs: list[int] = []

    def answer() -> Any:
        runs.append(1)
        code = int(request.args["code"])
        if request.args.get("how") == "raise":
            raise RuntimeError("the payment provider broke")
        if request.args.get("how") == "abort":
            abort(code)
        return jsonify({"run": len(runs), "code": code}), code, {"X-Run": str(len(runs))}

    add_view(app, "/pay", kind, answer, methods=("POST",))
    return app, runs


@pytest.mark.parametrize(("code", "how"), [
    (200, "return"), (201, "return"), (202, "return"), (400, "return"), (402, "return"), (404, "abort"),
    (409, "return"), (422, "return"), (500, "return"), (500, "raise"), (502, "return"), (503, "return"),
    (503, "abort"),
])
@pytest.mark.parametrize("kind", KINDS)
def test_every_status_of_the_view_is_stored_and_replayed_as_stripe_does(kind: str, code: int, how: str) -> None:
    app, runs = _status_app(kind)
    client = app.test_client()
    url = f"/pay?code={code}&how={how}"
    first = client.post(url, data=b"{}", headers=key(f"k-{code}-{how}"))
    assert first.status_code == code
    assert not replayed(first)
    retry = client.post(url, data=b"{}", headers=key(f"k-{code}-{how}"))
    assert (retry.status_code, retry.data) == (code, first.data)
    assert replayed(retry)
    assert comparable(retry) == comparable(first)
    assert len(runs) == 1


def test_a_form_body_still_reaches_the_view_after_it_was_fingerprinted() -> None:
    app = new_app()
    init_flask(app)

    @app.post("/form")
    def form() -> Any:
        return {"amount": request.form["amount"], "files": sorted(request.files)}

    client = app.test_client()
    data = {"amount": "12", "receipt": (io.BytesIO(b"pdf bytes"), "r.pdf")}
    first = client.post("/form", data=data, headers=key("f-1"), content_type="multipart/form-data")
    assert first.get_json() == {"amount": "12", "files": ["receipt"]}
    first = client.post("/form", data={"amount": "12"}, headers=key("f-2"))
    assert first.get_json() == {"amount": "12", "files": []}
    assert replayed(client.post("/form", data={"amount": "12"}, headers=key("f-2")))


# -- 409 while the first request runs -------------------------------------------


class Blocking:
    """A view whose n-th run signals ``entered[n]`` and then waits for ``release`` (bounded by DEADLINE)."""

    def __init__(self, kind: str) -> None:
        self.entered = [threading.Event() for _ in range(4)]
        self.release = threading.Event()
        self.runs = 0
        self._lock = threading.Lock()
        self.app = new_app()
        init_flask(self.app)
        add_view(self.app, "/slow", kind, self.body, methods=("POST",))

    def body(self) -> Any:
        with self._lock:
            run = self.runs
            self.runs += 1
        self.entered[run].set()
        assert self.release.wait(DEADLINE), "the test never released the view"
        return {"run": run + 1}, 201


@pytest.fixture(params=KINDS)
def blocking(request: pytest.FixtureRequest) -> Iterator[Blocking]:
    view = Blocking(request.param)
    yield view
    view.release.set()  # never leave a thread waiting


def _in_thread(call: Callable[[], TestResponse]) -> tuple[threading.Thread, list[TestResponse]]:
    answers: list[TestResponse] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    return thread, answers


def test_a_duplicate_while_the_first_runs_gets_409_with_retry_after(blocking: Blocking) -> None:
    first, answers = _in_thread(lambda: blocking.app.test_client().post("/slow", data=b"a", headers=key("k")))
    assert blocking.entered[0].wait(DEADLINE)

    duplicate = blocking.app.test_client().post("/slow", data=b"a", headers=key("k"))
    body = problem_of(duplicate, 409)
    assert "still being processed" in body["detail"]
    assert duplicate.headers["Retry-After"] == "1"
    assert body["retry-after"] == 1
    assert "Idempotent-Replayed" not in duplicate.headers
    # The key with another payload is a mismatch even while the first runs.
    problem_of(blocking.app.test_client().post("/slow", data=b"b", headers=key("k")), 422)

    blocking.release.set()
    first.join(DEADLINE)
    assert not first.is_alive()
    assert answers[0].status_code == 201
    assert answers[0].get_json() == {"run": 1}
    retry = blocking.app.test_client().post("/slow", data=b"a", headers=key("k"))
    assert replayed(retry) and retry.data == answers[0].data
    assert blocking.runs == 1


def test_a_duplicate_from_another_client_is_no_duplicate(blocking: Blocking) -> None:
    first, answers = _in_thread(lambda: blocking.app.test_client().post(
        "/slow", data=b"a", headers=key("k"), environ_base={"REMOTE_ADDR": "10.0.0.1"}))
    assert blocking.entered[0].wait(DEADLINE)
    second, others = _in_thread(lambda: blocking.app.test_client().post(
        "/slow", data=b"a", headers=key("k"), environ_base={"REMOTE_ADDR": "10.0.0.2"}))
    # The second client's request runs its view while the first one's still runs.
    assert blocking.entered[1].wait(DEADLINE)
    blocking.release.set()
    first.join(DEADLINE)
    second.join(DEADLINE)
    assert (answers[0].status_code, others[0].status_code) == (201, 201)
    assert not replayed(others[0])
    assert blocking.runs == 2


# -- 422: the key with another payload --------------------------------------------


@pytest.mark.parametrize(("first", "second"), [
    ({"path": "/charges", "data": b'{"amount": 10}'}, {"path": "/charges", "data": b'{"amount": 11}'}),
    ({"path": "/charges", "data": b"x"}, {"path": "/charges?currency=eur", "data": b"x"}),
    ({"path": "/charges/1", "data": b"x"}, {"path": "/charges/2", "data": b"x"}),  # same route, other path
    # The body is compared as bytes: the same JSON spelled differently is another payload.
    ({"path": "/charges", "data": b'{"a": 1, "b": 2}'}, {"path": "/charges", "data": b'{"b": 2, "a": 1}'}),
    ({"path": "/charges", "data": b""}, {"path": "/charges", "data": b" "}),
], ids=["body", "query", "path", "json-spelling", "empty-vs-space"])
def test_the_same_key_with_another_payload_gets_422(charges: Charges, first: dict[str, Any],
                                                    second: dict[str, Any]) -> None:
    client = charges.client()
    assert client.post(first["path"], data=first["data"], headers=key("k")).status_code == 201
    body = problem_of(client.post(second["path"], data=second["data"], headers=key("k")), 422)
    assert "different payload" in body["detail"]
    assert body["instance"] == second["path"].split("?")[0]
    # ... and the original is still replayed.
    assert replayed(client.post(first["path"], data=first["data"], headers=key("k")))
    assert len(charges.runs) == 1


def test_a_body_that_is_not_json_is_fingerprinted_as_bytes(charges: Charges) -> None:
    client = charges.client()
    garbage = b"\xff\xfe{not json\x00"
    first = client.post("/charges", data=garbage, headers={**key("raw"), "Content-Type": "application/json"})
    assert first.status_code == 201
    retry = client.post("/charges", data=garbage, headers={**key("raw"), "Content-Type": "application/json"})
    assert replayed(retry) and retry.data == first.data
    other = client.post("/charges", data=garbage + b"!", headers={**key("raw"), "Content-Type": "application/json"})
    problem_of(other, 422)
    assert charges.runs == [garbage]


# -- 400: malformed keys, and a required key missing ----------------------------------


@pytest.mark.parametrize(("headers", "says"), [
    ([("Idempotency-Key", "")], "empty"),
    ([("Idempotency-Key", '""')], "empty"),
    ([("Idempotency-Key", "a" * 256)], "longer than 255"),
    ([("Idempotency-Key", '"' + "a" * 256 + '"')], "longer than 255"),
    ([("Idempotency-Key", "ключ")], "printable ASCII"),
    ([("Idempotency-Key", "ключ".encode().decode("latin-1"))], "printable ASCII"),  # as a server hands it over
    ([("Idempotency-Key", '"ключ"'.encode().decode("latin-1"))], "printable ASCII"),
    ([("Idempotency-Key", "abc\x01def")], "printable ASCII"),
    ([("Idempotency-Key", '"abc\x7f"')], "printable ASCII"),
    ([("Idempotency-Key", "abc\tdef")], "printable ASCII"),
    ([("Idempotency-Key", "two words")], "printable ASCII"),
    ([("Idempotency-Key", '"abc')], "not terminated"),
    ([("Idempotency-Key", '"abc\\"')], "not terminated"),
    ([("Idempotency-Key", '"a\\x"')], "escape"),
    ([("Idempotency-Key", '"a", "b"')], "list"),
    ([("Idempotency-Key", "a, b")], "list"),
    ([("Idempotency-Key", "a,b")], "list"),
    ([("Idempotency-Key", '"a" trailing')], "list"),
    ([("Idempotency-Key", "a"), ("Idempotency-Key", "b")], "list"),  # a WSGI server joins them: "a, b"
    ([("Idempotency-Key", "a"), ("Idempotency-Key", "a")], "list"),
], ids=lambda v: repr(v)[:40] if isinstance(v, list) else v)
def test_a_malformed_key_gets_400_saying_what_is_wrong(charges: Charges, headers: list[tuple[str, str]],
                                                       says: str) -> None:
    response = charges.client().post("/charges", data=b"x", headers=headers)
    body = problem_of(response, 400)
    assert says in body["detail"], body["detail"]
    assert body["instance"] == "/charges"
    assert charges.runs == []


@pytest.mark.parametrize("value", [
    "a", "a" * 255, '"' + "a" * 255 + '"', '"with spaces and, commas"', '"esc\\"aped\\\\"',
    "8e03978e-40d5-43e8-bc93-6894a57f9324", "!#$%&'*+-.^_`|~:/;=?@[]{}<>()", '"\''+"'\"",
])
def test_well_formed_keys_are_accepted(charges: Charges, value: str) -> None:
    client = charges.client()
    assert client.post("/charges", data=b"x", headers=key(value)).status_code == 201
    assert replayed(client.post("/charges", data=b"x", headers=key(value)))
    assert len(charges.runs) == 1


def _required_apps(monkeypatch: pytest.MonkeyPatch, fresh_runtime: FRESH) -> Iterator[Charges]:
    yield Charges(idempotency="required")
    yield Charges(config={"BALDUR_IDEMPOTENCY": "required"})
    monkeypatch.setenv("BALDUR_IDEMPOTENCY", "required")
    fresh_runtime()
    yield Charges()


def test_required_mode_refuses_post_and_patch_without_a_key(monkeypatch: pytest.MonkeyPatch,
                                                             fresh_runtime: FRESH) -> None:
    for charges in _required_apps(monkeypatch, fresh_runtime):  # argument, app.config, environment
        baldur.reset()  # (the three apps share the process's runtime, their route and client)
        client = charges.client()
        for method in ("POST", "PATCH"):
            body = problem_of(client.open("/charges", method=method, data=b"x"), 400)
            assert body["detail"] == f"{method} /charges requires an Idempotency-Key header"
        assert charges.runs == []
        assert client.get("/charges").status_code == 201
        assert client.put("/charges", data=b"x").status_code == 201
        assert client.post("/charges", data=b"x", headers=key("k")).status_code == 201
        assert replayed(client.post("/charges", data=b"x", headers=key("k")))
        assert len(charges.runs) == 3


def test_off_mode_ignores_the_header() -> None:
    charges = Charges(idempotency="off")
    client = charges.client()
    answers = [client.post("/charges", data=b"x", headers=key(value)) for value in ("k", "k", "", '"broken')]
    assert [a.status_code for a in answers] == [201, 201, 201, 201]
    assert not any(replayed(a) for a in answers)
    assert len(charges.runs) == 4


# -- scope: client + method + route --------------------------------------------------


def test_two_clients_never_collide_on_the_same_key(charges: Charges) -> None:
    one, two = charges.client("10.0.0.1"), charges.client("10.0.0.2")
    first = one.post("/charges", data=b"x", headers=key("shared"))
    second = two.post("/charges", data=b"y", headers=key("shared"))  # not even a 422
    assert (first.status_code, second.status_code) == (201, 201)
    assert not replayed(second)
    assert one.post("/charges", data=b"x", headers=key("shared")).get_json()["charge"] == 1
    assert two.post("/charges", data=b"y", headers=key("shared")).get_json()["charge"] == 2
    assert len(charges.runs) == 2


def test_the_client_key_of_key_func_scopes_the_idempotency_key() -> None:
    charges = Charges(key_func=lambda req: req.headers.get("X-User"))
    client = charges.client()
    for user in ("alice", "bob"):
        assert client.post("/charges", data=b"x", headers={**key("k"), "X-User": user}).status_code == 201
    assert replayed(client.post("/charges", data=b"x", headers={**key("k"), "X-User": "alice"}))
    assert len(charges.runs) == 2


def test_the_scope_includes_method_and_route(charges: Charges) -> None:
    client = charges.client()
    answers = [
        client.post("/charges", data=b"x", headers=key("k")),
        client.patch("/charges", data=b"x", headers=key("k")),
        client.post("/refunds", data=b"x", headers=key("k")),
        client.post("/charges/1", data=b"x", headers=key("k")),
    ]
    assert [a.status_code for a in answers] == [201, 201, 201, 201]
    assert not any(replayed(a) for a in answers)
    assert len(charges.runs) == 4


def test_apps_mounted_at_different_prefixes_never_share_a_key() -> None:
    v1, v2 = Charges(), Charges()
    mounted = Flask("front")
    mounted.wsgi_app = DispatcherMiddleware(mounted.wsgi_app, {"/v1": v1.app, "/v2": v2.app})  # type: ignore[method-assign]
    client = mounted.test_client(use_cookies=False)
    first = client.post("/v1/charges", data=b"x", headers=key("k"))
    second = client.post("/v2/charges", data=b"x", headers=key("k"))
    assert (first.status_code, second.status_code, replayed(second)) == (201, 201, False)
    assert replayed(client.post("/v1/charges", data=b"x", headers=key("k")))
    assert (len(v1.runs), len(v2.runs)) == (1, 1)


# -- what is not stored ---------------------------------------------------------------


def test_a_response_above_the_size_cap_is_not_stored_and_a_warning_says_so(
        monkeypatch: pytest.MonkeyPatch, fresh_runtime: FRESH, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("BALDUR_IDEMPOTENCY_MAX_BYTES", "64")
    fresh_runtime()
    app = new_app()
    init_flask(app)
    runs: list[int] = []

    @app.post("/sized/<int:size>")
    def sized(size: int) -> Response:
        runs.append(size)
        return Response(b"x" * size, status=201)

    client = app.test_client()
    caplog.set_level(logging.WARNING, logger="baldur")
    big = [client.post("/sized/65", data=b"x", headers=key("big")) for _ in range(2)]
    assert [(a.status_code, replayed(a)) for a in big] == [(201, False), (201, False)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "baldur.idempotency"]
    assert len(warnings) == 2
    assert "/sized/65 (65 bytes) is larger than BALDUR_IDEMPOTENCY_MAX_BYTES=64" in warnings[0].getMessage()
    # At the cap exactly, the response is stored.
    fits = [client.post("/sized/64", data=b"x", headers=key("fits")) for _ in range(2)]
    assert [(a.status_code, replayed(a)) for a in fits] == [(201, False), (201, True)]
    assert runs == [65, 65, 64]


@pytest.mark.parametrize("how", ["generator", "stream_with_context", "send_file"])
def test_a_streamed_response_is_not_stored(how: str) -> None:
    app = new_app()
    init_flask(app)
    runs: list[int] = []

    @app.post("/export")
    def export() -> Response:
        runs.append(1)
        if how == "send_file":
            return send_file(io.BytesIO(b"a,b\n1,2\n"), mimetype="text/csv")

        def rows() -> Iterator[bytes]:
            yield b"a,b\n"
            yield b"1,2\n"

        body = stream_with_context(rows()) if how == "stream_with_context" else rows()
        return Response(body, mimetype="text/csv")

    client = app.test_client()
    answers = []
    for _ in range(2):
        answer = client.post("/export", data=b"x", headers=key("k"))
        answers.append((answer.status_code, answer.get_data(), replayed(answer)))  # read before the next
    assert answers == [(200, b"a,b\n1,2\n", False)] * 2
    assert len(runs) == 2


def test_a_rate_limit_refusal_is_not_stored() -> None:
    app = new_app()
    init_flask(app, rate_limit="2/hour")
    runs: list[bytes] = []

    @app.post("/pay")
    def pay() -> Any:
        runs.append(request.get_data())
        return {"ok": True}, 201

    client = app.test_client()
    assert [client.post("/pay", data=b"spend").status_code for _ in range(2)] == [201, 201]
    refused = client.post("/pay", data=b"a", headers=key("k"))
    problem_of(refused, 429)
    assert "Idempotent-Replayed" not in refused.headers
    # Not stored, and not left claimed: the same key with another body is no 422, no 409,
    # but the same refusal again.
    problem_of(client.post("/pay", data=b"b", headers=key("k")), 429)
    problem_of(client.post("/pay", data=b"a", headers=key("k")), 429)
    assert runs == [b"spend", b"spend"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_503_of_an_open_breaker_is_not_stored_and_the_key_works_after(kind: str) -> None:
    app = new_app()
    init_flask(app)
    runs: list[int] = []

    def pay() -> Any:
        runs.append(1)
        return {"ok": True}, 201

    add_view(app, "/pay", kind, pay, protect=baldur.protected("pay-breaker"), methods=("POST",))
    client = app.test_client()
    baldur.breaker("pay-breaker").open()
    refused = client.post("/pay", data=b"a", headers=key("k"))
    problem_of(refused, 503)
    assert "Retry-After" in refused.headers
    baldur.breaker("pay-breaker").close()
    first = client.post("/pay", data=b"a", headers=key("k"))
    assert (first.status_code, replayed(first)) == (201, False)
    assert replayed(client.post("/pay", data=b"a", headers=key("k")))
    assert len(runs) == 1


def test_a_stored_response_expires_after_the_ttl(monkeypatch: pytest.MonkeyPatch, fresh_runtime: FRESH) -> None:
    monkeypatch.setenv("BALDUR_IDEMPOTENCY_TTL", "0.2")
    fresh_runtime()
    charges = Charges()
    client = charges.client()
    assert client.post("/charges", data=b"x", headers=key("k")).status_code == 201
    # Replayed until the ttl has passed (polled with a deadline), then the key runs afresh.
    end = time.monotonic() + DEADLINE
    while replayed(answer := client.post("/charges", data=b"x", headers=key("k"))):
        assert time.monotonic() < end, "the stored response never expired"
        time.sleep(0.02)
    assert answer.get_json()["charge"] == 2


# -- fuzz: the header never makes a 500 -------------------------------------------------

#: What an HTTP server can hand over as a header value: latin-1 text without CR, LF or NUL.
_LATIN1 = st.characters(min_codepoint=1, max_codepoint=255, blacklist_characters="\r\n")
_RAW = st.binary(max_size=300).map(lambda b: b.translate(None, b"\r\n\0").decode("latin-1"))
_KEYS = st.one_of(
    st.text(_LATIN1, max_size=300),
    _RAW,
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300).map(lambda s: f'"{s}"'),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=250, max_size=260),
    st.lists(st.text(_LATIN1, max_size=20), min_size=1, max_size=3).map(", ".join),
)
_FUZZ = Charges()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(values=st.lists(_KEYS, min_size=1, max_size=3), method=st.sampled_from(["POST", "PATCH", "GET"]),
       body=st.binary(max_size=64))
def test_fuzzed_idempotency_keys_never_get_a_500(values: list[str], method: str, body: bytes) -> None:
    _FUZZ.app.config["PROPAGATE_EXCEPTIONS"] = True  # a bug is an exception out of the test client
    baldur.reset()
    client = _FUZZ.client()
    headers = [("Idempotency-Key", value) for value in values]
    first = client.open("/charges", method=method, data=body, headers=headers)
    retry = client.open("/charges", method=method, data=body, headers=headers)
    assert first.status_code in (201, 400), first.data
    assert retry.status_code == first.status_code
    if first.status_code == 400:
        assert first.headers["Content-Type"] == PROBLEM and first.get_json()["detail"]
    if method != "GET" and first.status_code == 201:
        assert replayed(retry) and retry.data == first.data


# -- the docs say what the code does ---------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_the_idempotency_page_shows_the_example_app_verbatim_and_the_settings_defaults() -> None:
    page = (ROOT / "docs" / "idempotency.md").read_text()
    example = (ROOT / "examples" / "idempotency_flask" / "app.py").read_text()
    assert f"```python\n{example}```" in page
    defaults = baldur.init().settings
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    for name, value in (("IDEMPOTENCY", "optional"), ("IDEMPOTENCY_TTL", f"{defaults.idempotency_ttl:g}"),
                        ("IDEMPOTENCY_MAX_BYTES", str(defaults.idempotency_max_bytes)),
                        ("IDEMPOTENCY_FAIL_OPEN", str(int(defaults.idempotency_fail_open)))):
        assert f"| `BALDUR_{name}` | `{value}` |" in configuration
        assert f"`BALDUR_{name}`" in page
    assert f"lease of {CLAIM_LEASE_SECONDS:g} seconds" in page
    assert "(docs/idempotency.md)" in (ROOT / "README.md").read_text()
