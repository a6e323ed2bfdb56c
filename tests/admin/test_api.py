"""The admin API itself: every route with every role, bad input, the audit, Host and Origin,
forced states that lapse, on the memory store and on the session's private Redis.

In process: the API mounted in a Flask app (``init_flask(app, admin="/_baldur")``) through
Flask's test client, and the ASGI face (``baldur admin``'s) called with real ASGI messages.
The servers themselves run in test_cli_server.py, test_console_browser.py and
test_api_workers.py.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import flask
import pytest

import baldur
from baldur.adapters.flask import init_flask
from baldur.admin._app import CSP, MAX_FOR_SECONDS, MAX_REASON
from baldur.admin._asgi import AdminASGI
from baldur.admin._keys import key_id, parse_admin_keys
from baldur.errors import ConfigError
from tests.redis_server import RedisServer

KEYS = {"viewer": "viewer-key-0123456789", "operator": "operator-key-0123456789", "admin": "admin-key-0123456789"}
ADMIN_KEYS = ",".join(f"{role}:{key}" for role, key in KEYS.items())
ROOT = "/_baldur"
PROBLEM = "application/problem+json"
#: Who may ask: each route's lowest role (None: the console's files, which hold no data).
ROUTES: list[tuple[str, str, str | None]] = [
    ("GET", "/api/v1/whoami", "viewer"),
    ("GET", "/api/v1/health", "viewer"),
    ("GET", "/api/v1/breakers", "viewer"),
    ("GET", "/api/v1/breakers/api-payments", "viewer"),
    ("GET", "/api/v1/limits", "viewer"),
    ("GET", "/metrics", "viewer"),
    ("POST", "/api/v1/breakers/api-payments/open", "operator"),
    ("POST", "/api/v1/breakers/api-payments/close", "operator"),
    ("POST", "/api/v1/breakers/api-payments/reset", "operator"),
    ("POST", "/api/v1/limits/default/clients/203.0.113.9/reset", "operator"),
    ("GET", "/api/v1/audit", "admin"),
    ("GET", "/", None),
    ("GET", "/console/console.js", None),
    ("GET", "/console/console.css", None),
]
RANK = {"viewer": 1, "operator": 2, "admin": 3}
#: Who asks: a role's key, no key, or a key that is none of them.
CALLERS = [*KEYS, "no key", "wrong key"]


def expected_status(caller: str, lowest: str | None) -> int:
    """What the table says ``caller`` gets from a route whose lowest role is ``lowest``."""
    if lowest is None:
        return 200
    if caller in ("no key", "wrong key"):
        return 401
    return 200 if RANK[caller] >= RANK[lowest] else 403


class Admin:
    """The API mounted in a Flask app with one protected view (``api-payments``, a breaker)."""

    def __init__(self, app: flask.Flask) -> None:
        self.app = app
        self.client = app.test_client()

    def call(self, method: str, path: str, role: str | None = "admin", body: object = None, *,
             raw: bytes | None = None, headers: dict[str, str] | None = None,
             remote: str = "127.0.0.1") -> tuple[int, dict[str, str], Any]:
        sent = dict(headers or {})
        if role in KEYS:
            sent["Authorization"] = f"Bearer {KEYS[role]}"
        elif role == "wrong key":
            sent["Authorization"] = "Bearer not-a-key-of-this-server"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        answer = self.client.open(ROOT + path, method=method, data=data, headers=sent,
                                  content_type="application/json" if data is not None else None,
                                  environ_base={"REMOTE_ADDR": remote})
        text = answer.get_data()
        kind = answer.headers.get("Content-Type", "")
        parsed = json.loads(text) if "json" in kind else text.decode()
        return answer.status_code, {k.lower(): v for k, v in answer.headers.items()}, parsed

    def force(self, action: str, role: str = "operator", **fields: object) -> tuple[int, dict[str, str], Any]:
        return self.call("POST", f"/api/v1/breakers/api-payments/{action}", role, {"reason": "test", **fields})

    def view(self) -> int:
        return self.client.get("/pay").status_code


def make_admin(keys: str | None = ADMIN_KEYS, **settings: object) -> Admin:
    baldur.init(admin_keys=keys, **settings)
    app = flask.Flask(__name__)
    init_flask(app, admin=ROOT, rate_limit="1000/minute")

    @app.get("/pay")
    @baldur.protected("api-payments", breaker=baldur.Breaker(consecutive_failures=2, open_for=30))
    def pay() -> str:
        if flask.request.args.get("fail"):
            raise RuntimeError("the provider is down")
        return "paid"

    return Admin(app)


@pytest.fixture
def admin() -> Admin:
    return make_admin()


@pytest.fixture
def redis_admin(redis_server: RedisServer) -> Iterator[Admin]:
    yield make_admin(redis_url=redis_server.url, key_prefix=f"adm-{uuid.uuid4().hex[:10]}")


# -- every route, every caller -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "lowest"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("caller", CALLERS)
def test_every_route_answers_each_caller_by_its_role(admin: Admin, method: str, path: str, lowest: str | None,
                                                     caller: str) -> None:
    body = {"reason": "the matrix"} if method == "POST" else None
    status, headers, answer = admin.call(method, path, caller, body)
    expected = expected_status(caller, lowest)
    assert status == expected, answer
    assert headers["content-security-policy"] == CSP
    assert headers["x-frame-options"] == "DENY"
    if expected != 200:
        assert headers["content-type"] == PROBLEM
        assert answer["status"] == expected
    if expected == 401:
        assert headers["www-authenticate"].startswith("Bearer")
    if expected == 403:
        assert f"this needs the {lowest} role; key {key_id(KEYS[caller])} has the {caller} role" in answer["detail"]


def test_the_answers_carry_what_the_contract_says(admin: Admin) -> None:
    assert admin.call("GET", "/api/v1/whoami", "operator")[2] == {"key_id": key_id(KEYS["operator"]),
                                                                   "role": "operator"}
    assert admin.call("GET", "/api/v1/health", "viewer")[2]["status"] == "ok"
    breakers = admin.call("GET", "/api/v1/breakers", "viewer")[2]["breakers"]
    names = [b["name"] for b in breakers]
    assert names == sorted(names)  # every breaker this process declared, by name
    assert breakers[names.index("api-payments")] == {
        "name": "api-payments", "state": "closed", "failure_rate": None, "calls": 0, "failures": 0, "opened_at": None,
        "open_until": None, "forced": None}
    limits = admin.call("GET", "/api/v1/limits", "viewer")[2]["limits"]
    assert {"name": "default", "rate_limit": "1000/minute", "max_concurrency": None, "in_flight": 0} in limits


def test_a_breaker_opened_by_failures_shows_its_window_and_transitions(admin: Admin) -> None:
    assert [admin.client.get("/pay?fail=1").status_code for _ in range(2)] == [500, 500]
    assert admin.view() == 503
    status, _, breaker = admin.call("GET", "/api/v1/breakers/api-payments", "viewer")
    assert status == 200
    # Opening starts a fresh window: what opened it is in the transitions.
    assert (breaker["state"], breaker["calls"], breaker["failures"]) == ("open", 0, 0)
    assert breaker["opened_at"] == pytest.approx(time.time(), abs=30)
    assert breaker["open_until"] == pytest.approx(breaker["opened_at"] + 30, abs=0.01)
    assert [(t["from"], t["to"]) for t in breaker["transitions"]] == [("closed", "open")]


# -- changes: forced states, resets, the audit ---------------------------------------------------


def test_forcing_steers_the_view_and_reset_hands_the_breaker_back(admin: Admin) -> None:
    status, _, forced = admin.force("open", reason="provider maintenance", for_seconds=600)
    assert status == 200
    assert forced["state"] == "open"
    assert forced["forced"]["state"] == "open" and forced["forced"]["reason"] == "provider maintenance"
    assert forced["forced"]["by"] == key_id(KEYS["operator"])
    assert forced["forced"]["until"] == pytest.approx(time.time() + 600, abs=5)
    assert admin.view() == 503
    assert admin.force("close")[0] == 200
    assert [admin.client.get("/pay?fail=1").status_code for _ in range(3)] == [500] * 3  # forced closed: runs
    assert admin.view() == 200
    status, _, reset = admin.force("reset")
    assert (status, reset["state"], reset["forced"], reset["calls"]) == (200, "closed", None, 0)
    assert [admin.client.get("/pay?fail=1").status_code for _ in range(2)] == [500, 500]
    assert admin.view() == 503  # its own rule again: two failures in a row open it


def lapses(admin: Admin) -> None:
    assert admin.force("open", for_seconds=1)[0] == 200
    assert admin.view() == 503
    end = time.monotonic() + 10
    while admin.view() != 200:  # polled: the forced state lapses by itself, no call needed
        assert time.monotonic() < end, "the forced state did not lapse"
        time.sleep(0.05)
    breaker = admin.call("GET", "/api/v1/breakers/api-payments", "viewer")[2]
    assert (breaker["state"], breaker["forced"]) == ("closed", None)
    assert breaker["transitions"][0]["cause"] == "forced state expired"


def test_a_forced_state_with_an_expiry_lapses_by_itself(admin: Admin) -> None:
    lapses(admin)


def test_a_forced_state_with_an_expiry_lapses_by_itself_on_redis(redis_admin: Admin) -> None:
    lapses(redis_admin)


def test_every_change_is_audited_and_no_key_is_ever_logged(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin.call("GET", "/api/v1/breakers", "wrong key")
    admin.force("open", reason="deploy of\nthe provider", for_seconds=600)
    admin.force("reset", reason="deploy done")
    admin.call("POST", "/api/v1/limits/default/clients/203.0.113.9/reset", "operator", {"reason": "support ticket"})
    status, _, audit = admin.call("GET", "/api/v1/audit", "admin")
    assert status == 200
    entries = audit["entries"]
    assert [(e["action"], e["target"], e["reason"], e["for_seconds"]) for e in entries] == [
        ("limit.reset_client", "default/203.0.113.9", "support ticket", None),
        ("breaker.reset", "api-payments", "deploy done", None),
        ("breaker.open", "api-payments", "deploy of\nthe provider", 600),
    ]
    assert {e["key_id"] for e in entries} == {key_id(KEYS["operator"])}
    assert all(abs(e["at"] - time.time()) < 60 for e in entries)
    changes = [r.getMessage() for r in caplog.records if "admin.change" in r.getMessage()]
    assert len(changes) == 3
    assert all("\n" not in line for line in changes)  # a reason cannot forge a log line
    logged = "\n".join(r.getMessage() + repr(getattr(r, "baldur", "")) for r in caplog.records)
    assert not [key for key in [*KEYS.values(), "not-a-key-of-this-server"] if key in logged]


def test_the_audit_is_the_fleets_on_redis(redis_admin: Admin) -> None:
    redis_admin.force("open", reason="from one admin server")
    other = Admin(redis_admin.app)  # the same store: another server reading it sees the same audit
    entries = other.call("GET", "/api/v1/audit?limit=5", "admin")[2]["entries"]
    assert entries[0]["reason"] == "from one admin server"
    assert redis_admin.force("reset")[0] == 200


# -- bad input ------------------------------------------------------------------------------------

BAD_BODIES: list[tuple[bytes, str]] = [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b'"open"', "body"),
    (json.dumps({"reason": "x", "for": 60}).encode(), "for"),
    (json.dumps({"for_seconds": 60}).encode(), "reason"),
    (json.dumps({"reason": ""}).encode(), "reason"),
    (json.dumps({"reason": "   "}).encode(), "reason"),
    (json.dumps({"reason": 42}).encode(), "reason"),
    (json.dumps({"reason": "x" * (MAX_REASON + 1)}).encode(), "reason"),
    (json.dumps({"reason": "x", "for_seconds": -5}).encode(), "for_seconds"),
    (json.dumps({"reason": "x", "for_seconds": 0}).encode(), "for_seconds"),
    (json.dumps({"reason": "x", "for_seconds": MAX_FOR_SECONDS + 1}).encode(), "for_seconds"),
    (json.dumps({"reason": "x", "for_seconds": 1e300}).encode(), "for_seconds"),
    (b'{"reason": "x", "for_seconds": NaN}', "for_seconds"),
    (json.dumps({"reason": "x", "for_seconds": "10m"}).encode(), "for_seconds"),
    (json.dumps({"reason": "x", "for_seconds": True}).encode(), "for_seconds"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[body.decode()[:40] for body, _ in BAD_BODIES])
def test_a_bad_body_is_a_400_naming_the_field_and_changes_nothing(admin: Admin, body: bytes, field: str) -> None:
    status, headers, answer = admin.call("POST", "/api/v1/breakers/api-payments/open", "operator", raw=body)
    assert (status, headers["content-type"], answer["field"]) == (400, PROBLEM, field), answer
    assert admin.view() == 200
    assert admin.call("GET", "/api/v1/audit", "admin")[2]["entries"] == []


def test_a_reset_takes_no_expiry(admin: Admin) -> None:
    status, _, answer = admin.force("reset", for_seconds=60)
    assert (status, answer["field"]) == (400, "for_seconds")


@pytest.mark.parametrize("path", ["/api/v1/breakers/nope", "/api/v1/breakers/nope/open",
                                  "/api/v1/breakers/%3Cscript%3E"])
def test_an_unknown_breaker_is_a_404(admin: Admin, path: str) -> None:
    method = "POST" if path.endswith("/open") else "GET"
    status, headers, answer = admin.call(method, path, "operator", {"reason": "x"} if method == "POST" else None)
    assert (status, headers["content-type"]) == (404, PROBLEM), answer


def test_an_unknown_route_or_method_is_answered_not_a_500(admin: Admin) -> None:
    assert admin.call("GET", "/api/v2/breakers", "admin")[0] == 404
    assert admin.call("DELETE", "/api/v1/breakers/api-payments", "admin")[0] in (404, 405)
    assert admin.call("POST", "/", "admin", {"reason": "x"})[0] == 405
    assert admin.call("GET", "/console/../../etc/passwd", None)[0] == 404


def test_a_body_over_the_limit_is_refused_unread(admin: Admin) -> None:
    status, _, answer = admin.call("POST", "/api/v1/breakers/api-payments/open", "operator",
                                   raw=json.dumps({"reason": "x" * 40_000}).encode())
    assert status == 413, answer


# -- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "says"), [
    ("root:0123456789abcdef0123", "unknown role 'root'"),
    ("viewer:", "the key is empty"),
    ("viewer:short-key", "a key needs at least 16"),
    ("viewer:0123456789abcdef,admin:0123456789abcdef", "entry 2"),
    ("operator", "expected role:key"),
])
def test_a_malformed_key_list_is_a_config_error_naming_the_entry_never_the_key(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        baldur.init(admin_keys=value)
    message = str(caught.value)
    assert says in message
    for entry in value.split(","):
        secret = entry.partition(":")[2]
        if len(secret) >= 5:
            assert secret not in message


def test_keys_from_a_file_with_comments_and_newlines(tmp_path: Path) -> None:
    path = tmp_path / "admin-keys"
    path.write_text(f"# the on-call rota\nviewer:{KEYS['viewer']}\n\noperator:{KEYS['operator']}  # Kim\n")
    keys = parse_admin_keys("BALDUR_ADMIN_KEYS", f"@{path}", "")
    assert keys.lookup(KEYS["operator"]) is not None and keys.lookup(KEYS["operator"]).role.name == "OPERATOR"
    assert keys.lookup(KEYS["admin"]) is None
    assert KEYS["viewer"] not in repr(keys)  # held as digests: the object never shows a key
    admin = make_admin(keys=f"@{path}")
    assert admin.call("GET", "/api/v1/whoami", "viewer")[0] == 200
    assert admin.call("GET", "/api/v1/whoami", "admin")[0] == 401


def test_without_keys_the_mount_answers_503_and_is_never_open() -> None:
    admin = make_admin(keys=None)
    for role in ("admin", "no key"):
        status, headers, answer = admin.call("GET", "/api/v1/breakers", role)
        assert (status, headers["content-type"]) == (503, PROBLEM)
        assert "BALDUR_ADMIN_KEYS" in answer["detail"]


# -- brute force ----------------------------------------------------------------------------------


def test_wrong_keys_are_throttled_per_client_even_with_a_good_key_then(admin: Admin) -> None:
    assert [admin.call("GET", "/api/v1/whoami", "wrong key", remote="192.0.2.1")[0] for _ in range(10)] == [401] * 10
    status, headers, _ = admin.call("GET", "/api/v1/whoami", "wrong key", remote="192.0.2.1")
    assert (status, headers["content-type"]) == (429, PROBLEM)
    assert 1 <= int(headers["retry-after"]) <= 60
    assert admin.call("GET", "/api/v1/whoami", "viewer", remote="192.0.2.1")[0] == 429
    assert admin.call("GET", "/api/v1/whoami", "viewer", remote="192.0.2.2")[0] == 200  # another client


# -- Host and Origin ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "origin", "status"), [
    ("localhost", None, 200),
    ("127.0.0.1:9180", None, 200),
    ("[::1]:9180", None, 200),
    ("evil.example", None, 403),  # DNS rebinding: a name the attacker controls, resolving to 127.0.0.1
    ("127.0.0.1.evil.example", None, 403),
    ("localhost", "http://localhost", 200),
    ("localhost", "http://evil.example", 403),
    ("localhost", "null", 403),
    ("admin.example.internal", None, 200),  # listed in BALDUR_ADMIN_HOSTS below
    ("admin.example.internal", "https://admin.example.internal", 200),
])
def test_host_and_origin_are_checked(host: str, origin: str | None, status: int) -> None:
    admin = make_admin(admin_hosts="admin.example.internal")
    headers = {"Host": host} if origin is None else {"Host": host, "Origin": origin}
    answer = admin.call("GET", "/api/v1/whoami", "viewer", headers=headers)
    assert answer[0] == status, answer[2]


# -- the ASGI face (baldur admin) ----------------------------------------------------------------


def asgi_call(method: str, path: str, headers: dict[str, str], body: bytes = b"",
              client: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request through AdminASGI with the messages a server sends (the protocol, not a stand-in)."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1:9180", **headers}.items()],
             "client": (client, 50000), "server": ("127.0.0.1", 9180)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(AdminASGI(), scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    body_out = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body_out


@pytest.mark.parametrize("caller", CALLERS)
def test_the_asgi_face_answers_each_caller_by_its_role(admin: Admin, caller: str) -> None:
    for n, (method, path, lowest) in enumerate(ROUTES):
        headers = {} if caller == "no key" else {
            "authorization": f"Bearer {KEYS.get(caller, 'not-a-key-of-this-server')}"}
        body = json.dumps({"reason": "asgi"}).encode() if method == "POST" else b""
        if body:
            headers["content-type"] = "application/json"
        # A client of its own per request: the failed attempts of one do not throttle the next.
        status, answer_headers, _ = asgi_call(method, path, headers, body, client=f"198.51.100.{n + 1}")
        assert status == expected_status(caller, lowest), (method, path, caller)
        assert answer_headers["content-security-policy"] == CSP


def test_a_name_with_a_slash_stays_one_segment(admin: Admin) -> None:
    assert admin.call("GET", "/api/v1/breakers/pay%2Fments", "viewer")[0] == 404
    status, _, _ = asgi_call("GET", "/api/v1/breakers/pay%2Fments", {"authorization": f"Bearer {KEYS['viewer']}"})
    assert status == 404

