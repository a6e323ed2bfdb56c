"""HTTP pieces every web adapter shares: problem+json answers, the IETF RateLimit
headers, the client's address behind trusted proxies, and queue time.

Framework-neutral: functions of strings and numbers, returning strings,
numbers and dicts.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
from collections.abc import Iterable

from baldur.errors import (
    BaldurError,
    CallTimeout,
    CircuitOpen,
    IdempotencyConflict,
    IdempotencyMismatch,
    Overloaded,
    RateLimited,
    Rejected,
    StoreUnavailable,
)
from baldur.policies.rate_limit import RateDecision, RateLimit

__all__ = [
    "MAX_IDEMPOTENCY_KEY",
    "PROBLEM_JSON",
    "bad_request",
    "client_address",
    "normalise_address",
    "parse_idempotency_key",
    "problem",
    "queue_seconds",
    "ratelimit_headers",
    "retry_after_header",
]

PROBLEM_JSON = "application/problem+json"
_IANA = "https://iana.org/assignments/http-problem-types#"
#: How far back an ``X-Request-Start`` may plausibly lie; older is clock skew, not queueing.
_PLAUSIBLE_QUEUE_SECONDS = 3600.0
_MAX_HEADER = 4096
#: What a 503 for an unavailable store tells the client to wait: a store that is down is probed twice a second.
_STORE_RETRY_AFTER = 1.0
#: Float arithmetic on clock readings is off by a few ulps: 30.000000000002 s is 30 s, not 31.
_ROUNDING_SLACK = 1e-6


def _whole_seconds(seconds: float) -> int:
    """``seconds`` rounded up to a whole number, forgiving float noise below a microsecond."""
    return max(0, math.ceil(seconds - _ROUNDING_SLACK))


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1 (0 would invite a stampede)."""
    return str(max(1, _whole_seconds(seconds)))


def _sf_string(text: str) -> str:
    """A Structured Field String: printable ASCII, with ``"`` and ``\\`` escaped."""
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=256)
def _policy_item(name: str, limit: RateLimit) -> tuple[str, str]:
    """A policy's label and its ``RateLimit-Policy`` item: the same on every answer, so made once
    (policies are the application's, a few, never the client's)."""
    label = _sf_string(name)
    return label, f"{label};q={limit.quota};w={max(1, math.ceil(limit.period))}"


def ratelimit_headers(policies: Iterable[tuple[str, RateLimit, RateDecision]]) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers) for each policy."""
    policy_items, state_items = [], []
    for name, limit, decision in policies:
        label, policy_item = _policy_item(name, limit)
        policy_items.append(policy_item)
        state_items.append(f"{label};r={decision.remaining};t={_whole_seconds(decision.next_after)}")
    if not policy_items:
        return {}
    return {"RateLimit-Policy": ", ".join(policy_items), "RateLimit": ", ".join(state_items)}


def problem(exc: BaldurError, instance: str | None = None,
            policies: Iterable[str] = ()) -> tuple[int, dict[str, str], bytes]:
    """The HTTP answer for a Baldur error: (status, headers, RFC 9457 problem+json body)."""
    headers = {"Content-Type": PROBLEM_JSON}
    body: dict[str, object]
    if isinstance(exc, RateLimited):
        status = 429
        body = {"type": _IANA + "quota-exceeded", "title": "Too Many Requests",
                "detail": f"The rate limit of {exc.name!r} is used up.",
                "violated-policies": list(policies) or [exc.name]}
    elif isinstance(exc, Overloaded):
        status = 503
        body = {"type": _IANA + "temporary-reduced-capacity", "title": "Service Unavailable",
                "detail": "The server is at capacity; the request was shed before it ran."}
    elif isinstance(exc, CircuitOpen):
        status = 503
        body = {"type": _IANA + "temporary-reduced-capacity", "title": "Service Unavailable",
                "detail": f"The circuit breaker of {exc.name!r} is open."}
    elif isinstance(exc, IdempotencyConflict):
        status = 409
        body = {"type": "about:blank", "title": "Conflict",
                "detail": "A request with this Idempotency-Key is still being processed."}
    elif isinstance(exc, Rejected):
        status = exc.http_status
        body = {"type": "about:blank", "title": "Service Unavailable", "detail": str(exc)}
    elif isinstance(exc, CallTimeout):
        status = 504
        body = {"type": "about:blank", "title": "Gateway Timeout",
                "detail": f"{exc.name!r} did not finish within {exc.timeout:g} s."}
    elif isinstance(exc, IdempotencyMismatch):
        status = 422
        body = {"type": "about:blank", "title": "Unprocessable Content", "detail": str(exc)}
    elif isinstance(exc, StoreUnavailable):
        status = 503
        # Not str(exc): it names the store's host (the server's log has it); the client needs none of it.
        body = {"type": "about:blank", "title": "Service Unavailable",
                "detail": "A store this request needs is unavailable; the request was not processed."}
        headers["Retry-After"] = retry_after_header(_STORE_RETRY_AFTER)
    else:
        status = 500
        body = {"type": "about:blank", "title": "Internal Server Error", "detail": "An internal error occurred."}
    if isinstance(exc, Rejected):
        headers["Retry-After"] = retry_after_header(exc.retry_after)
        body["retry-after"] = int(headers["Retry-After"])
    body["status"] = status
    if instance is not None:
        body["instance"] = instance
    return status, headers, json.dumps(body).encode()


def bad_request(detail: str, instance: str | None = None) -> tuple[int, dict[str, str], bytes]:
    body = {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    return 400, {"Content-Type": PROBLEM_JSON}, json.dumps(body).encode()


def client_address(remote_addr: str | None, forwarded_for: str | None, trusted_hops: int,
                   forwarded: str | None = None, ipv6_prefix: int = 64) -> str:
    """The client's key from its address: ``remote_addr``, or with ``trusted_hops``
    proxies, the address that the outermost trusted proxy saw (Werkzeug
    ``ProxyFix(x_for=N)`` semantics) in ``X-Forwarded-For``, else in RFC 7239
    ``Forwarded``. Entries may carry a port (``1.2.3.4:5678``, ``[2001:db8::1]:80``).

    The address is normalised (``normalise_address``): an IPv6 client is its
    network of ``ipv6_prefix`` bits, an IPv4-mapped address its IPv4 address.
    A malformed or too short header falls back to ``remote_addr``: a forged
    header never earns a client a fresh key.
    """
    fallback = normalise_address(remote_addr or "unknown", ipv6_prefix)
    if trusted_hops <= 0:
        return fallback
    if forwarded_for:
        hops = [part.strip() for part in forwarded_for.split(",")] if len(forwarded_for) <= _MAX_HEADER else []
    elif forwarded:
        hops = _forwarded_for(forwarded) if len(forwarded) <= _MAX_HEADER else []
    else:
        return fallback
    if len(hops) < trusted_hops:
        return fallback
    address = _strip_port(hops[-trusted_hops])
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return fallback
    return normalise_address(address, ipv6_prefix)


def normalise_address(address: str, ipv6_prefix: int = 64) -> str:
    """One key per client: an IPv6 address becomes its ``/ipv6_prefix`` network (one
    subscriber holds a whole /64), an IPv4-mapped IPv6 address its IPv4 address.
    Anything that is not an IP address (a unix socket's peer) is returned as it is."""
    if ":" not in address:
        return address  # IPv4 as servers write it (dotted quad), or not an IP address at all
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ipv6_prefix < 128:
            return str(ipaddress.IPv6Network((int(ip), ipv6_prefix), strict=False))
    return str(ip)


def _strip_port(entry: str) -> str:
    """``1.2.3.4:5678`` → ``1.2.3.4``, ``[::1]:80`` and ``[::1]`` → ``::1``; a bare IPv6 address stays."""
    entry = entry.strip().strip('"')
    if entry.startswith("["):
        return entry[1:entry.find("]")] if "]" in entry else entry
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


def _forwarded_for(header: str) -> list[str]:
    """The ``for=`` node of each element of an RFC 7239 ``Forwarded`` header, in order."""
    nodes = []
    for element in header.split(","):
        node = ""
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for":
                node = value.strip()
        nodes.append(node)
    return nodes


def queue_seconds(header: str | None, now: float) -> float | None:
    """Seconds a request waited before reaching the app, from ``X-Request-Start``.

    Accepts ``t=<seconds|ms|µs|ns>`` and a bare number; the unit is read off
    the magnitude. ``None`` when absent, malformed, in the future or
    implausibly old: clock skew between proxy and app is never a reason to shed.
    """
    if not header or len(header) > 64:
        return None
    text = header.strip()
    if text.startswith("t="):
        text = text[2:]
    try:
        stamp = float(text)
    except ValueError:
        return None
    if not math.isfinite(stamp) or stamp <= 0:
        return None
    for scale in (1e9, 1e6, 1e3, 1.0):  # ns, µs, ms, s since the epoch
        if stamp > 1e9 * scale * 0.5:
            stamp /= scale
            break
    waited = now - stamp
    if waited < 0 or waited > _PLAUSIBLE_QUEUE_SECONDS:
        return None
    return waited


MAX_IDEMPOTENCY_KEY = 255


def parse_idempotency_key(values: list[str]) -> str:
    """The key of the ``Idempotency-Key`` field(s), or ``ValueError`` saying what is wrong.

    The draft makes it a Structured Field String (``"8e03978e-…"``); a bare
    token is accepted too. 1–255 printable ASCII characters; the field sent
    twice with different values, or a list of keys, is an error.
    """
    if len(set(values)) > 1:
        raise ValueError("the Idempotency-Key header is repeated with different values")
    raw = values[0].strip(" \t")
    if raw.startswith('"'):
        key, rest = _sf_string_value(raw)
        if rest.strip(" \t"):
            raise ValueError("the Idempotency-Key must be one string, not a list or a string with parameters")
    else:
        key = raw
        if "," in key:
            raise ValueError("the Idempotency-Key must be one key, not a list")
        if any(not ("!" <= ch <= "~") or ch == '"' for ch in key):
            raise ValueError("an unquoted Idempotency-Key may hold printable ASCII characters only, "
                             "without spaces or quotes; quote it as a string otherwise")
    if not key:
        raise ValueError("the Idempotency-Key is empty")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValueError(f"the Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters")
    return key


def _sf_string_value(raw: str) -> tuple[str, str]:
    """Parse a Structured Field String at the start of ``raw``: (its value, what follows)."""
    out = []
    i = 1
    while i < len(raw):
        ch = raw[i]
        if ch == "\\":
            if i + 1 >= len(raw) or raw[i + 1] not in '"\\':
                raise ValueError('a string Idempotency-Key may escape only \\" and \\\\')
            out.append(raw[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), raw[i + 1:]
        if not (" " <= ch <= "~"):
            raise ValueError("the Idempotency-Key may hold printable ASCII characters only")
        out.append(ch)
        i += 1
    raise ValueError("the Idempotency-Key string is not terminated (a closing quote is missing)")
