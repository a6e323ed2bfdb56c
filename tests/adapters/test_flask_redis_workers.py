"""The Redis store under real gunicorn workers: limits, breakers and trials are shared by the fleet.

Each test starts gunicorn (4 sync workers, its own process group, killed and reaped after the
test) on a free loopback port, with ``BALDUR_REDIS_URL`` pointing at the session's private
redis-server and a ``BALDUR_KEY_PREFIX`` of its own; the app is ``redis_app.py`` beside this
file. Every wait is a poll with a deadline, every request has a timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import itertools
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _flask_support import (
    DEADLINE,
    PYTHON,
    QUICKSTART,
    ROOT,
    child_env,
    read_log,
    server_process,
    wait_for_output,
)

from baldur.policies.breaker import Breaker, Outcome
from baldur.policies.rate_limit import ADVANCE_UNITS, RateLimit
from baldur.stores._types import Plan
from tests.ports import free_port
from tests.redis_server import RedisServer

redis = pytest.importorskip("redis")
gunicorn = pytest.importorskip("gunicorn")
from gunicorn.config import KNOWN_SETTINGS  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKERS = 4
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
#: Every request gives up after this many seconds (no test may hang on a server).
REQUEST_TIMEOUT = 10.0
_client_ids = itertools.count(1)
#: Readiness probes come from here, so that they spend no quota of the tests' client, 127.0.0.1.
PROBE_ADDRESS = "127.0.0.2"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    @property
    def pid(self) -> str:
        return self.headers.get("x-worker-pid", "?")


@dataclass
class Server:
    """A running gunicorn: its base address, its key prefix in Redis and its output."""

    port: int
    prefix: str
    log: Path
    store: redis.Redis

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT,
            source: str | None = None) -> Answer:
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=None if source is None else (source, 0))
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
            return Answer(response.status, answer_headers, body, time.monotonic() - started)
        finally:
            conn.close()

    def get_many(self, path: str, n: int, *, parallel: int = 32,
                 headers: dict[str, str] | None = None) -> list[Answer]:
        """``n`` requests at once (``parallel`` in flight), each bounded by the request timeout."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(parallel, n)) as pool:
            futures = [pool.submit(self.get, path, headers) for _ in range(n)]
            return [f.result(timeout=REQUEST_TIMEOUT + 5) for f in futures]

    def counted(self, name: str) -> int:
        """How often the view ``name`` ran, on every worker (the app INCRs this key itself)."""
        return int(self.store.get(f"{self.prefix}:test:{name}") or 0)

    def key(self, tag: str, kind: str, suffix: str = "") -> str:
        return f"{self.prefix}:{{{tag}}}:{kind}{':' + suffix if suffix else ''}"

    def output(self) -> str:
        return read_log(self.log)


def statuses(answers: list[Answer]) -> Counter[int]:
    return Counter(a.status for a in answers)


def until_every_worker_answered(server: Server, path: str, answers: list[Answer],
                                headers: dict[str, str] | None = None) -> list[Answer]:
    """More requests to ``path``, a few at a time, until every worker has answered one of ``answers``
    or of these (the kernel, not the test, picks which worker accepts a connection); fails, naming
    the workers seen, if that takes longer than the deadline. Returns the requests added."""
    more: list[Answer] = []
    end = time.monotonic() + DEADLINE
    while len({a.pid for a in answers + more}) < WORKERS:
        assert time.monotonic() < end, (f"not every worker answered within {DEADLINE} s: "
                                        f"{Counter(a.pid for a in answers + more)}")
        more += server.get_many(path, 8, parallel=8, headers=headers)
    return more


def poll(check: Callable[[], bool], what: str, deadline: float = DEADLINE, every: float = 0.05) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(every)
    pytest.fail(f"{what}: not within {deadline} s")


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The test's own client of the session's redis-server (short timeouts)."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    yield client
    client.close()


@pytest.fixture
def start_gunicorn(redis_server: RedisServer, store: redis.Redis,
                   tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start_gunicorn(*extra_args, app=..., **env)`` runs gunicorn until the test ends, and
    waits until all its workers have booted and one answers over HTTP."""
    stack = contextlib.ExitStack()
    prefixes: list[str] = []

    def start(*extra: str, app: str = "redis_app:app", cwd: Path = HERE, **env: str) -> Server:
        port = free_port()
        prefix = f"bt-{uuid.uuid4().hex[:12]}"
        prefixes.append(prefix)
        log = tmp_path / f"gunicorn-{port}.log"
        args = [PYTHON, "-m", "gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
                "--timeout", "30", *extra]
        if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
            args.append("--no-control-socket")  # gunicorn ≥ 25 would share one socket under $HOME
        # Exact counts need Redis to answer: on a loaded 2-core CI machine 100 ms is not always
        # enough, and a timeout means (correctly) per-process fallback. The frozen-Redis test
        # sets the production default back.
        environment = child_env(BALDUR_REDIS_URL=redis_server.url, BALDUR_KEY_PREFIX=prefix,
                                BALDUR_LOG_LEVEL="INFO", **{"BALDUR_REDIS_TIMEOUT_MS": "2000", **env})
        proc = stack.enter_context(server_process([*args, app], cwd, environment, log))
        wait_for_output(log, proc, lambda text: len(BOOTED.findall(text)) >= WORKERS)
        server = Server(port, prefix, log, store)
        # Polled from another loopback address: the probe spends none of 127.0.0.1's quota.
        end = time.monotonic() + DEADLINE
        while True:
            try:
                server.get("/healthz", timeout=1.0, source=PROBE_ADDRESS)
                return server
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"gunicorn did not answer ({exc!r}):\n{read_log(log)}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)

    try:
        yield start
    finally:
        stack.close()  # kills each gunicorn's process group and reaps it
        with contextlib.suppress(redis.RedisError):
            for prefix in prefixes:
                for key in store.scan_iter(match=f"{prefix}:*", count=1000):
                    store.unlink(key)


# -- 1 and 5: one limit for the whole fleet ------------------------------------

@pytest.mark.parametrize(("path", "app_limit", "preload"), [
    ("/demo", "100/hour", False),
    ("/limited", "", False),
    ("/limited", "", True),
], ids=["init_flask-limit", "route-limit", "route-limit-preload"])
def test_a_limit_of_100_admits_exactly_100_of_300_across_workers(
        start_gunicorn: Callable[..., Server], path: str, app_limit: str, preload: bool) -> None:
    server = start_gunicorn(*(["--preload"] if preload else []), TEST_APP_RATE_LIMIT=app_limit)
    answers = server.get_many(path, 300)
    assert statuses(answers) == {200: 100, 429: 200}, server.output()
    # Not one worker's private count: every worker refuses once the fleet has admitted 100 (each
    # would admit 100 on its own).
    more = until_every_worker_answered(server, path, answers)
    assert {a.status for a in more} <= {429}, server.output()
    refused = next(a for a in answers if a.status == 429)
    assert int(refused.headers["retry-after"]) > 0
    assert "store.degraded" not in server.output()


# -- 2: a breaker opened through some workers rejects on every worker --------------

def test_a_breaker_tripped_through_some_workers_rejects_on_all_and_the_view_runs_no_more(
        start_gunicorn: Callable[..., Server]) -> None:
    server = start_gunicorn()
    seen: list[Answer] = []
    for _ in range(30):
        answer = server.get("/flaky")
        seen.append(answer)
        if answer.status == 503:
            break
    assert seen[-1].status == 503, f"the breaker never opened: {statuses(seen)}\n{server.output()}"
    assert {a.status for a in seen[:-1]} == {500}
    ran = server.counted("flaky")
    assert 5 <= ran <= 2 * 5, f"the failing view ran {ran} times before the breaker opened"

    after = server.get_many("/flaky", 50, parallel=8)
    after += until_every_worker_answered(server, "/flaky", after)
    assert statuses(after) == {503: len(after)}
    assert server.counted("flaky") == ran, "a request reached the failing view after the breaker opened"
    assert 0 < int(after[0].headers["retry-after"]) <= 30
    poll(lambda: "circuit.opened" in server.output(), "no circuit.opened line in the log")


# -- 3: half-open admits exactly half_open_calls trials across the fleet ----------

def test_half_open_lets_exactly_three_trials_through_across_workers(
        start_gunicorn: Callable[..., Server], store: redis.Redis) -> None:
    server = start_gunicorn()
    opened: list[int] = []
    for _ in range(20):
        opened.append(server.get("/trial?fail=1").status)
        if opened[-1] == 503:
            break
    assert opened[-1] == 503, opened
    breaker_key = server.key("trial", "b")
    assert store.hget(breaker_key, "st") == b"open"
    opened_at = float(store.hget(breaker_key, "oa") or 0)

    def open_for_elapsed() -> bool:
        seconds, micros = store.time()
        return seconds + micros / 1e6 >= opened_at + 1.0 + 0.01

    poll(open_for_elapsed, "open_for did not elapse on the Redis clock")

    release = f"{server.prefix}:test:release"
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(server.get, "/trial", None, DEADLINE + REQUEST_TIMEOUT) for _ in range(20)]
        # The trials hold their workers until released, so the circuit cannot close while the
        # other 17 requests are decided; release them once those are answered (or, so that a
        # wrong count still ends and is reported, after the deadline).
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and sum(f.done() for f in futures) < 17:
            time.sleep(0.02)
        store.set(release, "1", ex=60)
        answers = [f.result(timeout=DEADLINE + REQUEST_TIMEOUT + 5) for f in futures]
    assert statuses(answers) == {200: 3, 503: 17}, server.output()
    assert server.counted("trial") == 3
    # Three successful trials close the circuit for every worker.
    poll(lambda: store.hget(breaker_key, "st") == b"closed", "the circuit did not close after 3 good trials")
    assert statuses(server.get_many("/trial", 8, parallel=4)) == {200: 8}


# -- 4: a frozen or dead Redis costs no request more than its timeout -------------

def _shared_everywhere(server: Server, store: redis.Redis) -> bool:
    """Every worker that fell back to memory is back on Redis (each logs its own transitions),
    and a fresh client (``X-Forwarded-For``) gets exactly the 5 units of ``/tight`` from all the
    workers together, its counter in Redis: a worker still on memory would admit 5 of its own."""
    output = server.output()
    if output.count("store.recovered") != output.count("store.degraded"):
        return False
    n = next(_client_ids)
    client = f"10.9.{n // 250 % 250}.{n % 250 + 1}"
    answers = server.get_many("/tight", 24, parallel=8, headers={"X-Forwarded-For": client})
    return (statuses(answers) == {200: 5, 429: 19} and len({a.pid for a in answers}) == WORKERS
            and store.exists(server.key("tight", "r", client)) == 1)


def _all_answer_fast(server: Server, n: int) -> set[str]:
    """Sync views (on the request thread's own loop) and async views (whose protected coroutine
    is admitted on the background loop) alike answer 200, within 0.5 s each; returns the pids."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [pool.submit(server.get, ("/limited", "/async-roomy")[i % 2]) for i in range(n)]
        answers = [f.result(timeout=REQUEST_TIMEOUT + 5) for f in futures]
    slow = [round(a.seconds, 3) for a in answers if a.seconds > 0.5]
    assert statuses(answers) == {200: n}, f"{statuses(answers)}\n{server.output()}"
    assert not slow, f"requests waited on a dead Redis: {slow}"
    return {a.pid for a in answers}


def test_requests_answer_fast_while_redis_is_frozen_or_dead_and_sharing_resumes(
        start_gunicorn: Callable[..., Server], redis_server: RedisServer, store: redis.Redis) -> None:
    server = start_gunicorn(TEST_APP_RATE_LIMIT="1000/hour", BALDUR_TRUST_PROXY="1", BALDUR_REDIS_TIMEOUT_MS="100")
    poll(lambda: _shared_everywhere(server, store), "the limit is not shared to begin with", every=0.1)
    served: set[str] = set()

    def every_worker_served() -> bool:  # so that every worker holds connections when Redis fails
        served.update(_all_answer_fast(server, 8))
        return len(served) == WORKERS

    poll(every_worker_served, "not every worker answered")

    redis_server.freeze()
    try:
        _all_answer_fast(server, 24)
    finally:
        redis_server.thaw()
    assert "store.degraded" in server.output()
    poll(lambda: _shared_everywhere(server, store), "the shared limit did not return after a freeze", every=0.1)

    redis_server.stop()
    try:
        _all_answer_fast(server, 24)
    finally:
        redis_server.start()
    # No second store.degraded line: within LOG_DAMPING_SECONDS of the first pair, the outage is
    # counted in the next line instead (tests/adapters/test_redis_faults_workers.py).
    poll(lambda: _shared_everywhere(server, store), "the shared limit did not return after a restart",
         every=0.1)


# -- 5: async views against Redis --------------------------------------------------

def test_an_async_view_and_the_coroutine_it_protects_share_limits_across_workers(
        start_gunicorn: Callable[..., Server]) -> None:
    server = start_gunicorn()
    answers = server.get_many("/async", 30, parallel=8)
    # The view's inner coroutine is limited to 10/hour as a whole (a plain function's limit) ...
    assert statuses(answers) == {200: 10, 429: 20}, server.output()
    # ... for the whole fleet: every worker refuses once 10 have run (each would run 10 on its own).
    more = until_every_worker_answered(server, "/async", answers)
    assert {a.status for a in more} <= {429}, server.output()
    assert server.counted("async") == 10
    assert "Traceback" not in server.output()


# -- 6: Redis commands per request (measured; only the hard contract asserted) -------

#: What the Lua scripts call inside Redis: commandstats counts these too, but no client sent them.
INSIDE_SCRIPTS = frozenset(
    name.lower() for script in (ROOT / "baldur" / "stores" / "redis_scripts").glob("*.lua")
    for name in re.findall(r"redis\.call\(\s*'(\w+)'", script.read_text()))


def _sent(store: redis.Redis) -> Counter[str]:
    """The commands clients have sent so far (``INFO commandstats``, minus the scripts' own and ours)."""
    stats = store.info("commandstats")
    sent = Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})
    for name in (*INSIDE_SCRIPTS, "info"):
        sent.pop(name, None)
    return sent


def _settled(store: redis.Redis) -> Counter[str]:
    """The commands sent once the written-behind successes have reached Redis (counts stand still)."""
    last = _sent(store)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        time.sleep(0.25)  # several FLUSH_SECONDS: a flush due would have been sent by now
        now = _sent(store)
        if now == last:
            return now
        last = now
    return last


@contextlib.contextmanager
def commands_sent(url: str, ours: redis.Redis) -> Iterator[Counter[str]]:
    """The commands clients send while the block runs, by name, seen through Redis MONITOR (unlike
    ``INFO commandstats`` it tells an admission from a flush): an EVALSHA by its script's name,
    ``"evalsha admit"``. Not counted: what the scripts call inside Redis, and ``ours``' own INFO
    and ECHO (the test's client; the ECHO marks the end)."""
    from baldur.stores.redis import _Script

    names = {_Script(name).sha: name for name in ("admit", "admit_limits", "finish")}
    sent: Counter[str] = Counter()
    end_marker = f"end-of-block-{uuid.uuid4().hex}"
    with redis.Redis.from_url(url, socket_timeout=DEADLINE) as watcher, \
            watcher.monitor() as monitor:  # watching from here on (MONITOR's OK has been read)

        def watch() -> None:
            while end_marker not in (command := monitor.next_command())["command"]:
                words = command["command"].split(maxsplit=2)
                name = words[0].lower()
                if command["client_type"] == "lua" or name in ("info", "echo"):
                    continue
                sent[f"evalsha {names.get(words[1], words[1])}" if name == "evalsha" else name] += 1

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            watching = pool.submit(watch)
            try:
                yield sent
            finally:
                ours.echo(end_marker)
                watching.result(timeout=DEADLINE)


def admissions(sent: Counter[str]) -> int:
    """Admissions: with the breaker read in Redis, or (the mirror reads it closed) the limits alone."""
    return sent["evalsha admit"] + sent["evalsha admit_limits"]


def test_redis_commands_per_request_of_the_quickstart_with_a_rate_limit(
        start_gunicorn: Callable[..., Server], store: redis.Redis, redis_server: RedisServer) -> None:
    server = start_gunicorn(app="app:app", cwd=QUICKSTART, BALDUR_RATE_LIMIT="1000000/hour")
    # Warm up until a burst opens no new connection: every worker has its connections and scripts.
    end = time.monotonic() + DEADLINE
    before = _settled(store)
    while True:
        assert statuses(server.get_many("/demo", 80, parallel=8)) == {200: 80}
        after = _settled(store)
        opened = (after - before)["hello"] + (after - before)["client"]
        before = after
        if not opened or time.monotonic() > end:
            break
    requests = 400
    with commands_sent(redis_server.url, store) as sent:
        answers = server.get_many("/demo", requests, parallel=8)
        assert statuses(answers) == {200: requests}
        _settled(store)  # and the successes written behind after the burst
    print(f"\nRedis commands per request, quickstart + BALDUR_RATE_LIMIT, {WORKERS} workers, {requests} "
          f"requests: {sum(sent.values()) / requests:.4f} in all, of which admissions "
          f"{admissions(sent) / requests:.4f}; sent: {dict(sent)}")
    # The contract: at most one round trip on the critical path (the client's limit and the view's
    # admission are one script) and at most two in all. A success is written behind: carried by
    # the worker's next admit while the breaker is read in Redis, else flushed (within
    # FLUSH_SECONDS), at least once after the burst. The client runs ahead of its sustained rate,
    # so most requests are served from a worker's advance of its quota and ask nothing (how many
    # depends on which worker serves which request: tests/stores/test_redis_advances.py counts
    # them exactly, in one process); a worker asks once per advance at best.
    assert requests / ADVANCE_UNITS <= admissions(sent) <= requests, dict(sent)
    assert sum(sent.values()) <= 2 * requests, dict(sent)


# -- regressions the worker tests found, pinned down in one process ---------------------

def _store_level(url: str) -> tuple[Any, Plan]:
    from baldur.bridges import SyncOverAsync
    from baldur.stores.redis import RedisStore

    return SyncOverAsync(RedisStore(url, redacted_url=url)), Plan(f"bg-{uuid.uuid4().hex[:8]}", Breaker(),
                                                                   RateLimit("1000/second"), None)


def test_redis_found_down_by_the_background_flush_is_probed_until_it_returns(redis_server: RedisServer) -> None:
    store, plan = _store_level(redis_server.url)
    ticket = store.admit(plan)
    redis_server.freeze()
    try:
        # Written behind once Redis is frozen (else the flush could reach it first): only the
        # background loop sends this success, so only the flush can find Redis down.
        store.finish(ticket, Outcome.SUCCESS)
        poll(lambda: store.store.down, "the background flush did not notice the frozen Redis", every=0.01)
    finally:
        redis_server.thaw()
    poll(lambda: not store.store.down, "the store never left memory after Redis came back")


def test_a_call_hopping_to_the_background_loop_falls_back_when_redis_is_down(redis_server: RedisServer) -> None:
    # An async caller on a loop of its own (Flask's async views) is served on the background loop.
    store, plan = _store_level(redis_server.url)
    asyncio.run(store.store.admit(plan))
    redis_server.freeze()
    try:
        ticket = asyncio.run(store.store.admit(plan))  # not a RuntimeError from the portal
    finally:
        redis_server.thaw()
    assert ticket.local
    poll(lambda: not store.store.down, "the store never left memory after Redis came back")
