"""Record values over HTTP: pages, exports and previews. Each one goes through
``exchange.records`` (and so through the policy), and each request is audited once."""

from __future__ import annotations

import json
from typing import Any, cast

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.throttling import export_throttles
from departments.authentication import Unconfirmed, confirm, is_unconfirmed
from exchange.access.policy import EffectiveView
from exchange.records import read_cache
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


# Page heads remembered per view, at most this many (then forgotten all at once).
HEADS_PER_VIEW = 16


def _page_head(dataset_id: int, view: EffectiveView, names: tuple[str, ...]) -> bytes:
    """A JSON page's beginning, up to its results: the dataset and the fields' description,
    which depend on the view and the fields asked for alone, so are written once per view."""
    def build() -> bytes:
        text = json.dumps({"dataset": dataset_id, "fields": _field_meta(view, names)}, ensure_ascii=False,
                          separators=(",", ":"))
        return text[:-1].encode("utf-8") + b',"results":'

    return view.remembered("records.api.heads", (dataset_id, names), HEADS_PER_VIEW, build)


def _page_response(head: bytes, rows_json: bytes, next_url: str | None) -> HttpResponse:
    """The records page in the shape (and the compact, unescaped JSON) DRF's JSON renderer
    writes, around the rows' JSON (UTF-8) from the database, which is never parsed here."""
    tail = json.dumps(next_url, ensure_ascii=False)
    body = b"".join((head, rows_json, b',"next":', tail.encode("utf-8"), b"}"))
    return HttpResponse(body, content_type="application/json")


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
    # A token this process authenticated before is taken on trust (no statement of its own) and
    # checked by the statement that reads the page: see departments.authentication.Unconfirmed.
    takes_remembered_tokens = True

    @extend_schema(
        parameters=[*QUERY_PARAMETERS, OpenApiParameter("cursor", str), OpenApiParameter("page_size", int)],
        responses=inline_serializer("RecordPage", fields={
            "dataset": serializers.IntegerField(),
            "fields": FIELD_META,
            "results": serializers.ListField(child=serializers.DictField()),
            "next": serializers.CharField(allow_null=True),
        }),
    )
    def get(self, request: Request, dataset_id: int) -> Response | HttpResponse:
        # A JSON client gets the rows as the database wrote them (the browsable API renders them).
        as_json = isinstance(getattr(request, "accepted_renderer", None), JSONRenderer)
        if is_unconfirmed(request.auth):
            answer = self._on_trust(request, dataset_id, as_json)
            if answer is not None:
                return answer
        context = read_cache.read_context(user=request.user, dataset_id=dataset_id)
        dataset = context.dataset
        view, query, page = records.read_page(user=request.user, dataset=dataset, params=request.query_params.dict(),
                                              view=context.view, exists=context.store_exists, as_json=as_json)
        return self._respond(request, dataset, view, query, page)

    def _on_trust(self, request: Request, dataset_id: int, as_json: bool) -> HttpResponse | None:
        """The page read on a remembered token's word, in a statement that checks that word
        first. Anything else this request could be told (a 404, a refused query and its audit
        event, a page the guard withheld) waits until the token has been authenticated the
        usual way (``confirm``: a 401 if it is no longer good); then None, and the request is
        served as any other."""
        try:
            context = read_cache.read_context(user=request.user, dataset_id=dataset_id)
            params = request.query_params.dict()
            records.parse_query(context.view, params)  # a refused query is audited once confirmed
            trusted = as_json and context.store_exists and records.is_readable(context.view, context.dataset)
        except Exception:  # noqa: BLE001 - whatever it is, it is said once the token is confirmed
            trusted = False
        if not trusted:
            confirm(request)
            return None
        try:
            view, query, page = records.read_page(
                user=request.user, dataset=context.dataset, params=params, view=context.view, exists=True,
                as_json=True, guard=cast(Unconfirmed, request.auth).guard())
        except records.GuardFailed:
            confirm(request)
            return None
        except Exception:
            # A 401 first if the token is no longer good; else the error itself (an error raised
            # after the guard let the page through comes with a token that was good).
            confirm(request)
            raise
        return self._respond(request, context.dataset, view, query, page)

    def _respond(self, request: Request, dataset: Any, view: EffectiveView, query: records.RecordQuery,
                 page: records.Page) -> Response | HttpResponse:
        next_url = None
        if page.next_cursor:
            params = request.query_params.copy()
            params["cursor"] = page.next_cursor
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        if page.json is not None:
            return _page_response(_page_head(dataset.pk, view, query.fields), page.json, next_url)
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
        context = read_cache.read_context(user=request.user, dataset_id=dataset_id)
        dataset = context.dataset
        params = request.query_params.dict()
        fmt = params.pop("format", "csv")
        stream = records.export_rows(user=request.user, dataset=dataset, params=params, fmt=fmt,
                                     view=context.view, exists=context.store_exists)
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
        context = read_cache.read_context(user=request.user, dataset_id=dataset_id)
        dataset = context.dataset
        view, page = records.preview(user=request.user, dataset=dataset, view=context.view,
                                     exists=context.store_exists)
        return Response({"dataset": dataset.pk, "fields": _field_meta(view, tuple(view.fields)),
                         "results": page.rows})
