"""Hostile requests never make Baldur's hooks fail: arbitrary header values (text and
raw latin-1 bytes, as a WSGI server hands them over), random header names, 8 KiB
headers and paths that are not UTF-8. Never a 500, never an exception out of the app."""

from __future__ import annotations

import asyncio
import string
import time
from typing import Any

from _flask_support import new_app
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import baldur
from baldur.adapters.flask import init_flask


def _acceptable(status: int) -> bool:
    """Anything but a server error; 503 is load shedding (an old ``X-Request-Start``)."""
    return status < 500 or status == 503


#: What an HTTP server can hand over as a header value: latin-1 text without CR, LF or NUL.
_LATIN1 = st.characters(min_codepoint=1, max_codepoint=255, blacklist_characters="\r\n")


def _header_value() -> st.SearchStrategy[str]:
    raw = st.binary(max_size=64).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))
    return st.one_of(
        st.text(_LATIN1, max_size=64),
        raw.map(lambda b: b.decode("latin-1")),
        st.text(_LATIN1, min_size=1, max_size=8).map(lambda s: (s * 8192)[:8192]),  # 8 KiB
        st.lists(st.ip_addresses().map(str), max_size=6).map(", ".join),
        st.integers(min_value=-(10**20), max_value=10**20).map(lambda n: f"t={n}"),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"t={f}"),
        # Around now, in s, ms, µs and ns: some shed (503), some not, some in the future.
        st.tuples(st.floats(-7200, 7200), st.sampled_from([1, 1e3, 1e6, 1e9]))
        .map(lambda d: f"t={(time.time() - d[0]) * d[1]:.0f}"),
        st.sampled_from(["", " ", ",", "t=", "unknown", '"quoted-key"', "Bearer x", "[::1]", "\x7f", "\xff\xfe"]),
    )


_TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_NAMES = st.one_of(
    st.sampled_from(["X-Forwarded-For", "X-Request-Start", "Idempotency-Key", "Authorization", "X-Api-Key",
                     "Forwarded", "X-Real-Ip", "Content-Length", "Host"]),
    st.text(st.sampled_from(_TOKEN), min_size=1, max_size=40),
)
_PATHS = st.one_of(
    st.just("/p"),
    st.just("/a"),
    st.sampled_from(["/p", "/a", "/free", "/%ff%fe", "/p/%ff", "/%c0%af", "/%00", "//p", "/p?%ff=%fe", "/..%2f",
                     "/" + "a" * 8192]),
    st.binary(max_size=32).map(lambda b: "/" + "".join(f"%{byte:02x}" for byte in b)),
    st.text(st.characters(min_codepoint=33, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)), max_size=32)
    .map(lambda s: "/" + s.lstrip("/")),  # ("//x" is a network path to the test client: host x)
)


def _app() -> Flask:
    app = new_app("fuzzed")
    app.config["PROPAGATE_EXCEPTIONS"] = True  # a bug is an exception out of the test client
    init_flask(app, rate_limit="1000/second", trust_proxy=1)

    @app.route("/p", methods=["GET", "POST"])
    @baldur.protected("fuzz-sync", max_concurrency=50)
    def sync_view() -> str:
        return "ok"

    @app.route("/a", methods=["GET", "POST"])
    @baldur.protected("fuzz-async", rate_limit="1000/second")
    async def async_view() -> str:
        await asyncio.sleep(0)
        return "ok"

    @app.get("/free")
    def free() -> str:
        return "ok"

    return app


APP = _app()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(
    path=_PATHS,
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "DELETE"]),
    known=st.dictionaries(st.sampled_from(["X-Forwarded-For", "X-Request-Start", "Idempotency-Key",
                                           "Authorization"]), _header_value(), max_size=4),
    extra=st.lists(st.tuples(_NAMES, _header_value()), max_size=4),
    remote_addr=st.one_of(st.ip_addresses().map(str), st.sampled_from(["", "unknown", "::"])),
)
def test_hostile_requests_never_get_a_500(path: str, method: str, known: dict[str, str],
                                          extra: list[tuple[str, str]], remote_addr: str) -> None:
    headers: list[tuple[str, str]] = [*known.items(), *extra]
    environ: dict[str, Any] = {"REMOTE_ADDR": remote_addr}
    response = APP.test_client().open(path, method=method, headers=headers, environ_base=environ, buffered=True)
    assert _acceptable(response.status_code), (response.status_code, response.data[:500])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=48), header=_header_value())
def test_raw_non_utf8_path_info_never_gets_a_500(raw: bytes, header: str) -> None:
    # What a WSGI server puts in PATH_INFO for /%ff%fe...: the bytes, decoded as latin-1.
    for path in ("/p", "/a"):
        environ = {"PATH_INFO": path + raw.decode("latin-1"), "HTTP_X_FORWARDED_FOR": header,
                   "HTTP_X_REQUEST_START": header}
        response = APP.test_client().get(environ_overrides=environ, buffered=True)
        assert _acceptable(response.status_code)


def test_the_fuzzed_app_still_answers_normally() -> None:
    client = APP.test_client()
    assert client.get("/p", buffered=True).data == b"ok"
    assert client.get("/a", buffered=True).data == b"ok"
    assert client.get("/%ff%fe", buffered=True).status_code == 404
