from django.urls import path

from quickstart import views

urlpatterns = [
    path("demo", views.demo),
]
