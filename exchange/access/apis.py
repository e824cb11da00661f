"""The access API: requests, decisions, grants, the inbox of pending decisions and explain.

Views validate input, fetch through a scoped selector (404 for what the user may not know
exists), call one service (which answers 403 for what they know but may not do) and serialize.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.selectors import dataset_get_for_user
from config.api.auth import request_user
from config.api.errors import ApplicationError, NotFoundError, PermissionDeniedError
from config.api.fields import IdField
from config.api.pagination import PageNumberPagination
from departments.models import Role
from departments.selectors import principal_of, user_by_username
from exchange.access import selectors as sel
from exchange.access import services
from exchange.access.models import AccessForm, AccessRequest, Grant, GrantStatus, RequestStatus
from exchange.access.policy import effective_view

ROW_FILTER_OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "is_null")


# --- Shared output shapes -------------------------------------------------------------------

class DatasetRefOutput(serializers.Serializer):
    id = serializers.IntegerField()
    slug = serializers.CharField()
    title = serializers.CharField()
    department = serializers.CharField(source="department.slug")


class RowConditionSerializer(serializers.Serializer):
    field = serializers.CharField(max_length=63)
    op = serializers.ChoiceField(choices=ROW_FILTER_OPS,
                                 help_text="eq, ne, lt, lte, gt, gte and in fit text, numbers, dates and "
                                           "timestamps; contains only text; booleans take eq and ne; "
                                           "every type (also geopoint and json) takes is_null.")
    value = serializers.JSONField(help_text="A value of the field's type; a list for `in`; "
                                            "true (is null) or false (is not null) for `is_null`.")


class AccessRequestOutput(serializers.ModelSerializer):
    dataset = DatasetRefOutput()
    requested_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True)
    principal_user: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username",
                                                                                read_only=True, allow_null=True)
    principal_department: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="slug",
                                                                                      read_only=True, allow_null=True)
    fields = serializers.ListField(child=serializers.CharField())  # type: ignore[assignment]
    row_filter = RowConditionSerializer(many=True)

    class Meta:
        model = AccessRequest
        fields = [
            "id", "dataset", "status", "requested_by", "principal_kind", "principal_user", "principal_department",
            "fields", "purpose", "legal_basis", "row_filter", "requested_start", "requested_end", "renews",
            "created_at", "decided_at",
        ]


class FieldDecisionOutput(serializers.Serializer):
    name = serializers.CharField(source="field_name")
    approved = serializers.BooleanField()
    form = serializers.CharField()
    reason = serializers.CharField()
    decided_by = serializers.CharField(source="decided_by.username")
    decided_at = serializers.DateTimeField()


class RequestEventOutput(serializers.Serializer):
    action = serializers.CharField()
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)
    comment = serializers.CharField()
    details = serializers.JSONField()
    at = serializers.DateTimeField()


class AccessRequestDetailOutput(AccessRequestOutput):
    decisions = FieldDecisionOutput(many=True)
    timeline = RequestEventOutput(many=True, source="events.all")
    grant = serializers.IntegerField(allow_null=True, source="grant_id_or_none")

    class Meta(AccessRequestOutput.Meta):
        fields = [*AccessRequestOutput.Meta.fields, "decisions", "timeline", "grant"]


class GrantFieldOutput(serializers.Serializer):
    name = serializers.CharField(source="field_name")
    form = serializers.ChoiceField(choices=AccessForm.choices)
    lapsed_at = serializers.DateTimeField(allow_null=True)
    lapse_reason = serializers.CharField()


class GrantOutput(serializers.ModelSerializer):
    dataset = DatasetRefOutput()
    principal_user: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username",
                                                                                read_only=True, allow_null=True)
    principal_department: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="slug",
                                                                                      read_only=True, allow_null=True)
    approved_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True)
    dpo_approved_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username",
                                                                                 read_only=True, allow_null=True)
    dpo_rejected_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username",
                                                                                 read_only=True, allow_null=True)
    revoked_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True,
                                                                            allow_null=True)
    fields = GrantFieldOutput(many=True, source="fields.all")  # type: ignore[assignment]
    row_filter = RowConditionSerializer(many=True)
    needs_recertification = serializers.BooleanField(
        help_text="Active and not confirmed by a steward within GRANT_RECERTIFY_DAYS.")

    class Meta:
        model = Grant
        fields = [
            "id", "dataset", "request", "status", "principal_kind", "principal_user", "principal_department",
            "fields", "purpose", "legal_basis", "row_filter", "valid_from", "valid_until", "approved_by",
            "dpo_approved_by", "dpo_approved_at", "dpo_rejected_by", "dpo_rejected_at", "dpo_comment",
            "revoked_by", "revoked_at", "revoke_reason", "last_certified_at", "needs_recertification",
            "reminder_sent_at", "created_at",
        ]


def _paginate(view: APIView, request: Request, qs: Any, serializer: type[serializers.BaseSerializer]) -> Response:
    paginator = PageNumberPagination()
    page: list[Any] | None = paginator.paginate_queryset(qs, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


def _request_detail(user: User, request_id: int) -> dict[str, Any]:
    access_request = sel.access_request_get(user=user, request_id=request_id)
    access_request.grant_id_or_none = sel.request_grant_id(access_request)  # type: ignore[attr-defined]
    return AccessRequestDetailOutput(access_request).data


# --- Access requests ------------------------------------------------------------------------

class AccessRequestListApi(APIView):
    pagination_class = PageNumberPagination

    class FilterSerializer(serializers.Serializer):
        scope = serializers.ChoiceField(
            choices=["all", "mine", "to_decide"], default="all", required=False,
            help_text="mine: made by or for me (or my department); to_decide: waiting for my decision as "
                      "steward; all: everything I may see.")
        status = serializers.ChoiceField(choices=RequestStatus.choices, required=False)
        dataset = IdField(required=False)

    class InputSerializer(serializers.Serializer):
        dataset = IdField(help_text="Id of a published dataset.")
        fields = serializers.ListField(child=serializers.CharField(max_length=63), max_length=500,  # type: ignore[assignment]
                                       help_text="Names of fields of the dataset's current schema.")
        purpose = serializers.CharField(max_length=5000)
        legal_basis = serializers.CharField(max_length=300)
        requested_start = serializers.DateTimeField(required=False,
                                                    help_text="Defaults to now.")
        requested_end = serializers.DateTimeField()
        row_filter = RowConditionSerializer(many=True, required=False)
        department = serializers.SlugField(
            required=False, help_text="Request for this department (you must be one of its stewards) "
                                      "instead of for yourself.")
        renews = IdField(required=False, help_text="Id of the grant this request renews.")
        comment = serializers.CharField(required=False, allow_blank=True, max_length=5000)

    @extend_schema(parameters=[FilterSerializer], responses=AccessRequestOutput(many=True))
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        scope = filters.validated_data.get("scope", "all")
        qs = sel.access_request_list(user=request.user, mine=scope == "mine", to_decide=scope == "to_decide")
        if "status" in filters.validated_data:
            qs = qs.filter(status=filters.validated_data["status"])
        if "dataset" in filters.validated_data:
            qs = qs.filter(dataset_id=filters.validated_data["dataset"])
        return _paginate(self, request, qs, AccessRequestOutput)

    @extend_schema(request=InputSerializer, responses={201: AccessRequestDetailOutput})
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
            department = sel.department_by_slug(slug=v["department"])
            if department is None:
                raise ApplicationError("No such department.", fields={"department": ["No such department."]})
        renews = sel.grant_get(user=user, grant_id=v["renews"]) if v.get("renews") else None
        access_request = services.access_request_submit(
            actor=user, dataset=dataset, fields=v["fields"], purpose=v["purpose"], legal_basis=v["legal_basis"],
            requested_start=v.get("requested_start") or timezone.now(),
            requested_end=v["requested_end"], row_filter=[dict(c) for c in v.get("row_filter", [])],
            principal_department=department, renews=renews, comment=v.get("comment", ""),
        )
        return Response(_request_detail(user, access_request.pk), status=status.HTTP_201_CREATED)


class AccessRequestDetailApi(APIView):
    @extend_schema(responses=AccessRequestDetailOutput)
    def get(self, request: Request, request_id: int) -> Response:
        return Response(_request_detail(request_user(request), request_id))


class AccessRequestWithdrawApi(APIView):
    class InputSerializer(serializers.Serializer):
        comment = serializers.CharField(required=False, allow_blank=True, max_length=5000)

    @extend_schema(request=InputSerializer, responses=AccessRequestDetailOutput)
    def post(self, request: Request, request_id: int) -> Response:
        user = request_user(request)
        access_request = sel.access_request_get(user=user, request_id=request_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.access_request_withdraw(actor=user, access_request=access_request,
                                         comment=data.validated_data.get("comment", ""))
        return Response(_request_detail(user, request_id))


class FieldDecisionInput(serializers.Serializer):
    name = serializers.CharField(max_length=63)
    approved = serializers.BooleanField()
    form = serializers.ChoiceField(choices=AccessForm.choices, required=False, allow_blank=True,
                                   help_text="Defaults to the form offered for the field's classification.")
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000,
                                   help_text="Required when the field is denied.")


class AccessRequestCommentApi(APIView):
    """Add a comment to a request's timeline, e.g. a steward's question and the answer."""

    class InputSerializer(serializers.Serializer):
        comment = serializers.CharField(max_length=5000)

    @extend_schema(request=InputSerializer, responses={201: AccessRequestDetailOutput})
    def post(self, request: Request, request_id: int) -> Response:
        user = request_user(request)
        access_request = sel.access_request_get(user=user, request_id=request_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.access_request_comment(actor=user, access_request=access_request,
                                        comment=data.validated_data["comment"])
        return Response(_request_detail(user, request_id), status=status.HTTP_201_CREATED)


class AccessRequestDecideApi(APIView):
    """Decide every requested field. An approved field without a form gets the default of its
    classification (see form-defaults); clear on a personal field needs `clear_reason`."""

    class InputSerializer(serializers.Serializer):
        fields = FieldDecisionInput(many=True, help_text="One entry per requested field.")  # type: ignore[assignment]
        comment = serializers.CharField(required=False, allow_blank=True, max_length=5000)
        clear_reason = serializers.CharField(required=False, allow_blank=True, max_length=2000,
                                             help_text="Why personal data is granted in clear.")

    @extend_schema(request=InputSerializer, responses=AccessRequestDetailOutput)
    def post(self, request: Request, request_id: int) -> Response:
        user = request_user(request)
        access_request = sel.access_request_get(user=user, request_id=request_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.access_request_decide(
            actor=user, access_request=access_request,
            decisions=[services.FieldDecisionInput(**entry) for entry in data.validated_data["fields"]],
            comment=data.validated_data.get("comment", ""), clear_reason=data.validated_data.get("clear_reason", ""),
        )
        return Response(_request_detail(user, request_id))


class AccessRequestFormDefaultsApi(APIView):
    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        sensitivity = serializers.CharField(allow_null=True)
        form = serializers.ChoiceField(choices=AccessForm.choices, allow_null=True,
                                       help_text="Offered by default; null when the field left the schema.")
        clear_needs_reason = serializers.BooleanField()

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request, request_id: int) -> Response:
        access_request = sel.access_request_get(user=request_user(request), request_id=request_id)
        defaults = services.form_defaults(dataset=access_request.dataset, field_names=access_request.fields)
        rows = [
            {"name": name, "sensitivity": defaults.get(name, {}).get("sensitivity"),
             "form": defaults.get(name, {}).get("form"),
             "clear_needs_reason": defaults.get(name, {}).get("sensitivity") == "personal"}
            for name in access_request.fields
        ]
        return Response(self.OutputSerializer(rows, many=True).data)


# --- Grants ---------------------------------------------------------------------------------

class GrantListApi(APIView):
    pagination_class = PageNumberPagination

    class FilterSerializer(serializers.Serializer):
        scope = serializers.ChoiceField(choices=["all", "mine"], default="all", required=False,
                                        help_text="mine: grants I hold, myself or through my departments.")
        status = serializers.ChoiceField(choices=GrantStatus.choices, required=False)
        dataset = IdField(required=False)
        needs_recertification = serializers.BooleanField(required=False, allow_null=True, default=None)

    @extend_schema(parameters=[FilterSerializer], responses=GrantOutput(many=True))
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        v = filters.validated_data
        qs = sel.grant_list(user=request.user, mine=v.get("scope") == "mine", status=v.get("status", ""),
                            dataset_id=v.get("dataset"))
        if v.get("needs_recertification") is not None:
            qs = qs.filter(needs_recertification=v["needs_recertification"])  # type: ignore[misc]
        return _paginate(self, request, qs, GrantOutput)


class GrantDetailApi(APIView):
    @extend_schema(responses=GrantOutput)
    def get(self, request: Request, grant_id: int) -> Response:
        return Response(GrantOutput(sel.grant_get(user=request.user, grant_id=grant_id)).data)


class GrantCommentInput(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=5000)


class GrantReasonInput(serializers.Serializer):
    reason = serializers.CharField(max_length=5000)


class GrantDpoApproveApi(APIView):
    @extend_schema(request=GrantCommentInput, responses=GrantOutput)
    def post(self, request: Request, grant_id: int) -> Response:
        user = request_user(request)
        grant = sel.grant_get(user=user, grant_id=grant_id)
        data = GrantCommentInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.grant_dpo_approve(actor=user, grant=grant, comment=data.validated_data.get("comment", ""))
        return Response(GrantOutput(sel.grant_get(user=user, grant_id=grant_id)).data)


class GrantDpoRejectApi(APIView):
    @extend_schema(request=GrantReasonInput, responses=GrantOutput)
    def post(self, request: Request, grant_id: int) -> Response:
        user = request_user(request)
        grant = sel.grant_get(user=user, grant_id=grant_id)
        data = GrantReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.grant_dpo_reject(actor=user, grant=grant, reason=data.validated_data["reason"])
        return Response(GrantOutput(sel.grant_get(user=user, grant_id=grant_id)).data)


class GrantRevokeApi(APIView):
    @extend_schema(request=GrantReasonInput, responses=GrantOutput)
    def post(self, request: Request, grant_id: int) -> Response:
        user = request_user(request)
        grant = sel.grant_get(user=user, grant_id=grant_id)
        data = GrantReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.grant_revoke(actor=user, grant=grant, reason=data.validated_data["reason"])
        return Response(GrantOutput(sel.grant_get(user=user, grant_id=grant_id)).data)


class GrantCertifyApi(APIView):
    @extend_schema(request=GrantCommentInput, responses=GrantOutput)
    def post(self, request: Request, grant_id: int) -> Response:
        user = request_user(request)
        grant = sel.grant_get(user=user, grant_id=grant_id)
        data = GrantCommentInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.grant_certify(actor=user, grant=grant, comment=data.validated_data.get("comment", ""))
        return Response(GrantOutput(sel.grant_get(user=user, grant_id=grant_id)).data)


# --- What waits on me -----------------------------------------------------------------------

class AccessPendingApi(APIView):
    """Everything that waits on the signed-in user: requests to decide as steward, grants
    waiting for their second approval as DPO, grants to recertify on their datasets."""

    class OutputSerializer(serializers.Serializer):
        requests_to_decide = AccessRequestOutput(many=True)
        grants_awaiting_dpo = GrantOutput(many=True)
        grants_to_recertify = GrantOutput(many=True)

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        pending = sel.pending_for(user=request.user)
        return Response(self.OutputSerializer({
            "requests_to_decide": pending.requests_to_decide,
            "grants_awaiting_dpo": pending.grants_awaiting_dpo,
            "grants_to_recertify": pending.grants_to_recertify,
        }).data)


# --- Explain --------------------------------------------------------------------------------

class ExplainFieldOutput(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField()
    sensitivity = serializers.CharField()
    form = serializers.ChoiceField(choices=AccessForm.choices)
    grant_ids = serializers.ListField(child=serializers.IntegerField())
    all_rows = serializers.BooleanField(help_text="False when the field shows only on rows matching a grant's "
                                                  "row filter.")


class ExplainHiddenOutput(serializers.Serializer):
    name = serializers.CharField()
    reason = serializers.CharField()


class ExplainGrantOutput(serializers.Serializer):
    id = serializers.IntegerField()
    principal_kind = serializers.CharField()
    principal = serializers.CharField()
    valid_from = serializers.DateTimeField()
    valid_until = serializers.DateTimeField()
    purpose = serializers.CharField()
    legal_basis = serializers.CharField()
    row_filter = RowConditionSerializer(many=True)
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.CharField(), help_text="field name → form")


class AccessExplainApi(APIView):
    """Which fields of a dataset a principal sees, in which form and through which grants, and
    why the others are hidden. Asked by the principal themself (or a member of the department
    asked about), a steward or auditor of the owning department, a DPO or a city auditor."""

    class FilterSerializer(serializers.Serializer):
        user = serializers.CharField(required=False, max_length=150, help_text="Username of the principal.")
        department = serializers.SlugField(required=False, help_text="Slug of the principal department.")

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if bool(attrs.get("user")) == bool(attrs.get("department")):
                raise serializers.ValidationError("Name exactly one principal: user or department.")
            return attrs

    class OutputSerializer(serializers.Serializer):
        dataset = serializers.IntegerField()
        principal = serializers.CharField()
        at = serializers.DateTimeField()
        is_owner = serializers.BooleanField()
        fields = ExplainFieldOutput(many=True)  # type: ignore[assignment]
        hidden = ExplainHiddenOutput(many=True)
        grants = ExplainGrantOutput(many=True)

    @extend_schema(
        parameters=[FilterSerializer, OpenApiParameter("dataset_id", OpenApiTypes.INT, OpenApiParameter.PATH)],
        responses=OutputSerializer,
    )
    def get(self, request: Request, dataset_id: int) -> Response:
        asker = request_user(request)
        dataset = dataset_get_for_user(user=asker, dataset_id=dataset_id)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        p = principal_of(asker)
        overseer = (p.is_dpo or p.is_city_auditor or p.is_staff
                    or p.has_role(dataset.department_id, Role.STEWARD, Role.AUDITOR))
        user = department = None
        if filters.validated_data.get("user"):
            # Refused before the lookup, so that whether a username exists is not told to
            # someone who may not ask about others.
            if filters.validated_data["user"] != asker.get_username() and not overseer:
                raise PermissionDeniedError("You may explain only your own access, or access to datasets you "
                                            "oversee.")
            user = user_by_username(username=filters.validated_data["user"])
            if user is None:
                raise ApplicationError("No such user.", fields={"user": ["No active user with that username."]})
        else:
            department = sel.department_by_slug(slug=filters.validated_data["department"])
            if department is None:
                raise ApplicationError("No such department.", fields={"department": ["No such department."]})
            if department.pk not in p.department_ids and not overseer:
                raise PermissionDeniedError("You may explain only your own departments' access, or access to "
                                            "datasets you oversee.")
        view = effective_view(dataset=dataset, user=user, department=department)
        hidden = sel.explain_hidden(dataset=dataset, user=user, department=department, hidden=view.hidden)
        return Response(self.OutputSerializer({
            "dataset": dataset.pk, "principal": view.principal, "at": view.at, "is_owner": view.is_owner,
            "fields": [
                {"name": f.name, "type": f.type, "sensitivity": f.sensitivity, "form": f.form,
                 "grant_ids": list(f.grant_ids), "all_rows": f.unconditional}
                for f in view.fields.values()
            ],
            "hidden": [{"name": name, "reason": reason} for name, reason in hidden.items()],
            "grants": [
                {"id": g.id, "principal_kind": g.principal_kind, "principal": g.principal,
                 "valid_from": g.valid_from, "valid_until": g.valid_until, "purpose": g.purpose,
                 "legal_basis": g.legal_basis, "row_filter": list(g.row_filter), "fields": g.fields}
                for g in view.grants
            ],
        }).data)
