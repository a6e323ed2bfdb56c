from django.urls import include, path

from quickstart import views

urlpatterns = [
    path("demo", views.demo),
    # Baldur's admin API and Web Console, for users in the baldur_* groups (and superusers).
    path("baldur/", include("baldur.adapters.django.urls")),
]
