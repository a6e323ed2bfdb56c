"""The Flask app that tests/admin/test_metrics_redis.py runs under real gunicorn workers.

It reads the Redis store's settings from ``BALDUR_*``; each response names the worker that
answered it (``X-Worker-Pid``), so the test knows the whole fleet took part.
"""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify

import baldur
from baldur.adapters.flask import init_flask

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False  # an error in a view is a 500 response, as in production
init_flask(app)


@app.after_request
def name_the_worker(response: Response) -> Response:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/healthz")
def healthz() -> Response:
    return jsonify({"pid": os.getpid()})


@app.get("/ok")
@baldur.protected("metrics-ok")
def ok() -> Response:
    return jsonify({"status": "ok"})


@app.get("/boom")
@baldur.protected("metrics-boom")
def boom() -> Response:
    raise RuntimeError("the view failed")


@app.get("/limited")
@baldur.protected("metrics-limited", rate_limit="3/hour")
def limited() -> Response:
    return jsonify({"status": "ok"})
