"""Records pages written as JSON by PostgreSQL (exchange.records.fetch_page_json) say exactly
what the Python path and DRF's JSON renderer say: the same keys, values, rows, order and
cursors. On SQLite both calls take the Python path."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from rest_framework.renderers import JSONRenderer

from exchange.audit.models import AuditEvent
from exchange.records import selectors as records
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db

FIELDS: list[dict[str, Any]] = [
    {"name": "id", "type": "integer", "is_key": True, "nullable": False, "sensitivity": "public"},
    {"name": "label", "type": "text", "sensitivity": "public"},
    {"name": "amount", "type": "decimal", "sensitivity": "internal"},
    {"name": "flag", "type": "boolean", "sensitivity": "public"},
    {"name": "day", "type": "date", "sensitivity": "public"},
    {"name": "at", "type": "timestamp", "sensitivity": "public"},
    {"name": "doc", "type": "json", "sensitivity": "public"},
    {"name": "place", "type": "geopoint", "sensitivity": "public"},
    {"name": "phone", "type": "text", "sensitivity": "personal"},
]


def _rows() -> list[dict[str, Any]]:
    out = []
    for i in range(1, 24):
        out.append({
            "id": i,
            # Control characters too: the database's rows reach Python joined by one (\x01).
            "label": None if i % 7 == 0 else (f'Ünïcode "quoted" \\ line\nbreak {i}'
                                              + ("\x01\x02\t" if i % 3 == 2 else "")),
            "amount": None if i % 5 == 0 else Decimal(f"{i * 3}.{i:02d}") * (-1 if i % 4 == 0 else 1),
            "flag": None if i % 6 == 0 else i % 2 == 0,
            "day": dt.date(2026, 1, 1) + dt.timedelta(days=i),
            "at": dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC) + dt.timedelta(minutes=i,
                                                                                microseconds=1500 * (i % 3)),
            "doc": json.dumps({"n": i, "tags": ["a", "\x01b"], "nested": {"ok": True}}) if i % 3 else None,
            "place": "52.52,13.40",
            "phone": f"+49 30 {i:07d}" if i % 8 else "123",
        })
    return out


@pytest.fixture
def dataset(department: Any) -> Any:
    ds = published_dataset(department, slug="all-types", fields=FIELDS)
    load_rows(ds, _rows())
    return ds


def _drf(page: records.Page) -> Any:
    rows = json.loads(JSONRenderer().render(page.rows))
    for row in rows:
        # On PostgreSQL the Python path hands a json field over as its text (Django's jsonb
        # loader), which the API then wrote as a string; the database's JSON writes the value
        # itself, as the SQLite path always did. Compared as values.
        if isinstance(row.get("doc"), str):
            row["doc"] = json.loads(row["doc"])
    return rows


def walk(user: Any, dataset: Any, params: dict[str, str], as_json: bool) -> list[tuple[Any, str | None]]:
    pages = []
    cursor = ""
    while True:
        _, _, page = records.read_page(user=user, dataset=dataset, as_json=as_json,
                                       params={**params, **({"cursor": cursor} if cursor else {})})
        rows = json.loads(page.json) if page.json is not None else _drf(page)
        pages.append((rows, page.row_count))
        if not page.next_cursor:
            return pages
        cursor = page.next_cursor


@pytest.mark.parametrize("params", [
    {"page_size": "5"},
    {"page_size": "4", "order": "-amount,label"},
    {"page_size": "3", "order": "at"},
    {"page_size": "6", "order": "-day", "flag": "true"},
    {"page_size": "2", "q": "quoted", "order": "-label"},
    {"page_size": "3", "amount__gte": "10", "order": "flag,-amount"},
    {"page_size": "1000"},
])
def test_owner_pages_are_the_same_either_way(people, dataset, params):
    steward = people["steward"]
    assert walk(steward, dataset, params, as_json=True) == walk(steward, dataset, params, as_json=False)


def test_grantee_pages_with_masks_and_row_filters_are_the_same_either_way(people, dataset, other_department):
    from tests.factories import MembershipFactory

    member = MembershipFactory(department=other_department, role="analyst").user
    grant(dataset, user=member, approved_by=people["steward"],
          fields={"id": "clear", "phone": "masked", "label": "pseudonymised", "amount": "clear"})
    grant(dataset, department=other_department, approved_by=people["steward"],
          fields={"phone": "clear", "at": "clear"}, row_filter=[{"field": "flag", "op": "eq", "value": True}])
    for params in ({"page_size": "4"}, {"page_size": "5", "order": "phone"}, {"page_size": "7", "order": "-at"}):
        pages = walk(member, dataset, params, as_json=True)
        assert pages == walk(member, dataset, params, as_json=False)
        assert sum(count for _, count in pages) == 23


def test_values_are_written_as_the_api_always_wrote_them(people, dataset):
    _, _, page = records.read_page(user=people["steward"], dataset=dataset, params={"page_size": "3"}, as_json=True)
    rows = json.loads(page.json) if page.json is not None else _drf(page)
    if connection.vendor == "postgresql":  # SQLite hands back the stored text as it is
        assert rows[1]["at"] == "2026-03-01T12:02:00.003000Z" and rows[2]["at"] == "2026-03-01T12:03:00Z"
    assert rows[0]["amount"] == 3.01 and rows[0]["flag"] is False and rows[0]["day"] == "2026-01-02"
    assert rows[0]["doc"] == {"n": 1, "tags": ["a", "\x01b"], "nested": {"ok": True}}
    assert rows[1]["label"] == 'Ünïcode "quoted" \\ line\nbreak 2\x01\x02\t'
    assert rows[0]["label"] == 'Ünïcode "quoted" \\ line\nbreak 1'


def test_a_page_without_rows_and_the_last_page_either_way(people, dataset):
    steward = people["steward"]
    for params in ({"page_size": "5", "id__gt": "100"}, {"page_size": "23"}, {"page_size": "22"}):
        assert walk(steward, dataset, params, as_json=True) == walk(steward, dataset, params, as_json=False)
    _, _, page = records.read_page(user=steward, dataset=dataset, params={"page_size": "5", "id__gt": "100"},
                                   as_json=True)
    assert page.row_count == 0 and page.next_cursor is None
    _, _, page = records.read_page(user=steward, dataset=dataset, params={"page_size": "23"}, as_json=True)
    assert page.row_count == 23 and page.next_cursor is None


def test_the_api_passes_the_database_json_through_and_keeps_its_shape(api, people, dataset):
    api.force_authenticate(user=people["steward"])
    response = api.get(f"/api/v1/datasets/{dataset.pk}/records/?page_size=2")
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert list(body) == ["dataset", "fields", "results", "next"]
    assert body["dataset"] == dataset.pk and len(body["results"]) == 2 and body["next"].startswith("http://")
    assert "Ünïcode" in response.content.decode("utf-8")  # not escaped, as DRF writes it
    # The browsable API still renders (from the Python rows).
    html = api.get(f"/api/v1/datasets/{dataset.pk}/records/?page_size=2", HTTP_ACCEPT="text/html")
    assert html.status_code == 200 and html["Content-Type"].startswith("text/html")


def _python_ndjson(user: Any, dataset: Any, params: dict[str, str]) -> list[dict[str, Any]]:
    """The export's rows as the Python path writes them (``iterate_rows`` and ``json.dumps``)."""
    view = records.effective_view(dataset=dataset, user=user)
    query = records.parse_query(view, params)
    table = records.store_table(dataset, fields=list(view.schema_fields.values()))
    out = []
    for row in records.iterate_rows(view, table, query):
        line = json.loads(json.dumps(dict(zip(query.fields, row, strict=True)), default=records._json_default))
        if isinstance(line.get("doc"), str):  # the jsonb text, see _drf above
            line["doc"] = json.loads(line["doc"])
        out.append(line)
    return out


@pytest.mark.parametrize("params", [{}, {"order": "-at"}, {"flag": "true", "order": "amount"}])
def test_ndjson_export_is_the_python_path_s(people, dataset, params):
    steward = people["steward"]
    body = b"".join(records.export_rows(user=steward, dataset=dataset, params=params, fmt="ndjson")).decode()
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines == _python_ndjson(steward, dataset, params)
    assert AuditEvent.objects.filter(action="records.export").latest("id").row_count == len(lines)


def test_masks_and_pseudonyms_in_every_export_are_the_python_ones(people, department):
    from exchange.records.selectors import mask, pseudonymise

    values = ["", "a", "ab", "abcd", "abcde", "Ünïcödé", "€€€€€", "+49 30 1234567", 'x"\\y\nz', None]
    ds = published_dataset(department, slug="masks", fields=[
        {"name": "id", "type": "integer", "is_key": True, "nullable": False, "sensitivity": "public"},
        {"name": "secret", "type": "text", "sensitivity": "personal"},
        {"name": "number", "type": "integer", "sensitivity": "personal"},
        {"name": "name", "type": "text", "sensitivity": "personal"},
    ])
    load_rows(ds, [{"id": i, "secret": v, "number": (i * 123457 if v else None), "name": v}
                   for i, v in enumerate(values)])
    user = people["outsider"]
    grant(ds, user=user, approved_by=people["steward"],
          fields={"id": "clear", "secret": "masked", "number": "masked", "name": "pseudonymised"})
    expected = [{"id": i, "secret": mask(v), "number": mask(i * 123457 if v else None), "name": pseudonymise(v)}
                for i, v in enumerate(values)]
    _, _, page = records.read_page(user=user, dataset=ds, params={"page_size": "100"}, as_json=True)
    assert (json.loads(page.json) if page.json is not None else _drf(page)) == expected
    ndjson = b"".join(records.export_rows(user=user, dataset=ds, params={}, fmt="ndjson")).decode()
    assert [json.loads(line) for line in ndjson.splitlines()] == expected
    csv_text = b"".join(records.export_rows(user=user, dataset=ds, params={}, fmt="csv")).decode()
    parsed = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["secret"] for r in parsed] == [mask(v) or "" for v in values]
