"""The dataset API: create, read, update, delete; who sees what in list, detail and search;
search ranking and facets; constant query counts; the inbox."""

from __future__ import annotations

from typing import Any

import pytest
from guardian.shortcuts import assign_perm, remove_perm

from catalog.models import Dataset
from departments.models import Notification
from departments.selectors import principal_forget
from exchange.audit.models import AuditEvent
from tests.departments.test_api import assert_error
from tests.factories import DatasetFactory, DepartmentFactory, MembershipFactory

pytestmark = pytest.mark.django_db

NEW = {
    "department": "transport", "title": "Bus stop inventory", "slug": "bus-stops",
    "description": "Every bus stop with its shelter, accessibility and position.",
    "themes": ["TRAN"], "keywords": ["bus", "stops"], "licence": "CC-BY-4.0", "update_frequency": "MONTHLY",
}


class TestCreate:
    def test_steward_creates_a_draft_with_group_rights_and_audit(self, as_user, cast, department):
        response = as_user(cast["steward"]).post("/api/v1/datasets/", NEW, format="json")
        assert response.status_code == 201, response.content
        body = response.json()
        assert (body["status"], body["version"], body["department"]["slug"]) == ("draft", 0, "transport")
        assert body["contact"]["username"] == cast["steward"].username
        assert body["allowed_actions"] == ["submit"]
        dataset = Dataset.objects.get(slug="bus-stops")
        assert cast["analyst"].has_perm("catalog.change_dataset", dataset)
        assert not cast["outsider"].has_perm("catalog.change_dataset", dataset)
        assert AuditEvent.objects.get(action="dataset.create").dataset_id == dataset.pk

    @pytest.mark.parametrize("who", ["analyst", "admin", "outsider", "reviewer", "operator", "nobody"])
    def test_others_may_not_create(self, as_user, cast, who):
        assert_error(as_user(cast[who]).post("/api/v1/datasets/", NEW, format="json"), 403)
        assert not Dataset.objects.exists()

    @pytest.mark.parametrize(
        ("change", "field"),
        [({"slug": "Bus Stops"}, "slug"), ({"themes": ["BUSES"]}, "themes"), ({"licence": "MIT"}, "licence"),
         ({"department": "nope"}, "department"), ({"contact": "ghost"}, "contact"),
         ({"description": ""}, "description"), ({"temporal_start": "2025-01-01", "temporal_end": "2024-01-01"},
                                                 "non_field_errors")],
    )
    def test_bad_input_is_a_field_error(self, as_user, cast, change, field):
        error = assert_error(as_user(cast["steward"]).post("/api/v1/datasets/", {**NEW, **change}, format="json"),
                             400)
        assert field in error["fields"], error
        assert not Dataset.objects.exists()

    def test_contact_must_belong_to_the_department(self, as_user, cast):
        error = assert_error(as_user(cast["steward"]).post(
            "/api/v1/datasets/", {**NEW, "contact": cast["outsider"].username}, format="json"), 400)
        assert "contact" in error["fields"]

    def test_duplicate_slug(self, as_user, cast, make_dataset):
        make_dataset(slug="bus-stops")
        error = assert_error(as_user(cast["steward"]).post("/api/v1/datasets/", NEW, format="json"), 400)
        assert "slug" in error["fields"]


class TestUpdateAndDelete:
    def test_steward_updates_metadata_and_it_is_audited(self, as_user, cast, make_dataset):
        dataset = make_dataset("published")
        response = as_user(cast["steward"]).patch(f"/api/v1/datasets/{dataset.pk}/",
                                                  {"title": "Permits (all districts)", "keywords": ["permits"]},
                                                  format="json")
        assert response.status_code == 200, response.content
        assert response.json()["title"] == "Permits (all districts)"
        event = AuditEvent.objects.filter(action="dataset.update").last()
        assert event.details["after"]["title"] == "Permits (all districts)"
        assert event.details["before"]["title"] == dataset.title

    def test_published_slug_is_stable(self, as_user, cast, make_dataset):
        dataset = make_dataset("published")
        error = assert_error(as_user(cast["steward"]).patch(f"/api/v1/datasets/{dataset.pk}/", {"slug": "new"}), 400)
        assert "slug" in error["fields"]

    def test_in_review_is_frozen(self, as_user, cast, make_dataset):
        dataset = make_dataset("in_review")
        error = assert_error(as_user(cast["steward"]).patch(f"/api/v1/datasets/{dataset.pk}/", {"title": "X"}), 409)
        assert error["allowed"] == ["approve", "request_changes", "withdraw"]

    @pytest.mark.parametrize(("who", "status"), [("analyst", 403), ("outsider", 403), ("reviewer", 403),
                                                 ("operator", 403), ("city_auditor", 403)])
    def test_others_may_not_update(self, as_user, cast, make_dataset, who, status):
        dataset = make_dataset("published")
        assert_error(as_user(cast[who]).patch(f"/api/v1/datasets/{dataset.pk}/", {"title": "X"}), status)
        dataset.refresh_from_db()
        assert dataset.title != "X"

    def test_delete_only_drafts(self, as_user, cast, make_dataset):
        draft, published = make_dataset(), make_dataset("published")
        client = as_user(cast["steward"])
        error = assert_error(client.delete(f"/api/v1/datasets/{published.pk}/"), 409, "not_deletable")
        assert error["allowed"] == ["deprecate"]
        assert_error(as_user(cast["analyst"]).delete(f"/api/v1/datasets/{draft.pk}/"), 403)
        assert as_user(cast["steward"]).delete(f"/api/v1/datasets/{draft.pk}/").status_code == 204
        assert not Dataset.objects.filter(pk=draft.pk).exists()
        assert AuditEvent.objects.filter(action="dataset.delete", dataset_id=draft.pk).exists()


class TestVisibility:
    """Who sees which dataset, in list, detail and search alike."""

    @pytest.fixture
    def catalogue(self, make_dataset, cast, other_department) -> dict[str, Any]:
        return {
            "draft": make_dataset(title="Draft permits"),
            "review": make_dataset("in_review", title="Review permits"),
            "public": make_dataset("published", title="Public permits"),
            "restricted": make_dataset("published", title="Restricted permits", visibility="restricted"),
            "retired": make_dataset("retired", title="Retired permits"),
            "theirs": DatasetFactory(department=other_department, steward=cast["other_steward"],
                                     title="Their draft permits"),
        }

    EXPECTED = {
        "steward": {"draft", "review", "public", "restricted", "retired"},
        "analyst": {"draft", "review", "public", "restricted", "retired"},
        "outsider": {"public", "theirs"},
        "nobody": {"public"},
        "reviewer": {"review", "public"},
        # A DPO second-approves access to restricted datasets too, so sees their metadata.
        "dpo": {"review", "public", "restricted"},
        "city_auditor": {"draft", "review", "public", "restricted", "retired", "theirs"},
        "operator": {"draft", "review", "public", "restricted", "retired", "theirs"},
    }

    @pytest.mark.parametrize("who", list(EXPECTED))
    def test_list_detail_and_search_agree(self, as_user, cast, catalogue, who):
        client = as_user(cast[who])
        expected = {catalogue[k].pk for k in self.EXPECTED[who]}
        listed = {d["id"] for d in client.get("/api/v1/datasets/").json()["results"]}
        found = {d["id"] for d in client.get("/api/v1/search/?q=permits").json()["results"]}
        assert listed == expected
        assert found == expected
        for name, dataset in catalogue.items():
            status = client.get(f"/api/v1/datasets/{dataset.pk}/").status_code
            assert status == (200 if dataset.pk in expected else 404), (name, status)

    def test_grantee_sees_restricted_through_object_permission(self, as_user, cast, catalogue, other_department):
        restricted = catalogue["restricted"]
        url = f"/api/v1/datasets/{restricted.pk}/"
        assert_error(as_user(cast["outsider"]).get(url), 404)
        assign_perm("catalog.view_dataset", other_department.group, restricted)
        assert as_user(cast["outsider"]).get(url).status_code == 200
        assert restricted.pk in {d["id"] for d in as_user(cast["outsider"]).get("/api/v1/search/?q=permits").json()[
            "results"]}
        remove_perm("catalog.view_dataset", other_department.group, restricted)
        assign_perm("catalog.view_dataset", cast["nobody"], restricted)
        assert as_user(cast["nobody"]).get(url).status_code == 200
        assert_error(as_user(cast["outsider"]).get(url), 404)
        # A grant on a draft shows nothing: only published metadata is shared.
        assign_perm("catalog.view_dataset", cast["nobody"], catalogue["theirs"])
        assert_error(as_user(cast["nobody"]).get(f"/api/v1/datasets/{catalogue['theirs'].pk}/"), 404)

    def test_anonymous_is_401(self, api, catalogue):
        assert_error(api.get("/api/v1/datasets/"), 401)
        assert_error(api.get(f"/api/v1/datasets/{catalogue['public'].pk}/"), 401)


class TestSearch:
    def test_title_match_ranks_above_description_match(self, as_user, cast, make_dataset):
        make_dataset("published", title="Road works", description="Works on roads; includes parking bays.",
                     keywords=["roads"])
        make_dataset("published", title="Parking meters", description="Every meter and its tariff zone.",
                     keywords=["tariffs"])
        make_dataset("published", title="Street trees", description="Trees along streets.", keywords=["trees"])
        body = as_user(cast["outsider"]).get("/api/v1/search/?q=parking").json()
        assert [d["title"] for d in body["results"]] == ["Parking meters", "Road works"]
        assert body["results"][0]["rank"] > body["results"][1]["rank"]

    def test_field_names_and_descriptions_are_searched(self, as_user, cast, make_dataset):
        make_dataset("published", title="Inspections", fields=[
            {"name": "premises_id", "type": "text", "sensitivity": "public", "is_key": True},
            {"name": "hygiene_score", "type": "integer", "sensitivity": "public",
             "description": "Score awarded by the inspector"},
        ])
        client = as_user(cast["outsider"])
        assert [d["title"] for d in client.get("/api/v1/search/?q=hygiene").json()["results"]] == ["Inspections"]
        assert [d["title"] for d in client.get("/api/v1/search/?q=inspector").json()["results"]] == ["Inspections"]
        assert client.get("/api/v1/search/?q=zebra").json()["results"] == []

    def test_filters_and_facets(self, as_user, cast, make_dataset, other_department):
        make_dataset("published", title="Permits A", themes=["REGI", "ECON"])
        make_dataset("published", title="Traffic counts", themes=["TRAN"], licence="CC0-1.0",
                     keywords=["traffic"], fields=[
            {"name": "counter_id", "type": "text", "sensitivity": "public", "is_key": True}])
        DatasetFactory(department=other_department, steward=cast["other_steward"], status="published",
                       title="Clinics", themes=["HEAL"], reviewer=cast["reviewer"])
        client = as_user(cast["outsider"])
        body = client.get("/api/v1/search/").json()
        assert body["count"] == 3
        facets = body["facets"]
        assert {f["value"]: f["count"] for f in facets["department"]} == {"transport": 2, "health": 1}
        assert {f["value"]: f["count"] for f in facets["theme"]} == {"REGI": 1, "ECON": 1, "TRAN": 1, "HEAL": 1}
        assert {f["value"]: f["count"] for f in facets["sensitivity"]} == {"public": 3, "internal": 2,
                                                                           "personal": 2}
        assert {f["value"]: f["count"] for f in facets["licence"]} == {"CC-BY-4.0": 2, "CC0-1.0": 1}

        def titles(query: str) -> list[str]:
            return [d["title"] for d in client.get(f"/api/v1/search/?{query}").json()["results"]]

        assert titles("department=health") == ["Clinics"]
        assert titles("theme=TRAN") == ["Traffic counts"]
        assert titles("sensitivity=personal") == ["Clinics", "Permits A"]
        assert titles("licence=CC0-1.0") == ["Traffic counts"]
        assert titles("status=published&department=transport&q=traffic") == ["Traffic counts"]
        assert titles("keyword=permits") == ["Clinics", "Permits A"]
        assert_error(client.get("/api/v1/search/?sensitivity=secret"), 400)

    def test_pagination(self, as_user, cast, make_dataset):
        for i in range(3):
            make_dataset("published", title=f"Permits {i}")
        body = as_user(cast["outsider"]).get("/api/v1/datasets/?page_size=2").json()
        assert body["count"] == 3 and len(body["results"]) == 2 and body["next"]


class TestQueryCounts:
    def build(self, n: int, cast: dict[str, Any], department: Any) -> None:
        other = DepartmentFactory()
        other_steward = MembershipFactory(department=other, role="steward").user
        for i in range(n):
            DatasetFactory(department=department, steward=cast["steward"], reviewer=cast["reviewer"],
                           status="published", title=f"Permits north {len(Dataset.objects.all())} {i}")
            DatasetFactory(department=other, steward=other_steward, reviewer=cast["reviewer"],
                           status="published", visibility="restricted", title=f"Permits south {i}",
                           slug=f"south-{other.code}-{i}")

    @pytest.mark.parametrize("url", ["/api/v1/datasets/", "/api/v1/search/?q=permits",
                                     "/api/v1/search/?sensitivity=personal&theme=REGI"])
    def test_constant_queries_for_n_and_3n_datasets(self, as_user, cast, department, url,
                                                    django_assert_num_queries):
        user = cast["outsider"]
        client = as_user(user)
        self.build(2, cast, department)
        principal_forget(user)
        # principal (memberships, city roles), the page with its total; search adds the two
        # facet queries
        expected = 3 if url == "/api/v1/datasets/" else 5
        with django_assert_num_queries(expected):
            assert client.get(url).json()["count"] == 2
        self.build(4, cast, department)
        principal_forget(user)
        with django_assert_num_queries(expected):
            assert client.get(url).json()["count"] == 6


class TestInbox:
    def test_inbox_lists_and_marks_read(self, as_user, cast, make_dataset):
        dataset = make_dataset()
        as_user(cast["steward"]).post(f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": "submit"})
        client = as_user(cast["reviewer"])
        body = client.get("/api/v1/inbox/").json()
        assert body["count"] == 1 and body["unread"] == 1
        item = body["results"][0]
        assert item["kind"] == "dataset.submitted" and item["action_required"]
        assert item["link"] == f"/review/{dataset.pk}/"  # where the reviewer acts
        assert client.post("/api/v1/inbox/read/", {"ids": [item["id"]]}, format="json").json() == {"marked": 1}
        assert client.get("/api/v1/inbox/?unread=true").json()["count"] == 0
        # Nobody marks another person's notifications.
        other = Notification.objects.filter(recipient=cast["steward_reviewer"]).get()
        assert client.post("/api/v1/inbox/read/", {"ids": [other.pk]}, format="json").json() == {"marked": 0}
        assert as_user(cast["steward_reviewer"]).post("/api/v1/inbox/read/", {}, format="json").json() == {
            "marked": 1}


def test_catalogue_endpoints_are_in_the_openapi_schema(api):
    paths = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]
    for expected in ("/api/v1/datasets/", "/api/v1/datasets/{dataset_id}/", "/api/v1/datasets/{dataset_id}/schema/",
                     "/api/v1/datasets/{dataset_id}/schema/versions/", "/api/v1/datasets/{dataset_id}/transitions/",
                     "/api/v1/datasets/{dataset_id}/timeline/", "/api/v1/search/", "/api/v1/review-queue/",
                     "/api/v1/inbox/", "/api/v1/inbox/read/"):
        assert expected in paths, expected
    assert set(paths["/api/v1/datasets/{dataset_id}/"]) == {"get", "patch", "delete"}
