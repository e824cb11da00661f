"""A steward publishes a dataset through the pages and a reviewer approves it, in a real
browser: create, define three fields (one personal), submit; approve from the review queue;
the dataset page then shows it published with the fields and their sensitivity badges."""

from __future__ import annotations

import re

import pytest

from catalog.models import Dataset, DatasetStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FIELDS = [
    ("stop_id", "text", "public", True),
    ("stop_name", "text", "internal", False),
    ("reported_by", "text", "personal", False),
]


def test_steward_publishes_and_reviewer_approves(page, login, screenshot, people, department):
    from playwright.sync_api import expect

    login(people["steward"].username)
    page.click("nav.site >> text=Catalogue")
    page.click("text=New dataset")
    page.fill("#id_title", "Bus stops")
    page.fill("#id_slug", "bus-stops")
    page.fill("#id_description", "Every bus stop of the city, with its name.")
    page.check("input[name=themes][value=TRAN]")
    page.fill("#id_keywords", "bus, stops, public transport")
    page.select_option("#id_licence", "CC-BY-4.0")
    screenshot("dataset-form")
    page.click("button:has-text('Create the draft')")

    page.wait_for_url(re.compile(r"/datasets/\d+/schema/$"))
    expect(page.locator("[role=status]")).to_contain_text("created as a draft")
    for i, (name, ftype, sensitivity, key) in enumerate(FIELDS):
        if i:
            page.click("#add-field")  # htmx swaps the rows in place
            page.wait_for_selector(f"#f-{i}-name")
        page.fill(f"#f-{i}-name", name)
        page.select_option(f"#f-{i}-type", ftype)
        page.select_option(f"#f-{i}-sensitivity", sensitivity)
        if key:
            page.check(f"#f-{i}-is_key")
            page.uncheck(f"#f-{i}-nullable")
    screenshot("schema-editor")
    page.click("#save-schema")

    page.wait_for_url(re.compile(r"/datasets/\d+/$"))
    expect(page.locator("[role=status]")).to_contain_text("schema was saved")
    expect(page.locator("#fields tbody tr")).to_have_count(3)
    page.fill("#transition-comment", "First version, ready for review.")
    page.click("button[value=submit]")
    expect(page.locator("#dataset-status")).to_have_text("In review")
    dataset = Dataset.objects.get(slug="bus-stops")

    page.context.clear_cookies()
    login(people["reviewer"].username)
    page.click("nav.site >> text=Review")
    expect(page.locator("#review-queue")).to_contain_text("Bus stops")
    screenshot("review-queue")
    page.click("#review-queue >> text=Bus stops")
    expect(page.locator("h1")).to_contain_text("Review: Bus stops")
    page.fill("#transition-comment", "Looks good.")
    screenshot("review-page")
    page.click("button[value=approve]")
    page.wait_for_url(re.compile(r"/review/$"))
    expect(page.locator("[role=status]")).to_contain_text("was approved")

    page.goto(f"/datasets/{dataset.pk}/")
    expect(page.locator("#dataset-status")).to_have_text("Published")
    rows = page.locator("#fields tbody tr")
    expect(rows).to_have_count(3)
    for i, (name, _, sensitivity, _) in enumerate(FIELDS):
        expect(rows.nth(i).locator("code")).to_have_text(name)
        expect(rows.nth(i).locator(f".badge.{sensitivity}")).to_be_visible()
    expect(page.locator("ol.timeline")).to_contain_text("Looks good.")
    screenshot("dataset-page-published")

    page.click("nav.site >> text=Catalogue")
    page.check("#f-sensitivity-personal")  # htmx refreshes the results
    expect(page.locator("#results-h")).to_have_text("1 dataset")
    expect(page).to_have_url(re.compile(r"sensitivity=personal"))
    screenshot("catalogue")
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.PUBLISHED and dataset.version == 1


def test_reviewer_sees_the_diff_of_a_new_schema_version(page, login, screenshot, people, department):
    from playwright.sync_api import expect

    from catalog import services
    from tests.factories import PERMIT_FIELDS, DatasetFactory

    dataset = DatasetFactory(department=department, steward=people["steward"], reviewer=people["reviewer"],
                             status="published", title="Building permits")
    fields = [dict(f) for f in PERMIT_FIELDS if f["name"] != "parcel_id"]
    fields[3] = {**fields[3], "name": "submitted_date", "renamed_from": "submitted_on"}
    fields[2] = {**fields[2], "sensitivity": "confidential"}
    fields.append({"name": "decided_on", "type": "date", "sensitivity": "public"})
    services.dataset_schema_set(actor=people["steward"], dataset=dataset, fields=fields, note="Decision date.")
    services.dataset_transition(actor=people["steward"], dataset=dataset, action="submit", comment="v2")

    login(people["reviewer"].username)
    page.goto("/review/")
    page.click("#review-queue >> text=Building permits")
    expect(page.locator("#changes")).to_contain_text("removed")
    expect(page.locator("#diff tr.change-added")).to_contain_text("decided_on")
    expect(page.locator("#diff tr.change-renamed")).to_contain_text("submitted_date")
    expect(page.locator("#diff tr.change-sensitivity")).to_contain_text("fee_eur")
    screenshot("review-schema-diff")
