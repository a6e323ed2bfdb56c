"""What the admin API reads from and writes to a store (issue 12): both stores answer with these.

Times are seconds since the epoch (the Redis server's clock on Redis), so
that every worker and the admin server agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from baldur.policies.breaker import State

__all__ = ["AUDIT_LENGTH", "HISTORY_LENGTH", "AuditEntry", "BreakerView", "Forced", "Transition"]

#: Transitions kept per breaker, newest first (``admin_transitions``).
HISTORY_LENGTH = 50
#: Audit entries kept, newest first.
AUDIT_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class Forced:
    """Why a breaker is forced: by whom (a key id), when, and until when (``None``: until reset)."""

    state: State
    reason: str
    by: str
    at: float
    until: float | None


@dataclass(frozen=True, slots=True)
class BreakerView:
    """A breaker as the store holds it: its state, the window's counts, when it opened."""

    name: str
    state: State
    calls: int
    failures: int
    #: When it last opened (open and half-open states only).
    opened_at: float | None
    forced: Forced | None


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    source: str
    target: str
    cause: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    key_id: str
    action: str
    target: str
    reason: str
    for_seconds: float | None
