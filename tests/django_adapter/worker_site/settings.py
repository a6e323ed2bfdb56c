"""The quickstart's settings, plus what the worker tests need: a login page, a private API
that takes Idempotency-Keys, and each answer stamped with the worker's pid."""

from quickstart.settings import *  # noqa: F403

MIDDLEWARE = ["worker_site.views.stamp_pid", *MIDDLEWARE]  # noqa: F405
ROOT_URLCONF = "worker_site.urls"
DEBUG = False
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": False,
              "OPTIONS": {"loaders": [("django.template.loaders.locmem.Loader",
                                       {"registration/login.html": "{% csrf_token %}{{ form }}"})]}}]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
