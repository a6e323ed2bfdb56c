"""``BaldurMiddleware``: Baldur's web layer for Django, sync and async.

The order of a request (docs/security.md draws it; the same as Flask's):

1. In the middleware's call, before the rest of the stack works: load shedding
   (the per-process in-flight ceiling, queue time from ``X-Request-Start``),
   unless the route is exempt.
2. In ``process_view``, where Django knows the view and before any other
   middleware's ``process_view``, the view and its decorators: the per-client
   rate limit and, when the view is protected, its admission, in one store
   step. Unmatched routes (404) spend nothing.
3. Right after: idempotency, scoped to the authenticated user (Django's
   ``AuthenticationMiddleware`` has run by then), else to the credentials.
4. When the response has been sent: the outcome (an exception or a 5xx is a
   failure, a 4xx is not), the release of every slot; a streamed response
   settles when its iterator is closed.

Every ``Rejected`` becomes its HTTP answer (problem+json) with the
``RateLimit`` headers, never a 500.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Generator
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import Resolver404, URLPattern, URLResolver, get_resolver, resolve
from django.views import View

from baldur import _log, _metrics, _runtime
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
    chosen_key,
    credentials_identity,
    record,
    records_per_identity,
    replayed,
    too_large,
)
from baldur.adapters._shedding import _InFlight, _QueueShedder
from baldur.adapters._web import EXEMPT, PROTECTED_BY, WebRequest, web_call
from baldur.adapters.django import _settings
from baldur.errors import (
    BaldurError,
    CallTimeout,
    IdempotencyMismatch,
    Overloaded,
    RateLimited,
    Rejected,
    StoreUnavailable,
)
from baldur.policies.breaker import Outcome
from baldur.policies.idempotency import Verdict
from baldur.policies.rate_limit import RateDecision, RateLimit
from baldur.policies.shedding import Priority
from baldur.stores._types import ExtraLimit, IdempotencyStart

__all__ = ["BaldurMiddleware"]

#: Where the middleware keeps a request's state (an attribute of the HttpRequest).
_STATE = "_baldur"
_NORMAL = Priority.NORMAL
_IGNORED = Outcome.IGNORED
_ANSWERED = (Rejected, CallTimeout, StoreUnavailable, IdempotencyMismatch)
_logger = logging.getLogger("baldur.django")
_idempotency_logger = logging.getLogger("baldur.idempotency")
_Admission = tuple[Protection | None, ExtraLimit | None]
#: A route: (the view's protection, whether the per-client limit applies, and, where it does not,
#: the view's admission at the front, worked out once: ``None`` when there is nothing to admit).
_Route = tuple[Protection | None, bool, _Admission | None]


class _Request(WebRequest):
    """One request through the middleware."""

    #: The protection of the view that serves the request (found by ``process_view``).
    view: Protection | None = None

    # Set on each middleware's own subclass: a request is made with no ``__init__`` to run.
    options: _Options
    request: HttpRequest

    @property
    def method(self) -> str:
        return self.request.method or ""

    def is_view(self, protection: Protection) -> bool:
        return self.view is protection

    def client_key(self) -> str:
        if not self.client:
            request, options = self.request, self.options
            meta = request.META
            self.client = chosen_key(options.key_func, request, request.path, "key_func", _logger) or \
                client_address(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"), options.trust_proxy,
                               meta.get("HTTP_FORWARDED"), options.ipv6_prefix)
        return self.client


class _Options:
    """What the middleware reads from ``settings.BALDUR`` when the server builds it."""

    def __init__(self, runtime: _runtime.Runtime) -> None:
        current = runtime.settings
        limit: RateLimit = _settings.configured_setting("rate_limit", current.rate_limit)
        self.per_client_limit = limit if limit.enabled else None
        self.process_ceiling: int | None = _settings.configured_setting("max_concurrency", current.max_concurrency)
        self.trust_proxy: int = _settings.configured_setting("trust_proxy", current.trust_proxy)
        self.idempotency: str = _settings.configured_setting("idempotency", current.idempotency)
        max_queue: float | None = _settings.configured_setting("max_queue_ms", current.max_queue_ms)
        self.max_queue = None if max_queue is None else max_queue / 1000.0
        self.idempotency_max_bytes = current.idempotency_max_bytes
        self.records_per_identity = records_per_identity(current)
        self.ipv6_prefix = current.ipv6_prefix
        self.key_func: Callable[[HttpRequest], object] | None = _settings.configured_option("key_func")
        self.identity: Callable[[HttpRequest], object] | None = _settings.configured_option("identity")
        self.exempt: frozenset[str] = _settings.configured_option("exempt") or frozenset()
        self.session_cookie: str = getattr(settings, "SESSION_COOKIE_NAME", "sessionid")
        self.in_flight = _InFlight(self.process_ceiling)
        #: Per view (and, for a class-based view, per method): its route.
        self.routes: dict[object, _Route] = {}


class BaldurMiddleware:
    """Put it first in ``MIDDLEWARE``: it sheds before the rest of the stack works, and
    admits in the first ``process_view``, before the view's decorators."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        problems = _settings.startup_problems()
        if problems:
            raise problems[0].error
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            # Django calls a sync process_view of an async stack in a thread: spare it that.
            self.process_view = self._process_view_async  # type: ignore[method-assign]
        runtime = _runtime.current()
        self.options = _Options(runtime)
        self.queue = _QueueShedder(self.options.max_queue)
        #: Whether any view has a priority other than normal (then each request is routed to find its own).
        self.prioritised: bool | None = None
        self.request_type = type("_Request", (_Request,), {"options": self.options,
                                                          "requests_in_flight": self.options.in_flight})
        #: The methods whose Idempotency-Key is claimed (none when idempotency is off).
        self.idempotent = IDEMPOTENT_METHODS if self.options.idempotency != "off" else ()
        _web.install()

    # -- (1) shedding, and the request's state -------------------------------

    def _enter(self, request: HttpRequest) -> HttpResponseBase | _Request:
        options = self.options
        if self.prioritised is None:
            self.prioritised = _survey_views(request)
        priority = self._priority(request) if self.prioritised else _NORMAL
        started = request.META.get("HTTP_X_REQUEST_START")
        if started is not None:
            now = time.time()
            waited = queue_seconds(started, now)
            if waited is not None:
                runs, retry_after = self.queue.admits(now, waited, options.in_flight.adaptive.long_latency, priority)
                if not runs and not self._exempt_route(request):
                    _log.emit("backpressure.shed", "queue", waited_ms=round(waited * 1000))
                    return _shed(retry_after, request.path)
        state = self.request_type()
        state.request = request
        if options.in_flight.enter(state, priority):
            state.in_flight = True
            state.admitted_at = time.monotonic()
        elif not self._exempt_route(request):
            _log.emit("backpressure.shed", "in_flight", limit=options.process_ceiling)
            return _shed(options.in_flight.retry_after(), request.path)
        setattr(request, _STATE, state)
        return state

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        entered = self._enter(request)
        if not isinstance(entered, _Request):
            return entered
        state = entered
        token = web_call.set(state)  # until the view has returned (a streamed body is sent after)
        try:
            response = self.get_response(request)
        except BaseException:
            state.status = 500
            state.settle()
            raise
        finally:
            web_call.reset(token)
        if state.idempotency_claim is not None:
            _store(state, response)
        if response.streaming:
            return self._streamed(state, response)
        self._headers(state, response)
        state.settle()
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        entered = self._enter(request)
        if not isinstance(entered, _Request):
            return entered
        state = entered
        token = web_call.set(state)
        try:
            response = await self.get_response(request)
        except BaseException:
            state.status = 500
            await state.settle_async()
            raise
        finally:
            web_call.reset(token)
        if state.idempotency_claim is not None:
            await _store_async(state, response)
        if response.streaming:
            return self._streamed(state, response)
        self._headers(state, response)
        await state.settle_async()
        return response

    def _streamed(self, state: _Request, response: HttpResponseBase) -> HttpResponseBase:
        """A streamed response: settled when the server closes it, after its last chunk (or a disconnect)."""
        self._headers(state, response)
        response._resource_closers.append(state.settle)
        _watch_stream(state, response)
        return response

    @staticmethod
    def _headers(state: _Request, response: HttpResponseBase) -> None:
        state.status = response.status_code
        if state.policies and not state.rejected:
            for name, value in ratelimit_headers(state.policies).items():
                response[name] = value

    # -- (2) admission, (3) idempotency ---------------------------------------

    def process_view(self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        state: _Request | None = getattr(request, _STATE, None)
        if state is None:
            return None
        admission = self._admission(request, state, view)
        if admission is not None:
            refusal = state.admit_front(*admission)
            if refusal is not None:
                return _answer(state, refusal)
        if request.method in self.idempotent:
            begun = _idempotency_begin(request, state, _identity(request, state, getattr(request, "user", None)))
            if begun is not None:
                return begun
        return None

    async def _process_view_async(self, request: HttpRequest, view: Callable[..., Any], args: Any,
                                  kwargs: Any) -> Any:
        state: _Request | None = getattr(request, _STATE, None)
        if state is None:
            return None
        admission = self._admission(request, state, view)
        if admission is not None:
            refusal = await state.admit_front_async(*admission)
            if refusal is not None:
                return _answer(state, refusal)
        if request.method in self.idempotent:
            auser = getattr(request, "auser", None)
            user = await auser() if auser is not None else None
            begun = await _idempotency_begin_async(request, state, _identity(request, state, user))
            if begun is not None:
                return begun
        return None

    def _admission(self, request: HttpRequest, state: _Request, view: Callable[..., Any]) -> _Admission | None:
        """What to admit at the front for ``view``: (its protection, the per-client limit), or
        ``None`` when there is nothing to admit."""
        options = self.options
        route = options.routes.get(view)
        if route is None:
            route = self._route_of(request, state, view)
        protection, limited, admission = route
        state.view = protection
        if not limited:
            return admission
        assert options.per_client_limit is not None
        return protection, state.per_client(options.per_client_limit)

    def _route_of(self, request: HttpRequest, state: _Request, view: Callable[..., Any]) -> _Route:
        """The route of ``view``, worked out once: a function view's kept by the view, a class-based
        view's by (view, the method's handler), so that looking one up by the view alone misses."""
        routes = self.options.routes
        view_class = getattr(view, "view_class", None)
        if view_class is None:
            route = routes[view] = self._route(request, view, None, state.method)
            return route
        key = (view, _handler_name(view_class, state.method))
        known = routes.get(key)
        if known is None:
            known = routes[key] = self._route(request, view, view_class, state.method)
        return known

    def _route(self, request: HttpRequest, view: Callable[..., Any], view_class: type | None, method: str) -> _Route:
        handler: object = view
        if view_class is not None:
            name = _handler_name(view_class, method)
            handler = getattr(view_class, name, None) if name else None
            if handler is View.options:
                return None, False, None  # answered by Django itself (a CORS preflight), never by a view
        protection = getattr(handler, "__baldur__", None)
        match = request.resolver_match
        exempt = bool(getattr(view, EXEMPT, False) or getattr(view_class, EXEMPT, False)) or (
            match is not None and _named_exempt(self.options.exempt, match.url_name, match.view_name,
                                                match.namespaces))
        limited = self.options.per_client_limit is not None and not exempt
        if not isinstance(protection, Protection):
            return None, limited, None
        return protection, limited, (protection, None)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A Baldur error raised by the view (a refusal inside it, a timeout): its HTTP answer."""
        state: _Request | None = getattr(request, _STATE, None)
        if state is None or not isinstance(exception, _ANSWERED):
            return None
        return _answer(state, exception)

    # -- routing before Django routes (shedding only) -------------------------

    def _exempt_route(self, request: HttpRequest) -> bool:
        """The request about to be shed goes to an exempt view (resolved here: shedding runs first)."""
        try:
            match = resolve(request.path_info, getattr(request, "urlconf", None))
        except Resolver404:
            return False
        view = match.func
        return bool(getattr(view, EXEMPT, False) or getattr(getattr(view, "view_class", None), EXEMPT, False)) or \
            _named_exempt(self.options.exempt, match.url_name, match.view_name, match.namespaces)

    def _priority(self, request: HttpRequest) -> Priority:
        try:
            match = resolve(request.path_info, getattr(request, "urlconf", None))
        except Resolver404:
            return _NORMAL
        return cast(Priority, getattr(_handler(match.func, request.method or ""), "__baldur_priority__", _NORMAL))


def _handler_name(view_class: type, method: str) -> str:
    name = method.lower()
    return name if name in getattr(view_class, "http_method_names", ()) and hasattr(view_class, name) else ""


def _handler(view: Callable[..., Any], method: str) -> object:
    """The function that serves ``method`` for ``view`` (a class-based view's method)."""
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return view
    name = _handler_name(view_class, method)
    return getattr(view_class, name, None) if name else None


def _named_exempt(exempt: frozenset[str], url_name: str | None, view_name: str, namespaces: list[str]) -> bool:
    if not exempt:
        return False
    return url_name in exempt or view_name in exempt or any(namespace in exempt for namespace in namespaces)


def _views(patterns: list[Any]) -> list[Callable[..., Any]]:
    found: list[Callable[..., Any]] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found.extend(_views(pattern.url_patterns))
        elif isinstance(pattern, URLPattern):
            found.append(pattern.callback)
    return found


def _survey_views(request: HttpRequest) -> bool:
    """Look at every view once (the first request): warn about a view registered without its
    protection (``@baldur.protected`` above a decorator that hides it), and say whether any
    view has a shedding priority other than normal."""
    prioritised = False
    for view in _views(get_resolver(getattr(request, "urlconf", None)).url_patterns):
        view_class = getattr(view, "view_class", None)
        handlers = [view] if view_class is None else [getattr(view_class, name, None)
                                                      for name in getattr(view_class, "http_method_names", ())]
        for handler in handlers:
            if handler is None:
                continue
            if getattr(handler, "__baldur_priority__", _NORMAL) is not _NORMAL:
                prioritised = True
            name = getattr(handler, PROTECTED_BY, None)
            if name is not None and getattr(handler, "__baldur__", None) is None:
                _logger.warning("the view %r is registered without its protection %r: @baldur.protected must "
                                "be the decorator closest to the function", getattr(view, "__qualname__", view),
                                name)
    return prioritised


# -- answers -------------------------------------------------------------------

def _shed(retry_after: float, path: str) -> HttpResponse:
    refusal = Overloaded("server", retry_after)
    _metrics.rejected(refusal, _metrics.SHED)
    return _respond(problem(refusal, path))


def _respond(answer: tuple[int, dict[str, str], bytes]) -> HttpResponse:
    status, headers, body = answer
    response = HttpResponse(body, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _answer(state: _Request, exc: BaldurError) -> HttpResponse:
    """Baldur's error as its HTTP answer, with the RateLimit headers of the policies applied."""
    state.rejected = isinstance(exc, Rejected)  # Baldur's refusals are not outcomes of the view; a timeout is
    policies: tuple[tuple[str, RateLimit, RateDecision], ...] = state.policies
    if isinstance(exc, RateLimited) and exc.limit is not None and exc.decision is not None:
        policies = (*policies, (exc.name, exc.limit, exc.decision))
    response = _respond(problem(exc, state.request.path))
    for name, value in ratelimit_headers(policies).items():
        response[name] = value
    return response


# -- idempotency ---------------------------------------------------------------

def _identity(request: HttpRequest, state: _Request, user: Any) -> str:
    """Whose stored responses this request may receive: ``identity(request)``, else the
    authenticated user, else a hash of its credentials and its client key."""
    options = state.options
    chosen = chosen_key(options.identity, request, request.path, "identity", _logger)
    if chosen is not None:
        return "id:" + chosen
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{type(user).__module__}.{type(user).__qualname__}:{user.pk}"
    return credentials_identity(request.META.get("HTTP_AUTHORIZATION", ""),
                                request.COOKIES.get(options.session_cookie, ""), state.client_key())


def _prepare(request: HttpRequest, state: _Request, identity: str) -> HttpResponse | Claim | None:
    """The claim to begin for the request's Idempotency-Key, or the answer (400, 413), or ``None``."""
    options = state.options
    # One value: a WSGI or ASGI server joins a repeated header with commas (a list: refused).
    raw = request.META.get("HTTP_IDEMPOTENCY_KEY")
    if raw is None:
        if options.idempotency == "required":
            return _respond(bad_request(f"{state.method} {request.path} requires an Idempotency-Key header",
                                        request.path))
        return None
    try:
        key = parse_idempotency_key([raw])
    except ValueError as exc:
        return _respond(bad_request(str(exc), request.path))
    body = _bounded_body(request, options.idempotency_max_bytes)
    if body is None:
        return _respond(too_large(request.path, options.idempotency_max_bytes))
    match = request.resolver_match
    # The route as mounted (SCRIPT_NAME): two deployments of one process never share a key.
    route = request.META.get("SCRIPT_NAME", "") + (request.path_info if match is None else match.route)
    scope = "http:" + fingerprint(identity, state.method, route, key)
    body_print = fingerprint(state.method, request.path, request.META.get("QUERY_STRING", ""), body)
    name = match.view_name if match is not None and match.view_name else route
    return Claim(_runtime._current or _runtime.current(), name, scope, body_print)


#: A step of the idempotency claim that needs the store: ("begin", claim), ("rate", (key, limit))
#: or ("abort", claim). The sync and the async face each perform it with their own calls.
_Step = tuple[str, Any]
_REFUSALS = (Rejected, IdempotencyMismatch, StoreUnavailable)


def _claim_steps(request: HttpRequest, state: _Request, identity: str
                 ) -> Generator[_Step, Any, HttpResponse | None]:
    """Claim the request's Idempotency-Key for its identity, replay its stored response, or refuse:
    the rule written once, as steps (``_idempotency_begin`` and ``_idempotency_begin_async`` run them).

    After Baldur's admission: a replay, a conflict and a mismatch have spent the client's
    quota, and the body of a refused client is never read."""
    claim = _prepare(request, state, identity)
    if not isinstance(claim, Claim):
        return claim
    try:
        start: IdempotencyStart = yield ("begin", claim)
    except _REFUSALS as exc:
        return _answer(state, exc)
    if start.verdict is Verdict.REPLAY and start.result is not None:
        return _replay(state, start.result)
    limit = state.options.records_per_identity
    if claim.held and limit is not None:
        # A new record: within the identity's bound of records per TTL, or refused (429).
        decision: RateDecision = yield ("rate", ("idem:" + fingerprint(identity), limit))
        if not decision.allowed:
            yield ("abort", claim)
            return _answer(state, RateLimited("idempotency-records", decision.retry_after))
    if claim.held:
        state.idempotency_claim = claim
    return None


class _Steps:
    """Runs ``_claim_steps``: hands each step's answer, or its refusal, back to the rule."""

    def __init__(self, steps: Generator[_Step, Any, HttpResponse | None]) -> None:
        self.steps = steps
        self.answer: Any = None
        self.refusal: BaseException | None = None
        self.response: HttpResponse | None = None

    def next(self) -> _Step | None:
        """The next step to perform, or ``None`` once the rule has its ``response``."""
        answer, refusal, self.answer, self.refusal = self.answer, self.refusal, None, None
        try:
            return self.steps.throw(refusal) if refusal is not None else self.steps.send(answer)
        except StopIteration as done:
            self.response = done.value
            return None


def _idempotency_begin(request: HttpRequest, state: _Request, identity: str) -> HttpResponse | None:
    run = _Steps(_claim_steps(request, state, identity))
    while (step := run.next()) is not None:
        kind, arg = step
        try:
            if kind == "rate":
                run.answer = (_runtime._current or _runtime.current()).sync.rate(*arg)
            else:
                run.answer = arg.begin() if kind == "begin" else arg.abort()
        except _REFUSALS as exc:
            run.refusal = exc
    return run.response


async def _idempotency_begin_async(request: HttpRequest, state: _Request, identity: str) -> HttpResponse | None:
    run = _Steps(_claim_steps(request, state, identity))
    while (step := run.next()) is not None:
        kind, arg = step
        try:
            if kind == "rate":
                run.answer = await (_runtime._current or _runtime.current()).async_.rate(*arg)
            else:
                run.answer = await (arg.begin_async() if kind == "begin" else arg.abort_async())
        except _REFUSALS as exc:
            run.refusal = exc
    return run.response


def _replay(state: _Request, stored: str) -> HttpResponse:
    state.rejected = True  # not an outcome of the view: it does not run
    status, headers, body = replayed(stored)
    response = HttpResponse(body, status=status)
    for name, value in headers:
        response[name] = value
    return response


def _storable(state: _Request, response: HttpResponseBase) -> str | None:
    """The record to store for the response to a request that claimed a key, or ``None``."""
    view_ran = state.front is None or state.entered
    status = response.status_code
    if state.rejected or not view_ran or status in NEVER_STORED or response.streaming:
        # Baldur refused it, the view never ran (a decorator answered), the request was not
        # authorised (try again with the same key), or the body is not in hand to store.
        return None
    body = cast(HttpResponse, response).content
    cap = state.options.idempotency_max_bytes
    if len(body) > cap:
        request = state.request
        _idempotency_logger.warning(
            "the response to %s %s (%d bytes) is larger than BALDUR_IDEMPOTENCY_MAX_BYTES=%d and is not stored "
            "for replay", state.method, request.path, len(body), cap)
        return None
    return record(status, response.items(), body)


def _store(state: _Request, response: HttpResponseBase) -> None:
    claim = state.idempotency_claim
    if claim is None:
        return
    state.idempotency_claim = None
    stored = _storable(state, response)
    if stored is None:
        claim.abort()
    else:
        claim.complete(stored)


async def _store_async(state: _Request, response: HttpResponseBase) -> None:
    claim = state.idempotency_claim
    if claim is None:
        return
    state.idempotency_claim = None
    stored = _storable(state, response)
    if stored is None:
        await claim.abort_async()
    else:
        await claim.complete_async(stored)


def _bounded_body(request: HttpRequest, cap: int) -> bytes | None:
    """The request's body, read once (the view reads it again), or ``None`` when it is
    larger than ``cap``: then no more than ``cap + 1`` bytes were read."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > cap:
        return None
    data: bytes = request.read(cap + 1)
    if len(data) > cap:
        return None
    request._body = data  # what request.body, POST and FILES read
    request._stream = io.BytesIO(data)
    return data


# -- (4) settling ----------------------------------------------------------------

def _watch_stream(state: _Request, response: HttpResponseBase) -> None:
    """A streamed body that fails while it is sent is a failure of the view (a 500)."""
    if getattr(response, "file_to_stream", None) is not None:
        return  # a file: the server's zero-copy path is kept
    streaming = cast(Any, response)
    content = streaming.streaming_content
    if streaming.is_async:
        async def watched_async() -> Any:
            try:
                async for part in content:
                    yield part
            except Exception:
                state.status = 500
                raise

        streaming.streaming_content = watched_async()
    else:
        def watched() -> Any:
            try:
                yield from content
            except Exception:
                state.status = 500
                raise

        streaming.streaming_content = watched()

