"""``/<behaviour>/<kind>`` for every view of ``dj_views``, plus Django's login view and Baldur's admin."""

from __future__ import annotations

from dj_views import VIEWS, PrivateOrders, hold
from django.contrib.auth.views import LoginView
from django.urls import include, path
from django.utils.decorators import method_decorator

import baldur


@method_decorator(baldur.protected("login", rate_limit="3/minute"), name="post")
class BruteForceSafeLogin(LoginView):
    """Django's own login view; each client may try 3 passwords a minute."""


urlpatterns = [
    *(path(f"{behaviour}/{kind}", view, name=f"{behaviour}-{kind}")
      for behaviour, kinds in VIEWS.items() for kind, view in kinds.items()),
    path("private/orders", PrivateOrders.as_view(), name="private-orders"),
    path("login/", BruteForceSafeLogin.as_view(), name="login"),
    path("hold", hold),
    path("baldur/", include("baldur.adapters.django.urls")),
]
