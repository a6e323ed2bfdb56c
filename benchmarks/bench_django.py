"""The Django apps that the benchmarks measure, one per variant, chosen by ``BENCH_DJANGO``.

Every variant serves ``GET /demo`` with the quickstart's answer
(``{"status": "ok", "service": "demo"}``) from a Django project with no other
app or middleware; only what wraps the view differs. ``application`` is the
WSGI app (in-process timings, ``gunicorn bench_django:application``).

* ``bare``: nothing;
* ``baldur``: the quickstart's wiring (``baldur.adapters.django`` installed,
  ``BaldurMiddleware``, ``@baldur.protected("demo")``); the store and the
  per-client limit come from ``BALDUR_REDIS_URL`` and ``BALDUR_RATE_LIMIT``;
* ``ratelimit``: django-ratelimit, ``@ratelimit(key="ip", rate=BENCH_LIMIT, block=True)``
  on the local-memory cache (its per-process default).
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings

VARIANT = os.environ.get("BENCH_DJANGO", "bare")
#: django-ratelimit's rate syntax: "1000000/h".
LIMIT = os.environ.get("BENCH_LIMIT", "1000000/h")

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmarks-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["baldur.adapters.django"] if VARIANT == "baldur" else [],
    MIDDLEWARE=["baldur.adapters.django.BaldurMiddleware"] if VARIANT == "baldur" else [],
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    DATABASES={},
    USE_TZ=True,
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def demo(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "service": "demo"})


def _view() -> Any:
    if VARIANT == "bare":
        return demo
    if VARIANT == "baldur":
        import baldur

        return baldur.protected("demo")(demo)
    if VARIANT == "ratelimit":
        from django_ratelimit.decorators import ratelimit

        return ratelimit(key="ip", rate=LIMIT, block=True)(demo)
    raise ValueError(f"BENCH_DJANGO={VARIANT!r}: one of bare, baldur, ratelimit")


urlpatterns = [path("demo", _view())]
application = get_wsgi_application()
