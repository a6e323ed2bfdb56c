"""The quickstart under real servers sharing the session's private Redis: gunicorn ``-w 2``
(WSGI, the sync middleware) and uvicorn ``--workers 2`` (ASGI, the async middleware).

Each test starts the server in its own process group (killed and reaped after the test) on a
free loopback port, with its own ``BALDUR_KEY_PREFIX``; it waits until both workers have
booted, and a test that needs both workers keeps asking until each has answered (the kernel,
not the test, picks the worker). The site is ``worker_site`` beside this file: the quickstart's
settings and URLs plus a login page, a private API and a failing view.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import http.client
import json
import re
import subprocess
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.adapters._flask_support import (
    DEADLINE,
    PYTHON,
    ROOT,
    child_env,
    read_log,
    server_process,
    wait_for_output,
)
from tests.ports import free_port
from tests.redis_server import RedisServer

redis = pytest.importorskip("redis")
pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")

HERE = Path(__file__).resolve().parent
QUICKSTART = ROOT / "examples" / "quickstart_django"
WORKERS = 2
REQUEST_TIMEOUT = 10.0
#: Readiness probes come from here: they spend none of the tests' client's (127.0.0.1) quota.
PROBE_ADDRESS = "127.0.0.2"
BOOTED = {"gunicorn": re.compile(r"Booting worker with pid: (\d+)"),
          "uvicorn": re.compile(r"Started server process")}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def pid(self) -> str:
        return self.headers.get("x-worker-pid", "?")


@dataclass
class Server:
    port: int
    log: Path

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                source: str | None = None, timeout: float = REQUEST_TIMEOUT) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=None if source is None else (source, 0))
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def get_many(self, path: str, n: int, parallel: int = 16) -> list[Answer]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(parallel, n)) as pool:
            futures = [pool.submit(self.request, "GET", path) for _ in range(n)]
            return [f.result(timeout=REQUEST_TIMEOUT + 5) for f in futures]

    def until_every_worker(self, ask: Callable[[], Answer], answers: list[Answer]) -> list[Answer]:
        """More of ``ask()`` until both workers have answered one of ``answers`` or of these."""
        more: list[Answer] = []
        end = time.monotonic() + DEADLINE
        while len({a.pid for a in answers + more}) < WORKERS:
            assert time.monotonic() < end, f"not every worker answered: {Counter(a.pid for a in answers + more)}"
            more.append(ask())
        return more

    def output(self) -> str:
        return read_log(self.log)


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([PYTHON, "manage.py", *args], cwd=QUICKSTART, env=env, capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.fixture
def site_env(redis_server: RedisServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The servers' environment: a migrated SQLite file of the test's own, the private Redis
    under a key prefix of the test's own (removed after)."""
    prefix = f"dj-{uuid.uuid4().hex[:12]}"
    env = child_env(DJANGO_SETTINGS_MODULE="worker_site.settings", QUICKSTART_DB=str(tmp_path / "db.sqlite3"),
                    BALDUR_REDIS_URL=redis_server.url, BALDUR_KEY_PREFIX=prefix, BALDUR_REDIS_TIMEOUT_MS="2000",
                    BALDUR_LOG_LEVEL="INFO")
    env["PYTHONPATH"] = f"{HERE}:{QUICKSTART}:{env['PYTHONPATH']}"
    manage(env, "migrate", "--verbosity", "0")
    yield env
    client = redis.Redis.from_url(redis_server.url)
    with contextlib.suppress(redis.RedisError):
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.unlink(key)
    client.close()


@pytest.fixture(params=["gunicorn", "uvicorn"])
def start(request: pytest.FixtureRequest, site_env: dict[str, str],
          tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start(**env)``: the site under gunicorn -w 2 or uvicorn --workers 2, until the test ends."""
    stack = contextlib.ExitStack()
    server_name = str(request.param)

    def run(**extra: str) -> Server:
        port = free_port()
        log = tmp_path / f"{server_name}-{port}.log"
        if server_name == "gunicorn":
            args = [PYTHON, "-m", "gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--graceful-timeout",
                    "5", "quickstart.wsgi:application"]
        else:
            args = [PYTHON, "-m", "uvicorn", "--workers", str(WORKERS), "--port", str(port), "--lifespan", "off",
                    "quickstart.asgi:application"]
        proc = stack.enter_context(server_process(args, QUICKSTART, {**site_env, **extra}, log))
        wait_for_output(log, proc, lambda text: len(BOOTED[server_name].findall(text)) >= WORKERS)
        server = Server(port, log)
        end = time.monotonic() + DEADLINE
        while True:
            try:
                server.request("GET", "/healthz", source=PROBE_ADDRESS, timeout=1.0)
                return server
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"{server_name} did not answer ({exc!r}):\n{read_log(log)}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)

    try:
        yield run
    finally:
        stack.close()


def test_a_limit_of_30_admits_exactly_30_across_workers(start: Callable[..., Server]) -> None:
    server = start(BALDUR_RATE_LIMIT="30/hour")
    answers = server.get_many("/demo", 90)
    assert Counter(a.status for a in answers) == {200: 30, 429: 60}, server.output()
    assert json.loads(next(a for a in answers if a.status == 200).body) == {"status": "ok", "service": "demo"}
    more = server.until_every_worker(lambda: server.request("GET", "/demo"), answers)
    assert {a.status for a in more} <= {429}  # every worker refuses once the fleet admitted 30
    assert "store.degraded" not in server.output()


def test_a_breaker_opened_through_one_worker_rejects_on_both(start: Callable[..., Server]) -> None:
    server = start()
    seen = []
    for _ in range(20):
        seen.append(server.request("GET", "/flaky"))
        if seen[-1].status == 503:
            break
    assert seen[-1].status == 503, f"the breaker never opened: {[a.status for a in seen]}\n{server.output()}"
    assert {a.status for a in seen[:-1]} == {500}
    assert len(seen) - 1 <= 2 * 5  # at most each worker's own count before the shared state is seen
    after = [server.request("GET", "/flaky")]
    after += server.until_every_worker(lambda: server.request("GET", "/flaky"), after)
    assert {a.status for a in after} == {503}
    assert 0 < int(after[0].headers["retry-after"]) <= 30


def _login_form(server: Server) -> tuple[str, str]:
    """(the CSRF cookie, the form's token) of a fresh login page."""
    page = server.request("GET", "/login/")
    cookie = re.search(r"csrftoken=([^;]+)", page.headers["set-cookie"])
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
    assert cookie and token, page
    return cookie.group(1), token.group(1).decode()


def test_brute_force_through_the_login_view_ends_in_429_on_every_worker(start: Callable[..., Server],
                                                                       site_env: dict[str, str]) -> None:
    manage(site_env, "shell", "-c", "from django.contrib.auth.models import User; "
                                    "User.objects.create_user('erin', password='right')")
    server = start()

    def attempt(password: str) -> Answer:
        cookie, token = _login_form(server)
        form = urllib.parse.urlencode({"username": "erin", "password": password, "csrfmiddlewaretoken": token})
        return server.request("POST", "/login/", form.encode(), {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookie}"})

    tries = [attempt(f"wrong-{n}") for n in range(5)]
    assert [t.status for t in tries] == [200] * 5, server.output()
    refused = [attempt("right")]
    refused += server.until_every_worker(lambda: attempt("right"), refused)
    assert {a.status for a in refused} == {429}  # even the right password, on either worker
    assert json.loads(refused[0].body)["violated-policies"] == ["login"]


def test_one_users_stored_response_is_never_replayed_to_another(start: Callable[..., Server],
                                                               site_env: dict[str, str]) -> None:
    sessions = json.loads(manage(site_env, "shell", "-c", (
        "import json\n"
        "from django.contrib.auth.models import User\n"
        "from django.test import Client\n"
        "out = {}\n"
        "for name in ('alice', 'bob'):\n"
        "    client = Client()\n"
        "    client.force_login(User.objects.create_user(name, password='pw'))\n"
        "    out[name] = client.cookies['sessionid'].value\n"
        "print(json.dumps(out))")).splitlines()[-1])  # (after Baldur's own log lines)
    server = start()

    def order(user: str) -> Answer:
        return server.request("POST", "/orders", b"{}", {"Cookie": f"sessionid={sessions[user]}",
                                                         "Content-Type": "application/json",
                                                         "Idempotency-Key": '"same-key"'})

    first = order("alice")
    assert first.status == 201 and json.loads(first.body)["for"] == "alice", server.output()
    theirs = [order("bob")]
    theirs += server.until_every_worker(lambda: order("bob"), theirs)
    assert all(json.loads(a.body)["for"] == "bob" for a in theirs)
    assert [a.headers.get("idempotent-replayed") for a in theirs[1:]] == ["true"] * (len(theirs) - 1)
    mine = [order("alice")]
    mine += server.until_every_worker(lambda: order("alice"), mine)
    assert all(a.body == first.body and a.headers["idempotent-replayed"] == "true" for a in mine)


def test_the_memory_store_warns_per_worker_and_a_required_shared_store_refuses(
        start: Callable[..., Server], site_env: dict[str, str]) -> None:
    server = start(BALDUR_REDIS_URL="")
    server.until_every_worker(functools.partial(server.request, "GET", "/demo"), [])
    # Each worker has answered, so each has started; its warning may still be on its way to the log.
    end = time.monotonic() + DEADLINE
    while server.output().count("in-memory store under") < WORKERS and time.monotonic() < end:
        time.sleep(0.05)
    assert server.output().count("in-memory store under") == WORKERS, server.output()
    del server
    bare = {k: v for k, v in site_env.items() if k != "BALDUR_REDIS_URL"}
    done = subprocess.run([PYTHON, "-c", "import quickstart.wsgi"], cwd=QUICKSTART, capture_output=True,
                          env={**bare, "BALDUR_REQUIRE_SHARED_STORE": "1"}, timeout=60, check=False)
    assert done.returncode != 0
    assert b"BALDUR_REQUIRE_SHARED_STORE=1 refuses" in done.stderr
