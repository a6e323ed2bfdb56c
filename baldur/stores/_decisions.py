"""What a store decides, named once for every store.

Admission answers with an ``Admission``: the memory store computes it and
``admit.lua`` returns it as its first field (the Redis store hands the scripts
these codes, see ``lua_constants``). ``rejection`` turns a refusal into the
exception the caller sees, logged alike on every store, and
``announce_transition`` logs a breaker's change of state.
"""

from __future__ import annotations

import enum
from typing import Any

from baldur import _log
from baldur.errors import CircuitOpen, Overloaded, RateLimited, Rejected
from baldur.policies.breaker import BUCKETS, State
from baldur.policies.concurrency import SHED_RETRY_AFTER
from baldur.policies.rate_limit import RateDecision
from baldur.stores._types import ExtraLimit, Plan

__all__ = ["TRANSITION_EVENTS", "Admission", "announce_transition", "lua_constants", "rejection"]


class Admission(enum.IntEnum):
    """The answer of one admission step (``admit``), in the order the checks run."""

    ADMITTED = 0
    #: The extra limit (a web adapter's per-client limit) is used up; checked first.
    EXTRA_RATE_LIMITED = 4
    RATE_LIMITED = 1
    OVERLOADED = 2
    CIRCUIT_OPEN = 3


#: A breaker's new state → the event that announces it.
TRANSITION_EVENTS = {
    State.OPEN: "circuit.opened",
    State.HALF_OPEN: "circuit.half_open",
    State.CLOSED: "circuit.closed",
}


def announce_transition(name: str, transition: State, **fields: Any) -> None:
    _log.emit(TRANSITION_EVENTS[transition], name, state=str(transition), **fields)


def rejection(admission: Admission, plan: Plan, client: str | None, *, decision: RateDecision | None = None,
              extra: ExtraLimit | None = None, extra_decision: RateDecision | None = None,
              retry_after: float = 0.0) -> Rejected:
    """The exception for a refused admission (logged as its kind requires).

    ``decision`` is the plan's rate decision, ``extra_decision`` the extra
    limit's; ``retry_after`` is the breaker's wait.
    """
    refused: Rejected
    if admission is Admission.EXTRA_RATE_LIMITED:
        assert extra is not None and extra_decision is not None
        _log.emit("ratelimit.blocked", extra.key, retry_after=round(extra_decision.retry_after, 3))
        return RateLimited(extra.policy, extra_decision.retry_after, limit=extra.limit, decision=extra_decision)
    if admission is Admission.RATE_LIMITED:
        assert decision is not None
        _log.emit("ratelimit.blocked", plan.name if client is None else f"{plan.name}:{client}",
                  retry_after=round(decision.retry_after, 3))
        refused = RateLimited(plan.name, decision.retry_after, limit=plan.rate_limit, decision=decision)
    elif admission is Admission.OVERLOADED:
        _log.emit("backpressure.shed", plan.name)
        refused = Overloaded(plan.name, SHED_RETRY_AFTER)
    elif admission is Admission.CIRCUIT_OPEN:
        refused = CircuitOpen(plan.name, retry_after)
    else:
        raise ValueError(f"{admission!r} is not a refusal")
    # The extra limit admitted the call in the same step: its headers still belong on the answer.
    refused.extra_rate = extra_decision
    return refused


def lua_constants() -> str:
    """Lua definitions of the numbers the scripts share with Python (prepended to every script)."""
    lines = [f"local BUCKETS = {BUCKETS}"]
    lines += [f"local {admission.name} = {admission.value}" for admission in Admission]
    return "\n".join(lines) + "\n"
