"""What a view remembers between pages (exchange.records.selectors.build_select's plans, the
records API's page heads): built once per view and query, never handed to another query, and
the pages read through them are the pages a fresh view reads."""

from __future__ import annotations

from typing import Any

import pytest

from exchange.access.policy import effective_view
from exchange.records import apis as record_apis
from exchange.records import read_cache
from exchange.records import selectors as records
from tests.exchange.records.test_read_cache import token_client, url
from tests.exchange.records.test_records import rows
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def permits(department: Any, people: Any) -> Any:
    dataset = published_dataset(department)
    load_rows(dataset, rows(30))
    grant(dataset, user=people["outsider"], approved_by=people["steward"],
          fields={"permit_id": "clear", "phone": "masked", "district": "clear", "fee_eur": "clear"})
    return dataset


@pytest.fixture
def plans_built(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The queries :func:`records._plan` was asked to plan, in order."""
    built: list[Any] = []
    plan = records._plan

    def counting(view: Any, table: Any, query: Any, **options: Any) -> Any:
        built.append(query)
        return plan(view, table, query, **options)

    monkeypatch.setattr(records, "_plan", counting)
    return built


def walk(user: Any, dataset: Any, params: dict[str, str], view: Any = None, as_json: bool = False) -> list[Any]:
    """Every page of the query, read through ``view`` (a fresh view per page when None): the
    rows, or with ``as_json`` the page's JSON (written by PostgreSQL there)."""
    pages, cursor = [], ""
    while True:
        page_view = view if view is not None else effective_view(dataset=dataset, user=user)
        _, _, page = records.read_page(user=user, dataset=dataset, view=page_view, as_json=as_json,
                                       params={**params, **({"cursor": cursor} if cursor else {})})
        pages.append(page.json if page.json is not None else page.rows)
        if not page.next_cursor:
            return pages
        cursor = page.next_cursor


QUERIES = [
    {"page_size": "7"},
    {"page_size": "4", "order": "-fee_eur,district", "fields": "permit_id,fee_eur,phone"},
    {"page_size": "5", "district": "North"},
    {"page_size": "5", "district": "South"},
    {"page_size": "3", "q": "341", "fields": "phone,permit_id"},
]


def test_every_page_of_a_query_is_read_through_one_plan(people, permits, plans_built):
    user = people["outsider"]
    view = effective_view(dataset=permits, user=user)
    for params in QUERIES:
        plans_built.clear()
        pages = walk(user, permits, params, view=view)
        assert len(pages) > 1, params  # several cursors, one plan
        assert len(plans_built) == 1, params
    # Asked again, every query's plan is already there.
    plans_built.clear()
    for params in QUERIES:
        walk(user, permits, params, view=view)
    assert plans_built == []


@pytest.mark.parametrize("params", QUERIES)
def test_pages_through_a_remembered_plan_are_those_of_a_fresh_view(people, permits, params):
    user = people["outsider"]
    view = effective_view(dataset=permits, user=user)
    for other in QUERIES:  # the view has planned every other query first
        walk(user, permits, other, view=view)
    remembered = walk(user, permits, params, view=view)
    assert remembered == walk(user, permits, params)
    assert sum(len(p) for p in remembered) > 0


@pytest.mark.parametrize("params", QUERIES)
def test_json_pages_through_a_remembered_plan_are_those_of_a_fresh_view(people, permits, params):
    user = people["outsider"]
    view = effective_view(dataset=permits, user=user)
    for other in QUERIES:
        walk(user, permits, other, view=view, as_json=True)
    remembered = walk(user, permits, params, view=view, as_json=True)
    assert remembered == walk(user, permits, params, as_json=True)
    assert len(remembered) > 1


def test_queries_that_differ_in_a_value_get_plans_of_their_own(people, permits):
    user = people["outsider"]
    view = effective_view(dataset=permits, user=user)
    north = walk(user, permits, {"district": "North"}, view=view)[0]
    south = walk(user, permits, {"district": "South"}, view=view)[0]
    assert {r["district"] for r in north} == {"North"} and {r["district"] for r in south} == {"South"}


def test_a_view_remembers_a_bounded_number_of_plans(people, permits, monkeypatch, plans_built):
    monkeypatch.setattr(records, "PLANS_PER_VIEW", 3)
    user = people["outsider"]
    view = effective_view(dataset=permits, user=user)
    for params in QUERIES:
        walk(user, permits, params, view=view)
        assert 1 <= len(view.derived["records.plans"]) <= 3
    # Forgotten, then planned again, and still right.
    plans_built.clear()
    assert walk(user, permits, QUERIES[0], view=view) == walk(user, permits, QUERIES[0])
    assert plans_built  # the fresh view planned it, and so did the remembering one


def test_a_plan_is_never_shared_between_views(people, permits):
    owner_view = effective_view(dataset=permits, user=people["steward"])
    grantee_view = effective_view(dataset=permits, user=people["outsider"])
    owner_page = walk(people["steward"], permits, {"page_size": "50"}, view=owner_view)[0]
    grantee_page = walk(people["outsider"], permits, {"page_size": "50"}, view=grantee_view)[0]
    assert "secret_note" in owner_page[0] and "secret_note" not in grantee_page[0]
    assert owner_page[0]["phone"] != grantee_page[0]["phone"]  # masked for the grantee


def test_the_api_describes_the_fields_asked_for_each_time(people, permits, monkeypatch):
    """The page's head (the fields' description) is remembered per view and per fields asked
    for: two requests under one cached context asking for other fields get their own."""
    monkeypatch.setattr(record_apis, "HEADS_PER_VIEW", 2)
    read_cache.clear()
    client = token_client(people["outsider"])
    asked = ["permit_id,phone", "fee_eur", "", "district,permit_id", "permit_id,phone"]
    for fields in asked:
        response = client.get(url(permits), {"fields": fields} if fields else {}, HTTP_ACCEPT="application/json")
        assert response.status_code == 200, response.content
        body = response.json()
        expected = fields.split(",") if fields else ["permit_id", "phone", "district", "fee_eur"]
        assert [f["name"] for f in body["fields"]] == expected
        assert all(list(row) == expected for row in body["results"])
        forms = {f["name"]: f["form"] for f in body["fields"]}
        assert forms.get("phone", "masked") == "masked"
