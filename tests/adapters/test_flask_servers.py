"""The quickstart under real servers on loopback: ``flask run`` and gunicorn workers.

Each server runs in its own process group, which is killed after the test; every wait
is a poll with a deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from _flask_support import (
    DEADLINE,
    PYTHON,
    QUICKSTART,
    child_env,
    read_log,
    server_process,
    wait_for_http,
    wait_for_output,
)

from tests.ports import free_port

gunicorn = pytest.importorskip("gunicorn")
from gunicorn.config import KNOWN_SETTINGS  # noqa: E402

#: ``Baldur runs on the in-memory store under gunicorn with 2 workers (pid N): ... BALDUR_REDIS_URL ...``
PER_PROCESS = re.compile(r"WARNING baldur\.store Baldur runs on the in-memory store .*\(pid (\d+)\).*BALDUR_REDIS_URL")
BOOTED = re.compile(r"Booting worker with pid: (\d+)")


def _gunicorn(port: int, *extra: str) -> list[str]:
    args = [PYTHON, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", *extra]
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        args.append("--no-control-socket")  # gunicorn ≥ 25 would share one socket under $HOME
    return [*args, "app:app"]


def test_the_quickstart_answers_under_flask_run(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "flask.log"
    args = [PYTHON, "-m", "flask", "--app", "app", "run", "--port", str(port)]
    with server_process(args, QUICKSTART, child_env(), log) as proc:
        status, body = wait_for_http(f"http://127.0.0.1:{port}/demo", proc, log)
        assert status == 200, read_log(log)
        assert json.loads(body) == {"status": "ok", "service": "demo"}
        status, body = wait_for_http(f"http://127.0.0.1:{port}/nowhere", proc, log)
        assert status == 404


@pytest.mark.parametrize("preload", [False, True], ids=["workers-load", "preload"])
def test_gunicorn_workers_each_warn_once_about_the_per_process_store(tmp_path: Path, preload: bool) -> None:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    args = _gunicorn(port, *(["--preload"] if preload else []))
    with server_process(args, QUICKSTART, child_env(), log) as proc:
        status, body = wait_for_http(f"http://127.0.0.1:{port}/demo", proc, log)
        assert status == 200
        assert json.loads(body) == {"status": "ok", "service": "demo"}
        # Both workers have loaded (or been forked with) the app once they have booted.
        wait_for_output(log, proc, lambda text: len(BOOTED.findall(text)) >= 2 and len(PER_PROCESS.findall(text)) >= 2)
    output = read_log(log)
    warned = PER_PROCESS.findall(output)
    booted = BOOTED.findall(output)
    assert len(warned) == 2, output  # one per worker; never one from the master (--preload)
    assert sorted(warned) == sorted(booted), output
    assert "gunicorn with 2 workers" in output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("preload", [False, True], ids=["workers-load", "preload"])
def test_gunicorn_refuses_to_start_when_a_shared_store_is_required(tmp_path: Path, preload: bool) -> None:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    args = _gunicorn(port, *(["--preload"] if preload else []))
    with server_process(args, QUICKSTART, child_env(BALDUR_REQUIRE_SHARED_STORE="1"), log) as proc:
        try:
            code = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn still runs after {DEADLINE} s:\n{read_log(log)}")
    output = read_log(log)
    assert code != 0, output
    assert "BALDUR_REQUIRE_SHARED_STORE" in output
    assert "BALDUR_REDIS_URL" in output  # the message names the fix too
