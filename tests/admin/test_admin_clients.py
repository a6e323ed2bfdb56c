"""Who counts as one client for the admin API's brute-force limit (10 failed keys a minute):
an IPv6 client is its network, and behind trusted proxies the address they saw."""

from __future__ import annotations

import flask
import pytest

import baldur
from baldur.adapters.flask import init_flask

VIEWER = "viewer-key-0123456789"
WHOAMI = "/_baldur/api/v1/whoami"


def admin_app(**options: object) -> flask.Flask:
    baldur.init(admin_keys=f"viewer:{VIEWER}")
    app = flask.Flask(__name__)
    init_flask(app, admin="/_baldur", **options)  # type: ignore[arg-type]
    return app


def guess(app: flask.Flask, remote: str, forwarded_for: str | None = None, key: str = "wrong-key-0123456789") -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    answer = app.test_client().get(WHOAMI, headers=headers, environ_base={"REMOTE_ADDR": remote})
    return answer.status_code


def test_rotating_ipv6_addresses_inside_one_network_earns_no_fresh_guesses() -> None:
    app = admin_app()
    answers = [guess(app, f"2001:db8:1:2::{n:x}") for n in range(1, 13)]
    assert answers[:10] == [401] * 10
    assert answers[10:] == [429, 429]
    assert guess(app, "2001:db8:1:2::ffff", key=VIEWER) == 429  # the whole /64 waits, even with a good key
    assert guess(app, "2001:db8:1:3::1", key=VIEWER) == 200  # the next network is another client


@pytest.mark.parametrize("trust_proxy", [0, 1])
def test_behind_a_trusted_proxy_one_attacker_does_not_lock_out_the_operators(trust_proxy: int) -> None:
    app = admin_app(trust_proxy=trust_proxy)
    proxy = "10.0.0.5"
    for _ in range(11):
        guess(app, proxy, forwarded_for="203.0.113.66")
    operator_gets_in = guess(app, proxy, forwarded_for="198.51.100.7", key=VIEWER) == 200
    # Without trust_proxy every request is the proxy's: the attacker's failures are everybody's.
    assert operator_gets_in is (trust_proxy == 1)


def test_a_forged_forwarded_for_does_not_earn_fresh_guesses_without_trust() -> None:
    app = admin_app()
    answers = [guess(app, "192.0.2.9", forwarded_for=f"198.51.100.{n}") for n in range(12)]
    assert answers[10:] == [429, 429]
