"""The options of ``protected`` and ``guard``, validated once, at decoration time.

Every bad value raises a ``ConfigError`` naming the argument, the value and a
good example. Declarations of one name must agree on its breaker: the store
keeps one breaker per name, so two sets of options would silently judge it by
whichever call came last.
"""

from __future__ import annotations

import functools
import gc
import inspect
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from baldur.errors import ConfigError
from baldur.policies.breaker import Breaker
from baldur.policies.concurrency import check_limit
from baldur.policies.rate_limit import RateLimit
from baldur.policies.retry import Retry

__all__ = ["DEFAULT_BREAKER", "CallOptions", "KeyOf", "declare", "declared_breaker", "is_async", "key_function"]


class _DefaultBreaker:
    def __repr__(self) -> str:
        return "<the runtime's default breaker>"


#: ``protected(breaker=...)`` left as is: a breaker with the runtime's ``BALDUR_BREAKER_*`` options.
DEFAULT_BREAKER: Any = _DefaultBreaker()

#: An idempotency key computed from a call's arguments; ``None``: this call has no key.
KeyOf = Callable[..., str | None]


@dataclass(frozen=True, slots=True, eq=False)
class CallOptions:
    """What one ``protected``/``guard`` declaration asked for, checked."""

    name: str
    #: ``Breaker`` options, ``DEFAULT_BREAKER``, or ``None`` (no breaker).
    breaker: Breaker | _DefaultBreaker | None
    rate_limit: RateLimit | None
    max_concurrency: int | None
    timeout: float | None
    retry: Retry | None
    fallback: Callable[[Exception], Any] | None

    @classmethod
    def check(cls, name: object, breaker: object, rate_limit: object, max_concurrency: object,
              timeout: object, retry: object, fallback: object, *, api: str = "protected") -> CallOptions:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{api}(name)", name, f'{api}("payments")', "a non-empty string")
        where = f"{api}({name!r}, "
        if not (breaker is None or isinstance(breaker, Breaker | _DefaultBreaker)):
            raise ConfigError(f"{where}breaker=...)", breaker, "breaker=baldur.Breaker(open_for=10)",
                              "a baldur.Breaker or None")
        if isinstance(rate_limit, str):
            rate_limit = RateLimit(rate_limit, setting=f"{where}rate_limit=...)")
        elif rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise ConfigError(f"{where}rate_limit=...)", rate_limit, 'rate_limit="100/minute"',
                              "a baldur.RateLimit or its string")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or not timeout > 0 or timeout == float("inf")):
            raise ConfigError(f"{where}timeout=...)", timeout, "timeout=2.5", "seconds, > 0")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError(f"{where}retry=...)", retry, "retry=baldur.Retry(attempts=3)", "a baldur.Retry or None")
        if fallback is not None and not callable(fallback):
            raise ConfigError(f"{where}fallback=...)", fallback, "fallback=lambda exc: []",
                              "a callable taking the exception")
        return cls(
            name=name,
            breaker=breaker,
            rate_limit=rate_limit if rate_limit is not None and rate_limit.enabled else None,
            max_concurrency=check_limit(max_concurrency, f"{where}max_concurrency=...)"),
            timeout=None if timeout is None else float(timeout),
            retry=retry,
            fallback=fallback,
        )

    def check_fallback(self, for_async: bool) -> None:
        """An async callable needs a coroutine function as fallback, a sync one a plain function."""
        if self.fallback is None or is_async(self.fallback) == for_async:
            return
        example, reason = (("async def fallback(exc): ...", "an async callable needs a coroutine function as fallback")
                           if for_async else
                           ("def fallback(exc): ...", "a sync callable needs a plain function as fallback"))
        raise ConfigError(f"protected({self.name!r}, fallback=...)", self.fallback, example, reason)


def is_async(func: Callable[..., Any]) -> bool:
    """A coroutine function, or a callable (a partial, an object) whose call returns a coroutine."""
    while isinstance(func, functools.partial):
        func = func.func
    call = type(func).__call__ if not inspect.isroutine(func) and not inspect.isclass(func) else None
    return inspect.iscoroutinefunction(func) or (call is not None and inspect.iscoroutinefunction(call))


class _Declaration:
    """Where a name's breaker options were declared, kept while that declaration lives."""

    __slots__ = ("__weakref__", "breaker", "site")

    def __init__(self, breaker: Breaker | _DefaultBreaker, site: str) -> None:
        self.breaker, self.site = breaker, site


_lock = threading.Lock()
_declarations: weakref.WeakValueDictionary[str, _Declaration] = weakref.WeakValueDictionary()


def declare(options: CallOptions, site: str) -> _Declaration | None:
    """Register ``options``'s breaker for its name; ``ConfigError`` if a live declaration of the
    same name asked for different options. The caller keeps the returned declaration alive
    as long as its decorated callable lives."""
    breaker = options.breaker
    if breaker is None:
        return None
    earlier = _register(options.name, breaker, site)
    if earlier.breaker != breaker:
        # The earlier declaration may be garbage that a reference cycle keeps alive (the app
        # of a finished test): only a live one conflicts.
        del earlier
        gc.collect()
        earlier = _register(options.name, breaker, site)
    if earlier.breaker != breaker:
        raise ConfigError(f"{site}: protected({options.name!r}, breaker=...)", breaker,
                          f"breaker={earlier.breaker!r}",
                          f"{earlier.site} declared {options.name!r} with breaker={earlier.breaker!r}; a name has "
                          f"one breaker, so its declarations must agree (or use another name)")
    return earlier


def _register(name: str, breaker: Breaker | _DefaultBreaker, site: str) -> _Declaration:
    """The live declaration of ``name``: the earlier one, or this one if there is none."""
    with _lock:
        earlier = _declarations.get(name)
        if earlier is None:
            earlier = _declarations[name] = _Declaration(breaker, site)
        return earlier


def declared_breaker(name: str) -> Breaker | _DefaultBreaker:
    """The breaker options ``name`` was declared with (the runtime's default if none)."""
    declaration = _declarations.get(name)
    return DEFAULT_BREAKER if declaration is None else declaration.breaker


def key_function(name: str, func: Callable[..., Any], spec: object) -> KeyOf:
    """``idempotency_key`` as a function of the call's arguments, checked at decoration."""
    if callable(spec):
        computed = spec

        def key_from_callable(*args: Any, **kwargs: Any) -> str | None:
            key = computed(*args, **kwargs)
            return None if key is None else str(key)

        return key_from_callable
    if not isinstance(spec, str):
        raise ConfigError(f"protected({name!r}, idempotency_key=...)", spec, 'idempotency_key="order_id"',
                          "an argument's name or a callable over the arguments")
    signature = inspect.signature(func)
    if spec not in signature.parameters:
        raise ConfigError(f"protected({name!r}, idempotency_key=...)", spec,
                          f"idempotency_key={next(iter(signature.parameters), 'order_id')!r}",
                          f"{func.__name__}() has no argument of that name")

    def key_from_argument(*args: Any, **kwargs: Any) -> str | None:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()  # a key argument left at its default is that value
        key = bound.arguments[spec]
        return None if key is None else str(key)

    return key_from_argument
