"""The whole exchange in one browser story, each person doing their part through the pages:

a steward publishes a dataset, a reviewer approves it, the steward brings its data in and
watches the run reach 100 %, an analyst of another department asks for three fields, the
steward approves two and denies one, a data protection officer second-approves the personal
one, the analyst's preview shows exactly those two fields (the third absent, the personal one
pseudonymised), and an auditor finds every one of these steps in the audit explorer."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from catalog.models import Dataset
from exchange.audit.models import AuditEvent
from tests.access_factories import make_cast
from tests.sync_factories import csv_bytes

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FIELDS = [  # name, type, sensitivity, key
    ("permit_id", "integer", "public", True),
    ("street", "text", "internal", False),
    ("holder_name", "text", "personal", False),
    ("district", "text", "public", False),
]
HOLDERS = ["Ada Lovelace", "Grace Hopper", "Edsger Dijkstra"]
ROWS = [[i, f"{i} Canal Street", HOLDERS[i % 3], ["North", "Harbour"][i % 2]] for i in range(1, 31)]


def test_one_story_across_every_role(page, login, screenshot, people, department, other_department):
    from playwright.sync_api import expect

    cast = make_cast(people, department, other_department)

    # 1. The steward describes the dataset, defines its schema and sends it for review.
    login(cast["steward"].username)
    page.goto("/datasets/new/")
    page.fill("#id_title", "Parking permits")
    page.fill("#id_slug", "parking-permits")
    page.fill("#id_description", "Residents' parking permits, one row per permit.")
    page.check("input[name=themes][value=TRAN]")
    page.fill("#id_keywords", "parking, permits")
    page.select_option("#id_licence", "CC-BY-4.0")
    page.click("button:has-text('Create the draft')")
    page.wait_for_url(re.compile(r"/datasets/\d+/schema/$"))
    for i, (name, ftype, sensitivity, key) in enumerate(FIELDS):
        if i:
            page.click("#add-field")
            page.wait_for_selector(f"#f-{i}-name")
        page.fill(f"#f-{i}-name", name)
        page.select_option(f"#f-{i}-type", ftype)
        page.select_option(f"#f-{i}-sensitivity", sensitivity)
        if key:
            page.check(f"#f-{i}-is_key")
            page.uncheck(f"#f-{i}-nullable")
    page.click("#save-schema")
    page.wait_for_url(re.compile(r"/datasets/\d+/$"))
    page.fill("#transition-comment", "Ready for review.")
    page.click("button[value=submit]")
    expect(page.locator("#dataset-status")).to_have_text("In review")
    dataset = Dataset.objects.get(slug="parking-permits")
    page.click("text=Sign out")

    # 2. A governance reviewer approves the publication from the review queue.
    login(cast["reviewer"].username)
    page.goto("/review/")
    page.click("#review-queue >> text=Parking permits")
    page.fill("#transition-comment", "Approved for the catalogue.")
    page.click("button[value=approve]")
    page.wait_for_url(re.compile(r"/review/$"))
    expect(page.locator("[role=status]")).to_contain_text("was approved")
    page.click("text=Sign out")

    # 3. The steward uploads the data and watches the ingest run reach 100 %.
    header = [f[0] for f in FIELDS]
    login(cast["steward"].username)
    page.goto(f"/datasets/{dataset.pk}/sync/")
    page.click("text=Set up the source")
    page.check("input[name=kind][value=file]")
    page.select_option("#id_file_format", "csv")
    for name in header:
        page.fill(f"#id_map__{name}", name)
    page.click("text=Save the source")
    page.wait_for_selector("text=Source saved.")
    page.set_input_files("#upload-file", files=[{
        "name": "permits.csv", "mimeType": "text/csv", "buffer": csv_bytes(header, ROWS)}])
    page.click("text=Upload and ingest")
    page.wait_for_selector("#runs td[data-status=succeeded]")
    progress = page.locator("#runs progress").first
    assert progress.get_attribute("value") == progress.get_attribute("max") == "100"
    assert "30" in page.locator("#runs tbody tr").first.inner_text()
    screenshot("story-sync")
    page.click("nav.site >> text=Dashboard")
    page.wait_for_selector("#chart-sync-rows[data-drawn]")
    screenshot("story-dashboard-sync")
    page.click("text=Sign out")

    # 4. An analyst of another department asks for three fields, one of them personal.
    login(cast["analyst_h"].username)
    page.goto("/catalogue/?q=parking")
    page.click("text=Parking permits")
    page.wait_for_url(f"**/datasets/{dataset.pk}/")
    page.click("text=Request access")
    for name in ("permit_id", "holder_name", "district"):
        page.check(f"input[name=fields_][value={name}]")
    page.fill("#id_purpose", "Check permits against resident registrations")
    page.fill("#id_legal_basis", "Parking Ordinance §4")
    page.fill("#id_requested_end", (dt.date.today() + dt.timedelta(days=60)).isoformat())
    page.click("text=Send the request")
    page.wait_for_url("**/access/requests/*/")
    request_url = page.url
    page.click("text=Sign out")

    # 5. The steward approves two fields (the personal one pseudonymised) and denies the third.
    login(cast["steward"].username)
    page.goto("/access/")
    page.click("a:has-text('Decide')")
    page.wait_for_url("**/decide/")
    assert page.input_value("#form-holder_name") == "pseudonymised"
    page.check("input[name=decision-district][value=deny]")
    page.fill("#reason-district", "The district is derived from the street: not needed")
    page.click("text=Record the decision")
    page.wait_for_url(request_url)
    assert "data protection officer" in page.inner_text("#request-status")
    page.click("text=Sign out")

    # 6. The data protection officer second-approves the personal field.
    login(cast["dpo"].username)
    page.goto("/access/dpo/")
    expect(page.locator("main")).to_contain_text("holder_name")
    page.fill("textarea[name=reason] >> nth=0", "Pseudonyms are enough for matching.")
    page.click("button:has-text('Approve')")
    page.wait_for_url("**/access/dpo/")
    page.click("text=Sign out")

    # 7. The analyst's view holds exactly the two approved fields; the third is absent and the
    #    personal one carries pseudonyms, never the names.
    login(cast["analyst_h"].username)
    page.goto(f"/datasets/{dataset.pk}/")
    assert page.locator("#preview-table thead th code").all_inner_texts() == ["permit_id", "holder_name"]
    preview = page.inner_text("#preview-table")
    assert "North" not in preview and not any(name in preview for name in HOLDERS)
    screenshot("story-analyst-preview")
    page.goto(f"/datasets/{dataset.pk}/records/")
    headers = [h.split()[0] for h in page.locator("#records thead th").all_inner_texts()]
    assert headers == ["permit_id", "holder_name"]
    body = page.inner_text("#records")
    assert "North" not in body and "Harbour" not in body and "district" not in body
    assert not any(name in body for name in HOLDERS)
    expect(page.locator("#records tbody tr")).to_have_count(len(ROWS))
    screenshot("story-analyst-records")
    page.click("text=Sign out")

    # 8. An auditor finds each step in the audit explorer.
    login(cast["city_auditor"].username)
    page.goto(f"/audit/?dataset={dataset.pk}")
    actions = set(page.locator("#audit-events tbody td:nth-child(4)").all_inner_texts())
    expected = {"dataset.create", "dataset.submit", "dataset.approve", "source.set", "ingest.run",
                "access_request.submit", "access_request.decide", "grant.create", "grant.dpo_approve",
                "records.preview", "records.read"}
    assert expected <= actions, expected - actions
    screenshot("story-audit")
    # The page shows what the trail holds, not a picture of it.
    recorded = set(AuditEvent.objects.filter(dataset_id=dataset.pk).values_list("action", flat=True))
    assert expected <= recorded
