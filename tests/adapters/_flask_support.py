"""Helpers of the Flask adapter tests: app factories for sync and ``async def`` views,
and real server processes on loopback (bounded waits, process groups killed after)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart_flask"
#: Every wait on a server process is bounded by this; no test may hang.
DEADLINE = 20.0
PYTHON = sys.executable
KINDS = ("sync", "async")


def make_view(kind: str, body: Callable[[], Any]) -> Callable[..., Any]:
    """A view function of ``kind`` (``sync`` or ``async``) whose work is ``body()``."""
    if kind == "sync":

        def sync_view(**kwargs: Any) -> Any:
            return body()

        return sync_view

    async def async_view(**kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return body()

    return async_view


def new_app(name: str = "baldur_test") -> Flask:
    app = Flask(name)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # an error in a view is a 500 response, as in production
    return app


# -- real processes ------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    """The environment for a server process: no inherited ``BALDUR_*``, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALDUR_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@contextlib.contextmanager
def server_process(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` in its own process group, output to ``log``; kill the whole group after."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            yield proc
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (workers)
    if proc.poll() is None:
        proc.wait(timeout=10)


#: Straight to loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float = DEADLINE) -> tuple[int, bytes]:
    """Poll ``url`` until it answers; fail (with the server's output) if the process dies or time runs out."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{read_log(log)}")
        try:
            return http_get(url, timeout=1.0)
        except OSError as exc:  # not listening yet
            last = exc
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)  # a bounded pause between polls that also notices an early exit
    pytest.fail(f"no answer from {url} within {deadline} s ({last!r}):\n{read_log(log)}")


def wait_for_output(log: Path, proc: subprocess.Popen[bytes], ready: Callable[[str], bool],
                    deadline: float = DEADLINE) -> str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        text = read_log(log)
        if ready(text):
            return text
        if proc.poll() is not None:
            text = read_log(log)
            if ready(text):
                return text
            pytest.fail(f"the server exited with {proc.returncode}:\n{text}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
    pytest.fail(f"the expected output did not appear within {deadline} s:\n{read_log(log)}")


def read_log(log: Path) -> str:
    return log.read_bytes().decode("utf-8", "replace") if log.exists() else ""



def add_view(app: Flask, path: str, kind: str, body: Callable[[], Any], *,
             protect: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
             methods: tuple[str, ...] = ("GET",)) -> None:
    """Route ``path`` to a ``kind`` view running ``body()``, wrapped by ``protect`` (a decorator)."""
    view = make_view(kind, body)
    if protect is not None:
        view = protect(view)
    app.add_url_rule(path, endpoint=path, view_func=view, methods=list(methods))
