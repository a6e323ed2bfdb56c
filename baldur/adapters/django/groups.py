"""The groups that map Django users to the admin roles: ``baldur_viewer``,
``baldur_operator``, ``baldur_admin``, created after ``migrate`` (idempotent; no
migration files). A superuser is an admin; a user, staff or not, in none of the
groups has no role."""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps

__all__ = ["GROUPS", "ROLES", "create_groups", "role_of"]

#: Group name → admin role, lowest first.
GROUPS = {"baldur_viewer": "viewer", "baldur_operator": "operator", "baldur_admin": "admin"}
ROLES = tuple(GROUPS.values())


def create_groups(sender: Any, using: str = "default", apps: Any = global_apps, **kwargs: Any) -> None:
    """``post_migrate``: make sure the three groups exist (once per ``migrate``, after auth's)."""
    if getattr(sender, "label", None) != "auth":
        return
    try:
        group = apps.get_model("auth", "Group")
    except LookupError:  # django.contrib.auth is not installed (or not migrated yet)
        return
    for name in GROUPS:
        group.objects.using(using).get_or_create(name=name)


def role_of(user: Any) -> str | None:
    """The admin role of a Django user: ``admin`` for a superuser, else the highest of its
    Baldur groups, else ``None`` (also for an anonymous or inactive user)."""
    if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return None
    if getattr(user, "is_superuser", False):
        return "admin"
    names = set(user.groups.filter(name__in=GROUPS).values_list("name", flat=True))
    held = [GROUPS[name] for name in GROUPS if name in names]
    return held[-1] if held else None
