"""The Flask app that tests/adapters/test_flask_redis_workers.py runs under real gunicorn workers.

It reads the Redis store's settings from ``BALDUR_*`` like any app (nothing here names
Redis for Baldur); ``TEST_APP_RATE_LIMIT`` is passed to ``init_flask(app, rate_limit=...)``.
The views count their own invocations in Redis (``INCR <prefix>:test:<name>``), so the
tests see fleet-wide counts, and every response names the worker that answered it
(``X-Worker-Pid``).
"""

from __future__ import annotations

import asyncio
import os
import time

import redis
from flask import Flask, Response, jsonify, request

import baldur
from baldur.adapters.flask import init_flask

PREFIX = os.environ.get("BALDUR_KEY_PREFIX", "baldur")
#: The views' own connection to Redis (never Baldur's), to count calls across the fleet.
counter = redis.Redis.from_url(os.environ["BALDUR_REDIS_URL"], socket_timeout=2.0, socket_connect_timeout=2.0)

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False  # an error in a view is a 500 response, as in production
init_flask(app, rate_limit=os.environ.get("TEST_APP_RATE_LIMIT") or None)


def count(name: str) -> None:
    counter.incr(f"{PREFIX}:test:{name}")


@app.after_request
def name_the_worker(response: Response) -> Response:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/healthz")
def healthz() -> Response:
    return jsonify({"pid": os.getpid()})


@app.get("/demo")
@baldur.protected("demo")
def demo() -> Response:
    return jsonify({"status": "ok", "service": "demo"})


@app.post("/orders")
def orders() -> tuple[Response, int]:
    """Touches no Redis of its own: with an ``Idempotency-Key`` only Baldur's claim needs Redis."""
    return jsonify({"order": request.get_json(silent=True)}), 201


@app.get("/limited")
@baldur.protected("limited", rate_limit="100/hour")
def limited() -> Response:
    return jsonify({"status": "ok"})


@app.get("/tight")
@baldur.protected("tight", rate_limit="5/hour")
def tight() -> Response:
    return jsonify({"status": "ok"})


@app.get("/flaky")
@baldur.protected("flaky", breaker=baldur.Breaker(consecutive_failures=5, failure_rate=None, open_for=30))
def flaky() -> Response:
    count("flaky")
    raise RuntimeError("the flaky dependency is down")


@app.get("/trial")
@baldur.protected("trial", breaker=baldur.Breaker(consecutive_failures=2, failure_rate=None, open_for=1,
                                                  half_open_calls=3))
def trial() -> Response:
    """Fails with ``?fail=1``; else counts itself and holds its worker until the test
    sets ``<prefix>:test:release`` (at least 0.3 s; at most 25 s, within gunicorn's --timeout)."""
    if request.args.get("fail"):
        raise RuntimeError("failing on purpose")
    count("trial")
    started = time.monotonic()
    while time.monotonic() - started < 25.0:
        if time.monotonic() - started >= 0.3 and counter.exists(f"{PREFIX}:test:release"):
            break
        time.sleep(0.01)
    return jsonify({"status": "ok"})


@baldur.protected("async-inner", rate_limit="10/hour")
async def async_inner() -> str:
    """A protected coroutine called from an async view: admitted on asgiref's per-request loop."""
    await asyncio.sleep(0)
    return "inner"


@app.get("/async")
@baldur.protected("async-view", rate_limit="1000/hour")
async def async_view() -> Response:
    inner = await async_inner()
    count("async")
    return jsonify({"status": "ok", "inner": inner})


@baldur.protected("async-roomy", rate_limit="100000/hour")
async def async_roomy() -> str:
    await asyncio.sleep(0)
    return "roomy"


@app.get("/async-roomy")
@baldur.protected("async-roomy-view", rate_limit="100000/hour")
async def async_roomy_view() -> Response:
    return jsonify({"status": "ok", "inner": await async_roomy()})
