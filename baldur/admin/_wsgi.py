"""The WSGI face of the admin API: ``init_flask(app, admin="/_baldur")`` mounts it in front of the app.

It sits outside Baldur's own middleware, so the admin stays reachable while
the app sheds load or is rate limited; ``AdminApp.handle`` runs through
Baldur's sync bridge.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from baldur.adapters._http import client_address
from baldur.admin._app import MAX_BODY, AdminApp, AdminRequest
from baldur.bridges import run_sync
from baldur.errors import ConfigError
from baldur.policies.rate_limit import RateLimit

__all__ = ["AdminMount", "check_prefix"]

_WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_REASONS = {200: "OK", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large", 429: "Too Many Requests",
            503: "Service Unavailable"}


def check_prefix(prefix: object) -> str:
    if (not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/")
            or "?" in prefix or "#" in prefix or "%" in prefix or not prefix.isascii()):
        raise ConfigError("init_flask(admin=...)", prefix, 'init_flask(app, admin="/_baldur")',
                          "a path that starts with / and does not end with one")
    return prefix


class AdminMount:
    """Answers the requests under ``prefix`` with the admin API; passes every other one to ``app``."""

    def __init__(self, app: _WSGIApp, prefix: str, per_client_limit: RateLimit | None = None,
                 trust_proxy: int = 0, ipv6_prefix: int = 64) -> None:
        self.app = app
        self.prefix = check_prefix(prefix)
        self.admin = AdminApp(per_client_limit=per_client_limit)
        #: Behind trusted proxies the client is the one they saw, as for the app's own per-client limit.
        self.trust_proxy, self.ipv6_prefix = trust_proxy, ipv6_prefix

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return self.app(environ, start_response)
        response = run_sync(self.admin.handle, self._request(environ))
        status = f"{response.status} {_REASONS.get(response.status, 'Status')}"
        headers = [*response.headers, ("content-length", str(len(response.body)))]
        start_response(status, headers)
        return [response.body]

    def _request(self, environ: dict[str, Any]) -> AdminRequest:
        script = environ.get("SCRIPT_NAME", "")
        mounted = script + self.prefix
        raw = (environ.get("RAW_URI") or environ.get("REQUEST_URI") or "").partition("?")[0]
        if raw.startswith(mounted):
            path = raw[len(mounted):]
        else:  # no raw URI from this server: a %2F inside a name has become a / (WSGI decodes PATH_INFO)
            decoded = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
            path = urllib.parse.quote(decoded[len(self.prefix):])
        headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(min(max(length, 0), MAX_BODY + 1)) if length > 0 else b""
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        client = client_address(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"), self.trust_proxy,
                                environ.get("HTTP_FORWARDED"), self.ipv6_prefix)
        return AdminRequest(environ.get("REQUEST_METHOD", "GET"), path, query, headers, body, client, mounted)
