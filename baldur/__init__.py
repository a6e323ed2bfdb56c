"""Baldur: circuit breaker, rate limiting, backpressure, timeouts, retries and fallbacks
for Flask and any Python call, behind one decorator.

    @baldur.protected("payments", timeout=2, retry=baldur.Retry(attempts=3))
    def charge(order): ...
"""

from baldur._api import breaker, guard, protected
from baldur._runtime import Runtime, init, reset
from baldur._version import __version__
from baldur.adapters._web import exempt
from baldur.errors import (
    BaldurError,
    CallTimeout,
    CircuitOpen,
    ConfigError,
    IdempotencyConflict,
    IdempotencyMismatch,
    Overloaded,
    RateLimited,
    Rejected,
    StoreUnavailable,
)
from baldur.policies.breaker import Breaker
from baldur.policies.rate_limit import RateLimit
from baldur.policies.retry import Retry

__all__ = [
    "BaldurError",
    "Breaker",
    "CallTimeout",
    "CircuitOpen",
    "ConfigError",
    "IdempotencyConflict",
    "IdempotencyMismatch",
    "Overloaded",
    "RateLimit",
    "RateLimited",
    "Rejected",
    "Retry",
    "Runtime",
    "StoreUnavailable",
    "__version__",
    "breaker",
    "exempt",
    "guard",
    "init",
    "protected",
    "reset",
]
