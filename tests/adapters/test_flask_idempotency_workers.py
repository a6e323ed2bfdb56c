"""``Idempotency-Key`` across real gunicorn workers sharing the session's private Redis.

Each test starts gunicorn (``-w 2`` sync workers, its own process group, killed and reaped
after the test) on a free loopback port with a ``BALDUR_KEY_PREFIX`` of its own; the app is
``idempotency_app.py`` beside this file. Every wait is a poll with a deadline, every request
has a timeout, and Redis is thawed in a ``finally``.

* 20 concurrent duplicates of a POST run the view exactly once; the rest get 409 or a replay.
* A replay is byte-identical whichever worker answers it.
* A worker killed (SIGKILL) in the middle of a request leaves a claim that lapses with its
  lease (``CLAIM_LEASE_SECONDS``, 30 s): then the key runs again.
* With Redis frozen (SIGSTOP), requests with a key get 503 (fail closed); with
  ``BALDUR_IDEMPOTENCY_FAIL_OPEN=1`` they run, and a WARNING says so.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _flask_support import DEADLINE, PYTHON, child_env, read_log, server_process, wait_for_output
from flask import Flask

from baldur.adapters.flask import init_flask
from baldur.policies.idempotency import CLAIM_LEASE_SECONDS
from tests.ports import free_port
from tests.redis_server import RedisServer

redis = pytest.importorskip("redis")
pytest.importorskip("gunicorn")
from gunicorn.config import KNOWN_SETTINGS  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKERS = 2
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
REQUEST_TIMEOUT = 10.0
#: Headers that differ between any two responses, replayed or not.
PER_RESPONSE = frozenset({"date", "server", "connection", "x-worker-pid", "idempotent-replayed"})


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    @property
    def pid(self) -> str:
        return self.headers.get("x-worker-pid", "?")

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotent-replayed") == "true"

    def stable_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k not in PER_RESPONSE}


@dataclass
class Server:
    port: int
    prefix: str
    log: Path
    process: subprocess.Popen[bytes]
    store: redis.Redis

    def post(self, path: str, body: object, key: str | None = None, timeout: float = REQUEST_TIMEOUT) -> Answer:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = f'"{key}"'
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            response = conn.getresponse()
            data = response.read()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                          time.monotonic() - started)
        finally:
            conn.close()

    def counted(self, name: str) -> int:
        return int(self.store.get(f"{self.prefix}:test:{name}") or 0)

    def output(self) -> str:
        return read_log(self.log)


def poll(check: Callable[[], bool], what: str, deadline: float = DEADLINE, every: float = 0.05) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(every)
    pytest.fail(f"{what}: not within {deadline} s")


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    yield client
    client.close()


@pytest.fixture
def start_gunicorn(redis_server: RedisServer, store: redis.Redis,
                   tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start_gunicorn(**env)`` runs ``gunicorn -w 2 idempotency_app:app`` until the test ends and
    waits until both workers have booted and one answers over HTTP."""
    stack = contextlib.ExitStack()
    prefixes: list[str] = []

    def start(**env: str) -> Server:
        port = free_port()
        prefix = f"bi-{uuid.uuid4().hex[:12]}"
        prefixes.append(prefix)
        log = tmp_path / f"gunicorn-{port}.log"
        args = [PYTHON, "-m", "gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
                "--timeout", "30"]
        if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
            args.append("--no-control-socket")
        environment = child_env(BALDUR_REDIS_URL=redis_server.url, BALDUR_KEY_PREFIX=prefix,
                                BALDUR_LOG_LEVEL="INFO", **env)
        proc = stack.enter_context(server_process([*args, "idempotency_app:app"], HERE, environment, log))
        wait_for_output(log, proc, lambda text: len(BOOTED.findall(text)) >= WORKERS)
        end = time.monotonic() + DEADLINE
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
                try:
                    conn.request("GET", "/healthz")
                    conn.getresponse().read()
                finally:
                    conn.close()
                return Server(port, prefix, log, proc, store)
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


def _replays_from_every_worker(server: Server, path: str, body: object, key: str) -> list[Answer]:
    """Replays of ``key`` until every worker has answered one (a few at a time: the kernel picks
    which worker accepts a connection)."""
    seen: list[Answer] = []
    end = time.monotonic() + DEADLINE
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        while len({a.pid for a in seen}) < WORKERS:
            assert time.monotonic() < end, f"not every worker answered: {[a.pid for a in seen]}"
            futures = [pool.submit(server.post, path, body, key) for _ in range(4)]
            seen += [f.result(timeout=REQUEST_TIMEOUT + 5) for f in futures]
    return seen


#: For the tests that are not about a failing Redis: a loaded test machine must not make a
#: slow (not failed) Redis look down, which fails requests with a key closed (503).
PATIENT = {"BALDUR_REDIS_TIMEOUT_MS": "2000"}


def test_twenty_concurrent_duplicates_run_the_view_once_and_every_worker_replays_it_byte_for_byte(
        start_gunicorn: Callable[..., Server], store: redis.Redis) -> None:
    server = start_gunicorn(**PATIENT)
    order = {"order": "o-20", "amount": 1250}
    hold = f"{server.prefix}:test:charges-hold"
    store.set(hold, "1", ex=120)
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        # The first request's view works until released, so every duplicate arrives while it runs;
        # released once 19 are answered (or, so that a wrong count still ends, after the deadline).
        futures = [pool.submit(server.post, "/charges", order, "dup-20", DEADLINE + REQUEST_TIMEOUT)
                   for _ in range(20)]
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and sum(f.done() for f in futures) < 19:
            time.sleep(0.02)
        store.delete(hold)
        answers = [f.result(timeout=DEADLINE + REQUEST_TIMEOUT + 5) for f in futures]

    ran = [a for a in answers if a.status == 201 and not a.replayed]
    conflicts = [a for a in answers if a.status == 409]
    print(f"\n20 concurrent duplicates over {WORKERS} workers: {len(ran)} ran, {len(conflicts)} got 409; "
          f"the view ran {server.counted('charges')} time(s)")
    assert server.counted("charges") == 1, server.output()
    assert (len(ran), len(conflicts)) == (1, 19), Counter((a.status, a.replayed) for a in answers)
    original = ran[0]
    assert json.loads(original.body)["charge"] == 1
    for conflict in conflicts:
        assert conflict.headers["content-type"] == "application/problem+json"
        assert conflict.headers["retry-after"] == "1"
        assert json.loads(conflict.body)["status"] == 409
    later = _replays_from_every_worker(server, "/charges", order, "dup-20")
    for replay in later:
        assert (replay.status, replay.body) == (201, original.body)
        assert replay.replayed
        assert replay.stable_headers() == original.stable_headers()
    assert len({a.pid for a in later}) == WORKERS
    assert server.counted("charges") == 1
    assert "Traceback" not in server.output()


def test_a_worker_killed_mid_request_frees_its_key_when_the_lease_lapses(
        start_gunicorn: Callable[..., Server], store: redis.Redis) -> None:
    server = start_gunicorn(**PATIENT)
    hold = f"{server.prefix}:test:hold"
    store.set(hold, "1", ex=120)
    lost: list[BaseException | Answer] = []

    def doomed() -> None:
        try:
            lost.append(server.post("/hold", {"order": "o-k"}, "crash-1"))
        except (OSError, http.client.HTTPException) as exc:  # the worker died under this request
            lost.append(exc)

    first = threading.Thread(target=doomed, daemon=True)
    first.start()
    try:
        poll(lambda: store.get(f"{server.prefix}:test:hold-pid") is not None, "the view never started")
        pid = int(store.get(f"{server.prefix}:test:hold-pid") or 0)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        store.delete(hold)  # from now on the view answers at once
        first.join(REQUEST_TIMEOUT)
        assert not first.is_alive()
        assert isinstance(lost[0], (OSError, http.client.HTTPException)), lost

        # Polled as a client retries: 409 while the dead worker's lease lives (from whichever worker
        # answers; the replacement worker boots meanwhile), then it runs.
        statuses: Counter[int] = Counter()
        end = killed_at + CLAIM_LEASE_SECONDS + 15
        while True:
            answer = server.post("/hold", {"order": "o-k"}, "crash-1")
            statuses[answer.status] += 1
            if answer.status not in (409, 503):
                break
            if answer.status == 409:
                assert answer.headers["retry-after"] == "1"
            assert time.monotonic() < end, f"the key was still in use {CLAIM_LEASE_SECONDS + 15} s after the kill"
            time.sleep(0.25)
        usable_after = time.monotonic() - killed_at
        print(f"\nkilled worker {pid} mid-request; the key answered {dict(statuses)} and ran again "
              f"{usable_after:.1f} s after the kill (lease {CLAIM_LEASE_SECONDS:g} s)")
        assert (answer.status, answer.replayed) == (201, False), answer
        assert json.loads(answer.body) == {"run": 2}
        assert statuses[409] > 0  # the claim outlived its worker for a while ...
        assert usable_after <= CLAIM_LEASE_SECONDS + 15  # ... and no longer than its lease (plus polling slack)
        assert server.counted("hold-runs") == 2
        replay = server.post("/hold", {"order": "o-k"}, "crash-1")
        assert replay.replayed and replay.body == answer.body
        assert f"Worker (pid:{pid}) was sent SIGKILL" in server.output()
    finally:
        store.delete(hold)
        first.join(REQUEST_TIMEOUT)


def test_with_redis_frozen_requests_with_a_key_fail_closed_and_recover(
        start_gunicorn: Callable[..., Server], redis_server: RedisServer) -> None:
    server = start_gunicorn()
    # Connections and scripts loaded (polled: on a loaded machine a cold call may exceed the 100 ms).
    poll(lambda: server.post("/quick", {}, f"warm-{uuid.uuid4().hex}").status == 201, "no 201 to begin with")
    redis_server.freeze()
    try:
        refused = [server.post("/quick", {"n": n}, f"frozen-{n}") for n in range(4)]
        unkeyed = server.post("/quick", {})
    finally:
        redis_server.thaw()
    print(f"\nRedis frozen: requests with a key answered {[a.status for a in refused]} in "
          f"{[round(a.seconds, 3) for a in refused]} s; without a key {unkeyed.status}")
    for answer in refused:
        assert answer.status == 503, (answer, server.output())
        assert answer.headers["content-type"] == "application/problem+json"
        detail = json.loads(answer.body)["detail"]
        assert "unavailable" in detail and "redis" not in detail.lower() and "127.0.0.1" not in detail
        assert answer.seconds < REQUEST_TIMEOUT  # (answered, not left to time out)
    assert unkeyed.status == 201  # a request without a key needs no shared truth
    # Once Redis is back, keys work again (each worker probes it and returns to it).
    poll(lambda: server.post("/quick", {}, f"after-{uuid.uuid4().hex}").status == 201,
         "idempotency did not come back after Redis did", every=0.1)


def test_with_redis_frozen_and_fail_open_requests_with_a_key_run_and_a_warning_says_so(
        start_gunicorn: Callable[..., Server], redis_server: RedisServer) -> None:
    server = start_gunicorn(BALDUR_IDEMPOTENCY_FAIL_OPEN="1")
    assert server.post("/quick", {}, "warm").status == 201  # (fail open: 201 even from a slow Redis)
    redis_server.freeze()
    try:
        answers = [server.post("/quick", {"n": 1}, "open-1") for _ in range(3)]
    finally:
        redis_server.thaw()
    assert [(a.status, a.replayed) for a in answers] == [(201, False)] * 3, server.output()
    poll(lambda: "runs without its guarantee" in server.output(), "no WARNING about running without the guarantee")
    assert "BALDUR_IDEMPOTENCY_FAIL_OPEN=1" in server.output()


def test_a_response_made_while_redis_went_away_is_still_sent(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, fresh_runtime: Callable[[], Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """In one process, with the test client: the store fails after the view ran, when the response
    would be stored. The client gets the view's response (not a 500); the key stays in use until
    the claim's lease lapses."""
    monkeypatch.setenv("BALDUR_REDIS_URL", redis_server.url)
    monkeypatch.setenv("BALDUR_KEY_PREFIX", f"bi-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("BALDUR_REDIS_TIMEOUT_MS", PATIENT["BALDUR_REDIS_TIMEOUT_MS"])
    runtime = fresh_runtime()
    caplog.set_level(logging.WARNING, logger="baldur")
    app = Flask("lost_store")
    init_flask(app)
    runs: list[int] = []

    @app.post("/charges")
    def charge() -> tuple[dict[str, object], int]:
        runs.append(1)
        if len(runs) == 1:
            redis_server.freeze()  # Redis goes away while the charge is made
        return {"charged": True}, 201

    client = app.test_client()
    try:
        answer = client.post("/charges", json={"amount": 1}, headers={"Idempotency-Key": '"k-lost"'})
    finally:
        redis_server.thaw()
    assert (answer.status_code, answer.get_json()) == (201, {"charged": True})
    assert "may not be stored for replay" in caplog.text
    poll(lambda: not runtime.sync.store.down, "the store never returned to Redis", every=0.02)
    retry = client.post("/charges", json={"amount": 1}, headers={"Idempotency-Key": '"k-lost"'})
    # 409 while the unsettled claim's lease runs; or the replay, when the timed-out store command
    # reached Redis after all once it was thawed. Never a second run.
    if retry.status_code == 409:
        assert retry.headers["Retry-After"] == "1"
    else:
        assert (retry.status_code, retry.headers.get("Idempotent-Replayed")) == (201, "true")
        assert retry.data == answer.data
    assert len(runs) == 1
