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
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar, cast

import anyio

from baldur import _log, _runtime
from baldur.bridges import background
from baldur.errors import IdempotencyConflict, IdempotencyMismatch, StoreUnavailable
from baldur.policies.idempotency import CLAIM_LEASE_SECONDS, Verdict
from baldur.stores._types import IdempotencyStart

__all__ = ["Claim", "Idempotent", "answered_by_fallback", "decode_result", "encode_result", "fell_back", "fingerprint"]

R = TypeVar("R")
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
    """One idempotency key, from its claim to its settlement.

    ``begin`` claims the key (or finds a result to replay, or refuses);
    while held, the background loop renews the lease; ``complete`` stores
    the result, ``abort`` frees the key. Sync face: ``begin``, ``complete``,
    ``abort``; async face: the same names with ``_async``. The call has run
    by the time it is settled: a store that fails then must not turn its
    result into an error, so settling only logs (the lease lapses by itself).
    """

    __slots__ = ("held", "key", "name", "print_", "runtime", "token")

    def __init__(self, runtime: _runtime.Runtime, name: str, key: str, print_: str) -> None:
        self.runtime, self.name, self.key, self.print_ = runtime, name, key, print_
        self.token = secrets.token_hex(8)
        #: This process holds the key (run the call, then settle); ``False``: replay or unguarded.
        self.held = False

    def begin(self) -> IdempotencyStart:
        """Claim the key; raise ``IdempotencyConflict``/``IdempotencyMismatch`` for a call that must not run."""
        try:
            start = self.runtime.sync.idempotency_begin(self.key, self.print_, self.token)
        except StoreUnavailable as exc:
            return self._unguarded(exc)
        return self._started(start)

    async def begin_async(self) -> IdempotencyStart:
        try:
            start = await self.runtime.async_.idempotency_begin(self.key, self.print_, self.token)
        except StoreUnavailable as exc:
            return self._unguarded(exc)
        return self._started(start)

    def complete(self, result: str) -> None:
        with self._settling("stored for replay"):
            self.runtime.sync.idempotency_complete(self.key, self.token, result, self.runtime.settings.idempotency_ttl)

    async def complete_async(self, result: str) -> None:
        with self._settling("stored for replay"):
            await self.runtime.async_.idempotency_complete(self.key, self.token, result,
                                                           self.runtime.settings.idempotency_ttl)

    def abort(self) -> None:
        with self._settling("released"):
            self.runtime.sync.idempotency_abort(self.key, self.token)

    async def abort_async(self) -> None:
        with self._settling("released"):
            await self.runtime.async_.idempotency_abort(self.key, self.token)

    def _started(self, start: IdempotencyStart) -> IdempotencyStart:
        name = self.name
        if start.verdict is Verdict.CONFLICT:
            # The first call will most likely finish soon; its lease (start.retry_after) only
            # bounds how long a dead worker's claim can last.
            _log.emit("idempotency.conflict", name, retry_after=1.0, lease_left=round(start.retry_after, 3))
            raise IdempotencyConflict(name, 1.0, f"{name!r}: a call with this idempotency key is still running")
        if start.verdict is Verdict.MISMATCH:
            raise IdempotencyMismatch(f"{name!r}: this idempotency key was used with a different payload")
        if start.verdict is Verdict.REPLAY:
            _log.emit("idempotency.replayed", name)
        else:
            self.held = True
            _held.add(self)
        return start

    def _unguarded(self, exc: StoreUnavailable) -> IdempotencyStart:
        """The store is unavailable: fail closed (raise ``exc``), or run without the guarantee."""
        if not self.runtime.settings.idempotency_fail_open:
            raise exc
        _logger.warning("idempotency for %r runs without its guarantee: the store is unavailable "
                        "(BALDUR_IDEMPOTENCY_FAIL_OPEN=1)", self.name)
        return IdempotencyStart(Verdict.RUN)

    @contextlib.contextmanager
    def _settling(self, what: str) -> Iterator[None]:
        self.held = False
        _held.discard(self)
        try:
            yield
        except StoreUnavailable as exc:
            _unsettled(what, exc)


def _unsettled(what: str, exc: StoreUnavailable) -> None:
    _logger.warning("an idempotent call's result may not be %s (%s); at worst its key stays in use until its "
                    "lease lapses (%g s)", what, exc, CLAIM_LEASE_SECONDS)


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
                await anyio.sleep(CLAIM_LEASE_SECONDS / 3)
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


    def forget_after_fork(self) -> None:
        """In a child: the parent's calls and its renewing task are not here; the child's own
        claims start a renewing task of their own."""
        self._lock = threading.Lock()
        self._claims = set()
        self._renewing = False


_held = _Held()
os.register_at_fork(after_in_child=_held.forget_after_fork)


def encode_result(name: str, result: Any) -> str:
    """A function's result as stored for replay: JSON, never pickle."""
    try:
        return json.dumps({"result": result}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name!r} returned {type(result).__name__}, which is not JSON-serialisable; an "
                        f"idempotent call's result is stored as JSON for replay (return plain data)") from exc


def decode_result(stored: str | None) -> Any:
    return None if stored is None else json.loads(stored)["result"]


class Idempotent:
    """The outermost step of a pipeline with ``idempotency_key``: replay, refuse, or run
    ``func`` and store its (JSON) result. ``face`` gives its sync or async driver."""

    __slots__ = ("func", "key_of", "name")

    def __init__(self, func: Callable[..., Any], name: str, key_of: Callable[..., str | None]) -> None:
        self.func, self.name, self.key_of = func, name, key_of

    def face(self, is_async: bool) -> Callable[..., Any]:
        return self._async_face() if is_async else self._sync_face()

    def _claim(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Claim | None:
        """The claim this call's key asks for; ``None``: no key, no guarantee (as without one)."""
        given = self.key_of(*args, **kwargs)
        if given is None:
            return None
        return Claim(_runtime._current or _runtime.current(), self.name, f"fn:{self.name}:{given}", "")

    def _stored(self, result: Any) -> str | None:
        """What to store for ``result``: nothing for a fallback's answer, which is not the call's."""
        return None if fell_back.get() == self.name else encode_result(self.name, result)

    def _sync_face(self) -> Callable[..., Any]:
        func = self.func

        def call(*args: Any, **kwargs: Any) -> Any:
            claim = self._claim(args, kwargs)
            if claim is None:
                return func(*args, **kwargs)
            start = claim.begin()
            if not claim.held:
                return func(*args, **kwargs) if start.verdict is Verdict.RUN else decode_result(start.result)
            mark = fell_back.set(None)
            try:
                result = func(*args, **kwargs)
                stored = self._stored(result)
            except BaseException:
                claim.abort()
                raise
            finally:
                fell_back.reset(mark)
            if stored is None:
                claim.abort()
            else:
                claim.complete(stored)
            return result

        return call

    def _async_face(self) -> Callable[..., Any]:
        func = self.func

        async def call(*args: Any, **kwargs: Any) -> Any:
            claim = self._claim(args, kwargs)
            if claim is None:
                return await func(*args, **kwargs)
            start = await claim.begin_async()
            if not claim.held:
                return await func(*args, **kwargs) if start.verdict is Verdict.RUN else decode_result(start.result)
            mark = fell_back.set(None)
            try:
                result = await func(*args, **kwargs)
                stored = self._stored(result)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await claim.abort_async()
                raise
            finally:
                fell_back.reset(mark)
            if stored is None:
                await claim.abort_async()
            else:
                await claim.complete_async(stored)
            return result

        return call


def answered_by_fallback(name: str, fallback: Callable[[Exception], R], exc: BaseException) -> R:
    """``fallback(exc)``, marked: the idempotent call ``name`` answered with its fallback, so its
    answer is not stored for replay (a call that ran ``name`` inside its body still is)."""
    fell_back.set(name)
    return fallback(cast(Exception, exc))
