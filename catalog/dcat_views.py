"""DCAT-AP endpoints at stable URLs outside the versioned API:

``/catalog.ttl``, ``/catalog.jsonld`` (the whole catalogue) and ``/datasets/{id}.ttl``,
``/datasets/{id}.jsonld`` (one dataset). Signed-in callers (session or token) see what the
catalogue shows them; anonymous harvesters see the open, city-visible published datasets.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from catalog import dcat, selectors


def _response(graph: Any, fmt: str) -> HttpResponse:
    _, content_type = dcat.FORMATS[fmt]
    return HttpResponse(dcat.serialize(graph, fmt), content_type=content_type)


@extend_schema(exclude=True)
class CatalogDcatView(APIView):
    permission_classes = [AllowAny]

    def get(self, request: Request, fmt: str) -> HttpResponse:
        datasets = selectors.dataset_published_list(user=request.user)
        return _response(dcat.catalog_graph(datasets), fmt)


@extend_schema(exclude=True)
class DatasetDcatView(APIView):
    permission_classes = [AllowAny]

    def get(self, request: Request, dataset_id: int, fmt: str) -> HttpResponse:
        dataset = selectors.dataset_published_get(user=request.user, dataset_id=dataset_id)
        return _response(dcat.dataset_graph(dataset), fmt)
