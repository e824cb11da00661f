"""The access workflow in a real browser: an analyst asks for three fields (one personal), the
steward approves two (the personal one pseudonymised), the DPO second-approves, the analyst's
records page shows exactly those two fields, and an auditor finds each step in the explorer."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.access_factories import make_cast
from tests.exchange.records.test_records import CANARY_NAME, rows
from tests.records_support import load_rows, published_dataset

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_request_decide_dpo_records_and_audit(page, login, screenshot, people, department, other_department):
    cast = make_cast(people, department, other_department)
    dataset = published_dataset(department)
    load_rows(dataset, rows())

    # The analyst of another department asks for three fields, one of them personal.
    login(cast["analyst_h"].username)
    page.goto(f"/datasets/{dataset.pk}/request-access/")
    for name in ("permit_id", "applicant_name", "district"):
        page.check(f"input[name=fields_][value={name}]")
    page.fill("#id_purpose", "Plan inspections per district")
    page.fill("#id_legal_basis", "Building Code §7")
    page.fill("#id_requested_end", (dt.date.today() + dt.timedelta(days=30)).isoformat())
    screenshot("request-access")
    page.click("text=Send the request")
    page.wait_for_url("**/access/requests/*/")
    assert "was sent to its stewards" in page.inner_text("main")
    assert page.inner_text("#request-status").startswith("Submitted")
    request_url = page.url
    page.click("text=Sign out")

    # The steward approves two (the personal one pseudonymised, the default) and denies one.
    login(cast["steward"].username)
    page.goto("/access/")
    screenshot("access-home")
    page.click("a:has-text('Decide')")
    page.wait_for_url("**/decide/")
    assert page.input_value("#form-applicant_name") == "pseudonymised"
    page.check("input[name=decision-district][value=deny]")
    page.fill("#reason-district", "Not needed: inspections are planned by permit")
    screenshot("decide")
    page.click("text=Record the decision")
    page.wait_for_url(request_url)
    assert "data protection officer" in page.inner_text("#request-status")
    page.click("text=Sign out")

    # The data protection officer gives the second approval.
    login(cast["dpo"].username)
    page.goto("/access/dpo/")
    screenshot("dpo-queue")
    page.fill("textarea[name=reason] >> nth=0", "Pseudonymised names suffice.")
    page.click("button:has-text('Approve')")
    page.wait_for_url("**/access/dpo/")
    assert "second approval" in page.inner_text("main").lower()
    page.click("text=Sign out")

    # The analyst sees exactly the two fields; the third is absent.
    login(cast["analyst_h"].username)
    page.goto("/access/grants/")
    assert "expires in" in page.inner_text("main")
    screenshot("my-grants")
    page.click("a[role=button]:has-text('Records')")
    page.wait_for_url(f"**/datasets/{dataset.pk}/records/")
    headers = [h.split()[0] for h in page.locator("#records thead th").all_inner_texts()]
    assert headers == ["permit_id", "applicant_name"]
    body = page.inner_text("#records")
    assert "North" not in body and CANARY_NAME not in body
    page.goto(f"/datasets/{dataset.pk}/access/explain/")
    assert "denied in request" in page.inner_text("#hidden")
    screenshot("explain")
    page.goto("/dashboard/")
    page.wait_for_selector("#chart-grants-sensitivity[data-drawn]")
    page.click("text=Sign out")

    # The auditor finds the request, the decision and the DPO approval.
    login(cast["city_auditor"].username)
    page.goto(f"/audit/?dataset={dataset.pk}")
    actions = page.locator("#audit-events tbody td:nth-child(4)").all_inner_texts()
    for action in ("access_request.submit", "access_request.decide", "grant.create", "grant.dpo_approve"):
        assert action in actions
    screenshot("audit-explorer")
    page.goto("/audit/who-could-see/")
    page.select_option("#id_dataset", str(dataset.pk))
    page.fill("#id_field", "applicant_name")
    page.fill("#id_at", dt.date.today().isoformat())
    page.click("button:has-text('Ask')")
    assert cast["analyst_h"].username in page.inner_text("#who")
    screenshot("who-could-see")
    page.goto("/audit/verify/")
    assert "Intact" in page.inner_text("#verify-result")
    page.goto("/dashboard/")
    page.wait_for_selector("#chart-audit[data-drawn]")
    page.wait_for_selector("#chart-requests[data-drawn]")
    screenshot("dashboard")


def test_a_second_click_does_not_submit_the_form_again(page, login, people, department, other_department):
    from exchange.access.models import AccessRequest

    cast = make_cast(people, department, other_department)
    dataset = published_dataset(department)
    login(cast["analyst_h"].username)
    page.goto(f"/datasets/{dataset.pk}/request-access/")
    page.check("input[name=fields_][value=permit_id]")
    page.fill("#id_purpose", "Plan inspections")
    page.fill("#id_legal_basis", "Building Code §7")
    # Count the submissions that would leave the page, and keep the page here so a second
    # click can be tried: the listener on window runs after the page's own (on document).
    page.evaluate("""() => {
        window.sent = 0;
        window.addEventListener("submit", (e) => { if (!e.defaultPrevented) window.sent++; e.preventDefault(); });
    }""")
    page.click("text=Send the request")
    page.wait_for_function("document.querySelector('main form button[type=submit]').disabled")
    page.evaluate("document.querySelector('main form[method=post]').requestSubmit()")
    assert page.evaluate("window.sent") == 1
    assert AccessRequest.objects.count() == 0
