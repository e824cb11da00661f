from django.urls import path

from catalog import ckan

urlpatterns = [
    path("<str:action>", ckan.CkanActionView.as_view(), name="ckan-action"),
]
