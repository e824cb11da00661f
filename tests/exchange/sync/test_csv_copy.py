"""CSV files on PostgreSQL are typed and checked in SQL (``ingest.csv_into_stage``); the rows
SQL does not vouch for go through the Python path. The store, the quarantine and the watermark
must come out exactly as the Python path makes them (skipped on the SQLite run)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.db import connection as django_connection
from django.test.utils import CaptureQueriesContext

from exchange.sync import ingest
from exchange.sync.models import RunMode, RunStatus
from tests.exchange.sync.helpers import run_ingest, store_rows
from tests.sync_factories import published_dataset, upload_source

pytestmark = pytest.mark.django_db

FIELDS = [("k", "integer", True, "public"), ("i", "integer", False, "public"), ("d", "decimal", False, "public"),
          ("b", "boolean", False, "public"), ("dt", "date", False, "public"), ("ts", "timestamp", False, "public"),
          ("g", "geopoint", False, "public"), ("j", "json", False, "public"), ("t", "text", False, "public"),
          ("r", "text", False, "public")]
HEADER = ["k", "i", "d", "b", "dt", "ts", "g", "j", "t", "unmapped", "r"]
PLAIN = {"i": "7", "d": "1.50", "b": "true", "dt": "2024-02-01", "ts": "2024-02-01T10:00:00+00:00",
         "g": "48.1,11.5", "j": "", "t": "text", "unmapped": "u", "r": "required"}
TRICKY: dict[str, list[str]] = {
    "i": ["+7", "-0", "007", " 7", "7 ", "1_000", "١٢", "99999999999999999", "1.0", "x", "", "-", "--5", "5-", "-12",
          "999999999999999999", "-99999999999999999", "1-2"],
    "d": ["1.", ".5", "-.5", "+1e3", "1E-7", "1e999", "0.000", " 2.5", "1_000.5", "NaN", "Infinity", "1e", "", "--1",
          "-", ".", "-.", "1..2", "1.2.3", "-1.5", "5-", "12.340"],
    "b": ["TRUE", "Yes", "N", "0", " y", "2", "", "f"],
    "dt": ["2024-02-29", "2023-02-29", "2024-04-31", "2024-12-31", "2024-13-01", "0000-01-01", "0001-01-01",
           "20240201", "2024-02-01 ", "2024-02-01T00:00", "2000-02-29", "1900-02-29", "2024-00-10", "2024-06-00",
           "2-24-02-01", "９９９９-01-01"],
    "ts": ["2024-02-01 10:00", "2024-02-01T10:00:00.5", "2024-02-01T10:00:00.1234567", "2024-02-01T10:00:00Z",
           "2024-02-01T10:00:00+01", "2024-02-01T10:00:00+0130", "2024-02-01T10:00:00-14:59",
           "2024-10-27 02:30:00", "2024-03-31 02:30", "2024-02-01T24:00:00", "2024-02-01T10:00:60", "2024-02-01",
           "2024-02-29T23:59:59", "yesterday", "", "2024-02-01T10:00Z", "2024-02-01T10:00+0130",
           "2024-02-01T10:00:00.5+01", "2024-02-01T10:00:00+15", "2024-02-01T10:00:00+14:60",
           "2024-02-01T10:00:00+1400",
           "2023-02-29 10:00", "2000-02-29 00:00:00", "1900-02-29 00:00:00", "2024-02-01T10:00:00+14:59",
           "2024-02-01 10:00:00-00", "2024-02-01T10:00:00.000000", "2024-02-01T10:00:00z", "2024-02-01t10:00"],
    "g": ["48.1,11.5", "48.10,11.5", "( 48.1 , 11.5 )", "48.1234567,11.1", "48.12345,11.1", "123.4,1", "0.00001,0",
          "0.0001,0", "-0,0", "90,-180", "91,0", "1,181", "abc", "1,2,3", "1e1,2", "048.1,11", "48.1,11.5,",
          "-0.5,-0.25", "0,0", "-90,180", "89.99999,1", "0.00012,1", "100,1", "180.5,1", "1,180.5", "1.,2", ",1"],
    "j": ['{"a": 1}', "[1, 2]", "not json", "1"],
    "t": ["", "  spaced  ", "comma, and \"quotes\"", "line\nbreak", "carriage\rreturn", "back\\slash", "\\.", "Zoë"],
    "r": [""],
}


# Values PostgreSQL casts without error whose text is not always the plain form: the cheap
# checks (round trips) must send the others to Python.
CASTABLE: dict[str, list[str]] = {
    "i": ["+7", "-0", "007", " 7", "7 ", "9223372036854775807", "-12", ""],
    "d": ["1.", ".5", "-.5", "+1e3", "1E-7", "0.000", " 2.5", "NaN", "Infinity", "-Infinity", "nan", "12.340", "-0"],
    "dt": ["2024-02-29", "0001-01-01", "2024-02-01 ", " 2024-02-01", "today", "epoch", "infinity", "20240201",
           "Jan 8 2024", "1/8/2024"],
    "ts": ["2024-02-01 24:00:00", "2024-02-01T23:59:60", "2024-02-01 10:00", "2024-02-01T10:00:00Z",
           "2024-02-01T10:00:00.1234567", "2024-10-27 02:30:00", "2024-02-01T10:00:00+15:00", "now",
           "2024-02-01T10:00:00.5+01", "2024-02-01t10:00",
           # As PostgreSQL writes an instant in UTC (the round trip), and near misses of it.
           "2024-02-01 10:00:00+00", "2024-02-01 10:00:00.123456+00", "2024-02-01 10:00:00.50+00",
           "0999-02-01 10:00:00+00", "10000-01-01 00:00:00+00", "0001-01-01 00:00:00+00 BC",
           "2024-02-01 10:00:00+01", "2024-02-01 10:00:00.5-00"],
}


def _rows(*, ragged: bool = True, tricky: dict[str, list[str]] | None = None) -> list[list[str]]:
    rows = []
    k = 0
    for column, values in (tricky or TRICKY).items():
        for value in values:
            k += 1
            row = dict(PLAIN, k=str(k))
            row[column] = value
            rows.append([row[h] for h in HEADER])
    # A missing key, a key that is no integer, a duplicate key, a ragged row.
    rows.append(["", *rows[0][1:]])
    rows.append(["x1", *rows[0][1:]])
    rows.append(["3", *rows[0][1:]])
    if ragged:
        rows.append(["999", "1"])
    return rows


def _content(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows[:5])
    out.write("\n")  # a blank line is no record
    writer.writerows(rows[5:])
    # bytes not valid UTF-8, then a line CSV cannot parse
    return (out.getvalue().encode() + b"1000,1,1,true,2024-02-01,2024-02-01,1\xff,,t,u,r\n"
            + b'1001,"unterminated\n')


def _outcome(source: Any, run: Any) -> dict[str, Any]:
    ignore = {"_first_seen", "_last_seen", "_first_run", "_last_run", "_hash"}
    source.refresh_from_db()
    return {
        "counts": (run.status, run.rows_read, run.rows_inserted, run.rows_updated, run.rows_unchanged,
                   run.rows_deleted, run.rows_quarantined, run.seq_from, run.seq_to),
        "rows": [{k: v for k, v in r.items() if k not in ignore} for r in store_rows(source.dataset,
                                                                                      include_deleted=True)],
        "quarantine": sorted(run.quarantined.values_list("row_number", "reason", "raw")),
        "watermark": source.watermark_value,
    }


@pytest.fixture(autouse=True)
def postgres_only(settings, tmp_path):
    if django_connection.vendor != "postgresql":
        pytest.skip("the COPY path of CSV files is PostgreSQL's")
    settings.MEDIA_ROOT = tmp_path


def _plain_content(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    return out.getvalue().encode() + b"\r\n\r\n"  # blank lines at the very end are no records


def _not_plain(rows: list[list[str]], how: str) -> bytes:
    body = _plain_content([r for r in rows if len(r) == len(HEADER)]).replace(b"\r\n", b"\n")
    if how == "messy":  # a blank line, bytes not valid UTF-8, an unterminated quote at the end
        return _content(rows)
    if how == "quote inside a field":
        return body.replace(b",text,", b',te"xt,', 1)
    if how == "end-of-data mark":
        return body.replace(b"\n", b"\n\\.\n", 3)
    if how == "ragged":
        return body + b"1002,1\n"
    if how == "mixed line ends":
        return body.replace(b"\n", b"\r\n", 2)
    raise AssertionError(how)


def _compare(department: Any, monkeypatch: Any, content: bytes, *, by_postgres: bool) -> tuple[Any, Any]:
    """Ingest ``content`` once by the COPY path and once by the Python path; the two must agree."""
    by_sql = published_dataset(department=department, slug="by-sql", fields=FIELDS)
    by_python = published_dataset(department=department, slug="by-python", fields=FIELDS)
    mapping = {f[0]: f[0] for f in FIELDS}
    sources = [upload_source(dataset=d, content=content, mapping=mapping) for d in (by_sql, by_python)]
    from catalog.models import Field

    for s in sources:
        s.watermark_column = "ts"
        s.save()
        Field.objects.filter(schema__dataset=s.dataset, name="r").update(nullable=False)

    converted: list[int] = []
    real_convert, real_parse = ingest.convert_row, ingest._csv_parsed_by_python
    parsed_by_python: list[bool] = []

    def counting(plan: Any, raw: Any) -> Any:
        converted.append(raw.number)
        return real_convert(plan, raw)

    def parse(*args: Any, **kwargs: Any) -> Any:
        parsed_by_python.append(True)
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(ingest, "convert_row", counting)
    monkeypatch.setattr(ingest, "_csv_parsed_by_python", parse)
    with CaptureQueriesContext(django_connection) as queries:
        run_sql = run_ingest(sources[0])
    assert run_sql.status == RunStatus.SUCCEEDED, run_sql.error
    assert any("CREATE UNLOGGED TABLE" in q["sql"] and "_stage" in q["sql"] for q in queries.captured_queries)
    assert parsed_by_python == ([] if by_postgres else [True])
    # Only the rows SQL does not vouch for were converted in Python, and not every row.
    assert 0 < len(converted) <= run_sql.rows_read - 10

    monkeypatch.setattr(ingest, "csv_copy_eligible", lambda reader: False)
    run_python = run_ingest(sources[1])
    assert _outcome(sources[0], run_sql) == _outcome(sources[1], run_python)
    return run_sql, run_python


def test_a_plain_csv_parsed_and_typed_by_postgresql_matches_the_python_path(department, monkeypatch):
    run, _ = _compare(department, monkeypatch, _plain_content(_rows(ragged=False)), by_postgres=True)
    assert run.rows_quarantined > 20  # the tricky values did reach the quarantine


@pytest.mark.parametrize("how", ["messy", "quote inside a field", "end-of-data mark", "ragged", "mixed line ends"])
def test_a_csv_postgresql_may_parse_differently_is_parsed_by_python(department, monkeypatch, how):
    run, _ = _compare(department, monkeypatch, _not_plain(_rows(), how), by_postgres=False)
    assert run.rows_quarantined > 20


def test_castable_values_take_the_cheap_checks_and_still_match_the_python_path(department, monkeypatch):
    content = _plain_content(_rows(ragged=False, tricky=CASTABLE))
    with CaptureQueriesContext(django_connection) as queries:
        run, _ = _compare(department, monkeypatch, content, by_postgres=True)
    stages = [q["sql"] for q in queries.captured_queries
              if "CREATE UNLOGGED TABLE" in q["sql"] and "_stage" in q["sql"]]
    assert len(stages) == 1 and "btrim(" not in stages[0]  # the cheap checks, no second try
    assert run.rows_quarantined > 10


def test_a_field_longer_than_pythons_limit_sends_the_file_to_python(department, monkeypatch):
    """Python's csv module refuses fields beyond its limit; PostgreSQL's parser would take them."""
    limit = csv.field_size_limit(40)
    try:
        rows = _rows(ragged=False)
        rows[10][8] = "x" * 41
        run, _ = _compare(department, monkeypatch, _plain_content(rows), by_postgres=False)
        assert "field larger than field limit" in run.quarantined.get(row_number=11).reason
    finally:
        csv.field_size_limit(limit)


def test_csv_rerun_and_incremental_through_sql(department):
    rows = _rows()
    dataset = published_dataset(department=department, slug="rerun", fields=FIELDS)
    source = upload_source(dataset=dataset, content=_content(rows), mapping={f[0]: f[0] for f in FIELDS})
    first = run_ingest(source)
    again = run_ingest(source)
    assert again.status == RunStatus.SUCCEEDED, again.error
    assert (again.rows_inserted, again.rows_updated, again.rows_deleted) == (0, 0, 0)
    assert again.rows_unchanged == first.rows_inserted
    # Incremental: two rows changed; nothing is deleted.
    changed = [list(rows[0]), list(rows[1])]
    changed[0][2], changed[1][2] = "9.99", "8.88"
    from pathlib import Path

    from django.conf import settings

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([HEADER, *changed])
    (Path(settings.MEDIA_ROOT) / source.upload).write_text(out.getvalue())
    run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert (run.rows_read, run.rows_updated, run.rows_deleted) == (2, 2, 0), run.error
    stored = {r["k"]: r["d"] for r in store_rows(dataset)}
    assert (str(stored[1]), str(stored[2])) == ("9.99", "8.88")


def test_csv_work_tables_are_gone_after_a_run_and_a_leftover_is_replaced(department):
    rows = _rows()
    dataset = published_dataset(department=department, slug="leftover", fields=FIELDS)
    source = upload_source(dataset=dataset, content=_content(rows), mapping={f[0]: f[0] for f in FIELDS})
    with django_connection.cursor() as cursor:
        cursor.execute(f'CREATE TABLE exchange_store."ds_{dataset.pk}_csv" (half_written int)')
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    with django_connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'exchange_store' AND tablename LIKE %s",
                       [f"ds_{dataset.pk}%"])
        assert [r[0] for r in cursor.fetchall()] == [f"ds_{dataset.pk}"]


def _first_load_queries(queries: Any, dataset: Any) -> dict[str, bool]:
    """Which ways the CSV run took into the store, from its statements."""
    sql = [q["sql"] for q in queries.captured_queries]
    table = f'"exchange_store"."ds_{dataset.pk}'
    return {
        "stage logged": any(s.startswith(f"CREATE TABLE {table}_stage\" AS") for s in sql),
        "stage became the store": any(s.startswith(f"ALTER TABLE {table}_stage\" RENAME TO") for s in sql),
        "merged": any(s.startswith(f'INSERT INTO {table}" ') for s in sql),
        "duplicates searched": any("HAVING count(*) > 1" in s and f"{table}_stage" in s for s in sql),
    }


def _sources(department: Any, content: bytes, *slugs: str) -> list[Any]:
    mapping = {f[0]: f[0] for f in FIELDS}
    sources = []
    for slug in slugs:
        source = upload_source(dataset=published_dataset(department=department, slug=slug, fields=FIELDS),
                               content=content, mapping=mapping)
        source.watermark_column = "ts"
        source.save()
        sources.append(source)
    return sources


def _refused(*args: Any, **kwargs: Any) -> Any:
    raise ingest.FirstLoadRefused("refused by the test")


def test_a_csv_into_an_empty_store_is_a_first_load_that_matches_the_merge_and_the_python_path(
        department, monkeypatch):
    """No key repeats: the staging table, a logged one, takes the store's shape, is indexed and
    replaces the empty store. Store, counts, sequence numbers, quarantine and watermark come out as the
    merge of the same staging table (first load refused) and the Python path make them. Run
    again, into the stocked store, the file is merged, and changes nothing."""
    content = _plain_content(_rows(ragged=False)[:-1])  # without the row that repeats key 3
    loaded, merged, by_python = _sources(department, content, "loaded", "merged", "by-python")
    with CaptureQueriesContext(django_connection) as queries:
        run_loaded = run_ingest(loaded)
    assert _first_load_queries(queries, loaded.dataset) == {
        "stage logged": True, "stage became the store": True, "merged": False, "duplicates searched": False}
    assert run_loaded.rows_quarantined > 20 and run_loaded.rows_inserted > 20

    with monkeypatch.context() as m:
        m.setattr(ingest, "csv_first_load", _refused)
        with CaptureQueriesContext(django_connection) as queries:
            run_merged = run_ingest(merged)
    assert _first_load_queries(queries, merged.dataset)["merged"]
    with monkeypatch.context() as m:
        m.setattr(ingest, "csv_copy_eligible", lambda reader: False)
        run_python = run_ingest(by_python)
    assert _outcome(loaded, run_loaded) == _outcome(merged, run_merged) == _outcome(by_python, run_python)

    with CaptureQueriesContext(django_connection) as queries:
        again = run_ingest(loaded)
    assert _first_load_queries(queries, loaded.dataset) == {
        "stage logged": False, "stage became the store": False, "merged": True, "duplicates searched": True}
    assert (again.rows_inserted, again.rows_updated, again.rows_unchanged) == (0, 0, run_loaded.rows_inserted)
    first, second = _outcome(loaded, run_loaded), _outcome(loaded, again)
    assert second["rows"] == first["rows"] and second["quarantine"] == first["quarantine"]


def test_a_repeated_key_refuses_the_first_load_and_the_merge_quarantines_it(department, monkeypatch):
    """The primary key of the staging table finds the repeated key (no search beforehand); the run
    then merges the staging table as it was, with the quarantine the merge always made."""
    loaded, by_python = _sources(department, _plain_content(_rows(ragged=False)), "loaded", "by-python")
    with CaptureQueriesContext(django_connection) as queries:
        run = run_ingest(loaded)
    assert _first_load_queries(queries, loaded.dataset) == {
        "stage logged": True, "stage became the store": False, "merged": True, "duplicates searched": True}
    assert run.quarantined.filter(reason__startswith="duplicate key (k=3) within the run").count() == 1
    monkeypatch.setattr(ingest, "csv_copy_eligible", lambda reader: False)
    assert _outcome(loaded, run) == _outcome(by_python, run_ingest(by_python))
    with django_connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'exchange_store' AND tablename LIKE %s",
                       [f"ds_{loaded.dataset_id}%"])
        assert [r[0] for r in cursor.fetchall()] == [f"ds_{loaded.dataset_id}"]


def test_a_store_whose_columns_differ_from_the_schema_is_merged_without_loading(department, monkeypatch):
    """A required field whose store column still takes NULL (made required after the table was
    created): the staging table would not match the store, so it stays unlogged and is merged."""
    from catalog.models import Field

    (loaded,) = _sources(department, _plain_content(_rows(ragged=False)[:-1]), "loaded")
    Field.objects.filter(schema__dataset=loaded.dataset, name="r").update(nullable=False)
    with CaptureQueriesContext(django_connection) as queries:
        run = run_ingest(loaded)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert _first_load_queries(queries, loaded.dataset) == {
        "stage logged": False, "stage became the store": False, "merged": True, "duplicates searched": True}
