"""Reads of the audit trail, always scoped to what the asking auditor may see.

Who may read it: operators (staff) and city auditors see every event; a department's
auditors see the events of their department. Nobody else reads it at all; the APIs turn
``audit_scope_of(...) is None`` into a 403 and audit the attempt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, TypedDict

import django_filters
from django import forms
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ValidationError
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from config.api.errors import NotFoundError
from config.api.fields import parse_id
from departments.models import Department, Role
from departments.selectors import principal_of
from exchange.audit.models import AuditEvent, AuditOutcome
from exchange.audit.services import HASHED_FIELDS


@dataclass(frozen=True)
class AuditScope:
    everything: bool
    department_ids: frozenset[int] = frozenset()

    def covers(self, department_id: int) -> bool:
        return self.everything or department_id in self.department_ids


def audit_scope_of(user: User | AnonymousUser) -> AuditScope | None:
    principal = principal_of(user)
    if principal.is_staff or principal.is_city_auditor:
        return AuditScope(everything=True)
    departments = principal.departments_where(Role.AUDITOR)
    return AuditScope(everything=False, department_ids=departments) if departments else None


def audit_event_list(*, scope: AuditScope) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.all()
    if not scope.everything:
        qs = qs.filter(department_id__in=scope.department_ids)
    return qs


# --- Filters --------------------------------------------------------------------------------

class DateOrDateTimeField(forms.Field):
    """An ISO date (a whole day) or date-time; a date-time without offset is local time."""

    default_error_messages = {
        "invalid": "Enter an ISO date (2026-01-31) or date-time (2026-01-31T08:00:00+01:00).",
    }

    def to_python(self, value: Any) -> date | datetime | None:
        if value in self.empty_values:
            return None
        text = str(value).strip()
        try:
            # The date first: parse_datetime reads "2026-01-31" as its midnight, which would make
            # `until` end where the day begins instead of where it ends.
            parsed: date | datetime | None = parse_date(text) or parse_datetime(text)
        except ValueError:  # well-formed but impossible, e.g. 2026-02-30
            parsed = None
        if parsed is None:
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        if isinstance(parsed, datetime) and timezone.is_naive(parsed):
            parsed = timezone.make_aware(parsed)
        return parsed


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


class SinceFilter(django_filters.Filter):
    field_class = DateOrDateTimeField

    def filter(self, qs: QuerySet[Any], value: date | datetime | None) -> QuerySet[Any]:
        if value is None:
            return qs
        start = value if isinstance(value, datetime) else _day_start(value)
        return qs.filter(occurred_at__gte=start)


class UntilFilter(django_filters.Filter):
    """Inclusive: a date means up to the end of that day."""

    field_class = DateOrDateTimeField

    def filter(self, qs: QuerySet[Any], value: date | datetime | None) -> QuerySet[Any]:
        if value is None:
            return qs
        if isinstance(value, datetime):
            return qs.filter(occurred_at__lte=value)
        return qs.filter(occurred_at__lt=_day_start(value + timedelta(days=1)))


class DepartmentField(forms.CharField):
    """A department's slug or id, resolved to its id (an unknown one is an input error)."""

    def clean(self, value: Any) -> int | None:
        text = super().clean(value)
        if not text:
            return None
        number = parse_id(text)
        lookup = Q(pk=number) if number is not None else Q(slug=text)
        department_id = Department.objects.filter(lookup).values_list("pk", flat=True).first()
        if department_id is None:
            raise ValidationError("Unknown department.", code="unknown")
        return department_id


class DepartmentFilter(django_filters.Filter):
    field_class = DepartmentField

    def filter(self, qs: QuerySet[Any], value: int | None) -> QuerySet[Any]:
        return qs if value is None else qs.filter(department_id=value)


class AuditEventFilter(django_filters.FilterSet):
    department = DepartmentFilter(help_text="Department slug or id.")
    dataset = django_filters.NumberFilter(field_name="dataset_id", help_text="Dataset id.")
    actor = django_filters.CharFilter(method="filter_actor", help_text="User id or username.")
    action = django_filters.CharFilter(
        method="filter_action", help_text="Exact action, or a prefix ending in '.' or '*' (e.g. dataset.)."
    )
    outcome = django_filters.ChoiceFilter(choices=AuditOutcome.choices)
    since = SinceFilter(help_text="ISO date or date-time, inclusive.")
    until = UntilFilter(help_text="ISO date (the whole day) or date-time, inclusive.")
    object_type = django_filters.CharFilter(field_name="object_type", help_text="e.g. catalog.dataset")
    object_id = django_filters.CharFilter(field_name="object_id")
    request_id = django_filters.CharFilter(field_name="request_id")

    class Meta:
        model = AuditEvent
        fields: list[str] = []

    def filter_actor(self, qs: QuerySet[AuditEvent], name: str, value: str) -> QuerySet[AuditEvent]:
        number = parse_id(value)
        if number is not None:
            return qs.filter(actor_id=number)
        return qs.filter(actor_label=value)

    def filter_action(self, qs: QuerySet[AuditEvent], name: str, value: str) -> QuerySet[AuditEvent]:
        if value.endswith(("*", ".")):
            return qs.filter(action__startswith=value.rstrip("*"))
        return qs.filter(action=value)


REPORT_FILTERS = ("since", "until", "action", "outcome")


class AuditReportFilter(AuditEventFilter):
    """What a person's or a department's report may be narrowed by."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filters: dict[str, django_filters.Filter] = {
            name: f for name, f in self.filters.items() if name in REPORT_FILTERS
        }


# --- Reports --------------------------------------------------------------------------------

def audit_user_events(*, scope: AuditScope, username: str) -> tuple[User, QuerySet[AuditEvent]]:
    user = User.objects.filter(username=username).first()
    if user is None:
        raise NotFoundError("No such user.")
    return user, audit_event_list(scope=scope).filter(actor_kind="user", actor_id=user.pk)


def audit_department_get(*, slug: str) -> Department:
    department = Department.objects.filter(slug=slug).first()
    if department is None:
        raise NotFoundError("No such department.")
    return department


class ActionCount(TypedDict):
    action: str
    outcome: str
    count: int


class DatasetTouched(TypedDict):
    dataset_id: int
    count: int
    last: datetime


class ReportSummary(TypedDict):
    total: int
    last_activity: datetime | None
    by_action: list[ActionCount]
    datasets: list[DatasetTouched]


def audit_report_summary(*, events: QuerySet[AuditEvent], max_datasets: int = 200) -> ReportSummary:
    totals = events.aggregate(total=Count("id"), last_activity=Max("occurred_at"))
    by_action = list(
        events.order_by().values("action", "outcome").annotate(count=Count("id")).order_by("action", "outcome")
    )
    datasets = list(
        events.order_by().exclude(dataset_id=None).values("dataset_id")
        .annotate(count=Count("id"), last=Max("occurred_at")).order_by("-count", "dataset_id")[:max_datasets]
    )
    return {
        "total": totals["total"], "last_activity": totals["last_activity"],
        "by_action": by_action, "datasets": datasets,  # type: ignore[typeddict-item]
    }


# --- Export ---------------------------------------------------------------------------------

EXPORT_COLUMNS = ("id", *HASHED_FIELDS, "hash")


def audit_export_rows(*, events: QuerySet[AuditEvent], chunk_size: int = 2000) -> Iterator[dict[str, Any]]:
    """The events in chain order, streamed from the database in chunks."""
    return events.order_by("id").values(*EXPORT_COLUMNS).iterator(chunk_size=chunk_size)
