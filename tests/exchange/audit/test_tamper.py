"""Tamper evidence: what the triggers refuse, and what verification finds when the triggers
were lifted (as the tables' owner could) and the chain was changed anyway."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.test import override_settings

from exchange.audit import guard as audit_guard
from exchange.audit.models import AuditCheckpoint, AuditEvent
from exchange.audit.services import (
    HASHED_FIELDS,
    AuditEntry,
    RequestContext,
    audit_checkpoint_create,
    audit_record,
    audit_record_many,
    audit_verify,
    checkpoint_signature,
    event_hash,
    reset_request_context,
    set_request_context,
)
from exchange.audit.tasks import housekeeping_audit_checkpoint

pytestmark = pytest.mark.django_db


def _chain(n: int = 5) -> list[AuditEvent]:
    return [audit_record(actor=None, action="test.event", details={"n": i}) for i in range(n)]


def _forge(event_id: int, prev_hash: str, action: str = "test.event") -> AuditEvent:
    """An event written straight into the table with a correct hash of its own."""
    values: dict[str, Any] = {
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC), "actor_kind": "system", "actor_id": None,
        "actor_label": "system", "action": action, "object_type": "", "object_id": "", "object_label": "",
        "department_id": None, "dataset_id": None, "fields": [], "row_count": None, "filters": {},
        "purpose": "", "outcome": "allowed", "client_ip": None, "request_id": "", "details": {},
        "prev_hash": prev_hash,
    }
    values["hash"] = event_hash(values)
    return AuditEvent.objects.create(id=event_id, **values)


# --- Detection ------------------------------------------------------------------------------

def test_an_inserted_event_is_found_at_the_link_after_it():
    first = _forge(10, "0" * 64)
    second = _forge(20, first.hash)
    third = _forge(30, second.hash)
    assert audit_verify().intact
    _forge(25, second.hash, action="forged.grant")
    result = audit_verify()
    assert not result.intact and result.broken_at == third.pk
    assert "prev_hash" in result.reason


def test_an_event_edited_back_to_a_valid_hash_still_breaks_the_next_link():
    events = _chain()
    forged = {f: getattr(events[2], f) for f in ("occurred_at", "actor_kind", "actor_id", "actor_label",
              "object_type", "object_id", "object_label", "department_id", "dataset_id", "fields",
              "row_count", "filters", "purpose", "outcome", "client_ip", "request_id", "prev_hash")}
    forged.update(action="test.rewritten", details={"n": 2})
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk=events[2].pk).update(action="test.rewritten", hash=event_hash(forged))
    result = audit_verify()
    assert not result.intact and result.broken_at == events[3].pk


def test_a_removed_tail_is_found_through_the_checkpoint():
    events = _chain()
    checkpoint = audit_checkpoint_create()
    assert checkpoint is not None and checkpoint.last_event_id == events[-1].pk and checkpoint.event_count == 5
    assert audit_verify().intact
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk__gte=events[3].pk).delete()
    result = audit_verify()
    assert not result.intact and result.broken_at == events[-1].pk
    assert "tail" in result.reason and f"checkpoint #{checkpoint.pk}" in result.reason


def test_a_removed_tail_is_found_even_after_new_events_are_appended():
    events = _chain()
    audit_checkpoint_create()
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk__gte=events[3].pk).delete()
    later = audit_record(actor=None, action="test.after")  # links cleanly to events[2]
    assert later.prev_hash == events[2].hash
    result = audit_verify()
    assert not result.intact and result.broken_at == events[-1].pk


def test_a_tail_removed_past_the_newest_checkpoint_is_found_only_up_to_it():
    events = _chain()
    audit_checkpoint_create()
    more = _chain(2)
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk__in=[e.pk for e in more]).delete()
    assert audit_verify().intact  # the price of periodic checkpoints: the newest stretch
    assert AuditEvent.objects.order_by("-id").first() == events[-1]


def test_a_forged_checkpoint_signature_is_found():
    events = _chain(3)
    AuditCheckpoint.objects.create(
        created_at=datetime(2026, 1, 1, tzinfo=UTC), last_event_id=events[-1].pk, last_hash=events[-1].hash,
        event_count=3, reason="manual", signature="f" * 64,
    )
    result = audit_verify()
    assert not result.intact and "invalid signature" in result.reason


def test_a_checkpoint_signed_with_another_key_is_found():
    _chain(3)
    with override_settings(AUDIT_HMAC_KEY="an-attacker-s-guess"):
        audit_checkpoint_create()
    result = audit_verify()
    assert not result.intact and "invalid signature" in result.reason


def test_a_checkpoint_whose_event_was_rewritten_is_found():
    events = _chain(3)
    created_at = datetime(2026, 1, 1, tzinfo=UTC)
    AuditCheckpoint.objects.create(
        created_at=created_at, last_event_id=events[1].pk, last_hash="a" * 64, event_count=2, reason="manual",
        signature=checkpoint_signature(
            last_event_id=events[1].pk, last_hash="a" * 64, event_count=2, created_at=created_at
        ),
    )
    result = audit_verify()
    assert not result.intact and result.broken_at == events[1].pk and "differs from checkpoint" in result.reason


def test_checkpoints_are_not_repeated_for_an_unchanged_chain():
    assert audit_checkpoint_create() is None  # empty chain
    _chain(2)
    assert audit_checkpoint_create() is not None
    assert audit_checkpoint_create() is None
    _chain(1)
    assert audit_checkpoint_create() is not None
    result = audit_verify()
    assert result.intact and result.checkpoints == 2


def test_the_checkpoint_task_signs_the_end_of_the_chain():
    events = _chain(2)
    checkpoint_id = housekeeping_audit_checkpoint.delay().get()
    checkpoint = AuditCheckpoint.objects.get(pk=checkpoint_id)
    assert checkpoint.last_event_id == events[-1].pk and checkpoint.reason == "scheduled"
    assert housekeeping_audit_checkpoint.delay().get() is None


def test_the_checkpoint_task_is_on_the_beat_schedule():
    from config.celery import app

    schedule = {entry["task"]: entry["schedule"] for entry in app.conf.beat_schedule.values()}
    assert schedule["exchange.tasks.housekeeping_audit_checkpoint"] <= 900


# --- Refusal --------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [AuditEvent, AuditCheckpoint])
def test_the_audit_tables_refuse_update_and_delete(model):
    _chain(2)
    audit_checkpoint_create()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        model.objects.update(created_at=datetime(2026, 1, 1, tzinfo=UTC)) if model is AuditCheckpoint else \
            model.objects.update(action="changed")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        model.objects.all().delete()
    assert audit_verify().intact


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL trigger")
@pytest.mark.parametrize("table", ["exchange_auditevent", "exchange_auditcheckpoint"])
def test_postgresql_refuses_update_delete_and_truncate(table):
    _chain(2)
    audit_checkpoint_create()
    statements = [f"UPDATE {table} SET id = id", f"DELETE FROM {table}", f"TRUNCATE {table}"]  # noqa: S608
    for statement in statements:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as c:
            c.execute(statement)
    assert AuditEvent.objects.count() == 2 and AuditCheckpoint.objects.count() == 1


# --- Bulk and concurrent appends -----------------------------------------------------------

def test_bulk_appends_continue_the_chain_in_order():
    first = audit_record(actor=None, action="test.single")
    assert audit_record_many([AuditEntry(action="test.bulk", row_count=i, details={"i": i}) for i in range(50)]) == 50
    audit_record(actor=None, action="test.single")
    assert audit_record_many([]) == 0
    events = list(AuditEvent.objects.order_by("id"))
    assert len(events) == 52 and events[0] == first
    assert [e.row_count for e in events[1:51]] == list(range(50))
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:], strict=False))
    assert audit_verify().intact


def test_one_append_is_one_statement_and_hashes_as_python_does(django_assert_num_queries):
    audit_record(actor=None, action="test.first")
    # PostgreSQL: one call of the append function; SQLite: read the chain's end, then INSERT,
    # inside a savepoint (the test's transaction is open).
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 4):
        event = audit_record(
            actor=None, action="test.ünïcode", object_label="Straße \"quoted\" \\ \n tab\t", row_count=None,
            fields=["b", "a"], filters={"z": [1, {"y": None}], "a": "é"}, details={"nested": {"b": 2, "a": True}},
        )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.prev_hash, stored.hash) == (event.prev_hash, event.hash)
    assert stored.prev_hash == AuditEvent.objects.get(action="test.first").hash
    assert event_hash({name: getattr(stored, name) for name in HASHED_FIELDS}) == stored.hash
    assert audit_verify().intact


@pytest.mark.django_db(transaction=True)
def test_eight_parallel_writers_keep_one_unforked_chain():
    writers, per_writer = 8, 15
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(per_writer):
                if i % 5 == 4:
                    audit_record_many(
                        [AuditEntry(action="test.bulk", details={"w": n, "i": i, "k": k}) for k in range(3)]
                    )
                else:
                    audit_record(actor=None, action="test.parallel", details={"w": n, "i": i})
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()  # each thread had a connection of its own

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    expected = writers * (per_writer - 3 + 3 * 3)
    assert AuditEvent.objects.count() == expected
    assert AuditEvent.objects.values("prev_hash").distinct().count() == expected  # no fork
    result = audit_verify()
    assert result.intact and result.checked == expected


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("::ffff:10.1.2.3", "::ffff:10.1.2.3"),
        ("unknown", None),
        ("10.1.2.300", None),
    ],
)
def test_client_addresses_are_stored_as_the_database_returns_them(given, stored):
    token = set_request_context(RequestContext(client_ip=given, request_id="r1"))
    try:
        event = audit_record(actor=None, action="test.ip")
    finally:
        reset_request_context(token)
    assert AuditEvent.objects.get(pk=event.pk).client_ip == stored
    assert audit_verify().intact


@pytest.mark.django_db(transaction=True)
def test_flush_empties_the_audit_tables_and_leaves_the_triggers_in_force():
    from django.core.management import call_command

    _chain(2)
    audit_checkpoint_create()
    call_command("flush", interactive=False, verbosity=0)
    assert not AuditEvent.objects.exists() and not AuditCheckpoint.objects.exists()
    _chain(1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.update(action="changed")


def _reference_hash(values: dict[str, Any]) -> str:
    """The hash as first specified (exchange/audit.py at the foundation commit)."""
    import hashlib
    import json

    from django.core.serializers.json import DjangoJSONEncoder

    from exchange.audit.services import HASHED_FIELDS

    payload = {
        name: values[name].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if name == "occurred_at" else values[name]
        for name in HASHED_FIELDS
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, cls=DjangoJSONEncoder)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(
    "occurred_at",
    [datetime(2026, 11, 22, 1, 2, 3, 456789, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
     datetime(2026, 6, 1, 12, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))],
)
def test_the_hash_format_is_unchanged(occurred_at):
    values: dict[str, Any] = {
        "occurred_at": occurred_at, "actor_kind": "user", "actor_id": 7, "actor_label": "ana", "action": "x.y",
        "object_type": "t", "object_id": "1", "object_label": "Straße \"3\"", "department_id": 2, "dataset_id": None,
        "fields": ["b", "a"], "row_count": 0, "filters": {"z": 1, "a": {"é": [1, None, True]}}, "purpose": "\n",
        "outcome": "allowed", "client_ip": "::1", "request_id": "r", "details": {}, "prev_hash": "0" * 64,
    }
    assert event_hash(values) == _reference_hash(values)


def test_events_written_in_raw_sql_answer_the_orms_json_lookups():
    audit_record(actor=None, action="test.one", fields=["b", "a"], details={"k": "é", "n": [1]})
    audit_record_many([AuditEntry(action="test.many", fields=("b", "a"), details={"k": "é", "n": [1]})])
    found = AuditEvent.objects.filter(fields=["b", "a"], details={"k": "é", "n": [1]})
    assert sorted(found.values_list("action", flat=True)) == ["test.many", "test.one"]
