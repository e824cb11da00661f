"""Writes of the sync engine: connections, sources, uploads, schedules, subscriptions, runs.

Each change is audited (without secrets) in the same transaction; tasks are sent after
commit (``runs.run_enqueue``)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import current_app
from celery.schedules import crontab
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from catalog.models import Dataset, Field
from config.api.errors import ApplicationError, ConflictError, PayloadTooLargeError
from departments.models import Department
from exchange.access.policy import effective_view
from exchange.audit.services import audit_record
from exchange.sync import readers, runs, secrets, selectors, sqlguard, urlguard
from exchange.sync.models import (
    Connection,
    ConnectionKind,
    FileFormat,
    Run,
    RunMode,
    RunStatus,
    RunTrigger,
    Source,
    Subscription,
    SubscriptionStatus,
    holds_target_table,
)

log = logging.getLogger(__name__)


def _check_secret(kind: str, secret: str) -> None:
    if kind == ConnectionKind.POSTGRESQL and not secret.startswith(("postgres://", "postgresql://")):
        raise ApplicationError("A PostgreSQL connection needs a DSN like postgresql://user:password@host/db.",
                               fields={"secret": ["Not a PostgreSQL DSN."]})
    if kind == ConnectionKind.URL and not secret.lower().startswith(("http://", "https://")):
        raise ApplicationError("Only http:// and https:// URLs.", fields={"secret": ["Not an HTTP(S) URL."]})
    if kind == ConnectionKind.URL:
        # An address given as such is refused now; a host name is checked whenever it is
        # fetched (what it resolves to may change), by urlguard.
        try:
            urlguard.check_literal(secret)
        except readers.SourceError as exc:
            raise ApplicationError(str(exc), fields={"secret": [str(exc)]}) from exc
    if kind == ConnectionKind.SQLITE:
        try:
            readers.sqlite_path(secret)
        except readers.SourceError as exc:
            raise ApplicationError(str(exc), fields={"secret": [str(exc)]}) from exc


@transaction.atomic
def connection_create(*, actor: User, department: Department, name: str, kind: str, secret: str) -> Connection:
    _check_secret(kind, secret)
    if Connection.objects.filter(department=department, name=name).exists():
        raise ConflictError("The department already has a connection with this name.")
    connection = Connection.objects.create(department=department, name=name, kind=kind, created_by=actor,
                                           secret_encrypted=secrets.encrypt(secret), redacted=secrets.redact(secret),
                                           secret_changed_at=timezone.now())
    audit_record(actor=actor, action="connection.created", obj=connection, department_id=department.pk,
                 details={"kind": kind, "target": connection.redacted})
    return connection


@transaction.atomic
def connection_update(*, actor: User, connection: Connection, name: str | None = None,
                      secret: str | None = None) -> Connection:
    changed = []
    if name is not None and name != connection.name:
        connection.name = name
        changed.append("name")
    if secret:
        _check_secret(connection.kind, secret)
        connection.secret_encrypted = secrets.encrypt(secret)
        connection.redacted = secrets.redact(secret)
        connection.secret_changed_at = timezone.now()
        changed.append("secret")
    if changed:
        connection.save()
        audit_record(actor=actor, action="connection.updated", obj=connection, department_id=connection.department_id,
                     details={"changed": changed, "target": connection.redacted})
    return connection


@transaction.atomic
def connection_delete(*, actor: User, connection: Connection) -> None:
    if connection.sources.exists() or connection.subscriptions.exists():
        raise ConflictError("The connection is used by a source or a subscription; remove those first.")
    audit_record(actor=actor, action="connection.deleted", obj=connection, department_id=connection.department_id)
    connection.delete()


def source_columns(*, source: Source) -> list[str]:
    """The columns the (possibly unsaved) source would read, without reading its rows.

    Raises ApplicationError with the reader's message when the source cannot be opened."""
    try:
        with readers.open_source(source) as reader:
            return list(reader.columns)
    except readers.SourceError as exc:
        raise ApplicationError(str(exc)) from exc


def connection_test(*, connection: Connection) -> tuple[bool, str]:
    try:
        return True, readers.test_connection(connection)
    except readers.SourceError as exc:
        return False, str(exc)


# --- Schedules ------------------------------------------------------------------------------

def _crontab(expression: str) -> CrontabSchedule:
    parts = expression.split()
    if len(parts) != 5:
        raise ApplicationError("A schedule is a cron expression of five fields: minute hour day month weekday.",
                               fields={"schedule": ["Five fields expected."]})
    minute, hour, day, month, weekday = parts
    try:
        crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday)
    except (ValueError, TypeError) as exc:
        raise ApplicationError(f"Not a valid cron expression: {exc}", fields={"schedule": [str(exc)]}) from exc
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday,
        timezone=settings.TIME_ZONE)
    return schedule


def _set_schedule(obj: Source | Subscription, expression: str, *, task: str, name: str) -> None:
    """Keep the object's beat row in step with its cron expression (blank: no schedule)."""
    expression = " ".join(expression.split())
    if not expression:
        if obj.periodic_task_id:
            PeriodicTask.objects.filter(pk=obj.periodic_task_id).delete()
            obj.periodic_task = None
        obj.schedule = ""
        return
    crontab_row = _crontab(expression)
    if obj.periodic_task is None:
        obj.periodic_task = PeriodicTask.objects.create(
            name=name, task=task, crontab=crontab_row, args=json.dumps([obj.pk]), enabled=True)
    else:
        PeriodicTask.objects.filter(pk=obj.periodic_task.pk).update(crontab=crontab_row, enabled=True)
    obj.schedule = expression


# --- Sources --------------------------------------------------------------------------------

def _check_pg_query(connection: Connection, query: str) -> None:
    """PostgreSQL analyses the query on the source database (exchange/sync/sqlguard.py);
    SourceError when it would do more than read, or when the database cannot be asked."""
    try:
        conn = readers.pg_connect(secrets.decrypt(connection.secret_encrypted), read_only=True)
        try:
            sqlguard.check_source(conn, query=query)
        finally:
            conn.close()
    except readers.TransientSourceError as exc:
        raise readers.SourceError(f"The query could not be checked on the source database: {exc}") from exc


def _check_mapping(dataset: Dataset, mapping: dict[str, str]) -> None:
    fields = set(Field.objects.filter(schema_id=dataset.current_schema_id).values_list("name", flat=True))
    unknown = sorted(set(mapping.values()) - fields)
    if unknown:
        raise ApplicationError(f"Unknown fields in the mapping: {', '.join(unknown)}.",
                               fields={"mapping": [f"Not in the published schema: {', '.join(unknown)}."]})


@transaction.atomic
def source_set(*, actor: User, dataset: Dataset, connection: Connection | None, table: str = "", query: str = "",
               mapping: dict[str, str], file_format: str = FileFormat.CSV, encoding: str = "utf-8",
               watermark_column: str = "", schedule: str = "", watch_seconds: int | None = None,
               freshness_minutes: int | None = None) -> Source:
    """Create or replace the dataset's source. Precondition: the actor is a steward of the
    dataset's department, and of the connection's. ``watch_seconds``: check the source for
    changes this often (``source_watch_check``); None: not watched. ``freshness_minutes``: the
    longest a change may take to reach every subscriber (``subscriptions_check_freshness``)."""
    if dataset.current_schema_id is None:
        raise ApplicationError("Only a published dataset can have a source.")
    if connection is not None and connection.department_id != dataset.department_id:
        raise ApplicationError("The connection must belong to the dataset's department.",
                               fields={"connection": ["Not a connection of this department."]})
    if connection is not None and connection.kind in (ConnectionKind.POSTGRESQL, ConnectionKind.SQLITE):
        if bool(table) == bool(query):
            raise ApplicationError("A database source names a table or a query (one of them).",
                                   fields={"table": ["Give a table or a query."]})
        if query:
            try:
                checked = readers.check_read_only_query(query)
                if connection.kind == ConnectionKind.POSTGRESQL:
                    _check_pg_query(connection, checked)
            except readers.SourceError as exc:
                raise ApplicationError(str(exc), fields={"query": [str(exc)]}) from exc
        else:
            try:
                sqlguard.check_table_name(table)
            except readers.SourceError as exc:
                raise ApplicationError(str(exc), fields={"table": [str(exc)]}) from exc
    _check_mapping(dataset, mapping)
    _check_watch(connection, watch_seconds)
    if not any(f for f in mapping):
        raise ApplicationError("Map at least the key field.", fields={"mapping": ["Empty."]})
    source = Source.objects.filter(dataset=dataset).select_related("periodic_task").first() or Source(
        dataset=dataset, created_by=actor)
    if source.pk and source.watermark_column != watermark_column:
        source.watermark_value = ""
    source.connection, source.table, source.query, source.mapping = connection, table, query, mapping
    source.file_format, source.encoding, source.watermark_column = file_format, encoding or "utf-8", watermark_column
    if source.watch_seconds != watch_seconds or not watch_seconds:
        source.watch_state, source.watch_error, source.watch_checked_at = "", "", None
    source.watch_seconds = watch_seconds
    if freshness_minutes is not None and not 1 <= freshness_minutes <= 60 * 24 * 31:
        raise ApplicationError("A freshness target is between 1 minute and 31 days.",
                               fields={"freshness_minutes": ["Between 1 and 44640 minutes."]})
    source.freshness_minutes = freshness_minutes
    source.save()
    _set_schedule(source, schedule, task="exchange.tasks.ingest_scheduled", name=f"ingest dataset {dataset.pk}")
    source.save()
    audit_record(actor=actor, action="source.set", obj=source, dataset_id=dataset.pk,
                 department_id=dataset.department_id,
                 details={"connection": connection.pk if connection else None, "table": table, "query": query,
                          "mapping": mapping, "watermark_column": watermark_column, "schedule": source.schedule,
                          "watch_seconds": watch_seconds, "freshness_minutes": freshness_minutes})
    return source


def subscriptions_check_freshness(*, now: datetime | None = None) -> list[Subscription]:
    """Tell the stewards of both departments when a subscription's oldest undelivered change
    has waited longer than its dataset's freshness target, once per miss (``freshness_missed_at``,
    set by a conditional update, so two reapers tell once), audited; cleared once the copy is
    within the target again. Returns the subscriptions newly late. Run by the reaper every minute."""
    from departments.notifications import notify
    from exchange.access.selectors import stewards_of

    now = now or timezone.now()
    late = []
    for subscription in Subscription.objects.filter(
            status=SubscriptionStatus.ACTIVE, dataset__source__freshness_minutes__isnull=False).select_related(
            "dataset__source", "dataset", "department"):
        target = timedelta(minutes=subscription.dataset.source.freshness_minutes or 0)
        since = selectors.subscription_waiting_since(subscription=subscription)
        missed = since is not None and now - since > target
        if not missed:
            if subscription.freshness_missed_at is not None:
                Subscription.objects.filter(pk=subscription.pk).update(freshness_missed_at=None)
            continue
        with transaction.atomic():
            if not Subscription.objects.filter(pk=subscription.pk, freshness_missed_at__isnull=True).update(
                    freshness_missed_at=now):
                continue
            dataset = subscription.dataset
            behind = int((now - since).total_seconds() // 60) if since else 0
            audit_record(actor=None, actor_label="job:freshness", action="subscription.freshness_missed",
                         obj=subscription, dataset_id=dataset.pk, department_id=subscription.department_id,
                         details={"target_minutes": dataset.source.freshness_minutes, "behind_minutes": behind,
                                  "waiting_since": since.isoformat() if since else None})
            recipients = stewards_of(dataset.department_id) + stewards_of(subscription.department_id)
            notify(recipients=recipients, kind="subscription.freshness_missed",
                   subject=f"{dataset.title}: {subscription.department.name}'s copy is {behind} min behind",
                   body=f"The oldest change not yet delivered into {subscription.target_table} was read from the "
                        f"source {behind} minutes ago; the freshness target is "
                        f"{dataset.source.freshness_minutes} minutes.",
                   link=f"/sync/subscriptions/{subscription.pk}/", obj=subscription)
            late.append(subscription)
    return late


WATCH_SECONDS_MIN, WATCH_SECONDS_MAX = 2, 86_400


def _check_watch(connection: Connection | None, watch_seconds: int | None) -> None:
    if watch_seconds is None:
        return
    error = None
    if not WATCH_SECONDS_MIN <= watch_seconds <= WATCH_SECONDS_MAX:
        error = f"Check between every {WATCH_SECONDS_MIN} s and once a day ({WATCH_SECONDS_MAX} s)."
    elif connection is None:
        error = "An uploaded file is not watched: each upload is ingested when it arrives."
    if error:
        raise ApplicationError(error, fields={"watch_seconds": [error]})


def sources_watch_due(*, now: datetime | None = None) -> list[int]:
    """The watched sources whose next check is due, each claimed by a conditional update of
    its ``watch_checked_at`` (two beats, or a slow tick, never check one twice at once); the
    caller sends a check job for each."""
    now = now or timezone.now()
    claimed = []
    candidates = Source.objects.filter(watch_seconds__isnull=False).values_list("pk", "watch_seconds",
                                                                              "watch_checked_at")
    for pk, seconds, checked in candidates:
        if checked is not None and checked > now - timedelta(seconds=seconds or 0):
            continue
        if Source.objects.filter(pk=pk, watch_checked_at=checked).update(watch_checked_at=now):
            claimed.append(pk)
    return claimed


def source_watch_check(*, source_id: int) -> Run | None:
    """Check a watched source and queue a run if what it answers moved since the last check
    (incremental when it has a watermark column, else full; never a second one behind a queued
    run). The first check after watching starts only notes the answer. A check that cannot
    tell keeps its reason (``watch_error``) for the stewards and starts nothing."""
    source = Source.objects.filter(pk=source_id, watch_seconds__isnull=False).select_related(
        "connection", "dataset").first()
    if source is None:
        return None
    try:
        signature = readers.source_signature(source)
    except readers.SourceError as exc:
        Source.objects.filter(pk=source.pk).update(watch_error=str(exc)[:2000])
        return None
    with transaction.atomic():
        previous = Source.objects.select_for_update().filter(pk=source.pk).values_list(
            "watch_state", flat=True).first()
        if previous is None:
            return None
        Source.objects.filter(pk=source.pk).update(watch_state=signature[:300], watch_error="")
        if not previous or previous == signature[:300]:
            return None
        mode = RunMode.INCREMENTAL if source.watermark_column else RunMode.FULL
        return run_now(actor=None, source=source, mode=mode, trigger=RunTrigger.WATCH)


@transaction.atomic
def source_delete(*, actor: User, source: Source) -> None:
    """Remove the source, its schedule and its run history, and its uploaded file once that
    is committed. The records already ingested stay in the store. Refused while a run of it is
    queued or running: the worker would be left with a run that no longer exists."""
    list(Source.objects.select_for_update().filter(pk=source.pk))  # no run is queued while we look
    if source.runs.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists():
        raise ConflictError("A run of this source is queued or running; cancel it or let it finish first.")
    if source.periodic_task_id:
        PeriodicTask.objects.filter(pk=source.periodic_task_id).delete()
    audit_record(actor=actor, action="source.deleted", obj=source, dataset_id=source.dataset_id,
                 department_id=source.dataset.department_id,
                 details={"kind": "file" if source.connection_id is None else "connection",
                          "table": source.table, "upload": bool(source.upload)})
    upload = source.upload
    source.delete()
    if upload:
        transaction.on_commit(lambda: (Path(settings.MEDIA_ROOT) / upload).unlink(missing_ok=True))


def _too_large() -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The file is larger than the upload limit of {settings.SYNC_UPLOAD_MAX_BYTES} bytes "
                                f"(SYNC_UPLOAD_MAX_BYTES).", fields={"file": ["Too large."]})


# Text in these encodings has no NUL byte; a file that does is not CSV, JSON or NDJSON.
_NUL_FREE_ENCODINGS = ("utf-8", "utf_8", "utf-8-sig", "latin-1", "latin_1", "iso8859-1", "iso-8859-1", "cp1252",
                       "windows-1252", "ascii", "iso-8859-15", "iso8859-15")


def upload_check(*, source: Source, upload: UploadedFile) -> None:
    """Refuse (4xx) what cannot be a source file before anything is stored: too large, empty,
    or binary (a NUL byte near the start of a file in an encoding that has none)."""
    if upload.size is not None and upload.size > settings.SYNC_UPLOAD_MAX_BYTES:
        raise _too_large()
    head = next(iter(upload.chunks(64 * 1024)), b"")[: 64 * 1024]
    upload.seek(0)
    if not head.strip():
        raise ApplicationError("The file is empty.", fields={"file": ["Empty."]})
    if b"\x00" in head and (source.encoding or "utf-8").lower() in _NUL_FREE_ENCODINGS:
        raise ApplicationError(f"The file looks binary (it holds NUL bytes), not {source.file_format.upper()} text. "
                               f"Upload the data as CSV, JSON or NDJSON.", fields={"file": ["Not a text file."]})


def source_upload(*, actor: User, source: Source, upload: UploadedFile, run: bool = True,
                  allow_empty: bool = False) -> Run | None:
    """Store a new file for the source (streamed to disk) and, by default, ingest it.
    ``allow_empty``: the file may hold no valid row, and then its run deletes every record."""
    if source.connection_id is not None:
        raise ApplicationError("This source reads from a connection; uploads are for file sources.")
    upload_check(source=source, upload=upload)
    suffix = {FileFormat.CSV: ".csv", FileFormat.JSON: ".json", FileFormat.NDJSON: ".ndjson"}[
        FileFormat(source.file_format)]
    relative = Path("sources") / str(source.dataset_id) / f"{uuid.uuid4().hex}{suffix}"
    path = Path(settings.MEDIA_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = source.upload
    try:
        written = 0
        with path.open("wb") as out:
            for chunk in upload.chunks():
                written += len(chunk)
                if written > settings.SYNC_UPLOAD_MAX_BYTES:
                    raise _too_large()
                out.write(chunk)
        with transaction.atomic():
            source.upload = str(relative)
            source.save(update_fields=["upload", "updated_at"])
            audit_record(actor=actor, action="source.uploaded", obj=source, dataset_id=source.dataset_id,
                         department_id=source.dataset.department_id,
                         details={"file": upload.name, "bytes": upload.size})
            new_run = runs.run_enqueue(source=source, trigger=RunTrigger.UPLOAD, user=actor,
                                       allow_empty=allow_empty) if run else None
            if new_run is not None:
                _audit_queued(actor, new_run)
    except BaseException:
        # Nothing half-written: a file cut short (disk full, too large) or never recorded goes.
        path.unlink(missing_ok=True)
        source.upload = previous
        raise
    if previous and previous != source.upload:
        # A queued run re-reads source.upload when it starts, so the old file is no longer needed.
        (Path(settings.MEDIA_ROOT) / previous).unlink(missing_ok=True)
    return new_run


# --- Runs -----------------------------------------------------------------------------------

def _audit_queued(actor: User, run: Run) -> None:
    job: Any = run.source or run.subscription
    audit_record(actor=actor, action="run.queue", obj=run, dataset_id=run.dataset_id,
                 department_id=job.dataset.department_id,
                 details={"kind": run.kind, "mode": run.mode, "trigger": run.trigger, "allow_empty": run.allow_empty,
                          "source": run.source_id, "subscription": run.subscription_id})


@transaction.atomic
def run_now(*, actor: User | None, source: Source | None = None, subscription: Subscription | None = None,
            mode: str = RunMode.FULL, trigger: str = RunTrigger.MANUAL, allow_empty: bool = False) -> Run:
    """Queue a run of the source or subscription. A run someone asked for is audited; a
    scheduled one is recorded by its run row alone. ``allow_empty``: see ``Run.allow_empty``."""
    job: Any = source or subscription
    busy = Run.objects.filter(status=RunStatus.QUEUED, source=source, subscription=subscription).first() \
        if job is not None else None
    if busy is not None and trigger in (RunTrigger.SCHEDULE, RunTrigger.WATCH):
        return busy  # a schedule or a watch never piles up runs behind a queued one
    if subscription is not None and subscription.status != SubscriptionStatus.ACTIVE:
        raise ApplicationError(f"The subscription is {subscription.status}.")
    if allow_empty and (source is None or mode != RunMode.FULL):
        raise ApplicationError("Only a full ingest run can be allowed an empty source.",
                               fields={"allow_empty": ["Only for a full run of a source."]})
    run = runs.run_enqueue(source=source, subscription=subscription, mode=mode, trigger=trigger, user=actor,
                           allow_empty=allow_empty)
    if actor is not None:
        _audit_queued(actor, run)
    return run


@transaction.atomic
def run_cancel(*, actor: User, run: Run) -> Run:
    if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        raise ConflictError(f"The run is {run.status}; only queued or running runs can be cancelled.")
    run = runs.run_cancel(run=run)
    audit_record(actor=actor, action="run.cancel", obj=run, dataset_id=run.dataset_id,
                 department_id=run.dataset.department_id, details={"kind": run.kind, "status": run.status})
    return run


# --- Subscriptions --------------------------------------------------------------------------

@transaction.atomic
def subscription_create(*, actor: User, dataset: Dataset, department: Department, connection: Connection,
                        target_table: str, purge_on_end: bool = False, schedule: str = "",
                        deliver_on_change: bool = False) -> Subscription:
    """Precondition: the actor is a steward of ``department``."""
    if connection.department_id != department.pk:
        raise ApplicationError("The target connection must belong to the subscribing department.",
                               fields={"connection": ["Not a connection of this department."]})
    if connection.kind not in (ConnectionKind.POSTGRESQL, ConnectionKind.SQLITE):
        raise ApplicationError("Deliveries go to a PostgreSQL or SQLite connection.",
                               fields={"connection": ["Not a database connection."]})
    view = effective_view(dataset=dataset, department=department)
    if not view.can_read:
        raise ApplicationError("The department has no active grant on this dataset to subscribe with.",
                               code="no_grant")
    holder = Subscription.objects.filter(connection=connection, target_table=target_table).filter(
        holds_target_table()).first()
    if holder is not None:
        if holder.status == SubscriptionStatus.ENDED:
            raise ConflictError(f"The ended subscription #{holder.pk} kept its delivered copy in this table: drop that "
                                f"copy first, or choose another table name.")
        raise ConflictError("Another subscription already writes to this table.")
    subscription = Subscription.objects.create(dataset=dataset, department=department, connection=connection,
                                               target_table=target_table, purge_on_end=purge_on_end,
                                               deliver_on_change=deliver_on_change, created_by=actor)
    _set_schedule(subscription, schedule, task="exchange.tasks.deliver_scheduled",
                  name=f"deliver subscription {subscription.pk}")
    subscription.save()
    audit_record(actor=actor, action="subscription.created", obj=subscription, dataset_id=dataset.pk,
                 department_id=department.pk, fields=list(view.fields),
                 details={"target": f"{connection.redacted} → {target_table}", "schedule": subscription.schedule,
                          "deliver_on_change": deliver_on_change})
    return subscription


@transaction.atomic
def subscription_update(*, actor: User, subscription: Subscription, schedule: str | None = None,
                        purge_on_end: bool | None = None, paused: bool | None = None,
                        deliver_on_change: bool | None = None) -> Subscription:
    # Re-read under the row's lock: a grant ending meanwhile may have ended it, and a delivery
    # finishing writes its bookmark to the same row.
    subscription = Subscription.objects.select_for_update(no_key=True, of=("self",)).select_related(
        "periodic_task", "dataset", "department", "connection").get(pk=subscription.pk)
    if subscription.status == SubscriptionStatus.ENDED:
        raise ConflictError("The subscription has ended; it can no longer be changed.")
    if schedule is not None:
        _set_schedule(subscription, schedule, task="exchange.tasks.deliver_scheduled",
                      name=f"deliver subscription {subscription.pk}")
    if purge_on_end is not None:
        subscription.purge_on_end = purge_on_end
    if paused is not None:
        subscription.status = SubscriptionStatus.PAUSED if paused else SubscriptionStatus.ACTIVE
    if deliver_on_change is not None:
        subscription.deliver_on_change = deliver_on_change
    subscription.save(update_fields=["periodic_task", "schedule", "purge_on_end", "status", "deliver_on_change"])
    audit_record(actor=actor, action="subscription.updated", obj=subscription, dataset_id=subscription.dataset_id,
                 department_id=subscription.department_id,
                 details={"schedule": subscription.schedule, "purge_on_end": subscription.purge_on_end,
                          "status": subscription.status, "deliver_on_change": subscription.deliver_on_change})
    return subscription


def subscription_end(*, actor: User, subscription: Subscription, purge: bool = False) -> Subscription:
    """End the subscription at a steward's request: no more deliveries, its schedule disabled.
    It stays, with its delivery history, as the record of what the department received, and
    keeps its table until the copy is dropped. With ``purge`` the copy is dropped right after.

    The end commits first: a delivery still writing then finds it ended when it comes to
    commit, rolls its target back and lets go of the table, which only then can be dropped
    (dropping first, under the subscription's lock, could wait forever on that delivery's
    hold on the table while the delivery waits for the lock). If dropping fails, the
    subscription has ended all the same and the error says so; the copy can be dropped later."""
    from exchange.sync.delivery import subscription_mark_ended

    with transaction.atomic():
        subscription = Subscription.objects.select_for_update(no_key=True, of=("self",)).select_related(
            "dataset", "department", "connection").get(pk=subscription.pk)
        if subscription.status == SubscriptionStatus.ENDED:
            raise ConflictError("The subscription has already ended.")
        subscription_mark_ended(subscription=subscription, reason=f"ended by {actor.get_username()}", actor=actor,
                                purging=purge)
    if purge:
        try:
            subscription_purge(actor=actor, subscription=subscription)
        except ApplicationError as exc:
            raise ApplicationError(f"The subscription ended, but its delivered copy stays: {exc.message} "
                                   f"Drop it from the subscription's page once the target is reachable.",
                                   code="ended_copy_kept", fields={"purge": [exc.message]}) from exc
    subscription.refresh_from_db()
    return subscription


def subscription_delete(*, actor: User, subscription: Subscription, purge: bool = False) -> None:
    """Remove an ended subscription and its delivery history (the audit trail keeps every
    delivery's event). One that has not ended is refused: ending is what stops its deliveries,
    and it is audited on its own."""
    if subscription.status != SubscriptionStatus.ENDED:
        raise ConflictError("End the subscription before removing it.")
    if purge and subscription.purged_at is None:
        subscription_purge(actor=actor, subscription=subscription)
    with transaction.atomic():
        # FOR UPDATE (not NO KEY): a new run's reference to the row waits, so none is queued
        # between this check and the delete.
        subscription = Subscription.objects.select_for_update(of=("self",)).get(pk=subscription.pk)
        if Run.objects.filter(subscription=subscription, status__in=(RunStatus.QUEUED, RunStatus.RUNNING)).exists():
            raise ConflictError("A delivery of this subscription is still queued or running; remove it once that "
                                "has stopped.")
        if subscription.periodic_task_id:
            PeriodicTask.objects.filter(pk=subscription.periodic_task_id).delete()
        audit_record(actor=actor, action="subscription.deleted", obj=subscription,
                     dataset_id=subscription.dataset_id, department_id=subscription.department_id)
        subscription.delete()


def subscription_purge(*, actor: User, subscription: Subscription) -> Subscription:
    """Drop the delivered copy from the target (the steward's choice once a grant ended)."""
    from exchange.sync.delivery import TargetError, subscription_purge_target

    try:
        subscription_purge_target(subscription=subscription)
    except (TargetError, readers.SourceError) as exc:
        raise ApplicationError(f"The delivered copy could not be purged: {exc}") from exc
    audit_record(actor=actor, action="subscription.purge", obj=subscription, dataset_id=subscription.dataset_id,
                 department_id=subscription.department_id)
    subscription.refresh_from_db()
    return subscription


def subscriptions_lock_for_grant(*, grant: Any) -> list[Subscription]:
    """Lock the subscriptions that a change of ``grant`` may end: the grant's department's on
    its dataset that have not ended. A grant service calls this before it appends anything to
    the audit trail: an append holds the trail's one lock until the transaction commits, and
    a delivery holds its subscription's lock while its target commits, so locking in the other
    order would keep every audited action in the exchange waiting on a department's database."""
    from exchange.access.models import PrincipalKind

    if grant.principal_kind != PrincipalKind.DEPARTMENT or grant.principal_department_id is None:
        return []
    return list(
        Subscription.objects.select_for_update(no_key=True, of=("self",)).select_related("dataset")
        .filter(dataset_id=grant.dataset_id, department_id=grant.principal_department_id)
        .exclude(status=SubscriptionStatus.ENDED).order_by("pk")
    )


def subscriptions_end_for_grant(*, grant: Any, reason: str, at: datetime | None = None) -> list[Subscription]:
    """Called by the grant services in the transaction that revoked, expired or narrowed
    ``grant``: every subscription of the grant's department on the dataset that no grant in
    force still lets read anything ends now, in that same transaction (audited, the
    department's stewards told), not at its next run. A purge of the delivered copy, where the
    steward chose it, is a job queued after commit: it writes to the department's database.
    ``at``: the moment the grant ended (the grant services' ``now``)."""
    from exchange.sync.delivery import subscription_mark_ended

    subscriptions = subscriptions_lock_for_grant(grant=grant)
    if not subscriptions or effective_view(dataset=grant.dataset, department=grant.principal_department,
                                           at=at).can_read:
        return []
    ended = []
    for subscription in subscriptions:
        if subscription_mark_ended(subscription=subscription, reason=reason, actor_label="job:grants",
                                   details={"grant": grant.pk}):
            ended.append(subscription)
            if subscription.purge_on_end:
                _purge_after_commit(subscription.pk)
    return ended


PURGE_TASK = "exchange.tasks.deliver_purge"


def _purge_after_commit(subscription_id: int) -> None:
    """Send the purge job once the ending commits. Its send is recorded in the same
    transaction, so a job that never reached the broker (or a worker) is sent again by the
    reaper (``purges_resend``)."""
    Subscription.objects.filter(pk=subscription_id).update(purge_sent_at=timezone.now())
    transaction.on_commit(lambda: _send_purge(subscription_id))


def _send_purge(subscription_id: int) -> None:
    from kombu.exceptions import OperationalError as BrokerError

    try:
        # By name, as exchange.sync.runs queues its runs: the task module calls into this one.
        current_app.tasks[PURGE_TASK].delay(subscription_id)
    except BrokerError as exc:
        log.warning("the purge of subscription %s waits for the reaper: its job could not be sent (%s)",
                    subscription_id, exc)


def purges_waiting() -> Q:
    """Ended subscriptions whose purge job was sent and whose copy is still there, not given up."""
    return Q(status=SubscriptionStatus.ENDED, purge_on_end=True, purged_at__isnull=True,
             purge_sent_at__isnull=False, purge_error="")


def purges_resend(*, resend_after: timedelta | None = None) -> list[int]:
    """Send again the purge job of each subscription whose copy is still there
    ``resend_after`` (SYNC_RUN_RESEND_AFTER) after the job was last sent: its message was lost
    (broker down, a worker killed before acknowledging it) or it gave up on a target that was
    unreachable. Each is claimed by a conditional update, so two reapers send it once."""
    cutoff = timezone.now() - (resend_after or settings.SYNC_RUN_RESEND_AFTER)
    sent = []
    for pk, sent_at in Subscription.objects.filter(purges_waiting(), purge_sent_at__lt=cutoff).values_list(
            "pk", "purge_sent_at"):
        if Subscription.objects.filter(pk=pk, purge_sent_at=sent_at).update(purge_sent_at=timezone.now()):
            _send_purge(pk)
            sent.append(pk)
    return sent
