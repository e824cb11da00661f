"""The objection job: escalate overdue objections to the governance reviewers."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from exchange.objections import services


# Idempotent (each objection is claimed with a conditional update); a lost connection or a
# lock timeout is worth another try, a bug is not.
@shared_task(name="exchange.tasks.housekeeping_escalate_objections", ignore_result=True, soft_time_limit=600,
             time_limit=660, autoretry_for=(OperationalError,), retry_backoff=30, retry_backoff_max=600,
             max_retries=3)
def housekeeping_escalate_objections() -> int:
    return services.objection_escalate_overdue()
