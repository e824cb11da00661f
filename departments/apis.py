"""The departments API: the directory, members, city roles, tokens and "me"."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema, inline_serializer
from knox.models import AuthToken
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.auth import request_user
from config.api.errors import ApplicationError, LockedOutError, NotFoundError
from config.api.fields import IdField
from config.api.pagination import PageNumberPagination
from departments import selectors, services
from departments.models import CityRole, CityRoleAssignment, Department, Membership, Notification, Role
from departments.notifications import inbox, notification_mark_read
from departments.permissions import IsOperator


class DepartmentOutput(serializers.ModelSerializer):
    member_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Department
        fields = [
            "id", "code", "name", "slug", "description", "contact_email", "contact_phone",
            "homepage", "is_active", "member_count", "created_at", "updated_at",
        ]


class DepartmentListApi(APIView):
    class FilterSerializer(serializers.Serializer):
        search = serializers.CharField(required=False, allow_blank=True, max_length=100)

    class InputSerializer(serializers.Serializer):
        code = serializers.CharField(max_length=32)
        name = serializers.CharField(max_length=200)
        slug = serializers.SlugField(max_length=80, required=False, allow_blank=True)
        description = serializers.CharField(required=False, allow_blank=True)
        contact_email = serializers.EmailField(required=False, allow_blank=True)
        contact_phone = serializers.CharField(required=False, allow_blank=True, max_length=40)
        homepage = serializers.URLField(required=False, allow_blank=True)

    def get_permissions(self) -> list[Any]:
        return [IsOperator()] if self.request.method == "POST" else list(super().get_permissions())

    @extend_schema(responses=DepartmentOutput(many=True), parameters=[FilterSerializer])
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        qs = selectors.department_list(user=request.user, search=filters.validated_data.get("search", ""))
        return Response(DepartmentOutput(qs, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: DepartmentOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        department = services.department_create(actor=request.user, **data.validated_data)
        department = selectors.department_get(user=request.user, slug=department.slug)
        return Response(DepartmentOutput(department).data, status=status.HTTP_201_CREATED)


class DepartmentDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200, required=False)
        description = serializers.CharField(required=False, allow_blank=True)
        contact_email = serializers.EmailField(required=False, allow_blank=True)
        contact_phone = serializers.CharField(required=False, allow_blank=True, max_length=40)
        homepage = serializers.URLField(required=False, allow_blank=True)
        is_active = serializers.BooleanField(required=False)

    @extend_schema(responses=DepartmentOutput)
    def get(self, request: Request, slug: str) -> Response:
        return Response(DepartmentOutput(selectors.department_get(user=request.user, slug=slug)).data)

    @extend_schema(request=InputSerializer, responses=DepartmentOutput)
    def patch(self, request: Request, slug: str) -> Response:
        department = selectors.department_get(user=request.user, slug=slug, manage=True)
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        if "is_active" in data.validated_data and not request.user.is_staff:
            raise ApplicationError("Only operators may (de)activate a department.", code="permission_denied")
        services.department_update(actor=request.user, department=department, **data.validated_data)
        return Response(DepartmentOutput(selectors.department_get(user=request.user, slug=slug)).data)


class MembershipOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    full_name = serializers.CharField(source="user.get_full_name")
    email = serializers.EmailField(source="user.email")
    department: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    added_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True,
                                                                          allow_null=True)

    class Meta:
        model = Membership
        fields = ["id", "username", "full_name", "email", "department", "role", "added_by", "created_at"]


class MembershipListApi(APIView):
    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        role = serializers.CharField(max_length=32, help_text=f"One of: {', '.join(Role.values)}.")

    @extend_schema(responses=MembershipOutput(many=True))
    def get(self, request: Request, slug: str) -> Response:
        department = selectors.department_get(user=request.user, slug=slug)
        members = selectors.membership_list(user=request.user, department=department)
        return Response(MembershipOutput(members, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: MembershipOutput})
    def post(self, request: Request, slug: str) -> Response:
        department = selectors.department_get(user=request.user, slug=slug, manage=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = selectors.user_by_username(username=data.validated_data["username"])
        if user is None:
            raise ApplicationError("No active user with that username.", fields={"username": ["Unknown user."]})
        membership = services.membership_add(
            actor=request.user, department=department, user=user, role=data.validated_data["role"]
        )
        return Response(MembershipOutput(membership).data, status=status.HTTP_201_CREATED)


class MembershipDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        role = serializers.CharField(max_length=32, help_text=f"One of: {', '.join(Role.values)}.")

    def _get(self, request: Request, slug: str, membership_id: int, manage: bool) -> Membership:
        department = selectors.department_get(user=request.user, slug=slug, manage=manage)
        return selectors.membership_get(user=request.user, department=department, membership_id=membership_id)

    @extend_schema(responses=MembershipOutput)
    def get(self, request: Request, slug: str, membership_id: int) -> Response:
        return Response(MembershipOutput(self._get(request, slug, membership_id, manage=False)).data)

    @extend_schema(request=InputSerializer, responses=MembershipOutput)
    def patch(self, request: Request, slug: str, membership_id: int) -> Response:
        membership = self._get(request, slug, membership_id, manage=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_change_role(
            actor=request.user, membership=membership, role=data.validated_data["role"]
        )
        return Response(MembershipOutput(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, membership_id: int) -> Response:
        membership = self._get(request, slug, membership_id, manage=True)
        services.membership_remove(actor=request.user, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CityRoleOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    granted_by: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = CityRoleAssignment
        fields = ["id", "username", "role", "granted_by", "created_at"]


class CityRoleListApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        role = serializers.CharField(max_length=32, help_text=f"One of: {', '.join(CityRole.values)}.")

    @extend_schema(responses=CityRoleOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(CityRoleOutput(selectors.city_role_list(), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: CityRoleOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = selectors.user_by_username(username=data.validated_data["username"])
        if user is None:
            raise ApplicationError("No active user with that username.", fields={"username": ["Unknown user."]})
        assignment = services.city_role_grant(actor=request.user, user=user, role=data.validated_data["role"])
        return Response(CityRoleOutput(assignment).data, status=status.HTTP_201_CREATED)


class CityRoleDetailApi(APIView):
    permission_classes = [IsOperator]

    @extend_schema(responses={204: None})
    def delete(self, request: Request, assignment_id: int) -> Response:
        assignment = selectors.city_role_list().filter(pk=assignment_id).first()
        if assignment is None:
            raise NotFoundError("No such role assignment.")
        services.city_role_revoke(actor=request.user, assignment=assignment)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        username = serializers.CharField()
        full_name = serializers.CharField()
        email = serializers.EmailField()
        is_operator = serializers.BooleanField()
        city_roles = serializers.ListField(child=serializers.CharField())
        departments = inline_serializer(
            "MyDepartment",
            fields={
                "slug": serializers.CharField(), "code": serializers.CharField(),
                "name": serializers.CharField(), "role": serializers.CharField(),
            },
            many=True,
        )

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        user = request_user(request)
        principal = selectors.principal_of(user)
        memberships = selectors.user_memberships(user=user)
        return Response(
            self.OutputSerializer(
                {
                    "id": user.pk,
                    "username": user.get_username(),
                    "full_name": user.get_full_name(),
                    "email": user.email,
                    "is_operator": principal.is_staff,
                    "city_roles": sorted(principal.city_roles),
                    "departments": [
                        {"slug": m.department.slug, "code": m.department.code, "name": m.department.name,
                         "role": m.role}
                        for m in memberships
                    ],
                }
            ).data
        )


# --- Tokens ---------------------------------------------------------------------------------

class TokenOutput(serializers.ModelSerializer):
    class Meta:
        model = AuthToken
        fields = ["token_key", "created", "expiry"]


class LoginApi(APIView):
    """Exchange a username and password for an API token (shown once, stored only hashed)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_scope = "login"

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(max_length=256, style={"input_type": "password"})

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()
        token_key = serializers.CharField()
        expiry = serializers.DateTimeField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer}, auth=[])
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request, username=data.validated_data["username"], password=data.validated_data["password"])
        if user is None:
            if getattr(request, "axes_locked_out", False):  # set by django-axes' backend
                raise LockedOutError(
                    "Too many failed logins for this username from this address; try again later.",
                    extra={"retry_after_seconds": int(settings.AXES_COOLOFF_TIME.total_seconds())},
                )
            services.login_failed(username=data.validated_data["username"], channel="api")
            raise ApplicationError("Wrong username or password.", code="authentication_failed")
        instance, token = services.token_issue(user=user)
        return Response(
            self.OutputSerializer({"token": token, "token_key": instance.token_key, "expiry": instance.expiry}).data,
            status=status.HTTP_201_CREATED,
        )


class TokenListApi(APIView):
    @extend_schema(responses=TokenOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(TokenOutput(selectors.token_list(user=request_user(request)), many=True).data)


class TokenDetailApi(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, token_key: str) -> Response:
        services.token_revoke(user=request_user(request), token_key=token_key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class LogoutApi(APIView):
    """Revoke the token this request was made with."""

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        if isinstance(request.auth, AuthToken):
            services.token_revoke(user=request_user(request), token_key=request.auth.token_key)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Inbox ----------------------------------------------------------------------------------

class NotificationOutput(serializers.ModelSerializer):
    class Meta:
        model = Notification
        fields = ["id", "kind", "subject", "body", "link", "action_required", "object_type", "object_id",
                  "created_at", "read_at"]


class InboxApi(APIView):
    class FilterSerializer(serializers.Serializer):
        unread = serializers.BooleanField(required=False, default=False)
        page = serializers.IntegerField(required=False, min_value=1)
        page_size = serializers.IntegerField(required=False, min_value=1, max_value=500)

    @extend_schema(
        parameters=[FilterSerializer],
        responses=inline_serializer("NotificationPage", fields={
            "count": serializers.IntegerField(), "next": serializers.CharField(allow_null=True),
            "previous": serializers.CharField(allow_null=True), "unread": serializers.IntegerField(),
            "results": NotificationOutput(many=True),
        }),
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        user = request_user(request)
        qs = inbox(user=user, unread_only=filters.validated_data["unread"]).order_by("-created_at", "-id")
        paginator = PageNumberPagination()
        page: list[Notification] = list(paginator.paginate_queryset(qs, request, view=self) or [])
        response = paginator.get_paginated_response(NotificationOutput(page, many=True).data)
        response.data["unread"] = inbox(user=user, unread_only=True).count()
        return response


class InboxReadApi(APIView):
    """Mark notifications read: the ones listed, or all of them when ``ids`` is absent."""

    class InputSerializer(serializers.Serializer):
        ids = serializers.ListField(child=IdField(), required=False, max_length=1000)

    class OutputSerializer(serializers.Serializer):
        marked = serializers.IntegerField()

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        marked = notification_mark_read(user=request_user(request), notification_ids=data.validated_data.get("ids"))
        return Response(self.OutputSerializer({"marked": marked}).data)
