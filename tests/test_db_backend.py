"""config/postgresql: the health check of a persistent connection needs no round trip, and
still finds a connection whose session the server ended."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from django.db import connection, connections
from django.db.backends.postgresql import base

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
