"""Celery tasks of the exchange. Thin by rule: ids in, re-read, call one service."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from exchange.audit import services as audit
from exchange.audit.models import CheckpointReason
from exchange.ops import services
from exchange.sync.readers import TransientSourceError

logger = logging.getLogger(__name__)


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


# --- Sync jobs ------------------------------------------------------------------------------
# Each takes a run id and hands it to exchange.sync.runs.execute, which claims the run with a
# conditional update (a duplicate or redelivered message finds it claimed and returns), runs
# it, and records every way it can end. Transient errors are re-queued there with
# exponential backoff as a new message on the run's queue; nothing is retried here.

from django.conf import settings  # noqa: E402

from exchange.sync import runs  # noqa: E402


class _RunTask(Task):  # type: ignore[misc]
    def on_failure(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        # Reached only if something escaped execute() (e.g. the database went away while
        # recording); make sure the run does not stay "running" for the reaper to find.
        from exchange.sync.models import Run

        run = Run.objects.filter(pk=args[0]).first() if args else None
        if run is not None:
            runs.run_fail(run=run, error=f"The job crashed: {exc}")


_RUN_TASK_OPTIONS = dict(
    base=_RunTask, ignore_result=True, soft_time_limit=settings.SYNC_SOFT_TIME_LIMIT,
    time_limit=settings.SYNC_SOFT_TIME_LIMIT + 300,
)


@shared_task(name="exchange.tasks.ingest_run", **_RUN_TASK_OPTIONS)
def ingest_run(run_id: int) -> str:
    return runs.execute(run_id=run_id).value


@shared_task(name="exchange.tasks.deliver_run", **_RUN_TASK_OPTIONS)
def deliver_run(run_id: int) -> str:
    return runs.execute(run_id=run_id).value


@shared_task(name="exchange.tasks.housekeeping_reaper", ignore_result=True)
def housekeeping_reaper() -> int:
    return len(runs.runs_reap())


@shared_task(name="exchange.tasks.ingest_scheduled", ignore_result=True)
def ingest_scheduled(source_id: int) -> None:
    """Fired by beat from the source's PeriodicTask row: queue a run (never a second one
    behind a queued run)."""
    from exchange.sync import services as sync_services
    from exchange.sync.models import RunTrigger, Source

    source = Source.objects.filter(pk=source_id).first()
    if source is not None:
        sync_services.run_now(actor=None, source=source, trigger=RunTrigger.SCHEDULE,
                              mode="incremental" if source.watermark_column else "full")


@shared_task(name="exchange.tasks.deliver_scheduled", ignore_result=True)
def deliver_scheduled(subscription_id: int) -> None:
    from exchange.sync import services as sync_services
    from exchange.sync.models import RunTrigger, Subscription, SubscriptionStatus

    subscription = Subscription.objects.filter(pk=subscription_id, status=SubscriptionStatus.ACTIVE).first()
    if subscription is not None:
        sync_services.run_now(actor=None, subscription=subscription, trigger=RunTrigger.SCHEDULE)


@shared_task(name="exchange.tasks.deliver_purge", ignore_result=True, acks_late=True,
             autoretry_for=(OSError, TransientSourceError), retry_backoff=30, max_retries=5)
def deliver_purge(subscription_id: int) -> None:
    """Drop the delivered copy of a subscription that ended with ``purge_on_end`` (idempotent:
    dropping a dropped table is a no-op)."""
    from exchange.sync.delivery import TargetError, subscription_purge_target
    from exchange.sync.models import Subscription, SubscriptionStatus

    subscription = Subscription.objects.filter(pk=subscription_id, status=SubscriptionStatus.ENDED,
                                               purge_on_end=True, purged_at__isnull=True).first()
    if subscription is not None:
        try:
            subscription_purge_target(subscription=subscription)
        except TargetError as exc:  # refused for good: the copy stays, for a steward to drop later
            logger.warning("purge of subscription %s skipped: %s", subscription_id, exc)


# --- Grants: expiry, renewal reminders, recertification ----------------------------------------
# Each service works in fixed-size batches and claims every grant with a conditional update, so
# overlapping runs (or a run redelivered after a worker died) never act on a grant twice. What a
# batch leaves over, the next beat run takes.

from django.db import OperationalError  # noqa: E402

from exchange.access import services as access_services  # noqa: E402

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
