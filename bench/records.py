"""Benchmark of the read path: records pages and the streaming CSV export of a grant.

On PostgreSQL, a 1,000,000-row, 20-field dataset, and a grant of 5 fields (2 masked). Prints,
measured in the same run:

- raw: ``COPY (SELECT the same 5 columns) TO STDOUT`` (CSV), rows/s
- export: the exchange's streaming CSV export of the grantee's view, rows/s, and its ratio to raw
- export NDJSON: the same view as NDJSON (written by PostgreSQL), rows/s, and its ratio to the raw CSV
  and to a raw ``COPY`` of ``row_to_json`` of the same 5 columns
- page: a records page of 1,000 rows (first page and a deep page through the cursor), ms
- memory: peak Python allocation during the export (tracemalloc), MB
- audit, through the records API (a GET of the first 1,000-row page through Django's whole
  request handler, token authentication and JSON rendering included): the page with its audit
  event appended the default way (overlapped with rendering, see exchange/audit_writer.py),
  with it appended inline, and without it, interleaved (5 x --pages each); the ratios against
  the unaudited page are the cost of auditing
- audit, in the service alone (``records.read_page``, no HTTP, where the append is inline):
  with and without the event, and beside it a one-row INSERT committed on its own, the WAL
  flush every durable write waits for

Run: ``DATABASE_URL=postgres://… python -m bench.records [--rows N]`` (or ``make bench``); it works
in a scratch database ``<configured name>_bench_records`` next to the configured one and drops it
afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench.setup import configure, scratch_database


def build(rows: int) -> tuple[Any, Any]:
    """A published 20-field dataset with ``rows`` records and a grantee holding 5 fields."""
    from datetime import timedelta

    from django.contrib.auth.models import User
    from django.db import connection
    from django.utils import timezone

    from catalog.models import Dataset, DatasetStatus, Field, SchemaStatus, SchemaVersion
    from departments import services
    from departments.models import Department
    from exchange.access.models import Grant, GrantField, GrantStatus, PrincipalKind
    from exchange.records.store import ident, store_drop_table, store_ensure_table

    owner = Department.objects.filter(code="bench-owner").first() or services.department_create(
        actor=None, code="bench-owner", name="Bench owner")
    reader = User.objects.filter(username="bench-reader").first() or User.objects.create_user("bench-reader")
    steward = User.objects.filter(username="bench-steward").first() or User.objects.create_user("bench-steward")
    Dataset.objects.filter(slug="bench-records").update(current_schema=None)
    for old in Dataset.objects.filter(slug="bench-records"):
        store_drop_table(old.pk)
        Grant.objects.filter(dataset=old).delete()
        old.delete()

    dataset = Dataset.objects.create(department=owner, title="Bench records", slug="bench-records",
                                     description="Benchmark.", status=DatasetStatus.PUBLISHED)
    schema = SchemaVersion.objects.create(dataset=dataset, number=1, status=SchemaStatus.PUBLISHED)
    specs = [("id", "integer", True)] + [
        (f"t{i}", "text", False) for i in range(1, 8)] + [
        (f"n{i}", "integer", False) for i in range(1, 6)] + [
        (f"d{i}", "decimal", False) for i in range(1, 4)] + [
        ("day", "date", False), ("at", "timestamp", False), ("flag", "boolean", False), ("note", "text", False)]
    for pos, (name, ftype, key) in enumerate(specs):
        Field.objects.create(schema=schema, position=pos, name=name, type=ftype, is_key=key, nullable=not key,
                             sensitivity="personal" if name in ("t1", "t2") else "internal")
    dataset.current_schema = schema
    dataset.save()
    table = store_ensure_table(dataset)
    cols = [name for name, *_ in specs]
    exprs = ["g"] + [f"'text value ' || (g * {i})" for i in range(1, 8)] + [f"g * {i}" for i in range(1, 6)] + [
        f"(g * {i})::numeric / 100" for i in range(1, 4)] + [
        "DATE '2020-01-01' + (g %% 2000)", "TIMESTAMPTZ '2020-01-01' + g * INTERVAL '1 minute'", "g %% 2 = 0",
        "'note ' || g"]
    system = ["g", "md5(g::text)", "false", "now()", "now()"]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table.qualified} ({', '.join(ident(c) for c in cols)}, "
            f"{', '.join(ident(c) for c in ['_seq', '_hash', '_deleted', '_first_seen', '_last_seen'])}) "
            f"SELECT {', '.join(exprs + system)} FROM generate_series(1, %s) AS g", [rows])
        # Vacuumed, as a table long in use is: the first scan of fresh rows would set their
        # hint bits, and whichever case came first would pay for it.
        cursor.execute(f"VACUUM ANALYZE {table.qualified}")
    now = timezone.now()
    g = Grant.objects.create(
        dataset=dataset, principal_kind=PrincipalKind.USER, principal_user=reader, purpose="bench",
        legal_basis="bench", valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=1),
        status=GrantStatus.ACTIVE, approved_by=steward)
    for name, form in {"id": "clear", "t1": "masked", "t2": "masked", "n1": "clear", "d1": "clear"}.items():
        GrantField.objects.create(grant=g, field_name=name, form=form)
    del table
    return dataset, reader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=20)
    args = parser.parse_args(argv)
    configure()
    from django.db import connection

    if connection.vendor != "postgresql":
        print("bench.records needs PostgreSQL: set DATABASE_URL=postgres://…")
        return 2
    with scratch_database("records"):
        try:
            return _run(args)
        finally:
            from exchange.audit import writer as audit_writer

            audit_writer.shutdown()  # its connection would keep the scratch database from going


def _run(args: argparse.Namespace) -> int:
    from django.db import connection

    from exchange.records import selectors as records
    from exchange.records.store import ident, store_table

    t0 = time.perf_counter()
    dataset, reader = build(args.rows)
    print(f"built {args.rows:,} rows x 20 fields in {time.perf_counter() - t0:.1f} s")
    table = store_table(dataset)

    # Raw baseline: the database alone, the same five columns (no masking).
    raw_sql = (f"COPY (SELECT {', '.join(ident(c) for c in ['id', 't1', 't2', 'n1', 'd1'])} "
               f"FROM {table.qualified}) TO STDOUT WITH (FORMAT csv, HEADER)")
    connection.ensure_connection()

    def raw_csv() -> int:
        with connection.connection.cursor() as cursor, cursor.copy(raw_sql) as copy:
            return sum(len(block) for block in copy)

    # The same five columns as JSON lines, written by the database alone (row_to_json).
    names = ", ".join(f"x.{ident(c)}" for c in ["id", "t1", "t2", "n1", "d1"])
    raw_json_sql = (f"COPY (SELECT row_to_json(r) FROM {table.qualified} AS x "
                    f"CROSS JOIN LATERAL (SELECT {names}) AS r) "
                    f"TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')")

    def raw_json() -> int:
        with connection.connection.cursor() as cursor, cursor.copy(raw_json_sql) as copy:
            return sum(len(block) for block in copy)

    def export(fmt: str) -> Callable[[], int]:
        def run() -> int:
            return sum(len(chunk) for chunk in records.export_rows(user=reader, dataset=dataset, params={}, fmt=fmt))
        return run

    # Each one three times, interleaved so that all see the same machine; the best of each.
    timed: dict[str, list[float]] = {"raw": [], "raw_json": [], "csv": [], "ndjson": []}
    sizes: dict[str, int] = {}
    cases = {"raw": raw_csv, "raw_json": raw_json, "csv": export("csv"), "ndjson": export("ndjson")}
    for _ in range(3):
        for name, case in cases.items():
            t0 = time.perf_counter()
            sizes[name] = case()
            timed[name].append(time.perf_counter() - t0)
    raw_s, raw_json_s, export_s, ndjson_s = (min(timed[n]) for n in ("raw", "raw_json", "csv", "ndjson"))
    raw_bytes, export_bytes, ndjson_bytes = sizes["raw"], sizes["csv"], sizes["ndjson"]

    # Memory in a second pass: tracing allocations slows Python down, so not in the timed one.
    tracemalloc.start()
    for _chunk in records.export_rows(user=reader, dataset=dataset, params={}, fmt="ndjson"):
        pass
    _, ndjson_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _chunk in records.export_rows(user=reader, dataset=dataset, params={}, fmt="csv"):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    page_ms = []
    cursor_value = ""
    for _ in range(args.pages):
        params = {"page_size": "1000", **({"cursor": cursor_value} if cursor_value else {})}
        t0 = time.perf_counter()
        _view, _query, page = records.read_page(user=reader, dataset=dataset, params=params)
        page_ms.append((time.perf_counter() - t0) * 1000)
        cursor_value = page.next_cursor or ""
    deep_ms = []
    deep = records.encode_cursor(records.effective_view(dataset=dataset, user=reader), [args.rows - 5000])
    for _ in range(5):
        t0 = time.perf_counter()
        records.read_page(user=reader, dataset=dataset, params={"page_size": "1000", "cursor": deep})
        deep_ms.append((time.perf_counter() - t0) * 1000)

    # The cost of auditing a read: the same pages with the audit append switched off,
    # interleaved with audited ones so that both see the same machine.
    from unittest import mock

    # The floor: any durable write per page waits for one WAL flush, whatever it writes; a
    # one-row INSERT committed on its own, measured beside the pages, shows what that costs.
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_durable_write (id bigserial PRIMARY KEY, at timestamptz)")
    audited_ms: list[float] = []
    silent_ms: list[float] = []
    write_ms: list[float] = []
    # Every variant runs under the same patch (the real append, or one that does nothing), so
    # that the patching itself costs all of them alike.
    real_append = records.append_read

    def no_append(**event: Any) -> None:
        return None

    for i in range(args.pages * 5 * 2):
        audited = i % 2 == 0
        with mock.patch.object(records, "append_read", real_append if audited else no_append):
            t0 = time.perf_counter()
            records.read_page(user=reader, dataset=dataset, params={"page_size": "1000"})
            (audited_ms if audited else silent_ms).append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_durable_write (at) VALUES (now())")
        write_ms.append((time.perf_counter() - t0) * 1000)

    # The same, through the API: what a client waits for.
    from django.test import Client
    from knox.models import AuthToken

    _token, secret = AuthToken.objects.create(user=reader)
    client = Client(HTTP_AUTHORIZATION=f"Token {secret}")
    api_url = f"/api/v1/datasets/{dataset.pk}/records/?page_size=1000"
    assert client.get(api_url).status_code == 200
    # A JSON page appends its record in its own statement; "none" is the same statement
    # without the append.
    real_fetch = records.fetch_page_json

    def fetch_unaudited(view: Any, table: Any, query: Any, audit: Any = None) -> Any:
        return real_fetch(view, table, query)

    api_ms: dict[str, list[float]] = {"statement": [], "none": []}
    for i in range(args.pages * 5 * 2):
        variant = ("statement", "none")[i % 2]
        with mock.patch.object(records, "fetch_page_json", fetch_unaudited if variant == "none" else real_fetch):
            t0 = time.perf_counter()
            response = client.get(api_url)
            api_ms[variant].append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.content[:200]
    from exchange.audit.models import AuditEvent

    # Every audited request left its event.
    reads = AuditEvent.objects.filter(dataset_id=dataset.pk, action="records.read", details__owner=False)
    assert reads.count() >= len(api_ms["statement"])

    rows = args.rows
    print(f"raw COPY (5 columns)     {rows / raw_s:>12,.0f} rows/s   {raw_s:6.2f} s   {raw_bytes / 1e6:7.1f} MB")
    print(f"export CSV (policy)      {rows / export_s:>12,.0f} rows/s   {export_s:6.2f} s   "
          f"{export_bytes / 1e6:7.1f} MB   ratio {raw_s / export_s:5.2f} of raw (aim >= 0.60)")
    print(f"export NDJSON (policy)   {rows / ndjson_s:>12,.0f} rows/s   {ndjson_s:6.2f} s   "
          f"{ndjson_bytes / 1e6:7.1f} MB   ratio {raw_s / ndjson_s:5.2f} of raw CSV (aim >= 0.50), "
          f"{raw_json_s / ndjson_s:5.2f} of raw row_to_json COPY ({rows / raw_json_s:,.0f} rows/s)")
    print(f"records page of 1,000    median {statistics.median(page_ms):6.1f} ms   "
          f"p95 {sorted(page_ms)[int(len(page_ms) * 0.95) - 1]:6.1f} ms  (first {args.pages} pages, incl. audit)")
    print(f"deep page (cursor)       median {statistics.median(deep_ms):6.1f} ms")
    api_none = statistics.median(api_ms["none"])
    api_audited = statistics.median(api_ms["statement"])
    print(f"audit cost, records API  median {api_audited:6.1f} ms audited (in the page's statement) vs "
          f"{api_none:6.1f} ms not: {(api_audited - api_none) / api_none * 100:+.1f} % "
          f"({len(api_ms['statement'])} requests each, interleaved)")
    with_audit, without = statistics.median(audited_ms), statistics.median(silent_ms)
    print(f"audit cost, service only median {with_audit:6.1f} ms audited vs {without:6.1f} ms not: "
          f"{(with_audit - without) / without * 100:+.1f} % ({len(audited_ms)} pages each, interleaved); "
          f"a one-row durable INSERT alone: median {statistics.median(write_ms):.2f} ms")
    print(f"export peak Python memory: CSV {peak / 1e6:6.1f} MB, NDJSON {ndjson_peak / 1e6:6.1f} MB "
          f"(flat: independent of the row count)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
