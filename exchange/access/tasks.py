"""Scheduled grant jobs: expiry, renewal reminders, recertification."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError

from exchange.access import services as access_services

logger = logging.getLogger(__name__)


# --- Grants: expiry, renewal reminders, recertification ----------------------------------------
# Each service works in fixed-size batches and claims every grant with a conditional update, so
# overlapping runs (or a run redelivered after a worker died) never act on a grant twice. What a
# batch leaves over, the next beat run takes.



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
