"""Access requests: submitting, bad input, row filters, withdrawing, who sees what."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from departments.models import Notification
from exchange.access.models import AccessRequest, RequestEvent
from exchange.audit.models import AuditEvent
from tests.access_factories import decide, make_cast, period, published_dataset, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(people, department, other_department) -> dict[str, Any]:
    return make_cast(people, department, other_department)


@pytest.fixture
def dataset(department):
    return published_dataset(department)


def payload(ds, /, **overrides: Any) -> dict[str, Any]:
    return {
        "dataset": ds.pk, "fields": ["stop_id", "district", "passenger_name"], "purpose": "Plan bus routes",
        "legal_basis": "Transport Act §12", **period(), **overrides,
    }


def error_of(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    return response.json()["error"]


class TestSubmit:
    def test_analyst_requests_for_themself(self, as_user, cast, dataset, department):
        response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/", payload(dataset, comment="Thanks"))
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["status"] == "submitted" and body["principal_kind"] == "user"
        assert body["principal_user"] == cast["analyst_h"].username
        assert body["fields"] == ["stop_id", "district", "passenger_name"]
        assert [e["action"] for e in body["timeline"]] == ["submitted"]
        assert body["timeline"][0]["comment"] == "Thanks" and body["grant"] is None

        event = AuditEvent.objects.get(action="access_request.submit")
        assert event.dataset_id == dataset.pk and event.department_id == department.pk
        assert event.fields == ["stop_id", "district", "passenger_name"] and event.purpose == "Plan bus routes"
        told = Notification.objects.filter(kind="access_request.submitted")
        assert {n.recipient for n in told} == {cast["steward"], cast["steward2"]}
        assert all(n.action_required for n in told)

    def test_steward_requests_for_their_department(self, as_user, cast, dataset, other_department):
        response = as_user(cast["steward_h"]).post("/api/v1/access-requests/",
                                                   payload(dataset, department="health"))
        assert response.status_code == 201, response.content
        assert response.json()["principal_kind"] == "department"
        assert response.json()["principal_department"] == "health"

    def test_analyst_may_not_request_for_a_department(self, as_user, cast, dataset):
        response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/", payload(dataset, department="health"))
        error_of(response, 403)
        assert not AccessRequest.objects.exists()

    @pytest.mark.parametrize("who", ["nobody", "outsider"])
    def test_people_without_an_analyst_or_steward_role_may_not_request(self, as_user, cast, dataset, who):
        error_of(as_user(cast[who]).post("/api/v1/access-requests/", payload(dataset)), 403)

    def test_the_owning_department_does_not_request_its_own_data(self, as_user, cast, dataset):
        error = error_of(as_user(cast["analyst"]).post("/api/v1/access-requests/", payload(dataset)), 400)
        assert error["code"] == "own_dataset"
        error = error_of(as_user(cast["steward"]).post("/api/v1/access-requests/",
                                                       payload(dataset, department="transport")), 400)
        assert error["code"] == "own_dataset"


class TestBadInput:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"fields": ["stop_id", "no_such_field"]}, "fields"),
            ({"fields": []}, "fields"),
            ({"fields": ["stop_id", "stop_id"]}, "fields"),
            ({"requested_end": (timezone.now() - timedelta(days=1)).isoformat()}, "requested_end"),
            ({"requested_start": (timezone.now() + timedelta(days=10)).isoformat(),
              "requested_end": (timezone.now() + timedelta(days=5)).isoformat()}, "requested_end"),
            (period(days=400), "requested_end"),
            ({"purpose": "   "}, "purpose"),
            ({"dataset": 999999}, "dataset"),
        ],
    )
    def test_refused_with_field_errors_and_nothing_written(self, as_user, cast, dataset, overrides, field):
        response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/", payload(dataset, **overrides))
        error = error_of(response, 400)
        assert field in error["fields"], error
        assert not AccessRequest.objects.exists()
        assert not AuditEvent.objects.filter(action="access_request.submit").exists()
        assert not Notification.objects.filter(kind="access_request.submitted").exists()

    @pytest.mark.parametrize("status", ["deprecated", "retired", "in_review"])
    def test_only_published_datasets(self, as_user, cast, department, status):
        dataset = published_dataset(department, status=status)
        response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/", payload(dataset))
        error = error_of(response, 400)
        assert "dataset" in error["fields"]
        assert not AccessRequest.objects.exists()

    def test_restricted_dataset_is_unknown_to_outsiders(self, as_user, cast, department):
        dataset = published_dataset(department, visibility="restricted")
        error = error_of(as_user(cast["analyst_h"]).post("/api/v1/access-requests/", payload(dataset)), 400)
        assert error["fields"] == {"dataset": ["No such dataset."]}


class TestRowFilter:
    @pytest.mark.parametrize(
        ("condition", "key"),
        [
            ({"field": "nope", "op": "eq", "value": 1}, "row_filter[0].field"),
            ({"field": "stop_id", "op": "contains", "value": "1"}, "row_filter[0].op"),
            ({"field": "accessible", "op": "lt", "value": True}, "row_filter[0].op"),
            ({"field": "location", "op": "eq", "value": "x"}, "row_filter[0].op"),
            ({"field": "accessible", "op": "contains", "value": "t"}, "row_filter[0].op"),
            ({"field": "measured_on", "op": "contains", "value": "2025"}, "row_filter[0].op"),
            ({"field": "stop_id", "op": "eq", "value": "12; DROP TABLE x"}, "row_filter[0].value"),
            ({"field": "stop_id", "op": "eq", "value": True}, "row_filter[0].value"),
            ({"field": "revenue", "op": "gt", "value": "lots"}, "row_filter[0].value"),
            ({"field": "revenue", "op": "gt", "value": "NaN"}, "row_filter[0].value"),
            ({"field": "measured_on", "op": "gte", "value": "31/12/2025"}, "row_filter[0].value"),
            ({"field": "recorded_at", "op": "lt", "value": "2026-01-01T00:00:00"}, "row_filter[0].value"),
            ({"field": "district", "op": "in", "value": "North"}, "row_filter[0].value"),
            ({"field": "district", "op": "in", "value": []}, "row_filter[0].value"),
            ({"field": "district", "op": "is_null", "value": "yes"}, "row_filter[0].value"),
            ({"field": "accessible", "op": "eq", "value": "true"}, "row_filter[0].value"),
        ],
    )
    def test_bad_conditions_are_refused(self, as_user, cast, dataset, condition, key):
        response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/",
                                                   payload(dataset, row_filter=[condition]))
        error = error_of(response, 400)
        assert key in error["fields"], error
        assert not AccessRequest.objects.exists()

    def test_unknown_operator_is_refused_by_the_input_check(self, as_user, cast, dataset):
        condition = {"field": "district", "op": "like", "value": "N%"}
        response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/",
                                                   payload(dataset, row_filter=[condition]))
        assert "row_filter" in error_of(response, 400)["fields"]

    def test_good_conditions_are_kept_in_canonical_form(self, as_user, cast, dataset):
        row_filter = [
            {"field": "district", "op": "in", "value": ["North", "East"]},
            {"field": "revenue", "op": "gte", "value": 10.5},
            {"field": "measured_on", "op": "lt", "value": "2026-01-01"},
            {"field": "recorded_at", "op": "gt", "value": "2025-01-01T00:00:00+00:00"},
            {"field": "passenger_name", "op": "contains", "value": "an"},
            {"field": "district", "op": "gte", "value": "M"},
            {"field": "location", "op": "is_null", "value": False},
        ]
        response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/", payload(dataset, row_filter=row_filter))
        assert response.status_code == 201, response.content
        stored = AccessRequest.objects.get().row_filter
        assert stored[1] == {"field": "revenue", "op": "gte", "value": "10.5"}
        assert stored[0]["value"] == ["North", "East"] and len(stored) == 7


class TestWithdraw:
    def test_requester_withdraws_while_undecided(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        response = as_user(cast["analyst_h"]).post(f"/api/v1/access-requests/{access_request.pk}/withdraw/",
                                                   {"comment": "No longer needed"})
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "withdrawn"
        assert [e["action"] for e in response.json()["timeline"]] == ["submitted", "withdrawn"]
        assert AuditEvent.objects.filter(action="access_request.withdraw", dataset_id=dataset.pk).exists()
        assert Notification.objects.filter(kind="access_request.withdrawn", recipient=cast["steward"]).exists()

    def test_others_may_not_withdraw(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        error_of(as_user(cast["steward"]).post(f"/api/v1/access-requests/{access_request.pk}/withdraw/"), 403)
        error_of(as_user(cast["nobody"]).post(f"/api/v1/access-requests/{access_request.pk}/withdraw/"), 404)

    def test_a_decided_request_cannot_be_withdrawn(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        decide(actor=cast["steward"], access_request=access_request, approve={"stop_id": None})
        error = error_of(as_user(cast["analyst_h"]).post(f"/api/v1/access-requests/{access_request.pk}/withdraw/"),
                         409)
        assert error["status"] == 409 and error["code"] == "invalid_state"


class TestVisibility:
    def test_who_sees_a_request(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        url = f"/api/v1/access-requests/{access_request.pk}/"
        for who in ("analyst_h", "steward", "auditor", "dpo", "city_auditor", "operator"):
            assert as_user(cast[who]).get(url).status_code == 200, who
        for who in ("nobody", "outsider", "analyst", "admin", "steward_h", "reviewer"):
            assert as_user(cast[who]).get(url).status_code == 404, who

    def test_department_requests_are_seen_by_that_department_s_stewards(self, as_user, cast, dataset,
                                                                         other_department):
        access_request = submit(actor=cast["steward_h"], dataset=dataset, fields=["stop_id"],
                                department=other_department)
        assert as_user(cast["steward_h"]).get(f"/api/v1/access-requests/{access_request.pk}/").status_code == 200
        assert as_user(cast["outsider"]).get(f"/api/v1/access-requests/{access_request.pk}/").status_code == 200
        assert as_user(cast["analyst_h"]).get(f"/api/v1/access-requests/{access_request.pk}/").status_code == 404

    def test_scopes(self, as_user, cast, dataset):
        mine = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        body = as_user(cast["analyst_h"]).get("/api/v1/access-requests/?scope=mine").json()
        assert [r["id"] for r in body["results"]] == [mine.pk]
        body = as_user(cast["steward"]).get("/api/v1/access-requests/?scope=to_decide").json()
        assert [r["id"] for r in body["results"]] == [mine.pk]
        assert as_user(cast["steward"]).get("/api/v1/access-requests/?scope=mine").json()["count"] == 0
        assert as_user(cast["outsider"]).get("/api/v1/access-requests/").json()["count"] == 0

    def test_list_costs_constant_queries(self, as_user, cast, dataset, django_assert_num_queries):
        from departments.selectors import principal_forget

        def make(n: int) -> None:
            for _ in range(n):
                submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "district"])

        client = as_user(cast["steward"])
        counts = []
        for n in (3, 6):  # N, then 3N in all
            make(n)
            principal_forget(cast["steward"])
            with django_assert_num_queries(3) as ctx:  # principal (2), the page with its total
                body = client.get("/api/v1/access-requests/").json()
            counts.append((len(ctx.captured_queries), body["count"]))
        assert counts == [(3, 3), (3, 9)]

    def test_form_defaults_follow_the_classification(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset,
                                fields=["district", "boardings", "revenue", "passenger_name"])
        body = as_user(cast["steward"]).get(f"/api/v1/access-requests/{access_request.pk}/form-defaults/").json()
        assert {r["name"]: r["form"] for r in body} == {
            "district": "clear", "boardings": "clear", "revenue": "masked", "passenger_name": "pseudonymised",
        }
        assert [r["name"] for r in body if r["clear_needs_reason"]] == ["passenger_name"]
        assert RequestEvent.objects.filter(request=access_request).count() == 1


class TestComments:
    def test_steward_asks_and_requester_answers(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        url = f"/api/v1/access-requests/{access_request.pk}/comments/"
        assert as_user(cast["steward"]).post(url, {"comment": "Which districts?"}).status_code == 201
        response = as_user(cast["analyst_h"]).post(url, {"comment": "North only."})
        assert response.status_code == 201, response.content
        assert [(e["action"], e["comment"]) for e in response.json()["timeline"][1:]] == [
            ("commented", "Which districts?"), ("commented", "North only.")]
        assert Notification.objects.filter(kind="access_request.commented", recipient=cast["analyst_h"]).exists()
        assert Notification.objects.filter(kind="access_request.commented", recipient=cast["steward2"]).exists()
        assert AuditEvent.objects.filter(action="access_request.comment").count() == 2
        error_of(as_user(cast["auditor"]).post(url, {"comment": "Hm"}), 403)
        error_of(as_user(cast["nobody"]).post(url, {"comment": "Hm"}), 404)


class TestRenewal:
    def test_renewal_names_the_grant_it_renews(self, as_user, cast, dataset):
        from tests.access_factories import active_grant

        grant = active_grant(cast=cast, dataset=dataset)
        response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/", payload(
            dataset, fields=["stop_id", "district"], renews=grant.pk, **period(days_from_now=80, days=200)))
        assert response.status_code == 201, response.content
        assert response.json()["renews"] == grant.pk

    def test_only_the_grantee_s_own_grants_on_the_same_dataset(self, as_user, cast, dataset, department):
        from tests.access_factories import active_grant

        grant = active_grant(cast=cast, dataset=dataset)
        other = published_dataset(department)
        error = error_of(as_user(cast["analyst_h"]).post("/api/v1/access-requests/",
                                                         payload(other, renews=grant.pk)), 400)
        assert "renews" in error["fields"]
        error_of(as_user(cast["steward_h"]).post("/api/v1/access-requests/",
                                                 payload(dataset, renews=grant.pk)), 404)


def test_all_input_errors_are_reported_at_once(as_user, cast, dataset):
    response = as_user(cast["analyst_h"]).post("/api/v1/access-requests/", payload(
        dataset, fields=["nope"], row_filter=[{"field": "stop_id", "op": "contains", "value": "1"}]))
    assert set(error_of(response, 400)["fields"]) == {"fields", "row_filter[0].op"}
