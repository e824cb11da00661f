"""Celery tasks of the exchange. Thin by rule: ids in, re-read, call one service."""

from __future__ import annotations

from celery import shared_task

from exchange import audit, services
from exchange.models.audit import CheckpointReason


@shared_task(name="exchange.tasks.housekeeping_heartbeat", bind=True, ignore_result=True)
def housekeeping_heartbeat(self) -> None:  # type: ignore[no-untyped-def]
    """Prove that a worker can take a task from the broker and write to the database."""
    services.worker_heartbeat(hostname=self.request.hostname or "unknown", task_id=self.request.id or "")


@shared_task(name="exchange.tasks.housekeeping_purge_expired_tokens", ignore_result=True)
def housekeeping_purge_expired_tokens() -> int:
    return services.purge_expired_tokens()


@shared_task(
    name="exchange.tasks.housekeeping_audit_checkpoint", ignore_result=True, soft_time_limit=300, time_limit=360
)
def housekeeping_audit_checkpoint() -> int | None:
    """Sign the current end of the audit chain, so that cutting its tail is detected later.
    Idempotent: a chain that has not grown since the last checkpoint gets no new one."""
    checkpoint = audit.audit_checkpoint_create(reason=CheckpointReason.SCHEDULED)
    return checkpoint.pk if checkpoint else None
