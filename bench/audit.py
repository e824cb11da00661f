"""Audit trail benchmark: bulk appends per second and the time to verify a long chain, each
beside a raw baseline measured in the same run on the same rows.

    python -m bench.audit [--append 50000] [--events 1000000] [--batch 10000]

Runs against DATABASE_URL (default SQLite) in a scratch database it creates and drops.
Targets (issue 6): >= 10,000 appends/s in bulk; 1,000,000 events verified in < 20 s; the
point-in-time question "who could see field F of dataset D at time T" in < 100 ms with the
whole chain in the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from bench.setup import configure, scratch_database

APPEND_TARGET_PER_S = 10_000
VERIFY_TARGET_S_PER_MILLION = 20.0
POINT_IN_TIME_TARGET_MS = 100.0


def _entries(n: int, start: int) -> list[Any]:
    from exchange.audit.services import AuditEntry

    return [
        AuditEntry(
            action="records.read", actor_label="bench", object_type="catalog.dataset", object_id=str(i % 97),
            department_id=i % 7, dataset_id=i % 97, fields=("name", "street", "count"), row_count=50,
            filters={"district": "north", "page": i}, details={"bench": True, "i": i},
        )
        for i in range(start, start + n)
    ]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _raw_table(cursor: Any, vendor: str) -> None:
    if vendor == "postgresql":
        cursor.execute("CREATE TABLE bench_audit_raw (LIKE exchange_auditevent INCLUDING DEFAULTS)")
    else:
        cursor.execute("CREATE TABLE bench_audit_raw AS SELECT * FROM exchange_auditevent WHERE 0")


def _raw_insert(rows: list[dict[str, Any]]) -> None:
    """The baseline: the same rows (hashes precomputed) written without the chain lock, without
    reading the chain's end and without hashing."""
    import json

    from django.db import connection, transaction

    columns = list(rows[0])
    prepared = [
        tuple(json.dumps(r[c]) if c in ("fields", "filters", "details") else r[c] for c in columns) for r in rows
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            copy_sql = f"COPY bench_audit_raw ({', '.join(columns)}) FROM STDIN"
            with cursor.cursor.copy(copy_sql) as copy:
                for row in prepared:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO bench_audit_raw ({', '.join(columns)}) VALUES ({marks})", prepared)


def _raw_select(batch: int) -> int:
    from django.db import connection, transaction

    count = 0
    in_transaction = transaction.atomic() if connection.vendor == "postgresql" else nullcontext()
    with in_transaction, connection.chunked_cursor() as cur:
        cur.execute("SELECT * FROM exchange_auditevent ORDER BY id")
        while rows := cur.fetchmany(batch):
            count += len(rows)
    return count


def _grants(n: int) -> tuple[Any, Any]:
    """A published dataset with ``n`` grants to as many users over the past two years, a
    fifth of them revoked and every third one with a field that lapsed; and the moment to
    ask about (a year ago)."""
    from datetime import timedelta

    from django.contrib.auth.models import User
    from django.utils import timezone

    from catalog.models import Dataset, DatasetStatus, Field, SchemaStatus, SchemaVersion
    from departments import services
    from exchange.access.models import Grant, GrantField, GrantStatus, PrincipalKind

    owner = services.department_create(actor=None, code="bench-audit", name="Bench audit")
    steward = User.objects.create_user("bench-audit-steward")
    dataset = Dataset.objects.create(department=owner, title="Bench audit", slug="bench-audit",
                                     description="Benchmark.", status=DatasetStatus.PUBLISHED)
    schema = SchemaVersion.objects.create(dataset=dataset, number=1, status=SchemaStatus.PUBLISHED)
    for pos, name in enumerate(["id", "name", "street", "count"]):
        Field.objects.create(schema=schema, position=pos, name=name, type="text", is_key=pos == 0,
                             nullable=pos > 0, sensitivity="personal" if name == "street" else "internal")
    dataset.current_schema = schema
    dataset.save()
    now = timezone.now()
    users = User.objects.bulk_create([User(username=f"bench-audit-{i}") for i in range(n)])
    grants = Grant.objects.bulk_create([
        Grant(
            dataset=dataset, principal_kind=PrincipalKind.USER, principal_user=user, purpose=f"purpose {i}",
            legal_basis="bench", valid_from=now - timedelta(days=730 - i % 700),
            valid_until=now - timedelta(days=730 - i % 700 - 180),
            status=GrantStatus.REVOKED if i % 5 == 0 else GrantStatus.ACTIVE, approved_by=steward,
            revoked_at=now - timedelta(days=600 - i % 500) if i % 5 == 0 else None,
        )
        for i, user in enumerate(users)
    ])
    GrantField.objects.bulk_create([
        GrantField(grant=g, field_name=name, form="masked" if name == "street" else "clear",
                   lapsed_at=now - timedelta(days=400) if name == "street" and i % 3 == 0 else None)
        for i, g in enumerate(grants) for name in ("id", "name", "street")
    ])
    return dataset, now - timedelta(days=365)


def _point_in_time(repeat: int = 20) -> tuple[float, int]:
    """Median milliseconds of the auditor's "who could see field F on date T" question."""
    import statistics

    from exchange.oversight.history import who_could_see

    dataset, at = _grants(2_000)
    times, answer = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = who_could_see(dataset=dataset, field="street", at=at)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), len(answer)


def run(*, append: int, events: int, batch: int, workers: int) -> dict[str, float]:
    from django.db import connection

    from exchange.audit.models import AuditEvent
    from exchange.audit.services import audit_record_many, audit_verify

    results: dict[str, float] = {}
    print(f"database: {connection.vendor} ({connection.settings_dict['NAME']})")

    # 1. Bulk appends, in batches as a bulk path would write them.
    elapsed, _ = _timed(
        lambda: [audit_record_many(_entries(min(batch, append - s), s)) for s in range(0, append, batch)]
    )
    results["append_per_s"] = append / elapsed
    sample = [dict(row) for row in AuditEvent.objects.order_by("id").values()[: min(append, 20_000)]]
    with connection.cursor() as cursor:
        _raw_table(cursor, connection.vendor)
    raw_elapsed, _ = _timed(lambda: _raw_insert(sample))
    results["raw_insert_per_s"] = raw_rate = len(sample) / raw_elapsed
    print(
        f"bulk append: {append} events in {elapsed:.2f} s = {results['append_per_s']:,.0f}/s "
        f"(target >= {APPEND_TARGET_PER_S:,}/s); raw insert of the same rows "
        f"{raw_rate:,.0f}/s; audited/raw = {results['append_per_s'] / raw_rate:.2f}"
    )

    # 2. Verification of a long chain.
    have = AuditEvent.objects.count()
    fill_started = time.perf_counter()
    for start in range(have, events, batch):
        audit_record_many(_entries(min(batch, events - start), start))
        done = min(start + batch, events)
        if done % 100_000 == 0:
            print(f"  filling: {done:,} events ({time.perf_counter() - fill_started:.0f} s)", flush=True)
    total = AuditEvent.objects.count()
    verify_s, result = _timed(lambda: audit_verify(batch=batch))
    assert result.intact, str(result)
    parallel_s = 0.0
    if workers > 1:
        parallel_s, parallel = _timed(lambda: audit_verify(batch=batch, workers=workers))
        assert parallel == result, str(parallel)
    raw_s, raw_count = _timed(lambda: _raw_select(batch))
    results.update(verify_s=verify_s, raw_select_s=raw_s, events=total)
    per_million = verify_s * 1_000_000 / total
    print(
        f"verify: {result} in {verify_s:.2f} s ({per_million:.1f} s per million; target < "
        f"{VERIFY_TARGET_S_PER_MILLION:.0f} s); raw SELECT of the same {raw_count:,} rows {raw_s:.2f} s; "
        f"verify/raw = {verify_s / raw_s:.2f}"
    )
    if workers > 1:
        results["verify_parallel_s"] = parallel_s
        print(
            f"verify with {workers} processes: {parallel_s:.2f} s ({parallel_s * 1_000_000 / total:.1f} s per "
            f"million); verify/raw = {parallel_s / raw_s:.2f}"
        )

    # 3. The auditor's point-in-time question, with the whole chain in the table.
    results["point_in_time_ms"], principals = _point_in_time()
    print(
        f"who could see field F on date T: median {results['point_in_time_ms']:.1f} ms over 2,000 grants, "
        f"{AuditEvent.objects.count():,} events in the table ({principals} principals in the answer; "
        f"target < {POINT_IN_TIME_TARGET_MS:.0f} ms)"
    )
    return results


def main(argv: list[str]) -> int:
    configure()
    from django.db import connection

    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.splitlines()[0])
    default_events = 1_000_000 if connection.vendor == "postgresql" else 200_000
    parser.add_argument("--append", type=int, default=50_000, help="events appended in bulk (default 50,000)")
    parser.add_argument(
        "--events", type=int, default=default_events,
        help="length of the chain to verify (default 1,000,000 on PostgreSQL, 200,000 on SQLite)",
    )
    parser.add_argument("--batch", type=int, default=10_000, help="events per bulk append and per fetch")
    parser.add_argument(
        "--workers", type=int, default=min(os.cpu_count() or 1, 8),
        help="also time verification with this many processes (default: CPUs, at most 8; 1 = skip)",
    )
    args = parser.parse_args(argv)
    with scratch_database("audit"):
        run(append=args.append, events=max(args.events, args.append), batch=args.batch, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
