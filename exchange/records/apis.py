"""Record values over HTTP: pages, exports and previews. Each one goes through
``exchange.records`` (and so through the policy), and each request is audited once."""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.selectors import dataset_get_for_user
from config.api.throttling import export_throttles
from exchange.access.policy import EffectiveView
from exchange.records import selectors as records


def _field_meta(view: EffectiveView, names: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        access = view.fields[name]
        out.append({
            "name": name,
            "type": access.output_type,
            "form": access.form,
            "sensitivity": access.sensitivity,
            "conditional": not access.unconditional,
        })
    return out


FIELD_META = inline_serializer(
    "RecordField",
    fields={
        "name": serializers.CharField(), "type": serializers.CharField(), "form": serializers.CharField(),
        "sensitivity": serializers.CharField(),
        "conditional": serializers.BooleanField(help_text="Shown only on the rows some grant's row filter covers."),
    },
    many=True,
)

QUERY_PARAMETERS = [
    OpenApiParameter("fields", str, description="Comma-separated visible fields to return (default: all visible)."),
    OpenApiParameter("order", str, description="Comma-separated visible fields, `-` for descending."),
    OpenApiParameter("q", str, description="Text search over the visible text fields."),
    OpenApiParameter(
        "<field>[__<op>]", str,
        description="Filter on a visible field, e.g. `district=North`, `fee_eur__gte=100`. Operators: eq, ne, "
                    "lt, lte, gt, gte, in (comma-separated), contains, is_null. Hidden fields are refused.",
    ),
]


class RecordListApi(APIView):
    @extend_schema(
        parameters=[*QUERY_PARAMETERS, OpenApiParameter("cursor", str), OpenApiParameter("page_size", int)],
        responses=inline_serializer("RecordPage", fields={
            "dataset": serializers.IntegerField(),
            "fields": FIELD_META,
            "results": serializers.ListField(child=serializers.DictField()),
            "next": serializers.CharField(allow_null=True),
        }),
    )
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        view, query, page = records.read_page(user=request.user, dataset=dataset, params=request.query_params.dict())
        next_url = None
        if page.next_cursor:
            params = request.query_params.copy()
            params["cursor"] = page.next_cursor
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        return Response({"dataset": dataset.pk, "fields": _field_meta(view, query.fields),
                         "results": page.rows, "next": next_url})


class RecordExportApi(APIView):
    throttle_classes = export_throttles()
    streams_export = True  # its statements run under EXPORT_STATEMENT_TIMEOUT_SECONDS

    @extend_schema(
        parameters=[*QUERY_PARAMETERS, OpenApiParameter("format", str, enum=["csv", "ndjson"], required=True)],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/x-ndjson"): OpenApiTypes.STR},
    )
    def get(self, request: Request, dataset_id: int) -> StreamingHttpResponse:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        params = request.query_params.dict()
        fmt = params.pop("format", "csv")
        stream = records.export_rows(user=request.user, dataset=dataset, params=params, fmt=fmt)
        content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
        response = StreamingHttpResponse(stream, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="{dataset.slug}.{fmt}"'
        response["Cache-Control"] = "no-store"
        return response


class RecordPreviewApi(APIView):
    @extend_schema(responses=inline_serializer("RecordPreview", fields={
        "dataset": serializers.IntegerField(), "fields": FIELD_META,
        "results": serializers.ListField(child=serializers.DictField()),
    }))
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        view, page = records.preview(user=request.user, dataset=dataset)
        return Response({"dataset": dataset.pk, "fields": _field_meta(view, tuple(view.fields)),
                         "results": page.rows})
