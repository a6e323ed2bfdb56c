"""The Flask app that tests/admin/test_cli.py drives through the ``baldur`` CLI: the admin API
mounted at ``/_baldur`` (keys from ``BALDUR_ADMIN_KEYS``) beside one protected view."""

from __future__ import annotations

from flask import Flask

import baldur
from baldur.adapters.flask import init_flask

app = Flask(__name__)
init_flask(app, admin="/_baldur")


@app.get("/pay")
@baldur.protected("payments", rate_limit="1000/minute")
def pay() -> str:
    return "paid"
