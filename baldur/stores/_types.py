"""What the pipeline hands a store, and what a store must offer.

A store offers a handful of operations, each atomic. ``SyncStore`` is the
face of a store that decides without I/O (memory); ``AsyncStore`` is the face
of one that does I/O (Redis). ``baldur.bridges`` turns either face into the
other, so the pipeline has one sync and one async path and no store-specific
branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from baldur.policies.breaker import Breaker, BreakerState, Outcome, State
from baldur.policies.idempotency import Verdict
from baldur.policies.rate_limit import RateDecision, RateLimit

__all__ = ["AsyncStore", "ExtraLimit", "IdempotencyStart", "Plan", "SyncStore", "Ticket"]


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """One protected name's strategies, compiled once; the keys are precomputed."""

    name: str
    breaker: Breaker | None
    rate_limit: RateLimit | None
    max_concurrency: int | None
    #: Admission needs the store's lock (a rate limit or a concurrency limit).
    needs_lock: bool = field(init=False)
    breaker_key: str = field(init=False)
    rate_key: str = field(init=False)
    concurrency_key: str = field(init=False)
    #: Handed out when the breaker is closed and nothing else needs tracking:
    #: the hot path allocates nothing.
    plain_ticket: Ticket = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "needs_lock", self.rate_limit is not None or self.max_concurrency is not None)
        set_(self, "breaker_key", f"b:{self.name}")
        set_(self, "rate_key", f"r:{self.name}")
        set_(self, "concurrency_key", f"c:{self.name}")
        set_(self, "plain_ticket", Ticket(self))


class ExtraLimit(NamedTuple):
    """A rate limit decided in the same step as a plan's admission (a web adapter's
    per-client limit), so that a request costs one store operation, not two."""

    policy: str
    key: str
    limit: RateLimit


class Ticket:
    """Proof of admission: what ``finish`` must record and release."""

    __slots__ = ("extra_rate", "holds_slot", "lease", "local", "plan", "rate", "trial")

    def __init__(self, plan: Plan, trial: bool = False, holds_slot: bool = False,
                 rate: RateDecision | None = None) -> None:
        self.plan = plan
        self.trial = trial
        self.holds_slot = holds_slot
        self.rate = rate
        #: A shared store's concurrency lease, to give back.
        self.lease: str | None = None
        #: Issued by a shared store's local fallback while it was down.
        self.local = False
        #: The decision of the ``ExtraLimit`` admitted with the plan, if any.
        self.extra_rate: RateDecision | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyStart:
    """Answer of ``idempotency_begin``: run (the caller holds the claim), replay ``result``,
    conflict (``retry_after``) or mismatch."""

    verdict: Verdict
    result: str | None = None
    retry_after: float = 0.0


class SyncStore(Protocol):
    def fast_lane(self, plan: Plan) -> BreakerState | None:
        """A closed breaker's state the caller may use directly, or ``None`` (see MemoryStore)."""

    def succeed(self, state: BreakerState) -> None:
        """A success through the fast lane."""

    def admit(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None) -> Ticket:
        """``extra``, then rate limit, concurrency and breaker pre-flight in one step; raise ``Rejected``."""

    def finish(self, ticket: Ticket, outcome: Outcome) -> None:
        """Record the call's outcome with its breaker and give back its concurrency slot."""

    def rate(self, key: str, limit: RateLimit) -> RateDecision:
        """Spend one unit of ``limit`` for ``key``."""

    def read_breaker(self, name: str, options: Breaker) -> State: ...

    def force_breaker(self, name: str, options: Breaker, state: State) -> None: ...

    def idempotency_begin(self, key: str, fingerprint: str, token: str) -> IdempotencyStart:
        """Claim ``key`` for the caller (``token``), or say why not; see ``policies.idempotency``."""

    def idempotency_complete(self, key: str, token: str, result: str, ttl: float) -> bool: ...

    def idempotency_renew(self, key: str, token: str) -> bool: ...

    def idempotency_abort(self, key: str, token: str) -> None: ...

    def reset(self) -> None:
        """Forget all state (for tests)."""

    def close(self) -> None: ...


class AsyncStore(Protocol):
    def defer(self, ticket: Ticket, outcome: Outcome) -> bool:
        """Record ``outcome`` without I/O if it can wait (written behind); ``False`` if it must be sent."""

    def admit_without_io(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None
                         ) -> Ticket | None:
        """Admit at once when no I/O is needed (raise ``Rejected`` as ``admit`` would); else ``None``."""

    async def admit(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None) -> Ticket: ...

    async def finish(self, ticket: Ticket, outcome: Outcome) -> None: ...

    def rate_without_io(self, key: str, limit: RateLimit) -> RateDecision | None:
        """Spend one unit of ``limit`` for ``key`` at once when no I/O is needed; else ``None``."""

    async def rate(self, key: str, limit: RateLimit) -> RateDecision: ...

    async def read_breaker(self, name: str, options: Breaker) -> State: ...

    async def force_breaker(self, name: str, options: Breaker, state: State) -> None: ...

    async def idempotency_begin(self, key: str, fingerprint: str, token: str) -> IdempotencyStart: ...

    async def idempotency_complete(self, key: str, token: str, result: str, ttl: float) -> bool: ...

    async def idempotency_renew(self, key: str, token: str) -> bool: ...

    async def idempotency_abort(self, key: str, token: str) -> None: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...
