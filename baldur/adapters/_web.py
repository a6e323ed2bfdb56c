"""The protocol a web adapter implements: one request in progress, as the pipeline sees it.

An adapter (Flask, Django) opens a ``WebCall`` around each request and sets
``web_call`` to it while the app handles the request, where ``current()`` finds
it. Before any hook of the app runs, it admits the
request (``admit_front``): the per-client limit and, when the view is a
protected callable, the view's admission, in one store step. A refusal is
the adapter's answer at once, whoever would have answered next (unless the
view's fallback answers for its own refusals: then the view's ``Call``
raises it, see ``front``). The view's ``Call`` then *claims* the request
(no second admission), reports how the call ended, and the adapter records
the outcome once the response is sent, when it knows the status.

A new adapter subclasses ``WebRequest`` (a ``WebCall`` that it can settle),
answers ``is_view`` and ``client_key``, may override ``returned`` and
``error_status``, calls ``install()`` once, sets ``web_call`` while the app
handles each request (reset in a ``finally``), calls ``admit_front`` first of
all, reads ``policies`` for the headers, and calls ``settle()`` (or
``settle_async()``) once the response has been sent.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from baldur import _metrics, _runtime
from baldur.errors import RateLimited, Rejected
from baldur.policies.breaker import Outcome, State
from baldur.policies.rate_limit import RateDecision, RateLimit
from baldur.stores._types import ExtraLimit, Plan, Ticket

if TYPE_CHECKING:
    from baldur._idempotency import Claim
    from baldur._protection import Lane, Protection
    from baldur.adapters._shedding import _InFlight

__all__ = ["EXEMPT", "PROTECTED_BY", "WebCall", "WebRequest", "current", "exempt", "hooks_installed", "install",
           "web_call"]

V = TypeVar("V")
_CLOSED = State.CLOSED
_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED
#: Marks a view taken out of the per-client limit and shedding (``baldur.exempt``).
EXEMPT = "__baldur_exempt__"
#: Set by ``protected`` on the function it wrapped: registered as a view in place of the
#: wrapper (a decorator-order mistake), that function is unprotected.
PROTECTED_BY = "__baldur_protected_by__"


def exempt(view: V) -> V:
    """Take a web view out of the per-client rate limit and load shedding (health checks,
    metrics): ``@app.get("/healthz")`` above ``@baldur.exempt``. The view's own
    ``protected`` options, if any, still apply."""
    try:
        setattr(view, EXEMPT, True)
    except AttributeError:
        raise TypeError(f"baldur.exempt marks a view function, not {type(view).__name__}") from None
    return view


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
    #: The protection whose admission was made at the front, before the app's hooks.
    front: Protection | None = None
    #: That admission's refusal, left for the view's fallback to answer.
    deferred: Rejected | None = None
    #: Admitted at the front, this request serves as the call of this protection's view, until
    #: the view starts (see ``stands_in_for``).
    stand_in: Protection | None = None
    #: The fast lane the view was admitted on (a closed breaker, nothing else to ask):
    #: no ticket; the view's call is this object (see ``failed``, ``succeeded``).
    lane: Lane | None = None
    #: As a call on the lane, it never does I/O (like ``Lane``).
    io = False

    # -- what an adapter answers ---------------------------------------------

    def is_view(self, protection: Protection) -> bool:
        """This protection guards the view that serves the request."""
        raise NotImplementedError

    def client_key(self) -> str:
        """The client's key for per-client limits."""
        raise NotImplementedError

    def returned(self, result: Any) -> None:
        """The view returned ``result`` (adapters look at it, e.g. for a streamed body)."""

    def error_status(self, error: BaseException) -> int | None:
        """The HTTP status that an exception raised by the view stands for, whatever answered
        it in the end (Flask's ``abort(404)``); ``None`` for any other exception."""
        return None

    def per_client(self, limit: RateLimit) -> ExtraLimit:
        """The adapter's per-client ``limit``, spent by this request's client (``default`` in the headers)."""
        return ExtraLimit("default", f"web:{self.client_key()}", limit)

    # -- what the view's call tells it ---------------------------------------

    def add_policy(self, name: str, limit: RateLimit, decision: RateDecision) -> None:
        self.policies = (*self.policies, (name, limit, decision))

    def claim(self, plan: Plan) -> str | None:
        """Take the request for this view; return the client key its admission needs."""
        self.entered = True
        return self.client_key() if plan.rate_limit is not None else None

    def admit_front(self, protection: Protection | None, extra: ExtraLimit | None) -> Rejected | None:
        """Admit the request before anything of the app runs: ``extra`` (the adapter's
        per-client limit) and the view's ``protection``, in one store step. Returns the
        refusal the adapter must answer now, or ``None`` (admitted, or refused with a
        fallback that answers in the view).

        On the view's fast lane (its breaker reads closed) the one store step is the limit's:
        a closed breaker admits whatever the limit admits (no ticket, no second step to finish)."""
        runtime = _runtime._current or _runtime.current()
        if protection is None:
            return None if extra is None else self._front_rated(extra, runtime.sync.rate(extra.key, extra.limit))
        lane = self._front_lane(protection)
        if lane is not None:
            if extra is not None:
                refusal = self._front_rated(extra, runtime.sync.rate(extra.key, extra.limit))
                if refusal is not None:
                    return refusal
            self.lane, self.stand_in = lane, protection
            next(lane.entered)
            return None
        plan = protection.plan(runtime)
        try:
            ticket = runtime.sync.admit(plan, self.client_key() if plan.rate_limit is not None else None, extra)
        except Rejected as exc:
            return self._front_refused(exc, protection, extra)
        self._front_admitted(ticket, plan, extra)
        return None

    async def admit_front_async(self, protection: Protection | None, extra: ExtraLimit | None) -> Rejected | None:
        """``admit_front`` for an adapter on an event loop: the store's async face."""
        runtime = _runtime._current or _runtime.current()
        if protection is None:
            return None if extra is None else self._front_rated(extra, await runtime.async_.rate(extra.key,
                                                                                               extra.limit))
        lane = self._front_lane(protection)
        if lane is not None:
            if extra is not None:
                refusal = self._front_rated(extra, await runtime.async_.rate(extra.key, extra.limit))
                if refusal is not None:
                    return refusal
            self.lane, self.stand_in = lane, protection
            next(lane.entered)
            return None
        plan = protection.plan(runtime)
        try:
            ticket = await runtime.async_.admit(plan, self.client_key() if plan.rate_limit is not None else None,
                                                extra)
        except Rejected as exc:
            return self._front_refused(exc, protection, extra)
        self._front_admitted(ticket, plan, extra)
        return None

    def _front_rated(self, extra: ExtraLimit, decision: RateDecision) -> Rejected | None:
        self.add_policy(extra.policy, extra.limit, decision)
        if decision.allowed:
            return None
        refusal = RateLimited(extra.policy, decision.retry_after)
        _metrics.rejected(refusal)
        return refusal

    def _front_lane(self, protection: Protection) -> Lane | None:
        """Admission at the front begins: the view's fast lane, if its breaker reads closed there
        (a lane of an earlier runtime was retired with its store: it reads open)."""
        self.front = protection
        lane = protection.lane
        return lane if lane is not None and lane.state.state is _CLOSED else None

    def _front_refused(self, exc: Rejected, protection: Protection, extra: ExtraLimit | None) -> Rejected | None:
        _metrics.rejected(exc)
        self.rejected = True
        if exc.extra_rate is not None and extra is not None:
            self.add_policy(extra.policy, extra.limit, exc.extra_rate)
        by_adapter = extra is not None and isinstance(exc, RateLimited) and exc.limit is extra.limit
        if protection.options.fallback is not None and not by_adapter:  # the fallback answers in the view
            self.deferred = exc
            return None
        return exc

    def _front_admitted(self, ticket: Ticket, plan: Plan, extra: ExtraLimit | None) -> None:
        self.ticket = ticket
        if plan.breaker is None or plan.breaker.slow_call is None:
            self.stand_in = self.front
        next(_metrics.meter(plan.name).entered)
        if ticket.extra_rate is not None and extra is not None:
            self.add_policy(extra.policy, extra.limit, ticket.extra_rate)
        if ticket.rate is not None and plan.rate_limit is not None:
            self.add_policy(plan.name, plan.rate_limit, ticket.rate)

    def stands_in_for(self, protection: Protection) -> bool:
        """The view of ``protection`` starts; ``True`` when this request, admitted at the front,
        serves as the view's call (as a ``Lane`` would): the adapter judges the outcome by the
        response anyway. Not when a refusal waits for the view's fallback, nor when the breaker
        times slow calls (a ``Call`` keeps the clock), nor for the view's own calls after it started."""
        if self.stand_in is not protection:
            return False
        self.stand_in = None
        self.entered = True
        return True

    def refused(self, exc: Rejected) -> None:
        """The view's admission (made by its ``Call``, not at the front) was refused."""
        self.rejected = True

    def admitted(self, ticket: Ticket, plan: Plan) -> None:
        self.ticket = ticket
        if ticket.rate is not None and plan.rate_limit is not None:
            self.add_policy(plan.name, plan.rate_limit, ticket.rate)

    def ended(self, outcome: Outcome | None, error: BaseException | None) -> None:
        """The view's call ended: ``error`` if it raised; ``outcome`` if it counts on its own
        (an exception, a slow call), else the adapter judges by the response."""
        self.outcome, self.error = outcome, error

    # -- the view's call when it stands in (what ``Call`` does for it, without a Call) --

    def failed(self, exc: BaseException) -> bool:
        """The view this request stands in for raised ``exc``: ``True`` if its fallback may answer."""
        assert self.front is not None
        from baldur._protection import classify

        outcome = classify(exc, self.front.plan(_runtime._current or _runtime.current()))
        self.ended(outcome, exc)
        return outcome is _FAILURE

    def succeeded(self, result: object) -> None:
        self.returned(result)

    # -- what the adapter calls when the response has been sent --------------

    def judged(self, status: int) -> Outcome:
        """How the view's call ends for its breaker, by the response's ``status``: an
        exception or a 5xx fails, a 4xx does not; Baldur's refusals and a view that never
        began are no outcome."""
        if self.error is None and self.outcome is None and self.entered and not self.rejected:
            return _FAILURE if status >= 500 else _SUCCESS  # the view returned: its status says
        if self.rejected:
            return _IGNORED  # Baldur refused a call inside the view (a fallback answered)
        if self.front is not None and not self.entered:
            return _IGNORED  # admitted at the front, then answered by a hook or decorator of the app
        error = self.error
        if isinstance(error, Rejected):
            return _IGNORED  # a protected call inside the view was refused (answered by a fallback)
        raised = None if error is None else self.error_status(error)
        if raised is not None:
            return _FAILURE if raised >= 500 else _SUCCESS
        if self.outcome is _IGNORED:
            return _IGNORED  # an exception the breaker was told to ignore
        if status >= 500:
            return _FAILURE
        if self.outcome is _FAILURE and status < 400:
            return _FAILURE  # a fallback answered for a failed call, or a slow call
        return _SUCCESS

    def record(self, outcome: Outcome) -> None:
        """Record the view's ``outcome`` (the adapter judged it by the response): through
        the lane, or the ticket of its admission (then the next request may take the lane)."""
        lane = self.lane
        if lane is not None:
            if outcome is _SUCCESS:  # as any call on the lane (``Lane.succeeded``): one counter step each
                next(lane.calls)
                lane.succeed(lane.state)
                return
            lane.protection.meter.settled(outcome, self.error)
            if outcome is _FAILURE:
                lane.protection.lane_finished(outcome)
            return
        ticket = self.ticket
        if ticket is None:
            return
        _metrics.meter(ticket.plan.name).settled(outcome, self.error)
        runtime = _runtime._current or _runtime.current()
        runtime.sync.finish(ticket, outcome)
        front = self.front
        if front is not None and outcome is _SUCCESS:
            front.refresh_lane(runtime, front.plan(runtime))

    async def record_async(self, outcome: Outcome) -> None:
        """``record`` for an adapter on an event loop: the store's async face."""
        ticket = self.ticket
        if self.lane is not None or ticket is None:
            self.record(outcome)  # the lane, or nothing to record: no I/O
            return
        _metrics.meter(ticket.plan.name).settled(outcome, self.error)
        runtime = _runtime._current or _runtime.current()
        await runtime.async_.finish(ticket, outcome)
        front = self.front
        if front is not None and outcome is _SUCCESS:
            front.refresh_lane(runtime, front.plan(runtime))


class WebRequest(WebCall):
    """A request as a web adapter keeps it: the ``WebCall``, and what settling it needs (its
    in-flight slot, an Idempotency-Key claim, the response's status). An adapter makes one
    subclass per app (or middleware) that sets ``requests_in_flight``, so that making a request
    runs no ``__init__``."""

    #: Whether the request holds a slot of ``requests_in_flight``, and since when (monotonic).
    in_flight = False
    admitted_at = 0.0
    #: The client's key, once asked for.
    client = ""
    #: The Idempotency-Key this request claimed, until its response is stored (or not).
    idempotency_claim: Claim | None = None
    status = 0
    settled = False
    requests_in_flight: _InFlight

    def settle(self) -> None:
        """Once, when the response has been sent (or the client went away): abort a claim whose
        response was never stored, record the view's outcome, give back the in-flight slot (even
        when the first two raise, or an async settle is cancelled: a slot kept would count forever)."""
        if self.settled:
            return
        self.settled = True
        claim = self.idempotency_claim
        try:
            if claim is not None:
                self.idempotency_claim = None
                claim.abort()
            if self.ticket is not None or self.lane is not None:
                self.record(self.judged(self.status))
        finally:
            if self.in_flight:
                self.requests_in_flight.leave(self, self.admitted_at)

    async def settle_async(self) -> None:
        """``settle`` for an adapter on an event loop: the store's async face."""
        if self.settled:
            return
        self.settled = True
        claim = self.idempotency_claim
        try:
            if claim is not None:
                self.idempotency_claim = None
                await claim.abort_async()
            if self.ticket is not None or self.lane is not None:
                await self.record_async(self.judged(self.status))
        finally:
            if self.in_flight:
                self.requests_in_flight.leave(self, self.admitted_at)


#: The request in progress: each adapter sets it around the app's handling of a request (until
#: the view has returned: a body streamed after that is sent with no request in progress).
web_call: ContextVar[WebCall | None] = ContextVar("baldur_web_call", default=None)

#: The ``WebCall`` of the request in progress, or ``None``.
current = web_call.get

#: Whether any adapter opens ``WebCall``s: until one does, a protected call need not look.
hooks_installed = False


def install() -> None:
    """An adapter calls this once, before its first ``WebCall``."""
    global hooks_installed
    hooks_installed = True
