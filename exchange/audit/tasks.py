"""The audit trail's scheduled checkpoint."""

from __future__ import annotations

import logging

from celery import shared_task

from exchange.audit import services as audit
from exchange.audit.models import CheckpointReason

logger = logging.getLogger(__name__)


@shared_task(
    name="exchange.tasks.housekeeping_audit_checkpoint", ignore_result=True, soft_time_limit=300, time_limit=360
)
def housekeeping_audit_checkpoint() -> int | None:
    """Sign the current end of the audit chain, so that cutting its tail is detected later.
    Idempotent: a chain that has not grown since the last checkpoint gets no new one."""
    checkpoint = audit.audit_checkpoint_create(reason=CheckpointReason.SCHEDULED)
    return checkpoint.pk if checkpoint else None
