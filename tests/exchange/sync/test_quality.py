"""Quality rules on every ingest: each kind in SQL on both databases, blocking rules
quarantine with the rule named, warnings count, dataset rules fail the run with nothing
changed, the run's results and score, the dataset's score and trend."""

from __future__ import annotations

import pytest
from django.utils import timezone

from catalog.models import DatasetQuality
from exchange.audit.models import AuditEvent
from exchange.sync.models import QuarantinedRow, RunMode, RunStatus
from tests.exchange.sync.helpers import run_ingest, store_rows
from tests.records_support import grant
from tests.sync_factories import PERMIT_FIELDS, csv_bytes, permit_rows, published_dataset, upload_source

pytestmark = pytest.mark.django_db
HEADER = [f[0] for f in PERMIT_FIELDS]


@pytest.fixture(autouse=True)
def dirs(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def with_rules(dataset, rules):
    schema = dataset.current_schema
    schema.rules = rules
    schema.save(update_fields=["rules"])
    return dataset


def rows(n=20):
    out = permit_rows(n)
    out[2][1] = ""  # permit 3: no address
    out[4][3] = "9999.50"  # permit 5: fee out of range
    out[6][1] = "7 Side Road"  # permit 7: an address of another street
    out[8][1] = out[9][1]  # permits 9 and 10: the same address
    return out


def result(run, check):
    return next(r for r in run.quality if r["check"] == check)


def test_warning_rules_count_and_blocking_rules_quarantine_with_the_rule_named(department):
    dataset = with_rules(published_dataset(department=department), [
        {"check": "not_null", "field": "address", "severity": "warning"},
        {"check": "range", "field": "fee", "min": 0, "max": 1000, "severity": "blocking"},
        {"check": "pattern", "field": "address", "pattern": "Main Street$", "severity": "warning"},
        {"check": "unique", "field": "address", "severity": "warning"},
        {"check": "max_length", "field": "address", "max_length": 13, "severity": "warning"},
        {"check": "range", "field": "issued_on", "min": "2024-01-01", "max": "2024-01-31", "severity": "warning"},
    ])
    run = run_ingest(upload_source(dataset=dataset, content=csv_bytes(HEADER, rows())))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.rows_quarantined == 1 and run.rows_inserted == 19
    (quarantined,) = QuarantinedRow.objects.filter(run=run)
    assert quarantined.row_number == 5 and quarantined.reason == "quality rule: fee range >= 0 <= 1000"
    assert sorted(r["permit_id"] for r in store_rows(dataset)) == [i for i in range(1, 21) if i != 5]
    assert result(run, "not_null")["failed"] == 1
    assert result(run, "pattern")["failed"] == 1  # 7 Side Road (a missing address is the not-null rule's)
    assert result(run, "unique")["failed"] == 2
    assert result(run, "max_length") == {**result(run, "max_length"), "checked": 19, "failed": 12}
    assert result(run, "range")["checked"] == 20 and result(run, "range")["failed"] == 1
    assert run.quality_score is not None and 0 < run.quality_score < 100
    quality = DatasetQuality.objects.get(dataset=dataset)
    assert quality.score == run.quality_score and quality.run_id == run.pk
    assert [t["run"] for t in quality.trend] == [run.pk]
    event = AuditEvent.objects.get(action="ingest.run", object_id=str(run.pk))
    assert event.details["quality_score"] == run.quality_score
    assert event.details["quality_failed"]["fee range >= 0 <= 1000"] == 1


def test_allowed_values_and_a_clean_run_scores_100(department):
    dataset = with_rules(published_dataset(department=department), [
        {"check": "allowed", "field": "fee", "values": ["101.50", "102.50"], "severity": "warning"},
        {"check": "range", "field": "updated_at", "min": "2024-02-01T00:00:00+00:00", "severity": "warning"},
    ])
    run = run_ingest(upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(4))))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert result(run, "allowed")["failed"] == 2  # 103.50 and 104.50
    assert result(run, "range")["failed"] == 0
    assert run.quality_score == 75.0  # (2/4 + 1) / 2


def test_dataset_rules_fail_the_run_with_nothing_changed(department):
    dataset = published_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(10)))
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    with_rules(dataset, [{"check": "row_count", "min": 8, "severity": "blocking"},
                         {"check": "freshness", "field": "updated_at", "max_age_hours": 1, "severity": "warning"}])
    from pathlib import Path

    from django.conf import settings
    (Path(settings.MEDIA_ROOT) / source.upload).write_bytes(csv_bytes(HEADER, permit_rows(5)))
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED
    assert "row count >= 8 failed: the dataset would hold 5 records; nothing was changed" in run.error
    assert len(store_rows(dataset)) == 10
    (Path(settings.MEDIA_ROOT) / source.upload).write_bytes(csv_bytes(HEADER, permit_rows(9)))
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert result(run, "row_count") == {**result(run, "row_count"), "failed": 0, "value": 9}
    fresh = result(run, "freshness")
    assert fresh["failed"] == 1 and fresh["value"].startswith("2024-02-01")  # the newest is from 2024
    assert run.quality_score == 50.0


def test_every_row_refused_by_a_blocking_rule_meets_the_empty_source_guard(department):
    dataset = published_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(5)))
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    with_rules(dataset, [{"check": "range", "field": "fee", "max": 1, "severity": "blocking"}])
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED and run.rows_quarantined == 5
    assert len(store_rows(dataset)) == 5  # nothing deleted


def test_a_quarantined_row_with_a_known_key_is_not_a_deletion(department):
    dataset = published_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(5)))
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    with_rules(dataset, [{"check": "range", "field": "fee", "max": 104, "severity": "blocking"}])
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.rows_quarantined == 2 and run.rows_deleted == 0
    assert len(store_rows(dataset)) == 5


def test_unique_on_an_incremental_run_looks_at_the_records_it_does_not_touch(department):
    dataset = with_rules(published_dataset(department=department), [
        {"check": "unique", "field": "address", "severity": "blocking"}])
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(5)))
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    from pathlib import Path

    from django.conf import settings
    changed = permit_rows(2, start=6)
    changed[0][1] = "2 Main Street"  # taken by permit 2, which this run does not touch
    (Path(settings.MEDIA_ROOT) / source.upload).write_bytes(csv_bytes(HEADER, changed))
    run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.rows_inserted == 1 and run.rows_quarantined == 1
    assert result(run, "unique")["failed"] == 1


def test_a_reference_needs_a_key_the_owner_may_read(department, other_department, people):
    stops = published_dataset(department=other_department, slug="stops")
    run_ingest(upload_source(dataset=stops, content=csv_bytes(HEADER, permit_rows(3))))
    dataset = with_rules(published_dataset(department=department), [
        {"check": "reference", "field": "permit_id", "dataset": "stops", "severity": "warning"}])
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(5)))
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    ref = result(run, "reference")
    assert ref["failed"] == 0 and "may not read every key of stops" in ref["skipped"]
    grant(stops, department=department, approved_by=people["admin"], fields={"permit_id": "clear"})
    run = run_ingest(source)
    ref = result(run, "reference")
    assert "skipped" not in ref and ref["failed"] == 2  # permits 4 and 5 are no stop
    # Reading the other dataset's keys is on its department's record, as a read of that field.
    (read,) = AuditEvent.objects.filter(action="quality.reference_read")
    assert (read.dataset_id, read.department_id, read.fields) == (stops.pk, other_department.pk, ["permit_id"])
    assert read.details["run"] == run.pk and read.details["for_dataset"] == dataset.pk
    quality = DatasetQuality.objects.get(dataset=dataset)
    assert [t["run"] for t in quality.trend][-1] == run.pk and len(quality.trend) == 2
    assert quality.checked_at is not None and quality.checked_at <= timezone.now()
