"""Settings of the Baldur quickstart: Django's minimum, plus Baldur's app and middleware."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# A quickstart's key: set DJANGO_SECRET_KEY to anything secret outside your own machine.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "quickstart-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "baldur.adapters.django",  # calls baldur.init() once; creates the baldur_* groups on migrate
]
MIDDLEWARE = [
    "baldur.adapters.django.BaldurMiddleware",  # first: sheds and admits before the others work
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "quickstart.urls"
WSGI_APPLICATION = "quickstart.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("QUICKSTART_DB", BASE_DIR / "db.sqlite3"),
    }
}
USE_TZ = True

# Baldur's settings: the BALDUR_* environment variables, in lower case; this dict wins over them.
BALDUR: dict[str, object] = {}  # e.g. {"rate_limit": "100/minute"}
