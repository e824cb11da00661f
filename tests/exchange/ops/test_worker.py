"""End to end through a real Celery worker process: the task is published to the broker the
settings name (Redis when REDIS_URL is set, else the embedded file broker), consumed by a
separate worker process, and its effect is read back from the database."""

from __future__ import annotations

import os
import time

import pytest
from django.conf import settings
from django.db import connection

from exchange.ops.models import WorkerHeartbeat
from exchange.ops.tasks import housekeeping_heartbeat

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_real_worker_executes_a_task_end_to_end(celery_worker):
    assert not WorkerHeartbeat.objects.exists()
    result = housekeeping_heartbeat.apply_async(queue=celery_worker.queue)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not WorkerHeartbeat.objects.exists():
        assert celery_worker.process.poll() is None, celery_worker.log()
        time.sleep(0.2)
    heartbeat = WorkerHeartbeat.objects.get()
    assert heartbeat.hostname == celery_worker.hostname
    assert heartbeat.task_id == result.id


def test_ci_runs_on_the_backends_it_asked_for():
    """CI sets EXPECT_BACKENDS so that a misconfigured run cannot fall back to the embedded
    default and still look green."""
    expected = {b for b in os.environ.get("EXPECT_BACKENDS", "").split(",") if b}
    if not expected:
        pytest.skip("EXPECT_BACKENDS not set (only CI asks for specific backends)")
    actual = {
        "postgresql" if connection.vendor == "postgresql" else "sqlite",
        "redis" if settings.CELERY_BROKER_URL.startswith("redis") else "filesystem",
    }
    assert actual == expected
    if "redis" in expected:  # processes share their counters (the login throttle) through Redis
        from django.core.cache import cache

        assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
        cache.set("ci-probe", "shared", 5)
        assert cache.get("ci-probe") == "shared"
