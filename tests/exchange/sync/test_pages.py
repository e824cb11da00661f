"""The steward's data-flow forms: connections, sources with their mapping, schedules and
subscriptions, all written through the sync services (audited), with errors next to the field,
input kept, nothing half-written, and a 404 for other departments' objects."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import PeriodicTask

from exchange.audit.models import AuditEvent
from exchange.sync import secrets
from exchange.sync.models import Connection, Run, RunStatus, Source, Subscription, SubscriptionStatus
from tests.exchange.sync.helpers import run_ingest
from tests.factories import MembershipFactory
from tests.records_support import grant
from tests.sync_factories import (
    PERMIT_FIELDS,
    connection,
    csv_bytes,
    identity_mapping,
    permit_rows,
    published_dataset,
    upload_source,
)

pytestmark = pytest.mark.django_db
NOT_STEWARDS = ["analyst", "auditor", "outsider", "other_steward", "nobody", "city_auditor"]
HEADER = [f[0] for f in PERMIT_FIELDS]
PG_DSN = "postgresql://loader:s3cret-pw@127.0.0.1:1/permits"


@pytest.fixture(autouse=True)
def dirs(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]


@pytest.fixture
def cast(people, other_department) -> dict[str, Any]:
    return {**people, "other_steward": MembershipFactory(department=other_department, role="steward").user}


@pytest.fixture
def dataset(department):
    return published_dataset(department=department)


def sqlite_source_file(tmp_path: Path, rows: int = 12, name: str = "permits.sqlite3") -> Path:
    path = tmp_path / name
    db = sqlite3.connect(path)
    columns = ", ".join(f'"{f[0]}"' for f in PERMIT_FIELDS)
    db.execute(f"CREATE TABLE permits ({columns})")
    db.executemany(f"INSERT INTO permits VALUES ({', '.join('?' * len(PERMIT_FIELDS))})", permit_rows(rows))
    db.commit()
    db.close()
    return path


def actions(**filters: Any) -> list[str]:
    return list(AuditEvent.objects.filter(**filters).order_by("id").values_list("action", flat=True))


def field_error(html: str, name: str) -> str:
    """The text of the error shown next to input ``name`` ("" when none)."""
    marker = f'id="id_{name}-error"'
    if marker not in html:
        return ""
    return html.split(marker, 1)[1].split(">", 1)[1].split("</small>", 1)[0]


# --- Connections ----------------------------------------------------------------------------

def test_steward_registers_a_connection_whose_secret_never_comes_back(client, cast, department):
    client.force_login(cast["steward"])
    response = client.post("/sync/connections/new/", {"department": department.pk, "name": "permits db",
                                                      "kind": "postgresql", "secret": PG_DSN})
    conn = Connection.objects.get(name="permits db")
    assert response.status_code == 302 and response.url == f"/sync/connections/{conn.pk}/"
    assert secrets.decrypt(conn.secret_encrypted) == PG_DSN and conn.secret_changed_at is not None
    assert actions(action__startswith="connection.") == ["connection.created"]
    for url in ("/sync/", f"/sync/connections/{conn.pk}/"):
        page = client.get(url).content.decode()
        assert "s3cret-pw" not in page and "permits db" in page and "set" in page
    assert "loader:***@127.0.0.1" in client.get(f"/sync/connections/{conn.pk}/").content.decode()


def test_connection_input_errors_are_next_to_the_field_and_nothing_is_written(client, cast, department, tmp_path):
    client.force_login(cast["steward"])
    response = client.post("/sync/connections/new/", {"department": department.pk, "name": "warehouse",
                                                      "kind": "postgresql", "secret": "mysql://x@y/z"})
    html = response.content.decode()
    assert response.status_code == 400
    assert "Not a PostgreSQL DSN." in field_error(html, "secret")
    assert 'value="warehouse"' in html and 'value="mysql://x@y/z"' in html  # input kept
    response = client.post("/sync/connections/new/", {"department": department.pk, "name": "w", "kind": "sqlite",
                                                      "secret": "/etc/passwd"})
    assert "SYNC_SQLITE_DIRS" in field_error(response.content.decode(), "secret")
    connection(department=department, kind="sqlite", secret=str(tmp_path / "a.db"), name="taken")
    response = client.post("/sync/connections/new/", {"department": department.pk, "name": "taken", "kind": "sqlite",
                                                      "secret": str(tmp_path / "b.db")})
    assert response.status_code == 400 and "already has a connection" in field_error(response.content.decode(), "name")
    response = client.post("/sync/connections/new/", {"department": department.pk, "name": "", "kind": "url",
                                                      "secret": ""})
    assert field_error(response.content.decode(), "name") and field_error(response.content.decode(), "secret")
    assert Connection.objects.count() == 1 and actions(action__startswith="connection.") == []


def test_a_steward_cannot_register_for_another_department(client, cast, other_department, tmp_path):
    client.force_login(cast["steward"])
    response = client.post("/sync/connections/new/", {"department": other_department.pk, "name": "x",
                                                      "kind": "sqlite", "secret": str(tmp_path / "x.db")})
    assert response.status_code == 400 and field_error(response.content.decode(), "department")
    assert not Connection.objects.exists()


def test_test_connection_answers_in_place_with_the_services_message(client, cast, department, tmp_path):
    good = connection(department=department, kind="sqlite", secret=str(sqlite_source_file(tmp_path)), name="good")
    gone = connection(department=department, kind="sqlite", secret=str(tmp_path / "missing.db"), name="gone")
    client.force_login(cast["steward"])
    ok = client.post(f"/sync/connections/{good.pk}/test/", HTTP_HX_REQUEST="true").content.decode()
    assert 'data-ok="true"' in ok and "1 tables" in ok and "<html" not in ok
    bad = client.post(f"/sync/connections/{gone.pk}/test/", HTTP_HX_REQUEST="true").content.decode()
    assert 'data-ok="false"' in bad and "missing.db does not exist" in bad
    # Without htmx the answer comes as a message on the connection's page.
    page = client.post(f"/sync/connections/{gone.pk}/test/", follow=True).content.decode()
    assert "missing.db does not exist" in page


def test_rename_and_rotate_the_secret(client, cast, department, tmp_path):
    conn = connection(department=department, kind="postgresql", secret=PG_DSN, name="old")
    client.force_login(cast["steward"])
    new_dsn = "postgresql://loader:rotated-pw@127.0.0.1:1/permits"
    assert client.post(f"/sync/connections/{conn.pk}/", {"name": "new", "secret": new_dsn}).status_code == 302
    conn.refresh_from_db()
    assert conn.name == "new" and secrets.decrypt(conn.secret_encrypted) == new_dsn
    assert conn.secret_changed_at is not None
    event = AuditEvent.objects.get(action="connection.updated")
    assert event.details["changed"] == ["name", "secret"] and "rotated-pw" not in str(event.details)
    # An empty secret keeps the current one; a bad one changes nothing at all (not even the name).
    client.post(f"/sync/connections/{conn.pk}/", {"name": "newer", "secret": ""})
    conn.refresh_from_db()
    assert conn.name == "newer" and secrets.decrypt(conn.secret_encrypted) == new_dsn
    response = client.post(f"/sync/connections/{conn.pk}/", {"name": "newest", "secret": "ftp://nope"})
    assert response.status_code == 400 and "Not a PostgreSQL DSN." in field_error(response.content.decode(), "secret")
    conn.refresh_from_db()
    assert conn.name == "newer" and secrets.decrypt(conn.secret_encrypted) == new_dsn


def test_delete_follows_the_services_rule_when_something_uses_it(client, cast, department, dataset, tmp_path):
    used = connection(department=department, kind="sqlite", secret=str(sqlite_source_file(tmp_path)), name="used")
    Source.objects.create(dataset=dataset, connection=used, table="permits", mapping=identity_mapping())
    free = connection(department=department, kind="sqlite", secret=str(tmp_path / "free.db"), name="free")
    client.force_login(cast["steward"])
    page = client.post(f"/sync/connections/{used.pk}/delete/", follow=True).content.decode()
    assert "used by a source or a subscription" in page and Connection.objects.filter(pk=used.pk).exists()
    assert client.post(f"/sync/connections/{free.pk}/delete/").status_code == 302
    assert not Connection.objects.filter(pk=free.pk).exists()
    assert actions(action="connection.deleted") == ["connection.deleted"]


@pytest.mark.parametrize("who", NOT_STEWARDS)
def test_connections_are_404_for_everyone_but_the_departments_stewards(client, cast, department, tmp_path, who):
    conn = connection(department=department, kind="sqlite", secret=str(tmp_path / "x.db"), name="mine")
    client.force_login(cast[who])
    for url in (f"/sync/connections/{conn.pk}/",):
        assert client.get(url).status_code == 404
    for url in (f"/sync/connections/{conn.pk}/", f"/sync/connections/{conn.pk}/test/",
                f"/sync/connections/{conn.pk}/delete/"):
        assert client.post(url, {"name": "hijacked", "secret": ""}).status_code == 404
    conn.refresh_from_db()
    assert conn.name == "mine"
    if who != "other_steward":  # a steward elsewhere has a data-flow page of their own
        assert client.get("/sync/").status_code == 404
        assert client.get("/sync/connections/new/").status_code == 404


def test_overview_lists_in_a_constant_number_of_queries(client, cast, department, tmp_path):
    client.force_login(cast["steward"])

    def count() -> int:
        with CaptureQueriesContext(db_connection) as ctx:
            assert client.get("/sync/").status_code == 200
        return len(ctx.captured_queries)

    published_dataset(department=department, slug="first")
    connection(department=department, kind="sqlite", secret=str(tmp_path / "1.db"), name="one")
    few = count()
    for i in range(3):
        d = published_dataset(department=department, slug=f"more-{i}")
        c = connection(department=department, kind="sqlite", secret=str(tmp_path / f"{i}.db"), name=f"c{i}")
        Source.objects.create(dataset=d, connection=c, table="permits", mapping=identity_mapping())
    assert count() == few


# --- Sources --------------------------------------------------------------------------------

def test_steward_sets_up_a_table_source_with_the_columns_offered(client, cast, department, dataset, tmp_path):
    conn = connection(department=department, kind="sqlite", secret=str(sqlite_source_file(tmp_path)), name="src")
    client.force_login(cast["steward"])
    url = f"/datasets/{dataset.pk}/sync/source/"
    page = client.get(url).content.decode()
    assert 'name="map__permit_id"' in page and "<select name=\"map__permit_id\"" not in page  # text until read
    page = client.post(url, {"action": "columns", "kind": "table", "connection": conn.pk, "table": "permits",
                             "file_format": "csv", "encoding": "utf-8"}).content.decode()
    assert 'id="columns-found"' in page and '<select name="map__permit_id"' in page
    assert '<option value="permit_id" selected>' in page  # same-named column preselected
    assert not Source.objects.exists() and actions(action="source.set") == []  # looking writes nothing
    form = {"action": "save", "kind": "table", "connection": conn.pk, "table": "permits", "file_format": "csv",
            "encoding": "utf-8", "watermark_column": "updated_at", "columns": json.dumps([f[0] for f in PERMIT_FIELDS]),
            **{f"map__{f[0]}": f[0] for f in PERMIT_FIELDS}}
    form["map__applicant"] = ""  # not every field has to come from the source
    response = client.post(url, {**form, "map__permit_id": ""})
    html = response.content.decode()  # an error keeps the columns offered and the choices made
    assert response.status_code == 400 and "key field must be mapped" in field_error(html, "map__permit_id")
    assert '<select name="map__fee"' in html and '<option value="fee" selected>' in html
    response = client.post(url, form)
    assert response.status_code == 302 and response.url == f"/datasets/{dataset.pk}/sync/"
    source = Source.objects.get(dataset=dataset)
    assert source.connection == conn and source.table == "permits" and source.watermark_column == "updated_at"
    assert source.mapping == {f[0]: f[0] for f in PERMIT_FIELDS if f[0] != "applicant"}
    assert actions(action="source.set") == ["source.set"]
    assert run_ingest(source).rows_inserted == 12
    # Editing starts from what is saved, with the columns read again.
    page = client.get(url).content.decode()
    assert '<select name="map__fee"' in page and '<option value="updated_at" selected>' in page


def test_source_errors_are_next_to_the_field_that_caused_them(client, cast, department, dataset, tmp_path):
    conn = connection(department=department, kind="sqlite", secret=str(sqlite_source_file(tmp_path)), name="src")
    client.force_login(cast["steward"])
    url = f"/datasets/{dataset.pk}/sync/source/"
    base = {"action": "save", "connection": conn.pk, "file_format": "csv", "encoding": "utf-8",
            **{f"map__{f[0]}": f[0] for f in PERMIT_FIELDS}}
    html = client.post(url, {**base, "kind": "table", "table": ""}).content.decode()
    assert "Name the table" in field_error(html, "table")
    html = client.post(url, {**base, "kind": "query", "query": "DELETE FROM permits"}).content.decode()
    assert "read-only" in field_error(html, "query") and "DELETE FROM permits" in html  # from the service, kept
    html = client.post(url, {**base, "kind": "table", "table": "permits", "map__permit_id": ""}).content.decode()
    assert "key field must be mapped" in field_error(html, "map__permit_id")
    html = client.post(url, {**base, "kind": "table", "table": "permits", "map__fee": "address"}).content.decode()
    assert "already mapped to address" in field_error(html, "map__fee")
    html = client.post(url, {**base, "kind": "file", "table": ""}).content.decode()
    assert "upload (no connection) or a URL connection" in field_error(html, "connection")
    response = client.post(url, {"action": "columns", "kind": "table", "connection": conn.pk, "table": "nope",
                                 "file_format": "csv", "encoding": "utf-8"})
    assert response.status_code == 400 and "cannot be read" in response.content.decode()
    assert not Source.objects.exists() and actions(action="source.set") == []


def test_an_upload_source_needs_no_connection(client, cast, dataset):
    client.force_login(cast["steward"])
    form = {"action": "save", "kind": "file", "connection": "", "file_format": "ndjson", "encoding": "utf-8",
            **{f"map__{f[0]}": f[0] for f in PERMIT_FIELDS}}
    assert client.post(f"/datasets/{dataset.pk}/sync/source/", form).status_code == 302
    source = Source.objects.get(dataset=dataset)
    assert source.connection is None and source.file_format == "ndjson"
    assert "Upload and ingest" in client.get(f"/datasets/{dataset.pk}/sync/").content.decode()


def test_a_source_cannot_use_another_departments_connection(client, cast, other_department, dataset, tmp_path):
    theirs = connection(department=other_department, kind="sqlite", secret=str(sqlite_source_file(tmp_path)))
    client.force_login(cast["steward"])
    form = {"action": "save", "kind": "table", "connection": theirs.pk, "table": "permits", "file_format": "csv",
            "encoding": "utf-8", **{f"map__{f[0]}": f[0] for f in PERMIT_FIELDS}}
    response = client.post(f"/datasets/{dataset.pk}/sync/source/", form)
    assert response.status_code == 400 and field_error(response.content.decode(), "connection")
    assert not Source.objects.exists()


@pytest.mark.parametrize("who", NOT_STEWARDS)
def test_sources_are_404_for_everyone_but_the_owners_stewards(client, cast, dataset, who):
    client.force_login(cast[who])
    url = f"/datasets/{dataset.pk}/sync/source/"
    assert client.get(url).status_code == 404
    form = {"action": "save", "kind": "file", "file_format": "csv", "encoding": "utf-8", "map__permit_id": "id"}
    assert client.post(url, form).status_code == 404
    assert client.post(f"/datasets/{dataset.pk}/sync/schedule/", {"schedule": "0 2 * * *"}).status_code == 404
    assert not Source.objects.exists()


def test_remove_a_source_keeps_the_records_and_drops_the_upload(client, cast, dataset, settings,
                                                                django_capture_on_commit_callbacks):
    from exchange.records.store import store_table

    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(5)))
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    upload = Path(settings.MEDIA_ROOT) / source.upload
    client.force_login(cast["steward"])
    assert client.post(f"/datasets/{dataset.pk}/sync/schedule/", {"schedule": "0 3 * * *"}).status_code == 302
    page = client.get(f"/datasets/{dataset.pk}/sync/").content.decode()
    assert "Remove the source" in page and "and the uploaded file?" in page
    url = f"/datasets/{dataset.pk}/sync/source/remove/"
    # Not while a run is queued: the worker would be left with a run that no longer exists.
    queued = Run.objects.create(kind="ingest", source=source, dataset=dataset)
    page = client.post(url, follow=True).content.decode()
    assert "queued or running" in page and Source.objects.filter(pk=source.pk).exists() and upload.exists()
    Run.objects.filter(pk=queued.pk).update(status=RunStatus.CANCELLED)
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(url, follow=True).content.decode()
    assert "Source removed. The records already ingested stay in the dataset." in page and "No source yet." in page
    assert not Source.objects.exists() and not PeriodicTask.objects.exists() and not upload.exists()
    event = AuditEvent.objects.get(action="source.deleted")
    assert event.actor_id == cast["steward"].pk and event.details == {"kind": "file", "table": "", "upload": True}
    with db_connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {store_table(dataset).qualified}")
        assert cursor.fetchone()[0] == 5


@pytest.mark.parametrize("who", NOT_STEWARDS)
def test_removing_a_source_is_404_for_everyone_but_the_owners_stewards(client, cast, dataset, who):
    Source.objects.create(dataset=dataset, mapping=identity_mapping())
    client.force_login(cast[who])
    assert client.post(f"/datasets/{dataset.pk}/sync/source/remove/").status_code == 404
    assert Source.objects.exists() and not AuditEvent.objects.filter(action="source.deleted").exists()


def test_the_api_refuses_to_delete_a_source_with_a_run_in_progress(as_user, cast, dataset):
    source = Source.objects.create(dataset=dataset, mapping=identity_mapping())
    Run.objects.create(kind="ingest", source=source, dataset=dataset, status=RunStatus.RUNNING)
    response = as_user(cast["steward"]).delete(f"/api/v1/datasets/{dataset.pk}/source/")
    assert response.status_code == 409 and "queued or running" in response.json()["error"]["message"]
    assert Source.objects.exists()


# --- Schedules ------------------------------------------------------------------------------

def test_set_change_and_clear_a_source_schedule(client, cast, dataset):
    source = Source.objects.create(dataset=dataset, mapping=identity_mapping())
    client.force_login(cast["steward"])
    url = f"/datasets/{dataset.pk}/sync/schedule/"
    assert client.post(url, {"schedule": "30 2 * * 1-5"}).status_code == 302
    source.refresh_from_db()
    task = PeriodicTask.objects.get(pk=source.periodic_task_id)
    assert source.schedule == "30 2 * * 1-5" and task.crontab.hour == "2" and task.crontab.day_of_week == "1-5"
    page = client.get(f"/datasets/{dataset.pk}/sync/").content.decode()
    assert "At 02:30 AM, Monday through Friday" in page and "Next run at" in page
    response = client.post(url, {"schedule": "61 * * * *"})
    html = response.content.decode()
    assert response.status_code == 400 and "Invalid end range: 61 &gt; 59." in field_error(html, "schedule")
    assert 'value="61 * * * *"' in html
    response = client.post(url, {"schedule": "every day"})
    assert "Five fields expected." in field_error(response.content.decode(), "schedule")
    source.refresh_from_db()
    assert source.schedule == "30 2 * * 1-5" and PeriodicTask.objects.filter(pk=task.pk).exists()  # untouched
    assert client.post(url, {"schedule": ""}).status_code == 302
    source.refresh_from_db()
    assert source.schedule == "" and source.periodic_task_id is None and not PeriodicTask.objects.exists()
    assert "runs only on demand" in client.get(f"/datasets/{dataset.pk}/sync/").content.decode()
    assert [e.details["schedule"] for e in AuditEvent.objects.filter(action="source.set").order_by("id")] == [
        "30 2 * * 1-5", ""]


# --- Subscriptions --------------------------------------------------------------------------

@pytest.fixture
def granted(cast, dataset, other_department, tmp_path):
    """Health (other_department) holds a department grant on Transport's permits."""
    grant(dataset, department=other_department, approved_by=cast["admin"],
          fields={"permit_id": "clear", "address": "masked", "fee": "clear"})
    target = tmp_path / "health.sqlite3"
    sqlite3.connect(target).close()
    return target, connection(department=other_department, kind="sqlite", secret=str(target), name="warehouse")


def test_only_granted_datasets_and_own_database_connections_are_offered(client, cast, department, granted):
    _, target = granted
    no_grant = published_dataset(department=department, slug="inspections")
    client.force_login(cast["other_steward"])
    page = client.get("/sync/subscriptions/new/").content.decode()
    assert "Permits (Transport)" in page and "Inspections" not in page and "warehouse" in page
    response = client.post("/sync/subscriptions/new/", {"dataset": no_grant.pk, "connection": target.pk,
                                                        "target_table": "permits"})
    assert response.status_code == 400 and field_error(response.content.decode(), "dataset")
    assert not Subscription.objects.exists()


def test_subscribe_schedule_pause_resume_and_end(client, cast, dataset, granted):
    path, target = granted
    client.force_login(cast["other_steward"])
    response = client.post("/sync/subscriptions/new/", {"dataset": dataset.pk, "connection": target.pk,
                                                        "target_table": "Bad-Name", "schedule": "0 3 * * *"})
    html = response.content.decode()
    assert response.status_code == 400 and "Lower-case letters" in field_error(html, "target_table")
    assert 'value="0 3 * * *"' in html and not Subscription.objects.exists()
    response = client.post("/sync/subscriptions/new/", {"dataset": dataset.pk, "connection": target.pk,
                                                        "target_table": "permits", "schedule": "0 3 * * *"})
    sub = Subscription.objects.get()
    assert response.status_code == 302 and response.url == f"/sync/subscriptions/{sub.pk}/"
    assert sub.schedule == "0 3 * * *" and sub.periodic_task is not None
    assert actions(action="subscription.created") == ["subscription.created"]
    page = client.get(f"/sync/subscriptions/{sub.pk}/").content.decode()
    assert "At 03:00 AM" in page and "Next run at" in page and "No deliveries yet." in page
    # The same target table twice is refused next to the field.
    response = client.post("/sync/subscriptions/new/", {"dataset": dataset.pk, "connection": target.pk,
                                                        "target_table": "permits"})
    assert "already writes to this table" in field_error(response.content.decode(), "target_table")
    assert client.post(f"/sync/subscriptions/{sub.pk}/schedule/", {"schedule": "0 3 * *"}).status_code == 400
    assert client.post(f"/sync/subscriptions/{sub.pk}/schedule/", {"schedule": ""}).status_code == 302
    sub.refresh_from_db()
    assert sub.schedule == "" and sub.periodic_task_id is None
    client.post(f"/sync/subscriptions/{sub.pk}/pause/", {"paused": "1"})
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.PAUSED
    page = client.post(f"/sync/subscriptions/{sub.pk}/run/", follow=True).content.decode()
    assert "The subscription is paused." in page and not Run.objects.exists()
    client.post(f"/sync/subscriptions/{sub.pk}/pause/", {"paused": "0"})
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ACTIVE
    response = client.post(f"/sync/subscriptions/{sub.pk}/end/", {})
    assert response.status_code == 302 and response.url == f"/sync/subscriptions/{sub.pk}/"
    # Ended, not gone: it stays as the record of what was delivered.
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.ended_at is not None
    event = AuditEvent.objects.get(action="subscription.ended")
    assert event.actor_id == cast["other_steward"].pk and event.details["reason"] == (
        f"ended by {cast['other_steward'].username}")
    page = client.get(f"/sync/subscriptions/{sub.pk}/").content.decode()
    assert 'data-subscription-status="ended"' in page and "Remove from the lists" in page
    assert f": ended by {cast['other_steward'].username}</dd>" in page and "no active grant" not in page
    assert "End the subscription</button>" not in page and "Deliver now" not in page
    assert client.post(f"/sync/subscriptions/{sub.pk}/end/", {}).status_code == 400  # already ended
    # It kept its copy, so it keeps its table: a new subscription there is refused, saying why.
    response = client.post("/sync/subscriptions/new/", {"dataset": dataset.pk, "connection": target.pk,
                                                        "target_table": "permits"})
    assert f"The ended subscription #{sub.pk} kept its delivered copy in this table" in field_error(
        response.content.decode(), "target_table")
    response = client.post("/sync/subscriptions/new/", {"dataset": dataset.pk, "connection": target.pk,
                                                        "target_table": "permits_2026"})
    assert response.status_code == 302 and Subscription.objects.count() == 2
    # Changing an ended one is refused by the service, whichever way it is asked.
    assert client.post(f"/sync/subscriptions/{sub.pk}/schedule/", {"schedule": "0 4 * * *"}).status_code == 400
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.schedule == ""
    # Removing the ended one takes it and its history off the lists; the audit trail keeps it.
    newer = Subscription.objects.exclude(pk=sub.pk).get()
    page = client.post(f"/sync/subscriptions/{newer.pk}/remove/", follow=True).content.decode()
    assert "End the subscription before removing it." in page and Subscription.objects.count() == 2
    assert client.post(f"/sync/subscriptions/{sub.pk}/remove/").status_code == 302
    assert list(Subscription.objects.all()) == [newer]
    assert actions(action="subscription.deleted") == ["subscription.deleted"]


@pytest.mark.django_db(transaction=True)
def test_deliver_now_then_end_with_purge(client, cast, dataset, granted):
    path, target = granted
    assert run_ingest(upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(8)))).rows_inserted == 8
    client.force_login(cast["other_steward"])
    client.post("/sync/subscriptions/new/", {"dataset": dataset.pk, "connection": target.pk,
                                             "target_table": "permits"})
    sub = Subscription.objects.get()
    # Celery runs eagerly in tests: the delivery runs once the request's transaction commits.
    client.post(f"/sync/subscriptions/{sub.pk}/run/")
    run = Run.objects.get(subscription=sub)
    assert run.status == RunStatus.SUCCEEDED, run.error
    db = sqlite3.connect(path)
    assert [d[0] for d in db.execute("SELECT * FROM permits").description][:3] == ["permit_id", "address", "fee"]
    assert db.execute("SELECT count(*) FROM permits").fetchone()[0] == 8
    db.close()
    page = client.get(f"/sync/subscriptions/{sub.pk}/").content.decode()
    assert f"#{run.pk}" in page and 'data-status="succeeded"' in page and 'value="100"' in page
    # The owner's steward sees the subscription and its deliveries, but it is not theirs to manage.
    client.force_login(cast["steward"])
    page = client.get(f"/sync/subscriptions/{sub.pk}/").content.decode()
    assert "Managed by the stewards of Health" in page and "End the subscription" not in page
    for action in ("run", "pause", "end", "schedule", "purge", "remove"):
        assert client.post(f"/sync/subscriptions/{sub.pk}/{action}/", {"purge": "on"}).status_code == 404
    client.force_login(cast["other_steward"])
    assert client.post(f"/sync/subscriptions/{sub.pk}/end/", {"purge": "on"}).status_code == 302
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ENDED and sub.purged_at is not None
    # Ended first (a delivery still writing then lets go of the table), then dropped.
    assert actions(action__startswith="subscription.")[-3:] == [
        "subscription.ended", "subscription.purged", "subscription.purge"]
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'permits'").fetchone()[0] == 0
    db.close()
    # The delivery history stays with the ended subscription.
    page = client.get(f"/sync/subscriptions/{sub.pk}/").content.decode()
    assert f"#{run.pk}" in page and "delivered copy dropped" in page and "Drop the delivered table" not in page
    assert "The delivered copy will be removed, as chosen." in cast["other_steward"].notifications.get(
        kind="subscription.ended").body


@pytest.mark.django_db(transaction=True)
def test_an_ended_subscription_keeps_its_table_until_its_copy_is_dropped(client, cast, dataset, granted):
    path, target = granted
    assert run_ingest(upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(4)))).rows_inserted == 4
    client.force_login(cast["other_steward"])
    client.post("/sync/subscriptions/new/", {"dataset": dataset.pk, "connection": target.pk,
                                             "target_table": "permits"})
    first = Subscription.objects.get()
    client.post(f"/sync/subscriptions/{first.pk}/run/")
    client.post(f"/sync/subscriptions/{first.pk}/end/", {})
    page = client.get(f"/sync/subscriptions/{first.pk}/").content.decode()
    assert "Drop the delivered table" in page and "the delivered table stays in the target" in page

    def tables() -> int:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'permits'").fetchone()[0]
        finally:
            db.close()

    new = {"dataset": dataset.pk, "connection": target.pk, "target_table": "permits"}
    assert client.post("/sync/subscriptions/new/", new).status_code == 400 and Subscription.objects.count() == 1
    # Dropped, the table is free: a new subscription delivers into it.
    page = client.post(f"/sync/subscriptions/{first.pk}/purge/", follow=True).content.decode()
    assert "The delivered table permits was dropped." in page and tables() == 0
    first.refresh_from_db()
    assert first.purged_at is not None
    assert client.post("/sync/subscriptions/new/", new).status_code == 302
    second = Subscription.objects.exclude(pk=first.pk).get()
    client.post(f"/sync/subscriptions/{second.pk}/run/")
    assert Run.objects.filter(subscription=second).get().status == RunStatus.SUCCEEDED and tables() == 1
    # The second ends keeping its copy; the first may not drop it (its own copy went already).
    client.post(f"/sync/subscriptions/{second.pk}/end/", {})
    page = client.post(f"/sync/subscriptions/{first.pk}/purge/", follow=True).content.decode()
    assert "copy was dropped already" in page and f"now written by subscription #{second.pk}" in page
    assert tables() == 1
    assert "Drop the delivered table" not in client.get(f"/sync/subscriptions/{first.pk}/").content.decode()


@pytest.mark.parametrize("who", ["analyst", "auditor", "outsider", "nobody", "city_auditor"])
def test_subscriptions_are_404_for_non_stewards(client, cast, dataset, granted, who):
    _, target = granted
    sub = Subscription.objects.create(dataset=dataset, department=target.department, connection=target,
                                      target_table="permits")
    client.force_login(cast[who])
    assert client.get(f"/sync/subscriptions/{sub.pk}/").status_code == 404
    assert client.get("/sync/subscriptions/new/").status_code == 404
    assert client.post("/sync/subscriptions/new/", {"dataset": dataset.pk, "connection": target.pk,
                                                    "target_table": "other"}).status_code == 404
    for action in ("run", "pause", "end", "schedule", "purge", "remove"):
        assert client.post(f"/sync/subscriptions/{sub.pk}/{action}/", {"paused": "1"}).status_code == 404
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ACTIVE and Subscription.objects.count() == 1
