"""The city map in a real browser: the Sankey of flows is drawn from the JSON API, coloured by
freshness, with the islands, failing flows and waiting requests beside it; a department that
neither gives nor receives sees only itself, an island."""

from __future__ import annotations

import pytest

from tests.exchange.overview.test_city import city  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_city_map_for_an_auditor_and_for_an_island(page, login, screenshot, people, city):  # noqa: F811
    from playwright.sync_api import expect

    login(people["city_auditor"].username)
    page.click("text=City map")
    page.wait_for_url("**/city/")
    page.wait_for_selector("#city-flows[data-drawn='3']")  # three flows drawn as bands
    expect(page.locator("#islands li")).to_have_text(["Social"])
    expect(page.locator("#failing")).to_contain_text("The target database went away.")
    expect(page.locator("#waiting tbody tr")).to_have_count(1)
    expect(page.locator("#flow-table [data-state='fresh']")).to_have_count(1)
    screenshot("city-map")
    page.context.clear_cookies()

    login(city["social_member"].username)
    page.goto("/city/")
    expect(page.locator("#islands li")).to_have_text(["Social"])
    expect(page.locator("#city-flows")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("Transport")
