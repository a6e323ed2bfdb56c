"""The ASGI face of the admin API: what ``baldur admin`` serves under uvicorn."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from baldur.admin._app import MAX_BODY, AdminApp, AdminRequest

__all__ = ["AdminASGI"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AdminASGI:
    """An ASGI 3 application around ``AdminApp`` (HTTP only; lifespan events are acknowledged)."""

    def __init__(self, app: AdminApp | None = None) -> None:
        self.app = app if app is not None else AdminApp()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        response = await self.app.handle(_request(scope, body))
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]})
        await send({"type": "http.response.body", "body": response.body})


async def _read_body(receive: Receive) -> bytes:
    """The request's body, cut after ``MAX_BODY + 1`` bytes (enough for the API to refuse it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if size <= MAX_BODY:
            chunks.append(chunk)
            size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)[:MAX_BODY + 1]


def _request(scope: Scope, body: bytes) -> AdminRequest:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1").partition("?")[0] if raw else urllib.parse.quote(scope["path"])
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    client = scope.get("client")
    return AdminRequest(scope["method"], path, query, headers, body, client[0] if client else "", root)
