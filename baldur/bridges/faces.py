"""Turn a store's sync face into an async one, and an async face into a sync one.

The pipeline has one sync path and one async path; these adapters let each
path use any store without a branch of its own.
"""

from __future__ import annotations

from baldur.bridges.loops import run_sync
from baldur.policies.breaker import Breaker, BreakerState, Outcome, State
from baldur.policies.rate_limit import RateDecision, RateLimit
from baldur.stores._types import AsyncStore, ExtraLimit, IdempotencyStart, Plan, SyncStore, Ticket

__all__ = ["AsyncOverSync", "SyncOverAsync"]


class AsyncOverSync:
    """The async face of a store that decides without I/O: each call completes at once."""

    def __init__(self, store: SyncStore) -> None:
        self.store = store

    async def admit(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None) -> Ticket:
        return self.store.admit(plan, client, extra)

    def admit_without_io(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None
                         ) -> Ticket | None:
        return self.store.admit(plan, client, extra)

    def defer(self, ticket: Ticket, outcome: Outcome) -> bool:
        self.store.finish(ticket, outcome)
        return True

    def rate_without_io(self, key: str, limit: RateLimit) -> RateDecision | None:
        return self.store.rate(key, limit)

    async def finish(self, ticket: Ticket, outcome: Outcome) -> None:
        self.store.finish(ticket, outcome)

    async def rate(self, key: str, limit: RateLimit) -> RateDecision:
        return self.store.rate(key, limit)

    async def read_breaker(self, name: str, options: Breaker) -> State:
        return self.store.read_breaker(name, options)

    async def force_breaker(self, name: str, options: Breaker, state: State) -> None:
        self.store.force_breaker(name, options, state)

    async def idempotency_begin(self, key: str, fingerprint: str, token: str) -> IdempotencyStart:
        return self.store.idempotency_begin(key, fingerprint, token)

    async def idempotency_complete(self, key: str, token: str, result: str, ttl: float) -> bool:
        return self.store.idempotency_complete(key, token, result, ttl)

    async def idempotency_renew(self, key: str, token: str) -> bool:
        return self.store.idempotency_renew(key, token)

    async def idempotency_abort(self, key: str, token: str) -> None:
        self.store.idempotency_abort(key, token)

    async def reset(self) -> None:
        self.store.reset()

    async def close(self) -> None:
        self.store.close()


class SyncOverAsync:
    """The sync face of a store that does I/O: the calling thread drives a loop of its own."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store

    def fast_lane(self, plan: Plan) -> BreakerState | None:
        return None  # shared state is never read without asking the store

    def succeed(self, state: BreakerState) -> None:
        raise AssertionError("a store without a fast lane got a fast-lane success")  # pragma: no cover

    def admit(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None) -> Ticket:
        ticket = self.store.admit_without_io(plan, client, extra)
        return ticket if ticket is not None else run_sync(self.store.admit, plan, client, extra)

    def finish(self, ticket: Ticket, outcome: Outcome) -> None:
        if not self.store.defer(ticket, outcome):
            run_sync(self.store.finish, ticket, outcome)

    def rate(self, key: str, limit: RateLimit) -> RateDecision:
        decision = self.store.rate_without_io(key, limit)
        return decision if decision is not None else run_sync(self.store.rate, key, limit)

    def read_breaker(self, name: str, options: Breaker) -> State:
        return run_sync(self.store.read_breaker, name, options)

    def force_breaker(self, name: str, options: Breaker, state: State) -> None:
        run_sync(self.store.force_breaker, name, options, state)

    def idempotency_begin(self, key: str, fingerprint: str, token: str) -> IdempotencyStart:
        return run_sync(self.store.idempotency_begin, key, fingerprint, token)

    def idempotency_complete(self, key: str, token: str, result: str, ttl: float) -> bool:
        return run_sync(self.store.idempotency_complete, key, token, result, ttl)

    def idempotency_renew(self, key: str, token: str) -> bool:
        return run_sync(self.store.idempotency_renew, key, token)

    def idempotency_abort(self, key: str, token: str) -> None:
        run_sync(self.store.idempotency_abort, key, token)

    def reset(self) -> None:
        run_sync(self.store.reset)

    def close(self) -> None:
        run_sync(self.store.close)
