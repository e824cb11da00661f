"""A web request's read is on the record before its response leaves. A records page asked
for as JSON appends its record in its own statement (exchange.records.fetch_page_json); other
reads (previews, web pages, exports) append on a link connection while the page renders, and
the response waits for it (exchange/audit/writer.py). These tests commit for real (the link
is a connection of its own, which cannot see a test's uncommitted transaction), so they run
on the PostgreSQL pass, where overlapping is switched on."""

from __future__ import annotations

import time
from typing import cast

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from exchange.audit import writer as audit_writer
from exchange.audit.models import AuditEvent, AuditOutcome
from exchange.records import selectors as records
from tests.exchange.records.test_records import CANARY_NAME, CANARY_PHONE, rows, url
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("the audit writer overlaps appends on PostgreSQL only")


@pytest.fixture
def permits(department, people):
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    grant(dataset, user=people["outsider"], approved_by=people["steward"],
          fields={"permit_id": "clear", "district": "clear", "phone": "masked"})
    return dataset


def _appends(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "exchange_audit_append" in q["sql"]]


def _reads(dataset, action: str = "records.preview") -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(dataset_id=dataset.pk, action=action).order_by("id"))


PREVIEW = "preview/"  # a read whose record goes on the link


def test_a_json_page_appends_its_read_in_its_own_statement(as_user, people, permits):
    audit_writer.shutdown()  # no link left idle by an earlier test
    client = as_user(people["outsider"])
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url(permits), {"page_size": 5, "district": "North"}, HTTP_X_REQUEST_ID="req-overlap-1")
    assert response.status_code == 200
    body = response.json()
    # One statement read the page and appended its record, on the request's connection ...
    (statement,) = _appends(queries)
    assert "string_agg(row_to_json" in statement
    assert audit_writer._idle == []  # no link was needed
    # ... and it was committed before the client had the response.
    (event,) = _reads(permits, "records.read")
    assert event.outcome == AuditOutcome.ALLOWED
    assert event.actor_id == people["outsider"].pk
    assert event.row_count == len(body["results"]) == 4
    assert event.fields == ["permit_id", "phone", "district"]  # in schema order
    assert event.filters["conditions"] == [{"field": "district", "op": "eq", "value": "North"}]
    assert event.request_id == "req-overlap-1" == response["X-Request-ID"]
    assert event.client_ip == "127.0.0.1"
    from exchange.audit.services import audit_verify

    assert audit_verify().intact


def _failing_on_the_server(monkeypatch, statement: str = "SELECT 1 / 0") -> None:
    """The append's statement replaced by one the server refuses, after it was sent."""
    monkeypatch.setattr(audit_writer, "append_statement", lambda values: (statement, []))


def _withheld(response) -> bool:
    body = response.content.decode()
    return (response.status_code == 500 and "permit_id" not in body and CANARY_PHONE[:8] not in body
            and "North" not in body)


def test_a_failed_append_withholds_the_page(people, permits, monkeypatch):
    _failing_on_the_server(monkeypatch)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user=people["outsider"])
    assert _withheld(client.get(url(permits, PREVIEW)))
    assert _reads(permits) == []
    # The link that failed is not reused; the next request opens another and is audited.
    monkeypatch.undo()
    assert client.get(url(permits, PREVIEW)).status_code == 200 and len(_reads(permits)) == 1


def _failing_after_the_append(monkeypatch) -> None:
    """The page statement's append followed, in the same statement, by an error on the
    server: the append ran, and is rolled back with the page."""
    real = records.append_call

    def failing(values, row_count_sql):
        call, params = real(values, row_count_sql)
        return f"(SELECT _x.* FROM {call} AS _x WHERE 1 / ({row_count_sql} - {row_count_sql}) = 1)", params

    monkeypatch.setattr(records, "append_call", failing)


def test_a_json_page_whose_append_fails_is_withheld_and_not_recorded(people, permits, monkeypatch):
    _failing_after_the_append(monkeypatch)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user=people["outsider"])
    assert _withheld(client.get(url(permits)))
    assert _reads(permits, "records.read") == []
    monkeypatch.undo()
    assert client.get(url(permits)).status_code == 200 and len(_reads(permits, "records.read")) == 1
    from exchange.audit.services import audit_verify

    assert audit_verify().intact


def test_the_failure_is_raised_to_the_handler(as_user, people, permits, monkeypatch):
    _failing_on_the_server(monkeypatch)
    with pytest.raises(DatabaseError, match="division by zero"):
        as_user(people["outsider"]).get(url(permits, PREVIEW))
    _failing_after_the_append(monkeypatch)
    with pytest.raises(DatabaseError, match="division by zero"):
        as_user(people["outsider"]).get(url(permits))


def test_the_response_waits_for_a_slow_commit(as_user, people, permits, monkeypatch):
    real = audit_writer.append_statement

    def slow(values):
        sql, params = real(values)
        return "SELECT pg_sleep(0.4); " + sql, params

    monkeypatch.setattr(audit_writer, "append_statement", slow)
    assert as_user(people["outsider"]).get(url(permits, PREVIEW)).status_code == 200
    assert len(_reads(permits)) == 1  # already committed when the client had the page


def test_html_pages_are_overlapped_too(client, people, permits):
    client.force_login(people["outsider"])
    with CaptureQueriesContext(connection) as queries:
        page = client.get(f"/datasets/{permits.pk}/records/")
    assert page.status_code == 200 and CANARY_NAME not in page.content.decode()
    assert _appends(queries) == []
    assert len(_reads(permits, "records.read")) == 1


def test_an_export_is_on_the_record_before_its_first_row_leaves(people, permits, monkeypatch):
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user=people["outsider"])
    response = client.get(url(permits, "export/?format=csv"))
    assert response.status_code == 200
    (started,) = AuditEvent.objects.filter(action="records.export_started")
    assert started.row_count is None and started.actor_id == people["outsider"].pk
    body = b"".join(cast(StreamingHttpResponse, response).streaming_content).decode()
    assert AuditEvent.objects.get(action="records.export").row_count == len(body.splitlines()) - 1 == 12
    # If the start cannot be recorded, no row is sent.
    _failing_on_the_server(monkeypatch)
    response = client.get(url(permits, "export/?format=csv"))
    assert response.status_code == 500 and "North" not in response.content.decode()
    assert AuditEvent.objects.filter(action__startswith="records.export").count() == 2


def test_inside_a_transaction_the_read_is_appended_inline_and_rolls_back_with_it(people, permits):
    class Abort(Exception):
        pass

    with audit_writer.request_scope():
        with pytest.raises(Abort), transaction.atomic():
            assert not audit_writer.overlapping()
            records.read_page(user=people["outsider"], dataset=permits, params={})
            records.read_page(user=people["outsider"], dataset=permits, params={}, as_json=True)
            assert len(_reads(permits, "records.read")) == 2  # on this connection, in this transaction
            raise Abort
    assert _reads(permits, "records.read") == []


def test_outside_a_request_the_read_is_appended_inline(people, permits):
    assert not audit_writer.overlapping()
    with CaptureQueriesContext(connection) as queries:
        records.read_page(user=people["outsider"], dataset=permits, params={})
    assert len(_appends(queries)) == 1 and len(_reads(permits, "records.read")) == 1


def test_switched_off_the_request_appends_inline(as_user, people, permits, settings):
    settings.AUDIT_OVERLAP_READS = False
    with CaptureQueriesContext(connection) as queries:
        assert as_user(people["outsider"]).get(url(permits, PREVIEW)).status_code == 200
    assert len(_appends(queries)) == 1 and len(_reads(permits)) == 1


def _link_backend_pids() -> list[int]:
    return [link.conn.info.backend_pid for link in audit_writer._idle]


def test_one_link_serves_request_after_request(as_user, people, permits):
    client = as_user(people["outsider"])
    assert client.get(url(permits, PREVIEW)).status_code == 200
    pids = _link_backend_pids()
    assert len(pids) == 1
    with connection.cursor() as cursor:  # operators can tell it apart in pg_stat_activity
        cursor.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", pids)
        assert cursor.fetchone()[0] == "exchange audit link"
    assert client.get(url(permits, PREVIEW)).status_code == 200
    assert _link_backend_pids() == pids
    assert len(_reads(permits)) == 2


def test_a_killed_link_is_replaced_before_the_next_append(as_user, people, permits):
    client = as_user(people["outsider"])
    assert client.get(url(permits, PREVIEW)).status_code == 200
    (pid,) = _link_backend_pids()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])  # returns once it is gone
    assert client.get(url(permits, PREVIEW)).status_code == 200
    assert len(_reads(permits)) == 2
    assert len(_link_backend_pids()) == 1 and _link_backend_pids() != [pid]


def test_when_no_link_can_be_opened_the_read_is_appended_inline(as_user, people, permits, monkeypatch):
    audit_writer.shutdown()

    def unreachable() -> None:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(audit_writer, "_Link", unreachable)
    with CaptureQueriesContext(connection) as queries:
        assert as_user(people["outsider"]).get(url(permits, PREVIEW)).status_code == 200
    assert len(_appends(queries)) == 1 and len(_reads(permits)) == 1


def test_shutdown_closes_the_links_and_the_next_read_opens_one(as_user, people, permits):
    client = as_user(people["outsider"])
    assert client.get(url(permits, PREVIEW)).status_code == 200
    (pid,) = _link_backend_pids()
    audit_writer.shutdown()
    # The server ends the session a moment after the client said goodbye.
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone()[0] == 0:
                break
            assert time.monotonic() < deadline, "the link's session is still open"
            time.sleep(0.05)
    assert client.get(url(permits, PREVIEW)).status_code == 200
    assert len(_reads(permits)) == 2 and len(_link_backend_pids()) == 1


def test_a_link_numbered_past_1024_descriptors_works(as_user, people, permits):
    """A busy process holds many files; the link waits with poll, which has no limit on the
    descriptor's number (select stops at 1023)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip("the process may not open 1,200 files here")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    audit_writer.shutdown()
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        assert as_user(people["outsider"]).get(url(permits, PREVIEW)).status_code == 200
        (link,) = audit_writer._idle
        assert link.conn.pgconn.socket > 1024
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(_reads(permits)) == 1
    audit_writer.shutdown()


def test_a_forked_process_never_touches_its_parents_links(as_user, people, permits, monkeypatch):
    client = as_user(people["outsider"])
    assert client.get(url(permits, PREVIEW)).status_code == 200
    (parent,) = audit_writer._idle
    monkeypatch.setattr(audit_writer.os, "getpid", lambda: parent.pid + 1)
    child = audit_writer._take()
    assert child is not parent and audit_writer._inherited == [parent] and not parent.conn.closed
    child.close()
    monkeypatch.undo()
    audit_writer._inherited.clear()
    parent.close()


def test_concurrent_requests_keep_the_chain_intact(people, permits, monkeypatch):
    """Eight threads reading at once: each preview holds a link of its own while its append
    is in flight, each JSON page appends in its own statement, and between them governance
    events are appended inline."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    from exchange.audit.services import audit_record, audit_verify

    # The first append of every thread waits until all eight hold a link: eight in flight at once.
    together = threading.Barrier(8, timeout=20)
    first = threading.local()
    real_take = audit_writer._take

    def take_together():
        link = real_take()
        if not getattr(first, "done", False):
            first.done = True
            together.wait()
        return link

    monkeypatch.setattr(audit_writer, "_take", take_together)

    def reader(n: int) -> list[int]:
        client = APIClient()
        client.force_authenticate(user=people["outsider"])
        try:
            statuses = []
            for i in range(5):
                statuses.append(client.get(url(permits, PREVIEW)).status_code)
                statuses.append(client.get(url(permits)).status_code)
                audit_record(actor=people["steward"], action="test.inline", details={"thread": n, "i": i})
            return statuses
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [s for result in pool.map(reader, range(8)) for s in result]
    assert statuses == [200] * 80
    assert len(_reads(permits)) == 40 and len(_reads(permits, "records.read")) == 40
    assert AuditEvent.objects.filter(action="test.inline").count() == 40
    assert len(audit_writer._idle) == 8  # eight side by side, and every one came back
    result = audit_verify()
    assert result.intact, str(result)
