"""The data-request API: requests for data that is not in the catalogue, their routing,
decisions, fulfilment and the people who joined them.

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
from exchange.access.apis import DatasetRefOutput
from exchange.demand import selectors as sel
from exchange.demand import services
from exchange.demand.models import DataRequest, DataRequestStatus


class FieldWishSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=services.MAX_FIELD_NAME)
    description = serializers.CharField(max_length=services.MAX_FIELD_DESCRIPTION, required=False,
                                        allow_blank=True, default="")


class SupporterOutput(serializers.Serializer):
    user = serializers.CharField(source="user.username")
    purpose = serializers.CharField()
    joined_at = serializers.DateTimeField()


class DataRequestEventOutput(serializers.Serializer):
    action = serializers.CharField()
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)
    comment = serializers.CharField()
    details = serializers.JSONField()
    at = serializers.DateTimeField()


class DataRequestOutput(serializers.ModelSerializer):
    fields = FieldWishSerializer(many=True)  # type: ignore[assignment]
    requested_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True)
    department: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    routed_department: serializers.SlugRelatedField = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True)
    decided_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True,
                                                                            allow_null=True)
    dataset = DatasetRefOutput(allow_null=True)
    duplicate_of = serializers.IntegerField(source="duplicate_of_id", allow_null=True)

    class Meta:
        model = DataRequest
        fields = ["id", "title", "description", "purpose", "fields", "status", "requested_by", "department",
                  "routed_department", "routed_at", "decided_by", "decided_at", "decline_reason", "duplicate_of",
                  "dataset", "fulfilled_at", "closed_at", "created_at"]


class DataRequestDetailOutput(DataRequestOutput):
    supporters = SupporterOutput(many=True, source="supporters.all")
    timeline = DataRequestEventOutput(many=True, source="events.all")
    my_steps = serializers.ListField(child=serializers.CharField(), help_text="The steps I may take now.")
    access_request_url = serializers.CharField(
        allow_null=True, help_text="Once fulfilled, for the requester and joiners: the dataset's access-request "
                                   "form pre-filled with the requested fields it has and their purpose.")

    class Meta(DataRequestOutput.Meta):
        fields = [*DataRequestOutput.Meta.fields, "supporters", "timeline", "my_steps", "access_request_url"]


def detail_data(user: User, data_request_id: int) -> dict[str, Any]:
    data_request = sel.data_request_get(user=user, data_request_id=data_request_id)
    data_request.my_steps = sorted(services.steps_for(user=user, data_request=data_request))  # type: ignore[attr-defined]
    involved = (data_request.requested_by_id == user.pk
                or sel.has_joined(data_request=data_request, user_id=user.pk))
    data_request.access_request_url = (  # type: ignore[attr-defined]
        services.prefilled_access_url(data_request=data_request, user=user)
        if data_request.status == DataRequestStatus.FULFILLED and involved else None)
    return DataRequestDetailOutput(data_request).data


def _get(request: Request, data_request_id: int) -> tuple[User, DataRequest]:
    user = request_user(request)
    return user, sel.data_request_get(user=user, data_request_id=data_request_id)


class CommentInput(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=services.MAX_TEXT)


class DataRequestListApi(APIView):
    pagination_class = PageNumberPagination

    class FilterSerializer(serializers.Serializer):
        scope = serializers.ChoiceField(choices=["all", "mine"], default="all", required=False,
                                        help_text="mine: made or joined by me; all: everything I may see.")
        status = serializers.ChoiceField(choices=DataRequestStatus.choices, required=False)
        department = serializers.SlugField(required=False, help_text="The department it was routed to.")
        q = serializers.CharField(required=False, max_length=200,
                                  help_text="Words in the title, description or a field's name.")

    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=services.MAX_TITLE)
        description = serializers.CharField(max_length=services.MAX_TEXT)
        purpose = serializers.CharField(max_length=services.MAX_PURPOSE)
        fields = FieldWishSerializer(many=True, max_length=services.MAX_FIELDS, min_length=1)  # type: ignore[assignment,call-arg]
        department = serializers.SlugField(required=False,
                                           help_text="The department you ask from (one where you are an analyst or "
                                                     "steward); by default your first.")

    @extend_schema(parameters=[FilterSerializer], responses=DataRequestOutput(many=True))
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        v = filters.validated_data
        qs = sel.data_request_list(user=request.user, status=v.get("status", ""), department=v.get("department", ""),
                                   search=v.get("q", ""), mine=v.get("scope") == "mine")
        paginator = PageNumberPagination()
        page: list[Any] | None = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(DataRequestOutput(page, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: DataRequestDetailOutput})
    def post(self, request: Request) -> Response:
        user = request_user(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        department = None
        if v.get("department"):
            department = sel.department_by_slug(slug=v["department"])
            if department is None:
                raise ApplicationError("No such department.", fields={"department": ["No such department."]})
        data_request = services.data_request_submit(
            actor=user, title=v["title"], description=v["description"], purpose=v["purpose"],
            fields=[services.FieldWish(name=f["name"], description=f.get("description", "")) for f in v["fields"]],
            department=department,
        )
        return Response(detail_data(user, data_request.pk), status=status.HTTP_201_CREATED)


class DataRequestDetailApi(APIView):
    @extend_schema(responses=DataRequestDetailOutput)
    def get(self, request: Request, data_request_id: int) -> Response:
        return Response(detail_data(request_user(request), data_request_id))


class DataRequestRouteApi(APIView):
    """Governance reviewers: send the request to the department that should hold the data."""

    class InputSerializer(CommentInput):
        department = serializers.SlugField(help_text="Slug of the department.")

    @extend_schema(request=InputSerializer, responses=DataRequestDetailOutput)
    def post(self, request: Request, data_request_id: int) -> Response:
        user, data_request = _get(request, data_request_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        department = sel.department_by_slug(slug=data.validated_data["department"])
        if department is None:
            raise ApplicationError("No such department.", fields={"department": ["No such department."]})
        services.data_request_route(actor=user, data_request=data_request, department=department,
                                    comment=data.validated_data.get("comment", ""))
        return Response(detail_data(user, data_request_id))


class DataRequestDuplicateApi(APIView):
    """Governance reviewers: close the request as a duplicate of another one."""

    class InputSerializer(CommentInput):
        duplicate_of = IdField(help_text="Id of the request it duplicates.")

    @extend_schema(request=InputSerializer, responses=DataRequestDetailOutput)
    def post(self, request: Request, data_request_id: int) -> Response:
        user, data_request = _get(request, data_request_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            original = sel.data_request_get(user=user, data_request_id=data.validated_data["duplicate_of"])
        except NotFoundError as exc:
            raise ApplicationError("No such data request.",
                                   fields={"duplicate_of": ["No such data request."]}) from exc
        services.data_request_close_duplicate(actor=user, data_request=data_request, original=original,
                                              comment=data.validated_data.get("comment", ""))
        return Response(detail_data(user, data_request_id))


class DataRequestAcceptApi(APIView):
    """Stewards of the routed department: we will publish it."""

    @extend_schema(request=CommentInput, responses=DataRequestDetailOutput)
    def post(self, request: Request, data_request_id: int) -> Response:
        user, data_request = _get(request, data_request_id)
        data = CommentInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.data_request_accept(actor=user, data_request=data_request,
                                     comment=data.validated_data.get("comment", ""))
        return Response(detail_data(user, data_request_id))


class DataRequestDeclineApi(APIView):
    """Stewards of the routed department: we will not, and why."""

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=services.MAX_TEXT)

    @extend_schema(request=InputSerializer, responses=DataRequestDetailOutput)
    def post(self, request: Request, data_request_id: int) -> Response:
        user, data_request = _get(request, data_request_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.data_request_decline(actor=user, data_request=data_request, reason=data.validated_data["reason"])
        return Response(detail_data(user, data_request_id))


class DataRequestFulfilApi(APIView):
    """Stewards of the routed department: link the published dataset that fulfils the request;
    the requester and joiners are told and offered a pre-filled access request."""

    class InputSerializer(CommentInput):
        dataset = IdField(help_text="Id of a published dataset of the routed department.")

    @extend_schema(request=InputSerializer, responses=DataRequestDetailOutput)
    def post(self, request: Request, data_request_id: int) -> Response:
        user, data_request = _get(request, data_request_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            dataset = dataset_get_for_user(user=user, dataset_id=data.validated_data["dataset"])
        except NotFoundError as exc:
            raise ApplicationError("No such dataset.", fields={"dataset": ["No such dataset."]}) from exc
        services.data_request_fulfil(actor=user, data_request=data_request, dataset=dataset,
                                     comment=data.validated_data.get("comment", ""))
        return Response(detail_data(user, data_request_id))


class DataRequestWithdrawApi(APIView):
    """The requester: withdraw it while it is not fulfilled."""

    @extend_schema(request=CommentInput, responses=DataRequestDetailOutput)
    def post(self, request: Request, data_request_id: int) -> Response:
        user, data_request = _get(request, data_request_id)
        data = CommentInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.data_request_withdraw(actor=user, data_request=data_request,
                                       comment=data.validated_data.get("comment", ""))
        return Response(detail_data(user, data_request_id))


class DataRequestJoinApi(APIView):
    """Need the same data? Join the request with your own purpose instead of filing another."""

    class InputSerializer(serializers.Serializer):
        purpose = serializers.CharField(max_length=services.MAX_PURPOSE)

    @extend_schema(request=InputSerializer, responses={201: DataRequestDetailOutput})
    def post(self, request: Request, data_request_id: int) -> Response:
        user, data_request = _get(request, data_request_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.data_request_join(actor=user, data_request=data_request, purpose=data.validated_data["purpose"])
        return Response(detail_data(user, data_request_id), status=status.HTTP_201_CREATED)


class DataRequestLeaveApi(APIView):
    @extend_schema(request=None, responses=DataRequestDetailOutput)
    def post(self, request: Request, data_request_id: int) -> Response:
        user, data_request = _get(request, data_request_id)
        services.data_request_leave(actor=user, data_request=data_request)
        return Response(detail_data(user, data_request_id))
