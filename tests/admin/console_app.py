"""The app the console's browser test serves under gunicorn: a few protected routes (two of them
always failing) and the admin API and Web Console mounted at ``/_baldur``."""

from __future__ import annotations

from flask import Flask

import baldur
from baldur.adapters.flask import init_flask

#: A breaker name holding markup: the console must show it as text, never build elements from it.
MARKUP_NAME = '<img src="x" onerror="document.title=\'owned\'"><b>bold</b>'

#: Three failures in a row open it, for long enough that only an operator closes it during the test.
FAILING = baldur.Breaker(failure_rate=None, consecutive_failures=3, open_for=600)

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False
init_flask(app, admin="/_baldur")


@app.get("/payments")
@baldur.protected("payments", breaker=FAILING)
def payments() -> tuple[dict[str, str], int]:
    return {"error": "the card processor is down"}, 502


@app.get("/recommendations")
@baldur.protected("recommendations", breaker=FAILING)
def recommendations() -> tuple[dict[str, str], int]:
    return {"error": "the model server is down"}, 503


@app.get("/search")
@baldur.protected("search", rate_limit="100/minute", max_concurrency=8)
def search() -> dict[str, list[str]]:
    return {"results": []}


@app.get("/markup")
@baldur.protected(MARKUP_NAME)
def markup() -> dict[str, str]:
    return {"status": "ok"}
