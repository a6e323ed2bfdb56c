"""Settings from ``settings.BALDUR`` checked by Django's system checks, the middleware that
refuses to start on bad settings, and the groups created after ``migrate``."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Group, User
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import Client

from baldur.adapters.django import _settings
from baldur.adapters.django.groups import GROUPS, role_of
from baldur.errors import ConfigError


def baldur_checks() -> dict[str, str]:
    return {message.id: message.msg for message in run_checks(tags=["baldur"])}


def test_good_settings_pass_the_checks(settings: Any) -> None:
    settings.BALDUR = {"rate_limit": "100/minute", "trust_proxy": 1, "exempt": ["healthz-sync"]}
    assert baldur_checks() == {}


@pytest.mark.parametrize(("value", "check", "says"), [
    (["rate_limit"], "baldur.E001", "expected a dict"),
    ({"rate_limt": "5/minute"}, "baldur.E002", "did you mean 'rate_limit'?"),
    ({"rate_limit": "lots"}, "baldur.E003", "settings.BALDUR['rate_limit']='lots' is not valid"),
    ({"trust_proxy": -1}, "baldur.E003", "BALDUR = {'trust_proxy': '1'}"),
    ({"key_func": "no.such.module.key"}, "baldur.E003", "settings.BALDUR['key_func']"),
    ({"exempt": "healthz"}, "baldur.E003", "a list of URL names"),
])
def test_bad_settings_are_named_by_a_check(settings: Any, value: object, check: str, says: str) -> None:
    settings.BALDUR = value
    found = baldur_checks()
    assert check in found, found
    assert says in found[check]


def test_the_middleware_refuses_bad_settings_with_a_config_error(settings: Any) -> None:
    settings.BALDUR = {"rate_limit": "lots"}
    with pytest.raises(ConfigError, match=r"settings.BALDUR\['rate_limit'\]='lots'"):
        Client().get("/plain/sync")


def test_a_startup_problem_stops_every_server_and_is_listed_by_check(monkeypatch: pytest.MonkeyPatch,
                                                                     settings: Any) -> None:
    # BALDUR_REQUIRE_SHARED_STORE=1 on the memory store: baldur.init() refuses in AppConfig.ready().
    from baldur import _runtime

    saved = _runtime._current
    settings.BALDUR = {"require_shared_store": 1}
    try:
        with _runtime._lock:
            _runtime._current = None
        _settings.start()
        assert "BALDUR_REQUIRE_SHARED_STORE=1 refuses" in baldur_checks()["baldur.E004"]
        with pytest.raises(ConfigError, match="BALDUR_REDIS_URL"):
            Client().get("/plain/sync")
    finally:
        settings.BALDUR = {}
        with _runtime._lock:
            _runtime._current = saved
        _settings.start()
    assert "baldur.E004" not in baldur_checks()


def test_the_middleware_missing_or_late_is_a_warning(settings: Any) -> None:
    settings.MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
    assert "baldur.W001" in baldur_checks()
    settings.MIDDLEWARE = ["django.middleware.csrf.CsrfViewMiddleware", "baldur.adapters.django.BaldurMiddleware"]
    assert "CsrfViewMiddleware" in baldur_checks()["baldur.W002"]


# -- groups ------------------------------------------------------------------------

@pytest.mark.django_db
def test_migrate_creates_the_three_groups_once() -> None:
    assert set(Group.objects.values_list("name", flat=True)) >= set(GROUPS)
    call_command("migrate", verbosity=0)  # again: nothing new
    assert Group.objects.filter(name__in=GROUPS).count() == 3


@pytest.mark.django_db
def test_roles_follow_the_groups_and_superusers_are_admins() -> None:
    def user(name: str, *groups: str, **flags: bool) -> User:
        made = User.objects.create_user(name, password="pw", **flags)
        made.groups.set(Group.objects.filter(name__in=groups))
        return made

    assert role_of(user("viewer", "baldur_viewer")) == "viewer"
    assert role_of(user("operator", "baldur_viewer", "baldur_operator")) == "operator"
    assert role_of(user("admin", "baldur_admin")) == "admin"
    assert role_of(user("root", is_superuser=True)) == "admin"
    assert role_of(user("staff", is_staff=True)) is None  # staff without a group get nothing
    assert role_of(user("gone", "baldur_admin", is_active=False)) is None
    assert role_of(AnonymousUser()) is None
