"""The app config: ``baldur.init()`` once per process, the system checks, the groups."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BaldurConfig(AppConfig):
    name = "baldur.adapters.django"
    label = "baldur"
    verbose_name = "Baldur"

    def ready(self) -> None:
        from baldur.adapters.django import _settings, checks, groups

        checks.register()
        _settings.start()
        # Baldur's app has no models, so Django sends it no post_migrate of its own: listen to auth's.
        post_migrate.connect(groups.create_groups, dispatch_uid="baldur.adapters.django.groups")
