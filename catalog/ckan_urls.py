from django.urls import re_path

from catalog import ckan

# Any name, so that an unknown one (or "package_list/", or none) answers CKAN's envelope too.
urlpatterns = [
    re_path(r"^(?P<action>[\s\S]*)\Z", ckan.CkanActionView.as_view(), name="ckan-action"),
]
