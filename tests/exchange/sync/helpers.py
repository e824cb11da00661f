"""Helpers shared by the sync tests: running a run in-process, reading a store table, and
extra PostgreSQL databases for sources and targets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection

from catalog.models import Dataset
from exchange.records.store import ident, store_table
from exchange.sync import runs
from exchange.sync.models import Run, RunMode, Source


def run_ingest(source: Source, *, mode: str = RunMode.FULL) -> Run:
    """Queue and execute a run in this process, as a worker would."""
    run = Run.objects.create(kind="ingest", source=source, dataset_id=source.dataset_id, mode=mode)
    runs.execute(run_id=run.pk)
    run.refresh_from_db()
    return run


def store_rows(dataset: Dataset, *, include_deleted: bool = False) -> list[dict[str, Any]]:
    table = store_table(dataset)
    where = "" if include_deleted else f" WHERE NOT {ident('_deleted')}"
    order = ", ".join(ident(k) for k in table.key_columns)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table.qualified}{where} ORDER BY {order}")  # noqa: S608
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def pg_admin_dsn(dbname: str = "postgres") -> str:
    s = connection.settings_dict
    auth = s.get("USER") or "postgres"
    if s.get("PASSWORD"):
        auth += ":" + s["PASSWORD"]
    return f"postgresql://{auth}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{dbname}"


@contextmanager
def extra_pg_database(prefix: str = "wt_sync_src") -> Iterator[str]:
    """A scratch PostgreSQL database next to the test database, dropped afterwards. Its name
    starts with the configured database's (``exchange_sources_…`` for ``exchange_sources``),
    so that runs of several checkouts on one server never meet, and ends with a random part."""
    import psycopg

    base = connection.settings_dict["NAME"].removeprefix("test_")
    name = f"{base}_{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_admin_dsn(name)
    finally:
        with psycopg.connect(pg_admin_dsn(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_execute(dsn: str, sql: str, params: Any = None, many: list[Any] | None = None) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        if many is not None:
            cur.executemany(sql, many)
        else:
            cur.execute(sql, params)
