"""The auditors' API: events with filters, streaming export, access reports, verification.

Read-only, and every read is itself audited (one event per request, with the filters and
the number of rows). Anyone else gets 403 (they know the audit API exists, they may not use
it) and the attempt is audited too. Events never contain record values; auditors see who
did what to which object, not the data.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, NoReturn

from django.contrib.auth.models import User
from django.db.models import Max, QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import pagination, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.errors import PermissionDeniedError
from config.api.pagination import StrictPageSize
from config.api.throttling import export_throttles
from exchange.audit.models import AuditEvent, AuditOutcome
from exchange.audit.services import audit_record, audit_verify
from exchange.oversight import selectors
from exchange.oversight.selectors import AuditEventFilter, AuditReportFilter, AuditScope

PAGING_PARAMS = frozenset({"cursor", "page_size"})


def _require_auditor(request: Request, *, attempted: str) -> AuditScope:
    """The one gate of every audit endpoint: the caller's scope, or an audited 403."""
    scope = selectors.audit_scope_of(request.user)
    if scope is None:
        audit_record(
            actor=request.user, action="audit.denied", outcome=AuditOutcome.DENIED,
            details={"attempted": attempted, "path": request.path},
        )
        raise PermissionDeniedError("Only auditors may read the audit trail.")
    return scope


class AuditApi(APIView):
    """Base of the audit endpoints: a request refused before the view runs (no or a bad
    login) is audited like any other refused attempt to read the trail."""

    def permission_denied(self, request: Request, message: str | None = None, code: str | None = None) -> NoReturn:
        audit_record(
            actor=request.user, action="audit.denied", outcome=AuditOutcome.DENIED,
            details={"attempted": "audit", "path": request.path, "reason": "not authenticated"},
        )
        super().permission_denied(request, message=message, code=code)


def _filtered(
    request: Request, events: QuerySet[AuditEvent], filterset_class: type[AuditEventFilter] = AuditEventFilter,
    extra_params: frozenset[str] = PAGING_PARAMS,
) -> tuple[QuerySet[AuditEvent], dict[str, str]]:
    """Apply the query's filters; unknown parameters and bad values are 400s, never ignored
    (a misspelt filter that silently matched everything would mislead an auditor)."""
    filterset = filterset_class(data=request.query_params, queryset=events)
    unknown = sorted(set(request.query_params) - set(filterset.filters) - extra_params)
    errors: dict[str, list[str]] = {name: ["Unknown filter."] for name in unknown}
    if not filterset.is_valid():
        errors.update({name: [str(m) for m in messages] for name, messages in filterset.errors.items()})
    if errors:
        raise ValidationError(errors)
    used = {str(k): str(v) for k, v in request.query_params.items() if k in filterset.filters and v != ""}
    return filterset.qs, used


def _filter_parameters(filterset_class: type[AuditEventFilter], names: Iterable[str] | None = None) -> list[Any]:
    filters = filterset_class.base_filters
    return [
        OpenApiParameter(name, OpenApiTypes.STR, description=str(f.extra.get("help_text", "")))
        for name, f in filters.items()
        if names is None or name in names
    ]


class AuditCursorPagination(StrictPageSize, pagination.CursorPagination):
    ordering = "-id"  # newest first; ids follow the chain
    page_size = 50
    page_size_query_param = "page_size"


class AuditEventOutput(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", *selectors.EXPORT_COLUMNS[1:]]


class AuditEventListApi(AuditApi):
    pagination_class = AuditCursorPagination  # for the schema: the view pages with it itself

    @extend_schema(
        parameters=_filter_parameters(AuditEventFilter),
        responses=AuditEventOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        scope = _require_auditor(request, attempted="audit.read")
        events, used = _filtered(request, selectors.audit_event_list(scope=scope))
        paginator = AuditCursorPagination()
        page = paginator.paginate_queryset(events, request, view=self) or []
        audit_record(
            actor=request.user, action="audit.read", filters=used, row_count=len(page),
            details={"endpoint": "events"},
        )
        return paginator.get_paginated_response(AuditEventOutput(page, many=True).data)


# --- Export ---------------------------------------------------------------------------------

class _Echo:
    def write(self, value: str) -> str:
        return value


# A spreadsheet runs cells starting with these as formulas; audit data holds text that users
# typed (a failed login's username), so they are defused with a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    elif isinstance(value, datetime):
        value = value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(selectors.EXPORT_COLUMNS)
    for row in rows:
        yield writer.writerow([_csv_cell(row[c]) for c in selectors.EXPORT_COLUMNS])


def _ndjson_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        row["occurred_at"] = row["occurred_at"].isoformat()
        yield json.dumps(row, ensure_ascii=False) + "\n"


class JsonErrorsNegotiation(DefaultContentNegotiation):
    """``format`` names the export format here, not a DRF renderer; errors are JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        first = next(iter(renderers))
        return first, first.media_type


EXPORT_FORMATS = {"csv": ("text/csv; charset=utf-8", _csv_lines), "ndjson": ("application/x-ndjson", _ndjson_lines)}


class AuditEventExportApi(AuditApi):
    content_negotiation_class = JsonErrorsNegotiation
    throttle_classes = export_throttles()
    streams_export = True  # its statements run under EXPORT_STATEMENT_TIMEOUT_SECONDS

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "format", OpenApiTypes.STR, enum=list(EXPORT_FORMATS), description="csv (default) or ndjson."
            ),
            *_filter_parameters(AuditEventFilter),
        ],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/x-ndjson"): OpenApiTypes.STR},
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        scope = _require_auditor(request, attempted="audit.export")
        export_format = request.query_params.get("format", "csv")
        if export_format not in EXPORT_FORMATS:
            raise ValidationError({"format": [f"One of: {', '.join(EXPORT_FORMATS)}."]})
        events, used = _filtered(request, selectors.audit_event_list(scope=scope), extra_params=frozenset({"format"}))
        # Fix the set before streaming: what is appended meanwhile (this export's own event
        # included) is not part of it, so the audited row count is exactly what is sent.
        upto = AuditEvent.objects.aggregate(upto=Max("id"))["upto"] or 0
        events = events.filter(id__lte=upto)
        count = events.count()
        audit_record(
            actor=request.user, action="audit.export", filters=used, row_count=count,
            details={"format": export_format, "up_to_event": upto},
        )
        content_type, lines = EXPORT_FORMATS[export_format]
        response = StreamingHttpResponse(lines(selectors.audit_export_rows(events=events)), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="audit-events.{export_format}"'
        response["X-Row-Count"] = str(count)
        return response


# --- Reports --------------------------------------------------------------------------------

_ReportSummaryOutput = inline_serializer(
    "AuditReport",
    fields={
        "subject": inline_serializer("AuditReportSubject", fields={
            "kind": serializers.CharField(), "id": serializers.IntegerField(), "name": serializers.CharField(),
        }),
        "total": serializers.IntegerField(),
        "last_activity": serializers.DateTimeField(allow_null=True),
        "by_action": inline_serializer("AuditReportActionCount", many=True, fields={
            "action": serializers.CharField(), "outcome": serializers.CharField(), "count": serializers.IntegerField(),
        }),
        "datasets": inline_serializer("AuditReportDataset", many=True, fields={
            "dataset_id": serializers.IntegerField(), "count": serializers.IntegerField(),
            "last": serializers.DateTimeField(),
        }),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": AuditEventOutput(many=True),
    },
)


def _report_response(
    view: APIView, request: Request, *, subject: dict[str, Any], events: QuerySet[AuditEvent],
) -> Response:
    events, used = _filtered(request, events, filterset_class=AuditReportFilter)
    summary = selectors.audit_report_summary(events=events)
    paginator = AuditCursorPagination()
    page = paginator.paginate_queryset(events, request, view=view) or []
    audit_record(
        actor=request.user, action="audit.read", filters=used, row_count=len(page),
        details={"endpoint": f"report.{subject['kind']}", "subject": subject["name"]},
        department_id=subject["id"] if subject["kind"] == "department" else None,
    )
    return Response({
        "subject": subject, **summary,
        "next": paginator.get_next_link(), "previous": paginator.get_previous_link(),
        "results": AuditEventOutput(page, many=True).data,
    })


class AuditUserReportApi(AuditApi):
    @extend_schema(parameters=_filter_parameters(AuditReportFilter, selectors.REPORT_FILTERS),
                   responses=_ReportSummaryOutput)
    def get(self, request: Request, username: str) -> Response:
        scope = _require_auditor(request, attempted="audit.report.user")
        user, events = selectors.audit_user_events(scope=scope, username=username)
        assert isinstance(user, User)
        return _report_response(
            self, request, subject={"kind": "user", "id": user.pk, "name": user.get_username()}, events=events
        )


class AuditDepartmentReportApi(AuditApi):
    @extend_schema(parameters=_filter_parameters(AuditReportFilter, selectors.REPORT_FILTERS),
                   responses=_ReportSummaryOutput)
    def get(self, request: Request, slug: str) -> Response:
        scope = _require_auditor(request, attempted="audit.report.department")
        department = selectors.audit_department_get(slug=slug)
        if not scope.covers(department.pk):
            audit_record(
                actor=request.user, action="audit.denied", outcome=AuditOutcome.DENIED,
                department_id=department.pk, details={"attempted": "audit.report.department", "path": request.path},
            )
            raise PermissionDeniedError("You audit other departments only.")
        events = selectors.audit_event_list(scope=scope).filter(department_id=department.pk)
        return _report_response(
            self, request, subject={"kind": "department", "id": department.pk, "name": department.slug},
            events=events,
        )


class AuditVerifyApi(AuditApi):
    class OutputSerializer(serializers.Serializer):
        intact = serializers.BooleanField()
        checked = serializers.IntegerField(help_text="Events checked (up to the first broken link).")
        broken_at = serializers.IntegerField(allow_null=True, help_text="Id of the first broken link.")
        reason = serializers.CharField(allow_blank=True)
        checkpoints = serializers.IntegerField(help_text="Signed checkpoints confirmed.")
        summary = serializers.CharField()

    @extend_schema(responses={200: OpenApiResponse(OutputSerializer)})
    def get(self, request: Request) -> Response:
        _require_auditor(request, attempted="audit.verify")
        result = audit_verify()
        audit_record(
            actor=request.user, action="audit.verify",
            outcome=AuditOutcome.ALLOWED if result.intact else AuditOutcome.FAILED,
            details={"intact": result.intact, "checked": result.checked, "broken_at": result.broken_at},
        )
        return Response(self.OutputSerializer({
            "intact": result.intact, "checked": result.checked, "broken_at": result.broken_at,
            "reason": result.reason, "checkpoints": result.checkpoints, "summary": str(result),
        }).data)
