from django.urls import path, register_converter

from catalog import dcat_views


class RdfFormat:
    regex = "ttl|jsonld"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(RdfFormat, "rdf")

urlpatterns = [
    path("catalog.<rdf:fmt>", dcat_views.CatalogDcatView.as_view(), name="dcat-catalog"),
    path("datasets/<int:dataset_id>.<rdf:fmt>", dcat_views.DatasetDcatView.as_view(), name="dcat-dataset"),
]
