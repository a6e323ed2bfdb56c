"""The Redis store under real faults, with real gunicorn workers (``-w 4``) and a CPU burner beside
them: the production budget (``BALDUR_REDIS_TIMEOUT_MS=100``) on a busy machine.

Each test prints its figures (``-s`` shows them). Every process started here is stopped by PID;
every wait is a poll with a deadline.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import test_flask_redis_workers as workers
from _flask_support import PYTHON
from test_flask_redis_workers import WORKERS, Answer, Server, _shared_everywhere, poll, statuses

from tests.redis_server import RedisServer

redis = pytest.importorskip("redis")

#: The worker tests' fixtures: gunicorn on the session's redis-server, and a client of that server.
start_gunicorn = workers.start_gunicorn
store = workers.store
PRODUCTION = {"BALDUR_REDIS_TIMEOUT_MS": "100", "BALDUR_TRUST_PROXY": "1"}


@pytest.fixture
def burner() -> Iterator[None]:
    """One process spinning on a CPU beside the workers (the machine has two)."""
    process = subprocess.Popen([PYTHON, "-c", "while True: pass"])
    try:
        yield
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def restored(redis_server: RedisServer) -> Iterator[RedisServer]:
    yield redis_server
    if redis_server.process is None:
        redis_server.start()
    redis_server.thaw()
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory", 0)
    client.close()


def test_exactly_100_of_300_ten_runs_in_a_row_on_a_busy_machine(
        start_gunicorn: Callable[..., Server], burner: None) -> None:
    server = start_gunicorn(**PRODUCTION)
    admitted = []
    for run in range(10):
        # A client of its own each run (its own bucket; BALDUR_TRUST_PROXY=1).
        answers = server.get_many("/limited", 300, parallel=8, headers={"X-Forwarded-For": f"10.8.0.{run + 1}"})
        admitted.append(statuses(answers)[200])
        assert set(statuses(answers)) <= {200, 429}
    print(f"\nadmitted of 300 at 100/hour, 4 workers + burner, 10 runs: {admitted}")
    assert admitted == [100] * 10, server.output()


def post_order(server: Server, key: str, timeout: float = 5.0) -> Answer:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("POST", "/orders", body=b'{"n": 1}',
                     headers={"Content-Type": "application/json", "Idempotency-Key": f'"{key}"'})
        response = conn.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, headers, body, time.monotonic() - started)
    finally:
        conn.close()


class Traffic:
    """Requests from 8 threads until stopped (GETs with limits, and POSTs with a fresh
    ``Idempotency-Key`` each), each answer kept with when it came."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.answers: list[tuple[str, float, Answer]] = []
        self.stop = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        self.futures = [self.pool.submit(self._run, i) for i in range(8)]

    def _run(self, i: int) -> None:
        while not self.stop.is_set():
            if i >= 6:
                answer = post_order(self.server, uuid.uuid4().hex)
                self.answers.append(("POST", time.monotonic(), answer))
            else:
                path = ("/limited", "/async-roomy", "/demo")[i % 3]
                self.answers.append(("GET", time.monotonic(), self.server.get(path, timeout=5)))

    def finish(self) -> list[tuple[str, float, Answer]]:
        self.stop.set()
        for future in self.futures:
            future.result(timeout=30)
        self.pool.shutdown()
        return self.answers


@pytest.mark.parametrize("fault", ["sigstop-3s", "sigkill-restart"])
def test_a_frozen_or_killed_redis_mid_traffic_costs_no_request_more_than_half_a_second(
        start_gunicorn: Callable[..., Server], restored: RedisServer, store: redis.Redis, burner: None,
        fault: str) -> None:
    server = start_gunicorn(TEST_APP_RATE_LIMIT="100000/hour", **PRODUCTION)
    traffic = Traffic(server)
    try:
        time.sleep(0.5)  # traffic flows before the fault (not a synchronisation: any time would do)
        fault_at = time.monotonic()
        if fault == "sigstop-3s":
            restored.freeze()
            time.sleep(3)
            restored.thaw()
        else:
            restored.stop()
            time.sleep(1)
            restored.start()
        back = time.monotonic()
        poll(lambda: _shared_everywhere(server, store), "every worker is not shared again", deadline=10,
             every=0.05)
        shared_after = time.monotonic() - back
    finally:
        answers = traffic.finish()
    slowest, slowest_at = max((answer.seconds, at - answer.seconds - fault_at) for _, at, answer in answers)
    codes = statuses([answer for _, _, answer in answers])
    posts = [(at, answer) for method, at, answer in answers if method == "POST"]
    refused_during = sum(answer.status == 503 for at, answer in posts if at < back + shared_after)
    after = [answer for at, answer in posts if at >= back + shared_after]
    after += [post_order(server, uuid.uuid4().hex) for _ in range(20)]
    print(f"\n{fault}: {len(answers)} requests, statuses {dict(codes)}, slowest {slowest:.3f} s "
          f"(sent {slowest_at:+.2f} s from the fault); "
          f"every worker shared again {shared_after:.2f} s after Redis returned; idempotent POSTs: "
          f"{refused_during} × 503 before that, {dict(statuses(after))} after")
    assert 500 not in codes and set(codes) <= {200, 201, 429, 503}, server.output()
    assert slowest <= 0.5, server.output()
    assert shared_after <= 2.0 + 0.5, server.output()  # the check itself takes a few requests
    assert statuses(after) == {201: len(after)}, server.output()


def test_out_of_memory_degrades_steadily_without_flapping(
        start_gunicorn: Callable[..., Server], restored: RedisServer, store: redis.Redis, burner: None) -> None:
    server = start_gunicorn(TEST_APP_RATE_LIMIT="100000/hour", **PRODUCTION)
    store.config_set("maxmemory", 1)  # PING works; every write is refused (noeviction)
    try:
        end = time.monotonic() + 5
        answers = []
        while time.monotonic() < end:
            answers += server.get_many("/demo", 16, parallel=8)
        output = server.output()
    finally:
        store.config_set("maxmemory", 0)
    degraded, recovered = output.count("store.degraded"), output.count("store.recovered")
    print(f"\nmaxmemory for 5 s: {len(answers)} requests, statuses {dict(statuses(answers))}, "
          f"{degraded} store.degraded and {recovered} store.recovered lines from {WORKERS} workers")
    assert statuses(answers) == {200: len(answers)}
    assert 1 <= degraded <= WORKERS and recovered == 0, output
    poll(lambda: server.output().count("store.recovered") == server.output().count("store.degraded"),
         "the workers did not recover", deadline=5)


def test_preload_with_redis_down_at_fork_is_shared_within_5_s_of_its_return(
        start_gunicorn: Callable[..., Server], restored: RedisServer, store: redis.Redis, burner: None) -> None:
    restored.stop()
    try:
        server = start_gunicorn("--preload", **PRODUCTION)
        assert statuses(server.get_many("/limited", 8, parallel=4)) == {200: 8}  # served from memory
    finally:
        restored.start()
    back = time.monotonic()
    poll(lambda: _shared_everywhere(server, store), "not shared again after Redis returned", deadline=10)
    shared_after = time.monotonic() - back
    print(f"\n--preload, Redis down at fork: every worker shared {shared_after:.2f} s after Redis returned")
    assert shared_after <= 5.0, server.output()
