"""Reads of the catalogue, always scoped to what the asking user may see.

Who sees a dataset's metadata (``dataset_visible_q`` is the one place that says it):

* members of the owning department, whatever its status;
* everyone signed in, once it is published or deprecated with ``visibility=city``;
* for a restricted published/deprecated dataset, whoever holds guardian's
  ``catalog.view_dataset`` on it, directly or through a department group (the grants code
  assigns and removes it as grants become active or end);
* governance reviewers and data protection officers, while the dataset or one of its schema
  versions is in review;
* operators (staff) and city auditors, everything (metadata only).

Retired datasets are seen by the owning department and the auditors only. Anonymous callers
(CKAN and DCAT endpoints) see published/deprecated, city-visible datasets under an open licence.
Everyone else gets 404, in every list, detail, search and export.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce
from guardian.models import GroupObjectPermission, UserObjectPermission

from catalog.models import (
    Dataset,
    DatasetQuality,
    DatasetStatus,
    DatasetTransition,
    Field,
    Licence,
    SchemaStatus,
    SchemaVersion,
    Sensitivity,
    Visibility,
)
from config.api.errors import NotFoundError, PermissionDeniedError
from departments.models import Role
from departments.selectors import principal_of

LISTED = (DatasetStatus.PUBLISHED, DatasetStatus.DEPRECATED)
OPEN_LICENCES = tuple(v for v in Licence.values if v != Licence.CITY_INTERNAL)

UserLike = User | AnonymousUser


def _view_permission_ids(user: User) -> Q:
    """Datasets on which the user, or one of the user's groups, holds catalog.view_dataset."""
    common = {"content_type__app_label": "catalog", "content_type__model": "dataset",
              "permission__codename": "view_dataset"}
    # guardian keeps object ids as text; the cast is safe because the rows are filtered to
    # the dataset content type, whose ids are all integers.
    direct = UserObjectPermission.objects.filter(user_id=user.pk, **common).values(
        pk_int=Cast("object_pk", IntegerField()))
    via_group = GroupObjectPermission.objects.filter(group__user=user.pk, **common).values(
        pk_int=Cast("object_pk", IntegerField()))
    return Q(pk__in=Subquery(direct)) | Q(pk__in=Subquery(via_group))


def dataset_visible_q(user: UserLike) -> Q | None:
    """The filter of datasets whose metadata the user may see; None means all of them."""
    if not user.is_authenticated:
        return Q(status__in=LISTED, visibility=Visibility.CITY, licence__in=OPEN_LICENCES)
    p = principal_of(user)
    if p.is_staff or p.is_city_auditor:
        return None
    assert isinstance(user, User)
    q = Q(department_id__in=p.department_ids) | Q(status__in=LISTED, visibility=Visibility.CITY)
    q |= Q(status__in=LISTED, visibility=Visibility.RESTRICTED) & _view_permission_ids(user)
    if p.is_reviewer or p.is_dpo:
        q |= Q(status=DatasetStatus.IN_REVIEW) | Q(Exists(
            SchemaVersion.objects.filter(dataset=OuterRef("pk"), status=SchemaStatus.IN_REVIEW)))
    if p.is_dpo:
        # A data protection officer second-approves access to any published dataset, restricted
        # ones included, so they must be able to read what they approve. Metadata only: records
        # still need a grant.
        q |= Q(status__in=LISTED)
    return q


# The search columns are written by the services and read by the database's search only;
# the tsvector alone is larger than the rest of a row, and every read would parse it.
SEARCH_COLUMNS = ("search_terms", "search_text", "search_vector")


def dataset_visible(*, user: UserLike) -> QuerySet[Dataset]:
    q = dataset_visible_q(user)
    qs = Dataset.objects.defer(*SEARCH_COLUMNS)
    return qs if q is None else qs.filter(q)


def dataset_get_for_user(*, user: UserLike, dataset_id: int, write: bool = False) -> Dataset:
    """Fetch a dataset and check the user's right to it: 404 when the user may not know it
    exists, 403 with ``write=True`` when they see it but are not a steward of its owner."""
    dataset = (
        dataset_visible(user=user)
        .select_related("department", "contact", "current_schema", "created_by")
        .filter(pk=dataset_id).first()
    )
    if dataset is None:
        raise NotFoundError("No such dataset.")
    if write and not is_owner_steward(user=user, dataset=dataset):
        raise PermissionDeniedError("Only stewards of the owning department may change this dataset.")
    return dataset


def is_owner_steward(*, user: UserLike | None, dataset: Dataset) -> bool:
    if user is None or not user.is_authenticated:
        return False
    if not principal_of(user).has_role(dataset.department_id, Role.STEWARD):
        return False
    # The department group holds catalog.change_dataset on each of its datasets (given at
    # creation); a steward acts through it, so revoking it stops edits without a role change.
    return user.has_perm("catalog.change_dataset", dataset)


def can_see_work_in_progress(*, user: UserLike, dataset: Dataset) -> bool:
    """Drafts and reviews of schema versions are for the owner, reviewers and auditors."""
    if not user.is_authenticated:
        return False
    p = principal_of(user)
    return (dataset.department_id in p.department_ids or p.is_reviewer or p.is_dpo or p.is_staff
            or p.is_city_auditor)


# --- Lists, search and facets ------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetFilters:
    q: str = ""
    department: str = ""
    theme: str = ""
    sensitivity: str = ""
    status: str = ""
    licence: str = ""
    keyword: str = ""
    visibility: str = ""


def json_element(value: str) -> str:
    """How one string of a JSON list appears in the list's JSON text (for icontains)."""
    return json.dumps(value)


def _with_sensitivity(sensitivity: str) -> Q:
    in_current = Exists(Field.objects.filter(schema_id=OuterRef("current_schema_id"), sensitivity=sensitivity))
    in_draft = Exists(Field.objects.filter(schema__dataset=OuterRef("pk"), sensitivity=sensitivity))
    return Q(in_current) | Q(current_schema__isnull=True) & Q(in_draft)


def _apply_filters(qs: QuerySet[Dataset], f: DatasetFilters) -> QuerySet[Dataset]:
    if f.department:
        qs = qs.filter(Q(department__slug=f.department) | Q(department__code=f.department))
    if f.theme:
        qs = qs.filter(themes__icontains=json_element(f.theme.upper()))
    if f.keyword:
        qs = qs.filter(keywords__icontains=json_element(f.keyword))
    if f.sensitivity:
        qs = qs.filter(_with_sensitivity(f.sensitivity))
    if f.status:
        qs = qs.filter(status=f.status)
    if f.licence:
        qs = qs.filter(licence=f.licence)
    if f.visibility:
        qs = qs.filter(visibility=f.visibility)
    return qs


def _search(qs: QuerySet[Dataset], q: str) -> QuerySet[Dataset]:
    """Full-text match and rank: title (A) above keywords and field names (B) above the
    description and field descriptions (C)."""
    if connection.vendor == "postgresql":
        query = SearchQuery(q, search_type="websearch", config="english")
        return qs.filter(search_vector=query).annotate(rank=SearchRank(F("search_vector"), query))
    terms = [t for t in q.split() if t.strip('"')][:10]
    rank: Any = Value(0.0)
    for raw in terms:
        term = raw.strip('"')
        qs = qs.filter(Q(title__icontains=term) | Q(search_terms__icontains=term) | Q(search_text__icontains=term))
        rank = rank + Case(When(title__icontains=term, then=Value(1.0)), default=Value(0.0)) \
            + Case(When(search_terms__icontains=term, then=Value(0.4)), default=Value(0.0)) \
            + Case(When(search_text__icontains=term, then=Value(0.2)), default=Value(0.0))
    return qs.annotate(rank=rank)


def dataset_list(*, user: UserLike, filters: DatasetFilters | None = None) -> QuerySet[Dataset]:
    """Visible datasets matching the filters, joined for listing, best match first when searching."""
    f = filters or DatasetFilters()
    qs = _apply_filters(dataset_visible(user=user), f)
    field_count = Field.objects.filter(schema_id=OuterRef("current_schema_id")).order_by().values(
        "schema_id").annotate(n=Count("id")).values("n")
    qs = qs.select_related("department", "contact", "current_schema").annotate(
        field_count=Coalesce(Subquery(field_count), 0))
    if f.q.strip():
        return _search(qs, f.q.strip()[:200]).order_by(F("rank").desc(), "title", "id")
    return qs.order_by("title", "id")


def dataset_list_with_schema(*, user: UserLike, filters: DatasetFilters | None = None) -> QuerySet[Dataset]:
    """As :func:`dataset_list`, with the current schema's fields prefetched (exports)."""
    return dataset_list(user=user, filters=filters).prefetch_related(
        Prefetch("current_schema__fields", queryset=Field.objects.order_by("position")))


def dataset_facets(qs: QuerySet[Dataset]) -> dict[str, list[dict[str, Any]]]:
    """Counts per department, theme, status, licence and sensitivity class of a result set,
    in two queries whatever its size."""
    rows = list(qs.order_by().values_list("department__slug", "department__name", "status", "licence", "themes",
                                          "current_schema_id", "pk"))
    departments: Counter[tuple[str, str]] = Counter()
    statuses: Counter[str] = Counter()
    licences: Counter[str] = Counter()
    themes: Counter[str] = Counter()
    for slug, name, status, licence, dataset_themes, _, _ in rows:
        departments[(slug, name)] += 1
        statuses[status] += 1
        licences[licence] += 1
        themes.update(set(dataset_themes or []))
    schema_ids = [r[5] for r in rows if r[5]]
    drafts = [r[6] for r in rows if not r[5]]
    pairs = set(Field.objects.filter(Q(schema_id__in=schema_ids) | Q(schema__dataset_id__in=drafts)).values_list(
        "schema__dataset_id", "sensitivity").distinct())
    sensitivities = Counter(s for _, s in pairs)
    return {
        "department": [{"value": slug, "label": name, "count": n}
                       for (slug, name), n in sorted(departments.items(), key=lambda i: (-i[1], i[0][0]))],
        "theme": _facet(themes),
        "status": _facet(statuses),
        "licence": _facet(licences),
        "sensitivity": [{"value": s, "label": s, "count": sensitivities[s]} for s in Sensitivity.values
                        if sensitivities[s]],
    }


def _facet(counter: Counter[str]) -> list[dict[str, Any]]:
    return [{"value": v, "label": v, "count": n} for v, n in sorted(counter.items(), key=lambda i: (-i[1], i[0]))]


# --- Schema, versions, timeline, review queue --------------------------------------------------

def working_schema(*, user: UserLike, dataset: Dataset) -> SchemaVersion | None:
    """The schema the user should look at: the version being prepared or reviewed for those who
    work on it, else the current (published) one."""
    if can_see_work_in_progress(user=user, dataset=dataset):
        latest = (SchemaVersion.objects.filter(dataset=dataset).exclude(status=SchemaStatus.SUPERSEDED)
                  .prefetch_related("fields").order_by("-number").first())
        if latest is not None:
            return latest
    if dataset.current_schema_id is None:
        return None
    return SchemaVersion.objects.prefetch_related("fields").get(pk=dataset.current_schema_id)


def schema_version_list(*, user: UserLike, dataset: Dataset) -> list[SchemaVersion]:
    qs = SchemaVersion.objects.filter(dataset=dataset).prefetch_related(
        Prefetch("fields", queryset=Field.objects.order_by("position"))).order_by("number")
    if not can_see_work_in_progress(user=user, dataset=dataset):
        qs = qs.filter(status__in=(SchemaStatus.PUBLISHED, SchemaStatus.SUPERSEDED))
    return list(qs)


def dataset_timeline(*, dataset: Dataset) -> QuerySet[DatasetTransition]:
    return DatasetTransition.objects.filter(dataset=dataset).select_related("actor").order_by(
        "created_at", "id")


def review_queue(*, user: UserLike) -> QuerySet[Dataset]:
    """Datasets waiting on a governance decision: their first publication or a schema version."""
    p = principal_of(user)
    if not (p.is_reviewer or p.is_dpo):
        raise PermissionDeniedError("Only governance reviewers and data protection officers have a review queue.")
    submitted = DatasetTransition.objects.filter(dataset=OuterRef("pk"), action="submit").order_by(
        "-created_at", "-id")
    return (
        Dataset.objects.filter(Q(status=DatasetStatus.IN_REVIEW) | Q(Exists(
            SchemaVersion.objects.filter(dataset=OuterRef("pk"), status=SchemaStatus.IN_REVIEW))))
        .select_related("department", "current_schema")
        .annotate(
            submitted_by_id=Subquery(submitted.values("actor_id")[:1]),
            submitted_by_name=Subquery(submitted.values("actor__username")[:1]),
            submitted_at=Subquery(submitted.values("created_at")[:1]),
            review_version=Subquery(SchemaVersion.objects.filter(
                dataset=OuterRef("pk"), status=SchemaStatus.IN_REVIEW).order_by("-number").values("number")[:1]),
        )
        .order_by("submitted_at", "id")
    )


def dataset_published_list(*, user: UserLike, filters: DatasetFilters | None = None) -> QuerySet[Dataset]:
    """What the DCAT and CKAN exports show: published or deprecated datasets the user may see,
    with their current schema's fields and their measured quality."""
    return dataset_list_with_schema(user=user, filters=filters).filter(status__in=LISTED).select_related("quality")


def dataset_published_get(*, user: UserLike, dataset_id: int) -> Dataset:
    dataset = dataset_published_list(user=user).filter(pk=dataset_id).first()
    if dataset is None:
        raise NotFoundError("No such dataset.")
    return dataset


def dataset_quality(dataset: Dataset) -> DatasetQuality | None:
    """The dataset's measured quality (its last ingest run that evaluated rules), if any (no
    query when the dataset was read with it, as ``dataset_published_list`` reads them). The
    caller has checked that the user may see the dataset."""
    try:
        return dataset.quality  # type: ignore[no-any-return]
    except DatasetQuality.DoesNotExist:
        return None
