"""Trust at the edge (issue 10), each finding against a real Flask app through the test client.

Admission is the first request hook, so a limit holds whoever answers next; idempotency is
scoped to the identity and runs after the app's authentication; replays cost quota; a refused
client's body is never read; client traffic never evicts breakers or claims; client keys fold
IPv6 networks and mapped addresses; exempt views never 429; misuse is loud; log lines cannot
be forged. The shared-store versions are in test_flask_edge_workers.py.
"""

from __future__ import annotations

import functools
import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _flask_support import new_app
from flask import Blueprint, Flask, Response, abort, g, jsonify, request

import baldur
from baldur import _log, _runtime
from baldur.adapters.flask import init_flask
from baldur.policies.breaker import Breaker, Outcome, State
from baldur.policies.rate_limit import RateLimit
from baldur.stores._types import Plan
from baldur.stores.memory import MemoryStore

FRESH = Callable[[], _runtime.Runtime]


@pytest.fixture(autouse=True)
def runtime(fresh_runtime: FRESH) -> _runtime.Runtime:
    return fresh_runtime()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A typical auth decorator: 401 unless the password is right (placed outside ``protected``)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.headers.get("Authorization") != "Bearer right":
            abort(401)
        return view(*args, **kwargs)

    return wrapper


def statuses(client: Any, path: str, n: int, method: str = "GET", **kwargs: Any) -> list[int]:
    return [client.open(path, method=method, **kwargs).status_code for _ in range(n)]


# -- 1. the per-client limit holds whoever answers next --------------------------------------

def test_brute_force_through_an_auth_decorator_outside_protected_ends_in_429() -> None:
    app = new_app()
    init_flask(app, rate_limit="3/minute")
    calls: list[int] = []

    @app.post("/login")
    @login_required
    @baldur.protected(unique("login"))
    def login() -> str:
        calls.append(1)
        return "welcome"

    client = app.test_client()
    assert statuses(client, "/login", 10, "POST") == [401] * 3 + [429] * 7
    answer = client.post("/login")
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert int(answer.headers["Retry-After"]) >= 1
    assert calls == []


def test_brute_force_through_an_auth_decorator_on_an_unprotected_view_ends_in_429() -> None:
    app = new_app()
    init_flask(app, rate_limit="3/minute")

    @app.post("/login")
    @login_required
    def login() -> str:
        return "welcome"

    assert statuses(app.test_client(), "/login", 10, "POST") == [401] * 3 + [429] * 7


@pytest.mark.parametrize("registered", ["before", "after"])
def test_a_before_request_hook_that_answers_still_counts(registered: str) -> None:
    app = new_app()

    def csrf() -> Any:
        return ("csrf token missing", 403) if not request.headers.get("X-Csrf") else None

    if registered == "before":
        app.before_request(csrf)
    init_flask(app, rate_limit="3/minute")
    if registered == "after":
        app.before_request(csrf)

    @app.post("/transfer")
    @baldur.protected(unique("transfer"))
    def transfer() -> str:
        return "moved"

    assert statuses(app.test_client(), "/transfer", 10, "POST") == [403] * 3 + [429] * 7


def test_a_routes_own_limit_also_holds_through_an_auth_decorator() -> None:
    app = new_app()
    init_flask(app)

    @app.post("/login")
    @login_required
    @baldur.protected(unique("login"), rate_limit="2/minute")
    def login() -> str:
        return "welcome"

    assert statuses(app.test_client(), "/login", 5, "POST") == [401, 401, 429, 429, 429]


def test_a_401_from_a_hook_is_no_outcome_for_the_views_breaker() -> None:
    app = new_app()
    init_flask(app)
    name = unique("guarded")

    @app.post("/guarded")
    @login_required
    @baldur.protected(name, breaker=Breaker(consecutive_failures=2, failure_rate=None), max_concurrency=1)
    def guarded() -> str:
        raise RuntimeError("down")

    client = app.test_client()
    assert statuses(client, "/guarded", 1, "POST", headers={"Authorization": "Bearer right"}) == [500]
    assert statuses(client, "/guarded", 5, "POST") == [401] * 5  # each released its slot, reset nothing
    assert statuses(client, "/guarded", 1, "POST", headers={"Authorization": "Bearer right"}) == [500]
    assert baldur.breaker(name).state == "open"


def test_a_fallback_still_answers_the_views_own_refusal() -> None:
    app = new_app()
    init_flask(app)
    name = unique("cached")

    @app.get("/cached")
    @baldur.protected(name, rate_limit="1/minute", fallback=lambda exc: f"cached ({type(exc).__name__})")
    def cached() -> str:
        return "fresh"

    client = app.test_client()
    assert [client.get("/cached").get_data(as_text=True) for _ in range(2)] == ["fresh", "cached (RateLimited)"]


# -- 5. what counts: unmatched routes, exempt views ------------------------------------------

def test_unmatched_routes_spend_no_quota() -> None:
    app = new_app()
    init_flask(app, rate_limit="2/minute")
    app.add_url_rule("/ok", view_func=lambda: "ok")
    client = app.test_client()
    assert statuses(client, "/nowhere", 5) == [404] * 5
    assert statuses(client, "/ok", 5, "DELETE") == [405] * 5
    assert statuses(client, "/ok", 5, "OPTIONS") == [200] * 5  # Flask's own answer (a CORS preflight)
    assert statuses(client, "/ok", 3) == [200, 200, 429]


def test_exempt_views_endpoints_and_blueprints_never_429() -> None:
    app = new_app()
    ops = Blueprint("ops", __name__)
    ops.add_url_rule("/metrics", "metrics", lambda: "m")
    app.register_blueprint(ops)
    init_flask(app, rate_limit="1/minute", exempt=["ready", "ops"])

    @app.get("/healthz")
    @baldur.exempt
    def healthz() -> str:
        return "ok"

    app.add_url_rule("/ready", "ready", lambda: "ready")
    app.add_url_rule("/work", "work", lambda: "done")
    client = app.test_client()
    for path in ("/healthz", "/ready", "/metrics"):
        assert statuses(client, path, 5) == [200] * 5
    assert statuses(client, "/work", 2) == [200, 429]
    assert statuses(client, "/healthz", 2) == [200, 200]


def test_an_exempt_view_is_never_shed_for_queue_time() -> None:
    app = new_app()
    init_flask(app, exempt=["ready"])
    app.add_url_rule("/ready", "ready", lambda: "ready")
    app.add_url_rule("/work", "work", lambda: "done")
    client = app.test_client()
    waited = {"X-Request-Start": f"t={int((time.time() - 60) * 1000)}"}  # 60 s in the queue (limit 10 s)
    shed = client.get("/work", headers=waited)
    assert shed.status_code == 503 and int(shed.headers["Retry-After"]) >= 1
    assert client.get("/ready", headers=waited).status_code == 200


def test_exempt_rejects_what_is_not_a_list_of_names() -> None:
    with pytest.raises(baldur.ConfigError, match="exempt"):
        init_flask(new_app(), exempt="healthz")


def test_exempt_is_public() -> None:
    assert "exempt" in baldur.__all__
    with pytest.raises(TypeError, match="view function"):
        baldur.exempt(3)


# -- 4. client keys --------------------------------------------------------------------------

def test_every_address_of_one_ipv6_64_shares_one_bucket() -> None:
    app = new_app()
    init_flask(app, rate_limit="3/minute")
    app.add_url_rule("/x", view_func=lambda: "x")
    client = app.test_client()
    answers = [client.get("/x", environ_base={"REMOTE_ADDR": f"2001:db8:1:2::{i}"}).status_code for i in range(7)]
    assert answers == [200, 200, 200, 429, 429, 429, 429]
    other = client.get("/x", environ_base={"REMOTE_ADDR": "2001:db8:1:3::1"})  # another /64
    assert other.status_code == 200


def test_ipv6_prefix_is_a_setting(fresh_runtime: FRESH, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALDUR_IPV6_PREFIX", "48")
    fresh_runtime()
    app = new_app()
    init_flask(app, rate_limit="1/minute")
    app.add_url_rule("/x", view_func=lambda: "x")
    client = app.test_client()
    assert client.get("/x", environ_base={"REMOTE_ADDR": "2001:db8:1:2::1"}).status_code == 200
    assert client.get("/x", environ_base={"REMOTE_ADDR": "2001:db8:1:ffff::1"}).status_code == 429


def test_an_ipv4_mapped_address_is_the_ipv4_client() -> None:
    app = new_app()
    init_flask(app, rate_limit="2/minute")
    app.add_url_rule("/x", view_func=lambda: "x")
    client = app.test_client()
    assert client.get("/x", environ_base={"REMOTE_ADDR": "1.2.3.4"}).status_code == 200
    assert client.get("/x", environ_base={"REMOTE_ADDR": "::ffff:1.2.3.4"}).status_code == 200
    assert client.get("/x", environ_base={"REMOTE_ADDR": "::ffff:1.2.3.4"}).status_code == 429


def test_forwarded_for_entries_with_ports_are_distinct_clients_behind_a_trusted_proxy() -> None:
    app = new_app()
    init_flask(app, rate_limit="1/minute", trust_proxy=1)
    app.add_url_rule("/x", view_func=lambda: "x")
    client = app.test_client()
    for address in ("203.0.113.1:5678", "203.0.113.2:5678", "[2001:db8::1]:443"):
        assert client.get("/x", headers={"X-Forwarded-For": address}).status_code == 200
    assert client.get("/x", headers={"X-Forwarded-For": "203.0.113.1:9999"}).status_code == 429
    assert client.get("/x", headers={"Forwarded": 'for="203.0.113.7:1"'}).status_code == 200
    assert client.get("/x", headers={"Forwarded": "for=203.0.113.7"}).status_code == 429


@pytest.mark.parametrize("failure", ["none", "empty", "keyerror", "lookup"])
def test_a_key_func_without_an_answer_falls_back_to_the_address(
        failure: str, caplog: pytest.LogCaptureFixture) -> None:
    def key_func(req: Any) -> str | None:
        if failure == "none":
            return None
        if failure == "empty":
            return ""
        if failure == "keyerror":
            return str(req.headers["X-Api-Key"])
        raise LookupError("no user")

    app = new_app()
    init_flask(app, rate_limit="1/minute", key_func=key_func)
    app.add_url_rule("/x", view_func=lambda: "x")
    client = app.test_client()
    with caplog.at_level(logging.DEBUG, logger="baldur.flask"):
        assert client.get("/x").status_code == 200
        assert client.get("/x").status_code == 429  # the address's bucket, not a 500
        assert client.get("/x", environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code == 200
    assert any("address is its key" in r.getMessage() for r in caplog.records)


# -- 2. identity-scoped idempotency -------------------------------------------------------------

class Cards:
    """An app that charges a card behind a token check (``X-Auth-Token``), storing Alice's
    card number in the body of her 201."""

    def __init__(self, **options: Any) -> None:
        self.app = new_app()
        self.app.secret_key = "test"
        self.runs: list[str] = []
        init_flask(self.app, **options)

        @self.app.before_request
        def authenticate() -> Any:
            token = request.headers.get("Authorization", "")
            g.user = {"Bearer alice": "alice", "Bearer bob": "bob"}.get(token)
            if token == "Bearer expired":
                return jsonify({"error": "token expired"}), 401
            return None

        @self.app.post("/charges")
        @baldur.protected(unique("charges"))
        def charge() -> Response:
            self.runs.append(str(g.user))
            response = jsonify({"charge": len(self.runs), "user": g.user, "card": "4242 4242 4242 4242"})
            response.status_code = 201
            response.headers["Cache-Control"] = "private"
            response.set_cookie("session", f"s-{g.user}")
            return response

    def post(self, auth: str | None, key: str = "order-1", addr: str = "10.0.0.1",
             body: dict[str, int] | None = None) -> Any:
        headers = {"Idempotency-Key": key, **({"Authorization": auth} if auth else {})}
        client = self.app.test_client(use_cookies=False)
        return client.post("/charges", json=body or {"amount": 10}, headers=headers,
                           environ_base={"REMOTE_ADDR": addr})


def test_bob_and_an_anonymous_client_never_receive_alices_stored_response() -> None:
    cards = Cards()
    alice = cards.post("Bearer alice")
    assert alice.status_code == 201 and alice.get_json()["user"] == "alice"
    again = cards.post("Bearer alice")
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == alice.data
    for intruder in ("Bearer bob", None):  # same address (an office NAT), same key, same body
        answer = cards.post(intruder)
        assert "Idempotent-Replayed" not in answer.headers
        assert answer.get_json()["user"] != "alice"
    assert cards.runs == ["alice", "bob", "None"]


def test_an_identity_callable_is_evaluated_after_the_apps_authentication() -> None:
    cards = Cards(identity=lambda req: g.user)
    assert cards.post("Bearer alice", addr="10.0.0.1").status_code == 201
    # Alice from another address (her phone): her identity, so her stored answer.
    moved = cards.post("Bearer alice", addr="192.0.2.9")
    assert moved.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in cards.post("Bearer bob", addr="10.0.0.1").headers
    assert cards.runs == ["alice", "bob"]


def test_an_expired_token_401_is_not_stored_and_the_corrected_retry_runs() -> None:
    cards = Cards()
    assert cards.post("Bearer expired").status_code == 401
    fixed = cards.post("Bearer alice")
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed.headers
    assert cards.runs == ["alice"]


def test_a_401_from_an_auth_decorator_is_not_stored() -> None:
    app = new_app()
    init_flask(app)
    runs: list[int] = []

    @app.post("/pay")
    @login_required
    def pay() -> tuple[str, int]:
        runs.append(1)
        return "paid", 201

    client = app.test_client(use_cookies=False)
    assert client.post("/pay", headers={"Idempotency-Key": "k"}).status_code == 401
    retry = client.post("/pay", headers={"Idempotency-Key": "k", "Authorization": "Bearer right"})
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers
    assert runs == [1]


def test_a_replay_never_carries_set_cookie() -> None:
    cards = Cards()
    assert "Set-Cookie" in cards.post("Bearer alice").headers
    replay = cards.post("Bearer alice")
    assert replay.headers["Idempotent-Replayed"] == "true" and "Set-Cookie" not in replay.headers


# -- 3. replays cost quota; a refused client's body is never read --------------------------------

def test_replays_conflicts_and_mismatches_use_the_clients_quota() -> None:
    cards = Cards(rate_limit="5/minute")
    answers = [cards.post("Bearer alice") for _ in range(4)]
    assert [a.status_code for a in answers] == [201] * 4
    mismatch = cards.post("Bearer alice", body={"amount": 99})
    assert mismatch.status_code == 422
    limited = cards.post("Bearer alice")
    assert limited.status_code == 429 and b"4242" not in limited.data
    assert cards.runs == ["alice"]


class CountingStream(io.RawIOBase):
    """A request body of ``size`` bytes that counts what was read of it."""

    def __init__(self, size: int) -> None:
        self.size, self.read_bytes = size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.read_bytes)
        buffer[:n] = b"x" * n
        self.read_bytes += n
        return n


def _post_stream(app: Flask, path: str, stream: CountingStream, headers: dict[str, str],
                 chunked: bool = False) -> int:
    environ_overrides: dict[str, Any] = {"wsgi.input": stream}
    if chunked:
        environ_overrides.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    else:
        environ_overrides["CONTENT_LENGTH"] = str(stream.size)
    client = app.test_client(use_cookies=False)
    return int(client.post(path, headers=headers, environ_overrides=environ_overrides).status_code)


def test_a_large_body_from_a_limited_client_or_to_no_route_is_never_read() -> None:
    app = new_app()
    init_flask(app, rate_limit="1/minute")
    app.add_url_rule("/upload", "upload", lambda: ("stored", 201), methods=["POST"])
    assert app.test_client().post("/upload", data=b"small", headers={"Idempotency-Key": "a"}).status_code == 201
    size = 300 * 1024 * 1024
    for path, status in (("/upload", 429), ("/nowhere", 404)):
        body = CountingStream(size)
        assert _post_stream(app, path, body, {"Idempotency-Key": "b"}) == status
        assert body.read_bytes == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_an_idempotent_body_above_the_cap_is_refused_after_reading_at_most_the_cap(
        fresh_runtime: FRESH, monkeypatch: pytest.MonkeyPatch, chunked: bool) -> None:
    monkeypatch.setenv("BALDUR_IDEMPOTENCY_MAX_BYTES", "65536")
    fresh_runtime()
    app = new_app()
    init_flask(app)
    app.add_url_rule("/upload", "upload", lambda: (str(len(request.get_data())), 201), methods=["POST"])
    body = CountingStream(10 * 1024 * 1024)
    assert _post_stream(app, "/upload", body, {"Idempotency-Key": "big"}, chunked=chunked) == 413
    assert body.read_bytes <= 65536 + 1
    fits = CountingStream(60_000)
    assert _post_stream(app, "/upload", fits, {"Idempotency-Key": "fits"}, chunked=chunked) == 201


# -- 4. bounded, separate state ---------------------------------------------------------------

def test_two_hundred_thousand_clients_evict_neither_an_open_breaker_nor_an_in_flight_claim() -> None:
    store = MemoryStore(max_keys=1_000, max_response_bytes=4_096)
    options = Breaker(consecutive_failures=1, failure_rate=None, open_for=3_600)
    plan = Plan("payments", options, None, None)
    store.finish(store.admit(plan), Outcome.FAILURE)
    assert store.read_breaker("payments", options) is State.OPEN
    assert store.idempotency_begin("victim", "fp", "token").verdict.value == "run"
    view = Plan("view", None, RateLimit("1/minute"), None)
    for i in range(200_000):
        store.finish(store.admit(view, f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64"), Outcome.SUCCESS)
        if i % 1000 == 0:  # and completed records churning through the byte bound
            store.idempotency_begin(f"k{i}", "fp", "t")
            store.idempotency_complete(f"k{i}", "t", "r" * 1000, 60)
    assert store.read_breaker("payments", options) is State.OPEN
    assert store.idempotency_begin("victim", "fp", "other").verdict.value == "conflict"  # still held
    assert len(store._clients) <= 1_000
    assert store.record_bytes <= 4_096


def test_stored_responses_stay_under_the_byte_bound_and_eviction_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(max_response_bytes=100_000)
    with caplog.at_level(logging.WARNING, logger="baldur.idempotency"):
        for i in range(1_000):
            store.idempotency_begin(f"k{i}", "fp", "t")
            store.idempotency_complete(f"k{i}", "t", "r" * 10_000, 60)
            assert store.record_bytes <= 100_000
            if i == 20:
                evicted = [r for r in caplog.records if "evicted" in r.getMessage()]
                assert len(evicted) == 21 - len(store._records) > 0  # one WARNING per eviction
                assert "BALDUR_MEMORY_MAX_RESPONSE_BYTES" in evicted[0].getMessage()
    assert store.idempotency_begin("k999", "fp", "t2").verdict.value == "replay"
    assert store.idempotency_begin("k0", "fp", "t2").verdict.value == "run"  # evicted: runs again


def test_a_limited_client_writes_no_idempotency_claim(runtime: _runtime.Runtime) -> None:
    app = new_app()
    init_flask(app, rate_limit="1/minute")
    app.add_url_rule("/pay", "pay", lambda: ("paid", 201), methods=["POST"])
    client = app.test_client(use_cookies=False)
    assert client.post("/pay", headers={"Idempotency-Key": "k-0"}).status_code == 201
    store = runtime.sync
    assert isinstance(store, MemoryStore)
    before = len(store._records)
    for i in range(1, 200):
        assert client.post("/pay", headers={"Idempotency-Key": f"k-{i}"}).status_code == 429
    assert len(store._records) == before


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_records_per_identity_are_bounded(fresh_runtime: FRESH, monkeypatch: pytest.MonkeyPatch,
                                          request: pytest.FixtureRequest, store: str) -> None:
    if store == "redis":
        monkeypatch.setenv("BALDUR_REDIS_URL", request.getfixturevalue("redis_server").url)
        monkeypatch.setenv("BALDUR_KEY_PREFIX", unique("edge"))
        monkeypatch.setenv("BALDUR_REDIS_TIMEOUT_MS", "2000")
    monkeypatch.setenv("BALDUR_IDEMPOTENCY_MAX_RECORDS", "3")
    fresh_runtime()
    cards = Cards()
    answers = [cards.post("Bearer alice", key=f"order-{i}") for i in range(5)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429, 429]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert cards.post("Bearer alice", key="order-0").headers["Idempotent-Replayed"] == "true"
    assert cards.post("Bearer bob", key="order-9").status_code == 201  # another identity, its own bound
    assert cards.runs == ["alice"] * 3 + ["bob"]


def test_the_byte_bound_is_a_setting(fresh_runtime: FRESH, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALDUR_MEMORY_MAX_RESPONSE_BYTES", "12345")
    store = fresh_runtime().sync
    assert isinstance(store, MemoryStore) and store.max_response_bytes == 12345


# -- 6. misuse made loud ----------------------------------------------------------------------

def test_a_protected_view_refused_without_init_flask_logs_the_fix_and_answers_its_status(
        caplog: pytest.LogCaptureFixture) -> None:
    app = new_app()
    name = unique("alone")

    @app.get("/alone")
    @baldur.protected(name)
    def alone() -> str:
        return "ok"

    baldur.breaker(name).open()
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="baldur.flask"):
        answers = [client.get("/alone") for _ in range(3)]
    assert [a.status_code for a in answers] == [503] * 3
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "baldur.flask"]
    assert len(errors) == 1 and "init_flask(app)" in errors[0].getMessage()


def test_protected_above_the_route_decorator_warns_at_the_first_request(caplog: pytest.LogCaptureFixture) -> None:
    app = new_app()
    init_flask(app)

    @baldur.protected(unique("upside-down"))
    @app.get("/upside-down")
    def upside_down() -> str:
        return "unprotected"

    @app.get("/right")
    @login_required
    @baldur.protected(unique("right"))
    def right() -> str:
        return "protected"

    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="baldur.flask"):
        client.get("/right")
        client.get("/upside-down")
    warnings = [r.getMessage() for r in caplog.records if r.name == "baldur.flask"]
    assert len(warnings) == 1
    assert "'upside_down'" in warnings[0] and "below @app.route" in warnings[0]


def test_the_config_error_hint_for_key_func_reads_a_header_safely() -> None:
    with pytest.raises(baldur.ConfigError) as info:
        init_flask(new_app(), key_func="X-Api-Key")  # type: ignore[arg-type]
    assert "headers.get('X-Api-Key')" in str(info.value)


# -- 7. logs -----------------------------------------------------------------------------------

@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_log._TextFormatter())
    logger = logging.getLogger("baldur")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(saved)


def test_client_controlled_values_cannot_forge_a_text_log_line(text_log: io.StringIO) -> None:
    app = new_app()
    init_flask(app, rate_limit="1/minute", key_func=lambda req: req.args.get("key"))
    app.add_url_rule("/x/<path:rest>", view_func=lambda rest: "x")
    client = app.test_client()
    forged = "k\n2026-01-01 00:00:00 CRITICAL baldur forged\u2028line"
    for _ in range(2):
        client.get("/x/a%0aCRITICAL%20forged", query_string={"key": forged})
    logging.getLogger("baldur.idempotency").warning("path %s", "/a\nCRITICAL forged")
    lines = text_log.getvalue().splitlines()
    assert lines and all(" CRITICAL " not in line.split(" ", 3)[2] for line in lines)
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert any("\\x0a" in line for line in lines)


def test_the_json_format_is_unchanged() -> None:
    record = logging.LogRecord("baldur", logging.WARNING, __file__, 1, "a\nb", None, None)
    assert '"message": "a\\nb"' in _log._JsonFormatter().format(record)
