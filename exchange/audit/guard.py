"""Database triggers that make the audit tables append-only.

The hash chain *detects* tampering; these triggers *refuse* it, so that no code path of the
application (an ORM ``update()``, an admin action, a bug) can change or remove an audit row.
They do not stop the owner of the tables, who can disable them; against that the chain and
the signed checkpoints remain. The migration installs them; :func:`suspended` lifts them for
the deliberate exceptions: ``manage.py flush`` (tests, development) and tests that tamper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

GUARDED_TABLES = ("exchange_auditevent", "exchange_auditcheckpoint")

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION exchange_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$
"""


def _pg_statements(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION exchange_audit_append_only()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION exchange_audit_append_only()",
    ]


def _sqlite_triggers(table: str) -> dict[str, str]:
    return {
        f"{table}_no_{op.lower()}": (
            f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} BEGIN "
            f"SELECT RAISE(ABORT, 'the audit table {table} is append-only: {op} refused'); END"
        )
        for op in ("UPDATE", "DELETE")
    }


def install(connection: Any) -> None:
    """Create the triggers (PostgreSQL and SQLite; other backends are left unguarded)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_PG_FUNCTION)
            for table in GUARDED_TABLES:
                for statement in _pg_statements(table):
                    cursor.execute(statement)
        elif connection.vendor == "sqlite":
            for table in GUARDED_TABLES:
                for statement in _sqlite_triggers(table).values():
                    cursor.execute(statement)


def uninstall(connection: Any) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for table in GUARDED_TABLES:
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            cursor.execute("DROP FUNCTION IF EXISTS exchange_audit_append_only()")
        elif connection.vendor == "sqlite":
            for table in GUARDED_TABLES:
                for name in _sqlite_triggers(table):
                    cursor.execute(f"DROP TRIGGER IF EXISTS {name}")


@contextmanager
def suspended(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Lift the triggers for the duration of the block, inside one transaction, so that they
    are back in force (or the whole block rolled back) when it ends. Needs the rights of the
    tables' owner on PostgreSQL: the application's everyday role should not have them."""
    connection = connections[using]
    present = set(connection.introspection.table_names()) & set(GUARDED_TABLES)
    with transaction.atomic(using=using):
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                for table in present:
                    cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            elif connection.vendor == "sqlite":
                cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
                wanted = {name for table in present for name in _sqlite_triggers(table)}
                dropped = [(name, sql) for name, sql in cursor.fetchall() if name in wanted]
                for name, _ in dropped:
                    cursor.execute(f"DROP TRIGGER {name}")
        yield
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                for table in present:
                    cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            elif connection.vendor == "sqlite":
                for _, sql in dropped:
                    cursor.execute(sql)
