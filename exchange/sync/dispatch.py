"""Queue a run: its row, then its task once the row has committed. Below ``runs`` (which
claims, executes and reaps runs) so that the ingest and the delivery, which ``runs`` calls,
can queue runs themselves."""

from __future__ import annotations

import logging
import uuid

from celery import current_app
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from exchange.sync.models import Run, RunKind, RunMode, RunStatus, RunTrigger, Source, Subscription, SubscriptionStatus

log = logging.getLogger(__name__)


INGEST_TASK = "exchange.tasks.ingest_run"
DELIVER_TASK = "exchange.tasks.deliver_run"


def send(run: Run, countdown: float | None = None) -> None:
    """Send the run's task. Called after the run's row has committed: a broker that cannot be
    reached leaves the run queued (logged), and the reaper sends it again once the run is
    overdue (``runs_reap``), rather than failing the request or job that queued it."""
    from kombu.exceptions import OperationalError as BrokerError

    # By name from Celery's registry: the task module calls into this one, and every process
    # registers it at start (ExchangeConfig.ready); an unknown name raises NotRegistered.
    task = current_app.tasks[INGEST_TASK if run.kind == RunKind.INGEST else DELIVER_TASK]
    options: dict[str, object] = {"task_id": run.celery_task_id}
    if run.queue:
        options["queue"] = run.queue
    if countdown:
        options["countdown"] = countdown
    try:
        task.apply_async(args=[run.pk], **options)  # type: ignore[arg-type]
    except BrokerError as exc:
        log.warning("run %s stays queued: its task could not be sent (%s); the reaper sends it again after "
                    "SYNC_RUN_RESEND_SECONDS", run.pk, exc)


def run_enqueue(
    *, source: Source | None = None, subscription: Subscription | None = None, mode: str = RunMode.FULL,
    trigger: str = RunTrigger.MANUAL, user: User | None = None, queue: str = "", rerun_of: Run | None = None,
    allow_empty: bool = False,
) -> Run:
    """Create a queued run and send its task once the transaction commits."""
    if (source is None) == (subscription is None):
        raise ValueError("a run belongs to exactly one source or subscription")
    dataset_id = source.dataset_id if source is not None else subscription.dataset_id  # type: ignore[union-attr]
    run = Run.objects.create(
        kind=RunKind.INGEST if source is not None else RunKind.DELIVERY, source=source, subscription=subscription,
        dataset_id=dataset_id, mode=mode, trigger=trigger, triggered_by=user, queue=queue, rerun_of=rerun_of,
        allow_empty=allow_empty, celery_task_id=uuid.uuid4().hex, due_at=timezone.now(),
    )
    transaction.on_commit(lambda: send(run))
    return run


def deliveries_for_change(*, dataset_id: int, queue: str = "", lock: bool = True) -> list[Run]:
    """Queue a delivery for each active subscription of the dataset that delivers on change and
    has none queued: one waits at a time, and a later change folds into it, since a delivery
    reads the store as it is when it starts. Called in the transaction that commits the change
    (an ingest's merge), so the runs exist if and only if the change does, and their tasks leave
    after its commit. Each subscription's row is locked (FOR NO KEY UPDATE), the lock a delivery
    takes to record what it delivered, so that a change is either seen by that delivery's check
    for changes that came meanwhile (``delivery_follow_up``) or finds it finished here.
    ``lock=False`` for a first load, which holds the store table itself exclusively: a delivery
    recording its run under the row lock waits for that table to read the store's top, and
    sees the load once it has committed. ``queue``: the queue of the run that made the change
    (blank: routed)."""
    waiting = Run.objects.filter(subscription=OuterRef("pk"), status=RunStatus.QUEUED)
    subscriptions = ((Subscription.objects.select_for_update(no_key=True, of=("self",)) if lock
                      else Subscription.objects.all())
                     .filter(dataset_id=dataset_id, status=SubscriptionStatus.ACTIVE, deliver_on_change=True)
                     .exclude(Exists(waiting)).order_by("pk"))
    return [run_enqueue(subscription=s, trigger=RunTrigger.CHANGE, queue=queue) for s in subscriptions]


def delivery_follow_up(*, subscription: Subscription, delivered_to: int, store_top: int,
                       queue: str = "") -> Run | None:
    """After a delivery of changes up to ``delivered_to``: if the store has moved on meanwhile
    (``store_top``, read in the delivery's recording transaction) and the subscription delivers
    on change with no delivery queued, queue the next one. Precondition: the caller holds the
    subscription's row lock (see ``deliveries_for_change``)."""
    if store_top <= delivered_to:
        return None
    if not Subscription.objects.filter(pk=subscription.pk, status=SubscriptionStatus.ACTIVE,
                                       deliver_on_change=True).exists():
        return None
    if Run.objects.filter(subscription_id=subscription.pk, status=RunStatus.QUEUED).exists():
        return None
    return run_enqueue(subscription=subscription, trigger=RunTrigger.CHANGE, queue=queue)
