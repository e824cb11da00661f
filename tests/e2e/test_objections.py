"""Objections in a real browser: an analyst of a department that reads a dataset objects to a
record from the dataset's page and sees its phone masked as their grant shows it; the owning
steward follows the inbox to the objection, sees the same record in clear, and accepts it with
the fix; the analyst finds the answer in their inbox and in their objections."""

from __future__ import annotations

import pytest

from tests.access_factories import make_cast
from tests.exchange.objections.conftest import ROWS
from tests.records_support import grant, load_rows, published_dataset

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_object_from_the_dataset_page_and_the_owner_accepts(page, login, screenshot, people, department,
                                                            other_department):
    cast = make_cast(people, department, other_department)
    dataset = published_dataset(department)
    load_rows(dataset, ROWS)
    grant(dataset, department=other_department, approved_by=cast["steward"],
          fields={"permit_id": "clear", "district": "clear", "phone": "masked"})

    # Health's analyst reads the permits and objects to permit 2's phone.
    login(cast["analyst_h"].username)
    page.goto(f"/datasets/{dataset.pk}/")
    page.click("a:has-text('Object to records or fields')")
    page.wait_for_url(f"**/datasets/{dataset.pk}/object/")
    assert page.locator("input[name=field_names][value=secret_note]").count() == 0
    page.select_option("#id_kind", "wrong_value")
    page.fill("#id_record_keys", "2")
    page.check("input[name=field_names][value=phone]")
    page.fill("#id_comment", "This phone number belongs to another applicant.")
    screenshot("objection-new")
    page.click("button:has-text('Send the objection')")
    page.wait_for_url("**/objections/*/")
    objection_url = page.url
    assert "sent to the stewards of Transport" in page.inner_text("main")
    records = page.inner_text("#objection-records")
    assert "0002" in records and "+49 30 5550002" not in records
    page.click("text=Sign out")

    # Transport's steward follows the inbox, sees the record in clear and accepts.
    login(cast["steward"].username)
    page.goto("/inbox/")
    page.click("a:has-text('Objection to Permits')")
    page.wait_for_url(objection_url)
    assert "+49 30 5550002" in page.inner_text("#objection-records")
    page.fill("#accept-note", "Corrected the phone in the permits system.")
    screenshot("objection-answer")
    page.click("button:has-text('Accept: it is fixed')")
    page.wait_for_url(objection_url)
    assert page.inner_text("#objection-status").startswith("Accepted")
    page.goto(f"/datasets/{dataset.pk}/")
    assert page.locator("#dataset-objections").count() == 0
    page.click("text=Sign out")

    # The analyst finds the answer in their inbox and among what their department raised.
    login(cast["analyst_h"].username)
    page.goto("/inbox/")
    page.click("a:has-text('Objection to Permits accepted')")
    page.wait_for_url(objection_url)
    assert "Corrected the phone" in page.inner_text("#objection-answer")
    page.goto("/objections/?scope=raised&status=")
    assert "Accepted" in page.inner_text("#objections")
