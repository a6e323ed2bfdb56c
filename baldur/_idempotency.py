"""Claims on idempotency keys, shared by ``protected(idempotency_key=...)`` and the web adapters.

A claim is a lease in the store (``policies.idempotency``). While the call
runs, the process's background loop renews every claim it holds, so a slow
call keeps its key and a dead worker's key frees itself when the lease lapses.
When the store is unavailable, idempotency fails closed (``StoreUnavailable``)
unless ``BALDUR_IDEMPOTENCY_FAIL_OPEN=1``, which runs the call without the
guarantee and logs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import anyio

from baldur import _log, _runtime
from baldur.bridges import background
from baldur.errors import IdempotencyConflict, IdempotencyMismatch, StoreUnavailable
from baldur.policies.idempotency import LEASE_SECONDS, Verdict
from baldur.stores._types import IdempotencyStart

__all__ = ["Claim", "begin", "fell_back", "fingerprint"]

_logger = logging.getLogger("baldur.idempotency")
#: The name of a protected call that answered with its fallback: such a result is not stored.
fell_back: ContextVar[str | None] = ContextVar("baldur_fell_back", default=None)


def fingerprint(*parts: bytes | str) -> str:
    """SHA-256 over the parts (length-prefixed, so no two part lists collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


class Claim:
    """This process holds ``key`` until ``complete`` or ``abort``; renewed in the background."""

    __slots__ = ("key", "runtime", "token")

    def __init__(self, runtime: _runtime.Runtime, key: str, token: str) -> None:
        self.runtime, self.key, self.token = runtime, key, token
        _held.add(self)

    # The call has run by now: a store that fails at this step must not turn its result into
    # an error. The claim stays until its lease lapses; then the key is free again.

    def complete(self, result: str) -> None:
        _held.discard(self)
        try:
            self.runtime.sync.idempotency_complete(self.key, self.token, result,
                                                   self.runtime.settings.idempotency_ttl)
        except StoreUnavailable as exc:
            _unsettled("stored for replay", exc)

    def abort(self) -> None:
        _held.discard(self)
        try:
            self.runtime.sync.idempotency_abort(self.key, self.token)
        except StoreUnavailable as exc:
            _unsettled("released", exc)

    async def complete_async(self, result: str) -> None:
        _held.discard(self)
        try:
            await self.runtime.async_.idempotency_complete(self.key, self.token, result,
                                                           self.runtime.settings.idempotency_ttl)
        except StoreUnavailable as exc:
            _unsettled("stored for replay", exc)

    async def abort_async(self) -> None:
        _held.discard(self)
        try:
            await self.runtime.async_.idempotency_abort(self.key, self.token)
        except StoreUnavailable as exc:
            _unsettled("released", exc)


def _unsettled(what: str, exc: StoreUnavailable) -> None:
    _logger.warning("an idempotent call's result may not be %s (%s); at worst its key stays in use until its "
                    "lease lapses (%g s)", what, exc, LEASE_SECONDS)


class _Held:
    """The claims this process holds, and the background task that renews them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: set[Claim] = set()
        self._renewing = False

    def add(self, claim: Claim) -> None:
        with self._lock:
            self._claims.add(claim)
            start = not self._renewing
            self._renewing = True
        if start:
            background.portal().start_task_soon(self._renew_forever)

    def discard(self, claim: Claim) -> None:
        with self._lock:
            self._claims.discard(claim)

    async def _renew_forever(self) -> None:
        try:
            while True:
                await anyio.sleep(LEASE_SECONDS / 3)
                with self._lock:
                    claims = list(self._claims)
                    if not claims:
                        self._renewing = False
                        return
                for claim in claims:
                    # If the store is unavailable the lease may lapse; the store said so already.
                    with contextlib.suppress(StoreUnavailable):
                        await claim.runtime.async_.idempotency_renew(claim.key, claim.token)
        except BaseException:
            self._renewing = False
            raise


_held = _Held()


def _start(start: IdempotencyStart, name: str) -> None:
    """Raise for the verdicts that do not run the call."""
    if start.verdict is Verdict.CONFLICT:
        _log.emit("idempotency.conflict", name, retry_after=1.0, lease_left=round(start.retry_after, 3))
        # The first call will most likely finish soon; its lease (start.retry_after) only
        # bounds how long a dead worker's claim can last.
        raise IdempotencyConflict(name, 1.0, f"{name!r}: a call with this idempotency key is still running")
    if start.verdict is Verdict.MISMATCH:
        raise IdempotencyMismatch(f"{name!r}: this idempotency key was used with a different payload")


def begin(runtime: _runtime.Runtime, name: str, key: str, print_: str) -> tuple[Claim | None, IdempotencyStart]:
    """Claim ``key`` from sync code: (the claim, or ``None`` to run unguarded (fail open) or replay)."""
    token = secrets.token_hex(8)
    try:
        start = runtime.sync.idempotency_begin(key, print_, token)
    except StoreUnavailable as exc:
        return _unguarded(runtime, name, exc)
    return _claimed(runtime, name, key, token, start)


async def begin_async(runtime: _runtime.Runtime, name: str, key: str,
                      print_: str) -> tuple[Claim | None, IdempotencyStart]:
    """``begin`` for async code."""
    token = secrets.token_hex(8)
    try:
        start = await runtime.async_.idempotency_begin(key, print_, token)
    except StoreUnavailable as exc:
        return _unguarded(runtime, name, exc)
    return _claimed(runtime, name, key, token, start)


def _unguarded(runtime: _runtime.Runtime, name: str, exc: StoreUnavailable) -> tuple[None, IdempotencyStart]:
    """The store is unavailable: fail closed (raise ``exc``), or run without the guarantee."""
    if not runtime.settings.idempotency_fail_open:
        raise exc
    _logger.warning("idempotency for %r runs without its guarantee: the store is unavailable "
                    "(BALDUR_IDEMPOTENCY_FAIL_OPEN=1)", name)
    return None, IdempotencyStart(Verdict.RUN)


def _claimed(runtime: _runtime.Runtime, name: str, key: str, token: str,
             start: IdempotencyStart) -> tuple[Claim | None, IdempotencyStart]:
    _start(start, name)
    if start.verdict is Verdict.REPLAY:
        _log.emit("idempotency.replayed", name)
        return None, start
    return Claim(runtime, key, token), start


def encode_result(name: str, result: Any) -> str:
    """A function's result as stored for replay: JSON, never pickle."""
    try:
        return json.dumps({"result": result}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name!r} returned {type(result).__name__}, which is not JSON-serialisable; an "
                        f"idempotent call's result is stored as JSON for replay (return plain data)") from exc


def decode_result(stored: str | None) -> Any:
    return None if stored is None else json.loads(stored)["result"]


def idempotent_sync(func: Callable[..., Any], name: str, key_of: Callable[..., str | None]) -> Callable[..., Any]:
    """Outermost step of a sync pipeline: replay, refuse, or run and store."""

    def call(*args: Any, **kwargs: Any) -> Any:
        runtime = _runtime._current or _runtime.current()
        given = key_of(*args, **kwargs)
        if given is None:  # no key for this call: no guarantee, as without idempotency_key
            return func(*args, **kwargs)
        key = f"fn:{name}:{given}"
        claim, start = begin(runtime, name, key, "")
        if start.verdict is Verdict.REPLAY:
            return decode_result(start.result)
        if claim is None:
            return func(*args, **kwargs)
        token = fell_back.set(None)
        try:
            result = func(*args, **kwargs)
            stored = None if fell_back.get() == name else encode_result(name, result)
        except BaseException:
            claim.abort()
            raise
        finally:
            fell_back.reset(token)
        if stored is None:
            claim.abort()  # a fallback's answer is not the call's result
        else:
            claim.complete(stored)
        return result

    return call


def idempotent_async(func: Callable[..., Awaitable[Any]], name: str,
                     key_of: Callable[..., str | None]) -> Callable[..., Awaitable[Any]]:
    """Outermost step of an async pipeline: replay, refuse, or run and store."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        runtime = _runtime._current or _runtime.current()
        given = key_of(*args, **kwargs)
        if given is None:
            return await func(*args, **kwargs)
        key = f"fn:{name}:{given}"
        claim, start = await begin_async(runtime, name, key, "")
        if start.verdict is Verdict.REPLAY:
            return decode_result(start.result)
        if claim is None:
            return await func(*args, **kwargs)
        token = fell_back.set(None)
        try:
            result = await func(*args, **kwargs)
            stored = None if fell_back.get() == name else encode_result(name, result)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await claim.abort_async()
            raise
        finally:
            fell_back.reset(token)
        if stored is None:
            await claim.abort_async()
        else:
            await claim.complete_async(stored)
        return result

    return call
