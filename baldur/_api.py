"""The public API of the pipeline: ``protected``, ``guard`` and ``breaker``.

Order, outermost first: idempotency → rate limit → concurrency → circuit
breaker (these three are one atomic *admit* of the store) → timeout → retry
→ the call → fallback on failure. ``protected`` chooses the sync or the
async face (``baldur._faces``) once, at decoration time; both faces, and both
faces of ``guard``, drive the same ``Call`` (``baldur._call``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import anyio

from baldur import _idempotency, _runtime
from baldur._call import Call
from baldur._faces import async_face, sync_face
from baldur._options import DEFAULT_BREAKER, CallOptions, declare, declared_breaker, is_async, key_function
from baldur._protection import Protection
from baldur.adapters import _web
from baldur.errors import CallTimeout, ConfigError
from baldur.policies.breaker import Breaker, State
from baldur.policies.rate_limit import RateLimit
from baldur.policies.retry import Retry
from baldur.policies.shedding import parse_priority

__all__ = ["BreakerHandle", "breaker", "guard", "protected"]

P = ParamSpec("P")
R = TypeVar("R")


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
    priority: str = "normal",
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a sync or async callable (or a Flask view) through Baldur's pipeline.

    ``breaker`` defaults to a circuit breaker with the runtime's default
    options (``BALDUR_BREAKER_*``); a ``Breaker`` takes every option it was
    not given from them; ``None`` switches it off. ``rate_limit``
    (``"100/minute"``) limits the name as a whole, or each client when the
    callable is a web view. ``max_concurrency`` caps calls in flight.
    ``timeout`` (seconds) raises ``CallTimeout``. ``retry`` retries failures
    with backoff. ``fallback(exc)`` supplies the result after a rejection or
    a failure. ``idempotency_key`` (an argument's name, or a callable over
    the arguments) makes the call exactly-once per key: a repeat of a
    completed call returns the stored (JSON) result, a repeat of a running
    one raises ``IdempotencyConflict``. ``priority`` (a web view's, under
    load shedding): ``"critical"`` is shed last, ``"sheddable"`` first.
    """
    shed_priority = parse_priority(priority, f"protected({name!r}, priority=...)")
    options = CallOptions.check(name, breaker, rate_limit, max_concurrency, timeout, retry, fallback)
    if idempotency_key is not None and not (isinstance(idempotency_key, str) or callable(idempotency_key)):
        raise ConfigError(f"protected({name!r}, idempotency_key=...)", idempotency_key,
                          'idempotency_key="order_id"', "an argument's name or a callable over the arguments")

    # One protection per declaration, however often it decorates: Django's method_decorator
    # applies it anew to each request's bound method, and the web adapter must recognise the
    # view it admitted (and keep its fast lane) across those.
    declared: list[Protection] = []

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if not callable(func):
            raise TypeError(f"baldur.protected({name!r}) decorates a callable, not {type(func).__name__}")
        face_is_async = is_async(func)
        options.check_fallback(face_is_async)
        if not declared:
            site = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
            declared.append(Protection(options, declare(options, site)))
        protection = declared[0]
        wrapper: Callable[..., Any]
        if face_is_async:
            wrapper = async_face(cast(Callable[..., Awaitable[Any]], func), protection)
        else:
            wrapper = sync_face(func, protection)
        if idempotency_key is not None:
            wrapper = _idempotency.Idempotent(wrapper, name, key_function(name, func, idempotency_key)).face(
                face_is_async)
        functools.update_wrapper(wrapper, func)
        wrapper.__baldur__ = protection  # type: ignore[union-attr]
        wrapper.__baldur_priority__ = shed_priority  # type: ignore[union-attr]
        with contextlib.suppress(AttributeError, TypeError):  # a builtin or a bound method takes no attribute
            setattr(func, _web.PROTECTED_BY, name)
        return cast(Callable[P, R], wrapper)

    return decorate


# -- guard -------------------------------------------------------------------

class _Entry:
    """One entry of a guard: its call, and (async) the cancel scope of its timeout."""

    __slots__ = ("call", "guard", "scope")

    def __init__(self, guard: guard, call: Call, scope: anyio.CancelScope | None) -> None:
        self.guard, self.call, self.scope = guard, call, scope


#: The guards entered in this context, innermost last (one variable for all guards: a
#: variable per guard would stay in a long-lived thread's context after the guard is gone).
_entries: contextvars.ContextVar[tuple[_Entry, ...]] = contextvars.ContextVar("baldur_guards", default=())


class guard:  # lower case: used like a function, ``with baldur.guard("name"):``
    """The pipeline as a context manager around a block of code: ``with`` in sync
    code, ``async with`` in async code.

    ``with baldur.guard("search", timeout=2):`` admits the block (rate limit,
    concurrency, breaker) and records how it ended. With ``async with`` the
    block is cancelled after ``timeout`` seconds and raises ``CallTimeout``;
    with ``with`` a block cannot be interrupted, so ``timeout`` is a
    deadline: a block that ends after it raises ``CallTimeout`` (a failure
    for the breaker). A block cannot be re-run or replaced, so retries and
    fallbacks belong to ``protected``. One guard object may be entered by
    many threads and tasks at once, and again within one of them.
    """

    __slots__ = ("_protection",)

    def __init__(self, name: str, *, breaker: Breaker | None = DEFAULT_BREAKER,
                 rate_limit: RateLimit | str | None = None, max_concurrency: int | None = None,
                 timeout: float | None = None) -> None:
        options = CallOptions.check(name, breaker, rate_limit, max_concurrency, timeout, None, None, api="guard")
        self._protection = Protection(options, declare(options, f"guard({name!r})"))

    def __enter__(self) -> guard:
        call = Call(self._protection, may_be_view=False)
        call.enter()
        call.started = time.monotonic()
        self._push(_Entry(self, call, None))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        call = self._pop().call
        timeout = self._protection.options.timeout
        late = timeout is not None and time.monotonic() - call.started > timeout
        if late:
            assert timeout is not None
            timed_out = CallTimeout(self._protection.name, timeout)
            call.failed(timed_out)
            raise timed_out from exc
        if exc is not None:
            call.failed(exc)
        else:
            call.succeeded(None)

    async def __aenter__(self) -> guard:
        call = Call(self._protection, may_be_view=False)
        await call.enter_async()
        scope = None
        if self._protection.options.timeout is not None:
            scope = anyio.move_on_after(self._protection.options.timeout)
            scope.__enter__()
        self._push(_Entry(self, call, scope))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        entry = self._pop()
        if entry.scope is not None:
            swallowed = entry.scope.__exit__(exc_type, exc, tb)
            if entry.scope.cancelled_caught:
                timed_out = CallTimeout(self._protection.name, cast(float, self._protection.options.timeout))
                await entry.call.failed_async(timed_out)
                raise timed_out
            if swallowed:
                exc = None
        if exc is not None:
            await entry.call.failed_async(exc)
        else:
            await entry.call.succeeded_async(None)
        return False

    def _push(self, entry: _Entry) -> None:
        _entries.set((*_entries.get(), entry))

    def _pop(self) -> _Entry:
        entries = _entries.get()
        entry = entries[-1]
        assert entry.guard is self, "guards must be left in the reverse order of entering them"
        _entries.set(entries[:-1])
        return entry


# -- handles -------------------------------------------------------------------

class BreakerHandle:
    """Read and steer one named breaker: ``baldur.breaker("payments").open()``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("breaker(name)", name, 'baldur.breaker("payments")', "a non-empty string")
        self.name = name

    def _options(self) -> tuple[_runtime.Runtime, Breaker]:
        runtime = _runtime.current()
        declared = declared_breaker(self.name)
        if declared is DEFAULT_BREAKER:
            return runtime, runtime.default_breaker
        return runtime, cast(Breaker, declared).inherit(runtime.default_breaker)

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
