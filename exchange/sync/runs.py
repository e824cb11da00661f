"""The life of a run: queue it (``exchange.sync.dispatch``), claim it (the lock against
overlap), execute it with its errors sorted into retry / fail / cancel, reap runs whose worker
died.

State changes of a run go through these functions only. The lock against two runs of one
job at a time is the database's: a partial unique index allows one ``running`` run per
source and per subscription, so a claim is a conditional UPDATE that either wins the row
or hits the index and records the run as skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from enum import Enum
from typing import TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db import InterfaceError as DbInterfaceError
from django.db import OperationalError as DbOperationalError
from django.db.models import F, Q
from django.utils import timezone

from departments.models import Role
from departments.notifications import notify
from exchange.sync import delivery, ingest
from exchange.sync.dispatch import run_enqueue
from exchange.sync.dispatch import send as _send
from exchange.sync.errors import SourceError, TransientSourceError
from exchange.sync.models import Run, RunKind, RunStatus, RunTrigger, Subscription

log = logging.getLogger(__name__)
T = TypeVar("T")


class Outcome(Enum):
    DONE = "done"
    RETRY = "retry"
    SKIPPED = "skipped"


def run_claim(*, run_id: int) -> Run | None:
    """Take a queued run for this worker. None if it is gone, not queued any more (a
    duplicate delivery of the task), or another run of the same job is running (then it is
    recorded as skipped)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            claimed = Run.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
                status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, attempts=F("attempts") + 1,
                cancel_requested=False,
            )
    except IntegrityError:
        busy = Run.objects.filter(pk=run_id).values_list("source_id", "subscription_id").first()
        other = Run.objects.filter(status=RunStatus.RUNNING).filter(
            source_id=busy[0], subscription_id=busy[1]).values_list("pk", flat=True).first() if busy else None
        Run.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
            status=RunStatus.SKIPPED, finished_at=now,
            error=f"Skipped: run #{other} of the same job was still running." if other
            else "Skipped: another run of the same job was still running.",
        )
        return None
    if not claimed:
        return None
    return Run.objects.select_related(
        "source__dataset__department", "source__connection", "subscription__dataset__department",
        "subscription__connection", "subscription__department",
    ).get(pk=run_id)


def stewards_of(department_ids: set[int]) -> list[User]:
    return list(User.objects.filter(memberships__department_id__in=department_ids,
                                    memberships__role=Role.STEWARD, is_active=True).distinct())


def _notify_failure(run: Run, error: str, *, schema: bool) -> None:
    dataset = run.dataset
    departments = {dataset.department_id}
    if schema:
        # The schema is the subscribers' contract too.
        departments |= set(Subscription.objects.filter(dataset=dataset, status="active")
                           .values_list("department_id", flat=True))
    elif run.kind == RunKind.DELIVERY and run.subscription is not None:
        departments = {run.subscription.department_id}
    what = "no longer matches its schema" if schema else f"{run.kind} run failed"
    notify(recipients=stewards_of(departments), kind=f"sync.{run.kind}.failed",
           subject=f"{dataset.title}: {what}", body=error, link=f"/api/v1/runs/{run.pk}/", obj=run)


def run_fail(*, run: Run, error: str, schema: bool = False) -> None:
    with transaction.atomic():
        now = timezone.now()
        changed = Run.objects.filter(pk=run.pk, status__in=[RunStatus.RUNNING, RunStatus.QUEUED]).update(
            status=RunStatus.FAILED, error=error[:5000], finished_at=now, heartbeat_at=now)
        if changed:
            run.status, run.error = RunStatus.FAILED, error
            _notify_failure(run, error, schema=schema)


def run_cancelled(*, run: Run, error: str = "Cancelled on request; nothing was written.") -> None:
    now = timezone.now()
    Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        status=RunStatus.CANCELLED, finished_at=now, heartbeat_at=now, error=error)


def run_requeue(*, run: Run, error: str, countdown: float) -> None:
    """Hand a run that hit a transient error back to the queue (and release its lock). A run
    the reaper has given up on meanwhile stays as the reaper left it (its re-run is queued)."""
    with transaction.atomic():
        now = timezone.now()
        if Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
                status=RunStatus.QUEUED, heartbeat_at=now, due_at=now + timedelta(seconds=countdown),
                error=f"Attempt {run.attempts} failed, retrying in {int(countdown)} s: {error}"):
            transaction.on_commit(lambda: _send(run, countdown=countdown))


def _retry_or_fail(run: Run, error: str) -> Outcome:
    if run.attempts <= settings.SYNC_MAX_RETRIES:
        run_requeue(run=run, error=error, countdown=settings.SYNC_RETRY_BACKOFF_SECONDS * 2 ** (run.attempts - 1))
        return Outcome.RETRY
    run_fail(run=run, error=f"{error} (gave up after {run.attempts} attempts)")
    return Outcome.DONE


def database_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is the exchange's own database going away (a restart, a failover, the
    network) rather than a statement it refused: then the connection is gone or broken."""
    import psycopg

    if not isinstance(exc, DbOperationalError | DbInterfaceError | psycopg.OperationalError | psycopg.InterfaceError):
        return False
    raw = connection.connection
    return raw is None or bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))


def when_database_answers(record: Callable[[], T]) -> T:
    """Call ``record`` on a fresh connection, waiting for the database to come back for at most
    SYNC_RUN_STALE_SECONDS (after that, the reaper deals with a run left running). Outside any
    transaction only: it closes the connection it finds."""
    deadline = time.monotonic() + settings.SYNC_RUN_STALE_AFTER.total_seconds()
    pause = 0.5
    while True:
        connection.close()
        try:
            return record()
        except (DbOperationalError, DbInterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("waiting %.1f s for the database: %s", pause, str(exc).strip().splitlines()[0])
            time.sleep(pause)
            pause = min(pause * 2, 10)


def execute(*, run_id: int) -> Outcome:
    """Claim and execute one run; every way it can end is recorded on the run. The ingest and
    the delivery are imported with this module, which a worker imports before it forks its pool
    (``exchange.sync.tasks``): a pool process would otherwise import them at its first run, and
    compile them too, since the image writes no bytecode (PYTHONDONTWRITEBYTECODE)."""
    try:
        run = run_claim(run_id=run_id)
    except Exception as exc:
        if connection.in_atomic_block or not database_lost(exc):
            raise
        # The message arrived while the database was away: the run is still queued.
        run = when_database_answers(lambda: run_claim(run_id=run_id))
    if run is None:
        return Outcome.SKIPPED
    try:
        if run.kind == RunKind.INGEST:
            ingest.ingest_execute(run=run)
        else:
            delivery.delivery_execute(run=run)
    except ingest.RunCancelled:
        run_cancelled(run=run)
    except delivery.SubscriptionEnded as exc:
        run_cancelled(run=run, error=str(exc))
    except TransientSourceError as exc:
        return _retry_or_fail(run, str(exc))
    except ingest.SchemaMismatch as exc:
        run_fail(run=run, error=f"Schema mismatch: {exc}", schema=True)
    except (SourceError, delivery.TargetError) as exc:
        run_fail(run=run, error=str(exc))
    except SoftTimeLimitExceeded:
        run_fail(run=run, error="The run took longer than its time limit and was stopped; nothing was written.")
    except Exception as exc:
        if not connection.in_atomic_block and database_lost(exc):
            # Nothing the run wrote was committed (its merge is one transaction, rolled back
            # with the lost connection), so it is retried like a source that went away.
            log.warning("run %s lost the exchange's database: %s", run.pk, exc)
            error = f"The exchange's database could not be reached: {str(exc).strip().splitlines()[0]}"
            return when_database_answers(lambda: _retry_or_fail(run, error))
        log.exception("run %s failed", run.pk)
        run_fail(run=run, error=f"Unexpected error ({type(exc).__name__}): {exc}")
    return Outcome.DONE


def run_cancel(*, run: Run) -> Run:
    """A queued run is cancelled at once; a running one at its next batch."""
    now = timezone.now()
    if Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
            status=RunStatus.CANCELLED, finished_at=now, error="Cancelled before it started."):
        pass
    else:
        Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(cancel_requested=True)
    run.refresh_from_db()
    return run


def runs_reap(*, stale_after: timedelta | None = None, resend_after: timedelta | None = None) -> list[Run]:
    """Fail runs whose worker stopped sending heartbeats, and queue a re-run of each; send
    again the task of runs still queued long after they were due (``runs_resend``)."""
    runs_resend(resend_after=resend_after)
    cutoff = timezone.now() - (stale_after or settings.SYNC_RUN_STALE_AFTER)
    reruns = []
    for run in Run.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).select_related(
            "source", "subscription"):
        with transaction.atomic():
            if not Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).update(
                    status=RunStatus.FAILED, finished_at=timezone.now(),
                    error=f"Orphaned: its worker stopped responding (last heartbeat "
                          f"{run.heartbeat_at:%Y-%m-%d %H:%M:%S %Z}). Nothing it did was kept; a new run was queued."):
                continue
            rerun = run_enqueue(source=run.source, subscription=run.subscription, mode=run.mode,
                                trigger=RunTrigger.REAPER, queue=run.queue, rerun_of=run,
                                allow_empty=run.allow_empty)
            reruns.append(rerun)
    return reruns


def runs_resend(*, resend_after: timedelta | None = None) -> list[Run]:
    """Send again the task of each run still queued ``resend_after`` (SYNC_RUN_RESEND_AFTER)
    after it was due: its message was never sent (the broker was down when it was queued) or
    was lost on the way. The k-th resend waits ``resend_after`` × 2^k, so a run that only
    waits behind a busy worker gets a few harmless duplicates, not one a minute.

    Exactly once all the same: a worker takes a run only by the conditional claim
    (``run_claim``: queued → running), so whichever of the original, late message and the
    resent one comes first runs it, and the other finds it claimed or finished and does
    nothing."""
    wait = resend_after or settings.SYNC_RUN_RESEND_AFTER
    now = timezone.now()
    resent = []
    # Runs from before due_at existed count from when they were queued.
    overdue = Run.objects.filter(status=RunStatus.QUEUED).filter(
        Q(due_at__lt=now - wait) | Q(due_at__isnull=True, queued_at__lt=now - wait))
    for run in overdue.order_by("pk"):
        due = run.due_at or run.queued_at
        if due + wait * 2 ** min(run.resends, 10) > now:
            continue
        with transaction.atomic():
            # Only if no worker claimed it (and no other reaper resent it) meanwhile.
            if not Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED, resends=run.resends).update(
                    due_at=now, resends=F("resends") + 1):
                continue
            run.resends += 1
            run.due_at = now
            log.warning("run %s was still queued %d s after it was due (the broker may have been unreachable); "
                        "its task is sent again (resend %d)", run.pk, (now - due).total_seconds(), run.resends)
            transaction.on_commit(lambda run=run: _send(run))  # type: ignore[misc]
            resent.append(run)
    return resent
