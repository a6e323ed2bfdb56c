"""The protocol a web adapter implements: one request in progress, as the pipeline sees it.

An adapter (Flask today) opens a ``WebCall`` around each request and sets
``web_call`` for its duration. When the request's view is a protected
callable, the view's ``Call`` *claims* the request: it admits the call with
the client's key (a refusal becomes the adapter's HTTP answer before the
view's body runs), keeps the ticket here and reports how the call ended. The
adapter records the outcome once the response is sent, when it knows the
status.

A new adapter subclasses ``WebCall``, answers ``is_view`` and ``client_key``,
may override ``returned``, calls ``install()`` once, and reads ``ticket``,
``outcome``, ``error``, ``rejected`` and ``policies`` when it settles.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from baldur.errors import RateLimited, Rejected
from baldur.policies.breaker import Outcome
from baldur.policies.rate_limit import RateDecision, RateLimit
from baldur.stores._types import ExtraLimit, Plan, Ticket

if TYPE_CHECKING:
    from baldur._protection import Protection

__all__ = ["WebCall", "hooks_installed", "install", "web_call"]


class WebCall:
    """A web request in progress, opened by a web adapter around the app."""

    # Class-level defaults rather than __init__: most requests never set most of them,
    # and this object is made for every request.
    entered = False
    ticket: Ticket | None = None
    #: Set when the view's call raised (before any fallback), or was slow.
    outcome: Outcome | None = None
    error: BaseException | None = None
    #: The answer is Baldur's own refusal: not an outcome of the view.
    rejected = False
    #: (policy name, limit, decision) of each rate limit applied, for the headers.
    policies: tuple[tuple[str, RateLimit, RateDecision], ...] = ()
    #: The adapter's per-client limit, left to the view's admission (one store step, not two).
    extra: ExtraLimit | None = None

    # -- what an adapter answers ---------------------------------------------

    def is_view(self, protection: Protection) -> bool:
        """This protection guards the view that serves the request."""
        raise NotImplementedError

    def client_key(self) -> str:
        """The client's key for per-client limits."""
        raise NotImplementedError

    def returned(self, result: Any) -> None:
        """The view returned ``result`` (adapters look at it, e.g. for a streamed body)."""

    # -- what the view's call tells it ---------------------------------------

    def add_policy(self, name: str, limit: RateLimit, decision: RateDecision) -> None:
        self.policies = (*self.policies, (name, limit, decision))

    def claim(self, plan: Plan) -> str | None:
        """Take the request for this view; return the client key its admission needs."""
        self.entered = True
        return self.client_key() if plan.rate_limit is not None else None

    def refused(self, exc: Rejected) -> bool:
        """The view's admission was refused; ``True`` when the adapter's own limit refused it
        (the adapter answers, not the view's fallback)."""
        self.rejected = True
        extra, self.extra = self.extra, None
        if extra is not None and exc.extra_rate is not None:
            self.add_policy(extra.policy, extra.limit, exc.extra_rate)
        return extra is not None and isinstance(exc, RateLimited) and exc.limit is extra.limit

    def admitted(self, ticket: Ticket, plan: Plan) -> None:
        self.ticket = ticket
        if ticket.extra_rate is not None and self.extra is not None:
            self.add_policy(self.extra.policy, self.extra.limit, ticket.extra_rate)
        self.extra = None
        if ticket.rate is not None and plan.rate_limit is not None:
            self.add_policy(plan.name, plan.rate_limit, ticket.rate)

    def ended(self, outcome: Outcome | None, error: BaseException | None) -> None:
        """The view's call ended: ``error`` if it raised; ``outcome`` if it counts on its own
        (an exception, a slow call), else the adapter judges by the response."""
        self.outcome, self.error = outcome, error


web_call: ContextVar[WebCall | None] = ContextVar("baldur_web_call", default=None)

#: Whether any adapter opens ``WebCall``s: until one does, the fast lane need not look.
hooks_installed = False


def install() -> None:
    """An adapter calls this once, before its first ``WebCall``."""
    global hooks_installed
    hooks_installed = True
