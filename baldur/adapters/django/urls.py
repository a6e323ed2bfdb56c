"""``path("baldur/", include("baldur.adapters.django.urls"))``: the admin API and Web Console,
authorised by the site's users and their groups (``baldur.adapters.django.views``)."""

from __future__ import annotations

from django.urls import re_path

from baldur.adapters.django.views import admin_view

app_name = "baldur"
urlpatterns = [re_path(r"^(?P<rest>.*)$", admin_view, name="admin")]
