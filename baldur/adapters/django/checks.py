"""System checks: ``settings.BALDUR`` and the middleware's place (``manage.py check``).

- ``baldur.E001``: ``settings.BALDUR`` is not a dict.
- ``baldur.E002``: an unknown name in it.
- ``baldur.E003``: a value that is not valid.
- ``baldur.E004``: ``baldur.init()`` refused to start (``BALDUR_REQUIRE_SHARED_STORE``).
- ``baldur.W001``: the app is installed but ``BaldurMiddleware`` is not in ``MIDDLEWARE``.
- ``baldur.W002``: a middleware whose ``process_view`` may answer comes before it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from baldur.adapters.django import _settings

_MIDDLEWARE = "baldur.adapters.django.BaldurMiddleware"
#: Middleware whose process_view answers requests (CSRF: 403, LoginRequired: a redirect): placed
#: before Baldur's, they would answer before the per-client limit counts the request.
_ANSWERING_FIRST = ("django.middleware.csrf.CsrfViewMiddleware",
                    "django.contrib.auth.middleware.LoginRequiredMiddleware")


def settings_problems(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    problems = _settings.startup_problems() or _settings.read()[1]
    return [checks.Error(str(problem.error), id=problem.id, obj="settings.BALDUR") for problem in problems]


def middleware_place(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    if _MIDDLEWARE not in middleware:
        return [checks.Warning(f"{_MIDDLEWARE} is not in MIDDLEWARE: Django requests get no rate limit, "
                               "shedding or idempotency, and protected views answer refusals with a 500",
                               hint=f"MIDDLEWARE = [{_MIDDLEWARE!r}, ...] (first)", id="baldur.W001")]
    before = middleware[:middleware.index(_MIDDLEWARE)]
    early = [name for name in before if name in _ANSWERING_FIRST]
    if early:
        return [checks.Warning(f"{', '.join(early)} comes before {_MIDDLEWARE} in MIDDLEWARE: its answers "
                               "(403, a login redirect) would not count against the per-client limit",
                               hint=f"put {_MIDDLEWARE} first in MIDDLEWARE", id="baldur.W002")]
    return []


def register() -> None:
    checks.register(settings_problems, "baldur")
    checks.register(middleware_place, "baldur")
