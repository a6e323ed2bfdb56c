"""Unit tests of ``baldur.adapters._http``: queue time, the client's address, the IETF
RateLimit header fields and RFC 9457 problem answers."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baldur.adapters._http import (
    PROBLEM_JSON,
    bad_request,
    client_address,
    normalise_address,
    problem,
    queue_seconds,
    ratelimit_headers,
    retry_after_header,
)
from baldur.errors import (
    BaldurError,
    CallTimeout,
    CircuitOpen,
    ConfigError,
    IdempotencyConflict,
    IdempotencyMismatch,
    Overloaded,
    RateLimited,
    Rejected,
    StoreUnavailable,
)
from baldur.policies.rate_limit import RateDecision, RateLimit

NOW = 1_700_000_000.0  # seconds since the epoch (November 2023)


# -- queue_seconds ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("header", "waited"),
    [
        ("t=1699999999.5", 0.5),  # seconds (nginx $msec)
        ("t=1699999998", 2.0),
        ("t=1699999999500", 0.5),  # milliseconds (Heroku)
        ("t=1699999999500000", 0.5),  # microseconds (New Relic / Apache %t)
        ("t=1699999999500000000", 0.5),  # nanoseconds
        ("1699999999500", 0.5),  # a bare number
        ("  t=1699999999500  ", 0.5),
        ("t=1700000000000", 0.0),
        ("t=1699996400000", 3600.0),  # the oldest that is still believed
    ],
)
def test_queue_seconds_reads_the_unit_off_the_magnitude(header: str, waited: float) -> None:
    assert queue_seconds(header, NOW) == pytest.approx(waited, abs=1e-6)


@pytest.mark.parametrize(
    "header",
    [
        None, "", "t=", "t", "garbage", "t=12ab", "t=0", "t=-1", "t=nan", "t=inf", "t=-inf", "t=1e400",
        "t=1700000001000",  # in the future: clock skew
        "t=1699996399000",  # more than an hour ago: not a queue
        "t=1000",  # 1970, or a unit we cannot tell
        "t=" + "1" * 70,  # too long to be a timestamp
        "t=1699999999500, t=1699999999400",
    ],
)
def test_queue_seconds_ignores_what_is_not_a_plausible_arrival_time(header: str | None) -> None:
    assert queue_seconds(header, NOW) is None


@given(st.text(max_size=80))
def test_queue_seconds_never_raises_and_never_goes_negative(header: str) -> None:
    waited = queue_seconds(header, NOW)
    assert waited is None or 0.0 <= waited <= 3600.0


# -- client_address -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("remote", "forwarded", "hops", "expected"),
    [
        ("192.0.2.1", None, 0, "192.0.2.1"),
        ("192.0.2.1", "203.0.113.5", 0, "192.0.2.1"),  # never trusted by default
        (None, None, 0, "unknown"),
        ("10.0.0.1", "203.0.113.5", 1, "203.0.113.5"),
        ("10.0.0.1", "198.51.100.1, 203.0.113.5", 1, "203.0.113.5"),  # the last hop (ProxyFix x_for=1)
        ("10.0.0.1", "198.51.100.1, 203.0.113.5", 2, "198.51.100.1"),  # the second from the right
        ("10.0.0.1", "198.51.100.1,203.0.113.5,10.0.0.9", 2, "203.0.113.5"),
        ("10.0.0.1", "203.0.113.5", 2, "10.0.0.1"),  # fewer hops than proxies: not believed
        ("10.0.0.1", "", 1, "10.0.0.1"),
        ("10.0.0.1", "not-an-ip", 1, "10.0.0.1"),
        ("10.0.0.1", "203.0.113.5, not-an-ip", 1, "10.0.0.1"),
        ("10.0.0.1", "203.0.113.5,", 1, "10.0.0.1"),
        ("10.0.0.1", "203.0.113.5:8080", 1, "203.0.113.5"),  # a port is understood
        ("10.0.0.1", "[2001:db8::1]:4711", 1, "2001:db8::/64"),
        ("10.0.0.1", "2001:DB8:0:0::1", 1, "2001:db8::/64"),  # an IPv6 client is its /64
        ("10.0.0.1", "[2001:db8::1]", 1, "2001:db8::/64"),
        ("10.0.0.1", "::ffff:203.0.113.5", 1, "203.0.113.5"),  # IPv4-mapped: the IPv4 client
        ("::ffff:192.0.2.1", None, 0, "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", None, 0, "2001:db8:1:2::/64"),
        ("10.0.0.1", " 203.0.113.5 ", 1, "203.0.113.5"),
        ("10.0.0.1", "203.0.113.5, " + "1" * 5000, 1, "10.0.0.1"),  # oversized header
        ("10.0.0.1", "203.0.113.5", -1, "10.0.0.1"),
    ],
)
def test_client_address(remote: str | None, forwarded: str | None, hops: int, expected: str) -> None:
    assert client_address(remote, forwarded, hops) == expected


@given(remote=st.ip_addresses().map(str), forwarded=st.text(max_size=200), hops=st.integers(0, 5))
def test_client_address_is_the_peer_or_an_address_from_the_header(remote: str, forwarded: str, hops: int) -> None:
    key = client_address(remote, forwarded, hops)
    if key != normalise_address(remote):
        assert hops > 0
        parts = [_strip_port(p) for p in forwarded.split(",")]
        assert key in {normalise_address(p) for p in parts if _is_ip(p)}


@pytest.mark.parametrize(
    ("forwarded", "hops", "expected"),
    [
        ("for=203.0.113.5", 1, "203.0.113.5"),
        ('for="203.0.113.5:4711";proto=https', 1, "203.0.113.5"),
        ('for=198.51.100.1, for="[2001:db8::7]:80";by=10.0.0.1', 1, "2001:db8::/64"),
        ("for=198.51.100.1, For=203.0.113.5", 2, "198.51.100.1"),
        ("for=unknown", 1, "10.0.0.1"),  # an obfuscated node is not an address
        ("proto=https", 1, "10.0.0.1"),
        ("for=203.0.113.5", 0, "10.0.0.1"),  # never trusted by default
    ],
)
def test_rfc_7239_forwarded(forwarded: str, hops: int, expected: str) -> None:
    assert client_address("10.0.0.1", None, hops, forwarded) == expected


def test_x_forwarded_for_wins_over_forwarded() -> None:
    assert client_address("10.0.0.1", "203.0.113.5", 1, "for=198.51.100.1") == "203.0.113.5"


@pytest.mark.parametrize(("prefix", "expected"), [(48, "2001:db8:1::/48"), (64, "2001:db8:1:2::/64"),
                                                  (128, "2001:db8:1:2:3:4:5:6")])
def test_ipv6_prefix(prefix: int, expected: str) -> None:
    assert normalise_address("2001:db8:1:2:3:4:5:6", prefix) == expected


def _strip_port(entry: str) -> str:
    entry = entry.strip().strip('"')
    if entry.startswith("["):
        return entry[1:entry.find("]")] if "]" in entry else entry
    return entry.split(":", 1)[0] if entry.count(":") == 1 else entry


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# -- ratelimit_headers -------------------------------------------------------------------

#: RFC 9651 list of items: sf-string with parameters q/w (policy) or r/t (state).
_ITEM = r'"(?:[ !#-\[\]-~]|\\["\\])*"'
_POLICY = re.compile(rf"^{_ITEM};q=\d+;w=\d+(?:, {_ITEM};q=\d+;w=\d+)*$")
_STATE = re.compile(rf"^{_ITEM};r=\d+;t=\d+(?:, {_ITEM};r=\d+;t=\d+)*$")


def _decision(remaining: int, next_after: float, allowed: bool = True) -> RateDecision:
    return RateDecision(allowed, remaining, 0.0 if allowed else next_after, next_after, next_after)


def test_no_policy_no_headers() -> None:
    assert ratelimit_headers([]) == {}


@pytest.mark.parametrize(
    ("spec", "remaining", "next_after", "policy", "state"),
    [
        ("3/minute", 2, 20.0, '"default";q=3;w=60', '"default";r=2;t=20'),
        ("3/minute", 0, 19.2, '"default";q=3;w=60', '"default";r=0;t=20'),  # t rounds up
        ("100/minute", 99, 0.6, '"default";q=100;w=60', '"default";r=99;t=1'),
        ("10/second", 9, 0.1, '"default";q=10;w=1', '"default";r=9;t=1'),
        ("5000/hour", 4999, 0.72, '"default";q=5000;w=3600', '"default";r=4999;t=1'),
        ("10/5minutes", 9, 30.0, '"default";q=10;w=300', '"default";r=9;t=30'),
        ("3/minute", 3, 0.0, '"default";q=3;w=60', '"default";r=3;t=0'),  # full: nothing to wait for
        # Float noise of clock arithmetic (TAT − now) is not a whole extra second.
        ("2/minute", 1, 30.00000000000182, '"default";q=2;w=60', '"default";r=1;t=30'),
    ],
)
def test_ratelimit_header_values(spec: str, remaining: int, next_after: float, policy: str, state: str) -> None:
    headers = ratelimit_headers([("default", RateLimit(spec), _decision(remaining, next_after))])
    assert headers == {"RateLimit-Policy": policy, "RateLimit": state}


def test_several_policies_are_one_list_each() -> None:
    headers = ratelimit_headers([
        ("default", RateLimit("3/minute"), _decision(1, 20.0)),
        ("search", RateLimit("2/second"), _decision(0, 0.5)),
    ])
    assert headers["RateLimit-Policy"] == '"default";q=3;w=60, "search";q=2;w=1'
    assert headers["RateLimit"] == '"default";r=1;t=20, "search";r=0;t=1'


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("payments", '"payments"'),  # a String, never a Token
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("naïve→", '"na?ve?"'),  # sf-strings are printable ASCII
        ("tab\there\nnl", '"tab?here?nl"'),
        ("", '""'),
    ],
)
def test_policy_names_are_escaped_structured_field_strings(name: str, label: str) -> None:
    headers = ratelimit_headers([(name, RateLimit("1/second"), _decision(0, 1.0))])
    assert headers["RateLimit-Policy"] == f"{label};q=1;w=1"
    assert headers["RateLimit"] == f"{label};r=0;t=1"


@given(names=st.lists(st.text(max_size=20), min_size=1, max_size=4),
       remaining=st.integers(0, 10**6), next_after=st.floats(0, 1e6))
def test_ratelimit_headers_are_always_valid_structured_fields(names: list[str], remaining: int,
                                                              next_after: float) -> None:
    headers = ratelimit_headers([(n, RateLimit("7/minute"), _decision(remaining, next_after)) for n in names])
    assert _POLICY.match(headers["RateLimit-Policy"]), headers
    assert _STATE.match(headers["RateLimit"]), headers
    headers["RateLimit"].encode("ascii")


# -- problem() --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("exc", "status", "title", "kind"),
    [
        (RateLimited("search", 12.0), 429, "Too Many Requests", "quota-exceeded"),
        (Overloaded("server", 1.0), 503, "Service Unavailable", "temporary-reduced-capacity"),
        (CircuitOpen("payments", 29.5), 503, "Service Unavailable", "temporary-reduced-capacity"),
        (IdempotencyConflict("orders", 2.0), 409, "Conflict", None),
        (Rejected("other", 3.0), 503, "Service Unavailable", None),
        (CallTimeout("slow", 0.05), 504, "Gateway Timeout", None),
        (IdempotencyMismatch("the payload differs"), 422, "Unprocessable Content", None),
        (StoreUnavailable("redis is down"), 503, "Service Unavailable", None),  # Retry-After: every 503 has one
        (ConfigError("BALDUR_X", "y", "BALDUR_X=1"), 500, "Internal Server Error", None),
    ],
)
def test_problem_answers(exc: BaldurError, status: int, title: str, kind: str | None) -> None:
    code, headers, raw = problem(exc, "/some/path")
    body = json.loads(raw)
    assert code == status
    assert headers["Content-Type"] == PROBLEM_JSON
    assert body["status"] == status
    assert body["title"] == title
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["instance"] == "/some/path"
    if kind is None:
        assert body["type"] == "about:blank"
    else:
        assert body["type"] == f"https://iana.org/assignments/http-problem-types#{kind}"
    if isinstance(exc, Rejected):
        assert int(headers["Retry-After"]) >= 1
        assert body["retry-after"] == int(headers["Retry-After"])
    elif status == 503:
        assert int(headers["Retry-After"]) >= 1
    else:
        assert "Retry-After" not in headers


def test_an_internal_error_does_not_leak_its_message() -> None:
    _, _, raw = problem(ConfigError("BALDUR_SECRET", "hunter2", "x"))
    assert b"hunter2" not in raw and b"BALDUR_SECRET" not in raw
    assert "instance" not in json.loads(raw)


def test_a_rate_limit_problem_names_the_violated_policies() -> None:
    _, _, raw = problem(RateLimited("search", 1.0))
    assert json.loads(raw)["violated-policies"] == ["search"]
    _, _, raw = problem(RateLimited("search", 1.0), policies=["search", "default"])
    assert json.loads(raw)["violated-policies"] == ["search", "default"]


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(-5.0, "1"), (0.0, "1"), (0.001, "1"), (1.0, "1"), (1.2, "2"), (20.0, "20"), (19.9999, "20"),
     (20.000000000002, "20"), (86400.5, "86401")],
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header
    _, headers, _ = problem(CircuitOpen("c", seconds))
    assert headers["Retry-After"] == header


def test_bad_request() -> None:
    code, headers, raw = bad_request("Idempotency-Key is malformed", "/orders")
    assert code == 400
    assert headers == {"Content-Type": PROBLEM_JSON}
    assert json.loads(raw) == {"type": "about:blank", "title": "Bad Request", "status": 400,
                               "detail": "Idempotency-Key is malformed", "instance": "/orders"}
