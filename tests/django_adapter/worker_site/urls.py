from django.urls import path
from quickstart.urls import urlpatterns as quickstart

from worker_site import views

urlpatterns = [
    *quickstart,
    path("healthz", views.healthz),
    path("flaky", views.flaky),
    path("orders", views.orders),
    path("login/", views.Login.as_view()),
]
