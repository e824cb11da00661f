"""Housekeeping of the running service: worker heartbeats and expired API tokens."""

from __future__ import annotations

import logging

from celery import shared_task

from exchange.ops import services

logger = logging.getLogger(__name__)


@shared_task(name="exchange.tasks.housekeeping_heartbeat", bind=True, ignore_result=True)
def housekeeping_heartbeat(self) -> None:  # type: ignore[no-untyped-def]
    """Prove that a worker can take a task from the broker and write to the database."""
    services.worker_heartbeat(hostname=self.request.hostname or "unknown", task_id=self.request.id or "")


@shared_task(name="exchange.tasks.housekeeping_purge_expired_tokens", ignore_result=True)
def housekeeping_purge_expired_tokens() -> int:
    return services.purge_expired_tokens()
