"""The in-memory store: one process's state, thread-safe and bounded.

It applies the pure policies under one lock, so that each operation is
atomic. State lives in three tables, so that one client's traffic can never
erase another kind of state:

- per name (breakers, concurrency counters, a name's own rate limit): as
  many entries as the code declares names, never evicted;
- per client (rate limits keyed by a client): an LRU of at most
  ``max_keys`` entries; a key whose TAT has passed holds no information and
  is dropped first. Under pressure the least recently used client starts
  again with a full quota, the price of a bounded process;
- idempotency records: bounded in bytes (``max_response_bytes``). A claim
  in flight is never evicted; a completed record is, oldest first, with one
  WARNING per eviction, and its key then runs again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable

from baldur import _log
from baldur.policies import breaker as breaker_policy
from baldur.policies import idempotency
from baldur.policies.breaker import Breaker, BreakerState, Outcome, State
from baldur.policies.concurrency import admits
from baldur.policies.idempotency import IdempotencyRecord, Verdict
from baldur.policies.rate_limit import MICROS, RateDecision, RateLimit, gcra, micros
from baldur.stores._admin import AUDIT_LENGTH, HISTORY_LENGTH, AuditEntry, BreakerView, Forced, Transition
from baldur.stores._decisions import TRANSITION_EVENTS, Admission, announce_transition, rejection
from baldur.stores._types import ExtraLimit, IdempotencyStart, Plan, Ticket

__all__ = ["MemoryStore"]

_CLOSED = State.CLOSED
_logger = logging.getLogger("baldur.idempotency")
#: What a stored record costs beyond its strings (the record object, the table's entry).
_RECORD_OVERHEAD = 200
_SUCCESS = Outcome.SUCCESS
_FORCED_EVENTS = {
    **TRANSITION_EVENTS,
    State.FORCED_OPEN: "circuit.opened",
    State.FORCED_CLOSED: "circuit.closed",
}


class MemoryStore:
    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic,
                 max_response_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_keys = max_keys
        self.max_response_bytes = max_response_bytes
        self.clock = clock
        self._lock = threading.Lock()
        #: Per name: breakers, concurrency counters, a name's own rate limit. Never evicted.
        self._keys: dict[str, object] = {}
        #: Per client: rate-limit TATs, an LRU of at most ``max_keys``.
        self._clients: OrderedDict[str, float] = OrderedDict()
        #: Idempotency records, oldest first, and what they cost in bytes.
        self._records: OrderedDict[str, IdempotencyRecord] = OrderedDict()
        self.record_bytes = 0
        self._admin = _AdminTables()
        _stores.add(self)

    def __len__(self) -> int:
        return len(self._keys) + len(self._clients) + len(self._records)

    # -- the operations ---------------------------------------------------

    def admit(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None) -> Ticket:
        options = plan.breaker
        if not plan.needs_lock and extra is None:
            if options is None:
                return plan.plain_ticket
            cell = self._keys.get(plan.breaker_key)
            # Reading the state without the lock is safe: a closed breaker
            # admits, and a call racing with the opening is one more call.
            if cell is not None and cell.state is _CLOSED:  # type: ignore[attr-defined]
                return plan.plain_ticket
        now = self.clock()
        transition: State | None = None
        admission = Admission.ADMITTED
        decision = extra_decision = None
        holds_slot = trial = False
        wait = 0.0
        lapsed = False
        with self._lock:
            if extra is not None:
                extra_decision = self._rate(extra.key, extra.limit, now, per_client=True)
                if not extra_decision.allowed:
                    admission = Admission.EXTRA_RATE_LIMITED
            if admission is Admission.ADMITTED and plan.rate_limit is not None:
                key = plan.rate_key if client is None else f"{plan.rate_key}:{client}"
                decision = self._rate(key, plan.rate_limit, now, per_client=client is not None)
                if not decision.allowed:
                    admission = Admission.RATE_LIMITED
            if admission is Admission.ADMITTED and plan.max_concurrency is not None:
                count: int = self._get(plan.concurrency_key, 0)  # type: ignore[assignment]
                if admits(count, plan.max_concurrency):
                    self._put(plan.concurrency_key, count + 1)
                    holds_slot = True
                else:
                    admission = Admission.OVERLOADED
            if admission is Admission.ADMITTED and options is not None:
                lapsed = bool(self._admin.deadlines) and self._lapse(plan.name, now)  # admin (issue 12)
                flight = breaker_policy.preflight(self._breaker(plan.breaker_key, plan.name, options), now, options)
                transition = flight.transition
                trial = flight.trial
                if not flight.admitted:
                    if holds_slot:
                        self._release(plan.concurrency_key)
                    admission = Admission.CIRCUIT_OPEN
                    wait = flight.retry_after
        if lapsed:
            announce_transition(plan.name, State.CLOSED, forced_expired=True)
        if transition is not None:
            self._announced(plan.name, transition, now)
        if admission is not Admission.ADMITTED:
            raise rejection(admission, plan, client, decision=decision, extra=extra, extra_decision=extra_decision,
                            retry_after=wait)
        if not trial and not holds_slot and decision is None and extra_decision is None:
            return plan.plain_ticket
        ticket = Ticket(plan, trial, holds_slot, decision)
        ticket.extra_rate = extra_decision
        return ticket

    def finish(self, ticket: Ticket, outcome: Outcome) -> None:
        plan = ticket.plan
        options = plan.breaker
        if not ticket.holds_slot:
            if options is None:
                return
            if outcome is _SUCCESS and not ticket.trial:
                state = self._keys.get(plan.breaker_key)
                if isinstance(state, BreakerState):
                    self.succeed(state)
                    return
        now = self.clock()
        transition = None
        lock = self._lock
        lock.acquire()
        try:
            if ticket.holds_slot:
                self._release(plan.concurrency_key)
            if options is not None:
                state = self._breaker(plan.breaker_key, plan.name, options)
                transition = breaker_policy.record(state, now, options, outcome, ticket.trial)
        finally:
            lock.release()
        if transition is not None:
            self._announced(plan.name, transition, now)

    def fast_lane(self, plan: Plan) -> BreakerState | None:
        """The breaker state a caller may hold on to while it stays closed, or ``None``.

        Only for plans whose whole admission is a closed breaker (no rate
        limit, no concurrency limit, no slow-call timing). While
        ``state.state is CLOSED`` the caller skips ``admit`` and reports each
        success with ``succeed``; anything else goes through ``admit`` and
        ``finish``. A state that leaves the store (reset, eviction) is retired:
        it never reads closed again, so a holder falls back to ``admit``.
        """
        options = plan.breaker
        if options is None or plan.needs_lock or options.slow_call is not None:
            return None
        with self._lock:
            state = self._breaker(plan.breaker_key, plan.name, options)
        return state if state.state is _CLOSED else None

    def succeed(self, state: BreakerState) -> None:
        """A success through the fast lane (see ``fast_lane``): the hottest path of all."""
        now = self.clock()
        if now < state.lane_end and state.state is _CLOSED:
            next(state.lane_count)  # no lock: see ``BreakerState.lane_count``
            return
        with self._lock:
            transition = breaker_policy.open_lane(state, now)
        if transition is not None:
            self._announced(state.name, transition, now)

    def rate(self, key: str, limit: RateLimit) -> RateDecision:
        now = self.clock()
        with self._lock:
            decision = self._rate(key, limit, now, per_client=True)
        if not decision.allowed:
            _log.emit("ratelimit.blocked", key, retry_after=round(decision.retry_after, 3))
        return decision

    def read_breaker(self, name: str, options: Breaker) -> State:
        with self._lock:
            state = self._keys.get(f"b:{name}")
            return _CLOSED if state is None else state.state  # type: ignore[attr-defined]

    def force_breaker(self, name: str, options: Breaker, state: State) -> None:
        with self._lock:
            breaker_policy.force(self._breaker(f"b:{name}", name, options), state)
            self._admin.forced.pop(name, None)
            self._admin.deadlines.pop(name, None)
            self._remember(name, str(state), self.clock(), "forced through baldur.breaker()")
        # Forced and reset states are announced like the automatic ones, so an operator's
        # open() shows in the log as plainly as a breaker that opened by itself.
        _log.emit(_FORCED_EVENTS[state], name, state=str(state), forced=True)

    def idempotency_begin(self, key: str, fingerprint: str, token: str) -> IdempotencyStart:
        now = self.clock()
        with self._lock:
            record = self._records.get(key)
            verdict, claim, retry_after = idempotency.begin(record, now, fingerprint, token,
                                                            idempotency.CLAIM_LEASE_SECONDS)
            if claim is not None:
                self._store_record(key, claim, record)
        result = record.result if verdict is Verdict.REPLAY and record is not None else None
        return IdempotencyStart(verdict, result, retry_after)

    def idempotency_complete(self, key: str, token: str, result: str, ttl: float) -> bool:
        now = self.clock()
        with self._lock:
            record = self._records.get(key)
            before = 0 if record is None else _record_size(key, record)
            if not idempotency.complete(record, now, token, result, ttl):
                return False
            assert record is not None
            self.record_bytes += _record_size(key, record) - before
            self._records.move_to_end(key)
            if self.record_bytes > self.max_response_bytes:
                self._evict_records(now)
            return True

    def idempotency_renew(self, key: str, token: str) -> bool:
        now = self.clock()
        with self._lock:
            return idempotency.renew(self._records.get(key), now, token, idempotency.CLAIM_LEASE_SECONDS)

    def idempotency_abort(self, key: str, token: str) -> None:
        now = self.clock()
        with self._lock:
            record = self._records.get(key)
            if idempotency.abort(record, now, token):
                assert record is not None
                self._drop_record(key, record)

    def reset(self) -> None:
        with self._lock:
            for value in self._keys.values():
                _retire(value)
            self._keys.clear()
            self._clients.clear()
            self._records.clear()
            self.record_bytes = 0
            self._admin = _AdminTables()

    def close(self) -> None:
        self.reset()

    # -- helpers (called with the lock held) ------------------------------

    def _rate(self, key: str, limit: RateLimit, now: float, per_client: bool) -> RateDecision:
        # A TAT is kept as a float of microseconds (exact below 2**53 µs, 285 years).
        table: dict[str, object] = self._clients if per_client else self._keys  # type: ignore[assignment]
        stored: float | None = table.get(key)  # type: ignore[assignment]
        tat = None if stored is None else int(stored)
        decision, new_tat = gcra(tat, micros(now), limit)
        if new_tat is not None and new_tat != tat:
            if per_client:
                self._put_client(key, float(new_tat), now)
            else:
                self._keys[key] = float(new_tat)
        return decision

    def _breaker(self, key: str, name: str, options: Breaker) -> BreakerState:
        state: BreakerState | None = self._keys.get(key)  # type: ignore[assignment]
        if state is None:
            state = BreakerState.new(options, name)
            self._keys[key] = state
        return state

    def _get(self, key: str, default: object) -> object:
        return self._keys.get(key, default)

    def _put(self, key: str, value: object) -> None:
        self._keys[key] = value

    def _put_client(self, key: str, tat: float, now: float) -> None:
        clients = self._clients
        clients[key] = tat
        clients.move_to_end(key)
        if len(clients) > self.max_keys:
            # Drop what holds no information first (a drained TAT), looking at a bounded
            # number of the oldest keys; then plain LRU.
            for _ in range(min(64, len(clients))):
                oldest, value = next(iter(clients.items()))
                if value > now * MICROS:
                    break
                del clients[oldest]
                if len(clients) <= self.max_keys:
                    return
            while len(clients) > self.max_keys:
                clients.popitem(last=False)

    def _store_record(self, key: str, record: IdempotencyRecord, replaced: IdempotencyRecord | None) -> None:
        if replaced is not None:
            self.record_bytes -= _record_size(key, replaced)
        self._records[key] = record
        self._records.move_to_end(key)
        self.record_bytes += _record_size(key, record)

    def _drop_record(self, key: str, record: IdempotencyRecord) -> None:
        del self._records[key]
        self.record_bytes -= _record_size(key, record)

    def _evict_records(self, now: float) -> None:
        """Back under ``max_response_bytes``: drop expired records, then the oldest completed
        ones. A claim in flight is never dropped (its call is running)."""
        evicted = 0
        for key, record in list(self._records.items()):
            if self.record_bytes <= self.max_response_bytes:
                break
            expired = record.until <= now
            if expired or record.done:
                self._drop_record(key, record)
                evicted += 0 if expired else 1
        if evicted:
            _logger.warning("the memory store evicted %d stored idempotent response(s) to stay within "
                            "BALDUR_MEMORY_MAX_RESPONSE_BYTES=%d: a retry with such a key runs again; "
                            "raise the bound or use Redis (BALDUR_REDIS_URL)", evicted, self.max_response_bytes)

    def _release(self, key: str) -> None:
        count = self._keys.get(key)
        if isinstance(count, int) and count > 0:
            self._keys[key] = count - 1


    # -- admin (issue 12): what the admin API reads and steers -------------

    def admin_breaker_names(self) -> list[str]:
        """The names of the breakers this store holds."""
        with self._lock:
            return [value.name for key, value in self._keys.items()
                    if key.startswith("b:") and isinstance(value, BreakerState)]

    def admin_read_breaker(self, name: str, options: Breaker) -> BreakerView:
        now = self.clock()
        with self._lock:
            lapsed = bool(self._admin.deadlines) and self._lapse(name, now)
            view = self._view(name, options, now)
        if lapsed:
            announce_transition(name, State.CLOSED, forced_expired=True)
        return view

    def admin_force(self, name: str, options: Breaker, target: State, forced: Forced | None,
                    cause: str) -> BreakerView:
        """Force ``name`` to ``target`` (``CLOSED``: reset) for every caller; ``forced`` says why and
        until when (its ``until`` lapses by itself: the breaker returns to its own rule)."""
        now = self.clock()
        with self._lock:
            breaker_policy.force(self._breaker(f"b:{name}", name, options), target)
            self._admin.forced.pop(name, None)
            self._admin.deadlines.pop(name, None)
            if forced is not None:
                self._admin.forced[name] = forced
                if forced.until is not None:
                    self._admin.deadlines[name] = now + (forced.until - time.time())
            self._remember(name, str(target), now, cause)
            view = self._view(name, options, now)
        _log.emit(_FORCED_EVENTS[target], name, state=str(target), forced=True)
        return view

    def admin_transitions(self, name: str, limit: int = HISTORY_LENGTH) -> list[Transition]:
        with self._lock:
            return list(self._admin.history.get(name, ()))[:limit]

    def admin_audit_append(self, entry: AuditEntry) -> None:
        with self._lock:
            self._admin.audit.appendleft(entry)

    def admin_audit(self, limit: int) -> list[AuditEntry]:
        with self._lock:
            return list(self._admin.audit)[:limit]

    def admin_reset_client(self, name: str, client: str, per_client_policy: bool) -> None:
        """Give ``client`` a full quota again: of the web hooks' per-client limit
        (``per_client_policy``), else of ``name``'s own per-client rate limit."""
        with self._lock:
            self._clients.pop(f"web:{client}" if per_client_policy else f"r:{name}:{client}", None)

    def admin_in_flight(self, name: str) -> int:
        count = self._keys.get(f"c:{name}", 0)
        return count if isinstance(count, int) else 0

    def _view(self, name: str, options: Breaker, now: float) -> BreakerView:
        state = self._keys.get(f"b:{name}")
        if not isinstance(state, BreakerState):
            return BreakerView(name, _CLOSED, 0, 0, None, None)
        if state.state is _CLOSED:
            breaker_policy.absorb(state)
        calls, failures = state.window.totals(now)
        opened = state.state in (State.OPEN, State.HALF_OPEN)
        opened_at = time.time() - (now - state.opened_at) if opened else None
        return BreakerView(name, state.state, calls, failures, opened_at, self._admin.forced.get(name))

    def _lapse(self, name: str, now: float) -> bool:
        """An expired forced state returns the breaker to its own rule (closed, empty window)."""
        deadline = self._admin.deadlines.get(name)
        if deadline is None or now < deadline:
            return False
        del self._admin.deadlines[name]
        forced = self._admin.forced.pop(name, None)
        state = self._keys.get(f"b:{name}")
        if not isinstance(state, BreakerState) or state.state not in (State.FORCED_OPEN, State.FORCED_CLOSED):
            return False
        breaker_policy.force(state, _CLOSED)
        self._remember(name, str(_CLOSED), now, "forced state expired" if forced is not None else "")
        return True

    def _announced(self, name: str, transition: State, now: float) -> None:
        with self._lock:
            self._remember(name, str(transition), now)
        announce_transition(name, transition)

    def _remember(self, name: str, target: str, now: float, cause: str = "") -> None:
        """Add a transition to ``name``'s history (lock held); it starts from the last one's state."""
        history = self._admin.history.get(name)
        if history is None:
            history = self._admin.history[name] = deque(maxlen=HISTORY_LENGTH)
        source = history[0].target if history else str(_CLOSED)
        if not cause:
            cause = _CAUSES.get((source, target), "")
        history.appendleft(Transition(time.time() - (self.clock() - now), source, target, cause))


class _AdminTables:
    """The admin API's state (issue 12): bounded like the rest (history per name, audit overall)."""

    def __init__(self) -> None:
        self.forced: dict[str, Forced] = {}
        #: name → when (this store's clock) its forced state lapses.
        self.deadlines: dict[str, float] = {}
        self.history: dict[str, deque[Transition]] = {}
        self.audit: deque[AuditEntry] = deque(maxlen=AUDIT_LENGTH)


_CAUSES = {(str(source), str(target)): why for source, target, why in breaker_policy.TRANSITIONS}

#: Every memory store of the process: a child after fork() gives each a fresh lock,
#: since a thread of the parent (absent in the child) may have held it.
_stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _record_size(key: str, record: IdempotencyRecord) -> int:
    return _RECORD_OVERHEAD + len(key) + len(record.fingerprint) + len(record.token) + len(record.result or "")


def _retire(value: object) -> None:
    """A breaker state that left the store must never read closed again (see ``fast_lane``)."""
    if isinstance(value, BreakerState):
        value.state = State.FORCED_OPEN
