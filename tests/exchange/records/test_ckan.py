from __future__ import annotations

import json

import pytest

from exchange.audit.models import AuditEvent
from tests.exchange.records.test_records import CANARY_NAME, CANARY_NOTE, CANARY_PHONE, rows
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def permits(department, people):
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    grant(dataset, user=people["outsider"], approved_by=people["steward"], fields={
        "permit_id": "clear", "district": "clear", "fee_eur": "clear", "phone": "masked",
        "applicant_name": "pseudonymised"})
    return dataset


def search(client, **params):
    return client.get("/api/3/action/datastore_search", params)


def test_datastore_search_returns_the_view(as_user, people, permits):
    body = search(as_user(people["outsider"]), resource_id=f"{permits.pk}-records", limit=5).json()
    assert body["success"] is True
    result = body["result"]
    assert [f["id"] for f in result["fields"]] == ["permit_id", "applicant_name", "phone", "district", "fee_eur"]
    assert result["fields"][0]["type"] == "int" and result["fields"][2]["type"] == "text"
    assert result["total"] == 12 and len(result["records"]) == 5
    text = json.dumps(body)
    assert CANARY_NOTE not in text and CANARY_NAME not in text and CANARY_PHONE not in text
    assert AuditEvent.objects.filter(action="records.datastore_search", row_count=5).count() == 1


def test_filters_fields_sort_offset(as_user, people, permits):
    client = as_user(people["outsider"])
    result = search(client, resource_id=permits.pk, filters=json.dumps({"district": ["North", "East"]}),
                    fields="permit_id,district", sort="permit_id desc", limit=3, offset=1).json()["result"]
    assert result["total"] == 8
    assert [r["permit_id"] for r in result["records"]] == [11, 9, 8]
    assert set(result["records"][0]) == {"permit_id", "district"}


@pytest.mark.parametrize("params", [
    {"filters": json.dumps({"secret_note": "x"})}, {"fields": "secret_note"}, {"sort": "secret_note asc"},
    {"filters": "{not json"}, {"limit": "many"},
])
def test_hidden_fields_and_bad_input_are_validation_errors(as_user, people, permits, params):
    response = search(as_user(people["outsider"]), resource_id=f"{permits.pk}-records", **params)
    body = response.json()
    assert response.status_code == 409 and body["success"] is False
    assert body["error"]["__type"] == "Validation Error"
    assert CANARY_NOTE not in response.content.decode()


def test_no_grant_unknown_and_anonymous(as_user, api, people, permits):
    assert search(as_user(people["nobody"]), resource_id=permits.pk).json()["error"]["__type"] == "Authorization Error"
    assert search(as_user(people["nobody"]), resource_id="999999").status_code == 404
    api.force_authenticate(None)
    assert search(api, resource_id=permits.pk).status_code == 403
