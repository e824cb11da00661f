"""Faults with real processes: workers killed mid-delivery, Redis and the exchange's own
PostgreSQL unreachable for 20 s (cut with a loopback proxy that the worker, beat and web
connect through; the shared servers are never touched), and sources that hang. After each,
source, store and target must agree row for row and every run must say what happened to it.

Marked ``slow``; they need PostgreSQL and Redis and skip on the embedded default."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.db import connection as django_connection
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from exchange.sync import runs
from exchange.sync.models import Run, RunStatus, Source, Subscription
from exchange.sync.tasks import housekeeping_reaper
from tests.exchange.sync.faults import (
    checksum,
    http_status,
    postgres_proxy,
    redis_proxy,
    start_beat,
    start_web,
)
from tests.exchange.sync.helpers import extra_pg_database, store_rows
from tests.exchange.sync.worker import Served, serve_files, start_worker, wait_for
from tests.sync_factories import (
    PERMIT_FIELDS,
    connection,
    csv_bytes,
    identity_mapping,
    permit_rows,
    published_dataset,
    upload_source,
)

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
HEADER = [f[0] for f in PERMIT_FIELDS]
OUTAGE_SECONDS = 20


@pytest.fixture(autouse=True)
def _needs_postgresql_and_redis() -> None:
    if django_connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("fault tests cut PostgreSQL and Redis off through a proxy; the embedded default "
                    "(SQLite, file broker) has neither, so they run on the PostgreSQL + Redis run only")


@pytest.fixture
def queue() -> str:
    return f"test-faults-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def processes():
    started: list[Any] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def files():
    server = serve_files()
    yield server
    server.close()


@pytest.fixture
def pg_proxy():
    proxy, url = postgres_proxy()
    yield proxy, url
    proxy.close()


@pytest.fixture
def broker_proxy():
    proxy, url = redis_proxy(settings.REDIS_URL)
    yield proxy, url
    proxy.close()


def finished(run: Run) -> Run | None:
    run.refresh_from_db()
    return run if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING) else None


def url_source(dataset, url: str) -> Source:
    conn = connection(department=dataset.department, kind="url", secret=url)
    return Source.objects.create(dataset=dataset, connection=conn, mapping=identity_mapping())


def typed(row: list[Any]) -> tuple[Any, ...]:
    """A permit row of the source (CSV text) as the store holds it."""
    permit_id, address, applicant, fee, approved, issued_on, updated_at = row
    return (int(permit_id), address, applicant, Decimal(fee), approved == "true", date.fromisoformat(issued_on),
            datetime.fromisoformat(updated_at))


def assert_store_equals_source(dataset, source_rows: list[list[Any]], *, deleted: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """Row for row: the live records are exactly the source's (count and checksum), each key
    once, and the keys that left the source are tombstones."""
    live = [tuple(r[f] for f in HEADER) for r in store_rows(dataset)]
    expected = [typed(r) for r in source_rows]
    assert len(live) == len(expected)
    assert checksum(live) == checksum(expected)
    everything = store_rows(dataset, include_deleted=True)
    keys = [r["permit_id"] for r in everything]
    assert len(keys) == len(set(keys))  # nothing duplicated
    assert {r["permit_id"] for r in everything if r["_deleted"]} == set(deleted)


def first_load(dataset, rows: list[list[Any]]) -> None:
    """The records a later run changes: loaded in this process, its source removed again."""
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, rows))
    run = runs.run_enqueue(source=source, queue="nowhere")
    runs.execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    Source.objects.filter(pk=source.pk).delete()


# --- SIGKILL ----------------------------------------------------------------------------------

def test_worker_killed_mid_delivery_is_reaped_and_the_rerun_delivers_exactly_once(
        department, other_department, people, env, queue, processes):
    """The ingest case is in test_worker.py; here the worker dies while a delivery has staged
    its rows in the target and waits to apply them."""
    from tests.records_support import grant

    processes.append(worker := start_worker(queue, env=env))
    dataset = published_dataset(department=department)
    first_load(dataset, permit_rows(40))
    grant(dataset, department=other_department, approved_by=people["admin"],
          fields={"permit_id": "clear", "fee": "clear", "issued_on": "clear"})
    with extra_pg_database("exchange_faults_target") as dsn:
        conn = connection(department=other_department, kind="postgresql", secret=dsn)
        subscription = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                                   target_table="permits")
        first = runs.run_enqueue(subscription=subscription, queue=queue)
        wait_for(lambda: finished(first), what="the first delivery", worker=worker)
        assert first.status == RunStatus.SUCCEEDED, first.error

        # 10 deleted, 10 updated, 20 unchanged, 30 new: an incremental delivery.
        new_rows = permit_rows(20, start=21) + permit_rows(10, start=11, fee_bump=5) + permit_rows(30, start=41)
        source = upload_source(dataset=dataset, content=csv_bytes(HEADER, new_rows))
        second_load = runs.run_enqueue(source=source, queue=queue)
        wait_for(lambda: finished(second_load), what="the second load", worker=worker)
        assert second_load.status == RunStatus.SUCCEEDED, second_load.error

        import psycopg

        # Hold the target table so that the delivery, once it has staged its rows, waits to apply them.
        holder = psycopg.connect(dsn)
        holder.execute("LOCK TABLE permits IN EXCLUSIVE MODE")
        run = runs.run_enqueue(subscription=subscription, queue=queue)

        def waiting_on_the_lock() -> bool:
            # A connection of its own: inside the holder's transaction pg_stat_activity is a snapshot.
            with psycopg.connect(dsn, autocommit=True) as probe:
                return bool(probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'exchange-delivery' "
                    "AND wait_event_type = 'Lock'").fetchone()[0])  # type: ignore[index]

        wait_for(waiting_on_the_lock, what="the delivery to reach the target's lock", worker=worker)
        worker.kill()
        holder.rollback()
        holder.close()
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING  # nobody was left to record anything

        processes.append(second := start_worker(queue, env=env))
        wait_for(lambda: housekeeping_reaper.apply_async(queue=queue) and finished(run), what="the reaper",
                 worker=second)
        assert run.status == RunStatus.FAILED and run.error.startswith("Orphaned: its worker stopped responding")
        rerun = Run.objects.get(rerun_of=run)
        wait_for(lambda: finished(rerun), what="the re-run", worker=second)
        assert rerun.status == RunStatus.SUCCEEDED, rerun.error
        assert (rerun.rows_inserted, rerun.rows_updated, rerun.rows_deleted) == (30, 10, 10)

        with psycopg.connect(dsn) as target:
            delivered = target.execute("SELECT permit_id, fee, issued_on FROM permits").fetchall()
        expected = [(r[0], r[3], r[5]) for r in map(typed, new_rows)]
        assert len(delivered) == len(expected) == 60
        assert checksum(delivered) == checksum(expected)
        stored = [(r["permit_id"], r["fee"], r["issued_on"]) for r in store_rows(dataset)]
        assert checksum(stored) == checksum(expected)
    statuses = list(Run.objects.filter(subscription=subscription).order_by("pk").values_list("status", flat=True))
    assert statuses == [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SUCCEEDED]


# --- Redis unreachable ------------------------------------------------------------------------

def test_redis_unreachable_for_20_s_with_jobs_queued(department, env, queue, processes, broker_proxy):
    proxy, redis_url = broker_proxy
    processes.append(worker := start_worker(queue, env={**env, "REDIS_URL": redis_url}))
    proxy.down()
    cut = time.monotonic()
    datasets, sources_rows, queued = [], [], []
    for n in range(3):
        dataset = published_dataset(department=department, slug=f"permits-{n}")
        rows = permit_rows(40 + n)
        source = upload_source(dataset=dataset, content=csv_bytes(HEADER, rows))
        datasets.append(dataset)
        sources_rows.append(rows)
        # Sent by this process, which still reaches Redis: the jobs wait in the queue.
        queued.append(runs.run_enqueue(source=source, queue=queue))
    # One more queued by a process that cannot reach Redis either (as a web process cut off
    # with it): its send fails, the run stays queued with no message anywhere.
    dataset = published_dataset(department=department, slug="permits-unsent")
    rows = permit_rows(33)
    datasets.append(dataset)
    sources_rows.append(rows)

    def broker_down(self, *args, **kwargs):
        raise BrokerError("Error 111 connecting to Redis. Connection refused.")

    with mock.patch("celery.app.task.Task.apply_async", broker_down):
        unsent = runs.run_enqueue(source=upload_source(dataset=dataset, content=csv_bytes(HEADER, rows)),
                                  queue=queue)
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut)))
    assert all(Run.objects.get(pk=r.pk).status == RunStatus.QUEUED for r in [*queued, unsent])
    assert worker.process.poll() is None  # the worker waits for its broker; it does not exit
    proxy.up()
    # The reaper (beat's housekeeping_reaper) finds every run overdue (no worker could take
    # one) and sends each again: the unsent run gets its first message, the others a duplicate
    # of the one waiting in Redis, which must not run them twice.
    resent = runs.runs_resend(resend_after=timedelta(seconds=OUTAGE_SECONDS // 2))
    queued.append(unsent)
    assert sorted(r.pk for r in resent) == sorted(r.pk for r in queued)

    for run in queued:
        wait_for(lambda run=run: finished(run), timeout=60, what="the queued run", worker=worker)
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert run.attempts == 1 and run.error == ""
    assert all(Run.objects.get(pk=r.pk).resends == 1 for r in queued)
    # Sent again once more, as a late duplicate would be: a no-op for a finished run.
    Run.objects.filter(pk=unsent.pk).update(due_at=timezone.now() - timedelta(hours=1))
    assert runs.runs_resend() == []
    for dataset, rows in zip(datasets, sources_rows, strict=True):
        assert_store_equals_source(dataset, rows)
    assert worker.process.poll() is None


# --- PostgreSQL unreachable -------------------------------------------------------------------

def test_database_unreachable_for_20_s_during_an_ingest(department, env, queue, processes, files, pg_proxy):
    """The worker loses the exchange's database between two batches: the run is handed back
    as transient once the database answers again, and its retry loads exactly the source."""
    proxy, database_url = pg_proxy
    # Backoff of 10 s: long enough to see the retry recorded; the worker waits for the
    # database for up to SYNC_RUN_STALE_SECONDS before it leaves the run to the reaper.
    processes.append(worker := start_worker(queue, env={
        **env, "DATABASE_URL": database_url, "SYNC_RETRY_BACKOFF_SECONDS": "10", "SYNC_RUN_STALE_SECONDS": "60"}))
    dataset = published_dataset(department=department)
    first_load(dataset, permit_rows(30))
    rows = permit_rows(20, start=11, fee_bump=3) + permit_rows(50, start=31)  # 1-10 gone, 11-30 updated
    files.files["/permits.csv"] = Served(csv_bytes(HEADER, rows), chunk_delay=0.05, slow_requests=1)
    run = runs.run_enqueue(source=url_source(dataset, files.url("/permits.csv")), queue=queue)
    wait_for(lambda: Run.objects.filter(pk=run.pk, rows_done__gt=0).exists(), what="progress", worker=worker)
    proxy.down()
    time.sleep(OUTAGE_SECONDS)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.rows_done < len(rows)  # nothing could be recorded
    assert store_rows(dataset, include_deleted=True)[0]["fee"] == Decimal("101.50")  # nor merged
    proxy.up()

    wait_for(lambda: Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED).exists(), timeout=30,
             what="the retry to be recorded", worker=worker)
    run.refresh_from_db()
    assert run.error.startswith("Attempt 1 failed, retrying in 10 s: The exchange's database"), run.error
    wait_for(lambda: finished(run), timeout=30, what="the retry", worker=worker)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2 and run.error == ""
    assert (run.rows_inserted, run.rows_updated, run.rows_deleted) == (50, 20, 10)
    assert_store_equals_source(dataset, rows, deleted=set(range(1, 11)))
    assert worker.process.poll() is None


def test_database_unreachable_for_20_s_while_idle(department, env, queue, processes, pg_proxy):
    """Web, worker and beat all reach the database through the proxy. While it is cut, the
    health check says so and a job sent meanwhile waits; afterwards all three carry on
    without being restarted, and the job's run is recorded once."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from exchange.ops.models import WorkerHeartbeat

    proxy, database_url = pg_proxy
    through = {**env, "DATABASE_URL": database_url, "SYNC_RUN_STALE_SECONDS": "60"}
    processes.append(worker := start_worker(queue, env=through))
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name=f"heartbeat {queue}", task="exchange.tasks.housekeeping_heartbeat",
                                interval=every_second, queue=queue)
    processes.append(beat := start_beat(through))
    web, base = start_web(through)
    processes.append(web)
    health = f"{base}/healthz"
    wait_for(lambda: http_status(health) == 200, what="the web to answer /healthz")
    wait_for(lambda: WorkerHeartbeat.objects.exists(), what="beat and worker to beat", worker=worker)

    proxy.down()
    cut = timezone.now()
    dataset = published_dataset(department=department)
    rows = permit_rows(25)
    run = runs.run_enqueue(source=upload_source(dataset=dataset, content=csv_bytes(HEADER, rows)), queue=queue)
    wait_for(lambda: http_status(health) == 503, what="/healthz to report the database unavailable")
    time.sleep(OUTAGE_SECONDS)
    assert http_status(health) == 503
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED  # the worker took the job but could not claim it yet
    assert worker.process.poll() is None and beat.alive() and web.alive()
    proxy.up()
    back = timezone.now()

    wait_for(lambda: http_status(health) == 200, timeout=30, what="/healthz to recover")
    wait_for(lambda: finished(run), timeout=45, what="the job sent during the outage", worker=worker)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 1
    assert_store_equals_source(dataset, rows)
    wait_for(lambda: WorkerHeartbeat.objects.filter(seen_at__gt=back).exists(), timeout=30,
             what="beat to schedule and the worker to run heartbeats again", worker=worker)
    assert not WorkerHeartbeat.objects.filter(seen_at__gt=cut, seen_at__lt=back).exists()
    assert worker.process.poll() is None and beat.alive() and web.alive()


# --- Sources that hang ------------------------------------------------------------------------

@pytest.fixture
def silent_server():
    """A TCP server on loopback that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/never.csv"
    stop.set()
    listener.close()
    for s in held:
        s.close()


def test_a_url_source_that_never_answers_fails_within_the_timeout(department, env, queue, processes,
                                                                 silent_server):
    processes.append(worker := start_worker(queue, env={**env, "SYNC_HTTP_TIMEOUT_SECONDS": "2",
                                                         "SYNC_MAX_RETRIES": "1"}))
    dataset = published_dataset(department=department)
    run = runs.run_enqueue(source=url_source(dataset, silent_server), queue=queue)
    started = time.monotonic()
    wait_for(lambda: finished(run), timeout=30, what="the run", worker=worker)
    # Two attempts of 2 s each and 1 s of backoff, with room for a loaded machine.
    assert time.monotonic() - started < 20
    assert run.status == RunStatus.FAILED and run.attempts == 2
    assert run.error == "The URL cannot be reached: timed out (gave up after 2 attempts)"
    assert store_rows(dataset, include_deleted=True) == []

    # The worker is alive and takes the next job.
    other = published_dataset(department=department, slug="next")
    rows = permit_rows(15)
    nxt = runs.run_enqueue(source=upload_source(dataset=other, content=csv_bytes(HEADER, rows)), queue=queue)
    wait_for(lambda: finished(nxt), what="the next job", worker=worker)
    assert nxt.status == RunStatus.SUCCEEDED, nxt.error
    assert_store_equals_source(other, rows)
