"""Verification split across worker processes gives the verdict a single walk gives."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exchange.audit import guard as audit_guard
from exchange.audit.models import AuditCheckpoint, AuditEvent
from exchange.audit.services import AuditEntry, audit_checkpoint_create, audit_record, audit_record_many, audit_verify

pytestmark = pytest.mark.django_db(transaction=True)


def _events(n: int = 40) -> list[AuditEvent]:
    audit_record_many([AuditEntry(action="test.bulk", details={"i": i}) for i in range(n // 2)])
    audit_checkpoint_create()
    for i in range(n - n // 2):
        audit_record(actor=None, action="test.one", details={"i": i})
    return list(AuditEvent.objects.order_by("id"))


def _edit(events: list[AuditEvent]) -> None:
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk=events[27].pk).update(action="test.edited")


def _delete(events: list[AuditEvent]) -> None:
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk=events[13].pk).delete()


def _delete_checkpointed(events: list[AuditEvent]) -> None:
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk=events[19].pk).delete()


def _cut_tail(events: list[AuditEvent]) -> None:
    audit_checkpoint_create()
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk__gte=events[35].pk).delete()


def _forge_checkpoint(events: list[AuditEvent]) -> None:
    cp = AuditCheckpoint.objects.get()
    AuditCheckpoint.objects.create(
        created_at=cp.created_at, last_event_id=events[30].pk, last_hash=events[30].hash, event_count=31,
        reason="manual", signature=cp.signature,
    )


@pytest.mark.parametrize(
    "tamper", [None, _edit, _delete, _delete_checkpointed, _cut_tail, _forge_checkpoint],
    ids=["intact", "edited", "deleted", "checkpointed-deleted", "tail-cut", "forged-checkpoint"],
)
def test_parallel_and_single_walks_agree(tamper: Callable[[list[AuditEvent]], None] | None):
    events = _events()
    if tamper is not None:
        tamper(events)
    single = audit_verify()
    assert single.intact is (tamper is None)
    for workers in (2, 3, 7):
        assert audit_verify(workers=workers) == single, workers


def test_the_verify_command_uses_worker_processes(capsys):
    _events()
    from django.core.management import call_command

    call_command("verify_audit", "--workers", "3", "--no-checkpoint")
    captured = capsys.readouterr()
    assert captured.out.strip() == "intact, 40 events" and "3 processes" in captured.err
