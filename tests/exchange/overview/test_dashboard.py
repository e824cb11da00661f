"""The dashboard's sync charts: rows written per day per department and failed runs per day,
counted over the runs a person may see, in a fixed number of queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from departments.selectors import principals_forget_all
from exchange.sync.models import Run, RunKind, RunStatus, Subscription
from tests.factories import MembershipFactory
from tests.sync_factories import PERMIT_FIELDS, connection, csv_bytes, published_dataset, upload_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(people, department, other_department):
    """Transport's permits: two ingests yesterday (one failed), one today; a delivery to health today."""
    dataset = published_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes([f[0] for f in PERMIT_FIELDS], []))
    target = connection(department=other_department, kind="sqlite", secret="var/sqlite/health.sqlite3")
    subscription = Subscription.objects.create(dataset=dataset, department=other_department, connection=target,
                                               target_table="permits")
    now = timezone.now()
    yesterday = now - timedelta(days=1)

    def run(kind, status, when, inserted=0, updated=0, deleted=0, subscription=None):
        job = {"subscription": subscription} if subscription else {"source": source}
        return Run.objects.create(kind=kind, dataset=dataset, status=status, finished_at=when, rows_inserted=inserted,
                                  rows_updated=updated, rows_deleted=deleted, **job)

    run(RunKind.INGEST, RunStatus.SUCCEEDED, yesterday, inserted=100, updated=5, deleted=2)
    run(RunKind.INGEST, RunStatus.FAILED, yesterday, inserted=0)
    run(RunKind.INGEST, RunStatus.SUCCEEDED, now, inserted=10)
    run(RunKind.DELIVERY, RunStatus.SUCCEEDED, now, inserted=40, subscription=subscription)
    run(RunKind.DELIVERY, RunStatus.RUNNING, None, inserted=999, subscription=subscription)
    return {"yesterday": timezone.localdate(yesterday).isoformat(), "today": timezone.localdate(now).isoformat()}


def _get(user):
    client = Client()
    client.force_login(user)
    return client.get("/dashboard/data/sync.json")


def test_rows_per_day_per_department_and_failed_runs(people, runs):
    data = _get(people["city_auditor"]).json()
    rows = {d["label"]: d["data"] for d in data["rows"]["datasets"]}
    labels = data["rows"]["labels"]
    assert labels == sorted({runs["yesterday"], runs["today"]})
    by_day = {label: {dept: rows[dept][i] for dept in rows} for i, label in enumerate(labels)}
    assert by_day[runs["yesterday"]] == {"Transport": 107, "Health": 0}
    assert by_day[runs["today"]] == {"Transport": 10, "Health": 40}  # the running delivery is not counted yet
    assert data["failed"] == {"labels": [runs["yesterday"]], "datasets": [{"label": "Ingest", "data": [1]}]}


def test_each_person_counts_only_the_runs_of_their_departments(people, department, other_department, runs):
    # Transport's steward sees the whole flow (it feeds and delivers Transport's dataset).
    steward_rows = {d["label"] for d in _get(people["steward"]).json()["rows"]["datasets"]}
    assert steward_rows == {"Transport", "Health"}
    # Health's steward sees the delivery to Health, not Transport's ingests.
    health_steward = MembershipFactory(department=other_department, role="steward").user
    health = _get(health_steward).json()
    assert {d["label"] for d in health["rows"]["datasets"]} == {"Health"}
    assert health["failed"]["datasets"] == []
    # An analyst counts no runs, and the dashboard shows them no sync chart.
    assert _get(people["analyst"]).json() == {"rows": {"labels": [], "datasets": []},
                                              "failed": {"labels": [], "datasets": []}}
    client = Client()
    client.force_login(people["analyst"])
    assert b"chart-sync-rows" not in client.get("/dashboard/").content
    client.force_login(people["steward"])
    assert b"chart-sync-rows" in client.get("/dashboard/").content


def test_the_sync_series_take_the_same_queries_whatever_the_number_of_runs(people, runs):
    # The same state of the per-process principal cache (empty) for both measurements.
    principals_forget_all()
    with CaptureQueriesContext(db) as few:
        _get(people["city_auditor"])
    first = Run.objects.filter(kind=RunKind.INGEST).first()
    Run.objects.bulk_create([Run(kind=RunKind.INGEST, dataset_id=first.dataset_id, source_id=first.source_id,
                                 status=RunStatus.SUCCEEDED, finished_at=timezone.now() - timedelta(days=d),
                                 rows_inserted=d) for d in range(2, 20)])
    principals_forget_all()
    with CaptureQueriesContext(db) as many:
        _get(people["city_auditor"])
    assert len(many) == len(few)
