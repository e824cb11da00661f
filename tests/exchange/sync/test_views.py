"""The steward's data-flow pages: source, runs with live progress, run detail and quarantine."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from exchange.sync.models import Run, RunStatus
from tests.sync_factories import PERMIT_FIELDS, csv_bytes, permit_rows, published_dataset, upload_source

pytestmark = pytest.mark.django_db

HEADER = [f[0] for f in PERMIT_FIELDS]


@pytest.fixture
def dataset(department):
    return published_dataset(department=department)


def test_steward_uploads_a_file_and_watches_the_run(client, people, dataset, django_capture_on_commit_callbacks):
    upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(3)))
    client.force_login(people["steward"])
    page = client.get(f"/datasets/{dataset.pk}/sync/").content.decode()
    assert "an uploaded CSV file" in page and "No runs yet." in page
    rows = permit_rows(5) + [["x", "bad", "row", "1", "true", "2024-01-01", "2024-01-01T00:00:00+00:00"]]
    upload = SimpleUploadedFile("permits.csv", csv_bytes(HEADER, rows), content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/datasets/{dataset.pk}/sync/upload/", {"file": upload})
    assert response.status_code == 302
    run = Run.objects.get(dataset=dataset)  # Celery runs eagerly in tests
    assert run.status == RunStatus.SUCCEEDED and run.rows_inserted == 5 and run.rows_quarantined == 1
    page = client.get(f"/datasets/{dataset.pk}/sync/").content.decode()
    assert f"#{run.pk}" in page and 'value="100"' in page and "every 1s" not in page
    detail = client.get(f"/sync/runs/{run.pk}/").content.decode()
    assert "Quarantined rows" in detail and "permit_id" in detail


def test_run_now_and_live_polling_while_queued(client, people, dataset):
    upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(2)))
    client.force_login(people["steward"])
    # The task is sent after commit; the test's transaction never commits, so the run stays queued.
    client.post(f"/datasets/{dataset.pk}/sync/run/", {"mode": "full"})
    run = Run.objects.get(dataset=dataset)
    assert run.status == RunStatus.QUEUED
    partial = client.get(f"/datasets/{dataset.pk}/sync/", HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-trigger="every 1s"' in partial and "<html" not in partial
    assert client.post(f"/sync/runs/{run.pk}/cancel/").status_code == 302


@pytest.mark.parametrize("who", ["analyst", "auditor", "outsider", "nobody", "city_auditor"])
def test_only_stewards_of_the_owner(client, people, dataset, who):
    upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(1)))
    client.force_login(people[who])
    assert client.get(f"/datasets/{dataset.pk}/sync/").status_code == 404
    assert client.post(f"/datasets/{dataset.pk}/sync/run/").status_code == 404
