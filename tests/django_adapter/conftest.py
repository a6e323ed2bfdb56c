"""pytest-django for the Django adapter's tests: Django configured here, on SQLite in memory.

Configured in ``pytest_configure`` (not by a settings module in pytest's options), so that the
rest of the suite never loads Django. The directory is not named ``django``: pytest puts it on
``sys.path``, where that name would hide Django itself.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="baldur-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="dj_urls",
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
                        "baldur.adapters.django"],
        MIDDLEWARE=["baldur.adapters.django.BaldurMiddleware",
                    "django.contrib.sessions.middleware.SessionMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast: tests log in a lot
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": False,
                    "OPTIONS": {"loaders": [("django.template.loaders.locmem.Loader",
                                             {"registration/login.html": "{{ form }}"})]}}],
        USE_TZ=True,
        BALDUR={},
    )
    # Now, not when pytest-django gets to it: in a whole-suite run this conftest is loaded while
    # collecting, and the test modules beside it import Django's models.
    import django

    django.setup()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Django's async stack runs on asyncio


@pytest.fixture
def baldur_settings(settings: Any) -> Any:
    """``baldur_settings(**values)`` sets ``settings.BALDUR`` for the clients made after it."""

    def apply(**values: object) -> None:
        settings.BALDUR = values

    return apply
