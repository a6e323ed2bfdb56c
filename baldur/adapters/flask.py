"""Flask glue: ``init_flask(app)`` wraps the app in Baldur's WSGI layer.

The order of a request (docs/security.md draws it):

1. Before Flask does any work: load shedding (the per-process in-flight
   ceiling, queue time from ``X-Request-Start``), unless the route is exempt.
2. The first of all request hooks, before the app's own hooks and any
   decorator around the view: the per-client rate limit and, when the view
   is protected, its admission (per-route limit, concurrency, breaker
   pre-flight), in one store step. A limit holds whoever answers next: a 401
   from the app's auth counts, and the quota's end is a 429. Unmatched
   routes (404, 405) and exempt views spend no quota.
3. After every ``before_request`` hook (the app's authentication), when the
   view is dispatched: idempotency, scoped to the request's identity.
4. When the response has been sent: the outcome (an exception or a 5xx is a
   failure, a 4xx is not), the release of every slot.

Every ``Rejected`` becomes its HTTP answer (problem+json) with the
``RateLimit`` headers, never a 500.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any, cast

from flask import Flask, Request, Response, after_this_request, current_app, has_request_context, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from baldur import _log, _metrics, _runtime
from baldur._config import _parse_one, warn_unknown_app_config
from baldur._idempotency import Claim, fingerprint
from baldur._protection import Protection
from baldur.adapters import _web
from baldur.adapters._http import (
    bad_request,
    client_address,
    parse_idempotency_key,
    problem,
    queue_seconds,
    ratelimit_headers,
)
from baldur.adapters._replay import (
    IDEMPOTENT_METHODS,
    NEVER_STORED,
    credentials_identity,
    record,
    records_per_identity,
    replayed,
    too_large,
)
from baldur.adapters._shedding import _InFlight, _QueueShedder
from baldur.adapters._web import EXEMPT as _EXEMPT
from baldur.adapters._web import PROTECTED_BY, WebRequest, web_call
from baldur.errors import (
    BaldurError,
    CallTimeout,
    ConfigError,
    IdempotencyMismatch,
    Overloaded,
    RateLimited,
    Rejected,
    StoreUnavailable,
)
from baldur.policies.idempotency import Verdict
from baldur.policies.rate_limit import RateDecision, RateLimit
from baldur.policies.shedding import Priority

__all__ = ["init_flask"]

_EXTENSION = "baldur"
#: Where the hooks keep their per-request state (in the WSGI environ: cheaper than flask.g).
_STATE = "baldur.request"
_logger = logging.getLogger("baldur.idempotency")
#: The settings ``init_flask`` reads from ``app.config`` (the others are process-wide: environment or ``init()``).
_APP_CONFIG_KEYS = tuple(f"BALDUR_{name.upper()}" for name in (
    "rate_limit", "max_concurrency", "trust_proxy", "idempotency", "max_queue_ms"))
_flask_logger = logging.getLogger("baldur.flask")
_NORMAL = Priority.NORMAL


class _Request(WebRequest):
    """One request through the app: what the WSGI layer and the hooks remember."""

    #: The view's body is produced while it is sent (a generator): settle after sending.
    streamed = False

    # Set on each app's own subclass (``_Middleware``): a request is made with no ``__init__`` to run.
    app: Flask
    options: _Options

    def returned(self, result: Any) -> None:
        response = result[0] if type(result) is tuple and result else result
        if isinstance(response, Response):
            # (a body held as a list, as most are, is not streamed: spares the property's len())
            self.streamed = type(response.response) is not list and response.is_streamed
        else:
            self.streamed = isinstance(response, Iterator) or inspect.isasyncgen(response)

    #: Standing in for the view's call (``WebCall.stands_in_for``), a success is only its result to look at.
    succeeded = returned

    def error_status(self, error: BaseException) -> int | None:
        return (error.code or 500) if isinstance(error, HTTPException) else None

    def is_view(self, protection: Protection) -> bool:
        endpoint = request.endpoint
        view = self.app.view_functions.get(endpoint) if endpoint is not None else None
        return getattr(view, "__baldur__", None) is protection

    def client_key(self) -> str:
        if not self.client:
            self.client = _client_key(request._get_current_object(), self.options)  # type: ignore[attr-defined]
        return self.client

    def view_entered(self) -> bool:
        """The protected view's own call began (its body ran, or its fallback answered)."""
        return self.entered


class _Options:
    def __init__(self, app: Flask, runtime: _runtime.Runtime, rate_limit: RateLimit | str | None,
                 max_concurrency: int | str | None, key_func: Callable[[Request], str | None] | None,
                 trust_proxy: int | None, idempotency: str | None,
                 exempt: Iterable[str] = (), identity: Callable[[Request], object] | None = None) -> None:
        settings = runtime.settings

        def pick(name: str, explicit: Any, default: Any) -> Any:
            if explicit is not None:
                return _parse_one(name, explicit, origin="init_flask")
            configured = app.config.get(f"BALDUR_{name.upper()}")
            if configured is not None:
                return _parse_one(name, configured, origin="app.config")
            return default

        limit: RateLimit = pick("rate_limit", rate_limit, settings.rate_limit)
        #: ``rate_limit``: each client's limit across the app (the ``default`` policy in the headers).
        self.per_client_limit = limit if limit.enabled else None
        #: ``max_concurrency``: this process's ceiling on requests in flight (``None``: the server's own).
        self.process_ceiling: int | None = pick("max_concurrency", max_concurrency, settings.max_concurrency)
        self.trust_proxy: int = pick("trust_proxy", trust_proxy, settings.trust_proxy)
        self.idempotency: str = pick("idempotency", idempotency, settings.idempotency)
        self.idempotency_max_bytes = settings.idempotency_max_bytes
        #: New stored responses per identity per TTL: bounds what one identity keeps in the store.
        self.records_per_identity = records_per_identity(settings)
        max_queue: float | None = pick("max_queue_ms", None, settings.max_queue_ms)
        self.max_queue = None if max_queue is None else max_queue / 1000.0
        if key_func is not None and not callable(key_func):
            raise ConfigError("init_flask(key_func=...)", key_func,
                              "init_flask(app, key_func=lambda request: request.headers.get('X-Api-Key'))",
                              "a callable taking the request")
        self.key_func = key_func
        if identity is not None and not callable(identity):
            raise ConfigError("init_flask(identity=...)", identity,
                              "init_flask(app, identity=lambda request: flask_login.current_user.get_id())",
                              "a callable taking the request")
        self.identity = identity
        if isinstance(exempt, str) or not all(isinstance(name, str) for name in exempt):
            raise ConfigError("init_flask(exempt=...)", exempt, 'init_flask(app, exempt=["healthz", "metrics_bp"])',
                              "a list of endpoint or blueprint names")
        #: Endpoints and blueprints taken out of the per-client limit and shedding.
        self.exempt = frozenset(exempt)
        self.ipv6_prefix = settings.ipv6_prefix
        self.in_flight = _InFlight(self.process_ceiling)
        #: The views were checked for a decorator-order mistake (at the first request).
        self.views_checked = False
        #: Per endpoint: (the view's protection, whether the per-client limit applies).
        self.routes: dict[str | None, tuple[Protection | None, bool]] = {}


def init_flask(
    app: Flask,
    *,
    rate_limit: RateLimit | str | None = None,
    max_concurrency: int | str | None = None,
    key_func: Callable[[Request], str | None] | None = None,
    trust_proxy: int | None = None,
    idempotency: str | None = None,
    exempt: Iterable[str] = (),
    identity: Callable[[Request], object] | None = None,
    admin: str | None = None,
) -> _runtime.Runtime:
    """Wire Baldur into ``app``; returns the runtime (``baldur.init()`` is called once per process).

    Each option is read from the argument, else ``app.config["BALDUR_<NAME>"]``,
    else the ``BALDUR_<NAME>`` environment variable, else its default:
    ``rate_limit`` (per client, ``"off"``), ``max_concurrency`` (in-flight
    requests per process, ``auto``: no ceiling beyond the server's own
    threads), ``trust_proxy`` (proxy hops whose ``X-Forwarded-For`` is
    believed, 0), ``key_func(request)`` (the client key; default: the
    client's address; ``None`` falls back to it) and ``idempotency``.
    Not from the environment: ``exempt`` (endpoint or blueprint names taken
    out of the per-client limit and shedding, like ``@baldur.exempt``) and
    ``identity(request)`` (whose stored idempotent responses a request may
    receive; default: its credentials and client key), which is called
    after the app's ``before_request`` hooks have authenticated the request.
    ``admin`` (e.g. ``"/_baldur"``) mounts the admin API and Web Console at that
    path, in front of every hook (see docs/admin.md).
    """
    runtime = _runtime.current()
    warn_unknown_app_config(app.config, _APP_CONFIG_KEYS)
    options = _Options(app, runtime, rate_limit, max_concurrency, key_func, trust_proxy, idempotency,
                       exempt, identity)
    app.extensions[_EXTENSION] = options
    _web.install()
    app.wsgi_app = _Middleware(app, app.wsgi_app, options)  # type: ignore[method-assign]
    # Before all request hooks, the app's own (registered before or after this call), and
    # idempotency after them all: wrapping Flask's one step that runs them, rather than adding
    # hooks, spares every request Flask's per-hook checks.
    app.preprocess_request = _preprocessing(app.preprocess_request, options)  # type: ignore[method-assign]
    for error in (Rejected, CallTimeout, StoreUnavailable, IdempotencyMismatch):
        app.register_error_handler(error, _answer_error)
    if admin is not None:
        from baldur.admin._wsgi import AdminMount

        app.wsgi_app = AdminMount(app.wsgi_app, admin, options.per_client_limit,  # type: ignore[method-assign]
                                  options.trust_proxy, options.ipv6_prefix)
    return runtime


class _Middleware:
    """The WSGI layer: sheds before Flask does any work, and settles each request
    when its response has been sent (or the client went away): outcome,
    release, headers.
    """

    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]], options: _Options) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.options = options
        self.queue = _QueueShedder(options.max_queue)
        #: Whether any view has a priority other than normal (then each request is routed to find its own).
        self.prioritised: bool | None = None
        #: Whether any route is exempt from shedding (then a request about to be shed is routed first).
        self.any_exempt: bool | None = None
        #: ``app.config``'s Baldur keys as ``init_flask`` read them, until the first request compares.
        self.config_at_init: dict[str, Any] | None = _baldur_config(app)
        self.request_type = type("_Request", (_Request,), {"app": app, "options": options,
                                                          "requests_in_flight": options.in_flight})

    def priority(self, environ: dict[str, Any]) -> Priority:
        if self.prioritised is None:
            self.prioritised = any(getattr(view, "__baldur_priority__", Priority.NORMAL) is not Priority.NORMAL
                                   for view in self.app.view_functions.values())
        if not self.prioritised:
            return Priority.NORMAL
        try:
            endpoint, _ = self.app.url_map.bind_to_environ(environ).match()
        except HTTPException:
            return Priority.NORMAL
        view = self.app.view_functions.get(endpoint) if isinstance(endpoint, str) else None
        return getattr(view, "__baldur_priority__", Priority.NORMAL)

    def exempt_route(self, environ: dict[str, Any]) -> bool:
        """The request about to be shed goes to an exempt view (an app with none matches nothing:
        a shed request must cost as little as it can, or the 503s eat the capacity they protect)."""
        if self.any_exempt is None:
            self.any_exempt = bool(self.options.exempt) or any(
                getattr(view, _EXEMPT, False) for view in self.app.view_functions.values())
        return self.any_exempt and _exempt_route(self.app, self.options, environ)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.config_at_init is not None:
            self._warn_late_config()
        options = self.options
        priority = _NORMAL if self.prioritised is False else self.priority(environ)
        started = environ.get("HTTP_X_REQUEST_START")
        if started is not None:
            now = time.time()
            waited = queue_seconds(started, now)
            if waited is not None:
                runs, retry_after = self.queue.admits(now, waited, options.in_flight.adaptive.long_latency, priority)
                if not runs and not self.exempt_route(environ):
                    _log.emit("backpressure.shed", "queue", waited_ms=round(waited * 1000))
                    return _shed(environ, start_response, retry_after)
        state = self.request_type()
        if options.in_flight.enter(state, priority):
            state.in_flight = True
            state.admitted_at = time.monotonic()
        elif not self.exempt_route(environ):
            _log.emit("backpressure.shed", "in_flight", limit=options.process_ceiling)
            return _shed(environ, start_response, options.in_flight.retry_after())
        environ[_STATE] = state

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            state.status = int(status[:3])
            if state.policies and not state.rejected:
                headers.extend(ratelimit_headers(state.policies).items())
            return start_response(status, headers, exc_info)

        token = web_call.set(state)  # until the view has returned (a streamed body is sent after)
        try:
            body = self.wsgi_app(environ, capture)
        except BaseException:
            state.status = 500
            state.settle()
            raise
        finally:
            web_call.reset(token)
        if state.status and not state.streamed and (state.ticket is not None or state.lane is not None
                                                   or options.process_ceiling is None):
            # The view is done and the status known (a buffered body, a file): settle now,
            # and hand the body on untouched (a file keeps the server's zero-copy path).
            state.settle()
            return body
        return _Settling(body, state)

    def _warn_late_config(self) -> None:
        """``app.config`` changed after ``init_flask(app)`` read it: say so once, rather than ignore it silently."""
        before, self.config_at_init = self.config_at_init, None
        if before is None:
            return
        now = _baldur_config(self.app)
        for key in sorted(set(before) | set(now)):
            if (key in before, before.get(key)) != (key in now, now.get(key)):
                logging.getLogger("baldur").warning(
                    "app.config[%r] was set after init_flask(app) and is ignored: set it before calling "
                    "init_flask(app), or pass it to init_flask", key)


def _baldur_config(app: Flask) -> dict[str, Any]:
    return {key: value for key, value in app.config.items() if key.startswith("BALDUR_")}


class _Settling:
    """The response body, passed through; settles the request once, when sent or closed."""

    __slots__ = ("body", "state")

    def __init__(self, body: Iterable[bytes], state: _Request) -> None:
        self.body, self.state = body, state

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.body
        except GeneratorExit:
            raise  # closed early by the consumer (the client went away): not a failure of the view
        except BaseException:
            self.state.status = 500
            raise
        finally:
            # Sent (or abandoned): settle now rather than wait for a close() that
            # some callers of a WSGI app forget.
            self.state.settle()

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.state.settle()


def _shed(environ: dict[str, Any], start_response: Callable[..., Any], retry_after: float) -> Iterable[bytes]:
    # Straight to WSGI, without a Response object: under overload every 503 spends capacity.
    refusal = Overloaded("server", retry_after)
    _metrics.rejected(refusal, _metrics.SHED)
    status, headers, body = problem(refusal, environ.get("PATH_INFO"))
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [*headers.items(), ("Content-Length", str(len(body)))])
    return [body]


def _respond(answer: tuple[int, dict[str, str], bytes]) -> Response:
    status, headers, body = answer
    return Response(body, status=status, headers=headers)


def _answer_error(exc: BaldurError) -> Response:
    req = request._get_current_object()  # type: ignore[attr-defined]
    state: _Request | None = req.environ.get(_STATE)
    policies: tuple[tuple[str, RateLimit, RateDecision], ...] = ()
    if state is not None:
        # Baldur's own refusals are not outcomes of the view; a timeout is.
        state.rejected = isinstance(exc, Rejected)
        policies = state.policies
    if isinstance(exc, RateLimited) and exc.limit is not None and exc.decision is not None:
        policies = (*policies, (exc.name, exc.limit, exc.decision))
    # Only the policy that refused is violated; the others are listed in the headers.
    response = _respond(problem(exc, req.path))
    response.headers.update(ratelimit_headers(policies))
    return response


def _client_key(req: Request, options: _Options) -> str:
    if options.key_func is not None:
        try:
            key = options.key_func(req)
        except LookupError as exc:  # KeyError, IndexError: the request lacks what key_func reads
            _flask_logger.debug("key_func raised %r for %s: the client's address is its key",
                                exc, req.path)
            key = None
        if key is not None and key != "":
            return str(key)
        _flask_logger.debug("key_func returned nothing for %s: the client's address is its key", req.path)
    return client_address(req.remote_addr, req.environ.get("HTTP_X_FORWARDED_FOR"), options.trust_proxy,
                          req.environ.get("HTTP_FORWARDED"), options.ipv6_prefix)


def _is_exempt(options: _Options, endpoint: str | None, view: object, blueprints: Callable[[], Iterable[str]]) -> bool:
    if getattr(view, _EXEMPT, False):
        return True
    if not options.exempt:
        return False
    return endpoint in options.exempt or any(name in options.exempt for name in blueprints())


def _exempt_route(app: Flask, options: _Options, environ: dict[str, Any]) -> bool:
    """The request about to be shed goes to an exempt view (matched here: shedding runs before Flask)."""
    try:
        endpoint, _ = app.url_map.bind_to_environ(environ).match()
    except HTTPException:
        return False
    blueprints = []
    name = str(endpoint)
    while "." in name:
        name = name.rpartition(".")[0]
        blueprints.append(name)
    return _is_exempt(options, str(endpoint), app.view_functions.get(str(endpoint)), lambda: blueprints)


_current_request = cast(Any, request)._get_current_object


def _preprocessing(preprocess: Callable[[], Any], options: _Options) -> Callable[[], Any]:
    """``app.preprocess_request``: the request is admitted before any of the app's hooks run,
    and its Idempotency-Key claimed after they all have (Flask dispatches the view next)."""
    routes = options.routes
    per_client_limit = cast(RateLimit, options.per_client_limit)  # (a route is limited only when there is one)
    idempotent = IDEMPOTENT_METHODS if options.idempotency != "off" else ()

    @functools.wraps(preprocess)
    def preprocess_request() -> Any:
        req: Request = _current_request()
        state: _Request | None = req.environ.get(_STATE)
        rule = req.url_rule
        if state is None or rule is None:  # the WSGI layer was bypassed, or no route matched
            return preprocess()
        method = req.method
        route = routes.get(rule.endpoint)
        if route is None:
            route = routes[rule.endpoint] = _route(state.app, options, req)
        if route is not _NOTHING_TO_ADMIT and not (
                method == "OPTIONS" and getattr(rule, "provide_automatic_options", False)):
            # (an OPTIONS that Flask answers itself, a CORS preflight, never reaches a view)
            protection, limited = route
            refusal = state.admit_front(protection, state.per_client(per_client_limit) if limited else None)
            if refusal is not None:
                return _answer_error(refusal)
        answer = preprocess()
        if answer is None and method in idempotent:
            return _idempotency_begin(options)
        return answer

    return preprocess_request


#: The route of a view that is neither protected nor under the per-client limit.
_NOTHING_TO_ADMIT: tuple[Protection | None, bool] = (None, False)


def _route(app: Flask, options: _Options, req: Request) -> tuple[Protection | None, bool]:
    """(the protection of the endpoint's view, whether the per-client limit applies): looked
    up once per endpoint (Flask allows no new routes once it has served a request)."""
    if not options.views_checked:
        _check_views(app, options)
    endpoint = req.endpoint
    view = app.view_functions.get(endpoint) if endpoint is not None else None
    protection = getattr(view, "__baldur__", None)
    limited = options.per_client_limit is not None and not _is_exempt(options, endpoint, view, lambda: req.blueprints)
    if not isinstance(protection, Protection):
        return (None, True) if limited else _NOTHING_TO_ADMIT
    return protection, limited


def _check_views(app: Flask, options: _Options) -> None:
    """A function that ``protected`` wrapped, registered as a view in place of its wrapper
    (``@baldur.protected`` above ``@app.get``), is not protected at all: say so, once."""
    options.views_checked = True
    for endpoint, view in app.view_functions.items():
        name = getattr(view, PROTECTED_BY, None)
        if name is not None and getattr(view, "__baldur__", None) is None:
            _flask_logger.warning(
                "the view %r is registered without its protection %r: @baldur.protected must be placed "
                "below @app.route (closer to the function), or the route serves the unprotected function",
                endpoint, name)


def unwired_refusal(protection: Protection, exc: Rejected) -> Exception | None:
    """A protected view refused in an app that ``init_flask`` was not called on: log the fix
    once and answer with the refusal's status (instead of a 500), or ``None`` when the call
    is not a view of the current Flask request."""
    if not has_request_context():
        return None
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if _EXTENSION in app.extensions or not request.endpoint:
        return None
    view = app.view_functions.get(request.endpoint)
    if getattr(view, "__baldur__", None) is not protection:
        return None
    if not app.extensions.get("baldur.unwired_logged"):
        app.extensions["baldur.unwired_logged"] = True
        _flask_logger.error("the protected view %r was refused (%s) in a Flask app without Baldur's hooks: "
                            "call baldur.adapters.flask.init_flask(app) so that refusals become their HTTP "
                            "answers with their headers", request.endpoint, type(exc).__name__)
    return HTTPException(response=_respond(problem(exc, request.path)))


def _idempotency_begin(options: _Options) -> Response | None:
    """Claim the request's Idempotency-Key for its identity, replay its stored response, or refuse.

    Runs after the app's before_request hooks (its authentication) and after Baldur's
    admission: a replay, a conflict and a mismatch have spent the client's quota, and the
    body of a refused client is never read.
    """
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    state: _Request | None = req.environ.get(_STATE)
    if state is None or req.method not in IDEMPOTENT_METHODS or req.routing_exception is not None:
        return None
    values = req.headers.getlist("Idempotency-Key")
    if not values:
        if options.idempotency == "required":
            return _respond(bad_request(f"{req.method} {req.path} requires an Idempotency-Key header", req.path))
        return None
    try:
        key = parse_idempotency_key(values)
    except ValueError as exc:
        return _respond(bad_request(str(exc), req.path))
    body = _bounded_body(req, options.idempotency_max_bytes)
    if body is None:
        return _respond(too_large(req.path, options.idempotency_max_bytes))
    # The route as mounted (SCRIPT_NAME): two apps of one process, /v1 and /v2, never share a key.
    rule = req.script_root + (req.url_rule.rule if req.url_rule is not None else req.path)
    identity = _identity(req, state, options)
    scope = "http:" + fingerprint(identity, req.method, rule, key)
    body_print = fingerprint(req.method, req.path, req.query_string, body)
    runtime = _runtime._current or _runtime.current()
    claim = Claim(runtime, req.endpoint or rule, scope, body_print)
    try:
        start = claim.begin()
    except (Rejected, IdempotencyMismatch, StoreUnavailable) as exc:
        return _answer_error(exc)
    if start.verdict is Verdict.REPLAY and start.result is not None:
        state.rejected = True  # not an outcome of the view: it does not run
        status, headers, body = replayed(start.result)
        return Response(body, status=status, headers=headers)
    if claim.held and options.records_per_identity is not None:
        # A new record: within the identity's bound of records per TTL, or refused (429).
        decision = runtime.sync.rate("idem:" + fingerprint(identity), options.records_per_identity)
        if not decision.allowed:
            claim.abort()
            return _answer_error(RateLimited("idempotency-records", decision.retry_after))
    if claim.held:
        state.idempotency_claim = claim
        # Stored as the view (or its error handler) answered; the app's after_request
        # functions run after, on the replay as on any response.
        after_this_request(functools.partial(_idempotency_complete, options))
    return None


def _identity(req: Request, state: _Request, options: _Options) -> str:
    """Whose stored responses this request may receive: ``identity(request)``, else a hash
    of its credentials (Authorization, the app's session cookie) and its client key."""
    if options.identity is not None:
        try:
            who = options.identity(req)
        except LookupError as exc:
            _flask_logger.debug("identity raised %r for %s: the request's credentials are its identity",
                                exc, req.path)
            who = None
        if who is not None:
            return "id:" + str(who)
    cookie = req.cookies.get(state.app.config.get("SESSION_COOKIE_NAME") or "session", "")
    return credentials_identity(req.headers.get("Authorization", ""), cookie, state.client_key())


def _bounded_body(req: Request, cap: int) -> bytes | None:
    """The request's body, read once (the view reads it again from the cache), or ``None``
    when it is larger than ``cap``: then no more than ``cap + 1`` bytes were read."""
    length = req.content_length
    if length is not None and length > cap:
        return None
    data = req.stream.read(cap + 1)
    if len(data) > cap:
        return None
    req._cached_data = data  # what get_data() and form parsing read
    return data


def _idempotency_complete(options: _Options, response: Response) -> Response:
    """after_request: store the response of a request that claimed an Idempotency-Key."""
    state: _Request | None = request.environ.get(_STATE)
    if state is None or state.idempotency_claim is None:
        return response
    claim, state.idempotency_claim = state.idempotency_claim, None
    view_ran = state.front is None or state.entered
    if state.rejected or not view_ran or response.status_code in NEVER_STORED or not _in_hand(response):
        # Baldur refused it, the view never ran (a decorator answered), the request was not
        # authorised (try again with the same key), or the body is not in hand to store.
        claim.abort()
        return response
    size = response.content_length if response.is_streamed else len(response.get_data())
    if size is None or size > options.idempotency_max_bytes:
        _logger.warning("the response to %s %s (%d bytes) is larger than BALDUR_IDEMPOTENCY_MAX_BYTES=%d and "
                        "is not stored for replay", request.method, request.path, size or 0,
                        options.idempotency_max_bytes)
        claim.abort()
        return response
    body = response.get_data()  # (an error page's iterator becomes a list: sent as before)
    claim.complete(record(response.status_code, response.headers.items(), body))
    return response


def _in_hand(response: Response) -> bool:
    """The response's body is in memory, not produced while it is sent (a generator, a file)."""
    if response.direct_passthrough:
        return False
    if not response.is_streamed:
        return True
    # Flask turns an HTTPException (abort(404), the 500 of an unhandled error) into a response
    # by running it as a WSGI app: its small body is in memory behind an iterator, its length known.
    return isinstance(response.response, ClosingIterator) and response.content_length is not None
