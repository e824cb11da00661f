"""A department administrator manages the members in a real browser: adds one, sees a bad
username refused next to the field, and removes a member after confirming."""

from __future__ import annotations

import pytest

from departments.models import Membership
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_adds_and_removes_a_member(page, login, screenshot, people, department):
    from playwright.sync_api import expect

    UserFactory(username="new-analyst")
    login(people["admin"].username)
    page.goto(f"/departments/{department.slug}/")
    page.fill("#id_username", "no-such-person")
    page.click("text=Add the member")
    expect(page.locator("#id_username-error")).to_have_text("No active user with that username.")
    page.fill("#id_username", "new-analyst")
    page.select_option("#id_role", "analyst")
    page.click("text=Add the member")
    expect(page.locator("[role=status]")).to_contain_text("new-analyst joined Transport as analyst.")
    membership = Membership.objects.get(user__username="new-analyst")
    screenshot("department-members")

    # Dismissing the confirmation keeps the member; accepting it removes them.
    row = page.locator(f"#member-{membership.pk}")
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.locator("text=Remove").click()
    expect(row).to_be_visible()
    assert Membership.objects.filter(pk=membership.pk).exists()
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("text=Remove").click()
    expect(page.locator("[role=status]")).to_contain_text("new-analyst was removed from Transport.")
    assert not Membership.objects.filter(pk=membership.pk).exists()


def test_a_person_creates_an_api_token_and_sees_it_once(page, login, people):
    from playwright.sync_api import expect

    login(people["analyst"].username)
    page.click("nav.site >> text=Account")
    page.click("text=Create a token")
    token = page.input_value("#new-token-value")
    assert len(token) > 20
    page.goto("/account/")
    expect(page.locator("#tokens tbody tr")).to_have_count(1)
    assert token not in page.content()
