"""Django glue: ``INSTALLED_APPS += ["baldur.adapters.django"]`` and
``MIDDLEWARE = ["baldur.adapters.django.BaldurMiddleware", ...]`` (first).

Settings come from ``settings.BALDUR = {...}`` over the ``BALDUR_*`` environment
(same names, lower case), checked by Django's system checks (``baldur.E001``...);
``baldur.init()`` runs once, in ``AppConfig.ready()``.
"""

from __future__ import annotations

from baldur.adapters.django.middleware import BaldurMiddleware

__all__ = ["BaldurMiddleware"]
