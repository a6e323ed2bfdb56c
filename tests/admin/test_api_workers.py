"""One admin server steers a fleet: two real gunicorn workers (metrics_app.py) and the standalone
``python -m baldur.admin`` share the session's private Redis under a key prefix of their own.

Forcing a breaker open through the standalone API makes both workers refuse at once, closing it
restores them, a forced state with an expiry lapses by itself, and the standalone server's
``/metrics`` count the workers' refusals. The kernel picks which worker answers: the test asks
until each worker has answered as expected (every answer names its worker), within a deadline.
Every process runs in its own process group, killed and reaped after the test.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _scrape import Scrape

from baldur.admin._keys import key_id
from tests.adapters._flask_support import (
    DEADLINE,
    PYTHON,
    child_env,
    read_log,
    server_process,
    wait_for_http,
    wait_for_output,
)
from tests.ports import free_ports
from tests.redis_server import RedisServer

pytest.importorskip("redis")
pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")

HERE = Path(__file__).resolve().parent
WORKERS = 2
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
KEYS = {"viewer": "viewer-key-0123456789", "operator": "operator-key-0123456789", "admin": "admin-key-0123456789"}
BREAKER = "metrics-ok"


def request(port: int, method: str, path: str, key: str | None = None,
            body: object = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@dataclass
class Fleet:
    app_port: int
    admin_port: int
    logs: list[Path]
    refused: int = 0

    def admin(self, method: str, path: str, role: str = "operator", body: object = None) -> tuple[int, Any]:
        status, headers, text = request(self.admin_port, method, path, KEYS[role], body)
        return status, json.loads(text) if "json" in headers.get("content-type", "") else text.decode()

    def until_every_worker(self, status: int) -> float:
        """Ask ``/ok`` until each worker has answered ``status`` (and none answered otherwise after
        its first such answer); how long it took."""
        started = time.monotonic()
        settled: dict[str, int] = {}
        seen: Counter[tuple[str, int]] = Counter()
        while len(settled) < WORKERS:
            assert time.monotonic() - started < DEADLINE, f"not every worker answered {status}: {seen}\n{self.output()}"
            code, headers, _ = request(self.app_port, "GET", "/ok")
            pid = headers.get("x-worker-pid", "?")
            seen[(pid, code)] += 1
            if code == 503:
                self.refused += 1
                assert headers["content-type"] == "application/problem+json"
                assert int(headers["retry-after"]) >= 1
            if pid in settled:
                assert code == status, f"worker {pid} answered {code} after {status}: {seen}"
            elif code == status:
                settled[pid] = code
        return time.monotonic() - started

    def output(self) -> str:
        return "\n".join(read_log(log) for log in self.logs)


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    prefix = f"fleet-{uuid.uuid4().hex[:10]}"
    shared = {"BALDUR_REDIS_URL": redis_server.url, "BALDUR_KEY_PREFIX": prefix, "BALDUR_REDIS_TIMEOUT_MS": "2000"}
    app_port, admin_port = free_ports(2)
    app_log, admin_log = tmp_path / "gunicorn.log", tmp_path / "admin.log"
    gunicorn = [PYTHON, "-m", "gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{app_port}",
                "--graceful-timeout", "5", "metrics_app:app"]
    admin = [PYTHON, "-m", "baldur.admin"]
    admin_env = child_env(**shared, BALDUR_ADMIN_ADDR=f"127.0.0.1:{admin_port}",
                          BALDUR_ADMIN_KEYS=",".join(f"{role}:{key}" for role, key in KEYS.items()))
    with server_process(gunicorn, HERE, child_env(**shared), app_log) as app_proc, \
            server_process(admin, HERE, admin_env, admin_log) as admin_proc:
        wait_for_output(app_log, app_proc, lambda text: len(BOOTED.findall(text)) >= WORKERS)
        wait_for_http(f"http://127.0.0.1:{app_port}/healthz", app_proc, app_log)
        wait_for_http(f"http://127.0.0.1:{admin_port}/api/v1/health", admin_proc, admin_log)
        yield Fleet(app_port, admin_port, [app_log, admin_log])


def poll(check: Callable[[], bool], what: str, fleet: Fleet) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < end, f"{what}\n{fleet.output()}"
        time.sleep(0.1)


def test_one_admin_server_steers_every_worker(fleet: Fleet) -> None:
    fleet.until_every_worker(200)
    # A healthy breaker, never failed, is known to the admin through the store: it can be forced before a deploy.
    poll(lambda: BREAKER in [b["name"] for b in fleet.admin("GET", "/api/v1/breakers", "viewer")[1]["breakers"]],
         "the standalone admin does not list the workers' breaker", fleet)

    status, forced = fleet.admin("POST", f"/api/v1/breakers/{BREAKER}/open", body={"reason": "provider deploy"})
    assert (status, forced["state"], forced["forced"]["reason"]) == (200, "open", "provider deploy"), forced
    took = fleet.until_every_worker(503)
    print(f"\nforced open: both workers answered 503 within {took * 1000:.0f} ms of the answer to the force")

    assert fleet.admin("POST", f"/api/v1/breakers/{BREAKER}/close", body={"reason": "deploy went well"})[0] == 200
    fleet.until_every_worker(200)
    assert fleet.admin("POST", f"/api/v1/breakers/{BREAKER}/reset", body={"reason": "back to its rule"})[0] == 200
    fleet.until_every_worker(200)

    entries = fleet.admin("GET", "/api/v1/audit", "admin")[1]["entries"]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("breaker.reset", BREAKER), ("breaker.close", BREAKER), ("breaker.open", BREAKER)]
    assert {e["key_id"] for e in entries} == {key_id(KEYS["operator"])}

    # The workers' refusals, counted where they happened and written behind, are the standalone server's figures.
    def counted() -> bool:
        text = fleet.admin("GET", "/metrics", "viewer")[1]
        return Scrape(text).value("baldur_rejections_total", BREAKER, cause="circuit_open") == fleet.refused

    poll(counted, f"/metrics never counted the {fleet.refused} refusals", fleet)


def test_a_forced_state_with_an_expiry_lapses_on_every_worker_by_itself(fleet: Fleet) -> None:
    fleet.until_every_worker(200)
    poll(lambda: fleet.admin("POST", f"/api/v1/breakers/{BREAKER}/open",
                             body={"reason": "one second", "for_seconds": 1})[0] == 200,
         "the standalone admin could not force the workers' breaker", fleet)
    fleet.until_every_worker(503)
    fleet.until_every_worker(200)  # no further admin call: the forced state lapsed by itself
    breaker = fleet.admin("GET", f"/api/v1/breakers/{BREAKER}", "viewer")[1]
    assert (breaker["state"], breaker["forced"]) == ("closed", None)
