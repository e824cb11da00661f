"""A person signs in and reads records in a real browser: the masked field shows masked,
the hidden one is absent."""

from __future__ import annotations

import pytest

from tests.exchange.records.test_records import CANARY_NOTE, CANARY_PHONE, rows
from tests.records_support import grant, load_rows, published_dataset

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sign_in_and_browse_my_view_of_records(page, login, screenshot, people, department):
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    grant(dataset, user=people["outsider"], approved_by=people["steward"],
          fields={"permit_id": "clear", "district": "clear", "phone": "masked"})

    login(people["outsider"].username)
    assert "Welcome" in page.inner_text("h1")
    page.goto(f"/datasets/{dataset.pk}/records/?page_size=5")
    headers = page.locator("#records thead th").all_inner_texts()
    assert [h.split()[0] for h in headers] == ["permit_id", "phone", "district"]
    body = page.content()
    assert CANARY_NOTE not in body and CANARY_PHONE not in body
    assert page.locator("#record-rows tr").count() == 6  # five rows and "load more"
    page.click("text=Load more")
    page.wait_for_function("document.querySelectorAll('#record-rows tr').length > 6")
    screenshot("records-page")


def test_wrong_password_shows_an_error(page, people):
    page.goto("/accounts/login/")
    page.fill("#id_username", people["analyst"].username)
    page.fill("#id_password", "not-the-password")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").is_visible()
