"""The access request form's row conditions in a real browser: add and remove conditions with
htmx (focus follows, the change is announced), a bad condition comes back with its error next to
it and nothing saved, and the fixed request keeps every condition."""

from __future__ import annotations

import datetime as dt

import pytest

from exchange.access.models import AccessRequest
from tests.access_factories import make_cast
from tests.exchange.records.test_records import rows
from tests.records_support import load_rows, published_dataset

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_conditions_are_added_removed_validated_and_saved(page, login, screenshot, people, department,
                                                         other_department):
    cast = make_cast(people, department, other_department)
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    login(cast["analyst_h"].username)
    page.goto(f"/datasets/{dataset.pk}/request-access/")
    for name in ("permit_id", "district"):
        page.check(f"input[name=fields_][value={name}]")
    page.fill("#id_purpose", "Inspections in the north")
    page.fill("#id_legal_basis", "Building Code §7")
    page.fill("#id_requested_end", (dt.date.today() + dt.timedelta(days=30)).isoformat())

    # Three conditions added by htmx; focus lands in each new row's field.
    for n in range(3):
        page.click("#add-condition")
        page.wait_for_selector(f"#rf-{n}-field")
        # htmx moves the focus to the [autofocus] element when the swap settles, just after it.
        page.wait_for_function(f"document.activeElement && document.activeElement.id === 'rf-{n}-field'",
                               timeout=5_000)
        assert page.inner_text("#conditions-status") == f"Condition {n + 1} added."
    page.select_option("#rf-0-field", "district")
    page.fill("#rf-0-value", "North")
    page.select_option("#rf-1-field", "permit_id")
    page.select_option("#rf-1-op", "contains")  # does not fit a number
    page.fill("#rf-1-value", "3")
    page.select_option("#rf-2-field", "approved")
    # Removing the third keeps what was typed in the others; focus goes back to "add".
    page.click("button[aria-label='Remove condition 3']")
    page.wait_for_selector("#rf-2-field", state="detached")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'add-condition'",
                           timeout=5_000)
    assert page.input_value("#rf-0-value") == "North" and page.input_value("#rf-1-op") == "contains"
    assert page.input_value("#id_purpose") == "Inspections in the north"

    # The service refuses the operator: the error is next to condition 2, nothing is saved.
    page.click("text=Send the request")
    page.wait_for_selector("#rf-1-op-error")
    assert "does not fit a integer field" in page.inner_text("#rf-1-op-error")
    assert page.get_attribute("#rf-1-op", "aria-invalid") == "true"
    assert page.locator("#rf-0-value-error").count() == 0
    assert page.input_value("#rf-0-value") == "North" and page.is_checked("input[name=fields_][value=district]")
    assert not AccessRequest.objects.exists()
    screenshot("request-access-conditions-error")

    # Fixed with the keyboard: choose the operator, then Enter in the value sends the request.
    page.select_option("#rf-1-op", "gte")
    page.focus("#rf-1-value")
    page.keyboard.press("Enter")
    page.wait_for_url("**/access/requests/*/")
    access_request = AccessRequest.objects.get()
    assert access_request.row_filter == [{"field": "district", "op": "eq", "value": "North"},
                                         {"field": "permit_id", "op": "gte", "value": 3}]
    assert "district eq North and permit_id gte 3" in page.inner_text("main")
