"""The city map: the whole city for operators and city auditors, a department's own flows for
its members; flows with their fields, forms, rows per day and freshness; islands; the requests
waiting longest; a constant number of queries."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from departments.selectors import principals_forget_all
from exchange.access.models import AccessRequest, PrincipalKind, RequestStatus
from exchange.sync.models import Run, RunKind, RunStatus, Source, Subscription
from tests.factories import DepartmentFactory, MembershipFactory
from tests.records_support import grant
from tests.sync_factories import connection, identity_mapping, published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def city(department, other_department, people):
    """Transport gives permits to health (delivered, fresh) and to parks (granted, its last
    delivery failed); parks gives trees to health; social is an island; health waits for a
    decision on a request."""
    parks = DepartmentFactory(code="parks", name="Parks", slug="parks")
    social = DepartmentFactory(code="social", name="Social", slug="social")
    permits = published_dataset(department=department)
    trees = published_dataset(department=parks, slug="trees")
    grant(permits, department=other_department, approved_by=people["admin"],
          fields={"permit_id": "clear", "applicant": "masked"})
    grant(permits, department=other_department, approved_by=people["admin"], fields={"applicant": "pseudonymised"})
    grant(permits, department=parks, approved_by=people["admin"], fields={"permit_id": "clear"})
    grant(trees, department=other_department, approved_by=people["admin"], fields={"permit_id": "clear"})
    now = timezone.now()
    source = Source.objects.create(dataset=permits, mapping=identity_mapping())
    ingest = Run.objects.create(kind=RunKind.INGEST, source=source, dataset=permits, status=RunStatus.SUCCEEDED,
                                seq_from=1,
                                seq_to=40, started_at=now - dt.timedelta(hours=2),
                                finished_at=now - dt.timedelta(hours=2))
    health_sub = Subscription.objects.create(dataset=permits, department=other_department, last_seq=40,
                                             connection=connection(department=other_department, kind="sqlite",
                                                                   secret="health.sqlite3"),
                                             target_table="permits", deliver_on_change=True)
    hour_ago = now - dt.timedelta(hours=1)
    Run.objects.create(kind=RunKind.DELIVERY, subscription=health_sub, dataset=permits, status=RunStatus.SUCCEEDED,
                       rows_inserted=70, started_at=hour_ago, finished_at=hour_ago, changes_seen_at=ingest.started_at)
    parks_sub = Subscription.objects.create(dataset=permits, department=parks, last_seq=10,
                                            connection=connection(department=parks, kind="sqlite",
                                                                  secret="parks.sqlite3"), target_table="permits")
    Run.objects.create(kind=RunKind.DELIVERY, subscription=parks_sub, dataset=permits, status=RunStatus.FAILED,
                       error="The target database went away.", finished_at=now - dt.timedelta(minutes=5))
    analyst = MembershipFactory(department=other_department, role="analyst").user
    AccessRequest.objects.create(dataset=permits, requested_by=analyst, principal_kind=PrincipalKind.DEPARTMENT,
                                 principal_department=other_department, purpose="Inspections",
                                 legal_basis="Act", requested_start=now, requested_end=now + dt.timedelta(days=30),
                                 status=RequestStatus.SUBMITTED, fields=["permit_id"])
    return {"parks": parks, "social": social, "permits": permits, "trees": trees, "analyst": analyst,
            "social_member": MembershipFactory(department=social, role="analyst").user}


def _flows(body) -> dict[tuple[str, str, str], dict]:
    return {(f["giver"], f["receiver"], f["dataset"]): f for f in body["flows"]}


def test_the_whole_city_for_a_city_auditor(as_user, people, city):
    body = as_user(people["city_auditor"]).get("/api/v1/city/").json()
    assert body["whole_city"] is True
    assert {d["code"] for d in body["departments"]} == {"transport", "health", "parks", "social"}
    assert body["islands"] == ["social"]
    flows = _flows(body)
    permits = city["permits"].title
    health = flows[("transport", "health", permits)]
    # Two grants in force, as the policy unions them: the most revealing form of each field.
    assert health["granted_fields"] == [{"name": "applicant", "form": "pseudonymised"},
                                        {"name": "permit_id", "form": "clear"}]
    (delivery,) = health["subscriptions"]
    assert (delivery["rows_per_day"], delivery["up_to_date"], delivery["failing"], delivery["deliver_on_change"]) == (
        10.0, True, False, True)
    assert delivery["last_latency_seconds"] == 3600.0 and health["state"] == "fresh" and not delivery["late"]
    parks = flows[("transport", "parks", permits)]
    assert parks["state"] == "failing" and parks["subscriptions"][0]["last_error"] == "The target database went away."
    assert [f["receiver"] for f in body["failing"]] == ["parks"]
    assert flows[("parks", "health", city["trees"].title)]["state"] == "granted"
    (waiting,) = body["waiting_requests"]
    assert (waiting["owner"], waiting["requester"], waiting["status"]) == ("transport", "health", "submitted")


def test_a_copy_that_misses_its_freshness_target_is_late(as_user, people, city):
    Subscription.objects.filter(department__code="health").update(freshness_missed_at=timezone.now())
    body = as_user(people["city_auditor"]).get("/api/v1/city/").json()
    health = _flows(body)[("transport", "health", city["permits"].title)]
    assert health["state"] == "late" and health["subscriptions"][0]["late"] is True


def test_a_department_sees_its_own_flows_only(as_user, city):
    body = as_user(city["analyst"]).get("/api/v1/city/").json()  # health
    assert body["whole_city"] is False
    assert {(f["giver"], f["receiver"]) for f in body["flows"]} == {("transport", "health"), ("parks", "health")}
    assert body["islands"] == []
    member = as_user(city["social_member"]).get("/api/v1/city/").json()
    assert member["flows"] == [] and member["waiting_requests"] == [] and member["failing"] == []
    assert [d["code"] for d in member["departments"]] == ["social"] and member["islands"] == ["social"]


def test_the_parks_steward_does_not_learn_of_transport_to_health(as_user, city):
    steward = MembershipFactory(department=city["parks"], role="steward").user
    body = as_user(steward).get("/api/v1/city/").json()
    assert {(f["giver"], f["receiver"]) for f in body["flows"]} == {("transport", "parks"), ("parks", "health")}
    assert body["waiting_requests"] == []  # health's request is to transport


def test_the_query_count_does_not_grow_with_the_city(as_user, people, city, django_assert_num_queries):
    api = as_user(people["city_auditor"])
    api.get("/api/v1/city/")
    principals_forget_all()
    api.get("/api/v1/city/")  # the principal is cached now
    with django_assert_num_queries(5):
        api.get("/api/v1/city/")
    more = published_dataset(department=city["social"], slug="more")
    grant(more, department=city["parks"], approved_by=people["admin"], fields={"permit_id": "clear"})
    principals_forget_all()
    api.get("/api/v1/city/")
    with django_assert_num_queries(5):
        body = api.get("/api/v1/city/").json()
    assert len(body["flows"]) == 4 and body["islands"] == []


def test_the_page_shows_islands_failing_flows_and_waiting_requests(client, people, city):
    client.force_login(people["city_auditor"])
    page = client.get("/city/").content.decode()
    assert 'data-island="social"' in page and 'data-state="failing"' in page
    assert "The target database went away." in page and "Inspections" not in page  # no purpose on the map
    assert 'id="city-flows"' in page
    client.force_login(city["social_member"])
    page = client.get("/city/").content.decode()
    assert "id=\"city-flows\"" not in page and "transport" not in page.lower().split("<main")[1]
