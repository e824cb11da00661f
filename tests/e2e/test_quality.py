"""Quality rules in a real browser: a steward gives a dataset's next schema version its rules
(a bad one is refused with its number), the published rules check an uploaded file (a blocking
rule quarantines a row, naming itself), and the dataset page shows the score and each rule."""

from __future__ import annotations

import json
from typing import cast

import pytest

from catalog.models import Dataset, SchemaVersion
from tests.factories import PERMIT_FIELDS, DatasetFactory
from tests.sync_factories import csv_bytes, upload_source

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
HEADER = [f["name"] for f in PERMIT_FIELDS]


def _rows(n: int) -> list[list[str]]:
    return [[f"BP-{i:04d}", f"Applicant {i}", f"P-{i}", f"{100 + i}.50", "2024-01-05"] for i in range(1, n + 1)]


def test_rules_check_an_upload_and_the_dataset_page_shows_the_score(page, login, screenshot, people, department):
    dataset = cast(Dataset, DatasetFactory(status="published", department=department, steward=people["steward"]))
    current = dataset.current_schema
    current.rules = [{"check": "range", "field": "fee_eur", "min": "0", "max": "120.5", "severity": "blocking"},
                     {"check": "pattern", "field": "parcel_id", "pattern": "^P-[0-9]+$", "severity": "warning"}]
    current.save(update_fields=["rules"])
    upload_source(dataset=dataset, content=csv_bytes(HEADER, _rows(2)), mapping={n: n for n in HEADER})
    login(people["steward"].username)

    # The schema page offers the rules with the fields; a bad rule is refused, with its number.
    page.goto(f"/datasets/{dataset.pk}/schema/")
    assert json.loads(page.input_value("#schema-rules")) == current.rules
    page.fill("#schema-rules", json.dumps([*current.rules, {"check": "not_null", "field": "nope"}]))
    page.click("#save-schema")
    assert "Quality rule 3: Unknown field 'nope'." in page.inner_text("main")
    assert not SchemaVersion.objects.filter(dataset=dataset, number=2).exists()
    page.fill("#schema-rules", json.dumps([*current.rules, {"check": "not_null", "field": "applicant_name"}]))
    page.click("#save-schema")
    page.wait_for_url(f"**/datasets/{dataset.pk}/")
    assert SchemaVersion.objects.get(dataset=dataset, number=2).rules[-1]["check"] == "not_null"

    # The published rules check an upload: permit 21's fee (121.50) is refused, by its rule.
    rows = _rows(21)
    rows[3][2] = "X-4"
    page.goto(f"/datasets/{dataset.pk}/sync/")
    page.set_input_files("#upload-file", files=[{"name": "permits.csv", "mimeType": "text/csv",
                                                 "buffer": csv_bytes(HEADER, rows)}])
    page.click("text=Upload and ingest")
    page.wait_for_selector("#runs td[data-status=succeeded]")
    page.click("#runs tbody tr >> nth=0 >> a")
    page.wait_for_selector("#quarantine table")
    assert "quality rule: fee_eur range >= 0 <= 120.5" in page.inner_text("#quarantine")

    page.goto(f"/datasets/{dataset.pk}/")
    quality = page.inner_text("#quality")
    assert "score 95.1 of 100" in quality  # (1 - 1/21 + 1 - 1/20) / 2: permit 21 refused, parcel X-4 warned
    assert "parcel_id pattern matches ^P-[0-9]+$" in quality
    screenshot("dataset-quality")
