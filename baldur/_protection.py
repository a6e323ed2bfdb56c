"""One declaration, compiled for the runtime in force: its store plan and its fast lane.

``CallOptions`` say what a ``protected``/``guard`` declaration asked for;
``Protection`` turns them into what the store executes (a ``Plan``, whose
breaker fills the options it was not given from the runtime's settings) and
keeps it until ``baldur.init()`` builds another runtime. It also holds the
fast lane: the state of a closed breaker that, on a store deciding in memory,
admits calls without asking the store (see ``MemoryStore.fast_lane``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from baldur import _metrics, _runtime
from baldur._options import DEFAULT_BREAKER, CallOptions
from baldur.errors import CallTimeout
from baldur.policies.breaker import Breaker, BreakerState, Outcome, State
from baldur.stores._types import Plan

__all__ = ["Lane", "Protection", "classify", "live_protections"]

_CLOSED = State.CLOSED
_FAILURE = Outcome.FAILURE


class Lane:
    """A call on the fast lane: a closed breaker's state handed out by the store. While it
    reads closed, a call skips admission and a success costs one counter step. It is left
    like a ``Call`` (``baldur._call``), through its sync face only: it never does I/O
    (``io`` is false), which spares async callers two awaits per call."""

    __slots__ = ("calls", "entered", "protection", "state", "succeed")
    io = False

    def __init__(self, protection: Protection, state: BreakerState, succeed: Callable[[BreakerState], None]) -> None:
        self.protection, self.state, self.succeed = protection, state, succeed
        #: The name's metrics counters, stepped where a call on the lane starts and ends.
        self.entered, self.calls = protection.meter.entered, protection.meter.calls

    def failed(self, exc: BaseException) -> bool:
        return self.protection.lane_failed(exc) is _FAILURE

    def succeeded(self, result: object) -> None:
        next(self.calls)
        self.succeed(self.state)


class Protection:
    """``options`` and, for the runtime in force, the compiled plan and the fast lane."""

    __slots__ = ("__weakref__", "_compiled", "declaration", "lane", "meter", "options")

    def __init__(self, options: CallOptions, declaration: object = None) -> None:
        self.options = options
        #: Keeps this name's breaker declaration registered while the decorated callable lives.
        self.declaration = declaration
        #: (runtime, plan), replaced as one value so that a reader never mixes two runtimes.
        self._compiled: tuple[_runtime.Runtime, Plan] | None = None
        self.lane: Lane | None = None
        self.meter = _metrics.meter(options.name, breaker=options.breaker is not None)
        _live.add(self)

    @property
    def name(self) -> str:
        return self.options.name

    def plan(self, runtime: _runtime.Runtime) -> Plan:
        compiled = self._compiled
        if compiled is not None and compiled[0] is runtime:
            return compiled[1]
        declared = self.options.breaker
        breaker = None
        if declared is DEFAULT_BREAKER:
            breaker = runtime.default_breaker
        elif isinstance(declared, Breaker):
            breaker = declared.inherit(runtime.default_breaker)
        plan = Plan(self.options.name, breaker, self.options.rate_limit, self.options.max_concurrency)
        self._compiled, self.lane = (runtime, plan), None
        return plan

    def refresh_lane(self, runtime: _runtime.Runtime, plan: Plan) -> None:
        """After a call on the full path: take the fast lane again if the store offers one."""
        lane = self.lane
        if lane is None or lane.state.state is not _CLOSED:
            state = runtime.sync.fast_lane(plan)
            self.lane = None if state is None else Lane(self, state, runtime.sync.succeed)

    def lane_failed(self, exc: BaseException) -> Outcome:
        """A call on the fast lane raised: record it as the full path would and say how it counts."""
        runtime = _runtime._current or _runtime.current()
        outcome = classify(exc, self.plan(runtime))
        self.meter.settled(outcome, exc)
        self.lane_finished(outcome)
        return outcome

    def lane_finished(self, outcome: Outcome) -> None:
        """A call on the fast lane ended other than in a plain success: record it as the full path would."""
        runtime = _runtime._current or _runtime.current()
        runtime.sync.finish(self.plan(runtime).plain_ticket, outcome)


#: Every protection whose decorated callable lives: what the admin API lists (issue 12).
_live: weakref.WeakSet[Protection] = weakref.WeakSet()


def live_protections() -> list[Protection]:
    return list(_live)


def classify(exc: BaseException, plan: Plan) -> Outcome:
    """How an exception raised by the call counts: a failure (the fallback applies) or ignored."""
    if isinstance(exc, CallTimeout):
        return _FAILURE
    if plan.breaker is not None:
        return plan.breaker.classify(exc)
    return _FAILURE if isinstance(exc, Exception) else Outcome.IGNORED
