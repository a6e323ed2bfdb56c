"""The Redis store: one shared truth for every worker.

Each operation is one Lua script (``redis_scripts/``) run with EVALSHA on the
Redis server's clock, so it is atomic and worker clocks never matter. The
scripts mirror ``baldur.policies`` rule for rule; the test suite runs the same
sequences against this store and the memory store and expects the same
decisions.

On the request's critical path there is at most one round trip: *admit*, and
none for a call whose only shared state is a closed breaker (a call that also
has a limit or a concurrency cap asks Redis for those alone). Every worker keeps
a mirror of the breakers' states: the scripts publish each change of state (on
``<prefix>:breakers``, in the order Redis made them) and the background loop
applies them. While the mirror is listening and reads closed (or forced
closed), such a call is admitted without asking Redis; a breaker the mirror
does not know, or knows open or half-open, is asked (half-open trials stay
exact). The mirror is emptied whenever its subscription is (re)made or Redis
is found down, and learns each breaker again from the next round trip.

A success is not sent at once: it is counted in this process and carried by
the next script call for the same breaker, or flushed by the background loop
within ``FLUSH_SECONDS``; failures, half-open trials and concurrency leases are
settled at once, so write-behind never blunts a breaker.

Connections belong to the loop that made them: each long-lived loop of ours
(the per-thread loops that sync callers drive, the background loop) gets its
own client; calls from any other loop (Flask's per-request loops for async
views, trio) are handed to the background loop.

Degraded is decided by evidence, not by one slow answer. Connections and
scripts are warmed on the background loop after ``init()`` and after
``fork()``, and by the probe that ends an outage, outside any request's budget
(``BALDUR_REDIS_TIMEOUT_MS``). A sync caller's loop connects its own
connection outside any budget too: until it is connected, that loop's calls
go through the background loop's warm client, so no request waits longer than
the budget, its loop's first connection included. An
answer later than the budget fails open for that request only; the store is
marked down by a refused or broken connection (after one reconnect inside the
budget, for a pooled connection that went stale), by an error answer (out of
memory, read-only replica, ACL: Redis refuses the work), or by
``DOWN_AFTER_TIMEOUTS`` late answers in a row. While down, nothing waits on
Redis: rate limits, concurrency and breakers use this process's memory, each
rate limit at this process's share (quota ÷ the workers the server detection
knows of), so the fleet never admits more than the limit; a background probe
runs a real writing script until it passes, each attempt on a new connection
epoch: every loop's connections are renewed, the background loop's by the
attempt that passed. The WARNING lines are damped: at most
one ``store.degraded``/``store.recovered`` pair per ``LOG_DAMPING_SECONDS``,
the next line counting the transitions it stood for.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import itertools
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import anyio

from baldur import _log
from baldur._servers import server_workers
from baldur.bridges import background, is_home_loop, run_sync
from baldur.errors import ConfigError, RateLimited, StoreUnavailable
from baldur.policies.breaker import Breaker, Outcome, State, bucket_width
from baldur.policies.idempotency import CLAIM_LEASE_SECONDS, Verdict
from baldur.policies.rate_limit import ADVANCE_UNITS, MICROS, Advance, RateDecision, RateLimit, micros
from baldur.stores._admin import AUDIT_LENGTH, HISTORY_LENGTH, AuditEntry, BreakerView, Forced, Transition
from baldur.stores._decisions import Admission, announce_transition, lua_constants, rejection
from baldur.stores._types import ExtraLimit, IdempotencyStart, Plan, Ticket
from baldur.stores.memory import MemoryStore

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry as RedisRetry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:
    # Until Baldur is published, the registry's baldur-framework is another project: name what works.
    raise ImportError("the Redis store (BALDUR_REDIS_URL) needs redis-py, which is not installed: "
                      "pip install -e '.[redis]' in a checkout of Baldur, or pip install 'redis[hiredis]>=5.0'"
                      ) from exc

__all__ = ["FLUSH_SECONDS", "MIRROR_CHANNEL", "RedisStore"]

#: How often the background loop sends written-behind successes.
FLUSH_SECONDS = 0.05
#: How often the background loop probes a Redis that is down.
PROBE_SECONDS = 0.5
#: Late answers in a row (no other evidence) that mark Redis down.
DOWN_AFTER_TIMEOUTS = 3
#: At most one degraded/recovered pair of log lines per process in this many seconds.
LOG_DAMPING_SECONDS = 10.0
#: The warm-up and the probe run outside any request: they may wait this long at least.
PROBE_BUDGET_SECONDS = 1.0
#: A concurrency lease held longer than this (a crashed worker's) is taken back.
CONCURRENCY_LEASE_SECONDS = 60.0
#: How long a forced breaker state is kept (every key has a TTL).
FORCED_TTL_SECONDS = 30 * 86400
#: An admin operation (a scan of the breakers, a read of the audit) may take this long: not a request's budget.
ADMIN_BUDGET_SECONDS = 2.0
#: The channel (after the key prefix) on which the scripts publish every change of a breaker's state.
MIRROR_CHANNEL = "breakers"
#: After its subscription broke, the mirror subscribes again this often (it is unused meanwhile).
RESUBSCRIBE_SECONDS = 0.1
#: The mirror forgets everything when it holds this many breakers (it learns them again).
MIRROR_MAX_BREAKERS = 10_000
#: Keys made recently, kept so that a call does not escape and format the same names again.
KEYS_CACHED = 4096
#: Clients whose advance of quota this process holds, at most (the oldest advance is dropped
#: beyond: its units are lost to its client, never given to anyone else); also the clients whose
#: last ask this process remembers.
ADVANCES_MAX = 4096
#: The states whose calls the mirror admits without asking Redis.
_MIRROR_ADMITS = frozenset({str(State.CLOSED), str(State.FORCED_CLOSED)})

_log_store = logging.getLogger("baldur.store")
#: finish.lua's breaker arguments for a call without a breaker: off, and seven unread options.
_NO_BREAKER = ("0", 0, 0, 0, 0, 0, 0, 0)
_OUTCOME_CODE = {Outcome.SUCCESS: "s", Outcome.FAILURE: "f", Outcome.IGNORED: "i"}
_stores: weakref.WeakSet[RedisStore] = weakref.WeakSet()
#: In a forked child: what the parent's stores held (see ``forget_after_fork``), never finalised.
_inherited: list[object] = []


#: The scripts that read or change a breaker: ``_breaker.lua`` is prepended to them (only to them:
#: Redis runs a script's whole text on every call, so a limit's admission loads no breaker code).
_BREAKER_SCRIPTS = frozenset({"admit", "finish", "breaker_state", "admin_breaker", "admin_force"})


def _script(name: str) -> str:
    folder = resources.files("baldur.stores") / "redis_scripts"
    parts = ["_common", "_breaker", name] if name in _BREAKER_SCRIPTS else ["_common", name]
    return lua_constants() + "\n".join((folder / f"{part}.lua").read_text() for part in parts)


class _Script:
    def __init__(self, name: str) -> None:
        self.name = name
        self.text = _script(name)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()
        self._head = b"$7\r\nEVALSHA\r\n$40\r\n" + self.sha.encode() + b"\r\n"

    def packed(self, keys: Sequence[str], args: Sequence[str | int | float | bytes]) -> bytes:
        """The EVALSHA command in RESP, packed here: the part that never changes is packed once, and
        the small items (keys, options: the same call after call) are looked up, not formatted."""
        parts = [b"*%d\r\n" % (len(keys) + len(args) + 3), self._head, _bulks.get(len(keys)) or _bulk(len(keys))]
        for key in keys:
            parts.append(_bulks.get(key) or _bulk(key))
        for arg in args:
            parts.append(_bulks.get(arg) or _bulk(arg))
        return b"".join(parts)


#: Packed RESP bulk strings of recent small items; a bounded cache (emptied when full), so clients'
#: keys can evict nothing but each other's entries, and cost at most its size.
_bulks: dict[str | int | float | bytes, bytes] = {}
BULKS_MAX = 4096
BULK_MAX_BYTES = 256


def _bulk(item: str | int | float | bytes) -> bytes:
    if isinstance(item, bytes):  # an answer of Redis sent back as it came (an advance's TAT): never kept
        return b"$%d\r\n%s\r\n" % (len(item), item)
    data = item.encode() if isinstance(item, str) else repr(item).encode()
    bulk = b"$%d\r\n%s\r\n" % (len(data), data)
    # Only strings and ints are kept: 60.0 == 60 as a dict key, and an int must never be sent as
    # "60.0" (EXPIRE refuses it); a float finding an int's entry is sent as the same number.
    if len(data) <= BULK_MAX_BYTES and type(item) in (str, int):
        if len(_bulks) >= BULKS_MAX:
            _bulks.clear()
        _bulks[item] = bulk
    return bulk


class _RedisDown(Exception):
    """Redis did not answer in time or at all: the caller falls back to memory."""


#: What only says "this answer was late" (not yet evidence that Redis is down).
_LATE = (TimeoutError, asyncio.TimeoutError)


class _Deadline:
    """Ends an operation when its budget runs out (``TimeoutError``), but lets the loop first read
    what already arrived: a process that was not running when the budget ran out (a busy machine)
    must not throw away an answer sitting in its socket, which would fail open where Redis had
    decided.

    The loop reads sockets before it runs due timers, and the task waiting for the answer wakes
    one turn later: so the timer cancels the task one turn later too (``call_soon``), after that
    wake-up. A Redis that did not answer costs one more turn of the loop, no more. The rest is
    ``asyncio.timeout``'s rule (a cancellation from elsewhere stays a cancellation), without its
    scope object: this runs on every round trip."""

    __slots__ = ("cancelling", "expired", "handle", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float) -> None:
        task = asyncio.current_task(loop)
        assert task is not None  # _run awaits: it runs in a task
        self.task = task
        self.cancelling = task.cancelling()
        self.expired = False
        self.handle: asyncio.Handle = loop.call_at(loop.time() + budget, self._due, loop)

    def __enter__(self) -> _Deadline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.handle.cancel()
        if self.expired and self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _due(self, loop: asyncio.AbstractEventLoop) -> None:
        self.handle = loop.call_soon(self._expire)

    def _expire(self) -> None:
        self.expired = True
        self.task.cancel()


class RedisStore:
    """The async face of the Redis store (``SyncOverAsync`` gives sync callers theirs)."""

    def __init__(self, url: str, *, redacted_url: str, prefix: str = "baldur", timeout: float = 0.1,
                 max_keys: int = 100_000, clock: Callable[[], float] | None = None,
                 advance_units: int = ADVANCE_UNITS) -> None:
        try:
            aioredis.ConnectionPool.from_url(url)
        except (ValueError, TypeError) as exc:
            raise ConfigError("BALDUR_REDIS_URL", redacted_url, "redis://localhost:6379/0", str(exc)) from None
        self.url = url
        self.redacted_url = redacted_url
        self.prefix = prefix
        self.timeout = timeout
        #: Tests pass a clock to compare decisions with the memory store; else Redis's own TIME.
        self.clock = clock
        #: The units of a client's quota asked for at once, to spend without asking again (1: none).
        self.advance_units = advance_units
        self.local = MemoryStore(max_keys=max_keys)
        self.down = False
        self.down_reason = ""
        #: How long a concurrency lease lasts unless renewed (the background loop renews held ones).
        self.lease_seconds = CONCURRENCY_LEASE_SECONDS
        #: The processes this one shares each rate limit with while degraded (server detection).
        self.workers = _known_workers()
        #: ``start`` was called: a child after ``fork()`` warms up too.
        self.started = False
        self._scripts = {name: _Script(name) for name in (
            "admit", "admit_limits", "finish", "rate", "breaker_state", "idempotency_begin", "idempotency_settle",
            "health", "lease_renew")}
        # loop → (connection epoch, client): a client of an older epoch is renewed on next use.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, aioredis.Redis]] = (
            weakref.WeakKeyDictionary())
        # loop → (connection epoch, connection, the task that connects it): a sync caller's loop
        # sends scripts on one connection of its own (it runs one operation at a time), with no
        # pool in between, once that task is done (see ``_own_connection``).
        self._connections: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[int, aioredis.Connection, asyncio.Task[None]]] = (
            weakref.WeakKeyDictionary())
        self._epoch = 0
        self._lock = threading.Lock()
        self._pending: dict[str, list[Any]] = {}  # breaker key → [plan, successes, first deferred at]
        self._flusher = False
        self._prober = False
        self._probe_task: asyncio.Task[None] | None = None
        self._late = 0  # late answers in a row
        self._leases: dict[str, str] = {}  # lease id → its concurrency key, while this process holds it
        self._renewer = False
        self._shares: dict[int, tuple[Plan, Plan]] = {}  # id(plan) → (plan, its local share)
        self._limit_shares: dict[RateLimit, RateLimit] = {}
        self._exhausted: dict[tuple[str, str | None], float] = {}  # (name, client) → refused until (monotonic)
        self._closing: set[asyncio.Task[None]] = set()
        self._logged_down_at = -LOG_DAMPING_SECONDS  # when the last store.degraded line was written
        self._down_logged = False  # this outage's store.degraded line is written (its pair is open)
        self._unlogged = 0  # transitions not logged since the last line
        self._lease_ids = itertools.count()
        self._token = secrets.token_hex(4)
        # The mirror: breaker key → (state, until: when a forced state lapses, epoch s; 0 = never).
        # Used only while ``_listening``; ``_heard`` counts the messages applied, ``_generation``
        # the subscriptions made, so that an answer read before a change never overwrites it.
        self._mirror: dict[str, tuple[str, float]] = {}
        self._mirror_keys: dict[str, str] = {}  # breaker name → its key
        self._keys: dict[tuple[str, str, str], str] = {}  # recent (tag, kind, suffix) → key, bounded
        self._listening = False
        self._heard = 0
        self._generation = 0
        self._listener: Any = None  # the background task that keeps the subscription
        self._advances: dict[str, Advance] = {}  # client key → the advance of its quota held here, oldest first
        self._asked: dict[str, int] = {}  # client key → when this process last asked Redis for its quota (µs)
        _stores.add(self)

    def __repr__(self) -> str:
        return f"RedisStore({self.redacted_url!r}, prefix={self.prefix!r}, down={self.down})"

    # -- keys -------------------------------------------------------------

    def _key(self, tag: str, kind: str, suffix: str = "") -> str:
        # The hash tag is the name: every key a script touches lives in one cluster slot.
        # Names and clients' values are escaped: distinct values stay distinct keys, and no
        # value can open a hash tag of its own (and so choose its slot).
        key = self._keys.get((tag, kind, suffix))
        if key is None:
            escaped = _escaped(suffix)
            key = f"{self.prefix}:{{{_escaped(tag)}}}:{kind}{':' + escaped if escaped else ''}"
            if len(self._keys) >= KEYS_CACHED:
                self._keys.clear()  # clients' values come and go: bounded, never grown
            self._keys[(tag, kind, suffix)] = key
        return key

    # -- the operations ---------------------------------------------------

    def admit_without_io(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None
                         ) -> Ticket | None:
        """Admit a call that needs nothing exact from Redis (no shared state, or only a breaker the
        mirror reads closed) at once; ``None`` if it must be asked."""
        if plan.needs_lock or not (plan.breaker is None or self._mirror_admits(plan)):
            return None
        if extra is None:
            return plan.plain_ticket
        decision = self.rate_without_io(extra.key, extra.limit)
        if decision is None:
            return None
        ticket = Ticket(plan)
        ticket.extra_rate = decision
        return ticket

    def rate_without_io(self, key: str, limit: RateLimit) -> RateDecision | None:
        """A unit of ``key``'s advance still in time (see ``Advance``), or ``None``: ask Redis."""
        if not self._advances:
            return None
        with self._lock:
            advance = self._advances.get(key)
            if advance is None:
                return None
            # (one out of time or spent stays until the ask that follows gives its units back)
            return advance.take(self._clock_us()) if advance.limit == limit else None

    def _keep_advance(self, key: str, limit: RateLimit, sent: int, reply: Sequence[Any]) -> None:
        """Redis spent the units of ``reply`` (gcra's last three) of ``key``'s quota: for this
        call, and, if more than one, for the next ones of this process."""
        units, first_slot, stored = reply
        if units > 1:
            with self._lock:
                if len(self._advances) >= ADVANCES_MAX:
                    del self._advances[next(iter(self._advances))]
                self._advances[key] = Advance(limit, sent + first_slot, units, sent, stored)

    def _ask(self, key: str, limit: RateLimit, wanted: int) -> tuple[int, int, Any]:
        """What to ask Redis for with ``key``'s next unit: the units of an advance (1: none), then
        the unspent units of the advance it replaces, given back, and the TAT Redis must still hold
        to take them. An advance only for a client whose calls here outpace the limit's slots (its
        last advance here was spent to the end, or its last ask here came less than one emission
        interval ago): its units are then spent before their slots pass, not lost."""
        now = self._clock_us()
        with self._lock:
            advance = self._advances.pop(key, None)
            last = self._asked.get(key)
            if len(self._asked) >= ADVANCES_MAX:
                self._asked.clear()  # (forgetting asks costs advances, never quota)
            self._asked[key] = now
        if advance is not None and advance.limit != limit:
            advance = None  # another limit's units: Redis would take them back at this limit's interval
        unspent = 0 if advance is None else advance.unspent()
        outpaced = (last is not None and now - last < limit.interval_us) or (advance is not None and not unspent)
        units = wanted if outpaced else 1
        return (units, 0, "") if advance is None else (units, unspent, advance.stored)

    def _clock_us(self) -> int:
        """This process's clock for advances, in µs: the test clock if one is set (Redis reads it too)."""
        return micros(self.clock()) if self.clock is not None else time.monotonic_ns() // 1000

    async def admit(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None) -> Ticket:
        at_once = self.admit_without_io(plan, client, extra)
        if at_once is not None:
            return at_once
        if self.down:
            return self._local_admit(plan, client, extra)
        rate = plan.rate_limit
        # A breaker the mirror reads closed needs nothing from Redis: the call's limits are spent by
        # admit_limits.lua, which loads no breaker code, and successes wait for the flush loop.
        breaker = None if plan.breaker is None or self._mirror_admits(plan) else plan.breaker
        lease = f"{self._token}:{os.getpid()}:{next(self._lease_ids)}" if plan.max_concurrency else ""
        # The extra limit's key lives in another hash slot: one script may touch both on a
        # standalone Redis (the store's target), which keeps a request at one round trip.
        keys = [self._key(plan.name, "r", client or ""), self._key(plan.name, "c"), self._key(plan.name, "b"),
                self._key(extra.key, "r") if extra is not None else self._key(plan.name, "x")]
        args: list[Any] = [
            self._now(),
            rate.interval_us if rate else 0, rate.tolerance_us if rate else 0,
            plan.max_concurrency or 0, lease, self.lease_seconds,
            extra.limit.interval_us if extra else 0, extra.limit.tolerance_us if extra else 0,
        ]
        pending = 0
        if breaker is not None:
            pending = self._take_pending(plan.breaker_key)
            args += (pending, *self._breaker_options(breaker))
        elif extra is not None:
            # An advance serves only calls admitted without I/O otherwise (see admit_without_io).
            args += self._ask(extra.key, extra.limit, self.advance_units if not plan.needs_lock else 1)
        else:
            args += (1, 0, "")
        heard, generation = self._heard, self._generation
        sent = self._clock_us()
        try:
            reply = await self._run("admit_limits" if breaker is None else "admit", keys, args)
        except _RedisDown:
            self._restore_pending(plan, pending)
            if not self.down:
                self._refuse_if_exhausted(plan, client)
            return self._local_admit(plan, client, extra)
        if len(reply) > 15:
            self._learn(keys[2], reply[15], reply[16], heard, generation)
        code, remaining, retry_after, next_after, reset_after, trial, transitions = reply[:7]
        admission = Admission(code)
        self._announce(plan.name, transitions)
        extra_decision = None
        if extra is not None:
            extra_decision = _decision(reply[7:12])
            self._keep_advance(extra.key, extra.limit, sent, reply[12:15])
        decision = None
        if rate is not None and admission is not Admission.EXTRA_RATE_LIMITED:
            decision = _decision((admission is not Admission.RATE_LIMITED, remaining, retry_after
                                  if admission is not Admission.CIRCUIT_OPEN else 0, next_after, reset_after))
            if not decision.allowed or decision.remaining == 0:
                self._note_exhausted(plan, client, decision)
        if admission is not Admission.ADMITTED:
            # The breaker's wait is in seconds (as text); a limit's, like every time of a limit, in µs.
            raise rejection(admission, plan, client, decision=decision, extra=extra, extra_decision=extra_decision,
                            retry_after=float(retry_after) if admission is Admission.CIRCUIT_OPEN
                            else retry_after / MICROS)
        ticket = Ticket(plan, bool(trial), bool(lease), decision)
        ticket.extra_rate = extra_decision
        if lease:
            ticket.lease = lease
            self._hold_lease(lease, keys[1])
        return ticket

    def defer(self, ticket: Ticket, outcome: Outcome) -> bool:
        """Record ``outcome`` without I/O when it can wait (a plain success); else ``False``."""
        if ticket.local:
            self.local.finish(ticket, outcome)
            return True
        if ticket.plan.breaker is None and ticket.lease is None:
            return True
        if outcome is not Outcome.SUCCESS or ticket.trial or ticket.lease is not None:
            return False
        with self._lock:
            entry = self._pending.get(ticket.plan.breaker_key)
            if entry is None:
                self._pending[ticket.plan.breaker_key] = [ticket.plan, 1, time.monotonic()]
            else:
                entry[1] += 1
            start = not self._flusher
            self._flusher = True
        if start:
            background.portal().start_task_soon(self._flush_forever)
        return True

    async def finish(self, ticket: Ticket, outcome: Outcome) -> None:
        if self.defer(ticket, outcome):
            return
        if ticket.lease is not None:
            with self._lock:
                self._leases.pop(ticket.lease, None)
        plan = ticket.plan
        await self._send_finish(plan, ticket.lease, _OUTCOME_CODE[outcome], ticket.trial)

    async def rate(self, key: str, limit: RateLimit) -> RateDecision:
        decision = self.rate_without_io(key, limit)
        if decision is not None:
            return decision
        if self.down:
            return self.local.rate(key, self._share_of(limit))
        sent = self._clock_us()
        try:
            reply = await self._run("rate", [self._key(key, "r")], [
                self._now(), limit.interval_us, limit.tolerance_us, *self._ask(key, limit, self.advance_units)])
        except _RedisDown:
            return self.local.rate(key, self._share_of(limit))
        decision = _decision(reply[:5])
        self._keep_advance(key, limit, sent, reply[5:])
        if not decision.allowed:
            _log.emit("ratelimit.blocked", key, retry_after=round(decision.retry_after, 3))
        return decision

    async def read_breaker(self, name: str, options: Breaker) -> State:
        if self.down:
            return self.local.read_breaker(name, options)
        try:
            state = await self._run("breaker_state", [self._key(name, "b")], ["", 0])
        except _RedisDown:
            return self.local.read_breaker(name, options)
        return State(state.decode() if isinstance(state, bytes) else state)

    async def force_breaker(self, name: str, options: Breaker, state: State) -> None:
        self.local.force_breaker(name, options, state)  # logs the change, once, for both stores
        try:
            await self._run("breaker_state", [self._key(name, "b")], [str(state), FORCED_TTL_SECONDS])
        except _RedisDown as exc:
            raise StoreUnavailable(
                f"cannot force breaker {name!r} to {state} for every worker: Redis at {self.redacted_url} "
                f"is unavailable ({self.down_reason}); this process uses {state} meanwhile") from exc

    # Idempotency fails closed: while Redis is down there is no shared truth to
    # promise exactly-once on, so these raise StoreUnavailable (the caller decides).

    async def idempotency_begin(self, key: str, fingerprint: str, token: str) -> IdempotencyStart:
        answer, result, retry_after = await self._idempotency(
            "idempotency_begin", key, [fingerprint, token, CLAIM_LEASE_SECONDS])
        text = result.decode() if isinstance(result, bytes) else str(result)
        return IdempotencyStart(Verdict(answer.decode() if isinstance(answer, bytes) else answer),
                                text or None, float(retry_after))

    async def idempotency_complete(self, key: str, token: str, result: str, ttl: float) -> bool:
        return bool(await self._idempotency("idempotency_settle", key, [token, "complete", result, repr(ttl)]))

    async def idempotency_renew(self, key: str, token: str) -> bool:
        return bool(await self._idempotency(
            "idempotency_settle", key, [token, "renew", "", repr(CLAIM_LEASE_SECONDS)]))

    async def idempotency_abort(self, key: str, token: str) -> None:
        await self._idempotency("idempotency_settle", key, [token, "abort", "", "0"])

    async def _idempotency(self, script: str, key: str, args: list[Any]) -> Any:
        if self.down:
            raise StoreUnavailable(f"idempotency needs Redis at {self.redacted_url}, which is unavailable "
                                   f"({self.down_reason})")
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        try:
            return await self._run(script, [self._key(f"i:{digest}", "i")], [self._now(), *args])
        except _RedisDown as exc:
            reason = self.down_reason if self.down else f"no answer within {self.timeout * 1000:g} ms"
            raise StoreUnavailable(f"idempotency needs Redis at {self.redacted_url}, which is unavailable "
                                   f"({reason})") from exc

    async def reset(self) -> None:
        """Delete every key under the prefix (for tests) and forget local state."""
        with self._lock:
            self._pending.clear()
            self._advances.clear()
            self._asked.clear()
            self._forget_mirror()
        self.local.reset()
        client = self._client()
        async with self._bounded():
            async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                await client.unlink(key)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
        await self.flush()

    # -- warm-up, health and leases (the background loop) ----------------------

    def start(self) -> None:
        """Warm a connection and the scripts on the background loop, outside any request's budget
        (now, and in a child after ``fork()``)."""
        self.started = True
        portal = background.portal()
        portal.start_task_soon(self._warm)
        if self._listener is None:
            self._listener = portal.start_task_soon(self._listen_forever)

    def check_reachable(self) -> None:
        """Raise ``StoreUnavailable`` unless Redis runs the health script now (for startup checks)."""
        try:
            background.call(self._healthy)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis at {self.redacted_url} does not answer ({self._reason(exc)})") from exc

    async def _warm(self) -> None:
        try:
            await self._healthy()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)

    async def _healthy(self) -> None:
        """Load every script and run the health script (a real write), within the probe's budget."""
        client = self._client()
        async with asyncio.timeout(max(self.timeout, PROBE_BUDGET_SECONDS)):
            pipe = client.pipeline(transaction=False)
            for script in self._scripts.values():
                pipe.script_load(script.text)
            await pipe.execute()
            health = self._scripts["health"]
            await client.evalsha(health.sha, 1, self._key("health", "h", f"{self._token}:{os.getpid()}"), "1")

    def _hold_lease(self, lease: str, key: str) -> None:
        with self._lock:
            self._leases[lease] = key
            start = not self._renewer
            self._renewer = True
        if start:
            background.portal().start_task_soon(self._renew_leases_forever)

    async def _renew_leases_forever(self) -> None:
        try:
            while True:
                await anyio.sleep(self.lease_seconds / 3)
                with self._lock:
                    if not self._leases:
                        self._renewer = False
                        return
                    by_key: dict[str, list[str]] = {}
                    for lease, key in self._leases.items():
                        by_key.setdefault(key, []).append(lease)
                if self.down:
                    continue  # the leases live on for a while; expiry stays the crash guarantee
                for key, leases in by_key.items():
                    with contextlib.suppress(_RedisDown):
                        await self._run("lease_renew", [key], [self._now(), self.lease_seconds, *leases])
        except BaseException:
            with self._lock:
                self._renewer = False
            raise

    async def flush(self, older_than: float = 0.0) -> None:
        """Send the written-behind successes now (those waiting for ``older_than`` seconds or more)."""
        with self._lock:
            if older_than <= 0:
                pending, self._pending = self._pending, {}
            else:
                due = time.monotonic() - older_than
                pending = {key: entry for key, entry in self._pending.items() if entry[2] <= due}
                for key in pending:
                    del self._pending[key]
        for _key, (plan, successes, _since) in pending.items():
            try:
                await self._send_finish(plan, None, "", False, successes)
            except _RedisDown:
                self._restore_pending(plan, successes)
                return

    # -- helpers ----------------------------------------------------------

    def _now(self) -> str:
        return "" if self.clock is None else str(micros(self.clock()))

    @staticmethod
    def _breaker_options(options: Breaker) -> list[Any]:
        """The scripts' breaker options (``breaker_options`` in ``_breaker.lua``)."""
        ttl = int(max(options.window, options.open_for) * 2 + 60)
        return [
            repr(options.failure_rate) if options.failure_rate is not None else "-1",
            options.min_calls, repr(bucket_width(options)),
            options.consecutive_failures if options.consecutive_failures is not None else -1,
            repr(options.open_for), options.half_open_calls, ttl,
        ]

    async def _send_finish(self, plan: Plan, lease: str | None, outcome: str, trial: bool,
                           successes: int | None = None) -> None:
        if successes is None:
            successes = self._take_pending(plan.breaker_key) if plan.breaker is not None else 0
        keys = [self._key(plan.name, "c"), self._key(plan.name, "b")]
        breaker = ["1", *self._breaker_options(plan.breaker)] if plan.breaker is not None else _NO_BREAKER
        args = [self._now(), lease or "", *breaker, successes, outcome, "1" if trial else "0"]
        heard, generation = self._heard, self._generation
        try:
            transitions = await self._run("finish", keys, args)
        except _RedisDown:
            if successes:
                self._restore_pending(plan, successes)
            return
        last = self._announce(plan.name, transitions)
        if last:
            # This worker's own change reaches its mirror now, not one message later.
            self._learn(keys[1], last, "0", heard, generation)

    def _take_pending(self, key: str) -> int:
        if not self._pending:
            return 0
        with self._lock:
            entry = self._pending.pop(key, None)
        return 0 if entry is None else int(entry[1])

    def _restore_pending(self, plan: Plan, successes: int) -> None:
        if not successes:
            return
        with self._lock:
            entry = self._pending.setdefault(plan.breaker_key, [plan, 0, time.monotonic()])
            entry[1] += successes

    def _note_exhausted(self, plan: Plan, client: str | None, decision: RateDecision) -> None:
        """Redis said this bucket is empty for a while: until then it refuses every call (a TAT
        only grows), so a late answer meanwhile is refused here too, exactly as Redis would."""
        wait = decision.next_after if decision.allowed else decision.retry_after
        if len(self._exhausted) >= 10_000:
            self._exhausted.clear()
        self._exhausted[(plan.name, client)] = time.monotonic() + wait

    def _refuse_if_exhausted(self, plan: Plan, client: str | None) -> None:
        until = self._exhausted.get((plan.name, client))
        if until is None or plan.rate_limit is None:
            return
        wait = until - time.monotonic()
        if wait > 0:
            decision = RateDecision(False, 0, wait, wait, wait)
            raise RateLimited(plan.name, wait, limit=plan.rate_limit, decision=decision)

    def _local_admit(self, plan: Plan, client: str | None, extra: ExtraLimit | None) -> Ticket:
        """Admission from this process's memory, at its share of every rate limit."""
        if extra is not None:
            extra = ExtraLimit(extra.policy, extra.key, self._share_of(extra.limit))
        return self._local_ticket(self.local.admit(self._share_plan(plan), client, extra))

    def _share_plan(self, plan: Plan) -> Plan:
        if plan.rate_limit is None or self.workers < 2:
            return plan
        entry = self._shares.get(id(plan))
        if entry is None or entry[0] is not plan:
            entry = (plan, Plan(plan.name, plan.breaker, self._share_of(plan.rate_limit), plan.max_concurrency))
            self._shares[id(plan)] = entry
        return entry[1]

    def _share_of(self, limit: RateLimit) -> RateLimit:
        """``limit`` divided among the workers: what this process may admit on its own."""
        if self.workers < 2:
            return limit
        share = self._limit_shares.get(limit)
        if share is None:
            share = RateLimit(f"{max(1, limit.quota // self.workers)}/{round(limit.period)}s",
                              burst=max(1, limit.burst // self.workers))
            if len(self._limit_shares) >= 1_000:
                self._limit_shares.clear()
            self._limit_shares[limit] = share
        return share

    def _local_ticket(self, ticket: Ticket) -> Ticket:
        if ticket is ticket.plan.plain_ticket:
            ticket = Ticket(ticket.plan)
        ticket.local = True
        return ticket

    @staticmethod
    def _announce(name: str, transitions: bytes | str) -> str:
        """Log each transition; the last one (the breaker's state now), or ``''``."""
        text = transitions.decode() if isinstance(transitions, bytes) else transitions
        last = ""
        for last in text.split():
            announce_transition(name, State(last), shared=True)
        return last

    def _client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is not None and entry[0] == self._epoch:
            return entry[1]
        if entry is not None:  # made before the last recovery: its connections may be dead
            closing = loop.create_task(entry[1].aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        client = aioredis.Redis.from_url(
            # No socket_timeout: redis-py would wrap each read in wait_for (a task per
            # command); ``_bounded`` already bounds the whole operation. One retry: a pooled
            # connection found broken is replaced once, inside the budget, before anything
            # counts as down.
            self.url, socket_timeout=None, socket_connect_timeout=self.timeout,
            retry=RedisRetry(NoBackoff(), 1), health_check_interval=0)
        self._clients[loop] = (self._epoch, client)
        return client

    def _bounded(self) -> Any:
        return asyncio.timeout(self.timeout)

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA the script on a loop that may own a connection; ``_RedisDown`` when Redis fails."""
        loop = asyncio._get_running_loop()  # None under trio: redis.asyncio needs asyncio
        if loop is None or not is_home_loop(loop):
            return await self._hop(name, keys, args, loop)
        script = self._scripts[name]
        # The background loop runs many operations at once: they share its client's pool.
        own = loop is not background.loop
        connection = self._own_connection(loop) if own else None
        if own and connection is None:
            # This loop's connection is still being made: its calls go to the background loop,
            # whose client is warm, meanwhile (connecting is warm-up, never a call's budget).
            return await self._hop(name, keys, args, loop)
        try:
            with _Deadline(loop, self.timeout):
                if connection is not None:
                    reply = await self._evalsha_own(connection, script, keys, args)
                else:
                    client = self._client()
                    try:
                        reply = await client.evalsha(script.sha, len(keys), *keys, *args)
                    except NoScriptError:
                        await client.script_load(script.text)
                        reply = await client.evalsha(script.sha, len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            if own:
                self._drop_connection(loop)
            self._failed(exc)
            raise _RedisDown(str(exc)) from exc
        except BaseException:
            if own:
                self._drop_connection(loop)  # it may hold an answer no one will read
            raise
        if self._late:
            self._late = 0
        return reply

    def _own_connection(self, loop: asyncio.AbstractEventLoop) -> aioredis.Connection | None:
        """This loop's own connection once it is connected; else ``None``, and it is being connected
        by a task of this loop's, which advances whenever the loop runs, outside any call's budget:
        on a busy machine connect and handshake can outlast the budget, and a frozen Redis must
        not cost a request more than the budget either."""
        held = self._connections.get(loop)
        if held is not None:
            epoch, connection, connecting = held
            if epoch == self._epoch:
                if not connecting.done():
                    return None
                if not connecting.cancelled() and connecting.exception() is None:
                    return connection
            self._drop_connection(loop)  # it failed to connect, or was made before the last recovery
        connection = self._client().connection_pool.make_connection()  # type: ignore[no-untyped-call]
        connecting = loop.create_task(self._connect_own(connection))
        connecting.add_done_callback(_retrieve_exception)
        self._connections[loop] = (self._epoch, connection, connecting)
        return None

    async def _connect_own(self, connection: aioredis.Connection) -> None:
        async with asyncio.timeout(max(self.timeout, PROBE_BUDGET_SECONDS)):
            await connection.connect()  # type: ignore[no-untyped-call]

    async def _evalsha_own(self, connection: aioredis.Connection, script: _Script, keys: Sequence[str],
                           args: Sequence[Any]) -> Any:
        """One script on this loop's own connection: the command packed here, written, its answer read."""
        packed = script.packed(keys, args)
        kept, loaded = True, False
        while True:
            try:
                await connection.send_packed_command(packed, check_health=False)
                return await connection.read_response()
            except NoScriptError:
                if loaded:
                    raise
                loaded = True
                await connection.send_packed_command(connection.pack_command("SCRIPT", "LOAD", script.text),
                                                     check_health=False)
                await connection.read_response()
            except (RedisConnectionError, OSError):
                if not kept:
                    raise
                # A kept connection found broken (Redis restarted, an idle timeout): replaced once,
                # inside the budget, before anything counts as down.
                kept = False
                await connection.disconnect(nowait=True)

    def _drop_connection(self, loop: asyncio.AbstractEventLoop) -> None:
        """Forget this loop's own connection (its next call starts connecting another one)."""
        held = self._connections.pop(loop, None)
        if held is not None:
            held[2].cancel()
            closing = loop.create_task(held[1].disconnect(nowait=True))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _hop(self, name: str, keys: Sequence[str], args: Sequence[Any],
                   loop: asyncio.AbstractEventLoop | None) -> Any:
        """Run the script on the background loop, for a caller on a loop that must not own connections."""
        portal = background.portal()
        if loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._run(name, keys, args), background.loop)  # type: ignore[arg-type]
            return await asyncio.wrap_future(future)
        return await anyio.to_thread.run_sync(portal.call, self._run, name, keys, args)

    def _reason(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}".replace(self.url, self.redacted_url)

    def _failed(self, exc: BaseException) -> None:
        """Weigh a failed operation: a late answer alone is not yet evidence that Redis is down."""
        if isinstance(exc, _LATE) and not isinstance(exc, RedisError):
            with self._lock:
                self._late += 1
                late = self._late
            if late < DOWN_AFTER_TIMEOUTS:
                return
            exc = TimeoutError(f"{late} answers in a row later than {self.timeout * 1000:g} ms")
        self._mark_down(exc)

    def _mark_down(self, exc: BaseException) -> None:
        reason = self._reason(exc)
        with self._lock:
            was_down, self.down, self.down_reason = self.down, True, reason
            self._forget_mirror()  # after recovery each breaker is learnt again from Redis
            start_probe = not self._prober
            self._prober = True
        if not was_down:
            self._log_transition(down=True)
        if start_probe:
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and loop is background.loop:
                # Found down on the background loop itself (a flush, a hopped call): its
                # portal refuses calls from its own thread, and without a probe we would
                # stay on memory for good.
                self._probe_task = loop.create_task(self._probe_until_up())
            else:
                background.portal().start_task_soon(self._probe_until_up)

    def _log_transition(self, *, down: bool, held_back: bool = False) -> None:
        """At most one degraded/recovered pair per LOG_DAMPING_SECONDS; a line counts the unlogged.
        ``held_back``: not a new transition, the current outage's line that damping held back."""
        now = time.monotonic()
        with self._lock:
            if down:
                write = now - self._logged_down_at >= LOG_DAMPING_SECONDS
                if write:
                    self._logged_down_at, self._down_logged = now, True
            else:
                write, self._down_logged = self._down_logged, False
            if not write:
                self._unlogged += 0 if held_back else 1
                return
            if held_back:
                self._unlogged -= 1  # the line stands for the transition it was held back from
            unlogged, self._unlogged = self._unlogged, 0
        fields = {"url": self.redacted_url, "unlogged_transitions": unlogged}
        if down:
            _log_store.warning(
                "store.degraded: Redis at %s is unavailable (%s); rate limits (at this process's share: "
                "1/%d), concurrency and breakers use this process's memory until it answers again%s",
                self.redacted_url, self.down_reason, max(1, self.workers),
                f" ({unlogged} transitions since the last line)" if unlogged else "",
                extra={"baldur": {"event": "store.degraded", "reason": self.down_reason, **fields}})
        else:
            _log_store.warning(
                "store.recovered: Redis at %s answers again; shared state resumes%s", self.redacted_url,
                f" ({unlogged} transitions since the last line)" if unlogged else "",
                extra={"baldur": {"event": "store.recovered", **fields}})

    async def _probe_until_up(self) -> None:
        try:
            while True:
                await anyio.sleep(PROBE_SECONDS)
                if not self._down_logged and self.down:
                    self._log_transition(down=True, held_back=True)
                with self._lock:
                    # Each attempt on a client of a new connection epoch: every loop renews its
                    # connections (those of the outage may be dead), and the background loop's
                    # client, the one that passed, is warm when the store is up again.
                    self._epoch += 1
                try:
                    await self._healthy()
                except (RedisError, OSError, TimeoutError) as exc:
                    self.down_reason = self._reason(exc)
                    continue
                with self._lock:
                    # All at once: a failure noticed right after this starts a new probe.
                    self._late = 0
                    self.down = self._prober = False
                self._log_transition(down=False)
                return
        except BaseException:
            with self._lock:
                self._prober = False
            raise

    async def _flush_forever(self) -> None:
        try:
            while True:
                # Successes that the next admit of a busy worker carries anyway cost no round trip:
                # only those waiting for half of FLUSH_SECONDS are sent, so none waits longer.
                await anyio.sleep(FLUSH_SECONDS / 2)
                if self._pending and not self.down:
                    await self.flush(older_than=FLUSH_SECONDS / 2)
        finally:
            self._flusher = False

    def flush_now(self) -> None:
        """Flush from sync code (at exit)."""
        if self._pending and not self.down:
            run_sync(self.flush)

    def forget_after_fork(self) -> None:
        """In a child: nothing of the parent's holds here (its loops, its probe, its calls), and
        whether Redis is down is the child's to find out, starting with a warm-up."""
        # The parent's clients stay referenced for good: if one were collected here while a loop
        # of ours runs, redis-py would close its connection through the parent's loop, whose
        # epoll instance the child shares, and unregister the parent's socket from it.
        _inherited.append((self._clients, self._connections, self._closing))
        self._lock = threading.Lock()
        self._clients = weakref.WeakKeyDictionary()
        self._connections = weakref.WeakKeyDictionary()
        self._pending = {}
        self._leases = {}
        self._advances = {}  # the parent's units are the parent's: spent here too, they would count twice
        self._asked = {}
        self._flusher = self._prober = self._renewer = False
        self._probe_task = None
        self.down, self.down_reason, self._late = False, "", 0
        self._down_logged, self._unlogged = False, 0
        self._logged_down_at = -LOG_DAMPING_SECONDS
        self.workers = _known_workers()
        self._shares, self._limit_shares = {}, {}
        self._exhausted = {}
        self._closing = set()
        self._listener, self._listening, self._mirror = None, False, {}
        self.local.reset()

    # -- the mirror of the breakers' states (the background loop keeps it) ---------------

    @property
    def mirroring(self) -> bool:
        """The mirror is subscribed and in use: closed breakers are admitted without a round trip."""
        return self._listening and not self.down

    def mirrored(self, name: str) -> str | None:
        """The state this process's mirror holds for breaker ``name`` (``None``: unknown, or the mirror
        is not in use; then a call asks Redis)."""
        if not self.mirroring:
            return None
        record = self._mirror.get(self._mirror_keys.get(name) or self._mirror_key(name))
        return None if record is None else record[0]

    def _mirror_admits(self, plan: Plan) -> bool:
        """The mirror is in use and reads ``plan``'s breaker closed (or forced closed, not lapsed)."""
        if not self._listening or self.down:
            return False
        record = self._mirror.get(self._mirror_keys.get(plan.name) or self._mirror_key(plan.name))
        return record is not None and record[0] in _MIRROR_ADMITS and not (record[1] and time.time() >= record[1])

    def _mirror_key(self, name: str) -> str:
        if len(self._mirror_keys) >= MIRROR_MAX_BREAKERS:
            self._mirror_keys.clear()
        key = self._mirror_keys[name] = self._key(name, "b")
        return key

    def _forget_mirror(self) -> None:
        self._generation += 1
        self._mirror = {}

    def _learn(self, key: str, state: bytes | str, until: bytes | str, heard: int, generation: int) -> None:
        """Put a state read by a round trip in the mirror, unless a message arrived meanwhile (it
        may be newer) or the subscription was not yet made when the round trip started (a change
        before it would not have reached the mirror)."""
        if self._heard != heard or self._generation != generation or not self._listening:
            return
        if len(self._mirror) >= MIRROR_MAX_BREAKERS:
            self._mirror = {}
        self._mirror[key] = (_text(state), float(until))

    def _hear(self, message: bytes | str) -> None:
        state, until, key = _text(message).split(" ", 2)
        self._heard += 1
        if len(self._mirror) >= MIRROR_MAX_BREAKERS:
            self._mirror = {}
        self._mirror[key] = (state, float(until))

    async def _listen_forever(self) -> None:
        """Keep the mirror subscribed; while the subscription is broken the mirror is unused."""
        channel = f"{self.prefix}:{MIRROR_CHANNEL}"
        while True:
            # Its own connection, which never reconnects by itself: a message missed while it
            # was away must empty the mirror, and only a new subscription here does that.
            client = aioredis.Redis.from_url(self.url, socket_timeout=None, socket_connect_timeout=self.timeout,
                                             retry=RedisRetry(NoBackoff(), 0), health_check_interval=0)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._hear(message["data"])
                    elif message["type"] == "subscribe":
                        with self._lock:
                            self._forget_mirror()
                            self._listening = True
            except (RedisError, OSError, ValueError):
                pass
            finally:
                with self._lock:
                    self._listening = False
                    self._forget_mirror()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
                    await client.aclose()
            await anyio.sleep(RESUBSCRIBE_SECONDS)

    # -- metrics (``baldur._metrics`` writes behind from every process; the admin reads) --

    async def add_metrics(self, counts: dict[str, dict[str, int]], breakers: list[str],
                          in_flight: dict[str, int], process: str, ttl: float) -> None:
        """Add one process's counter increments to the fleet's totals (``HINCRBY``) and set its
        in-flight gauges, which expire ``ttl`` seconds after its last flush: one pipeline."""
        await self._at_home(self._add_metrics, counts, breakers, in_flight, process, ttl)

    async def read_metrics(self) -> tuple[dict[str, dict[str, int]], set[str], dict[str, int]]:
        """The fleet's totals per name and counter, the names with a breaker, and the in-flight
        gauges of the processes alive (summed); ``StoreUnavailable`` if Redis does not answer."""
        try:
            result: tuple[dict[str, dict[str, int]], set[str], dict[str, int]] = await self._at_home(
                self._read_metrics)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"cannot read the fleet's metrics: Redis at {self.redacted_url} does not "
                                   f"answer ({self._reason(exc)})") from exc
        return result

    async def _add_metrics(self, counts: dict[str, dict[str, int]], breakers: list[str],
                           in_flight: dict[str, int], process: str, ttl: float) -> None:
        totals = self._key("metrics", "m")
        gauges = self._key("metrics", "f", process)
        async with asyncio.timeout(max(self.timeout, PROBE_BUDGET_SECONDS)):
            pipe = self._client().pipeline(transaction=False)
            for name, changed in counts.items():
                for counter, delta in changed.items():
                    pipe.hincrby(totals, f"{counter} {name}", delta)
            for name in breakers:
                pipe.hset(totals, f"breaker {name}", 1)
            if in_flight:
                pipe.hset(gauges, mapping=in_flight)  # type: ignore[arg-type]
                pipe.expire(gauges, max(1, round(ttl)))
                pipe.sadd(self._key("metrics", "p"), process)
            await pipe.execute()

    async def _read_metrics(self) -> tuple[dict[str, dict[str, int]], set[str], dict[str, int]]:
        client = self._client()
        processes_key = self._key("metrics", "p")
        async with asyncio.timeout(max(self.timeout, PROBE_BUDGET_SECONDS)):
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self._key("metrics", "m"))
            pipe.smembers(processes_key)
            stored, members = await pipe.execute()
            processes = sorted(_text(member) for member in members)
            pipe = client.pipeline(transaction=False)
            for process in processes:
                pipe.hgetall(self._key("metrics", "f", process))
            gauges = await pipe.execute()
            gone = [process for process, values in zip(processes, gauges, strict=True) if not values]
            if gone:
                await client.srem(processes_key, *gone)
        counts: dict[str, dict[str, int]] = {}
        breakers: set[str] = set()
        for field, value in stored.items():
            counter, _, name = _text(field).partition(" ")
            if counter == "breaker":
                breakers.add(name)
            else:
                counts.setdefault(name, {})[counter] = int(value)
        in_flight: dict[str, int] = {}
        for values in gauges:
            for name, value in values.items():
                in_flight[_text(name)] = in_flight.get(_text(name), 0) + int(value)
        return counts, breakers, in_flight

    async def _at_home(self, func: Callable[..., Any], *args: Any) -> Any:
        """Await ``func(*args)`` on a loop that may own a connection (else on the background loop)."""
        loop = asyncio._get_running_loop()
        if loop is not None and is_home_loop(loop):
            return await func(*args)
        portal = background.portal()
        if loop is not None:
            future = asyncio.run_coroutine_threadsafe(func(*args), background.loop)  # type: ignore[arg-type]
            return await asyncio.wrap_future(future)
        return await anyio.to_thread.run_sync(portal.call, func, *args)

    # -- admin (issue 12): what the admin API reads and steers, for the whole fleet ----

    async def admin_breaker_names(self) -> list[str]:
        """The names of the breakers Redis holds (a SCAN: the admin's, never a request's)."""
        async def scan(client: aioredis.Redis) -> list[str]:
            names = []
            async for key in client.scan_iter(match=f"{self.prefix}:{{*}}:b", count=1000):
                text = key.decode() if isinstance(key, bytes) else key
                tag = text[len(self.prefix) + 2:-3]
                if "}" not in tag:  # a breaker's key, not another kind whose suffix ends in ":b"
                    names.append(_unescaped(tag))
            return names

        return await self._admin(scan)

    async def admin_read_breaker(self, name: str, options: Breaker) -> BreakerView:
        key = self._key(name, "b")
        args = [self._now(), repr(bucket_width(options)), self._breaker_options(options)[-1]]
        reply = await self._admin(lambda client: self._admin_script(client, "admin_breaker", [key], args))
        state, opened_at, calls, failures, until, reason, by, forced_at, lapsed = (
            item.decode() if isinstance(item, bytes) else item for item in reply)
        if int(lapsed):
            announce_transition(name, State.CLOSED, shared=True, forced_expired=True)
        current = State(state)
        forced = None
        if current in (State.FORCED_OPEN, State.FORCED_CLOSED):
            ends = float(until)
            forced = Forced(current, reason, by, float(forced_at), ends if ends > 0 else None)
        opened = current in (State.OPEN, State.HALF_OPEN)
        return BreakerView(name, current, int(calls), int(failures), float(opened_at) if opened else None, forced)

    async def admin_force(self, name: str, options: Breaker, target: State, forced: Forced | None,
                          cause: str) -> BreakerView:
        """Force ``name`` to ``target`` (``CLOSED``: reset) for every worker; a ``forced.until``
        lapses by itself (the scripts return the breaker to its own rule)."""
        lasts = 0.0 if forced is None or forced.until is None else max(0.001, forced.until - forced.at)
        args = [self._now(), str(target), repr(lasts), forced.reason if forced else "", forced.by if forced else "",
                FORCED_TTL_SECONDS, cause]
        key = self._key(name, "b")
        await self._admin(lambda client: self._admin_script(client, "admin_force", [key], args))
        self.local.force_breaker(name, options, target)  # logs the change; this process's fallback agrees
        return await self.admin_read_breaker(name, options)

    async def admin_transitions(self, name: str, limit: int = HISTORY_LENGTH) -> list[Transition]:
        key = self._key(name, "t")
        entries = await self._admin(lambda client: client.lrange(key, 0, limit - 1))
        transitions = []
        for raw in entries:
            item = json.loads(raw)
            transitions.append(Transition(float(item["at"]), str(item["from"]), str(item["to"]), str(item["cause"])))
        return transitions

    async def admin_audit_append(self, entry: AuditEntry) -> None:
        key = self._key("admin", "audit")
        text = json.dumps({"at": entry.at, "key_id": entry.key_id, "action": entry.action, "target": entry.target,
                           "reason": entry.reason, "for_seconds": entry.for_seconds})

        async def append(client: aioredis.Redis) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.lpush(key, text)
            pipe.ltrim(key, 0, AUDIT_LENGTH - 1)
            await pipe.execute()

        await self._admin(append)

    async def admin_audit(self, limit: int) -> list[AuditEntry]:
        key = self._key("admin", "audit")
        entries = await self._admin(lambda client: client.lrange(key, 0, limit - 1))
        audit = []
        for raw in entries:
            item = json.loads(raw)
            audit.append(AuditEntry(float(item["at"]), str(item["key_id"]), str(item["action"]), str(item["target"]),
                                    str(item["reason"]), item["for_seconds"]))
        return audit

    async def admin_reset_client(self, name: str, client: str, per_client_policy: bool) -> None:
        key = self._key(f"web:{client}", "r") if per_client_policy else self._key(name, "r", client)
        await self._admin(lambda redis_client: redis_client.delete(key))
        self.local.admin_reset_client(name, client, per_client_policy)

    async def admin_in_flight(self, name: str) -> int:
        key = self._key(name, "c")
        count = await self._admin(lambda client: client.zcount(key, f"({time.time()}", "+inf"))
        return int(count)

    async def _admin_script(self, client: aioredis.Redis, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = _Script(name)
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(script.text)
            return await client.evalsha(script.sha, len(keys), *keys, *args)

    async def _admin(self, work: Callable[[aioredis.Redis], Awaitable[_T]]) -> _T:
        """Run ``work`` on a loop that may own a connection, within ``ADMIN_BUDGET_SECONDS``;
        ``StoreUnavailable`` (never a fallback: the admin must not steer one process's memory)."""
        result: _T = await self._at_home(self._admin_here, work)
        return result

    async def _admin_here(self, work: Callable[[aioredis.Redis], Awaitable[_T]]) -> _T:
        try:
            async with asyncio.timeout(max(self.timeout, ADMIN_BUDGET_SECONDS)):
                return await work(self._client())
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis at {self.redacted_url} did not answer the admin API "
                                   f"({self._reason(exc)})") from None


_T = TypeVar("_T")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _unescaped(text: str) -> str:
    return text.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def _escaped(text: str) -> str:
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    """A failed connect is seen by the next call (which connects again), not logged at collection."""
    if not task.cancelled():
        task.exception()


def _decision(reply: Sequence[Any]) -> RateDecision:
    """A script's (allowed, remaining, retry_after, next_after, reset_after), the times in integer µs:
    divided here exactly as ``policies.rate_limit.gcra`` divides them."""
    allowed, remaining, retry_after, next_after, reset_after = reply
    return RateDecision(bool(allowed), remaining, retry_after / MICROS, next_after / MICROS, reset_after / MICROS)


def _known_workers() -> int:
    server = server_workers()
    return 1 if server is None else max(1, server[1])


def _after_fork_in_child() -> None:
    from baldur import _runtime  # at fork time: _runtime imports this module when it builds a store

    active = _runtime._current.async_ if _runtime._current is not None else None
    for store in list(_stores):
        store.forget_after_fork()
        # Only the runtime's own store is warmed up: a replaced one (an earlier init()) serves nobody.
        if store.started and store is active:
            # An interpreter shutting down starts no thread; then the first call warms up.
            with contextlib.suppress(RuntimeError):
                store.start()


def _flush_at_exit() -> None:
    for store in list(_stores):
        try:
            store.flush_now()
        except Exception:
            _log_store.warning("could not flush written-behind outcomes to Redis at exit", exc_info=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
