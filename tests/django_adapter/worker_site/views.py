from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt

import baldur


def stamp_pid(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """Every answer names the worker that gave it (sync stack: Django adapts it under ASGI)."""

    def middleware(request: HttpRequest) -> Any:
        response = get_response(request)
        response["X-Worker-Pid"] = str(os.getpid())
        return response

    return middleware


@baldur.exempt
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@baldur.protected("flaky", breaker=baldur.Breaker(consecutive_failures=5, open_for=30))
def flaky(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the downstream is down")


@csrf_exempt
@login_required
@baldur.protected("orders")
def orders(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"for": request.user.get_username(), "pid": os.getpid()}, status=201)


@method_decorator(baldur.protected("login", rate_limit="5/minute"), name="post")
class Login(LoginView):
    """Django's own login view; each client may try 5 passwords a minute, across the fleet."""
