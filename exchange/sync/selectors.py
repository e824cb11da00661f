"""Reads of connections, sources, subscriptions and runs, scoped to the asking user.

Stewards manage the connections and sources of their department and the runs of those
sources; stewards of a subscribing department manage its subscriptions and see their
delivery runs (stewards of the owning department see them too: it is their data moving).
Everyone else gets a 404, as for anything they may not know exists.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime

from celery.schedules import crontab
from cron_descriptor import get_description
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from catalog.models import Dataset
from config.api.errors import NotFoundError
from departments.models import Role
from departments.selectors import principal_of
from exchange.access.models import Grant, PrincipalKind
from exchange.access.policy import active_grants_q
from exchange.sync.models import Connection, ConnectionKind, QuarantinedRow, Run, Source, Subscription


def _steward_departments(user: User | AnonymousUser) -> frozenset[int]:
    return principal_of(user).departments_where(Role.STEWARD)


def connection_list(*, user: User | AnonymousUser) -> QuerySet[Connection]:
    return (Connection.objects.filter(department_id__in=_steward_departments(user))
            .select_related("department", "created_by").order_by("department__name", "name"))


def database_connection_list(*, user: User | AnonymousUser) -> QuerySet[Connection]:
    """Connections a delivery can write to (or a table or query can be read from)."""
    return connection_list(user=user).filter(kind__in=[ConnectionKind.POSTGRESQL, ConnectionKind.SQLITE])


def connection_get(*, user: User | AnonymousUser, connection_id: int) -> Connection:
    connection = connection_list(user=user).filter(pk=connection_id).first()
    if connection is None:
        raise NotFoundError("No such connection.")
    return connection


def source_dataset_get(*, user: User | AnonymousUser, dataset_id: int) -> Dataset:
    """The dataset whose source the user manages (a steward of its department)."""
    dataset = (Dataset.objects.filter(pk=dataset_id, department_id__in=_steward_departments(user))
               .select_related("department", "current_schema").first())
    if dataset is None:
        raise NotFoundError("No such dataset, or you do not manage its source.")
    return dataset


def source_dataset_list(*, user: User | AnonymousUser) -> QuerySet[Dataset]:
    """The datasets whose sources the user manages, each with its source (or none) joined."""
    return (Dataset.objects.filter(department_id__in=_steward_departments(user))
            .select_related("department", "source__connection").order_by("title", "id"))


def steward_departments(*, user: User | AnonymousUser) -> frozenset[int]:
    return _steward_departments(user)


def source_get(*, user: User | AnonymousUser, dataset_id: int) -> Source:
    source = (Source.objects.filter(dataset_id=dataset_id, dataset__department_id__in=_steward_departments(user))
              .select_related("dataset__department", "connection", "periodic_task").first())
    if source is None:
        raise NotFoundError("This dataset has no source you manage.")
    return source


def subscription_list(*, user: User | AnonymousUser) -> QuerySet[Subscription]:
    mine = _steward_departments(user)
    return (Subscription.objects.filter(Q(department_id__in=mine) | Q(dataset__department_id__in=mine))
            .select_related("dataset", "department", "connection", "periodic_task").order_by("-created_at", "-id"))


def subscription_get(*, user: User | AnonymousUser, subscription_id: int, manage: bool = False) -> Subscription:
    qs = subscription_list(user=user)
    if manage:
        qs = qs.filter(department_id__in=_steward_departments(user))
    subscription = qs.filter(pk=subscription_id).first()
    if subscription is None:
        raise NotFoundError("No such subscription.")
    return subscription


def run_list(*, user: User | AnonymousUser) -> QuerySet[Run]:
    mine = _steward_departments(user)
    return (Run.objects.filter(Q(dataset__department_id__in=mine) | Q(subscription__department_id__in=mine))
            .select_related("dataset", "source", "subscription__department", "triggered_by")
            .order_by("-queued_at", "-id"))


def run_get(*, user: User | AnonymousUser, run_id: int) -> Run:
    run = run_list(user=user).filter(pk=run_id).first()
    if run is None:
        raise NotFoundError("No such run.")
    return run


def quarantine_list(*, run: Run) -> QuerySet[QuarantinedRow]:
    return QuarantinedRow.objects.filter(run=run).order_by("row_number", "id")


def subscribable_dataset_list(*, user: User | AnonymousUser) -> QuerySet[Dataset]:
    """Datasets on which a department the user stewards holds a department-level grant in
    force now: what that department may subscribe to (the service checks the view again)."""
    grants = Grant.objects.filter(active_grants_q(timezone.now()), dataset=OuterRef("pk"),
                                  principal_kind=PrincipalKind.DEPARTMENT,
                                  principal_department_id__in=_steward_departments(user))
    return (Dataset.objects.filter(Exists(grants), current_schema__isnull=False)
            .select_related("department").order_by("title", "id"))


@dataclass(frozen=True)
class ScheduleInfo:
    expression: str
    description: str
    next_run: datetime | None


def schedule_describe(expression: str, *, now: datetime | None = None) -> ScheduleInfo | None:
    """A stored cron expression in words, with the next time beat will start it (in the
    exchange's time zone, as the beat rows are written). None for no or an unreadable schedule."""
    parts = expression.split()
    if len(parts) != 5:
        return None
    tz = zoneinfo.ZoneInfo(settings.TIME_ZONE)
    at = (now or timezone.now()).astimezone(tz)
    minute, hour, day, month, weekday = parts
    try:
        description = get_description(expression)
    except Exception:  # noqa: BLE001 - a description must never break a page
        return None
    try:
        cron = crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday,
                       nowfun=lambda: at)
        next_run: datetime | None = at + cron.remaining_estimate(at)
    except Exception:  # noqa: BLE001 - e.g. 31 February: a valid expression that never fires
        next_run = None
    return ScheduleInfo(expression=expression, description=description, next_run=next_run)


def subscription_waiting_since(*, subscription: Subscription) -> datetime | None:
    """When the oldest change the subscription has not received was read from its source (the
    start of the ingest run that last wrote it); None when it is up to date. Its lag is the time
    since. Before a first delivery everything waits, since the dataset's first load."""
    from exchange.records.store import ident, store_exists, store_table
    from exchange.sync.models import RunKind, RunStatus

    ingests = Run.objects.filter(dataset_id=subscription.dataset_id, kind=RunKind.INGEST,
                                 status=RunStatus.SUCCEEDED, seq_to__isnull=False)
    if subscription.last_seq == 0:
        return ingests.order_by("started_at").values_list("started_at", flat=True).first()
    if not store_exists(subscription.dataset):
        return None
    table = store_table(subscription.dataset)
    with connection.cursor() as cursor:
        # Read from the _seq index: the changes after the bookmark, usually few.
        cursor.execute(f"SELECT min({ident('_last_run')}) FROM {table.qualified} "  # noqa: S608
                       f"WHERE {ident('_seq')} > %s", [subscription.last_seq])
        first_run = cursor.fetchone()[0]
    if first_run is None:
        return None
    return Run.objects.filter(pk=first_run).values_list("started_at", flat=True).first()
