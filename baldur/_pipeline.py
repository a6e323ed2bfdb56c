"""``protected`` and ``guard``: the strategies composed into one pipeline.

Order, outermost first: rate limit → concurrency → circuit breaker (these
three are one atomic *admit* of the store) → timeout → retry → the call →
fallback on failure. The sync or async wrapper is chosen once, at decoration
time; both ask the same policies and the same store operations, so no rule is
written twice.

A web adapter that has already admitted a view (to answer before the view
runs) marks the request with ``web_call``; the view's wrapper then runs only
the inner strategies and reports how the call ended, and the adapter records
the outcome.
"""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import anyio

from baldur import _idempotency, _runtime
from baldur.errors import CallTimeout, ConfigError, RateLimited, Rejected
from baldur.policies.breaker import Breaker, BreakerState, Outcome, State
from baldur.policies.concurrency import check_limit
from baldur.policies.rate_limit import RateDecision, RateLimit
from baldur.policies.retry import Retry, next_delay
from baldur.stores._types import ExtraLimit, Plan, Ticket

__all__ = ["BreakerHandle", "Protection", "WebCall", "breaker", "guard", "protected", "web_call"]

P = ParamSpec("P")
R = TypeVar("R")


class _Default:
    def __repr__(self) -> str:
        return "<the runtime's default breaker>"


DEFAULT_BREAKER: Any = _Default()
_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_CLOSED = State.CLOSED

#: Set by a web adapter when it installs hooks that admit views themselves
#: (``web_call``); until then the fast lane need not look for them.
web_hooks_installed = False


class WebCall:
    """A web request in progress, opened by a web adapter around the app.

    When the request's view is a protected callable, its wrapper *claims* the
    request: it admits the call with the client's key (a refusal becomes the
    adapter's HTTP answer before the view's body runs), keeps the ticket here
    and reports how the call ended; the adapter records the outcome once the
    response is sent, when it knows the status. Adapters subclass this and
    answer ``is_view`` and ``client_key``.
    """

    # Class-level defaults rather than __init__: most requests never set most of them,
    # and this object is made for every request.
    entered = False
    protection: Protection | None = None
    ticket: Ticket | None = None
    #: Set by the view's wrapper when the call raised (before any fallback), or was slow.
    outcome: Outcome | None = None
    error: BaseException | None = None
    #: The answer is Baldur's own refusal: not an outcome of the view.
    rejected = False
    #: (policy name, limit, decision) of each rate limit applied, for the headers.
    policies: tuple[tuple[str, RateLimit, RateDecision], ...] = ()
    #: The adapter's per-client limit, left to the view's admission (one store step, not two).
    extra: ExtraLimit | None = None

    def add_policy(self, name: str, limit: RateLimit, decision: RateDecision) -> None:
        self.policies = (*self.policies, (name, limit, decision))

    def is_view(self, protection: Protection) -> bool:
        """This protection guards the view that serves the request."""
        raise NotImplementedError

    def client_key(self) -> str:
        """The client's key for per-client limits."""
        raise NotImplementedError

    def claim(self, protection: Protection, plan: Plan) -> str | None:
        """Take the request for this view; return the client key its admission needs."""
        self.entered = True
        self.protection = protection
        return self.client_key() if plan.rate_limit is not None else None

    def refused(self, exc: Rejected) -> bool:
        """The view's admission was refused; ``True`` when the adapter's own limit refused it
        (the adapter answers, not the view's fallback)."""
        self.rejected = True
        extra, self.extra = self.extra, None
        if extra is not None and exc.extra_rate is not None:
            self.add_policy(extra.policy, extra.limit, exc.extra_rate)
        return extra is not None and isinstance(exc, RateLimited) and exc.limit is extra.limit

    def admitted(self, ticket: Ticket, plan: Plan) -> None:
        self.ticket = ticket
        if ticket.extra_rate is not None and self.extra is not None:
            self.add_policy(self.extra.policy, self.extra.limit, ticket.extra_rate)
        self.extra = None
        if ticket.rate is not None and plan.rate_limit is not None:
            self.add_policy(plan.name, plan.rate_limit, ticket.rate)

    def returned(self, result: Any) -> None:
        """The view returned ``result`` (adapters look at it, e.g. for a streamed body)."""


web_call: ContextVar[WebCall | None] = ContextVar("baldur_web_call", default=None)

#: name → the breaker options it was declared with (for ``baldur.breaker(name)``).
_declared: dict[str, Breaker] = {}


def _no_lane(state: BreakerState) -> None:
    raise AssertionError("a fast-lane success without a fast lane")  # pragma: no cover


class Protection:
    """The validated options of one ``protected``/``guard`` name."""

    __slots__ = (
        "_plan",
        "_runtime",
        "breaker",
        "fallback",
        "lane",
        "max_concurrency",
        "name",
        "rate_limit",
        "retry",
        "succeed",
        "timeout",
    )

    def __init__(self, name: str, breaker: Breaker | _Default | None, rate_limit: RateLimit | str | None,
                 max_concurrency: int | None, timeout: float | None, retry: Retry | None,
                 fallback: Callable[[Exception], Any] | None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("protected(name)", name, 'protected("payments")', "a non-empty string")
        if not (breaker is None or isinstance(breaker, Breaker | _Default)):
            raise ConfigError(f"protected({name!r}, breaker=...)", breaker, "breaker=baldur.Breaker(open_for=10)",
                              "a baldur.Breaker or None")
        if isinstance(rate_limit, str):
            rate_limit = RateLimit(rate_limit, setting=f"protected({name!r}, rate_limit=...)")
        elif rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise ConfigError(f"protected({name!r}, rate_limit=...)", rate_limit, 'rate_limit="100/minute"',
                              "a baldur.RateLimit or its string")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or not timeout > 0 or timeout == float("inf")):
            raise ConfigError(f"protected({name!r}, timeout=...)", timeout, "timeout=2.5", "seconds, > 0")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError(f"protected({name!r}, retry=...)", retry, "retry=baldur.Retry(attempts=3)",
                              "a baldur.Retry or None")
        if fallback is not None and not callable(fallback):
            raise ConfigError(f"protected({name!r}, fallback=...)", fallback, "fallback=lambda exc: []",
                              "a callable taking the exception")
        self.name = name
        self.breaker = breaker
        self.rate_limit = rate_limit if rate_limit is not None and rate_limit.enabled else None
        self.max_concurrency = check_limit(max_concurrency, f"protected({name!r}, max_concurrency=...)")
        self.timeout = None if timeout is None else float(timeout)
        self.retry = retry
        self.fallback = fallback
        self._runtime: _runtime.Runtime | None = None
        self._plan: Plan | None = None
        #: The store's fast lane for this plan (a closed breaker's state), see ``MemoryStore.fast_lane``.
        self.lane: BreakerState | None = None
        self.succeed: Callable[[BreakerState], None] = _no_lane
        if isinstance(breaker, Breaker):
            _declared.setdefault(name, breaker)

    def plan(self, runtime: _runtime.Runtime) -> Plan:
        """The compiled plan for this runtime (the default breaker comes from its settings)."""
        if self._runtime is runtime and self._plan is not None:
            return self._plan
        options = runtime.default_breaker if isinstance(self.breaker, _Default) else self.breaker
        plan = Plan(self.name, options, self.rate_limit, self.max_concurrency)
        self._plan, self._runtime, self.lane = plan, runtime, None
        return plan

    def refresh_lane(self, runtime: _runtime.Runtime, plan: Plan) -> None:
        """After a call on the full path: take the fast lane again if the store offers one."""
        if self.lane is None or self.lane.state is not _CLOSED:
            self.lane = runtime.sync.fast_lane(plan)
            self.succeed = runtime.sync.succeed

    def lane_failed(self, exc: BaseException) -> Outcome:
        """A call on the fast lane raised: record it as ``finish`` would and say how it counts."""
        runtime = _runtime._current or _runtime.current()
        plan = self.plan(runtime)
        outcome = self.is_failure(exc, plan.breaker)
        runtime.sync.finish(plan.plain_ticket, outcome)
        return outcome

    def is_failure(self, exc: BaseException, options: Breaker | None) -> Outcome:
        """How an exception raised by the call counts: a failure (fallback applies) or ignored."""
        if isinstance(exc, CallTimeout):
            return _FAILURE
        if options is not None:
            return options.classify(exc)
        return _FAILURE if isinstance(exc, Exception) else Outcome.IGNORED


def _is_async(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    call = type(func).__call__ if not inspect.isroutine(func) and not inspect.isclass(func) else None
    return inspect.iscoroutinefunction(func) or (call is not None and inspect.iscoroutinefunction(call))


def protected(
    name: str,
    *,
    breaker: Breaker | None = DEFAULT_BREAKER,
    rate_limit: RateLimit | str | None = None,
    max_concurrency: int | None = None,
    timeout: float | None = None,
    retry: Retry | None = None,
    fallback: Callable[[Exception], Any] | None = None,
    idempotency_key: str | Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a sync or async callable (or a Flask view) through Baldur's pipeline.

    ``breaker`` defaults to a circuit breaker with the runtime's default
    options; ``None`` switches it off. ``rate_limit`` (``"100/minute"``)
    limits the name as a whole, or each client when the callable is a web
    view. ``max_concurrency`` caps calls in flight. ``timeout`` (seconds)
    raises ``CallTimeout``. ``retry`` retries failures with backoff.
    ``fallback(exc)`` supplies the result after a rejection or a failure.
    ``idempotency_key`` (an argument's name, or a callable over the
    arguments) makes the call exactly-once per key: a repeat of a completed
    call returns the stored (JSON) result, a repeat of a running one raises
    ``IdempotencyConflict``.
    """
    protection = Protection(name, breaker, rate_limit, max_concurrency, timeout, retry, fallback)
    if idempotency_key is not None and not (isinstance(idempotency_key, str) or callable(idempotency_key)):
        raise ConfigError(f"protected({name!r}, idempotency_key=...)", idempotency_key,
                          'idempotency_key="order_id"', "an argument's name or a callable over the arguments")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if not callable(func):
            raise TypeError(f"baldur.protected({name!r}) decorates a callable, not {type(func).__name__}")
        key_of = None if idempotency_key is None else _key_function(name, func, idempotency_key)
        wrapper: Callable[..., Any]
        if _is_async(func):
            if fallback is not None and not _is_async(fallback):
                raise ConfigError(f"protected({name!r}, fallback=...)", fallback, "async def fallback(exc): ...",
                                  "an async callable needs a coroutine function as fallback")
            if fallback is not None:
                protection.fallback = _marked_async(fallback, name)
            wrapper = _async_wrapper(cast(Callable[..., Awaitable[Any]], func), protection)
            if key_of is not None:
                wrapper = _idempotency.idempotent_async(wrapper, name, key_of)
        else:
            if fallback is not None and _is_async(fallback):
                raise ConfigError(f"protected({name!r}, fallback=...)", fallback, "def fallback(exc): ...",
                                  "a sync callable needs a plain function as fallback")
            if fallback is not None:
                protection.fallback = _marked_sync(fallback, name)
            wrapper = _sync_wrapper(func, protection)
            if key_of is not None:
                wrapper = _idempotency.idempotent_sync(wrapper, name, key_of)
        functools.update_wrapper(wrapper, func)
        wrapper.__baldur__ = protection  # type: ignore[union-attr]
        return cast(Callable[P, R], wrapper)

    return decorate


def _key_function(name: str, func: Callable[..., Any],
                  spec: str | Callable[..., Any]) -> Callable[..., str | None]:
    """``idempotency_key`` as a function of the call's arguments, checked at decoration;
    ``None`` (no key for this call) runs it without idempotency."""
    if callable(spec):

        def computed(*args: Any, **kwargs: Any) -> str | None:
            key = spec(*args, **kwargs)
            return None if key is None else str(key)

        return computed
    signature = inspect.signature(func)
    if spec not in signature.parameters:
        raise ConfigError(f"protected({name!r}, idempotency_key=...)", spec,
                          f"idempotency_key={next(iter(signature.parameters), 'order_id')!r}",
                          f"{func.__name__}() has no argument of that name")

    def key_of(*args: Any, **kwargs: Any) -> str | None:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()  # a key argument left at its default is that value
        key = bound.arguments[spec]
        return None if key is None else str(key)

    return key_of


def _marked_sync(fallback: Callable[[Exception], Any], name: str) -> Callable[[Exception], Any]:
    def answer(exc: Exception) -> Any:
        # A fallback's answer is never stored for replay: the idempotent call ``name`` (not
        # one that called this inside its body) answered with it.
        _idempotency.fell_back.set(name)
        return fallback(exc)

    return answer


def _marked_async(fallback: Callable[[Exception], Any], name: str) -> Callable[[Exception], Any]:
    async def answer(exc: Exception) -> Any:
        _idempotency.fell_back.set(name)
        return await fallback(exc)

    return answer


# -- sync ------------------------------------------------------------------

def _sync_wrapper(func: Callable[..., Any], protection: Protection) -> Callable[..., Any]:
    fallback = protection.fallback
    inner = _sync_inner(func, protection)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        lane = protection.lane
        if lane is not None and lane.state is _CLOSED and (not web_hooks_installed or web_call.get() is None):
            # The fast lane: a closed breaker and nothing else to admit.
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                if protection.lane_failed(exc) is not _FAILURE or fallback is None:
                    raise
                return fallback(exc)  # type: ignore[arg-type]
            protection.succeed(lane)
            return result
        return full(*args, **kwargs)

    def full(*args: Any, **kwargs: Any) -> Any:
        runtime = _runtime._current or _runtime.current()
        plan = protection.plan(runtime)
        web = web_call.get()
        if web is not None and not web.entered and web.is_view(protection):
            client = web.claim(protection, plan)
            try:
                web.admitted(runtime.sync.admit(plan, client, web.extra), plan)
            except Rejected as exc:
                if web.refused(exc) or fallback is None:
                    raise
                return fallback(exc)
            return _sync_reported(inner, protection, plan, web, args, kwargs)
        store = runtime.sync
        try:
            ticket = store.admit(plan)
        except Rejected as exc:
            if fallback is None:
                raise
            return fallback(exc)
        slow = plan.breaker.slow_call if plan.breaker is not None else None
        started = time.monotonic() if slow is not None else 0.0
        try:
            result = inner(*args, **kwargs)
        except BaseException as exc:
            outcome = protection.is_failure(exc, plan.breaker)
            store.finish(ticket, outcome)
            if fallback is None or outcome is not _FAILURE:
                raise
            return fallback(exc)  # type: ignore[arg-type]
        store.finish(ticket, _SUCCESS if slow is None else _timed_outcome(started, slow))
        protection.refresh_lane(runtime, plan)
        return result

    return wrapper


def _timed_outcome(started: float, slow: float) -> Outcome:
    """A success slower than the breaker's ``slow_call`` counts as a failure."""
    return _FAILURE if time.monotonic() - started > slow else _SUCCESS


def _sync_reported(inner: Callable[..., Any], protection: Protection, plan: Plan, web: WebCall,
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    slow = plan.breaker.slow_call if plan.breaker is not None else None
    started = time.monotonic()
    try:
        result = inner(*args, **kwargs)
    except BaseException as exc:
        web.error = exc
        web.outcome = protection.is_failure(exc, plan.breaker)
        if protection.fallback is None or web.outcome is not _FAILURE:
            raise
        return protection.fallback(exc)  # type: ignore[arg-type]
    if slow is not None:
        web.outcome = _timed_outcome(started, slow)
    web.returned(result)
    return result


def _sync_inner(func: Callable[..., Any], protection: Protection) -> Callable[..., Any]:
    """timeout → retry → the call, for a sync callable.

    A sync callable always runs to its end in the caller's thread: Python
    cannot interrupt it safely. Its ``timeout`` is therefore a deadline: no
    retry starts that could not begin before it, and a call that returns (or
    fails) after it raises ``CallTimeout``, its late result discarded.
    """
    timeout, retry, name = protection.timeout, protection.retry, protection.name
    if timeout is None and retry is None:
        return func

    def inner(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = func(*args, **kwargs)
            except Exception as exc:
                elapsed = time.monotonic() - started
                if timeout is not None and elapsed > timeout:
                    raise CallTimeout(name, timeout) from exc
                delay = None if retry is None else next_delay(retry, exc, attempt, elapsed, random.random())
                if delay is None or (timeout is not None and elapsed + delay >= timeout):
                    raise
                time.sleep(delay)
                continue
            if timeout is not None and time.monotonic() - started > timeout:
                raise CallTimeout(name, timeout)
            return result

    return inner


# -- async -----------------------------------------------------------------

def _async_wrapper(func: Callable[..., Awaitable[Any]], protection: Protection) -> Callable[..., Awaitable[Any]]:
    fallback = cast(Callable[[Exception], Awaitable[Any]] | None, protection.fallback)
    inner = _async_inner(func, protection)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        lane = protection.lane
        if lane is not None and lane.state is _CLOSED and (not web_hooks_installed or web_call.get() is None):
            # The fast lane: a closed breaker and nothing else to admit.
            try:
                result = await inner(*args, **kwargs)
            except BaseException as exc:
                if protection.lane_failed(exc) is not _FAILURE or fallback is None:
                    raise
                return await fallback(exc)  # type: ignore[arg-type]
            protection.succeed(lane)
            return result
        return await full(*args, **kwargs)

    async def full(*args: Any, **kwargs: Any) -> Any:
        runtime = _runtime._current or _runtime.current()
        plan = protection.plan(runtime)
        web = web_call.get()
        if web is not None and not web.entered and web.is_view(protection):
            client = web.claim(protection, plan)
            try:
                web.admitted(await runtime.async_.admit(plan, client, web.extra), plan)
            except Rejected as exc:
                if web.refused(exc) or fallback is None:
                    raise
                return await fallback(exc)
            return await _async_reported(inner, protection, plan, web, args, kwargs)
        store = runtime.async_
        try:
            ticket = await store.admit(plan)
        except Rejected as exc:
            if fallback is None:
                raise
            return await fallback(exc)
        slow = plan.breaker.slow_call if plan.breaker is not None else None
        started = time.monotonic() if slow is not None else 0.0
        try:
            result = await inner(*args, **kwargs)
        except BaseException as exc:
            outcome = protection.is_failure(exc, plan.breaker)
            with anyio.CancelScope(shield=True):
                await store.finish(ticket, outcome)
            if fallback is None or outcome is not _FAILURE:
                raise
            return await fallback(exc)  # type: ignore[arg-type]
        await store.finish(ticket, _SUCCESS if slow is None else _timed_outcome(started, slow))
        protection.refresh_lane(runtime, plan)
        return result

    return wrapper


async def _async_reported(inner: Callable[..., Awaitable[Any]], protection: Protection, plan: Plan,
                          web: WebCall, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    slow = plan.breaker.slow_call if plan.breaker is not None else None
    started = time.monotonic()
    try:
        result = await inner(*args, **kwargs)
    except BaseException as exc:
        web.error = exc
        web.outcome = protection.is_failure(exc, plan.breaker)
        if protection.fallback is None or web.outcome is not _FAILURE:
            raise
        return await protection.fallback(exc)  # type: ignore[arg-type]
    if slow is not None:
        web.outcome = _timed_outcome(started, slow)
    web.returned(result)
    return result


def _async_inner(func: Callable[..., Awaitable[Any]], protection: Protection) -> Callable[..., Awaitable[Any]]:
    """timeout (an anyio cancel scope around the retries) → retry → the call."""
    timeout, retry, name = protection.timeout, protection.retry, protection.name
    if timeout is None and retry is None:
        return func

    async def retrying(*args: Any, **kwargs: Any) -> Any:
        if retry is None:
            return await func(*args, **kwargs)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await func(*args, **kwargs)
            except Exception as exc:
                delay = next_delay(retry, exc, attempt, time.monotonic() - started, random.random())
                if delay is None:
                    raise
            await anyio.sleep(delay)

    if timeout is None:
        return retrying

    async def inner(*args: Any, **kwargs: Any) -> Any:
        with anyio.move_on_after(timeout) as scope:
            return await retrying(*args, **kwargs)
        if scope.cancelled_caught:
            raise CallTimeout(name, timeout)
        raise AssertionError("unreachable: the scope returned or was cancelled")  # pragma: no cover

    return inner


# -- guard -----------------------------------------------------------------

class _Entry:
    """One ``async with`` of a guard: what its exit must record and release."""

    __slots__ = ("plan", "scope", "started", "ticket")

    def __init__(self, plan: Plan, ticket: Ticket, scope: anyio.CancelScope | None) -> None:
        self.plan, self.ticket, self.scope = plan, ticket, scope
        self.started = time.monotonic()


class guard:  # lower case: used like a function, ``async with baldur.guard("name"):``
    """The pipeline as an async context manager around a block of code.

    ``async with baldur.guard("search", timeout=2):`` admits the block (rate
    limit, concurrency, breaker), cancels it after ``timeout`` seconds with
    ``CallTimeout``, and records how it ended. A block cannot be re-run or
    replaced, so retries and fallbacks belong to ``protected``. One guard
    object may be entered by many tasks at once (and again within one task):
    each entry keeps its own state.
    """

    __slots__ = ("_entries", "_protection")

    def __init__(self, name: str, *, breaker: Breaker | None = DEFAULT_BREAKER,
                 rate_limit: RateLimit | str | None = None, max_concurrency: int | None = None,
                 timeout: float | None = None) -> None:
        self._protection = Protection(name, breaker, rate_limit, max_concurrency, timeout, None, None)
        #: task id → its open entries, innermost last
        self._entries: dict[int, list[_Entry]] = {}

    async def __aenter__(self) -> guard:
        runtime = _runtime._current or _runtime.current()
        plan = self._protection.plan(runtime)
        ticket = await runtime.async_.admit(plan)
        scope = None
        if self._protection.timeout is not None:
            scope = anyio.move_on_after(self._protection.timeout)
            scope.__enter__()
        self._entries.setdefault(anyio.get_current_task().id, []).append(_Entry(plan, ticket, scope))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        task = anyio.get_current_task().id
        stack = self._entries[task]
        entry = stack.pop()
        if not stack:
            del self._entries[task]
        timed_out = False
        if entry.scope is not None:
            swallowed = entry.scope.__exit__(exc_type, exc, tb)
            timed_out = entry.scope.cancelled_caught
            if swallowed and not timed_out:
                exc = None
        plan = entry.plan
        slow = plan.breaker.slow_call if plan.breaker is not None else None
        if timed_out:
            outcome = _FAILURE
        elif exc is not None:
            outcome = self._protection.is_failure(exc, plan.breaker)
        else:
            outcome = _SUCCESS if slow is None else _timed_outcome(entry.started, slow)
        with anyio.CancelScope(shield=True):
            await (_runtime._current or _runtime.current()).async_.finish(entry.ticket, outcome)
        if timed_out:
            raise CallTimeout(self._protection.name, cast(float, self._protection.timeout))
        return False


# -- handles ----------------------------------------------------------------

class BreakerHandle:
    """Read and steer one named breaker: ``baldur.breaker("payments").open()``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("breaker(name)", name, 'baldur.breaker("payments")', "a non-empty string")
        self.name = name

    def _options(self) -> tuple[_runtime.Runtime, Breaker]:
        runtime = _runtime.current()
        return runtime, _declared.get(self.name, runtime.default_breaker)

    @property
    def state(self) -> State:
        """``closed``, ``open``, ``half_open``, ``forced_open`` or ``forced_closed``."""
        runtime, options = self._options()
        return runtime.sync.read_breaker(self.name, options)

    def open(self) -> None:
        """Force the breaker open: every call is rejected until ``close()`` or ``reset()``."""
        self._force(State.FORCED_OPEN)

    def close(self) -> None:
        """Force the breaker closed: every call runs and nothing is counted until ``reset()``."""
        self._force(State.FORCED_CLOSED)

    def reset(self) -> None:
        """Back to a fresh, automatic, closed breaker."""
        self._force(State.CLOSED)

    def _force(self, state: State) -> None:
        runtime, options = self._options()
        runtime.sync.force_breaker(self.name, options, state)

    def __repr__(self) -> str:
        return f"<baldur.breaker {self.name!r}>"


def breaker(name: str) -> BreakerHandle:
    """A handle on the circuit breaker of ``name``."""
    return BreakerHandle(name)
