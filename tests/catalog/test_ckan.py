"""The CKAN-compatible read API: envelope, actions, errors, and the catalogue's visibility."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from knox.models import AuthToken

from catalog import ckan
from departments import services
from tests.factories import DatasetFactory

pytestmark = pytest.mark.django_db

BASE = "/api/3/action/"


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True and body["help"].endswith(response.wsgi_request.path.rsplit("/", 1)[1])
    return body["result"]


def failed(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False and body["error"]["__type"] == kind and body["error"]["message"]
    assert "help" in body
    return body["error"]


@pytest.fixture
def catalogue(make_dataset, cast, other_department) -> dict[str, Any]:
    return {
        "open": make_dataset("published", title="Street trees", slug="street-trees", keywords=["trees", "green"],
                             themes=["ENVI"], licence="CC0-1.0"),
        "internal": make_dataset("published", title="Parking permits", slug="parking-permits",
                                 keywords=["parking"], licence="city-internal"),
        "restricted": make_dataset("published", title="Parking fines", slug="parking-fines",
                                   visibility="restricted", keywords=["parking", "fines"]),
        "draft": make_dataset(title="Draft works", slug="draft-works"),
        "theirs": DatasetFactory(department=other_department, steward=cast["other_steward"],
                                 reviewer=cast["reviewer"], status="published", title="Clinic list",
                                 slug="clinics", keywords=["clinics"], themes=["HEAL"]),
    }


def test_status_show(api):
    result = ok(api.get(f"{BASE}status_show"))
    assert result["ckan_version"].startswith("2.") and result["site_url"]


def test_package_list_respects_visibility(api, as_user, cast, catalogue):
    assert ok(api.get(f"{BASE}package_list")) == ["clinics", "street-trees"]  # anonymous: open licences only
    assert ok(as_user(cast["outsider"]).get(f"{BASE}package_list")) == ["clinics", "parking-permits",
                                                                          "street-trees"]
    assert ok(as_user(cast["steward"]).get(f"{BASE}package_list")) == ["clinics", "parking-fines",
                                                                         "parking-permits", "street-trees"]


def test_package_show_by_name_or_id_with_datastore_fields(as_user, cast, catalogue):
    client = as_user(cast["outsider"])
    trees = catalogue["open"]
    by_name = ok(client.get(f"{BASE}package_show", {"id": "street-trees"}))
    assert ok(client.get(f"{BASE}package_show", {"id": trees.pk}))["name"] == "street-trees"
    assert by_name["organization"]["name"] == "transport" and by_name["owner_org"] == str(trees.department_id)
    assert [t["name"] for t in by_name["tags"]] == ["trees", "green"]
    assert by_name["license_id"] == "CC0-1.0" and by_name["isopen"] is True
    records = by_name["resources"][0]
    assert records["url"].endswith(f"/api/v1/datasets/{trees.pk}/records/") and records["datastore_active"]
    assert [(f["id"], f["type"], f["info"]["sensitivity"]) for f in records["fields"]][:2] == [
        ("permit_id", "text", "public"), ("applicant_name", "text", "personal")]
    assert by_name["resources"][1]["format"] == "CSV"


@pytest.mark.parametrize("name", ["parking-fines", "draft-works", "nope", "99999999999999999999999"])
def test_invisible_package_is_not_found(as_user, cast, catalogue, name):
    error = failed(as_user(cast["outsider"]).get(f"{BASE}package_show", {"id": name}), 404, "Not Found Error")
    assert error["message"] == "Not found"


def test_package_show_without_id_is_a_validation_error(api):
    error = failed(api.get(f"{BASE}package_show"), 409, "Validation Error")
    assert "id" in error


def test_package_search(as_user, cast, catalogue):
    client = as_user(cast["steward"])
    result = ok(client.get(f"{BASE}package_search", {"q": "parking"}))
    assert result["count"] == 2 and {r["name"] for r in result["results"]} == {"parking-fines", "parking-permits"}
    result = ok(client.get(f"{BASE}package_search", {"fq": "organization:health"}))
    assert [r["name"] for r in result["results"]] == ["clinics"]
    result = ok(client.get(f"{BASE}package_search", {"fq": 'tags:"parking" -tags:fines'}))
    assert [r["name"] for r in result["results"]] == ["parking-permits"]
    result = ok(client.get(f"{BASE}package_search", {"rows": 2, "start": 1, "sort": "name asc"}))
    assert result["count"] == 4 and [r["name"] for r in result["results"]] == ["parking-fines", "parking-permits"]
    result = ok(client.get(f"{BASE}package_search", {"sort": "title_string desc", "rows": 1,
                                                     "facet.field": '["organization", "tags"]'}))
    assert result["results"][0]["title"] == "Street trees"
    assert result["facets"]["organization"] == {"transport": 3, "health": 1}
    assert result["search_facets"]["tags"]["items"][0] == {"name": "parking", "display_name": "parking", "count": 2}
    assert ok(as_user(cast["outsider"]).get(f"{BASE}package_search", {"q": "fines"}))["count"] == 0


@pytest.mark.parametrize(("params", "field"), [({"rows": "many"}, "rows"), ({"sort": "colour asc"}, "sort"),
                                               ({"fq": "colour:red"}, "fq"), ({"start": "-1"}, "start")])
def test_package_search_bad_input(api, params, field):
    assert field in failed(api.get(f"{BASE}package_search", params), 409, "Validation Error")


def test_organizations_and_tags(api, as_user, cast, catalogue):
    assert ok(api.get(f"{BASE}organization_list")) == ["health", "transport"]
    orgs = ok(as_user(cast["outsider"]).get(f"{BASE}organization_list", {"all_fields": "true"}))
    assert {o["name"]: o["package_count"] for o in orgs} == {"health": 1, "transport": 2}
    assert all(o["is_organization"] for o in orgs)
    api.force_authenticate(user=None)  # as_user() signed the shared client in
    org = ok(api.get(f"{BASE}organization_show", {"id": "transport", "include_datasets": "true"}))
    assert org["package_count"] == 1 and [p["name"] for p in org["packages"]] == ["street-trees"]
    failed(api.get(f"{BASE}organization_show", {"id": "nope"}), 404, "Not Found Error")
    assert ok(api.get(f"{BASE}tag_list")) == ["clinics", "green", "trees"]
    assert ok(as_user(cast["steward"]).get(f"{BASE}tag_list", {"query": "par"})) == ["parking"]


def test_post_works_like_get(as_user, cast, catalogue):
    result = ok(as_user(cast["steward"]).post(f"{BASE}package_show", {"id": "parking-fines"}, format="json"))
    assert result["private"] is True


def test_unknown_action_and_bad_token(api):
    failed(api.get(f"{BASE}package_create"), 400, "Bad request")
    api.credentials(HTTP_AUTHORIZATION="Token " + "a" * 64)
    failed(api.get(f"{BASE}package_list"), 403, "Authorization Error")  # CKAN has no 401


def test_package_search_and_dcat_cost_constant_queries(as_user, cast, make_dataset):
    from departments.selectors import principal_forget

    client = as_user(cast["outsider"])

    def measure() -> list[int]:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        counts = []
        for url in (f"{BASE}package_search?rows=100", "/catalog.ttl", f"{BASE}organization_list?all_fields=true"):
            principal_forget(cast["outsider"])
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(url).status_code == 200
            counts.append(len(ctx.captured_queries))
        return counts

    for i in range(2):
        make_dataset("published", title=f"Permits {i}")
    small = measure()
    for i in range(4):
        make_dataset("published", title=f"More permits {i}")
    assert measure() == small


# --- Both of CKAN's paths, both methods, CKAN's token headers, CKAN's errors -------------------

PATHS = ["/api/3/action/", "/api/action/"]
CALLS = {
    "status_show": {},
    "package_list": {"limit": 10},
    "package_show": {"id": "street-trees"},
    "package_search": {"q": "trees", "fq": "tags:green", "rows": 5, "sort": "name asc"},
    "organization_list": {"all_fields": "true"},
    "organization_show": {"id": "transport", "include_datasets": "true"},
    "tag_list": {"query": "tr"},
}


def call(client: Any, base: str, action: str, method: str, params: dict[str, Any]) -> Any:
    if method == "get":
        return client.get(f"{base}{action}", params)
    return client.post(f"{base}{action}", params, format="json")


def test_every_catalogue_action_is_called_below():
    # datastore_search: tests/exchange/test_ckan_datastore.py, on both paths too.
    assert set(CALLS) == set(ckan.ACTIONS) - {"datastore_search"}


@pytest.mark.parametrize("base", PATHS)
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("action", sorted(CALLS))
def test_every_action_answers_on_both_paths_by_get_and_post(api, catalogue, base, method, action):
    result = ok(call(api, base, action, method, CALLS[action]))
    assert result == ok(api.get(f"{BASE}{action}", CALLS[action]))
    if action == "package_search":
        assert [r["name"] for r in result["results"]] == ["street-trees"]


def test_a_json_document_posted_as_a_form_is_read_as_ckan_reads_it(api, catalogue):
    """``curl -d '{"id": …}'`` (CKAN's documented way) sends the JSON as a form."""
    form = "application/x-www-form-urlencoded"
    for base in PATHS:
        assert ok(api.generic("POST", f"{base}package_show", '{"id": "street-trees"}', form))["name"] == "street-trees"
        assert ok(api.generic("POST", f"{base}package_show", "id=clinics", form))["name"] == "clinics"


@pytest.mark.parametrize("base", PATHS)
@pytest.mark.parametrize(("method", "action", "params", "status", "kind"), [
    ("get", "package_create", {}, 400, "Bad request"),
    ("post", "no_such_action", {"id": "x"}, 400, "Bad request"),
    ("get", "", {}, 400, "Bad request"),
    ("get", "package_list/", {}, 400, "Bad request"),
    ("get", "package_show", {}, 409, "Validation Error"),
    ("post", "package_show", {"id": None}, 409, "Validation Error"),
    ("get", "package_show", {"id": "street\x00trees"}, 409, "Validation Error"),
    ("get", "package_search", {"rows": "many"}, 409, "Validation Error"),
    ("get", "package_search", {"start": "-1"}, 409, "Validation Error"),
    ("post", "package_search", {"rows": [1]}, 409, "Validation Error"),
    ("post", "package_search", {"facet.field": 5}, 409, "Validation Error"),
    ("post", "package_search", {"sort": {"name": "asc"}}, 409, "Validation Error"),
    ("post", "package_list", {"limit": {"a": 1}}, 409, "Validation Error"),
    ("get", "organization_show", {}, 409, "Validation Error"),
    ("get", "package_show", {"id": "nope"}, 404, "Not Found Error"),
    ("get", "package_show", {"id": "parking-fines"}, 404, "Not Found Error"),  # restricted
    ("post", "package_show", {"id": "parking-permits"}, 404, "Not Found Error"),  # not open: not for anonymous
    ("get", "package_show", {"id": "draft-works"}, 404, "Not Found Error"),
    ("get", "package_show", {"id": "\u00b2"}, 404, "Not Found Error"),
    ("get", "package_show", {"id": "9" * 30}, 404, "Not Found Error"),
    ("post", "package_show", {"id": {"name": "street-trees"}}, 404, "Not Found Error"),
    ("get", "organization_show", {"id": "\u00b2"}, 404, "Not Found Error"),
    ("get", "organization_show", {"id": "nope"}, 404, "Not Found Error"),
])
def test_errors_answer_ckans_envelope_on_both_paths(api, catalogue, base, method, action, params, status, kind):
    response = call(api, base, action, method, params)
    assert response["Content-Type"].startswith("application/json")
    failed(response, status, kind)


@pytest.mark.parametrize("base", PATHS)
@pytest.mark.parametrize(("body", "content_type"), [
    ("{not json", "application/json"), ("[1, 2]", "application/json"), ("null", "application/json"),
    ("{not json", "application/x-www-form-urlencoded"),
])
def test_an_unreadable_body_is_a_bad_request(api, base, body, content_type):
    error = failed(api.generic("POST", f"{base}package_list", body, content_type), 400, "Bad request")
    assert error["message"].startswith("Bad request - JSON Error")


@pytest.mark.parametrize("base", PATHS)
def test_an_unexpected_failure_is_a_500_in_the_envelope(api, monkeypatch, base):
    def broken(request: Any, params: dict[str, Any]) -> Any:
        raise RuntimeError("a bug with a secret in its message")

    monkeypatch.setitem(ckan.ACTIONS, "status_show", broken)
    error = failed(api.get(f"{base}status_show"), 500, "Internal Server Error")
    assert "secret" not in error["message"]


@pytest.fixture
def steward_token(cast) -> str:
    return services.token_issue(user=cast["steward"])[1]


@pytest.mark.parametrize("base", PATHS)
@pytest.mark.parametrize("headers", [
    {"HTTP_AUTHORIZATION": "{token}"},
    {"HTTP_X_CKAN_API_KEY": "{token}"},
    {"HTTP_AUTHORIZATION": "Token {token}"},
    {"HTTP_X_CKAN_API_KEY": "{token}", "HTTP_AUTHORIZATION": "{token}"},  # what ckanapi sends
    {"HTTP_X_CKAN_API_KEY": "{token}", "HTTP_AUTHORIZATION": "Basic c29tZW9uZTplbHNl"},  # the CKAN header wins
], ids=["authorization", "x-ckan-api-key", "authorization-token", "both", "api-key-and-basic"])
def test_ckans_token_headers_sign_the_caller_in(api, catalogue, steward_token, base, headers):
    api.credentials(**{name: value.format(token=steward_token) for name, value in headers.items()})
    assert "parking-fines" in ok(api.get(f"{base}package_list"))  # restricted: the owner's steward sees it
    assert ok(api.post(f"{base}package_show", {"id": "parking-fines"}, format="json"))["private"] is True


@pytest.mark.parametrize("base", PATHS)
@pytest.mark.parametrize("header", ["HTTP_AUTHORIZATION", "HTTP_X_CKAN_API_KEY"])
@pytest.mark.parametrize("value", ["a" * 64, "short", "Token " + "a" * 64, "Token a b", "\u00fcml\u00e4ut"])
def test_a_bad_token_is_ckans_authorization_error(api, catalogue, base, header, value):
    api.credentials(**{header: value})
    failed(api.get(f"{base}package_list"), 403, "Authorization Error")
    failed(api.post(f"{base}package_show", {"id": "street-trees"}, format="json"), 403, "Authorization Error")


def test_an_expired_token_says_so(api, cast, steward_token):
    AuthToken.objects.filter(user=cast["steward"]).update(expiry=timezone.now())
    api.credentials(HTTP_AUTHORIZATION=steward_token)
    assert "expired" in failed(api.get("/api/action/package_list"), 403, "Authorization Error")["message"]


def test_another_authorization_scheme_is_not_a_token(api, catalogue):
    api.credentials(HTTP_AUTHORIZATION="Basic c29tZW9uZTplbHNl")
    assert ok(api.get("/api/action/package_list")) == ["clinics", "street-trees"]  # anonymous


def test_ckans_token_headers_are_for_the_ckan_endpoints_only(api, steward_token):
    api.credentials(HTTP_AUTHORIZATION=steward_token)
    assert api.get("/api/v1/me/").status_code == 401
    api.credentials(HTTP_X_CKAN_API_KEY=steward_token)
    assert api.get("/api/v1/me/").status_code == 401
