"""A deadline for the statements of a web or API request, whose filters, search and ordering
are the user's: on PostgreSQL ``statement_timeout`` on the request's connection, on SQLite a
progress handler that interrupts a statement past its deadline. Set on the driver's connection
itself (these are settings, not queries of the request). A statement stopped so answers 503
(code ``query_timeout``) in the API's error shape, never a 500.

On PostgreSQL a web process's connection outlives its requests (``CONN_MAX_AGE``) and is used
by nothing but requests, each of which sets its own limit; so outside a transaction the limit
stays on the connection when a block ends, remembered on the driver's connection object, and
the next block with the same limit costs no round trip (a new connection, or a different
limit, is set again). Inside a transaction the limit is set for the block and reset after it,
as before: a rollback would take it back behind the memo's back."""

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


# The limit (ms) a driver connection holds at session level outside any transaction, as set
# here; an attribute of the psycopg connection object, so a new connection starts without it.
_MEMO = "_exchange_statement_timeout_ms"


@contextmanager
def _postgresql(seconds: float) -> Iterator[None]:
    import psycopg

    limit = int(seconds * 1000)
    kept = False
    try:
        connection.ensure_connection()
        raw = connection.connection
        # Outside a transaction a session setting lasts until it is set again, so it may stay;
        # inside one, a rollback (e.g. of the statement that timed out) takes it back by itself.
        kept = not connection.in_atomic_block and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if not (kept and getattr(raw, _MEMO, None) == limit):
            if hasattr(raw, _MEMO):
                delattr(raw, _MEMO)  # unknown until the statement below has run
            raw.execute("SELECT set_config('statement_timeout', %s, false)", [f"{limit}ms"])
            if kept:
                setattr(raw, _MEMO, limit)
    except (DatabaseError, psycopg.Error):
        # The database cannot be reached: there is no limit to set, and the view meets the
        # error itself (the health check answers 503 then, as it must), on a fresh connection.
        connection.close()
        yield
        return
    try:
        yield
    finally:
        if not kept:
            try:
                if connection.connection is raw and not connection.needs_rollback:
                    raw.execute("RESET statement_timeout")
            except Exception:  # noqa: BLE001 - an aborted transaction: its rollback resets the setting
                if not connection.in_atomic_block:
                    connection.close()  # never leave a connection with a limit nobody remembers


def forget_kept_limit() -> None:
    """Take a kept limit (see the module docstring) off the default connection, if it holds
    one: for a process whose connection also serves code other than requests (the tests)."""
    raw = connection.connection
    if raw is not None and getattr(raw, _MEMO, None) is not None:
        delattr(raw, _MEMO)
        raw.execute("RESET statement_timeout")


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

