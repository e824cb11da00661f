"""The objection API: raise an objection to records or fields of a dataset one reads or
receives, answer it (accept with the fix, reject with the reason) or withdraw it.

Views validate input, fetch through the scoped selector (404 for what the user may not know
exists), call one service (403 for what they know but may not do, 409 for a step the state
does not allow) and serialize.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.selectors import dataset_get_for_user
from config.api.auth import request_user
from config.api.errors import ApplicationError, NotFoundError
from config.api.fields import IdField
from config.api.pagination import PageNumberPagination
from departments.selectors import principal_of
from exchange.access.apis import DatasetRefOutput
from exchange.objections import selectors as sel
from exchange.objections import services
from exchange.objections.models import Objection, ObjectionKind, ObjectionStatus


class ObjectionEventOutput(serializers.Serializer):
    action = serializers.CharField()
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)
    comment = serializers.CharField()
    at = serializers.DateTimeField()


class ObjectionOutput(serializers.ModelSerializer):
    dataset = DatasetRefOutput()
    department: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    raised_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True)
    answered_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True,
                                                                             allow_null=True)
    fields = serializers.ListField(child=serializers.CharField())  # type: ignore[assignment]
    record_keys = serializers.SerializerMethodField(
        help_text="The named records' keys; empty for a reader of none of the dataset's values (reviewers, "
                  "auditors), who see record_count only.")
    record_count = serializers.SerializerMethodField()
    escalated = serializers.BooleanField()

    class Meta:
        model = Objection
        fields = ["id", "dataset", "department", "raised_by", "kind", "record_keys", "record_count", "fields",
                  "comment", "status", "due_at", "escalated", "escalated_at", "answered_by", "answered_at", "answer",
                  "closed_at", "created_at"]

    def get_record_keys(self, objection: Objection) -> list[str]:
        return list(objection.record_keys) if sel.keys_shown(self.context["principal"], objection) else []

    def get_record_count(self, objection: Objection) -> int:
        return len(objection.record_keys)


class QuotedRecordsOutput(serializers.Serializer):
    columns = serializers.ListField(child=serializers.CharField())
    rows = serializers.ListField(child=serializers.ListField(child=serializers.JSONField()))
    missing = serializers.ListField(child=serializers.CharField(),
                                    help_text="Named keys with no record in my view.")


class ObjectionDetailOutput(ObjectionOutput):
    timeline = ObjectionEventOutput(many=True, source="events.all")
    my_steps = serializers.ListField(child=serializers.CharField(), help_text="The steps I may take now.")
    records = QuotedRecordsOutput(allow_null=True, help_text="The named records as I may see them (my own "
                                                             "view: masked stays masked); null when I read none.")

    class Meta(ObjectionOutput.Meta):
        fields = [*ObjectionOutput.Meta.fields, "timeline", "my_steps", "records"]


def detail_data(user: User, objection_id: int) -> dict[str, Any]:
    objection = sel.objection_get(user=user, objection_id=objection_id)
    objection.my_steps = sorted(services.steps_for(user=user, objection=objection))  # type: ignore[attr-defined]
    objection.records = sel.objection_records(user=user, objection=objection)  # type: ignore[attr-defined]
    return ObjectionDetailOutput(objection, context={"principal": principal_of(user)}).data


def _get(request: Request, objection_id: int) -> tuple[User, Objection]:
    user = request_user(request)
    return user, sel.objection_get(user=user, objection_id=objection_id)


class ObjectionListApi(APIView):
    pagination_class = PageNumberPagination

    class FilterSerializer(serializers.Serializer):
        scope = serializers.ChoiceField(choices=["all", "raised", "received"], default="all", required=False,
                                        help_text="raised: by me or my departments; received: about my "
                                                  "departments' datasets; all: everything I may see.")
        status = serializers.ChoiceField(choices=ObjectionStatus.choices, required=False)
        kind = serializers.ChoiceField(choices=ObjectionKind.choices, required=False)
        dataset = IdField(required=False)
        escalated = serializers.BooleanField(required=False, allow_null=True, default=None)

    class InputSerializer(serializers.Serializer):
        dataset = IdField(help_text="Id of a dataset that you or your department read or receive.")
        kind = serializers.ChoiceField(choices=ObjectionKind.choices)
        comment = serializers.CharField(max_length=services.MAX_TEXT)
        fields = serializers.ListField(child=serializers.CharField(max_length=63), required=False,  # type: ignore[assignment]
                                       max_length=services.MAX_FIELDS, default=list,
                                       help_text="Names of fields in your view of the dataset.")
        record_keys = serializers.ListField(child=serializers.CharField(max_length=services.MAX_KEY_LENGTH),
                                            required=False, max_length=services.MAX_KEYS, default=list,
                                            help_text="Values of the dataset's key field, as you see it.")
        department = serializers.SlugField(required=False,
                                           help_text="The department you object for (one where you are an "
                                                     "analyst or steward); by default your first.")

    @extend_schema(parameters=[FilterSerializer], responses=ObjectionOutput(many=True))
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        v = filters.validated_data
        qs = sel.objection_list(user=request.user, scope=v.get("scope") or "all", status=v.get("status", ""),
                                dataset_id=v.get("dataset"), kind=v.get("kind", ""), escalated=v.get("escalated"))
        paginator = PageNumberPagination()
        page: list[Any] | None = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(
            ObjectionOutput(page, many=True, context={"principal": principal_of(request.user)}).data)

    @extend_schema(request=InputSerializer, responses={201: ObjectionDetailOutput})
    def post(self, request: Request) -> Response:
        user = request_user(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        try:
            dataset = dataset_get_for_user(user=user, dataset_id=v["dataset"])
        except NotFoundError as exc:
            raise ApplicationError("No such dataset.", fields={"dataset": ["No such dataset."]}) from exc
        department = None
        if v.get("department"):
            department = next((d for d in sel.objecting_departments(user=user, dataset=dataset)
                               if d.slug == v["department"]), None)
            if department is None:
                raise ApplicationError("Not a department you object for.",
                                       fields={"department": ["Not a department where you are an analyst or "
                                                              "steward."]})
        objection = services.objection_create(actor=user, dataset=dataset, kind=v["kind"], comment=v["comment"],
                                              fields=v.get("fields") or [], record_keys=v.get("record_keys") or [],
                                              department=department)
        return Response(detail_data(user, objection.pk), status=status.HTTP_201_CREATED)


class ObjectionDetailApi(APIView):
    @extend_schema(responses=ObjectionDetailOutput)
    def get(self, request: Request, objection_id: int) -> Response:
        return Response(detail_data(request_user(request), objection_id))


class ObjectionAcceptApi(APIView):
    """Stewards of the owning department (governance reviewers once it is overdue): the
    objection is right; say what was fixed. Not the person who raised it."""

    class InputSerializer(serializers.Serializer):
        note = serializers.CharField(max_length=services.MAX_TEXT, help_text="What was (or will be) fixed.")

    @extend_schema(request=InputSerializer, responses=ObjectionDetailOutput)
    def post(self, request: Request, objection_id: int) -> Response:
        user, objection = _get(request, objection_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.objection_accept(actor=user, objection=objection, note=data.validated_data["note"])
        return Response(detail_data(user, objection_id))


class ObjectionRejectApi(APIView):
    """Stewards of the owning department (governance reviewers once it is overdue): the data is
    right; say why. Not the person who raised it."""

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=services.MAX_TEXT)

    @extend_schema(request=InputSerializer, responses=ObjectionDetailOutput)
    def post(self, request: Request, objection_id: int) -> Response:
        user, objection = _get(request, objection_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.objection_reject(actor=user, objection=objection, reason=data.validated_data["reason"])
        return Response(detail_data(user, objection_id))


class ObjectionWithdrawApi(APIView):
    """The person who raised it, while it is open."""

    class InputSerializer(serializers.Serializer):
        comment = serializers.CharField(required=False, allow_blank=True, max_length=services.MAX_TEXT)

    @extend_schema(request=InputSerializer, responses=ObjectionDetailOutput)
    def post(self, request: Request, objection_id: int) -> Response:
        user, objection = _get(request, objection_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.objection_withdraw(actor=user, objection=objection, comment=data.validated_data.get("comment", ""))
        return Response(detail_data(user, objection_id))
