"""The admin API as a sans-I/O async core: ``AdminApp.handle(request) -> response``.

The faces (``_asgi.py`` for ``baldur admin`` under uvicorn, ``_wsgi.py`` for a
Flask mount, a Django adapter) turn their requests into an ``AdminRequest``
and send the ``AdminResponse`` back; everything else (the Host and Origin
checks, keys and roles, the brute-force limit, the routes, the audit) lives
here, once. The API reads and writes the store, so on Redis one admin server
sees and steers every worker.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from baldur import _log, _runtime
from baldur._options import declared_breaker
from baldur._protection import live_protections
from baldur._version import __version__
from baldur.adapters._http import normalise_address
from baldur.admin._keys import AdminKeys, Principal, Role
from baldur.errors import StoreUnavailable
from baldur.policies.breaker import Breaker, State
from baldur.policies.rate_limit import RateLimit
from baldur.stores._admin import AuditEntry, BreakerView, Forced, Transition

__all__ = ["CSP", "AdminApp", "AdminRequest", "AdminResponse", "NotAuthorised", "Principal", "Role"]

#: The console's Content-Security-Policy (and every answer's: none of them may be framed or run script).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: Failed authentications a client address may make (fleet-wide on Redis) before 429.
FAILED_ATTEMPTS = RateLimit("10/minute")
MAX_REASON = 500
MAX_FOR_SECONDS = 604_800  # a week
MAX_BODY = 16 * 1024
MAX_AUDIT_LIMIT = 1000
#: The name under which the web hooks' per-client limit (``BALDUR_RATE_LIMIT``) is listed and reset.
PER_CLIENT_POLICY = "default"
_CONSOLE_FILES = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
                  "console.css": "text/css; charset=utf-8"}
_SECURITY_HEADERS = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
]
_logger = logging.getLogger("baldur.admin")


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """One HTTP request, as a face hands it over.

    ``path`` is relative to where the API is mounted and still percent-encoded
    (a breaker's name may hold a ``/``: ``%2F`` must stay inside its segment);
    ``headers`` has lower-case names; ``client`` is the peer's address;
    ``root`` is the mount's own path (``/_baldur``), for redirects.
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client: str = ""
    root: str = ""


@dataclass(frozen=True, slots=True)
class AdminResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class NotAuthorised:
    """A face that authenticates requests itself (Django: the user and its groups) found no role:
    an API route answers ``status`` (401: nobody logged in; 403: a user without a role)."""

    status: int
    detail: str


class _Problem(Exception):
    """An answer in application/problem+json (RFC 9457)."""

    def __init__(self, status: int, title: str, detail: str, *, field: str | None = None,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field = status, title, detail, field
        self.headers = headers or []

    def response(self) -> AdminResponse:
        body: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status,
                                "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        return _respond(self.status, body, content_type="application/problem+json", extra=self.headers)


class _AdminStore(Protocol):
    """The operations the admin needs from a store (both stores have them; ``MemoryStore``'s are sync)."""

    def admin_breaker_names(self) -> Any: ...
    def admin_read_breaker(self, name: str, options: Breaker) -> Any: ...
    def admin_force(self, name: str, options: Breaker, target: State, forced: Forced | None, cause: str) -> Any: ...
    def admin_transitions(self, name: str, limit: int) -> Any: ...
    def admin_audit_append(self, entry: AuditEntry) -> Any: ...
    def admin_audit(self, limit: int) -> Any: ...
    def admin_reset_client(self, name: str, client: str, per_client_policy: bool) -> Any: ...
    def admin_in_flight(self, name: str) -> Any: ...


async def _call(store: _AdminStore, operation: str, *args: Any) -> Any:
    """A store operation, awaited if the store does I/O (Redis), called if it does not (memory)."""
    result = getattr(store, operation)(*args)
    if isinstance(result, Awaitable):
        return await result
    return result


_Handler = Callable[["AdminApp", "_Context"], Awaitable[AdminResponse]]


@dataclass(slots=True)
class _Context:
    request: AdminRequest
    principal: Principal
    runtime: _runtime.Runtime
    params: list[str]


class AdminApp:
    """The admin API. ``keys``/``hosts`` default to the runtime's ``BALDUR_ADMIN_KEYS`` and
    ``BALDUR_ADMIN_HOSTS``; ``per_client_limit`` is the web hooks' per-client limit, if any."""

    def __init__(self, *, keys: AdminKeys | None = None, hosts: tuple[str, ...] | None = None,
                 per_client_limit: RateLimit | None = None, host_checked: bool = False) -> None:
        self._keys = keys
        self._hosts = hosts
        #: The face has validated ``Host`` itself (Django, against its ``ALLOWED_HOSTS``).
        self._host_checked = host_checked
        self.per_client_limit = per_client_limit
        self._warned_no_keys = False
        #: Client address → when (monotonic) its failed attempts stop being refused here.
        self._blocked: dict[str, float] = {}

    # -- the entry point ------------------------------------------------------------

    async def handle(self, request: AdminRequest,
                     principal: Principal | NotAuthorised | None = None) -> AdminResponse:
        """Answer ``request``. ``principal``: who is asking, when the face authenticated the
        request itself (a Django adapter); else the bearer key decides."""
        try:
            return await self._handle(request, principal)
        except _Problem as problem:
            return problem.response()
        except StoreUnavailable as exc:
            return _Problem(503, "Store unavailable", str(exc), headers=[("retry-after", "1")]).response()

    async def _handle(self, request: AdminRequest, principal: Principal | NotAuthorised | None) -> AdminResponse:
        runtime = _runtime.current()
        self._check_host(request, runtime)
        segments = _segments(request.path)
        method = request.method.upper()
        if segments in ([], [""]) or segments[0] == "console":
            return self._console(request, method, segments)
        route = _match(method, segments)
        if principal is None:
            principal = await self._authenticate(request, runtime)
        elif isinstance(principal, NotAuthorised):
            if principal.status == 401:
                raise _Problem(401, "Unauthorized", principal.detail,
                               headers=[("www-authenticate", 'Session realm="baldur"')])
            raise _Problem(403, "Forbidden", principal.detail)
        handler, role, params = route
        if principal.role < role:
            raise _Problem(403, "Forbidden", f"this needs the {role} role; key {principal.key_id} has the "
                                             f"{principal.role} role")
        return await handler(self, _Context(request, principal, runtime, params))

    # -- checks ---------------------------------------------------------------------

    def _check_host(self, request: AdminRequest, runtime: _runtime.Runtime) -> None:
        """Against DNS rebinding: the Host must be loopback or listed; a present Origin must be this Host."""
        host = request.headers.get("host", "")
        name = _host_name(host)
        hosts = self._hosts if self._hosts is not None else runtime.settings.admin_hosts
        if not self._host_checked and (name is None or not (_is_loopback(name) or name in hosts)):
            raise _Problem(403, "Host not allowed",
                           f"the admin API answers only to loopback hosts and those of BALDUR_ADMIN_HOSTS, "
                           f"not Host {_log.escape(host[:100])!r}")
        origin = request.headers.get("origin")
        if origin is not None:
            parts = urllib.parse.urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower() or parts.path:
                raise _Problem(403, "Origin not allowed",
                               f"Origin {_log.escape(origin[:100])!r} is not this server's ({host!r})")

    async def _authenticate(self, request: AdminRequest, runtime: _runtime.Runtime) -> Principal:
        keys = self._keys if self._keys is not None else runtime.settings.admin_keys
        if not keys:
            if not self._warned_no_keys:
                self._warned_no_keys = True
                _logger.warning("the admin API refuses every request: no key is configured "
                                "(set BALDUR_ADMIN_KEYS, e.g. BALDUR_ADMIN_KEYS=@/etc/baldur/admin-keys)")
            raise _Problem(503, "Admin API not configured",
                           "no admin key is configured (BALDUR_ADMIN_KEYS); the admin API never serves without one",
                           headers=[("retry-after", "3600")])
        # An IPv6 client is its network (BALDUR_IPV6_PREFIX): rotating addresses earns no fresh guesses.
        client = normalise_address(request.client or "unknown", runtime.settings.ipv6_prefix)
        blocked_until = self._blocked.get(client, 0.0)
        wait = blocked_until - time.monotonic()
        if wait > 0:
            raise _too_many(wait)
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        principal = keys.lookup(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
        if principal is not None:
            return principal
        decision = await runtime.async_.rate(f"admin-auth:{client}", FAILED_ATTEMPTS)
        if not decision.allowed:
            if len(self._blocked) >= 10_000:
                self._blocked.clear()
            self._blocked[client] = time.monotonic() + decision.retry_after
            raise _too_many(decision.retry_after)
        why = "no bearer key was sent" if not key.strip() else "the key is not one of BALDUR_ADMIN_KEYS"
        raise _Problem(401, "Unauthorized", f"{why}: send Authorization: Bearer <key>",
                       headers=[("www-authenticate", 'Bearer realm="baldur"')])

    # -- the console ----------------------------------------------------------------

    def _console(self, request: AdminRequest, method: str, segments: list[str]) -> AdminResponse:
        if method not in ("GET", "HEAD"):
            raise _Problem(405, "Method not allowed", f"{method} is not allowed here",
                           headers=[("allow", "GET, HEAD")])
        if not segments and request.path == "":
            location = (request.root or "") + "/"
            return AdminResponse(308, [("location", location), *_SECURITY_HEADERS], b"")
        name = "index.html" if segments in ([], [""]) else "/".join(segments[1:])
        content_type = _CONSOLE_FILES.get(name)
        folder = resources.files("baldur.admin") / "console"
        if content_type is None or not (folder / name).is_file():
            raise _Problem(404, "Not found", f"the console has no file {_log.escape(name[:100])!r}")
        body = (folder / name).read_bytes()
        headers = [("content-type", content_type), ("cache-control", "no-cache"), *_SECURITY_HEADERS]
        return AdminResponse(200, headers, b"" if method == "HEAD" else body)

    # -- the routes -----------------------------------------------------------------

    async def whoami(self, ctx: _Context) -> AdminResponse:
        return _respond(200, {"key_id": ctx.principal.key_id, "role": str(ctx.principal.role)})

    async def health(self, ctx: _Context) -> AdminResponse:
        runtime = ctx.runtime
        degraded = runtime.shared and bool(getattr(runtime.async_, "down", False))
        return _respond(200, {"status": "degraded" if degraded else "ok",
                              "store": "redis" if runtime.shared else "memory", "version": __version__})

    async def breakers(self, ctx: _Context) -> AdminResponse:
        store = _store(ctx.runtime)
        names = set(_declared_breakers()) | set(await _call(store, "admin_breaker_names"))
        views = [await self._view(ctx.runtime, store, name) for name in sorted(names)]
        return _respond(200, {"breakers": views})

    async def breaker(self, ctx: _Context) -> AdminResponse:
        store = _store(ctx.runtime)
        name = await self._known(ctx, store)
        body = await self._view(ctx.runtime, store, name)
        transitions: list[Transition] = await _call(store, "admin_transitions", name, 50)
        body["transitions"] = [{"at": t.at, "from": t.source, "to": t.target, "cause": t.cause} for t in transitions]
        return _respond(200, body)

    async def force(self, ctx: _Context) -> AdminResponse:
        store = _store(ctx.runtime)
        name = await self._known(ctx, store)
        action = ctx.params[1]
        fields = _body(ctx.request, required={"reason"}, optional={"for_seconds"} if action != "reset" else set())
        reason = _reason(fields)
        for_seconds = _for_seconds(fields)
        target = {"open": State.FORCED_OPEN, "close": State.FORCED_CLOSED, "reset": State.CLOSED}[action]
        now = time.time()
        forced = None
        if target is not State.CLOSED:
            until = None if for_seconds is None else now + for_seconds
            forced = Forced(target, reason, ctx.principal.key_id, now, until)
        cause = f"{'reset' if action == 'reset' else 'forced ' + action} by {ctx.principal.key_id}"
        options = _options_of(ctx.runtime, name)
        await _call(store, "admin_force", name, options, target, forced, cause)
        await self._audit(ctx, store, f"breaker.{action}", name, reason, for_seconds)
        return _respond(200, await self._view(ctx.runtime, store, name))

    async def limits(self, ctx: _Context) -> AdminResponse:
        store = _store(ctx.runtime)
        limits: dict[str, dict[str, Any]] = {}
        per_client = self.per_client_limit or ctx.runtime.settings.rate_limit
        if per_client.enabled:
            limits[PER_CLIENT_POLICY] = {"name": PER_CLIENT_POLICY, "rate_limit": per_client.spec,
                                         "max_concurrency": None, "in_flight": 0}
        for protection in live_protections():
            options = protection.options
            if (options.rate_limit is None and options.max_concurrency is None) or options.name in limits:
                continue
            in_flight = await _call(store, "admin_in_flight", options.name) if options.max_concurrency else 0
            limits[options.name] = {
                "name": options.name,
                "rate_limit": options.rate_limit.spec if options.rate_limit is not None else None,
                "max_concurrency": options.max_concurrency, "in_flight": in_flight,
            }
        return _respond(200, {"limits": [limits[name] for name in sorted(limits)]})

    async def reset_client(self, ctx: _Context) -> AdminResponse:
        store = _store(ctx.runtime)
        name, client = ctx.params[0], ctx.params[1]
        fields = _body(ctx.request, required={"reason"}, optional=set())
        reason = _reason(fields)
        known = {p.options.name for p in live_protections() if p.options.rate_limit is not None}
        if name != PER_CLIENT_POLICY and name not in known:
            raise _Problem(404, "Not found", f"no rate limit is declared under the name {_shown(name)}")
        if not client or len(client) > 200:
            raise _Problem(400, "Bad request", "the client must be 1 to 200 characters", field="client")
        await _call(store, "admin_reset_client", name, client, name == PER_CLIENT_POLICY)
        await self._audit(ctx, store, "limit.reset_client", f"{name}/{client}", reason, None)
        return _respond(200, {"name": name, "client": client, "reset": True})

    async def audit(self, ctx: _Context) -> AdminResponse:
        raw = ctx.request.query.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_AUDIT_LIMIT:
            raise _Problem(400, "Bad request", f"limit must be a whole number from 1 to {MAX_AUDIT_LIMIT}",
                           field="limit")
        entries: list[AuditEntry] = await _call(_store(ctx.runtime), "admin_audit", int(raw))
        return _respond(200, {"entries": [
            {"at": e.at, "key_id": e.key_id, "action": e.action, "target": e.target, "reason": e.reason,
             "for_seconds": e.for_seconds} for e in entries]})

    async def metrics(self, ctx: _Context) -> AdminResponse:
        try:
            from baldur.admin._metrics import render_metrics  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise _Problem(404, "Not found", "metrics are not part of this build") from None
        text: str = await render_metrics(ctx.runtime)
        return AdminResponse(200, [("content-type", "text/plain; version=0.0.4; charset=utf-8"),
                                   ("cache-control", "no-store"), *_SECURITY_HEADERS], text.encode())

    # -- helpers --------------------------------------------------------------------

    async def _known(self, ctx: _Context, store: _AdminStore) -> str:
        name = ctx.params[0]
        if name in _declared_breakers() or name in await _call(store, "admin_breaker_names"):
            return name
        raise _Problem(404, "Not found", f"no breaker is named {_shown(name)}")

    async def _view(self, runtime: _runtime.Runtime, store: _AdminStore, name: str) -> dict[str, Any]:
        options = _options_of(runtime, name)
        view: BreakerView = await _call(store, "admin_read_breaker", name, options)
        return _breaker_json(view, options)

    async def _audit(self, ctx: _Context, store: _AdminStore, action: str, target: str, reason: str,
                     for_seconds: float | None) -> None:
        entry = AuditEntry(time.time(), ctx.principal.key_id, action, target, reason, for_seconds)
        _logger.warning("admin.change: %s %s by %s: %s", action, _log.escape(target), _log.escape(entry.key_id),
                        _log.escape(reason), extra={"baldur": {
                            "event": "admin.change", "name": target, "action": action, "key_id": entry.key_id,
                            "reason": reason, "for_seconds": for_seconds}})
        await _call(store, "admin_audit_append", entry)


_ROUTES: list[tuple[str, re.Pattern[str], Role, _Handler]] = [
    ("GET", re.compile(r"api/v1/whoami"), Role.VIEWER, AdminApp.whoami),
    ("GET", re.compile(r"api/v1/health"), Role.VIEWER, AdminApp.health),
    ("GET", re.compile(r"api/v1/breakers"), Role.VIEWER, AdminApp.breakers),
    ("GET", re.compile(r"api/v1/breakers/([^/]+)"), Role.VIEWER, AdminApp.breaker),
    ("POST", re.compile(r"api/v1/breakers/([^/]+)/(open|close|reset)"), Role.OPERATOR, AdminApp.force),
    ("GET", re.compile(r"api/v1/limits"), Role.VIEWER, AdminApp.limits),
    ("POST", re.compile(r"api/v1/limits/([^/]+)/clients/([^/]+)/reset"), Role.OPERATOR, AdminApp.reset_client),
    ("GET", re.compile(r"api/v1/audit"), Role.ADMIN, AdminApp.audit),
    ("GET", re.compile(r"metrics"), Role.VIEWER, AdminApp.metrics),
]


def _segments(path: str) -> list[str]:
    """The path's segments, still encoded (``/a%2Fb/c`` → ``["a%2Fb", "c"]``); ``/`` → ``[""]``."""
    if path in ("", "/"):
        return [] if path == "" else [""]
    return path.lstrip("/").split("/")


def _match(method: str, segments: list[str]) -> tuple[_Handler, Role, list[str]]:
    joined = "/".join(segments)
    allowed = []
    for route_method, pattern, role, handler in _ROUTES:
        found = pattern.fullmatch(joined)
        if found is None:
            continue
        if route_method == method:
            return handler, role, [urllib.parse.unquote(group) for group in found.groups()]
        allowed.append(route_method)
    if allowed:
        raise _Problem(405, "Method not allowed", f"{method} is not allowed here",
                       headers=[("allow", ", ".join(sorted(set(allowed))))])
    raise _Problem(404, "Not found", f"no such route: /{_log.escape(joined[:200])}")


def _host_name(host: str) -> str | None:
    """The name of a Host header without its port, lower case (``[::1]:9180`` → ``::1``)."""
    host = host.strip().lower()
    if not host:
        return None
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        return inside if bracket and (not rest or re.fullmatch(r":\d{1,5}", rest)) else None
    name, _, port = host.partition(":")
    return name if name and (not port or port.isdigit()) else None


def _is_loopback(name: str) -> bool:
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _too_many(wait: float) -> _Problem:
    seconds = max(1, math.ceil(wait))
    return _Problem(429, "Too many failed attempts",
                    f"too many failed authentications from this address; retry after {seconds} s",
                    headers=[("retry-after", str(seconds))])


def _body(request: AdminRequest, *, required: set[str], optional: set[str]) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise _Problem(413, "Body too large", f"the body must be at most {MAX_BODY} bytes")
    try:
        fields = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Problem(400, "Malformed JSON", f"the body is not JSON ({exc})", field="body") from None
    if not isinstance(fields, dict):
        raise _Problem(400, "Bad request", 'the body must be a JSON object, e.g. {"reason": "deploy"}',
                       field="body")
    for name in fields:
        if name not in required | optional:
            known = ", ".join(sorted(required | optional))
            raise _Problem(400, "Unknown field", f"unknown field {_shown(name)}; known: {known}", field=name)
    for name in sorted(required):
        if name not in fields:
            raise _Problem(400, "Missing field", f"the field {name!r} is required", field=name)
    return fields


def _reason(fields: dict[str, Any]) -> str:
    reason = fields["reason"]
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise _Problem(400, "Bad request", f"reason must be a string of 1 to {MAX_REASON} characters",
                       field="reason")
    return reason


def _for_seconds(fields: dict[str, Any]) -> float | None:
    value = fields.get("for_seconds")
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 1 <= value <= MAX_FOR_SECONDS:
        raise _Problem(400, "Bad request", f"for_seconds must be a number of seconds from 1 to {MAX_FOR_SECONDS}",
                       field="for_seconds")
    return float(value)


def _shown(name: str) -> str:
    return repr(_log.escape(name[:200]))


def _declared_breakers() -> set[str]:
    return {p.options.name for p in live_protections() if p.options.breaker is not None}


def _options_of(runtime: _runtime.Runtime, name: str) -> Breaker:
    declared = declared_breaker(name)
    return declared.inherit(runtime.default_breaker) if isinstance(declared, Breaker) else runtime.default_breaker


def _store(runtime: _runtime.Runtime) -> _AdminStore:
    # The memory store's operations take no I/O: its sync face is called directly.
    store: _AdminStore = runtime.async_ if runtime.shared else runtime.sync  # type: ignore[assignment]
    return store


def _breaker_json(view: BreakerView, options: Breaker) -> dict[str, Any]:
    state = view.state
    shown = {State.FORCED_OPEN: "open", State.FORCED_CLOSED: "closed"}.get(state, str(state))
    open_until = None
    if state is State.OPEN and view.opened_at is not None:
        open_until = view.opened_at + options.open_for
    elif state is State.FORCED_OPEN and view.forced is not None:
        open_until = view.forced.until
    forced = None
    if view.forced is not None:
        forced = {"state": "open" if view.forced.state is State.FORCED_OPEN else "closed",
                  "reason": view.forced.reason, "until": view.forced.until, "by": view.forced.by,
                  "at": view.forced.at}
    return {
        "name": view.name, "state": shown,
        "failure_rate": view.failures / view.calls if view.calls else None,
        "calls": view.calls, "failures": view.failures, "opened_at": view.opened_at, "open_until": open_until,
        "forced": forced,
    }


def _respond(status: int, body: object, *, content_type: str = "application/json",
             extra: list[tuple[str, str]] | None = None) -> AdminResponse:
    headers = [("content-type", content_type), ("cache-control", "no-store"), *_SECURITY_HEADERS, *(extra or [])]
    return AdminResponse(status, headers, json.dumps(body).encode())
