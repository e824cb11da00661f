"""Ingest: source → store, for one claimed run.

The run reads the source as a stream in batches, converts every value to its field type,
quarantines bad rows, and stages good ones in a temporary table (PostgreSQL: ``COPY``;
SQLite: ``executemany``). Progress, heartbeat and the cancel flag are handled between
batches in short transactions of their own. Only then is the staging table merged into the
store in ONE transaction, together with the run's final state, the watermark and the audit
event: a reader sees the store before the run or after it, never half of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import DataError, connection, transaction
from django.utils import timezone

from catalog.models import Dataset, DatasetStatus, Field
from exchange.audit.services import audit_record
from exchange.records.store import (
    StoreTable,
    column_type,
    ident,
    is_postgres,
    quoted_list,
    store_ensure_table,
    stored_mask_ddl,
)
from exchange.sync import quality
from exchange.sync.convert import (
    CONVERTERS,
    FALSE_TEXT,
    SOURCE_KINDS,
    TRUE_TEXT,
    BadValue,
    content_hash,
    for_sqlite,
    local_timestamp_sql,
)
from exchange.sync.dispatch import deliveries_for_change
from exchange.sync.errors import SourceError
from exchange.sync.models import QuarantinedRow, Run, RunMode, RunStatus
from exchange.sync.readers import (
    NotPlainCSV,
    RawRow,
    Reader,
    open_source,
    pg_csv_encoding,
    plain_csv_chunks,
)

# Quarantined rows kept with their data per run; beyond this they are only counted.
QUARANTINE_KEEP = 10_000
PROGRESS_EVERY_SECONDS = 2.0
ANALYZE_AFTER = 50_000  # changed rows


class SchemaMismatch(SourceError):
    """The source no longer matches the mapping: the dataset's contract is broken."""


class EmptySource(SourceError):
    """A full run's source gave no valid row while the store holds records."""


class RunCancelled(Exception):
    pass


@dataclass
class Plan:
    table: StoreTable
    fields: list[Field]
    # field name -> source column (None: not mapped, stays empty)
    columns: dict[str, str | None]
    key_fields: list[str]
    # The published schema's quality rules (exchange/sync/quality.py evaluates them).
    rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Counts:
    read: int = 0
    quarantined: int = 0
    staged: int = 0
    watermark: Any = None
    quarantine_buffer: list[QuarantinedRow] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)  # each rule's result


def plan_for(dataset: Dataset, mapping: dict[str, str]) -> Plan:
    if dataset.status != DatasetStatus.PUBLISHED or dataset.current_schema_id is None:
        raise SourceError("The dataset has no published schema to load into.")
    fields = list(Field.objects.filter(schema_id=dataset.current_schema_id).order_by("position"))
    table = store_ensure_table(dataset, fields)  # the fields read once
    names = {f.name for f in fields}
    unknown = sorted(set(mapping.values()) - names)
    if unknown:
        raise SchemaMismatch(f"The mapping names fields that are not in the published schema: {', '.join(unknown)}.")
    by_field = {f: c for c, f in mapping.items()}
    columns = {f.name: by_field.get(f.name) for f in fields}
    unmapped_required = [f.name for f in fields if columns[f.name] is None and (f.is_key or not f.nullable)]
    if unmapped_required:
        raise SchemaMismatch(f"Key or required fields are not mapped to a source column: "
                             f"{', '.join(unmapped_required)}.")
    return Plan(table=table, fields=fields, columns=columns, key_fields=[f.name for f in fields if f.is_key],
                rules=quality.rules_of(dataset))


def check_source_shape(plan: Plan, reader: Reader) -> None:
    available = set(reader.columns)
    missing = sorted({c for c in plan.columns.values() if c is not None} - available)
    if missing and reader.columns:
        raise SchemaMismatch(
            f"Mapped source columns are missing: {', '.join(missing)}. "
            f"The source has: {', '.join(reader.columns[:40])}."
        )
    retyped = []
    for f in plan.fields:
        column = plan.columns[f.name]
        kind = reader.kinds.get(column) if column else None
        if kind is not None and kind not in SOURCE_KINDS[f.type]:
            retyped.append(f"{column} is {kind} at the source, field {f.name} is {f.type}")
    if retyped:
        raise SchemaMismatch("Source columns changed type: " + "; ".join(retyped) + ".")


def convert_row(plan: Plan, raw: RawRow) -> tuple[list[Any] | None, str]:
    """The row's values in field order, or None and the reason it goes to quarantine."""
    if raw.problem:
        return None, raw.problem
    values: list[Any] = []
    problems: list[str] = []
    for f in plan.fields:
        column = plan.columns[f.name]
        value = raw.values.get(column) if column is not None else None
        if isinstance(value, str) and value == "":
            value = None
        if value is None:
            if f.is_key:
                problems.append(f"missing key {f.name}")
            elif not f.nullable:
                problems.append(f"missing required {f.name}")
            values.append(None)
            continue
        try:
            values.append(CONVERTERS[f.type](value))
        except BadValue as exc:
            problems.append(f"{f.name}: {exc}")
            values.append(None)
    if problems:
        return None, "; ".join(problems)
    return values, ""


# --- Staging --------------------------------------------------------------------------------

def _stage_name(run: Run) -> str:
    return f"exchange_stage_{run.pk}"


@contextmanager
def staging_table(run: Run, plan: Plan) -> Iterator[str]:
    """A temporary table of the connection (gone with it if the worker dies)."""
    name = ident(_stage_name(run))
    columns = [f"{ident(f.name)} {column_type(f.type)}" for f in plan.fields]
    columns += [f"{ident('_hash')} text", f"{ident('_rn')} bigint NOT NULL",
                f"{ident('_bad')} boolean NOT NULL DEFAULT false"]
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")
        cursor.execute(f"CREATE TEMPORARY TABLE {name} ({', '.join(columns)})")
    try:
        yield name
    finally:
        if connection.connection is not None and not connection.needs_rollback:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f"DROP TABLE IF EXISTS {name}")
            except Exception:  # noqa: BLE001, S110 - the connection may be gone; temp tables go with it
                pass


def _stage_columns(plan: Plan) -> list[str]:
    return [f.name for f in plan.fields] + ["_hash", "_rn", "_bad"]


def stage_rows(stage: str, plan: Plan, rows: Sequence[Sequence[Any]]) -> None:
    if not rows:
        return
    names = ", ".join(ident(c) for c in _stage_columns(plan))
    with connection.cursor() as cursor:
        if is_postgres():
            with cursor.cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:  # type: ignore[union-attr]
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(_stage_columns(plan)))
            cursor.executemany(f"INSERT INTO {stage} ({names}) VALUES ({marks})",  # noqa: S608 - quoted names
                               [[for_sqlite(v) for v in row] for row in rows])


def _key_only(plan: Plan, raw: RawRow) -> list[Any] | None:
    """The converted key of a quarantined row, if it has one: a full run must not take a
    record that exists but arrived malformed this time for a deletion."""
    key = []
    for f in plan.fields:
        if not f.is_key:
            continue
        column = plan.columns[f.name]
        value = raw.values.get(column) if column and not raw.problem.startswith("ragged") else None
        if value in (None, ""):
            return None
        try:
            key.append(CONVERTERS[f.type](value))
        except BadValue:
            return None
    keys = iter(key)
    return [next(keys) if f.is_key else None for f in plan.fields]


def _quarantine(run: Run, counts: Counts, number: int, raw: dict[str, Any], reason: str) -> None:
    counts.quarantined += 1
    if counts.quarantined <= QUARANTINE_KEEP:
        counts.quarantine_buffer.append(QuarantinedRow(run=run, row_number=number, raw=_jsonable(raw),
                                                       reason=reason[:2000]))


def _jsonable(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        out[str(k)] = v if isinstance(v, (str, int, float, bool, list, dict)) or v is None else str(v)
    return out


def _progress(run: Run, counts: Counts) -> None:
    QuarantinedRow.objects.bulk_create(counts.quarantine_buffer)
    counts.quarantine_buffer.clear()
    updated = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        rows_read=counts.read, rows_done=counts.read, rows_quarantined=counts.quarantined,
        heartbeat_at=timezone.now(), rows_total_estimate=run.rows_total_estimate,
    )
    if not updated or Run.objects.filter(pk=run.pk, cancel_requested=True).exists():
        raise RunCancelled()


def read_into_stage(run: Run, plan: Plan, reader: Reader, stage: str, counts: Counts, *,
                    watermark_column: str | None) -> None:
    stage_in_python(run, plan, reader.rows, stage, counts, watermark_column=watermark_column)


def stage_in_python(run: Run, plan: Plan, rows: Iterable[RawRow], stage: str, counts: Counts, *,
                    watermark_column: str | None, counted: bool = False) -> None:
    """Convert each row in Python and stage it, or quarantine it with its reason. With
    ``counted`` the rows have been counted as read already."""
    batch_size = settings.SYNC_BATCH_SIZE
    buffer: list[list[Any]] = []
    last_progress = time.monotonic()
    for raw in rows:
        if not counted:
            counts.read += 1
        if watermark_column and not raw.problem:
            mark = raw.values.get(watermark_column)
            if mark is not None and (counts.watermark is None or mark > counts.watermark):
                counts.watermark = mark
        values, reason = convert_row(plan, raw)
        if values is None:
            _quarantine(run, counts, raw.number, raw.values, reason)
            key_only = _key_only(plan, raw)
            if key_only is not None:
                buffer.append([*key_only, None, raw.number, True])
        else:
            # PostgreSQL compares values in SQL during the merge (see _changed_sql); "", which
            # is what a record's _hash is there, lets csv_first_load make the staging table the store.
            buffer.append([*values, "" if is_postgres() else content_hash(values), raw.number, False])
            counts.staged += 1
        if len(buffer) >= batch_size or time.monotonic() - last_progress > PROGRESS_EVERY_SECONDS:
            stage_rows(stage, plan, buffer)
            buffer.clear()
            if run.rows_total_estimate is not None and counts.read > run.rows_total_estimate:
                run.rows_total_estimate = None
            _progress(run, counts)
            last_progress = time.monotonic()
    stage_rows(stage, plan, buffer)
    _progress(run, counts)


# Source column types whose COPY text form the store's column type reads as the value the
# Python path would make of it, so a PostgreSQL source can be copied without passing each
# value through Python. Floats read as exact decimals (the shortest text that reads back as
# the same float); NaN and infinity, which are no decimal numbers, are quarantined in SQL
# (:func:`_value_checks`). A timestamp without time zone leaves the source already read in
# the city's zone (``readers.copy_out``).
COPY_SAFE: dict[str, set[str]] = {
    "integer": {"int2", "int4", "int8"},
    "decimal": {"int2", "int4", "int8", "numeric", "float4", "float8"},
    "boolean": {"bool"},
    "date": {"date"},
    "timestamp": {"timestamptz", "timestamp"},
    "json": {"json", "jsonb"},
    "text": {"text", "varchar", "bpchar", "name", "uuid"},
    "geopoint": {"text", "varchar"},
}
_GEOPOINT_RE = r"^\s*-?[0-9]+(\.[0-9]+)?\s*,\s*-?[0-9]+(\.[0-9]+)?\s*$"


def bulk_eligible(plan: Plan, reader: Reader, source_watermark: str) -> bool:
    if not is_postgres() or reader.copy_out is None:
        return False
    if source_watermark and source_watermark not in source_mapped(plan):
        return False
    for f in plan.fields:
        column = plan.columns[f.name]
        if column is not None and reader.pg_types.get(column) not in COPY_SAFE[f.type]:
            return False
    return True


def source_mapped(plan: Plan) -> set[str]:
    return {c for c in plan.columns.values() if c is not None}


def copy_in_batches(run: Run, counts: Counts, copy_sql: str, chunks: Iterator[Any], *,
                    atomic_batches: bool = False) -> None:
    """Write a source's COPY stream with ``copy_sql``, a COPY per batch of rows so that
    progress, heartbeat and cancel are handled in between; ``atomic_batches`` gives each batch
    a transaction (or savepoint) of its own."""
    batch = settings.SYNC_BATCH_SIZE * 4
    done = False
    with connection.cursor() as cursor:
        while not done:
            n = 0
            with (transaction.atomic() if atomic_batches else nullcontext()), \
                    cursor.cursor.copy(copy_sql) as copy:  # type: ignore[union-attr]
                for chunk in chunks:
                    copy.write(chunk)  # one row per chunk (libpq hands COPY data out row by row)
                    n += 1
                    if n >= batch:
                        break
                else:
                    done = True
            counts.read += n
            _progress(run, counts)


def copy_into_stage(run: Run, plan: Plan, reader: Reader, stage: str, counts: Counts) -> None:
    """The bulk path: the source's COPY stream goes into the staging table as it is, in
    batches (a COPY each, so progress, heartbeat and cancel are handled in between), and the
    checks Python would make per value are made in SQL on the staged rows afterwards."""
    assert reader.copy_out is not None
    by_column = {c: f for f, c in plan.columns.items() if c is not None}
    targets = [by_column[c] for c in reader.selected] + ["_rn"]
    copy_sql = f"COPY {stage} ({', '.join(ident(n) for n in targets)}) FROM STDIN"
    copy_in_batches(run, counts, copy_sql, reader.copy_out())
    bad = _quarantine_in_sql(run, plan, stage)
    counts.quarantined += bad
    counts.staged = counts.read - bad


def _quarantine_in_sql(run: Run, plan: Plan, stage: str) -> int:
    table = ident(QuarantinedRow._meta.db_table)
    checks: list[tuple[str, str, bool]] = []  # (condition, reason, drop the row entirely)
    for f in plan.fields:
        col = ident(f.name)
        if f.is_key:
            checks.append((f"{col} IS NULL", f"missing key {f.name}", True))
        elif not f.nullable:
            checks.append((f"{col} IS NULL", f"missing required {f.name}", False))
        checks += [(condition, reason, False) for condition, reason in _value_checks(f)]
    bad = 0
    with connection.cursor() as cursor:
        # One scan answers the usual question ("anything wrong?"); only then one per check.
        any_bad = " OR ".join(f"({c})" for c, _, _ in checks)
        if any_bad:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {stage} WHERE {any_bad})")  # noqa: S608
            if not cursor.fetchone()[0]:
                return 0
        for condition, reason, drop in checks:
            cursor.execute(
                f"INSERT INTO {table} (run_id, row_number, raw, reason) SELECT %s, {ident('_rn')}, "  # noqa: S608
                f"to_jsonb(s) - '_rn' - '_bad' - '_hash', %s FROM {stage} AS s "
                f"WHERE NOT {ident('_bad')} AND {condition} ORDER BY {ident('_rn')} LIMIT %s",
                [run.pk, reason, QUARANTINE_KEEP])
            cursor.execute(f"UPDATE {stage} SET {ident('_bad')} = true WHERE NOT {ident('_bad')} AND {condition}")  # noqa: S608
            bad += cursor.rowcount
            if drop:
                cursor.execute(f"DELETE FROM {stage} WHERE {condition}")  # noqa: S608
    return bad


def source_key_unique(plan: Plan, reader: Reader) -> bool:
    """Whether the source itself holds the key unique (a primary key or unique constraint on
    some of the key's columns). Only meaningful on the bulk path, where values reach the store
    as the source has them: converting in Python may make two distinct source values one."""
    key_columns = {plan.columns[k] for k in plan.key_fields}
    return any(unique <= key_columns for unique in reader.unique_columns)


def quarantine_duplicates(run: Run, plan: Plan, stage: str, counts: Counts, *, known_unique: bool = False) -> None:
    """Of several rows with one key, the first is kept; the others go to quarantine. With
    ``known_unique`` (the source guarantees it) the search is skipped."""
    keys = ", ".join(ident(k) for k in plan.key_fields)
    names = [f.name for f in plan.fields]
    cols = ", ".join(ident(n) for n in names)
    sql = (
        f"SELECT {ident('_rn')}, first_rn, {cols} FROM (SELECT *, min({ident('_rn')}) OVER (PARTITION BY {keys}) "  # noqa: S608
        f"AS first_rn FROM {stage} WHERE NOT {ident('_bad')}) d WHERE {ident('_rn')} <> first_rn"
    )
    with connection.cursor() as cursor:
        # A hash aggregate finds out cheaply whether there is any duplicate at all; only then
        # the window (a sort of the staged rows) says which rows to quarantine.
        dupes = []
        if not known_unique:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {stage} WHERE NOT {ident('_bad')} "  # noqa: S608
                           f"GROUP BY {keys} HAVING count(*) > 1)")
            if cursor.fetchone()[0]:
                cursor.execute(sql)
                dupes = cursor.fetchall()
        for rn, first, *values in dupes:
            key = ", ".join(f"{k}={v}" for k, v in zip(names, values, strict=True) if k in plan.key_fields)
            _quarantine(run, counts, rn, dict(zip(names, values, strict=True)),
                        f"duplicate key ({key}) within the run; the record at row {first} was kept")
        if dupes:
            cursor.execute(
                f"DELETE FROM {stage} WHERE {ident('_rn')} IN (SELECT {ident('_rn')} FROM ({sql}) x)"  # noqa: S608
            )
            counts.staged -= len(dupes)
        if is_postgres():
            cursor.execute(f"ANALYZE {stage} ({quoted_list(plan.key_fields)})")
    QuarantinedRow.objects.bulk_create(counts.quarantine_buffer)
    counts.quarantine_buffer.clear()


@dataclass
class MergeResult:
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    seq_from: int | None
    seq_to: int | None


def _hash_sql(plan: Plan, alias: str) -> str:
    """The ``_hash`` a merged row gets: the content hash the Python path computed (SQLite), or
    nothing on PostgreSQL, which compares the typed values themselves (see ``_changed_sql``)."""
    return f"{alias}.{ident('_hash')}" if not is_postgres() else "''"


def _changed_sql(plan: Plan) -> str:
    """Whether staged row ``st`` differs from stored record ``s``. PostgreSQL compares the typed
    values (NULL-safe, by each type's equality, so 1.0 = 1.00 as numbers and jsonb by value):
    exact, and cheaper than hashing every staged row."""
    if not is_postgres():
        return f"s.{ident('_hash')} <> st.{ident('_hash')}"
    names = [ident(f.name) for f in plan.fields]
    return (f"ROW({', '.join(f's.{n}' for n in names)}) IS DISTINCT FROM "
            f"ROW({', '.join(f'st.{n}' for n in names)})")


def _ts(value: datetime) -> Any:
    return value if is_postgres() else value.isoformat()


def merge(run: Run, plan: Plan, stage: str, counts: Counts, *, detect_deletes: bool) -> MergeResult:
    """Merge the staging table into the store. Precondition: inside the run's one
    transaction (the caller's ``transaction.atomic``); no other run of this dataset runs."""
    store = plan.table.qualified
    names = [f.name for f in plan.fields]
    key_match = " AND ".join(f"s.{ident(k)} = st.{ident(k)}" for k in plan.key_fields)
    now = _ts(timezone.now())
    seq, h, dele, rn, bad = ident("_seq"), ident("_hash"), ident("_deleted"), ident("_rn"), ident("_bad")
    st_hash = _hash_sql(plan, "st")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT coalesce(max({seq}), 0) FROM {store}")  # noqa: S608
        base = int(cursor.fetchone()[0])
        # One scan of the staging table: its last record number (deletions are numbered after
        # it), and how many rows are good and the number of the last good one (see below).
        cursor.execute(f"SELECT coalesce(max({rn}), 0), count(*) FILTER (WHERE NOT {bad}), "  # noqa: S608
                       f"max({rn}) FILTER (WHERE NOT {bad}) FROM {stage}")
        last_rn, good, last_good_rn = cursor.fetchone()
        last_rn, good = int(last_rn), int(good)
        # Only a full run's deletions need to know; an incremental run does not ask the store.
        had_live_records = False
        if detect_deletes:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {store} WHERE NOT {dele})")  # noqa: S608
            had_live_records = bool(cursor.fetchone()[0])
        if had_live_records and not run.allow_empty:
            refuse_empty_full_run(run, stage, counts)
        sets = ", ".join(f"{ident(n)} = st.{ident(n)}" for n in names)
        cursor.execute(
            f"UPDATE {store} AS s SET {sets}, {h} = {st_hash}, {seq} = %s + st.{rn}, {dele} = false, "  # noqa: S608
            f"{ident('_last_seen')} = %s, {ident('_last_run')} = %s "
            f"FROM {stage} AS st WHERE {key_match} AND NOT st.{bad} AND ({_changed_sql(plan)} OR s.{dele})",
            [base, now, run.pk],
        )
        updated = cursor.rowcount
        cols = ", ".join(ident(n) for n in names)
        st_cols = ", ".join(f"st.{ident(n)}" for n in names)
        system = ", ".join(ident(c) for c in ("_seq", "_hash", "_deleted", "_first_seen", "_last_seen",
                                               "_first_run", "_last_run"))
        inserted = 0
        # When every good staged row updated a record (an incremental run of changed rows, as a
        # rule), no key is new: the insert pass, a lookup per staged row, would find nothing.
        # (No two good rows share a key: quarantine_duplicates has seen to that.)
        every_row_updated = updated == good
        if not every_row_updated:
            cursor.execute(
                f"INSERT INTO {store} ({cols}, {system}) SELECT {st_cols}, %s + st.{rn}, {st_hash}, false, "  # noqa: S608
                f"%s, %s, %s, %s FROM {stage} AS st WHERE NOT st.{bad} "
                f"AND NOT EXISTS (SELECT 1 FROM {store} AS s WHERE {key_match})",
                [base, now, now, run.pk, run.pk],
            )
            inserted = cursor.rowcount
        deleted = 0
        if detect_deletes and had_live_records:
            deleted = merge_deletes(plan, stage, seq=base + last_rn + 1, run_id=run.pk)
        if every_row_updated and not deleted:
            # Each good row was numbered base + its record number: the last good one is the top.
            top = base + int(last_good_rn) if updated else None
        else:
            cursor.execute(f"SELECT max({seq}) FROM {store} WHERE {seq} > %s", [base])  # noqa: S608
            top = cursor.fetchone()[0]
    changed = inserted + updated + deleted
    return MergeResult(
        inserted=inserted, updated=updated, deleted=deleted, unchanged=counts.staged - inserted - updated,
        seq_from=base + 1 if changed else None, seq_to=int(top) if changed and top is not None else None,
    )


def refuse_empty_full_run(run: Run, stage: str, counts: Counts) -> None:
    """A full run deletes the records its source did not give. A source that gave no valid row
    at all (a header-only file, a file whose every row was quarantined, a table emptied by
    mistake) would delete every record: refused unless the run was allowed an empty source."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {stage} WHERE NOT {ident('_bad')})")  # noqa: S608
        if cursor.fetchone()[0]:
            return
    quarantined = f", {counts.quarantined} quarantined" if counts.quarantined else ""
    raise EmptySource(
        f"The source gave no valid row ({counts.read} read{quarantined}): a full run would delete every record "
        f"of the dataset. Nothing was changed. If the source is meant to be empty now, run again and allow an "
        f"empty source.")


def merge_deletes(plan: Plan, stage: str, *, seq: int, run_id: int) -> int:
    """Records the full run did not see become tombstones, numbered after its upserts."""
    key_match = " AND ".join(f"s.{ident(k)} = st.{ident(k)}" for k in plan.key_fields)
    store = plan.table.qualified
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {store} AS s SET {ident('_deleted')} = true, {ident('_seq')} = %s, "  # noqa: S608
            f"{ident('_last_run')} = %s WHERE NOT s.{ident('_deleted')} "
            f"AND NOT EXISTS (SELECT 1 FROM {stage} AS st WHERE {key_match})",
            [seq, run_id],
        )
        return cursor.rowcount


def ingest_execute(*, run: Run) -> None:
    """Do the work of a claimed ingest run and record its success.

    Precondition: ``run`` is RUNNING and claimed by the caller. Raises SourceError (and
    subclasses), RunCancelled or any unexpected error, with the store left unchanged;
    recording failures is the caller's job.
    """
    source = run.source
    assert source is not None
    dataset = source.dataset
    plan = plan_for(dataset, source.mapping)
    incremental = run.mode == RunMode.INCREMENTAL
    since = source.watermark_value if incremental and source.watermark_column and source.watermark_value else None
    result: MergeResult | None = None
    refused = False
    with open_source(source, since=since) as reader:
        _check_reader(plan, reader, source.watermark_column)
        run.rows_total_estimate = reader.estimate
        # A first load skips the staging table; quality rules are evaluated on it.
        if first_load_eligible(plan, reader, source.watermark_column) and not plan.rules:
            try:
                result = first_load(run, plan, reader, Counts(), watermark_column=source.watermark_column)
            except FirstLoadRefused:
                _reset_progress(run)
                refused = True
        else:
            result = ingest_staged(run, plan, reader, Counts(), watermark_column=source.watermark_column,
                                   incremental=incremental)
    if refused:
        # Read again from the start: the refused load stopped reading in the middle.
        with open_source(source, since=since) as reader:
            _check_reader(plan, reader, source.watermark_column)
            result = ingest_staged(run, plan, reader, Counts(), watermark_column=source.watermark_column,
                                   incremental=incremental)
    assert result is not None
    if is_postgres() and result.inserted + result.updated + result.deleted > ANALYZE_AFTER:
        # Fresh statistics now rather than whenever autovacuum gets there: the next run's merge
        # joins the store to a small staging table and must be planned as index lookups.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {plan.table.qualified} ({quoted_list([*plan.key_fields, '_seq', '_deleted'])})")


def _check_reader(plan: Plan, reader: Reader, watermark_column: str) -> None:
    check_source_shape(plan, reader)
    if watermark_column and reader.columns and watermark_column not in reader.columns:
        raise SchemaMismatch(f"The watermark column {watermark_column} is missing at the source.")


def ingest_staged(run: Run, plan: Plan, reader: Reader, counts: Counts, *, watermark_column: str,
                  incremental: bool) -> MergeResult:
    """Stage every row, check it, then merge the staging table into the store in one transaction."""
    bulk = bulk_eligible(plan, reader, watermark_column)
    csv_copy = not bulk and csv_copy_eligible(reader)
    with (csv_staging(plan) if csv_copy else staging_table(run, plan)) as stage:
        if bulk:
            copy_into_stage(run, plan, reader, stage, counts)
            if watermark_column:
                counts.watermark = _bulk_watermark(plan, reader, stage, watermark_column)
        elif csv_copy:
            loadable = not plan.rules and store_takes_a_load(run, plan)
            csv_into_stage(run, plan, reader, stage, counts, watermark_column=watermark_column or None,
                           logged=loadable)
            if loadable:
                try:
                    return csv_first_load(run, plan, stage, counts)
                except FirstLoadRefused:
                    pass  # a key repeats (or the store changed): the merge below, as ever
        else:
            read_into_stage(run, plan, reader, stage, counts, watermark_column=watermark_column or None)
        quarantine_duplicates(run, plan, stage, counts, known_unique=bulk and source_key_unique(plan, reader))
        counts.quality = quality.check_staged(run, plan, stage, counts, incremental=incremental,
                                              keep=QUARANTINE_KEEP)
        with transaction.atomic():
            _recheck_claim(run)
            result = merge(run, plan, stage, counts, detect_deletes=not incremental)
            counts.quality += quality.check_store(run, plan)
            finish_ingest(run, plan, counts, result)
    return result


def _recheck_claim(run: Run) -> None:
    """Inside the merge transaction: a reaper may have given up on this run (and queued
    another) while it was reading, or the steward may have cancelled it."""
    locked = Run.objects.select_for_update().filter(pk=run.pk, status=RunStatus.RUNNING).first()
    if locked is None or locked.cancel_requested:
        raise RunCancelled()


def _field_of(plan: Plan, column: str) -> str:
    return next(f for f, c in plan.columns.items() if c == column)


def _reset_progress(run: Run) -> None:
    QuarantinedRow.objects.filter(run_id=run.pk).delete()
    Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        rows_read=0, rows_done=0, rows_quarantined=0, heartbeat_at=timezone.now())


# --- CSV files on PostgreSQL -----------------------------------------------------------------
# A CSV file is parsed in Python, which decides record numbers, blank lines, ragged rows and
# bytes not valid in the source's encoding exactly as the Python path does, but its values are
# not converted there: each record goes as it is into an unlogged text table by COPY. One
# statement then types every row whose values all have a plain form that PostgreSQL reads as
# the same value Python would make of it (the patterns below), and makes those rows the staging
# table. The other rows (usually none: values with spaces around them, forms only Python
# reads, a missing or a bad value) are read back in record order and go through the Python
# path, which converts or quarantines them with its own reasons.

_DIGITS = "0123456789"


def _month_days() -> list[str]:
    days = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
    return [f"{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, days.get(m, 31) + 1)]


def _time_rests() -> list[str]:
    """What may follow "HH:MM" in a plain timestamp, digits written as 0."""
    seconds = ["", ":00"] + [":00." + "0" * n for n in range(1, 7)]
    zones = ["", "Z", "+00", "-00", "+00:00", "-00:00", "+0000", "-0000"]
    return [s + z for s in seconds for z in zones]


def _point_parts() -> list[str]:
    """A latitude or longitude as Python's "%g" writes it (at most six significant digits, no
    trailing zero, no exponent: 0.0001 or more, or 0), digits 1-9 written as #."""
    import itertools

    parts = []
    fractions = [""] + ["." + "".join(p) + "#" for n in range(5) for p in itertools.product("0#", repeat=n)]
    for whole in ("0", "#", "#0", "##", "#00", "#0#", "##0", "###"):
        for fraction in fractions:
            if whole == "0":
                significant = len(fraction[1:].lstrip("0"))
                if fraction and fraction[1:].index("#") >= 4:
                    continue  # below 0.0001: "%g" writes an exponent
            else:
                significant = len(whole) + len(fraction[1:])
            if significant <= 6:
                parts += [whole + fraction, "-" + whole + fraction]
    return parts


_MONTH_DAYS = _month_days()
_HOURS_MINUTES = [f"{h:02d}:{m:02d}" for h in range(24) for m in range(60)]
_TIME_RESTS = _time_rests()
_POINT_PARTS = _point_parts()
_TIMESTAMP_SHAPES = [f"0000-00-00{sep}00:00{rest}" for sep in "T " for rest in _TIME_RESTS]


def csv_copy_eligible(reader: Reader) -> bool:
    return is_postgres() and reader.csv_records is not None


def _csv_tables(plan: Plan) -> tuple[str, str]:
    """The unlogged text table and staging table of a dataset's CSV run (runs of one dataset
    never overlap; a pair left by a killed worker is dropped by the next run)."""
    table = plan.table
    assert table.schema is not None
    return ident(table.schema, f"{table.name}_csv"), ident(table.schema, _csv_stage_name(plan))


def _csv_stage_name(plan: Plan) -> str:
    return f"{plan.table.name}_stage"


@contextmanager
def csv_staging(plan: Plan) -> Iterator[str]:
    """Yields the name of the staging table :func:`csv_into_stage` creates; drops it and the
    text table afterwards."""
    tables = _csv_tables(plan)
    with connection.cursor() as cursor:
        for name in tables:
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
    try:
        yield tables[1]
    finally:
        if connection.connection is not None and not connection.needs_rollback:
            try:
                with connection.cursor() as cursor:
                    for name in tables:
                        cursor.execute(f"DROP TABLE IF EXISTS {name}")
            except Exception:  # noqa: BLE001, S110 - the connection may be gone; the next run drops them
                pass


def _literal(value: str) -> str:
    from psycopg import sql

    return sql.Literal(value).as_string(connection.connection)


def _text_set(values: list[str]) -> str:
    """A constant text[]: ``x = ANY(it)`` is one hash lookup (PostgreSQL 14 and later)."""
    return _literal("{" + ",".join(f'"{v}"' for v in values) + "}") + "::text[]"


def _plain_date_sql(v: str) -> str:
    """Whether ``v`` is a date as "YYYY-MM-DD" that exists (year 1 and later). Only cheap
    string functions and hash lookups: a regular expression per value would cost more than all
    the rest of the load. CASE, so that the year is cast only once it is known to be digits."""
    leap = f"(left({v}, 4)::int % 4 = 0 AND (left({v}, 4)::int % 100 <> 0 OR left({v}, 4)::int % 400 = 0))"
    return (f"CASE WHEN {v} LIKE '____-__-__' AND btrim(left({v}, 4), '{_DIGITS}') = '' "
            f"AND left({v}, 4) <> '0000' AND substr({v}, 6, 5) = ANY({_text_set(_MONTH_DAYS)}) "
            f"THEN substr({v}, 6, 5) <> '02-29' OR {leap} ELSE false END")


def _plain_sql(f: Field, v: str, *, optimistic: bool = False) -> tuple[str, str]:
    """For field ``f`` and its text ``v`` (NULL when empty): SQL that is true when the value is
    in a plain form, one that PostgreSQL reads as the value Python's converter makes of it, and
    SQL typing it. A missing key or required value is not plain. The checks never make a cast
    fail, except ``optimistic`` ones: those cast and compare the result with the text (a round
    trip, much cheaper) and raise on a value that cannot be cast at all."""
    from psycopg import sql

    d = f"'{_DIGITS}'"
    if f.type == "text":
        check, typed = "true", v
    elif optimistic and f.type == "integer":
        check, typed = f"{v}::bigint::text = {v}", f"{v}::bigint"
    elif optimistic and f.type == "decimal":
        check = f"{v}::numeric::text = {v} AND {v} NOT IN ('NaN', 'Infinity', '-Infinity')"
        typed = f"{v}::numeric"
    elif optimistic and f.type == "date":  # "YYYY-MM-DD" is how DateStyle ISO writes a date
        check, typed = f"octet_length({v}) = 10 AND {v}::date::text = {v}", f"{v}::date"
    elif f.type == "integer":  # [-]digits, at most 18 of them
        check = f"btrim(ltrim({v}, '-'), {d}) = '' AND {v} NOT LIKE '--%' AND {v} <> '-' AND octet_length({v}) <= 18"
        typed = f"{v}::bigint"
    elif f.type == "decimal":  # [-]digits[.digits], [-].digits
        check = (f"btrim(ltrim({v}, '-'), {d}) IN ('', '.') AND {v} NOT LIKE '--%' "
                 f"AND ltrim({v}, '-') NOT IN ('', '.') AND octet_length({v}) <= 1000")
        typed = f"{v}::numeric"
    elif f.type == "boolean":
        words = ", ".join(_literal(w) for w in sorted(TRUE_TEXT | FALSE_TEXT))
        check = f"lower({v}) IN ({words})"
        typed = f"(lower({v}) IN ({', '.join(_literal(w) for w in sorted(TRUE_TEXT))}))"
    elif f.type == "date":
        check, typed = _plain_date_sql(v), f"{v}::date"
    elif f.type == "timestamp" and optimistic:
        # First a round trip, for an instant as PostgreSQL writes it in UTC (DateStyle ISO,
        # TimeZone UTC for the statement; a year of four digits, not BC): three times cheaper
        # than the shape check, and only ever true for text that the shape check takes too.
        # Otherwise the shape below, all digits where digits belong; PostgreSQL's parse checks
        # the ranges (raising if one is out) except for the two it takes and Python does not:
        # 24:00 and :60.
        check = (f"((substr({v}, 5, 1) = '-' AND right({v}, 3) = '+00' AND {v}::timestamptz::text = {v}) "
                 f"OR (translate({v}, {d}, '0000000000') = ANY({_text_set(_TIMESTAMP_SHAPES)}) "
                 f"AND left({v}, 4) <> '0000' AND substr({v}, 12, 2) <> '24' "
                 f"AND (substr({v}, 17, 1) <> ':' OR substr({v}, 18, 2) <> '60')))")
    elif f.type == "timestamp":
        # "YYYY-MM-DD[T ]HH:MM[:SS[.f…]][Z|±HH[[:]MM]]", the offset below 15 hours.
        rest = f"translate(substr({v}, 17), {d}, '0000000000')"
        c = 'COLLATE "C"'
        zone = (f"CASE WHEN {v} LIKE '%+__' OR {v} LIKE '%-__' THEN right({v}, 2) {c} <= '14' "
                f"WHEN {v} LIKE '%+__:__' OR {v} LIKE '%-__:__' THEN left(right({v}, 5), 2) {c} <= '14' "
                f"AND right({v}, 2) {c} <= '59' "
                f"WHEN {v} LIKE '%+____' OR {v} LIKE '%-____' THEN left(right({v}, 4), 2) {c} <= '14' "
                f"AND right({v}, 2) {c} <= '59' ELSE true END")
        check = (f"CASE WHEN ({v} LIKE '____-__-__T__:__%' OR {v} LIKE '____-__-__ __:__%') "
                 f"AND substr({v}, 12, 5) = ANY({_text_set(_HOURS_MINUTES)}) "
                 f"AND {rest} = ANY({_text_set(_TIME_RESTS)}) "
                 f"THEN ({_plain_date_sql(f'left({v}, 10)')}) "
                 f"AND (substr({v}, 17, 1) <> ':' OR substr({v}, 18, 2) {c} <= '59') AND ({zone}) ELSE false END")
    elif f.type == "geopoint":  # as Python writes it ("%g,%g"), in WGS 84 ranges
        lat, lon = f"split_part({v}, ',', 1)", f"split_part({v}, ',', 2)"
        parts = _text_set(_POINT_PARTS)
        check = (f"CASE WHEN {v} NOT LIKE '%,%,%' AND translate({lat}, '123456789', '#########') = ANY({parts}) "
                 f"AND translate({lon}, '123456789', '#########') = ANY({parts}) "
                 f"THEN abs({lat}::numeric) <= 90 AND abs({lon}::numeric) <= 180 ELSE false END")
        typed = v
    else:  # json: PostgreSQL 15 cannot test it without raising; Python decides
        check, typed = "false", f"{v}::{column_type(f.type)}"
    if f.type == "timestamp":
        local = local_timestamp_sql(sql.SQL(f"{v}::timestamp")).as_string(connection.connection)
        zoned = f"({v} LIKE '%Z' OR substr({v}, 17) LIKE '%+%' OR substr({v}, 17) LIKE '%-%')"
        typed = f"(CASE WHEN {zoned} THEN {v}::timestamptz ELSE {local} END)"
    if f.is_key or not f.nullable:
        return f"({v} IS NOT NULL AND {check})", typed
    return f"({v} IS NULL OR {check})", typed


def csv_into_stage(run: Run, plan: Plan, reader: Reader, stage: str, counts: Counts, *,
                   watermark_column: str | None, logged: bool = False) -> None:
    """Stage a CSV source on PostgreSQL (see above). Precondition: ``csv_copy_eligible``. A
    ``logged`` staging table may become the store (:func:`csv_first_load`)."""
    import json

    header = reader.columns
    text, _ = _csv_tables(plan)
    position = {name: i for i, name in enumerate(header)}  # a repeated name: the last, as dict(zip()) does
    columns = [ident(f"c{i}") for i in range(len(header))]
    rn, problem, raw = ident("_rn"), ident("_problem"), ident("_raw")
    checks: dict[bool, list[str]] = {True: [], False: []}
    typed = []
    for f in plan.fields:
        column = plan.columns[f.name]
        # An empty value is NULL already (FORCE_NULL, quoted or not): no nullif per reference.
        v = ident(f"c{position[column]}") if column is not None else "NULL"
        for optimistic in (True, False):
            check, value = _plain_sql(f, v, optimistic=optimistic)
            checks[optimistic].append(check)
        typed.append(f"{value}::{column_type(f.type)} AS {ident(f.name)}")
    all_plain = {optimistic: f"{problem} IS NULL AND {' AND '.join(c)}" for optimistic, c in checks.items()}
    by_postgres = reader.csv_file is not None
    with connection.cursor() as cursor:
        while True:
            cursor.execute(f"CREATE UNLOGGED TABLE {text} ({', '.join(f'{c} text' for c in columns)}, "
                           f"{rn} bigint GENERATED BY DEFAULT AS IDENTITY, {problem} text, {raw} jsonb)")
            if not (by_postgres and _csv_parsed_by_postgres(run, reader, text, columns, counts)):
                by_postgres = False
                _csv_parsed_by_python(run, reader, text, columns, counts)
            # First with the cheap checks that rely on a cast succeeding; if one fails (a value
            # that is no number or no date at all), again with the checks that never let one fail.
            for optimistic in (True, False):
                try:
                    with transaction.atomic():
                        # What the round trips compare with.
                        cursor.execute("SET LOCAL DateStyle = 'ISO'")
                        cursor.execute("SET LOCAL TimeZone = 'UTC'")
                        # The columns in the store's order, for csv_first_load.
                        cursor.execute(f"CREATE {'' if logged else 'UNLOGGED '}TABLE {stage} AS "  # noqa: S608
                                       f"SELECT {', '.join(typed)}, {rn}, ''::text AS {ident('_hash')}, "
                                       f"false AS {ident('_bad')} "
                                       f"FROM {text} WHERE {all_plain[optimistic]}")
                        counts.staged = cursor.rowcount
                    break
                except DataError:
                    if not optimistic:
                        raise
            if not by_postgres or counts.staged == counts.read:
                break
            # Python's csv module refuses a field longer than its limit (and reads on in a way
            # of its own): such a file is read again by Python.
            limit = csv_field_limit()
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {text} WHERE "  # noqa: S608
                           f"{' OR '.join(f'octet_length({c}) > {limit}' for c in columns)})")
            if not cursor.fetchone()[0]:
                break
            cursor.execute(f"DROP TABLE {stage}, {text}")
            by_postgres = False
            counts.read = 0
        if watermark_column:
            cursor.execute(f"SELECT max(coalesce({ident(f'c{position[watermark_column]}')}, '') COLLATE \"C\"), "  # noqa: S608
                           f"count(*) FROM {text} WHERE {problem} IS NULL")
            mark, clean = cursor.fetchone()
            if clean:
                counts.watermark = mark
    if counts.staged == counts.read:
        return
    # The rest, in record order, through Python: set aside first (usually a few rows; a join
    # rather than the checks again), then read in batches by a cursor WITH HOLD, which outlives
    # the transaction of its statement, while the results are staged.
    rest = ident(f"exchange_csv_rest_{run.pk}")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {rest}")
        cursor.execute(f"CREATE TEMPORARY TABLE {rest} AS SELECT {', '.join(f't.{c}' for c in columns)}, "  # noqa: S608
                       f"t.{rn}, t.{problem}, t.{raw}::text AS {raw} FROM {text} AS t "
                       f"WHERE NOT EXISTS (SELECT 1 FROM {stage} AS s WHERE s.{rn} = t.{rn})")
    assert connection.connection is not None
    with connection.connection.cursor(name=f"exchange_csv_{run.pk}", withhold=True) as cursor:
        cursor.itersize = settings.SYNC_BATCH_SIZE
        cursor.execute(f"SELECT * FROM {rest} ORDER BY {rn}")  # noqa: S608

        def rows() -> Iterator[RawRow]:
            for *values, number, why, original in cursor:
                if why is not None:
                    yield RawRow(number, json.loads(original), why)
                else:
                    yield RawRow(number, dict(zip(header, [v or "" for v in values], strict=True)))

        stage_in_python(run, plan, rows(), stage, counts, watermark_column=None, counted=True)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {rest}")


def csv_field_limit() -> int:
    import csv

    return csv.field_size_limit()


@contextmanager
def read_ahead(items: Iterator[bytes], *, depth: int = 2) -> Iterator[Iterator[bytes]]:
    """``items``, produced by a thread of their own up to ``depth`` ahead of the consumer: the
    checks of the next chunk of a file (``readers.plain_csv_chunks``, Python) run while the
    connection waits for PostgreSQL to parse the previous one (libpq lets go of the GIL while
    it waits), instead of one after the other. An exception of ``items`` reaches the consumer
    in its place in the sequence; leaving the block early stops the thread."""
    import queue
    import threading

    done = object()
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # the file, now rather than whenever the generator is collected

    def consume() -> Iterator[bytes]:
        while (item := handoff.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item

    thread = threading.Thread(target=produce, name="exchange-csv-read-ahead", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


def _csv_parsed_by_postgres(run: Run, reader: Reader, text: str, columns: list[str], counts: Counts) -> bool:
    """COPY the uploaded file into ``text`` with PostgreSQL's CSV parser, a transaction per
    chunk (progress, heartbeat and cancel in between), record numbers from the identity column.
    False, with ``text`` emptied, when the file is not plain (see ``readers.plain_csv_chunks``)."""
    import psycopg

    assert reader.csv_file is not None
    try:
        encoding = _literal(pg_csv_encoding(reader.csv_encoding))
        with connection.cursor() as cursor, read_ahead(plain_csv_chunks(reader.csv_file)) as chunks:
            for i, chunk in enumerate(chunks):
                header = ", HEADER" if i == 0 else ""
                options = f"FORMAT csv, FORCE_NULL ({', '.join(columns)}), ENCODING {encoding}{header}"
                with transaction.atomic(), cursor.cursor.copy(  # type: ignore[union-attr]
                        f"COPY {text} ({', '.join(columns)}) FROM STDIN ({options})") as copy:
                    copy.write(chunk)
                counts.read += cursor.cursor.rowcount  # type: ignore[union-attr]
                _progress(run, counts)
    except (NotPlainCSV, psycopg.errors.DataError):
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {text}")
        counts.read = 0
        return False
    return True


def _csv_parsed_by_python(run: Run, reader: Reader, text: str, columns: list[str], counts: Counts) -> None:
    """Parse the file with Python's csv module (record numbers, blank lines, ragged rows and
    undecodable bytes as on the Python path) and COPY each record, re-written as plain CSV, or
    its problem into ``text``, a transaction per batch."""
    import csv
    import io
    import json

    assert reader.csv_records is not None
    blank = [""] * len(reader.columns)
    records = iter(reader.csv_records)
    # A batch ends at the batch size or when progress is due, whichever comes first: a slow
    # source (a URL trickling in) still shows progress and a heartbeat, so that the reaper never
    # takes a run that is only waiting for its source.
    batch = settings.SYNC_BATCH_SIZE
    done = False
    with connection.cursor() as cursor:
        while not done:
            buffer = io.StringIO()
            # "\r\n": every carriage return and line feed inside a value is quoted.
            writer = csv.writer(buffer, lineterminator="\r\n")
            n = 0
            started = time.monotonic()
            for record in records:
                counts.read += 1
                if isinstance(record, RawRow):
                    writer.writerow([*blank, counts.read, record.problem, json.dumps(_jsonable(record.values))])
                else:
                    record.extend((str(counts.read), "", ""))
                    writer.writerow(record)
                n += 1
                if n >= batch or time.monotonic() - started > PROGRESS_EVERY_SECONDS:
                    break
            else:
                done = True
            with transaction.atomic(), cursor.cursor.copy(  # type: ignore[union-attr]
                    f"COPY {text} FROM STDIN (FORMAT csv, FORCE_NULL ({', '.join(columns)}))") as copy:
                copy.write(buffer.getvalue().encode("utf-8"))
            if run.rows_total_estimate is not None and counts.read > run.rows_total_estimate:
                run.rows_total_estimate = None
            _progress(run, counts)


# --- First load -----------------------------------------------------------------------------
# A PostgreSQL source copied into an empty store needs no merge: there is nothing to compare
# with, update or delete. The source's COPY stream goes straight into a new table shaped like
# the store (system columns filled by defaults, the key and the checks enforced as
# constraints), which then replaces the empty store table in the run's one transaction. A row
# the store would refuse (missing key or required value, duplicate key, malformed point)
# violates a constraint: the load is dropped and the run starts over on the staged path, which
# quarantines such rows one by one.

class FirstLoadRefused(Exception):
    pass


def _store_is_empty(plan: Plan) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {plan.table.qualified})")  # noqa: S608
        return bool(cursor.fetchone()[0])


def first_load_eligible(plan: Plan, reader: Reader, watermark_column: str) -> bool:
    return (bulk_eligible(plan, reader, watermark_column)
            and _store_is_empty(plan))


def _value_checks(f: Field) -> list[tuple[str, str]]:
    """The checks of the values of field ``f`` that a column of its store type does not make
    by itself: (condition true for a bad value, reason)."""
    col = ident(f.name)
    if f.type == "geopoint":
        return [(_bad_point_sql(col), f"{f.name}: not a point (\"lat,lon\") in WGS 84 ranges")]
    if f.type == "decimal":
        # numeric takes NaN and ±Infinity (from a float or numeric source); a decimal field does not.
        return [(f"{col} IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)",
                 f"{f.name}: not a finite number (NaN or infinity)")]
    return []


def _bad_point_sql(column: str) -> str:
    """Whether a value is something other than a point ("lat,lon") in WGS 84 ranges; NULL is
    not bad. CASE, so that the casts only ever see text the pattern matched."""
    return (f"({column} IS NOT NULL AND CASE WHEN {column} ~ '{_GEOPOINT_RE}' THEN "
            f"abs(split_part({column}, ',', 1)::float8) > 90 OR abs(split_part({column}, ',', 2)::float8) > 180 "
            f"ELSE true END)")


@contextmanager
def load_table(run: Run, plan: Plan) -> Iterator[tuple[str, str]]:
    """A new table with the store's columns (NOT NULL as the store's rows must satisfy them,
    system columns filled by defaults) but no index yet: :func:`index_load` adds them once it
    is full, which costs less than keeping them up to date row by row. Dropped again unless it
    replaced the store. Yields its bare and its qualified name. One left behind by a killed
    worker is dropped by the next run of the dataset."""
    from psycopg import sql

    table = plan.table
    assert table.schema is not None
    name = f"{table.name}_load"
    qualified = ident(table.schema, name)
    now = sql.Literal(timezone.now()).as_string(connection.connection)
    columns = []
    for f in plan.fields:
        null = " NOT NULL" if f.is_key or not f.nullable else ""
        columns.append(f"{ident(f.name)} {column_type(f.type)}{null}")
    columns += [
        f"{ident('_seq')} bigint NOT NULL",
        f"{ident('_hash')} text NOT NULL DEFAULT ''",
        f"{ident('_deleted')} boolean NOT NULL DEFAULT false",
        f"{ident('_first_seen')} timestamptz NOT NULL DEFAULT {now}",
        f"{ident('_last_seen')} timestamptz NOT NULL DEFAULT {now}",
        f"{ident('_first_run')} bigint DEFAULT {int(run.pk)}",
        f"{ident('_last_run')} bigint DEFAULT {int(run.pk)}",
        *stored_mask_ddl(plan.fields),  # computed by the COPY, row by row, as the store's are
    ]
    replaced = False
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {qualified}")
        cursor.execute(f"CREATE TABLE {qualified} ({', '.join(columns)})")
    try:
        yield name, qualified
        replaced = True
    finally:
        if not replaced and connection.connection is not None and not connection.needs_rollback:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f"DROP TABLE IF EXISTS {qualified}")
            except Exception:  # noqa: BLE001, S110 - the connection may be gone; the next run drops it
                pass


def index_load(plan: Plan, name: str, load: str, *, values_checked: bool = False) -> None:
    """Check the full load table and give it the store's indexes; raise FirstLoadRefused if a
    point or a number is bad or a key repeats (the staged path then says which rows, and why). The point
    check is one count, which PostgreSQL scans in parallel, left out when the values have been
    checked already (``values_checked``); the indexes are built by sorting."""
    from django.db import IntegrityError

    bad = "" if values_checked else " OR ".join(
        f"({condition})" for f in plan.fields for condition, _ in _value_checks(f))
    with transaction.atomic(), connection.cursor() as cursor:
        if bad:
            cursor.execute(f"SELECT count(*) FROM {load} WHERE {bad}")  # noqa: S608
            if cursor.fetchone()[0]:
                raise FirstLoadRefused("a value is not a point or not a finite number")
        try:
            with transaction.atomic():
                cursor.execute(f"ALTER TABLE {load} ADD CONSTRAINT {ident(name + '_pkey')} "
                               f"PRIMARY KEY ({quoted_list(plan.key_fields)})")
        except IntegrityError as exc:
            raise FirstLoadRefused(str(exc)) from exc
        cursor.execute(f"CREATE INDEX {ident(name + '_seq')} ON {load} ({ident('_seq')})")


def first_load(run: Run, plan: Plan, reader: Reader, counts: Counts, *, watermark_column: str) -> MergeResult:
    """Load an empty store from a PostgreSQL source by COPY; raises FirstLoadRefused when a
    row needs the staged path. Precondition: as for ``merge``, and ``first_load_eligible``."""
    import psycopg

    assert reader.copy_out is not None
    by_column = {c: f for f, c in plan.columns.items() if c is not None}
    targets = [by_column[c] for c in reader.selected] + ["_seq"]
    with load_table(run, plan) as (name, load):
        copy_sql = f"COPY {load} ({', '.join(ident(n) for n in targets)}) FROM STDIN"
        try:
            # A transaction per batch outside the run's (a savepoint inside a caller's).
            copy_in_batches(run, counts, copy_sql, reader.copy_out(), atomic_batches=True)
        except psycopg.errors.IntegrityError as exc:  # a NOT NULL column without a value
            raise FirstLoadRefused(str(exc)) from exc
        index_load(plan, name, load)
        counts.staged = counts.read
        if watermark_column:
            counts.watermark = _bulk_watermark(plan, reader, load, watermark_column)
        loaded = counts.read
        result = MergeResult(inserted=loaded, updated=0, deleted=0, unchanged=0,
                             seq_from=1 if loaded else None, seq_to=loaded or None)
        replace_store(run, plan, name, load, counts, result)
    return result


def replace_store(run: Run, plan: Plan, name: str, load: str, counts: Counts, result: MergeResult) -> None:
    """The indexed load table (see :func:`load_table`) becomes the store, in one transaction
    with the run's success; FirstLoadRefused, with nothing changed, if the store did change."""
    table = plan.table
    with transaction.atomic():
        _recheck_claim(run)
        with connection.cursor() as cursor:
            # Readers of the (empty) store wait for this transaction's commit, then see the
            # loaded table; none sees it half loaded.
            cursor.execute(f"LOCK TABLE {table.qualified} IN ACCESS EXCLUSIVE MODE")
            if not _store_is_empty(plan) or _columns_of(table.qualified) != _columns_of(load):
                # The store gained rows or columns meanwhile (a schema version published).
                raise FirstLoadRefused("the store changed during the run")
            resets = [f"ALTER COLUMN {ident(c)} DROP DEFAULT"
                      for c in ("_hash", "_first_seen", "_last_seen", "_first_run", "_last_run")]
            cursor.execute(f"ALTER TABLE {load} {', '.join(resets)}")
            cursor.execute(f"DROP TABLE {table.qualified}")
            cursor.execute(f"ALTER TABLE {load} RENAME TO {ident(table.name)}")
            cursor.execute(f"ALTER TABLE {table.qualified} RENAME CONSTRAINT {ident(name + '_pkey')} "
                           f"TO {ident(table.name + '_pkey')}")
            cursor.execute(f"ALTER INDEX {ident(table.schema or '', name + '_seq')} "
                           f"RENAME TO {ident(table.name + '_seq')}")
        finish_ingest(run, plan, counts, result, first_load=True)


def store_takes_a_load(run: Run, plan: Plan) -> bool:
    """Whether the store is empty and has the columns a load table (:func:`load_table`) gets,
    which it has not when a field was made required after the table was created, say. Compared
    with an empty load table, made for the purpose and dropped again."""
    if not _store_is_empty(plan):
        return False
    with load_table(run, plan) as (_, load):
        same = _columns_of(plan.table.qualified) == _columns_of(load)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {load}")
    return same


def csv_first_load(run: Run, plan: Plan, stage: str, counts: Counts) -> MergeResult:
    """Make the staging table of a CSV run the store, which is empty (``store_takes_a_load``;
    the staging table is then a logged one): the merge would only copy its rows into the store,
    keeping the store's indexes up to date row by row. In the run's one transaction, the staging
    table takes the store's shape (its record numbers are the merge's ``_seq`` into an empty
    store, the system columns get the merge's values as defaults, which need no rewrite), is
    indexed by sorting (which also finds a repeated key, without a search of its own) and
    replaces the store. Raises FirstLoadRefused, with everything rolled back, when a key repeats
    or the store changed: the caller then merges the same staging table as ever
    (``quarantine_duplicates`` says which rows repeat a key)."""
    from django.db import IntegrityError
    from psycopg import sql

    name = _csv_stage_name(plan)
    now = sql.Literal(timezone.now()).as_string(connection.connection)
    required = [f.name for f in plan.fields if f.is_key or not f.nullable]
    seq, rn, bad = ident("_seq"), ident("_rn"), ident("_bad")
    changes = [
        f"DROP COLUMN {bad}",
        f"ADD COLUMN {ident('_deleted')} boolean NOT NULL DEFAULT false",
        f"ADD COLUMN {ident('_first_seen')} timestamptz NOT NULL DEFAULT {now}",
        f"ADD COLUMN {ident('_last_seen')} timestamptz NOT NULL DEFAULT {now}",
        f"ADD COLUMN {ident('_first_run')} bigint DEFAULT {int(run.pk)}",
        f"ADD COLUMN {ident('_last_run')} bigint DEFAULT {int(run.pk)}",
        # Stored masks, as the store has them (their values make this statement rewrite the table).
        *(f"ADD COLUMN {ddl}" for ddl in stored_mask_ddl(plan.fields)),
    ] + [f"ALTER COLUMN {ident(c)} SET NOT NULL" for c in [*required, "_seq", "_hash"]]
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                if counts.staged != counts.read:
                    # The rows of the key only (of quarantined records) serve a merge's deletions.
                    cursor.execute(f"DELETE FROM {stage} WHERE {bad}")  # noqa: S608
                cursor.execute(f"ALTER TABLE {stage} RENAME COLUMN {rn} TO {seq}")
                # One scan checks every NOT NULL.
                cursor.execute(f"ALTER TABLE {stage} {', '.join(changes)}")
            index_load(plan, name, stage, values_checked=True)
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT max({seq}) FROM {stage}")  # noqa: S608 - the index's last entry
                top = cursor.fetchone()[0]
            inserted = counts.staged
            result = MergeResult(inserted=inserted, updated=0, deleted=0, unchanged=0,
                                 seq_from=1 if inserted else None, seq_to=int(top) if inserted else None)
            replace_store(run, plan, name, stage, counts, result)
    except IntegrityError as exc:  # a value the store refuses; the merge then says which
        raise FirstLoadRefused(str(exc)) from exc
    return result


def _columns_of(qualified: str) -> list[tuple[str, int, bool]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT attname, atttypid, attnotnull FROM pg_attribute WHERE attrelid = %s::regclass "
                       "AND attnum > 0 AND NOT attisdropped ORDER BY attname", [qualified])
        return [(r[0], int(r[1]), bool(r[2])) for r in cursor.fetchall()]


def _bulk_watermark(plan: Plan, reader: Reader, table: str, column: str) -> Any:
    """The highest watermark a bulk load brought, as the source compares it: a timestamp
    without time zone arrived as an instant, and goes back to the city's wall time."""
    mark = _stage_max(table, _field_of(plan, column))
    if isinstance(mark, datetime) and reader.pg_types.get(column) == "timestamp":
        mark = mark.astimezone(ZoneInfo(settings.TIME_ZONE)).replace(tzinfo=None)
    return mark


def _stage_max(stage: str, name: str) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max({ident(name)}) FROM {stage}")  # noqa: S608
        return cursor.fetchone()[0]


def finish_ingest(run: Run, plan: Plan, counts: Counts, result: MergeResult, *, first_load: bool = False) -> None:
    source = run.source
    assert source is not None
    now = timezone.now()
    if counts.watermark is not None:
        mark = counts.watermark
        source.watermark_value = mark.isoformat() if isinstance(mark, datetime) else str(mark)
        source.save(update_fields=["watermark_value", "updated_at"])
    fields = dict(
        status=RunStatus.SUCCEEDED, rows_read=counts.read, rows_done=counts.read, rows_inserted=result.inserted,
        rows_updated=result.updated, rows_deleted=result.deleted, rows_unchanged=result.unchanged,
        rows_quarantined=counts.quarantined, finished_at=now, heartbeat_at=now, seq_from=result.seq_from,
        seq_to=result.seq_to, target=plan.table.name, error="",
        schema_version=source.dataset.version,
    )
    fields.update(quality.record(run, counts.quality))
    Run.objects.filter(pk=run.pk).update(**fields)
    for k, v in fields.items():
        setattr(run, k, v)
    if result.inserted + result.updated + result.deleted:
        deliveries_for_change(dataset_id=source.dataset_id, queue=run.queue, lock=not first_load)
    audit_record(
        actor=None, actor_label="job:ingest", action="ingest.run", obj=run,
        dataset_id=source.dataset_id, department_id=source.dataset.department_id,
        row_count=result.inserted + result.updated + result.deleted,
        fields=[f.name for f in plan.fields],
        details={"run": run.pk, "mode": run.mode, "read": counts.read, "inserted": result.inserted,
                 "updated": result.updated, "deleted": result.deleted, "unchanged": result.unchanged,
                 "quarantined": counts.quarantined, "seq_from": result.seq_from, "seq_to": result.seq_to,
                 **({"quality_score": fields["quality_score"],
                     "quality_failed": {r["rule"]: r["failed"] for r in counts.quality if r["failed"]}}
                    if counts.quality else {})},
    )
