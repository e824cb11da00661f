"""The data-request API: every endpoint, its errors in the one shape, 404 for what one may not
see, input limits, and a constant number of queries per list page."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from drf_spectacular.generators import SchemaGenerator

from departments.models import Notification
from exchange.demand.models import DataRequest, DataRequestSupporter
from tests.access_factories import published_dataset
from tests.exchange.demand.conftest import new_request

pytestmark = pytest.mark.django_db

BASE = "/api/v1/data-requests/"


def error_of(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    return response.json()["error"]


def payload(**overrides: Any) -> dict[str, Any]:
    return {"title": "Noise near schools", "description": "Hourly noise levels at each school.",
            "purpose": "Health study", "fields": [{"name": "school_id", "description": "Register number"},
                                                  {"name": "noise_db"}], **overrides}


class TestCreate:
    def test_an_analyst_files_a_request(self, as_user, cast):
        response = as_user(cast["analyst_h"]).post(BASE, payload(), format="json")
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["status"] == "open" and body["department"] == "health"
        assert body["fields"] == [{"name": "school_id", "description": "Register number"},
                                  {"name": "noise_db", "description": ""}]
        assert body["my_steps"] == ["withdraw"] and body["timeline"][0]["action"] == "submit"
        assert Notification.objects.filter(kind="data_request.submitted").exists()

    @pytest.mark.parametrize(("overrides", "field"), [
        ({"fields": []}, "fields"),
        ({"fields": [{"name": f"f{i}"} for i in range(101)]}, "fields"),
        ({"fields": [{"name": "a"}, {"name": "a"}]}, "fields[1].name"),
        ({"fields": [{"name": "x" * 64}]}, "fields"),
        ({"title": "t" * 201}, "title"),
        ({"purpose": "p" * 2001}, "purpose"),
        ({"description": ""}, "description"),
        ({"department": "no-such"}, "department"),
        ({"department": "transport"}, "department"),
    ])
    def test_bad_input_is_a_400_with_the_field_and_nothing_is_written(self, as_user, cast, overrides, field):
        error = error_of(as_user(cast["analyst_h"]).post(BASE, payload(**overrides), format="json"), 400)
        assert field in error["fields"], error
        assert not DataRequest.objects.exists()

    @pytest.mark.parametrize("who", ["auditor", "outsider", "nobody"])
    def test_only_analysts_and_stewards(self, as_user, cast, who):
        error_of(as_user(cast[who]).post(BASE, payload(), format="json"), 403)

    def test_anonymous_is_401(self, api):
        error_of(api.get(BASE), 401)
        error_of(api.post(BASE, payload(), format="json"), 401)


class TestListAndDetail:
    def test_list_filters_and_pages(self, as_user, cast, make_request):
        make_request("routed")
        for i in range(3):
            new_request(cast["steward_h"], title=f"Other {i}")
        make_request("withdrawn")
        client = as_user(cast["nobody"])
        body = client.get(BASE, {"page_size": 2}).json()
        assert body["count"] == 4 and len(body["results"]) == 2 and body["next"]
        assert [r["status"] for r in client.get(BASE, {"status": "routed"}).json()["results"]] == ["routed"]
        assert client.get(BASE, {"department": "transport"}).json()["count"] == 1
        assert client.get(BASE, {"q": "Other 1"}).json()["count"] == 1
        mine = as_user(cast["analyst_h"]).get(BASE, {"scope": "mine"}).json()
        assert mine["count"] == 2  # their withdrawn one too
        error = error_of(client.get(BASE, {"status": "nonsense"}), 400)
        assert "status" in error["fields"]
        error_of(client.get(BASE, {"page_size": 0}), 400)

    def test_more_requests_cost_no_more_queries(self, as_user, cast, make_request, django_assert_num_queries):
        make_request("routed")
        client = as_user(cast["nobody"])
        client.get(BASE)
        with CaptureQueriesContext(connection) as one:
            client.get(BASE)
        for i in range(5):
            new_request(cast["steward_h"], title=f"Other {i}")
        with django_assert_num_queries(len(one)):
            assert client.get(BASE).json()["count"] == 6

    def test_a_closed_request_is_404_to_others_like_one_that_does_not_exist(self, as_user, cast, make_request):
        withdrawn = make_request("withdrawn")
        assert as_user(cast["analyst_h"]).get(f"{BASE}{withdrawn.pk}/").status_code == 200
        hidden = error_of(as_user(cast["steward_h"]).get(f"{BASE}{withdrawn.pk}/"), 404)
        missing = error_of(as_user(cast["steward_h"]).get(f"{BASE}987654/"), 404)
        assert hidden == missing
        error_of(as_user(cast["steward_h"]).post(f"{BASE}{withdrawn.pk}/join/", {"purpose": "x"}), 404)
        assert withdrawn.pk not in [r["id"] for r in as_user(cast["steward_h"]).get(BASE).json()["results"]]


class TestSteps:
    def test_the_whole_way_through_the_api(self, as_user, cast, department):
        created = as_user(cast["analyst_h"]).post(BASE, payload(
            fields=[{"name": "stop_id"}, {"name": "accessible"}, {"name": "ramp_width"}]), format="json").json()
        url = f"{BASE}{created['id']}/"
        joined = as_user(cast["steward_h"]).post(f"{url}join/", {"purpose": "Ramps budget"}, format="json")
        assert joined.status_code == 201 and joined.json()["supporters"][0]["user"] == cast["steward_h"].username
        routed = as_user(cast["reviewer"]).post(f"{url}route/", {"department": "transport", "comment": "Yours"},
                                                format="json")
        assert routed.status_code == 200 and routed.json()["routed_department"] == "transport"
        accepted = as_user(cast["steward"]).post(f"{url}accept/", {}, format="json")
        assert accepted.json()["status"] == "accepted"
        dataset = published_dataset(department)
        fulfilled = as_user(cast["steward"]).post(f"{url}fulfil/", {"dataset": dataset.pk}, format="json")
        assert fulfilled.status_code == 200, fulfilled.content
        assert fulfilled.json()["dataset"]["id"] == dataset.pk
        assert fulfilled.json()["access_request_url"] is None  # the steward neither asked nor joined
        mine = as_user(cast["analyst_h"]).get(url).json()
        assert mine["access_request_url"] == (f"/datasets/{dataset.pk}/request-access/?fields=stop_id"
                                              "&fields=accessible&purpose=Health+study")
        theirs = as_user(cast["steward_h"]).get(url).json()
        assert theirs["access_request_url"].endswith("purpose=Ramps+budget")
        left = as_user(cast["steward_h"]).post(f"{url}leave/", format="json")
        assert left.status_code == 200 and left.json()["supporters"] == []

    def test_a_step_the_state_does_not_allow_is_a_409_naming_the_allowed_ones(self, as_user, cast, make_request):
        data_request = make_request("fulfilled")
        error = error_of(as_user(cast["analyst_h"]).post(f"{BASE}{data_request.pk}/withdraw/", {}, format="json"),
                         409)
        assert error["code"] == "invalid_state"
        assert error["current_status"] == "fulfilled" and error["allowed"] == ["leave"]

    def test_four_eyes_is_a_403(self, as_user, cast, make_request):
        data_request = make_request("routed", actor=cast["steward"])
        error = error_of(as_user(cast["steward"]).post(f"{BASE}{data_request.pk}/accept/", {}, format="json"), 403)
        assert error["code"] == "four_eyes"

    def test_decline_withdraw_and_duplicate(self, as_user, cast, make_request):
        routed = make_request("routed")
        error = error_of(as_user(cast["steward"]).post(f"{BASE}{routed.pk}/decline/", {}, format="json"), 400)
        assert "reason" in error["fields"]
        declined = as_user(cast["steward"]).post(f"{BASE}{routed.pk}/decline/", {"reason": "No data"}, format="json")
        assert declined.json()["status"] == "declined" and declined.json()["decline_reason"] == "No data"

        original, duplicate = make_request("open"), new_request(cast["steward_h"])
        error = error_of(as_user(cast["reviewer"]).post(f"{BASE}{duplicate.pk}/duplicate/",
                                                        {"duplicate_of": 987654}, format="json"), 400)
        assert error["fields"] == {"duplicate_of": ["No such data request."]}
        closed = as_user(cast["reviewer"]).post(f"{BASE}{duplicate.pk}/duplicate/", {"duplicate_of": original.pk},
                                                format="json")
        assert closed.json()["status"] == "duplicate" and closed.json()["duplicate_of"] == original.pk

        withdrawn = as_user(cast["analyst_h"]).post(f"{BASE}{original.pk}/withdraw/", {"comment": "Found it"},
                                                    format="json")
        assert withdrawn.json()["status"] == "withdrawn"
        error_of(as_user(cast["steward_h"]).post(f"{BASE}{original.pk}/withdraw/", {}, format="json"), 404)

    def test_fulfil_with_a_dataset_one_may_not_see_or_of_another_department(self, as_user, cast, make_request,
                                                                           other_department):
        data_request = make_request("accepted")
        url = f"{BASE}{data_request.pk}/fulfil/"
        error = error_of(as_user(cast["steward"]).post(url, {"dataset": 987654}, format="json"), 400)
        assert error["fields"] == {"dataset": ["No such dataset."]}
        elsewhere = published_dataset(other_department)
        error = error_of(as_user(cast["steward"]).post(url, {"dataset": elsewhere.pk}, format="json"), 400)
        assert "dataset" in error["fields"]
        error_of(as_user(cast["steward"]).post(url, {"dataset": 0}, format="json"), 400)

    def test_route_to_an_unknown_department(self, as_user, cast, make_request):
        data_request = make_request("open")
        error = error_of(as_user(cast["reviewer"]).post(f"{BASE}{data_request.pk}/route/", {"department": "nope"},
                                                        format="json"), 400)
        assert "department" in error["fields"]
        error_of(as_user(cast["analyst"]).post(f"{BASE}{data_request.pk}/route/", {"department": "transport"},
                                               format="json"), 403)

    def test_join_twice_is_a_409(self, as_user, cast, make_request):
        data_request = make_request("open")
        client = as_user(cast["steward_h"])
        assert client.post(f"{BASE}{data_request.pk}/join/", {"purpose": "x"}, format="json").status_code == 201
        error_of(client.post(f"{BASE}{data_request.pk}/join/", {"purpose": "x"}, format="json"), 409)
        assert DataRequestSupporter.objects.count() == 1


def test_the_schema_documents_every_operation_with_its_errors():
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    for suffix in ("route", "duplicate", "accept", "decline", "fulfil", "withdraw", "join", "leave"):
        operation = paths[f"/api/v1/data-requests/{{data_request_id}}/{suffix}/"]["post"]
        assert {"400", "401", "403", "404", "409"} <= set(operation["responses"])
    assert {"get", "post"} <= set(paths["/api/v1/data-requests/"])
