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


# --- Both of CKAN's paths, by GET and by POST with a JSON body -----------------------------------

PATHS = ["/api/3/action/", "/api/action/"]


@pytest.mark.parametrize("base", PATHS)
def test_both_paths_by_get_and_post_give_the_same_audited_view(as_user, people, permits, base):
    client = as_user(people["outsider"])
    resource = f"{permits.pk}-records"
    got = client.get(f"{base}datastore_search", {
        "resource_id": resource, "filters": json.dumps({"district": ["North", "East"]}),
        "fields": "permit_id,district,phone", "sort": "permit_id desc", "limit": 3, "offset": 1}).json()
    posted = client.post(f"{base}datastore_search", {
        "resource_id": resource, "filters": {"district": ["North", "East"]},
        "fields": ["permit_id", "district", "phone"], "sort": "permit_id desc", "limit": 3, "offset": 1},
        format="json").json()
    assert got["success"] is posted["success"] is True
    assert got["result"]["records"] == posted["result"]["records"]
    assert [r["permit_id"] for r in posted["result"]["records"]] == [11, 9, 8]
    assert posted["result"]["records"][0]["phone"].startswith("****")  # masked, as granted
    assert CANARY_PHONE not in json.dumps(posted) and CANARY_NOTE not in json.dumps(posted)
    assert posted["result"]["_links"]["next"] == f"{base}datastore_search?resource_id={resource}&offset=4"
    assert AuditEvent.objects.filter(action="records.datastore_search", dataset_id=permits.pk, row_count=3,
                                     actor_id=people["outsider"].pk).count() == 2


@pytest.mark.parametrize("base", PATHS)
def test_json_numbers_and_booleans_filter_like_their_text(as_user, people, permits, base):
    client = as_user(people["outsider"])

    def total(filters: dict) -> int:
        response = client.post(f"{base}datastore_search", {"resource_id": permits.pk, "filters": filters},
                               format="json")
        assert response.status_code == 200, response.content
        return response.json()["result"]["total"]

    assert total({"permit_id": 3}) == total({"permit_id": "3"}) == 1
    assert total({"permit_id": [3, 4, 5]}) == 3


@pytest.mark.parametrize("base", PATHS)
@pytest.mark.parametrize(("params", "status", "kind"), [
    ({}, 409, "Validation Error"),
    ({"resource_id": ""}, 409, "Validation Error"),
    ({"resource_id": "{pk}", "filters": {"permit_id": {"gt": 1}}}, 409, "Validation Error"),
    ({"resource_id": "{pk}", "filters": {"permit_id": 1.5}}, 409, "Validation Error"),
    ({"resource_id": "{pk}", "filters": ["permit_id"]}, 409, "Validation Error"),
    ({"resource_id": "{pk}", "fields": [{"id": "permit_id"}]}, 409, "Validation Error"),
    ({"resource_id": "{pk}", "filters": {"secret_note": "x"}}, 409, "Validation Error"),
    ({"resource_id": "{pk}", "limit": [5]}, 409, "Validation Error"),
    ({"resource_id": "999999-records"}, 404, "Not Found Error"),
    ({"resource_id": "\u00b2-records"}, 404, "Not Found Error"),
    ({"resource_id": "{pk}-csv"}, 404, "Not Found Error"),
])
def test_bad_calls_answer_ckans_envelope(as_user, people, permits, base, params, status, kind):
    params = {k: v.format(pk=permits.pk) if isinstance(v, str) else v for k, v in params.items()}
    response = as_user(people["outsider"]).post(f"{base}datastore_search", params, format="json")
    assert response.status_code == status, response.content
    assert response.json()["success"] is False and response.json()["error"]["__type"] == kind
    assert CANARY_NOTE not in response.content.decode()


@pytest.mark.parametrize("base", PATHS)
def test_what_a_caller_may_not_know_or_read(as_user, api, people, permits, department, base):
    from catalog.models import Visibility

    hidden = published_dataset(department, slug="hidden-permits", visibility=Visibility.RESTRICTED)
    load_rows(hidden, rows())
    nobody = as_user(people["nobody"])
    response = nobody.get(f"{base}datastore_search", {"resource_id": f"{hidden.pk}-records"})
    assert response.status_code == 404 and response.json()["error"]["__type"] == "Not Found Error"
    response = nobody.get(f"{base}datastore_search", {"resource_id": f"{permits.pk}-records"})
    assert response.status_code == 403 and response.json()["error"]["__type"] == "Authorization Error"
    api.force_authenticate(None)
    response = api.post(f"{base}datastore_search", {"resource_id": permits.pk}, format="json")
    assert response.status_code == 403 and response.json()["error"]["__type"] == "Authorization Error"
