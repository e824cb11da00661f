"""Benchmark of the sync engine on PostgreSQL (not a test): ``python -m bench.sync``.

Against the database named by DATABASE_URL (migrated here if needed), with two scratch
databases next to it for the source and the target (created and dropped by the run):

(a) the raw limit: ``COPY (SELECT …) TO STDOUT`` piped into ``COPY … FROM STDIN``
(b) a full ingest of the source table into the store
(c) a full delivery of 5 granted fields to the target
(d) an incremental ingest (watermark) after 1% of the source rows changed
(e) the incremental delivery of those changes
(j) a full re-ingest of the same rows (nothing changed) and (k) the same with 10 quality rules
    (each twice, alternating; the best of each)
(f) the raw pipe again, for the same table with its three decimal columns as ``double precision``
(g) a full ingest of that table, as a plain *table* source (the bulk path takes floats)
(h) the raw limit of a file: ``COPY … FROM STDIN (FORMAT csv)`` of the same rows, as a CSV file
(i) a full ingest of that file, uploaded as a CSV source

Each phase runs in a forked child process, so its peak resident memory (ru_maxrss) is that
of a worker doing only that job. ``--rows`` makes it small for a quick look;
``--only-incremental`` runs only (a), (b) and (d), for the incremental ingest's share. That
share is measured ``--rounds`` times (3 by default), each round a full ingest of a new dataset
and an incremental one after another 1% changed, and printed with its median.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.utils import timezone  # noqa: E402

from catalog.models import Dataset, Field, SchemaVersion  # noqa: E402
from departments.models import Department  # noqa: E402
from exchange.access.models import Grant, GrantField  # noqa: E402
from exchange.records.store import store_drop_table, store_ensure_table  # noqa: E402
from exchange.sync import runs, secrets  # noqa: E402
from exchange.sync.models import Connection, Run, RunStatus, Source, Subscription  # noqa: E402

FIELDS: list[tuple[str, str, str]] = [  # (name, field type, source column type)
    ("id", "integer", "bigint"), ("name", "text", "text"), ("street", "text", "text"),
    ("district", "text", "text"), ("category", "text", "text"), ("status", "text", "text"),
    ("note", "text", "text"), ("amount", "decimal", "numeric"), ("fee", "decimal", "numeric"),
    ("area", "decimal", "numeric"), ("count_a", "integer", "bigint"), ("count_b", "integer", "bigint"),
    ("count_c", "integer", "bigint"), ("flag_a", "boolean", "boolean"), ("flag_b", "boolean", "boolean"),
    ("day_a", "date", "date"), ("day_b", "date", "date"), ("created_at", "timestamp", "timestamptz"),
    ("geo", "geopoint", "text"), ("updated_at", "timestamp", "timestamptz"),
]
GRANTED = ["id", "district", "category", "amount", "day_a"]
# Ten rules of every kind that reads the staged rows, and two on the dataset (catalog/quality.py).
QUALITY_RULES: list[dict[str, Any]] = [
    {"check": "not_null", "field": "name", "severity": "warning"},
    {"check": "range", "field": "amount", "min": "0", "max": "100", "severity": "blocking"},
    {"check": "allowed", "field": "category", "values": ["roads", "parks", "water", "housing"], "severity": "blocking"},
    {"check": "allowed", "field": "status", "values": ["open", "closed"], "severity": "warning"},
    {"check": "pattern", "field": "street", "pattern": "^[0-9]+ Main Street$", "severity": "warning"},
    {"check": "max_length", "field": "note", "max_length": 39, "severity": "warning"},
    {"check": "unique", "field": "name", "severity": "warning"},
    {"check": "range", "field": "day_a", "min": "2020-01-01", "severity": "warning"},
    {"check": "row_count", "min": 1000, "severity": "blocking"},
    {"check": "freshness", "field": "updated_at", "max_age_hours": 24, "severity": "warning"},
]
GENERATE = """
INSERT INTO bench_source SELECT g, 'Name ' || g, g || ' Main Street', 'District ' || (g %% 20),
  (ARRAY['roads','parks','water','housing'])[1 + g %% 4], (ARRAY['open','closed','pending'])[1 + g %% 3],
  repeat('x', (g %% 40)), (g %% 10000) / 100.0, (g %% 777) * 1.5, (g %% 3000) / 7.0, g %% 1000, g %% 97, g * 3,
  g %% 2 = 0, g %% 3 = 0, date '2020-01-01' + (g %% 1500), date '2021-06-01' + (g %% 700),
  timestamptz '2022-01-01 00:00:00+00' + g * interval '1 second',
  (48 + (g %% 1000) / 10000.0)::float8::text || ',' || (11 + (g %% 1000) / 10000.0)::float8::text,
  timestamptz '2023-01-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, %s) g
"""


def dsn_of(dbname: str) -> str:
    s = connection.settings_dict
    auth = s.get("USER") or "postgres"
    if s.get("PASSWORD"):
        auth += ":" + s["PASSWORD"]
    return f"postgresql://{auth}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{dbname}"


def admin(sql: str) -> None:
    with psycopg.connect(dsn_of("postgres"), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def in_child(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Run ``fn`` in a forked process: (its result, seconds, peak RSS in KiB)."""
    connections.close_all()
    ctx = get_context("fork")
    parent, child = ctx.Pipe()

    def target() -> None:
        started = time.perf_counter()
        result = fn()
        child.send((result, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
        connections.close_all()

    process = ctx.Process(target=target)
    process.start()
    result = parent.recv()
    process.join()
    return result


def setup(rows: int, src: str) -> tuple[Source, Subscription]:
    call_command("migrate", verbosity=0)
    owner_group, _ = Group.objects.get_or_create(name="department:bench-owner")
    owner, _ = Department.objects.get_or_create(code="bench-owner", defaults={
        "name": "Bench owner", "slug": "bench-owner", "group": owner_group})
    reader_group, _ = Group.objects.get_or_create(name="department:bench-reader")
    reader, _ = Department.objects.get_or_create(code="bench-reader", defaults={
        "name": "Bench reader", "slug": "bench-reader", "group": reader_group})
    approver, _ = User.objects.get_or_create(username="bench-approver")
    dataset = bench_dataset(owner)
    slug = dataset.slug
    src_conn = Connection.objects.create(department=owner, name=f"src {slug}", kind="postgresql",
                                         secret_encrypted=secrets.encrypt(dsn_of(src)), redacted=src)
    source = Source.objects.create(dataset=dataset, connection=src_conn, table="bench_source",
                                   mapping={n: n for n, _, _ in FIELDS}, watermark_column="updated_at")
    grant = Grant.objects.create(dataset=dataset, principal_kind="department", principal_department=reader,
                                 purpose="Benchmark", legal_basis="-", valid_from=timezone.now() - timedelta(days=1),
                                 valid_until=timezone.now() + timedelta(days=1), status="active", approved_by=approver)
    for name in GRANTED:
        GrantField.objects.create(grant=grant, field_name=name, form="clear")
    return source, Subscription(dataset=dataset, department=reader, target_table="bench_delivery")


def bench_dataset(owner: Department) -> Dataset:
    slug = f"bench-{uuid.uuid4().hex[:8]}"
    dataset = Dataset.objects.create(department=owner, title="Bench", slug=slug, description="Benchmark.")
    schema = SchemaVersion.objects.create(dataset=dataset, number=1, status="published", published_at=timezone.now())
    for i, (name, type_, _) in enumerate(FIELDS):
        Field.objects.create(schema=schema, position=i, name=name, type=type_, is_key=name == "id",
                             nullable=name != "id", sensitivity="internal")
    dataset.current_schema, dataset.status = schema, "published"
    dataset.save()
    store_ensure_table(dataset)
    return dataset


def run_job(**job: Any) -> Callable[[], dict[str, Any]]:
    def go() -> dict[str, Any]:
        run = Run.objects.create(dataset_id=(job.get("source") or job["subscription"]).dataset_id, **job)
        runs.execute(run_id=run.pk)
        run.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED:
            raise SystemExit(f"{run.kind} run failed: {run.error}")
        return {"read": run.rows_read, "inserted": run.rows_inserted, "updated": run.rows_updated,
                "unchanged": run.rows_unchanged}
    return go


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch databases and the store table.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="how many times the incremental share is measured, each time on a new dataset")
    parser.add_argument("--only-incremental", action="store_true",
                        help="Only (a), (b) and (d): the incremental ingest's share of the full one, quickly.")
    args = parser.parse_args(argv)
    if connection.vendor != "postgresql":
        sys.exit("The benchmark needs PostgreSQL: set DATABASE_URL.")
    rows = args.rows
    base = connection.settings_dict["NAME"]
    src, tgt = f"{base}_bench_src", f"{base}_bench_tgt"
    for db in (src, tgt):
        admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin(f'CREATE DATABASE "{db}"')
    columns = ", ".join(f"{n} {t}" for n, _, t in FIELDS[1:])
    with psycopg.connect(dsn_of(src), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE bench_source (id bigint PRIMARY KEY, {columns})")  # type: ignore[arg-type]
        started = time.perf_counter()
        conn.execute(GENERATE, [rows])  # type: ignore[arg-type]
        # A watermark column is indexed in any source that is read incrementally.
        conn.execute("CREATE INDEX ON bench_source (updated_at)")
        conn.execute("VACUUM ANALYZE bench_source")
        print(f"generated {rows:,} rows × {len(FIELDS)} fields in {time.perf_counter() - started:.1f} s")
    with psycopg.connect(dsn_of(tgt), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE raw_copy (id bigint PRIMARY KEY, {columns})")  # type: ignore[arg-type]
    source, subscription = setup(rows, src)
    tgt_conn = Connection.objects.create(department=subscription.department, name=f"tgt {source.dataset.slug}",
                                         kind="postgresql", secret_encrypted=secrets.encrypt(dsn_of(tgt)),
                                         redacted=tgt)
    subscription.connection = tgt_conn
    subscription.save()

    def raw_pipe(table: str, into_table: str) -> Callable[[], int]:
        def pipe() -> int:
            with psycopg.connect(dsn_of(src)) as a, psycopg.connect(dsn_of(tgt)) as b:
                with a.cursor() as ca, b.cursor() as cb, \
                        ca.copy(f"COPY (SELECT * FROM {table}) TO STDOUT") as out, \
                        cb.copy(f"COPY {into_table} FROM STDIN") as into:  # type: ignore[arg-type]
                    for chunk in out:
                        into.write(chunk)
            return rows
        return pipe

    # The same rows with the three decimal columns as floats, read as a plain table source.
    float_columns = ", ".join(f"{n} {'double precision' if t == 'numeric' else t}" for n, _, t in FIELDS[1:])
    with psycopg.connect(dsn_of(src), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE bench_float (id bigint PRIMARY KEY, {float_columns})")  # type: ignore[arg-type]
        conn.execute("INSERT INTO bench_float SELECT * FROM bench_source")
        conn.execute("VACUUM ANALYZE bench_float")
    with psycopg.connect(dsn_of(tgt), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE raw_float (id bigint PRIMARY KEY, {float_columns})")  # type: ignore[arg-type]
        conn.execute(f"CREATE TABLE raw_csv (id bigint PRIMARY KEY, {columns})")  # type: ignore[arg-type]
    float_source = Source.objects.create(dataset=bench_dataset(source.dataset.department),
                                         connection=source.connection, table="bench_float", mapping=source.mapping)
    # The same rows as an uploaded CSV file (as PostgreSQL writes CSV: t/f, ISO dates and times).
    media = Path(tempfile.mkdtemp(prefix="exchange-bench-"))
    settings.MEDIA_ROOT = str(media)
    csv_path = media / "sources" / "bench.csv"
    csv_path.parent.mkdir()
    with psycopg.connect(dsn_of(src)) as conn, conn.cursor() as cur, csv_path.open("wb") as f, \
            cur.copy("COPY bench_source TO STDOUT (FORMAT csv, HEADER)") as out:
        for chunk in out:
            f.write(chunk)
    print(f"wrote the CSV file: {csv_path.stat().st_size / 1e6:,.0f} MB")
    csv_source = Source.objects.create(dataset=bench_dataset(source.dataset.department), upload="sources/bench.csv",
                                       file_format="csv", encoding="utf-8", mapping=source.mapping)

    def raw_csv_load() -> int:
        with psycopg.connect(dsn_of(tgt)) as b, b.cursor() as cb, \
                cb.copy("COPY raw_csv FROM STDIN (FORMAT csv, HEADER)") as into, csv_path.open("rb") as f:
            while chunk := f.read(1 << 20):
                into.write(chunk)
        return rows

    results: list[tuple[str, int, float, int, float]] = []  # (label, rows, seconds, peak RSS, baseline seconds)
    only = args.only_incremental
    _, raw_seconds, rss = in_child(raw_pipe("bench_source", "raw_copy"))
    results.append(("(a) raw COPY pipe", rows, raw_seconds, rss, raw_seconds))
    counts, full_seconds, rss = in_child(run_job(kind="ingest", source=source, mode="full"))
    results.append(("(b) full ingest", counts["inserted"], full_seconds, rss, raw_seconds))
    if not only:
        counts, seconds, rss = in_child(run_job(kind="delivery", subscription=subscription))
        results.append((f"(c) full delivery, {len(GRANTED)} fields", counts["inserted"], seconds, rss, raw_seconds))
    with psycopg.connect(dsn_of(src), autocommit=True) as conn:
        conn.execute("UPDATE bench_source SET amount = amount + 1, updated_at = now() WHERE id % 100 = 0")
    counts, incremental_seconds, rss = in_child(run_job(kind="ingest", source=source, mode="incremental"))
    results.append(("(d) incremental ingest, 1% changed", counts["updated"], incremental_seconds, rss, raw_seconds))
    changed = counts["updated"]
    dataset_ids = [source.dataset_id, float_source.dataset_id, csv_source.dataset_id]

    def share_rounds() -> str:
        """The share again with a new dataset per round (its own full ingest, then 1% of the
        source changed anew): a full ingest's time varies from run to run on a shared machine,
        and one pair of runs says little about a share of a few per cent. Run last, since it
        changes the source's rows that the re-ingests (j), (k) expect unchanged."""
        shares = [incremental_seconds / full_seconds]
        for round_ in range(1, args.rounds):
            again = Source.objects.create(dataset=bench_dataset(source.dataset.department),
                                          connection=source.connection, table=source.table, mapping=source.mapping,
                                          watermark_column=source.watermark_column)
            dataset_ids.append(again.dataset_id)
            _, again_full, _ = in_child(run_job(kind="ingest", source=again, mode="full"))
            with psycopg.connect(dsn_of(src), autocommit=True) as conn:
                conn.execute("UPDATE bench_source SET amount = amount + 1, updated_at = now() WHERE id %% 100 = %s",
                             [round_])
            again_counts, again_incremental, _ = in_child(run_job(kind="ingest", source=again, mode="incremental"))
            assert again_counts["updated"] == changed, again_counts
            shares.append(again_incremental / again_full)
        return (f"incremental ingest (d) took {incremental_seconds / full_seconds:.1%} of the full ingest's time; "
                f"in {len(shares)} rounds, a new dataset each: {', '.join(f'{x:.1%}' for x in shares)}, "
                f"median {statistics.median(shares):.1%} (aim <= 5 %)")

    if only:
        share = share_rounds()
        report(results, rows)
        print(share)
        clean_up(args.keep, media, dataset_ids, [src, tgt])
        return 0
    counts, seconds, rss = in_child(run_job(kind="delivery", subscription=subscription))
    results.append(("(e) incremental delivery after (d)", counts["updated"], seconds, rss, raw_seconds))
    # The same full run over the loaded store (nothing changed), without and with 10 quality rules,
    # twice each, alternating, the best of each: a full re-ingest leaves a million dead row
    # versions behind for the next one (and autovacuum), so whichever ran second paid more.
    published = SchemaVersion.objects.filter(dataset=source.dataset, status="published")
    timings: dict[bool, list[tuple[float, int, int]]] = {False: [], True: []}
    for ruled in (False, True, False, True):
        published.update(rules=QUALITY_RULES if ruled else [])
        counts, seconds, rss = in_child(run_job(kind="ingest", source=source, mode="full"))
        timings[ruled].append((seconds, counts["unchanged"], rss))
    (plain_seconds, unchanged, rss), (ruled_seconds, ruled_unchanged, ruled_rss) = (
        min(timings[False]), min(timings[True]))
    results.append(("(j) full re-ingest, no rules", unchanged, plain_seconds, rss, raw_seconds))
    results.append((f"(k) full re-ingest, {len(QUALITY_RULES)} rules", ruled_unchanged, ruled_seconds, ruled_rss,
                    raw_seconds))

    _, float_raw, rss = in_child(raw_pipe("bench_float", "raw_float"))
    results.append(("(f) raw COPY pipe, 3 float columns", rows, float_raw, rss, float_raw))
    counts, seconds, rss = in_child(run_job(kind="ingest", source=float_source, mode="full"))
    results.append(("(g) full ingest, float table source", counts["inserted"], seconds, rss, float_raw))
    _, csv_raw, rss = in_child(raw_csv_load)
    results.append(("(h) raw COPY FROM of the CSV file", rows, csv_raw, rss, csv_raw))
    counts, seconds, rss = in_child(run_job(kind="ingest", source=csv_source, mode="full"))
    results.append(("(i) full ingest, CSV upload", counts["inserted"], seconds, rss, csv_raw))

    share = share_rounds()
    report(results, rows)
    print("\n(b), (c), (d), (e) against (a); (g) against (f); (i) against (h)")
    print(share)
    print(f"{len(QUALITY_RULES)} quality rules (k) added {ruled_seconds / plain_seconds - 1:.1%} to the full "
          f"re-ingest (j) (aim < 20 %)")
    clean_up(args.keep, media, dataset_ids, [src, tgt])
    return 0


def report(results: list[tuple[str, int, float, int, float]], rows: int) -> None:
    print(f"\n{'phase':<38} {'rows':>10} {'seconds':>9} {'rows/s':>11} {'vs raw':>7} {'peak RSS':>9}")
    for label, n, seconds, rss, baseline in results:
        print(f"{label:<38} {n:>10,} {seconds:>9.2f} {n / seconds:>11,.0f} "
              f"{baseline / seconds * (n / rows):>6.0%} {rss / 1024:>7.0f} MB")


def clean_up(keep: bool, media: Path, dataset_ids: list[int], databases: list[str]) -> None:
    if keep:
        return
    shutil.rmtree(media, ignore_errors=True)
    for dataset_id in dataset_ids:
        store_drop_table(dataset_id)
    for db in databases:
        admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
