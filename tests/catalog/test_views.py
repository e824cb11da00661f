"""The catalogue pages, through the Django test client: who sees what, the steward's editors,
the workflow buttons and the review queue. Business rules are the services' (tested in
test_workflow/test_schema); these tests check that the pages call them and show their answers."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from catalog.models import Dataset, DatasetStatus, SchemaVersion
from tests.factories import PERMIT_FIELDS

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_for(client: Client):  # type: ignore[no-untyped-def]
    def sign_in(user: Any) -> Client:
        client.force_login(user)
        return client

    return sign_in


def _rows(fields: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = {}
    for i, f in enumerate(fields):
        data.update({f"f-{i}-position": str(i + 1), f"f-{i}-name": f["name"], f"f-{i}-type": f["type"],
                     f"f-{i}-sensitivity": f.get("sensitivity", ""), f"f-{i}-unit": f.get("unit", ""),
                     f"f-{i}-description": f.get("description", "")})
        if f.get("is_key"):
            data[f"f-{i}-is_key"] = "1"
        elif f.get("nullable", True):
            data[f"f-{i}-nullable"] = "1"
    return data


METADATA = {
    "department": "transport", "title": "Bus stops", "slug": "bus-stops",
    "description": "Every bus stop of the city.", "themes": ["TRAN"], "keywords": "bus, stops",
    "licence": "CC-BY-4.0", "update_frequency": "MONTHLY", "spatial": "whole city", "visibility": "city",
}


class TestCatalogue:
    def test_lists_what_the_user_may_see_with_facets(self, client_for, cast, make_dataset):
        public = make_dataset("published", title="Bus stops")
        draft = make_dataset("draft", title="Secret draft")
        restricted = make_dataset("published", title="Restricted permits", visibility="restricted")
        page = client_for(cast["outsider"]).get("/catalogue/")
        assert page.status_code == 200
        body = page.content.decode()
        assert public.title in body and draft.title not in body and restricted.title not in body
        assert 'name="theme"' in body and "Regions and cities" in body
        own = client_for(cast["steward"]).get("/catalogue/").content.decode()
        assert draft.title in own and restricted.title in own and "New dataset" in own

    def test_filters_and_search(self, client_for, cast, make_dataset):
        make_dataset("published", title="Tram lines", themes=["TRAN"])
        make_dataset("published", title="Parking zones", themes=["REGI"])
        client = client_for(cast["analyst"])
        body = client.get("/catalogue/", {"theme": "TRAN"}).content.decode()
        assert "Tram lines" in body and "Parking zones" not in body
        body = client.get("/catalogue/", {"q": "parking", "theme": "not-a-theme"}).content.decode()
        assert "Parking zones" in body and "Tram lines" not in body

    def test_htmx_gets_only_the_results(self, client_for, cast, make_dataset):
        make_dataset("published", title="Bus stops")
        response = client_for(cast["analyst"]).get("/catalogue/", HTTP_HX_REQUEST="true")
        body = response.content.decode()
        assert 'id="catalogue-results"' in body and "<html" not in body and "Bus stops" in body
        assert "HX-Request" in response["Vary"]
        assert 'id="results-status"' in body and "1 dataset found" in body
        restore = client_for(cast["analyst"]).get("/catalogue/", HTTP_HX_REQUEST="true",
                                                  HTTP_HX_HISTORY_RESTORE_REQUEST="true")
        assert "<html" in restore.content.decode()

    def test_paginates(self, client_for, cast, make_dataset):
        for i in range(22):
            make_dataset("draft", title=f"Dataset {i:02d}", fields=None)
        client = client_for(cast["steward"])
        assert "Dataset 19" in client.get("/catalogue/").content.decode()
        second = client.get("/catalogue/", {"page": 2}).content.decode()
        assert "Dataset 21" in second and "Dataset 00" not in second and "Page 2 of 2" in second

    def test_costs_constant_queries(self, client_for, cast, make_dataset, django_assert_num_queries):
        """N and 3N datasets on the page (with keywords, fields and facets) cost the same."""
        client = client_for(cast["analyst"])
        for _ in range(2):
            make_dataset("published")
        with CaptureQueriesContext(connection) as first:
            assert client.get("/catalogue/").status_code == 200
        for _ in range(4):
            make_dataset("published")
        with django_assert_num_queries(len(first.captured_queries)):
            assert client.get("/catalogue/").status_code == 200

    def test_needs_sign_in(self, client):
        assert client.get("/catalogue/").status_code == 302


class TestDatasetPage:
    def test_shows_metadata_fields_timeline_and_links(self, client_for, cast, make_dataset):
        dataset = make_dataset("published")
        body = client_for(cast["outsider"]).get(f"/datasets/{dataset.pk}/").content.decode()
        assert dataset.title in body and "Published" in body
        assert '<span class="badge personal">' in body and "applicant_name" in body and "key" in body
        for link in (f"/datasets/{dataset.pk}/records/", f"/datasets/{dataset.pk}.ttl",
                     f"/datasets/{dataset.pk}.jsonld", f"/api/v1/datasets/{dataset.pk}/"):
            assert f'href="{link}"' in body
        assert 'value="approve"' not in body and "Edit schema" not in body  # not theirs to change
        assert "Submit" in body and cast["steward"].username in body  # the timeline

    @pytest.mark.parametrize("status,visibility", [("draft", "city"), ("in_review", "city"),
                                                   ("published", "restricted")])
    def test_outsiders_get_404_for_what_they_may_not_see(self, client_for, cast, make_dataset, status, visibility):
        dataset = make_dataset(status, visibility=visibility)
        response = client_for(cast["outsider"]).get(f"/datasets/{dataset.pk}/")
        assert response.status_code == 404 and "Not found" in response.content.decode()
        assert client_for(cast["analyst"]).get(f"/datasets/{dataset.pk}/").status_code == 200

    def test_steward_sees_only_the_allowed_steps(self, client_for, cast, make_dataset):
        dataset = make_dataset("published")
        body = client_for(cast["steward"]).get(f"/datasets/{dataset.pk}/").content.decode()
        assert 'value="deprecate"' in body
        assert 'value="retire"' not in body and 'value="submit"' not in body
        assert "Edit schema" in body and "Edit metadata" in body

    def test_an_illegal_step_shows_the_409_message(self, client_for, cast, make_dataset):
        dataset = make_dataset("published")
        response = client_for(cast["steward"]).post(f"/datasets/{dataset.pk}/transition/", {"action": "retire"})
        assert response.status_code == 409
        body = response.content.decode()
        assert "not possible while the dataset is published" in body and "Possible now: Deprecate" in body
        dataset.refresh_from_db()
        assert dataset.status == DatasetStatus.PUBLISHED


class TestStewardEditors:
    def test_create_then_schema_error_next_to_the_field_then_submit(self, client_for, cast):
        client = client_for(cast["steward"])
        assert client.get("/datasets/new/").status_code == 200
        response = client.post("/datasets/new/", METADATA)
        dataset = Dataset.objects.get(slug="bus-stops")
        assert response.status_code == 302 and response["Location"] == f"/datasets/{dataset.pk}/schema/"
        assert dataset.keywords == ["bus", "stops"] and dataset.themes == ["TRAN"]
        assert dataset.contact == cast["steward"]

        fields: list[dict[str, Any]] = [
            {"name": "stop_id", "type": "text", "sensitivity": "public", "is_key": True},
            {"name": "Stop Name", "type": "text", "sensitivity": "public"},
            {"name": "operator", "type": "text", "sensitivity": "internal"},
        ]
        response = client.post(f"/datasets/{dataset.pk}/schema/", _rows(fields))
        assert response.status_code == 400
        body = response.content.decode()
        # The error sits in the row of the second field, right after its name input.
        row = body[body.index('id="row-1"'):body.index('id="row-2"')]
        assert 'id="f-1-name-error"' in row and "lowercase letters" in row and 'aria-invalid="true"' in row
        assert 'id="f-0-name-error"' not in body
        assert not SchemaVersion.objects.filter(dataset=dataset).exists()

        fields[1]["name"] = "stop_name"
        response = client.post(f"/datasets/{dataset.pk}/schema/", _rows(fields))
        assert response.status_code == 302
        assert [f.name for f in SchemaVersion.objects.get(dataset=dataset).fields.order_by("position")] == [
            "stop_id", "stop_name", "operator"]

        response = client.post(f"/datasets/{dataset.pk}/transition/", {"action": "submit", "comment": "Ready."})
        assert response.status_code == 302
        dataset.refresh_from_db()
        assert dataset.status == DatasetStatus.IN_REVIEW
        page = client.get(f"/datasets/{dataset.pk}/").content.decode()
        assert "was submitted for review" in page and "Ready." in page

    def test_row_tools_reorder_add_and_remove_without_saving(self, client_for, cast, make_dataset):
        dataset = make_dataset("draft")
        client = client_for(cast["steward"])
        data = _rows(PERMIT_FIELDS[:3])
        body = client.post(f"/datasets/{dataset.pk}/schema/", {**data, "op": "down:0"},
                           HTTP_HX_REQUEST="true").content.decode()
        assert body.index('value="applicant_name"') < body.index('value="permit_id"')
        body = client.post(f"/datasets/{dataset.pk}/schema/", {**data, "op": "add"}).content.decode()
        assert 'id="f-3-name"' in body
        body = client.post(f"/datasets/{dataset.pk}/schema/", {**data, "op": "remove:1"}).content.decode()
        assert 'value="applicant_name"' not in body and 'id="f-2-name"' not in body
        # The position inputs reorder on save.
        data["f-0-position"] = "9"
        assert client.post(f"/datasets/{dataset.pk}/schema/", data).status_code == 302
        version = SchemaVersion.objects.get(dataset=dataset)
        assert [f.name for f in version.fields.order_by("position")] == ["applicant_name", "parcel_id", "permit_id"]

    def test_key_and_list_errors_are_shown(self, client_for, cast, make_dataset):
        dataset = make_dataset("draft")
        fields = [{"name": "a", "type": "text", "sensitivity": "public"}]
        body = client_for(cast["steward"]).post(f"/datasets/{dataset.pk}/schema/", _rows(fields)).content.decode()
        assert 'id="schema-errors"' in body and "Mark the key" in body

    def test_edit_metadata_shows_service_errors_next_to_the_field(self, client_for, cast, make_dataset):
        dataset = make_dataset("published")
        client = client_for(cast["steward"])
        page = client.get(f"/datasets/{dataset.pk}/edit/")
        assert page.status_code == 200 and f'value="{dataset.slug}"' in page.content.decode()
        data = {**METADATA, "slug": "a-new-slug", "title": "New title"}
        response = client.post(f"/datasets/{dataset.pk}/edit/", data)
        assert response.status_code == 400
        body = response.content.decode()
        slug_part = body[body.index('for="id_slug"'):body.index('for="id_description"')]
        assert "stable URLs" in slug_part
        dataset.refresh_from_db()
        assert dataset.title != "New title"
        response = client.post(f"/datasets/{dataset.pk}/edit/", {**data, "slug": dataset.slug})
        assert response.status_code == 302
        dataset.refresh_from_db()
        assert dataset.title == "New title" and dataset.update_frequency == "MONTHLY"

    @pytest.mark.parametrize("who", ["analyst", "outsider", "nobody"])
    def test_only_stewards_edit(self, client_for, cast, make_dataset, who):
        dataset = make_dataset("published")
        client = client_for(cast[who])
        assert client.get(f"/datasets/{dataset.pk}/edit/").status_code == 403
        assert client.get(f"/datasets/{dataset.pk}/schema/").status_code == 403
        assert client.post(f"/datasets/{dataset.pk}/transition/", {"action": "deprecate"}).status_code == 403
        assert client.get("/datasets/new/").status_code == 403

    def test_steward_of_another_department_gets_404_for_a_draft(self, client_for, cast, make_dataset):
        dataset = make_dataset("draft")
        assert client_for(cast["other_steward"]).get(f"/datasets/{dataset.pk}/schema/").status_code == 404


class TestReview:
    def test_queue_and_approval(self, client_for, cast, make_dataset):
        dataset = make_dataset("in_review")
        client = client_for(cast["reviewer"])
        assert "Review" in client.get("/").content.decode()
        queue = client.get("/review/").content.decode()
        assert dataset.title in queue and "New dataset" in queue and cast["steward"].username in queue
        page = client.get(f"/review/{dataset.pk}/").content.decode()
        assert 'value="approve"' in page and 'value="request_changes"' in page and "applicant_name" in page
        response = client.post(f"/datasets/{dataset.pk}/transition/",
                                {"action": "approve", "comment": "Fine.", "from": "review"})
        assert response.status_code == 302 and response["Location"] == "/review/"
        dataset.refresh_from_db()
        assert dataset.status == DatasetStatus.PUBLISHED
        queue = client.get("/review/").content.decode()
        assert "was approved" in queue and dataset.title not in queue[queue.index('id="review-queue"'):]

    def test_request_changes_needs_a_comment(self, client_for, cast, make_dataset):
        dataset = make_dataset("in_review")
        response = client_for(cast["reviewer"]).post(f"/datasets/{dataset.pk}/transition/",
                                                     {"action": "request_changes", "from": "review"})
        assert response.status_code == 400
        assert 'id="comment-error"' in response.content.decode()

    def test_the_submitter_cannot_approve(self, client_for, cast, make_dataset):
        dataset = make_dataset("in_review", steward=cast["steward_reviewer"])
        client = client_for(cast["steward_reviewer"])
        assert "(you: another reviewer decides)" in client.get("/review/").content.decode()
        response = client.post(f"/datasets/{dataset.pk}/transition/", {"action": "approve", "from": "review"})
        assert response.status_code == 403
        assert "Four eyes" in response.content.decode()
        dataset.refresh_from_db()
        assert dataset.status == DatasetStatus.IN_REVIEW

    def test_a_new_schema_version_shows_its_diff(self, client_for, cast, make_dataset):
        from catalog import services

        dataset = make_dataset("published")
        fields = [dict(f) for f in PERMIT_FIELDS if f["name"] != "parcel_id"]
        fields[1]["sensitivity"] = "confidential"
        fields.append({"name": "decided_on", "type": "date", "sensitivity": "public"})
        services.dataset_schema_set(actor=cast["steward"], dataset=dataset, fields=fields)
        services.dataset_transition(actor=cast["steward"], dataset=dataset, action="submit")
        client = client_for(cast["reviewer"])
        assert "Schema version 2" in client.get("/review/").content.decode()
        body = client.get(f"/review/{dataset.pk}/").content.decode()
        assert 'class="change-added ' in body and 'class="change-sensitivity ' in body
        assert 'class="change-removed"' in body and "parcel_id" in body and "breaking" in body
        response = client.post(f"/datasets/{dataset.pk}/transition/", {"action": "approve", "from": "review"})
        assert response.status_code == 302
        dataset.refresh_from_db()
        assert dataset.version == 2

    @pytest.mark.parametrize("who", ["analyst", "steward", "outsider"])
    def test_others_have_no_queue(self, client_for, cast, make_dataset, who):
        dataset = make_dataset("in_review")
        client = client_for(cast[who])
        assert client.get("/review/").status_code == 403
        assert client.get(f"/review/{dataset.pk}/").status_code == 403
        assert 'href="/review/"' not in client.get("/").content.decode()

    def test_dpo_reads_the_review_without_deciding(self, client_for, cast, make_dataset):
        dataset = make_dataset("in_review")
        client = client_for(cast["dpo"])
        assert dataset.title in client.get("/review/").content.decode()
        body = client.get(f"/review/{dataset.pk}/").content.decode()
        assert "applicant_name" in body and 'value="approve"' not in body


class TestWorkflowPages:
    def test_changes_requested_shows_the_comment_and_revise(self, client_for, cast, make_dataset):
        dataset = make_dataset("changes_requested")
        body = client_for(cast["steward"]).get(f"/datasets/{dataset.pk}/").content.decode()
        assert "Changes requested" in body and "Please add units." in body
        assert 'value="revise"' in body and 'value="submit"' not in body

    def test_the_schema_cannot_be_edited_in_review(self, client_for, cast, make_dataset):
        dataset = make_dataset("in_review")
        client = client_for(cast["steward"])
        assert "withdraw or revise it" in client.get(f"/datasets/{dataset.pk}/schema/").content.decode()
        response = client.post(f"/datasets/{dataset.pk}/schema/", _rows(PERMIT_FIELDS))
        assert response.status_code == 409
        assert "cannot be edited now" in response.content.decode()

    def test_editing_a_published_schema_prepares_the_next_version(self, client_for, cast, make_dataset):
        dataset = make_dataset("published")
        client = client_for(cast["steward"])
        page = client.get(f"/datasets/{dataset.pk}/schema/").content.decode()
        assert "Saving prepares schema version 2" in page and 'value="permit_id"' in page
        fields = [*PERMIT_FIELDS, {"name": "decided_on", "type": "date", "sensitivity": "public"}]
        assert client.post(f"/datasets/{dataset.pk}/schema/", _rows(fields)).status_code == 302
        body = client.get(f"/datasets/{dataset.pk}/").content.decode()
        assert "Schema version 2 is draft" in body
        assert 'value="submit"' in body and 'value="discard"' in body and 'value="deprecate"' in body

    def test_an_incomplete_dataset_cannot_be_submitted(self, client_for, cast, make_dataset):
        dataset = make_dataset("draft", fields=None)
        response = client_for(cast["steward"]).post(f"/datasets/{dataset.pk}/transition/", {"action": "submit"})
        assert response.status_code == 400
        assert "Define the fields of the dataset" in response.content.decode()

    def test_forms_are_protected_against_double_submission(self, client_for, cast, make_dataset):
        dataset = make_dataset("draft")
        client = client_for(cast["steward"])
        for url in ("/datasets/new/", f"/datasets/{dataset.pk}/edit/", f"/datasets/{dataset.pk}/schema/",
                    f"/datasets/{dataset.pk}/"):
            body = client.get(url).content.decode()
            # Every POST form is sent once by static/js/exchange.js, which every page loads.
            assert "js/exchange.js" in body and 'method="post"' in body and "csrfmiddlewaretoken" in body, url

    def test_csrf_is_enforced(self, cast, make_dataset):
        dataset = make_dataset("draft")
        client = Client(enforce_csrf_checks=True)
        client.force_login(cast["steward"])
        assert client.post(f"/datasets/{dataset.pk}/transition/", {"action": "submit"}).status_code == 403
        dataset.refresh_from_db()
        assert dataset.status == DatasetStatus.DRAFT


class TestDelete:
    def test_a_draft_is_deleted_a_published_dataset_is_not(self, client_for, cast, make_dataset):
        draft, published = make_dataset("draft"), make_dataset("published")
        client = client_for(cast["steward"])
        assert "Delete the draft" in client.get(f"/datasets/{draft.pk}/").content.decode()
        assert "Delete the draft" not in client.get(f"/datasets/{published.pk}/").content.decode()
        response = client.post(f"/datasets/{draft.pk}/delete/")
        assert response.status_code == 302 and not Dataset.objects.filter(pk=draft.pk).exists()
        response = client.post(f"/datasets/{published.pk}/delete/")
        assert response.status_code == 409 and "deprecate and retire instead" in response.content.decode()
        assert client_for(cast["analyst"]).post(f"/datasets/{published.pk}/delete/").status_code == 403
        assert Dataset.objects.filter(pk=published.pk).exists()


class TestMetadataErrors:
    def test_a_taken_slug_is_reported_next_to_the_slug(self, client_for, cast, make_dataset):
        existing = make_dataset("draft")
        response = client_for(cast["steward"]).post("/datasets/new/", {**METADATA, "slug": existing.slug})
        assert response.status_code == 400
        body = response.content.decode()
        assert "already exists" in body[body.index('for="id_slug"'):body.index('for="id_description"')]
        assert Dataset.objects.count() == 1

    def test_metadata_in_review_cannot_change(self, client_for, cast, make_dataset):
        dataset = make_dataset("in_review")
        response = client_for(cast["steward"]).post(f"/datasets/{dataset.pk}/edit/",
                                                    {**METADATA, "slug": dataset.slug, "title": "Changed"})
        assert response.status_code == 400
        assert "cannot be edited" in response.content.decode()
        dataset.refresh_from_db()
        assert dataset.title != "Changed"
