"""Runs queued while the broker was away: the reaper sends their task again once they are
overdue (exchange.sync.runs.runs_resend), and a run is executed once whatever the number of
messages that reach the workers."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from exchange.sync import runs
from exchange.sync.models import Run, RunStatus
from tests.exchange.sync.helpers import store_rows
from tests.sync_factories import PERMIT_FIELDS, csv_bytes, permit_rows, published_dataset, upload_source

HEADER = [f[0] for f in PERMIT_FIELDS]
pytestmark = pytest.mark.django_db(transaction=True)
WAIT = timedelta(minutes=5)


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.SYNC_RUN_RESEND_AFTER = WAIT


@pytest.fixture
def source(department):
    return upload_source(dataset=published_dataset(department=department), content=csv_bytes(HEADER, permit_rows(10)))


@pytest.fixture
def sent():
    """The run ids whose task was handed to the broker (nothing is executed)."""
    ids: list[int] = []
    with mock.patch("celery.app.task.Task.apply_async", lambda self, args=None, **kw: ids.append(args[0])):
        yield ids


def queued(source, *, ago: timedelta) -> Run:
    run = runs.run_enqueue(source=source)
    Run.objects.filter(pk=run.pk).update(due_at=timezone.now() - ago, queued_at=timezone.now() - ago)
    run.refresh_from_db()
    return run


def test_a_run_queued_while_the_broker_is_down_stays_queued_instead_of_failing_its_caller(source):
    def broker_down(self, *args, **kwargs):
        raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with mock.patch("celery.app.task.Task.apply_async", broker_down):
        run = runs.run_enqueue(source=source)  # commits at once (no transaction): the send fails after
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.due_at is not None and run.resends == 0


def test_an_overdue_queued_run_is_sent_again_once(source, sent):
    run = queued(source, ago=WAIT + timedelta(seconds=1))
    sent.clear()
    assert [r.pk for r in runs.runs_reap()] == []  # no re-run: nothing was orphaned
    assert sent == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.resends == 1
    # The next reaper passes (every minute) do not send it again until it is overdue once more,
    # now for twice as long.
    runs.runs_reap()
    assert sent == [run.pk]
    Run.objects.filter(pk=run.pk).update(due_at=timezone.now() - 2 * WAIT + timedelta(seconds=5))
    runs.runs_reap()
    assert sent == [run.pk]
    Run.objects.filter(pk=run.pk).update(due_at=timezone.now() - 2 * WAIT - timedelta(seconds=1))
    runs.runs_reap()
    assert sent == [run.pk, run.pk]
    assert Run.objects.get(pk=run.pk).resends == 2


def test_a_fresh_queued_run_is_not_sent_again(source, sent):
    queued(source, ago=WAIT - timedelta(seconds=5))
    sent.clear()
    runs.runs_reap()
    assert sent == []


def test_a_run_waiting_for_its_retry_countdown_is_not_sent_early(source, sent):
    run = queued(source, ago=WAIT + timedelta(minutes=1))
    # Handed back after a transient error, due in 10 minutes.
    Run.objects.filter(pk=run.pk).update(due_at=timezone.now() + timedelta(minutes=10), attempts=1)
    sent.clear()
    runs.runs_reap()
    assert sent == []


@pytest.mark.parametrize("status", [RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.FAILED,
                                    RunStatus.CANCELLED, RunStatus.SKIPPED])
def test_a_claimed_or_finished_run_is_not_sent_again(source, sent, status):
    run = queued(source, ago=WAIT * 10)
    Run.objects.filter(pk=run.pk).update(status=status, heartbeat_at=timezone.now())
    sent.clear()
    runs.runs_resend()
    assert sent == []
    assert Run.objects.get(pk=run.pk).resends == 0


def test_the_late_original_and_the_resent_message_run_the_job_once(source, sent):
    run = queued(source, ago=WAIT * 2)
    runs.runs_reap()
    assert sent.count(run.pk) == 2  # queued, then sent again
    # Both messages reach a worker: the first one runs the job, the second finds it done.
    assert runs.execute(run_id=run.pk) == runs.Outcome.DONE
    assert runs.execute(run_id=run.pk) == runs.Outcome.SKIPPED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.attempts == 1 and run.resends == 1
    assert run.rows_inserted == 10 and len(store_rows(run.dataset)) == 10
    # And the reaper has nothing more to send.
    runs.runs_reap()
    assert sent.count(run.pk) == 2
