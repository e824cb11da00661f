"""Watched sources: every few seconds a cheap check of the source (its watermark's maximum, a
PostgreSQL table's change counters or a query's row checksum, the SQLite file, a URL's
validators) and, when the answer moved, a run; with a subscription that delivers on change, a
change at the source reaches the subscriber on its own."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection as django_connection
from django.utils import timezone

from exchange.audit.models import AuditEvent
from exchange.sync import services
from exchange.sync.models import Run, RunMode, RunStatus, RunTrigger, Source, Subscription
from tests.exchange.sync.worker import Served, serve_files
from tests.factories import MembershipFactory
from tests.records_support import grant
from tests.sync_factories import PERMIT_FIELDS, connection, csv_bytes, identity_mapping, permit_rows, published_dataset

pytestmark = pytest.mark.django_db(transaction=True)
HEADER = [f[0] for f in PERMIT_FIELDS]


@pytest.fixture(autouse=True)
def dirs(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]


def source_db(tmp_path: Path, rows: int = 10) -> Path:
    path = tmp_path / "permits-system.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE permits (permit_id integer PRIMARY KEY, address text, applicant text, fee text, "
               "approved text, issued_on text, updated_at text)")
    db.executemany("INSERT INTO permits VALUES (?, ?, ?, ?, ?, ?, ?)", permit_rows(rows))
    db.commit()
    db.close()
    return path


def touch(path: Path, permit_id: int, fee: str, stamp: str = "2024-03-01T09:00:00+00:00") -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE permits SET fee = ?, updated_at = ? WHERE permit_id = ?", [fee, stamp, permit_id])
    db.commit()
    db.close()


def watched(dataset, people, path: Path, *, watermark: str = "updated_at", seconds: int = 5) -> Source:
    conn = connection(department=dataset.department, kind="sqlite", secret=str(path), name="permits system")
    return services.source_set(actor=people["steward"], dataset=dataset, connection=conn, table="permits",
                               mapping=identity_mapping(), watermark_column=watermark, watch_seconds=seconds)


def check(source: Source) -> Run | None:
    return services.source_watch_check(source_id=source.pk)


def test_a_change_found_by_the_watch_starts_an_incremental_run(department, people, tmp_path):
    dataset = published_dataset(department=department)
    path = source_db(tmp_path)
    source = watched(dataset, people, path)
    assert check(source) is None  # the first check notes what it found
    assert check(source) is None and not Run.objects.exists()  # nothing moved
    touch(path, 3, "999.50")
    run = check(source)
    assert run is not None and (run.trigger, run.mode) == (RunTrigger.WATCH, RunMode.INCREMENTAL)
    run.refresh_from_db()  # tasks run eagerly in tests: the run is done
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert check(source) is None  # nothing new since


def test_a_sqlite_file_without_a_watermark_is_watched_by_the_file(department, people, tmp_path):
    dataset = published_dataset(department=department)
    path = source_db(tmp_path)
    source = watched(dataset, people, path, watermark="")
    assert check(source) is None
    services.run_now(actor=people["steward"], source=source)  # the first load (run here)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM permits WHERE permit_id = 2")
    db.commit()
    db.close()
    run = check(source)
    assert run is not None and run.mode == RunMode.FULL
    run.refresh_from_db()
    assert (run.status, run.rows_deleted) == (RunStatus.SUCCEEDED, 1), run.error


def test_a_change_at_the_source_reaches_a_subscriber_on_its_own(department, other_department, people, tmp_path):
    dataset = published_dataset(department=department)
    path = source_db(tmp_path)
    source = watched(dataset, people, path)
    check(source)
    first = services.run_now(actor=people["steward"], source=source)
    first.refresh_from_db()
    assert first.status == RunStatus.SUCCEEDED
    grant(dataset, department=other_department, approved_by=people["admin"],
          fields={"permit_id": "clear", "fee": "clear"})
    target = tmp_path / "health.sqlite3"
    sqlite3.connect(target).close()
    conn = connection(department=other_department, kind="sqlite", secret=str(target), name="health warehouse")
    subscription = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                               target_table="permits", deliver_on_change=True)
    services.run_now(actor=None, subscription=subscription)
    touch(path, 4, "444.50")
    ingest = check(source)
    assert ingest is not None
    delivered = Run.objects.filter(subscription=subscription, trigger=RunTrigger.CHANGE).get()
    assert delivered.status == RunStatus.SUCCEEDED and delivered.rows_updated == 1
    fee = sqlite3.connect(target).execute("SELECT fee FROM permits WHERE permit_id = 4").fetchone()[0]
    assert str(fee) == "444.5"


def test_a_url_is_watched_by_its_validators(department, people, tmp_path):
    server = serve_files()
    try:
        server.files["/permits.csv"] = Served(csv_bytes(HEADER, permit_rows(5)), headers={"ETag": '"v1"'})
        server.files["/plain.csv"] = Served(csv_bytes(HEADER, permit_rows(5)))
        dataset = published_dataset(department=department)
        conn = connection(department=department, kind="url", secret=server.url("/permits.csv"))
        source = services.source_set(actor=people["steward"], dataset=dataset, connection=conn,
                                     mapping=identity_mapping(), watch_seconds=30)
        assert check(source) is None
        assert check(source) is None
        server.files["/permits.csv"] = Served(csv_bytes(HEADER, permit_rows(6)), headers={"ETag": '"v2"'})
        run = check(source)
        assert run is not None and run.mode == RunMode.FULL
        run.refresh_from_db()
        assert (run.status, run.rows_inserted) == (RunStatus.SUCCEEDED, 6), run.error
        other = published_dataset(department=department, slug="plain")
        conn2 = connection(department=department, kind="url", secret=server.url("/plain.csv"), name="plain")
        plain = services.source_set(actor=people["steward"], dataset=other, connection=conn2,
                                    mapping=identity_mapping(), watch_seconds=30)
        assert check(plain) is None
        plain.refresh_from_db()
        assert "neither ETag nor Last-Modified" in plain.watch_error and not plain.watch_state
    finally:
        server.close()


def test_a_postgresql_source_is_watched_by_its_watermark(department, people):
    if django_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL sources are tested on the PostgreSQL run")
    from tests.exchange.sync.helpers import extra_pg_database, pg_execute

    dataset = published_dataset(department=department)
    with extra_pg_database() as dsn:
        pg_execute(dsn, "CREATE TABLE permits (permit_id bigint PRIMARY KEY, address text, applicant text, "
                        "fee numeric, approved boolean, issued_on date, updated_at timestamptz)")
        pg_execute(dsn, "INSERT INTO permits VALUES (%s, %s, %s, %s, %s, %s, %s)", many=permit_rows(10))
        conn = connection(department=department, kind="postgresql", secret=dsn)
        source = services.source_set(actor=people["steward"], dataset=dataset, connection=conn, table="permits",
                                     mapping=identity_mapping(), watermark_column="updated_at", watch_seconds=5)
        assert check(source) is None and check(source) is None
        pg_execute(dsn, "UPDATE permits SET fee = 1, updated_at = '2025-01-01T00:00:00Z' WHERE permit_id = 1")
        run = check(source)
        assert run is not None and run.mode == RunMode.INCREMENTAL
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error


@pytest.mark.parametrize("kind", ["table", "query"])
def test_a_postgresql_source_without_a_watermark_is_watched_too(department, people, kind):
    """A table by the server's change counters (deletions and TRUNCATE included), a query by
    its row count and checksum."""
    if django_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL sources are tested on the PostgreSQL run")
    from tests.exchange.sync.helpers import extra_pg_database, pg_execute

    dataset = published_dataset(department=department)
    with extra_pg_database() as dsn:
        pg_execute(dsn, "CREATE TABLE permits (permit_id bigint PRIMARY KEY, address text, applicant text, "
                        "fee numeric, approved boolean, issued_on date, updated_at timestamptz)")
        pg_execute(dsn, "INSERT INTO permits VALUES (%s, %s, %s, %s, %s, %s, %s)", many=permit_rows(10))
        conn = connection(department=department, kind="postgresql", secret=dsn)
        where = {"table": "permits"} if kind == "table" else {"query": "SELECT * FROM permits WHERE permit_id <= 8"}
        source = services.source_set(actor=people["steward"], dataset=dataset, connection=conn,
                                     mapping=identity_mapping(), watch_seconds=5, **where)
        assert check(source) is None and check(source) is None
        pg_execute(dsn, "UPDATE permits SET fee = 1 WHERE permit_id = 1")
        run = check(source)
        assert run is not None and run.mode == RunMode.FULL and run.trigger == RunTrigger.WATCH
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert check(source) is None
        if kind == "query":  # a change outside what the query returns is no change of it
            pg_execute(dsn, "UPDATE permits SET fee = 2 WHERE permit_id = 10")
            assert check(source) is None
        pg_execute(dsn, "DELETE FROM permits WHERE permit_id = 2")
        assert check(source) is not None
        if kind == "table":
            assert check(source) is None
            pg_execute(dsn, "TRUNCATE permits")
            assert check(source) is not None
            Source.objects.filter(pk=source.pk).update(table="no_such_table")
            source.refresh_from_db()
            assert check(source) is None
            source.refresh_from_db()
            assert "no_such_table does not exist" in source.watch_error


def test_due_sources_are_claimed_once(department, people, tmp_path):
    dataset = published_dataset(department=department)
    source = watched(dataset, people, source_db(tmp_path), seconds=10)
    now = timezone.now()
    assert services.sources_watch_due(now=now) == [source.pk]
    assert services.sources_watch_due(now=now) == []  # claimed: not sent twice
    assert services.sources_watch_due(now=now + timedelta(seconds=9)) == []
    assert services.sources_watch_due(now=now + timedelta(seconds=10)) == [source.pk]
    Source.objects.filter(pk=source.pk).update(watch_seconds=None)
    assert services.sources_watch_due(now=now + timedelta(days=1)) == []


def test_what_cannot_be_watched_is_refused_with_the_reason(department, people, as_user, tmp_path):
    dataset = published_dataset(department=department)
    api = as_user(people["steward"])
    url = f"/api/v1/datasets/{dataset.pk}/source/"
    response = api.put(url, {"mapping": identity_mapping(), "watch_seconds": 60}, format="json")
    assert response.status_code == 400 and "uploaded file is not watched" in response.json()["error"]["message"]
    lite = connection(department=department, kind="sqlite", secret=str(source_db(tmp_path)), name="lite")
    response = api.put(url, {"connection": lite.pk, "table": "permits", "mapping": identity_mapping(),
                             "watch_seconds": 1}, format="json")
    assert response.status_code == 400 and "between every 2 s" in response.json()["error"]["message"]
    assert not Source.objects.exists()
    response = api.put(url, {"connection": lite.pk, "table": "permits", "mapping": identity_mapping(),
                             "watch_seconds": 15}, format="json")
    assert response.status_code == 200 and response.json()["watch_seconds"] == 15
    assert AuditEvent.objects.get(action="source.set").details["watch_seconds"] == 15


def test_the_data_flow_page_sets_the_watch(department, people, client, tmp_path):
    dataset = published_dataset(department=department)
    source = watched(dataset, people, source_db(tmp_path), seconds=30)
    steward = MembershipFactory.create(department=department, role="steward").user
    client.force_login(steward)
    page = client.get(f"/datasets/{dataset.pk}/sync/")
    assert b'name="watch_seconds"' in page.content and b'data-watch="30"' in page.content
    response = client.post(f"/datasets/{dataset.pk}/sync/schedule/", {"schedule": "", "watch_seconds": "12"})
    assert response.status_code == 302
    source.refresh_from_db()
    assert source.watch_seconds == 12
    response = client.post(f"/datasets/{dataset.pk}/sync/schedule/", {"schedule": "", "watch_seconds": "1"})
    assert response.status_code == 400 and b"between every 2 s" in response.content
