"""The Flask apps that the benchmarks measure, one per variant, chosen by ``BENCH_APP``.

Every variant serves ``GET /demo`` with the quickstart's answer
(``{"status": "ok", "service": "demo"}``); only what wraps the view differs.
The same module serves the in-process timings (``bench_inprocess.py`` imports
it) and the servers (``gunicorn bench_apps:app``, ``uvicorn bench_apps:asgi``,
where ``asgi`` is the Flask app behind a2wsgi's ``WSGIMiddleware``).

* ``bare``: nothing;
* ``quickstart``: ``examples/quickstart_flask/app.py`` itself (``init_flask(app)`` +
  ``@baldur.protected("demo")``); the store and the per-client limit come from
  ``BALDUR_REDIS_URL`` and ``BALDUR_RATE_LIMIT``;
* ``view_limit``: ``init_flask(app)`` + ``@baldur.protected("demo", rate_limit=BENCH_LIMIT)``;
* ``limiter``: Flask-Limiter, one default limit ``BENCH_LIMIT`` per client, storage
  ``BENCH_LIMITER_STORAGE``;
* ``pybreaker``: the view wrapped by a ``pybreaker.CircuitBreaker()``;
* ``hooks``: Baldur's hook points with nothing in them: a WSGI layer (a class, as Baldur's)
  that wraps ``start_response`` and sets a context variable around the app, Flask's
  ``preprocess_request`` wrapped, the view wrapped, each passing straight through. What any
  layer placed where Baldur's is pays before it does any work;
* ``floor``: one plain ``EVALSHA`` per request with redis-py's sync client (``BENCH_REDIS_URL``);
* ``floor_async``: the same ``EVALSHA`` through ``redis.asyncio`` at its leanest: the request
  thread drives an event loop of its own (``run_until_complete``) and writes the command,
  packed once, on a connection of its own; no pool, no timeout, no store. What any async
  design pays for one round trip from a sync view, so Baldur on Redis is also compared with it;
* ``propagation``: ``quickstart`` plus a thread that watches this worker's mirror of the breaker
  ``bench-propagation`` and reports each change (pid, state, wall-clock time) to the Redis list
  ``bench:propagation`` (``bench_propagation.py`` reads it);
* ``slow``: a view that sleeps ``BENCH_SLEEP_MS`` (50); with ``BENCH_BALDUR=1`` behind
  ``init_flask`` + ``protected``.

``slow`` echoes the request's ``X-Request-Start`` as ``X-Bench-Sent`` (outermost,
so Baldur's own 503s carry it too): the load generator's script reads the send
time back and measures each answer's latency by its status.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart_flask" / "app.py"
VARIANT = os.environ.get("BENCH_APP", "bare")
LIMIT = os.environ.get("BENCH_LIMIT", "1000000/hour")


def _answer() -> Response:
    return jsonify({"status": "ok", "service": "demo"})


def _bare() -> Flask:
    app = Flask("bench_bare")

    @app.get("/demo")
    def demo() -> Response:
        return _answer()

    return app


def _quickstart() -> Flask:
    spec = importlib.util.spec_from_file_location("quickstart_app", QUICKSTART)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {QUICKSTART}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    app: Flask = module.app
    return app


def _view_limit() -> Flask:
    import baldur
    from baldur.adapters.flask import init_flask

    app = Flask("bench_view_limit")
    init_flask(app)

    @app.get("/demo")
    @baldur.protected("demo", rate_limit=LIMIT)
    def demo() -> Response:
        return _answer()

    return app


def _limiter() -> Flask:
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    app = Flask("bench_limiter")
    Limiter(get_remote_address, app=app, default_limits=[LIMIT],
            storage_uri=os.environ.get("BENCH_LIMITER_STORAGE", "memory://"))

    @app.get("/demo")
    def demo() -> Response:
        return _answer()

    return app


def _pybreaker() -> Flask:
    import pybreaker

    app = Flask("bench_pybreaker")
    breaker = pybreaker.CircuitBreaker()

    @app.get("/demo")
    @breaker
    def demo() -> Response:
        return _answer()

    return app


class _PassingLayer:
    """A WSGI layer shaped as Baldur's, that does nothing in it."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app
        self.current: ContextVar[dict[str, Any] | None] = ContextVar("bench_request", default=None)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, headers, exc_info)

        token = self.current.set(environ)
        try:
            return self.wsgi_app(environ, capture)
        finally:
            self.current.reset(token)


def _hooks() -> Flask:
    app = Flask("bench_hooks")
    app.wsgi_app = _PassingLayer(app.wsgi_app)  # type: ignore[method-assign]
    preprocess = app.preprocess_request

    @functools.wraps(preprocess)
    def preprocess_request() -> Any:
        return preprocess()

    app.preprocess_request = preprocess_request  # type: ignore[method-assign]

    def passing(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        return wrapper

    @app.get("/demo")
    @passing
    def demo() -> Response:
        return _answer()

    return app


#: The floor's script: one small write, as a rate-limit decision would make.
FLOOR_SCRIPT = "return redis.call('INCR', KEYS[1])"


def _floor() -> Flask:
    import redis

    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"], socket_timeout=1.0, socket_connect_timeout=1.0)
    sha = client.script_load(FLOOR_SCRIPT)
    app = Flask("bench_floor")

    @app.get("/demo")
    def demo() -> Response:
        client.evalsha(sha, 1, "bench:floor")
        return _answer()

    return app


def _floor_async() -> Flask:
    import asyncio
    import threading

    import redis
    from redis import asyncio as aioredis

    url = os.environ["BENCH_REDIS_URL"]
    sha = redis.Redis.from_url(url, socket_timeout=1.0).script_load(FLOOR_SCRIPT)
    pool = aioredis.ConnectionPool.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    packed = pool.make_connection().pack_command("EVALSHA", sha, 1, "bench:floor")
    mine = threading.local()

    async def connect() -> Any:
        connection = pool.make_connection()
        await connection.connect()
        return connection

    async def evalsha(connection: Any) -> Any:
        await connection.send_packed_command(packed, check_health=False)
        return await connection.read_response()

    app = Flask("bench_floor_async")

    @app.get("/demo")
    def demo() -> Response:
        if not hasattr(mine, "loop"):
            mine.loop = asyncio.new_event_loop()
            mine.connection = mine.loop.run_until_complete(connect())
        mine.loop.run_until_complete(evalsha(mine.connection))
        return _answer()

    return app


#: The breaker whose openings ``bench_propagation.py`` times, and the list the workers report to.
PROPAGATION_BREAKER = "bench-propagation"
PROPAGATION_REPORTS = "bench:propagation"
#: How often a worker's watcher looks at its mirror (the figure's resolution).
PROPAGATION_POLL_SECONDS = 0.0005


def _propagation() -> Flask:
    import threading

    import redis

    from baldur import _runtime

    app = _quickstart()
    reports = redis.Redis.from_url(os.environ["BALDUR_REDIS_URL"], socket_timeout=5.0)

    def watch() -> None:
        store: Any = _runtime.current().async_
        last: str | None = ""
        while True:
            state = store.mirrored(PROPAGATION_BREAKER)
            if state != last:
                reports.rpush(PROPAGATION_REPORTS, f"{os.getpid()} {state} {time.time():.6f}")
                last = state
            time.sleep(PROPAGATION_POLL_SECONDS)

    threading.Thread(target=watch, name="bench-propagation-watch", daemon=True).start()
    return app


class EchoSent:
    """WSGI middleware: copy ``X-Request-Start`` into the answer as ``X-Bench-Sent``."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sent = environ.get("HTTP_X_REQUEST_START")
        if sent is None:
            return self.app(environ, start_response)

        def echo(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Bench-Sent", sent))
            return start_response(status, headers, exc_info)

        return self.app(environ, echo)


def _slow() -> Flask:
    pause = float(os.environ.get("BENCH_SLEEP_MS", "50")) / 1000.0
    app = Flask("bench_slow")

    def slow() -> Response:
        time.sleep(pause)
        return _answer()

    if os.environ.get("BENCH_BALDUR") == "1":
        import baldur
        from baldur.adapters.flask import init_flask

        init_flask(app)
        app.get("/demo")(baldur.protected("slow")(slow))
    else:
        app.get("/demo")(slow)
    app.wsgi_app = EchoSent(app.wsgi_app)  # type: ignore[method-assign]
    return app


BUILDERS: dict[str, Callable[[], Flask]] = {
    "bare": _bare,
    "quickstart": _quickstart,
    "view_limit": _view_limit,
    "limiter": _limiter,
    "pybreaker": _pybreaker,
    "hooks": _hooks,
    "floor": _floor,
    "floor_async": _floor_async,
    "propagation": _propagation,
    "slow": _slow,
}

if VARIANT not in BUILDERS:
    raise SystemExit(f"BENCH_APP={VARIANT!r}: expected one of {', '.join(BUILDERS)}")
app = BUILDERS[VARIANT]()

_asgi: Any = None


def __getattr__(name: str) -> Any:
    """``asgi``: the app behind a2wsgi's WSGIMiddleware, made on first use (uvicorn imports it by name)."""
    global _asgi
    if name != "asgi":
        raise AttributeError(name)
    if _asgi is None:
        from a2wsgi import WSGIMiddleware

        _asgi = WSGIMiddleware(app)  # type: ignore[arg-type]
    return _asgi
