"""A steward wires up a dataset's data flow entirely in the browser: registers a SQLite
connection and tests it, creates a table source with its column mapping, sets a schedule,
runs it now and watches the progress bar reach 100%. Then a steward of a department holding a
department-level grant subscribes its own database and a delivery succeeds."""

from __future__ import annotations

import sqlite3
from typing import cast

import pytest
from django.contrib.auth.models import User

from exchange.sync.models import Connection, Run, RunStatus, Source, Subscription
from tests.factories import MembershipFactory
from tests.records_support import grant
from tests.sync_factories import PERMIT_FIELDS, permit_rows, published_dataset

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_steward_sets_up_a_source_and_a_granted_department_subscribes(
        page, login, screenshot, people, department, other_department, settings, tmp_path):
    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]
    settings.MEDIA_ROOT = tmp_path / "media"
    source_file = tmp_path / "transport.sqlite3"
    db = sqlite3.connect(source_file)
    db.execute(f"CREATE TABLE permits ({', '.join(f[0] for f in PERMIT_FIELDS)})")
    db.executemany(f"INSERT INTO permits VALUES ({', '.join('?' * len(PERMIT_FIELDS))})", permit_rows(30))
    db.commit()
    db.close()
    dataset = published_dataset(department=department)

    login(people["steward"].username)
    page.click("nav >> text=Data flow")
    page.click("text=New connection")
    page.fill("#id_name", "transport db")
    page.select_option("#id_kind", "sqlite")
    page.fill("#id_secret", str(source_file))
    page.click("text=Register the connection")
    page.click("text=Test connection")
    result = page.wait_for_selector("#connection-test-result[data-ok]")
    assert result.get_attribute("data-ok") == "true" and "Opened transport.sqlite3" in result.inner_text()
    assert str(source_file) in page.inner_text("main") and "set, last changed" in page.inner_text("main")
    screenshot("connection")

    page.goto(f"/datasets/{dataset.pk}/sync/")
    page.click("text=Set up the source")
    page.check("input[name=kind][value=table]")
    page.select_option("#id_connection", label="transport db (SQLite database file)")
    # The column step replaces the form in place (no page load), its error too.
    page.evaluate("window.sameDocument = true")
    page.fill("#id_table", "no_such_table")
    page.click("text=Load the source's columns")
    assert "no_such_table" in page.wait_for_selector("#columns-error").inner_text()
    page.fill("#id_table", "permits")
    page.click("text=Load the source's columns")
    page.wait_for_selector("#columns-found")
    assert page.evaluate("window.sameDocument") is True and not page.query_selector("#columns-error")
    assert page.input_value("#id_map__permit_id") == "permit_id"  # same-named columns preselected
    page.select_option("#id_map__applicant", "")  # not needed here: left unmapped
    page.select_option("#id_watermark_column", "updated_at")
    screenshot("source-form")
    page.click("text=Save the source")
    page.wait_for_selector("text=Source saved.")
    assert Source.objects.get(dataset=dataset).mapping == {f[0]: f[0] for f in PERMIT_FIELDS if f[0] != "applicant"}

    page.fill("#id_schedule", "not cron")
    page.click("text=Save the schedule")
    assert "Five fields expected." in page.inner_text("#id_schedule-error")
    page.fill("#id_schedule", "0 2 * * *")
    page.click("text=Save the schedule")
    summary = page.inner_text("#schedule-summary")
    assert "At 02:00 AM" in summary and "Next run at" in summary

    page.click("text=Run now (full)")
    page.wait_for_selector("#runs td[data-status=succeeded]")
    progress = page.locator("#runs progress").first
    assert progress.get_attribute("value") == progress.get_attribute("max") == "100"
    assert "30" in page.locator("#runs tbody tr").first.inner_text()
    screenshot("data-flow-after-run")

    # Health holds a department-level grant on three of the fields.
    grant(dataset, department=other_department, approved_by=people["admin"],
          fields={"permit_id": "clear", "address": "masked", "fee": "clear"})
    health_steward = cast(User, MembershipFactory(department=other_department, role="steward").user)
    target_file = tmp_path / "health.sqlite3"
    sqlite3.connect(target_file).close()
    page.context.clear_cookies()
    login(health_steward.username)
    page.goto("/sync/")
    page.click("text=New connection")
    page.fill("#id_name", "health warehouse")
    page.select_option("#id_kind", "sqlite")
    page.fill("#id_secret", str(target_file))
    page.click("text=Register the connection")
    page.goto("/sync/")
    page.click("text=Subscribe to a granted dataset")
    page.select_option("#id_dataset", str(dataset.pk))
    page.select_option("#id_connection", str(Connection.objects.get(name="health warehouse").pk))
    page.fill("#id_target_table", "transport_permits")
    page.click("button:text('Subscribe')")
    page.wait_for_selector("text=Subscribed:")
    page.click("text=Deliver now")
    page.wait_for_selector("#runs td[data-status=succeeded]")
    screenshot("subscription")
    subscription = Subscription.objects.get()
    assert Run.objects.get(subscription=subscription).status == RunStatus.SUCCEEDED
    db = sqlite3.connect(target_file)
    columns = [d[0] for d in db.execute("SELECT * FROM transport_permits").description]
    assert "applicant" not in columns and {"permit_id", "address", "fee"} <= set(columns)
    assert db.execute("SELECT count(*) FROM transport_permits").fetchone()[0] == 30
    db.close()
