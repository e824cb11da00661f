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


# --- Grants: expiry, renewal reminders, recertification ----------------------------------------
# Each service works in fixed-size batches and claims every grant with a conditional update, so
# overlapping runs (or a run redelivered after a worker died) never act on a grant twice. What a
# batch leaves over, the next beat run takes.

from django.db import OperationalError  # noqa: E402

from exchange import access_services  # noqa: E402

# A lost connection or a lock timeout is worth another try; a bug is not.
_GRANT_TASK_OPTIONS: dict[str, object] = {
    "ignore_result": True, "soft_time_limit": 600, "time_limit": 660,
    "autoretry_for": (OperationalError,), "retry_backoff": 30, "retry_backoff_max": 600, "max_retries": 3,
}


@shared_task(name="exchange.tasks.housekeeping_expire_grants", **_GRANT_TASK_OPTIONS)
def housekeeping_expire_grants() -> int:
    return access_services.grant_expire_due()


@shared_task(name="exchange.tasks.housekeeping_grant_reminders", **_GRANT_TASK_OPTIONS)
def housekeeping_grant_reminders() -> int:
    return access_services.grant_send_reminders()


@shared_task(name="exchange.tasks.housekeeping_recertification", **_GRANT_TASK_OPTIONS)
def housekeeping_recertification() -> int:
    return access_services.grant_recertification_notify()
