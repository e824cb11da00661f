"""The catalogue API: datasets, their schemas and versions, the workflow, search and the
review queue. Every view fetches through ``selectors.dataset_get_for_user`` or a scoped list,
and writes through one service."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import selectors, services
from catalog.models import (
    Dataset,
    DatasetStatus,
    DatasetTransition,
    FieldType,
    Licence,
    SchemaVersion,
    Sensitivity,
    Theme,
    UpdateFrequency,
    Visibility,
)
from config.api.auth import request_user
from config.api.errors import ApplicationError
from config.api.pagination import PageNumberPagination
from departments.selectors import department_list, user_by_username

# --- Shared output shapes ----------------------------------------------------------------------


class DepartmentRefOutput(serializers.Serializer):
    slug = serializers.CharField()
    code = serializers.CharField()
    name = serializers.CharField()


class PersonRefOutput(serializers.Serializer):
    username = serializers.CharField()
    full_name = serializers.CharField(source="get_full_name")
    email = serializers.EmailField()


class DatasetSummaryOutput(serializers.ModelSerializer):
    department = DepartmentRefOutput()
    version = serializers.IntegerField(read_only=True)
    field_count = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = Dataset
        fields = [
            "id", "slug", "title", "description", "department", "status", "visibility", "themes", "keywords",
            "licence", "update_frequency", "version", "field_count", "published_at", "modified_at",
        ]


class FieldOutput(serializers.Serializer):
    position = serializers.IntegerField()
    name = serializers.CharField()
    type = serializers.CharField()
    sensitivity = serializers.CharField()
    description = serializers.CharField()
    unit = serializers.CharField()
    nullable = serializers.BooleanField()
    is_key = serializers.BooleanField()
    renamed_from = serializers.CharField()


class SchemaVersionOutput(serializers.ModelSerializer):
    status = serializers.CharField(help_text="draft, in_review, changes_requested, published or superseded.")
    change_kind = serializers.CharField(help_text="initial, none, additive or breaking.")
    fields = FieldOutput(many=True)  # type: ignore[assignment]
    rules = serializers.ListField(child=serializers.DictField(),
                                 help_text="Quality rules of this version (see the API docs: Quality rules).")

    class Meta:
        model = SchemaVersion
        fields = ["number", "status", "change_kind", "changes", "note", "created_at", "published_at", "fields",
                  "rules"]


class PendingSchemaOutput(serializers.Serializer):
    number = serializers.IntegerField()
    status = serializers.CharField()
    change_kind = serializers.CharField()


class QualityOutput(serializers.Serializer):
    score = serializers.FloatField(allow_null=True, help_text="0-100: the share of rule checks the last run passed.")
    checked_at = serializers.DateTimeField(allow_null=True)
    run = serializers.IntegerField(allow_null=True, source="run_id")
    results = serializers.ListField(child=serializers.DictField(),
                                    help_text="Each rule's result in that run: checked and failed records.")
    trend = serializers.ListField(child=serializers.DictField(), help_text="The last scores, oldest first.")


class DatasetDetailOutput(DatasetSummaryOutput):
    contact = PersonRefOutput(allow_null=True)
    quality = serializers.SerializerMethodField()
    pending_schema = PendingSchemaOutput(allow_null=True)
    allowed_actions = serializers.ListField(
        child=serializers.CharField(), help_text="The workflow actions you may take now.")
    links = inline_serializer("DatasetLinks", fields={
        "schema": serializers.CharField(), "timeline": serializers.CharField(),
        "dcat_turtle": serializers.CharField(), "dcat_jsonld": serializers.CharField(),
        "records": serializers.CharField(),
    })

    class Meta(DatasetSummaryOutput.Meta):
        fields = [*DatasetSummaryOutput.Meta.fields, "temporal_start", "temporal_end", "spatial", "contact",
                  "created_at", "pending_schema", "allowed_actions", "links", "quality"]

    @extend_schema_field(QualityOutput(allow_null=True))
    def get_quality(self, dataset: Dataset) -> dict[str, Any] | None:
        quality = selectors.dataset_quality(dataset)
        return dict(QualityOutput(quality).data) if quality is not None else None


def detail_data(*, user: Any, dataset: Dataset) -> dict[str, Any]:
    pending = services.pending_schema_version(dataset)
    show_pending = pending is not None and selectors.can_see_work_in_progress(user=user, dataset=dataset)
    dataset.pending_schema = pending if show_pending else None  # type: ignore[attr-defined]
    dataset.allowed_actions = services.transitions_for_user(  # type: ignore[attr-defined]
        user=user, dataset=dataset, pending=pending)
    base = f"/api/v1/datasets/{dataset.pk}/"
    dataset.links = {  # type: ignore[attr-defined]
        "schema": f"{base}schema/", "timeline": f"{base}timeline/",
        "dcat_turtle": f"/datasets/{dataset.pk}.ttl", "dcat_jsonld": f"/datasets/{dataset.pk}.jsonld",
        "records": f"{settings.SITE_URL}{base}records/",
    }
    if not hasattr(dataset, "field_count"):
        dataset.field_count = (  # type: ignore[attr-defined]
            dataset.current_schema.fields.count() if dataset.current_schema else 0)
    return dict(DatasetDetailOutput(dataset).data)


def _page(name: str, item: serializers.Serializer, **extra: serializers.Field) -> serializers.Serializer:
    return inline_serializer(name, fields={
        "count": serializers.IntegerField(), "next": serializers.CharField(allow_null=True),
        "previous": serializers.CharField(allow_null=True), "results": item, **extra,
    })


class FilterSerializer(serializers.Serializer):
    q = serializers.CharField(required=False, allow_blank=True, max_length=200, help_text="Full-text search.")
    department = serializers.CharField(required=False, allow_blank=True, max_length=80,
                                       help_text="Department slug or code.")
    theme = serializers.ChoiceField(choices=Theme.choices, required=False)
    sensitivity = serializers.ChoiceField(choices=Sensitivity.choices, required=False,
                                          help_text="Datasets having a field of this class.")
    status = serializers.ChoiceField(choices=DatasetStatus.choices, required=False)
    licence = serializers.ChoiceField(choices=Licence.choices, required=False)
    keyword = serializers.CharField(required=False, allow_blank=True, max_length=60)
    visibility = serializers.ChoiceField(choices=Visibility.choices, required=False)
    page = serializers.IntegerField(required=False, min_value=1)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500)


def _filters(request: Request) -> selectors.DatasetFilters:
    data = FilterSerializer(data=request.query_params)
    data.is_valid(raise_exception=True)
    values = {k: v for k, v in data.validated_data.items() if k not in ("page", "page_size")}
    return selectors.DatasetFilters(**values)


def _paginate(request: Request, view: APIView, qs: Any) -> tuple[PageNumberPagination, list[Any]]:
    paginator = PageNumberPagination()
    return paginator, list(paginator.paginate_queryset(qs, request, view=view) or [])


# --- Datasets ----------------------------------------------------------------------------------

class DatasetMetadataInput(serializers.Serializer):
    # Shapes only; the service validates the values (choices, themes, contact membership).
    title = serializers.CharField(max_length=200)
    slug = serializers.CharField(max_length=100)
    description = serializers.CharField()
    themes = serializers.ListField(child=serializers.CharField(max_length=8), required=False,
                                   help_text=", ".join(Theme.values))
    keywords = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    licence = serializers.CharField(max_length=32, required=False, help_text=", ".join(Licence.values))
    update_frequency = serializers.CharField(max_length=16, required=False,
                                             help_text=", ".join(UpdateFrequency.values))
    temporal_start = serializers.DateField(required=False, allow_null=True)
    temporal_end = serializers.DateField(required=False, allow_null=True)
    spatial = serializers.CharField(max_length=200, required=False, allow_blank=True)
    contact = serializers.CharField(max_length=150, required=False, help_text="Username of the contact.")
    visibility = serializers.CharField(max_length=16, required=False, help_text=", ".join(Visibility.values))


class DatasetListApi(APIView):
    class InputSerializer(DatasetMetadataInput):
        department = serializers.CharField(max_length=80, help_text="Slug of the owning department.")

    @extend_schema(operation_id="datasets_list", parameters=[FilterSerializer],
                   responses=_page("DatasetPage", DatasetSummaryOutput(many=True)))
    def get(self, request: Request) -> Response:
        qs = selectors.dataset_list(user=request.user, filters=_filters(request))
        paginator, page = _paginate(request, self, qs)
        return paginator.get_paginated_response(DatasetSummaryOutput(page, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: DatasetDetailOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        department = department_list(user=request.user).filter(slug=values.pop("department")).first()
        if department is None:
            raise ApplicationError("No such department.", fields={"department": ["Unknown department."]})
        if "contact" in values:
            values["contact"] = _contact(values["contact"])
        dataset = services.dataset_create(actor=request.user, department=department, **values)
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset.pk)
        return Response(detail_data(user=request.user, dataset=dataset), status=status.HTTP_201_CREATED)


def _contact(username: str) -> User:
    user = user_by_username(username=username)
    if user is None:
        raise ApplicationError("No active user with that username.", fields={"contact": ["Unknown user."]})
    return user


class DatasetDetailApi(APIView):
    class InputSerializer(DatasetMetadataInput):
        """Any subset of the metadata (a partial update)."""

    @extend_schema(responses=DatasetDetailOutput)
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        return Response(detail_data(user=request.user, dataset=dataset))

    @extend_schema(request=InputSerializer, responses=DatasetDetailOutput)
    def patch(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id, write=True)
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        if "contact" in changes:
            changes["contact"] = _contact(changes["contact"])
        services.dataset_update(actor=request.user, dataset=dataset, **changes)
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        return Response(detail_data(user=request.user, dataset=dataset))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id, write=True)
        services.dataset_delete(actor=request.user, dataset=dataset)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Schema ------------------------------------------------------------------------------------

class DatasetSchemaApi(APIView):
    """The working schema: the version being prepared or reviewed (for the owner department,
    reviewers and auditors), else the current published one."""

    class FieldInputSerializer(serializers.Serializer):
        # Deliberately lenient: the service checks names, types, sensitivity and the key, and
        # reports every problem at once under ``fields[i].attribute``.
        name = serializers.CharField(allow_blank=True, max_length=200)
        type = serializers.CharField(allow_blank=True, max_length=32, help_text=", ".join(FieldType.values))
        sensitivity = serializers.CharField(required=False, allow_blank=True, max_length=32,
                                            help_text=", ".join(Sensitivity.values))
        description = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        unit = serializers.CharField(required=False, allow_blank=True, max_length=100)
        nullable = serializers.BooleanField(required=False)
        is_key = serializers.BooleanField(required=False)
        renamed_from = serializers.CharField(required=False, allow_blank=True, max_length=63,
                                             help_text="For a rename in a new version: the old name.")

    class InputSerializer(serializers.Serializer):
        fields = serializers.ListField(child=serializers.DictField(), allow_empty=True)  # type: ignore[assignment]
        note = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        rules = serializers.ListField(child=serializers.DictField(), required=False, max_length=50)

    @extend_schema(responses={200: SchemaVersionOutput, 204: None})
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        version = selectors.working_schema(user=request.user, dataset=dataset)
        if version is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(SchemaVersionOutput(version).data)

    @extend_schema(
        request=inline_serializer("DatasetSchemaPut", fields={
            "fields": FieldInputSerializer(many=True),
            "note": serializers.CharField(required=False, allow_blank=True),
            "rules": serializers.ListField(
                child=serializers.DictField(), required=False,
                help_text="Quality rules (left out: kept as they are). Per field: not_null, unique, range "
                          "(min/max), allowed (values), pattern, max_length, reference (dataset); per dataset: "
                          "row_count (min/max), freshness (field, max_age_hours); severity blocking or warning."),
        }),
        responses=SchemaVersionOutput,
    )
    def put(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        specs: list[dict[str, Any]] = []
        errors: dict[str, list[str]] = {}
        for i, raw in enumerate(data.validated_data["fields"]):
            field = self.FieldInputSerializer(data=raw)
            if field.is_valid():
                specs.append(dict(field.validated_data))
            else:
                for key, messages in field.errors.items():
                    errors[f"fields[{i}].{key}"] = [str(m) for m in messages]
        if errors:
            raise ApplicationError("The schema is not valid.", fields=errors)
        version = services.dataset_schema_set(actor=request.user, dataset=dataset, fields=specs,
                                              note=data.validated_data.get("note", ""),
                                              rules=data.validated_data.get("rules"))
        version = SchemaVersion.objects.prefetch_related("fields").get(pk=version.pk)
        return Response(SchemaVersionOutput(version).data)


class SchemaVersionListApi(APIView):
    class OutputSerializer(SchemaVersionOutput):
        diff = serializers.ListField(child=serializers.DictField(),
                                     help_text="Changes against the version before it.")
        diff_kind = serializers.CharField()

        class Meta(SchemaVersionOutput.Meta):
            fields = [*SchemaVersionOutput.Meta.fields, "diff", "diff_kind"]

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        versions = selectors.schema_version_list(user=request.user, dataset=dataset)
        previous: list[Any] = []
        for version in versions:
            fields = list(version.fields.all())
            version.diff_kind, version.diff = services.classify_changes(  # type: ignore[attr-defined]
                previous, fields)
            previous = fields
        return Response(self.OutputSerializer(versions, many=True).data)


# --- Workflow ----------------------------------------------------------------------------------

class DatasetTransitionApi(APIView):
    """Take a workflow step. Once the dataset is published, submit / approve /
    request_changes / withdraw / revise / discard apply to its pending schema version."""

    class InputSerializer(serializers.Serializer):
        action = serializers.ChoiceField(choices=services.ALL_ACTIONS)
        comment = serializers.CharField(required=False, allow_blank=True, max_length=4000)

    @extend_schema(request=InputSerializer, responses=DatasetDetailOutput)
    def post(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The answer describes the dataset as the step left it, even where the step takes it out
        # of the actor's sight (a reviewer sends it back to its owners).
        dataset = services.dataset_transition(actor=request.user, dataset=dataset,
                                              action=data.validated_data["action"],
                                              comment=data.validated_data.get("comment", ""))
        return Response(detail_data(user=request.user, dataset=dataset))


class DatasetTimelineApi(APIView):
    class OutputSerializer(serializers.ModelSerializer):
        actor: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True)
        schema_version = serializers.IntegerField(source="schema_number", allow_null=True)

        class Meta:
            model = DatasetTransition
            fields = ["id", "action", "from_status", "to_status", "actor", "comment", "schema_version", "created_at"]

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        return Response(self.OutputSerializer(selectors.dataset_timeline(dataset=dataset), many=True).data)


# --- Search and review -------------------------------------------------------------------------

FacetOutput = inline_serializer("Facet", fields={
    "value": serializers.CharField(), "label": serializers.CharField(), "count": serializers.IntegerField()},
    many=True)


class SearchApi(APIView):
    class OutputSerializer(DatasetSummaryOutput):
        rank = serializers.FloatField(default=None, allow_null=True)

        class Meta(DatasetSummaryOutput.Meta):
            fields = [*DatasetSummaryOutput.Meta.fields, "rank"]

    @extend_schema(
        parameters=[FilterSerializer],
        responses=_page("SearchPage", OutputSerializer(many=True), facets=inline_serializer("Facets", fields={
            "department": FacetOutput, "theme": FacetOutput, "status": FacetOutput, "licence": FacetOutput,
            "sensitivity": FacetOutput,
        })),
    )
    def get(self, request: Request) -> Response:
        qs = selectors.dataset_list(user=request.user, filters=_filters(request))
        paginator, page = _paginate(request, self, qs)
        response = paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)
        response.data["facets"] = selectors.dataset_facets(qs)
        return response


class ReviewQueueApi(APIView):
    class OutputSerializer(DatasetSummaryOutput):
        kind = serializers.SerializerMethodField()
        review_version = serializers.IntegerField(allow_null=True)
        submitted_by = serializers.CharField(source="submitted_by_name", allow_null=True)
        submitted_at = serializers.DateTimeField(allow_null=True)
        you_submitted = serializers.SerializerMethodField()

        class Meta(DatasetSummaryOutput.Meta):
            fields = [*DatasetSummaryOutput.Meta.fields, "kind", "review_version", "submitted_by", "submitted_at",
                      "you_submitted"]

        def get_kind(self, obj: Dataset) -> str:
            return "dataset" if obj.status == DatasetStatus.IN_REVIEW else "schema_version"

        def get_you_submitted(self, obj: Dataset) -> bool:
            return bool(obj.submitted_by_id == self.context["user_id"])  # type: ignore[attr-defined]

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        user = request_user(request)
        qs = selectors.review_queue(user=user)
        return Response(self.OutputSerializer(qs, many=True, context={"user_id": user.pk}).data)
