"""The audit pages and the dashboard: auditors read, everyone else gets a 403 page and the
attempt is audited; lists take a constant number of queries."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from departments.selectors import principals_forget_all
from exchange.audit.models import AuditEvent, AuditOutcome
from exchange.audit.services import audit_record
from tests.access_factories import active_grant, decide, make_cast, published_dataset, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(people, department, other_department):
    return make_cast(people, department, other_department)


@pytest.fixture
def dataset(department):
    return published_dataset(department)


AUDITOR_PAGES = ["/audit/", "/audit/verify/", "/audit/who-could-see/", "/dashboard/data/audit.json"]


@pytest.mark.parametrize("who", ["analyst", "steward", "outsider", "nobody", "dpo"])
@pytest.mark.parametrize("url", AUDITOR_PAGES)
def test_non_auditors_get_403_and_the_attempt_is_audited(client, cast, who, url):
    client.force_login(cast[who])
    response = client.get(url)
    assert response.status_code == 403
    event = AuditEvent.objects.filter(action="audit.denied").latest("id")
    assert event.outcome == AuditOutcome.DENIED and event.actor_id == cast[who].pk


def test_timeline_is_403_for_non_auditors_and_audited(client, cast, dataset):
    client.force_login(cast["steward"])
    assert client.get(f"/audit/datasets/{dataset.pk}/timeline/").status_code == 403
    event = AuditEvent.objects.filter(action="audit.denied").latest("id")
    assert event.dataset_id == dataset.pk and event.details["asked"] == "grant_timeline"


def test_department_auditor_outside_their_department_gets_403(client, cast, other_department):
    foreign = published_dataset(other_department)
    client.force_login(cast["auditor"])  # audits transport only
    assert client.get(f"/audit/datasets/{foreign.pk}/timeline/").status_code == 403


def test_audit_nav_only_for_auditors(client, cast):
    client.force_login(cast["auditor"])
    assert 'href="/audit/"' in client.get("/access/").content.decode()
    client.force_login(cast["analyst"])
    assert 'href="/audit/"' not in client.get("/access/").content.decode()


def test_explorer_shows_the_events_and_filters(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "passenger_name"])
    decide(actor=cast["steward"], access_request=access_request, approve={"stop_id": None, "passenger_name": None})
    client.force_login(cast["city_auditor"])
    page = client.get("/audit/").content.decode()
    assert "access_request.submit" in page and "access_request.decide" in page and "grant.create" in page
    filtered = client.get(f"/audit/?action=grant.&dataset={dataset.pk}").content.decode()
    assert "grant.create" in filtered and "access_request.submit" not in filtered
    assert "/api/v1/audit/events/export/?" in filtered and "action=grant." in filtered
    read = AuditEvent.objects.filter(action="audit.read").latest("id")
    assert read.filters == {"action": "grant.", "dataset": str(dataset.pk)}


def test_explorer_bad_filter_shows_error_next_to_field(client, cast):
    client.force_login(cast["city_auditor"])
    response = client.get("/audit/?since=yesterday&department=nowhere")
    assert response.status_code == 400
    page = response.content.decode()
    assert "Enter an ISO date" in page and "Unknown department." in page


def test_explorer_pages_by_cursor(client, cast):
    for i in range(60):
        audit_record(actor=None, action="test.event", details={"i": i})
    client.force_login(cast["city_auditor"])
    first = client.get("/audit/?action=test.event").content.decode()
    assert first.count("<code>test.event</code>") == 50 and "Older events" in first
    before = first.split("before=")[1].split('"')[0]
    second = client.get(f"/audit/?action=test.event&before={before}").content.decode()
    assert second.count("<code>test.event</code>") == 10 and "Older events" not in second


def test_explorer_export_link_works_with_the_session(client, cast, dataset):
    submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["city_auditor"])
    response = client.get("/api/v1/audit/events/export/?action=access_request.submit")
    assert response.status_code == 200
    assert "access_request.submit" in b"".join(response.streaming_content).decode()


def test_department_auditor_sees_only_their_department(client, cast, dataset, other_department):
    foreign = published_dataset(other_department)
    submit(actor=cast["steward"], dataset=foreign, fields=["stop_id"])
    submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["auditor"])
    page = client.get("/audit/?action=access_request.submit").content.decode()
    assert page.count("<code>access_request.submit</code>") == 1


def test_grant_timeline_page(client, cast, dataset):
    grant = active_grant(cast=cast, dataset=dataset, fields=["stop_id", "passenger_name"])
    client.force_login(cast["auditor"])
    page = client.get(f"/audit/datasets/{dataset.pk}/timeline/").content.decode()
    for action in ("access_request.submit", "access_request.decide", "grant.create", "grant.dpo_approve"):
        assert f"<code>{action}</code>" in page
    assert f"#{grant.pk}" in page


def test_who_could_see_answers_with_the_grants(client, cast, dataset):
    grant = active_grant(cast=cast, dataset=dataset, fields=["stop_id", "passenger_name"])
    client.force_login(cast["city_auditor"])
    form = client.get("/audit/who-could-see/").content.decode()
    assert dataset.title in form


    page = client.get("/audit/who-could-see/", {"dataset": dataset.pk, "field": "passenger_name",
                                                "at": timezone.localdate().isoformat()}).content.decode()
    assert f"grant #{grant.pk}" in page and cast["analyst_h"].username in page and "pseudonymised" in page
    assert "2 principals" in page
    response = client.get("/audit/who-could-see/", {"dataset": dataset.pk, "field": "", "at": "nope"})
    assert response.status_code == 400 and 'id="id_at-error"' in response.content.decode()


def test_verify_page_reports_intact_chain(client, cast, dataset):
    submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["operator"])
    page = client.get("/audit/verify/").content.decode()
    assert "<strong>Intact</strong>" in page and "events" in page
    assert AuditEvent.objects.filter(action="audit.verify").exists()


def test_explorer_takes_constant_queries(client, cast, django_assert_num_queries):
    for i in range(3):
        audit_record(actor=None, action="test.event", details={"i": i})
    client.force_login(cast["city_auditor"])
    client.get("/audit/")
    with CaptureQueriesContext(connection) as small:
        client.get("/audit/?action=test.event")
    for i in range(9):
        audit_record(actor=None, action="test.event", details={"i": i})
    with django_assert_num_queries(len(small)):
        client.get("/audit/?action=test.event")


# --- Dashboard ------------------------------------------------------------------------------

def test_dashboard_page_and_data_for_everyone_signed_in(client, cast, dataset):
    active_grant(cast=cast, dataset=dataset, fields=["stop_id", "passenger_name"])
    client.force_login(cast["analyst_h"])
    page = client.get("/dashboard/").content.decode()
    assert "chart-4.6.1.umd.min.js" in page and 'id="chart-requests"' in page and 'id="chart-audit"' not in page
    requests = client.get("/dashboard/data/requests.json").json()
    assert requests["labels"] and {d["label"] for d in requests["datasets"]} >= {"submitted", "approved"}
    grants = client.get("/dashboard/data/grants.json").json()
    assert grants["by_department"] == {"labels": ["Transport"], "data": [1]}
    assert dict(zip(grants["by_sensitivity"]["labels"], grants["by_sensitivity"]["data"], strict=True)) == {
        "public": 1, "personal": 1}


def test_dashboard_data_is_scoped(client, cast, dataset):
    active_grant(cast=cast, dataset=dataset, fields=["stop_id"])
    client.force_login(cast["nobody"])
    assert client.get("/dashboard/data/grants.json").json()["by_department"]["data"] == []
    assert client.get("/dashboard/data/requests.json").json()["labels"] == []


def test_dashboard_audit_data_for_auditors(client, cast, dataset):
    submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["city_auditor"])
    assert 'id="chart-audit"' in client.get("/dashboard/").content.decode()
    data = client.get("/dashboard/data/audit.json").json()
    assert data["labels"] and "allowed" in {d["label"] for d in data["datasets"]}


@pytest.mark.parametrize("url", ["/dashboard/data/requests.json", "/dashboard/data/grants.json",
                                 "/dashboard/data/audit.json"])
def test_dashboard_data_takes_constant_queries(client, cast, dataset, django_assert_num_queries, url):
    active_grant(cast=cast, dataset=dataset, fields=["stop_id", "passenger_name"])
    client.force_login(cast["city_auditor"])
    client.get(url)
    # The same state of the per-process principal cache (empty) for both measurements.
    principals_forget_all()
    with CaptureQueriesContext(connection) as small:
        client.get(url)
    for _ in range(3):
        active_grant(cast=cast, dataset=dataset, fields=["stop_id", "district", "revenue"])
    principals_forget_all()
    with django_assert_num_queries(len(small)):
        client.get(url)
