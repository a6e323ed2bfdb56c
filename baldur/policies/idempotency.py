"""Idempotency keys as a pure state machine (IETF Idempotency-Key draft, Stripe semantics).

One record per scoped key: ``running`` (a claim, held as a lease by the
worker that runs the call) or ``done`` (the stored result, kept ``ttl``
seconds). A request with a key gets one of four verdicts:

* ``RUN``      — no record, or a running record whose lease expired (its
  worker died): this request claims the key and runs;
* ``REPLAY``   — a done record with the same fingerprint: answer its result;
* ``CONFLICT`` — a running record with a live lease: 409, retry later;
* ``MISMATCH`` — a record with another fingerprint: 422, the key was reused
  for a different payload.

The memory store applies these functions under its lock; the Redis scripts
(``redis_scripts/idempotency_*.lua``) follow them rule for rule.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["IdempotencyRecord", "Verdict", "abort", "begin", "complete", "renew"]

#: A claim's lease: renewed by the running worker, taken over when it lapses.
CLAIM_LEASE_SECONDS = 30.0


class Verdict(enum.Enum):
    RUN = "run"
    REPLAY = "replay"
    CONFLICT = "conflict"
    MISMATCH = "mismatch"


@dataclass(slots=True)
class IdempotencyRecord:
    fingerprint: str
    token: str
    #: ``running``: until when the claim holds; ``done``: until when the result is kept.
    until: float
    #: The stored result (``None`` while running).
    result: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


def begin(record: IdempotencyRecord | None, now: float, fingerprint: str, token: str,
          lease: float) -> tuple[Verdict, IdempotencyRecord | None, float]:
    """The verdict for a request, the record to store (``None``: unchanged) and a retry-after."""
    if record is not None and record.until <= now:
        record = None  # an expired result, or the lease of a worker that died
    if record is None:
        return Verdict.RUN, IdempotencyRecord(fingerprint, token, now + lease), 0.0
    if record.fingerprint != fingerprint:
        return Verdict.MISMATCH, None, 0.0
    if record.done:
        return Verdict.REPLAY, None, 0.0
    return Verdict.CONFLICT, None, record.until - now


def _holds(record: IdempotencyRecord | None, now: float, token: str) -> bool:
    """``token`` still holds a live claim on the record."""
    return record is not None and record.token == token and not record.done and record.until > now


def complete(record: IdempotencyRecord | None, now: float, token: str, result: str, ttl: float) -> bool:
    """Store ``result`` for the claim ``token`` holds; ``False`` if the claim was lost."""
    if record is None or not _holds(record, now, token):
        return False
    record.result = result
    record.until = now + ttl
    return True


def renew(record: IdempotencyRecord | None, now: float, token: str, lease: float) -> bool:
    """Extend a running claim's lease; ``False`` if the claim was lost."""
    if record is None or not _holds(record, now, token):
        return False
    record.until = now + lease
    return True


def abort(record: IdempotencyRecord | None, now: float, token: str) -> bool:
    """Whether the claim ``token`` holds may be dropped (the call's result is not stored)."""
    return _holds(record, now, token)
