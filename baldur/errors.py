"""Every exception Baldur raises, under one root.

``BaldurError`` is the root. ``Rejected`` groups the answers that mean "not now,
try again later" and carries ``retry_after`` (seconds); the web adapters turn
each of them into the HTTP answer of its class (``http_status``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baldur.policies.rate_limit import RateDecision, RateLimit

__all__ = [
    "BaldurError",
    "CallTimeout",
    "CircuitOpen",
    "ConfigError",
    "IdempotencyConflict",
    "IdempotencyMismatch",
    "Overloaded",
    "RateLimited",
    "Rejected",
    "StoreUnavailable",
]


class BaldurError(Exception):
    """Root of every exception raised by Baldur."""


class ConfigError(BaldurError, ValueError):
    """A setting or option is invalid; the message names it, the value and a good example."""

    def __init__(self, setting: str, value: object, example: str, reason: str = "", *,
                 message: str | None = None) -> None:
        self.setting = setting
        self.value = value
        self.example = example
        self.reason = reason
        why = f" ({reason})" if reason else ""
        # ``message`` replaces "is not valid" where the value is fine and something else is wrong.
        text = message if message is not None else f"{setting}={value!r} is not valid{why}"
        super().__init__(f"{text}; for example: {example}")


class Rejected(BaldurError):
    """The call was not run. ``retry_after`` says when trying again makes sense."""

    http_status = 503
    problem = "rejected"

    def __init__(self, name: str, retry_after: float, detail: str | None = None) -> None:
        self.name = name
        self.retry_after = max(0.0, retry_after)
        #: The decision of an extra limit admitted in the same step before this refusal
        #: (a web adapter's per-client limit): its headers still belong on the answer.
        self.extra_rate: RateDecision | None = None
        super().__init__(detail or f"{name!r}: {self.problem} (retry after {self.retry_after:.3g} s)")


class CircuitOpen(Rejected):
    """The circuit breaker of this name is open (or its half-open trials are all taken)."""

    problem = "circuit open"


class RateLimited(Rejected):
    """The rate limit of this name (or of this client on this name) is used up.

    ``limit`` and ``decision`` (when known) let an adapter write the IETF
    ``RateLimit-Policy`` and ``RateLimit`` headers.
    """

    http_status = 429
    problem = "rate limited"

    def __init__(self, name: str, retry_after: float, detail: str | None = None, *,
                 limit: RateLimit | None = None, decision: RateDecision | None = None) -> None:
        super().__init__(name, retry_after, detail)
        self.limit = limit
        self.decision = decision


class Overloaded(Rejected):
    """Too many calls are in flight: the call was shed to keep the others fast."""

    problem = "overloaded"


class IdempotencyConflict(Rejected):
    """A call with the same idempotency key is still running."""

    http_status = 409
    problem = "idempotency key in use"


class IdempotencyMismatch(BaldurError):
    """The idempotency key was used before with a different payload."""

    http_status = 422


class CallTimeout(BaldurError, TimeoutError):
    """The protected call ran longer than its ``timeout``; it counts as a failure."""

    http_status = 504

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        super().__init__(f"{name!r} did not finish within {timeout:g} s")


class StoreUnavailable(BaldurError):
    """The shared store cannot be reached and this operation must not run without it."""

    http_status = 503
