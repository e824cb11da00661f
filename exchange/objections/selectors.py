"""Reads about objections, always scoped to what the asking user may see.

An objection is seen by the person who raised it, the stewards and analysts of the department
that raised it (if they may see the dataset), every member of the department that owns the
dataset, the governance reviewers (those about datasets they may see, and every escalated one,
which they answer) and city auditors. Anyone else gets 404, never 403.

Record values are never stored with an objection: :func:`objection_records` reads the named
records through the reader's own effective view, so the objector sees masked values masked
and the owning stewards see them in clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet
from django.utils import timezone

from catalog.models import Dataset
from catalog.selectors import dataset_visible
from config.api.errors import ApplicationError, NotFoundError, PermissionDeniedError
from departments.models import CityRole, Department, Role
from departments.selectors import Principal, principal_of
from exchange.access.policy import EffectiveView, effective_view
from exchange.objections.models import Objection, ObjectionStatus
from exchange.records.selectors import read_page

AnyUser = User | AnonymousUser

# The roles of the objecting department who see its objections: those who read the data.
OBJECTING_ROLES = (Role.STEWARD, Role.ANALYST)


def _base() -> QuerySet[Objection]:
    return Objection.objects.select_related("dataset", "dataset__department", "department", "raised_by",
                                            "answered_by")


def _sees_all(p: Principal) -> bool:
    return p.is_city_auditor


def _visible_q(user: User, p: Principal, user_id: int) -> Q:
    # Colleagues of the objector see it only if they may see the dataset itself: an objection
    # made under a personal grant must not show a restricted dataset to the rest of the
    # department. The objector keeps seeing their own, whatever became of their grant.
    visible_dataset = Q(dataset_id__in=dataset_visible(user=user).values("pk"))
    departments = Q(department_id__in=p.departments_where(*OBJECTING_ROLES)) | Q(
        dataset__department_id__in=p.department_ids)
    q = Q(raised_by_id=user_id) | (departments & visible_dataset)
    if p.is_reviewer:
        # Reviewers oversee the objections to every dataset they may see, and answer the
        # overdue ones, whichever dataset they concern (a restricted one's title included).
        q |= visible_dataset | Q(escalated_at__isnull=False)
    return q


def objection_list(*, user: AnyUser, scope: str = "all", status: str = "", dataset_id: int | None = None,
                   kind: str = "", escalated: bool | None = None) -> QuerySet[Objection]:
    """Objections the user may see, newest first. ``scope``: ``raised`` (by the user's
    departments, or the user), ``received`` (about their departments' datasets), ``all``."""
    p = principal_of(user)
    user_id = p.user_id
    if user_id is None:
        return Objection.objects.none()
    qs = _base()
    if not _sees_all(p):
        assert isinstance(user, User)
        qs = qs.filter(_visible_q(user, p, user_id))
    if scope == "raised":
        qs = qs.filter(Q(raised_by_id=user_id) | Q(department_id__in=p.departments_where(*OBJECTING_ROLES)))
    elif scope == "received":
        qs = qs.filter(dataset__department_id__in=p.department_ids)
    if status:
        qs = qs.filter(status=status)
    if dataset_id is not None:
        qs = qs.filter(dataset_id=dataset_id)
    if kind:
        qs = qs.filter(kind=kind)
    if escalated is not None:
        qs = qs.filter(escalated_at__isnull=not escalated)
    return qs.order_by("-created_at", "-id")


def objection_get(*, user: AnyUser, objection_id: int) -> Objection:
    """Fetch an objection the user may see (404 otherwise), with its timeline."""
    objection = (objection_list(user=user).prefetch_related("events", "events__actor")
                 .filter(pk=objection_id).first())
    if objection is None:
        raise NotFoundError("No such objection.")
    return objection


def keys_shown(p: Principal, objection: Objection) -> bool:
    """Whether the objection's record keys (values of the dataset's key field) are shown to
    this principal: to those who read the dataset's records (the objector, the stewards and
    analysts of the objecting department, the owning department), not to reviewers and auditors
    who see the objection but none of the dataset's values; they see how many were named."""
    return (objection.raised_by_id == p.user_id or objection.dataset.department_id in p.department_ids
            or objection.department_id in p.departments_where(*OBJECTING_ROLES))


def open_objections_of(*, user: AnyUser, dataset: Dataset) -> list[Objection]:
    """For the dataset page: the open objections to it that the user may see."""
    return list(objection_list(user=user, dataset_id=dataset.pk, status=ObjectionStatus.OPEN))


def is_overdue(objection: Objection) -> bool:
    return objection.status == ObjectionStatus.OPEN and objection.due_at <= timezone.now()


def key_field(view: EffectiveView) -> str | None:
    """The dataset's first key field, if the view shows it in clear: records are named by it."""
    for name, f in view.schema_fields.items():
        if f.is_key:
            access = view.fields.get(name)
            return name if access is not None and access.effective_forms == ("clear",) else None
    return None


@dataclass(frozen=True)
class QuotedRecords:
    """The named records as one reader may see them."""

    columns: list[str]
    rows: list[list[Any]]
    missing: list[str]  # named keys with no record in the reader's view


def objection_records(*, user: AnyUser, objection: Objection) -> QuotedRecords | None:
    """The records the objection names, read through the user's own view (audited as a read
    like any other). None when the user reads no values of the dataset or cannot see its key in
    clear; the fields objected to come first."""
    if not objection.record_keys:
        return None
    view = effective_view(dataset=objection.dataset, user=user)
    key = key_field(view)
    if key is None:
        return None
    shown = [key, *[f for f in objection.fields if f in view.fields and f != key],
             *[f for f in view.fields if f != key and f not in objection.fields]]
    params = {"fields": ",".join(shown), f"{key}__in": ",".join(objection.record_keys),
              "page_size": str(len(objection.record_keys) * 2 or 1)}
    try:
        _view, query, page = read_page(user=user, dataset=objection.dataset, params=params,
                                       action="objection.records_read", view=view)
    except (ApplicationError, PermissionDeniedError):
        return None
    columns = list(query.fields)
    rows = [[r.get(c) for c in columns] for r in page.rows]
    seen = {str(r.get(key)) for r in page.rows}
    return QuotedRecords(columns, rows, [k for k in objection.record_keys if k not in seen])


# --- People to tell -------------------------------------------------------------------------

def reviewers() -> list[User]:
    return list(User.objects.filter(city_roles__role=CityRole.GOVERNANCE_REVIEWER, is_active=True).distinct())


def stewards_of(department_id: int) -> list[User]:
    return list(User.objects.filter(is_active=True, memberships__department_id=department_id,
                                    memberships__role=Role.STEWARD).distinct())


def objecting_departments(*, user: AnyUser, dataset: Dataset) -> list[Department]:
    """The departments on whose behalf the user may object to the dataset: those where they are
    a steward or analyst, other than the owner."""
    ids = principal_of(user).departments_where(*OBJECTING_ROLES) - {dataset.department_id}
    return list(Department.objects.filter(pk__in=ids, is_active=True).order_by("pk"))
