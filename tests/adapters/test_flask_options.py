"""``init_flask`` options: the client key, precedence (argument > app.config > environment >
default), misconfiguration failing at init, and one runtime per process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from _flask_support import KINDS, add_view, new_app
from flask import Flask, Request

import baldur
from baldur import _runtime
from baldur.adapters.flask import init_flask

FRESH = Callable[[], baldur.Runtime]


def _one_per_minute(kind: str = "sync", **options: Any) -> Flask:
    app = new_app()
    init_flask(app, rate_limit="1/minute", **options)
    add_view(app, "/r", kind, lambda: "ok")
    return app


def _status(app: Flask, remote_addr: str = "192.0.2.1", **headers: str) -> int:
    return app.test_client().get("/r", environ_base={"REMOTE_ADDR": remote_addr}, headers=headers,
                                 buffered=True).status_code


# -- the client key ----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_client_is_the_remote_address_by_default(kind: str) -> None:
    app = _one_per_minute(kind)
    assert _status(app, "192.0.2.1") == 200
    assert _status(app, "192.0.2.1") == 429
    assert _status(app, "192.0.2.2") == 200


def test_a_forged_forwarded_for_is_ignored_without_trust_proxy() -> None:
    app = _one_per_minute()
    assert _status(app, **{"X-Forwarded-For": "203.0.113.1"}) == 200
    assert _status(app, **{"X-Forwarded-For": "203.0.113.2"}) == 429  # same socket peer: same client
    assert _status(app) == 429


def test_with_one_trusted_proxy_the_last_hop_is_the_client() -> None:
    app = _one_per_minute(trust_proxy=1)
    proxy = "10.0.0.1"
    assert _status(app, proxy, **{"X-Forwarded-For": "198.51.100.7, 203.0.113.1"}) == 200
    # The client forged the first entry; the proxy appended what it saw: still 203.0.113.1.
    assert _status(app, proxy, **{"X-Forwarded-For": "198.51.100.8, 203.0.113.1"}) == 429
    assert _status(app, proxy, **{"X-Forwarded-For": "203.0.113.1"}) == 429
    assert _status(app, proxy, **{"X-Forwarded-For": "203.0.113.2"}) == 200
    assert _status(app, proxy) == 200  # no header: the proxy itself is the client


def test_with_two_trusted_proxies_the_second_hop_from_the_right_is_the_client() -> None:
    app = _one_per_minute(trust_proxy=2)
    proxy = "10.0.0.2"
    assert _status(app, proxy, **{"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.0.0.1"}) == 200
    assert _status(app, proxy, **{"X-Forwarded-For": "198.51.100.2,203.0.113.9 , 10.0.0.7"}) == 429
    assert _status(app, proxy, **{"X-Forwarded-For": "203.0.113.10, 10.0.0.1"}) == 200
    # Fewer hops than trusted proxies: the header is not believed, the peer is the key.
    assert _status(app, proxy, **{"X-Forwarded-For": "203.0.113.11"}) == 200
    assert _status(app, proxy, **{"X-Forwarded-For": "203.0.113.12"}) == 429


@pytest.mark.parametrize(
    "forwarded_for",
    ["not-an-ip", "203.0.113.1, ", "203.0.113.1,,", "999.1.1.1", "\x00", "::1]:80", "a" * 5000],
)
def test_a_malformed_forwarded_for_falls_back_to_the_remote_address(forwarded_for: str) -> None:
    app = _one_per_minute(trust_proxy=1)
    assert _status(app, "10.0.0.1", **{"X-Forwarded-For": forwarded_for}) == 200
    assert _status(app, "10.0.0.1") == 429  # the same key as the bare peer
    assert _status(app, "10.0.0.1", **{"X-Forwarded-For": forwarded_for}) == 429


def test_an_ipv6_hop_is_normalised() -> None:
    app = _one_per_minute(trust_proxy=1)
    assert _status(app, "10.0.0.1", **{"X-Forwarded-For": "2001:DB8::1"}) == 200
    assert _status(app, "10.0.0.1", **{"X-Forwarded-For": "[2001:db8:0::1]"}) == 429
    assert _status(app, "2001:db8::1") == 429


def test_key_func_keys_by_api_token() -> None:
    def by_token(request: Request) -> str | None:
        return request.headers.get("X-Api-Key")

    app = _one_per_minute(key_func=by_token)
    assert _status(app, "192.0.2.1", **{"X-Api-Key": "alice"}) == 200
    assert _status(app, "192.0.2.2", **{"X-Api-Key": "alice"}) == 429  # another address, same token
    assert _status(app, "192.0.2.1", **{"X-Api-Key": "bob"}) == 200
    # No token: the key falls back to the address, which has its own quota.
    assert _status(app, "192.0.2.3") == 200
    assert _status(app, "192.0.2.3") == 429


def test_key_func_keys_a_route_limit_too() -> None:
    app = new_app()
    init_flask(app, key_func=lambda request: request.headers.get("X-Api-Key"))
    add_view(app, "/r", "sync", lambda: "ok", protect=baldur.protected("per-token", rate_limit="1/minute"))
    assert _status(app, "192.0.2.1", **{"X-Api-Key": "alice"}) == 200
    assert _status(app, "192.0.2.2", **{"X-Api-Key": "alice"}) == 429
    assert _status(app, "192.0.2.1", **{"X-Api-Key": "bob"}) == 200


def test_key_func_must_be_callable() -> None:
    with pytest.raises(baldur.ConfigError, match="key_func"):
        init_flask(new_app(), key_func="X-Api-Key")  # type: ignore[arg-type]


# -- precedence: argument > app.config > environment > default ----------------------------

def _quota(app: Flask) -> str | None:
    add_view(app, "/r", "sync", lambda: "ok")
    return app.test_client().get("/r", buffered=True).headers.get("RateLimit-Policy")


def test_the_argument_wins_over_app_config_and_environment(monkeypatch: pytest.MonkeyPatch,
                                                            fresh_runtime: FRESH) -> None:
    monkeypatch.setenv("BALDUR_RATE_LIMIT", "7/minute")
    fresh_runtime()
    app = new_app()
    app.config["BALDUR_RATE_LIMIT"] = "5/minute"
    init_flask(app, rate_limit="3/minute")
    assert _quota(app) == '"default";q=3;w=60'


def test_app_config_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch, fresh_runtime: FRESH) -> None:
    monkeypatch.setenv("BALDUR_RATE_LIMIT", "7/minute")
    fresh_runtime()
    app = new_app()
    app.config["BALDUR_RATE_LIMIT"] = "5/minute"
    init_flask(app)
    assert _quota(app) == '"default";q=5;w=60'


def test_the_environment_wins_over_the_default(monkeypatch: pytest.MonkeyPatch, fresh_runtime: FRESH) -> None:
    monkeypatch.setenv("BALDUR_RATE_LIMIT", "7/minute")
    fresh_runtime()
    app = new_app()
    init_flask(app)
    assert _quota(app) == '"default";q=7;w=60'


def test_the_default_is_no_rate_limit(monkeypatch: pytest.MonkeyPatch, fresh_runtime: FRESH) -> None:
    monkeypatch.delenv("BALDUR_RATE_LIMIT", raising=False)
    fresh_runtime()
    app = new_app()
    init_flask(app)
    assert _quota(app) is None


def test_an_explicit_off_switches_a_configured_limit_off(monkeypatch: pytest.MonkeyPatch, fresh_runtime: FRESH) -> None:
    monkeypatch.setenv("BALDUR_RATE_LIMIT", "7/minute")
    fresh_runtime()
    app = new_app()
    app.config["BALDUR_RATE_LIMIT"] = "5/minute"
    init_flask(app, rate_limit="off")
    assert _quota(app) is None


def test_baldur_init_settings_are_the_environment_layer(monkeypatch: pytest.MonkeyPatch,
                                                        fresh_runtime: FRESH) -> None:
    monkeypatch.setenv("BALDUR_RATE_LIMIT", "7/minute")
    fresh_runtime()  # (restores the suite's runtime afterwards)
    runtime = baldur.init(rate_limit="9/minute")  # init's settings override the environment
    app = new_app()
    assert init_flask(app) is runtime
    assert _quota(app) == '"default";q=9;w=60'


def test_trust_proxy_and_max_concurrency_follow_the_same_order(monkeypatch: pytest.MonkeyPatch,
                                                                fresh_runtime: FRESH) -> None:
    monkeypatch.setenv("BALDUR_TRUST_PROXY", "2")
    monkeypatch.setenv("BALDUR_MAX_CONCURRENCY", "40")
    fresh_runtime()
    app = new_app()
    app.config["BALDUR_TRUST_PROXY"] = "1"
    init_flask(app)
    options = app.extensions["baldur"]
    assert options.trust_proxy == 1 and options.process_ceiling == 40
    other = new_app()
    other.config["BALDUR_MAX_CONCURRENCY"] = 3
    init_flask(other, trust_proxy=0)
    options = other.extensions["baldur"]
    assert options.trust_proxy == 0 and options.process_ceiling == 3
    # Behaviour, not only the attribute: trust_proxy=1 from app.config takes the last hop.
    limited = new_app()
    limited.config.update(BALDUR_TRUST_PROXY="1", BALDUR_RATE_LIMIT="1/minute")
    init_flask(limited)
    add_view(limited, "/r", "sync", lambda: "ok")
    assert _status(limited, "10.0.0.1", **{"X-Forwarded-For": "203.0.113.1"}) == 200
    assert _status(limited, "10.0.0.2", **{"X-Forwarded-For": "203.0.113.1"}) == 429


# -- misconfiguration fails at init_flask -----------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "config", "names"),
    [
        ({"rate_limit": "lots"}, {}, ["rate_limit", "'lots'"]),
        ({"trust_proxy": -1}, {}, ["trust_proxy", "-1"]),
        ({"max_concurrency": 0}, {}, ["max_concurrency", "0"]),
        ({}, {"BALDUR_TRUST_PROXY": "x"}, ["app.config['BALDUR_TRUST_PROXY']", "'x'"]),
        ({}, {"BALDUR_RATE_LIMIT": "100/fortnight"}, ["BALDUR_RATE_LIMIT", "fortnight"]),
        ({}, {"BALDUR_MAX_CONCURRENCY": "many"}, ["BALDUR_MAX_CONCURRENCY", "'many'"]),
        ({"idempotency": "sometimes"}, {}, ["idempotency", "'sometimes'"]),
    ],
)
def test_misconfiguration_fails_at_init_flask_naming_the_setting(
        kwargs: dict[str, Any], config: dict[str, Any], names: list[str]) -> None:
    app = new_app()
    app.config.update(config)
    with pytest.raises(baldur.ConfigError) as caught:
        init_flask(app, **kwargs)
    message = str(caught.value)
    for name in names:
        assert name in message
    assert "for example" in message
    assert "baldur" not in app.extensions


def test_a_bad_environment_value_fails_when_the_runtime_is_built(monkeypatch: pytest.MonkeyPatch,
                                                                  fresh_runtime: FRESH) -> None:
    monkeypatch.setenv("BALDUR_TRUST_PROXY", "two")
    with pytest.raises(baldur.ConfigError, match="BALDUR_TRUST_PROXY"):
        fresh_runtime()


# -- one runtime per process ----------------------------------------------------------

def test_a_second_app_reuses_the_same_runtime() -> None:
    first = init_flask(new_app("first"))
    second = init_flask(new_app("second"), rate_limit="5/minute")
    assert first is second
    assert first is _runtime.current()
    assert first is baldur.init()


def test_two_apps_share_breakers_but_keep_their_own_in_flight_ceiling() -> None:
    one, two = new_app("one"), new_app("two")
    init_flask(one, max_concurrency=1)
    init_flask(two, max_concurrency=5)
    for app in (one, two):
        add_view(app, "/s", "sync", lambda: "ok", protect=baldur.protected("shared"))
    baldur.breaker("shared").open()
    assert one.test_client().get("/s", buffered=True).status_code == 503
    assert two.test_client().get("/s", buffered=True).status_code == 503
    assert one.extensions["baldur"].in_flight is not two.extensions["baldur"].in_flight


# -- app.config keys that would be ignored are named ------------------------------------------------

def test_a_misspelt_app_config_key_warns_at_the_users_line_with_the_closest_name() -> None:
    app = new_app()
    app.config["BALDUR_RATE_LIMT"] = "5/minute"
    with pytest.warns(UserWarning, match=r"app.config\['BALDUR_RATE_LIMT'\] is ignored: no such setting; "
                                         r"did you mean BALDUR_RATE_LIMIT\?") as caught:
        init_flask(app)
    assert [w.filename for w in caught] == [__file__]


def test_a_process_wide_setting_in_app_config_warns_where_it_belongs() -> None:
    app = new_app()
    app.config["BALDUR_REDIS_URL"] = "redis://localhost:6379/0"
    with pytest.warns(UserWarning, match=r"BALDUR_REDIS_URL'\] is ignored: it is a process-wide setting: set it "
                                         r"in the environment or baldur.init\(redis_url=...\)"):
        init_flask(app)


def test_app_config_set_after_init_flask_is_named_once_at_the_first_request(
        caplog: pytest.LogCaptureFixture) -> None:
    app = new_app()
    init_flask(app)
    app.config["BALDUR_RATE_LIMIT"] = "1/minute"
    add_view(app, "/r", "sync", lambda: "ok")
    client = app.test_client()
    assert [client.get("/r").status_code for _ in range(3)] == [200, 200, 200]  # ignored, as the warning says
    warnings = [r.getMessage() for r in caplog.records if r.name == "baldur"]
    assert warnings == ["app.config['BALDUR_RATE_LIMIT'] was set after init_flask(app) and is ignored: set it "
                        "before calling init_flask(app), or pass it to init_flask"]


def test_app_config_set_before_init_flask_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    app = _one_per_minute()
    assert _status(app) == 200
    assert [r for r in caplog.records if r.name == "baldur"] == []


def test_an_unmatched_route_spends_no_quota() -> None:
    app = _one_per_minute()
    client = app.test_client()
    assert [client.get("/nowhere").status_code, client.post("/r").status_code] == [404, 405]
    assert _status(app) == 200
    assert _status(app) == 429
