"""The sync API: who may do what, secrets never coming back, constant query counts."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django_celery_beat.models import PeriodicTask

from departments.models import Membership
from exchange.audit.models import AuditEvent
from exchange.sync.models import Connection, Run, RunStatus, Source
from tests.factories import MembershipFactory
from tests.records_support import grant
from tests.sync_factories import PERMIT_FIELDS, connection, csv_bytes, identity_mapping, permit_rows, published_dataset

pytestmark = pytest.mark.django_db
HEADER = [f[0] for f in PERMIT_FIELDS]
PASSWORD = "s3cr3t-Pa55"
DSN = f"postgresql://loader:{PASSWORD}@db.transport.example:5432/permits?sslmode=require&password={PASSWORD}"


@pytest.fixture(autouse=True)
def dirs(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]


@pytest.fixture
def dataset(department):
    return published_dataset(department=department)


def test_connection_secrets_go_in_but_never_come_out(as_user, people, department):
    api = as_user(people["steward"])
    response = api.post("/api/v1/sync/connections/", {"department": "transport", "name": "permits db",
                                                      "kind": "postgresql", "secret": DSN})
    assert response.status_code == 201, response.content
    assert response.json()["redacted"] == ("postgresql://loader:***@db.transport.example:5432/permits"
                                           "?sslmode=require&password=***")
    connection_id = response.json()["id"]
    stored = Connection.objects.get(pk=connection_id)
    assert PASSWORD not in stored.secret_encrypted and PASSWORD not in stored.redacted
    bodies = [
        api.get("/api/v1/sync/connections/").content,
        api.get(f"/api/v1/sync/connections/{connection_id}/").content,
        api.patch(f"/api/v1/sync/connections/{connection_id}/", {"name": "renamed"}).content,
        api.post(f"/api/v1/sync/connections/{connection_id}/test/").content,
        api.get("/api/v1/schema/").content,
    ]
    assert all(PASSWORD.encode() not in body for body in bodies)

    assert not any(PASSWORD in json.dumps(e.details) for e in AuditEvent.objects.all())


def test_connections_are_for_stewards_of_the_department_only(as_user, people, department):
    conn = connection(department=department, kind="url", secret="https://data.example/permits.csv")
    for who in ("analyst", "auditor", "admin", "outsider"):
        api = as_user(people[who])
        assert api.get(f"/api/v1/sync/connections/{conn.pk}/").status_code == 404
        assert api.get("/api/v1/sync/connections/").json()["count"] == 0
    response = as_user(people["outsider"]).post(
        "/api/v1/sync/connections/", {"department": "transport", "name": "x", "kind": "url", "secret": "https://x.example"})
    assert response.status_code == 403


def test_test_connection_reports_a_clear_error(as_user, people, department, tmp_path):
    conn = connection(department=department, kind="sqlite", secret=str(tmp_path / "missing.sqlite3"))
    body = as_user(people["steward"]).post(f"/api/v1/sync/connections/{conn.pk}/test/").json()
    assert body == {"ok": False, "message": "The SQLite file missing.sqlite3 does not exist."}
    conn = connection(department=department, kind="postgresql", secret="postgresql://u:p@127.0.0.1:1/db",
                      name="closed port")
    body = as_user(people["steward"]).post(f"/api/v1/sync/connections/{conn.pk}/test/").json()
    assert body["ok"] is False and "Cannot connect to the database" in body["message"]


def test_upload_runs_ingest_and_exposes_counts_and_quarantine(as_user, people, dataset,
                                                                django_capture_on_commit_callbacks):
    api = as_user(people["steward"])
    response = api.put(f"/api/v1/datasets/{dataset.pk}/source/", {"mapping": identity_mapping()}, format="json")
    assert response.status_code == 200, response.content
    rows = permit_rows(12)
    rows[3][0] = "x"
    upload = SimpleUploadedFile("permits.csv", csv_bytes(HEADER, rows), content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/datasets/{dataset.pk}/source/upload/", {"file": upload}, format="multipart")
    assert response.status_code == 202, response.content
    uploaded = AuditEvent.objects.get(action="source.uploaded")
    assert (uploaded.actor_id, uploaded.dataset_id, uploaded.department_id) == (
        people["steward"].pk, dataset.pk, dataset.department_id)
    assert uploaded.details == {"file": "permits.csv", "bytes": upload.size}
    run_id = response.json()["id"]
    run = api.get(f"/api/v1/sync/runs/{run_id}/").json()
    assert run["status"] == "succeeded" and run["trigger"] == "upload"
    assert (run["rows_read"], run["rows_inserted"], run["rows_quarantined"]) == (12, 11, 1)
    assert run["progress"] == 1.0 and run["seq_to"] == 12  # numbered by source row
    quarantine = api.get(f"/api/v1/sync/runs/{run_id}/quarantine/").json()
    assert quarantine["count"] == 1 and quarantine["results"][0]["row_number"] == 4
    for who in ("analyst", "outsider"):
        assert as_user(people[who]).get(f"/api/v1/sync/runs/{run_id}/").status_code == 404
        assert as_user(people[who]).get(f"/api/v1/datasets/{dataset.pk}/source/").status_code == 404


def test_run_now_and_cancel_a_queued_run(as_user, people, dataset):
    Source.objects.create(dataset=dataset, mapping=identity_mapping())
    api = as_user(people["steward"])
    response = api.post(f"/api/v1/datasets/{dataset.pk}/source/run/", {"mode": "incremental"})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    run_id = response.json()["id"]
    assert as_user(people["outsider"]).post(f"/api/v1/sync/runs/{run_id}/cancel/").status_code == 404
    api = as_user(people["steward"])
    response = api.post(f"/api/v1/sync/runs/{run_id}/cancel/")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    event = AuditEvent.objects.get(action="run.cancel")
    assert (event.actor_id, event.object_id, event.dataset_id, event.department_id) == (
        people["steward"].pk, str(run_id), dataset.pk, dataset.department_id)
    assert event.details == {"kind": "ingest", "status": "cancelled"}
    assert api.post(f"/api/v1/sync/runs/{run_id}/cancel/").status_code == 409
    assert AuditEvent.objects.filter(action="run.cancel").count() == 1
    queued = AuditEvent.objects.get(action="run.queue")  # who asked for the run is on the record too
    assert (queued.actor_id, queued.object_id, queued.dataset_id, queued.department_id) == (
        people["steward"].pk, str(run_id), dataset.pk, dataset.department_id)
    assert queued.details == {"kind": "ingest", "mode": "incremental", "trigger": "manual", "allow_empty": False,
                              "source": dataset.source.pk, "subscription": None}


def test_only_a_full_run_may_be_allowed_an_empty_source(as_user, people, dataset):
    Source.objects.create(dataset=dataset, mapping=identity_mapping())
    api = as_user(people["steward"])
    url = f"/api/v1/datasets/{dataset.pk}/source/run/"
    response = api.post(url, {"mode": "incremental", "allow_empty": True})
    assert response.status_code == 400 and "allow_empty" in response.json()["error"]["fields"]
    assert not Run.objects.exists() and not AuditEvent.objects.filter(action="run.queue").exists()
    response = api.post(url, {"mode": "full", "allow_empty": True})
    assert response.status_code == 202 and response.json()["allow_empty"] is True
    assert AuditEvent.objects.get(action="run.queue").details["allow_empty"] is True


def test_schedules_are_beat_rows_kept_in_step(as_user, people, dataset):
    api = as_user(people["steward"])
    url = f"/api/v1/datasets/{dataset.pk}/source/"
    api.put(url, {"mapping": identity_mapping(), "schedule": "*/15 6-22 * * 1-5"}, format="json")
    task = PeriodicTask.objects.get(task="exchange.tasks.ingest_scheduled")
    assert json.loads(task.args) == [Source.objects.get().pk] and task.crontab.minute == "*/15"
    api.put(url, {"mapping": identity_mapping(), "schedule": "0 3 * * *"}, format="json")
    assert PeriodicTask.objects.get(pk=task.pk).crontab.hour == "3"
    response = api.put(url, {"mapping": identity_mapping(), "schedule": "every day"}, format="json")
    assert response.status_code == 400 and "schedule" in response.json()["error"]["fields"]
    api.put(url, {"mapping": identity_mapping(), "schedule": ""}, format="json")
    assert not PeriodicTask.objects.exists()


def test_source_rejects_write_queries_and_unknown_fields(as_user, people, dataset, department):
    conn = connection(department=department, kind="postgresql", secret="postgresql://u:p@127.0.0.1:1/db")
    api = as_user(people["steward"])
    url = f"/api/v1/datasets/{dataset.pk}/source/"
    response = api.put(url, {"connection": conn.pk, "query": "DELETE FROM permits", "mapping": identity_mapping()},
                       format="json")
    assert response.status_code == 400 and "read-only SELECT" in response.json()["error"]["message"]
    response = api.put(url, {"connection": conn.pk, "table": "permits", "mapping": {"a": "nope"}}, format="json")
    assert response.status_code == 400 and "nope" in response.json()["error"]["message"]


def test_subscriptions_need_a_grant_and_belong_to_the_subscribing_stewards(
        as_user, people, dataset, other_department, tmp_path):
    health_steward = MembershipFactory(department=other_department, role="steward").user
    target = connection(department=other_department, kind="sqlite", secret=str(tmp_path / "h.sqlite3"))
    api = as_user(health_steward)
    body = {"dataset": dataset.pk, "connection": target.pk, "target_table": "permits", "schedule": "0 * * * *"}
    response = api.post("/api/v1/sync/subscriptions/", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "no_grant"
    grant(dataset, department=other_department, approved_by=people["admin"], fields={"permit_id": "clear"})
    response = api.post("/api/v1/sync/subscriptions/", body, format="json")
    assert response.status_code == 201, response.content
    sub_id = response.json()["id"]
    assert PeriodicTask.objects.filter(task="exchange.tasks.deliver_scheduled").count() == 1
    # The owner's steward sees it; may not change it. Others do not see it.
    assert as_user(people["steward"]).get(f"/api/v1/sync/subscriptions/{sub_id}/").status_code == 200
    assert as_user(people["steward"]).patch(f"/api/v1/sync/subscriptions/{sub_id}/", {"paused": True},
                                            format="json").status_code == 404
    assert as_user(people["outsider"]).get(f"/api/v1/sync/subscriptions/{sub_id}/").status_code == 404
    api = as_user(health_steward)
    response = api.patch(f"/api/v1/sync/subscriptions/{sub_id}/", {"paused": True}, format="json")
    assert response.json()["status"] == "paused"
    updated = AuditEvent.objects.get(action="subscription.updated")
    assert (updated.actor_id, updated.object_id, updated.department_id) == (
        Membership.objects.get(department=other_department, role="steward").user_id, str(sub_id), other_department.pk)
    assert updated.details == {"schedule": "0 * * * *", "purge_on_end": False, "status": "paused",
                               "deliver_on_change": False}
    # Only an ended one can be removed.
    response = api.delete(f"/api/v1/sync/subscriptions/{sub_id}/")
    assert response.status_code == 409 and "End the subscription" in response.json()["error"]["message"]
    # End keeps it (with its history); only its stewards may; a second end is a conflict.
    end = f"/api/v1/sync/subscriptions/{sub_id}/end/"
    assert as_user(people["steward"]).post(end, {}, format="json").status_code == 404
    api = as_user(health_steward)
    assert api.post(end, {"purge": "perhaps"}, format="json").status_code == 400
    response = api.post(end, {}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "ended"
    assert response.json()["ended_reason"].startswith("ended by ")
    assert not PeriodicTask.objects.get().enabled
    assert api.post(end, {}, format="json").status_code == 409
    # An ended one takes no changes (its schedule stays off).
    response = api.patch(f"/api/v1/sync/subscriptions/{sub_id}/", {"paused": False, "schedule": "0 4 * * *"},
                         format="json")
    assert response.status_code == 409 and not PeriodicTask.objects.get().enabled
    assert api.get(f"/api/v1/sync/subscriptions/{sub_id}/").json()["status"] == "ended"
    assert api.delete(f"/api/v1/sync/subscriptions/{sub_id}/").status_code == 204
    assert not PeriodicTask.objects.exists()
    assert api.get(f"/api/v1/sync/subscriptions/{sub_id}/").status_code == 404


def test_ending_with_a_purge_that_fails_ends_all_the_same_and_keeps_the_copy(
        as_user, people, dataset, other_department, tmp_path, monkeypatch):
    import sqlite3

    from exchange.sync import delivery

    health_steward = MembershipFactory(department=other_department, role="steward").user
    path = tmp_path / "h.sqlite3"
    target = connection(department=other_department, kind="sqlite", secret=str(path))
    grant(dataset, department=other_department, approved_by=people["admin"], fields={"permit_id": "clear"})
    api = as_user(health_steward)
    sub_id = api.post("/api/v1/sync/subscriptions/", {"dataset": dataset.pk, "connection": target.pk,
                                                      "target_table": "permits"}, format="json").json()["id"]
    # Someone else writes the department's database (a delivery, or the department itself).
    monkeypatch.setattr(delivery, "SQLITE_BUSY_SECONDS", 0.1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        response = api.post(f"/api/v1/sync/subscriptions/{sub_id}/end/", {"purge": True}, format="json")
    finally:
        holder.close()
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "ended_copy_kept" and "database is locked" in error["message"]
    body = api.get(f"/api/v1/sync/subscriptions/{sub_id}/").json()
    assert body["status"] == "ended" and body["purged_at"] is None
    # The failed purge let go of its claim: dropping it later works.
    response = api.post(f"/api/v1/sync/subscriptions/{sub_id}/purge/")
    assert response.status_code == 200 and response.json()["purged_at"] is not None
    # A delivery still queued keeps it from being removed (its run would lose its row).
    Run.objects.create(kind="delivery", subscription_id=sub_id, dataset=dataset)
    response = api.delete(f"/api/v1/sync/subscriptions/{sub_id}/")
    assert response.status_code == 409 and "still queued or running" in response.json()["error"]["message"]
    assert AuditEvent.objects.filter(action="subscription.ended").count() == 1
    assert not AuditEvent.objects.filter(action="subscription.deleted").exists()


def test_list_endpoints_use_a_constant_number_of_queries(as_user, people, dataset, department,
                                                         django_assert_num_queries):
    api = as_user(people["steward"])
    source = Source.objects.create(dataset=dataset, mapping=identity_mapping())

    def make(n: int) -> None:
        for i in range(n):
            connection(department=department, kind="url", secret=f"https://x.example/{i}", name=f"c{i}-{n}")
            Run.objects.create(kind="ingest", source=source, dataset=dataset, status=RunStatus.SUCCEEDED,
                               triggered_by=people["steward"])

    make(2)
    counts = {}
    for url in ("/api/v1/sync/runs/", "/api/v1/sync/connections/", "/api/v1/sync/subscriptions/"):
        api.get(url)
        from django.db import connection as db
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(db) as ctx:
            api.get(url)
        counts[url] = len(ctx.captured_queries)
    make(5)
    for url, n in counts.items():
        with django_assert_num_queries(n):
            assert api.get(url).status_code == 200


def test_run_now_and_purge_a_subscription(as_user, people, dataset, other_department, tmp_path):
    import sqlite3

    from exchange.sync.models import Subscription

    health_steward = MembershipFactory(department=other_department, role="steward").user
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE permits (permit_id integer)")
    db.commit()
    target = connection(department=other_department, kind="sqlite", secret=str(path))
    sub = Subscription.objects.create(dataset=dataset, department=other_department, connection=target,
                                      target_table="permits", delivered_columns=[["permit_id", "integer"]])
    assert as_user(people["steward"]).post(f"/api/v1/sync/subscriptions/{sub.pk}/run/").status_code == 404
    api = as_user(health_steward)
    response = api.post(f"/api/v1/sync/subscriptions/{sub.pk}/run/")
    assert response.status_code == 202 and response.json()["kind"] == "delivery"
    response = api.post(f"/api/v1/sync/subscriptions/{sub.pk}/purge/")
    assert response.status_code == 200 and response.json()["purged_at"] is not None
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'permits'").fetchone() == (0,)
