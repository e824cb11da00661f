"""A deadline for the statements of a web or API request, whose filters, search and ordering
are the user's: on PostgreSQL ``statement_timeout`` on the request's connection, on SQLite a
progress handler that interrupts a statement past its deadline. Set and reset on the driver's
connection itself (these are settings, not queries of the request). A statement stopped so
answers 503 (code ``query_timeout``) in the API's error shape, never a 500."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import DatabaseError, connection

# The deadline (time.monotonic()) of the SQLite statements in this context, if any.
_sqlite_deadline: ContextVar[float | None] = ContextVar("sqlite_deadline", default=None)
_active: ContextVar[bool] = ContextVar("statement_timeout_active", default=False)


@contextmanager
def statement_timeout(seconds: float) -> Iterator[None]:
    """No statement on the default connection inside the block runs longer than ``seconds``
    (0: no limit). Nested blocks keep the outer limit."""
    if not seconds or seconds <= 0 or _active.get():
        yield
        return
    token = _active.set(True)
    try:
        if connection.vendor == "postgresql":
            with _postgresql(seconds):
                yield
        elif connection.vendor == "sqlite":
            with _sqlite(seconds):
                yield
        else:
            yield
    finally:
        _active.reset(token)


@contextmanager
def _postgresql(seconds: float) -> Iterator[None]:
    import psycopg

    try:
        connection.ensure_connection()
        raw = connection.connection
        # Session level: outside a transaction it lasts until it is reset below; inside one, a
        # rollback (e.g. of the statement that timed out) takes it back by itself.
        raw.execute("SELECT set_config('statement_timeout', %s, false)", [f"{int(seconds * 1000)}ms"])
    except (DatabaseError, psycopg.Error):
        # The database cannot be reached: there is no limit to set, and the view meets the
        # error itself (the health check answers 503 then, as it must), on a fresh connection.
        connection.close()
        yield
        return
    try:
        yield
    finally:
        try:
            if connection.connection is raw and not connection.needs_rollback:
                raw.execute("RESET statement_timeout")
        except Exception:  # noqa: BLE001 - an aborted transaction: its rollback resets the setting
            if not connection.in_atomic_block:
                connection.close()  # never hand a connection with a leftover limit to the next request


@contextmanager
def _sqlite(seconds: float) -> Iterator[None]:
    connection.ensure_connection()
    raw = connection.connection
    token = _sqlite_deadline.set(time.monotonic() + seconds)

    def past_deadline() -> int:
        deadline = _sqlite_deadline.get()
        return 1 if deadline is not None and time.monotonic() > deadline else 0

    raw.set_progress_handler(past_deadline, 10_000)
    try:
        yield
    finally:
        raw.set_progress_handler(None, 0)
        _sqlite_deadline.reset(token)


def is_statement_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a statement stopped by its deadline: PostgreSQL's query_canceled
    (57014), or SQLite interrupted by the progress handler above."""
    cause = exc.__cause__
    # psycopg's own error (a COPY on the driver's connection), or Django's wrapping one.
    if "57014" in (getattr(exc, "sqlstate", None), getattr(cause, "sqlstate", None)):
        return True
    if not isinstance(exc, DatabaseError):
        return False
    # SQLite says "interrupted" only when a progress handler (the one above: nothing else in
    # the exchange sets one) or Connection.interrupt() stopped the statement.
    return isinstance(cause, sqlite3.OperationalError) and str(cause) == "interrupted"

