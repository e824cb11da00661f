from django.urls import path

from exchange import apis

urlpatterns = [
    path("health/", apis.HealthApi.as_view(), name="health"),
]
