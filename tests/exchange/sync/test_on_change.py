"""Deliveries on change: an ingest that commits changes queues a delivery for each active
subscription that delivers on change (one queued at a time, later changes fold into it); a
change that comes while a delivery runs goes out with the next one, never twice and never
lost; each delivery records when the oldest change it carried was read from the source, and
each subscription how long its oldest undelivered change has waited."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings as django_settings

from exchange.audit.models import AuditEvent
from exchange.sync import delivery, runs
from exchange.sync.models import Run, RunStatus, RunTrigger, Source, Subscription
from tests.exchange.sync.helpers import run_ingest
from tests.factories import MembershipFactory
from tests.records_support import grant
from tests.sync_factories import PERMIT_FIELDS, connection, csv_bytes, permit_rows, published_dataset, upload_source

pytestmark = pytest.mark.django_db(transaction=True)
HEADER = [f[0] for f in PERMIT_FIELDS]


@pytest.fixture(autouse=True)
def dirs(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]


@pytest.fixture
def sent():
    """The ids of the runs whose task was handed to the broker (none is executed)."""
    ids: list[int] = []
    with mock.patch("celery.app.task.Task.apply_async", lambda self, args=None, **kw: ids.append(args[0])):
        yield ids


@pytest.fixture
def world(department, other_department, people, tmp_path):
    dataset = published_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(20)))
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    grant(dataset, department=other_department, approved_by=people["admin"],
          fields={"permit_id": "clear", "fee": "clear", "issued_on": "clear"})
    return dataset, source


def subscribe(dataset, department, tmp_path: Path, name: str, *, on_change: bool) -> tuple[Path, Subscription]:
    path = tmp_path / f"{name}.sqlite3"
    sqlite3.connect(path).close()
    conn = connection(department=department, kind="sqlite", secret=str(path), name=name)
    sub = Subscription.objects.create(dataset=dataset, department=department, connection=conn,
                                      target_table="permits", deliver_on_change=on_change)
    first = Run.objects.create(kind="delivery", subscription=sub, dataset=dataset)
    runs.execute(run_id=first.pk)
    first.refresh_from_db()
    assert first.status == RunStatus.SUCCEEDED, first.error
    return path, sub


def change(source: Source, *, fee_bump: int, rows: int = 20) -> Run:
    """A new file for the source in which every fee moved, ingested in this process."""
    Path(django_settings.MEDIA_ROOT, source.upload).write_bytes(csv_bytes(HEADER, permit_rows(rows,
                                                                                          fee_bump=fee_bump)))
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return run


def fees(path: Path) -> list[str]:
    return [str(r[0]) for r in sqlite3.connect(path).execute("SELECT fee FROM permits ORDER BY permit_id")]


def deliveries(sub: Subscription) -> list[Run]:
    return list(Run.objects.filter(subscription=sub).order_by("id"))


def test_an_ingest_with_changes_queues_one_delivery_per_subscription_on_change(world, other_department, tmp_path,
                                                                               sent):
    dataset, source = world
    _, watching = subscribe(dataset, other_department, tmp_path, "watching", on_change=True)
    _, scheduled = subscribe(dataset, other_department, tmp_path, "scheduled", on_change=False)
    sent.clear()
    ingest = change(source, fee_bump=5)
    queued = Run.objects.get(subscription=watching, status=RunStatus.QUEUED)
    assert (queued.trigger, queued.kind) == (RunTrigger.CHANGE, "delivery") and sent == [queued.pk]
    assert not Run.objects.filter(subscription=scheduled, status=RunStatus.QUEUED).exists()
    # A second change while that delivery waits folds into it: it reads the store when it runs.
    change(source, fee_bump=6)
    assert Run.objects.filter(subscription=watching, status=RunStatus.QUEUED).count() == 1 and sent == [queued.pk]
    # Nothing changed: nothing to deliver.
    Run.objects.filter(pk=queued.pk).update(status=RunStatus.CANCELLED)
    unchanged = run_ingest(source)
    assert unchanged.rows_updated + unchanged.rows_inserted + unchanged.rows_deleted == 0
    assert not Run.objects.filter(subscription=watching, status=RunStatus.QUEUED).exists()
    assert ingest.seq_to is not None


def test_a_change_reaches_the_target_and_its_latency_is_recorded(world, other_department, people, tmp_path,
                                                                 as_user):
    """Tasks run eagerly here: the delivery queued by the ingest runs as soon as it commits."""
    dataset, source = world
    path, sub = subscribe(dataset, other_department, tmp_path, "health", on_change=True)
    ingest = change(source, fee_bump=7)
    assert fees(path) == [f"{100 + i + 7}.5" for i in range(1, 21)]
    latest = deliveries(sub)[-1]
    assert (latest.status, latest.trigger, latest.rows_updated) == (RunStatus.SUCCEEDED, RunTrigger.CHANGE, 20)
    assert latest.changes_seen_at == ingest.started_at
    steward = MembershipFactory.create(department=other_department, role="steward").user
    api = as_user(steward)
    body = api.get(f"/api/v1/sync/runs/{latest.pk}/").json()
    assert body["trigger"] == "change"
    assert latest.finished_at is not None and ingest.started_at is not None
    assert body["latency_seconds"] == round((latest.finished_at - ingest.started_at).total_seconds(), 3) >= 0
    detail = api.get(f"/api/v1/sync/subscriptions/{sub.pk}/").json()
    assert detail["deliver_on_change"] is True and detail["waiting_since"] is None and detail["lag_seconds"] == 0
    first = deliveries(sub)[0]
    assert api.get(f"/api/v1/sync/runs/{first.pk}/").json()["latency_seconds"] is None  # a first copy


def test_a_subscription_not_on_change_shows_how_long_its_changes_wait(world, other_department, tmp_path, as_user,
                                                                     client):
    dataset, source = world
    path, sub = subscribe(dataset, other_department, tmp_path, "health", on_change=False)
    before = fees(path)
    ingest = change(source, fee_bump=3)
    assert fees(path) == before and len(deliveries(sub)) == 1
    steward = MembershipFactory.create(department=other_department, role="steward").user
    detail = as_user(steward).get(f"/api/v1/sync/subscriptions/{sub.pk}/").json()
    assert detail["waiting_since"] is not None and detail["lag_seconds"] > 0
    assert datetime.fromisoformat(detail["waiting_since"]) == ingest.started_at
    client.force_login(steward)
    assert b"changes waiting since" in client.get(f"/sync/subscriptions/{sub.pk}/").content


def test_a_change_during_a_delivery_goes_out_with_the_next_and_only_once(world, other_department, tmp_path, sent,
                                                                         monkeypatch):
    """Change B commits after the running delivery read its snapshot (with change A) and before
    it records what it delivered. The delivery queued by B is claimed while the first still
    runs, so it is skipped (one run of a job at a time); the first, recording, finds the store
    moved on and queues the next, which delivers B. Every change is delivered exactly once."""
    dataset, source = world
    path, sub = subscribe(dataset, other_department, tmp_path, "health", on_change=True)
    sent.clear()
    change(source, fee_bump=1)  # A
    (first,) = [r for r in deliveries(sub) if r.status == RunStatus.QUEUED]
    real = delivery._changes_seen_at
    during: list[Run] = []

    def change_meanwhile(*args, **kwargs):
        if not during:
            change(source, fee_bump=2)  # B, while the first delivery runs
            during.extend(r for r in deliveries(sub) if r.status == RunStatus.QUEUED)
            assert len(during) == 1
            runs.execute(run_id=during[0].pk)  # a second worker takes B's delivery at once
        return real(*args, **kwargs)

    monkeypatch.setattr(delivery, "_changes_seen_at", change_meanwhile)
    runs.execute(run_id=first.pk)
    monkeypatch.setattr(delivery, "_changes_seen_at", real)
    skipped = Run.objects.get(pk=during[0].pk)
    assert skipped.status == RunStatus.SKIPPED
    first.refresh_from_db()
    assert first.status == RunStatus.SUCCEEDED and fees(path) == [f"{100 + i + 1}.5" for i in range(1, 21)]
    (follow_up,) = [r for r in deliveries(sub) if r.status == RunStatus.QUEUED]
    assert follow_up.trigger == RunTrigger.CHANGE and sent[-1] == follow_up.pk
    runs.execute(run_id=follow_up.pk)
    follow_up.refresh_from_db()
    assert follow_up.status == RunStatus.SUCCEEDED and follow_up.rows_updated == 20
    assert fees(path) == [f"{100 + i + 2}.5" for i in range(1, 21)]
    # The change numbers delivered follow each other without overlap.
    done = [r for r in deliveries(sub) if r.status == RunStatus.SUCCEEDED and r.seq_from is not None]
    assert all(b.seq_from == (a.seq_to or 0) + 1 for a, b in zip(done, done[1:], strict=False))
    assert not Run.objects.filter(subscription=sub, status=RunStatus.QUEUED).exists()  # and it stops there


def test_deliver_on_change_through_the_api_and_the_page(world, other_department, tmp_path, as_user, client):
    dataset, _ = world
    steward = MembershipFactory.create(department=other_department, role="steward").user
    path = tmp_path / "target.sqlite3"
    sqlite3.connect(path).close()
    conn = connection(department=other_department, kind="sqlite", secret=str(path))
    api = as_user(steward)
    response = api.post("/api/v1/sync/subscriptions/", {"dataset": dataset.pk, "connection": conn.pk,
                                                        "target_table": "permits", "deliver_on_change": True},
                        format="json")
    assert response.status_code == 201, response.content
    sub_id = response.json()["id"]
    assert response.json()["deliver_on_change"] is True
    assert AuditEvent.objects.get(action="subscription.created").details["deliver_on_change"] is True
    response = api.patch(f"/api/v1/sync/subscriptions/{sub_id}/", {"deliver_on_change": False}, format="json")
    assert response.status_code == 200 and response.json()["deliver_on_change"] is False
    assert AuditEvent.objects.get(action="subscription.updated").details["deliver_on_change"] is False
    client.force_login(steward)
    page = client.get(f"/sync/subscriptions/{sub_id}/")
    assert b'name="deliver_on_change"' in page.content
    response = client.post(f"/sync/subscriptions/{sub_id}/schedule/", {"schedule": "", "deliver_on_change": "on"})
    assert response.status_code == 302
    assert Subscription.objects.get(pk=sub_id).deliver_on_change is True


def test_a_missed_freshness_target_tells_both_sides_once(world, department, other_department, people, tmp_path,
                                                         as_user):
    from datetime import timedelta

    from django.utils import timezone

    from departments.models import Notification
    from exchange.sync import services

    dataset, source = world
    Source.objects.filter(pk=source.pk).update(freshness_minutes=10)
    _, sub = subscribe(dataset, other_department, tmp_path, "health", on_change=False)
    health_steward = MembershipFactory.create(department=other_department, role="steward").user
    ingest = change(source, fee_bump=4)
    assert ingest.started_at is not None
    assert services.subscriptions_check_freshness(now=ingest.started_at + timedelta(minutes=9)) == []
    later = ingest.started_at + timedelta(minutes=11)
    assert [s.pk for s in services.subscriptions_check_freshness(now=later)] == [sub.pk]
    assert services.subscriptions_check_freshness(now=later + timedelta(minutes=1)) == []  # told once
    told = Notification.objects.filter(kind="subscription.freshness_missed")
    assert {n.recipient_id for n in told} == {people["steward"].pk, health_steward.pk}
    assert "11 min behind" in told.first().subject
    event = AuditEvent.objects.get(action="subscription.freshness_missed")
    assert event.details["target_minutes"] == 10 and event.details["behind_minutes"] == 11
    sub.refresh_from_db()
    assert sub.freshness_missed_at == later
    assert as_user(health_steward).get(f"/api/v1/sync/subscriptions/{sub.pk}/").json()["freshness_missed_at"]
    # Delivered: within the target again, and a later miss is told again.
    delivered = Run.objects.create(kind="delivery", subscription=sub, dataset=dataset)
    runs.execute(run_id=delivered.pk)
    assert services.subscriptions_check_freshness(now=timezone.now()) == []
    sub.refresh_from_db()
    assert sub.freshness_missed_at is None


def test_a_freshness_target_is_between_a_minute_and_a_month(world, people, as_user):
    dataset, source = world
    api = as_user(people["steward"])
    url = f"/api/v1/datasets/{dataset.pk}/source/"
    body = {"mapping": source.mapping, "freshness_minutes": 0}
    response = api.put(url, body, format="json")
    assert response.status_code == 400 and "freshness_minutes" in response.json()["error"]["fields"]
    response = api.put(url, {**body, "freshness_minutes": 30}, format="json")
    assert response.status_code == 200 and response.json()["freshness_minutes"] == 30
