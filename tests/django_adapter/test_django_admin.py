"""The admin API and Web Console mounted in a Django site (``baldur.adapters.django.urls``),
authorised by the site's users and their groups: one auth model, the site's."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from _dj_support import MODES, PROBLEM, Site
from django.contrib.auth.models import Group, User
from django.test import Client

from baldur.admin._app import CSP

pytestmark = pytest.mark.django_db

BREAKERS = "/baldur/api/v1/breakers"
OPEN = "/baldur/api/v1/breakers/guarded-sync/open"
RESET = "/baldur/api/v1/breakers/guarded-sync/reset"
AUDIT = "/baldur/api/v1/audit"
#: Who may do what: (GET breakers, POST open, GET audit) per kind of user.
EXPECTED = {
    "anonymous": (401, 401, 401),
    "staff without a group": (403, 403, 403),
    "baldur_viewer": (200, 403, 403),
    "baldur_operator": (200, 200, 403),
    "baldur_admin": (200, 200, 200),
    "superuser": (200, 200, 200),
}


def make_user(kind: str) -> User | None:
    if kind == "anonymous":
        return None
    name = kind.replace(" ", "-")
    if kind == "superuser":
        return User.objects.create_superuser(name, password="pw")
    user = User.objects.create_user(name, password="pw", is_staff=True)
    if kind.startswith("baldur_"):
        user.groups.add(Group.objects.get(name=kind))  # made by post_migrate, like on a real site
    return user


def site_as(mode: str, kind: str) -> Site:
    site = Site(mode)
    user = make_user(kind)
    if user is not None:
        site.client.force_login(user)
    return site


def reason(text: str) -> dict[str, Any]:
    return {"data": json.dumps({"reason": text}), "content_type": "application/json"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_every_kind_of_user_gets_what_its_group_allows(mode: str, kind: str) -> None:
    site = site_as(mode, kind)
    answers = (site.get(BREAKERS), site.post(OPEN, **reason("deploy of the provider")), site.get(AUDIT))
    assert tuple(answer.status_code for answer in answers) == EXPECTED[kind]
    for answer in answers:
        if answer.status_code != 200:
            assert answer["Content-Type"] == PROBLEM
            assert json.loads(answer.content)["status"] == answer.status_code
    if EXPECTED[kind][1] == 200:
        assert site.post(RESET, **reason("done")).status_code == 200


def test_an_anonymous_answer_says_how_to_get_in_and_a_user_without_a_group_is_named() -> None:
    anonymous = Client().get(BREAKERS)
    assert anonymous.status_code == 401
    assert "log in to this site" in json.loads(anonymous.content)["detail"]
    assert anonymous["WWW-Authenticate"] == 'Session realm="baldur"'
    staff = site_as("wsgi", "staff without a group").get(BREAKERS)
    assert "django:staff-without-a-group is in none of the groups" in json.loads(staff.content)["detail"]


def test_a_change_is_audited_under_the_django_user_and_steers_the_protected_view() -> None:
    operator, admin = site_as("wsgi", "baldur_operator"), site_as("wsgi", "superuser")
    assert operator.get("/guarded/sync").status_code == 200
    forced = operator.post(OPEN, data=json.dumps({"reason": "provider maintenance", "for_seconds": 600}),
                           content_type="application/json")
    assert forced.status_code == 200
    assert json.loads(forced.content)["forced"]["by"] == "django:baldur_operator"
    refused = operator.get("/guarded/sync")
    assert refused.status_code == 503
    assert refused["Content-Type"] == PROBLEM
    entries = json.loads(admin.get(AUDIT).content)["entries"]
    assert entries[0]["key_id"] == "django:baldur_operator"
    assert (entries[0]["action"], entries[0]["target"], entries[0]["reason"]) == (
        "breaker.open", "guarded-sync", "provider maintenance")
    assert operator.post(RESET, **reason("maintenance over")).status_code == 200
    assert operator.get("/guarded/sync").status_code == 200


@pytest.fixture
def csrf_checked(settings: Any) -> None:
    """Django's CSRF middleware, as a site has it by default (the other tests' site has none)."""
    csrf = "django.middleware.csrf.CsrfViewMiddleware"
    auth = settings.MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware")
    settings.MIDDLEWARE = [*settings.MIDDLEWARE[:auth], csrf, *settings.MIDDLEWARE[auth:]]


@pytest.mark.usefixtures("csrf_checked")
def test_the_console_page_uses_the_sites_session_and_carries_its_csrf_token() -> None:
    page = Client().get("/baldur/")  # the page holds no data: anyone may load it
    assert page.status_code == 200
    assert page["Content-Security-Policy"] == CSP
    html = page.content.decode()
    assert '<meta name="baldur-auth" content="session">' in html
    token = re.search(r'<meta name="baldur-csrf" content="([^"]+)">', html)
    assert token is not None and page.cookies["csrftoken"].value
    assert Client().get("/baldur/console/console.js").status_code == 200


@pytest.mark.usefixtures("csrf_checked")
def test_a_change_without_the_sessions_csrf_token_is_refused() -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("baldur_operator"))
    body = json.dumps({"reason": "forged by another site's page"})
    assert client.post(OPEN, data=body, content_type="application/json").status_code == 403
    assert json.loads(Client().get(BREAKERS).content)["status"] == 401  # nothing was forced by it
    html = client.get("/baldur/").content.decode()
    token = re.search(r'<meta name="baldur-csrf" content="([^"]+)">', html)
    assert token is not None
    accepted = client.post(OPEN, data=body, content_type="application/json", headers={"X-CSRFToken": token[1]})
    assert accepted.status_code == 200
    assert client.post(RESET, data=json.dumps({"reason": "undo"}), content_type="application/json",
                       headers={"X-CSRFToken": token[1]}).status_code == 200


def test_bearer_keys_do_not_open_the_django_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    # One auth model, the site's: even with keys configured, a key is not a Django user.
    from baldur.adapters.django import views
    from baldur.admin._keys import parse_admin_keys

    keys = parse_admin_keys("BALDUR_ADMIN_KEYS", "operator:operator-key-0123456789", "")
    monkeypatch.setattr(views._admin, "_keys", keys)
    answer = Client().get(BREAKERS, headers={"Authorization": "Bearer operator-key-0123456789"})
    assert answer.status_code == 401


@pytest.mark.parametrize("mode", MODES)
def test_the_admin_is_exempt_from_the_per_client_limit(mode: str, baldur_settings: Any) -> None:
    baldur_settings(rate_limit="1/minute")
    site = site_as(mode, "baldur_viewer")
    assert site.get("/plain/sync").status_code == 200
    assert site.get("/plain/sync").status_code == 429
    assert [site.get(BREAKERS).status_code for _ in range(3)] == [200, 200, 200]
