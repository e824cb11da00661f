"""Delivery of granted fields to a subscribing department's SQLite or PostgreSQL target."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection as django_connection
from django.utils import timezone

from exchange.audit.models import AuditEvent
from exchange.sync import runs
from exchange.sync.models import Run, RunStatus, Subscription, SubscriptionStatus
from tests.exchange.sync.helpers import extra_pg_database, run_ingest
from tests.records_support import grant
from tests.sync_factories import PERMIT_FIELDS, connection, csv_bytes, permit_rows, published_dataset, upload_source

# transaction=True: on PostgreSQL the delivery reads the store through a connection of its own
# (one consistent snapshot), which sees only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)
HEADER = [f[0] for f in PERMIT_FIELDS]
CANARY = "CANARY-7f3a"


@pytest.fixture(autouse=True)
def dirs(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]


def _rows(n: int = 40, *, fee_bump: int = 0) -> list[list[object]]:
    rows = permit_rows(n, fee_bump=fee_bump)
    for r in rows:
        r[2] = f"{CANARY} {r[2]}"  # applicant: never granted
    return rows


@pytest.fixture
def setup(department, other_department, people):
    dataset = published_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, _rows()))
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    g = grant(dataset, department=other_department, approved_by=people["admin"],
              fields={"permit_id": "clear", "address": "masked", "fee": "pseudonymised", "approved": "clear"})
    return dataset, source, g


def sqlite_target(tmp_path: Path, department) -> tuple[Path, object]:
    path = tmp_path / "health.sqlite3"
    sqlite3.connect(path).close()
    return path, connection(department=department, kind="sqlite", secret=str(path), name="health warehouse")


def deliver(subscription: Subscription) -> Run:
    run = Run.objects.create(kind="delivery", subscription=subscription, dataset=subscription.dataset)
    runs.execute(run_id=run.pk)
    run.refresh_from_db()
    return run


def rewrite(source, rows) -> None:
    (Path(django_settings.MEDIA_ROOT) / source.upload).write_bytes(csv_bytes(HEADER, rows))


def read_sqlite(path: Path, table: str = "permits") -> tuple[list[str], list[tuple]]:
    db = sqlite3.connect(path)
    cur = db.execute(f'SELECT * FROM "{table}" ORDER BY 1')
    return [d[0] for d in cur.description], cur.fetchall()


def test_exactly_the_granted_fields_in_the_granted_form(setup, other_department, tmp_path):
    dataset, source, g = setup
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits")
    run = deliver(sub)
    assert run.status == RunStatus.SUCCEEDED, run.error
    names, rows = read_sqlite(path)
    assert names == ["permit_id", "address", "fee", "approved", "_changed_at"]
    assert len(rows) == 40 and run.rows_inserted == 40
    # Each row carries when its change was first seen at the source: the ingest run's start.
    ingest = Run.objects.get(kind="ingest")
    assert {dt.datetime.fromisoformat(r[4]) for r in rows} == {ingest.started_at}
    assert not any(CANARY in str(v) for row in rows for v in row)
    first = rows[0]
    assert first[0] == 1 and first[3] == 1
    assert first[1] != "1 Main Street" and first[1].endswith("reet")  # masked: last 4 characters kept
    assert len(first[2]) == 32 and "101" not in first[2]  # pseudonymised fee
    assert AuditEvent.objects.filter(action="delivery.run", department_id=other_department.pk,
                                     fields=["permit_id", "address", "fee", "approved"]).exists()
    assert run.seq_from == 1 and run.seq_to == 40 and "permits" in run.target
    # What it was about to write was on the record before it wrote anything.
    started, done = AuditEvent.objects.filter(action__startswith="delivery.", object_id=str(run.pk)).order_by("id")
    assert (started.action, started.row_count, done.action, done.row_count) == (
        "delivery.started", None, "delivery.run", 40)
    assert started.fields == done.fields and started.details["forms"] == done.details["forms"] == {
        "permit_id": "clear", "address": "masked", "fee": "pseudonymised", "approved": "clear"}
    assert started.details["grants"] == done.details["grants"] == [g.pk]


def test_incremental_delivery_carries_updates_and_deletions(setup, other_department, tmp_path):
    dataset, source, _ = setup
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits")
    deliver(sub)
    rows = _rows(30)
    rows[0][4] = "false"
    rewrite(source, rows + _rows(2, fee_bump=0)[:0])
    assert run_ingest(source).rows_deleted == 10
    sub.refresh_from_db()
    run = deliver(sub)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.mode == "incremental" and (run.rows_updated, run.rows_deleted, run.rows_inserted) == (1, 10, 0)
    _, delivered = read_sqlite(path)
    assert [r[0] for r in delivered] == list(range(1, 31)) and delivered[0][3] == 0
    # The changed row carries the second ingest's start, the others still the first's.
    first, second = Run.objects.filter(kind="ingest").order_by("pk")
    assert first.started_at is not None and second.started_at is not None
    assert dt.datetime.fromisoformat(delivered[0][4]) == second.started_at > first.started_at
    assert {dt.datetime.fromisoformat(r[4]) for r in delivered[1:]} == {first.started_at}
    sub.refresh_from_db()
    assert deliver(sub).rows_read == 0  # nothing changed since


def test_a_copy_without_the_change_time_is_rebuilt_once_with_it(setup, other_department, tmp_path):
    dataset, source, _ = setup
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits")
    deliver(sub)
    db = sqlite3.connect(path)
    db.execute('ALTER TABLE "permits" DROP COLUMN "_changed_at"')  # as copies were written before
    db.commit()
    db.close()
    rows = _rows()
    rows[0][4] = "false"
    rewrite(source, rows)
    run_ingest(source)
    sub.refresh_from_db()
    run = deliver(sub)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.mode == "full" and run.rows_inserted == 40
    names, delivered = read_sqlite(path)
    assert names[-1] == "_changed_at" and all(r[4] for r in delivered)
    sub.refresh_from_db()
    assert deliver(sub).mode == "incremental"  # and from then on as before


def test_row_filters_are_honoured(department, other_department, people, tmp_path):
    dataset = published_dataset(department=department)
    run_ingest(upload_source(dataset=dataset, content=csv_bytes(HEADER, _rows())))
    grant(dataset, department=other_department, approved_by=people["admin"], fields={"permit_id": "clear"},
          row_filter=[{"field": "approved", "op": "eq", "value": True}])
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="approved_permits")
    assert deliver(sub).status == RunStatus.SUCCEEDED
    _, rows = read_sqlite(path, "approved_permits")
    assert [r[0] for r in rows] == list(range(1, 41, 2))


def test_grant_expiry_stops_the_subscription_and_purges_on_request(setup, other_department, tmp_path):
    dataset, source, g = setup
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits", purge_on_end=True)
    deliver(sub)
    g.valid_until = timezone.now() - dt.timedelta(minutes=1)
    g.save()
    sub.refresh_from_db()
    run = deliver(sub)
    assert run.status == RunStatus.CANCELLED and "grant on this dataset has ended" in run.error
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.purged_at is not None
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == []


def _subscribe(dataset, other_department, tmp_path, *, purge_on_end: bool, schedule: str = "", people_admin=None):
    from exchange.sync import services as sync_services

    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits", purge_on_end=purge_on_end)
    if schedule:
        sub = sync_services.subscription_update(actor=people_admin, subscription=sub, schedule=schedule)
    assert deliver(sub).status == RunStatus.SUCCEEDED
    return path, sub


def _tables(path: Path) -> list[str]:
    return [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")]


def test_revoking_the_grant_ends_the_subscription_at_once(setup, other_department, people, tmp_path):
    from exchange.access import services as access_services
    from tests.factories import MembershipFactory

    dataset, _, g = setup
    health_steward = MembershipFactory.create(department=other_department, role="steward").user
    path, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=True, schedule="0 3 * * *",
                           people_admin=people["outsider"])
    assert sub.periodic_task is not None and sub.periodic_task.enabled
    access_services.grant_revoke(actor=people["steward"], grant=g, reason="Purpose fulfilled")
    # No delivery run was needed: the revocation ended it, audited, told, and purged the copy.
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.ended_at is not None
    assert not Run.objects.filter(subscription=sub).exclude(status=RunStatus.SUCCEEDED).exists()
    sub.periodic_task.refresh_from_db()
    assert not sub.periodic_task.enabled
    event = AuditEvent.objects.get(action="subscription.ended", object_id=str(sub.pk))
    assert event.details["grant"] == g.pk and "revoked (Purpose fulfilled)" in event.details["reason"]
    assert sub.ended_reason == event.details["reason"] == "the grant was revoked (Purpose fulfilled)"
    assert event.pk > AuditEvent.objects.get(action="grant.revoke").pk
    told = health_steward.notifications.get(kind="subscription.ended")
    assert "the grant was revoked" in told.body and "will be removed" in told.body
    assert not people["outsider"].notifications.filter(kind="subscription.ended").exists()  # an admin, not a steward
    assert sub.purged_at is not None and _tables(path) == []
    run = deliver(sub)
    assert run.status == RunStatus.CANCELLED and "subscription is ended" in run.error


def test_a_purge_whose_job_could_not_be_sent_is_sent_again_by_the_reaper(setup, other_department, people, tmp_path,
                                                                         settings):
    from unittest import mock

    from kombu.exceptions import OperationalError as BrokerError

    from exchange.access import services as access_services
    from exchange.sync import tasks

    dataset, _, g = setup
    path, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=True)

    def broker_down(self, *args, **kwargs):
        raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with mock.patch("celery.app.task.Task.apply_async", broker_down):
        access_services.grant_revoke(actor=people["steward"], grant=g, reason="Purpose fulfilled")  # no error
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.purged_at is None and sub.purge_sent_at is not None
    assert _tables(path) == ["permits"]
    tasks.housekeeping_reaper()  # not overdue yet: the job may still be on its way
    assert _tables(path) == ["permits"]
    Subscription.objects.filter(pk=sub.pk).update(
        purge_sent_at=timezone.now() - settings.SYNC_RUN_RESEND_AFTER - dt.timedelta(seconds=1))
    tasks.housekeeping_reaper()  # sends it again (run here: tasks are eager in tests)
    sub.refresh_from_db()
    assert sub.purged_at is not None and sub.purge_error == "" and _tables(path) == []
    assert AuditEvent.objects.filter(action="subscription.purged", object_id=str(sub.pk)).count() == 1
    Subscription.objects.filter(pk=sub.pk).update(purge_sent_at=timezone.now() - dt.timedelta(days=1))
    with mock.patch("celery.app.task.Task.apply_async") as send:
        tasks.housekeeping_reaper()
    assert not send.called  # dropped: nothing left to send


def test_a_purge_refused_for_good_says_why_and_is_not_sent_again(setup, other_department, people, tmp_path,
                                                                 as_user):
    from unittest import mock

    from exchange.access import services as access_services
    from exchange.sync import tasks
    from tests.factories import MembershipFactory

    dataset, _, g = setup
    path, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=True)
    path.write_bytes(b"this is not a database any more " * 200)  # the department replaced the file
    access_services.grant_revoke(actor=people["steward"], grant=g, reason="Purpose fulfilled")
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.purged_at is None
    assert "Dropping the delivered table failed" in sub.purge_error
    Subscription.objects.filter(pk=sub.pk).update(purge_sent_at=timezone.now() - dt.timedelta(days=1))
    with mock.patch("celery.app.task.Task.apply_async") as send:
        tasks.housekeeping_reaper()
    assert not send.called
    steward = MembershipFactory.create(department=other_department, role="steward").user
    body = as_user(steward).get(f"/api/v1/sync/subscriptions/{sub.pk}/").json()
    assert "Dropping the delivered table failed" in body["purge_error"] and body["purged_at"] is None


def test_expiry_ends_the_subscription_and_keeps_the_copy_unless_asked(setup, other_department, tmp_path):
    from exchange.access import services as access_services

    dataset, _, g = setup
    path, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=False)
    assert access_services.grant_expire_due(now=g.valid_until + dt.timedelta(seconds=1)) == 1
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.purged_at is None and _tables(path) == ["permits"]
    assert "end date" in AuditEvent.objects.get(action="subscription.ended").details["reason"]
    assert sub.ended_reason == "the grant reached its end date"


def test_subscriptions_that_ended_before_their_reason_was_kept_take_it_from_the_audit_trail(
        setup, other_department, tmp_path):
    """Migration exchange/0010 fills the reason in from each one's subscription.ended event."""
    import importlib

    from django.apps import apps

    from exchange.access import services as access_services

    dataset, _, g = setup
    _, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=False)
    access_services.grant_expire_due(now=g.valid_until + dt.timedelta(seconds=1))
    Subscription.objects.filter(pk=sub.pk).update(ended_reason="")
    migration = importlib.import_module("exchange.migrations.0010_subscription_ended_reason")
    migration.reasons_from_the_audit_trail(apps, None)
    sub.refresh_from_db()
    assert sub.ended_reason == "the grant reached its end date"


def test_a_subscription_lives_on_while_another_grant_covers_the_department(setup, other_department, people,
                                                                          tmp_path):
    from exchange.access import services as access_services

    dataset, _, g = setup
    _, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=True)
    grant(dataset, department=other_department, approved_by=people["admin"], fields={"permit_id": "clear"})
    user_grant = grant(dataset, user=people["outsider"], approved_by=people["admin"], fields={"fee": "clear"})
    access_services.grant_revoke(actor=people["steward"], grant=user_grant, reason="Not needed")
    access_services.grant_revoke(actor=people["steward"], grant=g, reason="Narrowed")
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ACTIVE
    assert not AuditEvent.objects.filter(action="subscription.ended").exists()


def test_lapsed_fields_end_the_subscription_when_nothing_is_left(setup, other_department, tmp_path):
    from exchange.access import services as access_services

    dataset, _, _ = setup
    _, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=False)
    access_services.grant_fields_lapse(dataset=dataset, removed_or_changed=["fee"], reason="Retyped.")
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ACTIVE  # other granted fields remain
    access_services.grant_fields_lapse(dataset=dataset, removed_or_changed=["permit_id", "address", "approved"],
                                       reason="Removed.")
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED
    assert "lapsed" in AuditEvent.objects.get(action="subscription.ended").details["reason"]


def _revoke_when_written(monkeypatch, target_class, method: str, revoke) -> None:
    """Revoke (once) right after the run has written the target, before it commits."""
    real = getattr(target_class, method)
    done: list[bool] = []

    def write_then_revoke(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if not done:
            done.append(True)
            revoke()
        return result

    monkeypatch.setattr(target_class, method, write_then_revoke)


def test_a_grant_revoked_while_the_run_writes_delivers_nothing(setup, other_department, people, tmp_path,
                                                              monkeypatch):
    from exchange.access import services as access_services
    from exchange.sync import delivery

    dataset, _, g = setup
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits")
    _revoke_when_written(monkeypatch, delivery.SqliteTarget, "rows_in", lambda: access_services.grant_revoke(
        actor=people["steward"], grant=g, reason="Purpose fulfilled"))
    run = deliver(sub)
    assert run.status == RunStatus.CANCELLED and "nothing was delivered" in run.error, run.error
    # The rows written before the revocation were rolled back with the table itself.
    assert _tables(path) == []
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.last_seq == 0 and sub.delivered_columns == []
    assert not AuditEvent.objects.filter(action="delivery.run").exists()


def test_a_grant_narrowed_while_the_run_writes_is_retried_with_the_new_view(setup, other_department, people,
                                                                           tmp_path, monkeypatch):
    from exchange.access import services as access_services
    from exchange.sync import delivery

    dataset, _, g = setup
    grant(dataset, department=other_department, approved_by=people["admin"], fields={"permit_id": "clear"})
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits")
    _revoke_when_written(monkeypatch, delivery.SqliteTarget, "rows_in", lambda: access_services.grant_revoke(
        actor=people["steward"], grant=g, reason="Narrowed"))
    run = deliver(sub)
    # The first attempt wrote the wider view and was rolled back; the retry (run at once by the
    # eager test queue) delivered what the remaining grant allows.
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2
    names, rows = read_sqlite(path)
    assert names == ["permit_id", "_changed_at"] and len(rows) == 40
    (event,) = AuditEvent.objects.filter(action="delivery.run")
    assert event.fields == ["permit_id"]


def test_a_grant_revoked_during_an_incremental_run_leaves_the_earlier_copy(setup, other_department, people,
                                                                         monkeypatch):
    if django_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL targets are tested on the PostgreSQL run")
    import psycopg

    from exchange.access import services as access_services
    from exchange.sync import delivery

    dataset, source, g = setup
    with extra_pg_database("wt_sync_tgt_revoke") as dsn:
        conn = connection(department=other_department, kind="postgresql", secret=dsn)
        sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                          target_table="permits")
        assert deliver(sub).status == RunStatus.SUCCEEDED
        dump = "SELECT string_agg(p::text, '|' ORDER BY permit_id) FROM permits p"
        with psycopg.connect(dsn) as tgt:
            first = tgt.execute(dump).fetchone()
        rewrite(source, _rows(40, fee_bump=1))
        run_ingest(source)
        sub.refresh_from_db()
        _revoke_when_written(monkeypatch, delivery.PgTarget, "apply", lambda: access_services.grant_revoke(
            actor=people["steward"], grant=g, reason="Purpose fulfilled"))
        run = deliver(sub)
        # Cancelled, so the revocation came from PgTarget.apply: the incremental path.
        assert run.status == RunStatus.CANCELLED and "nothing was delivered" in run.error, run.error
        with psycopg.connect(dsn) as tgt:  # the first delivery's copy, without the changes of the second
            assert tgt.execute(dump).fetchone() == first
        assert AuditEvent.objects.filter(action="delivery.run").count() == 1


def test_target_altered_by_hand_fails_clearly(setup, other_department, tmp_path):
    dataset, source, _ = setup
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits")
    deliver(sub)
    db = sqlite3.connect(path)
    db.execute('ALTER TABLE permits ADD COLUMN "comment" text')
    db.commit()
    sub.refresh_from_db()
    run = deliver(sub)
    assert run.status == RunStatus.FAILED and "changed by hand" in run.error and "comment text" in run.error


def test_postgresql_target_through_the_copy_pipe(setup, other_department):
    if django_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL targets are tested on the PostgreSQL run")
    import psycopg

    dataset, source, _ = setup
    with extra_pg_database("wt_sync_tgt") as dsn:
        conn = connection(department=other_department, kind="postgresql", secret=dsn)
        sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                          target_table="permits")
        run = deliver(sub)
        assert run.status == RunStatus.SUCCEEDED, run.error
        with psycopg.connect(dsn) as tgt:
            cols = [r[0] for r in tgt.execute("SELECT column_name FROM information_schema.columns WHERE "
                                              "table_name = 'permits' ORDER BY ordinal_position")]
            assert cols == ["permit_id", "address", "fee", "approved", "_changed_at"]
            dump = str(tgt.execute("SELECT string_agg(p::text, '|') FROM permits p").fetchone())
            assert CANARY not in dump and tgt.execute("SELECT count(*) FROM permits").fetchone() == (40,)
            first = Run.objects.get(kind="ingest").started_at
            assert tgt.execute("SELECT DISTINCT _changed_at FROM permits").fetchall() == [(first,)]
        rows = _rows(35, fee_bump=1)
        rewrite(source, rows)
        run_ingest(source)
        sub.refresh_from_db()
        run = deliver(sub)
        assert (run.mode, run.rows_updated, run.rows_deleted) == ("incremental", 35, 5), run.error
        with psycopg.connect(dsn) as tgt:
            assert tgt.execute("SELECT count(*), min(permit_id), max(permit_id) FROM permits").fetchone() == (35, 1, 35)
            second = Run.objects.filter(kind="ingest").latest("pk").started_at
            assert tgt.execute("SELECT DISTINCT _changed_at FROM permits").fetchall() == [(second,)]  # all 35 changed
            tgt.execute("ALTER TABLE permits ALTER COLUMN approved TYPE text")
            tgt.commit()
        sub.refresh_from_db()
        run = deliver(sub)
        assert run.status == RunStatus.FAILED and "approved text" in run.error


def _first(sqls: list[str], *needles: str) -> int:
    return next(i for i, sql in enumerate(sqls) if any(n in sql for n in needles))


@pytest.mark.parametrize("change", ["revoke", "expire", "lapse"])
def test_a_grant_change_locks_the_subscriptions_before_it_appends_to_the_audit_trail(
        setup, other_department, people, tmp_path, change):
    """A delivery holds its subscription's row while its target commits, and an append holds
    the trail's one lock until its transaction ends: taken the other way round, a revoke would
    keep every audited action waiting on a department's database."""
    from django.test.utils import CaptureQueriesContext

    from exchange.access import services as access_services

    if django_connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's")
    dataset, _, g = setup
    _subscribe(dataset, other_department, tmp_path, purge_on_end=False)
    with CaptureQueriesContext(django_connection) as queries:
        if change == "revoke":
            access_services.grant_revoke(actor=people["steward"], grant=g, reason="Done.")
        elif change == "expire":
            access_services.grant_expire_due(now=g.valid_until + dt.timedelta(seconds=1))
        else:
            access_services.grant_fields_lapse(dataset=dataset, removed_or_changed=["permit_id", "address", "fee",
                                                                                    "approved"], reason="Removed.")
    sqls = [q["sql"] for q in queries.captured_queries]
    lock = _first(sqls, 'FROM "exchange_subscription"')
    assert "FOR NO KEY UPDATE" in sqls[lock]  # new runs referring to it do not wait
    assert lock < _first(sqls, "exchange_audit_append", "pg_advisory_xact_lock")
    assert Subscription.objects.get().status == SubscriptionStatus.ENDED


def test_a_change_from_a_stale_copy_never_revives_an_ended_subscription(setup, other_department, people, tmp_path):
    from config.api.errors import ConflictError
    from exchange.access import services as access_services
    from exchange.sync import services as sync_services

    dataset, _, g = setup
    _, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=False)
    stale = Subscription.objects.get(pk=sub.pk)  # as a request read it before the grant ended
    access_services.grant_revoke(actor=people["steward"], grant=g, reason="Done.")
    with pytest.raises(ConflictError):
        sync_services.subscription_update(actor=people["steward"], subscription=stale, schedule="0 4 * * *",
                                          paused=False)
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.ended_reason.startswith("the grant was revoked")
    assert sub.last_seq == 40 and sub.schedule == "" and sub.periodic_task_id is None


def test_one_purge_at_a_time_and_never_one_of_a_copy_that_is_gone(setup, other_department, people, tmp_path):
    """A stale purge (a double click, the purge job) must not drop the table once it belongs
    to a newer subscription."""
    from exchange.sync import delivery
    from exchange.sync import services as sync_services

    dataset, _, g = setup
    path, first = _subscribe(dataset, other_department, tmp_path, purge_on_end=False)
    sync_services.subscription_end(actor=people["steward"], subscription=first)
    stale = Subscription.objects.get(pk=first.pk)  # as a second caller read it
    # While a purge is under way, another is refused.
    Subscription.objects.filter(pk=first.pk).update(purge_claimed_at=timezone.now())
    with pytest.raises(delivery.TargetError, match="being dropped already"):
        delivery.subscription_purge_target(subscription=stale)
    assert _tables(path) == ["permits"]
    # A claim left by a killed worker expires.
    Subscription.objects.filter(pk=first.pk).update(
        purge_claimed_at=timezone.now() - delivery.PURGE_CLAIM_STALE - dt.timedelta(seconds=1))
    delivery.subscription_purge_target(subscription=first)
    assert _tables(path) == []
    # The table is taken by a new subscription, which delivers; the stale purge leaves it be.
    second = Subscription.objects.create(dataset=dataset, department=other_department, connection=first.connection,
                                         target_table="permits")
    assert deliver(second).status == RunStatus.SUCCEEDED and _tables(path) == ["permits"]
    with pytest.raises(delivery.TargetError, match=f"now written by subscription #{second.pk}"):
        delivery.subscription_purge_target(subscription=stale)
    assert _tables(path) == ["permits"]
    assert AuditEvent.objects.filter(action="subscription.purged").count() == 1


def test_ending_asks_a_running_delivery_to_stop(setup, other_department, people, tmp_path):
    from exchange.sync import services as sync_services

    dataset, _, _ = setup
    _, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=False)
    running = Run.objects.create(kind="delivery", subscription=sub, dataset=dataset, status=RunStatus.RUNNING)
    sync_services.subscription_end(actor=people["steward"], subscription=sub)
    running.refresh_from_db()
    assert running.cancel_requested


def test_a_run_cancelled_just_before_its_commit_delivers_nothing(setup, other_department, tmp_path, monkeypatch):
    from exchange.sync import delivery

    dataset, _, _ = setup
    path, conn = sqlite_target(tmp_path, other_department)
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                      target_table="permits")
    real = delivery._lock_if_still_granted

    def cancelled_first(run, *args):
        Run.objects.filter(pk=run.pk).update(cancel_requested=True)  # the steward clicked Cancel
        return real(run, *args)

    monkeypatch.setattr(delivery, "_lock_if_still_granted", cancelled_first)
    run = deliver(sub)
    assert run.status == RunStatus.CANCELLED and _tables(path) == []
    sub.refresh_from_db()
    assert sub.last_seq == 0
    actions = list(AuditEvent.objects.filter(object_id=str(run.pk), action__startswith="delivery.")
                   .values_list("action", flat=True))
    assert actions == ["delivery.started"]  # on the record that it was about to; nothing delivered


def test_a_purge_that_finds_the_table_locked_is_tried_again_later(setup, other_department, people, tmp_path,
                                                                  monkeypatch):
    from exchange.sync import delivery, tasks
    from exchange.sync import services as sync_services
    from exchange.sync.errors import TransientSourceError

    dataset, _, _ = setup
    path, sub = _subscribe(dataset, other_department, tmp_path, purge_on_end=False)
    sync_services.subscription_end(actor=people["steward"], subscription=sub)
    monkeypatch.setattr(delivery, "SQLITE_BUSY_SECONDS", 0.1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the department writes its database right now
    try:
        with pytest.raises(TransientSourceError, match="database is locked"):
            delivery.subscription_purge_target(subscription=sub)
    finally:
        holder.close()
    assert TransientSourceError in tasks.deliver_purge.autoretry_for  # the purge job retries with backoff
    sub.refresh_from_db()
    assert sub.purge_claimed_at is None and sub.purged_at is None and _tables(path) == ["permits"]
    delivery.subscription_purge_target(subscription=sub)  # once the lock is gone
    assert _tables(path) == []
