"""Delivery: store → a subscribing department's target table, for one claimed run.

What is written is exactly the subscriber's effective view (``exchange.access.policy``), projected
in SQL by ``exchange.records.build_select``: visible fields only, masked or pseudonymised as
granted, rows outside the grants' row filters left out. The target table is the exchange's:
it is created (and rebuilt when the view changes) from the view's columns, plus ``_changed_at``
(when each row's change was first seen at the source), and a table found changed by hand fails
the run rather than being overwritten.

Runs are incremental from the last delivered store change (``_seq``), deletions included,
upserting by key, when the key is visible unconditionally and in one form and every row is
covered. Otherwise (a row filter, a masked key) each run rebuilds the copy, so that a record
leaving the view also leaves the target. Either way the target is written in ONE transaction
of the target database; the subscription's bookmark moves only after it committed, so a
crash in between re-delivers the same changes, which the upsert absorbs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from exchange.access.models import AccessForm
from exchange.access.policy import EffectiveView, effective_view
from exchange.audit.services import audit_record
from exchange.records.selectors import Select, build_select
from exchange.records.store import StoreTable, ident, is_postgres, store_exists, store_table
from exchange.sync import secrets
from exchange.sync.convert import for_sqlite
from exchange.sync.dispatch import delivery_follow_up
from exchange.sync.errors import TransientSourceError
from exchange.sync.models import ConnectionKind, Run, RunStatus, Subscription, SubscriptionStatus, holds_target_table
from exchange.sync.readers import sqlite_path

PG_TYPES = {"text": "text", "integer": "bigint", "decimal": "numeric", "boolean": "boolean", "date": "date",
            "timestamp": "timestamptz", "geopoint": "text", "json": "jsonb"}
PG_UDT = {"text": "text", "bigint": "int8", "numeric": "numeric", "boolean": "bool", "date": "date",
          "timestamptz": "timestamptz", "jsonb": "jsonb"}
SQLITE_TYPES = {"text": "text", "integer": "integer", "decimal": "numeric", "boolean": "integer", "date": "text",
                "timestamp": "text", "geopoint": "text", "json": "text"}
BATCH = 5000


# A column of every target table after the delivered fields (which start with a letter): when
# the row's change was first seen at the source.
CHANGED_AT = "_changed_at"

SQLITE_BUSY_SECONDS = 5.0  # how long a SQLite target's write lock is waited for


class TargetError(Exception):
    """The target cannot be written as configured; retrying will not help."""


class SubscriptionEnded(Exception):
    pass


class GrantChanged(TransientSourceError):
    """The department's view changed while the run wrote: nothing was delivered; a retry
    delivers the new view."""


@dataclass(frozen=True)
class Plan:
    view: EffectiveView
    table: StoreTable
    columns: list[tuple[str, str]]  # (name, projected field type)
    key: list[str]  # upsert key in the target; empty = rebuild every run


def _key_for(view: EffectiveView, table: StoreTable) -> list[str]:
    if not view.all_rows:
        return []
    for k in table.key_columns:
        access = view.fields.get(k)
        if access is None or len(access.effective_forms) != 1 or access.effective_forms[0] == AccessForm.MASKED:
            return []
        if not any(not r.row_filter for r in access.rules):
            return []
    return list(table.key_columns)


def _bounded(select: Select, names: Sequence[str], *, system: bool) -> str:
    """The projected rows up to the change number ``top`` (the last placeholder), each with
    the time its change was first seen at the source (``CHANGED_AT``: the start of the ingest
    run that last changed the record, which read it from the source)."""
    d, r = ident("_d"), ident("_r")
    # SQLite keeps Django's datetimes as naive UTC text: say so, for whichever target reads it.
    seen = f"{r}.{ident('started_at')}" + ("" if is_postgres() else " || '+00:00'")
    cols = [f"{d}.{ident(n)}" for n in names] + [f"{seen} AS {ident(CHANGED_AT)}"]
    cols += [f"{d}.{ident('_deleted')}"] if system else []
    return (f"SELECT {', '.join(cols)} FROM ({select.sql}) AS {d} "  # noqa: S608
            f"LEFT JOIN {ident(Run._meta.db_table)} AS {r} ON {r}.{ident('id')} = {d}.{ident('_last_run')} "
            f"WHERE {d}.{ident('_seq')} <= %s")


# --- Targets --------------------------------------------------------------------------------

def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgTarget:
    def __init__(self, dsn: str, table: str) -> None:
        import psycopg

        try:
            self.conn = psycopg.connect(dsn, connect_timeout=10, application_name="exchange-delivery")
        except psycopg.OperationalError as exc:
            raise TransientSourceError(f"Cannot connect to the target database: {exc}".splitlines()[0]) from exc
        self.table = table
        schema, _, name = table.rpartition(".")
        self.schema, self.name = schema or None, name
        self.qualified = ".".join(self._q(p) for p in table.split(".", 1))

    def _q(self, name: str) -> str:
        from psycopg import sql

        return sql.Identifier(name).as_string(self.conn)

    def existing(self) -> dict[str, str] | None:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = %s "
                "AND table_schema = coalesce(%s, current_schema()) ORDER BY ordinal_position",
                [self.name, self.schema])
            rows = cur.fetchall()
        return {r[0]: r[1] for r in rows} or None

    @staticmethod
    def expected(columns: Sequence[Sequence[str]], *, changed_at: bool = True) -> dict[str, str]:
        found = {name: PG_UDT[PG_TYPES[t]] for name, t in columns}
        return {**found, CHANGED_AT: "timestamptz"} if changed_at else found

    def create(self, columns: Sequence[tuple[str, str]], key: Sequence[str]) -> None:
        ddl = [f"{self._q(n)} {PG_TYPES[t]}" for n, t in columns] + [f"{self._q(CHANGED_AT)} timestamptz"]
        if key:
            ddl.append(f"PRIMARY KEY ({', '.join(self._q(k) for k in key)})")
        self.conn.execute(f"CREATE TABLE {self.qualified} ({', '.join(ddl)})")

    def drop(self, *, wait_seconds: int | None = None) -> None:
        if wait_seconds is not None:  # give up instead of waiting on whoever holds the table
            self.conn.execute(f"SET LOCAL lock_timeout = '{int(wait_seconds)}s'")
        self.conn.execute(f"DROP TABLE IF EXISTS {self.qualified}")

    def copy_in(self, table: str, names: Sequence[str], chunks: Iterator[bytes]) -> None:
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(map(self._q, names))}) FROM STDIN") as copy:
            for chunk in chunks:
                copy.write(chunk)

    def rows_in(self, table: str, names: Sequence[str], rows: Iterator[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(map(self._q, names))}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def stage(self, columns: Sequence[tuple[str, str]]) -> str:
        ddl = [f"{self._q(n)} {PG_TYPES[t]}" for n, t in columns] + [f"{self._q(CHANGED_AT)} timestamptz",
                                                                      '"_deleted" boolean']
        self.conn.execute(f"CREATE TEMP TABLE \"_exchange_stage\" ({', '.join(ddl)}) ON COMMIT DROP")
        return '"_exchange_stage"'

    def apply(self, stage: str, names: Sequence[str], key: Sequence[str]) -> tuple[int, int, int]:
        match = " AND ".join(f"t.{self._q(k)} = s.{self._q(k)}" for k in key)
        cols = ", ".join(map(self._q, names))
        sets = (", ".join(f"{self._q(n)} = excluded.{self._q(n)}" for n in names if n not in key)
                or f"{self._q(key[0])} = excluded.{self._q(key[0])}")
        with self.conn.cursor() as cur:
            cur.execute(f'DELETE FROM {self.qualified} AS t USING {stage} AS s WHERE {match} AND s."_deleted"')  # noqa: S608
            deleted = cur.rowcount
            cur.execute(
                f"WITH u AS (INSERT INTO {self.qualified} ({cols}) SELECT {cols} FROM {stage} "  # noqa: S608
                f'WHERE NOT "_deleted" ON CONFLICT ({", ".join(map(self._q, key))}) DO UPDATE SET {sets} '
                "RETURNING (xmax = 0) AS ins) "
                "SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM u"
            )
            inserted, updated = cur.fetchone()  # type: ignore[misc]
        return inserted, updated, deleted

    def clear(self) -> None:
        self.conn.execute(f"DELETE FROM {self.qualified}")  # noqa: S608

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


class SqliteTarget:
    def __init__(self, path: str, table: str) -> None:
        self.conn = sqlite3.connect(sqlite_path(path), isolation_level=None, timeout=SQLITE_BUSY_SECONDS)
        self.conn.execute("BEGIN IMMEDIATE")
        self.name = table
        self.qualified = _q(table)

    def existing(self) -> dict[str, str] | None:
        rows = self.conn.execute("SELECT name, type FROM pragma_table_info(?)", [self.name]).fetchall()
        return {r[0]: r[1].lower() for r in rows} or None

    @staticmethod
    def expected(columns: Sequence[Sequence[str]], *, changed_at: bool = True) -> dict[str, str]:
        found = {name: SQLITE_TYPES[t] for name, t in columns}
        return {**found, CHANGED_AT: "text"} if changed_at else found

    def create(self, columns: Sequence[tuple[str, str]], key: Sequence[str]) -> None:
        ddl = [f"{_q(n)} {SQLITE_TYPES[t]}" for n, t in columns] + [f"{_q(CHANGED_AT)} text"]
        if key:
            ddl.append(f"PRIMARY KEY ({', '.join(_q(k) for k in key)})")
        self.conn.execute(f"CREATE TABLE {self.qualified} ({', '.join(ddl)})")

    def drop(self, *, wait_seconds: int | None = None) -> None:
        # The write lock was taken at BEGIN IMMEDIATE, within sqlite3's busy timeout.
        self.conn.execute(f"DROP TABLE IF EXISTS {self.qualified}")

    def rows_in(self, table: str, names: Sequence[str], rows: Iterator[Sequence[Any]]) -> None:
        marks = ", ".join("?" * len(names))
        sql = f"INSERT INTO {table} ({', '.join(map(_q, names))}) VALUES ({marks})"  # noqa: S608
        batch: list[list[Any]] = []
        for row in rows:
            batch.append([for_sqlite(v) for v in row])
            if len(batch) >= BATCH:
                self.conn.executemany(sql, batch)
                batch.clear()
        self.conn.executemany(sql, batch)

    def stage(self, columns: Sequence[tuple[str, str]]) -> str:
        self.conn.execute('DROP TABLE IF EXISTS temp."_exchange_stage"')
        ddl = [f"{_q(n)} {SQLITE_TYPES[t]}" for n, t in columns] + [f"{_q(CHANGED_AT)} text", '"_deleted" integer']
        self.conn.execute(f"CREATE TEMP TABLE \"_exchange_stage\" ({', '.join(ddl)})")
        return '"_exchange_stage"'

    def apply(self, stage: str, names: Sequence[str], key: Sequence[str]) -> tuple[int, int, int]:
        match = " AND ".join(f"{self.qualified}.{_q(k)} = s.{_q(k)}" for k in key)
        cols = ", ".join(map(_q, names))
        exists = f"EXISTS (SELECT 1 FROM {stage} AS s WHERE {match} AND s.\"_deleted\")"  # noqa: S608
        deleted = self.conn.execute(f"DELETE FROM {self.qualified} WHERE {exists}").rowcount  # noqa: S608
        before = self.conn.execute(f"SELECT count(*) FROM {self.qualified}").fetchone()[0]  # noqa: S608
        sets = (", ".join(f"{_q(n)} = excluded.{_q(n)}" for n in names if n not in key)
                or f"{_q(key[0])} = excluded.{_q(key[0])}")
        written = self.conn.execute(
            f"INSERT INTO {self.qualified} ({cols}) SELECT {cols} FROM {stage} WHERE NOT \"_deleted\" AND true "  # noqa: S608
            f"ON CONFLICT ({', '.join(map(_q, key))}) DO UPDATE SET {sets}").rowcount
        after = self.conn.execute(f"SELECT count(*) FROM {self.qualified}").fetchone()[0]  # noqa: S608
        return after - before, written - (after - before), deleted

    def clear(self) -> None:
        self.conn.execute(f"DELETE FROM {self.qualified}")  # noqa: S608

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def close(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.conn.close()


Target = PgTarget | SqliteTarget


def open_target(subscription: Subscription) -> Target:
    secret = secrets.decrypt(subscription.connection.secret_encrypted)
    if subscription.connection.kind == ConnectionKind.POSTGRESQL:
        return PgTarget(secret, subscription.target_table)
    if subscription.connection.kind == ConnectionKind.SQLITE:
        return SqliteTarget(secret, subscription.target_table)
    raise TargetError("Deliveries go to a PostgreSQL or SQLite connection.")


# --- Reading the store through the view -----------------------------------------------------

def _store_reader_pg() -> Any:
    """A connection of its own, so the read is one consistent snapshot and progress can be
    recorded on Django's connection meanwhile."""
    import psycopg

    s = connection.settings_dict
    params = {"dbname": s["NAME"], "user": s.get("USER") or None, "password": s.get("PASSWORD") or None,
              "host": s.get("HOST") or None, "port": s.get("PORT") or None}
    conn = psycopg.connect(**{k: v for k, v in params.items() if v}, autocommit=False)
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    return conn


def _copy_chunks(reader: Any, sql: str, params: Sequence[Any], progress: Any) -> Iterator[bytes]:
    import psycopg

    query = psycopg.ClientCursor(reader).mogrify(sql, params)
    with reader.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT") as copy:
        for chunk in copy:
            progress(bytes(chunk).count(b"\n"))
            yield bytes(chunk)


def _row_iter(reader: Any, sql: str, params: Sequence[Any], progress: Any) -> Iterator[Sequence[Any]]:
    if reader is not None:
        with reader.cursor(name="exchange_delivery") as cur:
            cur.itersize = BATCH
            cur.execute(sql, params)
            n = 0
            for row in cur:
                n += 1
                if n % BATCH == 0:
                    progress(BATCH)
                yield row
            progress(n % BATCH)
        return
    with connection.cursor() as cur:
        cur.execute(sql, params)
        while batch := cur.fetchmany(BATCH):
            progress(len(batch))
            yield from batch


class _Progress:
    def __init__(self, run: Run) -> None:
        self.run, self.done, self.last = run, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last > 2:
            self.last = time.monotonic()
            if not Run.objects.filter(pk=self.run.pk, status=RunStatus.RUNNING).update(
                    rows_done=self.done, heartbeat_at=timezone.now()) or \
                    Run.objects.filter(pk=self.run.pk, cancel_requested=True).exists():
                from exchange.sync.ingest import RunCancelled

                raise RunCancelled()


# --- The service ----------------------------------------------------------------------------

def subscription_mark_ended(*, subscription: Subscription, reason: str, actor_label: str = "",
                            details: dict[str, Any] | None = None, actor: Any = None,
                            purging: bool | None = None) -> bool:
    """End the subscription (status, beat row disabled, audit, the subscribing department's
    stewards told) unless it has ended already; returns whether this call ended it. Runs in
    the caller's transaction, so the subscription ends together with what ended its grant.
    ``purging``: whether the delivered copy is about to be dropped (default: the
    subscription's ``purge_on_end``), for the stewards' notice."""
    from django_celery_beat.models import PeriodicTask

    from departments.notifications import notify
    from exchange.access.selectors import stewards_of

    with transaction.atomic():
        if not Subscription.objects.filter(pk=subscription.pk).exclude(status=SubscriptionStatus.ENDED).update(
                status=SubscriptionStatus.ENDED, ended_at=timezone.now(), ended_reason=reason):
            return False
        if subscription.periodic_task_id:
            PeriodicTask.objects.filter(pk=subscription.periodic_task_id).update(enabled=False)
        # A delivery still writing stops at its next batch (and could not commit anyway), so
        # it lets go of the target's table soon, for a purge that may follow.
        Run.objects.filter(subscription=subscription, status=RunStatus.RUNNING).update(cancel_requested=True)
        audit_record(actor=actor, actor_label=actor_label, action="subscription.ended", obj=subscription,
                     dataset_id=subscription.dataset_id, department_id=subscription.department_id,
                     details={"reason": reason, **(details or {})})
        dataset = subscription.dataset
        notify(recipients=stewards_of(subscription.department_id), kind="subscription.ended",
               subject=f"Delivery of {dataset.title} stopped",
               body=f"The subscription delivering {dataset.title} into {subscription.target_table} ended: {reason}."
                    + (" The delivered copy was dropped." if subscription.purged_at else
                       " The delivered copy will be removed, as chosen."
                       if (subscription.purge_on_end if purging is None else purging) else
                       " The delivered copy stays where it is; a steward may purge it."),
               link=f"/api/v1/sync/subscriptions/{subscription.pk}/", obj=subscription)
    return True


def subscription_end(*, subscription: Subscription, reason: str) -> None:
    """Stop a subscription whose grant ended (found by a delivery run); purge the copy if the
    steward asked for it."""
    subscription_mark_ended(subscription=subscription, reason=reason, actor_label="job:delivery")
    if subscription.purge_on_end:
        subscription_purge_target(subscription=subscription)


PURGE_CLAIM_STALE = timedelta(minutes=10)  # a claim older than this was left by a killed worker
PURGE_LOCK_WAIT_SECONDS = 10


def subscription_purge_target(*, subscription: Subscription) -> None:
    """Drop the delivered table. One purge at a time: it first claims the subscription by a
    conditional update, committed before the target is touched, so a second purge (a double
    click, the purge job) is refused instead of dropping a table that meanwhile belongs to a
    new subscription. Refused, too, for an ended subscription whose copy was dropped already
    (see ``holds_target_table``). Raises TargetError, or TransientSourceError when the target is
    locked or unreachable for now (or another SourceError of the connection)."""
    import psycopg

    now = timezone.now()
    claimable = Q(purge_claimed_at__isnull=True) | Q(purge_claimed_at__lt=now - PURGE_CLAIM_STALE)
    if not Subscription.objects.filter(claimable, pk=subscription.pk).exclude(
            status=SubscriptionStatus.ENDED, purged_at__isnull=False).update(purge_claimed_at=now):
        current = Subscription.objects.filter(pk=subscription.pk).first()
        if current is None or current.purged_at is None or current.status != SubscriptionStatus.ENDED:
            raise TargetError("The delivered copy is being dropped already.")
        holder = Subscription.objects.filter(holds_target_table(), connection_id=subscription.connection_id,
                                             target_table=subscription.target_table).first()
        raise TargetError(f"This subscription's copy was dropped already; the table {subscription.target_table} "
                          + (f"is now written by subscription #{holder.pk}." if holder else "is not touched."))
    try:
        target = open_target(subscription)
        try:
            target.drop(wait_seconds=PURGE_LOCK_WAIT_SECONDS)
            target.commit()
        finally:
            target.close()
    except (sqlite3.Error, psycopg.Error) as exc:
        Subscription.objects.filter(pk=subscription.pk).update(purge_claimed_at=None)
        # Locked or unreachable for now (worth another try later), or refused for good.
        transient = isinstance(exc, sqlite3.OperationalError | psycopg.OperationalError)
        raise (TransientSourceError if transient else TargetError)(
            f"Dropping the delivered table failed: {str(exc).splitlines()[0]}") from exc
    except BaseException:
        Subscription.objects.filter(pk=subscription.pk).update(purge_claimed_at=None)
        raise
    with transaction.atomic():
        Subscription.objects.filter(pk=subscription.pk).update(purged_at=timezone.now(), purge_claimed_at=None,
                                                               last_seq=0, delivered_columns=[], purge_error="")
        audit_record(actor=None, actor_label="job:delivery", action="subscription.purged", obj=subscription,
                     dataset_id=subscription.dataset_id, department_id=subscription.department_id)


def delivery_execute(*, run: Run) -> None:
    """Do the work of a claimed delivery run and record its success. Precondition: ``run`` is
    RUNNING and claimed by the caller; raises on failure with the target unchanged (only a
    failure to record a delivery whose target has just committed leaves it changed; its
    ``delivery.started`` event says what it was given)."""
    subscription = run.subscription
    assert subscription is not None
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise SubscriptionEnded(f"The subscription is {subscription.status}.")
    dataset = subscription.dataset
    view = effective_view(dataset=dataset, department=subscription.department)
    if not view.can_read:
        subscription_end(subscription=subscription, reason="no active grant")
        raise SubscriptionEnded("The department's grant on this dataset has ended; the subscription was stopped"
                                + (" and the delivered copy purged." if subscription.purge_on_end else "."))
    if not store_exists(dataset):
        raise TargetError("Nothing has been ingested into this dataset yet.")
    table = store_table(dataset)
    names = [n for n in view.fields]
    # What the grants allow now, in the form _lock_if_still_granted compares at the end.
    planned = select = build_select(view, table, since_seq=None, include_deleted=True, with_system=True,
                                    paginate=False, ordered=False)
    columns = [(c.name, c.field_type) for c in select.columns]
    key = _key_for(view, table)
    # On the record before anything is written, so that a delivery whose target committed
    # but whose ``delivery.run`` event was never appended (a crash in between) is known too.
    _audit_delivery(run, subscription, view, columns, action="delivery.started")
    reader = _store_reader_pg() if is_postgres() else None
    target = open_target(subscription)
    progress = _Progress(run)
    try:
        if reader is not None:
            top = reader.execute(f"SELECT coalesce(max({ident('_seq')}), 0) FROM {table.qualified}").fetchone()[0]  # noqa: S608
        else:
            with connection.cursor() as cur:
                cur.execute(f"SELECT coalesce(max({ident('_seq')}), 0) FROM {table.qualified}")  # noqa: S608
                top = cur.fetchone()[0]
        existing = target.existing()
        # A copy written before targets carried CHANGED_AT is rebuilt once, with it.
        legacy = bool(subscription.delivered_columns) and existing == target.expected(
            subscription.delivered_columns, changed_at=False)
        if existing is not None and not legacy and existing != target.expected(subscription.delivered_columns):
            if subscription.delivered_columns:
                raise TargetError(
                    f"The target table {subscription.target_table} was changed by hand: it has columns "
                    f"{_describe(existing)}, the exchange created "
                    f"{_describe(target.expected(subscription.delivered_columns))}. "
                    f"Restore it, or drop it to let the next run recreate it."
                )
            raise TargetError(f"A table {subscription.target_table} already exists in the target and was not created "
                              f"by the exchange; choose another table name.")
        # A store table rebuilt by a schema change numbers from 1 again: below the bookmark.
        rebuild = (existing is None or legacy or not key or subscription.last_seq == 0 or top < subscription.last_seq
                   or subscription.delivered_columns != [list(c) for c in columns])
        since = None if rebuild else subscription.last_seq
        select = build_select(view, table, since_seq=since, include_deleted=not rebuild, with_system=True,
                              paginate=False, ordered=False)
        sql = _bounded(select, names, system=not rebuild)
        params = [*select.params, top]
        inserted = updated = deleted = 0
        written = [*names, CHANGED_AT]
        if rebuild:
            target.drop()
            target.create(columns, key)
            if reader is not None and isinstance(target, PgTarget):
                target.copy_in(target.qualified, written, _copy_chunks(reader, sql, params, progress))
            else:
                target.rows_in(target.qualified, written, _row_iter(reader, sql, params, progress))
            inserted = progress.done
        else:
            stage = target.stage(columns)
            if reader is not None and isinstance(target, PgTarget):
                target.copy_in(stage, [*written, "_deleted"], _copy_chunks(reader, sql, params, progress))
            else:
                target.rows_in(stage, [*written, "_deleted"], _row_iter(reader, sql, params, progress))
            inserted, updated, deleted = target.apply(stage, written, key)
        if reader is not None:
            reader.close()  # done reading: let go of the store's snapshot before waiting on locks
        seen = _changes_seen_at(table, after=subscription.last_seq, upto=int(top))
        with transaction.atomic():
            _lock_if_still_granted(run, subscription, table, planned)
            target.commit()
            # Still under the subscription's lock, so no purge or end slips in between the
            # target's commit and the bookmark and record of what it now holds.
            finish_delivery(run, subscription, view, columns, progress.done, inserted, updated, deleted,
                            seq_from=(since or 0) + 1, top=int(top), rebuild=rebuild, table=table, seen=seen)
    except sqlite3.Error as exc:
        raise TargetError(f"Writing the target failed: {exc}") from exc
    except Exception as exc:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            raise TransientSourceError(f"The target database went away: {str(exc).splitlines()[0]}") from exc
        if isinstance(exc, psycopg.Error):
            raise TargetError(f"Writing the target failed: {str(exc).splitlines()[0]}") from exc
        raise
    finally:
        target.close()
        if reader is not None:
            reader.close()


def _lock_if_still_granted(run: Run, subscription: Subscription, table: StoreTable, select: Select) -> None:
    """Lock the subscription's row and the run's, and make sure that, at this moment, the run
    is still running (not cancelled, not reaped), the subscription still active and the
    department's grants still allow exactly what was written (the same projection of the same
    rows); otherwise raise, and the target's transaction is rolled back, so nothing written
    after a grant ended or narrowed ever reaches the target. Precondition: inside the
    transaction that then commits the target. The locks are FOR NO KEY UPDATE, which new runs
    referring to the subscription do not wait for.

    Revoking, expiring, narrowing or lapsing a grant locks the department's subscriptions in
    its own transaction before anything else (``subscriptions_lock_for_grant``), so that
    transaction either commits before this check, which then sees the new grants, or waits
    until the target has committed."""
    from exchange.sync.ingest import RunCancelled

    current = Subscription.objects.select_for_update(no_key=True, of=("self",)).select_related("dataset").filter(
        pk=subscription.pk).first()
    if current is None or current.status != SubscriptionStatus.ACTIVE:
        state = "removed" if current is None else current.status
        raise SubscriptionEnded(f"The subscription was {state} while the run wrote; nothing was delivered.")
    if Run.objects.select_for_update(no_key=True).filter(pk=run.pk).values_list(
            "status", "cancel_requested").first() != (RunStatus.RUNNING, False):
        raise RunCancelled()
    # The dataset as it is now (a schema published during the run changes the view).
    view = effective_view(dataset=current.dataset, department=subscription.department)
    now = build_select(view, table, since_seq=None, include_deleted=True, with_system=True,
                       paginate=False, ordered=False) if view.can_read else None
    if now is None or (now.sql, now.params) != (select.sql, select.params):
        raise GrantChanged("The department's grants on this dataset changed while the run wrote; nothing was "
                           "delivered, and the run is retried with the new view.")


def _describe(columns: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in columns.items())


def finish_delivery(run: Run, subscription: Subscription, view: EffectiveView, columns: list[tuple[str, str]],
                    read: int, inserted: int, updated: int, deleted: int, *, seq_from: int, top: int,
                    rebuild: bool, table: StoreTable, seen: datetime | None) -> None:
    """Record a delivery that committed at the target. Precondition: inside the transaction
    that committed it, holding the subscription's row lock (``_lock_if_still_granted``)."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT coalesce(max({ident('_seq')}), 0) FROM {table.qualified}")  # noqa: S608
        store_top = int(cursor.fetchone()[0])
    with transaction.atomic():
        # The table holds a copy again, whatever was dropped before.
        Subscription.objects.filter(pk=subscription.pk).update(last_seq=top, delivered_columns=columns,
                                                               purged_at=None)
        fields = dict(status=RunStatus.SUCCEEDED, mode="full" if rebuild else "incremental", rows_read=read,
                      rows_done=read, rows_inserted=inserted, rows_updated=updated, rows_deleted=deleted,
                      finished_at=now, heartbeat_at=now, seq_from=seq_from if top >= seq_from else None,
                      seq_to=top if top >= seq_from else None, error="", changes_seen_at=seen,
                      target=f"{subscription.connection.redacted} → {subscription.target_table}")
        Run.objects.filter(pk=run.pk).update(**fields)
        for k, v in fields.items():
            setattr(run, k, v)
        _audit_delivery(run, subscription, view, columns, action="delivery.run",
                        row_count=inserted + updated + deleted,
                        details={"rebuild": rebuild, "seq_from": seq_from, "seq_to": top})
        # Changes that the store took while this delivery ran (it read a snapshot up to ``top``)
        # go out with the next one.
        delivery_follow_up(subscription=subscription, delivered_to=top, store_top=store_top, queue=run.queue)


def _changes_seen_at(table: StoreTable, *, after: int, upto: int) -> datetime | None:
    """When the oldest change numbered in (after, upto] was read from its source: the start of
    the ingest run that last wrote it. None when nothing was delivered before (a first copy
    carries the whole history, not a change) or nothing changed."""
    if after <= 0 or upto <= after:
        return None
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT min({ident('_last_run')}) FROM {table.qualified} "  # noqa: S608
                       f"WHERE {ident('_seq')} > %s AND {ident('_seq')} <= %s", [after, upto])
        first_run = cursor.fetchone()[0]
    if first_run is None:
        return None
    return Run.objects.filter(pk=first_run).values_list("started_at", flat=True).first()


def _audit_delivery(run: Run, subscription: Subscription, view: EffectiveView, columns: list[tuple[str, str]], *,
                    action: str, row_count: int | None = None, details: dict[str, Any] | None = None) -> None:
    audit_record(
        actor=None, actor_label="job:delivery", action=action, obj=run,
        dataset_id=subscription.dataset_id, department_id=subscription.department_id,
        row_count=row_count, fields=[name for name, _ in columns],
        details={"run": run.pk, "subscription": subscription.pk,
                 "forms": {n: view.fields[n].form for n, _ in columns},
                 "grants": sorted({g for n, _ in columns for g in view.fields[n].grant_ids}), **(details or {})},
    )
