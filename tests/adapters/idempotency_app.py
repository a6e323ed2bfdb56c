"""The Flask app that tests/adapters/test_flask_idempotency_workers.py runs under real gunicorn
workers, on the session's private Redis (``BALDUR_REDIS_URL``, ``BALDUR_KEY_PREFIX``).

The views count their own runs in Redis (``INCR <prefix>:test:<name>``, on a connection of
their own, never Baldur's), so the tests see fleet-wide counts; every response names the
worker that answered it (``X-Worker-Pid``).
"""

from __future__ import annotations

import os
import time

import redis
from flask import Flask, Response, jsonify, request

from baldur.adapters.flask import init_flask

PREFIX = os.environ.get("BALDUR_KEY_PREFIX", "baldur")
counter = redis.Redis.from_url(os.environ["BALDUR_REDIS_URL"], socket_timeout=2.0, socket_connect_timeout=2.0)

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False
init_flask(app)


@app.after_request
def name_the_worker(response: Response) -> Response:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/healthz")
def healthz() -> Response:
    return jsonify({"pid": os.getpid()})


@app.post("/charges")
def charges() -> tuple[Response, int, dict[str, str]]:
    """Counts its run, then works while ``<prefix>:test:charges-hold`` exists (at most 25 s, within
    gunicorn's --timeout): the test lets it finish once every duplicate has been answered."""
    run = counter.incr(f"{PREFIX}:test:charges")
    end = time.monotonic() + 25
    while counter.exists(f"{PREFIX}:test:charges-hold") and time.monotonic() < end:
        time.sleep(0.01)
    return jsonify({"charge": run, "by": os.getpid(), "order": request.get_json()}), 201, {"X-Charge-Id": f"ch_{run}"}


@app.post("/hold")
def hold() -> tuple[Response, int]:
    """Counts its run, says which worker runs it, and holds while ``<prefix>:test:hold`` exists
    (at most 60 s): the test kills this worker meanwhile."""
    run = counter.incr(f"{PREFIX}:test:hold-runs")
    counter.set(f"{PREFIX}:test:hold-pid", os.getpid())
    end = time.monotonic() + 60
    while counter.exists(f"{PREFIX}:test:hold") and time.monotonic() < end:
        time.sleep(0.01)
    return jsonify({"run": run}), 201


@app.post("/quick")
def quick() -> tuple[Response, int]:
    """Touches no Redis of its own: answers while Redis is frozen."""
    return jsonify({"ok": True, "by": os.getpid()}), 201
