"""The two faces of a protected callable: thin drivers of one ``Call`` (or ``Lane``).

Only what truly differs between sync and async code lives here: awaiting
the store, a sync deadline against an async cancel scope, ``time.sleep``
against ``anyio.sleep``. Everything else is ``Call``'s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio

from baldur import _idempotency
from baldur._call import Call
from baldur._options import CallOptions
from baldur._protection import Lane, Protection
from baldur.adapters import _web
from baldur.errors import CallTimeout
from baldur.policies.breaker import State
from baldur.policies.retry import next_delay

__all__ = ["async_face", "sync_face"]

_CLOSED = State.CLOSED


def _lane_or_call(protection: Protection) -> Lane | Call | _web.WebCall:
    web = _web.current() if _web.hooks_installed else None
    if web is not None and web.stands_in_for(protection):  # the request's view, admitted at the front
        return web
    lane = protection.lane
    # A web request's view not admitted at the front is a Call (it may be the view); a view's own
    # calls come after it entered.
    if lane is None or lane.state.state is not _CLOSED or (web is not None and not web.entered):
        return Call(protection)
    next(lane.entered)
    return lane


def sync_face(func: Callable[..., Any], protection: Protection) -> Callable[..., Any]:
    fallback = protection.options.fallback
    inner = _sync_inner(func, protection.options)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _lane_or_call(protection)
        try:
            if call.io:  # the lane is admitted already
                cast(Call, call).enter()
            result = inner(*args, **kwargs)
        except BaseException as exc:
            if not call.failed(exc) or fallback is None:
                raise
            return _idempotency.answered_by_fallback(protection.name, fallback, exc)
        call.succeeded(result)
        return result

    return wrapper


def async_face(func: Callable[..., Awaitable[Any]], protection: Protection) -> Callable[..., Awaitable[Any]]:
    fallback = cast(Callable[[Exception], Awaitable[Any]] | None, protection.options.fallback)
    inner = _async_inner(func, protection.options)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _lane_or_call(protection)
        # The lane never does I/O: its sync face serves here too, sparing two awaits per call.
        try:
            if call.io:
                await cast(Call, call).enter_async()
            result = await inner(*args, **kwargs)
        except BaseException as exc:
            if not (await cast(Call, call).failed_async(exc) if call.io else call.failed(exc)) or fallback is None:
                raise
            return await _idempotency.answered_by_fallback(protection.name, fallback, exc)
        if call.io:
            await cast(Call, call).succeeded_async(result)
        else:
            call.succeeded(result)
        return result

    return wrapper


def _sync_inner(func: Callable[..., Any], options: CallOptions) -> Callable[..., Any]:
    """timeout → retry → the call, for a sync callable.

    A sync callable always runs to its end in the caller's thread: Python
    cannot interrupt it safely. Its ``timeout`` is therefore a deadline: no
    retry starts that could not begin before it, and a call that returns (or
    fails) after it raises ``CallTimeout``, its late result discarded.
    """
    timeout, retry, name = options.timeout, options.retry, options.name
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


def _async_inner(func: Callable[..., Awaitable[Any]], options: CallOptions) -> Callable[..., Awaitable[Any]]:
    """timeout (an anyio cancel scope around the retries) → retry → the call."""
    timeout, retry, name = options.timeout, options.retry, options.name
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
