"""Adaptive shedding under real servers on loopback: gunicorn gthread and uvicorn (+ a2wsgi).

Counts, not timings: an app whose requests arrive after a standing queue
(``X-Request-Start`` older than the target, below the ceiling) sheds; a
healthy app, and any app without the header under a bounded thread pool,
never does. Every server runs in its own process group, killed by its PID
after the test; every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _flask_support import DEADLINE, PYTHON, child_env, server_process, wait_for_http

from tests.ports import free_port

pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")
pytest.importorskip("a2wsgi")

APP = '''
import time

from a2wsgi import WSGIMiddleware
from flask import Flask

import baldur
from baldur.adapters.flask import init_flask

app = Flask("shedding")
init_flask(app)


@app.get("/work")
@baldur.protected("work")
def work():
    time.sleep(0.02)
    return "done"


asgi = WSGIMiddleware(app)
'''

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _command(server: str, port: int) -> list[str]:
    if server == "gunicorn-gthread":
        return [PYTHON, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "4",
                "-b", f"127.0.0.1:{port}", "--graceful-timeout", "3", "shedding_app:app"]
    return [PYTHON, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "shedding_app:asgi"]


def _get(url: str, started: float | None) -> tuple[int, dict[str, str], bytes]:
    headers = {} if started is None else {"X-Request-Start": f"t={int(started * 1000)}"}
    try:
        with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return int(response.status), {k.lower(): v for k, v in response.headers.items()}, bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), {k.lower(): v for k, v in exc.headers.items()}, bytes(exc.read())


SERVERS = ["gunicorn-gthread", "uvicorn"]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "shedding_app.py").write_text(APP)
    return tmp_path


@pytest.mark.parametrize("server", SERVERS)
def test_a_standing_queue_is_shed_with_a_retry_after(server: str, app_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/work"
    with server_process(_command(server, port), app_dir, child_env(), app_dir / "server.log") as proc:
        wait_for_http(url, proc, app_dir / "server.log")
        assert _get(url, time.time())[0] == 200  # a fresh request: the delay floor
        end = time.monotonic() + DEADLINE
        shed: tuple[int, dict[str, str], bytes] | None = None
        while shed is None and time.monotonic() < end:
            # Every request arrives as if it had queued 2 s (under the 10 s ceiling): a standing queue.
            answer = _get(url, time.time() - 2.0)
            if answer[0] == 503:
                shed = answer
    assert shed is not None, "a standing queue of 2 s was never shed"
    _, headers, body = shed
    assert headers["content-type"] == "application/problem+json"
    assert int(headers["retry-after"]) >= 1
    assert json.loads(body)["status"] == 503


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "no-header"])
@pytest.mark.parametrize("server", SERVERS)
def test_a_healthy_app_never_sheds(server: str, stamped: bool, app_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/work"
    with server_process(_command(server, port), app_dir, child_env(), app_dir / "server.log") as proc:
        wait_for_http(url, proc, app_dir / "server.log")
        # Sequential requests, each stamped as it is sent: no queue ever stands.
        statuses = [_get(url, time.time() if stamped else None)[0] for _ in range(150)]
    assert statuses.count(200) == len(statuses)


@pytest.mark.parametrize("server", SERVERS)
def test_without_the_header_a_bounded_thread_pool_is_never_shed(server: str, app_dir: Path) -> None:
    """Past the server's threads the queue is the server's, invisible to the app: nothing is shed."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/work"
    with server_process(_command(server, port), app_dir, child_env(), app_dir / "server.log") as proc:
        wait_for_http(url, proc, app_dir / "server.log")
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: _get(url, None)[0], range(200)))
    assert statuses.count(200) == len(statuses)
