"""One call through a protection's pipeline: the control flow, written once.

A ``Call`` is entered (admission: the web request's claim, then the store's
one-step *admit* of rate limit, concurrency and breaker pre-flight) and left
(the outcome classified, then recorded — or, for a web view, reported to the
adapter, which records it once the response is sent). Leaving says whether
the fallback answers instead of the exception.

Like stamina's ``Attempt``, it has a sync face (``enter``, ``failed``,
``succeeded``) and an async face (the same names with ``_async``); the faces
differ only in how they reach the store. ``Lane`` (``baldur._protection``)
has the same faces for the fast lane. The wrappers of ``protected`` and the
two faces of ``guard`` (``baldur._api``) are thin drivers of these.
"""

from __future__ import annotations

import sys
import time

import anyio

from baldur import _metrics, _runtime
from baldur._protection import Protection, classify
from baldur.adapters import _web
from baldur.errors import Rejected
from baldur.policies.breaker import Outcome
from baldur.stores._types import Ticket

__all__ = ["Call"]

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE


class Call:
    """One call past the fast lane: admitted on entry, its outcome settled on exit."""

    __slots__ = ("plan", "protection", "refusal", "runtime", "started", "ticket", "web")
    #: Entering and leaving may ask the store (``Lane`` never does).
    io = True

    def __init__(self, protection: Protection, *, may_be_view: bool = True) -> None:
        runtime = _runtime._current or _runtime.current()
        self.protection = protection
        self.runtime = runtime
        self.plan = protection.plan(runtime)
        web = _web.current() if may_be_view and _web.hooks_installed else None
        #: The web request this call serves as its view (the adapter records the outcome).
        self.web = web if web is not None and not web.entered and (
            web.front is protection or web.is_view(protection)) else None
        #: The store's proof of admission, for a call that records its own outcome.
        self.ticket: Ticket | None = None
        #: Why admission refused the call, and whether the fallback may answer it.
        self.refusal: tuple[Exception, bool] | None = None
        self.started = 0.0

    # -- the faces -----------------------------------------------------------

    def enter(self) -> None:
        """Admit the call, or raise the store's ``Rejected``."""
        if self._admitted_at_front():
            return
        client = self._admission()
        try:
            ticket = self.runtime.sync.admit(self.plan, client)
        except Rejected as exc:
            raised = self._refused(exc)
            if raised is exc:
                raise
            raise raised from exc
        self._admitted(ticket)

    async def enter_async(self) -> None:
        if self._admitted_at_front():
            return
        client = self._admission()
        try:
            ticket = await self.runtime.async_.admit(self.plan, client)
        except Rejected as exc:
            raised = self._refused(exc)
            if raised is exc:
                raise
            raise raised from exc
        self._admitted(ticket)

    def failed(self, exc: BaseException) -> bool:
        """The call (or its admission) raised ``exc``: settle it; ``True`` if a fallback may answer."""
        outcome = self._failure(exc)
        if isinstance(outcome, bool):
            return outcome
        assert self.ticket is not None
        self.runtime.sync.finish(self.ticket, outcome)
        return outcome is _FAILURE

    async def failed_async(self, exc: BaseException) -> bool:
        outcome = self._failure(exc)
        if isinstance(outcome, bool):
            return outcome
        assert self.ticket is not None
        with anyio.CancelScope(shield=True):  # a cancelled call still gives back what it holds
            await self.runtime.async_.finish(self.ticket, outcome)
        return outcome is _FAILURE

    def succeeded(self, result: object) -> None:
        """The call returned ``result``: settle it."""
        outcome = self._success(result)
        if outcome is not None:
            assert self.ticket is not None
            self.runtime.sync.finish(self.ticket, outcome)
            self.protection.refresh_lane(self.runtime, self.plan)

    async def succeeded_async(self, result: object) -> None:
        outcome = self._success(result)
        if outcome is not None:
            assert self.ticket is not None
            await self.runtime.async_.finish(self.ticket, outcome)
            self.protection.refresh_lane(self.runtime, self.plan)

    # -- the one control flow the faces share --------------------------------

    def _admitted_at_front(self) -> bool:
        """The web adapter admitted this view's request before the app's hooks ran:
        no second admission; its refusal, if any, is raised here for the fallback."""
        web = self.web
        if web is None or web.front is not self.protection:
            return False
        web.entered = True
        refusal = web.deferred
        if refusal is not None:
            self.refusal = (refusal, True)
            raise refusal
        self.started = time.monotonic()
        return True

    def _admission(self) -> str | None:
        """The client key to admit with: a view's request claims it."""
        web = self.web
        return None if web is None else web.claim(self.plan)

    def _admitted(self, ticket: Ticket) -> None:
        if self.web is not None:
            self.web.admitted(ticket, self.plan)
        else:
            self.ticket = ticket
        next(self.protection.meter.entered)
        breaker = self.plan.breaker
        if self.web is not None or (breaker is not None and breaker.slow_call is not None):
            self.started = time.monotonic()

    def _refused(self, exc: Rejected) -> Exception:
        """What to raise for the refusal ``exc``: itself, or, for a web view of an app that
        Baldur was not wired into, the HTTP answer it should have been (logged)."""
        raised: Exception = exc
        _metrics.rejected(exc)
        if self.web is not None:
            self.web.refused(exc)
        elif self.protection.options.fallback is None and "flask" in sys.modules:
            from baldur.adapters.flask import unwired_refusal

            raised = unwired_refusal(self.protection, exc) or exc
        self.refusal = (raised, True)
        return raised

    def _failure(self, exc: BaseException) -> Outcome | bool:
        """The outcome to record for ``exc``, or, when there is nothing to record here,
        whether a fallback may answer."""
        refusal = self.refusal
        if refusal is not None and refusal[0] is exc:
            return refusal[1]
        outcome = classify(exc, self.plan)
        if self.web is not None:
            self.web.ended(outcome, exc)
            return outcome is _FAILURE
        self.protection.meter.settled(outcome, exc)
        return outcome

    def _success(self, result: object) -> Outcome | None:
        """Report a view's success to its adapter; the outcome to record here, if any."""
        web = self.web
        if web is None:
            outcome = self._timed()
            self.protection.meter.settled(outcome)
            return outcome
        breaker = self.plan.breaker
        if breaker is not None and breaker.slow_call is not None:
            web.ended(self._timed(), None)
        web.returned(result)
        return None

    def _timed(self) -> Outcome:
        """A success slower than the breaker's ``slow_call`` counts as a failure."""
        breaker = self.plan.breaker
        slow = None if breaker is None else breaker.slow_call
        return _FAILURE if slow is not None and time.monotonic() - self.started > slow else _SUCCESS
