"""config/postgresql: the health check of a persistent connection needs no round trip, and
still finds a connection whose session the server ended; statements of a prepared cursor are
prepared (and only those), and still right after their tables change."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from django.db import connection, connections
from django.db.backends.postgresql import base

from config.postgresql.base import prepared_cursor

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's backend"),
]


def test_an_idle_session_is_usable_without_a_statement_and_a_terminated_one_is_not():
    other = connections.create_connection("default")
    try:
        other.ensure_connection()
        with mock.patch.object(base.DatabaseWrapper, "is_usable", side_effect=AssertionError("a round trip")):
            assert other.is_usable()
        pid = other.connection.info.backend_pid
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 5
        while other.is_usable() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not other.is_usable()
    finally:
        other.close()


def test_a_session_whose_transaction_failed_is_not_usable():
    """As with Django's own check: a connection left in a failed transaction is not taken as
    usable (the socket alone would say it is)."""
    from django.db import DatabaseError

    other = connections.create_connection("default")
    try:
        other.ensure_connection()
        other.set_autocommit(False)
        with pytest.raises(DatabaseError), other.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
        assert not other.is_usable()
        other.rollback()
        other.set_autocommit(True)
        assert other.is_usable()
    finally:
        other.close()


# --- Prepared statements ----------------------------------------------------------------------

def _prepared(text_part: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [f"%{text_part}%"])
        return int(cursor.fetchone()[0])


def test_a_prepared_cursor_prepares_after_a_few_runs_and_is_counted_like_any_cursor(django_assert_num_queries):
    from config.postgresql.base import PREPARE_THRESHOLD

    sql = "SELECT CAST(%s AS bigint) + 1 AS prepared_probe"
    with django_assert_num_queries(PREPARE_THRESHOLD + 2) as captured:
        for i in range(PREPARE_THRESHOLD + 2):
            with prepared_cursor(connection) as cursor:
                cursor.execute(sql, [i])
                assert cursor.fetchone()[0] == i + 1
    assert _prepared("prepared_probe") == 1
    # Logged with its values, as a client-bound statement is.
    last = PREPARE_THRESHOLD + 1
    assert captured.captured_queries[-1]["sql"] == f"SELECT CAST({last} AS bigint) + 1 AS prepared_probe"
    # Django's own cursors bind in the client and never prepare, however often they run.
    for _ in range(PREPARE_THRESHOLD + 2):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 AS client_probe")
    assert _prepared("client_probe") == 0


def test_a_prepared_statement_follows_its_table_through_changes():
    """The server plans a prepared statement again when a table it reads changes, and finds
    a table dropped and made anew under the same name by its name."""
    from config.postgresql.base import PREPARE_THRESHOLD

    sql = "SELECT string_agg(label, ',' ORDER BY id) FROM prepared_probe_t WHERE id > CAST(%s AS bigint)"

    def read() -> str:
        with prepared_cursor(connection) as cursor:
            cursor.execute(sql, [0])
            return str(cursor.fetchone()[0])

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE prepared_probe_t (id bigint PRIMARY KEY, label text)")
        cursor.execute("INSERT INTO prepared_probe_t VALUES (1, 'a'), (2, 'b')")
    for _ in range(PREPARE_THRESHOLD + 1):
        assert read() == "a,b"
    assert _prepared("prepared_probe_t") == 1
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE prepared_probe_t ADD COLUMN extra text, ALTER COLUMN label TYPE varchar(10)")
    assert read() == "a,b"
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE prepared_probe_t")
        cursor.execute("CREATE TABLE prepared_probe_t (label text, id bigint)")
        cursor.execute("INSERT INTO prepared_probe_t VALUES ('c', 3)")
    assert read() == "c"


def test_preparing_can_be_turned_off(settings):
    settings.DATABASE_PREPARED_STATEMENTS = False
    other = connections.create_connection("default")
    try:
        assert other.get_connection_params()["prepare_threshold"] is None
        other.ensure_connection()
        for i in range(8):
            with prepared_cursor(other) as cursor:
                cursor.execute("SELECT CAST(%s AS bigint) AS unprepared_probe", [i])
        with other.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements")
            assert cursor.fetchone()[0] == 0
    finally:
        other.close()
