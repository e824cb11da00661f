"""Fixtures of the sync tests that start real worker processes."""

from __future__ import annotations

import pytest

from config.celery import app as celery_app


@pytest.fixture
def env(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    was_eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    yield {"MEDIA_ROOT": str(tmp_path), "SYNC_BATCH_SIZE": "20", "SYNC_RETRY_BACKOFF_SECONDS": "1",
           "SYNC_RUN_STALE_SECONDS": "3"}
    celery_app.conf.task_always_eager = was_eager
