"""The dataset page in a real browser, as the owner's steward and as an analyst with a partial
grant: freshness, who receives the dataset and the records preview. The steward's page is the
README's screenshot (docs/screenshots/dataset-page.png is copied from the artifact)."""

from __future__ import annotations

import pytest

from exchange.records.selectors import pseudonymise
from tests.exchange.overview.test_dataset_page import RUN_ERROR, build_flow
from tests.exchange.records.test_records import CANARY_NAME, CANARY_NOTE, CANARY_PHONE
from tests.factories import DepartmentFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_dataset_page_for_the_steward_and_a_grantee(page, login, screenshot, people, department, other_department):
    from playwright.sync_api import expect

    parks = DepartmentFactory(code="parks", name="Parks", slug="parks")
    flow = build_flow(department=department, other_department=other_department, parks=parks, people=people)
    dataset = flow["dataset"]
    dataset.title = "Building permits"
    dataset.description = "Every building permit the city issued, with its applicant and fee."
    dataset.save(update_fields=["title", "description"])

    login(people["steward"].username)
    page.goto(f"/datasets/{dataset.pk}/")
    expect(page.locator("#latest-run")).to_contain_text("Failed")
    expect(page.locator("#run-error")).to_have_text(RUN_ERROR)
    expect(page.locator("#record-count")).to_have_text("12")
    expect(page.locator("#lineage tbody tr")).to_have_count(1)
    expect(page.locator("#lineage tbody")).to_contain_text("Parks")
    expect(page.locator("#preview-table tbody tr")).to_have_count(10)
    expect(page.locator("#preview-table")).to_contain_text(CANARY_NOTE)
    screenshot("dataset-page")
    page.click("text=Open the data-flow page: source, runs, quarantine")
    page.wait_for_url(f"**/datasets/{dataset.pk}/sync/")
    page.context.clear_cookies()

    login(flow["analyst_h"].username)
    page.goto(f"/datasets/{dataset.pk}/")
    headers = page.locator("#preview-table thead th code").all_inner_texts()
    assert headers == ["permit_id", "applicant_name", "phone"]
    body = page.inner_text("main")
    for canary in (CANARY_NOTE, CANARY_PHONE, CANARY_NAME + "-1"):
        assert canary not in body
    assert str(pseudonymise(f"{CANARY_NAME}-1")) in body and "********" in body
    expect(page.locator("#record-count")).to_have_count(0)
    expect(page.locator("#lineage table")).to_have_count(0)
    screenshot("dataset-page-grantee")
    page.context.clear_cookies()

    login(flow["bare_analyst"].username)
    page.goto(f"/datasets/{dataset.pk}/")
    page.click("#request-access-cta >> text=Request access")
    page.wait_for_url(f"**/datasets/{dataset.pk}/request-access/")
