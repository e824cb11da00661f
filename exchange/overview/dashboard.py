"""Aggregates for the dashboard charts, each one grouped query over a scoped selector, so the
cost does not grow with the number of requests, grants or events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDate, TruncWeek
from django.utils import timezone

from catalog.models import Field
from departments.models import Role
from departments.selectors import principal_of
from exchange.access import selectors as sel
from exchange.access.models import GrantField, GrantStatus
from exchange.oversight.selectors import AuditScope, audit_event_list
from exchange.sync.models import Run, RunKind, RunStatus

AnyUser = User | AnonymousUser


def _label(value: Any) -> str:
    if isinstance(value, datetime):
        return timezone.localtime(value).date().isoformat() if timezone.is_aware(value) else value.date().isoformat()
    return str(value)


def requests_per_week(*, user: AnyUser, weeks: int = 12, now: datetime | None = None) -> dict[str, Any]:
    """Requests made and decided per week, among the requests the user may see (two queries)."""
    since = (now or timezone.now()) - timedelta(weeks=weeks)
    scoped = sel.access_request_list(user=user).order_by()
    made = (scoped.filter(created_at__gte=since).annotate(week=TruncWeek("created_at"))
            .values("week").annotate(n=Count("id")).order_by("week"))
    decided = (scoped.filter(decided_at__gte=since).annotate(week=TruncWeek("decided_at"))
               .values("week", "status").annotate(n=Count("id")).order_by("week", "status"))
    series: dict[str, dict[str, int]] = {}
    for row in made:
        series.setdefault(_label(row["week"]), {})["submitted"] = row["n"]
    for row in decided:
        series.setdefault(_label(row["week"]), {})[row["status"]] = row["n"]
    weeks_sorted = sorted(series)
    names = sorted({k for v in series.values() for k in v})
    return {"labels": weeks_sorted,
            "datasets": [{"label": n, "data": [series[w].get(n, 0) for w in weeks_sorted]} for n in names]}


def active_grants_breakdown(*, user: AnyUser) -> dict[str, Any]:
    """Active grants the user may see by owning department, and their live granted fields by
    the field's sensitivity in the current schema (two queries)."""
    scoped_ids = sel.grant_list(user=user, status=GrantStatus.ACTIVE).order_by().values("pk")
    by_department = (
        sel.grant_list(user=user, status=GrantStatus.ACTIVE).prefetch_related(None).order_by()
        .values("dataset__department__name").annotate(n=Count("id", distinct=True))
        .order_by("dataset__department__name")
    )
    sensitivity = Subquery(Field.objects.filter(
        schema_id=OuterRef("grant__dataset__current_schema_id"), name=OuterRef("field_name"),
    ).values("sensitivity")[:1])
    by_sensitivity = (
        GrantField.objects.filter(grant_id__in=scoped_ids, lapsed_at__isnull=True)
        .annotate(sensitivity=sensitivity).values("sensitivity").annotate(n=Count("id")).order_by("sensitivity")
    )
    return {
        "by_department": {"labels": [r["dataset__department__name"] for r in by_department],
                          "data": [r["n"] for r in by_department]},
        "by_sensitivity": {"labels": [r["sensitivity"] or "no longer in schema" for r in by_sensitivity],
                           "data": [r["n"] for r in by_sensitivity]},
    }


def audit_events_per_day(*, scope: AuditScope, days: int = 30, now: datetime | None = None) -> dict[str, Any]:
    since = (now or timezone.now()) - timedelta(days=days)
    rows = (audit_event_list(scope=scope).filter(occurred_at__gte=since).order_by()
            .annotate(day=TruncDate("occurred_at")).values("day", "outcome").annotate(n=Count("id"))
            .order_by("day", "outcome"))
    series: dict[str, dict[str, int]] = {}
    for row in rows:
        series.setdefault(str(row["day"]), {})[row["outcome"]] = row["n"]
    day_labels = sorted(series)
    outcomes = sorted({k for v in series.values() for k in v})
    return {"labels": day_labels,
            "datasets": [{"label": o, "data": [series[d].get(o, 0) for d in day_labels]} for o in outcomes]}


def _day_series(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Chart.js data from rows of (day, ``key``, n): one dataset per ``key``, a label per day."""
    series: dict[str, dict[str, int]] = {}
    for row in rows:
        series.setdefault(str(row["day"]), {})[str(row[key])] = int(row["n"] or 0)
    days = sorted(series)
    names = sorted({k for v in series.values() for k in v})
    return {"labels": days, "datasets": [{"label": n, "data": [series[d].get(n, 0) for d in days]} for n in names]}


def runs_in_view(*, user: AnyUser) -> QuerySet[Run]:
    """The runs whose figures a user may see: operators and city auditors all of them; stewards,
    administrators and auditors of a department those that fed its datasets or delivered to it.
    Counts only: a run's figures never carry a record value."""
    p = principal_of(user)
    if p.is_staff or p.is_city_auditor:
        return Run.objects.all()
    mine = p.departments_where(Role.STEWARD, Role.ADMIN, Role.AUDITOR)
    return Run.objects.filter(Q(dataset__department_id__in=mine) | Q(subscription__department_id__in=mine))


def sync_per_day(*, user: AnyUser, days: int = 30, now: datetime | None = None) -> dict[str, Any]:
    """Rows written per day per department (ingest: into the owner's store; delivery: to the
    receiving department), and failed runs per day by kind; two grouped queries."""
    since = (now or timezone.now()) - timedelta(days=days)
    finished = runs_in_view(user=user).filter(finished_at__gte=since).order_by()
    written = (
        finished.filter(status=RunStatus.SUCCEEDED)
        .annotate(day=TruncDate("finished_at"),
                  department=Coalesce("subscription__department__name", "dataset__department__name"))
        .values("day", "department")
        .annotate(n=Sum(F("rows_inserted") + F("rows_updated") + F("rows_deleted")))
        .order_by("day", "department")
    )
    failed = (
        finished.filter(status=RunStatus.FAILED).annotate(day=TruncDate("finished_at"))
        .values("day", "kind").annotate(n=Count("id")).order_by("day", "kind")
    )
    kinds = dict(RunKind.choices)
    return {
        "rows": _day_series([dict(r) for r in written], "department"),
        "failed": _day_series([{**r, "kind": kinds.get(r["kind"], r["kind"])} for r in failed], "kind"),
    }
