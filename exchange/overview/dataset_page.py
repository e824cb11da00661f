"""Reads for the dataset page: where the dataset goes (lineage), how fresh it is (sync status)
and my records preview, each scoped to what the asking user may know.

Who learns what:

- **Lineage** follows the scope of the grant pages (``access_selectors.grant_list``): the
  department-level grants in force that the user may see (stewards and auditors of the owner,
  DPOs, city auditors and operators see all of them; a member of a grantee department sees
  their own department's), and the active subscriptions of those departments with their last
  delivery. Grants held by a single person never appear: they are not a department's data
  flow. Everyone else learns nothing, not even whether there is any.
- **Sync status**: when the data was last updated and when the next update is scheduled is
  dataset metadata, shown to whoever may see the dataset. The latest run's counts and its
  error (written for stewards, it may name source tables and columns) and the number of
  records in the store are shown to the owning department's members and to auditors who
  cover it; a grantee whose rows are filtered does not learn how many rows lie outside.
- **Preview**: ``exchange.records.preview``, the audited path every read takes; called only
  when the user's effective view shows something, so merely opening the page records no
  denied read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from celery.schedules import crontab
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from django.db import connection
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from catalog.models import Dataset
from departments.models import Role
from departments.selectors import principal_of
from exchange.access import selectors as access_selectors
from exchange.access.models import Grant, GrantStatus, PrincipalKind
from exchange.access.policy import OWNER_ROLES, EffectiveView, active_grants_q
from exchange.oversight.selectors import audit_scope_of
from exchange.records import selectors as records
from exchange.records.store import ident, is_postgres, store_exists, table_name
from exchange.sync.models import Run, RunKind, RunStatus, Source, Subscription, SubscriptionStatus

PREVIEW_ROWS = 10
# A cached store count is exact for as long as it is found (see store_record_count); the time
# only bounds how long counts of stores that moved on stay in the cache.
STORE_COUNT_TTL = 24 * 3600
AnyUser = User | AnonymousUser


# --- Lineage ----------------------------------------------------------------------------------

@dataclass
class Receiver:
    """One department that receives the dataset: its grants in force and its subscriptions."""

    department_id: int
    name: str
    grants: list[Grant] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)


def dataset_lineage(*, user: AnyUser, dataset: Dataset, now: dt.datetime | None = None) -> list[Receiver]:
    """The departments receiving ``dataset`` that the user may know of. Two queries: the
    grants (with their fields) and the subscriptions (each with its last delivery)."""
    now = now or timezone.now()
    grants = (
        access_selectors.grant_list(user=user, dataset_id=dataset.pk, now=now)
        .filter(active_grants_q(now), status=GrantStatus.ACTIVE, principal_kind=PrincipalKind.DEPARTMENT)
        # The grant pages' scope, without the eight tables those pages show: a receiver is
        # its department and its grants' fields.
        .select_related(None).select_related("principal_department")
        .order_by("principal_department__name", "id")
    )
    receivers: dict[int, Receiver] = {}
    for grant in grants:
        department = grant.principal_department
        assert department is not None
        receivers.setdefault(department.pk, Receiver(department.pk, department.name)).grants.append(grant)
    if not receivers:
        return []
    last_delivery = (Run.objects.filter(subscription=OuterRef("pk"), kind=RunKind.DELIVERY,
                                        status=RunStatus.SUCCEEDED)
                     .order_by("-finished_at", "-id").values("finished_at")[:1])
    subscriptions = (Subscription.objects.filter(dataset=dataset, department_id__in=receivers,
                                                 status=SubscriptionStatus.ACTIVE)
                     .annotate(last_delivered_at=Subquery(last_delivery)).order_by("department_id", "id"))
    for subscription in subscriptions:
        receivers[subscription.department_id].subscriptions.append(subscription)
    return list(receivers.values())


def sees_all_receivers(*, user: AnyUser, dataset: Dataset) -> bool:
    """Whether ``dataset_lineage`` is the whole picture for this user (the grant pages' scope)."""
    p = principal_of(user)
    return (p.is_staff or p.is_dpo or p.is_city_auditor
            or p.has_role(dataset.department_id, Role.STEWARD, Role.AUDITOR))


# --- Sync status ------------------------------------------------------------------------------

@dataclass
class SyncStatus:
    has_source: bool
    latest: Run | None  # the latest ingest run, whatever its outcome
    last_success_at: dt.datetime | None
    next_run_at: dt.datetime | None
    schedule: str
    detailed: bool  # counts, error and store size may be shown
    record_count: int | None
    manages: bool  # a steward of the owner: the data-flow page is theirs (its own access rule)


def sees_operations(*, user: AnyUser, dataset: Dataset) -> bool:
    """Members of the owning department and auditors covering it see the runs' counts and
    errors and the size of the store."""
    p = principal_of(user)
    if p.has_role(dataset.department_id, *OWNER_ROLES, Role.AUDITOR):
        return True
    scope = audit_scope_of(user)
    return scope is not None and scope.covers(dataset.department_id)


def next_cron_run(expression: str, *, now: dt.datetime) -> dt.datetime | None:
    """The next moment a five-field cron expression fires after ``now`` (beat's time zone)."""
    try:
        minute, hour, day, month, weekday = expression.split()
        schedule = crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday)
    except ValueError:
        return None
    local_now = timezone.localtime(now)
    # Celery measures from its own clock; cron fires on whole minutes, so round to one.
    estimate = local_now + schedule.remaining_estimate(local_now) + dt.timedelta(seconds=30)
    return estimate.replace(second=0, microsecond=0)


def store_record_count(dataset: Dataset) -> int:
    """Live records (tombstones excluded) in the dataset's store table; 0 before the first load.

    Counting a large store takes a scan of it (tens of milliseconds at a million rows, on every
    view of the page), so on PostgreSQL the count is cached under the table's identity and its
    highest change number: every insert, update and deletion of a record sets ``_seq`` above
    all earlier ones, and a store rebuilt by a first load is a new table (a new oid), so a
    cached count is never one of another state of the store. Finding both takes two short
    statements (the max is read from the ``_seq`` index).
    """
    if not is_postgres():
        return _count_live(dataset)
    schema, name = table_name(dataset.pk)
    qualified = ident(schema, name) if schema else ident(name)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)::oid", [qualified])
        row = cursor.fetchone()
        if not row or row[0] is None:
            return 0
        oid = int(row[0])
        # The identifier is quoted by ident(); the max is read from the _seq index.
        cursor.execute(f"SELECT max({ident('_seq')}) FROM {qualified}")  # noqa: S608
        top = cursor.fetchone()[0]
    # OIDs are handed out by a counter of the whole server; the database's name keeps two
    # databases sharing one cache apart.
    prefix = f"store-count:{connection.settings_dict['NAME']}:{oid}"
    count = cache.get(f"{prefix}:{top}")
    if count is None:
        with connection.cursor() as cursor:
            # The count and the change number it belongs to, from one snapshot.
            cursor.execute(f"SELECT count(*) FILTER (WHERE NOT {ident('_deleted')}), "  # noqa: S608
                           f"max({ident('_seq')}) FROM {qualified}")
            count, top = cursor.fetchone()
        cache.set(f"{prefix}:{top}", count, STORE_COUNT_TTL)
    return int(count)


def _count_live(dataset: Dataset) -> int:
    if not store_exists(dataset):
        return 0
    schema, name = table_name(dataset.pk)
    qualified = ident(schema, name) if schema else ident(name)
    with connection.cursor() as cursor:
        # Both identifiers quoted by ident().
        cursor.execute(f"SELECT count(*) FROM {qualified} WHERE NOT {ident('_deleted')}")  # noqa: S608
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def dataset_sync_status(*, user: AnyUser, dataset: Dataset, now: dt.datetime | None = None) -> SyncStatus:
    """At most five queries: the source with its beat row, the latest ingest run, the last
    successful one, and (for those who see operations) whether the store exists and its size."""
    now = now or timezone.now()
    source = Source.objects.filter(dataset=dataset).select_related("periodic_task").first()
    ingests = Run.objects.filter(dataset=dataset, kind=RunKind.INGEST)
    latest = ingests.order_by("-queued_at", "-id").first() if source is not None else None
    last_success = None
    if latest is not None:
        last_success = (latest.finished_at if latest.status == RunStatus.SUCCEEDED else
                        ingests.filter(status=RunStatus.SUCCEEDED).order_by("-finished_at")
                        .values_list("finished_at", flat=True).first())
    schedule = source.schedule if source is not None else ""
    scheduled = bool(schedule) and source is not None and (
        source.periodic_task is None or source.periodic_task.enabled)
    detailed = sees_operations(user=user, dataset=dataset)
    return SyncStatus(
        has_source=source is not None, latest=latest, last_success_at=last_success,
        next_run_at=next_cron_run(schedule, now=now) if scheduled else None, schedule=schedule,
        detailed=detailed, record_count=store_record_count(dataset) if detailed else None,
        manages=principal_of(user).has_role(dataset.department_id, Role.STEWARD),
    )


# --- My records preview -----------------------------------------------------------------------

@dataclass
class Preview:
    readable: bool
    view: EffectiveView | None = None
    columns: list[str] = field(default_factory=list)
    forms: dict[str, str] = field(default_factory=dict)
    rows: list[list[object]] = field(default_factory=list)
    more: bool = False
    hidden_count: int = 0
    may_request: bool = False


def dataset_preview(*, user: AnyUser, dataset: Dataset, view: EffectiveView) -> Preview:
    """The first rows of the user's effective view, or why there are none. ``view`` is the
    user's effective view, computed by the caller; the read itself goes through
    ``records.preview`` (policy, projection, audit)."""
    readable = view.can_read and (view.is_owner or dataset.status in records.READABLE_STATUSES)
    p = principal_of(user)
    may_request = (not view.is_owner and dataset.department_id not in p.department_ids
                   and bool(p.departments_where(Role.ANALYST, Role.STEWARD)))
    if not readable:
        return Preview(readable=False, may_request=may_request)
    # The view computed for the page a moment ago; readable_view checks it again.
    read_view, page = records.preview(user=user, dataset=dataset, rows=PREVIEW_ROWS, view=view)
    columns = list(read_view.fields)
    return Preview(
        readable=True, view=read_view, columns=columns,
        forms={name: read_view.fields[name].form for name in columns},
        rows=[[row.get(name) for name in columns] for row in page.rows],
        more=page.next_cursor is not None, hidden_count=len(read_view.hidden), may_request=may_request,
    )

