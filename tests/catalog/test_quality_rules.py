"""Quality rules kept with the schema: set through the schema API with the fields, checked
against them (each problem keyed by the rule's place, nothing saved on an error), kept by a
new version, reviewed and published with it, and shown in the dataset's API and CKAN."""

from __future__ import annotations

from typing import Any

import pytest

from catalog.models import DatasetQuality, SchemaVersion
from exchange.audit.models import AuditEvent
from tests.departments.test_api import assert_error
from tests.factories import PERMIT_FIELDS

pytestmark = pytest.mark.django_db


def put(client: Any, dataset: Any, rules: Any, fields: list[dict[str, Any]] = PERMIT_FIELDS) -> Any:
    return client.put(f"/api/v1/datasets/{dataset.pk}/schema/", {"fields": fields, "rules": rules}, format="json")


GOOD = [
    {"check": "not_null", "field": "applicant_name"},
    {"check": "range", "field": "fee_eur", "min": 0, "max": "5000.5", "severity": "blocking"},
    {"check": "range", "field": "submitted_on", "min": "2015-01-01"},
    {"check": "pattern", "field": "permit_id", "pattern": "^BP-[0-9]{4}-[0-9]{5}$", "severity": "blocking"},
    {"check": "unique", "field": "parcel_id"},
    {"check": "max_length", "field": "parcel_id", "max_length": 40},
    {"check": "allowed", "field": "fee_eur", "values": [10, "20.50"]},
    {"check": "row_count", "min": 1, "max": 1000000},
    {"check": "freshness", "field": "submitted_on", "max_age_hours": 720},
]


def test_rules_are_set_with_the_schema_and_kept_as_stored(as_user, cast, make_dataset):
    dataset = make_dataset()
    response = put(as_user(cast["steward"]), dataset, GOOD)
    assert response.status_code == 200, response.content
    rules = response.json()["rules"]
    assert rules[0] == {"check": "not_null", "field": "applicant_name", "severity": "warning"}
    assert rules[1] == {"check": "range", "field": "fee_eur", "min": "0", "max": "5000.5", "severity": "blocking"}
    assert rules[6]["values"] == ["10", "20.50"]
    event = AuditEvent.objects.filter(action="dataset.schema_update").latest("id")
    assert event.details["rules"] == rules
    # Left out, the rules stay as they are.
    response = as_user(cast["steward"]).put(f"/api/v1/datasets/{dataset.pk}/schema/", {"fields": PERMIT_FIELDS},
                                           format="json")
    assert response.json()["rules"] == rules


@pytest.mark.parametrize(("rule", "why"), [
    ({"check": "not_null", "field": "nope"}, "Unknown field"),
    ({"check": "sometimes"}, "Unknown check"),
    ({"check": "not_null", "field": "fee_eur", "severity": "fatal"}, "blocking or warning"),
    ({"check": "range", "field": "fee_eur"}, "min, max or both"),
    ({"check": "range", "field": "applicant_name", "min": 1}, "needs a number, date or timestamp"),
    ({"check": "range", "field": "fee_eur", "min": 10, "max": 1}, "min is above max"),
    ({"check": "range", "field": "submitted_on", "min": "yesterday"}, "does not fit"),
    ({"check": "pattern", "field": "permit_id", "pattern": "(unclosed"}, "not a valid pattern"),
    ({"check": "pattern", "field": "permit_id", "pattern": "(?<=x)y"}, "PostgreSQL and SQLite read alike"),
    ({"check": "pattern", "field": "fee_eur", "pattern": "x"}, "needs a text field"),
    ({"check": "max_length", "field": "permit_id", "max_length": 0}, "whole number"),
    ({"check": "allowed", "field": "permit_id", "values": []}, "1 to 200 values"),
    ({"check": "reference", "field": "permit_id", "dataset": "no-such-thing"}, "Unknown dataset"),
    ({"check": "freshness", "field": "permit_id", "max_age_hours": 1}, "date or timestamp"),
    ({"check": "row_count", "min": -1}, "does not fit"),
    ({"check": "allowed", "field": "permit_id", "values": ["a\x00b"]}, "NUL character"),
])
def test_bad_rules_are_a_400_naming_the_rule_and_nothing_changes(as_user, cast, make_dataset, rule, why):
    dataset = make_dataset()
    before = list(SchemaVersion.objects.filter(dataset=dataset).values_list("rules", flat=True))
    error = assert_error(put(as_user(cast["steward"]), dataset, [GOOD[0], rule]), 400)
    assert why in " ".join(error["fields"]["rules[1]"]), error
    assert list(SchemaVersion.objects.filter(dataset=dataset).values_list("rules", flat=True)) == before


def test_a_reference_to_a_dataset_one_may_not_know_reads_as_unknown(as_user, cast, make_dataset, other_department):
    dataset = make_dataset()
    hidden = make_dataset(status="published", department=other_department, steward=cast["other_steward"],
                          slug="hidden-register", visibility="restricted")
    visible = make_dataset(status="published", department=other_department, steward=cast["other_steward"],
                           slug="open-register")
    error = assert_error(put(as_user(cast["steward"]), dataset, [
        {"check": "reference", "field": "permit_id", "dataset": hidden.slug}]), 400)
    assert error["fields"]["rules[0]"] == [f"Unknown dataset '{hidden.slug}'."]
    response = put(as_user(cast["steward"]), dataset, [
        {"check": "reference", "field": "permit_id", "dataset": visible.slug}])
    assert response.status_code == 200, response.content


def test_a_new_version_keeps_the_rules_and_they_must_fit_its_fields(as_user, cast, make_dataset):
    dataset = make_dataset(status="published")
    dataset.current_schema.rules = [{"check": "not_null", "field": "parcel_id", "severity": "warning"}]
    dataset.current_schema.save()
    without_parcel = [f for f in PERMIT_FIELDS if f["name"] != "parcel_id"]
    error = assert_error(as_user(cast["steward"]).put(f"/api/v1/datasets/{dataset.pk}/schema/",
                                                      {"fields": without_parcel}, format="json"), 400)
    assert "Unknown field 'parcel_id'" in error["fields"]["rules[0]"][0]
    response = put(as_user(cast["steward"]), dataset, [], fields=without_parcel)
    assert response.status_code == 200 and response.json()["number"] == 2 and response.json()["rules"] == []
    assert SchemaVersion.objects.get(dataset=dataset, number=1).rules  # the published version is untouched


def test_the_measured_quality_is_in_the_dataset_api_and_ckan(as_user, cast, make_dataset, api):
    dataset = make_dataset(status="published")
    url = f"/api/v1/datasets/{dataset.pk}/"
    assert as_user(cast["analyst"]).get(url).json()["quality"] is None
    DatasetQuality.objects.create(dataset=dataset, score=87.5, run_id=7, results=[{"rule": "x", "failed": 1}],
                                  trend=[{"at": "2026-12-01T00:00:00+00:00", "score": 80.0, "run": 6},
                                         {"at": "2026-12-02T00:00:00+00:00", "score": 87.5, "run": 7}],
                                  checked_at="2026-12-02T00:00:00+00:00")
    quality = as_user(cast["analyst"]).get(url).json()["quality"]
    assert quality["score"] == 87.5 and quality["run"] == 7 and [t["score"] for t in quality["trend"]] == [80.0, 87.5]
    package = as_user(cast["analyst"]).get("/api/3/action/package_show", {"id": dataset.slug}).json()["result"]
    extras = {e["key"]: e["value"] for e in package["extras"]}
    assert extras["quality_score"] == "87.5" and extras["quality_checked"].startswith("2026-12-02")


def test_the_schema_page_edits_the_rules_and_the_dataset_page_shows_the_quality(client, cast, make_dataset):
    import json

    from tests.catalog.test_views import _rows

    dataset = make_dataset("draft")
    client.force_login(cast["steward"])
    data = _rows(PERMIT_FIELDS)
    body = client.post(f"/datasets/{dataset.pk}/schema/", {**data, "rules": "[{"}).content.decode()
    assert "The quality rules are not valid JSON" in body and 'id="quality-rules" open' in body
    body = client.post(f"/datasets/{dataset.pk}/schema/", {
        **data, "rules": json.dumps([{"check": "not_null", "field": "nope"}])}).content.decode()
    assert "Quality rule 1: Unknown field &#x27;nope&#x27;." in body
    assert not SchemaVersion.objects.filter(dataset=dataset).exclude(rules=[]).exists()
    response = client.post(f"/datasets/{dataset.pk}/schema/", {
        **data, "rules": json.dumps([{"check": "not_null", "field": "parcel_id", "severity": "blocking"}])})
    assert response.status_code == 302
    assert SchemaVersion.objects.get(dataset=dataset).rules == [
        {"check": "not_null", "field": "parcel_id", "severity": "blocking"}]
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "parcel_id not null" in page and "No ingest has checked the rules yet." in page
    DatasetQuality.objects.create(dataset=dataset, score=50.0, run_id=3, checked_at="2026-12-02T00:00:00+00:00",
                                  results=[{"rule": "parcel_id not null", "severity": "blocking", "checked": 4,
                                            "failed": 2}],
                                  trend=[{"at": "x", "score": 75.0, "run": 2}, {"at": "y", "score": 50.0, "run": 3}])
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "score 50.0 of 100" in page and "75.0</span> → <span" in page and "<strong>2</strong>" in page


def test_a_pattern_the_database_cannot_read_is_refused(as_user, cast, make_dataset):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite reads patterns with Python's own regular expressions")
    dataset = make_dataset()
    error = assert_error(put(as_user(cast["steward"]), dataset, [
        {"check": "pattern", "field": "permit_id", "pattern": "a++"}]), 400)  # Python's possessive: not PostgreSQL's
    assert "PostgreSQL cannot read this regular expression" in error["fields"]["rules[0]"][0]


def test_the_catalogue_lists_each_dataset_with_its_score(client, cast, make_dataset, django_assert_max_num_queries):
    measured = make_dataset(status="published", slug="measured", title="Measured permits")
    make_dataset(status="published", slug="unmeasured", title="Unmeasured permits")
    DatasetQuality.objects.create(dataset=measured, score=92.5, run_id=1, checked_at="2026-12-02T00:00:00+00:00")
    client.force_login(cast["analyst"])
    client.get("/catalogue/")  # the principal and the versions cached, as for any later page
    with django_assert_max_num_queries(12):
        page = client.get("/catalogue/").content.decode()
    measured_entry = page[page.index("Measured permits"):page.index("Measured permits") + 800]
    assert "quality 92.5 of 100" in measured_entry
    unmeasured_entry = page[page.index("Unmeasured permits"):page.index("Unmeasured permits") + 800]
    assert "quality" not in unmeasured_entry.split("</article>")[0]
