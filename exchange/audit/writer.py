"""Audit a read without leaving the request idle while its record is made durable.

A read is audited by one event. On PostgreSQL most of the cost of appending it is the wait
for the commit's WAL flush, time the request would otherwise spend doing nothing. (A records
page asked for as JSON does not come here: its own statement appends its record, see
``exchange.records.selectors.fetch_page_json``; previews, web pages, exports and CKAN reads do.)
Inside a web request, :func:`append_read` sends the append (one statement, see
``exchange.audit``) on a connection of its own and returns without waiting for the answer;
the page is serialised and rendered meanwhile, and :class:`AuditBarrierMiddleware` reads the
answer before the response leaves the process. The guarantee is the one an inline append
gives: no record value reaches a client before the record of that read is committed, and if
the append fails the request fails (500) and the rendered page is thrown away.

Sending and reading are split with psycopg's libpq layer (``Connection.pgconn``), in the
request's own thread: no thread of ours has to win the interpreter lock from the rendering
to make progress, and the server flushes while Python renders.

The event is appended inline instead, on the caller's connection, wherever overlapping
would change its meaning or cannot help:

- outside a request (Celery tasks, management commands, the service layer benchmarked
  alone): nobody would wait for the answer before the data moves on;
- inside a transaction: an event written there must commit or roll back with it (this is
  also why the test suite's transaction-wrapped tests see every event inline);
- on SQLite, whose single writer gains nothing from a second connection;
- when ``AUDIT_OVERLAP_READS`` is off.

Only reads come this way. Governance changes are appended in the transaction that makes
the change, by :func:`exchange.audit.audit_record` directly.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from psycopg import pq

from exchange.audit.services import AuditEntry, append_statement, audit_record, event_values

logger = logging.getLogger(__name__)


def _ready(fd: int, events: int, timeout_ms: int | None = None) -> bool:
    """Whether ``fd`` is ready for ``events`` (``select.POLLIN``/``POLLOUT``) within the
    timeout (None: wait). poll, not select: select fails on descriptors numbered 1024 and
    up, which a busy process reaches."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(timeout_ms))


class _Link:
    """A connection of the process's own (autocommit), for appends in flight."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        params = connection.get_connection_params()  # the request's server, credentials, adapters
        params.pop("cursor_factory", None)
        params.setdefault("application_name", "exchange audit link")  # for pg_stat_activity
        self.conn = psycopg.connect(**params, autocommit=True)
        self.cursor = psycopg.ClientCursor(self.conn)

    def usable(self) -> bool:
        """Whether the connection is still worth a statement. An idle connection is sent
        nothing by the server unless something happened to it (most often: the session was
        terminated, by a restart or an administrator), so one with anything to read is not."""
        pgconn = self.conn.pgconn
        if pgconn.status != pq.ConnStatus.OK or self.conn.closed:
            return False
        return not _ready(pgconn.socket, select.POLLIN, 0)

    def send(self, sql: str, params: list[Any]) -> None:
        pgconn = self.conn.pgconn
        pgconn.send_query(self.cursor.mogrify(sql, params).encode(self.conn.info.encoding))
        while pgconn.flush():  # the connection is non-blocking: send what is left as the socket frees
            _ready(pgconn.socket, select.POLLOUT)

    def receive(self) -> None:
        """Wait for the statement's results and the server's ready signal, which it sends only
        after the commit is flushed; raise the statement's error, if any."""
        pgconn = self.conn.pgconn
        error: str | None = None
        try:
            while True:
                pgconn.consume_input()
                if pgconn.is_busy():
                    _ready(pgconn.socket, select.POLLIN)
                    continue
                result = pgconn.get_result()
                if result is None:
                    break
                if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK) and error is None:
                    error = result.get_error_message() or "the audit append failed"
        except (psycopg.Error, OSError) as exc:  # the connection went away: whether it committed is unknown
            raise DatabaseError(f"audit append: {exc}") from exc
        if error is not None:
            raise DatabaseError(error)

    def close(self) -> None:
        self.conn.close()


_lock = threading.Lock()
_idle: list[_Link] = []  # links not in flight, for the next request of any thread
_pid = os.getpid()
_inherited: list[_Link] = []  # a parent's links, after a fork: never used nor closed here


def _take() -> _Link:
    global _pid
    with _lock:
        if _pid != os.getpid():
            # A forked child holds its parent's sockets: closing them would end the parent's
            # sessions, so they are only kept from being garbage-collected (and closed).
            _inherited.extend(_idle)
            _idle.clear()
            _pid = os.getpid()
        while _idle:
            link = _idle.pop()
            if link.usable():
                return link
            link.close()
    return _Link()


def _give_back(link: _Link) -> None:
    with _lock:
        if link.pid == os.getpid():
            _idle.append(link)


def shutdown() -> None:
    """Close the idle links (the next append opens a new one). Called at exit, and by the
    tests before their database is dropped."""
    with _lock:
        links = [link for link in _idle if link.pid == os.getpid()]
        _idle.clear()
    for link in links:
        link.close()


atexit.register(shutdown)


class _InFlight:
    def __init__(self, link: _Link) -> None:
        self.link = link

    def finish(self) -> None:
        try:
            self.link.receive()
        except BaseException:
            self.link.close()  # its state is unknown: never reused
            raise
        _give_back(self.link)


class _Scope:
    """The appends a request has in flight, for the barrier to wait on."""

    def __init__(self) -> None:
        self.in_flight: list[_InFlight] = []

    def wait(self) -> None:
        """Block until every append of the request is committed; raise the first failure."""
        in_flight, self.in_flight = self.in_flight, []
        failure: DatabaseError | None = None
        for append in in_flight:
            try:
                append.finish()
            except DatabaseError as exc:  # every link is finished; the first failure is raised
                failure = failure or exc
        if failure is not None:
            raise failure


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("audit_writer_scope", default=None)


def overlapping() -> bool:
    """Whether an append now would be sent without waiting (see the module's docstring)."""
    return (
        _scope.get() is not None
        and settings.AUDIT_OVERLAP_READS
        and connection.vendor == "postgresql"
        and not connection.in_atomic_block
    )


def append_read(**event: Any) -> None:
    """Append the audit event of a read (the arguments of :func:`audit_record`): sent without
    waiting when :func:`overlapping`, otherwise inline."""
    scope = _scope.get()
    if scope is None or not overlapping():
        audit_record(**event)
        return
    sql, params = append_statement(event_values(AuditEntry(**event)))
    link: _Link | None = None
    try:
        link = _take()
        link.send(sql, params)
    except (psycopg.Error, OSError):
        if link is not None:
            link.close()
        # Nothing reached the server (a statement only runs once all of it has arrived):
        # append on the request's own connection instead.
        logger.warning("audit link unavailable; appending inline", exc_info=True)
        audit_record(**event)
        return
    scope.in_flight.append(_InFlight(link))


@contextmanager
def request_scope() -> Iterator[_Scope]:
    """Appends sent inside are waited for at the end; a failure raises there."""
    scope = _Scope()
    token = _scope.set(scope)
    try:
        yield scope
    except BaseException:
        # The request is failing anyway; still wait, so no append outlives its request.
        try:
            scope.wait()
        except Exception:
            logger.exception("audit append of a failing request failed")
        raise
    finally:
        _scope.reset(token)
    scope.wait()


class AuditBarrierMiddleware:
    """Waits for the request's appends in flight before its response goes out. Django renders
    template and API responses before any middleware sees them, so when this returns the page
    is complete but not one byte of it has left the process yet."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with request_scope():
            return self.get_response(request)
