"""Django's PostgreSQL backend with a health check that costs no round trip.

With persistent connections, ``CONN_HEALTH_CHECKS`` makes Django send ``SELECT 1`` before the
first statement of every request, one round trip more per request (a quarter of a records
request's time on the database side, measured with ``python -m bench http``). An idle session
is sent nothing by the server unless something happened to it (it was terminated, the server
restarted or shut down, a notice arrived), and the kernel reports a peer that went away as
readable. So a connection whose libpq status is good and whose socket has nothing to read is
taken as usable; anything else gets Django's own ``SELECT 1`` check. The one case this no
longer catches up front (a peer that vanished without a word, e.g. a cut network) fails the
request's first statement instead, after which Django discards the connection as before.

It also offers :meth:`DatabaseWrapper.prepared_cursor`, for the statements a process runs
again and again with other values (a records page, a token's lookup): bound on the server,
and prepared on a connection once it has run the same text a few times, so the server parses
and plans it once instead of on every request. The server plans a prepared statement again by
itself when a table it reads changes, but refuses to run it if the types of its *result*
columns changed: a statement run this way must fix its result's types (a records page answers
text, bigint, text whatever the table; the token's lookup casts every column). Every other
statement is bound in the client as Django does by default, and never prepared: with its
values in its text, it is rarely the same twice. ``DATABASE_PREPARED_STATEMENTS=0`` turns
preparing off (behind a pooler that cannot keep prepared statements per client).
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.postgresql import base
from django.db.backends.postgresql.operations import DatabaseOperations as PostgresOperations
from django.db.backends.utils import CursorWrapper
from psycopg import pq

# psycopg prepares a statement once a connection has run its text this many times (its own
# default). Django turns that off (None) for every connection; statements of Django's cursors
# are bound in the client and so never prepared whatever the number, and only
# ``prepared_cursor`` binds on the server.
PREPARE_THRESHOLD = 5


class DatabaseOperations(PostgresOperations):
    def last_executed_query(self, cursor: Any, sql: str, params: Any) -> str:
        """The statement as run, for logs and ``CaptureQueriesContext``: Django's own answer
        reads it from a client-binding cursor, and a prepared cursor's text holds ``$1``
        placeholders instead of values, so its values are put in here the way the client would."""
        if isinstance(cursor, psycopg.ClientCursor):
            return super().last_executed_query(cursor, sql, params)
        try:
            return str(self.compose_sql(sql, params))
        except psycopg.errors.DataError:
            return sql


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        if params.get("prepare_threshold") is None and getattr(settings, "DATABASE_PREPARED_STATEMENTS", True):
            params["prepare_threshold"] = PREPARE_THRESHOLD
        return params

    def prepared_cursor(self) -> CursorWrapper:
        """A cursor (Django's wrapper, so counted, logged and timed like any other) whose
        statements are bound on the server, and so prepared once their text has run
        ``PREPARE_THRESHOLD`` times on the connection: for statements of fixed text run with
        other values, whose result columns' types never change. Each placeholder must have a
        type the server can infer (cast it: ``CAST(%s AS bigint)``)."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            self.validate_thread_sharing()
            cursor: Any = psycopg.Cursor(self.connection)
            return self.make_debug_cursor(cursor) if self.queries_logged else self.make_cursor(cursor)

    def is_usable(self) -> bool:
        conn = self.connection
        if conn is None or conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
            return False
        if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            # In a transaction (perhaps a failed one): Django's own check answers exactly.
            return bool(super().is_usable())
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        if poller.poll(0):
            return bool(super().is_usable())
        return True


def prepared_cursor(conn: BaseDatabaseWrapper) -> CursorWrapper:
    """``conn.prepared_cursor()`` on this backend; Django's own cursor on any other (SQLite)."""
    make = getattr(conn, "prepared_cursor", None)
    return make() if make is not None else conn.cursor()
