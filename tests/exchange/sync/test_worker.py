"""The sync jobs through real Celery worker processes (Redis when REDIS_URL is set), against
the test database: a run end to end, the lock against overlap, retries of transient errors,
cancel, and a worker killed with SIGKILL mid-run."""

from __future__ import annotations

import socket
import uuid

import pytest

from exchange.sync import runs
from exchange.sync.models import Run, RunStatus, Source
from exchange.sync.tasks import housekeeping_reaper
from tests.exchange.sync.helpers import store_rows
from tests.exchange.sync.worker import Worker, serve_files, start_worker, wait_for
from tests.sync_factories import (
    PERMIT_FIELDS,
    connection,
    csv_bytes,
    identity_mapping,
    permit_rows,
    published_dataset,
    upload_source,
)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
HEADER = [f[0] for f in PERMIT_FIELDS]


@pytest.fixture
def queue():
    return f"test-sync-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture
def files():
    server = serve_files()
    yield server
    server.close()


def finished(run: Run) -> Run | None:
    run.refresh_from_db()
    return run if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING) else None


def url_source(dataset, url: str) -> Source:
    conn = connection(department=dataset.department, kind="url", secret=url)
    return Source.objects.create(dataset=dataset, connection=conn, mapping=identity_mapping())


def test_upload_ingest_through_a_worker(department, env, queue, workers):
    workers.append(worker := start_worker(queue, env=env))
    dataset = published_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(150)))
    run = runs.run_enqueue(source=source, queue=queue)
    wait_for(lambda: finished(run), what="the run", worker=worker)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.rows_inserted == 150 and run.rows_done == 150 and run.attempts == 1
    assert len(store_rows(dataset)) == 150


def test_a_second_run_of_the_same_source_is_skipped_while_one_runs(department, env, queue, workers, files):
    workers.append(worker := start_worker(queue, env=env, concurrency=2))
    dataset = published_dataset(department=department)
    from tests.exchange.sync.worker import Served

    files.files["/permits.csv"] = served = Served(csv_bytes(HEADER, permit_rows(60)), chunk_delay=0.05,
                                                   slow_requests=1)
    source = url_source(dataset, files.url("/permits.csv"))
    first = runs.run_enqueue(source=source, queue=queue)
    wait_for(lambda: Run.objects.filter(pk=first.pk, status=RunStatus.RUNNING).exists(), what="first run starts")
    second = runs.run_enqueue(source=source, queue=queue)
    wait_for(lambda: finished(second), what="second run", worker=worker)
    assert second.status == RunStatus.SKIPPED and f"run #{first.pk}" in second.error
    wait_for(lambda: finished(first), what="first run", worker=worker)
    assert first.status == RunStatus.SUCCEEDED and len(store_rows(dataset)) == 60
    assert served.requests == 1


def test_transient_errors_are_retried_with_backoff(department, env, queue, workers, files):
    workers.append(worker := start_worker(queue, env=env))
    dataset = published_dataset(department=department)
    from tests.exchange.sync.worker import Served

    files.files["/flaky.csv"] = served = Served(csv_bytes(HEADER, permit_rows(10)), fail_first=2)
    source = url_source(dataset, files.url("/flaky.csv"))
    run = runs.run_enqueue(source=source, queue=queue)
    wait_for(lambda: finished(run), what="the run", worker=worker)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 3 and served.requests == 3
    assert len(store_rows(dataset)) == 10


def test_an_unreachable_source_fails_after_bounded_retries(department, env, queue, workers):
    workers.append(worker := start_worker(queue, env={**env, "SYNC_MAX_RETRIES": "1"}))
    dataset = published_dataset(department=department)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    source = url_source(dataset, f"http://127.0.0.1:{port}/gone.csv")
    run = runs.run_enqueue(source=source, queue=queue)
    wait_for(lambda: finished(run), what="the run", worker=worker)
    assert run.status == RunStatus.FAILED and run.attempts == 2
    assert "cannot be reached" in run.error and "gave up after 2 attempts" in run.error


def test_cancel_a_running_run(department, env, queue, workers, files):
    workers.append(worker := start_worker(queue, env=env))
    dataset = published_dataset(department=department)
    from tests.exchange.sync.worker import Served

    files.files["/slow.csv"] = Served(csv_bytes(HEADER, permit_rows(200)), chunk_delay=0.05, slow_requests=9)
    run = runs.run_enqueue(source=url_source(dataset, files.url("/slow.csv")), queue=queue)
    wait_for(lambda: Run.objects.filter(pk=run.pk, rows_done__gt=0).exists(), what="progress", worker=worker)
    runs.run_cancel(run=run)
    wait_for(lambda: finished(run), what="the run", worker=worker)
    assert run.status == RunStatus.CANCELLED
    assert store_rows(dataset) == []


def test_worker_killed_mid_run_is_reaped_and_the_rerun_loads_exactly_once(department, env, queue, workers, files):
    workers.append(worker := start_worker(queue, env=env))
    dataset = published_dataset(department=department)
    source0 = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(30)))
    runs.execute(run_id=runs.run_enqueue(source=source0, queue="nowhere").pk)  # a first load, in-process
    Source.objects.filter(pk=source0.pk).delete()
    from tests.exchange.sync.worker import Served

    rows = permit_rows(80, fee_bump=3)  # 30 updated, 50 new
    files.files["/big.csv"] = Served(csv_bytes(HEADER, rows), chunk_delay=0.1, slow_requests=1)
    source = url_source(dataset, files.url("/big.csv"))
    run = runs.run_enqueue(source=source, queue=queue)
    wait_for(lambda: Run.objects.filter(pk=run.pk, rows_done__gt=0).exists(), what="progress", worker=worker)
    worker.kill()
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING  # nobody was left to record anything

    workers.append(second := start_worker(queue, env=env))
    wait_for(lambda: housekeeping_reaper.apply_async(queue=queue) and finished(run), timeout=60,
             what="the reaper", worker=second)
    assert run.status == RunStatus.FAILED and "Orphaned" in run.error
    rerun = Run.objects.get(rerun_of=run)
    wait_for(lambda: finished(rerun), what="the re-run", worker=second)
    assert rerun.status == RunStatus.SUCCEEDED, rerun.error
    assert (rerun.rows_inserted, rerun.rows_updated) == (50, 30)
    stored = store_rows(dataset, include_deleted=True)
    assert [r["permit_id"] for r in stored] == list(range(1, 81))
    assert {str(r["fee"]).rstrip("0").rstrip(".") for r in stored[:1]} == {"104.5"}


def test_delivery_through_a_worker(department, other_department, people, env, queue, workers, tmp_path):
    import sqlite3

    from django.conf import settings

    from exchange.sync.models import Subscription
    from tests.records_support import grant

    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]
    workers.append(worker := start_worker(queue, env={**env, "SYNC_SQLITE_DIRS": str(tmp_path)}))
    dataset = published_dataset(department=department)
    ingest = runs.run_enqueue(source=upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(50))),
                              queue=queue)
    wait_for(lambda: finished(ingest), what="the ingest", worker=worker)
    grant(dataset, department=other_department, approved_by=people["admin"],
          fields={"permit_id": "clear", "issued_on": "clear"})
    target = tmp_path / "health.sqlite3"
    sqlite3.connect(target).close()
    conn = connection(department=other_department, kind="sqlite", secret=str(target))
    subscription = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                               target_table="permits")
    run = runs.run_enqueue(subscription=subscription, queue=queue)
    wait_for(lambda: finished(run), what="the delivery", worker=worker)
    assert run.status == RunStatus.SUCCEEDED, run.error
    db = sqlite3.connect(target)
    assert [r[1] for r in db.execute("PRAGMA table_info(permits)")] == ["permit_id", "issued_on", "_changed_at"]
    assert db.execute("SELECT count(*) FROM permits").fetchone() == (50,)


def test_postgresql_source_dropped_mid_run(department, env, queue, workers):
    from django.db import connection as django_connection

    if django_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL sources are tested on the PostgreSQL run")
    from tests.exchange.sync.helpers import extra_pg_database, pg_execute

    workers.append(worker := start_worker(queue, env=env))
    dataset = published_dataset(department=department)
    with extra_pg_database("wt_sync_src") as dsn:
        pg_execute(dsn, "CREATE TABLE permits (permit_id bigint PRIMARY KEY, address text, applicant text, "
                        "fee numeric, approved boolean, issued_on date, updated_at timestamptz)")
        pg_execute(dsn, "INSERT INTO permits VALUES (%s, %s, %s, %s, %s, %s, %s)", many=permit_rows(400))
        conn = connection(department=department, kind="postgresql", secret=dsn)
        # A count per row makes the source slow enough to pull away from under the run
        # (pg_sleep would be refused: source queries may not call volatile functions).
        source = Source.objects.create(
            dataset=dataset, connection=conn, mapping=identity_mapping(),
            query="SELECT * FROM permits WHERE (SELECT count(*) FROM generate_series(1, 100000 + permit_id)) > 0")
        run = runs.run_enqueue(source=source, queue=queue)
        wait_for(lambda: Run.objects.filter(pk=run.pk, rows_done__gt=0).exists(), what="progress", worker=worker)
        pg_execute(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'exchange-sync' AND datname = current_database()")
        pg_execute(dsn, "DROP TABLE permits")
        wait_for(lambda: finished(run), what="the run", worker=worker)
        assert run.status == RunStatus.FAILED and run.attempts == 2
        assert 'relation "permits" does not exist' in run.error
        assert store_rows(dataset, include_deleted=True) == []


def test_changes_flow_to_every_subscriber_on_their_own(department, other_department, people, env, queue, workers,
                                                       tmp_path):
    """Three subscriptions that deliver on change, and three ingests of changes in a row while
    their deliveries run beside them (two worker processes): every target ends with the last
    state, and each subscription's deliveries carried consecutive change numbers, none twice."""
    import sqlite3
    from pathlib import Path

    from django.conf import settings
    from django.db.models import Max

    from exchange.sync.models import RunKind, Subscription
    from tests.records_support import grant

    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]
    workers.append(worker := start_worker(queue, env={**env, "SYNC_SQLITE_DIRS": str(tmp_path)}, concurrency=2))
    dataset = published_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(50)))
    first = runs.run_enqueue(source=source, queue=queue)
    wait_for(lambda: finished(first), what="the first load", worker=worker)
    grant(dataset, department=other_department, approved_by=people["admin"],
          fields={"permit_id": "clear", "fee": "clear"})
    targets = []
    for name in ("health", "planning", "social"):
        path = tmp_path / f"{name}.sqlite3"
        sqlite3.connect(path).close()
        conn = connection(department=other_department, kind="sqlite", secret=str(path), name=name)
        subscription = Subscription.objects.create(dataset=dataset, department=other_department, connection=conn,
                                                   target_table="permits", deliver_on_change=True)
        targets.append((path, subscription))
    for bump in (1, 2, 3):
        Path(settings.MEDIA_ROOT, source.upload).write_bytes(csv_bytes(HEADER, permit_rows(50, fee_bump=bump)))
        ingest = runs.run_enqueue(source=source, queue=queue)
        wait_for(lambda ingest=ingest: finished(ingest), what=f"ingest {bump}", worker=worker)
        assert ingest.status == RunStatus.SUCCEEDED and ingest.rows_updated == 50, ingest.error
    top = Run.objects.filter(dataset=dataset, kind=RunKind.INGEST).aggregate(top=Max("seq_to"))["top"]

    def all_delivered() -> bool:
        busy = Run.objects.filter(dataset=dataset, kind=RunKind.DELIVERY,
                                  status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists()
        return not busy and all(s.last_seq == top for s in Subscription.objects.filter(dataset=dataset))

    wait_for(all_delivered, what="every subscriber to catch up", worker=worker)
    for path, subscription in targets:
        fees = [str(r[0]) for r in sqlite3.connect(path).execute("SELECT fee FROM permits ORDER BY permit_id")]
        assert fees == [f"{100 + i + 3}.5" for i in range(1, 51)]
        done = list(Run.objects.filter(subscription=subscription, status=RunStatus.SUCCEEDED,
                                       seq_from__isnull=False).order_by("seq_from"))
        assert done and all(r.trigger == "change" for r in done)
        assert done[-1].seq_to == top
        assert all(b.seq_from == (a.seq_to or 0) + 1 for a, b in zip(done, done[1:], strict=False))
