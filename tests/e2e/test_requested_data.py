"""Requested data in a real browser: an analyst finds nothing in the catalogue and requests the
data from there, a colleague of another department joins, a reviewer routes it, the routed
steward accepts it and links the dataset they published, and the analyst follows the
notification to an access-request form pre-filled with the fields the dataset has and the
purpose."""

from __future__ import annotations

import pytest

from tests.access_factories import make_cast, published_dataset

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_request_join_route_accept_fulfil_and_the_prefilled_access_request(page, login, screenshot, people,
                                                                          department, other_department):
    cast = make_cast(people, department, other_department)

    # Nothing in the catalogue: the empty result offers to request the data.
    login(cast["analyst_h"].username)
    page.goto("/catalogue/?q=ramps")
    page.click("#request-data-cta a:has-text('Request the data')")
    page.wait_for_url("**/requested-data/new/**")
    assert page.input_value("#id_title") == "ramps"
    page.fill("#id_title", "Bus stop ramps")
    page.fill("#id_description", "Which stops have a ramp, and how wide it is.")
    page.fill("#id_wished_fields", "stop_id: the stop\naccessible: step-free access\nramp_width: in cm")
    page.fill("#id_purpose", "Plan accessible routes")
    screenshot("data-request-new")
    page.click("text=Send the request")
    page.wait_for_url("**/requested-data/*/")
    assert "sent to the governance reviewers" in page.inner_text("main")
    request_url = page.url
    page.click("text=Sign out")

    # A steward of the same department needs it too, and joins from the list.
    login(cast["steward_h"].username)
    page.goto("/requested-data/")
    page.click("#data-requests a:has-text('Bus stop ramps')")
    page.fill("#join-purpose", "Ramps budget")
    page.click("button:has-text('Join the request')")
    page.wait_for_url(request_url)
    assert "You joined the request" in page.inner_text("main")
    assert "Ramps budget" in page.inner_text("#supporters")
    page.click("text=Sign out")

    # The reviewer routes it to transport.
    login(cast["reviewer"].username)
    page.goto(request_url)
    page.select_option("#route-department", "transport")
    page.click("button:has-text('Route the request')")
    page.wait_for_url(request_url)
    assert "routed to Transport" in page.inner_text("main")
    page.click("text=Sign out")

    # Transport's steward accepts it, publishes a dataset and links it.
    dataset = published_dataset(department)
    login(cast["steward"].username)
    page.goto(request_url)
    page.click("button:has-text('Accept: we will publish it')")
    page.wait_for_url(request_url)
    assert page.inner_text("#data-request-status").startswith("Accepted")
    page.select_option("#fulfil-dataset", str(dataset.pk))
    screenshot("data-request-detail")
    page.click("button:has-text('Link the dataset')")
    page.wait_for_url(request_url)
    assert "The dataset is linked" in page.inner_text("main")
    page.click("text=Sign out")

    # The analyst follows the notification to a pre-filled access request.
    login(cast["analyst_h"].username)
    page.goto("/inbox/")
    page.click("a:has-text('The data you requested is published')")
    page.wait_for_url(f"**/datasets/{dataset.pk}/request-access/**")
    assert page.is_checked("input[name=fields_][value=stop_id]")
    assert page.is_checked("input[name=fields_][value=accessible]")
    assert not page.is_checked("input[name=fields_][value=district]")
    assert page.input_value("#id_purpose") == "Plan accessible routes"
    screenshot("data-request-prefilled-access")
