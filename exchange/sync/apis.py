"""The sync API: connections, a dataset's source and uploads, runs (with progress, counts and
quarantine), and subscriptions. One class per operation; every object is fetched through a
scoped selector (404 for what the user may not know exists). Secrets go in, never out: a
connection is only ever shown with its redacted DSN or URL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.auth import request_user
from config.api.errors import NotFoundError, PayloadTooLargeError, PermissionDeniedError
from config.api.fields import IdField
from config.api.pagination import PageNumberPagination
from departments.models import Department, Role
from departments.selectors import principal_of
from exchange.sync import selectors, services
from exchange.sync.models import ConnectionKind, FileFormat, Run, RunKind, RunMode, RunStatus, Subscription


def _paginate(request: Request, view: APIView, qs: QuerySet[Any], serializer: type[serializers.Serializer]) -> Response:
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(qs, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


# --- Connections ----------------------------------------------------------------------------

class ConnectionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    department = serializers.CharField(source="department.slug")
    name = serializers.CharField()
    kind = serializers.CharField()
    redacted = serializers.CharField(help_text="The DSN, path or URL with credentials hidden.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ConnectionListApi(APIView):
    pagination_class = PageNumberPagination  # what _paginate uses, so the schema documents the page

    class InputSerializer(serializers.Serializer):
        department = serializers.SlugField(help_text="Slug of a department where you are a steward.")
        name = serializers.CharField(max_length=120)
        kind = serializers.ChoiceField(choices=ConnectionKind.choices)
        secret = serializers.CharField(max_length=2000, write_only=True,
                                       help_text="DSN, SQLite file path or URL. Stored encrypted; never shown again.")

    @extend_schema(responses=ConnectionOutput(many=True))
    def get(self, request: Request) -> Response:
        return _paginate(request, self, selectors.connection_list(user=request.user), ConnectionOutput)

    @extend_schema(request=InputSerializer, responses={201: ConnectionOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        department = Department.objects.filter(slug=data.validated_data["department"], is_active=True).first()
        if department is None:
            raise NotFoundError("No such department.")
        if not principal_of(request.user).has_role(department.pk, Role.STEWARD):
            raise PermissionDeniedError("Only stewards of the department may register its connections.")
        connection = services.connection_create(
            actor=request_user(request), department=department, name=data.validated_data["name"],
            kind=data.validated_data["kind"], secret=data.validated_data["secret"])
        return Response(ConnectionOutput(connection).data, status=status.HTTP_201_CREATED)


class ConnectionDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120, required=False)
        secret = serializers.CharField(max_length=2000, required=False, write_only=True)

    @extend_schema(responses=ConnectionOutput)
    def get(self, request: Request, connection_id: int) -> Response:
        return Response(ConnectionOutput(selectors.connection_get(user=request.user,
                                                                  connection_id=connection_id)).data)

    @extend_schema(request=InputSerializer, responses=ConnectionOutput)
    def patch(self, request: Request, connection_id: int) -> Response:
        connection = selectors.connection_get(user=request.user, connection_id=connection_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        connection = services.connection_update(actor=request_user(request), connection=connection,
                                                **data.validated_data)
        return Response(ConnectionOutput(connection).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, connection_id: int) -> Response:
        connection = selectors.connection_get(user=request.user, connection_id=connection_id)
        services.connection_delete(actor=request_user(request), connection=connection)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConnectionTestApi(APIView):
    class OutputSerializer(serializers.Serializer):
        ok = serializers.BooleanField()
        message = serializers.CharField()

    @extend_schema(request=None, responses=OutputSerializer)
    def post(self, request: Request, connection_id: int) -> Response:
        connection = selectors.connection_get(user=request.user, connection_id=connection_id)
        ok, message = services.connection_test(connection=connection)
        return Response(self.OutputSerializer({"ok": ok, "message": message}).data)


# --- Runs -----------------------------------------------------------------------------------

class RunOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    dataset = serializers.IntegerField(source="dataset_id")
    source_id = serializers.IntegerField(allow_null=True)
    subscription_id = serializers.IntegerField(allow_null=True)
    status = serializers.CharField()
    mode = serializers.CharField()
    trigger = serializers.CharField()
    triggered_by = serializers.CharField(source="triggered_by.username", allow_null=True, default=None)
    rerun_of = serializers.IntegerField(source="rerun_of_id", allow_null=True)
    allow_empty = serializers.BooleanField(help_text="The run may delete every record when its source is empty.")
    rows_read = serializers.IntegerField()
    rows_inserted = serializers.IntegerField()
    rows_updated = serializers.IntegerField()
    rows_deleted = serializers.IntegerField()
    rows_unchanged = serializers.IntegerField()
    rows_quarantined = serializers.IntegerField()
    rows_done = serializers.IntegerField()
    rows_total_estimate = serializers.IntegerField(allow_null=True)
    progress = serializers.SerializerMethodField()
    queued_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.SerializerMethodField()
    attempts = serializers.IntegerField()
    resends = serializers.IntegerField(
        help_text="Times the reaper sent the task of the still queued run again (its first message was not sent "
                  "or was lost, e.g. the broker was down).")
    error = serializers.CharField()
    cancel_requested = serializers.BooleanField()
    changes_seen_at = serializers.DateTimeField(
        allow_null=True, help_text="Delivery: when the oldest change it carried was read from its source.")
    latency_seconds = serializers.SerializerMethodField(
        help_text="Delivery: seconds from changes_seen_at to the target's commit (null for a first copy).")
    seq_from = serializers.IntegerField(allow_null=True, help_text="Lineage: first store change number written.")
    seq_to = serializers.IntegerField(allow_null=True, help_text="Lineage: last store change number written.")
    target = serializers.CharField(help_text="Where the run wrote (store table, or target connection → table).")
    schema_version = serializers.IntegerField(allow_null=True)

    def get_progress(self, run: Run) -> float | None:
        if run.status == RunStatus.SUCCEEDED:
            return 1.0
        if not run.rows_total_estimate:
            return None
        return min(0.99, run.rows_done / run.rows_total_estimate)

    def get_duration_seconds(self, run: Run) -> float | None:
        return run.duration.total_seconds() if run.duration is not None else None

    def get_latency_seconds(self, run: Run) -> float | None:
        if run.changes_seen_at is None or run.finished_at is None:
            return None
        return round((run.finished_at - run.changes_seen_at).total_seconds(), 3)


class RunListApi(APIView):
    pagination_class = PageNumberPagination

    class FilterSerializer(serializers.Serializer):
        dataset = IdField(required=False)
        kind = serializers.ChoiceField(choices=RunKind.choices, required=False)
        status = serializers.ChoiceField(choices=RunStatus.choices, required=False)

    @extend_schema(parameters=[FilterSerializer], responses=RunOutput(many=True))
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        qs = selectors.run_list(user=request.user)
        if "dataset" in filters.validated_data:
            qs = qs.filter(dataset_id=filters.validated_data["dataset"])
        for name in ("kind", "status"):
            if name in filters.validated_data:
                qs = qs.filter(**{name: filters.validated_data[name]})
        return _paginate(request, self, qs, RunOutput)


class RunDetailApi(APIView):
    @extend_schema(responses=RunOutput)
    def get(self, request: Request, run_id: int) -> Response:
        return Response(RunOutput(selectors.run_get(user=request.user, run_id=run_id)).data)


class RunCancelApi(APIView):
    @extend_schema(request=None, responses={202: RunOutput})
    def post(self, request: Request, run_id: int) -> Response:
        run = selectors.run_get(user=request.user, run_id=run_id)
        run = services.run_cancel(actor=request_user(request), run=run)
        return Response(RunOutput(run).data, status=status.HTTP_202_ACCEPTED)


class QuarantinedRowOutput(serializers.Serializer):
    row_number = serializers.IntegerField()
    reason = serializers.CharField()
    raw = serializers.JSONField()


class RunQuarantineApi(APIView):
    pagination_class = PageNumberPagination

    @extend_schema(responses=QuarantinedRowOutput(many=True))
    def get(self, request: Request, run_id: int) -> Response:
        run = selectors.run_get(user=request.user, run_id=run_id)
        return _paginate(request, self, selectors.quarantine_list(run=run), QuarantinedRowOutput)


# --- Sources --------------------------------------------------------------------------------

class SourceOutput(serializers.Serializer):
    dataset = serializers.IntegerField(source="dataset_id")
    kind = serializers.CharField()
    connection = serializers.IntegerField(source="connection_id", allow_null=True)
    table = serializers.CharField()
    query = serializers.CharField()
    has_upload = serializers.SerializerMethodField()
    file_format = serializers.CharField()
    encoding = serializers.CharField()
    mapping = serializers.DictField(child=serializers.CharField(), help_text="Source column → field name.")
    watermark_column = serializers.CharField()
    watermark_value = serializers.CharField()
    schedule = serializers.CharField()
    watch_seconds = serializers.IntegerField(allow_null=True, help_text="Checked for changes this often; null: not "
                                                                         "watched.")
    watch_checked_at = serializers.DateTimeField(allow_null=True)
    watch_error = serializers.CharField(help_text="Why the last check could not tell whether the source changed.")
    freshness_minutes = serializers.IntegerField(
        allow_null=True, help_text="Freshness target: the longest a change may take to reach every subscriber.")
    updated_at = serializers.DateTimeField()

    def get_has_upload(self, source: Any) -> bool:
        return bool(source.upload)


class SourceApi(APIView):
    class InputSerializer(serializers.Serializer):
        connection = IdField(required=False, allow_null=True,
                                              help_text="A connection of the department; empty for file uploads.")
        table = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
        query = serializers.CharField(required=False, allow_blank=True, default="")
        file_format = serializers.ChoiceField(choices=FileFormat.choices, required=False, default=FileFormat.CSV)
        encoding = serializers.CharField(required=False, default="utf-8", max_length=32)
        mapping = serializers.DictField(child=serializers.CharField(max_length=63))
        watermark_column = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
        schedule = serializers.CharField(required=False, allow_blank=True, default="", max_length=120,
                                         help_text="Cron expression: minute hour day month weekday.")
        watch_seconds = serializers.IntegerField(
            required=False, allow_null=True, default=None, min_value=1, max_value=10**6,
            help_text="Check the source for changes this often (2 to 86400) and run when it changed: the watermark "
                      "column's maximum for a database, the file for SQLite without one, ETag / Last-Modified for "
                      "a URL. Uploaded files are not watched.")
        freshness_minutes = serializers.IntegerField(
            required=False, allow_null=True, default=None, min_value=0, max_value=10**6,
            help_text="Freshness target (1 to 44640 minutes): when a subscriber's oldest undelivered change is "
                      "older, the stewards of both departments are told.")

    @extend_schema(responses=SourceOutput)
    def get(self, request: Request, dataset_id: int) -> Response:
        return Response(SourceOutput(selectors.source_get(user=request.user, dataset_id=dataset_id)).data)

    @extend_schema(request=InputSerializer, responses=SourceOutput)
    def put(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.source_dataset_get(user=request.user, dataset_id=dataset_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        connection_id = values.pop("connection", None)
        connection = selectors.connection_get(user=request.user, connection_id=connection_id) \
            if connection_id else None
        source = services.source_set(actor=request_user(request), dataset=dataset, connection=connection, **values)
        return Response(SourceOutput(selectors.source_get(user=request.user, dataset_id=source.dataset_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, dataset_id: int) -> Response:
        services.source_delete(actor=request_user(request),
                               source=selectors.source_get(user=request.user, dataset_id=dataset_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SourceUploadApi(APIView):
    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        run = serializers.BooleanField(required=False, default=True, help_text="Ingest the file right away.")
        allow_empty = serializers.BooleanField(
            required=False, default=False,
            help_text="The file may hold no valid row; its run then deletes every record. Without it, such a run "
                      "fails and changes nothing.")

    @extend_schema(request={"multipart/form-data": InputSerializer}, responses={202: RunOutput, 204: None})
    def post(self, request: Request, dataset_id: int) -> Response:
        source = selectors.source_get(user=request.user, dataset_id=dataset_id)
        # Before the body is read: a body far above the limit is refused without spooling it.
        length = request.META.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > settings.SYNC_UPLOAD_MAX_BYTES + 64 * 1024:
            raise PayloadTooLargeError(f"The file is larger than the upload limit of {settings.SYNC_UPLOAD_MAX_BYTES} "
                                       f"bytes (SYNC_UPLOAD_MAX_BYTES).", fields={"file": ["Too large."]})
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = services.source_upload(actor=request_user(request), source=source, upload=data.validated_data["file"],
                                     run=data.validated_data["run"], allow_empty=data.validated_data["allow_empty"])
        if run is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(RunOutput(run).data, status=status.HTTP_202_ACCEPTED)


class RunNowInput(serializers.Serializer):
    mode = serializers.ChoiceField(choices=RunMode.choices, required=False, default=RunMode.FULL)
    allow_empty = serializers.BooleanField(
        required=False, default=False,
        help_text="Full runs only: the source may give no valid row, and the run then deletes every record. "
                  "Without it, such a run fails and changes nothing.")


class SourceRunApi(APIView):
    @extend_schema(request=RunNowInput, responses={202: RunOutput})
    def post(self, request: Request, dataset_id: int) -> Response:
        source = selectors.source_get(user=request.user, dataset_id=dataset_id)
        data = RunNowInput(data=request.data)
        data.is_valid(raise_exception=True)
        run = services.run_now(actor=request_user(request), source=source, mode=data.validated_data["mode"],
                               allow_empty=data.validated_data["allow_empty"])
        return Response(RunOutput(run).data, status=status.HTTP_202_ACCEPTED)


# --- Subscriptions --------------------------------------------------------------------------

class SubscriptionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    dataset = serializers.IntegerField(source="dataset_id")
    dataset_title = serializers.CharField(source="dataset.title")
    department = serializers.CharField(source="department.slug")
    connection = serializers.IntegerField(source="connection_id")
    target = serializers.CharField(source="connection.redacted")
    target_table = serializers.CharField()
    status = serializers.CharField()
    last_seq = serializers.IntegerField()
    delivered_columns = serializers.JSONField()
    purge_on_end = serializers.BooleanField()
    schedule = serializers.CharField()
    created_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    ended_reason = serializers.CharField()
    purged_at = serializers.DateTimeField(allow_null=True)
    purge_error = serializers.CharField(help_text="Why the purge job could not drop the delivered copy; a steward "
                                                  "may purge it again.")
    deliver_on_change = serializers.BooleanField(
        help_text="A delivery is queued as soon as an ingest commits changes to the dataset, besides the schedule.")
    freshness_missed_at = serializers.DateTimeField(
        allow_null=True, help_text="Since when the copy misses the dataset's freshness target; null: within it.")


class SubscriptionDetailOutput(SubscriptionOutput):
    waiting_since = serializers.SerializerMethodField(
        help_text="When the oldest change not yet delivered was read from its source; null when up to date.")
    lag_seconds = serializers.SerializerMethodField(help_text="Seconds since waiting_since; 0 when up to date.")

    def _waiting_since(self, subscription: Subscription) -> datetime | None:
        if not hasattr(subscription, "_waiting_since"):
            subscription._waiting_since = selectors.subscription_waiting_since(  # type: ignore[attr-defined]
                subscription=subscription)
        return subscription._waiting_since  # type: ignore[attr-defined]

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_waiting_since(self, subscription: Subscription) -> str | None:
        since = self._waiting_since(subscription)
        return serializers.DateTimeField().to_representation(since) if since else None

    @extend_schema_field(serializers.FloatField())
    def get_lag_seconds(self, subscription: Subscription) -> float:
        since = self._waiting_since(subscription)
        return round((timezone.now() - since).total_seconds(), 3) if since else 0.0


class SubscriptionListApi(APIView):
    pagination_class = PageNumberPagination

    class InputSerializer(serializers.Serializer):
        dataset = IdField()
        connection = IdField(help_text="A PostgreSQL or SQLite connection of your department.")
        target_table = serializers.RegexField(r"^[a-z_][a-z0-9_]{0,62}$", max_length=63)
        purge_on_end = serializers.BooleanField(required=False, default=False)
        schedule = serializers.CharField(required=False, allow_blank=True, default="", max_length=120)
        deliver_on_change = serializers.BooleanField(required=False, default=False)

    @extend_schema(responses=SubscriptionOutput(many=True))
    def get(self, request: Request) -> Response:
        return _paginate(request, self, selectors.subscription_list(user=request.user), SubscriptionOutput)

    @extend_schema(request=InputSerializer, responses={201: SubscriptionOutput})
    def post(self, request: Request) -> Response:
        from catalog.selectors import dataset_get_for_user

        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        connection = selectors.connection_get(user=request.user, connection_id=data.validated_data["connection"])
        dataset = dataset_get_for_user(user=request.user, dataset_id=data.validated_data["dataset"])
        subscription = services.subscription_create(
            actor=request_user(request), dataset=dataset, department=connection.department, connection=connection,
            target_table=data.validated_data["target_table"], purge_on_end=data.validated_data["purge_on_end"],
            schedule=data.validated_data["schedule"], deliver_on_change=data.validated_data["deliver_on_change"])
        return Response(SubscriptionDetailOutput(subscription).data, status=status.HTTP_201_CREATED)


class SubscriptionDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        schedule = serializers.CharField(required=False, allow_blank=True, max_length=120)
        purge_on_end = serializers.BooleanField(required=False)
        paused = serializers.BooleanField(required=False)
        deliver_on_change = serializers.BooleanField(required=False)

    class DeleteFilter(serializers.Serializer):
        purge = serializers.BooleanField(required=False, default=False)

    @extend_schema(responses=SubscriptionDetailOutput)
    def get(self, request: Request, subscription_id: int) -> Response:
        return Response(SubscriptionDetailOutput(selectors.subscription_get(user=request.user,
                                                                            subscription_id=subscription_id)).data)

    @extend_schema(request=InputSerializer, responses=SubscriptionDetailOutput)
    def patch(self, request: Request, subscription_id: int) -> Response:
        subscription = selectors.subscription_get(user=request.user, subscription_id=subscription_id, manage=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subscription = services.subscription_update(actor=request_user(request), subscription=subscription,
                                                    **data.validated_data)
        return Response(SubscriptionDetailOutput(subscription).data)

    @extend_schema(parameters=[OpenApiParameter("purge", bool, description="Also drop the delivered copy.")],
                   responses={204: None})
    def delete(self, request: Request, subscription_id: int) -> Response:
        subscription = selectors.subscription_get(user=request.user, subscription_id=subscription_id, manage=True)
        purge = self.DeleteFilter(data=request.query_params)
        purge.is_valid(raise_exception=True)
        services.subscription_delete(actor=request_user(request), subscription=subscription,
                                     purge=purge.validated_data["purge"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class SubscriptionRunApi(APIView):
    @extend_schema(request=None, responses={202: RunOutput})
    def post(self, request: Request, subscription_id: int) -> Response:
        subscription = selectors.subscription_get(user=request.user, subscription_id=subscription_id, manage=True)
        run = services.run_now(actor=request_user(request), subscription=subscription)
        return Response(RunOutput(run).data, status=status.HTTP_202_ACCEPTED)


class SubscriptionEndApi(APIView):
    class InputSerializer(serializers.Serializer):
        purge = serializers.BooleanField(required=False, default=False,
                                         help_text="Also drop the delivered copy once it has ended. If dropping "
                                                   "fails, it has ended all the same: error code ended_copy_kept.")

    @extend_schema(request=InputSerializer, responses=SubscriptionOutput)
    def post(self, request: Request, subscription_id: int) -> Response:
        """End the subscription and keep it, with its delivery history; DELETE removes it."""
        subscription = selectors.subscription_get(user=request.user, subscription_id=subscription_id, manage=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subscription = services.subscription_end(actor=request_user(request), subscription=subscription,
                                                 purge=data.validated_data["purge"])
        return Response(SubscriptionOutput(subscription).data)


class SubscriptionPurgeApi(APIView):
    @extend_schema(request=None, responses=SubscriptionOutput)
    def post(self, request: Request, subscription_id: int) -> Response:
        subscription = selectors.subscription_get(user=request.user, subscription_id=subscription_id, manage=True)
        subscription = services.subscription_purge(actor=request_user(request), subscription=subscription)
        return Response(SubscriptionOutput(subscription).data)
