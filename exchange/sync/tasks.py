"""Celery tasks of data movement. Thin by rule: ids in, re-read, call one service."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.conf import settings

from exchange.sync import runs
from exchange.sync.errors import TransientSourceError

logger = logging.getLogger(__name__)


# --- Sync jobs ------------------------------------------------------------------------------
# Each takes a run id and hands it to exchange.sync.runs.execute, which claims the run with a
# conditional update (a duplicate or redelivered message finds it claimed and returns), runs
# it, and records every way it can end. Transient errors are re-queued there with
# exponential backoff as a new message on the run's queue; nothing is retried here.


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
    from exchange.sync import services as sync_services

    sync_services.purges_resend()
    sync_services.subscriptions_check_freshness()
    return len(runs.runs_reap())


@shared_task(name="exchange.tasks.sources_watch", ignore_result=True)
def sources_watch() -> int:
    """Beat's tick: send a check job for each watched source that is due (claimed, so a slow
    tick or a second beat never checks one twice at once)."""
    from exchange.sync import services as sync_services

    due = sync_services.sources_watch_due()
    for source_id in due:
        source_watch.delay(source_id)
    return len(due)


@shared_task(name="exchange.tasks.source_watch", ignore_result=True, soft_time_limit=60, time_limit=90)
def source_watch(source_id: int) -> None:
    from exchange.sync import services as sync_services

    sync_services.source_watch_check(source_id=source_id)


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
            # Unless another purge holds the copy right now (it records its own outcome).
            Subscription.objects.filter(pk=subscription_id, purged_at__isnull=True,
                                        purge_claimed_at__isnull=True).update(purge_error=str(exc))
