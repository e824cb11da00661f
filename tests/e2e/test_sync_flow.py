"""A steward uploads a new file for a dataset and watches its ingest run reach 100%."""

from __future__ import annotations

import pytest

from tests.sync_factories import PERMIT_FIELDS, csv_bytes, permit_rows, published_dataset, upload_source

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_steward_runs_a_sync_and_sees_it_complete(page, login, screenshot, people, department):
    dataset = published_dataset(department=department)
    header = [f[0] for f in PERMIT_FIELDS]
    upload_source(dataset=dataset, content=csv_bytes(header, permit_rows(2)))
    login(people["steward"].username)
    page.goto(f"/datasets/{dataset.pk}/sync/")
    assert "No runs yet." in page.inner_text("#runs")
    page.set_input_files("#upload-file", files=[{
        "name": "permits.csv", "mimeType": "text/csv",
        "buffer": csv_bytes(header, permit_rows(40) + [["not-a-number", "", "", "", "", "", ""]]),
    }])
    page.click("text=Upload and ingest")
    page.wait_for_selector("#runs td[data-status=succeeded]")
    progress = page.locator("#runs progress").first
    assert progress.get_attribute("value") == progress.get_attribute("max") == "100"
    row = page.locator("#runs tbody tr").first.inner_text()
    assert "40" in row and "Succeeded" in row
    screenshot("sync-runs")
    page.click("#runs tbody tr >> nth=0 >> a")
    page.wait_for_selector("#quarantine table")
    assert "not-a-number" in page.inner_text("#quarantine")
    screenshot("sync-run-detail")
