"""The Flask app that tests/adapters/test_flask_edge_workers.py runs under gunicorn workers
sharing Redis (issue 10): a login behind an auth decorator placed outside ``protected``, a
transfer behind an app ``before_request`` hook, and a charge that stores the caller's card.
Every response names the worker that answered it (``X-Worker-Pid``); the views count their
own runs in Redis (``INCR <prefix>:test:<name>``) so that the tests see fleet-wide counts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, Response, abort, g, jsonify, request

import baldur
from baldur.adapters.flask import init_flask

PREFIX = os.environ.get("BALDUR_KEY_PREFIX", "baldur")
counter = redis.Redis.from_url(os.environ["BALDUR_REDIS_URL"], socket_timeout=2.0, socket_connect_timeout=2.0)

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False
init_flask(app, rate_limit="3/hour", exempt=["healthz"])
USERS = {"Bearer alice": "alice", "Bearer bob": "bob"}


@app.before_request
def authenticate() -> Any:
    g.user = USERS.get(request.headers.get("Authorization", ""))
    if request.path == "/transfer" and not request.headers.get("X-Csrf"):
        return jsonify({"error": "csrf"}), 403
    return None


@app.after_request
def name_the_worker(response: Response) -> Response:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.user is None:
            abort(401)
        return view(*args, **kwargs)

    return wrapper


@app.get("/healthz")
def healthz() -> Response:
    return jsonify({"pid": os.getpid()})


@app.post("/login")
@login_required
@baldur.protected("login")
def login() -> Response:
    return jsonify({"user": g.user})


@app.post("/transfer")
@baldur.protected("transfer")
def transfer() -> Response:
    return jsonify({"moved": True})


@app.post("/charges")
@baldur.protected("charges")
def charge() -> Response:
    counter.incr(f"{PREFIX}:test:charges")
    response = jsonify({"user": g.user, "card": "4242 4242 4242 4242" if g.user == "alice" else None})
    response.status_code = 201
    return response
