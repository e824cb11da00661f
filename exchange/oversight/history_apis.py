from __future__ import annotations

from datetime import datetime, time

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.selectors import dataset_get_for_user
from config.api.errors import ApplicationError
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_record
from exchange.oversight import history as grant_history


def _moment(raw: str) -> datetime:
    if not raw:
        return timezone.now()
    moment = parse_datetime(raw)
    if moment is None:
        day = parse_date(raw)
        if day is None:
            raise ApplicationError("`at` must be an ISO date or date-time.", fields={"at": ["Not a date."]})
        moment = datetime.combine(day, time.max)
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


class WhoCouldSeeApi(APIView):
    class OutputSerializer(serializers.Serializer):
        grant_id = serializers.IntegerField(allow_null=True)
        principal_kind = serializers.CharField()
        principal = serializers.CharField()
        form = serializers.CharField()
        valid_from = serializers.DateTimeField(allow_null=True)
        valid_until = serializers.DateTimeField(allow_null=True)
        purpose = serializers.CharField()
        legal_basis = serializers.CharField()
        row_filter = serializers.ListField(child=serializers.DictField())
        approved_by = serializers.CharField()
        dpo_approved_by = serializers.CharField()
        revoked_at = serializers.DateTimeField(allow_null=True)

    @extend_schema(
        parameters=[OpenApiParameter("field", str, required=True),
                    OpenApiParameter("at", str, description="ISO date or date-time (a date means its end); "
                                     "default now")],
        responses=inline_serializer("WhoCouldSee", fields={
            "dataset": serializers.IntegerField(), "field": serializers.CharField(),
            "at": serializers.DateTimeField(), "principals": OutputSerializer(many=True)}),
    )
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        grant_history.require_auditor(user=request.user, dataset=dataset, action="who_could_see")
        field = request.query_params.get("field", "")
        at = _moment(request.query_params.get("at", ""))
        principals = grant_history.who_could_see(dataset=dataset, field=field, at=at)
        audit_record(actor=request.user, action="audit.read", obj=dataset, dataset_id=dataset.pk,
                     department_id=dataset.department_id, fields=[field], row_count=len(principals),
                     filters={"question": "who_could_see", "at": at.isoformat()})
        return Response({"dataset": dataset.pk, "field": field, "at": at,
                         "principals": self.OutputSerializer(principals, many=True).data})


class GrantTimelineApi(APIView):
    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = AuditEvent
            fields = ["id", "occurred_at", "actor_label", "action", "object_type", "object_id", "fields",
                      "purpose", "outcome", "details"]

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        grant_history.require_auditor(user=request.user, dataset=dataset, action="grant_timeline")
        events = list(grant_history.grant_timeline(dataset=dataset)[:1000])
        audit_record(actor=request.user, action="audit.read", obj=dataset, dataset_id=dataset.pk,
                     department_id=dataset.department_id, row_count=len(events),
                     filters={"question": "grant_timeline"})
        return Response(self.OutputSerializer(events, many=True).data)
