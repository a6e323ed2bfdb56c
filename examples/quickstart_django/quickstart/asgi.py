"""ASGI entry point: ``uvicorn quickstart.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quickstart.settings")
application = get_asgi_application()
