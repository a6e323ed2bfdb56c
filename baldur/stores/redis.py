"""The Redis store: one shared truth for every worker.

Each operation is one Lua script (``redis_scripts/``) run with EVALSHA on the
Redis server's clock, so it is atomic and worker clocks never matter. The
scripts mirror ``baldur.policies`` rule for rule; the test suite runs the same
sequences against this store and the memory store and expects the same
decisions.

On the request's critical path there is one round trip: *admit*. A success is
not sent at once: it is counted in this process and carried by the next
script call for the same breaker, or flushed by the background loop within
``FLUSH_SECONDS``; failures, half-open trials and concurrency leases are
settled at once, so write-behind never blunts a breaker.

Connections belong to the loop that made them: each long-lived loop of ours
(the per-thread loops that sync callers drive, the background loop) gets its
own client; calls from any other loop (Flask's per-request loops for async
views, trio) are handed to the background loop.

When Redis fails (an error, or no answer within ``BALDUR_REDIS_TIMEOUT_MS``)
the store is marked down: rate limits, concurrency and breakers fall back to
this process's memory (fail open) and nothing waits on Redis until a
background probe finds it answering again.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import itertools
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import anyio

from baldur import _log
from baldur.bridges import background, is_home_loop, run_sync
from baldur.errors import CircuitOpen, ConfigError, Overloaded, RateLimited, Rejected, StoreUnavailable
from baldur.policies import idempotency
from baldur.policies.breaker import Breaker, Outcome, State
from baldur.policies.concurrency import SHED_RETRY_AFTER
from baldur.policies.idempotency import Verdict
from baldur.policies.rate_limit import RateDecision, RateLimit, micros
from baldur.stores._types import ExtraLimit, IdempotencyStart, Plan, Ticket
from baldur.stores.memory import MemoryStore

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry as RedisRetry
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Redis store needs the redis extra: pip install 'baldur-framework[redis]'") from exc

__all__ = ["FLUSH_SECONDS", "RedisStore"]

#: How often the background loop sends written-behind successes.
FLUSH_SECONDS = 0.05
#: How often the background loop probes a Redis that is down.
PROBE_SECONDS = 0.5
#: A concurrency lease held longer than this (a crashed worker's) is taken back.
LEASE_SECONDS = 60.0
#: How long a forced breaker state is kept (every key has a TTL).
FORCED_TTL_SECONDS = 30 * 86400

_log_store = logging.getLogger("baldur.store")
_OUTCOME_CODE = {Outcome.SUCCESS: "s", Outcome.FAILURE: "f", Outcome.IGNORED: "i"}
_TRANSITION_EVENTS = {"open": "circuit.opened", "half_open": "circuit.half_open", "closed": "circuit.closed"}
_stores: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _script(name: str) -> str:
    folder = resources.files("baldur.stores") / "redis_scripts"
    return (folder / "_common.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


class _Script:
    def __init__(self, name: str) -> None:
        self.name = name
        self.text = _script(name)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


class _RedisDown(Exception):
    """Redis did not answer in time or at all: the caller falls back to memory."""


class RedisStore:
    """The async face of the Redis store (``SyncOverAsync`` gives sync callers theirs)."""

    def __init__(self, url: str, *, redacted_url: str, prefix: str = "baldur", timeout: float = 0.1,
                 max_keys: int = 100_000, clock: Callable[[], float] | None = None) -> None:
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
        self.local = MemoryStore(max_keys=max_keys)
        self.down = False
        self.down_reason = ""
        self._scripts = {name: _Script(name) for name in (
            "admit", "finish", "rate", "breaker_state", "idempotency_begin", "idempotency_settle")}
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()
        self._pending: dict[str, list[Any]] = {}  # breaker key → [plan, successes, first deferred at]
        self._flusher = False
        self._prober = False
        self._probe_task: asyncio.Task[None] | None = None
        self._lease_ids = itertools.count()
        self._token = secrets.token_hex(4)
        _stores.add(self)

    # -- keys -------------------------------------------------------------

    def _key(self, tag: str, kind: str, suffix: str = "") -> str:
        # The hash tag is the name: every key a script touches lives in one cluster slot.
        # Names and clients' values are escaped: distinct values stay distinct keys, and no
        # value can open a hash tag of its own (and so choose its slot).
        suffix = _escaped(suffix)
        return f"{self.prefix}:{{{_escaped(tag)}}}:{kind}{':' + suffix if suffix else ''}"

    # -- the operations ---------------------------------------------------

    async def admit(self, plan: Plan, client: str | None = None, extra: ExtraLimit | None = None) -> Ticket:
        if self.down:
            return self._local_ticket(self.local.admit(plan, client, extra))
        rate = plan.rate_limit
        breaker = plan.breaker
        lease = f"{self._token}:{os.getpid()}:{next(self._lease_ids)}" if plan.max_concurrency else ""
        pending = self._take_pending(plan.breaker_key) if breaker is not None else 0
        # The extra limit's key lives in another hash slot: one script may touch both on a
        # standalone Redis (the store's target), which keeps a request at one round trip.
        keys = [self._key(plan.name, "r", client or ""), self._key(plan.name, "c"), self._key(plan.name, "b"),
                self._key(extra.key, "r") if extra is not None else self._key(plan.name, "x")]
        args: list[Any] = [
            self._now(),
            rate.interval_us if rate else 0, rate.tolerance_us if rate else 0,
            plan.max_concurrency or 0, lease, LEASE_SECONDS,
            *self._breaker_args(breaker), pending,
            extra.limit.interval_us if extra else 0, extra.limit.tolerance_us if extra else 0,
        ]
        try:
            reply = await self._run("admit", keys, args)
        except _RedisDown:
            self._restore_pending(plan, pending)
            return self._local_ticket(self.local.admit(plan, client, extra))
        verdict, remaining, retry_after, next_after, reset_after, trial, transitions = reply[:7]
        self._announce(plan.name, transitions)
        extra_decision = None
        if extra is not None:
            extra_decision = RateDecision(*_decision_fields(reply[7:12]))
            if verdict == 4:
                _log.emit("ratelimit.blocked", extra.key, retry_after=round(extra_decision.retry_after, 3))
                raise RateLimited(extra.policy, extra_decision.retry_after, limit=extra.limit,
                                  decision=extra_decision)
        decision = None
        if rate is not None:
            decision = RateDecision(verdict != 1, int(remaining), float(retry_after), float(next_after),
                                    float(reset_after))
        rejection: Rejected | None = None
        if verdict == 1:
            assert decision is not None
            _log.emit("ratelimit.blocked", plan.name if client is None else f"{plan.name}:{client}",
                      retry_after=round(decision.retry_after, 3))
            rejection = RateLimited(plan.name, decision.retry_after, limit=rate, decision=decision)
        elif verdict == 2:
            _log.emit("backpressure.shed", plan.name)
            rejection = Overloaded(plan.name, SHED_RETRY_AFTER)
        elif verdict == 3:
            rejection = CircuitOpen(plan.name, float(retry_after))
        if rejection is not None:
            rejection.extra_rate = extra_decision
            raise rejection
        ticket = Ticket(plan, bool(trial), bool(lease), decision)
        ticket.lease = lease or None
        ticket.extra_rate = extra_decision
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
        plan = ticket.plan
        await self._send_finish(plan, ticket.lease, _OUTCOME_CODE[outcome], ticket.trial)

    async def rate(self, key: str, limit: RateLimit) -> RateDecision:
        if self.down:
            return self.local.rate(key, limit)
        try:
            reply = await self._run(
                "rate", [self._key(key, "r")], [self._now(), limit.interval_us, limit.tolerance_us])
        except _RedisDown:
            return self.local.rate(key, limit)
        decision = RateDecision(*_decision_fields(reply))
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
        self.local.force_breaker(name, options, state)
        try:
            await self._run("breaker_state", [self._key(name, "b")], [str(state), FORCED_TTL_SECONDS])
        except _RedisDown as exc:
            raise StoreUnavailable(
                f"cannot force breaker {name!r} to {state} for every worker: Redis at {self.redacted_url} "
                f"is unavailable ({self.down_reason}); this process uses {state} meanwhile") from exc
        if state is State.CLOSED:
            _log.emit("circuit.closed", name, forced=True)

    # Idempotency fails closed: while Redis is down there is no shared truth to
    # promise exactly-once on, so these raise StoreUnavailable (the caller decides).

    async def idempotency_begin(self, key: str, fingerprint: str, token: str) -> IdempotencyStart:
        verdict, result, retry_after = await self._idempotency(
            "idempotency_begin", key, [fingerprint, token, idempotency.LEASE_SECONDS])
        text = result.decode() if isinstance(result, bytes) else str(result)
        return IdempotencyStart(Verdict(verdict.decode() if isinstance(verdict, bytes) else verdict),
                                text or None, float(retry_after))

    async def idempotency_complete(self, key: str, token: str, result: str, ttl: float) -> bool:
        return bool(await self._idempotency("idempotency_settle", key, [token, "complete", result, repr(ttl)]))

    async def idempotency_renew(self, key: str, token: str) -> bool:
        return bool(await self._idempotency(
            "idempotency_settle", key, [token, "renew", "", repr(idempotency.LEASE_SECONDS)]))

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
            raise StoreUnavailable(f"idempotency needs Redis at {self.redacted_url}, which is unavailable "
                                   f"({self.down_reason})") from exc

    async def reset(self) -> None:
        """Delete every key under the prefix (for tests) and forget local state."""
        with self._lock:
            self._pending.clear()
        self.local.reset()
        client = self._client()
        async with self._bounded():
            async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                await client.unlink(key)

    async def close(self) -> None:
        await self.flush()

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
    def _breaker_args(options: Breaker | None) -> list[Any]:
        if options is None:
            return ["0", 0, 0, 0, 0, 0, 0, 0]
        ttl = int(max(options.window, options.open_for) * 2 + 60)
        return [
            "1",
            repr(options.failure_rate) if options.failure_rate is not None else "-1",
            options.min_calls, repr(options.window / 10),
            options.consecutive_failures if options.consecutive_failures is not None else -1,
            repr(options.open_for), options.half_open_calls, ttl,
        ]

    async def _send_finish(self, plan: Plan, lease: str | None, outcome: str, trial: bool,
                           successes: int | None = None) -> None:
        if successes is None:
            successes = self._take_pending(plan.breaker_key) if plan.breaker is not None else 0
        keys = [self._key(plan.name, "c"), self._key(plan.name, "b")]
        args = [self._now(), lease or "", *self._breaker_args(plan.breaker), successes, outcome,
                "1" if trial else "0"]
        try:
            transitions = await self._run("finish", keys, args)
        except _RedisDown:
            if successes:
                self._restore_pending(plan, successes)
            return
        self._announce(plan.name, transitions)

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

    def _local_ticket(self, ticket: Ticket) -> Ticket:
        if ticket is ticket.plan.plain_ticket:
            ticket = Ticket(ticket.plan)
        ticket.local = True
        return ticket

    @staticmethod
    def _announce(name: str, transitions: bytes | str) -> None:
        text = transitions.decode() if isinstance(transitions, bytes) else transitions
        for transition in text.split():
            _log.emit(_TRANSITION_EVENTS[transition], name, state=transition, shared=True)

    def _client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = aioredis.Redis.from_url(
                # No socket_timeout: redis-py would wrap each read in wait_for (a task per
                # command); ``_bounded`` already bounds the whole operation.
                self.url, socket_timeout=None, socket_connect_timeout=self.timeout,
                retry=RedisRetry(NoBackoff(), 0), health_check_interval=0)
            self._clients[loop] = client
        return client

    def _bounded(self) -> Any:
        return asyncio.timeout(self.timeout)

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA the script on a loop that may own a connection; ``_RedisDown`` when Redis fails."""
        loop = asyncio._get_running_loop()  # None under trio: redis.asyncio needs asyncio
        if loop is None or not is_home_loop(loop):
            return await self._hop(name, keys, args, loop)
        script = self._scripts[name]
        client = self._client()
        try:
            async with self._bounded():
                try:
                    return await client.evalsha(script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    await client.script_load(script.text)
                    return await client.evalsha(script.sha, len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            raise _RedisDown(str(exc)) from exc

    async def _hop(self, name: str, keys: Sequence[str], args: Sequence[Any],
                   loop: asyncio.AbstractEventLoop | None) -> Any:
        """Run the script on the background loop, for a caller on a loop that must not own connections."""
        portal = background.portal()
        if loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._run(name, keys, args), background.loop)  # type: ignore[arg-type]
            return await asyncio.wrap_future(future)
        return await anyio.to_thread.run_sync(portal.call, self._run, name, keys, args)

    def _mark_down(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}".replace(self.url, self.redacted_url)
        with self._lock:
            was_down, self.down, self.down_reason = self.down, True, reason
            start_probe = not self._prober
            self._prober = True
        if not was_down:
            _log_store.warning(
                "store.degraded: Redis at %s is unavailable (%s); rate limits, concurrency and breakers "
                "use this process's memory until it answers again", self.redacted_url, reason,
                extra={"baldur": {"event": "store.degraded", "url": self.redacted_url, "reason": reason}})
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

    async def _probe_until_up(self) -> None:
        try:
            while True:
                await anyio.sleep(PROBE_SECONDS)
                try:
                    async with self._bounded():
                        await self._client().ping()
                except (RedisError, OSError, TimeoutError):
                    continue
                with self._lock:
                    # Both at once: a failure noticed right after this starts a new probe.
                    self.down = self._prober = False
                _log_store.warning(
                    "store.recovered: Redis at %s answers again; shared state resumes", self.redacted_url,
                    extra={"baldur": {"event": "store.recovered", "url": self.redacted_url}})
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
        self._lock = threading.Lock()
        self._clients = weakref.WeakKeyDictionary()
        self._pending = {}
        self._flusher = self._prober = False
        self.local.reset()


def _escaped(text: str) -> str:
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _decision_fields(reply: Sequence[Any]) -> tuple[bool, int, float, float, float]:
    """A script's (allowed, remaining, retry_after, next_after, reset_after)."""
    allowed, remaining, retry_after, next_after, reset_after = reply
    return bool(allowed), int(remaining), float(retry_after), float(next_after), float(reset_after)


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store.forget_after_fork()


def _flush_at_exit() -> None:
    for store in list(_stores):
        try:
            store.flush_now()
        except Exception:
            _log_store.warning("could not flush written-behind outcomes to Redis at exit", exc_info=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
