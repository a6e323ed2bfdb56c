"""The admin API and Web Console mounted in a Django site, authorised by its users.

``path("baldur/", include("baldur.adapters.django.urls"))`` serves them. The
Django user decides, not ``BALDUR_ADMIN_KEYS``: one auth model, the site's.
A superuser is an admin; otherwise the highest of the groups ``baldur_viewer``,
``baldur_operator`` and ``baldur_admin`` gives the role (``groups.role_of``);
a user in none of them, staff or not, gets 403, nobody logged in 401. The
audit names the user (``django:<username>``).

Django has already checked ``Host`` against ``ALLOWED_HOSTS`` and, for a
change, the CSRF token of the user's session (the console sends it): the
view is an ordinary one, behind the site's middleware, exempt from Baldur's
own per-client limit and load shedding so that an operator gets through
while the site refuses everyone else.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.utils.html import escape

from baldur.adapters._web import exempt
from baldur.adapters.django.groups import role_of
from baldur.admin._app import MAX_BODY, AdminApp, AdminRequest, NotAuthorised, Principal, Role
from baldur.bridges import run_sync

__all__ = ["admin_view", "principal_of"]

_admin = AdminApp(host_checked=True)
_KEY_AUTH = b'<meta name="baldur-auth" content="key">'
_CSRF_SLOT = b'<meta name="baldur-csrf" content="">'


def principal_of(user: Any) -> Principal | NotAuthorised:
    """Who ``user`` is to the admin API."""
    if user is None or not getattr(user, "is_authenticated", False):
        return NotAuthorised(401, "nobody is logged in: log in to this site as a user in one of the groups "
                                  "baldur_viewer, baldur_operator or baldur_admin")
    name = f"django:{user.get_username()}"
    role = role_of(user)
    if role is None:
        return NotAuthorised(403, f"{name} is in none of the groups baldur_viewer, baldur_operator, baldur_admin "
                                  f"(and is not a superuser)")
    return Principal(name, Role[role.upper()])


@exempt
def admin_view(request: HttpRequest, rest: str = "") -> HttpResponse:
    answer = run_sync(_admin.handle, _admin_request(request, rest), principal_of(getattr(request, "user", None)))
    body = answer.body
    if body.startswith(b"<!doctype html>"):  # the console's page: this site's session, and its CSRF token
        token = escape(get_token(request)).encode()
        body = body.replace(_KEY_AUTH, b'<meta name="baldur-auth" content="session">', 1)
        body = body.replace(_CSRF_SLOT, b'<meta name="baldur-csrf" content="' + token + b'">', 1)
    response = HttpResponse(body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


def _admin_request(request: HttpRequest, rest: str) -> AdminRequest:
    mounted = request.path[: len(request.path) - len(rest)].rstrip("/")
    raw = _raw_path(request)
    if raw is not None and raw.startswith(_quoted(mounted)):
        path = raw[len(_quoted(mounted)):]
    else:  # a %2F inside a name has become a / (the server decoded the path)
        path = urllib.parse.quote("/" + rest)
    headers = {key[5:].replace("_", "-").lower(): value for key, value in request.META.items()
               if key.startswith("HTTP_")}
    if request.META.get("CONTENT_TYPE"):
        headers["content-type"] = request.META["CONTENT_TYPE"]
    body = request.body[: MAX_BODY + 1]  # ``body``, not ``read()``: the CSRF check may have read a form
    query = {key: value for key, value in request.GET.items()}
    return AdminRequest(request.method or "GET", path, query, headers, body,
                        str(request.META.get("REMOTE_ADDR", "")), mounted)


def _raw_path(request: HttpRequest) -> str | None:
    """The path as the client sent it (still percent-encoded), when the server tells."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and scope.get("raw_path"):
        return bytes(scope["raw_path"]).decode("latin-1").partition("?")[0]
    raw = request.META.get("RAW_URI") or request.META.get("REQUEST_URI")
    return str(raw).partition("?")[0] if raw else None


def _quoted(path: str) -> str:
    return urllib.parse.quote(path)
