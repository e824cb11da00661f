"""The API's page-number pages: the total comes with the page's own statement, and every page,
the last, an empty first page and pages past the end answer as Django's paginator would."""

from __future__ import annotations

import pytest
from django.core.paginator import EmptyPage, PageNotAnInteger, Paginator
from django.db import connection
from django.test.utils import CaptureQueriesContext

from catalog.models import Dataset
from config.api.pagination import CountingPaginator
from tests.records_support import published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def five(department):
    return [published_dataset(department, slug=f"set-{i}") for i in range(5)]


def _get(client, query: str):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(f"/api/v1/datasets/?page_size=2&{query}")
    return response, [q["sql"] for q in ctx.captured_queries if 'FROM "catalog_dataset"' in q["sql"]]


def test_every_page_carries_the_total_without_a_count_statement(as_user, people, five):
    client = as_user(people["steward"])
    seen = []
    for page in (1, 2, 3):
        response, sql = _get(client, f"page={page}")
        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 5
        assert len(sql) == 1 and "OVER ()" in sql[0]
        seen += [d["slug"] for d in body["results"]]
        assert (body["next"] is None) == (page == 3) and (body["previous"] is None) == (page == 1)
    assert seen == sorted(f"set-{i}" for i in range(5))


@pytest.mark.parametrize(("page", "status"), [("4", 404), ("40", 404), ("0", 400), ("-1", 400), ("two", 400)])
def test_a_page_past_the_end_is_a_404_and_a_bad_number_a_400(as_user, people, five, page, status):
    response, _ = _get(as_user(people["steward"]), f"page={page}")
    assert response.status_code == status


def test_the_paginator_itself_answers_as_djangos_for_every_number(department, five):
    qs = Dataset.objects.order_by("slug")
    for number in (1, 2, 3, "3", 4, 0, -1, "x", None):
        ours, theirs = CountingPaginator(qs, 2), Paginator(qs, 2)
        try:
            expected = [d.slug for d in theirs.page(number)], theirs.count
        except (EmptyPage, PageNotAnInteger) as exc:
            with pytest.raises(type(exc)):
                ours.page(number)
            continue
        page = ours.page(number)
        assert ([d.slug for d in page], page.paginator.count) == expected


def test_an_empty_list_has_an_empty_first_page(as_user, people):
    response, _ = _get(as_user(people["steward"]), "page=1")
    assert response.status_code == 200 and response.json()["count"] == 0 and response.json()["results"] == []


def test_distinct_and_values_queries_take_djangos_own_count(department, five):
    for qs in (Dataset.objects.order_by("slug").distinct(), Dataset.objects.order_by("slug").values("slug")):
        with CaptureQueriesContext(connection) as ctx:
            page = CountingPaginator(qs, 2).page(2)
        assert page.paginator.count == 5 and len(page.object_list) == 2
        assert any("COUNT(" in q["sql"].upper() and "OVER" not in q["sql"] for q in ctx.captured_queries)
