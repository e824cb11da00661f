"""The record store: one typed table per dataset, derived from its published field schema.

On PostgreSQL the tables live in their own schema (``exchange_store``), so that bulk paths run
at ``COPY`` speed and projections (masking, pseudonymisation, row filters) run in the database.
On SQLite (the embedded default) they live in the main database file with a ``store_`` prefix.
Every identifier built from a user-defined name goes through :func:`ident`, which uses
``psycopg.sql.Identifier`` on PostgreSQL and Django's own quoting (as its schema editor does)
on SQLite; field names are also restricted to ``[a-z][a-z0-9_]*`` by the catalogue.

System columns, next to the dataset's own fields:

``_seq``        a per-table monotonic change number, set on every insert, update and deletion
                (a run numbers its changes above the table's maximum, and runs of one dataset
                never overlap); deliveries resume from the last ``_seq`` they sent
``_hash``       content hash of the row's field values, by which a SQLite merge tells unchanged
                records from changed ones (PostgreSQL compares the typed values and leaves it empty)
``_deleted``    tombstone: a record deleted at the source stays as a tombstone so that
                deliveries can delete it downstream; every reader filters it out
``_first_seen``, ``_last_seen``, ``_first_run``, ``_last_run``: when and by which run a
                record was first and last seen
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from catalog.models import Dataset, Field, FieldType

PG_SCHEMA = "exchange_store"

SYSTEM_COLUMNS = ("_seq", "_hash", "_deleted", "_first_seen", "_last_seen", "_first_run", "_last_run")

_PG_TYPES = {
    FieldType.TEXT: "text",
    FieldType.INTEGER: "bigint",
    FieldType.DECIMAL: "numeric",
    FieldType.BOOLEAN: "boolean",
    FieldType.DATE: "date",
    FieldType.TIMESTAMP: "timestamptz",
    FieldType.GEOPOINT: "text",  # "lat,lon" in WGS 84, validated on ingest
    FieldType.JSON: "jsonb",
}
_SQLITE_TYPES = {
    FieldType.TEXT: "text",
    FieldType.INTEGER: "integer",
    FieldType.DECIMAL: "numeric",
    FieldType.BOOLEAN: "integer",
    FieldType.DATE: "text",
    FieldType.TIMESTAMP: "text",
    FieldType.GEOPOINT: "text",
    FieldType.JSON: "text",
}


def is_postgres(conn: BaseDatabaseWrapper | None = None) -> bool:
    return (conn or connection).vendor == "postgresql"


_PG_IDENTS: dict[tuple[str, ...], str] = {}
_PG_IDENTS_MAX = 8192


def ident(*parts: str, conn: BaseDatabaseWrapper | None = None) -> str:
    """A quoted (optionally schema-qualified) identifier, safe to place in SQL text."""
    conn = conn or connection
    if is_postgres(conn):
        # Quoting goes through libpq on a live connection, which costs a records page more than
        # a hundred round trips into psycopg; the answer depends only on the name (the
        # connections are all UTF-8), so it is remembered.
        quoted = _PG_IDENTS.get(parts)
        if quoted is None:
            from psycopg import sql

            conn.ensure_connection()
            quoted = sql.Identifier(*parts).as_string(conn.connection)
            if len(_PG_IDENTS) < _PG_IDENTS_MAX:
                _PG_IDENTS[parts] = quoted
        return quoted
    return ".".join(conn.ops.quote_name(p) for p in parts)


def column_type(field_type: str, conn: BaseDatabaseWrapper | None = None) -> str:
    return (_PG_TYPES if is_postgres(conn) else _SQLITE_TYPES)[FieldType(field_type)]


@dataclass(frozen=True)
class StoreColumn:
    name: str
    type: str
    is_key: bool
    nullable: bool


@dataclass(frozen=True)
class StoreTable:
    dataset_id: int
    schema: str | None
    name: str
    columns: tuple[StoreColumn, ...]

    @property
    def qualified(self) -> str:
        return ident(self.schema, self.name) if self.schema else ident(self.name)

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> StoreColumn:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def table_name(dataset_id: int) -> tuple[str | None, str]:
    if is_postgres():
        return PG_SCHEMA, f"ds_{dataset_id}"
    return None, f"store_ds_{dataset_id}"


def _schema_fields(dataset: Dataset) -> list[Field]:
    if dataset.current_schema_id is None:
        return []
    return list(Field.objects.filter(schema_id=dataset.current_schema_id).order_by("position"))


def store_table(dataset: Dataset, fields: Sequence[Field] | None = None) -> StoreTable:
    """The store table of a dataset as its current published schema describes it."""
    fields = list(fields) if fields is not None else _schema_fields(dataset)
    schema, name = table_name(dataset.pk)
    return StoreTable(
        dataset_id=dataset.pk, schema=schema, name=name,
        columns=tuple(StoreColumn(f.name, f.type, f.is_key, f.nullable) for f in fields),
    )


def _existing_columns(table: StoreTable) -> dict[str, str] | None:
    """Column name -> database type of the table as it exists, or None if it does not."""
    with connection.cursor() as cursor:
        if is_postgres():
            # The catalogue itself rather than information_schema.columns, a view of many joins
            # that costs more than the rest of an incremental run's bookkeeping; the type names
            # are those udt_name gives (the store has no domain columns).
            cursor.execute(
                "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                [table.qualified],
            )
        else:
            cursor.execute("SELECT name, type FROM pragma_table_info(%s)", [table.name])
        rows = cursor.fetchall()
    return {r[0]: r[1] for r in rows} or None


_PG_UDT = {"text": "text", "bigint": "int8", "numeric": "numeric", "boolean": "bool", "date": "date",
           "timestamptz": "timestamptz", "jsonb": "jsonb"}


def _column_ddl(column: StoreColumn) -> str:
    null = "" if column.nullable and not column.is_key else " NOT NULL"
    return f"{ident(column.name)} {column_type(column.type)}{null}"


def _create(table: StoreTable, cursor: object) -> None:
    if not table.key_columns:
        raise ValueError(f"dataset {table.dataset_id} has no key; cannot create its store table")
    ts = "timestamptz" if is_postgres() else "text"
    columns = [_column_ddl(c) for c in table.columns] + [
        f"{ident('_seq')} bigint NOT NULL",
        f"{ident('_hash')} text NOT NULL",
        f"{ident('_deleted')} boolean NOT NULL DEFAULT false",
        f"{ident('_first_seen')} {ts} NOT NULL",
        f"{ident('_last_seen')} {ts} NOT NULL",
        f"{ident('_first_run')} bigint",
        f"{ident('_last_run')} bigint",
        f"PRIMARY KEY ({', '.join(ident(k) for k in table.key_columns)})",
    ]
    cursor.execute(f"CREATE TABLE {table.qualified} ({', '.join(columns)})")  # type: ignore[attr-defined]
    cursor.execute(  # type: ignore[attr-defined]
        f"CREATE INDEX {ident(table.name + '_seq')} ON {table.qualified} ({ident('_seq')})"
    )


def store_ensure_table(dataset: Dataset, fields: Sequence[Field] | None = None) -> StoreTable:
    """Create or evolve the dataset's store table to match its current published schema
    (whose ``fields`` a caller that has them read already may pass).

    Added fields become new (empty) columns, removed fields are dropped, retyped fields are
    converted where the database can cast and emptied otherwise, and a changed key rebuilds the
    table (its records come back with the next full ingest). Idempotent.
    """
    table = store_table(dataset, fields)
    with transaction.atomic(), connection.cursor() as cursor:
        existing = _existing_columns(table)
        if existing is None:
            if is_postgres():
                cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(PG_SCHEMA)}")
            _create(table, cursor)
            return table
        if _key_changed(table, existing):
            cursor.execute(f"DROP TABLE {table.qualified}")
            _create(table, cursor)
            return table
        wanted = {c.name: c for c in table.columns}
        # Renamed fields keep their values: rename the column before anything is dropped.
        for old, new in _renames(dataset).items():
            if old in existing and new not in existing and new in wanted:
                cursor.execute(f"ALTER TABLE {table.qualified} RENAME COLUMN {ident(old)} TO {ident(new)}")
                existing[new] = existing.pop(old)
        for name in existing:
            if name not in wanted and name not in SYSTEM_COLUMNS:
                cursor.execute(f"ALTER TABLE {table.qualified} DROP COLUMN {ident(name)}")
        for column in table.columns:
            if column.name not in existing:
                # Added as nullable: existing records have no value until the next ingest.
                cursor.execute(
                    f"ALTER TABLE {table.qualified} ADD COLUMN {ident(column.name)} {column_type(column.type)}"
                )
            elif is_postgres() and existing[column.name] != _PG_UDT[column_type(column.type)]:
                cursor.execute(
                    f"ALTER TABLE {table.qualified} ALTER COLUMN {ident(column.name)} "
                    f"TYPE {column_type(column.type)} USING NULL"
                )
            elif not is_postgres() and existing[column.name].lower() != column_type(column.type):
                cursor.execute(f"ALTER TABLE {table.qualified} DROP COLUMN {ident(column.name)}")
                cursor.execute(
                    f"ALTER TABLE {table.qualified} ADD COLUMN {ident(column.name)} {column_type(column.type)}"
                )
    return table


def _renames(dataset: Dataset) -> dict[str, str]:
    if dataset.current_schema_id is None:
        return {}
    return dict(
        Field.objects.filter(schema_id=dataset.current_schema_id).exclude(renamed_from="")
        .values_list("renamed_from", "name")
    )


def _key_changed(table: StoreTable, existing: dict[str, str]) -> bool:
    with connection.cursor() as cursor:
        if is_postgres():
            cursor.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                [f"{table.schema}.{table.name}"],
            )
            current = {r[0] for r in cursor.fetchall()}
        else:
            cursor.execute("SELECT name FROM pragma_table_info(%s) WHERE pk > 0", [table.name])
            current = {r[0] for r in cursor.fetchall()}
    return current != set(table.key_columns)


def store_drop_table(dataset_id: int) -> None:
    schema, name = table_name(dataset_id)
    qualified = ident(schema, name) if schema else ident(name)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {qualified}")


def store_exists(dataset: Dataset) -> bool:
    schema, name = table_name(dataset.pk)
    with connection.cursor() as cursor:
        if is_postgres():
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{ident(schema, name)}" if schema else name])
        else:
            cursor.execute("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = %s", [name])
        row = cursor.fetchone()
    return bool(row and row[0])


def quoted_list(names: Iterable[str]) -> str:
    return ", ".join(ident(n) for n in names)
