"""Publishing a schema version evolves the record store and lapses grants, end to end
through the catalogue's services and its ``schema_version_published`` signal."""

from __future__ import annotations

from typing import Any

import pytest

from catalog import services as catalog
from exchange.access.models import GrantField
from exchange.records.store import store_exists, store_table
from tests.records_support import grant, load_rows

pytestmark = pytest.mark.django_db

FIELDS: list[dict[str, Any]] = [
    {"name": "permit_id", "type": "integer", "is_key": True, "nullable": False, "sensitivity": "public"},
    {"name": "district", "type": "text", "sensitivity": "public"},
    {"name": "phone", "type": "text", "sensitivity": "personal"},
]


def publish(dataset, steward, reviewer, capture) -> None:
    with capture(execute=True):
        catalog.dataset_transition(actor=steward, dataset=dataset, action="submit", comment="please")
        catalog.dataset_transition(actor=reviewer, dataset=dataset, action="approve", comment="ok")


def test_publication_creates_and_evolves_the_store(people, department, as_user,
                                                   django_capture_on_commit_callbacks):
    steward, reviewer = people["steward"], people["reviewer"]
    dataset = catalog.dataset_create(actor=steward, department=department, title="Permits", slug="permits",
                                     description="Building permits.", themes=["REGI"], contact=steward)
    catalog.dataset_schema_set(actor=steward, dataset=dataset, fields=FIELDS)
    publish(dataset, steward, reviewer, django_capture_on_commit_callbacks)
    dataset.refresh_from_db()
    assert store_exists(dataset)
    load_rows(dataset, [{"permit_id": 1, "district": "North", "phone": "5551234"}])
    g = grant(dataset, user=people["outsider"], approved_by=steward,
              fields={"permit_id": "clear", "district": "clear", "phone": "masked"})

    # v2: district renamed to area (values kept), phone removed, a new field added.
    catalog.dataset_schema_set(actor=steward, dataset=dataset, fields=[
        FIELDS[0], {**FIELDS[1], "name": "area", "renamed_from": "district"},
        {"name": "status", "type": "text", "sensitivity": "internal"},
    ])
    publish(dataset, steward, reviewer, django_capture_on_commit_callbacks)
    dataset.refresh_from_db()
    assert store_table(dataset).field_names == ("permit_id", "area", "status")

    owner_rows = as_user(steward).get(f"/api/v1/datasets/{dataset.pk}/records/").json()["results"]
    assert owner_rows == [{"permit_id": 1, "area": "North", "status": None}]

    lapsed = dict(GrantField.objects.filter(grant=g).values_list("field_name", "lapsed_at"))
    assert lapsed["permit_id"] is None and lapsed["district"] is not None and lapsed["phone"] is not None
    body = as_user(people["outsider"]).get(f"/api/v1/datasets/{dataset.pk}/records/").json()
    # Renamed and removed fields lapsed; the new field is not granted by default.
    assert [f["name"] for f in body["fields"]] == ["permit_id"]
