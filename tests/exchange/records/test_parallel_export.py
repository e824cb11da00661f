"""PostgreSQL writes an NDJSON export with parallel workers when the table is big enough: the
same rows, the same order when one is asked for, and the planner setting that allows it ends
with the export's own transaction, also when the client goes away mid-way."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest
from django.db import connection

from exchange.records import selectors as records
from tests.records_support import grant, load_rows, published_dataset

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="exports are written by PostgreSQL"),
]

FIELDS: list[dict[str, Any]] = [
    {"name": "id", "type": "integer", "is_key": True, "nullable": False, "sensitivity": "public"},
    {"name": "name", "type": "text", "sensitivity": "personal"},
    {"name": "amount", "type": "decimal", "sensitivity": "public"},
    {"name": "day", "type": "date", "sensitivity": "public"},
]
ROWS = 3000


@pytest.fixture
def setup(people: dict[str, Any], department: Any) -> tuple[Any, Any]:
    ds = published_dataset(department, slug="parallel", fields=FIELDS)
    load_rows(ds, [{"id": i, "name": f"Name {i} \"q\"", "amount": f"{i}.{i % 100:02d}",
                    "day": f"2026-0{1 + i % 9}-1{i % 10}"} for i in range(1, ROWS + 1)])
    analyst = people["outsider"]
    grant(ds, user=analyst, approved_by=people["steward"],
          fields={"id": "clear", "name": "masked", "amount": "clear", "day": "clear"})
    return ds, analyst


@pytest.fixture
def small_tables_go_parallel() -> Any:
    """A test table is far below the size where the planner considers workers at all, and
    a worker's start-up outweighs its rows; both set aside for the session."""
    with connection.cursor() as cursor:
        cursor.execute("SET min_parallel_table_scan_size = 0")
        cursor.execute("SET parallel_setup_cost = 0")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET min_parallel_table_scan_size")
        cursor.execute("RESET parallel_setup_cost")


def _plan(dataset: Any, user: Any, params: dict[str, str], fmt: str, *, export_settings: bool) -> str:
    view = records.effective_view(dataset=dataset, user=user)
    query = records.parse_query(view, params)
    table = records.store_table(dataset, fields=list(view.schema_fields.values()))
    sql, sql_params = records.export_query(view, table, query, fmt)
    raw = connection.connection
    with records.export_settings(raw, fmt) if export_settings else raw.transaction():
        with raw.cursor() as cursor:
            cursor.execute(f"EXPLAIN (COSTS OFF) {sql}", sql_params)
            return "\n".join(row[0] for row in cursor.fetchall())


def _setting() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('parallel_tuple_cost')")
        return cursor.fetchone()[0]


def test_the_ndjson_export_is_planned_with_workers_and_the_csv_export_is_not(setup, small_tables_go_parallel):
    ds, analyst = setup
    connection.ensure_connection()
    assert "Gather" not in _plan(ds, analyst, {}, "ndjson", export_settings=False)
    assert "Gather" in _plan(ds, analyst, {}, "ndjson", export_settings=True)
    # Ordered: the workers' sorted rows are merged in the order asked for.
    assert "Gather Merge" in _plan(ds, analyst, {"order": "-amount"}, "ndjson", export_settings=True)
    assert "Gather" not in _plan(ds, analyst, {}, "csv", export_settings=True)


def test_a_parallel_export_has_every_visible_row_once_and_keeps_an_asked_order(setup, small_tables_go_parallel):
    ds, analyst = setup
    before = _setting()
    body = b"".join(records.export_rows(user=analyst, dataset=ds, params={}, fmt="ndjson")).decode()
    lines = [json.loads(line) for line in body.splitlines()]
    assert sorted(line["id"] for line in lines) == list(range(1, ROWS + 1))
    by_id = {line["id"]: line for line in lines}
    assert by_id[7] == {"id": 7, "name": records.mask("Name 7 \"q\""), "amount": "7.07", "day": "2026-08-17"}

    body = b"".join(records.export_rows(user=analyst, dataset=ds, params={"order": "-amount"}, fmt="ndjson")).decode()
    ordered = [json.loads(line) for line in body.splitlines()]
    assert [line["id"] for line in ordered] == list(range(ROWS, 0, -1))
    assert ordered[ROWS - 7] == by_id[7]
    assert before != "0" and _setting() == before


def test_the_setting_ends_with_an_export_cut_short(setup, monkeypatch):
    ds, analyst = setup
    before = _setting()
    monkeypatch.setattr(records, "EXPORT_CHUNK_BYTES", 1024)
    stream = records.export_rows(user=analyst, dataset=ds, params={}, fmt="ndjson")
    assert isinstance(stream, Generator)
    first = next(stream)
    assert 0 < first.count(b"\n") < ROWS
    stream.close()  # the client went away
    assert before != "0" and _setting() == before
    assert connection.connection.info.transaction_status == 0  # idle: nothing left open
    # The connection serves the next export as usual.
    body = b"".join(records.export_rows(user=analyst, dataset=ds, params={}, fmt="ndjson"))
    assert body.count(b"\n") == ROWS
