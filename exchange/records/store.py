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

On PostgreSQL, a text or point field classed personal or confidential also has its **masked form
stored** beside it: ``_mask_<field>``, a generated column (``GENERATED ALWAYS AS … STORED``)
that the database computes when a row is written and keeps in step on every insert, update
and ``COPY``. A masked field is read far more often than it is written (every page and
export of every grantee holding it masked), and computing the mask is several function
calls per value, which made a masked export take twice as long as the same export in clear;
read from its column it costs what a clear value does. The projection
(``exchange.records.selectors.project``) uses the column wherever the masked form is shown;
on SQLite, and for other types, the mask is computed when read, as before.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from catalog.models import Dataset, Field, FieldType, Sensitivity

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


@functools.cache
def _default_is_postgres() -> bool:
    # The default connection's backend comes from the settings and never changes in a process;
    # asking the connection proxy costs a thread-local lookup, dozens of times per records page.
    return connections[DEFAULT_DB_ALIAS].vendor == "postgresql"


def is_postgres(conn: BaseDatabaseWrapper | None = None) -> bool:
    return _default_is_postgres() if conn is None else conn.vendor == "postgresql"


_PG_IDENTS: dict[tuple[str, ...], str] = {}
_PG_IDENTS_MAX = 8192


def ident(*parts: str, conn: BaseDatabaseWrapper | None = None) -> str:
    """A quoted (optionally schema-qualified) identifier, safe to place in SQL text."""
    if is_postgres(conn):
        conn = conn or connection
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
    return ".".join((conn or connection).ops.quote_name(p) for p in parts)


def column_type(field_type: str, conn: BaseDatabaseWrapper | None = None) -> str:
    return (_PG_TYPES if is_postgres(conn) else _SQLITE_TYPES)[FieldType(field_type)]


@dataclass(frozen=True)
class StoreColumn:
    name: str
    type: str
    is_key: bool
    nullable: bool
    sensitivity: str = ""


# --- Stored masks -------------------------------------------------------------------------------

MASK_PREFIX = "_mask_"
# The classes whose fields are offered masked (exchange.access.services.DEFAULT_FORM) or more
# protected than that: the ones read masked often enough to be worth their storage.
STORED_MASK_SENSITIVITIES = frozenset({Sensitivity.CONFIDENTIAL, Sensitivity.PERSONAL})


def mask_sql(text: str) -> str:
    """PostgreSQL: the masked form of a text expression, all but its last four characters as
    "*" (all of them when it has four or fewer). ``length()`` reads the whole value, so it is
    called once; the test for "longer than four" reads five characters at most. Immutable, as
    a generated column must be."""
    return f"lpad(CASE WHEN substr({text}, 5, 1) <> '' THEN right({text}, 4) ELSE '' END, length({text}), '*')"


def mask_column(field_name: str) -> str:
    """The stored mask's column. Field names are ``[a-z][a-z0-9_]*`` of up to 63 characters;
    PostgreSQL's names are 63 bytes at most, so a long name is cut and made unique again with
    a digest of the whole."""
    name = MASK_PREFIX + field_name
    if len(name) <= 63:
        return name
    return f"{name[:50]}_{hashlib.sha256(field_name.encode()).hexdigest()[:12]}"


def has_stored_mask(field_type: str, sensitivity: str, conn: BaseDatabaseWrapper | None = None) -> bool:
    return (is_postgres(conn) and sensitivity in STORED_MASK_SENSITIVITIES
            and field_type in (FieldType.TEXT, FieldType.GEOPOINT))


def stored_mask_ddl(fields: Iterable[StoreColumn | Field]) -> list[str]:
    """Column definitions of the stored masks of these fields (none on SQLite)."""
    return [f"{ident(mask_column(f.name))} text GENERATED ALWAYS AS ({mask_sql(ident(f.name))}) STORED"
            for f in fields if has_stored_mask(f.type, f.sensitivity)]


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
        columns=tuple(StoreColumn(f.name, f.type, f.is_key, f.nullable, f.sensitivity) for f in fields),
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
        *stored_mask_ddl(table.columns),
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
    table (its records come back with the next full ingest). Stored masks follow their fields.
    Idempotent: a table that matches is not touched.
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
        masks = {n for n in existing if n.startswith(MASK_PREFIX)}
        for name in masks:
            existing.pop(name)
        renames = {old: new for old, new in _renames(dataset).items()
                   if old in existing and new not in existing and new in wanted}
        was = {new: old for old, new in renames.items()}  # a renamed field's column, as it exists
        retyped = {c.name for c in table.columns
                   if was.get(c.name, c.name) in existing and _retyped(c, existing[was.get(c.name, c.name)])}
        # A column cannot be renamed, retyped or dropped under the generated column that reads
        # it: its stored mask goes first, and comes back (under its new name) at the end.
        unchanged = {c.name for c in table.columns if has_stored_mask(c.type, c.sensitivity)} - retyped - set(
            renames.values())
        for mask in masks - {mask_column(n) for n in unchanged}:
            cursor.execute(f"ALTER TABLE {table.qualified} DROP COLUMN {ident(mask)}")
            masks.discard(mask)
        # Renamed fields keep their values: rename the column before anything is dropped.
        for old, new in renames.items():
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
            elif column.name in retyped and is_postgres():
                cursor.execute(
                    f"ALTER TABLE {table.qualified} ALTER COLUMN {ident(column.name)} "
                    f"TYPE {column_type(column.type)} USING NULL"
                )
            elif column.name in retyped:
                cursor.execute(f"ALTER TABLE {table.qualified} DROP COLUMN {ident(column.name)}")
                cursor.execute(
                    f"ALTER TABLE {table.qualified} ADD COLUMN {ident(column.name)} {column_type(column.type)}"
                )
        missing = [c for c in table.columns
                   if has_stored_mask(c.type, c.sensitivity) and mask_column(c.name) not in masks]
        if missing:
            # One statement, so the table is rewritten once whatever the number of masks.
            cursor.execute(f"ALTER TABLE {table.qualified} "
                           + ", ".join(f"ADD COLUMN {ddl}" for ddl in stored_mask_ddl(missing)))
    return table


def _retyped(column: StoreColumn, existing_type: str) -> bool:
    if is_postgres():
        return existing_type != _PG_UDT[column_type(column.type)]
    return existing_type.lower() != column_type(column.type)


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
