"""Editing a schema: validation of field names, types, sensitivity and the key; versioning
and the classification of changes."""

from __future__ import annotations

from typing import Any

import pytest

from catalog.models import ChangeKind, Field, SchemaVersion
from catalog.services import classify_changes
from exchange.audit.models import AuditEvent
from tests.departments.test_api import assert_error
from tests.factories import PERMIT_FIELDS

pytestmark = pytest.mark.django_db


def put_schema(client: Any, dataset: Any, fields: list[dict[str, Any]]) -> Any:
    return client.put(f"/api/v1/datasets/{dataset.pk}/schema/", {"fields": fields}, format="json")


def key(name: str = "permit_id") -> dict[str, Any]:
    return {"name": name, "type": "text", "sensitivity": "public", "is_key": True}


class TestValidation:
    @pytest.mark.parametrize(
        ("name", "why"),
        [
            ("select", "reserved"), ("user", "reserved"), ("order", "reserved"), ("xmin", "reserved"),
            ("applicant name", "Use lowercase"), ('applicant"name', "Use lowercase"), ("Applicant", "Use lowercase"),
            ("1st_name", "Use lowercase"), ("name;drop", "Use lowercase"), ("a" * 64, "63 characters"),
            ("", "required"),
        ],
    )
    def test_unsafe_names_are_refused_and_nothing_changes(self, as_user, cast, make_dataset, name, why):
        dataset = make_dataset()
        before = list(Field.objects.filter(schema__dataset=dataset).values_list("name", flat=True))
        events = AuditEvent.objects.count()
        error = assert_error(put_schema(as_user(cast["steward"]), dataset,
                                        [key(), {"name": name, "type": "text", "sensitivity": "public"}]), 400)
        assert why in " ".join(error["fields"]["fields[1].name"])
        assert list(Field.objects.filter(schema__dataset=dataset).values_list("name", flat=True)) == before
        assert AuditEvent.objects.count() == events

    def test_every_problem_is_reported_at_once(self, as_user, cast, make_dataset):
        dataset = make_dataset()
        error = assert_error(put_schema(as_user(cast["steward"]), dataset, [
            {"name": "permit_id", "type": "text", "sensitivity": "public", "is_key": True, "nullable": True},
            {"name": "permit_id", "type": "text", "sensitivity": "public"},
            {"name": "amount", "type": "money", "sensitivity": "public"},
            {"name": "owner", "type": "text"},
            {"name": "note", "type": "text", "sensitivity": "secret"},
        ]), 400)
        assert set(error["fields"]) == {"fields[0].nullable", "fields[1].name", "fields[2].type",
                                        "fields[3].sensitivity", "fields[4].sensitivity"}
        assert "Duplicate" in error["fields"]["fields[1].name"][0]

    def test_no_key(self, as_user, cast, make_dataset):
        dataset = make_dataset()
        error = assert_error(put_schema(as_user(cast["steward"]), dataset,
                                        [{"name": "a", "type": "text", "sensitivity": "public"}]), 400)
        assert "key" in error["fields"]["fields"][0]

    def test_empty_schema(self, as_user, cast, make_dataset):
        error = assert_error(put_schema(as_user(cast["steward"]), make_dataset(), []), 400)
        assert "fields" in error["fields"]

    def test_composite_key_is_one_key(self, as_user, cast, make_dataset):
        dataset = make_dataset(fields=None)
        response = put_schema(as_user(cast["steward"]), dataset, [
            key("station_id"), {"name": "measured_at", "type": "timestamp", "sensitivity": "public", "is_key": True},
            {"name": "no2_ugm3", "type": "decimal", "sensitivity": "public", "unit": "µg/m³"},
        ])
        assert response.status_code == 200, response.content
        assert [f["is_key"] for f in response.json()["fields"]] == [True, True, False]
        assert [f["nullable"] for f in response.json()["fields"]] == [False, False, True]

    @pytest.mark.parametrize("who", ["analyst", "admin", "other_steward", "reviewer", "operator"])
    def test_only_owner_stewards_edit(self, as_user, cast, make_dataset, who):
        dataset = make_dataset("published")
        response = put_schema(as_user(cast[who]), dataset, [key()])
        assert response.status_code in (403, 404)
        assert SchemaVersion.objects.filter(dataset=dataset).count() == 1


class TestVersioning:
    def test_draft_edits_version_one_in_place(self, as_user, cast, make_dataset):
        dataset = make_dataset()
        client = as_user(cast["steward"])
        body = put_schema(client, dataset, [key(), {"name": "status", "type": "text", "sensitivity": "public"}]).json()
        assert body["number"] == 1 and body["change_kind"] == "initial"
        assert SchemaVersion.objects.filter(dataset=dataset).count() == 1
        assert client.get(f"/api/v1/datasets/{dataset.pk}/schema/").json()["fields"][1]["name"] == "status"

    def test_published_edit_makes_a_new_version_and_keeps_the_current(self, as_user, cast, make_dataset):
        dataset = make_dataset("published")
        client = as_user(cast["steward"])
        fields = [*PERMIT_FIELDS, {"name": "decided_on", "type": "date", "sensitivity": "public"}]
        body = put_schema(client, dataset, fields).json()
        assert (body["number"], body["status"], body["change_kind"]) == (2, "draft", "additive")
        assert body["changes"] == [{"change": "added", "field": "decided_on", "type": "date",
                                    "sensitivity": "public", "breaking": False}]
        # A second edit changes the same draft version.
        body = put_schema(client, dataset, [*fields, {"name": "status", "type": "text",
                                                      "sensitivity": "public"}]).json()
        assert body["number"] == 2
        dataset.refresh_from_db()
        assert dataset.current_schema.number == 1 and dataset.status == "published"
        # Others keep seeing the current schema; the owner sees the draft.
        assert as_user(cast["outsider"]).get(f"/api/v1/datasets/{dataset.pk}/schema/").json()["number"] == 1
        assert as_user(cast["analyst"]).get(f"/api/v1/datasets/{dataset.pk}/schema/").json()["number"] == 2
        versions = as_user(cast["outsider"]).get(f"/api/v1/datasets/{dataset.pk}/schema/versions/").json()
        assert [v["number"] for v in versions] == [1]

    def test_discard_a_draft_version(self, as_user, cast, make_dataset):
        dataset = make_dataset("published")
        client = as_user(cast["steward"])
        put_schema(client, dataset, [*PERMIT_FIELDS, {"name": "x_coord", "type": "decimal", "sensitivity": "public"}])
        client.post(f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": "submit"})
        client.post(f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": "withdraw"})
        response = client.post(f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": "discard"})
        assert response.status_code == 200
        assert list(SchemaVersion.objects.filter(dataset=dataset).values_list("number", flat=True)) == [1]
        timeline = client.get(f"/api/v1/datasets/{dataset.pk}/timeline/").json()
        assert [(t["action"], t["schema_version"]) for t in timeline][-3:] == [
            ("submit", 2), ("withdraw", 2), ("discard", 2)]
        assert AuditEvent.objects.filter(action="schema.discard", dataset_id=dataset.pk).exists()

    def test_retiring_discards_a_pending_version(self, as_user, cast, make_dataset):
        dataset = make_dataset("deprecated")
        client = as_user(cast["steward"])
        put_schema(client, dataset, [*PERMIT_FIELDS, {"name": "x_coord", "type": "decimal", "sensitivity": "public"}])
        client.post(f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": "submit"})
        assert client.post(f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": "retire"}).json()[
            "allowed_actions"] == []
        assert list(SchemaVersion.objects.filter(dataset=dataset).values_list("number", "status")) == [
            (1, "published")]

    def test_renamed_from_must_name_a_current_field(self, as_user, cast, make_dataset):
        dataset = make_dataset("published")
        fields = [dict(f) for f in PERMIT_FIELDS]
        fields[1] = {**fields[1], "name": "applicant", "renamed_from": "nobody_here"}
        error = assert_error(put_schema(as_user(cast["steward"]), dataset, fields), 400)
        assert "fields[1].renamed_from" in error["fields"]


class TestClassification:
    def fields(self, *specs: tuple[str, str, str]) -> list[Field]:
        return [Field(name=n, type=t, sensitivity=s, position=i, is_key=i == 0, nullable=i != 0)
                for i, (n, t, s) in enumerate(specs)]

    def test_kinds(self):
        before = self.fields(("id", "text", "public"), ("amount", "decimal", "internal"))
        assert classify_changes([], before)[0] == ChangeKind.INITIAL
        assert classify_changes(before, self.fields(("id", "text", "public"), ("amount", "decimal", "internal")))[
            0] == ChangeKind.NONE
        kind, changes = classify_changes(before, self.fields(("id", "text", "public"), ("amount", "decimal",
                                                                                      "personal")))
        assert kind == ChangeKind.ADDITIVE and changes[0]["change"] == "sensitivity"
        kind, changes = classify_changes(before, self.fields(("id", "integer", "public"), ("amount", "decimal",
                                                                                         "internal")))
        assert kind == ChangeKind.BREAKING and changes[0]["change"] == "retyped"
        kind, changes = classify_changes(before, self.fields(("id", "text", "public")))
        assert kind == ChangeKind.BREAKING and changes == [{"change": "removed", "field": "amount", "breaking": True}]
        renamed = self.fields(("id", "text", "public"), ("amount_eur", "decimal", "internal"))
        renamed[1].renamed_from = "amount"
        kind, changes = classify_changes(before, renamed)
        assert kind == ChangeKind.BREAKING
        assert changes == [{"change": "renamed", "field": "amount_eur", "from": "amount", "breaking": True}]
