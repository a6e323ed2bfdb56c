"""The views of the Django adapter's tests: each behaviour as a sync function view, an
``async def`` view and a class-based view (``method_decorator``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.decorators import method_decorator
from django.views import View

import baldur
from baldur.adapters import _web

KINDS = ("sync", "async", "class")
#: How often each view body ran, by name.
ran: Counter[str] = Counter()
#: Set by a test to hold the ``hold`` views (concurrency tests).
gates: dict[str, Any] = {}


def _views(name: str, body: Callable[[HttpRequest], HttpResponse], *, protect: dict[str, Any] | None = None,
           methods: tuple[str, ...] = ("get",)) -> dict[str, Callable[..., Any]]:
    """The three kinds of view around ``body``, each protected as ``{name}-{kind}`` with ``protect``
    (the options of ``baldur.protected``) when it is given."""

    def sync_view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        ran[name] += 1
        return body(request)

    async def async_view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        ran[name] += 1
        return body(request)

    def handler(self: View, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        ran[name] += 1
        return body(request)

    view_class: type[View] = type(f"{name}_view", (View,), dict.fromkeys(methods, handler))
    if protect is None:
        return {"sync": sync_view, "async": async_view, "class": view_class.as_view()}
    for method in methods:
        view_class = method_decorator(baldur.protected(f"{name}-class", **protect), name=method)(view_class)
    return {"sync": baldur.protected(f"{name}-sync", **protect)(sync_view),
            "async": baldur.protected(f"{name}-async", **protect)(async_view),
            "class": view_class.as_view()}


def ok(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


def server_error(request: HttpRequest) -> HttpResponse:
    return HttpResponse("unavailable", status=502)


def not_found(request: HttpRequest) -> HttpResponse:
    return HttpResponse("no such order", status=404)


def slow(request: HttpRequest) -> HttpResponse:
    time.sleep(0.2)
    return JsonResponse({"late": True})


async def slow_async(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0.2)
    return JsonResponse({"late": True})


def inner_open(request: HttpRequest) -> HttpResponse:
    return HttpResponse(downstream())


def streamed_failure(request: HttpRequest) -> HttpResponse:
    def chunks() -> Iterator[bytes]:
        yield b"first"
        raise RuntimeError("the stream broke")

    return StreamingHttpResponse(chunks())


def streamed_status(request: HttpRequest) -> HttpResponse:
    def chunks() -> Iterator[bytes]:
        yield b"in progress" if _web.current() is not None else b"no request in progress"

    return StreamingHttpResponse(chunks())


def created(request: HttpRequest) -> HttpResponse:
    ran["order-count"] += 1
    user = getattr(request, "user", None)
    who = user.get_username() if user is not None and user.is_authenticated else "anonymous"
    return JsonResponse({"order": ran["order-count"], "for": who, "body": request.body.decode()}, status=201)


@baldur.protected("downstream", breaker=baldur.Breaker(open_for=30))
def downstream() -> str:
    return "fine"


VIEWS: dict[str, dict[str, Callable[..., Any]]] = {
    "plain": _views("plain", ok),
    "route": _views("route", ok, protect={"rate_limit": "2/minute"}),
    "guarded": _views("guarded", ok, protect={"breaker": baldur.Breaker(open_for=30)}),
    "fails": _views("fails", boom, protect={"breaker": baldur.Breaker(consecutive_failures=3, open_for=30)}),
    "bad-gateway": _views("bad-gateway", server_error, protect={"breaker": baldur.Breaker(
        consecutive_failures=3, open_for=30)}),
    "missing": _views("missing", not_found, protect={"breaker": baldur.Breaker(consecutive_failures=3)}),
    # (names apart from the core tests' "slow-sync" and "slow-async": a name has one breaker per process)
    "slow": {**_views("dj-slow", slow, protect={"timeout": 0.05}), "async": baldur.protected(
        "dj-slow-async", timeout=0.05)(slow_async)},
    "inner": _views("inner", inner_open),
    "stream": _views("stream", streamed_failure, protect={"breaker": baldur.Breaker(consecutive_failures=2)}),
    "sent": _views("sent", streamed_status, protect={}),
    "orders": _views("orders", created, protect={}, methods=("post",)),
    "healthz": {kind: baldur.exempt(view) for kind, view in _views("healthz", ok).items()},
}


@method_decorator(login_required, name="post")
class PrivateOrders(View):
    @method_decorator(baldur.protected("private-orders"))
    def post(self, request: HttpRequest) -> HttpResponse:
        return created(request)


def hold(request: HttpRequest) -> HttpResponse:
    entered, release = gates["hold"]
    entered.set()
    release.wait(10)
    return JsonResponse({"held": True})
