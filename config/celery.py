"""The Celery application shared by web, workers and beat.

Broker and eager mode come from Django settings (``CELERY_*``); the defaults every task
relies on are fixed here so that no deployment can weaken them by accident.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("exchange")
app.config_from_object("django.conf:settings", namespace="CELERY")

QUEUES = ("default", "ingest", "delivery", "housekeeping")

app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Results live in our own tables (runs, heartbeats); Celery's result store is not used.
    task_ignore_result=True,
    # A task is acknowledged only once it has finished, and handed back to the queue if its
    # worker dies, so a killed worker never loses a job. Every task must therefore be
    # idempotent, which ours are: they take ids and re-read their rows.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=60 * 60,
    task_time_limit=60 * 60 + 120,
    task_default_queue="default",
    task_queues=[Queue(name) for name in QUEUES],
    task_routes={
        "exchange.tasks.ingest_*": {"queue": "ingest"},
        "exchange.tasks.deliver_*": {"queue": "delivery"},
        "exchange.tasks.housekeeping_*": {"queue": "housekeeping"},
        "catalog.tasks.*": {"queue": "default"},
        "departments.tasks.*": {"queue": "default"},
    },
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_scheduler="django_celery_beat.schedulers:DatabaseScheduler",
    timezone=os.environ.get("TIME_ZONE", "Europe/Berlin"),
)
app.conf.beat_schedule = {
    # Static housekeeping. Per-job schedules (ingest, delivery) are rows that stewards edit.
    "worker-heartbeat": {"task": "exchange.tasks.housekeeping_heartbeat", "schedule": 60.0},
    "purge-expired-tokens": {"task": "exchange.tasks.housekeeping_purge_expired_tokens", "schedule": 3600.0},
    "reap-orphaned-runs": {"task": "exchange.tasks.housekeeping_reaper", "schedule": 60.0},
    # Watched sources: each has its own interval (Source.watch_seconds); this tick finds those due
    # (one indexed query when none is).
    "watch-sources": {"task": "exchange.tasks.sources_watch",
                      "schedule": float(os.environ.get("SYNC_WATCH_TICK_SECONDS", "1"))},
    # Grants end on time even though the policy also checks valid_until: expiry must update
    # guardian permissions, notify and audit, which a read-time check cannot do.
    "expire-grants": {"task": "exchange.tasks.housekeeping_expire_grants", "schedule": 300.0},
    "grant-reminders": {"task": "exchange.tasks.housekeeping_grant_reminders", "schedule": 3600.0},
    "grant-recertification": {"task": "exchange.tasks.housekeeping_recertification", "schedule": 6 * 3600.0},
    # Objections the owning stewards left unanswered past their due date go to the reviewers.
    "escalate-objections": {"task": "exchange.tasks.housekeeping_escalate_objections", "schedule": 900.0},
    # Truncating the audit trail's tail is detected back to the latest checkpoint.
    "audit-checkpoint": {"task": "exchange.tasks.housekeeping_audit_checkpoint", "schedule": 600.0},
}
app.autodiscover_tasks()
