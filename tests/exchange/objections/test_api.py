"""The objection API: every endpoint, its errors in the one shape, 404 for outsiders, four
eyes, fields outside the view, values as each reader's own view shows them, and a constant
number of queries per list page."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from exchange.audit.models import AuditEvent
from exchange.objections import services
from exchange.objections.models import Objection
from tests.exchange.objections.conftest import raise_objection

pytestmark = pytest.mark.django_db

BASE = "/api/v1/objections/"


def error_of(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    return response.json()["error"]


def payload(ds: Any, **overrides: Any) -> dict[str, Any]:
    return {"dataset": ds.pk, "kind": "wrong_value", "comment": "District is wrong.", "fields": ["district"],
            "record_keys": ["2"], **overrides}


class TestCreate:
    def test_an_analyst_of_a_reading_department_objects(self, as_user, cast, dataset):
        response = as_user(cast["analyst_h"]).post(BASE, payload(dataset), format="json")
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["status"] == "open" and body["department"] == "health" and body["escalated"] is False
        assert body["my_steps"] == ["withdraw"] and body["timeline"][0]["action"] == "create"

    def test_the_objector_sees_the_record_as_their_view_shows_it(self, as_user, cast, dataset):
        body = as_user(cast["analyst_h"]).post(BASE, payload(dataset, fields=["phone"]), format="json").json()
        records = body["records"]
        assert records["columns"] == ["permit_id", "phone", "district"]
        assert records["rows"][0][0] == 2 and records["rows"][0][1] != "+49 30 5550002"
        assert records["rows"][0][1].endswith("0002") and "secret_note" not in str(body)

    def test_the_steward_sees_the_same_record_in_clear(self, as_user, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset, fields=["phone"])
        body = as_user(cast["steward"]).get(f"{BASE}{objection.pk}/").json()
        assert body["records"]["rows"][0][:2] == [2, "+49 30 5550002"]
        assert "NOTE-SECRET-2" in str(body["records"])
        assert body["my_steps"] == ["accept", "reject"]
        read = AuditEvent.objects.filter(action="objection.records_read").latest("id")
        assert read.actor_id == cast["steward"].pk and read.row_count == 1 and read.dataset_id == dataset.pk

    @pytest.mark.parametrize("name", ["secret_note", "no_such_field"])
    def test_a_field_outside_the_view_is_unknown(self, as_user, cast, dataset, name):
        error = error_of(as_user(cast["analyst_h"]).post(BASE, payload(dataset, fields=[name]), format="json"), 400)
        assert error["fields"] == {"fields": [f"Unknown field: {name}."]}
        assert not Objection.objects.exists()

    def test_a_dataset_one_may_not_know_is_a_400_on_its_field(self, as_user, cast, dataset):
        error = error_of(as_user(cast["analyst_h"]).post(BASE, payload(dataset, dataset=10**9), format="json"), 400)
        assert error["fields"] == {"dataset": ["No such dataset."]}

    @pytest.mark.parametrize("who", ["outsider", "steward"])
    def test_who_does_not_read_it_may_not_object(self, as_user, cast, dataset, who):
        error_of(as_user(cast[who]).post(BASE, payload(dataset), format="json"), 403)

    @pytest.mark.parametrize(("overrides", "field"), [
        ({"kind": "bad"}, "kind"), ({"comment": ""}, "comment"), ({"comment": "c" * 5001}, "comment"),
        ({"record_keys": ["k"] * 51}, "record_keys"), ({"record_keys": ["1,2"]}, "record_keys"),
        ({"department": "transport"}, "department"),
    ])
    def test_bad_input_is_a_400_with_the_field(self, as_user, cast, dataset, overrides, field):
        error = error_of(as_user(cast["analyst_h"]).post(BASE, payload(dataset, **overrides), format="json"), 400)
        assert field in error["fields"], error


class TestVisibility:
    @pytest.mark.parametrize("who", ["outsider", "nobody", "dpo"])
    def test_outsiders_get_404_and_an_empty_list(self, as_user, cast, dataset, who):
        objection = raise_objection(cast["analyst_h"], dataset)
        client = as_user(cast[who])
        error_of(client.get(f"{BASE}{objection.pk}/"), 404)
        error_of(client.post(f"{BASE}{objection.pk}/accept/", {"note": "x"}, format="json"), 404)
        assert client.get(BASE).json()["count"] == 0

    @pytest.mark.parametrize("who", ["analyst_h", "steward_h", "steward", "analyst", "auditor", "reviewer",
                                     "city_auditor"])
    def test_both_departments_and_the_reviewers_see_it(self, as_user, cast, dataset, who):
        objection = raise_objection(cast["analyst_h"], dataset)
        assert as_user(cast[who]).get(f"{BASE}{objection.pk}/").status_code == 200

    def test_a_reader_without_the_key_sees_no_values(self, as_user, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        body = as_user(cast["reviewer"]).get(f"{BASE}{objection.pk}/").json()
        assert body["records"] is None

    def test_scopes_and_filters(self, as_user, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        assert as_user(cast["analyst_h"]).get(BASE, {"scope": "raised"}).json()["count"] == 1
        assert as_user(cast["analyst_h"]).get(BASE, {"scope": "received"}).json()["count"] == 0
        assert as_user(cast["steward"]).get(BASE, {"scope": "received", "status": "open"}).json()["count"] == 1
        assert as_user(cast["steward"]).get(BASE, {"dataset": dataset.pk, "escalated": "true"}).json()["count"] == 0
        services.objection_escalate_overdue(now=objection.due_at)
        assert as_user(cast["reviewer"]).get(BASE, {"escalated": "true"}).json()["count"] == 1

    def test_the_list_costs_the_same_for_many(self, as_user, cast, dataset, django_assert_max_num_queries):
        raise_objection(cast["analyst_h"], dataset)
        client = as_user(cast["steward"])
        client.get(BASE)
        for _ in range(4):
            raise_objection(cast["analyst_h"], dataset, kind="other", record_keys=[])
        with django_assert_max_num_queries(4):
            assert client.get(BASE).json()["count"] == 5


class TestSteps:
    def test_accept_reject_withdraw(self, as_user, cast, dataset):
        first = raise_objection(cast["analyst_h"], dataset)
        body = as_user(cast["steward"]).post(f"{BASE}{first.pk}/accept/", {"note": "Fixed."}, format="json").json()
        assert body["status"] == "accepted" and body["answer"] == "Fixed." and body["answered_by"]
        second = raise_objection(cast["analyst_h"], dataset)
        error_of(as_user(cast["steward"]).post(f"{BASE}{second.pk}/reject/", {}, format="json"), 400)
        response = as_user(cast["steward2"]).post(f"{BASE}{second.pk}/reject/", {"reason": "Right."}, format="json")
        assert response.json()["status"] == "rejected"
        third = raise_objection(cast["analyst_h"], dataset)
        error_of(as_user(cast["steward"]).post(f"{BASE}{third.pk}/withdraw/", {}, format="json"), 403)
        assert as_user(cast["analyst_h"]).post(f"{BASE}{third.pk}/withdraw/", {}, format="json").json()[
            "status"] == "withdrawn"
        error = error_of(as_user(cast["steward"]).post(f"{BASE}{third.pk}/accept/", {"note": "x"}, format="json"), 409)
        assert error["allowed"] == []

    def test_the_objector_cannot_answer_and_reviewers_only_once_escalated(self, as_user, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        error_of(as_user(cast["analyst_h"]).post(f"{BASE}{objection.pk}/accept/", {"note": "x"}, format="json"), 403)
        error_of(as_user(cast["reviewer"]).post(f"{BASE}{objection.pk}/accept/", {"note": "x"}, format="json"), 403)
        services.objection_escalate_overdue(now=objection.due_at + dt.timedelta(seconds=1))
        body = as_user(cast["reviewer"]).get(f"{BASE}{objection.pk}/").json()
        assert body["escalated"] and body["my_steps"] == ["accept", "reject"]
        response = as_user(cast["reviewer"]).post(f"{BASE}{objection.pk}/reject/", {"reason": "Right."},
                                                  format="json")
        assert response.json()["status"] == "rejected"


def test_colleagues_do_not_learn_of_a_restricted_dataset_through_a_personal_grant(as_user, cast, department):
    from tests.access_factories import active_grant
    from tests.factories import MembershipFactory
    from tests.records_support import load_rows
    from tests.records_support import published_dataset as dataset_with_store

    restricted = dataset_with_store(department, slug="inspections", visibility="restricted")
    load_rows(restricted, [{"permit_id": 7, "district": "East"}])
    active_grant(cast=cast, dataset=restricted, fields=["permit_id", "district"], grantee="analyst_h")
    objection = raise_objection(cast["analyst_h"], restricted, record_keys=["7"])
    colleague = MembershipFactory(department=cast["analyst_h"].memberships.get().department, role="analyst").user
    assert as_user(cast["analyst_h"]).get(f"{BASE}{objection.pk}/").status_code == 200
    assert as_user(colleague).get(f"{BASE}{objection.pk}/").status_code == 404
    assert as_user(colleague).get(BASE).json()["count"] == 0
    assert as_user(cast["steward"]).get(f"{BASE}{objection.pk}/").status_code == 200


def test_reviewers_learn_of_a_restricted_dataset_only_when_its_objection_is_escalated(as_user, cast, department):
    """Reviewers oversee the objections to what they may see; an objection to a restricted
    dataset reaches them when it is overdue, since they must answer it then."""
    from tests.access_factories import active_grant
    from tests.records_support import load_rows
    from tests.records_support import published_dataset as dataset_with_store

    restricted = dataset_with_store(department, slug="inspections", visibility="restricted")
    load_rows(restricted, [{"permit_id": 7, "district": "East"}])
    active_grant(cast=cast, dataset=restricted, fields=["permit_id", "district"], grantee="analyst_h")
    objection = raise_objection(cast["analyst_h"], restricted, record_keys=["7"])
    reviewer = as_user(cast["reviewer"])
    assert reviewer.get(f"{BASE}{objection.pk}/").status_code == 404
    assert reviewer.get(BASE).json()["count"] == 0
    services.objection_escalate_overdue(now=objection.due_at + dt.timedelta(seconds=1))
    body = reviewer.get(f"{BASE}{objection.pk}/").json()
    assert body["escalated"] and body["my_steps"] == ["accept", "reject"]
    assert reviewer.get(BASE).json()["count"] == 1
    # They read none of its values: the named keys are counted, not shown.
    assert (body["record_keys"], body["record_count"], body["records"]) == ([], 1, None)
    assert reviewer.get(BASE).json()["results"][0]["record_keys"] == []
    owner_view = as_user(cast["steward"]).get(f"{BASE}{objection.pk}/").json()
    assert owner_view["record_keys"] == ["7"] and owner_view["record_count"] == 1
    assert as_user(cast["analyst_h"]).get(BASE).json()["results"][0]["record_keys"] == ["7"]
