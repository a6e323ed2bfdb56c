"""The ``baldur`` CLI against a real admin server: the admin API mounted in a Flask app
(``init_flask(app, admin="/_baldur")``, cli_app.py) under gunicorn, and ``baldur admin`` itself,
each in its own process group (killed and reaped after), waited for by polling. Each error case
has its exit code and one line on stderr.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _scrape import Scrape
from test_cli import BALDUR, HERE, baldur, one_line

from baldur.cli import EXIT_CODES
from tests.adapters._flask_support import (
    PYTHON,
    child_env,
    http_get,
    read_log,
    server_process,
    wait_for_http,
    wait_for_output,
)
from tests.ports import free_port

# The admin API comes from the admin-api branch (issue 12); until it is merged there is nothing to talk to.
pytest.importorskip("baldur.admin._app", reason="the admin API (branch wip/admin-api) is not merged yet")
pytest.importorskip("gunicorn")


#: Straight to loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
KEYS = {"viewer": "viewer-key-0123456789", "operator": "operator-key-0123456789", "admin": "admin-key-0123456789"}


@dataclass(frozen=True)
class Server:
    url: str
    base: str

    def pay(self) -> int:
        return http_get(f"{self.base}/pay", timeout=10)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """gunicorn (one worker) running cli_app.py until the module ends, waited for over HTTP."""
    port = free_port()
    log = tmp_path_factory.mktemp("cli") / "gunicorn.log"
    env = child_env(BALDUR_ADMIN_KEYS=",".join(f"{role}:{key}" for role, key in KEYS.items()))
    args = [PYTHON, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "cli_app:app"]
    with server_process(args, HERE, env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/pay", proc, log)
        yield Server(f"{base}/_baldur", base)


def test_status_prints_the_breakers_and_limits(server: Server) -> None:
    assert server.pay() == 200
    result = baldur("status", "--url", server.url, key=KEYS["viewer"])
    assert result.returncode == 0, result.stderr
    breakers, limits = result.stdout.split("LIMITS")
    assert re.search(r"^\s+payments\s+closed\s", breakers, re.M), result.stdout
    assert re.search(r"^\s+payments\s+1000/minute\s", limits, re.M), result.stdout


def test_an_operator_forces_a_breaker_open_for_a_while_then_closes_and_resets_it(server: Server) -> None:
    opened = baldur("breaker", "open", "payments", "--reason", "provider maintenance", "--for", "10m",
                    "--url", server.url, key=KEYS["operator"])
    assert opened.returncode == 0, opened.stderr
    assert re.fullmatch(r"payments: open, forced open for (10m00s|9m5\ds) more \(provider maintenance; by k-\w+\)\n",
                        opened.stdout), opened.stdout
    assert server.pay() == 503
    status = baldur("status", "--url", server.url, key=KEYS["viewer"])
    assert re.search(r"^\s+payments\s+open\s.*open \S+: provider maintenance$", status.stdout, re.M), status.stdout
    closed = baldur("breaker", "close", "payments", "--reason", "verified by hand", "--url", server.url,
                    key=KEYS["operator"])
    assert closed.returncode == 0 and "forced closed until reset" in closed.stdout, closed.stdout + closed.stderr
    assert server.pay() == 200
    reset = baldur("breaker", "reset", "payments", "--reason", "maintenance over", "--url", server.url,
                   key=KEYS["operator"])
    assert (reset.returncode, reset.stdout) == (0, "payments: closed\n"), reset.stderr


def test_the_key_can_come_from_a_file(server: Server, tmp_path: Path) -> None:
    key_file = tmp_path / "viewer.key"
    key_file.write_text(KEYS["viewer"] + "\n")
    result = baldur("status", "--url", server.url, "--key-file", str(key_file))
    assert result.returncode == 0, result.stderr


def test_a_wrong_key_is_401_and_its_own_exit_code(server: Server) -> None:
    result = baldur("status", "--url", server.url, key="not-a-key-of-this-server")
    assert result.returncode == EXIT_CODES["unauthorized"] == 4
    assert one_line(result) == "baldur: the admin API refused the key (401): check BALDUR_ADMIN_KEY or --key-file"


def test_a_viewer_may_not_force_a_breaker(server: Server) -> None:
    result = baldur("breaker", "open", "payments", "--reason", "curious", "--url", server.url, key=KEYS["viewer"])
    assert result.returncode == EXIT_CODES["forbidden"] == 5
    assert one_line(result).startswith("baldur: not allowed (403): ") and "operator" in result.stderr
    assert server.pay() == 200


def test_an_unknown_breaker_is_404(server: Server) -> None:
    result = baldur("breaker", "open", "no such breaker", "--reason", "typo", "--url", server.url,
                    key=KEYS["operator"])
    assert result.returncode == EXIT_CODES["not_found"] == 6
    assert one_line(result).startswith("baldur: not found (404): ") and "no such breaker" in result.stderr


def test_a_request_the_api_rejects_shows_its_detail(server: Server) -> None:
    result = baldur("breaker", "open", "payments", "--reason", "x" * 501, "--url", server.url, key=KEYS["operator"])
    assert result.returncode == EXIT_CODES["bad_request"] == 7
    line = one_line(result)
    assert line.startswith("baldur: the admin API rejected the request (400): ") and "[field: reason]" in line
    assert server.pay() == 200


def test_a_server_without_keys_says_why_and_exits_2() -> None:
    result = baldur("admin", "--addr", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "BALDUR_ADMIN_KEYS" in result.stderr


def test_baldur_admin_serves_until_stopped(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "admin.log"
    env = child_env(BALDUR_ADMIN_KEYS=f"viewer:{KEYS['viewer']}")
    with server_process([*BALDUR, "admin", "--addr", f"127.0.0.1:{port}"], tmp_path, env, log) as proc:
        wait_for_output(log, proc, lambda text: "serving the admin API" in text)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/", proc, log)
        result = baldur("status", "--url", url, key=KEYS["viewer"])
        assert result.returncode == 0, result.stderr + read_log(log)
        assert "BREAKERS" in result.stdout and "LIMITS" in result.stdout


def test_too_many_wrong_keys_are_429_with_when_to_retry(tmp_path: Path) -> None:
    """A server of its own: after this test its address is locked out for a while."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = child_env(BALDUR_ADMIN_KEYS=f"viewer:{KEYS['viewer']}")
    args = [PYTHON, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "cli_app:app"]
    with server_process(args, HERE, env, log) as proc:
        wait_for_http(f"http://127.0.0.1:{port}/pay", proc, log)
        url = f"http://127.0.0.1:{port}/_baldur"
        # 10 failed attempts a minute: each CLI run is a new process, and on a loaded machine one may take
        # seconds, in which the limiter grants another attempt (one per 6 s). So: try until refused, bounded.
        codes: list[int] = []
        while EXIT_CODES["too_many_attempts"] not in codes:
            assert len(codes) < 30, codes
            codes.append(baldur("status", "--url", url, key=f"wrong-key-{len(codes):02d}-xxxxxxxx").returncode)
        assert len(codes) >= 11
        assert codes[:-1] == [EXIT_CODES["unauthorized"]] * (len(codes) - 1)
        assert codes[-1] == EXIT_CODES["too_many_attempts"] == 8
        last = baldur("status", "--url", url, key="wrong-key-again-xxxxxxxx")
        assert last.returncode == 8 and re.search(r"\(429\); retry after \d+ s$", one_line(last))


def test_the_mounted_metrics_count_the_requests_made(server: Server) -> None:
    def calls() -> float:
        request = urllib.request.Request(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEYS['viewer']}"})
        with _OPENER.open(request, timeout=10) as response:
            return Scrape(response.read().decode()).value("baldur_calls_total", "payments") or 0

    before = calls()
    assert [server.pay() for _ in range(5)] == [200] * 5
    assert calls() == before + 5
