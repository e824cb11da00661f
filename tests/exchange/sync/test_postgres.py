"""Ingest from a real PostgreSQL source database (skipped on the SQLite run)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection as django_connection

from exchange.sync import runs
from exchange.sync.models import Run, RunMode, RunStatus, Source
from tests.exchange.sync.helpers import extra_pg_database, pg_execute, run_ingest, store_rows
from tests.sync_factories import connection, identity_mapping, permit_rows, published_dataset

pytestmark = pytest.mark.django_db

CREATE = ("CREATE TABLE permits (permit_id bigint PRIMARY KEY, address text, applicant text, fee numeric, "
          "approved boolean, issued_on date, updated_at timestamptz)")
INSERT = "INSERT INTO permits VALUES (%s, %s, %s, %s, %s, %s, %s)"


@pytest.fixture
def source_db():
    if django_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL sources are tested on the PostgreSQL run")
    with extra_pg_database("wt_sync_src") as dsn:
        pg_execute(dsn, CREATE)
        pg_execute(dsn, INSERT, many=permit_rows(100))
        yield dsn


@pytest.fixture
def source(department, source_db):
    dataset = published_dataset(department=department)
    conn = connection(department=department, kind="postgresql", secret=source_db)
    return Source.objects.create(dataset=dataset, connection=conn, table="permits", mapping=identity_mapping(),
                                 watermark_column="updated_at")


def test_full_then_incremental_by_watermark(source, source_db):
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.rows_inserted == 100 and run.rows_total_estimate is not None or run.rows_total_estimate is None
    source.refresh_from_db()
    assert source.watermark_value.startswith("2024-02-01")
    pg_execute(source_db, "UPDATE permits SET fee = 1, updated_at = now() WHERE permit_id <= 3")
    pg_execute(source_db, "DELETE FROM permits WHERE permit_id = 50")
    run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert (run.rows_read, run.rows_updated, run.rows_inserted, run.rows_deleted) == (3, 3, 0, 0)
    run = run_ingest(source)  # a full run notices the deletion
    assert (run.rows_read, run.rows_updated, run.rows_deleted, run.rows_unchanged) == (99, 0, 1, 99)
    assert 50 not in {r["permit_id"] for r in store_rows(source.dataset)}


def test_retyped_source_column_fails_with_a_clear_message(source, source_db, people):
    pg_execute(source_db, "ALTER TABLE permits ALTER COLUMN fee TYPE text")
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED
    assert "fee is text at the source, field fee is decimal" in run.error
    assert people["steward"].notifications.filter(subject__contains="no longer matches its schema").exists()


def test_missing_source_table(source, source_db):
    pg_execute(source_db, "DROP TABLE permits")
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED and "'permits' does not exist" in run.error


def test_query_sources_are_read_only(source, source_db):
    source.table = ""
    source.query = "SELECT * FROM permits WHERE permit_id <= 10"
    source.save()
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED and run.rows_inserted == 10
    source.query = "DELETE FROM permits RETURNING *"
    source.save()
    assert "read-only SELECT" in run_ingest(source).error
    source.query = "SELECT 1; DROP TABLE permits"
    source.save()
    assert "exactly one SELECT" in run_ingest(source).error
    # A data-modifying CTE passes the parser but not the READ ONLY transaction.
    source.query = "WITH d AS (DELETE FROM permits RETURNING *) SELECT * FROM d"
    source.save()
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED
    pg_execute(source_db, "SELECT 1")
    import psycopg

    with psycopg.connect(source_db) as conn:
        assert conn.execute("SELECT count(*) FROM permits").fetchone() == (100,)


def test_overlapping_run_is_skipped(source):
    running = Run.objects.create(kind="ingest", source=source, dataset=source.dataset, status=RunStatus.RUNNING)
    run = run_ingest(source)
    assert run.status == RunStatus.SKIPPED and f"run #{running.pk}" in run.error
    assert store_rows(source.dataset) == []
    assert runs.run_claim(run_id=run.pk) is None


def test_bulk_path_checks_keys_required_values_and_points_in_sql(department, source_db):
    fields = [("site_id", "integer", True, "public"), ("name", "text", False, "public"),
              ("location", "geopoint", False, "public")]
    from catalog.models import Field

    dataset = published_dataset(department=department, slug="sites", fields=fields)
    Field.objects.filter(schema_id=dataset.current_schema_id, name="name").update(nullable=False)
    pg_execute(source_db, "CREATE TABLE sites (site_id bigint, name text, location text)")
    pg_execute(source_db, "INSERT INTO sites VALUES (%s, %s, %s)", many=[
        (1, "Depot", "48.1,11.5"), (None, "No key", "48.1,11.5"), (3, None, "48.2,11.6"),
        (4, "Nowhere", "north of here"), (5, "Too far", "95,11"), (6, "Fine", None), (1, "Again", "1,1"),
    ])
    conn = connection(department=department, kind="postgresql", secret=source_db, name="sites db")
    source = Source.objects.create(dataset=dataset, connection=conn, table="sites",
                                   mapping={"site_id": "site_id", "name": "name", "location": "location"})
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.rows_read, run.rows_inserted, run.rows_quarantined) == (7, 2, 5)
    reasons = dict(run.quarantined.values_list("row_number", "reason"))
    assert reasons[2] == "missing key site_id" and reasons[3] == "missing required name"
    assert "not a point" in reasons[4] and "not a point" in reasons[5]
    assert "duplicate key (site_id=1)" in reasons[7]
    assert run.quarantined.get(row_number=4).raw["location"] == "north of here"
    assert [r["site_id"] for r in store_rows(dataset)] == [1, 6]


def _store_indexes(dataset) -> set[str]:
    from exchange.records.store import store_table

    table = store_table(dataset)
    with django_connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename LIKE %s",
                       [table.schema, f"{table.name}%"])
        return {r[0] for r in cursor.fetchall()}


def test_first_load_copies_into_a_new_table_that_replaces_the_empty_store(source, source_db):
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(django_connection) as queries:
        run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.rows_read, run.rows_inserted, run.rows_quarantined, run.seq_from, run.seq_to) == (100, 100, 0, 1, 100)
    assert not any("INSERT INTO \"exchange_store\"" in q["sql"] for q in queries.captured_queries)  # no merge
    table = f"ds_{source.dataset_id}"
    # The same shape and index names as a store created by the exchange, and nothing left over.
    assert _store_indexes(source.dataset) == {f"{table}_pkey", f"{table}_seq"}
    rows = store_rows(source.dataset)
    assert [r["permit_id"] for r in rows] == list(range(1, 101))
    assert {(r["_first_run"], r["_last_run"], r["_deleted"]) for r in rows} == {(run.pk, run.pk, False)}
    assert sorted(r["_seq"] for r in rows) == list(range(1, 101))
    source.refresh_from_db()
    assert source.watermark_value.startswith("2024-02-01")
    # A second full run compares the values themselves: nothing changed, nothing rewritten.
    again = run_ingest(source)
    assert (again.rows_unchanged, again.rows_updated, again.rows_inserted, again.seq_from) == (100, 0, 0, None)
    pg_execute(source_db, "UPDATE permits SET fee = fee + 0.000 WHERE permit_id = 1")  # 1.0 = 1.000 as numbers
    pg_execute(source_db, "UPDATE permits SET applicant = NULL WHERE permit_id = 2")
    again = run_ingest(source)
    assert (again.rows_unchanged, again.rows_updated, again.seq_from) == (99, 1, 101)
    assert store_rows(source.dataset)[1]["applicant"] is None


def test_a_load_table_left_by_a_killed_worker_is_replaced(source):
    from exchange.records.store import ident, store_ensure_table

    table = store_ensure_table(source.dataset)
    with django_connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {ident(table.schema, table.name + '_load')} (half_written int)")
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED and run.rows_inserted == 100
    assert _store_indexes(source.dataset) == {f"{table.name}_pkey", f"{table.name}_seq"}


def test_a_refused_first_load_starts_over_on_the_staged_path_with_nothing_left(department, source_db):
    dataset = published_dataset(department=department, slug="dupes")
    pg_execute(source_db, "CREATE TABLE permits_copy (LIKE permits)")  # no primary key
    pg_execute(source_db, "INSERT INTO permits_copy SELECT * FROM permits")
    pg_execute(source_db, "INSERT INTO permits_copy SELECT * FROM permits WHERE permit_id = 70")
    conn = connection(department=department, kind="postgresql", secret=source_db, name="copy db")
    source = Source.objects.create(dataset=dataset, connection=conn, table="permits_copy", mapping=identity_mapping())
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    # Counted once: the refused load's progress was reset before reading again.
    assert (run.rows_read, run.rows_inserted, run.rows_quarantined) == (101, 100, 1)
    assert "duplicate key (permit_id=70)" in run.quarantined.get().reason
    assert _store_indexes(dataset) == {f"ds_{dataset.pk}_pkey", f"ds_{dataset.pk}_seq"}


def test_duplicate_search_is_skipped_only_when_the_source_key_is_unique(source, source_db, department):
    from django.test.utils import CaptureQueriesContext

    run_ingest(source)  # first load
    with CaptureQueriesContext(django_connection) as queries:
        assert run_ingest(source).status == RunStatus.SUCCEEDED
    assert not any("HAVING count(*) > 1" in q["sql"] for q in queries.captured_queries)
    pg_execute(source_db, "ALTER TABLE permits DROP CONSTRAINT permits_pkey")
    pg_execute(source_db, "INSERT INTO permits SELECT * FROM permits WHERE permit_id = 5")
    with CaptureQueriesContext(django_connection) as queries:
        run = run_ingest(source)
    assert any("HAVING count(*) > 1" in q["sql"] for q in queries.captured_queries)
    assert (run.rows_read, run.rows_unchanged, run.rows_quarantined) == (101, 100, 1)


def test_first_load_checks_points_once_loaded_and_leaves_no_check_behind(department, source_db):
    fields = [("site_id", "integer", True, "public"), ("location", "geopoint", False, "public"),
              ("entrance", "geopoint", False, "public")]
    dataset = published_dataset(department=department, slug="sites", fields=fields)
    pg_execute(source_db, "CREATE TABLE sites (site_id bigint PRIMARY KEY, location text, entrance text)")
    pg_execute(source_db, "INSERT INTO sites VALUES (%s, %s, %s)",
               many=[(1, "48.1,11.5", " 48.2 , 11.6 "), (2, None, "-33.9,151.2")])
    conn = connection(department=department, kind="postgresql", secret=source_db, name="sites db")
    source = Source.objects.create(dataset=dataset, connection=conn, table="sites",
                                   mapping={"site_id": "site_id", "location": "location", "entrance": "entrance"})
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(django_connection) as queries:
        run = run_ingest(source)
    assert (run.status, run.rows_inserted, run.rows_quarantined) == (RunStatus.SUCCEEDED, 2, 0)
    # A missing point is no bad point: the first load took the rows, no merge was needed.
    assert not any('INSERT INTO "exchange_store"' in q["sql"] for q in queries.captured_queries)
    with django_connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
                       [f"exchange_store.ds_{dataset.pk}"])
        assert cursor.fetchone()[0] == 0  # the store keeps no load-time checks
    # A bad point in a fresh store: the load is refused and the staged path quarantines the row.
    other = published_dataset(department=department, slug="sites-2", fields=fields)
    pg_execute(source_db, "INSERT INTO sites VALUES (3, '91,0', NULL)")
    source2 = Source.objects.create(dataset=other, connection=conn, table="sites", mapping=source.mapping)
    run = run_ingest(source2)
    assert (run.status, run.rows_read, run.rows_inserted, run.rows_quarantined) == (RunStatus.SUCCEEDED, 3, 2, 1)
    assert "not a point" in run.quarantined.get().reason


# Every source column type that maps to a field type, each to its natural field type.
TYPED_COLUMNS = [  # (source column, its type, field type)
    ("f4", "real", "decimal"), ("f8", "double precision", "decimal"), ("i2", "smallint", "integer"),
    ("i4", "integer", "integer"), ("n", "numeric", "decimal"), ("t", "text", "text"), ("vc", "varchar(20)", "text"),
    ("ch", "char(5)", "text"), ("b", "boolean", "boolean"), ("d", "date", "date"), ("ts", "timestamp", "timestamp"),
    ("tz", "timestamptz", "timestamp"), ("u", "uuid", "text"), ("j", "json", "json"), ("jb", "jsonb", "json"),
]
TYPED_ROWS = [
    (1, 0.1, 0.1, -32768, 2147483647, "12.50", "Zoë", "short", "ab", True, "2024-02-29", "2024-07-01 12:30:00",
     "2024-07-01 12:30:00+02", "8c1d4c8e-9a57-4c5f-b1b5-0d0c3f1a2b3c", '{"a": [1, 2]}', '{"b": {"c": null}}'),
    # 02:30 on the morning the clocks go back happens twice: read as the first, like Python does.
    (2, 1e20, 1.5e-7, 0, 0, "-0.001", "", None, None, False, "1999-12-31", "2024-10-27 02:30:00",
     "2024-10-27 02:30:00+00", None, "[]", "1"),
    (3, None, 123456789.125, None, None, None, None, None, None, None, None, "2024-03-31 02:30:00", None, None,
     None, None),
]


@pytest.fixture
def typed_source(department, source_db):
    fields = [("k", "integer", True, "public")] + [(c, f, False, "public") for c, _, f in TYPED_COLUMNS]
    dataset = published_dataset(department=department, slug="typed", fields=fields)
    pg_execute(source_db, "CREATE TABLE typed (k bigint PRIMARY KEY, "
               + ", ".join(f"{c} {t}" for c, t, _ in TYPED_COLUMNS) + ")")
    pg_execute(source_db, f"INSERT INTO typed VALUES ({', '.join(['%s'] * len(fields))})", many=TYPED_ROWS)
    conn = connection(department=department, kind="postgresql", secret=source_db, name="typed db")
    return Source.objects.create(dataset=dataset, connection=conn, table="typed",
                                 mapping={f[0]: f[0] for f in fields}, watermark_column="ts")


@pytest.fixture
def python_path_refused(monkeypatch):
    """Any row converted in Python fails the run: a test using this proves the bulk path."""
    from exchange.sync import ingest

    def refuse(*args, **kwargs):
        raise AssertionError("a row went through the per-value Python path")

    monkeypatch.setattr(ingest, "read_into_stage", refuse)
    monkeypatch.setattr(ingest, "convert_row", refuse)


def _expected_typed() -> list[dict[str, Any]]:
    """What the per-value Python converters make of the rows, for the bulk path to match;
    floats are read as the shortest decimal that reads back as the same float."""
    from decimal import Decimal

    from exchange.sync.convert import CONVERTERS

    expected = []
    for row in TYPED_ROWS:
        values: dict[str, Any] = {"k": row[0]}
        for (column, sql_type, field_type), value in zip(TYPED_COLUMNS, row[1:], strict=True):
            if value is None or value == "":
                values[column] = None if value is None else ""
            elif sql_type == "real":
                values[column] = Decimal(str(value))  # 0.1 as PostgreSQL prints a real
            elif sql_type == "char(5)":
                values[column] = value.ljust(5)
            elif sql_type in ("json", "jsonb"):
                import json

                values[column] = json.loads(value)  # compared as documents
            elif sql_type == "timestamptz":
                from datetime import datetime

                values[column] = CONVERTERS[field_type](datetime.fromisoformat(value))
            else:
                values[column] = CONVERTERS[field_type](value)
        expected.append(values)
    return expected


def test_every_mapped_column_type_takes_the_bulk_path(typed_source, source_db, python_path_refused):
    from exchange.sync.readers import open_source

    with open_source(typed_source) as reader:
        assert {c: reader.pg_types[c] for c, _, _ in TYPED_COLUMNS} == {
            "f4": "float4", "f8": "float8", "i2": "int2", "i4": "int4", "n": "numeric", "t": "text",
            "vc": "varchar", "ch": "bpchar", "b": "bool", "d": "date", "ts": "timestamp", "tz": "timestamptz",
            "u": "uuid", "j": "json", "jb": "jsonb"}
    run = run_ingest(typed_source)  # the first load
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.rows_inserted, run.rows_quarantined) == (3, 0)
    rows = store_rows(typed_source.dataset)
    expected = _expected_typed()
    import json

    for got, want in zip(rows, expected, strict=True):
        got = {k: json.loads(got[k]) if k in ("j", "jb") and got[k] is not None else got[k] for k in want}
        assert got == want
    # The wall time 2024-10-27 02:30 in Berlin happened first at 00:30 UTC; 02:30 on 31 March did
    # not happen at all (read with the offset before the change, 01:30 UTC), as in Python.
    assert rows[1]["ts"].isoformat() == "2024-10-27T00:30:00+00:00"
    assert rows[2]["ts"].isoformat() == "2024-03-31T01:30:00+00:00"
    typed_source.refresh_from_db()
    assert typed_source.watermark_value == "2024-10-27T02:30:00"  # the source's wall time, no zone

    # The staged bulk path (a store that is not empty) reads them the same: nothing changed.
    run = run_ingest(typed_source)
    assert (run.status, run.rows_unchanged, run.rows_updated) == (RunStatus.SUCCEEDED, 3, 0), run.error
    # Incremental by the naive timestamp watermark: only the row after it.
    pg_execute(source_db, "INSERT INTO typed (k, f8, ts) VALUES (4, 2.5, '2024-10-27 02:45:00'), "
                          "(5, 3.5, '2024-10-27 01:00:00')")
    run = run_ingest(typed_source, mode=RunMode.INCREMENTAL)
    assert (run.status, run.rows_read, run.rows_inserted) == (RunStatus.SUCCEEDED, 1, 1), run.error
    assert store_rows(typed_source.dataset)[-1]["k"] == 4


def test_floats_that_are_no_numbers_are_quarantined_in_sql(typed_source, source_db, python_path_refused):
    pg_execute(source_db, "INSERT INTO typed (k, f4, f8, n) VALUES (7, 'NaN', 1, 1), (8, 1, '-Infinity', 1), "
                          "(9, 1, 1, 'Infinity'), (10, 1, 1, 2)")
    run = run_ingest(typed_source)  # refused as a first load, then staged: still the bulk path
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.rows_read, run.rows_inserted, run.rows_quarantined) == (7, 4, 3)
    reasons = dict(run.quarantined.values_list("row_number", "reason"))
    assert sorted(reasons.values()) == ["f4: not a finite number (NaN or infinity)",
                                        "f8: not a finite number (NaN or infinity)",
                                        "n: not a finite number (NaN or infinity)"]
    assert [r["k"] for r in store_rows(typed_source.dataset)] == [1, 2, 3, 10]


def test_an_incremental_run_that_only_updates_skips_the_insert_pass(source, source_db):
    from django.test.utils import CaptureQueriesContext

    run_ingest(source)
    pg_execute(source_db, "UPDATE permits SET fee = fee + 1, updated_at = now() WHERE permit_id <= 3")
    with CaptureQueriesContext(django_connection) as queries:
        run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert (run.rows_read, run.rows_updated, run.rows_inserted) == (3, 3, 0), run.error
    assert not any('INSERT INTO "exchange_store"' in q["sql"] for q in queries.captured_queries)
    # A new row among the changed ones: the insert pass runs and finds it.
    pg_execute(source_db, "UPDATE permits SET fee = fee + 1, updated_at = now() WHERE permit_id = 4")
    pg_execute(source_db, "INSERT INTO permits VALUES (500, 'New Street 1', 'New', 1, true, '2024-01-01', now())")
    run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert (run.rows_read, run.rows_updated, run.rows_inserted) == (2, 1, 1), run.error
    assert 500 in {r["permit_id"] for r in store_rows(source.dataset)}
