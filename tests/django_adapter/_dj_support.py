"""Requests to the test site through Django's test clients: WSGI (the sync middleware) or
ASGI (the async middleware)."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpResponseBase
from django.test import AsyncClient, Client

PROBLEM = "application/problem+json"
IANA = "https://iana.org/assignments/http-problem-types#"
#: The middleware's two modes: Django's WSGI handler (sync) and its ASGI handler (async).
MODES = ("wsgi", "asgi")


class Site:
    """One client of the test site, through the WSGI or the ASGI handler; keeps its cookies."""

    def __init__(self, mode: str, headers: dict[str, str] | None = None, **defaults: Any) -> None:
        self.mode = mode
        #: Sent with every request (the async test client has no default headers of its own).
        self.headers = headers or {}
        self.client: Client | AsyncClient = Client(**defaults) if mode == "wsgi" else AsyncClient(**defaults)

    def request(self, method: str, path: str, **kwargs: Any) -> HttpResponseBase:
        call = getattr(self.client, method.lower())
        kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
        if self.mode == "wsgi":
            return call(path, **kwargs)
        return async_to_sync(call)(path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> HttpResponseBase:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> HttpResponseBase:
        return self.request("POST", path, **kwargs)

    def force_login(self, user: Any) -> None:
        if self.mode == "wsgi":
            self.client.force_login(user)
        else:
            async_to_sync(self.client.aforce_login)(user)


def content(response: HttpResponseBase) -> bytes:
    """The whole body, streamed or not (closing a streamed response settles it)."""
    if response.streaming:
        try:
            return b"".join(response.streaming_content)  # type: ignore[attr-defined]
        finally:
            response.close()
    return bytes(response.content)  # type: ignore[attr-defined]


def problem_of(response: HttpResponseBase, status: int) -> dict[str, Any]:
    """The RFC 9457 body of ``response``, after checking its media type and the common members."""
    assert response.status_code == status, content(response)
    assert response["Content-Type"] == PROBLEM
    body = json.loads(content(response))
    assert isinstance(body, dict)
    assert body["status"] == status
    for member in ("type", "title", "detail"):
        assert isinstance(body[member], str) and body[member]
    return body
