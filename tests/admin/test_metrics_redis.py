"""``/metrics`` on Redis: two real gunicorn workers count locally and write behind; the fleet's
totals, read from another process, equal the requests made.

gunicorn runs in its own process group (killed and reaped after the test) on a free loopback
port, with the session's private redis-server and a key prefix of its own. The test waits for
the write-behind by polling the scrape with a deadline, never by sleeping.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _scrape import Scrape, expected, scrape

import baldur
from baldur import _metrics, _runtime
from tests.adapters._flask_support import (
    DEADLINE,
    PYTHON,
    child_env,
    read_log,
    server_process,
    wait_for_output,
)
from tests.ports import free_port
from tests.redis_server import RedisServer

redis = pytest.importorskip("redis")
pytest.importorskip("gunicorn")

HERE = Path(__file__).resolve().parent
WORKERS = 2
BOOTED = re.compile(r"Booting worker with pid: (\d+)")


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Worker-Pid", "?")
    finally:
        conn.close()


@pytest.fixture
def fleet_runtime(redis_server: RedisServer) -> Iterator[_runtime.Runtime]:
    """This process's runtime on the session's Redis under a fresh prefix (the previous one restored after)."""
    saved = _runtime._current
    runtime = _runtime.init(redis_url=redis_server.url, key_prefix=f"mt-{uuid.uuid4().hex[:12]}",
                            redis_timeout_ms=2000)
    try:
        yield runtime
    finally:
        with _runtime._lock:
            _runtime._current = saved
        runtime.sync.reset()
        runtime.sync.close()


@pytest.mark.parametrize("preload", [False, True], ids=["import-in-worker", "preload-then-fork"])
def test_the_fleet_totals_equal_the_requests_made(fleet_runtime: _runtime.Runtime, redis_server: RedisServer,
                                                   tmp_path: Path, preload: bool) -> None:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    args = [PYTHON, "-m", "gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
            *(["--preload"] if preload else []), "metrics_app:app"]
    env = child_env(BALDUR_REDIS_URL=redis_server.url, BALDUR_KEY_PREFIX=fleet_runtime.settings.key_prefix,
                    BALDUR_REDIS_TIMEOUT_MS="2000")
    with server_process(args, HERE, env, log) as proc:
        wait_for_output(log, proc, lambda text: len(BOOTED.findall(text)) >= WORKERS)
        _wait_until_answering(port, proc, log)
        workers: set[str] = set()
        made = {"/ok": 0}
        end = time.monotonic() + DEADLINE
        while len(workers) < WORKERS or made["/ok"] < 20:  # the kernel picks the worker: ask until both served
            assert time.monotonic() < end, f"not every worker answered: {workers}"
            status, pid = get(port, "/ok")
            assert status == 200
            workers.add(pid)
            made["/ok"] += 1
        boom = [get(port, "/boom")[0] for _ in range(4)]
        limited = [get(port, "/limited")[0] for _ in range(7)]
        assert boom == [500] * 4 and sorted(limited) == [200] * 3 + [429] * 4

        want = {
            "metrics-ok": expected(calls=made["/ok"]),
            "metrics-boom": expected(calls=4, failures=4),
            "metrics-limited": expected(calls=3, rate_limited=4),
        }
        last = _poll_scrape(fleet_runtime, want)
        assert {name: last.figures(name) for name in want} == want, read_log(log)


def _poll_scrape(runtime: _runtime.Runtime, want: dict[str, dict[str, float | None]]) -> Scrape:
    """Scrape until the fleet's figures are ``want`` (each worker flushes every FLUSH_SECONDS), or the deadline."""
    end = time.monotonic() + DEADLINE + 2 * _metrics.FLUSH_SECONDS
    while True:
        last = scrape(runtime)
        if all(last.figures(name) == figures for name, figures in want.items()) or time.monotonic() > end:
            return last
        time.sleep(_metrics.FLUSH_SECONDS / 4)


def _wait_until_answering(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + DEADLINE
    while True:
        try:
            get(port, "/healthz")
            return
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"gunicorn did not answer ({exc!r}):\n{read_log(log)}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)  # a bounded pause between polls that also notices an early exit


def test_a_scrape_sends_this_process_counts_first_and_reads_the_breaker_from_redis(
        fleet_runtime: _runtime.Runtime) -> None:
    name = f"local-{uuid.uuid4().hex[:8]}"
    during: list[Scrape] = []

    @baldur.protected(name)
    def work(look: bool) -> None:
        if look:
            during.append(scrape(fleet_runtime))

    work(False)
    work(True)
    assert during[0].figures(name) == expected(calls=1, in_flight=1)
    baldur.breaker(name).open()
    assert scrape(fleet_runtime).figures(name) == expected(calls=2, breaker_state=2)
    baldur.breaker(name).reset()
    assert scrape(fleet_runtime).figures(name) == expected(calls=2)
