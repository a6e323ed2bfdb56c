"""Trust at the edge (issue 10) under real gunicorn workers (``-w 2``) sharing Redis.

A limit holds whoever answers, on every worker: brute force through an auth decorator and
through a ``before_request`` hook ends in 429 at the fleet's quota; Bob and an anonymous
client never receive Alice's stored response, whichever worker stored it. Each test sends
until both workers have answered (bounded), so that sharing is shown, never hoped for.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _flask_support import DEADLINE, PYTHON, child_env, read_log, server_process, wait_for_output

from tests.ports import free_port
from tests.redis_server import RedisServer

redis = pytest.importorskip("redis")
pytest.importorskip("gunicorn")
from gunicorn.config import KNOWN_SETTINGS  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKERS = 2
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
REQUEST_TIMEOUT = 10.0
#: Each test stops after this many rounds, whether or not both workers answered.
MAX_ROUNDS = 80
BATCH = 8

Answer = tuple[int, dict[str, str], bytes]


class Fleet:
    def __init__(self, port: int, prefix: str, log: Path, store: redis.Redis) -> None:
        self.port, self.prefix, self.log, self.store = port, prefix, log, store

    def post(self, path: str, headers: dict[str, str] | None = None, body: bytes = b"{}",
             source: str = "127.0.0.1") -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT,
                                          source_address=(source, 0))
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def until_both_workers(self, send: Callable[[int], Answer]) -> list[Answer]:
        """``send(i)`` in parallel batches (a busy worker leaves the next connection to the
        other) until both workers have answered, at most ``MAX_ROUNDS`` times."""
        answers: list[Answer] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=BATCH) as pool:
            for start in range(0, MAX_ROUNDS, BATCH):
                batch = [pool.submit(send, i) for i in range(start, start + BATCH)]
                answers += [f.result(timeout=REQUEST_TIMEOUT * 10) for f in batch]
                if len({a[1].get("x-worker-pid") for a in answers}) >= WORKERS:
                    return answers
        pytest.fail(f"only one worker answered {len(answers)} rounds:\n{read_log(self.log)}")


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    store = redis.Redis.from_url(redis_server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    port, prefix = free_port(), f"edge-{uuid.uuid4().hex[:12]}"
    log = tmp_path / "gunicorn.log"
    args = [PYTHON, "-m", "gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
            "--timeout", "30", "edge_app:app"]
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        args.insert(-1, "--no-control-socket")  # gunicorn ≥ 25 would share one socket under $HOME
    env = child_env(BALDUR_REDIS_URL=redis_server.url, BALDUR_KEY_PREFIX=prefix, BALDUR_REDIS_TIMEOUT_MS="2000")
    try:
        with server_process(args, HERE, env, log) as proc:
            wait_for_output(log, proc, lambda text: len(BOOTED.findall(text)) >= WORKERS)
            fleet = Fleet(port, prefix, log, store)
            end = time.monotonic() + DEADLINE
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
                    conn.request("GET", "/healthz")  # exempt: spends no quota
                    conn.getresponse().read()
                    conn.close()
                    break
                except OSError as exc:
                    if proc.poll() is not None or time.monotonic() > end:
                        pytest.fail(f"gunicorn did not answer ({exc!r}):\n{read_log(log)}")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
            yield fleet
    finally:
        with contextlib.suppress(redis.RedisError):
            for key in store.scan_iter(match=f"{prefix}:*", count=1000):
                store.unlink(key)
        store.close()


@pytest.mark.parametrize(("path", "answered"), [("/login", 401), ("/transfer", 403)],
                         ids=["auth-decorator", "before-request-hook"])
def test_brute_force_ends_in_429_at_the_fleets_quota(fleet: Fleet, path: str, answered: int) -> None:
    # Each attempt from a fresh loopback address until both workers answered one: 3 answered, then 429.
    def attempt(i: int) -> Answer:
        source = f"127.0.{i // 250}.{i % 250 + 2}"
        answers = [fleet.post(path, source=source) for _ in range(5)]
        assert [a[0] for a in answers] == [answered] * 3 + [429] * 2, (source, read_log(fleet.log))
        assert int(answers[-1][1]["retry-after"]) >= 1
        return answers[0]

    fleet.until_both_workers(attempt)


def test_bob_and_an_anonymous_client_never_receive_alices_stored_response(fleet: Fleet) -> None:
    def round_trip(i: int) -> Answer:
        key, source = f"order-{i}", f"127.1.{i // 250}.{i % 250 + 2}"  # one address for all three: a NAT
        alice = fleet.post("/charges", {"Authorization": "Bearer alice", "Idempotency-Key": key}, source=source)
        assert alice[0] == 201 and b"4242" in alice[2]
        for intruder in ({"Authorization": "Bearer bob"}, {}):
            answer = fleet.post("/charges", {**intruder, "Idempotency-Key": key}, source=source)
            assert answer[0] == 201 and b"4242" not in answer[2] and "idempotent-replayed" not in answer[1]
        return alice

    answers = fleet.until_both_workers(round_trip)
    assert int(fleet.store.get(f"{fleet.prefix}:test:charges") or 0) == 3 * len(answers)
    assert all(json.loads(a[2])["user"] == "alice" for a in answers)


def test_alices_retry_is_replayed_whichever_worker_answers(fleet: Fleet) -> None:
    replays: list[Answer] = []

    def retry(i: int) -> Answer:
        source = f"127.2.{i // 250}.{i % 250 + 2}"
        headers = {"Authorization": "Bearer alice", "Idempotency-Key": f"k-{i}"}
        first = fleet.post("/charges", headers, source=source)
        again = fleet.post("/charges", headers, source=source)
        assert again[1].get("idempotent-replayed") == "true" and again[2] == first[2]
        replays.append(again)
        return again

    fleet.until_both_workers(retry)
    assert int(fleet.store.get(f"{fleet.prefix}:test:charges") or 0) == len(replays)
